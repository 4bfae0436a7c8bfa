"""Layer-importance scores, one tidy table per model (the sweep / patching table format).

* ``block_influence`` (ShortGPT): BI_l = 1 - mean over tokens of cos(h_in_l, h_out_l);
* ``angular_distance_n{k}`` (Gromov et al.): arccos(cos(h_in_l, h_out_{l+k-1})) / pi, averaged
  over tokens, for the block of k layers starting at l;
* ``ppl_increase``: perplexity on the calibration texts with layer l skipped minus without;
* ``skip_drop``: a probe metric without skips minus with layer l skipped (from a sweep table);
* ``patching_effect``: the per-layer patching effect (from a ``prunescope patch`` layers table).

BI and every angular distance come from one forward pass that caches the residual stream
entering each layer. Rows: ``condition = layer:<l>``, ``layers = "<l>"`` (for angular: the block),
``metric`` as above, ``value``. Higher = more important, except that a *low* BI or angular
distance marks a layer (block) that changes little and is safe to drop.

>>> from prunescope.probe.tiny import tiny_model
>>> from prunescope.probe.blocks import Blocks
>>> model, tok = tiny_model("llama")
>>> rows = representation_scores(Blocks(model), tok, ["a b c d e f", "1 + 2 = 3"], block_sizes=[2])
>>> sorted({r["metric"] for r in rows})
['angular_distance_n2', 'block_influence']
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from prunescope.probe.blocks import Blocks, residual_boundaries
from prunescope.core.errors import PrunescopeError
from prunescope.core.results import read_table
from prunescope.probe.scoring import canonical_metric


def _row(model: str, source: str, layer_label: str, layers: str, metric: str, value: float, n: int) -> dict:
    return {"model": model, "probe": source, "condition": f"layer:{layer_label}", "layers": layers,
            "metric": metric, "value": value, "n": n, "seed": 0}


@torch.no_grad()
def representation_scores(blocks: Blocks, tokenizer, texts: Sequence[str], *, block_sizes: Iterable[int] = (),
                          batch_size: int = 8, max_length: int = 512, model_name: str = "model",
                          source: str = "calibration") -> list[dict]:
    """Block Influence per layer and angular distance per block, from one cached pass."""
    L = blocks.n_layers
    block_sizes = list(block_sizes)
    for k in block_sizes:
        if not 1 <= k < L:
            raise PrunescopeError(f"angular block size {k} must be between 1 and {L - 1}")
    bi_sum = torch.zeros(L, dtype=torch.float64)
    ang_sum = {k: torch.zeros(L - k + 1, dtype=torch.float64) for k in block_sizes}
    count = 0
    for hs in residual_boundaries(blocks, tokenizer, texts, batch_size=batch_size, max_length=max_length):
        count += hs[0].shape[0]
        for i in range(L):
            bi_sum[i] += (1 - torch.nn.functional.cosine_similarity(hs[i], hs[i + 1], dim=-1)).sum().cpu()
        for k in block_sizes:
            for i in range(L - k + 1):
                cos = torch.nn.functional.cosine_similarity(hs[i], hs[i + k], dim=-1).clamp(-1, 1)
                ang_sum[k][i] += (torch.arccos(cos) / math.pi).sum().cpu()
    if count == 0:
        raise PrunescopeError("no calibration tokens: give at least one non-empty text")
    rows = [_row(model_name, source, str(i), str(i), "block_influence", (bi_sum[i] / count).item(), len(texts))
            for i in range(L)]
    for k in block_sizes:
        for i in range(L - k + 1):
            rows.append(_row(model_name, source, str(i), " ".join(map(str, range(i, i + k))),
                             f"angular_distance_n{k}", (ang_sum[k][i] / count).item(), len(texts)))
    return rows


def ppl_increase(blocks: Blocks, tokenizer, texts: Sequence[str], *, model_name: str = "model",
                 show_progress: bool = False) -> list[dict]:
    """Perplexity with each single layer skipped minus the unpruned perplexity (prefix-reused sweep)."""
    from prunescope.probe.scoring import TextPlan
    from prunescope.probe.sweep import SweepSettings, sweep_blocks

    rows = sweep_blocks(blocks, tokenizer, {"calibration": TextPlan(tokenizer, list(texts))},
                        SweepSettings(windows=[1], model_name=model_name, show_progress=show_progress))
    ppl = {r["condition"]: r["value"] for r in rows if r["metric"] == "ppl"}
    return [_row(model_name, "calibration", str(i), str(i), "ppl_increase", ppl[f"skip:{i}"] - ppl["none"], len(texts))
            for i in range(blocks.n_layers)]


def scores_from_sweep(path: str | Path, *, probe: str | None = None, metric: str = "margin_accuracy",
                      model_name: str | None = None) -> list[dict]:
    """``skip_drop`` per layer from a sweep table: value(none) - value(skip:l). A table written
    before the margin metric's rename says ``accuracy``: it is read as ``margin_accuracy``."""
    metric = canonical_metric(metric)
    rows = _read_for_model(path, model_name)
    probes = sorted({r["probe"] for r in rows})
    probe = probe or (probes[0] if len(probes) == 1 else None)
    if probe not in probes:
        raise PrunescopeError(f"{path} holds probes {probes}; choose one (score: --sweep-probe, prune: "
                              "--protect-probe)")
    sel = {r["condition"]: r["value"] for r in rows
           if r["probe"] == probe and canonical_metric(r["metric"]) == metric}
    if "none" not in sel:
        raise PrunescopeError(f"{path} has no '{metric}' row for condition none of probe {probe}")
    out = []
    for cond, v in sel.items():
        if cond.startswith("skip:") and cond[5:].isdigit():
            out.append(_row(rows[0]["model"], probe, cond[5:], cond[5:], "skip_drop", sel["none"] - v, rows[0]["n"]))
    return sorted(out, key=lambda r: int(r["layers"]))


