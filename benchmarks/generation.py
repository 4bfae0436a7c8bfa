"""Generation paths side by side, in one run, on the same prompts: tokens/s, share of the step
floor, peak memory.

Paths
  stock-B     transformers ``model.generate``, static left-padded batches of B (what SGR used to do)
  cb          transformers continuous batching (``init_continuous_batching``), default settings
  cb-graphs   the same with CUDA graphs on and 90% of free memory for its cache
  ours-S      ``prunescope.generation.Engine`` with S slots (continuous batching, slotted cache, CUDA-graph decode)

Workloads (prompts of 100-199 random tokens, sampled at temperature 1, no EOS)
  fixed       256 new tokens per request
  variable    per-request limits drawn from U[16, 512] (as SGR answers vary); a static batch runs
              until its longest request is done, and only requested tokens count

The step floor: one decode step must read every weight once and each row's keys and values, and
do 2 x params FLOPs per row; bandwidth and matmul peak are measured in the same run. A path's
"floor" column is the time that workload needs at its batch size on that floor, over its measured
time.

``--profile`` splits one decode step of ours (the first ``--slots``) into kernel families, and each
ours row reports its idle slots (live share), prefill share and the share of the KV it reads that
rows use (the slotted cache reads every slot's full capacity each step).

``--agreement N`` also checks greedy agreement on a real model (``--agreement-model``, default
the embedded one; ``--agreement-dtypes``, default the run's): N chat prompts, 64 tokens, the share
of identical requests between every pair of paths (ours at 64 and 16 slots, graph on and off;
stock ``generate`` batched and one at a time, whose mutual agreement is the check's noise floor).

    python benchmarks/generation.py --random-llama-8b --device cuda          # H200, bf16
    python benchmarks/generation.py --model default --n 64 --n-stock 64 --slots 16 --paths stock-16,ours   # CPU
    python benchmarks/generation.py --tiny --n 16                           # CPU smoke run
    python benchmarks/generation.py --tiny --device cuda --paths none --agreement 64 \
        --agreement-model qwen2.5-coder-1.5b --agreement-dtypes float32,bfloat16   # greedy agreement
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ceilings import ceilings, matmul_peak, sync  # noqa: E402,F401

from prunescope.generation import Engine, GenerationOptions, GenerationStats, Request, kv_bytes_per_token  # noqa: E402


def workload(kind: str, n: int, vocab: int, seed: int = 0) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [rng.randrange(100, vocab) for _ in range(rng.randint(100, 199))]
        out.append((prompt, 256 if kind == "fixed" else rng.randint(16, 512)))
    return out


def left_padded(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and attention mask of prompts padded on the left to the longest (what ``generate`` takes)."""
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for j, p in enumerate(prompts):
        ids[j, width - len(p):] = torch.tensor(p)
        mask[j, width - len(p):] = 1
    return ids, mask


def run_stock(model, work, batch: int, device) -> int:
    made = 0
    for i in range(0, len(work), batch):
        chunk = work[i:i + batch]
        ids, mask = left_padded([p for p, _ in chunk], 0)
        model.generate(ids.to(device), attention_mask=mask.to(device), do_sample=True, temperature=1.0, top_p=1.0,
                       top_k=0, max_new_tokens=max(m for _, m in chunk), pad_token_id=0, eos_token_id=None)
        made += sum(m for _, m in chunk)  # only the requested tokens count
    return made


def run_cb(model, work, tuned: bool) -> int:
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    gc = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=512,
                          eos_token_id=None, pad_token_id=0)
    cfg = ContinuousBatchingConfig(use_cuda_graph=True, max_memory_percent=0.9) if tuned else None
    made, want = 0, len(work)
    with model.continuous_batching_context_manager(generation_config=gc, continuous_batching_config=cfg,
                                                   block=True, timeout=5) as manager:
        for i, (p, m) in enumerate(work):
            manager.add_request(p, request_id=f"r{i}", max_new_tokens=m)
        got = 0
        while got < want:
            res = manager.get_result(timeout=1)
            if res is not None and res.is_finished():
                got += 1
                made += len(res.generated_tokens)
            elif res is None and not manager.is_running():
                raise RuntimeError("continuous batching stopped early")
    return made


def run_ours(model, tok, work, slots: int, graphs: str) -> tuple[int, GenerationStats]:
    """Tokens made and the engine's own account of the run (idle slots, prefill time, capacity)."""
    engine = Engine(model, tok, GenerationOptions(slots=slots, graphs=graphs))
    engine.eos = set()  # the workload asks for exactly its token counts
    reqs = [Request(p, max_new_tokens=m, temperature=1.0, seed=i) for i, (p, m) in enumerate(work)]
    run = engine.run(reqs)
    return sum(len(c.tokens) for c in run.completions), run.stats


