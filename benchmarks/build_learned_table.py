"""Maintainer script: rebuild the shipped table of learned minimax codebooks (``spherequant/data``).

Optimises n = 4, 5, ..., ``--max-n`` in order (:func:`spherequant.learn._build_chain`): every size is
refined from the Fibonacci and pole-corrected spirals, seeded random points, every library family with n
points, and the previous size plus its deepest hole, keeping the best. Finished sizes are written one by one
(atomically) to ``--work`` (default ``$SPHEREQUANT_CACHE/learned_build``), so a killed run resumes where it
stopped. ``--warm-from TABLE.npz`` adds a second pass (:func:`spherequant.learn._repair_chain`) that also
refines that table's entries (e.g. the previously shipped one) and re-inserts deepest holes where a size
improved, so the new table is never worse than the old one. ``--write-table`` then writes the contiguous
finished sizes 4..N as the shipped table.

Run ``nice -n 10 python benchmarks/build_learned_table.py --max-n 256 --hours 1.5 --write-table``
(single core; about 50 core-minutes for n <= 256 with the default five restarts).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

from spherequant import learn

torch.set_num_threads(1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-n", type=int, default=256, help="largest size to optimise (>= 4)")
    ap.add_argument("--work", type=Path, default=None, help="folder of the per-size partial results")
    ap.add_argument("--restarts", type=int, default=5, help="spiral/random starts per size (>= 1)")
    ap.add_argument("--hours", type=float, default=None, help="stop starting new sizes after this long")
    ap.add_argument("--write-table", action="store_true", help="write the finished sizes as the table")
    ap.add_argument("--out", type=Path, default=None, help="table folder (default: spherequant/data)")
    ap.add_argument(
        "--warm-from",
        type=Path,
        default=None,
        help="a learned_codebooks.npz (e.g. the shipped one): second pass with its entries as starts",
    )
    ap.add_argument("--repair-hours", type=float, default=None, help="time budget of the second pass")
    args = ap.parse_args(argv)
    if args.max_n < 4:
        print(f"error: --max-n must be >= 4, got {args.max_n}", file=sys.stderr)
        return 2
    if args.restarts < 1:
        print(f"error: --restarts must be >= 1, got {args.restarts}", file=sys.stderr)
        return 2
    work = args.work if args.work is not None else learn.cache_dir() / "learned_build"
    deadline = time.time() + 3600.0 * args.hours if args.hours is not None else None
    done = learn._build_chain(
        args.max_n,
        work,
        {"restarts": args.restarts},
        deadline,
        log=lambda msg: print(msg, flush=True),
    )
    if args.warm_from is not None:
        with np.load(args.warm_from) as z:
            warm = {int(k[1:]): np.array(z[k], dtype=np.float64) for k in z.files}
        rdeadline = time.time() + 3600.0 * args.repair_hours if args.repair_hours is not None else None
        done = learn._repair_chain(done, warm, work, rdeadline, log=lambda msg: print(msg, flush=True))
    if args.write_table:
        if not done:
            print("error: no finished size to write", file=sys.stderr)
            return 2
        points = {n: p for n, (p, _) in done.items()}
        meta = {n: m for n, (_, m) in done.items()}
        index = learn._write_table(points, meta, args.out)
        print(f"wrote n = 4..{max(points)} ({len(index['entries'])} sizes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
