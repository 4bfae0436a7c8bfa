"""Figures for sweeps: metric vs skipped layer (all probes on one plot) and window heatmaps, pair
interaction matrices and cumulative removal curves.

>>> # plot_sweep(rows, "runs/demo")  -> runs/demo/sweep_layers.png, runs/demo/sweep_windows.png
>>> # plot_sweep(rows, "runs/demo", "exact_match")  -> runs/demo/sweep_exact_match.png, ...
>>> # plot_pairs(rows, "runs/demo"), plot_cumulative(rows, "runs/demo")  -> pairs.png, cumulative.png
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402


def save_figure(fig, path: Path) -> Path:
    """Save atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    from prunescope.core.results import make_temp_file

    fd, tmp = make_temp_file(path, suffix=path.suffix)   # the user's umask, not mkstemp's 0600
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path


# core sits below probe, so these copy prunescope.probe.scoring's METRIC_ALIASES and LABELS (a
# test holds them equal): tables written before the rename say "accuracy" for margin_accuracy
_ALIASES = {"accuracy": "margin_accuracy"}
_LABELS = {"margin_accuracy": "margin accuracy (the answer beats the distractors)",
           "exact_match": "greedy exact match (the answer is generated)"}


# the single-layer conditions of a sweep: the whole layer, its attention alone, its MLP alone
_SKIP_KINDS = (("skip", "o-", ""), ("skip_attn", "^:", " (attention only)"), ("skip_mlp", "s-.", " (MLP only)"))


def _single_skips(rows: list[dict], probe: str, kind: str) -> list[tuple[int, float]]:
    """``(layer, value)`` of one probe's conditions ``<kind>:<layer>`` (``skip:5``, ``skip_attn:5``:
    their ``layers`` column says ``5`` / ``attn:5``), by layer."""
    out = []
    for r in rows:
        layer = str(r["layers"]).rpartition(":")[2]
        if r["probe"] == probe and layer.isdigit() and r["condition"] == f"{kind}:{layer}":
            out.append((int(layer), r["value"]))
    return sorted(out)


def plot_sweep(rows: list[dict], out: str | Path, metric: str = "margin_accuracy") -> list[Path]:
    """``sweep_layers.png``: metric with each single layer skipped, one line per probe (dotted: its
    attention alone, dash-dotted: its MLP alone, where the sweep skipped sublayers), with the unmodified
    model as a dashed line; ``sweep_windows.png``: start layer x window width heatmap. Another
    metric's figures are ``sweep_<metric>.png`` and ``sweep_windows_<metric>.png``; text sets (metric
    ``loss``) get ``sweep_loss.png`` beside the default metric's. Rows of an older table that say
    ``accuracy`` are read as ``margin_accuracy``."""
    paths = []
    metric = _ALIASES.get(metric, metric)
    if any(r["metric"] == "loss" for r in rows) and metric == "margin_accuracy":
        paths += plot_sweep(rows, out, "loss")
    out = Path(out)
    suffix = "" if metric == "margin_accuracy" else f"_{metric}"
    label = _LABELS.get(metric, metric)
    rows = [r for r in rows if _ALIASES.get(r["metric"], r["metric"]) == metric]
    if not rows:
        return paths
    probes = sorted({r["probe"] for r in rows})
    model = rows[0]["model"] if rows else ""
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, p in enumerate(probes):
        color = f"C{i}"
        for kind, style, what in _SKIP_KINDS:
            single = _single_skips(rows, p, kind)
            if single:
                ax.plot([x for x, _ in single], [y for _, y in single], style, ms=3, color=color, label=p + what)
        base = [r["value"] for r in rows if r["probe"] == p and r["condition"] == "none"]
        if base:
            ax.axhline(base[0], color=color, ls="--", lw=0.8)
    ax.set_xlabel("skipped layer")
    ax.set_ylabel(label)
    ax.set_title(f"{model}: {metric} with one layer skipped (dashed: no skip)")
    ax.legend(fontsize=8)
    paths.append(save_figure(fig, out / (f"sweep{suffix}.png" if suffix else "sweep_layers.png")))

    # whole-layer windows only: not sublayer sets, cumulative removals or interactions
    rows = [r for r in rows if str(r["condition"]).startswith("skip:") and str(r["layers"]).replace(" ", "").isdigit()]
    windows = [r for r in rows if " " in str(r["layers"])]
    if windows:
        fig, axes = plt.subplots(1, len(probes), figsize=(5.5 * len(probes), 3.5), squeeze=False,
                                 layout="constrained")
        for ax, p in zip(axes[0], probes):
            cells = {}
            for r in rows:
                if r["probe"] == p and r["layers"]:
                    ls = [int(x) for x in str(r["layers"]).split()]
                    if ls == list(range(ls[0], ls[-1] + 1)):
                        cells[(len(ls), ls[0])] = r["value"]
            widths = sorted({w for w, _ in cells})
            starts = sorted({s for _, s in cells})
            grid = [[cells.get((w, s), float("nan")) for s in starts] for w in widths]
            im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis",
                           extent=(starts[0] - 0.5, starts[-1] + 0.5, -0.5, len(widths) - 0.5))
            ax.set_yticks(range(len(widths)), [str(w) for w in widths])
            ax.set_xlabel("first skipped layer")
            ax.set_ylabel("window width")
            ax.set_title(p)
            fig.colorbar(im, ax=ax, label=label)
        paths.append(save_figure(fig, out / f"sweep_windows{suffix}.png"))
    return paths


