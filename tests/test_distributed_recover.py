"""Recovery over 2 processes (gloo, CPU) equals one process at the same effective batch.

Each optimizer step's micro-batches are split over the ranks, every rank divides its losses by the
whole step's response tokens and the gradients are summed over the ranks, so the step's loss and
gradient are one process's. Only the order of the fp32 sums differs ((g0 + g2) + (g1 + g3) instead of
((g0 + g1) + g2) + g3), which moves the last bits; hence ``allclose`` at 1e-5 rather than equality
(LoRA dropout is 0 here: a rank draws its own dropout, which no single process reproduces).

One group of 2 processes runs LoRA in full (``recover_model`` inside the group, the torchrun path)
and layer tuning through the CLI; ``recover_model(..., placement=Placement(devices=2))`` spawns a
second group for a run stopped after 2 steps, which one process then resumes.
"""

import contextlib
import io
import json

import pytest
import torch

from prunescope.core.distributed import launch
from prunescope.core.errors import PrunescopeError
from prunescope.core.options import Output, Placement
from prunescope.recover.train import RecoverOptions, recover_model

LORA = dict(quant=False, dropout=0.0, steps=4, train_batch=4, micro_batch=1, warmup=1, eval_every=1, save_every=2,
            heldout=6, lr=2e-3, rank=8, alpha=16)
TUNE = ["--train", "tune", "--tune-last", "1", "--steps", "3", "--train-batch", "4", "--micro-batch", "2",
        "--warmup", "1", "--eval-every", "1", "--heldout", "6", "--lr", "1e-3"]


def _records() -> list[dict]:
    return [{"id": str(i), "prompt": f"What is {i} plus {i}?", "response": f"{i} plus {i} is {2 * i}. " * (1 + i % 3)}
            for i in range(30)]


def _where(out, **placement) -> dict:
    return dict(placement=Placement(device="cpu", **placement), output=Output(out=str(out), progress=False))


def _tune_argv(model: str, data: str, out: str) -> list[str]:
    return ["recover", "--model", model, "--data", data, "--device", "cpu", "--quiet", "--out", out, *TUNE]


def _worker(model: str, data: str, root: str) -> dict:
    """Runs in each of 2 processes of one gloo group (started by ``launch``)."""
    from prunescope.cli import main
    from prunescope.core.distributed import distributed

    with distributed("cpu") as d:
        lora = recover_model(RecoverOptions(data=data, **LORA), model=model, merge=False, **_where(f"{root}/lora"))
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            code = main(_tune_argv(model, data, f"{root}/tune"))
        return {"world": d.world_size, "lora": lora, "code": code, "printed": d.gather(text.getvalue())}


def _curve(out) -> list[dict]:
    return [json.loads(x) for x in (out / "curve.jsonl").read_text().splitlines()]


def _same_curve(a: list[dict], b: list[dict]) -> None:
    assert [c["step"] for c in a] == [c["step"] for c in b] and [c["tokens"] for c in a] == [c["tokens"] for c in b]
    for x, y in zip(a, b, strict=True):
        for key in ("train_loss", "eval_loss", "grad_norm"):
            if x[key] is None:
                assert y[key] is None
            else:
                assert x[key] == pytest.approx(y[key], abs=1e-5, rel=1e-5), (key, x, y)


def _same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=0), (name, (a[name] - b[name]).abs().max())


def _adapter(out) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "adapter" / "adapter_model.safetensors")


def _tuned(out) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "model.safetensors")


@pytest.fixture(scope="module")
def runs(tiny_llama_dir, tmp_path_factory):
    from prunescope.cli import main

    model, root = str(tiny_llama_dir), tmp_path_factory.mktemp("dist-recover")
    data = root / "sgr.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    one, two = root / "one", root / "two"
    got = launch(_worker, 2, (model, str(data), str(two)))
    part = recover_model(RecoverOptions(data=str(data), **LORA), model=model, merge=False, stop_after=2,
                         **_where(two / "part", devices=2))
    ref = recover_model(RecoverOptions(data=str(data), **LORA), model=model, merge=False, **_where(one / "lora"))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(_tune_argv(model, str(data), str(one / "tune"))) == 0
    resumed = recover_model(RecoverOptions(data=str(data), **LORA), model=model, merge=False, **_where(two / "part"))
    return dict(got=got, ref=ref, part=part, resumed=resumed, one=one, two=two, data=data)


