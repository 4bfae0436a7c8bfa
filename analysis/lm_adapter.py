"""lm-eval's ``HFLM`` around a model already in memory, as :mod:`prunescope.analysis.evaluate` runs it.

Three things differ from the stock ``HFLM``: one progress bar per task, ours (``progress_label``, a
rate in requests per second; lm-eval's "Tokenizing inputs" and "Running loglikelihood requests"
bars never show), following the caller's setting; scored requests compute the output layer on the
continuation positions only (:meth:`InMemoryHFLM._model_call`); generated requests go through the
generation engine (:mod:`prunescope.generation`) with a batch size of their own. Built by
:func:`prunescope.analysis.evaluate.make_lm`.

Over several processes (``dist``, one model copy each) every rank runs the same lm-eval task and
the two request methods split their request lists: each rank answers a share and the answers are
gathered in request order, so lm-eval's filters, metrics, stderr and samples run on exactly the
list one process would give them. Why here and not lm-eval's own split (``rank`` /
``world_size``): that deals out documents, gathers samples and metric values in rank order (the
stderr bootstrap then resamples another list) and needs an ``Accelerator``, which an in-memory
model does not get. Scored requests are split by whole batches of the one-process run
(:func:`scoring_batches`), so each is computed in the batch (and padding) one process gives it and
the scores are identical even in bf16; generated ones by request (the engine's sampling depends on
a request's own seed only; its logits depend on the batch only through rounding, none in fp32).
"""

from __future__ import annotations

import contextlib
import inspect
import logging

import torch
import lm_eval.models.huggingface as lm_eval_hf
from lm_eval.models.huggingface import HFLM
from tqdm.auto import tqdm

from prunescope.core.distributed import Dist, assign, gather_in_order
from prunescope.core.errors import PrunescopeError


@contextlib.contextmanager
def _hflm_warnings_off():
    """Passing the loaded model is the one way to give HFLM an in-memory model; it warns that it is
    "not of type str" (and "already-initialized") on every construction: nothing a user can change."""
    log = logging.getLogger("lm_eval.models.huggingface")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def scoring_batches(requests, batch_size: int, grouped: bool) -> list[list[int]]:
    """The request indices of each batch ``HFLM._loglikelihood_tokens`` runs, in its order.

    Its ``Collator``: with ``grouped`` (a causal model with ``logits_cache``) requests that share
    every token but the continuation's last are one group, answered by one row (the member with
    the longest continuation); the rows are sorted by (longer first, then tokens) and cut into
    batches of ``batch_size``. A group's requests all go with its row.

    >>> reqs = [(("", ""), [1, 2], [3]), (("", ""), [1, 2], [4]), (("", ""), [5], [6, 7, 8])]
    >>> scoring_batches(reqs, 1, grouped=True), scoring_batches(reqs, 2, grouped=False)
    ([[2], [0, 1]], [[2, 0], [1]])
    """
    groups: dict = {}
    for i, (_, context, continuation) in enumerate(requests):
        groups.setdefault(tuple(context + continuation[:-1]) if grouped else i, []).append(i)

    def order(key):
        _, context, continuation = requests[max(groups[key], key=lambda i: len(requests[i][2]))]
        toks = context + continuation
        return -len(toks), tuple(toks)

    rows = sorted(groups, key=order)
    return [[i for key in rows[k:k + batch_size] for i in groups[key]] for k in range(0, len(rows), batch_size)]


@contextlib.contextmanager
def _requests_bar(label: str, show: bool):
    """HFLM's bar over scored requests, made ours for the call: labelled with the task, counted in
    requests (with their rate), shown only when the caller shows progress. HFLM has no switch for
    its label; the bar is the one place it counts requests, so it is replaced, not added to."""
    real = lm_eval_hf.tqdm

    def bar(*args, **kwargs):
        return tqdm(*args, **{**kwargs, "desc": label, "unit": "req", "disable": not show or kwargs.get("disable")})

    lm_eval_hf.tqdm = bar
    try:
        yield
    finally:
        lm_eval_hf.tqdm = real


