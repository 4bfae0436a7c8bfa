"""The block handle on tiny models of every family: skip, capture, patch, run-from, cleanup."""

import copy

import pytest
import torch

from prunescope.probe.blocks import Blocks
from prunescope.core.errors import PrunescopeError
from prunescope.prune.surgery import remove_layers


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(ids, attention_mask=mask).logits


def _real(mask):
    return mask.bool()


@pytest.mark.parametrize("drop", [[1], [0, 2], [3]])
def test_skip_equals_physical_deletion(tiny, prompts, drop):
    model, _ = tiny
    ids, mask = prompts
    blocks = Blocks(model)
    with torch.no_grad(), blocks.skip(drop):
        skipped = blocks.forward(ids, mask)
    full = blocks.forward(ids, mask)
    pruned = remove_layers(copy.deepcopy(model), drop)
    deleted = _logits(pruned, ids, mask)
    real = _real(mask)
    assert torch.allclose(skipped[real], deleted[real], atol=1e-5)
    # and the skip changed something (the tiny weights are strong enough to show it)
    assert (skipped[real] - full[real]).abs().max() > 1e-2
    # the context restored the layers
    assert torch.allclose(blocks.forward(ids, mask), _logits(model, ids, mask))


def test_forward_matches_hf_and_decomposes(tiny, prompts):
    model, _ = tiny
    ids, mask = prompts
    blocks = Blocks(model)
    with torch.no_grad():
        logits, cache = blocks.run_with_cache(ids, mask)
    assert torch.equal(logits, _logits(model, ids, mask))
    for i in range(blocks.n_layers):
        pre, post = cache[f"blocks.{i}.hook_resid_pre"], cache[f"blocks.{i}.hook_resid_post"]
        recomposed = pre + cache[f"blocks.{i}.hook_attn_out"] + cache[f"blocks.{i}.hook_mlp_out"]
        assert torch.allclose(recomposed, post, atol=1e-5)
        if i + 1 < blocks.n_layers:
            assert torch.equal(post, cache[f"blocks.{i + 1}.hook_resid_pre"])
    z = cache["blocks.0.attn.hook_z"]
    assert z.shape == (*ids.shape, blocks.n_heads, blocks.d_head)


def test_run_from_layer_equals_full_forward(tiny, prompts):
    model, _ = tiny
    ids, mask = prompts
    blocks = Blocks(model)
    with torch.no_grad():
        full, cache = blocks.run_with_cache(ids, mask, [f"blocks.{i}.hook_resid_pre" for i in range(4)])
        for layer in range(blocks.n_layers):
            out = blocks.forward(ids, mask, start_layer=layer, start_hidden=cache[f"blocks.{layer}.hook_resid_pre"])
            assert torch.allclose(out, full, atol=1e-5), layer
        # running from layer 2 with a skip of layer 3 equals skipping layer 3 from the start
        with blocks.skip([3]):
            a = blocks.forward(ids, mask)
            b = blocks.forward(ids, mask, start_layer=2, start_hidden=cache["blocks.2.hook_resid_pre"])
        assert torch.allclose(a, b, atol=1e-5)


def test_gather_positions(tiny, prompts):
    model, _ = tiny
    ids, mask = prompts
    blocks = Blocks(model)
    last = mask.sum(1) - 1
    with torch.no_grad():
        full = blocks.forward(ids, mask)
        at = blocks.forward(ids, mask, at=last)
        at2 = blocks.forward(ids, mask, at=torch.stack([last, last - 1], 1))
    rows = torch.arange(ids.shape[0])
    assert torch.allclose(at, full[rows, last], atol=1e-6)
    assert torch.allclose(at2[:, 1], full[rows, last - 1], atol=1e-6)


@pytest.mark.parametrize("name", ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.2.hook_attn_out",
                                  "blocks.2.hook_mlp_out", "blocks.1.attn.hook_z"])
def test_patch_with_own_activation_changes_nothing(tiny, prompts, name):
    model, _ = tiny
    ids, mask = prompts
    blocks = Blocks(model)
    with torch.no_grad():
        clean, cache = blocks.run_with_cache(ids, mask, [name])
        act = cache[name]
        with blocks.patch(name, act[:, [2, 5]], positions=[2, 5]):
            same = blocks.forward(ids, mask)
        # a different value at one position does change the output after it
        with blocks.patch(name, torch.zeros_like(act[:, [5]]), positions=[5]):
            changed = blocks.forward(ids, mask)
    assert torch.allclose(same, clean, atol=1e-6)
    assert (changed[:, 5:] - clean[:, 5:]).abs().max() > 1e-3
    assert torch.allclose(changed[:, :5], clean[:, :5], atol=1e-6)  # causal: earlier positions untouched


