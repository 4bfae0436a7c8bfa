"""Tidy result tables and atomic writes, shared by every command.

One row per model x probe x condition x metric::

    model, probe, condition, layers, metric, value, n, seed

written as CSV and JSONL side by side. Files are written to a temp file in the same folder and
renamed, so a crash never leaves half a table.

>>> rows = [{"model": "m", "probe": "arithmetic", "condition": "none", "layers": "", "metric": "accuracy",
...          "value": 0.5, "n": 10, "seed": 0}]
>>> import tempfile, pathlib; d = pathlib.Path(tempfile.mkdtemp())
>>> write_table(rows, d / "sweep"); read_table(d / "sweep.csv")[0]["value"]
0.5
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

COLUMNS = ("model", "probe", "condition", "layers", "metric", "value", "n", "seed")


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text to ``path`` via a temp file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_table(rows: Iterable[dict], stem: str | Path, columns: Iterable[str] = COLUMNS) -> tuple[Path, Path]:
    """Write ``stem.csv`` and ``stem.jsonl`` (extra keys beyond ``columns`` go last)."""
    rows = list(rows)
    cols = list(columns)
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    stem = Path(stem)
    csv_path = atomic_write_text(stem.with_suffix(".csv"), buf.getvalue())
    jsonl_path = atomic_write_text(stem.with_suffix(".jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
    return csv_path, jsonl_path


def read_table(path: str | Path) -> list[dict]:
    """Read a CSV or JSONL table written by :func:`write_table` (numbers come back as numbers)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("value",):
            if r.get(k) not in (None, ""):
                r[k] = float(r[k])
        for k in ("n", "seed"):
            if r.get(k) not in (None, ""):
                r[k] = int(float(r[k]))
    return rows
