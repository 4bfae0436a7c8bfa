"""``prunescope score`` and ``prunescope prune``: score layers, choose a plan, write the checkpoint.

>>> # score(out="runs/scores")                       -> runs/scores/scores.csv, scores.png
>>> # prune(strategy="bi", ratio=0.25, protect_from="runs/arith/layers.csv", protect_top=4,
>>> #       out="pruned/bi25")                       -> a standard HF checkpoint + prunescope_plan.json
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from probe.errors import PrunescopeError
from probe.results import write_table

from .scores import (
    importance_table, layer_scores, ppl_increase, representation_scores, scores_from_patching, scores_from_sweep,
)
from .strategies import (
    STRATEGIES, count_to_drop, iterative, lowest_block, lowest_k, protected_from_table, reverse_order,
)
from .surgery import remove_layers, save_pruned


def calibration_texts(text: str | Path | None, n: int = 64, seed: int = 0) -> list[str]:
    """Calibration texts: a user file, or (default) solved probe items — few-shot arithmetic with
    answers, bracket and code contexts closed, copy lists — so scores run offline."""
    from probe.scoring import load_texts
    from probe.tasks import make_items

    if text:
        return load_texts(text)[:n]
    texts = []
    for probe, opts in (("arithmetic_multi", {"shots": 3}), ("brackets", {}), ("copy", {})):
        texts += [it.prompt + it.answer for it in make_items(probe, n=max(1, n // 3), seed=seed, **opts)]
    return texts


def score(model: str | None = None, out: str | Path | None = None, *, text: str | None = None, n_texts: int = 64,
          seed: int = 0,
          block_sizes: Sequence[int] = (), ppl: bool = False, sweep_table: str | None = None,
          sweep_probe: str | None = None, patch_table: str | None = None, device: str = "cpu",
          dtype: str = "float32", loaded=None, show_progress: bool = True) -> list[dict]:
    """All per-layer scores in one table (BI and angular distance from one pass)."""
    from probe.models import load_model

    lm = loaded or load_model(model, device=device, dtype=dtype)
    texts = calibration_texts(text, n_texts, seed)
    L = lm.blocks.n_layers
    rows = representation_scores(lm.blocks, lm.tokenizer, texts, block_sizes=block_sizes, model_name=lm.name)
    if ppl:
        rows += ppl_increase(lm.blocks, lm.tokenizer, texts, model_name=lm.name, show_progress=show_progress)
    if sweep_table:
        rows += scores_from_sweep(sweep_table, probe=sweep_probe, model_name=lm.name)
    if patch_table:
        rows += scores_from_patching(patch_table, model_name=lm.name)
    for r in rows:
        if str(r["layers"]).isdigit() and int(r["layers"]) >= L:
            raise PrunescopeError(f"a results table scores layer {r['layers']} but {lm.name} has {L} layers")
    if out:
        write_table(rows, Path(out) / "scores")
        _plot_scores(rows, Path(out) / "scores.png", lm.name)
    return rows


def _plot_scores(rows: list[dict], path: Path, model: str) -> None:
    from probe.plots import _save, plt

    metrics = [m for m in dict.fromkeys(r["metric"] for r in rows) if not m.startswith("angular")]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(8, 1.8 * len(metrics)), squeeze=False, sharex=True,
                             layout="constrained")
    for ax, m in zip(axes[:, 0], metrics):
        pts = sorted(layer_scores(rows, m).items())
        ax.bar([x for x, _ in pts], [y for _, y in pts], color="C0")
        ax.set_ylabel(m, fontsize=8)
    axes[-1, 0].set_xlabel("layer")
    axes[0, 0].set_title(f"{model}: layer scores")
    _save(fig, path)


def make_evaluator(blocks, tokenizer, probe: str = "arithmetic_multi", n: int = 32, metric: str = "logit_diff",
                   text: str | None = None, seed: int = 0, probe_options: dict | None = None, plan=None):
    """``evaluate(sets) -> [value]``: a probe metric (or text loss) with each set of layers skipped,
    all sets of one step run as one prefix-reused sweep (in memory, no checkpoints). ``plan``: an
    already tokenized :class:`probe.scoring.ScoringPlan` instead of a probe name."""
    from probe.scoring import ScoringPlan, TextPlan
    from probe.sweep import Condition, sweep_blocks
    from probe.tasks import make_items

    if plan is not None:
        higher = True
    elif text:
        plan, metric, higher = TextPlan(tokenizer, calibration_texts(text, n)), "loss", False
    else:
        opts = probe_options if probe_options is not None else (
            {"shots": 3, "ops": "+"} if probe == "arithmetic_multi" else {})
        plan, higher = ScoringPlan(tokenizer, make_items(probe, n=n, seed=seed, **opts)), True
        if metric not in plan.metric_names:
            raise PrunescopeError(f"unknown metric {metric!r}: choose one of {', '.join(plan.metric_names)}")

    def evaluate(sets: list[list[int]]) -> list[float]:
        rows = sweep_blocks(blocks, tokenizer, {"eval": plan}, windows=[], sets=sets, show_progress=False)
        val = {r["condition"]: r["value"] for r in rows if r["metric"] == metric}
        return [val[Condition(tuple(sorted(s))).name] for s in sets]

    evaluate.metric, evaluate.higher_is_better, evaluate.plan = metric, higher, plan
    return evaluate


def reference_evaluator(model, tokenizer, plan, metric: str, tmp_dir: str | None = None):
    """The reference approach for benchmarks and tests: for each candidate, write a pruned
    checkpoint, reload it with transformers (onto the model's device) and score it."""
    from transformers import AutoModelForCausalLM

    from probe.blocks import Blocks
    from probe.scoring import aggregate, score_items

    def evaluate(sets: list[list[int]]) -> list[float]:
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

    return evaluate


def prune(model: str | None = None, strategy: str = "bi", out: str | Path | None = None, *, n: int | None = None,
          ratio: float | None = None, protect: Sequence[int] = (), protect_from: str | Sequence[str] | None = None,
          protect_top: int | None = None, protect_metric: str | None = None, protect_probe: str | None = None,
          scores_table: str | None = None, score_metric: str | None = None, text: str | None = None,
          eval_probe: str = "arithmetic_multi", eval_n: int = 32, eval_metric: str = "logit_diff",
          overwrite: bool = False, seed: int = 0, device: str = "cpu", dtype: str = "float32", loaded=None,
          show_progress: bool = True):
    """Choose layers with a strategy (honouring protected layers) and write the pruned checkpoint.

    ``protect_from``: one results table or several (their ``protect_top`` layers each, united).
    ``seed``: which built-in calibration texts (BI, angular) and probe items (iterative) are drawn."""
    from probe.models import load_model

    if strategy not in STRATEGIES:
        raise PrunescopeError(f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if out and Path(out).exists() and not overwrite:
        raise PrunescopeError(f"{out} already exists; choose another --out or pass --overwrite")
    if (protect_from is None) != (protect_top is None):
        raise PrunescopeError("--protect-from and --protect-top go together: a table and how many top layers")
    if strategy == "score" and not scores_table:
        raise PrunescopeError("--strategy score needs --scores TABLE (a sweep, patching or score table)")
    lm = loaded or load_model(model, device=device, dtype=dtype)
    L = lm.blocks.n_layers
    k = count_to_drop(L, n, ratio)
    protected = list(protect)
    for table in [protect_from] if isinstance(protect_from, (str, Path)) else (protect_from or []):
        rows = importance_table(table, lm.name, protect_probe)
        protected += protected_from_table(rows, protect_top, protect_metric, None)
    protected = sorted(set(protected))

    if strategy == "reverse":
        plan = reverse_order(L, k, protected)
    elif strategy == "bi":
        rows = representation_scores(lm.blocks, lm.tokenizer, calibration_texts(text, seed=seed), model_name=lm.name)
        plan = lowest_k(layer_scores(rows, "block_influence"), L, k, protected, "bi", "block_influence")
    elif strategy == "angular":
        rows = representation_scores(lm.blocks, lm.tokenizer, calibration_texts(text, seed=seed), block_sizes=[k],
                                     model_name=lm.name)
        blocks_scores = {int(r["condition"].split(":")[1]): r["value"] for r in rows
                         if r["metric"] == f"angular_distance_n{k}"}
        plan = lowest_block(blocks_scores, L, k, protected, f"angular_distance_n{k}")
    elif strategy == "score":
        rows = importance_table(scores_table, lm.name)
        if any(r["metric"] == "patching_effect" for r in rows) and not score_metric:
            score_metric = "patching_effect"
        metrics = sorted({r["metric"] for r in rows})
        score_metric = score_metric or (metrics[0] if len(metrics) == 1 else None)
        if score_metric not in metrics:
            raise PrunescopeError(f"{scores_table} holds metrics {metrics}; choose one with --score-metric")
        plan = lowest_k(layer_scores(rows, score_metric), L, k, protected, "score", score_metric)
    else:
        ev = make_evaluator(lm.blocks, lm.tokenizer, eval_probe, eval_n, eval_metric, text, seed=seed)
        plan = iterative(ev, L, k, protected, metric=ev.metric, higher_is_better=ev.higher_is_better,
                         progress=show_progress)
    plan.model = lm.name
    if out:
        save_pruned(lm.model, lm.tokenizer, plan.drop, out, overwrite=overwrite,
                    record={"plan": plan.to_json(), "source_model": lm.path, "source_name": lm.name})
        plan.save(Path(out) / "plan.json")
    return plan


@torch.no_grad()
def probe_accuracy(model_dir: str | Path, probes: Sequence[str] = ("arithmetic_multi", "brackets", "copy"),
                   n: int = 60, device: str = "cpu", loaded=None) -> dict[str, float]:
    """Accuracy of a (pruned) checkpoint on the built-in probes (3-shot addition, brackets, copy)."""
    from probe.models import load_model
    from probe.scoring import ScoringPlan, aggregate, score_items
    from probe.tasks import make_items

    lm = loaded or load_model(model_dir, device=device)
    out = {}
    for p in probes:
        opts = {"shots": 3, "ops": "+"} if p == "arithmetic_multi" else {}
        out[p] = aggregate(score_items(lm.blocks, ScoringPlan(lm.tokenizer, make_items(p, n=n, **opts))))["accuracy"]
    return out
