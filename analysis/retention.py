"""Retention (pruned score / base score) per task, per category, and the classification-vs-generative gap.

The paper's headline: pruning keeps 0.70-0.84 of classification scores but only 0.14-0.33 of
generative ones. Input: tidy eval rows (``prunescope.core.results.COLUMNS`` + ``category``), ``probe`` = task,
``condition`` = stage ("base", "pruned-bi", "pruned-bi+sgr", ...), several metrics per task.

>>> rows = [dict(model="m", probe=t, condition=s, metric=m, value=v, category=c) for t, c, m, s, v in [
...     ("piqa", "classification", "acc", "base", 0.8), ("piqa", "classification", "acc", "pruned", 0.6),
...     ("gsm8k", "generative", "exact_match", "base", 0.4), ("gsm8k", "generative", "exact_match", "pruned", 0.1)]]
>>> {r["probe"]: round(r["value"], 3) for r in retention_table(rows) if r["condition"] == "pruned"}
{'piqa': 0.75, 'gsm8k': 0.25, 'classification': 0.75, 'generative': 0.25, 'gap': 0.5}
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
    """``{(model, task, stage): {"value", "metric", "category", "n"}}`` for each task's primary metric:
    ``metric`` (one name, or task -> name) if given, else the row flagged ``primary`` (True / "true" / 1),
    else the default. A task without such a metric is left out.
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
        for r in trs:
            if r["metric"] == chosen:
                values[r["condition"]].append(float(r["value"]))
                ns[r["condition"]] = r.get("n", "")
        for stage, vs in values.items():
            out[(model, task, stage)] = {"value": sum(vs) / len(vs), "metric": chosen, "category": category,
                                         "n": ns[stage]}
    return out


def retention_table(rows: list[dict], base: str = "base", metric: str | Mapping[str, str] | None = None) -> list[dict]:
    """Retention = score / base score per model x task x stage, then per category the mean of its
    tasks' retentions (macro average, as the paper reports), and ``gap`` = classification retention
    minus generative retention. Tidy rows: ``probe`` is the task, ``classification``, ``generative``
    or ``gap``; ``condition`` the stage (the base stage is included, retention 1); ``metric`` is
    ``retention``; extra columns ``level`` (task / category / gap), ``category``, ``score_metric``,
    ``score``, ``base_score``. A task whose base score is 0 gets retention NaN and is left out of
    the averages. Stages keep the order in which they first appear in ``rows``.
    """
    if not rows:
        raise PrunescopeError("no eval rows to compute retention from")
    stages = list(dict.fromkeys(r["condition"] for r in rows))
    if base not in stages:
        raise PrunescopeError(f"no rows for the base stage '{base}' (stages: {', '.join(map(str, stages))}); "
                              "pass base= the unpruned stage's name")
    scores = primary_rows(rows, metric)
    models = list(dict.fromkeys(k[0] for k in scores))
    out = []
    for model in models:
        tasks = list(dict.fromkeys(k[1] for k in scores if k[0] == model))
        for stage in stages:
            per_cat: dict[str, list[float]] = defaultdict(list)
            for task in tasks:
                s, b = scores.get((model, task, stage)), scores.get((model, task, base))
                if s is None or b is None:
                    continue
                ret = s["value"] / b["value"] if b["value"] else float("nan")
                if not math.isnan(ret):
                    per_cat[s["category"]].append(ret)
                out.append({"model": model, "probe": task, "condition": stage, "layers": "", "metric": "retention",
                            "value": ret, "n": s["n"], "seed": "", "level": "task", "category": s["category"],
                            "score_metric": s["metric"], "score": s["value"], "base_score": b["value"]})
            for cat, rets in per_cat.items():
                out.append({"model": model, "probe": cat, "condition": stage, "layers": "", "metric": "retention",
                            "value": sum(rets) / len(rets), "n": len(rets), "seed": "", "level": "category",
                            "category": cat, "score_metric": "", "score": "", "base_score": ""})
            if per_cat.get("classification") and per_cat.get("generative"):
                gap = (sum(per_cat["classification"]) / len(per_cat["classification"])
                       - sum(per_cat["generative"]) / len(per_cat["generative"]))
                out.append({"model": model, "probe": "gap", "condition": stage, "layers": "", "metric": "retention",
                            "value": gap, "n": len(per_cat["classification"]) + len(per_cat["generative"]),
                            "seed": "", "level": "gap", "category": "classification - generative",
                            "score_metric": "", "score": "", "base_score": ""})
    return out


