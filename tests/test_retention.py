"""Chance-corrected retention beside the raw ratio, its intervals and paired differences, on
hand-made rows and items whose answers can be worked out by hand (no model)."""

import json
import math

import numpy as np
import pytest

from prunescope.analysis.retention import (
    bootstrap_difference, bootstrap_retention, plot_retention, probe_comparison, retention_differences,
    retention_table,
)
from prunescope.core.errors import PrunescopeError

RAW, CORRECTED = "retention", "chance_corrected_retention"


def _rows():
    spec = [  # task, category, base, pruned, n, chance column
        ("piqa", "classification", 0.8, 0.5, 100, ""),        # 2 choices: raw 0.625, corrected 0.0
        ("arc_easy", "classification", 0.25, 0.3, 100, ""),   # base at chance 0.25: corrected undefined
        ("my_mc", "classification", 0.6, 0.3, 100, ""),       # not in the registry, no chance column
        ("my_mc2", "classification", 0.6, 0.4, 100, 0.2),     # its chance from the rows: (0.4 - 0.2) / (0.6 - 0.2)
        ("gsm8k", "generative", 0.0, 0.25, 4, ""),            # base 0 of 4: both undefined
        ("arithmetic", "generative", 0.5, 0.2, 50, ""),       # chance 0: both 0.4
    ]
    return [{"model": "m", "probe": t, "condition": stage, "layers": "", "metric": "acc", "value": v, "n": n,
             "seed": 0, "category": c, "chance": ch}
            for t, c, b, p, n, ch in spec for stage, v in (("base", b), ("pruned", p))]


def _by(table, metric, stage="pruned"):
    return {r["probe"]: r for r in table if r["metric"] == metric and r["condition"] == stage}


def test_chance_corrected_retention_exact():
    table = retention_table(_rows(), metric="acc")
    raw, cor = _by(table, RAW), _by(table, CORRECTED)
    assert raw["piqa"]["value"] == pytest.approx(0.625) and cor["piqa"]["value"] == pytest.approx(0.0)
    assert raw["arc_easy"]["value"] == pytest.approx(1.2) and math.isnan(cor["arc_easy"]["value"])
    assert raw["my_mc"]["value"] == pytest.approx(0.5) and math.isnan(cor["my_mc"]["value"])
    assert "chance level of my_mc unknown" in cor["my_mc"]["note"] and raw["my_mc"]["note"] == ""
    assert cor["my_mc2"]["value"] == pytest.approx(0.5) and cor["my_mc2"]["chance"] == 0.2
    assert math.isnan(raw["gsm8k"]["value"]) and math.isnan(cor["gsm8k"]["value"])
    assert raw["arithmetic"]["value"] == cor["arithmetic"]["value"] == pytest.approx(0.4)
    # every task row of both ratios names its chance level (the registry's where the rows have none)
    assert [cor[t]["chance"] for t in ("piqa", "arc_easy", "gsm8k")] == [0.5, 0.25, 0.0]
    assert raw["piqa"]["chance"] == 0.5 and math.isnan(raw["my_mc"]["chance"])
    # category means over the tasks whose ratio is defined, with the others named and why
    assert raw["classification"]["value"] == pytest.approx((0.625 + 1.2 + 0.5 + 4 / 6) / 4)
    assert cor["classification"]["value"] == pytest.approx((0.0 + 0.5) / 2) and cor["classification"]["n"] == 2
    assert cor["classification"]["tasks_left_out"] == ("arc_easy (base 0.25, at or below chance 0.25); "
                                                       "my_mc (chance level unknown)")
    assert raw["classification"]["tasks_left_out"] == ""
    assert raw["generative"]["tasks_left_out"] == cor["generative"]["tasks_left_out"] == "gsm8k (base 0 of 4)"
    assert raw["generative"]["value"] == cor["generative"]["value"] == pytest.approx(0.4)
    assert raw["generative"]["n"] == 1
    assert raw["gap"]["value"] == pytest.approx(raw["classification"]["value"] - 0.4)
    assert cor["gap"]["value"] == pytest.approx(0.25 - 0.4)
    # the base stage: raw 1 by definition, corrected 1 where the base is above chance
    assert _by(table, CORRECTED, "base")["piqa"]["value"] == 1.0
    assert math.isnan(_by(table, CORRECTED, "base")["arc_easy"]["value"])
    # every raw row first, in the order the table always had
    kinds = [r["metric"] for r in table]
    assert kinds == sorted(kinds, key=lambda m: m != RAW)


