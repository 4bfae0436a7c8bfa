"""The pruned model to recover, as training and merging both load it: 4-bit NF4 (QLoRA) or full
precision. Its own module so that training and merging (which imports it) do not import each other.

>>> # load_student("pruned/bi25", quant=True, device="cuda")
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
from pathlib import Path

import torch

from prunescope.core.errors import PrunescopeError

# bitsandbytes, when imported on a CPU with AVX512-BF16, tries to fetch an optional inference kernel
# from the hub ("Failed to load CPU gemm_4bit_forward from kernels-community"). Training here turns
# that inference path off (load_student), so the kernel is never used: its one logger is quietened.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def check_bitsandbytes(device: str | torch.device) -> None:
    """Fail early, with the fix, when 4-bit NF4 cannot run here."""
    dev = torch.device(device)
    try:
        importlib.import_module("bitsandbytes")
    except Exception as e:  # ImportError, or a broken native library
        raise PrunescopeError(f"4-bit QLoRA needs bitsandbytes, which does not load here ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); `pip install bitsandbytes>=0.48`, "
                              "or pass --no-quant for plain LoRA") from None
    if dev.type not in ("cpu", "cuda", "xpu"):
        raise PrunescopeError(f"bitsandbytes 4-bit has no {dev.type} backend; use cpu or cuda, or pass --no-quant")


def load_student(path: str | Path, *, quant: bool, device: str = "cpu", compute: torch.dtype | None = None):
    """The pruned model to recover: 4-bit NF4 (double quant) or full precision, on ``device``.
    ``compute``: the dtype it computes in; None: bf16 on a GPU, fp32 on a CPU (where
    ``experiments/replay_recovery.py`` passes bf16 to replay a GPU run)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    on_gpu = torch.device(device).type == "cuda"
    compute = compute or (torch.bfloat16 if on_gpu else torch.float32)
    if not quant:
        return AutoModelForCausalLM.from_pretrained(path, dtype=compute).to(device)
    check_bitsandbytes(device)
    import bitsandbytes as bnb

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=compute)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=q, dtype=compute,
                                                 device_map={"": torch.device(device).index or 0} if on_gpu else "cpu")
    for m in model.modules():
        # On CPUs with AVX512-BF16 the first no-grad forward repacks 4-bit weights into an inference
        # layout whose kernel has no autograd: LoRA gradients would silently be wrong.
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False
    return model


@contextlib.contextmanager
def peft_quietly():
    """peft reads transformers' deprecated ``is_gradient_checkpointing`` property when it wraps a
    model (a FutureWarning about peft's code, nothing a user can change): silenced for that call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield
