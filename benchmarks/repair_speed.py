"""What a repair costs: training tokens/s of each recipe, and the linear replacement's fit time,
measured side by side in one run on one random-weight model shape.

Arms (each ``prunescope recover`` itself, on the same pruned model and the same SGR-format file of
fixed-length examples, ``--steps`` optimizer steps after the same warm-up):

  qlora-paper   the paper's recipe: 4-bit NF4 QLoRA, r=64, alpha=16 (``--recipe paper``)
  lora-bf16     the same LoRA on the bf16 model (``--no-quant``), for models that fit
  tune          full-parameter layer tuning of the kept layers next to each cut (``--train tune``)
  linear        the training-free linear replacement: its fit on ``--calib-texts`` texts

Reported per arm: optimizer steps, response tokens, seconds of training (the recovery record's
``train_seconds``: model loading excluded), response tokens/s and all tokens/s (prompt + response),
and each arm's tokens/s as a ratio of qlora-paper's. The linear row reports its fit seconds.

    python benchmarks/repair_speed.py --shape qwen2.5-1.5b --device cuda --out runs/repair-speed
    python benchmarks/repair_speed.py --shape llama-8b --device cuda --arms linear --out runs/repair-speed-8b
    python benchmarks/repair_speed.py --shape tiny --steps 2 --out /tmp/repair-speed     # CPU smoke run

Shapes are random-weight models built from a config (no download): ``qwen2.5-1.5b`` (28 layers,
d 1536, the Qwen2.5-Coder-1.5B shape), ``llama-8b`` (32 layers, d 4096, Llama-3.1-8B), ``tiny``.
A random model's loss means nothing; its speed is the real model's.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

SHAPES = {
    "qwen2.5-1.5b": dict(family="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "llama-8b": dict(family="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "tiny": dict(family="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=8,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=49152, tie_word_embeddings=False),
}
ARMS = ("qlora-paper", "lora-bf16", "tune", "linear")


def build_base(shape: str, out: Path, dtype: str) -> Path:
    """A random-weight model of ``shape`` saved with the default model's tokenizer (49,152 ids: every
    shape's vocabulary holds them; the vocabulary size still costs what the real model's does)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from prunescope.probe.models import default_model_dir, load_model

    if (out / "config.json").is_file():
        return out
    spec = dict(SHAPES[shape])
    family = spec.pop("family")
    config = AutoConfig.for_model(family, max_position_embeddings=4096, **spec)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=getattr(torch, dtype))
    model.save_pretrained(out)
    load_model(default_model_dir(), device="cpu").tokenizer.save_pretrained(out)
    return out


def sgr_file(path: Path, n: int, prompt_words: int, response_words: int, seed: int = 0) -> Path:
    """``n`` SGR-format records of fixed length (plain words, so every arm sees the same tokens)."""
    rng = random.Random(seed)
    words = "the of and to in is that for on with as by at from this which be are was it an or".split()
    rows = [{"id": f"bench-{i}", "prompt": " ".join(rng.choices(words, k=prompt_words)),
             "response": " ".join(rng.choices(words, k=response_words))} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def arm_options(arm: str, data: Path, base: Path, a) -> "object":
    from prunescope.recover.train import RecoverOptions

    common = dict(data=str(data), steps=a.steps + a.warmup_steps, train_batch=a.train_batch, micro_batch=a.micro_batch,
                  max_seq_len=a.max_seq_len, heldout=8, eval_every=10_000, warmup=0, seed=0)
    if arm == "qlora-paper":
        return RecoverOptions(mode="sgr", recipe="paper", quant=True, **common)
    if arm == "lora-bf16":
        return RecoverOptions(mode="sgr", recipe="paper", quant=False, **common)
    if arm == "tune":
        return RecoverOptions(mode="sgr", recipe="paper", train="tune", **common)
    return RecoverOptions(mode="linear", teacher=str(base), texts=a.calib_texts, seed=0)


def run_arm(arm: str, pruned: Path, data: Path, base: Path, out: Path, a) -> dict:
    from prunescope.core.options import Output, Placement
    from prunescope.recover.train import recover_model

    t0 = time.perf_counter()
    s = recover_model(arm_options(arm, data, base, a), model=str(pruned), placement=Placement(device=a.device),
                      output=Output(out=str(out / arm), overwrite=True, progress=False))
    wall = time.perf_counter() - t0
    if arm == "linear":
        return {"arm": arm, "fit_seconds": (s.get("repair") or {}).get("fit_seconds"), "wall_seconds": round(wall, 2)}
    secs = s.get("train_seconds") or float("nan")
    return {"arm": arm, "steps": s.get("steps"), "response_tokens": s.get("trained_tokens"),
            "all_tokens": s.get("all_tokens"), "train_seconds": secs, "wall_seconds": round(wall, 2),
            "response_tokens_per_s": (s.get("trained_tokens") or 0) / secs,
            "all_tokens_per_s": (s.get("all_tokens") or 0) / secs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=tuple(SHAPES), default="qwen2.5-1.5b")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per training arm")
    ap.add_argument("--warmup-steps", type=int, default=0, help="(counted in the record's seconds too)")
    ap.add_argument("--train-batch", type=int, default=64)
    ap.add_argument("--micro-batch", type=int, default=32)
    ap.add_argument("--max-seq-len", type=int, default=2048)
    ap.add_argument("--prompt-words", type=int, default=60)
    ap.add_argument("--response-words", type=int, default=180, help="about the Qwen SGR answers' length")
    ap.add_argument("--calib-texts", type=int, default=128)
    ap.add_argument("--drop", type=int, default=4, help="layers the pruned model lacks (the last ones)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    from prunescope.core.options import Output, Placement
    from prunescope.core.results import atomic_write_json, write_table
    from prunescope.prune.commands import PruneOptions, prune_model

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = "float32" if a.device == "cpu" else "bfloat16"
    base = build_base(a.shape, out / "base", dtype)
    pruned = out / "pruned"
    if not (pruned / "plan.json").is_file():
        prune_model(PruneOptions(strategy="reverse", drop=a.drop), model=str(base),
                    placement=Placement(device="cpu", dtype=dtype), output=Output(out=str(pruned), overwrite=True))
    data = sgr_file(out / "sgr.jsonl", (a.steps + a.warmup_steps + 1) * a.train_batch + 8, a.prompt_words, a.response_words)
    rows = [run_arm(arm, pruned, data, base, out, a) for arm in a.arms.split(",")]
    ref = next((r["response_tokens_per_s"] for r in rows if r["arm"] == "qlora-paper"), None)
    for r in rows:
        if ref and r.get("response_tokens_per_s"):
            r["ratio_to_qlora_paper"] = r["response_tokens_per_s"] / ref
    write_table(rows, out / "repair_speed")
    atomic_write_json(out / "summary.json", {"shape": a.shape, "device": a.device, "rows": rows})
    for r in rows:
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
