"""Inference latency of So3krates: FP32, bf16 and the integer GAQ W4A8 model, side by side in one process.

For a batch of synthetic azobenzene-sized molecules (24 atoms: 12 C, 10 H, 2 N, random geometry with
interatomic distances >= 1 Angstrom; the energy is not physical, only the shapes matter) the script times
the energy (no forces: the integer path has no gradient) of

* ``fp32``        -- the float So3krates (the paper's GAQ architecture: degrees (1,), cosine attention),
  through ``So3krates.forward`` as users call it (its fast path, :mod:`spherequant.models.fast`, when on);
* ``fp32_eager``  -- the same through the eager reference (``fast_path(False)``);
* ``bf16`` / ``bf16_eager`` -- the same model cast to bfloat16 (weights, activations and positions);
* ``w4a8``        -- :func:`spherequant.models.deploy.convert_to_integer` of its GAQ conversion (W4
  equivariant / W8 invariant weights stored packed, int8 activations, ``int8 x int8 -> int32`` GEMMs where
  the input is a quantized activation, MDDQ codes for chi) through the fused integer forward;
* ``w4a8_module`` -- the same integer model module by module (the fused forward's reference).

and, with ``--forces-batches``, energy + forces (``*_ef`` rows: FP32 and bf16 by autograd; W4A8 the integer
energy plus the straight-through forces of its dequantized network, gaq's ``"ste"`` mode).

Timing: the variants run interleaved (each repeat runs every variant once, in a rotated order) after warm-up;
``total_ms`` is the median wall time over repeats and ``ratio_vs`` the median over repeats of the per-repeat
wall-time ratio (ratios measured side by side are robust to a machine whose load changes during the run);
``cpu_ms`` / ``cpu_ratio_vs`` the same for the CPU time of the (single) computing thread, which on a machine
shared with other jobs excludes the time the thread waits for a core. One instrumented
run of ``w4a8`` gives the breakdown into nested timed sections (exclusive times: ``weights`` embedding
gather, ``gemm`` linear layers (integer GEMM + rescale or float GEMM), ``quant`` activation quantization and
MDDQ encode/decode, ``attention`` edge filters, attention and message passing, ``other`` geometry and
readout glue) and one profiled run the operators that take the most time. On CPU the sections use
the thread's CPU time (labelled CPU: *not comparable* with GPU figures); on CUDA, CUDA events. Neighbour lists
are built once outside the timed region.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/latency.py --quick            # CPU smoke run (batch 1 and 16)
    OMP_NUM_THREADS=1 python benchmarks/latency.py --json benchmarks/results/latency_cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from spherequant.models import deploy, fast, gaq
from spherequant.models.neighbors import radius_graph
from spherequant.models.so3krates import So3krates

from spherequant._report import format_table, write_json

__all__ = ["main"]

SECTIONS = ("weights", "gemm", "quant", "attention", "other")
AZOBENZENE_Z = [6] * 12 + [7] * 2 + [1] * 10
ENERGY_VARIANTS = ("fp32", "fp32_eager", "bf16", "bf16_eager", "w4a8", "w4a8_module")
FORCE_VARIANTS = ("fp32_ef", "bf16_ef", "w4a8_ef")
# ratios reported per variant: (numerator, denominator)
RATIOS = {
    "w4a8": ("fp32", "fp32_eager", "bf16", "bf16_eager", "w4a8_module"),
    "w4a8_ef": ("fp32_ef", "bf16_ef"),
}
GOALS = {"w4a8 / bf16 at the large batch": 0.8, "w4a8 / fp32 at batch 1": 1.0}


# ----------------------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------------------
class SectionTimer:
    """Nested timed sections; exclusive time per name. CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.records: list[list] = []  # [name, start, end, parent]
        self.stack: list[int] = []

    def _now(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.thread_time()  # CPU time of the computing thread: robust on a shared machine

    def open(self, name: str) -> None:
        parent = self.stack[-1] if self.stack else -1
        self.records.append([name, self._now(), None, parent])
        self.stack.append(len(self.records) - 1)

    def close(self) -> None:
        self.records[self.stack.pop()][2] = self._now()

    @contextlib.contextmanager
    def section(self, name: str):
        self.open(name)
        try:
            yield
        finally:
            self.close()

    def exclusive_ms(self) -> dict:
        if self.cuda:
            torch.cuda.synchronize()
            dur = [s.elapsed_time(e) for _, s, e, _ in self.records]
        else:
            dur = [1e3 * (e - s) for _, s, e, _ in self.records]
        excl = list(dur)
        for k, (_, _, _, parent) in enumerate(self.records):
            if parent >= 0:
                excl[parent] -= dur[k]
        out: dict = {}
        for (name, *_), t in zip(self.records, excl):
            out[name] = out.get(name, 0.0) + t
        return out


# ----------------------------------------------------------------------------------------------------------
# data and models
# ----------------------------------------------------------------------------------------------------------
def synthetic_molecule(seed: int) -> torch.Tensor:
    """24 positions (Angstrom) in a 9 x 5 x 3 box with all distances >= 1 Angstrom (rejection sampling)."""
    g = torch.Generator().manual_seed(seed)
    box = torch.tensor([9.0, 5.0, 3.0], dtype=torch.float64)
    pts: list[torch.Tensor] = []
    while len(pts) < len(AZOBENZENE_Z):
        p = torch.rand(3, generator=g, dtype=torch.float64) * box
        if all(float((p - q).norm()) >= 1.0 for q in pts):
            pts.append(p)
    return torch.stack(pts)


def make_batch(n_mol: int, device, seed: int = 0):
    base = synthetic_molecule(seed)
    g = torch.Generator().manual_seed(seed + 1)
    pos = torch.cat([base + 0.05 * torch.randn(base.shape, generator=g, dtype=torch.float64)
                     for k in range(n_mol)])  # fmt: skip
    z = torch.tensor(AZOBENZENE_Z * n_mol)
    batch = torch.arange(n_mol).repeat_interleave(len(AZOBENZENE_Z))
    pos32 = pos.float()  # molecules overlap in space; the batch-aware neighbour list keeps them apart
    edge_index = radius_graph(pos32, 5.0, batch if n_mol > 1 else None)
    return {
        "z": z.to(device),
        "pos": pos32.to(device),
        "batch": batch.to(device),
        "edge_index": edge_index.to(device),
        "num_graphs": n_mol,
    }


def build_models(args, device):
    torch.manual_seed(0)
    kw = dict(num_features=args.features, num_layers=args.layers, num_heads=4, degrees=(1,), num_rbf=32,
              max_z=10, attention="cosine")  # fmt: skip
    fp32 = So3krates(**kw).float().eval()
    q = So3krates(**kw).float()
    q.load_state_dict(fp32.state_dict())
    cfg = gaq.QuantizationSpec.from_options("gaq", codebook_size=4096, force_mode="ste")
    gaq.quantize_(q, cfg, step="prepare")
    calib = [make_batch(2, "cpu", seed=10 + s) for s in range(3)]
    gaq.calibrate_(q, [{"z": b["z"], "pos": b["pos"], "batch": b["batch"], "num_graphs": 2} for b in calib])
    gaq.quantize_(q, cfg, step="convert")
    w4a8 = deploy.convert_to_integer(q)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)  # weights and activations in bf16 (positions too)
    for m in (fp32, bf16):
        m.validate_inputs = False  # no per-call input checks (device syncs) in the timed region
    w4a8.net.validate_inputs = False
    return {"fp32": fp32.to(device), "bf16": bf16.to(device), "w4a8": w4a8.to(device)}


