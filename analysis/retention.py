"""Retention per task, per category, and the classification-vs-generative gap, raw and chance-corrected.

The paper's headline: pruning keeps 0.70-0.84 of classification scores but only 0.14-0.33 of
generative ones. That raw ratio, score / base score, cannot fall below chance / base: a
classification model that guesses still "keeps" chance / base of its score (half of it for a
2-choice task at base 0.8). Beside it, ``chance_corrected_retention`` = (score - chance) / (base -
chance) is 0 at chance and 1 at the base score; for a generated answer (chance 0) both are equal.
Input: tidy eval rows (``prunescope.core.results.COLUMNS`` + ``category``), ``probe`` = task,
``condition`` = stage ("base", "pruned-bi", "pruned-bi+sgr", ...), several metrics per task.

>>> rows = [dict(model="m", probe=t, condition=s, metric=m, value=v, category=c) for t, c, m, s, v in [
...     ("piqa", "classification", "acc", "base", 0.8), ("piqa", "classification", "acc", "pruned", 0.6),
...     ("gsm8k", "generative", "exact_match", "base", 0.4), ("gsm8k", "generative", "exact_match", "pruned", 0.1)]]
>>> table = retention_table(rows)
>>> {r["probe"]: round(r["value"], 3) for r in table if r["condition"] == "pruned" and r["metric"] == "retention"}
{'piqa': 0.75, 'gsm8k': 0.25, 'classification': 0.75, 'generative': 0.25, 'gap': 0.5}
>>> {r["probe"]: round(r["value"], 3) for r in table    # piqa: 2 choices, chance 0.5: (0.6 - 0.5) / (0.8 - 0.5)
...  if r["condition"] == "pruned" and r["metric"] == "chance_corrected_retention"}
{'piqa': 0.333, 'gsm8k': 0.25, 'classification': 0.333, 'generative': 0.25, 'gap': 0.083}
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from prunescope.core.errors import PrunescopeError

# The score a task's retention is computed on, when the rows do not say (no ``primary`` column: a
# table from another tool or an older version). Every table prunescope writes flags its primary
# rows from the task registry (prunescope.analysis.evaluate.TASKS), so this fallback is never consulted for them.
# Classification tasks: "acc"; generative tasks by name; metric names are matched exactly first, then
# by their part before a comma (lm-eval names such as "exact_match,strict-match"), first one listed.
GENERATIVE_PRIMARY = {"gsm8k": "exact_match", "humaneval": "pass@1", "mbpp": "pass@1", "xsum": "rougeL"}
CLASSIFICATION_PRIMARY = "acc"
GENERATIVE_TASKS = tuple(GENERATIVE_PRIMARY)
# the two ratios every retention table holds, in this order (metric column)
RAW = "retention"
CORRECTED = "chance_corrected_retention"
METRICS = (RAW, CORRECTED)
LEVEL = 0.95                # the paired bootstrap differences' interval
# every row of a retention table has these columns beyond the tidy ones ("" where they do not apply)
EXTRA = ("level", "category", "score_metric", "score", "base_score", "chance", "tasks_left_out", "note")
# probe tables: the margin metric (the answer outscores every wrong continuation) was once called
# "accuracy"; a table of either age reads as margin_accuracy
PROBE_ALIASES = {"accuracy": "margin_accuracy"}


def _category(row: dict) -> str:
    """The row's ``category``; without one, known generative tasks by name, else classification."""
    c = str(row.get("category") or "").strip().lower()
    if c:
        return c
    return "generative" if any(g in str(row["probe"]).lower() for g in GENERATIVE_TASKS) else "classification"


def default_metric(task: str, category: str) -> str:
    """The documented per-task default: acc (classification), exact_match (gsm8k), pass@1 (code),
    rougeL (xsum); a generative task not listed falls back to exact_match.

    >>> default_metric("humaneval_plus", "generative"), default_metric("arc_easy", "classification")
    ('pass@1', 'acc')
    """
    if category == "classification":
        return CLASSIFICATION_PRIMARY
    for name, metric in GENERATIVE_PRIMARY.items():
        if name in task.lower():
            return metric
    return "exact_match"


