"""One generation engine: continuous batching over a slotted KV cache.

SGR answers, lm-eval's ``generate_until`` requests (GSM8K, summaries), the code tasks and every
skipped-layer ablation of them run through :class:`Engine`. It keeps ``slots`` sequences in
flight: a finished row (EOS, a stop string or its own ``max_new_tokens``) is refilled from the
queue at once, new prompts are prefilled in length-sorted groups, and on CUDA the decode step is
one captured graph (no per-step Python or launch overhead inside it).

Why a slotted cache and not transformers' paged one: a slot is one row of a preallocated
``[slots, kv_heads, capacity, head_dim]`` tensor per layer, written at each row's own position and
read whole under a per-row mask. Every shape is fixed, so one CUDA graph serves every step, and
the model runs its own ``forward`` (hooks, skipped layers and all), which a paged kernel path does
not promise. Benchmarks against ``generate`` and ``generate_batch``: ``benchmarks/generation.py``.

Sampling is batch-independent: a request's random number at each step depends only on its own
``seed`` and the step (a counter-based hash; the token is where it falls in the cumulative
distribution), never on which requests share the batch. So a resumed SGR run redraws the same answers whenever the logits are
the same; in fp32 they are (tested), in bf16 a different batch can round a logit differently.

>>> from prunescope.probe.tiny import tiny_model
>>> model, tok = tiny_model("llama")
>>> out = Engine(model, tok).generate([Request(tok("a b c").input_ids, max_new_tokens=4)])
>>> len(out[0].tokens)
4
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from prunescope.core.errors import PrunescopeError
from prunescope.core.options import SHARED_MEANINGS, Options, option

_MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Request:
    """One prompt (token ids) and how to continue it.

    ``temperature=0`` is greedy; ``seed`` picks this request's own random stream. ``skip``: layers
    this request alone skips (its row of the batch; the others keep them), as if it ran on a model
    pruned of those layers.
    """

    prompt: Sequence[int]
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    skip: tuple[int, ...] = ()


@dataclass
class Completion:
    """The generated tokens (EOS excluded), their text cut at the first stop string, and why it ended."""

    tokens: list[int]
    text: str
    finish: str  # "eos" | "stop" | "length"


@dataclass
class GenerationOptions(Options):
    """Settings of the engine (shared by ``sgr`` and ``evaluate``).

    >>> GenerationOptions(slots=8).check().slots
    8
    """

    slots: int = option(64, SHARED_MEANINGS["slots"], minimum=1)
    prefill_tokens: int = option(16384, "prompt tokens (rows x padded length) per prefill forward", minimum=1)
    refill: float = option(0.125, "prefill new prompts once this share of the slots is free "
                                  "(fewer, larger prefills)", minimum=0, maximum=1)
    graphs: str = option("auto", "CUDA graph for the decode step: auto (on CUDA), on, off",
                         choices=("auto", "on", "off"))


# ----------------------------------------------------------------------------- sampling
def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash on int64 tensors (every product stays below 2**63)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x5BD1E995) & _MASK32
    x = x ^ (x >> 13)
    x = (x * 0x27D4EB2D) & _MASK32
    return x ^ (x >> 16)


def request_uniform(seed: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """One uniform in (0, 1) per row, a function of (seed, step) alone (float64, 32 random bits).

    >>> u = request_uniform(torch.tensor([7, 7, 8]), torch.tensor([0, 0, 0]))
    >>> bool(u[0] == u[1]), bool(u[0] != u[2]), bool(((u > 0) & (u < 1)).all())
    (True, True, True)
    """
    h = _mix32(_mix32(_mix32(seed & _MASK32) ^ (step & _MASK32)) ^ ((seed >> 32) & _MASK32))
    return (h.to(torch.float64) + 0.5) / float(1 << 32)


def pick_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, seed: torch.Tensor,
                step: torch.Tensor, *, sample: bool, nucleus: bool) -> torch.Tensor:
    """Greedy rows (temperature 0) take the argmax; the others sample ``softmax(logits / T)``,
    restricted to the top-p nucleus, by inverting its cumulative distribution at the row's own
    :func:`request_uniform`. One uniform per row and a few passes over the vocabulary: no random
    number depends on another row, so the draw does not depend on the batch."""
    greedy = logits.argmax(-1)
    if not sample:
        return greedy
    scaled = logits / temperature.clamp_min(1e-6)[:, None]
    order = None
    if nucleus:
        scaled, order = scaled.sort(-1, descending=True)
    probs = scaled.softmax(-1)
    if nucleus:
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        probs = probs * ((probs.cumsum(-1) - probs) <= top_p[:, None])
    cdf = probs.double().cumsum(-1)
    u = request_uniform(seed, step) * cdf[:, -1]
    pick = torch.searchsorted(cdf, u[:, None]).clamp_max(cdf.shape[-1] - 1)
    sampled = (order.gather(-1, pick) if nucleus else pick)[:, 0]
    return torch.where(temperature > 0, sampled, greedy)


# ----------------------------------------------------------------------------- the cache
class SlotCache:
    """KV cache of fixed shape ``[slots, kv_heads, capacity, head_dim]`` per layer.

    The model's attention calls :meth:`update`. In ``prefill`` mode it writes a group of new
    prompts into their rows at positions ``[0, t)`` and returns just their keys and values; in
    ``decode`` mode it writes one token per row at that row's own position (``flat_index``) and
    returns the whole cache, which the per-row mask reads.
    """

    is_compileable = False

    def __init__(self, slots: int, capacity: int):
        self.slots, self.capacity = slots, capacity
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.mode = "prefill"
        self.rows: torch.Tensor | None = None       # prefill: the slots being filled
        self.flat_index: torch.Tensor | None = None  # decode: (slot, head, position) flattened

    def _buffers(self, layer: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer not in self.keys:
            shape = (self.slots, like.shape[1], self.capacity, like.shape[3])
            self.keys[layer] = torch.zeros(shape, dtype=like.dtype, device=like.device)
            self.values[layer] = torch.zeros(shape, dtype=like.dtype, device=like.device)
        return self.keys[layer], self.values[layer]

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        k, v = self._buffers(layer_idx, key_states)
        if self.mode == "prefill":
            t = key_states.shape[2]
            k[self.rows, :, :t] = key_states.to(k.dtype)
            v[self.rows, :, :t] = value_states.to(v.dtype)
            return key_states, value_states
        d = k.shape[-1]
        k.view(-1, d).index_copy_(0, self.flat_index, key_states.reshape(-1, d).to(k.dtype))
        v.view(-1, d).index_copy_(0, self.flat_index, value_states.reshape(-1, d).to(v.dtype))
        return k, v

    def get_seq_length(self, layer_idx: int = 0) -> int:  # read only when no position ids are given
        return 0

    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys.values(), *self.values.values()))


def kv_bytes_per_token(config, dtype: torch.dtype = torch.float32) -> int:
    """Cache bytes one token takes over all layers (keys and values).

    >>> from transformers import LlamaConfig
    >>> kv_bytes_per_token(LlamaConfig(num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
    ...                                hidden_size=4096), torch.bfloat16)
    131072
    """
    heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    return 2 * int(config.num_hidden_layers) * heads * head_dim * dtype.itemsize


def _available_ram() -> int | None:
    """Bytes of memory available to new allocations (Linux MemAvailable: free plus reclaimable cache)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# ----------------------------------------------------------------------------- masks