# ----------------------------------------------------------------------------------------------------------
# measurement
# ----------------------------------------------------------------------------------------------------------
def _runner(variant, models, b):
    kw = dict(edge_index=b["edge_index"], num_graphs=b["num_graphs"])
    z, batch = b["z"], b["batch"]
    base = variant.removesuffix("_ef").removesuffix("_eager").removesuffix("_module")
    forces = variant.endswith("_ef")
    eager = variant.endswith("_eager")
    net = models[base]
    pos = b["pos"].to(torch.bfloat16) if base == "bf16" else b["pos"]

    def run():
        if base == "w4a8":
            if forces:
                return net(z, pos, batch, compute_forces=True, **kw)["forces"]
            with torch.no_grad():
                return net.integer_energy(z, pos, batch, fused=not variant.endswith("_module"), **kw)
        if forces:
            return net(z, pos, batch, compute_forces=True, **kw)["forces"]
        with torch.no_grad(), fast.fast_path(not eager):
            return net(z, pos, batch, compute_forces=False, **kw)["energy"]

    return run


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_once(run, device) -> tuple[float, float]:
    """(wall ms, CPU ms of this thread); on CUDA both are the CUDA-event time."""
    if device.type == "cuda":
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        run()
        e.record()
        torch.cuda.synchronize()
        return s.elapsed_time(e), s.elapsed_time(e)
    t0, c0 = time.perf_counter(), time.thread_time()
    run()
    return 1e3 * (time.perf_counter() - t0), 1e3 * (time.thread_time() - c0)