def _truthy(x) -> bool:
    return x is True or str(x).strip().lower() in ("true", "1", "yes")


def _pick(metrics: list[str], wanted: str) -> str | None:
    if wanted in metrics:
        return wanted
    return next((m for m in metrics if m.split(",")[0] == wanted), None)


def primary_rows(rows: list[dict], metric: str | Mapping[str, str] | None = None) -> dict[tuple, dict]:
    """``{(model, task, stage): {"value", "metric", "category", "n", "chance"}}`` for each task's primary metric:
    ``metric`` (one name, or task -> name) if given, else the row flagged ``primary`` (True / "true" / 1),
    else the default. A task without such a metric is left out. ``chance``: the rows' ``chance``
    column where they have one, else None.
    Repeated rows (seeds) are averaged."""
    by_task: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        by_task[(r.get("model", ""), r["probe"])].append(r)
    out: dict[tuple, dict] = {}
    for (model, task), trs in by_task.items():
        category = _category(trs[0])
        metrics = list(dict.fromkeys(r["metric"] for r in trs))
        if isinstance(metric, Mapping):
            wanted = metric.get(task)
            chosen = _pick(metrics, wanted) if wanted else None
        elif metric:
            chosen = _pick(metrics, metric)
        else:
            flagged = [r["metric"] for r in trs if _truthy(r.get("primary"))]
            chosen = flagged[0] if flagged else _pick(metrics, default_metric(task, category))
        if chosen is None:
            continue                                   # this task has no usable score: left out
        values: dict[str, list[float]] = defaultdict(list)
        ns: dict[str, int] = {}
        chance = next((r["chance"] for r in trs if r["metric"] == chosen and _finite(r.get("chance"))), None)
        for r in trs:
            if r["metric"] == chosen:
                values[r["condition"]].append(float(r["value"]))
                ns[r["condition"]] = r.get("n", "")
        for stage, vs in values.items():
            out[(model, task, stage)] = {"value": sum(vs) / len(vs), "metric": chosen, "category": category,
                                         "n": ns[stage], "chance": chance}
    return out


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def task_chance(task: str, category: str, given=None) -> tuple[float, str]:
    """``(chance, note)``: the score a random guesser gets on ``task``'s primary metric. ``given``
    (the rows' ``chance`` column) wins, else the task registry (``analysis/tasks/registry.yaml``);
    a task in neither is 0 when generative (a generated answer is not guessed) and unknown (NaN,
    with a note saying so) when classification: its number of choices is not known here.

    >>> task_chance("piqa", "classification"), task_chance("my_qa", "generative")
    ((0.5, ''), (0.0, ''))
    >>> task_chance("my_mc", "classification")
    (nan, 'chance level of my_mc unknown (not in analysis/tasks/registry.yaml, no chance column): ...')
    """
    if _finite(given):
        return float(given), ""
    from prunescope.analysis.evaluate import TASKS   # the one place chance levels live

    if task in TASKS:
        return TASKS[task].chance, ""
    if category != "classification":
        return 0.0, ""
    return float("nan"), (f"chance level of {task} unknown (not in analysis/tasks/registry.yaml, no chance "
                          "column): chance-corrected retention undefined")


def _base_text(task: str, b: dict) -> str:
    """How a left-out task's base score reads: "gsm8k (base 0 of 4)" (0 right of 4 items)."""
    n = b.get("n", "")
    if b["value"] == 0:
        return f"{task} (base 0 of {n})" if _finite(n) else f"{task} (base 0)"
    return f"{task} (base {b['value']:.3g})"


