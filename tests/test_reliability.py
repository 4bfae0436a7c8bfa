"""One writer per run folder, and no code from a run folder: a live lock refuses a second run, a
stale one (dead pid, this host) is taken over with a warning, a foreign host's is refused; a
planted pickle in a recovery checkpoint is refused and never executed."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from prunescope.core.errors import PrunescopeError
from prunescope.core.lock import LOCK_NAME, run_lock
from prunescope.cli import main


def _err(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def test_a_live_lock_refuses_a_second_run_then_a_stale_one_is_taken_over(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        args = ["sweep", "--model", str(tiny_llama_dir), "--items", "4", "--out", str(out), "--quiet", "--no-plot"]
        assert main(args) == 2
        msg = _err(capsys)
        assert f"in use by another sweep (process {sleeper.pid}" in msg
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]   # nothing else written
    finally:
        sleeper.kill()
        sleeper.wait()
    assert main(args) == 0                                           # the pid is gone: taken over
    assert "taking over the lock" in capsys.readouterr().err
    assert (out / "sweep.csv").is_file() and not (out / LOCK_NAME).exists()


def test_a_lock_from_another_host_is_refused(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere.example"}))
    with pytest.raises(PrunescopeError, match="on host 'elsewhere.example'.*delete the lock file"):
        with run_lock(tmp_path):
            pass


def test_the_lock_is_held_through_spawned_children(tmp_path):
    """A command's own child processes (devices=N) and nested commands pass the lock down."""
    with run_lock(tmp_path):
        code = "from prunescope.core.lock import run_lock; import sys\nwith run_lock(sys.argv[1]): print('ok')"
        p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                           env=os.environ.copy())
        assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
    assert not (tmp_path / LOCK_NAME).exists()


class _Payload:
    """Unpickling this creates a file: what a planted checkpoint would do with weights_only=False."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_planted_pickle_in_a_checkpoint_is_refused_and_never_run(tiny_llama_dir, tmp_path, capsys):
    from prunescope.recover.train import RecoverOptions, recover_model
    from prunescope.core.options import Output, Placement

    data = tmp_path / "sgr.jsonl"
    data.write_text("".join(json.dumps({"id": str(i), "prompt": f"Q{i}?", "response": f"A{i} " * 5}) + "\n"
                            for i in range(12)))
    out = tmp_path / "rec"
    cfg = RecoverOptions(data=str(data), quant=False, steps=6, save_every=2, eval_every=2, heldout=2, micro_batch=2,
                         warmup=1)
    s = recover_model(cfg, model=str(tiny_llama_dir), placement=Placement(), output=Output(out=str(out), progress=False),
                stop_after=2)
    assert not s["finished"]
    ck = next((out / "checkpoints").glob("step-*"))
    marker = tmp_path / "pwned"
    torch.save({"optimizer": _Payload(marker), "step": 2}, ck / "state.pt")
    args = ["recover", "--model", str(tiny_llama_dir), "--data", str(data), "--no-quant", "--steps", "6",
            "--save-every", "2", "--eval-every", "2", "--heldout", "2", "--micro-batch", "2", "--warmup", "1",
            "--out", str(out), "--quiet"]
    assert main(args) == 2
    assert "holds more than tensors and plain values" in _err(capsys)
    assert not marker.exists()


def _modes(root) -> dict[str, tuple[int, bool]]:
    """(permission bits, is a folder) of ``root`` and everything under it, by path from its parent."""
    import stat
    from pathlib import Path

    root = Path(root)
    return {str(p.relative_to(root.parent)): (stat.S_IMODE(p.stat().st_mode), p.is_dir())
            for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_and_folders_follow_the_umask(tiny_llama_dir, tmp_path, umask):
    """A results table, a pruned checkpoint and a recovered model (its adapter, checkpoint and merged
    files) get 0o666 / 0o777 less the umask, as open and mkdir give, not tempfile's 0o600 / 0o700."""
    from prunescope.core.options import Output, Placement
    from prunescope.core.results import write_table
    from prunescope.probe.models import load_model
    from prunescope.prune.surgery import save_pruned
    from prunescope.recover.train import RecoverOptions, recover_model

    data = tmp_path / "sgr.jsonl"
    data.write_text("".join(json.dumps({"id": str(i), "prompt": f"Q{i}?", "response": f"A{i} " * 5}) + "\n"
                            for i in range(10)))
    old = os.umask(umask)
    try:
        write_table([{"metric": "accuracy", "value": 1.0}], tmp_path / "tables" / "sweep")
        lm = load_model(tiny_llama_dir)
        pruned = save_pruned(lm.model, lm.tokenizer, [1], tmp_path / "pruned" / "bi25", record={"drop": [1]})
        recover_model(RecoverOptions(data=str(data), quant=False, steps=2, warmup=1, save_every=1, eval_every=1,
                                     heldout=2, micro_batch=2, train_batch=2),
                      model=str(pruned), placement=Placement(device="cpu"),
                      output=Output(out=str(tmp_path / "recovered" / "x"), progress=False))
    finally:
        os.umask(old)
    modes = {**_modes(tmp_path / "tables"), **_modes(pruned), **_modes(tmp_path / "recovered" / "x")}
    dirs = {p for p, (_, is_dir) in modes.items() if is_dir}
    assert {"tables/sweep.csv", "bi25/prunescope_plan.json", "x/adapter", "x/prunescope_recovery.json",
            "x/curve.csv", "x/curve.png", "x/config.json"} <= set(modes) and any(p.startswith("x/checkpoints/step-")
                                                                                    for p in dirs)
    wrong = {p: oct(m) for p, (m, is_dir) in modes.items() if m != (0o777 if is_dir else 0o666) & ~umask}
    assert not wrong, wrong
