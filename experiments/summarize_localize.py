"""Experiments 1-2 of the paper on each model: which layers are critical for what (single-layer skips
of probes and benchmarks), and do they coincide with the patching maps?

    python experiments/summarize_localize.py runs/smollm2-localize \
        runs/gemma3-localize+runs/gemma3-ablate-generative --out docs/localize

Run folders joined by ``+`` are one model's (e.g. its probes in one run, its generative benchmark
ablation in another) and give one table. Prints one Markdown table per model (drop when layer L is
skipped, per probe score (``probe margin``: margin accuracy, the answer beats the distractors;
``probe exact``: greedy exact match, the answer is generated) and per benchmark, the
failure signatures of the generated GSM8K / HumanEval / MBPP answers with that layer skipped (with
the HumanEval failure taxonomy where the samples were executed), and the
per-layer patching effect) and the Spearman correlation between skip drops and patching effects;
writes ``OUT/<model>.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prunescope.analysis.signatures import ablation_signatures
from prunescope.circuits.patching import spearman
from prunescope.core.results import read_table
from prunescope.probe.scoring import canonical_metric


def _per_layer(rows: list[dict], probe: str, metric: str) -> tuple[float | None, dict[int, float]]:
    base = next((r["value"] for r in rows if r["probe"] == probe and r["metric"] == metric
                 and r["condition"] == "none"), None)
    layers = {int(r["layers"]): r["value"] for r in rows if r["probe"] == probe and r["metric"] == metric
              and str(r["layers"]).isdigit() and r["condition"].startswith("skip:")}
    return base, layers


def _tables(loc: Path, name: str) -> list[dict]:
    f = loc / name
    return read_table(f) if f.is_file() else []


def summarize(runs: list[Path], out: Path) -> str:
    locs = [run / "localize" for run in runs]
    # a sweep table written before the rename says "accuracy" for margin_accuracy
    sweep = [{**r, "metric": canonical_metric(r["metric"])} for loc in locs for r in _tables(loc, "sweep/sweep.csv")]
    abl = [r for loc in locs for r in _tables(loc, "ablate/ablation.csv")]
    # signatures from the generated samples where the run kept them (a table written by an older
    # prunescope lacks the newer signatures), else the run's own table
    srows = [r for loc in locs for r in (ablation_signatures(loc / "ablate")
                                         or _tables(loc, "ablate/signatures.csv"))]
    cols: dict[str, tuple[float | None, dict[int, float]]] = {}
    for p in dict.fromkeys(r["probe"] for r in sweep):
        # both probe scores: the margin over distractors and greedy generation (what papers report)
        for metric, label in (("margin_accuracy", "probe margin"), ("exact_match", "probe exact")):
            base, per = _per_layer(sweep, p, metric)
            if per:
                cols[f"{p} ({label})"] = (base, per)
    for t in dict.fromkeys(r["probe"] for r in abl):
        cols[f"{t} (benchmark)"] = _per_layer(abl, t, "score")
    sweep = sweep or abl
    # failure signatures of the generated answers per skipped layer: they still move where a small
    # model's GSM8K / MBPP score sits at the floor
    sigs = {}
    for task, metric, label in (("gsm8k", "wrong_step_rate", "GSM8K wrong-step rate"),
                                ("mbpp", "unbalanced_rate", "MBPP unbalanced brackets"),
                                ("humaneval", "fail_syntax_rate", "HumanEval syntax/bracket errors"),
                                ("humaneval", "fail_name_rate", "HumanEval undefined names"),
                                ("humaneval", "fail_assertion_rate", "HumanEval wrong answers"),
                                ("mbpp", "fail_syntax_rate", "MBPP syntax/bracket errors"),
                                ("gsm8k", "rep4", "GSM8K Rep-4"),
                                ("gsm8k", "char_rep16", "GSM8K char Rep-16")):
        base, per = _per_layer(srows, task, metric)
        if per:
            sigs[label] = (base, per)
    patch = {}
    for p in ("arithmetic", "brackets"):
        for loc in locs:
            rows = _tables(loc, f"patch-{p}/layers.csv")
            if rows:
                patch[p] = {int(r["layers"]): r["value"] for r in rows if r.get("method", "exact") == "exact"}
    model = sweep[0]["model"]
    n_layers = max(max(v[1]) for v in cols.values()) + 1
    heads = ["layer"] + [f"drop: {c}" for c in cols] + list(sigs) + [f"patching: {p}" for p in patch]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for i in range(n_layers):
        cells = [str(i)]
        for base, per in cols.values():
            cells.append(f"{base - per[i]:.2f}" if base is not None and i in per else "")
        cells += [f"{per[i]:.2f}" if i in per else "" for _, per in sigs.values()]
        cells += [f"{patch[p].get(i, float('nan')):.2f}" for p in patch]
        lines.append("| " + " | ".join(cells) + " |")
    text = [f"### {model}", "", *lines, ""]
    base_line = ", ".join(f"{c} {b:.3f}" for c, (b, _) in cols.items() if b is not None)
    text.append(f"No layer skipped: {base_line}"
                + "".join(f", {c} {b:.3f}" for c, (b, _) in sigs.items() if b is not None) + ".")
    for p, eff in patch.items():
        for c, (base, per) in cols.items():
            if c.startswith(p):
                common = sorted(set(per) & set(eff))
                rho = spearman([base - per[i] for i in common], [eff[i] for i in common])
                text.append(f"Spearman(skip drop of {c}, patching effect of {p}) over {len(common)} layers: {rho:.2f}.")
    _plot(model, cols, patch, out / f"{model}{'' if any((loc / 'sweep').is_dir() for loc in locs) else '-' + runs[0].name}.png")
    return "\n".join(text)


def _plot(model: str, cols, patch, path: Path) -> None:
    from prunescope.core.plots import save_figure, plt

    if patch:
        fig, (a, b) = plt.subplots(2, 1, figsize=(8, 5.2), sharex=True, layout="constrained")
    else:  # no patching maps in these runs (yet): the skips alone
        fig, a = plt.subplots(1, 1, figsize=(8, 3.2), layout="constrained")
        a.set_xlabel("layer")
    for c, (base, per) in cols.items():
        xs = sorted(per)
        a.plot(xs, [base - per[i] for i in xs], "o-", ms=3, label=c)
    a.axhline(0, color="grey", lw=0.6)
    a.set_ylabel("drop when skipped")
    a.set_title(f"{model}: single-layer skips" + (" vs patching" if patch else ""))
    a.legend(fontsize=7, ncol=2)
    if not patch:
        save_figure(fig, path)
        return
    for p, eff in patch.items():
        xs = sorted(eff)
        b.bar([x + (0.2 if p == "brackets" else -0.2) for x in xs], [eff[i] for i in xs], width=0.4, label=p)
    b.set_ylabel("patching effect (exact)")
    b.set_xlabel("layer")
    b.legend(fontsize=7)
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders; A+B: one model's folders, one table")
    ap.add_argument("--out", default="docs/localize")
    args = ap.parse_args()
    for run in args.runs:
        print(summarize([Path(r) for r in run.split("+")], Path(args.out)))
        print()


if __name__ == "__main__":
    main()
