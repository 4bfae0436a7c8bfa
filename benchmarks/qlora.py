"""QLoRA at the paper's recipe, ours vs stock peft + TRL ``SFTTrainer``, in one run on the same tokens.

Recipe: NF4 with double quantization, bf16 compute, LoRA r=64 / alpha=16 on every linear layer,
gradient checkpointing, AdamW lr 2e-4, effective batch 8 (micro-batch x accumulation), every
example exactly ``seq`` tokens (a quarter prompt, three quarters response, loss on the response).

  ours   ``prunescope.recover.train.add_lora`` + ``prunescope.recover.train.train_step`` (what ``prunescope recover`` runs)
  trl    ``trl.SFTTrainer`` with a ``peft.LoraConfig`` of the same settings, pre-tokenized data
         with a completion mask, ``max_steps`` = warm-up + timed steps

Both arms start from the same random weights quantized the same way (in memory, with
bitsandbytes' own ``Params4bit``). Reported per arm and sequence length: optimizer steps timed
after ``--warmup`` steps, tokens/s, peak memory, and model FLOP utilisation.

FLOPs counted per token: ``4 P + 6 L s d`` — forward (2P) plus the backward through the frozen
weights to their inputs (2P; frozen weights get no weight gradient), P the parameters outside the
embedding, and causal attention scores and mixing (2 L s d forward, twice that backward). The
recomputation of gradient checkpointing (another 2P) is work the method adds, not model FLOPs:
it is counted in the "with recompute" column. The matmul peak is measured in the same run.

    python benchmarks/qlora.py --random-llama-8b --device cuda               # H200
    python benchmarks/qlora.py --tiny --seq 64 --steps 2 --warmup 1          # CPU smoke run (fp32, LoRA only)
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ceilings import ceilings, matmul_peak, sync  # noqa: E402,F401

from prunescope.recover.data import Example  # noqa: E402
from prunescope.recover.train import IGNORE, RecoverOptions, add_lora, train_step  # noqa: E402






def nf4_in_memory(model, compute_dtype):
    """Replace every decoder linear layer by a bitsandbytes NF4 (double-quantized) one, on its device."""
    import bitsandbytes as bnb

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and name != "lm_head":
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4",
                                      device="meta")
                q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, compress_statistics=True,
                                             quant_type="nf4").to(child.weight.device)
                if child.bias is not None:
                    q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
                setattr(module, name, q)
    model.is_loaded_in_4bit = True
    model.quantization_method = "bitsandbytes"
    return model


def build(args, device, dtype):
    from prunescope.probe.tiny import llama3_8b_config, random_weight_model, tiny_model

    if args.random_llama_8b:
        model = random_weight_model(llama3_8b_config(), device=str(device), dtype=dtype, seed=0)
    else:
        model = tiny_model("llama", n_layers=4)[0].to(device, dtype)
    model.config.use_cache = False
    if args.quant:
        nf4_in_memory(model, dtype)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return model


def examples(n: int, seq: int, vocab: int, seed: int = 0) -> list[Example]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(100, vocab, (seq,), generator=g).tolist()
        cut = seq // 4
        out.append(Example(ids, [IGNORE] * cut + ids[cut:], seq - cut))
    return out


def model_flops(model, seq: int, tokens: int) -> tuple[float, float]:
    cfg = model.config
    emb = cfg.vocab_size * cfg.hidden_size
    # 4-bit weights count as their logical shape
    # each frozen weight once: peft's wrapper of a layer (it has a ``base_layer``) repeats its shape,
    # and the adapters' own small matmuls are left out (counting the wrappers would double every MFU)
    p = sum(m.in_features * m.out_features for name, m in model.named_modules()
            if hasattr(m, "in_features") and hasattr(m, "out_features") and not hasattr(m, "base_layer")
            and "lora_" not in name)
    p = p or sum(x.numel() for x in model.parameters()) - emb
    attn = 6 * cfg.num_hidden_layers * seq * cfg.hidden_size
    return (4 * p + attn) * tokens, (6 * p + attn * 4 / 3) * tokens


def profile_step(pm, batch, cfg, device, out) -> None:
    """One more optimizer-free step under the profiler: where the time goes (top CUDA kernels)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        train_step(pm, batch, 0, device, cfg.micro_batch)
        sync(device)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=18)
    print(table, flush=True)
    if out:
        Path(out).write_text(table)


def run_ours(model, data, cfg: RecoverOptions, steps: int, warmup: int, device, profile_to=None) -> list[float]:
    pm = add_lora(model, cfg)
    pm.train()
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    times = []
    for step in range(warmup + steps):
        batch = data[(step * cfg.train_batch) % len(data):][:cfg.train_batch]
        sync(device)
        t = time.perf_counter()
        train_step(pm, batch, 0, device, cfg.micro_batch)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - t)
    if profile_to is not None:
        profile_step(pm, data[:cfg.train_batch], cfg, device, profile_to)
    return times


