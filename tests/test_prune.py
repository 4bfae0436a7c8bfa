"""Pruning: checkpoint surgery round trip, strategies, protection, in-memory iterative search."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunescope.cli import main
from prunescope.probe.blocks import Blocks
from prunescope.core.errors import PrunescopeError
from prunescope.probe.models import load_model
from prunescope.core.results import write_table
from prunescope.prune.commands import PruneOptions, checkpoint_scorer, probe_scorer, prune_model
from prunescope.prune.scores import layer_scores, representation_scores
from prunescope.prune.strategies import count_to_drop, iterative, lowest_block, lowest_k, protected_from_table, reverse_order
from prunescope.prune.surgery import save_pruned


@pytest.mark.parametrize("drop", [[1], [0, 2]])
def test_surgery_round_trip(tiny, prompts, tmp_path, drop):
    model, tok = tiny
    ids, mask = prompts
    out = save_pruned(model, tok, drop, tmp_path / "pruned", record={"drop": drop})
    re = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()   # plain transformers
    assert re.config.num_hidden_layers == 4 - len(drop)
    if getattr(model.config, "layer_types", None):
        assert re.config.layer_types == [t for i, t in enumerate(model.config.layer_types) if i not in drop]
    blocks = Blocks(model)
    real = mask.bool()
    with torch.no_grad(), blocks.skip(drop):
        skipped = model(ids, attention_mask=mask).logits
        gen_skip = model.generate(ids[:1], max_new_tokens=10, do_sample=False, use_cache=True,
                                  pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        reloaded = re(ids, attention_mask=mask).logits
        gen_re = re.generate(ids[:1], max_new_tokens=10, do_sample=False, use_cache=True, pad_token_id=tok.pad_token_id)
    assert torch.allclose(skipped[real], reloaded[real], atol=1e-5)
    assert torch.equal(gen_skip, gen_re)
    assert json.loads((out / "prunescope_plan.json").read_text())["drop"] == drop
    assert len(model.model.layers) == 4            # the original is untouched


def test_existing_folder_refused_and_atomic(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    out = tmp_path / "p"
    out.mkdir()
    with pytest.raises(PrunescopeError, match="already exists"):
        save_pruned(model, tok, [1], out)
    # a crash while writing leaves neither a half checkpoint nor a temp folder
    monkeypatch.setattr(type(tok), "save_pretrained", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk")))
    with pytest.raises(RuntimeError):
        save_pruned(model, tok, [1], tmp_path / "q")
    assert not (tmp_path / "q").exists() and [p.name for p in tmp_path.iterdir()] == ["p"]


def test_strategies_on_controlled_scores():
    scores = {i: float(v) for i, v in enumerate([5, 1, 4, 0.5, 3, 2, 9, 8])}
    assert lowest_k(scores, 8, 3).drop == [1, 3, 5]
    assert lowest_k(scores, 8, 3, protected=[3]).drop == [1, 4, 5]
    assert reverse_order(8, 2).drop == [5, 6]
    assert reverse_order(8, 2, protected=[6]).drop == [4, 5]
    assert lowest_block({0: 0.5, 1: 0.2, 2: 0.3}, 4, 2).drop == [1, 2]
    assert lowest_block({0: 0.5, 1: 0.2, 2: 0.3}, 4, 2, protected=[1]).drop == [2, 3]
    # greedy on an additive metric picks the cheapest layers one at a time
    cost = {0: 5.0, 1: 1.0, 2: 3.0, 3: 2.0}
    plan = iterative(lambda sets: [-sum(cost[i] for i in s) for s in sets], 4, 2)
    assert plan.drop == [1, 3]
    assert iterative(lambda sets: [-sum(cost[i] for i in s) for s in sets], 4, 2, protected=[1]).drop == [2, 3]
    rows = [{"metric": "patching_effect", "layers": str(i), "value": v, "probe": "p"} for i, v in scores.items()]
    assert protected_from_table(rows, 2) == [6, 7]


def test_bad_counts():
    with pytest.raises(PrunescopeError, match="between 0 and 1"):
        count_to_drop(30, ratio=1.0)
    with pytest.raises(PrunescopeError, match="between 0 and 1"):
        count_to_drop(30, ratio=0)
    with pytest.raises(PrunescopeError, match="between 1 and 29"):
        count_to_drop(30, n=30)
    with pytest.raises(PrunescopeError, match="leaves only"):
        lowest_k({i: 0.0 for i in range(4)}, 4, 3, protected=[0, 1])
    with pytest.raises(PrunescopeError, match="unknown strategy"):
        prune_model(PruneOptions(strategy="magic", drop=1))


def test_block_influence_matches_definition(tiny):
    model, tok = tiny
    blocks = Blocks(model)
    texts = ["Alice went to the market and bought 12 apples"]
    bi = layer_scores(representation_scores(blocks, tok, texts), "block_influence")
    ids = tok(texts, return_tensors="pt").input_ids
    _, cache = blocks.run_with_cache(ids, names=["blocks.2.hook_resid_pre", "blocks.2.hook_resid_post"])
    cos = torch.nn.functional.cosine_similarity(cache["blocks.2.hook_resid_pre"][0], cache["blocks.2.hook_resid_post"][0], -1)
    assert bi[2] == pytest.approx((1 - cos).mean().item(), abs=1e-5)


def test_cli_prune_protect_and_bad_tables(tiny_llama_dir, tmp_path, capsys):
    table = tmp_path / "layers.csv"
    rows = [{"model": "tiny-llama", "probe": "p", "condition": f"layer:{i}", "layers": str(i),
             "metric": "patching_effect", "value": v, "n": 4, "seed": 0} for i, v in enumerate([0.1, 0.9, 0.2, 0.3])]
    write_table(rows, tmp_path / "layers")
    out = tmp_path / "pruned"
    # the table was made for another model: refused, nothing written
    assert main(["prune", "--model", str(tiny_llama_dir), "--strategy", "reverse", "--drop", "2",
                 "--protect-from", str(table), "--protect-top", "1", "--out", str(out)]) == 2
    assert "not for" in capsys.readouterr().err and not out.exists()
    name = load_model(tiny_llama_dir).name
    write_table([dict(r, model=name) for r in rows], tmp_path / "layers")
    assert main(["prune", "--model", str(tiny_llama_dir), "--strategy", "reverse", "--drop", "2",
                 "--protect-from", str(table), "--protect-top", "1", "--out", str(out), "--quiet"]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["drop"] == [0, 2] and plan["protected"] == [1]       # layer 1 protected, 3 is the final layer
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 2
    assert main(["prune", "--model", str(tiny_llama_dir), "--strategy", "reverse", "--drop", "2", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["prune", "--model", str(tiny_llama_dir), "--ratio", "1.5"]) == 2
    assert main(["prune", "--model", str(tiny_llama_dir), "--drop", "4"]) == 2
    assert main(["prune", "--model", str(tiny_llama_dir), "--drop", "2", "--protect", "0,1,2"]) == 2
    assert "leaves only" in capsys.readouterr().err.splitlines()[-1]


def test_score_uses_exactly_the_texts_asked(tiny_llama_dir):
    """score --texts 8 scores on 8 built-in texts (3 + 3 + 2), not 3 probes x (8 // 3) = 6."""
    from prunescope.core.options import Output
    from prunescope.prune.commands import ScoreOptions, calibration_texts, score

    assert [len(calibration_texts(None, n)) for n in range(1, 11)] == list(range(1, 11))
    rows = score(ScoreOptions(texts=8), loaded=load_model(tiny_llama_dir), output=Output(progress=False))
    assert {r["n"] for r in rows if r["metric"] == "block_influence"} == {8}


def test_iterative_in_memory_equals_save_and_reload(default_model):
    """Two greedy steps over 6 candidate layers, 8 bracket items, logit difference: the in-memory
    skip masks and the write-a-checkpoint-and-reload reference choose the same layers."""
    lm = default_model
    ev = probe_scorer(lm.blocks, lm.tokenizer, "brackets", n=8, metric="logit_diff")
    ref = checkpoint_scorer(lm.model, lm.tokenizer, ev.plan, "logit_diff")
    cands = [3, 8, 12, 17, 22, 27]
    fast = iterative(ev, 30, 2, candidates=cands)
    slow = iterative(ref, 30, 2, candidates=cands)
    assert fast.drop == slow.drop
    for a, b in zip(fast.scores["history"], slow.scores["history"]):
        assert a.keys() == b.keys()
        assert all(abs(a[k] - b[k]) < 1e-3 for k in a)


def test_skip_drop_ranks_layers_by_the_mean_p_correct_drop_over_probes(tmp_path):
    """skip-drop: per layer, p_correct without skips minus with that layer skipped, averaged over the
    sweep's probes; the k lowest are dropped (a hand-made sweep whose ranking is known)."""
    from prunescope.core.results import write_table
    from prunescope.prune.commands import skip_drop_scores
    from prunescope.prune.strategies import lowest_k

    values = {"a": {"none": 0.9, "skip:0": 0.1, "skip:1": 0.85, "skip:2": 0.9},
              "b": {"none": 0.8, "skip:0": 0.2, "skip:1": 0.8, "skip:2": 0.5}}
    rows = [{"model": "m", "probe": p, "condition": c, "layers": c[5:], "metric": "p_correct", "value": v, "n": 4}
            for p, vs in values.items() for c, v in vs.items()]
    write_table(rows, tmp_path / "sweep")
    scores = skip_drop_scores(tmp_path / "sweep.csv", "m")
    assert scores == pytest.approx({0: 0.7, 1: 0.025, 2: 0.15})
    assert lowest_k(scores, 3, 1).drop == [1]


def test_calibration_texts_from_a_file_are_drawn_by_the_seed(tmp_path):
    from prunescope.prune.commands import calibration_texts

    f = tmp_path / "texts.txt"
    f.write_text("\n".join(f"text number {i}" for i in range(40)))
    draws = {tuple(calibration_texts(f, 8, seed=s)) for s in range(4)}
    assert len(draws) == 4 and all(len(d) == 8 for d in draws)
    assert calibration_texts(f, 8, seed=2) == calibration_texts(f, 8, seed=2)
    assert len(calibration_texts(f, 100)) == 40
