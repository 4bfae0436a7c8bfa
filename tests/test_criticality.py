"""``prunescope criticality``: layer properties (checked against plain forwards and hooks), Spearman
with ties (hand-worked), the bootstrap interval, drops from a sweep table, the capability map, and
the command: one error line for a bad sweep table with nothing written, the four files on the real
default model."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from prunescope.analysis.criticality import (
    MEAN, PROPERTIES, attention_and_sublayers, average_ranks, capability_map, criticality, layer_properties,
    rank_correlations, spearman_rows,
)
from prunescope.cli import main
from prunescope.probe.blocks import Blocks
from prunescope.probe.tiny import tiny_model

TEXTS = ["Alice went to the market and bought 12 apples", "def f(arr, n): return arr[n", "1 + 2 = 3"]


def _lm(family="llama"):
    model, tok = tiny_model(family)
    return SimpleNamespace(model=model, tokenizer=tok, name=f"tiny-{family}", blocks=Blocks(model))


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("prunescope: error: ")
    return err[0]


# ---------------------------------------------------------------- properties
def test_properties_one_finite_row_per_layer(family):
    lm = _lm(family)
    rows = layer_properties(lm, TEXTS)
    assert [r["layer"] for r in rows] == list(range(lm.blocks.n_layers))
    assert rows[0]["depth"] == 0.0 and rows[-1]["depth"] == 1.0
    for r in rows:
        assert all(math.isfinite(r[p]) for p in PROPERTIES), r
        assert r["attn_out_norm"] > 0 and r["mlp_out_norm"] > 0


def _plain_entropy(model, tok, texts):
    """Per layer: entropy of each attention row of a plain eager forward, mean over heads and tokens."""
    total, count = torch.zeros(model.config.num_hidden_layers, dtype=torch.float64), 0
    for text in texts:
        enc = tok([text], return_tensors="pt")
        with torch.no_grad():
            atts = model(**enc, output_attentions=True).attentions
        seq = enc.input_ids.shape[1]
        for i, a in enumerate(atts):
            p = a[0].double()                                    # [heads, queries, keys]
            h = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)
            assert h.min() >= -1e-9 and h.max() <= math.log(seq) + 1e-9
            total[i] += h.mean(0).sum()
        count += seq
    return (total / count).tolist()


def test_attention_entropy_equals_a_plain_eager_forward():
    """The same value under SDPA: the pass switches the model to eager attention and back."""
    lm = _lm("llama")
    expected = _plain_entropy(lm.model, lm.tokenizer, TEXTS)     # the tiny models load eager
    lm.model.set_attn_implementation("sdpa")
    got = attention_and_sublayers(lm.blocks, lm.tokenizer, TEXTS)["attention_entropy"]
    assert lm.model.config._attn_implementation == "sdpa"
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert all(0 <= h <= math.log(max(len(lm.tokenizer(t).input_ids) for t in TEXTS)) for h in got)


def test_sublayer_norms_equal_naive_hooks():
    """mlp_out_norm / attn_out_norm: |what the sublayer adds| / |residual entering the layer|, mean over tokens."""
    lm = _lm("llama")
    layers = lm.model.model.layers
    got = attention_and_sublayers(lm.blocks, lm.tokenizer, TEXTS)
    for i in (0, 2):
        seen = {}
        hooks = [layers[i].register_forward_pre_hook(
                     lambda m, a, kw: seen.__setitem__("pre", (a[0] if a else kw["hidden_states"])[0]),
                     with_kwargs=True),
                 layers[i].mlp.register_forward_hook(lambda m, a, out: seen.__setitem__("mlp", out[0])),
                 layers[i].self_attn.register_forward_hook(lambda m, a, out: seen.__setitem__("attn", out[0][0]))]
        ratios = {"mlp": [], "attn": []}
        try:
            for text in TEXTS:
                with torch.no_grad():
                    lm.model(**lm.tokenizer([text], return_tensors="pt"))
                for k in ratios:
                    ratios[k] += (seen[k].double().norm(dim=-1) / seen["pre"].double().norm(dim=-1)).tolist()
        finally:
            for h in hooks:
                h.remove()
        assert got["mlp_out_norm"][i] == pytest.approx(float(np.mean(ratios["mlp"])), rel=1e-6)
        assert got["attn_out_norm"][i] == pytest.approx(float(np.mean(ratios["attn"])), rel=1e-6)


# ---------------------------------------------------------------- Spearman and the bootstrap
def test_spearman_with_ties_hand_worked():
    # x = [1, 2, 2, 3] ranks [1, 2.5, 2.5, 4]; y = [1, 3, 2, 4] ranks [1, 3, 2, 4]; centred:
    # [-1.5, 0, 0, 1.5] and [-1.5, .5, -.5, 1.5]: 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert average_ranks(np.array([1, 2, 2, 3])).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert float(spearman_rows(np.array([1, 2, 2, 3]), np.array([1, 3, 2, 4]))) == pytest.approx(math.sqrt(0.9),
                                                                                             abs=1e-12)
    # x = [1, 1, 1, 2] ranks [2, 2, 2, 4]: centred [-.5, -.5, -.5, 1.5] against [-1.5, -.5, .5, 1.5]: 3 / sqrt(3 * 5)
    assert float(spearman_rows(np.array([1, 1, 1, 2]), np.array([1, 2, 3, 4]))) == pytest.approx(3 / math.sqrt(15),
                                                                                             abs=1e-12)
    assert math.isnan(float(spearman_rows(np.array([1, 1, 1]), np.array([1, 2, 3]))))   # a constant side
    # the same as the patching code's spearman and scipy's, on random data with ties
    from prunescope.circuits.patching import spearman

    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 5, 20).astype(float), rng.normal(size=20)
    assert float(spearman_rows(x, y)) == pytest.approx(spearman(x.tolist(), y.tolist()), abs=1e-12)
    stats = pytest.importorskip("scipy.stats")
    assert float(spearman_rows(x, y)) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_bootstrap_interval_holds_the_point_and_is_seeded():
    rng = np.random.default_rng(0)
    props = [{"layer": i, "depth": i / 11, "noise": float(rng.normal())} for i in range(12)]
    drops = {"a": {i: i / 11 + 0.3 * float(rng.normal()) for i in range(12)},
             "b": {i: float(rng.normal()) for i in range(12)}}
    rows = rank_correlations(props, drops, n_boot=500, seed=3)
    assert {(r["property"], r["probe"]) for r in rows} == {(p, q) for p in ("depth", "noise") for q in ("a", "b", MEAN)}
    for r in rows:
        assert r["n"] == 12 and r["lo"] <= r["rho"] <= r["hi"], r
    depth_a = next(r for r in rows if r["property"] == "depth" and r["probe"] == "a")
    assert depth_a["rho"] > 0.5 and depth_a["lo"] > 0
    assert rows == rank_correlations(props, drops, n_boot=500, seed=3)
    assert rows != rank_correlations(props, drops, n_boot=500, seed=4)


# ---------------------------------------------------------------- drops and the capability map
def test_drops_from_sweep_rows_use_single_layer_skips_only():
    rows = [{"probe": p, "condition": c, "metric": m, "value": v} for p, c, m, v in [
        ("a", "none", "accuracy", 0.9), ("a", "skip:0", "accuracy", 0.5), ("a", "skip:1", "accuracy", 1.0),
        ("a", "skip:0-1", "accuracy", 0.0), ("a", "skip_attn:0", "accuracy", 0.1), ("a", "skip:0,2", "accuracy", 0.0),
        ("a", "none", "exact_match", 0.5), ("a", "skip:0", "exact_match", 0.0),
        ("b", "skip:0", "exact_match", 0.0)]]     # b has no unskipped row: no drops
    assert criticality(rows, "margin_accuracy") == {"a": {0: pytest.approx(0.4), 1: pytest.approx(-0.1)}}
    assert criticality(rows, "exact_match") == {"a": {0: 0.5}}


def test_capability_map_top_layers_and_broken_probes():
    drops = {"a": {0: 0.5, 1: 0.0, 2: 0.3, 3: -0.1}, "b": {0: 0.25, 1: 0.1, 2: 0.0, 3: 0.0}, "c": {i: 0.0 for i in range(4)}}
    rows = capability_map(drops, top=2, threshold=0.2)
    got = {(r["probe"], r["layer"]): (r["rank"], r["top"], r["breaks"], r["breaks_probes"]) for r in rows}
    assert got == {("a", 0): (1, True, True, "a,b"), ("a", 2): (2, True, True, "a"),
                   ("b", 0): (1, True, True, "a,b"), ("b", 1): (2, True, False, "")}   # c: no skip costs anything


# ---------------------------------------------------------------- the command
def test_bad_sweep_is_one_line_and_writes_nothing(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "crit"
    args = ["criticality", "--model", str(tiny_llama_dir), "--out", str(out), "--quiet"]
    assert main(args + ["--sweep", str(tmp_path / "missing.csv")]) == 2
    assert "does not exist" in _err(capsys)
    windows = tmp_path / "sweep.csv"   # a sweep without single-layer skips (only a window)
    windows.write_text("model,probe,condition,layers,metric,value,n,seed\n"
                       f"{tiny_llama_dir.name},copy,none,,margin_accuracy,1.0,4,0\n"
                       f"{tiny_llama_dir.name},copy,skip:0-1,0 1,margin_accuracy,0.5,4,0\n")
    assert main(args + ["--sweep", str(windows)]) == 2
    assert "no single-layer skip rows" in _err(capsys)
    assert main(args) == 2
    assert "--sweep" in _err(capsys)
    assert not out.exists()


def test_sweep_of_another_model_is_refused(tiny_llama_dir, tmp_path, capsys):
    sweep = tmp_path / "sweep.csv"
    sweep.write_text("model,probe,condition,layers,metric,value,n,seed\n"
                     "other-model,copy,none,,margin_accuracy,1.0,4,0\nother-model,copy,skip:0,0,margin_accuracy,0.5,4,0\n")
    assert main(["criticality", "--model", str(tiny_llama_dir), "--sweep", str(sweep), "--out",
                 str(tmp_path / "crit"), "--quiet"]) == 2
    assert "other-model" in _err(capsys) and not (tmp_path / "crit").exists()


def test_end_to_end_on_the_default_model(tmp_path, capsys):
    from prunescope.core.results import read_table

    sweep = tmp_path / "sweep"
    assert main(["sweep", "--probes", "brackets,copy", "--items", "4", "--out", str(sweep), "--quiet",
                 "--no-plot", "--device", "cpu"]) == 0
    capsys.readouterr()
    out = tmp_path / "crit"
    assert main(["criticality", "--sweep", str(sweep / "sweep.csv"), "--texts", "3", "--bootstrap", "200",
                 "--metric", "exact_match", "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split() == ["metric", "property", "probe", "rho", "95%", "interval", "n"]
    assert text.splitlines()[1].startswith("exact_match")
    for name in ("properties.csv", "correlations.csv", "capabilities.csv", "criticality.png"):
        assert (out / name).is_file(), name
    props = read_table(out / "properties.csv")
    assert len(props) == 30 and set(PROPERTIES) <= set(props[0])
    corr = read_table(out / "correlations.csv")
    assert {r["probe"] for r in corr} == {"brackets", "copy", MEAN}
    assert {r["metric"] for r in corr} == {"margin_accuracy", "exact_match"}
    assert {r["property"] for r in corr} == set(PROPERTIES) and all(r["n"] == 30 for r in corr)
