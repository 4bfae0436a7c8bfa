"""Log-likelihood scoring: lm-eval's own HFLM vs prunescope's (continuation logits only), side by side.

Both score the same requests (5-shot MMLU prompts of a few subjects, built by lm-eval from the task
YAML in ``analysis/tasks``) on the same in-memory model with the same batch size:

  stock     ``lm_eval.models.huggingface.HFLM``: the output layer runs on every position of the
            padded batch (batch x length x vocabulary fp32 logits)
  trimmed   ``prunescope.analysis.evaluate.make_lm``: ``logits_to_keep`` = right padding + longest continuation

It prints seconds, requests/s and their ratio, the largest logits tensor of one forward (MiB), and
whether the scores agree (max |difference| of log-likelihoods, greedy flags equal).

    python benchmarks/scoring.py                                  # default model, CPU, 4 subjects x 5 docs
    python benchmarks/scoring.py --model gemma3-270m --subjects 4 --docs 5 --batch-size 4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prunescope.analysis.evaluate import lm_eval_tasks, make_lm  # noqa: E402
from prunescope.probe.models import load_model  # noqa: E402


def mmlu_requests(subjects: int, docs: int, seed: int) -> list:
    """lm-eval's own loglikelihood Instances for ``docs`` docs of the first ``subjects`` MMLU subjects."""
    from lm_eval.api.task import ConfigurableTask

    out = []
    for config in lm_eval_tasks("mmlu", num_fewshot=5)[:subjects]:
        task = ConfigurableTask(config=dict(config))
        task.set_fewshot_seed(seed=seed)
        task.build_all_requests(limit=docs, rank=0, world_size=1)
        out += task.instances
    return out


def timed(lm, model, requests) -> tuple[list, float, int]:
    """(results, seconds, largest logits tensor in bytes) of ``lm.loglikelihood``."""
    largest = [0]

    def watch(_module, _args, output):
        largest[0] = max(largest[0], output.logits.numel() * output.logits.element_size())

    handle = model.register_forward_hook(watch)
    try:
        t0 = time.perf_counter()
        res = lm.loglikelihood(requests, disable_tqdm=True)
        return res, time.perf_counter() - t0, largest[0]
    finally:
        handle.remove()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder, .gguf, hub id or gemma3-270m (default: SmolLM2)")
    ap.add_argument("--subjects", type=int, default=4, help="MMLU subjects (default: 4)")
    ap.add_argument("--docs", type=int, default=5, help="docs per subject (4 requests each; default: 5)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch
    from lm_eval.models.huggingface import HFLM

    loaded = load_model(args.model, device=args.device, dtype="float32")
    requests = mmlu_requests(args.subjects, args.docs, args.seed)
    print(f"{loaded.name}: {len(requests)} MMLU 5-shot requests, batch {args.batch_size}, {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    stock = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=args.batch_size)
    want, t_stock, mem_stock = timed(stock, loaded.model, requests)
    ours = make_lm(loaded, batch_size=args.batch_size, show_progress=False)
    got, t_ours, mem_ours = timed(ours, loaded.model, requests)
    diff = max(abs(a - b) for (a, _), (b, _) in zip(got, want))
    same = all(g == w for (_, g), (_, w) in zip(got, want))
    n = len(requests)
    print(f"stock    {t_stock:8.1f} s  {n / t_stock:7.2f} req/s  largest logits {mem_stock / 2**20:9.1f} MiB")
    print(f"trimmed  {t_ours:8.1f} s  {n / t_ours:7.2f} req/s  largest logits {mem_ours / 2**20:9.1f} MiB")
    print(f"speed-up {t_stock / t_ours:.2f}x, logits memory / {mem_stock / max(mem_ours, 1):.0f}; "
          f"max |log-likelihood difference| {diff:.2e}, greedy flags equal: {same}")


if __name__ == "__main__":
    main()