def _ratio(task: str, s: dict, b: dict, kind: str) -> tuple[float, str, float, str]:
    """``(value, why left out, chance, note)`` of one task at one stage."""
    chance, note = task_chance(task, s["category"], b.get("chance"))
    nan = float("nan")
    if kind == RAW:
        return (s["value"] / b["value"], "", chance, "") if b["value"] > 0 else (nan, _base_text(task, b), chance, "")
    if math.isnan(chance):
        return nan, f"{task} (chance level unknown)", chance, note
    if b["value"] <= chance:
        why = _base_text(task, b)[:-1] + (f", at or below chance {chance:g})" if chance > 0 else ")")
        return nan, why, chance, note
    return (s["value"] - chance) / (b["value"] - chance), "", chance, note


def _row(model: str, probe: str, stage: str, kind: str, value: float, n, level: str, category: str, **extra) -> dict:
    return {"model": model, "probe": probe, "condition": stage, "layers": "", "metric": kind, "value": value,
            "n": n, "seed": "", "level": level, "category": category, **{k: extra.get(k, "") for k in EXTRA[2:]}}


def _stage_rows(model: str, stage: str, base: str, tasks: list[str], scores: dict, kind: str) -> list[dict]:
    """One stage's task rows, category means and gap for one ratio (``kind``)."""
    rows, kept, left = [], defaultdict(list), defaultdict(list)
    for task in tasks:
        s, b = scores.get((model, task, stage)), scores.get((model, task, base))
        if s is None or b is None:
            if s or b:                  # scored at one of the two stages only: say which score is missing
                left[(s or b)["category"]].append(f"{task} (no {'base score' if b is None else f'score at {stage}'})")
            continue
        value, why, chance, note = _ratio(task, s, b, kind)
        (left if why else kept)[s["category"]].append(why or value)
        rows.append(_row(model, task, stage, kind, value, s["n"], "task", s["category"], score_metric=s["metric"],
                         score=s["value"], base_score=b["value"], chance=chance, note=note))
    cats = list(dict.fromkeys(r["category"] for r in rows)) + [c for c in left if c not in kept]
    for cat in dict.fromkeys(cats):
        vals = kept.get(cat, [])
        rows.append(_row(model, cat, stage, kind, sum(vals) / len(vals) if vals else float("nan"), len(vals),
                         "category", cat, tasks_left_out="; ".join(left.get(cat, []))))
    cls, gen = kept.get("classification"), kept.get("generative")
    if cls and gen:
        rows.append(_row(model, "gap", stage, kind, sum(cls) / len(cls) - sum(gen) / len(gen), len(cls) + len(gen),
                         "gap", "classification - generative",
                         tasks_left_out="; ".join(left.get("classification", []) + left.get("generative", []))))
    return rows


def retention_table(rows: list[dict], base: str = "base", metric: str | Mapping[str, str] | None = None) -> list[dict]:
    """Retention per model x task x stage, then per category the mean of its tasks' retentions
    (macro average, as the paper reports), and ``gap`` = classification retention minus generative
    retention, each twice: ``metric`` = ``retention`` (score / base score, the paper's ratio), then
    the same rows with ``metric`` = ``chance_corrected_retention`` ((score - chance) / (base -
    chance): 0 at chance, 1 at the base score).

    Tidy rows: ``probe`` is the task, ``classification``, ``generative`` or ``gap``; ``condition``
    the stage (the base stage is included, retention 1); extra columns ``level`` (task / category /
    gap), ``category``, ``score_metric``, ``score``, ``base_score``, ``chance`` (task rows: from the
    rows' ``chance`` column, else the task registry, see :func:`task_chance`), ``note`` (why a
    corrected value is undefined) and ``tasks_left_out`` (category and gap rows: the tasks left
    out of the mean and why, e.g. "gsm8k (base 0 of 4)"). A task is left out where its ratio is
    undefined: base score 0 (raw), base at or below chance or chance unknown (corrected); its task
    row keeps NaN. A category whose every task is left out gets NaN and ``n`` 0; the gap needs both.
    Stages keep the order in which they first appear in ``rows``.
    """
    if not rows:
        raise PrunescopeError("no eval rows to compute retention from")
    stages = list(dict.fromkeys(r["condition"] for r in rows))
    if base not in stages:
        raise PrunescopeError(f"no rows for the base stage '{base}' (stages: {', '.join(map(str, stages))}); "
                              "pass base= the unpruned stage's name")
    scores = primary_rows(rows, metric)
    out = []
    for model in dict.fromkeys(k[0] for k in scores):
        tasks = list(dict.fromkeys(k[1] for k in scores if k[0] == model))
        for kind in METRICS:          # every raw row first: a reader of the old table finds it unchanged
            for stage in stages:
                out += _stage_rows(model, stage, base, tasks, scores, kind)
    return out


