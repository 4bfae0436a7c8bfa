"""Exact vs attribution patching of the residual stream, layer x position, side by side.

Exact patching runs one condition per (layer, position) cell (batched along the batch dimension
and started at the patched layer); attribution patching estimates every cell from one forward and
one backward. Prints both times, the speed ratio and, on a real model, the Spearman rank
correlation of the two layer x position maps.

    python benchmarks/patching.py                                   # CPU, default model, arithmetic pairs
    python benchmarks/patching.py --probe brackets
    python benchmarks/patching.py --random-llama-8b --device cuda   # H200, random weights: time only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prunescope.circuits.pairs import EncodedPairs, encode_pairs, make_pairs  # noqa: E402
from prunescope.circuits.patching import attribution_patching, exact_patching, plan_cells, spearman  # noqa: E402
from prunescope.probe.blocks import Blocks  # noqa: E402


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def random_pairs(n: int, T: int, vocab: int, seed: int = 0) -> EncodedPairs:
    """Random prompts of T tokens; the corrupted one differs at one position in the middle."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, vocab, (n, T), generator=g)
    corrupt = clean.clone()
    corrupt[:, T // 2] = torch.randint(0, vocab, (n,), generator=g)
    tc = torch.randint(0, vocab, (n,), generator=g)
    tx = (tc + 1) % vocab
    return EncodedPairs(clean, corrupt, torch.ones(n, T, dtype=torch.long), torch.full((n,), T - 1), tc, tx, [T] * n)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--random-llama-8b", action="store_true")
    ap.add_argument("--probe", default="arithmetic")
    ap.add_argument("--n", type=int, default=16, help="pairs")
    ap.add_argument("--tokens", type=int, default=128, help="random model: tokens per prompt")
    ap.add_argument("--positions", type=int, default=None, help="positions (default: all of the shortest pair)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--max-rows", type=int, default=256, help="rows per exact-patching forward")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))

    if args.random_llama_8b:
        from prunescope.probe.tiny import llama3_8b_config, random_weight_model

        cfg = llama3_8b_config()
        model = random_weight_model(cfg, args.device, dtype)
        enc = random_pairs(args.n, args.tokens, cfg.vocab_size)
        name = "random Llama-3.1-8B shape"
    else:
        from prunescope.probe.models import load_model

        lm = load_model(args.model, device=args.device, dtype=dtype)
        model = lm.model
        enc = encode_pairs(lm.tokenizer, make_pairs(args.probe, lm.tokenizer, n=args.n, seed=0))
        name = f"{lm.name}, {args.probe} pairs"
    enc = EncodedPairs(*(x.to(args.device) if isinstance(x, torch.Tensor) else x for x in
                         (enc.clean, enc.corrupt, enc.mask, enc.last, enc.tok_clean, enc.tok_corrupt, enc.lengths)))
    blocks = Blocks(model)
    P = args.positions or min(enc.lengths)
    plan = plan_cells(blocks, enc, kinds=["resid_post"], positions=P)
    print(f"{name}: {blocks.n_layers} layers x {P} positions = {blocks.n_layers * P} cells, {enc.clean.shape[0]} pairs, "
          f"{dtype}, {args.device}")

    attribution_patching(blocks, plan)        # warm-up
    sync(args.device)
    t = time.perf_counter()
    at = attribution_patching(blocks, plan)
    sync(args.device)
    t_attr = time.perf_counter() - t
    t = time.perf_counter()
    ex = exact_patching(blocks, plan, max_rows=args.max_rows)
    sync(args.device)
    t_exact = time.perf_counter() - t
    rho = spearman([c["value"] for c in ex], [c["value"] for c in at])
    print(f"{'method':12s} {'seconds':>9s}\n{'exact':12s} {t_exact:9.2f}\n{'attribution':12s} {t_attr:9.3f}")
    print(f"attribution is {t_exact / t_attr:.0f}x faster; Spearman(exact, attribution) over the layer x position "
          f"map = {rho:.3f}" + (" (random weights: not meaningful)" if args.random_llama_8b else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"name": name, "cells": len(ex), "pairs": enc.clean.shape[0],
                                               "exact_s": t_exact, "attribution_s": t_attr, "spearman": rho}, indent=1))


if __name__ == "__main__":
    main()
