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

from dataclasses import dataclass
from pathlib import Path

from prunescope.core.distributed import Dist, assign, rank_device, spread
from prunescope.core.errors import PrunescopeError
from prunescope.probe.interop import BACKENDS
from prunescope.core.options import SHARED_MEANINGS, Options, Output, Placement, option
from prunescope.core.registry import Registry
from prunescope.core.lock import run_lock
from prunescope.core.overwrite import expect_folder, remove_previous
from prunescope.core.results import (
    append_progress, atomic_write_json, check_run_config, read_progress, record_run_config, write_table,
)

from prunescope.circuits.pairs import check_pair_probe, encode_pairs, make_pairs, save_pairs
from prunescope.circuits.patching import (
    DIRECTIONS, KINDS, CellPlan, attribution_patching, exact_patching, layer_importance, plan_cells, spearman,
)

METHODS = Registry("patching method")
METHODS.register("exact", "exact", help="one patched forward per cell (layer x position, head)")
METHODS.register("attribution", "attribution", help="first-order attribution patching: one forward and one backward")
METHODS.register("both", "both", help="exact and attribution, with their rank correlation per kind")
# the attribution variants by name: each is 'attribution' with its setting (--attribution-steps,
# --graddrop, --relevance say the same)
METHODS.register("ig", "ig", help="integrated gradients (node-level EAP-IG), --attribution-steps points (default 4)")
METHODS.register("graddrop", "graddrop", help="AtP*'s GradDrop: one backward per layer, magnitudes")
METHODS.register("relp", "relp", help="RelP: attribution with relevance rules in the backward pass (one backward)")


# what a patching run writes in its --out folder (what --overwrite removes)
PATCH_OUTPUTS = ("config.json", "patch.csv", "patch.jsonl", "layers.csv", "layers.jsonl", "pairs.jsonl",
                 "agreement.json", "patch_*.png", ".progress")


@dataclass
class PatchOptions(Options):
    """Settings of ``prunescope patch`` (:func:`patch`).

    >>> PatchOptions(kinds="resid_post,head", method="both").check().kinds
    ['resid_post', 'head']
    """

    probe: str = option("arithmetic", "arithmetic, brackets, or a JSONL file of pairs {clean, corrupt, answer_clean, "
                                      "answer_corrupt}")
    pairs: int = option(32, "patching pairs (clean and corrupted prompt)", minimum=1)
    method: str = option("exact", "exact patching, first-order attribution patching, or both with their rank "
                                  "correlation", choices=METHODS)
    backend: str = option("hooks", "native hooks (fast, batched), or one condition per forward through "
                                   "TransformerLens or nnsight", choices=BACKENDS)
    direction: str = option("denoise", "denoise: clean into corrupted; noise: corrupted into clean",
                            choices=DIRECTIONS)
    kinds: list[str] = option(list(KINDS), "activations to patch", choices=KINDS, what="activation kind")
    positions: int = option(8, "last k positions for per-position maps", minimum=1)
    attribution_steps: int = option(1, "attribution: points on the path from the base to the source run where the "
                                       "gradient is taken; 1 = plain attribution patching (one backward), k > 1 = "
                                       "integrated gradients (k backwards, closer to exact patching)", minimum=1)
    graddrop: bool = option(False, "attribution: AtP*'s GradDrop, one backward per layer with that layer's gradient "
                                   "dropped, mean |estimate| (magnitudes that expose cancelling paths)")
    relevance: bool = option(False, "attribution: RelP, relevance propagation instead of the plain gradient "
                                    "(normalisers and attention patterns held constant, gated activations linear); "
                                    "one backward, like plain attribution")
    seed: int = option(0, SHARED_MEANINGS["seed"], minimum=0)
    shots: int = option(0, SHARED_MEANINGS["shots"], minimum=0)

    def validate(self) -> None:
        check_pair_probe(self.probe)
        if self.method in ("ig", "graddrop", "relp"):  # a named variant: attribution with its setting
            if self.method == "ig" and self.attribution_steps == 1:
                self.attribution_steps = 4
            self.graddrop = self.graddrop or self.method == "graddrop"
            self.relevance = self.relevance or self.method == "relp"
            self.method = "attribution"
        if self.method != "exact" and self.backend != "hooks":
            raise PrunescopeError("attribution patching runs on the hooks backend; use --backend hooks")
        if self.graddrop and self.attribution_steps != 1:
            raise PrunescopeError("--graddrop takes the gradient at the base run; drop --attribution-steps")
        if self.graddrop and self.relevance:
            raise PrunescopeError("--graddrop and --relevance are separate methods; choose one")