def test_a_category_with_every_task_left_out_is_nan_and_says_why():
    rows = [r for r in _rows() if r["probe"] in ("piqa", "gsm8k")]
    table = retention_table(rows, metric="acc")
    gen = _by(table, RAW)["generative"]
    assert math.isnan(gen["value"]) and gen["n"] == 0 and gen["tasks_left_out"] == "gsm8k (base 0 of 4)"
    assert "gap" not in _by(table, RAW) and "gap" not in _by(table, CORRECTED)


def _items(correct: int, n: int = 10) -> dict:
    return {str(i): float(i < correct) for i in range(n)}


def test_chance_corrected_intervals_share_the_raw_draw():
    """A 2-choice task (chance 0.5), base 8 of 10 and pruned 5 of 10: raw 0.625, corrected 0.0; both
    intervals come from the same resampled items, reproduced here draw by draw."""
    rows = [{"model": "m", "probe": t, "condition": s, "metric": "acc", "value": v, "n": 10, "category": c}
            for t, c, vals in (("piqa", "classification", (0.8, 0.5)), ("arc_easy", "classification", (0.2, 0.4)),
                               ("arithmetic", "generative", (0.5, 0.2)))
            for s, v in zip(("base", "pruned"), vals)]
    table = retention_table(rows, metric="acc")
    items = {("base", "piqa"): _items(8), ("pruned", "piqa"): _items(5),
             ("base", "arc_easy"): _items(2), ("pruned", "arc_easy"): _items(4),
             ("base", "arithmetic"): _items(5), ("pruned", "arithmetic"): _items(2)}
    out = bootstrap_retention(table, items, n_boot=500, seed=3)
    raw, cor = _by(out, RAW), _by(out, CORRECTED)
    assert raw["piqa"]["value"] == pytest.approx(0.625) and cor["piqa"]["value"] == pytest.approx(0.0)
    idx = np.random.default_rng(3).integers(0, 10, size=(500, 10))
    b, s = np.array(list(_items(8).values()))[idx].mean(1), np.array(list(_items(5).values()))[idx].mean(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        want_raw = np.percentile(s / b, [2.5, 97.5])
        want_cor = np.nanpercentile(np.where(b > 0.5, (s - 0.5) / (b - 0.5), np.nan), [2.5, 97.5])
    assert (raw["piqa"]["ci_low"], raw["piqa"]["ci_high"]) == pytest.approx(tuple(want_raw))
    assert (cor["piqa"]["ci_low"], cor["piqa"]["ci_high"]) == pytest.approx(tuple(want_cor))
    assert cor["piqa"]["ci_low"] < 0.0 < cor["piqa"]["ci_high"]
    # arc_easy's base (0.2) is below chance (0.25): no corrected value, no interval, not in the mean
    assert math.isnan(cor["arc_easy"]["value"]) and cor["arc_easy"]["ci_low"] == ""
    assert raw["arc_easy"]["ci_low"] != ""
    # a category of one kept task has that task's interval; the gap's interval brackets its value
    assert (cor["classification"]["ci_low"], cor["classification"]["ci_high"]) == \
        (cor["piqa"]["ci_low"], cor["piqa"]["ci_high"])
    assert cor["gap"]["ci_low"] <= cor["gap"]["value"] <= cor["gap"]["ci_high"]
    assert raw["arithmetic"]["ci_low"] == cor["arithmetic"]["ci_low"]   # chance 0: the same numbers


def test_bootstrap_difference_chance_corrected():
    # base 4 of 4; stage a 3 of 4, reference b 1 of 4; a 2-choice task: (3/4 - 1/4) / (1 - 0.5) = 1.0
    items = {("base", "t"): _items(4, 4), ("a", "t"): _items(3, 4), ("b", "t"): _items(1, 4),
             ("base", "u"): _items(1, 4), ("a", "u"): _items(4, 4), ("b", "u"): _items(0, 4)}
    tasks = {"t": ("classification", 0.5), "u": ("classification", 0.5)}   # u: base 0.25, below chance
    raw = bootstrap_difference(items, tasks, "a", "b", n_boot=300)["classification"]
    cor = bootstrap_difference(items, tasks, "a", "b", n_boot=300, metric=CORRECTED)["classification"]
    assert raw[0] == pytest.approx((0.5 + 4.0) / 2)                        # u counts in the raw ratio
    assert cor[0] == pytest.approx(1.0) and cor[1] <= 1.0 <= cor[2]       # u is left out
    assert bootstrap_difference(items, {"u": ("classification", 0.5)}, "a", "b", metric=CORRECTED) == {}
    with pytest.raises(PrunescopeError, match="chance_corrected_retention"):
        bootstrap_difference(items, tasks, "a", "b", metric="accuracy")


def test_retention_differences_name_their_ratio(tmp_path):
    docs = {"base": [1, 1, 1, 1], "pruned-a": [1, 1, 1, 0], "pruned-b": [1, 0, 0, 0]}
    rows = []
    for stage, scores in docs.items():
        (tmp_path / "eval" / stage / "samples").mkdir(parents=True)
        (tmp_path / "eval" / stage / "samples" / "piqa.jsonl").write_text(
            "".join(json.dumps({"doc_id": i, "scores": {"acc": s}}) + "\n" for i, s in enumerate(scores)))
        rows.append({"model": "m", "probe": "piqa", "condition": stage, "metric": "acc", "value": sum(scores) / 4,
                     "n": 4, "category": "classification"})
    table = retention_table(rows, metric="acc")
    pairs = [("pruned-a", "pruned-b")]
    raw = retention_differences(tmp_path, table, pairs, n_boot=200)[0]
    cor = retention_differences(tmp_path, table, pairs, n_boot=200, metric=CORRECTED)[0]
    assert raw["metric"] == "retention_minus_reference" and raw["value"] == pytest.approx(0.5)
    assert cor["metric"] == "chance_corrected_retention_minus_reference"
    assert cor["value"] == pytest.approx(0.5 / 0.5) and cor["reference"] == "pruned-b" and cor["n"] == 1


def test_retention_figure_has_a_chance_corrected_row(tmp_path):
    from PIL import Image

    table = retention_table(_rows(), metric="acc")
    both = plot_retention(table, tmp_path / "both.png")
    raw_only = plot_retention([r for r in table if r["metric"] == RAW], tmp_path / "raw.png")
    # two panels above one another (raw, then chance-corrected) against one
    assert Image.open(both).size[1] > 1.7 * Image.open(raw_only).size[1]


def test_probe_comparison_reads_both_names_of_the_margin_metric():
    rows = [{"model": "m", "probe": "copy", "condition": s, "metric": m, "value": v, "n": 8}
            for s, m, v in (("base", "accuracy", 0.9), ("pruned", "margin_accuracy", 0.5),
                            ("base", "exact_match", 0.7), ("pruned", "exact_match", 0.2))]
    margin = probe_comparison(rows)[0]
    assert (margin["base"], margin["pruned"]) == (0.9, 0.5)
    assert probe_comparison(rows, "accuracy") == [margin]
    exact = probe_comparison(rows, "exact_match")[0]
    assert (exact["base"], exact["pruned"], round(exact["change"], 3)) == (0.7, 0.2, -0.5)
