"""Sublayer skips (attention or MLP alone) on every family, the sublayer sweep against naive runs,
pair interactions and cumulative removal against naive skip sets, their figures and flags."""

import json

import pytest
import torch

from prunescope.core.errors import PrunescopeError
from prunescope.core.options import Output
from prunescope.core.results import read_table, write_table
from prunescope.probe.blocks import Blocks
from prunescope.probe.interaction import (block_influence, cumulative_rows, interaction_rows, layer_order,
                                          pair_sets, parse_layers, single_skip_drops, table_scores)
from prunescope.probe.scoring import ScoringPlan, aggregate_defined, score_items
from prunescope.probe.sweep import (Condition, SweepOptions, SweepSettings, condition_of, make_conditions,
                                    parse_skip_sets, sweep, sweep_blocks, sweep_conditions)
from prunescope.probe.tasks import make_items

KINDS = ("attn", "mlp")


def _zero(t, _name):
    return torch.zeros_like(t)


@pytest.mark.parametrize("kind", KINDS)
def test_skipped_sublayer_equals_zeroed_output(tiny, prompts, kind):
    """Skipping a sublayer is zeroing what it adds to the residual stream (after Gemma's post-norms),
    exactly; it changes the logits, and the model is whole again after the block."""
    model, _ = tiny
    ids, mask = prompts
    blocks = Blocks(model)
    with torch.no_grad():
        full = blocks.forward(ids, mask)
        for layer in range(blocks.n_layers):
            with blocks.skip(**{kind: [layer]}):
                skipped = blocks.forward(ids, mask)
            with blocks.hooks({f"blocks.{layer}.hook_{kind}_out": _zero}):
                zeroed = blocks.forward(ids, mask)
            assert torch.equal(skipped, zeroed), (kind, layer)
            assert (skipped - full).abs().max() > 1e-3
        assert torch.equal(blocks.forward(ids, mask), full)


def test_both_sublayers_equal_the_layer_skip(tiny, prompts):
    model, _ = tiny
    ids, mask = prompts
    blocks = Blocks(model)
    with torch.no_grad():
        for layer in range(blocks.n_layers):
            with blocks.skip_sublayers(attn=[layer], mlp=[layer]):
                both = blocks.forward(ids, mask)
            with blocks.skip([layer]):
                whole = blocks.forward(ids, mask)
            assert torch.equal(both, whole), layer


@pytest.mark.parametrize("kind", KINDS)
def test_decoding_with_a_skipped_sublayer_equals_zeroing_it(tiny, kind):
    """With a KV cache: a skipped attention stores zeros for its layer (the cache keeps one length),
    and greedy decoding gives the tokens of the zeroed sublayer."""
    model, tok = tiny
    blocks = Blocks(model)
    ids = tok(["Alice went to the market and bought 12"], return_tensors="pt").input_ids
    with torch.no_grad(), blocks.skip(**{kind: [1]}):
        skipped = model.generate(ids, max_new_tokens=8, do_sample=False)
    with torch.no_grad(), blocks.hooks({f"blocks.1.hook_{kind}_out": _zero}):
        zeroed = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(skipped, zeroed)


def test_skipped_sublayer_hooks_see_zeros_and_are_removed(tiny, prompts):
    model, _ = tiny
    ids, mask = prompts
    blocks = Blocks(model)
    seen = {}
    with torch.no_grad(), blocks.capture(["blocks.1.hook_attn_out", "blocks.1.hook_mlp_out"]) as acts:
        with blocks.skip(attn=[1]):
            blocks.forward(ids, mask)
        seen.update(acts)
    assert not seen["blocks.1.hook_attn_out"].any() and seen["blocks.1.hook_mlp_out"].any()
    with pytest.raises(RuntimeError), blocks.skip(mlp=[2]):
        raise RuntimeError("boom")
    assert all(type(layer.mlp).__name__ != "_ZeroSublayer" for layer in blocks.layers)
    with pytest.raises(PrunescopeError, match="out of range"), blocks.skip(attn=[blocks.n_layers]):
        pass


