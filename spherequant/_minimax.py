"""The minimax covering optimiser behind :func:`spherequant.learn.minimax_codebook` (private module).

Hull facets and their cap radii (``hull``, ``facet_angles``, ``max_hole``), the optimiser's phases
(``cap_centre_phase``, ``slp_phase``, ``kkt_polish``, ``smooth_phase``), ``refine`` (all phases on one
start) and ``optimise`` (multi-start). :mod:`spherequant.learn` runs them for sizes the shipped table does
not hold; the maintainer script ``benchmarks/build_learned_table.py`` runs them to build that table. See
:mod:`spherequant.learn` for the method. Names here carry no underscore because other modules use them;
the module itself is private (its interface may change without notice).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linprog
from scipy.sparse import coo_matrix
from scipy.spatial import ConvexHull, QhullError

from spherequant._points import fibonacci_points, pole_corrected_fibonacci_points
from spherequant.bounds import fejes_toth_covering_radius

#: Bumped whenever the optimiser changes its results (part of the cache key).
ALGORITHM_VERSION = 2
#: Optimiser settings by size: below GRID_MIN_N, up to LARGE_N, above.
DEFAULTS = {"restarts": 4, "iterations": 100, "slp_iterations": 100}
#: From this size on (beyond the shipped table) ``spherequant._relax`` relaxes geodesic grids brought to n
#: points; they beat the refined spirals (n = 257: 1.028 against 1.045 after 20 s of multi-start, 300:
#: 1.036 against 1.036, 500: 1.024), so the defaults run no spiral/random restart, only the grid path
#: with a short LP polish.
GRID_MIN_N = 257
DEFAULTS_GRID = {"restarts": 0, "iterations": 100, "slp_iterations": 40}
#: Above this size each linear program takes ~1 s or more and sees thousands of near-maximal holes (40
#: steps took 8.5 minutes of one core at n = 2562 for a Fejes Toth ratio of 1.022): no LP step.
LARGE_N = 500
DEFAULTS_LARGE = {"restarts": 0, "iterations": 100, "slp_iterations": 0}


def min_restarts(n: int) -> int:
    """The fewest spiral/random restarts allowed for ``n`` points: 0 where the grid path runs, else 1."""
    return 0 if n >= GRID_MIN_N else 1


def defaults(n: int) -> dict:
    """The default optimiser settings for ``n`` points."""
    return DEFAULTS if n < GRID_MIN_N else (DEFAULTS_GRID if n <= LARGE_N else DEFAULTS_LARGE)


def hull(points: np.ndarray) -> np.ndarray:
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


def facet_angles(p: np.ndarray, simp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b, c = p[simp[:, 0]], p[simp[:, 1]], p[simp[:, 2]]
    m = np.cross(b - a, c - a)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    theta = np.arctan2(np.linalg.norm(np.cross(m, a), axis=1), np.einsum("ij,ij->i", m, a))
    return theta, m


def facet_angles_torch(v: torch.Tensor) -> torch.Tensor:
    """Cap radius of each facet from its vertices ``v`` of shape (F, 3, 3) (differentiable)."""
    a, b, c = v[:, 0], v[:, 1], v[:, 2]
    m = torch.linalg.cross(b - a, c - a, dim=-1)
    m = m / torch.linalg.vector_norm(m, dim=-1, keepdim=True)
    return torch.atan2(torch.linalg.vector_norm(torch.linalg.cross(m, a, dim=-1), dim=-1), (m * a).sum(-1))


def max_hole(p: np.ndarray) -> float:
    return float(facet_angles(p, hull(p))[0].max())


# ----------------------------------------------------------------------------------------------------------
# optimiser
# ----------------------------------------------------------------------------------------------------------
def normalize_rows(p: np.ndarray) -> np.ndarray:
    return p / np.linalg.norm(p, axis=-1, keepdims=True)


def cap_centre_phase(p: np.ndarray, iterations: int, inner: int = 24) -> np.ndarray:
    """Move every codeword towards the centre of the smallest cap enclosing its Voronoi cell.

    The cell's vertices are the cap centres (outward facet normals) of the hull facets at the codeword;
    the enclosing-cap centre is approximated by ``inner`` Badoiu-Clarkson steps on the sphere (move a
    fraction ``1 / (t + 1)`` towards the farthest vertex, renormalise). Returns the best points seen.
    """
    n = p.shape[0]
    cur = p.copy()
    best, best_val = p.copy(), math.inf
    for _ in range(iterations):
        simp = hull(cur)
        theta, m = facet_angles(cur, simp)
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
            c = normalize_rows(c + (far - c) / (t + 1))
        cur = c
    simp = hull(cur)
    if float(facet_angles(cur, simp)[0].max()) < best_val:
        best = cur
    return best


def tangent_basis(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    e = np.zeros_like(p)
    e[np.arange(p.shape[0]), np.argmin(np.abs(p), axis=1)] = 1.0
    e1 = normalize_rows(np.cross(p, e))
    e2 = np.cross(p, e1)
    return e1, e2


def slp_phase(p: np.ndarray, iterations: int, delta0: float) -> np.ndarray:
    """Sequential linear programming on the max hole radius with a box trust region."""
    n = p.shape[0]
    cur = p.copy()
    simp = hull(cur)
    theta, _ = facet_angles(cur, simp)
    val = float(theta.max())
    r = 0.02 * delta0
    for _ in range(iterations):
        if r < 1e-10 * delta0:
            break
        active = np.nonzero(theta >= val - 6.0 * r)[0]
        v = torch.tensor(cur[simp[active]], dtype=torch.float64, requires_grad=True)
        facet_angles_torch(v).sum().backward()
        g = v.grad.numpy()  # (A, 3, 3): d theta_f / d vertex
        e1, e2 = tangent_basis(cur)
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
        trial = normalize_rows(cur + d[:, :1] * e1 + d[:, 1:] * e2)
        tsimp = hull(trial)
        ttheta, _ = facet_angles(trial, tsimp)
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


def kkt_polish(p: np.ndarray, delta0: float, steps: int = 8) -> np.ndarray:
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
    simp = hull(cur)
    theta, _ = facet_angles(cur, simp)
    val = float(theta.max())

    def facet_theta(y6, base, e1, e2):  # y6 (3, 2); base/e1/e2 (3, 3)
        v = base + y6[:, :1] * e1 + y6[:, 1:] * e2
        v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
        return facet_angles_torch(v[None])[0]

    grad_fn = vmap(torch.func.grad(facet_theta))
    hess_fn = vmap(hessian(facet_theta))
    for _ in range(steps):
        improved = False
        for tol in (1e-9, 1e-7, 1e-5):
            active = np.nonzero(theta >= val - tol * delta0)[0]
            if active.size < 2:
                continue
            e1, e2 = tangent_basis(cur)
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
            trial = normalize_rows(cur + d[:, :1] * e1 + d[:, 1:] * e2)
            tsimp = hull(trial)
            ttheta, _ = facet_angles(trial, tsimp)
            tval = float(ttheta.max())
            if tval < val - 1e-15:
                cur, simp, theta, val = trial, tsimp, ttheta, tval
                improved = True
                break
        if not improved:
            break
    return cur


def smooth_phase(
    p: np.ndarray, delta0: float, betas=(40.0, 80.0, 160.0, 320.0), rounds: int = 3, max_iter: int = 60
) -> np.ndarray:
    """Minimise a soft maximum of all hole radii at once (large codebooks); never worse than ``p``.

    For each sharpness ``beta`` and round: fix the hull's facets, minimise ``logsumexp(beta theta_f /
    delta0) / beta`` over the (normalised) codewords with L-BFGS, and keep the result if the true largest
    hole (fresh hull) decreased. Unlike the SLP phase, which moves only the few largest holes per step, this
    lowers the thousands of near-maximal holes of a large codebook together (n = 10^4: Fejes Toth ratio
    1.12 after the cap-centre phase, about 1.05 after this phase).
    """
    best, best_val = p.copy(), max_hole(p)
    for beta in betas:
        for _ in range(rounds):
            simp = torch.from_numpy(hull(best))
            x = torch.tensor(best, dtype=torch.float64, requires_grad=True)
            opt = torch.optim.LBFGS([x], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

            def closure(x=x, opt=opt, simp=simp, beta=beta):
                opt.zero_grad()
                u = x / torch.linalg.vector_norm(x, dim=1, keepdim=True)
                loss = torch.logsumexp(beta * facet_angles_torch(u[simp]) / delta0, 0) / beta
                loss.backward()
                return loss

            opt.step(closure)
            q = normalize_rows(x.detach().numpy())
            if not np.isfinite(q).all():
                break
            val = max_hole(q)
            if val >= best_val:
                break
            best, best_val = q, val
    return best


def refine(
    p: np.ndarray, delta0: float, iterations: int, slp_iterations: int, large: bool = False
) -> np.ndarray:
    """Cap-centre phase, (for ``large``: smooth phase), SLP phase and (small n) KKT polish.

    The result is never worse than ``p``. ``large`` (``n > 500``) adds ``smooth_phase()`` and skips
    the KKT polish, whose dense system has ``(2 n + 1 + active)^2`` entries.
    """
    q = cap_centre_phase(p, iterations) if iterations > 0 else p
    if large:
        q = smooth_phase(q, delta0)
    q = slp_phase(q, slp_iterations, delta0) if slp_iterations > 0 else q
    if slp_iterations > 0 and not large:
        q = kkt_polish(q, delta0)
    return q if max_hole(q) <= max_hole(p) else p


def optimise(
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
    hole, or a family of the same size), each refined by ``refine()``. ``report`` (if given) receives the
    name and ratio of every start.
    """
    delta0 = fejes_toth_covering_radius(n)
    starts: list[tuple[str, np.ndarray]] = []
    for r in range(restarts):
        if r == 0:
            starts.append(("fibonacci", fibonacci_points(n)))
        elif r == 1:
            starts.append(("pole_fibonacci", pole_corrected_fibonacci_points(n)))
        else:
            g = np.random.default_rng([seed, n, r])
            starts.append((f"random{r}", normalize_rows(g.normal(size=(n, 3)))))
    starts.extend(extra_starts or [])
    best, best_val = None, math.inf
    bar = progress_bar(len(starts), f"minimax n={n}", progress)
    for name, p0 in starts:
        p = refine(p0, delta0, iterations, slp_iterations, large=n > LARGE_N)
        val = max_hole(p)
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


def progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return _NoBar()
    return tqdm(total=total, desc=desc, leave=False)
