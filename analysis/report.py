"""``prunescope report RUN_DIR``: one Markdown and one self-contained HTML page for a whole run.

It opens with a verdict (the model; what each pruned / recovered stage dropped; each category's
retention, raw and chance-corrected, with its 95% interval and n; the gap both ways; the tasks left
out and why; a warning where samples are small), then shows what the run folder holds and says
what is missing::

    run_dir/config.yaml | config.json
    run_dir/localize/...                         sweep / patching tables and figures
    run_dir/score/scores.csv, scores.png
    run_dir/prune/<name>/plan.json               each pruned stage's strategy, dropped and protected layers
    run_dir/recover/<name>-<mode>/prunescope_recovery.json   each recovered stage's pruned stage and mode
    run_dir/eval/eval.csv                        all stages, tidy + category column
    run_dir/eval/<stage>/samples/<task>.jsonl    generated responses
    run_dir/eval/<stage>/probes.json, probes.csv probe margin accuracy and exact match per stage
    run_dir/retention.csv|png, probes.png, signatures.csv   (computed here when absent)

The HTML embeds every figure as a base64 PNG and needs no external CSS or JS; every text from the
run (config, responses) is escaped. Both files are written atomically.

>>> # md, html = report("runs/llama-bi25")   -> runs/llama-bi25/report.md, report.html
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import importlib.metadata
import importlib.util
import json
import math
import platform
import re
from pathlib import Path

from prunescope.core.errors import PrunescopeError
from prunescope.core.results import atomic_write_text, read_table, write_table

from prunescope.analysis.retention import (
    bootstrap_retention, item_scores, plot_probes, plot_retention, probe_comparison, retention_table,
)
from prunescope.analysis.signatures import aggregate_signatures, examples, run_signatures

PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "lm_eval", "evalplus", "transformer_lens", "nnsight")
MAX_TABLE_ROWS = 40         # longer tables (patching cells: thousands of rows) are cut, with a note
PROBE_METRICS = ("margin_accuracy", "exact_match")   # the probe section shows both, per stage
SHOWN = ("retention.csv", "probes.csv", "signatures.csv", "retention.png", "probes.png", "eval/eval.csv")


def package_versions() -> dict[str, str]:
    """Installed versions (``importlib.metadata``; distribution names differ from module names:
    lm_eval is ``lm-eval``, transformer_lens ``transformer-lens``). A package importable without
    its metadata (copied onto ``PYTHONPATH``) reports its module's ``__version__`` when already
    imported, else "importable, version unknown"; "not installed" otherwise."""
    import sys

    out = {}
    for name in PACKAGES:
        for dist in (name, name.replace("_", "-")):
            try:
                out[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        else:
            if name in sys.modules:
                out[name] = str(getattr(sys.modules[name], "__version__", "importable, version unknown"))
            elif importlib.util.find_spec(name) is not None:
                out[name] = "importable, version unknown"
            else:
                out[name] = "not installed"
    out["python"] = platform.python_version()
    return out


# ---------------------------------------------------------------- a tiny document model, two renderers

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class Doc:
    """Blocks (heading, paragraph, code, table, image) rendered to Markdown and to HTML."""

    def __init__(self, root: Path):
        self.root = root
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def code(self, text: str, lang: str = "") -> None:
        # a model's raw text can hold control characters (a NUL makes the report a "binary" file to
        # grep and diff): shown as U+FFFD, newlines and tabs kept
        self.blocks.append(("code", _CONTROL.sub("\ufffd", text), lang))

    def table(self, headers: list[str], rows: list[list], note: str = "") -> None:
        self.blocks.append(("table", headers, [[_cell(c) for c in r] for r in rows], note))

    def image(self, path: Path, caption: str) -> None:
        self.blocks.append(("img", path, caption))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2].replace("\n", " "))
            elif b[0] == "p":
                out.append(_md_text(b[1]))
            elif b[0] == "code":
                fence = "`" * max(3, _longest_backticks(b[1]) + 1)    # a fence the text cannot close
                out.append(f"{fence}{b[2]}\n{b[1].rstrip()}\n{fence}")
            elif b[0] == "table":
                _, headers, rows, note = b
                lines = ["| " + " | ".join(_md_cell(x) for x in headers) + " |",
                         "|" + "|".join("---" for _ in headers) + "|"]
                lines += ["| " + " | ".join(_md_cell(x) for x in r) + " |" for r in rows]
                out.append("\n".join(lines) + (f"\n\n{_md_text(note)}" if note else ""))
            elif b[0] == "img":
                rel = b[1].relative_to(self.root).as_posix()
                out.append(f"![{_md_text(b[2])}]({rel})\n\n*{_md_text(b[2])}*")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        e = html.escape
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f"<p>{_html_text(b[1])}</p>")
            elif b[0] == "code":
                out.append(f"<pre><code>{e(b[1].rstrip())}</code></pre>")
            elif b[0] == "table":
                _, headers, rows, note = b
                head = "".join(f"<th>{e(x)}</th>" for x in headers)
                body = "".join("<tr>" + "".join(f"<td>{e(x)}</td>" for x in r) + "</tr>" for r in rows)
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
                           + (f"<p class=\"note\">{_html_text(note)}</p>" if note else ""))
            elif b[0] == "img":
                data = base64.b64encode(b[1].read_bytes()).decode("ascii")
                out.append(f"<figure><img alt=\"{e(b[2])}\" src=\"data:image/png;base64,{data}\">"
                           f"<figcaption>{e(b[2])}</figcaption></figure>")
        style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
                 "table{border-collapse:collapse;margin:.5em 0;font-size:.9em}"
                 "th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left}th{background:#f0f0f0}"
                 "pre{background:#f6f6f6;padding:.6em;overflow-x:auto;white-space:pre-wrap}"
                 "img{max-width:100%}figcaption,.note{color:#555;font-size:.85em}")
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
                f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def _longest_backticks(text: str) -> int:
    best = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        best = max(best, run)
    return best


_CODE_SPAN = re.compile(r"(`[^`\n]*`)")


def _md_text(text: str) -> str:
    """Text as Markdown that no viewer renders as HTML: outside code spans the angle brackets get a
    backslash (CommonMark's escape: shown as ``<`` and ``>``, never a tag), inside them they stay."""
    parts = _CODE_SPAN.split(str(text))
    return "".join(p if i % 2 else p.replace("<", "\\<").replace(">", "\\>") for i, p in enumerate(parts))


def _html_text(text: str) -> str:
    """Escaped HTML, with the Markdown code spans as ``<code>``."""
    parts = _CODE_SPAN.split(str(text))
    return "".join(f"<code>{html.escape(p[1:-1])}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))


def _md_cell(text: str) -> str:
    return _md_text(text).replace("|", "\\|").replace("\n", " ")


def _cell(x) -> str:
    if x is None or x == "":
        return ""
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, (int, float)) or _is_number(x):
        v = float(x)
        if math.isnan(v):
            return "nan"
        if v == int(v) and abs(v) < 1e15 and "." not in str(x):
            return str(int(v))
        return f"{v:.3f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(x)


def with_ci(r: dict) -> str:
    """A retention row's value with its bootstrap interval, as the report's tables show it.

    >>> with_ci({"value": "0.8831", "ci_low": 0.858, "ci_high": 0.909}), with_ci({"value": 0.5, "ci_low": ""})
    ('0.883 [0.858, 0.909]', '0.500')
    """
    lo, hi = r.get("ci_low", ""), r.get("ci_high", "")
    return _cell(r["value"]) + (f" [{_cell(lo)}, {_cell(hi)}]" if lo not in ("", None) else "")


def _is_number(x) -> bool:
    try:
        float(x)
        return isinstance(x, str) and x.strip().lower() not in ("nan", "inf", "-inf", "infinity")
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------- sections

def _read_config(run_dir: Path) -> tuple[dict, str | None, str | None]:
    """``(config as a dict, file name, its text)``; a config that does not parse is shown as text only."""
    for name in ("config.yaml", "config.json"):
        path = run_dir / name
        if path.is_file():
            text = path.read_text(errors="replace")
            try:
                if name.endswith("yaml"):
                    import yaml

                    cfg = yaml.safe_load(text)
                else:
                    cfg = json.loads(text)
            except Exception:                   # shown as text anyway; only the model name is lost
                cfg = None
            return (cfg if isinstance(cfg, dict) else {}), name, text
    return {}, None, None


def _config(doc: Doc, name: str | None, text: str | None, missing: list[str]) -> None:
    doc.h(2, "Configuration")
    if name is None:
        doc.p("No config.yaml or config.json in the run folder.")
        return
    doc.p(f"From {name}:")
    doc.code(text, "yaml" if name.endswith("yaml") else "json")


# what makes a folder a run folder: anything a prunescope command or the pipeline writes
RUN_PARTS = ("config.yaml", "config.json", "eval", "probes.csv", "localize", "score", "prune", "recover",
             "retention.csv", "sweep.csv", "patch.csv", "scores.csv", "eval.csv")


def _wide(rows: list[dict], key_cols: list[str], value=lambda r: r["value"]) -> tuple[list[str], list[list]]:
    """Tidy rows -> one line per key, one column per stage (condition), in first-appearance order."""
    stages = list(dict.fromkeys(r["condition"] for r in rows))
    lines: dict[tuple, dict] = {}
    for r in rows:
        lines.setdefault(tuple(r.get(k, "") for k in key_cols), {})[r["condition"]] = value(r)
    return key_cols + stages, [list(k) + [v.get(s) for s in stages] for k, v in lines.items()]


def _base_stage(table: list[dict]) -> str:
    """The base stage of a retention table read back from CSV: the first stage whose tasks all have
    score == base score."""
    stages = list(dict.fromkeys(r["condition"] for r in table))
    for s in stages:
        rows = [r for r in table if r["condition"] == s and r.get("level") == "task"]
        if rows and all(str(r.get("score")) == str(r.get("base_score")) for r in rows):
            return s
    return "base"


# ---------------------------------------------------------------- the verdict (first in the report)

SMALL_ITEMS, SMALL_CORRECT = 50, 10   # below these a task's interval is wide: the verdict warns


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):        # a half-written or foreign file: the stage is described without it
        return None


