"""The block handle: one way to reach the decoder layers of any supported Hugging Face model.

Every activation has one stable name (the TransformerLens names, so results line up across
backends)::

    blocks.{i}.hook_resid_pre     residual stream entering layer i      [batch, pos, d_model]
    blocks.{i}.hook_resid_post    residual stream leaving layer i       [batch, pos, d_model]
    blocks.{i}.hook_attn_out      what attention adds to the residual   [batch, pos, d_model]
    blocks.{i}.hook_mlp_out       what the MLP adds to the residual     [batch, pos, d_model]
    blocks.{i}.attn.hook_z        per-head input of the output proj.    [batch, pos, heads, d_head]

A hook is a plain function ``fn(tensor, name) -> tensor | None`` (``None`` keeps the tensor).
Hooks live only inside a ``with`` block and are removed on exit, also when the body raises.

>>> from prunescope.probe.tiny import tiny_model
>>> model, tok = tiny_model("llama")
>>> blocks = Blocks(model)
>>> ids = tok(["1 + 2 = 3"], return_tensors="pt").input_ids
>>> with blocks.skip([1]):
...     skipped = blocks.forward(ids)
>>> logits, cache = blocks.run_with_cache(ids, names=["blocks.1.hook_resid_pre"])
>>> cache["blocks.1.hook_resid_pre"].shape[-1] == model.config.hidden_size
True

The handle wraps the model; it never re-implements it. Skipping a layer swaps it for a
pass-through module inside the context (no compute, no KV-cache entry); skipping a layer's
attention or MLP alone (``skip(attn=[...], mlp=[...])``) swaps that sublayer for a stand-in that
adds zeros; and running "from layer l onward" reuses the model's own forward (its masks, rotary
embeddings and softcapping) with the earlier layers swapped out and the supplied hidden states fed
in as the input embeddings.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from prunescope.probe.architectures import Architecture, architecture_for, get_path
from prunescope.core.errors import PrunescopeError

HookFn = Callable[[torch.Tensor, str], "torch.Tensor | None"]

HOOK_KINDS = ("hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "attn.hook_z")
_NAME = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_post|hook_attn_out|hook_mlp_out|attn\.hook_z)$")

# The hook dictionaries of an nn.Module. A skipped layer's stand-in shares them with the layer,
# so a hook on "layer i" (ours or the user's) still fires when layer i is skipped: its pre-hook
# sees the input and its forward hook sees the output, which equals the input.
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
)


class _PassThrough(nn.Module):
    """Stands in for a decoder layer and returns its input unchanged."""

    def __init__(self, layer: nn.Module, share_hooks: bool):
        super().__init__()
        # a plain reference, not a submodule: the module tree must not change shape
        object.__setattr__(self, "original", layer)
        for attr in ("layer_idx", "attention_type"):  # read by some model loops and by users
            if hasattr(layer, attr):
                setattr(self, attr, getattr(layer, attr))
        attn = getattr(layer, "self_attn", None)
        if not hasattr(self, "layer_idx"):
            self.layer_idx = getattr(attn, "layer_idx", None)
        self.kv_shape = _kv_shape(attn)
        if share_hooks:
            for d in _HOOK_DICTS:
                setattr(self, d, getattr(layer, d))

    def forward(self, hidden_states=None, *args, **kwargs):
        _keep_cache_aligned(self, hidden_states, kwargs)
        return hidden_states


class _ZeroSublayer(nn.Module):
    """Stands in for a sublayer's module (its attention or MLP, or the post-norm after it) and
    adds nothing to the residual stream: it returns zeros shaped like its input (attention modules:
    ``(zeros, None)``, as they return ``(output, weights)``), without running the module."""

    def __init__(self, module: nn.Module, attention: bool):
        super().__init__()
        object.__setattr__(self, "original", module)   # a plain reference, as in _PassThrough
        self.attention = attention
        self.layer_idx = getattr(module, "layer_idx", None)
        self.kv_shape = _kv_shape(module) if attention else None
        for d in _HOOK_DICTS:   # a hook on the module (hook_attn_out, hook_mlp_out) sees the zeros
            setattr(self, d, getattr(module, d))

    def forward(self, hidden_states=None, *args, **kwargs):
        if self.attention:
            _keep_cache_aligned(self, hidden_states, kwargs)
        zeros = torch.zeros_like(hidden_states)
        return (zeros, None) if self.attention else zeros


def _kv_shape(attn: nn.Module | None) -> tuple[int, int] | None:
    """(key-value heads, head size) of an attention module, for the zeros a skip stores in a KV cache."""
    cfg = getattr(attn, "config", None)
    if cfg is None:
        return None
    return (int(cfg.num_key_value_heads),
            int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads))


def _keep_cache_aligned(stand_in: nn.Module, hidden_states: torch.Tensor, kwargs: dict) -> None:
    """With a KV cache, store zeros for a skipped layer (or attention) so every layer's cache keeps
    the same length: HF sizes attention masks from one layer's cache, which may be a skipped one."""
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is not None and hasattr(cache, "update") and stand_in.layer_idx is not None:
        if stand_in.kv_shape is not None:
            b, t = hidden_states.shape[:2]
            kv = hidden_states.new_zeros(b, stand_in.kv_shape[0], t, stand_in.kv_shape[1])
            cache.update(kv, kv, stand_in.layer_idx)


