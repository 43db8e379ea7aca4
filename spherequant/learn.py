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
3. a KKT polish (``_kkt_polish()``): Newton steps on the active-set system of the minimax optimum
   (the active facets' radii equal ``t``, their gradients balanced by non-negative multipliers), the
   active-set structure of the covering-radius proof; it ends at the local optimum to rounding (the
   Fejes Toth bound at ``n = 4, 6, 12`` to ~1e-16 rad).

No phase ever accepts a worse configuration. Starts (``_optimise()``): the Fibonacci spiral (restart 0),
the pole-corrected spiral (restart 1), seeded uniform random points (restarts 2, 3, ...), plus any extra
starts; the best refined start is kept, so results are deterministic for a given ``seed``. Results are
cached on disk (``$SPHEREQUANT_CACHE`` or ``~/.cache/spherequant``; atomic writes).

The shipped table (``spherequant/data/learned_codebooks.npz``, index ``learned_codebooks.json`` with each
entry's covering radius, Fejes Toth ratio and how it was found) holds every size from 4 up to its largest,
so calls with default options are instant there. It is built by ``benchmarks/build_learned_table.py``
(``_build_chain()``, then ``_repair_chain()``): each size n also starts from size n - 1 plus its
deepest hole and from every library family with n points (and, in the second pass, from the previously
shipped table), so ``learned(n)`` is never worse than ``learned(n - 1)`` plus its deepest hole -- hence never
worse than any smaller learned codebook -- nor than any family of the same size.

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

from spherequant._backend import as_float_array, check_vectors, is_torch
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
ALGORITHM_VERSION = 2
_DATA = Path(__file__).resolve().parent / "data"
_TABLE_NPZ = _DATA / "learned_codebooks.npz"
_TABLE_JSON = _DATA / "learned_codebooks.json"
_DEFAULTS = {"restarts": 4, "iterations": 100, "slp_iterations": 100}
#: Above this size each linear program takes ~1 s or more: defaults switch to one short run.
_LARGE_N = 500
_DEFAULTS_LARGE = {"restarts": 1, "iterations": 100, "slp_iterations": 40}
#: Above this size the LP steps see thousands of near-maximal holes (minutes each): defaults skip them and
#: rely on the smooth phase (n = 10^4: Fejes Toth ratio 1.058 in about 15 s of one core).
_HUGE_N = 5000
_DEFAULTS_HUGE = {"restarts": 1, "iterations": 100, "slp_iterations": 0}


def _check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


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
    norms = np.linalg.norm(p, axis=1)
    k = int(np.argmax(np.abs(norms - 1.0)))
    if abs(norms[k] - 1.0) > 1e-6:
        raise ValueError(f"points must be unit vectors; row {k} has norm {norms[k]:.6g}")
    from spherequant.codebook import Codebook

    Codebook(p)  # raises ValueError naming points on duplicate directions
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


def _kkt_polish(p: np.ndarray, delta0: float, steps: int = 8) -> np.ndarray:
    """Newton steps on the KKT system of the active facets (the exact minimax refinement).

    At a local minimax optimum a set ``A`` of facets is tight (``theta_f = t``) and multipliers
    ``lam_f >= 0`` with ``sum lam = 1`` balance their gradients: ``sum_f lam_f grad theta_f = 0`` (the
    same active-set structure the covering-radius proof uses: the maximum sits at hull-facet cap
    centres). In tangent coordinates ``y`` of all codewords this is the square system

    ``H dy + G^T lam = 0``, ``1^T lam = 1``, ``G dy - dt = t - theta_A``

    with ``G`` the active gradients and ``H = sum lam_f hess theta_f`` (9x9 blocks per facet from
    autograd). It is solved by least squares (rigid rotations leave a 3-dimensional null space);
    a facet whose multiplier comes out negative is released and the system solved again. A step is
    accepted only if the true maximum hole (fresh hull) decreases, so the result is never worse.
    """
    from torch.func import hessian, vmap

    n = p.shape[0]
    cur = p.copy()
    simp = _hull(cur)
    theta, _ = _facet_angles_np(cur, simp)
    val = float(theta.max())

    def facet_theta(y6, base, e1, e2):  # y6 (3, 2); base/e1/e2 (3, 3)
        v = base + y6[:, :1] * e1 + y6[:, 1:] * e2
        v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
        return _facet_angles_torch(v[None])[0]

    grad_fn = vmap(torch.func.grad(facet_theta))
    hess_fn = vmap(hessian(facet_theta))
    for _ in range(steps):
        improved = False
        for tol in (1e-9, 1e-7, 1e-5):
            active = np.nonzero(theta >= val - tol * delta0)[0]
            if active.size < 2:
                continue
            e1, e2 = _tangent_basis(cur)
            sa = simp[active]
            y0 = torch.zeros((active.size, 3, 2), dtype=torch.float64)
            args = (
                torch.from_numpy(cur[sa]),
                torch.from_numpy(e1[sa]),
                torch.from_numpy(e2[sa]),
            )
            g = grad_fn(y0, *args).reshape(active.size, 6).numpy()
            h = hess_fn(y0, *args).reshape(active.size, 6, 6).numpy()
            cols = np.stack([2 * sa, 2 * sa + 1], axis=-1).reshape(active.size, 6)
            keep = np.ones(active.size, dtype=bool)
            lam = np.full(active.size, 1.0 / active.size)
            sol = None
            for _release in range(active.size):
                idx = np.nonzero(keep)[0]
                na = idx.size
                gm = np.zeros((na, 2 * n))
                np.add.at(gm, (np.arange(na)[:, None], cols[idx]), g[idx])
                hm = np.zeros((2 * n, 2 * n))
                wh = lam[idx][:, None, None] * h[idx]
                np.add.at(hm, (cols[idx][:, :, None], cols[idx][:, None, :]), wh)
                size = 2 * n + 1 + na
                kkt = np.zeros((size, size))
                kkt[: 2 * n, : 2 * n] = hm
                kkt[: 2 * n, 2 * n + 1 :] = gm.T
                kkt[2 * n, 2 * n + 1 :] = 1.0
                kkt[2 * n + 1 :, : 2 * n] = gm
                kkt[2 * n + 1 :, 2 * n] = -1.0
                rhs = np.zeros(size)
                rhs[2 * n] = 1.0
                rhs[2 * n + 1 :] = val - theta[active[idx]]
                x = np.linalg.lstsq(kkt, rhs, rcond=1e-10)[0]
                new_lam = x[2 * n + 1 :]
                if new_lam.min() >= -1e-12 or na <= 2:
                    sol = x
                    lam[idx] = np.clip(new_lam, 0.0, None)
                    break
                keep[idx[int(np.argmin(new_lam))]] = False
                lam[idx] = np.clip(new_lam, 1e-3 / na, None)
            if sol is None:
                continue
            d = sol[: 2 * n].reshape(n, 2)
            if not np.isfinite(d).all() or np.abs(d).max() > 0.05 * delta0:
                continue
            trial = _normalize(cur + d[:, :1] * e1 + d[:, 1:] * e2)
            tsimp = _hull(trial)
            ttheta, _ = _facet_angles_np(trial, tsimp)
            tval = float(ttheta.max())
            if tval < val - 1e-15:
                cur, simp, theta, val = trial, tsimp, ttheta, tval
                improved = True
                break
        if not improved:
            break
    return cur


def _smooth_phase(
    p: np.ndarray, delta0: float, betas=(40.0, 80.0, 160.0, 320.0), rounds: int = 3, max_iter: int = 60
) -> np.ndarray:
    """Minimise a soft maximum of all hole radii at once (large codebooks); never worse than ``p``.

    For each sharpness ``beta`` and round: fix the hull's facets, minimise ``logsumexp(beta theta_f /
    delta0) / beta`` over the (normalised) codewords with L-BFGS, and keep the result if the true largest
    hole (fresh hull) decreased. Unlike the SLP phase, which moves only the few largest holes per step, this
    lowers the thousands of near-maximal holes of a large codebook together (n = 10^4: Fejes Toth ratio
    1.12 after the cap-centre phase, about 1.05 after this phase).
    """
    best, best_val = p.copy(), _max_hole(p)
    for beta in betas:
        for _ in range(rounds):
            simp = torch.from_numpy(_hull(best))
            x = torch.tensor(best, dtype=torch.float64, requires_grad=True)
            opt = torch.optim.LBFGS([x], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

            def closure(x=x, opt=opt, simp=simp, beta=beta):
                opt.zero_grad()
                u = x / torch.linalg.vector_norm(x, dim=1, keepdim=True)
                loss = torch.logsumexp(beta * _facet_angles_torch(u[simp]) / delta0, 0) / beta
                loss.backward()
                return loss

            opt.step(closure)
            q = _normalize(x.detach().numpy())
            if not np.isfinite(q).all():
                break
            val = _max_hole(q)
            if val >= best_val:
                break
            best, best_val = q, val
    return best


def _refine(
    p: np.ndarray, delta0: float, iterations: int, slp_iterations: int, large: bool = False
) -> np.ndarray:
    """Cap-centre phase, (for ``large``: smooth phase), SLP phase and (small n) KKT polish.

    The result is never worse than ``p``. ``large`` (``n > 500``) adds ``_smooth_phase()`` and skips
    the KKT polish, whose dense system has ``(2 n + 1 + active)^2`` entries.
    """
    q = _cap_centre_phase(p, iterations) if iterations > 0 else p
    if large:
        q = _smooth_phase(q, delta0)
    q = _slp_phase(q, slp_iterations, delta0) if slp_iterations > 0 else q
    if slp_iterations > 0 and not large:
        q = _kkt_polish(q, delta0)
    return q if _max_hole(q) <= _max_hole(p) else p


def _insert_deepest_hole(points: np.ndarray) -> np.ndarray:
    """``points`` plus one of its deepest holes (exact covering radius maximiser): ``(n + 1, 3)``."""
    from spherequant.codebook import Codebook

    return np.vstack([points, Codebook(points).deepest_hole()[None]])


def _family_starts(n: int) -> list[tuple[str, np.ndarray]]:
    """Every codebook family of the library that has exactly ``n`` points (optimiser starts)."""
    import itertools

    from spherequant import codebook as cbm

    out = [("fibonacci", np.array(cbm.fibonacci(n).points)), ("pole_fibonacci", pole_corrected_fibonacci(n))]
    level = 0
    while 10 * 4**level + 2 <= n:
        if 10 * 4**level + 2 == n:
            out.append((f"icosahedral({level})", np.array(cbm.icosahedral(level).points)))
        level += 1
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


def _optimise(
    n: int,
    seed: int,
    restarts: int,
    iterations: int,
    slp_iterations: int,
    progress: bool,
    extra_starts: list[tuple[str, np.ndarray]] | None = None,
    report: dict | None = None,
):
    """Multi-start minimax optimisation; returns the best refined start.

    Starts: the Fibonacci spiral (restart 0), the pole-corrected spiral (restart 1), seeded uniform random
    points (restarts 2, 3, ...), and ``extra_starts`` (e.g. a smaller learned codebook plus its deepest
    hole, or a family of the same size), each refined by ``_refine()``. ``report`` (if given) receives the
    name and ratio of every start.
    """
    from spherequant.bounds import fejes_toth_covering_radius

    delta0 = fejes_toth_covering_radius(n)
    starts: list[tuple[str, np.ndarray]] = []
    for r in range(restarts):
        if r == 0:
            from spherequant.codebook import fibonacci

            starts.append(("fibonacci", np.array(fibonacci(n).points)))
        elif r == 1:
            starts.append(("pole_fibonacci", pole_corrected_fibonacci(n)))
        else:
            g = np.random.default_rng([seed, n, r])
            starts.append((f"random{r}", _normalize(g.normal(size=(n, 3)))))
    starts.extend(extra_starts or [])
    best, best_val = None, math.inf
    bar = _progress(len(starts), f"minimax n={n}", progress)
    for name, p0 in starts:
        p = _refine(p0, delta0, iterations, slp_iterations, large=n > _LARGE_N)
        val = _max_hole(p)
        if report is not None:
            report[name] = val / delta0
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
        Seed of the random restarts (restarts 0 and 1 start from the plain and pole-corrected spirals).
    restarts : int, optional
        Independent optimisations; the best is kept (default 4; 1 for ``n > 500``).
    iterations : int, optional
        Cap-centre iterations per restart (default 100).
    slp_iterations : int, optional
        Linear-programming steps per restart (default 100; 40 for ``500 < n <= 5000``, where each linear
        program takes a second or more; 0 above 5000). Above 500 points a smooth phase runs first: n = 1000
        reaches a Fejes Toth ratio of 1.023 in about a minute, n = 10^4 1.058 in about 15 s.
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
    progress = _check_flag(progress, "progress")
    cache = _check_flag(cache, "cache")
    d = _DEFAULTS if n <= _LARGE_N else (_DEFAULTS_LARGE if n <= _HUGE_N else _DEFAULTS_HUGE)
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
    if isinstance(offset, bool) or not (isinstance(offset, (int, float)) and 0.0 <= offset <= 1.0):
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
        data = as_float_array(data, "data").detach().cpu().numpy()
    x = np.asarray(check_vectors(data, "data"), dtype=np.float64).reshape(-1, 3)
    n = _check_int(n, "n", 1)
    seed = _check_int(seed, "seed", 0)
    iterations = _check_int(iterations, "iterations", 1)
    if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
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
    """Write the shipped table (npz + JSON index with exact covering radii and ratios); maintainers only.

    Both files are written atomically (a reader never sees a torn table).
    """
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
    arrays = {f"n{n}": points[n] for n in sorted(points)}
    atomic_write(out_dir / "learned_codebooks.npz", lambda fh: np.savez_compressed(fh, **arrays))
    index = {"version": ALGORITHM_VERSION, "entries": entries}
    text = json.dumps(index, indent=1).encode()
    atomic_write(out_dir / "learned_codebooks.json", lambda fh: fh.write(text))
    return index


def _load_partial(work_dir: Path, n: int) -> tuple[np.ndarray, dict] | None:
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


def _build_chain(
    ns_max: int,
    work_dir: Path,
    options: dict | None = None,
    deadline: float | None = None,
    log=print,
) -> dict[int, tuple[np.ndarray, dict]]:
    """Optimise n = 4, 5, ..., ``ns_max`` in order, resumable; maintainers only.

    Each size is refined from every start of ``_optimise()`` plus the previous size's result with its
    deepest hole added (so ``delta(n) <= delta(previous + hole)`` by construction: refinement never
    worsens a start) and every family of the library with ``n`` points (so ``n`` is never worse than any
    of them). Each finished size is written atomically to ``work_dir / f"n{n}.npz"`` (points and a JSON
    record of the starts' ratios and the seconds used); a rerun resumes after the last finished size.
    Stops before starting a size when ``time.time()`` passes ``deadline``. Returns the finished sizes.
    """
    opts = {**_DEFAULTS, "seed": 0, **(options or {})}
    work_dir = Path(work_dir)
    done: dict[int, tuple[np.ndarray, dict]] = {}
    prev = None
    for n in range(4, ns_max + 1):
        got = _load_partial(work_dir, n)
        if got is not None and got[1].get("options") == opts:
            done[n] = got
            prev = got[0]
            continue
        if deadline is not None and time.time() > deadline:
            log(f"deadline reached before n={n}")
            break
        t0 = time.perf_counter()
        extra = [(k, v) for k, v in _family_starts(n) if k not in ("fibonacci", "pole_fibonacci")]
        if prev is not None:
            extra.insert(0, ("insert_deepest_hole", _insert_deepest_hole(prev)))
        report: dict[str, float] = {}
        o = opts
        its = (o["restarts"], o["iterations"], o["slp_iterations"])
        pts = _optimise(n, o["seed"], *its, False, extra, report)
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


def _repair_chain(
    done: dict[int, tuple[np.ndarray, dict]],
    warm: dict[int, np.ndarray],
    work_dir: Path,
    deadline: float | None = None,
    log=print,
) -> dict[int, tuple[np.ndarray, dict]]:
    """Second pass over a finished chain: warm starts from another table; maintainers only.

    For n = 4, 5, ... in order, ``warm[n]`` (e.g. the previously shipped codebook) is refined and, when
    ``n - 1`` changed in this pass, so is ``n - 1``'s new codebook plus its deepest hole; the best of these
    and the current entry is kept and written back (atomically). Entries only improve, and every entry
    stays at least as good as its predecessor plus its deepest hole, so the guarantees of
    ``_build_chain()`` hold. Stops (returning the prefix finished so far) when ``time.time()`` passes
    ``deadline`` before a size.
    """
    from spherequant.bounds import fejes_toth_covering_radius

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
        best, best_val, source = pts, _max_hole(pts), None
        starts = []
        if n in warm and warm[n].shape == (n, 3):
            starts.append(("warm_table", warm[n]))
        if changed_prev and n - 1 in out:
            starts.append(("insert_deepest_hole", _insert_deepest_hole(out[n - 1][0])))
        for name, p0 in starts:
            q = _refine(p0, delta0, opts["iterations"], opts["slp_iterations"])
            val = _max_hole(q)
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
