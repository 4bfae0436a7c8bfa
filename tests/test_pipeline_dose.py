"""A dose axis in a pipeline config: fixed layer sets (prune.layers), token budgets
(recover.budgets), matched optimizer steps (recover.match: steps) and training seeds at chosen
budgets (recover.seeded_budgets)."""

import json

import pytest

from prunescope.core.errors import PrunescopeError
from prunescope.core.results import read_table
from prunescope.pipeline.config import (
    budget_label, budget_of, load_config_text, pruned_names, recovered_names, split_arm,
)

STUDY = """prune: {ratio: [0.25], strategies: [bi], layers: {paper-12.5: [14, 15, 16, 24]}}
recover: {modes: [sgr, external, linear], on: [bi, paper-12.5], budgets: [300000, 3000000, 10000000],
          match: steps, train_seeds: [0, 1], seeded_budgets: [3000000]}
"""


def test_budget_labels_are_exact_and_read_back():
    assert [budget_label(n) for n in (300_000, 3_000_000, 10_000_000, 1_500_000, 120, 2500)] == \
        ["300k", "3M", "10M", "1.5M", "120", "2.5k"]
    for n in (1, 40, 999, 1000, 1001, 1_234_567, 250_000, 12_500_000):
        assert budget_of(budget_label(n)) == n


def test_split_arm_reads_pruned_mode_budget_and_seed():
    assert split_arm("paper-12.5-sgr~3M@1") == ("paper-12.5", "sgr", 1, 3_000_000)
    assert split_arm("bi-25-linear+sgr~300k") == ("bi-25", "linear+sgr", None, 300_000)
    assert split_arm("bi-protected-external@2") == ("bi-protected", "external", 2, None)
    a = split_arm("bi-linear")
    assert (a.pruned, a.mode, a.seed, a.budget) == ("bi", "linear", None, None)


def test_study_config_names_its_models_and_arms():
    cfg = load_config_text(STUDY)
    assert pruned_names(cfg) == {"bi": ("bi", 0.25), "paper-12.5": ("fixed", None)}
    names = recovered_names(cfg)
    per_pruned = ["linear", "sgr~300k", "external~300k", "sgr~3M@0", "sgr~3M@1", "external~3M@0", "external~3M@1",
                  "sgr~10M", "external~10M"]
    assert names == [f"{p}-{a}" for p in ("bi", "paper-12.5") for a in per_pruned]
    assert all(split_arm(n).budget in (None, 300_000, 3_000_000, 10_000_000) for n in names)
    # without budgets, train_seeds keeps its meaning: every arm (the repair too) once per seed
    plain = load_config_text("recover: {modes: [sgr, linear], on: [bi], train_seeds: [0, 1]}\n")
    assert recovered_names(plain) == ["bi-sgr@0", "bi-sgr@1", "bi-linear@0", "bi-linear@1"]
    # with budgets and seeds but no seeded_budgets: every budget is seeded
    every = load_config_text("recover: {modes: [sgr], on: [bi], budgets: [40, 120], train_seeds: [0, 1]}\n")
    assert recovered_names(every) == ["bi-sgr~40@0", "bi-sgr~40@1", "bi-sgr~120@0", "bi-sgr~120@1"]


