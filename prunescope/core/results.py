"""Tidy result tables and atomic writes, shared by every command.

One row per model x probe x condition x metric::

    model, probe, condition, layers, metric, value, n, seed

written as CSV and JSONL side by side. Files are written to a temp file in the same folder and
renamed, so a crash never leaves half a table. Files and folders written that way get the modes
``open`` and ``mkdir`` would have given them (``0o666`` / ``0o777`` less the user's umask), not
the ``0o600`` / ``0o700`` of :mod:`tempfile` (:func:`make_temp_file`, :func:`make_temp_dir`).

>>> rows = [{"model": "m", "probe": "arithmetic", "condition": "none", "layers": "", "metric": "accuracy",
...          "value": 0.5, "n": 10, "seed": 0}]
>>> import tempfile, pathlib; d = pathlib.Path(tempfile.mkdtemp())
>>> _ = write_table(rows, d / "sweep"); read_table(d / "sweep.csv")[0]["value"]
0.5
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

COLUMNS = ("model", "probe", "condition", "layers", "metric", "value", "n", "seed")


def current_umask() -> int:
    """The process's umask, read without changing it where the system shows it (Linux's
    ``/proc/self/status``), else once, by setting and restoring it.

    >>> 0 <= current_umask() <= 0o777
    True
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _umask_by_setting()


@functools.lru_cache(maxsize=1)
def _umask_by_setting() -> int:
    # os.umask only reads by setting: set the strictest mask for the instant it is changed, so a
    # file another thread creates meanwhile is never more open than the user asked
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def follow_umask(path: str | Path) -> Path:
    """Give ``path``, and everything under it when it is a folder, the mode ``open`` (a file:
    ``0o666``) or ``mkdir`` (a folder: ``0o777``) would have given it under the user's umask.
    Called on a staged folder before it is renamed into place: besides :mod:`tempfile`,
    safetensors writes its files ``0o600``."""
    path = Path(path)
    mask = current_umask()
    for p in [path, *(path.rglob("*") if path.is_dir() else ())]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
    return path


