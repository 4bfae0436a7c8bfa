"""Planted circuits: small models trained here, in which the layers that carry the answer are known
by construction, to check the localization methods against a ground truth.

Llama-shaped models with six layers, some of their parts frozen to *pass-throughs* (output
projection or MLP down projection zero, so the sublayer adds exactly nothing to the residual
stream):

* ``sum-planted``: two-digit addition modulo 10 on ``BOS a + b =``; only layer 1's attention and
  layer 4's MLP can learn. The answer needs both (the attention moves ``a`` and ``b`` to the last
  position, the MLP computes the sum), so the planted layers are {1, 4}.
* ``count-spread`` (the control): how many of five digits ``BOS d1 .. d5 =`` are >= 5. Layer l
  (1-5) can only move digit l to the answer position (its attention is masked to that key), so each
  digit's share of the count passes through its own layer; trained with LayerDrop, no layer can
  finish the count for the others. The mechanism is spread over five layers by construction.

Models are trained on the CPU in seconds (seeded) and cached in ``$PRUNESCOPE_CACHE/planted/``.
:func:`localization_check` scores the layer-skip sweep, exact patching and each attribution method
by precision and recall at k of the planted layers, and by the share of the total per-layer effect
that the top-k layers hold (near 1: a sharp circuit; a spread mechanism gives much less).

>>> spec = SPECS["sum-planted"]
>>> spec.planted_layers, spec.trainable, SPECS["count-spread"].planted_layers
((1, 4), (('attn', 1), ('mlp', 4)), ())
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from prunescope.probe.blocks import Blocks
from prunescope.probe.models import cache_dir

from prunescope.circuits.pairs import EncodedPairs
from prunescope.circuits.patching import KINDS, attribution_patching, exact_patching, layer_importance, plan_cells

BOS, PLUS, EQ, DIGIT0 = 0, 1, 2, 3   # token ids: digits are 3..12
VOCAB = 16


@dataclass(frozen=True)
class PlantedSpec:
    """One planted model: which sublayers may learn (the rest are pass-throughs), and how it trains."""

    name: str
    trainable: tuple[tuple[str, int], ...]   # ("attn" | "mlp", layer)
    task: str = "sum"                        # "sum": (a + b) % 10; "count": how many of 5 digits are >= 5
    routed: bool = False                     # count: layer l's attention can only read digit l (by mask)
    n_layers: int = 6
    hidden: int = 64
    intermediate: int = 256                  # MLP width of every layer
    heads: int = 4
    layerdrop: float = 0.0                   # probability of skipping each layer in a training step
    spread: bool = False                     # the control: no small set of layers should stand out
    k: int = 2                               # how many top layers a method's map is judged by
    steps: int = 600
    batch: int = 128
    lr: float = 3e-3
    seed: int = 0

    @property
    def planted_layers(self) -> tuple[int, ...]:
        """The layers that carry the answer by construction (none for the spread control)."""
        return () if self.spread else tuple(sorted({layer for _, layer in self.trainable}))

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


SPECS = {
    "sum-planted": PlantedSpec("sum-planted", trainable=(("attn", 1), ("mlp", 4))),
    # the control: counting digits >= 5 among five, where layer l (1-5) can only move digit l to the
    # answer position (its attention is masked to that one key), so every digit's contribution passes
    # through its own layer; trained with LayerDrop, no layer can finish the count for the others.
    # The mechanism is spread over layers 1-5 by construction.
    "count-spread": PlantedSpec("count-spread", task="count", routed=True,
                                trainable=tuple((part, layer) for layer in range(1, 6) for part in ("attn", "mlp")),
                                intermediate=32, heads=2, layerdrop=0.3, spread=True, steps=1500),
}
LENGTH = {"sum": 5, "count": 7}


def _config(spec: PlantedSpec):
    from transformers import LlamaConfig

    return LlamaConfig(attn_implementation="eager",vocab_size=VOCAB, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                       num_hidden_layers=spec.n_layers, num_attention_heads=spec.heads,
                       num_key_value_heads=spec.heads, max_position_embeddings=16, tie_word_embeddings=False,
                       bos_token_id=BOS, eos_token_id=EQ, pad_token_id=BOS)


def prompts(digits: torch.Tensor) -> torch.Tensor:
    """``[BOS, d1, +, d2, =]`` (two digits) or ``[BOS, d1 .. d5, =]`` (five), one row per digit row."""
    n = digits.shape[0]
    bos, eq = torch.full((n, 1), BOS), torch.full((n, 1), EQ)
    if digits.shape[1] == 2:
        return torch.cat([bos, DIGIT0 + digits[:, :1], torch.full((n, 1), PLUS), DIGIT0 + digits[:, 1:], eq], 1)
    return torch.cat([bos, DIGIT0 + digits, eq], 1)


def answers(task: str, digits: torch.Tensor) -> torch.Tensor:
    if task == "sum":
        return DIGIT0 + digits.sum(1) % 10
    return DIGIT0 + (digits >= 5).sum(1)


def _draw(task: str, n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 10, (n, 2 if task == "sum" else 5), generator=g)


def _route(model, spec: PlantedSpec) -> None:
    """count: layer l's attention, at the answer position, may read only digit l (position l) and
    itself; every other position reads only itself. Set as the attention mask of each routed layer."""
    if not spec.routed:
        return
    T = LENGTH[spec.task]
    for i, layer in enumerate(model.model.layers):
        allowed = torch.eye(T, dtype=torch.bool)
        if 1 <= i <= 5:
            allowed[T - 1, i] = True
        mask = torch.zeros(T, T).masked_fill(~allowed, torch.finfo(torch.float32).min)

        def pre_hook(_module, args, kwargs, mask=mask):
            h = kwargs.get("hidden_states", args[0] if args else None)
            kwargs["attention_mask"] = mask.to(h.device, h.dtype)[None, None].expand(h.shape[0], 1, T, T)
            return args, kwargs

        layer.self_attn.register_forward_pre_hook(pre_hook, with_kwargs=True)


def _freeze_to_pass_through(model, spec: PlantedSpec) -> None:
    """Every sublayer not in ``spec.trainable`` adds exactly zero: its output projection is zero and frozen."""
    keep = set(spec.trainable)
    for i, layer in enumerate(model.model.layers):
        for part, out_proj, module in (("attn", layer.self_attn.o_proj, layer.self_attn),
                                       ("mlp", layer.mlp.down_proj, layer.mlp)):
            if (part, i) not in keep:
                with torch.no_grad():
                    out_proj.weight.zero_()
                for p in module.parameters():
                    p.requires_grad_(False)
        if ("attn", i) not in keep:
            layer.input_layernorm.weight.requires_grad_(False)
        if ("mlp", i) not in keep:
            layer.post_attention_layernorm.weight.requires_grad_(False)


def train(spec: PlantedSpec):
    """Train the planted model (seeded, CPU, seconds); returns ``(model, accuracy on all 100 sums)``."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(spec.seed)
    rng = random.Random(spec.seed)
    model = LlamaForCausalLM(_config(spec)).float()
    _freeze_to_pass_through(model, spec)
    _route(model, spec)
    blocks = Blocks(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=spec.steps, pct_start=0.1)
    g = torch.Generator().manual_seed(spec.seed)
    model.train()
    for _ in range(spec.steps):
        digits = _draw(spec.task, spec.batch, g)
        skip = [i for i in range(spec.n_layers) if spec.layerdrop and rng.random() < spec.layerdrop]
        if len(skip) == spec.n_layers:
            skip = skip[:-1]
        with blocks.skip(skip):
            logits = model(input_ids=prompts(digits)).logits[:, -1]
        loss = torch.nn.functional.cross_entropy(logits, answers(spec.task, digits))
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    return model, accuracy(blocks, spec.task)


