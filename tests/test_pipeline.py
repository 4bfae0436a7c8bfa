"""`prunescope run`: a tiny model through every stage, killed mid-stage and resumed; config errors."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prunescope.pipeline import load_config, load_config_text
from prunescope.core.errors import PrunescopeError
from prunescope.core.results import read_table

CONFIG = """name: tiny
out: {out}
model: {model}
localize: {{probes: [arithmetic_multi, brackets], items: 8, patch_probes: [arithmetic], pairs: 4, positions: 3,
           ablate_tasks: [arc_easy], ablate_limit: 3}}
score: {{texts: 8}}
prune: {{ratio: 0.25, strategies: [bi, reverse], protect_top: 1}}
recover: {{modes: [sgr], on: [bi], max_prompts: 16, max_new_tokens: 8, steps: 6, micro_batch: 4, heldout: 4}}
evaluate: {{tasks: [arc_easy], limit: 3, probe_items: 8}}
"""


def _run(cfg, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "prunescope", "run", str(cfg), "--quiet"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _run_ok(cfg, timeout=600) -> str:
    """Run a config to the end; its output (the run must succeed)."""
    p = _run(cfg)
    log = p.communicate(timeout=timeout)[0]
    assert p.returncode == 0, log[-3000:]
    return log


def _tables(out):
    keep = ("model", "probe", "condition", "metric", "value")
    return {name: sorted(tuple(r[k] for k in keep) for r in read_table(out / name))
            for name in ("probes.csv", "eval/eval.csv", "retention.csv")}


def test_pipeline_end_to_end_then_killed_and_resumed(tiny_llama_dir, tmp_path, monkeypatch):
    ref_cfg = tmp_path / "ref.yaml"
    ref_cfg.write_text(CONFIG.format(out=tmp_path / "ref", model=tiny_llama_dir))
    _run_ok(ref_cfg)
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
    log = _run_ok(cfg)
    assert "[prune] done earlier (cached)" in log and "[localize] done earlier (cached)" in log
    assert _tables(tmp_path / "kill") == _tables(ref)

    # an evaluation resumed after its stage marker is lost: every stage's tasks and probes come
    # from the run folder; nothing is scored again
    from prunescope.pipeline import stages as pipeline
    from prunescope.probe import scoring as probe_scoring

    calls = []
    real = probe_scoring.probe_scores
    monkeypatch.setattr(probe_scoring, "probe_scores", lambda *a, **k: calls.append(a) or real(*a, **k))
    pipeline._evaluate(pipeline.Run({**load_config(cfg), "out": str(tmp_path / "kill")}, show_progress=False))
    assert calls == [] and _tables(tmp_path / "kill") == _tables(ref)
    assert json.loads((tmp_path / "kill/eval/pruned-bi/probes.json").read_text())["settings"]["n"] > 0

    # the same, with the run folder moved elsewhere and the pruned weights left behind: finished
    # stages are read back without rebuilding or loading any stage's checkpoint
    import shutil

    from prunescope.probe import models

    moved = tmp_path / "elsewhere" / "kill"
    shutil.copytree(tmp_path / "kill", moved)
    for f in moved.glob("prune/*/*.safetensors"):
        f.unlink()
    loads = []
    real_load = models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    pipeline._evaluate(pipeline.Run({**load_config(cfg), "out": str(moved)}, show_progress=False))
    assert calls == [] and _tables(moved) == _tables(ref)
    assert not any(str(moved) in str(a) for a in loads) and not list(moved.glob("prune/*/*.safetensors"))


def test_config_errors_name_key_and_line(tmp_path):
    with pytest.raises(PrunescopeError, match=r"<config>:3: unknown key 'ratoi' under prune"):
        load_config_text("name: x\nprune:\n  ratoi: 0.2\n")
    with pytest.raises(PrunescopeError, match=r"<config>:2: 'prune.ratio' must be a number or a list of numbers, got 'a lot'"):
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


def test_config_key_with_a_flags_name_means_that_flag():
    """One meaning per name across the CLI and the config: a key spelled like a flag (underscores
    for dashes) is that flag's setting (the pipeline called one count n, patch_n, n_prompts,
    probe_n and select_n, and recover.batch_size was not evaluate.batch_size)."""
    from dataclasses import fields

    from prunescope.cli import COMMANDS
    from prunescope.core.options import Output, Placement
    from prunescope.docs import flag_meanings, meaning
    from prunescope.pipeline.config import SECTIONS, Study

    owners = {cls.__name__: cls for cls in [*(c.options_class() for c in COMMANDS.values() if c.options),
                                            Placement, Output]}
    flags, seen = flag_meanings(), {}
    for section, cls in {"top level": Study, **SECTIONS}.items():
        for f in fields(cls):
            owner, _, name = (f.metadata.get("source") or "").partition(".")
            source = next((g for g in fields(owners[owner]) if g.name == name), f) if owner else f
            text = meaning(source.metadata["help"])
            assert seen.setdefault(f.name, text) == text, f"{section}.{f.name} means two things"
            flag = "--" + f.name.replace("_", "-")
            if flag in flags:
                assert list(flags[flag]) == [text], f"{section}.{f.name} is not {flag}"
    for old in ("n", "patch_n", "n_prompts", "probe_n", "select_n", "eval_n", "fewshot", "gen_batch_size"):
        assert old not in seen


def test_run_overwrite_starts_the_run_folder_over_after_the_config_check(tiny_llama_dir, tmp_path, capsys):
    from prunescope.cli import main

    out = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    text = f"name: c\nout: {out}\nmodel: {tiny_llama_dir}\nlocalize: {{probes: [copy], items: 4, patch_probes: []}}\n"
    cfg.write_text(text)
    assert main(["run", str(cfg), "--only", "localize", "--quiet"]) == 0
    (out / "report.md").write_text("an earlier report")
    cfg.write_text(text + "prune: {ratoi: 0.2}\n")
    assert main(["run", str(cfg), "--only", "localize", "--quiet", "--overwrite"]) == 2   # bad config: nothing goes
    assert (out / "report.md").is_file() and (out / ".stages" / "localize.json").is_file()
    cfg.write_text(text)
    capsys.readouterr()
    assert main(["run", str(cfg), "--only", "localize", "--quiet", "--overwrite"]) == 0
    assert "done earlier" not in capsys.readouterr().out          # the stage ran again
    assert not (out / "report.md").exists() and (out / ".stages" / "localize.json").is_file()


def test_cli_bad_config_exits_2_and_writes_nothing(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"out: {tmp_path / 'out'}\nlocalize:\n  probes: [arithmetic, brackts]\n")
    p = subprocess.run([sys.executable, "-m", "prunescope", "run", str(cfg)], capture_output=True, text=True)
    assert p.returncode == 2 and "bad.yaml:3: 'localize.probes' names an unknown probe 'brackts'" in p.stderr
    assert not (tmp_path / "out").exists()


def test_cli_run_overrides_device_and_out(tiny_llama_dir, tmp_path):
    """A GPU config (device: cuda) continues on this CPU machine with --device cpu, into --out."""
    import json

    cfg = tmp_path / "gpu.yaml"
    cfg.write_text(f"name: gpu\nmodel: {tiny_llama_dir}\ndevice: cuda\nout: {tmp_path / 'there'}\n"
                   "localize: {probes: [copy], items: 4}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "prunescope", "run", str(cfg), "--only", "localize", "--quiet"]
    p = subprocess.run([*cmd, "--device", "cpu", "--out", str(tmp_path / "here")], capture_output=True, text=True,
                       env=env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    saved = json.loads((tmp_path / "here" / "config.json").read_text())
    assert (saved["device"], saved["out"]) == ("cpu", str(tmp_path / "here"))
    assert (tmp_path / "here" / ".stages" / "localize.json").is_file() and not (tmp_path / "there").exists()
    p = subprocess.run([*cmd, "--device", "tpu"], capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "cpu or cuda[:N], got 'tpu'" in p.stderr


SEEDS_CONFIG = """name: seeds
out: {out}
model: {model}
seeds: [0, 1]
localize: {{probes: [arithmetic_multi], items: 8, patch_probes: [arithmetic, brackets], pairs: 4, positions: 3,
           method: attribution, kinds: [resid_post], ablate_tasks: [arithmetic], ablate_limit: 4}}