def stage_plan(run_dir: str | Path, stage: str) -> dict:
    """What made a stage, from the run folder: ``{"strategy", "drop", "protected", "n_layers",
    "pruned", "mode"}``. A pruned stage ``pruned-<name>`` reads ``prune/<name>/plan.json``; a
    recovered stage ``recovered-<name>-<mode>`` reads ``recover/<name>-<mode>/prunescope_recovery.json``
    (its pruned stage and mode) and its pruned stage's plan. Other stages, or a plan not found: {}.

    >>> stage_plan("runs/nowhere", "base")
    {}
    """
    run_dir = Path(run_dir)
    if stage.startswith("pruned-"):
        plan = _read_json(run_dir / "prune" / stage.removeprefix("pruned-") / "plan.json")
        return {**_plan_fields(plan), "pruned": stage, "mode": ""} if plan else {}
    if not stage.startswith("recovered-"):
        return {}
    arm = stage.removeprefix("recovered-")
    info = _read_json(run_dir / "recover" / arm / "prunescope_recovery.json") or {}
    # the pipeline names an arm <pruned name>-<mode>, with ~<budget> and @<seed> where it trains several
    name, _, mode = arm.partition("~")[0].partition("@")[0].rpartition("-")
    name = Path(str(info["base"])).name if info.get("base") else name
    mode = (info.get("recovery") or {}).get("mode") or (info.get("config") or {}).get("mode") or mode
    plan = (_read_json(run_dir / "prune" / name / "plan.json")
            or (_read_json(run_dir / "recover" / arm / "prunescope_plan.json") or {}).get("plan"))
    return {**_plan_fields(plan or {}), "pruned": f"pruned-{name}", "mode": mode}


