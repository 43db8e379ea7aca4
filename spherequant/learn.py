r"""Learned direction codebooks: minimax covering optimisation and spherical k-means.

:func:`minimax_codebook` minimises the covering radius ``delta(C) = max_u min_k angle(u, c_k)`` itself
(not Lloyd's mean-square distortion). With the codebook's convex hull, every facet with outward unit
normal ``m`` bounds an empty spherical cap centred at ``m`` (a Voronoi vertex) of angular radius
``theta_f = angle(m, facet vertex)``; when the origin is inside the hull, ``delta = max_f theta_f``. The
optimiser runs, per restart,

1. a cap-centre phase (the covering analogue of Lloyd's iteration): move every codeword to the centre of
   the smallest spherical cap enclosing its Voronoi cell, whose vertices are the cap centres ``m`` of
   the hull facets at that codeword;
2. a sequential linear-programming phase for the exact minimax: linearise every near-maximal
   ``theta_f`` in tangent displacements of its three vertices, solve ``min t`` subject to
   ``theta_f + g_f . dx <= t`` inside a box trust region (HiGHS), accept the step if the true maximum
   decreased, otherwise halve the region;
3. a KKT polish: Newton steps on the active-set system of the minimax optimum (the active facets'
   radii equal ``t``, their gradients balanced by non-negative multipliers), the active-set structure of
   the covering-radius proof; it ends at the local optimum to rounding (the Fejes Toth bound at
   ``n = 4, 6, 12`` to ~1e-16 rad).

No phase ever accepts a worse configuration. Starts: the Fibonacci spiral (restart 0), the pole-corrected
spiral (restart 1), seeded uniform random points (restarts 2, 3, ...), plus any extra
starts; the best refined start is kept, so results are deterministic for a given ``seed``. Results are
cached on disk (``$SPHEREQUANT_CACHE`` or ``~/.cache/spherequant``; atomic writes).

From 257 points on (beyond the shipped table) a second path runs as well (private module
``spherequant._relax``): the geodesic icosahedral grids nearest in size to ``n``, brought to exactly ``n``
points (points inserted at spread-out hole centres or spread-out points removed) and relaxed on their
re-triangulated hull by L-BFGS on a soft maximum of the facets' cap radii (the circumradii of the
spherical Delaunay triangles) with rising sharpness; the better of the two paths is returned (the
defaults run the grid path alone there). The grids reach 1.01-1.04 times the Fejes Toth bound where
the spiral starts stop at 1.04-1.06 (n = 10^4: 1.010 in about 20 s of one core, against 1.058).

The shipped table (``spherequant/data/learned_codebooks.npz``, index ``learned_codebooks.json`` with each
entry's covering radius, Fejes Toth ratio and how it was found) holds every size from 4 up to its largest,
so calls with default options are instant there. It is built by the maintainer script
``benchmarks/build_learned_table.py`` (a chain over n, then a repair pass): each size n also starts from
size n - 1 plus its deepest hole and from every library family with n points (and, in the second pass,
from the previously shipped table), so ``learned(n)`` is never worse than ``learned(n - 1)`` plus its
deepest hole -- hence never worse than any smaller learned codebook -- nor than any family of the same size.

:func:`spherical_kmeans` fits a codebook to data directions (the data-driven codebook of the SVQ
baseline): k-means++ seeding on the sphere, then alternating nearest-centre assignment and normalised
cluster means, deterministic for a given ``seed``.

The optimiser itself lives in the private module ``spherequant._minimax`` (shared with the table
builder), the grid relaxation in ``spherequant._relax``; the raw spirals and grids in
``spherequant._points``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from spherequant._backend import as_float_array, check_vectors, is_torch
from spherequant._minimax import ALGORITHM_VERSION, defaults, facet_angles, hull, min_restarts
from spherequant._points import DUPLICATE_ANGLE, duplicate_pair, pole_corrected_fibonacci_points
from spherequant._relax import GRID_MIN_N, GRID_VERSION, best_codebook
from spherequant._report import atomic_write
from spherequant._validation import check_bool, check_int, check_real

__all__ = [
    "cache_dir",
    "hull_holes",
    "minimax_codebook",
    "pole_corrected_fibonacci",
    "shipped_table",
    "spherical_kmeans",
]

_DATA = Path(__file__).resolve().parent / "data"
_TABLE_NPZ = _DATA / "learned_codebooks.npz"
_TABLE_JSON = _DATA / "learned_codebooks.json"


# ----------------------------------------------------------------------------------------------------------
# hull holes
# ----------------------------------------------------------------------------------------------------------
def hull_holes(points: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hull facets of a codebook with their cap centres (Voronoi vertices) and cap radii.

    Parameters
    ----------
    points : array_like of shape (K, 3), K >= 4
        Unit codewords, not all on one great circle.

    Returns
    -------
    simplices : ndarray of shape (F, 3), int
        Facet vertex indices, oriented outward.
    centres : ndarray of shape (F, 3)
        Unit outward facet normals: the centres of the empty caps through each facet's vertices.
    radii : ndarray of shape (F,)
        Cap angular radii (radians). When the origin is inside the hull, ``radii.max()`` is the
        covering radius.

    Examples
    --------
    >>> import numpy as np
    >>> _, _, r = hull_holes(np.concatenate([np.eye(3), -np.eye(3)]))
    >>> round(float(np.degrees(r.max())), 4)
    54.7356
    """
    p = np.asarray(check_vectors(points, "points"), dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 4:
        raise ValueError(f"points must have shape (K, 3) with K >= 4, got {tuple(p.shape)}")
    norms = np.linalg.norm(p, axis=1)
    k = int(np.argmax(np.abs(norms - 1.0)))
    if abs(norms[k] - 1.0) > 1e-6:
        raise ValueError(f"points must be unit vectors; row {k} has norm {norms[k]:.6g}")
    dup = duplicate_pair(p)
    if dup is not None:
        raise ValueError(
            f"points has duplicate directions: rows {dup[0]} and {dup[1]} are {dup[2]:.3e} rad apart "
            f"(minimum {DUPLICATE_ANGLE:g})"
        )
    simp = hull(p)
    theta, m = facet_angles(p, simp)
    return simp, m, theta


# ----------------------------------------------------------------------------------------------------------
# cache and shipped table
# ----------------------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Directory of the on-disk cache: ``$SPHEREQUANT_CACHE`` or ``~/.cache/spherequant``.

    Examples
    --------
    >>> cache_dir().name != ""
    True
    """
    env = os.environ.get("SPHEREQUANT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "spherequant"


def _key(n: int, options: dict) -> str:
    grid = {"grid_version": GRID_VERSION} if n >= GRID_MIN_N else {}  # sizes that run spherequant._relax
    blob = json.dumps({"n": n, "version": ALGORITHM_VERSION, **grid, **options}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _atomic_save(path: Path, points: np.ndarray) -> None:
    atomic_write(path, lambda fh: np.savez(fh, points=points))


def shipped_table() -> tuple[dict, dict[int, np.ndarray]]:
    """The precomputed minimax codebooks shipped with the package.

    Returns
    -------
    index : dict
        JSON index: ``{"version", "entries": {str(n): {"covering_radius", "ratio", "options"}}}``
        (radians; ratio to the Fejes Toth bound; ``options`` are the optimiser settings and seconds used).
    points : dict of int -> ndarray of shape (n, 3)
        The codewords (float64), empty when no table is installed.

    Examples
    --------
    >>> index, pts = shipped_table()
    >>> all(pts[n].shape == (n, 3) for n in pts)
    True
    """
    if not (_TABLE_JSON.exists() and _TABLE_NPZ.exists()):
        return {"version": ALGORITHM_VERSION, "entries": {}}, {}
    index = json.loads(_TABLE_JSON.read_text())
    with np.load(_TABLE_NPZ) as z:
        pts = {int(k[1:]): np.array(z[k], dtype=np.float64) for k in z.files}
    return index, pts


def minimax_codebook(
    n: int,
    *,
    seed: int = 0,
    restarts: int | None = None,
    iterations: int | None = None,
    slp_iterations: int | None = None,
    progress: bool = False,
    cache: bool = True,
) -> np.ndarray:
    """``n`` unit vectors with (locally) minimal covering radius.

    Parameters
    ----------
    n : int
        Number of codewords, ``n >= 4``.
    seed : int, optional
        Seed of the random restarts (restarts 0 and 1 start from the plain and pole-corrected spirals).
    restarts : int, optional
        Independent spiral/random optimisations; the best is kept (default 4; 0 from 257 points on,
        where the relaxed grids alone run; at least 1 below 257 points).
    iterations : int, optional
        Cap-centre iterations per restart (default 100).
    slp_iterations : int, optional
        Linear-programming steps per restart (default 100; 40 for ``257 <= n <= 500``, 0 above 500
        points, where each linear program takes seconds and a smooth phase replaces them). From 257
        points on the relaxed geodesic grids of ``spherequant._relax`` run too; their linear-programming
        polish, up to 500 points, takes the same number of steps.
    progress : bool, optional
        Show a progress bar over restarts (tqdm) while optimising.
    cache : bool, optional
        Read/write the on-disk cache (see :func:`cache_dir`). When no option is given (default seed and
        ``restarts``, ``iterations``, ``slp_iterations`` left at None) and ``n`` is in the shipped table,
        the shipped codebook is returned (it was optimised with the settings recorded in its index entry).

    Returns
    -------
    ndarray of shape (n, 3)
        Unit codewords (float64). Wrap in ``spherequant.codebook.Codebook`` for the exact covering radius.

    Examples
    --------
    >>> from spherequant.bounds import fejes_toth_covering_radius
    >>> p = minimax_codebook(6)
    >>> round(float(hull_holes(p)[2].max() - fejes_toth_covering_radius(6)), 6)
    0.0
    """
    n = check_int(n, "n", minimum=4)
    seed = check_int(seed, "seed", minimum=0)
    progress = check_bool(progress, "progress")
    cache = check_bool(cache, "cache")
    d = defaults(n)
    given = {
        "restarts": (restarts, min_restarts(n)),  # from GRID_MIN_N on the grid path needs no spiral restart
        "iterations": (iterations, 0),
        "slp_iterations": (slp_iterations, 0),
    }
    opts = {
        **{k: d[k] if v is None else check_int(v, k, minimum=lo) for k, (v, lo) in given.items()},
        "seed": seed,
    }
    if cache:
        if restarts is None and iterations is None and slp_iterations is None and seed == 0:
            index, table = shipped_table()
            if n in table and index.get("version") == ALGORITHM_VERSION:
                return table[n].copy()
        path = cache_dir() / "learned" / f"minimax_n{n}_{_key(n, opts)}.npz"
        if path.exists():
            try:
                with np.load(path) as z:
                    pts = np.array(z["points"], dtype=np.float64)
                if pts.shape == (n, 3):
                    return pts
            except (OSError, ValueError, KeyError):
                pass  # unreadable cache entry: recompute and overwrite
    pts = best_codebook(n, seed, opts["restarts"], opts["iterations"], opts["slp_iterations"], progress)
    if cache:
        _atomic_save(path, pts)
    return pts


# ----------------------------------------------------------------------------------------------------------
# pole-corrected Fibonacci
# ----------------------------------------------------------------------------------------------------------
def pole_corrected_fibonacci(n: int, *, offset: float = 0.25) -> np.ndarray:
    """Fibonacci spiral with its first and last points moved towards the poles, shrinking the polar holes.

    Point ``i`` has ``z_i = 1 - 2 (i + offset) / (n - 1 + 2 offset)`` (``offset = 0.5`` with ``n`` in the
    denominator is the standard spiral) and ``phi_i = 2 pi frac(i / golden ratio)``.

    Parameters
    ----------
    n : int
        Number of points, ``n >= 4``.
    offset : float, optional
        Offset of the first/last point from the poles in index units, in ``[0, 1]``. The default 0.25
        lowers the Fejes Toth ratio from 1.240 (standard spiral) to 1.179-1.183 for n = 100..10^4 (the
        deepest hole stays at a pole; measured by ``benchmarks/codebook_ratios.py``).

    Returns
    -------
    ndarray of shape (n, 3)
        Unit vectors (float64).

    Examples
    --------
    >>> pole_corrected_fibonacci(100).shape
    (100, 3)
    """
    n = check_int(n, "n", minimum=4)
    offset = check_real(offset, "offset", minimum=0.0, maximum=1.0)
    return pole_corrected_fibonacci_points(n, offset)


# ----------------------------------------------------------------------------------------------------------
# spherical k-means
# ----------------------------------------------------------------------------------------------------------
def spherical_kmeans(
    data: Any, n: int, *, seed: int = 0, iterations: int = 100, tol: float = 1e-10
) -> np.ndarray:
    """Spherical k-means codebook of the directions of ``data``.

    k-means++ seeding on directions (sampling probability proportional to the squared chord to the
    nearest chosen centre), then alternate: assign each direction to its largest-dot centre (lowest index
    on ties), replace each centre by the normalised sum of its cluster. An empty cluster is re-seeded at
    the direction farthest from its centre. Stops when no assignment changes or no centre moves by more
    than ``tol`` (chord), or after ``iterations`` rounds.

    Parameters
    ----------
    data : ndarray or Tensor of shape (N, 3) or (..., 3)
        Non-zero vectors (only the directions are used); at least ``n`` distinct directions.
    n : int
        Number of centres, ``n >= 1``.
    seed : int, optional
        Seed of the k-means++ sampling; results are deterministic for a given seed.
    iterations : int, optional
        Maximum number of assignment/update rounds.
    tol : float, optional
        Convergence threshold on the centre movement (chord length).

    Returns
    -------
    ndarray of shape (n, 3)
        Unit centres (float64 numpy, also for torch input).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> d = np.concatenate([rng.normal([0, 0, 5], 0.3, (50, 3)), rng.normal([5, 0, 0], 0.3, (50, 3))])
    >>> c = spherical_kmeans(d, 2)
    >>> sorted(np.round(np.abs(c).max(axis=1), 1).tolist())
    [1.0, 1.0]
    """
    if is_torch(data):
        data = as_float_array(data, "data").detach().cpu().numpy()
    x = np.asarray(check_vectors(data, "data"), dtype=np.float64).reshape(-1, 3)
    n = check_int(n, "n", minimum=1)
    seed = check_int(seed, "seed", minimum=0)
    iterations = check_int(iterations, "iterations", minimum=1)
    tol = check_real(tol, "tol", minimum=0.0)
    norms = np.linalg.norm(x, axis=1)
    if (norms == 0).any():
        raise ValueError(f"data contains a zero vector (row {int(np.argmin(norms))}); it has no direction")
    u = x / norms[:, None]
    distinct = np.unique(np.round(u, 12), axis=0).shape[0]
    if distinct < n:
        raise ValueError(f"data has {distinct} distinct directions, fewer than n = {n} centres")
    rng = np.random.default_rng(seed)
    centres = np.empty((n, 3))
    centres[0] = u[rng.integers(u.shape[0])]
    best_dot = u @ centres[0]
    for k in range(1, n):
        w = np.clip(2.0 - 2.0 * best_dot, 0.0, None)
        total = w.sum()
        j = int(rng.choice(u.shape[0], p=w / total)) if total > 0 else int(np.argmin(best_dot))
        centres[k] = u[j]
        best_dot = np.maximum(best_dot, u @ centres[k])
    assign = None
    for _ in range(iterations):
        dots = u @ centres.T
        new = np.argmax(dots, axis=1)
        sums = np.zeros((n, 3))
        np.add.at(sums, new, u)
        moved = 0.0
        lens = np.linalg.norm(sums, axis=1)
        for k in np.nonzero(lens <= 1e-12)[0]:  # empty (or cancelling) cluster: re-seed deterministically
            far = int(np.argmin(dots[np.arange(u.shape[0]), new]))
            sums[k] = u[far]
            lens[k] = 1.0
            new[far] = k
        updated = sums / lens[:, None]
        moved = float(np.linalg.norm(updated - centres, axis=1).max())
        centres = updated
        if assign is not None and (new == assign).all() and moved <= tol:
            break
        assign = new
    return centres
