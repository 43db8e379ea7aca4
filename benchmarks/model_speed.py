"""Speed of the So3krates force field on the CPU: eager reference, fast path, GAQ models and the peer.

One process, one run, 1 thread by default. Workloads (the shipped ``azobenzene-gfn2-fp32-small``, 64
features and 2 layers, the model the speed goals were set for; ``--model azobenzene-gfn2-fp32 --gaq-model
...`` for the study's 128 x 3 parent; real frames of ``azobenzene-gfn2-500K``):

* energy + forces latency at batch 1 and throughput at batch 64 and 256 (neighbour lists built once, outside
  the timed region, as in ``benchmarks/peer_so3krates_torch.py``);
* a training step at batch 5 (energy + force loss, backward through the forces, Adam) and one epoch of 950
  frames (190 such steps), for the FP32 model and a QAT-prepared GAQ W4A8 model (FP32 attention kept);
* MD: NVE steps per second through :func:`spherequant.models.md.run_md` (neighbour list at every step), one
  replica and 64 replicas;
* MD engines: our engine (``run_md``) against TorchSim's NVE integrator (``torch_sim.nve`` driving
  :class:`spherequant.models.torchsim.SphereQuantModel`), same model (fast path), same batch (B replicas of
  one azobenzene frame), same initial velocities and timestep, both integrating in float64 around the
  float32 model; ``speedup_vs_ours`` is our engine's time over the row's time (``cpu_speedup_vs_ours`` from
  process CPU time). Needs the ``torchsim`` extra (rows skipped with a note otherwise).

Rows: ``eager reference`` (``So3krates.reference_forward`` / ``fast_path(False)``), ``fast path`` (the
default forward), the shipped GAQ W4A8 model (fake-quant, and converted to integer by
:func:`spherequant.models.deploy.convert_to_integer`), and the peer ``so3krates-torch`` at the same size
(latency/throughput only; rows present when the peer imports, see ``benchmarks/peer_so3krates_torch.py`` for
its environment; ``--peer off`` skips it); ``--compile`` adds rows for the fast path under ``torch.compile``
(``fast.set_compile``; the compile time is recorded). Calls of the compared rows alternate, so background
load hits them alike; ratios are taken within one run (``speedup_vs_eager``: eager time / row time of the
same workload and model family; ``speedup_vs_peer``: peer time / row time; ``cpu_*``: the same from process
CPU time, which leaves out time the process waited for a core).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/model_speed.py                 # full run -> benchmarks/results/
    OMP_NUM_THREADS=1 /tmp/peer-venv/bin/python benchmarks/model_speed.py --compile
                                              # with the peer rows and the torch.compile rows (opt-in)
    python benchmarks/model_speed.py --quick --out /tmp/speed.json     # toy sizes (seconds)
    OMP_NUM_THREADS=1 python benchmarks/model_speed.py --skip inference,train,md \
        --out benchmarks/results/model_speed_torchsim.json   # only our MD engine vs TorchSim
    OMP_NUM_THREADS=1 python benchmarks/model_speed.py --skip inference,md,torchsim --compile --parent \
        --peer off --out benchmarks/results/model_speed_training.json  # training rows, compiled, parents
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "model_speed.json"
SHIPPED = "azobenzene-gfn2-fp32-small"
SHIPPED_GAQ = "azobenzene-gfn2-gaq-w4a8-small"
DATASET = "azobenzene-gfn2-500K"
NOTE = (
    "calls of the compared rows alternate, so ratios are side by side; absolute times depend on the "
    "machine's load during the run (wall: perf_counter; CPU: process time, which leaves out time the "
    "process waited)"
)


# ----------------------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------------------
def time_alternating(fns: dict, repeats: int, warmup: int, inner: int = 1) -> dict:
    """Per-call wall and CPU milliseconds of each callable (median and min over ``repeats`` blocks of
    ``inner`` calls); the callables alternate block by block (order reversed every other round)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for r in range(repeats):
        for k in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(inner):
                fns[k]()
            wall[k].append(1e3 * (time.perf_counter() - t0) / inner)
            cpu[k].append(1e3 * (time.process_time() - c0) / inner)
    return {
        k: {"ms_median": statistics.median(wall[k]), "ms_min": min(wall[k]),
            "cpu_ms_median": statistics.median(cpu[k])}
        for k in fns
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# models and data
# ----------------------------------------------------------------------------------------------------------
def _eager(fn):
    from spherequant.models.fast import fast_path

    def run(*args, **kwargs):
        with fast_path(False):
            return fn(*args, **kwargs)

    return run


def _compiled(fn):
    from spherequant.models.fast import set_compile

    def run(*args, **kwargs):
        old = set_compile(True)
        try:
            return fn(*args, **kwargs)
        finally:
            set_compile(old)

    return run


def compile_once(fp, ds, dtype) -> float:
    """Seconds of the first compiled call (``torch.compile`` of the inference pass, dynamic shapes)."""
    b, ei = batch(ds, [0], dtype, fp.cutoff)
    t0 = time.perf_counter()
    _compiled(fp)(b.z, b.pos, b.batch, edge_index=ei, num_graphs=1)
    return time.perf_counter() - t0


def load_models(quick: bool, dtype, fp_name: str = SHIPPED, gaq_name: str = SHIPPED_GAQ):
    """{name: (model, family)}; quick mode uses a small untrained model instead of the shipped ones."""
    from spherequant.models.checkpoints import load_model

    if quick:
        from spherequant.models.so3krates import So3krates

        torch.manual_seed(0)
        fp = So3krates(num_features=16, num_layers=1, num_heads=2, degrees=(1,), num_rbf=8).to(dtype).eval()
        return fp, None, None
    fp = load_model(fp_name).to(dtype)
    gaq_model = integer = None
    try:
        gaq_model = load_model(gaq_name).to(dtype)
        from spherequant.models.deploy import convert_to_integer

        integer = convert_to_integer(load_model(gaq_name).to(dtype))
    except Exception as exc:  # the GAQ rows are optional: report why they are missing
        print(f"note: GAQ rows skipped ({type(exc).__name__}: {exc})", flush=True)
    return fp, gaq_model, integer


def qat_prepared(fp, ds, dtype):
    """A QAT-prepared GAQ W4A8 copy of ``fp`` (FP32 attention kept), calibrated on 8 frames."""
    from spherequant.models import gaq
    from spherequant.models.data import collate

    m = copy.deepcopy(fp)
    gaq.quantize_(m, gaq.QuantizationSpec.from_options("gaq", attention="keep"))
    gaq.calibrate_(m, [collate(ds, [k], dtype=dtype) for k in range(8)])
    return m


def batch(ds, indices, dtype, cutoff):
    from spherequant.models.data import collate
    from spherequant.models.neighbors import radius_graph

    b = collate(ds, list(indices), dtype=dtype)
    ei = radius_graph(b.pos, cutoff, b.batch if b.num_graphs > 1 else None)
    return b, ei


# ----------------------------------------------------------------------------------------------------------
# workloads
# ----------------------------------------------------------------------------------------------------------
def inference_rows(models: dict, ds, sizes, repeats, dtype, peer=None) -> list[dict]:
    rows = []
    cutoff = next(iter(models.values()))[0].cutoff
    for n_mol in sizes:
        b, ei = batch(ds, range(n_mol), dtype, cutoff)
        fns = {}
        for name, (model, call) in models.items():

            def run(model=model, call=call, b=b, ei=ei):
                return call(model)(b.z, b.pos, b.batch, edge_index=ei, num_graphs=b.num_graphs)

            fns[name] = run
        if peer is not None:
            pb = peer["batch"](range(n_mol))
            fns["peer so3krates-torch"] = lambda pb=pb: peer["call"](pb)
        reps = repeats if n_mol == 1 else max(3, repeats // 10)
        inner = 5 if n_mol == 1 else 1
        t = time_alternating(fns, reps, warmup=3, inner=inner)
        for name, res in t.items():
            rows.append(dict(workload=f"energy+forces, batch {n_mol}", row=name, molecules=n_mol,
                             atoms=int(b.z.shape[0]), edges=int(ei.shape[1]), **res,
                             per_s=1e3 * n_mol / res["ms_median"], unit="molecules/s"))  # fmt: skip
    return rows


def _loss(out, b):
    n = b.n_atoms.to(out["energy"].dtype)
    return (((out["energy"] - b.energy) / n) ** 2).mean() + ((out["forces"] - b.forces) ** 2).mean()


def training_rows(
    fp, ds, dtype, epoch_frames: int, batch_size: int, steps: int, label: str, compiled: bool = False
) -> list[dict]:
    """A training step (timed over ``steps`` alternating steps) and one epoch of ``epoch_frames`` frames;
    ``compiled`` adds the row ``training step (compiled)`` (:mod:`spherequant.models.compiled` and Adam with
    ``fused=True``, as training with ``compile: true``), whose first step (trace + compilation) is timed
    separately."""
    from spherequant.models import compiled as compiled_mod
    from spherequant.models.data import collate

    models = {"eager reference": copy.deepcopy(fp).train(), "fast path": copy.deepcopy(fp).train()}
    calls = {"eager reference": _eager, "fast path": lambda f: f}
    if compiled:
        models["training step (compiled)"] = copy.deepcopy(fp).train()

        def compiled_call(m):
            def run(z, pos, batch, num_graphs):
                out = compiled_mod.training_forward(m, z, pos, batch, num_graphs=num_graphs)
                if out is None:
                    raise RuntimeError(f"the compiled training step does not handle this model "
                                       f"({compiled_mod.unsupported_reason(m)})")  # fmt: skip
                return out

            return run

        calls["training step (compiled)"] = compiled_call
    # the compiled row steps Adam fused, as training with ``compile: true`` does
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-5, fused=True if "compiled" in k else None)
            for k, m in models.items()}  # fmt: skip
    n_batches = epoch_frames // batch_size
    batches = [collate(ds, range(k * batch_size, (k + 1) * batch_size), dtype=dtype)
               for k in range(n_batches)]  # fmt: skip

    def step(name, b):
        m, opt = models[name], opts[name]
        opt.zero_grad(set_to_none=True)
        loss = _loss(calls[name](m)(b.z, b.pos, b.batch, num_graphs=b.num_graphs), b)
        loss.backward()
        opt.step()

    compile_info = {}
    if compiled:
        c0, t0 = time.process_time(), time.perf_counter()
        step("training step (compiled)", batches[0])  # trace + compile (forward and backward)
        compile_info = dict(
            compile_seconds=time.perf_counter() - t0, compile_cpu_seconds=time.process_time() - c0
        )
        print(
            f"{label}: compiled training step ready after {compile_info['compile_seconds']:.1f} s", flush=True
        )
    it = iter(range(10**9))
    t = time_alternating({k: (lambda k=k: step(k, batches[next(it) % n_batches])) for k in models},
                         steps, warmup=2)  # fmt: skip
    epoch = {k: 0.0 for k in models}
    epoch_cpu = {k: 0.0 for k in models}
    for r, b in enumerate(batches):  # one epoch of each, step by step alternating
        for k in list(models) if r % 2 == 0 else list(models)[::-1]:
            c0, t0 = time.process_time(), time.perf_counter()
            step(k, b)
            epoch[k] += time.perf_counter() - t0
            epoch_cpu[k] += time.process_time() - c0
    rows = []
    for k in models:
        extra = compile_info if k == "training step (compiled)" else {}
        rows.append(dict(workload=f"training step, batch {batch_size}", row=f"{label}: {k}", **t[k],
                         per_s=1e3 / t[k]["ms_median"], unit="steps/s", **extra))  # fmt: skip
        rows.append(dict(workload=f"training epoch, {n_batches * batch_size} frames", row=f"{label}: {k}",
                         ms_median=1e3 * epoch[k], ms_min=1e3 * epoch[k], cpu_ms_median=1e3 * epoch_cpu[k],
                         per_s=1.0 / epoch[k], unit="epochs/s", seconds_per_epoch=epoch[k],
                         cpu_seconds_per_epoch=epoch_cpu[k], **extra))  # fmt: skip
    return rows


