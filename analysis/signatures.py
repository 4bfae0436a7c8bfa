"""Failure signatures of generated text: wrong arithmetic steps, broken brackets, degeneration.

The paper ("On the Limits of Layer Pruning ...") reads pruning damage off the responses themselves:
chain-of-thought steps whose arithmetic is wrong ("32 x 6 = 364"), generated code whose brackets
do not pair up (``arr[n - 1 - i)``), and repetition (Rep-4, intra-response Self-BLEU-4). This module
measures each one per response and aggregates them into tidy rows (``prunescope.core.results.COLUMNS``).

>>> [s["ok"] for s in arithmetic_steps("So 32 x 6 = 364, and 12 + 7 = 19.")]
[False, True]
>>> check_brackets("def f(x):\\n    return (x + [1, 2)")["mismatched"][0][:2]
('[', ')')
>>> rep_n("a b c d a b c d a b c d")   # 9 four-grams, 4 distinct: 5 repeat an earlier one
0.5555555555555556
"""

from __future__ import annotations

import io
import math
import re
import tokenize
from collections import defaultdict
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

from prunescope.core.results import COLUMNS, read_jsonl

# The paper's HumanEval failure taxonomy (prunescope.analysis.code_eval.failure_kinds sorts each failing program
# by the first thing that goes wrong): it does not compile (syntax or bracket error); it names
# something not defined (NameError, UnboundLocalError, no entry point); evalplus timed it out; it
# runs but an answer is wrong (assertion failure); or it raises anything else.
FAILURE_KINDS = ("syntax", "name", "timeout", "assertion", "other")

# ---------------------------------------------------------------- arithmetic steps in chain of thought

# A number as models write it in word problems: optional sign (only where it cannot be a binary minus,
# see _NUM_START), optional "$", thousands separators only in groups of three (so "1,2,3" is a list,
# not a number), optional decimals and an optional "%".
_UNSIGNED = r"\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?"
_NUM = rf"-?{_UNSIGNED}"
# Operators: "x"/"X" count only before a number or "(" (the expression regex guarantees a number
# before), so algebra such as "3x + 2 = 11" or "4x-13" is never read as a multiplication.
_OP = r"(?:[+\-\u2212*/\u00d7\u00f7\u00b7\u22c5]|[xX](?=\s*[\d$(]))"
# A number must not continue a word, a number, a date or a time ("2023-01-05", "v1.2", "3:30", "a-3").
_NUM_START = r"(?<![\w.,:/$\-\u2212])"
# Every optional space belongs to exactly one "(" / ")" / operator, never two adjacent ``\s*``: a long
# chain with no "=" ("15 - 15 - 15 ...", as degenerate generations write) would otherwise backtrack
# through every split of its spaces (exponential time).
_ATOM = rf"(?:\(\s*)*{_NUM}(?:\s*\))*"
_STEP = re.compile(
    rf"{_NUM_START}(?P<lhs>{_ATOM}(?:\s*{_OP}\s*{_ATOM})+)\s*=\s*"
    # the right-hand side is read in a lookahead, so in "2 + 3 = 5 * 2 = 10" both steps are found
    rf"(?=(?P<rhs>{_NUM})(?![\d])(?P<rhs_tail>(?:\s*{_OP}\s*{_ATOM})*))"
)
# "$50 - 20% = $40" means a 20% discount, not 50 - 0.2: a percent next to + or - is ambiguous, skipped
_PERCENT_CHANGE = re.compile(r"%\s*[+\-\u2212]|[+\-\u2212]\s*\$?[\d.,]+%")
_TOKEN = re.compile(rf"\s*(?:(?P<num>{_UNSIGNED})|(?P<op>{_OP})|(?P<lp>\()|(?P<rp>\)))")


def _number(text: str) -> Fraction:
    """'$1,200.50' -> 1200.5, '20%' -> 0.2 (exact, as a Fraction)."""
    t = text.replace("$", "").replace(",", "").replace("\u2212", "-")
    pct = t.endswith("%")
    value = Fraction(t.rstrip("%"))
    return value / 100 if pct else value