def make_temp_file(path: Path, suffix: str = "") -> tuple[int, str]:
    """``(fd, name)`` of a new temp file beside ``path`` (to be renamed onto it), with the mode the
    user's umask gives a new file (:func:`tempfile.mkstemp` makes it ``0o600``)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.fchmod(fd, 0o666 & ~current_umask())
    return fd, tmp


def make_temp_dir(prefix: str, parent: str | Path) -> Path:
    """A new temp folder in ``parent`` (to be renamed into place), with the mode the user's umask
    gives a new folder (:func:`tempfile.mkdtemp` makes it ``0o700``).

    >>> import stat; d = make_temp_dir(".x-", tempfile.gettempdir())
    >>> stat.S_IMODE(d.stat().st_mode) == 0o777 & ~current_umask()
    True
    >>> d.rmdir()
    """
    return follow_umask(tempfile.mkdtemp(prefix=prefix, dir=parent))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text to ``path`` via a temp file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = make_temp_file(path)
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


def read_table(path: str | Path, required: Sequence[str] = ()) -> list[dict]:
    """Read a CSV or JSONL table written by :func:`write_table` (numbers come back as numbers).

    ``required``: columns the table must have. A file that is not such a table (binary, bad JSON,
    a value that is not a number, missing columns) is refused with one line naming it."""
    from prunescope.core.errors import PrunescopeError

    path = Path(path)
    try:
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if not all(isinstance(r, dict) for r in rows):
                raise ValueError("a line is not a JSON object")
        else:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            for r in rows:
                for k in ("value",):
                    if r.get(k) not in (None, ""):
                        r[k] = float(r[k])
                for k in ("n", "seed"):
                    if r.get(k) not in (None, ""):
                        r[k] = int(float(r[k]))
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error, ValueError, TypeError) as e:
        raise PrunescopeError(f"{path} is not a results table ({type(e).__name__}: {str(e).splitlines()[0]}); "
                              "give a .csv or .jsonl table written by prunescope") from None
    missing = [c for c in required if rows and c not in rows[0]]
    if missing:
        raise PrunescopeError(f"{path} lacks the column(s) {missing} of a results table ({', '.join(required)}); "
                              "give a table written by prunescope sweep, patch or score")
    return rows


def path_tail(value, parts: int = 2):
    """The last ``parts`` components of a path-like value (``"prune/bi-25"``); other values as they are.

    >>> path_tail("/home/me/runs/gemma3-retention/prune/bi-25"), path_tail("runs/x/prune/bi-25"), path_tail(None)
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
                     paths: Sequence[str] = (), write: bool = True) -> None:
    """Resume guard: refuse a folder made with other settings, else record ``config`` in ``out/NAME``.

    ``paths``: keys whose values are file or folder paths (the model, the training data), compared by
    their last two components (``prune/bi-25``, ``models/gemma-3-270m``), so a run folder moved, or
    copied to a machine whose model cache lies elsewhere, still resumes. ``write=False`` only
    checks: a command checks before it loads anything and records once the run can start
    (:func:`record_run_config`), so bad input leaves no folder behind.
    """
    path = Path(out) / name
    from prunescope.core.errors import PrunescopeError

    if Path(out).exists() and not Path(out).is_dir():
        raise PrunescopeError(f"--out {out} is a file, not a folder; give a folder path")
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise PrunescopeError(f"{path} is not valid JSON (a damaged run folder); delete {out} to start "
                                  "over") from None
        if not same_config(old, config, paths):
            diff = sorted(k for k in set(old) | set(config)
                          if not same_config({k: old.get(k)}, {k: config.get(k)}, paths))
            article = "an" if what[:1] in "aeiou" else "a"
            raise PrunescopeError(f"{out} holds {article} {what} with different settings ({', '.join(diff)}); "
                                  "use another --out folder, or pass --overwrite to start over")
    elif write:
        atomic_write_json(path, config)


def record_run_config(out: Path, config: dict, name: str = "config.json") -> None:
    """Write the run's settings once it can start (after :func:`check_run_config` with ``write=False``)."""
    path = Path(out) / name
    if not path.is_file():
        atomic_write_json(path, config)


def read_jsonl(path: str | Path, what: str) -> list[tuple[int, dict]]:
    """``(line number, object)`` for each non-empty line (``.jsonl`` or ``.jsonl.gz``), with a clear error
    for bad JSON or a missing file."""
    from prunescope.core.errors import PrunescopeError

    path = Path(path)
    if not path.is_file():
        raise PrunescopeError(f"{what} file {path} does not exist")
    try:
        if path.suffix == ".gz":
            import gzip

            text = gzip.decompress(path.read_bytes()).decode()
        else:
            text = path.read_text()
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise PrunescopeError(f"{path} is not a UTF-8 text {what} file ({type(e).__name__}); give a JSONL file, "
                              "one JSON object per line") from None
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
    """Records of an append-only progress log. The last line, torn by a crash, is skipped (its work
    is redone); a damaged line anywhere else means the file is not ours to trust, and is refused."""
    from prunescope.core.errors import PrunescopeError

    path = Path(path)
    out = []
    if path.is_file():
        try:
            lines = path.read_text().splitlines()
        except UnicodeDecodeError:
            raise PrunescopeError(f"progress log {path} is not text (damaged); delete it to redo its work") from None
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    continue
                raise PrunescopeError(f"progress log {path}:{i + 1} is not valid JSON (damaged, not a torn last "
                                      "line); delete the file to redo its work") from None
            if not isinstance(rec, dict):
                raise PrunescopeError(f"progress log {path}:{i + 1} is not a JSON object; delete the file to redo "
                                      "its work")
            out.append(rec)
    return out


def append_progress(path: str | Path, records: list[dict]) -> None:
    """Append records to a progress log and fsync, so finished work survives a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())
