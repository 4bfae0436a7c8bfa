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

Over several GPUs (``devices=N`` or under ``torchrun``) the layers of exact patching are split
between the processes (each holds a model copy and runs the clean / corrupted base runs itself);
rank 0 gathers each round's cells, logs them, and merges them in layer order. A layer's cells are
batched exactly as in one process, so the values do not depend on the split. Attribution
patching (one forward and one backward) runs on rank 0. ``device_map="auto"`` shards one model
over the GPUs instead.

>>> # patch(model=None, probe="arithmetic", method="both", out="runs/arith")
"""

from __future__ import annotations

from pathlib import Path

from probe.distributed import Dist, assign, check_devices, distributed, launch, rank_device, wants_launch
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
    devices: int | None = None,
    device_map: str | dict | None = None,
    max_memory: str | dict | None = None,
    plot: bool = True,
    show_progress: bool = True,
    loaded=None,
) -> dict:
    """Run patching and write results; returns ``{"cells": [...], "layers": {...}, "agreement": {...}}``.

    ``devices=N`` splits exact patching's layers over N processes (one per GPU; also what runs
    under ``torchrun``); ``device_map`` / ``max_memory`` shard one model over the GPUs.
    """
    call = dict(locals())
    devices = check_devices(devices, device, device_map, loaded)
    if wants_launch(devices):
        return launch(patch, devices, kwargs={**call, "devices": None}, device=device)
    with distributed(device) as d:
        return _patch(d, **{k: v for k, v in call.items() if k != "devices"})


def _patch(d: Dist, model, probe, n, out, *, method, backend, direction, kinds, positions, seed, shots, device,
           dtype, device_map, max_memory, plot, show_progress, loaded) -> dict:
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
    if backend != "hooks" and (d.world_size > 1 or device_map is not None):
        raise PrunescopeError(f"the {backend} backend runs in one process on one device (it wraps or copies the "
                              "model); use --backend hooks with --devices or --device-map")
    config = {"model": str(model or "default"), "probe": probe, "n": n, "method": method, "backend": backend,
              "direction": direction, "kinds": kinds, "positions": positions, "seed": seed, "shots": shots,
              "dtype": dtype}
    out = Path(out) if out else None
    if out:
        d.on_main(check_run_config, out, config, "patching run", paths=("model",))
    lm = loaded or load_model(model, device=rank_device(device, d), dtype=dtype, device_map=device_map,
                              max_memory=max_memory)
    opts = {"shots": shots} if shots and probe == "arithmetic" else {}
    pairs = make_pairs(probe, lm.tokenizer, n=n, seed=seed, **opts)
    enc = encode_pairs(lm.tokenizer, pairs)
    if out and d.is_main:
        save_pairs(pairs, out / "pairs.jsonl")
    kw = dict(kinds=kinds, positions=positions, direction=direction)

    cells: dict[str, list[dict]] = {}
    if method in ("exact", "both"):
        if backend == "hooks" and d.world_size > 1:
            cells["exact"] = _exact_split(d, lm.blocks, enc, out, show_progress, kw)
        elif backend == "hooks":
            done = _read_progress(out) if out else {}
            cells["exact"] = exact_patching(lm.blocks, enc, done=done, show_progress=show_progress,
                                            on_layer=(lambda layer, rows: _append_progress(out, rows)) if out else None,
                                            **kw)
        else:
            from .backends import exact_patching_backend

            cells["exact"] = exact_patching_backend(backend, lm.model, lm.tokenizer, enc, **kw)
    if method in ("attribution", "both"):
        # one forward + one backward: cheaper to run once on rank 0 than to split
        cells["attribution"] = d.on_main(attribution_patching, lm.blocks, enc, **kw)

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
    if out and d.is_main:
        write_table(rows, out / "patch")
        write_table(layer_rows, out / "layers")
        if agreement:
            atomic_write_json(out / "agreement.json", agreement)
        if plot:
            from .plots import plot_patching

            for m, cs in cells.items():
                plot_patching(cs, out, f"{lm.name} {probe} ({m}, {direction})", prefix=f"patch_{m}")
    return {"cells": cells, "layers": layers, "agreement": agreement, "n": len(pairs)}


def _exact_split(d: Dist, blocks, enc, out: Path | None, show_progress: bool, kw: dict) -> list[dict]:
    """Exact patching with the layers split over the ranks; every rank returns all cells, in layer order.

    Layer l's cells run from layer l (or l + 1) onward, so they cost about ``n_layers - l``: the
    split balances that. The ranks meet after every layer (rank 0 logs the round's cells to the
    progress file), so a crash loses at most one layer per rank.
    """
    L = blocks.n_layers
    parts = assign([float(L - layer) for layer in range(L)], d.world_size)
    mine = parts[d.rank]
    done = d.on_main(_read_progress, out) if out else {}
    state = {"rounds": 0, "error": None}

    def sync(layer, rows: list[dict]) -> None:
        state["rounds"] += 1
        gathered = d.gather((rows, state["error"]))
        merged = [r for part, _ in gathered for r in part]
        if out and merged and d.is_main:
            _append_progress(out, merged)

    mine_cells: list[dict] = []
    if mine:
        try:
            mine_cells = exact_patching(blocks, enc, layers=mine, done=done, on_layer=sync,
                                        show_progress=show_progress and d.is_main, **kw)
        except PrunescopeError as e:   # keep meeting the other ranks, then raise everywhere
            state["error"] = str(e)
    for _ in range(max(len(p) for p in parts) - state["rounds"]):
        sync(None, [])
    gathered = d.gather((mine_cells, state["error"]))
    errors = [e for _, e in gathered if e]
    if errors:
        raise PrunescopeError(errors[0])
    # each layer lives on one rank and keeps its own cell order: a stable sort by layer gives
    # exactly the single-process order
    return sorted((c for cells, _ in gathered for c in cells), key=lambda c: c["layer"])


def _read_progress(out: Path) -> dict[str, float]:
    return {d["condition"]: d["value"] for d in read_progress(out / ".progress" / "exact.jsonl")}


def _append_progress(out: Path, rows: list[dict]) -> None:
    append_progress(out / ".progress" / "exact.jsonl", [{"condition": r["condition"], "value": r["value"]} for r in rows])
