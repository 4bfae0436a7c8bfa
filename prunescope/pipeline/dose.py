"""Dose-response of recovery: retention against the tokens an arm trained on.

A run with ``recover.budgets`` trains each training arm at several token budgets (stages
``recovered-<pruned>-<mode>~<budget>``, with ``@<seed>`` where a budget trains several seeds). This
module reads such a run folder and answers the question a reversibility study asks: does retention
keep rising with tokens, and where does it level off?

* :func:`dose_table`: one row per arm, budget and category (raw and chance-corrected retention with
  the run's 95% item-bootstrap interval), with the response tokens and optimizer steps the arm
  trained (``recover/<arm>/prunescope_recovery.json``); the pruned model is the arm's point at 0
  tokens. Seeds of one budget are averaged (``seeds`` says how many).
* :func:`dose_segments`: each step up the budget ladder of one arm (the pruned model -> the first
  budget -> the next ...), the change in retention per category with a paired bootstrap interval
  over the items, and its size per tenfold increase of tokens.
* :func:`dose_verdict`: ``keeps rising`` when the last step's interval lies above 0, ``levels off``
  when an earlier step's does and the last one's holds 0, ``no gain`` when none lies above 0.
* :func:`plot_dose`: retention against tokens (log axis), one line per mode, one panel per pruned
  model and category, with intervals.

>>> parse_arm("recovered-bi-25-sgr~3M@1")
('bi-25', 'sgr', '3M', 1)
>>> parse_arm("recovered-paper-12.5-linear+sgr~300k"), parse_arm("pruned-bi")
(('paper-12.5', 'linear+sgr', '300k', None), None)
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from prunescope.core.results import read_table
from prunescope.pipeline.config import budget_label, split_arm

CATEGORIES = ("generative", "classification")


def parse_arm(stage: str) -> tuple[str, str, str | None, int | None] | None:
    """``(pruned, mode, budget label, seed)`` of a recovered stage name
    (:func:`prunescope.pipeline.config.split_arm`), None for any other stage."""
    if not stage.startswith("recovered-"):
        return None
    arm = split_arm(stage.removeprefix("recovered-"))
    return arm.pruned, arm.mode, budget_label(arm.budget) if arm.budget is not None else None, arm.seed


def _arms(cats: dict) -> dict[tuple[str, str], dict[str | None, list[str]]]:
    """``{(pruned, mode): {budget label or None: [its stages, one per seed]}}`` of the evaluated arms."""
    out: dict[tuple[str, str], dict[str | None, list[str]]] = {}
    for stage in dict.fromkeys(s for s, _, _ in cats):
        arm = parse_arm(stage)
        if arm is not None:
            out.setdefault(arm[:2], {}).setdefault(arm[2], []).append(stage)
    return out


def _trained(run_dir: Path, stage: str) -> tuple[int | None, int | None]:
    """``(response tokens, optimizer steps)`` an arm trained, from its recovery record."""
    path = run_dir / "recover" / stage.removeprefix("recovered-") / "prunescope_recovery.json"
    if not path.is_file():
        return None, None
    rec = json.loads(path.read_text()).get("recovery", {})
    return rec.get("tokens"), rec.get("steps")


def _category_rows(run_dir: Path) -> dict[tuple[str, str, str], dict]:
    """``{(stage, category, metric): row}`` of the run's retention table (category level)."""
    rows = read_table(run_dir / "retention.csv")
    return {(r["condition"], r["probe"], r["metric"]): r for r in rows if r.get("level") == "category"}


def dose_table(run_dir: str | Path) -> list[dict]:
    """Retention per arm, budget and category against the tokens trained (see the module doc).

    >>> dose_table("runs/qwen-repair")[0]  # doctest: +SKIP
    {'pruned': 'bi', 'mode': 'sgr', 'budget': 'pruned', 'tokens': 0, 'steps': 0, ...}
    """
    run_dir = Path(run_dir)
    cats = _category_rows(run_dir)
    out = []
    for (pruned, mode), budgets in _arms(cats).items():
        if any(k[0] == f"pruned-{pruned}" for k in cats):  # each line starts at its pruned model
            out += _points(cats, pruned, mode, "pruned", [f"pruned-{pruned}"], 0, 0)
        for budget, stages in budgets.items():
            trained = [_trained(run_dir, s) for s in stages]
            tokens = [t for t, _ in trained if t is not None]
            steps = [s for _, s in trained if s is not None]
            out += _points(cats, pruned, mode, budget or "", stages, round(statistics.mean(tokens)) if tokens else None,
                           round(statistics.mean(steps)) if steps else None)
    return sorted(out, key=lambda r: (r["pruned"], r["mode"], r["category"], r["metric"],
                                      r["tokens"] if r["tokens"] is not None else -1))


def _mean(rows: list[dict], key: str) -> float | None:
    """The mean of a column over rows, None where any row lacks it."""
    values = [r.get(key) for r in rows]
    return None if any(v in (None, "") for v in values) else statistics.mean(float(v) for v in values)


def _points(cats: dict, pruned: str, mode: str, budget: str, stages: list[str], tokens, steps) -> list[dict]:
    """One dose row per category and metric of one arm at one budget (its seeds averaged)."""
    out = []
    for cat in CATEGORIES:
        for metric in ("retention", "chance_corrected_retention"):
            rows = [cats[(s, cat, metric)] for s in stages if (s, cat, metric) in cats]
            if rows:
                out.append({"pruned": pruned, "mode": mode, "budget": budget, "stage": ";".join(stages),
                            "tokens": tokens, "steps": steps, "seeds": len(rows), "category": cat, "metric": metric,
                            "value": _mean(rows, "value"), "ci_low": _mean(rows, "ci_low"),
                            "ci_high": _mean(rows, "ci_high")})
    return out


