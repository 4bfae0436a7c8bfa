"""The pipeline config: one YAML file describes a whole study, checked completely before any work.

Each section is an options class whose fields *are* the commands' fields (:func:`prunescope.core.options.derive`):
the same help, allowed names and bounds; each field's type is its annotation. Where the pipeline deliberately uses another
default than the command (a smaller sweep, fewer pairs, shorter training examples), the field
says so with its reason, here and in ``docs/pipeline.md``. The loaded config is a plain dict of
sections (``cfg["prune"]["ratio"]``); its values decide each stage's cache key.

>>> cfg = load_config_text("name: t\\nprune: {ratio: 0.25}\\n")
>>> cfg["prune"]["ratio"], cfg["prune"]["strategies"]
([0.25], ['bi'])
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

from prunescope.analysis.evaluate import TASKS, EvalOptions
from prunescope.circuits.pairs import PAIR_PROBES
from prunescope.circuits.commands import PatchOptions
from prunescope.core.errors import PrunescopeError
from prunescope.probe.models import is_model_alias, model_aliases
from prunescope.core.options import (
    DTYPES, SHARED_MEANINGS, Options, Output, Placement, check_field, default_of, derive, option, valid_device,
)
from prunescope.probe.sweep import SweepOptions
from prunescope.probe.tasks import PROBES
from prunescope.prune.commands import STRATEGIES, PruneOptions, ScoreOptions
from prunescope.recover.data import PROMPT_SETS
from prunescope.recover.sgr import SGROptions
from prunescope.recover.train import RecoverOptions, split_mode

STAGES = ("localize", "score", "prune", "recover", "evaluate", "report")
# what each stage writes: removed before a stage re-runs with changed settings (a crashed stage
# with unchanged settings keeps its files and resumes from them)
STAGE_OUTPUTS = {"localize": ["localize"], "score": ["score"], "prune": ["prune"], "recover": ["recover"],
                 "evaluate": ["eval", "probes.csv", "probes.jsonl"],
                 "report": ["report.md", "report.html", "retention.csv", "retention.jsonl", "retention.png",
                            "probes.png", "signatures.csv", "signatures.jsonl", "recover_seeds.csv",
                            "recover_seeds.jsonl", "dose.csv", "dose.jsonl", "dose_steps.csv", "dose_steps.jsonl",
                            "dose.png"]}

SMALLER = "pipeline-sized: a whole study runs every stage, so each stays minutes long on a CPU"


@dataclass
class Localize(Options):
    """``localize``: the layer-skip sweep (``prunescope sweep``), patching (``prunescope patch``) and
    the optional single-layer ablation of benchmarks (the paper's experiment 1)."""

    probes: list[str] = derive(SweepOptions, "probes", ["arithmetic_multi", "brackets", "copy"], choices=PROBES,
                               why="the three probes of the paper's circuits",
                               help="probes of the layer-skip sweep (built-in names)")
    items: int = derive(SweepOptions, "items", 60, why=SMALLER)
    shots: int = derive(SweepOptions, "shots", 3, why="3-shot addition: the base model then answers most items, so "
                                                       "a skipped layer's loss shows")
    ops: list[str] = derive(SweepOptions, "ops", ["+"], why="addition only, the paper's arithmetic probe")
    patch_probes: list[str] = derive(PatchOptions, "probe", ["arithmetic", "brackets"], choices=tuple(PAIR_PROBES),
                                     what="patching probe", help="probes to patch (one patching run each)")
    pairs: int = derive(PatchOptions, "pairs", 16, why=SMALLER)
    method: str = derive(PatchOptions, "method", "both", why="both maps and their agreement")
    positions: int = derive(PatchOptions, "positions", 6, why=SMALLER)
    kinds: list[str] = derive(PatchOptions, "kinds")
    ablate_tasks: list[str] = option([], "benchmarks scored with each single layer skipped (the paper's "
                                         "experiment 1)", choices=lambda: tuple(TASKS), what="task")
    ablate_limit: int = option(20, "docs per benchmark and skipped layer", minimum=1)
    ablate_every: int = option(1, "ablate every k-th layer (1 = all)", minimum=1)


@dataclass
class Score(Options):
    """``score``: layer scores (``prunescope score``) from the sweep, the patching maps and BI."""

    texts: int = derive(ScoreOptions, "texts")


@dataclass
class Prune(Options):
    """``prune``: one pruned checkpoint per strategy and ratio (``prunescope prune``), and one per
    fixed layer set (``layers``)."""

    ratio: list[float] = derive(PruneOptions, "ratio", [0.25],
                                help="fraction of layers to drop; a list gives one pruned model per strategy and ratio")
    strategies: list[str] = derive(PruneOptions, "strategy", ["bi"], help="pruning strategies")
    protect_top: int = derive(PruneOptions, "protect_top", 0, minimum=0, why="0 = no protected arm",
                              help="how many top layers of each protect_patched patching map are protected; > 0 "
                                   "adds the 'bi-protected' arm (BI that never drops them)")
    protect_patched: list[str] = option(["arithmetic"], "patched probes whose per-layer patching effect ranks the "
                                                        "layers to protect (their union)")
    select_tasks: list[str] = derive(PruneOptions, "select_tasks")
    select_docs: int = derive(PruneOptions, "select_docs")
    texts: int = derive(PruneOptions, "texts")
    layers: dict = option({}, "fixed layer sets {name: [layers]}: each adds the pruned model <name> (stage "
                              "pruned-<name>) dropping exactly those layers, beside the strategies x ratios ones, "
                              "e.g. {paper-12.5: [14, 15, 16, 24]} (a layer beyond the model is refused when it loads)")


@dataclass
class Recover(Options):
    """``recover``: SGR generation (``prunescope sgr``) once, then QLoRA (``prunescope recover``) per
    pruned model and mode. Each arm is evaluated (the ``evaluate`` section's benchmarks and probes)
    as soon as it is trained, beside the next arm's training when ``evaluate.workers`` > 1: an arm
    whose scores are finished is not trained again, so a run folder copied to another machine
    without its weights resumes at the first arm not evaluated. A ``linear`` arm repairs the pruned
    model without training (generic calibration texts), ``linear_circuit`` with ``circuit_mix``
    circuit texts, both on the run's base model; ``linear+sgr`` trains the repaired model like the
    ``sgr`` arm (the same SGR file). Only arms that train need the SGR file. ``budgets`` trains each
    training arm once per response-token budget (``<pruned>-<mode>~3M``), ``match: steps`` gives
    every training arm at a budget the optimizer steps of the first training mode there, and
    ``seeded_budgets`` the budgets trained once per ``train_seeds`` seed."""

    modes: list[str] = derive(RecoverOptions, "mode", [], help="recovery modes (none: no recovery)")
    on: list[str] = option(["bi"], "pruned models to recover (names from prune: bi, bi-protected, bi-25, ...)")
    prompts: str = derive(SGROptions, "prompts")
    max_prompts: int = derive(SGROptions, "max_prompts", 600, why="the whole built-in prompt set")
    temperature: float = derive(SGROptions, "temperature")
    max_new_tokens: int = derive(SGROptions, "max_new_tokens")
    steps: int | None = derive(RecoverOptions, "steps")
    token_budget: int | None = derive(RecoverOptions, "token_budget")
    max_seq_len: int = derive(RecoverOptions, "max_seq_len", 1024,
                              why="the built-in prompts' answers are short; 8192 only costs memory")
    quant: bool = derive(RecoverOptions, "quant")
    long_prompts: str = derive(RecoverOptions, "long_prompts")
    train_batch: int | None = derive(RecoverOptions, "train_batch")
    micro_batch: int = derive(RecoverOptions, "micro_batch")
    max_grad_norm: float | None = derive(RecoverOptions, "max_grad_norm")
    adapter_dtype: str = derive(RecoverOptions, "adapter_dtype")
    heldout: int = derive(RecoverOptions, "heldout")
    eval_every: int | None = derive(RecoverOptions, "eval_every", None,
                                    why="none: a quarter of steps, or 25 steps under a token budget")
    lr: float | None = derive(RecoverOptions, "lr")
    warmup: int | None = derive(RecoverOptions, "warmup")
    recipe: str = derive(RecoverOptions, "recipe")
    circuit_mix: float = derive(RecoverOptions, "circuit_mix", 0.5,
                                why="the linear_circuit arms' share; the linear arms fit on generic texts alone")
    texts: int | None = derive(RecoverOptions, "texts")
    objective: str | None = derive(RecoverOptions, "objective")
    ridge: float | None = derive(RecoverOptions, "ridge")
    train_seeds: list[int] = option([], "train every arm once per seed (LoRA initialisation and data order), "
                                        "arms named <pruned>-<mode>@<seed>, compared over their seeds in "
                                        "recover_seeds.csv (with budgets: every training arm at seeded_budgets); "
                                        "none: once, with the run's seed", minimum=0)
    budgets: list[int] = option([], "response-token budgets (a dose axis): every arm that trains is trained once "
                                    "per budget, arms named <pruned>-<mode>~<budget> (300k, 3M, 1.5M); an arm that "
                                    "only repairs (linear) once, unsuffixed; none: one budget, token_budget or steps "
                                    "(then leave those two unset)", minimum=1)
    match: str = option("tokens", "what the training arms share at each budget: tokens (each trains until the "
                                  "budget's response tokens) or steps (each trains the optimizer steps that the "
                                  "first of dose_modes (else of the training modes) needs to reach the budget, so "
                                  "their tokens differ, e.g. longer external references; both are recorded)",
                        choices=("tokens", "steps"))
    seeded_budgets: list[int] = option([], "budgets (among budgets) at which every training arm is trained once per "
                                           "train_seeds seed, <pruned>-<mode>~<budget>@<seed>; at the others once, with "
                                           "the run's seed; none: every budget", minimum=1)
    dose_modes: list[str] = option([], "training modes trained at every budget (the dose axis, e.g. [sgr, external]); "
                                       "the other training modes train once, with the run's seed, at the first "
                                       "seeded budget (else the middle one); none: every training mode at every "
                                       "budget")


@dataclass
class Evaluate(Options):
    """``evaluate``: benchmarks (``prunescope eval``) and probe accuracy for base, pruned and recovered."""

    tasks: list[str] = derive(EvalOptions, "tasks", ["arc_easy", "piqa", "gsm8k"], choices=tuple(TASKS),
                              why="two classification tasks and GSM8K: the retention gap in minutes")
    limit: int | None = derive(EvalOptions, "limit", 50, why=SMALLER)
    limits: dict = option({}, "per-task limits, e.g. {gsm8k: 10}")
    num_fewshot: int | None = derive(EvalOptions, "num_fewshot")
    batch_size: int = derive(EvalOptions, "batch_size")
    slots: int | None = derive(EvalOptions, "slots")
    # with a 262k vocabulary (Gemma) one 14k-token MMLU request is 14k x 262k fp32 logits = 14 GiB
    max_length: int | None = derive(EvalOptions, "max_length")
    probe_items: int = option(60, "probe items per stage for the probe-accuracy table", minimum=1)
    xsum_file: str | None = derive(EvalOptions, "xsum_file")
    workers: int = option(1, "stages evaluated side by side, one process each (a GPU with memory to spare: "
                             "one evaluation leaves it idle while lm-eval and the code sandbox use the CPU; "
                             "each process holds only the model of the stage it evaluates; a stage that "
                             "fails beside the others, out of memory say, is evaluated again alone after them)",
                          minimum=1)


@dataclass
class Study(Options):
    """The top level: the model, where it runs, the seed(s) and the five sections."""

    name: str | None = option(None, "run name (default: the config file's name)")
    out: str | None = derive(Output, "out", help="run folder (default: runs/NAME)")
    model: str = option("default", SHARED_MEANINGS["model"] + " (default: the embedded SmolLM2-135M-Instruct, "
                                                              "also written 'default')")
    device: str = derive(Placement, "device", "cpu", why="not part of any stage's key, so a run folder started on a "
                                                          "GPU machine continues on another; name cuda (or auto) for "
                                                          "a GPU")
    dtype: str = derive(Placement, "dtype", "float32", choices=DTYPES, help="weights dtype",
                        why="part of every stage's key, so a config names it (auto would depend on the machine)")
    seed: int = option(0, SHARED_MEANINGS["seed"] + " (default: 0, the same for every stage)", minimum=0)
    seeds: list[int] = option([], "several seeds: one run per seed under OUT/seed-N, then compared", minimum=0)


SECTIONS: dict[str, type] = {"localize": Localize, "score": Score, "prune": Prune, "recover": Recover,
                             "evaluate": Evaluate}


# ---------------------------------------------------------------- reading
def _line(node) -> int:
    return node.start_mark.line + 1


def _fill(cls: type, node, where: str, src: str) -> dict:
    """Check one YAML mapping node against an options class; plain values with defaults."""
    import yaml

    if node is not None and not isinstance(node, yaml.MappingNode):
        raise PrunescopeError(f"{src}:{_line(node)}: '{where or 'the file'}' must be a mapping of keys")
    known = [f.name for f in fields(cls)] + (list(SECTIONS) if cls is Study else [])
    given = {k.value: (k, v) for k, v in (node.value if node is not None else [])}
    for key, (knode, _) in given.items():
        if key not in known:
            near = [k for k in known if k[:3] == key[:3]]
            raise PrunescopeError(f"{src}:{_line(knode)}: unknown key '{key}'{' under ' + where if where else ''}"
                                  f"{' (did you mean ' + near[0] + '?)' if near else ''}; known keys: "
                                  f"{', '.join(known)}")
    out = {}
    for f in fields(cls):
        full = f"{where}.{f.name}" if where else f.name
        _, vnode = given.get(f.name, (None, None))
        if vnode is None:
            out[f.name] = copy.deepcopy(default_of(f))
            continue
        value = yaml.safe_load(yaml.serialize(vnode))
        try:
            out[f.name] = check_field(cls, f, value, f"'{full}'")
        except PrunescopeError as e:
            raise PrunescopeError(f"{src}:{_line(vnode)}: {e}") from None
    return out


def _node(root, *path: str):
    node = root
    for key in path:
        node = next((v for k, v in getattr(node, "value", []) or [] if getattr(k, "value", None) == key), None)
        if node is None:
            return None
    return node


def load_config_text(text: str, src: str = "<config>") -> dict:
    """Parse and validate a config (YAML text); raises PrunescopeError naming the key and line."""
    import yaml

    try:
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise PrunescopeError(f"{src}:{mark.line + 1 if mark else '?'}: not valid YAML "
                              f"({getattr(e, 'problem', None) or e})") from None
    cfg = _fill(Study, root, "", src)
    for name, cls in SECTIONS.items():
        cfg[name] = _fill(cls, _node(root, name), name, src)
    _check_across(cfg, root, src)
    return cfg


def _check_across(cfg: dict, root, src: str) -> None:
    """Rules that tie sections together."""
    def bad(path: tuple[str, ...], msg: str):
        node = _node(root, *path)
        raise PrunescopeError(f"{src}:{_line(node) if node is not None else '?'}: '{'.'.join(path)}' {msg}")

    for r in cfg["prune"]["ratio"]:
        if not 0 < r < 1:
            bad(("prune", "ratio"), f"must be between 0 and 1, got {r}")
    if "skip-drop" in cfg["prune"]["strategies"] and not cfg["localize"]["probes"]:
        bad(("prune", "strategies"), "names 'skip-drop', which ranks layers by the layer-skip sweep: give "
                                     "localize.probes a probe")
    if "score" in cfg["prune"]["strategies"] and not cfg["localize"]["patch_probes"]:
        bad(("prune", "strategies"), "names 'score', which ranks layers by the score stage's patching_effect: "
                                     "give localize.patch_probes a probe")
    for p in cfg["prune"]["protect_patched"] if cfg["prune"]["protect_top"] else []:
        if p not in cfg["localize"]["patch_probes"]:
            bad(("prune", "protect_patched"), f"names {p!r}, which is not among the patched probes "
                                              f"{cfg['localize']['patch_probes']} (its per-layer patching effect "
                                              "ranks the layers to protect)")
    if "iterative-generated" in cfg["prune"]["strategies"]:
        from prunescope.analysis.evaluate import check_heldout, heldout_docs

        sel = cfg["prune"]["select_tasks"]
        for t in sel:
            if t not in TASKS:
                bad(("prune", "select_tasks"), f"names {t!r}, not a benchmark ({', '.join(TASKS)})")
        try:
            held = heldout_docs(sel, cfg["prune"]["select_docs"])
            ev = cfg["evaluate"]
            check_heldout({t: ix for t, ix in held.items() if t in ev["tasks"]},
                          {"default": ev["limit"], **ev["limits"]})
        except PrunescopeError as e:
            bad(("prune", "select_docs"), f"does not fit the evaluation: {e}")
    _check_recover(cfg, bad)
    for t in cfg["evaluate"]["limits"]:
        if t not in cfg["evaluate"]["tasks"]:
            bad(("evaluate", "limits"), f"names {t!r}, which is not in evaluate.tasks")
    limits = cfg["evaluate"]["limits"]
    if any(not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int) for k, v in limits.items()):
        bad(("evaluate", "limits"), f"maps task names to integers, got {limits!r}")
    xsum = cfg["evaluate"]["xsum_file"]
    if "xsum" in cfg["evaluate"]["tasks"] and not (xsum and Path(xsum).is_file()):
        bad(("evaluate", "xsum_file"), "must name an existing JSONL file {document, summary} when tasks include "
                                       "xsum (XSum does not ship offline)")
    model = cfg["model"]
    if not is_model_alias(model) and not Path(model).expanduser().exists() and "/" not in model:
        bad(("model",), f"is {model!r}: no such folder or .gguf file (use {', '.join(repr(a) for a in model_aliases())}, "
                        "a model folder or a .gguf path)")
    if cfg["device"] != "auto" and not valid_device(cfg["device"]):
        bad(("device",), f"must be auto, cpu or cuda[:N], got {cfg['device']!r}")


