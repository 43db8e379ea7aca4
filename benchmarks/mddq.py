"""Naive per-axis scalar quantization versus MDDQ on random 3-vectors.

Prints a table (reconstruction error and commutation error ``||Q(R v) - R Q(v)||`` under Haar-random
rotations) and an error-versus-bits sweep, writes JSON and optionally a PNG plot. The computation is
:func:`spherequant.comparison.compare_vector_quantizers`; see its docstring for the exact protocol.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/mddq.py                       # 1e5 vectors, sweep on 2e4
    python benchmarks/mddq.py --n 20000 --no-sweep --json /tmp/m.json
    python benchmarks/mddq.py --plot benchmarks/results/mddq.png
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from spherequant._report import atomic_savefig, format_table, write_json
from spherequant.comparison import compare_vector_quantizers
from spherequant.plotting import plot_error_vs_bits

__all__ = ["main"]

METRICS = ("mean_err", "max_err", "rel_mean_err", "mean_comm", "max_comm")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="number of random vectors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweep-n", type=int, default=20_000, help="vectors used by the bit sweep")
    parser.add_argument("--no-sweep", action="store_true", help="skip the error-vs-bits sweep")
    parser.add_argument("--magnitude", choices=("uniform", "log"), default="uniform")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "mddq.json"))
    parser.add_argument("--plot", default=None, help="write a PNG of the sweep to this path")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    result = compare_vector_quantizers(
        args.n, args.seed, sweep=not args.no_sweep, sweep_n=args.sweep_n, magnitude=args.magnitude
    )
    result["seconds"] = time.perf_counter() - t0

    print(f"{result['n']} vectors ~ N(0, I_3), seed {result['seed']}, r_max = {result['r_max']:.4f}")
    rows = [[r["name"], r["bits"], *(r[k] for k in METRICS)] for r in result["rows"]]
    print(format_table(rows, ["quantizer", "bits", *METRICS]))
    if result["sweep"]:
        print(
            f"\nsweep on the first {min(args.sweep_n, args.n)} vectors (MDDQ: best magnitude+direction split)"
        )
        rows = [[r["family"], r["bits"], r["config"], r["mean_err"], r["mean_comm"]] for r in result["sweep"]]
        print(format_table(rows, ["family", "bits", "config", "mean_err", "mean_comm"]))
    write_json(args.json, result)
    print(f"\nwrote {args.json} ({result['seconds']:.1f} s)")
    if args.plot:
        atomic_savefig(plot_error_vs_bits(result), args.plot, dpi=120)
        print(f"wrote {args.plot}")
    return result


if __name__ == "__main__":
    main()
