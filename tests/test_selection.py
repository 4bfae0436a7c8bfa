"""The paper's selection (iterative pruning scored on generated answers of held-out docs) and the
held-out docs it scores."""

import json

import pytest

from prunescope.analysis.evaluate import EvalOptions, check_heldout, heldout_docs, run_benchmarks, task_size
from prunescope.prune.selection import generated_answer_scorer
from prunescope.core.errors import PrunescopeError
from prunescope.probe.models import LoadedModel
from prunescope.probe.tiny import tiny_model
from prunescope.prune.commands import PruneOptions, prune_model


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_model("llama")
    return LoadedModel(model, tok, "tiny-llama", "")


def test_heldout_docs_are_the_last_ones_and_overlap_is_refused():
    assert task_size("gsm8k") == 1319 and task_size("humaneval") == 164
    held = heldout_docs(["gsm8k", "humaneval"], 16)
    assert held == {"gsm8k": list(range(1303, 1319)), "humaneval": list(range(148, 164))}
    check_heldout(held, {"gsm8k": 1303, "humaneval": 148})           # the first docs up to them: fine
    with pytest.raises(PrunescopeError, match="first 1319 docs"):
        check_heldout(held, {"humaneval": 100})                        # gsm8k unlimited: every doc
    with pytest.raises(PrunescopeError, match="humaneval"):
        check_heldout(held, {"default": 0.95})                         # 156 of 164 HumanEval problems
    with pytest.raises(PrunescopeError, match="between 1 and"):
        heldout_docs(["humaneval"], 164)


def test_evaluation_of_chosen_docs_scores_exactly_those(tiny, tmp_path):
    arithmetic = EvalOptions(tasks=["arithmetic"])
    rows = run_benchmarks(tiny, arithmetic, tmp_path, docs={"arithmetic": [2999, 2998]}, progress=False)
    assert [(r["metric"], r["n"]) for r in rows] == [("exact_match", 2)]
    samples = [json.loads(x) for x in (tmp_path / "samples" / "arithmetic.jsonl").read_text().splitlines()]
    assert [s["doc_id"] for s in samples] == [2998, 2999]
    with pytest.raises(PrunescopeError, match="not one of the tasks"):
        run_benchmarks(tiny, arithmetic, docs={"gsm8k": [0]}, progress=False)


def test_iterative_generated_tries_every_layer_and_records_its_docs(tiny):
    plan = prune_model(PruneOptions(strategy="iterative-generated", drop=2, select_docs=3, select_tasks=["arithmetic"],
                                    protect=[0]), loaded=tiny)
    first, second = plan.scores["history"]
    assert plan.strategy == "iterative-generated" and len(plan.drop) == 2 and 0 not in plan.drop
    assert set(first) == {"1", "2", "3"} and len(second) == 2          # every unprotected layer, then the rest
    assert plan.scores["heldout_docs"] == {"arithmetic": [2997, 2998, 2999]}
    # the score of a candidate is the accuracy run_benchmarks gives on those docs with it skipped
    ev = generated_answer_scorer(tiny, ["arithmetic"], 3)
    direct = run_benchmarks(tiny, EvalOptions(tasks=["arithmetic"], skip=[plan.drop[0]]), docs=ev.docs, progress=False)
    assert ev([[plan.drop[0]]]) == [direct[0]["value"]] == [first[str(plan.drop[0])]]


def test_selection_cache_reads_back_scored_sets_and_the_smaller_search_repeats_the_larger(tiny, tmp_path):
    from prunescope.core.results import read_progress

    cache = tmp_path / "selection-cache.jsonl"
    opts = dict(strategy="iterative-generated", select_docs=3, select_tasks=["arithmetic"], select_cache=str(cache))
    big = prune_model(PruneOptions(drop=2, **opts), loaded=tiny)
    logged = read_progress(cache)
    assert len(logged) == 4 + 3 and {tuple(r["skip"]) for r in logged} >= {(0,), (1,), (2,), (3,)}
    # the one-layer search is the two-layer one's first step, read back: nothing new is generated
    small = prune_model(PruneOptions(drop=1, **opts), loaded=tiny)
    first = big.scores["history"][0]
    assert small.drop == [int(max(first, key=lambda c: (first[c], -int(c))))] and small.drop[0] in big.drop
    assert small.scores["history"][0] == big.scores["history"][0] and len(read_progress(cache)) == 7
    # other settings (here: another select_docs) are not read back
    prune_model(PruneOptions(drop=1, **{**opts, "select_docs": 2}), loaded=tiny)
    assert len(read_progress(cache)) == 7 + 4


def test_pipeline_refuses_an_evaluation_that_overlaps_the_selection_docs():
    from prunescope.pipeline.config import load_config_text

    text = ("model: default\nprune: {strategies: [iterative-generated], select_tasks: [gsm8k, humaneval], "
            "select_docs: 16}\nevaluate: {tasks: [gsm8k, humaneval], limit: 100}\n")
    assert load_config_text(text)["prune"]["select_docs"] == 16
    with pytest.raises(PrunescopeError, match=r"prune.select_docs.*humaneval.*at most 148"):
        load_config_text(text.replace("limit: 100", "limit: 150"))


def test_the_candidates_of_a_step_generated_together_answer_as_each_alone(default_model, tmp_path):
    """The greedy step's candidates are generated in one engine run (a row per prompt and skip set,
    prunescope.prune.selection through a prunescope.generation.SkipSets): each candidate's answers, and so
    its score, are those of evaluating it alone with its layers skipped."""
    from prunescope.generation import SkipSets

    docs = {"arithmetic": [2990, 2991, 2992, 2993]}
    sets = [[3], [20], [28, 29], [0]]

    def answers(folder):
        return [json.loads(x)["response"] for x in (folder / "samples" / "arithmetic.jsonl").read_text().splitlines()]

    fan = SkipSets(sets)
    together = []
    for k, s in enumerate(sets):
        fan.select(s)
        run_benchmarks(default_model, EvalOptions(tasks=["arithmetic"]), tmp_path / f"t{k}", docs=docs, progress=False,
                       fan_out=fan)
        together.append(answers(tmp_path / f"t{k}"))
    for k, s in enumerate(sets):
        run_benchmarks(default_model, EvalOptions(tasks=["arithmetic"], skip=s), tmp_path / f"a{k}", docs=docs,
                       progress=False)
        assert together[k] == answers(tmp_path / f"a{k}"), s
    assert len({tuple(a) for a in together}) > 1  # the candidates answer differently: not vacuous
    ev = generated_answer_scorer(default_model, ["arithmetic"], 4)
    assert ev(sets) == [run_benchmarks(default_model, EvalOptions(tasks=["arithmetic"], skip=s), docs=ev.docs,
                                       progress=False)[0]["value"] for s in sets]