def _plan_fields(plan: dict) -> dict:
    return {"strategy": plan.get("strategy", plan.get("method", "")), "drop": list(plan.get("drop", [])),
            "protected": list(plan.get("protected") or []), "n_layers": plan.get("n_layers", ""),
            "score_metric": plan.get("metric", "")}


def _layers(xs: list) -> str:
    return " ".join(map(str, xs)) if xs else "none"


def _stage_lines(run_dir: Path, stages: list[str]) -> list[list]:
    """The verdict's stage table: how each pruned / recovered stage was made and what it dropped."""
    lines = []
    for st in stages:
        p = stage_plan(run_dir, st)
        if st.startswith("recovered-"):
            made = f"{p['pruned']} recovered by {p['mode']}" if p else "recovered (no record in recover/)"
        elif st.startswith("pruned-"):
            made = (f"strategy {p['strategy']}" + (f" ({p['score_metric']})" if p.get("score_metric") else "")
                    if p else "pruned (no prune/<name>/plan.json)")
        else:
            continue
        if not p.get("drop"):
            lines.append([st, made, "", ""])
            continue
        of = f" ({len(p['drop'])} of {p['n_layers']})" if p.get("n_layers") not in ("", None) else ""
        lines.append([st, made, _layers(p["drop"]) + of, _layers(p["protected"])])
    return lines


