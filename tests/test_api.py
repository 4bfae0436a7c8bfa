"""The import root: `import prunescope` shows the API; every command takes one options object (a
flat keyword call is refused)."""

import pydoc
import subprocess
import sys

import pytest

import prunescope as ps


def test_help_shows_the_api():
    text = pydoc.render_doc(ps, renderer=pydoc.plaintext)
    for name in ("load_model", "Blocks", "sweep", "patch", "score", "prune_model", "generate_responses", "recover_model",
                 "evaluate", "run_pipeline", "report", "SweepOptions", "Placement", "Output"):
        assert name in ps.__all__ and name in text


def test_python_m_prunescope_is_the_cli():
    p = subprocess.run([sys.executable, "-m", "prunescope", "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "sweep" in p.stdout and "run" in p.stdout


def test_a_command_gives_the_same_rows_with_or_without_its_default_options(tiny_llama_dir):
    lm = ps.load_model(tiny_llama_dir)
    quiet = ps.Output(progress=False)
    new = ps.sweep(ps.SweepOptions(probes="arithmetic", items=6), loaded=lm, output=quiet)
    again = ps.sweep(ps.SweepOptions(probes="arithmetic", items=6), loaded=lm, output=quiet)
    assert new == again
    plan = ps.prune_model(ps.PruneOptions(strategy="reverse", drop=1), loaded=lm, output=quiet)
    assert ps.prune_model(ps.PruneOptions(strategy="reverse", drop=1), loaded=lm).drop == plan.drop
    assert ps.RecoverOptions(rank=8).rank == 8
    with pytest.raises(TypeError):
        ps.RecoverOptions(r=8)  # the field is rank
    with pytest.raises(TypeError):
        ps.sweep(None, "arithmetic", 6, loaded=lm)  # a flat call is refused
    old_scores = ps.score(ps.ScoreOptions(texts=8, block_sizes=[2]), loaded=lm, output=quiet)
    new_scores = ps.score(ps.ScoreOptions(texts=8, block_sizes=[2]), loaded=lm, output=ps.Output(progress=False))
    assert new_scores == old_scores and {r["metric"] for r in new_scores} == {"block_influence", "angular_distance_n2"}


def test_an_option_is_checked_wherever_it_comes_from(tiny_llama_dir):
    with pytest.raises(ps.PrunescopeError, match="items must be a positive integer, got 0"):
        ps.SweepOptions(items=0).check()
    with pytest.raises(ps.PrunescopeError, match="ops names an unknown operator '%'"):
        ps.SweepOptions(ops="+,%").check()
    with pytest.raises(ps.PrunescopeError, match="select_tasks names an unknown task 'gsm9k'"):
        ps.PruneOptions(select_tasks=["gsm9k"]).check()
    with pytest.raises(TypeError):
        ps.SweepOptions(n=5)  # the field is items: one name per setting, no old spellings
    with pytest.raises(ps.PrunescopeError, match="method names an unknown patching method 'guess'"):
        ps.PatchOptions(method="guess").check()
    with pytest.raises(ps.PrunescopeError, match="strategy names an unknown strategy 'bii'"):
        ps.prune_model(ps.PruneOptions(strategy="bii"), model=str(tiny_llama_dir))


def test_a_sweep_option_reaches_the_item_generators(tiny_llama_dir, tmp_path):
    """--length: one field of SweepOptions is a CLI flag, a check and a generator argument."""
    from prunescope.cli import main

    assert main(["sweep", "--model", str(tiny_llama_dir), "--probes", "copy", "--length", "3", "--items", "4",
                 "--out", str(tmp_path), "--quiet", "--no-plot"]) == 0
    import json

    first = json.loads((tmp_path / "items" / "copy.jsonl").read_text().splitlines()[0])
    assert first["prompt"].split(". Again:")[0].count(",") == 2   # three words in the list
    with pytest.raises(ps.PrunescopeError, match="length must be at least 2"):
        ps.SweepOptions(length=1).check()
