"""The generation engine against transformers' own ``generate`` (fp32, CPU, tiny models of every family)."""

import copy

import pytest
import torch

from probe.blocks import Blocks
from probe.generation import Engine, GenerationOptions, Request, pick_tokens, request_uniform
from probe.tiny import FAMILIES, tiny_model
from prune.surgery import remove_layers

PROMPTS = ["a b c", "The quick brown fox jumps over", "def f(arr, n):\n    return", "1 2", "Alice went to the market",
           "Question: What is (4 * 4) * 1? Answer:", "x"]


def _reference(model, tok, prompt_ids, max_new):
    """``model.generate`` one prompt at a time (no padding), EOS dropped like the engine does."""
    ids = torch.tensor([prompt_ids])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                         pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos]) - {None}
    for i, t in enumerate(out):
        if t in eos:
            return out[:i]
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equals_generate_for_every_prompt(family):
    model, tok = tiny_model(family)
    limits = [12, 5, 16, 9, 1, 14, 11]  # per-request limits; 3 slots force refills mid-run
    reqs = [Request(tok(p).input_ids, max_new_tokens=m) for p, m in zip(PROMPTS, limits)]
    got = Engine(model, tok, GenerationOptions(slots=3)).generate(reqs)
    for r, c, m in zip(reqs, got, limits):
        assert c.tokens == _reference(model, tok, list(r.prompt), m)
        assert len(c.tokens) <= m
        assert c.finish in ("eos", "length")


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_graph_capture_warm_up_leaves_the_state_unchanged(family):
    """The idle steps a CUDA-graph capture runs first (here on the CPU, before the first step) must
    not change any token: they once replaced every running row's pending token with its prediction."""
    model, tok = tiny_model(family)
    limits = [12, 5, 16, 9, 1, 14, 11]
    reqs = [Request(tok(p).input_ids, max_new_tokens=m) for p, m in zip(PROMPTS, limits)]
    engine = Engine(model, tok, GenerationOptions(slots=3))
    engine.rehearse_capture = True
    got = engine.generate(reqs)
    assert engine._rehearse is False  # the rehearsal ran
    for r, c, m in zip(reqs, got, limits):
        assert c.tokens == _reference(model, tok, list(r.prompt), m)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_skipped_layers_equal_the_pruned_checkpoint(family):
    model, tok = tiny_model(family, n_layers=5)
    reqs = [Request(tok(p).input_ids, max_new_tokens=10) for p in PROMPTS]
    with Blocks(model).skip([1, 3]):
        skipped = Engine(model, tok, GenerationOptions(slots=4)).generate(reqs)
    pruned = remove_layers(copy.deepcopy(model), [1, 3])
    for r, c in zip(reqs, skipped):
        assert c.tokens == _reference(pruned, tok, list(r.prompt), 10)
    # and skipping changed something, so the comparison is not vacuous
    full = Engine(model, tok).generate(reqs)
    assert any(a.tokens != b.tokens for a, b in zip(full, skipped))


def test_sampling_does_not_depend_on_the_batch():
    model, tok = tiny_model("qwen2")
    reqs = [Request(tok(p).input_ids, max_new_tokens=12, temperature=0.9, top_p=0.95, seed=100 + i)
            for i, p in enumerate(PROMPTS)]
    alone = [Engine(model, tok, GenerationOptions(slots=1)).generate([r])[0].tokens for r in reqs]
    together = [c.tokens for c in Engine(model, tok, GenerationOptions(slots=4)).generate(reqs)]
    reversed_ = [c.tokens for c in Engine(model, tok, GenerationOptions(slots=7)).generate(reqs[::-1])][::-1]
    assert alone == together == reversed_
    other_seeds = [Request(r.prompt, r.max_new_tokens, temperature=0.9, top_p=0.95, seed=r.seed + 1) for r in reqs]
    assert [c.tokens for c in Engine(model, tok).generate(other_seeds)] != together