def patch(options: PatchOptions | None = None, *, model: str | None = None, placement: Placement | None = None,
          output: Output | None = None, loaded=None) -> dict:
    """Run patching and write results; returns ``{"cells": [...], "layers": {...}, "agreement": {...}}``.

    ``placement.devices=N`` splits exact patching's layers over N processes (one per GPU; also what
    runs under ``torchrun``); ``device_map`` / ``max_memory`` shard one model over the GPUs.

    >>> result = patch(PatchOptions(probe="arithmetic", method="both"), output=Output(out="runs/p"))  # doctest: +SKIP
    """
    options = (options or PatchOptions()).check()
    placement = (placement or Placement()).check()
    return spread(patch, _patch, options, model=model, placement=placement, output=output or Output(), loaded=loaded)


def _patch(d: Dist, options: PatchOptions, *, model, placement: Placement, output: Output, loaded) -> dict:
    from prunescope.probe.models import load_model

    o = options
    probe, n, method, backend, direction, kinds = o.probe, o.pairs, o.method, o.backend, o.direction, list(o.kinds)
    positions, seed, shots = o.positions, o.seed, o.shots
    if backend != "hooks" and (d.world_size > 1 or placement.device_map is not None):
        raise PrunescopeError(f"the {backend} backend runs in one process on one device (it wraps or copies the "
                              "model); use --backend hooks with --devices or --device-map")
    config = {"model": str(model or "default"), "probe": probe, "pairs": n, "method": method, "backend": backend,
              "direction": direction, "kinds": kinds, "positions": positions, "seed": seed, "shots": shots,
              "dtype": placement.dtype,
              # recorded when it changes the result (older run folders, without the key, stay resumable)
              **({"attribution_steps": o.attribution_steps} if o.attribution_steps != 1 and method != "exact" else {}),
              **({"graddrop": True} if o.graddrop and method != "exact" else {}),
              **({"relevance": True} if o.relevance and method != "exact" else {})}
    out = Path(output.out) if output.out else None
    if out and not output.overwrite:
        d.on_main(check_run_config, out, config, "patching run", paths=("model",), write=False)
    elif out:
        d.on_main(expect_folder, out)
    lm = loaded or load_model(model, **{**placement.load_kwargs(), "device": rank_device(placement.device, d)})
    opts = {"shots": shots} if shots and probe == "arithmetic" else {}
    pairs = make_pairs(probe, lm.tokenizer, n=n, seed=seed, **opts)
    enc = encode_pairs(lm.tokenizer, pairs)
    # the cells are validated here, so bad positions fail before any write
    plan = plan_cells(lm.blocks, enc, kinds=kinds, positions=positions, direction=direction)
    with run_lock(out if d.is_main else None, "patching run"):
        if out and output.overwrite:  # the input is good: an earlier run's results go (every rank waits)
            d.on_main(remove_previous, out, PATCH_OUTPUTS)
        if out and d.is_main:
            record_run_config(out, config)
            save_pairs(pairs, out / "pairs.jsonl")
        return _patch_cells(d, lm, plan, pairs, o, out, output)


def _patch_cells(d: Dist, lm, plan: CellPlan, pairs, o: PatchOptions, out: Path | None, output: Output) -> dict:
    """Exact and / or attribution maps of the planned cells, their tables, agreement and figures."""
    probe, method, backend, direction, kinds = o.probe, o.method, o.backend, o.direction, list(o.kinds)
    seed, show_progress, plot = o.seed, output.progress, output.plot

    cells: dict[str, list[dict]] = {}
    if method in ("exact", "both"):
        if backend == "hooks" and d.world_size > 1:
            cells["exact"] = _exact_split(d, lm.blocks, plan, out, show_progress)
        elif backend == "hooks":
            done = _read_progress(out) if out else {}
            cells["exact"] = exact_patching(lm.blocks, plan, done=done, show_progress=show_progress,
                                            on_layer=(lambda layer, rows: _append_progress(out, rows)) if out else None)
        else:
            from prunescope.circuits.backends import exact_patching_backend

            cells["exact"] = exact_patching_backend(backend, lm.model, lm.tokenizer, plan)
    if method in ("attribution", "both"):
        # one forward + one backward: cheaper to run once on rank 0 than to split
        cells["attribution"] = d.on_main(attribution_patching, lm.blocks, plan, steps=o.attribution_steps,
                                         graddrop=o.graddrop, relevance=o.relevance)

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
            from prunescope.circuits.plots import plot_patching

            for m, cs in cells.items():
                plot_patching(cs, out, f"{lm.name} {probe} ({m}, {direction})", prefix=f"patch_{m}")
    return {"cells": cells, "layers": layers, "agreement": agreement, "n": len(pairs)}


def _exact_split(d: Dist, blocks, plan: CellPlan, out: Path | None, show_progress: bool) -> list[dict]:
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
            mine_cells = exact_patching(blocks, plan.only_layers(mine), done=done, on_layer=sync,
                                        show_progress=show_progress and d.is_main)
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
