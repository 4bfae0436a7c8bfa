"""The paper's claims on one model, each decided from the result tables in that model's folder.

    python experiments/claims.py docs/results/qwen
    python experiments/claims.py docs/results/qwen --readme README.md --results docs/results.md

Reads the CSVs under MODEL_DIR (``localize/``, ``retention/``, ``recover/``, ``protect/``) and writes
``claims.csv`` (and ``claims.jsonl``) and ``claims.md`` into it (or ``--out``): one row per claim
with ``claim`` (the paper's words, short), ``claim_short`` (the claim in a few words), ``experiment``,
``verdict``, ``evidence`` (the numbers with their metric, n and interval), ``decisive`` (the one to
three of them that decide the verdict), ``source`` (the table and the rows read) and ``rule`` (how
the verdict follows from them). ``--results`` replaces the block between ``<!-- claims:NAME -->``
and ``<!-- /claims:NAME -->`` (NAME: the folder's name) of that page by ``claims.md``; ``--readme``
replaces it by the compact table (claim, verdict, deciding numbers) and a link to the full one (the
``--results`` page's section that holds it, else ``claims.md``), so the pages show the very table
the CSVs give.

Verdicts: ``reproduced`` only where every deciding 95% interval excludes 0 in the claim's direction
(a stored paired bootstrap interval where the table has one; else, for a contrast of two
proportions, the Newcombe-Wilson interval of their difference from value and n, which treats them
as independent and is wider than a paired one); ``partly`` where part of the claim holds (raw
but not chance-corrected retention, one probe metric but not the other, some tasks of several);
``not reproduced`` where it does not hold; ``not tested`` where the table it needs is missing (the
row names it and the command that makes it).

>>> d, lo, hi = newcombe(0.69, 200, 0.605, 200)
>>> round(d, 3), lo < 0 < hi
(0.085, True)
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path

from prunescope.core.results import atomic_write_text, read_table, write_table

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("model", "claim_id", "claim", "claim_short", "experiment", "verdict", "evidence", "decisive",
           "source", "rule")
MD_COLUMNS = ("claim", "experiment", "verdict", "evidence", "source", "rule")
# the compact table (a front page): each header with the column it shows
COMPACT_COLUMNS = (("claim", "claim_short"), ("verdict", "verdict"), ("deciding numbers", "decisive"))
# a results table names a model by its converted folder; the pages name it as its makers do
MODEL_NAMES = {"qwen2.5-coder-1.5b-instruct-q4_k_m": "Qwen2.5-Coder-1.5B-Instruct",
               "gemma-3-270m": "Gemma-3-270m"}
# the pipeline config that makes each folder's tables (experiments/<model>-<config>.yaml)
CONFIGS = {"localize": "localize", "retention": "retention", "recover": "recovery", "protect": "protect"}
STRATEGIES = {"bi": "BI", "reverse": "reverse", "angular": "angular", "iterative": "iterative (probe)",
              "iterative-generated": "paper's selection"}
RAW, CORRECTED = "retention", "chance_corrected_retention"
Z95 = 1.959964
COPY_BROKEN = 0.05   # a skip that costs the copy probe this much breaks everything, not one skill


# --- intervals and numbers ----------------------------------------------------------------------

def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``p`` observed on ``n`` items.

    >>> [round(x, 3) for x in wilson(0.5, 100)]
    [0.404, 0.596]
    >>> [round(x, 3) for x in wilson(1.0, 200)]
    [0.981, 1.0]
    """
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(p1: float, n1: int, p2: float, n2: int) -> tuple[float, float, float]:
    """``(p1 - p2, low, high)``: the difference of two proportions and its 95% interval by
    Newcombe's hybrid score method (method 10), from the two Wilson intervals. It treats the two
    proportions as independent: for two scores of the same items it is wider than a paired interval.

    >>> [round(x, 3) for x in newcombe(0.985, 200, 0.01, 200)]
    [0.975, 0.937, 0.987]
    """
    l1, u1 = wilson(p1, n1)
    l2, u2 = wilson(p2, n2)
    d = p1 - p2
    return d, d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


def num(x: float) -> str:
    """A value as the tables show it: three decimals.

    >>> num(0.98499), num(-0.0433)
    ('0.985', '-0.043')
    """
    return f"{x:.3f}"


def diff_ci(d: float, lo: float, hi: float) -> str:
    """A difference with its interval.

    >>> diff_ci(0.09, 0.063, 0.115)
    '+0.090 [0.063, 0.115]'
    """
    return f"{d:+.3f} [{lo:.3f}, {hi:.3f}]"


def val_ci(v: float, lo: float, hi: float) -> str:
    """A value with its interval.

    >>> val_ci(0.748, 0.7155, 0.7813)
    '0.748 [0.716, 0.781]'
    """
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def span(values: list[float]) -> str:
    """The range of some values, or the one value.

    >>> span([0.5, 0.25, 0.75]), span([0.1])
    ('0.250-0.750', '0.100')
    """
    lo, hi = min(values), max(values)
    return num(lo) if f"{lo:.3f}" == f"{hi:.3f}" else f"{num(lo)}-{num(hi)}"


def shown(parts: list[bool | None]) -> str:
    """The verdict of a claim from its parts: each ``True`` (its interval excludes 0 the claim's
    way), ``False`` (it does not), or ``None`` (no interval or no table to tell).

    >>> shown([True, True]), shown([True, None]), shown([False, None]), shown([None])
    ('reproduced', 'partly', 'not reproduced', 'not tested')
    """
    if parts and all(p is True for p in parts):
        return "reproduced"
    if any(p is True for p in parts):
        return "partly"
    return "not reproduced" if any(p is False for p in parts) else "not tested"


def holds(parts: list[bool | None]) -> bool:
    """Whether every part of a measure holds (an empty one tells nothing)."""
    return bool(parts) and all(p is True for p in parts)


def deciding(measures: list[tuple[list[bool | None], str]], most: int = 2) -> str:
    """The short figures that decide a verdict of several measures (``(parts, short text)`` each):
    the first measure that holds and then those that do not (a "partly" or "not" comes from them),
    ``most`` in all, after how many of the measures hold.

    >>> deciding([([True], "a +0.5 [0.4, 0.6]"), ([True, False], "b"), ([None], "c")])
    '1 of 3 hold: a +0.5 [0.4, 0.6]; b'
    >>> deciding([([True], "a"), ([True], "b")])
    '2 of 2 hold: a'
    """
    good = [text for parts, text in measures if holds(parts)]
    bad = [text for parts, text in measures if not holds(parts)]
    picked = good[:1] + bad[:most - 1] if good else bad[:most]
    return f"{len(good)} of {len(measures)} hold: " + "; ".join(picked)


