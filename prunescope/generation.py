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
import contextvars
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
from prunescope.core.options import Options, option

_MASK32 = 0xFFFFFFFF

# Work done by every engine in this process (benchmarks read it to compute floors: a replayed CUDA
# graph runs no Python hooks, so a forward counter on the model would miss the decode steps).
# ``live_rows`` counts the rows not yet retired at each launched step (the rest of ``decode_rows``
# is idle slots: the tail and the slots waiting for a refill); ``prefill_seconds`` is host time in
# prefill, which synchronises (it reads its first tokens back).
totals = {"prefill_forwards": 0, "prefill_tokens": 0, "decode_steps": 0, "decode_rows": 0, "live_rows": 0,
          "new_tokens": 0, "prefill_seconds": 0.0, "slots": 0, "capacity": 0}


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

    slots: int = option(64, "sequences decoded together; a finished one is replaced at once", minimum=1)
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
class _Row:
    index: int
    request: Request
    tokens: list[int] = field(default_factory=list)


class Engine:
    """Continuous-batching generation with the model's own forward (hooks and skipped layers apply).

    >>> from prunescope.probe.tiny import tiny_model
    >>> model, tok = tiny_model("qwen2")
    >>> reqs = [Request(tok(t).input_ids, max_new_tokens=3, temperature=0.8, seed=i) for i, t in enumerate(["a", "b c"])]
    >>> [len(c.tokens) for c in Engine(model, tok, GenerationOptions(slots=2)).generate(reqs)]
    [3, 3]
    """

    # tests: run the CUDA-graph capture's idle warm-up steps before the first step on any device,
    # so the state they leave behind is checked where no GPU is (a GPU run once lost every first
    # group's pending token to them)
    rehearse_capture = False

    def __init__(self, model: torch.nn.Module, tokenizer, options: GenerationOptions | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.options = (options or GenerationOptions()).check()
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
        self.graph_used = False

    # ------------------------------------------------------------------ public
    def generate(self, requests: Sequence[Request], *, progress: bool = False, desc: str = "generate") -> list[Completion]:
        """Completions in the order of ``requests`` (inside :func:`skip_sets`: those of its current set)."""
        fan = _FAN_OUT.get()
        if fan is not None and not any(r.skip for r in requests):
            return fan.answer(self, list(requests), progress, desc)
        out: list[Completion | None] = [None] * len(requests)
        for i, completion in self.stream(requests, progress=progress, desc=desc):
            out[i] = completion
        return out  # type: ignore[return-value]

    def stream(self, requests: Sequence[Request], *, progress: bool = False,
               desc: str = "generate") -> Iterator[tuple[int, Completion]]:
        """Yield ``(index, completion)`` as each request finishes (not in request order)."""
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
            rows = blocks.skip_rows(skipped, lambda i: self._skip_now[i])
        with torch.no_grad(), rows:
            yield from self._run(requests, progress, desc)

    # ------------------------------------------------------------------ internals
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

    def _setup(self, requests: list[Request]) -> None:
        o = self.options
        longest = max(len(r.prompt) for r in requests)
        self.capacity = longest + max(r.max_new_tokens for r in requests) + 1
        self.slots = self._slots_for(self.capacity, min(o.slots, len(requests)))
        s, dev = self.slots, self.device
        self.cache = SlotCache(s, self.capacity)
        self.ar = torch.arange(s, device=dev)
        z = lambda dtype=torch.long: torch.zeros(s, dtype=dtype, device=dev)  # noqa: E731
        self.tok, self.pos, self.write, self.step, self.seed = z(), z(), z(), z(), z()
        self.temperature, self.top_p = z(torch.float32), z(torch.float32) + 1
        self.active = z(torch.bool)
        self.next_tokens = z()
        # per-row skipped layers ([layer, slot]); a forward reads the rows it runs (_skip_now)
        n_layers = int(self.config.num_hidden_layers)
        self.row_skip = torch.zeros(n_layers, s, dtype=torch.bool, device=dev)
        self._skip_now = self.row_skip
        self.per_row = any(r.skip for r in requests)
        self.key_ok = torch.zeros(s, self.capacity, dtype=torch.bool, device=dev)
        self.key_pos = torch.zeros(s, self.capacity, dtype=torch.long, device=dev)
        self.sample = any(r.temperature > 0 for r in requests)
        self.nucleus = any(r.temperature > 0 and r.top_p < 1 for r in requests)
        self.graph = None
        self.heads = None
        self._live = 0
        self._rehearse = self.rehearse_capture

    def _forward(self, ids, positions, mask) -> torch.Tensor:
        out = self.model(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True,
                         logits_to_keep=1, **{self._cache_kw: self.cache})
        return out.logits[:, -1].float()

    def _pick(self, logits, rows=None) -> torch.Tensor:
        sel = (lambda t: t) if rows is None else (lambda t: t[rows])
        return pick_tokens(logits, sel(self.temperature), sel(self.top_p), sel(self.seed), sel(self.step),
                           sample=self.sample, nucleus=self.nucleus)

    def _prefill(self, group: list[_Row], slots: list[int]) -> torch.Tensor:
        dev, n = self.device, len(group)
        longest = max(len(r.request.prompt) for r in group)
        ids = torch.full((n, longest), self.pad, dtype=torch.long)
        ok = torch.zeros(n, longest, dtype=torch.bool)
        for j, row in enumerate(group):  # left padding: every row's last prompt token is the last column
            p = list(row.request.prompt)
            ids[j, longest - len(p):] = torch.tensor(p, dtype=torch.long)
            ok[j, longest - len(p):] = True
        ids, ok = ids.to(dev), ok.to(dev)
        totals["prefill_forwards"] += 1
        totals["prefill_tokens"] += n * longest
        positions = (ok.long().cumsum(-1) - 1).clamp_min(0)
        rows = torch.tensor(slots, dtype=torch.long, device=dev)
        for j, row in enumerate(group):
            r = row.request
            self.temperature[slots[j]], self.top_p[slots[j]] = float(r.temperature), float(r.top_p)
            self.seed[slots[j]] = int(r.seed) & 0x7FFFFFFFFFFFFFFF
        self.step[rows] = 0
        self.cache.mode, self.cache.rows = "prefill", rows
        if self.per_row:  # the slots' skipped layers are their new rows' own
            own = torch.zeros(self.row_skip.shape[0], n, dtype=torch.bool)
            for j, row in enumerate(group):
                own[list(row.request.skip), j] = True
            self.row_skip[:, rows] = own.to(dev)
            self._skip_now = self.row_skip[:, rows]
        mask = _masks(self.windows, ok, positions, positions, self.dtype)
        logits = self._forward(ids, positions, mask)
        self._skip_now = self.row_skip  # decode steps run every slot (a captured graph reads this tensor)
        first = self._pick(logits, rows)
        self.cache.mode = "decode"
        # the rows' state for decoding: keys [0, longest) as prefilled, next write right after them
        self.key_ok[rows] = False
        self.key_ok[rows, :longest] = ok
        self.key_pos[rows, :longest] = positions
        self.tok[rows] = first
        self.pos[rows] = positions[:, -1] + 1
        self.write[rows] = longest
        self.step[rows] = 1
        self.active[rows] = True
        return first

    def _decode_body(self) -> None:
        cap = self.capacity
        flat = self.ar * cap + self.write
        self.key_ok.view(-1).index_fill_(0, flat, True)
        self.key_pos.view(-1).index_copy_(0, flat, self.pos)
        if self.heads is None:
            self.heads = next(iter(self.cache.keys.values())).shape[1]
        h = torch.arange(self.heads, device=self.device)
        self.cache.flat_index = ((self.ar[:, None] * self.heads + h[None, :]) * cap + self.write[:, None]).reshape(-1)
        mask = _masks(self.windows, self.key_ok, self.key_pos, self.pos[:, None], self.dtype)
        logits = self._forward(self.tok[:, None], self.pos[:, None], mask)
        nxt = self._pick(logits)
        self.next_tokens.copy_(nxt)
        self.tok.copy_(nxt)
        inc = self.active.long()
        self.write.add_(inc)
        self.pos.add_(inc)
        self.step.add_(inc)

    def _want_graph(self) -> bool:
        g = self.options.graphs
        if g == "on" and self.device.type != "cuda":
            raise PrunescopeError("--graphs on needs a CUDA device; use --graphs auto or off")
        return self.device.type == "cuda" and g != "off"

    @contextlib.contextmanager
    def _all_idle(self) -> Iterator[None]:
        """Decode steps inside leave the state a real step sees as it was: every row is idle, so
        no write pointer, position or step count moves and each step rewrites the key slot the
        next real step writes anyway; a step also replaces each row's pending token with its
        prediction, so the pending tokens are put back."""
        active, pending = self.active.clone(), self.tok.clone()
        self.active.zero_()
        try:
            yield
        finally:
            self.active.copy_(active)
            self.tok.copy_(pending)  # in place: a captured graph reads this very tensor

    def _idle_steps(self, n: int) -> None:
        """``n`` decode steps with every row idle (the capture's warm-up)."""
        with self._all_idle():
            for _ in range(n):
                self._decode_body()

    def _capture(self) -> None:
        """Record one decode step as a CUDA graph: two idle warm-up steps on a side stream, then
        the capture itself (which runs no kernels), both with every row idle."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self._idle_steps(2)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        with self._all_idle():
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._decode_body()
            self.graph, self.graph_used = graph, True

    def _launch(self) -> None:
        """Queue one decode step (asynchronously on CUDA); its tokens land in ``next_tokens``."""
        totals["decode_steps"] += 1
        totals["decode_rows"] += self.slots
        totals["live_rows"] += self._live
        if self.graph is None and self._want_graph():
            self._capture()
        elif self._rehearse and self.graph is None:  # tests: the capture's idle steps, on any device
            self._rehearse = False
            self._idle_steps(2)
        if self.graph is not None:
            self.graph.replay()
        else:
            self._decode_body()

    def _stop_hit(self, row: _Row, token: int) -> bool:
        stops = row.request.stop
        if not stops:
            return False
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self.tokenizer.decode([token], skip_special_tokens=False)
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

    def _take(self, row: _Row, token: int) -> str | None:
        row.tokens.append(token)
        if token in self.eos:
            return "eos"
        if len(row.tokens) >= row.request.max_new_tokens:
            return "length"
        if self._stop_hit(row, token):
            return "stop"
        return None

    def _run(self, requests: list[Request], progress: bool, desc: str) -> Iterator[tuple[int, Completion]]:
        """The scheduler. One decode step is kept in flight: step t+1 is queued before step t's
        tokens are read back and booked, so the host's bookkeeping overlaps the GPU's work. A row
        that finished at step t therefore runs one step more, whose token is dropped; rows are
        retired and refilled after that, in stream order."""
        self._setup(requests)
        self._pieces: dict[int, str] = {}
        # length-sorted prefill: the longest prompts first, so each group pads little
        queue = sorted(range(len(requests)), key=lambda i: -len(requests[i].prompt))
        queue.reverse()  # pop() from the end takes the longest
        free = list(range(self.slots - 1, -1, -1))
        running: dict[int, _Row] = {}
        refill_at = max(1, math.ceil(self.options.refill * self.slots))
        bar = tqdm(total=len(requests), desc=desc, unit="req", disable=not progress)
        made = 0
        in_flight = False  # a decode step whose tokens are not read yet

        def retire(finished: list[tuple[int, str]]) -> Iterator[tuple[int, Completion]]:
            nonlocal made
            if finished:
                idle = torch.tensor([s for s, _ in finished], device=self.device)
                self.active[idle] = False
            for slot, reason in finished:
                row = running.pop(slot)
                free.append(slot)
                made += len(row.tokens)
                totals["new_tokens"] += len(row.tokens)
                bar.update(1)
                yield row.index, self._finish(row, reason)

        totals["slots"], totals["capacity"] = self.slots, self.capacity
        def book(tokens: list[int]) -> list[tuple[int, str]]:
            """Append each running row's token; the rows that ended, with why."""
            return [(slot, reason) for slot, row in running.items() if (reason := self._take(row, tokens[slot]))]

        try:
            while queue or running:
                if queue and free and (not running or len(free) >= min(refill_at, len(queue))):
                    if in_flight:  # book the step in flight first (retired rows' tokens are dropped)
                        in_flight = False
                        yield from retire(book(self.next_tokens.tolist()))
                        continue
                    started = time.perf_counter()
                    group, slots = [], []
                    longest = len(requests[queue[-1]].prompt)
                    while queue and free and (len(group) + 1) * longest <= max(self.options.prefill_tokens, longest):
                        i = queue.pop()
                        group.append(_Row(i, requests[i]))
                        slots.append(free.pop())
                    finished = []
                    for row, slot, tok in zip(group, slots, self._prefill(group, slots).tolist()):
                        running[slot] = row
                        reason = self._take(row, tok)
                        if reason:
                            finished.append((slot, reason))
                    totals["prefill_seconds"] += time.perf_counter() - started
                    self._live = len(running)
                    yield from retire(finished)
                    continue
                self._live = len(running)
                if not in_flight:
                    self._launch()
                    in_flight = True
                tokens = self.next_tokens.tolist()  # waits for the step in flight
                self._launch()  # the next step runs while this one's tokens are booked
                yield from retire(book(tokens))
                if progress:
                    bar.set_postfix_str(f"{made} tok", refresh=False)
                if not running:
                    self.next_tokens.tolist()
                    in_flight = False
        finally:
            bar.close()
            self.graph = None
            self.cache = None


class SkipSets:
    """The skip sets of a :func:`skip_sets` block, the one being answered (``current``) and the
    completions generated so far, by (set, request)."""

    def __init__(self, sets: Iterable[Iterable[int]]):
        self.sets = list(dict.fromkeys(tuple(sorted(s)) for s in sets))
        if not self.sets:
            raise PrunescopeError("skip_sets needs at least one set of layers")
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

    def answer(self, engine: Engine, requests: list[Request], progress: bool, desc: str) -> list[Completion]:
        keys = [self._key(r) for r in requests]
        if any((self.current, k) not in self.done for k in keys):
            # every set's rows in one run: a row per (request, set) not generated yet
            todo = {(s, k): r for s in self.sets for k, r in zip(keys, requests) if (s, k) not in self.done}
            made = Engine.generate(engine, [dataclasses.replace(r, skip=s) for (s, _), r in todo.items()],
                                   progress=progress, desc=f"{desc} x{len(self.sets)} skip sets")
            self.done.update(zip(todo, made))
        return [self.done[(self.current, k)] for k in keys]


_FAN_OUT: contextvars.ContextVar[SkipSets | None] = contextvars.ContextVar("prunescope_skip_sets", default=None)


@contextlib.contextmanager
def skip_sets(sets: Iterable[Iterable[int]]) -> Iterator[SkipSets]:
    """Generate under several sets of skipped layers at once. Inside the block, the first
    :meth:`Engine.generate` of some requests runs each of them once per set, in one engine run (a
    row per request and set, :attr:`Request.skip`), and returns the current set's completions;
    the same requests asked again after ``fan.select(other)`` are answered from that run. The
    paper's selection scores some 25 layer sets a greedy step on the same held-out prompts: one
    run keeps the slots full where 25 runs of 64 rows leave most of them idle at their tails.
    Code that generates through the engine (lm-eval's requests, the code tasks) runs unchanged;
    only generation is fanned out, so score nothing else (log-likelihoods) inside.

    >>> from prunescope.probe.tiny import tiny_model
    >>> model, tok = tiny_model("llama"); req = [Request(tok("a b").input_ids, max_new_tokens=3)]
    >>> with skip_sets([[1], [2]]) as fan:
    ...     one = Engine(model, tok).generate(req)
    ...     fan.select([2]); two = Engine(model, tok).generate(req)
    >>> from prunescope.probe.blocks import Blocks
    >>> with Blocks(model).skip([2]):
    ...     alone = Engine(model, tok).generate(req)
    >>> two[0].tokens == alone[0].tokens
    True
    """
    fan = SkipSets(sets)
    token = _FAN_OUT.set(fan)
    try:
        yield fan
    finally:
        _FAN_OUT.reset(token)


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