class InMemoryHFLM(HFLM):
    """``HFLM`` on ``loaded.model`` / ``loaded.tokenizer`` (no copy, no reload).

    Scored requests go in batches of ``batch_size``; generated ones through the engine with
    ``gen_batch_size`` slots (default 64): generation keeps only the last position's logits, so even
    a large-vocabulary model (Gemma: 262k) generates in far larger batches than it can score.
    ``seed`` seeds sampled requests (request k draws ``seed + k``). ``progress_label``: the label of
    the one bar a task's requests show (the caller sets it per task). ``dist``: the process group
    whose ranks split the requests (every rank calls with the same requests and gets every answer).
    """

    progress_label: str = "eval"

    def __init__(self, loaded, *, batch_size: int = 8, max_length: int | None = None, show_progress: bool = True,
                 gen_batch_size: int | None = None, seed: int = 0, fan_out=None, dist: Dist | None = None):
        self._dist = dist or Dist()
        self._show_progress = show_progress
        self._fan_out = fan_out  # a SkipSets: generated requests answer as its current skip set
        self._gen_slots = gen_batch_size or 64
        self._seed = seed
        self._keeps_logits = "logits_to_keep" in inspect.signature(loaded.model.forward).parameters
        self._longest_continuation = 0  # set while a batch of scored requests runs
        self._bar_shown: bool | None = None  # set while loglikelihood runs: whether its requests' bar shows
        with _hflm_warnings_off():
            super().__init__(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size,
                             max_length=max_length)

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        # lm-eval's "Tokenizing inputs" bar off (disable_tqdm=True there); the task's one bar counts
        # the requests in _loglikelihood_tokens, shown as the caller asked
        self._bar_shown = self._show_progress and not disable_tqdm
        try:
            return super().loglikelihood(requests, disable_tqdm=True)
        finally:
            self._bar_shown = None

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        # over all requests, so a rank's share keeps the logits one process keeps (_model_call)
        self._longest_continuation = max((len(r[2]) for r in requests), default=0)
        show = self._show_progress and not disable_tqdm if self._bar_shown is None else self._bar_shown
        try:
            with _requests_bar(self.progress_label, show):
                if self._dist.world_size == 1:
                    return super()._loglikelihood_tokens(requests, disable_tqdm=False, override_bs=override_bs)
                return self._scored_share(requests, override_bs)
        finally:
            self._longest_continuation = 0

    def _scored_share(self, requests, override_bs):
        """This rank's whole batches of the one-process run (balanced by padded tokens), scored by
        HFLM, which cuts the very same batches from them; every rank's scores, in request order."""
        d = self._dist
        size = self.batch_size if isinstance(self.batch_size, int) else 1
        batches = scoring_batches(requests, size, grouped=self.backend == "causal" and bool(self.logits_cache))
        cost = [len(b) * max(len(requests[i][1]) + len(requests[i][2]) for i in b) for b in batches]
        mine = sorted(i for b in assign(cost, d.world_size)[d.rank] for i in batches[b])
        scores, error = [], None
        try:
            if mine:
                scores = super()._loglikelihood_tokens([requests[i] for i in mine], disable_tqdm=False,
                                                       override_bs=override_bs)
        except PrunescopeError as e:  # every rank raises it, so none waits for the others forever
            error = str(e)
        except AssertionError:  # lm-eval asserts that every answer fits the context
            error = (f"lm-eval could not score a request: an answer is longer than the model's context "
                     f"({self.max_length} tokens); use a model with a longer context, or leave this task out")
        return gather_in_order(d, mine, scores, error)

    def _model_call(self, inps, attn_mask=None, labels=None):
        """Logits of the last positions only: the continuations (at most the longest one) plus
        the row's right padding. lm-eval right-pads with zeros and locates each continuation
        from the end of the returned logits (``ctx_len = inplen + logits_len - padded_len``),
        so fewer positions give the same scores with less memory and output-layer time (Gemma,
        262k vocabulary, 80 MMLU 5-shot requests in batches of 4: largest logits tensor 2456 ->
        636 MiB, 3.07x faster on CPU; ``benchmarks/scoring.py``). Trailing zeros are taken as
        padding: a real trailing token 0 only keeps one position more than needed."""
        if attn_mask is not None or labels is not None or not self._keeps_logits or not self._longest_continuation:
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        nonzero = (inps != 0).int()
        # per row, the index after its last non-zero token (the full length for an all-zero row)
        last_real = inps.shape[1] - torch.flip(nonzero, dims=[1]).argmax(dim=1)
        padding = int((inps.shape[1] - last_real).max())
        keep = min(inps.shape[1], padding + self._longest_continuation)
        mixed = getattr(self, "mixed_precision_dtype", None)
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=mixed, enabled=mixed is not None):
            return self.model(inps, logits_to_keep=keep).logits

    def generate_until(self, requests, disable_tqdm: bool = False):
        """Every request through :class:`prunescope.generation.Engine` (continuous batching, each
        request's own limit and stop strings), with HFLM's own encoding, left truncation and
        post-processing, so the texts are the ones HFLM's batched ``generate`` would return."""
        from lm_eval.models.utils import postprocess_generated_text

        from prunescope.generation import Engine, GenerationOptions

        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        reqs, stops = [], []
        for k, inst in enumerate(requests):  # every request, on every rank: k (its seed) is its place in all
            request, until = self._engine_request(k, inst, eos)
            reqs.append(request)
            stops.append(until)
        d = self._dist
        mine = assign([len(r.prompt) + r.max_new_tokens for r in reqs], d.world_size)[d.rank]
        engine = Engine(self.model, self.tokenizer, GenerationOptions(slots=self._gen_slots))
        think = self.think_end_token if isinstance(self.think_end_token, str) else None
        texts, error = [], None
        try:
            done = engine.generate([reqs[i] for i in mine], progress=self._show_progress and not disable_tqdm,
                                   desc=self.progress_label, fan_out=self._fan_out)
            texts = [postprocess_generated_text(generation=self.tok_decode(c.tokens), stop=stops[i],
                                                think_end_token=think) for i, c in zip(mine, done)]
        except PrunescopeError as e:
            if d.world_size == 1:
                raise
            error = str(e)  # raised on every rank, so none waits for the others forever
        texts = gather_in_order(d, mine, texts, error)
        for inst, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", inst.args, text)
        return texts

    def _engine_request(self, k: int, inst, eos: str):
        """The engine's request for lm-eval's ``k``-th generation request, and its stop strings."""
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

        from prunescope.generation import Request

        context, gen_kwargs = inst.args
        kw = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        until = handle_stop_sequences(kw.pop("until", None), eos=eos)
        max_gen = kw.pop("max_gen_toks")
        if self.max_length - max_gen <= 0:
            raise PrunescopeError(f"a request asks for {max_gen} new tokens, more than the "
                                  f"{self.max_length}-token context holds; raise --max-length")
        ids, _ = self.tok_batch_encode([context], left_truncate_len=self.max_length - max_gen,
                                       truncation=self.truncation)
        temperature = float(kw.get("temperature") or 0.0) if kw.get("do_sample") else 0.0
        request = Request(ids[0].tolist(), max_new_tokens=max_gen, stop=tuple(until), temperature=temperature,
                          top_p=float(kw.get("top_p") or 1.0), seed=self._seed + k)
        return request, until