def test_lora_over_two_processes_equals_one(runs):
    got, ref, one, two = runs["got"], runs["ref"], runs["one"], runs["two"]
    assert got["world"] == 2
    _same_curve(_curve(two / "lora"), _curve(one / "lora"))
    assert [c["step"] for c in _curve(one / "lora")] == [0, 1, 2, 3, 4]
    _same_weights(_adapter(two / "lora"), _adapter(one / "lora"))
    for key in ("steps", "tokens", "trained_tokens", "all_tokens", "planned_steps", "planned_tokens", "n_train",
                "n_eval", "skipped_steps", "finished"):
        assert got["lora"][key] == ref[key], key
    assert got["lora"]["final_eval_ppl"] == pytest.approx(ref["final_eval_ppl"], rel=1e-5)
    # one writer: the run config is one process's (so either resumes the other's folder)
    config = "prunescope_recovery_run.json"
    assert (two / "lora" / config).read_text() == (one / "lora" / config).read_text()


def test_layer_tuning_through_the_cli_over_two_processes(runs):
    got, one, two = runs["got"], runs["one"], runs["two"]
    assert got["code"] == 0 and "3 steps" in got["printed"][0] and got["printed"][1] == ""  # rank 0 prints
    _same_curve(_curve(two / "tune"), _curve(one / "tune"))
    _same_weights(_tuned(two / "tune"), _tuned(one / "tune"))


def test_devices_run_stops_and_one_process_resumes_it(runs):
    part, resumed, one, two = runs["part"], runs["resumed"], runs["one"], runs["two"]
    assert not part["finished"] and part["steps"] == 2
    assert [p.name for p in (two / "part" / "checkpoints").iterdir()] == ["step-000004"]
    assert resumed["finished"] and resumed["steps"] == 4 and resumed["tokens"] == runs["ref"]["tokens"]
    _same_curve(_curve(two / "part"), _curve(one / "lora"))
    _same_weights(_adapter(two / "part"), _adapter(one / "lora"))


def test_more_processes_than_micro_batches_are_refused(runs, tiny_llama_dir, tmp_path):
    from prunescope.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["recover", "--model", str(tiny_llama_dir), "--data", str(runs["data"]), "--device", "cpu",
                     "--devices", "8", "--train-batch", "4", "--micro-batch", "1", "--quiet", "--out",
                     str(tmp_path / "x")])
    assert code == 2 and "fewer --devices" in err.getvalue()
    with pytest.raises(PrunescopeError, match="one process"):
        recover_model(RecoverOptions(mode="linear"), model=str(tiny_llama_dir), **_where(tmp_path / "y", devices=2))


def _sum_worker() -> list:
    from prunescope.core.distributed import distributed, sum_gradients

    with distributed("cpu") as d:
        params = [torch.nn.Parameter(torch.zeros(n)) for n in (3, 4, 2, 6)]
        params.append(torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16)))
        for i, p in enumerate(params):
            if not (i == 2 or (i == 1 and d.rank == 0)):   # 2: no gradient anywhere; 1: on rank 1 only
                p.grad = torch.full_like(p, float(10 * d.rank + i + 1))
        sum_gradients(d, params, bucket=5)   # several buckets, split by size and by dtype
        return [None if p.grad is None else p.grad.float().tolist() for p in params]


def test_sum_gradients_over_buckets_and_missing_gradients():
    got = launch(_sum_worker, 2)
    assert got == [[12.0] * 3, [12.0] * 4, None, [18.0] * 6, [20.0] * 2]
