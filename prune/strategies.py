"""Which layers to drop: a :class:`Plan` (layers, scores, reasons) from each strategy.

* ``reverse``  — the last k layers before the final one (the paper's Reverse Order);
* ``bi``       — the k layers with the lowest Block Influence;
* ``angular``  — the contiguous block of k layers with the lowest angular distance;
* ``score``    — the k layers with the lowest value of any per-layer score (a sweep's skip drop,
  patching effect, perplexity increase, ...);
* ``iterative``— greedy: each step drops the layer whose removal hurts a metric least, every
  candidate scored in memory by skipping layers on the block handle (no checkpoints).

Every strategy takes a count or a ratio and protected layers, which are never dropped. The
registry of names (``prunescope.prune.commands.STRATEGIES``) maps each to the function that builds its plan.

>>> plan = reverse_order(30, 3, protected=[27])
>>> plan.drop
[25, 26, 28]
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

from prunescope.core.errors import PrunescopeError

@dataclass
class Plan:
    strategy: str
    n_layers: int
    drop: list[int]
    protected: list[int] = field(default_factory=list)
    scores: dict = field(default_factory=dict)
    reasons: dict = field(default_factory=dict)
    model: str = ""
    metric: str = ""

    @property
    def keep(self) -> list[int]:
        return [i for i in range(self.n_layers) if i not in self.drop]

    def to_json(self) -> dict:
        d = asdict(self)
        d["keep"] = self.keep
        d["scores"] = {str(k): v for k, v in self.scores.items()}
        d["reasons"] = {str(k): v for k, v in self.reasons.items()}
        return d

    def save(self, path) -> None:
        from prunescope.core.results import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_json(), indent=2) + "\n")


def count_to_drop(n_layers: int, n: int | None = None, ratio: float | None = None) -> int:
    """Resolve ``--drop`` / ``--ratio`` into a layer count, with clear errors."""
    if (n is None) == (ratio is None):
        raise PrunescopeError("give exactly one of --drop (layers to drop) or --ratio (fraction of layers)")
    if ratio is not None:
        if not 0 < ratio < 1:
            raise PrunescopeError(f"--ratio must be between 0 and 1 (exclusive), got {ratio}")
        n = round(ratio * n_layers)
        if n == 0:
            raise PrunescopeError(f"--ratio {ratio} of {n_layers} layers rounds to 0 layers; use a larger ratio")
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n < n_layers:
        raise PrunescopeError(f"--drop must be between 1 and {n_layers - 1} for a model with {n_layers} layers, "
                              f"got {n}")
    return n


def _check_protected(n_layers: int, k: int, protected: Iterable[int], candidates: Sequence[int] | None = None):
    protected = sorted(set(protected))
    bad = [p for p in protected if not 0 <= p < n_layers]
    if bad:
        raise PrunescopeError(f"protected layers {bad} are out of range (the model has {n_layers}: 0-{n_layers - 1})")
    pool = [i for i in (range(n_layers) if candidates is None else candidates) if i not in protected]
    if len(pool) < k:
        raise PrunescopeError(f"cannot drop {k} layers: protecting {protected} leaves only {len(pool)} candidates")
    return protected, pool


def reverse_order(n_layers: int, k: int, protected: Iterable[int] = ()) -> Plan:
    """Drop the last k layers before the final one, skipping protected layers (moving down)."""
    protected, pool = _check_protected(n_layers, k, list(protected) + [n_layers - 1])
    drop = sorted(sorted(pool)[-k:])
    protected = [p for p in protected if p != n_layers - 1]
    return Plan("reverse", n_layers, drop, protected,
                reasons={i: "among the last layers before the final one" for i in drop})


def lowest_k(scores: dict[int, float], n_layers: int, k: int, protected: Iterable[int] = (),
             strategy: str = "score", metric: str = "") -> Plan:
    """Drop the k layers with the lowest score (ties: the later layer first)."""
    missing = [i for i in range(n_layers) if i not in scores]
    if missing:
        raise PrunescopeError(f"the scores cover {len(scores)} layers but the model has {n_layers}: "
                              "use a results table made with this model")
    protected, pool = _check_protected(n_layers, k, protected)
    drop = sorted(sorted(pool, key=lambda i: (scores[i], -i))[:k])
    return Plan(strategy, n_layers, drop, protected, scores=dict(scores), metric=metric,
                reasons={i: f"{metric or 'score'} {scores[i]:.4g} among the {k} lowest" for i in drop})


def lowest_block(block_scores: dict[int, float], n_layers: int, k: int, protected: Iterable[int] = (),
                 metric: str = "") -> Plan:
    """Drop the contiguous block of k layers (keyed by its first layer) with the lowest score."""
    protected, _ = _check_protected(n_layers, k, protected)
    options = [s for s in block_scores if not any(p in range(s, s + k) for p in protected) and s + k <= n_layers]
    if not options:
        raise PrunescopeError(f"no block of {k} contiguous layers avoids the protected layers {protected}")
    start = min(options, key=lambda s: (block_scores[s], -s))
    drop = list(range(start, start + k))
    return Plan("angular", n_layers, drop, protected, scores=dict(block_scores), metric=metric,
                reasons={i: f"in block {start}-{start + k - 1} with the lowest {metric} {block_scores[start]:.4g}"
                         for i in drop})


def iterative(score: Callable[[list[list[int]]], list[float]], n_layers: int, k: int,
              protected: Iterable[int] = (), candidates: Sequence[int] | None = None,
              metric: str = "", higher_is_better: bool = True, progress: bool = False) -> Plan:
    """Greedy: at each step drop the layer whose removal (with those already dropped) hurts least.

    ``score(sets)`` scores each candidate set of skipped layers (one call per step, so it can
    batch them, e.g. as one prefix-reused sweep): :func:`prunescope.prune.commands.probe_scorer`,
    :func:`prunescope.prune.selection.generated_answer_scorer` or any such function. The plan's
    strategy is ``iterative``; a search that scores otherwise renames it.

    >>> cost = [3.0, 1.0, 2.0, 5.0]
    >>> iterative(lambda sets: [-sum(cost[i] for i in s) for s in sets], 4, 2).drop
    [1, 2]
    """
    protected, pool = _check_protected(n_layers, k, protected, candidates)
    dropped: list[int] = []
    reasons, history = {}, []
    for step in range(k):
        options = [c for c in pool if c not in dropped]
        values = score([sorted(dropped + [c]) for c in options])
        best_i = max(range(len(options)), key=lambda j: (values[j] if higher_is_better else -values[j], -options[j]))
        best = options[best_i]
        dropped.append(best)
        reasons[best] = f"step {step + 1}: {metric or 'metric'} {values[best_i]:.4g} after dropping it"
        history.append({str(c): v for c, v in zip(options, values)})
        if progress:
            print(f"  step {step + 1}/{k}: drop {best} ({metric} {values[best_i]:.4g})", flush=True)
    return Plan("iterative", n_layers, sorted(dropped), protected, scores={"history": history}, reasons=reasons,
                metric=metric)


def protected_from_table(rows: list[dict], top: int, metric: str | None = None,
                         probe: str | None = None) -> list[int]:
    """The ``top`` layers with the largest values in a results table (patching effect, skip drop...)."""
    from prunescope.prune.scores import layer_scores

    if top < 1:
        raise PrunescopeError(f"--protect-top must be >= 1, got {top}")
    if probe:
        rows = [r for r in rows if r["probe"] == probe]
    metrics = sorted({r["metric"] for r in rows})
    metric = metric or next((m for m in ("patching_effect", "skip_drop") if m in metrics), None)
    if metric is None:
        raise PrunescopeError(f"the table holds metrics {metrics}; choose one with --protect-metric")
    scores = layer_scores(rows, metric)
    return sorted(sorted(scores, key=lambda i: -scores[i])[:top])
