"""Linear replacement of removed layers (recover/linear.py) and repair calibration texts
(recover/calibration.py): the fold is exact, identity layers give the identity map, the repaired
checkpoint is a plain one, and on the default model the repair lowers the held-out loss."""

import copy
import json
import time

import pytest
import torch

from prunescope.core.errors import PrunescopeError
from prunescope.core.options import Output, Placement
from prunescope.probe.blocks import Blocks
from prunescope.probe.models import LoadedModel
from prunescope.probe.tiny import save_tiny_model, tiny_model
from prunescope.prune.commands import PruneOptions, calibration_texts, prune_model
from prunescope.prune.surgery import remove_layers
from prunescope.recover.calibration import circuit_texts, generic_texts, mix_counts, repair_texts
from prunescope.recover.linear import (
    FIT_TABLE, LINEAR_RECORD, LinearOptions, collect_span_stats, fit_replacement, fit_spans, fold_replacement,
    linear_repair, spans_of,
)

TEXTS = [
    "Alice went to the market and bought 12 apples and 7 pears, 19 fruits in all.",
    "def f(arr, n):\n    return arr[n - 1 - i] + g(x, {'a': [1, 2]})",
    "Question: What is (4 * 4) * 1? Answer: 16",
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 + - * / = ( ) [ ] { }",
] * 4


def _lm(model, tok) -> LoadedModel:
    return LoadedModel(model, tok, "tiny", "")


