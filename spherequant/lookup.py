"""Fast exact nearest-codeword search on the unit sphere.

The quantizer of a codebook ``C = {c_0, ..., c_{K-1}}`` maps a direction ``u`` to
``argmax_k <u, c_k>`` (lowest index among exact ties). Brute force costs ``O(K)`` per query; this module
answers the same question in ``O(1)`` expected time for any point set with a cube-map grid whose cells
store the only codewords that can be nearest inside them (:class:`NearestIndex`), and for the spherical
Fibonacci codebook with the lattice inverse mapping of Keinert et al. (2015) (:func:`fibonacci_nearest`).

Exactness contract
------------------
For every query ``x`` the fast paths return exactly the index that :func:`brute_force_nearest` returns
for the same dtype: both evaluate the dot products with the same floating-point expression
``(x0 * c0 + x1 * c1) + x2 * c2`` and keep the lowest index among equal maxima. The candidate tables are
built conservatively, with margins that cover the rounding of the query's dtype (see
:class:`NearestIndex`), so the true float argmax is always among a cell's candidates.

Zero vectors have no direction: every function here raises ``ValueError`` on an exact zero query.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree

from spherequant._backend import check_vectors, is_torch

__all__ = [
    "NearestIndex",
    "brute_force_nearest",
    "cube_cell",
    "fibonacci_nearest",
]

try:  # optional compiled kernel (extra ``fast``); everything works without it
    import numba as _numba
except ImportError:  # pragma: no cover - depends on the environment
    _numba = None

_CHUNK = 1 << 16  # queries per vectorised chunk (bounds the (chunk, candidates, 3) gather)


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def _check_points(points: Any) -> np.ndarray:
    """Validate a codebook as a float64 numpy ``(K, 3)`` array of unit rows (norm within 1e-6 of 1)."""
    if is_torch(points):
        points = points.detach().cpu().numpy()
    p = check_vectors(points, "points")
    if p.ndim != 2:
        raise ValueError(f"points must have shape (K, 3), got {tuple(p.shape)}")
    if p.shape[0] == 0:
        raise ValueError("points must contain at least one codeword, got K = 0")
    p = np.asarray(p, dtype=np.float64)
    norms = np.linalg.norm(p, axis=1)
    bad = np.abs(norms - 1.0) > 1e-6
    if bad.any():
        k = int(np.argmax(np.abs(norms - 1.0)))
        raise ValueError(f"points must be unit vectors; row {k} has norm {norms[k]:.6g}")
    return p  # used bit for bit (no renormalisation), so every path compares the same numbers


def _raise_zero(k: int):
    raise ValueError(
        f"x contains a zero vector (flat row {k}); its direction, hence its nearest codeword, is undefined"
    )


def _check_queries(x: Any, *, zeros: bool = True):
    """Validate queries; return (flat (N, 3) array/tensor in a float dtype >= float32, batch shape).

    With ``zeros=False`` the caller checks for zero rows itself.
    """
    x = check_vectors(x, "x")
    if is_torch(x):
        if x.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float32)
    elif x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    shape = tuple(x.shape[:-1])
    flat = x.reshape(-1, 3)
    if zeros and flat.shape[0]:
        zero = (flat == 0).all(axis=1) if not is_torch(flat) else (flat == 0).all(dim=1)
        if bool(zero.any()):
            _raise_zero(int(np.argmax(zero.cpu().numpy() if is_torch(zero) else zero)))
    return flat, shape


def _dots(x, c):
    """Dot products with one fixed evaluation order, shared by every path (bit-identical results).

    ``x`` of shape (N, 1, 3) or (N, 3) and ``c`` broadcastable to it.
    """
    return (x[..., 0] * c[..., 0] + x[..., 1] * c[..., 1]) + x[..., 2] * c[..., 2]


def brute_force_nearest(points: Any, x: Any):
    """Reference nearest codeword by exhaustive search.

    Parameters
    ----------
    points : array_like of shape (K, 3)
        Unit codewords (numpy or torch; used in the dtype of ``x``).
    x : ndarray or Tensor of shape (..., 3)
        Query vectors (any non-zero norm; only the direction matters).

    Returns
    -------
    ndarray or Tensor of shape (...,), int64
        ``argmax_k <x, c_k>``, lowest index among exact ties; same kind (and device) as ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> P = np.eye(3)
    >>> int(brute_force_nearest(P, np.array([0.1, 0.9, 0.2])))
    1
    """
    p = _check_points(points)
    flat, shape = _check_queries(x)
    if is_torch(flat):
        pt = torch.from_numpy(p.copy()).to(dtype=flat.dtype, device=flat.device)
        out = torch.empty(flat.shape[0], dtype=torch.int64, device=flat.device)
        step = max(1, (1 << 24) // max(1, p.shape[0]))
        with torch.no_grad():
            for s in range(0, flat.shape[0], step):
                out[s : s + step] = torch.argmax(_dots(flat[s : s + step, None, :], pt[None]), dim=1)
        return out.reshape(shape)
    pn = p.astype(flat.dtype)
    out = np.empty(flat.shape[0], dtype=np.int64)
    step = max(1, (1 << 22) // max(1, p.shape[0]))
    for s in range(0, flat.shape[0], step):
        out[s : s + step] = np.argmax(_dots(flat[s : s + step, None, :], pn[None]), axis=1)
    return out.reshape(shape)


# ----------------------------------------------------------------------------------------------------------
# cube map
# ----------------------------------------------------------------------------------------------------------
def _s_of_a(a, xp):
    """Quadratic cube-face warp (as in Google's S2): face coordinate a in [-1, 1] -> s in [0, 1]."""
    pos = 0.5 * xp.sqrt(1.0 + 3.0 * xp.abs(a))
    return xp.where(a >= 0, pos, 1.0 - pos)


def _a_of_s(s):
    """Inverse of :func:`_s_of_a` (float64 numpy; extended continuously outside [0, 1])."""
    s = np.asarray(s, dtype=np.float64)
    return np.where(s >= 0.5, (4.0 * s * s - 1.0) / 3.0, (1.0 - 4.0 * (1.0 - s) ** 2) / 3.0)


def _face_coords_numpy(x):
    """Face id (0..5: +x, -x, +y, -y, +z, -z) and face coordinates (a, b) in [-1, 1] for (N, 3) numpy."""
    ax = np.abs(x)
    k = np.where((ax[:, 0] >= ax[:, 1]) & (ax[:, 0] >= ax[:, 2]), 0, np.where(ax[:, 1] >= ax[:, 2], 1, 2))
    r = np.arange(x.shape[0])
    xk = x[r, k]
    inv = 1.0 / np.abs(xk)
    a = x[r, (k + 1) % 3] * inv
    b = x[r, (k + 2) % 3] * inv
    face = 2 * k + (xk < 0)
    return face, a, b


def _face_coords_torch(x):
    ax = torch.abs(x)
    k = torch.where(
        (ax[:, 0] >= ax[:, 1]) & (ax[:, 0] >= ax[:, 2]),
        0,
        torch.where(ax[:, 1] >= ax[:, 2], 1, 2),
    )
    xk = torch.gather(x, 1, k[:, None])[:, 0]
    inv = 1.0 / torch.abs(xk)
    a = torch.gather(x, 1, ((k + 1) % 3)[:, None])[:, 0] * inv
    b = torch.gather(x, 1, ((k + 2) % 3)[:, None])[:, 0] * inv
    face = 2 * k + (xk < 0).long()
    return face, a, b


class _TorchOps:
    sqrt = staticmethod(torch.sqrt)
    abs = staticmethod(torch.abs)

    @staticmethod
    def where(c, a, b):
        return torch.where(c, a, b)


def cube_cell(x: Any, grid: int):
    """Cube-map cell index of each query direction.

    The sphere is split into 6 cube faces (``+x, -x, +y, -y, +z, -z``; the face is the axis of largest
    ``|coordinate|``, lowest axis on ties), each into ``grid x grid`` cells of the quadratic (S2-style)
    projection, whose cell edges are great-circle arcs. Cell ``face * grid**2 + i * grid + j``.

    Parameters
    ----------
    x : ndarray or Tensor of shape (..., 3)
        Non-zero query vectors.
    grid : int
        Cells per face edge, ``>= 1``.

    Returns
    -------
    ndarray or Tensor of shape (...,), int64
        Cell indices in ``[0, 6 * grid**2)``.

    Examples
    --------
    >>> import numpy as np
    >>> int(cube_cell(np.array([0.0, 0.0, -2.0]), 4))  # centre of face -z (5): cell (2, 2)
    90
    """
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 1:
        raise ValueError(f"grid must be a positive integer, got {grid!r}")
    flat, shape = _check_queries(x)
    return _cells(flat, int(grid)).reshape(shape)


def _cells(flat, g: int):
    if is_torch(flat):
        face, a, b = _face_coords_torch(flat)
        i = torch.clamp((_s_of_a(a, _TorchOps) * g).long(), 0, g - 1)
        j = torch.clamp((_s_of_a(b, _TorchOps) * g).long(), 0, g - 1)
        return (face * g + i) * g + j
    face, a, b = _face_coords_numpy(flat)
    i = np.clip((_s_of_a(a, np) * g).astype(np.int64), 0, g - 1)
    j = np.clip((_s_of_a(b, np) * g).astype(np.int64), 0, g - 1)
    return (face * g + i) * g + j


def _cell_corners(g: int, expand: float) -> np.ndarray:
    """Unit corner directions of every cell, shape (6 g^2, 4, 3), each cell expanded by ``expand`` in s."""
    edges = np.arange(g + 1, dtype=np.float64) / g
    lo = _a_of_s(edges[:-1] - expand)
    hi = _a_of_s(edges[1:] + expand)
    out = np.empty((6, g, g, 4, 3))
    for face in range(6):
        k, sign = face // 2, (1.0 if face % 2 == 0 else -1.0)
        j1, j2 = (k + 1) % 3, (k + 2) % 3
        for c, (ai, bj) in enumerate(((lo, lo), (lo, hi), (hi, lo), (hi, hi))):
            v = np.zeros((g, g, 3))
            v[..., k] = sign
            v[..., j1] = ai[:, None]
            v[..., j2] = bj[None, :]
            out[face, :, :, c, :] = v
    out = out.reshape(6 * g * g, 4, 3)
    return out / np.linalg.norm(out, axis=-1, keepdims=True)


def _angle(a, b):
    """Angle between unit vectors (last axis), atan2 form."""
    return np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), np.sum(a * b, axis=-1))


