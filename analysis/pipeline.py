"""``prunescope run CONFIG.yaml``: localize -> score -> protect -> prune -> recover -> evaluate -> report.

One YAML file describes a whole study; every stage writes into ``OUT/`` (default
``runs/<name>``) and records ``OUT/.stages/<stage>.json`` when it is complete, so a rerun skips
finished stages and resumes an interrupted one (sweeps, patching, SGR generation and training
resume inside a stage too). The config is checked completely — keys, types, names, files —
before any work starts; a mistake names the key and its line.

    name: demo
    model: default            # base model: default, a folder or a .gguf file
    localize: {probes: [arithmetic_multi, brackets, copy], n: 40, patch: [arithmetic]}
    prune:    {ratio: 0.25, strategies: [bi, reverse], protect_top: 4}
    recover:  {modes: [sgr], on: [bi], n_prompts: 64, token_budget: 4000}
    evaluate: {tasks: [arc_easy, gsm8k, humaneval], limit: 20}

>>> cfg = load_config_text("name: t\\nprune: {ratio: 0.25}\\n")
>>> cfg["prune"]["ratio"], cfg["prune"]["strategies"]
([0.25], ['bi'])

``prune.ratio`` may list several ratios (one pruned model per strategy and ratio: ``pruned-bi-25``,
``pruned-bi-12.5``), and ``seeds: [0, 1, 2]`` runs the whole study once per seed into
``OUT/seed-N/`` and then compares the seeds (``OUT/seeds.csv``, ``seeds.png``, ``seeds.md``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path

from probe.errors import PrunescopeError
from probe.results import atomic_write_json, atomic_write_text, read_table, write_table

STAGES = ("localize", "score", "prune", "recover", "evaluate", "report")
# what each stage writes: removed before a stage re-runs with changed settings (a crashed stage
# with unchanged settings keeps its files and resumes from them)
STAGE_OUTPUTS = {"localize": ["localize"], "score": ["score"], "prune": ["prune"], "recover": ["recover"],
                 "evaluate": ["eval", "probes.csv", "probes.jsonl"],
                 "report": ["report.md", "report.html", "retention.csv", "retention.jsonl", "retention.png",
                            "probes.png", "signatures.csv", "signatures.jsonl"]}

# key -> (type(s), default); a nested dict is a section. "list" values are lists of str.
SCHEMA: dict = {
    "name": (str, None),
    "out": (str, None),
    "model": (str, "default"),
    "device": (str, "cpu"),
    "dtype": (str, "float32"),
    "seed": (int, 0),
    "seeds": ("ints", []),  # several: one run per seed under OUT/seed-N, then compared (analysis/seeds.py)
    "localize": {
        "probes": (list, ["arithmetic_multi", "brackets", "copy"]),
        "n": (int, 60),
        "shots": (int, 3),
        "ops": (str, "+"),
        "patch": (list, ["arithmetic", "brackets"]),
        "patch_n": (int, 16),
        "patch_method": (str, "both"),
        "patch_positions": (int, 6),
        "patch_kinds": (list, ["resid_post", "attn_out", "mlp_out", "head"]),
        # single-layer ablation of benchmarks (the paper's experiment 1): each layer skipped in turn
        "ablate_tasks": (list, []),
        "ablate_limit": (int, 20),
        "ablate_every": (int, 1),  # every k-th layer (1 = all)
    },
    "score": {"n_texts": (int, 64)},
    "prune": {
        "ratio": ("numbers", [0.25]),  # one ratio or a list: a pruned model per strategy and ratio
        "strategies": (list, ["bi"]),
        "protect_top": (int, 0),  # > 0: also "bi-protected", BI that never drops the top layers of ...
        "protect_from": (list, ["arithmetic"]),  # ... each of these patching maps (their union)
    },
    "recover": {
        "modes": (list, []),
        "on": (list, ["bi"]),
        "prompts": (str, "builtin"),
        "n_prompts": (int, 600),
        "temperature": (float, 0.9),
        "max_new_tokens": (int, 256),
        "steps": ((int, type(None)), None),
        "token_budget": ((int, type(None)), None),
        "max_seq_len": (int, 1024),
        "quant": (bool, True),
        "micro_batch": (int, 4),
        "eval_n": (int, 32),
        "lr": (float, 2e-4),
        "warmup": (int, 50),
    },
    "evaluate": {
        "tasks": (list, ["arc_easy", "piqa", "gsm8k"]),
        "limit": ((int, type(None)), 50),
        "limits": (dict, {}),  # per-task overrides, e.g. {gsm8k: 10}
        "fewshot": ((int, type(None)), None),
        "batch_size": (int, 8),
        "gen_batch_size": ((int, type(None)), None),  # generation requests per batch (default: batch_size)
        # cap on tokens per request (longer contexts are cut from the left, as lm-eval does): with a
        # 262k vocabulary (Gemma) one 14k-token MMLU request is 14k x 262k fp32 logits = 14 GiB
        "max_length": ((int, type(None)), None),
        "probe_n": (int, 60),
        "xsum_file": ((str, type(None)), None),
    },
}
STRATEGIES = ("bi", "angular", "reverse", "iterative")
MODES = ("sgr", "external", "distill")
PATCH_PROBES = ("arithmetic", "brackets")


# ---------------------------------------------------------------- config
def _line(node) -> int:
    return node.start_mark.line + 1


def _fill(schema: dict, node, where: str, src: str) -> dict:
    """Check one YAML mapping node against ``schema`` and return plain values with defaults."""
    import yaml

    if node is not None and not isinstance(node, yaml.MappingNode):
        raise PrunescopeError(f"{src}:{_line(node)}: '{where or 'the file'}' must be a mapping of keys")
    given = {k.value: (k, v) for k, v in (node.value if node is not None else [])}
    out = {}
    for key, (knode, vnode) in given.items():
        if key not in schema:
            near = [k for k in schema if k[:3] == key[:3]]
            raise PrunescopeError(f"{src}:{_line(knode)}: unknown key '{key}'"
                                  f"{' under ' + where if where else ''}"
                                  f"{' (did you mean ' + near[0] + '?)' if near else ''}; known keys: "
                                  f"{', '.join(schema)}")
    for key, spec in schema.items():
        full = f"{where}.{key}" if where else key
        knode, vnode = given.get(key, (None, None))
        if isinstance(spec, dict):
            out[key] = _fill(spec, vnode, full, src)
            continue
        types, default = spec
        if vnode is None:
            out[key] = copy.deepcopy(default)
            continue
        value = yaml.safe_load(yaml.serialize(vnode))
        if types in ("numbers", "ints"):
            out[key] = _number_list(value, types, full, src, _line(vnode))
            continue
        if types is dict and isinstance(value, dict):
            bad = [k for k, v in value.items() if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int)]
            if bad:
                raise PrunescopeError(f"{src}:{_line(vnode)}: '{full}' maps task names to integers, got {value!r}")
        if types is list and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if types is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = isinstance(value, types) and not (types is int and isinstance(value, bool))
        if ok and types is list:
            ok = all(isinstance(v, str) for v in value)
        if not ok:
            want = {list: "a list of names", int: "an integer", float: "a number", str: "a string",
                    bool: "true or false", dict: "a mapping"}.get(types, "an integer or null")
            raise PrunescopeError(f"{src}:{_line(vnode)}: '{full}' must be {want}, got {value!r}")
        out[key] = value
    return out


def _number_list(value, kind: str, full: str, src: str, line: int) -> list:
    """``numbers``: one number or a list of numbers -> list of floats; ``ints``: a list of integers."""
    items = value if isinstance(value, list) else [value]
    if kind == "ints" and value == []:
        return []
    number = (int, float) if kind == "numbers" else (int,)
    if not items or not all(isinstance(v, number) and not isinstance(v, bool) for v in items):
        want = "a number or a list of numbers" if kind == "numbers" else "a list of integers"
        raise PrunescopeError(f"{src}:{line}: '{full}' must be {want}, got {value!r}")
    if len(set(items)) != len(items):
        raise PrunescopeError(f"{src}:{line}: '{full}' lists a value twice: {value!r}")
    return [float(v) for v in items] if kind == "numbers" else list(items)


def load_config_text(text: str, src: str = "<config>") -> dict:
    """Parse and validate a config (YAML text); raises PrunescopeError naming the key and line."""
    import yaml

    try:
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise PrunescopeError(f"{src}:{mark.line + 1 if mark else '?'}: not valid YAML "
                              f"({getattr(e, 'problem', None) or e})") from None
    cfg = _fill(SCHEMA, root, "", src)
    _check_values(cfg, root, src)
    return cfg


def _node_line(root, *path: str) -> int | str:
    node = root
    for key in path:
        nxt = None
        for k, v in getattr(node, "value", []) if node is not None else []:
            if getattr(k, "value", None) == key:
                nxt = v
        if nxt is None:
            return "?"
        node = nxt
    return _line(node)


def _check_values(cfg: dict, root, src: str) -> None:
    from probe.tasks import PROBES

    def bad(path: tuple[str, ...], msg: str):
        raise PrunescopeError(f"{src}:{_node_line(root, *path)}: '{'.'.join(path)}' {msg}")

    for p in cfg["localize"]["probes"]:
        if p not in PROBES:
            bad(("localize", "probes"), f"names an unknown probe {p!r}; choose from {', '.join(PROBES)}")
    for p in cfg["localize"]["patch"]:
        if p not in PATCH_PROBES:
            bad(("localize", "patch"), f"names {p!r}; patching supports {', '.join(PATCH_PROBES)}")
    for k in cfg["localize"]["patch_kinds"]:
        if k not in ("resid_post", "attn_out", "mlp_out", "head"):
            bad(("localize", "patch_kinds"), f"names {k!r}; choose from resid_post, attn_out, mlp_out, head")
    for t in cfg["localize"]["ablate_tasks"]:
        from analysis.evaluate import TASKS

        if t not in TASKS:
            bad(("localize", "ablate_tasks"), f"names an unknown task {t!r}; choose from {', '.join(TASKS)}")
    if cfg["localize"]["ablate_every"] < 1:
        bad(("localize", "ablate_every"), "must be at least 1")
    if cfg["localize"]["patch_method"] not in ("exact", "attribution", "both"):
        bad(("localize", "patch_method"), "must be exact, attribution or both")
    for r in cfg["prune"]["ratio"]:
        if not 0 < r < 1:
            bad(("prune", "ratio"), f"must be between 0 and 1, got {r}")
    for s in cfg["prune"]["strategies"]:
        if s not in STRATEGIES:
            bad(("prune", "strategies"), f"names an unknown strategy {s!r}; choose from {', '.join(STRATEGIES)}")
    for p in cfg["prune"]["protect_from"] if cfg["prune"]["protect_top"] else []:
        if p not in cfg["localize"]["patch"]:
            bad(("prune", "protect_from"), f"names {p!r}, which is not among the patched probes "
                                           f"{cfg['localize']['patch']} (its per-layer patching effect ranks the "
                                           "layers to protect)")
    for m in cfg["recover"]["modes"]:
        if m not in MODES:
            bad(("recover", "modes"), f"names an unknown mode {m!r}; choose from {', '.join(MODES)}")
    stages = set(pruned_names(cfg))
    for s in cfg["recover"]["on"] if cfg["recover"]["modes"] else []:
        if s not in stages:
            bad(("recover", "on"), f"names {s!r}, which is not pruned by this config ({', '.join(sorted(stages))})")
    prompts = cfg["recover"]["prompts"]
    if cfg["recover"]["modes"] and prompts != "builtin" and not Path(prompts).exists():
        bad(("recover", "prompts"), f"file {prompts} does not exist (or use 'builtin')")
    from analysis.evaluate import TASKS

    for t in cfg["evaluate"]["tasks"]:
        if t not in TASKS:
            bad(("evaluate", "tasks"), f"names an unknown task {t!r}; choose from {', '.join(TASKS)}")
    for t in cfg["evaluate"]["limits"]:
        if t not in cfg["evaluate"]["tasks"]:
            bad(("evaluate", "limits"), f"names {t!r}, which is not in evaluate.tasks")
    xsum = cfg["evaluate"]["xsum_file"]
    if "xsum" in cfg["evaluate"]["tasks"] and not (xsum and Path(xsum).is_file()):
        bad(("evaluate", "xsum_file"), "must name an existing JSONL file {document, summary} when tasks include "
                                       "xsum (XSum does not ship offline)")
    from probe.models import _DEFAULT_ALIASES, GEMMA3_ALIAS

    model = cfg["model"]
    if model not in _DEFAULT_ALIASES | {GEMMA3_ALIAS} and not Path(model).expanduser().exists() and "/" not in model:
        bad(("model",), f"is {model!r}: no such folder or .gguf file (use 'default', '{GEMMA3_ALIAS}', a model "
                        "folder or a .gguf path)")
    if any(s < 0 for s in cfg["seeds"]):
        bad(("seeds",), f"must be non-negative integers, got {cfg['seeds']}")
    if not _valid_device(cfg["device"]):
        bad(("device",), f"must be cpu or cuda[:N], got {cfg['device']!r}")


def _valid_device(device: str) -> bool:
    return device == "cpu" or device.startswith("cuda")


def load_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise PrunescopeError(f"config file {path} does not exist")
    cfg = load_config_text(path.read_text(), str(path))
    cfg["name"] = cfg["name"] or path.stem
    cfg["out"] = cfg["out"] or f"runs/{cfg['name']}"
    return cfg


def _percent(ratio: float) -> str:
    return f"{ratio * 100:g}"


def pruned_names(cfg: dict) -> dict[str, tuple[str, float]]:
    """``{name: (strategy, ratio)}`` of the pruned models a config asks for: the strategy's name
    (``bi``, ``bi-protected``...) with one ratio, ``bi-25`` / ``bi-12.5`` with several.

    >>> list(pruned_names({"prune": {"strategies": ["bi"], "ratio": [0.25, 0.125], "protect_top": 2}}))
    ['bi-25', 'bi-12.5', 'bi-protected-25', 'bi-protected-12.5']
    """
    c = cfg["prune"]
    strategies = list(c["strategies"]) + (["bi-protected"] if c["protect_top"] else [])
    ratios = c["ratio"]
    return {(s if len(ratios) == 1 else f"{s}-{_percent(r)}"): (s, r) for s in strategies for r in ratios}


# ---------------------------------------------------------------- stages
class Run:
    """The run folder and its stage markers."""

    def __init__(self, cfg: dict, show_progress: bool = True):
        self.cfg, self.out, self.show = cfg, Path(cfg["out"]), show_progress
        self._base = None

    def stage_key(self, stage: str) -> str:
        """A stage re-runs when its own settings or any earlier stage's settings change. Where and
        how fast the run happens (``device``, ``out``, the evaluation batch sizes) is not a setting:
        a run folder started on a GPU machine continues on a CPU one with its finished stages."""
        upto = STAGES[: STAGES.index(stage) + 1]
        part = {k: v for k, v in self.cfg.items() if k not in (*STAGES, "device", "out")} | \
            {s: self.cfg.get(s) for s in upto}
        if "evaluate" in part:
            part["evaluate"] = {k: v for k, v in part["evaluate"].items() if k not in ("batch_size", "gen_batch_size")}
        return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:16]

    def done(self, stage: str) -> bool:
        f = self.out / ".stages" / f"{stage}.json"
        return f.is_file() and json.loads(f.read_text()).get("key") == self.stage_key(stage)

    def clear_if_changed(self, stage: str) -> None:
        """A stage finished earlier with other settings: its old outputs would be refused or mixed in."""
        f = self.out / ".stages" / f"{stage}.json"
        if f.is_file():
            import shutil

            for name in STAGE_OUTPUTS[stage]:
                path = self.out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            f.unlink()

    def mark(self, stage: str, seconds: float) -> None:
        atomic_write_json(self.out / ".stages" / f"{stage}.json", {"key": self.stage_key(stage), "seconds": seconds})

    @property
    def base(self):
        if self._base is None:
            from probe.models import load_model

            self._base = load_model(None if self.cfg["model"] == "default" else self.cfg["model"],
                                    device=self.cfg["device"], dtype=self.cfg["dtype"])
        return self._base

    def pruned_stages(self) -> dict[str, Path]:
        return {f"pruned-{s}": self.out / "prune" / s for s in pruned_names(self.cfg)}

    def recovered_stages(self) -> dict[str, Path]:
        r = self.cfg["recover"]
        return {f"recovered-{s}-{m}": self.out / "recover" / f"{s}-{m}" for s in r["on"] for m in r["modes"]}


def _localize(run: Run) -> None:
    from circuits.run import patch
    from probe.sweep import sweep

    c, seed = run.cfg["localize"], run.cfg["seed"]
    if c["probes"]:
        sweep(probe=c["probes"], n=c["n"], out=run.out / "localize" / "sweep", seed=seed,
              probe_options={"shots": c["shots"], "ops": c["ops"]} if "arithmetic_multi" in c["probes"] else None,
              loaded=run.base, show_progress=run.show)
    if c["ablate_tasks"]:
        ablate(run)
    for p in c["patch"]:
        patch(probe=p, n=c["patch_n"], out=run.out / "localize" / f"patch-{p}", method=c["patch_method"],
              positions=c["patch_positions"], kinds=c["patch_kinds"], seed=seed, loaded=run.base,
              show_progress=run.show)


def ablate(run: Run) -> list[dict]:
    """Benchmarks with no layer and each single layer skipped: ``localize/ablate/ablation.csv`` (the
    primary metric of each task as ``score``, conditions ``none`` / ``skip:L`` like a sweep) + figure,
    and the failure signatures of the generated answers per condition (``signatures.csv``: wrong
    chain-of-thought steps, unbalanced brackets, Rep-4, char Rep-16, Self-BLEU-4), which still move where a small
    model's GSM8K or code score sits at the floor."""
    from analysis.evaluate import TASKS, evaluate
    from analysis.signatures import ablation_signatures
    from probe.plots import plot_sweep

    c, root = run.cfg["localize"], run.out / "localize" / "ablate"
    layers = list(range(0, run.base.blocks.n_layers, c["ablate_every"]))
    rows = []
    for skip in [None, *layers]:
        cond = "none" if skip is None else f"skip:{skip}"
        folder = root / cond.replace(":", "-")
        got = evaluate(run.base, c["ablate_tasks"], folder, stage=cond,
                       limit=c["ablate_limit"], skip=[] if skip is None else [skip], seed=run.cfg["seed"],
                       batch_size=run.cfg["evaluate"]["batch_size"], max_length=run.cfg["evaluate"]["max_length"],
                       gen_batch_size=run.cfg["evaluate"]["gen_batch_size"],
                       show_progress=False)
        rows += [{**r, "metric": "score", "primary_metric": r["metric"]} for r in got
                 if r["metric"] == TASKS[r["probe"]].primary]
        done = [r for r in rows if r["condition"] == cond]
        print(f"  ablate {cond}: " + ", ".join(f"{r['probe']} {r['value']:.3f}" for r in done), flush=True)
        write_table(rows, root / "ablation")  # after every condition: a long ablation can be read while it runs
    plot_sweep(rows, root, metric="score")
    sig_rows = ablation_signatures(root, run.base.name, run.cfg["seed"],
                                   conditions=["none", *(f"skip:{L}" for L in layers)])
    if sig_rows:
        write_table(sig_rows, root / "signatures")
        for metric in ("wrong_step_rate", "unbalanced_rate", "rep4", "char_rep16"):
            plot_sweep(sig_rows, root, metric=metric)
    return rows