_OP_NAMES = {"\u2212": "-", "x": "*", "X": "*", "\u00d7": "*", "\u00b7": "*", "\u22c5": "*", "\u00f7": "/"}


def _tokens(expr: str) -> list[tuple[str, object]] | None:
    """``expr`` as ("num", Fraction) / ("op", "+-*/") / ("lp" | "rp", None) tokens; None when some
    part of it is neither."""
    tokens, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            return None
        pos = m.end()
        if m["num"]:
            tokens.append(("num", _number(m["num"])))
        elif m["op"]:
            tokens.append(("op", _OP_NAMES.get(m["op"], m["op"])))
        else:
            tokens.append((m.lastgroup, None))
    return tokens


class _Parser:
    """Recursive descent over tokens: expression = term (+|- term)*, term = atom (*|/ atom)*,
    atom = -atom | number | ( expression ). Each rule returns None on a malformed input."""

    def __init__(self, tokens: list[tuple[str, object]]):
        self.tokens, self.i = tokens, 0

    def peek(self) -> tuple[str | None, object]:
        return self.tokens[self.i] if self.i < len(self.tokens) else (None, None)

    def atom(self) -> Fraction | None:
        kind, val = self.peek()
        if kind == "op" and val == "-":          # unary minus: "-3 + 5"
            self.i += 1
            inner = self.atom()
            return None if inner is None else -inner
        if kind == "num":
            self.i += 1
            return val
        if kind == "lp":
            self.i += 1
            v = self.expression()
            if v is None or self.peek()[0] != "rp":
                return None
            self.i += 1
            return v
        return None

    def term(self) -> Fraction | None:
        v = self.atom()
        while v is not None and self.peek() in (("op", "*"), ("op", "/")):
            op = self.peek()[1]
            self.i += 1
            w = self.atom()
            if w is None or (op == "/" and w == 0):
                return None
            v = v * w if op == "*" else v / w
        return v

    def expression(self) -> Fraction | None:
        v = self.term()
        while v is not None and self.peek() in (("op", "+"), ("op", "-")):
            op = self.peek()[1]
            self.i += 1
            w = self.term()
            if w is None:
                return None
            v = v + w if op == "+" else v - w
        return v


def _evaluate(expr: str) -> Fraction | None:
    """Evaluate + - * / (and their typographic forms) with the usual precedence and parentheses.
    None when it is not a well-formed expression (unbalanced parentheses, division by zero)."""
    tokens = _tokens(expr)
    if tokens is None:
        return None
    parser = _Parser(tokens)
    value = parser.expression()
    return value if value is not None and parser.i == len(tokens) else None


def _trim_parens(lhs: str) -> str:
    """Drop parentheses that belong to the surrounding prose: "(3 + 4 = 7)" -> "3 + 4"."""
    lhs = lhs.strip()
    while lhs.startswith("(") and lhs.count("(") > lhs.count(")"):
        lhs = lhs[1:].lstrip()
    while lhs.endswith(")") and lhs.count(")") > lhs.count("("):
        lhs = lhs[:-1].rstrip()
    return lhs


def _starts_expression(text: str, start: int) -> bool:
    """Is ``text[start:]`` the beginning of a calculation, not the tail of a longer expression the
    regex cannot read?  Not when the previous non-space character is an operator ("60g * 4/5 = ...",
    "X*4 + 240 = 1920"), a digit (a number written with spaces, "$400 000 x 3", or a mixed number,
    "3 1/2 - 2"), a closing parenthesis or an opening one after a number (implicit multiplication:
    "(1/2) 278 + 11", "27(1/3)=9"), or an "x" after a number ("¾ x 3/3")."""
    before = text[:start].rstrip()
    if not before:
        return True
    prev = before[-1]
    prior = before[:-1].rstrip()[-1:]
    if prev in "+-\u2212*/\u00d7\u00f7\u00b7\u22c5^)" or prev.isnumeric():
        return False
    if prev in "(xX" and prior and (prior.isalnum() or prior == ")"):
        return False
    return True


