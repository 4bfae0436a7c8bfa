"""Calibration texts for repairing a pruned model: generic text, circuit text, or a mix of both.

*Generic* texts are instruction-style prompts with their answers: the offline built-in prompt set
of :mod:`prunescope.recover.data` (instruction, maths and code, each prompt joined to its reference
answer) or a file of the user's. *Circuit* texts are solved items of the probes that localize the
circuits prunescope studies (few-shot multi-digit arithmetic, bracket and code contexts closed,
copy lists): the same items :func:`prunescope.prune.commands.calibration_texts` scores layers on.

The mix is one number, the share of circuit texts: ``0`` generic only, ``1`` circuit only, ``0.25``
a quarter circuit. A repair fitted on generic text keeps what generic text exercises; circuit text
asks the repair to keep the computations the probes measure.

>>> texts = repair_texts(1.0, 6, seed=0)
>>> len(texts), sum(t in circuit_texts(6, seed=0) for t in texts)
(6, 6)
>>> mix_counts(0.25, 10)
(7, 3)
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

from prunescope.core.errors import PrunescopeError
from prunescope.prune.commands import CALIBRATION_PROBES

#: the probes whose solved items are the circuit texts (with the options scoring uses for them)
CIRCUIT_PROBES = tuple(name for name, _ in CALIBRATION_PROBES)
_PROBE_OPTIONS = dict(CALIBRATION_PROBES)


def mix_counts(mix: float, n: int) -> tuple[int, int]:
    """``(generic, circuit)`` text counts of ``n`` texts with a circuit share ``mix`` (rounded half up).

    >>> mix_counts(0, 8), mix_counts(0.5, 8), mix_counts(1, 8), mix_counts(0.5, 3)
    ((8, 0), (4, 4), (0, 8), (1, 2))
    """
    if not 0 <= mix <= 1:
        raise PrunescopeError(f"the calibration mix is the share of circuit texts, between 0 and 1; got {mix}")
    circuit = math.floor(mix * n + 0.5)
    return n - circuit, circuit


def scored_keys(probes: Sequence[str], n: int) -> set[tuple[str, str]]:
    """What the stage probes score (:func:`prunescope.probe.scoring.probe_scores`: the first ``n``
    items of each probe, fixed seed) as ``(question, answer)`` keys, the question being the prompt's
    last line: a calibration item asking the same question with other few-shot examples is the
    same item.

    >>> len(scored_keys(["copy"], 5))
    5
    """
    from prunescope.probe.scoring import stage_probe_items

    return {_item_key(it) for p in probes if not Path(p).suffix for it in stage_probe_items(p, n)} if n else set()


def _item_key(item) -> tuple[str, str]:
    return item.prompt.rstrip("\n").rsplit("\n", 1)[-1], item.answer


def circuit_texts(n: int, seed: int = 0, probes: Sequence[str] = CIRCUIT_PROBES, held_out: int = 0) -> list[str]:
    """``n`` solved probe items (prompt + answer), shared out as evenly as the probes allow, the
    first probes taking the remainder. A probe is a built-in name or a JSONL file of items (of
    which the first are taken); the built-in ones are generated from ``seed``. ``held_out``: the
    first ``held_out`` items the stage probes score are never drawn (:func:`scored_keys`), so a
    repair is not fitted on the items that measure it.

    >>> len(circuit_texts(5, probes=["brackets", "copy"])), circuit_texts(3, seed=1) != circuit_texts(3, seed=2)
    (5, True)
    >>> scored = scored_keys(CIRCUIT_PROBES, 50)
    >>> any(t.rstrip().endswith(q.rstrip()) for t in circuit_texts(30, held_out=50) for q, _ in scored)
    False
    """
    if not probes:
        raise PrunescopeError("circuit calibration texts need at least one probe")
    excluded = scored_keys(probes, held_out)
    texts: list[str] = []
    for i, probe in enumerate(probes):
        share = n // len(probes) + (i < n % len(probes))
        if share:
            items = [it for it in _drawn(probe, share + len(excluded), seed) if _item_key(it) not in excluded]
            if len(items) < share:
                raise PrunescopeError(f"probe {probe} holds {len(items)} items outside the scored ones but the "
                                      f"calibration asks {share} of it: give fewer calibration texts or a larger item file")
            texts += [it.prompt + it.answer for it in items[:share]]
    return texts


def _drawn(probe: str, n: int, seed: int) -> list:
    from prunescope.probe.tasks import make_items

    return make_items(probe, n=n, seed=seed, **_PROBE_OPTIONS.get(probe, {}))


def _record_text(record: dict) -> str:
    """A prompt record as one plain text: the prompt (or the chat turns), then its reference answer."""
    prompt = record.get("prompt") or "\n\n".join(m["content"] for m in record.get("messages", []))
    ref = record.get("reference")
    return prompt + (f"\n\n{ref}" if isinstance(ref, str) and ref.strip() else "")


def _file_texts(path: Path) -> list[str]:
    """Every text of a user file: ``.txt`` (one per line), ``.jsonl`` with a ``text`` field, or a
    prompt file as recovery reads it (each prompt joined to its reference answer)."""
    from prunescope.probe.scoring import load_texts
    from prunescope.recover.data import load_prompts

    if not path.exists():
        raise PrunescopeError(f"generic calibration file {path} does not exist")
    if path.suffix == ".txt":
        return load_texts(path)
    first = next((ln for ln in path.read_text().splitlines() if ln.strip()), "") if path.is_file() else ""
    try:
        has_text = isinstance(json.loads(first), dict) and "text" in json.loads(first)
    except json.JSONDecodeError:
        has_text = False
    return load_texts(path) if has_text else [_record_text(r) for r in load_prompts(path)]


def generic_texts(n: int, seed: int = 0, source: str | Path = "builtin") -> list[str]:
    """``n`` generic texts: of a built-in prompt set (``"builtin"``: instruction, maths and code
    prompts with their reference answers, drawn by ``seed``; ``"offline"``: the larger offline set)
    or of a file (``n`` of its texts drawn by ``seed``, kept in file order).

    >>> len(generic_texts(4, seed=0))
    4
    """
    from prunescope.recover.data import builtin_prompts, offline_prompts

    if str(source) in ("builtin", "offline"):
        draw = builtin_prompts if str(source) == "builtin" else offline_prompts
        texts = [_record_text(r) for r in draw(n, seed=seed)]
    else:
        texts = _file_texts(Path(source))
        if len(texts) > n:
            texts = [texts[i] for i in sorted(random.Random(seed).sample(range(len(texts)), n))]
    if len(texts) < n:
        raise PrunescopeError(f"{source} holds {len(texts)} generic texts but the calibration asks {n}: give fewer "
                              "calibration texts, a larger circuit share, or a larger file")
    return texts


def repair_texts(mix: float, n: int, seed: int = 0, *, generic: str | Path = "builtin",
                 probes: Sequence[str] = CIRCUIT_PROBES, held_out: int = 0) -> list[str]:
    """``n`` calibration texts, ``mix`` of them circuit texts (:func:`mix_counts`), the rest generic,
    in an order drawn by ``seed`` (the same seed draws the texts). ``generic``: ``"builtin"`` or a
    file (:func:`generic_texts`); ``probes`` and ``held_out``: the circuit probes and the scored items
    they never draw (:func:`circuit_texts`).

    >>> texts = repair_texts(0.5, 8, seed=3)
    >>> sum(t in circuit_texts(4, seed=3) for t in texts)
    4
    """
    n_generic, n_circuit = mix_counts(mix, n)
    texts = generic_texts(n_generic, seed, generic) if n_generic else []
    texts += circuit_texts(n_circuit, seed, probes, held_out) if n_circuit else []
    random.Random(seed).shuffle(texts)
    return texts
