"""Clean / corrupted prompt pairs for patching.

A pair differs in one place that changes the answer: an operand (arithmetic) or the type of
the innermost open bracket (brackets). Both prompts must have the same number of tokens so
positions line up; a pair whose lengths differ is refused with a clear error (user pairs) or
not generated (built-in pairs), never truncated.

The answers are compared where their tokens first differ: both prompts get the answers'
shared leading tokens appended (the default model spells " 68" as " ", "6", "8", so " 68" vs
" 75" appends " " and compares "6" with "7"). ``logit_diff`` = logit(clean answer token) -
logit(corrupt answer token) at the last position.

>>> from prunescope.probe.tiny import tiny_model
>>> _, tok = tiny_model("llama")
>>> pairs = make_pairs("arithmetic", tok, n=4, seed=0)
>>> pairs[0].answer_clean != pairs[0].answer_corrupt
True
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from prunescope.core.errors import PrunescopeError
from prunescope.core.results import atomic_write_text, read_jsonl
from prunescope.probe.tasks import OPERATORS, BRACKET_PAIRS, bracket_items, expected_closer


@dataclass(frozen=True)
class Pair:
    clean: str
    corrupt: str
    answer_clean: str
    answer_corrupt: str
    group: str = ""


@dataclass
class EncodedPairs:
    """Token ids of the pairs, right-padded; scored at ``last`` (per row)."""

    clean: torch.Tensor          # [n, T]
    corrupt: torch.Tensor        # [n, T]
    mask: torch.Tensor           # [n, T] (the same for clean and corrupt)
    last: torch.Tensor           # [n] position whose next-token logits are scored
    tok_clean: torch.Tensor      # [n] the clean answer's deciding token
    tok_corrupt: torch.Tensor    # [n]
    lengths: list[int]


def encode_pairs(tokenizer, pairs: list[Pair], pad_id: int | None = None) -> EncodedPairs:
    """Tokenize pairs (appending the answers' shared prefix) and check equal lengths."""
    rows_c, rows_x, tc, tx = [], [], [], []
    for i, p in enumerate(pairs):
        a = tokenizer(p.answer_clean, add_special_tokens=False).input_ids
        b = tokenizer(p.answer_corrupt, add_special_tokens=False).input_ids
        k = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if k is None:
            raise PrunescopeError(
                f"pair {i}: answers {p.answer_clean!r} and {p.answer_corrupt!r} never differ token by token; "
                "make the corrupted answer differ from the clean one"
            )
        c = tokenizer(p.clean).input_ids + a[:k]
        x = tokenizer(p.corrupt).input_ids + b[:k]
        if len(c) != len(x):
            raise PrunescopeError(
                f"pair {i}: clean prompt has {len(c)} tokens but corrupted has {len(x)}; patching needs equal "
                f"lengths so positions line up. Change the corruption so both tokenize to the same length "
                f"(clean={p.clean!r}, corrupt={p.corrupt!r})"
            )
        rows_c.append(c)
        rows_x.append(x)
        tc.append(a[k])
        tx.append(b[k])
    if not rows_c:
        raise PrunescopeError("no pairs to patch")
    pad = pad_id if pad_id is not None else (tokenizer.pad_token_id or 0)
    T = max(len(r) for r in rows_c)
    n = len(rows_c)
    clean = torch.full((n, T), pad, dtype=torch.long)
    corrupt = torch.full((n, T), pad, dtype=torch.long)
    mask = torch.zeros((n, T), dtype=torch.long)
    for i, (c, x) in enumerate(zip(rows_c, rows_x)):
        clean[i, : len(c)] = torch.tensor(c)
        corrupt[i, : len(x)] = torch.tensor(x)
        mask[i, : len(c)] = 1
    lengths = [len(r) for r in rows_c]
    return EncodedPairs(clean, corrupt, mask, torch.tensor(lengths) - 1, torch.tensor(tc), torch.tensor(tx), lengths)


# ----------------------------------------------------------------------------- built-in pairs
def arithmetic_pairs(tokenizer, n: int, seed: int = 0, shots: int = 0) -> list[Pair]:
    """``(a op b) op c``: change one operand so the one-digit answer changes."""
    rng = random.Random(seed)
    shot_rng = random.Random(f"shots-{seed}")
    prefix = ""
    for _ in range(shots):
        while True:
            a, b, c = (shot_rng.randint(0, 9) for _ in range(3))
            o1, o2 = shot_rng.choice("+-*"), shot_rng.choice("+-*")
            v = OPERATORS[o2](OPERATORS[o1](a, b), c)
            if 0 <= v <= 9 and OPERATORS[o1](a, b) >= 0:
                prefix += f"Question: What is ({a} {o1} {b}) {o2} {c}? Answer: {v}\n"
                break
    pairs: list[Pair] = []
    for _ in range(100 * n):
        if len(pairs) == n:
            break
        a, b, c = (rng.randint(0, 9) for _ in range(3))
        o1, o2 = rng.choice("+-*"), rng.choice("+-*")
        v = OPERATORS[o2](OPERATORS[o1](a, b), c)
        if not 0 <= v <= 9 or OPERATORS[o1](a, b) < 0:
            continue
        which = rng.randrange(3)
        ops = [a, b, c]
        ops[which] = rng.randint(0, 9)
        a2, b2, c2 = ops
        v2 = OPERATORS[o2](OPERATORS[o1](a2, b2), c2)
        if v2 == v or not 0 <= v2 <= 9 or OPERATORS[o1](a2, b2) < 0:
            continue
        p = Pair(prefix + f"Question: What is ({a} {o1} {b}) {o2} {c}? Answer:",
                 prefix + f"Question: What is ({a2} {o1} {b2}) {o2} {c2}? Answer:", f" {v}", f" {v2}",
                 f"operand {which}")
        if _same_length(tokenizer, p):
            pairs.append(p)
    return pairs


def bracket_pairs(tokenizer, n: int, seed: int = 0) -> list[Pair]:
    """Change the type of the innermost open bracket so the expected closer changes."""
    rng = random.Random(seed)
    pairs: list[Pair] = []
    for item in bracket_items(20 * n, seed=seed):
        if len(pairs) == n:
            break
        text = item.prompt
        depth, pos = 0, None
        for i in range(len(text) - 1, -1, -1):         # find the innermost unclosed opener
            ch = text[i]
            if ch in ")]}":
                depth += 1
            elif ch in "([{":
                if depth == 0:
                    pos = i
                    break
                depth -= 1
        if pos is None:
            continue
        new = rng.choice([o for o in "([{" if o != text[pos]])
        corrupt = text[:pos] + new + text[pos + 1:]
        ac, ax = item.answer, item.answer.replace(BRACKET_PAIRS[text[pos]], BRACKET_PAIRS[new])
        if expected_closer(corrupt) != ax.strip():
            continue
        p = Pair(text, corrupt, ac, ax, item.group)
        if _same_length(tokenizer, p):
            pairs.append(p)
    return pairs


def _same_length(tokenizer, p: Pair) -> bool:
    try:
        encode_pairs(tokenizer, [p])
        return True
    except PrunescopeError:
        return False


def load_pairs(path: str | Path) -> list[Pair]:
    """A user's pairs: JSONL lines with ``clean``, ``corrupt``, ``answer_clean``, ``answer_corrupt``."""
    keys = ("clean", "corrupt", "answer_clean", "answer_corrupt")
    pairs = []
    for lineno, d in read_jsonl(path, "pair"):
        if not all(isinstance(d.get(k), str) for k in keys):
            raise PrunescopeError(f"{path}:{lineno}: each line needs string fields {', '.join(keys)}")
        pairs.append(Pair(*(d[k] for k in keys), str(d.get("group", ""))))
    return pairs


def save_pairs(pairs: list[Pair], path: str | Path) -> None:
    atomic_write_text(path, "".join(json.dumps(asdict(p)) + "\n" for p in pairs))


PAIR_PROBES = {"arithmetic": arithmetic_pairs, "brackets": bracket_pairs}


def make_pairs(probe: str, tokenizer, n: int = 50, seed: int = 0, **options) -> list[Pair]:
    """Built-in pairs for ``arithmetic`` / ``brackets``, or a JSONL file of pairs."""
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise PrunescopeError(f"n must be a positive number of pairs, got {n!r}")
    check_pair_probe(probe)
    if probe in PAIR_PROBES:
        pairs = PAIR_PROBES[probe](tokenizer, n, seed, **options)
        if not pairs:
            raise PrunescopeError(f"could not build {probe} pairs of equal token length with this tokenizer")
        return pairs
    pairs = load_pairs(probe)[:n]
    encode_pairs(tokenizer, pairs)          # refuse unequal lengths up front
    return pairs


def check_pair_probe(probe: str) -> None:
    """A built-in patching probe's name or a path to a JSONL file of pairs, else one clear error."""
    if probe not in PAIR_PROBES and not (probe.endswith(".jsonl") or Path(probe).exists()):
        raise PrunescopeError(f"unknown probe {probe!r} for patching: choose {', '.join(PAIR_PROBES)} or a JSONL file")