def _ci_text(r: dict | None) -> str:
    """A category or gap value with its interval; "undefined" for NaN, "" where there is no row."""
    if r is None:
        return ""
    return with_ci(r) if _finite(r["value"]) else "undefined"


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _num(r: dict | None) -> str:
    return _cell(r["value"]) if r is not None and _finite(r["value"]) else "undefined"


def _verdict_rows(table: list[dict], stage: str) -> tuple[list[list], str]:
    """One stage's lines of the verdict table (each category and the gap, both ratios, n) and its
    one-sentence verdict."""
    def get(probe, metric):
        return next((r for r in table if r["condition"] == stage and r["probe"] == probe
                     and r.get("metric", "retention") == metric and r.get("level") in ("category", "gap")), None)

    lines, words = [], []
    for cat in ("classification", "generative", "gap"):
        raw, cor = get(cat, "retention"), get(cat, "chance_corrected_retention")
        if raw is None and cor is None:
            continue
        tasks = [r for r in table if r["condition"] == stage and r.get("level") == "task"
                 and r.get("metric", "retention") == "retention" and (cat == "gap" or r["category"] == cat)]
        kept = [_cell(r["n"]) if r is not None else "0" for r in (raw, cor)]
        lines.append([stage, cat, _ci_text(raw), _ci_text(cor),
                      f"{kept[0]} of {len(tasks)}" + (f" ({kept[1]} chance-corrected)" if kept[1] != kept[0] else ""),
                      "" if cat == "gap" else ", ".join(f"{r['probe']} {_cell(r['n'])}" for r in tasks)])
        same = _num(raw) == _num(cor)          # chance 0 (a generated answer) or no change: one number
        words.append(f"the gap is {_num(raw)} raw and {_num(cor)} chance-corrected" if cat == "gap" else
                     f"{cat} keeps {_num(raw)} of its base score" + (" (the same chance-corrected)" if same
                     else f" and {_num(cor)} of its margin over chance"))
    return lines, (f"{stage}: " + "; ".join(words) + ".") if words else ""


def _left_out(table: list[dict]) -> str:
    """The tasks left out of a category mean, with why and for which ratio, once each."""
    seen: dict[tuple[str, str], set[str]] = {}
    for r in table:
        if r.get("level") == "category" and r.get("tasks_left_out"):
            for why in str(r["tasks_left_out"]).split("; "):
                seen.setdefault((r["probe"], why), set()).add(r.get("metric", "retention"))
    if not seen:
        return "No task is left out of the category means."
    parts = [f"{cat}: {why}" + ("" if len(ms) > 1 else " (chance-corrected only)" if "chance_corrected_retention"
                                 in ms else " (raw only)") for (cat, why), ms in seen.items()]
    return ("Left out of the category means (their ratio is undefined; the category rests on its other "
            "tasks): " + "; ".join(parts) + ".")


def _small_samples(table: list[dict], base: str) -> str:
    """A warning line where a task's sample is small: few items, or a base score from few right answers."""
    notes = []
    for r in table:
        if r["condition"] != base or r.get("level") != "task" or r.get("metric", "retention") != "retention":
            continue
        if not _finite(r.get("n")):
            continue
        n, why = int(float(r["n"])), []
        if n < SMALL_ITEMS:
            why.append(f"{n} items")
        if _finite(r.get("base_score")) and round(float(r["base_score"]) * n) < SMALL_CORRECT:
            why.append(f"base score from {round(float(r['base_score']) * n)} right of {n}")
        if why:
            notes.append(f"{r['probe']} ({', '.join(why)})")
    if not notes:
        return ""
    return (f"Warning, small samples (fewer than {SMALL_ITEMS} items, or a base score from fewer than "
            f"{SMALL_CORRECT} right answers: wide intervals, read the numbers as rough): " + "; ".join(notes) + ".")