# ----------------------------------------------------------------------------------------------------------
# compiled kernel (optional)
# ----------------------------------------------------------------------------------------------------------
_KERNELS: dict = {}


def _numba_kernel():
    if "query" in _KERNELS:
        return _KERNELS["query"]
    if _numba is None:
        return None

    @_numba.njit(cache=False, nogil=True, fastmath=False, boundscheck=False)
    def query(x, cpts, indptr, indices, g, out):  # pragma: no cover - compiled
        for n in range(x.shape[0]):
            x0 = x[n, 0]
            x1 = x[n, 1]
            x2 = x[n, 2]
            a0 = abs(x0)
            a1 = abs(x1)
            a2 = abs(x2)
            if a0 >= a1 and a0 >= a2:
                k = 0
                xk = x0
                ya = x1
                yb = x2
            elif a1 >= a2:
                k = 1
                xk = x1
                ya = x2
                yb = x0
            else:
                k = 2
                xk = x2
                ya = x0
                yb = x1
            if xk == 0.0:  # zero vector: flagged, the caller raises
                out[n] = -1
                continue
            inv = 1.0 / abs(xk)
            a = ya * inv
            b = yb * inv
            face = 2 * k + (1 if xk < 0 else 0)
            sa = 0.5 * np.sqrt(1.0 + 3.0 * abs(a))
            if a < 0:
                sa = 1.0 - sa
            sb = 0.5 * np.sqrt(1.0 + 3.0 * abs(b))
            if b < 0:
                sb = 1.0 - sb
            i = int(sa * g)
            j = int(sb * g)
            if i > g - 1:
                i = g - 1
            if j > g - 1:
                j = g - 1
            if i < 0:
                i = 0
            if j < 0:
                j = 0
            cell = (face * g + i) * g + j
            best = -1
            bestd = -np.inf
            for t in range(indptr[cell], indptr[cell + 1]):
                d = (x0 * cpts[t, 0] + x1 * cpts[t, 1]) + x2 * cpts[t, 2]
                if d > bestd:
                    bestd = d
                    best = t
            out[n] = indices[best]

    _KERNELS["query"] = query
    return query


