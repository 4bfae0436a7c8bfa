"""The paper's recovery experiment on a real model: prune 25% with Block Influence, then recover
with SGR, with the prompt file's own (external) responses, and by distillation — same prompts,
same trained-token budget — and compare both probe scores (``margin_accuracy``: the answer beats the
distractors; ``exact_match``: greedy exact match, the answer is generated) and perplexity base ->
pruned -> recovered.

    python benchmarks/recovery.py --device cuda --prompts prompts.jsonl --token-budget 60000 --out runs/recovery

Prints a table and writes ``OUT/recovery.csv`` (tidy), ``OUT/summary.json`` (throughput) and the
perplexity curves. Every stage is cached in ``OUT/`` (a rerun continues).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from prunescope.probe.models import load_model
from prunescope.core.results import atomic_write_json, write_table
from prunescope.core.options import Output, Placement
from prunescope.probe.scoring import PROBE_METRICS, probe_scores  # noqa: E402
from prunescope.prune.commands import PruneOptions, prune_model
from prunescope.recover.data import encode_all, load_prompts
from prunescope.recover.sgr import SGROptions, generate_responses
from prunescope.recover.train import RecoverOptions, perplexity, recover_model, split_examples

PROBES = ("arithmetic_multi", "brackets", "copy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="base model (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--prompts", default="builtin", help="prompt file with reference responses (default: builtin)")
    ap.add_argument("--n-prompts", type=int, default=600)
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--token-budget", type=int, default=60000, help="trained response tokens per arm")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--max-seq-len", type=int, default=1024)
    ap.add_argument("--modes", default="sgr,external,distill")
    ap.add_argument("--probe-n", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-quant", action="store_true")
    ap.add_argument("--out", default="runs/recovery")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    show = not args.quiet
    t_all = time.perf_counter()

    base = load_model(args.model, device=args.device, dtype="float32")
    pruned_dir = out / "pruned"
    if not (pruned_dir / "config.json").is_file():
        plan = prune_model(PruneOptions(strategy="bi", ratio=args.ratio), loaded=base,
                           output=Output(out=str(pruned_dir), progress=show, overwrite=True))
        print(f"bi {args.ratio:.0%}: drop {plan.drop}")
    records = load_prompts(args.prompts, n=args.n_prompts)
    sgr_file = out / "sgr.jsonl"
    t0 = time.perf_counter()
    generate_responses(SGROptions(prompts=str(args.prompts), temperature=0.9, max_new_tokens=args.max_new_tokens,
                                  slots=64 if args.device != "cpu" else 8),
                       loaded=base, records=records, output=Output(out=str(sgr_file), progress=show))
    sgr_seconds = time.perf_counter() - t0

    summaries = {}
    for mode in args.modes.split(","):
        cfg = RecoverOptions(mode=mode, data=str(sgr_file), teacher=base.path if mode == "distill" else None,
                             quant=not args.no_quant, token_budget=args.token_budget, max_seq_len=args.max_seq_len,
                             eval_every=25, save_every=100)
        summaries[mode] = recover_model(cfg, model=str(pruned_dir), placement=Placement(device=args.device),
                                  output=Output(out=str(out / f"recovered-{mode}"), progress=show))
        print(mode, summaries[mode])

    # the same held-out prompts for every model: SGR responses and the file's own references
    recs = [json.loads(x) for x in sgr_file.read_text().splitlines()]
    tok = base.tokenizer
    held = {f: split_examples(encode_all(tok, recs, f, args.max_seq_len), 32, 0)[1] for f in ("response", "reference")}
    rows = []
    models = {"base": base.path, "pruned": pruned_dir,
              **{f"recovered-{m}": out / f"recovered-{m}" for m in summaries}}
    for stage, path in models.items():
        lm = load_model(path, device=args.device, dtype="float32")
        model = Path(str(base.path)).name
        for f, ex in held.items():
            rows.append({"model": model, "probe": "heldout", "condition": stage, "layers": "",
                         "metric": f"ppl_{'sgr' if f == 'response' else 'external'}",
                         "value": perplexity(lm.model, ex, tok.pad_token_id)[1], "n": 32, "seed": 0})
        scores = probe_scores(path, PROBES, n=args.probe_n, loaded=lm)
        rows += [{"model": model, "probe": p, "condition": stage, "layers": "", "metric": m, "value": scores[m][p],
                  "n": args.probe_n, "seed": 0} for p in PROBES for m in PROBE_METRICS if p in scores[m]]
        del lm
    write_table(rows, out / "recovery")
    for m in summaries:
        shutil.copy(out / f"recovered-{m}" / "curve.csv", out / f"curve-{m}.csv")
        shutil.copy(out / f"recovered-{m}" / "curve.png", out / f"curve-{m}.png")
    atomic_write_json(out / "summary.json", {"device": torch.cuda.get_device_name() if args.device != "cpu" else "cpu",
                                             "sgr_seconds": sgr_seconds, "recovery": summaries,
                                             "total_seconds": time.perf_counter() - t_all, "args": vars(args)})
    cols = list(dict.fromkeys((r["probe"], r["metric"]) for r in rows))
    print("stage               " + "  ".join(f"{p[:7]}:{m[:15]:>15s}" for p, m in cols))
    val = {(r["condition"], r["probe"], r["metric"]): r["value"] for r in rows}
    for stage in models:
        print(f"{stage:18s}  " + "  ".join(f"{val[(stage, p, m)]:23.3f}" for p, m in cols))
    print("(margin_accuracy: the answer beats the distractors; exact_match: the answer is generated)")
    for m, s in summaries.items():
        print(f"{m:9s} {s['steps']} steps, {s['trained_tokens']} response tokens, {s['tokens_per_s']:.0f} tokens/s")


if __name__ == "__main__":
    main()
