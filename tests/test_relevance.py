"""Relevance rules (RelP): the forward values stay, the backward pass follows the rules."""

import pytest
import torch

from prunescope.circuits.relevance import relevance_rules
from prunescope.core.errors import PrunescopeError
from prunescope.probe.tiny import FAMILIES, tiny_model


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_values_stay_and_the_model_is_restored(family):
    for impl in ("eager",) if family == "gemma2" else ("eager", "sdpa"):   # Gemma 2's softcap: eager only
        model, _ = tiny_model(family)
        model.config._attn_implementation = impl
        ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
        mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])               # padding: a real mask reaches attention
        with torch.no_grad():
            before = model(ids, attention_mask=mask).logits
            with relevance_rules(model):
                inside = model(ids, attention_mask=mask).logits
            after = model(ids, attention_mask=mask).logits
        assert torch.allclose(inside[0], before[0], atol=1e-4) and torch.allclose(inside[1, :4], before[1, :4], atol=1e-4)
        assert torch.equal(after, before)


def test_rules_hold_the_normaliser_and_the_attention_pattern_constant():
    model, _ = tiny_model("llama")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    attn = model.model.layers[0].self_attn
    model.zero_grad()
    model(ids).logits[0, -1].sum().backward()
    assert attn.q_proj.weight.grad.abs().sum() > 0 and attn.k_proj.weight.grad.abs().sum() > 0
    model.zero_grad()
    with relevance_rules(model):
        model(ids).logits[0, -1].sum().backward()
    # the pattern is a constant: queries and keys get no gradient; values still do
    assert all(w.grad is None or w.grad.abs().sum() == 0 for w in (attn.q_proj.weight, attn.k_proj.weight))
    assert attn.v_proj.weight.grad.abs().sum() > 0
    # the LN rule: through a norm alone, d(sum y)/dx = weight * rsqrt(mean x^2 + eps)
    norm = model.model.norm
    x = torch.randn(2, 3, norm.weight.shape[0], requires_grad=True)
    with relevance_rules(model):
        norm(x).sum().backward()
    scale = torch.rsqrt(x.detach().pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    assert torch.allclose(x.grad, norm.weight.detach() * scale, atol=1e-6)


def test_unknown_attention_is_refused():
    model, _ = tiny_model("llama")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(PrunescopeError, match="eager or sdpa"):
        with relevance_rules(model):
            pass