def _verdict(run_dir: Path, doc: Doc, table: list[dict] | None, base: str, cfg: dict) -> None:
    """The answer first: model, what each stage dropped, each category's raw and chance-corrected
    retention with its interval and n, the gap both ways, the tasks left out, small-sample warnings."""
    doc.h(2, "Verdict")
    table = table or []
    models = list(dict.fromkeys(str(r["model"]) for r in table if r.get("model"))) or [str(cfg.get("model") or "")]
    stages = list(dict.fromkeys(r["condition"] for r in table))
    stages = stages or sorted({f"pruned-{p.parent.name}" for p in run_dir.glob("prune/*/plan.json")} | {
        f"recovered-{p.parent.name}" for p in run_dir.glob("recover/*/prunescope_recovery.json")})
    doc.p(f"Model: {', '.join(m or '(not named)' for m in models)}; base stage: {base}.")
    lines = _stage_lines(run_dir, stages)
    if lines:
        doc.table(["stage", "made by", "dropped layers", "protected layers"], lines)
    if not table:
        doc.p("No retention yet: the run folder has no evaluation (eval/eval.csv or `eval/<stage>/eval.csv`).")
        return
    rows, sentences = [], []
    for st in stages:
        if st != base:
            lines, sentence = _verdict_rows(table, st)
            rows += lines
            sentences += [sentence] if sentence else []
    for s in sentences:
        doc.p(s)
    doc.table(["stage", "category", "retention (score / base)", "chance-corrected ((score - chance) / (base - chance))",
               "tasks kept", "items per task"], rows,
              "Mean over each category's tasks, with 95% paired bootstrap intervals over items where the samples "
              "are in the run folder; gap = classification minus generative. Raw retention cannot fall below "
              "chance / base (a model that guesses keeps it); the chance-corrected ratio is 0 at chance, 1 at "
              "the base.")
    doc.p(_left_out(table))
    warning = _small_samples(table, base)
    if warning:
        doc.p(warning)


def _retention_data(run_dir: Path, eval_rows: list[dict] | None) -> tuple[list[dict] | None, str, str]:
    """``(retention table, base stage, where it came from)``: retention.csv as it is, else (or when
    it predates the chance-corrected rows) computed from the eval rows with bootstrap intervals and
    written to retention.csv; ``(None, "base", "")`` without either."""
    path = run_dir / "retention.csv"
    if path.is_file():
        table = read_table(path)
        if not eval_rows or any(r.get("metric") == "chance_corrected_retention" for r in table):
            return table, _base_stage(table), "Retention from retention.csv."
    if not eval_rows:
        return None, "base", ""
    stages = list(dict.fromkeys(r["condition"] for r in eval_rows))
    base = "base" if "base" in stages else stages[0]
    table = retention_table(eval_rows, base=base)
    items = item_scores(run_dir, {(r["condition"], r["probe"]): r["score_metric"] for r in table
                                  if r.get("level") == "task"})
    table = bootstrap_retention(table, items, base=base)
    write_table(table, run_dir / "retention")
    return table, base, (f"Retention computed from eval/eval.csv (base stage: {base}); written to retention.csv. "
                         "Brackets: 95% paired bootstrap intervals over items (1000 resamples).")


def _retention(run_dir: Path, doc: Doc, table: list[dict] | None, base: str, how: str,
               eval_rows: list[dict] | None) -> None:
    """The details behind the verdict: each task's two ratios and score, the category means with
    intervals, the figure, then every metric of every task."""
    doc.h(2, "Evaluation and retention (score / base score, and chance-corrected)")
    if table is None:
        doc.p("No eval/eval.csv and no retention.csv: retention is not available.")
        return
    doc.p(how)
    if not table:
        doc.p("The retention table is empty.")
        return
    headers, lines = _wide([r for r in table if r.get("level") == "task"],
                           ["model", "probe", "category", "score_metric", "chance", "metric"],
                           lambda r: f"{_cell(r['value'])} ({_cell(r['score'])})")
    headers[1], headers[3] = "task", "score"
    doc.table(headers, lines, "Cells: ratio (score) per task and stage; retention = score / base score, "
                              "chance_corrected_retention = (score - chance) / (base score - chance), nan where "
                              "undefined (base score 0, or at or below chance).")
    headers, lines = _wide([r for r in table if r.get("level") in ("category", "gap")], ["model", "probe", "metric"],
                           with_ci)
    headers[1] = "mean over tasks"
    doc.table(headers, lines, "Mean of each category's tasks; gap = classification minus generative.")
    fig = run_dir / "retention.png"
    if not fig.is_file() and any(str(r["condition"]) != base for r in table):
        plot_retention(table, fig, base=base)
    if fig.is_file():
        doc.image(fig, "retention.png: mean retention per category and stage, raw and chance-corrected (dots: tasks)")
    if eval_rows:
        headers, lines = _wide(eval_rows, ["model", "probe", "category", "metric"])
        headers[1] = "task"
        doc.table(headers, lines, "Every metric per task (columns: stages), from eval/eval.csv "
                                  "(or the per-stage `eval/<stage>/eval.csv` tables).")