def _score(run: Run) -> None:
    from prune.run import score

    patch_table = next((str(run.out / "localize" / f"patch-{p}" / "layers.csv") for p in run.cfg["localize"]["patch"]),
                       None)
    score(out=run.out / "score", n_texts=run.cfg["score"]["n_texts"], seed=run.cfg["seed"], loaded=run.base,
          show_progress=run.show,
          sweep_table=str(run.out / "localize" / "sweep" / "sweep.csv") if run.cfg["localize"]["probes"] else None,
          sweep_probe=run.cfg["localize"]["probes"][0] if run.cfg["localize"]["probes"] else None,
          patch_table=patch_table)


def _prune(run: Run) -> None:
    from prune.run import prune

    c = run.cfg["prune"]
    names = pruned_names(run.cfg)
    for stage, folder in run.pruned_stages().items():
        if (folder / "plan.json").is_file():
            continue  # written atomically: a complete checkpoint from an interrupted stage
        strategy, ratio = names[stage.removeprefix("pruned-")]
        kw = {}
        if strategy == "bi-protected":
            strategy = "bi"
            kw = {"protect_from": [str(run.out / "localize" / f"patch-{p}" / "layers.csv") for p in c["protect_from"]],
                  "protect_top": c["protect_top"]}
        plan = prune(strategy=strategy, out=folder, ratio=ratio, loaded=run.base, overwrite=True,
                     seed=run.cfg["seed"], show_progress=run.show, **kw)
        print(f"  {stage}: drop {plan.drop}" + (f" (protected {plan.protected})" if plan.protected else ""))


