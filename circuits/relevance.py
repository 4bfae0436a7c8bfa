"""Relevance propagation for attribution patching (RelP, arXiv 2508.21258): the same forward
values, a backward pass that follows layer-wise relevance rules instead of the plain gradient.

Attribution patching estimates a cell's effect as ``(a_source - a_base) . dLD/da``. Through
normalisations, softmax and gated activations that gradient is a poor linear stand-in for what
patching does. Under :func:`relevance_rules` the model computes the very same values, but its
backward pass treats

* every RMSNorm's normalising factor as a constant (the LN rule),
* every attention pattern (the softmax probabilities) as a constant (the AH rule),
* a gated MLP's activation as linear in its input at its own secant slope ``act(g) / g`` (the
  identity rule), and the product ``act(g) * up`` as splitting its gradient equally between
  the two factors (the uniform rule),

so ``(a_source - a_base) . grad`` becomes a relevance-propagation estimate at the cost of one
backward pass, like plain attribution patching (``patch --relevance``).

>>> import torch
>>> from prunescope.probe.tiny import tiny_model
>>> model, _ = tiny_model("llama")
>>> ids = torch.tensor([[5, 6, 7, 8]])
>>> with relevance_rules(model):
...     changed = model(ids).logits
>>> torch.allclose(changed, model(ids).logits, atol=1e-5)
True
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch

from prunescope.core.errors import PrunescopeError


def _norm_forward(mod: torch.nn.Module, gemma: bool):
    """An RMSNorm forward whose normalising factor carries no gradient (the same values)."""
    eps = getattr(mod, "variance_epsilon", getattr(mod, "eps", 1e-6))

    def forward(x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        scale = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps).detach()
        if gemma:  # Gemma: (x * r * (1 + w)) in fp32, then cast
            return (xf * scale * (1.0 + mod.weight.float())).type_as(x)
        return mod.weight * (xf * scale).to(x.dtype)  # Llama, Qwen2, Mistral: cast, then the weight

    return forward


def _mlp_forward(mod: torch.nn.Module):
    """A gated MLP forward with the identity rule on the activation and the uniform rule on the gate."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        g, up = mod.gate_proj(x), mod.up_proj(x)
        act = mod.act_fn(g)
        # the secant slope act(g) / g; at g == 0 the limit of silu / gelu-tanh is 1/2
        slope = torch.where(g.abs() > 1e-6, act / torch.where(g.abs() > 1e-6, g, torch.ones_like(g)),
                            torch.full_like(g, 0.5)).detach()
        lin = g * slope
        gated = 0.5 * (lin.detach() * up + lin * up.detach())  # value act * up; each factor half the gradient
        return mod.down_proj(gated)

    return forward


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None, **_kw):
    """Eager attention with the pattern detached; takes eager (additive) and sdpa (boolean or no)
    masks, so it stands in for either implementation."""
    from transformers.models.llama.modeling_llama import repeat_kv

    groups = getattr(module, "num_key_value_groups", query.shape[1] // key.shape[1])
    k, v = repeat_kv(key, groups), repeat_kv(value, groups)
    scaling = module.head_dim ** -0.5 if scaling is None else scaling
    w = torch.matmul(query, k.transpose(2, 3)) * scaling
    if softcap is not None:
        w = torch.tanh(w / softcap) * softcap
    q_len, k_len = w.shape[-2], w.shape[-1]
    if attention_mask is None:  # sdpa's "causal, no padding" shortcut
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=w.device).tril(k_len - q_len)
        w = w.masked_fill(~causal, float("-inf"))
    elif attention_mask.dtype == torch.bool:
        w = w.masked_fill(~attention_mask[..., :k_len], float("-inf"))
    else:
        w = w + attention_mask[..., :k_len]
    p = torch.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(p.detach(), v)
    return out.transpose(1, 2).contiguous(), p


@contextlib.contextmanager
def relevance_rules(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, ``model``'s backward pass follows the relevance rules above; its forward
    values stay as they were (up to float rounding)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in ("eager", "sdpa"):
        raise PrunescopeError(f"relevance rules need eager or sdpa attention, the model uses {impl!r}; load it "
                              "with attn_implementation='sdpa'")
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    mlps = [m for m in model.modules() if all(hasattr(m, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn"))]
    if not norms or not mlps:
        raise PrunescopeError(f"relevance rules know RMSNorm and gated-MLP models; {type(model).__name__} has "
                              f"{len(norms)} RMSNorm and {len(mlps)} gated MLP modules")
    patched = []
    local = ALL_ATTENTION_FUNCTIONS._local_mapping
    had = impl in local
    old = local.get(impl)
    try:
        for m in norms:
            patched.append(m)
            m.forward = types.MethodType(lambda self, x, f=_norm_forward(m, "Gemma" in type(m).__name__): f(x), m)
        for m in mlps:
            patched.append(m)
            m.forward = types.MethodType(lambda self, x, f=_mlp_forward(m): f(x), m)
        local[impl] = _attention
        yield
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)  # the class's own forward again
        if had:
            local[impl] = old
        else:
            local.pop(impl, None)


__all__ = ["relevance_rules"]
