"""Maintainer script: rebuild the shipped table of learned minimax codebooks (``spherequant/data``).

Optimises n = 4, 5, ..., ``--max-n`` in order (``build_chain``): every size is
refined from the Fibonacci and pole-corrected spirals, seeded random points, every library family with n
points, and the previous size plus its deepest hole, keeping the best. Finished sizes are written one by one
(atomically) to ``--work`` (default ``$SPHEREQUANT_CACHE/learned_build``), so a killed run resumes where it
stopped. ``--warm-from TABLE.npz`` adds a second pass (``repair_chain``) that also
refines that table's entries (e.g. the previously shipped one) and re-inserts deepest holes where a size
improved, so the new table is never worse than the old one. ``--write-table`` then writes the contiguous
finished sizes 4..N as the shipped table.

``--warm-perturbed 72,...`` adds three seeded perturbations of those sizes' current entries.
``--warm-geodesic`` adds every geodesic grid ``geodesic(i, j)`` of a finished size to the second pass's
warm starts (refined, these reach Hardin, Sloane and Smith's icosahedral coverings).
``--from-shipped`` first copies the shipped sizes built with the same options into ``--work`` as
finished, so an extension (e.g. ``--max-n 256`` after a table ending at 205) starts where the table ends.
The optimiser is the package's own (``spherequant._minimax``, which
:func:`spherequant.learn.minimax_codebook` runs for sizes outside the table); this script adds the chain,
the family starts and the table writer.

Run ``nice -n 10 python benchmarks/build_learned_table.py --max-n 256 --hours 1.5 --write-table``
(single core; about 50 core-minutes for n <= 256 with the default five restarts).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from spherequant import codebook as cbm
from spherequant import learn
from spherequant._minimax import ALGORITHM_VERSION, DEFAULTS, max_hole, optimise, refine
from spherequant._report import atomic_write
from spherequant.bounds import fejes_toth_covering_radius
from spherequant.codebook import Codebook
from spherequant.learn import pole_corrected_fibonacci

#: Folder of the shipped table.
TABLE_DIR = Path(learn.__file__).resolve().parent / "data"


def insert_deepest_hole(points: np.ndarray) -> np.ndarray:
    """``points`` plus one of its deepest holes (exact covering radius maximiser): ``(n + 1, 3)``."""
    return np.vstack([points, Codebook(points).deepest_hole()[None]])


def geodesic_parameters(n: int) -> list[tuple[int, int]]:
    """Every ``(i, j)`` with ``i >= j >= 0``, ``i >= 1`` and ``10 (i^2 + i j + j^2) + 2 = n`` (one of each
    mirror pair: mirror images have the same covering radius)."""
    return [
        (i, j)
        for i in range(1, math.isqrt(max(0, (n - 2) // 10)) + 1)
        for j in range(i + 1)
        if 10 * (i * i + i * j + j * j) + 2 == n
    ]


def perturbed(points: np.ndarray, seed: int, scale: float = 1e-3) -> np.ndarray:
    """``points`` moved by seeded Gaussian noise of ``scale`` (radians, per coordinate), renormalised: a
    restart near a local optimum whose active set the optimiser could not leave."""
    p = points + scale * np.random.default_rng([seed, points.shape[0]]).normal(size=points.shape)
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def family_starts(n: int) -> list[tuple[str, np.ndarray]]:
    """Every codebook family of the library that has exactly ``n`` points (optimiser starts)."""
    out = [("fibonacci", np.array(cbm.fibonacci(n).points)), ("pole_fibonacci", pole_corrected_fibonacci(n))]
    level = 0
    while 10 * 4**level + 2 <= n:
        if 10 * 4**level + 2 == n:
            out.append((f"icosahedral({level})", np.array(cbm.icosahedral(level).points)))
        level += 1
    for i, j in geodesic_parameters(n):
        out.append((f"geodesic({i},{j})", np.array(cbm.geodesic(i, j).points)))
    side = math.isqrt(n // 12)
    if side >= 1 and 12 * side * side == n:
        out.append((f"healpix({side})", np.array(cbm.healpix(side).points)))
    solids = {
        "tetrahedron": cbm.tetrahedron,
        "octahedron": cbm.octahedron,
        "cube": cbm.cube,
        "icosahedron": cbm.icosahedron,
        "dodecahedron": cbm.dodecahedron,
    }
    for r in range(1, len(solids) + 1):
        for names in itertools.combinations(solids, r):
            pts = np.vstack([np.array(solids[k]().points) for k in names])
            if pts.shape[0] != n or np.unique(np.round(pts, 9), axis=0).shape[0] != n:
                continue
            out.append(("+".join(names), pts))
    return out


def write_table(points: dict[int, np.ndarray], options: dict[int, dict], out_dir: Path | None = None) -> dict:
    """Write the shipped table (npz + JSON index with exact covering radii and ratios).

    Both files are written atomically (a reader never sees a torn table).
    """
    out_dir = Path(out_dir) if out_dir is not None else TABLE_DIR
    entries = {}
    for n in sorted(points):
        delta = Codebook(points[n]).covering_radius()
        entries[str(n)] = {
            "covering_radius": delta,
            "ratio": delta / fejes_toth_covering_radius(n),
            "options": options[n],
        }
    arrays = {f"n{n}": points[n] for n in sorted(points)}
    atomic_write(out_dir / "learned_codebooks.npz", lambda fh: np.savez_compressed(fh, **arrays))
    index = {"version": ALGORITHM_VERSION, "entries": entries}
    text = json.dumps(index, indent=1).encode()
    atomic_write(out_dir / "learned_codebooks.json", lambda fh: fh.write(text))
    return index


def load_partial(work_dir: Path, n: int) -> tuple[np.ndarray, dict] | None:
    path = work_dir / f"n{n}.npz"
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            pts = np.array(z["points"], dtype=np.float64)
            meta = json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError):
        return None
    if pts.shape != (n, 3) or meta.get("version") != ALGORITHM_VERSION:
        return None
    return pts, meta


def build_chain(
    ns_max: int,
    work_dir: Path,
    options: dict | None = None,
    deadline: float | None = None,
    log=print,
) -> dict[int, tuple[np.ndarray, dict]]:
    """Optimise n = 4, 5, ..., ``ns_max`` in order, resumable.

    Each size is refined from every start of ``optimise()`` plus the previous size's result with its
    deepest hole added (so ``delta(n) <= delta(previous + hole)`` by construction: refinement never
    worsens a start) and every family of the library with ``n`` points (so ``n`` is never worse than any
    of them). Each finished size is written atomically to ``work_dir / f"n{n}.npz"`` (points and a JSON
    record of the starts' ratios and the seconds used); a rerun resumes after the last finished size.
    Stops before starting a size when ``time.time()`` passes ``deadline``. Returns the finished sizes.
    """
    opts = {**DEFAULTS, "seed": 0, **(options or {})}
    work_dir = Path(work_dir)
    done: dict[int, tuple[np.ndarray, dict]] = {}
    prev = None
    for n in range(4, ns_max + 1):
        got = load_partial(work_dir, n)
        if got is not None and got[1].get("options") == opts:
            done[n] = got
            prev = got[0]
            continue
        if deadline is not None and time.time() > deadline:
            log(f"deadline reached before n={n}")
            break
        t0 = time.perf_counter()
        extra = [(k, v) for k, v in family_starts(n) if k not in ("fibonacci", "pole_fibonacci")]
        if prev is not None:
            extra.insert(0, ("insert_deepest_hole", insert_deepest_hole(prev)))
        report: dict[str, float] = {}
        o = opts
        its = (o["restarts"], o["iterations"], o["slp_iterations"])
        pts = optimise(n, o["seed"], *its, False, extra, report)
        best = min(report, key=report.get)
        meta = {
            "version": ALGORITHM_VERSION,
            "options": opts,
            "seconds": round(time.perf_counter() - t0, 2),
            "best_start": best,
            "starts": {k: round(v, 6) for k, v in report.items()},
        }
        blob = json.dumps(meta)
        atomic_write(work_dir / f"n{n}.npz", lambda fh, p=pts, b=blob: np.savez(fh, points=p, meta=b))
        log(f"n={n} ratio={report[best]:.5f} best={best} {meta['seconds']:.1f}s")
        done[n] = (pts, meta)
        prev = pts
    return done


def repair_chain(
    done: dict[int, tuple[np.ndarray, dict]],
    warm: dict[int, np.ndarray | list[np.ndarray]],
    work_dir: Path,
    deadline: float | None = None,
    log=print,
) -> dict[int, tuple[np.ndarray, dict]]:
    """Second pass over a finished chain: warm starts from another table.

    For n = 4, 5, ... in order, ``warm[n]`` (e.g. the previously shipped codebook) is refined and, when
    ``n - 1`` changed in this pass, so is ``n - 1``'s new codebook plus its deepest hole; the best of these
    and the current entry is kept and written back (atomically). Entries only improve, and every entry
    stays at least as good as its predecessor plus its deepest hole, so the guarantees of
    ``build_chain()`` hold. Stops (returning the prefix finished so far) when ``time.time()`` passes
    ``deadline`` before a size.
    """
    work_dir = Path(work_dir)
    out: dict[int, tuple[np.ndarray, dict]] = {}
    changed_prev = False
    for n in sorted(done):
        if deadline is not None and time.time() > deadline:
            log(f"deadline reached before repairing n={n}")
            break
        pts, meta = done[n]
        opts = meta["options"]
        delta0 = fejes_toth_covering_radius(n)
        best, best_val, source = pts, max_hole(pts), None
        starts = []
        for k, p0 in enumerate(warm.get(n, []) if isinstance(warm.get(n), list) else [warm.get(n)]):
            if p0 is not None and p0.shape == (n, 3):
                starts.append(("warm_table" if k == 0 else f"warm_table{k}", p0))
        if changed_prev and n - 1 in out:
            starts.append(("insert_deepest_hole", insert_deepest_hole(out[n - 1][0])))
        for name, p0 in starts:
            q = refine(p0, delta0, opts["iterations"], opts["slp_iterations"])
            val = max_hole(q)
            if val < best_val - 1e-15:
                best, best_val, source = q, val, name
        changed_prev = source is not None
        if changed_prev:
            meta = {**meta, "best_start": f"repair:{source}", "repair_ratio": round(best_val / delta0, 6)}
            blob = json.dumps(meta)
            atomic_write(work_dir / f"n{n}.npz", lambda fh, p=best, b=blob: np.savez(fh, points=p, meta=b))
            log(f"repaired n={n}: ratio {best_val / delta0:.5f} from {source}")
        out[n] = (best, meta)
    return out


def seed_from_shipped(work: Path, options: dict) -> int:
    """Write the shipped entries built with ``options`` into ``work`` as finished sizes (resume point).

    Only sizes absent from ``work`` are written, and only while they form a contiguous chain from n = 4
    (the builder's guarantee for n needs n - 1's entry). Returns the number of sizes written.
    """
    index, points = learn.shipped_table()
    opts = {**DEFAULTS, "seed": 0, **options}
    work.mkdir(parents=True, exist_ok=True)
    written = 0
    for n in sorted(points):
        meta = index["entries"][str(n)]["options"]
        if meta.get("version") != ALGORITHM_VERSION or meta.get("options") != opts:
            break
        path = work / f"n{n}.npz"
        if path.exists():
            continue
        blob = json.dumps(meta)
        atomic_write(path, lambda fh, p=points[n], b=blob: np.savez(fh, points=p, meta=b))
        written += 1
    return written


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
    ap.add_argument(
        "--warm-geodesic",
        action="store_true",
        help="second pass with every geodesic grid geodesic(i, j) of a finished size as a warm start",
    )
    ap.add_argument(
        "--warm-perturbed",
        type=str,
        default=None,
        help="comma-separated sizes: second pass from 3 seeded 1e-3 rad perturbations of their entries",
    )
    ap.add_argument("--repair-hours", type=float, default=None, help="time budget of the second pass")
    ap.add_argument(
        "--from-shipped",
        action="store_true",
        help="first copy the shipped table's sizes (built with the same options) into --work as finished",
    )
    args = ap.parse_args(argv)
    if args.max_n < 4:
        print(f"error: --max-n must be >= 4, got {args.max_n}", file=sys.stderr)
        return 2
    if args.restarts < 1:
        print(f"error: --restarts must be >= 1, got {args.restarts}", file=sys.stderr)
        return 2
    try:
        perturb = [int(v) for v in args.warm_perturbed.split(",")] if args.warm_perturbed else []
    except ValueError:
        print(
            f"error: --warm-perturbed must be comma-separated sizes, got {args.warm_perturbed!r}",
            file=sys.stderr,
        )
        return 2
    torch.set_num_threads(1)  # single core by design (the table's timings in its index assume it)
    work = args.work if args.work is not None else learn.cache_dir() / "learned_build"
    deadline = time.time() + 3600.0 * args.hours if args.hours is not None else None
    if args.from_shipped:
        seeded = seed_from_shipped(work, {"restarts": args.restarts})
        print(f"seeded {seeded} finished sizes from the shipped table", flush=True)
    done = build_chain(
        args.max_n,
        work,
        {"restarts": args.restarts},
        deadline,
        log=lambda msg: print(msg, flush=True),
    )
    if args.warm_from is not None or args.warm_geodesic or perturb:
        warm: dict[int, list[np.ndarray]] = {}
        if args.warm_from is not None:
            with np.load(args.warm_from) as z:
                for k in z.files:
                    warm.setdefault(int(k[1:]), []).append(np.array(z[k], dtype=np.float64))
        if args.warm_geodesic:
            for n in done:
                for i, j in geodesic_parameters(n):
                    warm.setdefault(n, []).append(np.array(cbm.geodesic(i, j).points))
        for n in perturb:
            if n in done:
                warm.setdefault(n, []).extend(perturbed(done[n][0], seed) for seed in range(3))
        rdeadline = time.time() + 3600.0 * args.repair_hours if args.repair_hours is not None else None
        done = repair_chain(done, warm, work, rdeadline, log=lambda msg: print(msg, flush=True))
    if args.write_table:
        if not done:
            print("error: no finished size to write", file=sys.stderr)
            return 2
        points = {n: p for n, (p, _) in done.items()}
        meta = {n: m for n, (_, m) in done.items()}
        index = write_table(points, meta, args.out)
        print(f"wrote n = 4..{max(points)} ({len(index['entries'])} sizes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