score: {{texts: 8}}
prune: {{ratio: [0.25, 0.5], strategies: [bi, reverse, skip-drop], protect_top: 1,
         protect_patched: [arithmetic, brackets]}}
evaluate: {{tasks: [arc_easy], limit: 6, probe_items: 8}}
"""


def test_pipeline_seeds_ratios_union_protection_and_ablation_signatures(tiny_llama_dir, tmp_path):
    import json

    cfg = tmp_path / "seeds.yaml"
    cfg.write_text(SEEDS_CONFIG.format(out=tmp_path / "out", model=tiny_llama_dir))
    log = _run_ok(cfg, timeout=900)
    root = tmp_path / "out"
    names = ["bi-25", "bi-50", "reverse-25", "reverse-50", "skip-drop-25", "skip-drop-50", "bi-protected-25",
             "bi-protected-50"]
    for seed in (0, 1):
        run = root / f"seed-{seed}"
        assert json.loads((run / "config.json").read_text())["seed"] == seed
        assert {r["condition"] for r in read_table(run / "probes.csv")} == {"base", *(f"pruned-{n}" for n in names)}
        for n in names:  # 4 layers: 25% drops 1, 50% drops 2
            assert len(json.loads((run / "prune" / n / "plan.json").read_text())["drop"]) == (1 if n.endswith("25") else 2)
        # protection is the union of both patching maps' top layer
        tops = {int(max(read_table(run / f"localize/patch-{p}/layers.csv"), key=lambda r: r["value"])["layers"])
                for p in ("arithmetic", "brackets")}
        plan = json.loads((run / "prune/bi-protected-50/plan.json").read_text())
        assert set(plan["protected"]) == tops and not tops & set(plan["drop"])
        # benchmark ablation: a score per condition (4 layers + none), and the failure signatures of the
        # generated answers where they are defined (Rep-4 needs 4+ words), tagged with their layer
        abl = read_table(run / "localize/ablate/ablation.csv")
        assert [r["condition"] for r in abl] == ["none", "skip:0", "skip:1", "skip:2", "skip:3"]
        sig_file = run / "localize/ablate/signatures.csv"
        for r in read_table(sig_file) if sig_file.is_file() else []:
            assert r["probe"] == "arithmetic" and r["layers"] == ("" if r["condition"] == "none" else r["condition"][5:])
    rows = read_table(root / "seeds.csv")
    per_seed = [r for r in rows if r["level"] == "seed" and r["probe"] == "classification"
                and r["metric"] == "retention"]
    assert len(per_seed) == 2 * 9
    # every seed is evaluated on the same items: a model seed 1 shares with seed 0 (the base, reverse
    # order) is not evaluated again, its scores are seed 0's under seed 1's stage name
    for stage in ("base", "pruned-reverse-25"):
        ours, theirs = (read_table(root / f"seed-{s}" / "eval" / stage / "eval.csv") for s in (1, 0))
        assert [(r["probe"], r["metric"], r["value"]) for r in ours] == \
            [(r["probe"], r["metric"], r["value"]) for r in theirs] and {r["condition"] for r in ours} == {stage}
        assert f"{stage}: the same model as seed-0's {stage}; its scores are reused" in log
    skip = json.loads((root / "seed-0/prune/skip-drop-25/plan.json").read_text())
    assert skip["strategy"] == "skip-drop" and len(skip["drop"]) == 1
    mean = {r["condition"]: r for r in rows if r["level"] == "mean" and r["probe"] == "classification"
            and r["metric"] == "retention"}
    for stage, r in mean.items():
        vals = [float(x["value"]) for x in per_seed if x["condition"] == stage]
        assert abs(float(r["value"]) - sum(vals) / 2) < 1e-9
    diffs = [r for r in rows if r["level"] == "difference"]
    assert {r["reference"] for r in diffs} <= {"pruned-bi-25", "pruned-bi-50"}
    assert all(r["condition"].endswith(r["reference"].rsplit("-", 1)[1]) for r in diffs)
    assert (root / "seeds.png").is_file() and "Dropped layers per seed" in (root / "seeds.md").read_text()
    # every pruned stage lists its dropped layers per seed, also where generative retention is undefined
    dropped = (root / "seeds.md").read_text().split("Dropped layers per seed:")[1]
    plan = json.loads((root / "seed-0/prune/bi-25/plan.json").read_text())
    assert f"| pruned-bi-25 | {' '.join(map(str, plan['drop']))}" in dropped
    # seed 1 stopped during its evaluation: `prunescope report ROOT` compares the finished seed only
    (root / "seed-1" / ".stages" / "evaluate.json").unlink()
    p = subprocess.run([sys.executable, "-m", "prunescope", "report", str(root)], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0 and "left out, not finished: seed [1]" in p.stdout, p.stderr[-2000:]
    text = (root / "seeds.md").read_text()
    assert text.startswith("Seeds 0.") and "Left out: seed 1 (evaluation not finished" in text
    base = next(r for r in read_table(root / "seed-0" / "eval" / "eval.csv")
                if r["condition"] == "base" and str(r["primary"]) == "True")
    scores = text.split("Scores per stage (mean ± sd over the seeds):")[1]
    assert f"| base | {float(base['value']):.3f} ± 0.000 |" in scores


def test_compare_seeds_paired_difference(tmp_path):
    """Two seeds of hand-made runs: retention rows, paired differences to BI and their mean are exact."""
    import json

    from prunescope.analysis.retention import bootstrap_retention, item_scores, retention_table
    from prunescope.pipeline.seeds import compare_seeds
    from prunescope.core.results import write_table

    docs = {"base": [1, 1, 1, 1], "pruned-bi": [1, 0, 0, 0], "pruned-bi-protected": [1, 1, 0, 0]}
    for seed in (0, 1):
        run = tmp_path / f"seed-{seed}"
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"prune": {"strategies": ["bi"], "ratio": [0.25], "protect_top": 2}}))
        rows = []
        for stage, scores in docs.items():
            scores = scores if seed == 0 else [1, 1, 1, 1] if stage != "pruned-bi" else [1, 1, 0, 0]
            (run / "eval" / stage / "samples").mkdir(parents=True)
            for task, cat in (("arithmetic", "generative"), ("arc_easy", "classification")):
                (run / "eval" / stage / "samples" / f"{task}.jsonl").write_text(
                    "".join(json.dumps({"doc_id": i, "scores": {"exact_match": s, "acc": s}}) + "\n"
                            for i, s in enumerate(scores)))
                rows.append({"model": "m", "probe": task, "condition": stage, "metric":
                             "exact_match" if cat == "generative" else "acc", "value": sum(scores) / 4,
                             "category": cat, "n": 4})
            (run / "prune" / stage.removeprefix("pruned-")).mkdir(parents=True)
            (run / "prune" / stage.removeprefix("pruned-") / "plan.json").write_text(
                json.dumps({"drop": [seed, 3], "protected": [2] if "protected" in stage else []}))
        table = retention_table(rows)
        items = item_scores(run, {(r["condition"], r["probe"]): r["score_metric"] for r in table if r["level"] == "task"})
        write_table(bootstrap_retention(table, items), run / "retention")
    md = compare_seeds(tmp_path, [0, 1], n_boot=200)
    rows = read_table(tmp_path / "seeds.csv")
    diff = {(r["seed"], r["probe"]): r for r in rows if r["level"] == "difference"}
    # seed 0: protected keeps 2/4 vs BI 1/4 -> +0.25; seed 1: 4/4 vs 2/4 -> +0.5
    assert float(diff[(0, "generative")]["value"]) == pytest.approx(0.25)
    assert float(diff[(1, "generative")]["value"]) == pytest.approx(0.5)
    assert float(diff[(1, "generative")]["ci_low"]) >= 0.0
    mean = next(r for r in rows if r["level"] == "mean" and r["metric"] == "retention_minus_reference"
                and r["probe"] == "generative")
    assert float(mean["value"]) == pytest.approx(0.375) and float(mean["sd"]) == pytest.approx(0.1767767, abs=1e-6)
    text = md.read_text()
    assert "| pruned-bi-protected | pruned-bi | generative | 0.375 ± 0.177 |" in text
    assert "| pruned-bi-protected | 0 3 (protected 2) | 1 3 (protected 2) |" in text
    # over distinct models (each arm built two): protected (2/4, 4/4) vs BI (1/4, 2/4) -> +0.375 raw;
    # chance-corrected on ARC-Easy (chance 0.25): (1/3 + 1) / 2 - (0 + 1/3) / 2 = +0.5
    across = {(r["probe"], r["metric"]): r for r in read_table(tmp_path / "models.csv")}
    assert float(across[("generative", "retention_minus_reference")]["value"]) == pytest.approx(0.375)
    assert float(across[("classification", "chance_corrected_retention_minus_reference")]["value"]) == \
        pytest.approx(0.5)
    assert int(across[("generative", "retention_minus_reference")]["n"]) == 2
    assert "| pruned-bi | 2 of 2 seeds | 0 3 (0); 1 3 (1) |" in text


def test_run_folder_moves_between_machines(tiny_llama_dir, tmp_path):
    """A run made on a GPU machine and copied without its weights continues on a CPU one: where it ran
    is not part of a stage's key, and a pruned checkpoint is rebuilt from plan.json, identical."""
    import torch

    from prunescope.pipeline.stages import Run, _ensure_checkpoint
    from prunescope.probe.models import load_model
    from prunescope.core.options import Output
    from prunescope.prune.commands import PruneOptions, prune_model

    text = f"name: m\nmodel: {tiny_llama_dir}\nprune: {{ratio: 0.5}}\n"
    cfg = {**load_config_text(text), "out": str(tmp_path)}
    moved = {**load_config_text(text + "device: cuda\nevaluate: {batch_size: 64, slots: 128}\n"),
             "out": str(tmp_path / "elsewhere")}
    other = {**load_config_text(text.replace("0.5", "0.25")), "out": str(tmp_path)}
    assert all(Run(cfg).stage_key(s) == Run(moved).stage_key(s) for s in ("localize", "prune", "evaluate"))
    assert Run(cfg).stage_key("prune") != Run(other).stage_key("prune")

    run = Run(cfg, show_progress=False)
    folder = tmp_path / "prune" / "bi"
    prune_model(PruneOptions(strategy="bi", ratio=0.5), loaded=run.base,
                output=Output(out=str(folder), progress=False, overwrite=True))
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    want = load_model(folder).model(ids).logits
    for f in folder.glob("*.safetensors"):
        f.unlink()
    _ensure_checkpoint(run, folder)
    assert torch.allclose(load_model(folder).model(ids).logits, want, atol=1e-6)
    (folder / "plan.json").unlink()
    for f in folder.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(PrunescopeError, match="no model weights and no plan.json"):
        _ensure_checkpoint(run, folder)