def _probe_changes(run_dir: Path) -> list[dict]:
    """Paired probe changes with intervals (``prunescope.analysis.probes``), where that module is
    installed; none otherwise."""
    try:
        from prunescope.analysis.probes import probe_change_rows
    except ImportError:
        return []
    return probe_change_rows(run_dir)


def _probes(run_dir: Path, doc: Doc, missing: list[str], eval_rows: list[dict] | None) -> None:
    doc.h(2, "Probes per stage (margin accuracy and exact match)")
    path = run_dir / "probes.csv"
    models = {r["condition"]: r.get("model", "") for r in eval_rows or []}
    rows = read_table(path) if path.is_file() else stage_probe_rows(run_dir, models)
    if not rows:
        doc.p("No probes.csv (or `eval/<stage>/probes.json`) in the run folder.")
        missing.append("probes.csv")
        return
    if not path.is_file():
        doc.p("From eval/<stage>/probes.json (the evaluation has not written probes.csv yet).")
    lines, stages = [], list(dict.fromkeys(r["condition"] for r in rows))
    for metric in PROBE_METRICS:
        lines += [[t["model"], t["probe"], metric, *(t.get(s) for s in stages), t["n"], t["change"]]
                  for t in probe_comparison(rows, metric)]
    if not lines:
        doc.p("probes.csv has no margin_accuracy (or accuracy) or exact_match rows.")
        return
    doc.table(["model", "probe", "metric", *stages, "n", "change"], lines,
              "margin_accuracy: the answer outscores every wrong continuation; exact_match: greedy decoding "
              "gives the answer. change: last stage minus first stage.")
    changes = _probe_changes(run_dir)
    if changes:
        doc.table(["model", "probe", "stage", "reference", "metric", "before", "after", "change", "n"],
                  [[r["model"], r["probe"], r["condition"], r["reference"], r["metric"], r["before"], r["after"],
                    with_ci(r), r["n"]] for r in changes],
                  "Paired changes (stage minus reference, the same items), 95% bootstrap intervals over items.")
    fig = run_dir / "probes.png"
    if not fig.is_file() and probe_comparison(rows):
        plot_probes(rows, fig)
    if fig.is_file():
        doc.image(fig, "probes.png: probe margin accuracy per stage")


def _base_first(paths) -> list[Path]:
    """``eval/<stage>/<file>`` paths sorted by stage, the base stage first."""
    return sorted(paths, key=lambda p: (p.parent.name != "base", p.parent.name))


def stage_probe_rows(run_dir: Path, models: dict[str, str] | None = None) -> list[dict]:
    """Probe rows from each evaluated stage's ``eval/<stage>/probes.json`` (base first): metric
    ``margin_accuracy`` and ``exact_match`` per probe. A probes.json of the older format (one key
    ``accuracy``, the margin accuracy) gives margin_accuracy rows only. ``models``: the model name per
    stage, from the evaluation rows (none: left empty).

    >>> stage_probe_rows(Path("runs/nowhere"))
    []
    """
    models = models or {}
    rows = []
    for f in _base_first(Path(run_dir).glob("eval/*/probes.json")):
        saved = json.loads(f.read_text())
        n = (saved.get("settings") or {}).get("n", "")
        scores = {"margin_accuracy": saved.get("margin_accuracy", saved.get("accuracy") or {}),
                  "exact_match": saved.get("exact_match") or {}}
        rows += [{"model": models.get(f.parent.name, ""), "probe": probe, "condition": f.parent.name, "layers": "",
                  "metric": metric, "value": value, "n": n, "seed": ""}
                 for metric, per in scores.items() for probe, value in per.items()]
    return rows


