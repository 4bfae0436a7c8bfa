"""Training-free repair of a pruned model: each removed span of layers replaced by one linear map,
folded into the weights of the layer before it (ReplaceMe, arXiv 2505.02819).

For a maximal contiguous span of removed layers ``s .. e-1`` of the unpruned model, on every
(non-padding) token of the calibration texts::

    M      = blocks.{s-1}.hook_mlp_out                       what the MLP of the layer before adds
    h_mid  = blocks.{s}.hook_resid_pre - M                   the residual after that layer's attention
    h_out  = blocks.{e-1}.hook_resid_post                    the residual leaving the span

The pruned model's residual after layer ``s-1`` is ``h_mid + M``; the repaired one is ``h_mid + M T``,
with ``T`` (``d x d``) fitted so that it approximates ``h_out``::

    lstsq:   T = argmin ||M T - (h_out - h_mid)||_F^2 + lam ||T||_F^2 = (M^T M + lam I)^-1 M^T (h_out - h_mid)
    cosine:  T = argmin mean_tokens [1 - cos(M T, h_out - h_mid)]   (Adam, from the least-squares T)

(``M^T M`` and ``M^T (h_out - h_mid)`` are summed in float64 over the batches; ``lam`` is
``ridge`` times the mean eigenvalue of ``M^T M``; a singular ``M^T M`` without ridge gets the
minimum-norm least-squares ``T``.) The MLP's output is ``M = a W_down^T (+ b)`` for its hidden
activations ``a``, so ``M T = a (T^T W_down)^T (+ T^T b)``: the map folds into the down-projection,
``W_down <- T^T W_down`` (``b <- T^T b``), and the repaired model is a standard checkpoint of the
pruned architecture (no new module, no custom code; plain transformers and vLLM load it).

A span that starts at layer 0 has no layer before it: its map takes the embeddings,
``T = argmin ||h_0 T - h_out||``, and folds into the token embedding matrix ``E <- E T``, which is
refused where the embeddings are tied to the output head (the head would change too). Gemma's
MLP output passes a norm after the down-projection, so a map cannot be folded there: Gemma models
are refused unless every span starts at layer 0. Several spans get one map each, every map fitted
on the unpruned model's activations (as ReplaceMe does).

>>> # linear_repair(LinearOptions(calibration_mix=0.5), model="pruned/bi25", output=Output(out="repaired/bi25"))
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from prunescope.core.errors import PrunescopeError
from prunescope.core.options import SHARED_MEANINGS, Options, Output, Placement, option
from prunescope.core.results import atomic_write_json, follow_umask, make_temp_dir, same_config, write_table
from prunescope.probe.architectures import get_path
from prunescope.probe.blocks import Blocks
from prunescope.recover.calibration import CIRCUIT_PROBES, mix_counts, repair_texts

OBJECTIVES = ("lstsq", "cosine")
LINEAR_RECORD = "prunescope_linear.json"   # in every checkpoint linear_repair writes
FIT_TABLE = "linear_fit"                   # linear_fit.csv / .jsonl: the fit's residual per span
PLAN_RECORD = "prunescope_plan.json"       # the pruning record a pruned checkpoint carries


@dataclass
class LinearOptions(Options):
    """Settings of the linear repair (:func:`linear_repair`).

    >>> LinearOptions(objective="cosine", calibration_mix=0.5).check().calibration_mix
    0.5
    """

    objective: str = option("lstsq", "how each map is fitted: lstsq (least squares, closed form) or cosine "
                                     "(mean cosine distance, Adam from the least-squares map)", choices=OBJECTIVES)
    ridge: float = option(0.0, "least squares: ridge term, a share of the mean eigenvalue of the calibration "
                               "Gram matrix (0: none)", minimum=0)
    cosine_steps: int = option(100, "cosine: full-batch Adam steps", minimum=1)
    cosine_lr: float = option(1e-4, "cosine: Adam learning rate", minimum=0)
    calibration_texts: int = option(128, "calibration texts (generic and circuit together), drawn by --seed",
                                    minimum=1)
    calibration_mix: float = option(0.0, "share of circuit texts among the calibration texts: 0 generic only, "
                                         "1 circuit only", minimum=0, maximum=1)
    calibration_generic: str = option("builtin", "generic calibration texts: builtin (the offline instruction, "
                                                 "maths and code prompts with their answers), offline (the larger "
                                                 "offline prompt set) or a file: .txt (one text per line), .jsonl "
                                                 "with a 'text' field, or a prompt file")
    calibration_probes: list[str] = option(list(CIRCUIT_PROBES), "circuit calibration texts: solved items of "
                                                                 "these probes (built-in names or JSONL item files)")
    held_out_items: int = option(200, "circuit calibration texts never include the first N items of each probe "
                                      "that the stage probes score (the evaluation's probe items), so a repair "
                                      "is not fitted on the items that measure it; 0 allows them", minimum=0)
    dropped: list[int] = option([], "layers of the base model that the pruned model lacks (default: read from its "
                                    "prunescope_plan.json)", minimum=0)
    max_seq_len: int = option(512, "tokens per calibration text (longer ones are cut)", minimum=1)
    batch_size: int = option(8, SHARED_MEANINGS["batch_size"], minimum=1)
    seed: int = option(0, SHARED_MEANINGS["seed"], minimum=0)

    def validate(self) -> None:
        from prunescope.probe.tasks import check_probe

        if self.calibration_mix > 0 and not self.calibration_probes:
            raise PrunescopeError("a calibration mix above 0 needs circuit probes (calibration_probes)")
        for probe in self.calibration_probes:
            check_probe(probe)


# ---------------------------------------------------------------- spans and where they fold
def spans_of(dropped: list[int]) -> list[tuple[int, ...]]:
    """The maximal contiguous runs of ``dropped``, each a tuple of its layers.

    >>> spans_of([7, 3, 4, 5, 9, 10])
    [(3, 4, 5), (7,), (9, 10)]
    """
    spans: list[list[int]] = []
    for i in sorted(set(dropped)):
        if spans and spans[-1][-1] == i - 1:
            spans[-1].append(i)
        else:
            spans.append([i])
    return [tuple(s) for s in spans]


def _span_name(span: tuple[int, ...]) -> str:
    return f"replace:{span[0]}-{span[-1]}" if len(span) > 1 else f"replace:{span[0]}"


def _tied(model) -> bool:
    """Whether the token embeddings are the output head's weights too (then they cannot change alone)."""
    out, emb = model.get_output_embeddings(), model.get_input_embeddings()
    return bool(getattr(model.config, "tie_word_embeddings", False)) or (out is not None and out.weight is emb.weight)


