"""`prunescope run`: a tiny model through every stage, killed mid-stage and resumed; config errors."""

import os
import signal
import subprocess
import sys
import time

import pytest

from analysis.pipeline import load_config, load_config_text
from probe.errors import PrunescopeError
from probe.results import read_table

CONFIG = """name: tiny
out: {out}
model: {model}
localize: {{probes: [arithmetic_multi, brackets], n: 8, patch: [arithmetic], patch_n: 4, patch_positions: 3,
           ablate_tasks: [arc_easy], ablate_limit: 3}}
score: {{n_texts: 8}}
prune: {{ratio: 0.25, strategies: [bi, reverse], protect_top: 1}}
recover: {{modes: [sgr], on: [bi], n_prompts: 16, max_new_tokens: 8, steps: 6, micro_batch: 4, eval_n: 4}}
evaluate: {{tasks: [arc_easy], limit: 3, probe_n: 8}}
"""


def _run(cfg, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "analysis.cli", "run", str(cfg), "--quiet"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _tables(out):
    keep = ("model", "probe", "condition", "metric", "value")
    return {name: sorted(tuple(r[k] for k in keep) for r in read_table(out / name))
            for name in ("probes.csv", "eval/eval.csv", "retention.csv")}


def test_pipeline_end_to_end_then_killed_and_resumed(tiny_llama_dir, tmp_path):
    ref_cfg = tmp_path / "ref.yaml"
    ref_cfg.write_text(CONFIG.format(out=tmp_path / "ref", model=tiny_llama_dir))
    p = _run(ref_cfg)
    log = p.communicate(timeout=600)[0]
    assert p.returncode == 0, log[-3000:]
    ref = tmp_path / "ref"
    for f in ("report.html", "report.md", "retention.png", "probes.png", "prune/bi/config.json",
              "recover/bi-sgr/model.safetensors", "localize/patch-arithmetic/layers.csv", "score/scores.csv"):
        assert (ref / f).is_file(), f
    ablation = read_table(ref / "localize/ablate/ablation.csv")
    assert [r["condition"] for r in ablation] == ["none", "skip:0", "skip:1", "skip:2", "skip:3"]
    assert {r["primary_metric"] for r in ablation} == {"acc_norm"} and (ref / "localize/ablate/sweep_score.png").is_file()
    stages = {r["condition"] for r in read_table(ref / "probes.csv")}
    assert stages == {"base", "pruned-bi", "pruned-reverse", "pruned-bi-protected", "recovered-bi-sgr"}
    # the protected plan keeps the top patching layer of arithmetic
    import json

    top = max(read_table(ref / "localize/patch-arithmetic/layers.csv"), key=lambda r: r["value"])
    assert int(top["layers"]) not in json.loads((ref / "prune/bi-protected/plan.json").read_text())["drop"]

    cfg = tmp_path / "kill.yaml"
    cfg.write_text(CONFIG.format(out=tmp_path / "kill", model=tiny_llama_dir))
    p = _run(cfg, start_new_session=True)
    marker = tmp_path / "kill/.stages/prune.json"  # kill while recovering (SGR generation / training)
    t0 = time.time()
    while not marker.exists() and p.poll() is None and time.time() - t0 < 300:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "kill/.stages/evaluate.json").exists()
    p = _run(cfg)
    log = p.communicate(timeout=600)[0]
    assert p.returncode == 0, log[-3000:]
    assert "[prune] done earlier (cached)" in log and "[localize] done earlier (cached)" in log
    assert _tables(tmp_path / "kill") == _tables(ref)


def test_config_errors_name_key_and_line(tmp_path):
    with pytest.raises(PrunescopeError, match=r"<config>:3: unknown key 'ratoi' under prune"):
        load_config_text("name: x\nprune:\n  ratoi: 0.2\n")
    with pytest.raises(PrunescopeError, match=r"<config>:2: 'prune.ratio' must be a number, got 'a lot'"):
        load_config_text("prune:\n  ratio: a lot\n")
    with pytest.raises(PrunescopeError, match=r"<config>:2: 'evaluate.tasks' names an unknown task 'mmul'"):
        load_config_text("evaluate:\n  tasks: [mmlu, mmul]\n")
    with pytest.raises(PrunescopeError, match=r"<config>:2: not valid YAML"):
        load_config_text("prune: {ratio: 0.2\nx: 1\n")
    with pytest.raises(PrunescopeError, match="xsum_file"):
        load_config_text("evaluate: {tasks: [xsum]}\n")
    with pytest.raises(PrunescopeError, match="recover.on"):
        load_config_text("recover: {modes: [sgr], on: [angular]}\n")
    with pytest.raises(PrunescopeError, match=r"<config>:1: 'model' is 'smollm': no such folder"):
        load_config_text("model: smollm\n")
    with pytest.raises(PrunescopeError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_cli_bad_config_exits_2_and_writes_nothing(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"out: {tmp_path / 'out'}\nlocalize:\n  probes: [arithmetic, brackts]\n")
    p = subprocess.run([sys.executable, "-m", "analysis.cli", "run", str(cfg)], capture_output=True, text=True)
    assert p.returncode == 2 and "bad.yaml:3: 'localize.probes' names an unknown probe 'brackts'" in p.stderr
    assert not (tmp_path / "out").exists()