def parent_model(fp, dtype, config: str = "azobenzene_fp32_parent.yaml"):
    """An untrained model of one of the study's FP32 parent architectures (``config`` under models/configs:
    ``azobenzene_fp32_parent.yaml``, or ``azobenzene_fp32_cosine_parent.yaml`` for cosine attention), with
    the shipped model's energy statistics (timing only)."""
    import yaml
    from spherequant.models.so3krates import So3krates

    cfg = yaml.safe_load((ROOT / "models" / "configs" / config).read_text())["model"]
    cfg["degrees"] = tuple(cfg["degrees"])
    torch.manual_seed(0)
    m = So3krates(**cfg).to(dtype)
    k = min(m.energy_shift.shape[0], fp.energy_shift.shape[0])
    with torch.no_grad():
        m.energy_shift[:k].copy_(fp.energy_shift[:k])
        m.energy_scale[:k].copy_(fp.energy_scale[:k])
    return m


def md_rows(models: dict, ds, dtype, replicas: int, n_steps: int) -> list[dict]:
    from spherequant.models.md import run_md

    fr = ds[0]
    z, pos = np.asarray(fr["numbers"]), np.asarray(fr["positions"])
    fns = {}
    for name, (model, call) in models.items():

        def go(model=model, call=call):
            call(run_md)(model, z, pos, n_steps=n_steps, replicas=replicas, save_every=n_steps,
                         save_positions=False, blowup="off", dtype=dtype, seed=0)  # fmt: skip

        fns[name] = go
    t = time_alternating(fns, repeats=3, warmup=1)
    return [dict(workload=f"MD NVE, {replicas} replica{'s' if replicas > 1 else ''}", row=name, **res,
                 per_s=1e3 * n_steps / res["ms_median"], unit="steps/s", steps=n_steps)
            for name, res in t.items()]  # fmt: skip