def _signatures(run_dir: Path, doc: Doc, missing: list[str], eval_rows: list[dict] | None, cfg: dict,
                show_progress: bool) -> None:
    doc.h(2, "Failure signatures of generated responses")
    stages = list(dict.fromkeys(r["condition"] for r in eval_rows or []))
    models = {r["condition"]: r.get("model", "") for r in eval_rows or []}
    model = next(iter(models.values()), "") or str(cfg.get("model") or "")
    records = run_signatures(run_dir, model=model, stages=stages, show_progress=show_progress)
    for r in records:
        r["model"] = models.get(r["stage"], r["model"])
    path = run_dir / "signatures.csv"
    if records:
        # always from the samples (read above anyway): a table written by an older prunescope
        # would miss the signatures added since
        rows = aggregate_signatures(records)
        write_table(rows, run_dir / "signatures")
        doc.p("Computed from `eval/<stage>/samples/*.jsonl`; written to signatures.csv.")
    elif path.is_file():
        rows = read_table(path)
        doc.p("From signatures.csv (no sample files in this run folder).")
    else:
        doc.p("No generated samples (`eval/<stage>/samples/<task>.jsonl`) and no signatures.csv.")
        missing.append("eval/<stage>/samples/*.jsonl")
        return
    headers, lines = _wide(rows, ["model", "probe", "metric"])
    headers[1] = "task"
    doc.table(headers, lines, "wrong_step_rate: wrong arithmetic steps / steps found; unterminated_string_rate: code "
              "with a string or docstring left open; unbalanced_rate / mismatch_rate: code with unclosed or extra / "
              "mismatched brackets, among the code with no string left open; `fail_<kind>_rate`: executed programs "
              "that failed by a syntax or bracket error, an undefined name, a timeout, a wrong answer (assertion) "
              "or another exception (the paper's HumanEval taxonomy); rep4: repeated word 4-gram rate; "
              "char_rep16: repeated character 16-gram rate (defined for runaway one-token answers like '2000…'); "
              "self_bleu4: intra-response Self-BLEU-4 (high = repetitive).")
    if not records:
        doc.p("No samples in the run folder, so no example excerpts.")
        return
    ex = examples(records, k=3)
    for key, title in (("wrong_steps", "Wrong arithmetic steps"), ("bracket_errors", "Bracket errors"),
                       ("repetitive", "Most repetitive responses")):
        if ex[key]:
            doc.h(3, title)
            for item in ex[key]:
                doc.code(item)


def _diverged(run_dir: Path, doc: Doc) -> None:
    """Recovery arms whose training diverged (``recover/<arm>/diverged.json``): no stage of the
    tables above, so say why they are missing and where they went non-finite."""
    arms = sorted(run_dir.glob("recover/*/diverged.json"))
    if not arms:
        return
    doc.h(2, "Recovery arms that diverged")
    rows = []
    for path in arms:
        info = json.loads(path.read_text())
        first = (info.get("non_finite") or [{}])[0]
        rows.append([f"recovered-{path.parent.name}", first.get("step"), first.get("loss"), first.get("grad_norm"),
                     ", ".join(first.get("first_bad_grads") or []), info.get("error")])
    doc.table(["stage", "first skipped step", "its loss", "its gradient norm", "first non-finite gradients",
               "error"], rows, "Left out of the evaluation; their curves are in recover/<arm>/curve.csv.")


def _others(run_dir: Path, doc: Doc, shown: set[Path]) -> None:
    def listed(pattern):      # hidden files (temp files of an atomic write in progress) are skipped
        return sorted(p for p in run_dir.rglob(pattern)
                      if p not in shown and not any(x.startswith(".") for x in p.relative_to(run_dir).parts))

    figures, tables = listed("*.png"), listed("*.csv")
    if figures:
        doc.h(2, "Other figures")
        for p in figures:
            doc.image(p, p.relative_to(run_dir).as_posix())
    if tables:
        doc.h(2, "Other tables")
        for p in tables:
            rel = p.relative_to(run_dir).as_posix()
            doc.h(3, rel)
            try:
                rows = read_table(p)
            except Exception as e:              # a foreign CSV the reader cannot parse: say so, go on
                doc.p(f"Could not read {rel}: {e}")
                continue
            if not rows:
                doc.p("(empty)")
                continue
            headers = list(dict.fromkeys(k for r in rows for k in r))
            note = (f"First {MAX_TABLE_ROWS} of {len(rows)} rows; the full table is {rel}."
                    if len(rows) > MAX_TABLE_ROWS else "")
            doc.table(headers, [[r.get(h) for h in headers] for r in rows[:MAX_TABLE_ROWS]], note)


