"""SGR and lm-eval evaluation over 2 processes (gloo, CPU) equal one process.

One group of 2 CPU processes is started for the whole file (starting one costs ~10-20 s on 2
cores). Its worker runs SGR greedily and with sampling (the CLI, the torchrun path), resumes a
half-written SGR file, and evaluates a log-likelihood task and a generated one. The parent runs
the same with one process and compares files, rows and per-doc samples; it then runs
``prunescope eval --devices 2`` itself (the processes are spawned by the command).
"""

import contextlib
import io
import json
import math

import pytest

from prunescope.analysis.evaluate import EvalOptions, evaluate, read_samples
from prunescope.core.distributed import launch
from prunescope.core.options import Output, Placement
from prunescope.core.results import read_table
from prunescope.recover.sgr import SGROptions, generate_responses

CPU = Placement(device="cpu")
SGR = dict(max_new_tokens=8, slots=3, seed=1)
EVAL = dict(tasks=["arc_easy", "arithmetic"], limit={"arc_easy": 4, "arithmetic": 3}, num_fewshot=0, max_length=512,
            batch_size=2, slots=2)


def _records() -> list[dict]:
    words = ["apples", "the market in the old town square", "pears", "a long walk by the river at dusk", "seven",
             "numbers", "the quick brown fox and the lazy dog", "x", "Alice and Bob"]
    return [{"id": f"p{i}", "prompt": f"Tell me about {w}."} for i, w in enumerate(words)]


_MODEL: list[str] = []  # the tiny model's folder (set in the parent and in each rank)


def _sgr(out, records=None, **kw) -> list[dict]:
    return generate_responses(SGROptions(**{**SGR, **kw}), model=_MODEL[0], placement=CPU, records=records,
                              output=Output(out=str(out), progress=False))


def _worker(model_dir: str, out: str, prompts_file: str) -> dict:
    """Runs in each of 2 processes of one gloo group (started by ``launch``)."""
    from prunescope.cli import main
    from prunescope.core.distributed import distributed

    _MODEL[:] = [model_dir]
    with distributed("cpu") as d:
        greedy = _sgr(f"{out}/greedy.jsonl", _records(), temperature=0)
        resumed = _sgr(f"{out}/resume.jsonl", prompts=prompts_file, temperature=0.9)
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            code = main(["sgr", "--model", model_dir, "--prompts", prompts_file, "--temperature", "0.9",
                         "--max-new-tokens", "8", "--slots", "3", "--seed", "1", "--device", "cpu", "--quiet",
                         "--out", f"{out}/sampled.jsonl"])
        printed = d.gather(text.getvalue())
        rows = evaluate(EvalOptions(**EVAL), model=model_dir, placement=CPU.replace(devices=2),
                        output=Output(out=f"{out}/eval", progress=False))
        return {"world": d.world_size, "greedy": greedy, "resumed": resumed, "code": code, "printed": printed,
                "rows": rows}


def _same_rows(a: list[dict], b: list[dict]) -> bool:
    def key(r):
        return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
    return [key(r) for r in a] == [key(r) for r in b]


@pytest.fixture(scope="module")
def runs(tiny_llama_dir, tmp_path_factory):
    """The group's results and one process's, for the same inputs."""
    model = str(tiny_llama_dir)
    _MODEL[:] = [model]
    root = tmp_path_factory.mktemp("dist-sgr-eval")
    one, two = root / "one", root / "two"
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    # a half-written file for the group to resume: 4 answers, then a line torn by a crash
    _sgr(two / "resume.jsonl", prompts=str(prompts), max_prompts=4, temperature=0.9)
    with open(two / "resume.jsonl", "a") as f:
        f.write('{"id": "p4", "prom')
    got = launch(_worker, 2, (model, str(two), str(prompts)))
    ref = {"greedy": _sgr(one / "greedy.jsonl", _records(), temperature=0),
           "sampled": _sgr(one / "sampled.jsonl", prompts=str(prompts), temperature=0.9),
           "rows": evaluate(EvalOptions(**EVAL), model=model, placement=CPU,
                            output=Output(out=str(one / "eval"), progress=False))}
    return got, ref, one, two


