"""Latency breakdown of So3krates inference: FP32, bf16 and W4A8 (integer GAQ model), same run.

For a batch of synthetic azobenzene-sized molecules (24 atoms: 12 C, 10 H, 2 N, random geometry with
interatomic distances >= 1 Angstrom; the energy is not physical, only the shapes matter) the script times the
energy forward pass (no forces: the integer path has no gradient) of

* ``fp32``  -- the float So3krates (paper's GAQ architecture: degrees (1,), cosine attention);
* ``bf16``  -- the same model cast to bfloat16 (weights, activations and positions);
* ``w4a8``  -- :func:`spherequant.models.deploy.convert_to_integer` of its GAQ conversion (W4 equivariant /
  W8 invariant weights stored packed, int8 activations with int8 x int8 -> int32 GEMMs where the input is a
  quantized activation, MDDQ codes for chi).

at batch 1 and at a large batch (default 1024 molecules, memory-bound on a GPU). Two measurements per case:
``total_ms`` is the median of clean runs (no instrumentation); the breakdown comes from an instrumented run
with nested timed sections (exclusive times): ``weights`` (weight unpacking / dequantization, embedding
gather), ``gemm`` (linear layers: float GEMMs or integer GEMM + rescale), ``quant`` (activation quantize /
MDDQ encode + table decode), ``attention`` (attention and message passing outside the linear layers),
``other`` (radial basis, spherical harmonics, readout glue). On CUDA the sections use CUDA events; on CPU
``time.perf_counter`` (labelled CPU: *not comparable* with the paper's GPU figures). Neighbour lists are
built once outside the timed region.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/latency.py --quick            # CPU smoke run (batch 1 and 16)
    python benchmarks/latency.py --device cuda --batch 1024 --json benchmarks/results/latency.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from spherequant.models import deploy, gaq
from spherequant.models.neighbors import radius_graph
from spherequant.models.so3krates import FeatureBlock, GeometricBlock, So3krates
from torch import nn

from spherequant._report import format_table, write_json

__all__ = ["main"]

SECTIONS = ("weights", "gemm", "quant", "attention", "other")
AZOBENZENE_Z = [6] * 12 + [7] * 2 + [1] * 10


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
        return time.perf_counter()

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


def _instrument(net: nn.Module, timer: SectionTimer) -> list:
    """Hooks: plain linear layers -> gemm, attention blocks -> attention, the whole net -> total."""
    handles = []

    def add(mod, name):
        handles.append(mod.register_forward_pre_hook(lambda *_: timer.open(name)))
        handles.append(mod.register_forward_hook(lambda *_: timer.close()))

    for mod in net.modules():
        if type(mod) is nn.Linear:
            add(mod, "gemm")
        elif isinstance(mod, (FeatureBlock, GeometricBlock)):
            add(mod, "attention")
        elif isinstance(mod, gaq.ActivationQuantizer):
            add(mod, "quant")
    return handles


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
    cfg = gaq.GAQConfig(codebook_size=4096, force_mode="ste")
    gaq.quantize_(q, cfg, step="prepare")
    calib = [make_batch(2, "cpu", seed=10 + s) for s in range(3)]
    gaq.calibrate_(q, [{"z": b["z"], "pos": b["pos"], "batch": b["batch"], "num_graphs": 2} for b in calib])
    gaq.quantize_(q, cfg, step="convert")
    w4a8 = deploy.convert_to_integer(q)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)  # weights and activations in bf16 (positions too)
    return {"fp32": fp32.to(device), "bf16": bf16.to(device), "w4a8": w4a8.to(device)}


# ----------------------------------------------------------------------------------------------------------
# measurement
# ----------------------------------------------------------------------------------------------------------
def _runner(variant, models, b):
    kw = dict(edge_index=b["edge_index"], num_graphs=b["num_graphs"])
    net = models[variant]
    pos = b["pos"].to(torch.bfloat16) if variant == "bf16" else b["pos"]

    def run():
        with torch.no_grad():
            if variant == "w4a8":
                return net.integer_energy(b["z"], pos, b["batch"], **kw)
            return net(b["z"], pos, b["batch"], compute_forces=False, **kw)["energy"]

    return run


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(variant, models, b, device, repeats: int, warmup: int) -> dict:
    run = _runner(variant, models, b)
    for _ in range(warmup):
        run()
    _sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            run()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e))
        else:
            t0 = time.perf_counter()
            run()
            times.append(1e3 * (time.perf_counter() - t0))
    # instrumented run for the breakdown
    net = models[variant].net if variant == "w4a8" else models[variant]
    timer = SectionTimer(device)
    handles = _instrument(net, timer)
    deploy._SECTION = timer.section
    try:
        _sync(device)
        timer.open("other")
        run()
        timer.close()
        breakdown = timer.exclusive_ms()
    finally:
        deploy._SECTION = None
        for h in handles:
            h.remove()
    instrumented_total = sum(breakdown.values())
    return {
        "total_ms": statistics.median(times),
        "total_ms_min": min(times),
        "instrumented_total_ms": instrumented_total,
        "breakdown_ms": {k: breakdown.get(k, 0.0) for k in SECTIONS},
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run: batches 1 and 16, 3 repeats")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=1024, help="large (memory-bound) batch in molecules")
    ap.add_argument("--features", type=int, default=132)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device(args.device)
    batches = [1, 16] if args.quick else [1, args.batch]
    repeats, warmup = (3, 1) if args.quick else (args.repeats, 3)
    models = build_models(args, device)
    label = (f"CUDA ({torch.cuda.get_device_name(device)}), CUDA events" if device.type == "cuda"
             else f"CPU ({platform.processor() or platform.machine()}, 1 thread), time.perf_counter -- "
                  "not comparable with GPU figures")  # fmt: skip
    results = {"device": label, "features": args.features, "layers": args.layers,
               "atoms_per_molecule": len(AZOBENZENE_Z), "cases": []}  # fmt: skip
    rows = []
    for n_mol in batches:
        b = make_batch(n_mol, device)
        per = {v: measure(v, models, b, device, repeats, warmup) for v in ("fp32", "bf16", "w4a8")}
        for v, r in per.items():
            r["speedup_vs_fp32"] = per["fp32"]["total_ms"] / r["total_ms"]
            r["speedup_vs_bf16"] = per["bf16"]["total_ms"] / r["total_ms"]
            n_edges = int(b["edge_index"].shape[1])
            results["cases"].append({"batch": n_mol, "edges": n_edges, "variant": v, **r})
            bd = r["breakdown_ms"]
            rows.append([n_mol, v, r["total_ms"], *(bd[k] for k in SECTIONS), r["speedup_vs_fp32"],
                         r["speedup_vs_bf16"]])  # fmt: skip
    headers = ["batch", "model", "total ms", *(f"{k} ms" for k in SECTIONS), "x fp32", "x bf16"]
    print(f"# latency breakdown ({label})")
    print(f"# So3krates F={args.features}, {args.layers} layers, degrees (1,), 24-atom synthetic molecules; "
          "energy only; breakdown from one instrumented run, total = median of clean runs")  # fmt: skip
    print(format_table(rows, headers, floatfmt=".3g"))
    rep = deploy.memory_report(models["w4a8"], n_atoms=len(AZOBENZENE_Z) * batches[-1])
    print()
    print(deploy.format_memory_table(rep))
    results["memory"] = rep
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
