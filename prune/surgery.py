"""Remove decoder layers for real, leaving a model that saves as a standard checkpoint.

Every place the architecture keys by layer is updated: the ModuleList, each attention's
``layer_idx`` (the KV cache is indexed by it), ``config.num_hidden_layers``, and per-layer config
lists such as ``layer_types`` (Qwen2 / Gemma sliding-vs-full masks), which are indexed by the
kept layers, never truncated: truncating silently shifts mask types onto the wrong layers.

>>> from prunescope.probe.tiny import tiny_model
>>> model, _ = tiny_model("qwen2")
>>> _ = remove_layers(model, [1])
>>> model.config.num_hidden_layers, len(model.config.layer_types)
(3, 3)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from prunescope.probe.architectures import get_path
from prunescope.probe.blocks import Blocks


def remove_layers(model: torch.nn.Module, drop: Iterable[int]) -> torch.nn.Module:
    """Delete layers ``drop`` from ``model`` in place and return it."""
    blocks = Blocks(model)
    drop = set(blocks.check_layers(drop))
    keep = [i for i in range(blocks.n_layers) if i not in drop]
    layers = torch.nn.ModuleList([blocks.layers[i] for i in keep])
    parent_path, _, attr = blocks.arch.layers.rpartition(".")
    setattr(get_path(model, parent_path), attr, layers)
    for new_i, layer in enumerate(layers):
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new_i
        attn = get_path(layer, blocks.arch.attn)
        if hasattr(attn, "layer_idx"):
            attn.layer_idx = new_i
    model.config.num_hidden_layers = len(keep)
    for key in blocks.arch.per_layer_config:
        values = getattr(model.config, key, None)
        if isinstance(values, (list, tuple)) and len(values) == blocks.n_layers:
            setattr(model.config, key, [values[i] for i in keep])
    return model


def save_pruned(model: torch.nn.Module, tokenizer, drop: Iterable[int], out, *, overwrite: bool = False,
                record: dict | None = None):
    """Write a standard Hugging Face checkpoint of ``model`` without layers ``drop``.

    The original model is untouched (a deep copy is pruned). The folder is written next to
    ``out`` under a temporary name and renamed at the end, so a crash leaves no half checkpoint;
    an existing ``out`` is refused unless ``overwrite``. ``record`` (the plan, the source model)
    is saved as ``prunescope_plan.json``.
    """
    import copy
    import json
    import shutil
    from pathlib import Path

    from prunescope.core.errors import PrunescopeError
    from prunescope.core.results import follow_umask, make_temp_dir

    out = Path(out)
    if out.exists() and not overwrite:
        raise PrunescopeError(f"{out} already exists; choose another --out or pass --overwrite")
    drop = list(drop)
    Blocks(model).check_layers(drop)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f".{out.name}.", out.parent)   # the user's umask, not mkdtemp's 0700
    try:
        pruned = remove_layers(copy.deepcopy(model), drop)
        pruned.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "prunescope_plan.json").write_text(json.dumps(record or {"drop": sorted(drop)}, indent=2, default=str))
        follow_umask(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
