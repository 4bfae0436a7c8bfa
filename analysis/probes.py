"""Paired changes of the probe scores between the stages of a run, with bootstrap intervals.

Every evaluated stage keeps its probe scores in ``eval/<stage>/probes.json``: both metrics,
``margin_accuracy`` (the answer beats the distractors) and ``exact_match`` (greedy exact match:
the answer is generated, the metric a paper's generation-based probe numbers compare with), and
each item's score under ``items``. The items are the same in every stage (same seed, same count),
so two stages pair item by item: a change such as base -> pruned is the mean of per-item
differences, and its interval comes from resampling items, the same draw for both stages.

>>> paired_difference([1, 0, 1, 0], [1, 0, 1, 0])
(0.0, 0.0, 0.0)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from prunescope.core.errors import PrunescopeError
from prunescope.core.results import read_table
from prunescope.probe.scoring import PROBE_METRICS


def paired_difference(before: Sequence[float | None], after: Sequence[float | None], n_boot: int = 1000,
                      seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """``(after - before, low, high)``: the mean per-item difference and its paired bootstrap
    interval (percentiles of ``n_boot`` draws of items with replacement, the same draw for both
    lists). Items are paired by index; an item without a score (``None`` or NaN) in either list is
    left out; with no pair left, all three are NaN.

    >>> paired_difference([0, 0, 0], [1, 1, 1])
    (1.0, 1.0, 1.0)
    >>> d, lo, hi = paired_difference([1, 1, 1, 1], [1, 0, 1, 0], n_boot=200)
    >>> d, -1.0 <= lo <= d <= hi <= 0.0
    (-0.5, True)
    """
    import numpy as np

    if len(before) != len(after):
        raise PrunescopeError(f"paired scores need the same items: {len(before)} before, {len(after)} after")
    pairs = [(b, a) for b, a in zip(before, after) if b is not None and a is not None and b == b and a == a]
    if not pairs:
        return (float("nan"),) * 3
    diffs = np.array([a - b for b, a in pairs], dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(diffs), size=(n_boot, len(diffs)))
    lo, hi = np.percentile(diffs[idx].mean(1), [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(diffs.mean()), float(lo), float(hi)


def default_pairs(stages: Sequence[str]) -> list[tuple[str, str]]:
    """``(reference, stage)`` pairs a run's probe changes are reported for: base -> each pruned
    stage, and each pruned stage ``pruned-<S>`` -> each of its recovered arms ``recovered-<S>-<mode>``.

    >>> default_pairs(["base", "pruned-bi", "recovered-bi-sgr", "pruned-bi-protect", "recovered-bi-protect-sgr"])
    ... # doctest: +NORMALIZE_WHITESPACE
    [('base', 'pruned-bi'), ('base', 'pruned-bi-protect'), ('pruned-bi', 'recovered-bi-sgr'),
     ('pruned-bi-protect', 'recovered-bi-protect-sgr')]
    """
    pruned = [s for s in stages if s.startswith("pruned-")]
    out = [("base", s) for s in pruned] if "base" in stages else []
    for s in pruned:
        arm = "recovered-" + s.removeprefix("pruned-") + "-"
        # the mode is one word: recovered-bi-protect-sgr belongs to pruned-bi-protect, not pruned-bi
        out += [(s, r) for r in stages if r.startswith(arm) and "-" not in r.removeprefix(arm)]
    return out


def stage_probes(run_dir: str | Path) -> dict[str, dict]:
    """``{stage: probes.json}`` of every evaluated stage of a run that kept per-item scores (a file
    of an older prunescope, margin accuracy alone under ``accuracy``, has none to pair), base first.

    >>> stage_probes("no-such-run")
    {}
    """
    found = sorted(Path(run_dir).glob("eval/*/probes.json"), key=lambda p: (p.parent.name != "base", p.parent.name))
    out = {}
    for f in found:
        saved = json.loads(f.read_text())
        if isinstance(saved.get("items"), dict):
            out[f.parent.name] = saved
    return out


def _run_model(run_dir: Path) -> str:
    """The model a run's tables name (one per run: the stage is the condition), or ``""``."""
    for table in (run_dir / "probes.csv", run_dir / "eval" / "eval.csv"):
        if table.is_file():
            rows = read_table(table)
            if rows and rows[0].get("model"):
                return str(rows[0]["model"])
    return ""


def probe_change_rows(run_dir: str | Path, pairs: Sequence[tuple[str, str]] | None = None,
                      n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """The paired change of each probe score between two stages of a run: one tidy row per pair x
    probe x metric (``margin_accuracy``, ``exact_match``) with ``model``, ``probe``, ``condition``
    (the later stage), ``reference`` (the earlier), ``metric``, ``value`` (after - before, over the
    items both stages scored), ``before``, ``after`` (their means on those items), ``n`` (the
    items) and the 95% paired bootstrap interval ``ci_low``, ``ci_high``
    (:func:`paired_difference`). ``pairs``: ``(reference, stage)``, default :func:`default_pairs`.
    Stages scored on other items (other probe settings) are not paired.

    >>> probe_change_rows("no-such-run")
    []
    """
    run_dir = Path(run_dir)
    saved = stage_probes(run_dir)
    model = _run_model(run_dir) if saved else ""
    rows = []
    for ref, stage in default_pairs(list(saved)) if pairs is None else pairs:
        if ref not in saved or stage not in saved or saved[ref].get("settings") != saved[stage].get("settings"):
            continue
        before_items, after_items = saved[ref]["items"], saved[stage]["items"]
        for probe in dict.fromkeys([*before_items, *after_items]):
            for metric in PROBE_METRICS:
                b = before_items.get(probe, {}).get(metric)
                a = after_items.get(probe, {}).get(metric)
                if b is None or a is None or len(a) != len(b):
                    continue
                rows.append({"model": model, "probe": probe, "condition": stage, "reference": ref, "metric": metric,
                             **_change(b, a, n_boot, seed)})
    return rows


def _change(before: Sequence[float | None], after: Sequence[float | None], n_boot: int, seed: int) -> dict:
    """``value``, ``before``, ``after``, ``n``, ``ci_low``, ``ci_high`` of two stages' item scores."""
    both = [(b, a) for b, a in zip(before, after) if b is not None and a is not None]
    d, lo, hi = paired_difference(before, after, n_boot=n_boot, seed=seed)
    n = len(both)
    return {"value": d, "before": sum(b for b, _ in both) / n if n else float("nan"),
            "after": sum(a for _, a in both) / n if n else float("nan"), "n": n, "ci_low": lo, "ci_high": hi}