# --- reading a model folder ------------------------------------------------------------------------

class Folder:
    """The result tables of one model folder, read on first use; a missing table is ``None``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.name = self.root.resolve().name
        self._tables: dict[str, list[dict] | None] = {}

    def table(self, rel: str) -> list[dict] | None:
        if rel not in self._tables:
            path = self.root / rel
            self._tables[rel] = read_table(path) if path.is_file() else None
        return self._tables[rel]

    def probes(self, rel: str) -> list[dict] | None:
        """A probe table with the current metric names (an older one says ``accuracy`` for
        ``margin_accuracy``)."""
        from prunescope.probe.scoring import canonical_metric

        rows = self.table(rel)
        return None if rows is None else [{**r, "metric": canonical_metric(r["metric"])} for r in rows]

    def path(self, rel: str) -> str:
        """``rel``'s path as a reader finds it: from the repository root when it lies inside it."""
        p = (self.root / rel).resolve()
        return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(self.root / rel)

    def command(self, rel: str) -> str:
        """The commands that make the table ``rel`` (its folder's pipeline config)."""
        part = rel.split("/")[0]
        run = f"runs/{self.name}-{CONFIGS.get(part, part)}"
        cmd = f"prunescope run experiments/{self.name}-{CONFIGS.get(part, part)}.yaml"
        out = self.path(part)
        if part == "localize":
            return f"`{cmd} --only localize`, its localize tables copied to `{out}`"
        if part == "retention":
            return (f"`{cmd}`, `prunescope report {run}`, "
                    f"`python experiments/summarize_retention.py {run} --out {out}`")
        if part == "recover":
            return f"`{cmd}`, `python experiments/summarize_recovery.py {run} --out {out} --tables`"
        return f"`{cmd}`, its seeds.csv, seeds.md and models.csv copied to `{out}`"

    def missing(self, claim: dict, rel: str) -> dict:
        """The claim's row when the table ``rel`` is missing: not tested, and how to make it."""
        none = f"no {self.path(rel)}"
        return {**claim, "verdict": "not tested", "evidence": none, "decisive": none,
                "source": f"`{self.path(rel)}` (missing)", "rule": f"make it with {self.command(rel)}"}

    def model(self) -> str:
        """The model the tables name (the folder's name where none does)."""
        for rel in ("retention/retention.csv", "localize/sweep.csv", "recover/probes.csv", "protect/seeds.csv"):
            name = next((r.get("model") for r in self.table(rel) or [] if r.get("model")), None)
            if name:
                return name
        return self.name


def pick(rows: list[dict], **match) -> dict | None:
    """The first row whose columns equal ``match`` (compared as text).

    >>> pick([{"probe": "gap", "n": 11}], probe="gap", n=11)["n"]
    11
    """
    return next((r for r in rows if all(str(r.get(k)) == str(v) for k, v in match.items())), None)


def ci_of(row: dict) -> tuple[float, float] | None:
    """A row's stored ``(ci_low, ci_high)``, or ``None`` where it has none."""
    try:
        lo, hi = float(row["ci_low"]), float(row["ci_high"])
    except (KeyError, TypeError, ValueError):
        return None
    return None if math.isnan(lo) or math.isnan(hi) else (lo, hi)


def strategy(condition: str, ratio: str) -> str | None:
    """The strategy label of a pruned stage at ``ratio``, ``None`` for other stages.

    >>> strategy("pruned-iterative-generated-12.5", "12.5"), strategy("pruned-bi-25", "12.5")
    ("paper's selection", None)
    """
    m = re.fullmatch(rf"pruned-(.+)-{re.escape(ratio)}", condition)
    return STRATEGIES.get(m.group(1), m.group(1)) if m else None


def chance_zero(category: str) -> bool:
    """Whether every registered task of ``category`` has chance 0 (its chance-corrected retention
    then equals the raw one, interval included)."""
    from prunescope.analysis.evaluate import TASKS

    return all(t.chance == 0 for t in TASKS.values() if t.category == category)


# --- (a), (b): the retention gap -------------------------------------------------------------------

def gap_rows(rows: list[dict], ratio: str, metric: str, probe: str = "gap") -> dict[str, dict]:
    """``{strategy: row}`` of the ``probe`` (gap or a category) rows of every stage pruned at ``ratio``."""
    out = {}
    for r in rows:
        label = strategy(str(r.get("condition", "")), ratio)
        if label and r.get("probe") == probe and r.get("metric") == metric:
            out[label] = r
    return out


def gap_part(rows: dict[str, dict], kind: str, about: str = "") -> tuple[list[bool | None], str, str]:
    """Per strategy whether its gap's interval lies above 0, and the evidence for one kind (raw or
    chance-corrected): the gap's range and the weakest interval, or that there is none; then the
    same in short (``about``, e.g. the strategies and n, after the range)."""
    cis = {s: ci_of(r) for s, r in rows.items()}
    text = f"{kind} gap {span([r['value'] for r in rows.values()])}"
    if not all(cis.values()):
        return [None] * len(rows), text + " (point values, no interval)", f"{text}{about}, no interval"
    weakest = min(cis, key=lambda s: cis[s][0])
    above = [cis[s][0] > 0 for s in rows]
    said = "every" if all(above) else f"{sum(above)} of {len(above)}"
    lowest = val_ci(rows[weakest]["value"], *cis[weakest])
    return (above, f"{text}, {said} interval above 0 (lowest: {weakest} {lowest})",
            f"{text}{about}, {said} interval > 0 (lowest {lowest})")


def corrected_gaps(f: Folder, rows: list[dict], ratio: str) -> tuple[dict, dict, str]:
    """The chance-corrected gap and classification rows at ``ratio``: from retention.csv where it
    has them (with intervals), else point values computed from eval.csv; and their source."""
    gaps = gap_rows(rows, ratio, CORRECTED)
    if gaps:
        return gaps, gap_rows(rows, ratio, CORRECTED, "classification"), ""
    evals = f.table("retention/eval.csv")
    if evals is None:
        return {}, {}, ""
    from prunescope.analysis.retention import retention_table

    table = retention_table(evals)
    return (gap_rows(table, ratio, CORRECTED), gap_rows(table, ratio, CORRECTED, "classification"),
            f"; chance-corrected: `{f.path('retention/eval.csv')}`, each task's primary metric, chance from "
            "`analysis/tasks/registry.yaml`")


