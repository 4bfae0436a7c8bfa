"""Experiment 3 of the paper on a retention run, finished or not: one row per stage with its dropped
layers, the category retentions and gap (95% paired bootstrap intervals, from ``prunescope report``),
the raw generative scores and the probes. A stage whose evaluation is unfinished (a run stopped
part-way) still gets a row: its classification retention over the tasks every stage finished.

    prunescope report runs/qwen-retention
    python experiments/summarize_retention.py runs/qwen-retention --out docs/results/qwen/retention

Reads ``RUN/eval/<stage>/eval.csv`` and ``probes.json``, ``RUN/prune/<strategy>/plan.json`` and the
report's ``RUN/retention.csv``; copies the report's tables and figures to OUT, writes OUT/eval.csv
(every stage's rows), OUT/probes.csv and OUT/summary.md, and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from prunescope.analysis.report import stage_eval_tables, stage_probe_rows, with_ci
from prunescope.analysis.retention import retention_table
from prunescope.core.results import read_table, write_table

GENERATIVE = ("gsm8k", "humaneval", "mbpp", "arithmetic")


def drops(run: Path) -> dict[str, str]:
    """``{stage: "dropped layers"}`` from each pruned model's plan.json."""
    out = {}
    for plan in run.glob("prune/*/plan.json"):
        d = json.loads(plan.read_text())["drop"]
        out[f"pruned-{plan.parent.name}"] = " ".join(map(str, d))
    return out


def summary(run: Path) -> tuple[str, list[dict], list[dict]]:
    """The Markdown table, every stage's eval rows and the probe rows."""
    by_stage = stage_eval_tables(run)
    rows = [r for rs in by_stage.values() for r in rs]
    base_tasks = {r["probe"] for r in by_stage["base"]}
    finished = [s for s, rs in by_stage.items() if {r["probe"] for r in rs} >= base_tasks]
    common = set.intersection(*({r["probe"] for r in rs} for rs in by_stage.values()))
    common_cls = sorted(t for t in common if t not in GENERATIVE)
    partial = retention_table([r for r in rows if r["probe"] in common_cls])
    report = read_table(run / "retention.csv") if (run / "retention.csv").is_file() else []

    def cat(table, stage, probe):
        r = next((r for r in table if r["condition"] == stage and r["probe"] == probe
                  and r["level"] in ("category", "gap")), None)
        return "" if r is None else with_ci(r)

    score = {(r["condition"], r["probe"]): float(r["value"]) for r in rows if str(r.get("primary")) == "True"}
    probes = stage_probe_rows(run)
    acc = {(r["condition"], r["probe"]): r["value"] for r in probes}
    names = sorted({r["probe"] for r in probes})
    dropped = drops(run)
    # the classification retention over the tasks every stage finished: only while some are unfinished
    some_unfinished = len(finished) < len(by_stage)
    head = (["stage", "dropped layers", f"classification, {len(base_tasks - set(GENERATIVE))} tasks",
             *([f"classification, {len(common_cls)} tasks ({' '.join(common_cls)})"] if some_unfinished else []),
             "generative, 4 tasks", "gap", *GENERATIVE, *(f"{p} probe" for p in names)])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for stage in by_stage:
        full = stage in finished
        cells = [stage.removeprefix("pruned-"), dropped.get(stage, ""),
                 cat(report, stage, "classification") if full else "(unfinished)",
                 *([cat(partial, stage, "classification")] if some_unfinished else []),
                 cat(report, stage, "generative") if full else "",
                 cat(report, stage, "gap") if full else "",
                 *(f"{score[(stage, t)]:.3f}" if (stage, t) in score else "" for t in GENERATIVE),
                 *(f"{acc[(stage, p)]:.3f}" if (stage, p) in acc else "" for p in names)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n", rows, probes


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="the retention run folder (after `prunescope report RUN`)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the tables, figures and summary.md")
    a = ap.parse_args(argv)
    if not (a.run / "eval" / "base" / "eval.csv").is_file():
        print(f"{a.run} has no eval/base/eval.csv: point at a retention run whose evaluation has started",
              file=sys.stderr)
        raise SystemExit(2)
    md, rows, probes = summary(a.run)
    a.out.mkdir(parents=True, exist_ok=True)
    write_table(rows, a.out / "eval", columns=("model", "probe", "condition", "layers", "metric", "value", "n", "seed",
                                              "stderr", "category", "primary"))
    write_table(probes, a.out / "probes")
    for name in ("retention.csv", "signatures.csv", "retention.png", "probes.png"):
        if (a.run / name).is_file():
            shutil.copyfile(a.run / name, a.out / name)
    (a.out / "summary.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
