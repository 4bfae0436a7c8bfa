"""Probe tasks: seeded generators of items that carry their own answer.

An :class:`Item` is a prompt, the correct continuation, and wrong continuations to compare
against. Built-in probes:

* ``arithmetic`` — the paper's single-token format, ``"Question: What is (4 * 4) * 1? Answer:"``
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

from .errors import PrunescopeError


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
_OPS: dict[str, Callable[[int, int], int]] = {
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
    return _OPS[op](a, b) >= 10


def arithmetic_single_items(n: int, seed: int = 0, **_) -> list[Item]:
    """The paper's format: ``(a op b) op c`` with one-digit operands and a one-digit answer."""
    rng = random.Random(seed)
    items: list[Item] = []
    while len(items) < n:
        a, b, c = (rng.randint(0, 9) for _ in range(3))
        op1, op2 = rng.choice("+-*"), rng.choice("+-*")
        inner = _OPS[op1](a, b)
        value = _OPS[op2](inner, c)
        if not 0 <= value <= 9 or not 0 <= inner:
            continue
        wrong = tuple(f" {d}" for d in range(10) if d != value)
        items.append(Item(f"Question: What is ({a} {op1} {b}) {op2} {c}? Answer:", f" {value}", wrong,
                          group=f"{op1}{op2}", meta={"value": value}))
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
    bad = [o for o in ops if o not in _OPS]
    if bad:
        raise PrunescopeError(f"unknown operator(s) {bad}: choose from {list(_OPS)}")
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
                return a, op, b, _OPS[op](a, b)
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


# ----------------------------------------------------------------------------- files
def load_items(path: str | Path) -> list[Item]:
    """Read a user's probe: JSONL lines with ``prompt``, ``answer``, optional ``wrong``, ``group``."""
    path = Path(path)
    if not path.is_file():
        raise PrunescopeError(f"probe file {path} does not exist")
    items = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise PrunescopeError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
        if not isinstance(d, dict) or not isinstance(d.get("prompt"), str) or not isinstance(d.get("answer"), str):
            raise PrunescopeError(f"{path}:{lineno}: each line needs string fields 'prompt' and 'answer'")
        wrong = d.get("wrong", [])
        if isinstance(wrong, str) or not all(isinstance(w, str) for w in wrong):
            raise PrunescopeError(f"{path}:{lineno}: 'wrong' must be a list of strings")
        if d["answer"] in wrong:
            raise PrunescopeError(f"{path}:{lineno}: the answer {d['answer']!r} is also listed as wrong")
        items.append(Item(d["prompt"], d["answer"], tuple(wrong), str(d.get("group", "")), d.get("meta", {})))
    if not items:
        raise PrunescopeError(f"probe file {path} holds no items")
    return items


def save_items(items: list[Item], path: str | Path) -> None:
    """Write items as JSONL (atomically), so any result can be recomputed by another tool."""
    from .results import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(it.to_json()) + "\n" for it in items))


# ----------------------------------------------------------------------------- registry
PROBES: dict[str, Callable[..., list[Item]]] = {
    "arithmetic": arithmetic_single_items,
    "arithmetic_multi": arithmetic_multi_items,
}


def make_items(probe: str, n: int = 200, seed: int = 0, **options) -> list[Item]:
    """Items of a built-in probe, or of a JSONL file (``n`` then takes the first n items)."""
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise PrunescopeError(f"n must be a positive number of items, got {n!r}")
    if probe in PROBES:
        return PROBES[probe](n, seed, **options)
    if probe.endswith((".jsonl", ".json")) or Path(probe).exists():
        return load_items(probe)[:n]
    raise PrunescopeError(
        f"unknown probe {probe!r}: choose one of {', '.join(PROBES)} or give a path to a JSONL file of items"
    )
