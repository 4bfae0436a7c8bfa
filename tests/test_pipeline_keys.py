"""A newer prunescope that adds an option keeps the finished stages of an older run folder."""

import json

from prunescope.pipeline import load_config
from prunescope.pipeline.config import SECTIONS, STAGES, Study
from prunescope.pipeline.keys import (ADDED_SINCE_HASH_MARKERS, legacy_match, option_defaults, same_settings,
                                      settings_key, stage_settings)
from prunescope.pipeline.stages import Run


def _config(tmp_path, model, recover: str = ""):
    cfg = tmp_path / "k.yaml"
    cfg.write_text(f"name: k\nout: {tmp_path / 'k'}\nmodel: {model}\n"
                   "localize: {probes: [brackets], items: 6, patch_probes: []}\nprune: {ratio: 0.25, strategies: [bi]}\n"
                   f"recover: {{modes: []{recover}}}\nevaluate: {{tasks: [arc_easy], limit: 2, probe_items: 4}}\n")
    return cfg


def _older(settings: dict) -> dict:
    """The settings as a prunescope without the options added since hash-only markers wrote them."""
    out = json.loads(json.dumps(settings))
    for section, option in ADDED_SINCE_HASH_MARKERS:
        out.get(section, {}).pop(option, None)
    return out


def test_markers_keep_their_settings_and_tolerate_options_added_at_defaults(tiny_llama_dir, tmp_path):
    from prunescope.pipeline import run_pipeline

    cfg = _config(tmp_path, tiny_llama_dir)
    run_pipeline(str(cfg), show_progress=False, only=["localize", "score", "prune"])
    run = Run(load_config(cfg), show_progress=False)
    marker = json.loads((tmp_path / "k/.stages/prune.json").read_text())
    assert marker["settings"] == run.stage_settings("prune") and marker["key"] == settings_key(marker["settings"])
    defaults = option_defaults(SECTIONS, Study)
    # a marker written by an older prunescope (its settings lack the newer options): still finished
    for stage in ("localize", "score", "prune"):
        path = tmp_path / "k/.stages" / f"{stage}.json"
        m = json.loads(path.read_text())
        path.write_text(json.dumps({**m, "settings": _older(m["settings"])}))
        assert run.done(stage)
    # ... and one that held only the hash of those settings
    path = tmp_path / "k/.stages/prune.json"
    old = _older(run.stage_settings("prune"))
    path.write_text(json.dumps({"key": settings_key(old), "seconds": 1.0}))
    assert run.done("prune") and legacy_match(settings_key(old), run.stage_settings("prune"), defaults)
    # a real change is still a change: a recovery training seed the marker never had
    seeded = Run(load_config(_config(tmp_path, tiny_llama_dir, ", train_seeds: [1, 2]")), show_progress=False)
    rec = stage_settings(seeded.cfg, "recover", STAGES)
    assert not same_settings(_older(rec), rec, defaults)
    assert not legacy_match(settings_key(_older(rec)), rec, defaults)


def test_a_rerun_keeps_the_stages_an_older_marker_finished(tiny_llama_dir, tmp_path, capsys):
    from prunescope.pipeline import run_pipeline

    cfg = _config(tmp_path, tiny_llama_dir)
    run_pipeline(str(cfg), show_progress=False, only=["localize", "score", "prune"])
    path = tmp_path / "k/.stages/prune.json"
    m = json.loads(path.read_text())
    path.write_text(json.dumps({"key": settings_key(_older(m["settings"])), "seconds": m["seconds"]}))
    plan = (tmp_path / "k/prune/bi/plan.json").stat().st_mtime_ns
    capsys.readouterr()
    run_pipeline(str(cfg), show_progress=True, only=["localize", "score", "prune"])
    assert "[prune] done earlier (cached)" in capsys.readouterr().out
    assert (tmp_path / "k/prune/bi/plan.json").stat().st_mtime_ns == plan
