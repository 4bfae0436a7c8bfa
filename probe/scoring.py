"""Score probe items from next-token logits, tokenizer-aware.

The rule: the prompt is tokenized as the model sees it (with its special tokens) and each answer
on its own (no special tokens), then concatenated. Tokenizers split answers differently
(SmolLM2 / the default model: ``" 68"`` -> ``" "``, ``"6"``, ``"8"``; Llama-3: up to three digits per
token; Qwen and Gemma: one digit), and some give the leading space its own token, so "the
first answer token" is often the same space for every answer and decides nothing. Hence:

``first_diff`` (default)
    One teacher-forced forward over prompt + correct answer. For each wrong answer, find the
    first token where it differs from the correct one; compare the two tokens' logits at that
    position (the prefix before it is shared, so this is exactly where the model decides).
    ``logit_diff`` = the smallest such margin over wrong answers; ``margin_accuracy`` = margin > 0;
    ``p_correct`` = probability of the correct token at the earliest deciding position;
    ``exact_match`` = greedy exact match, the answer is generated (argmax at every answer token
    under teacher forcing: exactly what greedy decoding of the answer would produce);
    ``token_accuracy`` = fraction of answer tokens that are the argmax (digit by digit
    for one-digit-per-token tokenizers). A wrong answer that extends the correct one (``" 1"``
    vs ``" 12"``) never differs inside it and is ignored by this rule.

``logprob``
    One forward per candidate; each answer's summed log-probability. ``margin_accuracy`` = the correct
    answer has the highest; ``logit_diff`` = its log-prob minus the best wrong one;
    ``p_correct`` = its share after normalizing over the candidates; ``exact_match`` and
    ``token_accuracy`` as above.

``margin_accuracy``, ``logit_diff`` and ``p_correct`` are choices between the correct answer and
wrong ones: a margin over chosen distractors, not generation. A model can rank the right answer
above the distractors and still generate something else (with ``first_diff`` an item it generates
wins its margin, so ``margin_accuracy`` sits above ``exact_match``, often far above); a paper's
generation-based probe numbers compare with ``exact_match``. An item without a wrong answer (or,
with ``first_diff``, without one that differs inside the correct answer) has none of the choice
metrics, and the mean of a metric is over the items that have it (:func:`aggregate_defined`), so a
table leaves out a metric no item has rather than writing 0.0 or nan for it. ``exact_match`` and
``token_accuracy`` need no wrong answer.

>>> from prunescope.probe.tiny import tiny_model
>>> from prunescope.probe.blocks import Blocks
>>> from prunescope.probe.tasks import make_items
>>> model, tok = tiny_model("llama")
>>> plan = ScoringPlan(tok, make_items("arithmetic", n=4), scoring="first_diff")
>>> metrics = score_items(Blocks(model), plan)
>>> sorted(metrics[0])
['exact_match', 'logit_diff', 'margin_accuracy', 'p_correct', 'token_accuracy']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prunescope.core.errors import PrunescopeError
from prunescope.probe.tasks import Item

SCORINGS = ("first_diff", "logprob")
METRICS = ("margin_accuracy", "logit_diff", "p_correct", "exact_match", "token_accuracy")
# undefined for an item without a deciding wrong answer
CHOICE_METRICS = ("margin_accuracy", "logit_diff", "p_correct")
# the two probe scores every stage reports: the margin choice and greedy generation of the answer
PROBE_METRICS = ("margin_accuracy", "exact_match")
# tables written before the margin metric was named for what it is said "accuracy"; readers map it
METRIC_ALIASES = {"accuracy": "margin_accuracy"}
LABELS = {"margin_accuracy": "margin accuracy (the answer beats the distractors)",
          "exact_match": "greedy exact match (the answer is generated)"}


def canonical_metric(name: str) -> str:
    """The current name of a metric read from a table: ``accuracy`` (older tables) is ``margin_accuracy``.

    >>> canonical_metric("accuracy"), canonical_metric("exact_match")
    ('margin_accuracy', 'exact_match')
    """
    return METRIC_ALIASES.get(name, name)


def metric_label(name: str) -> str:
    """An axis or column label that says what a probe metric measures.

    >>> metric_label("exact_match")
    'greedy exact match (the answer is generated)'
    """
    return LABELS.get(canonical_metric(name), name)


@dataclass
class Row:
    """One forward row: ``ids`` = prompt + candidate[:-1]; scored at ``n_prompt - 1 + k``."""

    item: int
    candidate: int                   # 0 = the correct answer, i >= 1 = wrong[i - 1]
    ids: list[int]
    n_prompt: int
    targets: list[int]               # candidate tokens, predicted at the scored positions
    compare: list[tuple[int, int]] = field(default_factory=list)  # (k, wrong token) for first_diff

    @property
    def positions(self) -> list[int]:
        return [self.n_prompt - 1 + k for k in range(len(self.targets))]


@dataclass
class Batch:
    rows: list[int]
    input_ids: torch.Tensor          # [b, T], right-padded
    attention_mask: torch.Tensor     # [b, T]
    at: torch.Tensor                 # [b, K] scored positions (padding repeats a valid one)


class ScoringPlan:
    """Tokenized rows for a list of items, and how to turn their logits into metrics."""

    metric_names = METRICS

    def __init__(self, tokenizer, items: Sequence[Item], scoring: str = "first_diff",
                 max_length: int | None = None):
        if scoring not in SCORINGS:
            raise PrunescopeError(f"unknown scoring {scoring!r}: choose {' or '.join(SCORINGS)}")
        self.items = list(items)
        self.scoring = scoring
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.rows: list[Row] = []
        limit = max_length or _context_limit(tokenizer)
        for i, it in enumerate(self.items):
            prompt = tokenizer(it.prompt).input_ids
            cands = [tokenizer(a, add_special_tokens=False).input_ids for a in (it.answer, *it.wrong)]
            if not cands[0]:
                raise PrunescopeError(f"item {i}: the answer {it.answer!r} tokenizes to nothing")
            longest = len(prompt) + max(len(c) for c in cands) - 1
            if limit and longest > limit:
                raise PrunescopeError(
                    f"item {i}: prompt + answer is {longest} tokens, longer than the model's context of "
                    f"{limit}; shorten the prompt or use fewer few-shot examples"
                )
            if scoring == "first_diff":
                compare = []
                for w in cands[1:]:
                    k = next((k for k, (a, b) in enumerate(zip(cands[0], w)) if a != b), None)
                    if k is not None:
                        compare.append((k, w[k]))
                self.rows.append(Row(i, 0, prompt + cands[0][:-1], len(prompt), cands[0], compare))
            else:
                for c, toks in enumerate(cands):
                    if toks:
                        self.rows.append(Row(i, c, prompt + toks[:-1], len(prompt), toks))

    def batches(self, batch_size: int = 16) -> list[Batch]:
        """Rows sorted by length (less padding), right-padded into batches."""
        order = sorted(range(len(self.rows)), key=lambda r: -len(self.rows[r].ids))
        return [self.make_batch(order[s:s + batch_size]) for s in range(0, len(order), batch_size)]

    def make_batch(self, row_ids: list[int]) -> Batch:
        rows = [self.rows[r] for r in row_ids]
        T = max(len(r.ids) for r in rows)
        K = max(len(r.targets) for r in rows)
        ids = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        at = torch.zeros((len(rows), K), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, : len(r.ids)] = torch.tensor(r.ids)
            mask[b, : len(r.ids)] = 1
            pos = r.positions
            at[b] = torch.tensor(pos + [pos[-1]] * (K - len(pos)))
        return Batch(list(row_ids), ids, mask, at)

    def reduce(self, batch: Batch, logits: torch.Tensor) -> dict[int, dict]:
        """Shrink a batch's ``[b, K, vocab]`` logits to the few numbers each row needs."""
        logits = logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        argmax = logits.argmax(-1)
        out = {}
        for b, r in enumerate(batch.rows):
            row = self.rows[r]
            n = len(row.targets)
            tgt = torch.tensor(row.targets, device=logits.device)
            ks = torch.arange(n, device=logits.device)
            out[r] = {
                "target_logp": logp[b, ks, tgt].tolist(),
                "target_logit": logits[b, ks, tgt].tolist(),
                "is_argmax": (argmax[b, :n] == tgt).tolist(),
                "compare_logit": [logits[b, k, w].item() for k, w in row.compare],
            }
        return out

    def metrics(self, stats: dict[int, dict]) -> list[dict]:
        """Per-item metrics (see the module docstring) from :meth:`reduce` outputs; an item without
        a deciding wrong answer has no :data:`CHOICE_METRICS` keys."""
        per_item: dict[int, dict[int, tuple[Row, dict]]] = {}
        for r, s in stats.items():
            row = self.rows[r]
            per_item.setdefault(row.item, {})[row.candidate] = (row, s)
        results = []
        for i in range(len(self.items)):
            cands = per_item[i]
            row, s = cands[0]
            m = {
                "exact_match": float(all(s["is_argmax"])),
                "token_accuracy": sum(s["is_argmax"]) / len(s["is_argmax"]),
            }
            m.update(_first_diff_choice(row, s) if self.scoring == "first_diff" else _logprob_choice(cands))
            results.append(m)
        return results