def torchsim_rows(fp, ds, replicas: int, n_steps: int, repeats: int = 3) -> list[dict]:
    """Our MD engine vs TorchSim's NVE integrator on the same model and batch (rows ``our engine (run_md)``,
    ``TorchSim nve``, and ``TorchSim nve (adapter input checks on)``), alternating; [] without TorchSim."""
    try:
        import torch_sim as ts
        from spherequant.models.torchsim import SphereQuantModel, fs_to_time_unit, molecules_to_state
    except ImportError as exc:
        print(f"note: TorchSim rows skipped ({exc})", flush=True)
        return []
    from spherequant.models.md import masses_from_numbers, maxwell_boltzmann, run_md

    fr = ds[0]
    z, pos = np.asarray(fr["numbers"]), np.asarray(fr["positions"])
    vel = maxwell_boltzmann(masses_from_numbers(z), 300.0, replicas=replicas, seed=0)
    dt_fs = 0.5
    adapter = SphereQuantModel(fp)  # wraps the same module (no copy): same weights, dtype, fast path
    checked = SphereQuantModel(fp)
    adapter.validate_inputs = False  # as fp.validate_inputs: no per-step checks in the timed region
    f64 = dict(dtype=torch.float64)

    def ours():
        run_md(fp, z, pos, velocities=vel, n_steps=n_steps, timestep_fs=dt_fs, save_every=n_steps,
               save_positions=False, blowup="off", dtype=fp.dtype)  # fmt: skip

    def torchsim(model):
        def go():
            init, update = ts.nve(model, dt=torch.tensor(fs_to_time_unit(dt_fs), **f64),
                                  kT=torch.tensor(0.0, **f64))  # fmt: skip
            state = init(molecules_to_state([z] * replicas, [pos] * replicas, list(vel), dtype=torch.float64))
            for _ in range(n_steps):
                state = update(state)
            return state

        return go

    fns = {"our engine (run_md)": ours, "TorchSim nve": torchsim(adapter),
           "TorchSim nve (adapter input checks on)": torchsim(checked)}  # fmt: skip
    t = time_alternating(fns, repeats=repeats, warmup=1)
    base = t["our engine (run_md)"]
    return [dict(workload=f"MD engines NVE, {replicas} replica{'s' if replicas > 1 else ''}", row=name, **res,
                 per_s=1e3 * n_steps / res["ms_median"], unit="steps/s", steps=n_steps,
                 speedup_vs_ours=base["ms_median"] / res["ms_median"],
                 cpu_speedup_vs_ours=base["cpu_ms_median"] / res["cpu_ms_median"])
            for name, res in t.items()]  # fmt: skip