def run_trl(model, data, cfg: RecoverOptions, steps: int, warmup: int, device, seq: int, work: Path) -> list[float]:
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from prunescope.probe.tiny import tiny_tokenizer_dir
    from transformers import AutoTokenizer

    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in data]  # -100 on the prompt

    from datasets import IterableDataset

    def generate_rows():
        yield from rows

    # an iterable dataset: its operations are lazy and fingerprint nothing (on the GPU machine, the
    # fingerprinting of a map-style Dataset failed pickling a pyarrow type through dill)
    train = IterableDataset.from_generator(generate_rows)

    times, marks = [], {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            sync(device)
            marks["t"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            sync(device)
            if state.global_step > warmup:
                times.append(time.perf_counter() - marks["t"])

    conf = SFTConfig(output_dir=str(work), max_length=seq, packing=False, completion_only_loss=True,
                     per_device_train_batch_size=cfg.micro_batch,
                     gradient_accumulation_steps=cfg.train_batch // cfg.micro_batch,
                     gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},
                     bf16=device.type == "cuda", learning_rate=cfg.lr, lr_scheduler_type="constant",
                     warmup_steps=0, max_steps=warmup + steps, logging_steps=1, report_to="none",
                     save_strategy="no", optim="adamw_torch", weight_decay=0.0, dataloader_num_workers=0,
                     use_cpu=device.type != "cuda", seed=0,
                     # the rows are already tokenized with their completion mask: no dataset.map (whose
                     # fingerprinting pickles the transform, and failed on one machine's pyarrow types)
                     dataset_kwargs={"skip_prepare_dataset": True})
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir())
    trainer = SFTTrainer(model=model, args=conf, train_dataset=train, peft_config=lora,
                         processing_class=tok, callbacks=[Clock()])
    trainer.train()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random-llama-8b", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seq", default="2048,8192")
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps per arm (8192: half, at least 2)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--arms", default="ours,trl")
    ap.add_argument("--no-quant", dest="quant", action="store_false", help="plain LoRA (CPU smoke runs)")
    ap.add_argument("--profile", action="store_true", help="after timing ours, profile one step (top kernels)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type != "cuda":
        args.quant = False if not args.random_llama_8b else args.quant
    peak = matmul_peak(device, dtype)
    print(f"device {device} matmul peak {peak / 1e12:.0f} TFLOP/s; NF4 {args.quant}", flush=True)
    rows = []
    work = Path("/tmp/prunescope-qlora-bench")
    for seq in map(int, args.seq.split(",")):
        micro = 4 if seq <= 2048 else 1
        steps = args.steps if seq <= 2048 else max(2, args.steps // 2)
        cfg = RecoverOptions(rank=64, alpha=16, lr=2e-4, train_batch=8, micro_batch=micro, quant=args.quant,
                             grad_checkpointing=True).check()
        for arm in args.arms.split(","):
            model = build(args, device, dtype)
            data = examples(cfg.train_batch * (args.warmup + steps), seq, int(model.config.vocab_size))
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            try:
                if arm == "ours":
                    prof = (Path(args.out).with_suffix(f".profile-{seq}.txt") if args.out else "") if args.profile else None
                    times = run_ours(model, data, cfg, steps, args.warmup, device, prof)
                else:
                    times = run_trl(model, data, cfg, steps, args.warmup, device, seq, work)
            except Exception as e:
                import traceback

                traceback.print_exc()  # where it failed, for the next try on the machine
                print(f"seq {seq} {arm}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:300]}", flush=True)
                rows.append({"seq": seq, "arm": arm, "error": f"{type(e).__name__}: {e}"[:500]})
                del model
                gc.collect()
                continue
            mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
            tokens = cfg.train_batch * seq
            secs = sum(times) / len(times)
            flops, with_recompute = model_flops(model, seq, tokens)
            row = {"seq": seq, "arm": arm, "steps_timed": len(times), "seconds_per_step": round(secs, 3),
                   "tokens_per_s": round(tokens / secs, 1), "mfu": round(flops / secs / peak, 3),
                   "hfu_with_recompute": round(with_recompute / secs / peak, 3), "peak_gib": round(mem, 1)}
            rows.append(row)
            print(f"seq {seq:5d} {arm:5s} {secs:7.2f} s/step {tokens / secs:9.0f} tok/s MFU {row['mfu']:.1%} "
                  f"(with recompute {row['hfu_with_recompute']:.1%}) peak {mem:.1f} GiB", flush=True)
            del model
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print("\n| seq | arm | s/step | tokens/s | MFU | with recompute | peak GiB |\n|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['seq']} | {r['arm']} | failed: {r['error'][:80]} | | | | |")
        else:
            print(f"| {r['seq']} | {r['arm']} | {r['seconds_per_step']} | {r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | "
                  f"{r['hfu_with_recompute']:.1%} | {r['peak_gib']} |")
    by = {(r["seq"], r["arm"]): r for r in rows if "error" not in r}
    for seq in map(int, args.seq.split(",")):
        if (seq, "ours") in by and (seq, "trl") in by:
            print(f"seq {seq}: ours / trl tokens/s = {by[seq, 'ours']['tokens_per_s'] / by[seq, 'trl']['tokens_per_s']:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"peak": peak, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
