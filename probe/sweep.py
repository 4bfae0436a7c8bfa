"""Layer-skip sweeps: how much does each probe suffer when layers are skipped?

Conditions are named ``none``, ``skip:5`` (one layer), ``skip:5-7`` (a window) or
``skip:3,9`` (any set). The schedule is batch-major with prefix reuse: for each batch of
prompts the model runs once, caching the residual stream entering every layer (that run *is*
condition ``none``); condition "skip S" then starts at layer ``min(S)`` from the cached input of
that layer, so a single-layer sweep costs about ``1 + L/2`` full forwards instead of ``L + 1``.

Progress is appended to ``OUT/.progress/<probe>.jsonl`` after every batch, so a crashed sweep
resumes where it stopped; tables and figures are written atomically at the end.

Over several GPUs (``devices=N``, or under ``torchrun`` / ``accelerate launch``) each process
holds a model copy and runs a share of the same (batch, condition) work: whole batches, or, when
there are too few batches to go round, a share of the conditions of every batch
(:func:`split_work`). The batches themselves are the single-process ones (same length-sorted
composition), so each row's numbers do not depend on the split; rank 0 gathers the rows after
every round, logs progress, aggregates with the same functions and writes the tables.

>>> from prunescope.probe.tiny import tiny_model
>>> from prunescope.probe.blocks import Blocks
>>> model, tok = tiny_model("llama")
>>> rows = sweep_blocks(Blocks(model), tok, {"arithmetic": make_items("arithmetic", 8)}, SweepSettings(windows=[1]))
>>> sorted({r["condition"] for r in rows})[:3]
['none', 'skip:0', 'skip:1']
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
from tqdm.auto import tqdm

from prunescope.probe.blocks import Blocks
from prunescope.core.distributed import Dist, assign, rank_device, spread
from prunescope.core.errors import PrunescopeError
from prunescope.core.options import SHARED_MEANINGS, Flag, Options, Output, Placement, Reader, option
from prunescope.core.lock import run_lock
from prunescope.core.overwrite import expect_folder, remove_previous
from prunescope.core.results import append_progress, check_run_config, read_progress, record_run_config, write_table
from prunescope.probe.scoring import SCORINGS, Batch, ScoringPlan, TextPlan, aggregate_defined, load_texts
from prunescope.probe.interaction import (ORDER_NAMES, cumulative_rows, cumulative_sets, interaction_rows,
                                         pair_sets, parse_layers, resolve_orders)
from prunescope.probe.tasks import OPERATORS, PROBES, VARIANTS, Item, check_probe, make_items, save_items


SUBLAYERS = ("attn", "mlp")


@dataclass(frozen=True)
class Condition:
    """What to skip: whole ``layers``, and the attention (``attn``) or MLP (``mlp``) alone of others;
    nothing is the unmodified model. A layer listed in both ``attn`` and ``mlp`` is a skipped layer
    (the same function: :meth:`Blocks.skip_sublayers`), so it moves to ``layers``.

    >>> Condition((5,)).name, Condition((), attn=(3,)).name, Condition((10, 11), mlp=(4,)).name
    ('skip:5', 'skip_attn:3', 'skip:10-11,mlp:4')
    >>> Condition((), attn=(3, 4), mlp=(4,)).name
    'skip:4,attn:3'
    """

    layers: tuple[int, ...]
    attn: tuple[int, ...] = ()
    mlp: tuple[int, ...] = ()

    def __post_init__(self):
        both = set(self.attn) & set(self.mlp)
        layers = set(self.layers) | both
        object.__setattr__(self, "layers", tuple(sorted(layers)))
        object.__setattr__(self, "attn", tuple(sorted(set(self.attn) - layers)))
        object.__setattr__(self, "mlp", tuple(sorted(set(self.mlp) - layers)))

    @property
    def name(self) -> str:
        if not self.touched:
            return "none"
        if not (self.attn or self.mlp):
            return "skip:" + ",".join(_spans(self.layers))
        if not self.layers and not (self.attn and self.mlp):
            kind, ls = ("attn", self.attn) if self.attn else ("mlp", self.mlp)
            return f"skip_{kind}:" + ",".join(_spans(ls))
        return "skip:" + ",".join(_spans(self.layers) + [f"{k}:{t}" for k in SUBLAYERS
                                                         for t in _spans(getattr(self, k))])

    @property
    def layers_str(self) -> str:
        """The ``layers`` column: skipped layers, then ``attn:L`` / ``mlp:L`` of skipped sublayers."""
        return " ".join([str(i) for i in self.layers] + [f"{k}:{i}" for k in SUBLAYERS for i in getattr(self, k)])

    @property
    def touched(self) -> tuple[int, ...]:
        """Every layer something is skipped in."""
        return tuple(sorted({*self.layers, *self.attn, *self.mlp}))

    @property
    def start(self) -> int:
        """The first layer that runs differently: prefix reuse starts there."""
        return self.touched[0]

    def skipping(self, blocks: Blocks):
        """The context that skips this condition's layers and sublayers."""
        return blocks.skip(self.layers, attn=self.attn, mlp=self.mlp)


def _spans(ls: Sequence[int]) -> list[str]:
    """``[5, 6, 7]`` -> ``['5-7']`` (a contiguous run of several), else each layer: ``['3', '9']``."""
    if len(ls) > 1 and tuple(ls) == tuple(range(ls[0], ls[-1] + 1)):
        return [f"{ls[0]}-{ls[-1]}"]
    return [str(i) for i in ls]