def _naive(blocks, plan, c: Condition) -> dict[str, float]:
    """A plan's metrics under one condition: full forwards, sublayers zeroed through hooks (not the
    sweep's stand-ins), no prefix reuse."""
    hooks = {f"blocks.{i}.hook_{k}_out": _zero for k in KINDS for i in getattr(c, k)}
    with blocks.skip(c.layers), blocks.hooks(hooks):
        return {m: v for m, (v, _) in aggregate_defined(score_items(blocks, plan, 3), plan.metric_names).items()}


def _values(rows, condition):
    return {(r["probe"], r["metric"]): r["value"] for r in rows if r["condition"] == condition}


def test_sublayer_sweep_rows_equal_naive_runs(tiny):
    """Prefix-reused sublayer conditions (each from the cached input of its first layer, with a shared
    few-shot prefix cached per condition) give the rows of one naive run per condition."""
    model, tok = tiny
    blocks = Blocks(model)
    plan = ScoringPlan(tok, make_items("arithmetic_multi", n=7, seed=0, shots=2))
    s = SweepSettings(windows=[1], sublayers=True, sets=[["attn:1", "mlp:2"], [0, "mlp:3"]], batch_size=3,
                      show_progress=False)
    rows = sweep_blocks(blocks, tok, {"a": plan}, s)
    conds = make_conditions(blocks.n_layers, [1], s.sets, sublayers=True)
    names = {c.name for c in conds}
    assert {"skip_attn:0", "skip_mlp:3", "skip:attn:1,mlp:2", "skip:0,mlp:3"} <= names
    assert {r["condition"] for r in rows} == names
    for c in conds:
        got = _values(rows, c.name)
        assert got == pytest.approx({("a", m): v for m, v in _naive(blocks, plan, c).items()}, abs=1e-6), c.name
    layers = {r["condition"]: r["layers"] for r in rows}
    assert layers["skip_attn:2"] == "attn:2" and layers["skip:0,mlp:3"] == "0 mlp:3"


def test_pair_interaction_equals_naive_drops(tiny):
    model, tok = tiny
    blocks = Blocks(model)
    plan = ScoringPlan(tok, make_items("copy", n=6, seed=1))
    rows = sweep_blocks(blocks, tok, {"copy": plan}, SweepSettings(windows=[2], pairs=[0, 2, 3], show_progress=False))
    inter = {(r["condition"], r["metric"]): r for r in rows if r["metric"].startswith("interaction_")}
    assert {c for c, _ in inter} == {"skip:0,2", "skip:0,3", "skip:2-3"}
    none = _naive(blocks, plan, Condition(()))
    for i, j in [(0, 2), (0, 3), (2, 3)]:
        a, b, ab = (_naive(blocks, plan, Condition(s)) for s in ((i,), (j,), (i, j)))
        for m in ("margin_accuracy", "logit_diff", "exact_match"):
            want = (none[m] - ab[m]) - (none[m] - a[m]) - (none[m] - b[m])
            r = inter[(Condition((i, j)).name, f"interaction_{m}")]
            assert r["value"] == pytest.approx(want, abs=1e-6) and r["layers"] == f"{i} {j}"


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_cumulative_curve_equals_skip_sets_of_the_first_layers(family, tmp_path):
    from prunescope.probe.tiny import tiny_model

    model, tok = tiny_model(family)
    blocks = Blocks(model)
    plan = ScoringPlan(tok, make_items("arithmetic", n=6, seed=0))
    table = tmp_path / "layers.csv"   # a patching run's per-layer table: lowest effect first
    write_table([{"model": "model", "probe": "arithmetic", "condition": f"layer:{i}", "layers": str(i),
                  "metric": "patching_effect", "value": v, "n": 4, "seed": 0, "method": "exact"}
                 for i, v in enumerate([0.9, 0.1, 0.5, 0.3])], tmp_path / "layers")
    s = SweepSettings(windows=[1], cumulative=["skip-drop", "bi", str(table)], cumulative_steps=3,
                      show_progress=False)
    rows = sweep_blocks(blocks, tok, {"arithmetic": plan}, s)
    curves = [r for r in rows if r.get("order")]
    orders = {r["order"]: [int(x) for x in r["layers"].split()] for r in curves if r["condition"] == "cumulative:3"}
    assert orders[f"patching_effect:{table}"] == [1, 3, 2]
    assert orders["skip-drop"] == layer_order(single_skip_drops(rows)[0])[:3]
    texts = [it.prompt + it.answer for it in plan.items]
    assert orders["bi"] == layer_order(block_influence(blocks, tok, texts))[:3]
    for r in curves:
        k = int(r["condition"].split(":")[1])
        removed = [int(x) for x in str(r["layers"]).split()]
        assert removed == orders[r["order"]][:k]
        want = _naive(blocks, plan, Condition(tuple(removed)))[r["metric"]]
        assert r["value"] == pytest.approx(want, abs=1e-6), (r["order"], k, r["metric"])
    assert {r["condition"] for r in curves} == {f"cumulative:{k}" for k in range(4)}