def stage_eval_tables(run_dir: Path) -> dict[str, list[dict]]:
    """``{stage: rows}`` of every per-stage ``eval/<stage>/eval.csv``, finished or not (base first)."""
    return {p.parent.name: read_table(p) for p in _base_first(run_dir.glob("eval/*/eval.csv"))}


def _eval_rows(run_dir: Path) -> tuple[list[dict] | None, list[str]]:
    """eval/eval.csv; without it (an evaluation still running or stopped), the per-stage tables
    eval/<stage>/eval.csv joined (base first), keeping the stages that have every task of the base
    stage: a stage with fewer tasks would average its categories over other tasks. Returns the
    rows and the stages left out."""
    path = run_dir / "eval" / "eval.csv"
    if path.is_file():
        return read_table(path), []
    per_stage = stage_eval_tables(run_dir)
    if not per_stage:
        return None, []
    tasks = {st: {r["probe"] for r in rows} for st, rows in per_stage.items()}
    want = tasks[next(iter(per_stage))]
    partial = [st for st in per_stage if not tasks[st] >= want]
    return [r for st, rows in per_stage.items() if st not in partial for r in rows] or None, partial


def report(run_dir: str | Path, show_progress: bool = False) -> tuple[Path, Path]:
    """Write ``run_dir/report.md`` and ``run_dir/report.html`` (self-contained) and return their paths.

    Computes and writes retention.csv / retention.png (from eval/eval.csv, or the per-stage
    eval/<stage>/eval.csv tables joined) when they are absent or retention.csv has no
    chance-corrected rows yet, probes.png (from probes.csv) when it is absent, and
    signatures.csv from the sample files whenever there are any; the retention base is the stage named ``base``, else the
    first stage of the eval table.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PrunescopeError(f"run folder {run_dir} does not exist; pass the --out folder of a run")
    if not any((run_dir / part).exists() for part in RUN_PARTS):
        raise PrunescopeError(f"{run_dir} holds no prunescope run (no config, eval/, probes.csv or result tables); "
                              "pass the --out folder of a run")
    doc = Doc(run_dir)
    missing: list[str] = []
    title = f"prunescope report: {run_dir.resolve().name}"
    doc.h(1, title)
    doc.p(f"Run folder {run_dir.resolve()}, report written {_dt.datetime.now().isoformat(timespec='seconds')}. "
          "The verdict first (model, dropped layers, retention raw and chance-corrected with n and intervals), "
          "then the details (retention, probes, failure signatures); the configuration and package versions "
          "at the end.")
    cfg, cfg_name, cfg_text = _read_config(run_dir)
    if cfg_name is None:
        missing.append("config.yaml / config.json")
    if not (run_dir / "eval" / "eval.csv").is_file() and any(run_dir.glob("eval/*/eval.csv")):
        # an evaluation still running or stopped: what is derived from it is recomputed every time
        for name in ("retention.csv", "retention.jsonl", "retention.png", "signatures.csv", "signatures.jsonl",
                     "probes.png"):
            (run_dir / name).unlink(missing_ok=True)
    eval_rows, partial = _eval_rows(run_dir)
    table, base, how = _retention_data(run_dir, eval_rows)
    if table is None:
        missing.append("eval/eval.csv")
    _verdict(run_dir, doc, table, base, cfg)
    if partial:
        doc.p(f"Evaluation not finished: {', '.join(partial)} left out (fewer tasks than the base stage; "
              "rerun the config to finish them).")
        missing += [f"eval/{st} (partial)" for st in partial]
    _retention(run_dir, doc, table, base, how, eval_rows)
    _diverged(run_dir, doc)
    _probes(run_dir, doc, missing, eval_rows)
    _signatures(run_dir, doc, missing, eval_rows, cfg, show_progress)
    for part in ("localize", "score/scores.csv"):
        if not (run_dir / part).exists():
            missing.append(part)
    shown = {run_dir / name for name in SHOWN} | set(run_dir.glob("eval/*/eval.csv"))   # all in the eval table
    _others(run_dir, doc, shown)
    _config(doc, cfg_name, cfg_text, missing)
    doc.h(2, "Package versions")
    doc.table(["package", "version"], [[k, v] for k, v in package_versions().items()])
    doc.h(2, "Missing")
    doc.p("Not in this run folder: " + ", ".join(missing) + "." if missing else "Nothing: every part of a run is here.")
    md = atomic_write_text(run_dir / "report.md", doc.markdown())
    page = atomic_write_text(run_dir / "report.html", doc.html(title))
    return md, page
