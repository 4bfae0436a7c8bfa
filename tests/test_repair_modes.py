"""Repairs as recovery modes: ``recover --mode linear`` (no data, the base model from the pruning
record), a repair followed by training (``linear+sgr``: the training starts from the repaired
weights, the record names both steps), the options' checks, and pipeline arms that repair."""

import json

import pytest
import torch

from prunescope.core.errors import PrunescopeError
from prunescope.core.options import Output, Placement
from prunescope.probe.tiny import save_tiny_model
from prunescope.prune.commands import PruneOptions, prune_model
from prunescope.recover.linear import LINEAR_RECORD
from prunescope.recover.train import RecoverOptions, recover_model, split_mode

TRAIN = ["--no-quant", "--steps", "2", "--train-batch", "4", "--micro-batch", "4", "--warmup", "0", "--heldout", "2"]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A 6-layer tiny Llama with layers 3 and 4 dropped, as prunescope prune writes it (its record
    names the base model), and the base model's folder."""
    root = tmp_path_factory.mktemp("repair")
    base = save_tiny_model("llama", root / "base", n_layers=6)
    prune_model(PruneOptions(strategy="reverse", drop=2), model=str(base), placement=Placement(device="cpu"),
                output=Output(out=str(root / "pruned"), progress=False))
    return root / "pruned", base


@pytest.fixture(scope="module")
def sgr_file(tmp_path_factory):
    recs = [{"id": str(i), "prompt": f"What is {i} plus {i}?", "response": f"{i} plus {i} is {2 * i}. " * 3}
            for i in range(12)]
    path = tmp_path_factory.mktemp("data") / "sgr.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def _down(folder, layer: int = 2) -> torch.Tensor:
    """Layer ``layer``'s down-projection of a checkpoint (in the pruned 6-layer model without 3 and
    4, layer 2 is where the map of the span 3-4 is folded)."""
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))[f"model.layers.{layer}.mlp.down_proj.weight"]


