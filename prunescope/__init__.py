"""prunescope: localize circuits with layer-skip probes and patching, prune decoder layers around
them, recover the pruned model with Self-Generated-Response QLoRA, and evaluate what it retains.

Every command is one function taking one options object, plus where the model comes from
(``model=`` a folder, ``.gguf``, alias or hub id; or ``loaded=`` a model already loaded), where it
runs (``placement=Placement(...)``) and where results go (``output=Output(...)``). The CLI builds
the same objects from its flags (``prunescope sweep --items 200`` is ``SweepOptions(items=200)``).

>>> import prunescope as ps
>>> ps.SweepOptions(probes="arithmetic,brackets", items=200).check().probes
['arithmetic', 'brackets']

A tour (each writes tidy CSV/JSONL tables and figures into ``out``; re-running resumes)::

    lm = ps.load_model()                                    # SmolLM2-135M-Instruct, embedded
    rows = ps.sweep(ps.SweepOptions(probes="arithmetic_multi,brackets", items=200), output=ps.Output(out="runs/s"))
    maps = ps.patch(ps.PatchOptions(probe="arithmetic", method="both"), output=ps.Output(out="runs/p"))
    scores = ps.score(ps.ScoreOptions(block_sizes=[4]), output=ps.Output(out="runs/scores"))
    plan = ps.prune_model(ps.PruneOptions(strategy="bi", ratio=0.25, protect=[20, 23]), output=ps.Output(out="pruned/bi25"))
    ps.generate_responses(ps.SGROptions(max_prompts=600), output=ps.Output(out="runs/sgr.jsonl"))
    ps.recover_model(ps.RecoverOptions(mode="sgr", data="runs/sgr.jsonl"), model="pruned/bi25",
                     output=ps.Output(out="recovered/bi25-sgr"))
    rows = ps.evaluate(ps.EvalOptions(tasks=["arc_easy", "gsm8k"], limit=50), model="pruned/bi25",
                       output=ps.Output(out="runs/eval"))
    ps.run_pipeline("experiments/demo.yaml")                # the whole study from one YAML file
    ps.report("runs/demo")                                  # report.md + self-contained report.html

On a loaded model, ``lm.blocks`` (:class:`Blocks`) is the one handle every package uses to reach a
layer: TransformerLens activation names, temporary hooks, pass-through skips.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# the public API, imported on first use: ``import prunescope.probe.blocks`` (or the CLI's --help)
# does not load lm-eval, peft and the pipeline
_API = {
    "Blocks": "prunescope.probe.blocks", "PrunescopeError": "prunescope.core.errors",
    "load_model": "prunescope.probe.models", "Output": "prunescope.core.options",
    "Placement": "prunescope.core.options", "SweepOptions": "prunescope.probe.sweep", "sweep": "prunescope.probe.sweep",
    "PatchOptions": "prunescope.circuits.commands", "patch": "prunescope.circuits.commands",
    "PruneOptions": "prunescope.prune.commands", "ScoreOptions": "prunescope.prune.commands", "prune_model": "prunescope.prune.commands",
    "score": "prunescope.prune.commands", "SGROptions": "prunescope.recover.sgr",
    "generate_responses": "prunescope.recover.sgr", "RecoverOptions": "prunescope.recover.train",
    "recover_model": "prunescope.recover.train", "EvalOptions": "prunescope.analysis.evaluate",
    "evaluate": "prunescope.analysis.evaluate", "report": "prunescope.analysis.report",
    "run_pipeline": "prunescope.pipeline",
}
__all__ = sorted(_API)

if TYPE_CHECKING:
    from prunescope.analysis.evaluate import EvalOptions, evaluate
    from prunescope.analysis.report import report
    from prunescope.circuits.commands import PatchOptions, patch
    from prunescope.core.errors import PrunescopeError
    from prunescope.core.options import Output, Placement
    from prunescope.pipeline import run_pipeline
    from prunescope.probe.blocks import Blocks
    from prunescope.probe.models import load_model
    from prunescope.probe.sweep import SweepOptions, sweep
    from prunescope.prune.commands import PruneOptions, ScoreOptions, prune_model, score
    from prunescope.recover.sgr import SGROptions, generate_responses
    from prunescope.recover.train import RecoverOptions, recover_model


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'prunescope' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