def _stages(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["condition"] for r in rows))


def plot_retention(table: list[dict], path: str | Path, base: str = "base") -> Path:
    """Grouped bars per stage (the base stage is left out: it is 1 by definition): classification and
    generative mean retention side by side, each task's retention as a dot on its category's bar, and
    the gap as a double arrow between the bar tops with its value above the pair. One panel per model."""
    from prunescope.core.plots import save_figure, plt

    table = [r for r in table if str(r["condition"]) != base]
    models = list(dict.fromkeys(r["model"] for r in table))
    if not models:
        raise PrunescopeError("nothing to plot: the retention table has no stage besides the base")
    fig, axes = plt.subplots(1, len(models), figsize=(max(5.0, 1.6 * len(_stages(table)) + 2) * len(models), 4),
                             squeeze=False)
    colors = {"classification": "C0", "generative": "C3"}
    for ax, model in zip(axes[0], models):
        rows = [r for r in table if r["model"] == model]
        stages = _stages(rows)
        val = {(r["level"], r["probe"], r["condition"]): float(r["value"]) for r in rows}
        width = 0.36
        for j, cat in enumerate(("classification", "generative")):
            xs = [i + (j - 0.5) * width for i in range(len(stages))]
            heights = [val.get(("category", cat, s), float("nan")) for s in stages]
            ax.bar(xs, heights, width, color=colors[cat], alpha=0.75, label=cat)
            for x, s in zip(xs, stages):
                dots = [float(r["value"]) for r in rows
                        if r["level"] == "task" and r["category"] == cat and r["condition"] == s]
                dots = [d for d in dots if not math.isnan(d)]
                ax.plot([x] * len(dots), dots, "o", color="k", ms=3)
        for i, s in enumerate(stages):
            gap = val.get(("gap", "gap", s))
            if gap is None or math.isnan(gap):
                continue
            cls, gen = val[("category", "classification", s)], val[("category", "generative", s)]
            # the gap as a double arrow between the two bar tops, its value above the group
            ax.annotate("", (i, gen), (i, cls), arrowprops={"arrowstyle": "<->", "color": "k", "lw": 1})
            top = max([cls, gen] + [float(r["value"]) for r in rows if r["level"] == "task" and r["condition"] == s
                                    and not math.isnan(float(r["value"]))])
            ax.text(i, top + 0.05, f"gap {gap:+.2f}", ha="center", fontsize=9, fontweight="bold")
        ax.axhline(1.0, color="gray", ls="--", lw=0.8)
        ax.set_xticks(range(len(stages)), stages, rotation=15)
        highest = max((float(r["value"]) for r in rows if r["level"] != "gap" and not math.isnan(float(r["value"]))),
                      default=1.0)
        ax.set_ylim(0, max(1.3, highest + 0.25))
        ax.set_ylabel(f"retention (score / {base})")
        ax.set_title(f"{model}: retention (dots: tasks)" if model else "retention (dots: tasks)")
        ax.legend(fontsize=8, loc="upper right", ncol=2)
    return save_figure(fig, Path(path))


