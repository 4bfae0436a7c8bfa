"""Recovery recipes (paper, qlora) and explicit overrides, layer tuning, arms matched on steps or
tokens, and seeds that change a run."""

import json

import pytest
import torch

from prunescope.core.errors import PrunescopeError
from prunescope.core.options import Output, Placement
from prunescope.recover.train import RECIPES, RecoverOptions, plan_recovery, recover_model

QUICK = dict(warmup=1, eval_every=2, save_every=2, micro_batch=4, train_batch=4, heldout=4, lr=2e-3)


@pytest.fixture(scope="module")
def sgr_file(tmp_path_factory):
    recs = [{"id": str(i), "prompt": f"What is {i} plus {i}?", "response": f"{i} plus {i} is {2 * i}. " * (1 + i % 3),
             "reference": f"The sum is {2 * i}."} for i in range(24)]
    path = tmp_path_factory.mktemp("data") / "sgr.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


@pytest.fixture(scope="module")
def pruned_dir(tiny_llama_dir, tmp_path_factory):
    """The 4-layer tiny model with layer 2 dropped, as prunescope prune writes it (plan record included)."""
    from prunescope.probe.models import load_model
    from prunescope.prune.surgery import save_pruned

    lm = load_model(tiny_llama_dir)
    out = tmp_path_factory.mktemp("pruned") / "drop2"
    return save_pruned(lm.model, lm.tokenizer, [2], out, record={"plan": {"drop": [2], "n_layers": 4},
                                                                   "source_model": str(tiny_llama_dir)})


def _where(model, out) -> dict:
    return dict(model=model, placement=Placement(device="cpu"), output=Output(out=str(out), progress=False))


# ---------------------------------------------------------------- recipes
def test_the_recipes_resolve_to_their_values():
    paper = RecoverOptions().check()
    assert (paper.recipe, paper.rank, paper.alpha, paper.dropout, paper.lr, paper.adam_beta2, paper.weight_decay,
            paper.warmup, paper.warmup_ratio, paper.max_grad_norm, paper.train_batch, paper.micro_batch,
            paper.max_seq_len, paper.epochs, paper.quant, paper.grad_checkpointing, paper.train) == \
        ("paper", 64, 16, 0.05, 2e-4, 0.99, 1e-4, 50, 0.0, 1.0, 8, 4, 8192, 1, True, True, "lora")
    qlora = RecoverOptions(recipe="qlora").check()
    assert (qlora.rank, qlora.alpha, qlora.dropout, qlora.lr, qlora.adam_beta2, qlora.weight_decay, qlora.warmup,
            qlora.warmup_ratio, qlora.max_grad_norm, qlora.train_batch) == \
        (64, 16, 0.1, 2e-4, 0.999, 0.0, 0, 0.03, 0.3, 16)
    for name in ("paper", "qlora"):
        o = RecoverOptions(recipe=name).check()
        assert {k: getattr(o, k) for k in RECIPES[name]} == RECIPES[name]


def test_an_explicit_value_overrides_the_recipe():
    o = RecoverOptions(recipe="qlora", rank=16, alpha=32, max_grad_norm=0.0, lr=1e-4).check()
    assert (o.rank, o.alpha, o.max_grad_norm, o.lr, o.dropout) == (16, 32, 0.0, 1e-4, 0.1)
    # one warm-up given replaces the recipe's pair
    assert (RecoverOptions(warmup_ratio=0.1).check().warmup, RecoverOptions(recipe="qlora", warmup=7).check()
            .warmup_ratio) == (0, 0.0)
    with pytest.raises(PrunescopeError, match="--warmup 5 and --warmup-ratio 0.1 both set"):
        RecoverOptions(warmup=5, warmup_ratio=0.1).check()
    # a checked object keeps what the user set when its recipe changes; the recipe's values follow it
    o = RecoverOptions(rank=8).check().replace(recipe="qlora").check()
    assert (o.rank, o.dropout, o.train_batch) == (8, 0.1, 16)
    # the CLI takes the same: a flag given is explicit, an unset one the recipe's
    from argparse import Namespace

    from prunescope.core.options import from_namespace

    o = from_namespace(RecoverOptions, Namespace(recipe="qlora", rank=8, quant=True))
    assert (o.rank, o.alpha, o.max_grad_norm) == (8, 16, 0.3)