def test_bi_order_is_prune_scores_block_influence(tiny):
    from prunescope.prune.scores import representation_scores

    model, tok = tiny
    texts = [it.prompt + it.answer for it in make_items("brackets", 5, seed=0)]
    ours = block_influence(Blocks(model), tok, texts)
    theirs = {int(r["layers"]): r["value"] for r in representation_scores(Blocks(model), tok, texts)}
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_tables_give_orders(tmp_path):
    sweep_rows = [{"model": "m", "probe": p, "condition": c, "layers": ls, "metric": "p_correct", "value": v, "n": 4,
                   "seed": 0} for p, off in (("a", 0.0), ("b", 0.2))
                  for c, ls, v in (("none", "", 0.9), ("skip:0", "0", 0.1 + off), ("skip:1", "1", 0.8 - off))]
    write_table(sweep_rows, tmp_path / "sweep")
    scores, what = table_scores(tmp_path / "sweep.csv", "m")
    assert what == "skip_drop_p_correct" and layer_order(scores) == [1, 0]
    write_table([{**r, "condition": "layer:0", "layers": "0", "metric": "block_influence"} for r in sweep_rows[:1]],
                tmp_path / "scores")
    assert table_scores(tmp_path / "scores.csv")[1] == "block_influence"
    with pytest.raises(PrunescopeError, match="not for the swept model"):
        table_scores(tmp_path / "sweep.csv", "other")
    with pytest.raises(PrunescopeError, match="does not exist"):
        table_scores(tmp_path / "missing.csv")


def test_rows_helpers_match_by_layer_sets():
    rows = [{"model": "m", "probe": "p", "condition": c, "layers": ls, "metric": "exact_match", "value": v, "n": 2,
             "seed": 0} for c, ls, v in (("none", "", 1.0), ("skip:0", "0", 0.5), ("skip:2", "2", 1.0),
                                        ("skip:0,2", "0 2", 0.0), ("skip_attn:0", "attn:0", 0.2))]
    (r,) = interaction_rows(rows, [0, 2])
    assert (r["condition"], r["metric"], r["value"]) == ("skip:0,2", "interaction_exact_match", 0.5)
    curve = cumulative_rows(rows, {"x": [2, 0]})
    assert [(c["condition"], c["layers"], c["value"]) for c in curve] == [
        ("cumulative:0", "", 1.0), ("cumulative:1", "2", 1.0), ("cumulative:2", "2 0", 0.0)]
    assert pair_sets([1, 0]) == [(0,), (1,), (0, 1)] and parse_layers("2-4,7") == [2, 3, 4, 7]


def test_skip_set_syntax_and_names():
    assert parse_skip_sets("attn:3,mlp:4-5;10-12") == [["attn:3", "mlp:4", "mlp:5"], [10, 11, 12]]
    assert condition_of(["attn:3", "mlp:3", 5]) == Condition((3, 5))      # both sublayers: the layer
    assert condition_of(["attn:3", 3]).name == "skip:3"
    assert Condition((), mlp=(4, 5, 6)).name == "skip_mlp:4-6"
    assert Condition((1,), attn=(3, 5)).name == "skip:1,attn:3,attn:5"
    assert condition_of(parse_skip_sets(Condition((1,), attn=(3, 5)).name[5:])[0]) == Condition((1,), attn=(3, 5))
    with pytest.raises(PrunescopeError, match="sublayer is attn:L or mlp:L"):
        parse_skip_sets("ffn:3")
    with pytest.raises(PrunescopeError, match="twice"):
        make_conditions(6, sets=[["attn:3", "attn:3"]])
    with pytest.raises(PrunescopeError, match="every layer"):
        make_conditions(3, sets=[[0, "attn:1", "mlp:1", 2]])
    with pytest.raises(PrunescopeError, match="out of range"):
        make_conditions(3, sets=[["mlp:3"]])
    with pytest.raises(PrunescopeError, match="pair layers"):
        sweep_conditions(4, SweepSettings(pairs=[2, 9]))


