"""Data-parallel sweeps and patching (2 processes on gloo) equal one process; sharded placement options.

One group of 2 CPU processes is started for the whole file (starting one costs ~10-20 s on 2
cores); its worker runs the CLI under the group (the torchrun path), a single-batch sweep (the
conditions are split), exact + attribution patching, and a resume of a half-finished run. The
parent compares everything with single-process runs. GPUs cannot be tested here: on CPU every
"device" of a device map is the CPU, so the cross-device moves are checked with layers that
accelerate offloads to disk (their weights sit on ``meta``), and on the GPU machine by
``benchmarks/multigpu_check.py``.
"""

import contextlib
import io
import json
import math

import pytest
import torch

from prunescope.core.distributed import Dist, assign, check_devices, launch, rank_device, wants_launch
from prunescope.core.errors import PrunescopeError
from prunescope.probe.models import LoadedModel, load_model, parse_max_memory
from prunescope.core.options import Output
from prunescope.core.results import read_progress, read_table
from prunescope.probe.scoring import ScoringPlan
from prunescope.probe.sweep import SweepOptions, SweepSettings, make_conditions, split_work, sweep, sweep_blocks
from prunescope.probe.tasks import make_items


SWEEP = dict(probes="copy,arithmetic", items=6, batch_size=2)
ONE_BATCH = dict(probes="arithmetic_multi", shots=2, items=5, batch_size=8, windows=[1, 2])  # one batch, a shared prefix
PATCH = dict(probe="arithmetic", pairs=4, kinds="resid_post,attn_out,head", positions=2, method="both")


def _patch_options():
    from prunescope.circuits.commands import PatchOptions

    return PatchOptions(**PATCH)


def _quiet(out=None) -> Output:
    return Output(out=None if out is None else str(out), progress=False, plot=False)


def _worker(model_dir: str, out: str) -> dict:
    """Runs in each of 2 processes of one gloo group (started by ``launch``)."""
    from prunescope.cli import main
    from prunescope.circuits.commands import PatchOptions, patch
    from prunescope.core.distributed import distributed

    with distributed("cpu") as d:
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            code = main(["sweep", "--model", model_dir, "--probes", "copy,arithmetic", "--items", "6", "--batch-size", "2",
                         "--quiet", "--out", f"{out}/cli"])
        printed = d.gather(text.getvalue())
        one_batch = sweep(SweepOptions(**ONE_BATCH), model=model_dir, output=_quiet(f"{out}/one_batch"))
        cells = patch(_patch_options(), model=model_dir, output=_quiet(f"{out}/patch"))
        resumed = sweep(SweepOptions(**SWEEP), model=model_dir, output=_quiet(f"{out}/resume"))
        return {"code": code, "printed": printed, "one_batch": one_batch, "patch": cells, "resumed": resumed,
                "world": d.world_size}


def _same(a: list[dict], b: list[dict]) -> bool:
    def key(r):
        return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
    return [key(r) for r in a] == [key(r) for r in b]