def floor_seconds(model, work, batch: int, bw: float, peak: float, dtype) -> float:
    """Decode steps at ``batch`` rows, each bounded by weight + KV bytes or by FLOPs, plus prefill FLOPs."""
    params = sum(p.numel() for p in model.parameters())
    tokens = sum(m for _, m in work)
    prompt = sum(len(p) for p, _ in work)
    b = min(batch, len(work))
    step = step_floor(model, b, (prompt + tokens / 2) / len(work), bw, peak, dtype)
    return tokens / b * step + 2 * params * prompt / peak


def step_floor(model, rows: int, avg_len: float, bw: float, peak: float, dtype) -> float:
    """Seconds of one decode step of ``rows`` rows holding ``avg_len`` keys each: every weight and
    each row's keys and values read once, or 2 x params FLOPs per row, whichever takes longer."""
    params = sum(p.numel() for p in model.parameters())
    wbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv = kv_bytes_per_token(model.config, dtype)
    return max((wbytes + rows * avg_len * kv) / bw, 2 * params * rows / peak)


KERNEL_FAMILIES = (  # first match wins; names of cuBLAS / cutlass / SDPA / ATen kernels
    ("attention", ("fmha", "flash", "attention", "attn", "efficient", "scaled_dot_product")),
    ("matmul", ("gemm", "gemv", "cutlass", "nvjet", "sm90_", "sm80_", "cublas", "splitk", "aten::mm", "aten::addmm",
                "aten::bmm", "aten::linear")),
    ("sampling", ("softmax", "cumsum", "scan", "sort", "searchsorted", "argmax", "max_", "reduce")),
    ("cache and masks", ("index", "scatter", "gather", "copy", "fill", "where", "cat")),
)


def kernel_family(name: str) -> str:
    low = name.lower()
    return next((fam for fam, keys in KERNEL_FAMILIES if any(k in low for k in keys)), "elementwise and other")


def kernel_ms(fn, device) -> dict[str, float]:
    """Kernel time (ms) of ``fn()`` by kernel family."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"  # on the CPU: ATen ops' own time (smoke runs)
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        fn()
        sync(device)
    out: dict[str, float] = {}
    for evt in prof.key_averages():
        us = (getattr(evt, "self_device_time_total", 0) or getattr(evt, "self_cuda_time_total", 0) if cuda
              else evt.self_cpu_time_total)
        if us:
            fam = kernel_family(evt.key)
            out[fam] = out.get(fam, 0.0) + us / 1e3
    return out


def profile_step(model, tok, work, slots: int, device, steps: int = 24) -> dict:
    """Where one decode step's time goes at ``slots`` rows: kernel time by family (eager steps, the
    prefill-only run subtracted), against the captured step's wall time and the step floor."""
    sub = work[:slots]
    eager = lambda m: run_ours(model, tok, [(p, m) for p, _ in sub], slots, "off")  # noqa: E731
    graph = lambda m: run_ours(model, tok, [(p, m) for p, _ in sub], slots, "auto")  # noqa: E731
    eager(2), graph(2)  # warm-up
    base, full = kernel_ms(lambda: eager(1), device), kernel_ms(lambda: eager(1 + steps), device)
    per_step = {k: (full.get(k, 0.0) - base.get(k, 0.0)) / steps for k in full}
    walls = []  # 2 tokens = prefill + one step, which captures the graph: the difference is replays only
    for m in (2, 2 + steps):
        sync(device)
        t = time.perf_counter()
        graph(m)
        sync(device)
        walls.append(time.perf_counter() - t)
    wall_ms = (walls[1] - walls[0]) / steps * 1e3
    return {"slots": slots, "steps": steps, "kernel_ms": {k: round(v, 3) for k, v in per_step.items()},
            "kernel_total_ms": round(sum(per_step.values()), 3), "graph_step_ms": round(wall_ms, 3)}


def timed(fn, device):
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    secs = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.device(device).type == "cuda" else float("nan")
    return out, secs, peak


AGREEMENT_PATHS = (("ours-64-graph", 64, "auto"), ("ours-64-eager", 64, "off"), ("ours-16-graph", 16, "auto"),
                   ("ours-16-eager", 16, "off"))