# ----------------------------------------------------------------------------------------------------------
# the general index
# ----------------------------------------------------------------------------------------------------------
class _Table:
    """Candidate lists of one query dtype: CSR (indptr, indices) and dense padded (cells, width)."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray):
        self.indptr = indptr
        self.indices = indices
        counts = np.diff(indptr)
        self.width = int(counts.max())
        dense = np.empty((counts.size, self.width), dtype=np.int64)
        # pad each row with its first (lowest-index) candidate: argmax semantics are unchanged
        dense[:] = indices[indptr[:-1]][:, None]
        col = np.arange(indices.size) - np.repeat(indptr[:-1], counts)
        dense[np.repeat(np.arange(counts.size), counts), col] = indices
        self.dense = dense
        self._torch: dict = {}
        self._coords: dict = {}

    def coords(self, pts: np.ndarray) -> np.ndarray:
        """Candidate coordinates laid out in CSR order (contiguous reads in the compiled kernel)."""
        key = pts.dtype.name
        if key not in self._coords:
            self._coords[key] = np.ascontiguousarray(pts[self.indices])
        return self._coords[key]

    def dense_torch(self, device):
        key = str(device)
        if key not in self._torch:
            self._torch[key] = torch.as_tensor(self.dense, device=device)
        return self._torch[key]


class NearestIndex:
    r"""Exact nearest-codeword index for any set of unit vectors (cube-map grid of candidate lists).

    The sphere is divided into ``6 * grid**2`` cells by a cube map (see :func:`cube_cell`); each cell
    stores every codeword that can be the (float) nearest codeword of a query that maps to it, so a
    query compares only against its cell's few candidates.

    Construction and proof of exactness. Let ``X`` be a cell, expanded by a small margin that covers the
    rounding of the cell computation, with corner directions ``v_1..v_4``, centre ``m`` (normalised sum
    of the corners) and angular radius ``rho = max_i angle(m, v_i)`` (cell edges are great-circle arcs and
    the distance from ``m`` along a great-circle arc has no interior maximum, so the farthest point of the
    convex cell is a corner). Let ``p*`` be the codeword nearest to ``m``, at angle ``a``. For ``u`` in
    ``X`` with nearest codeword ``q``: ``angle(u, q) <= angle(u, p*) <= rho + a``, hence by the triangle
    inequality ``angle(m, q) <= angle(m, u) + angle(u, q) <= a + 2 rho``. So the pool of codewords within
    ``a + 2 rho + eta`` of ``m`` contains every nearest codeword, tied ones included; ``eta =
    2 sqrt(12 eps + 4 e)`` extends this to the float argmax (dot products with relative error below ``6 eps``
    move the winning angle by at most ``sqrt(12 eps)``; ``e`` is the largest deviation of a codeword's
    norm from 1, at most 1e-6 by validation). The pool is then pruned: ``q`` is dropped if
    some pool member ``p`` beats it on all four corners, ``<v_i, p - q> > tau`` (``tau = 32 eps``); every
    ``u`` in ``X`` is a non-negative combination of the corners, so ``<u, p> - <u, q> > tau |u|`` and
    ``q`` can neither win nor tie, even after rounding. Separate tables are built lazily for float32 and
    float64 queries, because their margins differ.

    Parameters
    ----------
    points : array_like of shape (K, 3)
        Unit codewords (numpy or torch; stored as float64 numpy).
    grid : int, optional
        Cells per cube-face edge; by default ``ceil(sqrt(density * K / 6))``.
    density : float, optional
        Cells per codeword used to choose ``grid`` (default 1.0).

    Attributes
    ----------
    points : ndarray of shape (K, 3)
        The codewords (float64).
    grid : int
        Cells per face edge.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> P = rng.normal(size=(500, 3)); P /= np.linalg.norm(P, axis=1, keepdims=True)
    >>> index = NearestIndex(P)
    >>> x = rng.normal(size=(1000, 3))
    >>> bool((index.query(x) == brute_force_nearest(P, x)).all())
    True
    """

    def __init__(self, points: Any, *, grid: int | None = None, density: float = 1.0):
        self.points = _check_points(points)
        k = self.points.shape[0]
        if grid is None:
            if not (isinstance(density, (int, float)) and math.isfinite(density) and density > 0):
                raise ValueError(f"density must be a positive finite number, got {density!r}")
            grid = max(1, math.ceil(math.sqrt(density * k / 6.0)))
        if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 1:
            raise ValueError(f"grid must be a positive integer, got {grid!r}")
        self.grid = int(grid)
        self._tables: dict[str, _Table] = {}
        self._points_as: dict = {}
        self._tree = cKDTree(self.points)

    def __repr__(self) -> str:
        return f"NearestIndex(K={self.points.shape[0]}, grid={self.grid})"

    # -- construction ----------------------------------------------------------------------------------
    def table(self, dtype: str = "float64") -> _Table:
        """Candidate table for queries of ``dtype`` ("float32" or "float64"), built on first use."""
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        if dtype not in self._tables:
            self._tables[dtype] = self._build(float(np.finfo(dtype).eps))
        return self._tables[dtype]

    def _build(self, eps: float) -> _Table:
        g, pts = self.grid, self.points
        corners = _cell_corners(g, expand=64.0 * eps)
        centre = corners.sum(axis=1)
        centre /= np.linalg.norm(centre, axis=1, keepdims=True)
        rho = _angle(centre[:, None, :], corners).max(axis=1)
        dist, _ = self._tree.query(centre, k=1)
        a = 2.0 * np.arcsin(np.clip(dist / 2.0, 0.0, 1.0))
        # eta: float argmax vs exact argmax (dot rounding) and codewords off unit length (norm error e)
        normerr = float(np.abs(np.linalg.norm(pts, axis=1) - 1.0).max())
        radius = a + 2.0 * rho + 2.0 * math.sqrt(12.0 * eps + 4.0 * normerr) + 1e-12
        chord = np.where(radius >= np.pi, 2.5, 2.0 * np.sin(np.minimum(radius, np.pi) / 2.0))
        tau = 32.0 * eps
        pools = self._tree.query_ball_point(centre, chord, return_sorted=True)
        counts = np.fromiter((len(p) for p in pools), dtype=np.int64, count=len(pools))
        flat = np.fromiter((i for p in pools for i in p), dtype=np.int64, count=int(counts.sum()))
        starts = np.concatenate([[0], np.cumsum(counts)])
        keep = np.ones(flat.size, dtype=bool)
        # prune cell by cell group of equal pool size bands (vectorised with padding)
        ncell = counts.size
        step = max(1, (1 << 20) // max(1, int(counts.max()) ** 2))
        for s in range(0, ncell, step):
            e = min(ncell, s + step)
            cnt = counts[s:e]
            width = int(cnt.max())
            idx = np.zeros((e - s, width), dtype=np.int64)
            valid = np.arange(width)[None, :] < cnt[:, None]
            rows = np.repeat(np.arange(e - s), cnt)
            cols = np.arange(starts[e] - starts[s]) - np.repeat(starts[s:e] - starts[s], cnt)
            idx[rows, cols] = flat[starts[s] : starts[e]]
            cd = np.einsum("cvd,cmd->cvm", corners[s:e], pts[idx])  # (cells, 4, width)
            # p beats q on every corner: min_v (cd[v, p] - cd[v, q]) > tau
            diff = cd[:, :, :, None] - cd[:, :, None, :]  # (cells, 4, p, q)
            beats = (diff.min(axis=1) > tau) & valid[:, :, None]
            dominated = beats.any(axis=1) & valid
            keep[starts[s] : starts[e]] = ~dominated[rows, cols]
        kept_counts = np.add.reduceat(keep.astype(np.int64), starts[:-1]) if flat.size else counts
        kept_counts = np.where(counts > 0, kept_counts, 0)
        if (kept_counts == 0).any():  # impossible by the proof; guard against silent wrong answers
            raise RuntimeError("NearestIndex: a cell lost all candidates (please report this bug)")
        indptr = np.concatenate([[0], np.cumsum(kept_counts)]).astype(np.int64)
        return _Table(indptr, flat[keep].astype(np.int64))

    def stats(self, dtype: str = "float64") -> dict:
        """Summary of the candidate lists: cells, mean and max candidates per cell.

        Examples
        --------
        >>> s = NearestIndex(np.eye(3)).stats()
        >>> s["cells"], s["max_candidates"] <= 3
        (6, True)
        """
        t = self.table(dtype)
        counts = np.diff(t.indptr)
        return {
            "cells": int(counts.size),
            "grid": self.grid,
            "mean_candidates": float(counts.mean()),
            "max_candidates": int(counts.max()),
        }

    # -- queries ---------------------------------------------------------------------------------------
    def query(self, x: Any, *, backend: str = "auto"):
        """Index of the nearest codeword of each query (lowest index among exact ties).

        Parameters
        ----------
        x : ndarray or Tensor of shape (..., 3)
            Non-zero query vectors (any norm). float16/bfloat16/int inputs are computed in float32.
        backend : {"auto", "numpy", "numba", "torch"}
            Implementation: numpy input uses the compiled kernel when numba is installed ("auto"), else
            vectorised numpy; torch input always uses the batched torch gather (any device).

        Returns
        -------
        ndarray or Tensor of shape (...,), int64
            Same kind and device as ``x``; identical to :func:`brute_force_nearest`.

        Examples
        --------
        >>> import numpy as np
        >>> NearestIndex(np.eye(3)).query(np.array([[0.2, 0.1, 0.9], [1.0, 1.0, 1.0]])).tolist()
        [2, 0]
        """
        if backend not in ("auto", "numpy", "numba", "torch"):
            raise ValueError(f"backend must be one of 'auto', 'numpy', 'numba', 'torch'; got {backend!r}")
        kernel = _numba_kernel() if backend in ("auto", "numba") and not is_torch(x) else None
        if backend == "numba" and kernel is None:
            raise ValueError("backend 'numba' needs numpy input and numba installed (pip install numba)")
        flat, shape = _check_queries(x, zeros=kernel is None)
        dtype = "float64" if flat.dtype in (np.float64, torch.float64) else "float32"
        t = self.table(dtype)
        if is_torch(flat):
            if backend in ("numpy", "numba"):
                raise ValueError(f"backend {backend!r} needs a numpy input; got a torch tensor")
            return self._query_torch(flat.detach(), t).reshape(shape)
        if backend == "torch":
            return self._query_torch(torch.from_numpy(np.ascontiguousarray(flat)), t).numpy().reshape(shape)
        pts = self._points_numpy(flat.dtype)
        if kernel is not None:
            out = np.empty(flat.shape[0], dtype=np.int64)
            kernel(np.ascontiguousarray(flat), t.coords(pts), t.indptr, t.indices, self.grid, out)
            if out.size and out.min() < 0:
                _raise_zero(int(np.argmin(out)))
            return out.reshape(shape)
        out = np.empty(flat.shape[0], dtype=np.int64)
        for s in range(0, flat.shape[0], _CHUNK):
            xq = flat[s : s + _CHUNK]
            cand = t.dense[_cells(xq, self.grid)]  # (n, width)
            d = _dots(xq[:, None, :], pts[cand])
            out[s : s + _CHUNK] = np.take_along_axis(cand, np.argmax(d, axis=1)[:, None], axis=1)[:, 0]
        return out.reshape(shape)

    def _points_numpy(self, dtype):
        key = ("np", np.dtype(dtype).name)
        if key not in self._points_as:
            self._points_as[key] = np.ascontiguousarray(self.points.astype(dtype))
        return self._points_as[key]

    def _query_torch(self, flat, t: _Table):
        key = ("torch", str(flat.dtype), str(flat.device))
        if key not in self._points_as:
            self._points_as[key] = torch.from_numpy(self.points.copy()).to(
                dtype=flat.dtype, device=flat.device
            )
        pts = self._points_as[key]
        dense = t.dense_torch(flat.device)
        out = torch.empty(flat.shape[0], dtype=torch.int64, device=flat.device)
        chunk = _CHUNK if flat.device.type == "cpu" else (1 << 24) // max(1, t.width)
        with torch.no_grad():
            for s in range(0, flat.shape[0], chunk):
                xq = flat[s : s + chunk]
                cand = dense[_cells(xq, self.grid)]
                d = _dots(xq[:, None, :], pts[cand])
                out[s : s + chunk] = torch.gather(cand, 1, torch.argmax(d, dim=1, keepdim=True))[:, 0]
        return out


# ----------------------------------------------------------------------------------------------------------
# spherical Fibonacci inverse mapping
# ----------------------------------------------------------------------------------------------------------
_PHI = (1.0 + math.sqrt(5.0)) / 2.0
_FIB_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _fibonacci_points(n: int) -> np.ndarray:
    from spherequant.codebook import fibonacci  # same formula and point order as the codebook

    return np.asarray(fibonacci(n).points)


def _fibonacci_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Points (n, 3) and padded Delaunay-neighbour table (n, max_degree) of ``fibonacci(n)`` (cached)."""
    if n not in _FIB_CACHE:
        from scipy.spatial import ConvexHull

        pts = _fibonacci_points(n)
        if n <= 4:  # every pair is a Voronoi neighbour
            adj = np.array([[j for j in range(n) if j != i] or [i] for i in range(n)], dtype=np.int64)
        else:
            simp = ConvexHull(pts).simplices
            e = np.concatenate([simp[:, [0, 1]], simp[:, [1, 2]], simp[:, [2, 0]]])
            e = np.unique(np.sort(e, axis=1), axis=0)
            e = np.concatenate([e, e[:, ::-1]])
            e = e[np.lexsort((e[:, 1], e[:, 0]))]
            deg = np.bincount(e[:, 0], minlength=n)
            adj = np.repeat(np.arange(n)[:, None], deg.max(), axis=1)  # pad with self
            start = np.concatenate([[0], np.cumsum(deg)[:-1]])
            adj[e[:, 0], np.arange(e.shape[0]) - start[e[:, 0]]] = e[:, 1]
        if len(_FIB_CACHE) > 8:
            _FIB_CACHE.pop(next(iter(_FIB_CACHE)))
        _FIB_CACHE[n] = (pts, adj)
    return _FIB_CACHE[n]


