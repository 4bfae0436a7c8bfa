"""Both probe scores, margin_accuracy (the answer beats the distractors) and exact_match (greedy
exact match: the answer is generated), kept per item in every stage, and the paired changes
between stages with bootstrap intervals; tables written before the rename (metric "accuracy")
still read as margin_accuracy."""

import json
import math
from types import SimpleNamespace

import pytest

from prunescope.analysis.probes import default_pairs, paired_difference, probe_change_rows
from prunescope.core.results import read_table, write_table
from prunescope.probe.blocks import Blocks
from prunescope.probe.scoring import LABELS, METRIC_ALIASES, PROBE_METRICS, canonical_metric, probe_scores


def test_stage_probes_keep_both_metrics_and_every_item(tiny, tmp_path):
    """eval/<stage>/probes.json: both metrics per probe, and per-item lists (same items, same order
    in every stage) whose means are the reported values; a file of the older format is scored again."""
    from prunescope.pipeline.stages import _cached_probes, _probe_line, _stage_probes

    model, tok = tiny
    lm = SimpleNamespace(blocks=Blocks(model), tokenizer=tok)
    run = SimpleNamespace(out=tmp_path)
    probes = ["arithmetic_multi", "copy"]
    scores = _stage_probes(run, "base", None, lm, probes, 6)
    saved = json.loads((tmp_path / "eval/base/probes.json").read_text())
    assert saved["settings"] == {"probes": probes, "n": 6}
    assert set(saved) == {"settings", "margin_accuracy", "exact_match", "items"}
    for p in probes:
        for m in PROBE_METRICS:
            items = saved["items"][p][m]
            assert len(items) == 6 and set(items) <= {0.0, 1.0}
            assert saved[m][p] == pytest.approx(sum(items) / len(items))
    assert _cached_probes(run, "base", probes, 6) == scores == {k: saved[k] for k in (*PROBE_METRICS, "items")}
    assert _cached_probes(run, "base", probes, 7) is None   # other settings: scored again
    line = _probe_line("base", scores)
    assert line.startswith("  base: arithmetic_multi margin ") and " / exact " in line and "copy margin" in line

    # the same items in another stage: the unchanged model scores each item the same
    again = probe_scores(None, probes, n=6, loaded=lm)
    assert again["items"] == saved["items"]

    # an older probes.json (margin accuracy alone, under "accuracy") is not read as finished
    (tmp_path / "eval/base/probes.json").write_text(json.dumps({"settings": {"probes": probes, "n": 6},
                                                                "accuracy": {p: 0.5 for p in probes}}))
    assert _cached_probes(run, "base", probes, 6) is None


def test_paired_difference_on_cases_with_a_known_answer():
    assert paired_difference([1, 0, 1, 1], [1, 0, 1, 1]) == (0.0, 0.0, 0.0)     # nothing changed
    assert paired_difference([0, 0, 0, 0], [1, 1, 1, 1]) == (1.0, 1.0, 1.0)     # every item flipped 0 -> 1
    assert paired_difference([1, 1, 1], [0, 0, 0]) == (-1.0, -1.0, -1.0)
    # pairing: every item moves by the same +1 while the scores spread widely, so the paired interval
    # is a point; independent draws of the two lists would give a wide one
    assert paired_difference([0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6]) == (1.0, 1.0, 1.0)
    # half the items lost: the difference is -0.5 and the interval holds it, inside [-1, 0]
    d, lo, hi = paired_difference([1] * 20, [1, 0] * 10, n_boot=500, seed=3)
    assert d == -0.5 and -1.0 <= lo < d < hi <= 0.0
    assert paired_difference([1] * 20, [1, 0] * 10, n_boot=500, seed=3) == (d, lo, hi)   # seeded
    # an item without a score in either list is left out
    assert paired_difference([1, None, 0, float("nan")], [0, 1, 0, 1]) == (-0.5, -1.0, 0.0)
    assert all(math.isnan(x) for x in paired_difference([None], [1]))
    with pytest.raises(Exception, match="same items"):
        paired_difference([1, 0], [1])


def _stage(run, stage: str, margin: list, exact: list, n: int | None = None) -> None:
    saved = {"settings": {"probes": ["copy"], "n": n or len(margin)},
             "margin_accuracy": {"copy": sum(margin) / len(margin)}, "exact_match": {"copy": sum(exact) / len(exact)},
             "items": {"copy": {"margin_accuracy": margin, "exact_match": exact}}}
    (run / "eval" / stage).mkdir(parents=True)
    (run / "eval" / stage / "probes.json").write_text(json.dumps(saved))


