"""Evaluation throughput: prunescope's ``evaluate()`` vs calling lm-eval directly, side by side.

Both paths score the same in-memory model on the same task configs (the YAMLs in
``analysis/tasks``, placeholders resolved) with the same per-task doc limit:

  direct    ``lm_eval.simple_evaluate(HFLM(model), tasks=[config dicts])``: one call for the tasks,
            one more for MMLU's 57 subjects (its limit is spread over the subjects)
  evaluate  ``prunescope.analysis.evaluate.run_benchmarks(loaded, options, out=tmp)``: one lm-eval run per task, plus
            the tidy table, per-doc samples and resume records it writes

It prints docs/s of each, the ratio (goal >= 0.95x) and whether the metrics agree.

    python benchmarks/evaluate.py                       # default model, CPU, classification suite, 20 docs each, 0-shot
    python benchmarks/evaluate.py --limit 50 --fewshot 5 --tasks arc_easy,piqa --device cuda --model path/to/model
    python benchmarks/evaluate.py --tiny --limit 100    # the work around the forwards alone

``evaluate`` compiles each task's Jinja template once (lm-eval compiles it for every render), so
on ``--tiny``, where the forwards cost nothing, the ratio shows what that saves.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prunescope.analysis.evaluate import (  # noqa: E402
    CLASSIFICATION, EvalOptions, _metric_name, _split_key, lm_eval_limit, lm_eval_tasks, run_benchmarks,
)
from prunescope.probe.models import load_model  # noqa: E402


def direct(loaded, tasks: list[str], limit: int | None, num_fewshot: int | None, batch_size: int, seed: int):
    """lm-eval on its own: simple_evaluate over config dicts. Returns ({(task, metric): value}, docs)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size)
    tm = TaskManager(include_defaults=False)
    values, docs = {}, 0
    groups = [[t] for t in tasks if t == "mmlu"] + [[t for t in tasks if t != "mmlu"]]
    for group in (g for g in groups if g):
        configs = {t: lm_eval_tasks(t, num_fewshot=num_fewshot) for t in group}
        leaves = [c for t in group for c in configs[t]]
        per_leaf = lm_eval_limit(group[0], limit, len(configs[group[0]]))
        res = simple_evaluate(model=lm, tasks=leaves, task_manager=tm, limit=per_leaf, log_samples=True,
                              bootstrap_iters=1000, random_seed=seed, numpy_random_seed=seed,
                              torch_random_seed=seed, fewshot_random_seed=seed)
        docs += sum(v["effective"] for v in res["n-samples"].values())
        for t in group:
            if t == "mmlu":  # size-weighted mean over subjects
                n = {k: v["effective"] for k, v in res["n-samples"].items()}
                values[(t, "acc")] = sum(res["results"][k]["acc,none"] * n[k] for k in n) / sum(n.values())
                continue
            for key, value in res["results"][t].items():
                split = _split_key(key)
                if split:
                    values[(t, _metric_name(t, *split))] = float(value)
    return values, docs


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder, .gguf or hub id (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--tasks", default=",".join(CLASSIFICATION))
    ap.add_argument("--limit", type=int, default=20, help="docs per task (MMLU: spread over its 57 subjects)")
    ap.add_argument("--fewshot", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="a tiny random Qwen2 model instead: its forwards cost "
                    "almost nothing, so what is timed is everything around them (what a large GPU waits on)")
    args = ap.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]

    import torch

    print(f"torch threads: {torch.get_num_threads()}; device {args.device}")
    if args.tiny:
        from prunescope.probe.models import LoadedModel
        from prunescope.probe.tiny import tiny_model

        # 4096 positions: room for every task's longest context
        model, tok = tiny_model("qwen2", attn_implementation="sdpa", max_positions=4096)
        loaded = LoadedModel(model.to(args.device), tok, "tiny-qwen2", "")
    else:
        loaded = load_model(args.model, device=args.device, dtype="float32")
    # Warm-up outside the timers: builds every task once (datasets caches the Arrow splits) and runs a forward.
    from lm_eval.api.task import ConfigurableTask

    for t in tasks:
        for c in lm_eval_tasks(t, num_fewshot=args.fewshot):
            ConfigurableTask(config=c)
    with torch.no_grad():
        loaded.model(**loaded.tokenizer(["warm up the kernels"], return_tensors="pt").to(args.device))

    t0 = time.perf_counter()
    ref, docs = direct(loaded, tasks, args.limit, args.fewshot, args.batch_size, args.seed)
    t_direct = time.perf_counter() - t0

    options = EvalOptions(tasks=tasks, limit=args.limit, num_fewshot=args.fewshot, batch_size=args.batch_size,
                          seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        rows = run_benchmarks(loaded, options, Path(tmp) / "out", progress=False)
        t_ours = time.perf_counter() - t0
    ours = {(r["probe"], r["metric"]): r["value"] for r in rows}
    ours_docs = sum({r["probe"]: r["n"] for r in rows}.values())

    # the same evaluate with lm-eval's own rendering (each Jinja template compiled for every render)
    import contextlib

    import prunescope.analysis.evaluate as ev

    compiled, ev._compiled_templates = ev._compiled_templates, contextlib.nullcontext
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            rows_plain = run_benchmarks(loaded, options, Path(tmp) / "out", progress=False)
            t_plain = time.perf_counter() - t0
    finally:
        ev._compiled_templates = compiled
    same_plain = {(r["probe"], r["metric"]): r["value"] for r in rows_plain} == ours

    print(f"\n{len(tasks)} tasks, limit {args.limit}, {args.fewshot}-shot, {docs} docs")
    print(f"{'path':<10}{'seconds':>10}{'docs/s':>10}")
    print(f"{'direct':<10}{t_direct:>10.1f}{docs / t_direct:>10.2f}")
    print(f"{'evaluate':<10}{t_ours:>10.1f}{ours_docs / t_ours:>10.2f}")
    print(f"{'(plain)':<10}{t_plain:>10.1f}{ours_docs / t_plain:>10.2f}   evaluate with lm-eval's per-render "
          "template compilation")
    print(f"ratio evaluate/direct (docs/s): {(ours_docs / t_ours) / (docs / t_direct):.3f}x  (goal >= 0.95x)")
    print(f"ratio evaluate/plain (compiled templates): {t_plain / t_ours:.3f}x; same metrics: {same_plain}")
    diffs = {k: (ref[k], ours.get(k)) for k in ref if ours.get(k) is None or abs(ref[k] - ours[k]) > 1e-9}
    print("metrics agree: " + ("yes, all " + str(len(ref)) if not diffs and ours_docs == docs else f"NO: {diffs}"))
    print("\n" + "\n".join(f"{t:<14}{m:<10}{v:.3f}" for (t, m), v in sorted(ours.items())))


if __name__ == "__main__":
    main()