def measure_interleaved(variants, models, b, device, repeats: int, warmup: int):
    """Per-variant wall and CPU times (ms) of ``repeats`` interleaved rounds (order rotated every round)."""
    runs = {v: _runner(v, models, b) for v in variants}
    for _ in range(warmup):
        for run in runs.values():
            run()
    _sync(device)
    wall = {v: [] for v in variants}
    cpu = {v: [] for v in variants}
    for r in range(repeats):
        order = list(variants[r % len(variants) :]) + list(variants[: r % len(variants)])
        for v in order:
            w, c = _time_once(runs[v], device)
            wall[v].append(w)
            cpu[v].append(c)
    return wall, cpu


def breakdown(models, b, device, runs: int = 5) -> dict:
    """Exclusive section times (ms) of the fused integer forward: median over ``runs`` instrumented runs."""
    run = _runner("w4a8", models, b)
    per = []
    for _ in range(runs):
        timer = SectionTimer(device)
        deploy._SECTION = timer.section
        try:
            _sync(device)
            timer.open("other")
            run()
            timer.close()
            out = timer.exclusive_ms()
        finally:
            deploy._SECTION = None
        per.append(out)
    return {k: statistics.median(o.get(k, 0.0) for o in per) for k in SECTIONS}


def top_operators(models, b, variant="w4a8", n=8) -> list:
    """The ``n`` operators with the most self time in one profiled run: [name, calls, self ms]."""
    run = _runner(variant, models, b)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    return [[e.key, int(e.count), e.self_cpu_time_total / 1e3] for e in ev]


