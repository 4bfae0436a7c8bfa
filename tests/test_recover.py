"""Recovery: prompts, SGR generation with resume, QLoRA training, resume, merge, distillation, errors."""

import json
import math
import sys

import pytest
import torch

from prunescope.core.errors import PrunescopeError
from prunescope.probe.models import load_model
from prunescope.core.options import Output, Placement
from prunescope.recover.data import IGNORE, builtin_prompts, encode_example, load_prompts, prompt_text
from prunescope.recover.sgr import SGROptions, generate_responses
from prunescope.recover.train import RecoverOptions, check_bitsandbytes, recover_model

FAST = dict(warmup=2, eval_every=2, save_every=2, micro_batch=4, train_batch=8, heldout=6, lr=2e-3, rank=8, alpha=16)


@pytest.fixture(scope="module")
def sgr_file(tmp_path_factory):
    recs = [{"id": str(i), "prompt": f"What is {i} plus {i}?", "response": f"{i} plus {i} is {2 * i}. " * 3,
             "reference": f"The sum is {2 * i}."} for i in range(30)]
    path = tmp_path_factory.mktemp("data") / "sgr.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def _where(model, out) -> dict:
    """``model=``, ``placement=`` and ``output=`` of a quiet recovery on the CPU into ``out``."""
    return dict(model=model, placement=Placement(device="cpu"), output=Output(out=str(out), progress=False))


def _curve(out):
    return [json.loads(x) for x in (out / "curve.jsonl").read_text().splitlines()]


