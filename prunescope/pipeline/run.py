"""``run_pipeline``: every stage of a config in order, each skipped when its marker says it finished
with the same settings; with ``seeds``, one run per seed and their comparison.

>>> # run_pipeline("experiments/demo.yaml")  -> runs/demo (report.html inside)
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from prunescope.core.errors import PrunescopeError
from prunescope.core.lock import run_lock
from prunescope.core.overwrite import remove_previous
from prunescope.probe.models import check_model
from prunescope.core.options import valid_device
from prunescope.core.results import atomic_write_json, atomic_write_text, read_table

from prunescope.pipeline.config import STAGE_OUTPUTS, STAGES, load_config
from prunescope.pipeline.stages import RUNNERS, Run

# what a run writes in its folder (a folder with .stages is all the run's): what --overwrite removes
RUN_OUTPUTS = (".stages", "config.yaml", "config.json", "seed-*", "seeds.*", "models.*",
               *(name for names in STAGE_OUTPUTS.values() for name in names))


def run_pipeline(config: str | Path | dict, *, show_progress: bool = True, only: list[str] | None = None,
                 device: str | None = None, out: str | Path | None = None, overwrite: bool = False) -> Path:
    """Run (or resume) every stage of a config; returns the run folder. With ``seeds``, one run per
    seed in ``OUT/seed-N`` and then their comparison (:func:`prunescope.pipeline.seeds.compare_seeds`).
    ``device`` and ``out`` override the config's: neither is part of a stage's key, so a run
    folder started on a GPU machine continues here with ``device="cpu"``. ``overwrite``: the run
    folder starts over (what a run wrote there is removed once the config and model are checked).

    >>> run_pipeline("experiments/gemma3-protect.yaml", device="cpu", out="runs/gemma3-protect")  # doctest: +SKIP
    """
    cfg = load_config(config) if not isinstance(config, dict) else config
    if device is not None:
        if not valid_device(device):
            raise PrunescopeError(f"device must be auto, cpu or cuda[:N], got {device!r}")
        cfg = {**cfg, "device": device}
    if out is not None:
        cfg = {**cfg, "out": str(out)}
    text = Path(config).read_text() if isinstance(config, (str, Path)) else None
    root = Path(cfg["out"])
    if root.exists() and not root.is_dir():
        raise PrunescopeError(f"the run folder {root} is a file; give 'out' (or --out) a folder path")
    # the model is the one input the config check cannot see into: read its config before writing anything
    check_model(None if cfg["model"] == "default" else cfg["model"])
    with run_lock(root, "pipeline run"):
        if overwrite:
            remove_previous(root, RUN_OUTPUTS, marker=".stages")
        if not cfg.get("seeds"):
            return _run_one(cfg, text, show_progress, only)
        _write_config(root, cfg, text)
        for seed in cfg["seeds"]:
            print(f"=== seed {seed} ===")
            # the seed draws what selects the layers; every seed's models are evaluated on the same
            # items and few-shot examples (eval_seed), so arms and seeds compare paired, and a model
            # another seed already built (the same dropped layers) reuses its scores (study)
            _run_one({**copy.deepcopy(cfg), "seed": seed, "seeds": [], "out": str(root / f"seed-{seed}"),
                      "eval_seed": cfg["seed"], "study": str(root)}, text, show_progress, only)
        if only is None or "report" in only:
            from prunescope.pipeline.seeds import compare_seeds

            md = compare_seeds(root, cfg["seeds"])
            print(f"[seeds] compared {len(cfg['seeds'])} seeds: {md}")
        return root


def _write_config(out: Path, cfg: dict, text: str | None) -> None:
    """The config as written (``config.yaml``) and as resolved (``config.json``) in a run folder."""
    out.mkdir(parents=True, exist_ok=True)
    if text is not None:
        atomic_write_text(out / "config.yaml", text)
    atomic_write_json(out / "config.json", cfg)


def _run_one(cfg: dict, text: str | None, show_progress: bool, only: list[str] | None) -> Path:
    run = Run(cfg, show_progress)
    _write_config(run.out, cfg, text)
    t_all = time.perf_counter()
    for stage in STAGES:
        if only and stage not in only:
            continue
        if run.done(stage):
            print(f"[{stage}] done earlier (cached)")
            continue
        print(f"[{stage}]")
        run.clear_if_changed(stage)
        t0 = time.perf_counter()
        RUNNERS[stage](run)
        run.mark(stage, round(time.perf_counter() - t0, 2))
        print(f"[{stage}] {time.perf_counter() - t0:.1f} s")
    print(f"run folder {run.out} ({time.perf_counter() - t_all:.0f} s this call)")
    return run.out


def retention_summary(run_dir: str | Path) -> str:
    """A short plain-text retention table of a finished run (for the terminal)."""
    path = Path(run_dir) / "retention.csv"
    if not path.is_file():
        return ""
    rows = [r for r in read_table(path) if r.get("level") in ("category", "gap")]
    kind = {"retention": "raw", "chance_corrected_retention": "chance-corrected"}
    return "\n".join(f"  {r['condition']:28s} {r['probe']:15s} {kind.get(r.get('metric'), 'raw'):17s} "
                     f"{float(r['value']):.3f}" for r in rows)