def add_ratios(rows: list[dict]) -> None:
    """speedup_vs_eager (same workload, same model family) and speedup_vs_peer (same workload)."""
    by_workload: dict = {}
    for r in rows:
        by_workload.setdefault(r["workload"], []).append(r)
    for group in by_workload.values():
        peer = next((r for r in group if r["row"] == "peer so3krates-torch"), None)
        for r in group:
            family = r["row"].split(": ")[0] if ": " in r["row"] else ""
            eager_name = f"{family}: eager reference" if family else "eager reference"
            if family.startswith("GAQ W4A8 shipped"):
                eager_name = "GAQ W4A8 shipped (fake-quant): eager reference"
            eager = next((e for e in group if e["row"] == eager_name), None)
            if eager is not None:
                r["speedup_vs_eager"] = eager["ms_median"] / r["ms_median"]
                r["cpu_speedup_vs_eager"] = eager["cpu_ms_median"] / r["cpu_ms_median"]
            if peer is not None:
                r["speedup_vs_peer"] = peer["ms_median"] / r["ms_median"]
                r["cpu_speedup_vs_peer"] = peer["cpu_ms_median"] / r["cpu_ms_median"]


# ----------------------------------------------------------------------------------------------------------
# peer
# ----------------------------------------------------------------------------------------------------------
def load_peer(fp, ds, dtype, mode: str):
    """Callables of the peer at the size of ``fp``, or None (mode "auto" and the peer not importable)."""
    if mode == "off":
        return None
    path = ROOT / "benchmarks" / "peer_so3krates_torch.py"
    spec = importlib.util.spec_from_file_location("_peer_bench", path)
    pb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pb)
    try:
        peer = pb._import_peer()
    except SystemExit as exc:
        if mode == "on":
            raise
        print(f"note: peer rows skipped ({str(exc.code).splitlines()[0]})", flush=True)
        return None
    cfg = fp.config
    args = argparse.Namespace(cutoff=cfg["cutoff"], num_rbf=cfg["num_rbf"], degrees=list(cfg["degrees"]),
                              features=cfg["num_features"], heads=cfg["num_heads"], layers=cfg["num_layers"],
                              seed=0)  # fmt: skip
    avg = pb.avg_num_neighbors(peer, ds, range(8), cfg["cutoff"], dtype)
    model = pb.build_peer(peer, args, dtype, torch.device("cpu"), avg).eval()
    cpu = torch.device("cpu")

    def make_batch(idx):
        return pb.peer_batch(peer, pb.peer_frames(peer, ds, list(idx), cfg["cutoff"], dtype), cpu, dtype)

    return {
        "version": peer["version"],
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "batch": make_batch,
        "call": lambda d: pb.call_peer(model, d),
    }