def gap_claim(f: Folder, claim: dict, ratio: str) -> dict:
    """The classification-minus-generative retention gap of every strategy at ``ratio`` % removed."""
    rel = "retention/retention.csv"
    rows = f.table(rel)
    if rows is None:
        return f.missing(claim, rel)
    raw = gap_rows(rows, ratio, RAW)
    if not raw:
        none = f"no stage pruned at {ratio}% in {f.path(rel)}"
        return {**f.missing(claim, rel), "evidence": none, "decisive": none}
    cls, gen = gap_rows(rows, ratio, RAW, "classification"), gap_rows(rows, ratio, RAW, "generative")
    items = [r["n"] for r in rows if strategy(str(r.get("condition")), ratio) and r.get("level") == "task"]
    n = next(iter(raw.values()))["n"]
    raw_ok, raw_text, raw_short = gap_part(raw, "raw", f" ({len(raw)} strategies, n = {n} tasks)")
    cor, cor_cls, cor_source = corrected_gaps(f, rows, ratio)
    cor_ok, cor_text, cor_short = gap_part(cor, "chance-corrected") if cor else (
        [None], "chance-corrected: no table", "chance-corrected: no table")
    evidence = (f"{len(raw)} strategies, n = {n} tasks" + (f" of {min(items)}-{max(items)} items" if items else "")
                + f"; raw classification {span([r['value'] for r in cls.values()])}, generative "
                f"{span([r['value'] for r in gen.values()])}; {raw_text}; {cor_text}"
                + (f", classification {span([r['value'] for r in cor_cls.values()])}" if cor_cls else ""))
    rule = ("reproduced: every strategy's gap interval (95% paired bootstrap over items) above 0, raw "
            "(score / base) and chance-corrected ((score - chance) / (base - chance)); partly: raw only, "
            "or some strategies")
    if any(p is None for p in cor_ok):
        rule += f"; chance-corrected intervals: {f.command(rel)}"
    source = f"`{f.path(rel)}`: `probe=gap, level=gap, condition=pruned-*-{ratio}, metric=retention`" + (
        cor_source or ", `metric=chance_corrected_retention`")
    return {**claim, "verdict": shown(raw_ok + cor_ok), "evidence": evidence, "decisive": f"{raw_short}; {cor_short}",
            "source": source, "rule": rule}


# --- (c), (d): single-layer skips ------------------------------------------------------------------

def per_layer(rows: list[dict], probe: str, metric: str) -> tuple[tuple[float, int] | None, dict[int, tuple]]:
    """``((base value, n), {layer: (value, n)})`` of one probe and metric over single-layer skips
    (``condition`` ``none`` and ``skip:L``)."""
    base, layers = None, {}
    for r in rows:
        if r.get("probe") != probe or r.get("metric") != metric:
            continue
        cond = str(r.get("condition"))
        if cond == "none":
            base = (r["value"], r["n"])
        elif cond.startswith("skip:") and cond[5:].isdigit():
            layers[int(cond[5:])] = (r["value"], r["n"])
    return base, layers


def thirds(n_layers: int) -> tuple[range, range]:
    """``(middle, last)`` thirds of a model's layers.

    >>> thirds(28)
    (range(9, 19), range(19, 28))
    """
    k = n_layers // 3
    return range(k, n_layers - k), range(n_layers - k, n_layers)


def worst_drop(base: tuple[float, int], layers: dict[int, tuple], among) -> tuple[int, tuple]:
    """``(layer, (drop, low, high))`` of the layer among ``among`` whose skip lowers the score most."""
    layer = max((i for i in among if i in layers), key=lambda i: base[0] - layers[i][0])
    return layer, newcombe(base[0], base[1], *layers[layer])


def deep_measure(label: str, base, layers: dict, n_layers: int) -> tuple[list[bool], str, str]:
    """Whether the worst last-third skip breaks a score (interval above 0) and the worst middle one
    does not (interval reaching 0), with the evidence and its short form (the failing part where
    one fails)."""
    middle, last = thirds(n_layers)
    deep, d = worst_drop(base, layers, last)
    mid, m = worst_drop(base, layers, middle)
    text = (f"{label}, n = {base[1]}: {num(base[0])} -> {num(layers[deep][0])} skipping layer {deep} (drop "
            f"{diff_ci(*d)}); middle layers {middle[0]}-{middle[-1]}: largest drop {diff_ci(*m)} (layer {mid})")
    head = f"{label.split(' (')[0]} (n = {base[1]}): "
    if d[1] <= 0:
        short = f"layer {deep}, the worst of the last third, drops it only {diff_ci(*d)}"
    elif m[1] > 0:
        short = f"middle layer {mid} drops it too, {diff_ci(*m)}"
    else:
        short = f"layer {deep} drops {diff_ci(*d)}, no middle layer does"
    return [d[1] > 0, m[1] <= 0], text, head + short