def _first_tensor(out):
    return out if isinstance(out, torch.Tensor) else out[0]


def _replace_first(out, new):
    if isinstance(out, torch.Tensor):
        return new
    return (new, *tuple(out[1:]))


class Blocks:
    """One handle on a causal LM's decoder blocks: read, skip, replace and patch by name.

    >>> from prunescope.probe.tiny import tiny_model
    >>> blocks = Blocks(tiny_model("qwen2")[0])
    >>> blocks.n_layers
    4
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config
        self.arch: Architecture = architecture_for(model.config)
        self.layers: nn.ModuleList = get_path(model, self.arch.layers)
        self.base: nn.Module = get_path(model, self.arch.base)
        self.lm_head: nn.Module = get_path(model, self.arch.lm_head)
        # transformers renamed ``past_key_values`` to ``cache`` in 5.x; use what this version takes
        self._cache_kwarg = "cache" if "cache" in inspect.signature(self.base.forward).parameters else "past_key_values"

    # ----------------------------------------------------------------- basics
    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def d_head(self) -> int:
        return int(getattr(self.config, "head_dim", None) or self.config.hidden_size // self.n_heads)

    @property
    def device(self) -> torch.device:
        """Where the unembedding runs (the last GPU of a sharded model)."""
        return _module_device(self.lm_head) or self.lm_head.weight.device

    def hook_names(self, layers: Iterable[int] | None = None, kinds: Sequence[str] = HOOK_KINDS) -> list[str]:
        """All activation names, layer by layer: ``['blocks.0.hook_resid_pre', ...]``."""
        layers = range(self.n_layers) if layers is None else self.check_layers(layers, allow_all=True)
        return [f"blocks.{i}.{k}" for i in layers for k in kinds]

    def check_layers(self, layers: Iterable[int], *, allow_all: bool = False) -> tuple[int, ...]:
        """Validate layer indices: integers in range, no duplicates (and not every layer).

        >>> from prunescope.probe.tiny import tiny_model
        >>> Blocks(tiny_model("llama")[0]).check_layers([3, 1])
        (1, 3)
        """
        layers = list(layers)
        for i in layers:
            if isinstance(i, bool) or not isinstance(i, int):
                raise PrunescopeError(f"layer index {i!r} is not an integer; give layer numbers like 0, 5, 12")
            if not 0 <= i < self.n_layers:
                raise PrunescopeError(
                    f"layer {i} is out of range: the model has {self.n_layers} layers (0-{self.n_layers - 1})"
                )
        dupes = sorted({i for i in layers if layers.count(i) > 1})
        if dupes:
            raise PrunescopeError(f"duplicate layer indices {dupes}: list each layer once")
        if not allow_all and layers and len(layers) == self.n_layers:
            raise PrunescopeError(
                f"cannot skip all {self.n_layers} layers: at least one layer must remain"
            )
        return tuple(sorted(layers))

    def parse_name(self, name: str) -> tuple[int, str]:
        """``"blocks.3.hook_mlp_out"`` -> ``(3, "hook_mlp_out")``, with a clear error otherwise."""
        m = _NAME.match(name)
        if not m:
            raise PrunescopeError(
                f"unknown activation name {name!r}: use blocks.<layer>.<kind> with kind one of "
                + ", ".join(HOOK_KINDS)
            )
        layer = int(m.group(1))
        self.check_layers([layer], allow_all=True)
        return layer, m.group(2)

    # ----------------------------------------------------------------- hooks
    @contextmanager
    def hooks(self, fns: Mapping[str, HookFn] | Iterable[tuple[str, HookFn]]) -> Iterator[None]:
        """Run ``fn(tensor, name)`` at each named activation inside the block.

        A function returns a replacement tensor or ``None``. Several functions may share a
        name; they run in the order given. All hooks are removed on exit, even on error.
        """
        pairs = list(fns.items()) if isinstance(fns, Mapping) else list(fns)
        parsed = [(name, *self.parse_name(name), fn) for name, fn in pairs]  # validate all first
        with ExitStack() as stack:
            for name, layer_idx, kind, fn in parsed:
                stack.callback(self._register(layer_idx, kind, name, fn).remove)
            yield

    def _register(self, layer_idx: int, kind: str, name: str, fn: HookFn):
        layer = self.layers[layer_idx]
        layer = getattr(layer, "original", layer)  # a skipped layer shares its hook dicts with the original
        arch = self.arch

        if kind == "hook_resid_pre":
            def pre(module, args, kwargs):
                if args:
                    new = fn(args[0], name)
                    return None if new is None else ((new, *args[1:]), kwargs)
                new = fn(kwargs["hidden_states"], name)
                return None if new is None else (args, {**kwargs, "hidden_states": new})
            return layer.register_forward_pre_hook(pre, with_kwargs=True)

        if kind == "attn.hook_z":
            o_proj = get_path(layer, arch.o_proj)
            n_heads, d_head = self.n_heads, self.d_head

            def z_hook(module, args):
                flat = args[0]
                new = fn(flat.view(*flat.shape[:-1], n_heads, d_head), name)
                return None if new is None else (new.reshape(flat.shape), *args[1:])
            return o_proj.register_forward_pre_hook(z_hook)

        module = {
            "hook_resid_post": layer,
            "hook_attn_out": get_path(layer, arch.attn_out) if kind == "hook_attn_out" else None,
            "hook_mlp_out": get_path(layer, arch.mlp_out) if kind == "hook_mlp_out" else None,
        }[kind]

        def post(mod, args, out):
            new = fn(_first_tensor(out), name)
            return None if new is None else _replace_first(out, new)
        return module.register_forward_hook(post)

    @contextmanager
    def capture(self, names: Iterable[str], *, detach: bool = True) -> Iterator[dict[str, torch.Tensor]]:
        """Record named activations of every forward run inside the block.

        >>> from prunescope.probe.tiny import tiny_model
        >>> model, tok = tiny_model("llama"); blocks = Blocks(model)
        >>> with blocks.capture(["blocks.0.hook_resid_post"]) as acts:
        ...     _ = blocks.forward(tok(["a b c"], return_tensors="pt").input_ids)
        >>> acts["blocks.0.hook_resid_post"].shape[:2]
        torch.Size([1, 5])
        """
        acts: dict[str, torch.Tensor] = {}

        def save(t: torch.Tensor, name: str):
            acts[name] = t.detach() if detach else t
            return None

        with self.hooks([(n, save) for n in names]):
            yield acts

    @contextmanager
    def patch(
        self,
        name: str,
        values: torch.Tensor,
        positions: int | Sequence[int] | torch.Tensor | None = None,
        heads: int | Sequence[int] | None = None,
    ) -> Iterator[None]:
        """Replace an activation at chosen positions (and heads, for ``attn.hook_z``).

        ``positions``: ``None`` (all), an int or list (same for every row), or a LongTensor
        ``[batch, k]`` of per-row positions (for padded batches). ``values`` is either

        - the full activation, as a hook sees it (``[batch, pos, d_model]``, or
          ``[batch, pos, heads, d_head]`` for ``attn.hook_z``; ``batch`` may be 1): the cached
          activation of another prompt of the same length; the patched positions (and heads)
          are read from it, or
        - the patched slice only, or anything that broadcasts to it: ``[batch, k, d_model]``
          or ``[batch, k, len(heads), d_head]``, ``k`` the number of positions.

        A tensor that fits both is read as the slice. Any other shape is a
        :class:`PrunescopeError` naming the two shapes that fit, raised at the forward.

        >>> from prunescope.probe.tiny import tiny_model
        >>> model, tok = tiny_model("llama"); blocks = Blocks(model)
        >>> ids = tok(["1 + 2 = 3"], return_tensors="pt").input_ids
        >>> _, cache = blocks.run_with_cache(ids, names=["blocks.1.hook_mlp_out"])
        >>> with blocks.patch("blocks.1.hook_mlp_out", cache["blocks.1.hook_mlp_out"], positions=[-1]):
        ...     patched = blocks.forward(ids)
        >>> bool(torch.allclose(patched, blocks.forward(ids), atol=1e-5))
        True
        """
        layer_idx, kind = self.parse_name(name)
        if heads is not None and kind != "attn.hook_z":
            raise PrunescopeError(f"heads= applies only to blocks.<i>.attn.hook_z, not {name}")
        head_idx = None if heads is None else torch.as_tensor([heads] if isinstance(heads, int) else list(heads))
        if head_idx is not None and (head_idx.min() < 0 or head_idx.max() >= self.n_heads):
            raise PrunescopeError(f"head index out of range: the model has {self.n_heads} heads per layer")

        def replace(t: torch.Tensor, _name: str) -> torch.Tensor:
            sel = _position_index(t, positions)
            heads_here = None if head_idx is None else head_idx.to(t.device)
            v = _patch_values(values.to(device=t.device, dtype=t.dtype), t, sel, heads_here, name)
            out = t.clone()
            if heads_here is None:
                out[sel] = v
            else:
                view = out[sel]                      # advanced indexing copies: write it back
                view[..., heads_here, :] = v
                out[sel] = view
            return out

        with self.hooks({name: replace}):
            yield

    # ----------------------------------------------------------------- skipping
    @contextmanager
    def skip(self, layers: Iterable[int] = (), *, attn: Iterable[int] = (), mlp: Iterable[int] = ()) -> Iterator[None]:
        """Skip layers inside the block: each returns its input (no compute, no cache entry).
        ``attn`` / ``mlp``: layers whose attention / MLP alone is skipped (:meth:`skip_sublayers`).

        >>> from prunescope.probe.tiny import tiny_model
        >>> blocks = Blocks(tiny_model("gemma2")[0])
        >>> with blocks.skip([0, 2], mlp=[3]):
        ...     pass
        """
        layers = self.check_layers(layers)
        originals = {i: self.layers[i] for i in layers}
        with self.skip_sublayers(attn=attn, mlp=mlp):
            try:
                for i, layer in originals.items():
                    self.layers[i] = _PassThrough(layer, share_hooks=True)
                yield
            finally:
                for i, layer in originals.items():
                    self.layers[i] = layer

    def sublayer_paths(self, kind: str) -> tuple[str, ...]:
        """The modules of a layer that a skipped sublayer (``"attn"`` or ``"mlp"``) stands in for: the
        one that computes it and the one whose output is added to the residual stream (the same
        module, except where a post-norm follows: Gemma2, Gemma3).

        >>> from prunescope.probe.tiny import tiny_model
        >>> Blocks(tiny_model("gemma3")[0]).sublayer_paths("mlp")
        ('mlp', 'post_feedforward_layernorm')
        """
        if kind not in ("attn", "mlp"):
            raise PrunescopeError(f"unknown sublayer {kind!r}: use attn or mlp")
        # every supported family calls its MLP ``mlp``; the table names what the residual adds
        compute, added = (self.arch.attn, self.arch.attn_out) if kind == "attn" else ("mlp", self.arch.mlp_out)
        return tuple(dict.fromkeys((compute, added)))

    @contextmanager
    def skip_sublayers(self, attn: Iterable[int] = (), mlp: Iterable[int] = ()) -> Iterator[None]:
        """Skip the attention (``attn``) or the MLP (``mlp``) of layers inside the block: that sublayer
        adds nothing to the residual stream (``h + attn(norm(h)) -> h``, ``h + mlp(norm(h)) -> h``;
        on Gemma2/Gemma3 the post-norm's output is the zero added, so the definition holds there too).

        Exact and cheaper: the sublayer's module and its post-norm are swapped for stand-ins that
        return zeros without computing (the input norm and the residual add still run, and ``h + 0``
        is ``h`` exactly), so ``blocks.{l}.hook_attn_out`` / ``hook_mlp_out`` see zeros, equal to
        zeroing them with a hook. ``attn.hook_z`` of a skipped attention does not fire. A skipped
        attention stores zeros in a KV cache (as a skipped layer does). Skipping both sublayers of a
        layer equals skipping the layer.

        >>> from prunescope.probe.tiny import tiny_model
        >>> model, tok = tiny_model("llama"); blocks = Blocks(model)
        >>> ids = tok(["1 + 2 = 3"], return_tensors="pt").input_ids
        >>> with blocks.skip_sublayers(attn=[1], mlp=[1]):
        ...     both = blocks.forward(ids)
        >>> with blocks.skip([1]):
        ...     layer = blocks.forward(ids)
        >>> bool(torch.equal(both, layer))
        True
        """
        chosen = [(i, "attn") for i in self.check_layers(attn, allow_all=True)]
        chosen += [(i, "mlp") for i in self.check_layers(mlp, allow_all=True)]
        swapped: list[tuple[nn.Module, str, nn.Module]] = []
        try:
            for i, kind in chosen:
                layer = getattr(self.layers[i], "original", self.layers[i])   # under a layer skip too
                for path in self.sublayer_paths(kind):
                    owner_path, _, attr = path.rpartition(".")
                    owner = get_path(layer, owner_path) if owner_path else layer
                    module = getattr(owner, attr)
                    swapped.append((owner, attr, module))
                    setattr(owner, attr, _ZeroSublayer(module, attention=kind == "attn" and path == self.arch.attn))
            yield
        finally:
            for owner, attr, module in reversed(swapped):
                setattr(owner, attr, module)

    @contextmanager
    def skip_rows(self, layers: Iterable[int], mask: Callable[[int], torch.Tensor]) -> Iterator[None]:
        """Skip ``layers`` for some rows of the batch only: layer ``i`` returns its input on the rows
        where ``mask(i)`` (a bool ``[batch]`` tensor, read at every forward) is True and its own
        output on the others. Each row then sees what :meth:`skip` of its own layers gives (up to
        the rounding of another batch), so differently pruned models share one batch: the
        generation engine decodes a row per (prompt, skip set). The layer still runs on every row
        (and fills their cache entries, which the skipping rows never read back through it).

        >>> from prunescope.probe.tiny import tiny_model
        >>> model, tok = tiny_model("llama"); blocks = Blocks(model)
        >>> ids = tok(["a b c", "a b c"], return_tensors="pt").input_ids
        >>> with blocks.skip_rows([1], lambda i: torch.tensor([True, False])):
        ...     both = blocks.forward(ids)
        >>> with blocks.skip([1]):
        ...     alone = blocks.forward(ids[:1])
        >>> bool(torch.allclose(both[0], alone[0], atol=1e-5)) and not torch.allclose(both[0], both[1])
        True
        """
        layers = self.check_layers(layers, allow_all=True)  # their union: each row keeps some layers
        inputs: dict[int, torch.Tensor] = {}

        def keep_input(i: int) -> HookFn:
            def fn(t: torch.Tensor, _name: str) -> None:
                inputs[i] = t
            return fn

        def choose(i: int) -> HookFn:
            def fn(t: torch.Tensor, _name: str) -> torch.Tensor:
                m = mask(i).to(t.device).view(-1, *([1] * (t.dim() - 1)))
                return torch.where(m, inputs.pop(i), t)
            return fn

        with self.hooks([(f"blocks.{i}.hook_resid_pre", keep_input(i)) for i in layers]
                        + [(f"blocks.{i}.hook_resid_post", choose(i)) for i in layers]):
            yield

    # ----------------------------------------------------------------- running
    def new_cache(self):
        """An empty transformers ``DynamicCache`` for this model (sliding layers included)."""
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.config)
        except TypeError:
            return DynamicCache()

    def _device_from(self, layer_idx: int) -> torch.device:
        """Device of the first layer at or after ``layer_idx`` that holds weights (sharded models)."""
        for layer in list(self.layers)[layer_idx:]:
            dev = _module_device(getattr(layer, "original", layer))
            if dev is not None:
                return dev
        return self.device

    def final_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Unembed final-normed hidden states (applies Gemma's final logit softcapping)."""
        logits = self.lm_head(hidden.to(self.lm_head.weight.device))
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        at: torch.Tensor | None = None,
        start_layer: int = 0,
        start_hidden: torch.Tensor | None = None,
        cache=None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of a (right-)padded batch, honouring any active skip / hook contexts.

        ``at``: LongTensor ``[batch]`` or ``[batch, k]`` of positions: unembed only there (saves
        the ``[batch, pos, vocab]`` logits tensor). ``start_layer``/``start_hidden``: run from
        layer ``l`` onward with ``start_hidden`` as the residual stream entering layer ``l``
        (what ``blocks.{l}.hook_resid_pre`` captured); ``input_ids`` then only gives the shape.
        ``start_layer == n_layers`` applies only the final norm and the unembedding.
        """
        hidden = self.final_hidden(input_ids, attention_mask, start_layer=start_layer, start_hidden=start_hidden,
                                   cache=cache, position_ids=position_ids)
        if at is not None:
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            at = at.to(hidden.device)
            hidden = hidden[rows[:, None], at] if at.dim() == 2 else hidden[rows, at]
        return self.final_logits(hidden)

    def final_hidden(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        *,
        start_layer: int = 0,
        start_hidden: torch.Tensor | None = None,
        cache=None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states after the final norm (see :meth:`forward` for the arguments).

        ``cache``: a transformers KV cache holding earlier tokens (a shared few-shot prefix);
        it is extended in place. ``position_ids`` then place the new tokens after it.
        """
        extra = {self._cache_kwarg: cache, "use_cache": True} if cache is not None else {"use_cache": False}
        if position_ids is not None:
            extra["position_ids"] = position_ids.to(self.device)
        if start_hidden is None:
            if start_layer != 0:
                raise PrunescopeError("start_layer needs start_hidden (the residual stream entering that layer)")
            return self.base(input_ids=input_ids.to(self.device), attention_mask=_to(attention_mask, self.device),
                             **extra).last_hidden_state
        if start_layer == self.n_layers:   # after the last layer: only the final norm remains
            norm = get_path(self.model, self.arch.final_norm)
            return norm(start_hidden.to(self.device))
        if not 0 <= start_layer < self.n_layers:
            raise PrunescopeError(
                f"start_layer {start_layer} is out of range: the model has {self.n_layers} layers"
            )
        originals = {i: self.layers[i] for i in range(start_layer)}
        try:
            for i, layer in originals.items():
                self.layers[i] = _PassThrough(layer, share_hooks=False)
            first = self._device_from(start_layer)
            return self.base(inputs_embeds=start_hidden.to(first), attention_mask=_to(attention_mask, first),
                             **extra).last_hidden_state
        finally:
            for i, layer in originals.items():
                self.layers[i] = layer

    def run_with_cache(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        names: Iterable[str] | None = None,
        *,
        at: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One forward returning ``(logits, {name: activation})`` (all names when ``None``)."""
        names = self.hook_names() if names is None else list(names)
        with self.capture(names) as acts:
            logits = self.forward(input_ids, attention_mask, at=at)
        return logits, acts


def _module_device(module: nn.Module) -> torch.device | None:
    """Where a module computes: accelerate's execution device when it placed the module (its
    weights may sit on ``meta`` while offloaded), else the device of its first parameter."""
    hook = getattr(module, "_hf_hook", None)
    hooks = list(getattr(hook, "hooks", None) or [hook])   # a SequentialHook holds several
    dev = next((h.execution_device for h in hooks if getattr(h, "execution_device", None) is not None), None)
    if dev is not None:
        return torch.device("cuda", dev) if isinstance(dev, int) else torch.device(dev)
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    return None


def _to(t: torch.Tensor | None, device) -> torch.Tensor | None:
    return None if t is None else t.to(device)


def _position_index(t: torch.Tensor, positions) -> tuple:
    """The index of the patched positions in an activation ``t`` (``[batch, pos, ...]``)."""
    if positions is None:
        return (slice(None), slice(None))
    if isinstance(positions, torch.Tensor) and positions.dim() == 2:
        rows = torch.arange(t.shape[0], device=t.device)[:, None]
        return (rows, positions.to(t.device))
    pos = torch.as_tensor([positions] if isinstance(positions, int) else list(positions))
    return (slice(None), pos.to(t.device))


def _patch_values(values: torch.Tensor, t: torch.Tensor, sel: tuple, heads: torch.Tensor | None,
                  name: str) -> torch.Tensor:
    """The values written into the patched slice of ``t``: ``values`` itself when it broadcasts
    to the slice, else the slice of ``values`` read as a full activation shaped like ``t``."""
    sliced = t[sel]
    if heads is not None:
        sliced = sliced[..., heads, :]
    if _broadcasts(values.shape, sliced.shape):
        return values
    full = values.dim() == t.dim() and values.shape[1:] == t.shape[1:] and values.shape[0] in (1, t.shape[0])
    if full:
        picked = values.expand(t.shape)[sel]
        return picked if heads is None else picked[..., heads, :]
    raise PrunescopeError(
        f"patch values for {name} have shape {list(values.shape)}: give the full activation "
        f"{list(t.shape)} (as run_with_cache returns it; batch may be 1) or the patched slice "
        f"{list(sliced.shape)} (one entry per patched position{' and head' if heads is not None else ''})"
    )


def _broadcasts(shape: torch.Size, target: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


@torch.no_grad()
def residual_boundaries(blocks: Blocks, tokenizer, texts: Sequence[str], *, batch_size: int = 8,
                        max_length: int = 512) -> Iterator[list[torch.Tensor]]:
    """Per batch of ``texts``, the residual stream at every layer boundary — the input of each
    block and the output of the last — at the real (unpadded) tokens, float64 ``[tokens, d_model]``
    each (``n_layers + 1`` tensors). What Block Influence and angular distance are measured on.

    >>> from prunescope.probe.tiny import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> hs = next(residual_boundaries(Blocks(model), tok, ["a b c"]))
    >>> len(hs) == Blocks(model).n_layers + 1, hs[0].dtype
    (True, torch.float64)
    """
    L = blocks.n_layers
    names = [f"blocks.{i}.hook_resid_pre" for i in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]
    for s in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[s:s + batch_size]), return_tensors="pt", padding=True, truncation=True,
                        max_length=max_length)
        with blocks.capture(names) as acts:
            blocks.final_hidden(enc.input_ids, enc.attention_mask)
        real = enc.attention_mask.bool().to(blocks.device)
        yield [acts[n][real.to(acts[n].device)].double() for n in names]