def test_options_read_the_new_flags():
    o = SweepOptions(sets="1;attn:2,mlp:3", pairs_range="0-2", cumulative="bi,skip-drop", sublayers=True).check()
    assert o.sets == [[1], ["attn:2", "mlp:3"]] and o.pairs_range == [0, 1, 2] and o.cumulative == ["bi", "skip-drop"]
    assert SweepOptions(sets=[[1, "attn:2"]], pairs_range=[3, 4]).check().sets == [[1, "attn:2"]]
    with pytest.raises(PrunescopeError, match="neither bi nor skip-drop"):
        SweepOptions(cumulative="nowhere.csv").check()
    with pytest.raises(PrunescopeError, match="pairs_range"):
        SweepOptions(pairs_range="a-b").check()


def test_command_writes_rows_and_figures(tiny_llama_dir, tmp_path, capsys):
    from prunescope.cli import main

    out = tmp_path / "run"
    argv = ["sweep", "--model", str(tiny_llama_dir), "--probes", "copy", "--items", "6", "--sublayers",
            "--pairs-range", "1-3", "--cumulative", "skip-drop,bi", "--sets", "attn:1,mlp:2", "--out", str(out),
            "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "skip_attn:3" in printed and "skip-drop cumulative:2" in printed and "pairs.png" in printed
    for name in ("sweep_layers.png", "sweep_exact_match.png", "pairs.png", "pairs_exact_match.png",
                 "cumulative.png", "cumulative_exact_match.png"):
        assert (out / name).is_file(), name
    table = read_table(out / "sweep.csv")
    assert {r["order"] for r in table if r["condition"].startswith("cumulative:")} == {"skip-drop", "bi"}
    assert {r["condition"] for r in table if r["metric"] == "interaction_margin_accuracy"} == {
        "skip:1-2", "skip:1,3", "skip:2-3"}
    config = json.loads((out / "config.json").read_text())
    assert config["pairs_range"] == [1, 2, 3] and config["sublayers"] is True
    rerun = sweep(SweepOptions(probes="copy", items=6, sublayers=True, pairs_range="1-3", cumulative="skip-drop,bi",
                               sets="attn:1,mlp:2"), model=str(tiny_llama_dir),
                  output=Output(out=str(out), progress=False, plot=False))
    assert [r["value"] for r in rerun] == pytest.approx([r["value"] for r in table])


INTERACTIONS = dict(probes="copy", items=5, batch_size=2, sublayers=True, pairs_range="1-3",
                    cumulative="bi,skip-drop", cumulative_steps=2)


def _group_worker(model_dir: str) -> list[dict]:
    """Runs in each of 2 processes of one gloo group (started by ``launch``)."""
    from prunescope.core.distributed import distributed

    with distributed("cpu"):
        return sweep(SweepOptions(**INTERACTIONS), model=model_dir, output=Output(progress=False, plot=False))


def test_two_processes_give_the_same_sublayer_pair_and_cumulative_rows(tiny_llama_dir):
    """The orders are rank 0's (broadcast), the extra skip sets split like any condition: the rows of
    a group of two equal those of one process."""
    from prunescope.core.distributed import launch

    single = sweep(SweepOptions(**INTERACTIONS), model=str(tiny_llama_dir), output=Output(progress=False, plot=False))
    group = launch(_group_worker, 2, (str(tiny_llama_dir),))
    assert group == single
    assert {r["order"] for r in single if "order" in r} == {"bi", "skip-drop"}
