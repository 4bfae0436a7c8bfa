"""The same loaded model seen through TransformerLens and nnsight.

TransformerLens 4.x has no ``HookedTransformer`` for these models; its ``TransformerBridge``
wraps the Hugging Face module instead. The bridge mutates the model it is given (layers become
``BlockBridge``, ``save_pretrained`` breaks), so it always gets a deep copy. nnsight's
``TransformersModel`` leaves the module tree alone but sets ``padding_side="left"`` on the
tokenizer it is given, so it gets a copy of the tokenizer.

Activation names are shared: ``blocks.{i}.hook_resid_pre`` here is ``blocks.{i}.hook_resid_pre``
in TransformerLens and ``model.layers[i].input`` in nnsight.

>>> from prunescope.probe.tiny import tiny_model
>>> model, tok = tiny_model("llama")
>>> ids = tok(["1 + 2 = 3 4 5"], return_tensors="pt").input_ids
>>> a = skip_logits("hooks", model, tok, ids, [1])
>>> b = skip_logits("transformer_lens", model, tok, ids, [1])
>>> bool((a - b).abs().max() < 1e-4)
True
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch

from prunescope.probe.blocks import Blocks
from prunescope.core.errors import PrunescopeError
from prunescope.core.registry import Registry

# the ways to run a model with patched or skipped layers (read by circuits' --backend choices)
BACKENDS = Registry("backend")
BACKENDS.register("hooks", "hooks", help="native PyTorch hooks on the block handle: fast, batched")
BACKENDS.register("transformer_lens", "transformer_lens", help="one condition per forward through TransformerBridge")
BACKENDS.register("nnsight", "nnsight", help="one condition per forward through nnsight")


def transformer_lens_bridge(model, tokenizer):
    """A TransformerLens ``TransformerBridge`` over a deep copy of ``model``.

    The tokenizer must have been loaded from a folder (TransformerLens reloads it by path).
    """
    from transformer_lens.model_bridge import TransformerBridge

    path = getattr(tokenizer, "name_or_path", "")
    if not path:
        raise PrunescopeError(
            "TransformerLens needs a tokenizer loaded from a folder (it reloads it by path); "
            "load the model with prunescope.probe.models.load_model or save the tokenizer first"
        )
    hf = copy.deepcopy(model)
    if not getattr(hf.config, "architectures", None):  # models built from a config lack it
        hf.config.architectures = [type(hf).__name__]
    device = next(model.parameters()).device
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TransformerBridge.boot_transformers(
            model.config.name_or_path or "prunescope-model", hf_model=hf, tokenizer=tokenizer, device=device
        )


def nnsight_model(model, tokenizer):
    """An nnsight ``TransformersModel`` over ``model`` itself (its module tree is the API)."""
    from nnsight import TransformersModel

    return TransformersModel(model, tokenizer=copy.deepcopy(tokenizer))


def skip_logits(
    backend: str,
    model,
    tokenizer,
    input_ids: torch.Tensor,
    layers: Iterable[int],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Full logits with ``layers`` skipped (each returns its input), through one backend.

    Used to check that all three backends agree; the hooks backend is the fastest.
    """
    blocks = Blocks(model)
    layers = blocks.check_layers(layers)
    if backend == "hooks":
        with torch.no_grad(), blocks.skip(layers):
            return blocks.forward(input_ids, attention_mask)
    if backend == "transformer_lens":
        bridge = transformer_lens_bridge(model, tokenizer)
        saved: dict[int, torch.Tensor] = {}

        def save(i):
            def fn(t, hook):
                saved[i] = t
            return fn

        def restore(i):
            def fn(t, hook):
                return saved[i]
            return fn

        hooks = [(f"blocks.{i}.hook_resid_pre", save(i)) for i in layers]
        hooks += [(f"blocks.{i}.hook_resid_post", restore(i)) for i in layers]
        with torch.no_grad():
            kw = {} if attention_mask is None else {"attention_mask": attention_mask}
            return bridge.run_with_hooks(input_ids, fwd_hooks=hooks, **kw)
    if backend == "nnsight":
        nm = nnsight_model(model, tokenizer)
        kw = {} if attention_mask is None else {"attention_mask": attention_mask}
        with torch.no_grad(), nm.trace(input_ids, **kw):
            for i in layers:
                nm.model.layers[i].output = nm.model.layers[i].input
            out = nm.output.logits.save()
        return out
    raise PrunescopeError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
