"""Tiny random-weight models of every supported family, with an offline tokenizer.

For tests and CPU benchmarks: no download, a few milliseconds to build. Weights are redrawn
with a large standard deviation so that skipping or patching a layer changes the greedy tokens
(the default init gives near-uniform logits, which would hide mistakes). Prompts should be longer
than ``sliding_window`` (4) so that sliding/full attention mix-ups become visible.

>>> model, tok = tiny_model("gemma3")
>>> model.config.model_type, model.config.num_hidden_layers
('gemma3_text', 4)
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch

FAMILIES = ("llama", "qwen2", "mistral", "gemma2", "gemma3")

_CORPUS = [
    "Question: What is (4 * 4) * 1? Answer: 16",
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 + - * / = ( ) [ ] { }",
    "def f(arr, n):\n    return arr[n - 1 - i] + g(x, {'a': [1, 2]})",
    "Alice went to the market and bought 12 apples and 7 pears, 19 fruits in all.",
] * 20


@functools.lru_cache(maxsize=1)
def tiny_tokenizer_dir() -> str:
    """A byte-level BPE tokenizer (vocab 512) saved to a temp folder, built once per process.

    It is saved and reloaded from a folder because TransformerLens reloads tokenizers by path.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<unk>", "<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_CORPUS, trainer)
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tk.token_to_id("<bos>"))]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )
    folder = tempfile.mkdtemp(prefix="prunescope-tiny-tok-")
    tok.save_pretrained(folder)
    return folder


def tiny_config(family: str, n_layers: int = 4, max_positions: int = 256):
    """The transformers config of a tiny model (hidden 64, 4 heads, 2 KV heads, vocab 512;
    ``max_positions`` of context: more for benchmark prompts such as GSM8K's 8-shot ones)."""
    from transformers import Gemma2Config, Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        pad_token_id=1, bos_token_id=2, eos_token_id=3,
    )
    alternating = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
    if family == "llama":
        return LlamaConfig(**common)
    if family == "mistral":
        return MistralConfig(**common, sliding_window=4)
    if family == "qwen2":
        return Qwen2Config(**common, use_sliding_window=True, sliding_window=4, max_window_layers=n_layers // 2)
    if family == "gemma2":
        return Gemma2Config(**common, head_dim=16, sliding_window=4, query_pre_attn_scalar=16)
    if family == "gemma3":
        return Gemma3TextConfig(**common, head_dim=16, sliding_window=4, query_pre_attn_scalar=16,
                                layer_types=alternating)
    raise ValueError(f"unknown tiny family {family!r}; choose from {FAMILIES}")


def tiny_model(family: str, *, seed: int = 0, n_layers: int = 4, attn_implementation: str = "eager",
               max_positions: int = 256):
    """Build ``(model, tokenizer)``: a random-weight fp32 model in eval mode.

    >>> m, tok = tiny_model("llama", n_layers=3)
    >>> len(m.model.layers)
    3
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = tiny_config(family, n_layers, max_positions)
    cfg._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir())
    return model, tok


def save_tiny_model(family: str, folder: str | Path, **kw) -> Path:
    """Write a tiny model and its tokenizer as a standard checkpoint folder."""
    model, tok = tiny_model(family, **kw)
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def llama3_8b_config():
    """The Llama-3.1-8B shape (no weights needed): 32 layers, d_model 4096, GQA 32/8, vocab 128256."""
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
                       rope_theta=500000.0, tie_word_embeddings=False)


def random_weight_model(config, device: str = "cpu", dtype: torch.dtype = torch.bfloat16,
                        attn_implementation: str = "sdpa", seed: int = 0):
    """A randomly initialised model built directly on ``device`` in ``dtype`` (benchmarks)."""
    from transformers import AutoModelForCausalLM

    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return AutoModelForCausalLM.from_config(config).eval()
    finally:
        torch.set_default_dtype(prev)


def llama3_70b_config():
    """The Llama-3.1-70B shape: 80 layers, d_model 8192, MLP 28672, GQA 64/8, vocab 128256 (70.6B parameters,
    141 GB in bf16: more than one H200, so it is sharded; see :func:`random_sharded_model`)."""
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                       num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
                       rope_theta=500000.0, tie_word_embeddings=False)


@torch.no_grad()
def fill_random_(model, seed: int = 0, std: float = 0.02):
    """Redraw every weight from ``(seed, parameter index)`` alone, on the device where it lives.

    Matrices get N(0, std), vectors (norm weights) 1. Each parameter has its own generator, so
    the values do not depend on the order or the device the weights were built on: one GPU, data-
    parallel copies on several GPUs and a model sharded over GPUs get the same weights (on GPUs of
    one model; CPU and GPU draw different numbers). Returns the model.

    >>> m, _ = tiny_model("llama", n_layers=2); w = fill_random_(m).model.layers[1].mlp.up_proj.weight
    >>> round(w.std().item(), 2), fill_random_(tiny_model("llama")[0]).model.layers[1].mlp.up_proj.weight.equal(w)
    (0.02, True)
    """
    for i, (_, p) in enumerate(model.named_parameters()):
        if p.dim() >= 2:
            gen = torch.Generator(device=p.device).manual_seed(seed * 100_003 + i)
            p.normal_(0.0, std, generator=gen)
        else:
            p.fill_(1.0)
    return model


def random_sharded_model(config, max_memory: dict | None = None, dtype: torch.dtype = torch.bfloat16,
                         attn_implementation: str = "sdpa", seed: int = 0):
    """A random-weight model built directly sharded over the visible GPUs, through accelerate.

    No checkpoint and no copy through the CPU: the model is created with empty (meta) weights,
    accelerate balances the decoder layers over the GPUs (``max_memory`` per device, default:
    what is free), each weight is allocated on its GPU and filled there (:func:`fill_random_`),
    and ``dispatch_model`` adds the hooks that carry activations from GPU to GPU. Its
    ``hf_device_map`` says where each module went. Runs on CPU too (``max_memory={"cpu": ...}``).
    """
    from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights
    from accelerate.utils import get_balanced_memory, set_module_tensor_to_device
    from transformers import AutoModelForCausalLM

    config._attn_implementation = attn_implementation
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with init_empty_weights():   # parameters on meta; buffers (rotary frequencies) stay real
            model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(prev)
    no_split = list(getattr(model, "_no_split_modules", None) or [])
    if max_memory is None or sum(1 for k in max_memory if k != "cpu") > 1:
        max_memory = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype)
    device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype)
    if any(v == "disk" for v in device_map.values()) or (
            torch.cuda.is_available() and any(v == "cpu" for v in device_map.values())):
        raise RuntimeError(f"the model does not fit on the GPUs within max_memory={max_memory}: {device_map}")

    def where(name: str):
        best = max((k for k in device_map if k == "" or name == k or name.startswith(k + ".")), key=len)
        return device_map[best]

    for name, p in list(model.named_parameters()):
        dev = where(name)
        set_module_tensor_to_device(model, name, dev, value=torch.empty(p.shape, dtype=dtype, device=dev))
    fill_random_(model, seed)
    model = dispatch_model(model, device_map=device_map)
    return model.eval()
