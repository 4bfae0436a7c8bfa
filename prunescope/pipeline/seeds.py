"""Compare the runs of one study made with several seeds (``seeds: [0, 1, 2]`` in a pipeline config).

A seed draws the localization data (probe items, patching pairs: so the protected layers can move),
the calibration texts of Block Influence, the iterative search's probe items and the few-shot
examples of every benchmark. Each seed's run is a normal run folder ``OUT/seed-N``; this module
puts them side by side:

* per seed, each stage's category retention and gap with its item-bootstrap interval (from the
  run's ``retention.csv``) and the layers the stage dropped (``prune/<name>/plan.json``);
* per seed, each pruned stage minus the plain-BI stage of the same ratio — a *paired* bootstrap over
  the same items (:func:`prunescope.analysis.retention.bootstrap_difference`), the test of "does protecting the
  circuit layers keep more than BI?";
* across seeds: mean and standard deviation.

Written: ``OUT/seeds.csv`` (tidy), ``OUT/seeds.png`` and ``OUT/seeds.md``.

>>> # compare_seeds("runs/smollm2-protect", [0, 1, 2])   -> runs/smollm2-protect/seeds.md
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
from pathlib import Path

from prunescope.core.errors import PrunescopeError
from prunescope.core.results import atomic_write_text, read_table, write_table
from prunescope.pipeline.config import split_arm

CATEGORIES = ("classification", "generative", "gap")
LABELS_SHORT = {"margin_accuracy": "margin", "exact_match": "exact"}   # probe metrics in the seed tables


def _references(seed_dir: Path) -> dict[str, str]:
    """``{pruned stage: the plain-BI stage of the same ratio}`` for every other pruned stage of a run,
    from the run's own ``config.json`` (the names :func:`prunescope.pipeline.config.pruned_names` gives)."""
    from prunescope.pipeline.config import pruned_names

    path = seed_dir / "config.json"
    if not path.is_file():
        raise PrunescopeError(f"{path} is missing: {seed_dir} is not a pipeline run folder")
    names = pruned_names(json.loads(path.read_text()))
    bi = {ratio: name for name, (strategy, ratio) in names.items() if strategy == "bi"}
    return {f"pruned-{name}": f"pruned-{bi[ratio]}" for name, (strategy, ratio) in names.items()
            if strategy != "bi" and ratio in bi}


def _dropped(seed_dir: Path, stage: str) -> str:
    plan = seed_dir / "prune" / stage.removeprefix("pruned-") / "plan.json"
    if not plan.is_file():
        return ""
    d = json.loads(plan.read_text())
    return " ".join(map(str, d["drop"])) + (f" (protected {' '.join(map(str, d['protected']))})"
                                            if d.get("protected") else "")


def seed_rows(seed_dir: str | Path, seed: int, n_boot: int = 1000) -> list[dict]:
    """One seed's rows: ``level`` = ``seed`` (category retention / gap with CI) and ``difference``
    (stage minus its plain-BI reference, paired bootstrap CI)."""
    from prunescope.analysis.retention import retention_differences

    seed_dir = Path(seed_dir)
    path = seed_dir / "retention.csv"
    if not path.is_file():
        raise PrunescopeError(f"{path} is missing: seed {seed}'s run has not finished its report stage "
                              "(run the config again; finished stages are cached)")
    table = read_table(path)
    stages = list(dict.fromkeys(r["condition"] for r in table))
    base = stages[0]
    out = []
    for r in table:
        if r.get("level") not in ("category", "gap"):
            continue
        out.append({"model": r["model"], "probe": r["probe"], "condition": r["condition"], "layers":
                    _dropped(seed_dir, r["condition"]), "metric": r.get("metric") or "retention",
                    "value": float(r["value"]),
                    "n": r["n"], "seed": seed, "level": "seed", "ci_low": r.get("ci_low", ""),
                    "ci_high": r.get("ci_high", ""), "reference": ""})
    references = _references(seed_dir)
    pairs = [(stage, references[stage]) for stage in stages if references.get(stage) in stages]
    differences = [d for metric in ("retention", "chance_corrected_retention")
                   for d in retention_differences(seed_dir, table, pairs, base=base, n_boot=n_boot, seed=seed,
                                                  metric=metric)]
    for d in differences:
        out.append({"model": d["model"], "probe": d["probe"], "condition": d["condition"],
                    "layers": _dropped(seed_dir, d["condition"]), "metric": d["metric"], "value": d["value"],
                    "n": d["n"], "seed": seed, "level": "difference", "ci_low": d["ci_low"],
                    "ci_high": d["ci_high"], "reference": d["reference"]})
    return out


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds of every (model, category, stage, metric): ``level`` =
    ``mean``, ``sd`` column, ``n`` = number of seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["probe"], r["condition"], r["metric"], r["reference"]), []).append(r)
    out = []
    for (model, probe, cond, metric, ref), rs in groups.items():
        vals = [float(r["value"]) for r in rs if not math.isnan(float(r["value"]))]
        if not vals:
            continue
        out.append({"model": model, "probe": probe, "condition": cond, "layers": "", "metric": metric,
                    "value": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                    "n": len(vals), "seed": "", "level": "mean", "ci_low": "", "ci_high": "", "reference": ref})
    return out


