"""Scalable minimax relaxation for codebooks beyond the shipped table (private module).

Large codebooks start from a lattice-like family and are relaxed on their Delaunay triangulation:

1. **Grid starts** (``grid_starts``): the geodesic icosahedral grids ``geodesic(i, j)`` (``10 T + 2``
   points, ``T = i^2 + i j + j^2``) whose sizes lie nearest to ``n`` on either side, brought to exactly
   ``n`` points -- a smaller grid gains points at the cap centres of spread-out hull facets (the largest
   hole first), a larger grid loses spread-out points (farthest-point sampling). Raw geodesic grids sit at
   about 1.10 times the Fejes Toth bound (their projection stretches the faces' centres), the adjusted
   ones higher where points were removed.
2. **Relaxation** (``relax``): with the hull triangulation of the current points fixed, L-BFGS minimises
   the soft maximum ``logsumexp(beta theta_f / delta0) / beta`` of the facets' cap radii ``theta_f`` (the
   circumradii of the spherical Delaunay triangles, so the exact covering radius when the origin is inside
   the hull) over the codewords (kept on the sphere by normalisation); every few steps the hull is rebuilt
   (Delaunay flips); a sharpness ``beta`` is left for the next, larger one as soon as a round does not
   lower the true largest hole. The best iterate is kept, so the result is never worse than the start.
3. ``grid_codebook`` screens the starts with a short relaxation, relaxes the best ones fully, optionally
   (up to ``LARGE_N`` points) runs the linear-programming steps of :mod:`spherequant._minimax` on the
   winner, and reports every start's ratio.

``best_codebook`` combines this path with the multi-start spiral/random optimiser of
:mod:`spherequant._minimax` (``optimise``, when ``restarts > 0``; the defaults from ``GRID_MIN_N`` points on
run none) and keeps the better result; :mod:`spherequant.learn` calls it for every size it optimises.
Measured (one core, default options): n = 10^4 at 1.010 times the Fejes Toth bound in about 20 s, n = 1000
at 1.014 in 3 s (``benchmarks/codebook_ratios.py`` records the figures).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from spherequant._minimax import (
    GRID_MIN_N,
    LARGE_N,
    facet_angles_torch,
    max_hole,
    min_restarts,
    normalize_rows,
    optimise,
    progress_bar,
    slp_phase,
)
from spherequant._minimax import hull as hull_simplices
from spherequant._points import geodesic_points, pole_corrected_fibonacci_points
from spherequant.bounds import fejes_toth_covering_radius

#: Bumped whenever this path changes its results (part of the cache key of sizes >= GRID_MIN_N).
GRID_VERSION = 1
#: Grid sizes tried on each side of ``n``.
GRID_PER_SIDE = 2
#: Sharpness schedule of the full relaxation (``beta`` in units of 1 / delta0).
BETAS = (40.0, 80.0, 160.0, 320.0, 640.0, 1280.0)
#: Sharpness schedule of the screening relaxation.
SCREEN_BETAS = (40.0, 80.0)


def geodesic_sizes(limit: int) -> dict[int, tuple[int, int]]:
    """Every geodesic grid size ``10 T + 2 <= limit`` with its ``(i, j)`` (``j <= i``; the mirror-symmetric
    ``j = 0`` or ``i = j`` class when a size has several)."""
    out: dict[int, tuple[int, int]] = {}
    for i in range(1, math.isqrt(max(limit // 10, 1)) + 2):
        for j in range(0, i + 1):
            m = 10 * (i * i + i * j + j * j) + 2
            if m > limit:
                break
            if m not in out or j in (0, i):
                out[m] = (i, j)
    return dict(sorted(out.items()))


def spread(cands: np.ndarray, k: int, first: int) -> np.ndarray:
    """Indices of ``k`` rows of the unit ``cands`` (K, 3) chosen by farthest-point sampling from ``first``:
    each new row has the smallest largest dot product with the rows already chosen."""
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = first
    near = cands @ cands[first]
    near[first] = np.inf
    for t in range(1, k):
        j = int(np.argmin(near))
        chosen[t] = j
        near = np.maximum(near, cands @ cands[j])
        near[j] = np.inf
    return chosen


def adjusted_grid(i: int, j: int, n: int) -> np.ndarray:
    """``geodesic_points(i, j)`` brought to exactly ``n`` points (see the module docstring); (n, 3)."""
    p = geodesic_points(i, j)
    k = n - p.shape[0]
    if k > 0:
        simp = hull_simplices(p)
        a, b, c = p[simp[:, 0]], p[simp[:, 1]], p[simp[:, 2]]
        centres = normalize_rows(np.cross(b - a, c - a))
        radii = np.einsum("ij,ij->i", centres, a)  # cos of the cap radius: smallest = largest hole
        return np.concatenate([p, centres[spread(centres, k, int(np.argmin(radii)))]])
    if k < 0:
        keep = np.ones(p.shape[0], dtype=bool)
        keep[spread(p, -k, 0)] = False
        return p[keep]
    return p


def grid_starts(n: int, per_side: int = GRID_PER_SIDE) -> list[tuple[str, np.ndarray]]:
    """Starts for ``n`` points: the ``per_side`` nearest geodesic grid sizes at or below ``n`` and above it,
    adjusted to ``n`` points, then the pole-corrected Fibonacci spiral. Names ``"grid(i,j)"``."""
    sizes = geodesic_sizes(2 * n + 200)
    below = [m for m in sizes if m <= n][-per_side:]
    above = [m for m in sizes if m > n][:per_side]
    starts = []
    for m in sorted(below + above, key=lambda m: abs(m - n)):
        i, j = sizes[m]
        starts.append((f"grid({i},{j})", adjusted_grid(i, j, n)))
    starts.append(("pole_fibonacci", pole_corrected_fibonacci_points(n)))
    return starts


def _soft_max_descent(p: np.ndarray, scale: float, steps: int) -> np.ndarray:
    """``steps`` L-BFGS iterations on ``logsumexp(scale theta_f) / scale`` over the facets of the hull of
    ``p`` (held fixed); returns the normalised iterate (may hold non-finite rows if the step diverged)."""
    simp = torch.from_numpy(hull_simplices(p))
    x = torch.tensor(p, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [x], lr=1.0, max_iter=steps, tolerance_grad=0.0, tolerance_change=0.0, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        u = x / torch.linalg.vector_norm(x, dim=1, keepdim=True)
        loss = torch.logsumexp(scale * facet_angles_torch(u[simp]), 0) / scale
        loss.backward()
        return loss

    opt.step(closure)
    q = x.detach().numpy()
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def relax(
    p: np.ndarray, delta0: float, betas=BETAS, rounds: int = 3, steps: int = 40
) -> tuple[np.ndarray, float]:
    """Minimax relaxation of ``p`` (N, 3) on its re-triangulated hull; returns ``(best points, max hole)``.

    For each sharpness ``beta`` (units of ``1 / delta0``) up to ``rounds`` rounds of ``steps`` L-BFGS
    iterations on the soft maximum, the hull rebuilt before each round; a sharpness ends at the first
    round that does not lower the true largest hole. Each sharpness starts from the best iterate so far,
    which is what is returned (never worse than ``p``).
    """
    best, best_val = p, max_hole(p)
    for beta in betas:
        for _ in range(rounds):
            q = _soft_max_descent(best, beta / delta0, steps)
            if not np.isfinite(q).all():
                break
            val = max_hole(q)
            if not val < best_val:
                break
            best, best_val = q, val
    return best, best_val


def grid_codebook(
    n: int, slp_iterations: int = 0, keep: int = 2, report: dict | None = None, progress: bool = False
) -> np.ndarray:
    """``n`` points from the grid starts: screen every start of ``grid_starts(n)`` with a short relaxation,
    relax the ``keep`` best fully, then (``slp_iterations > 0`` and ``n <= LARGE_N``) run the
    linear-programming steps of :mod:`spherequant._minimax` on the best (the KKT polish is skipped: on
    relaxed grids it gained nothing at n = 257-500 and took up to 40 s); returns the best points seen
    (never worse than any start). ``report`` (if given) receives each start's ratio to the Fejes Toth
    bound after screening (``"<name>/screen"``) and after the full relaxation (``"<name>"``)."""
    delta0 = fejes_toth_covering_radius(n)
    starts = grid_starts(n)
    bar = progress_bar(len(starts) + keep, f"grid relaxation n={n}", progress)
    screened = []
    for name, p in starts:
        q, val = relax(p, delta0, betas=SCREEN_BETAS, rounds=1)
        screened.append((val, name, q))
        if report is not None:
            report[f"{name}/screen"] = val / delta0
        bar.update(1)
    screened.sort(key=lambda t: t[0])
    best, best_val = screened[0][2], screened[0][0]
    for _, name, q in screened[:keep]:
        q, val = relax(q, delta0)
        if report is not None:
            report[name] = val / delta0
        if val < best_val:
            best, best_val = q, val
        bar.update(1)
        bar.set_postfix(ratio=f"{best_val / delta0:.4f}")
    bar.close()
    if slp_iterations > 0 and n <= LARGE_N:
        q = slp_phase(best, slp_iterations, delta0)
        if max_hole(q) < best_val:
            best = q
    return best


def best_codebook(
    n: int,
    seed: int,
    restarts: int,
    iterations: int,
    slp_iterations: int,
    progress: bool,
    report: dict | None = None,
) -> np.ndarray:
    """The better of ``optimise(n, seed, restarts, iterations, slp_iterations, progress)`` (spiral and
    random starts, :mod:`spherequant._minimax`; skipped when ``restarts == 0``, allowed from
    ``GRID_MIN_N`` points on) and, from ``GRID_MIN_N`` points on, ``grid_codebook(n, slp_iterations)``;
    the winner's name goes to ``report["best"]`` (``"spiral"`` or ``"grid"``)."""
    if restarts < min_restarts(n):
        raise ValueError(f"restarts must be >= {min_restarts(n)} for n = {n}, got {restarts}")
    spiral = (
        optimise(n, seed, restarts, iterations, slp_iterations, progress, report=report) if restarts else None
    )
    if n < GRID_MIN_N:
        if report is not None:
            report["best"] = "spiral"
        return spiral
    grid = grid_codebook(n, slp_iterations, report=report, progress=progress)
    use_grid = spiral is None or max_hole(grid) < max_hole(spiral)
    if report is not None:
        report["best"] = "grid" if use_grid else "spiral"
    return grid if use_grid else spiral
