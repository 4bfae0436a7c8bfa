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
* atomic capabilities of generated code, each with a synthetic and a code variant:
  ``string_close`` (close an open string or docstring), ``binding`` (use the name bound k lines
  earlier; ``binding_undefined``: notice a name that was never bound), ``indentation`` (the right
  dedent after a block), ``carry_chain`` (a carry or borrow through k digits), ``counting``.
* a JSONL file of items (``prompt``, ``answer``, optional ``wrong`` and ``group``).

Answers start with a space (``" 68"``) because that is how the model continues ``"Answer:"``;
those that follow a newline (a Python session's output) or close a string do not.

>>> items = make_items("arithmetic", n=3, seed=0)
>>> items[0].prompt.startswith("Question: What is")
True
>>> make_items("arithmetic", n=3, seed=0) == items     # deterministic per seed
True
"""

from __future__ import annotations

import json
import random
import re
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


# ----------------------------------------------------------------------------- atomic capabilities
# Probes of capabilities whose loss shows in generated code: closing strings, using defined names,
# dedenting after a block, long carry chains, counting. Each has a synthetic and a code variant
# (``variant="synthetic"|"code"``; ``"both"``, the default, mixes them like ``brackets``). Every
# item keeps in ``meta["rest"]`` the text that follows its answer, so a checker can parse or run
# prompt + answer + rest, and :func:`split_is_clean` can see whether a tokenizer splits the text
# where the item does. The answers end or start where byte-level BPE tokenizers (GPT-2, Llama-3,
# Qwen2 rules) always split: between a letter or digit and a quote or newline, or before a space
# and a word; ``tokenizer=`` redraws the few items a given tokenizer still merges across the split.
VARIANTS = ("both", "synthetic", "code")


def split_is_clean(tokenizer: object, prompt: str, answer: str, rest: str = "") -> bool:
    """Whether ``prompt + answer + rest`` tokenizes as the prompt's tokens, then the answer's.

    Scoring tokenizes the prompt and the answer apart and concatenates them; that is the model's own
    view of the text only when no token of the whole text spans the prompt / answer boundary or the
    answer / rest boundary (``'.\"\"\"'`` is one token for the default model, so a docstring cut
    between ``.`` and ``\"\"\"`` is not clean).

    >>> from prunescope.probe.tiny import tiny_model
    >>> _, tok = tiny_model("llama")
    >>> split_is_clean(tok, "def f(arr, n):", "\\n    return", " arr")
    True
    """
    p = tokenizer(prompt, add_special_tokens=False).input_ids
    a = tokenizer(answer, add_special_tokens=False).input_ids
    full = tokenizer(prompt + answer + rest, add_special_tokens=False).input_ids
    return bool(a) and full[: len(p)] == p and full[len(p): len(p) + len(a)] == a


def item_is_clean(tokenizer: object, item: Item) -> bool:
    """:func:`split_is_clean` of an item, with the text after its answer (``meta["rest"]``) if it has one."""
    return split_is_clean(tokenizer, item.prompt, item.answer, item.meta.get("rest", ""))


def _check_variant(variant: str, allowed: tuple[str, ...] = VARIANTS) -> str:
    if variant not in allowed:
        raise PrunescopeError(f"variant must be one of {', '.join(allowed)}, not {variant!r}")
    return variant


def _draw_items(n: int, rng: random.Random, draws: dict[str, Callable[[random.Random], Item]],
                variant: str, tokenizer=None) -> list[Item]:
    """``n`` items of ``variant`` (``both``: synthetic or code at random, as ``brackets`` mixes them).

    With a tokenizer, an item whose split is not clean for it (:func:`item_is_clean`) is drawn again.
    """
    items: list[Item] = []
    for _ in range(n):
        for _ in range(200):
            kind = variant if variant != "both" else ("code" if rng.random() < 0.5 else "synthetic")
            item = draws[kind](rng)
            if tokenizer is None or item_is_clean(tokenizer, item):
                break
        else:
            raise PrunescopeError(f"no {variant} item splits cleanly for this tokenizer after 200 draws")
        items.append(item)
    return items


# ----------------------------------------------------------------------------- string_close
# words that no tokenizer's contraction rule ('s 't 're 've 'm 'll 'd) joins to an opening quote
_QUOTE_WORDS = ("apple blue cat green honey ink jam kite owl pink queen wolf yellow zebra bird cloud egg "
                "fox gold hat ice nut oak pear cup bell wing frog girl home fig corn bean jar").split()
# every closer's distractors start with a different character, so they differ at the first token:
# the other quote family, single and triple, and a newline that would continue the string
_QUOTE_WRONG = {'"': ("'", "'''", "\n"), "'": ('"', '"""', "\n"),
                '"""': ("'''", "'", "\n"), "'''": ('"""', '"', "\n")}
_DOC_FUNCS = (("total", "Sum of xs", "sum(xs)"), ("largest", "Largest value in xs", "max(xs)"),
              ("smallest", "Smallest value in xs", "min(xs)"), ("count", "Number of items in xs", "len(xs)"),
              ("mean", "Average of xs", "sum(xs) / len(xs)"), ("ordered", "Sorted copy of xs", "sorted(xs)"),
              ("backwards", "Items of xs in reverse order", "xs[::-1]"), ("first", "First item of xs", "xs[0]"),
              ("final", "Last item of xs", "xs[-1]"), ("unique", "Distinct items of xs", "set(xs)"),
              ("doubled", "Each item of xs times two", "[2 * x for x in xs]"),
              ("positive", "Items of xs above zero", "[x for x in xs if x > 0]"))
_CHOICE_FUNCS = (("parity", "n", "even", "n % 2 == 0", "odd"), ("sign", "n", "positive", "n > 0", "negative"),
                 ("size", "n", "big", "n > 100", "normal"), ("switch", "flag", "on", "flag", "off"),
                 ("answer", "ok", "yes", "ok", "no"), ("grade", "score", "pass", "score >= 50", "fail"),
                 ("weather", "degrees", "hot", "degrees > 25", "cold"))


def _string_synthetic(rng: random.Random) -> Item:
    """``Quoted words: "fox" and 'ink' and 'pear`` -> ``'``: a Python expression of string literals."""
    quotes = ('"', "'", '"""', "'''")
    words = rng.sample(_QUOTE_WORDS, rng.randint(3, 5) + 1)
    done = [f"{q}{w}{q}" for q, w in ((rng.choice(quotes), w) for w in words[:-2])]
    q = rng.choice(quotes)
    after = rng.choice(quotes)
    prompt = "Quoted words: " + " and ".join(done + [q + words[-2]])
    return Item(prompt, q, _QUOTE_WRONG[q], f"synthetic {q}",
                {"rest": f" and {after}{words[-1]}{after}", "quote": q, "kind": "synthetic"})


def _string_code(rng: random.Random) -> Item:
    """A function cut inside a one-line docstring (after a solved one) or inside a string literal."""
    if rng.random() < 0.5:
        (f1, d1, b1), (f2, d2, b2) = rng.sample(_DOC_FUNCS, 2)
        q1, q = (rng.choice(('"""', '"""', '"""', "'''")) for _ in range(2))
        prompt = f"def {f1}(xs):\n    {q1}{d1}{q1}\n    return {b1}\n\n\ndef {f2}(xs):\n    {q}{d2}"
        rest, kind = f"\n    return {b2}\n", "docstring"
    else:
        name, arg, yes, cond, no = rng.choice(_CHOICE_FUNCS)
        q = rng.choice(('"', "'"))
        prompt = f"def {name}({arg}):\n    return {q}{yes}"
        rest, kind = f" if {cond} else {q}{no}{q}\n", "string"
    return Item(prompt, q, _QUOTE_WRONG[q], f"code:{kind}", {"rest": rest, "quote": q, "kind": kind})


def string_close_items(n: int, seed: int = 0, *, variant: str = "both", tokenizer: object | None = None,
                       **_) -> list[Item]:
    """Closing a string: the prompt ends inside an open literal whose content is complete.

    Synthetic: ``Quoted words: "fox" and 'ink' and '''pear`` -> ``'''`` (``group``
    ``synthetic <quote>``). Code (``group`` ``code:docstring`` or ``code:string``): a one-line
    docstring after a solved function, ``def total(xs):\\n    \"\"\"Sum of xs`` -> ``\"\"\"``, or
    ``def parity(n):\\n    return 'even`` -> ``'``. Wrong answers: the other quote family, single
    and triple, and a newline (a string left open). Prompt + answer + ``meta["rest"]`` is valid
    Python (after ``Quoted words: ``), with any wrong answer it is not.

    >>> it = string_close_items(1, seed=0, variant="code")[0]
    >>> it.answer in ('"', "'", '\"\"\"', "'''"), it.answer in it.wrong
    (True, False)
    """
    rng = random.Random(seed)
    return _draw_items(n, rng, {"synthetic": _string_synthetic, "code": _string_code},
                       _check_variant(variant), tokenizer)


# ----------------------------------------------------------------------------- binding
# owners and things of the synthetic variant; every owner starts with its own letter
_OWNERS = ("Ann Ben Carl Dora Eve Fred Gina Hugo Ivy Jack Kate Leo Mia Nora Omar Paul Quinn Rosa Sam Tom "
           "Uma Vera Will Yara Zoe").split()
_THINGS = "cat dog fish bird horse car bike boat kite lamp book ring hat drum coin key".split()
# code names by the type of value they hold; a use site accepts exactly one type
_TYPED_NAMES = {
    "int": "count total width limit offset age number height year quantity".split(),
    "str": "label greeting name prefix word message city title user path".split(),
    "list": "items values rows points parts ids colors keys batch entries".split(),
}
_USE_SITES = {"int": "    result = 100 -", "str": "    result = 'Hello ' +", "list": "    result = [0] +"}


def _typed_value(rng: random.Random, kind: str) -> str:
    if kind == "int":
        return str(rng.randint(2, 99))
    if kind == "str":
        return repr(rng.choice(_QUOTE_WORDS))
    return "[" + ", ".join(str(rng.randint(0, 9)) for _ in range(rng.randint(2, 4))) + "]"


def _distinct_initials(pool: list[str], taken: list[str], k: int, rng: random.Random) -> list[str]:
    """Up to ``k`` names of ``pool`` whose first letters no name of ``taken`` (nor each other) has."""
    out: list[str] = []
    for name in rng.sample(pool, len(pool)):
        if len(out) < k and name[0] not in {t[0] for t in taken + out}:
            out.append(name)
    return out


def _binding_synthetic(rng: random.Random, k: int) -> Item:
    """``Ann has a cat.\\nBen has a dog.\\nThe dog belongs to`` -> `` Ben``, its line ``k`` lines up."""
    before = rng.randint(max(0, 3 - k), 2)            # at least two other owners to choose from
    owners = rng.sample(_OWNERS, before + k + 1)
    things = rng.sample(_THINGS, before + k)
    lines = [f"{o} has a {t}." for o, t in zip(owners, things)]
    target = before                                   # its line is k lines above the question
    prompt = "\n".join(lines) + f"\nThe {things[target]} belongs to"
    others = [o for i, o in enumerate(owners[:-1]) if i != target]
    wrong = rng.sample(others, 2) + [owners[-1]]      # two listed owners, one never mentioned
    return Item(prompt, f" {owners[target]}", tuple(f" {w}" for w in wrong), f"synthetic k={k}",
                {"rest": ".", "distance": k, "kind": "synthetic"})


def _binding_code(rng: random.Random, k: int) -> Item:
    """A function whose last line takes a value of one type; the one name of that type was bound
    ``k`` lines above it (the others hold values of the other types)."""
    kind = rng.choice(tuple(_TYPED_NAMES))
    other = [t for t in _TYPED_NAMES if t != kind]
    before = rng.randint(max(0, 3 - k), 2)
    answer = rng.choice(_TYPED_NAMES[kind])
    pool = [(nm, t) for t in other for nm in _TYPED_NAMES[t]]
    fillers = rng.sample(pool, before + k - 1)
    wrong = _distinct_initials([nm for nm, _ in fillers], [answer], 2, rng)
    wrong += _distinct_initials([nm for nm in _TYPED_NAMES[kind] if nm != answer], [answer] + wrong, 1, rng)
    if len(wrong) < 3:                                # rare: first letters collide; draw again
        return _binding_code(rng, k)
    lines = [f"    {nm} = {_typed_value(rng, t)}" for nm, t in fillers]
    lines.insert(before, f"    {answer} = {_typed_value(rng, kind)}")
    prompt = "def compute():\n" + "\n".join(lines) + "\n" + _USE_SITES[kind]
    return Item(prompt, f" {answer}", tuple(f" {w}" for w in wrong), f"code:{kind} k={k}",
                {"rest": "\n    return result\n", "distance": k, "kind": "code", "type": kind,
                 "function": "compute"})


def _binding_undefined(rng: random.Random, k: int) -> Item:
    """A Python session that prints a name: its value if it is bound (``k`` lines above), else the
    ``Traceback`` of a ``NameError`` (a name never bound, or a bound one misspelled)."""
    names = rng.sample(_TYPED_NAMES["int"], max(k, 3))
    values = [str(v) for v in rng.sample(range(1, 10), len(names))]  # distinct first digits
    values = [v + str(rng.randint(0, 9)) for v in values]
    lines = [f">>> {nm} = {v}" for nm, v in zip(names, values)]
    target = len(names) - k
    if rng.random() < 0.5:
        query, answer, group = names[target], values[target], f"undefined:bound k={k}"
        wrong = ["Traceback"] + rng.sample([v for v in values if v != answer], 2)
    else:
        spare = [nm for nm in _TYPED_NAMES["int"] if nm not in names]
        word = names[target]
        typo = word[0] + word[2] + word[1] + word[3:] if word[1] != word[2] else word + "s"
        query = rng.choice(spare) if rng.random() < 0.5 else typo
        answer, group, wrong = "Traceback", "undefined:name_error", rng.sample(values, min(3, len(values)))
    prompt = "\n".join(lines) + f"\n>>> print({query})\n"
    return Item(prompt, answer, tuple(wrong), group,
                {"rest": " (most recent call last):\n" if answer == "Traceback" else "\n",
                 "distance": k, "query": query, "kind": "undefined"})


def binding_items(n: int, seed: int = 0, *, variant: str = "both", distance: int | tuple[int, ...] = (1, 2, 4, 8),
                  tokenizer: object | None = None, **_) -> list[Item]:
    """Binding: use a name bound ``k`` lines earlier (``distance``: k, or the ks to draw from, 1-8).

    Synthetic (``group`` ``synthetic k=<k>``): ``Ann has a cat.\\nBen has a dog.\\nThe cat belongs
    to`` -> `` Ann``; wrong: two other listed owners and one never mentioned. Code (``group``
    ``code:<type> k=<k>``): ``def compute():`` binds names to ints, strings and lists, one name per
    line, and ends ``    result = 100 -`` (an int fits), ``'Hello ' +`` (a string) or ``[0] +`` (a
    list) -> the one name of that type, bound k lines up; wrong: two bound names of other types (a
    ``TypeError``) and one of the right kind never bound (a ``NameError``). ``variant="undefined"``
    (also the probe ``binding_undefined``): a Python session binds ints and then prints a name;
    the answer is its value (``group`` ``undefined:bound k=<k>``) or, for a name never bound or a
    bound one misspelled, ``Traceback`` (``undefined:name_error``); wrong: ``Traceback`` or the values.

    >>> it = binding_items(1, seed=0, variant="synthetic", distance=3)[0]
    >>> it.group, it.answer.strip() in it.prompt
    ('synthetic k=3', True)
    """
    ks = (distance,) if isinstance(distance, int) else tuple(distance)
    if not ks or min(ks) < 1 or max(ks) > 8:
        raise PrunescopeError(f"binding distance must be 1-8 lines, got {distance}")
    rng = random.Random(seed)

    def at_distance(make: Callable[[random.Random, int], Item]) -> Callable[[random.Random], Item]:
        return lambda r: make(r, r.choice(ks))

    draws = {"synthetic": at_distance(_binding_synthetic), "code": at_distance(_binding_code),
             "undefined": at_distance(_binding_undefined)}
    return _draw_items(n, rng, draws, _check_variant(variant, VARIANTS + ("undefined",)), tokenizer)


def binding_undefined_items(n: int, seed: int = 0, *, distance: int | tuple[int, ...] = (1, 2, 4, 8),
                            tokenizer: object | None = None, **_) -> list[Item]:
    """:func:`binding_items` with ``variant="undefined"``: print a bound name's value, or the
    ``Traceback`` of a name that was never bound.

    >>> sorted({it.group.split()[0] for it in binding_undefined_items(20)})
    ['undefined:bound', 'undefined:name_error']
    """
    return binding_items(n, seed, variant="undefined", distance=distance, tokenizer=tokenizer)


# ----------------------------------------------------------------------------- indentation
# functions of a list of ints ``xs``; ``|`` marks a line after which a prompt may end. Body lines
# end with a letter or digit: byte-level BPE rules split those from a newline.
_INDENT_TEMPLATES = (
    ("def {fn}(xs):\n    {acc} = 0\n    for {v} in xs:\n        if {v} > {c}:\n            {acc} += 1|\n"
     "    return {acc}\n"),
    ("def {fn}(xs):\n    {acc} = 0\n    for {v} in xs:\n        if {v} > 0:\n            {acc} += {v}|\n"
     "        elif {v} < 0:\n            {acc} -= {v}|\n        else:\n            {acc} += {c}|\n"
     "    return {acc}\n"),
    ("def {fn}(xs):\n    {acc} = xs[0]\n    for {v} in xs:\n        if {v} > {acc}:\n            {acc} = {v}|\n"
     "    return {acc}\n"),
    ("def {fn}(xs):\n    {acc} = 0\n    for {v} in xs:\n        try:\n            {acc} += {c} // {v}|\n"
     "        except ZeroDivisionError:\n            {acc} += 1|\n    return {acc}\n"),
    ("def {fn}(xs):\n    {acc} = 0\n    for {v} in xs:\n        for {w} in xs:\n            {acc} += {v} * {w}|\n"
     "        {acc} -= {v}|\n    return {acc}\n"),
    ("def {fn}(xs):\n    for {v} in xs:\n        if {v} < -{c}:\n            return {v}|\n    return {c}\n"),
    ("def {fn}(xs):\n    {acc} = 0\n    for {v} in xs:\n        if {v} == {c}:\n            break|\n"
     "        {acc} += {v}|\n    return {acc}\n"),
)
_INDENT_NAMES = {"fn": ("score", "tally", "measure", "summarize", "process", "analyze", "reduce_all"),
                 "acc": ("total", "count", "result", "acc", "best", "value"),
                 "v": ("x", "item", "n", "a"), "w": ("y", "other", "b", "m")}


def _indent_split(prompt: str, rest: str, width: int) -> tuple[str, str, str, tuple[str, ...]]:
    """Move the next line's newline, indentation and first word from ``rest`` into the answer.

    The prompt does not tell which word comes next, and often several levels could hold some next
    line, so the wrong answers are the levels no next line can take: one deeper than the last
    line (it opens no block), half a step back (no block is open there), the last line's own level
    after ``return`` / ``break`` / ``continue`` / ``raise`` (dead code) and none at all (the function
    is not done: it has not returned its result)."""
    line = rest[1:].split("\n", 1)[0]
    indent = len(line) - len(line.lstrip(" "))
    word = re.match(r"[A-Za-z_]+", line[indent:]).group(0)
    last = prompt.rsplit("\n", 1)[-1]
    level = len(last) - len(last.lstrip(" "))
    levels = [0, level - width // 2, level + width]
    if last.split()[0] in ("return", "break", "continue", "raise"):
        levels.append(level)
    answer = "\n" + " " * indent + word
    wrong = tuple("\n" + " " * lv + word for lv in sorted(set(levels)) if lv != indent)
    return answer, rest[len(answer):], word, wrong


def _indent_code(rng: random.Random) -> Item:
    """A function cut at the end of a block's last line; the answer is the next line's indentation."""
    t = rng.randrange(len(_INDENT_TEMPLATES))
    names = {key: rng.choice(pool) for key, pool in _INDENT_NAMES.items()}
    names["w"] = rng.choice([w for w in _INDENT_NAMES["w"] if w != names["v"]])
    text = _INDENT_TEMPLATES[t].format(c=rng.randint(1, 9), **names)
    parts = text.split("|")
    cut = rng.randrange(len(parts) - 1)
    prompt, rest = "".join(parts[: cut + 1]), "".join(parts[cut + 1:])
    answer, rest, word, wrong = _indent_split(prompt, rest, 4)
    depth = (len(answer) - len(word) - 1) // 4
    return Item(prompt, answer, wrong, f"code:{word if word in ('return', 'elif', 'else', 'except') else 'statement'}",
                {"rest": rest, "level": depth, "function": names["fn"], "template": t, "kind": "code"})


def _outline_lines(branching: int, depth: int) -> list[tuple[int, str]]:
    """``(level, label)`` of a complete tree in preorder: ``1``, ``1.1``, ``1.1.1``, ``1.1.2``, ..."""
    out: list[tuple[int, str]] = []

    def walk(label: str, level: int) -> None:
        out.append((level, label))
        if level + 1 < depth:
            for i in range(1, branching + 1):
                walk(f"{label}.{i}", level + 1)

    for i in range(1, branching + 1):
        walk(str(i), 0)
    return out


def _indent_synthetic(rng: random.Random) -> Item:
    """A numbered outline (two spaces a level) cut before a dedent, after one whole top-level part."""
    branching, depth = rng.choice(((2, 3), (3, 2), (2, 4), (4, 2)))
    lines = _outline_lines(branching, depth)
    first = len(lines) // branching                   # lines of the first top-level part
    cuts = [i for i in range(first, len(lines) - 1) if lines[i + 1][0] < lines[i][0]]
    cut = rng.choice(cuts)
    text = ["  " * lv + label for lv, label in lines]
    prompt = "Outline:\n" + "\n".join(text[: cut + 1])
    rest = "\n" + "\n".join(text[cut + 1:]) + "\n"
    level, label = lines[cut + 1]
    answer = "\n" + "  " * level + label
    wrong = tuple("\n" + "  " * lv + label for lv in range(lines[cut][0] + 2) if lv != level)
    return Item(prompt, answer, wrong, f"synthetic dedent={lines[cut][0] - level}",
                {"rest": rest[len(answer):], "level": level, "branching": branching, "depth": depth,
                 "kind": "synthetic"})


def indentation_items(n: int, seed: int = 0, *, variant: str = "both", tokenizer: object | None = None,
                      **_) -> list[Item]:
    """Indentation: the right dedent after a block, as the newline, the spaces and the next word.

    The prompt ends at the end of a block's last line rather than at the start of the next one:
    byte-level BPE tokenizers put a newline and the following spaces into one token, so the answer
    starts with the newline. Code (``group`` ``code:return|elif|else|except|statement``): a small
    function of ``xs`` cut after an ``if`` / ``for`` / ``try`` body, ``...\\n            count +=
    1`` -> ``\\n    return``; only that level is valid Python or gives the function's result.
    Synthetic (``group`` ``synthetic dedent=<levels>``): a numbered outline, two spaces a level,
    ``Outline:\\n1\\n  1.1\\n    1.1.1\\n    1.1.2`` -> ``\\n  1.2``. Wrong answers: the same word at
    levels it cannot take. In the outline that is every other level, from none to one deeper than
    the last line; in code, where the prompt does not tell which word comes next and often several
    levels could hold some next line, it is the levels no next line can take: one deeper (the last
    line opens no block), half a step back (no block is open there), the last line's own level
    after ``return`` / ``break`` (dead code) and none (the function has not returned its result).

    >>> it = indentation_items(1, seed=1, variant="synthetic")[0]
    >>> it.answer.startswith("\\n"), it.answer.strip() in [w.strip() for w in it.wrong]
    (True, True)
    """
    rng = random.Random(seed)
    return _draw_items(n, rng, {"synthetic": _indent_synthetic, "code": _indent_code},
                       _check_variant(variant), tokenizer)


# ----------------------------------------------------------------------------- carry_chain
def carry_chain_length(a: int, b: int, op: str) -> int:
    """The longest run of consecutive digit columns that carry (``+``) or borrow (``-``) into the next.

    >>> carry_chain_length(4999, 1, "+"), carry_chain_length(1000, 1, "-"), carry_chain_length(12, 34, "+")
    (3, 3, 0)
    """
    run = best = c = 0
    while a or b:
        x, y = a % 10, b % 10
        c = int(x + y + c >= 10) if op == "+" else int(x - y - c < 0)
        run = run + 1 if c else 0
        best = max(best, run)
        a, b = a // 10, b // 10
    return best


def _chain_operands(rng: random.Random, op: str, chain: int, digits: int) -> tuple[int, int]:
    """Operands of ``digits`` digits (the second sometimes shorter) with a carry / borrow chain of at
    least ``chain`` columns: one column starts it, the next ones pass it on (``9 + 0``, ``0 - 0``)."""
    for _ in range(10_000):
        start = rng.randint(0, digits - chain - (op == "-"))
        short = rng.random() < 0.5                        # 4999 + 1 / 1000 - 1: b stops at the start
        xs, ys = [], []
        for col in range(digits):
            if col == start:
                x = rng.randint(1, 9) if op == "+" else rng.randint(0, 8)
                y = rng.randint(10 - x, 9) if op == "+" else rng.randint(x + 1, 9)
            elif start < col < start + chain:
                y = 0 if short else rng.randint(0, 9)
                x = 9 - y if op == "+" else y
            else:
                x, y = rng.randint(0, 9), 0 if short and col > start else rng.randint(0, 9)
            xs.append(x)
            ys.append(y)
        a, b = (int("".join(map(str, reversed(v)))) for v in (xs, ys))
        if xs[-1] and (op == "+" or a > b) and carry_chain_length(a, b, op) >= chain:
            return a, b
    raise PrunescopeError(f"no {op} operands of {digits} digits with a chain of {chain}")


def _chain_wrong(a: int, b: int, op: str, rng: random.Random) -> tuple[str, ...]:
    """The answer without any carry (digit by digit), with one carry dropped, then near numbers."""
    value = OPERATORS[op](a, b)
    width = len(str(a))
    digitwise = int("".join(str((int(x) + int(y)) % 10 if op == "+" else (int(x) - int(y)) % 10)
                            for x, y in zip(str(a).zfill(width), str(b).zfill(width))))
    ten = 10 ** rng.randint(1, max(1, width - 1))
    cands = [digitwise, value - ten if op == "+" else value + ten] + [int(w) for w in _wrong_numbers(value, rng, 6)]
    out: list[str] = []
    for c in cands:
        s = str(c)
        if c >= 0 and s not in out and not s.startswith(str(value)) and not str(value).startswith(s):
            out.append(s)
    return tuple(out[:4])


def carry_chain_items(n: int, seed: int = 0, *, variant: str = "both", chain: int = 3, digits: int | None = None,
                      ops: str | tuple[str, ...] = ("+", "-"), shots: int = 0, tokenizer: object | None = None,
                      **_) -> list[Item]:
    """Addition and subtraction whose carry / borrow runs through at least ``chain`` digit columns.

    Synthetic: ``Question: What is 4999 + 1? Answer:`` -> `` 5000`` (the ``arithmetic_multi``
    format); code: a Python session, ``>>> 4999 + 1\\n`` -> ``5000``. ``digits`` (default chain + 1)
    is the first operand's digit count; ``group`` is ``<variant> <op> chain=<longest chain>``.
    Wrong answers: the digit-by-digit answer with no carry, one carry dropped, then near numbers.
    ``shots`` prepends solved examples of the same kind (drawn from a separate seed).

    >>> it = carry_chain_items(1, seed=0, variant="code", chain=3)[0]
    >>> carry_chain_length(it.meta["a"], it.meta["b"], it.meta["op"]) >= 3
    True
    """
    ops = tuple(ops.split(",")) if isinstance(ops, str) else tuple(ops)
    digits = chain + 1 if digits is None else digits
    if not ops or any(o not in ("+", "-") for o in ops):
        raise PrunescopeError(f"carry_chain takes the operators + and -, got {ops}")
    if chain < 1 or not chain + ("-" in ops) <= digits <= 9:
        raise PrunescopeError(f"carry_chain needs 1 <= chain <= digits <= 9 (digits > chain for -), "
                              f"got chain={chain}, digits={digits}")
    _check_variant(variant)

    def draw(rng: random.Random, kind: str) -> Item:
        op = rng.choice(ops)
        a, b = _chain_operands(rng, op, chain, digits)
        v = OPERATORS[op](a, b)
        wrong = _chain_wrong(a, b, op, rng)
        meta = {"a": a, "b": b, "op": op, "value": v, "rest": "\n", "kind": kind, "shots": shots}
        group = f"{kind} {op} chain={carry_chain_length(a, b, op)}"
        if kind == "code":
            return Item(f">>> {a} {op} {b}\n", str(v), wrong, group, meta)
        return Item(f"Question: What is {a} {op} {b}? Answer:", f" {v}", tuple(f" {w}" for w in wrong), group, meta)

    def with_shots(kind: str) -> Callable[[random.Random], Item]:
        shot_rng = random.Random(f"shots-{seed}")
        prefix = "".join(it.prompt + it.answer + "\n" for it in (draw(shot_rng, kind) for _ in range(shots)))

        def one(rng: random.Random) -> Item:
            it = draw(rng, kind)
            return Item(prefix + it.prompt, it.answer, it.wrong, it.group, it.meta)
        return one

    return _draw_items(n, random.Random(seed), {"synthetic": with_shots("synthetic"), "code": with_shots("code")},
                       variant, tokenizer)


# ----------------------------------------------------------------------------- counting
_COUNT_WORDS = "cat dog fox owl bee cow pig hen ant elk".split()


def _count_wrong(count: int, width: str = " ") -> tuple[str, ...]:
    """The counts one and two away (0-9: one digit, so none is a prefix of another)."""
    return tuple(f"{width}{c}" for c in (count + 1, count - 1, count + 2, count - 2) if 0 <= c <= 9)


def _counting_synthetic(rng: random.Random, length: int) -> Item:
    """``Words: cat dog cat fox. How many times does cat appear? Answer:`` -> `` 2``."""
    size = rng.randint(3, length)
    target, *others = rng.sample(_COUNT_WORDS, 4)
    count = rng.randint(1, min(size - 1, 5))
    words = [target] * count + [rng.choice(others) for _ in range(size - count)]
    rng.shuffle(words)
    prompt = f"Words: {' '.join(words)}. How many times does {target} appear? Answer:"
    return Item(prompt, f" {count}", _count_wrong(count), f"synthetic count={count}",
                {"rest": "\n", "count": count, "word": target, "kind": "synthetic"})


def _counting_code(rng: random.Random, length: int) -> Item:
    """A Python session: ``>>> len([7, 'b', 2])`` or the arguments of a call, ``>>> nargs(4, 'a')``."""
    count = rng.randint(1, min(length, 9))
    elems = [str(rng.randint(0, 9)) if rng.random() < 0.5 else repr(rng.choice(_QUOTE_WORDS)) for _ in range(count)]
    if rng.random() < 0.5:
        prompt, kind = f">>> len([{', '.join(elems)}])\n", "list"
    else:
        prompt = f">>> def nargs(*args):\n...     return len(args)\n...\n>>> nargs({', '.join(elems)})\n"
        kind = "call"
    return Item(prompt, str(count), _count_wrong(count, ""), f"code:{kind} count={count}",
                {"rest": "\n", "count": count, "kind": kind})


def counting_items(n: int, seed: int = 0, *, variant: str = "both", length: int = 7,
                   tokenizer: object | None = None, **_) -> list[Item]:
    """Counting: how many times a word appears in a short list, or how many items a list literal or
    a call has (lists of up to ``length`` items, at most 9).

    Synthetic (``group`` ``synthetic count=<c>``): ``Words: cat dog cat fox. How many times does cat
    appear? Answer:`` -> `` 2`` (1-5 times). Code, a Python session (``group`` ``code:list|call
    count=<c>``): ``>>> len([7, 'owl', 2])\\n`` -> ``3``, or ``>>> nargs(4, 'fig')\\n`` -> ``2``
    after ``def nargs(*args): return len(args)``. Wrong answers: the counts one and two away.

    >>> it = counting_items(1, seed=0, variant="code")[0]
    >>> it.prompt.splitlines()[-1], it.answer
    (">>> nargs(6, 8, 4, 'oak', 'zebra', 'gold', 1)", '7')
    """
    if not 3 <= length <= 9:
        raise PrunescopeError(f"counting length must be 3-9 items, got {length}")
    rng = random.Random(seed)
    draws = {"synthetic": lambda r: _counting_synthetic(r, length), "code": lambda r: _counting_code(r, length)}
    return _draw_items(n, rng, draws, _check_variant(variant), tokenizer)


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
PROBES.register("string_close", string_close_items, help="close an open string or docstring (synthetic, code)")
PROBES.register("binding", binding_items, help="use the name bound k lines earlier (synthetic, code)")
PROBES.register("binding_undefined", binding_undefined_items, help="print a bound name's value or a NameError")
PROBES.register("indentation", indentation_items, help="the right dedent after a block (outline, code)")
PROBES.register("carry_chain", carry_chain_items, help="+ and - with a carry / borrow chain of k digits")
PROBES.register("counting", counting_items, help="count a word in a list, items in a list or call")


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
