"""Attribution methods against exact patching, side by side in one run: agreement per kind of map
and cost.

For one model and probe, exact patching (the reference) and each attribution method run on the
same pairs; for every kind of map (residual stream per position, attention and MLP outputs,
heads, and all cells together) the script prints Spearman and Pearson correlation with exact
patching, and each method's cost in forward / backward passes and seconds, with the time ratio
to exact patching.

    python benchmarks/attribution.py --model default --probe arithmetic --n 16
    python benchmarks/attribution.py --model gemma3-270m --probe brackets --n 16 --steps 2,4,8
    python benchmarks/attribution.py --random-llama-8b --device cuda --dtype bfloat16 --positions 8 --steps 4

Methods: ``atp`` (attribution patching, gradient at the base run: 1 forward + 1 backward),
``relp`` (``--relevance``: the same with relevance rules in the backward pass, RelP) and
``ig-k`` (integrated gradients over k points between the base and source embeddings: k forwards
+ k backwards). Both also run the clean and corrupted forwards that exact patching runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prunescope.circuits.pairs import encode_pairs, make_pairs  # noqa: E402
from prunescope.circuits.patching import KINDS, attribution_patching, exact_patching, plan_cells, spearman  # noqa: E402
from prunescope.probe.models import load_model  # noqa: E402


def pearson(a, b) -> float:
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    den = (x.norm() * y.norm()).item()
    return float((x @ y).item() / den) if den else float("nan")


def agreement(exact: list[dict], approx: list[dict]) -> dict[str, tuple[float, float, int]]:
    """``{kind: (spearman, pearson, cells)}`` over the cells both maps hold (``resid_post`` = the
    residual layer x position map; ``all`` = every cell)."""
    ex = {r["condition"]: r["value"] for r in exact}
    ap = {r["condition"]: r["value"] for r in approx}
    kinds = {r["condition"]: r["kind"] for r in exact}
    out = {}
    for kind in [*KINDS, "all"]:
        keys = [k for k in ex if kind in ("all", kinds[k])]
        if len(keys) > 2:
            a, b = [ex[k] for k in keys], [ap[k] for k in keys]
            out[kind] = (spearman(a, b), pearson(a, b), len(keys))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--random-llama-8b", action="store_true",
                    help="speed only: the Llama-3.1-8B shape with random weights (e.g. --device cuda --dtype bfloat16)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random Llama (CPU smoke run of --random-llama-8b)")
    ap.add_argument("--probe", default="arithmetic")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--positions", default="all",
                    help="last k positions of the per-position maps, or 'all' (the full layer x position map)")
    ap.add_argument("--steps", default="2,4,8", help="integrated-gradient step counts to compare")
    ap.add_argument("--graddrop", action="store_true", help="also AtP*'s GradDrop (one backward per layer; "
                                                             "compared with |exact|)")
    ap.add_argument("--relevance", action="store_true", help="also RelP (relevance rules, one backward)")
    ap.add_argument("--exact-cache", default=None,
                    help="JSON file of the exact maps: read when it holds this model / probe / n / positions, "
                         "else written after computing them (exact patching is the slow part)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--json", default=None, help="also write the table as JSON here")
    args = ap.parse_args()

    if args.random_llama_8b or args.tiny:  # speed only: random weights make the agreement meaningless
        from prunescope.probe.models import LoadedModel
        from prunescope.probe.tiny import llama3_8b_config, random_weight_model, tiny_model

        if args.random_llama_8b:
            tok = load_model(None).tokenizer  # the default model's tokenizer; its weights are not used
            model = random_weight_model(llama3_8b_config(), device=args.device, dtype=getattr(torch, args.dtype))
        else:
            model, tok = tiny_model("llama")
            model = model.to(args.device)
        lm = LoadedModel(model, tok, "random-llama-8b" if args.random_llama_8b else "tiny-llama", "")
    else:
        lm = load_model(None if args.model == "default" else args.model, device=args.device, dtype=args.dtype)
    enc = encode_pairs(lm.tokenizer, make_pairs(args.probe, lm.tokenizer, n=args.n))
    positions = min(enc.lengths) if args.positions == "all" else int(args.positions)
    plan = plan_cells(lm.blocks, enc, kinds=KINDS, positions=positions)

    def timed(fn, **extra):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        cells = fn(lm.blocks, plan, **extra)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return cells, time.perf_counter() - t

    key = {"model": lm.name, "probe": args.probe, "n": args.n, "positions": positions, "dtype": args.dtype}
    cache = Path(args.exact_cache) if args.exact_cache else None
    saved = json.loads(cache.read_text()) if cache and cache.is_file() else None
    if saved and saved["key"] == key:
        exact, t_exact = saved["cells"], saved["seconds"]
        print(f"exact maps from {cache} (measured {t_exact:.0f} s)")
    else:
        exact, t_exact = timed(exact_patching)
        if cache:
            cache.write_text(json.dumps({"key": key, "cells": exact, "seconds": t_exact}))
    methods = {"atp": dict(steps=1), **{f"ig-{k}": dict(steps=int(k)) for k in args.steps.split(",") if k}}
    if args.graddrop:
        methods["graddrop"] = dict(steps=1, graddrop=True)
    if args.relevance:
        methods["relp"] = dict(steps=1, relevance=True)
    if args.device.startswith("cuda"):  # the first backward pays one-off setup (cuBLAS, autograd): untimed
        attribution_patching(lm.blocks, plan, steps=1)
    rows = []
    print(f"{lm.name}, probe {args.probe}, {args.n} pairs, {positions} positions, {len(exact)} cells; "
          f"exact patching {t_exact:.1f} s")
    print(f"{'method':8s} {'fwd+bwd':>8s} {'seconds':>8s} {'vs exact':>9s}  " +
          "  ".join(f"{k:>17s}" for k in [*KINDS, "all"]))
    for name, extra in methods.items():
        cells, secs = timed(attribution_patching, **extra)
        # GradDrop estimates magnitudes: compare with |exact|
        ref = [{**r, "value": abs(r["value"])} for r in exact] if extra.get("graddrop") else exact
        agree = agreement(ref, cells)
        k = lm.blocks.n_layers if extra.get("graddrop") else extra["steps"]
        fwd = 3 if extra.get("graddrop") else k + 2
        rows.append({"model": lm.name, "probe": args.probe, "method": name, "forward": fwd, "backward": k,
                     "seconds": secs, "exact_seconds": t_exact, "time_share": secs / t_exact,
                     **{f"{kind}_spearman": v[0] for kind, v in agree.items()},
                     **{f"{kind}_pearson": v[1] for kind, v in agree.items()}})
        print(f"{name:8s} {f'{fwd}+{k}':>8s} {secs:8.2f} {secs / t_exact:8.1%}  " +
              "  ".join(f"{agree[kind][0]:7.3f} / {agree[kind][1]:7.3f}" if kind in agree else f"{'-':>17s}"
                        for kind in [*KINDS, "all"]))
    print("(each cell: Spearman / Pearson with exact patching; forwards include the clean and corrupted runs)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
