"""Bad input, command by command: one line on stderr naming what was wrong and what to do, exit
status 2, and nothing written anywhere (every file under the test folder is the same before and
after). The table below is the case list; ``docs/guide.md`` (Reliability) points here.

Fixtures are built once per module in one folder: a tiny model, broken models (missing, empty,
garbage config, a text file, a fake .gguf, truncated weights), broken inputs (binary files, items
and pairs missing fields, pairs of unequal length, a half-written SGR line, a table without the
result columns), a finished sweep whose progress log is damaged in the middle, and configs with
wrong types, unknown names and impossible combinations.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from prunescope.cli import main


@pytest.fixture(scope="module")
def world(tiny_llama_dir, tmp_path_factory):
    w = tmp_path_factory.mktemp("bad")
    (w / "empty").mkdir()
    (w / "garbage").mkdir()
    (w / "garbage" / "config.json").write_text("{this is not json")
    (w / "notes.txt").write_text("just a text file\n")
    (w / "fake.gguf").write_text("not GGUF bytes at all")
    shutil.copytree(tiny_llama_dir, w / "truncated")
    st = next((w / "truncated").glob("*.safetensors"))
    st.write_bytes(st.read_bytes()[:200])
    (w / "binary.jsonl").write_bytes(bytes(range(256)) * 4)
    (w / "binary.txt").write_bytes(b"\xff\xfe\x00bad" * 50)
    (w / "items_missing.jsonl").write_text(json.dumps({"prompt": "1 + 1 ="}) + "\n")
    (w / "pairs_missing.jsonl").write_text(json.dumps({"clean": "a", "corrupt": "b"}) + "\n")
    (w / "pairs_unequal.jsonl").write_text(json.dumps({"clean": "Brackets: ( [", "corrupt": "Brackets: ( [ { {",
                                                       "answer_clean": " ]", "answer_corrupt": " }"}) + "\n")
    (w / "half.jsonl").write_text(json.dumps({"id": "0", "prompt": "Hi", "response": "Hello"}) + "\n"
                                  + '{"id": "1", "prompt": "Yo", "resp\n' + json.dumps({"id": "2", "prompt": "x"}) + "\n")
    (w / "no_responses.jsonl").write_text(json.dumps({"id": "0", "prompt": "Hi"}) + "\n"
                                          + json.dumps({"id": "1", "prompt": "Yo"}) + "\n")
    (w / "bad_columns.csv").write_text("layer,score\n0,0.5\n1,0.2\n")
    (w / "a_file").write_text("x")
    (w / "existing_dir").mkdir()
    (w / "existing_dir" / "keep.txt").write_text("keep")
    (w / "prompts.jsonl").write_text("".join(json.dumps({"id": str(i), "prompt": f"Q{i}?"}) + "\n" for i in range(3)))
    # a finished sweep whose progress log is then damaged in the middle (not a torn last line)
    assert main(["sweep", "--model", str(tiny_llama_dir), "--items", "4", "--out", str(w / "sweep_run"), "--quiet",
                 "--no-plot"]) == 0
    log = next((w / "sweep_run" / ".progress").glob("*.jsonl"))
    lines = log.read_text().splitlines()
    lines[0] = lines[0][: len(lines[0]) // 2]
    log.write_text("\n".join(lines) + "\n")
    (w / "sweep_run" / "sweep.csv").unlink()  # so the rerun has work to do
    cfg = "name: bad\nout: {out}\nmodel: {model}\n"
    configs = {
        "cfg_type": "prune:\n  ratio: a lot\n",
        "cfg_unknown_key": "prune:\n  ratoi: 0.2\n",
        "cfg_unknown_strategy": "prune: {strategies: [bii]}\n",
        "cfg_unknown_task": "evaluate: {tasks: [arc_easy, mmul]}\n",
        "cfg_recover_on": "recover: {modes: [sgr], on: [angular]}\n",
        "cfg_protect_from": "localize: {patch_probes: [arithmetic]}\nprune: {protect_top: 2, protect_patched: [brackets]}\n",
        "cfg_bad_int": "localize: {items: 0}\n",
        "cfg_old_key": "localize: {n: 40}\n",
        "cfg_unknown_operator": "localize: {ops: '+,%'}\n",
        "cfg_unknown_method": "localize: {method: guess}\n",
        "cfg_unknown_select_task": "prune: {strategies: [iterative-generated], select_tasks: [gsm9k]}\n",
        "cfg_section_type": "localize: [1, 2]\n",
        "cfg_xsum": "evaluate: {tasks: [xsum]}\n",
    }
    for name, extra in configs.items():
        (w / f"{name}.yaml").write_text(cfg.format(out=w / "never", model=tiny_llama_dir) + extra)
    (w / "cfg_model.yaml").write_text(cfg.format(out=w / "never", model=w / "garbage"))
    (w / "cfg_out_file.yaml").write_text(cfg.format(out=w / "a_file", model=tiny_llama_dir))
    (w / "cfg_binary.yaml").write_bytes(b"\xff\xfe\x00" * 30)
    return w


M = "{model}"  # the tiny model
CASES = [
    # (id, command, expected part of the one-line message)
    ("info-empty-folder", ["info", "--model", "{w}/empty"], "no config.json"),
    ("sweep-missing-model", ["sweep", "--model", "/no/such/folder"], "not found"),
    ("sweep-empty-folder", ["sweep", "--model", "{w}/empty"], "no config.json"),
    ("sweep-garbage-config", ["sweep", "--model", "{w}/garbage"], "cannot read a model config"),
    ("sweep-text-file", ["sweep", "--model", "{w}/notes.txt"], "is a file, not a model folder"),
    ("sweep-fake-gguf", ["sweep", "--model", "{w}/fake.gguf"], "is not a GGUF file"),
    ("sweep-truncated-safetensors", ["sweep", "--model", "{w}/truncated"], "cannot load the weights"),
    ("sweep-out-is-file", ["sweep", "--model", M, "--out", "{w}/a_file"], "is a file, not a folder"),
    ("sweep-unknown-probe", ["sweep", "--model", M, "--probes", "nonsense"], "unknown probe"),
    ("sweep-zero-items", ["sweep", "--model", M, "--items", "0"], "positive"),
    ("sweep-set-out-of-range", ["sweep", "--model", M, "--sets", "9"], "out of range"),
    ("sweep-window-too-wide", ["sweep", "--model", M, "--windows", "4"], "too wide"),
    ("sweep-items-missing-fields", ["sweep", "--model", M, "--probes", "{w}/items_missing.jsonl"],
     "string fields 'prompt' and 'answer'"),
    ("sweep-items-binary", ["sweep", "--model", M, "--probes", "{w}/binary.jsonl"], "not a UTF-8 text"),
    ("sweep-text-binary", ["sweep", "--model", M, "--loss-text", "{w}/binary.txt"], "not UTF-8 text"),
    ("sweep-torn-progress-log", ["sweep", "--model", M, "--items", "4", "--out", "{w}/sweep_run", "--no-plot"],
     "is not valid JSON (damaged"),
    ("sweep-bad-device", ["sweep", "--model", M, "--device", "tpu"], "cpu or cuda[:N], got 'tpu'"),
    ("sweep-bad-int-flag", ["sweep", "--model", M, "--items", "many"], "must be an integer"),
    # every value is checked against its choices (``sweep --metric bogus`` was accepted and ignored)
    ("sweep-unknown-metric", ["sweep", "--model", M, "--metric", "bogus"], "invalid choice: 'bogus'"),
    ("sweep-unknown-operator", ["sweep", "--model", M, "--ops", "+,%"], "unknown operator '%'"),
    ("sweep-unknown-carry", ["sweep", "--model", M, "--carry", "maybe"], "invalid choice"),
    ("sweep-unknown-scoring", ["sweep", "--model", M, "--scoring", "vibes"], "invalid choice"),
    ("sweep-unknown-dtype", ["sweep", "--model", M, "--dtype", "int8"], "invalid choice"),
    ("sweep-unknown-device-map", ["sweep", "--model", M, "--device-map", "everywhere"], "invalid choice"),
    ("sweep-old-flag", ["sweep", "--model", M, "--n", "4"], "unrecognized arguments: --n 4"),
    ("sweep-no-abbreviation", ["sweep", "--model", M, "--item", "4"], "unrecognized arguments: --item 4"),
    # --overwrite removes an earlier run only once the input is good: here the sweep_run folder stays
    ("sweep-overwrite-bad-input", ["sweep", "--model", M, "--items", "4", "--sets", "9", "--out", "{w}/sweep_run",
                                   "--overwrite"], "out of range"),
    ("sweep-overwrite-out-is-file", ["sweep", "--model", M, "--out", "{w}/a_file", "--overwrite"], "is a file"),
    ("patch-unequal-pairs", ["patch", "--model", M, "--probe", "{w}/pairs_unequal.jsonl"], "equal lengths"),
    ("patch-pairs-missing-fields", ["patch", "--model", M, "--probe", "{w}/pairs_missing.jsonl"],
     "needs string fields"),
    ("patch-positions-too-many", ["patch", "--model", M, "--probe", "brackets", "--pairs", "4", "--positions", "99"],
     "shortest pair"),
    ("patch-attribution-needs-hooks", ["patch", "--model", M, "--method", "attribution", "--backend", "nnsight"],
     "hooks backend"),
    ("patch-unknown-kind", ["patch", "--model", M, "--kinds", "resid_post,bogus"], "unknown"),
    ("patch-unknown-method", ["patch", "--model", M, "--method", "guess"], "invalid choice"),
    ("patch-unknown-backend", ["patch", "--model", M, "--backend", "jax"], "invalid choice"),
    ("patch-unknown-direction", ["patch", "--model", M, "--direction", "sideways"], "invalid choice"),
    ("score-table-columns", ["score", "--model", M, "--sweep-table", "{w}/bad_columns.csv"], "lacks the column"),
    ("score-missing-table", ["score", "--model", M, "--patch-table", "/no/such/layers.csv"], "does not exist"),
    ("score-zero-block", ["score", "--model", M, "--block-sizes", "0"], "positive"),
    ("score-overwrite-out-is-file", ["score", "--model", M, "--texts", "3", "--out", "{w}/a_file", "--overwrite"],
     "is a file"),
    ("criticality-no-sweep", ["criticality", "--model", M, "--out", "{w}/never"], "--sweep"),
    ("criticality-missing-sweep", ["criticality", "--model", M, "--sweep", "/no/such/sweep.csv", "--out", "{w}/never"],
     "does not exist"),
    ("criticality-table-columns", ["criticality", "--model", M, "--sweep", "{w}/bad_columns.csv", "--out", "{w}/never"],
     "lacks the column"),
    ("criticality-out-is-file", ["criticality", "--model", M, "--sweep", "{w}/bad_columns.csv", "--out", "{w}/a_file"],
     "is a file"),
    ("prune-protect-from-columns", ["prune", "--model", M, "--ratio", "0.5", "--protect-from",
                                    "{w}/bad_columns.csv", "--protect-top", "1", "--out", "{w}/never"],
     "lacks the column"),
    ("prune-protect-from-alone", ["prune", "--model", M, "--ratio", "0.5", "--protect-from", "{w}/bad_columns.csv"],
     "go together"),
    ("prune-score-without-table", ["prune", "--model", M, "--strategy", "score", "--ratio", "0.5"],
     "needs --scores-table"),
    ("prune-ratio-too-big", ["prune", "--model", M, "--ratio", "1.5"], "between 0 and 1"),
    ("prune-drop-and-ratio", ["prune", "--model", M, "--drop", "1", "--ratio", "0.5"], "not both"),
    ("prune-out-exists", ["prune", "--model", M, "--ratio", "0.5", "--out", "{w}/existing_dir"], "--overwrite"),
    ("prune-overwrite-foreign-folder", ["prune", "--model", M, "--ratio", "0.5", "--out", "{w}/existing_dir",
                                        "--overwrite"], "not a pruned checkpoint"),
    ("prune-unknown-strategy", ["prune", "--model", M, "--strategy", "nope"], "invalid choice"),
    ("prune-unknown-eval-metric", ["prune", "--model", M, "--strategy", "iterative", "--drop", "1", "--eval-metric",
                                   "bogus"], "invalid choice"),
    ("prune-unknown-eval-probe", ["prune", "--model", M, "--strategy", "iterative", "--drop", "1", "--eval-probe",
                                  "bogus"], "invalid choice"),
    ("prune-unknown-select-task", ["prune", "--model", M, "--strategy", "iterative-generated", "--drop", "1",
                                   "--select-tasks", "gsm8k,gsm9k"], "unknown task 'gsm9k'"),
    ("sgr-binary-prompts", ["sgr", "--model", M, "--prompts", "{w}/binary.jsonl", "--out", "{w}/never.jsonl"],
     "not a UTF-8 text"),
    ("sgr-half-written-line", ["sgr", "--model", M, "--prompts", "{w}/half.jsonl", "--out", "{w}/never.jsonl"],
     "not valid JSON"),
    ("sgr-out-is-folder", ["sgr", "--model", M, "--out", "{w}/existing_dir"], "is a folder"),
    ("sgr-top-p", ["sgr", "--model", M, "--top-p", "2", "--out", "{w}/never.jsonl"], "at most 1"),
    ("sgr-no-out", ["sgr", "--model", M], "--out"),
    ("sgr-overwrite-foreign-file", ["sgr", "--model", M, "--prompts", "{w}/prompts.jsonl", "--max-new-tokens", "2",
                                    "--out", "{w}/prompts.jsonl", "--overwrite"], "is not an SGR file"),
    ("recover-half-written-sgr", ["recover", "--model", M, "--data", "{w}/half.jsonl", "--out", "{w}/never"],
     "not valid JSON"),
    ("recover-no-responses", ["recover", "--model", M, "--data", "{w}/no_responses.jsonl", "--out", "{w}/never"],
     "run `prunescope sgr`"),
    ("recover-distill-no-teacher", ["recover", "--model", M, "--data", "{w}/half.jsonl", "--mode", "distill",
                                    "--out", "{w}/never"], "needs --teacher"),
    ("recover-batch-multiple", ["recover", "--model", M, "--data", "{w}/half.jsonl", "--train-batch", "6",
                                "--out", "{w}/never"], "multiple of"),
    ("recover-unknown-mode", ["recover", "--model", M, "--data", "{w}/half.jsonl", "--mode", "magic",
                              "--out", "{w}/never"], "invalid choice"),
    ("recover-unknown-adapter-dtype", ["recover", "--model", M, "--data", "{w}/half.jsonl", "--adapter-dtype", "fp8",
                                       "--out", "{w}/never"], "invalid choice"),
    ("recover-no-model", ["recover", "--data", "{w}/half.jsonl", "--out", "{w}/never"], "required: --model"),
    ("eval-unknown-task", ["eval", "--model", M, "--tasks", "mmul", "--out", "{w}/never"], "unknown task"),
    ("eval-unknown-code-prompt", ["eval", "--model", M, "--code-prompt", "fancy", "--out", "{w}/never"],
     "invalid choice"),
    ("eval-zero-limit", ["eval", "--model", M, "--limit", "0", "--out", "{w}/never"], "positive"),
    ("eval-xsum-without-file", ["eval", "--model", M, "--tasks", "xsum", "--out", "{w}/never"], "xsum"),
    ("eval-out-is-file", ["eval", "--model", M, "--tasks", "arc_easy", "--limit", "2", "--out", "{w}/a_file"],
     "is a file"),
    ("eval-overwrite-out-is-file", ["eval", "--model", M, "--tasks", "arc_easy", "--limit", "2", "--out", "{w}/a_file",
                                    "--overwrite"], "is a file"),
    ("report-empty-folder", ["report", "{w}/empty"], "holds no prunescope run"),
    ("report-missing-folder", ["report", "/no/such/run"], "does not exist"),
    ("run-missing-config", ["run", "/no/such.yaml"], "does not exist"),
    ("run-wrong-type", ["run", "{w}/cfg_type.yaml"], "'prune.ratio' must be a number or a list of numbers"),
    ("run-unknown-key", ["run", "{w}/cfg_unknown_key.yaml"], "unknown key 'ratoi' under prune"),
    ("run-unknown-strategy", ["run", "{w}/cfg_unknown_strategy.yaml"], "unknown strategy 'bii'"),
    ("run-unknown-task", ["run", "{w}/cfg_unknown_task.yaml"], "unknown task 'mmul'"),
    ("run-recover-unpruned", ["run", "{w}/cfg_recover_on.yaml"], "recover.on"),
    ("run-protect-unpatched", ["run", "{w}/cfg_protect_from.yaml"], "not among the patched probes"),
    ("run-bad-int", ["run", "{w}/cfg_bad_int.yaml"], "'localize.items' must be a positive integer"),
    ("run-old-key", ["run", "{w}/cfg_old_key.yaml"], "unknown key 'n' under localize"),
    ("run-unknown-operator", ["run", "{w}/cfg_unknown_operator.yaml"], "unknown operator '%'"),
    ("run-unknown-method", ["run", "{w}/cfg_unknown_method.yaml"], "'localize.method' names an unknown"),
    ("run-unknown-select-task", ["run", "{w}/cfg_unknown_select_task.yaml"], "unknown task 'gsm9k'"),
    ("run-section-not-mapping", ["run", "{w}/cfg_section_type.yaml"], "must be a mapping"),
    ("run-xsum-without-file", ["run", "{w}/cfg_xsum.yaml"], "xsum_file"),
    ("run-garbage-model", ["run", "{w}/cfg_model.yaml"], "cannot read a model config"),
    ("run-out-is-file", ["run", "{w}/cfg_out_file.yaml"], "is a file"),
    ("run-binary-config", ["run", "{w}/cfg_binary.yaml"], "not UTF-8"),
    ("run-unknown-stage", ["run", "{w}/cfg_type.yaml", "--only", "evaluat"], "unknown stages"),
    ("doctor-unknown-flag", ["doctor", "--strictly"], "unrecognized arguments: --strictly"),
]


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.join(dirpath, d)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[p] = hashlib.md5(Path(p).read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("case, args, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(world, tiny_llama_dir, capsys, case, args, message):
    args = [a.format(w=world, model=tiny_llama_dir) for a in args]
    before = _snapshot(world)
    try:
        code = main(args + ["--quiet"] if args[0] != "info" else args)
    except SystemExit as e:  # argparse's own errors (unknown choice, missing argument)
        code = e.code
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("prunescope: error: ") and message in err[0], err[0]
    assert _snapshot(world) == before, "bad input left files behind or changed them"
    assert not (world / "never").exists() and not (world / "never.jsonl").exists()


def test_case_table_is_large_and_covers_every_command():
    from prunescope.cli import COMMANDS

    assert len(CASES) >= 40
    assert {c[1][0] for c in CASES} == set(COMMANDS)
