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

from probe.models import load_model  # noqa: E402
from prune.run import make_evaluator, reference_evaluator  # noqa: E402
from prune.strategies import iterative  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--probe", default="brackets")
    ap.add_argument("--n", type=int, default=16, help="items per evaluation")
    ap.add_argument("--steps", type=int, default=2, help="layers to drop greedily")
    ap.add_argument("--metric", default="logit_diff")
    args = ap.parse_args(argv)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    lm = load_model(args.model)
    L = lm.blocks.n_layers
    ev = make_evaluator(lm.blocks, lm.tokenizer, args.probe, n=args.n, metric=args.metric)
    ref = reference_evaluator(lm.model, lm.tokenizer, ev.plan, args.metric)
    print(f"{lm.name}: {L} layers, greedy {args.steps} steps ({sum(L - s for s in range(args.steps))} candidate "
          f"evaluations), {args.n} {args.probe} items, metric {args.metric}")
    t = time.perf_counter()
    fast = iterative(ev, L, args.steps, metric=args.metric)
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    slow = iterative(ref, L, args.steps, metric=args.metric)
    t_slow = time.perf_counter() - t
    print(f"{'approach':28s} {'seconds':>8s}  plan\n{'in-memory skip masks':28s} {t_fast:8.1f}  {fast.drop}\n"
          f"{'save + reload per candidate':28s} {t_slow:8.1f}  {slow.drop}")
    print(f"in-memory is {t_slow / t_fast:.1f}x faster; same plan: {fast.drop == slow.drop}")


if __name__ == "__main__":
    main()