def test_every_experiment_config_is_valid():
    """Each study in experiments/ loads and validates (names, keys, cross-section rules such as the
    held-out docs of iterative-generated), without loading any model."""
    from pathlib import Path

    from prunescope.pipeline import load_config, pruned_names

    files = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml"))
    assert len(files) >= 14
    for f in files:
        cfg = load_config(f)
        assert cfg["name"] == f.stem and pruned_names(cfg), f


def test_every_experiment_config_shrinks_to_a_valid_preflight():
    """experiments/preflight.py's shrunk copies are valid configs, on the CPU, at pre-flight size."""
    import yaml

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    from preflight import shrink

    for path in sorted(Path(__file__).resolve().parents[1].glob("experiments/*.yaml")):
        small = load_config_text(yaml.safe_dump(shrink(load_config_text(path.read_text(), str(path)), "/tiny")),
                                 f"shrunk {path.name}")
        assert small["device"] == "cpu" and small["model"] == "/tiny" and small["evaluate"]["limit"] == 4
        assert small["localize"]["items"] == 8 and small["recover"]["max_prompts"] == 24


def test_stages_evaluated_side_by_side_equal_one_after_another(tiny_llama_dir, tmp_path):
    """evaluate.workers > 1: the stages are evaluated in worker processes at once, then read back;
    the tables are those of evaluating them one after another."""
    text = (f"name: w\nout: {{out}}\nmodel: {tiny_llama_dir}\nlocalize: {{{{probes: [brackets], items: 8, patch_probes: []}}}}\n"
            "prune: {{ratio: 0.25, strategies: [bi, reverse]}}\n"
            "evaluate: {{tasks: [arc_easy, arithmetic], limit: 3, probe_items: 8, workers: {workers}}}\n")
    outs = {}
    for w in (1, 3):
        cfg = tmp_path / f"w{w}.yaml"
        cfg.write_text(text.format(out=tmp_path / f"w{w}", workers=w))
        log = _run_ok(cfg)
        outs[w] = tmp_path / f"w{w}"
    assert "3 side by side" in log
    from prunescope.pipeline.stages import Run

    assert Run(load_config(tmp_path / "w1.yaml")).stage_key("evaluate") == Run(load_config(tmp_path / "w3.yaml")).stage_key("evaluate")
    keep = ("model", "probe", "condition", "metric", "value")
    for name in ("probes.csv", "eval/eval.csv"):
        one, three = (sorted(tuple(r[k] for k in keep) for r in read_table(outs[w] / name)) for w in (1, 3))
        assert one == three and {r[2] for r in one} == {"base", "pruned-bi", "pruned-reverse"}
    # a worker evaluating a pruned stage names its rows without loading the base model's weights
    import shutil

    from prunescope.pipeline.stages import _evaluate_stage

    before = sorted((r["metric"], r["value"]) for r in read_table(outs[1] / "eval/eval.csv")
                    if r["condition"] == "pruned-bi")
    shutil.rmtree(outs[1] / "eval" / "pruned-bi")
    run = Run(load_config(tmp_path / "w1.yaml"))
    rows, _ = _evaluate_stage(run, "pruned-bi", outs[1] / "prune" / "bi")
    assert run._base is None and {r["model"] for r in rows} == {Path(str(tiny_llama_dir)).name}
    assert sorted((r["metric"], r["value"]) for r in rows) == before


