"""Experiment 4 of the paper on a finished recovery run: the held-out perplexity curves of every arm
in one figure, and a table of probe accuracy and benchmark scores base -> pruned -> recovered.

    python experiments/summarize_recovery.py runs/smollm2-recovery --out docs/results

Reads ``RUN/recover/<arm>/curve.csv``, ``RUN/probes.csv`` and ``RUN/eval/eval.csv``; writes
``OUT/<run name>-curves.png`` and prints the Markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from probe.results import read_table


def curves(run: Path) -> dict[str, list[dict]]:
    """``{arm: curve rows}`` for every ``recover/<arm>/curve.csv`` of a run."""
    return {f.parent.name: read_table(f) for f in sorted((run / "recover").glob("*/curve.csv"))}


def plot_curves(run: Path, out: Path) -> Path:
    from probe.plots import save_figure, plt

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


def table(run: Path) -> str:
    probes = read_table(run / "probes.csv")
    evals = [r for r in read_table(run / "eval" / "eval.csv") if str(r.get("primary")) in ("True", "true", "1")]
    stages = list(dict.fromkeys(r["condition"] for r in probes))
    cols = [("probe", p) for p in dict.fromkeys(r["probe"] for r in probes)] + \
           [("eval", t) for t in dict.fromkeys(r["probe"] for r in evals)]
    val = {("probe", r["probe"], r["condition"]): r["value"] for r in probes} | \
          {("eval", r["probe"], r["condition"]): r["value"] for r in evals}
    last = {arm: rows[-1] for arm, rows in curves(run).items()}
    head = ["stage", *[c for _, c in cols], "held-out ppl (first -> last)", "steps", "tokens"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in stages:
        arm = s.removeprefix("recovered-")
        rows = curves(run).get(arm)
        ppl = f"{float(rows[0]['eval_ppl']):.1f} -> {float(rows[-1]['eval_ppl']):.1f}" if rows else ""
        cells = [f"{float(val[(k, c, s)]):.3f}" if (k, c, s) in val else "" for k, c in cols]
        lines.append("| " + " | ".join([s, *cells, ppl, str(last[arm]["step"]) if rows else "",
                                         str(last[arm]["tokens"]) if rows else ""]) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--out", default="docs/results")
    args = ap.parse_args()
    run = Path(args.run)
    print(table(run))
    print(f"\nwrote {plot_curves(run, Path(args.out))}")


if __name__ == "__main__":
    main()
