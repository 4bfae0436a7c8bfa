"""``--overwrite``: remove what an earlier run of a command wrote at its ``--out``, and nothing else.

Without ``--overwrite`` a command resumes in a folder that holds its own earlier run with the same
settings and refuses one with other settings. With it, the command first removes that earlier
run's results: the entries it writes itself (``owned``, glob patterns relative to ``out``), or the
whole folder when the folder holds the command's ``marker`` (a file only prunescope writes, such
as ``prunescope_plan.json`` in a pruned checkpoint, whose model files are prunescope's too). Files
of the user's own in the folder stay. The command calls this once its input is checked, while it
holds the folder's lock (:data:`prunescope.core.lock.LOCK_NAME`, which stays).

>>> import pathlib, tempfile
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> for name in ("sweep.csv", "notes.txt"):
...     _ = (d / name).write_text("x")
>>> [p.name for p in remove_previous(d, ("sweep.csv", "sweep.jsonl"))], sorted(p.name for p in d.iterdir())
(['sweep.csv'], ['notes.txt'])
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from prunescope.core.errors import PrunescopeError
from prunescope.core.lock import LOCK_NAME


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def expect_folder(out: str | Path) -> None:
    """Refuse an ``--out`` that is a file where a command writes a folder (before anything is loaded)."""
    if Path(out).exists() and not Path(out).is_dir():
        raise PrunescopeError(f"--out {out} is a file, not a folder; give a folder path")


def remove_previous(out: str | Path, owned: Sequence[str], marker: str | None = None) -> list[Path]:
    """Remove an earlier run's results in the folder ``out``; returns what was removed.

    ``owned``: the entries the command writes (glob patterns, relative to ``out``); ``marker``: an
    entry whose presence makes the whole folder the command's (every entry but the lock goes). A
    file at ``out`` is never removed (:func:`expect_folder`).
    """
    out = Path(out)
    if not out.exists():
        return []
    expect_folder(out)
    if marker and (out / marker).exists():
        gone = [p for p in out.iterdir() if p.name != LOCK_NAME]
    else:
        gone = list(dict.fromkeys(p for pattern in owned for p in out.glob(pattern) if p.name != LOCK_NAME))
    for path in gone:
        _remove(path)
    return gone
