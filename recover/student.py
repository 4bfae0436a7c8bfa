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


# ---------------------------------------------------------------- layer tuning
PLAN_FILES = ("prunescope_plan.json", "plan.json")  # what prunescope prune writes beside a pruned model


def plan_drop(model_dir: str | Path) -> tuple[list[int], int] | None:
    """The layers a pruned checkpoint dropped (indices of the unpruned model) and the unpruned
    model's layer count, from the plan record prune wrote into it; None without one (a model that
    prunescope did not prune).

    >>> plan_drop("/nonexistent") is None
    True
    """
    import json

    for name in PLAN_FILES:
        path = Path(model_dir) / name
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        plan = record.get("plan", record)  # prunescope_plan.json holds the plan beside its source model
        if "drop" not in plan:
            continue
        drop = sorted(int(i) for i in plan["drop"])
        n_layers = plan.get("n_layers")
        if n_layers is None:  # a bare {"drop": [...]} record: the pruned config plus what it dropped
            from transformers import AutoConfig

            n_layers = AutoConfig.from_pretrained(model_dir).num_hidden_layers + len(drop)
        return drop, int(n_layers)
    return None


def cut_neighbours(drop: list[int], n_layers: int) -> list[int]:
    """The pruned model's layers on either side of each removed span: for every maximal run of
    dropped layers, the kept layer just before it and the one just after it (where there is one),
    as indices of the pruned model. These are the layers whose inputs or outputs the cut changed.

    >>> cut_neighbours([3, 4], 8)      # keep 0 1 2 5 6 7: layer 2 before the cut, 5 (now 3) after
    [2, 3]
    >>> cut_neighbours([0, 5, 7], 8)   # keep 1 2 3 4 6: no layer before 0, none after 7
    [0, 3, 4]
    """
    keep = [i for i in range(n_layers) if i not in set(drop)]
    new = {old: i for i, old in enumerate(keep)}
    out: set[int] = set()
    for layer in drop:
        for side in (layer - 1, layer + 1):
            if side in new:
                out.add(new[side])
    return sorted(out)


def tune_parameters(model, layers: list[int], *, head: bool = False) -> list[str]:
    """Freeze ``model`` except the decoder layers ``layers`` (and, with ``head``, the final norm
    and the unembedding: with tied embeddings that is the input embedding too); returns the names
    of the trainable parameters.

    >>> from prunescope.probe.tiny import tiny_model
    >>> names = tune_parameters(tiny_model("llama")[0], [1])
    >>> sorted({n.split(".")[2] for n in names}), len(names) > 0
    (['1'], True)
    """
    from prunescope.probe.blocks import Blocks

    blocks = Blocks(model)
    blocks.check_layers(layers, allow_all=True)
    for p in model.parameters():
        p.requires_grad_(False)
    modules = [blocks.layers[i] for i in layers]
    if head:
        from prunescope.probe.architectures import get_path

        modules += [get_path(model, blocks.arch.final_norm), blocks.lm_head]
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]