def _fmt(x) -> str:
    try:
        return f"{float(x):.3f}"
    except (TypeError, ValueError):
        return ""


def _ci(r: dict) -> str:
    return f"{_fmt(r['value'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]" if _fmt(r["ci_low"]) else _fmt(r["value"])


KINDS = (("retention", "Raw retention (score / base)"),
         ("chance_corrected_retention", "Chance-corrected retention ((score - chance) / (base - chance))"))


def markdown(rows: list[dict], seeds: list[int]) -> str:
    """The comparison as Markdown: raw and chance-corrected retention per stage and category (mean ±
    sd over seeds, then each seed with its 95% item-bootstrap interval), the paired differences to
    plain BI, and the dropped layers."""
    lines = [f"Seeds {', '.join(map(str, seeds))}. Cells: mean ± sd over seeds; then each seed's value "
             "[95% bootstrap interval over items]."]
    for metric, title in KINDS:
        if any(r["metric"] == metric for r in rows if r["level"] == "seed"):
            lines += _retention_lines(rows, metric, title) + _difference_lines(rows, metric)
    per = [r for r in rows if r["level"] == "seed"]
    stages = list(dict.fromkeys(r["condition"] for r in per))
    lines += ["", "Dropped layers per seed:", "", "| stage | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---|" + "---|" * len(seeds)]
    for s in stages:
        drops: dict = {}
        for r in per:  # any category's row names the stage's dropped layers (generative may be undefined)
            if r["condition"] == s and r["layers"]:
                drops.setdefault(r["seed"], r["layers"])
        if any(drops.values()):
            lines.append(f"| {s} | " + " | ".join(drops.get(sd, "") for sd in seeds) + " |")
    return "\n".join(lines) + "\n"