def _first_diff_choice(row: Row, s: dict) -> dict:
    """The choice metrics of ``first_diff``: nothing when no wrong answer differs inside the answer."""
    if not row.compare:
        return {}
    margins = [s["target_logit"][k] - w for (k, _), w in zip(row.compare, s["compare_logit"])]
    k0 = min(k for k, _ in row.compare)
    return {"logit_diff": min(margins), "margin_accuracy": float(min(margins) > 0),
            "p_correct": float(torch.tensor(s["target_logp"][k0]).exp())}


def _logprob_choice(cands: dict[int, tuple[Row, dict]]) -> dict:
    """The choice metrics of ``logprob``: nothing when the item has no (non-empty) wrong answer."""
    lps = {c: sum(st["target_logp"]) for c, (_, st) in cands.items()}
    wrong = [v for c, v in lps.items() if c != 0]
    if not wrong:
        return {}
    return {"logit_diff": lps[0] - max(wrong), "margin_accuracy": float(lps[0] > max(wrong)),
            "p_correct": float(torch.softmax(torch.tensor(list(lps.values())), 0)[list(lps).index(0)])}


class TextPlan(ScoringPlan):
    """Teacher-forced loss on a set of texts: every next token is scored.

    Metrics per text: ``loss`` (mean negative log-likelihood per predicted token) and
    ``token_accuracy`` (argmax = next token); aggregated, ``loss`` is averaged over texts and
    ``ppl`` = exp(mean loss).
    """

    metric_names = ("loss", "ppl", "token_accuracy")

    def __init__(self, tokenizer, texts: Sequence[str], max_length: int | None = None):
        self.items = [Item(t, "") for t in texts]
        self.scoring = "loss"
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        limit = max_length or _context_limit(tokenizer) or 2048
        self.rows = []
        for i, t in enumerate(texts):
            ids = tokenizer(t).input_ids[:limit]
            if len(ids) < 2:
                raise PrunescopeError(f"text {i} has fewer than two tokens; nothing to predict")
            self.rows.append(Row(i, 0, ids[:-1], 1, ids[1:]))

    def metrics(self, stats: dict[int, dict]) -> list[dict]:
        out = [None] * len(self.items)
        for r, s in stats.items():
            loss = -sum(s["target_logp"]) / len(s["target_logp"])
            out[self.rows[r].item] = {"loss": loss, "token_accuracy": sum(s["is_argmax"]) / len(s["is_argmax"])}
        return out