def deep_claim(f: Folder, claim: dict) -> dict:
    """Skipping one of the last third of the layers breaks the addition probe and GSM8K; skipping a
    middle one does not."""
    sweep, ablation = f.probes("localize/sweep.csv"), f.table("localize/ablation.csv")
    if sweep is None:
        return f.missing(claim, "localize/sweep.csv")
    abl = "localize/ablation.csv"
    measures = [(f"addition probe, {name}", sweep, "arithmetic_multi", metric)
                for name, metric in (("exact match (the paper's generation-scored metric)", "exact_match"),
                                     ("margin accuracy", "margin_accuracy"))]
    measures.append(("GSM8K", ablation, "gsm8k", "score"))
    n_layers = 1 + max(per_layer(sweep, "arithmetic_multi", "margin_accuracy")[1] or
                       per_layer(sweep, "arithmetic_multi", "exact_match")[1] or {0: 0})
    parts, texts, shorts = [], [], []
    for label, rows, probe, metric in measures:
        base, layers = per_layer(rows or [], probe, metric)
        if base is None or not layers:
            parts.append(None)
            texts.append(f"{label}: not in the tables" if rows else f"{label}: no {f.path(abl)} ({f.command(abl)})")
            shorts.append(([None], f"{label.split(' (')[0]}: not measured"))
            continue
        ok, text, short = deep_measure(label, base, layers, n_layers)
        parts += ok
        texts.append(text)
        shorts.append((ok, short))
    middle, last = thirds(n_layers)
    rule = (f"{n_layers} layers: last third {last[0]}-{last[-1]}, middle {middle[0]}-{middle[-1]}; a drop (base "
            "minus skipped) counts where its Newcombe-Wilson interval (value and n; no paired interval stored) "
            "excludes 0; reproduced: on each measure the worst last-third skip breaks it and the worst middle "
            "skip does not; partly: some of these")
    source = (f"`{f.path('localize/sweep.csv')}`: `probe=arithmetic_multi, metric=exact_match` and "
              "`margin_accuracy` (older tables: `accuracy`), `condition=none` or `skip:L`; "
              f"`{f.path('localize/ablation.csv')}`: `probe=gsm8k, metric=score`")
    return {**claim, "verdict": shown(parts), "evidence": "; ".join(texts), "decisive": deciding(shorts),
            "source": source, "rule": rule}


BRACKET_MEASURES = (("HumanEval unbalanced brackets", "humaneval", "unbalanced_rate"),
                    ("HumanEval syntax failures", "humaneval", "fail_syntax_rate"),
                    ("MBPP unbalanced brackets", "mbpp", "unbalanced_rate"),
                    ("MBPP syntax failures", "mbpp", "fail_syntax_rate"))


def broken_everywhere(sweep: list[dict], cost: float = COPY_BROKEN) -> list[int]:
    """The layers whose skip costs the copy probe (margin accuracy) ``cost`` or more: they break
    everything, not brackets in particular.

    >>> broken_everywhere([{"probe": "copy", "metric": "margin_accuracy", "condition": c, "value": v, "n": 200}
    ...                    for c, v in (("none", 1.0), ("skip:0", 0.17), ("skip:1", 0.89), ("skip:2", 0.975))])
    [0, 1]
    """
    base, layers = per_layer(sweep, "copy", "margin_accuracy")
    return [] if base is None else sorted(i for i, v in layers.items() if base[0] - v[0] >= cost)


def bracket_measure(label: str, base, layers: dict, keep: list[int], layer: int | None) -> tuple[bool, int, str, str]:
    """Whether the layer whose skip raises a rate most raises it above base and above the runner-up
    (both intervals above 0), and is ``layer`` (when given); that layer; the evidence; its short
    form (the failing part where one fails)."""
    order = sorted((i for i in keep if i in layers), key=lambda i: -layers[i][0])
    top, nxt = order[0], order[1]
    rise = newcombe(*layers[top], *base)
    apart = newcombe(*layers[top], *layers[nxt])
    text = (f"{label} (n = {base[1]}): {num(base[0])} -> {num(layers[top][0])} at layer {top} "
            f"(rise {diff_ci(*rise)}; next, layer {nxt}: {num(layers[nxt][0])}, apart by {diff_ci(*apart)})")
    if layer not in (None, top):
        short = f"layer {top} tops it, not layer {layer}"
    elif rise[1] <= 0:
        short = f"layer {top} raises it only {diff_ci(*rise)}"
    else:
        short = (f"layer {top} {num(base[0])} -> {num(layers[top][0])}, {diff_ci(*apart)} above layer {nxt}"
                 if apart[1] > 0 else f"layer {top} {diff_ci(*apart)} above layer {nxt}")
    return rise[1] > 0 and apart[1] > 0 and layer in (None, top), top, text, f"{label} (n = {base[1]}): {short}"


def bracket_claim(f: Folder, claim: dict) -> dict:
    """One layer whose skip raises bracket and syntax errors in generated code more than any other."""
    rel = "localize/signatures.csv"
    rows = f.table(rel)
    if rows is None:
        return f.missing(claim, rel)
    left_out = broken_everywhere(f.probes("localize/sweep.csv") or [])
    parts, texts, shorts, layer = [], [], [], None
    for label, task, metric in BRACKET_MEASURES:
        base, layers = per_layer(rows, task, metric)
        if base is None or len(layers) < 2:
            parts.append(None)
            texts.append(f"{label}: not in the table")
            shorts.append(([None], f"{label}: not measured"))
            continue
        ok, top, text, short = bracket_measure(label, base, layers, [i for i in layers if i not in left_out], layer)
        layer = top if layer is None else layer
        parts.append(ok)
        texts.append(text)
        shorts.append(([ok], short))
    said = (f"layers {' '.join(map(str, left_out))} left out (their skip costs the copy probe {COPY_BROKEN} or more: "
            "they break everything); " if left_out else "")
    rule = ("a rise counts where its Newcombe-Wilson interval (value and n; no paired interval stored) excludes 0; "
            f"{said}reproduced: on each measure the same layer tops the others and its rate rises above both base "
            "and the next layer's; partly: on some measures")
    source = (f"`{f.path(rel)}`: `probe=humaneval` or `mbpp`, `metric=unbalanced_rate` or `fail_syntax_rate`, "
              f"`condition=none` or `skip:L`; `{f.path('localize/sweep.csv')}`: `probe=copy` (the control)")
    return {**claim, "verdict": shown(parts), "evidence": "; ".join(texts), "decisive": deciding(shorts),
            "source": source, "rule": rule}


# --- (e), (f): recovery ----------------------------------------------------------------------------

PAPER_PROBE = (0.96, 0.37, 0.74)   # Qwen2.5-7B addition probe: base -> pruned -> SGR-recovered


def arms(f: Folder) -> tuple[str, str] | None:
    """``(pruned stage, SGR arm)`` of a recovery folder: ``pruned-<S>`` and ``recovered-<S>-sgr``."""
    stages = [str(r["condition"]) for r in f.table("recover/probes.csv") or f.table("recover/eval.csv") or []]
    arm = next((s for s in stages if s.startswith("recovered-") and s.endswith("-sgr")), None)
    return None if arm is None else ("pruned-" + arm.removeprefix("recovered-").removesuffix("-sgr"), arm)


