"""Native hooks, TransformerLens TransformerBridge and nnsight give the same skip-k logits."""

import pytest
import torch

from prunescope.probe.interop import nnsight_model, skip_logits, transformer_lens_bridge


@pytest.mark.parametrize("layers", [[1], [0, 2]])
def test_backends_agree_on_skips(tiny, prompts, layers):
    model, tok = tiny
    ids, mask = prompts
    real = mask.bool()
    native = skip_logits("hooks", model, tok, ids, layers, mask)
    tl = skip_logits("transformer_lens", model, tok, ids, layers, mask)
    nn = skip_logits("nnsight", model, tok, ids, layers, mask)
    assert torch.allclose(native[real], tl[real], atol=1e-4)
    assert torch.allclose(native[real], nn[real], atol=1e-4)


def test_bridge_leaves_model_untouched_and_shares_names(tiny, prompts):
    model, tok = tiny
    ids, _ = prompts
    from prunescope.probe.blocks import Blocks

    before = {k: v.clone() for k, v in model.state_dict().items()}
    bridge = transformer_lens_bridge(model, tok)
    with torch.no_grad():
        _, tl_cache = bridge.run_with_cache(ids[:1])
        _, ours = Blocks(model).run_with_cache(ids[:1], names=["blocks.1.hook_resid_post"])
    assert torch.allclose(tl_cache["blocks.1.hook_resid_post"], ours["blocks.1.hook_resid_post"], atol=1e-4)
    assert set(model.state_dict()) == set(before)  # the HF model was not converted in place
    nm = nnsight_model(model, tok)
    assert nm.model.layers[0] is not None and tok.padding_side == "right"