def check_foldable(model, spans: list[tuple[int, ...]]) -> None:
    """Refuse, in one line, spans whose map cannot be folded into ``model`` (the base or the pruned one).

    >>> from prunescope.probe.tiny import tiny_model
    >>> check_foldable(tiny_model("llama")[0], [(0,), (2, 3)])
    >>> check_foldable(tiny_model("gemma2")[0], [(2, 3)])
    Traceback (most recent call last):
    ...
    prunescope.core.errors.PrunescopeError: linear repair folds each map into the MLP down-projection ... by training
    """
    blocks = Blocks(model)
    family = blocks.arch.family
    for span in spans:
        where = f"layers {span[0]}-{span[-1]}" if len(span) > 1 else f"layer {span[0]}"
        if span[0] > 0 and blocks.arch.mlp_out != "mlp":
            raise PrunescopeError(f"linear repair folds each map into the MLP down-projection of the layer before the "
                                  f"cut, and {family} applies a norm after that projection, so the map for {where} "
                                  "cannot be folded; repair a Llama, Qwen2 or Mistral model, or recover by training")
        if span[0] == 0 and _tied(model):
            raise PrunescopeError(f"{where} {'are' if len(span) > 1 else 'is'} cut at the start, so the map would "
                                  "fold into the token embeddings, "
                                  "which this model ties to its output head; keep layer 0 (protect it when pruning) "
                                  "or recover by training")


