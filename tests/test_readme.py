"""The README's code runs as written: every ```python block, and every line of the other code blocks
whose first word is ``prunescope`` or ``python``, in README order, in one empty working folder,
offline, on the default model (the CLI through ``python -m prunescope``). A block right after a
``<!-- README test: not run ... -->`` comment is left out (it says why)."""

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_RUN = "<!-- README test: not run"
FENCE = re.compile(r"^```(\w*)\s*$")


def readme_steps(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """``([(kind, code)], skipped blocks)``: ``("python", block)`` or ``("shell", line)`` in order."""
    steps, skipped, lines = [], [], text.splitlines()
    i, previous = 0, ""
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        body, lang = lines[i + 1:end], m.group(1)
        if previous.startswith(NOT_RUN):
            skipped.append("\n".join(body))
        elif lang == "python":
            steps.append(("python", "\n".join(body) + "\n"))
        elif lang in ("", "sh", "bash", "shell", "console"):
            joined = "\n".join(body).replace("\\\n", " ").splitlines()   # a line ending in \ goes on
            steps += [("shell", line.strip()) for line in joined
                      if line.split()[:1] in (["prunescope"], ["python"])]
        i, previous = end + 1, lines[end]
    return steps, skipped


def _command(line: str) -> str:
    """A README shell line as this test's interpreter runs it (the command a reader types)."""
    first, _, rest = line.partition(" ")
    exe = shlex.quote(sys.executable)
    return (f"{exe} -m prunescope " if first == "prunescope" else f"{exe} ") + rest


def test_readme_steps_are_found_and_few_are_left_out():
    steps, skipped = readme_steps((ROOT / "README.md").read_text())
    shell = [code for kind, code in steps if kind == "shell"]
    commands = {line.split()[1] for line in shell if line.startswith("prunescope")}
    assert {"doctor", "info", "sweep", "patch", "score", "prune", "sgr", "recover", "eval"} <= commands
    assert sum(kind == "python" for kind, _ in steps) >= 2
    assert len(skipped) <= 1 and all("prunescope run" in s for s in skipped)  # only the demo pipeline
    assert not any(line.startswith("python3") for line in shell)


def test_readme_code_runs_as_written(tmp_path):
    steps, _ = readme_steps((ROOT / "README.md").read_text())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": ""}
    timings = []
    for kind, code in steps:
        start = time.perf_counter()
        if kind == "python":
            p = subprocess.run([sys.executable, "-"], input=code, cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=600)
        else:
            p = subprocess.run(_command(code), shell=True, executable="/bin/bash", cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=600)
        timings.append((round(time.perf_counter() - start, 1), code.splitlines()[0][:60]))
        assert p.returncode == 0, f"README {kind} step failed:\n{code}\n--- stdout\n{p.stdout[-3000:]}\n" \
                                  f"--- stderr\n{p.stderr[-3000:]}"
        assert "Traceback" not in p.stderr, p.stderr[-3000:]
    print("\n".join(f"{s:7.1f} s  {c}" for s, c in timings))
    assert (tmp_path / "my-model" / "config.json").is_file()
    assert (tmp_path / "runs" / "mine" / "sweep.csv").is_file() and (tmp_path / "recovered" / "x").is_dir()
