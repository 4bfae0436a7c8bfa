"""Iterative greedy pruning: in-memory skip masks vs save-and-reload per candidate, side by side.

The reference approach writes a pruned checkpoint for every candidate, reloads it and scores it.
prunescope evaluates all candidates of a step as one prefix-reused sweep over skip masks on the
block handle. Both run the same greedy search on the same items; the plans must agree.

    python benchmarks/iterative.py                     # default model, 2 steps over all 30 layers
    python benchmarks/iterative.py --steps 3 --n 16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prunescope.probe.models import load_model  # noqa: E402
from prunescope.prune.commands import checkpoint_scorer, probe_scorer  # noqa: E402
from prunescope.prune.strategies import iterative  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--probe", default="brackets")
    ap.add_argument("--n", type=int, default=16, help="items per evaluation")
    ap.add_argument("--steps", type=int, default=2, help="layers to drop greedily")
    ap.add_argument("--metric", default="logit_diff")
    ap.add_argument("--random-llama-8b", action="store_true", help="random-weight Llama-3.1-8B shape (GPU), "
                    "random 100-199-token prompts")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--candidates", default=None, help="comma-separated candidate layers (default: all)")
    args = ap.parse_args(argv)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    if args.random_llama_8b:
        import torch

        from benchmarks.sweep import random_plan
        from prunescope.probe.blocks import Blocks
        from prunescope.probe.tiny import llama3_8b_config, random_weight_model

        cfg = llama3_8b_config()
        model = random_weight_model(cfg, args.device, torch.bfloat16)
        blocks, tok, name = Blocks(model), None, "random Llama-3.1-8B shape"
        plan = random_plan(args.n, cfg.vocab_size, 100, 200, 0, seed=0)
    else:
        lm = load_model(args.model, device=args.device, dtype="float32")
        model, blocks, tok, name, plan = lm.model, lm.blocks, lm.tokenizer, lm.name, None
    L = blocks.n_layers
    cands = [int(x) for x in args.candidates.split(",")] if args.candidates else None
    ev = probe_scorer(blocks, tok, args.probe, n=args.n, metric=args.metric, plan=plan)
    ref = checkpoint_scorer(model, tok, ev.plan, args.metric)
    n_c = len(cands) if cands else L
    print(f"{name}: {L} layers, greedy {args.steps} steps over {n_c} candidates "
          f"({sum(n_c - s for s in range(args.steps))} candidate evaluations), {len(ev.plan.rows)} items, "
          f"metric {args.metric}", flush=True)
    t = time.perf_counter()
    fast = iterative(ev, L, args.steps, candidates=cands, metric=args.metric)
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    slow = iterative(ref, L, args.steps, candidates=cands, metric=args.metric)
    t_slow = time.perf_counter() - t
    print(f"{'approach':28s} {'seconds':>8s}  plan\n{'in-memory skip masks':28s} {t_fast:8.1f}  {fast.drop}\n"
          f"{'save + reload per candidate':28s} {t_slow:8.1f}  {slow.drop}")
    print(f"in-memory is {t_slow / t_fast:.1f}x faster; same plan: {fast.drop == slow.drop}")


if __name__ == "__main__":
    main()
