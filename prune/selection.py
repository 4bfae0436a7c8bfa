"""The paper's own layer selection: greedy iterative pruning scored on generated answers.

At each step every remaining layer is tried: the model with it (and the layers already chosen)
skipped answers a held-out sample of GSM8K (8-shot chain of thought) and HumanEval, and the layer
whose removal keeps the mean accuracy highest is dropped. The held-out docs are the *last*
``eval_n`` of each benchmark (:func:`prunescope.analysis.evaluate.heldout_docs`), so an evaluation of the
first docs stays disjoint from them; the pipeline refuses one that would overlap.

It is registered in ``prunescope.prune.commands.STRATEGIES`` as ``iterative-generated``, beside the
probe-scored ``iterative``. Scoring a candidate means answering benchmark questions, so this is
the one place where ``prune`` reaches the evaluation harness (``prunescope.analysis.evaluate``),
imported when a search runs.

>>> from prunescope.prune.commands import STRATEGIES
>>> "iterative-generated" in STRATEGIES.names()
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from prunescope.prune.strategies import Plan, iterative

__all__ = ["generated_answer_scorer", "iterative_generated_plan", "mean_primary", "select_task_names"]


def select_task_names() -> tuple[str, ...]:
    """The benchmarks a generated-answer search can score (``PruneOptions.select_tasks``' choices,
    read when an options object is checked).

    >>> "gsm8k" in select_task_names()
    True
    """
    from prunescope.analysis.evaluate import TASKS

    return tuple(TASKS)


def mean_primary(rows: list[dict]) -> float:
    """The mean of the tasks' primary metrics in ``run_benchmarks``'s rows (a candidate's score).

    >>> mean_primary([{"value": 0.5, "primary": True}, {"value": 0.9, "primary": False}, {"value": 0.25, "primary": True}])
    0.375
    """
    prim = [r["value"] for r in rows if r["primary"]]
    return sum(prim) / len(prim)


def generated_answer_scorer(loaded, tasks: Sequence[str], n: int, *, slots: int = 64, seed: int = 0,
                            progress: bool = False, cache: str | Path | None = None
                            ) -> Callable[[list[list[int]]], list[float]]:
    """``score(sets) -> [mean primary accuracy]``: for each set of skipped layers, the mean of the
    tasks' primary metrics (GSM8K exact match, HumanEval pass@1) on their last ``n`` docs.

    ``cache``: an append-only JSONL log of scored sets. A set it holds for the same model, held-out
    docs (tasks, ``n`` and the tasks' sizes decide them) and seed is read back instead of generated: the 12.5% search repeats the first steps of
    the 25% one (greedy picks the same layers from the same scores), and a search that crashed
    resumes where it stopped. One log can serve several models; other settings' records are ignored.
    """
    from prunescope.core.results import append_progress, read_progress

    from prunescope.generation import SkipSets

    from prunescope.analysis.evaluate import TASKS, EvalOptions, heldout_docs, run_benchmarks

    docs = heldout_docs(tasks, n)
    key = {"model": loaded.name, "docs": docs, "seed": seed}  # what is scored, not what chose it
    known = {tuple(r["skip"]): r["value"] for r in (read_progress(cache) if cache else [])
             if r.get("key") == key}

    # every candidate of a greedy step answers the same prompts: generate them all in one engine run
    # (a row per prompt and candidate) instead of one run per candidate; only generated tasks can
    generated = all(TASKS[t].category == "generative" for t in tasks)

    def score(sets: list[list[int]]) -> list[float]:
        todo = [sorted(s) for s in sets if tuple(sorted(s)) not in known]
        together = SkipSets(todo) if generated and len(todo) > 1 else None
        out = []
        for s in sets:
            s = sorted(s)
            if tuple(s) in known:
                out.append(known[tuple(s)])
                continue
            if together is not None:
                together.select(s)  # the engine skips s row by row: no layer is swapped out here
            options = EvalOptions(tasks=list(tasks), skip=[] if together is not None else s,
                                  slots=slots, seed=seed)
            rows = run_benchmarks(loaded, options, docs=docs, progress=False, fan_out=together)
            out.append(_record(s, rows))
        return out

    def _record(s: list[int], rows: list[dict]) -> float:
        value = known[tuple(s)] = mean_primary(rows)
        if cache:
            append_progress(cache, [{"key": key, "skip": s, "value": value}])
        if progress:
            print(f"    skip {s}: {value:.3f}", flush=True)
        return value

    score.docs = docs
    return score


def iterative_generated_plan(lm, k: int, protected: list[int], o, progress: bool = True) -> Plan:
    """The plan builder of ``iterative-generated`` (``o``: the :class:`prunescope.prune.commands.PruneOptions`)."""
    score = generated_answer_scorer(lm, o.select_tasks, o.select_docs, slots=o.slots, seed=o.seed,
                                    progress=progress, cache=o.select_cache)
    plan = iterative(score, lm.blocks.n_layers, k, protected, metric="generated_accuracy", progress=progress)
    plan.strategy = "iterative-generated"  # the same greedy search, scored on generated answers
    plan.scores["heldout_docs"] = score.docs
    return plan
