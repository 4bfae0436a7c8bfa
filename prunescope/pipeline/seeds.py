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
from pathlib import Path

from prunescope.core.errors import PrunescopeError
from prunescope.core.results import atomic_write_text, read_table, write_table

CATEGORIES = ("classification", "generative", "gap")


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
                    _dropped(seed_dir, r["condition"]), "metric": "retention", "value": float(r["value"]),
                    "n": r["n"], "seed": seed, "level": "seed", "ci_low": r.get("ci_low", ""),
                    "ci_high": r.get("ci_high", ""), "reference": ""})
    references = _references(seed_dir)
    pairs = [(stage, references[stage]) for stage in stages if references.get(stage) in stages]
    for d in retention_differences(seed_dir, table, pairs, base=base, n_boot=n_boot, seed=seed):
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


def markdown(rows: list[dict], seeds: list[int]) -> str:
    """The comparison as Markdown: retention per stage and category (mean ± sd, then each seed with its
    95% item-bootstrap interval), the paired differences to plain BI, and the dropped layers."""
    per = [r for r in rows if r["level"] == "seed"]
    mean = {(r["probe"], r["condition"], r["metric"]): r for r in rows if r["level"] == "mean"}
    stages = list(dict.fromkeys(r["condition"] for r in per))
    lines = [f"Seeds {', '.join(map(str, seeds))}. Cells: mean ± sd over seeds; then each seed's value "
             "[95% bootstrap interval over items].", ""]
    head = ["stage", *CATEGORIES]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in stages:
        cells = []
        for cat in CATEGORIES:
            m = mean.get((cat, s, "retention"))
            each = "; ".join(_ci(r) for r in per if r["condition"] == s and r["probe"] == cat)
            cells.append(f"**{_fmt(m['value'])} ± {_fmt(m['sd'])}**<br>{each}" if m else "")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    diffs = [r for r in rows if r["level"] == "difference"]
    if diffs:
        lines += ["", "Retention minus the plain-BI stage of the same ratio, paired over the same items "
                      "(an interval above 0: the stage keeps more than BI).", "",
                  "| stage | vs | category | mean ± sd | per seed [95% CI] |", "|---|---|---|---|---|"]
        for s in dict.fromkeys(r["condition"] for r in diffs):
            for cat in ("classification", "generative"):
                rs = [r for r in diffs if r["condition"] == s and r["probe"] == cat]
                if not rs:
                    continue
                m = mean.get((cat, s, "retention_minus_reference"))
                lines.append(f"| {s} | {rs[0]['reference']} | {cat} | {_fmt(m['value'])} ± {_fmt(m['sd'])} | "
                             + "; ".join(_ci(r) for r in rs) + " |")
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


def plot_seeds(rows: list[dict], path: str | Path) -> Path:
    """One panel per category: each stage's retention per seed (dot + 95% item-bootstrap interval)
    and the mean over seeds (bar)."""
    from prunescope.core.plots import save_figure, plt

    per = [r for r in rows if r["level"] == "seed"]
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
    plot_seeds(rows, root / "seeds.png")
    md = root / "seeds.md"
    note = (f"\nLeft out: seed {', '.join(map(str, left_out))} (evaluation not finished; rerun the config to "
            "finish it).\n") if left_out else ""
    atomic_write_text(md, markdown(rows, seeds) + score_markdown(root, seeds) + note)
    return md


def score_markdown(root: str | Path, seeds: list[int]) -> str:
    """Raw scores behind the retention: each task's primary metric and each probe's accuracy per
    stage, mean ± sd over the seeds (from ``seed-N/eval/eval.csv`` and ``seed-N/probes.csv``)."""
    from prunescope.analysis.retention import primary_rows

    root = Path(root)
    vals: dict[tuple[str, str], list[float]] = {}
    for seed in seeds:
        folder = root / f"seed-{seed}"
        if (folder / "eval" / "eval.csv").is_file():
            for (_, task, stage), r in primary_rows(read_table(folder / "eval" / "eval.csv")).items():
                vals.setdefault((stage, f"{task} ({r['metric']})"), []).append(r["value"])
        if (folder / "probes.csv").is_file():
            for r in read_table(folder / "probes.csv"):
                if r["metric"] == "accuracy":
                    vals.setdefault((r["condition"], f"{r['probe']} probe"), []).append(float(r["value"]))
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
