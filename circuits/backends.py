"""Exact patching through TransformerLens or nnsight, to cross-check the native hooks backend.

All three backends read and write activations by the same names (``blocks.3.hook_mlp_out``):
TransformerLens uses them natively; for nnsight the names map onto the model's own module tree
through the architecture table (``blocks.3.hook_mlp_out`` -> ``model.layers[3].mlp.output`` on
Llama, ``model.layers[3].post_feedforward_layernorm.output`` on Gemma). These backends run one
condition per forward, so they are slower; the numbers match the hooks backend (tested).

>>> from prunescope.probe.tiny import tiny_model
>>> from prunescope.probe.blocks import Blocks
>>> from prunescope.circuits.pairs import make_pairs, encode_pairs
>>> from prunescope.circuits.patching import plan_cells
>>> model, tok = tiny_model("llama")
>>> enc = encode_pairs(tok, make_pairs("arithmetic", tok, n=3))
>>> plan = plan_cells(Blocks(model), enc, kinds=("mlp_out",), positions=1, layers=[2])
>>> cells = exact_patching_backend("nnsight", model, tok, plan)
>>> [c["condition"] for c in cells]
['mlp_out:L2@-1', 'mlp_out:L2@all']
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prunescope.probe.architectures import get_path
from prunescope.probe.blocks import Blocks
from prunescope.core.errors import PrunescopeError
from prunescope.probe.interop import BACKENDS, nnsight_model, transformer_lens_bridge

from prunescope.circuits.patching import CellPlan, cell_row, _logit_diff, _normalize, patched_value_fn

_ORDER = {"hook_resid_pre": 0, "attn.hook_z": 1, "hook_attn_out": 2, "hook_mlp_out": 3, "hook_resid_post": 4}


class _Runner:
    """Run a batch with hooks ``[(name, fn(tensor, name) -> tensor)]`` and/or capture names."""

    def __init__(self, backend: str, model, tokenizer):
        if backend not in BACKENDS:
            raise PrunescopeError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.blocks = Blocks(model)
        if backend == "transformer_lens":
            self.bridge = transformer_lens_bridge(model, tokenizer)
        elif backend == "nnsight":
            self.nm = nnsight_model(model, tokenizer)

    @torch.no_grad()
    def run(self, ids, mask, last, hooks=(), capture: Sequence[str] = ()):
        rows = torch.arange(ids.shape[0])
        if self.backend == "hooks":
            with self.blocks.hooks(list(hooks)), self.blocks.capture(capture) as acts:
                logits = self.blocks.forward(ids, mask, at=last)
            return logits, dict(acts)
        if self.backend == "transformer_lens":
            acts = {}

            def saver(n):   # hook.name may be TransformerLens's canonical alias of n
                def fn(t, hook):
                    acts[n] = t.detach().clone()
                return fn

            fwd = [(n, (lambda f, n: (lambda t, hook: f(t, n)))(f, n)) for n, f in hooks]
            fwd += [(n, saver(n)) for n in capture]
            logits = self.bridge.run_with_hooks(ids, attention_mask=mask, fwd_hooks=fwd)
            return logits[rows, last], acts
        return self._run_nnsight(ids, mask, last, list(hooks), list(capture))

    def _envoy(self, name: str):
        """(getter, setter) for an activation name on the nnsight model (inside a trace)."""
        layer_idx, kind = self.blocks.parse_name(name)
        arch = self.blocks.arch
        layer = get_path(self.nm, arch.layers)[layer_idx]
        if kind == "hook_resid_pre":
            return (lambda: layer.input), (lambda v: setattr(layer, "input", v))
        if kind == "hook_resid_post":
            return (lambda: layer.output), (lambda v: setattr(layer, "output", v))
        if kind == "attn.hook_z":
            o = get_path(layer, arch.o_proj)
            H, D = self.blocks.n_heads, self.blocks.d_head

            def get():
                x = o.input
                return x.view(*x.shape[:-1], H, D)
            return get, (lambda v: setattr(o, "input", v.reshape(*v.shape[:-2], H * D)))
        module = get_path(layer, arch.attn_out if kind == "hook_attn_out" else arch.mlp_out)
        if kind == "hook_attn_out" and arch.attn_out == "self_attn":   # returns (output, weights)
            box = {}

            def get():
                box["out"] = module.output
                return box["out"][0]
            return get, (lambda v: setattr(module, "output", (v, *box["out"][1:])))
        return (lambda: module.output), (lambda v: setattr(module, "output", v))

    def _run_nnsight(self, ids, mask, last, hooks, capture):
        todo = [(n, "hook", f) for n, f in hooks] + [(n, "save", None) for n in capture]
        # nnsight reaches modules in the order they run
        todo.sort(key=lambda x: (self.blocks.parse_name(x[0])[0], _ORDER[self.blocks.parse_name(x[0])[1]]))
        saved = {}
        with self.nm.trace(ids, attention_mask=mask):
            for name, what, f in todo:
                get, put = self._envoy(name)
                if what == "hook":
                    put(f(get(), name))
                else:
                    saved[name] = get().save()
            logits = self.nm.output.logits.save()
        rows = torch.arange(ids.shape[0])
        return logits[rows, last], {k: v.detach().clone() for k, v in saved.items()}


def exact_patching_backend(backend: str, model, tokenizer, plan: CellPlan) -> list[dict]:
    """Exact patching of the cells of ``plan`` with one condition per forward through ``backend``."""
    runner = _Runner(backend, model, tokenizer)
    enc, names = plan.enc, plan.names
    rows = torch.arange(plan.n_pairs)
    lc, cache_c = runner.run(enc.clean, enc.mask, enc.last, capture=names)
    lx, cache_x = runner.run(enc.corrupt, enc.mask, enc.last, capture=names)
    ld_c, ld_x = _logit_diff(lc, enc, rows), _logit_diff(lx, enc, rows)
    _, src = plan.base_and_source(cache_c, cache_x)
    out = []
    for c in plan.cells:
        hooks = [(c.name, patched_value_fn(c, src[c.name], enc, rows))]
        logits, _ = runner.run(plan.base_ids, enc.mask, enc.last, hooks=hooks)
        out.append(cell_row(c, _normalize(_logit_diff(logits, enc, rows), ld_c, ld_x)))
    return out
