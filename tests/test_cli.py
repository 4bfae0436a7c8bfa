"""The CLI: one clear error line and exit status 2 for bad input; a sweep writes its table."""

import pytest

from analysis.cli import main


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