def test_the_cli_help_names_each_recipe_value_and_its_source(capsys):
    from prunescope.cli import main

    with pytest.raises(SystemExit):
        main(["recover", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--recipe {paper,qlora}" in text
    assert "paper 0.99 [the paper's script: --adam_beta2 0.99], qlora 0.999" in text
    assert "--lora_r 16, which its sft_trainer.py replaces by 64 under --use_qlora True" in text


def test_a_run_records_its_recipe_and_every_resolved_value(tiny_llama_dir, sgr_file, tmp_path):
    out = tmp_path / "rec"
    s = recover_model(RecoverOptions(data=str(sgr_file), quant=False, steps=2, recipe="qlora", rank=4, **QUICK),
                      **_where(tiny_llama_dir, out))
    rec = json.loads((out / "prunescope_recovery.json").read_text())
    assert s["recipe"] == rec["recovery"]["recipe"] == rec["config"]["recipe"] == "qlora"
    cfg = rec["config"]
    assert (cfg["rank"], cfg["dropout"], cfg["adam_beta2"], cfg["weight_decay"], cfg["max_grad_norm"]) == \
        (4, 0.1, 0.999, 0.0, 0.3)
    assert "rank" not in s["set_by_recipe"] and "dropout" in s["set_by_recipe"]
    assert all(cfg[k] is not None for k in RECIPES["qlora"])


# ---------------------------------------------------------------- fair arms
def test_arms_matched_on_steps_or_tokens_report_both(tiny_llama_dir, sgr_file, tmp_path):
    """Two arms asked for the same steps take exactly those and report their tokens (known before
    training, from the seeded batch order); an arm given the first's tokens as a budget reports the
    steps that took."""
    sgr = RecoverOptions(data=str(sgr_file), quant=False, steps=3, **QUICK)
    ext = sgr.replace(mode="external")
    plan = plan_recovery(sgr, model=tiny_llama_dir)
    a = recover_model(sgr, **_where(tiny_llama_dir, tmp_path / "sgr"), merge=False)
    b = recover_model(ext, **_where(tiny_llama_dir, tmp_path / "ext"), merge=False)
    assert a["steps"] == b["steps"] == plan["steps"] == 3
    assert a["tokens"] == a["trained_tokens"] == a["planned_tokens"] == plan["tokens"] > b["tokens"] > 0
    budget = ext.replace(steps=None, token_budget=a["tokens"])
    want = plan_recovery(budget, model=tiny_llama_dir)
    c = recover_model(budget, **_where(tiny_llama_dir, tmp_path / "ext-tokens"), merge=False)
    assert c["steps"] == c["planned_steps"] == want["steps"] > 3 and c["tokens"] == want["tokens"] >= a["tokens"]
    assert c["token_budget"] == a["tokens"]
    curve = [json.loads(x) for x in (tmp_path / "ext-tokens" / "curve.jsonl").read_text().splitlines()]
    assert curve[-1]["step"] == c["steps"] and curve[-1]["tokens"] == c["tokens"]


def test_another_seed_trains_another_run_and_the_same_seed_the_same(tiny_llama_dir, sgr_file, tmp_path):
    """The seed draws the data order and the LoRA init (and dropout), not the held-out examples."""
    from safetensors.torch import load_file

    def adapter(seed, name):
        s = recover_model(RecoverOptions(data=str(sgr_file), quant=False, steps=2, seed=seed, rank=4, **QUICK),
                          **_where(tiny_llama_dir, tmp_path / name), merge=False)
        return s, load_file(tmp_path / name / "adapter" / "adapter_model.safetensors")

    (s0, a0), (s0b, a0b), (s1, a1) = adapter(0, "a"), adapter(0, "b"), adapter(1, "c")
    assert a0.keys() == a1.keys() and all(torch.equal(a0[k], a0b[k]) for k in a0)
    assert not any(torch.equal(a0[k], a1[k]) for k in a0 if "lora_A" in k)
    assert s0["final_eval_ppl"] == s0b["final_eval_ppl"] != s1["final_eval_ppl"]
    assert s0["n_eval"] == s1["n_eval"] and s0["planned_tokens"] != s1["planned_tokens"]  # same split, other order


# ---------------------------------------------------------------- layer tuning
def test_default_tune_layers_are_the_layers_next_to_each_cut(tmp_path):
    from prunescope.recover.student import cut_neighbours, plan_drop
    from prunescope.recover.train import tune_layers

    assert cut_neighbours([3, 4], 8) == [2, 3]
    assert cut_neighbours([0, 1], 6) == [0]             # no layer before the first
    assert cut_neighbours([24, 25, 26, 27, 28, 29, 30], 32) == [23, 24]  # reverse order: the last stays
    assert cut_neighbours([4, 5, 11, 12, 17, 20, 24], 28) == [3, 4, 8, 9, 12, 13, 14, 15, 17, 18]
    # as prunescope prune writes it (prunescope_plan.json holds the plan), and a bare plan.json
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "prunescope_plan.json").write_text(json.dumps({"plan": {"drop": [5, 2, 3], "n_layers": 10},
                                                                      "source_model": "x"}))
    assert plan_drop(tmp_path / "a") == ([2, 3, 5], 10)
    assert tune_layers(RecoverOptions(mode="tune").check(), tmp_path / "a", 7) == [1, 2, 3]  # keep 0 1 4 6 7 8 9
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "plan.json").write_text(json.dumps({"strategy": "bi", "n_layers": 6, "drop": [0]}))
    assert tune_layers(RecoverOptions(train="tune").check(), tmp_path / "b", 5) == [0]
    with pytest.raises(PrunescopeError, match="drops 1 of 6 layers, but the model has 4"):
        tune_layers(RecoverOptions(train="tune").check(), tmp_path / "b", 4)
    (tmp_path / "c").mkdir()
    with pytest.raises(PrunescopeError, match="--tune-layers"):
        tune_layers(RecoverOptions(train="tune").check(), tmp_path / "c", 4)


def test_tune_options_are_checked():
    o = RecoverOptions(mode="tune").check()
    assert (o.train, o.target, o.quant) == ("tune", "sgr", False)
    assert RecoverOptions(mode="distill", teacher="x", train="tune").check().target == "distill"
    for bad, match in ((dict(mode="tune", train="lora"), "cannot go with --train lora"),
                       (dict(tune_layers=[1]), "choose the layers of --train tune"),
                       (dict(train="tune", tune_layers=[1], tune_last=2), "not both"),
                       (dict(train="tune", mode="random"), "--train lora")):
        with pytest.raises(PrunescopeError, match=match):
            RecoverOptions(**bad).check()


def test_tuning_changes_only_the_chosen_layers_and_writes_a_plain_checkpoint(pruned_dir, sgr_file, tmp_path):
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(pruned_dir, dtype=torch.float32).state_dict()
    out = tmp_path / "tune"
    s = recover_model(RecoverOptions(mode="tune", data=str(sgr_file), steps=3, **QUICK), **_where(pruned_dir, out))
    assert s["train"] == "tune" and s["tuned_layers"] == [1, 2] and s["steps"] == 3 and s["tokens"] > 0
    assert not (out / "adapter").exists()
    after = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)  # plain transformers loads it
    assert type(after).__name__ == "LlamaForCausalLM" and after.config.num_hidden_layers == 3
    got = after.state_dict()
    assert got.keys() == before.keys()
    changed = {k for k in before if not torch.equal(before[k], got[k])}
    assert changed and all(k.startswith(("model.layers.1.", "model.layers.2.")) for k in changed)
    assert {k.split(".")[2] for k in changed} == {"1", "2"}  # both tuned layers learned
    rec = json.loads((out / "prunescope_recovery.json").read_text())
    assert rec["recovery"]["tuned_layers"] == [1, 2] and rec["config"]["train"] == "tune"
    assert (out / "prunescope_plan.json").is_file()  # the pruning record stays with the model


def test_tune_last_layers_and_head_resume_like_an_uninterrupted_run(pruned_dir, sgr_file, tmp_path):
    cfg = RecoverOptions(train="tune", tune_last=1, data=str(sgr_file), steps=4, **QUICK)
    full = recover_model(cfg, **_where(pruned_dir, tmp_path / "full"))
    part = recover_model(cfg, **_where(pruned_dir, tmp_path / "part"), stop_after=2)
    assert not part["finished"] and (tmp_path / "part" / "checkpoints" / "step-000002" / "tuned.safetensors").is_file()
    part = recover_model(cfg, **_where(pruned_dir, tmp_path / "part"))
    assert full["tuned_layers"] == part["tuned_layers"] == [2] and full["tuned_head"]
    assert part["final_eval_ppl"] == pytest.approx(full["final_eval_ppl"], rel=1e-5)
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(tmp_path / "full", dtype=torch.float32).state_dict()
    b = AutoModelForCausalLM.from_pretrained(pruned_dir, dtype=torch.float32).state_dict()
    assert not torch.equal(a["lm_head.weight"], b["lm_head.weight"])
    assert torch.equal(a["model.layers.0.mlp.up_proj.weight"], b["model.layers.0.mlp.up_proj.weight"])
