"""Tokenizer-aware scoring: first differing token and whole-answer log-probability."""

import math

import pytest
import torch

from prunescope.probe.blocks import Blocks
from prunescope.core.errors import PrunescopeError
from prunescope.probe.scoring import ScoringPlan, TextPlan, aggregate, score_items
from prunescope.probe.tasks import Item, make_items


def test_default_tokenizer_splits_the_space(default_model):
    tok = default_model.tokenizer
    assert tok.convert_ids_to_tokens(tok(" 68", add_special_tokens=False).input_ids) == ["Ġ", "6", "8"]
    item = Item("Question: What is 60 + 8? Answer:", " 68", (" 61", " 75", " 6"))
    plan = ScoringPlan(tok, [item])
    row = plan.rows[0]
    # " 61" differs at the second digit (k=2), " 75" at the first digit (k=1); " 6" is a prefix of
    # " 68" and never differs inside it, so the first-difference rule ignores it
    assert row.compare == [(2, tok.convert_tokens_to_ids("1")), (1, tok.convert_tokens_to_ids("7"))]
    assert row.targets == tok(" 68", add_special_tokens=False).input_ids
    assert row.positions[0] == row.n_prompt - 1
    lp = ScoringPlan(tok, [item], scoring="logprob")
    assert len(lp.rows) == 4  # one forward row per candidate


def test_first_diff_metrics_by_hand(default_model):
    lm = default_model
    item = Item("Question: What is 60 + 8? Answer:", " 68", (" 61", " 75"))
    metrics = score_items(lm.blocks, ScoringPlan(lm.tokenizer, [item]))[0]
    tok = lm.tokenizer
    ids = tok(item.prompt).input_ids + tok(" 68", add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids])).logits[0]
    n = len(tok(item.prompt).input_ids)
    six, eight, one, seven = (tok.convert_tokens_to_ids(t) for t in "6817")
    margin_61 = logits[n + 1, eight] - logits[n + 1, one]    # after " 6": 8 vs 1
    margin_75 = logits[n, six] - logits[n, seven]            # after " ": 6 vs 7
    assert metrics["logit_diff"] == pytest.approx(min(margin_61, margin_75).item(), abs=1e-4)
    assert metrics["margin_accuracy"] == float(min(margin_61, margin_75) > 0)
    assert metrics["p_correct"] == pytest.approx(torch.softmax(logits[n], -1)[six].item(), abs=1e-5)
    greedy = [logits[n - 1 + k].argmax().item() for k in range(3)]
    assert metrics["exact_match"] == float(greedy == ids[n:])


def test_logprob_metrics_by_hand(tiny):
    model, tok = tiny
    item = Item("Alice went to the market and", " bought 12", (" sold 7", " 19"))
    m = score_items(Blocks(model), ScoringPlan(tok, [item], scoring="logprob"))[0]

    def lp(answer):
        p = tok(item.prompt).input_ids
        a = tok(answer, add_special_tokens=False).input_ids
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([p + a])).logits[0], -1)
        return sum(logp[len(p) - 1 + k, t].item() for k, t in enumerate(a))

    lps = [lp(a) for a in (item.answer, *item.wrong)]
    assert m["logit_diff"] == pytest.approx(lps[0] - max(lps[1:]), abs=1e-4)
    assert m["p_correct"] == pytest.approx(math.exp(lps[0]) / sum(math.exp(x) for x in lps), abs=1e-5)


def test_batching_does_not_change_scores(tiny):
    model, tok = tiny
    plan = ScoringPlan(tok, make_items("arithmetic_multi", n=9, shots=1))
    a = score_items(Blocks(model), plan, batch_size=1)
    b = score_items(Blocks(model), plan, batch_size=4)
    for x, y in zip(a, b):
        assert x["logit_diff"] == pytest.approx(y["logit_diff"], abs=1e-4)


def test_text_loss_matches_hf(tiny):
    model, tok = tiny
    texts = ["Alice went to the market and bought 12 apples", "def f(arr, n): return arr[n - 1]"]
    per = score_items(Blocks(model), TextPlan(tok, texts))
    for t, m in zip(texts, per):
        ids = torch.tensor([tok(t).input_ids])
        with torch.no_grad():
            loss = model(ids, labels=ids).loss.item()
        assert m["loss"] == pytest.approx(loss, abs=1e-4)
    agg = aggregate(per, TextPlan.metric_names)
    assert agg["ppl"] == pytest.approx(math.exp(agg["loss"]))


def test_prompt_longer_than_context(tiny):
    _, tok = tiny
    tok.model_max_length = 16
    with pytest.raises(PrunescopeError, match="longer than the model's context"):
        ScoringPlan(tok, [Item("word " * 40, " x", (" y",))])
