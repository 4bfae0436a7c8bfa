"""Probe generators: deterministic per seed, answers checked independently, user files."""

import re

import pytest

from prunescope.core.errors import PrunescopeError
from prunescope.probe.tasks import expected_closer, load_items, make_items, save_items

PROBES = ["arithmetic", "arithmetic_multi", "brackets", "copy"]


@pytest.mark.parametrize("probe", PROBES)
def test_deterministic_per_seed(probe):
    a = make_items(probe, n=30, seed=3)
    assert a == make_items(probe, n=30, seed=3)
    assert a != make_items(probe, n=30, seed=4)
    for it in a:
        assert it.answer not in it.wrong and len(set(it.wrong)) == len(it.wrong) and it.wrong


def _py(expr: str) -> int:
    return eval(expr, {"__builtins__": {}})  # digits, + - * // and parentheses only


def test_arithmetic_answers_checked_by_python():
    for it in make_items("arithmetic", n=100, seed=0):
        expr = re.search(r"What is (.*)\? Answer:$", it.prompt).group(1)
        assert re.fullmatch(r"[\d\s()+\-*]+", expr)
        assert _py(expr) == int(it.answer) and 0 <= int(it.answer) <= 9
        assert len(it.wrong) == 9
    for ops in ["+", "-", "*", "//"]:
        for it in make_items("arithmetic_multi", n=50, seed=1, ops=ops, digits=3):
            expr = re.search(r"What is (.*)\? Answer:$", it.prompt).group(1)
            assert _py(expr) == int(it.answer) >= 0
            a, b = it.meta["a"], it.meta["b"]
            assert 100 <= a <= 999 and 100 <= b <= 999


def test_carry_split_and_shots():
    carry = make_items("arithmetic_multi", n=40, seed=0, ops="+", carry="carry")
    none = make_items("arithmetic_multi", n=40, seed=0, ops="+", carry="no_carry")
    assert all((it.meta["a"] % 10 + it.meta["b"] % 10 >= 10) or (it.meta["a"] // 10 % 10 + it.meta["b"] // 10 % 10 >= 10)
               for it in carry)
    assert all(it.meta["a"] % 10 + it.meta["b"] % 10 < 10 and it.meta["a"] // 10 + it.meta["b"] // 10 < 10 for it in none)
    shots = make_items("arithmetic_multi", n=5, seed=0, ops="+", shots=3)
    prefix = shots[0].prompt.rsplit("Question:", 1)[0]
    assert prefix.count("Answer:") == 3 and all(it.prompt.startswith(prefix) for it in shots)
    for line in prefix.strip().splitlines():  # the solved examples are right
        expr, ans = re.search(r"What is (.*)\? Answer: (\d+)", line).groups()
        assert _py(expr) == int(ans)


def test_brackets_have_exactly_one_correct_closer():
    items = make_items("brackets", n=200, seed=0)
    groups = {it.group.split(" ")[0].split(":")[0] for it in items}
    assert groups == {"code", "synthetic"}
    for it in items:
        closer = expected_closer(it.prompt)
        assert closer == it.answer.strip()
        assert sorted([it.answer.strip()] + [w.strip() for w in it.wrong]) == [")", "]", "}"]
        if it.group.startswith("synthetic"):
            depth = int(it.group.split("=")[1])
            stack = 0
            for ch in it.prompt.split(": ", 1)[1].split():
                stack += 1 if ch in "([{" else -1
            assert stack == depth


def test_copy_answers():
    for it in make_items("copy", n=50, seed=0):
        listed = it.prompt.split("List: ")[1].split(". Again:")[0].split(", ")
        again = it.prompt.split("Again: ")[1].rstrip(",").split(", ")
        assert it.answer.strip() == listed[len(again)]


def test_user_jsonl_round_trip(tmp_path):
    items = make_items("brackets", n=5, seed=0)
    path = tmp_path / "mine.jsonl"
    save_items(items, path)
    assert load_items(path) == items
    assert make_items(str(path), n=3) == items[:3]


@pytest.mark.parametrize("text, message", [
    ('{"prompt": "a"}', "needs string fields"),
    ('not json', "not valid JSON"),
    ('{"prompt": "a", "answer": "b", "wrong": "c"}', "list of strings"),
    ('{"prompt": "a", "answer": "b", "wrong": ["b"]}', "also listed as wrong"),
    ('', "holds no"),
])
def test_bad_user_files(tmp_path, text, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(PrunescopeError, match=message):
        load_items(path)


def test_bad_probe_arguments():
    with pytest.raises(PrunescopeError, match="unknown probe"):
        make_items("algebra")
    with pytest.raises(PrunescopeError, match="positive"):
        make_items("arithmetic", n=0)
    with pytest.raises(PrunescopeError, match="unknown operator"):
        make_items("arithmetic_multi", n=2, ops="%")