def step(rows: list[dict], changes: list[dict], key: dict,
         stages: tuple[str, str, str]) -> tuple[bool | None, str, str]:
    """One score base -> pruned -> recovered and whether pruned -> recovered rises (interval above 0):
    the stored paired change where ``changes`` has it, else Newcombe-Wilson from value and n; the
    evidence and its short form (n, pruned -> recovered and the change)."""
    base, pruned, arm = (pick(rows, condition=s, **key) for s in stages)
    if not (base and pruned and arm):
        return None, "not in the table", "not measured"
    stored = pick(changes, condition=arm["condition"], reference=pruned["condition"], **key)
    if stored and ci_of(stored):
        d, (lo, hi), how = float(stored["value"]), ci_of(stored), "paired bootstrap"
    else:
        (d, lo, hi), how = newcombe(arm["value"], arm["n"], pruned["value"], pruned["n"]), "Newcombe-Wilson"
    text = (f"{num(base['value'])} -> {num(pruned['value'])} -> {num(arm['value'])} (n = {arm['n']}; "
            f"{diff_ci(d, lo, hi)}, {how}")
    lost = base["value"] - pruned["value"]
    if key.get("probe") == "arithmetic_multi" and lost > 0 and stages[1].startswith("pruned-"):
        text += f"; {d / lost:.0%} of the loss won back"
    return lo > 0, text + ")", f"(n = {arm['n']}): {num(pruned['value'])} -> {num(arm['value'])}, {diff_ci(d, lo, hi)}"


def sgr_claim(f: Folder, claim: dict) -> dict:
    """SGR finetuning after pruning brings arithmetic back: the addition probe (exact match, the
    paper's metric; margin accuracy), generated arithmetic and generative retention rise."""
    rel = "recover/probes.csv"
    if f.table(rel) is None or arms(f) is None:
        return f.missing(claim, rel)
    pruned, arm = arms(f)
    stages = ("base", pruned, arm)
    probes, changes = f.probes(rel), f.probes("recover/probe_changes.csv") or []
    parts, texts, shorts = [], [], []
    for label, metric in (("exact match (the paper's generation-scored metric)", "exact_match"),
                          ("margin accuracy", "margin_accuracy")):
        ok, text, short = step(probes, changes, {"probe": "arithmetic_multi", "metric": metric}, stages)
        parts.append(ok)
        texts.append(f"addition probe, {label}: " + (text if ok is not None or "->" in text else
                                                     f"not in {f.path(rel)} ({f.command(rel)})"))
        shorts.append(([ok], f"addition probe, {label.split(' (')[0]}" + (" " if short[0] == "(" else ": ") + short))
    ok, text, short = step(f.table("recover/eval.csv") or [], [], {"probe": "arithmetic", "metric": "exact_match"},
                           stages)
    parts.append(ok)
    texts.append(f"generated arithmetic (exact match): {text}")
    shorts.append(([ok], "generated arithmetic" + (" " if short[0] == "(" else ": ") + short))
    ok, text, short = retention_step(f, pruned, arm)
    parts.append(ok)
    texts.append(text)
    shorts.append(([ok], short))
    paper = (PAPER_PROBE[2] - PAPER_PROBE[1]) / (PAPER_PROBE[0] - PAPER_PROBE[1])
    rule = (f"the paper's probe is generation-scored: our `exact_match` matches it, `margin_accuracy` (the answer "
            f"beats distractors) does not; the paper wins back {paper:.0%} of the loss; each change pruned -> SGR "
            "counts where its interval excludes 0 (paired bootstrap where stored, else Newcombe-Wilson from value "
            "and n); reproduced: all four rise; partly: some")
    source = (f"`{f.path(rel)}`: `probe=arithmetic_multi, condition=base, {pruned}, {arm}`; "
              f"`{f.path('recover/eval.csv')}`: `probe=arithmetic, metric=exact_match`; "
              f"`{f.path('recover/differences.csv')}`: `probe=generative, condition={arm}, reference={pruned}`")
    return {**claim, "verdict": shown(parts), "evidence": "; ".join(texts), "decisive": deciding(shorts, 3),
            "source": source, "rule": rule}


def retention_step(f: Folder, reference: str, arm: str, category: str = "generative",
                   labels: tuple[str, str] | None = None) -> tuple[bool | None, str, str]:
    """``arm``'s retention of a category minus ``reference``'s, paired over items (differences.csv):
    whether it lies above 0, and the evidence, raw and chance-corrected, and in short (raw only).
    ``labels``: the two stages' names in the evidence (else "reference -> arm")."""
    rel = "recover/differences.csv"
    rows = f.table(rel)
    key = {"condition": arm, "reference": reference, "probe": category}
    d = pick(rows or [], metric="retention_minus_reference", **key)
    if d is None or ci_of(d) is None:
        none = f"{category} retention: no row {arm} minus {reference} in {f.path(rel)}"
        return None, none, none
    ret = f.table("recover/retention.csv") or []
    a, b = (pick(ret, condition=s, probe=category, metric=RAW) for s in (arm, reference))
    values = "" if not (a and b) else (f"{labels[0]} {num(b['value'])}, {labels[1]} {num(a['value'])}, " if labels
                                       else f"{num(b['value'])} -> {num(a['value'])}, ")
    cor = pick(rows, metric=f"{CORRECTED}_minus_reference", **key)
    if cor and ci_of(cor):
        said = f"; chance-corrected {diff_ci(cor['value'], *ci_of(cor))}"
    else:
        said = "; chance 0 on every generative task: chance-corrected the same" if (
            category == "generative" and chance_zero(category)) else "; chance-corrected: no interval stored"
    short = f"{category} retention ({d['n']} tasks): {values}{diff_ci(d['value'], *ci_of(d))}"
    return ci_of(d)[0] > 0, f"{short} (paired bootstrap{said})", short