def _recover(run: Run) -> None:
    from recover.data import load_prompts
    from recover.sgr import generate_responses
    from recover.train import RecoveryConfig, recover

    c = run.cfg["recover"]
    if not c["modes"]:
        return
    sgr_file = run.out / "recover" / "sgr.jsonl"
    records = load_prompts(c["prompts"], n=c["n_prompts"], seed=run.cfg["seed"])
    generate_responses(run.base, records, sgr_file, temperature=c["temperature"], max_new_tokens=c["max_new_tokens"],
                       seed=run.cfg["seed"], batch_size=16 if run.cfg["device"] == "cpu" else 64,
                       prompts_source=c["prompts"], show_progress=run.show)
    pruned = run.pruned_stages()
    for stage, folder in run.recovered_stages().items():
        strategy, mode = folder.name.rsplit("-", 1)
        cfg = RecoveryConfig(mode=mode, quant=c["quant"], steps=c["steps"], token_budget=c["token_budget"],
                             max_seq_len=c["max_seq_len"], micro_batch=c["micro_batch"], eval_n=c["eval_n"],
                             lr=c["lr"], warmup=c["warmup"], seed=run.cfg["seed"],
                             eval_every=max(1, (c["steps"] or 100) // 4))
        s = recover(pruned[f"pruned-{strategy}"], sgr_file, folder, cfg, device=run.cfg["device"],
                    teacher=run.base.path if mode == "distill" else None, show_progress=run.show)
        print(f"  {stage}: {s['steps']} steps, {s['trained_tokens']} response tokens, "
              f"held-out perplexity {s['final_eval_ppl']:.2f}")


def _ensure_checkpoint(run: Run, folder: Path) -> None:
    """A pruned model whose weights were left behind (a run folder copied without ``*.safetensors``
    from the machine that made it) is rebuilt from its ``plan.json``: removing the same layers from
    the same base model gives the same checkpoint."""
    if any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")):
        return
    if not (folder / "plan.json").is_file():
        raise PrunescopeError(f"{folder} holds no model weights and no plan.json to rebuild them from; delete "
                              f"{folder} and {run.out / '.stages'} markers from its stage on to recompute it")
    from prune.surgery import save_pruned

    plan = json.loads((folder / "plan.json").read_text())
    print(f"  rebuilding {folder.name} from plan.json: drop {plan['drop']}")
    keep = {p.name: p.read_bytes() for p in folder.glob("*.json")}
    save_pruned(run.base.model, run.base.tokenizer, plan["drop"], folder, overwrite=True,
                record={"plan": plan, "source_model": run.base.path, "source_name": run.base.name})
    for name, data in keep.items():
        (folder / name).write_bytes(data)


def _stage_probes(run: Run, stage: str, folder: Path | None, lm, probes: list[str], n: int) -> dict[str, float]:
    """Probe accuracy of one stage, kept in ``eval/<stage>/probes.json`` (read by :func:`_cached_probes`):
    an evaluation resumed after a crash (or moved to another machine) does not score the finished
    stages' probes again (on 2 CPU cores that is minutes per Gemma stage)."""
    from prune.run import probe_accuracy

    acc = probe_accuracy(folder, probes, n=n, loaded=lm)
    atomic_write_json(run.out / "eval" / stage / "probes.json", {"settings": {"probes": list(probes), "n": n},
                                                                 "accuracy": acc})
    return acc


def _cached_probes(run: Run, stage: str, probes: list[str], n: int) -> dict[str, float] | None:
    path = run.out / "eval" / stage / "probes.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("settings") == {"probes": list(probes), "n": n}:
            return saved["accuracy"]
    return None


def _evaluate(run: Run) -> None:
    from analysis.evaluate import eval_settings, evaluate, finished_rows
    from probe.models import load_model

    c = run.cfg["evaluate"]
    models = {"base": None, **run.pruned_stages(), **run.recovered_stages()}
    probes = run.cfg["localize"]["probes"] or ["arithmetic_multi", "brackets", "copy"]
    limit = {"default": c["limit"], **c["limits"]}
    probe_rows, eval_rows = [], []
    for stage, folder in models.items():
        # a stage finished before a crash (or on another machine) is read back without building or
        # loading its checkpoint: on a CPU that is most of a resumed Gemma evaluation's start-up
        settings = eval_settings(run.base.name, run.base.path if folder is None else folder, stage=stage,
                                 limit=limit, num_fewshot=c["fewshot"], max_length=c["max_length"],
                                 seed=run.cfg["seed"])
        done = finished_rows(run.out / "eval" / stage, c["tasks"], settings, c["xsum_file"])
        accuracy = _cached_probes(run, stage, probes, c["probe_n"])
        if done is not None and accuracy is not None:
            eval_rows += done
        else:
            if folder is not None:
                _ensure_checkpoint(run, folder)
            lm = run.base if folder is None else load_model(folder, device=run.cfg["device"], dtype=run.cfg["dtype"])
            lm.name = run.base.name  # one model family through the stages; the stage is the condition
            if c["tasks"]:
                eval_rows += evaluate(lm, c["tasks"], run.out / "eval" / stage, stage=stage, limit=limit,
                                      num_fewshot=c["fewshot"], batch_size=c["batch_size"],
                                      max_length=c["max_length"], gen_batch_size=c["gen_batch_size"],
                                      seed=run.cfg["seed"], xsum_file=c["xsum_file"], show_progress=run.show)
            if accuracy is None:
                accuracy = _stage_probes(run, stage, folder, lm, probes, c["probe_n"])
        for p, acc in accuracy.items():
            probe_rows.append({"model": run.base.name, "probe": p, "condition": stage, "layers": "",
                               "metric": "accuracy", "value": acc, "n": c["probe_n"], "seed": run.cfg["seed"]})
        print(f"  {stage}: " + ", ".join(f"{r['probe']} {r['value']:.3f}" for r in probe_rows if r["condition"] == stage))
    write_table(probe_rows, run.out / "probes")
    if eval_rows:
        write_table(eval_rows, run.out / "eval" / "eval")


def _report(run: Run) -> None:
    from analysis.report import report

    for name in STAGE_OUTPUTS["report"]:
        (run.out / name).unlink(missing_ok=True)  # recomputed from this run's evaluation
    md, page = report(run.out, show_progress=run.show)
    print(f"  wrote {md} and {page}")


RUNNERS = {"localize": _localize, "score": _score, "prune": _prune, "recover": _recover, "evaluate": _evaluate,
           "report": _report}


def run_pipeline(config: str | Path | dict, *, show_progress: bool = True, only: list[str] | None = None,
                 device: str | None = None, out: str | Path | None = None) -> Path:
    """Run (or resume) every stage of a config; returns the run folder. With ``seeds``, one run per
    seed in ``OUT/seed-N`` and then their comparison (:func:`analysis.seeds.compare_seeds`).
    ``device`` and ``out`` override the config's: neither is part of a stage's key, so a run
    folder started on a GPU machine continues here with ``device="cpu"``.

    >>> run_pipeline("experiments/gemma3-protect.yaml", device="cpu", out="runs/gemma3-protect")  # doctest: +SKIP
    """
    cfg = load_config(config) if not isinstance(config, dict) else config
    if device is not None:
        if not _valid_device(device):
            raise PrunescopeError(f"device must be cpu or cuda[:N], got {device!r}")
        cfg = {**cfg, "device": device}
    if out is not None:
        cfg = {**cfg, "out": str(out)}
    text = Path(config).read_text() if isinstance(config, (str, Path)) else None
    if not cfg.get("seeds"):
        return _run_one(cfg, text, show_progress, only)
    root = Path(cfg["out"])
    _write_config(root, cfg, text)
    for seed in cfg["seeds"]:
        print(f"=== seed {seed} ===")
        _run_one({**copy.deepcopy(cfg), "seed": seed, "seeds": [], "out": str(root / f"seed-{seed}")}, text,
                 show_progress, only)
    if only is None or "report" in only:
        from analysis.seeds import compare_seeds

        md = compare_seeds(root, cfg["seeds"])
        print(f"[seeds] compared {len(cfg['seeds'])} seeds: {md}")
    return root


def _write_config(out: Path, cfg: dict, text: str | None) -> None:
    """The config as written (``config.yaml``) and as resolved (``config.json``) in a run folder."""
    out.mkdir(parents=True, exist_ok=True)
    if text is not None:
        atomic_write_text(out / "config.yaml", text)
    atomic_write_json(out / "config.json", cfg)


def _run_one(cfg: dict, text: str | None, show_progress: bool, only: list[str] | None) -> Path:
    run = Run(cfg, show_progress)
    _write_config(run.out, cfg, text)
    t_all = time.perf_counter()
    for stage in STAGES:
        if only and stage not in only:
            continue
        if run.done(stage):
            print(f"[{stage}] done earlier (cached)")
            continue
        print(f"[{stage}]")
        run.clear_if_changed(stage)
        t0 = time.perf_counter()
        RUNNERS[stage](run)
        run.mark(stage, round(time.perf_counter() - t0, 2))
        print(f"[{stage}] {time.perf_counter() - t0:.1f} s")
    print(f"run folder {run.out} ({time.perf_counter() - t_all:.0f} s this call)")
    return run.out


def retention_summary(run_dir: str | Path) -> str:
    """A short plain-text retention table of a finished run (for the terminal)."""
    path = Path(run_dir) / "retention.csv"
    if not path.is_file():
        return ""
    rows = [r for r in read_table(path) if r.get("level") in ("category", "gap")]
    return "\n".join(f"  {r['condition']:28s} {r['probe']:15s} {float(r['value']):.3f}" for r in rows)
