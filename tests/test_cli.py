"""The CLI: one clear error line and exit status 2 for bad input; a sweep writes its table."""

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
    (["sweep", "--probe", "nonsense"], "unknown probe"),
    (["sweep", "--n", "0"], "positive"),
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
    assert main(["sweep", "--model", str(tiny_llama_dir), "--n", "6", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "skip:3" in text and (out / "sweep.csv").is_file() and (out / "sweep_layers.png").is_file()


def test_patch_command_writes_tables_and_resumes(tiny_llama_dir, tmp_path, capsys):
    from prunescope.core.results import COLUMNS, read_table

    out = tmp_path / "patch"
    args = ["patch", "--model", str(tiny_llama_dir), "--probe", "brackets", "--n", "4", "--positions", "2",
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


def test_patch_bad_input(tiny_llama_dir, tmp_path, capsys):
    import json

    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps({"clean": "Brackets: ( [", "corrupt": "Brackets: ( [ { {", "answer_clean": " ]",
                               "answer_corrupt": " }"}) + "\n")
    assert main(["patch", "--model", str(tiny_llama_dir), "--probe", str(bad), "--quiet"]) == 2
    assert "equal lengths" in _err(capsys)
    assert main(["patch", "--model", str(tiny_llama_dir), "--probe", "brackets", "--n", "4", "--positions", "99",
                 "--quiet"]) == 2
    assert "shortest pair" in _err(capsys)
    assert main(["patch", "--model", str(tiny_llama_dir), "--method", "attribution", "--backend", "nnsight",
                 "--quiet"]) == 2
    assert "hooks backend" in _err(capsys)
