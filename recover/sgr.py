"""Self-Generated Responses: the unpruned base model answers the training prompts.

Each output line is a prompt record plus ``response`` (the base model's answer) and ``sgr``
(provenance: base model, sampling settings, seed). Lines are appended and fsynced per batch, so
a crashed run resumes: finished prompts are kept, a torn last line is dropped and redone. A run
that answered prompts leaves the file in prompt order (answers finish out of order), so the file
does not depend on the batching or on the number of processes.

``devices=N`` (``--devices N``, or ``torchrun --nproc_per_node N -m prunescope sgr ...``): N
processes, one model copy each (:mod:`prunescope.core.distributed`). The prompts not yet answered
are dealt round-robin; each rank streams its share through its own engine with the seeds one
process would use (``seed`` and the prompt's index in the whole list); every ``slots // 4``
answers per rank, rank 0 gathers a round and appends it, as one process appends its groups.

>>> # prunescope sgr --prompts builtin --max-prompts 600 --out runs/sgr.jsonl      (the default model answers)
>>> # generate_responses(SGROptions(max_prompts=600, temperature=0.9), output=Output(out="runs/sgr.jsonl"))
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from prunescope.core.distributed import Dist, gathered_chunks, rank_device, spread
from prunescope.core.errors import PrunescopeError
from prunescope.core.options import SHARED_MEANINGS, Options, Output, Placement, option
from prunescope.core.lock import run_lock
from prunescope.core.results import append_progress, atomic_write_text, read_progress, same_config

from prunescope.recover.data import prompt_text


def _settings(loaded, temperature: float, top_p: float, max_new_tokens: int, seed: int, prompts_source: str) -> dict:
    return {"base_model": loaded.name, "base_path": loaded.path, "temperature": temperature, "top_p": top_p,
            "max_new_tokens": max_new_tokens, "seed": seed, "prompts": prompts_source}


def _done(out: Path, settings: dict) -> dict[str, dict]:
    """Finished records of an earlier run with the same settings (a torn last line is dropped)."""
    recs = read_progress(out)
    for r in recs:
        if not same_config(r.get("sgr") or {}, settings, paths=("base_path",)):   # the cache may lie elsewhere
            raise PrunescopeError(f"{out} was generated with other settings ({r.get('sgr')}); "
                                  "use another --out file, or pass --overwrite to start over")
    # rewrite without a torn line so appends continue a valid JSONL file
    if out.is_file() and len(out.read_text().splitlines()) != len(recs):
        atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in recs))
    return {r["id"]: r for r in recs}


@dataclass
class SGROptions(Options):
    """Settings of ``prunescope sgr`` (:func:`generate_responses`).

    >>> SGROptions(max_prompts=64, temperature=0).check().temperature
    0.0
    """

    prompts: str = option("builtin", "JSONL file or folder of prompts ({prompt[,response]}, Alpaca {instruction, "
                                     "input,output}, chat {messages}, {question,answer}); 'builtin' = 600 offline "
                                     "instruction/maths/code prompts; 'offline' = all 53,218 offline prompts with "
                                     "answers (factual, reading, medical, maths, commonsense, reasoning, code), "
                                     "none from the evaluation suite")
    max_prompts: int | None = option(None, "answer at most this many prompts, the first ones (default: all; "
                                           "builtin: 600)", minimum=1)
    temperature: float = option(0.9, "sampling temperature, 0 = greedy", minimum=0)
    top_p: float = option(1.0, "nucleus sampling", minimum=0, maximum=1)
    max_new_tokens: int = option(256, "most tokens generated per response", minimum=1)
    slots: int = option(64, SHARED_MEANINGS["slots"], minimum=1)
    seed: int = option(0, SHARED_MEANINGS["seed"], minimum=0)


def generate_responses(options: SGROptions | None = None, *, model: str | None = None,
                       placement: Placement | None = None, output: Output | None = None, loaded=None,
                       records: Sequence[dict] | None = None) -> list[dict]:
    """Answer every prompt with the base model (batched, left-padded) and append to ``output.out`` (JSONL).

    ``records`` (already loaded prompt records) replaces reading ``options.prompts``, which then
    only names their source. ``temperature=0`` is greedy. Generation runs through
    :class:`prunescope.generation.Engine`; each prompt samples from its own random stream
    (``seed`` and its index), so a resumed run draws the answers an uninterrupted one would.
    ``placement.devices=N`` splits the prompts over N processes (one model copy each; also what
    runs under ``torchrun``): the file and the returned records are those of one process (in
    fp32 identical; in bf16 a different batch can round a logit differently).

    >>> generate_responses(SGROptions(max_prompts=48), output=Output(out="runs/sgr.jsonl"))  # doctest: +SKIP
    """
    o = (options or SGROptions()).check()
    placement, output = (placement or Placement()).check(), output or Output()
    if not output.out:
        raise PrunescopeError("SGR needs an output file: pass --out runs/sgr.jsonl")
    if Path(output.out).is_dir():
        raise PrunescopeError(f"--out {output.out} is a folder; give the JSONL file to write, e.g. "
                              f"{Path(output.out) / 'sgr.jsonl'}")
    if records is None:
        from prunescope.recover.data import load_prompts

        records = load_prompts(o.prompts, n=o.max_prompts, seed=o.seed)
    if not records:
        raise PrunescopeError("no prompts to answer: the prompt file is empty")
    # spawned processes get the records (not the prompt file): every rank answers the same list
    return spread(generate_responses, _answer, o, model=model, placement=placement, output=output, loaded=loaded,
                  records=list(records))


def _answer(d: Dist, o: SGROptions, *, model, placement: Placement, output: Output, loaded,
            records: list[dict]) -> list[dict]:
    """One rank's part of :func:`generate_responses` (a world of one: all of it)."""
    if loaded is None:
        from prunescope.probe.models import load_model

        loaded = load_model(model, **{**placement.load_kwargs(), "device": rank_device(placement.device, d)})
    out = Path(output.out)
    with run_lock(out if d.is_main else None, "SGR run", file=True):
        if output.overwrite:
            d.on_main(_remove_sgr_file, out)
        return _generate(d, loaded, records, out, o, output.progress and d.is_main)