def test_probe_change_rows_pair_base_pruned_and_recovered(tmp_path):
    run = tmp_path / "run"
    _stage(run, "base", [1, 1, 1, 1], [1, 1, 0, 0])
    _stage(run, "pruned-bi", [1, 0, 1, 0], [0, 0, 0, 0])
    _stage(run, "recovered-bi-sgr", [1, 1, 1, 0], [1, 0, 0, 0])
    _stage(run, "pruned-other", [1, 1, 1, 1, 1], [1, 1, 1, 1, 1])            # other items: not paired
    (run / "eval" / "pruned-old").mkdir(parents=True)                          # older format: no items
    (run / "eval" / "pruned-old" / "probes.json").write_text(json.dumps(
        {"settings": {"probes": ["copy"], "n": 4}, "accuracy": {"copy": 0.25}}))
    write_table([{"model": "m", "probe": "copy", "condition": "base", "layers": "", "metric": "margin_accuracy",
                  "value": 1.0, "n": 4, "seed": 0}], run / "probes")
    rows = probe_change_rows(run, n_boot=200)
    assert [(r["reference"], r["condition"], r["metric"]) for r in rows] == [
        ("base", "pruned-bi", "margin_accuracy"), ("base", "pruned-bi", "exact_match"),
        ("pruned-bi", "recovered-bi-sgr", "margin_accuracy"), ("pruned-bi", "recovered-bi-sgr", "exact_match")]
    assert list(rows[0]) == ["model", "probe", "condition", "reference", "metric", "value", "before", "after", "n",
                             "ci_low", "ci_high"]
    got = {(r["condition"], r["metric"]): r for r in rows}
    r = got[("pruned-bi", "margin_accuracy")]
    assert (r["model"], r["probe"], r["before"], r["after"], r["value"], r["n"]) == ("m", "copy", 1.0, 0.5, -0.5, 4)
    assert r["ci_low"] <= -0.5 <= r["ci_high"] <= 0.0
    assert got[("pruned-bi", "exact_match")]["value"] == -0.5
    assert got[("recovered-bi-sgr", "exact_match")]["value"] == 0.25
    # asked pairs: only those
    asked = probe_change_rows(run, pairs=[("base", "recovered-bi-sgr")], n_boot=50)
    assert {(r["reference"], r["condition"]) for r in asked} == {("base", "recovered-bi-sgr")}
    assert default_pairs(["base", "pruned-a", "recovered-a-sgr", "recovered-b-sgr"]) == [
        ("base", "pruned-a"), ("pruned-a", "recovered-a-sgr")]


def test_tables_that_say_accuracy_still_read_as_margin_accuracy(tmp_path):
    """Sweep and probe tables written before the rename (docs/results holds some) keep working."""
    import sys
    from pathlib import Path

    from prunescope.core import plots
    from prunescope.prune.scores import importance_table, scores_from_sweep

    assert canonical_metric("accuracy") == "margin_accuracy" and canonical_metric("loss") == "loss"
    assert plots._ALIASES == METRIC_ALIASES and plots._LABELS == LABELS   # core's copy of the names
    old = [{"model": "m", "probe": "copy", "condition": c, "layers": layers, "metric": "accuracy", "value": v,
            "n": 10, "seed": 0} for c, layers, v in (("none", "", 0.9), ("skip:0", "0", 0.2), ("skip:1", "1", 0.8))]
    write_table(old, tmp_path / "sweep")
    for metric in ("margin_accuracy", "accuracy"):
        drops = {r["layers"]: r["value"] for r in scores_from_sweep(tmp_path / "sweep.csv", metric=metric)}
        assert drops == pytest.approx({"0": 0.7, "1": 0.1})
    assert len(importance_table(tmp_path / "sweep.csv", "m")) == 2
    assert [p.name for p in plots.plot_sweep(read_table(tmp_path / "sweep.csv"), tmp_path)] == ["sweep_layers.png"]

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    from summarize_recovery import table

    write_table([{**r, "condition": st, "layers": "", "value": v} for r, (st, v) in zip(old, [("base", 0.9),
                                                                                            ("pruned-bi", 0.4)])],
                tmp_path / "probes")
    write_table([{"model": "m", "probe": "piqa", "condition": "base", "layers": "", "metric": "acc", "value": 0.7,
                  "n": 10, "seed": 0, "primary": True}], tmp_path / "eval" / "eval")
    text = table(tmp_path)
    assert "| copy margin | piqa |" in text and "| base | 0.900 | 0.700 |" in text and "| pruned-bi | 0.400 |" in text