@pytest.mark.parametrize("text, message", [
    ("recover: {modes: [sgr, linear], on: [bi], budgets: [10, 20], dose_modes: [linear]}\n",
     "'recover.dose_modes' names 'linear', which is not a training mode"),
    ("recover: {modes: [sgr], on: [bi], dose_modes: [sgr]}\n", "'recover.dose_modes' needs recover.budgets"),
    ("prune: {layers: {bi: [1]}}\n", "'prune.layers' names a set 'bi', which a strategy"),
    ("prune: {layers: {reverse: [1]}}\n", "'prune.layers' names a set 'reverse'"),
    ("prune: {ratio: [0.25, 0.5], layers: {bi-25: [1]}}\n", "'prune.layers' names a set 'bi-25'"),
    ("prune: {layers: {a/b: [1]}}\n", "use letters, digits"),
    ("prune: {layers: {x: []}}\n", "a set is a non-empty list of layer numbers >= 0"),
    ("prune: {layers: {x: [-1]}}\n", "a set is a non-empty list of layer numbers >= 0"),
    ("prune: {layers: {x: [1.5]}}\n", "a set is a non-empty list of layer numbers >= 0"),
    ("prune: {layers: {x: [2, 2]}}\n", "a layer repeats"),
    ("prune: {layers: [1, 2]}\n", "'prune.layers' must be a mapping"),
    ("recover: {modes: [sgr], on: [bi, nope]}\n", "'recover.on' names 'nope'"),
    ("recover: {modes: [sgr], budgets: [40, 40]}\n", "'recover.budgets' repeats a budget"),
    ("recover: {modes: [sgr], budgets: [0]}\n", "'recover.budgets' must be a positive integer"),
    ("recover: {modes: [sgr], budgets: [40], token_budget: 40}\n", "'recover.token_budget' is set beside"),
    ("recover: {modes: [sgr], budgets: [40], steps: 4}\n", "'recover.steps' is set beside"),
    ("recover: {modes: [sgr], budgets: [40], steps: 4, match: steps}\n", "'recover.steps' is set beside"),
    ("recover: {modes: [sgr], match: steps}\n", "'recover.match' is steps"),
    ("recover: {modes: [sgr], match: steps, steps: 4, token_budget: 40}\n", "'recover.match' is steps"),
    ("recover: {modes: [sgr], match: tokenz}\n", "'recover.match' names 'tokenz'"),
    ("recover: {modes: [sgr], budgets: [40], seeded_budgets: [120], train_seeds: [0, 1]}\n",
     "'recover.seeded_budgets' names 120, which is not among recover.budgets"),
    ("recover: {modes: [sgr], seeded_budgets: [120], train_seeds: [0, 1]}\n", "'recover.seeded_budgets' names 120"),
    ("recover: {modes: [sgr], budgets: [40, 120], seeded_budgets: [120, 120], train_seeds: [0, 1]}\n",
     "'recover.seeded_budgets' repeats"),
    ("recover: {modes: [sgr], budgets: [40, 120], seeded_budgets: [120], train_seeds: [0]}\n",
     "needs|at least two seeds"),
])
def test_bad_dose_settings_name_key_and_reason(text, message):
    with pytest.raises(PrunescopeError, match=message):
        load_config_text(text)


def test_good_dose_settings_load():
    cfg = load_config_text(STUDY)
    assert cfg["recover"]["match"] == "steps" and cfg["prune"]["layers"] == {"paper-12.5": [14, 15, 16, 24]}
    # one budget (token_budget) may be matched on steps too
    assert load_config_text("recover: {modes: [sgr], match: steps, token_budget: 40}\n")["recover"]["match"] == "steps"
    # the defaults: no fixed sets, no budgets, tokens matched
    d = load_config_text("name: t\n")
    assert (d["prune"]["layers"], d["recover"]["budgets"], d["recover"]["match"],
            d["recover"]["seeded_budgets"]) == ({}, [], "tokens", [])


def _recovery(out) -> dict:
    return json.loads((out / "prunescope_recovery.json").read_text())["recovery"]