def _ids(tok, texts=TEXTS[:4]):
    enc = tok(list(texts), return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


def _hooked(pruned, maps: dict, dropped: list[int]):
    """The pruned model with each map applied where the fold puts it, as hooks on the block handle:
    the MLP output of the layer before a span times T (the embeddings times T for a span at 0)."""
    hooks = []
    for span, T in maps.items():
        fn = (lambda t, name, T=T: (t.double() @ T).to(t.dtype))
        if span[0] == 0:
            hooks.append(("blocks.0.hook_resid_pre", fn))
        else:
            kept = span[0] - 1 - sum(d < span[0] - 1 for d in dropped)
            hooks.append((f"blocks.{kept}.hook_mlp_out", fn))
    return Blocks(pruned).hooks(hooks)


# ---------------------------------------------------------------- (a) the fold is exact
@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_folded_checkpoint_equals_map_applied_at_the_cut(family, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = tiny_model(family, n_layers=6)
    drop = [0, 2, 3]                             # a cut at the start and a span in the middle
    maps = fit_replacement(_lm(model, tok), drop, TEXTS)
    assert sorted(maps) == [(0,), (2, 3)]
    ids, mask = _ids(tok)
    pruned = remove_layers(copy.deepcopy(model), drop)
    with _hooked(pruned, maps, drop):
        expected = Blocks(pruned).forward(ids, mask)
    folded = fold_replacement(remove_layers(copy.deepcopy(model), drop), maps)
    folded.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        got = reloaded(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    assert torch.allclose(got[keep], expected[keep], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(Blocks(pruned).forward(ids, mask)[keep], expected[keep], atol=1e-3)


# ---------------------------------------------------------------- (b) identity layers
def _make_identity(model, layers: list[int]) -> None:
    """Zero what each layer writes to the residual stream: it then returns its input."""
    with torch.no_grad():
        for i in layers:
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()


@pytest.mark.parametrize("drop", [[2, 3], [0, 1]])
def test_identity_span_gives_the_identity_map_and_the_unpruned_model(drop):
    model, tok = tiny_model("llama", n_layers=5)
    _make_identity(model, drop)
    maps = fit_replacement(_lm(model, tok), drop, TEXTS)
    (span, T), = maps.items()
    assert span == tuple(drop)
    assert torch.allclose(T, torch.eye(T.shape[0], dtype=T.dtype), atol=1e-6)
    ids, mask = _ids(tok)
    repaired = fold_replacement(remove_layers(copy.deepcopy(model), drop), maps)
    keep = mask.bool()
    assert torch.allclose(Blocks(repaired).forward(ids, mask)[keep], Blocks(model).forward(ids, mask)[keep],
                          atol=1e-4, rtol=1e-4)


def test_padding_is_left_out_of_the_fit():
    """The sums see every non-padding token once: padding a text more changes nothing."""
    model, tok = tiny_model("llama")
    spans = spans_of([2])
    short = collect_span_stats(Blocks(model), tok, spans, TEXTS[:4], batch_size=4)[spans[0]]
    alone = [collect_span_stats(Blocks(model), tok, spans, [t])[spans[0]] for t in TEXTS[:4]]
    assert short.n == sum(a.n for a in alone) == int(sum(len(tok(t).input_ids) for t in TEXTS[:4]))
    assert torch.allclose(short.xtx, sum(a.xtx for a in alone), rtol=1e-8)


def test_cosine_objective_lowers_the_cosine_distance():
    model, tok = tiny_model("llama")
    lm = _lm(model, tok)
    lstsq = fit_replacement(lm, [2], TEXTS)[(2,)]
    cosine = fit_replacement(lm, [2], TEXTS, objective="cosine", options=LinearOptions(cosine_steps=20))[(2,)]
    st = collect_span_stats(Blocks(model), tok, spans_of([2]), TEXTS, keep_rows=True)[(2,)]
    x, y = torch.cat([r[0] for r in st.rows]).double(), torch.cat([r[1] for r in st.rows]).double()

    def distance(T):
        return float((1 - torch.nn.functional.cosine_similarity(x @ T, y, dim=-1)).mean())

    assert distance(cosine) < distance(lstsq)


def test_several_spans_and_the_ridge():
    model, tok = tiny_model("llama", n_layers=8)
    fits = fit_spans(_lm(model, tok), [6, 1, 2, 4], TEXTS, LinearOptions(ridge=1e-3))
    assert [f.layers for f in fits] == [(1, 2), (4,), (6,)]
    for f in fits:   # the map fits the calibration tokens better than no map
        assert 0 <= f.relative_residual < f.relative_residual_pruned
        assert f.tokens == sum(len(tok(t).input_ids) for t in TEXTS)


def test_unfoldable_cuts_are_refused_in_one_line():
    model, tok = tiny_model("gemma2")
    with pytest.raises(PrunescopeError, match="norm after that projection") as e:
        fit_replacement(_lm(model, tok), [2], TEXTS)
    assert "\n" not in str(e.value)
    with pytest.raises(PrunescopeError, match="ties to its output head"):   # gemma ties its embeddings
        fit_replacement(_lm(model, tok), [0, 1], TEXTS)
    llama, tok = tiny_model("llama")
    with pytest.raises(PrunescopeError, match="no layers were dropped"):
        fit_replacement(_lm(llama, tok), [], TEXTS)


# ---------------------------------------------------------------- (c) the command and its checkpoint
def test_linear_repair_writes_a_plain_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM

    base_dir = save_tiny_model("llama", tmp_path / "base", n_layers=6)
    pruned_dir = tmp_path / "pruned"
    plan = prune_model(PruneOptions(strategy="reverse", drop=2), model=str(base_dir),
                       placement=Placement(device="cpu"), output=Output(out=str(pruned_dir), progress=False))
    opts = LinearOptions(calibration_texts=8, calibration_mix=0.5, max_seq_len=64)
    out = tmp_path / "repaired"
    summary = linear_repair(opts, model=str(pruned_dir), placement=Placement(device="cpu"),
                            output=Output(out=str(out), progress=False))
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == len(model.model.layers) == 6 - len(plan.drop)
    record = json.loads((out / LINEAR_RECORD).read_text())
    assert record["drop"] == plan.drop and record["objective"] == "lstsq"
    assert record["calibration"]["circuit"] == record["calibration"]["generic"] == 4
    assert [s["layers"] for s in record["spans"]] == [plan.drop]
    assert 0 <= record["spans"][0]["relative_residual"] < record["spans"][0]["relative_residual_pruned"]
    assert (out / "prunescope_plan.json").is_file() and (out / f"{FIT_TABLE}.csv").is_file()
    # the checkpoint is the pruned model with the fitted map folded in
    base, tok = AutoModelForCausalLM.from_pretrained(base_dir).eval(), tiny_model("llama")[1]
    texts = repair_texts(0.5, 8, 0, held_out=opts.held_out_items)  # the scored probe items stay out
    assert record["calibration"]["held_out_items"] == 200
    maps = fit_replacement(_lm(base, tok), plan.drop, texts, options=opts)
    expected = fold_replacement(AutoModelForCausalLM.from_pretrained(pruned_dir), maps)
    ids, mask = _ids(tok)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids, attention_mask=mask).logits,
                              expected(input_ids=ids, attention_mask=mask).logits, atol=1e-5)
    # the same settings again: the finished record, nothing refitted; other settings are refused
    assert linear_repair(opts, model=str(pruned_dir), output=Output(out=str(out), progress=False)) == summary
    with pytest.raises(PrunescopeError, match="different settings"):
        linear_repair(opts.replace(calibration_mix=0.0), model=str(pruned_dir), output=Output(out=str(out)))
    with pytest.raises(PrunescopeError, match="not a repaired checkpoint"):
        linear_repair(opts, model=str(pruned_dir), output=Output(out=str(base_dir), overwrite=True))


def test_linear_repair_needs_to_know_the_dropped_layers(tmp_path):
    base_dir = save_tiny_model("llama", tmp_path / "base")
    model, tok = tiny_model("llama")
    pruned_dir = tmp_path / "pruned"
    remove_layers(model, [1]).save_pretrained(pruned_dir)
    tok.save_pretrained(pruned_dir)
    with pytest.raises(PrunescopeError, match="which layers were dropped"):
        linear_repair(LinearOptions(), model=str(pruned_dir), base=str(base_dir),
                      output=Output(out=str(tmp_path / "o")))
    with pytest.raises(PrunescopeError, match="is not layer"):   # the wrong layer named as dropped
        linear_repair(LinearOptions(dropped=[2], calibration_texts=4, max_seq_len=32), model=str(pruned_dir),
                      base=str(base_dir), placement=Placement(device="cpu"), output=Output(out=str(tmp_path / "o")))


# ---------------------------------------------------------------- (d) the default model
def _loss(model, tok, texts: list[str]) -> float:
    """Mean next-token loss over the texts' tokens (padding left out)."""
    total, count = 0.0, 0
    for i in range(0, len(texts), 4):   # a few rows at a time: the logits are [rows, tokens, vocab]
        enc = tok(texts[i:i + 4], return_tensors="pt", padding=True, truncation=True, max_length=256)
        with torch.no_grad():
            logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits[:, :-1]
        target = enc.input_ids[:, 1:].masked_fill(enc.attention_mask[:, 1:] == 0, -100)
        total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100,
                                                         reduction="sum"))
        count += int((target != -100).sum())
    return total / count