def _close_enough(value: Fraction, shown: str) -> bool:
    """Does the written result ``shown`` state ``value``?  Exact, or rounded (half up) or truncated to
    the decimals written ("10 / 3 = 3.33", "2 / 3 = 0.66", but not "10 / 3 = 3.4"); a whole number
    may round a fraction either way ("7 / 2 = 3" or "= 4": a story may need whole boxes)."""
    if shown.endswith("%") and _close_enough(value, shown[:-1]):
        return True                                # "45 + 21 + 28 = 94%": percentages added as numbers
    written = _number(shown)
    if written == value:
        return True
    body = shown.rstrip("%")
    decimals = len(body.split(".")[1]) if "." in body else 0
    scale = Fraction(10) ** decimals * (100 if shown.endswith("%") else 1)
    v, w = value * scale, written * scale          # w is a whole number: the digits as written
    floor = math.floor(v)
    if decimals == 0:
        return v.denominator != 1 and w in (floor, floor + 1)
    return w in (floor, math.floor(v + Fraction(1, 2)))


def _fmt(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6g}"


def arithmetic_steps(text: str) -> list[dict]:
    """Every written calculation ``a op b [op c ...] = r`` in ``text``, recomputed exactly.

    Operators ``+ - * x × / ÷`` (and ``−``, ``·``), numbers with ``$``, thousands commas, decimals
    and ``%`` ("20%" = 0.2), parentheses, and chains ("3 * 4 * 2 = 24") with the usual precedence.
    Calculations written in a row ("2 + 3 = 5 * 2 = 10") give one step per ``=``. A result that is
    itself an expression ("10 + 5 = 5 + 10") is compared by value; a running total written that way
    ("5 + 3 = 8 + 2 = 10") is read as two steps. Not steps (ignored): a lone number or variable before
    ``=`` ("x = 5"), ranges and dates ("1-2 hours", "2023-01-05"; no ``=``), list numbering, algebra
    ("3x + 2 = 11"), the readable tail of an expression that is not ("X*4 + 240 = 1920", "3 1/2 - 2 =
    1 1/2", "27(1/3)=9") and percent changes ("$50 - 20% = $40"). On the 1319 GSM8K reference
    solutions this finds 4221 steps and flags one, a real slip in the data ("$32 - $20 = $300").

    Each step: ``{"text", "value" (recomputed), "result" (as written), "ok", "start"}``.

    >>> [(s["text"], s["ok"], s["value"]) for s in arithmetic_steps("32 x 6 = 364 apples")]
    [('32 x 6 = 364', False, '192')]
    >>> [s["ok"] for s in arithmetic_steps("$1,200 / 4 = $300; <<48/2=24>>; 3 * 4 * 2 = 24")]
    [True, True, True]
    """
    steps = []
    for m in _STEP.finditer(text):
        lhs = _trim_parens(m["lhs"])
        if _PERCENT_CHANGE.search(lhs) or not _starts_expression(text, m.start("lhs") + m["lhs"].index(lhs)):
            continue
        value = _evaluate(lhs)
        if value is None:
            continue
        rhs = m["rhs"]
        ok = _close_enough(value, rhs)
        tail = m["rhs_tail"]
        if not ok and tail.strip():
            # the result is written as an expression: compare its value
            rhs_value = _evaluate(_trim_parens(rhs + tail))
            ok = rhs_value is not None and rhs_value == value
        start = m.start("lhs") + (len(m["lhs"]) - len(m["lhs"].lstrip()))
        steps.append({"text": f"{lhs} = {rhs}", "value": _fmt(value), "result": rhs, "ok": bool(ok),
                      "start": start})
    return steps


# ---------------------------------------------------------------- brackets in generated Python

_PAIRS = {")": "(", "]": "[", "}": "{"}