def _check_recover(cfg: dict, bad) -> None:
    """The recover section against the pruned models and its own options."""
    _check_layer_sets(cfg, bad)
    stages = set(pruned_names(cfg))
    for s in cfg["recover"]["on"] if cfg["recover"]["modes"] else []:
        if s not in stages:
            bad(("recover", "on"), f"names {s!r}, which is not pruned by this config ({', '.join(sorted(stages))})")
    prompts, modes = cfg["recover"]["prompts"], cfg["recover"]["modes"]
    if any(split_mode(m)[1] for m in modes) and prompts not in PROMPT_SETS and not Path(prompts).exists():
        bad(("recover", "prompts"), f"file {prompts} does not exist (or use one of {', '.join(PROMPT_SETS)})")
    if any(split_mode(m)[0] == "linear_circuit" for m in modes) and not cfg["recover"]["circuit_mix"]:
        bad(("recover", "circuit_mix"), "is 0, but the linear_circuit arms fit on circuit texts: give a share above 0 "
                                        "(or use the linear arm)")
    seeds = cfg["recover"]["train_seeds"]
    if len(set(seeds)) != len(seeds):
        bad(("recover", "train_seeds"), f"repeats a seed ({seeds}): each seed trains each arm once")
    _check_budgets(cfg["recover"], bad)


