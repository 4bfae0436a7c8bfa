"""``prunescope run CONFIG.yaml``: localize -> score -> prune -> recover -> evaluate -> report.

One YAML file describes a whole study (:mod:`.config`, reference in ``docs/pipeline.md``); every
stage (:mod:`.stages`) writes into ``OUT/`` (default ``runs/<name>``) and records
``OUT/.stages/<stage>.json`` when it is complete, so a rerun skips finished stages and resumes an
interrupted one (sweeps, patching, SGR generation and training resume inside a stage too). The
config is checked completely — keys, types, names, files — before any work starts; a mistake
names the key and its line. ``seeds: [0, 1, 2]`` runs the whole study once per seed into
``OUT/seed-N/`` and then compares the seeds (:mod:`.seeds`).

    name: demo
    model: default            # base model: default, a folder or a .gguf file
    localize: {probes: [arithmetic_multi, brackets, copy], items: 40, patch_probes: [arithmetic]}
    prune:    {ratio: 0.25, strategies: [bi, reverse], protect_top: 4}
    recover:  {modes: [sgr], on: [bi], max_prompts: 64, token_budget: 4000}
    evaluate: {tasks: [arc_easy, gsm8k, humaneval], limit: 20}

>>> cfg = load_config_text("name: t\\nprune: {ratio: [0.25, 0.125]}\\n")
>>> list(pruned_names(cfg))
['bi-25', 'bi-12.5']
"""

from prunescope.pipeline.config import SECTIONS, STAGE_OUTPUTS, STAGES, Study, load_config, load_config_text, pruned_names
from prunescope.pipeline.run import retention_summary, run_pipeline
from prunescope.pipeline.seeds import compare_finished_seeds, compare_seeds
from prunescope.pipeline.stages import RUNNERS, Run, ablate

__all__ = ["SECTIONS", "STAGES", "STAGE_OUTPUTS", "RUNNERS", "Run", "Study", "ablate", "compare_finished_seeds",
           "compare_seeds", "load_config", "load_config_text", "pruned_names", "retention_summary", "run_pipeline"]