def test_two_processes_equal_one(tiny_llama_dir, tmp_path):
    model = str(tiny_llama_dir)
    single = sweep(SweepOptions(**SWEEP), model=model, output=_quiet(tmp_path / "single"))
    # a half-finished run for the group to resume: drop the table and the second half of the log
    resume = tmp_path / "group" / "resume"
    sweep(SweepOptions(**SWEEP), model=model, output=_quiet(resume))
    (resume / "sweep.csv").unlink()
    for log in (resume / ".progress").iterdir():
        lines = log.read_text().splitlines(keepends=True)
        log.write_text("".join(lines[: len(lines) // 2]))
    kept = {f.name: len(read_progress(f)) for f in (resume / ".progress").iterdir()}

    got = launch(_worker, 2, (model, str(tmp_path / "group")))
    assert got["world"] == 2 and got["code"] == 0

    # CLI under the group (what torchrun runs): only rank 0 prints; the table equals one process
    assert "skip:0" in got["printed"][0] and got["printed"][1] == ""
    assert _same(read_table(tmp_path / "group" / "cli" / "sweep.jsonl"), single)
    assert _same(got["resumed"], single)
    # the resumed log holds every (condition, batch) exactly once: finished work was not redone
    for name, n_kept in kept.items():
        recs = read_progress(resume / ".progress" / name)
        keys = [(r["condition"], r["batch"]) for r in recs]
        assert len(keys) == len(set(keys)) > n_kept
        full = read_progress(tmp_path / "single" / ".progress" / name)
        assert sorted(keys) == sorted((r["condition"], r["batch"]) for r in full)

    # one batch: the conditions were split between the ranks, and the rows are the same
    assert _same(got["one_batch"], sweep(SweepOptions(**ONE_BATCH), model=model, output=_quiet()))

    from prunescope.circuits.commands import PatchOptions, patch

    # one process gives the cells of the group (above)
    ref = patch(PatchOptions(**PATCH), model=model, output=Output(progress=False, plot=False))
    assert got["patch"]["cells"] == ref["cells"]            # exact (split by layer) and attribution
    assert got["patch"]["agreement"] == ref["agreement"]
    logged = read_progress(tmp_path / "group" / "patch" / ".progress" / "exact.jsonl")
    assert sorted(r["condition"] for r in logged) == sorted(c["condition"] for c in ref["cells"]["exact"])
    table = read_table(tmp_path / "group" / "patch" / "patch.csv")
    assert len(table) == len(ref["cells"]["exact"]) + len(ref["cells"]["attribution"])


def test_work_split_covers_everything_once():
    assert assign([5.0, 1.0, 4.0, 2.0], 2) == [[0, 1], [2, 3]]
    assert assign([1.0], 3) == [[0], [], []]
    model, tok = __import__("prunescope.probe.tiny", fromlist=["tiny_model"]).tiny_model("llama", n_layers=6)
    plan = ScoringPlan(tok, make_items("copy", 11, seed=1))
    conds = make_conditions(6, windows=[1, 2])
    for bs, world in [(2, 2), (2, 3), (11, 2), (4, 4), (3, 1)]:
        batches = plan.batches(bs)
        for reuse in (True, False):
            work = split_work(batches, conds, 6, world, prefix_reuse=reuse)
            units = [(bi, c.name) for rank in work for bi, cs in rank for c in cs]
            assert sorted(units) == sorted((bi, c.name) for bi in range(len(batches)) for c in conds)
            assert len(work) == world
    # many batches: whole batches per rank; a single batch: its conditions are shared out
    many = split_work(plan.batches(2), conds, 6, 2)
    assert all(len(cs) == len(conds) for rank in many for _, cs in rank)
    one = split_work(plan.batches(11), conds, 6, 2)
    assert [len(rank) for rank in one] == [1, 1] and all(len(cs) < len(conds) for rank in one for _, cs in rank)


def test_layers_offloaded_by_accelerate(tiny_llama_dir, tmp_path):
    """Layers whose weights accelerate keeps off the module (``meta``) run where its hook says."""
    from transformers import AutoModelForCausalLM

    from prunescope.circuits.pairs import encode_pairs, make_pairs
    from prunescope.circuits.patching import exact_patching, plan_cells

    plain = load_model(str(tiny_llama_dir))
    dmap = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
            "model.layers.2": "cpu", "model.layers.3": "disk", "model.norm": "cpu", "lm_head": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, device_map=dmap, offload_folder=str(tmp_path)).eval()
    assert model.model.layers[1].self_attn.q_proj.weight.device.type == "meta"
    off = LoadedModel(model=model, tokenizer=plain.tokenizer, name=plain.name, path=plain.path)
    assert off.blocks._device_from(1) == torch.device("cpu")
    items = {"copy": make_items("copy", 6, seed=0)}
    settings = SweepSettings(windows=[1], sets=[[1, 3]], batch_size=4, show_progress=False)
    assert _same(sweep_blocks(off.blocks, off.tokenizer, items, settings),
                 sweep_blocks(plain.blocks, plain.tokenizer, items, settings))
    enc = encode_pairs(plain.tokenizer, make_pairs("arithmetic", plain.tokenizer, n=4))
    plan = plan_cells(plain.blocks, enc, kinds=("resid_post", "mlp_out"), positions=2, layers=[0, 1, 3])
    a = exact_patching(off.blocks, plan)
    b = exact_patching(plain.blocks, plan)
    assert [r["value"] for r in a] == pytest.approx([r["value"] for r in b], abs=1e-6)


def test_random_sharded_model_matches_plain_build():
    """The 70B check builds its model sharded from empty weights; on CPU it equals a plain build."""
    from prunescope.probe.blocks import Blocks
    from prunescope.probe.tiny import fill_random_, random_sharded_model, random_weight_model, tiny_config

    sharded = random_sharded_model(tiny_config("llama", 3), {"cpu": "1GiB"}, torch.float32, attn_implementation="eager")
    plain = fill_random_(random_weight_model(tiny_config("llama", 3), "cpu", torch.float32, attn_implementation="eager"))
    ids = torch.tensor([[2, 40, 41, 42, 43, 44]])
    a, b = Blocks(sharded).forward(ids), Blocks(plain).forward(ids)
    assert torch.equal(a, b) and a.std() > 0.05 and sharded.hf_device_map == {"": "cpu"}


def test_placement_options_and_errors(tiny_llama_dir):
    ids = torch.tensor([[2, 40, 41, 42, 43]])
    plain = load_model(str(tiny_llama_dir))
    mapped = load_model(str(tiny_llama_dir), device_map="cpu")
    assert torch.equal(plain.blocks.forward(ids), mapped.blocks.forward(ids))
    assert parse_max_memory("cpu=2GiB") == {"cpu": "2GiB"} and parse_max_memory(None) is None
    assert parse_max_memory({"cpu": 10**9}) == {"cpu": 10**9}
    bad = {"0=70GiB" if not torch.cuda.is_available() else "99=70GiB": "GPU",
           "cpu:70GiB": "DEVICE=SIZE", "gpu0=70GiB": "GPU index", "cpu=lots": "size", "cpu=1GiB,cpu=2GiB": "twice",
           ",": "empty"}
    for spec, msg in bad.items():
        with pytest.raises(PrunescopeError, match=msg):
            parse_max_memory(spec)
    with pytest.raises(PrunescopeError, match="unknown --device-map"):
        load_model(str(tiny_llama_dir), device_map="gpu")
    with pytest.raises(PrunescopeError, match="use one"):
        load_model(str(tiny_llama_dir), device="cuda", device_map="auto")
    for args, msg in [((0, "cpu"), "positive"), ((2, "cpu", "auto"), "use one of them"),
                      ((2, "cpu", None, plain), "model path"), ((2, "mps"), "cuda or cpu")]:
        with pytest.raises(PrunescopeError, match=msg):
            check_devices(*args)
    if torch.cuda.device_count() < 2:
        with pytest.raises(PrunescopeError, match="GPUs"):
            check_devices(2, "cuda")
    assert check_devices(None, "cpu") == 1 and not wants_launch(1) and wants_launch(2)
    assert rank_device("cuda", Dist(1, 2, 1)) == "cuda:1" and rank_device("cpu", Dist(1, 2, 1)) == "cpu"
    from prunescope.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["sweep", "--model", str(tiny_llama_dir), "--devices", "2", "--device-map", "auto", "--quiet"])
    assert code == 2 and "use one of them" in err.getvalue()
    with contextlib.redirect_stderr(err):
        code = main(["patch", "--model", str(tiny_llama_dir), "--max-memory", "cpu=lots", "--quiet"])
    assert code == 2 and "70GiB" in err.getvalue()
    assert json.loads(json.dumps(parse_max_memory("cpu=1.5GB"))) == {"cpu": "1.5GB"}