def _bracket_tokens(code: str) -> tuple[list[tuple[str, int, int]], list[str]]:
    """``(bracket, line, col)`` of every bracket that is code (not inside a string, f-string or
    comment), from the stdlib tokenizer, plus notes on what the tokenizer could not read.

    Why the detours: indentation cannot affect brackets, so each line's leading whitespace is
    removed before tokenizing (a bad dedent in a pruned model's code would otherwise stop the
    tokenizer with an IndentationError); an unterminated one-line string ends its line, and
    tokenizing restarts on the next line; an unterminated triple-quoted string runs to the end.
    f-strings count as strings on every Python version (3.12+ tokenizes their inside)."""
    lines = code.splitlines(keepends=True)
    stripped = [ln.lstrip(" \t\f") for ln in lines]
    indent = [len(a) - len(b) for a, b in zip(lines, stripped)]
    found: list[tuple[str, int, int]] = []
    notes: list[str] = []
    start = 0
    while start < len(lines):
        restart = None
        fstring_depth = 0
        try:
            for tok in tokenize.generate_tokens(io.StringIO("".join(stripped[start:])).readline):
                line = start + tok.start[0]           # 1-based line in ``code``
                name = tokenize.tok_name[tok.type]
                if name == "FSTRING_START":
                    fstring_depth += 1
                elif name == "FSTRING_END":
                    fstring_depth -= 1
                elif tok.type == tokenize.ERRORTOKEN and tok.string[:1] in "'\"":
                    # Python 3.11 marks an unterminated one-line string this way and goes on
                    notes.append(f"line {line}: unterminated string")
                    restart = line
                    break
                elif tok.type == tokenize.OP and tok.string in "()[]{}" and not fstring_depth:
                    found.append((tok.string, line, tok.start[1] + indent[line - 1]))
        except tokenize.TokenError as e:
            msg, (err_line, _) = e.args[0], e.args[1]
            if "multi-line statement" in msg:
                pass                                   # unclosed brackets at the end: the stack reports them
            elif "multi-line string" in msg:
                notes.append(f"line {start + err_line}: unterminated triple-quoted string")
            else:                                      # 3.12+: unterminated string, bad f-string
                what = "unterminated string" if "unterminated string" in msg else msg
                notes.append(f"line {start + err_line}: {what}")
                restart = start + err_line
        except SyntaxError as e:                       # e.g. a stray character the tokenizer rejects
            notes.append(f"line {start + (e.lineno or 1)}: {e.msg}")
            restart = start + (e.lineno or 1)
        if restart is None or restart <= start:
            break
        start = restart
    return found, notes


def check_brackets(code: str) -> dict:
    """Bracket balance of Python source that may be cut off: brackets in strings and comments do not
    count (stdlib ``tokenize``). A closer that does not match the innermost open bracket is a
    mismatch (as CPython reports it) and closes that bracket; a closer with nothing open is extra;
    brackets still open at the end are unclosed (often just a truncated generation).

    Returns ``{"brackets", "unclosed", "extra", "mismatched", "unbalanced", "mismatch", "balanced",
    "notes", "first_problem_line"}``; ``unclosed`` / ``extra`` hold ``(bracket, line, col)``,
    ``mismatched`` holds ``(opener, closer, line, col)`` at the closer.

    >>> check_brackets("print('(')  # )")["balanced"]
    True
    >>> r = check_brackets("foo(a, (b"); (r["unbalanced"], [b for b, _, _ in r["unclosed"]])
    (True, ['(', '('])
    """
    found, notes = _bracket_tokens(code)
    stack: list[tuple[str, int, int]] = []
    extra, mismatched = [], []
    for ch, line, col in found:
        if ch in "([{":
            stack.append((ch, line, col))
        elif not stack:
            extra.append((ch, line, col))
        else:
            opener = stack.pop()
            if opener[0] != _PAIRS[ch]:
                mismatched.append((opener[0], ch, line, col))
    problems = [x[1] for x in stack + extra] + [x[2] for x in mismatched]
    return {"brackets": len(found), "unclosed": stack, "extra": extra, "mismatched": mismatched,
            "unbalanced": bool(stack or extra), "mismatch": bool(mismatched),
            "balanced": not (stack or extra or mismatched), "notes": notes,
            "first_problem_line": min(problems) if problems else None}


_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)