def test_recover_mode_linear_through_the_cli_writes_a_plain_checkpoint(pruned, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from prunescope.cli import main

    pruned_dir, base = pruned
    out = tmp_path / "linear"
    assert main(["recover", "--model", str(pruned_dir), "--mode", "linear", "--texts", "8", "--out", str(out),
                 "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "linear repair fitted in" in said and "relative residual (pruned -> repaired) 3-4" in said
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 4
    assert not torch.equal(_down(out), _down(pruned_dir))       # the map is folded in
    record = json.loads((out / "prunescope_recovery.json").read_text())
    assert record["base"] == str(pruned_dir) and record["recovery"]["mode"] == "linear"
    assert record["recovery"]["steps"] == 0 and record["recovery"]["repair"]["calibration"]["texts"] == 8
    assert record["recovery"]["repair"]["config"]["base"] == str(base)   # the pruning record's source model
    assert [s["mode"] for s in record["recovery"]["chain"]] == ["linear"]
    assert (out / LINEAR_RECORD).is_file() and not (out / "linear").exists()
    # from Python too, the same settings: the finished repair, nothing refitted
    again = recover_model(RecoverOptions(mode="linear", texts=8), model=str(pruned_dir),
                          output=Output(out=str(out), progress=False))
    assert again["repair"] == record["recovery"]["repair"]


def test_linear_then_sgr_trains_the_repaired_weights(pruned, sgr_file, tmp_path, monkeypatch):
    import prunescope.recover.train as rt

    pruned_dir, _ = pruned
    out = tmp_path / "chain"
    started = []
    real = rt.load_student

    def load_student(path, **kw):
        model = real(path, **kw)
        started.append((path, model.model.layers[2].mlp.down_proj.weight.detach().clone()))
        return model

    monkeypatch.setattr(rt, "load_student", load_student)
    from prunescope.cli import main

    assert main(["recover", "--model", str(pruned_dir), "--mode", "linear+sgr", "--texts", "8", "--data",
                 str(sgr_file), *TRAIN, "--out", str(out), "--quiet"]) == 0
    repaired = _down(out / "linear")
    (path, weight), = started
    assert str(path) == str(out / "linear") and torch.equal(weight, repaired)   # training starts repaired
    assert not torch.equal(repaired, _down(pruned_dir)) and not torch.equal(_down(out), repaired)
    record = json.loads((out / "prunescope_recovery.json").read_text())
    assert record["base"] == str(pruned_dir) and record["repaired"] == str(out / "linear")
    rec = record["recovery"]
    assert rec["mode"] == record["config"]["mode"] == "linear+sgr" and rec["steps"] == 2
    assert [s["mode"] for s in rec["chain"]] == ["linear", "sgr"] and rec["chain"][1]["model"] == str(out / "linear")
    assert rec["chain"][0]["relative_residual"][0] < rec["chain"][0]["relative_residual_pruned"][0]
    # --overwrite: the repair and the training again, the folder holding only this run's files
    assert main(["recover", "--model", str(pruned_dir), "--mode", "linear+sgr", "--texts", "8", "--data",
                 str(sgr_file), *TRAIN[:2], "3", *TRAIN[3:], "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert json.loads((out / "prunescope_recovery.json").read_text())["recovery"]["steps"] == 3
    assert (out / "linear" / LINEAR_RECORD).is_file()


def test_modes_split_and_repair_options_are_checked(pruned, tmp_path):
    assert [split_mode(m) for m in ("sgr", "linear", "linear_circuit+tune")] == [
        (None, "sgr"), ("linear", None), ("linear_circuit", "tune")]
    assert RecoverOptions(mode="linear+tune").check().train == "tune"
    assert RecoverOptions(mode="linear_circuit").linear_options().calibration_mix == 0.5
    assert RecoverOptions(mode="linear", circuit_mix=0.25).linear_options().calibration_mix == 0.25
    for options, message in [
        (RecoverOptions(mode="sgr", ridge=0.1), "--ridge: settings of the linear repair"),
        (RecoverOptions(mode="linear_circuit", circuit_mix=0.0), "give --circuit-mix above 0"),
        (RecoverOptions(mode="linear+distill"), "needs --teacher"),
        (RecoverOptions(mode="linear", train="tune"), "trains nothing"),
        (RecoverOptions(mode="linear", circuit_probes=["nope"]), "nope"),
    ]:
        with pytest.raises(PrunescopeError, match=message):
            options.check()
    out = tmp_path / "o"
    with pytest.raises(PrunescopeError, match="needs training data"):   # before the repair runs
        recover_model(RecoverOptions(mode="linear+sgr"), model=str(pruned[0]), output=Output(out=str(out)))
    assert not out.exists()


def test_pipeline_arms_repair_tune_and_chain(tiny_llama_dir, tmp_path):
    from prunescope.core.results import read_table
    from prunescope.pipeline import load_config_text, run_pipeline

    out = tmp_path / "r"
    cfg = tmp_path / "r.yaml"
    cfg.write_text(f"name: r\nout: {out}\nmodel: {tiny_llama_dir}\n"
                   "localize: {probes: [brackets], items: 8, patch_probes: []}\nprune: {ratio: 0.25, strategies: [bi]}\n"
                   "recover: {modes: [linear, linear_circuit, tune, linear+sgr], on: [bi], max_prompts: 12, "
                   "max_new_tokens: 8, steps: 2, warmup: 0, micro_batch: 4, heldout: 2, texts: 8}\n"
                   "evaluate: {tasks: [arc_easy], limit: 3, probe_items: 8}\n")
    run_pipeline(str(cfg), show_progress=False)
    arms = ["recovered-bi-linear", "recovered-bi-linear_circuit", "recovered-bi-tune", "recovered-bi-linear+sgr"]
    assert {r["condition"] for r in read_table(out / "probes.csv")} == {"base", "pruned-bi", *arms}
    assert {r["condition"] for r in read_table(out / "retention.csv")} >= {"pruned-bi", *arms}
    report = (out / "report.md").read_text()
    assert all(f"pruned-bi recovered by {a.removeprefix('recovered-bi-')}" in report for a in arms)
    mix = {a: json.loads((out / "recover" / a.removeprefix("recovered-") / "prunescope_recovery.json").read_text())
           ["recovery"] for a in arms}
    assert mix["recovered-bi-linear"]["repair"]["calibration"]["mix"] == 0.0
    assert mix["recovered-bi-linear_circuit"]["repair"]["calibration"]["mix"] == 0.5
    assert mix["recovered-bi-tune"]["train"] == "tune" and mix["recovered-bi-linear+sgr"]["steps"] == 2
    with pytest.raises(PrunescopeError, match="circuit_mix"):
        load_config_text("recover: {modes: [linear_circuit], circuit_mix: 0}\n")
    # only arms that train need the SGR answers
    assert load_config_text("recover: {modes: [linear], prompts: no-such.jsonl}\n")["recover"]["modes"] == ["linear"]