def test_dose_run_trains_each_budget_on_matched_steps(tiny_llama_dir, tmp_path):
    """A tiny run with a fixed layer set and two budgets matched on steps, seeds at the larger one:
    the arms are named and trained as the config says, sgr and external train the same steps at
    each budget (sgr's planned to reach it), the repair has one unsuffixed arm, and the report
    compares the seeded arms with the SGR arm of their budget."""
    from prunescope.pipeline import run_pipeline

    cfg = tmp_path / "dose.yaml"
    cfg.write_text(f"name: dose\nout: {tmp_path / 'dose'}\nmodel: {tiny_llama_dir}\n"
                   "localize: {probes: [brackets], items: 4, patch_probes: []}\n"
                   "prune: {ratio: 0.25, strategies: [bi], layers: {fixed: [1, 2]}}\n"
                   "recover: {modes: [sgr, external, linear], on: [bi, fixed], max_prompts: 16, max_new_tokens: 8, "
                   "micro_batch: 4, heldout: 4, budgets: [40, 120], match: steps, train_seeds: [0, 1], "
                   "seeded_budgets: [120], texts: 8}\n"
                   "evaluate: {tasks: [arc_easy], limit: 2, probe_items: 4}\n")
    run_pipeline(str(cfg), show_progress=False)
    out = tmp_path / "dose"
    assert json.loads((out / "prune/fixed/plan.json").read_text())["drop"] == [1, 2]
    assert json.loads((out / "prune/fixed/plan.json").read_text())["strategy"] == "fixed"
    arms = sorted(p.name for p in (out / "recover").iterdir() if p.is_dir())
    per = ["external~120@0", "external~120@1", "external~40", "linear", "sgr~120@0", "sgr~120@1", "sgr~40"]
    assert arms == sorted(f"{p}-{a}" for p in ("bi", "fixed") for a in per)
    for pruned in ("bi", "fixed"):
        for budget, tag in ((40, "~40"), (120, "~120@0"), (120, "~120@1")):
            sgr, ext = (_recovery(out / "recover" / f"{pruned}-{m}{tag}") for m in ("sgr", "external"))
            assert sgr["steps"] == ext["steps"] >= 1 and sgr["tokens"] >= budget, (pruned, tag, sgr, ext)
            assert sgr["token_budget"] is None and ext["token_budget"] is None  # matched on steps
        assert _recovery(out / "recover" / f"{pruned}-sgr~120@0")["steps"] > \
            _recovery(out / "recover" / f"{pruned}-sgr~40")["steps"]
        assert json.loads((out / "recover" / f"{pruned}-sgr~120@1" / "prunescope_recovery.json").read_text()
                          )["config"]["seed"] == 1
    conditions = {r["condition"] for r in read_table(out / "probes.csv")}
    assert {"pruned-fixed", "recovered-fixed-linear", "recovered-bi-external~40", "recovered-bi-sgr~120@1"} <= conditions
    seeds = {(r["condition"], r["reference"]) for r in read_table(out / "recover_seeds.csv")}
    assert seeds == {(f"recovered-{p}-{a}", ref) for p in ("bi", "fixed")
                     for a, ref in (("sgr~120", f"pruned-{p}"), ("external~120", f"pruned-{p}"),
                                    ("external~120", f"recovered-{p}-sgr~120"))}
    # the dose table: each arm's retention at each budget (seeds averaged), the pruned model at 0 tokens
    ret = {r["condition"]: float(r["value"]) for r in read_table(out / "retention.csv")
           if r["level"] == "category" and r["probe"] == "classification" and r["metric"] == "retention"}
    dose = [r for r in read_table(out / "dose.csv") if r["category"] == "classification" and r["metric"] == "retention"
            and r["pruned"] == "bi" and r["mode"] == "sgr"]
    assert [r["budget"] for r in dose] == ["pruned", "40", "120"]
    assert float(dose[0]["value"]) == pytest.approx(ret["pruned-bi"]) and int(dose[0]["tokens"]) == 0
    assert float(dose[2]["value"]) == pytest.approx((ret["recovered-bi-sgr~120@0"] + ret["recovered-bi-sgr~120@1"]) / 2)
    assert int(dose[2]["seeds"]) == 2 and int(dose[1]["tokens"]) == _recovery(out / "recover/bi-sgr~40")["tokens"]
    steps = [r for r in read_table(out / "dose_steps.csv") if r["category"] == "classification"
             and r["metric"] == "retention" and r["pruned"] == "bi" and r["mode"] == "sgr"]
    assert [(r["from"], r["to"]) for r in steps] == [("pruned-bi", "recovered-bi-sgr~40"),
                                                     ("recovered-bi-sgr~40", "recovered-bi-sgr~120@0")]
    assert float(steps[0]["change"]) == pytest.approx(ret["recovered-bi-sgr~40"] - ret["pruned-bi"])
    assert (out / "dose.png").is_file()


def test_long_prompts_are_dropped_and_counted_or_refused(tmp_path):
    """long_prompts: drop trains without the prompts that fill max_seq_len and says how many;
    error (the default) stops with the record's id."""
    from prunescope.recover.data import encode_all
    from prunescope.probe.models import load_model

    tok = load_model(None, device="cpu").tokenizer
    records = [{"id": "short", "prompt": "2+2=", "response": " 4"},
               {"id": "long", "prompt": "word " * 300, "response": " yes"}]
    kept = encode_all(tok, records, "response", 64, drop_long=True)
    assert len(kept) == 1 and kept[0].n_response >= 1
    with pytest.raises(PrunescopeError, match="record 'long': its prompt is"):
        encode_all(tok, records, "response", 64)
