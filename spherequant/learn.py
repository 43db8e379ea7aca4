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
   decreased, otherwise halve the region. This converges to the local minimax optimum, reaching the
   Fejes Toth bound at ``n = 4, 6, 12`` to ~1e-9 rad.

The best of the restarts is kept (restart 0 starts from the Fibonacci spiral, the others from seeded
uniform random points), so results are deterministic for a given ``seed``. Results are cached on disk
(``$SPHEREQUANT_CACHE`` or ``~/.cache/spherequant``; atomic writes), and a precomputed table for small
``n`` ships in ``spherequant/data/learned_codebooks.npz`` (index ``learned_codebooks.json`` with each
entry's covering radius and Fejes Toth ratio), so calls with default options are instant there.

:func:`spherical_kmeans` fits a codebook to data directions (the data-driven codebook of the SVQ
baseline): k-means++ seeding on the sphere, then alternating nearest-centre assignment and normalised
cluster means, deterministic for a given ``seed``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import linprog
from scipy.sparse import coo_matrix
from scipy.spatial import ConvexHull, QhullError

from spherequant._backend import check_vectors, is_torch
from spherequant._report import atomic_write

__all__ = [
    "cache_dir",
    "hull_holes",
    "minimax_codebook",
    "pole_corrected_fibonacci",
    "shipped_table",
    "spherical_kmeans",
]

#: Bumped whenever the optimiser changes its results (part of the cache key).
ALGORITHM_VERSION = 1
_DATA = Path(__file__).resolve().parent / "data"
_TABLE_NPZ = _DATA / "learned_codebooks.npz"
_TABLE_JSON = _DATA / "learned_codebooks.json"
_DEFAULTS = {"restarts": 2, "iterations": 150, "slp_iterations": 150}
#: Above this size each linear program takes ~1 s or more: defaults switch to one short run.
_LARGE_N = 500
_DEFAULTS_LARGE = {"restarts": 1, "iterations": 100, "slp_iterations": 40}


def _check_int(value: Any, name: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    return int(value)


# ----------------------------------------------------------------------------------------------------------
# hull holes
# ----------------------------------------------------------------------------------------------------------
def _hull(points: np.ndarray) -> np.ndarray:
    """Triangulated hull simplices, oriented so that (b - a) x (c - a) points away from the origin."""
    try:
        hull = ConvexHull(points)
    except QhullError:
        hull = ConvexHull(points, qhull_options="QJ")
    simp = hull.simplices.copy()
    a, b, c = points[simp[:, 0]], points[simp[:, 1]], points[simp[:, 2]]
    m = np.cross(b - a, c - a)
    flip = np.einsum("ij,ij->i", m, hull.equations[:, :3]) < 0  # qhull's normals point outward
    simp[flip] = simp[flip][:, [0, 2, 1]]
    return simp


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
    simp = _hull(p)
    theta, m = _facet_angles_np(p, simp)
    return simp, m, theta


def _facet_angles_np(p: np.ndarray, simp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b, c = p[simp[:, 0]], p[simp[:, 1]], p[simp[:, 2]]
    m = np.cross(b - a, c - a)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    theta = np.arctan2(np.linalg.norm(np.cross(m, a), axis=1), np.einsum("ij,ij->i", m, a))
    return theta, m


def _facet_angles_torch(v: torch.Tensor) -> torch.Tensor:
    """Cap radius of each facet from its vertices ``v`` of shape (F, 3, 3) (differentiable)."""
    a, b, c = v[:, 0], v[:, 1], v[:, 2]
    m = torch.linalg.cross(b - a, c - a, dim=-1)
    m = m / torch.linalg.vector_norm(m, dim=-1, keepdim=True)
    return torch.atan2(torch.linalg.vector_norm(torch.linalg.cross(m, a, dim=-1), dim=-1), (m * a).sum(-1))


def _max_hole(p: np.ndarray) -> float:
    return float(_facet_angles_np(p, _hull(p))[0].max())


# ----------------------------------------------------------------------------------------------------------
# optimiser
# ----------------------------------------------------------------------------------------------------------
def _normalize(p: np.ndarray) -> np.ndarray:
    return p / np.linalg.norm(p, axis=-1, keepdims=True)


def _cap_centre_phase(p: np.ndarray, iterations: int, inner: int = 24) -> np.ndarray:
    """Move every codeword towards the centre of the smallest cap enclosing its Voronoi cell.

    The cell's vertices are the cap centres (outward facet normals) of the hull facets at the codeword;
    the enclosing-cap centre is approximated by ``inner`` Badoiu-Clarkson steps on the sphere (move a
    fraction ``1 / (t + 1)`` towards the farthest vertex, renormalise). Returns the best points seen.
    """
    n = p.shape[0]
    cur = p.copy()
    best, best_val = p.copy(), math.inf
    for _ in range(iterations):
        simp = _hull(cur)
        theta, m = _facet_angles_np(cur, simp)
        val = float(theta.max())
        if val < best_val:
            best, best_val = cur.copy(), val
        owner = simp.reshape(-1)
        fid = np.repeat(np.arange(simp.shape[0]), 3)
        order = np.argsort(owner, kind="stable")
        owner, fid = owner[order], fid[order]
        deg = np.bincount(owner, minlength=n)
        start = np.concatenate([[0], np.cumsum(deg)[:-1]])
        table = np.repeat(fid[start][:, None], deg.max(), axis=1)  # pad with a real vertex of the cell
        table[owner, np.arange(owner.size) - start[owner]] = fid
        verts = m[table]  # (n, maxdeg, 3)
        c = cur.copy()
        for t in range(1, inner + 1):
            far = verts[np.arange(n), np.argmin(np.einsum("nkd,nd->nk", verts, c), axis=1)]
            c = _normalize(c + (far - c) / (t + 1))
        cur = c
    simp = _hull(cur)
    if float(_facet_angles_np(cur, simp)[0].max()) < best_val:
        best = cur
    return best


def _tangent_basis(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    e = np.zeros_like(p)
    e[np.arange(p.shape[0]), np.argmin(np.abs(p), axis=1)] = 1.0
    e1 = _normalize(np.cross(p, e))
    e2 = np.cross(p, e1)
    return e1, e2


def _slp_phase(p: np.ndarray, iterations: int, delta0: float) -> np.ndarray:
    """Sequential linear programming on the max hole radius with a box trust region."""
    n = p.shape[0]
    cur = p.copy()
    simp = _hull(cur)
    theta, _ = _facet_angles_np(cur, simp)
    val = float(theta.max())
    r = 0.02 * delta0
    for _ in range(iterations):
        if r < 1e-10 * delta0:
            break
        active = np.nonzero(theta >= val - 6.0 * r)[0]
        v = torch.tensor(cur[simp[active]], dtype=torch.float64, requires_grad=True)
        _facet_angles_torch(v).sum().backward()
        g = v.grad.numpy()  # (A, 3, 3): d theta_f / d vertex
        e1, e2 = _tangent_basis(cur)
        na = active.size
        rows = np.repeat(np.arange(na), 3)
        verts = simp[active].reshape(-1)
        gflat = g.reshape(-1, 3)
        data = np.concatenate(
            [np.einsum("ij,ij->i", gflat, e1[verts]), np.einsum("ij,ij->i", gflat, e2[verts]), -np.ones(na)]
        )
        ri = np.concatenate([rows, rows, np.arange(na)])
        ci = np.concatenate([2 * verts, 2 * verts + 1, np.full(na, 2 * n)])
        a_ub = coo_matrix((data, (ri, ci)), shape=(na, 2 * n + 1)).tocsr()
        b_ub = -theta[active]
        c = np.zeros(2 * n + 1)
        c[-1] = 1.0
        bounds = [(-r, r)] * (2 * n) + [(None, None)]
        res = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
        if res.status != 0:
            r *= 0.5
            continue
        d = res.x[:-1].reshape(n, 2)
        trial = _normalize(cur + d[:, :1] * e1 + d[:, 1:] * e2)
        tsimp = _hull(trial)
        ttheta, _ = _facet_angles_np(trial, tsimp)
        tval = float(ttheta.max())
        if tval < val - 1e-15:
            cur, simp, theta = trial, tsimp, ttheta
            gain_pred = val - float(res.x[-1])
            ratio = (val - tval) / max(gain_pred, 1e-300)
            val = tval
            if ratio > 0.75:
                r = min(r * 1.5, 0.05 * delta0)
        else:
            r *= 0.5
    return cur


def _optimise(n: int, seed: int, restarts: int, iterations: int, slp_iterations: int, progress: bool):
    from spherequant.bounds import fejes_toth_covering_radius

    delta0 = fejes_toth_covering_radius(n)
    best, best_val = None, math.inf
    bar = _progress(restarts, f"minimax n={n}", progress)
    for r in range(restarts):
        if r == 0:
            from spherequant.codebook import fibonacci

            p0 = np.array(fibonacci(n).points)
        else:
            g = np.random.default_rng([seed, n, r])
            p0 = _normalize(g.normal(size=(n, 3)))
        p = _cap_centre_phase(p0, iterations)
        p = _slp_phase(p, slp_iterations, delta0)
        val = _max_hole(p)
        if val < best_val:
            best, best_val = p, val
        bar.update(1)
        bar.set_postfix(ratio=f"{best_val / delta0:.4f}")
    bar.close()
    return best


class _NoBar:
    def update(self, k):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return _NoBar()
    return tqdm(total=total, desc=desc, leave=False)


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
    blob = json.dumps({"n": n, "version": ALGORITHM_VERSION, **options}, sort_keys=True)
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
        Seed of the random restarts (restart 0 always starts from the Fibonacci spiral).
    restarts : int, optional
        Independent optimisations; the best is kept (default 2; 1 for ``n > 500``).
    iterations : int, optional
        Cap-centre iterations per restart (default 150; 100 for ``n > 500``).
    slp_iterations : int, optional
        Linear-programming steps per restart (default 150; 40 for ``n > 500``, where each linear program
        takes a second or more: n = 1000 reaches ratio 1.030 in about a minute).
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
    n = _check_int(n, "n", 4)
    seed = _check_int(seed, "seed", 0)
    d = _DEFAULTS if n <= _LARGE_N else _DEFAULTS_LARGE
    opts = {
        "restarts": d["restarts"] if restarts is None else _check_int(restarts, "restarts", 1),
        "iterations": d["iterations"] if iterations is None else _check_int(iterations, "iterations", 0),
        "slp_iterations": (
            d["slp_iterations"] if slp_iterations is None else _check_int(slp_iterations, "slp_iterations", 0)
        ),
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
    pts = _optimise(n, seed, opts["restarts"], opts["iterations"], opts["slp_iterations"], bool(progress))
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
    n = _check_int(n, "n", 4)
    if not (isinstance(offset, (int, float)) and 0.0 <= offset <= 1.0):
        raise ValueError(f"offset must be a number in [0, 1], got {offset!r}")
    i = np.arange(n, dtype=np.float64)
    z = 1.0 - 2.0 * (i + offset) / (n - 1 + 2.0 * offset)
    phi = 2.0 * np.pi * np.mod(i * (2.0 / (1.0 + math.sqrt(5.0))), 1.0)
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


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
        data = data.detach().cpu().numpy()
    x = np.asarray(check_vectors(data, "data"), dtype=np.float64).reshape(-1, 3)
    n = _check_int(n, "n", 1)
    seed = _check_int(seed, "seed", 0)
    iterations = _check_int(iterations, "iterations", 1)
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
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


def _write_table(
    points: dict[int, np.ndarray], options: dict[int, dict], out_dir: Path | None = None
) -> dict:
    """Write the shipped table (npz + JSON index with exact covering radii and ratios); maintainers only."""
    from spherequant.bounds import fejes_toth_covering_radius
    from spherequant.codebook import Codebook

    out_dir = Path(out_dir) if out_dir is not None else _DATA
    entries = {}
    for n in sorted(points):
        delta = Codebook(points[n]).covering_radius()
        entries[str(n)] = {
            "covering_radius": delta,
            "ratio": delta / fejes_toth_covering_radius(n),
            "options": options[n],
        }
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_dir / "learned_codebooks.npz", **{f"n{n}": points[n] for n in sorted(points)})
    index = {"version": ALGORITHM_VERSION, "entries": entries}
    (out_dir / "learned_codebooks.json").write_text(json.dumps(index, indent=1))
    return index


def _build_table(ns, options: dict | None = None, out_dir: Path | None = None) -> dict:
    """Optimise the sizes ``ns`` (same options for all) and write the shipped table; maintainers only."""
    opts = {**_DEFAULTS, "seed": 0, **(options or {})}
    points, meta = {}, {}
    for n in ns:
        t0 = time.perf_counter()
        points[n] = _optimise(
            n, opts["seed"], opts["restarts"], opts["iterations"], opts["slp_iterations"], True
        )
        meta[n] = {**opts, "seconds": round(time.perf_counter() - t0, 2)}
    return _write_table(points, meta, out_dir)
