"""Patching figures: layer x position heatmap, layer x head heatmap, attention vs MLP per layer."""

from __future__ import annotations

from pathlib import Path

from prunescope.core.plots import save_figure, plt


def plot_patching(cells: list[dict], out: str | Path, title: str, prefix: str = "patch") -> list[Path]:
    """Write ``<prefix>_resid.png``, ``<prefix>_heads.png`` and ``<prefix>_attn_mlp.png`` (when present)."""
    out = Path(out)
    paths = []
    resid = [c for c in cells if c["kind"] == "resid_post"]
    if resid:
        layers = sorted({c["layer"] for c in resid})
        positions = sorted({c["position"] for c in resid})          # -k .. -1
        grid = [[next(c["value"] for c in resid if c["layer"] == layer and c["position"] == p) for p in positions]
                for layer in layers]
        fig, ax = plt.subplots(figsize=(1 + 0.45 * len(positions), 1 + 0.2 * len(layers)), layout="constrained")
        lim = max(1.0, max(abs(v) for row in grid for v in row))
        im = ax.imshow(grid, aspect="auto", origin="lower", cmap="RdBu", vmin=-lim, vmax=lim)
        ax.set_xticks(range(len(positions)), [str(p) for p in positions])
        ax.set_yticks(range(0, len(layers), max(1, len(layers) // 15)), [str(layers[i]) for i in
                      range(0, len(layers), max(1, len(layers) // 15))])
        ax.set_xlabel("position (from the scored token)")
        ax.set_ylabel("layer (residual after it)")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, label="normalized logit diff")
        paths.append(save_figure(fig, out / f"{prefix}_resid.png"))
    heads = [c for c in cells if c["kind"] == "head"]
    if heads:
        layers = sorted({c["layer"] for c in heads})
        hs = sorted({c["head"] for c in heads})
        grid = [[next((c["value"] for c in heads if c["layer"] == layer and c["head"] == h), float("nan")) for h in hs]
                for layer in layers]
        fig, ax = plt.subplots(figsize=(1.5 + 0.45 * len(hs), 1 + 0.2 * len(layers)), layout="constrained")
        lim = max(1e-6, max(abs(v) for row in grid for v in row if v == v))
        im = ax.imshow(grid, aspect="auto", origin="lower", cmap="RdBu", vmin=-lim, vmax=lim)
        ax.set_xticks(range(len(hs)), [str(h) for h in hs])
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(title + ": heads (all positions)", fontsize=9)
        fig.colorbar(im, ax=ax, label="normalized logit diff")
        paths.append(save_figure(fig, out / f"{prefix}_heads.png"))
    sub = [c for c in cells if c["kind"] in ("attn_out", "mlp_out") and c["position"] == "all"]
    if sub:
        fig, ax = plt.subplots(figsize=(8, 3.5), layout="constrained")
        for kind, color in (("attn_out", "C0"), ("mlp_out", "C3")):
            pts = sorted((c["layer"], c["value"]) for c in sub if c["kind"] == kind)
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], "o-", ms=3, color=color,
                        label=kind.replace("_out", ""))
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel("layer")
        ax.set_ylabel("normalized logit diff")
        ax.set_title(title + ": attention vs MLP (all positions)", fontsize=9)
        ax.legend()
        paths.append(save_figure(fig, out / f"{prefix}_attn_mlp.png"))
    return paths