def _stages(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["condition"] for r in rows))


def _values(rows: list[dict], level: str | None = None) -> list[float]:
    return [float(r["value"]) for r in rows if (level is None or r["level"] == level) and _finite(r["value"])]


def _retention_panel(ax, rows: list[dict], stages: list[str], outline: list[dict] | None = None) -> None:
    """One ratio's bars on ``ax``: per stage the classification and generative means side by side,
    each task as a dot, the gap as a double arrow; ``outline``: the raw rows, drawn as dashed
    empty bars behind the chance-corrected ones so the shrink shows in one panel."""
    colors = {"classification": "C0", "generative": "C3"}
    width = 0.36
    val = {(r["level"], r["probe"], r["condition"]): float(r["value"]) for r in rows}
    raw = {(r["level"], r["probe"], r["condition"]): float(r["value"]) for r in outline or []}
    for j, cat in enumerate(("classification", "generative")):
        xs = [i + (j - 0.5) * width for i in range(len(stages))]
        ax.bar(xs, [val.get(("category", cat, s), float("nan")) for s in stages], width, color=colors[cat],
               alpha=0.75, label=cat)
        if outline:
            ax.bar(xs, [raw.get(("category", cat, s), float("nan")) for s in stages], width, fill=False,
                   edgecolor=colors[cat], ls="--", lw=1, label=f"{cat}, raw")
        for x, s in zip(xs, stages):
            dots = _values([r for r in rows if r["category"] == cat and r["condition"] == s], "task")
            ax.plot([x] * len(dots), dots, "o", color="k", ms=3)
    for i, s in enumerate(stages):
        gap = val.get(("gap", "gap", s))
        if gap is None or math.isnan(gap):
            continue
        cls, gen = val[("category", "classification", s)], val[("category", "generative", s)]
        # the gap as a double arrow between the two bar tops, its value above the group
        ax.annotate("", (i, gen), (i, cls), arrowprops={"arrowstyle": "<->", "color": "k", "lw": 1})
        top = max([cls, gen] + _values([r for r in rows if r["condition"] == s], "task"))
        ax.text(i, top + 0.05, f"gap {gap:+.2f}", ha="center", fontsize=9, fontweight="bold")
    ax.axhline(1.0, color="gray", ls="--", lw=0.8)
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_xticks(range(len(stages)), stages, rotation=15)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))   # beside the axes: never on a gap label


