"""Probe tasks: seeded generators of items that carry their own answer.

An :class:`Item` is a prompt, the correct continuation, and wrong continuations to compare
against. Built-in probes:

* ``arithmetic`` — the paper's format, ``"Question: What is (2 * 3) + 1? Answer:"``
  with a one-digit answer, computed by Python.
* ``arithmetic_multi`` — ``"Question: What is 47 + 38? Answer:"`` with multi-digit answers,
  operators ``+ - * //``, operand digit counts and a carry / no-carry split.
* ``brackets`` — synthetic nested ``() [] {}`` sequences and code-derived contexts; the answer is
  the one correct closer, the wrong answers are the other two closers.
* ``copy`` — a control probe of a non-algorithmic skill: repeat a random word list (induction).
* a JSONL file of items (``prompt``, ``answer``, optional ``wrong`` and ``group``).

Answers start with a space (``" 68"``) because that is how the model continues ``"Answer:"``.

>>> items = make_items("arithmetic", n=3, seed=0)
>>> items[0].prompt.startswith("Question: What is")
True
>>> make_items("arithmetic", n=3, seed=0) == items     # deterministic per seed
True
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prunescope.core.errors import PrunescopeError
from prunescope.core.registry import Registry

# the probe settings of every pruning-side score (iterative search, probe accuracy of a checkpoint):
# 3-shot addition; the other probes take their defaults
PRUNING_PROBE_OPTIONS = {"arithmetic_multi": {"shots": 3, "ops": "+"}}


def pruning_probe_options(probe: str) -> dict:
    """The options a pruning-side score builds ``probe``'s items with.

    >>> pruning_probe_options("arithmetic_multi"), pruning_probe_options("brackets")
    ({'shots': 3, 'ops': '+'}, {})
    """
    return dict(PRUNING_PROBE_OPTIONS.get(probe, {}))


@dataclass(frozen=True)
class Item:
    """One probe question. ``wrong`` answers are compared with ``answer`` when scoring."""

    prompt: str
    answer: str
    wrong: tuple[str, ...] = ()
    group: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict:
        d = asdict(self)
        d["wrong"] = list(self.wrong)
        return d


# ----------------------------------------------------------------------------- arithmetic
OPERATORS: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "//": lambda a, b: a // b,
}


def _wrong_numbers(answer: int, rng: random.Random, k: int = 4, lo: int = 0) -> tuple[str, ...]:
    """Plausible wrong answers: off by one or ten, digits swapped, then random neighbours."""
    cands = [answer + 1, answer - 1, answer + 10, answer - 10, int(str(answer)[::-1]) if answer >= 10 else answer + 2]
    out: list[int] = []
    for c in cands + [answer + rng.randint(-20, 20) for _ in range(50)]:
        if c != answer and c >= lo and c not in out:
            out.append(c)
        if len(out) == k:
            break
    return tuple(f" {c}" for c in out)


def _has_carry(a: int, b: int, op: str) -> bool:
    """Column carry for +, borrow for -; for * and // any multi-digit interaction counts."""
    if op == "+":
        while a or b:
            if a % 10 + b % 10 >= 10:
                return True
            a, b = a // 10, b // 10
        return False
    if op == "-":
        while a or b:
            if a % 10 < b % 10:
                return True
            a, b = a // 10, b // 10
        return False
    return OPERATORS[op](a, b) >= 10


def arithmetic_single_items(n: int, seed: int = 0, *, shots: int = 0, **_) -> list[Item]:
    """The paper's format: ``(a op b) op c`` with one-digit operands and a one-digit answer.

    Wrong answers are the nine other digits. ``shots`` prepends solved examples (one shared
    prefix for all items, drawn from a separate seed).
    """
    def draw(rng: random.Random) -> tuple[str, int, str]:
        while True:
            a, b, c = (rng.randint(0, 9) for _ in range(3))
            op1, op2 = rng.choice("+-*"), rng.choice("+-*")
            inner = OPERATORS[op1](a, b)
            value = OPERATORS[op2](inner, c)
            if 0 <= value <= 9 and 0 <= inner:
                return f"Question: What is ({a} {op1} {b}) {op2} {c}? Answer:", value, f"{op1}{op2}"

    shot_rng = random.Random(f"shots-{seed}")
    prefix = "".join(f"{q} {v}\n" for q, v, _ in (draw(shot_rng) for _ in range(shots)))
    rng = random.Random(seed)
    items: list[Item] = []
    for _ in range(n):
        q, value, group = draw(rng)
        wrong = tuple(f" {d}" for d in range(10) if d != value)
        items.append(Item(prefix + q, f" {value}", wrong, group=group, meta={"value": value, "shots": shots}))
    return items


