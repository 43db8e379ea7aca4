"""Benchmark: exact nearest-codeword lookup (spherequant.lookup) against named baselines, same run.

For Fibonacci codebooks of n in {64, 1024, 16384, 262144} codewords, queries/s of

* ``cKDTree``      -- scipy ``cKDTree.query(k=1)`` on unit queries (the anchor; exact by chord, float64);
* ``brute_numpy``  -- ``argmax(x @ P.T)`` in chunks; ``brute_torch`` -- the same with torch.matmul;
* ``index_numpy``, ``index_numba``, ``index_torch`` -- :class:`spherequant.lookup.NearestIndex`
  with its candidate table (``method="table"``; cube-map candidate lists; numba only when installed);
  ``index_numba_f32`` -- the compiled table kernel on the same queries in float32 (exact in float32, no
  float64 re-check); ``index_scan`` / ``index_scan_f32`` -- the table-free compiled scan
  (``method="scan"``: certified 3 x 3 cell blocks, ``spherequant._capscan``);
* ``fib_inverse``  -- :func:`spherequant.lookup.fibonacci_nearest` (lattice inverse + certified walk);
* ``healpy_vec2pix`` -- HEALPix pixel containing the query at ``nside = round(sqrt(n / 12))`` (not the
  nearest centre; a speed reference only).

``build_query``: CPU seconds of building a fresh structure and answering the first 100 000 queries --
``cKDTree(p).query`` against ``NearestIndex(p).query`` with the defaults (``index_default``: what a user
gets; on CPython with numba that is the scan until the queries answered reach ``TABLE_AFTER`` per
codeword, then the table), and with each method forced (``index_table``: build the table, then query it;
``index_scan``) -- and their ratios. They are called alternately (``2 * repeat + 1`` times each) and the
medians compared, so a change in the machine's load affects all alike; ``index_build_s`` is the median
CPU time of the table construction alone.

Throughput is reported from process CPU time (single thread; robust to other load on a shared machine)
and from wall time; ``ratio`` is the CPU-time rate divided by cKDTree's. Every exact method's indices are
checked against brute force on the first queries. With ``--device cuda`` the torch index also runs on
the GPU: vectors/s and the fraction of the measured device-to-device copy bandwidth at 16 bytes per query
(12 bytes float32 in, 4 bytes index out).

Run ``python benchmarks/lookup.py [--quick] [--sizes N ...] [--queries N] [--device cuda] [--out path.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from scipy.spatial import cKDTree

from spherequant import codebook as cbm
from spherequant._report import atomic_write_text
from spherequant.lookup import NearestIndex, _numba_kernel, brute_force_nearest, fibonacci_nearest

torch.set_num_threads(1)

#: Queries of the build + query measurement.
BUILD_QUERIES = 100_000


def _rate(fn, n_queries: int, repeat: int) -> tuple[float, float]:
    """Best (CPU-time rate, wall rate) in queries/s over ``repeat`` runs."""
    best_cpu, best_wall = 0.0, 0.0
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        best_cpu = max(best_cpu, n_queries / max(cpu, 1e-9))
        best_wall = max(best_wall, n_queries / max(wall, 1e-9))
    return best_cpu, best_wall


def _brute_numpy(p, x):
    out = np.empty(x.shape[0], dtype=np.int64)
    step = max(1, (1 << 23) // p.shape[0])
    for s in range(0, x.shape[0], step):
        out[s : s + step] = np.argmax(x[s : s + step] @ p.T, axis=1)
    return out


def _brute_torch(p, x):
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    step = max(1, (1 << 23) // p.shape[0])
    for s in range(0, x.shape[0], step):
        out[s : s + step] = torch.argmax(x[s : s + step] @ p.T, dim=1)
    return out


def _alternate(fns: dict, rounds: int) -> dict:
    """Median (CPU seconds, wall seconds) of each callable, the callables called in turn ``rounds`` times;
    each round in a new (seeded) order, so none always runs right after the same neighbour (what ran before
    affects the caches and the allocator)."""
    times: dict = {name: ([], []) for name in fns}
    order = np.random.default_rng(0)
    for _ in range(rounds):
        for name in order.permutation(list(fns)):
            fn = fns[name]
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name][0].append(time.process_time() - c0)
            times[name][1].append(time.perf_counter() - t0)
    return {name: (float(np.median(cpu)), float(np.median(wall))) for name, (cpu, wall) in times.items()}


def _build_seconds(p, rounds: int) -> float:
    """Median CPU seconds of constructing the float64 candidate table of a fresh index."""
    NearestIndex(p).table("float64")  # compile or load the compiled construction outside the timing
    out = []
    for _ in range(rounds):
        c0 = time.process_time()
        NearestIndex(p).table("float64")
        out.append(time.process_time() - c0)
    return float(np.median(out))


def _bench_size(n: int, x, u, n_queries: int, repeat: int) -> dict:
    have_numba = _numba_kernel() is not None
    p = np.asarray(cbm.fibonacci(n).points)
    build_s = _build_seconds(p, 2 * repeat + 1)
    index = NearestIndex(p)
    index.table("float64")
    tree = cKDTree(p)
    ref = brute_force_nearest(p, x[:2000])
    nb = max(2000, min(n_queries, int(2e8 // n)))  # brute force: fewer queries for large n
    xt = torch.from_numpy(x)
    pt = torch.tensor(p)
    methods = {
        "cKDTree": (lambda: tree.query(u, k=1)[1], n_queries),
        "brute_numpy": (lambda: _brute_numpy(p, x[:nb]), nb),
        "brute_torch": (lambda: _brute_torch(pt, xt[:nb]), nb),
        "index_numpy": (lambda: index.query(x, backend="numpy", method="table"), n_queries),
        "index_torch": (lambda: index.query(xt), n_queries),
        "fib_inverse": (lambda: fibonacci_nearest(x, n), n_queries),
    }
    x32 = x.astype(np.float32)
    if have_numba:
        for xx in (x, x32):  # compile outside the timing
            for method in ("table", "scan"):
                index.query(xx[:10], backend="numba", method=method)
        methods["index_numba"] = (lambda: index.query(x, backend="numba", method="table"), n_queries)
        methods["index_numba_f32"] = (lambda: index.query(x32, backend="numba", method="table"), n_queries)
        methods["index_scan"] = (lambda: index.query(x, method="scan"), n_queries)
        methods["index_scan_f32"] = (lambda: index.query(x32, method="scan"), n_queries)
    try:
        import healpy

        nside = max(1, round((n / 12) ** 0.5))
        methods["healpy_vec2pix"] = (lambda: healpy.vec2pix(nside, x[:, 0], x[:, 1], x[:, 2]), n_queries)
    except ImportError:
        pass
    checks = {
        "index_numpy": lambda: index.query(x[:2000], backend="numpy"),
        "index_torch": lambda: index.query(xt[:2000]).numpy(),
        "fib_inverse": lambda: fibonacci_nearest(x[:2000], n),
        "index_numba": lambda: index.query(x[:2000], backend="numba", method="table"),
        "index_numba_f32": lambda: index.query(x32[:2000], backend="numba", method="table"),
        "index_scan": lambda: index.query(x[:2000], method="scan"),
        "index_scan_f32": lambda: index.query(x32[:2000], method="scan"),
    }
    ref32 = brute_force_nearest(p, x32[:2000])
    refs = {"index_numba_f32": ref32, "index_scan_f32": ref32}
    row = {"n": n, "index_build_s": round(build_s, 5), **index.stats()}
    for name, (fn, nq) in methods.items():
        if name in checks:
            got = checks[name]()
            if not np.array_equal(got, refs.get(name, ref)):
                raise RuntimeError(f"{name} disagrees with brute force for n={n}")
        cpu, wall = _rate(fn, nq, repeat)
        row[name] = {"cpu_qps": cpu, "wall_qps": wall}
    base = row["cKDTree"]["cpu_qps"]
    for name in methods:
        row[name]["ratio_vs_cKDTree"] = row[name]["cpu_qps"] / base
    if have_numba:
        # rent-or-buy: queries per codeword after which building the table costs less than scanning on
        # (compare with spherequant.lookup.TABLE_AFTER)
        saved = 1.0 / row["index_scan"]["cpu_qps"] - 1.0 / row["index_numba"]["cpu_qps"]
        row["table_pays_after_per_codeword"] = build_s / saved / n if saved > 0 else None
    # build + query: a fresh structure answering BUILD_QUERIES queries (what a one-off call costs)
    nbq = min(BUILD_QUERIES, n_queries)
    xb, ub = x[:nbq], u[:nbq]
    bq = {
        "cKDTree": lambda: cKDTree(p).query(ub, k=1)[1],
        "index_default": lambda: NearestIndex(p).query(xb),  # the defaults: what a user gets
    }
    if have_numba:
        bq["index_table"] = lambda: NearestIndex(p).query(xb, method="table")
        bq["index_scan"] = lambda: NearestIndex(p).query(xb, method="scan")
    for name, fn in bq.items():
        if not np.array_equal(fn(), bq["cKDTree"]()):
            raise RuntimeError(f"build+query: {name} and cKDTree disagree for n={n}")
    row["build_query"] = {"queries": nbq}
    for name, (cpu, wall) in _alternate(bq, 4 * repeat + 1).items():
        row["build_query"][name] = {"cpu_s": cpu, "wall_s": wall}
    b = row["build_query"]
    for name in bq:
        b[name]["ratio_vs_cKDTree"] = b["cKDTree"]["cpu_s"] / b[name]["cpu_s"]
    print(
        f"n={n:>7}  grid={index.grid}  mean/max candidates {row['mean_candidates']:.2f}/"
        f"{row['max_candidates']}  build {build_s * 1e3:.2f} ms cpu  table pays after "
        f"{row.get('table_pays_after_per_codeword') or float('nan'):.1f} queries per codeword",
        flush=True,
    )
    for name in methods:
        r = row[name]
        print(
            f"    {name:<15} {r['cpu_qps'] / 1e6:8.2f} M/s cpu  {r['wall_qps'] / 1e6:8.2f} M/s wall"
            f"   x{r['ratio_vs_cKDTree']:.2f} vs cKDTree",
            flush=True,
        )
    for name in bq:
        if name != "cKDTree":
            print(
                f"    build + {nbq} queries: {name:<13} {b[name]['cpu_s'] * 1e3:6.2f} ms cpu (cKDTree "
                f"{b['cKDTree']['cpu_s'] * 1e3:.1f} ms)   x{b[name]['ratio_vs_cKDTree']:.2f} vs cKDTree",
                flush=True,
            )
    return row


def bench_cpu(sizes, n_queries: int, repeat: int):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n_queries, 3))
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    rows = []
    for n in sizes:
        rows.append(_bench_size(n, x, u, n_queries, repeat))
    return rows


def bench_cuda(sizes, n_queries: int, repeat: int):
    dev = torch.device("cuda")
    # reference bandwidth: device-to-device copy of a large buffer (read + write)
    buf = torch.empty(1 << 28, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(buf)
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(buf)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    copy_bw = 2 * buf.numel() / best
    del buf, dst
    rows = []
    x = torch.randn(n_queries, 3, device=dev, dtype=torch.float32)
    for n in sizes:
        p = np.asarray(cbm.fibonacci(n).points)
        index = NearestIndex(p)
        got = index.query(x[:100000]).cpu().numpy()
        ref = brute_force_nearest(p, x[:100000].cpu().numpy())
        if not np.array_equal(got, ref):
            raise RuntimeError(f"cuda index disagrees with brute force for n={n}")
        index.query(x)
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            index.query(x)
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        qps = n_queries / best
        rows.append(
            {"n": n, "qps": qps, "bytes_per_query": 16, "fraction_of_copy_bandwidth": 16 * qps / copy_bw}
        )
        print(
            f"cuda n={n:>7}: {qps / 1e9:.3f} G vectors/s, {16 * qps / 1e9:.1f} GB/s = "
            f"{16 * qps / copy_bw:.1%} of copy bandwidth ({copy_bw / 1e9:.0f} GB/s)",
            flush=True,
        )
    return {"copy_bandwidth_Bps": copy_bw, "rows": rows, "device": torch.cuda.get_device_name()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer queries and sizes (smoke test)")
    ap.add_argument("--queries", type=int, default=1_000_000)
    ap.add_argument("--sizes", type=int, nargs="+", help="codebook sizes (default 64 1024 16384 262144)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "lookup.json")
    args = ap.parse_args(argv)
    sizes = args.sizes or ([64, 1024] if args.quick else [64, 1024, 16384, 262144])
    nq = 20000 if args.quick else args.queries
    result = {
        "machine": platform.platform(),
        "processor": platform.processor(),
        "torch": torch.__version__,
        "numba": _numba_kernel() is not None,
        "queries": nq,
        "cpu": bench_cpu(sizes, nq, args.repeat),
    }
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda requested but CUDA is not available")
        result["cuda"] = bench_cuda(sizes, 10 * nq if not args.quick else nq, args.repeat)
    for row in result["cpu"]:
        if "index_numba" in row:
            print(
                f"n={row['n']}: query alone x{row['index_numba']['ratio_vs_cKDTree']:.1f} (float64), "
                f"build + query x{row['build_query']['index_default']['ratio_vs_cKDTree']:.2f} vs cKDTree"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