def plot_retention(table: list[dict], path: str | Path, base: str = "base") -> Path:
    """Grouped bars per stage (the base stage is left out: it is 1 by definition): classification and
    generative mean retention side by side, each task's retention as a dot on its category's bar, and
    the gap as a double arrow between the bar tops with its value above the pair. One column per
    model; a row per ratio on one y scale: raw retention (score / base) above, chance-corrected
    below (with the raw bars as dashed outlines), so a classification bar that only stood on
    chance shrinks in plain sight. A table without chance-corrected rows gets the raw row only."""
    from prunescope.core.plots import save_figure, plt

    table = [r for r in table if str(r["condition"]) != base]
    models = list(dict.fromkeys(r["model"] for r in table))
    if not models:
        raise PrunescopeError("nothing to plot: the retention table has no stage besides the base")
    kinds = [k for k in METRICS if any(r.get("metric", RAW) == k for r in table)]
    fig, axes = plt.subplots(len(kinds), len(models), squeeze=False, sharey=True,
                             figsize=(max(6.0, 1.6 * len(_stages(table)) + 3) * len(models), 4 * len(kinds)))
    labels = {RAW: f"retention (score / {base})", CORRECTED: f"(score - chance) / ({base} - chance)"}
    titles = {RAW: "retention", CORRECTED: "chance-corrected retention"}
    for col, model in enumerate(models):
        rows = [r for r in table if r["model"] == model]
        for k, kind in enumerate(kinds):
            ax, mine = axes[k][col], [r for r in rows if r.get("metric", RAW) == kind]
            _retention_panel(ax, mine, _stages(rows),
                             [r for r in rows if r.get("metric", RAW) == RAW] if kind == CORRECTED else None)
            ax.set_ylabel(labels[kind])
            ax.set_title(f"{model}: {titles[kind]} (dots: tasks)" if model else f"{titles[kind]} (dots: tasks)")
    shown = _values([r for r in table if r["level"] != "gap"])
    axes[0][0].set_ylim(min(0.0, min(shown, default=0.0) - 0.1), max(1.3, max(shown, default=1.0) + 0.25))
    fig.tight_layout()                         # the upper row's stage names clear the lower row's titles
    return save_figure(fig, Path(path))


def probe_metric(name: str) -> str:
    """A probe table's metric under its current name: "accuracy" (older tables) is margin_accuracy.

    >>> probe_metric("accuracy"), probe_metric("exact_match")
    ('margin_accuracy', 'exact_match')
    """
    return PROBE_ALIASES.get(str(name), str(name))


def probe_comparison(rows: list[dict], metric: str = "margin_accuracy") -> list[dict]:
    """A probe metric across stages, one row per model x probe: ``{"model", "probe", <stage>: value, ...,
    "n"}`` (stages in first-appearance order), plus ``change`` = last stage - first stage. Rows that
    say "accuracy" (older tables) count as margin_accuracy.

    >>> rows = [dict(model="m", probe="copy", condition=s, metric="accuracy", value=v, n=10)
    ...         for s, v in [("base", 0.9), ("pruned", 0.5), ("recovered", 0.8)]]
    >>> t = probe_comparison(rows)[0]; (t["base"], t["pruned"], t["recovered"], round(t["change"], 3))
    (0.9, 0.5, 0.8, -0.1)
    """
    rows = [r for r in rows if probe_metric(r["metric"]) == probe_metric(metric)]
    stages = _stages(rows)
    table: dict[tuple, dict] = {}
    for r in rows:
        key = (r.get("model", ""), r["probe"])
        t = table.setdefault(key, {"model": key[0], "probe": key[1], **{s: None for s in stages}, "n": r.get("n", "")})
        t[r["condition"]] = float(r["value"])
    for t in table.values():
        vals = [t[s] for s in stages if t[s] is not None]
        t["change"] = vals[-1] - vals[0] if len(vals) > 1 else None
    return list(table.values())