def arithmetic_multi_items(
    n: int,
    seed: int = 0,
    *,
    ops: str | tuple[str, ...] = ("+", "-", "*", "//"),
    digits: int | tuple[int, int] = 2,
    carry: str = "any",
    shots: int = 0,
    **_,
) -> list[Item]:
    """Multi-digit ``a op b`` with answers >= 0; ``carry`` is ``any``, ``carry`` or ``no_carry``.

    ``digits`` is the operand digit count (or a pair for a and b). ``shots`` prepends that many
    solved examples (the same few-shot prefix for every item, drawn from a separate seed).
    """
    ops = tuple(ops.split(",")) if isinstance(ops, str) else tuple(ops)
    bad = [o for o in ops if o not in OPERATORS]
    if bad:
        raise PrunescopeError(f"unknown operator(s) {bad}: choose from {list(OPERATORS)}")
    if carry not in ("any", "carry", "no_carry"):
        raise PrunescopeError(f"carry must be any, carry or no_carry, not {carry!r}")
    da, db = (digits, digits) if isinstance(digits, int) else digits
    if min(da, db) < 1 or max(da, db) > 9:
        raise PrunescopeError(f"operand digit counts must be 1-9, got {digits}")

    def draw(rng: random.Random) -> tuple[int, str, int, int]:
        for _ in range(10_000):
            op = rng.choice(ops)
            a = rng.randint(10 ** (da - 1) if da > 1 else 0, 10**da - 1)
            b = rng.randint(10 ** (db - 1) if db > 1 else 0, 10**db - 1)
            if op == "-" and a < b:
                a, b = b, a
            if op == "//" and b == 0:
                continue
            has = _has_carry(a, b, op)
            if carry == "any" or (carry == "carry") == has:
                return a, op, b, OPERATORS[op](a, b)
        raise PrunescopeError(f"no {carry} items exist for ops={ops} digits={digits}; relax the filter")

    prefix = ""
    if shots:
        shot_rng = random.Random(f"shots-{seed}")
        for _ in range(shots):
            a, op, b, v = draw(shot_rng)
            prefix += f"Question: What is {a} {op} {b}? Answer: {v}\n"
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        a, op, b, v = draw(rng)
        items.append(Item(prefix + f"Question: What is {a} {op} {b}? Answer:", f" {v}", _wrong_numbers(v, rng),
                          group=f"{op} {'carry' if _has_carry(a, b, op) else 'no_carry'}",
                          meta={"a": a, "b": b, "op": op, "value": v, "shots": shots}))
    return items


# ----------------------------------------------------------------------------- brackets
BRACKET_PAIRS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = (")", "]", "}")
_NAMES = ("arr", "xs", "data", "items", "vals", "grid", "row", "nums", "buf", "cfg")
_FUNCS = ("len", "max", "min", "abs", "sum", "sorted", "str", "int", "print", "range", "list")
_IDX = ("i", "j", "k", "n - 1", "n - 1 - i", "i + 1", "j - 1", "0", "-1", "mid")


def _synthetic_bracket(rng: random.Random, depth: int, length: int) -> tuple[str, str]:
    """A spaced random walk of ``length`` brackets that ends with ``depth`` of them still open."""
    if (length - depth) % 2:
        length += 1                      # opens - closes = depth needs length - depth even
    stack: list[str] = []
    out: list[str] = []
    for step in range(length):
        left = length - step - 1         # steps after this one
        can_close = bool(stack) and abs(len(stack) - 1 - depth) <= left
        can_open = abs(len(stack) + 1 - depth) <= left
        if can_close and (not can_open or rng.random() < 0.5):
            out.append(BRACKET_PAIRS[stack.pop()])
        else:
            stack.append(rng.choice("([{"))
            out.append(stack[-1])
    return " ".join(out), BRACKET_PAIRS[stack[-1]]


