"""Recovery finetuning of a pruned model: QLoRA on Self-Generated Responses (the paper's recipe),
on the prompt file's own responses (the external arm), logit distillation from the base model, or
full-parameter tuning of chosen layers (``--train tune``) on any of those targets.

The training values come from a recipe (:data:`RECIPES`, ``--recipe``), each overridable by its
own flag. ``paper`` (the default) is what the paper's reference script runs: the pruned model in
4-bit NF4 with double quantization (bitsandbytes; bf16 compute on a GPU, fp32 on a CPU) + LoRA
r=64, alpha=16, dropout 0.05 on every linear layer (peft), AdamW lr 2e-4 (betas 0.9/0.99, weight
decay 1e-4) constant after 50 linear warm-up steps, gradient norm clipped to 1.0, effective batch 8
(4 x 2 accumulation), one epoch, loss on response tokens only. ``qlora`` is the QLoRA paper's
(dropout 0.1, beta2 0.999, no weight decay, clip 0.3, warm-up 3% of the steps, batch 16). The loss
of an effective batch is the mean over *its* response tokens (summed over micro batches, divided
once), so accumulation gives the same gradient as one big batch.

``--train tune`` trains the chosen decoder layers in full instead (the layers next to each cut by
default, read from the pruned checkpoint's plan record; or ``--tune-layers``, ``--tune-last``):
everything else frozen, no adapters, no quantization, bf16 on a GPU (fp32 on a CPU), the same loop.

Every run knows before it starts, and records, both its optimizer steps and the response tokens
they train (:func:`plan_steps`), so arms can be matched on either.

``--mode linear`` (``linear_circuit``: with circuit calibration texts) repairs the pruned model
without training (:mod:`prunescope.recover.linear`), and ``--mode linear+sgr`` (``+external``,
``+distill``, ``+tune``) repairs it into ``OUT/linear`` and then trains the repaired model; the
record names both steps.

Everything lands in ``OUT/``: ``curve.csv``/``curve.png`` (train loss, held-out perplexity),
``checkpoints/step-N`` (trained weights + optimizer + schedule; a rerun resumes from the newest),
``adapter/`` (final LoRA weights) and the recovered model itself (a standard checkpoint).

>>> # prunescope recover --model pruned/bi25 --data runs/sgr.jsonl --mode sgr --out recovered/bi25-sgr
>>> # recover_model(RecoverOptions(mode="sgr", data="runs/sgr.jsonl"), model="pruned/bi25", output=Output(out="recovered/bi25-sgr"))
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from prunescope.core.distributed import (Dist, env_world, gather_in_order, is_distributed, rank_device, spread,
                                         sum_gradients, sum_over_ranks)
from prunescope.core.errors import PrunescopeError
from prunescope.core.options import SHARED_MEANINGS, Flag, Options, Output, Placement, option
from prunescope.core.registry import Registry
from prunescope.core.lock import run_lock
from prunescope.core.overwrite import expect_folder, remove_previous
from prunescope.core.results import (atomic_write_json, check_run_config, follow_umask, make_temp_dir, read_jsonl,
                                     record_run_config, write_table)

from prunescope.recover.calibration import CIRCUIT_PROBES
from prunescope.recover.data import IGNORE, Example, encode_all
from prunescope.recover.linear import LINEAR_RECORD, OBJECTIVES, LinearOptions
# check_bitsandbytes: public here too
from prunescope.recover.student import (PLAN_FILES, check_bitsandbytes, cut_neighbours, load_student,  # noqa: F401
                                        peft_quietly, plan_drop, tune_parameters)

MODES = Registry("recovery mode")
MODES.register("sgr", "sgr", help="train on the base model's own responses (Self-Generated Responses, the paper's recipe)")
MODES.register("external", "external", help="train on the prompt file's own reference responses")
MODES.register("distill", "distill", help="KL to the unpruned base model (--teacher) on the SGR sequences")
MODES.register("random", "random", help="the reference code's control: the pruned architecture freshly initialised "
                                        "(seeded) and trained on the SGR responses the same way")
MODES.register("tune", "tune", help="layer tuning on the SGR responses, as --mode sgr --train tune (in a pipeline's "
                                    "modes: a layer-tuning arm)")
MODES.register("linear", "linear", help="training-free: each removed span replaced by one linear map fitted on the "
                                        "unpruned model (--teacher) over generic calibration texts, folded into the "
                                        "weights (recover/linear.py)")
MODES.register("linear_circuit", "linear_circuit", help="the linear repair on generic and circuit calibration texts "
                                                        "(--circuit-mix, default 0.5)")
#: The training-free repairs a mode may start with; ``REPAIR+TRAINING`` trains the repaired model.
REPAIRS = ("linear", "linear_circuit")
for _repair in REPAIRS:
    for _target in ("sgr", "external", "distill", "tune"):
        MODES.register(f"{_repair}+{_target}", f"{_repair}+{_target}",
                       help=f"--mode {_repair} into OUT/linear, then --mode {_target} on the repaired model")


def split_mode(mode: str) -> tuple[str | None, str | None]:
    """``(repair, training)`` of a recovery mode: either may be None (a repair alone, training alone).

    >>> split_mode("linear+sgr"), split_mode("tune"), split_mode("linear_circuit")
    (('linear', 'sgr'), (None, 'tune'), ('linear_circuit', None))
    """
    first, _, rest = mode.partition("+")
    if first in REPAIRS:
        return first, rest or None
    return None, mode

#: What ``--train`` trains: LoRA adapters (on the 4-bit model unless ``--no-quant``) or chosen layers in full.
TRAINED = ("lora", "tune")

#: The recovery recipes: the values a field left unset (None) takes. ``paper``: what the paper's
#: reference script runs (:data:`RECIPE_SOURCES`); ``qlora``: the QLoRA paper's 7B/13B settings.
#: Both put LoRA on every linear layer of the 4-bit NF4 (double-quantized) model with bf16 compute,
#: beta1 0.9, one epoch, gradient checkpointing and the loss on the response tokens only.
RECIPES = {
    "paper": dict(rank=64, alpha=16, dropout=0.05, lr=2e-4, adam_beta2=0.99, weight_decay=1e-4, warmup=50,
                  warmup_ratio=0.0, max_grad_norm=1.0, train_batch=8),
    "qlora": dict(rank=64, alpha=16, dropout=0.1, lr=2e-4, adam_beta2=0.999, weight_decay=0.0, warmup=0,
                  warmup_ratio=0.03, max_grad_norm=0.3, train_batch=16),
}
RECIPE_SOURCES = {
    "paper": "safal312/on-the-limits-of-layer-pruning: train/8reverse_lora_self_dolci_llama.sh run through its "
             "train/sft_trainer.py (TRL SFTTrainer)",
    "qlora": "artidoro/qlora: scripts/finetune_guanaco_7b.sh and qlora.py (the QLoRA paper's 7B/13B settings)",
}
#: Where each value is set: the paper's script (its flag, or sft_trainer.py) and the QLoRA script.
_SOURCE = {
    "rank": ("--lora_r 16, which its sft_trainer.py replaces by 64 under --use_qlora True", "--lora_r 64"),
    "alpha": ("--lora_alpha 32, replaced by 16 with the rank", "--lora_alpha 16"),
    "dropout": ("sft_trainer.py's lora_dropout default", "--lora_dropout 0.1"),
    "lr": ("--learning_rate 2e-4", "--learning_rate 0.0002"),
    "adam_beta2": ("--adam_beta2 0.99", "--adam_beta2 0.999"),
    "weight_decay": ("--weight_decay 0.0001", "--weight_decay 0.0"),
    "warmup": ("--warmup_steps 50 --lr_scheduler_type constant_with_warmup", "none: --warmup_ratio"),
    "warmup_ratio": ("none: --warmup_steps", "--warmup_ratio 0.03 --lr_scheduler_type constant"),
    "max_grad_norm": ("--max_grad_norm 1.0", "--max_grad_norm 0.3"),
    "train_batch": ("--per_device_train_batch_size 4 --gradient_accumulation_steps 2 on one GPU",
                    "--per_device_train_batch_size 1 --gradient_accumulation_steps 16"),
}


def _by_recipe(what: str, name: str) -> str:
    """A recipe field's help: what it is, then each recipe's value and where that value is set."""
    (p_src, q_src), p, q = _SOURCE[name], RECIPES["paper"][name], RECIPES["qlora"][name]
    return f"{what} (unset: by --recipe, paper {p:g} [the paper's script: {p_src}], qlora {q:g} [QLoRA: {q_src}])"


class RecoveryDiverged(PrunescopeError):
    """Training kept going non-finite (``max_bad_steps`` skipped steps in a row). ``records``: those
    steps as :func:`_non_finite_record` describes them. The pipeline records the arm as diverged and
    goes on with the others."""

    def __init__(self, message: str, records: list[dict]):
        super().__init__(message)
        self.records = records


@dataclass
class RecoverOptions(Options):
    """Settings of ``prunescope recover`` (:func:`recover_model`). The training values a user leaves
    unset (None) come from ``recipe`` (:data:`RECIPES`): ``paper`` (the default) is what the paper's
    reference script runs, ``qlora`` the QLoRA paper's settings; a value set explicitly always wins.
    :meth:`check` fills them in, so a checked object holds every value the run uses (and its record
    names the recipe).

    ``mode`` is the training target (sgr, external, distill, random); ``train`` what is trained:
    ``lora`` (adapters on every linear layer; the 4-bit model unless ``quant`` is off) or ``tune``
    (the chosen decoder layers in full: ``tune_layers``, default the layers next to each cut, or
    ``tune_last``; no adapters, no quantization). ``mode="tune"`` is ``mode="sgr", train="tune"``.
    ``linear`` and ``linear_circuit`` repair the pruned model without training
    (:meth:`linear_options`: ``objective``, ``ridge``, ``texts``, ``calibration``, ``circuit_mix``,
    ``circuit_probes``, on the base model ``teacher``); ``linear+sgr`` (``+external``,
    ``+distill``, ``+tune``) repairs it, then trains the repaired model.

    >>> o = RecoverOptions(mode="external", steps=10).check()
    >>> o.steps, o.rank, o.alpha, o.adam_beta2, o.warmup
    (10, 64, 16, 0.99, 50)
    >>> o = RecoverOptions(recipe="qlora", rank=16).check()
    >>> o.rank, o.dropout, o.max_grad_norm, o.warmup, o.warmup_ratio, o.train_batch
    (16, 0.1, 0.3, 0, 0.03, 16)
    """

    mode: str = option("sgr", "training target, a training-free repair (linear, linear_circuit), or a repair then "
                              "a training target (linear+sgr: the repair into OUT/linear, then sgr on it)",
                       choices=MODES)
    train: str | None = option(None, "what is trained: lora (adapters on every linear layer) or tune (chosen decoder "
                                     "layers in full, no adapters, no quantization) (default: lora; tune under "
                                     "--mode tune)", choices=TRAINED)
    recipe: str = option("paper", "where the training values left unset come from: paper (the paper's reference "
                                  "script) or qlora (the QLoRA paper's settings)", choices=tuple(RECIPES))
    data: str | None = option(None, "an SGR file from prunescope sgr (or JSONL with response/reference)")
    teacher: str | None = option(None, "the unpruned base model, distill's teacher and the linear repair's base "
                                       "('default' for the embedded one) (default: for the linear repair, the model "
                                       "the pruning record names)")
    quant: bool = option(True, "4-bit NF4 QLoRA, double quantization, bf16 compute on a GPU (the paper's script: "
                               "--use_qlora True); off: plain LoRA on the full-precision model, no bitsandbytes "
                               "(the choice for a model that fits); --train tune never quantizes",
                         cli=Flag("--no-quant", help="plain LoRA on the full-precision model (no bitsandbytes): the "
                                                     "choice for a model that fits in memory"))
    rank: int | None = option(None, _by_recipe("LoRA rank", "rank"), minimum=1)
    alpha: int | None = option(None, _by_recipe("LoRA alpha", "alpha"), minimum=1)
    dropout: float | None = option(None, _by_recipe("LoRA dropout", "dropout"), minimum=0, maximum=1)
    adapter_dtype: str = option("compute", "dtype of the LoRA weights and their AdamW state on a 4-bit model: "
                                           "compute (the NF4 layers' compute dtype, bf16 on a GPU, as in the "
                                           "QLoRA paper) or float32 (peft's own default: slower, more headroom)",
                                choices=("compute", "float32"))
    lr: float | None = option(None, _by_recipe("learning rate (AdamW)", "lr"), minimum=0)
    adam_beta2: float | None = option(None, _by_recipe("AdamW beta2 (beta1 is 0.9)", "adam_beta2"), minimum=0,
                                      maximum=1)
    weight_decay: float | None = option(None, _by_recipe("AdamW weight decay (on weight matrices, not on norms or "
                                                         "biases, as in the HF Trainer)", "weight_decay"), minimum=0)
    warmup: int | None = option(None, _by_recipe("linear warm-up steps, then constant", "warmup"), minimum=0)
    warmup_ratio: float | None = option(None, _by_recipe("warm-up as a fraction of the run's steps (rounded up); "
                                                         "one of --warmup and --warmup-ratio", "warmup_ratio"),
                                        minimum=0, maximum=1)
    train_batch: int | None = option(None, _by_recipe("effective training batch (examples per optimizer step)",
                                                      "train_batch"), minimum=1)
    micro_batch: int = option(4, "examples per forward of training (--train-batch / --micro-batch accumulation "
                                 "steps; the paper's script: --per_device_train_batch_size 4)", minimum=1)
    max_seq_len: int = option(8192, "tokens per example (the paper's script: --max_seq_length 8192)", minimum=1)
    long_prompts: str = option("error", "a training prompt of --max-seq-len tokens or more: error (stop and say "
                                        "which) or drop (train without it; the record counts them)",
                               choices=("error", "drop"))
    epochs: int = option(1, "passes over the training examples when neither --steps nor --token-budget is given "
                            "(the paper's script: --num_train_epochs 1)", minimum=1)
    steps: int | None = option(None, "optimizer steps (default: --epochs epochs, or until --token-budget); the run "
                                     "knows and records the response tokens they train", minimum=1)
    token_budget: int | None = option(None, "stop once this many response tokens are trained (the same budget for "
                                            "every arm); the run knows and records the steps that takes", minimum=1)
    tune_layers: list[int] | None = option(None, "--train tune: decoder layers of the pruned model to train "
                                                 "(default: the kept layers just before and after each cut, from the "
                                                 "checkpoint's plan record)")
    tune_last: int | None = option(None, "--train tune: train the last K decoder layers, the final norm and the "
                                         "LM head instead of --tune-layers", minimum=1)
    heldout: int = option(32, "held-out examples for the perplexity curve (at most one record in five; the same "
                              "examples whatever --seed)", minimum=1)
    eval_every: int = option(25, "steps between held-out perplexity points", minimum=1)
    save_every: int = option(50, "steps between checkpoints", minimum=1)
    max_grad_norm: float | None = option(None, _by_recipe("clip the trained weights' gradient norm to this (0: no "
                                                          "clipping)", "max_grad_norm"), minimum=0)
    max_bad_steps: int = option(3, "stop when this many optimizer steps in a row have a non-finite loss or "
                                   "gradient (each is skipped: the adapters and optimizer state stay as they were)",
                                minimum=1)
    grad_checkpointing: bool = option(True, "gradient checkpointing, less memory, more compute (the paper's script: "
                                            "--gradient_checkpointing True)",
                                      cli=Flag("--no-grad-checkpointing",
                                               help="keep every activation (faster, more memory)"))
    kl_temperature: float = option(1.0, "distill: softmax temperature of the KL", minimum=0)
    # the linear repair's settings (--mode linear, linear_circuit and their chains): None is
    # LinearOptions' default, and a training mode alone refuses them
    objective: str | None = option(None, "the linear repair: how each map is fitted, lstsq (least squares, closed "
                                         "form) or cosine (mean cosine distance, Adam from the least-squares map) "
                                         "(default: lstsq)", choices=OBJECTIVES)
    ridge: float | None = option(None, "the linear repair: least-squares ridge term, a share of the mean eigenvalue "
                                       "of the calibration Gram matrix (default: 0, none)", minimum=0)
    texts: int | None = option(None, "calibration texts, drawn by --seed (of a --calibration file with more, or "
                                     "generated) (default: 128, generic and circuit together, for the linear repair)",
                               minimum=1)
    calibration: str | None = option(None, SHARED_MEANINGS["calibration"] + " (default: builtin, the offline "
                                                                             "recovery prompts with their answers: "
                                                                             "the linear repair's generic texts)")
    circuit_mix: float | None = option(None, "the linear repair: share of circuit texts (solved probe items) among "
                                             "the calibration texts, 0 generic only to 1 circuit only (default: 0 "
                                             "under --mode linear, 0.5 under linear_circuit)", minimum=0, maximum=1)
    circuit_probes: list[str] | None = option(None, "the linear repair: probes whose solved items are the circuit "
                                                    "calibration texts, built-in names or JSONL item files (default: "
                                                    f"{','.join(CIRCUIT_PROBES)})")
    seed: int = option(0, SHARED_MEANINGS["seed"], minimum=0)

    @property
    def repair(self) -> str | None:
        """The training-free repair the mode starts with (linear, linear_circuit); None for training alone."""
        return split_mode(self.mode)[0]

    @property
    def target(self) -> str | None:
        """The training target: the mode's training part, where ``tune`` trains on the SGR
        responses; None for a repair alone."""
        training = split_mode(self.mode)[1]
        return "sgr" if training == "tune" else training

    def linear_options(self) -> LinearOptions:
        """The linear repair's settings (:class:`prunescope.recover.linear.LinearOptions`): the
        fields set here, LinearOptions' defaults for the rest; the circuit share 0.5 under
        ``linear_circuit`` unless ``circuit_mix`` is set.

        >>> o = RecoverOptions(mode="linear_circuit", texts=32).linear_options()
        >>> o.calibration_texts, o.calibration_mix, o.objective
        (32, 0.5, 'lstsq')
        """
        mix = self.circuit_mix if self.circuit_mix is not None else 0.5 if self.repair == "linear_circuit" else 0.0
        given = dict(objective=self.objective, ridge=self.ridge, calibration_texts=self.texts,
                     calibration_generic=self.calibration, calibration_probes=self.circuit_probes)
        return LinearOptions(calibration_mix=mix, seed=self.seed, **{k: v for k, v in given.items() if v is not None})

    def resolved(self) -> "RecoverOptions":
        """A checked copy: every value the run uses, the recipe's filled in (this object unchanged)."""
        return copy.copy(self).check()

    def replace(self, **changes) -> "RecoverOptions":
        """A copy with ``changes``; values the recipe filled in are filled in again (by the new
        recipe where ``changes`` names one)."""
        return super().replace(**{**{n: None for n in getattr(self, "_filled", ())}, **changes})

    def validate(self) -> None:
        self._fill_in()
        if self.train_batch % self.micro_batch:
            raise PrunescopeError(f"--train-batch {self.train_batch} must be a multiple of --micro-batch "
                                  f"{self.micro_batch}")
        if self.warmup and self.warmup_ratio:
            raise PrunescopeError(f"--warmup {self.warmup} and --warmup-ratio {self.warmup_ratio:g} both set: give "
                                  "one (warm-up steps, or a fraction of the run's steps)")
        if self.target == "distill" and self.teacher is None:
            raise PrunescopeError(f"--mode {self.mode} needs --teacher BASE_MODEL (the unpruned model); "
                                  "use 'default' for the embedded default model")
        self._check_tune()
        self._check_repair()

    def _fill_in(self) -> None:
        """Fill the unset values from the recipe (and ``train`` from ``mode``); the names filled are
        kept, so a second check (with another recipe) fills them again."""
        filled = set(getattr(self, "_filled", ()))
        for name, value in RECIPES[self.recipe].items():
            if getattr(self, name) is None or name in filled:
                setattr(self, name, value)
                filled.add(name)
        # one warm-up given explicitly replaces the recipe's pair: --warmup-ratio 0.1 means no 50 steps too
        if "warmup" in filled and "warmup_ratio" not in filled:
            self.warmup = 0
        elif "warmup_ratio" in filled and "warmup" not in filled:
            self.warmup_ratio = 0.0
        if self.train is None or "train" in filled:
            self.train = "tune" if split_mode(self.mode)[1] == "tune" else "lora"
            filled.add("train")
        self._filled = frozenset(filled)

    def _check_tune(self) -> None:
        if split_mode(self.mode)[1] == "tune" and self.train != "tune":
            raise PrunescopeError(f"--mode {self.mode} trains with --train tune (tune is --mode sgr --train tune); "
                                  f"it cannot go with --train {self.train}")
        if self.train != "tune":
            if self.tune_layers is not None or self.tune_last is not None:
                raise PrunescopeError("--tune-layers and --tune-last choose the layers of --train tune")
            return
        if self.tune_layers is not None and self.tune_last is not None:
            raise PrunescopeError("give --tune-layers or --tune-last, not both")
        if self.tune_layers is not None and not self.tune_layers:
            raise PrunescopeError("--tune-layers names no layer")
        if self.mode == "random":
            raise PrunescopeError("--mode random trains a freshly initialised model: with --train tune the layers "
                                  "left frozen would stay random; use --train lora")
        self.quant = False  # the tuned layers train in full precision: nothing is quantized

    def _check_repair(self) -> None:
        """The linear repair's settings go with a mode that repairs; linear_circuit needs circuit
        texts; a repair alone trains nothing (no --train tune)."""
        named = (("--objective", self.objective), ("--ridge", self.ridge), ("--texts", self.texts),
                 ("--calibration", self.calibration), ("--circuit-mix", self.circuit_mix),
                 ("--circuit-probes", self.circuit_probes))
        given = [flag for flag, value in named if value is not None]
        if self.repair is None:
            if given:
                raise PrunescopeError(f"{', '.join(given)}: settings of the linear repair; use --mode linear, "
                                      f"linear_circuit or a chain such as linear+{self.mode}")
            return
        if self.repair == "linear_circuit" and self.circuit_mix == 0:
            raise PrunescopeError("--mode linear_circuit fits on circuit texts: give --circuit-mix above 0, or use "
                                  "--mode linear")
        if self.target is None and self.train == "tune":
            raise PrunescopeError(f"--mode {self.mode} trains nothing: --train tune goes with a chain such as "
                                  f"{self.mode}+tune")
        self.linear_options().check()


