"""Multi-GPU checks, in one run on a machine with 2 or more GPUs (results of 2 x H200: docs/benchmarks.md).

(a) A random-weight Llama-3.1-70B shape in bf16 (141 GB, more than one GPU), built directly
    sharded over the GPUs with accelerate (``prunescope.probe.tiny.random_sharded_model``), runs a
    single-layer skip sweep (none + 80 conditions) of three probes through ``prunescope.probe.sweep.sweep``
    and exact + attribution patching through ``prunescope.circuits.commands.patch``; at every GPU boundary the
    prefix-reuse schedule (cached activations carried to the next GPU) must equal one full
    forward per condition.
(b) A smaller model (a random Llama-3.1-8B shape in bf16, saved to a temp folder; or ``--model``)
    gives the same sweep and patching results on 1 GPU, data-parallel over N GPUs (N processes,
    NCCL, ``devices=N``) and sharded over N GPUs (``device_map="auto"``): sweeps are compared row
    by row from their progress logs (same predictions, largest logit and metric difference),
    patching cell by cell. The batch size is fixed so all three cut the same batches.
(c) Sweep time on 1 GPU vs N GPUs, data parallel (``benchmarks/sweep.py --devices N``).

    python benchmarks/multigpu_check.py                  # all three parts
    python benchmarks/multigpu_check.py --parts b,c      # or some of them; --model DIR for (b)
    python benchmarks/multigpu_check.py --smoke          # CPU dry run of the code paths, tiny models, gloo

Plain tables are printed; ``OUT/multigpu_check.json`` (``--out``, default runs/multigpu-check)
holds every number and ``OUT/runs/`` the runs' tables. Exit status 0 when every check passed.
Needs only torch, transformers, accelerate, tqdm and numpy (no network, no model download).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import tempfile
import time
from pathlib import Path

for _k, _v in {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}.items():
    os.environ.setdefault(_k, _v)   # NVLink multicast off unless asked for (not needed here); nothing is downloaded

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

TOL = 1e-3
SMOKE = False   # --smoke: tiny models on CPU (gloo), to check the code paths without GPUs


def free_gpus() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync_all() -> None:
    for i in range(torch.cuda.device_count()):
        torch.cuda.synchronize(i)


def gib(i: int) -> float:
    return torch.cuda.memory_allocated(i) / 2**30


def n_devices() -> int:
    return 2 if SMOKE else torch.cuda.device_count()


def tokenizer():
    """The tiny offline BPE tokenizer (ids < 512, valid in any vocabulary): real probe items, no download."""
    from transformers import AutoTokenizer

    from prunescope.probe.tiny import tiny_tokenizer_dir

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir())
    tok.padding_side = "right"
    return tok


def device_of(device_map: dict, module: str) -> str:
    """The device accelerate gave a module: the entry of its longest enclosing name."""
    best = max((k for k in device_map if k == "" or module == k or module.startswith(k + ".")), key=len)
    return str(device_map[best])


def layers_per_device(device_map: dict, n_layers: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in range(n_layers):
        d = device_of(device_map, f"model.layers.{i}")
        out[d] = out.get(d, 0) + 1
    return out


def quiet_output(runs: Path, name: str):
    """Where one run of the checks writes its tables: no figures, no progress bars."""
    from prunescope.core.options import Output

    return Output(out=str(runs / name), plot=False, progress=False)


def table(rows: list[list], heads: list[str]) -> str:
    cells = [heads] + [[f"{x:.4g}" if isinstance(x, float) else str(x) for x in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(heads))]
    lines = ["  ".join(x.ljust(w[i]) for i, x in enumerate(r)) for r in cells]
    lines.insert(1, "  ".join("-" * x for x in w))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- (a)
def part_a(args, runs: Path) -> dict:
    from prunescope.core.options import Placement
    from prunescope.probe.models import LoadedModel, parse_max_memory
    from prunescope.probe.scoring import ScoringPlan
    from prunescope.probe.sweep import Condition, SweepOptions, batch_logits_plain, batch_logits_prefix, sweep
    from prunescope.probe.tasks import make_items
    from prunescope.probe.tiny import llama3_70b_config, random_sharded_model, tiny_config
    from prunescope.circuits.commands import PatchOptions, patch

    res: dict = {}
    t = time.perf_counter()
    if SMOKE:
        model = random_sharded_model(tiny_config("llama", 6), {"cpu": "1GiB"}, torch.float32)
    else:
        model = random_sharded_model(llama3_70b_config(), parse_max_memory(args.max_memory), torch.bfloat16)
    sync_all()
    res["build_s"] = time.perf_counter() - t
    n_params = sum(p.numel() for p in model.parameters())
    res["params_b"] = n_params / 1e9
    res["layers_per_device"] = layers_per_device(model.hf_device_map, model.config.num_hidden_layers)
    res["gib_per_gpu"] = [round(gib(i), 1) for i in range(torch.cuda.device_count())]
    print(f"(a) random Llama-3.1-70B shape, {n_params / 1e9:.1f}B parameters in bf16, built sharded in "
          f"{res['build_s']:.1f} s; decoder layers per device {res['layers_per_device']}; "
          f"GiB per GPU {res['gib_per_gpu']}", flush=True)
    lm = LoadedModel(model=model, tokenizer=tokenizer(), name="random-Llama-3.1-70B-shape", path="(random weights)")

    t = time.perf_counter()
    name, bf16 = "random-llama-3.1-70b-seed0", Placement(dtype="bfloat16")
    rows = sweep(SweepOptions(probes=args.a_probes, items=args.a_n, batch_size=args.a_n), model=name, placement=bf16,
                 output=quiet_output(runs, "a_70b_sweep"), loaded=lm)
    sync_all()
    res["sweep_s"] = time.perf_counter() - t
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    res["sweep_conditions"] = len(conds)
    acc = {(r["probe"], r["condition"]): r["value"] for r in rows if r["metric"] == "logit_diff"}
    probes = list(dict.fromkeys(r["probe"] for r in rows))
    show = conds[:3] + conds[-2:]
    print(f"    single-layer sweep: {len(conds)} conditions x {len(probes)} probes x {args.a_n} items in "
          f"{res['sweep_s']:.1f} s (logit_diff; random weights, so only finite numbers matter):")
    print(table([[c] + [acc[(p, c)] for p in probes] for c in show], ["condition"] + probes))
    res["sweep_finite"] = all(math.isfinite(r["value"]) for r in rows if r["metric"] in ("logit_diff", "p_correct"))

    # cached activations crossing GPUs: prefix reuse must equal a full forward per condition
    devs = [device_of(model.hf_device_map, f"model.layers.{i}") for i in range(lm.blocks.n_layers)]
    bounds = [i for i in range(1, len(devs)) if devs[i] != devs[i - 1]]
    check = [Condition(())] + [Condition(c) for b in bounds for c in ((b - 1,), (b,), (b - 1, b))] + \
        [Condition((0,)), Condition((len(devs) - 1,))]
    plan = ScoringPlan(lm.tokenizer, make_items("brackets", 8, seed=1))
    batch = plan.batches(8)[0]
    with torch.no_grad():
        pre = batch_logits_prefix(lm.blocks, batch, check)
        full = batch_logits_plain(lm.blocks, batch, check)
    diff = max((pre[c].float() - full[c].float()).abs().max().item() for c in check)
    agree = sum((pre[c].argmax(-1) == full[c].argmax(-1)).float().mean().item() for c in check) / len(check)
    res["boundaries"] = bounds
    res["boundary_max_logit_diff"] = diff
    res["boundary_argmax_agreement"] = agree
    print(f"    GPU boundaries before layers {bounds}: prefix reuse vs full forward over {[c.name for c in check]}: "
          f"argmax agreement {agree:.4f}, max logit difference {diff:.3g}")

    t = time.perf_counter()
    try:
        p = patch(PatchOptions(probe="arithmetic", pairs=args.a_patch_n, method="both", kinds="resid_post,attn_out",
                               positions=2),
                  model=name, placement=bf16, output=quiet_output(runs, "a_70b_patch"), loaded=lm)
        sync_all()
        res["patch_s"] = time.perf_counter() - t
        res["patch_cells"] = {m: len(c) for m, c in p["cells"].items()}
        res["patch_finite"] = all(math.isfinite(c["value"]) for cs in p["cells"].values() for c in cs)
        print(f"    patching (exact + attribution, resid_post + attn_out, {args.a_patch_n} pairs): "
              f"{res['patch_cells']} cells in {res['patch_s']:.1f} s; spearman {p['agreement']}")
    except Exception as e:   # report, keep going: the sweep is the main check of (a)
        res["patch_error"] = f"{type(e).__name__}: {e}"
        print(f"    patching failed: {res['patch_error']}")
    res["gib_peak_per_gpu"] = [round(torch.cuda.max_memory_allocated(i) / 2**30, 1) for i in range(torch.cuda.device_count())]
    # expected bitwise equal (same batch, same kernels); the gate allows bf16 rounding, the numbers are reported
    res["pass"] = bool(res["sweep_finite"] and len(conds) == lm.blocks.n_layers + 1 and diff <= 0.05
                       and (SMOKE or len(bounds) >= 1)
                       and "patch_error" not in res and res.get("patch_finite", False))
    del lm, model, pre, full
    free_gpus()
    return res


# ----------------------------------------------------------------------------- (b)
def small_model(args, tmp: Path) -> str:
    if args.model:
        return args.model
    from prunescope.probe.tiny import fill_random_, llama3_8b_config, random_weight_model, save_tiny_model

    if SMOKE:
        return str(save_tiny_model("llama", tmp / "tiny-llama"))

    t = time.perf_counter()
    model = fill_random_(random_weight_model(llama3_8b_config(), "cuda:0", torch.bfloat16))
    folder = tmp / "random-llama-3.1-8b"
    model.save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    del model
    free_gpus()
    print(f"(b) random Llama-3.1-8B shape (bf16) written to {folder} in {time.perf_counter() - t:.1f} s", flush=True)
    return str(folder)


def progress_records(folder: Path) -> dict:
    from prunescope.core.results import read_progress

    out = {}
    for f in sorted((folder / ".progress").glob("*.jsonl")):
        for rec in read_progress(f):
            for row, s in rec["stats"].items():
                out[(f.stem, rec["condition"], int(row))] = s
    return out


def compare_sweeps(ref_dir: Path, other_dir: Path) -> dict:
    from prunescope.core.results import read_table

    a, b = progress_records(ref_dir), progress_records(other_dir)
    same, max_logit = 0, 0.0
    for k, s in a.items():
        t = b.get(k)
        if t is None:
            continue
        decide = lambda x: (x["is_argmax"], [u > v for u, v in zip(x["target_logit"], x["compare_logit"])])  # noqa: E731
        same += decide(s) == decide(t)
        vals = s["target_logit"] + s["compare_logit"]
        max_logit = max([max_logit] + [abs(u - v) for u, v in zip(vals, t["target_logit"] + t["compare_logit"])])
    ta, tb = read_table(ref_dir / "sweep.jsonl"), read_table(other_dir / "sweep.jsonl")
    metric = max((abs(x["value"] - y["value"]) for x, y in zip(ta, tb) if x["value"] == x["value"]), default=0.0)
    return {"records": len(a), "missing": len(set(a) ^ set(b)), "same_predictions": same / max(len(a), 1),
            "max_logit_diff": max_logit, "max_metric_diff": metric,
            "same_table_keys": [(x["probe"], x["condition"], x["metric"]) for x in ta] ==
                               [(y["probe"], y["condition"], y["metric"]) for y in tb]}


def compare_patch(a: dict, b: dict) -> dict:
    out = {}
    for m in a["cells"]:
        va, vb = [c["value"] for c in a["cells"][m]], [c["value"] for c in b["cells"][m]]
        same_cells = [c["condition"] for c in a["cells"][m]] == [c["condition"] for c in b["cells"][m]]
        out[m] = {"cells": len(va), "same_cells": same_cells, "max_diff": max(abs(x - y) for x, y in zip(va, vb)),
                  "same_top5_layers": sorted(a["layers"][m], key=lambda k: -a["layers"][m][k])[:5] ==
                                      sorted(b["layers"][m], key=lambda k: -b["layers"][m][k])[:5]}
    return out


def part_b(args, runs: Path, tmp: Path) -> dict:
    from prunescope.circuits.commands import PatchOptions, patch
    from prunescope.core.options import Placement
    from prunescope.probe.models import load_model
    from prunescope.probe.sweep import SweepOptions, sweep

    n_gpu = n_devices()
    dev, dtype = ("cpu", "float32") if SMOKE else ("cuda", "bfloat16")
    path = small_model(args, tmp)
    size = sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
    per_gpu = f"{size * 0.75 / 2**30:.3f}GiB"   # less than the model: forces the shard onto every GPU
    max_memory = "cpu=1GiB" if SMOKE else ",".join(f"{i}={per_gpu}" for i in range(n_gpu))
    def sweep_options() -> SweepOptions:
        return SweepOptions(probes=args.b_probes, items=args.b_n, batch_size=args.b_batch)

    def patch_options() -> PatchOptions:
        return PatchOptions(probe="arithmetic", pairs=args.b_patch_n, method="both",
                            kinds="resid_post,attn_out,mlp_out,head", positions=4)

    res: dict = {"model": path, "max_memory": max_memory, "runs": {}}
    results = {}
    for name in ("1 GPU", f"data parallel x{n_gpu}", f"sharded x{n_gpu}"):
        slug = name.split()[0].replace("1", "one")
        t = time.perf_counter()
        info: dict = {}
        if name.startswith("data"):
            spread = Placement(device=dev, dtype=dtype, devices=n_gpu)
            rows = sweep(sweep_options(), model=path, placement=spread, output=quiet_output(runs, f"b_{slug}_sweep"))
            ts = time.perf_counter()
            pat = patch(patch_options(), model=path, placement=spread, output=quiet_output(runs, f"b_{slug}_patch"))
        else:
            one = dict(device="cpu" if SMOKE else "cuda:0")
            placement = one if name == "1 GPU" else dict(device_map="auto", max_memory=max_memory)
            lm = load_model(path, dtype=dtype, **placement)
            info["load_s"] = time.perf_counter() - t
            if hasattr(lm.model, "hf_device_map"):
                info["layers_per_device"] = layers_per_device(lm.model.hf_device_map, lm.blocks.n_layers)
            t = time.perf_counter()
            rows = sweep(sweep_options(), model=path, placement=Placement(dtype=dtype),
                         output=quiet_output(runs, f"b_{slug}_sweep"), loaded=lm)
            sync_all()
            ts = time.perf_counter()
            pat = patch(patch_options(), model=path, placement=Placement(dtype=dtype),
                        output=quiet_output(runs, f"b_{slug}_patch"), loaded=lm)
            sync_all()
            del lm
            free_gpus()
        info.update(sweep_s=ts - t, patch_s=time.perf_counter() - ts, rows=len(rows))
        results[name] = pat
        res["runs"][name] = info
        print(f"    {name}: {info}", flush=True)
    ref = "1 GPU"
    lines = []
    res["compare"] = {}
    for name in results:
        if name == ref:
            continue
        slug, rslug = name.split()[0].replace("1", "one"), "one"
        sw = compare_sweeps(runs / f"b_{rslug}_sweep", runs / f"b_{slug}_sweep")
        pc = compare_patch(results[ref], results[name])
        ok = (sw["missing"] == 0 and sw["same_table_keys"] and sw["same_predictions"] == 1.0
              and sw["max_metric_diff"] <= TOL and all(v["same_cells"] and v["max_diff"] <= TOL for v in pc.values()))
        res["compare"][name] = {"sweep": sw, "patch": pc, "pass": ok}
        lines.append([name, sw["records"], sw["same_predictions"], sw["max_logit_diff"], sw["max_metric_diff"],
                      pc["exact"]["max_diff"], pc["attribution"]["max_diff"], "PASS" if ok else "FAIL"])
    print("(b) vs 1 GPU (sweep rows from the progress logs; patching cells):")
    print(table(lines, ["placement", "sweep rows", "same predictions", "max logit diff", "max metric diff",
                        "exact patch max diff", "attribution max diff", f"within {TOL}"]))
    res["pass"] = all(c["pass"] for c in res["compare"].values())
    return res


# ----------------------------------------------------------------------------- (c)
def part_c(args) -> dict:
    import sweep as bench   # benchmarks/sweep.py

    from prunescope.probe.tiny import llama3_8b_config

    n_gpu = n_devices()
    if SMOKE:
        from prunescope.probe.tiny import save_tiny_model

        folder = str(save_tiny_model("llama", tempfile.mkdtemp(prefix="multigpu-smoke-")))
        plan = bench.random_plan(12, 512, 10, 20, 0, seed=0)
        res = bench.scaling(n_gpu, folder, None, "float32", plan, 4, kind="cpu")
        return {**res, "pass": all(r["same_predictions"] == 1.0 for r in res["table"])}
    plan = bench.random_plan(args.c_n, llama3_8b_config().vocab_size, 100, 200, 0, seed=0)
    print(f"(c) sweep scaling: random Llama-3.1-8B shape, bf16, {args.c_n} prompts of 100-199 tokens, 33 conditions, "
          f"batch {args.c_batch}, prefix reuse, 1 vs {n_gpu} GPUs (one process each)", flush=True)
    res = bench.scaling(n_gpu, None, "8b", "bfloat16", plan, args.c_batch)
    ok = all(r["same_predictions"] == 1.0 and r["max_metric_diff"] <= TOL for r in res["table"])
    print(f"    speed-up 1 -> {n_gpu} GPUs: {res['ratio']:.2f}x")
    return {**res, "pass": ok}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="a,b,c", help="which checks: a (70B sharded), b (equality), c (scaling)")
    ap.add_argument("--max-memory", default=None, help="(a) memory per GPU, e.g. '0=120GiB,1=120GiB' (default: free)")
    ap.add_argument("--a-probes", default="arithmetic,brackets,copy")
    ap.add_argument("--a-n", type=int, default=16, help="(a) items per probe (default 16)")
    ap.add_argument("--a-patch-n", type=int, default=4, help="(a) patching pairs (default 4)")
    ap.add_argument("--model", default=None, help="(b) a model folder instead of the random 8B shape")
    ap.add_argument("--b-probes", default="arithmetic,brackets,copy")
    ap.add_argument("--b-n", type=int, default=48, help="(b) items per probe (default 48)")
    ap.add_argument("--b-batch", type=int, default=16, help="(b) batch size, the same for every placement")
    ap.add_argument("--b-patch-n", type=int, default=8, help="(b) patching pairs (default 8)")
    ap.add_argument("--c-n", type=int, default=200, help="(c) prompts (default 200, as in the README benchmark)")
    ap.add_argument("--c-batch", type=int, default=30)
    ap.add_argument("--smoke", action="store_true", help="CPU dry run with tiny models (checks the code paths only)")
    ap.add_argument("--out", default="runs/multigpu-check",
                    help="where multigpu_check.json and the runs' tables (OUT/runs/) go (default runs/multigpu-check)")
    args = ap.parse_args(argv)
    global SMOKE
    SMOKE = args.smoke
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    n_gpu = n_devices()
    if n_gpu < 2:
        print(f"needs 2 or more GPUs; {n_gpu} visible")
        return 2
    out = Path(args.out)
    if (out / "runs").exists():  # its runs would resume from the earlier ones instead of being timed
        print(f"{out / 'runs'} exists: delete it or pass another --out")
        return 2
    names = ["cpu (smoke)"] * 2 if SMOKE else [torch.cuda.get_device_name(i) for i in range(n_gpu)]
    report: dict = {"gpus": names, "torch": torch.__version__, "transformers": transformers.__version__}
    print(f"{n_gpu} x {report['gpus'][0]}, torch {torch.__version__}, transformers {transformers.__version__}", flush=True)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="multigpu-check-") as tmp:
        runs = out / "runs"
        for part, fn in (("a", lambda: part_a(args, runs)), ("b", lambda: part_b(args, runs, Path(tmp))),
                         ("c", lambda: part_c(args))):
            if part not in parts:
                continue
            t = time.perf_counter()
            try:
                report[part] = fn()
            except Exception as e:   # one part failing must not hide the others
                import traceback

                traceback.print_exc()
                report[part] = {"pass": False, "error": f"{type(e).__name__}: {e}"}
            report[part]["wall_s"] = time.perf_counter() - t
            print(f"--- part ({part}): {'PASS' if report[part]['pass'] else 'FAIL'} in {report[part]['wall_s']:.0f} s\n",
                  flush=True)
            free_gpus()
    report["wall_s"] = time.perf_counter() - t0
    print(table([[p, "PASS" if report[p]["pass"] else "FAIL", report[p]["wall_s"]] for p in parts if p in report],
                ["part", "result", "seconds"]))
    from prunescope.core.results import atomic_write_json

    atomic_write_json(out / "multigpu_check.json", report)
    print(f"wrote {out}/multigpu_check.json and {out}/runs/")
    return 0 if all(report[p]["pass"] for p in parts if p in report) else 1


if __name__ == "__main__":
    sys.exit(main())
