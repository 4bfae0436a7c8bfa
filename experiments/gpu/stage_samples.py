"""Evaluate a pipeline config's base stage again, into another run folder, with the pipeline's own
code and settings: its per-item samples come back, which a packed run folder leaves out for the
stages finished in an earlier session (they are needed for the paired bootstrap intervals of the
stages evaluated later, against the base model's items, and for failure signatures).

    python experiments/gpu/stage_samples.py experiments/qwen-retention.yaml /root/runs/qwen-retention-base

Writes OUT/eval/base/ (eval.csv, samples/, probes.json) as `prunescope run` would. Compare its
eval.csv with the earlier one before pairing: on another card greedy bf16 generation changes a few
answers (docs/results.md, Qwen experiment 3: GSM8K 0.514 on an H100 vs 0.520 on an H200).
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