def agreement(model_spec, n: int, device, dtype) -> dict:
    """Greedy, real model, ``n`` chat prompts, 64 tokens: every pair of paths (the engine at 64 and
    16 slots, CUDA graph on and off; stock ``generate`` in one batch of up to 64 and one prompt at
    a time), the share of requests whose tokens are identical. Stock against stock is the check's
    own noise floor: bf16 rounding differs with the batch shape."""
    from prunescope.probe.models import load_model
    from prunescope.recover.data import load_prompts, prompt_text

    lm = load_model(model_spec, dtype=dtype, device=str(device))
    tok = lm.tokenizer
    recs = load_prompts("builtin", n=n, seed=0)
    prompts = [tok(prompt_text(tok, r), add_special_tokens=not tok.chat_template).input_ids for r in recs]
    eos = Engine(lm.model, tok).eos
    cut = lambda row: row[:next((k for k, t in enumerate(row) if t in eos), len(row))]  # noqa: E731
    runs = {}
    for name, slots, graphs in AGREEMENT_PATHS:
        if graphs == "auto" and device.type != "cuda":
            continue  # no graph off the GPU: the eager rows are the engine
        runs[name] = [c.tokens for c in Engine(lm.model, tok, GenerationOptions(slots=slots, graphs=graphs))
                      .generate([Request(p, max_new_tokens=64) for p in prompts])]
    for batch in (64, 1):
        out = []
        for i in range(0, len(prompts), batch):
            ids, mask = left_padded(prompts[i:i + batch], tok.pad_token_id or 0)
            gen = lm.model.generate(ids.to(device), attention_mask=mask.to(device), do_sample=False, max_new_tokens=64,
                                    pad_token_id=tok.pad_token_id)[:, ids.shape[1]:].tolist()
            out += [cut(r) for r in gen]
        runs[f"stock-{batch}"] = out
    del lm
    names = list(runs)
    share = {a: {b: sum(x == y for x, y in zip(runs[a], runs[b])) / len(prompts) for b in names} for a in names}
    return {"model": model_spec or "default", "dtype": str(dtype).replace("torch.", ""), "requests": len(prompts),
            "paths": names, "identical": share}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random-llama-8b", action="store_true", help="the Llama-3.1-8B shape, random weights")
    ap.add_argument("--tiny", action="store_true", help="a tiny random Llama (CPU smoke run)")
    ap.add_argument("--model", default=None, help="a real model instead (alias, folder or .gguf; e.g. default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--n", type=int, default=512, help="requests for ours (the slower paths take fewer, see --n-stock)")
    ap.add_argument("--n-stock", type=int, default=256, help="requests for stock-256 and cb (stock-16 takes 32)")
    ap.add_argument("--slots", default="256,512", help="our engine's slot counts to time")
    ap.add_argument("--paths", default="stock-16,stock-256,cb,cb-graphs,ours", help="paths to time")
    ap.add_argument("--workloads", default="fixed,variable")
    ap.add_argument("--agreement", type=int, default=0, help="real-model greedy check on this many prompts")
    ap.add_argument("--agreement-model", default=None, help="alias or folder (default: the embedded model)")
    ap.add_argument("--agreement-dtypes", default=None, help="e.g. float32,bfloat16 (default: the run's dtype)")
    ap.add_argument("--profile", action="store_true",
                    help="also profile one decode step of ours at the first --slots (kernel time by family)")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)

    from prunescope.probe.tiny import llama3_8b_config, random_weight_model, tiny_model, tiny_tokenizer_dir
    from transformers import AutoTokenizer

    if args.random_llama_8b:
        model = random_weight_model(llama3_8b_config(), device=str(device), dtype=dtype)
    elif args.model:
        from prunescope.probe.models import load_model

        model = load_model(args.model, dtype=dtype, device=str(device)).model
    else:
        model = tiny_model("llama")[0].to(device, dtype)
    model.generation_config.eos_token_id = None
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir())  # ids only: the workload is random tokens
    vocab = int(model.config.vocab_size)
    bw, peak = ceilings(device, dtype)
    print(f"device {device} {torch.cuda.get_device_name() if device.type == 'cuda' else ''} dtype {dtype}; "
          f"copy {bw / 1e12:.2f} TB/s, matmul {peak / 1e12:.0f} TFLOP/s", flush=True)
    rows = []
    paths = args.paths.split(",")
    for kind in args.workloads.split(","):
        work = workload(kind, args.n, vocab)
        plan = []
        for p in paths:
            if p.startswith("stock-"):
                b = int(p.split("-")[1])
                if kind == "variable" and b < 64:
                    continue  # the static small batch is timed on the fixed workload only
                sub = work[:32] if b < 64 else work[:args.n_stock]
                plan.append((p, b, sub, lambda sub=sub, b=b: run_stock(model, sub, b, device)))
            elif p in ("cb", "cb-graphs"):
                if device.type != "cuda" or (p == "cb-graphs" and kind == "variable"):
                    continue
                sub = work[:args.n_stock]
                plan.append((p, len(sub), sub, lambda sub=sub, t=(p == "cb-graphs"): run_cb(model, sub, t)))
            elif p == "ours":
                for s in map(int, args.slots.split(",")):
                    plan.append((f"ours-{s}", s, work, lambda s=s: run_ours(model, tok, work, s, "auto")))
                if device.type == "cuda":
                    s = int(args.slots.split(",")[0])
                    plan.append((f"ours-{s}-eager", s, work, lambda s=s: run_ours(model, tok, work, s, "off")))
        for name, batch, sub, fn in plan:
            try:
                if name.startswith("ours"):  # a short warm-up: allocator, kernels, graph capture path
                    run_ours(model, tok, sub[:8], 8, "auto")
                out, secs, mem = timed(fn, device)
                made, stats = out if name.startswith("ours") else (out, None)  # ours also counts its own work
            except Exception as e:  # one path failing must not lose the others' numbers
                print(f"{kind:9s} {name:16s} FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
                rows.append({"workload": kind, "path": name, "error": f"{type(e).__name__}: {e}"[:500]})
                continue
            floor = floor_seconds(model, sub, batch, bw, peak, dtype)
            row = {"workload": kind, "path": name, "requests": len(sub), "tokens": made, "seconds": round(secs, 2),
                   "tokens_per_s": round(made / secs, 1), "floor_share": round(floor / secs, 3),
                   "peak_gib": round(mem, 1)}
            if name.startswith("ours"):  # where the engine's time went: idle slots, prefill, KV layout
                prompt = sum(len(p) for p, _ in sub)
                live_len = (prompt + sum(m for _, m in sub) / 2) / len(sub)
                row.update(live_share=round(stats.live_rows / max(stats.decode_rows, 1), 3),
                           prefill_share=round(stats.prefill_seconds / secs, 3),
                           kv_read_share=round(live_len / max(stats.capacity, 1), 3))
            rows.append(row)
            print(f"{kind:9s} {name:16s} {len(sub):5d} req {made:8d} tok {secs:8.1f} s {made / secs:9.0f} tok/s "
                  f"floor {floor / secs:6.1%} peak {mem:6.1f} GiB"
                  + (f" live {row['live_share']:.0%} prefill {row['prefill_share']:.0%} useful KV "
                     f"{row['kv_read_share']:.0%}" if "live_share" in row else ""), flush=True)
    result = {"device": str(device), "dtype": str(dtype), "bandwidth": bw, "matmul": peak, "rows": rows}
    if args.profile:
        slots = int(args.slots.split(",")[0])
        prof = profile_step(model, tok, workload("fixed", slots, vocab), slots, device)
        # the profiled steps hold the prompts (150 tokens on average) plus up to 24 new ones
        prof["floor_step_ms"] = round(step_floor(model, slots, 162, bw, peak, dtype) * 1e3, 3)
        result["profile"] = prof
        print(f"\none decode step at {slots} slots: captured {prof['graph_step_ms']:.2f} ms, kernels "
              f"{prof['kernel_total_ms']:.2f} ms, floor about {prof['floor_step_ms']:.2f} ms")
        for fam, ms in sorted(prof["kernel_ms"].items(), key=lambda kv: -kv[1]):
            print(f"  {fam:22s} {ms:7.2f} ms  {ms / max(prof['kernel_total_ms'], 1e-9):6.1%}")
    if args.agreement:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        result["agreement"] = []
        for dt in (args.agreement_dtypes.split(",") if args.agreement_dtypes else [str(dtype).replace("torch.", "")]):
            a = agreement(args.agreement_model, args.agreement, device, getattr(torch, dt))
            result["agreement"].append(a)
            print(f"\ngreedy agreement, {a['model']} {a['dtype']}, {a['requests']} requests x 64 tokens: share "
                  "identical\n| | " + " | ".join(a["paths"]) + " |\n|---|" + "---|" * len(a["paths"]))
            for p in a["paths"]:
                print(f"| {p} | " + " | ".join(f"{a['identical'][p][q]:.2f}" for q in a["paths"]) + " |")
    print("\n| workload | path | requests | tokens/s | share of floor | peak GiB |\n|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['workload']} | {r['path']} | failed: {r['error'][:60]} | | | |")
        else:
            print(f"| {r['workload']} | {r['path']} | {r['requests']} | {r['tokens_per_s']:,.0f} | "
                  f"{r['floor_share']:.1%} | {r['peak_gib']} |")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