def test_qlora_loss_falls_and_merge_matches_adapter(tiny_llama_dir, sgr_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from prunescope.recover.train import load_student

    out = tmp_path / "rec"
    s = recover_model(RecoverOptions(data=str(sgr_file), steps=6, **FAST), **_where(tiny_llama_dir, out))
    curve = _curve(out)
    assert s["finished"] and s["steps"] == 6 and [c["step"] for c in curve] == [0, 2, 4, 6]
    assert curve[-1]["eval_loss"] < curve[0]["eval_loss"] - 0.5  # held-out response loss falls
    assert (out / "curve.png").is_file() and (out / "adapter" / "adapter_config.json").is_file()
    # the merged folder is a plain checkpoint whose logits equal the 4-bit model + adapter
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(merged).__name__ == "LlamaForCausalLM" and getattr(merged.config, "quantization_config", None) is None
    adapted = PeftModel.from_pretrained(load_student(tiny_llama_dir, quant=True), str(out / "adapter")).eval()
    ids = torch.randint(5, 500, (2, 16))
    with torch.no_grad():
        a, m = adapted(ids).logits, merged(ids).logits
    assert torch.allclose(a, m, atol=1e-4), (a - m).abs().max()
    rec = json.loads((out / "prunescope_recovery.json").read_text())
    assert rec["merged_into"] == "dequantized NF4" and rec["recovery"]["mode"] == "sgr"


def test_resume_continues_from_saved_step(tiny_llama_dir, sgr_file, tmp_path):
    cfg = dict(steps=6, **FAST)
    full = tmp_path / "full"
    # one uninterrupted run, whose curve the resumed one (part, below) equals
    recover_model(RecoverOptions(**cfg, data=str(sgr_file)), **_where(tiny_llama_dir, full), merge=False)
    part = tmp_path / "part"
    cfg = dict(cfg, data=str(sgr_file))
    s = recover_model(RecoverOptions(**cfg), **_where(tiny_llama_dir, part), stop_after=3)
    assert not s["finished"] and s["steps"] == 3
    assert sorted(p.name for p in (part / "checkpoints").iterdir()) == ["step-000003"]
    s = recover_model(RecoverOptions(**cfg), **_where(tiny_llama_dir, part), merge=False)
    assert s["finished"] and s["steps"] == 6
    a, b = _curve(full), _curve(part)
    assert [c["step"] for c in b] == [0, 2, 4, 6]
    for x, y in zip(a, b):
        assert x["eval_loss"] == pytest.approx(y["eval_loss"], abs=1e-4)
    with pytest.raises(PrunescopeError, match="different settings"):
        recover_model(RecoverOptions(**{**cfg, "lr": 1e-3}), **_where(tiny_llama_dir, part))


def test_plain_lora_external_and_distill(tiny_llama_dir, sgr_file, tmp_path):
    s = recover_model(RecoverOptions(mode="external", data=str(sgr_file), quant=False, steps=4, **FAST),
                **_where(tiny_llama_dir, tmp_path / "ext"), merge=False)
    assert s["trained_tokens"] < 4 * 8 * 12  # the short references, not the long SGR responses
    # distill the 4-layer model into itself with layer 2 removed: the KL on responses falls
    from prunescope.prune.surgery import save_pruned

    lm = load_model(tiny_llama_dir)
    pruned = save_pruned(lm.model, lm.tokenizer, [2], tmp_path / "pruned")
    s = recover_model(RecoverOptions(mode="distill", data=str(sgr_file), teacher=str(tiny_llama_dir), quant=False, steps=8,
                               **FAST), **_where(pruned, tmp_path / "kd"), merge=False)
    kl = [c["train_loss"] for c in _curve(tmp_path / "kd")[1:]]
    assert s["finished"] and kl[-1] < 0.7 * kl[0], kl
    with pytest.raises(PrunescopeError, match="--teacher"):
        recover_model(RecoverOptions(mode="distill", data=str(sgr_file)), **_where(tiny_llama_dir, tmp_path / "kd2"))


def test_random_init_control_trains_a_fresh_copy(tiny_llama_dir, sgr_file, tmp_path):
    """The reference code's control: the same architecture, freshly initialised (seeded), trained
    the same way; its starting weights are written once and reused when the run resumes."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "ctl"
    from prunescope.core.options import Output

    cfg = RecoverOptions(mode="random", data=str(sgr_file), quant=False, steps=4, seed=3, **FAST)
    where = dict(model=tiny_llama_dir, output=Output(out=str(out), progress=False))
    s = recover_model(cfg, **where, stop_after=2)
    assert not s["finished"]
    fresh = AutoModelForCausalLM.from_pretrained(out / "init", dtype=torch.float32)
    pruned = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    a, b = fresh.state_dict(), pruned.state_dict()
    assert a.keys() == b.keys() and fresh.config.num_hidden_layers == pruned.config.num_hidden_layers
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], b["model.layers.0.mlp.up_proj.weight"])
    before = a["model.layers.0.mlp.up_proj.weight"].clone()
    s = recover_model(cfg, **where)  # resumes on the same init
    assert s["finished"] and s["mode"] == "random"
    again = AutoModelForCausalLM.from_pretrained(out / "init", dtype=torch.float32)
    assert torch.equal(again.state_dict()["model.layers.0.mlp.up_proj.weight"], before)
    curve = _curve(out)
    assert curve[-1]["eval_loss"] < curve[0]["eval_loss"]  # it learns something from the SGR responses
    rec = json.loads((out / "prunescope_recovery.json").read_text())
    assert rec["recovery"]["mode"] == "random"


def test_prompt_tokens_are_masked_on_ids(default_model, tiny):
    _, tiny_tok = tiny
    rec = {"id": "a", "prompt": "What is 12 + 7?", "response": "12 + 7 = 19."}
    for tok in (default_model.tokenizer, tiny_tok):
        ex = encode_example(tok, rec, "response", max_len=512)
        p_ids = tok(prompt_text(tok, rec), add_special_tokens=not tok.chat_template).input_ids
        assert ex.input_ids[: len(p_ids)] == p_ids and ex.labels[: len(p_ids)] == [IGNORE] * len(p_ids)
        resp = ex.labels[len(p_ids):]
        assert resp == ex.input_ids[len(p_ids):] and IGNORE not in resp and len(resp) == ex.n_response
        assert tok.decode(resp).startswith("12 + 7 = 19.")
    # the default model's chat template: the response ends with the end-of-turn marker
    ex = encode_example(default_model.tokenizer, rec, "response", max_len=512)
    assert "<|im_end|>" in default_model.tokenizer.decode(ex.input_ids[-ex.n_response:])
    with pytest.raises(PrunescopeError, match="max-seq-len"):
        encode_example(default_model.tokenizer, rec, "response", max_len=10)


def test_sgr_resumes_without_duplicates(tiny_llama_dir, tmp_path):
    lm = load_model(tiny_llama_dir)
    records = [{"id": str(i), "prompt": f"Tell me about {w}."} for i, w in enumerate("abcdefghij")]
    kw = dict(temperature=0.9, max_new_tokens=6, slots=3, seed=1)
    # one uninterrupted run, whose answers the resumed one (got, below) equals
    ref = generate_responses(SGROptions(**kw), loaded=lm, records=records,
                             output=Output(out=str(tmp_path / "full.jsonl"), progress=False))
    out = tmp_path / "part.jsonl"
    quiet = Output(out=str(out), progress=False)
    generate_responses(SGROptions(**kw), loaded=lm, records=records[:6], output=quiet)  # "crash" after 2 batches ...
    out.write_text(out.read_text() + '{"id": "6", "prom')  # ... while writing the third
    got = generate_responses(SGROptions(**kw), loaded=lm, records=records, output=quiet)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == [str(i) for i in range(10)]  # none dropped, none twice
    assert [r["response"] for r in got] == [r["response"] for r in ref]  # same draws as one uninterrupted run
    assert lines[0]["sgr"]["temperature"] == 0.9 and lines[0]["sgr"]["base_model"] == lm.name
    assert lm.tokenizer.padding_side == "right"  # left padding only while generating
    with pytest.raises(PrunescopeError, match="other settings"):
        generate_responses(SGROptions(**{**kw, "seed": 2}), loaded=lm, records=records, output=quiet)
    # the same base model from another cache folder (another machine) continues the file
    import shutil

    moved = tmp_path / "other-cache" / tiny_llama_dir.parent.name / tiny_llama_dir.name
    shutil.copytree(tiny_llama_dir, moved)
    more = [{"id": "10", "prompt": "Tell me about k."}]
    got = generate_responses(SGROptions(**kw), loaded=load_model(moved), records=records + more, output=quiet)
    assert [r["response"] for r in got[:10]] == [r["response"] for r in ref] and len(got) == 11


def test_prompt_files_and_bad_input(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"instruction": "Add", "input": "2 and 3", "output": "5"}\n'
                 '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n'
                 '{"question": "Why?", "answer": "Because."}\n')
    recs = load_prompts(f)
    assert [r.get("prompt") for r in recs] == ["Add\n\n2 and 3", None, "Why?"]
    assert [r["reference"] for r in recs] == ["5", "Hello", "Because."] and recs[1]["messages"][0]["content"] == "Hi"
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(PrunescopeError, match="holds no prompts"):
        load_prompts(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"\n')
    with pytest.raises(PrunescopeError, match=r"bad.jsonl:2: not valid JSON"):
        load_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "nokey.jsonl").write_text('{"text": "a"}\n')
    with pytest.raises(PrunescopeError, match=r"nokey.jsonl:1: no prompt found"):
        load_prompts(tmp_path / "nokey.jsonl")


def test_missing_bitsandbytes_and_missing_responses(monkeypatch, tiny_llama_dir, tmp_path):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    with pytest.raises(PrunescopeError, match="--no-quant"):
        check_bitsandbytes("cpu")
    monkeypatch.undo()
    with pytest.raises(PrunescopeError, match="no mps backend"):
        check_bitsandbytes("mps")
    f = tmp_path / "prompts.jsonl"
    f.write_text('{"id": "0", "prompt": "Hi"}\n{"id": "1", "prompt": "Yo"}\n')
    with pytest.raises(PrunescopeError, match="run `prunescope sgr`"):
        recover_model(RecoverOptions(data=str(f)), **_where(tiny_llama_dir, tmp_path / "x"))
    assert not (tmp_path / "x").exists()  # nothing written before the input was checked


def test_builtin_prompt_set():
    recs = builtin_prompts(60, seed=0)
    assert len(recs) == 60 and {r["category"] for r in recs} == {"instruction", "maths", "code"}
    assert sum(r["category"] == "code" for r in recs) == 20
    assert all(r["prompt"].strip() and r["reference"].strip() for r in recs)
    assert builtin_prompts(60, seed=0) == recs and builtin_prompts(60, seed=1) != recs
    # the whole offline pool: more than the 5,000 prompts a Qwen-sized recovery study asks for
    every = builtin_prompts(10**6, seed=0)
    counts = {c: sum(r["category"] == c for r in every) for c in ("instruction", "maths", "code")}
    assert len(every) == 6092 and counts == {"instruction": 4497, "maths": 583, "code": 1012}
    assert len({r["prompt"] for r in every}) > 6000  # distinct questions, not one pool repeated
    # a request for 5,000 gets 5,000: the small maths and code pools give their share to instructions
    some = builtin_prompts(5000, seed=0)
    counts = {c: sum(r["category"] == c for r in some) for c in ("instruction", "maths", "code")}
    assert len(some) == 5000 and counts == {"instruction": 3405, "maths": 583, "code": 1012}
    assert len(builtin_prompts(6092, seed=0)) == 6092


def test_empty_sgr_answers_are_left_out_of_every_arm(tmp_path, capsys):
    from prunescope.recover.train import training_records

    f = tmp_path / "sgr.jsonl"
    f.write_text('{"id": "0", "prompt": "Hi", "response": "Hello", "reference": "Hey"}\n'
                 '{"id": "1", "prompt": "Yo", "response": "  ", "reference": "Yes"}\n'
                 '{"id": "2", "prompt": "Go", "response": "Gone", "reference": "Went"}\n')
    for mode, field in (("sgr", "response"), ("external", "reference"), ("distill", "response")):
        recs, got = training_records(f, mode)
        assert got == field and [r["id"] for r in recs] == ["0", "2"]
    assert "1 of 3 prompts got an empty SGR response" in capsys.readouterr().out
    f.write_text('{"id": "1", "prompt": "Yo", "response": ""}\n')
    with pytest.raises(PrunescopeError, match="every SGR response is empty"):
        training_records(f, "sgr")


def test_too_few_records_report_no_held_out_perplexity(tiny_llama_dir, tmp_path, capsys):
    """Four records leave no held-out set: no perplexity anywhere (not 1.00 over nothing)."""
    from prunescope.cli import main
    from prunescope.recover.train import read_summary

    data = tmp_path / "sgr.jsonl"
    data.write_text("".join(json.dumps({"id": str(i), "prompt": f"Q{i}?", "response": f"A{i} " * 5}) + "\n"
                            for i in range(4)))
    out = tmp_path / "rec"
    assert main(["recover", "--model", str(tiny_llama_dir), "--data", str(data), "--no-quant", "--steps", "2",
                 "--warmup", "1", "--micro-batch", "2", "--train-batch", "2", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "no held-out perplexity (4 records" in printed and "perplexity 1.00" not in printed
    s = read_summary(out)["recovery"]
    assert s["final_eval_ppl"] is None and s["n_eval"] == 0 and s["n_train"] == 4
    curve = _curve(out)
    assert curve and all(c["eval_ppl"] is None and c["eval_loss"] is None for c in curve)
    assert (out / "curve.png").is_file()


def test_warmup_longer_than_the_run_is_capped_and_said(tiny_llama_dir, sgr_file, tmp_path, capsys):
    """--warmup 50 --steps 1 trains its one step at --lr (not lr/50), and says so."""
    cfg = {**FAST, "warmup": 50, "eval_every": 1}
    s = recover_model(RecoverOptions(data=str(sgr_file), quant=False, steps=1, **cfg),
                      **_where(tiny_llama_dir, tmp_path / "rec"), merge=False)
    assert "--warmup 50 is longer than the run (1 step): warming up over 1 step," in capsys.readouterr().out
    assert s["warmup"] == 1
    assert [c["lr"] for c in _curve(tmp_path / "rec")] == [FAST["lr"], FAST["lr"]]


def test_4bit_bf16_training_computes_in_bf16(tiny_llama_dir):
    """On a 4-bit model with bf16 compute everything runs in bf16, adapters included, as in TRL.
    peft's k-bit preparation (fp32 norms and embeddings) keeps every layer in fp32, and sdpa then takes
    its fp32 math kernel: 0.17-0.35x the tokens/s of peft + TRL on the 8B shape (H200)."""
    from prunescope.recover.data import Example
    from prunescope.recover.student import load_student
    from prunescope.recover.train import add_lora, compute_dtype, train_step

    model = load_student(tiny_llama_dir, quant=True, compute=torch.bfloat16)  # as on a GPU
    pm = add_lora(model, RecoverOptions(rank=8, alpha=16, grad_checkpointing=True))
    assert compute_dtype(pm) == torch.bfloat16 and model.model.norm.weight.dtype == torch.bfloat16
    trainable = [p for p in pm.parameters() if p.requires_grad]
    assert trainable and {p.dtype for p in trainable} == {torch.bfloat16}
    seen = []
    hook = model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    ids = list(range(5, 29))
    batch = [Example(ids, [IGNORE] * 8 + ids[8:], 16)] * 2
    loss, n = train_step(pm, batch, 0, torch.device("cpu"), micro_batch=2)
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16} and n == 48 and math.isfinite(loss)
    grads = [p.grad for name, p in pm.named_parameters() if "lora_B" in name]
    assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_fp32_adapters_on_a_bf16_4bit_model(tiny_llama_dir):
    """adapter_dtype float32 keeps the LoRA weights (and so their AdamW state) in fp32 while the
    frozen model computes in bf16: the first Qwen 1.5B SGR arm with bf16 adapters went NaN. A bf16
    adapter also loses an update much smaller than itself, which an fp32 one keeps."""
    from prunescope.recover.data import Example
    from prunescope.recover.student import load_student
    from prunescope.recover.train import add_lora, train_step

    model = load_student(tiny_llama_dir, quant=True, compute=torch.bfloat16)  # as on a GPU
    pm = add_lora(model, RecoverOptions(rank=8, alpha=16, adapter_dtype="float32"))
    trainable = [p for p in pm.parameters() if p.requires_grad]
    assert trainable and {p.dtype for p in trainable} == {torch.float32}
    assert model.model.norm.weight.dtype == torch.bfloat16
    ids = list(range(5, 29))
    loss, n = train_step(pm, [Example(ids, [IGNORE] * 8 + ids[8:], 16)] * 2, 0, torch.device("cpu"), micro_batch=2)
    assert n == 48 and math.isfinite(loss)
    grads = [p.grad for name, p in pm.named_parameters() if "lora_B" in name]
    assert grads and all(g is not None and g.dtype == torch.float32 and g.abs().sum() > 0 for g in grads)
    a = next(p for name, p in pm.named_parameters() if "lora_A" in name).detach()
    step = a.abs().max() * 1e-4  # an lr-sized step on the adapter's largest entry
    assert torch.equal((a.bfloat16() + step.bfloat16()).max(), a.bfloat16().max())  # bf16 rounds it away
    assert (a + step).max() > a.max()


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_chunked_response_loss_equals_the_whole_logits_one(family):
    """The loss is computed a chunk of rows at a time; loss and every gradient equal the plain path's."""
    from prunescope.probe.blocks import Blocks
    from prunescope.probe.tiny import tiny_model
    from prunescope.recover.train import response_hidden, response_nll_chunked

    model, _ = tiny_model(family)
    blocks = Blocks(model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size, (3, 20), generator=g)
    mask = torch.ones_like(ids)
    keep = torch.zeros(3, 19, dtype=torch.bool)
    keep[:, 6:] = True
    targets = ids[:, 1:][keep]

    def grads_of(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = torch.nn.functional.cross_entropy(blocks.final_logits(response_hidden(blocks, ids, mask, keep)).float(),
                                              targets, reduction="sum")
    chunked = response_nll_chunked(blocks, response_hidden(blocks, ids, mask, keep), targets, chunk=7)
    assert chunked is not None and torch.allclose(chunked, plain.detach(), rtol=1e-5)
    want, got = grads_of(plain), grads_of(chunked)
    assert want.keys() == got.keys() and len(want) > 10
    for name in want:  # fp32 sums in another order: equal to ~1e-6 of each tensor's scale
        scale = want[name].abs().max()
        assert (got[name] - want[name]).abs().max() <= 1e-5 * scale, name


def test_chunked_loss_leaves_a_capped_head_to_the_plain_path():
    from prunescope.probe.blocks import Blocks
    from prunescope.probe.tiny import tiny_model
    from prunescope.recover.train import response_nll_chunked

    model, _ = tiny_model("gemma2")  # final_logit_softcapping
    assert getattr(model.config, "final_logit_softcapping", None) is not None
    assert response_nll_chunked(Blocks(model), torch.zeros(2, model.config.hidden_size), torch.zeros(2).long()) is None


def test_perplexity_in_chunks_equals_the_whole_logits_one():
    import math

    from prunescope.probe.tiny import tiny_model
    from prunescope.recover.data import Example
    from prunescope.recover.train import collate, perplexity, response_nll

    model, _ = tiny_model("qwen2")
    examples = [Example(list(range(5, 25)), [IGNORE] * 6 + list(range(11, 25)), 14),
                Example(list(range(30, 42)), [IGNORE] * 4 + list(range(34, 42)), 8)]  # padded: a mask
    ids, mask, labels = collate(examples, 0, torch.device("cpu"))
    with torch.no_grad():
        nll, n = response_nll(model(input_ids=ids, attention_mask=mask).logits, labels)
    loss, ppl = perplexity(model, examples, 0, micro_batch=2)
    assert n == 22 and loss == pytest.approx(float(nll) / n, rel=1e-5) and ppl == pytest.approx(math.exp(loss))


def test_a_non_finite_step_is_skipped_and_a_diverging_run_stops(tiny_llama_dir, sgr_file, tmp_path, monkeypatch):
    """A NaN gradient in one step must not reach AdamW (it would make the adapters NaN for good, as
    the first Qwen 1.5B SGR run on the GPU did): that step is skipped, the run goes on with finite
    adapters; steps that keep diverging stop the run with a clear error."""
    import prunescope.recover.train as rt

    real, calls = rt.train_step, {"n": 0}

    def poisoned(model, *a, bad=lambda n: n == 2, **kw):
        loss, seen = real(model, *a, **kw)
        calls["n"] += 1
        if bad(calls["n"]):
            next(p for p in model.parameters() if p.requires_grad).grad.fill_(float("nan"))
        return loss, seen

    monkeypatch.setattr(rt, "train_step", poisoned)
    s = recover_model(RecoverOptions(data=str(sgr_file), quant=False, steps=6, **FAST),
                **_where(tiny_llama_dir, tmp_path / "one"), merge=False)
    assert s["finished"] and s["skipped_steps"] == 1 and s["steps"] == 6
    # what the skipped step looked like: a finite loss, a NaN gradient in exactly the poisoned weight
    (bad,) = s["non_finite"]
    assert bad["step"] == 2 and math.isfinite(bad["loss"]) and bad["grad_norm"] == "nan"
    assert bad["bad_grads"] == 1 and bad["first_bad_grads"][0].endswith("lora_A.default.weight")
    assert bad["bad_weights"] == 0
    curve = _curve(tmp_path / "one")
    assert all(math.isfinite(c["eval_loss"]) for c in curve)
    # the skipped step 2 still gets its curve point (its window: step 1 alone) and its checkpoint
    assert [c["step"] for c in curve] == [0, 2, 4, 6] and math.isfinite(curve[1]["train_loss"])
    calls["n"] = 0
    monkeypatch.setattr(rt, "train_step", lambda *a, **kw: poisoned(*a, bad=lambda n: n >= 2, **kw))
    with pytest.raises(PrunescopeError, match="diverged: 3 steps in a row"):
        recover_model(RecoverOptions(data=str(sgr_file), quant=False, steps=8, **FAST),
                **_where(tiny_llama_dir, tmp_path / "all"), merge=False)


def test_gradient_norm_is_clipped_and_recorded():
    from prunescope.recover.train import _grad_norm

    w = torch.nn.Parameter(torch.zeros(3))
    w.grad = torch.tensor([3.0, 4.0, 0.0])
    assert _grad_norm([w], 1.0) == pytest.approx(5.0)  # the norm before clipping
    assert float(w.grad.norm()) == pytest.approx(1.0, rel=1e-5)
    w.grad = torch.tensor([3.0, 4.0, 0.0])
    assert _grad_norm([w], None) == pytest.approx(5.0) and float(w.grad.norm()) == pytest.approx(5.0)
    w.grad[0] = float("inf")
    assert not math.isfinite(_grad_norm([w], 1.0))