def cpu_facts() -> dict:
    """The CPU's model name and the instruction-set flags that decide the int8 and bf16 kernels (Linux
    ``/proc/cpuinfo``; empty elsewhere): the integer GEMM's kernel choice and bf16's speed depend on them."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    lines = text.splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), None)
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return {"model": model, "flags": [f for f in wanted if f in flags]}


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return vals


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run: batches 1 and 16, 3 repeats")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batches", type=_int_list, default=[1, 128], help="batch sizes in molecules")
    ap.add_argument("--forces-batches", type=_int_list, default=[1], help="also time energy + forces here")
    ap.add_argument("--features", type=int, default=132)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.features < 4 or args.layers < 0:
        ap.error("--repeats must be >= 1, --warmup >= 0, --features >= 4, --layers >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available")
    torch.set_num_threads(1)
    device = torch.device(args.device)
    batches = [1, 16] if args.quick else args.batches
    forces_batches = [1] if args.quick else args.forces_batches
    repeats, warmup = (3, 1) if args.quick else (args.repeats, args.warmup)
    models = build_models(args, device)
    label = (f"CUDA ({torch.cuda.get_device_name(device)}), CUDA events" if device.type == "cuda"
             else f"CPU ({platform.processor() or platform.machine()}, 1 thread), time.perf_counter -- "
                  "not comparable with GPU figures")  # fmt: skip
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    results = {
        "device": label, "cpu": cpu_facts() if device.type == "cpu" else None,
        "features": args.features, "layers": args.layers, "repeats": repeats,
        "atoms_per_molecule": len(AZOBENZENE_Z), "torch": torch.__version__,
        "int_mm_cpu": deploy.int_mm_cpu_available(),
        "int_gemm_cpu_kernel": deploy.int_gemm_cpu_kernel(), "fast_path": fast.fast_path_enabled(),
        "load_average_1min_at_start": load, "command": "python benchmarks/latency.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "cases": [],
    }  # fmt: skip
    rows = []
    for n_mol in batches:
        b = make_batch(n_mol, device)
        variants = ENERGY_VARIANTS + (FORCE_VARIANTS if n_mol in forces_batches else ())
        print(f"# batch {n_mol}: {len(variants)} variants x {repeats} interleaved repeats", flush=True)
        times, cpu = measure_interleaved(variants, models, b, device, repeats, warmup)
        n_edges = int(b["edge_index"].shape[1])
        case = {"batch": n_mol, "edges": n_edges, "variants": {}}
        for v in variants:
            entry = {"total_ms": statistics.median(times[v]), "total_ms_min": min(times[v]),
                     "times_ms": times[v], "cpu_ms": statistics.median(cpu[v]),
                     "cpu_times_ms": cpu[v]}  # fmt: skip
            entry["ratio_vs"] = {
                d: statistics.median(t / u for t, u in zip(times[v], times[d])) for d in RATIOS.get(v, ())
            }
            entry["cpu_ratio_vs"] = {
                d: statistics.median(t / u for t, u in zip(cpu[v], cpu[d])) for d in RATIOS.get(v, ())
            }
            case["variants"][v] = entry
            ratios = " ".join(f"{d} {r:.3g}" for d, r in entry["ratio_vs"].items())
            cpu_ratios = " ".join(f"{d} {r:.3g}" for d, r in entry["cpu_ratio_vs"].items())
            rows.append(
                [n_mol, v, entry["total_ms"], entry["total_ms_min"], entry["cpu_ms"], ratios, cpu_ratios]
            )
        case["w4a8_breakdown_ms"] = breakdown(models, b, device)
        case["w4a8_top_operators"] = top_operators(models, b)
        results["cases"].append(case)
    big = max(batches)
    by_batch = {c["batch"]: c for c in results["cases"]}
    results["goals"] = {}
    for name, n_mol, ref, bound in ((f"w4a8 / bf16 at batch {big} <= 0.8", big, "bf16", 0.8),
                                    ("w4a8 / fp32 at batch 1 <= 1.0", 1, "fp32", 1.0)):  # fmt: skip
        if n_mol in by_batch and (ref == "fp32" or big > 1):
            w4 = by_batch[n_mol]["variants"]["w4a8"]
            r, rc = w4["ratio_vs"][ref], w4["cpu_ratio_vs"][ref]
            results["goals"][name] = {"ratio": r, "cpu_ratio": rc, "met": r <= bound, "met_cpu": rc <= bound}
    print(f"# inference latency ({label}); load average at start {load}")
    print(f"# So3krates F={args.features}, {args.layers} layers, degrees (1,), 24-atom synthetic molecules; "
          "total = median of interleaved repeats, ratios = median of per-repeat ratios")  # fmt: skip
    headers = ["batch", "variant", "median ms", "min ms", "CPU ms", "median ratio vs", "CPU-time ratio vs"]
    print(format_table(rows, headers, floatfmt=".4g"))
    print()
    bd = [[c["batch"], *(c["w4a8_breakdown_ms"][k] for k in SECTIONS)] for c in results["cases"]]
    print(format_table(bd, ["batch", *(f"w4a8 {k} ms" for k in SECTIONS)], floatfmt=".3g"))
    for goal, g in results["goals"].items():
        print(f"goal {goal}: wall {g['ratio']:.3f} ({'met' if g['met'] else 'missed'}), "
              f"CPU time {g['cpu_ratio']:.3f} ({'met' if g['met_cpu'] else 'missed'})")  # fmt: skip
    rep = deploy.memory_report(models["w4a8"], n_atoms=len(AZOBENZENE_Z) * big)
    results["memory"] = rep
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
