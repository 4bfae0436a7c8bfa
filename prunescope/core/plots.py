"""Figures for sweeps: metric vs skipped layer (all probes on one plot) and window heatmaps.

>>> # plot_sweep(rows, "runs/demo")  -> runs/demo/sweep_layers.png, runs/demo/sweep_windows.png
>>> # plot_sweep(rows, "runs/demo", "exact_match")  -> runs/demo/sweep_exact_match.png, ...
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


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


def plot_sweep(rows: list[dict], out: str | Path, metric: str = "margin_accuracy") -> list[Path]:
    """``sweep_layers.png``: metric with each single layer skipped, one line per probe, with the
    unmodified model as a dashed line; ``sweep_windows.png``: start layer x window width heatmap.
    Another metric's figures are ``sweep_<metric>.png`` and ``sweep_windows_<metric>.png``; text
    sets (metric ``loss``) get ``sweep_loss.png`` beside the default metric's. Rows of an older
    table that say ``accuracy`` are read as ``margin_accuracy``."""
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
        single = sorted((int(r["layers"]), r["value"]) for r in rows
                        if r["probe"] == p and r["layers"] and " " not in str(r["layers"]))
        if single:
            ax.plot([x for x, _ in single], [y for _, y in single], "o-", ms=3, color=color, label=p)
        base = [r["value"] for r in rows if r["probe"] == p and r["condition"] == "none"]
        if base:
            ax.axhline(base[0], color=color, ls="--", lw=0.8)
    ax.set_xlabel("skipped layer")
    ax.set_ylabel(label)
    ax.set_title(f"{model}: {metric} with one layer skipped (dashed: no skip)")
    ax.legend(fontsize=8)
    paths.append(save_figure(fig, out / (f"sweep{suffix}.png" if suffix else "sweep_layers.png")))

    windows = [r for r in rows if r["layers"] and " " in str(r["layers"])]
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