def parse_skip_sets(text: str) -> list[list[int | str]]:
    """Skip sets from text: sets split at ``;``, items at ``,``; an item is a layer (``3``), a range
    (``10-12``), or a sublayer of one or several layers (``attn:3``, ``mlp:4-5``).

    >>> parse_skip_sets("attn:3,mlp:4;10-12")
    [['attn:3', 'mlp:4'], [10, 11, 12]]
    """
    return [items for part in text.split(";") if (items := _set_items(part.split(",")))]


def _set_items(tokens: Iterable) -> list[int | str]:
    """One skip set's items: layers as ints, sublayers as ``attn:L`` / ``mlp:L`` (ranges expanded)."""
    out: list[int | str] = []
    for tok in tokens:
        if isinstance(tok, int) and not isinstance(tok, bool):
            out.append(tok)
            continue
        if not isinstance(tok, str):
            raise PrunescopeError(f"bad skip set item {tok!r}: give a layer (3), a range (10-12) or attn:L / mlp:L")
        kind, _, span = tok.strip().rpartition(":")
        if not span:
            continue
        try:
            a, _, b = span.partition("-")
            layers = list(range(int(a), int(b or a) + 1))
        except ValueError:
            raise PrunescopeError(f"bad skip set item {tok!r}: use e.g. '3,4;7', '10-12' or 'attn:3,mlp:4'") from None
        if kind and kind not in SUBLAYERS:
            raise PrunescopeError(f"bad skip set item {tok!r}: a sublayer is attn:L or mlp:L")
        out += [f"{kind}:{i}" if kind else i for i in layers]
    return out


def condition_of(items: Iterable[int | str]) -> Condition:
    """The condition of one skip set (layers and ``attn:L`` / ``mlp:L`` items).

    >>> condition_of([10, 11, "attn:3"]).name
    'skip:10-11,attn:3'
    """
    parts: dict[str, list[int]] = {"layers": [], "attn": [], "mlp": []}
    for it in _set_items(items):
        kind, _, layer = str(it).rpartition(":")
        parts[kind or "layers"].append(int(layer))
    return Condition(tuple(parts["layers"]), tuple(parts["attn"]), tuple(parts["mlp"]))


def _check_set(items: list, n_layers: int) -> Condition:
    """A skip set's condition, or a clear error for layers out of range, twice, or all of them."""
    parts = [str(i) for i in _set_items(items)]
    layers = [int(t.rpartition(":")[2]) for t in parts]
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad:
        raise PrunescopeError(f"layer set {items} has layers out of range (the model has {n_layers}: 0-{n_layers - 1})")
    if len(set(parts)) != len(parts):
        raise PrunescopeError(f"layer set {items} lists a layer twice")
    c = condition_of(items)
    if len(c.layers) >= n_layers:
        raise PrunescopeError(f"layer set {items} skips every layer; at least one must remain")
    return c


def make_conditions(n_layers: int, windows: Iterable[int] = (1,), sets: Iterable[Iterable[int | str]] = (),
                    include_none: bool = True, sublayers: bool = False) -> list[Condition]:
    """``none``, every contiguous window of each width (``sublayers``: also the window's attention
    alone and its MLP alone), then the given sets (deduplicated).

    >>> [c.name for c in make_conditions(3, windows=[2])]
    ['none', 'skip:0-1', 'skip:1-2']
    >>> [c.name for c in make_conditions(2, sublayers=True)]
    ['none', 'skip:0', 'skip:1', 'skip_attn:0', 'skip_attn:1', 'skip_mlp:0', 'skip_mlp:1']
    """
    conds: list[Condition] = [Condition(())] if include_none else []
    spans = []
    for w in windows:
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise PrunescopeError(f"window width must be a positive integer, got {w!r}")
        if w >= n_layers:
            raise PrunescopeError(
                f"window width {w} is too wide: the model has {n_layers} layers, so windows can be 1-{n_layers - 1}"
            )
        spans += [tuple(range(s, s + w)) for s in range(n_layers - w + 1)]
    conds += [Condition(span) for span in spans]
    if sublayers:
        conds += [Condition((), **{kind: span}) for kind in SUBLAYERS for span in spans]
    conds += [_check_set(list(s), n_layers) for s in sets if list(s)]
    return list(dict.fromkeys(conds))


# ----------------------------------------------------------------------------- running
# Batches are right-padded, so under causal attention a real token only ever attends to real
# tokens before it: the padding mask changes nothing at the positions we score or cache for
# them. Dropping it lets SDPA take its causal (flash) path. Pad positions compute garbage that
# nothing reads. (Tested: same logits at real positions as with the mask.)
RIGHT_PADDING_NEEDS_NO_MASK = True


def _causal_mask(batch: Batch):
    return None if RIGHT_PADDING_NEEDS_NO_MASK else batch.attention_mask


def _prefix_reuse(blocks: Blocks, ids, mask, at, conditions: Sequence[Condition],
                  extra=lambda c: {}) -> dict[Condition, torch.Tensor]:
    """One forward caching each layer's input, then "skip S" from layer min(S) for each condition.

    ``extra(c)`` adds forward arguments per condition (the shared-prefix cache and positions).
    """
    names = [f"blocks.{i}.hook_resid_pre" for i in range(blocks.n_layers)]
    out = {}
    with blocks.capture(names) as acts:
        base = blocks.forward(ids, mask, at=at, **extra(Condition(())))
    for c in conditions:
        if not c.touched:
            out[c] = base
            continue
        start = c.start
        with c.skipping(blocks):
            out[c] = blocks.forward(ids, mask, at=at, start_layer=start,
                                    start_hidden=acts[f"blocks.{start}.hook_resid_pre"], **extra(c))
    return out