def external_claim(f: Folder, claim: dict) -> dict:
    """SGR recovers more than the dataset's own answers (external): SGR arm minus external arm."""
    rel = "recover/differences.csv"
    found = arms(f)
    if f.table(rel) is None or found is None:
        return f.missing(claim, rel)
    pruned, arm = found
    external = arm.removesuffix("-sgr") + "-external"
    gen_ok, gen, gen_short = retention_step(f, external, arm, labels=("external", "SGR"))
    _, cls, _ = retention_step(f, external, arm, "classification", ("external", "SGR"))
    texts = [f"SGR minus external answers: {gen}", cls]
    probes = f.probes("recover/probes.csv") or []
    a, b = (pick(probes, condition=s, probe="arithmetic_multi", metric="margin_accuracy") for s in (arm, external))
    if a and b:
        texts.append(f"addition probe, margin accuracy (n = {a['n']}): external {num(b['value'])}, SGR "
                     f"{num(a['value'])}, {diff_ci(*newcombe(a['value'], a['n'], b['value'], b['n']))} Newcombe-Wilson")
    verdict = shown([gen_ok])
    rule = ("decided by generative retention, SGR arm minus external arm, paired bootstrap over items: reproduced "
            "where the interval lies above 0, not reproduced where it does not (below 0: the external answers "
            "recover more)")
    source = f"`{f.path(rel)}`: `condition={arm}, reference={external}, metric=retention_minus_reference`"
    return {**claim, "verdict": verdict, "evidence": "; ".join(texts),
            "decisive": f"SGR minus external answers, {gen_short}, paired bootstrap", "source": source, "rule": rule}


# --- (g): circuit-protected pruning ----------------------------------------------------------------

def protected_arm(rows: list[dict], reference: str = "pruned-bi") -> str | None:
    """The protected arm compared with ``reference``: ``pruned-bi-protected`` where present."""
    names = [str(r["condition"]) for r in rows if "protect" in str(r.get("condition")) and r.get("reference") == reference]
    return f"{reference}-protected" if f"{reference}-protected" in names else next(iter(names), None)


def models_evidence(rows: list[dict], arm: str) -> tuple[list[bool | None], str, str]:
    """From models.csv (each arm against BI over its distinct models): whether the protected arm's
    generative retention lies above BI's, raw and chance-corrected, and its classification not
    below; the evidence; the deciding part of it."""
    parts, texts, shorts = [], [], []
    for category in ("generative", "classification"):
        for metric, kind in ((RAW, "raw"), (CORRECTED, "chance-corrected")):
            r = pick(rows, condition=arm, probe=category, metric=f"{metric}_minus_reference", level="models")
            if r is None or ci_of(r) is None:
                parts.append(None)
                shorts.append(([None], f"{category} retention, {kind}: no interval"))
                continue
            lo, hi = ci_of(r)
            parts.append(lo > 0 if category == "generative" else hi >= 0)
            said = f"{diff_ci(r['value'], lo, hi)} ({r['n']} / {r.get('n_reference')} distinct models)"
            texts.append(f"{category} {kind} {said}")
            shorts.append(([parts[-1]], f"{category} retention, {kind}, {said}"))
    return (parts, "protected BI minus BI, over distinct models and items: " + "; ".join(texts),
            "protected BI minus BI, " + deciding(shorts))


def protect_short(rows: list[dict], arm: str) -> str:
    """The compact cell: the protected arm's generative difference to BI (raw, chance-corrected) over
    its distinct models, and the best other arm's, for scale."""
    def get(condition: str, metric: str):
        return pick(rows, condition=condition, probe="generative", metric=f"{metric}_minus_reference",
                    level="models")

    raw, cor = get(arm, RAW), get(arm, CORRECTED)
    if raw is None or cor is None or ci_of(raw) is None or ci_of(cor) is None:
        return ""
    others = [r for r in rows if r.get("level") == "models" and r.get("probe") == "generative"
              and r.get("metric") == f"{RAW}_minus_reference" and r.get("condition") != arm and ci_of(r)]
    best = max(others, key=lambda r: float(r["value"]), default=None)
    tail = (f"; {best['condition'].removeprefix('pruned-')}: {diff_ci(best['value'], *ci_of(best))} "
            f"({best['n']} model)" if best else "")
    return (f"generative retention minus BI: raw {diff_ci(raw['value'], *ci_of(raw))}, chance-corrected "
            f"{diff_ci(cor['value'], *ci_of(cor))}; n = {raw['n']} / {raw.get('n_reference')} distinct "
            f"models{tail}")


def few_models_note(rows: list[dict], arm: str) -> str:
    """What the model counts and the other arms add: an arm built from fewer than 3 distinct models,
    and the other selections against BI (the protected arm's model can be another arm's).

    >>> few_models_note([{"condition": "pruned-x", "probe": "generative", "metric": "retention_minus_reference",
    ...                   "level": "models", "value": 0.1, "ci_low": 0.05, "ci_high": 0.2, "n": 1,
    ...                   "n_reference": 2}], "pruned-bi-protected")
    '; other arms vs BI, generative raw: x +0.100 [0.050, 0.200] (1 / 2 models); fewer than 3 distinct models in bi, x'
    """
    others = [r for r in rows if r.get("level") == "models" and r.get("probe") == "generative"
              and r.get("metric") == f"{RAW}_minus_reference" and r.get("condition") != arm]
    few = sorted({r["condition"].removeprefix("pruned-") for r in rows if r.get("level") == "models"
                  and int(r.get("n") or 0) < 3} | {"bi" for r in rows if r.get("level") == "models"
                                                     and int(r.get("n_reference") or 0) < 3})
    said = [f"{r['condition'].removeprefix('pruned-')} {diff_ci(r['value'], *ci_of(r))} ({r['n']} / "
            f"{r.get('n_reference')} models)" for r in others if ci_of(r)]
    return ((f"; other arms vs BI, generative raw: {'; '.join(said)}" if said else "")
            + (f"; fewer than 3 distinct models in {', '.join(few)}" if few else ""))


