"""Tidy result tables and atomic writes, shared by every command.

One row per model x probe x condition x metric::

    model, probe, condition, layers, metric, value, n, seed

written as CSV and JSONL side by side. Files are written to a temp file in the same folder and
renamed, so a crash never leaves half a table.

>>> rows = [{"model": "m", "probe": "arithmetic", "condition": "none", "layers": "", "metric": "accuracy",
...          "value": 0.5, "n": 10, "seed": 0}]
>>> import tempfile, pathlib; d = pathlib.Path(tempfile.mkdtemp())
>>> _ = write_table(rows, d / "sweep"); read_table(d / "sweep.csv")[0]["value"]
0.5
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
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


def path_tail(value, parts: int = 2):
    """The last ``parts`` components of a path-like value (``"prune/bi-25"``); other values as they are.

    >>> path_tail("/root/runs/gemma3-retention/prune/bi-25"), path_tail("runs/x/prune/bi-25"), path_tail(None)
    ('prune/bi-25', 'prune/bi-25', None)
    """
    if not isinstance(value, str) or not value:
        return value
    return "/".join(Path(value).parts[-parts:])


def same_config(old: dict, new: dict, paths: Sequence[str] = ()) -> bool:
    """``old == new``, except that the keys in ``paths`` hold paths and are compared by their last two
    components (:func:`path_tail`): where a run folder or the model cache lies is not a setting."""
    def norm(d: dict) -> dict:
        return {k: path_tail(v) if k in paths else v for k, v in d.items()}

    return norm(old) == norm(new)


def check_run_config(out: Path, config: dict, what: str = "run", name: str = "config.json",
                     paths: Sequence[str] = ()) -> None:
    """Resume guard: record ``config`` in ``out/NAME``, or refuse a folder made with other settings.

    ``paths``: keys whose values are file or folder paths (the model, the training data), compared by
    their last two components (``prune/bi-25``, ``models/gemma-3-270m``), so a run folder moved, or
    copied to a machine whose model cache lies elsewhere, still resumes.
    """
    path = Path(out) / name
    if path.is_file():
        old = json.loads(path.read_text())
        if not same_config(old, config, paths):
            diff = sorted(k for k in set(old) | set(config)
                          if not same_config({k: old.get(k)}, {k: config.get(k)}, paths))
            from .errors import PrunescopeError

            article = "an" if what[:1] in "aeiou" else "a"
            raise PrunescopeError(f"{out} holds {article} {what} with different settings ({', '.join(diff)}); "
                                  "use another --out folder or delete this one")
    else:
        atomic_write_json(path, config)


def read_jsonl(path: str | Path, what: str) -> list[tuple[int, dict]]:
    """``(line number, object)`` for each non-empty line (``.jsonl`` or ``.jsonl.gz``), with a clear error
    for bad JSON or a missing file."""
    from .errors import PrunescopeError

    path = Path(path)
    if not path.is_file():
        raise PrunescopeError(f"{what} file {path} does not exist")
    if path.suffix == ".gz":
        import gzip

        text = gzip.decompress(path.read_bytes()).decode()
    else:
        text = path.read_text()
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise PrunescopeError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
        if not isinstance(d, dict):
            raise PrunescopeError(f"{path}:{lineno}: each line must be a JSON object")
        out.append((lineno, d))
    if not out:
        raise PrunescopeError(f"{what} file {path} holds no {what}s")
    return out


def read_progress(path: str | Path) -> list[dict]:
    """Records of an append-only progress log; a line torn by a crash is skipped (recomputed)."""
    path = Path(path)
    out = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def append_progress(path: str | Path, records: list[dict]) -> None:
    """Append records to a progress log and fsync, so finished work survives a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())
