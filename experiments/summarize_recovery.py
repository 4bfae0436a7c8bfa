"""Experiment 4 of the paper on a finished recovery run: the held-out perplexity curves of every arm
in one figure, and a table of probe scores and benchmark scores base -> pruned -> recovered.

    python experiments/summarize_recovery.py runs/smollm2-recovery --out docs/results
    python experiments/summarize_recovery.py runs/qwen-recovery --out docs/results/qwen/recover --tables

Reads ``RUN/recover/<arm>/curve.csv``, ``RUN/probes.csv``, ``RUN/eval/<stage>/probes.json`` and
``RUN/eval/eval.csv``; writes ``OUT/<run name>-curves.png`` and prints the Markdown tables: per
stage both probe scores (``margin``: margin accuracy, the answer beats the distractors; ``exact``:
greedy exact match, the answer is generated, what a paper's generation-based probe numbers
compare with) and the benchmarks, then the paired change of both probe scores base -> pruned and
pruned -> recovered with 95% bootstrap intervals over the items (where the stages kept per-item
scores). With ``--tables`` also the tidy tables
a packed run folder holds (every arm's curve and training summary, the evaluation, probes, the
report's retention with intervals and failure signatures), the paired differences between stages
(``differences.csv``), the paired probe changes (``probe_changes.csv``) and ``summary.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from prunescope.core.results import read_table, write_table
from prunescope.probe.scoring import canonical_metric


def md_table(head: list[str], rows: list[list]) -> str:
    """A Markdown table (cells as given).

    >>> print(md_table(["a", "b"], [[1, "x"]]))
    | a | b |
    |---|---|
    | 1 | x |
    """
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *("| " + " | ".join(map(str, r)) + " |" for r in rows)])


def curves(run: Path) -> dict[str, list[dict]]:
    """``{arm: curve rows}`` for every ``recover/<arm>/curve.csv`` of a run."""
    return {f.parent.name: read_table(f) for f in sorted((run / "recover").glob("*/curve.csv"))}


def plot_curves(run: Path, out: Path) -> Path:
    from prunescope.core.plots import save_figure, plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8), layout="constrained")
    for arm, rows in curves(run).items():
        pts = [(float(r["tokens"]), float(r["eval_ppl"])) for r in rows if r.get("eval_ppl") not in ("", None)]
        ax.plot([t / 1000 for t, _ in pts], [p for _, p in pts], "o-", ms=3, label=arm)
    ax.set_xlabel("trained response tokens (thousands)")
    ax.set_ylabel("held-out perplexity (own targets)")
    ax.set_yscale("log")
    ax.set_title(f"{run.name}: recovery curves")
    ax.legend(fontsize=8)
    return save_figure(fig, out / f"{run.name}-curves.png")


PROBE_LABELS = {"margin_accuracy": "margin", "exact_match": "exact"}


def table(run: Path) -> str:
    """Per stage: both probe scores of each probe (``margin``: the answer beats the distractors;
    ``exact``: greedy exact match, the answer is generated), each task's primary score and the arm's
    held-out perplexity. An older ``probes.csv`` says ``accuracy``: it is the margin column."""
    probes = [{**r, "metric": canonical_metric(r["metric"])} for r in read_table(run / "probes.csv")]
    evals = [r for r in read_table(run / "eval" / "eval.csv") if str(r.get("primary")) in ("True", "true", "1")]
    stages = list(dict.fromkeys(r["condition"] for r in probes))
    cols = [("probe", p, m) for p in dict.fromkeys(r["probe"] for r in probes) for m in PROBE_LABELS
            if any(r["probe"] == p and r["metric"] == m for r in probes)] + \
           [("eval", t, "") for t in dict.fromkeys(r["probe"] for r in evals)]
    val = {("probe", r["probe"], r["metric"], r["condition"]): r["value"] for r in probes} | \
          {("eval", r["probe"], "", r["condition"]): r["value"] for r in evals}
    arms = curves(run)
    head = ["stage", *[f"{c} {PROBE_LABELS[m]}" if m else c for _, c, m in cols], "held-out ppl (first -> last)",
            "steps", "tokens"]
    lines = []
    for s in stages:
        rows = arms.get(s.removeprefix("recovered-"))
        ppl = f"{float(rows[0]['eval_ppl']):.1f} -> {float(rows[-1]['eval_ppl']):.1f}" if rows else ""
        cells = [f"{float(val[(k, c, m, s)]):.3f}" if (k, c, m, s) in val else "" for k, c, m in cols]
        lines.append([s, *cells, ppl, rows[-1]["step"] if rows else "", rows[-1]["tokens"] if rows else ""])
    return md_table(head, lines)


def probe_changes(run: Path) -> list[dict]:
    """The paired change of both probe scores base -> pruned and pruned -> recovered, with 95%
    bootstrap intervals over the items (:func:`prunescope.analysis.probes.probe_change_rows`);
    empty for a run whose ``eval/<stage>/probes.json`` files keep no per-item scores."""
    from prunescope.analysis.probes import probe_change_rows

    return probe_change_rows(run)


def probe_change_table(changes: list[dict]) -> str:
    """A Markdown table of :func:`probe_changes` (empty string when there are none).

    >>> print(probe_change_table([{"condition": "pruned-bi", "reference": "base", "probe": "copy",
    ...     "metric": "exact_match", "before": 0.9, "after": 0.4, "value": -0.5, "ci_low": -0.7, "ci_high": -0.3,
    ...     "n": 20}]))
    | stage | minus | probe | metric | before | after | change [95% paired bootstrap] | items |
    |---|---|---|---|---|---|---|---|
    | pruned-bi | base | copy | exact_match | 0.900 | 0.400 | -0.500 [-0.700, -0.300] | 20 |
    """
    if not changes:
        return ""
    return md_table(["stage", "minus", "probe", "metric", "before", "after", "change [95% paired bootstrap]", "items"],
                    [[c["condition"], c["reference"], c["probe"], c["metric"], f"{c['before']:.3f}",
                      f"{c['after']:.3f}", f"{c['value']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]", c["n"]]
                     for c in changes])


def training_rows(run: Path) -> list[dict]:
    """One row per arm from ``recover/<arm>/prunescope_recovery.json``: steps, tokens, speed and the
    steps skipped for a non-finite loss or gradient (with the adapters whose gradient was not finite)."""
    rows = []
    for f in sorted((run / "recover").glob("*/prunescope_recovery.json")):
        r = json.loads(f.read_text())["recovery"]
        bad = sorted({g.removeprefix("base_model.model.model.").removesuffix(".default.weight")  # peft's wrapping
                      for step in r.get("non_finite") or [] for g in step.get("first_bad_grads", [])})
        rows.append({"arm": f.parent.name, "mode": r["mode"], "steps": r["steps"],
                     "trained_tokens": r["trained_tokens"], "skipped_steps": r.get("skipped_steps", 0),
                     "skipped_at": " ".join(str(x["step"]) for x in r.get("non_finite") or []),
                     "first_bad_grads": " ".join(bad), "train_seconds": r["train_seconds"],
                     "tokens_per_s": None if r.get("tokens_per_s") is None else round(r["tokens_per_s"]), "final_eval_ppl": None if r["final_eval_ppl"] is None else round(r["final_eval_ppl"], 3)})
    return rows


def pairs(stages: list[str]) -> list[tuple[str, str]]:
    """``(stage, reference)`` pairs to compare on the same items: every recovered arm against its
    pruned model (did training help?), and the SGR arm against every other arm of its model."""
    out = []
    for s in stages:
        if s.startswith("recovered-"):
            strategy = s.removeprefix("recovered-").rsplit("-", 1)[0]
            if f"pruned-{strategy}" in stages:
                out.append((s, f"pruned-{strategy}"))
    for s in stages:
        if s.startswith("recovered-") and s.endswith("-sgr"):
            prefix = s.removesuffix("sgr")
            out += [(s, o) for o in stages if o.startswith(prefix) and o != s]
    return out


def differences(run: Path, n_boot: int = 1000) -> list[dict]:
    """Retention of a stage minus a reference's per category, paired bootstrap over the same items
    (:func:`prunescope.analysis.retention.retention_differences`), for every pair of :func:`pairs`."""
    from prunescope.analysis.retention import retention_differences

    table = read_table(run / "retention.csv")
    return retention_differences(run, table, pairs(list(dict.fromkeys(r["condition"] for r in table))), n_boot=n_boot)


def runaway_docstrings(run: Path, tasks: tuple[str, ...] = ("humaneval", "mbpp")) -> list[dict]:
    """Per stage and code task: the replies that fail on their syntax, and how many of them leave a
    triple-quoted string open (an odd count of \"\"\" or \'\'\'): the model rewrote the prompt's
    docstring and looped in it up to the token limit, rather than writing broken code."""
    rows = []
    for f in sorted(run.glob("eval/*/samples/*.jsonl")):
        if f.stem not in tasks:
            continue
        samples = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        syntax = [d for d in samples if d.get("failure") == "syntax"]
        open_string = [d for d in syntax if (d.get("reply", "").count('"""') + d.get("reply", "").count("'''")) % 2]
        rows.append({"condition": f.parent.parent.name, "probe": f.stem, "n": len(samples),
                     "syntax_failures": len(syntax), "open_docstring": len(open_string)})
    return rows


def summary(run: Path, diffs: list[dict], training: list[dict], changes: list[dict] | None = None) -> str:
    """summary.md: the stage table with the report's retention and intervals, the paired differences,
    the paired probe changes and the training rows."""
    from prunescope.analysis.report import with_ci

    report = read_table(run / "retention.csv")
    ret = {(r["condition"], r["probe"], r.get("metric") or "retention"): with_ci(r) for r in report
           if r.get("level") in ("category", "gap")}
    stages = list(dict.fromkeys(r["condition"] for r in report))
    cats = ["classification", "generative", "gap"]
    head = ["stage", *cats, *(f"{c}, chance-corrected" for c in cats)]
    rows = [[s, *(ret.get((s, c, "retention"), "") for c in cats),
             *(ret.get((s, c, "chance_corrected_retention"), "") for c in cats)] for s in stages]
    out = [md_table(head, rows), table(run),
           md_table(["stage", "minus", "category", "difference [95% paired bootstrap]"],
                    [[d["condition"], d["reference"], d["probe"], with_ci(d)] for d in diffs])]
    if changes:
        out.append(probe_change_table(changes))
    for rows in (training, runaway_docstrings(run)):
        out.append(md_table(list(rows[0]) if rows else [], [list(r.values()) for r in rows]))
    return "\n\n".join(out) + "\n"


def write_tables(run: Path, out: Path) -> str:
    """The tidy tables and summary.md of ``--tables`` (see the module docstring); returns the summary."""
    curve_rows = [{"arm": arm, **r} for arm, rows in curves(run).items() for r in rows]
    write_table(curve_rows, out / "curves")
    training = training_rows(run)
    write_table(training, out / "training")
    diffs = differences(run)
    write_table(diffs, out / "differences")
    changes = probe_changes(run)
    if changes:
        write_table(changes, out / "probe_changes")
    for name in ("eval/eval.csv", "probes.csv", "retention.csv", "signatures.csv", "retention.png", "probes.png"):
        if (run / name).is_file():
            shutil.copyfile(run / name, out / Path(name).name)
    md = summary(run, diffs, training, changes)
    (out / "summary.md").write_text(md)
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--tables", action="store_true",
                    help="also write the run's tidy tables, paired differences and summary.md to OUT")
    args = ap.parse_args()
    run, out = Path(args.run), Path(args.out)
    if not (run / "probes.csv").is_file() or not (run / "eval" / "eval.csv").is_file():
        print(f"{run} has no probes.csv or eval/eval.csv: point at a recovery run whose report stage has run "
              "(prunescope run CONFIG, or prunescope report RUN)", file=sys.stderr)
        raise SystemExit(2)
    out.mkdir(parents=True, exist_ok=True)
    if args.tables:
        print(write_tables(run, out))
    else:
        print(table(run))
        changes = probe_change_table(probe_changes(run))
        print(f"\nPaired probe changes (both metrics):\n\n{changes}" if changes else
              "\n(no per-item probe scores in eval/<stage>/probes.json: no paired probe changes)")
    print(f"\nwrote {plot_curves(run, out)}")


if __name__ == "__main__":
    main()