def _check_budgets(r: dict, bad) -> None:
    """``budgets``, ``match`` and ``seeded_budgets`` against each other and the single budget."""
    budgets, seeded = r["budgets"], r["seeded_budgets"]
    if len(set(budgets)) != len(budgets):
        bad(("recover", "budgets"), f"repeats a budget ({budgets}): each budget trains each arm once")
    for key in ("steps", "token_budget") if budgets else ():
        if r[key] is not None:
            bad(("recover", key), f"is set beside recover.budgets {budgets}: the budgets replace it (leave it unset)")
    if r["match"] == "steps" and (r["steps"] is not None or not (budgets or r["token_budget"])):
        bad(("recover", "match"), "is steps: the arms train the optimizer steps the first training mode needs for a "
                                  "token budget, so give recover.budgets (or token_budget) and leave steps unset")
    for b in seeded:
        if b not in budgets:
            bad(("recover", "seeded_budgets"), f"names {b}, which is not among recover.budgets {budgets}")
    if len(set(seeded)) != len(seeded):
        bad(("recover", "seeded_budgets"), f"repeats a budget ({seeded})")
    for m in r["dose_modes"]:
        if m not in r["modes"] or split_mode(m)[1] is None:
            bad(("recover", "dose_modes"), f"names {m!r}, which is not a training mode of recover.modes {r['modes']}")
    if r["dose_modes"] and not budgets:
        bad(("recover", "dose_modes"), "needs recover.budgets (the dose axis it puts these modes on)")
    if seeded and len(r["train_seeds"]) < 2:
        bad(("recover", "seeded_budgets"), "trains each arm once per training seed: give recover.train_seeds at "
                                           "least two seeds")


