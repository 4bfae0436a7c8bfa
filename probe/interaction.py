"""How damage adds up when several layers go: pairs skipped together, and layers removed one by one.

A single-layer sweep says what each layer costs alone; pruning removes several. Two views of the
difference, both read from sweep rows (:func:`prunescope.probe.sweep.sweep_blocks` runs the skip
sets, prefix-reused like every other condition):

* **pair interaction**: for layers ``i < j`` of a range, ``drop(i, j) - (drop(i) + drop(j))``, where
  ``drop(S) = value(none) - value(skip S)`` of a probe metric. About 0: the damage adds up; above 0:
  the pair costs more than its parts (the layers back each other up, so one alone looked harmless);
  below 0: less (they do overlapping work, or the metric has bottomed out). Rows: condition of the
  pair (``skip:3,9``; adjacent layers ``skip:3-4``), metric ``interaction_<metric>``.
* **cumulative removal**: the probe metric with the first ``k`` layers of an order skipped, ``k =
  0, 1, ...``. Orders: ``bi`` (lowest Block Influence first), ``skip-drop`` (the single-layer
  sweep's smallest drop first) or a results table's per-layer scores (lowest first: a patching
  ``layers.csv``, a ``prunescope score`` table, another sweep). Rows: condition ``cumulative:<k>``,
  ``layers`` the layers removed so far in removal order, ``order`` the order's name.

>>> rows = [{"model": "m", "probe": "p", "condition": c, "layers": ls, "metric": "margin_accuracy", "value": v,
...          "n": 10, "seed": 0} for c, ls, v in (("none", "", 0.9), ("skip:1", "1", 0.8), ("skip:2", "2", 0.7),
...                                                ("skip:1-2", "1 2", 0.2))]
>>> [round(r["value"], 2) for r in interaction_rows(rows, [1, 2])]
[0.4]
>>> [(r["condition"], r["layers"], r["value"]) for r in cumulative_rows(rows, {"skip-drop": [1, 2]})]
[('cumulative:0', '', 0.9), ('cumulative:1', '1', 0.8), ('cumulative:2', '1 2', 0.2)]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

from prunescope.core.errors import PrunescopeError
from prunescope.core.results import read_table
from prunescope.probe.blocks import Blocks, residual_boundaries

# the skip-drop order ranks layers by the first of these a probe has: p_correct as the prune
# strategy skip-drop does (continuous, so layers that keep every item right still rank apart)
ORDER_METRICS = ("p_correct", "exact_match", "token_accuracy")
# orders computed in the sweep; anything else names a results table
ORDER_NAMES = ("bi", "skip-drop")


def parse_layers(text: str) -> list[int]:
    """Layers from text: a range ``12-27``, a list ``3,5,9`` or both (``0-3,9``).

    >>> parse_layers("12-15"), parse_layers("0-1,9")
    ([12, 13, 14, 15], [0, 1, 9])
    """
    out: list[int] = []
    for tok in str(text).split(","):
        tok = tok.strip()
        if not tok:
            continue
        try:
            a, _, b = tok.partition("-")
            out += list(range(int(a), int(b or a) + 1))
        except ValueError:
            raise PrunescopeError(f"bad layers {text!r}: give a range like 12-27 or a list like 3,5,9") from None
    return out


def pair_sets(layers: Iterable[int]) -> list[tuple[int, ...]]:
    """The skip sets a pair interaction needs: each layer alone, then every pair.

    >>> pair_sets([4, 2, 3])
    [(2,), (3,), (4,), (2, 3), (2, 4), (3, 4)]
    """
    ls = sorted(set(layers))
    return [(i,) for i in ls] + [(i, j) for a, i in enumerate(ls) for j in ls[a + 1:]]


def cumulative_sets(order: Sequence[int]) -> list[tuple[int, ...]]:
    """The skip sets of a cumulative curve: the first ``k`` layers of ``order``, ``k = 1, 2, ...``.

    >>> cumulative_sets([5, 1, 3])
    [(5,), (1, 5), (1, 3, 5)]
    """
    return [tuple(sorted(order[:k])) for k in range(1, len(order) + 1)]


def _set_rows(rows: Iterable[dict]) -> dict[tuple[int, ...], list[dict]]:
    """Sweep rows of whole-layer skip sets (and ``none``), by the set of skipped layers."""
    out: dict[tuple[int, ...], list[dict]] = {}
    for r in rows:
        cond, layers = str(r["condition"]), str(r.get("layers") or "").split()
        if str(r["metric"]).startswith("interaction_") or not (cond == "none" or cond.startswith("skip:")):
            continue
        if all(t.isdigit() for t in layers):
            out.setdefault(tuple(sorted(int(t) for t in layers)), []).append(r)
    return out


def interaction_rows(rows: Sequence[dict], layers: Iterable[int]) -> list[dict]:
    """Per probe, metric and pair of ``layers``: the pair's drop minus the sum of the single drops
    (``drop = value(none) - value(skip)``), as rows of the pair's condition with metric
    ``interaction_<metric>``. Pairs missing a row (a metric the items lack) get none."""
    by_set = _set_rows(rows)
    value = {(r["probe"], r["metric"], key): r["value"] for key, rs in by_set.items() for r in rs}
    out = []
    for pair in pair_sets(layers):
        if len(pair) != 2:
            continue
        for r in by_set.get(pair, []):
            p, m = r["probe"], r["metric"]
            parts = [value.get((p, m, key)) for key in ((), (pair[0],), (pair[1],))]
            if any(v is None for v in parts):
                continue
            none, a, b = parts
            out.append({**r, "metric": f"interaction_{m}", "value": (none - r["value"]) - (none - a) - (none - b)})
    return out


def cumulative_rows(rows: Sequence[dict], orders: Mapping[str, Sequence[int]]) -> list[dict]:
    """Per order, the rows of ``none`` and of its first ``k`` layers skipped, as condition
    ``cumulative:<k>`` with ``layers`` in removal order and the order's name in ``order``."""
    by_set = _set_rows(rows)
    out = []
    for name, order in orders.items():
        for k in range(len(order) + 1):
            for r in by_set.get(tuple(sorted(order[:k])), []):
                out.append({**r, "condition": f"cumulative:{k}", "layers": " ".join(map(str, order[:k])),
                            "order": name})
    return out