def seeds_evidence(rows: list[dict], arm: str) -> tuple[list[bool | None], str]:
    """From seeds.csv alone: each seed's paired interval over items, and how many distinct models
    the seeds built (no interval over models: one part stays untold)."""
    per = [r for r in rows if r.get("condition") == arm and r.get("level") == "difference"
           and r.get("reference") == "pruned-bi" and r.get("probe") == "generative" and r.get("metric") == "retention_minus_reference"]
    mean = {c: pick(rows, condition=arm, probe=c, level="mean", metric="retention_minus_reference")
            for c in ("generative", "classification")}
    models = {s: len({r["layers"] for r in rows if r.get("condition") == s and r.get("level") == "seed"})
              for s in ("pruned-bi", arm)}
    above = [(ci_of(r)[0] > 0, r) for r in per if ci_of(r)]
    parts = [ok for ok, _ in above] + [None]
    text = ("protected BI minus BI, generative retention per seed (paired over items): "
            + ", ".join(diff_ci(r["value"], *ci_of(r)) for r in per if ci_of(r))
            + "".join(f"; {c} mean over {r['n']} seeds {r['value']:+.3f} (sd {float(r['sd']):.3f})"
                      for c, r in mean.items() if r)
            + f"; the seeds build {models['pruned-bi']} distinct BI and {models[arm]} distinct protected models: "
              "no interval over models (no protect/models.csv)")
    said = "no seed has an interval"
    if above:
        low = min((r for _, r in above), key=lambda r: ci_of(r)[0])
        said = ("every seed's interval" if all(parts[:-1]) else f"{sum(parts[:-1])} of {len(above)} seeds' intervals") \
            + f" > 0 ({len(above)} seeds, lowest {diff_ci(low['value'], *ci_of(low))})"
    tasks = f" ({per[0]['n']} tasks)" if per else ""
    return parts, text, (f"generative retention{tasks}, protected BI minus BI: {said}; no interval over distinct "
                         f"models ({models['pruned-bi']} BI, {models[arm]} protected)")


def protect_claim(f: Folder, claim: dict) -> dict:
    """Protecting the layers the patching maps mark keeps more generative score than plain BI."""
    models, seeds = f.table("protect/models.csv"), f.table("protect/seeds.csv")
    if models is None and seeds is None:
        return f.missing(claim, "protect/models.csv")
    rows, rel = (models, "protect/models.csv") if models else (seeds, "protect/seeds.csv")
    arm = protected_arm(rows)
    if arm is None:
        none = f"no protected arm against pruned-bi in {f.path(rel)}"
        return {**f.missing(claim, rel), "evidence": none, "decisive": none}
    parts, text, short = models_evidence(rows, arm) if models else seeds_evidence(rows, arm)
    if models:
        # the claim is "keeps more generative score": classification only has to stay level, so it can
        # turn a holding generative difference into 'partly', never a failing one into 'partly'
        generative, classification = parts[:2], parts[2:]
        parts = generative if not all(p is True for p in generative) else generative + classification
        text += few_models_note(rows, arm)
        short = protect_short(rows, arm) or short
    rule = ("reproduced: the protected arm's generative retention minus BI's above 0 over distinct pruned models "
            "and items, raw and chance-corrected, and its classification not below BI's (protect/models.csv, "
            "`level=models`); partly: some of these, or intervals per seed over items only; not reproduced: "
            "no generative interval above 0")
    if not models:
        rule += f"; models.csv: {f.command('protect/models.csv')}"
    source = f"`{f.path(rel)}`: `condition={arm}, reference=pruned-bi, metric=retention_minus_reference`" + (
        ", `chance_corrected_retention_minus_reference`, `level=models`" if models else ", `level=difference` and `mean`")
    return {**claim, "verdict": shown(parts), "evidence": text, "decisive": short, "source": source, "rule": rule}


# --- the table -------------------------------------------------------------------------------------

# (claim_id, claim, claim_short (a dozen words at most: the compact table's), experiment, decide)
CLAIMS = (
    ("a", "pruning keeps classification, not generation: classification minus generative retention > 0 at "
          "25% of layers removed", "removing 25% of layers keeps classification, not generation", "3",
     lambda f, c: gap_claim(f, c, "25")),
    ("b", "the gap persists at 10-15% of layers removed (here 12.5%)",
     "the gap persists at 10-15% of layers removed (here 12.5%)", "3", lambda f, c: gap_claim(f, c, "12.5")),
    ("c", "deep layers carry arithmetic: skipping one of the last third breaks the addition probe and GSM8K, "
          "a middle one does not", "skipping a deep layer breaks arithmetic, a middle one does not", "1",
     deep_claim),
    ("d", "one particular layer raises bracket errors in code (the paper: layer 23 of Qwen2.5-7B's 28)",
     "one particular layer's skip raises bracket errors in code", "1", bracket_claim),
    ("e", "SGR recovery brings arithmetic back (Qwen2.5-7B addition probe 96 -> 37 -> 74, generation-scored)",
     "SGR recovery brings arithmetic back", "4", sgr_claim),
    ("f", "SGR recovers more than the dataset's own (external) answers",
     "SGR recovers more than the dataset's own answers", "4", external_claim),
    ("g", "beyond the paper: protecting the layers the patching maps mark keeps more than plain BI",
     "beyond the paper: protecting patching-marked layers keeps more than BI", "5", protect_claim),
)


def claims(model_dir: str | Path) -> list[dict]:
    """One row per claim of the paper (and one beyond it) on the model whose tables ``model_dir``
    holds: ``model``, ``claim_id``, ``claim``, ``claim_short``, ``experiment``, ``verdict``,
    ``evidence``, ``decisive``, ``source``, ``rule``.

    >>> [(r["claim_id"], r["verdict"]) for r in claims("no-such-folder")][:2]
    [('a', 'not tested'), ('b', 'not tested')]
    """
    f = Folder(model_dir)
    model = f.model()
    return [{col: row[col] for col in COLUMNS}
            for row in (decide(f, {"model": model, "claim_id": cid, "claim": text, "claim_short": short,
                                   "experiment": exp})
                        for cid, text, short, exp, decide in CLAIMS)]


def cell(text: str) -> str:
    """A table cell: a ``|`` would end it.

    >>> cell("a | b")
    'a \\\\| b'
    """
    return str(text).replace("|", "\\|")


def model_name(model: str) -> str:
    """A model as the pages name it: its makers' name for a named model's converted folder.

    >>> model_name("qwen2.5-coder-1.5b-instruct-q4_k_m"), model_name("my-model")
    ('Qwen2.5-Coder-1.5B-Instruct', 'my-model')
    """
    return MODEL_NAMES.get(model, model)