def _suffixed(stem: str, metric: str) -> str:
    """``pairs.png`` for margin accuracy, ``pairs_exact_match.png`` for another metric."""
    return f"{stem}.png" if metric == "margin_accuracy" else f"{stem}_{metric}.png"


def plot_pairs(rows: list[dict], out: str | Path, metric: str = "margin_accuracy") -> list[Path]:
    """``pairs.png``: per probe, the interaction of every pair of layers skipped together (rows of
    metric ``interaction_<metric>``: the pair's drop minus both single drops) as the lower triangle
    of a layer x layer matrix, its colour centred at 0 (red: the pair costs more than its parts,
    blue: less). Another metric's figure is ``pairs_<metric>.png``; no rows, no figure.

    >>> rows = [{"model": "m", "probe": "p", "condition": "skip:1,3", "layers": "1 3",
    ...          "metric": "interaction_margin_accuracy", "value": -0.2}]
    >>> import tempfile; [p.name for p in plot_pairs(rows, tempfile.mkdtemp())]
    ['pairs.png']
    """
    metric = _ALIASES.get(metric, metric)
    rows = [r for r in rows if r["metric"] == f"interaction_{metric}" and len(str(r["layers"]).split()) == 2]
    if not rows:
        return []
    probes = sorted({r["probe"] for r in rows})
    layers = sorted({int(x) for r in rows for x in str(r["layers"]).split()})
    at = {layer: k for k, layer in enumerate(layers)}
    lim = max(abs(r["value"]) for r in rows) or 1.0
    side = 0.3 * len(layers)
    fig, axes = plt.subplots(1, len(probes), figsize=((side + 3) * len(probes), side + 2.5), squeeze=False,
                             layout="constrained")
    for ax, p in zip(axes[0], probes):
        grid = [[float("nan")] * len(layers) for _ in layers]
        for r in rows:
            if r["probe"] == p:
                i, j = sorted(int(x) for x in str(r["layers"]).split())
                grid[at[j]][at[i]] = r["value"]      # lower triangle: row j > column i
        im = ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim, origin="upper")
        ax.set_xticks(range(len(layers)), [str(x) for x in layers], fontsize=7, rotation=90)
        ax.set_yticks(range(len(layers)), [str(x) for x in layers], fontsize=7)
        ax.set_xlabel("layer i")
        ax.set_ylabel("layer j")
        ax.set_title(p)
        fig.colorbar(im, ax=ax, label=f"interaction of {metric}")
    fig.suptitle(f"{rows[0]['model']}: drop(i, j) - drop(i) - drop(j) of {metric} (0: the damage adds up)")
    return [save_figure(fig, Path(out) / _suffixed("pairs", metric))]


def plot_cumulative(rows: list[dict], out: str | Path, metric: str = "margin_accuracy") -> list[Path]:
    """``cumulative.png``: per probe, the metric as layers are removed one by one, one line per order
    (rows ``cumulative:<k>`` with an ``order``); each point is labelled with the layer it removed.
    Another metric's figure is ``cumulative_<metric>.png``; no rows, no figure.

    >>> rows = [{"model": "m", "probe": "p", "condition": f"cumulative:{k}", "layers": ls, "metric":
    ...          "margin_accuracy", "value": v, "order": "bi"} for k, ls, v in ((0, "", 0.9), (1, "3", 0.7))]
    >>> import tempfile; [p.name for p in plot_cumulative(rows, tempfile.mkdtemp())]
    ['cumulative.png']
    """
    metric = _ALIASES.get(metric, metric)
    rows = [r for r in rows if r.get("order") and str(r["condition"]).startswith("cumulative:")
            and _ALIASES.get(r["metric"], r["metric"]) == metric]
    if not rows:
        return []
    probes = sorted({r["probe"] for r in rows})
    orders = list(dict.fromkeys(r["order"] for r in rows))
    fig, axes = plt.subplots(1, len(probes), figsize=(5.5 * len(probes), 3.8), squeeze=False, layout="constrained")
    for ax, p in zip(axes[0], probes):
        for i, order in enumerate(orders):
            pts = sorted((int(r["condition"].split(":")[1]), r["value"], str(r["layers"]).split())
                         for r in rows if r["probe"] == p and r["order"] == order)
            ax.plot([k for k, _, _ in pts], [v for _, v, _ in pts], "o-", ms=3, color=f"C{i}", label=order)
            for k, v, removed in pts[1:]:
                ax.annotate(removed[-1], (k, v), fontsize=6, color=f"C{i}", xytext=(2, 2), textcoords="offset points")
        ax.set_xlabel("layers removed")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.set_title(p)
        ax.legend(fontsize=7)
    fig.suptitle(f"{rows[0]['model']}: {metric} as layers are removed one by one (label: the layer removed)")
    return [save_figure(fig, Path(out) / _suffixed("cumulative", metric))]
