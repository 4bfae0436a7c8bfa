"""Sweeps: prefix reuse (and shared-prefix reuse) equal the naive schedule; resume; real profile."""


import pytest
import torch

import prunescope.probe.sweep as sw
from prunescope.probe.blocks import Blocks
from prunescope.core.errors import PrunescopeError
from prunescope.core.options import Output
from prunescope.core.results import read_table
from prunescope.probe.scoring import ScoringPlan
from prunescope.probe.sweep import (SharedPrefix, SweepOptions, SweepSettings, make_conditions, shared_prefix_length,
                                    sweep, sweep_blocks)
from prunescope.probe.tasks import make_items


def test_prefix_reuse_equals_naive_logits(tiny):
    model, tok = tiny
    blocks = Blocks(model)
    plan = ScoringPlan(tok, make_items("arithmetic_multi", n=7, seed=0, shots=2))
    conds = make_conditions(blocks.n_layers, windows=[1, 2], sets=[[0, 3]])
    P = shared_prefix_length(plan)
    assert P > 8
    shared = SharedPrefix(blocks, plan.rows[0].ids[:P], conds)
    with torch.no_grad():
        for batch in plan.batches(3):
            naive = sw.batch_logits_plain(blocks, batch, conds)
            prefix = sw.batch_logits_prefix(blocks, batch, conds)
            both = sw.batch_logits_shared(blocks, batch, conds, shared)
            for c in conds:
                assert torch.allclose(naive[c], prefix[c], atol=1e-5), c.name
                assert torch.allclose(naive[c], both[c], atol=1e-5), c.name
                with blocks.skip(c.layers):     # and the mask-free runs equal a masked forward
                    masked = blocks.forward(batch.input_ids, batch.attention_mask, at=batch.at)
                assert torch.allclose(naive[c], masked, atol=1e-5), c.name


def test_conditions_and_bad_input():
    names = [c.name for c in make_conditions(6, windows=[1, 3], sets=[[4, 1], [2, 3]])]
    assert names[:3] == ["none", "skip:0", "skip:1"] and "skip:3-5" in names and "skip:1,4" in names
    assert "skip:2-3" in names
    with pytest.raises(PrunescopeError, match="too wide"):
        make_conditions(6, windows=[6])
    with pytest.raises(PrunescopeError, match="positive"):
        make_conditions(6, windows=[0])
    with pytest.raises(PrunescopeError, match="every layer"):
        make_conditions(3, sets=[[0, 1, 2]])


def test_resume_after_crash(tiny_llama_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = []
    real = sw.batch_logits_prefix

    def crashing(blocks, batch, conds):
        calls.append(len(conds))
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        return real(blocks, batch, conds)

    monkeypatch.setattr(sw, "batch_logits_prefix", crashing)
    model = str(tiny_llama_dir)
    opts = dict(probe="copy", n=6, batch_size=3)
    with pytest.raises(KeyboardInterrupt):
        sweep(SweepOptions(**opts), model=model, output=Output(out=str(out), progress=False, plot=False))
    assert not (out / "sweep.csv").exists()              # nothing half-written
    assert (out / "items" / "copy.jsonl").is_file()
    monkeypatch.setattr(sw, "batch_logits_prefix", real)
    counted = []
    monkeypatch.setattr(sw, "batch_logits_prefix", lambda b, batch, conds: counted.append(1) or real(b, batch, conds))
    rows = sweep(SweepOptions(**opts), model=model, output=Output(out=str(out), progress=False, plot=False))
    assert len(counted) == 1                             # only the unfinished batch ran again
    monkeypatch.setattr(sw, "batch_logits_prefix", real)
    fresh = sweep(SweepOptions(**opts), model=model,
                  output=Output(out=str(tmp_path / "fresh"), progress=False, plot=False))
    assert [r["value"] for r in rows] == pytest.approx([r["value"] for r in fresh], nan_ok=True)
    table = read_table(out / "sweep.csv")
    assert {"model", "probe", "condition", "layers", "metric", "value", "n", "seed"} <= set(table[0])
    with pytest.raises(PrunescopeError, match="different settings"):
        sweep(SweepOptions(probe="copy", n=7), model=model, output=Output(out=str(out), progress=False))


def test_default_model_bracket_profile(default_model):
    """Measured on the CPU machine (40 bracket items, seed 0): no skip 0.975; the most harmful
    single layer is layer 0 (accuracy 0.30, a drop of 0.675); layers 1 and 2 follow (0.60, 0.725)."""
    lm = default_model
    rows = sweep_blocks(lm.blocks, lm.tokenizer, {"brackets": make_items("brackets", 40, seed=0)},
                        SweepSettings(show_progress=False))
    acc = {r["condition"]: r["value"] for r in rows if r["metric"] == "accuracy"}
    worst = min((c for c in acc if c != "none"), key=acc.get)
    assert 0.9 <= acc["none"] <= 1.0
    assert worst in ("skip:0", "skip:1")
    assert 0.5 <= acc["none"] - acc[worst] <= 0.85
    later = [acc[f"skip:{i}"] for i in range(12, 30)]
    assert sum(later) / len(later) > acc["none"] - 0.15   # late layers matter far less: not flat, not uniform