def render(rows: list[dict], model_dir: str | Path) -> str:
    """``claims.md``: one line saying where the table comes from, then the full table."""
    where = Folder(model_dir).path(".")
    model = model_name(rows[0]["model"] if rows else Folder(model_dir).name)
    lines = [f"The paper's claims on {model}, decided from the tables under `{where}` by "
             f"`python experiments/claims.py {where}`; intervals are 95%, the last column says how each verdict "
             "follows from them.", "",
             "| " + " | ".join(MD_COLUMNS) + " |", "|" + "---|" * len(MD_COLUMNS)]
    lines += ["| " + " | ".join(cell(r[c]) for c in MD_COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render_compact(rows: list[dict], model_dir: str | Path, full: str) -> str:
    """The compact table for a front page (claim, verdict, deciding numbers: ``claim_short``,
    ``verdict``, ``decisive``), then a line linking to the full table at ``full``.

    >>> print(render_compact([{"model": "m", "claim_short": "x", "verdict": "partly", "decisive": "d"}],
    ...                      "m", "docs/results.md#m").splitlines()[-1])
    Evidence, sources and the rule behind each verdict: [the full table](docs/results.md#m).
    """
    where = Folder(model_dir).path(".")
    model = model_name(rows[0]["model"] if rows else Folder(model_dir).name)
    lines = [f"The paper's claims on {model}, decided from the tables under `{where}` by "
             f"`python experiments/claims.py {where}`; intervals are 95%.", "",
             "| " + " | ".join(h for h, _ in COMPACT_COLUMNS) + " |", "|" + "---|" * len(COMPACT_COLUMNS)]
    lines += ["| " + " | ".join(cell(r[c]) for _, c in COMPACT_COLUMNS) + " |" for r in rows]
    lines += ["", f"Evidence, sources and the rule behind each verdict: [the full table]({full})."]
    return "\n".join(lines) + "\n"


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation dropped, spaces to '-'.

    >>> anchor("The paper's Qwen claims on this model")
    'the-papers-qwen-claims-on-this-model'
    """
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def block_anchor(text: str, name: str) -> str | None:
    """The anchor of the heading the claims block for ``name`` sits under (GitHub's ``-1``, ``-2``
    on a repeated one), ``None`` where the page has no such block or no heading above it.

    >>> block_anchor("# A\\n## B\\n<!-- claims:m -->\\n<!-- /claims:m -->\\n", "m")
    'b'
    >>> block_anchor("# B\\n# B\\n<!-- claims:m -->\\n", "m"), block_anchor("# B\\n", "m")
    ('b-1', None)
    """
    start = text.find(markers(name)[0] + "\n")
    if start < 0:
        return None
    seen, last, fenced = {}, None, False
    for line in text[:start].splitlines():
        fenced ^= bool(re.match(r"^\s*(```|~~~)", line))   # a '#' inside a code block is no heading
        m = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = anchor(m.group(1))
            last = slug if slug not in seen else f"{slug}-{seen[slug]}"
            seen[slug] = seen.get(slug, 0) + 1
    return last


def full_link(page: str | Path, target: str | Path, name: str) -> str:
    """The link from ``page`` to the full claims table in ``target``: its path from ``page``'s
    folder and, where ``target`` holds the block for ``name`` under a heading, that heading's anchor.

    >>> full_link("README.md", "no/such.md", "m")
    'no/such.md'
    """
    path = Path(os.path.relpath(Path(target).resolve(), Path(page).resolve().parent)).as_posix()
    slug = block_anchor(Path(target).read_text(), name) if Path(target).is_file() else None
    return f"{path}#{slug}" if slug else path


def write_claims(model_dir: str | Path, out: str | Path | None = None) -> tuple[list[dict], str]:
    """Write ``claims.csv`` / ``claims.jsonl`` and ``claims.md`` into ``out`` (default: ``model_dir``)."""
    rows = claims(model_dir)
    md = render(rows, model_dir)
    out = Path(out or model_dir)
    write_table(rows, out / "claims", columns=COLUMNS)
    atomic_write_text(out / "claims.md", md)
    return rows, md


def markers(name: str) -> tuple[str, str]:
    """The comment lines around a model's claims block in a Markdown page."""
    return f"<!-- claims:{name} -->", f"<!-- /claims:{name} -->"


def block(text: str, name: str) -> str | None:
    """The text between a page's claims markers for ``name`` (``None`` where it has none), less the
    blank line that ends the table before the closing marker.

    >>> block("x\\n<!-- claims:m -->\\n| a |\\n\\n<!-- /claims:m -->\\ny", "m")
    '| a |\\n'
    """
    start, end = markers(name)
    i, j = text.find(start + "\n"), text.find(end)
    if i < 0 or j < i:
        return None
    inner = text[i + len(start) + 1:j]
    return inner[:-1] if inner.endswith("\n\n") else inner


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with its claims block for ``name`` replaced by ``content`` and a blank line (so the
    closing marker never reads as part of a table).

    >>> replace_block("x\\n<!-- claims:m -->\\nold\\n<!-- /claims:m -->\\n", "m", "new\\n")
    'x\\n<!-- claims:m -->\\nnew\\n\\n<!-- /claims:m -->\\n'
    """
    start, end = markers(name)
    if block(text, name) is None:
        raise ValueError(f"no {start} ... {end} block: put those two lines where the claims table goes")
    i, j = text.find(start + "\n") + len(start) + 1, text.find(end)
    return text[:i] + content + "\n" + text[j:]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", type=Path, help="a model's results folder, e.g. docs/results/qwen")
    ap.add_argument("--out", type=Path, help="folder for claims.csv and claims.md (default: MODEL_DIR)")
    ap.add_argument("--readme", type=Path,
                    help="a page whose claims block becomes the compact table, e.g. README.md")
    ap.add_argument("--results", type=Path, help="a page whose claims block becomes the full table, "
                    "e.g. docs/results.md (the compact one links to it)")
    a = ap.parse_args(argv)
    if not a.model_dir.is_dir():
        print(f"{a.model_dir} is not a folder: give a model's results folder, e.g. docs/results/qwen", file=sys.stderr)
        raise SystemExit(2)
    rows, md = write_claims(a.model_dir, a.out)
    name = Folder(a.model_dir).name
    pages = [(a.results, lambda: md)]
    if a.readme:   # the compact table, linking to the full one: on the --results page, else claims.md
        full = full_link(a.readme, a.results or Path(a.out or a.model_dir) / "claims.md", name)
        pages.append((a.readme, lambda: render_compact(rows, a.model_dir, full)))
    for page, content in ((p, c) for p, c in pages if p):
        try:
            atomic_write_text(page, replace_block(page.read_text(), name, content()))
        except (OSError, ValueError) as e:
            print(f"{page}: {e}", file=sys.stderr)
            raise SystemExit(2) from None
    print(md, end="")


if __name__ == "__main__":
    main()
