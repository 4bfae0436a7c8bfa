"""Shared fixtures: tiny random models of every family, and the real default model (offline)."""

import os

for _k, _v in {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from prunescope.probe.tiny import FAMILIES, save_tiny_model, tiny_model  # noqa: E402


@pytest.fixture(scope="session", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture()
def tiny(family):
    """(model, tokenizer) of one family: a fresh model per test (tests may mutate it)."""
    return tiny_model(family)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    return save_tiny_model("llama", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def default_model():
    from prunescope.probe.models import load_model

    return load_model()


@pytest.fixture()
def prompts(tiny):
    """A right-padded batch longer than the sliding window (4)."""
    _, tok = tiny
    enc = tok(["Alice went to the market and bought 12 apples and 7 pears", "def f(arr, n): return arr[n"],
              return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask
