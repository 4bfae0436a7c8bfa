"""Evaluate a pipeline config's base model alone, into a new run folder, with the pipeline's own
code and evaluation settings: ``OUT/eval/base/`` (eval.csv, per-item samples, probes.json) as
``prunescope run`` writes it.

    python experiments/evaluate_base.py experiments/qwen-retention.yaml runs/qwen-retention-base --device cuda

Its use: the paired bootstrap intervals and failure signatures of a stage compare its items with
the base model's, so a stage evaluated on another machine is best paired with a base evaluated on
that machine too (greedy bf16 generation changes a few answers between GPU models: docs/results.md,
Qwen experiment 3). Compare the new eval.csv with the run's own base scores before pairing.
"""

from __future__ import annotations

import argparse

from prunescope.pipeline.config import load_config
from prunescope.pipeline.stages import Run, _evaluate_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="the pipeline config whose evaluation settings to use")
    ap.add_argument("out", help="a new run folder (OUT/eval/base/ is written)")
    ap.add_argument("--device", default=None, help="override the config's device")
    a = ap.parse_args()
    cfg = {**load_config(a.config), "out": a.out}
    if a.device:
        cfg["device"] = a.device
    rows, acc = _evaluate_stage(Run(cfg, show_progress=False), "base", None)
    for r in rows:
        if r.get("primary"):
            print(f"{r['probe']:15s} {r['metric']:12s} {r['value']:.4f} (n={r['n']})")
    print("probes", acc)


if __name__ == "__main__":
    main()
