"""Benchmark: exact covering radius and exact nearest-codeword search of spherequant.codebook.

Named baselines, timed in the same run:

* covering radius -- ``scipy.spatial.SphericalVoronoi`` (qhull hull + circumcentres) followed by the
  nearest-codeword distance of every Voronoi vertex: the textbook method, correct only for point sets not
  contained in a hemisphere. ``Codebook.covering_radius`` is exact for every point set; from 20 000 points
  on (with numba) it needs no global hull: the deepest circumcentre of candidate triples per cell of the
  nearest-codeword index (``spherequant.codebook._index_covering``). Rows include building the codebook
  (duplicate check, KD-tree) and the index; ``speedup`` is the baseline's CPU time over ours.
* nearest -- ``scipy.spatial.cKDTree`` build + ``query(k=1)`` on unit vectors (exact nearest by chord, no
  tie rule, float64 only). ``Codebook.nearest`` additionally guarantees the lowest-index tie rule of
  ``spherequant.lookup.brute_force_nearest`` in the query's dtype.

Run ``python benchmarks/covering_radius.py [--quick] [--out path.json]``; prints a table (ratio = ours /
baseline time; wall clock and process CPU time, the latter robust to other load on the machine) and
writes JSON (default ``benchmarks/results/covering_radius.json``). Single-threaded.
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
from scipy.spatial import SphericalVoronoi, cKDTree

from spherequant import codebook as cbm
from spherequant._report import atomic_write_text
from spherequant.bounds import fejes_toth_covering_radius

torch.set_num_threads(1)


def _timed(fn, repeat: int):
    """Best-of-``repeat`` wall time and result; the CPU time of the best run is left in ``_timed.cpu``."""
    best, out, cpu = float("inf"), None, 0.0
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, c = time.perf_counter() - t0, time.process_time() - c0
        if wall < best:
            best, cpu = wall, c
    _timed.cpu = cpu
    return best, out


def _baseline_covering(points: np.ndarray) -> float:
    sv = SphericalVoronoi(points)
    idx = cKDTree(points).query(sv.vertices, k=1)[1]
    c = points[idx]
    v = sv.vertices / np.linalg.norm(sv.vertices, axis=1, keepdims=True)
    return float(np.arctan2(np.linalg.norm(np.cross(v, c), axis=1), np.sum(v * c, axis=1)).max())


def bench_covering(sizes, repeat):
    rows = []
    for n in sizes:
        pts = cbm.fibonacci(n).points
        rep = repeat if n <= 10**4 else 1

        def ours(pts=pts):
            return cbm.Codebook(pts).covering_radius()  # fresh codebook: nothing cached

        t_ours, delta = _timed(ours, rep)
        c_ours = _timed.cpu
        t_base, delta_base = _timed(lambda pts=pts: _baseline_covering(pts), rep)
        c_base = _timed.cpu
        rows.append(
            {
                "n": n,
                "ours_s": t_ours,
                "baseline_s": t_base,
                "ratio": t_ours / t_base,
                "ours_cpu_s": c_ours,
                "baseline_cpu_s": c_base,
                "cpu_ratio": c_ours / c_base,
                "speedup_vs_SphericalVoronoi": c_base / c_ours,
                "delta_deg": float(np.degrees(delta)),
                "baseline_delta_deg": float(np.degrees(delta_base)),
                "abs_diff_rad": abs(delta - delta_base),
            }
        )
        print(
            f"covering  fibonacci({n:>8}) ours {t_ours:8.3f} s (cpu {c_ours:7.3f})  SphericalVoronoi "
            f"{t_base:8.3f} s (cpu {c_base:7.3f})  ratio {t_ours / t_base:5.2f} "
            f"(cpu {c_ours / c_base:5.2f}; {c_base / c_ours:.2f}x faster)  "
            f"delta {np.degrees(delta):.6f} deg  "
            f"|diff| {abs(delta - delta_base):.1e}",
            flush=True,
        )
    return rows


def bench_nearest(ks, n_queries, repeat):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n_queries, 3))
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    x32 = x.astype(np.float32)
    rows = []
    for k in ks:
        t_build, cb = _timed(lambda k=k: cbm.fibonacci(k), 1)
        t_ours, idx = _timed(lambda cb=cb: cb.nearest(x), repeat)
        c_ours = _timed.cpu
        t_ours32 = _timed(lambda cb=cb: cb.nearest(x32), repeat)[0]

        def base(cb=cb):
            return cKDTree(cb.points).query(u, k=1)[1]

        t_base, idx_base = _timed(base, repeat)
        c_base = _timed.cpu
        agree = float(np.mean(idx == idx_base))
        rows.append(
            {
                "K": k,
                "queries": n_queries,
                "ours_s": t_ours,
                "ours_float32_s": t_ours32,
                "codebook_build_s": t_build,
                "baseline_s": t_base,
                "ratio": t_ours / t_base,
                "ratio_float32": t_ours32 / t_base,
                "ours_cpu_s": c_ours,
                "baseline_cpu_s": c_base,
                "cpu_ratio": c_ours / c_base,
                "agreement_with_baseline": agree,
            }
        )
        print(
            f"nearest   K={k:>6} {n_queries:.0e} queries  ours {t_ours:7.3f} s (float32 {t_ours32:7.3f} s)  "
            f"cKDTree build+query {t_base:7.3f} s  ratio {t_ours / t_base:5.2f} "
            f"(cpu {c_ours:.3f} / {c_base:.3f} = {c_ours / c_base:5.2f})  agree {agree:.6f}",
            flush=True,
        )
    return rows


def quality():
    rows = []
    books = [cbm.fibonacci(n) for n in (100, 1000, 10000)]
    books += [cbm.icosahedral(k) for k in range(5)]
    books += [cbm.healpix(k) for k in (1, 2, 8)]
    for cb in books:
        label = f"{cb.kind}({cb.name or cb.size})".replace("level=", "").replace("nside=", "")
        rows.append(
            {
                "codebook": label,
                "K": cb.size,
                "covering_radius_deg": cb.covering_radius(degrees=True),
                "fejes_toth_deg": fejes_toth_covering_radius(cb.size, degrees=True),
                "fejes_toth_ratio": cb.fejes_toth_ratio(),
            }
        )
        r = rows[-1]
        print(
            f"quality   {label:<18} K={cb.size:>6}  delta {r['covering_radius_deg']:9.4f} deg  "
            f"Fejes Toth {r['fejes_toth_deg']:9.4f} deg  ratio {r['fejes_toth_ratio']:.4f}",
            flush=True,
        )
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    ap.add_argument("--out", default="benchmarks/results/covering_radius.json", help="JSON output path")
    ap.add_argument("--repeat", type=int, default=3, help="best-of repeats for the small sizes")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    if args.quick:
        sizes, ks, nq = [10**3, 10**4], [10**3], 10**5
    else:
        sizes, ks, nq = [10**3, 10**4, 10**5, 10**6], [10**3, 10**4], 10**6
    result = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "threads": 1},
        "quick": args.quick,
        "covering_radius": bench_covering(sizes, args.repeat),
        "nearest": bench_nearest(ks, nq, args.repeat),
        "quality": quality(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
