"""Data-parallel runs: split work over processes (one per GPU), gather and merge the results.

The transport is ``torch.distributed`` (NCCL between GPUs, gloo on CPU); nothing home-made. A
run joins a process group in one of three ways:

* under a launcher: ``torchrun --nproc_per_node 2 -m prunescope sweep ...`` or ``accelerate
  launch -m prunescope sweep ...`` set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR`` / ``MASTER_PORT``, and :func:`distributed` joins that group;
* by itself: ``sweep(..., devices=2)`` / ``prunescope sweep --devices 2`` call :func:`launch`,
  which starts the processes with ``torch.multiprocessing`` (spawn) and returns rank 0's result;
* neither: the world has one process and every helper below is a no-op.

Work is split deterministically (every rank computes the same assignment from the same inputs,
so nothing but results travels), results are gathered with ``all_gather_object`` after every
round, and the caller merges them in the original order and aggregates them with the same
functions as a single process. Only rank 0 writes files and prints. Work that streams its results
(SGR's generation) is gathered in rounds by :func:`gathered_chunks`; a list of requests split
over the ranks (evaluation) comes back in its order from :func:`gather_in_order`.

>>> d = Dist()                      # a world of one process
>>> d.gather({"rows": [1, 2]}), d.is_main
([{'rows': [1, 2]}], True)
>>> assign([5.0, 1.0, 4.0, 2.0], 2)   # longest first, each to the least-loaded rank
[[0, 1], [2, 3]]
"""

from __future__ import annotations

import itertools
import os
import pickle
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from prunescope.core.errors import PrunescopeError