def test_sgr_over_two_processes_writes_the_file_of_one(runs):
    got, ref, one, two = runs
    assert got["world"] == 2
    for name in ("greedy", "sampled"):  # the sampled run went through the CLI (the torchrun path)
        text = (one / f"{name}.jsonl").read_text()
        assert [json.loads(x)["id"] for x in text.splitlines()] == [r["id"] for r in _records()]  # prompt order
        assert (two / f"{name}.jsonl").read_text() == text  # ids, responses, token counts: byte for byte
    assert [r["response"] for r in got["greedy"]] == [r["response"] for r in ref["greedy"]]
    assert len({r["response"] for r in ref["sampled"]}) > 1 and ref["sampled"] != ref["greedy"]
    # the CLI under the group: rank 0 prints, the other rank does not
    assert got["code"] == 0 and "9 responses" in got["printed"][0] and got["printed"][1] == ""


def test_resumed_two_process_run_gives_the_file_of_one(runs):
    got, ref, one, two = runs
    assert (two / "resume.jsonl").read_text() == (one / "sampled.jsonl").read_text()
    assert got["resumed"] == ref["sampled"]


def test_evaluation_over_two_processes_equals_one(runs):
    got, ref, one, two = runs
    assert _same_rows(got["rows"], ref["rows"]) and {r["probe"] for r in ref["rows"]} == {"arc_easy", "arithmetic"}
    assert _same_rows(read_table(two / "eval" / "eval.jsonl"), read_table(one / "eval" / "eval.jsonl"))
    for task, n in (("arc_easy", 4), ("arithmetic", 3)):
        samples = read_samples(two / "eval", task)
        assert samples == read_samples(one / "eval", task) and [s["doc_id"] for s in samples] == list(range(n))


def test_eval_devices_flag_spawns_the_processes(runs, tiny_llama_dir):
    """``prunescope eval --devices 2`` starts the group itself; the scores are one process's."""
    from prunescope.cli import main

    _, ref, one, two = runs
    out = two.parent / "cli-eval"
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        code = main(["eval", "--model", str(tiny_llama_dir), "--tasks", "arc_easy", "--limit", "4",
                     "--num-fewshot", "0", "--max-length", "512", "--batch-size", "2", "--device", "cpu",
                     "--devices", "2", "--quiet", "--out", str(out)])
    assert code == 0 and "arc_easy" in text.getvalue()
    arc = [r for r in ref["rows"] if r["probe"] == "arc_easy"]
    assert _same_rows(read_table(out / "eval.jsonl"), arc)
    assert read_samples(out, "arc_easy") == read_samples(one / "eval", "arc_easy")


def test_bad_devices_are_refused_in_one_line(tiny_llama_dir, tmp_path):
    from prunescope.cli import main
    from prunescope.core.errors import PrunescopeError

    for argv, msg in [(["sgr", "--devices", "0"], "devices"), (["eval", "--devices", "0"], "devices")]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main([*argv, "--model", str(tiny_llama_dir), "--device", "cpu", "--quiet",
                         "--out", str(tmp_path / "x")])
        assert code == 2 and msg in err.getvalue() and len(err.getvalue().strip().splitlines()) == 1
    with pytest.raises(PrunescopeError, match="use one of them"):
        evaluate(EvalOptions(tasks=["arc_easy"]), model=str(tiny_llama_dir),
                 placement=Placement(device="cpu", devices=2, device_map="auto"), output=Output(progress=False))
    with pytest.raises(PrunescopeError, match="model path"):
        generate_responses(SGROptions(), loaded=object(), placement=Placement(device="cpu", devices=2),
                           records=_records(), output=Output(out=str(tmp_path / "s.jsonl"), progress=False))
