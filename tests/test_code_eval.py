"""HumanEval / MBPP through evalplus: conversion of the original tests, sandboxed execution, generation."""

import json

import pytest

from prunescope.analysis import code_eval as ce
from prunescope.core.errors import PrunescopeError
from prunescope.generation import EngineSettings


def test_conversion_keeps_most_problems():
    he, mb = ce.humaneval_problems(), ce.mbpp_problems()
    # Measured: 155 of 164 and 462 of 500 (skips: loops/imports in check(), tuple or set inputs
    # that evalplus' JSON file cannot carry, MBPP test_setup_code).
    assert 150 <= len(he) <= 164 and 440 <= len(mb) <= 500
    assert len(he) + len(ce.skipped_problems("humaneval")) == 164
    assert len(mb) + len(ce.skipped_problems("mbpp")) == 500
    for p in list(he.values()) + list(mb.values()):
        assert set(ce.PROBLEM_FIELDS) <= set(p) and p["base_input"] and p["plus_input"] == []
    assert all(k.startswith("Mbpp/") and 11 <= int(k.split("/")[1]) <= 510 for k in mb)
    # The parsed forms: plain equality, abs(f(x) - y) < tol (atol), constant arithmetic in arguments.
    assert he["HumanEval/0"]["base_input"][0] == [[1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3]
    assert he["HumanEval/2"]["atol"] == 1e-6
    assert he["HumanEval/25"]["base_input"][3:5] == [[57], [3249]]  # candidate(3 * 19), candidate(3 * 19 * 19)
    assert mb["Mbpp/11"]["entry_point"] == "remove_Occ" and mb["Mbpp/11"]["base_input"][2] == ["PHP", "P"]
    assert mb["Mbpp/11"]["prompt"].startswith('"""\nWrite a python function to remove first')
    assert "HumanEval/32" in ce.skipped_problems("humaneval")  # random tests in a loop
    assert "Mbpp/367" in ce.skipped_problems("mbpp")           # needs test_setup_code


def test_every_problem_is_scored_the_rest_by_its_own_test_code(tmp_path):
    """The problems evalplus cannot take are judged by their original test code: all 164 and 500."""
    for task, n, own in (("humaneval", 164, 9), ("mbpp", 500, 38)):
        every, programs = ce.all_problems(task), ce.program_problems(task)
        assert len(every) == n and len(programs) == own and set(programs) == set(ce.skipped_problems(task))
        assert list(every)[:n - own] == list(ce.humaneval_problems() if task == "humaneval" else ce.mbpp_problems())
        assert all(p["test"] and not p["base_input"] for p in programs.values())
    assert "check(find_zero)" in ce.program_problems("humaneval")["HumanEval/32"]["test"]
    assert ce.program_problems("mbpp")["Mbpp/367"]["test"].startswith("root = Node(1) \n")  # its test_setup_code first
    # every reference solution passes its own tests, in the sandbox
    he, mb = ce.program_problems("humaneval"), ce.program_problems("mbpp")
    got = ce.run_test_programs("humaneval", list(he.values()),
                               {k: p["prompt"] + p["canonical_solution"] for k, p in he.items()}, tmp_path / "he")
    assert got == {k: ("pass", None) for k in he}
    got = ce.run_test_programs("mbpp", list(mb.values()), {k: p["canonical_solution"] for k, p in mb.items()},
                               tmp_path / "mbpp")
    assert got == {k: ("pass", None) for k in mb}


def test_test_program_failures_get_the_taxonomy(tmp_path, monkeypatch):
    monkeypatch.setattr(ce, "TEST_PROGRAM_SECONDS", 1.0)
    p = ce.program_problems("humaneval")["HumanEval/151"]  # double_the_difference(lst), checked by check()
    head = "def double_the_difference(lst):\n"
    programs = {"pass": p["prompt"] + p["canonical_solution"], "assertion": head + "    return 0",
                "syntax": head + "    return (0", "name": head + "    return zero", "no-entry": "x = 1",
                "other": head + "    return 1 // 0", "timeout": head + "    while True:\n        pass"}
    got = ce.run_test_programs("humaneval", [dict(p, task_id=k) for k in programs], programs, tmp_path)
    assert got == {"pass": ("pass", None), "assertion": ("fail", "assertion"), "syntax": ("fail", "syntax"),
                   "name": ("fail", "name"), "no-entry": ("fail", "name"), "other": ("fail", "other"),
                   "timeout": ("timeout", "timeout")}
    # check_solutions takes them too
    assert ce.check_solutions("humaneval", {"HumanEval/151": programs["assertion"]}, tmp_path / "c") == {
        "HumanEval/151": False}


def test_a_code_result_from_another_problem_set_is_scored_again(tmp_path):
    """A task recorded before the test-program problems joined (155 problems) is not reused."""
    from prunescope.analysis.evaluate import EvalOptions, finished_rows, run_benchmarks
    from prunescope.probe.models import LoadedModel
    from prunescope.probe.tiny import tiny_model

    model, tok = tiny_model("llama")
    lm = LoadedModel(model, tok, "tiny-llama", "")
    run_benchmarks(lm, EvalOptions(tasks=["humaneval"], limit=2, code_max_new_tokens=4), tmp_path, progress=False)
    settings = json.loads((tmp_path / "config.json").read_text())
    assert finished_rows(tmp_path, ["humaneval"], settings) is not None
    record = json.loads((tmp_path / "tasks" / "humaneval.json").read_text())
    assert record["config"]["problems"] == ce.problem_set_label("humaneval")
    del record["config"]["problems"]
    (tmp_path / "tasks" / "humaneval.json").write_text(json.dumps(record))
    assert finished_rows(tmp_path, ["humaneval"], settings) is None


def test_parse_assert_forms():
    import ast

    def parse(src, fname="f"):
        return ce._parse_assert(ast.parse(src).body[0].test, fname)

    assert parse("assert f([1, 2], 'a') == (3, 'b')") == ("f", [[1, 2], "a"], (3, "b"), 0.0)
    assert parse("assert 7 == f(2 ** 3)")[1] == [8]
    assert parse("assert not f(-1)")[2] is False
    assert parse("assert math.isclose(f(2.0), 4.0, rel_tol=0.001)")[3] == pytest.approx(0.004)
    for bad in ("assert f(x) == 1", "assert g(1) == 1", "assert f(a=1) == 1", "assert f(1) > 0"):
        with pytest.raises(ce._Skip):
            parse(bad)


def test_asserted_values_agree_with_evalplus_ground_truth(tmp_path):
    # evalplus judges by the canonical solution's outputs; they must equal what the original asserts
    # expect, else a correct answer could fail (tested on every kept problem: 1084 + 1386 asserts).
    assert ce.reference_disagreements("humaneval", tmp_path / "he") == {}
    assert ce.reference_disagreements("mbpp", tmp_path / "mbpp") == {}


def test_canonical_solutions_pass_and_wrong_ones_fail(tmp_path):
    he, mb = ce.humaneval_problems(), ce.mbpp_problems()
    # A spread of canonical solutions as samples (all 155 + 462 evalplus problems pass; measured once, 20 s).
    sols = {k: p["prompt"] + p["canonical_solution"] for k, p in list(he.items())[::16]}
    assert all(ce.check_solutions("humaneval", sols, tmp_path / "he").values())
    sols = {k: p["prompt"] + p["canonical_solution"] for k, p in list(mb.items())[::40]}
    assert all(ce.check_solutions("mbpp", sols, tmp_path / "mbpp").values())

    wrong = {
        "HumanEval/2": "def truncate_number(number):\n    return None\n",
        "HumanEval/3": "def below_zero(operations):\n    while True:\n        pass\n",          # time limit
        "HumanEval/4": "def mean_absolute_deviation(numbers):\n    x = bytearray(8 * 1024 ** 3)\n    return 0.0\n",
        "HumanEval/5": he["HumanEval/5"]["prompt"] + he["HumanEval/5"]["canonical_solution"],  # control
    }
    res = ce.check_solutions("humaneval", wrong, tmp_path / "wrong")
    assert res == {"HumanEval/2": False, "HumanEval/3": False, "HumanEval/4": False, "HumanEval/5": True}
    # A stale results file is not re-used: the same folder, now with a correct solution.
    p = he["HumanEval/2"]
    assert ce.check_solutions("humaneval", {"HumanEval/2": p["prompt"] + p["canonical_solution"]},
                              tmp_path / "wrong") == {"HumanEval/2": True}


def test_run_code_task_tiny_model_end_to_end(tmp_path):
    from prunescope.probe.models import LoadedModel
    from prunescope.probe.tiny import tiny_model

    model, tok = tiny_model("llama")
    loaded = LoadedModel(model, tok, "tiny-llama", "")
    side, pad = tok.padding_side, tok.pad_token
    rows, samples = ce.run_code_task(loaded, "humaneval", limit=2, out_dir=tmp_path,
                                     code_options={"max_new_tokens": 12}, engine=EngineSettings(slots=2, progress=False))
    assert tok.padding_side == side and tok.pad_token == pad  # the shared tokenizer is left as it was
    assert [r["metric"] for r in rows] == ["pass@1"]
    r = rows[0]
    assert 0.0 <= r["value"] <= 1.0 and r["n"] == 2 and r["primary"] is True and r["category"] == "generative"
    assert r["model"] == "tiny-llama" and r["probe"] == "humaneval" and r["data"].startswith("original HumanEval")
    assert [s["doc_id"] for s in samples] == ["HumanEval/0", "HumanEval/1"]
    assert all(isinstance(s["correct"], bool) and s["status"] in ("pass", "fail", "timeout") for s in samples)
    written = [json.loads(x) for x in (tmp_path / "humaneval_evalplus" / "humaneval_samples.jsonl").read_text().splitlines()]
    assert [w["completion"] for w in written] == [s["response"] for s in samples]


def test_failure_taxonomy_sorts_each_kind(tmp_path):
    """The paper's HumanEval taxonomy: each handwritten program fails in one known way."""
    p = ce.humaneval_problems()["HumanEval/23"]  # strlen(string) -> int
    programs = {"syntax": "def strlen(string):\n    return len(string",
                "bracket": "def strlen(string):\n    return len([string)]",
                "name": "def strlen(string):\n    return lenn(string)",
                "no-entry": "def str_len(string):\n    return len(string)",
                "unbound": "def strlen(string):\n    if n:\n        pass\n    n = 1\n    return n",
                "assertion": "def strlen(string):\n    return len(string) + 1",
                "other": "def strlen(string):\n    return len(string) // 0",
                "timeout": "def strlen(string):\n    while True:\n        pass",
                "pass": "def strlen(string):\n    return len(string)"}
    statuses = {k: "pass" if k == "pass" else "fail" for k in programs}
    statuses["evalplus-timeout"], programs["evalplus-timeout"] = "timeout", "def strlen(string):\n    return 0"
    kinds = ce.failure_kinds("humaneval", [dict(p, task_id=k) for k in programs], programs, statuses, tmp_path)
    assert kinds == {"syntax": "syntax", "bracket": "syntax", "name": "name", "no-entry": "name", "unbound": "name",
                     "assertion": "assertion", "other": "other", "timeout": "timeout", "pass": None,
                     "evalplus-timeout": "timeout"}
    # and a real evalplus run agrees that the taxonomy's failures fail
    checked = ce.check_solutions("humaneval", {"HumanEval/23": programs["assertion"]}, tmp_path / "check")
    assert checked == {"HumanEval/23": False}


def test_failure_taxonomy_reaches_samples_and_signatures(tmp_path):
    from prunescope.analysis.signatures import FAILURE_KINDS, aggregate_signatures, signatures_for_samples
    from prunescope.probe.models import LoadedModel
    from prunescope.probe.tiny import tiny_model

    model, tok = tiny_model("llama")
    rows, samples = ce.run_code_task(LoadedModel(model, tok, "tiny-llama", ""), "mbpp", limit=3, out_dir=tmp_path,
                                     code_options={"max_new_tokens": 12}, engine=EngineSettings(slots=3, progress=False))
    assert all((s["failure"] is None) == s["correct"] and (s["failure"] in (None, *FAILURE_KINDS)) for s in samples)
    agg = {r["metric"]: r["value"] for r in aggregate_signatures(signatures_for_samples(samples, "m", "base"))}
    shares = [agg[f"fail_{k}_rate"] for k in FAILURE_KINDS]
    assert sum(shares) + rows[0]["value"] == pytest.approx(1.0)


def test_code_prompt_option_chooses_the_prompt():
    from prunescope.analysis.evaluate import EvalOptions

    assert "chat" not in EvalOptions(tasks="humaneval").check().code_options()  # auto: the model decides
    assert EvalOptions(tasks="humaneval", code_prompt="raw").check().code_options() == {"chat": False}
    assert EvalOptions(tasks="humaneval", code_prompt="chat").check().code_options() == {"chat": True}
    with pytest.raises(PrunescopeError):
        EvalOptions(tasks="humaneval", code_prompt="plain").check()


def test_chat_prompt_path_sanitizes_replies(tmp_path, default_model):
    """Instruction models are asked the evalplus way; the reply is cut to the entry point."""
    prompt = ce.chat_prompt(default_model.tokenizer, "def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n")
    assert prompt.startswith("<|im_start|>") and prompt.endswith("```python\n") and ce.CHAT_INSTRUCTION in prompt
    rows, samples = ce.run_code_task(default_model, "humaneval", limit=2, out_dir=tmp_path,
                                     code_options={"max_new_tokens": 48}, engine=EngineSettings(slots=2, progress=False))
    assert rows[0]["data"].endswith("; chat prompt") and all(s["chat"] for s in samples)
    p = sum(s["correct"] for s in samples) / 2  # the binomial standard error, as lm-eval's mean_stderr
    assert rows[0]["stderr"] == pytest.approx((p * (1 - p) / 1) ** 0.5)
    written = [json.loads(x) for x in (tmp_path / "humaneval_evalplus" / "humaneval_samples.jsonl").read_text().splitlines()]
    assert [w["solution"] for w in written] == [s["response"] for s in samples]
    # whatever the model wrote, the program evalplus ran defines the entry point (or is empty)
    assert all(s["response"] == "" or f"def {e}" in s["response"]
               for s, e in zip(samples, ("has_close_elements", "separate_paren_groups")))
    # the reply as written is kept: sanitize drops code that does not parse, the signatures need it
    assert all(isinstance(s["reply"], str) for s in samples)
    assert all(s["failure"] != "syntax" or not ce._compiles(s["reply"]) or not ce._compiles(s["response"])
               for s in samples)


def test_a_chat_reply_that_does_not_parse_is_a_syntax_failure_with_its_brackets():
    from prunescope.analysis.signatures import signature

    reply = "def add(a, b):\n    return (a + b\n"
    sample = {"task": "humaneval", "prompt": "def add(a, b):\n", "response": "", "reply": reply, "chat": True,
              "correct": False, "failure": "syntax"}
    rec = signature(sample)
    assert rec["unbalanced"] is True and "( unclosed" in rec["bracket_excerpt"]
    # without the reply (a raw completion, or an older sample) the scored program is checked
    assert signature({**sample, "reply": None, "response": "    return a + b\n"})["unbalanced"] is False


def test_plus_file_adds_plus_metric(tmp_path):
    """A user-supplied evalplus file with plus inputs is used as is and adds plus_pass@1."""
    from prunescope.probe.models import LoadedModel
    from prunescope.probe.tiny import tiny_model

    he = ce.humaneval_problems()
    p = dict(he["HumanEval/0"], plus_input=[[[1.0, 1.05], 0.1], [[], 1.0]])
    path = tmp_path / "HumanEvalPlus.jsonl"
    path.write_text(json.dumps(p) + "\n")
    assert ce.check_solutions("humaneval", {"HumanEval/0": p["prompt"] + p["canonical_solution"]},
                              tmp_path / "w", plus_file=path) == {"HumanEval/0": True}
    model, tok = tiny_model("llama")
    rows, samples = ce.run_code_task(LoadedModel(model, tok, "tiny-llama", ""), "humaneval", out_dir=tmp_path / "r",
                                     code_options={"max_new_tokens": 4, "humaneval_plus": path},
                                     engine=EngineSettings(progress=False))
    assert [r["metric"] for r in rows] == ["pass@1", "plus_pass@1"] and rows[0]["n"] == 1
    assert rows[1]["value"] <= rows[0]["value"] and rows[0]["data"] == "HumanEval+ (user file HumanEvalPlus.jsonl)"
    assert samples[0]["plus_status"] in ("pass", "fail", "timeout")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": "HumanEval/0", "prompt": "x"}) + "\n")
    with pytest.raises(PrunescopeError, match="missing"):
        ce.load_plus_file(bad, "humaneval")


def test_unknown_task_is_refused(tmp_path):
    with pytest.raises(PrunescopeError, match="unknown code task 'gsm8k'"):
        ce.run_code_task(None, "gsm8k", out_dir=tmp_path)
    with pytest.raises(PrunescopeError, match="unknown code task"):
        ce.check_solutions("apps", {}, tmp_path)
    with pytest.raises(PrunescopeError, match="unknown humaneval task ids"):
        ce.check_solutions("humaneval", {"HumanEval/999": "pass"}, tmp_path)