def _layer_windows(config) -> dict[str, int | None]:
    """Each attention type the model uses and its window (None = full attention)."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types:
        return {t: (window if t == "sliding_attention" else None) for t in dict.fromkeys(types)}
    return {"": window}  # one mask for every layer (Mistral's sliding window applies to all of them)


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # additive, not boolean: eager attention adds the mask, sdpa accepts either; the finite minimum
    # keeps a row with nothing visible (an idle slot) from turning into NaN
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def _masks(windows: dict[str, int | None], key_ok: torch.Tensor, key_pos: torch.Tensor, query_pos: torch.Tensor,
           dtype: torch.dtype):
    """``[rows, 1, queries, keys]`` masks per attention type: keys that exist, are not in the
    query's future, and (sliding layers) lie inside the window."""
    out = {}
    for kind, window in windows.items():
        allowed = key_ok[:, None, :] & (key_pos[:, None, :] <= query_pos[:, :, None])
        if window is not None:
            allowed = allowed & (key_pos[:, None, :] > query_pos[:, :, None] - window)
        out[kind] = _additive(allowed[:, None], dtype)
    return out[""] if "" in out else out


# ----------------------------------------------------------------------------- the engine
@dataclass
class GenerationStats:
    """The work one engine run did (a replayed CUDA graph runs no Python hooks, so a forward
    counter on the model would miss the decode steps: benchmarks take their floors from these).

    ``live_rows`` counts the rows not yet retired at each launched step (the rest of
    ``decode_rows`` is idle slots: the tail and the slots waiting for a refill);
    ``prefill_seconds`` is host time in prefill, which synchronises (it reads its first tokens
    back); ``idle_steps`` are decode steps with every row idle (a CUDA-graph capture's warm-up).

    >>> from prunescope.probe.tiny import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> stats = Engine(model, tok).run([Request(tok("a b c").input_ids, max_new_tokens=4)]).stats
    >>> stats.prefill_forwards, stats.new_tokens, stats.slots
    (1, 4, 1)
    """

    prefill_forwards: int = 0
    prefill_tokens: int = 0
    decode_steps: int = 0
    decode_rows: int = 0
    live_rows: int = 0
    new_tokens: int = 0
    prefill_seconds: float = 0.0
    slots: int = 0
    capacity: int = 0
    idle_steps: int = 0
    graph: bool = False  # the decode steps replayed one captured CUDA graph


