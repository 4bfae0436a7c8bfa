"""The run report leads with a verdict: the model, what each stage dropped, both retention ratios
with n and intervals, the tasks left out and a small-sample warning; probes in both formats."""

import importlib.util
import json

from test_analysis import _eval_rows, _run_dir

from prunescope.analysis.report import report, stage_plan, stage_probe_rows
from prunescope.core.results import read_table, write_table


def _verdict_run(tmp_path):
    """The report fixture of test_analysis with a recovered stage (not a "+sgr" name), GSM8K on 4
    questions with none right at the base, and the plans and recovery record a pipeline writes."""
    run = _run_dir(tmp_path)
    rows = []
    for r in _eval_rows():
        r = dict(r, condition=r["condition"].replace("pruned-bi+sgr", "recovered-bi-sgr"))
        if r["probe"] == "gsm8k":
            r.update(n=4, value=0.0 if r["condition"] == "base" else r["value"])
        rows.append(r)
    write_table(rows, run / "eval" / "eval")
    (run / "prune" / "bi").mkdir(parents=True)
    (run / "prune" / "bi" / "plan.json").write_text(json.dumps(
        {"strategy": "bi", "n_layers": 6, "drop": [1, 3], "protected": [2], "model": "m", "metric": "block_influence"}))
    (run / "recover" / "bi-sgr").mkdir(parents=True)
    (run / "recover" / "bi-sgr" / "prunescope_recovery.json").write_text(json.dumps(
        {"base": str(run / "prune" / "bi"), "recovery": {"mode": "sgr"}, "config": {"mode": "sgr"}}))
    (run / "config.yaml").write_text("model: m\nnote: a < b & c > d\n")
    return run


def test_report_opens_with_the_verdict(tmp_path):
    run = _verdict_run(tmp_path)
    md, page = report(run)
    text = md.read_text()
    verdict = text.split("## Verdict")[1].split("\n## ")[0]
    assert text.index("## Verdict") < text.index("| model | task |")          # before any detail table
    assert "Model: m; base stage: base." in verdict
    assert "| pruned-bi | strategy bi (block_influence) | 1 3 (2 of 6) | 2 |" in verdict
    assert "| recovered-bi-sgr | pruned-bi recovered by sgr | 1 3 (2 of 6) | 2 |" in verdict
    # classification at pruned-bi: raw (0.6/0.8 + 0.45/0.5) / 2; chance-corrected (piqa 2 choices, ARC 4)
    # ((0.6 - 0.5) / (0.8 - 0.5) + (0.45 - 0.25) / (0.5 - 0.25)) / 2 = 0.567; the samples hold 1 item:
    # a degenerate interval
    assert "| pruned-bi | classification | 0.825 | 0.567 | 2 of 2 | piqa 100, arc_easy 100 |" in verdict
    # generative rests on HumanEval alone (GSM8K's base is 0 of 4): 0.02 / 0.2 either way (chance 0)
    assert "| pruned-bi | generative | 0.100 | 0.100 | 1 of 2 | gsm8k 4, humaneval 100 |" in verdict
    assert "| pruned-bi | gap | 0.725 | 0.467 | 3 of 4 |  |" in verdict
    assert ("pruned-bi: classification keeps 0.825 of its base score and 0.567 of its margin over chance; "
            "generative keeps 0.100 of its base score (the same chance-corrected); the gap is 0.725 raw and "
            "0.467 chance-corrected.") in verdict
    assert "generative: gsm8k (base 0 of 4)." in verdict
    assert "Warning, small samples" in verdict and "gsm8k (4 items, base score from 0 right of 4)" in verdict
    assert "piqa (" not in verdict.split("Warning")[1]                        # 100 items, 80 right: fine
    # the details follow, with both ratios; no HTML escapes in the Markdown
    assert "| m | gap | chance_corrected_retention |" in text
    assert not any(e in text for e in ("&lt;", "&gt;", "&amp;"))
    assert "a &lt; b &amp; c &gt; d" in page.read_text()                     # the HTML escapes it
    table = read_table(run / "retention.csv")
    assert {r["metric"] for r in table} == {"retention", "chance_corrected_retention"}


