"""Helpers shared by the core tests: array-kind conversion, the gradcheck harness of the STEs, and the
adversarial queries of the nearest-codeword tests.

Test modules import what they need from here (``from _core_helpers import surrogate``; pytest puts
``tests/`` on ``sys.path``). Only numpy, scipy, torch and the core library are imported: the core tests
run without the ``models`` extra.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import ConvexHull, QhullError

from spherequant.lookup import _a_of_s

__all__ = [
    "TORCH_DTYPES",
    "adversarial_queries",
    "as_backend",
    "mismatch_report",
    "surrogate",
    "to_numpy",
    "unit",
    "vjp",
]

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def as_backend(x, backend: str, float_dtype: str):
    """``x`` as a numpy array (``backend="numpy"``) or CPU torch tensor of ``float_dtype``."""
    x = np.asarray(x, dtype=float_dtype)
    return torch.tensor(x) if backend == "torch" else x


def to_numpy(x) -> np.ndarray:
    """A numpy copy of a tensor (detached, on the CPU) or ``np.asarray(x)``."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def vjp(fn, inputs, grad):
    """Vector-Jacobian product of ``fn`` at ``inputs`` with cotangent ``grad`` (under autograd)."""
    with torch.enable_grad():
        xs = [t.detach().requires_grad_(True) for t in inputs]
        return torch.autograd.grad(fn(*xs), xs, grad)


def surrogate(forward, library):
    """An autograd function with the smooth ``forward`` and the backward of ``library`` (for gradcheck).

    The STE forward passes are piecewise constant, so ``torch.autograd.gradcheck`` is run on this wrapper:
    its numerical Jacobian is that of the surrogate the STE claims to differentiate, its analytical one the
    library's backward.
    """

    class Wrapper(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            ctx.save_for_backward(*inputs)
            with torch.no_grad():
                return forward(*inputs)

        @staticmethod
        def backward(ctx, grad):
            return vjp(library, ctx.saved_tensors, grad)

    return Wrapper.apply


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def adversarial_queries(points, grid, rng):
    """Codewords, their antipodes, Voronoi vertices, Voronoi edge midpoints, poles, cube-map cell corners."""
    qs = [points, -points, 3.0 * points]
    axes = np.concatenate([np.eye(3), -np.eye(3)])
    qs.append(axes)
    if points.shape[0] >= 4:
        try:  # joggled for small or flat sets (a great circle, say)
            hull = ConvexHull(points, qhull_options="QJ") if points.shape[0] < 10 else ConvexHull(points)
        except QhullError:
            hull = ConvexHull(points, qhull_options="QJ")
        simp = hull.simplices
        a, b, c = points[simp[:, 0]], points[simp[:, 1]], points[simp[:, 2]]
        m = np.cross(b - a, c - a)
        qs += [unit(m), -unit(m)]  # Voronoi vertices (3-way ties) and their antipodes
        edges = np.unique(
            np.sort(np.concatenate([simp[:, [0, 1]], simp[:, [1, 2]], simp[:, [2, 0]]]), 1), axis=0
        )
        mid = points[edges[:, 0]] + points[edges[:, 1]]
        qs.append(unit(mid[np.linalg.norm(mid, axis=1) > 1e-9]))  # Voronoi edge points (2-way ties)
    # cube-map cell corners and edge points of this index's grid
    s = np.arange(grid + 1) / grid
    av = _a_of_s(s)
    aa, bb = np.meshgrid(av, av, indexing="ij")
    mid_b = np.meshgrid(av, _a_of_s((np.arange(grid) + 0.5) / grid), indexing="ij")
    for k in range(3):
        for sign in (1.0, -1.0):
            for ga, gb in ((aa, bb), mid_b):
                v = np.zeros((*ga.shape, 3))
                v[..., k] = sign
                v[..., (k + 1) % 3] = ga
                v[..., (k + 2) % 3] = gb
                qs.append(v.reshape(-1, 3))
    qs.append(rng.normal(size=(2000, 3)))
    return np.concatenate(qs)


def mismatch_report(got, ref, x):
    bad = np.nonzero(np.asarray(got) != np.asarray(ref))[0]
    if bad.size == 0:
        return ""
    k = bad[0]
    return f"{bad.size} mismatches of {len(ref)}; first at x = {x[k]}: got {got[k]}, brute force {ref[k]}"
