"""The paper's selection, one greedy step: one engine run per candidate vs every candidate in one run.

Each candidate of a step (a layer to drop next) answers the same held-out prompts. Scored alone,
each is one engine run of ``n`` prompts per task, whose slots sit idle while its longest answers
finish; together (a ``prunescope.generation.SkipSets`` as the engine's ``fan_out``, as
``iterative-generated`` does), one run holds a row per prompt and candidate, each row skipping its
candidate's layers. Both are timed side by side
on the same docs and must give the same scores (exactly in fp32; bf16 rounds another batch
differently, so a few answers may change).

    python benchmarks/selection.py --tasks arithmetic --n 4 --candidates 3,20,28    # CPU smoke run
    python benchmarks/selection.py --model qwen2.5-coder-1.5b --device cuda --dtype bfloat16 --n 32
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from prunescope.analysis.evaluate import EvalOptions, run_benchmarks  # noqa: E402
from prunescope.prune.selection import generated_answer_scorer, mean_primary  # noqa: E402
from prunescope.probe.models import load_model  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="alias, folder or .gguf (default: the embedded model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--tasks", default="gsm8k,humaneval", help="generated tasks scored on their last --n docs")
    ap.add_argument("--n", type=int, default=32, help="held-out docs per task")
    ap.add_argument("--candidates", default=None, help="comma-separated layers, one candidate each (default: all)")
    ap.add_argument("--gen-batch-size", type=int, default=256, help="engine slots")
    args = ap.parse_args(argv)

    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    tasks = args.tasks.split(",")
    layers = range(lm.blocks.n_layers) if args.candidates is None else [int(x) for x in args.candidates.split(",")]
    sets = [[i] for i in layers]
    ev = generated_answer_scorer(lm, tasks, args.n, slots=args.gen_batch_size)
    # warm-up (tokenizer, lm-eval task building, a first graph capture) on one candidate, timed by neither
    options = EvalOptions(tasks=tasks, slots=args.gen_batch_size)
    run_benchmarks(lm, options.replace(skip=sets[0]), docs=ev.docs, progress=False)

    _sync(args.device)
    t0 = time.perf_counter()
    alone = []
    for s in sets:
        alone.append(mean_primary(run_benchmarks(lm, options.replace(skip=s), docs=ev.docs, progress=False)))
    _sync(args.device)
    t_alone = time.perf_counter() - t0

    t0 = time.perf_counter()
    together = ev(sets)
    _sync(args.device)
    t_together = time.perf_counter() - t0

    same = sum(a == b for a, b in zip(alone, together))
    print(f"{lm.name}, {args.device} {args.dtype}: {len(sets)} candidates x {args.n} docs of {', '.join(tasks)}")
    print(f"  one run per candidate  {t_alone:8.1f} s")
    print(f"  all in one run         {t_together:8.1f} s   ({t_alone / t_together:.2f}x)")
    print(f"  same score for {same} of {len(sets)} candidates; largest difference "
          f"{max(abs(a - b) for a, b in zip(alone, together)):.3f}")


if __name__ == "__main__":
    main()
