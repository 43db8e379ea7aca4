"""Covering radius / Fejes Toth bound vs codebook size for every codebook family (plot + table + JSON).

Families: Fibonacci spiral, pole-corrected Fibonacci (:func:`spherequant.learn.pole_corrected_fibonacci`),
HEALPix centres (``12 nside^2``), icosahedral geodesic grids (``10 * 4^level + 2``), uniform random
(seed 0), spherical k-means of 50 uniform random directions per centre (seed 0, 30 rounds; the data-driven SVQ
codebook), and the learned minimax codebooks: the shipped table plus sizes beyond it (``--learned N ...``;
default 257 up to 10^4 and 10242, ``--quick`` 300 and 1000), optimised from scratch with the default
options (no cache) so that ``learned_seconds`` records the one-core CPU time a first call of
``learned(n)`` costs (``learned_wall_seconds`` the wall time, which a busy machine inflates).
Every ratio uses the exact ``Codebook.covering_radius``.

Run ``python benchmarks/codebook_ratios.py [--quick] [--learned 300 1000]``; writes
``benchmarks/results/codebook_ratios.{json,png}`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

from spherequant import codebook as cbm
from spherequant._report import atomic_savefig, atomic_write_text
from spherequant.bounds import fejes_toth_covering_radius
from spherequant.learn import minimax_codebook, pole_corrected_fibonacci, shipped_table, spherical_kmeans

torch.set_num_threads(1)

#: Learned sizes beyond the shipped table optimised by default (full run; --quick uses LEARNED_QUICK).
LEARNED_LARGE = (257, 300, 500, 1000, 2000, 4000, 7000, 10_000, 10_242)
LEARNED_QUICK = (300, 1000)


def _ratio(points) -> float:
    return float(cbm.Codebook(points).covering_radius() / fejes_toth_covering_radius(len(points)))


def collect(quick: bool, learned_extra) -> dict:
    sizes = sorted(
        {round(float(v)) for v in np.geomspace(12, 2000 if quick else 100_000, 10 if quick else 18)}
        | {4, 6, 12, 32, 64, 130}
    )
    out: dict[str, list] = {}
    out["fibonacci"] = [(n, _ratio(cbm.fibonacci(n).points)) for n in sizes]
    out["pole_fibonacci"] = [(n, _ratio(pole_corrected_fibonacci(n))) for n in sizes if n >= 4]
    out["random"] = [(n, _ratio(cbm.random(n, seed=0).points)) for n in sizes if n <= 20000]
    out["healpix"] = [(12 * s * s, _ratio(cbm.healpix(s).points)) for s in range(1, 9 if quick else 65)]
    out["icosahedral"] = [
        (len(cb), _ratio(cb.points)) for cb in (cbm.icosahedral(k) for k in range(5 if quick else 7))
    ]
    g = np.random.default_rng(0)
    km = []
    for n in [s for s in sizes if 4 <= s <= (130 if quick else 400)]:
        data = g.normal(size=(50 * n, 3))
        km.append((n, _ratio(spherical_kmeans(data, n, seed=0, iterations=30))))
    out["kmeans"] = km
    _, table = shipped_table()
    learned = [(n, _ratio(p)) for n, p in sorted(table.items())]
    timings, wall = {}, {}
    learned_extra = [n for n in learned_extra if n not in table]  # the table's own sizes are listed above
    for n in learned_extra:
        t0, w0 = time.process_time(), time.perf_counter()
        p = minimax_codebook(n, progress=True, cache=False)
        timings[n], wall[n] = time.process_time() - t0, time.perf_counter() - w0
        learned.append((n, _ratio(p)))
        print(f"learned n={n}: ratio {learned[-1][1]:.4f}, {timings[n]:.1f} s CPU", flush=True)
    out["learned"] = sorted(learned)
    bound = {n: float(np.degrees(fejes_toth_covering_radius(n))) for n in learned_extra}
    beyond = [
        {
            "n": n,
            "ratio": dict(learned)[n],
            "covering_radius_deg": dict(learned)[n] * bound[n],
            "fejes_toth_deg": bound[n],
            "cpu_s": timings[n],
            "wall_s": wall[n],
        }
        for n in learned_extra
    ]
    return {
        "ratios": out,
        "learned_seconds": timings,
        "learned_wall_seconds": wall,
        "learned_beyond_table": beyond,
    }


def _lookup(series, n):
    d = dict(series)
    return f"{d[n]:.4f}" if n in d else "-"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--learned", type=int, nargs="*", default=None, help="sizes beyond the table to optimise (slow)"
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "codebook_ratios.json")
    args = ap.parse_args(argv)
    extra = args.learned if args.learned is not None else (LEARNED_QUICK if args.quick else LEARNED_LARGE)
    res = collect(args.quick, extra)
    r = res["ratios"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(res, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, series in r.items():
        if series:
            n, v = zip(*series)
            ax.plot(n, v, "o-" if len(n) < 40 else "-", ms=3, lw=1, label=name)
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("codebook size n")
    ax.set_ylabel("covering radius / Fejes Toth bound")
    ax.set_ylim(0.98, 1.5)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("Covering radius relative to the Fejes Toth lower bound")
    fig.tight_layout()
    png = args.out.with_suffix(".png")
    atomic_savefig(fig, png, dpi=130)
    # table at sizes where several families exist
    learned_n = [n for n, _ in r["learned"]]
    rows = sorted(
        {n for n, _ in r["healpix"]}
        | {n for n, _ in r["icosahedral"]}
        | set(learned_n[:: max(1, len(learned_n) // 12)])
        | set(extra)
    )
    head = ["fibonacci", "pole_fib", "icosa", "healpix", "kmeans", "random", "learned"]
    print(f"{'n':>7} " + " ".join(f"{h:>9}" for h in head))
    for n in rows:
        if n > 200000:
            continue
        fib = (
            f"{_ratio(cbm.fibonacci(n).points):.4f}"
            if n not in dict(r["fibonacci"])
            else _lookup(r["fibonacci"], n)
        )
        pf = (
            f"{_ratio(pole_corrected_fibonacci(n)):.4f}"
            if n >= 4 and n not in dict(r["pole_fibonacci"])
            else _lookup(r["pole_fibonacci"], n)
        )
        keys = ("icosahedral", "healpix", "kmeans", "random", "learned")
        cells = [fib, pf, *(_lookup(r[k], n) for k in keys)]
        print(f"{n:>7} " + " ".join(f"{c:>9}" for c in cells))
    if res["learned_seconds"]:
        print(
            "learned optimisation CPU time (s):", {k: round(v, 1) for k, v in res["learned_seconds"].items()}
        )
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
