"""Options objects: one dataclass per command, each setting with one name, type, default, help and check.

A command's settings live in one class (``SweepOptions``, ``PatchOptions``, ...), owned by the
package that runs the command. Each field is declared with its type annotation (how a CLI string
or a YAML value becomes a Python value: :func:`coerce`) and :func:`option`, which records its help
text, its allowed names (often a registry), its bounds and, where the flag is not simply
``--field-name``, a :class:`Flag`. From that one declaration come

* the CLI flags (:func:`add_arguments` / :func:`from_namespace`; flag = field name with dashes),
* the pipeline's config sections (:func:`derive` reuses a field with a stated other default),
* the docs (``docs/cli.md``, ``docs/pipeline.md`` are generated from the fields),
* the validation (:meth:`Options.check`), wherever the object came from.

The types a field can have: ``bool``, ``int``, ``float``, ``str``, ``list[str]`` (names; a string
is split at commas), ``list[int]``, ``list[float]`` (one number or several), ``list[list[int]]``
(layer sets, ``"3,4;7"``), ``dict``, :data:`Paths` and :data:`Limit`; each may add ``| None``.

Two objects are shared by every command: :class:`Placement` (where the model runs) and
:class:`Output` (where results go, figures, progress).

>>> from dataclasses import dataclass
>>> @dataclass
... class Demo(Options):
...     n: int = option(200, "items per probe", minimum=1)
...     kinds: list[str] = option(["a", "b"], "activations", choices=("a", "b", "c"))
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
import functools
import logging
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

from prunescope.core.errors import PrunescopeError


# ---------------------------------------------------------------- declaring a field
@dataclass(frozen=True)
class Flag:
    """Where a field's CLI flag differs from ``--field-name``.

    ``name``: another flag (``--quiet`` for ``progress``); ``aliases``: another spelling also taken,
    only where a tool the user knows spells the same setting so (lm-eval's ``--num_fewshot`` for
    ``--num-fewshot``); ``metavar``: the value's name in ``--help``; ``help``: the help of a
    boolean field's negative flag (``--quiet``: "no progress bars").
    """

    name: str | None = None
    aliases: tuple[str, ...] = ()
    metavar: str | None = None
    help: str | None = None


def option(default: Any, help: str, *, choices: Sequence[str] | Callable | None = None,
           minimum: float | None = None, maximum: float | None = None, what: str | None = None,
           cli: Flag = Flag()) -> Any:
    """A dataclass field with everything the CLI, the pipeline, the docs and the check need.

    The field's type is its annotation. ``choices`` is a sequence or a zero-argument callable (a
    registry's names, read late); ``what`` names one choice in messages ("unknown task 'x'"; a
    registry's own name by default); ``cli``: the flag, where it is not ``--field-name``.
    """
    meta = dict(help=help, choices=choices, minimum=minimum, maximum=maximum, flag=cli.name,
                aliases=tuple(cli.aliases), metavar=cli.metavar, what=what or getattr(choices, "what", None),
                flag_help=cli.help)
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


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Each field's resolved annotation (the classes' modules use ``from __future__ import annotations``)."""
    return get_type_hints(cls, include_extras=True)


def is_switch(cls: type, f: dataclasses.Field) -> bool:
    """A ``bool`` field: its CLI flag takes no value."""
    return field_types(cls)[f.name] is bool


# ---------------------------------------------------------------- values
class _Unfit(Exception):
    """A value that does not fit the field's type; :func:`coerce` names the field in the message.
    Its argument, where given, replaces "must be <what>, got <value>"."""


@dataclass(frozen=True)
class Reader:
    """How values of one type are read: ``text`` from a CLI (or YAML) string, ``value`` from any
    other Python or YAML value. Either raises for a value that does not fit (``text``: ValueError or
    KeyError; ``value``: :class:`_Unfit`). ``what`` says what a value must be, for messages;
    ``nargs="+"``: one flag takes several values (paths, which may hold commas)."""

    what: str
    text: Callable[[str], Any]
    value: Callable[[Any], Any]
    nargs: str | None = None


def _fit(ok: bool, value: Any) -> Any:
    if not ok:
        raise _Unfit
    return value


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _items(text: str, read: Callable[[str], Any]) -> list:
    return [read(t) for t in text.split(",") if t.strip()]


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


def _numbers(value: Any) -> list[float]:
    """One number or a list of different numbers (YAML ``ratio: 0.25`` or ``[0.25, 0.125]``)."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    _fit(bool(items) and all(_is_number(v) for v in items), items)
    if len(set(items)) != len(items):
        raise _Unfit(f"lists a value twice: {value!r}")
    return [float(v) for v in items]


def _limit(v: Any) -> int | float:
    """A document limit: a whole number of docs (at least 1) or a fraction of each task in (0, 1)."""
    if _is_int(v) and v >= 1:
        return v
    if isinstance(v, float) and 0 < v < 1:
        return v
    if isinstance(v, float) and v >= 1 and v.is_integer():
        return int(v)
    raise _Unfit


def check_doc_limit(limit: Any, name: str = "limit") -> int | float | None:
    """One task's document limit as :data:`Limit` reads it: None (all docs), a whole number of docs
    (at least 1; ``5.0`` -> ``5``) or a fraction of the task's docs in (0, 1).

    >>> check_doc_limit(0.2), check_doc_limit(5.0), check_doc_limit(None)
    (0.2, 5, None)
    """
    if limit is None:
        return None
    try:
        return _limit(limit)
    except _Unfit:
        raise PrunescopeError(f"{name} must be a positive number of docs or a fraction in (0, 1), "
                              f"got {limit}") from None


def _limits(value: Any) -> int | float | dict | None:
    if value is None:
        return None
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _limit(v) for k, v in value.items()}
    return _limit(value)


def _strings(value: Any) -> list[str]:
    return list(_fit(isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value), value))


def _paths(value: Any) -> list[str]:
    ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) or hasattr(v, "__fspath__") for v in value)
    return [str(v) for v in _fit(ok, value)]


def _no_text(text: str) -> Any:
    raise _Unfit


READERS: dict[Any, Reader] = {
    bool: Reader("true or false", lambda t: {"true": True, "false": False, "1": True, "0": False}[t.strip().lower()],
                 lambda v: _fit(isinstance(v, bool), v)),
    int: Reader("an integer", int, lambda v: _fit(_is_int(v), v)),
    float: Reader("a number", float, lambda v: float(_fit(_is_number(v), v))),
    str: Reader("a string", str, lambda v: _fit(isinstance(v, str), v)),
    list[str]: Reader("a list of names", lambda t: [v.strip() for v in t.split(",") if v.strip()], _strings),
    list[int]: Reader("a list of integers", lambda t: _items(t, int),
                      lambda v: list(_fit(isinstance(v, (list, tuple)) and all(_is_int(x) for x in v), v))),
    list[float]: Reader("a number or a list of numbers", lambda t: _items(t, float), _numbers),
    list[list[int]]: Reader("a list of layer sets", parse_sets, lambda v: [list(s) for s in _fit(
        isinstance(v, (list, tuple)) and all(isinstance(s, (list, tuple)) and all(_is_int(x) for x in s) for s in v),
        v)]),
    dict: Reader("a mapping", _no_text, lambda v: dict(_fit(isinstance(v, dict), v))),
}

#: File paths: on the CLI one flag takes several (``--protect-from a.csv b.csv``), never split at
#: commas; in Python or YAML one path or a list (``pathlib.Path`` too), read as strings.
Paths = Annotated[list[str], Reader("a list of paths", lambda t: [t], _paths, nargs="+")]

#: Documents per task: a whole number (at least 1), a fraction of each task's docs in (0, 1), None
#: (all), or a mapping of task names to those.
Limit = Annotated[int | float | dict[str, int | float] | None, Reader(
    "a positive integer, a fraction in (0, 1), null, or a mapping of task names to those",
    lambda t: _limit(float(t) if "." in t else int(t)), _limits)]


def _without_none(annotation: Any) -> tuple[Any, bool]:
    """``int | None`` -> ``(int, True)``; ``int`` -> ``(int, False)``."""
    args = get_args(annotation)
    if get_origin(annotation) in (Union, types.UnionType) and type(None) in args:
        rest = tuple(a for a in args if a is not type(None))
        return (rest[0] if len(rest) == 1 else Union[rest]), True
    return annotation, False


def reader_of(annotation: Any) -> Reader:
    """The :class:`Reader` of a type (``None`` allowed or not: see :func:`coerce`)."""
    if get_origin(annotation) is Annotated:
        return next(m for m in annotation.__metadata__ if isinstance(m, Reader))
    try:
        return READERS[annotation]
    except (KeyError, TypeError):
        raise TypeError(f"options cannot read values of type {annotation!r}") from None


def coerce(value: Any, annotation: Any, name: str) -> Any:
    """``value`` (from Python, YAML or a CLI string) as the type ``annotation``, or a PrunescopeError.

    >>> coerce("3,4", list[int], "protect"), coerce(None, int | None, "n"), coerce(0.5, Limit, "limit")
    ([3, 4], None, 0.5)
    >>> coerce("many", int | None, "n")
    Traceback (most recent call last):
    ...
    prunescope.core.errors.PrunescopeError: n must be an integer or null, got 'many'
    """
    base, optional = _without_none(annotation)
    if value is None and optional:
        return None
    reader = reader_of(base)
    try:
        if not isinstance(value, str):
            return reader.value(value)
        try:
            return reader.text(value)
        except (ValueError, KeyError):  # a CLI string is bad as a whole, whatever part failed
            raise _Unfit from None
    except _Unfit as e:
        if e.args:
            raise PrunescopeError(f"{name} {e.args[0]}") from None
        what = reader.what + (" or null" if optional else "")
        raise PrunescopeError(f"{name} must be {what}, got {value!r}") from None


# ---------------------------------------------------------------- the base class
@dataclass
class Options:
    """Base of every options class: :meth:`check` validates every field (type, choices, bounds),
    then the class's own cross-field :meth:`validate`; it returns ``self`` normalised."""

    def check(self, where: str = "", flags: bool = False) -> "Options":
        """Validate and normalise every field; messages name ``where + field`` (or the CLI flag)."""
        for f in fields(self):
            name = flag_of(f) if flags else where + f.name
            setattr(self, f.name, check_field(type(self), f, getattr(self, f.name), name))
        self.validate()
        return self

    def validate(self) -> None:
        """Cross-field rules (override)."""

    def replace(self, **changes) -> "Options":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_field(cls: type, f: dataclasses.Field, value: Any, name: str) -> Any:
    """``value`` for the field ``f`` of ``cls``: of its type, among its choices, within its bounds
    (messages name the field ``name``)."""
    value = coerce(value, field_types(cls)[f.name], name)
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
#: where a CUDA build of torch comes from (the version is filled in; see docs/guide.md, "Running on a GPU machine")
CUDA_TORCH_INDEX = "https://download.pytorch.org/whl/cu128"


