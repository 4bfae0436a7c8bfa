"""Replay the first optimizer steps of a recovery arm on this machine, to tell whether a divergence
seen on a GPU comes from the recipe (data order, learning rate, adapter dtype) or from the device's
kernels. Same split, batch order, LoRA and AdamW schedule as
``prunescope.recover.train.recover_model``; no gradient clipping (the recipe of the Qwen SGR arm
that went NaN by step 50 on a GPU: docs/results.md, experiment 4); logs each step's loss,
gradient norm and largest adapter weight as JSONL.

    python experiments/replay_recovery.py --model qwen2.5-coder-1.5b --drop 14,15,16,17,18,24,25 \\
        --data sgr.jsonl --steps 60 --adapters bf16 --nf4 --out replay.jsonl

``--nf4``: the student in 4-bit NF4 with bf16 compute, as on a GPU (``prunescope.recover.student.load_student``,
which switches the CPU's bitsandbytes inference repacking off); without it, bf16.
``--grad-checkpointing``: as ``recover`` trains by default (the GPU arm that went NaN had it on).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from prunescope.core.results import atomic_write_text  # noqa: E402
from prunescope.recover.data import encode_all  # noqa: E402
from prunescope.recover.train import (RecoverOptions, _batch_indices, _grad_norm, add_lora, split_examples,  # noqa: E402
                           train_step, training_records, warmup_schedule)


def student(model: str, drop: list[int], nf4: bool, cache: Path):
    """The pruned model (``load_student``, computing in bf16 as on a GPU) and its tokenizer."""
    from transformers import AutoTokenizer

    from prunescope.probe.models import load_model
    from prunescope.prune.surgery import save_pruned
    from prunescope.recover.student import load_student

    folder = cache / f"pruned-{'-'.join(map(str, drop))}" if drop else Path(model)
    if drop and not (folder / "config.json").is_file():
        lm = load_model(model, dtype="bfloat16")
        save_pruned(lm.model, lm.tokenizer, drop, folder)
        del lm
    return load_student(folder, quant=nf4, compute=torch.bfloat16), AutoTokenizer.from_pretrained(folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--drop", default="", help="layers to remove first, e.g. 14,15,16 (none: --model is pruned)")
    ap.add_argument("--data", required=True, help="the arm's SGR file")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--adapters", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--nf4", action="store_true")
    ap.add_argument("--grad-checkpointing", action="store_true",
                    help="recompute activations in the backward pass, as recovery does by default")
    ap.add_argument("--train-batch", type=int, default=8, help="examples per optimizer step")
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default="runs/replay")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    model, tok = student(a.model, [int(x) for x in a.drop.split(",") if x], a.nf4, Path(a.cache))
    # the student computes in bf16, so "compute" makes bf16 adapters
    pm = add_lora(model, RecoverOptions(rank=64, alpha=16, grad_checkpointing=a.grad_checkpointing, seed=a.seed,
                                        adapter_dtype="compute" if a.adapters == "bf16" else "float32"))
    params = [p for p in pm.parameters() if p.requires_grad]
    records, field = training_records(a.data, "sgr")
    train, _ = split_examples(encode_all(tok, records, field, 2048), 32, a.seed)
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    sched = warmup_schedule(opt, a.warmup)
    pm.train()
    lines = []
    for step in range(a.steps):
        t0 = time.time()
        batch = [train[i] for i in _batch_indices(step, a.train_batch, len(train), a.seed)]
        loss, _ = train_step(pm, batch, tok.pad_token_id, torch.device("cpu"), a.micro_batch)
        row = {"step": step + 1, "loss": loss, "grad_norm": _grad_norm(params, None),
               "adapter_absmax": max(float(p.detach().abs().max()) for p in params),
               "seconds": round(time.time() - t0, 1)}
        print(json.dumps(row), flush=True)
        lines.append(json.dumps(row))
        atomic_write_text(Path(a.out), "\n".join(lines) + "\n")
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