def test_a_stage_failing_beside_the_others_is_evaluated_alone(tiny_llama_dir, tmp_path, monkeypatch):
    """Stages side by side share one GPU, and one can run out of memory there that fits alone (Qwen's
    MMLU log-softmax beside two other stages): the other stages finish, and the failed one is
    evaluated again after them, alone, instead of the run ending. The out-of-memory error is raised
    in the worker processes only, through a sitecustomize that they import at start-up."""
    from prunescope.pipeline import run_pipeline

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import torch\n"
        "import prunescope.pipeline.stages as st\n"
        "real = st._evaluate_stage\n"
        "def oom_for_reverse(run, stage, folder):\n"
        "    if stage == 'pruned-reverse':\n"
        "        raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 14.13 GiB (simulated)')\n"
        "    return real(run, stage, folder)\n"
        "st._evaluate_stage = oom_for_reverse\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), *sys.path]))  # read by spawned workers only
    cfg = tmp_path / "o.yaml"
    cfg.write_text(f"name: o\nout: {tmp_path / 'o'}\nmodel: {tiny_llama_dir}\n"
                   "localize: {probes: [brackets], items: 8, patch_probes: []}\nprune: {ratio: 0.25, strategies: [bi, reverse]}\n"
                   "evaluate: {tasks: [arc_easy], limit: 3, probe_items: 8, workers: 3}\n")
    import contextlib
    import io

    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        run_pipeline(str(cfg), show_progress=False)
    text = log.getvalue()
    assert "pruned-reverse: failed beside the others (OutOfMemoryError: CUDA out of memory" in text
    assert "pruned-bi: evaluated" in text and "base: evaluated" in text
    conds = {r["condition"] for r in read_table(tmp_path / "o" / "eval/eval.csv")}
    assert conds == {"base", "pruned-bi", "pruned-reverse"}
    assert {r["condition"] for r in read_table(tmp_path / "o" / "probes.csv")} == conds


