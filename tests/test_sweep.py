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
    assert shared_prefix_length(plan) > 8
    _assert_schedules_agree(blocks, plan, conds, masked=True)


def _assert_schedules_agree(blocks, plan, conds, masked: bool = False) -> None:
    """Every schedule gives the naive logits: prefix reuse and the shared few-shot prefix's KV cache
    (and, with ``masked``, a masked forward of each whole-layer skip set)."""
    shared = SharedPrefix(blocks, plan.rows[0].ids[:shared_prefix_length(plan)], conds)
    with torch.no_grad():
        for batch in plan.batches(3):
            naive = sw.batch_logits_plain(blocks, batch, conds)
            prefix = sw.batch_logits_prefix(blocks, batch, conds)
            both = sw.batch_logits_shared(blocks, batch, conds, shared)
            for c in conds:
                assert torch.allclose(naive[c], prefix[c], atol=1e-5), c.name
                assert torch.allclose(naive[c], both[c], atol=1e-5), c.name
                if masked:
                    with blocks.skip(c.layers):     # the mask-free runs equal a masked forward
                        out = blocks.forward(batch.input_ids, batch.attention_mask, at=batch.at)
                    assert torch.allclose(naive[c], out, atol=1e-5), c.name


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
    opts = dict(probes="copy", items=6, batch_size=3)
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
        sweep(SweepOptions(probes="copy", items=7), model=model, output=Output(out=str(out), progress=False))


def test_default_model_bracket_profile(default_model):
    """Measured on the CPU machine (40 bracket items, seed 0): no skip 0.975; the most harmful
    single layer is layer 0 (margin accuracy 0.30, a drop of 0.675); layers 1 and 2 follow (0.60, 0.725)."""
    lm = default_model
    rows = sweep_blocks(lm.blocks, lm.tokenizer, {"brackets": make_items("brackets", 40, seed=0)},
                        SweepSettings(show_progress=False))
    acc = {r["condition"]: r["value"] for r in rows if r["metric"] == "margin_accuracy"}
    worst = min((c for c in acc if c != "none"), key=acc.get)
    assert 0.9 <= acc["none"] <= 1.0
    assert worst in ("skip:0", "skip:1")
    assert 0.5 <= acc["none"] - acc[worst] <= 0.85
    later = [acc[f"skip:{i}"] for i in range(12, 30)]
    assert sum(later) / len(later) > acc["none"] - 0.15   # late layers matter far less: not flat, not uniform


@pytest.mark.parametrize("scoring", ["first_diff", "logprob"])
def test_a_metric_undefined_for_the_items_gets_no_row(tiny, scoring):
    """Items without wrong answers have no choice metrics (margin_accuracy, logit_diff, p_correct): no
    row, not 0.0 or nan; in a mixed set they are averaged over the items that have them."""
    import math

    from prunescope.probe.tasks import Item

    model, tok = tiny
    bare = [Item("1 + 2 =", " 3"), Item("2 + 2 =", " 4"), Item("3 + 3 =", " 6")]
    mixed = [Item("1 + 2 =", " 3", (" 4",)), *bare[1:]]
    rows = sweep_blocks(Blocks(model), tok, {"bare": bare, "mixed": mixed},
                        SweepSettings(windows=[1], scoring=scoring, show_progress=False))
    assert all(not math.isnan(r["value"]) for r in rows)
    got = {(r["probe"], r["metric"]) for r in rows}
    assert {m for p, m in got if p == "bare"} == {"exact_match", "token_accuracy"}
    assert {m for p, m in got if p == "mixed"} == {"margin_accuracy", "logit_diff", "p_correct", "exact_match",
                                                  "token_accuracy"}
    n = {(r["probe"], r["metric"]): r["n"] for r in rows}
    assert n[("mixed", "margin_accuracy")] == 1 and n[("mixed", "exact_match")] == 3 and n[("bare", "exact_match")] == 3


def test_cli_sweep_of_items_without_wrong_answers(tiny_llama_dir, tmp_path, capsys):
    import json

    from prunescope.cli import main

    items = tmp_path / "facts.jsonl"
    items.write_text("".join(json.dumps({"prompt": f"{i} + {i} =", "answer": f" {2 * i}"}) + "\n" for i in range(4)))
    out = tmp_path / "run"
    assert main(["sweep", "--model", str(tiny_llama_dir), "--probes", str(items), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "facts.jsonl:exact_match" in printed and "accuracy" not in printed and "nan" not in printed
    table = read_table(out / "sweep.csv")
    assert {r["metric"] for r in table} == {"exact_match", "token_accuracy"}
    assert (out / "sweep_exact_match.png").is_file()


def test_prefix_reuse_equals_naive_logits_for_sublayer_skips(tiny):
    """Attention-only and MLP-only skips (and mixed sets) give the same logits through every schedule:
    prefix reuse, the shared few-shot prefix's KV cache (a skipped attention stores zeros there) and
    one full forward per condition."""
    model, tok = tiny
    blocks = Blocks(model)
    plan = ScoringPlan(tok, make_items("arithmetic_multi", n=5, seed=1, shots=2))
    conds = make_conditions(blocks.n_layers, windows=[1, 2], sets=[["attn:1", "mlp:2"], [0, "attn:3"]], sublayers=True)
    assert {"skip_attn:1-2", "skip_mlp:3", "skip:attn:1,mlp:2", "skip:0,attn:3"} <= {c.name for c in conds}
    _assert_schedules_agree(blocks, plan, conds)
