"""A whole study on the random Llama-3.1-8B shape, timed stage by stage, with each stage's floor and
a projection to the paper's full sizes.

Every stage calls the public function ``prunescope run`` calls (``sweep``, ``patch``, ``score``,
``prune``, ``generate_responses``, ``recover``, ``evaluate``) on one in-memory base model, so the
numbers are the pipeline's own. The weights are random (the shape is what costs time); the
tokenizer is the default model's.

Stages and default sizes (``--fraction`` scales the three heavy ones; the table says what ran):
  probes           sweep of arithmetic_multi, brackets, copy; 200 items each, every single layer skipped
  patching         arithmetic, 32 pairs, exact and attribution maps
  scores           Block Influence and the other layer scores (64 calibration texts)
  prune            BI 25%, a standard checkpoint written to disk
  sgr              2,000 prompts, answers up to 512 tokens, T=0.9 (the built-in 600 prompts, cycled)
  qlora            200 steps at sequence 2048, NF4 + LoRA r=64 on the pruned checkpoint
  classification   the 7-task suite with --limit 0.2 (as the paper's code)
  gsm8k            8-shot chain of thought, all 1,319 questions

The floor of a forward-only stage: every decoder forward it ran (counted by a hook) at the larger
of its FLOPs (2 x params x tokens over the measured matmul peak) and one read of the weights (over
the measured bandwidth). A generating stage (SGR, GSM8K): the engine's own count (a replayed CUDA
graph runs no hooks), prefill FLOPs plus, per decode step, one read of the weights and of the
slots' caches or its FLOPs, whichever is larger. QLoRA's floor: 6 x params x tokens (forward,
recompute, input gradients).

    python benchmarks/pipeline_8b.py --device cuda --out /tmp/p8b                 # H200
    python benchmarks/pipeline_8b.py --tiny --fraction 0.02 --out /tmp/p8b-tiny    # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ceilings import ceilings, matmul_peak, sync  # noqa: E402,F401

from prunescope.core.options import Output, Placement  # noqa: E402

# the paper's sizes, for the projection (stated assumptions where the paper gives none)
PAPER = {
    "sgr": ("50M answer tokens (~100k prompts, answers up to 8k)", 50e6),
    "qlora": ("one epoch of ~100k examples at batch 8 and sequence 8192: 12,500 steps, 819M tokens", 12500 * 8 * 8192),
    "classification": ("the suite at the paper's own limit 0.2", 0.2),
}


class Counter:
    """Decoder forwards and the tokens they carried (a forward pre-hook on the decoder)."""

    def __init__(self, model):
        self.forwards, self.tokens, self.per = 0, 0, []
        base = getattr(model, "model", model)
        self.handle = base.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        x = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        if x is None and args:
            x = args[0]
        if x is not None:
            n = int(x.shape[0] * x.shape[1])
            self.forwards += 1
            self.tokens += n
            self.per.append(n)

    def floor(self, params: int, weight_bytes: int, peak: float, bw: float) -> float:
        return sum(max(2 * params * n / peak, weight_bytes / bw) for n in self.per)

    def reset(self):
        self.forwards, self.tokens, self.per = 0, 0, []




def base_model(args, device, dtype, work: Path):
    from prunescope.probe.models import LoadedModel, load_model
    from prunescope.probe.tiny import llama3_8b_config, random_weight_model, tiny_model

    if args.tiny:
        model, tok = tiny_model("llama", n_layers=8)
        model = model.to(device, dtype)
    else:
        tok = load_model(None).tokenizer  # the default model's tokenizer (its weights are not used)
        model = random_weight_model(llama3_8b_config(), device=str(device), dtype=dtype)
    folder = work / "base"
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)  # config and tokenizer only: the weights stay in memory
    tok.save_pretrained(folder)
    return LoadedModel(model, tok, "random-llama-8b" if not args.tiny else "tiny-llama", str(folder))


ENGINE_COUNTS = ("prefill_forwards", "prefill_tokens", "decode_steps", "decode_rows", "live_rows", "new_tokens",
                 "prefill_seconds")


def count_engine_runs() -> dict:
    """The work of every generation engine run from here on, summed (``slots`` and ``capacity``:
    the last run's). The stages build their engines themselves, so ``Engine.stream``, which every
    run passes through, is wrapped for the rest of this process to add each run's own stats."""
    from prunescope.generation import Engine, GenerationStats

    total = dict.fromkeys((*ENGINE_COUNTS, "slots", "capacity"), 0)
    stream = Engine.stream

    def counted(engine, requests, **kw):
        stats = kw.pop("stats", None)
        stats = stats if stats is not None else GenerationStats()
        try:
            yield from stream(engine, requests, stats=stats, **kw)
        finally:
            total.update({k: total[k] + getattr(stats, k) for k in ENGINE_COUNTS},
                         slots=stats.slots, capacity=stats.capacity)

    Engine.stream = counted
    return total


def prompts(n: int) -> list[dict]:
    from prunescope.recover.data import load_prompts

    base = load_prompts("builtin", n=None, seed=0)
    out = []
    for i in range(n):
        r = dict(base[i % len(base)])
        r["id"] = f"{r['id']}-{i // len(base)}"
        out.append(r)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="a tiny random Llama (CPU smoke run)")
    ap.add_argument("--fraction", type=float, default=1.0,
                    help="scale SGR prompts, QLoRA steps and GSM8K questions (classification: --classification-limit)")
    ap.add_argument("--classification-limit", type=float, default=0.2)
    ap.add_argument("--stages", default="probes,patching,scores,prune,sgr,qlora,classification,gsm8k")
    ap.add_argument("--slots", type=int, default=256, help="generation engine slots")
    ap.add_argument("--eval-batch", type=int, default=32, help="scored requests per forward")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    work = Path(args.out)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    bw, peak = ceilings(device, dtype)
    t0 = time.perf_counter()
    base = base_model(args, device, dtype, work)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in base.model.parameters())
    wbytes = sum(p.numel() * p.element_size() for p in base.model.parameters())
    print(f"{base.name}: {params / 1e9:.2f}B params, built in {build_s:.1f} s; copy {bw / 1e12:.2f} TB/s, "
          f"matmul {peak / 1e12:.0f} TFLOP/s", flush=True)
    counter = Counter(base.model)
    placement = Placement(device=str(device))
    quiet = lambda sub: Output(out=str(work / sub), plot=False, progress=False)  # noqa: E731
    rows = []
    f = args.fraction

    from prunescope import generation

    kv = generation.kv_bytes_per_token(base.model.config, dtype)
    engine_totals = count_engine_runs()

    def generation_floor(before: dict) -> float:
        """Prefill FLOPs, and per decode step one read of the weights and of the slots' caches, or
        its FLOPs (a replayed CUDA graph runs no hooks, so the engine counts its own work)."""
        d = {k: engine_totals[k] - before.get(k, 0) for k in engine_totals}
        if not d["decode_steps"]:
            return 0.0
        rows = d["decode_rows"] / d["decode_steps"]
        step = max((wbytes + rows * engine_totals["capacity"] * kv) / bw, 2 * params * rows / peak)
        return 2 * params * d["prefill_tokens"] / peak + d["decode_steps"] * step

    @contextmanager
    def stage(name: str, size: str, paper_scale: float | None = None, floor=None):
        counter.reset()
        gen_before = dict(engine_totals)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        extra: dict = {}
        error = None
        try:
            yield extra
        except Exception as e:  # a failing stage must not lose the others' numbers
            error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        if device.type == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - t
        fl = extra.pop("floor", None)
        if fl is None:
            fl = counter.floor(params, wbytes, peak, bw) if counter.forwards else None
            gen = generation_floor(gen_before)
            if gen:  # a generating stage (SGR, GSM8K) does nothing else: the engine's own count holds
                fl = gen
                extra["decode_steps"] = engine_totals["decode_steps"] - gen_before["decode_steps"]
        scale = extra.pop("scale", paper_scale)
        paper = extra.pop("paper_seconds", None)
        if paper is None and scale is not None and not error:
            paper = secs * scale
        row = {"stage": name, "size": size, "seconds": round(secs, 1), "forwards": counter.forwards,
               "tokens": counter.tokens, "floor_seconds": None if fl is None else round(fl, 1),
               "floor_share": None if not fl else round(fl / secs, 3),
               "paper_seconds": None if paper is None else round(paper, 0), **extra}
        if error:
            row["error"] = error
        rows.append(row)
        print(f"{name:15s} {secs:8.1f} s  floor {row['floor_seconds']} s  {size}" + (f"  FAILED {error}" if error else ""),
              flush=True)
        (work / "pipeline_8b.json").write_text(json.dumps({"rows": rows, "bandwidth": bw, "matmul": peak}, indent=1))

    todo = args.stages.split(",")
    if "probes" in todo:
        from prunescope.probe.sweep import SweepOptions, sweep

        with stage("probes", "3 probes x 200 items, every layer skipped", 1.0):
            sweep(SweepOptions(probes=["arithmetic_multi", "brackets", "copy"], items=200, shots=3, ops="+"),
                  loaded=base, placement=placement, output=quiet("sweep"))
    if "patching" in todo:
        from prunescope.circuits.commands import PatchOptions, patch

        with stage("patching", "arithmetic, 32 pairs, exact + attribution", 1.0):
            patch(PatchOptions(probe="arithmetic", pairs=32, method="both"), loaded=base, placement=placement,
                  output=quiet("patch"))
    if "scores" in todo:
        from prunescope.prune.commands import ScoreOptions, score

        with stage("scores", "64 calibration texts", 1.0):
            score(ScoreOptions(), loaded=base, placement=placement, output=quiet("score"))
    pruned = work / "pruned-bi25"
    if "prune" in todo:
        from prunescope.prune.commands import PruneOptions, prune_model

        with stage("prune", "BI 25%, checkpoint written", 1.0):
            prune_model(PruneOptions(strategy="bi", ratio=0.25), loaded=base, placement=placement,
                        output=quiet("pruned-bi25").replace(overwrite=True))
    sgr = work / "sgr.jsonl"
    if "sgr" in todo:
        from prunescope.recover.sgr import SGROptions, generate_responses

        n = max(1, round(2000 * f))
        with stage("sgr", f"{n} prompts, answers <= 512 tokens", None) as extra:
            recs = generate_responses(SGROptions(max_prompts=n, max_new_tokens=512, temperature=0.9, slots=args.slots),
                                      loaded=base, records=prompts(n), output=quiet("sgr.jsonl"))
            made = sum(r["response_tokens"] for r in recs)
            extra["answer_tokens"] = made
            extra["scale"] = PAPER["sgr"][1] / max(made, 1)
    if "qlora" in todo:
        from prunescope.recover.train import RecoverOptions, recover_model

        steps = max(2, round(200 * f))
        counter.handle.remove()
        with stage("qlora", f"{steps} steps, sequence <= 2048, NF4 r=64", None) as extra:
            if device.type == "cuda":
                base.model.to("cpu")  # room for the student; the base comes back for the evaluation
                torch.cuda.empty_cache()
            s = recover_model(RecoverOptions(data=str(sgr), steps=steps, max_seq_len=2048, heldout=8, eval_every=10**6,
                                       save_every=10**6, warmup=min(50, steps)),
                        model=str(pruned), placement=placement, output=quiet("recovered"), merge=False)
            extra.update(train_seconds=s["train_seconds"], trained_tokens=s["all_tokens"],
                         tokens_per_s=round(s["tokens_per_s"] or 0, 1))
            pruned_params = params * 0.75
            extra["floor"] = 6 * pruned_params * s["all_tokens"] / peak
            # training time scales with the tokens (attention's growth with length left out: a lower bound)
            extra["paper_seconds"] = s["train_seconds"] * PAPER["qlora"][1] / max(s["all_tokens"], 1)
        if device.type == "cuda":
            base.model.to(device)
        counter = Counter(base.model)
    if "classification" in todo:
        from prunescope.analysis.evaluate import EvalOptions, evaluate

        lim = args.classification_limit
        with stage("classification", f"7 tasks, limit {lim:g}", PAPER["classification"][1] / lim):
            evaluate(EvalOptions(tasks=["classification"], limit=lim, batch_size=args.eval_batch,
                                 slots=args.slots), loaded=base, output=quiet("eval-classification"))
    if "gsm8k" in todo:
        from prunescope.analysis.evaluate import EvalOptions, evaluate

        lim = None if f >= 1 else max(1, round(1319 * f))
        with stage("gsm8k", f"8-shot CoT, {lim or 1319} questions", 1319 / (lim or 1319)):
            evaluate(EvalOptions(tasks=["gsm8k"], limit=lim, batch_size=args.eval_batch, slots=args.slots),
                     loaded=base, output=quiet("eval-gsm8k"))
    total = sum(r["seconds"] for r in rows)
    proj = sum(r["paper_seconds"] or 0 for r in rows)
    print("\n| stage | ran | seconds | floor s | share of floor | at the paper's size |\n|---|---|---|---|---|---|")
    for r in rows:
        share = f"{r['floor_share']:.0%}" if r.get("floor_share") else "n/a"
        paper = "failed: " + r["error"][:60] if r.get("error") else (
            f"{r['paper_seconds'] / 3600:.2f} h" if r["paper_seconds"] else "n/a")
        print(f"| {r['stage']} | {r['size']} | {r['seconds']} | {r['floor_seconds'] or 'n/a'} | {share} | {paper} |")
    print(f"| total | | {total:.0f} | | | {proj / 3600:.1f} h |")
    (work / "pipeline_8b.json").write_text(json.dumps({"rows": rows, "bandwidth": bw, "matmul": peak,
                                                       "paper_assumptions": {k: v[0] for k, v in PAPER.items()},
                                                       "total_seconds": total, "paper_total_seconds": proj},
                                                      indent=1))


if __name__ == "__main__":
    main()