def _eval_digits(task: str) -> torch.Tensor:
    """Every two-digit prompt (100), or 1000 seeded five-digit ones."""
    if task == "sum":
        a, b = torch.meshgrid(torch.arange(10), torch.arange(10), indexing="ij")
        return torch.stack([a.flatten(), b.flatten()], 1)
    return _draw(task, 1000, torch.Generator().manual_seed(12345))


@torch.no_grad()
def accuracy(blocks: Blocks, task: str = "sum", skip: Sequence[int] = ()) -> float:
    """Accuracy on the evaluation prompts, with ``skip`` layers skipped."""
    digits = _eval_digits(task)
    with blocks.skip(list(skip)):
        pred = blocks.forward(prompts(digits))[:, -1].argmax(-1)
    return float((pred == answers(task, digits)).float().mean())


def planted_model(name: str, root: str | Path | None = None):
    """The trained model of ``SPECS[name]``, from the cache or trained now (then cached)."""
    from transformers import LlamaForCausalLM

    spec = SPECS[name]
    folder = Path(root or cache_dir() / "planted") / f"{name}-{spec.key}"
    if (folder / "config.json").is_file():
        model = LlamaForCausalLM.from_pretrained(folder, attn_implementation="eager").float().eval()
        _route(model, spec)
        return model
    model, acc = train(spec)
    from prunescope.core.results import follow_umask, make_temp_dir

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f".{folder.name}.", folder.parent)   # the user's umask, not mkdtemp's 0700
    model.save_pretrained(tmp)
    (tmp / "planted.json").write_text(json.dumps({**asdict(spec), "accuracy": acc}, indent=1))
    follow_umask(tmp)
    try:
        tmp.rename(folder)
    except OSError:  # another process cached it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return model