# ---------------------------------------------------------------- models
def compute_dtype(model) -> torch.dtype | None:
    """The dtype a 4-bit model computes in (its NF4 layers' ``compute_dtype``); None without NF4 layers."""
    for m in model.modules():
        d = getattr(m, "compute_dtype", None)
        if isinstance(d, torch.dtype):
            return d
    return None


def add_lora(model, cfg: RecoverOptions):
    """LoRA on every linear layer; the frozen model keeps its own dtype, and on a 4-bit model the
    adapters take its compute dtype (bf16 on a GPU), as in the QLoRA paper and TRL's ``SFTTrainer``.

    peft's ``prepare_model_for_kbit_training`` is not used: it upcasts the embeddings, norms and head
    to fp32, so the residual stream stays fp32, each 4-bit layer returns fp32 (it casts its output
    back to its input's dtype) and sdpa falls back to its fp32 math kernel. On the 8B shape on an
    H200 that made ours 0.35x (seq 2048) and 0.17x (8192) the tokens/s of peft + TRL, which skips it
    too (``benchmarks/qlora.py --profile``: the math kernel tops the 8192 profile).

    >>> pm = add_lora(load_student("pruned/bi25", quant=True, device="cuda"), RecoverOptions())  # doctest: +SKIP
    """
    from peft import LoraConfig, get_peft_model

    cfg = cfg.resolved()  # the recipe's rank, alpha and dropout where the caller left them unset
    if cfg.grad_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    with peft_quietly():
        pm = get_peft_model(model, lora)
    dtype = compute_dtype(model) if cfg.adapter_dtype == "compute" else None
    if dtype is not None:  # peft keeps adapters of a 4-bit layer in fp32
        for p in pm.parameters():
            if p.requires_grad:
                p.data = p.data.to(dtype)
    return pm