def _ladder(run_dir: Path) -> dict[tuple[str, str], list[tuple[str, int]]]:
    """``{(pruned, mode): [(stage, tokens), ...]}`` in increasing tokens, the pruned model first; a
    budget trained with several seeds is represented by its first seed (its first with a recovery record; the items pair stage to stage)."""
    cats = _category_rows(run_dir)
    out = {}
    for (pruned, mode), budgets in _arms(cats).items():
        firsts = [next(((s, t) for s in stages if (t := _trained(run_dir, s)[0]) is not None), None)
                  for b, stages in budgets.items() if b is not None]
        steps = sorted((p for p in firsts if p is not None), key=lambda p: p[1])
        if steps:
            start = [(f"pruned-{pruned}", 0)] if any(k[0] == f"pruned-{pruned}" for k in cats) else []
            out[(pruned, mode)] = start + steps
    return out


def dose_segments(run_dir: str | Path, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Each step up one arm's budget ladder: the change in category retention (raw and
    chance-corrected) with a paired bootstrap interval over the items, and that change per tenfold
    increase of tokens (``per_decade``; none for the step from the pruned model, at 0 tokens)."""
    from prunescope.analysis.retention import retention_differences

    run_dir = Path(run_dir)
    table = read_table(run_dir / "retention.csv")
    out = []
    for (pruned, mode), ladder in _ladder(run_dir).items():
        pairs = list(zip(ladder[1:], ladder[:-1]))
        for metric in ("retention", "chance_corrected_retention"):
            diffs = retention_differences(run_dir, table, [(a[0], b[0]) for a, b in pairs], n_boot=n_boot,
                                          seed=seed, metric=metric)
            tokens = {a[0]: (b[1], a[1]) for a, b in pairs}
            for d in diffs:
                t0, t1 = tokens[d["condition"]]
                decades = math.log10(t1 / t0) if t0 and t1 else None
                out.append({"pruned": pruned, "mode": mode, "category": d["probe"], "metric": metric,
                            "from": d["reference"], "to": d["condition"], "tokens_from": t0, "tokens_to": t1,
                            "change": d["value"], "ci_low": d["ci_low"], "ci_high": d["ci_high"],
                            "per_decade": d["value"] / decades if decades else None})
    return out


def dose_verdict(segments: list[dict]) -> str:
    """Whether one arm's retention keeps rising along its ladder (segments in ladder order).

    >>> up, flat = {"ci_low": 0.02, "ci_high": 0.1}, {"ci_low": -0.03, "ci_high": 0.05}
    >>> dose_verdict([up, up]), dose_verdict([up, flat]), dose_verdict([flat, flat])
    ('keeps rising', 'levels off', 'no gain')
    """
    above = [s["ci_low"] is not None and float(s["ci_low"]) > 0 for s in segments]
    if not segments or not any(above):
        return "no gain"
    return "keeps rising" if above[-1] else "levels off"


def dose_verdicts(segments: list[dict], metric: str = "retention") -> list[dict]:
    """One verdict per (pruned, mode, category) from :func:`dose_segments` rows."""
    groups: dict[tuple, list[dict]] = {}
    for s in segments:
        if s["metric"] == metric and s["category"] in CATEGORIES:
            groups.setdefault((s["pruned"], s["mode"], s["category"]), []).append(s)
    return [{"pruned": p, "mode": m, "category": c, "metric": metric, "steps": len(segs),
             "verdict": dose_verdict(sorted(segs, key=lambda s: s["tokens_to"]))}
            for (p, m, c), segs in groups.items()]


def plot_dose(rows: list[dict], path: str | Path, metric: str = "retention") -> Path:
    """Retention against response tokens trained (log axis; the pruned model drawn at the left edge),
    one panel per pruned model and category, one line per mode, 95% intervals as bars."""
    from prunescope.core.plots import plt, save_figure

    rows = [r for r in rows if r["metric"] == metric and r["tokens"] is not None]
    pruned = sorted({r["pruned"] for r in rows})
    cats = [c for c in CATEGORIES if any(r["category"] == c for r in rows)]
    fig, axes = plt.subplots(len(cats) or 1, len(pruned) or 1, figsize=(5 * max(1, len(pruned)), 3.6 * max(1, len(cats))),
                             squeeze=False)
    positive = [r["tokens"] for r in rows if r["tokens"] > 0]
    left = min(positive) / 4 if positive else 1
    for i, cat in enumerate(cats):
        for j, p in enumerate(pruned):
            ax = axes[i][j]
            for mode in sorted({r["mode"] for r in rows if r["pruned"] == p}):
                pts = sorted((r for r in rows if r["pruned"] == p and r["mode"] == mode and r["category"] == cat),
                             key=lambda r: r["tokens"])
                if not pts:
                    continue
                x = [r["tokens"] or left for r in pts]
                y = [r["value"] for r in pts]
                err = [[max(0.0, v - (r["ci_low"] if r["ci_low"] is not None else v)) for v, r in zip(y, pts)],
                       [max(0.0, (r["ci_high"] if r["ci_high"] is not None else v) - v) for v, r in zip(y, pts)]]
                ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=mode)
            ax.set_xscale("log")
            ax.axhline(1.0, color="grey", lw=0.8, ls=":")
            ax.set_title(f"{p}: {cat}")
            ax.set_xlabel("response tokens trained (pruned model at the left edge)")
            ax.set_ylabel(metric.replace("_", " "))
            ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, Path(path))