def planted_pairs(task: str = "sum", n: int = 32, seed: int = 0) -> EncodedPairs:
    """Clean / corrupted prompts whose answers differ, as patching reads them. sum: ``a`` changed;
    count: one digit, at a random position, moved across 5 (the count changes by one)."""
    g = torch.Generator().manual_seed(seed)
    clean = _draw(task, n, g)
    corrupt = clean.clone()
    if task == "sum":
        corrupt[:, 0] = (clean[:, 0] + torch.randint(1, 10, (n,), generator=g)) % 10
    else:
        pos = torch.randint(0, 5, (n,), generator=g)
        rows = torch.arange(n)
        corrupt[rows, pos] = (clean[rows, pos] + 5) % 10      # 0-4 <-> 5-9
    c, x = prompts(clean), prompts(corrupt)
    T = c.shape[1]
    return EncodedPairs(clean=c, corrupt=x, mask=torch.ones_like(c), last=torch.full((n,), T - 1),
                        tok_clean=answers(task, clean), tok_corrupt=answers(task, corrupt), lengths=[T] * n)


def _top(scores: dict[int, float], k: int) -> list[int]:
    return [layer for layer, _ in sorted(scores.items(), key=lambda kv: -abs(kv[1]))[:k]]


def localization_check(name: str, *, n_pairs: int = 32, ig_steps: Sequence[int] = (4,), root=None) -> list[dict]:
    """Per method: precision and recall at k = |planted layers|, and the top-k share of the total
    per-layer effect, for the skip sweep, exact patching, attribution patching and IG-k."""
    spec = SPECS[name]
    model = planted_model(name, root)
    blocks = Blocks(model)
    base = accuracy(blocks, spec.task)
    enc = planted_pairs(spec.task, n_pairs)
    per_layer = {"skip": {i: base - accuracy(blocks, spec.task, [i]) for i in range(spec.n_layers)}}
    plan = plan_cells(blocks, enc, kinds=KINDS, positions=LENGTH[spec.task])
    per_layer["exact"] = layer_importance(exact_patching(blocks, plan))
    per_layer["attribution"] = layer_importance(attribution_patching(blocks, plan))
    for k in ig_steps:
        per_layer[f"ig-{k}"] = layer_importance(attribution_patching(blocks, plan, steps=k))
    per_layer["graddrop"] = layer_importance(attribution_patching(blocks, plan, graddrop=True))
    per_layer["relp"] = layer_importance(attribution_patching(blocks, plan, relevance=True))
    planted, k = set(spec.planted_layers), spec.k
    rows = []
    for method, scores in per_layer.items():
        top = _top(scores, k)
        hit = len(planted & set(top))
        total = sum(abs(v) for v in scores.values())
        rows.append({"model": name, "method": method, "k": k, "planted": sorted(planted), "top": top,
                     "precision": hit / k if planted else float("nan"),
                     "recall": hit / len(planted) if planted else float("nan"),
                     "top_share": sum(abs(scores[i]) for i in top) / total if total else 0.0,
                     "accuracy": base, "scores": {i: round(v, 4) for i, v in sorted(scores.items())}})
    return rows


def format_check(rows: list[dict]) -> str:
    """The planted-circuit table as Markdown (one row per model x method)."""
    lines = ["| model | planted layers | method | top-k layers | precision@k | recall@k | top-k share |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        planted = " ".join(map(str, r["planted"])) or "none (spread over 1-5)"
        pr = "—" if r["precision"] != r["precision"] else f"{r['precision']:.2f}"
        rc = "—" if r["recall"] != r["recall"] else f"{r['recall']:.2f}"
        lines.append(f"| {r['model']} | {planted} | {r['method']} | {' '.join(map(str, r['top']))} | {pr} | {rc} | "
                     f"{r['top_share']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m prunescope.circuits.planted: the table of docs/guide.md
    print(format_check([r for name in SPECS for r in localization_check(name, ig_steps=(2, 4, 8))]))