def program_text(task: str, prompt: str, response: str) -> tuple[str, int]:
    """The program whose brackets are checked, and the line where the response starts in it.

    A fenced block in the response (```` ```python ... ``` ````, possibly cut off) is taken as the
    code. HumanEval-style tasks are completions: the prompt opens the function, so the program is
    prompt + completion (the prompt's own brackets are balanced, so a full function written again
    in the response changes nothing). Other code tasks (MBPP) have prose prompts: response only.
    """
    m = _FENCE.search(response)
    code = m.group(1) if m else response
    if "humaneval" in task.lower():
        return prompt + code, prompt.count("\n") + 1
    return code, 1


# ---------------------------------------------------------------- degeneration

def rep_n(text: str, n: int = 4, chars: bool = False) -> float | None:
    """Rep-n of one response: the fraction of its n-grams that repeat an n-gram seen earlier in the
    same response, = 1 - distinct n-grams / all n-grams (seq-rep-n of Welleck et al. 2019, as in the
    paper's reference code). Grams are over whitespace tokens (case kept), or over characters with
    ``chars=True``. None for fewer than n tokens (characters).

    Why characters too: a pruned model's runaway answer such as "2000000…" or "1-1-1-1-…" is one
    whitespace token, so word Rep-4 is undefined for exactly the most degenerate responses;
    character Rep-16 scores it near 1 and tracks word Rep-4 on ordinary text.

    >>> rep_n("the cat sat on the mat")       # 3 four-grams, all distinct
    0.0
    >>> round(rep_n("# 2" + "0" * 200, 16, chars=True), 2)   # word Rep-4: None
    0.98
    """
    tokens = text if chars else text.split()
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return None
    return 1.0 - len(set(grams)) / len(grams)


_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    """Lines, and sentences within lines (split after . ! ? followed by whitespace, so "3.5" stays)."""
    return [s.strip() for s in _SENT_SPLIT.split(text) if s and s.strip()]


def self_bleu(text: str, n: int = 4, max_sentences: int = 50) -> float | None:
    """Intra-response Self-BLEU-n: each sentence (or line) scored with BLEU-n against the response's
    other sentences as references, then averaged; high = the response repeats itself.

    Same recipe as the paper's reference code: lower-cased NLTK word tokens, ``sentence_bleu`` with
    uniform weights and smoothing method 1, hypotheses and references of fewer than n tokens skipped
    (sentence splitting is a regex here, so it needs no NLTK data download). Only the first
    ``max_sentences`` sentences are used (a degenerate response repeats the same few anyway; the
    cost is quadratic). None when fewer than two sentences are long enough.

    >>> self_bleu("The cat sat on the mat. The cat sat on the mat. The cat sat on the mat.")
    1.0
    """
    from nltk.tokenize import NLTKWordTokenizer
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    tok = NLTKWordTokenizer()
    sents = [tok.tokenize(s.lower()) for s in sentences(text)[:max_sentences]]
    sents = [s for s in sents if len(s) >= n]
    if len(sents) < 2:
        return None
    weights = (1.0 / n,) * n
    smooth = SmoothingFunction().method1
    scores = [sentence_bleu(sents[:i] + sents[i + 1:], hyp, weights=weights, smoothing_function=smooth)
              for i, hyp in enumerate(sents)]
    return float(sum(scores) / len(scores))


# ---------------------------------------------------------------- per sample and aggregated

def task_kind(task: str) -> str:
    """``math`` (GSM8K: arithmetic steps, Rep-4, Self-BLEU), ``code`` (HumanEval / MBPP: brackets,
    Rep-4) or ``text`` (XSum and any other generative task: Rep-4, Self-BLEU)."""
    t = task.lower()
    if "gsm8k" in t:
        return "math"
    if "humaneval" in t or "mbpp" in t:
        return "code"
    return "text"