# ----------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------
def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="toy sizes (a small untrained model; seconds)")
    ap.add_argument(
        "--model", default=SHIPPED, help=f"FP32 model: pretrained name or checkpoint (default {SHIPPED})"
    )
    ap.add_argument(
        "--gaq-model", default=SHIPPED_GAQ, help=f"GAQ W4A8 model of the GAQ rows (default {SHIPPED_GAQ})"
    )
    ap.add_argument("--out", default=str(DEFAULT_JSON), help="JSON file to write ('' to skip)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument(
        "--peer",
        choices=("auto", "on", "off"),
        default="auto",
        help="peer so3krates-torch rows: when importable (auto), required (on), never (off)",
    )
    ap.add_argument("--repeats", type=int, default=60, help="timed blocks at batch 1 (fewer at large batch)")
    ap.add_argument("--skip", default="",
                    help="comma list of workloads to skip: inference, train, train-fp32 (QAT rows kept), "
                         "md, torchsim")  # fmt: skip
    ap.add_argument("--compile", action="store_true",
                    help="add rows for the fast path under torch.compile and the compiled training step "
                         "(minutes to compile)")  # fmt: skip
    ap.add_argument(
        "--parent",
        action="store_true",
        help="also time training at the study's parent sizes (128 features, 3 layers, untrained; "
        "both attention modes)",
    )
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    if args.repeats < 3:
        ap.error(f"--repeats must be >= 3, got {args.repeats}")
    skip = {s for s in args.skip.split(",") if s}
    if skip - {"inference", "train", "train-fp32", "md", "torchsim"}:
        ap.error(f"--skip takes inference, train, train-fp32, md, torchsim; got {sorted(skip)}")
    args.skip = skip
    return args