def batch_logits_prefix(blocks: Blocks, batch: Batch, conditions: Sequence[Condition]) -> dict[Condition, torch.Tensor]:
    """Logits at the scored positions for every condition, reusing one cached forward."""
    return _prefix_reuse(blocks, batch.input_ids, _causal_mask(batch), batch.at, conditions)


class SharedPrefix:
    """KV caches of the few-shot prefix that every prompt shares, one per condition (batch 1).

    Causal attention makes a shared prefix's activations identical for every prompt (same
    tokens at the same positions), so they are computed once per condition rather than once per
    prompt; each batch then runs only its suffix tokens against the cached prefix.
    """

    def __init__(self, blocks: Blocks, prefix_ids: list[int], conditions: Sequence[Condition]):
        self.length = len(prefix_ids)
        ids = torch.tensor([prefix_ids])
        names = [f"blocks.{i}.hook_resid_pre" for i in range(blocks.n_layers)]
        self.caches = {}
        with torch.no_grad():
            none = blocks.new_cache()
            with blocks.capture(names) as acts:
                blocks.final_hidden(ids, cache=none)
            for c in conditions:
                if not c.touched:
                    self.caches[c] = none
                    continue
                cache = blocks.new_cache()
                with c.skipping(blocks):
                    blocks.final_hidden(ids, start_layer=c.start, start_hidden=acts[f"blocks.{c.start}.hook_resid_pre"],
                                        cache=cache)
                self.caches[c] = cache

    def expanded(self, c: Condition, batch: int):
        """A cache for ``batch`` rows that views (does not copy) the batch-1 prefix cache."""
        src = self.caches[c]
        out = copy.copy(src)
        out.layers = []
        for layer in src.layers:
            new = copy.copy(layer)
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                new.keys = layer.keys.expand(batch, *layer.keys.shape[1:])
                new.values = layer.values.expand(batch, *layer.values.shape[1:])
            out.layers.append(new)
        return out


def shared_prefix_length(plan: ScoringPlan) -> int:
    """Tokens at the start of every row that are identical (and precede every scored position)."""
    rows = plan.rows
    n = min(min(r.positions) for r in rows)      # the prefix must end before the first scored position
    first = rows[0].ids
    for r in rows[1:]:
        n = min(n, len(r.ids))
        while n and r.ids[:n] != first[:n]:
            n = next((k for k, (a, b) in enumerate(zip(r.ids[:n], first[:n])) if a != b), n)
    return n


def batch_logits_shared(blocks: Blocks, batch: Batch, conditions: Sequence[Condition],
                         shared: SharedPrefix) -> dict[Condition, torch.Tensor]:
    """Prefix reuse across layers *and* across prompts: only suffix tokens are run."""
    P = shared.length
    b, T = batch.input_ids.shape
    dev = batch.attention_mask.device
    # with a prefix cache the mask is kept: dropping it made this path slower on an H200 (13.0 s vs 11.4 s)
    mask = torch.cat([torch.ones(b, P, dtype=batch.attention_mask.dtype, device=dev), batch.attention_mask[:, P:]], 1)
    pos = torch.arange(P, T, device=dev)[None].expand(b, -1)
    return _prefix_reuse(blocks, batch.input_ids[:, P:], mask, batch.at - P, conditions,
                         extra=lambda c: {"cache": shared.expanded(c, b), "position_ids": pos})