def test_patch_heads_and_per_row_positions(tiny, prompts):
    model, _ = tiny
    ids, mask = prompts
    blocks = Blocks(model)
    name = "blocks.2.attn.hook_z"
    with torch.no_grad():
        clean, cache = blocks.run_with_cache(ids, mask, [name])
        last = (mask.sum(1) - 1)[:, None]                      # [b, 1] per-row positions
        rows = torch.arange(ids.shape[0])[:, None]
        own = cache[name][rows, last][..., [1, 3], :]           # [b, 1, 2, d_head]
        with blocks.patch(name, own, positions=last, heads=[1, 3]):
            same = blocks.forward(ids, mask)
        with blocks.patch(name, torch.zeros_like(own), positions=last, heads=[1, 3]):
            changed = blocks.forward(ids, mask)
    assert torch.allclose(same, clean, atol=1e-6)
    r = torch.arange(ids.shape[0])
    assert (changed[r, last[:, 0]] - clean[r, last[:, 0]]).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["blocks.2.hook_mlp_out", "blocks.1.attn.hook_z"])
def test_patch_takes_full_or_sliced_activation(tiny, prompts, name):
    """The cached activation of another prompt patches as it is (full length) or sliced."""
    model, _ = tiny
    ids, mask = prompts
    blocks = Blocks(model)
    heads = [0, 2] if name.endswith("hook_z") else None
    other = ids.flip(0)                                   # another prompt of the same length
    with torch.no_grad():
        _, cache = blocks.run_with_cache(other, mask.flip(0), [name])
        src = cache[name]
        with blocks.patch(name, src, positions=[-1], heads=heads):
            full = blocks.forward(ids, mask)
        piece = src[:, [-1]] if heads is None else src[:, [-1]][..., heads, :]
        with blocks.patch(name, piece, positions=[-1], heads=heads):
            sliced = blocks.forward(ids, mask)
        with blocks.patch(name, src[:1], positions=[-1], heads=heads):   # batch 1 broadcasts
            one = blocks.forward(ids, mask)
        one_piece = piece[:1]
        with blocks.patch(name, one_piece, positions=[-1], heads=heads):
            one_sliced = blocks.forward(ids, mask)
        clean = blocks.forward(ids, mask)
    assert torch.allclose(full, sliced, atol=1e-6)
    assert (full[:, -1] - clean[:, -1]).abs().max() > 1e-3     # the patch took effect
    assert torch.allclose(full[:, :-1], clean[:, :-1], atol=1e-6)
    assert torch.allclose(one, one_sliced, atol=1e-6)


def test_patch_wrong_shape_is_one_line(tiny, prompts):
    model, _ = tiny
    ids, mask = prompts
    blocks = Blocks(model)
    name = "blocks.2.hook_mlp_out"
    with torch.no_grad():
        _, cache = blocks.run_with_cache(ids, mask, [name])
        act = cache[name]
        b, t, d = act.shape
        for bad in (act[:, :-1], act[:, [1, 2]], torch.zeros(b, t, d + 1)):
            with pytest.raises(PrunescopeError) as err, blocks.patch(name, bad, positions=[-1]):
                blocks.forward(ids, mask)
            msg = str(err.value)
            assert "\n" not in msg
            assert f"{[b, t, d]}" in msg and f"{[b, 1, d]}" in msg, msg


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_and_skips_removed_after_exception(tiny, prompts):
    model, _ = tiny
    ids, mask = prompts
    blocks = Blocks(model)
    layers_before = list(blocks.layers)
    before = _hook_count(model)
    with pytest.raises(RuntimeError, match="boom"):
        with blocks.skip([1]), blocks.capture(blocks.hook_names()), blocks.patch("blocks.0.hook_mlp_out",
                                                                                  torch.zeros(1)):
            blocks.forward(ids, mask)
            raise RuntimeError("boom")
    assert _hook_count(model) == before == 0
    assert list(blocks.layers) == layers_before


def test_hook_on_skipped_layer_still_fires(tiny, prompts):
    model, _ = tiny
    ids, mask = prompts
    blocks = Blocks(model)
    with torch.no_grad(), blocks.skip([1]), blocks.capture(["blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]) as a:
        blocks.forward(ids, mask)
    assert torch.equal(a["blocks.1.hook_resid_pre"], a["blocks.1.hook_resid_post"])


def test_bad_layer_arguments(tiny):
    blocks = Blocks(tiny[0])
    with pytest.raises(PrunescopeError, match="out of range"):
        blocks.check_layers([4])
    with pytest.raises(PrunescopeError, match="duplicate"):
        blocks.check_layers([1, 1])
    with pytest.raises(PrunescopeError, match="cannot skip all 4 layers"):
        with blocks.skip([0, 1, 2, 3]):
            pass
    with pytest.raises(PrunescopeError, match="unknown activation name"):
        with blocks.hooks({"blocks.1.resid": lambda t, n: None}):
            pass
    with pytest.raises(PrunescopeError, match="out of range"):
        with blocks.capture(["blocks.9.hook_resid_pre"]):
            pass


def test_unsupported_architecture():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(PrunescopeError, match="unsupported architecture 'gpt2'.*Llama.*Qwen2.*Mistral.*Gemma2.*Gemma3"):
        Blocks(model)