def load_texts(path) -> list[str]:
    """Texts for :class:`TextPlan`: a ``.jsonl`` file with a ``text`` field, or one text per line."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise PrunescopeError(f"text file {path} does not exist")
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except UnicodeDecodeError:
        raise PrunescopeError(f"text file {path} is not UTF-8 text; give a .txt (one text per line) or a .jsonl "
                              "file with a 'text' field") from None
    if path.suffix == ".jsonl":
        try:
            texts = [json.loads(ln)["text"] for ln in lines]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise PrunescopeError(f"{path}: every line must be JSON with a 'text' field ({e})") from None
    else:
        texts = lines
    if not texts:
        raise PrunescopeError(f"text file {path} is empty")
    return texts


def _context_limit(tokenizer) -> int | None:
    n = getattr(tokenizer, "model_max_length", None)
    return n if isinstance(n, int) and 0 < n < 10**8 else None


LogitsFn = Callable[[Batch], torch.Tensor]


@torch.no_grad()
def score_items(blocks, plan: ScoringPlan, batch_size: int = 16, logits_fn: LogitsFn | None = None) -> list[dict]:
    """Per-item metrics under whatever skip / hook contexts are active on ``blocks``."""
    fn = logits_fn or (lambda b: blocks.forward(b.input_ids, b.attention_mask, at=b.at))
    stats: dict[int, dict] = {}
    for batch in plan.batches(batch_size):
        stats.update(plan.reduce(batch, fn(batch)))
    return plan.metrics(stats)


def aggregate_defined(per_item: Sequence[dict], names: Sequence[str] = METRICS) -> dict[str, tuple[float, int]]:
    """``{metric: (mean, items)}`` over the items that have the metric (not NaN); a metric no item
    has is left out. ``ppl`` is exp of the mean ``loss``.

    >>> aggregate_defined([{"margin_accuracy": 1.0, "exact_match": 0.0}, {"exact_match": 1.0}])
    {'margin_accuracy': (1.0, 1), 'exact_match': (0.5, 2)}
    """
    import math

    out = {}
    for k in names:
        vals = [m[k] for m in per_item if k in m and m[k] == m[k]]
        if vals and k != "ppl":
            out[k] = (sum(vals) / len(vals), len(vals))
    if "ppl" in names and "loss" in out:
        out["ppl"] = (math.exp(out["loss"][0]), out["loss"][1])
    return {k: out[k] for k in names if k in out}


def aggregate(per_item: Sequence[dict], names: Sequence[str] = METRICS) -> dict[str, float]:
    """Mean of each metric over the items that have it; NaN for a metric no item has (see
    :func:`aggregate_defined`, which leaves it out instead); ``ppl`` is exp of the mean ``loss``."""
    got = aggregate_defined(per_item, names)
    return {k: got[k][0] if k in got else float("nan") for k in names}


def probe_summary(per_item: dict[str, Sequence[dict]]) -> dict:
    """Both probe metrics (:data:`PROBE_METRICS`) of each probe's per-item metrics: ``{metric: {probe:
    mean}, "items": {probe: {metric: [per item]}}}``; an item without the metric is ``None`` in its
    list (items keep their index, so two models scored on the same items pair by it) and the mean is
    over the items that have it; a metric no item of the probe has is left out of both.

    >>> s = probe_summary({"copy": [{"margin_accuracy": 1.0, "exact_match": 0.0}, {"exact_match": 1.0}]})
    >>> s["margin_accuracy"], s["exact_match"], s["items"]["copy"]["margin_accuracy"]
    ({'copy': 1.0}, {'copy': 0.5}, [1.0, None])
    """
    out: dict = {m: {} for m in PROBE_METRICS}
    out["items"] = {}
    for probe, metrics in per_item.items():
        agg = aggregate_defined(metrics, PROBE_METRICS)
        out["items"][probe] = {}
        for m, (mean, _) in agg.items():
            out[m][probe] = mean
            out["items"][probe][m] = [x[m] if m in x and x[m] == x[m] else None for x in metrics]
    return out


@torch.no_grad()
def probe_scores(model_dir: str | Path | None, probes: Sequence[str] = ("arithmetic_multi", "brackets", "copy"),
                 n: int = 60, device: str = "cpu", loaded=None) -> dict:
    """Both probe metrics of a (pruned) checkpoint on the built-in probes (3-shot addition,
    brackets, copy), with the per-item scores behind them (:func:`probe_summary`): ``margin_accuracy``
    (the answer beats the distractors) and ``exact_match`` (greedy exact match: the answer is
    generated). The items are the same for every model (fixed seed), so two checkpoints pair by item.

    >>> probe_scores("pruned/bi25", n=60)["exact_match"]  # doctest: +SKIP
    {'arithmetic_multi': 0.3, 'brackets': 0.85, 'copy': 0.8}
    """
    from prunescope.probe.models import load_model

    lm = loaded or load_model(model_dir, device=device)
    per_item = {p: score_items(lm.blocks, ScoringPlan(lm.tokenizer, stage_probe_items(p, n))) for p in probes}
    return probe_summary(per_item)


def stage_probe_items(probe: str, n: int) -> list:
    """The ``n`` items of ``probe`` that :func:`probe_scores` scores (the pruning-side options, fixed
    seed): the same for every model, so stages pair by item.

    >>> len(stage_probe_items("copy", 3))
    3
    """
    from prunescope.probe.tasks import make_items, pruning_probe_options

    return make_items(probe, n=n, **pruning_probe_options(probe))


def probe_accuracy(model_dir: str | Path | None, probes: Sequence[str] = ("arithmetic_multi", "brackets", "copy"),
                   n: int = 60, device: str = "cpu", loaded=None) -> dict[str, float]:
    """Margin accuracy alone of :func:`probe_scores` (the answer beats the distractors; not
    generation, which is its ``exact_match``).

    >>> probe_accuracy("pruned/bi25", n=60)  # doctest: +SKIP
    {'arithmetic_multi': 0.45, 'brackets': 0.9, 'copy': 0.8}
    """
    return probe_scores(model_dir, probes, n=n, device=device, loaded=loaded)["margin_accuracy"]