def _remove_sgr_file(out: Path) -> None:
    """``--overwrite``: an earlier SGR file goes; any other file (prompts of the user's own, say) stays."""
    if not out.is_file():
        return
    if not all(r.get("sgr") for r in read_progress(out)):
        raise PrunescopeError(f"{out} is not an SGR file (its records have no 'sgr' provenance), so --overwrite "
                              "leaves it; choose another --out")
    out.unlink()


def _generate(d: Dist, loaded, records: Sequence[dict], out: Path, o: SGROptions, show_progress: bool) -> list[dict]:
    from prunescope.generation import Engine, GenerationOptions

    settings = _settings(loaded, o.temperature, o.top_p, o.max_new_tokens, o.seed, o.prompts)
    done = d.on_main(_done, out, settings)  # rank 0 reads (and repairs) the file; every rank gets it
    todo = [(i, r) for i, r in enumerate(records) if r["id"] not in done]
    mine = todo[d.rank::d.world_size]  # round-robin: every rank deals the same hand from the same list
    engine = Engine(loaded.model, loaded.tokenizer, GenerationOptions(slots=o.slots))
    bar = tqdm(total=len(records), initial=len(records) - len(todo), desc="sgr", unit="prompt",
               disable=not show_progress)
    answers = ({**mine[j][1], "response": completion.text.strip(), "response_tokens": len(completion.tokens),
                "sgr": settings} for j, completion in engine.stream(_requests(loaded.tokenizer, mine, o)))
    # answers finish out of order; they are appended (and fsynced) in groups so a crash loses little
    for group in gathered_chunks(d, answers, max(1, o.slots // 4)):
        if d.is_main:
            append_progress(out, group)
        done.update({p["id"]: p for p in group})
        bar.update(len(group))
    bar.close()
    if todo and d.is_main:
        _write_in_order(out, records)
    return [done[r["id"]] for r in records]


def _requests(tok, todo: Sequence[tuple[int, dict]], o: SGROptions) -> list:
    """The engine's requests for ``(index, record)`` pairs: each samples from its own stream, picked
    by the prompt's index in the whole list (not its place in this run or this rank's share)."""
    from prunescope.generation import Request

    return [Request(tok(prompt_text(tok, r), add_special_tokens=not tok.chat_template).input_ids,
                    max_new_tokens=o.max_new_tokens, temperature=o.temperature, top_p=o.top_p,
                    seed=o.seed * 1_000_003 + i) for i, r in todo]


def _write_in_order(out: Path, records: Sequence[dict]) -> None:
    """Rewrite the finished file in prompt order (records of other prompts, from an earlier run
    with more of them, after those), so its order depends on neither the batching nor the split."""
    recs = read_progress(out)
    rank = {r["id"]: k for k, r in enumerate(records)}
    ordered = sorted(recs, key=lambda r: rank.get(r["id"], len(rank)))  # stable: the rest keep their order
    if ordered != recs:
        atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in ordered))