def main(argv=None) -> dict:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    from spherequant.models.data import load_dataset

    from spherequant import _report

    dtype = torch.float32
    ds = load_dataset(DATASET)
    fp, gaq_model, integer = load_models(args.quick, dtype, args.model, args.gaq_model)
    fp.validate_inputs = False  # no per-call input checks inside the timed region (as the peer benchmark)
    peer = None if args.quick and args.peer == "auto" else load_peer(fp, ds, dtype, args.peer)

    inf_models = {"eager reference": (fp, _eager), "fast path": (fp, lambda f: f)}
    if gaq_model is not None:
        inf_models["GAQ W4A8 shipped (fake-quant): eager reference"] = (gaq_model, _eager)
        inf_models["GAQ W4A8 shipped (fake-quant): fast path"] = (gaq_model, lambda f: f)
    compile_s = None
    if args.compile:
        print("compiling ...", flush=True)
        compile_s = compile_once(fp, ds, dtype)
        inf_models["fast path + torch.compile"] = (fp, _compiled)
        if gaq_model is not None:  # the traced graph of spherequant.models.compiled, without gradients
            inf_models["GAQ W4A8 shipped (fake-quant): + torch.compile"] = (gaq_model, _compiled)
    if integer is not None:
        inf_models["GAQ W4A8 shipped: integer (deploy)"] = (integer, lambda f: f)
    sizes = [1, 4] if args.quick else [1, 64, 256]
    repeats = 4 if args.quick else args.repeats
    rows: list[dict] = []
    if "inference" not in args.skip:
        print("energy + forces ...", flush=True)
        rows += inference_rows(inf_models, ds, sizes, repeats, dtype, peer)
    if "train" not in args.skip:
        print("training ...", flush=True)
        frames, steps = (10, 3) if args.quick else (950, 30)
        if "train-fp32" not in args.skip:
            rows += training_rows(fp, ds, dtype, frames, 5, steps, "FP32", compiled=args.compile)
        if args.parent and "train-fp32" not in args.skip:
            rows += training_rows(parent_model(fp, dtype), ds, dtype, frames, 5, steps // 2,
                                  "FP32 parent (128 features, 3 layers)", compiled=args.compile)  # fmt: skip
            cosine = parent_model(fp, dtype, "azobenzene_fp32_cosine_parent.yaml")
            label = "FP32 cosine parent (128 features, 3 layers)"
            rows += training_rows(cosine, ds, dtype, frames, 5, steps // 2, label, compiled=args.compile)
        if not args.quick:
            rows += training_rows(qat_prepared(fp, ds, dtype), ds, dtype, 100, 5, 10, "GAQ W4A8 QAT-prepared",
                                  compiled=args.compile)  # fmt: skip
            if args.parent:
                label = "GAQ W4A8 QAT-prepared parent (128 features, 3 layers)"
                qat_parent = qat_prepared(parent_model(fp, dtype), ds, dtype)
                rows += training_rows(qat_parent, ds, dtype, 100, 5, 10, label, compiled=args.compile)
    if "md" not in args.skip:
        print("MD ...", flush=True)
        md_models = {"eager reference": (fp, _eager), "fast path": (fp, lambda f: f)}
        if args.compile:
            md_models["fast path + torch.compile"] = (fp, _compiled)
            if gaq_model is not None:
                md_models["GAQ W4A8 shipped (fake-quant): eager reference"] = (gaq_model, _eager)
                md_models["GAQ W4A8 shipped (fake-quant): + torch.compile"] = (gaq_model, _compiled)
        if integer is not None:
            md_models["GAQ W4A8 shipped: integer (deploy)"] = (integer, lambda f: f)
        for replicas, n_steps in ((1, 20), (4, 5)) if args.quick else ((1, 300), (64, 30)):
            rows += md_rows(md_models, ds, dtype, replicas, n_steps)
    if "torchsim" not in args.skip:
        print("MD engines: ours vs TorchSim ...", flush=True)
        for replicas, n_steps in ((1, 20), (4, 5)) if args.quick else ((1, 300), (16, 100), (64, 30)):
            rows += torchsim_rows(fp, ds, replicas, n_steps)
    add_ratios(rows)

    headers = ["workload", "row", "ms median", "ms min", "CPU ms", "per s", "unit", "x eager", "x eager CPU",
               "x peer", "x peer CPU", "x ours", "x ours CPU"]  # fmt: skip
    table = [[r["workload"], r["row"], r["ms_median"], r["ms_min"], r["cpu_ms_median"], r["per_s"], r["unit"],
              r.get("speedup_vs_eager", ""), r.get("cpu_speedup_vs_eager", ""), r.get("speedup_vs_peer", ""),
              r.get("cpu_speedup_vs_peer", ""), r.get("speedup_vs_ours", ""),
              r.get("cpu_speedup_vs_ours", "")] for r in rows]  # fmt: skip
    print(_report.format_table(table, headers, floatfmt=".3g"))
    argv_list = sys.argv[1:] if argv is None else list(argv)
    result = {
        "command": " ".join(shlex.quote(a) for a in ["python", "benchmarks/model_speed.py", *argv_list]),
        "note": NOTE,
        "threads": args.threads,
        "quick": bool(args.quick),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "dtype": str(dtype).replace("torch.", ""),
        "model": "small untrained (quick)" if args.quick else args.model,
        "gaq_model": None if args.quick else args.gaq_model,
        "model_parameters": int(sum(p.numel() for p in fp.parameters())),
        "peer": None if peer is None else f"so3krates-torch {peer['version']} ({peer['parameters']} params)",
        "compile_seconds": compile_s,
        "rows": rows,
    }
    if args.out:
        _report.write_json(args.out, result)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
