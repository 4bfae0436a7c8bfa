"""Where each supported architecture keeps its decoder blocks: the one table of differences.

Everything else in prunescope reaches a layer through :class:`prunescope.probe.blocks.Blocks`, which reads
this table; no other module branches on ``model_type``.

Two families differ in how a sublayer writes to the residual stream:

* Llama, Qwen2, Mistral: ``h = h + self_attn(norm(h))`` and ``h = h + mlp(norm(h))``.
* Gemma2, Gemma3 ("sandwich" norms): ``h = h + post_attention_layernorm(self_attn(...))`` and
  ``h = h + post_feedforward_layernorm(mlp(...))``.

``hook_attn_out`` / ``hook_mlp_out`` always mean *what the sublayer adds to the residual
stream*, so for Gemma they are read after the post-norm (the same convention as TransformerLens).
"""

from __future__ import annotations

from dataclasses import dataclass

from prunescope.core.errors import PrunescopeError


@dataclass(frozen=True)
class Architecture:
    """Attribute paths, relative to the ``*ForCausalLM`` model or to one decoder layer."""

    family: str
    layers: str = "model.layers"          # ModuleList of decoder blocks
    base: str = "model"                   # the decoder stack (embeddings, layers, final norm)
    final_norm: str = "model.norm"
    embed: str = "model.embed_tokens"
    lm_head: str = "lm_head"
    attn: str = "self_attn"               # in a layer
    attn_out: str = "self_attn"           # in a layer: module whose output is added to the residual
    mlp_out: str = "mlp"                  # in a layer
    o_proj: str = "self_attn.o_proj"      # in a layer: its input holds the per-head outputs (hook_z)
    # config fields holding one entry per layer; surgery keeps them aligned with the kept layers
    per_layer_config: tuple[str, ...] = ("layer_types",)


_LLAMA_LIKE = dict()
_SANDWICH = dict(attn_out="post_attention_layernorm", mlp_out="post_feedforward_layernorm")

ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("llama", **_LLAMA_LIKE),
    "qwen2": Architecture("qwen2", **_LLAMA_LIKE),
    "mistral": Architecture("mistral", **_LLAMA_LIKE),
    "gemma2": Architecture("gemma2", **_SANDWICH),
    "gemma3_text": Architecture("gemma3", **_SANDWICH),
}

SUPPORTED = "Llama (incl. SmolLM2), Qwen2, Mistral, Gemma2, Gemma3 (text: Gemma3ForCausalLM)"


def architecture_for(config) -> Architecture:
    """Look up the table row for a transformers config (or raise a clear error).

    >>> from transformers import LlamaConfig
    >>> architecture_for(LlamaConfig()).family
    'llama'
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise PrunescopeError(
            f"unsupported architecture {model_type!r}: prunescope supports {SUPPORTED}. "
            "Pass a model of one of these families."
        )
    return ARCHITECTURES[model_type]


def get_path(obj, path: str):
    """Follow a dotted attribute path: ``get_path(model, "model.layers")``."""
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj
