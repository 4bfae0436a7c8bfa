"""When a finished pipeline stage still counts: its settings against the config's.

A stage re-runs when its own settings or any earlier stage's change (:func:`stage_settings`). A
stage's marker (``.stages/<stage>.json``) records the settings it ran with, and
:func:`same_settings` compares them with the config's *tolerating options the marker does not
know that are at their defaults*: a newer prunescope that adds an option (whose default keeps the
old behaviour) does not throw away finished stages. Markers written before the settings were kept
hold only a hash (``key``); :func:`legacy_match` accepts one when it equals the hash of the
current settings with some of the options added since then (:data:`ADDED_SINCE_HASH_MARKERS`)
left out at their defaults.

>>> old = {"seed": 0, "recover": {"modes": ["sgr"]}}
>>> new = {"seed": 0, "recover": {"modes": ["sgr"], "train_seeds": []}}
>>> same_settings(old, new, {("recover", "train_seeds"): []})
True
>>> same_settings(old, {"seed": 0, "recover": {"modes": ["sgr"], "train_seeds": [1, 2]}}, {("recover", "train_seeds"): []})
False
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import MISSING, fields

#: options added after markers held only a hash; a hash marker matches the current settings with any
#: of these left out where they are at their defaults
ADDED_SINCE_HASH_MARKERS = (("recover", "train_seeds"), ("recover", "budgets"), ("recover", "match"),
                            ("recover", "seeded_budgets"), ("recover", "dose_modes"), ("recover", "long_prompts"),
                            ("prune", "layers"))

#: what is no stage's setting: where and how fast the run happens
NOT_SETTINGS = ("device", "out", "study")
SPEED_ONLY = {"evaluate": ("batch_size", "slots", "workers")}


def stage_settings(cfg: dict, stage: str, stages: tuple[str, ...]) -> dict:
    """The settings ``stage`` depends on: the top level (but where and how fast it runs) and every
    section up to the stage's own (later sections cannot change it)."""
    upto = stages[: stages.index(stage) + 1]
    part = {k: v for k, v in cfg.items() if k not in (*stages, *NOT_SETTINGS)} | {s: cfg.get(s) for s in upto}
    for section, keys in SPEED_ONLY.items():
        if isinstance(part.get(section), dict):
            part[section] = {k: v for k, v in part[section].items() if k not in keys}
    return part


def settings_key(settings: dict) -> str:
    """A short hash of the settings (what markers held before they kept the settings)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def option_defaults(sections: dict[str, type], top: type) -> dict[tuple, object]:
    """``{(section, option): default}`` of the config's typed sections, ``("", option)`` at the top."""
    out = {}
    for name, cls in [("", top), *sections.items()]:
        for f in fields(cls):
            default = f.default if f.default is not MISSING else (
                f.default_factory() if f.default_factory is not MISSING else MISSING)
            if default is not MISSING:
                out[(name, f.name)] = default
    return out


def _known(settings: dict, section: str, option: str) -> bool:
    return option in settings if not section else isinstance(settings.get(section), dict) and option in settings[section]


def _value(settings: dict, section: str, option: str):
    return settings[option] if not section else settings[section][option]


def _without(settings: dict, drop: list[tuple[str, str]]) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in settings.items()}
    for section, option in drop:
        (out if not section else out[section]).pop(option, None)
    return out


def same_settings(stored: dict, current: dict, defaults: dict[tuple, object]) -> bool:
    """Whether a stage run with ``stored`` settings stands for ``current``: equal once the options
    ``stored`` does not know, where ``current`` holds them at their defaults, are left out."""
    extra = [(s, o) for (s, o) in defaults if _known(current, s, o) and not _known(stored, s, o)
             and _value(current, s, o) == defaults[(s, o)]]
    return json.dumps(_without(current, extra), sort_keys=True) == json.dumps(stored, sort_keys=True)


def legacy_match(key: str, current: dict, defaults: dict[tuple, object]) -> bool:
    """Whether a hash-only marker's ``key`` stands for ``current``: the hash of the current settings
    with any subset of :data:`ADDED_SINCE_HASH_MARKERS` left out where they are at their defaults."""
    at_default = [(s, o) for s, o in ADDED_SINCE_HASH_MARKERS
                  if (s, o) in defaults and _known(current, s, o) and _value(current, s, o) == defaults[(s, o)]]
    return any(settings_key(_without(current, list(drop))) == key
               for n in range(len(at_default) + 1) for drop in itertools.combinations(at_default, n))