def test_report_upgrades_a_retention_table_without_the_corrected_rows(tmp_path):
    run = _verdict_run(tmp_path)
    report(run)
    old = [r for r in read_table(run / "retention.csv") if r["metric"] == "retention"]
    write_table(old, run / "retention")
    text = report(run)[0].read_text()
    assert any(r["metric"] == "chance_corrected_retention" for r in read_table(run / "retention.csv"))
    assert "| pruned-bi | classification | 0.825 | 0.567 |" in text


def test_verdict_of_a_run_without_evaluation(tmp_path):
    run = tmp_path / "run"
    (run / "prune" / "bi").mkdir(parents=True)
    (run / "prune" / "bi" / "plan.json").write_text(json.dumps({"strategy": "bi", "n_layers": 4, "drop": [2]}))
    (run / "config.yaml").write_text("model: my-model\n")
    text = report(run)[0].read_text()
    verdict = text.split("## Verdict")[1].split("\n## ")[0]
    assert "Model: my-model" in verdict and "| pruned-bi | strategy bi | 2 (1 of 4) | none |" in verdict
    assert "No retention yet" in verdict


def test_stage_plan_of_pruned_and_recovered_stages(tmp_path):
    run = _verdict_run(tmp_path)
    assert stage_plan(run, "pruned-bi")["drop"] == [1, 3]
    rec = stage_plan(run, "recovered-bi-sgr")
    assert (rec["pruned"], rec["mode"], rec["protected"]) == ("pruned-bi", "sgr", [2])
    # without a recovery record the arm's name says it: recovered-<pruned name>-<mode>
    (run / "recover" / "bi-sgr" / "prunescope_recovery.json").unlink()
    assert (stage_plan(run, "recovered-bi-sgr")["pruned"], stage_plan(run, "recovered-bi-sgr")["mode"]) == \
        ("pruned-bi", "sgr")
    assert stage_plan(run, "base") == {} and stage_plan(run, "pruned-nothing") == {}


def _probes_json(stage_items: dict) -> str:
    items = {p: {"margin_accuracy": m, "exact_match": e} for p, (m, e) in stage_items.items()}
    return json.dumps({"settings": {"probes": list(items), "n": 4},
                       "margin_accuracy": {p: sum(v["margin_accuracy"]) / 4 for p, v in items.items()},
                       "exact_match": {p: sum(v["exact_match"]) / 4 for p, v in items.items()}, "items": items})


def test_stage_probe_rows_read_both_formats(tmp_path):
    (tmp_path / "eval" / "base").mkdir(parents=True)
    (tmp_path / "eval" / "pruned-bi").mkdir(parents=True)
    (tmp_path / "eval" / "base" / "probes.json").write_text(_probes_json({"copy": ([1, 1, 1, 0], [1, 1, 0, 0])}))
    (tmp_path / "eval" / "pruned-bi" / "probes.json").write_text(json.dumps(
        {"settings": {"probes": ["copy"], "n": 4}, "accuracy": {"copy": 0.5}}))     # the older format
    rows = stage_probe_rows(tmp_path, {"base": "m"})
    got = [(r["condition"], r["metric"], r["value"], r["n"], r["model"]) for r in rows]
    assert got == [("base", "margin_accuracy", 0.75, 4, "m"), ("base", "exact_match", 0.5, 4, "m"),
                   ("pruned-bi", "margin_accuracy", 0.5, 4, "")]


def test_report_probe_section_shows_both_metrics_and_paired_changes(tmp_path):
    run = _verdict_run(tmp_path)
    (run / "probes.csv").unlink()
    (run / "probes.jsonl").unlink()
    for stage, items in (("base", ([1, 1, 1, 1], [1, 1, 1, 0])), ("pruned-bi", ([1, 1, 0, 0], [0, 0, 0, 0]))):
        (run / "eval" / stage / "probes.json").write_text(_probes_json({"copy": items}))
    text = report(run)[0].read_text()
    probes = text.split("## Probes per stage")[1].split("\n## ")[0]
    assert "| m | copy | margin_accuracy | 1.000 | 0.500 | 4 | -0.500 |" in probes
    assert "| m | copy | exact_match | 0.750 | 0.000 | 4 | -0.750 |" in probes
    if importlib.util.find_spec("prunescope.analysis.probes") is not None:
        assert "Paired changes" in probes and "| m | copy | pruned-bi | base | exact_match | 0.750 | 0.000 |" in probes
