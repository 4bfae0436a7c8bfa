"""Benchmark layer-skip sweep schedules side by side, in one run, on the same prompts.

Schedules (all compute the same conditions: none + each single layer skipped):

  naive    batch 1, one full forward per prompt and condition, logits at every position
           (what the reference code does, minus writing a checkpoint per condition)
  batched  prompts sorted by length and right-padded into batches, one forward per condition,
           logits only at the scored positions
  prefix   batched + prefix reuse: one forward caches each layer's input, then "skip l" starts at
           layer l from that cache (about 1 + L/2 forwards instead of L + 1)
  shared   prefix + the few-shot prefix common to all prompts run once per condition
           (only when the prompts share one)

It prints times, ratios, agreement of the predictions (argmax at the scored positions) between
schedules, and a compute floor: the matmul FLOPs each schedule must do on real (unpadded)
tokens, divided by the matmul peak measured in the same run.

    python benchmarks/sweep.py                                   # CPU, default model, 3-shot addition
    python benchmarks/sweep.py --random-llama-8b --device cuda   # H200: 200 random prompts, 100-199 tokens
    python benchmarks/sweep.py --random-llama-8b --device cuda --shared 64   # first 64 tokens shared
    python benchmarks/sweep.py --random-llama-8b --device cuda --devices 2   # prefix reuse on 1 GPU vs 2 (data parallel)
    python benchmarks/sweep.py --random-llama-70b --device cuda --modes prefix   # 70B shape sharded over all GPUs

``--devices N`` times the prefix-reuse sweep (``sweep_blocks``, the code ``prunescope sweep`` runs)
in 1 process on 1 GPU and in N processes on N GPUs (NCCL; each process builds the same random
weights, see ``prunescope.probe.tiny.fill_random_``, or loads ``--model``), after a warm-up, and prints
seconds, speed-up, efficiency and whether every row's numbers are identical.
``--random-llama-70b`` builds the Llama-3.1-70B shape (141 GB in bf16) directly sharded over the
visible GPUs with accelerate (``prunescope.probe.tiny.random_sharded_model``).
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ceilings import matmul_peak, sync  # noqa: E402,F401  (also imported from here by other benchmarks)

from prunescope.probe.blocks import Blocks  # noqa: E402
from prunescope.probe.scoring import Row, ScoringPlan  # noqa: E402
from prunescope.probe.sweep import (  # noqa: E402
    SharedPrefix, batch_logits_plain, batch_logits_prefix, batch_logits_shared, run_with_oom_retry,
    default_batch_size, make_conditions, shared_prefix_length,
)


def layer_flops_per_token(cfg) -> float:
    """2 x (weights of one decoder layer's matmuls): q, k, v, o and the gated MLP."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    hd = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    return 2 * (d * q + 2 * d * kv + q * d + 3 * d * f)


def schedule_flops(plan: ScoringPlan, cfg, n_layers: int, mode: str, shared: int = 0) -> float:
    """Matmul FLOPs on real tokens: linear layers, causal attention (QK and AV), and the unembedding."""
    per_tok = layer_flops_per_token(cfg)
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attn_width = cfg.num_attention_heads * hd
    # layer passes per row: none runs all L layers; "skip l" runs L - l - 1 (prefix) or L - 1 (full)
    if mode == "naive" or mode == "batched":
        passes = n_layers + n_layers * (n_layers - 1)
    else:
        passes = n_layers + sum(n_layers - l - 1 for l in range(n_layers))
    total = 0.0
    for r in plan.rows:
        T = len(r.ids)
        k = len(r.targets) if mode != "naive" else T
        T_run = T - shared if mode == "shared" else T
        attn = 2 * 2 * attn_width * (T * T - (T - T_run) ** 2) / 2     # causal: QK^T and AV
        total += passes * (per_tok * T_run + attn)
        total += (n_layers + 1) * 2 * cfg.hidden_size * cfg.vocab_size * k
    if mode == "shared":  # the prefix itself, once per condition
        total += passes * (per_tok * shared + 2 * attn_width * shared * shared)
    return total


def random_plan(n: int, vocab: int, lo: int, hi: int, shared: int, seed: int) -> ScoringPlan:
    """Random-token prompts of lo..hi-1 tokens, scored at the last position against one wrong token."""
    rng = random.Random(seed)
    plan = ScoringPlan.__new__(ScoringPlan)
    plan.items, plan.scoring, plan.pad_id = [None] * n, "first_diff", 0
    common = [rng.randrange(vocab) for _ in range(shared)]
    plan.rows = []
    for i in range(n):
        T = rng.randrange(lo, hi)
        ids = common + [rng.randrange(vocab) for _ in range(T - shared)]
        ans, wrong = rng.randrange(vocab), rng.randrange(vocab)
        plan.rows.append(Row(i, 0, ids, len(ids), [ans], [(0, wrong)]))
    return plan


@torch.inference_mode()
def run_schedule(blocks, plan, conditions, mode, batch_size, shared_obj=None) -> tuple[float, dict]:
    """Time one schedule; return (seconds, {(condition, row): argmax at the first scored position})."""
    device = blocks.device
    preds = {}
    sync(device)
    t = time.perf_counter()
    if mode == "naive":
        for r_i, row in enumerate(plan.rows):
            ids = torch.tensor([row.ids], device=device)
            for c in conditions:
                with blocks.skip(c.layers):
                    logits = blocks.forward(ids)          # [1, T, vocab], as a plain HF forward
                preds[(c.name, r_i)] = logits[0, row.positions[0]].argmax().item()
    else:
        run = {"batched": batch_logits_plain, "prefix": batch_logits_prefix,
               "shared": functools.partial(batch_logits_shared, shared=shared_obj)}[mode]
        for batch in plan.batches(batch_size):
            batch.input_ids, batch.attention_mask, batch.at = (x.to(device) for x in
                                                               (batch.input_ids, batch.attention_mask, batch.at))
            out = run_with_oom_retry(run, blocks, plan, batch, conditions)
            for c in conditions:
                for sub, logits in out[c]:
                    am = logits[:, 0].argmax(-1).tolist()
                    for r_i, p in zip(sub.rows, am):
                        preds[(c.name, r_i)] = p
    sync(device)
    return time.perf_counter() - t, preds


def _dp_worker(kind: str, model_spec: str | None, shape: str | None, dtype_name: str, plan: ScoringPlan,
               batch_size: int) -> dict:
    """One rank of the ``--devices`` timing: build or load the model on this rank's GPU, time the sweep.

    ``kind``: ``cuda`` (NCCL, rank r on GPU r) or ``cpu`` (gloo; only to check the code path)."""
    import torch.distributed as tdist

    from prunescope.core.distributed import distributed, rank_device
    from prunescope.probe.sweep import SweepSettings, sweep_blocks

    dtype = getattr(torch, dtype_name)
    with distributed(kind) as d:
        device = "cpu" if kind == "cpu" else rank_device("cuda", d) if d.world_size > 1 else "cuda:0"
        if shape:
            from prunescope.probe.tiny import fill_random_, llama3_8b_config, random_weight_model

            model = fill_random_(random_weight_model(llama3_8b_config(), device, dtype))
        else:
            from prunescope.probe.models import load_model

            model = load_model(model_spec, device=device, dtype=dtype).model
        blocks = Blocks(model)
        warm = ScoringPlan.__new__(ScoringPlan)
        warm.items, warm.scoring, warm.pad_id, warm.rows = plan.items[:2], plan.scoring, plan.pad_id, plan.rows[:2]
        sweep_blocks(blocks, None, {"warm": warm}, SweepSettings(batch_size=2, windows=[1], show_progress=False),
                     dist=d)
        if d.world_size > 1:
            tdist.barrier()
        sync(device)
        t = time.perf_counter()
        stats: dict = {}
        rows = sweep_blocks(blocks, None, {"sweep": plan}, SweepSettings(batch_size=batch_size, show_progress=False),
                            dist=d, keep_stats=stats)
        sync(device)
        secs = time.perf_counter() - t   # the last round's gather already waited for every rank
        return {"seconds": secs, "rows": rows, "stats": stats["sweep"], "world": d.world_size}


def compare_runs(a: dict, b: dict) -> dict:
    """Row-by-row comparison of two sweeps' per-row numbers and their aggregated table."""
    same_pred, n, max_logit = 0, 0, 0.0
    for cond, rows in a["stats"].items():
        for r, s in rows.items():
            t = b["stats"][cond][r]
            n += 1
            same_pred += s["is_argmax"] == t["is_argmax"] and [x > y for x, y in zip(s["target_logit"], s["compare_logit"])] \
                == [x > y for x, y in zip(t["target_logit"], t["compare_logit"])]
            max_logit = max([max_logit] + [abs(x - y) for x, y in zip(s["target_logit"] + s["compare_logit"],
                                                                       t["target_logit"] + t["compare_logit"])])
    vals = [abs(x["value"] - y["value"]) for x, y in zip(a["rows"], b["rows"]) if x["value"] == x["value"]]
    return {"rows": n, "same_predictions": same_pred / max(n, 1), "max_logit_diff": max_logit,
            "max_metric_diff": max(vals, default=0.0)}


def scaling(devices: int, model_spec: str | None, shape: str | None, dtype_name: str, plan: ScoringPlan,
            batch_size: int, kind: str = "cuda") -> dict:
    """Time the sweep on 1 GPU and on ``devices`` GPUs (one process each); print and return the table."""
    from prunescope.core.distributed import launch

    runs = {k: launch(_dp_worker, k, (kind, model_spec, shape, dtype_name, plan, batch_size), device=kind)
            for k in dict.fromkeys([1, devices])}
    one = runs[1]["seconds"]
    print(f"{'GPUs':>5s} {'seconds':>9s} {'speed-up':>9s} {'efficiency':>11s}  same predictions / max logit diff / max metric diff vs 1 GPU")
    table = []
    for k, r in runs.items():
        cmp = compare_runs(runs[1], r)
        table.append({"gpus": k, "seconds": r["seconds"], "speedup": one / r["seconds"],
                      "efficiency": one / r["seconds"] / k, **cmp})
        print(f"{k:5d} {r['seconds']:9.2f} {one / r['seconds']:9.2f} {one / r['seconds'] / k:11.2f}  "
              f"{cmp['same_predictions']:.4f} / {cmp['max_logit_diff']:.2e} / {cmp['max_metric_diff']:.2e}")
    return {"table": table, "ratio": one / runs[devices]["seconds"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the embedded default model)")
    ap.add_argument("--random-llama-8b", action="store_true", help="random-weight Llama-3.1-8B shape instead")
    ap.add_argument("--random-llama-70b", action="store_true",
                    help="random-weight Llama-3.1-70B shape, built sharded over all visible GPUs")
    ap.add_argument("--max-memory", default=None, help="with --random-llama-70b: memory per GPU, e.g. '0=120GiB,1=120GiB'")
    ap.add_argument("--devices", type=int, default=None,
                    help="time the prefix-reuse sweep on 1 GPU and on N GPUs (data parallel) and print the scaling")
    ap.add_argument("--n", type=int, default=None, help="prompts (default: 24 on CPU, 200 for --random-llama-8b)")
    ap.add_argument("--shots", type=int, default=3, help="few-shot examples (default model workload)")
    ap.add_argument("--shared", type=int, default=0, help="random workload: tokens shared by all prompts")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--batch-sizes", default=None, help="comma-separated: also time the batched schedules "
                    "at these batch sizes (tuning)")
    ap.add_argument("--modes", default="naive,batched,prefix,shared")
    ap.add_argument("--naive-prompts", type=int, default=None, help="run naive on the first k prompts only "
                    "and scale its time (default: all)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))

    if args.devices:
        kind = torch.device(args.device).type   # cpu: gloo processes, to check the code path only
        shape = "8b" if args.random_llama_8b else None
        if shape:
            from prunescope.probe.tiny import llama3_8b_config

            plan = random_plan(args.n or 200, llama3_8b_config().vocab_size, 100, 200, args.shared, seed=0)
        else:
            from prunescope.probe.models import load_model
            from prunescope.probe.tasks import make_items

            tok = load_model(args.model).tokenizer
            plan = ScoringPlan(tok, make_items("arithmetic_multi", n=args.n or 24, seed=0, ops="+", shots=args.shots))
        dtype_name = str(dtype).removeprefix("torch.")
        print(f"{'random Llama-3.1-8B shape' if shape else (args.model or 'default model')}: {len(plan.rows)} prompts, "
              f"{dtype_name}, batch {args.batch_size or 30}, prefix reuse, 1 vs {args.devices} GPUs", flush=True)
        res = scaling(args.devices, args.model, shape, dtype_name, plan, args.batch_size or 30, kind)
        print(f"speed-up 1 -> {args.devices} GPUs: {res['ratio']:.2f}x")
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))
        return

    if args.random_llama_70b:
        from prunescope.probe.models import parse_max_memory
        from prunescope.probe.tiny import llama3_70b_config, random_sharded_model

        cfg = llama3_70b_config()
        t = time.perf_counter()
        model = random_sharded_model(cfg, parse_max_memory(args.max_memory), dtype)
        print(f"built the 70B shape sharded in {time.perf_counter() - t:.1f} s: "
              f"{sorted(set(map(str, model.hf_device_map.values())))}", flush=True)
        n = args.n or 32
        plan = random_plan(n, cfg.vocab_size, 100, 200, args.shared, seed=0)
        name = "random Llama-3.1-70B shape (sharded)"
    elif args.random_llama_8b:
        from prunescope.probe.tiny import llama3_8b_config, random_weight_model

        cfg = llama3_8b_config()
        model = random_weight_model(cfg, args.device, dtype)
        n = args.n or 200
        plan = random_plan(n, cfg.vocab_size, 100, 200, args.shared, seed=0)
        name = "random Llama-3.1-8B shape"
    else:
        from prunescope.probe.models import load_model
        from prunescope.probe.tasks import make_items

        lm = load_model(args.model, device=args.device, dtype=dtype)
        model, cfg = lm.model, lm.model.config
        n = args.n or 24
        plan = ScoringPlan(lm.tokenizer, make_items("arithmetic_multi", n=n, seed=0, ops="+", shots=args.shots))
        name = lm.name
    blocks = Blocks(model)
    L = blocks.n_layers
    conditions = make_conditions(L, [1])
    bs = args.batch_size or default_batch_size(blocks, max(len(r.ids) for r in plan.rows))
    P = shared_prefix_length(plan)
    modes = [m for m in args.modes.split(",") if m != "shared" or P >= 1]
    peak = matmul_peak(args.device, dtype)
    tokens = sum(len(r.ids) for r in plan.rows)
    print(f"{name}: {L} layers, {n} prompts, {tokens} tokens ({min(len(r.ids) for r in plan.rows)}-"
          f"{max(len(r.ids) for r in plan.rows)} per prompt, shared prefix {P}), {len(conditions)} conditions, "
          f"{dtype}, batch {bs}, device {args.device}; measured matmul peak {peak / 1e12:.1f} TFLOP/s")

    shared_obj = None
    if "shared" in modes:
        sync(args.device)
        t = time.perf_counter()
        shared_obj = SharedPrefix(blocks, plan.rows[0].ids[:P], conditions)
        sync(args.device)
        shared_setup = time.perf_counter() - t

    # warm-up (kernels, allocator) on a couple of prompts
    warm = ScoringPlan.__new__(ScoringPlan)
    warm.items, warm.scoring, warm.pad_id, warm.rows = plan.items[:2], plan.scoring, plan.pad_id, plan.rows[:2]
    run_schedule(blocks, warm, conditions[:2], "prefix", bs)

    results, preds = {}, {}
    for mode in modes:
        sub = plan
        scale = 1.0
        if mode == "naive" and args.naive_prompts and args.naive_prompts < n:
            sub = ScoringPlan.__new__(ScoringPlan)
            sub.items, sub.scoring, sub.pad_id = plan.items, plan.scoring, plan.pad_id
            sub.rows = plan.rows[: args.naive_prompts]
            scale = n / args.naive_prompts
        secs, p = run_schedule(blocks, sub, conditions, mode, bs, shared_obj)
        if mode == "shared":
            secs += shared_setup
        results[mode] = secs * scale
        preds[mode] = p
        print(f"  {mode:8s} {secs * scale:9.2f} s" + (" (extrapolated)" if scale != 1 else ""), flush=True)

    if args.batch_sizes:
        for b in [int(x) for x in args.batch_sizes.split(",")]:
            for mode in [m for m in modes if m != "naive"]:
                secs, _ = run_schedule(blocks, plan, conditions, mode, b, shared_obj)
                print(f"  {mode:8s} batch {b:4d} {secs:9.2f} s", flush=True)

    floor_prefix = schedule_flops(plan, cfg, L, "prefix") / peak
    floor_batched = schedule_flops(plan, cfg, L, "batched") / peak
    print(f"\ncompute floor (matmul FLOPs on real tokens / measured peak): one forward per condition "
          f"{floor_batched:.2f} s, prefix reuse {floor_prefix:.2f} s"
          + (f", shared prefix {schedule_flops(plan, cfg, L, 'shared', P) / peak:.2f} s" if 'shared' in modes else ""))
    print(f"{'schedule':10s} {'seconds':>9s} {'x naive':>8s} {'x floor':>8s}  agreement with batched")
    for mode, secs in results.items():
        ref = preds.get("batched")
        keys = [k for k in preds[mode] if ref and k in ref]
        agree = sum(preds[mode][k] == ref[k] for k in keys) / len(keys) if keys else float("nan")
        vs_naive = results["naive"] / secs if "naive" in results else float("nan")
        print(f"{mode:10s} {secs:9.2f} {vs_naive:8.1f} {secs / floor_prefix:8.2f}  {agree:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"name": name, "n": n, "tokens": tokens, "conditions": len(conditions),
                                               "dtype": str(dtype), "batch": bs, "shared_prefix": P,
                                               "peak_tflops": peak / 1e12, "seconds": results,
                                               "floor_prefix_s": floor_prefix, "floor_batched_s": floor_batched},
                                              indent=1))


if __name__ == "__main__":
    main()
