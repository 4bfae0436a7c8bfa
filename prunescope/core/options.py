"""Options objects: one dataclass per command, each setting with one name, default, help and check.

A command's settings live in one class (``SweepOptions``, ``PatchOptions``, ...), owned by the
package that runs the command. Each field is declared with :func:`option`, which records its kind
(how a CLI string or a YAML value becomes a Python value), its help text, its allowed names (often
a registry) and its bounds. From that one declaration come

* the CLI flags (:func:`add_arguments` / :func:`from_namespace`; flag = field name with dashes),
* the pipeline's config sections (:func:`derive` reuses a field with a stated other default),
* the docs (``docs/cli.md``, ``docs/pipeline.md`` are generated from the fields),
* the validation (:meth:`Options.check`), wherever the object came from.

Two objects are shared by every command: :class:`Placement` (where the model runs) and
:class:`Output` (where results go, figures, progress).

>>> from dataclasses import dataclass
>>> @dataclass
... class Demo(Options):
...     n: int = option(200, "items per probe", minimum=1)
...     kinds: list = option(["a", "b"], "activations", kind="names", choices=("a", "b", "c"))
>>> Demo(n=5, kinds="a,c").check()
Demo(n=5, kinds=['a', 'c'])
>>> Demo(n=0).check()
Traceback (most recent call last):
...
prunescope.core.errors.PrunescopeError: n must be a positive integer, got 0
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from prunescope.core.errors import PrunescopeError

# kind -> what a value must be (for messages)
KINDS = {
    "int": "an integer", "int?": "an integer or null", "float": "a number", "float?": "a number or null",
    "str": "a string", "str?": "a string or null", "bool": "true or false", "names": "a list of names",
    "ints": "a list of integers", "numbers": "a number or a list of numbers", "sets": "a list of layer sets",
    "limit": "a positive integer, a fraction in (0, 1), null, or a mapping of task names to those", "dict": "a mapping", "paths": "a list of paths",
}


def option(default: Any, help: str, *, kind: str | None = None, choices: Sequence[str] | Callable | None = None,
           minimum: float | None = None, maximum: float | None = None, flag: str | None = None,
           aliases: Sequence[str] = (), cli: bool = True, metavar: str | None = None, what: str | None = None,
           flag_help: str | None = None) -> Any:
    """A dataclass field with everything the CLI, the pipeline, the docs and the check need.

    ``kind`` defaults from the default value (``int``, ``float``, ``str``, ``bool``); ``choices``
    is a sequence or a zero-argument callable (a registry's names, read late); ``flag`` overrides
    the CLI flag (``--quiet`` for ``progress``); ``aliases`` are older flag spellings still taken;
    ``what`` names one choice in messages ("unknown task 'x'"; a registry's own name by default);
    ``flag_help``: the help of a negative flag (``--quiet``: "no progress bars").
    """
    if kind is None:
        kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(type(default))
        if kind is None:
            raise TypeError(f"option(default={default!r}) needs kind=")
    meta = dict(help=help, kind=kind, choices=choices, minimum=minimum, maximum=maximum, flag=flag,
                aliases=tuple(aliases), cli=cli, metavar=metavar, what=what or getattr(choices, "what", None),
                flag_help=flag_help)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return field(default=default, metadata=meta)


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def choices_of(f: dataclasses.Field) -> tuple[str, ...] | None:
    """The allowed names: a sequence, a registry, or a zero-argument callable (read late)."""
    c = f.metadata.get("choices")
    if c is None:
        return None
    if hasattr(c, "names"):
        return tuple(c.names())
    return tuple(c() if callable(c) else c)


# ---------------------------------------------------------------- values
def parse_sets(text: str) -> list[list[int]]:
    """``"3,4;7"`` -> ``[[3, 4], [7]]``; ranges ``"3-5"`` expand.

    >>> parse_sets("3,4;10-12")
    [[3, 4], [10, 11, 12]]
    """
    out = []
    for part in text.split(";"):
        layers: list[int] = []
        for tok in part.split(","):
            tok = tok.strip()
            if not tok:
                continue
            try:
                if "-" in tok:
                    a, b = tok.split("-")
                    layers += list(range(int(a), int(b) + 1))
                else:
                    layers.append(int(tok))
            except ValueError:
                raise PrunescopeError(f"bad layer set {part!r}: use e.g. '3,4;7' or '10-12'") from None
        if layers:
            out.append(layers)
    return out


def _limit(v, bad):
    """A document limit: a whole number of docs (at least 1) or a fraction of each task in (0, 1)."""
    if _is_int(v) and v >= 1:
        return v
    if isinstance(v, float) and 0 < v < 1:
        return v
    if isinstance(v, float) and v >= 1 and v.is_integer():
        return int(v)
    return bad()


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def coerce(value: Any, kind: str, name: str) -> Any:
    """``value`` (from Python, YAML or a CLI string) as the field's kind, or a PrunescopeError."""
    def bad():
        raise PrunescopeError(f"{name} must be {KINDS[kind]}, got {value!r}")

    if value is None and (kind.endswith("?") or kind == "limit"):
        return None
    base = kind.rstrip("?")
    if isinstance(value, str) and kind not in ("str", "str?", "names", "paths"):
        text = value.strip()
        try:
            if kind == "limit":
                return _limit(float(text) if "." in text else int(text), bad)
            if base == "int":
                return int(text)
            if base == "float":
                return float(text)
            if kind == "bool":
                return {"true": True, "false": False, "1": True, "0": False}[text.lower()]
            if kind in ("ints", "numbers"):
                items = [t for t in text.split(",") if t.strip()]
                return [int(t) if kind == "ints" else float(t) for t in items]
            if kind == "sets":
                return parse_sets(text)
        except (ValueError, KeyError):
            bad()
        bad()
    if base == "int":
        return value if _is_int(value) else bad()
    if base == "float":
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else bad()
    if base == "str":
        return value if isinstance(value, str) else bad()
    if kind == "bool":
        return value if isinstance(value, bool) else bad()
    if kind in ("names", "paths"):
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()] if kind == "names" else [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        if kind == "paths" and isinstance(value, (list, tuple)) and all(hasattr(v, "__fspath__") or isinstance(v, str)
                                                                         for v in value):
            return [str(v) for v in value]
        bad()
    if kind == "ints":
        items = list(value) if isinstance(value, (list, tuple)) else bad()
        return items if all(_is_int(v) for v in items) else bad()
    if kind == "numbers":
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if not items or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
            bad()
        if len(set(items)) != len(items):
            raise PrunescopeError(f"{name} lists a value twice: {value!r}")
        return [float(v) for v in items]
    if kind == "sets":
        if isinstance(value, (list, tuple)) and all(isinstance(s, (list, tuple)) and all(_is_int(v) for v in s)
                                                    for s in value):
            return [list(s) for s in value]
        bad()
    if kind == "limit":
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return {k: _limit(v, bad) for k, v in value.items()}
        return _limit(value, bad)
    if kind == "dict":
        return dict(value) if isinstance(value, dict) else bad()
    raise TypeError(f"unknown option kind {kind!r}")


# ---------------------------------------------------------------- the base class
@dataclass
class Options:
    """Base of every options class: :meth:`check` validates every field (kind, choices, bounds),
    then the class's own cross-field :meth:`validate`; it returns ``self`` normalised."""

    def check(self, where: str = "", flags: bool = False) -> "Options":
        """Validate and normalise every field; messages name ``where + field`` (or the CLI flag)."""
        for f in fields(self):
            name = flag_of(f) if flags else where + f.name
            setattr(self, f.name, check_field(f, getattr(self, f.name), name))
        self.validate()
        return self

    def validate(self) -> None:
        """Cross-field rules (override)."""

    def replace(self, **changes) -> "Options":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_field(f: dataclasses.Field, value: Any, name: str) -> Any:
    value = coerce(value, f.metadata["kind"], name)
    choices = choices_of(f)
    if choices is not None and value is not None:
        for v in value if isinstance(value, list) else [value]:
            if v not in choices:
                what = f.metadata.get("what")
                raise PrunescopeError(f"{name} names {'an unknown ' + what + ' ' if what else ''}{v!r}; choose from "
                                      f"{', '.join(choices)}")
    lo, hi = f.metadata.get("minimum"), f.metadata.get("maximum")
    for v in (value if isinstance(value, list) else [value]):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if lo is not None and v < lo:
                if lo == 1 and isinstance(v, int):
                    raise PrunescopeError(f"{name} must be a positive integer, got {v}")
                raise PrunescopeError(f"{name} must be at least {lo:g}, got {v:g}")
            if hi is not None and v > hi:
                raise PrunescopeError(f"{name} must be at most {hi:g}, got {v:g}")
    return value


# ---------------------------------------------------------------- shared objects
DTYPES = ("float32", "bfloat16", "float16")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential", "cpu")


def valid_device(device: str) -> bool:
    return device == "cpu" or device.startswith("cuda")


@dataclass
class Placement(Options):
    """Where the model runs: one device, N processes with a model copy each, or one model sharded."""

    device: str = option("cpu", "torch device: cpu, cuda or cuda:N")
    dtype: str = option("float32", "weights dtype", choices=DTYPES)
    devices: int | None = option(None, "split the work over N processes, one model copy per GPU (with --device "
                                       "cuda); same as running under torchrun --nproc_per_node N", kind="int?",
                                 minimum=1)
    device_map: str | None = option(None, "shard one model over the visible GPUs with accelerate (models larger "
                                          "than a GPU)", kind="str?", choices=DEVICE_MAPS)
    max_memory: str | None = option(None, "memory per device for --device-map, e.g. '0=70GiB,1=70GiB' (implies "
                                          "--device-map auto)", kind="str?")

    def validate(self) -> None:
        if not valid_device(self.device):
            raise PrunescopeError(f"device must be cpu or cuda[:N], got {self.device!r}")

    def load_kwargs(self) -> dict:
        """Keyword arguments of :func:`prunescope.probe.models.load_model`."""
        return dict(device=self.device, dtype=self.dtype, device_map=self.device_map, max_memory=self.max_memory)


# the placement fields a single-device command offers (the rest need a command that splits work)
SINGLE_DEVICE = ("device", "dtype")


@dataclass
class Output(Options):
    """Where a command writes, and what it shows while it works."""

    out: str | None = option(None, "output folder (or file), e.g. runs/NAME (default: print only)", kind="str?")
    plot: bool = option(True, "write figures beside the tables", flag="--no-plot", flag_help="no figures")
    progress: bool = option(True, "progress bars (with rates) on long work", flag="--quiet",
                            flag_help="no progress bars")


# ---------------------------------------------------------------- the CLI, from the fields
def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type, only: Iterable[str] | None = None,
                  defaults: dict | None = None) -> None:
    """One flag per field of ``cls`` (``only``: a subset, in field order). A boolean field that
    defaults to True gets a negative flag (``--no-plot``, ``--quiet``)."""
    only = set(only) if only is not None else None
    for f in fields(cls):
        if not f.metadata.get("cli", True) or (only is not None and f.name not in only):
            continue
        kind, default = f.metadata["kind"], (defaults or {}).get(f.name, default_of(f))
        names = [flag_of(f), *f.metadata["aliases"]]
        help_text = f.metadata["help"] + _default_text(kind, default)
        if kind == "bool":
            action = "store_false" if default else "store_true"
            text = (f.metadata.get("flag_help") or "off: " + f.metadata["help"]) if default else f.metadata["help"]
            parser.add_argument(*names, dest=f.name, action=action, default=default, help=text)
            continue
        choices = choices_of(f) if kind in ("str", "str?") else None
        parser.add_argument(*names, dest=f.name, default=argparse.SUPPRESS, choices=choices,
                            metavar=f.metadata.get("metavar"), help=help_text,
                            nargs="+" if kind == "paths" else None)


def _default_text(kind: str, default: Any) -> str:
    if kind == "bool" or default is None or default == [] or default == {}:
        return ""
    if isinstance(default, list):
        default = ",".join(str(v) for v in default)
    return f" (default: {default})"


def from_namespace(cls: type, ns: argparse.Namespace, **fixed) -> Any:
    """Build and check ``cls`` from parsed flags (absent flags keep the field defaults)."""
    kw = {f.name: getattr(ns, f.name) for f in fields(cls) if hasattr(ns, f.name)}
    obj = cls(**{**kw, **fixed})
    return obj.check(flags=True)


# ---------------------------------------------------------------- pipeline sections
def derive(cls: type, name: str, default: Any = dataclasses.MISSING, *, why: str | None = None,
           **overrides) -> Any:
    """A pipeline-section field that *is* ``cls``'s field ``name``: same help, kind, choices and
    bounds; ``default`` (with ``why``) where the pipeline deliberately differs from the command;
    ``overrides`` (``kind``, ``help``, ``choices``, ``minimum``) where a section holds a list of the
    command's values or a narrower set.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Cmd(Options):
    ...     n: int = option(200, "items", minimum=1)
    >>> @dataclass
    ... class Section(Options):
    ...     n: int = derive(Cmd, "n", 60, why="smaller")
    >>> Section().n, fields(Section)[0].metadata["source"]
    (60, 'Cmd.n')
    """
    src = {f.name: f for f in fields(cls)}[name]
    meta = dict(src.metadata)
    if "choices" in overrides and "what" not in overrides:
        overrides["what"] = getattr(overrides["choices"], "what", None) or meta.get("what")
    meta.update(source=f"{cls.__name__}.{name}", why=why, command_default=default_of(src), **overrides)
    value = default_of(src) if default is dataclasses.MISSING else default
    if isinstance(value, (list, dict)):
        return field(default_factory=lambda d=value: copy.deepcopy(d), metadata=meta)
    return field(default=value, metadata=meta)