def _keinert_guess(u: np.ndarray, n: int, dtype=np.float64) -> np.ndarray:
    """Nearest of the 4 lattice neighbours in (phi, z) (Keinert et al. 2015); u unit rows (N, 3).

    ``dtype`` is the working precision (float64 in use; float32 only to demonstrate its failure).
    """
    u = u.astype(dtype)
    one = dtype(1.0)
    two_pi = dtype(2.0 * np.pi)
    g = dtype(_PHI - 1.0)
    phi = np.arctan2(u[:, 1], u[:, 0])
    z = np.clip(u[:, 2], -one, one)
    # zone number: which pair of consecutive Fibonacci numbers spans the local lattice
    arg = np.maximum(
        dtype(n * np.pi * math.sqrt(5.0)) * (one - z * z), dtype(1e-300 if dtype == np.float64 else 1e-30)
    )
    k = np.maximum(2.0, np.floor(np.log(arg) / dtype(math.log(_PHI * _PHI))))
    fk = np.power(dtype(_PHI), k) / dtype(math.sqrt(5.0))
    f0 = np.round(fk)
    f1 = np.round(fk * dtype(_PHI))

    def dphi(f):  # 2 pi (f * g mod 1), shifted into a signed small value
        t = (f + one) * g
        return two_pi * (t - np.floor(t)) - two_pi * g

    b00, b01 = dphi(f0), dphi(f1)
    b10, b11 = dtype(-2.0) * f0 / dtype(n), dtype(-2.0) * f1 / dtype(n)
    det = b00 * b11 - b01 * b10
    rz = z - (one - one / dtype(n))
    c0 = np.floor((b11 * phi - b01 * rz) / det)
    c1 = np.floor((-b10 * phi + b00 * rz) / det)
    best = np.zeros(u.shape[0], dtype=np.int64)
    bestd = np.full(u.shape[0], -np.inf, dtype=dtype)
    for s in range(4):
        a0, a1 = c0 + (s % 2), c1 + (s // 2)
        zc = b10 * a0 + b11 * a1 + (one - one / dtype(n))
        zc = np.clip(zc, -one, one) * 2 - zc  # reflect overshoots back onto the sphere
        i = np.clip(np.floor(dtype(n) * dtype(0.5) - zc * dtype(n) * dtype(0.5)), 0, n - 1).astype(np.int64)
        zi = one - (dtype(2.0) * i.astype(dtype) + one) / dtype(n)
        t = i.astype(dtype) * g
        ph = two_pi * (t - np.floor(t))
        r = np.sqrt(np.clip(one - zi * zi, 0, None))
        d = (u[:, 0] * r * np.cos(ph) + u[:, 1] * r * np.sin(ph)) + u[:, 2] * zi
        better = d > bestd
        best = np.where(better, i, best)
        bestd = np.where(better, d, bestd)
    return best


def fibonacci_nearest(x: Any, n: int):
    """Nearest point of ``spherequant.codebook.fibonacci(n)`` in O(1) per query.

    A first guess comes from the inverse spherical Fibonacci mapping of Keinert et al. (2015): locate the
    query's cell of the local Fibonacci lattice in ``(phi, z)`` and take the nearest of its 4 corners. The
    guess is then certified exactly: a codeword is the nearest iff no Voronoi (Delaunay) neighbour has a
    larger dot product, so the search walks to a better neighbour until none exists (greedy walks on the
    Delaunay graph end at the global nearest; ties go to the lowest index as in
    :func:`brute_force_nearest`). On the sphere the guess is almost always right, so this is O(1).

    The lattice step needs float64: its phase ``2 pi frac(i / golden ratio)`` and zone numbers lose all
    accuracy in float32 for ``n`` around ``10**5`` and beyond, so float32 queries are upcast for it (the
    final comparison still uses the query dtype, identical to brute force).

    Parameters
    ----------
    x : ndarray or Tensor of shape (..., 3)
        Non-zero queries. Torch tensors are computed on the CPU and returned on their device.
    n : int
        Codebook size, ``n >= 1``. The neighbour table (a convex hull) is built once per ``n`` and cached.

    Returns
    -------
    ndarray or Tensor of shape (...,), int64
        Identical to ``brute_force_nearest(fibonacci(n).points, x)``.

    Examples
    --------
    >>> import numpy as np
    >>> int(fibonacci_nearest(np.array([0.0, 0.0, 1.0]), 1000))
    0
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    n = int(n)
    flat, shape = _check_queries(x)
    dev = flat.device if is_torch(flat) else None
    xq = flat.detach().cpu().numpy() if dev is not None else flat
    pts, adj = _fibonacci_tables(n)
    u = xq.astype(np.float64)
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    cur = _keinert_guess(u, n)
    pq = pts.astype(xq.dtype)
    active = np.arange(xq.shape[0])
    for _ in range(4 * n + 8):  # each step strictly improves (dot, -index); bounded by n
        if active.size == 0:
            break
        nb = np.concatenate([cur[active, None], adj[cur[active]]], axis=1)  # (m, 1 + deg)
        d = _dots(xq[active, None, :], pq[nb])
        top = d.max(axis=1, keepdims=True)
        cand = np.where(d == top, nb, n)
        new = cand.min(axis=1)
        moved = new != cur[active]
        cur[active] = new
        active = active[moved]
    out = cur.reshape(shape)
    return torch.as_tensor(out, device=dev) if dev is not None else out