def _check_layer_sets(cfg: dict, bad) -> None:
    """``prune.layers``: names that no strategy (or strategy and ratio) takes, fit for a folder; each
    set non-empty layer numbers >= 0 without repeats (whether they exist is the model's to say)."""
    sets = cfg["prune"]["layers"]
    taken = {*STRATEGIES.names(), "bi-protected", *pruned_names({"prune": {**cfg["prune"], "layers": {}}})}
    for name, layers in sets.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            bad(("prune", "layers"), f"names a set {name!r}: use letters, digits, '.', '_' and '-' (a folder name)")
        if name in taken:
            bad(("prune", "layers"), f"names a set {name!r}, which a strategy or its pruned models already take "
                                     f"({', '.join(sorted(taken))}): give it another name")
        if (not isinstance(layers, list) or not layers
                or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in layers)):
            bad(("prune", "layers"), f"gives {name!r} {layers!r}: a set is a non-empty list of layer numbers >= 0")
        if len(set(layers)) != len(layers):
            bad(("prune", "layers"), f"gives {name!r} {layers}: a layer repeats")


def load_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise PrunescopeError(f"config file {path} does not exist")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise PrunescopeError(f"config file {path} is not UTF-8 text; give a YAML file") from None
    cfg = load_config_text(text, str(path))
    cfg["name"] = cfg["name"] or path.stem
    cfg["out"] = cfg["out"] or f"runs/{cfg['name']}"
    return cfg