@dataclass(frozen=True)
class Dist:
    """This process's place in the group: ``rank`` of ``world_size``, on GPU ``local_rank``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a world of one)."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as tdist

        out = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if self.world_size == 1:
            return obj
        import torch.distributed as tdist

        box = [obj if self.is_main else None]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable, *args, **kwargs):
        """Run ``fn`` on rank 0 only and hand its result to every rank.

        A :class:`PrunescopeError` raised there is raised on every rank, so no rank is left
        waiting in a collective call (a user mistake must not hang the group).
        """
        if self.world_size == 1:
            return fn(*args, **kwargs)
        outcome = None
        if self.is_main:
            try:
                outcome = ("ok", fn(*args, **kwargs))
            except PrunescopeError as e:
                outcome = ("error", str(e))
        kind, value = self.broadcast(outcome)
        if kind == "error":
            raise PrunescopeError(value)
        return value

    def raise_any(self, error: str | None) -> None:
        """Collective: if any rank reports an error message, raise the first one on every rank."""
        errors = [e for e in self.gather(error) if e]
        if errors:
            raise PrunescopeError(errors[0])


def env_world() -> Dist:
    """The place a launcher (torchrun, accelerate launch) gave this process, from its env vars."""
    def get(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        try:
            return int(value) if value.strip() else default
        except ValueError:
            raise PrunescopeError(f"environment variable {name}={value!r} is not an integer") from None

    world = get("WORLD_SIZE", 1)
    rank = get("RANK", 0)
    return Dist(rank=rank, world_size=world, local_rank=get("LOCAL_RANK", rank))


def is_distributed() -> bool:
    """True inside a process group or under a launcher with more than one process."""
    import torch.distributed as tdist

    return (tdist.is_available() and tdist.is_initialized()) or env_world().world_size > 1


@contextmanager
def distributed(device: str = "cpu") -> Iterator[Dist]:
    """Join the launcher's process group for the duration of the block (or reuse an open one).

    The backend is NCCL for CUDA devices and gloo otherwise; on CUDA each rank is pinned to
    GPU ``LOCAL_RANK`` first (NCCL object collectives run on the current GPU). A group this
    function opened is closed on exit; one opened by the caller is left open.

    >>> with distributed("cpu") as d:
    ...     d.world_size
    1
    """
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        yield Dist(tdist.get_rank(), tdist.get_world_size(), env_world().local_rank)
        return
    d = env_world()
    if d.world_size <= 1:
        yield Dist()
        return
    cuda = torch.device(device).type == "cuda"
    kwargs = {}
    if cuda:
        torch.cuda.set_device(d.local_rank)
        kwargs["device_id"] = torch.device("cuda", d.local_rank)
    tdist.init_process_group("nccl" if cuda else "gloo", rank=d.rank, world_size=d.world_size, **kwargs)
    try:
        yield d
    finally:
        tdist.destroy_process_group()


def rank_device(device: str, d: Dist) -> str:
    """The device this rank loads its model copy on: ``cuda`` -> ``cuda:<LOCAL_RANK>`` in a group.

    >>> rank_device("cuda", Dist(1, 2, 1)), rank_device("cpu", Dist(1, 2, 1)), rank_device("cuda:3", Dist())
    ('cuda:1', 'cpu', 'cuda:3')
    """
    if d.world_size > 1 and torch.device(device).type == "cuda":
        return f"cuda:{d.local_rank}"
    return device


def assign(costs: Sequence[float], world: int) -> list[list[int]]:
    """Split work items over ``world`` ranks: longest first, each to the least-loaded rank.

    Deterministic (ties go to the lower index and the lower rank); each rank's indices come back
    sorted, so the work keeps its original order within a rank.
    """
    loads = [0.0] * world
    parts: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(world), key=lambda r: (loads[r], r))
        loads[r] += costs[i]
        parts[r].append(i)
    return [sorted(p) for p in parts]


def check_devices(devices: int | None, device: str, device_map=None, loaded=None) -> int:
    """Validate ``devices`` (processes to start) against the other placement options; return it."""
    if devices is None:
        return 1
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise PrunescopeError(f"--devices must be a positive number of processes, got {devices!r}")
    if devices == 1:
        return 1
    if device_map is not None:
        raise PrunescopeError("--devices N runs one model copy per GPU, --device-map shards one model over "
                              "the GPUs: use one of them")
    if loaded is not None:
        raise PrunescopeError("devices=N starts N processes that each load the model: pass the model path, "
                              "not an already loaded model")
    kind = torch.device(device).type
    if kind == "cuda" and torch.cuda.device_count() < devices:
        raise PrunescopeError(f"--devices {devices} needs {devices} GPUs, but {torch.cuda.device_count()} "
                              "are visible (CUDA_VISIBLE_DEVICES)")
    if kind not in ("cuda", "cpu"):
        raise PrunescopeError(f"--devices works with --device cuda or cpu, not {device!r}")
    return devices


def wants_launch(devices: int | None) -> bool:
    """True when ``devices`` > 1 and this process is not already part of a group (then launch)."""
    if not devices or devices <= 1:
        return False
    if is_distributed():
        world = env_world().world_size
        import torch.distributed as tdist

        if tdist.is_available() and tdist.is_initialized():
            world = tdist.get_world_size()
        if world != devices:
            raise PrunescopeError(f"--devices {devices}, but the launcher started {world} processes: "
                                  "drop --devices under torchrun / accelerate launch")
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, args: tuple, kwargs: dict, world: int, port: int, device: str,
           result_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    out = Path(result_dir) / f"rank{rank}.pkl"
    try:
        with distributed(device):
            result = fn(*args, **kwargs)
        if rank == 0:
            out.write_bytes(pickle.dumps(("ok", result)))
    except PrunescopeError as e:
        out.write_bytes(pickle.dumps(("error", str(e))))
        raise SystemExit(3) from None   # a non-zero exit makes torch stop the other ranks


def launch(fn: Callable, world: int, args: Sequence = (), kwargs: dict | None = None, *, device: str = "cpu"):
    """Run ``fn(*args, **kwargs)`` in ``world`` processes joined in a group; return rank 0's result.

    ``device`` picks the backend (``cuda``: NCCL, rank r on GPU r; else gloo). ``fn`` must be
    importable by name (a module-level function): the processes are spawned, not forked. A
    :class:`PrunescopeError` in any rank is raised here with its message.

    >>> launch(sum, 2, ([1, 2],))      # doctest: +SKIP
    3
    """
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="prunescope-launch-") as tmp:
        try:
            mp.start_processes(_entry, args=(fn, tuple(args), dict(kwargs or {}), world, _free_port(), device, tmp),
                               nprocs=world, join=True, start_method="spawn")
        except Exception:
            for rank in range(world):
                f = Path(tmp) / f"rank{rank}.pkl"
                if f.is_file():
                    kind, value = pickle.loads(f.read_bytes())
                    if kind == "error":
                        raise PrunescopeError(value) from None
            raise
        kind, value = pickle.loads((Path(tmp) / "rank0.pkl").read_bytes())
    if kind == "error":
        raise PrunescopeError(value)
    return value


def spread(entry: Callable, inner: Callable, options, *, model, placement, output, loaded=None, **extra):
    """Run a command in this process or spread over ``placement.devices`` processes.

    ``entry`` is the public command (re-entered in each spawned process, so it must be importable
    by name); ``inner(d, options, model=, placement=, output=, loaded=)`` does the work inside a
    process group (one process: a group of one). Used by every command that can split its work.
    ``extra`` keyword arguments (SGR's prompt records) go to both, as they are.
    """
    devices = check_devices(placement.devices, placement.device, placement.device_map, loaded)
    if wants_launch(devices):
        return launch(entry, devices, args=(options,),
                      kwargs=dict(model=model, placement=placement.replace(devices=None), output=output, **extra),
                      device=placement.device)
    with distributed(placement.device) as d:
        return inner(d, options, model=model, placement=placement, output=output, loaded=loaded, **extra)


def gather_in_order(d: Dist, indices: Sequence[int], values: Sequence, error: str | None = None) -> list:
    """Collective: every rank's ``values`` (those of the work items ``indices``; together the ranks'
    indices are ``0 .. n-1`` once each) merged into one list in item order, on every rank. Any
    rank's ``error`` (a message) is raised on every rank instead, so none is left waiting.

    >>> gather_in_order(Dist(), [0, 1], ["a", "b"])
    ['a', 'b']
    """
    parts = d.gather((list(indices), list(values), error))
    errors = [e for _, _, e in parts if e]
    if errors:
        raise PrunescopeError(errors[0])
    out: list = [None] * sum(len(ix) for ix, _, _ in parts)
    for ix, vals, _ in parts:
        for i, v in zip(ix, vals, strict=True):
            out[i] = v
    return out


def gathered_chunks(d: Dist, items: Iterable, size: int) -> Iterator[list]:
    """Collective: each rank draws ``size`` of its own ``items`` at a time, and every round yields
    all ranks' draws (in rank order) on every rank, until every rank's items are used up (a rank
    that runs out first keeps joining the rounds with nothing). For work that streams results as
    it goes (the generation engine): rank 0 writes each round, so a crash loses at most a round.
    A :class:`PrunescopeError` raised while drawing is raised on every rank.

    >>> list(gathered_chunks(Dist(), range(5), 2))
    [[0, 1], [2, 3], [4]]
    """
    it = iter(items)
    finished = False
    while True:
        group, error = [], None
        if not finished:
            try:
                group = list(itertools.islice(it, size))
            except PrunescopeError as e:
                error = str(e)
            finished = error is not None or len(group) < size
        parts = d.gather((group, finished, error))
        errors = [e for _, _, e in parts if e]
        if errors:
            raise PrunescopeError(errors[0])
        merged = [x for g, _, _ in parts for x in g]
        if merged:
            yield merged
        if all(f for _, f, _ in parts):
            return


def sum_over_ranks(d: Dist, values: Sequence[float], device) -> list[float]:
    """Collective: each of ``values`` summed over the ranks (float64, on ``device``: a GPU's under
    NCCL), on every rank; the values themselves in a world of one.

    >>> sum_over_ranks(Dist(), [1.5, 2.0], "cpu")
    [1.5, 2.0]
    """
    if d.world_size == 1:
        return list(values)
    import torch.distributed as tdist

    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return t.tolist()


def sum_gradients(d: Dist, params: Sequence[torch.Tensor], bucket: int = 1 << 24) -> None:
    """Collective: the gradients of ``params`` summed over the ranks, in place (data parallelism: each
    rank ran its share of a batch's micro-batches, so the sum is the batch's gradient). A parameter
    with no gradient on any rank keeps none (AdamW then leaves it alone, as in one process); one with
    a gradient on some rank gets zeros elsewhere first. One ``all_reduce`` per ``bucket`` elements of
    one dtype (bf16 / fp16 summed in fp32); every rank must pass the same parameters in the same order."""
    if d.world_size == 1 or not params:
        return
    import torch.distributed as tdist

    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=params[0].device)
    tdist.all_reduce(has)
    live = [p for p, h in zip(params, has.tolist(), strict=True) if h]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    group: list[torch.Tensor] = []
    size = 0
    for g in [p.grad for p in live] + [None]:
        if group and (g is None or g.dtype != group[0].dtype or g.device != group[0].device
                      or size + g.numel() > bucket):
            flat = torch.cat([x.reshape(-1) for x in group])
            if flat.dtype in (torch.bfloat16, torch.float16):  # summed in fp32, rounded once on the way back
                flat = flat.float()
            tdist.all_reduce(flat)
            offset = 0
            for x in group:
                x.copy_(flat[offset:offset + x.numel()].view_as(x))
                offset += x.numel()
            group, size = [], 0
        if g is not None:
            group.append(g)
            size += g.numel()