# ---------------------------------------------------------------- batches and losses
def collate(examples: list[Example], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and labels (IGNORE on prompt and padding)."""
    n = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
        mask[i, : len(e.input_ids)] = 1
    return ids.to(device), mask.to(device), labels.to(device)


def response_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL over response tokens, and their count."""
    lg, lb = logits[:, :-1].float(), labels[:, 1:]
    keep = lb != IGNORE
    nll = torch.nn.functional.cross_entropy(lg[keep], lb[keep], reduction="sum")
    return nll, int(keep.sum())


def response_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Summed KL(teacher || student) over rows of logits (the positions that predict response tokens)."""
    s = torch.log_softmax(student_logits.float() / temperature, -1)
    t = torch.log_softmax(teacher_logits.float() / temperature, -1)
    return (t.exp() * (t - s)).sum() * temperature**2


def response_logits(blocks, ids: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Logits only where a response token is predicted (``keep``: ``[batch, seq-1]``).

    The decoder runs once; the unembedding runs on the kept positions alone, so neither prompt nor
    padding positions cost vocabulary-sized logits (at 8192 tokens and a 128k vocabulary the full
    tensor is 2 GB in bf16, 4 GB more in fp32 for the loss)."""
    return blocks.final_logits(response_hidden(blocks, ids, mask, keep))


def response_hidden(blocks, ids: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Final-normed hidden states of the positions that predict a response token (``keep``)."""
    # no padding in the batch: no mask, so sdpa may take its causal flash kernel with grouped heads
    # (with a mask transformers repeats the key/value heads and sdpa leaves the flash kernel)
    hidden = blocks.final_hidden(ids, None if bool(mask.all()) else mask)
    return hidden[:, :-1][keep]


# rows of vocabulary-sized logits that exist at once in the response loss (LOSS_CHUNK_ROWS x 128k
# entries: 0.5 GB as fp32); the whole [response tokens, vocabulary] tensor never does
LOSS_CHUNK_ROWS = 1024


class _ChunkedNLL(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T`` against ``targets``, a chunk of rows at a
    time: the forward keeps only each row's log-sum-exp, the backward recomputes each chunk's logits
    (one more unembedding matmul, about 1% of a QLoRA step). Same numerics as the plain path:
    logits in the weight's dtype, softmax and loss in fp32, gradients cast back."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        total = hidden.new_zeros((), dtype=torch.float32)
        lse = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        for i in range(0, hidden.shape[0], chunk):
            logits = (hidden[i:i + chunk] @ weight.T).float()
            lse[i:i + chunk] = logits.logsumexp(-1)
            total += (lse[i:i + chunk] - logits.gather(1, targets[i:i + chunk, None]).squeeze(1)).sum()
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk = chunk
        return total

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, targets, lse = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for i in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[i:i + ctx.chunk]
            probs = ((h @ weight.T).float() - lse[i:i + ctx.chunk, None]).exp_()
            probs[torch.arange(h.shape[0], device=h.device), targets[i:i + ctx.chunk]] -= 1.0
            g = (probs * grad).to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[i:i + ctx.chunk] = g @ weight
            if grad_weight is not None:
                grad_weight += (g.T @ h).float()
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None, None


def response_nll_chunked(blocks, hidden: torch.Tensor, targets: torch.Tensor,
                         chunk: int = LOSS_CHUNK_ROWS) -> torch.Tensor | None:
    """Summed NLL of ``targets`` under the unembedding of ``hidden`` (final-normed, one row per
    predicted token), without the whole logits tensor; None where the head is not a plain bias-free
    linear layer or the model caps its logits (Gemma 2): the caller takes the plain path.

    At 8192 tokens and a 128k vocabulary that tensor is 1.6 GB in bf16, 3.2 GB as fp32 for the
    loss and 3.2 GB more for its gradient: most of the memory of a QLoRA step at 8B.
    """
    head = blocks.lm_head
    if type(head) is not torch.nn.Linear or head.bias is not None or \
            getattr(blocks.config, "final_logit_softcapping", None) is not None:
        return None
    return _ChunkedNLL.apply(hidden.to(head.weight.device), head.weight, targets.to(head.weight.device), chunk)


def response_nll_sum(blocks, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed NLL over one micro-batch's response tokens, and their count: chunk by chunk where the
    head allows it (:func:`response_nll_chunked`), else through the whole logits."""
    keep = labels[:, 1:] != IGNORE
    hidden, targets = response_hidden(blocks, ids, mask, keep), labels[:, 1:][keep]
    nll = response_nll_chunked(blocks, hidden, targets)
    if nll is None:
        nll = torch.nn.functional.cross_entropy(blocks.final_logits(hidden).float(), targets, reduction="sum")
    return nll, int(keep.sum())


def _blocks(model):
    """The block handle of a model, through peft's wrapper (its adapters sit inside the base model)."""
    from prunescope.probe.blocks import Blocks

    return Blocks(model.get_base_model() if hasattr(model, "get_base_model") else model)


def train_step(model, batch: list[Example], pad_id: int, device, micro_batch: int, *, teacher=None,
               kl_temperature: float = 1.0, total: int | None = None) -> tuple[float, int]:
    """Forward and backward over ``batch`` in micro-batches; the loss is the mean over the batch's
    response tokens (NLL, or KL to ``teacher``), or its sum divided by ``total`` (the whole step's
    response tokens, when ``batch`` is this rank's share of it). Returns (loss, tokens run). No
    optimizer step."""
    blocks = _blocks(model)
    teacher_blocks = _blocks(teacher) if teacher is not None else None
    n_resp = max(sum(e.n_response for e in batch) if total is None else total, 1)
    loss_total, seen = 0.0, 0
    for i in range(0, len(batch), micro_batch):
        ids, mask, labels = collate(batch[i:i + micro_batch], pad_id, device)
        if teacher_blocks is None:
            loss_sum, _ = response_nll_sum(blocks, ids, mask, labels)
        else:
            keep = labels[:, 1:] != IGNORE
            logits = response_logits(blocks, ids, mask, keep).float()
            with torch.no_grad():
                t_logits = response_logits(teacher_blocks, ids, mask, keep)
            loss_sum = response_kl(logits, t_logits, kl_temperature)
        (loss_sum / n_resp).backward()
        loss_total += float(loss_sum.detach()) / n_resp
        seen += int(mask.sum())
    return loss_total, seen


@torch.no_grad()
def perplexity(model, examples: list[Example], pad_id: int, micro_batch: int = 4, *,
               dist: Dist | None = None) -> tuple[float, float]:
    """(mean NLL per response token, perplexity) of ``model`` on ``examples``; the logits are made a
    chunk of rows at a time, as in training (at 2048 tokens, micro-batch 4 and Qwen's 152k vocabulary
    the whole fp32 logits would be 5 GB). In a group (``dist``) each rank scores every
    ``world_size``-th micro-batch and the sums are gathered and added in order: one process's value."""
    was_training = model.training
    model.eval()
    device = next(p.device for p in model.parameters())
    blocks = _blocks(model)
    dist = dist or Dist()
    mine = list(range(dist.rank, math.ceil(len(examples) / micro_batch), dist.world_size))
    sums = []
    for j in mine:
        ids, mask, labels = collate(examples[j * micro_batch:(j + 1) * micro_batch], pad_id, device)
        nll, n = response_nll_sum(blocks, ids, mask, labels)
        sums.append((float(nll), n))
    model.train(was_training)
    total, count = 0.0, 0
    for nll, n in gather_in_order(dist, mine, sums):
        total, count = total + nll, count + n
    loss = total / max(count, 1)
    return loss, math.exp(min(loss, 50.0))


# ---------------------------------------------------------------- data
def random_init(model_dir: str | Path, out: str | Path, *, seed: int = 0) -> Path:
    """A checkpoint of ``model_dir``'s architecture with fresh weights (the model's own init,
    seeded) and its tokenizer, written once to ``out`` (atomically; an existing one is reused, so
    a resumed control starts from the same weights).

    >>> random_init("pruned/bi25", "recovered/bi25-random/init", seed=0)  # doctest: +SKIP
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    if (out / "config.json").is_file():
        return out
    config = AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(config, "dtype", None) or torch.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f".{out.name}-", out.parent)   # the user's umask, not mkdtemp's 0700
    try:
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(model_dir).save_pretrained(tmp)
        follow_umask(tmp)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def training_records(data: str | Path, mode: str) -> tuple[list[dict], str]:
    """Records of an SGR file (or any prompt file with responses) and the field each mode trains on."""
    recs = [d for _, d in read_jsonl(data, "training record")]
    field = "reference" if mode == "external" else "response"
    missing = [i for i, r in enumerate(recs, 1) if not isinstance(r.get(field), str)
               or (field == "reference" and not r[field].strip())]
    if missing:
        hint = ("run `prunescope sgr` on these prompts first" if field == "response"
                else "the external arm needs the prompt file's own responses ('response'/'output' in the source)")
        raise PrunescopeError(f"{data}: {len(missing)} of {len(recs)} records have no {field!r} text "
                              f"(first: record {missing[0]}); {hint}")
    # A base model may answer some prompts with nothing at all (a base, not instruction-tuned, model
    # often stops at once). There is nothing to learn from an empty answer, and every arm drops the
    # same prompts, so SGR, external and distillation still train on the same prompt set.
    empty = [r for r in recs if isinstance(r.get("response"), str) and not r["response"].strip()]
    if empty:
        recs = [r for r in recs if not (isinstance(r.get("response"), str) and not r["response"].strip())]
        print(f"  {len(empty)} of {len(recs) + len(empty)} prompts got an empty SGR response: left out of every arm")
    if not recs:
        raise PrunescopeError(f"{data}: every SGR response is empty; the base model answers nothing to these "
                              "prompts (try an instruction-tuned model or other prompts)")
    return recs, field


MIN_PER_HELD_OUT = 5   # at most one record in five is held out: the rest is what the run learns from


def split_examples(examples: list[Example], eval_n: int, seed: int) -> tuple[list[Example], list[Example]]:
    """(training, held-out) examples: ``eval_n`` (``--heldout``) held out, but at most one in
    :data:`MIN_PER_HELD_OUT`, so fewer than that many records leave no held-out set (and no
    perplexity).

    >>> train, held = split_examples(list(range(4)), 32, 0)
    >>> len(train), held
    (4, [])
    """
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    eval_n = min(eval_n, len(examples) // MIN_PER_HELD_OUT)
    held = [examples[i] for i in order[:eval_n]]
    train = [examples[i] for i in order[eval_n:]]
    if not train:
        raise PrunescopeError(f"only {len(examples)} training records: need at least 2")
    return train, held


def _grad_norm(params: list[torch.Tensor], max_norm: float | None) -> float:
    """The adapters' total gradient norm (before clipping), clipped to ``max_norm`` where set; inf or
    NaN when a gradient is not finite (the caller then skips the step). Non-finite gradients are
    left as they are (clipping by a NaN norm would make every gradient NaN), so the skipped step's
    record names the weights where they started."""
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return 0.0
    norm = torch.nn.utils.get_total_norm([p.grad for p in with_grad])
    if max_norm and bool(torch.isfinite(norm)):
        torch.nn.utils.clip_grads_with_norm_(with_grad, max_norm, norm)  # as clip_grad_norm_ would
    return float(norm)


def _batch_indices(step: int, batch: int, n: int, seed: int) -> list[int]:
    """Example indices of optimizer step ``step``: a fresh seeded permutation per epoch, so a
    resumed run sees exactly the examples an uninterrupted one would."""
    out = []
    for g in range(step * batch, (step + 1) * batch):
        epoch, pos = divmod(g, n)
        out.append(_epoch_order(n, seed, epoch)[pos])
    return out


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    perm = list(range(n))
    random.Random(seed * 1000003 + epoch).shuffle(perm)
    return tuple(perm)


def plan_steps(sizes: list[int], batch: int, seed: int, *, steps: int | None = None,
               token_budget: int | None = None) -> tuple[int, int]:
    """(optimizer steps, response tokens) of a run over examples of ``sizes`` response tokens in
    the seeded batch order of :func:`_batch_indices`: ``steps`` steps, or the steps until
    ``token_budget`` tokens are trained (the last batch may pass it), whichever ends first. So an
    arm asked for N steps knows its tokens, and one asked for a token budget knows its steps,
    before it trains (steps skipped for a non-finite loss train no tokens: a budget then takes more).

    >>> plan_steps([10] * 8, 4, 0, steps=3), plan_steps([10] * 8, 4, 0, token_budget=100)
    ((3, 120), (3, 120))
    """
    if steps is None and token_budget is None:
        raise ValueError("plan_steps needs steps or token_budget")
    step, tokens = 0, 0
    while (steps is None or step < steps) and (token_budget is None or tokens < token_budget):
        tokens += sum(sizes[i] for i in _batch_indices(step, batch, len(sizes), seed))
        step += 1
    return step, tokens


def warmup_steps(warmup: int, steps: int, *, known: bool = True) -> int:
    """The warm-up a run of ``steps`` optimizer steps uses: ``warmup``, capped at the run's length
    so that its last step trains at the full learning rate (a 50-step warm-up in a 10-step run
    would otherwise never get past a fifth of ``--lr``). A run whose length is not known
    (``known=False``: until a token budget is spent) keeps ``warmup``.

    >>> warmup_steps(50, 1), warmup_steps(50, 200), warmup_steps(50, 10**9, known=False)
    (1, 50, 50)
    """
    return min(warmup, steps) if known else warmup


def warmup_schedule(opt, warmup: int):
    """The learning rate rises linearly over ``warmup`` steps, then stays (the QLoRA recipe's constant).

    >>> opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> sched, lrs = warmup_schedule(opt, 4), []
    >>> for _ in range(6):
    ...     lrs.append(sched.get_last_lr()[0]); opt.step(); sched.step()
    >>> lrs
    [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    """
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)


# ---------------------------------------------------------------- checkpoints
def _latest_checkpoint(out: Path) -> Path | None:
    ck = sorted((out / "checkpoints").glob("step-*"))
    return ck[-1] if ck else None


TUNED_WEIGHTS = "tuned.safetensors"   # a layer-tuning checkpoint's weights: the trained tensors only


def _save_checkpoint(out: Path, pm, opt, sched, state: dict) -> Path:
    """Trained weights (the adapter, or the tuned tensors) + optimizer + schedule + counters,
    written to a temp folder and renamed."""
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state['step']:06d}"
    tmp = make_temp_dir(".step-", root)
    if hasattr(pm, "peft_config"):
        pm.save_pretrained(tmp)
    else:  # layer tuning: the frozen rest of the model is the pruned checkpoint's
        from safetensors.torch import save_file

        save_file({n: p.detach().contiguous() for n, p in pm.named_parameters() if p.requires_grad},
                  str(tmp / TUNED_WEIGHTS))
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), **state}, tmp / "state.pt")
    follow_umask(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in sorted(root.glob("step-*"))[:-1]:  # keep the newest only
        shutil.rmtree(old, ignore_errors=True)
    return final


def _non_finite_record(step: int, loss: float, grad_norm: float, named, most: int = 5) -> dict:
    """What a skipped step looked like, for finding where training first goes non-finite: its loss
    and gradient norm (a finite loss with a non-finite gradient points at the backward pass), and
    the first adapter weights (in the model's order, so the lowest layer first) whose gradient is
    not finite, or whose value already is not."""
    bad_grads = [n for n, p in named if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    bad_weights = [n for n, p in named if not bool(torch.isfinite(p.detach()).all())]
    return {"step": step, "loss": loss if math.isfinite(loss) else str(loss),
            "grad_norm": grad_norm if math.isfinite(grad_norm) else str(grad_norm),
            "bad_grads": len(bad_grads), "first_bad_grads": bad_grads[:most],
            "bad_weights": len(bad_weights), "first_bad_weights": bad_weights[:most]}


def _load_checkpoint(path: Path, pm, opt, sched) -> dict:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if (path / TUNED_WEIGHTS).is_file():
        params = dict(pm.named_parameters())
        with torch.no_grad():
            for name, t in load_file(path / TUNED_WEIGHTS).items():
                params[name].copy_(t)
    else:
        set_peft_model_state_dict(pm, load_file(path / "adapter_model.safetensors"))
    # weights_only: a run folder may come from someone else; never unpickle code from it
    try:
        st = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
    except Exception as e:  # an UnpicklingError for anything but tensors and plain containers
        raise PrunescopeError(f"{path / 'state.pt'} holds more than tensors and plain values, so it is not "
                              f"loaded ({type(e).__name__}); delete {path} to restart from the previous "
                              "checkpoint or from scratch") from None
    opt.load_state_dict(st.pop("optimizer"))
    sched.load_state_dict(st.pop("scheduler"))
    rng, cuda_rng = st.pop("rng", None), st.pop("cuda_rng", None)
    if rng is not None:
        torch.set_rng_state(rng)
    dev = next(p.device for p in pm.parameters() if p.requires_grad)
    if cuda_rng is not None and dev.type == "cuda":
        torch.cuda.set_rng_state(cuda_rng, dev)
    return st


# ---------------------------------------------------------------- the run
RUN_CONFIG = "prunescope_recovery_run.json"
# what a recovery run writes besides the merged model (a folder holding RUN_CONFIG is all the run's)
RECOVER_OUTPUTS = (RUN_CONFIG, "prunescope_recovery.json", "checkpoints", "adapter", "init", "curve.*")


def recover_model(options: RecoverOptions | None = None, *, model: str | Path | None = None,
                  placement: Placement | None = None, output: Output | None = None, stop_after: int | None = None,
                  merge: bool = True, loaded=None) -> dict:
    """Finetune the pruned ``model`` on ``options.data`` (an SGR file) and write the recovered model
    to ``output.out``; a repair mode (``linear``, ``linear_circuit``) repairs it without training,
    and a chain (``linear+sgr``) repairs it into ``OUT/linear`` and trains the repaired model
    (:func:`_recover_repaired`).

    ``options.teacher``: the base model for ``mode="distill"`` and the linear repair (default there:
    the model the pruning record names); ``loaded``: that base model already in memory (a
    :class:`prunescope.probe.models.LoadedModel`, used by the repair). ``stop_after``: leave after this many
    optimizer steps in this call (a later call resumes) — for time-sliced machines. ``merge``: write
    the merged model (False: LoRA leaves its adapter only; a tuned model is always written). Returns
    the run's summary (:meth:`_TrainingRun.summary`: steps and response tokens trained, the recipe...;
    after a repair also ``repair``, its record, and ``chain``, the steps in order).

    >>> recover_model(RecoverOptions(mode="sgr", data="runs/sgr.jsonl"), model="pruned/bi25",
    ...               output=Output(out="recovered/bi25-sgr"))  # doctest: +SKIP
    >>> recover_model(RecoverOptions(mode="linear"), model="pruned/bi25", output=Output(out="recovered/bi25-linear"))  # doctest: +SKIP
    """
    cfg = (options or RecoverOptions()).check()
    placement, output = (placement or Placement()).check(), output or Output()
    if cfg.repair is not None:
        _one_process_repair(cfg, placement)
        return _recover_repaired(cfg, model, placement, output, loaded=loaded, stop_after=stop_after, merge=merge)
    _require_inputs(cfg, model, output)
    _check_split(cfg, placement.devices or env_world().world_size)
    return spread(recover_model, _recover, cfg, model=model, placement=placement, output=output, loaded=loaded,
                  stop_after=stop_after, merge=merge)


def _recover(d: Dist, cfg: RecoverOptions, *, model: str | Path, placement: Placement, output: Output, loaded=None,
             stop_after: int | None = None, merge: bool = True) -> dict:
    """One rank's part of a training run (a world of one: all of it). Every rank plans the same
    steps and holds a model copy on its device; rank 0 alone writes (:class:`_TrainingRun`)."""
    out = Path(output.out)
    with contextlib.nullcontext() if d.is_main else contextlib.redirect_stdout(io.StringIO()):
        data = _training_data(cfg, model, out, refuse_other=not output.overwrite)
    student_path = d.on_main(_prepare_folder, cfg, out, output.overwrite, data.student_path)
    pm, teacher = _load_models(cfg, student_path, rank_device(placement.device, d), plan_from=data.student_path)
    with run_lock(out if d.is_main else None, "recovery run"):  # the input is good: from here on the folder is written
        if d.is_main:
            record_run_config(out, data.run_config, RUN_CONFIG)
        run = _TrainingRun(cfg, out, pm, teacher, data, show_progress=output.progress and d.is_main, dist=d)
        done_here = run.train(stop_after)
        summary = run.summary()
        if not summary["finished"]:
            if done_here and run.state["step"] % cfg.save_every:
                d.on_main(run.save_checkpoint)
            return summary
        d.on_main(_write_recovered, run, student_path, summary, merge)
        return summary


def _prepare_folder(cfg: RecoverOptions, out: Path, overwrite: bool, student_path: str | Path) -> str | Path:
    """Before any model is loaded (the input is good): an earlier run's results go (``overwrite``),
    and the random control's starting weights are written; returns the model to train."""
    if overwrite and out.is_dir():  # the input is good: an earlier run's results go before anything is written
        with run_lock(out, "recovery run"):
            remove_previous(out, RECOVER_OUTPUTS, marker=RUN_CONFIG)
    if cfg.mode == "random":  # the control's starting weights become the model to recover
        return random_init(student_path, out / "init", seed=cfg.seed)  # run_config keeps the pruned path
    return student_path


def _check_split(cfg: RecoverOptions, world: int) -> None:
    """Data parallelism splits each optimizer step's micro-batches over the processes: refuse more
    processes than micro-batches (a process would have nothing to run)."""
    per_step = cfg.train_batch // cfg.micro_batch
    if world > 1 and per_step < world:
        raise PrunescopeError(f"{world} processes split each optimizer step's micro-batches, but --train-batch "
                              f"{cfg.train_batch} / --micro-batch {cfg.micro_batch} gives {per_step}: lower "
                              "--micro-batch or use fewer --devices")


def _one_process_repair(cfg: RecoverOptions, placement: Placement) -> None:
    """The linear repair (and a chain that starts with it) runs in one process."""
    if (placement.devices or 1) > 1 or is_distributed():
        raise PrunescopeError(f"--mode {cfg.mode}: the linear repair runs in one process; run --mode {cfg.repair} "
                              "alone first, then train the repaired model (OUT) over several processes")


REPAIRED = "linear"   # OUT/linear: a chain's repaired model, which its training step starts from


def _recover_repaired(cfg: RecoverOptions, model: str | Path | None, placement: Placement, output: Output, *,
                      loaded=None, stop_after: int | None = None, merge: bool = True) -> dict:
    """The repair of ``cfg.mode`` (:func:`prunescope.recover.linear.linear_repair`) into ``OUT``; in a
    chain into ``OUT/linear``, then the chain's training mode on the repaired model into ``OUT`` with
    the same data and recipe. A finished run records both steps in ``OUT/prunescope_recovery.json``."""
    from prunescope.recover.linear import linear_repair

    if model is None or not output.out:
        raise PrunescopeError(f"--mode {cfg.mode} needs the pruned model (--model PRUNED, from prunescope prune) "
                              "and an output folder (--out recovered/NAME)")
    out, training = Path(output.out), None
    if cfg.target is not None:   # checked before the repair runs: a chain without its data stops here
        training = cfg.replace(mode=split_mode(cfg.mode)[1], teacher=cfg.teacher if cfg.target == "distill" else None,
                               objective=None, ridge=None, texts=None, calibration=None, circuit_mix=None,
                               circuit_probes=None).check()
        _require_inputs(training, model, output)
    repaired = out / REPAIRED if training else out
    record = linear_repair(cfg.linear_options(), model=model, base=cfg.teacher, placement=placement,
                           output=output.replace(out=str(repaired)), loaded=loaded)
    if training is None:
        summary = {**_NOTHING_TRAINED, "mode": cfg.mode, "out": str(out)}
    else:
        if output.overwrite and out.is_dir():  # the earlier training goes; the repair just written stays
            with run_lock(out, "recovery run"):
                remove_previous(out, RECOVER_OUTPUTS)
        summary = recover_model(training, model=repaired, placement=placement, output=output.replace(overwrite=False),
                                stop_after=stop_after, merge=merge)
    summary = {**summary, "mode": cfg.mode, "repair": record, "chain": _chain(cfg, model, record, repaired, summary)}
    if summary["finished"] and (training is None or (out / "prunescope_recovery.json").is_file()):
        _write_chain_record(out, model, summary, cfg)
    return summary


# a repair alone as a recovery summary: nothing trained
_NOTHING_TRAINED = {"train": None, "recipe": None, "steps": 0, "tokens": 0, "trained_tokens": 0, "planned_steps": 0,
                    "planned_tokens": 0, "skipped_steps": 0, "non_finite": [], "all_tokens": 0, "train_seconds": 0.0,
                    "tokens_per_s": None, "final_eval_ppl": None, "finished": True}


def _chain(cfg: RecoverOptions, model: str | Path, record: dict, repaired: Path, trained: dict) -> list[dict]:
    """The steps of a repair (and its training) in order: what each started from and wrote, the fit's
    seconds and relative residuals, the optimizer steps and response tokens."""
    steps = [{"mode": cfg.repair, "model": str(model), "base": record["config"]["base"], "out": str(repaired),
              "record": LINEAR_RECORD, "fit_seconds": record["fit_seconds"],
              "relative_residual": [s["relative_residual"] for s in record["spans"]],
              "relative_residual_pruned": [s["relative_residual_pruned"] for s in record["spans"]]}]
    if cfg.target is not None:
        steps.append({"mode": split_mode(cfg.mode)[1], "model": str(repaired), "out": trained["out"],
                      "steps": trained["steps"], "tokens": trained["tokens"], "train_seconds": trained["train_seconds"]})
    return steps


def _write_chain_record(out: Path, model: str | Path, summary: dict, cfg: RecoverOptions) -> None:
    """``OUT/prunescope_recovery.json`` of a repair (alone or before training): ``base`` is the pruned
    model the chain started from (a report finds its pruned stage by it), ``recovery`` the summary
    with both steps; after training the training's record is kept, its ``base`` as ``repaired``."""
    from prunescope.probe.models import resolve_model

    path = out / "prunescope_recovery.json"
    old = json.loads(path.read_text()) if cfg.target is not None else {}
    config = old.get("config") or summary["repair"]["config"]   # the training's settings, else the repair's
    extra = {"repaired": old["base"]} if "base" in old else {}
    atomic_write_json(path, {**old, **extra, "base": str(resolve_model(model)), "recovery": summary,
                             "config": {**config, "mode": cfg.mode}})


def _require_inputs(cfg: RecoverOptions, model: str | Path | None, output: Output) -> None:
    """Refuse a run without a pruned model, training data or an output folder."""
    if model is None:
        raise PrunescopeError("recovery needs the pruned model: pass --model PRUNED (from prunescope prune)")
    if not cfg.data:
        raise PrunescopeError("recovery needs training data: pass --data SGR.jsonl (from prunescope sgr)")
    if not output.out:
        raise PrunescopeError("recovery needs an output folder: pass --out recovered/NAME")


@dataclass
class _TrainingData:
    """What a recovery run trains on: the resolved pruned model, its tokenizer, the training and
    held-out examples, the settings recorded in the run folder, the optimizer steps to run and the
    response tokens they train (:func:`plan_steps`), and the warm-up used."""

    student_path: str | Path
    tokenizer: object
    train: list[Example]
    held: list[Example]
    run_config: dict
    steps: int
    tokens: int
    warmup: int


HELDOUT_SEED = 0   # the held-out split is drawn once, whatever --seed: every seed's arm trains and is scored alike


def _training_data(cfg: RecoverOptions, model: str | Path, out: Path | None,
                   refuse_other: bool = True) -> _TrainingData:
    """Tokenize the training records and split off the held-out examples; a run folder ``out`` that
    holds another run's settings is refused here (``refuse_other``; ``--overwrite`` removes it
    instead), before any model is loaded (``out=None``: only planning, no folder)."""
    from transformers import AutoTokenizer

    from prunescope.probe.models import resolve_model

    student_path = resolve_model(model)
    records, field = training_records(cfg.data, cfg.target)
    tok = AutoTokenizer.from_pretrained(student_path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    examples = encode_all(tok, records, field, cfg.max_seq_len, drop_long=cfg.long_prompts == "drop")
    dropped = len(records) - len(examples)
    if dropped:
        print(f"  {_count(dropped, 'prompt')} of {cfg.max_seq_len} tokens or more left out (--long-prompts drop)")
    train, held = split_examples(examples, cfg.heldout, HELDOUT_SEED)
    settings = {k: v for k, v in asdict(cfg).items()  # at its default unrecorded: older folders still resume
                if not (k == "long_prompts" and v == "error")}
    run_config = {**settings, "model": str(student_path), "data": str(cfg.data),
                  "teacher": str(cfg.teacher) if cfg.teacher else None, "n_train": len(train), "n_eval": len(held),
                  **({"dropped_long_prompts": dropped} if dropped else {})}
    # not config.json: the merged model's own config lands in the same folder
    if out is not None and refuse_other:
        check_run_config(out, run_config, "recovery run", name=RUN_CONFIG, paths=("model", "data", "teacher"),
                         write=False)
    elif out is not None:
        expect_folder(out)
    steps, tokens = _planned(cfg, [e.n_response for e in train])
    warmup = warmup_steps(cfg.warmup or math.ceil(cfg.warmup_ratio * steps), steps)
    if warmup < cfg.warmup:
        print(f"  --warmup {cfg.warmup} is longer than the run ({_count(steps, 'step')}): warming up over "
              f"{_count(warmup, 'step')}, so the last step trains at --lr {cfg.lr:g}")
    if not held:
        print(f"  {len(examples)} training records: too few for a held-out split (it takes "
              f"{MIN_PER_HELD_OUT}), so the run reports no held-out perplexity")
    return _TrainingData(student_path, tok, train, held, run_config, steps, tokens, warmup)


def _planned(cfg: RecoverOptions, sizes: list[int]) -> tuple[int, int]:
    """(steps, response tokens) of the run: ``steps`` and/or ``token_budget``, else ``epochs`` epochs."""
    if cfg.steps is None and cfg.token_budget is None:
        return plan_steps(sizes, cfg.train_batch, cfg.seed, steps=cfg.epochs * math.ceil(len(sizes) / cfg.train_batch))
    return plan_steps(sizes, cfg.train_batch, cfg.seed, steps=cfg.steps, token_budget=cfg.token_budget)


def plan_recovery(options: RecoverOptions | None = None, *, model: str | Path) -> dict:
    """What a recovery of ``model`` with ``options`` will train, from the tokenized data alone (no
    model is loaded): its optimizer ``steps`` and response ``tokens``, the training and held-out
    example counts and the warm-up. Arms matched on steps know their tokens from it, arms matched on
    tokens (``token_budget``) their steps; each run records both again in its summary.

    >>> plan_recovery(RecoverOptions(data="runs/sgr.jsonl", steps=100), model="pruned/bi25")  # doctest: +SKIP
    {'steps': 100, 'tokens': 181234, 'n_train': 568, 'n_eval': 32, 'warmup': 50}
    """
    cfg = (options or RecoverOptions()).resolved()
    if not cfg.data:
        raise PrunescopeError("planning a recovery needs its training data: pass data=SGR.jsonl")
    data = _training_data(cfg, model, None)
    return {"steps": data.steps, "tokens": data.tokens, "n_train": len(data.train), "n_eval": len(data.held),
            "warmup": data.warmup}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _load_models(cfg: RecoverOptions, student_path: str | Path, device: str, plan_from: str | Path):
    """The student in training mode, with fresh LoRA adapters (seeded) or, for ``train="tune"``,
    only the chosen layers trainable (:func:`tune_layers`, read from ``plan_from``'s plan record),
    and for a distillation target the teacher (None otherwise)."""
    torch.manual_seed(cfg.seed)
    model = load_student(student_path, quant=cfg.quant, device=device)
    if cfg.train == "tune":
        pm = _tunable(model, tune_layers(cfg, plan_from, model.config.num_hidden_layers), cfg)
    else:
        pm = add_lora(model, cfg)
    pm.train()
    teacher = _load_teacher(cfg.teacher, pm, device) if cfg.target == "distill" else None
    return pm, teacher


def tune_layers(cfg: RecoverOptions, model_dir: str | Path, n_layers: int) -> list[int]:
    """The decoder layers ``--train tune`` trains in a pruned model of ``n_layers`` layers:
    ``tune_last``'s last layers, ``tune_layers`` as given, or by default the kept layers just
    before and after each cut (:func:`prunescope.recover.student.cut_neighbours` of the plan record
    in ``model_dir``).

    >>> tune_layers(RecoverOptions(train="tune", tune_last=2).check(), "pruned/bi25", 6)
    [4, 5]
    """
    if cfg.tune_last is not None:
        if cfg.tune_last > n_layers:
            raise PrunescopeError(f"--tune-last {cfg.tune_last}: the model has {n_layers} layers")
        return list(range(n_layers - cfg.tune_last, n_layers))
    if cfg.tune_layers is not None:
        return list(cfg.tune_layers)
    plan = plan_drop(model_dir)
    if plan is None:
        raise PrunescopeError(f"{model_dir} holds no plan record ({' or '.join(PLAN_FILES)}), so the layers next to "
                              "its cut are not known: pass --tune-layers L1,L2 or --tune-last K")
    drop, n_before = plan
    if n_before - len(drop) != n_layers:
        raise PrunescopeError(f"{model_dir}: its plan drops {len(drop)} of {n_before} layers, but the model has "
                              f"{n_layers}; pass --tune-layers L1,L2 or --tune-last K")
    return cut_neighbours(drop, n_before)


def _tunable(model, layers: list[int], cfg: RecoverOptions):
    """``model`` with only ``layers`` (and with ``tune_last`` the final norm and LM head) trainable."""
    tune_parameters(model, layers, head=cfg.tune_last is not None)
    if cfg.grad_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        # non-reentrant checkpoints reach the tuned weights without it: the frozen layers below the
        # lowest tuned one then run no backward at all
        model.disable_input_require_grads()
    return model


def _load_teacher(teacher: str, student, device: str):
    """The unpruned base model to distill from (bf16 on a GPU), in eval mode; refused when its
    vocabulary is not the student's."""
    from transformers import AutoModelForCausalLM

    from prunescope.probe.models import resolve_model

    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(resolve_model(teacher), dtype=dtype).to(device).eval()
    if model.config.vocab_size != student.config.vocab_size:
        raise PrunescopeError("teacher and student have different vocabularies: distill from the model "
                              "the student was pruned from")
    return model


class _TrainingRun:
    """The adapters, optimizer, schedule and counters of one recovery run in ``out``, resumed from
    its newest checkpoint where there is one.

    ``state`` is what a checkpoint saves besides the adapters, optimizer and schedule: the step,
    the trained response tokens, every token run, the training time and the curve; "window" and
    "grad_window" are the step losses and gradient norms since the last curve point, so that a
    resumed run's curve equals an uninterrupted one's; "non_finite" describes the skipped steps
    (their count is the summary's skipped_steps).
    """

    def __init__(self, cfg: RecoverOptions, out: Path, pm, teacher, data: _TrainingData, *, show_progress: bool,
                 dist: Dist | None = None):
        self.cfg, self.out, self.pm, self.teacher, self.data = cfg, out, pm, teacher, data
        self.show_progress, self.d = show_progress, dist or Dist()
        self.named = [(n, p) for n, p in pm.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named]
        self.opt = torch.optim.AdamW(_param_groups(self.named, cfg.weight_decay), lr=cfg.lr,
                                     betas=(0.9, cfg.adam_beta2))
        self.sched = warmup_schedule(self.opt, data.warmup)
        self.state = {"step": 0, "tokens": 0, "all_tokens": 0, "train_seconds": 0.0, "curve": [], "window": [],
                      "grad_window": [], "non_finite": []}
        ck = _latest_checkpoint(out)
        if ck is not None:
            self.state = {"window": [], "grad_window": [], "non_finite": [],
                          **_load_checkpoint(ck, pm, self.opt, self.sched)}
        self.dev = next(p.device for p in pm.parameters() if p.requires_grad)
        self.pad = data.tokenizer.pad_token_id
        self.bar = None
        self.bad_in_row = 0

    def finished(self) -> bool:
        """The token budget or the step count is reached. A run asked only for a token budget goes
        past its planned steps where skipped steps (which train no tokens) left it short."""
        state, cfg = self.state, self.cfg
        if cfg.token_budget is not None and state["tokens"] >= cfg.token_budget:
            return True
        return state["step"] >= self.data.steps and (cfg.token_budget is None or cfg.steps is not None)

    def train(self, stop_after: int | None) -> int:
        """Optimizer steps until :meth:`finished`, or until ``stop_after`` steps ran in this call;
        returns the number of steps run here."""
        if not self.state["curve"]:
            self.log_eval(None)
        self.bar = tqdm(total=self.data.steps, initial=self.state["step"], desc=f"recover ({self.cfg.mode})",
                        unit="step", disable=not self.show_progress)
        done_here = 0
        while not self.finished():
            if stop_after is not None and done_here >= stop_after:
                break
            self.step()
            done_here += 1
            self.bar.update(1)
            self.log_and_save()
        self.bar.close()
        return done_here

    def step(self) -> None:
        """One optimizer step on the next batch, or a skipped one where its loss or gradient is not
        finite. A skipped step still advances: the next step takes the next batch."""
        cfg, state = self.cfg, self.state
        t0 = time.perf_counter()
        batch = [self.data.train[i] for i in _batch_indices(state["step"], cfg.train_batch, len(self.data.train),
                                                            cfg.seed)]
        n_resp = sum(e.n_response for e in batch)
        if self.d.world_size > 1:  # each rank draws its own dropout, the same whether resumed or not
            torch.manual_seed(cfg.seed * 1000003 + state["step"] * self.d.world_size + self.d.rank)
        step_loss, seen = train_step(self.pm, _rank_share(batch, cfg.micro_batch, self.d), self.pad, self.dev,
                                     cfg.micro_batch, teacher=self.teacher, kl_temperature=cfg.kl_temperature,
                                     total=n_resp)
        if self.d.world_size > 1:  # the batch's loss, tokens and gradient: the sums of the ranks' shares
            step_loss, seen = sum_over_ranks(self.d, [step_loss, seen], self.dev)
            seen = int(seen)
            sum_gradients(self.d, self.params)
        state["all_tokens"] += seen
        grad_norm = _grad_norm(self.params, cfg.max_grad_norm)
        if math.isfinite(step_loss) and math.isfinite(grad_norm):
            self.bad_in_row = 0
            self.opt.step()
            self.sched.step()
            state["tokens"] += n_resp
            state["window"].append(step_loss)
            state["grad_window"].append(grad_norm)
            self.bar.set_postfix(loss=f"{step_loss:.3f}")
        else:
            self.skip(step_loss, grad_norm)
        self.opt.zero_grad(set_to_none=True)
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
        state["train_seconds"] += time.perf_counter() - t0  # a skipped step's tokens count in all_tokens too
        state["step"] += 1

    def skip(self, step_loss: float, grad_norm: float) -> None:
        """Record a step left out for a non-finite loss or gradient; raise :class:`RecoveryDiverged`
        after ``max_bad_steps`` of them in a row."""
        # one bad batch must not poison the adapters (a NaN gradient makes AdamW's weights NaN for
        # good): skip its update, and stop when the run keeps diverging
        cfg, state = self.cfg, self.state
        self.bad_in_row += 1
        record = _non_finite_record(state["step"] + 1, step_loss, grad_norm, self.named)
        state["non_finite"].append(record)
        if self.d.is_main:
            self.bar.write(f"recover ({cfg.mode}): step {state['step'] + 1} skipped: {record}")
        if self.bad_in_row >= cfg.max_bad_steps:
            raise RecoveryDiverged(
                f"recovery ({cfg.mode}) diverged: {self.bad_in_row} steps in a row with a non-finite loss or "
                f"gradient at step {state['step'] + 1} (loss {step_loss}, gradient norm {grad_norm}); lower "
                f"--lr or --max-grad-norm and resume from {self.out}", state["non_finite"][-self.bad_in_row:])

    def log_and_save(self) -> None:
        """The curve point and checkpoint due after this step (both are due at the last step); a
        skipped step's point averages the steps of the window that did train."""
        state, last = self.state, self.finished()
        if state["step"] % self.cfg.eval_every == 0 or last:
            w, g = state["window"], state["grad_window"]  # g is empty only when resuming an old checkpoint
            self.log_eval(sum(w) / len(w) if w else None, sum(g) / len(g) if g else None)
            state["window"], state["grad_window"] = [], []
        if (state["step"] % self.cfg.save_every == 0 or last) and self.d.is_main:
            self.save_checkpoint()

    def log_eval(self, train_loss: float | None, grad_norm: float | None = None) -> None:
        """Append a point (held-out loss and perplexity, learning rate, throughput) to the curve and
        rewrite ``curve.csv``."""
        state = self.state
        loss, ppl = None, None   # no held-out set: no perplexity, rather than 1.00 over nothing
        if self.data.held:
            loss, ppl = perplexity(self.pm, self.data.held, self.pad, self.cfg.micro_batch, dist=self.d)
        secs = state["train_seconds"]
        state["curve"].append({"step": state["step"], "tokens": state["tokens"], "train_loss": train_loss,
                               "eval_loss": loss, "eval_ppl": ppl, "lr": self.sched.get_last_lr()[0],
                               "train_seconds": round(secs, 3),
                               "tokens_per_s": state["all_tokens"] / secs if secs else None,
                               "grad_norm": grad_norm})
        if self.d.is_main:
            write_table(state["curve"], self.out / "curve", columns=list(state["curve"][0]))

    def save_checkpoint(self) -> Path:
        """Trained weights, optimizer, schedule, ``state`` and the random generators' state (LoRA
        dropout draws from it: a resumed run draws what an uninterrupted one would), as
        ``checkpoints/step-N`` (the newest only)."""
        rng = {"rng": torch.get_rng_state()}
        if self.dev.type == "cuda":
            rng["cuda_rng"] = torch.cuda.get_rng_state(self.dev)
        return _save_checkpoint(self.out, self.pm, self.opt, self.sched, {**self.state, **rng})

    def summary(self) -> dict:
        """The run's record: what was trained (``train``, ``recipe``, the values the recipe set, the
        tuned layers), ``steps`` and ``tokens`` (response tokens trained; ``trained_tokens`` too)
        beside the planned ones, skipped steps, time, throughput, final perplexity (None without a
        held-out set), the training and held-out example counts and the warm-up used. Every
        resolved setting is in the record's ``config``."""
        state, secs, cfg = self.state, self.state["train_seconds"], self.cfg
        return {"mode": cfg.mode, "train": cfg.train, "recipe": cfg.recipe,
                "set_by_recipe": sorted(set(getattr(cfg, "_filled", ())) & set(RECIPES[cfg.recipe])),
                **({"tuned_layers": _layers_of(self.named), "tuned_head": cfg.tune_last is not None}
                   if cfg.train == "tune" else {}),
                "steps": state["step"], "tokens": state["tokens"], "trained_tokens": state["tokens"],
                "planned_steps": self.data.steps, "planned_tokens": self.data.tokens, "token_budget": cfg.token_budget,
                "n_train": len(self.data.train), "n_eval": len(self.data.held), "warmup": self.data.warmup,
                "skipped_steps": len(state["non_finite"]), "non_finite": state["non_finite"],
                "all_tokens": state["all_tokens"], "train_seconds": round(secs, 2),
                "tokens_per_s": state["all_tokens"] / secs if secs else None,
                "final_eval_ppl": state["curve"][-1]["eval_ppl"], "finished": self.finished(), "out": str(self.out)}


def _rank_share(batch: list[Example], micro_batch: int, d: Dist) -> list[Example]:
    """This rank's micro-batches of an optimizer step's ``batch``: every ``world_size``-th, from the
    rank's own (the whole batch in a world of one).

    >>> _rank_share(list("abcdef"), 1, Dist(1, 2)), _rank_share(list("abcdef"), 2, Dist(0, 2))
    (['b', 'd', 'f'], ['a', 'b', 'e', 'f'])
    """
    if d.world_size == 1:
        return batch
    return [e for j in range(d.rank, math.ceil(len(batch) / micro_batch), d.world_size)
            for e in batch[j * micro_batch:(j + 1) * micro_batch]]


def _param_groups(named: list[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """AdamW's parameter groups: weight decay on the matrices, none on vectors (norm weights,
    biases), as the HF Trainer does; every LoRA weight is a matrix."""
    decay = [p for _, p in named if p.ndim >= 2]
    rest = [p for _, p in named if p.ndim < 2]
    return [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0})
            if g["params"]]


def _layers_of(named: list[tuple[str, torch.nn.Parameter]]) -> list[int]:
    """The decoder layers the named parameters belong to (``...layers.N....``).

    >>> _layers_of([("model.layers.3.mlp.up_proj.weight", None), ("lm_head.weight", None)])
    [3]
    """
    import re

    return sorted({int(m.group(1)) for n, _ in named if (m := re.search(r"\.layers\.(\d+)\.", n))})


def _write_recovered(run: _TrainingRun, student_path: str | Path, summary: dict, merge: bool) -> None:
    """A finished run's curve figure and model: a tuned model as it is, a LoRA run's final adapter
    (written to a temp folder and renamed) and, with ``merge``, the merged model; either with its
    recovery record."""
    cfg, out = run.cfg, run.out
    plot_curve(run.state["curve"], out / "curve.png", f"{Path(str(student_path)).name}: {cfg.mode}")
    record = {"recovery": summary, "config": run.data.run_config}
    if cfg.train == "tune":
        from prunescope.recover.merge import write_model

        write_model(run.pm, out, base=student_path, tokenizer=run.data.tokenizer, record=record)
        return
    adapter = out / "adapter"
    tmp = make_temp_dir(".adapter-", out)
    run.pm.save_pretrained(tmp)
    follow_umask(tmp)
    if adapter.exists():
        shutil.rmtree(adapter)
    tmp.rename(adapter)
    if merge:
        from prunescope.recover.merge import merge_adapter

        merge_adapter(student_path, adapter, out, quant=cfg.quant, tokenizer=run.data.tokenizer, record=record)


def plot_curve(curve: list[dict], path: Path, title: str) -> Path:
    """The held-out perplexity over trained tokens; without a held-out set, the training loss (and
    the title says there is no held-out set)."""
    from prunescope.core.plots import save_figure, plt

    fig, ax = plt.subplots(figsize=(6, 3.2), layout="constrained")
    held = any(c.get("eval_ppl") is not None for c in curve)
    key, label = ("eval_ppl", "held-out perplexity") if held else ("train_loss", "training loss")
    points = [(c["tokens"], c[key]) for c in curve if c.get(key) is not None]
    ax.plot([t for t, _ in points], [v for _, v in points], marker="o", label=label)
    ax.set_xlabel("trained response tokens")
    ax.set_ylabel("perplexity" if held else "training loss (no held-out set)")
    if held:
        ax.set_yscale("log")
    ax.set_title(title if held else f"{title} (no held-out set)")
    ax.legend()
    return save_figure(fig, path)


def describe_perplexity(summary: dict) -> str:
    """The held-out perplexity of a recovery summary for a printed line, or that there is none.

    >>> describe_perplexity({"final_eval_ppl": 12.345, "n_eval": 32})
    'held-out perplexity 12.35 (32 examples)'
    >>> describe_perplexity({"final_eval_ppl": None, "n_eval": 0, "n_train": 4})
    'no held-out perplexity (4 records: a held-out split needs 5)'
    """
    if summary.get("final_eval_ppl") is None:
        return (f"no held-out perplexity ({summary.get('n_train', '?')} records: a held-out split needs "
                f"{MIN_PER_HELD_OUT})")
    return f"held-out perplexity {summary['final_eval_ppl']:.2f} ({summary.get('n_eval', '?')} examples)"


def describe_recovery(summary: dict) -> str:
    """A recovery summary for a printed line: the repair's fit (seconds; each span's relative
    residual, pruned -> repaired), then what was trained.

    >>> describe_recovery({"mode": "linear", "repair": {"fit_seconds": 1.5, "spans": [
    ...     {"layers": [3, 4], "relative_residual": 0.4, "relative_residual_pruned": 0.9}]}})
    'linear repair fitted in 1.5 s, relative residual (pruned -> repaired) 3-4 0.900 -> 0.400'
    >>> describe_recovery({"mode": "sgr", "steps": 8, "trained_tokens": 900, "final_eval_ppl": 9.0, "n_eval": 4})
    '8 steps, 900 response tokens, held-out perplexity 9.00 (4 examples)'
    """
    repair, training = split_mode(summary["mode"])
    parts = []
    if repair and summary.get("repair"):
        rec = summary["repair"]
        spans = ", ".join(f"{s['layers'][0]}{'-' + str(s['layers'][-1]) if len(s['layers']) > 1 else ''} "
                          f"{s['relative_residual_pruned']:.3f} -> {s['relative_residual']:.3f}" for s in rec["spans"])
        parts.append(f"{repair} repair fitted in {rec['fit_seconds']:g} s, relative residual (pruned -> repaired) "
                     f"{spans}")
    if training:
        parts.append(f"{summary['steps']} steps, {summary['trained_tokens']} response tokens, "
                     f"{describe_perplexity(summary)}")
    return "; then ".join(parts)


def read_summary(out: str | Path) -> dict:
    """The recovery record written next to a merged model."""
    return json.loads((Path(out) / "prunescope_recovery.json").read_text())


__all__ = ["RecoverOptions", "recover_model", "load_student", "add_lora", "compute_dtype", "perplexity",
           "response_nll", "response_kl", "collate", "check_bitsandbytes", "plot_curve", "read_summary",
           "describe_perplexity", "describe_recovery", "warmup_steps", "plan_steps", "plan_recovery", "tune_layers",
           "split_mode", "REPAIRS", "RECIPES", "RECIPE_SOURCES"]
