"""What makes a layer critical: per-layer properties against the measured cost of skipping the layer.

A layer's *criticality* for a probe is its single-layer skip drop in a sweep table (``prunescope
sweep``): the metric with nothing skipped minus the metric with that layer skipped (condition
``skip:<l>``), per probe and per metric (``margin_accuracy`` and ``exact_match`` where the table
has them). Its *properties* are measured on calibration texts (the ones ``prunescope score`` and
``prunescope prune`` use):

* ``depth``: layer index / (layers - 1);
* ``block_influence``: 1 - mean cos(h_in, h_out) of the layer (ShortGPT);
* ``angular_distance``: mean arccos(cos(h_in, h_out)) / pi of the layer alone (Gromov et al., n = 1);
* ``attention_entropy``: entropy (nats) of each attention row, averaged over heads and real query
  tokens (between 0, one key, and log(position + 1), uniform over the keys it may see);
* ``attn_out_norm`` / ``mlp_out_norm``: the L2 norm of what the attention / MLP sublayer adds to the
  residual stream, relative to the norm of the residual stream entering the layer, averaged over
  real tokens.

Each property's Spearman rank correlation with each probe's drop (and with the mean drop over the
probes) comes with a 95% bootstrap interval over layers; an interval that holds 0 says the
property does not tell critical layers from the others on this model.

>>> drops = {"brackets": {0: 0.6, 1: 0.1, 2: 0.0, 3: 0.3}}
>>> props = [{"layer": i, "depth": i / 3} for i in range(4)]
>>> [(r["property"], r["probe"], round(r["rho"], 2)) for r in rank_correlations(props, drops, n_boot=50)]
[('depth', 'brackets', -0.4), ('depth', 'mean', -0.4)]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prunescope.core.errors import PrunescopeError
from prunescope.core.options import SHARED_MEANINGS, Options, Output, Placement, option
from prunescope.core.overwrite import expect_folder, remove_previous
from prunescope.core.results import read_table, write_table
from prunescope.probe.blocks import Blocks
from prunescope.probe.scoring import METRICS, canonical_metric
from prunescope.prune.scores import representation_scores

#: the per-layer properties, in the order of the tables and the figure
PROPERTIES = ("depth", "block_influence", "angular_distance", "attention_entropy", "attn_out_norm", "mlp_out_norm")
#: the probe label of the mean drop over a sweep's probes
MEAN = "mean"
#: the metrics whose drops are always computed where the sweep has them (``metric`` comes first)
BOTH_SCORES = ("margin_accuracy", "exact_match")
# what prunescope criticality writes in its --out folder (what --overwrite removes)
CRITICALITY_OUTPUTS = ("properties.csv", "properties.jsonl", "correlations.csv", "correlations.jsonl",
                       "capabilities.csv", "capabilities.jsonl", "criticality.png")


# ---------------------------------------------------------------- properties
@contextmanager
def eager_attention(model: torch.nn.Module) -> Iterator[None]:
    """Inside the block the model computes attention eagerly, so ``output_attentions=True`` returns
    the weights (SDPA and flash kernels never form them); the implementation it had is restored."""
    before = getattr(model.config, "_attn_implementation", None)
    if before in (None, "eager"):
        yield
        return
    switch = getattr(model, "set_attn_implementation", None)
    try:
        if switch is not None:
            switch("eager")
        else:
            model.config._attn_implementation = "eager"
        yield
    finally:
        if switch is not None:
            switch(before)
        else:
            model.config._attn_implementation = before


@torch.no_grad()
def attention_and_sublayers(blocks: Blocks, tokenizer, texts: Sequence[str], *,
                            max_length: int = 512) -> dict[str, list[float]]:
    """Per layer: ``attention_entropy``, ``attn_out_norm`` and ``mlp_out_norm`` (see the module's
    docstring), each a mean over every real token of ``texts``. One eager forward per text (a batch
    of attention weights of every layer is large), its sublayer outputs read through the block handle.

    >>> from prunescope.probe.tiny import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> out = attention_and_sublayers(Blocks(model), tok, ["1 + 2 = 3", "a b c"])
    >>> sorted(out), len(out["mlp_out_norm"]) == Blocks(model).n_layers
    (['attention_entropy', 'attn_out_norm', 'mlp_out_norm'], True)
    """
    L = blocks.n_layers
    kinds = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out")
    sums = {k: torch.zeros(L, dtype=torch.float64) for k in ("attention_entropy", "attn_out_norm", "mlp_out_norm")}
    count = 0
    with eager_attention(blocks.model):
        for text in texts:
            enc = tokenizer([text], return_tensors="pt", truncation=True, max_length=max_length)
            real = enc.attention_mask[0].bool()
            if not real.any():
                continue
            with blocks.capture(blocks.hook_names(kinds=kinds)) as acts:
                out = blocks.base(input_ids=enc.input_ids.to(blocks.device),
                                  attention_mask=enc.attention_mask.to(blocks.device),
                                  output_attentions=True, use_cache=False)
            if not out.attentions or any(a is None for a in out.attentions):
                raise PrunescopeError(f"{type(blocks.model).__name__} returned no attention weights under eager "
                                      "attention; attention entropy cannot be measured on it")
            count += int(real.sum())
            for i in range(L):
                att = out.attentions[i][0].double().cpu()[:, real]          # [heads, real queries, keys]
                sums["attention_entropy"][i] += torch.special.entr(att).sum(-1).mean(0).sum()
                norm = _real_norms(acts[f"blocks.{i}.hook_resid_pre"], real)
                sums["attn_out_norm"][i] += (_real_norms(acts[f"blocks.{i}.hook_attn_out"], real) / norm).sum()
                sums["mlp_out_norm"][i] += (_real_norms(acts[f"blocks.{i}.hook_mlp_out"], real) / norm).sum()
    if count == 0:
        raise PrunescopeError("no calibration tokens: give at least one non-empty text")
    return {k: (v / count).tolist() for k, v in sums.items()}


def _real_norms(act: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """The L2 norm (float64, on the CPU) of a one-row activation ``[1, pos, d_model]`` at the real tokens."""
    return act[0].double().cpu()[real].norm(dim=-1)


def layer_properties(lm, texts: Sequence[str], *, batch_size: int = 8, max_length: int = 512) -> list[dict]:
    """One row per layer of a loaded model (:class:`prunescope.probe.models.LoadedModel`): ``model``,
    ``layer`` and every property of :data:`PROPERTIES`, measured on ``texts``. Block Influence and
    angular distance come from :func:`prunescope.prune.scores.representation_scores` (one cached pass).

    >>> from prunescope.probe.tiny import tiny_model
    >>> from types import SimpleNamespace
    >>> model, tok = tiny_model("llama")
    >>> lm = SimpleNamespace(model=model, tokenizer=tok, name="tiny", blocks=Blocks(model))
    >>> rows = layer_properties(lm, ["1 + 2 = 3", "a b c d"])
    >>> len(rows), rows[-1]["depth"], sorted(rows[0])[:3]
    (4, 1.0, ['angular_distance', 'attention_entropy', 'attn_out_norm'])
    """
    blocks, L = lm.blocks, lm.blocks.n_layers
    if L < 2:
        raise PrunescopeError(f"{lm.name} has {L} layer; correlating layer properties needs at least 2 layers")
    scores = representation_scores(blocks, lm.tokenizer, texts, block_sizes=[1], batch_size=batch_size,
                                   max_length=max_length, model_name=lm.name)
    value = {(r["metric"], int(r["layers"])): r["value"] for r in scores}
    other = attention_and_sublayers(blocks, lm.tokenizer, texts, max_length=max_length)
    return [{"model": lm.name, "layer": i, "depth": i / (L - 1), "block_influence": value[("block_influence", i)],
             "angular_distance": value[("angular_distance_n1", i)],
             **{k: other[k][i] for k in ("attention_entropy", "attn_out_norm", "mlp_out_norm")}}
            for i in range(L)]


# ---------------------------------------------------------------- criticality from a sweep table
def read_sweep(path: str | Path, model_name: str | None = None) -> list[dict]:
    """The rows of a sweep table (``sweep.csv`` or ``.jsonl``) of one model, checked to hold the
    unskipped score (``none``) and single-layer skips (``skip:<l>``)."""
    path = Path(path)
    if not path.is_file():
        raise PrunescopeError(f"sweep table {path} does not exist; give the sweep.csv of a prunescope sweep run")
    rows = read_table(path, required=("model", "probe", "condition", "metric", "value"))
    models = sorted({r["model"] for r in rows})
    if model_name is not None:
        if model_name not in models:
            raise PrunescopeError(f"{path} holds results for {models or 'no model'}, not for {model_name}; pass the "
                                  "sweep of this model (or its --model)")
        rows = [r for r in rows if r["model"] == model_name]
    elif len(models) > 1:
        raise PrunescopeError(f"{path} holds results for several models {models}; pass one model's sweep")
    if not any(_skipped_layer(r["condition"]) is not None for r in rows) or not any(
            r["condition"] == "none" for r in rows):
        raise PrunescopeError(f"{path} has no single-layer skip rows (conditions none and skip:<layer>); run "
                              "prunescope sweep with --windows 1 (its default)")
    return rows


def _skipped_layer(condition: str) -> int | None:
    """``skip:5`` -> 5; any other condition (``none``, windows, sets, sublayers) -> None."""
    head, _, layer = str(condition).partition(":")
    return int(layer) if head == "skip" and layer.isdigit() else None


def criticality(sweep_rows: Iterable[dict], metric: str = "margin_accuracy") -> dict[str, dict[int, float]]:
    """``{probe: {layer: drop}}``: the metric with nothing skipped minus the metric with that single
    layer skipped, for every probe of the sweep rows that has the metric (``accuracy`` is read as
    ``margin_accuracy``). Higher = skipping the layer costs more.

    >>> rows = [{"probe": "copy", "condition": c, "metric": "exact_match", "value": v}
    ...         for c, v in (("none", 1.0), ("skip:0", 0.25), ("skip:1", 1.0), ("skip:0-1", 0.0))]
    >>> criticality(rows, "exact_match")
    {'copy': {0: 0.75, 1: 0.0}}
    """
    metric = canonical_metric(metric)
    base: dict[str, float] = {}
    skipped: dict[str, dict[int, float]] = {}
    for r in sweep_rows:
        if canonical_metric(r["metric"]) != metric:
            continue
        layer = _skipped_layer(r["condition"])
        if r["condition"] == "none":
            base[r["probe"]] = float(r["value"])
        elif layer is not None:
            skipped.setdefault(r["probe"], {})[layer] = float(r["value"])
    return {p: {i: base[p] - v for i, v in sorted(layers.items())} for p, layers in skipped.items() if p in base}


def with_mean(drops: Mapping[str, Mapping[int, float]]) -> dict[str, dict[int, float]]:
    """``drops`` plus :data:`MEAN`: the mean drop over the probes, at the layers every probe has
    (a single probe is its own mean)."""
    out = {p: dict(d) for p, d in drops.items()}
    if not out:
        return out
    layers = sorted(set.intersection(*(set(d) for d in out.values())))
    out[MEAN] = {i: sum(d[i] for d in drops.values()) / len(drops) for i in layers}
    return out


# ---------------------------------------------------------------- rank correlations
def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks along the last axis, ties sharing their average rank (any leading batch axes).

    >>> average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist()
    [3.5, 1.0, 3.5, 2.0]
    """
    x = np.asarray(x, dtype=np.float64)
    below = (x[..., None, :] < x[..., :, None]).sum(-1)
    equal = (x[..., None, :] == x[..., :, None]).sum(-1)
    return below + (equal + 1) / 2


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of ``x`` and ``y`` (``[..., n]``): the Pearson correlation of
    their average ranks; NaN where either row is constant.

    >>> float(spearman_rows(np.array([1, 2, 2, 3]), np.array([1, 3, 2, 4]))) == math.sqrt(0.9)
    True
    """
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True)
    den = np.sqrt((rx * rx).sum(-1) * (ry * ry).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(-1) / den
    return np.where(den > 1e-12, np.clip(rho, -1.0, 1.0), np.nan)


def rank_correlations(properties: Sequence[Mapping], drops: Mapping[str, Mapping[int, float]], *,
                      n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """Spearman's rho of every property (the numeric columns of ``properties`` but ``layer``, in
    :data:`PROPERTIES` order) with each probe's drop and with the mean drop (:func:`with_mean`),
    over the layers both have: rows ``property, probe, rho, lo, hi, n``. ``lo``/``hi``: the 2.5th and
    97.5th percentiles of rho over ``n_boot`` resamples of the layers with replacement (resamples
    where a side is constant are left out; NaN when none is left). One resampling per call, shared
    by every pair, drawn from ``seed``."""
    if n_boot < 1:
        raise PrunescopeError(f"n_boot must be a positive integer, got {n_boot}")
    by_layer = {int(r["layer"]): r for r in properties}
    names = [k for k in dict.fromkeys([*PROPERTIES, *(k for r in properties for k in r)])
             if k != "layer" and all(_is_number(r.get(k)) for r in properties)]
    rng = np.random.default_rng(seed)
    draws: dict[int, np.ndarray] = {}
    rows = []
    for probe, d in with_mean(drops).items():
        layers = sorted(set(d) & set(by_layer))
        n = len(layers)
        if n < 2:
            continue
        idx = draws.setdefault(n, rng.integers(0, n, size=(n_boot, n)))
        y = np.array([d[i] for i in layers], dtype=np.float64)
        for name in names:
            x = np.array([float(by_layer[i][name]) for i in layers])
            rho = float(spearman_rows(x, y))
            boot = spearman_rows(x[idx], y[idx])
            boot = boot[np.isfinite(boot)]
            lo, hi = (np.percentile(boot, [2.5, 97.5]).tolist() if boot.size else [math.nan, math.nan])
            rows.append({"property": name, "probe": probe, "rho": rho, "lo": lo, "hi": hi, "n": n})
    return rows


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)


# ---------------------------------------------------------------- which capability lives where
def capability_map(drops: Mapping[str, Mapping[int, float]], top: int = 3, threshold: float = 0.2) -> list[dict]:
    """Which capability lives where: one row per (probe, layer) that is among the probe's ``top``
    largest drops (above 0: a skip that costs nothing locates nothing) or whose skip breaks the probe
    (drop >= ``threshold``). Rows: ``probe, layer, drop, rank`` (1 = the probe's largest drop; ties
    keep layer order), ``top``, ``breaks``, and ``breaks_probes`` (every probe this layer breaks,
    comma-separated), largest drops first.

    >>> rows = capability_map({"a": {0: 0.5, 1: 0.0, 2: 0.3}, "b": {0: 0.25, 1: 0.1, 2: 0.0}}, top=1)
    >>> [(r["probe"], r["layer"], r["rank"], r["breaks"], r["breaks_probes"]) for r in rows]
    [('a', 0, 1, True, 'a,b'), ('a', 2, 2, True, 'a'), ('b', 0, 1, True, 'a,b')]
    """
    if top < 0:
        raise PrunescopeError(f"top must be 0 or more, got {top}")
    broken: dict[int, list[str]] = {}
    for probe, d in drops.items():
        for layer, v in d.items():
            if v >= threshold:
                broken.setdefault(layer, []).append(probe)
    rows = []
    for probe, d in drops.items():
        ranked = sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))
        for rank, (layer, v) in enumerate(ranked, start=1):
            is_top = rank <= top and v > 0   # a skip that costs nothing locates nothing
            if is_top or v >= threshold:
                rows.append({"probe": probe, "layer": layer, "drop": v, "rank": rank, "top": is_top,
                             "breaks": v >= threshold, "breaks_probes": ",".join(broken.get(layer, []))})
    return rows


# ---------------------------------------------------------------- the command
@dataclass
class CriticalityOptions(Options):
    """Settings of ``prunescope criticality`` (:func:`criticality_study`).

    >>> CriticalityOptions(sweep="runs/s/sweep.csv", bootstrap=500).check().metric
    'margin_accuracy'
    """

    sweep: str | None = option(None, "a prunescope sweep table (runs/X/sweep.csv) with single-layer skips: each "
                                     "layer's drop is its criticality (required)")
    metric: str = option("margin_accuracy", "metric shown first in the printed table, before margin_accuracy and "
                                            "exact_match", choices=METRICS)
    calibration: str | None = option(None, SHARED_MEANINGS["calibration"] + " (default: solved built-in probe "
                                                                            "items)")
    texts: int = option(64, "calibration texts, drawn by --seed (of a --calibration file with more, or generated)",
                        minimum=1)
    seed: int = option(0, SHARED_MEANINGS["seed"], minimum=0)
    bootstrap: int = option(2000, "bootstrap resamples of the layers behind each correlation's interval (2.5th "
                                  "to 97.5th percentile)", minimum=1)
    top: int = option(3, "layers listed per probe in capabilities.csv, largest skip drop first", minimum=1)
    threshold: float = option(0.2, "a layer breaks a probe when skipping it drops the metric by at least this",
                              minimum=0.0)

    def validate(self) -> None:
        if not self.sweep:
            raise PrunescopeError("criticality needs a sweep table: --sweep runs/X/sweep.csv (from prunescope sweep)")
        self.metric = canonical_metric(self.metric)


def sweep_drops(rows: Sequence[dict], metric: str, path: str | Path = "the sweep table") -> dict[str, dict]:
    """``{metric: {probe: {layer: drop}}}`` for ``metric`` and :data:`BOTH_SCORES` where the rows
    have them, ``metric`` first; a PrunescopeError when ``metric`` has no single-layer drops."""
    out = {}
    for m in dict.fromkeys([canonical_metric(metric), *BOTH_SCORES]):
        drops = criticality(rows, m)
        if drops:
            out[m] = drops
    if canonical_metric(metric) not in out:
        held = sorted({canonical_metric(r["metric"]) for r in rows})
        raise PrunescopeError(f"{path} has no {metric} rows for conditions none and skip:<layer>; it holds "
                              f"{', '.join(held)}")
    return out


def criticality_study(options: CriticalityOptions | None = None, *, model: str | None = None,
                      placement: Placement | None = None, output: Output | None = None, loaded=None) -> dict:
    """``prunescope criticality``: the layers' properties, their rank correlations with each probe's
    skip drop, and the capability map. Returns ``{"properties", "correlations", "capabilities"}``
    (lists of rows; correlations and capabilities carry ``model`` and ``metric``). Writes
    ``OUT/properties.csv``, ``correlations.csv``, ``capabilities.csv`` (+ ``.jsonl``) and
    ``criticality.png``. Everything given is checked before the model loads or anything is written.

    >>> res = criticality_study(CriticalityOptions(sweep="runs/s/sweep.csv"),
    ...                         output=Output(out="runs/crit"))                     # doctest: +SKIP
    """
    from prunescope.probe.models import check_model, load_model, model_name
    from prunescope.prune.commands import calibration_texts

    o = (options or CriticalityOptions()).check()
    placement, output = (placement or Placement()).check(), output or Output()
    if output.out:
        expect_folder(output.out)
    name = loaded.name if loaded is not None else model_name(model, check_model(model))
    drops = sweep_drops(read_sweep(o.sweep, name), o.metric, o.sweep)
    texts = calibration_texts(o.calibration, o.texts, o.seed)
    lm = loaded or load_model(model, **placement.load_kwargs())
    L = lm.blocks.n_layers
    high = max(i for per_metric in drops.values() for d in per_metric.values() for i in d)
    if high >= L:
        raise PrunescopeError(f"{o.sweep} skips layer {high} but {lm.name} has {L} layers")
    props = layer_properties(lm, texts)
    result = _tables(lm.name, props, drops, o)
    if output.out:
        _write(result, drops, Path(output.out), output)
    return result


def _tables(model: str, props: list[dict], drops: Mapping[str, dict], o: CriticalityOptions) -> dict:
    corr, caps = [], []
    for metric, per_probe in drops.items():
        corr += [{"model": model, "metric": metric, **r}
                 for r in rank_correlations(props, per_probe, n_boot=o.bootstrap, seed=o.seed)]
        caps += [{"model": model, "metric": metric, **r} for r in capability_map(per_probe, o.top, o.threshold)]
    return {"properties": props, "correlations": corr, "capabilities": caps}


def _write(result: dict, drops: Mapping[str, dict], out: Path, output: Output) -> None:
    if output.overwrite:
        remove_previous(out, CRITICALITY_OUTPUTS)
    write_table(result["properties"], out / "properties", columns=("model", "layer", *PROPERTIES))
    write_table(result["correlations"], out / "correlations",
                columns=("model", "metric", "property", "probe", "rho", "lo", "hi", "n"))
    write_table(result["capabilities"], out / "capabilities",
                columns=("model", "metric", "probe", "layer", "drop", "rank", "top", "breaks", "breaks_probes"))
    if output.plot:
        plot_criticality(result["properties"], drops, out / "criticality.png")


# ---------------------------------------------------------------- the figure
def _zscore(values: Sequence[float]) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    sd = v.std()
    return (v - v.mean()) / sd if sd > 0 else np.zeros_like(v)


def plot_criticality(properties: Sequence[Mapping], drops: Mapping[str, Mapping[str, Mapping[int, float]]],
                     path: Path) -> Path:
    """``criticality.png``: the properties (z-scored) by layer, the mean skip drop by layer (one line
    per metric), and one heatmap per metric of the drop per (probe, layer)."""
    from prunescope.core.plots import plt, save_figure

    layers = [int(r["layer"]) for r in properties]
    fig, axes = plt.subplots(2 + len(drops), 1, figsize=(9, 2.6 * (2 + len(drops))), sharex=True,
                             layout="constrained")
    for name in PROPERTIES:
        if all(_is_number(r.get(name)) for r in properties):
            axes[0].plot(layers, _zscore([r[name] for r in properties]), marker=".", label=name)
    axes[0].set_ylabel("property (z-score)")
    axes[0].legend(fontsize=7, ncol=3)
    model = properties[0].get("model", "") if properties else ""
    axes[0].set_title(f"{model}: layer properties and skip drops".strip(": "))
    for metric, per_probe in drops.items():
        mean = with_mean(per_probe)[MEAN]
        axes[1].plot(list(mean), list(mean.values()), marker="o", label=f"{metric}")
    axes[1].axhline(0, color="grey", lw=0.5)
    axes[1].set_ylabel("mean drop over probes")
    axes[1].legend(fontsize=7)
    for ax, (metric, per_probe) in zip(axes[2:], drops.items()):
        probes = list(per_probe)
        grid = np.full((len(probes), max(layers) + 1), np.nan)
        for row, p in enumerate(probes):
            for i, v in per_probe[p].items():
                grid[row, i] = v
        lim = max(np.nanmax(np.abs(grid)), 1e-9)
        im = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest",
                       extent=(-0.5, grid.shape[1] - 0.5, len(probes) - 0.5, -0.5))
        ax.set_yticks(range(len(probes)), probes, fontsize=7)
        ax.set_ylabel(f"drop: {metric}", fontsize=8)
        fig.colorbar(im, ax=ax, shrink=0.8)
    axes[-1].set_xlabel("layer")
    return save_figure(fig, path)


def format_correlations(rows: Sequence[Mapping]) -> str:
    """A plain-text table of correlation rows: ``metric property probe rho [lo, hi] n``.

    >>> print(format_correlations([{"metric": "exact_match", "property": "depth", "probe": "copy", "rho": 0.5,
    ...                             "lo": -0.1, "hi": 0.9, "n": 30}]))  # doctest: +NORMALIZE_WHITESPACE
    metric       property  probe  rho     95% interval     n
    exact_match  depth     copy   +0.500  [-0.100, +0.900] 30
    """
    def num(v: float) -> str:
        return "nan" if not math.isfinite(v) else f"{v:+.3f}"

    lines = [["metric", "property", "probe", "rho", "95% interval", "n"]]
    lines += [[r["metric"], r["property"], r["probe"], num(r["rho"]), f"[{num(r['lo'])}, {num(r['hi'])}]",
               str(r["n"])] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in lines)


def format_top_layers(result: Mapping[str, list], metric: str) -> str:
    """One line per probe of a :func:`criticality_study` result: the layers whose skip costs it most
    (``metric``), with the drop.

    >>> print(format_top_layers({"correlations": [{"metric": "exact_match", "probe": p} for p in ("copy", MEAN)],
    ...                          "capabilities": [{"metric": "exact_match", "probe": "copy", "layer": 4,
    ...                                            "drop": 0.5, "top": True}]}, "exact_match"))
    copy: largest exact_match drops at layers 4 (0.50)
    """
    lines = []
    for probe in dict.fromkeys(r["probe"] for r in result["correlations"] if r["metric"] == metric):
        if probe == MEAN:
            continue
        top = [f"{c['layer']} ({c['drop']:.2f})" for c in result["capabilities"]
               if c["metric"] == metric and c["probe"] == probe and c["top"]]
        lines.append(f"{probe}: largest {metric} drops at layers " + (", ".join(top) or "none (no skip lowers it)"))
    return "\n".join(lines)