def probe_comparison(rows: list[dict], metric: str = "accuracy") -> list[dict]:
    """Probe accuracy across stages, one row per model x probe: ``{"model", "probe", <stage>: value, ...,
    "n"}`` (stages in first-appearance order), plus ``change`` = last stage - first stage.

    >>> rows = [dict(model="m", probe="copy", condition=s, metric="accuracy", value=v, n=10)
    ...         for s, v in [("base", 0.9), ("pruned", 0.5), ("recovered", 0.8)]]
    >>> t = probe_comparison(rows)[0]; (t["base"], t["pruned"], t["recovered"], round(t["change"], 3))
    (0.9, 0.5, 0.8, -0.1)
    """
    rows = [r for r in rows if r["metric"] == metric]
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


def plot_probes(rows: list[dict], path: str | Path, metric: str = "accuracy") -> Path:
    """Grouped bars: one group per probe (and model), one bar per stage, values written on the bars."""
    from prunescope.core.plots import save_figure, plt

    table = probe_comparison(rows, metric)
    if not table:
        raise PrunescopeError(f"no probe rows with metric '{metric}' to plot")
    stages = _stages([r for r in rows if r["metric"] == metric])
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


def bootstrap_retention(table: list[dict], items: Mapping[tuple[str, str], dict], base: str = "base",
                        n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> list[dict]:
    """Add ``ci_low`` / ``ci_high`` to a retention table: a paired bootstrap over items (the same docs
    resampled for the base and the stage, each task resampled on its own), for task retentions,
    category means and the gap. Rows without item scores keep empty bounds.

    >>> t = [{"model": "m", "probe": "t", "condition": "s", "level": "task", "category": "generative",
    ...       "value": 0.5}]
    >>> items = {("base", "t"): {"0": 1.0, "1": 1.0}, ("s", "t"): {"0": 1.0, "1": 0.0}}
    >>> r = bootstrap_retention(t, items, n_boot=200)[0]; 0.0 <= r["ci_low"] <= 0.5 <= r["ci_high"] <= 1.0
    True
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    lo_q, hi_q = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    by_stage: dict[tuple, dict[str, np.ndarray]] = defaultdict(dict)  # (model, stage) -> task -> boot retentions
    out = [dict(r, ci_low="", ci_high="") for r in table]
    for r in out:
        if r.get("level") != "task":
            continue
        b, s = items.get((base, r["probe"])), items.get((r["condition"], r["probe"]))
        if not b or not s:
            continue
        docs = sorted(set(b) & set(s))
        if not docs:
            continue
        bv = np.array([b[d] for d in docs])
        sv = np.array([s[d] for d in docs])
        idx = rng.integers(0, len(docs), size=(n_boot, len(docs)))
        num, den = sv[idx].mean(1), bv[idx].mean(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = np.where(den > 0, num / den, np.nan)
        by_stage[(r["model"], r["condition"])][r["probe"]] = (r["category"], boot)
        if np.isfinite(boot).any():
            r["ci_low"], r["ci_high"] = (float(x) for x in np.nanpercentile(boot, [lo_q, hi_q]))
    for r in out:
        tasks = by_stage.get((r["model"], r["condition"]), {})
        if r.get("level") == "category":
            boots = [bt for cat, bt in tasks.values() if cat == r["probe"]]
        elif r.get("level") == "gap":
            cls = [bt for cat, bt in tasks.values() if cat == "classification"]
            gen = [bt for cat, bt in tasks.values() if cat == "generative"]
            with warnings.catch_warnings():  # a task with base score 0 is all-NaN: no interval, no warning
                warnings.simplefilter("ignore", RuntimeWarning)
                boots = [np.nanmean(cls, 0) - np.nanmean(gen, 0)] if cls and gen else []
        else:
            continue
        if boots:
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(np.vstack(boots), 0) if r.get("level") == "category" else boots[0]
            if np.isfinite(mean).any():
                r["ci_low"], r["ci_high"] = (float(x) for x in np.nanpercentile(mean, [lo_q, hi_q]))
    return out


def bootstrap_difference(items: Mapping[tuple[str, str], dict], tasks: Mapping[str, str], stage: str, reference: str,
                         base: str = "base", n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Retention of ``stage`` minus retention of ``reference`` per category (mean over its tasks),
    with a paired bootstrap interval: each task's docs are resampled once and the same draw scores
    the base, the stage and the reference — the question "does strategy A keep more than B on
    these items?" without the noise of two independent draws. ``tasks``: task -> category. Returns
    ``{category: (difference, low, high)}``; a category without shared items is left out.

    >>> items = {("base", "t"): {"0": 1.0, "1": 1.0, "2": 1.0}, ("a", "t"): {"0": 1.0, "1": 1.0, "2": 0.0},
    ...          ("b", "t"): {"0": 0.0, "1": 1.0, "2": 0.0}}
    >>> d, lo, hi = bootstrap_difference(items, {"t": "generative"}, "a", "b", n_boot=200)["generative"]
    >>> round(d, 3), lo >= 0.0, hi <= 1.0
    (0.333, True, True)
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    per_cat: dict[str, list[tuple[float, np.ndarray]]] = defaultdict(list)
    for task, cat in tasks.items():
        b, s, r = (items.get((x, task)) for x in (base, stage, reference))
        if not (b and s and r):
            continue
        docs = sorted(set(b) & set(s) & set(r))
        bv, sv, rv = (np.array([d[k] for k in docs]) for d in (b, s, r))
        if not docs or not bv.mean():
            continue  # base score 0: retention undefined, as in retention_table
        idx = rng.integers(0, len(docs), size=(n_boot, len(docs)))
        den = bv[idx].mean(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = np.where(den > 0, (sv[idx].mean(1) - rv[idx].mean(1)) / den, np.nan)
        per_cat[cat].append(((sv.mean() - rv.mean()) / bv.mean(), boot))
    out = {}
    lo_q, hi_q = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    for cat, pairs in per_cat.items():
        with warnings.catch_warnings():  # a draw where every task's base mean is 0 stays nan
            warnings.simplefilter("ignore", RuntimeWarning)
            boot = np.nanmean(np.vstack([bt for _, bt in pairs]), 0)
        lo, hi = np.nanpercentile(boot, [lo_q, hi_q]) if np.isfinite(boot).any() else (float("nan"),) * 2
        out[cat] = (float(np.mean([d for d, _ in pairs])), float(lo), float(hi))
    return out


def retention_differences(run_dir: str | Path, table: list[dict], pairs: list[tuple[str, str]], base: str = "base",
                          n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """For each ``(stage, reference)`` of ``pairs``, in order: the stage's category retention minus the
    reference's, with the paired bootstrap interval of :func:`bootstrap_difference` over the items of
    the run's ``eval/<stage>/samples``. ``table``: the run's retention table (its task rows name each
    task's category and metric). One row per pair and category: ``metric`` =
    ``retention_minus_reference``, ``n`` = the category's tasks, ``reference`` = the other stage.

    >>> # retention_differences("runs/x", read_table("runs/x/retention.csv"), [("pruned-bi-p", "pruned-bi")])
    """
    task_rows = [r for r in table if r.get("level") == "task"]
    items = item_scores(run_dir, {(r["condition"], r["probe"]): r["score_metric"] for r in task_rows})
    tasks = {r["probe"]: r["category"] for r in task_rows}
    model = task_rows[0]["model"] if task_rows else ""
    rows = []
    for stage, ref in pairs:
        for cat, (d, lo, hi) in bootstrap_difference(items, tasks, stage, ref, base=base, n_boot=n_boot,
                                                     seed=seed).items():
            rows.append({"model": model, "probe": cat, "condition": stage, "metric": "retention_minus_reference",
                         "value": d, "n": sum(c == cat for c in tasks.values()), "ci_low": lo, "ci_high": hi,
                         "reference": ref})
    return rows
