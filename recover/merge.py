"""Merge a LoRA adapter into its base and write a standard checkpoint that plain transformers loads.

A QLoRA adapter was trained against the *4-bit* weights, so by default it is merged into those
weights dequantized to full precision (``quant=True``): the merged model then computes what the
adapter model computed. ``quant=False`` merges into the full-precision base (plain LoRA).
:func:`write_model` writes any recovered model so (a layer-tuned one has nothing to merge).

>>> # merge_adapter("pruned/bi25", "recovered/bi25-sgr/adapter", "recovered/bi25-sgr")
>>> # AutoModelForCausalLM.from_pretrained("recovered/bi25-sgr")     # a plain LlamaForCausalLM
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from prunescope.core.results import atomic_write_json, follow_umask, make_temp_dir


def merged_model(base: str | Path, adapter: str | Path, *, quant: bool = True):
    """The base (dequantized from NF4 when ``quant``) with the adapter folded in, on CPU in fp32."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from prunescope.recover.student import load_student, peft_quietly

    if quant:
        model = load_student(base, quant=True, device="cpu").dequantize()
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with peft_quietly():
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    if hasattr(model.config, "quantization_config"):  # a plain full-precision checkpoint
        del model.config.quantization_config
    return model.float().eval()


def merge_adapter(base: str | Path, adapter: str | Path, out: str | Path, *, quant: bool = True, tokenizer=None,
                  record: dict | None = None) -> Path:
    """Write the merged model into ``out`` (:func:`write_model`), its record saying what it was merged into."""
    model = merged_model(base, adapter, quant=quant)
    return write_model(model, out, base=base, tokenizer=tokenizer,
                       record={"base": str(base), "adapter": str(adapter),
                               "merged_into": "dequantized NF4" if quant else "full-precision base", **(record or {})})


def write_model(model, out: str | Path, *, base: str | Path, tokenizer=None, record: dict | None = None) -> Path:
    """Write a recovered ``model`` into ``out`` as a standard checkpoint: its weights, the
    tokenizer (``base``'s where none is given), the pruning record of ``base`` and ``record`` as
    ``prunescope_recovery.json``; the files are staged in a temp folder and moved in, config.json
    last, so a loader never sees half a model. A layer-tuned model is written here directly (it has
    no adapter to merge).

    >>> # write_model(tuned, "recovered/bi25-tune", base="pruned/bi25", record={"recovery": {...}})
    """
    from transformers import AutoTokenizer

    out = Path(out)
    tok = tokenizer or AutoTokenizer.from_pretrained(base)
    tmp = make_temp_dir(".merged-", out)   # its files move into out with the modes they get here
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        plan = Path(base) / "prunescope_plan.json"
        if plan.is_file():  # keep the pruning record with the model it describes
            shutil.copy(plan, tmp / "prunescope_plan.json")
        atomic_write_json(tmp / "prunescope_recovery.json", {"base": str(base), **(record or {})})
        follow_umask(tmp)
        names = sorted(os.listdir(tmp), key=lambda n: n == "config.json")  # a loader sees config.json last
        for name in names:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