def _retention_lines(rows: list[dict], metric: str, title: str) -> list[str]:
    per = [r for r in rows if r["level"] == "seed" and r["metric"] == metric]
    mean = {(r["probe"], r["condition"]): r for r in rows if r["level"] == "mean" and r["metric"] == metric}
    head = ["stage", *CATEGORIES]
    lines = ["", f"{title}:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in dict.fromkeys(r["condition"] for r in per):
        cells = []
        for cat in CATEGORIES:
            m = mean.get((cat, s))
            each = "; ".join(_ci(r) for r in per if r["condition"] == s and r["probe"] == cat)
            cells.append(f"**{_fmt(m['value'])} ± {_fmt(m['sd'])}**<br>{each}" if m else "")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return lines


def _difference_lines(rows: list[dict], metric: str) -> list[str]:
    name = f"{metric}_minus_reference"
    diffs = [r for r in rows if r["level"] == "difference" and r["metric"] == name]
    if not diffs:
        return []
    mean = {(r["probe"], r["condition"]): r for r in rows if r["level"] == "mean" and r["metric"] == name}
    lines = ["", "Minus the plain-BI stage of the same ratio, paired over the same items (an interval above 0: "
                 "the stage keeps more than BI on this seed).", "",
             "| stage | vs | category | mean ± sd | per seed [95% CI] |", "|---|---|---|---|---|"]
    for s in dict.fromkeys(r["condition"] for r in diffs):
        for cat in ("classification", "generative"):
            rs = [r for r in diffs if r["condition"] == s and r["probe"] == cat]
            m = mean.get((cat, s))
            if rs and m:
                lines.append(f"| {s} | {rs[0]['reference']} | {cat} | {_fmt(m['value'])} ± {_fmt(m['sd'])} | "
                             + "; ".join(_ci(r) for r in rs) + " |")
    return lines


def plot_seeds(rows: list[dict], path: str | Path) -> Path:
    """One panel per category: each stage's retention per seed (dot + 95% item-bootstrap interval)
    and the mean over seeds (bar)."""
    from prunescope.core.plots import save_figure, plt

    per = [r for r in rows if r["level"] == "seed" and r["metric"] == "retention"]
    stages = [s for s in dict.fromkeys(r["condition"] for r in per) if s != "base"]
    seeds = list(dict.fromkeys(r["seed"] for r in per))
    fig, axes = plt.subplots(1, 3, figsize=(max(9, 1.1 * len(stages) * 3), 3.8), squeeze=False,
                             layout="constrained")
    for ax, cat in zip(axes[0], CATEGORIES):
        for i, s in enumerate(stages):
            pts = [r for r in per if r["condition"] == s and r["probe"] == cat]
            vals = [float(r["value"]) for r in pts]
            if vals:
                ax.bar(i, statistics.fmean(vals), 0.7, color="C3" if cat == "generative" else "C0", alpha=0.35)
            for j, r in enumerate(pts):
                x = i + (j - (len(seeds) - 1) / 2) * 0.18
                lo, hi = _fmt(r["ci_low"]), _fmt(r["ci_high"])
                err = [[float(r["value"]) - float(lo)], [float(hi) - float(r["value"])]] if lo and hi else None
                ax.errorbar(x, float(r["value"]), yerr=err, fmt="o", ms=3, color=f"C{j}", capsize=2,
                            label=f"seed {r['seed']}" if i == 0 else None)
        ax.axhline(0 if cat == "gap" else 1, color="gray", ls="--", lw=0.8)
        ax.set_xticks(range(len(stages)), [s.removeprefix("pruned-") for s in stages], rotation=30, fontsize=8)
        ax.set_title(f"{cat} retention" if cat != "gap" else "gap (classification - generative)", fontsize=10)
    axes[0, 0].legend(fontsize=7)
    model = per[0]["model"] if per else ""
    fig.suptitle(f"{model}: retention per seed (bars: mean over seeds; whiskers: 95% bootstrap over items)",
                 fontsize=10)
    return save_figure(fig, Path(path))


def compare_seeds(root: str | Path, seeds: list[int], n_boot: int = 1000, left_out: list[int] = ()) -> Path:
    """Read ``root/seed-N`` for every seed and write ``seeds.csv``, ``seeds.png`` and ``seeds.md``
    (which names the ``left_out`` seeds: their evaluation has not finished)."""
    root = Path(root)
    rows = []
    for seed in seeds:
        rows += seed_rows(root / f"seed-{seed}", seed, n_boot=n_boot)
    rows += summarize(rows)
    write_table(rows, root / "seeds")
    across = model_differences(root, seeds, n_boot=n_boot)
    if across:
        write_table(across, root / "models")
    plot_seeds(rows, root / "seeds.png")
    md = root / "seeds.md"
    note = (f"\nLeft out: seed {', '.join(map(str, left_out))} (evaluation not finished; rerun the config to "
            "finish it).\n") if left_out else ""
    atomic_write_text(md, markdown(rows, seeds) + models_markdown(root, seeds, across) + score_markdown(root, seeds)
                      + note)
    return md


def score_markdown(root: str | Path, seeds: list[int]) -> str:
    """Raw scores behind the retention: each task's primary metric and each probe's margin accuracy
    and greedy exact match per stage, mean ± sd over the seeds (from ``seed-N/eval/eval.csv`` and
    ``seed-N/probes.csv``)."""
    from prunescope.analysis.retention import primary_rows
    from prunescope.probe.scoring import canonical_metric

    root = Path(root)
    vals: dict[tuple[str, str], list[float]] = {}
    for seed in seeds:
        folder = root / f"seed-{seed}"
        if (folder / "eval" / "eval.csv").is_file():
            for (_, task, stage), r in primary_rows(read_table(folder / "eval" / "eval.csv")).items():
                vals.setdefault((stage, f"{task} ({r['metric']})"), []).append(r["value"])
        if (folder / "probes.csv").is_file():
            for r in read_table(folder / "probes.csv"):
                metric = canonical_metric(r["metric"])
                if metric in LABELS_SHORT:
                    vals.setdefault((r["condition"], f"{r['probe']} probe, {LABELS_SHORT[metric]}"), []).append(
                        float(r["value"]))
    if not vals:
        return ""
    stages = list(dict.fromkeys(c for c, _ in vals))
    cols = list(dict.fromkeys(t for _, t in vals))
    lines = ["", "Scores per stage (mean ± sd over the seeds):", "", "| stage | " + " | ".join(cols) + " |",
             "|---|" + "---|" * len(cols)]
    for st in stages:
        cells = []
        for c in cols:
            v = vals.get((st, c))
            cells.append(f"{statistics.mean(v):.3f} ± {statistics.pstdev(v):.3f}" if v else "")
        lines.append(f"| {st} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare_finished_seeds(root: str | Path, n_boot: int = 1000) -> tuple[Path, list[int]]:
    """The seed comparison of a seed root (``config.json`` with ``seeds``) over the seeds whose
    evaluation has finished, while others are still running or were stopped: each finished seed
    gets its report (retention with intervals) if it has none. Returns ``seeds.md`` and the seeds
    left out; ``seeds.md`` names them.

    >>> md, left_out = compare_finished_seeds("runs/gemma3-protect")   # doctest: +SKIP
    """
    from prunescope.analysis.report import report

    root = Path(root)
    cfg_path = root / "config.json"
    seeds = json.loads(cfg_path.read_text()).get("seeds") if cfg_path.is_file() else None
    if not seeds:
        raise PrunescopeError(f"{root} is not a seed root: no config.json with seeds")
    done = [s for s in seeds if (root / f"seed-{s}" / ".stages" / "evaluate.json").is_file()]
    if not done:
        raise PrunescopeError(f"no seed of {root} has finished its evaluation yet (seeds {seeds})")
    for s in done:
        if not (root / f"seed-{s}" / "retention.csv").is_file():
            report(root / f"seed-{s}")
    left_out = [s for s in seeds if s not in done]
    return compare_seeds(root, done, n_boot=n_boot, left_out=left_out), left_out


# ---------------------------------------------------------------- distinct models
def distinct_models(root: str | Path, seeds: list[int]) -> dict[str, dict[tuple[int, ...], list[int]]]:
    """``{pruned stage: {dropped layers: [seeds that chose them]}}``: how many different models each
    arm produced over the seeds (two seeds that drop the same layers built the same model).

    >>> # distinct_models("runs/qwen-protect", [0, 1, 2, 3])["pruned-bi"]  -> {(12, 13, ...): [0, 1], ...}
    """
    from prunescope.pipeline.config import pruned_names

    out: dict[str, dict[tuple[int, ...], list[int]]] = {}
    for seed in seeds:
        folder = Path(root) / f"seed-{seed}"
        names = pruned_names(json.loads((folder / "config.json").read_text()))
        for plan in sorted((folder / "prune" / name / "plan.json" for name in names), key=str):
            if not plan.is_file():
                continue
            drop = tuple(json.loads(plan.read_text())["drop"])
            out.setdefault(f"pruned-{plan.parent.name}", {}).setdefault(drop, []).append(seed)
    return out


def _model_items(root: Path, models: dict[str, dict[tuple, list[int]]]) -> tuple[dict, dict, dict]:
    """Per-item scores of the base and of each distinct model (read from the first seed that built it):
    ``base[task]``, ``per[(stage, drop)][task]`` as ``{item: score}``, and ``task -> category``."""
    from prunescope.analysis.retention import item_scores

    per, base, tasks = {}, {}, {}
    for stage, sets in models.items():
        for drop, seeds in sets.items():
            folder = root / f"seed-{seeds[0]}"
            table = [r for r in read_table(folder / "retention.csv") if r.get("level") == "task"
                     and r.get("metric", "retention") == "retention"]
            metrics = {(r["condition"], r["probe"]): r["score_metric"] for r in table
                       if r["condition"] in (stage, "base")}
            items = item_scores(folder, metrics)
            tasks.update({r["probe"]: r["category"] for r in table})
            per[(stage, drop)] = {t: v for (st, t), v in items.items() if st == stage}
            base = base or {t: v for (st, t), v in items.items() if st == "base"}
    return base, per, tasks


def _arm_draws(base: dict, per: dict, tasks: dict, arm: list[tuple], idx: dict, pick, corrected: bool):
    """Each bootstrap draw's category retention of one arm: the mean over its drawn models."""
    import numpy as np

    from prunescope.analysis.evaluate import TASKS

    cats: dict[str, list] = {}
    for task, cat in tasks.items():
        docs = idx.get(task)
        if docs is None:
            continue
        keys, draw = docs
        chance = TASKS[task].chance if corrected and task in TASKS else 0.0
        b = np.array([base[task][k] for k in keys])[draw].mean(1)
        models = np.vstack([np.array([per[m][task][k] for k in keys])[draw].mean(1) for m in arm])  # models x boot
        with np.errstate(invalid="ignore", divide="ignore"):
            ret = np.where(b > chance, (models - chance) / (b - chance), np.nan)
        cats.setdefault(cat, []).append(ret)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for cat, rets in cats.items():
            per_model = np.nanmean(np.stack(rets), 0)          # models x boot: mean over the category's tasks
            out[cat] = np.take_along_axis(per_model, pick(len(arm)), 0).mean(0)
        if "classification" in out and "generative" in out:
            out["gap"] = out["classification"] - out["generative"]
    return out


def model_differences(root: str | Path, seeds: list[int], n_boot: int = 1000, seed: int = 0,
                      reference: str = "pruned-bi") -> list[dict]:
    """Each arm against ``reference`` over their *distinct models*: per category, the mean retention
    of an arm's distinct models minus the reference's, raw (score / base) and chance-corrected
    ((score - chance) / (base - chance)). Interval: a bootstrap that resamples the items (the same
    draw for every model: all seeds are scored on the same items) and, within each arm, its distinct
    models; so it carries the variation between pruned models as well as between items. Rows:
    ``level`` = ``models``, ``n`` = the arm's distinct models, ``n_reference`` the reference's."""
    root = Path(root)
    models = distinct_models(root, seeds)
    if reference not in models:
        return []
    base, per, tasks = _model_items(root, models)
    first = root / f"seed-{next(iter(next(iter(models.values())).values()))[0]}" / "retention.csv"
    model = next((r["model"] for r in read_table(first)), "")
    arms = {stage: [(stage, d) for d in sets] for stage, sets in models.items()}
    pairs = [(stage, reference) for stage in arms if stage != reference]
    return arm_differences((base, per, tasks), arms, pairs, model, n_boot, seed, level="models")


def arm_differences(scores: tuple[dict, dict, dict], arms: dict[str, list], pairs: list[tuple[str, str]],
                    model: str, n_boot: int = 1000, seed: int = 0, level: str = "models") -> list[dict]:
    """Per category, arm A's mean retention over its models minus arm B's, for each ``(A, B)`` of
    ``pairs``, raw and chance-corrected, with a bootstrap interval that resamples the items (one draw
    shared by every model) and, within each arm, its models. ``scores``: ``(base, per, tasks)`` as
    :func:`_model_items` gives them; ``arms``: ``{arm: [keys of per]}`` (its models: distinct
    pruned models, or one arm's trainings with different seeds)."""
    import numpy as np

    base, per, tasks = scores
    rng = np.random.default_rng(seed)
    idx = {}
    for task in tasks:
        keys = sorted(set(base.get(task, {})).intersection(*(set(v.get(task, {})) for v in per.values())))
        if keys:
            idx[task] = (keys, rng.integers(0, len(keys), size=(n_boot, len(keys))))

    def pick(n: int):
        return rng.integers(0, n, size=(n, n_boot))

    rows = []
    for stage, reference in pairs:
        arm, ref = arms[stage], arms[reference]
        for metric, corrected in (("retention", False), ("chance_corrected_retention", True)):
            a = _arm_draws(base, per, tasks, arm, idx, pick, corrected)
            b = _arm_draws(base, per, tasks, ref, idx, pick, corrected)
            point_a = _arm_draws(base, per, tasks, arm, _whole(idx), _all_models, corrected)
            point_b = _arm_draws(base, per, tasks, ref, _whole(idx), _all_models, corrected)
            for cat in ("classification", "generative", "gap"):
                if cat not in a or cat not in b:
                    continue
                diff = a[cat] - b[cat]
                lo, hi = np.nanpercentile(diff, [2.5, 97.5]) if np.isfinite(diff).any() else (float("nan"),) * 2
                rows.append({"model": model, "probe": cat, "condition": stage, "reference": reference,
                             "metric": f"{metric}_minus_reference", "value": float(point_a[cat][0] - point_b[cat][0]),
                             "arm": float(point_a[cat][0]), "reference_value": float(point_b[cat][0]),
                             "ci_low": float(lo), "ci_high": float(hi), "n": len(arm), "n_reference": len(ref),
                             "level": level})
    return rows


def training_seed_differences(run_dir: str | Path, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """The recovery arms of one run trained with several seeds (``recover.train_seeds``: stages
    ``recovered-<pruned>-<mode>@<seed>``, or ``recovered-<pruned>-<mode>~<budget>@<seed>`` at a seeded
    budget), each arm over its seeds against its pruned model (what the repair buys) and against the
    SGR arm of the same pruned model and budget (``recovered-<pruned>-sgr`` / ``...-sgr~<budget>``,
    over its seeds, or alone where that budget trains it once): :func:`arm_differences` with the
    seeds as an arm's models, so the interval carries the training variance as well as the items'.
    Rows: ``level`` = ``training_seeds``, ``condition`` = the arm without its seed (seeds pooled),
    ``n`` = its seeds; empty for a run without training seeds."""
    from prunescope.analysis.retention import item_scores
    from prunescope.pipeline.config import budget_label

    run_dir = Path(run_dir)
    if not (run_dir / "retention.csv").is_file():
        return []
    table = [r for r in read_table(run_dir / "retention.csv") if r.get("level") == "task"
             and r.get("metric", "retention") == "retention"]
    groups: dict[str, list] = {}   # stages that differ only by their training seed
    for st in dict.fromkeys(r["condition"] for r in table):
        if st.startswith("recovered-") and "@" in st:
            groups.setdefault(st.partition("@")[0], []).append((st,))
    if not groups:
        return []
    items = item_scores(run_dir, {(r["condition"], r["probe"]): r["score_metric"] for r in table})
    per = {(st,): {t: v for (s, t), v in items.items() if s == st} for st in dict.fromkeys(r["condition"] for r in table)}
    base, tasks = per.pop(("base",), {}), {r["probe"]: r["category"] for r in table}
    # references: the pruned stages and the recovered ones trained once (an SGR arm at an unseeded budget)
    arms = {**groups, **{st: [k] for k, st in ((k, k[0]) for k in per)
                         if st.startswith("pruned-") or (st.startswith("recovered-") and "@" not in st)}}
    pairs = []
    for arm in groups:
        a = split_arm(arm.removeprefix("recovered-"))
        sgr = f"recovered-{a.pruned}-sgr" + (f"~{budget_label(a.budget)}" if a.budget is not None else "")
        pairs += [(arm, ref) for ref in (f"pruned-{a.pruned}", sgr) if ref in arms and ref != arm]
    return arm_differences((base, per, tasks), arms, pairs, next((r["model"] for r in table), ""), n_boot, seed,
                           level="training_seeds")


def _whole(idx: dict) -> dict:
    """The items as they are (one 'draw' that takes each once): the point estimate."""
    import numpy as np

    return {t: (keys, np.arange(len(keys))[None, :]) for t, (keys, _) in idx.items()}


def _all_models(n: int):
    import numpy as np

    return np.arange(n)[:, None]


def verdict(row: dict) -> str:
    """'X beats Y' only where the interval excludes 0.

    >>> verdict({"ci_low": 0.01, "ci_high": 0.2}), verdict({"ci_low": -0.1, "ci_high": 0.2})
    ('keeps more', 'not told apart')
    """
    if float(row["ci_low"]) > 0:
        return "keeps more"
    if float(row["ci_high"]) < 0:
        return "keeps less"
    return "not told apart"


def models_markdown(root: str | Path, seeds: list[int], rows: list[dict]) -> str:
    """The distinct models per arm and each arm against the reference over them, as Markdown."""
    models = distinct_models(root, seeds)
    lines = ["", "Distinct models per arm (two seeds that drop the same layers build the same model):", "",
             "| stage | distinct models | dropped layers (seeds) |", "|---|---|---|"]
    for stage, sets in models.items():
        lines.append(f"| {stage} | {len(sets)} of {sum(map(len, sets.values()))} seeds | "
                     + "; ".join(f"{' '.join(map(str, d))} ({', '.join(map(str, s))})" for d, s in sets.items())
                     + " |")
    if rows:
        lines += ["", f"Each arm against {rows[0]['reference']} over their distinct models: mean retention of the "
                      "arm's models minus the reference's, 95% bootstrap interval over items and models; "
                      "'keeps more' only where the interval excludes 0.", "",
                  "| stage | retention | category | arm | reference | difference [95% CI] | models (arm / ref) | "
                  "verdict |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            kind = "chance-corrected" if r["metric"].startswith("chance") else "raw"
            lines.append(f"| {r['condition']} | {kind} | {r['probe']} | {_fmt(r['arm'])} | {_fmt(r['reference_value'])}"
                         f" | {_ci(r)} | {r['n']} / {r['n_reference']} | {verdict(r)} |")
    return "\n".join(lines) + "\n"