def test_repair_lowers_held_out_loss_on_the_default_model(default_model):
    """BI 25% on the default model, repaired with generic (mix 0) and half-circuit (mix 0.5) texts:
    the loss on held-out texts of the calibration's kind drops below the pruned model's."""
    lm = default_model
    plan = prune_model(PruneOptions(strategy="bi", ratio=0.25, texts=16), loaded=lm, output=Output(progress=False))
    held = {"generic": [t for t in generic_texts(48, seed=1) if t not in generic_texts(32, seed=0)][:16],
            "circuit": circuit_texts(16, seed=1)}   # other draws than the fits' (seed 0)
    pruned = remove_layers(copy.deepcopy(lm.model), plan.drop)
    losses = {"base": {k: _loss(lm.model, lm.tokenizer, v) for k, v in held.items()},
              "pruned": {k: _loss(pruned, lm.tokenizer, v) for k, v in held.items()}}
    print(f"\ndrop {plan.drop} (BI, 25%)")
    for mix in (0.0, 0.5):
        texts = repair_texts(mix, 32, seed=0)
        start = time.perf_counter()
        fits = fit_spans(lm, plan.drop, texts, LinearOptions(max_seq_len=256))
        seconds = time.perf_counter() - start
        repaired = fold_replacement(remove_layers(copy.deepcopy(lm.model), plan.drop),
                                    {f.layers: f.map for f in fits})
        losses[f"mix {mix}"] = {k: _loss(repaired, lm.tokenizer, v) for k, v in held.items()}
        print(f"mix {mix}: fit on {len(texts)} texts ({fits[0].tokens} tokens) in {seconds:.1f} s on the CPU; "
              "relative residual per span (map / no map): "
              + ", ".join(f"{f.layers}: {f.relative_residual:.3f} / {f.relative_residual_pruned:.3f}" for f in fits))
    print("held-out loss (16 texts each):", "; ".join(
        f"{name} generic {v['generic']:.3f} circuit {v['circuit']:.3f}" for name, v in losses.items()))
    assert losses["mix 0.0"]["generic"] < losses["pruned"]["generic"]
    assert losses["mix 0.5"]["circuit"] < losses["pruned"]["circuit"]
    assert losses["mix 0.5"]["circuit"] < losses["mix 0.0"]["circuit"]