def signature(sample: dict, model: str = "", stage: str = "") -> dict:
    """The failure signatures of one generated response (see :func:`signatures_for_samples`)."""
    task = str(sample.get("task", ""))
    response = str(sample.get("response") or "")
    kind = task_kind(task)
    rec = {"model": sample.get("model", model), "stage": sample.get("stage", stage), "task": task,
           "doc_id": sample.get("doc_id"), "correct": sample.get("correct"), "kind": kind,
           "response": response, "rep4": rep_n(response, 4), "char_rep16": rep_n(response, 16, chars=True),
           "self_bleu4": None,
           "steps": [], "n_steps": None, "n_wrong_steps": None,
           "unbalanced": None, "mismatch": None, "unterminated_string": None, "brackets": None,
           "bracket_excerpt": None,
           "failure": None, "executed": False}
    if kind in ("math", "text"):
        rec["self_bleu4"] = self_bleu(response, 4)
    if kind == "math":
        rec["steps"] = arithmetic_steps(response)
        rec["n_steps"] = len(rec["steps"])
        rec["n_wrong_steps"] = sum(not s["ok"] for s in rec["steps"])
    if kind == "code":
        reply = sample.get("reply")
        if reply is not None:
            # a chat reply as the model wrote it: the scored program went through evalplus.sanitize,
            # which drops the code that does not parse, and with it the bracket errors
            code, first_line = str(reply), 1
        else:
            code, first_line = program_text(task, str(sample.get("prompt") or ""), response)
        b = check_brackets(code)
        # past an open string or docstring the code cannot be read, so its brackets are not judged:
        # a reply that loops inside a docstring is its own failure, not a balanced program
        open_string = any("unterminated" in note for note in b["notes"])
        rec.update(brackets=b, unterminated_string=open_string,
                   unbalanced=None if open_string else b["unbalanced"], mismatch=None if open_string else b["mismatch"])
        # the execution taxonomy (prunescope.analysis.code_eval.failure_kinds), where the sample carries it
        # (samples written before it existed have no "failure" key: no rates from them)
        rec["executed"] = "failure" in sample
        rec["failure"] = sample.get("failure")
        if b["first_problem_line"] is not None:
            lines = code.splitlines()
            i = b["first_problem_line"] - 1
            where = "response" if b["first_problem_line"] >= first_line else "prompt"
            excerpt = "\n".join(lines[max(0, i - 2): i + 1])
            problems = ([f"{o}...{c} mismatched" for o, c, _, _ in b["mismatched"]]
                        + [f"{c} unclosed" for c, _, _ in b["unclosed"]] + [f"{c} extra" for c, _, _ in b["extra"]])
            rec["bracket_excerpt"] = f"{'; '.join(problems)} (line {i + 1}, in the {where}):\n{excerpt}"
    return rec


def is_choice_sample(sample: dict) -> bool:
    """A multiple-choice (classification) sample: ``category`` says so, or its ``scores`` are acc /
    acc_norm (how ``prunescope.analysis.evaluate`` writes them)."""
    if str(sample.get("category", "")).lower() == "classification":
        return True
    scores = sample.get("scores")
    return isinstance(scores, dict) and bool(scores) and set(scores) <= {"acc", "acc_norm"}