def _recovery_config(tmp_path, model, name: str, modes: str, steps: int, evaluate: str):
    """A tiny BI-25% run with recovery arms ``modes`` (YAML list) of ``steps`` steps each and the
    ``evaluate`` section ``evaluate`` (YAML mapping body); returns the config's path (out: tmp_path/name)."""
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(f"name: {name}\nout: {tmp_path / name}\nmodel: {model}\n"
                   "localize: {probes: [brackets], items: 8, patch_probes: []}\nprune: {ratio: 0.25, strategies: [bi]}\n"
                   f"recover: {{modes: {modes}, on: [bi], max_prompts: 16, max_new_tokens: 8, steps: {steps}, "
                   f"micro_batch: 4, heldout: 4}}\nevaluate: {{{evaluate}}}\n")
    return cfg


def test_a_diverging_recovery_arm_is_recorded_and_the_run_goes_on(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    """One arm whose training keeps going non-finite (here: every gradient of the SGR arm poisoned
    with NaN) must not end the run: it is recorded in recover/<arm>/diverged.json, the other arm
    trains and every other stage is evaluated, and the report says which arm diverged and where."""
    import json

    import prunescope.recover.train as rt
    from prunescope.pipeline import run_pipeline
    from prunescope.pipeline.stages import Run, _recover

    real_recover, real_step, poison = rt.recover_model, rt.train_step, {"on": False}

    def recover_model(options=None, *a, **kw):
        poison["on"] = options is not None and getattr(options, "mode", None) == "sgr"
        return real_recover(options, *a, **kw)

    def train_step(model, *a, **kw):
        loss, seen = real_step(model, *a, **kw)
        if poison["on"]:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.fill_(float("nan"))
        return loss, seen

    monkeypatch.setattr(rt, "recover_model", recover_model)
    monkeypatch.setattr(rt, "train_step", train_step)
    cfg = _recovery_config(tmp_path, tiny_llama_dir, "d", "[sgr, external]", 4,
                           "tasks: [arc_easy], limit: 3, probe_items: 8")
    run_pipeline(str(cfg), show_progress=False)
    out = tmp_path / "d"
    info = json.loads((out / "recover/bi-sgr/diverged.json").read_text())
    assert "diverged: 3 steps in a row" in info["error"] and [r["step"] for r in info["non_finite"]] == [1, 2, 3]
    assert (out / "recover/bi-external/model.safetensors").is_file()
    assert {r["condition"] for r in read_table(out / "probes.csv")} == {"base", "pruned-bi", "recovered-bi-external"}
    md = (out / "report.md").read_text()
    assert "Recovery arms that diverged" in md and "recovered-bi-sgr" in md
    # a rerun of the stage leaves the diverged arm as it is
    capsys.readouterr()
    _recover(Run(load_config(cfg), show_progress=False))
    assert "recovered-bi-sgr: diverged in an earlier run" in capsys.readouterr().out


def test_a_recovered_arm_is_probed_as_soon_as_it_is_trained(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    """The recover stage scores each arm's probes right after training it (a run can stop during
    the evaluation and go on from a folder copied without its weights, the merged arm's included);
    the evaluation reads that score back instead of probing again, and an arm trained again drops
    its older scores."""
    import json

    import prunescope.pipeline.stages as st
    from prunescope.pipeline import run_pipeline

    cfg = _recovery_config(tmp_path, tiny_llama_dir, "p", "[sgr]", 4, "tasks: [], probe_items: 8")
    run_pipeline(str(cfg), show_progress=False, only=["localize", "score", "prune", "recover"])
    out = tmp_path / "p"
    early = json.loads((out / "eval/recovered-bi-sgr/probes.json").read_text())
    assert early["settings"] == {"probes": ["brackets"], "n": 8} and 0 <= early["margin_accuracy"]["brackets"] <= 1
    assert not (out / "eval/base").exists()  # only the arm: the evaluation stage has not run

    probed = []
    real = st._stage_probes
    monkeypatch.setattr(st, "_stage_probes", lambda run, stage, *a: probed.append(stage) or real(run, stage, *a))
    run_pipeline(str(cfg), show_progress=False)
    assert sorted(probed) == ["base", "pruned-bi"]  # the arm's score is read back, not recomputed
    rows = {(r["condition"], r["metric"]): float(r["value"]) for r in read_table(out / "probes.csv")}
    assert rows[("recovered-bi-sgr", "margin_accuracy")] == early["margin_accuracy"]["brackets"]
    assert rows[("recovered-bi-sgr", "exact_match")] == early["exact_match"]["brackets"]

    # the arm trained again (its record gone, as after changed recovery settings): its old scores go
    (out / "recover/bi-sgr/prunescope_recovery.json").unlink()
    (out / "eval/recovered-bi-sgr/stale.txt").write_text("x")
    st._recover(st.Run(load_config(cfg), show_progress=False))
    assert not (out / "eval/recovered-bi-sgr/stale.txt").exists()
    assert (out / "eval/recovered-bi-sgr/probes.json").is_file()
    assert (out / "recover/bi-sgr/model.safetensors").is_file()

    # an arm whose scores are finished needs no weights (a run folder copied without its
    # weights has none): it is not trained again, and the recover stage counts as done
    (out / "recover/bi-sgr/model.safetensors").unlink()
    (out / ".stages/evaluate.json").unlink()
    assert st.Run(load_config(cfg), show_progress=False).done("recover")
    capsys.readouterr()
    st._recover(st.Run(load_config(cfg), show_progress=False))
    assert "recovered-bi-sgr: trained and evaluated in an earlier run" in capsys.readouterr().out
    assert not (out / "recover/bi-sgr/model.safetensors").exists()

    # brought back without weights and with the arm's scores gone: the run trains the arm again
    # (keeping the SGR answers) instead of failing on the missing checkpoint
    sgr = (out / "recover/sgr.jsonl").stat().st_mtime_ns
    for f in out.glob("prune/bi/*.safetensors"):
        f.unlink()  # the pruned model too: it is rebuilt from its plan.json before the arm trains
    shutil.rmtree(out / "eval/recovered-bi-sgr")
    probed.clear()
    run_pipeline(str(cfg), show_progress=False)
    assert (out / "recover/bi-sgr/model.safetensors").is_file() and "recovered-bi-sgr" in probed
    assert (out / "recover/sgr.jsonl").stat().st_mtime_ns == sgr


def test_each_recovered_arm_is_evaluated_beside_the_next_ones_training(tiny_llama_dir, tmp_path):
    """With evaluate.workers > 1 the recover stage evaluates each arm's benchmarks in a worker process
    as soon as the arm is trained (beside the next arm's training): a run that stops during a later
    arm keeps the earlier arms' scores, and those arms are not trained again."""
    import prunescope.pipeline.stages as st
    from prunescope.pipeline import run_pipeline

    cfg = _recovery_config(tmp_path, tiny_llama_dir, "w", "[sgr, external]", 2,
                           "tasks: [arc_easy], limit: 3, probe_items: 8, workers: 2")
    run_pipeline(str(cfg), show_progress=False, only=["localize", "score", "prune", "recover"])
    out = tmp_path / "w"
    for arm in ("sgr", "external"):
        rows = read_table(out / f"eval/recovered-bi-{arm}/eval.csv")
        assert {r["probe"] for r in rows} == {"arc_easy"} and {r["condition"] for r in rows} == {f"recovered-bi-{arm}"}
    assert not (out / "eval/base").exists()  # base and pruned wait for the evaluation stage
    # copied without its weights (experiments/pack_run.sh): nothing to train again
    for f in out.glob("recover/*/*.safetensors"):
        f.unlink()
    assert st.Run(load_config(cfg), show_progress=False).done("recover")
    run_pipeline(str(cfg), show_progress=False)
    conds = {r["condition"] for r in read_table(out / "eval/eval.csv")}
    assert conds == {"base", "pruned-bi", "recovered-bi-sgr", "recovered-bi-external"}
    assert not list(out.glob("recover/*/*.safetensors"))


def test_training_seeds_train_each_arm_per_seed_and_compare_over_them(tiny_llama_dir, tmp_path):
    """recover.train_seeds trains every arm once per seed (its own LoRA initialisation and data
    order) and compares each arm over its seeds with its pruned model and the SGR arm: the arm's
    point value is the mean of its seeds' retentions, n is the number of seeds."""
    import json

    from prunescope.pipeline import run_pipeline

    cfg = _recovery_config(tmp_path, tiny_llama_dir, "t", "[sgr, external]", 2, "tasks: [arc_easy], limit: 4, probe_items: 8")
    cfg.write_text(cfg.read_text().replace("heldout: 4}", "heldout: 4, train_seeds: [3, 5]}"))
    run_pipeline(str(cfg), show_progress=False)
    out = tmp_path / "t"
    arms = sorted(p.name for p in (out / "recover").iterdir() if p.is_dir())
    assert arms == ["bi-external@3", "bi-external@5", "bi-sgr@3", "bi-sgr@5"]
    seeds = {a: json.loads((out / "recover" / a / "prunescope_recovery.json").read_text())["config"]["seed"] for a in arms}
    assert seeds == {"bi-external@3": 3, "bi-external@5": 5, "bi-sgr@3": 3, "bi-sgr@5": 5}
    ret = {r["condition"]: float(r["value"]) for r in read_table(out / "retention.csv")
           if r["level"] == "category" and r["probe"] == "classification" and r["metric"] == "retention"}
    rows = [r for r in read_table(out / "recover_seeds.csv") if r["probe"] == "classification"
            and r["metric"] == "retention_minus_reference"]
    got = {(r["condition"], r["reference"]): r for r in rows}
    assert set(got) == {("recovered-bi-sgr", "pruned-bi"), ("recovered-bi-external", "pruned-bi"),
                        ("recovered-bi-external", "recovered-bi-sgr")}
    r = got[("recovered-bi-sgr", "pruned-bi")]
    assert int(r["n"]) == 2 and int(r["n_reference"]) == 1
    assert float(r["arm"]) == pytest.approx((ret["recovered-bi-sgr@3"] + ret["recovered-bi-sgr@5"]) / 2)
    assert float(r["value"]) == pytest.approx(float(r["arm"]) - ret["pruned-bi"])
    assert float(r["ci_low"]) <= float(r["value"]) <= float(r["ci_high"])


def test_training_seeds_must_differ(tmp_path):
    with pytest.raises(PrunescopeError, match="'recover.train_seeds' repeats a seed"):
        load_config_text("recover: {modes: [sgr], on: [bi], train_seeds: [1, 1]}\n")
