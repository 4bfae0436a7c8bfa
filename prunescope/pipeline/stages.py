"""The pipeline's stages: each reads the config's section and calls the command functions with
their options objects (the same ones the CLI builds), writing into the run folder.

>>> # RUNNERS["localize"](Run(load_config("experiments/demo.yaml")))
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prunescope.core.errors import PrunescopeError
from prunescope.core.options import Output, Placement
from prunescope.core.results import atomic_write_json, write_table

from prunescope.pipeline.keys import legacy_match, same_settings, settings_key, stage_settings
from prunescope.pipeline.config import (
    FIXED, STAGE_OUTPUTS, STAGES, Arm, budget_label, pruned_names, recovered_names, split_arm,
)


def _defaults() -> dict:
    from prunescope.pipeline.config import SECTIONS, Study
    from prunescope.pipeline.keys import option_defaults

    return option_defaults(SECTIONS, Study)


class Run:
    """The run folder and its stage markers."""

    def __init__(self, cfg: dict, show_progress: bool = True):
        from prunescope.core.options import resolve_placement

        if cfg["device"] == "auto":  # the device is no stage's setting, so it may follow the machine
            cfg = {**cfg, "device": resolve_placement("auto", cfg["dtype"])[0]}
        self.cfg, self.out, self.show = cfg, Path(cfg["out"]), show_progress
        self._base, self._identity = None, None

    def stage_settings(self, stage: str) -> dict:
        """A stage re-runs when its own settings or any earlier stage's settings change. Where and
        how fast the run happens (``device``, ``out``, the evaluation batch sizes) is not a setting:
        a run folder started on a GPU machine continues on a CPU one with its finished stages
        (:func:`prunescope.pipeline.keys.stage_settings`)."""
        return stage_settings(self.cfg, stage, STAGES)

    def stage_key(self, stage: str) -> str:
        return settings_key(self.stage_settings(stage))

    def done(self, stage: str) -> bool:
        if not self._marked(stage):
            return False
        if stage == "recover" and not self.done("evaluate"):
            # a run folder copied without its weights has no merged arms: they train again
            # (an arm whose scores are finished needs none)
            return all(_trained(f) or diverged(f) or _evaluated(self, st, f)
                       for st, f in self.recovered_stages().items())
        return True

    def _marked(self, stage: str) -> bool:
        """Finished with these settings: the marker's settings equal the config's but for options it
        predates that are at their defaults (a newer prunescope keeps finished stages)."""
        f = self.out / ".stages" / f"{stage}.json"
        if not f.is_file():
            return False
        marker, current = json.loads(f.read_text()), self.stage_settings(stage)
        if "settings" in marker:
            return same_settings(marker["settings"], current, _defaults())
        return legacy_match(marker.get("key", ""), current, _defaults())

    def clear_if_changed(self, stage: str) -> None:
        """A stage finished earlier with other settings: its old outputs would be refused or mixed in
        (one that is only incomplete, such as recovery arms without their weights, keeps them)."""
        f = self.out / ".stages" / f"{stage}.json"
        if f.is_file() and not self._marked(stage):
            for name in STAGE_OUTPUTS[stage]:
                path = self.out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            f.unlink()

    @property
    def placement(self) -> Placement:
        return Placement(device=self.cfg["device"], dtype=self.cfg["dtype"])

    def output(self, out: Path) -> Output:
        """Where one command of this run writes (figures on, progress as the run's)."""
        return Output(out=str(out), progress=self.show)

    def mark(self, stage: str, seconds: float) -> None:
        atomic_write_json(self.out / ".stages" / f"{stage}.json", {"key": self.stage_key(stage), "seconds": seconds,
                                                                   "settings": self.stage_settings(stage)})

    @property
    def base(self):
        if self._base is None:
            from prunescope.probe.models import load_model

            self._base = load_model(self._spec, **self.placement.load_kwargs())
        return self._base

    @property
    def _spec(self) -> str | None:
        return None if self.cfg["model"] == "default" else self.cfg["model"]

    @property
    def base_identity(self) -> tuple[str, str]:
        """The base model's (name, path) without loading its weights: a worker that evaluates a
        pruned stage needs them for its settings and rows, not the base model itself (which took
        about 3 GB of GPU memory per worker on a 1.5B model, 16 GB on an 8B one)."""
        if self._base is not None:
            return self._base.name, self._base.path
        if self._identity is None:
            from prunescope.probe.models import check_model, model_name

            where = check_model(self._spec)
            self._identity = model_name(self._spec, where), str(where)
        return self._identity

    @property
    def eval_seed(self) -> int:
        """The seed of the evaluation (items, few-shot examples): a seed study's own seed for every
        seed's run (``eval_seed``), else the run's seed."""
        return self.cfg.get("eval_seed", self.cfg["seed"])

    def pruned_stages(self) -> dict[str, Path]:
        return {f"pruned-{s}": self.out / "prune" / s for s in pruned_names(self.cfg)}

    def recovered_stages(self) -> dict[str, Path]:
        return {f"recovered-{a}": self.out / "recover" / a for a in recovered_names(self.cfg)}


def _localize(run: Run) -> None:
    from prunescope.circuits.commands import PatchOptions, patch
    from prunescope.probe.sweep import SweepOptions, sweep

    c, seed = run.cfg["localize"], run.cfg["seed"]
    if c["probes"]:
        multi = "arithmetic_multi" in c["probes"]
        sweep(SweepOptions(probes=c["probes"], items=c["items"], seed=seed, shots=c["shots"] if multi else None,
                           ops=c["ops"] if multi else None),
              loaded=run.base, placement=run.placement, output=run.output(run.out / "localize" / "sweep"))
    # the patching maps before the benchmark ablation: they take minutes where the ablation takes
    # the better part of an hour on a 1.5B model, and a run cut short still has them
    for p in c["patch_probes"]:
        patch(PatchOptions(probe=p, pairs=c["pairs"], method=c["method"], positions=c["positions"],
                           kinds=c["kinds"], seed=seed),
              loaded=run.base, placement=run.placement, output=run.output(run.out / "localize" / f"patch-{p}"))
    if c["ablate_tasks"]:
        ablate(run)


def ablate(run: Run) -> list[dict]:
    """Benchmarks with no layer and each single layer skipped: ``localize/ablate/ablation.csv`` (the
    primary metric of each task as ``score``, conditions ``none`` / ``skip:L`` like a sweep) + figure,
    and the failure signatures of the generated answers per condition (``signatures.csv``: wrong
    chain-of-thought steps, unbalanced brackets, Rep-4, char Rep-16, Self-BLEU-4), which still move where a small
    model's GSM8K or code score sits at the floor."""
    from prunescope.analysis.evaluate import TASKS, EvalOptions, evaluate
    from prunescope.analysis.signatures import ablation_signatures
    from prunescope.core.plots import plot_sweep

    c, root = run.cfg["localize"], run.out / "localize" / "ablate"
    layers = list(range(0, run.base.blocks.n_layers, c["ablate_every"]))
    rows = []
    for skip in [None, *layers]:
        cond = "none" if skip is None else f"skip:{skip}"
        folder = root / cond.replace(":", "-")
        e = run.cfg["evaluate"]
        got = evaluate(EvalOptions(tasks=c["ablate_tasks"], stage=cond, limit=c["ablate_limit"],
                                   skip=[] if skip is None else [skip], seed=run.cfg["seed"],
                                   batch_size=e["batch_size"], max_length=e["max_length"],
                                   slots=e["slots"]),
                       loaded=run.base, output=Output(out=str(folder), progress=False))
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
        for metric in ("wrong_step_rate", "unbalanced_rate", "fail_syntax_rate", "fail_name_rate", "rep4", "char_rep16"):
            plot_sweep(sig_rows, root, metric=metric)
    return rows


def _score(run: Run) -> None:
    from prunescope.prune.commands import ScoreOptions, score

    loc = run.cfg["localize"]
    score(ScoreOptions(texts=run.cfg["score"]["texts"], seed=run.cfg["seed"],
                       sweep_table=str(run.out / "localize" / "sweep" / "sweep.csv") if loc["probes"] else None,
                       sweep_probe=loc["probes"][0] if loc["probes"] else None,
                       patch_table=_patch_table(run)),
          loaded=run.base, placement=run.placement, output=run.output(run.out / "score"))


def _patch_table(run: Run) -> str | None:
    """The first patching map's per-layer table (what the score stage adds as patching_effect)."""
    return next((str(run.out / "localize" / f"patch-{p}" / "layers.csv") for p in run.cfg["localize"]["patch_probes"]), None)


def _prune(run: Run) -> None:
    from prunescope.prune.commands import PruneOptions, prune_model

    c = run.cfg["prune"]
    names = pruned_names(run.cfg)
    for stage, folder in run.pruned_stages().items():
        if (folder / "plan.json").is_file():
            continue  # written atomically: a complete checkpoint from an interrupted stage
        strategy, ratio = names[stage.removeprefix("pruned-")]
        if strategy == FIXED:
            _prune_fixed(run, stage, c["layers"][stage.removeprefix("pruned-")], folder)
            continue
        kw = {}
        if strategy == "bi-protected":
            strategy = "bi"
            kw = {"protect_from": [str(run.out / "localize" / f"patch-{p}" / "layers.csv")
                                   for p in c["protect_patched"]],
                  "protect_top": c["protect_top"]}
        elif strategy == "score":  # the score stage's table, ranked by the patching effect
            kw = {"scores_table": str(run.out / "score" / "scores.csv"), "score_metric": "patching_effect"}
        elif strategy == "skip-drop":  # the layer-skip sweep of the localize stage
            kw = {"scores_table": str(run.out / "localize" / "sweep" / "sweep.csv")}
        elif strategy == "iterative-generated":  # held-out docs, disjoint from evaluate's (checked with the config)
            kw = {"select_tasks": c["select_tasks"], "select_docs": c["select_docs"],
                  "slots": run.cfg["evaluate"]["slots"] or 64,
                  # one log for both ratios: the smaller search reads back the larger one's first steps
                  "select_cache": str(run.out / "prune" / "selection-cache.jsonl")}
        plan = prune_model(PruneOptions(strategy=strategy, ratio=ratio, texts=c["texts"], seed=run.cfg["seed"], **kw),
                           loaded=run.base, placement=run.placement,
                           output=run.output(folder).replace(overwrite=True))
        print(f"  {stage}: drop {plan.drop}" + (f" (protected {plan.protected})" if plan.protected else ""))


def _prune_fixed(run: Run, stage: str, layers: list[int], folder: Path) -> None:
    """A fixed layer set of ``prune.layers``: the checkpoint without exactly those layers, with the
    same records a strategy's writes (``plan.json``, ``prunescope_plan.json``; strategy ``fixed``)."""
    from prunescope.prune.strategies import Plan
    from prunescope.prune.surgery import save_pruned

    lm = run.base
    try:
        drop = sorted(lm.blocks.check_layers(layers))
    except PrunescopeError as e:
        raise PrunescopeError(f"prune.layers {stage.removeprefix('pruned-')}: {e}") from None
    plan = Plan(strategy=FIXED, n_layers=lm.blocks.n_layers, drop=drop, model=lm.name,
                reasons={i: "named in prune.layers" for i in drop})
    save_pruned(lm.model, lm.tokenizer, drop, folder, overwrite=True,
                record={"plan": plan.to_json(), "source_model": lm.path, "source_name": lm.name})
    plan.save(folder / "plan.json")
    print(f"  {stage}: drop {plan.drop} (fixed)")


def _recover(run: Run) -> None:
    from prunescope.recover.sgr import SGROptions, generate_responses
    from prunescope.recover.train import split_mode

    c = run.cfg["recover"]
    if not c["modes"]:
        return
    sgr_file = run.out / "recover" / "sgr.jsonl"
    if any(split_mode(m)[1] for m in c["modes"]):  # a repair alone trains nothing: no SGR answers for it
        generate_responses(SGROptions(prompts=c["prompts"], max_prompts=c["max_prompts"], temperature=c["temperature"],
                                      max_new_tokens=c["max_new_tokens"], seed=run.cfg["seed"],
                                      slots=16 if run.cfg["device"] == "cpu" else 256),
                           loaded=run.base, output=run.output(sgr_file))
    # the arms are evaluated here as they finish (:class:`_ArmEvaluation`): scores made under other
    # evaluation settings go first, as the evaluation stage itself would drop them
    run.clear_if_changed("evaluate")
    with _ArmEvaluation(run) as evaluation:
        for stage, folder in run.recovered_stages().items():
            if diverged(folder):
                print(f"  {stage}: diverged in an earlier run ({folder / DIVERGED}); change lr or max_grad_norm "
                      "to train it again")
            elif _evaluated(run, stage, folder):
                print(f"  {stage}: trained and evaluated in an earlier run", flush=True)
            elif _trained(folder) or _train_arm(run, stage, folder, sgr_file):
                evaluation.submit(stage, folder)


def _arm_options(run: Run, mode: str, sgr_file: Path, seed: int | None = None, *, budget: int | None = None,
                 steps: int | None = None):
    """One arm's :class:`prunescope.recover.train.RecoverOptions` from the recover section: the
    training values for an arm that trains (on the SGR file), the linear repair's for one that
    repairs (circuit texts only in ``linear_circuit``), the run's base model as teacher and repair base;
    ``seed``: the arm's training seed (default: the run's). How long it trains: ``steps`` optimizer
    steps (no token budget) where given, else the token ``budget`` where given, else the section's
    ``steps`` / ``token_budget``."""
    from prunescope.recover.train import RecoverOptions, split_mode

    c = run.cfg["recover"]
    repair, training = split_mode(mode)
    repair_kw = {} if repair is None else dict(circuit_mix=c["circuit_mix"] if repair == "linear_circuit" else None,
                                               texts=c["texts"], objective=c["objective"], ridge=c["ridge"])
    if steps is None and budget is None:  # the section's own length
        steps, budget = c["steps"], c["token_budget"]
    elif steps is not None:  # matched steps: no token budget
        budget = None
    return RecoverOptions(mode=mode, data=str(sgr_file) if training else None,
                          teacher=run.base.path if repair or training == "distill" else None, recipe=c["recipe"],
                          quant=c["quant"], steps=steps, token_budget=budget,
                          max_seq_len=c["max_seq_len"], long_prompts=c["long_prompts"], train_batch=c["train_batch"],
                          micro_batch=c["micro_batch"],
                          max_grad_norm=c["max_grad_norm"], adapter_dtype=c["adapter_dtype"], heldout=c["heldout"],
                          lr=c["lr"], warmup=c["warmup"], seed=run.cfg["seed"] if seed is None else seed,
                          eval_every=c["eval_every"] or max(1, (steps or 100) // 4), **repair_kw)


def _arm_training(run: Run, arm: Arm, sgr_file: Path) -> dict:
    """How long one arm trains, as :func:`_arm_options` takes it: ``budget`` (its own with
    ``recover.budgets``, else the section's ``token_budget``), and with ``recover.match: steps`` the
    ``steps`` that the reference mode (the first of ``recover.dose_modes``, else the first training
    mode of ``recover.modes``) needs to reach
    that budget on the same pruned model with the same seed (:func:`prunescope.recover.train.plan_recovery`,
    from the data alone): every training arm at a budget then trains as many optimizer steps, each
    on its own response tokens (an external arm's references are longer), and records both."""
    from prunescope.recover.train import plan_recovery, split_mode

    c = run.cfg["recover"]
    if split_mode(arm.mode)[1] is None or (not c["budgets"] and c["match"] != "steps"):
        return {}  # a repair alone, or one budget as the section gives it
    budget = arm.budget if c["budgets"] else c["token_budget"]
    if c["match"] != "steps":
        return {"budget": budget}
    # the first mode on the dose axis (else the first training mode) sets the steps
    reference = (c["dose_modes"] or [m for m in c["modes"] if split_mode(m)[1] is not None])[0]
    planned = plan_recovery(_arm_options(run, reference, sgr_file, arm.seed, budget=budget),
                            model=run.pruned_stages()[f"pruned-{arm.pruned}"])
    print(f"  recovered-{arm.pruned}-{arm.mode}: {planned['steps']} steps, the {reference} arm's for "
          f"{budget_label(budget)} response tokens ({planned['tokens']})", flush=True)
    return {"steps": planned["steps"]}


def _train_arm(run: Run, stage: str, folder: Path, sgr_file: Path) -> bool:
    """Train (or repair) one recovery arm (``recover/<pruned>-<mode>[~<budget>][@<seed>]``) and
    score its probes; False when it diverged (recorded in its folder)."""
    from prunescope.recover.train import RecoveryDiverged, describe_recovery, recover_model, split_mode

    arm = split_arm(folder.name)
    shutil.rmtree(run.out / "eval" / stage, ignore_errors=True)  # scores of an earlier training are stale
    pruned = run.pruned_stages()[f"pruned-{arm.pruned}"]
    _ensure_checkpoint(run, pruned)  # a run folder copied without its weights has none
    options = _arm_options(run, arm.mode, sgr_file, arm.seed, **_arm_training(run, arm, sgr_file))
    try:
        s = recover_model(options, model=pruned, placement=Placement(device=run.cfg["device"]),
                          output=run.output(folder), loaded=run.base if split_mode(arm.mode)[0] else None)
    except RecoveryDiverged as e:
        # one arm that diverges is a result, not the end of the run: the other arms and the
        # evaluation go on (stopping here would leave the whole rest of the run undone)
        atomic_write_json(folder / DIVERGED, {"error": str(e), "non_finite": e.records})
        print(f"  {stage}: {e}; the other arms go on, the evaluation leaves this one out", flush=True)
        return False
    skipped = (f", {s['skipped_steps']} non-finite steps skipped (prunescope_recovery.json: "
               "recovery.non_finite)") if s["skipped_steps"] else ""
    print(f"  {stage}: {describe_recovery(s)}{skipped}")
    _probe_arm(run, stage, folder)
    return True


def _evaluated(run: Run, stage: str, folder: Path) -> bool:
    """A trained recovery arm whose benchmarks and probes are finished under the run's evaluation
    settings: its weights are no longer needed (a run folder copied without its weights has none)."""
    return (folder / "prunescope_recovery.json").is_file() and None not in _finished(run, stage, folder)


class _ArmEvaluation:
    """Each recovery arm is evaluated as soon as it is trained, so that the scores of the arms done so
    far survive a run that stops during the later ones and is resumed from a folder copied without
    its weights (the merged arms are not in it; an arm with finished scores is not trained again). With ``evaluate.workers`` > 1 an arm
    is evaluated in a worker process beside the next arm's training, else in this process. An arm
    whose evaluation fails in its worker is left to the evaluation stage, as in
    :func:`_evaluate_side_by_side`.

    >>> # with _ArmEvaluation(run) as ev: ev.submit("recovered-bi-sgr", run.out / "recover/bi-sgr")
    """

    def __init__(self, run: Run):
        self.run, self.pool, self.jobs = run, None, {}

    def submit(self, stage: str, folder: Path) -> None:
        if self.run.cfg["evaluate"]["workers"] <= 1:
            _evaluate_stage(self.run, stage, folder)
            print(f"  {stage}: evaluated", flush=True)
            return
        if self.pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        job = self.jobs[stage] = self.pool.submit(_stage_worker, self.run.cfg, self.run.show, stage, str(folder))
        # said when it happens, not when the last arm is trained
        job.add_done_callback(lambda j: j.exception() is None and print(f"  {stage}: evaluated beside the training",
                                                                           flush=True))

    def __enter__(self) -> "_ArmEvaluation":
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is None:
            return
        for stage, job in self.jobs.items():
            try:
                job.result()
            except Exception as e:  # noqa: BLE001 - the evaluation stage evaluates it again, alone
                print(f"  {stage}: its evaluation failed beside the training ({_first_line(e)}); "
                      "the evaluation stage evaluates it again", flush=True)
        self.pool.shutdown()


def _trained(folder: Path) -> bool:
    """A recovery arm whose merged model is there (a run folder copied without its weights has
    none: its arms train again wherever the run goes on, unless their scores are finished)."""
    return (folder / "prunescope_recovery.json").is_file() and any(folder.glob("*.safetensors"))


def _probe_arm(run: Run, stage: str, folder: Path) -> None:
    """A recovered arm's probe scores (both metrics) right after its training, where the evaluation stage reads
    it back: a run that stops during the evaluation and is moved without its weights loses the
    merged arms, and the probes (the paper's arithmetic 96 -> 37 -> 74) should not be lost with them."""
    n = run.cfg["evaluate"]["probe_items"]
    if _cached_probes(run, stage, _probes(run), n) is not None:
        return
    from prunescope.probe.models import load_model

    lm = load_model(folder, device=run.cfg["device"], dtype=run.cfg["dtype"])
    acc = _stage_probes(run, stage, folder, lm, _probes(run), n)
    print(_probe_line(stage, acc), flush=True)
    del lm
    if run.cfg["device"].startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


DIVERGED = "diverged.json"  # in a recovery arm's folder: it diverged; evaluation and reports leave it out


def diverged(folder: Path) -> bool:
    """Whether the recovery arm in ``folder`` diverged (see :class:`prunescope.recover.train.RecoveryDiverged`)."""
    return (folder / DIVERGED).is_file()


def _ensure_checkpoint(run: Run, folder: Path) -> None:
    """A pruned model whose weights were left behind (a run folder copied without ``*.safetensors``
    from the machine that made it) is rebuilt from its ``plan.json``: removing the same layers from
    the same base model gives the same checkpoint."""
    if any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")):
        return
    if not (folder / "plan.json").is_file():
        raise PrunescopeError(f"{folder} holds no model weights and no plan.json to rebuild them from; delete "
                              f"{folder} and {run.out / '.stages'} markers from its stage on to recompute it")
    from prunescope.prune.surgery import save_pruned

    plan = json.loads((folder / "plan.json").read_text())
    print(f"  rebuilding {folder.name} from plan.json: drop {plan['drop']}")
    keep = {p.name: p.read_bytes() for p in folder.glob("*.json")}
    save_pruned(run.base.model, run.base.tokenizer, plan["drop"], folder, overwrite=True,
                record={"plan": plan, "source_model": run.base.path, "source_name": run.base.name})
    for name, data in keep.items():
        (folder / name).write_bytes(data)


def _stage_probes(run: Run, stage: str, folder: Path | None, lm, probes: list[str], n: int) -> dict:
    """Both probe scores of one stage, ``margin_accuracy`` and ``exact_match`` ``{probe: value}``,
    with every item's score under ``items`` (the same items in every stage, so stages pair by item:
    :func:`prunescope.analysis.probes.probe_change_rows`). Kept in ``eval/<stage>/probes.json``
    (read by :func:`_cached_probes`): an evaluation resumed after a crash (or moved to another
    machine) does not score the finished stages' probes again (minutes per Gemma stage on a CPU)."""
    from prunescope.probe.scoring import probe_scores

    scores = probe_scores(folder, probes, n=n, loaded=lm)
    atomic_write_json(run.out / "eval" / stage / "probes.json", {"settings": {"probes": list(probes), "n": n},
                                                                 **scores})
    return scores


def _cached_probes(run: Run, stage: str, probes: list[str], n: int) -> dict | None:
    """A stage's saved probe scores (as :func:`_stage_probes` returns them) when they were scored
    with these settings; a file of an older prunescope (margin accuracy alone, under ``accuracy``,
    without the items) is scored again."""
    from prunescope.probe.scoring import PROBE_METRICS

    path = run.out / "eval" / stage / "probes.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("settings") == {"probes": list(probes), "n": n} and all(k in saved for k in PROBE_METRICS):
            return {k: saved.get(k, {}) for k in (*PROBE_METRICS, "items")}
    return None


def _stage_settings(run: Run, stage: str, folder: Path | None) -> dict:
    """The settings a stage's evaluation folder records (:func:`prunescope.analysis.evaluate.eval_settings`)."""
    from prunescope.analysis.evaluate import EvalOptions, eval_settings

    c = run.cfg["evaluate"]
    name, path = run.base_identity
    options = EvalOptions(stage=stage, limit={"default": c["limit"], **c["limits"]}, num_fewshot=c["num_fewshot"],
                          max_length=c["max_length"], seed=run.eval_seed)
    return eval_settings(name, path if folder is None else folder, options)


def _finished(run: Run, stage: str, folder: Path | None) -> tuple[list[dict] | None, dict[str, float] | None]:
    """A stage's benchmark rows and probe accuracy as its run folder holds them (None: not yet)."""
    from prunescope.analysis.evaluate import finished_rows

    c = run.cfg["evaluate"]
    return (finished_rows(run.out / "eval" / stage, c["tasks"], _stage_settings(run, stage, folder), c["xsum_file"]),
            _cached_probes(run, stage, _probes(run), c["probe_items"]))


def _probe_line(stage: str, scores: dict) -> str:
    """Both probe scores of a stage in one line (``-``: a probe whose items have no distractors).

    >>> _probe_line("base", {"margin_accuracy": {"copy": 0.985}, "exact_match": {"copy": 0.96}})
    '  base: copy margin 0.985 / exact 0.960'
    """
    def cell(values: dict, probe: str) -> str:
        return f"{values[probe]:.3f}" if probe in values else "-"

    margin, exact = scores["margin_accuracy"], scores["exact_match"]
    return f"  {stage}: " + ", ".join(f"{p} margin {cell(margin, p)} / exact {cell(exact, p)}"
                                      for p in dict.fromkeys([*margin, *exact]))


def _probes(run: Run) -> list[str]:
    return run.cfg["localize"]["probes"] or ["arithmetic_multi", "brackets", "copy"]


def _evaluate_stage(run: Run, stage: str, folder: Path | None) -> tuple[list[dict], dict[str, float]]:
    """One stage's benchmark rows and probe accuracy: read back when finished (before a crash, on
    another machine, or by a worker of :func:`_evaluate_side_by_side`), else computed and written."""
    from prunescope.analysis.evaluate import EvalOptions, evaluate
    from prunescope.probe.models import load_model

    c = run.cfg["evaluate"]
    limit = {"default": c["limit"], **c["limits"]}
    # a finished stage is read back without building or loading its checkpoint: on a CPU that is
    # most of a resumed Gemma evaluation's start-up
    done, accuracy = _finished(run, stage, folder)
    if done is None and _adopt_from_study(run, stage, folder):
        done, accuracy = _finished(run, stage, folder)
    if done is not None and accuracy is not None:
        return done, accuracy
    if folder is not None:
        _ensure_checkpoint(run, folder)
    lm = run.base if folder is None else load_model(folder, device=run.cfg["device"], dtype=run.cfg["dtype"])
    lm.name = run.base_identity[0]  # one model family through the stages; the stage is the condition
    rows = []
    if c["tasks"]:
        rows = evaluate(EvalOptions(tasks=c["tasks"], stage=stage, limit=limit, num_fewshot=c["num_fewshot"],
                                    batch_size=c["batch_size"], max_length=c["max_length"],
                                    slots=c["slots"], seed=run.eval_seed,
                                    xsum_file=c["xsum_file"]),
                        loaded=lm, output=run.output(run.out / "eval" / stage))
    if accuracy is None:
        accuracy = _stage_probes(run, stage, folder, lm, _probes(run), c["probe_items"])
    return rows, accuracy


def _dropped_layers(folder: Path) -> list[int] | None:
    plan = folder / "plan.json"
    return json.loads(plan.read_text()).get("drop") if plan.is_file() else None


def _same_model_elsewhere(run: Run, stage: str, folder: Path | None) -> list[tuple[Path, str]]:
    """``(seed folder, stage)`` of the other seeds of this run's study that hold the same model: the
    base, or a pruned stage that dropped the same layers (surgery on the same base: the same weights)."""
    if not run.cfg.get("study") or not (stage == "base" or stage.startswith("pruned-")):
        return []
    drop = None if folder is None else _dropped_layers(folder)
    if folder is not None and drop is None:
        return []
    found = []
    for other in sorted(Path(run.cfg["study"]).glob("seed-*")):
        if other.resolve() == run.out.resolve():
            continue
        if folder is None:
            found.append((other, "base"))
            continue
        for plan in sorted((other / "prune").glob("*/plan.json")):
            if _dropped_layers(plan.parent) == drop:
                found.append((other, f"pruned-{plan.parent.name}"))
    return found


def _adopt_from_study(run: Run, stage: str, folder: Path | None) -> bool:
    """A model another seed of the study already evaluated on the same items (same settings but its
    stage name and path) is not evaluated again: its benchmark scores and probe results are copied."""
    from prunescope.analysis.evaluate import adopt_evaluation

    c, settings = run.cfg["evaluate"], _stage_settings(run, stage, folder)
    for other, their_stage in _same_model_elsewhere(run, stage, folder):
        source = other / "eval" / their_stage
        probes = source / "probes.json"
        if not probes.is_file() or adopt_evaluation(source, run.out / "eval" / stage, c["tasks"], settings,
                                                    c["xsum_file"]) is None:
            continue
        atomic_write_json(run.out / "eval" / stage / "probes.json", json.loads(probes.read_text()))
        print(f"  {stage}: the same model as {other.name}'s {their_stage}; its scores are reused", flush=True)
        return True
    return False


_WORKER_RUNS: dict[str, Run] = {}


def _stage_worker(cfg: dict, show: bool, stage: str, folder: str | None) -> str:
    """A worker process evaluates one stage into the run folder (its base model loaded once)."""
    key = json.dumps(cfg, sort_keys=True)
    run = _WORKER_RUNS.setdefault(key, Run(cfg, show_progress=show))
    _evaluate_stage(run, stage, None if folder is None else Path(folder))
    return stage


def _evaluate_side_by_side(run: Run, stages: dict[str, Path | None], workers: int) -> None:
    """Evaluate ``stages`` in ``workers`` processes at once; each writes its stage's outputs, which
    the sequential pass then reads back (so a crash anywhere resumes as usual). A stage that fails in
    its worker is left to that pass, which evaluates it with the device to itself."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    print(f"  evaluating {len(stages)} stages, {workers} side by side", flush=True)
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        jobs = {st: pool.submit(_stage_worker, run.cfg, run.show, st, None if f is None else str(f))
                for st, f in stages.items()}
        for st, job in jobs.items():
            try:
                job.result()
                print(f"  {st}: evaluated", flush=True)
            except Exception as e:  # noqa: BLE001 - the pass after this one evaluates it again, alone
                # stages side by side share the GPU: one stage's peak (lm-eval's log-softmax over
                # 32 MMLU rows, 14 GB for Qwen) can run out of memory beside the others and fit alone.
                # The other stages go on; a real error comes back from the lone attempt.
                print(f"  {st}: failed beside the others ({_first_line(e)}); "
                      "evaluating it alone after them", flush=True)


def _first_line(e: BaseException) -> str:
    """An error in one line, for a progress message (a CUDA out-of-memory error runs to many).

    >>> _first_line(RuntimeError("CUDA out of memory.\\nTried to allocate 14 GiB"))
    'RuntimeError: CUDA out of memory.'
    """
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


def evaluation_order(stages: list[str]) -> list[str]:
    """The order stages are evaluated in: recovered ones first. A pruned checkpoint left behind is
    rebuilt from its plan, a recovered one is not (its adapter would have to be trained again), so
    a run cut short (then moved without its weights) should already hold the recovered stages' scores.

    >>> evaluation_order(["base", "pruned-bi", "recovered-bi-sgr", "recovered-bi-random"])
    ['recovered-bi-sgr', 'recovered-bi-random', 'base', 'pruned-bi']
    """
    return sorted(stages, key=lambda st: not st.startswith("recovered-"))


def _evaluate(run: Run) -> None:
    c = run.cfg["evaluate"]
    models = {"base": None, **run.pruned_stages(),
              **{st: f for st, f in run.recovered_stages().items() if not diverged(f)}}
    order = evaluation_order(list(models))
    if c["workers"] > 1:
        todo = {st: models[st] for st in order if None in _finished(run, st, models[st])}
        if len(todo) > 1:
            _evaluate_side_by_side(run, todo, min(c["workers"], len(todo)))
    done = {}
    for stage in order:
        done[stage] = _evaluate_stage(run, stage, models[stage])
        print(_probe_line(stage, done[stage][1]))
    probe_rows, eval_rows = [], []
    for stage in models:  # the tables keep base, pruned, recovered
        rows, scores = done[stage]
        eval_rows += rows
        for p in dict.fromkeys([*scores["margin_accuracy"], *scores["exact_match"]]):
            for metric in ("margin_accuracy", "exact_match"):  # the margin choice and greedy generation
                if p in scores[metric]:
                    n = sum(v is not None for v in scores["items"].get(p, {}).get(metric, [])) or c["probe_items"]
                    probe_rows.append({"model": run.base_identity[0], "probe": p, "condition": stage, "layers": "",
                                       "metric": metric, "value": scores[metric][p], "n": n, "seed": run.cfg["seed"]})
    write_table(probe_rows, run.out / "probes")
    if eval_rows:
        write_table(eval_rows, run.out / "eval" / "eval")


def _report(run: Run) -> None:
    from prunescope.analysis.report import report

    for name in STAGE_OUTPUTS["report"]:
        (run.out / name).unlink(missing_ok=True)  # recomputed from this run's evaluation
    md, page = report(run.out, show_progress=run.show)
    print(f"  wrote {md} and {page}")
    if len(run.cfg["recover"]["train_seeds"]) > 1:
        _compare_training_seeds(run)
    if run.cfg["recover"]["budgets"]:
        _dose_report(run)


def _dose_report(run: Run) -> None:
    """Retention against tokens trained per arm (``dose.csv``), each step up the budget ladder with
    its paired interval (``dose_steps.csv``), one verdict per arm (printed) and ``dose.png``."""
    from prunescope.pipeline.dose import dose_segments, dose_table, dose_verdicts, plot_dose

    rows = dose_table(run.out)
    if not rows:
        return
    steps = dose_segments(run.out, seed=run.cfg["seed"])
    write_table(rows, run.out / "dose")
    write_table(steps, run.out / "dose_steps")
    plot_dose(rows, run.out / "dose.png")
    for v in dose_verdicts(steps):
        print(f"  {v['pruned']} {v['mode']}: {v['category']} retention {v['verdict']} over {v['steps']} budget steps")
    print(f"  wrote {run.out / 'dose.csv'}, dose_steps.csv and dose.png")


def _compare_training_seeds(run: Run) -> None:
    """Each recovery arm over its training seeds against its pruned model and the SGR arm
    (``recover_seeds.csv``), printed as one line per arm, category and reference (raw retention)."""
    from prunescope.pipeline.seeds import training_seed_differences, verdict

    rows = training_seed_differences(run.out, seed=run.cfg["seed"])
    if not rows:
        return
    write_table(rows, run.out / "recover_seeds")
    for r in rows:
        if r["metric"] == "retention_minus_reference" and r["probe"] != "gap":
            print(f"  {r['condition']} - {r['reference']}, {r['probe']} retention over {r['n']} seeds: "
                  f"{r['value']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] ({verdict(r)})")
    print(f"  wrote {run.out / 'recover_seeds.csv'}")


RUNNERS = {"localize": _localize, "score": _score, "prune": _prune, "recover": _recover, "evaluate": _evaluate,
           "report": _report}
