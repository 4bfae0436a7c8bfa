"""SIGKILL mid-command, then the same command again: the resumed result equals an uninterrupted
run's, byte for byte for tables and files (fp32 on CPU, so no number passes through bf16).

Each command is killed only after it has written real progress (a batch of a sweep, a layer of
exact patching, a batch of SGR answers, a training checkpoint, a finished benchmark task), and
the test checks the kill landed before the command finished. The stale lock the killed process
leaves is taken over by the resumed run (with a warning).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "PYTHONUNBUFFERED": "1"}


def _cmd(args):
    return [sys.executable, "-m", "prunescope", *args, "--quiet"]


def _run(args, timeout=600) -> str:
    p = subprocess.run(_cmd(args), env=ENV, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    return p.stderr


def _kill_when(args, ready, done, timeout=300):
    """Start the command, SIGKILL it as soon as ``ready()`` holds; assert ``done()`` did not yet."""
    p = subprocess.Popen(_cmd(args), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    t0 = time.time()
    while not ready() and p.poll() is None and time.time() - t0 < timeout:
        time.sleep(0.01)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, f"the command ended by itself: {p.stderr.read()[-2000:]}"
    assert not done(), "the command finished before it could be killed: make its workload larger"


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _same_files(a: Path, b: Path, names):
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_sweep_killed_and_resumed(tiny_llama_dir, tmp_path):
    args = ["sweep", "--model", str(tiny_llama_dir), "--probes", "arithmetic_multi,brackets", "--items", "160",
            "--batch-size", "4", "--no-plot"]
    _run(args + ["--out", str(tmp_path / "ref")])
    out = tmp_path / "kill"
    log = out / ".progress" / "arithmetic_multi.jsonl"
    _kill_when(args + ["--out", str(out)], ready=lambda: _lines(log) >= 3, done=lambda: (out / "sweep.csv").exists())
    err = _run(args + ["--out", str(out)])
    assert "taking over the lock" in err
    _same_files(tmp_path / "ref", out, ["sweep.csv", "sweep.jsonl", "items/arithmetic_multi.jsonl"])


def test_patching_killed_and_resumed(tiny_llama_dir, tmp_path):
    args = ["patch", "--model", str(tiny_llama_dir), "--probe", "brackets", "--pairs", "96", "--positions", "4",
            "--method", "exact", "--no-plot"]
    _run(args + ["--out", str(tmp_path / "ref")])
    out = tmp_path / "kill"
    log = out / ".progress" / "exact.jsonl"
    _kill_when(args + ["--out", str(out)], ready=lambda: _lines(log) >= 1, done=lambda: (out / "patch.csv").exists())
    _run(args + ["--out", str(out)])
    _same_files(tmp_path / "ref", out, ["patch.csv", "layers.csv", "pairs.jsonl"])


def test_sgr_killed_and_resumed(tiny_llama_dir, tmp_path):
    args = ["sgr", "--model", str(tiny_llama_dir), "--max-prompts", "48", "--slots", "2", "--max-new-tokens", "24"]
    _run(args + ["--out", str(tmp_path / "ref.jsonl")])
    out = tmp_path / "kill.jsonl"
    _kill_when(args + ["--out", str(out)], ready=lambda: _lines(out) >= 4, done=lambda: _lines(out) >= 48)
    _run(args + ["--out", str(out)])
    assert out.read_bytes() == (tmp_path / "ref.jsonl").read_bytes()


@pytest.mark.parametrize("quant", [False])
def test_recovery_killed_and_resumed(tiny_llama_dir, tmp_path, quant):
    from safetensors.torch import load_file

    data = tmp_path / "sgr.jsonl"
    _run(["sgr", "--model", str(tiny_llama_dir), "--max-prompts", "40", "--max-new-tokens", "12", "--out", str(data)])
    args = ["recover", "--model", str(tiny_llama_dir), "--data", str(data), "--steps", "24", "--save-every", "2",
            "--eval-every", "4", "--heldout", "4", "--micro-batch", "2", "--warmup", "2", "--no-quant"]
    _run(args + ["--out", str(tmp_path / "ref")])
    out = tmp_path / "kill"
    _kill_when(args + ["--out", str(out)], ready=lambda: any((out / "checkpoints").glob("step-*")),
               done=lambda: (out / "adapter").exists())
    _run(args + ["--out", str(out)])
    from prunescope.core.results import read_table

    timing = ("train_seconds", "tokens_per_s")  # wall-clock columns: the only ones allowed to differ
    assert [{k: v for k, v in r.items() if k not in timing} for r in read_table(out / "curve.csv")] == \
        [{k: v for k, v in r.items() if k not in timing} for r in read_table(tmp_path / "ref/curve.csv")]
    ref, got = load_file(tmp_path / "ref/adapter/adapter_model.safetensors"), load_file(
        out / "adapter/adapter_model.safetensors")
    assert ref.keys() == got.keys()
    assert max(float((ref[k] - got[k]).abs().max()) for k in ref) <= 1e-6


def test_evaluation_killed_and_resumed(tiny_llama_dir, tmp_path):
    args = ["eval", "--model", str(tiny_llama_dir), "--tasks", "arc_easy,arc_challenge,openbookqa", "--limit", "24",
            "--num-fewshot", "0", "--batch-size", "2"]
    _run(args + ["--out", str(tmp_path / "ref")])
    out = tmp_path / "kill"
    _kill_when(args + ["--out", str(out)], ready=lambda: (out / "tasks" / "arc_easy.json").is_file(),
               done=lambda: (out / "tasks" / "openbookqa.json").is_file())
    _run(args + ["--out", str(out)])
    _same_files(tmp_path / "ref", out, ["eval.csv", "samples/arc_easy.jsonl", "samples/arc_challenge.jsonl",
                                       "samples/openbookqa.jsonl"])