def _percent(ratio: float) -> str:
    return f"{ratio * 100:g}"


def budget_label(tokens: int) -> str:
    """A token budget as arm names write it (``~<label>``): exact, in k or M from a thousand on.

    >>> budget_label(300000), budget_label(3_000_000), budget_label(10_000_000), budget_label(1_500_000)
    ('300k', '3M', '10M', '1.5M')
    >>> budget_label(120), budget_label(2500), budget_label(1_234_567)
    ('120', '2.5k', '1.234567M')
    """
    from decimal import Decimal

    for unit, size in (("M", 10**6), ("k", 10**3)):
        if tokens >= size:
            return format((Decimal(tokens) / size).normalize(), "f") + unit
    return str(tokens)


def budget_of(label: str) -> int:
    """The token budget a :func:`budget_label` names.

    >>> budget_of("1.5M"), budget_of("300k"), budget_of("120")
    (1500000, 300000, 120)
    """
    from decimal import Decimal

    size = {"M": 10**6, "k": 10**3}.get(label[-1:])
    return int(Decimal(label[:-1]) * size) if size else int(label)


def _arms_of_each(r: dict) -> list[tuple[str, str]]:
    """``(mode, name suffix)`` of each pruned model's arms, in the order they train: see :func:`recovered_names`."""
    seeds, budgets, modes = r.get("train_seeds") or [], r.get("budgets") or [], r["modes"]
    if not budgets:
        return [(m, k) for m in modes for k in [f"@{k}" for k in seeds] or [""]]
    seeded = r.get("seeded_budgets") or budgets
    dose = r.get("dose_modes") or [m for m in modes if split_mode(m)[1] is not None]
    single = (r.get("seeded_budgets") or [budgets[len(budgets) // 2]])[0]  # where the modes off the dose axis train
    out = [(m, "") for m in modes if split_mode(m)[1] is None]  # a repair alone trains nothing: no budget
    for b in budgets:
        label = f"~{budget_label(b)}"
        for m in (m for m in modes if split_mode(m)[1] is not None and (m in dose or b == single)):
            # the seeds vary the dose axis's modes (all training modes when dose_modes is not given)
            out += [(m, f"{label}@{k}") for k in seeds] if seeds and b in seeded and m in dose else [(m, label)]
    return out


def recovered_names(cfg: dict) -> list[str]:
    """The recovery arms of a config, ``<pruned>-<mode>``, or ``<pruned>-<mode>@<seed>`` per
    training seed (``recover.train_seeds``). With ``recover.budgets`` each mode that trains has one
    arm per budget, ``<pruned>-<mode>~<budget>`` (:func:`budget_label`), and one per seed at the
    ``seeded_budgets`` (default: every budget), ``<pruned>-<mode>~<budget>@<seed>``; a mode that only
    repairs has one arm, ``<pruned>-<mode>``. The order is the training order: per pruned model the
    repairs alone, then budget by budget as listed, so a run cut short holds whole budgets.

    >>> recovered_names({"recover": {"on": ["bi"], "modes": ["sgr", "linear+sgr"], "train_seeds": [0, 1]}})
    ['bi-sgr@0', 'bi-sgr@1', 'bi-linear+sgr@0', 'bi-linear+sgr@1']
    >>> recovered_names({"recover": {"on": ["bi"], "modes": ["sgr", "external", "linear"], "train_seeds": [0, 1],
    ...                              "budgets": [300000, 3000000], "seeded_budgets": [3000000]}})
    ... # doctest: +NORMALIZE_WHITESPACE
    ['bi-linear', 'bi-sgr~300k', 'bi-external~300k', 'bi-sgr~3M@0', 'bi-sgr~3M@1', 'bi-external~3M@0',
     'bi-external~3M@1']
    >>> recovered_names({"recover": {"on": ["bi"], "modes": ["sgr", "tune"], "budgets": [300000, 3000000, 10000000],
    ...                              "dose_modes": ["sgr"]}})
    ['bi-sgr~300k', 'bi-sgr~3M', 'bi-tune~3M', 'bi-sgr~10M']
    """
    return [f"{s}-{m}{k}" for s in cfg["recover"]["on"] for m, k in _arms_of_each(cfg["recover"])]


class Arm(NamedTuple):
    """What an arm's name says (:func:`split_arm`)."""

    pruned: str
    mode: str
    seed: int | None
    budget: int | None


def split_arm(name: str) -> Arm:
    """``(pruned, mode, training seed or None, token budget or None)`` of an arm name
    (:func:`recovered_names`); no mode holds a ``-``.

    >>> split_arm("bi-protected-linear_circuit+sgr@2")
    Arm(pruned='bi-protected', mode='linear_circuit+sgr', seed=2, budget=None)
    >>> split_arm("paper-12.5-sgr~1.5M@0"), split_arm("bi-25-external~300k")
    (Arm(pruned='paper-12.5', mode='sgr', seed=0, budget=1500000), Arm(pruned='bi-25', mode='external', seed=None, budget=300000))
    """
    name, _, seed = name.partition("@")
    name, _, budget = name.partition("~")
    pruned, mode = name.rsplit("-", 1)
    return Arm(pruned, mode, int(seed) if seed else None, budget_of(budget) if budget else None)


#: the strategy a fixed layer set (``prune.layers``) stands under in :func:`pruned_names` and its plan
FIXED = "fixed"


def pruned_names(cfg: dict) -> dict[str, tuple[str, float | None]]:
    """``{name: (strategy, ratio)}`` of the pruned models a config asks for: the strategy's name
    (``bi``, ``bi-protected``...) with one ratio, ``bi-25`` / ``bi-12.5`` with several; then each
    fixed layer set (``prune.layers``) under its own name as ``("fixed", None)``.

    >>> list(pruned_names({"prune": {"strategies": ["bi"], "ratio": [0.25, 0.125], "protect_top": 2}}))
    ['bi-25', 'bi-12.5', 'bi-protected-25', 'bi-protected-12.5']
    >>> pruned_names({"prune": {"strategies": ["bi"], "ratio": [0.25], "protect_top": 0,
    ...                         "layers": {"paper-12.5": [14, 15, 16, 24]}}})
    {'bi': ('bi', 0.25), 'paper-12.5': ('fixed', None)}
    """
    c = cfg["prune"]
    strategies = list(c["strategies"]) + (["bi-protected"] if c["protect_top"] else [])
    ratios = c["ratio"]
    return {**{(s if len(ratios) == 1 else f"{s}-{_percent(r)}"): (s, r) for s in strategies for r in ratios},
            **{name: (FIXED, None) for name in c.get("layers") or {}}}