def plot_probes(rows: list[dict], path: str | Path, metric: str = "margin_accuracy") -> Path:
    """Grouped bars: one group per probe (and model), one bar per stage, values written on the bars
    ("accuracy" rows count as margin_accuracy)."""
    from prunescope.core.plots import save_figure, plt

    table = probe_comparison(rows, metric)
    if not table:
        raise PrunescopeError(f"no probe rows with metric '{metric}' to plot")
    metric = probe_metric(metric)
    stages = _stages([r for r in rows if probe_metric(r["metric"]) == metric])
    multi = len({t["model"] for t in table}) > 1
    labels = [f"{t['model']}\n{t['probe']}" if multi else t["probe"] for t in table]
    width = min(0.8 / len(stages), 0.3)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(table) * max(1, len(stages) / 2) + 2), 4))
    for j, s in enumerate(stages):
        xs = [i + (j - (len(stages) - 1) / 2) * width for i in range(len(table))]
        hs = [t[s] if t[s] is not None else float("nan") for t in table]
        bars = ax.bar(xs, hs, width, label=s, color=f"C{j}")
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(table)), labels)
    ax.set_ylim(0, 1.25)                       # room for the legend above bars at 1.0
    ax.set_ylabel(metric)
    ax.set_title(f"probe {metric} per stage")
    ax.legend(fontsize=8)
    return save_figure(fig, Path(path))


def sample_item(sample: Mapping) -> str:
    """The item one per-doc sample scores: its doc id, within its subtask where it has one.

    >>> sample_item({"doc_id": 3}), sample_item({"doc_id": 3, "subtask": "anatomy"})
    ('3', 'anatomy/3')
    """
    doc = str(sample.get("doc_id"))
    return f"{sample['subtask']}/{doc}" if sample.get("subtask") else doc


def item_scores(run_dir: str | Path, metrics: Mapping[tuple[str, str], str]) -> dict[tuple[str, str], dict]:
    """``{(stage, task): {item: score}}`` from ``eval/<stage>/samples/<task>.jsonl``: the per-doc value
    of the task's retention metric (``scores[metric]``, else ``correct`` as 0/1). ``metrics`` maps
    ``(stage, task)`` to the metric name used in the retention table. An item is ``subtask/doc_id``
    where the sample names a subtask: a group such as MMLU numbers each subject's docs from 0, so
    its doc ids alone would fold 570 questions into 10 items."""
    import json

    out = {}
    for f in sorted(Path(run_dir).glob("eval/*/samples/*.jsonl")):
        stage, task = f.parent.parent.name, f.stem
        metric = metrics.get((stage, task))
        if metric is None:
            continue
        per = {}
        for line in f.read_text().splitlines():
            if not line.strip():
                continue
            d = json.loads(line)
            sc = (d.get("scores") or {}).get(metric.split(",")[0])
            if sc is None and d.get("correct") is not None:
                sc = float(bool(d["correct"]))
            if sc is not None:
                per[sample_item(d)] = float(sc)
        out[(stage, task)] = per
    return out


def _resample(b: Mapping | None, s: Mapping | None, rng, n_boot: int):
    """``(stage means, base means)`` over ``n_boot`` resamples of the items both stages scored (the
    same resampled docs for both: the pairing), or None without shared items."""
    import numpy as np

    docs = sorted(set(b or ()) & set(s or ()))
    if not docs:
        return None
    bv, sv = np.array([b[d] for d in docs]), np.array([s[d] for d in docs])
    idx = rng.integers(0, len(docs), size=(n_boot, len(docs)))
    return sv[idx].mean(1), bv[idx].mean(1)


def _boot_ratio(num, den, kind: str, chance: float):
    """One ratio per resample; NaN where it is undefined (base mean 0, or at or below chance)."""
    import numpy as np

    c = 0.0 if kind == RAW else chance
    if math.isnan(c):
        return np.full(len(num), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > c, (num - c) / (den - c), np.nan)


