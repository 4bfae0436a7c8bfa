"""``prunescope patch``: localize a probe's circuit and write tidy tables, a layer ranking and figures.

Writes into ``OUT``:

* ``patch.csv`` / ``.jsonl`` — one row per cell: the sweep columns (``model, probe, condition,
  layers, metric, value, n, seed``) plus ``method, direction, kind, layer, position, head``;
* ``layers.csv`` / ``.jsonl`` — per-layer patching effect in the sweep table format
  (``condition = layer:<i>``, ``metric = patching_effect``), which ``prune/`` reads like a sweep;
* ``pairs.jsonl`` — the exact pairs used; ``config.json``;
* figures: ``patch_<method>_resid.png`` (layer x position), ``patch_<method>_heads.png``
  (layer x head), ``patch_<method>_attn_mlp.png`` (attention vs MLP per layer);
* with ``--method both``: the Spearman rank correlation of the two methods per kind, in
  ``agreement.json``.

Exact patching saves progress after every layer (``.progress/``), so a crashed run resumes.

>>> # patch(model=None, probe="arithmetic", method="both", out="runs/arith")
"""

from __future__ import annotations

from pathlib import Path

from probe.errors import PrunescopeError
from probe.results import append_progress, atomic_write_json, check_run_config, read_progress, write_table

from .pairs import encode_pairs, make_pairs, save_pairs
from .patching import DIRECTIONS, KINDS, attribution_patching, exact_patching, layer_importance, spearman

METHODS = ("exact", "attribution", "both")


def patch(
    model: str | None = None,
    probe: str = "arithmetic",
    n: int = 32,
    out: str | Path | None = None,
    *,
    method: str = "exact",
    backend: str = "hooks",
    direction: str = "denoise",
    kinds: str | list[str] = KINDS,
    positions: int = 8,
    seed: int = 0,
    shots: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    plot: bool = True,
    show_progress: bool = True,
    loaded=None,
) -> dict:
    """Run patching and write results; returns ``{"cells": [...], "layers": {...}, "agreement": {...}}``."""
    from probe.models import load_model
    from probe.interop import BACKENDS

    if method not in METHODS:
        raise PrunescopeError(f"unknown method {method!r}: choose {', '.join(METHODS)}")
    if backend not in BACKENDS:
        raise PrunescopeError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if direction not in DIRECTIONS:
        raise PrunescopeError(f"unknown direction {direction!r}: choose {' or '.join(DIRECTIONS)}")
    kinds = [k.strip() for k in kinds.split(",")] if isinstance(kinds, str) else list(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise PrunescopeError(f"unknown activation kind(s) {bad}: choose from {', '.join(KINDS)}")
    if method != "exact" and backend != "hooks":
        raise PrunescopeError("attribution patching runs on the hooks backend; use --backend hooks")
    config = {"model": str(model or "default"), "probe": probe, "n": n, "method": method, "backend": backend,
              "direction": direction, "kinds": kinds, "positions": positions, "seed": seed, "shots": shots,
              "dtype": dtype}
    out = Path(out) if out else None
    if out:
        check_run_config(out, config, "patching run")
    lm = loaded or load_model(model, device=device, dtype=dtype)
    opts = {"shots": shots} if shots and probe == "arithmetic" else {}
    pairs = make_pairs(probe, lm.tokenizer, n=n, seed=seed, **opts)
    enc = encode_pairs(lm.tokenizer, pairs)
    if out:
        save_pairs(pairs, out / "pairs.jsonl")
    kw = dict(kinds=kinds, positions=positions, direction=direction)

    cells: dict[str, list[dict]] = {}
    if method in ("exact", "both"):
        if backend == "hooks":
            done = _read_progress(out) if out else {}
            cells["exact"] = exact_patching(lm.blocks, enc, done=done, show_progress=show_progress,
                                            on_layer=(lambda layer, rows: _append_progress(out, rows)) if out else None,
                                            **kw)
        else:
            from .backends import exact_patching_backend

            cells["exact"] = exact_patching_backend(backend, lm.model, lm.tokenizer, enc, **kw)
    if method in ("attribution", "both"):
        cells["attribution"] = attribution_patching(lm.blocks, enc, **kw)

    agreement = {}
    if len(cells) == 2:
        for kind in kinds + ["all"]:
            ex = [r["value"] for r in cells["exact"] if kind in ("all", r["kind"])]
            at = [r["value"] for r in cells["attribution"] if kind in ("all", r["kind"])]
            agreement[kind] = spearman(ex, at)

    rows, layer_rows, layers = [], [], {}
    for m, cs in cells.items():
        layers[m] = layer_importance(cs)
        for r in cs:
            rows.append({"model": lm.name, "probe": probe, "condition": r["condition"], "layers": str(r["layer"]),
                         "metric": "normalized_logit_diff", "value": r["value"], "n": len(pairs), "seed": seed,
                         "method": m, "direction": direction, "kind": r["kind"], "layer": r["layer"],
                         "position": r["position"], "head": "" if r["head"] is None else r["head"]})
        for layer, v in layers[m].items():
            layer_rows.append({"model": lm.name, "probe": probe, "condition": f"layer:{layer}", "layers": str(layer),
                               "metric": "patching_effect", "value": v, "n": len(pairs), "seed": seed,
                               "method": m, "direction": direction})
    if out:
        write_table(rows, out / "patch")
        write_table(layer_rows, out / "layers")
        if agreement:
            atomic_write_json(out / "agreement.json", agreement)
        if plot:
            from .plots import plot_patching

            for m, cs in cells.items():
                plot_patching(cs, out, f"{lm.name} {probe} ({m}, {direction})", prefix=f"patch_{m}")
    return {"cells": cells, "layers": layers, "agreement": agreement, "n": len(pairs)}


def _read_progress(out: Path) -> dict[str, float]:
    return {d["condition"]: d["value"] for d in read_progress(out / ".progress" / "exact.jsonl")}


def _append_progress(out: Path, rows: list[dict]) -> None:
    append_progress(out / ".progress" / "exact.jsonl", [{"condition": r["condition"], "value": r["value"]} for r in rows])