def _code_expr(rng: random.Random, depth: int) -> str:
    """A random nested Python expression: calls, indexing, lists, dicts."""
    if depth == 0:
        return rng.choice(_NAMES + ("x", "y", "n", "1", "2", "i"))
    inner = _code_expr(rng, depth - 1)
    kind = rng.choice(("call", "index", "list", "dict", "call2"))
    if kind == "call":
        return f"{rng.choice(_FUNCS)}({inner})"
    if kind == "call2":
        return f"{rng.choice(_FUNCS)}({rng.choice(_NAMES)}, {inner})"
    if kind == "index":
        return f"{rng.choice(_NAMES)}[{inner}]"
    if kind == "list":
        return f"[{rng.randint(0, 9)}, {inner}]"
    return f"{{'{rng.choice(_NAMES)}': {inner}}}"


def _code_bracket(rng: random.Random, depth: int) -> tuple[str, str, str]:
    """Cut a code line just before a closer whose previous character is a letter, digit or quote.

    Cutting only there keeps the prompt / answer split on a token boundary for BPE tokenizers
    (punctuation runs such as ``)]`` are often merged into one token).
    """
    templates = [
        ("index", lambda: f"    return {rng.choice(_NAMES)}[{rng.choice(_IDX)}]"),
        ("call", lambda: f"    total = {rng.choice(_FUNCS)}({_code_expr(rng, depth - 1)})"),
        ("nested", lambda: f"    y = {_code_expr(rng, depth)}"),
        ("dict", lambda: f"    cfg = {{'name': '{rng.choice(_NAMES)}', 'sizes': [{rng.randint(1, 9)}, {rng.randint(1, 9)}]}}"),
    ]
    for _ in range(1000):
        kind, make = rng.choice(templates)
        line = make()
        cuts = [i for i, ch in enumerate(line) if ch in _CLOSERS and line[i - 1].isalnum()]
        if not cuts:
            continue
        cut = rng.choice(cuts)
        header = f"def f({rng.choice(_NAMES)}, n, i, j, k, x, y, mid):\n"
        return kind, header + line[:cut], line[cut]
    raise RuntimeError("could not build a code bracket context")


def bracket_items(n: int, seed: int = 0, *, depth: int | tuple[int, ...] = (1, 2, 3, 4), length: int = 10,
                  code_fraction: float = 0.5, **_) -> list[Item]:
    """Bracket tracking: produce the one correct closer; the other two closers are the wrong answers.

    Synthetic items (``group`` ``synthetic d=<depth>``) are spaced sequences such as
    ``"Brackets: ( [ { } ] ("`` -> ``" )"``; code items (``group`` ``code:<kind>``) are cut from
    Python lines such as ``"return arr[n - 1 - i"`` -> ``"]"``.
    """
    depths = (depth,) if isinstance(depth, int) else tuple(depth)
    if not depths or min(depths) < 1:
        raise PrunescopeError(f"bracket depth must be >= 1, got {depth}")
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        if rng.random() < code_fraction:
            kind, prompt, closer = _code_bracket(rng, rng.choice(depths))
            items.append(Item(prompt, closer, tuple(c for c in _CLOSERS if c != closer), f"code:{kind}",
                              {"closer": closer}))
        else:
            d = rng.choice(depths)
            seq, closer = _synthetic_bracket(rng, d, max(length, d))
            items.append(Item(f"Brackets: {seq}", f" {closer}", tuple(f" {c}" for c in _CLOSERS if c != closer),
                              f"synthetic d={d}", {"closer": closer, "depth": d}))
    return items


