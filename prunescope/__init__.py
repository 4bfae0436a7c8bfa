"""prunescope: localize circuits with layer-skip probes and patching, prune decoder layers around
them, recover the pruned model with Self-Generated-Response QLoRA, and evaluate what it retains.

Every command is one function taking one options object, plus where the model comes from
(``model=`` a folder, ``.gguf``, alias or hub id; or ``loaded=`` a model already loaded), where it
runs (``placement=Placement(...)``) and where results go (``output=Output(...)``). The CLI builds
the same objects from its flags (``prunescope sweep --n 200`` is ``SweepOptions(n=200)``).

>>> import prunescope as ps
>>> ps.SweepOptions(probe="arithmetic,brackets", n=200).check().probe
['arithmetic', 'brackets']

A tour (each writes tidy CSV/JSONL tables and figures into ``out``; re-running resumes)::

    lm = ps.load_model()                                    # SmolLM2-135M-Instruct, embedded
    rows = ps.sweep(ps.SweepOptions(probe="arithmetic_multi,brackets", n=200), output=ps.Output(out="runs/s"))
    maps = ps.patch(ps.PatchOptions(probe="arithmetic", method="both"), output=ps.Output(out="runs/p"))
    scores = ps.score(ps.ScoreOptions(block_sizes=[4]), output=ps.Output(out="runs/scores"))
    plan = ps.prune(ps.PruneOptions(strategy="bi", ratio=0.25, protect=[20, 23]), output=ps.Output(out="pruned/bi25"))
    ps.generate_responses(ps.SGROptions(n=600), output=ps.Output(out="runs/sgr.jsonl"))
    ps.recover(ps.RecoveryConfig(mode="sgr", data="runs/sgr.jsonl"), model="pruned/bi25",
               output=ps.Output(out="recovered/bi25-sgr"))
    rows = ps.evaluate(ps.EvalOptions(tasks=["arc_easy", "gsm8k"], limit=50), model="pruned/bi25",
                       output=ps.Output(out="runs/eval"))
    ps.run_pipeline("experiments/demo.yaml")                # the whole study from one YAML file
    ps.report("runs/demo")                                  # report.md + self-contained report.html

On a loaded model, ``lm.blocks`` (:class:`Blocks`) is the one handle every package uses to reach a
layer: TransformerLens activation names, temporary hooks, pass-through skips.
"""

import analysis.selection  # noqa: F401  (registers the iterative-generated strategy)
from analysis.evaluate import EvalOptions, evaluate
from analysis.report import report
from circuits.run import PatchOptions, patch
from probe.blocks import Blocks
from probe.errors import PrunescopeError
from probe.models import load_model
from probe.options import Output, Placement
from probe.sweep import SweepOptions, sweep
from prune.run import PruneOptions, ScoreOptions, prune, score
from recover.sgr import SGROptions, generate_responses
from recover.train import RecoveryConfig, recover

from .pipeline import run_pipeline

__all__ = [
    "Blocks", "EvalOptions", "Output", "PatchOptions", "Placement", "PruneOptions", "PrunescopeError",
    "RecoveryConfig", "SGROptions", "ScoreOptions", "SweepOptions", "evaluate", "generate_responses", "load_model",
    "patch", "prune", "recover", "report", "run_pipeline", "score", "sweep",
]
