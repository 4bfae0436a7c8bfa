"""Activation patching and attribution patching over layers, positions, attention / MLP and heads.

Where does the information that decides the answer live? Run the *base* prompt and replace one
activation with its value from the *source* prompt:

* ``denoise``: base = corrupted, source = clean (does this activation restore the answer?)
* ``noise``:   base = clean, source = corrupted (does losing it break the answer?)

Metric, in both directions: the normalized logit difference
``(LD_patched - LD_corrupt) / (LD_clean - LD_corrupt)`` with means over pairs, so 0 = the
corrupted behaviour and 1 = the clean behaviour.

Activations patched (``kind``):

* ``resid_post``  the residual stream leaving layer l, one position at a time
* ``attn_out`` / ``mlp_out``  what layer l's attention / MLP adds, one position at a time and
  all positions at once (``position = "all"``)
* ``head``  one attention head's output (``attn.hook_z``), all positions at once

Positions are counted from the scored (last) token: -1 is the last token, -2 the one before...

Every method takes a :class:`CellPlan` from :func:`plan_cells`: the encoded pairs, the direction
and the cells, validated once.

Exact patching on the ``hooks`` backend is batched: the conditions of one layer are stacked
along the batch and run from that layer onward (the earlier layers are identical to the base run,
so they are not recomputed). ``transformer_lens`` and ``nnsight`` run one condition per forward
through their own hook systems, to cross-check. Attribution patching approximates every cell
at once with one forward and one backward: ``(a_source - a_base) . d LD / d a``.

>>> from prunescope.probe.tiny import tiny_model
>>> from prunescope.probe.blocks import Blocks
>>> from prunescope.circuits.pairs import make_pairs, encode_pairs
>>> model, tok = tiny_model("llama")
>>> enc = encode_pairs(tok, make_pairs("arithmetic", tok, n=4))
>>> blocks = Blocks(model)
>>> cells = exact_patching(blocks, plan_cells(blocks, enc, kinds=("resid_post",), positions=2))
>>> cells[0]["kind"], cells[0]["position"]
('resid_post', -1)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import torch

from prunescope.probe.blocks import Blocks
from prunescope.core.errors import PrunescopeError

from prunescope.circuits.pairs import EncodedPairs
from prunescope.circuits.relevance import relevance_rules

KINDS = ("resid_post", "attn_out", "mlp_out", "head")
DIRECTIONS = ("denoise", "noise")
_HOOK = {"resid_post": "hook_resid_post", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
         "head": "attn.hook_z"}


@dataclass(frozen=True)
class Cell:
    """One patching condition: an activation at a layer, a position (or all) and maybe a head."""

    kind: str
    layer: int
    position: int | str          # negative offset from the scored token, or "all"
    head: int | None = None

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.{_HOOK[self.kind]}"

    @property
    def condition(self) -> str:
        where = f"H{self.head}" if self.kind == "head" else f"@{self.position}"
        return f"{self.kind}:L{self.layer}{where}"


def make_cells(blocks: Blocks, kinds: Iterable[str], positions: int, layers: Iterable[int] | None = None,
               heads: Iterable[int] | None = None) -> list[Cell]:
    """The conditions to patch, validated (unknown kind, head or layer out of range -> clear error)."""
    kinds = list(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise PrunescopeError(f"unknown activation kind(s) {bad}: choose from {', '.join(KINDS)}")
    layers = blocks.check_layers(range(blocks.n_layers) if layers is None else layers, allow_all=True)
    heads = list(range(blocks.n_heads)) if heads is None else list(heads)
    for h in heads:
        if not 0 <= h < blocks.n_heads:
            raise PrunescopeError(f"head {h} is out of range: the model has {blocks.n_heads} heads (0-{blocks.n_heads - 1})")
    cells = []
    for layer in layers:
        for k in kinds:
            if k == "head":
                cells += [Cell(k, layer, "all", h) for h in heads]
                continue
            cells += [Cell(k, layer, -1 - p) for p in range(positions)]
            if k != "resid_post":
                cells.append(Cell(k, layer, "all"))
    return cells


def _abs_positions(enc: EncodedPairs, position: int) -> torch.Tensor:
    """Per-row absolute index of a position counted from the scored token."""
    return enc.last + 1 + position


def _check_positions(enc: EncodedPairs, positions: int) -> None:
    if positions < 1:
        raise PrunescopeError(f"positions must be >= 1, got {positions}")
    if positions > min(enc.lengths):
        raise PrunescopeError(
            f"positions={positions} is more than the shortest pair ({min(enc.lengths)} tokens); use at most that"
        )


def _logit_diff(logits: torch.Tensor, enc: EncodedPairs, rows: torch.Tensor) -> torch.Tensor:
    """LD per row of an expanded batch whose row i belongs to pair ``rows[i]``."""
    ar = torch.arange(logits.shape[0], device=logits.device)
    return (logits[ar, enc.tok_clean.to(logits.device)[rows]] - logits[ar, enc.tok_corrupt.to(logits.device)[rows]]).float()


def patched_value_fn(cell: Cell, src: torch.Tensor, enc: EncodedPairs, rows: torch.Tensor,
              mask_rows: torch.Tensor | None = None) -> Callable[[torch.Tensor, str], torch.Tensor]:
    """A hook function that writes the source activation into the rows of this cell.

    ``rows[i]``: the pair of expanded row i; ``mask_rows``: which expanded rows this cell owns
    (``None`` = all).
    """
    def fn(t: torch.Tensor, _name: str) -> torch.Tensor:
        out = t.clone()
        own = torch.arange(t.shape[0], device=t.device) if mask_rows is None else mask_rows.to(t.device)
        pairs = rows.to(t.device)[own]
        s = src.to(t.device, t.dtype)
        if cell.kind == "head":
            out[own, :, cell.head] = s[pairs, :, cell.head]
        elif cell.position == "all":
            out[own] = s[pairs]
        else:
            pos = _abs_positions(enc, cell.position).to(t.device)[pairs]
            out[own, pos] = s[pairs, pos]
        return out
    return fn


@dataclass(frozen=True)
class CellPlan:
    """What a patching run patches: the encoded pairs, the direction and the validated cells.

    Built by :func:`plan_cells`; every patching method (exact, attribution, the cross-checking
    backends) takes one, so the cells are chosen and checked in one place.
    """

    enc: EncodedPairs
    direction: str
    positions: int
    kinds: tuple[str, ...]
    cells: tuple[Cell, ...]

    @property
    def names(self) -> list[str]:
        """The activation names the cells patch, sorted (each cached once)."""
        return sorted({c.name for c in self.cells})

    @property
    def n_pairs(self) -> int:
        return self.enc.clean.shape[0]

    @property
    def base_ids(self) -> torch.Tensor:
        """The prompts that are run and patched: corrupted when denoising, clean when noising."""
        return self.enc.corrupt if self.direction == "denoise" else self.enc.clean

    def base_and_source(self, cache_clean: dict, cache_corrupt: dict) -> tuple[dict, dict]:
        """``(base, source)`` activations of the two cached runs, by direction."""
        return (cache_corrupt, cache_clean) if self.direction == "denoise" else (cache_clean, cache_corrupt)

    def by_layer(self) -> list[tuple[int, list[Cell]]]:
        """The cells grouped by layer, in layer order (each group in plan order)."""
        groups: dict[int, list[Cell]] = {}
        for c in self.cells:
            groups.setdefault(c.layer, []).append(c)
        return sorted(groups.items())

    def only_layers(self, layers: Iterable[int]) -> CellPlan:
        """The same plan restricted to some layers (a process's share of a split run)."""
        keep = set(layers)
        return replace(self, cells=tuple(c for c in self.cells if c.layer in keep))


def plan_cells(blocks: Blocks, enc: EncodedPairs, *, kinds: Sequence[str] = KINDS, positions: int = 8,
               direction: str = "denoise", layers: Iterable[int] | None = None,
               heads: Iterable[int] | None = None) -> CellPlan:
    """Validate what to patch and list the cells: the one plan every patching method takes.

    ``positions``: the last k positions of the per-position cells; ``layers`` / ``heads``: a
    subset (default all).

    >>> from prunescope.probe.tiny import tiny_model
    >>> from prunescope.circuits.pairs import make_pairs, encode_pairs
    >>> model, tok = tiny_model("llama")
    >>> enc = encode_pairs(tok, make_pairs("arithmetic", tok, n=4))
    >>> plan = plan_cells(Blocks(model), enc, kinds=("mlp_out",), positions=1, layers=[2])
    >>> [c.condition for c in plan.cells], plan.names
    (['mlp_out:L2@-1', 'mlp_out:L2@all'], ['blocks.2.hook_mlp_out'])
    """
    if direction not in DIRECTIONS:
        raise PrunescopeError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
    _check_positions(enc, positions)
    cells = make_cells(blocks, kinds, positions, layers, heads)
    return CellPlan(enc, direction, positions, tuple(kinds), tuple(cells))


@torch.no_grad()
def run_clean_corrupt(blocks: Blocks, enc: EncodedPairs, names: Sequence[str]):
    """Both runs with the named activations cached: ``(ld_clean, ld_corrupt, cache_clean, cache_corrupt)``."""
    rows = torch.arange(enc.clean.shape[0])
    out = []
    for ids in (enc.clean, enc.corrupt):
        logits, cache = blocks.run_with_cache(ids, enc.mask, names, at=enc.last)
        out.append((_logit_diff(logits, enc, rows), cache))
    (ld_c, cache_c), (ld_x, cache_x) = out
    return ld_c, ld_x, cache_c, cache_x


def _denominator(ld_clean: torch.Tensor, ld_corrupt: torch.Tensor) -> float:
    """mean LD_clean - mean LD_corrupt: the scale of the normalized metric (refused when ~0)."""
    denom = (ld_clean.mean() - ld_corrupt.mean()).item()
    if abs(denom) < 1e-6:
        raise PrunescopeError(
            "clean and corrupted prompts give the same logit difference on average, so the normalized metric is "
            "undefined; use pairs the model tells apart (more pairs, or a probe the model can do)"
        )
    return denom


def _normalize(ld: torch.Tensor, ld_clean: torch.Tensor, ld_corrupt: torch.Tensor) -> float:
    return (ld.mean().item() - ld_corrupt.mean().item()) / _denominator(ld_clean, ld_corrupt)


@torch.no_grad()
def exact_patching(
    blocks: Blocks,
    plan: CellPlan,
    *,
    max_rows: int = 256,
    done: dict[str, float] | None = None,
    on_layer: Callable[[int, list[dict]], None] | None = None,
    show_progress: bool = False,
) -> list[dict]:
    """Exact activation patching (hooks backend, batched, run from the patched layer onward).

    Returns one dict per cell of ``plan``: ``kind, layer, position, head, condition, value``.
    ``max_rows``: the most batch rows of one forward (conditions x pairs); ``done`` maps
    already-computed conditions to values (resume); ``on_layer`` is called after each layer with
    the cells computed for it.
    """
    from tqdm.auto import tqdm

    n = plan.n_pairs
    names = sorted(set(plan.names) | {f"blocks.{c.layer}.hook_resid_pre" for c in plan.cells})
    ld_c, ld_x, cache_c, cache_x = run_clean_corrupt(blocks, plan.enc, names)
    base, src = plan.base_and_source(cache_c, cache_x)
    done = dict(done or {})
    results: list[dict] = []
    for layer, lcells in tqdm(plan.by_layer(), desc="patch layers", disable=not show_progress, leave=False):
        new = []
        todo = [c for c in lcells if c.condition not in done]
        for chunk in _chunks(todo, max(1, max_rows // n)):
            ld = _patched_logit_diffs(blocks, plan, layer, chunk, base, src)
            for j, c in enumerate(chunk):
                v = _normalize(ld[j * n:(j + 1) * n], ld_c, ld_x)
                done[c.condition] = v
                new.append(cell_row(c, v))
        results += [cell_row(c, done[c.condition]) for c in lcells]
        if on_layer:
            on_layer(layer, new)
    return results


def _chunks(cells: list[Cell], per_chunk: int) -> list[list[Cell]]:
    """Batches of at most ``per_chunk`` cells of one layer. Residual cells run from layer l + 1 and
    sublayer cells from layer l, so they never share a chunk."""
    groups = [[c for c in cells if c.kind == "resid_post"], [c for c in cells if c.kind != "resid_post"]]
    return [g[s:s + per_chunk] for g in groups for s in range(0, len(g), per_chunk)]


def _patched_logit_diffs(blocks: Blocks, plan: CellPlan, layer: int, chunk: list[Cell], base: dict,
                         src: dict) -> torch.Tensor:
    """LD of every pair under each cell of ``chunk``, the cells stacked along the batch (rows
    ``j * n .. (j + 1) * n`` belong to cell j), run from the patched layer onward."""
    enc, n, k = plan.enc, plan.n_pairs, len(chunk)
    rows = torch.arange(n).repeat(k)                 # expanded row -> pair
    hooks = []
    if any(c.kind == "resid_post" for c in chunk):
        # patching the residual after layer l = running layers l+1.. from a patched input
        start_hidden = base[f"blocks.{layer}.hook_resid_post"].repeat(k, 1, 1).clone()
        for j, c in enumerate(chunk):
            if c.kind == "resid_post":
                own = torch.arange(j * n, (j + 1) * n)
                pos = _abs_positions(enc, c.position)
                start_hidden[own, pos] = src[c.name][torch.arange(n), pos].to(start_hidden.dtype)
        start_layer = layer + 1
    else:
        start_hidden = base[f"blocks.{layer}.hook_resid_pre"].repeat(k, 1, 1)
        start_layer = layer
        for j, c in enumerate(chunk):
            own = torch.arange(j * n, (j + 1) * n)
            hooks.append((c.name, patched_value_fn(c, src[c.name], enc, rows, own)))
    ids, mask, at = plan.base_ids.repeat(k, 1), enc.mask.repeat(k, 1), enc.last.repeat(k)
    with blocks.hooks(hooks):
        logits = blocks.forward(ids, mask, at=at, start_layer=start_layer, start_hidden=start_hidden)
    return _logit_diff(logits, enc, rows)


def cell_row(c: Cell, value: float) -> dict:
    return {"kind": c.kind, "layer": c.layer, "position": c.position, "head": c.head,
            "condition": c.condition, "value": value}


def attribution_patching(blocks: Blocks, plan: CellPlan, *, steps: int = 1, graddrop: bool = False,
                         relevance: bool = False) -> list[dict]:
    """First-order estimate of every cell: ``effect ~ (a_source - a_base) . dLD/da``, summed over the
    patched positions (and d_model or d_head), averaged over pairs and normalized like exact patching.

    ``steps=1``: the gradient at the base run (plain attribution patching, AtP: one forward and one
    backward). ``steps=k > 1``: integrated gradients (node-level EAP-IG, Hanna et al. 2024): the
    gradient averaged over k points on the straight path from the base run's embeddings to the
    source run's (midpoints ``(i + 0.5) / k``), k forwards and k backwards. Every node's difference
    ``a_source - a_base`` is exact (from the two cached runs); only the gradient is approximated.

    ``graddrop``: AtP*'s GradDrop (Kramar et al. 2024): one backward per layer l with the gradient
    through layer l's attention and MLP outputs dropped, and each cell's value the mean of
    ``|estimate|`` over the layers other than its own. Effects that cancel along different paths
    then show up; the values are magnitudes (compare them with ``|exact|``). One forward, L backwards.

    ``relevance``: RelP (arXiv 2508.21258): the gradient runs under
    :func:`prunescope.circuits.relevance.relevance_rules`, so ``dLD/da`` becomes a relevance-propagation
    coefficient (normalisers and attention patterns held constant, gated activations linear at
    their secant slope, gates splitting evenly); same cost as plain attribution patching.
    """
    if steps < 1:
        raise PrunescopeError(f"steps must be at least 1, got {steps}")
    if graddrop:
        if relevance:
            raise PrunescopeError("relevance rules and GradDrop are separate methods; choose one")
        if steps != 1:
            raise PrunescopeError("GradDrop takes the gradient at the base run: use steps=1 with graddrop")
        return _graddrop(blocks, plan)
    # the embeddings are the path's ends: cached only when there is a path (integrated gradients)
    ends = ["blocks.0.hook_resid_pre"] if steps > 1 else []
    ld_c, ld_x, cache_c, cache_x = run_clean_corrupt(blocks, plan.enc, plan.names + ends)
    base, src = plan.base_and_source(cache_c, cache_x)
    grad, base = _path_gradients(blocks, plan, base, src, steps, relevance)
    denom = _denominator(ld_c, ld_x)
    return [cell_row(c, _estimate(c, src, base, grad, plan.enc) / denom) for c in plan.cells]


def _path_gradients(blocks: Blocks, plan: CellPlan, base: dict, src: dict, steps: int,
                    relevance: bool) -> tuple[dict[str, torch.Tensor], dict]:
    """``dLD/da`` of every patched activation, averaged over the path's ``steps`` points, and the
    base activations to difference against (with one point: those of the gradient run itself)."""
    names, enc = plan.names, plan.enc
    alphas = [0.0] if steps == 1 else [(i + 0.5) / steps for i in range(steps)]
    grad: dict[str, torch.Tensor] = {}
    for alpha in alphas:
        kept: dict[str, torch.Tensor] = {}

        def mix(t: torch.Tensor, _name: str, a=alpha) -> torch.Tensor:
            emb_base, emb_src = base["blocks.0.hook_resid_pre"], src["blocks.0.hook_resid_pre"]
            return (emb_base + a * (emb_src - emb_base)).to(t.device, t.dtype)

        hooks = ([("blocks.0.hook_resid_pre", mix)] if alpha else []) + [(nm, _kept_into(kept)) for nm in names]
        rules = relevance_rules(blocks.model) if relevance else contextlib.nullcontext()
        with torch.enable_grad(), blocks.hooks(hooks), rules:
            logits = blocks.forward(plan.base_ids, enc.mask, at=enc.last)
            ld = _logit_diff(logits, enc, torch.arange(plan.n_pairs))
            grads = torch.autograd.grad(ld.sum(), [kept[nm] for nm in names], allow_unused=True)
        for nm, g in zip(names, grads):
            g = torch.zeros_like(kept[nm]) if g is None else g
            grad[nm] = grad[nm] + g / len(alphas) if nm in grad else g / len(alphas)
        if alpha == 0:  # the base activations of the gradient run itself (plain AtP)
            base = {**base, **{nm: kept[nm].detach() for nm in names}}
    return grad, base


def _kept_into(store: dict[str, torch.Tensor]) -> Callable[[torch.Tensor, str], torch.Tensor]:
    """A hook that keeps its activation in ``store`` as a tensor whose gradient can be asked for. It
    stays connected to the graph (a later activation depends on an earlier one); only the first
    activation of a model with frozen weights needs to become a leaf."""
    def keep(t: torch.Tensor, name: str) -> torch.Tensor:
        t = t.clone() if t.requires_grad else t.detach().clone().requires_grad_(True)
        store[name] = t
        return t
    return keep


def _estimate(c: Cell, src: dict, base: dict, grad: dict, enc: EncodedPairs) -> float:
    """``(a_source - a_base) . grad`` of one cell, summed over its positions / head, mean over pairs."""
    delta = (src[c.name].to(grad[c.name].dtype) - base[c.name].to(grad[c.name].dtype)) * grad[c.name]
    if c.kind == "head":
        per_pair = delta[:, :, c.head].sum(dim=(1, 2))
    elif c.position == "all":
        per_pair = delta.sum(dim=(1, 2))
    else:
        pos = _abs_positions(enc, c.position)
        per_pair = delta[torch.arange(delta.shape[0]), pos].sum(-1)
    return per_pair.mean().item()


def _graddrop(blocks: Blocks, plan: CellPlan) -> list[dict]:
    """AtP*'s GradDrop (see :func:`attribution_patching`)."""
    cells, names, enc, n = plan.cells, plan.names, plan.enc, plan.n_pairs
    sub = [f"blocks.{l}.{k}" for l in range(blocks.n_layers) for k in ("hook_attn_out", "hook_mlp_out")]
    ld_c, ld_x, cache_c, cache_x = run_clean_corrupt(blocks, enc, names)
    _, src = plan.base_and_source(cache_c, cache_x)
    kept: dict[str, torch.Tensor] = {}
    outs: dict[str, torch.Tensor] = {}  # the sublayer outputs whose gradient a pass may drop
    hooks = [(nm, _kept_into(kept)) for nm in names] + [(nm, _kept_into(outs)) for nm in sub if nm not in names]
    with torch.enable_grad(), blocks.hooks(hooks):
        logits = blocks.forward(plan.base_ids, enc.mask, at=enc.last)
        ld = _logit_diff(logits, enc, torch.arange(n)).sum()
        outs.update({nm: kept[nm] for nm in sub if nm in kept})
        base = {nm: kept[nm].detach() for nm in names}
        denom = _denominator(ld_c, ld_x)
        total = {c.condition: 0.0 for c in cells}
        for drop in range(blocks.n_layers):
            handles = [outs[f"blocks.{drop}.{k}"].register_hook(torch.zeros_like)
                       for k in ("hook_attn_out", "hook_mlp_out") if f"blocks.{drop}.{k}" in outs]
            grads = torch.autograd.grad(ld, [kept[nm] for nm in names], retain_graph=True, allow_unused=True)
            for h in handles:
                h.remove()
            grad = {nm: (g if g is not None else torch.zeros_like(kept[nm])) for nm, g in zip(names, grads)}
            for c in cells:
                if c.layer != drop:
                    total[c.condition] += abs(_estimate(c, src, base, grad, enc) / denom)
    return [cell_row(c, total[c.condition] / (blocks.n_layers - 1)) for c in cells]


def layer_importance(cells: list[dict]) -> dict[int, float]:
    """Per-layer patching effect: |attn_out (all positions)| + |mlp_out (all positions)|.

    Falls back to the largest |resid_post| effect over positions when no sublayer cells exist.
    """
    out: dict[int, float] = {}
    for r in cells:
        if r["kind"] in ("attn_out", "mlp_out") and r["position"] == "all":
            out[r["layer"]] = out.get(r["layer"], 0.0) + abs(r["value"])
    if not out:
        for r in cells:
            if r["kind"] == "resid_post":
                out[r["layer"]] = max(out.get(r["layer"], 0.0), abs(r["value"]))
    return dict(sorted(out.items()))


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(x):
        t = torch.tensor(x, dtype=torch.float64)
        order = torch.argsort(t)
        r = torch.empty_like(t)
        r[order] = torch.arange(len(x), dtype=torch.float64)
        for v in torch.unique(t):   # average ties
            m = t == v
            if m.sum() > 1:
                r[m] = r[m].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / den) if den else float("nan")