def _per_layer_table(path: str | Path) -> Path:
    """A patching run's ``patch.csv`` holds one row per cell; its per-layer table sits beside it."""
    path = Path(path)
    if path.name.startswith("patch.") and (path.parent / f"layers{path.suffix}").is_file():
        return path.parent / f"layers{path.suffix}"
    return path


def importance_table(path: str | Path, model_name: str, probe: str | None = None) -> list[dict]:
    """Per-layer rows from any results table of this model: a sweep becomes ``skip_drop``, a
    patching ``patch.csv`` is read through its ``layers.csv``, score tables are read as they are."""
    path = _per_layer_table(path)
    rows = _read_for_model(path, model_name)
    if any(canonical_metric(r["metric"]) == "margin_accuracy" for r in rows):
        return scores_from_sweep(path, probe=probe, model_name=model_name)
    return rows


def scores_from_patching(path: str | Path, *, method: str = "exact", model_name: str | None = None) -> list[dict]:
    """``patching_effect`` per layer from a patching ``layers.csv`` (or ``patch.csv``)."""
    path = _per_layer_table(path)
    rows = [r for r in _read_for_model(path, model_name) if r["metric"] == "patching_effect"]
    methods = {r.get("method") for r in rows}
    if method not in methods:
        method = next(iter(methods)) if len(methods) == 1 else method
    rows = [r for r in rows if r.get("method") == method]
    if not rows:
        raise PrunescopeError(f"{path} holds no patching_effect rows for method {method!r}")
    return [_row(r["model"], r["probe"], r["layers"], r["layers"], "patching_effect", float(r["value"]), r["n"])
            for r in rows]


def _read_for_model(path: str | Path, model_name: str | None) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise PrunescopeError(f"results table {path} does not exist")
    rows = read_table(path, required=("model", "probe", "condition", "layers", "metric", "value"))
    if not rows:
        raise PrunescopeError(f"results table {path} is empty")
    models = {r["model"] for r in rows}
    if model_name is not None and model_name not in models:
        raise PrunescopeError(f"{path} holds results for {sorted(models)}, not for the model being pruned "
                              f"({model_name}); pass a table made with this model")
    return rows


def layer_scores(rows: Iterable[dict], metric: str) -> dict[int, float]:
    """``{layer: value}`` for one metric of a score table (single-layer rows only)."""
    out = {}
    for r in rows:
        if r["metric"] == metric and str(r["layers"]).strip().isdigit():
            out[int(r["layers"])] = float(r["value"])
    if not out:
        raise PrunescopeError(f"no per-layer '{metric}' scores in the table")
    return out