def test_sampled_frequencies_follow_the_softmax():
    torch.manual_seed(0)
    logits = torch.randn(1, 6) * 1.5
    rows = 40000
    ones = torch.ones(rows)
    toks = pick_tokens(logits.expand(rows, -1), ones * 0.7, ones, torch.arange(rows), torch.zeros(rows, dtype=torch.long),
                       sample=True, nucleus=False)
    freq = torch.bincount(toks, minlength=6).float() / rows
    expected = (logits[0] / 0.7).softmax(-1)
    assert (freq - expected).abs().sum() / 2 < 0.01  # total variation; ~0.004 expected at 40k draws


def test_top_p_keeps_only_the_nucleus():
    logits = torch.tensor([[4.0, 3.0, 0.0, -1.0, -2.0]])
    rows = 5000
    ones = torch.ones(rows)
    toks = pick_tokens(logits.expand(rows, -1), ones, ones * 0.9, torch.arange(rows), torch.zeros(rows, dtype=torch.long),
                       sample=True, nucleus=True)
    p = logits[0].softmax(-1)  # 0.71, 0.26, ...: the first two reach 0.9
    assert set(toks.tolist()) == {0, 1}
    share = (toks == 0).float().mean().item()
    assert abs(share - p[0] / (p[0] + p[1])) < 0.03


def test_uniforms_are_a_function_of_seed_and_step_only():
    a = request_uniform(torch.tensor([1, 2, 1, 1 + (1 << 32)]), torch.tensor([5, 5, 6, 5]))
    assert len(set(a.tolist())) == 4  # seed, step and the seed's high bits all matter
    assert a[0] == request_uniform(torch.tensor([1]), torch.tensor([5]))[0]
    many = request_uniform(torch.arange(20000), torch.zeros(20000, dtype=torch.long))
    assert abs(many.mean().item() - 0.5) < 0.01 and abs(many.var().item() - 1 / 12) < 0.005


def test_stop_strings_cut_the_text():
    model, tok = tiny_model("llama")
    prompt = tok(PROMPTS[1]).input_ids
    full = Engine(model, tok).generate([Request(prompt, max_new_tokens=20)])[0]
    text = full.text
    assert len(text) > 6
    stop = text[3:5]
    cut = Engine(model, tok).generate([Request(prompt, max_new_tokens=20, stop=(stop, "never-there"))])[0]
    assert cut.finish == "stop"
    assert cut.text == text[:text.find(stop)]
    assert len(cut.tokens) <= len(full.tokens)


def test_bad_requests_are_one_line_errors():
    from probe.errors import PrunescopeError

    model, tok = tiny_model("llama")
    with pytest.raises(PrunescopeError, match="empty prompt"):
        Engine(model, tok).generate([Request([], max_new_tokens=3)])
    with pytest.raises(PrunescopeError, match="needs a CUDA device"):
        Engine(model, tok, GenerationOptions(graphs="on")).generate([Request([5, 6], max_new_tokens=3)])


def test_lm_eval_requests_match_hflm_own_generate(default_model):
    """Our HFLM's generate_until (the engine) returns the texts lm-eval's own batched generate does."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from analysis.evaluate import make_lm

    questions = ["Question: What is 17 + 25?\nAnswer:", "Question: Tom has 3 apples and buys 4 more. How many?\nAnswer:",
                 "Q: Name a colour.\nA:", "Question: What is 9 * 8?\nAnswer: Let's think step by step."]
    limits = [8, 24, 5, 32]
    reqs = [Instance(request_type="generate_until", doc={}, idx=0,
                     arguments=(q, {"until": ["\n\n", "Question:"], "max_gen_toks": m, "do_sample": False}))
            for q, m in zip(questions, limits)]
    lm = make_lm(default_model, batch_size=2, gen_batch_size=2, show_progress=False)
    ours = lm.generate_until(reqs, disable_tqdm=True)
    stock = HFLM.generate_until(lm, reqs, disable_tqdm=True)
    assert ours == stock
    assert all(ours) and len(set(ours)) == len(ours)