# ---------------------------------------------------------------- (e) calibration texts
@pytest.mark.parametrize("mix, circuit", [(0.0, 0), (0.5, 6), (1.0, 12), (0.25, 3)])
def test_calibration_mix_gives_the_share_of_circuit_texts(mix, circuit):
    texts = repair_texts(mix, 12, seed=2)
    pool = set(circuit_texts(12, seed=2))
    assert len(texts) == 12 and sum(t in pool for t in texts) == circuit
    assert sum(t in set(generic_texts(12, seed=2)) for t in texts) == 12 - circuit
    assert mix_counts(mix, 12) == (12 - circuit, circuit)
    assert repair_texts(mix, 12, seed=2) == texts


def test_circuit_texts_are_the_scoring_calibration_items():
    assert circuit_texts(9, seed=4) == calibration_texts(None, 9, seed=4)


def test_circuit_texts_leave_out_the_scored_probe_items():
    """The stage probes score the first items of each probe (fixed seed); a repair fitted on them
    would be measured on its own calibration data. With seed 0 the draws meet them (the same
    generator, the same seed), and held_out keeps every one of them out."""
    from prunescope.probe.tasks import make_items, pruning_probe_options

    scored = {p: {(it.prompt.rstrip("\n").rsplit("\n", 1)[-1], it.answer)
                  for it in make_items(p, n=100, **pruning_probe_options(p))} for p in ("brackets", "copy")}

    def hits(texts):
        return sum(any(t.endswith(q + a) for q, a in scored["brackets"] | scored["copy"]) for t in texts)

    assert hits(circuit_texts(60, seed=0, probes=["brackets", "copy"])) > 0
    kept = circuit_texts(60, seed=0, probes=["brackets", "copy"], held_out=100)
    assert len(kept) == 60 and hits(kept) == 0
    assert repair_texts(1.0, 60, seed=0, probes=["brackets", "copy"], held_out=100) != \
        repair_texts(1.0, 60, seed=0, probes=["brackets", "copy"])


def test_generic_texts_from_files(tmp_path):
    txt = tmp_path / "t.txt"
    txt.write_text("one text\nanother text\na third\n")
    assert generic_texts(2, seed=0, source=txt) in (["one text", "another text"], ["one text", "a third"],
                                                     ["another text", "a third"])
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"instruction": "Add.", "input": "2 and 3", "output": "5"}) + "\n")
    assert generic_texts(1, source=prompts) == ["Add.\n\n2 and 3\n\n5"]
    with pytest.raises(PrunescopeError, match="holds 1 generic texts but the calibration asks 2"):
        repair_texts(0.0, 2, generic=prompts)
    with pytest.raises(PrunescopeError, match="between 0 and 1"):
        repair_texts(1.5, 2)