def valid_device(device: str) -> bool:
    """``cpu``, ``cuda`` or ``cuda:N`` (a pipeline config names one; a command also takes ``auto``).

    >>> valid_device("cuda:1"), valid_device("cuda1"), valid_device("tpu"), valid_device("auto")
    (True, False, False, False)
    """
    return device in ("cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())


def cuda_torch_install() -> str:
    """The pip line that installs a CUDA build of the torch version in use.

    >>> cuda_torch_install().startswith("pip install torch==") and "--index-url" in cuda_torch_install()
    True
    """
    import torch

    return f"pip install torch=={torch.__version__.split('+')[0]} --index-url {CUDA_TORCH_INDEX}"


def cuda_problem(device: str) -> str | None:
    """Why torch cannot run on ``device`` here, in one line (None when it can, or for ``cpu``).

    >>> cuda_problem("cpu") is None
    True
    """
    import torch

    if not device.startswith("cuda"):
        return None
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return (f"--device {device}: this torch build ({torch.__version__}) has no CUDA; install a CUDA build of "
                f"the same version first: {cuda_torch_install()} (then `prunescope doctor` shows the GPUs)")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return (f"--device {device}: torch {torch.__version__} is a CUDA build but sees no GPU; check the driver "
                "(nvidia-smi) and CUDA_VISIBLE_DEVICES, or use --device cpu")
    index = torch.device(device).index
    if index is not None and index >= count:
        return f"--device {device}: {count} CUDA GPU(s) are visible (cuda:0 to cuda:{count - 1})"
    return None


_ANNOUNCED: set[str] = set()  # the placement notes said in this process


def resolve_placement(device: str, dtype: str, *, sharded: bool = False) -> tuple[str, str]:
    """``(device, dtype)`` with ``auto`` resolved, or a PrunescopeError for a device torch cannot use.

    ``device="auto"``: ``cuda`` when torch sees a GPU, else ``cpu`` (``sharded``: accelerate places
    the layers, so the device stays ``cpu``); ``dtype="auto"``: bfloat16 on a GPU (float16 where it
    has no bfloat16), float32 on the CPU. What ``auto`` chose is said when the model loads
    (:func:`announce_placement`).

    >>> resolve_placement("cpu", "auto"), resolve_placement("cpu", "bfloat16")
    (('cpu', 'float32'), ('cpu', 'bfloat16'))
    """
    import torch

    gpu = torch.cuda.is_available() and torch.cuda.device_count() > 0
    chosen = device if device != "auto" else ("cuda" if gpu and not sharded else "cpu")
    problem = cuda_problem(chosen)
    if problem:
        raise PrunescopeError(problem)
    on_gpu = chosen.startswith("cuda") or (sharded and gpu)
    half = "bfloat16" if not on_gpu or torch.cuda.is_bf16_supported() else "float16"
    kind = dtype if dtype != "auto" else (half if on_gpu else "float32")
    return chosen, kind


def announce_placement(device: str, dtype: str, *, sharded: bool = False) -> None:
    """Say, once per choice, what ``auto`` chose for the asked ``device`` / ``dtype``: an INFO record
    of the ``prunescope`` logger, which the CLI prints on stderr unless ``--quiet`` (in Python:
    ``logging.basicConfig(level="INFO")``). :func:`prunescope.probe.models.load_model` calls it
    once the model's input is known good, so a refused command prints only its error line."""
    import torch

    chosen, kind = resolve_placement(device, dtype, sharded=sharded)
    on_gpu = chosen.startswith("cuda") or (sharded and torch.cuda.is_available())
    if not (device == "auto" or (dtype == "auto" and on_gpu)):  # float32 on an asked-for CPU goes without saying
        return
    why = ("the dtype for a GPU" if device != "auto" else
           torch.cuda.get_device_name(torch.device(chosen).index or 0) if chosen.startswith("cuda") else
           "accelerate places the layers (--device-map)" if sharded else
           f"torch {torch.__version__} has no CUDA" if torch.version.cuda is None else "no CUDA GPU visible")
    note = f"prunescope: placement {chosen}, {kind} (auto: {why})"
    if note not in _ANNOUNCED:
        _ANNOUNCED.add(note)
        logging.getLogger("prunescope").info(note)


@dataclass
class Placement(Options):
    """Where the model runs: one device, N processes with a model copy each, or one model sharded.

    ``auto`` (the default) is resolved by :meth:`check` (:func:`resolve_placement`): a GPU with
    bfloat16 when torch sees one, else the CPU with float32.

    >>> Placement(device="cpu").check().dtype
    'float32'
    """

    device: str = option("auto", "torch device: auto (cuda when torch sees a GPU, else cpu), cpu, cuda or cuda:N")
    dtype: str = option("auto", "weights dtype: auto (bfloat16 on a GPU, float32 on the CPU)",
                        choices=("auto", *DTYPES))
    devices: int | None = option(None, "split the work over N processes, one model copy per GPU (with --device "
                                       "cuda); same as running under torchrun --nproc_per_node N", minimum=1)
    device_map: str | None = option(None, "shard one model over the visible GPUs with accelerate (models larger "
                                          "than a GPU)", choices=DEVICE_MAPS)
    max_memory: str | None = option(None, "memory per device for --device-map, e.g. '0=70GiB,1=70GiB' (implies "
                                          "--device-map auto)")

    def validate(self) -> None:
        if self.device != "auto" and not valid_device(self.device):
            raise PrunescopeError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        sharded = self.device_map is not None or bool(self.max_memory)
        # what was asked goes to load_model, which resolves it again and says what auto chose
        self._asked = getattr(self, "_asked", None) or (self.device, self.dtype)
        self.device, self.dtype = resolve_placement(self.device, self.dtype, sharded=sharded)

    def load_kwargs(self) -> dict:
        """Keyword arguments of :func:`prunescope.probe.models.load_model` (the device and dtype as
        asked, ``auto`` included, so that the load says what it chose)."""
        device, dtype = getattr(self, "_asked", None) or (self.device, self.dtype)
        return dict(device=device, dtype=dtype, device_map=self.device_map, max_memory=self.max_memory)


# the placement fields a single-device command offers (the rest need a command that splits work)
SINGLE_DEVICE = ("device", "dtype")


@dataclass
class Output(Options):
    """Where a command writes, and what it shows while it works.

    Without ``overwrite`` a command resumes in its ``out`` (same settings) or refuses it (other
    settings); with it, what an earlier run wrote there is removed first, once the input is checked
    (:func:`prunescope.core.overwrite.remove_previous`).
    """

    out: str | None = option(None, "output folder (or file), e.g. runs/NAME (default: print only)")
    plot: bool = option(True, "write figures beside the tables", cli=Flag("--no-plot", help="no figures"))
    progress: bool = option(True, "progress bars (with rates) on long work",
                            cli=Flag("--quiet", help="no progress bars"))
    overwrite: bool = option(False, "start over: remove what an earlier run wrote at --out (its own files, or the "
                                    "whole folder of a prunescope run), after the input is checked")


#: What a flag name means where several commands take it: their fields use these texts, so a
#: name keeps one meaning everywhere (``tests/test_cli.py`` checks that no flag has two; the flag
#: table of ``docs/cli.md`` lists them). A command adds only its default (or that the flag is
#: required), in parentheses: ``(default: ...)``.
SHARED_MEANINGS = {
    "model": "model folder, .gguf file, alias (gemma3-270m) or hub id",
    "seed": "seed of every random draw of the command (items, pairs, texts, prompts, sampling, data order, "
            "LoRA init)",
    "shots": "arithmetic probes: solved examples before each prompt",
    "loss_text": "a text set whose teacher-forced loss is scored: .txt (one text per line) or .jsonl with a "
                 "'text' field",
    "calibration": "calibration texts of Block Influence and angular distance: .txt (one text per line) or "
                   ".jsonl with a 'text' field",
    "batch_size": "rows per forward",
    "slots": "sequences generated together (the generation engine's slots; a finished one is replaced at once)",
}


# ---------------------------------------------------------------- the CLI, from the fields
def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type, only: Iterable[str] | None = None) -> None:
    """One flag per field of ``cls`` (``only``: a subset, in field order). A boolean field that
    defaults to True gets a negative flag (``--no-plot``, ``--quiet``)."""
    only = set(only) if only is not None else None
    for f in fields(cls):
        if only is not None and f.name not in only:
            continue
        names, default, m = [flag_of(f), *f.metadata["aliases"]], default_of(f), f.metadata
        if is_switch(cls, f):
            text = (m.get("flag_help") or "off: " + m["help"]) if default else m["help"]
            parser.add_argument(*names, dest=f.name, action="store_false" if default else "store_true",
                                default=default, help=text)
            continue
        base, _ = _without_none(field_types(cls)[f.name])
        parser.add_argument(*names, dest=f.name, default=argparse.SUPPRESS,
                            choices=choices_of(f) if base is str else None, metavar=m.get("metavar"),
                            help=m["help"] + _default_text(default), nargs=reader_of(base).nargs)


def _default_text(default: Any) -> str:
    if default is None or default == [] or default == {}:
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
    """A pipeline-section field that *is* ``cls``'s field ``name``: same help, choices and bounds
    (its type is the section's annotation: a section may hold a list of the command's values, or
    require a value where the command takes None); ``default`` (with ``why``) where the pipeline
    deliberately differs from the command; ``overrides`` (``help``, ``choices``, ``minimum``,
    ``what``) where a section holds a narrower set.

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
