"""Tables of a repair study (experiments/smollm2-repair.yaml): every arm against the pruned model and
chosen arms against each other, on the same items, with 95% paired bootstrap intervals.

    prunescope run experiments/smollm2-repair.yaml
    python experiments/summarize_repair.py runs/smollm2-repair --out docs/results/smollm2/repair

Writes OUT/retention.csv, eval.csv, probes.csv (the run's own), differences.csv (category retention,
raw and chance-corrected, arm minus reference) and probe_changes.csv (each probe, both metrics), and
prints the Markdown tables of docs/results.md ("Repairs on the default model").
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from prunescope.analysis.probes import probe_change_rows
from prunescope.analysis.retention import retention_differences
from prunescope.core.results import read_table, write_table

#: arm against arm (besides every arm against the pruned model)
ARM_PAIRS = (("recovered-bi-linear_circuit", "recovered-bi-linear"), ("recovered-bi-linear+sgr", "recovered-bi-sgr"),
             ("recovered-bi-tune", "recovered-bi-sgr"))
PROBES = ("arithmetic_multi", "brackets", "copy")


def _fmt(r: dict | None) -> str:
    if r is None:
        return ""
    text = f"{float(r['value']):+.3f} [{float(r['ci_low']):.3f}, {float(r['ci_high']):.3f}]"
    excludes = float(r["ci_low"]) > 0 or float(r["ci_high"]) < 0
    return f"**{text}**" if excludes else text


def tables(run: Path, out: Path, n_boot: int = 1000) -> str:
    """Write the tidy tables into ``out`` and return the Markdown difference tables."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("retention.csv", "probes.csv"):
        shutil.copyfile(run / name, out / name)
    shutil.copyfile(run / "eval" / "eval.csv", out / "eval.csv")
    table = read_table(run / "retention.csv")
    stages = list(dict.fromkeys(r["condition"] for r in table))
    arms = [s for s in stages if s.startswith("recovered-")]
    pairs = [(a, "pruned-bi") for a in arms] + [p for p in ARM_PAIRS if p[0] in stages and p[1] in stages]
    diffs = [r for metric in ("retention", "chance_corrected_retention")
             for r in retention_differences(run, table, pairs, n_boot=n_boot, metric=metric)]
    changes = probe_change_rows(run, [("base", "pruned-bi")] + [(ref, st) for st, ref in pairs], n_boot=n_boot)
    write_table(diffs, out / "differences")
    write_table(changes, out / "probe_changes")
    head = ("| arm minus reference | classification | classification, chance-corrected | generative | "
            + " | ".join(f"{p} {m}" for p in ("addition", "brackets", "copy") for m in ("margin", "exact")) + " |")
    lines = [head, "|" + "---|" * 10]
    for stage, ref in pairs:
        def d(cat, metric):
            return next((r for r in diffs if r["condition"] == stage and r["reference"] == ref
                         and r["probe"] == cat and r["metric"] == f"{metric}_minus_reference"), None)

        def p(probe, metric):
            return next((r for r in changes if r["condition"] == stage and r["reference"] == ref
                         and r["probe"] == probe and r["metric"] == metric), None)
        cells = [_fmt(d("classification", "retention")), _fmt(d("classification", "chance_corrected_retention")),
                 _fmt(d("generative", "retention"))] + [_fmt(p(pr, m)) for pr in PROBES
                                                         for m in ("margin_accuracy", "exact_match")]
        name = f"`{stage.removeprefix('recovered-bi-')}` - " + ("BI 25%" if ref == "pruned-bi" else
                                                                f"`{ref.removeprefix('recovered-bi-')}`")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the study's run folder")
    ap.add_argument("--out", type=Path, required=True, help="folder for the tidy tables")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    a = ap.parse_args()
    print(tables(a.run, a.out, a.boot))


if __name__ == "__main__":
    main()
