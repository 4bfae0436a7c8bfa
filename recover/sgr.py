"""Self-Generated Responses: the unpruned base model answers the training prompts.

Each output line is a prompt record plus ``response`` (the base model's answer) and ``sgr``
(provenance: base model, sampling settings, seed). Lines are appended and fsynced per batch, so
a crashed run resumes: finished prompts are kept, a torn last line is dropped and redone.

>>> # prunescope sgr --prompts builtin --n 600 --out runs/sgr.jsonl      (the default model answers)
>>> # generate_responses(load_model(), load_prompts(), "runs/sgr.jsonl", temperature=0.9, seed=0)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from probe.errors import PrunescopeError
from probe.results import append_progress, atomic_write_text, read_progress, same_config

from .data import prompt_text


def _settings(loaded, temperature: float, top_p: float, max_new_tokens: int, seed: int, prompts_source: str) -> dict:
    return {"base_model": loaded.name, "base_path": loaded.path, "temperature": temperature, "top_p": top_p,
            "max_new_tokens": max_new_tokens, "seed": seed, "prompts": prompts_source}


def _done(out: Path, settings: dict) -> dict[str, dict]:
    """Finished records of an earlier run with the same settings (a torn last line is dropped)."""
    recs = read_progress(out)
    for r in recs:
        if not same_config(r.get("sgr") or {}, settings, paths=("base_path",)):   # the cache may lie elsewhere
            raise PrunescopeError(f"{out} was generated with other settings ({r.get('sgr')}); "
                                  "use another --out file or delete it")
    # rewrite without a torn line so appends continue a valid JSONL file
    if out.is_file() and len(out.read_text().splitlines()) != len(recs):
        atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in recs))
    return {r["id"]: r for r in recs}


@torch.inference_mode()
def generate_responses(loaded, records: Sequence[dict], out: str | Path, *, temperature: float = 0.9,
                       top_p: float = 1.0, max_new_tokens: int = 256, batch_size: int = 16, seed: int = 0,
                       prompts_source: str = "builtin", show_progress: bool = True) -> list[dict]:
    """Answer every prompt with the base model (batched, left-padded) and append to ``out`` (JSONL).

    ``temperature=0`` is greedy. Sampling is seeded per batch (``seed + first index``) so a
    resumed run draws the same responses as an uninterrupted one.
    """
    if not records:
        raise PrunescopeError("no prompts to answer: the prompt file is empty")
    out = Path(out)
    settings = _settings(loaded, temperature, top_p, max_new_tokens, seed, prompts_source)
    done = _done(out, settings)
    tok, model = loaded.tokenizer, loaded.model
    device = next(model.parameters()).device
    todo = [(i, r) for i, r in enumerate(records) if r["id"] not in done]
    old_side = tok.padding_side
    tok.padding_side = "left"  # generation appends after the last prompt token of every row
    try:
        bar = tqdm(total=len(records), initial=len(records) - len(todo), desc="sgr", unit="prompt",
                   disable=not show_progress)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            texts = [prompt_text(tok, r) for _, r in chunk]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not tok.chat_template).to(device)
            torch.manual_seed(seed + chunk[0][0])
            kw = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, **kw)
            new = gen[:, enc.input_ids.shape[1]:]
            recs = []
            for (_, r), row in zip(chunk, new):
                text = tok.decode(row, skip_special_tokens=True).strip()
                recs.append({**r, "response": text, "response_tokens": int((row != tok.pad_token_id).sum()),
                             "sgr": settings})
            append_progress(out, recs)
            done.update({r["id"]: r for r in recs})
            bar.update(len(chunk))
        bar.close()
    finally:
        tok.padding_side = old_side
    return [done[r["id"]] for r in records]
