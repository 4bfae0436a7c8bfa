"""Model loading: local folders, the offline default model, and clear errors for bad input."""

import json

import pytest
import torch

from probe.errors import PrunescopeError
from probe.models import DEFAULT_MODEL, load_model, resolve_model
from probe.scoring import ScoringPlan, aggregate, score_items
from probe.tasks import make_items


def test_load_tiny_folder(tiny_llama_dir):
    lm = load_model(tiny_llama_dir)
    assert lm.blocks.n_layers == 4 and lm.blocks.arch.family == "llama"
    assert lm.tokenizer.padding_side == "right"
    assert not lm.model.training


def test_missing_path_and_non_model_folder(tmp_path):
    with pytest.raises(PrunescopeError, match="not found"):
        resolve_model(tmp_path / "nope")
    with pytest.raises(PrunescopeError, match="no config.json"):
        resolve_model(tmp_path)
    with pytest.raises(PrunescopeError, match="does not exist"):
        resolve_model(tmp_path / "x.gguf")


def test_folder_that_is_not_a_causal_lm(tmp_path):
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)
    cfg.architectures = ["LlamaModel"]
    cfg.save_pretrained(tmp_path)
    with pytest.raises(PrunescopeError, match="not a causal language model"):
        load_model(tmp_path)


def test_unsupported_architecture_folder(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1).save_pretrained(tmp_path)
    with pytest.raises(PrunescopeError, match="unsupported architecture 'gpt2'"):
        load_model(tmp_path)


def test_hub_id_refused_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PrunescopeError, match="hub is offline"):
        resolve_model("someorg/some-model")


def test_default_model_loads_offline(default_model):
    lm = default_model
    assert lm.name == DEFAULT_MODEL
    assert lm.blocks.n_layers == 30 and lm.model.config.hidden_size == 576
    assert (lm.path.rstrip("/")).endswith(DEFAULT_MODEL)
    src = json.loads(open(f"{lm.path}/prunescope_source.json").read())
    assert len(src["sha256"]) == 64
    assert next(lm.model.parameters()).dtype == torch.float32


def test_default_model_arithmetic_accuracy_band(default_model):
    """3-shot two-digit addition, 40 fixed items (seed 0). Measured on the CPU machine:
    exact_match 0.450 (18/40), accuracy (first differing token) 0.575; 0-shot: exact 0.025."""
    lm = default_model
    few = aggregate(score_items(lm.blocks, ScoringPlan(lm.tokenizer, make_items(
        "arithmetic_multi", n=40, seed=0, ops="+", shots=3))))
    zero = aggregate(score_items(lm.blocks, ScoringPlan(lm.tokenizer, make_items(
        "arithmetic_multi", n=40, seed=0, ops="+", shots=0))))
    assert 0.35 <= few["exact_match"] <= 0.55
    assert 0.45 <= few["accuracy"] <= 0.70
    assert zero["exact_match"] <= 0.10
    assert few["p_correct"] > zero["p_correct"] + 0.1


def test_gemma_norm_offset_is_checked_against_the_gguf_tensors():
    """llama.cpp stores Gemma's norm scale as 1 + w: a loader that forgets to subtract the 1 runs the
    model with 2 + w. The check finds such norms by comparing with the file's tensors and fixes them."""
    import torch

    from probe.models import _fix_gemma_norms
    from probe.tiny import tiny_model

    model, _ = tiny_model("gemma3")
    norms = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("norm.weight")}
    with torch.no_grad():
        for p in norms.values():
            p.uniform_(-0.9, 0.9)  # learned, zero-centred
        for n, p in model.named_parameters():
            if n in norms:
                p.copy_(norms[n])
    stored = [(p + 1).numpy() for p in norms.values()]  # what the GGUF holds
    assert _fix_gemma_norms(model, stored) == 0  # a correct load is left alone
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in norms:
                p.add_(1.0)  # the loader forgot to subtract
    assert _fix_gemma_norms(model, stored) == len(norms) > 4
    params = dict(model.named_parameters())
    assert all(torch.allclose(params[n], norms[n], atol=1e-6) for n in norms)