def single_skip_drops(rows: Sequence[dict]) -> tuple[dict[int, float], str]:
    """Per layer, how much skipping it alone lowers a probe metric, averaged over the probes that have
    it: the first of :data:`ORDER_METRICS` any probe has. Returns the drops and ``skip_drop_<metric>``.

    >>> rows = [{"probe": "p", "condition": c, "layers": ls, "metric": "p_correct", "value": v}
    ...         for c, ls, v in (("none", "", 0.9), ("skip:0", "0", 0.2), ("skip:1", "1", 0.85))]
    >>> single_skip_drops(rows)
    ({0: 0.7, 1: 0.05}, 'skip_drop_p_correct')
    """
    by_set = _set_rows(rows)
    metric = next((m for m in ORDER_METRICS if any(r["metric"] == m for r in by_set.get((), []))), None)
    if metric is None:
        raise PrunescopeError(f"no unskipped row of {', '.join(ORDER_METRICS)}: the skip-drop order needs a sweep "
                              "with condition none and single-layer skips")
    base = {r["probe"]: r["value"] for r in by_set[()] if r["metric"] == metric}
    drops: dict[int, list[float]] = {}
    for key, rs in by_set.items():
        for r in rs:
            if len(key) == 1 and r["metric"] == metric and r["probe"] in base:
                drops.setdefault(key[0], []).append(base[r["probe"]] - r["value"])
    if not drops:
        raise PrunescopeError("no single-layer skip rows: the skip-drop order needs the sweep of each layer")
    # rounded: averaging order must not break ties between layers whose drops are equal
    return {k: round(sum(v) / len(v), 12) for k, v in sorted(drops.items())}, f"skip_drop_{metric}"


def layer_order(scores: Mapping[int, float]) -> list[int]:
    """Layers by score, lowest first (ties: the lower layer first).

    >>> layer_order({0: 0.5, 1: 0.1, 2: 0.1})
    [1, 2, 0]
    """
    return sorted(scores, key=lambda layer: (scores[layer], layer))