def expected_closer(text: str) -> str | None:
    """The closer a bracket context needs next (``None`` if all are closed); checks items.

    >>> expected_closer("f(arr[i")
    ']'
    """
    stack = []
    for ch in text:
        if ch in BRACKET_PAIRS:
            stack.append(ch)
        elif ch in _CLOSERS:
            if not stack or BRACKET_PAIRS[stack.pop()] != ch:
                raise ValueError(f"unbalanced: {text!r}")
    return BRACKET_PAIRS[stack[-1]] if stack else None


# ----------------------------------------------------------------------------- copying (control)
_WORDS = ("apple river stone candle garden window silver forest yellow planet music winter bridge "
          "pencil orange mountain kitchen paper guitar ocean bottle tiger summer castle rabbit cloud "
          "doctor market island jacket letter mirror").split()


def copy_items(n: int, seed: int = 0, *, length: int = 6, **_) -> list[Item]:
    """Control probe (induction / copying): a word list is repeated; predict the next word.

    ``"List: apple, river, stone, candle. Again: apple, river,"`` -> ``" stone"``; wrong answers are
    the other words of the list. No arithmetic or bracket tracking is involved, so a drop here
    means general damage rather than damage to an algorithmic skill.
    """
    if length < 3:
        raise PrunescopeError(f"copy length must be >= 3 words, got {length}")
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        words = rng.sample(_WORDS, length)
        k = rng.randint(1, length - 1)          # how many words are already repeated
        prompt = "List: " + ", ".join(words) + ". Again: " + ", ".join(words[:k]) + ","
        wrong = tuple(f" {w}" for w in words if w != words[k])
        items.append(Item(prompt, f" {words[k]}", wrong, f"copy k={k}", {"position": k}))
    return items


# ----------------------------------------------------------------------------- files
def load_items(path: str | Path) -> list[Item]:
    """Read a user's probe: JSONL lines with ``prompt``, ``answer``, optional ``wrong``, ``group``."""
    from prunescope.core.results import read_jsonl

    path = Path(path)
    items = []
    for lineno, d in read_jsonl(path, "probe item"):
        if not isinstance(d.get("prompt"), str) or not isinstance(d.get("answer"), str):
            raise PrunescopeError(f"{path}:{lineno}: each line needs string fields 'prompt' and 'answer'")
        wrong = d.get("wrong", [])
        if isinstance(wrong, str) or not all(isinstance(w, str) for w in wrong):
            raise PrunescopeError(f"{path}:{lineno}: 'wrong' must be a list of strings")
        if d["answer"] in wrong:
            raise PrunescopeError(f"{path}:{lineno}: the answer {d['answer']!r} is also listed as wrong")
        items.append(Item(d["prompt"], d["answer"], tuple(wrong), str(d.get("group", "")), d.get("meta", {})))
    return items


def save_items(items: list[Item], path: str | Path) -> None:
    """Write items as JSONL (atomically), so any result can be recomputed by another tool."""
    from prunescope.core.results import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(it.to_json()) + "\n" for it in items))


# ----------------------------------------------------------------------------- registry
PROBES = Registry("probe")
PROBES.register("arithmetic", arithmetic_single_items, help="one-digit a + b answers (next-token)")
PROBES.register("arithmetic_multi", arithmetic_multi_items, help="multi-digit a op b, optional shots / carry")
PROBES.register("brackets", bracket_items, help="the next closing bracket of a code line")
PROBES.register("copy", copy_items, help="repeat a list of words (induction)")


def check_probe(probe: str) -> None:
    """A built-in probe's name or a path to a JSONL file of items, else one clear error."""
    if probe not in PROBES and not (probe.endswith((".jsonl", ".json")) or Path(probe).exists()):
        raise PrunescopeError(
            f"unknown probe {probe!r}: choose one of {', '.join(PROBES)} or give a path to a JSONL file of items"
        )


def make_items(probe: str, n: int = 200, seed: int = 0, **options) -> list[Item]:
    """Items of a built-in probe, or of a JSONL file (``n`` then takes the first n items)."""
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise PrunescopeError(f"n must be a positive number of items, got {n!r}")
    check_probe(probe)
    if probe in PROBES:
        return PROBES[probe](n, seed, **options)
    return load_items(probe)[:n]
