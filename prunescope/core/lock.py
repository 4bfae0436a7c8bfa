"""One writer per run folder: a lock file taken atomically, holding the pid and host.

Two processes given the same ``--out`` would both append to its progress logs; the second one is
refused instead. A lock left by a process that died (same host, pid gone: a crash or SIGKILL) is
taken over with a warning, so a resumed run starts without manual clean-up. A lock from another
host cannot be checked and is refused with the way out (delete it).

Processes a command spawns itself (``devices=N``) and commands a run calls inside its own folder
hold the lock through their parent: the held paths are passed down in ``PRUNESCOPE_LOCKS``.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> with run_lock(d):
...     (d / LOCK_NAME).is_file()
True
>>> (d / LOCK_NAME).exists()
False
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from prunescope.core.errors import PrunescopeError

LOCK_NAME = ".prunescope.lock"
_ENV = "PRUNESCOPE_LOCKS"


def _held() -> list[str]:
    return [p for p in os.environ.get(_ENV, "").split(os.pathsep) if p]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def lock_path(target: str | Path, file: bool = False) -> Path:
    """The lock of a run folder (inside it) or, with ``file``, of a single output file (beside it)."""
    target = Path(target)
    return target.with_name(f".{target.name}.lock") if file else target / LOCK_NAME


def _try_create(path: Path, record: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    return True


@contextlib.contextmanager
def run_lock(target: str | Path | None, what: str = "run folder", *, file: bool = False) -> Iterator[Path | None]:
    """Hold the lock of ``target`` (a folder, or with ``file`` one output file) for the ``with`` block;
    ``None`` (nothing written, or another rank writes) holds nothing.

    Creates the folder (or the file's parent) if needed: call it once the input is known good."""
    if target is None:
        yield None
        return
    path = lock_path(target, file).resolve()
    if str(path) in _held():  # our parent process (or this one, further up) holds it
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    record = {"pid": os.getpid(), "host": host, "argv": sys.argv[:6]}
    if not _try_create(path, record):
        try:
            old = json.loads(path.read_text() or "{}")
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            old = {}
        pid, old_host = old.get("pid"), old.get("host")
        if old_host == host and isinstance(pid, int) and not _alive(pid):
            print(f"prunescope: warning: taking over the lock of {path.parent} left by process {pid}, which is "
                  "no longer running (a crash or kill); resuming", file=sys.stderr)
            path.unlink(missing_ok=True)
            if not _try_create(path, record):
                raise PrunescopeError(f"another process took the lock of {path.parent} just now; wait for it")
        elif old_host == host and isinstance(pid, int):
            raise PrunescopeError(f"{target} is in use by another {what} (process {pid} on this machine, lock "
                                  f"{path}); wait for it to finish, or give this run another --out")
        else:
            raise PrunescopeError(f"{target} is locked by process {pid} on host {old_host!r} (lock {path}); if "
                                  "that run is over, delete the lock file")
    previous = os.environ.get(_ENV)
    os.environ[_ENV] = os.pathsep.join([*_held(), str(path)])
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(_ENV, None)
        else:
            os.environ[_ENV] = previous
        with contextlib.suppress(FileNotFoundError):
            if json.loads(path.read_text() or "{}").get("pid") == os.getpid():
                path.unlink()
