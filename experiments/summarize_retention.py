"""Experiment 3 of the paper on a retention run, finished or not: one row per stage with its dropped
layers, the category retentions and gap side by side raw (score / base) and chance-corrected
((score - chance) / (base - chance)), with 95% paired bootstrap intervals (from ``prunescope
report``), the raw generative scores and the probes. A stage whose evaluation is unfinished (a run
stopped part-way) still gets a row: its classification retention over the tasks every stage finished.

    prunescope report runs/qwen-retention
    python experiments/summarize_retention.py runs/qwen-retention --out docs/results/qwen/retention

Reads ``RUN/eval/<stage>/eval.csv`` and ``probes.json``, ``RUN/prune/<name>/plan.json`` (and a
recovered arm's record in ``RUN/recover/``) and the report's ``RUN/retention.csv``; copies the
report's tables and figures to OUT, writes OUT/eval.csv (every stage's rows), OUT/probes.csv and
OUT/summary.md, and prints the summary.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from prunescope.analysis.report import stage_eval_tables, stage_plan, stage_probe_rows, with_ci
from prunescope.analysis.retention import CORRECTED, RAW, probe_metric, retention_table
from prunescope.core.results import read_table, write_table

GENERATIVE = ("gsm8k", "humaneval", "mbpp", "arithmetic")
PROBE_COLUMNS = {"margin_accuracy": "probe", "exact_match": "probe, exact match"}


def drops(run: Path, stages: list[str] | None = None) -> dict[str, str]:
    """``{stage: "dropped layers"}`` of each pruned model (its plan.json) and, among ``stages``, each
    recovered arm (its pruned model's layers)."""
    names = [f"pruned-{p.parent.name}" for p in run.glob("prune/*/plan.json")] + list(stages or [])
    out = {}
    for stage in dict.fromkeys(names):
        plan = stage_plan(run, stage)
        if plan.get("drop"):
            out[stage] = " ".join(map(str, plan["drop"]))
    return out


def _cell(table: list[dict], stage: str, probe: str, metric: str) -> str:
    """A category or gap value with its interval; "undefined" where every task was left out."""
    r = next((r for r in table if r["condition"] == stage and r["probe"] == probe
              and r.get("metric", RAW) == metric and r["level"] in ("category", "gap")), None)
    if r is None:
        return ""
    return "undefined" if str(r["value"]) == "nan" or r["value"] != r["value"] else with_ci(r)


def _pair(table: list[dict], stage: str, probe: str, show: bool = True) -> list[str]:
    """The raw and the chance-corrected cell, side by side."""
    return [_cell(table, stage, probe, m) if show else "" for m in (RAW, CORRECTED)]


def _tasks(n: int) -> str:
    return f"{n} task" + ("" if n == 1 else "s")


def _left_out(table: list[dict]) -> str:
    """The tasks left out of a category mean (their ratio undefined), once each, with the ratio."""
    seen: dict[str, set[str]] = {}
    for r in table:
        if r.get("level") == "category" and r.get("tasks_left_out"):
            ratio = "raw" if r.get("metric", RAW) == RAW else "chance-corrected"
            for why in str(r["tasks_left_out"]).split("; "):
                seen.setdefault(f"{r['probe']}: {why}", set()).add(ratio)
    if not seen:
        return ""
    return "Left out of the means: " + "; ".join(f"{k} ({' and '.join(sorted(v))})" for k, v in seen.items()) + ".\n"


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
    score = {(r["condition"], r["probe"]): float(r["value"]) for r in rows if str(r.get("primary")) == "True"}
    probes = stage_probe_rows(run)
    acc = {(r["condition"], r["probe"], probe_metric(r["metric"])): r["value"] for r in probes}
    names = sorted({r["probe"] for r in probes})
    kinds = [m for m in PROBE_COLUMNS if any(k[2] == m for k in acc)]
    dropped = drops(run, list(by_stage))
    # the classification retention over the tasks every stage finished: only while some are unfinished
    some_unfinished = len(finished) < len(by_stage)
    n_cls, n_gen = len(base_tasks - set(GENERATIVE)), len(base_tasks & set(GENERATIVE))
    corrected = "chance-corrected"
    head = ["stage", "dropped layers", f"classification, {_tasks(n_cls)}", corrected,
            *([f"classification, {_tasks(len(common_cls))} ({' '.join(common_cls)})", corrected]
              if some_unfinished else []),
            f"generative, {_tasks(n_gen)}", corrected, "gap", f"gap, {corrected}", *GENERATIVE,
            *(f"{p} {PROBE_COLUMNS[m]}" for p in names for m in kinds)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for stage in by_stage:
        full = stage in finished
        cells = [stage.removeprefix("pruned-"), dropped.get(stage, ""),
                 *(_pair(report, stage, "classification") if full else ["(unfinished)", ""]),
                 *(_pair(partial, stage, "classification") if some_unfinished else []),
                 *_pair(report, stage, "generative", full), *_pair(report, stage, "gap", full),
                 *(f"{score[(stage, t)]:.3f}" if (stage, t) in score else "" for t in GENERATIVE),
                 *(f"{acc[(stage, p, m)]:.3f}" if (stage, p, m) in acc else "" for p in names for m in kinds)]
        lines.append("| " + " | ".join(cells) + " |")
    note = ("\nRetention = score / base score; chance-corrected = (score - chance) / (base score - chance), 0 at "
            "chance. Brackets: 95% paired bootstrap intervals over items (from `prunescope report`).\n")
    note += _left_out(report + (partial if some_unfinished else []))
    if report and not any(r.get("metric") == CORRECTED for r in report):
        note += "retention.csv predates the chance-corrected rows: rerun `prunescope report RUN` to fill them.\n"
    return "\n".join(lines) + "\n" + note, rows, probes


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