def signatures_for_samples(samples: Iterable[dict], model: str = "", stage: str = "",
                           show_progress: bool = False) -> list[dict]:
    """One record per generated response ``{"task", "doc_id", "prompt", "response", "target",
    "correct"}`` (a sample's own ``model`` / ``stage`` keys win over the arguments); multiple-choice
    samples (:func:`is_choice_sample`) are skipped.

    Record keys: model, stage, task, doc_id, correct, kind, response, rep4, char_rep16, self_bleu4 (None where the
    response is too short or not applicable), steps / n_steps / n_wrong_steps (math), brackets /
    unbalanced / mismatch / bracket_excerpt (code).

    >>> r = signatures_for_samples([{"task": "gsm8k", "response": "32 x 6 = 364. So 364."}], "m", "base")
    >>> (r[0]["n_steps"], r[0]["n_wrong_steps"])
    (1, 1)
    """
    # the eval writes samples for multiple-choice tasks too (response = the chosen option): no signatures
    samples = [s for s in samples if not is_choice_sample(s)]
    if show_progress and samples:   # no empty bar for a multiple-choice task's file
        from tqdm.auto import tqdm

        samples = tqdm(samples, desc=f"signatures {stage}".strip(), unit="resp")
    return [signature(s, model, stage) for s in samples]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def aggregate_signatures(records: Iterable[dict], seed: int = 0) -> list[dict]:
    """Tidy rows (``prunescope.core.results.COLUMNS``: probe = task, condition = stage) per model x task x stage:

    * ``wrong_step_rate``: wrong steps / all steps found (n = steps);
    * ``wrong_step_response_rate``: responses with at least one wrong step (n = responses);
    * ``steps_per_response`` (n = responses);
    * ``unterminated_string_rate``: code with a string or docstring left open (n = code responses);
    * ``unbalanced_rate`` / ``mismatch_rate``: code with unclosed or extra / mismatched brackets,
      among the code whose brackets can be judged (no string left open; n = those);
    * ``fail_<kind>_rate`` for each of :data:`FAILURE_KINDS` (syntax, name,
      timeout, assertion, other): the share of executed programs that failed that way;
    * ``rep4``, ``char_rep16``, ``self_bleu4``: means over the responses where they are defined (n = those).

    A metric with nothing to average (no steps found) gets no row.

    >>> recs = signatures_for_samples([{"task": "gsm8k", "response": "2 + 2 = 5 and 3 * 3 = 9"}], "m", "base")
    >>> {r["metric"]: r["value"] for r in aggregate_signatures(recs)}["wrong_step_rate"]
    0.5
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["model"], r["task"], r["stage"])].append(r)
    rows = []
    for (model, task, stage), recs in groups.items():
        def row(metric, value, n):
            rows.append({"model": model, "probe": task, "condition": stage, "layers": "", "metric": metric,
                         "value": float(value), "n": int(n), "seed": seed})

        math_recs = [r for r in recs if r["n_steps"] is not None]
        if math_recs:
            steps = sum(r["n_steps"] for r in math_recs)
            if steps:
                row("wrong_step_rate", sum(r["n_wrong_steps"] for r in math_recs) / steps, steps)
            row("wrong_step_response_rate", _mean([bool(r["n_wrong_steps"]) for r in math_recs]), len(math_recs))
            row("steps_per_response", steps / len(math_recs), len(math_recs))
        code_recs = [r for r in recs if r["kind"] == "code"]
        if code_recs:
            row("unterminated_string_rate", _mean([bool(r.get("unterminated_string")) for r in code_recs]),
                len(code_recs))
        judged = [r for r in code_recs if r["unbalanced"] is not None]
        if judged:
            row("unbalanced_rate", _mean([r["unbalanced"] for r in judged]), len(judged))
            row("mismatch_rate", _mean([r["mismatch"] for r in judged]), len(judged))
        run = [r for r in code_recs if r["executed"]]
        if run:  # the paper's taxonomy: each kind's share of all programs (the shares and pass@1 sum to 1)
            for kind in FAILURE_KINDS:
                row(f"fail_{kind}_rate", _mean([r["failure"] == kind for r in run]), len(run))
        for metric in ("rep4", "char_rep16", "self_bleu4"):
            vals = [r[metric] for r in recs if r[metric] is not None]
            if vals:
                row(metric, _mean(vals), len(vals))
    assert all(set(COLUMNS) <= set(r) for r in rows)
    return rows


def _excerpt(text: str, limit: int = 300) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + " ..."


def examples(records: list[dict], k: int = 3) -> dict[str, list[str]]:
    """Example excerpts for a report, per signature: the first ``k`` wrong steps (with their
    context), bracket problems, and the ``k`` most repetitive responses (by Rep-4, then Self-BLEU-4).
    Keys: ``wrong_steps``, ``bracket_errors``, ``repetitive``; each excerpt starts with
    ``[task stage #doc_id]``.

    >>> recs = signatures_for_samples([{"task": "gsm8k", "doc_id": 3, "response": "32 x 6 = 364"}], "m", "pruned")
    >>> examples(recs)["wrong_steps"]
    ['[gsm8k pruned #3] 32 x 6 = 364 (is 192): ...32 x 6 = 364...']
    """
    out: dict[str, list[str]] = {"wrong_steps": [], "bracket_errors": [], "repetitive": []}
    for r in records:
        tag = f"[{r['task']} {r['stage']} #{r['doc_id']}]"
        for s in r["steps"]:
            if not s["ok"] and len(out["wrong_steps"]) < k:
                a = max(0, s["start"] - 80)
                context = r["response"][a:s["start"] + len(s["text"]) + 40].replace("\n", " ")
                out["wrong_steps"].append(f"{tag} {s['text']} (is {s['value']}): ...{context.strip()}...")
        if r["bracket_excerpt"] and len(out["bracket_errors"]) < k:
            out["bracket_errors"].append(f"{tag} {r['bracket_excerpt']}")
    rep = sorted((r for r in records if (r["rep4"] or 0) > 0),
                 key=lambda r: (-(r["rep4"] or 0), -(r["self_bleu4"] or 0)))[:k]
    out["repetitive"] = [f"[{r['task']} {r['stage']} #{r['doc_id']}] rep4 {r['rep4']:.2f}"
                         + (f", self-BLEU-4 {r['self_bleu4']:.2f}" if r["self_bleu4"] is not None else "")
                         + f":\n{_excerpt(r['response'])}" for r in rep]
    return out


def samples_in_run(run_dir: str | Path) -> dict[str, list[Path]]:
    """``{stage: [sample files]}`` from ``run_dir/eval/<stage>/samples/<task>.jsonl`` (stages sorted
    by name; the eval table, when present, gives the real order)."""
    out: dict[str, list[Path]] = {}
    for f in sorted(Path(run_dir).glob("eval/*/samples/*.jsonl")):
        out.setdefault(f.parent.parent.name, []).append(f)
    return out


def run_signatures(run_dir: str | Path, model: str = "", stages: Iterable[str] | None = None,
                   show_progress: bool = False) -> list[dict]:
    """Records for every sample file of a run (``eval/<stage>/samples/<task>.jsonl``), in ``stages``
    order when given (stages without samples are skipped)."""
    files = samples_in_run(run_dir)
    order = [s for s in (stages or []) if s in files] + [s for s in files if s not in set(stages or [])]
    records = []
    for stage in order:
        records += signatures_for_files(files[stage], model, stage, show_progress=show_progress)
    return records


def ablation_signatures(root: str | Path, model: str = "", seed: int = 0,
                        conditions: Iterable[str] | None = None) -> list[dict]:
    """Aggregated signature rows of a single-layer benchmark ablation, from the generated samples
    of its condition folders (``root/none``, ``root/skip-L``: :func:`prunescope.analysis.evaluate.evaluate`
    output), ``condition`` ``none`` / ``skip:L`` and ``layers`` the skipped layer, as the pipeline's
    ``localize/ablate/signatures.csv``. ``conditions`` limits it to those (default: every folder).
    Recomputing from the samples gives a table written by an older version the newer signatures.

    >>> ablation_signatures("/nonexistent")
    []
    """
    root = Path(root)
    folders = {p.name.replace("-", ":", 1): p for p in root.glob("*")
               if p.is_dir() and (p.name == "none" or p.name.startswith("skip-"))}
    order = sorted(folders, key=lambda c: -1 if c == "none" else int(c.split(":")[1]))
    rows = []
    for cond in (c for c in order if conditions is None or c in set(conditions)):
        records = signatures_for_files(sorted(folders[cond].glob("samples/*.jsonl")), model, cond)
        rows += [{**r, "layers": "" if cond == "none" else cond.split(":")[1]}
                 for r in aggregate_signatures(records, seed)]
    return rows


def signatures_for_files(files: Iterable[Path], model: str = "", stage: str = "",
                         show_progress: bool = False) -> list[dict]:
    """Records for sample files ``<task>.jsonl`` as :func:`prunescope.analysis.evaluate.evaluate` writes them
    (a sample without its own ``task`` takes the file's name)."""
    records = []
    for f in files:
        samples = [d for _, d in read_jsonl(f, "sample")]
        for d in samples:
            d.setdefault("task", Path(f).stem)
        records += signatures_for_samples(samples, model, stage, show_progress=show_progress)
    return records

