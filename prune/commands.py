"""``prunescope score`` and ``prunescope prune``: score layers, choose a plan, write the checkpoint.

>>> # score(out="runs/scores")                       -> runs/scores/scores.csv, scores.png
>>> # prune_model(strategy="bi", ratio=0.25, protect_from="runs/arith/layers.csv", protect_top=4,
>>> #       out="pruned/bi25")                       -> a standard HF checkpoint + prunescope_plan.json
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


from prunescope.core.errors import PrunescopeError
from prunescope.core.options import SHARED_MEANINGS, Flag, Options, Output, Paths, Placement, option
from prunescope.core.overwrite import remove_previous
from prunescope.core.registry import Registry
from prunescope.probe.scoring import METRICS
from prunescope.probe.tasks import PROBES, pruning_probe_options
from prunescope.core.results import write_table

from prunescope.prune.scores import (
    importance_table, layer_scores, ppl_increase, representation_scores, scores_from_patching, scores_from_sweep,
)
from prunescope.prune.strategies import (
    Plan, count_to_drop, iterative, lowest_block, lowest_k, protected_from_table, reverse_order,
)
from prunescope.prune.selection import iterative_generated_plan, select_task_names
from prunescope.prune.surgery import remove_layers, save_pruned


CALIBRATION_PROBES = (("arithmetic_multi", {"shots": 3}), ("brackets", {}), ("copy", {}))


def calibration_texts(text: str | Path | None, n: int = 64, seed: int = 0) -> list[str]:
    """Calibration texts: ``n`` of a user file, or (default) ``n`` solved probe items — few-shot
    arithmetic with answers, bracket and code contexts closed, copy lists — so scores run offline.
    The ``seed`` draws them: the built-in items are generated from it, and of a file with more than
    ``n`` texts it picks ``n`` (kept in file order), so two seeds score layers on different texts
    and may choose different layers. The ``n`` built-in texts are shared out as evenly as the three
    probes allow, the first probes taking the remainder, so the count asked is the count used.

    >>> len(calibration_texts(None, 8)), calibration_texts(None, 3, seed=1) != calibration_texts(None, 3, seed=2)
    (8, True)
    """
    import random

    from prunescope.probe.scoring import load_texts
    from prunescope.probe.tasks import make_items

    if text:
        texts = load_texts(text)
        if len(texts) <= n:
            return texts
        return [texts[i] for i in sorted(random.Random(seed).sample(range(len(texts)), n))]
    texts = []
    for i, (probe, opts) in enumerate(CALIBRATION_PROBES):
        share = n // len(CALIBRATION_PROBES) + (i < n % len(CALIBRATION_PROBES))
        if share:
            texts += [it.prompt + it.answer for it in make_items(probe, n=share, seed=seed, **opts)]
    return texts


# what prunescope score writes in its --out folder (what --overwrite removes)
SCORE_OUTPUTS = ("scores.csv", "scores.jsonl", "scores.png")


@dataclass
class ScoreOptions(Options):
    """Settings of ``prunescope score`` (:func:`score`).

    >>> ScoreOptions(block_sizes="4,8").check().block_sizes
    [4, 8]
    """

    calibration: str | None = option(None, SHARED_MEANINGS["calibration"] + " (default: solved built-in probe "
                                                                            "items)")
    texts: int = option(64, "calibration texts, drawn by --seed (of a --calibration file with more, or generated)",
                        minimum=1)
    seed: int = option(0, SHARED_MEANINGS["seed"], minimum=0)
    block_sizes: list[int] = option([], "block sizes for angular distance, e.g. 4,8", minimum=1)
    ppl: bool = option(False, "also perplexity increase per skipped layer (a sweep)")
    sweep_table: str | None = option(None, "a sweep table (runs/X/sweep.csv): adds skip_drop per layer")
    sweep_probe: str | None = option(None, "which probe of the sweep table")
    patch_table: str | None = option(None, "a patching table (runs/X/layers.csv): adds patching_effect")


def score(options: ScoreOptions | None = None, *, model: str | None = None, placement: Placement | None = None,
          output: Output | None = None, loaded=None) -> list[dict]:
    """All per-layer scores in one table (BI and angular distance from one pass).

    >>> rows = score(ScoreOptions(block_sizes=[4]), output=Output(out="runs/scores"))  # doctest: +SKIP
    """
    from prunescope.probe.models import load_model

    o = (options or ScoreOptions()).check()
    placement, output = (placement or Placement()).check(), output or Output()
    lm = loaded or load_model(model, **placement.load_kwargs())
    texts = calibration_texts(o.calibration, o.texts, o.seed)
    L = lm.blocks.n_layers
    rows = representation_scores(lm.blocks, lm.tokenizer, texts, block_sizes=o.block_sizes, model_name=lm.name)
    if o.ppl:
        rows += ppl_increase(lm.blocks, lm.tokenizer, texts, model_name=lm.name, show_progress=output.progress)
    if o.sweep_table:
        rows += scores_from_sweep(o.sweep_table, probe=o.sweep_probe, model_name=lm.name)
    if o.patch_table:
        rows += scores_from_patching(o.patch_table, model_name=lm.name)
    for r in rows:
        if str(r["layers"]).isdigit() and int(r["layers"]) >= L:
            raise PrunescopeError(f"a results table scores layer {r['layers']} but {lm.name} has {L} layers")
    if output.out:
        if output.overwrite:  # a rerun rewrites the tables anyway; this also drops an earlier figure
            remove_previous(output.out, SCORE_OUTPUTS)
        write_table(rows, Path(output.out) / "scores")
        if output.plot:
            _plot_scores(rows, Path(output.out) / "scores.png", lm.name)
    return rows


def _plot_scores(rows: list[dict], path: Path, model: str) -> None:
    from prunescope.core.plots import save_figure, plt

    metrics = [m for m in dict.fromkeys(r["metric"] for r in rows) if not m.startswith("angular")]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(8, 1.8 * len(metrics)), squeeze=False, sharex=True,
                             layout="constrained")
    for ax, m in zip(axes[:, 0], metrics):
        pts = sorted(layer_scores(rows, m).items())
        ax.bar([x for x, _ in pts], [y for _, y in pts], color="C0")
        ax.set_ylabel(m, fontsize=8)
    axes[-1, 0].set_xlabel("layer")
    axes[0, 0].set_title(f"{model}: layer scores")
    save_figure(fig, path)


def probe_scorer(blocks, tokenizer, probe: str = "arithmetic_multi", n: int = 32, metric: str = "logit_diff",
                 text: str | None = None, seed: int = 0, plan=None) -> Callable[[list[list[int]]], list[float]]:
    """``score(sets) -> [value]``: a probe metric (or text loss) with each candidate set of layers
    skipped, all sets of one step run as one prefix-reused sweep (in memory, no checkpoints).

    The probe's items are drawn with the pruning defaults (:func:`prunescope.probe.tasks.pruning_probe_options`);
    ``plan``: an already tokenized :class:`prunescope.probe.scoring.ScoringPlan` (any items) instead
    of a probe name. The scorer carries ``metric``, ``higher_is_better`` and ``plan``.
    """
    from prunescope.probe.scoring import ScoringPlan, TextPlan
    from prunescope.probe.sweep import Condition, SweepSettings, sweep_blocks
    from prunescope.probe.tasks import make_items

    if plan is not None:
        higher = True
    elif text:
        plan, metric, higher = TextPlan(tokenizer, calibration_texts(text, n, seed)), "loss", False
    else:
        items = make_items(probe, n=n, seed=seed, **pruning_probe_options(probe))
        plan, higher = ScoringPlan(tokenizer, items), True
        if metric not in plan.metric_names:
            raise PrunescopeError(f"unknown metric {metric!r}: choose one of {', '.join(plan.metric_names)}")

    def score(sets: list[list[int]]) -> list[float]:
        rows = sweep_blocks(blocks, tokenizer, {"eval": plan},
                            SweepSettings(windows=[], sets=sets, show_progress=False))
        val = {r["condition"]: r["value"] for r in rows if r["metric"] == metric}
        return [val[Condition(tuple(sorted(s))).name] for s in sets]

    score.metric, score.higher_is_better, score.plan = metric, higher, plan
    return score


def checkpoint_scorer(model, tokenizer, plan, metric: str, tmp_dir: str | None = None
                      ) -> Callable[[list[list[int]]], list[float]]:
    """``score(sets) -> [value]`` the reference way, for benchmarks and tests: for each candidate,
    write a pruned checkpoint, reload it with transformers (onto the model's device) and score
    ``plan``'s items on it. Slow; :func:`probe_scorer` gives the same values in memory."""
    from transformers import AutoModelForCausalLM

    from prunescope.probe.blocks import Blocks
    from prunescope.probe.scoring import aggregate, score_items

    def score(sets: list[list[int]]) -> list[float]:
        out = []
        for s in sets:
            with tempfile.TemporaryDirectory(dir=tmp_dir) as d:
                pruned = remove_layers(copy.deepcopy(model), s)
                pruned.save_pretrained(d)
                del pruned
                p0 = next(model.parameters())
                reloaded = AutoModelForCausalLM.from_pretrained(d, dtype=p0.dtype, device_map={"": str(p0.device)}).eval()
                out.append(aggregate(score_items(Blocks(reloaded), plan), plan.metric_names)[metric])
        return out

    return score


# strategy name -> plan builder ``(lm, k, protected, options) -> Plan``; read by the CLI choices, the
# pipeline's config check and the docs
STRATEGIES = Registry("strategy")


@STRATEGIES.register("bi", help="the k layers with the lowest Block Influence on calibration texts")
def _bi_plan(lm, k: int, protected: list[int], o: "PruneOptions") -> Plan:
    rows = representation_scores(lm.blocks, lm.tokenizer, calibration_texts(o.calibration, o.texts, o.seed),
                                 model_name=lm.name)
    return lowest_k(layer_scores(rows, "block_influence"), lm.blocks.n_layers, k, protected, "bi", "block_influence")


@STRATEGIES.register("angular", help="the contiguous block of k layers with the lowest angular distance")
def _angular_plan(lm, k: int, protected: list[int], o: "PruneOptions") -> Plan:
    rows = representation_scores(lm.blocks, lm.tokenizer, calibration_texts(o.calibration, o.texts, o.seed), block_sizes=[k],
                                 model_name=lm.name)
    blocks_scores = {int(r["condition"].split(":")[1]): r["value"] for r in rows
                     if r["metric"] == f"angular_distance_n{k}"}
    return lowest_block(blocks_scores, lm.blocks.n_layers, k, protected, f"angular_distance_n{k}")


@STRATEGIES.register("reverse", help="the last k layers before the final one (the paper's Reverse Order)")
def _reverse_plan(lm, k: int, protected: list[int], o: "PruneOptions") -> Plan:
    return reverse_order(lm.blocks.n_layers, k, protected)


@STRATEGIES.register("iterative", help="greedy in-memory search: drop the layer that hurts a probe metric least")
def _iterative_plan(lm, k: int, protected: list[int], o: "PruneOptions", progress: bool = True) -> Plan:
    score = probe_scorer(lm.blocks, lm.tokenizer, o.eval_probe, o.eval_items, o.eval_metric, o.loss_text, seed=o.seed)
    return iterative(score, lm.blocks.n_layers, k, protected, metric=score.metric,
                     higher_is_better=score.higher_is_better, progress=progress)


@STRATEGIES.register("score", help="the k layers with the lowest value of a scores table's metric (--scores-table)")
def _score_plan(lm, k: int, protected: list[int], o: "PruneOptions") -> Plan:
    rows = importance_table(o.scores_table, lm.name)
    score_metric = o.score_metric
    if any(r["metric"] == "patching_effect" for r in rows) and not score_metric:
        score_metric = "patching_effect"
    metrics = sorted({r["metric"] for r in rows})
    score_metric = score_metric or (metrics[0] if len(metrics) == 1 else None)
    if score_metric not in metrics:
        raise PrunescopeError(f"{o.scores_table} holds metrics {metrics}; choose one with --score-metric")
    return lowest_k(layer_scores(rows, score_metric), lm.blocks.n_layers, k, protected, "score", score_metric)


@STRATEGIES.register("skip-drop", help="the k layers whose single skip costs the probes of a sweep table least "
                                        "(--scores-table: mean drop of p_correct over its probes)")
def _skip_drop_plan(lm, k: int, protected: list[int], o: "PruneOptions") -> Plan:
    return lowest_k(skip_drop_scores(o.scores_table, lm.name), lm.blocks.n_layers, k, protected, "skip-drop",
                    "skip_drop_p_correct")


def skip_drop_scores(sweep_table: str | Path, model_name: str) -> dict[int, float]:
    """Per layer, how much skipping it alone lowers ``p_correct`` (the correct answer's share among
    the candidates), averaged over the probes of a sweep table. ``p_correct`` rather than the
    margin accuracy: it is continuous, so layers that keep every item right still rank apart
    (the accuracy ties them at a drop of 0, and ties would decide the plan).

    >>> # skip_drop_scores("runs/x/localize/sweep/sweep.csv", "SmolLM2-135M-Instruct")  -> {0: 0.41, 1: 0.02, ...}
    """
    from prunescope.core.results import read_table

    if not Path(sweep_table).is_file():
        raise PrunescopeError(f"sweep table {sweep_table} does not exist (the skip-drop strategy ranks layers by a "
                              "sweep: prunescope sweep --out DIR writes DIR/sweep.csv)")
    probes = sorted({r["probe"] for r in read_table(sweep_table) if r["metric"] == "p_correct"})
    if not probes:
        raise PrunescopeError(f"{sweep_table} has no p_correct rows: give the sweep table of prunescope sweep")
    per_probe = [layer_scores(scores_from_sweep(sweep_table, probe=p, metric="p_correct", model_name=model_name),
                              "skip_drop") for p in probes]
    return {layer: sum(s[layer] for s in per_probe) / len(per_probe) for layer in per_probe[0]}


STRATEGIES.register("iterative-generated", iterative_generated_plan,
                    help="the paper's selection: greedy, drop the layer that keeps the accuracy of generated answers "
                         "(GSM8K + HumanEval, held-out docs) highest")


@dataclass
class PruneOptions(Options):
    """Settings of ``prunescope prune`` (:func:`prune`).

    >>> PruneOptions(strategy="reverse", ratio=0.25, protect="20,23").check().protect
    [20, 23]
    """

    strategy: str = option("bi", "which layers to drop (see docs/guide.md: strategies)", choices=STRATEGIES)
    drop: int | None = option(None, "layers to drop", minimum=1)
    ratio: float | None = option(None, "fraction of layers to drop, e.g. 0.25")
    protect: list[int] = option([], "layers never dropped, e.g. 3,7", minimum=0)
    protect_from: Paths = option([], "results table(s) whose top layers are protected (runs/X/layers.csv or patch.csv "
                                     "from patching, sweep.csv from a sweep); with several, the union of each one's "
                                     "top layers", cli=Flag(metavar="TABLE"))
    protect_top: int | None = option(None, "how many top layers of each --protect-from table", minimum=1)
    protect_metric: str | None = option(None, "metric of --protect-from to rank by")
    protect_probe: str | None = option(None, "probe of a --protect-from sweep table")
    scores_table: str | None = option(None, "table for --strategy score (sweep, patching or score table)")
    score_metric: str | None = option(None, "metric of --scores-table (lowest values are dropped)")
    calibration: str | None = option(None, SHARED_MEANINGS["calibration"] + " (default: 64 solved built-in probe "
                                                                            "items; bi and angular)")
    texts: int = option(64, "calibration texts, drawn by --seed (of a --calibration file with more, or generated)",
                        minimum=1)
    loss_text: str | None = option(None, SHARED_MEANINGS["loss_text"] + " (default: none; given, iterative keeps "
                                                                        "its loss low instead of --eval-metric)")
    eval_probe: str = option("arithmetic_multi", "iterative: probe to keep (default: 3-shot addition)",
                             choices=PROBES)
    eval_items: int = option(32, "iterative: probe items (or --loss-text texts) per candidate evaluation", minimum=1)
    eval_metric: str = option("logit_diff", "iterative: probe metric to keep high", choices=METRICS, what="metric")
    select_tasks: list[str] = option(["gsm8k", "humaneval"], "iterative-generated: benchmarks whose held-out docs "
                                                             "(the last --select-docs of each) score every "
                                                             "candidate by the accuracy of generated answers",
                                     choices=select_task_names, what="task")
    select_docs: int = option(32, "iterative-generated: held-out docs per select task (the last ones of each; an "
                                  "evaluation of the pruned model must stay below them)", minimum=1)
    slots: int = option(64, SHARED_MEANINGS["slots"], minimum=1)
    select_cache: str | None = option(None, "iterative-generated: a JSONL log of scored layer sets, shared by "
                                            "searches on the same model (a set scored once is read back, and "
                                            "a crashed search resumes)")
    seed: int = option(0, SHARED_MEANINGS["seed"], minimum=0)

    def validate(self) -> None:
        if self.drop is not None and self.ratio is not None:
            raise PrunescopeError("give --drop or --ratio, not both")
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise PrunescopeError(f"--ratio must be between 0 and 1 (exclusive), got {self.ratio}")
        if bool(self.protect_from) != (self.protect_top is not None):
            raise PrunescopeError("--protect-from and --protect-top go together: a table and how many top layers")
        if self.strategy == "skip-drop" and not self.scores_table:
            raise PrunescopeError("--strategy skip-drop needs --scores-table TABLE (a sweep table: runs/X/sweep.csv)")
        if self.strategy == "score" and not self.scores_table:
            raise PrunescopeError("--strategy score needs --scores-table TABLE (a sweep, patching or score table)")


PLAN_RECORD = "prunescope_plan.json"   # in every checkpoint prunescope prune writes


def _check_prune_out(out: Path, overwrite: bool) -> None:
    """An existing ``--out`` is refused, and with ``--overwrite`` replaced only when it is a pruned
    checkpoint of prunescope's (or empty): never a folder of the user's own."""
    if not out.exists():
        return
    if not overwrite:
        raise PrunescopeError(f"{out} already exists; choose another --out or pass --overwrite")
    if not out.is_dir() or (any(out.iterdir()) and not (out / PLAN_RECORD).is_file()):
        raise PrunescopeError(f"{out} is not a pruned checkpoint (no {PLAN_RECORD}), so --overwrite leaves it; "
                              "choose another --out")


def prune_model(options: PruneOptions | None = None, *, model: str | None = None, placement: Placement | None = None,
          output: Output | None = None, loaded=None) -> Plan:
    """Choose layers with a strategy (honouring protected layers) and write the pruned checkpoint.

    ``protect_from``: one results table or several (their ``protect_top`` layers each, united).
    ``seed``: which built-in calibration texts (BI, angular) and probe items (iterative) are drawn.

    >>> plan = prune_model(PruneOptions(strategy="bi", ratio=0.25), output=Output(out="pruned/bi25"))  # doctest: +SKIP
    """
    from prunescope.probe.models import load_model

    o = (options or PruneOptions()).check()
    placement, output = (placement or Placement()).check(), output or Output()
    out = output.out
    if out:
        _check_prune_out(Path(out), output.overwrite)
    lm = loaded or load_model(model, **placement.load_kwargs())
    k = count_to_drop(lm.blocks.n_layers, o.drop, o.ratio)
    protected = list(o.protect)
    for table in o.protect_from:
        rows = importance_table(table, lm.name, o.protect_probe)
        protected += protected_from_table(rows, o.protect_top, o.protect_metric, None)
    protected = sorted(set(protected))
    build = STRATEGIES.get(o.strategy)
    plan = build(lm, k, protected, o, progress=output.progress) if o.strategy.startswith("iterative") else \
        build(lm, k, protected, o)
    plan.model = lm.name
    if out:
        save_pruned(lm.model, lm.tokenizer, plan.drop, out, overwrite=output.overwrite,
                    record={"plan": plan.to_json(), "source_model": lm.path, "source_name": lm.name})
        plan.save(Path(out) / "plan.json")
    return plan