def _interval(boot, level: float) -> tuple:
    """The percentile interval of the finite resamples; ``("", "")`` when there are none."""
    import numpy as np

    if boot is None or not np.isfinite(boot).any():
        return "", ""
    lo, hi = np.nanpercentile(boot, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(lo), float(hi)


def _pooled(tasks: dict, row: dict):
    """A category row's resampled mean over its kept tasks, or a gap row's difference of two."""
    import numpy as np

    def mean(cat):
        boots = [bt for c, bt in tasks.values() if c == cat]
        if not boots:
            return None
        with warnings.catch_warnings():  # a draw where every task is undefined stays NaN, quietly
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(np.vstack(boots), 0)

    if row.get("level") == "category":
        return mean(row["probe"])
    cls, gen = mean("classification"), mean("generative")
    return None if cls is None or gen is None else cls - gen


def bootstrap_retention(table: list[dict], items: Mapping[tuple[str, str], dict], base: str = "base",
                        n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> list[dict]:
    """Add ``ci_low`` / ``ci_high`` to a retention table: a paired bootstrap over items (the same docs
    resampled for the base and the stage, each task resampled on its own), for task retentions,
    category means and the gap, of both ratios; a task's raw and chance-corrected rows share one
    draw. A category's interval pools the tasks its mean keeps. Rows without item scores keep
    empty bounds.

    >>> t = [{"model": "m", "probe": "t", "condition": "s", "level": "task", "category": "generative",
    ...       "value": 0.5}]
    >>> items = {("base", "t"): {"0": 1.0, "1": 1.0}, ("s", "t"): {"0": 1.0, "1": 0.0}}
    >>> r = bootstrap_retention(t, items, n_boot=200)[0]; 0.0 <= r["ci_low"] <= 0.5 <= r["ci_high"] <= 1.0
    True
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    draws: dict[tuple, tuple | None] = {}  # (model, stage, task) -> resampled means, one draw for both ratios
    kept: dict[tuple, dict] = defaultdict(dict)  # (model, stage, ratio) -> task -> (category, boot ratios)
    out = [dict(r, ci_low="", ci_high="") for r in table]
    for r in out:
        if r.get("level") != "task":
            continue
        key = (r["model"], r["condition"], r["probe"])
        if key not in draws:
            draws[key] = _resample(items.get((base, r["probe"])), items.get((r["condition"], r["probe"])), rng, n_boot)
        if draws[key] is None:
            continue
        kind = r.get("metric", RAW)
        if _finite(r["value"]):  # an undefined ratio gets no interval, and stays out of its category's
            chance = float(r["chance"]) if _finite(r.get("chance")) else task_chance(r["probe"], r["category"])[0]
            boot = _boot_ratio(*draws[key], kind, chance)
            kept[(r["model"], r["condition"], kind)][r["probe"]] = (r["category"], boot)
            r["ci_low"], r["ci_high"] = _interval(boot, level)
    for r in out:
        if r.get("level") in ("category", "gap"):
            tasks = kept.get((r["model"], r["condition"], r.get("metric", RAW)), {})
            r["ci_low"], r["ci_high"] = _interval(_pooled(tasks, r) if tasks else None, level)
    return out


def bootstrap_difference(items: Mapping[tuple[str, str], dict], tasks: Mapping[str, str | tuple[str, float]],
                         stage: str, reference: str, base: str = "base", n_boot: int = 1000, seed: int = 0,
                         metric: str = RAW) -> dict:
    """Retention of ``stage`` minus retention of ``reference`` per category (mean over its tasks),
    with a 95% paired bootstrap interval: each task's docs are resampled once and the same draw scores
    the base, the stage and the reference — the question "does strategy A keep more than B on
    these items?" without the noise of two independent draws. ``tasks``: task -> category, or task
    -> (category, chance) to override the registry's chance level. ``metric``: ``retention``
    (score / base) or ``chance_corrected_retention``, where the difference is (stage - reference)
    / (base - chance). Returns ``{category: (difference, low, high)}``; a category without shared
    items, or whose every task's ratio is undefined (base 0; base at or below chance), is left out.

    >>> items = {("base", "t"): {"0": 1.0, "1": 1.0, "2": 1.0}, ("a", "t"): {"0": 1.0, "1": 1.0, "2": 0.0},
    ...          ("b", "t"): {"0": 0.0, "1": 1.0, "2": 0.0}}
    >>> d, lo, hi = bootstrap_difference(items, {"t": "generative"}, "a", "b", n_boot=200)["generative"]
    >>> round(d, 3), lo >= 0.0, hi <= 1.0
    (0.333, True, True)
    >>> d, _, _ = bootstrap_difference(items, {"t": ("classification", 0.5)}, "a", "b", n_boot=200,
    ...                                metric="chance_corrected_retention")["classification"]
    >>> round(d, 3)      # (2/3 - 1/3) / (1 - 0.5)
    0.667
    """
    import numpy as np

    if metric not in METRICS:
        raise PrunescopeError(f"metric {metric!r}: choose {' or '.join(METRICS)}")
    rng = np.random.default_rng(seed)
    per_cat: dict[str, list[tuple[float, np.ndarray]]] = defaultdict(list)
    for task, spec in tasks.items():
        cat, given = spec if isinstance(spec, tuple) else (spec, None)
        c = 0.0 if metric == RAW else task_chance(task, cat, given)[0]
        b, s, r = (items.get((x, task)) for x in (base, stage, reference))
        docs = sorted(set(b or ()) & set(s or ()) & set(r or ()))
        if not docs:
            continue
        bv, sv, rv = (np.array([d[k] for k in docs]) for d in (b, s, r))
        if not bv.mean() > c:
            continue  # base score 0, at or below chance, or chance unknown: undefined, as in retention_table
        idx = rng.integers(0, len(docs), size=(n_boot, len(docs)))
        den = bv[idx].mean(1) - c
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = np.where(den > 0, (sv[idx].mean(1) - rv[idx].mean(1)) / den, np.nan)
        per_cat[cat].append(((sv.mean() - rv.mean()) / (bv.mean() - c), boot))
    out = {}
    for cat, pairs in per_cat.items():
        with warnings.catch_warnings():  # a draw where every task's base mean is undefined stays nan
            warnings.simplefilter("ignore", RuntimeWarning)
            boot = np.nanmean(np.vstack([bt for _, bt in pairs]), 0)
        lo, hi = _interval(boot, LEVEL)
        out[cat] = (float(np.mean([d for d, _ in pairs])), float("nan") if lo == "" else lo,
                    float("nan") if hi == "" else hi)
    return out


def retention_differences(run_dir: str | Path, table: list[dict], pairs: list[tuple[str, str]], base: str = "base",
                          n_boot: int = 1000, seed: int = 0, metric: str = RAW) -> list[dict]:
    """For each ``(stage, reference)`` of ``pairs``, in order: the stage's category retention minus the
    reference's, with the paired bootstrap interval of :func:`bootstrap_difference` over the items of
    the run's ``eval/<stage>/samples``. ``table``: the run's retention table (its task rows name each
    task's category, metric and chance level). ``metric``: ``retention`` or
    ``chance_corrected_retention``. One row per pair and category: ``metric`` =
    ``retention_minus_reference`` (or ``chance_corrected_retention_minus_reference``), ``n`` = the
    category's tasks, ``reference`` = the other stage.

    >>> # retention_differences("runs/x", read_table("runs/x/retention.csv"), [("pruned-bi-p", "pruned-bi")])
    """
    task_rows = [r for r in table if r.get("level") == "task"]
    items = item_scores(run_dir, {(r["condition"], r["probe"]): r["score_metric"] for r in task_rows})
    tasks = {r["probe"]: (r["category"], float(r["chance"]) if _finite(r.get("chance")) else None)
             for r in task_rows}
    model = task_rows[0]["model"] if task_rows else ""
    rows = []
    for stage, ref in pairs:
        for cat, (d, lo, hi) in bootstrap_difference(items, tasks, stage, ref, base=base, n_boot=n_boot,
                                                     seed=seed, metric=metric).items():
            rows.append({"model": model, "probe": cat, "condition": stage, "metric": f"{metric}_minus_reference",
                         "value": d, "n": sum(c == cat for c, _ in tasks.values()), "ci_low": lo, "ci_high": hi,
                         "reference": ref})
    return rows
