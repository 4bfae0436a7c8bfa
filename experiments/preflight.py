"""CPU pre-flight of pipeline configs before a GPU run.

Each config is shrunk (a tiny random 8-layer Llama on the CPU; a few items per probe, task and
patching map; a tiny recovery budget; two seeds) and run end to end with ``prunescope run``. Every
stage and option the config uses then runs once, in minutes. A config error, a missing data file
or a stage that fails on some combination of options shows up here and not 20 minutes into a GPU
run. The scores mean nothing (random weights). On 2 CPU cores each of the four Qwen configs takes
2-16 minutes.

    python experiments/preflight.py experiments/qwen-*.yaml --out /tmp/preflight

``--moved`` runs each config as a run folder moved to another machine without its weights
resumes: first up to the prune stage, then, with what ``experiments/pack_run.sh`` leaves out
removed (weights, recovery checkpoints, tokenizer copies), to the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prunescope.core.errors import PrunescopeError  # noqa: E402
from prunescope.probe.tiny import save_tiny_model  # noqa: E402
from prunescope.pipeline.config import load_config  # noqa: E402

TINY_LAYERS = 8


def shrink(cfg: dict, model: str) -> dict:
    """A validated config (``load_config``) at pre-flight size, on ``model``, on the CPU in fp32; its
    run folder is left to ``prunescope run --out`` (never the real config's).

    >>> c = shrink(load_config("experiments/demo.yaml"), "/tmp/tiny")                   # doctest: +SKIP
    >>> c["device"], c["evaluate"]["limit"]                                             # doctest: +SKIP
    ('cpu', 4)
    """
    c = json.loads(json.dumps(cfg))  # a deep copy of plain data
    c.update(model=model, device="cpu", dtype="float32", name=f"{c.get('name') or 'run'}-preflight", out=None)
    loc = c["localize"]
    loc.update(items=8, pairs=4, ablate_limit=2, ablate_every=TINY_LAYERS // 2)
    prune = c["prune"]
    prune["select_docs"] = 2
    if prune.get("protect_top"):
        prune["protect_top"] = 1  # two maps' top-4 union would protect most of 8 layers
    rec = c["recover"]
    rec.update(max_prompts=24, max_new_tokens=16, max_seq_len=512)
    if rec.get("budgets"):  # the dose ladder at tiny size, in the same ratios (the largest 2,000 tokens)
        scale = 2000 / max(rec["budgets"])
        tiny = {b: max(20, round(b * scale)) for b in rec["budgets"]}
        rec["budgets"] = [tiny[b] for b in rec["budgets"]]
        rec["seeded_budgets"] = [tiny[b] for b in rec.get("seeded_budgets") or []]
    else:
        rec["token_budget"] = 2000
    # fixed layer sets: as many layers, within the tiny model's (their numbers mean nothing there)
    prune["layers"] = {name: list(range(1, 1 + min(len(layers), TINY_LAYERS - 2)))
                       for name, layers in (prune.get("layers") or {}).items()}
    ev = c["evaluate"]
    ev.update(limit=4, probe_items=8, slots=8, batch_size=8)
    ev["limits"] = {k: 3 for k in ev.get("limits") or {}}
    if len(c.get("seeds") or []) > 2:
        c["seeds"] = c["seeds"][:2]
    return c


# what experiments/pack_run.sh leaves out of a run folder (the same list: keep the two alike)
MOVED_WITHOUT = ("*.safetensors", "*.bin", "*.gguf", "tokenizer.json", "*.pt", "checkpoints")


def strip_as_moved(run: Path) -> int:
    """Remove from a run folder what moving it without its weights leaves out (``MOVED_WITHOUT``);
    the number of paths removed."""
    gone = [p for pattern in MOVED_WITHOUT for p in run.rglob(pattern)]
    for p in gone:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    return len(gone)


def _run(small: Path, out: Path, log, timeout: int, only: str | None = None) -> int | str:
    cmd = [sys.executable, "-m", "prunescope", "run", str(small), "--out", str(out), "--quiet"]
    try:
        return subprocess.run(cmd + (["--only", only] if only else []), stdout=log, stderr=subprocess.STDOUT,
                              timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        return "timeout"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="+", help="pipeline configs (YAML)")
    ap.add_argument("--out", default="/tmp/prunescope-preflight", help="shrunk configs, the tiny model and the runs")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per config")
    ap.add_argument("--moved", action="store_true",
                    help="run up to prune, remove what experiments/pack_run.sh leaves out (weights, checkpoints), "
                         "then run to the end")
    args = ap.parse_args()
    import yaml

    out = Path(args.out)
    try:  # validate every config before anything runs or is written
        cfgs = [(Path(p), load_config(p)) for p in args.configs]
    except PrunescopeError as e:
        print(f"preflight: error: {e}", file=sys.stderr)
        return 2
    model = out / "tiny-llama"
    if not (model / "config.json").is_file():
        # 4096 positions: GSM8K's 8-shot prompts and 256-token answers fit
        save_tiny_model("llama", model, n_layers=TINY_LAYERS, max_positions=4096)
    failed = []
    for path, cfg in cfgs:
        small = out / f"{path.stem}.yaml"
        small.write_text(yaml.safe_dump(shrink(cfg, str(model)), sort_keys=False))
        log = out / f"{path.stem}.log"
        t = time.perf_counter()
        run = out / "runs" / path.stem
        with open(log, "w") as f:
            rc = _run(small, run, f, args.timeout, only="localize,score,prune" if args.moved else None)
            if args.moved and rc == 0:
                print(f"preflight: removed {strip_as_moved(run)} paths as pack_run.sh leaves them out", file=f, flush=True)
                rc = _run(small, run, f, args.timeout)
        last = log.read_text().strip().splitlines()[-1:] or [""]
        print(f"{path}: {'ok' if rc == 0 else f'FAILED ({rc})'} in {time.perf_counter() - t:.0f} s; "
              f"log {log}{'' if rc == 0 else ': ' + last[0]}", flush=True)
        if rc != 0:
            failed.append(str(path))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