def _kept_index(layer: int, dropped: list[int]) -> int:
    """Where base layer ``layer`` (kept) sits in the pruned model."""
    return layer - sum(d < layer for d in dropped)


def fold_replacement(pruned_model, maps: dict[tuple[int, ...], torch.Tensor],
                     dropped: list[int] | None = None) -> torch.nn.Module:
    """Fold each span's map into ``pruned_model`` in place and return it (see the module docstring).

    ``maps``: ``{span: T}`` from :func:`fit_replacement`, spans in base-model layer numbers;
    ``dropped``: every layer the pruned model lacks (default: the union of the spans).

    >>> from prunescope.probe.tiny import tiny_model
    >>> from prunescope.prune.surgery import remove_layers
    >>> model = remove_layers(tiny_model("llama")[0], [2])
    >>> before = model.model.layers[1].mlp.down_proj.weight.clone()
    >>> _ = fold_replacement(model, {(2,): 2 * torch.eye(64)})
    >>> bool(torch.allclose(model.model.layers[1].mlp.down_proj.weight, 2 * before))
    True
    """
    dropped = sorted(set(dropped if dropped is not None else [i for s in maps for i in s]))
    check_foldable(pruned_model, list(maps))
    blocks = Blocks(pruned_model)
    with torch.no_grad():
        for span, T in maps.items():
            if span[0] == 0:
                emb = pruned_model.get_input_embeddings().weight
                emb.copy_((emb.double() @ T.to(emb.device, torch.float64)).to(emb.dtype))
                continue
            layer = blocks.layers[_kept_index(span[0] - 1, dropped)]
            down = get_path(layer, blocks.arch.mlp_out).down_proj
            t = T.to(down.weight.device, torch.float64).T
            down.weight.copy_((t @ down.weight.double()).to(down.weight.dtype))
            if down.bias is not None:
                down.bias.copy_((t @ down.bias.double()).to(down.bias.dtype))
    return pruned_model


# ---------------------------------------------------------------- the fit
@dataclass
class SpanFit:
    """One span's map and how well it fits the calibration tokens: ``relative_residual`` is
    ``||X T - Y|| / ||Y||`` (``Y`` the target of the module docstring), ``relative_residual_pruned``
    the same for ``T = I``, what the pruned model without a map leaves."""

    layers: tuple[int, ...]
    map: torch.Tensor
    relative_residual: float
    relative_residual_pruned: float
    tokens: int


class _Stats:
    """Sums over calibration tokens of one span: ``X^T X``, ``X^T Y``, ``|Y|^2`` (float64), and the
    rows themselves when the cosine objective needs them."""

    def __init__(self, keep_rows: bool):
        self.xtx = self.xty = None
        self.yy, self.n = 0.0, 0
        self.rows: list[tuple[torch.Tensor, torch.Tensor]] | None = [] if keep_rows else None

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x64, y64 = x.double(), y.double()
        xtx, xty = x64.T @ x64, x64.T @ y64
        self.xtx = xtx if self.xtx is None else self.xtx + xtx
        self.xty = xty if self.xty is None else self.xty + xty
        self.yy += float((y64 * y64).sum())
        self.n += x.shape[0]
        if self.rows is not None:
            self.rows.append((x.float(), y.float()))

    def relative_residual(self, T: torch.Tensor) -> float:
        """``||X T - Y|| / ||Y||`` from the sums alone (no second pass over the tokens)."""
        T = T.to(self.xtx.device, torch.float64)
        sq = float(torch.trace(T.T @ self.xtx @ T) - 2 * torch.trace(T.T @ self.xty)) + self.yy
        return (max(sq, 0.0) / self.yy) ** 0.5 if self.yy > 0 else 0.0


def _activation_names(span: tuple[int, ...]) -> tuple[str, str | None, str]:
    """``(x, resid_pre, out)``: the map's input, the residual entering the span (None at layer 0:
    the input is the residual itself) and the residual leaving the span."""
    s, last = span[0], span[-1]
    if s == 0:
        return "blocks.0.hook_resid_pre", None, f"blocks.{last}.hook_resid_post"
    return f"blocks.{s - 1}.hook_mlp_out", f"blocks.{s}.hook_resid_pre", f"blocks.{last}.hook_resid_post"


class _Enough(Exception):
    """Raised by a hook once every needed activation is read: the later layers need not run."""


def _batches(tokenizer, texts: list[str], max_seq_len: int, batch_size: int):
    """Right-padded ``(input_ids, attention_mask)`` batches of similar lengths (less padding)."""
    ids = tokenizer(list(texts), truncation=True, max_length=max_seq_len).input_ids
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        rows = [ids[i] for i in order[start:start + batch_size]]
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        yield input_ids, mask


@torch.no_grad()
def collect_span_stats(blocks: Blocks, tokenizer, spans: list[tuple[int, ...]], texts: list[str], *,
                       keep_rows: bool = False, max_seq_len: int = 512, batch_size: int = 8,
                       progress: bool = False) -> dict[tuple[int, ...], _Stats]:
    """Run the unpruned model over ``texts`` once and sum each span's least-squares statistics over
    every token the attention mask keeps (padding excluded).

    >>> from prunescope.probe.tiny import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> stats = collect_span_stats(Blocks(model), tok, [(1, 2)], ["a b c", "the quick brown fox"])
    >>> stats[(1, 2)].n == sum(len(tok(t).input_ids) for t in ["a b c", "the quick brown fox"])
    True
    """
    from tqdm.auto import tqdm

    names = {span: _activation_names(span) for span in spans}
    wanted = sorted({n for trio in names.values() for n in trio if n is not None})
    stats = {span: _Stats(keep_rows) for span in spans}
    acts: dict[str, torch.Tensor] = {}

    def save(t: torch.Tensor, name: str) -> None:
        acts[name] = t.detach()

    def stop(t: torch.Tensor, name: str) -> None:
        raise _Enough

    last = f"blocks.{max(span[-1] for span in spans)}.hook_resid_post"
    hooks = [(n, save) for n in wanted] + [(last, stop)]
    n_batches = -(-len(texts) // batch_size)
    for ids, mask in tqdm(_batches(tokenizer, texts, max_seq_len, batch_size), total=n_batches,
                          desc="linear repair: activations", disable=not progress):
        acts.clear()
        with blocks.hooks(hooks):
            try:
                blocks.final_hidden(ids, mask)
            except _Enough:
                pass
        for span, (x_name, pre_name, out_name) in names.items():
            keep = mask.to(acts[x_name].device).bool()
            x, out = acts[x_name][keep].double(), acts[out_name][keep].double()
            y = out if pre_name is None else out - (acts[pre_name][keep].double() - x)
            stats[span].add(x, y)
    return stats


def _solve_lstsq(stats: _Stats, ridge: float) -> torch.Tensor:
    """``(X^T X + lam I)^-1 X^T Y`` in float64 (Cholesky; minimum-norm least squares where singular)."""
    xtx, xty = stats.xtx.cpu(), stats.xty.cpu()
    d = xtx.shape[0]
    if ridge > 0:
        xtx = xtx + ridge * torch.trace(xtx) / d * torch.eye(d, dtype=xtx.dtype)
    if ridge > 0 or stats.n >= d:   # fewer tokens than dimensions: X^T X is singular whatever Cholesky says
        chol, info = torch.linalg.cholesky_ex(xtx)
        if int(info) == 0:
            return torch.cholesky_solve(xty, chol)
    return torch.linalg.lstsq(xtx, xty, driver="gelsd").solution


def _refine_cosine(stats: _Stats, T0: torch.Tensor, steps: int, lr: float, chunk: int = 8192) -> torch.Tensor:
    """Adam on the mean cosine distance between ``X T`` and ``Y`` over every calibration token
    (full batch, the gradient summed over chunks of rows), starting from ``T0``."""
    x = torch.cat([r[0] for r in stats.rows])
    y = torch.cat([r[1] for r in stats.rows])
    T = T0.to(x.device, torch.float32).clone().requires_grad_(True)
    opt = torch.optim.Adam([T], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            for i in range(0, x.shape[0], chunk):
                cos = torch.nn.functional.cosine_similarity(x[i:i + chunk] @ T, y[i:i + chunk], dim=-1, eps=1e-8)
                ((1 - cos).sum() / x.shape[0]).backward()
            opt.step()
    return T.detach().double().cpu()


def fit_spans(base_lm, dropped: list[int], texts: list[str], options: LinearOptions | None = None, *,
              progress: bool = False) -> list[SpanFit]:
    """One :class:`SpanFit` per maximal contiguous span of ``dropped``, fitted on the unpruned
    ``base_lm`` (a loaded model: ``.blocks``, ``.tokenizer``) over ``texts``.

    >>> from prunescope.probe.models import LoadedModel
    >>> from prunescope.probe.tiny import tiny_model
    >>> fit, = fit_spans(LoadedModel(*tiny_model("llama"), "tiny", ""), [1, 2], ["The lazy dog sleeps."] * 16)
    >>> fit.layers, fit.relative_residual < fit.relative_residual_pruned
    ((1, 2), True)
    """
    o = (options or LinearOptions()).check()
    blocks = base_lm.blocks
    spans = spans_of(list(blocks.check_layers(dropped)))
    if not spans:
        raise PrunescopeError("no layers were dropped: a linear repair needs the layers the pruned model lacks")
    if not texts:
        raise PrunescopeError("the linear repair needs calibration texts")
    check_foldable(blocks.model, spans)
    stats = collect_span_stats(blocks, base_lm.tokenizer, spans, texts, keep_rows=o.objective == "cosine",
                               max_seq_len=o.max_seq_len, batch_size=o.batch_size, progress=progress)
    n, d = stats[spans[0]].n, blocks.config.hidden_size
    if n < d:
        print(f"  {n} calibration tokens for {d} x {d} maps: each map is underdetermined (the minimum-norm fit is "
              "used); give more calibration texts")
    fits = []
    for span in spans:
        st = stats[span]
        T = _solve_lstsq(st, o.ridge)
        if o.objective == "cosine":
            T = _refine_cosine(st, T, o.cosine_steps, o.cosine_lr)
        eye = torch.eye(T.shape[0], dtype=torch.float64)
        fits.append(SpanFit(span, T, st.relative_residual(T), st.relative_residual(eye), st.n))
    return fits


def fit_replacement(base_lm, dropped: list[int], texts: list[str], *, objective: str | None = None,
                    ridge: float | None = None, options: LinearOptions | None = None,
                    progress: bool = False) -> dict[tuple[int, ...], torch.Tensor]:
    """``{span: T}``: one ``d x d`` float64 map per maximal contiguous span of ``dropped`` (base-model
    layer numbers), fitted on the unpruned ``base_lm`` over every non-padding token of ``texts``.
    ``objective`` / ``ridge`` override those of ``options`` (the rest: sequence length, batch, the
    cosine objective's steps). Fold the maps with :func:`fold_replacement`.

    >>> from prunescope.probe.models import LoadedModel
    >>> from prunescope.probe.tiny import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> texts = ["The quick brown fox jumps over the lazy dog."] * 12
    >>> maps = fit_replacement(LoadedModel(model, tok, "tiny", ""), [2], texts)
    >>> list(maps), maps[(2,)].shape, maps[(2,)].dtype
    ([(2,)], torch.Size([64, 64]), torch.float64)
    """
    o = (options or LinearOptions()).replace()
    o.objective = o.objective if objective is None else objective
    o.ridge = o.ridge if ridge is None else ridge
    return {f.layers: f.map for f in fit_spans(base_lm, dropped, texts, o, progress=progress)}


# ---------------------------------------------------------------- the command
def _pruned_record(pruned_dir: Path) -> dict:
    """The pruning record of a pruned checkpoint (``prunescope_plan.json``, else the plan's ``plan.json``)."""
    for name in (PLAN_RECORD, "plan.json"):
        if (pruned_dir / name).is_file():
            return json.loads((pruned_dir / name).read_text())
    return {}


def _dropped_layers(o: LinearOptions, record: dict, pruned_dir: Path) -> list[int]:
    drop = o.dropped or (record.get("plan") or {}).get("drop") or record.get("drop")
    if not drop:
        raise PrunescopeError(f"{pruned_dir} has no {PLAN_RECORD} saying which layers were dropped: give them "
                              "(LinearOptions(dropped=[...]), the base model's layer numbers)")
    return sorted(int(i) for i in drop)


def _check_out(out: Path, config: dict, overwrite: bool) -> dict | None:
    """An earlier repair with the same settings at ``out`` is returned (nothing to do); one with other
    settings is refused unless ``overwrite``; a folder that is not a repaired checkpoint is refused."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise PrunescopeError(f"--out {out} is a file, not a folder; give a folder path")
    record = out / LINEAR_RECORD
    if record.is_file():
        old = json.loads(record.read_text())
        if overwrite:
            return None
        if same_config(old.get("config", {}), config, paths=("model", "base")):
            return old
        raise PrunescopeError(f"{out} holds a linear repair with different settings; use another --out folder, "
                              "or pass --overwrite to start over")
    if any(out.iterdir()):
        raise PrunescopeError(f"{out} is not a repaired checkpoint (no {LINEAR_RECORD}), so it is left as it is; "
                              "choose another --out")
    return None


def _load_pruned(pruned_dir: Path, base_blocks: Blocks, drop: list[int]):
    """The pruned checkpoint on the CPU in its own dtype, checked against the base and the plan."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(pruned_dir, dtype="auto").eval()
    blocks = Blocks(model)
    keep = [i for i in range(base_blocks.n_layers) if i not in drop]
    if blocks.n_layers != len(keep) or model.config.hidden_size != base_blocks.config.hidden_size:
        raise PrunescopeError(f"{pruned_dir} has {blocks.n_layers} layers, but the base model without layers "
                              f"{drop} has {len(keep)}: give the base model it was pruned from and its dropped layers")
    for j, i in enumerate(keep):   # a few weights of each layer tell layers apart: the kept layers line up
        a = next(blocks.layers[j].parameters()).detach().flatten()[:256].float().cpu()
        b = next(base_blocks.layers[i].parameters()).detach().flatten()[:256].float().cpu()
        if a.shape != b.shape or not torch.allclose(a, b, rtol=2e-2, atol=1e-3):
            raise PrunescopeError(f"layer {j} of {pruned_dir} is not layer {i} of the base model: the pruned model "
                                  f"does not come from this base model with layers {drop} dropped")
    return model, AutoTokenizer.from_pretrained(pruned_dir)


def _fit_rows(fits: list[SpanFit], model_name: str, o: LinearOptions) -> list[dict]:
    rows = []
    for f in fits:
        for metric in ("relative_residual", "relative_residual_pruned"):
            rows.append(dict(model=model_name, probe="calibration", condition=_span_name(f.layers),
                             layers=" ".join(map(str, f.layers)), metric=metric, value=getattr(f, metric),
                             n=f.tokens, seed=o.seed, objective=o.objective, calibration_mix=o.calibration_mix))
    return rows


def _write_repaired(model, tokenizer, pruned_dir: Path, out: Path, summary: dict, rows: list[dict]) -> None:
    """The repaired checkpoint, its records and fit table, staged beside ``out`` and renamed into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f".{out.name}.", out.parent)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if (pruned_dir / PLAN_RECORD).is_file():  # keep the pruning record with the model it describes
            shutil.copy(pruned_dir / PLAN_RECORD, tmp / PLAN_RECORD)
        write_table(rows, tmp / FIT_TABLE)
        atomic_write_json(tmp / LINEAR_RECORD, summary)
        follow_umask(tmp)
        if out.exists():   # _check_out allowed it: an earlier repair of ours, or empty
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _summary(o: LinearOptions, config: dict, fits: list[SpanFit], drop: list[int], seconds: float) -> dict:
    n_generic, n_circuit = mix_counts(o.calibration_mix, o.calibration_texts)
    spans = [{"layers": list(f.layers), "folded_into": "embed_tokens" if f.layers[0] == 0 else
              f"layers.{_kept_index(f.layers[0] - 1, drop)}.mlp.down_proj", "relative_residual": f.relative_residual,
              "relative_residual_pruned": f.relative_residual_pruned, "tokens": f.tokens} for f in fits]
    calibration = {"texts": o.calibration_texts, "mix": o.calibration_mix, "generic": n_generic,
                   "circuit": n_circuit, "generic_source": o.calibration_generic,
                   "probes": list(o.calibration_probes) if n_circuit else [], "seed": o.seed,
                   "held_out_items": o.held_out_items if n_circuit else 0,
                   "tokens": fits[0].tokens}
    return {"method": "linear replacement (ReplaceMe, arXiv 2505.02819)", "objective": o.objective,
            "ridge": o.ridge, "drop": drop, "spans": spans, "calibration": calibration,
            "fit_seconds": round(seconds, 3), "config": config}


def linear_repair(options: LinearOptions | None = None, *, model: str | Path | None = None,
                  base: str | Path | None = None, placement: Placement | None = None, output: Output | None = None,
                  loaded=None) -> dict:
    """Repair the pruned checkpoint ``model`` without training: fit one linear map per removed span
    on the unpruned ``base`` (default: the source model its pruning record names; ``loaded``: the
    base already in memory), fold the maps in and write a standard checkpoint to ``output.out`` with
    ``prunescope_linear.json`` (spans, objective, calibration, each span's relative residual) and
    ``linear_fit.csv``. Returns that record; a second call with the same settings returns it at once.

    >>> linear_repair(LinearOptions(calibration_mix=0.5), model="pruned/bi25",
    ...               output=Output(out="repaired/bi25"))  # doctest: +SKIP
    """
    from prunescope.probe.models import load_model, resolve_model

    o = (options or LinearOptions()).check()
    placement, output = (placement or Placement()).check(), output or Output()
    if model is None or not output.out:
        raise PrunescopeError("linear repair needs the pruned model (--model PRUNED, from prunescope prune) and "
                              "an output folder (--out repaired/NAME)")
    pruned_dir = Path(resolve_model(model))
    record = _pruned_record(pruned_dir)
    drop = _dropped_layers(o, record, pruned_dir)
    base = base or (loaded.path if loaded is not None else None) or record.get("source_model")
    if not base:
        raise PrunescopeError(f"{pruned_dir} does not name the model it was pruned from: give the base model")
    config = {**asdict(o), "model": str(pruned_dir), "base": str(base), "drop": drop}
    done = _check_out(Path(output.out), config, output.overwrite)
    if done is not None:
        return done
    texts = repair_texts(o.calibration_mix, o.calibration_texts, o.seed, generic=o.calibration_generic,
                         probes=o.calibration_probes, held_out=o.held_out_items)
    lm = loaded or load_model(base, **placement.load_kwargs())
    pruned, tokenizer = _load_pruned(pruned_dir, lm.blocks, drop)
    check_foldable(pruned, spans_of(drop))
    start = time.perf_counter()
    fits = fit_spans(lm, drop, texts, o, progress=output.progress)
    seconds = time.perf_counter() - start
    fold_replacement(pruned, {f.layers: f.map for f in fits}, drop)
    summary = _summary(o, config, fits, drop, seconds)
    _write_repaired(pruned, tokenizer, pruned_dir, Path(output.out), summary, _fit_rows(fits, lm.name, o))
    return summary


__all__ = ["LinearOptions", "SpanFit", "OBJECTIVES", "LINEAR_RECORD", "FIT_TABLE", "spans_of", "check_foldable",
           "collect_span_stats", "fit_spans", "fit_replacement", "fold_replacement", "linear_repair"]