@torch.no_grad()
def block_influence(blocks: Blocks, tokenizer, texts: Sequence[str], *, batch_size: int = 8,
                    max_length: int = 512) -> dict[int, float]:
    """Block Influence per layer (ShortGPT): 1 - mean over real tokens of cos(h_in, h_out), the
    same number as ``prunescope.prune.scores.representation_scores`` on the same texts.

    >>> from prunescope.probe.tiny import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> sorted(block_influence(Blocks(model), tok, ["a b c d", "1 + 2 = 3"]))
    [0, 1, 2, 3]
    """
    L = blocks.n_layers
    total, count = torch.zeros(L, dtype=torch.float64), 0
    for hs in residual_boundaries(blocks, tokenizer, texts, batch_size=batch_size, max_length=max_length):
        count += hs[0].shape[0]
        for i in range(L):
            total[i] += (1 - torch.nn.functional.cosine_similarity(hs[i], hs[i + 1], dim=-1)).sum().cpu()
    if count == 0:
        raise PrunescopeError("no tokens to measure Block Influence on: give at least one non-empty text")
    return {i: (total[i] / count).item() for i in range(L)}


def table_scores(path: str | Path, model_name: str | None = None) -> tuple[dict[int, float], str]:
    """Per-layer scores of a results table and what they are: a sweep table gives its single-layer
    drops (:func:`single_skip_drops`), a patching ``layers.csv`` (or the ``patch.csv`` beside it) its
    ``patching_effect`` (method exact where there are several, averaged over probes), a score table
    its ``block_influence``, or the one per-layer metric it holds."""
    path = Path(path)
    if path.name.startswith("patch.") and (path.parent / f"layers{path.suffix}").is_file():
        path = path.parent / f"layers{path.suffix}"
    if not path.is_file():
        raise PrunescopeError(f"results table {path} does not exist (give bi, skip-drop or a table: a patching "
                              "layers.csv, a prunescope score table or a sweep.csv)")
    rows = read_table(path, required=("model", "probe", "condition", "layers", "metric", "value"))
    models = sorted({r["model"] for r in rows})
    if model_name is not None and models and model_name not in models:
        raise PrunescopeError(f"{path} holds results for {models}, not for the swept model ({model_name}); pass a "
                              "table made with this model")
    if any(r["condition"] == "none" for r in rows):
        return single_skip_drops(rows)
    per_layer = [r for r in rows if str(r["layers"]).strip().isdigit()]
    metrics = sorted({r["metric"] for r in per_layer})
    metric = next((m for m in ("patching_effect", "block_influence") if m in metrics), None)
    metric = metric or (metrics[0] if len(metrics) == 1 else None)
    if metric is None:
        raise PrunescopeError(f"{path} holds per-layer metrics {metrics}; give a table of one (or of patching_effect "
                              "or block_influence)")
    sel = [r for r in per_layer if r["metric"] == metric]
    methods = {r.get("method") for r in sel}
    if len(methods) > 1:
        sel = [r for r in sel if r.get("method") == ("exact" if "exact" in methods else sorted(methods)[0])]
    values: dict[int, list[float]] = {}
    for r in sel:
        values.setdefault(int(r["layers"]), []).append(float(r["value"]))
    return {k: sum(v) / len(v) for k, v in sorted(values.items())}, metric


def resolve_orders(sources: Iterable[str], rows: Sequence[dict], blocks: Blocks, tokenizer,
                   texts: Sequence[str], model_name: str | None = None) -> dict[str, list[int]]:
    """The layer order of each source, by name: ``bi`` (Block Influence on ``texts``), ``skip-drop``
    (the single-layer drops in ``rows``) or a table path (:func:`table_scores`, named
    ``<metric>:<path>``). Layers out of the model's range are refused."""
    orders = {}
    for src in sources:
        if src == "bi":
            name, scores = "bi", block_influence(blocks, tokenizer, texts)
        elif src == "skip-drop":
            name, scores = "skip-drop", single_skip_drops(rows)[0]
        else:
            scores, metric = table_scores(src, model_name)
            name = f"{metric}:{src}"
        bad = [layer for layer in scores if not 0 <= layer < blocks.n_layers]
        if bad:
            raise PrunescopeError(f"{src} scores layers {bad}, but the model has {blocks.n_layers} layers")
        orders[name] = layer_order(scores)
    return orders
