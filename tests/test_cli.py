"""The CLI: one clear error line and exit status 2 for bad input; a sweep writes its table; one
meaning per flag name; ``--version``; ``--overwrite`` on every command that writes."""

import json

import pytest

from prunescope.cli import main


def _err(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("prunescope: error: ")
    return err[0]


@pytest.mark.parametrize("args, message", [
    (["sweep", "--model", "/no/such/folder"], "not found"),
    (["sweep", "--sets", "9"], "out of range"),
    (["sweep", "--sets", "1,1"], "twice"),
    (["sweep", "--sets", "0-3"], "skips every layer"),
    (["sweep", "--probes", "nonsense"], "unknown probe"),
    (["sweep", "--items", "0"], "positive"),
    (["sweep", "--windows", "4"], "too wide"),
])
def test_bad_input_exits_2(tiny_llama_dir, capsys, args, message):
    if "--model" not in args:
        args = args + ["--model", str(tiny_llama_dir)]
    assert main(args + ["--quiet"]) == 2
    assert message in _err(capsys)


def test_not_a_model_folder(tmp_path, capsys):
    assert main(["info", "--model", str(tmp_path)]) == 2
    assert "no config.json" in _err(capsys)


def test_info_and_sweep(tiny_llama_dir, tmp_path, capsys):
    assert main(["info", "--model", str(tiny_llama_dir)]) == 0
    assert "layers     4" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["sweep", "--model", str(tiny_llama_dir), "--items", "6", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "skip:3" in text and (out / "sweep.csv").is_file() and (out / "sweep_layers.png").is_file()


def test_patch_command_writes_tables_and_resumes(tiny_llama_dir, tmp_path, capsys):
    from prunescope.core.results import COLUMNS, read_table

    out = tmp_path / "patch"
    args = ["patch", "--model", str(tiny_llama_dir), "--probe", "brackets", "--pairs", "4", "--positions", "2",
            "--method", "both", "--out", str(out), "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "spearman(exact, attribution) all:" in text
    cells = read_table(out / "patch.csv")
    layers = read_table(out / "layers.csv")
    assert set(COLUMNS) <= set(cells[0]) and set(COLUMNS) <= set(layers[0])
    assert {r["method"] for r in cells} == {"exact", "attribution"}
    assert {r["condition"] for r in layers} == {f"layer:{i}" for i in range(4)}
    for png in ("patch_exact_resid.png", "patch_exact_heads.png", "patch_attribution_attn_mlp.png"):
        assert (out / png).is_file()
    progress = (out / ".progress" / "exact.jsonl").read_text().splitlines()
    assert len(progress) == len([r for r in cells if r["method"] == "exact"])
    assert main(args) == 0                      # resumes: nothing left to compute, same table
    assert read_table(out / "patch.csv") == cells
    assert main(args[:-3] + ["--positions", "3", "--out", str(out), "--quiet"]) == 2
    assert "different settings" in _err(capsys)
    assert main(args[:-3] + ["--positions", "3", "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["positions"] == 3
    assert len(read_table(out / "patch.csv")) > len(cells)   # the earlier cells are gone, not mixed in


def test_patch_bad_input(tiny_llama_dir, tmp_path, capsys):
    import json

    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps({"clean": "Brackets: ( [", "corrupt": "Brackets: ( [ { {", "answer_clean": " ]",
                               "answer_corrupt": " }"}) + "\n")
    assert main(["patch", "--model", str(tiny_llama_dir), "--probe", str(bad), "--quiet"]) == 2
    assert "equal lengths" in _err(capsys)
    assert main(["patch", "--model", str(tiny_llama_dir), "--probe", "brackets", "--pairs", "4", "--positions", "99",
                 "--quiet"]) == 2
    assert "shortest pair" in _err(capsys)
    assert main(["patch", "--model", str(tiny_llama_dir), "--method", "attribution", "--backend", "nnsight",
                 "--quiet"]) == 2
    assert "hooks backend" in _err(capsys)


# ---------------------------------------------------------------- one meaning per flag, --version
def _meanings() -> dict[str, dict[str, list[str]]]:
    """Every flag of every command from the parser: ``{flag: {meaning: [commands]}}``, where the
    meaning is the help without what one command adds (its default, or that it is required)."""
    import argparse
    import re

    from prunescope.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    table: dict[str, dict[str, list[str]]] = {}
    for name, p in sub.choices.items():
        for a in p._actions:
            for flag in set(a.option_strings) - {"-h", "--help"}:
                text = re.sub(r"\s*\((?:default|required)\b[^()]*\)", "", a.help or "").strip()
                table.setdefault(flag, {}).setdefault(text, []).append(name)
    return table


def test_every_flag_name_has_one_meaning():
    """--n was items (sweep), pairs (patch), prompts (sgr) and layers to drop (prune); --batch-size
    rows per forward, generation slots, the effective training batch and scored requests."""
    table = _meanings()
    assert {flag: m for flag, m in table.items() if len(m) > 1} == {}
    assert "--n" not in table and "--eval-n" not in table and "--gen-batch-size" not in table
    assert list(table["--batch-size"]) == ["rows per forward"]
    assert sorted(next(iter(table["--slots"].values()))) == ["eval", "prune", "sgr"]
    assert sorted(next(iter(table["--overwrite"].values()))) == sorted(
        ["sweep", "patch", "score", "criticality", "prune", "sgr", "recover", "eval", "run"])


def test_docs_flag_table_lists_every_flag_once():
    from prunescope.docs import cli_markdown, flag_meanings

    assert flag_meanings() == dict(sorted(_meanings().items()))
    text = cli_markdown()
    table = text[text.index("## Flags"):text.index("## prunescope ")]
    for flag in _meanings():
        assert table.count(f"| `{flag}` |") == 1, flag


def test_no_aliases_but_lm_evals_num_fewshot(capsys):
    from dataclasses import fields

    from prunescope.cli import COMMANDS, build_parser
    from prunescope.core.options import Output, Placement

    classes = {c.options_class() for c in COMMANDS.values() if c.options} | {Placement, Output}
    assert {a for cls in classes for f in fields(cls) for a in f.metadata["aliases"]} == {"--num_fewshot"}
    for spelling in ("--num-fewshot", "--num_fewshot"):
        assert build_parser().parse_args(["eval", spelling, "3"]).num_fewshot == "3"


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"prunescope {version('prunescope')}"


# ---------------------------------------------------------------- --overwrite
def test_overwrite_sweep_starts_over_only_once_the_input_is_good(tiny_llama_dir, tmp_path, capsys):
    """Without --overwrite other settings are refused (the message names --overwrite); with it the
    earlier sweep's files go, a file of the user's own in the folder stays."""
    out = tmp_path / "s"
    args = ["sweep", "--model", str(tiny_llama_dir), "--out", str(out), "--quiet", "--no-plot"]
    assert main(args + ["--items", "4"]) == 0
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(args + ["--items", "5"]) == 2
    assert "pass --overwrite" in _err(capsys)
    assert main(args + ["--items", "5", "--sets", "9", "--overwrite"]) == 2   # bad input: nothing removed
    assert "out of range" in _err(capsys)
    assert json.loads((out / "config.json").read_text())["items"] == 4 and (out / "sweep.csv").is_file()
    assert main(args + ["--items", "5", "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["items"] == 5
    assert {r["n"] for r in (json.loads(x) for x in (out / "sweep.jsonl").read_text().splitlines())} == {5}
    assert (out / "notes.txt").read_text() == "mine"


def test_overwrite_score_drops_an_earlier_figure(tiny_llama_dir, tmp_path):
    out = tmp_path / "scores"
    args = ["score", "--model", str(tiny_llama_dir), "--texts", "3", "--out", str(out), "--quiet"]
    assert main(args) == 0 and (out / "scores.png").is_file()
    assert main(args + ["--no-plot"]) == 0 and (out / "scores.png").is_file()   # a rerun rewrites the tables only
    assert main(args + ["--no-plot", "--overwrite"]) == 0
    assert (out / "scores.csv").is_file() and not (out / "scores.png").exists()


def test_overwrite_prune_replaces_its_own_checkpoint(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "pruned"
    args = ["prune", "--model", str(tiny_llama_dir), "--strategy", "reverse", "--out", str(out), "--quiet"]
    assert main(args + ["--drop", "1"]) == 0
    assert main(args + ["--drop", "2"]) == 2
    assert "--overwrite" in _err(capsys)
    assert main(args + ["--drop", "2", "--overwrite"]) == 0
    assert len(json.loads((out / "plan.json").read_text())["drop"]) == 2


def test_overwrite_sgr_file(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "sgr.jsonl"
    args = ["sgr", "--model", str(tiny_llama_dir), "--max-prompts", "3", "--max-new-tokens", "3", "--slots", "2",
            "--out", str(out), "--quiet"]
    assert main(args + ["--temperature", "0"]) == 0
    assert main(args + ["--temperature", "0.5"]) == 2
    assert "pass --overwrite" in _err(capsys)
    assert main(args + ["--temperature", "0.5", "--overwrite"]) == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == 3 and {r["sgr"]["temperature"] for r in recs} == {0.5}


def test_overwrite_recover_folder(tiny_llama_dir, tmp_path, capsys):
    data = tmp_path / "sgr.jsonl"
    data.write_text("".join(json.dumps({"id": str(i), "prompt": f"Q{i}?", "response": f"A{i} " * 4}) + "\n"
                            for i in range(10)))
    out = tmp_path / "rec"
    args = ["recover", "--model", str(tiny_llama_dir), "--data", str(data), "--no-quant", "--warmup", "0",
            "--micro-batch", "2", "--train-batch", "2", "--heldout", "2", "--out", str(out), "--quiet"]
    assert main(args + ["--steps", "1"]) == 0
    assert main(args + ["--steps", "2"]) == 2
    assert "pass --overwrite" in _err(capsys)
    assert main(args + ["--steps", "2", "--overwrite"]) == 0
    assert json.loads((out / "prunescope_recovery_run.json").read_text())["steps"] == 2


def test_overwrite_eval_folder(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["eval", "--model", str(tiny_llama_dir), "--tasks", "arc_easy", "--num-fewshot", "0", "--out", str(out),
            "--quiet"]
    assert main(args + ["--limit", "2"]) == 0
    assert main(args + ["--limit", "3"]) == 2
    assert "pass --overwrite" in _err(capsys)
    assert main(args + ["--limit", "3", "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["limit"] == 3