@dataclass
class GenerationRun:
    """The completions of one :meth:`Engine.run`, in the order of its requests, and its work."""

    completions: list[Completion]
    stats: GenerationStats


@dataclass
class _Row:
    index: int
    request: Request
    tokens: list[int] = field(default_factory=list)


@dataclass
class _RunState:
    """The device side of one run: the cache and one entry per slot in each tensor. A captured
    CUDA graph reads these very tensors, so a decode step only ever writes them in place."""

    slots: int
    capacity: int
    cache: SlotCache | None
    slot_ids: torch.Tensor     # 0 .. slots-1
    tok: torch.Tensor          # each row's pending token (the next step's input)
    pos: torch.Tensor          # its position
    write: torch.Tensor        # the cache column it writes next
    step: torch.Tensor         # tokens generated (the sampler's counter)
    seed: torch.Tensor
    temperature: torch.Tensor
    top_p: torch.Tensor
    active: torch.Tensor       # running rows; an idle row's write pointer and counters stay put
    next_tokens: torch.Tensor  # the last step's picks, read back by the host
    row_skip: torch.Tensor     # per-row skipped layers, [layer, slot]
    key_ok: torch.Tensor       # [slot, column]: the key there exists
    key_pos: torch.Tensor      # [slot, column]: its position
    per_row: bool              # some request skips layers of its own
    sample: bool
    nucleus: bool
    stats: GenerationStats
    rehearse: bool             # run the capture's idle steps before the first step, on any device
    skip_now: torch.Tensor | None = None  # the rows of row_skip the running forward holds
    graph: torch.cuda.CUDAGraph | None = None
    heads: int | None = None
    pieces: dict[int, str] = field(default_factory=dict)  # token -> its text (stop strings)

    def pick(self, logits: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        sel = (lambda t: t) if rows is None else (lambda t: t[rows])
        return pick_tokens(logits, sel(self.temperature), sel(self.top_p), sel(self.seed), sel(self.step),
                           sample=self.sample, nucleus=self.nucleus)


@dataclass
class _Schedule:
    """The host side of one run: which request runs in which slot."""

    requests: list[Request]
    queue: list[int]   # request indices, the longest prompt last (pop() takes it)
    free: list[int]    # free slots
    bar: tqdm
    running: dict[int, _Row] = field(default_factory=dict)  # slot -> its row
    in_flight: bool = False  # a decode step whose tokens are not read yet

    @classmethod
    def of(cls, requests: list[Request], slots: int, bar: tqdm) -> _Schedule:
        # length-sorted prefill: the longest prompts first, so each group pads little
        queue = sorted(range(len(requests)), key=lambda i: -len(requests[i].prompt))
        queue.reverse()
        return cls(requests, queue, list(range(slots - 1, -1, -1)), bar)


class Engine:
    """Continuous-batching generation with the model's own forward (hooks and skipped layers apply).

    ``rehearse_capture`` (for tests): run the CUDA-graph capture's idle warm-up steps before the
    first decode step on any device, so the state they leave behind is checked where no GPU is.

    >>> from prunescope.probe.tiny import tiny_model
    >>> model, tok = tiny_model("qwen2")
    >>> reqs = [Request(tok(t).input_ids, max_new_tokens=3, temperature=0.8, seed=i) for i, t in enumerate(["a", "b c"])]
    >>> [len(c.tokens) for c in Engine(model, tok, GenerationOptions(slots=2)).generate(reqs)]
    [3, 3]
    """

    def __init__(self, model: torch.nn.Module, tokenizer, options: GenerationOptions | None = None, *,
                 rehearse_capture: bool = False):
        self.model, self.tokenizer = model, tokenizer
        self.options = (options or GenerationOptions()).check()
        self.rehearse_capture = rehearse_capture
        self.config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = eos if eos is not None else getattr(tokenizer, "eos_token_id", None)
        self.eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        params = inspect.signature(getattr(model, "model", model).forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.windows = _layer_windows(self.config)

    # ------------------------------------------------------------------ public
    def generate(self, requests: Sequence[Request], *, progress: bool = False, desc: str = "generate",
                 fan_out: SkipSets | None = None) -> list[Completion]:
        """Completions in the order of ``requests`` (with ``fan_out``: those of its current set)."""
        return self.run(requests, progress=progress, desc=desc, fan_out=fan_out).completions

    def run(self, requests: Sequence[Request], *, progress: bool = False, desc: str = "generate",
            fan_out: SkipSets | None = None) -> GenerationRun:
        """The completions in the order of ``requests`` and the work the run did.

        ``fan_out``: answer as the model with its current set of layers skipped, generating every
        set of it in one run the first time (:class:`SkipSets`). Requests that skip layers of their own are never fanned out.
        """
        if fan_out is not None and not any(r.skip for r in requests):
            return fan_out.answer(self, list(requests), progress, desc)
        return self._complete(list(requests), progress, desc)

    def stream(self, requests: Sequence[Request], *, progress: bool = False, desc: str = "generate",
               stats: GenerationStats | None = None) -> Iterator[tuple[int, Completion]]:
        """Yield ``(index, completion)`` as each request finishes (not in request order).
        ``stats``, when given, is filled in as the run goes."""
        requests = list(requests)
        if not requests:
            return
        for i, r in enumerate(requests):
            if len(r.prompt) == 0:
                raise PrunescopeError(f"generation request {i} has an empty prompt: give at least one token")
            if r.max_new_tokens < 1:
                raise PrunescopeError(f"generation request {i} asks for {r.max_new_tokens} new tokens: give at least 1")
        skipped = sorted({i for r in requests for i in r.skip})
        rows = contextlib.nullcontext()
        if skipped:
            from prunescope.probe.blocks import Blocks

            blocks = Blocks(self.model)
            for r in requests:
                blocks.check_layers(r.skip)  # each request keeps at least one layer
            rows = blocks.skip_rows(skipped, lambda i: state.skip_now[i])  # read at each forward
        state = self._setup(requests, stats if stats is not None else GenerationStats())
        with torch.no_grad(), rows:
            yield from self._run(state, requests, progress, desc)

    # ------------------------------------------------------------------ internals
    def _complete(self, requests: list[Request], progress: bool, desc: str) -> GenerationRun:
        """Every request generated (no fan-out), in request order."""
        stats = GenerationStats()
        out: list[Completion | None] = [None] * len(requests)
        for i, completion in self.stream(requests, progress=progress, desc=desc, stats=stats):
            out[i] = completion
        return GenerationRun(out, stats)  # type: ignore[arg-type]

    def _slots_for(self, capacity: int, wanted: int) -> int:
        """No more slots than the cache can hold at full capacity in 60% of the free device memory
        (on a CPU, 30% of the available RAM: long prompts times many slots add up)."""
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = 0.6 * free
        else:
            ram = _available_ram()
            if ram is None:  # unknown here: trust the request
                return wanted
            budget = 0.3 * ram
        per_row = capacity * kv_bytes_per_token(self.config, self.dtype)
        return max(1, min(wanted, int(budget) // per_row))

    def _setup(self, requests: list[Request], stats: GenerationStats) -> _RunState:
        """A run's state: every request fits a slot's capacity, and as many slots as memory allows."""
        capacity = max(len(r.prompt) for r in requests) + max(r.max_new_tokens for r in requests) + 1
        s, dev = self._slots_for(capacity, min(self.options.slots, len(requests))), self.device
        stats.slots, stats.capacity = s, capacity
        z = lambda dtype=torch.long: torch.zeros(s, dtype=dtype, device=dev)  # noqa: E731
        row_skip = torch.zeros(int(self.config.num_hidden_layers), s, dtype=torch.bool, device=dev)
        return _RunState(
            slots=s, capacity=capacity, cache=SlotCache(s, capacity), slot_ids=torch.arange(s, device=dev),
            tok=z(), pos=z(), write=z(), step=z(), seed=z(),
            temperature=z(torch.float32), top_p=z(torch.float32) + 1, active=z(torch.bool), next_tokens=z(),
            row_skip=row_skip, skip_now=row_skip,
            key_ok=torch.zeros(s, capacity, dtype=torch.bool, device=dev),
            key_pos=torch.zeros(s, capacity, dtype=torch.long, device=dev),
            per_row=any(r.skip for r in requests),
            sample=any(r.temperature > 0 for r in requests),
            nucleus=any(r.temperature > 0 and r.top_p < 1 for r in requests),
            stats=stats, rehearse=self.rehearse_capture)

    def _forward(self, cache: SlotCache, ids, positions, mask) -> torch.Tensor:
        out = self.model(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True,
                         logits_to_keep=1, **{self._cache_kw: cache})
        return out.logits[:, -1].float()

    def _prefill(self, state: _RunState, group: list[_Row], slots: list[int]) -> torch.Tensor:
        """Prefill ``group`` into ``slots`` (one left-padded forward) and ready them for decoding;
        the first token of each row."""
        dev, n = self.device, len(group)
        longest = max(len(r.request.prompt) for r in group)
        ids = torch.full((n, longest), self.pad, dtype=torch.long)
        ok = torch.zeros(n, longest, dtype=torch.bool)
        for j, row in enumerate(group):  # left padding: every row's last prompt token is the last column
            p = list(row.request.prompt)
            ids[j, longest - len(p):] = torch.tensor(p, dtype=torch.long)
            ok[j, longest - len(p):] = True
        ids, ok = ids.to(dev), ok.to(dev)
        state.stats.prefill_forwards += 1
        state.stats.prefill_tokens += n * longest
        positions = (ok.long().cumsum(-1) - 1).clamp_min(0)
        rows = torch.tensor(slots, dtype=torch.long, device=dev)
        self._assign_rows(state, group, slots, rows)
        state.cache.mode, state.cache.rows = "prefill", rows
        mask = _masks(self.windows, ok, positions, positions, self.dtype)
        logits = self._forward(state.cache, ids, positions, mask)
        state.skip_now = state.row_skip  # decode steps run every slot (a captured graph reads this tensor)
        first = state.pick(logits, rows)
        state.cache.mode = "decode"
        # the rows' state for decoding: keys [0, longest) as prefilled, next write right after them
        state.key_ok[rows] = False
        state.key_ok[rows, :longest] = ok
        state.key_pos[rows, :longest] = positions
        state.tok[rows] = first
        state.pos[rows] = positions[:, -1] + 1
        state.write[rows] = longest
        state.step[rows] = 1
        state.active[rows] = True
        return first

    def _assign_rows(self, state: _RunState, group: list[_Row], slots: list[int], rows: torch.Tensor) -> None:
        """The slots take their new requests' sampling settings and skipped layers."""
        for j, row in enumerate(group):
            r = row.request
            state.temperature[slots[j]], state.top_p[slots[j]] = float(r.temperature), float(r.top_p)
            state.seed[slots[j]] = int(r.seed) & 0x7FFFFFFFFFFFFFFF
        state.step[rows] = 0
        if state.per_row:  # the slots' skipped layers are their new rows' own
            own = torch.zeros(state.row_skip.shape[0], len(group), dtype=torch.bool)
            for j, row in enumerate(group):
                own[list(row.request.skip), j] = True
            state.row_skip[:, rows] = own.to(self.device)
            state.skip_now = state.row_skip[:, rows]

    def _decode_body(self, state: _RunState) -> None:
        cap = state.capacity
        slot = state.slot_ids
        flat = slot * cap + state.write
        state.key_ok.view(-1).index_fill_(0, flat, True)
        state.key_pos.view(-1).index_copy_(0, flat, state.pos)
        if state.heads is None:
            state.heads = next(iter(state.cache.keys.values())).shape[1]
        h = torch.arange(state.heads, device=self.device)
        state.cache.flat_index = ((slot[:, None] * state.heads + h[None, :]) * cap + state.write[:, None]).reshape(-1)
        mask = _masks(self.windows, state.key_ok, state.key_pos, state.pos[:, None], self.dtype)
        logits = self._forward(state.cache, state.tok[:, None], state.pos[:, None], mask)
        nxt = state.pick(logits)
        state.next_tokens.copy_(nxt)
        state.tok.copy_(nxt)
        inc = state.active.long()
        state.write.add_(inc)
        state.pos.add_(inc)
        state.step.add_(inc)

    def _want_graph(self) -> bool:
        g = self.options.graphs
        if g == "on" and self.device.type != "cuda":
            raise PrunescopeError("--graphs on needs a CUDA device; use --graphs auto or off")
        return self.device.type == "cuda" and g != "off"

    @staticmethod
    @contextlib.contextmanager
    def _all_idle(state: _RunState) -> Iterator[None]:
        """Decode steps inside leave the state a real step sees as it was: every row is idle, so
        no write pointer, position or step count moves and each step rewrites the key slot the
        next real step writes anyway; a step also replaces each row's pending token with its
        prediction, so the pending tokens are put back."""
        active, pending = state.active.clone(), state.tok.clone()
        state.active.zero_()
        try:
            yield
        finally:
            state.active.copy_(active)
            state.tok.copy_(pending)  # in place: a captured graph reads this very tensor

    def _idle_steps(self, state: _RunState, n: int) -> None:
        """``n`` decode steps with every row idle (the capture's warm-up)."""
        with self._all_idle(state):
            for _ in range(n):
                self._decode_body(state)
                state.stats.idle_steps += 1

    def _capture(self, state: _RunState) -> None:
        """Record one decode step as a CUDA graph: two idle warm-up steps on a side stream, then
        the capture itself (which runs no kernels), both with every row idle."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self._idle_steps(state, 2)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        with self._all_idle(state):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._decode_body(state)
            state.graph, state.stats.graph = graph, True

    def _launch(self, state: _RunState, live: int) -> None:
        """Queue one decode step (asynchronously on CUDA) with ``live`` rows not yet retired; its
        tokens land in ``next_tokens``."""
        state.stats.decode_steps += 1
        state.stats.decode_rows += state.slots
        state.stats.live_rows += live
        if state.graph is None and self._want_graph():
            self._capture(state)
        elif state.rehearse and state.graph is None:  # tests: the capture's idle steps, on any device
            state.rehearse = False
            self._idle_steps(state, 2)
        if state.graph is not None:
            state.graph.replay()
        else:
            self._decode_body(state)

    def _stop_hit(self, state: _RunState, row: _Row, token: int) -> bool:
        stops = row.request.stop
        if not stops:
            return False
        piece = state.pieces.get(token)
        if piece is None:
            piece = state.pieces[token] = self.tokenizer.decode([token], skip_special_tokens=False)
        # a stop can only have just completed if this token's text holds its last character
        if not any(s[-1] in piece for s in stops if s):
            return False
        window = max(len(s) for s in stops) + 4  # tokens are at least one character, bar byte pieces
        tail = self.tokenizer.decode(row.tokens[-window:], skip_special_tokens=False)
        return any(s in tail for s in stops)

    def _finish(self, row: _Row, reason: str) -> Completion:
        tokens = row.tokens[:-1] if reason == "eos" else row.tokens
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if row.request.stop:
            cut = min((i for i in (text.find(s) for s in row.request.stop) if i >= 0), default=-1)
            if cut >= 0:
                text, reason = text[:cut], "stop"
        return Completion(tokens=list(tokens), text=text, finish=reason)

    def _take(self, state: _RunState, row: _Row, token: int) -> str | None:
        """Append ``token`` to ``row``; why the row ends there, if it does."""
        row.tokens.append(token)
        if token in self.eos:
            return "eos"
        if len(row.tokens) >= row.request.max_new_tokens:
            return "length"
        if self._stop_hit(state, row, token):
            return "stop"
        return None

    # ------------------------------------------------------------------ the scheduler
    def _run(self, state: _RunState, requests: list[Request], progress: bool,
             desc: str) -> Iterator[tuple[int, Completion]]:
        """The scheduler. One decode step is kept in flight: step t+1 is queued before step t's
        tokens are read back and booked, so the host's bookkeeping overlaps the GPU's work. A row
        that finished at step t therefore runs one step more, whose token is dropped; rows are
        retired and refilled after that, in stream order."""
        bar = tqdm(total=len(requests), desc=desc, unit="req", disable=not progress)
        plan = _Schedule.of(requests, state.slots, bar)
        refill_at = max(1, math.ceil(self.options.refill * state.slots))
        try:
            while plan.queue or plan.running:
                if plan.queue and plan.free and (not plan.running or len(plan.free) >= min(refill_at, len(plan.queue))):
                    if plan.in_flight:  # book the step in flight first (retired rows' tokens are dropped)
                        plan.in_flight = False
                        yield from self._retire(state, plan, self._book(state, plan, state.next_tokens.tolist()))
                    else:
                        yield from self._retire(state, plan, self._admit(state, plan))
                    continue
                yield from self._retire(state, plan, self._decode_round(state, plan))
                if progress:
                    bar.set_postfix_str(f"{state.stats.new_tokens} tok", refresh=False)
                if not plan.running:
                    state.next_tokens.tolist()
                    plan.in_flight = False
        finally:
            bar.close()
            state.graph = None
            state.cache = None

    def _admit(self, state: _RunState, plan: _Schedule) -> list[tuple[int, str]]:
        """Prefill the longest queued prompts into free slots, as many as ``prefill_tokens``
        padded tokens hold (at least one); the rows that ended at their first token, with why."""
        started = time.perf_counter()
        group, slots = [], []
        longest = len(plan.requests[plan.queue[-1]].prompt)
        while plan.queue and plan.free and (len(group) + 1) * longest <= max(self.options.prefill_tokens, longest):
            i = plan.queue.pop()
            group.append(_Row(i, plan.requests[i]))
            slots.append(plan.free.pop())
        finished = []
        for row, slot, tok in zip(group, slots, self._prefill(state, group, slots).tolist()):
            plan.running[slot] = row
            reason = self._take(state, row, tok)
            if reason:
                finished.append((slot, reason))
        state.stats.prefill_seconds += time.perf_counter() - started
        return finished

    def _decode_round(self, state: _RunState, plan: _Schedule) -> list[tuple[int, str]]:
        """Read back the step in flight (launched first if none is) and book its tokens, with the
        next step already queued behind it; the rows that ended, with why."""
        live = len(plan.running)
        if not plan.in_flight:
            self._launch(state, live)
            plan.in_flight = True
        tokens = state.next_tokens.tolist()  # waits for the step in flight
        self._launch(state, live)  # the next step runs while this one's tokens are booked
        return self._book(state, plan, tokens)

    def _book(self, state: _RunState, plan: _Schedule, tokens: list[int]) -> list[tuple[int, str]]:
        """Append each running row's token; the rows that ended, with why."""
        return [(slot, reason) for slot, row in plan.running.items() if (reason := self._take(state, row, tokens[slot]))]

    def _retire(self, state: _RunState, plan: _Schedule,
                finished: list[tuple[int, str]]) -> Iterator[tuple[int, Completion]]:
        """Idle the finished rows' slots, free them and yield their completions."""
        if finished:
            idle = torch.tensor([s for s, _ in finished], device=self.device)
            state.active[idle] = False
        for slot, reason in finished:
            row = plan.running.pop(slot)
            plan.free.append(slot)
            state.stats.new_tokens += len(row.tokens)
            plan.bar.update(1)
            yield row.index, self._finish(row, reason)


class SkipSets:
    """Several sets of skipped layers answered from one engine run: the sets, the one being
    answered (``current``) and the completions generated so far, by (set, request). Pass it as
    ``fan_out`` to :meth:`Engine.run` / :meth:`Engine.generate`. The paper's selection scores some 25
    layer sets a greedy step on the same held-out prompts: one run keeps the slots full where 25 runs
    of 64 rows leave most of them idle at their tails. Only generation is fanned out.

    >>> from prunescope.probe.tiny import tiny_model
    >>> model, tok = tiny_model("llama"); req = [Request(tok("a b").input_ids, max_new_tokens=3)]
    >>> fan = SkipSets([[1], [2]])
    >>> first = Engine(model, tok).run(req, fan_out=fan)
    >>> fan.select([2]); second = Engine(model, tok).run(req, fan_out=fan)
    >>> first.stats.prefill_forwards, second.stats.prefill_forwards  # the second is answered from the first run
    (1, 0)
    """

    def __init__(self, sets: Iterable[Iterable[int]]):
        self.sets = list(dict.fromkeys(tuple(sorted(s)) for s in sets))
        if not self.sets:
            raise PrunescopeError("SkipSets needs at least one set of layers")
        self.current = self.sets[0]
        self.done: dict[tuple, Completion] = {}

    def select(self, layers: Iterable[int]) -> None:
        """Answer the following ``generate`` calls as the model with ``layers`` skipped."""
        key = tuple(sorted(layers))
        if key not in self.sets:
            raise PrunescopeError(f"skip set {list(key)} is not one of this block's {len(self.sets)} sets")
        self.current = key

    @staticmethod
    def _key(r: Request) -> tuple:
        return (tuple(r.prompt), r.max_new_tokens, tuple(r.stop), r.temperature, r.top_p, r.seed)

    def answer(self, engine: Engine, requests: list[Request], progress: bool, desc: str) -> GenerationRun:
        """The current set's completions of ``requests``; the run's work is that of generating the
        rows not generated yet (none when every answer is known)."""
        keys = [self._key(r) for r in requests]
        stats = GenerationStats()
        if any((self.current, k) not in self.done for k in keys):
            # every set's rows in one run: a row per (request, set) not generated yet
            todo = {(s, k): r for s in self.sets for k, r in zip(keys, requests) if (s, k) not in self.done}
            made = engine._complete([dataclasses.replace(r, skip=s) for (s, _), r in todo.items()],
                                    progress, f"{desc} x{len(self.sets)} skip sets")
            self.done.update(zip(todo, made.completions))
            stats = made.stats
        return GenerationRun([self.done[(self.current, k)] for k in keys], stats)


@dataclass
class EngineSettings:
    """How a caller runs its requests through the engine: ``slots`` rows at once, a progress bar,
    and ``fan_out`` (:class:`SkipSets`: answer as the model with its current skip set, generating
    every set's rows in one run).

    >>> EngineSettings(slots=8, progress=False).fan_out is None
    True
    """

    slots: int = 64
    progress: bool = True
    fan_out: SkipSets | None = None


def generate_texts(loaded, prompts: Iterable[str], *, max_new_tokens: int = 256, stop: Sequence[str] = (),
                   options: GenerationOptions | None = None, progress: bool = False,
                   add_special_tokens: bool = True) -> list[str]:
    """Greedy texts for plain string prompts (a convenience over :class:`Engine`).

    >>> from prunescope.probe.models import LoadedModel
    >>> from prunescope.probe.tiny import tiny_model
    >>> texts = generate_texts(LoadedModel(*tiny_model("gemma3"), "tiny", ""), ["a b"], max_new_tokens=2)
    >>> len(texts)
    1
    """
    tok = loaded.tokenizer
    reqs = [Request(tok(p, add_special_tokens=add_special_tokens).input_ids, max_new_tokens=max_new_tokens,
                    stop=tuple(stop)) for p in prompts]
    return [c.text for c in Engine(loaded.model, tok, options).generate(reqs, progress=progress)]
