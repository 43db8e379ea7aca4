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

The compiled kernel (numba, a core dependency on CPython) answers float64 queries from float32 copies of
the candidates and re-checks in float64 whenever the float32 top-2 margin is below a rigorous error bound
(``_filter_threshold``; under 1% of random queries for ``K <= 16384``), so it too returns the float64
argmax. Queries whose largest ``|x_i|`` is so small or so large that their dot products may underflow or
overflow (outside ``[1e-280, 1e280]`` for float64, ``[2**-60, 2**60]`` for float32) void the margins and
are answered by brute force on every path.

The candidate tables are built by compiled code too (``_build_impl``: the candidate rule of the numpy
path, on codewords bucketed by cube-map cell; the tests compare the two list by list). Every compiled
function is cached on disk by numba (``cache=True``): in ``$NUMBA_CACHE_DIR`` when set, else next to this
file when that folder is writable, else in the user cache (``~/.cache/numba``), so only a machine's
first process compiles (seconds); later processes load the machine code (a few tenths of a second on the
first call, no compilation).

Without numba (PyPy, or a platform without numba wheels such as musl/Alpine Linux, where spherequant is
installed with ``--no-deps``) every function works unchanged, with identical results, on the vectorised
numpy and torch paths, whose speed ``benchmarks/lookup.py`` reports next to the compiled kernel's
(``index_numpy``, ``index_torch``: around cKDTree's, an order of magnitude below the kernel); the table
construction then uses a KD-tree and vectorised pruning (tens of times slower).

Zero vectors have no direction: every function here raises ``ValueError`` on an exact zero query.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.spatial import ConvexHull, cKDTree

from spherequant._backend import as_float_array, check_vectors, is_torch
from spherequant._capscan import CapScan
from spherequant._capscan import compiled as _capscan_compiled
from spherequant._points import PHI, fibonacci_points
from spherequant._validation import check_choice, check_int, check_real

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

#: Up to this many codewords the exact-repeat test is numpy's ``unique`` (above: the compiled voxel hash).
_REPEAT_NUMPY_MAX = 256
_CHUNK = 1 << 16  # queries per vectorised chunk (bounds the (chunk, candidates, 3) gather)


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def _check_points(points: Any) -> np.ndarray:
    """Validate a codebook as a float64 numpy ``(K, 3)`` array of unit rows (norm within 1e-6 of 1)."""
    return _checked_points(points)[0]


def _checked_points(points: Any) -> tuple[np.ndarray, float]:
    """:func:`_check_points` and the largest deviation of a row's norm from 1 (computed once)."""
    if is_torch(points):
        points = as_float_array(points, "points").detach().cpu().numpy()
    p = check_vectors(points, "points")
    if p.ndim != 2:
        raise ValueError(f"points must have shape (K, 3), got {tuple(p.shape)}")
    if p.shape[0] == 0:
        raise ValueError("points must contain at least one codeword, got K = 0")
    p = np.asarray(p, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", p, p))
    bad = np.abs(norms - 1.0) > 1e-6
    if bad.any():
        norms = np.linalg.norm(p, axis=1)  # scale-safe, for the message
        k = int(np.argmax(np.abs(norms - 1.0)))
        raise ValueError(f"points must be unit vectors; row {k} has norm {norms[k]:.6g}")
    repeat = _numba_repeat() if p.shape[0] > _REPEAT_NUMPY_MAX else None
    if repeat is not None:
        dup = int(repeat(p, min(_MAX_VOXELS, max(1, round(p.shape[0] ** (1.0 / 3.0))))))
    else:
        _, first = np.unique(p, axis=0, return_index=True)
        dup = min(set(range(len(p))) - set(first.tolist())) if len(first) < len(p) else -1
    if dup >= 0:  # a codeword twice: its index would be ambiguous
        raise ValueError(f"points must not repeat a codeword: row {dup} repeats an earlier row")
    # used bit for bit (no renormalisation), so every path compares the same numbers
    return p, float(np.abs(norms - 1.0).max())


def _raise_zero(k: int):
    raise ValueError(
        f"x contains a zero vector (flat row {k}); its direction, hence its nearest codeword, is undefined"
    )


def _check_queries(x: Any, *, zeros: bool = True, finite: bool = True):
    """Validate queries; return (flat (N, 3) array/tensor in a float dtype >= float32, batch shape).

    With ``zeros=False`` (``finite=False``) the caller checks for zero rows (NaN/inf entries) itself.
    """
    x = check_vectors(x, "x", finite=finite)
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
    grid = check_int(grid, "grid", minimum=1)
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


def _cell_corners(g: int, expand: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit corners (6 g^2, 4, 3) and centres (6 g^2, 3) of every cell, expanded by ``expand`` in s.

    The same floating-point expressions as the compiled ``_edges_impl`` and ``_cell_centre_impl``, so
    both constructions compare the same numbers (corner order: (lo, lo), (lo, hi), (hi, lo), (hi, hi)).
    """
    edges = np.arange(g + 1, dtype=np.float64) / g
    lo = _a_of_s(edges[:-1] - expand)
    hi = _a_of_s(edges[1:] + expand)
    out = np.empty((6, g, g, 4, 3))
    for face in range(6):
        k, sign = face // 2, (1.0 if face % 2 == 0 else -1.0)
        j1, j2 = (k + 1) % 3, (k + 2) % 3
        for c, (ai, bj) in enumerate(((lo, lo), (lo, hi), (hi, lo), (hi, hi))):
            av, bv = np.broadcast_arrays(ai[:, None], bj[None, :])
            nrm = np.sqrt(1.0 + av * av + bv * bv)
            out[face, :, :, c, k] = sign / nrm
            out[face, :, :, c, j1] = av / nrm
            out[face, :, :, c, j2] = bv / nrm
    out = out.reshape(6 * g * g, 4, 3)
    total = ((out[:, 0] + out[:, 1]) + out[:, 2]) + out[:, 3]
    nrm = np.sqrt((total[:, 0] * total[:, 0] + total[:, 1] * total[:, 1]) + total[:, 2] * total[:, 2])
    return out, total / nrm[:, None]


def _anchor_keep(cand, corners, counts, tau: float) -> np.ndarray:
    """Vectorised candidate rule of ``_prune_impl``: which pool members no anchor dominates.

    ``cand`` (cells, width, 3): the pool members of each cell in ascending codeword index (padded rows
    past ``counts``), ``corners`` (cells, 4, 3). The anchors are ``p*`` (largest smallest corner dot
    product) and each corner's best member, the lowest index among exact ties (``argmax`` returns the
    first). Returns a (cells, width) mask.
    """
    valid = np.arange(cand.shape[1])[None, :] < counts[:, None]
    cd = (
        corners[:, :, None, 0] * cand[:, None, :, 0] + corners[:, :, None, 1] * cand[:, None, :, 1]
    ) + corners[:, :, None, 2] * cand[:, None, :, 2]  # (cells, 4, width)
    cd = np.where(valid[:, None, :], cd, -np.inf)
    star = np.argmax(cd.min(axis=1), axis=1)
    anchors = np.concatenate([star[:, None], np.argmax(cd, axis=2)], axis=1)  # (cells, 5)
    acd = np.take_along_axis(cd, anchors[:, None, :], axis=2)  # (cells, 4, 5)
    beats = (acd[:, :, :, None] - cd[:, :, None, :] > tau).all(axis=1)  # (cells, 5, width)
    return valid & ~beats.any(axis=1)


def _angle(a, b):
    """Angle between unit vectors (last axis), atan2 form."""
    return np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), np.sum(a * b, axis=-1))


# ----------------------------------------------------------------------------------------------------------
# compiled kernels (optional)
# ----------------------------------------------------------------------------------------------------------
#: Queries per block of the compiled kernels: the cells of a block are computed in one vectorised pass and
#: their candidate rows prefetched before any is read, so the cache misses of a block overlap.
_BLOCK = 64
#: Tables larger than this (bytes) are prefetched; smaller ones stay in cache anyway.
_PREFETCH_BYTES = 1 << 18
#: Error of the float32 pre-selection, per unit of ``|x| / max_i |x_i|`` (see ``_filter_threshold``).
_U32 = 2.0**-24
_U64 = 2.0**-53
_FILTER_SCALE = 1.001 * 2.0 * (5.0001 * _U32 + 3.0001 * _U64) * (1.0 + 1e-6)
_FILTER_SLACK = 1e-30
#: Queries whose largest |coordinate| lies outside these ranges (float64 / float32 queries) are answered by
#: :func:`brute_force_nearest`: their dot products may underflow or overflow, which voids the error bounds
#: of the candidate tables and of the float32 pre-selection. Everything else takes the fast path.
_SCALE64 = (1e-280, 1e280)
_SCALE32 = (2.0**-60, 2.0**60)

_KERNELS: dict = {}
#: Queries per codeword after which ``NearestIndex.query(method="auto")`` stops scanning and builds the
#: candidate table: about the number at which the table has paid for itself (``python benchmarks/lookup.py``
#: prints it per size: a few tens of queries per codeword). Rent-or-buy, so "auto" costs at most about
#: twice the better of the two choices in hindsight.
TABLE_AFTER = 32.0


def _filter_threshold(t_norm):
    """Top-2 margin above which the float32 pre-selection provably gives the float64 argmax.

    For a float64 query ``x`` with ``M = max_i |x_i|`` the kernel compares ``t = x / M`` (``|t_i| <= 1``)
    rounded to float32 with float32 codewords. Every float32 dot product is within ``E32 = 5.0001 u32 |t|
    (1 + 1e-6)`` of the exact ``<t, c>`` (query and codeword rounding ``2 u32``, three float32 operations
    ``gamma_3``, ``|c| <= 1 + 1e-6``), and the float64 value of brute force, divided by ``M``, within ``E64 =
    3.0001 u64 |t| (1 + 1e-6)`` of it. If the best float32 dot exceeds the second best by more than
    ``2 (E32 + E64)`` (times 1.001 for the rounding of ``|t|`` and of the margin itself, plus an absolute
    ``1e-30`` for subnormals), its codeword's float64 dot product strictly exceeds every other candidate's,
    so it is the float64 argmax (unique, no tie to break).
    """
    return _FILTER_SCALE * t_norm + _FILTER_SLACK


def _make_prefetch():
    """An LLVM ``prefetch`` intrinsic for 1-d arrays, or a no-op where it cannot be built."""
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def prefetch(typingctx, arr, idx):  # pragma: no cover - compiled
        if not isinstance(arr, types.Array) or arr.ndim != 1 or not isinstance(idx, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            aryty = signature.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
            i8p = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
            builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
            return context.get_dummy_value()

        return types.void(arr, idx), codegen

    global _prefetch
    _prefetch = prefetch
    try:
        _numba.njit(nogil=True, cache=True)(_probe_impl)(np.zeros(1))
        return prefetch
    except Exception:  # pragma: no cover - older LLVM (typed pointers): run without prefetching

        @_numba.njit(inline="always")
        def noop(a, i):
            return None

        return noop


def _probe_impl(a):  # pragma: no cover - compiled
    """Compiles only if the prefetch intrinsic works with this LLVM (cached like the kernels)."""
    _prefetch(a, 0)
    return a[0]


def _kernel_width(width: int) -> int:
    """Padded row width of a table whose largest cell has ``width`` candidates.

    At least 8 and a multiple of 4, so rows are whole 64-byte cache lines. The kernels are specialised
    (compiled with a constant width, loops unrolled) for the common padded widths 8, 12 and 16; wider
    tables share one kernel that reads the width at run time (fewer compilations).
    """
    return max(8, -(-width // 4) * 4)


def _cells_pass_impl(x, s0, m, g, lo, hi, X0, X1, X2, Y0, Y1, Y2, T, cells):  # pragma: no cover - compiled
    """Cells, scaled float32 queries and filter thresholds of queries s0 .. s0+m-1 (vectorised).

    ``T`` is the filter threshold, ``inf`` for a zero row and NaN for a row whose largest
    ``|x_i|`` lies outside ``(lo, hi)``. Returns the number of rows with a non-finite entry
    (``x_i - x_i != 0``) and the number of rows with a non-finite ``T``. Every cell is in range
    whatever the input (NaN-safe clamps), so bad rows cannot cause out-of-bounds reads.
    """
    for n in range(m):
        X0[n] = x[s0 + n, 0]
        X1[n] = x[s0 + n, 1]
        X2[n] = x[s0 + n, 2]
    gf = np.float64(g)
    gm = np.float64(g - 1)
    bad = 0
    special = 0
    for n in range(m):
        x0 = X0[n]
        x1 = X1[n]
        x2 = X2[n]
        bad += ((x0 - x0) + (x1 - x1) + (x2 - x2)) != 0.0
        a0 = abs(x0)
        a1 = abs(x1)
        a2 = abs(x2)
        c0 = (a0 >= a1) & (a0 >= a2)
        c1 = a1 >= a2
        xk = x0 if c0 else (x1 if c1 else x2)
        ya = x1 if c0 else (x2 if c1 else x0)
        yb = x2 if c0 else (x0 if c1 else x1)
        face = (0.0 if c0 else (2.0 if c1 else 4.0)) + (1.0 if xk < 0 else 0.0)
        big = abs(xk)
        inv = 1.0 / big
        a = ya * inv
        b = yb * inv
        pa = 0.5 * np.sqrt(1.0 + 3.0 * abs(a))
        pb = 0.5 * np.sqrt(1.0 + 3.0 * abs(b))
        sa = pa if a >= 0 else 1.0 - pa
        sb = pb if b >= 0 else 1.0 - pb
        fi = np.floor(sa * gf)
        fj = np.floor(sb * gf)
        fi = fi if fi > 0.0 else 0.0  # NaN -> 0
        fj = fj if fj > 0.0 else 0.0
        fi = fi if fi < gm else gm
        fj = fj if fj < gm else gm
        cells[n] = np.int32((face * gf + fi) * gf + fj)
        t0 = x0 * inv
        t1 = x1 * inv
        t2 = x2 * inv
        Y0[n] = np.float32(t0)
        Y1[n] = np.float32(t1)
        Y2[n] = np.float32(t2)
        thr = _FILTER_SCALE * np.sqrt(t0 * t0 + t1 * t1 + t2 * t2) + _FILTER_SLACK
        ok = (big > lo) & (big < hi)
        T[n] = thr if ok else (np.inf if big == 0.0 else np.nan)
        special += not ok
    return bad, special


#: Options of every compiled kernel. ``cache=True``: the machine code is stored on disk (numba's cache,
#: next to this file or, where that is read-only, in the user cache ``$NUMBA_CACHE_DIR`` or
#: ``~/.cache/numba``), so only the first process on a machine pays the compilation.
_KOPTS = dict(nogil=True, boundscheck=False, fastmath=False, error_model="numpy", cache=True)
#: Set on the first kernel request: the prefetch intrinsic and the compiled steps of the kernels (see
#: ``_kernel_steps``). The kernels refer to them as module globals (not closure cells), so their on-disk
#: cache key stays the same across processes.
_prefetch = None
_cells_pass = None
_scratch = None
_prefetch_rows = None
_best_in_row = None
_mark_special = None
_recheck = None


def _scratch_impl(block):  # pragma: no cover - compiled
    """Per-block buffers of ``_cells_pass_impl``: ``X0, X1, X2`` (float64), ``Y0, Y1, Y2`` (float32),
    ``T`` (float64) and ``cells`` (int32), each of length ``block``."""
    X0 = np.empty(block)
    X1 = np.empty(block)
    X2 = np.empty(block)
    Y0 = np.empty(block, np.float32)
    Y1 = np.empty(block, np.float32)
    Y2 = np.empty(block, np.float32)
    T = np.empty(block)
    cells = np.empty(block, np.int32)
    return X0, X1, X2, Y0, Y1, Y2, T, cells


def _prefetch_rows_impl(rf, cells, m, stride):  # pragma: no cover - compiled
    """Prefetch the packed rows (``stride`` float32 each) of ``cells[:m]``, one 64-byte line at a time."""
    for n in range(m):
        base = np.int64(cells[n]) * stride
        for off in range(0, stride, 16):
            _prefetch(rf, base + off)


def _best_in_row_impl(y0, y1, y2, rf, base, W, d):  # pragma: no cover - compiled
    """Best and second-best dot product of ``(y0, y1, y2)`` with the ``W`` codewords of the packed row at
    ``base`` (``d``: scratch of length ``W``), and the slot of the best: ``(b1, b2, bj)``.

    Strict ``>`` in ascending slot order: the lowest slot (lowest codeword index) wins ties; the NaN
    padding never wins.
    """
    for j in range(W):
        d[j] = (y0 * rf[base + j] + y1 * rf[base + W + j]) + y2 * rf[base + 2 * W + j]
    b1 = d[0]
    b2 = np.float32(-np.inf)
    bj = 0
    for j in range(1, W):
        v = d[j]
        gt = v > b1  # False for the NaN padding
        second = b1 if gt else v
        b2 = second if second > b2 else b2
        b1 = v if gt else b1
        bj = j if gt else bj
    return b1, b2, bj


def _mark_special_impl(T, m, s0, out, first_zero):  # pragma: no cover - compiled
    """Mark the zero rows (``T = inf``: ``-1``) and extreme-scale rows (``T`` NaN: ``-2``) of a block in
    ``out``; returns the updated first zero row and the number of extreme rows."""
    extreme = 0
    for n in range(m):
        if T[n] == np.inf:
            out[s0 + n] = -1
            if first_zero < 0:
                first_zero = s0 + n
        elif T[n] != T[n]:
            out[s0 + n] = -2
            extreme += 1
    return first_zero, extreme


def _recheck_impl(x0, x1, x2, t, c, pts, indptr, indices):  # pragma: no cover - compiled
    """Exact float64 argmax of query ``(x0, x1, x2)`` over the CSR candidates of cell ``c`` (the
    expression of brute force; lowest index among ties), ``-1`` for a zero query and ``-2`` where the
    filter threshold ``t`` is NaN (extreme scale: brute force, by the caller). ``pts``: the float64
    codewords (K, 3), read through ``indices`` (the re-check is rare: no per-table copy)."""
    if x0 == 0 and x1 == 0 and x2 == 0:
        return np.int64(-1)
    if t != t:
        return np.int64(-2)
    s = indptr[c]
    e = indptr[c + 1]
    best = s
    p = indices[s]
    bestd = (x0 * pts[p, 0] + x1 * pts[p, 1]) + x2 * pts[p, 2]
    for k in range(s + 1, e):
        p = indices[k]
        v64 = (x0 * pts[p, 0] + x1 * pts[p, 1]) + x2 * pts[p, 2]
        if v64 > bestd:
            bestd = v64
            best = k
    return np.int64(indices[best])


def _kernel_steps():
    """Compile (lazily) the steps the kernels call, as module globals; the hot per-query steps are inlined
    (``inline="always"``) so the kernels' constant width reaches their loops."""
    global _prefetch, _cells_pass, _scratch, _prefetch_rows, _best_in_row, _mark_special, _recheck
    _prefetch = _make_prefetch()
    _cells_pass = _numba.njit(**_KOPTS)(_cells_pass_impl)
    _scratch = _numba.njit(inline="always", **_KOPTS)(_scratch_impl)
    _prefetch_rows = _numba.njit(inline="always", **_KOPTS)(_prefetch_rows_impl)
    _best_in_row = _numba.njit(inline="always", **_KOPTS)(_best_in_row_impl)
    _mark_special = _numba.njit(**_KOPTS)(_mark_special_impl)
    _recheck = _numba.njit(**_KOPTS)(_recheck_impl)


def _numba_kernel(width: int = 8):
    """Compiled query kernels ``{"exact", "filter"}`` for padded width ``width`` (``None`` without numba).

    The two kernels close over constants only (the width ``wc``, compiled in for the widths 8, 12 and 16,
    the block size and the scale ranges), so numba caches them on disk. Compiled on the first call in a
    machine's first process (a few seconds per kernel and width); later processes load the machine code
    from numba's on-disk cache (see ``_KOPTS``).
    """
    if _numba is None:
        return None
    wc = width if width in (8, 12, 16) else 0
    if wc in _KERNELS:
        return _KERNELS[wc]
    if _prefetch is None:
        _kernel_steps()
    block = _BLOCK
    (lo64, hi64), (lo32, hi32) = _SCALE64, _SCALE32

    @_numba.njit(**_KOPTS)
    def exact(x, g, rf, ri, w, pf, out):  # pragma: no cover - compiled
        """Argmax in the dtype of ``x`` over the packed float32 rows (float32 queries: exact as is).

        Also counts the queries whose best dot product is tied (``ties``; they go to the lowest index).
        """
        W = wc if wc > 0 else w
        stride = 4 * W
        N = x.shape[0]
        X0, X1, X2, Y0, Y1, Y2, T, cells = _scratch(block)
        d = np.empty(W, rf.dtype)
        bad = 0
        first_zero = -1
        extreme = 0
        ties = 0
        for s0 in range(0, N, block):
            m = min(N, s0 + block) - s0
            nb, special = _cells_pass(x, s0, m, g, lo32, hi32, X0, X1, X2, Y0, Y1, Y2, T, cells)
            bad += nb
            if pf:
                _prefetch_rows(rf, cells, m, stride)
            for n in range(m):
                base = np.int64(cells[n]) * stride
                b1, b2, bj = _best_in_row(x[s0 + n, 0], x[s0 + n, 1], x[s0 + n, 2], rf, base, W, d)
                ties += b1 == b2
                out[s0 + n] = ri[base + 3 * W + bj]
            if special:  # zero rows, or scales where the dot products may under/overflow
                first_zero, ext = _mark_special(T, m, s0, out, first_zero)
                extreme += ext
        return bad, first_zero, extreme, ties

    @_numba.njit(**_KOPTS)
    def filtered(x, g, rf, ri, w, pf, pts, indptr, indices, out):  # pragma: no cover - compiled
        """float64 queries: float32 pre-selection, exact float64 argmax where its margin is too small."""
        W = wc if wc > 0 else w
        stride = 4 * W
        N = x.shape[0]
        X0, X1, X2, Y0, Y1, Y2, T, cells = _scratch(block)
        d = np.empty(W, np.float32)
        bad = 0
        first_zero = -1
        rechecked = 0
        extreme = 0
        for s0 in range(0, N, block):
            m = min(N, s0 + block) - s0
            bad += _cells_pass(x, s0, m, g, lo64, hi64, X0, X1, X2, Y0, Y1, Y2, T, cells)[0]
            if pf:
                _prefetch_rows(rf, cells, m, stride)
            for n in range(m):
                c = np.int64(cells[n])
                base = c * stride
                b1, b2, bj = _best_in_row(Y0[n], Y1[n], Y2[n], rf, base, W, d)
                if np.float64(b1) - np.float64(b2) > T[n]:
                    out[s0 + n] = ri[base + 3 * W + bj]
                    continue
                rechecked += 1
                r = _recheck(X0[n], X1[n], X2[n], T[n], c, pts, indptr, indices)
                out[s0 + n] = r
                if r == -1 and first_zero < 0:
                    first_zero = s0 + n
                extreme += r == -2
        return bad, first_zero, extreme, rechecked

    _KERNELS[wc] = {"exact": exact, "filter": filtered}
    return _KERNELS[wc]


def _voxels_impl(pts, nv):  # pragma: no cover - compiled
    """Counting sort of the codewords into ``nv**3`` voxels of ``[-1, 1]^3``: ``(vstart, order)``.

    Voxel ``v`` holds ``order[vstart[v]:vstart[v + 1]]``, in ascending codeword index.
    """
    k = pts.shape[0]
    vox = np.empty(k, np.int64)
    for p in range(k):
        ix = min(nv - 1, max(0, int((pts[p, 0] + 1.0) * 0.5 * nv)))
        iy = min(nv - 1, max(0, int((pts[p, 1] + 1.0) * 0.5 * nv)))
        iz = min(nv - 1, max(0, int((pts[p, 2] + 1.0) * 0.5 * nv)))
        vox[p] = (ix * nv + iy) * nv + iz
    vstart = np.zeros(nv * nv * nv + 1, np.int64)
    for p in range(k):
        vstart[vox[p] + 1] += 1
    for v in range(nv * nv * nv):
        vstart[v + 1] += vstart[v]
    fill = vstart[:-1].copy()
    order = np.empty(k, np.int64)
    for p in range(k):  # ascending p within each voxel
        order[fill[vox[p]]] = p
        fill[vox[p]] += 1
    return vstart, order


def _repeat_impl(pts, nv):  # pragma: no cover - compiled
    """Smallest row index that repeats an earlier row exactly (-1 if none); voxel hash, ``O(K)``.

    Equal rows fall into the same voxel (the voxel index is a function of the coordinates), so only
    pairs within a voxel are compared.
    """
    vstart, order = _voxels(pts, nv)
    first = -1
    for v in range(vstart.size - 1):
        for s in range(vstart[v], vstart[v + 1]):
            p = order[s]
            for t in range(s + 1, vstart[v + 1]):
                q = order[t]  # q > p
                if pts[p, 0] == pts[q, 0] and pts[p, 1] == pts[q, 1] and pts[p, 2] == pts[q, 2]:
                    if first < 0 or q < first:
                        first = q
    return first


def _vrange_impl(c, r, nv):  # pragma: no cover - compiled
    """Voxel index range ``[lo, hi)`` along one axis meeting ``[c - r, c + r]`` (voxels of ``[-1, 1]``).

    The interval is widened by 1e-9, far beyond the rounding of a voxel index (~1e-16), so a codeword
    within ``r`` of ``c`` along the axis always lies in the range.
    """
    lo = int(np.floor((c - r - 1e-9 + 1.0) * 0.5 * nv))
    hi = int(np.floor((c + r + 1e-9 + 1.0) * 0.5 * nv)) + 1
    return max(0, lo), min(nv, hi)


def _voxel_copy_impl(pts, nv):  # pragma: no cover - compiled
    """``(vstart, order, spts)``: the voxel sort of ``_voxels_impl`` and the codewords copied in voxel
    order (``spts[t] = pts[order[t]]``), so the block scans read memory sequentially."""
    k = pts.shape[0]
    vstart, order = _voxels(pts, nv)
    spts = np.empty((k, 3))
    for t in range(k):
        spts[t, 0] = pts[order[t], 0]
        spts[t, 1] = pts[order[t], 1]
        spts[t, 2] = pts[order[t], 2]
    return vstart, order, spts


def _edges_impl(g, expand):  # pragma: no cover - compiled
    """``_a_of_s`` of the expanded cell edges along a face axis (inlined): ``(edge_lo, edge_hi)``, each of
    length ``g``."""
    edge_lo = np.empty(g)
    edge_hi = np.empty(g)
    for i in range(g):
        s_ = i / g - expand
        edge_lo[i] = (4.0 * s_ * s_ - 1.0) / 3.0 if s_ >= 0.5 else (1.0 - 4.0 * (1.0 - s_) ** 2) / 3.0
        s_ = (i + 1) / g + expand
        edge_hi[i] = (4.0 * s_ * s_ - 1.0) / 3.0 if s_ >= 0.5 else (1.0 - 4.0 * (1.0 - s_) ** 2) / 3.0
    return edge_lo, edge_hi


def _cell_centre_impl(face, alo, ahi, blo, bhi, corner):  # pragma: no cover - compiled
    """Fill ``corner`` (4, 3) with the unit corners of the expanded cell ``[alo, ahi] x [blo, bhi]`` of
    ``face``; returns its centre ``(c0, c1, c2)``, the normalised sum of the corners."""
    kk = face // 2
    sign = 1.0 if face % 2 == 0 else -1.0
    j1 = (kk + 1) % 3
    j2 = (kk + 2) % 3
    c0 = 0.0
    c1 = 0.0
    c2 = 0.0
    for c in range(4):
        av = alo if c < 2 else ahi
        bv = blo if c % 2 == 0 else bhi
        nrm = np.sqrt(1.0 + av * av + bv * bv)
        corner[c, kk] = sign / nrm
        corner[c, j1] = av / nrm
        corner[c, j2] = bv / nrm
        c0 += corner[c, 0]
        c1 += corner[c, 1]
        c2 += corner[c, 2]
    nrm = np.sqrt(c0 * c0 + c1 * c1 + c2 * c2)
    return c0 / nrm, c1 / nrm, c2 / nrm


def _corner_rho_impl(c0, c1, c2, corner):  # pragma: no cover - compiled
    """Largest angle (radians) between the centre ``(c0, c1, c2)`` and the four rows of ``corner``."""
    rho = 0.0
    for c in range(4):
        x0 = c1 * corner[c, 2] - c2 * corner[c, 1]
        x1 = c2 * corner[c, 0] - c0 * corner[c, 2]
        x2 = c0 * corner[c, 1] - c1 * corner[c, 0]
        dt = c0 * corner[c, 0] + c1 * corner[c, 1] + c2 * corner[c, 2]
        rho = max(rho, np.arctan2(np.sqrt(x0 * x0 + x1 * x1 + x2 * x2), dt))
    return rho


def _cell_pool_impl(c0, c1, c2, rho, eta, big_r, nv, vstart, spts, gi, gd, pool):  # pragma: no cover
    """Pool of the cell with centre ``(c0, c1, c2)`` and corner angle ``rho``: the voxel-order positions of
    the codewords within the chord of ``a + 2 rho + eta`` of the centre, ``a`` the angle to the nearest
    codeword, written to ``pool``. Returns ``(m, nearest)``: the pool size and the nearest codeword's
    voxel-order position (``gi``, ``gd``: scratch). The construction's fallback for cells whose block of
    buckets cannot be certified.

    Three searches on the uniform voxel grid (codewords in voxel order, so scans read memory
    sequentially): the codewords of the voxels meeting the box of half-width ``big_r`` around the centre
    are gathered once; the nearest codeword is the closest gathered one if it lies within ``big_r`` (every
    codeword within ``big_r`` is in the box), otherwise boxes of doubling half-width are scanned until one
    holds a codeword within it; the pool is filtered from the gathered codewords when its chord is at
    most ``big_r``, else scanned from its own box. Box ranges are widened by 1e-9 (``_vrange_impl``), so
    the rounding of a voxel index (~1e-16) never drops a codeword; an overestimated nearest distance
    only enlarges the pool."""
    # gather the codewords of the voxels meeting the box of half-width big_r around the centre
    xlo, xhi = _vrange(c0, big_r, nv)
    ylo, yhi = _vrange(c1, big_r, nv)
    zlo, zhi = _vrange(c2, big_r, nv)
    ng = 0
    best = np.inf
    nearest = -1
    for ix in range(xlo, xhi):
        for iy in range(ylo, yhi):
            v0 = (ix * nv + iy) * nv
            for t in range(vstart[v0 + zlo], vstart[v0 + zhi]):
                d0 = spts[t, 0] - c0
                d1 = spts[t, 1] - c1
                d2 = spts[t, 2] - c2
                dd = d0 * d0 + d1 * d1 + d2 * d2
                gi[ng] = t
                gd[ng] = dd
                ng += 1
                if dd < best:
                    best = dd
                    nearest = t
    # nearest codeword to the centre: boxes of growing half-width until one lies within
    span = big_r
    while best > span * span and span < 4.0:
        span *= 2.0
        xlo, xhi = _vrange(c0, span, nv)
        ylo, yhi = _vrange(c1, span, nv)
        zlo, zhi = _vrange(c2, span, nv)
        for ix in range(xlo, xhi):
            for iy in range(ylo, yhi):
                v0 = (ix * nv + iy) * nv
                for t in range(vstart[v0 + zlo], vstart[v0 + zhi]):
                    d0 = spts[t, 0] - c0
                    d1 = spts[t, 1] - c1
                    d2 = spts[t, 2] - c2
                    dd = d0 * d0 + d1 * d1 + d2 * d2
                    if dd < best:
                        best = dd
                        nearest = t
    a = 2.0 * np.arcsin(min(1.0, np.sqrt(best) / 2.0))
    radius = a + 2.0 * rho + eta
    chord = 2.5 if radius >= np.pi else 2.0 * np.sin(radius / 2.0)
    r2 = chord * chord
    m = 0
    if chord <= big_r:  # the pool lies in the gathered box
        for q in range(ng):
            if gd[q] <= r2:
                pool[m] = gi[q]
                m += 1
        return m, nearest
    xlo, xhi = _vrange(c0, chord, nv)
    ylo, yhi = _vrange(c1, chord, nv)
    zlo, zhi = _vrange(c2, chord, nv)
    for ix in range(xlo, xhi):
        for iy in range(ylo, yhi):
            v0 = (ix * nv + iy) * nv
            for t in range(vstart[v0 + zlo], vstart[v0 + zhi]):
                d0 = spts[t, 0] - c0
                d1 = spts[t, 1] - c1
                d2 = spts[t, 2] - c2
                if d0 * d0 + d1 * d1 + d2 * d2 <= r2:
                    pool[m] = t
                    m += 1
    return m, nearest


def _maxmin_impl(cd, ids, n):  # pragma: no cover - compiled
    """Row of the anchor ``p*``: the largest ``cd[4, q]`` (the member's smallest corner dot product),
    lowest codeword index ``ids[q]`` among exact ties."""
    w = 0
    for q in range(1, n):
        v = cd[4, q]
        b = cd[4, w]
        if v > b or (v == b and ids[q] < ids[w]):
            w = q
    return w


def _position_tables_impl(g, sub, H, h0, edge_lo, edge_hi):  # pragma: no cover - compiled
    """Per position ``(i, j)`` within a face (the six faces are congruent): the cell's corners in face
    coordinates and the certification thresholds of its blocks.

    ``local[i, j, c] = (1, a_c, b_c) / sqrt(1 + a_c^2 + b_c^2)`` is corner ``c`` of every face's cell
    ``(i, j)`` along (face axis times its sign, next axis, the one after), with the expressions of
    ``_cell_centre_impl`` (so bit for bit the same corners). ``cos_min[h - h0, i, j, c]``: the block of
    ``(2 h + 1)^2`` buckets around the cell (see ``_block_dots_impl``) provably holds every codeword whose
    direction is within ``acos(x)`` of corner ``c`` whenever ``x >= cos_min``: the block is the
    intersection of four hemispheres, and with ``P`` the corner's smallest distance ``<v_c, n>`` to their
    planes, less ``2e-9``, ``cos_min = sqrt(1 - P^2)`` (at least 0.05; ``inf`` where ``P <= 0``). The
    plane of the bucket edge ``a = ea[e]`` (``ea[e]``: the warp of ``s = (e - H) / g``) has the unit
    normal ``(e_{k+1} - ea[e] e_k) / sqrt(1 + ea[e]^2)`` in face coordinates. Returns ``(ea, local,
    cos_min)``.
    """
    E = sub * g + 2 * H
    ea = np.empty(E + 1)
    for e in range(E + 1):
        s_ = (e - H) / (sub * g)
        ea[e] = (4.0 * s_ * s_ - 1.0) / 3.0 if s_ >= 0.5 else (1.0 - 4.0 * (1.0 - s_) ** 2) / 3.0
    einv = 1.0 / np.sqrt(1.0 + ea * ea)
    local = np.empty((g, g, 4, 3))
    cos_min = np.empty((2, g, g, 4))
    for i in range(g):
        for j in range(g):
            for c in range(4):
                av = edge_lo[i] if c < 2 else edge_hi[i]
                bv = edge_lo[j] if c % 2 == 0 else edge_hi[j]
                nrm = np.sqrt(1.0 + av * av + bv * bv)
                vk = 1.0 / nrm
                va = av / nrm
                vb = bv / nrm
                local[i, j, c, 0] = vk
                local[i, j, c, 1] = va
                local[i, j, c, 2] = vb
                for t in range(2):
                    h = h0 if t == 0 else H
                    i0 = sub * i + H - h
                    i1 = sub * i + H + sub + h
                    j0 = sub * j + H - h
                    j1 = sub * j + H + sub + h
                    p = min(
                        min((va - ea[i0] * vk) * einv[i0], (ea[i1] * vk - va) * einv[i1]),
                        min((vb - ea[j0] * vk) * einv[j0], (ea[j1] * vk - vb) * einv[j1]),
                    )
                    p -= 2e-9
                    cos_min[t, i, j, c] = max(0.05, np.sqrt(1.0 - p * p)) if p > 0.0 else np.inf
    return ea, local, cos_min


def _block_dots_impl(
    corner, face, i, j, h, g, sub, H, bucket, cos_min, tau, slack, cd, ids
):  # pragma: no cover - compiled
    """Corner dot products of the codewords in the ``(2 h + 1)^2`` buckets around cell ``(face, i, j)``
    and a certificate that they include every candidate: ``(n, w)`` (``n`` members in ``cd[:4, :n]``,
    ``ids[:n]``; ``w`` the row of ``p*``), or ``(-1, -1)`` where it fails (the caller widens the block
    or falls back).

    ``cd[c, q] = (v_c0 x_0 + v_c1 x_1) + v_c2 x_2`` for the four corners ``v_c`` (the expression of the
    numpy construction). ``p*`` (largest smallest corner dot product, lowest codeword index among exact
    ties) is tracked during the scan. A codeword ``q`` not dominated by ``p*`` has ``cd_c(p*) - cd_c(q)
    <= tau`` at some corner ``c``, so (up to rounding, 1e-14, and norms within ``normerr`` of 1) its
    direction has cosine at least ``x_c = (cd_c(p*) - tau - 1e-14) * slack`` with ``v_c``, ``slack = 1 /
    (1 + normerr)``. If ``x_c >= cos_min[i, j, c]`` for every corner (``_position_tables_impl``), every
    such codeword lies inside the block with a margin (1e-9) that dwarfs the rounding of a bucket index
    (~1e-16): the block holds all of them, hence ``p*`` (the global one: no codeword with a larger
    smallest corner dot product is dominated by the block's ``p*``), every corner's best codeword and
    every candidate.
    """
    bstart, bx, by, bz, bid = bucket
    E = sub * g + 2 * H
    v00, v01, v02 = corner[0, 0], corner[0, 1], corner[0, 2]
    v10, v11, v12 = corner[1, 0], corner[1, 1], corner[1, 2]
    v20, v21, v22 = corner[2, 0], corner[2, 1], corner[2, 2]
    v30, v31, v32 = corner[3, 0], corner[3, 1], corner[3, 2]
    j0 = sub * j + H - h
    jn = sub * j + H + sub + h
    n = 0
    best = -np.inf
    w = -1
    wid = -1
    for row in range(sub * i + H - h, sub * i + H + sub + h):
        base = (face * E + row) * E
        for t in range(bstart[base + j0], bstart[base + jn]):
            x0 = bx[t]
            x1 = by[t]
            x2 = bz[t]
            d0 = (v00 * x0 + v01 * x1) + v02 * x2
            d1 = (v10 * x0 + v11 * x1) + v12 * x2
            d2 = (v20 * x0 + v21 * x1) + v22 * x2
            d3 = (v30 * x0 + v31 * x1) + v32 * x2
            cd[0, n] = d0
            cd[1, n] = d1
            cd[2, n] = d2
            cd[3, n] = d3
            idq = bid[t]
            ids[n] = idq
            mn = min(min(d0, d1), min(d2, d3))
            better = (mn > best) | ((mn == best) & (idq < wid))
            best = mn if better else best
            w = n if better else w
            wid = idq if better else wid
            n += 1
    if n == 0:
        return -1, -1
    for c in range(4):
        if not (cd[c, w] - tau - 1e-14) * slack >= cos_min[i, j, c]:
            return -1, -1
    return n, w


def _pool_dots_impl(corner, spts, order, pool, m, cd, ids):  # pragma: no cover - compiled
    """``cd``/``ids`` rows (as in ``_block_dots_impl``) of the ``m`` pool members ``pool[:m]`` (voxel-order
    rows of ``spts``/``order``); returns the row of ``p*``."""
    for q in range(m):
        p = pool[q]
        x0 = spts[p, 0]
        x1 = spts[p, 1]
        x2 = spts[p, 2]
        for c in range(4):
            cd[c, q] = (corner[c, 0] * x0 + corner[c, 1] * x1) + corner[c, 2] * x2
        cd[4, q] = min(min(cd[0, q], cd[1, q]), min(cd[2, q], cd[3, q]))
        ids[q] = order[p]
    return _maxmin(cd, ids, m)


def _prune_impl(cd, ids, n, w, tau, surv, keep_idx):  # pragma: no cover - compiled
    """Candidates from ``n`` members (``cd[:4]``/``ids`` rows; ``w``: the row of ``p*``): the members that
    no anchor dominates, codeword indices ascending in ``keep_idx``; returns their number.

    The anchors are ``p*`` (the member whose smallest corner dot product is largest) and each corner's
    best member (largest dot product there), lowest codeword index among exact ties; ``p`` dominates
    ``q`` if ``<v_c, p> - <v_c, q> > tau`` at all four corners. The members dominated by ``p*`` are
    dropped first (branch-free; the survivors' rows go to ``surv``); each corner's best member is never
    among them.
    No anchor dominates itself, so the list is never empty.
    """
    e0 = cd[0, w]
    e1 = cd[1, w]
    e2 = cd[2, w]
    e3 = cd[3, w]
    ns = 0
    for q in range(n):
        beaten = (e0 - cd[0, q] > tau) & (e1 - cd[1, q] > tau) & (e2 - cd[2, q] > tau) & (e3 - cd[3, q] > tau)
        surv[ns] = q
        ns += 0 if beaten else 1
    b0 = b1 = b2 = b3 = surv[0]
    for r in range(1, ns):
        q = surv[r]
        iq = ids[q]
        u = (cd[0, q] > cd[0, b0]) | ((cd[0, q] == cd[0, b0]) & (iq < ids[b0]))
        b0 = q if u else b0
        u = (cd[1, q] > cd[1, b1]) | ((cd[1, q] == cd[1, b1]) & (iq < ids[b1]))
        b1 = q if u else b1
        u = (cd[2, q] > cd[2, b2]) | ((cd[2, q] == cd[2, b2]) & (iq < ids[b2]))
        b2 = q if u else b2
        u = (cd[3, q] > cd[3, b3]) | ((cd[3, q] == cd[3, b3]) & (iq < ids[b3]))
        b3 = q if u else b3
    kept = 0
    for r in range(ns):
        q = surv[r]
        c0 = cd[0, q]
        c1 = cd[1, q]
        c2 = cd[2, q]
        c3 = cd[3, q]
        beaten = False
        for b in (b0, b1, b2, b3):
            beaten |= (
                (cd[0, b] - c0 > tau) & (cd[1, b] - c1 > tau) & (cd[2, b] - c2 > tau) & (cd[3, b] - c3 > tau)
            )
        if not beaten:  # insert into the kept list, ascending codeword index
            v = ids[q]
            t = kept - 1
            while t >= 0 and keep_idx[t] > v:
                keep_idx[t + 1] = keep_idx[t]
                t -= 1
            keep_idx[t + 1] = v
            kept += 1
    return kept


def _build_impl(pts, g, expand, eta, tau, normerr, nv, reach, sub, h0, H):  # pragma: no cover - compiled
    """Candidate lists of every cell (the construction of ``NearestIndex._build``, compiled).

    Same cells, corners and candidate rule as the numpy construction, so the same lists (the tests
    compare them list by list):

    * the members come from the block of ``(2 h0 + 1)^2`` buckets of the face grids around the cell
      (``_capscan.face_buckets_impl``, ``_block_dots_impl``), which certifies that it holds every anchor and
      candidate; if not, from the block of ``(2 H + 1)^2`` buckets, and otherwise (sparse or very uneven
      codebooks) from the voxel search ``_cell_pool_impl`` of the pool ``a + 2 rho + 2 eta + 1e-6``
      around the centre (voxels built on first need; ``rho`` of the cell itself);
    * the corners come from a per-position table (``_position_tables_impl``), permuted to the face;
    * pruning (``_prune_impl``): a member dominated by one of five anchors is dropped.

    Returns ``(indptr, indices)`` (CSR), or an empty ``indptr`` if a cell lost all candidates (impossible
    by the proof; the caller raises).
    """
    edge_lo, edge_hi = _edges(g, expand)
    ea, local, cos_min = _position_tables(g, sub, H, h0, edge_lo, edge_hi)
    bucket = _face_buckets(pts, sub * g, H, max(ea[-1], -ea[0]) * (1.0 + 1e-9) + 1e-9)
    slack = 1.0 / (1.0 + normerr)
    vstart, order, spts = np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros((0, 3))
    ncell = 6 * g * g
    indptr = np.zeros(ncell + 1, np.int64)
    indices = np.empty(max(1024, 8 * ncell), np.int64)
    pos = 0
    big = max(64, pts.shape[0], bucket[4].size) + 4
    pool = np.empty(big, np.int64)
    gi = np.empty(big, np.int64)
    gd = np.empty(big)
    cd = np.empty((5, big))
    ids = np.empty(big, np.int64)
    keep_idx = np.empty(big, np.int64)
    corner = np.empty((4, 3))
    for face in range(6):
        k = face // 2
        j1 = (k + 1) % 3
        j2 = (k + 2) % 3
        sign = 1.0 if face % 2 == 0 else -1.0
        for i in range(g):
            for j in range(g):
                for c in range(4):
                    corner[c, k] = sign * local[i, j, c, 0]
                    corner[c, j1] = local[i, j, c, 1]
                    corner[c, j2] = local[i, j, c, 2]
                n, w = _block_dots(corner, face, i, j, h0, g, sub, H, bucket, cos_min[0], tau, slack, cd, ids)
                if n < 0 and H > h0:
                    n, w = _block_dots(
                        corner, face, i, j, H, g, sub, H, bucket, cos_min[1], tau, slack, cd, ids
                    )
                if n < 0:
                    if spts.shape[0] == 0:
                        vstart, order, spts = _voxel_copy(pts, nv)
                    c0, c1, c2 = _cell_centre(face, edge_lo[i], edge_hi[i], edge_lo[j], edge_hi[j], corner)
                    rho = _corner_rho(c0, c1, c2, corner)
                    slack_r = 2.0 * eta + 1e-6
                    big_r = 2.0 * np.sin(min(np.pi, reach + 2.0 * rho + slack_r) / 2.0)
                    n = _cell_pool(c0, c1, c2, rho, slack_r, big_r, nv, vstart, spts, gi, gd, pool)[0]
                    w = _pool_dots(corner, spts, order, pool, n, cd, ids)
                kept = _prune(cd, ids, n, w, tau, pool, keep_idx)
                if kept == 0:
                    return np.zeros(0, np.int64), indices[:0]
                if pos + kept > indices.size:
                    grown = np.empty(2 * indices.size + kept, np.int64)
                    grown[:pos] = indices[:pos]
                    indices = grown
                for q in range(kept):
                    indices[pos] = keep_idx[q]
                    pos += 1
                indptr[(face * g + i) * g + j + 1] = pos
    return indptr, indices[:pos]


_BUILD: dict = {}


def _cell_of(v0, v1, v2, g):  # pragma: no cover - compiled (the cube-map cell of _cells, one direction)
    a0 = abs(v0)
    a1 = abs(v1)
    a2 = abs(v2)
    if a0 >= a1 and a0 >= a2:
        k, xk, ya, yb = 0, v0, v1, v2
    elif a1 >= a2:
        k, xk, ya, yb = 1, v1, v2, v0
    else:
        k, xk, ya, yb = 2, v2, v0, v1
    face = 2 * k + (1 if xk < 0 else 0)
    inv = 1.0 / abs(xk)
    a = ya * inv
    b = yb * inv
    pa = 0.5 * np.sqrt(1.0 + 3.0 * abs(a))
    pb = 0.5 * np.sqrt(1.0 + 3.0 * abs(b))
    sa = pa if a >= 0 else 1.0 - pa
    sb = pb if b >= 0 else 1.0 - pb
    i = min(g - 1, max(0, int(np.floor(sa * g))))
    j = min(g - 1, max(0, int(np.floor(sb * g))))
    return (face * g + i) * g + j


def _cell_vertices_impl(pts, indptr, indices, g, best_cos, best_v):  # pragma: no cover - compiled
    """Deepest Voronoi vertex of every cell, from the cell's candidate triples.

    A Voronoi vertex ``v`` lying in cell ``X`` (as assigned by the cube-map cell function) is equidistant
    from its three (or more) nearest codewords, which are all candidates of ``X`` (the candidate lists
    hold every possible nearest codeword of the expanded cell, ties included), so it is the circumcentre
    ``+-m / |m|``, ``m = (b - a) x (c - a)``, of a candidate triple. For each triple and sign whose
    circumcentre falls in the cell itself, ``cos f(v) = max over the candidates of <v, c>`` is a true
    value of ``f``; ``best_cos[X]`` receives the smallest (deepest) and ``best_v[X]`` its vertex
    (``best_cos = 2`` where none falls in the cell). The same triple yields bit-identical ``v`` in every cell
    that lists it, so a vertex assigned to a neighbouring cell by rounding is found there.
    """
    ncell = indptr.size - 1
    for cell in range(ncell):
        s = indptr[cell]
        e = indptr[cell + 1]
        best = 2.0
        for i in range(s, e):
            a = indices[i]
            for j in range(i + 1, e):
                b = indices[j]
                for k in range(j + 1, e):
                    c = indices[k]
                    u0 = pts[b, 0] - pts[a, 0]
                    u1 = pts[b, 1] - pts[a, 1]
                    u2 = pts[b, 2] - pts[a, 2]
                    w0 = pts[c, 0] - pts[a, 0]
                    w1 = pts[c, 1] - pts[a, 1]
                    w2 = pts[c, 2] - pts[a, 2]
                    m0 = u1 * w2 - u2 * w1
                    m1 = u2 * w0 - u0 * w2
                    m2 = u0 * w1 - u1 * w0
                    nrm = np.sqrt(m0 * m0 + m1 * m1 + m2 * m2)
                    if not nrm > 0.0:
                        continue
                    for sgn in (1.0, -1.0):
                        v0 = sgn * m0 / nrm
                        v1 = sgn * m1 / nrm
                        v2 = sgn * m2 / nrm
                        if _cell_of_jit(v0, v1, v2, g) != cell:
                            continue
                        mx = -2.0
                        for t in range(s, e):
                            q = indices[t]
                            d = v0 * pts[q, 0] + v1 * pts[q, 1] + v2 * pts[q, 2]
                            mx = max(mx, d)
                        if mx < best:
                            best = mx
                            best_v[cell, 0] = v0
                            best_v[cell, 1] = v1
                            best_v[cell, 2] = v2
        best_cos[cell] = best


_cell_of_jit = None


def cell_vertices(index) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-cell deepest Voronoi vertex of a :class:`NearestIndex` (compiled; ``None`` without numba).

    Returns ``(best_cos, best_v)`` of shapes ``(cells,)`` and ``(cells, 3)``; see ``_cell_vertices_impl``.
    Used by :meth:`spherequant.codebook.Codebook.covering_radius` for large codebooks.
    """
    global _cell_of_jit
    if _numba is None:
        return None
    if "cells" not in _BUILD:
        _cell_of_jit = _numba.njit(**_KOPTS)(_cell_of)
        _BUILD["cells"] = _numba.njit(**_KOPTS)(_cell_vertices_impl)
    t = index.table("float64")
    ncell = t.indptr.size - 1
    best_cos = np.empty(ncell)
    best_v = np.zeros((ncell, 3))
    _BUILD["cells"](index.points, t.indptr, t.indices, index.grid, best_cos, best_v)
    return best_cos, best_v


def _pack_impl(indptr, indices, pts, w, rows, ints):  # pragma: no cover - compiled
    """Fill the fixed-width float32/int32 rows of ``_Table.packed`` (same layout as its numpy branch)."""
    stride = 4 * w
    for c in range(indptr.size - 1):
        base = c * stride
        s = indptr[c]
        n = indptr[c + 1] - s
        for j in range(w):
            if j < n:
                p = indices[s + j]
                rows[base + j] = np.float32(pts[p, 0])
                rows[base + w + j] = np.float32(pts[p, 1])
                rows[base + 2 * w + j] = np.float32(pts[p, 2])
                ints[base + 3 * w + j] = np.int32(p)
            else:
                rows[base + j] = np.nan
                rows[base + w + j] = np.nan
                rows[base + 2 * w + j] = np.nan
                ints[base + 3 * w + j] = np.int32(indices[s])


def _numba_pack():
    """The compiled ``_Table.packed`` fill (``None`` without numba)."""
    if _numba is None:
        return None
    if "pack" not in _BUILD:
        _BUILD["pack"] = _numba.njit(**_KOPTS)(_pack_impl)
    return _BUILD["pack"]


#: The construction's voxel fallback gathers, around a cell centre, the codewords within the pool chord of a
#: cell whose nearest codeword is ``_REACH`` codeword spacings ``sqrt(4 pi / K)`` away (most are closer).
_REACH = 0.6
#: Buckets per cell edge of the construction's face grids, and the first block's margin (cell widths, plus
#: 0.6 codeword spacings) around a cell.
_SUB = 2
_MARGIN = 0.7
#: Largest voxel count per axis of the compiled construction's pool search (``nv**3`` int64 offsets).
_MAX_VOXELS = 160


#: The compiled steps of the construction and of the repeat test (``<name>_impl`` compiled), set on the
#: first request of either: module globals, so the on-disk cache key of their callers stays the same
#: across processes.
_BUILD_STEPS = (
    "_voxels",
    "_vrange",
    "_voxel_copy",
    "_edges",
    "_cell_centre",
    "_corner_rho",
    "_cell_pool",
    "_position_tables",
    "_maxmin",
    "_block_dots",
    "_pool_dots",
    "_prune",
)
#: Steps of the per-cell loop inlined into the construction by numba (a real call per cell costs more
#: than their work).
_BUILD_INLINE = ("_block_dots", "_prune")
_voxels = _vrange = _voxel_copy = _edges = _cell_centre = _corner_rho = None
_cell_pool = _face_buckets = _position_tables = _maxmin = _block_dots = _pool_dots = _prune = None


def _compiled(name: str):
    if _numba is None:
        return None
    if name not in _BUILD:
        if _voxels is None:
            steps = globals()
            for step in _BUILD_STEPS:
                inline = "always" if step in _BUILD_INLINE else "never"
                steps[step] = _numba.njit(inline=inline, **_KOPTS)(steps[step + "_impl"])
            steps["_face_buckets"] = _capscan_compiled("buckets")  # one dispatcher, shared with the scan
        impl = {"build": _build_impl, "repeat": _repeat_impl}[name]
        _BUILD[name] = _numba.njit(**_KOPTS)(impl)
    return _BUILD[name]


def _numba_build():
    """The compiled table construction (``None`` without numba); cached on disk like the kernels."""
    return _compiled("build")


def _numba_repeat():
    """The compiled exact-repeat test of ``_check_points`` (``None`` without numba)."""
    return _compiled("repeat")


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
        self._dense = None
        self._torch: dict = {}
        self._coords: dict = {}

    @property
    def dense(self) -> np.ndarray:
        """Candidates as a padded (cells, width) int64 array (numpy/torch paths; built on first use).

        Each row is padded with its first (lowest-index) candidate: argmax semantics are unchanged.
        """
        if self._dense is None:
            indptr, indices = self.indptr, self.indices
            counts = np.diff(indptr)
            dense = np.empty((counts.size, self.width), dtype=np.int64)
            dense[:] = indices[indptr[:-1]][:, None]
            col = np.arange(indices.size) - np.repeat(indptr[:-1], counts)
            dense[np.repeat(np.arange(counts.size), counts), col] = indices
            self._dense = dense
        return self._dense

    def packed(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Fixed-width candidate rows for the compiled kernels: ``(rows_f32, rows_i32, w)``.

        ``w = _kernel_width(self.width)`` (a multiple of 4). Cell ``c`` occupies the ``4 w`` 4-byte words
        from ``4 w c`` (whole 64-byte cache lines, aligned): the float32 x, y and z coordinates of its
        candidates (structure of arrays), then their int32 codeword indices, in ascending index order.
        Unused slots hold NaN coordinates, whose dot product never wins (nor takes second place in) a
        comparison, so the kernels loop over all ``w`` slots without a branch; their index slots repeat
        the first candidate. ``rows_f32`` and ``rows_i32`` are two views of the same buffer.
        """
        if "packed" not in self._coords:
            w = _kernel_width(self.width)
            stride = 4 * w
            ncell = self.indptr.size - 1
            raw = np.empty(ncell * stride + 16, dtype=np.float32)
            off = (-raw.ctypes.data // 4) % 16  # 64-byte alignment of every row
            buf = raw[off : off + ncell * stride]
            pack = _numba_pack()
            if pack is not None:
                pack(self.indptr, self.indices, pts, w, buf, buf.view(np.int32))
            else:
                rows = buf.reshape(ncell, stride)
                ints = buf.view(np.int32).reshape(ncell, stride)
                rows[:, : 3 * w] = np.nan
                counts = np.diff(self.indptr)
                r = np.repeat(np.arange(ncell), counts)
                col = np.arange(self.indices.size) - np.repeat(self.indptr[:-1], counts)
                p32 = pts[self.indices].astype(np.float32)
                for axis in range(3):
                    rows[r, axis * w + col] = p32[:, axis]
                ints[:, 3 * w :] = self.dense[:, :1].astype(np.int32)
                ints[:, 3 * w : 3 * w + self.width] = self.dense.astype(np.int32)
            self._coords["packed"] = (buf, buf.view(np.int32), w)
        return self._coords["packed"]

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
    rounding of the cell computation, with corner directions ``v_1..v_4``. Say ``p`` dominates ``q`` if
    ``<v_i, p> - <v_i, q> > tau`` at all four corners (``tau = 32 eps``): every ``u`` in ``X`` is a
    non-negative combination of the corners (cell edges are great-circle arcs), so ``<u, p> - <u, q> >
    tau |u|`` and ``q`` can neither win nor tie at ``u``, even after rounding. A cell's list is every
    codeword dominated by none of five anchors: ``p*``, the codeword whose smallest corner dot product is
    largest, and each corner's best codeword (largest dot product there), the lowest index among exact
    ties. So it holds every possible float nearest codeword, ties included. Anchors and list are found
    among the codewords of a block of buckets around the cell, with a certificate that the block holds
    every codeword not dominated by ``p*`` (see ``_block_dots_impl``): the list does not depend on the
    block, and the numpy construction finds the same anchors and list in the pool of codewords within
    ``a + 2 rho + 2 eta + 1e-6`` of the cell's centre ``m`` (``a``: the nearest codeword's angle, ``rho``
    the largest angle from ``m`` to a corner, ``eta = 2 sqrt(12 eps + 4 e)``, ``e`` the largest deviation
    of a codeword's norm from 1, at most 1e-6 by validation). That pool holds every codeword ``p*`` does
    not dominate: such a ``q`` is within about ``max_i angle(v_i, p*) <= max_i angle(v_i, n) <= a + rho``
    of some corner (``n`` the codeword nearest to ``m``; ``p*`` minimises the largest corner angle), so
    within ``a + 2 rho`` of ``m``; the slack covers ``tau`` and the norms. Separate tables are built
    lazily for float32 and float64 queries, because their margins differ.

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
        self.points, self._normerr = _checked_points(points)
        k = self.points.shape[0]
        density = check_real(density, "density", minimum=0.0, exclusive_minimum=True)
        if grid is None:
            grid = max(1, math.ceil(math.sqrt(density * k / 6.0)))
        grid = check_int(grid, "grid", minimum=1)
        self.grid = int(grid)
        self._tables: dict[str, _Table] = {}
        self._points_as: dict = {}
        self._scan: CapScan | None = None
        self.answered_by_scan = 0

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
        g, pts, normerr = self.grid, self.points, self._normerr
        build = _numba_build()
        if build is not None:
            spacing = math.sqrt(4.0 * math.pi / pts.shape[0])
            nv = min(_MAX_VOXELS, max(1, math.ceil(1.0 / spacing)))
            eta = 2.0 * math.sqrt(12.0 * eps + 4.0 * normerr) + 1e-12
            # block margins (buckets): about the largest distance from a corner to p*, in cell widths
            width = math.sqrt(4.0 * math.pi / (6.0 * g * g))
            sub = _SUB
            h0 = max(1, math.ceil(sub * (_MARGIN + 0.6 * spacing / width)))
            # reach: typical distance from a cell centre to its nearest codeword (the fallback's box)
            indptr, indices = build(
                pts, g, 64.0 * eps, eta, 32.0 * eps, normerr, nv, _REACH * spacing, sub, h0, h0 + sub
            )
            if indptr.size == 0:  # impossible by the proof; guard against silent wrong answers
                raise RuntimeError("NearestIndex: a cell lost all candidates (please report this bug)")
            return _Table(indptr, indices)
        return self._build_numpy(eps)

    def _build_numpy(self, eps: float) -> _Table:
        """The construction without numba (KD-tree pools, vectorised anchor pruning); same table."""
        g, pts = self.grid, self.points
        tree = cKDTree(pts)
        corners, centre = _cell_corners(g, expand=64.0 * eps)
        rho = _angle(centre[:, None, :], corners).max(axis=1)
        dist, _ = tree.query(centre, k=1)
        a = 2.0 * np.arcsin(np.clip(dist / 2.0, 0.0, 1.0))
        # eta: float argmax vs exact argmax (dot rounding) and codewords off unit length (norm error e)
        normerr = self._normerr
        radius = a + 2.0 * rho + 4.0 * math.sqrt(12.0 * eps + 4.0 * normerr) + 1e-6
        chord = np.where(radius >= np.pi, 2.5, 2.0 * np.sin(np.minimum(radius, np.pi) / 2.0))
        pools = tree.query_ball_point(centre, chord, return_sorted=True)
        counts = np.fromiter((len(p) for p in pools), dtype=np.int64, count=len(pools))
        flat = np.fromiter((i for p in pools for i in p), dtype=np.int64, count=int(counts.sum()))
        starts = np.concatenate([[0], np.cumsum(counts)])
        keep = np.zeros(flat.size, dtype=bool)
        ncell = counts.size
        step = max(1, (1 << 20) // max(1, int(counts.max())))
        for s in range(0, ncell, step):
            e = min(ncell, s + step)
            cnt = counts[s:e]
            rows = np.repeat(np.arange(e - s), cnt)
            cols = np.arange(starts[e] - starts[s]) - np.repeat(starts[s:e] - starts[s], cnt)
            idx = np.zeros((e - s, int(cnt.max())), dtype=np.int64)
            idx[rows, cols] = flat[starts[s] : starts[e]]
            keep[starts[s] : starts[e]] = _anchor_keep(pts[idx], corners[s:e], cnt, 32.0 * eps)[rows, cols]
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
    def query(self, x: Any, *, backend: str = "auto", method: str = "auto"):
        """Index of the nearest codeword of each query (lowest index among exact ties).

        Parameters
        ----------
        x : ndarray or Tensor of shape (..., 3)
            Non-zero query vectors (any norm). float16/bfloat16/int inputs are computed in float32.
        backend : {"auto", "numpy", "numba", "torch"}
            Implementation: numpy input uses the compiled kernels when numba is installed ("auto"), else
            vectorised numpy over the candidate table; torch input always uses the batched torch gather
            over the candidate table (any device).
        method : {"auto", "table", "scan"}
            For the compiled kernels: "table" builds the candidate table (once per query dtype; ~0.4 us
            per codeword) and answers each query from its cell's list (blocks of 64 queries, prefetched
            fixed-width float32 rows, float64 re-check of near ties); "scan" needs no table: queries
            grouped by cell are compared with the codewords of the 3 x 3 cells around it and certified
            by their distance to the block's edges (``spherequant._capscan``; O(K) set-up, a few
            times slower per query). "auto" scans until the queries answered reach
            ``TABLE_AFTER`` per codeword, then builds the table (it would have paid for itself by
            then), so one-off queries of a fresh index never pay for a table. Every method returns
            the same indices.

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
        backend = check_choice(backend, "backend", ("auto", "numpy", "numba", "torch"))
        method = check_choice(method, "method", ("auto", "table", "scan"))
        kernel = _numba_kernel() if backend in ("auto", "numba") and not is_torch(x) else None
        if backend == "numba" and kernel is None:
            raise ValueError("backend 'numba' needs numpy input and numba installed (pip install numba)")
        if method == "scan" and kernel is None:
            raise ValueError("method 'scan' needs the compiled kernels: numpy input and numba installed")
        flat, shape = _check_queries(x, zeros=kernel is None, finite=kernel is None)
        dtype = "float64" if flat.dtype in (np.float64, torch.float64) else "float32"
        if kernel is not None:
            flat = np.ascontiguousarray(flat)
            k = self.points.shape[0]
            scan = method == "scan" or (
                method == "auto"
                and dtype not in self._tables
                and self.answered_by_scan + flat.shape[0] < TABLE_AFTER * k
            )
            if scan:
                return self._query_scan(flat).reshape(shape)
            return self._query_numba(flat, self.table(dtype)).reshape(shape)
        t = self.table(dtype)
        if is_torch(flat):
            if backend in ("numpy", "numba"):
                raise ValueError(f"backend {backend!r} needs a numpy input; got a torch tensor")
            return self._query_torch(flat.detach(), t).reshape(shape)
        if backend == "torch":
            return self._query_torch(torch.from_numpy(np.ascontiguousarray(flat)), t).numpy().reshape(shape)
        pts = self._points_numpy(flat.dtype)
        out = np.empty(flat.shape[0], dtype=np.int64)
        for s in range(0, flat.shape[0], _CHUNK):
            xq = flat[s : s + _CHUNK]
            with np.errstate(over="ignore", invalid="ignore"):  # extreme scales: redone by _fix_extreme
                cand = t.dense[_cells(xq, self.grid)]  # (n, width)
            d = _dots(xq[:, None, :], pts[cand])
            out[s : s + _CHUNK] = np.take_along_axis(cand, np.argmax(d, axis=1)[:, None], axis=1)[:, 0]
        self._fix_extreme(flat, out)
        return out.reshape(shape)

    def query_unchecked(self, flat: np.ndarray) -> np.ndarray:
        """:meth:`query` of queries the caller has validated, without its argument checks (hot loops).

        ``flat`` must be a C-contiguous numpy array of shape (N, 3), float32 or float64; zero, NaN or
        infinite rows still raise (the compiled kernels flag them), anything else is undefined. Uses the
        candidate table when it exists for the dtype (build it once with :meth:`table`), else the same
        scan-then-table rule as ``method="auto"``; without numba it is :meth:`query`. Same indices.
        """
        if _numba_kernel() is None:
            return self.query(flat)
        dtype = "float64" if flat.dtype == np.float64 else "float32"
        table = self._tables.get(dtype)
        if table is None:
            if self.answered_by_scan + flat.shape[0] < TABLE_AFTER * self.points.shape[0]:
                return self._query_scan(flat)
            table = self.table(dtype)
        return self._query_numba(flat, table)

    def _fix_extreme(self, flat, out):
        """Answer queries of extreme scale (see ``_SCALE64``/``_SCALE32``) by brute force, in place."""
        lo, hi = _SCALE32 if flat.dtype in (np.float32, torch.float32) else _SCALE64
        big = flat.abs().amax(dim=1) if is_torch(flat) else np.abs(flat).max(axis=1)
        rows = (big < lo) | (big > hi)
        if bool(rows.any()):
            out[rows] = brute_force_nearest(self.points, flat[rows])

    def _query_numba(self, flat: np.ndarray, t: _Table) -> np.ndarray:
        """Compiled table path for shape-checked numpy queries; raises on NaN/inf entries and zero rows."""
        out = np.empty(flat.shape[0], dtype=np.int64)
        if flat.shape[0] == 0:
            return out
        rf, ri, w = t.packed(self.points)
        kernels = _numba_kernel(w)
        pf = rf.nbytes > _PREFETCH_BYTES
        if flat.dtype == np.float32:
            bad, first_zero, extreme, _ = kernels["exact"](flat, self.grid, rf, ri, w, pf, out)
        else:
            bad, first_zero, extreme, _ = kernels["filter"](
                flat, self.grid, rf, ri, w, pf, self._points_numpy(np.float64), t.indptr, t.indices, out
            )
        return self._finish_compiled(flat, out, bad, first_zero, extreme)

    def _query_scan(self, flat: np.ndarray) -> np.ndarray:
        """Compiled path without a table (certified cell-block scans; see ``spherequant._capscan``)."""
        out = np.empty(flat.shape[0], dtype=np.int64)
        if flat.shape[0] == 0:
            return out
        if self._scan is None:
            k = self.points.shape[0]
            self._scan = CapScan(self.points, self._normerr, max(1, math.ceil(math.sqrt(k / 6.0))))
        scale = _SCALE32 if flat.dtype == np.float32 else _SCALE64
        bad, first_zero, extreme, _ = self._scan.query(flat, out, scale)
        self.answered_by_scan += flat.shape[0]
        return self._finish_compiled(flat, out, bad, first_zero, extreme)

    def _finish_compiled(self, flat, out, bad, first_zero, extreme) -> np.ndarray:
        """Raise for the bad rows a compiled kernel flagged; brute force for its extreme-scale rows."""
        if bad:
            raise ValueError("x contains NaN or infinite entries")
        if first_zero >= 0:
            _raise_zero(int(first_zero))
        if extreme:
            rows = out == -2
            out[rows] = brute_force_nearest(self.points, flat[rows])
        return out

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
            self._fix_extreme(flat, out)
        return out


# ----------------------------------------------------------------------------------------------------------
# spherical Fibonacci inverse mapping
# ----------------------------------------------------------------------------------------------------------
_FIB_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _fibonacci_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Points (n, 3) and padded Delaunay-neighbour table (n, max_degree) of ``fibonacci(n)`` (cached)."""
    if n not in _FIB_CACHE:
        pts = fibonacci_points(n)  # the points (and order) of spherequant.codebook.fibonacci(n)
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
    g = dtype(PHI - 1.0)
    phi = np.arctan2(u[:, 1], u[:, 0])
    z = np.clip(u[:, 2], -one, one)
    # zone number: which pair of consecutive Fibonacci numbers spans the local lattice
    arg = np.maximum(
        dtype(n * np.pi * math.sqrt(5.0)) * (one - z * z), dtype(1e-300 if dtype == np.float64 else 1e-30)
    )
    k = np.maximum(2.0, np.floor(np.log(arg) / dtype(math.log(PHI * PHI))))
    fk = np.power(dtype(PHI), k) / dtype(math.sqrt(5.0))
    f0 = np.round(fk)
    f1 = np.round(fk * dtype(PHI))

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
    n = check_int(n, "n", minimum=1)
    n = int(n)
    flat, shape = _check_queries(x)
    dev = flat.device if is_torch(flat) else None
    xq = flat.detach().cpu().numpy() if dev is not None else flat
    pts, adj = _fibonacci_tables(n)
    u = xq.astype(np.float64)
    u = u / np.abs(u).max(axis=1, keepdims=True)  # scale-safe (rows of 2**-1000 or 2**1000 too)
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