def batch_logits_plain(blocks: Blocks, batch: Batch, conditions: Sequence[Condition]) -> dict[Condition, torch.Tensor]:
    """One full forward per condition (the reference schedule, for checking and benchmarks)."""
    out = {}
    for c in conditions:
        with c.skipping(blocks):
            out[c] = blocks.forward(batch.input_ids, _causal_mask(batch), at=batch.at)
    return out


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def default_batch_size(blocks: Blocks, max_tokens: int) -> int:
    """Pick rows per batch from free memory and a token budget.

    Memory: the cached residual stream (layers x tokens x d_model) plus activations per row,
    within half of the free GPU memory (1 GiB on CPU). Tokens: about 6k per batch; on an H200
    with an 8B model, batches of 16-64 prompts of 100-200 tokens ran 20% faster than one batch
    of 200 (less padding once sorted by length, same matmul efficiency).
    """
    d = blocks.config.hidden_size
    bytes_per = torch.finfo(next(blocks.model.parameters()).dtype).bits // 8
    per_row = max_tokens * d * bytes_per * (blocks.n_layers + 16) + 8 * blocks.config.vocab_size * 4
    if blocks.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(blocks.device)
        by_memory = (free // 2) // max(per_row, 1)
    else:
        by_memory = (1 << 30) // max(per_row, 1)
    by_tokens = max(8, 6144 // max(max_tokens, 1))
    return int(max(1, min(by_memory, by_tokens, 256)))


def split_work(batches: Sequence[Batch], conditions: Sequence[Condition], n_layers: int, world: int,
               prefix_reuse: bool = True) -> list[list[tuple[int, list[Condition]]]]:
    """Per rank, the rounds it runs: ``[(batch index, conditions), ...]``; the same on every rank.

    Two ways to split, whichever finishes sooner by a cost model (padded tokens x layers run):
    whole batches per rank (no repeated work), or the conditions of every batch (each rank then
    repeats the batch's cached base forward, but all ranks have work when batches are few).
    A condition "skip S" with prefix reuse runs ``n_layers - min(S) - len(S)`` layers after the
    base forward of ``n_layers``; without prefix reuse every condition runs ``n_layers - len(S)``
    (a skipped sublayer counts as a layer that runs).

    >>> from prunescope.probe.scoring import Batch
    >>> b = [Batch([0], torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 5), torch.zeros(1, 1))]
    >>> [[(bi, [c.name for c in cs]) for bi, cs in r] for r in split_work(b, make_conditions(3), 3, 2)]
    [[(0, ['skip:0'])], [(0, ['none', 'skip:1', 'skip:2'])]]
    """
    if world == 1:
        return [[(bi, list(conditions)) for bi in range(len(batches))]]
    tokens = [b.input_ids.numel() for b in batches]
    base = n_layers if prefix_reuse else 0

    def cost(c: Condition) -> int:
        if not prefix_reuse:
            return n_layers - len(c.layers)
        return n_layers - c.start - len(c.layers) if c.touched else 0

    per_cond = [cost(c) for c in conditions]
    total = base + sum(per_cond)
    by_batch = assign([t * total for t in tokens], world)
    span_batch = max(sum(tokens[i] for i in r) * total for r in by_batch)
    by_cond = assign([float(x) for x in per_cond], world)
    span_cond = sum(tokens) * max((base + sum(per_cond[i] for i in r)) if r else 0 for r in by_cond)
    if span_batch <= span_cond:
        return [[(bi, list(conditions)) for bi in r] for r in by_batch]
    return [[(bi, [conditions[i] for i in r]) for bi in range(len(batches))] if r else [] for r in by_cond]


@dataclass
class SweepSettings:
    """How :func:`sweep_blocks` runs: the layers to skip (``windows``: widths of contiguous windows,
    ``sets``: any skip sets, of layers and ``attn:L`` / ``mlp:L`` sublayers; ``sublayers``: each
    window's attention alone and MLP alone too), how damage adds up (``pairs``: layers whose every
    pair is skipped together, for the pair interactions; ``cumulative``: orders to remove layers in
    one by one, ``bi``, ``skip-drop`` or a table path, for at most ``cumulative_steps`` layers,
    default half of them: :mod:`prunescope.probe.interaction`), how rows are scored and batched,
    what the result rows are labelled with (``model_name``, ``seed``) and where progress goes.

    ``batch_size``: rows per forward (None: from free memory). ``prefix_reuse``: run each condition
    from the cached input of its first skipped layer (off: one full forward per condition).
    ``shared_prefix``: run the prefix that every prompt shares once per condition (None: when at
    least 8 tokens are shared). ``progress_dir``: append each batch's numbers there and resume
    from them.

    >>> SweepSettings(windows=[1, 2], batch_size=8).scoring
    'first_diff'
    """

    windows: Iterable[int] = (1,)
    sets: Iterable[Iterable[int | str]] = ()
    scoring: str = "first_diff"
    batch_size: int | None = None
    prefix_reuse: bool = True
    shared_prefix: bool | None = None
    model_name: str = "model"
    seed: int = 0
    progress_dir: Path | None = None
    show_progress: bool = True
    sublayers: bool = False
    pairs: Iterable[int] = ()
    cumulative: Iterable[str] = ()
    cumulative_steps: int | None = None


def sweep_conditions(n_layers: int, s: SweepSettings) -> list[Condition]:
    """Every condition a sweep runs first: :func:`make_conditions`, then what the pair interactions
    need (each layer of ``s.pairs`` alone, every pair) and the skip-drop order (each layer alone).

    >>> [c.name for c in sweep_conditions(4, SweepSettings(windows=[2], pairs=[1, 3]))]
    ['none', 'skip:0-1', 'skip:1-2', 'skip:2-3', 'skip:1', 'skip:3', 'skip:1,3']
    """
    conds = make_conditions(n_layers, s.windows, s.sets, sublayers=s.sublayers)
    pairs = list(s.pairs)
    if pairs:
        bad = [i for i in pairs if not 0 <= i < n_layers]
        if bad or len(set(pairs)) < 2 or n_layers < 3:
            raise PrunescopeError(f"pair layers {pairs}: give at least two layers of 0-{n_layers - 1} (and a model of "
                                  "three layers or more, so that a pair leaves one)")
        conds += [Condition(p) for p in pair_sets(pairs)]
    if "skip-drop" in list(s.cumulative):
        conds += [Condition((i,)) for i in range(n_layers)]
    return list(dict.fromkeys(conds))


def sweep_blocks(blocks: Blocks, tokenizer, probes: dict[str, Sequence[Item] | ScoringPlan],
                 settings: SweepSettings | None = None, *, dist: Dist | None = None,
                 keep_stats: dict | None = None) -> list[dict]:
    """Run the sweep in memory and return tidy rows (one per probe x condition x metric), then the
    pair interactions and cumulative curves the settings ask for.

    ``dist``: this process's place in a data-parallel group (every rank calls this with the same
    arguments and gets the same rows back). ``keep_stats``: if a dict, it receives each probe's
    per-row numbers, ``{probe: {condition: {row: {...}}}}`` (to compare runs row by row).
    """
    s = settings or SweepSettings()
    d = dist or Dist()
    plans = {p: items if isinstance(items, ScoringPlan) else ScoringPlan(tokenizer, items, s.scoring)
             for p, items in probes.items()}
    conditions = sweep_conditions(blocks.n_layers, s)
    rows = _sweep_plans(blocks, plans, conditions, s, d, keep_stats)
    out = rows + interaction_rows(rows, s.pairs)
    if list(s.cumulative):
        # the orders rest on rank 0's numbers: BI on several GPUs could round apart and split the work differently
        texts = [it.prompt + it.answer for plan in plans.values() for it in plan.items]
        orders = d.on_main(resolve_orders, list(s.cumulative), rows, blocks, tokenizer, texts, s.model_name)
        steps = min(s.cumulative_steps or blocks.n_layers // 2, blocks.n_layers - 1)
        orders = {name: order[:steps] for name, order in orders.items()}
        extra = [c for c in dict.fromkeys(Condition(ls) for o in orders.values() for ls in cumulative_sets(o))
                 if c not in conditions]
        more = _sweep_plans(blocks, plans, extra, s, d, keep_stats) if extra else []
        out += cumulative_rows(rows + more, orders)
    return out


def _sweep_plans(blocks: Blocks, plans: dict[str, ScoringPlan], conditions: Sequence[Condition], s: SweepSettings,
                 d: Dist, keep_stats: dict | None) -> list[dict]:
    """The rows of every probe under ``conditions`` (their per-row numbers added to ``keep_stats``)."""
    rows: list[dict] = []
    for probe, plan in plans.items():
        stats = _sweep_probe(blocks, probe, plan, conditions, s, d)
        if keep_stats is not None:
            keep_stats.setdefault(probe, {}).update({c.name: dict(stats[c.name]) for c in conditions})
        rows += _probe_rows(plan, probe, conditions, stats, s)
    return rows


def _sweep_probe(blocks: Blocks, probe: str, plan: ScoringPlan, conditions: Sequence[Condition],
                 s: SweepSettings, d: Dist) -> dict[str, dict[int, dict]]:
    """Per condition name, the per-row numbers of one probe: those already in ``s.progress_dir``,
    then the rest, run in rounds (each rank its share of (batch, conditions)) and gathered."""
    done = d.on_main(_read_progress, s.progress_dir, probe) if s.progress_dir else {}
    # rank 0 picks the batch size (free memory differs a little between GPUs): every rank
    # must cut the very same batches
    bs = s.batch_size or d.broadcast(default_batch_size(blocks, max(len(r.ids) for r in plan.rows)))
    batches = plan.batches(bs)
    work = split_work(batches, conditions, blocks.n_layers, d.world_size, s.prefix_reuse)
    mine = work[d.rank]
    run = _batch_runner(blocks, plan, mine, s)
    stats: dict[str, dict[int, dict]] = {c.name: {} for c in conditions}
    resumed = [(key, st) for key, st in done.items() if key[0] in stats and key[1] < len(batches)]
    for (cname, _), st in resumed:
        stats[cname].update(st)
    bar = tqdm(total=len(batches) * len(conditions), desc=f"sweep {probe}", unit="cond",
               disable=not (s.show_progress and d.is_main), leave=False)
    bar.update(len(resumed))
    for k in range(max(len(w) for w in work)):
        lines, error = _run_share(run, blocks, plan, batches, mine[k], done) if k < len(mine) else ([], None)
        merged = _gather_round(d, lines, error)
        for line in merged:
            stats[line["condition"]].update(line["stats"])
        if s.progress_dir and merged and d.is_main:
            _append_progress(s.progress_dir, probe, merged)
        bar.update(len(merged))
    bar.close()
    return stats


def _batch_runner(blocks: Blocks, plan: ScoringPlan, mine: list[tuple[int, list[Condition]]], s: SweepSettings):
    """The schedule this rank runs its batches with: prefix reuse (and the shared prompt prefix,
    cached once for the conditions this rank runs), or one plain forward per condition."""
    run = batch_logits_prefix if s.prefix_reuse else batch_logits_plain
    P = shared_prefix_length(plan) if s.shared_prefix is not False and s.prefix_reuse else 0
    if P >= (8 if s.shared_prefix is None else 1) and mine:   # auto: worth it from 8 shared tokens on
        # the base forward always runs on the unskipped prefix cache
        needed = list(dict.fromkeys([Condition(()), *(c for _, cs in mine for c in cs)]))
        shared = SharedPrefix(blocks, plan.rows[0].ids[:P], needed)
        run = functools.partial(batch_logits_shared, shared=shared)
    return run


def _run_share(run, blocks: Blocks, plan: ScoringPlan, batches: Sequence[Batch],
               share: tuple[int, list[Condition]], done: dict) -> tuple[list[dict], str | None]:
    """One round's share of this rank: the progress lines of the conditions of batch ``share`` not
    yet ``done``, and the error message that stopped it (None when none did)."""
    bi, conds = share
    todo = [c for c in conds if (c.name, bi) not in done]
    try:
        logits = run_with_oom_retry(run, blocks, plan, batches[bi], todo) if todo else {}
    except PrunescopeError as e:   # reported to every rank by _gather_round, so no rank waits forever
        return [], str(e)
    lines = []
    for c in todo if logits else []:
        st = {}
        for sub, lg in logits[c]:
            st.update(plan.reduce(sub, lg))
        lines.append({"condition": c.name, "batch": bi, "stats": st})
    return lines, None


def _gather_round(d: Dist, lines: list[dict], error: str | None) -> list[dict]:
    """Every rank's lines of a round, in rank order; any rank's error is raised on every rank."""
    parts = d.gather((lines, error))
    errors = [e for _, e in parts if e]
    if errors:
        raise PrunescopeError(errors[0])
    return [line for part, _ in parts for line in part]


def _probe_rows(plan: ScoringPlan, probe: str, conditions: Sequence[Condition],
                stats: dict[str, dict[int, dict]], s: SweepSettings) -> list[dict]:
    """The tidy rows of one probe: per condition, each metric aggregated over the items that have
    it (``n``: their count); a metric no item has (``margin_accuracy`` of items without wrong answers)
    gets no row."""
    rows = []
    for c in conditions:
        agg = aggregate_defined(plan.metrics(stats[c.name]), plan.metric_names)
        for metric, (value, n) in agg.items():
            rows.append({"model": s.model_name, "probe": probe, "condition": c.name, "layers": c.layers_str,
                         "metric": metric, "value": value, "n": n, "seed": s.seed})
    return rows


@torch.no_grad()
def run_with_oom_retry(run, blocks, plan: ScoringPlan, batch: Batch, conditions) -> dict:
    """Run a batch; on out-of-memory halve it and retry. Returns {cond: [(sub_batch, logits)]}."""
    try:
        res = run(blocks, batch, conditions)
        return {c: [(batch, res[c])] for c in conditions}
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not _is_oom(e) or len(batch.rows) == 1:
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(batch.rows) // 2
        out: dict = {c: [] for c in conditions}
        for part in (batch.rows[:half], batch.rows[half:]):
            sub = run_with_oom_retry(run, blocks, plan, plan.make_batch(part), conditions)
            for c in conditions:
                out[c] += sub[c]
        return out


def _progress_file(progress_dir: Path, probe: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in probe)
    return Path(progress_dir) / f"{safe}.jsonl"


def _read_progress(progress_dir: Path, probe: str) -> dict[tuple[str, int], dict[int, dict]]:
    return {(d["condition"], d["batch"]): {int(k): v for k, v in d["stats"].items()}
            for d in read_progress(_progress_file(progress_dir, probe))}


def _append_progress(progress_dir: Path, probe: str, records: list[dict]) -> None:
    append_progress(_progress_file(progress_dir, probe), records)


# ----------------------------------------------------------------------------- the command
def _skip_sets_value(value) -> list[list[int | str]]:
    """Skip sets given in Python or YAML: a list of lists of layers and ``attn:L`` / ``mlp:L`` items."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, (list, tuple)) for s in value):
        raise PrunescopeError(f"sets must be a list of skip sets (lists of layers and attn:L / mlp:L), got {value!r}")
    return [_set_items(s) for s in value]


def _layers_value(value) -> list[int]:
    """Layers given in Python or YAML: a list of layer numbers."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        raise PrunescopeError(f"pairs_range must be layers (a list, or text like '12-27'), got {value!r}")
    return list(value)


#: Skip sets: text as :func:`parse_skip_sets` reads it (``"3,4;attn:5"``), or lists of layers and ``attn:L`` items.
SkipSets = Annotated[list[list[int | str]], Reader("a list of skip sets (layers, ranges, attn:L, mlp:L)",
                                                   parse_skip_sets, _skip_sets_value)]
#: Layers: text as :func:`prunescope.probe.interaction.parse_layers` reads it (``"12-27"``, ``"3,5,9"``), or a list.
Layers = Annotated[list[int], Reader("layers (a range like 12-27 or a list like 3,5,9)", parse_layers, _layers_value)]


def takes(probe: str, name: str) -> bool:
    """Whether built-in ``probe``'s item maker has the keyword ``name`` (the others swallow it unread).

    >>> takes("binding", "distance"), takes("binding_undefined", "variant"), takes("copy", "tokenizer")
    (True, False, False)
    """
    return probe in PROBES and name in inspect.signature(PROBES[probe]).parameters


def sweep_items(probes: Sequence[str], n: int, seed: int, options: dict, tokenizer=None) -> dict[str, list[Item]]:
    """Each probe's items, built with ``options`` (every maker takes the ones it knows). The makers that
    take a tokenizer get ``tokenizer``, the swept model's: an item whose answer that tokenizer merges with
    the text around it is drawn again (:func:`prunescope.probe.tasks.item_is_clean`).

    >>> from prunescope.probe.tiny import tiny_model
    >>> _, tok = tiny_model("llama")
    >>> its = sweep_items(["binding", "copy"], 2, 0, {"variant": "code", "distance": [3]}, tok)
    >>> [(it.meta["kind"], it.meta["distance"]) for it in its["binding"]]
    [('code', 3), ('code', 3)]
    """
    return {p: make_items(p, n=n, seed=seed, **options, **({"tokenizer": tokenizer} if takes(p, "tokenizer") else {}))
            for p in probes}


# the SweepOptions fields passed to the item makers (each takes those it knows; probe_options)
PROBE_OPTIONS = ("shots", "ops", "digits", "carry", "length", "variant", "distance", "chain")

# what a sweep writes in its --out folder (what --overwrite removes)
SWEEP_OUTPUTS = ("config.json", "sweep.csv", "sweep.jsonl", "items", "sweep*.png", "pairs*.png", "cumulative*.png",
                 ".progress")


@dataclass
class SweepOptions(Options):
    """Settings of ``prunescope sweep`` (:func:`sweep`).

    >>> SweepOptions(probes="arithmetic,brackets", items=50, windows=[1, 2]).check().probes
    ['arithmetic', 'brackets']
    >>> SweepOptions(probes="binding,carry_chain", variant="code", distance="3,4", chain=5).check().probe_options()
    {'variant': 'code', 'distance': [3, 4], 'chain': 5}
    """

    probes: list[str] = option(["arithmetic"], f"comma-separated probes ({', '.join(PROBES)}) or JSONL files of "
                                               "items {prompt, answer, wrong, group}")
    items: int = option(200, "items per probe", minimum=1)
    seed: int = option(0, SHARED_MEANINGS["seed"], minimum=0)
    shots: int | None = option(None, SHARED_MEANINGS["shots"], minimum=0)
    ops: list[str] | None = option(None, "arithmetic_multi: operators, e.g. '+,-' (default: + - * //); carry_chain: "
                                         "+ and/or - (default: both)", choices=tuple(OPERATORS), what="operator")
    digits: int | None = option(None, "arithmetic_multi: operand digit count (default: 2); carry_chain: the first "
                                      "operand's digit count (default: chain + 1)", minimum=1)
    carry: str | None = option(None, "arithmetic_multi: keep only items with / without a carry (default: any)",
                               choices=("any", "carry", "no_carry"))
    length: int | None = option(None, "brackets: brackets per synthetic sequence (default: 10); copy: words per list "
                                      "(default: 6); counting: items of a list at most, 3-9 (default: 7)", minimum=2)
    variant: str | None = option(None, "string_close, binding, indentation, carry_chain, counting: synthetic items, "
                                       "code items, or both mixed at random (default: both)", choices=VARIANTS)
    distance: list[int] | None = option(None, "binding, binding_undefined: lines between a name's definition and its "
                                              "use, one value or a comma list to draw from (default: 1,2,4,8)",
                                        minimum=1, maximum=8)
    chain: int | None = option(None, "carry_chain: digit columns a carry or borrow runs through, at least "
                                     "(default: 3)", minimum=1, maximum=9)
    windows: list[int] = option([1], "window widths to skip, comma-separated (1 = single layers)", minimum=1)
    sets: SkipSets = option([], "extra skip sets, ';' between sets: layers, ranges and sublayers, e.g. "
                                "'3,4;10-12;attn:3,mlp:4'")
    sublayers: bool = option(False, "also skip the attention alone and the MLP alone of each window (conditions "
                                     "skip_attn:L, skip_mlp:L)")
    pairs_range: Layers | None = option(None, "layers whose every pair is skipped together, e.g. 12-27: the "
                                              "interaction of each pair (its drop minus both single drops)",
                                        cli=Flag(metavar="LAYERS"))
    cumulative: list[str] = option([], "orders to remove layers in one by one, comma-separated: bi (lowest Block "
                                       "Influence on the probe items first), skip-drop (the smallest single-layer "
                                       "drop first) or a table (patching layers.csv, prunescope score table, "
                                       "sweep.csv)",
                                   cli=Flag(metavar="ORDERS"))
    cumulative_steps: int | None = option(None, "layers removed at most along each cumulative order (default: half "
                                                "the layers)", minimum=1)
    scoring: str = option("first_diff", "first_diff: compare answers where their tokens first differ; logprob: "
                                        "whole-answer log-probability", choices=SCORINGS)
    loss_text: str | None = option(None, SHARED_MEANINGS["loss_text"] + " (default: none; given, its loss is swept "
                                                                        "beside the probes, on --items texts)")
    batch_size: int | None = option(None, SHARED_MEANINGS["batch_size"] + " (default: from free memory)", minimum=1)
    prefix_reuse: bool = option(True, "reuse the shared prompt prefix and each layer's cached input (off: one "
                                      "full forward per condition, slower)",
                                cli=Flag("--no-prefix-reuse", help="one full forward per condition (slower)"))

    def validate(self) -> None:
        if not self.probes and not self.loss_text:
            raise PrunescopeError("no probe given: pass e.g. --probes arithmetic,brackets,copy (or --loss-text FILE)")
        for p in self.probes:
            check_probe(p)
            if p in PROBES:  # the maker checks the options it takes (carry_chain: chain <= digits): draw one item
                make_items(p, n=1, seed=self.seed, **self.probe_options())
        for src in self.cumulative:
            if src not in ORDER_NAMES and not Path(src).is_file():
                raise PrunescopeError(f"cumulative order {src!r} is neither {' nor '.join(ORDER_NAMES)} nor a results "
                                      "table that exists (the patching order: a patching run's layers.csv; also a "
                                      "prunescope score table or a sweep.csv)")

    def probe_options(self) -> dict:
        """The item makers' keyword arguments that were set (:data:`PROBE_OPTIONS`: shots, ops, digits,
        carry, length, variant, distance, chain); a maker ignores those it does not take."""
        return {k: getattr(self, k) for k in PROBE_OPTIONS if getattr(self, k) is not None}


def sweep(options: SweepOptions | None = None, *, model: str | None = None, placement: Placement | None = None,
          output: Output | None = None, loaded=None) -> list[dict]:
    """``prunescope sweep``: load the model, build probe items, run, write tables and figures.

    Writes ``OUT/sweep.csv``, ``OUT/sweep.jsonl``, ``OUT/items/<probe>.jsonl`` (the exact items
    used), ``OUT/config.json`` and figures: ``OUT/sweep_layers.png`` (+ ``sweep_windows.png``) of
    ``margin_accuracy``, ``OUT/sweep_exact_match.png`` (+ ``sweep_windows_exact_match.png``) of
    ``exact_match``; with ``pairs_range``, ``OUT/pairs.png`` (+ ``pairs_exact_match.png``); with
    ``cumulative``, ``OUT/cumulative.png`` (+ ``cumulative_exact_match.png``).
    Re-running with the same ``out`` and settings resumes; other settings are refused.

    Placement: ``device`` (one device), ``device_map="auto"`` + ``max_memory`` (one model sharded
    over several GPUs, through accelerate), or ``devices=N`` (N processes, one model copy each,
    the work split between them; also what runs under ``torchrun --nproc_per_node N``). The
    rows do not depend on the split: in fp32 they are identical; on GPUs in bf16 they are
    identical as long as the batch size is the same (pass ``batch_size``: the default is sized
    from free memory, and other batch compositions round bf16 differently).

    >>> rows = sweep(SweepOptions(probes="arithmetic", items=50), output=Output(out="runs/s"))  # doctest: +SKIP
    """
    options = (options or SweepOptions()).check()
    placement = (placement or Placement()).check()
    return spread(sweep, _sweep, options, model=model, placement=placement, output=output or Output(),
                  loaded=loaded)


def _sweep(d: Dist, options: SweepOptions, *, model, placement: Placement, output: Output, loaded) -> list[dict]:
    from prunescope.probe.models import load_model

    o = options
    probes, n, seed = list(o.probes), o.items, o.seed
    probe_options = o.probe_options()
    # items that need no tokenizer are built before the model loads (a bad JSONL file fails early)
    items = sweep_items([p for p in probes if not takes(p, "tokenizer")], n, seed, probe_options)
    texts = load_texts(o.loss_text)[:n] if o.loss_text else None
    config = {"model": str(model or "default"), "probes": probes, "items": n, "seed": seed, "windows": list(o.windows),
              "sets": [list(s) for s in o.sets], "scoring": o.scoring, "probe_options": probe_options,
              "dtype": placement.dtype, "prefix_reuse": o.prefix_reuse, "batch_size": o.batch_size,
              "loss_text": str(o.loss_text) if o.loss_text else None, **_interaction_config(o)}
    out = Path(output.out) if output.out else None
    if out and not output.overwrite:  # refuse other settings before loading anything; record them once the run can start
        d.on_main(check_run_config, out, config, "sweep", paths=("model",), write=False)
    elif out:
        d.on_main(expect_folder, out)
    lm = loaded or load_model(model, **{**placement.load_kwargs(), "device": rank_device(placement.device, d)})
    items |= sweep_items([p for p in probes if p not in items], n, seed, probe_options, lm.tokenizer)
    items = {p: items[p] for p in probes}
    scoring, text = o.scoring, o.loss_text
    plans: dict = {p: ScoringPlan(lm.tokenizer, its, scoring) for p, its in items.items()}
    if texts:
        plans[f"text:{Path(text).stem}"] = TextPlan(lm.tokenizer, texts)
    settings = SweepSettings(windows=o.windows, sets=o.sets, scoring=scoring, batch_size=o.batch_size,
                             prefix_reuse=o.prefix_reuse, model_name=lm.name, seed=seed,
                             progress_dir=(out / ".progress") if out else None, show_progress=output.progress,
                             sublayers=o.sublayers, pairs=o.pairs_range or (), cumulative=o.cumulative,
                             cumulative_steps=o.cumulative_steps)
    sweep_conditions(lm.blocks.n_layers, settings)  # bad layer sets fail here, before anything is written
    with run_lock(out if d.is_main else None, "sweep"):
        if out and output.overwrite:  # the input is good: an earlier sweep's results go (every rank waits)
            d.on_main(remove_previous, out, SWEEP_OUTPUTS)
        if out and d.is_main:
            record_run_config(out, config)
            for p, its in items.items():
                save_items(its, out / "items" / f"{Path(p).stem if p.endswith('.jsonl') else p}.jsonl")
        rows = sweep_blocks(lm.blocks, lm.tokenizer, plans, settings, dist=d)
        if out and d.is_main:
            write_table(rows, out / "sweep")
            if output.plot:
                _plot_all(rows, out)
    return rows


def _interaction_config(o: SweepOptions) -> dict:
    """The sublayer, pair and cumulative settings of a run's config.json, where set (so a folder of a
    sweep without them still resumes)."""
    given = {"sublayers": o.sublayers, "pairs_range": o.pairs_range, "cumulative": list(o.cumulative),
             "cumulative_steps": o.cumulative_steps}
    return {k: v for k, v in given.items() if v}


def _plot_all(rows: list[dict], out: Path) -> None:
    """The sweep's figures, of both probe scores (never one alone): margin accuracy (and text sets'
    loss), greedy exact match; pairs.png and cumulative.png where the rows hold them."""
    from prunescope.core.plots import plot_cumulative, plot_pairs, plot_sweep

    for metric in ("margin_accuracy", "exact_match"):
        plot_sweep(rows, out, metric)
        plot_pairs(rows, out, metric)
        plot_cumulative(rows, out, metric)
