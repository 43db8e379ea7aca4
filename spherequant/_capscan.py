r"""Exact nearest codeword without a candidate table: certified scans of cube-map cell blocks.

:class:`~spherequant.lookup.NearestIndex` answers its first queries with this path (``method="scan"``)
and builds its candidate table only once the queries answered would have paid for it. Set-up is O(K):
the codewords are bucket-sorted into one grid per cube face, the face's ``g x g`` cells plus one ring of
cells beyond its edges (``face_buckets_impl``). A query is compared with the codewords of the 3 x 3 cells
around its own cell; queries are grouped by cell first (counting sort), so each block is gathered once
and its dot products run over the cell's queries. A certificate then proves the block's best codeword
is the global one; the few queries it cannot certify go to cap scans.

Statement (exactness). Let ``x != 0`` be a query of float dtype ``F`` (float32 or float64; the codewords
rounded to ``F``), ``u = x / |x|``, ``e`` the largest deviation of a codeword's norm from 1 (after
rounding to ``F``) and ``g3 = 3 u_F / (1 - 3 u_F)``. For a codeword ``p`` with direction ``v``, the float
dot product in the fixed order of ``lookup._dots`` satisfies ``fl<x, p> <= |x| |p| (<u, v> + g3)``.

* Block certificate. The block is the intersection of four half-spaces through the origin (planes of
  cell-boundary lines ``v_j = a_t s v_k``), so a codeword outside it has an angle ``>= theta`` from
  ``u``, ``theta`` the smallest angle from ``u`` to those planes' great circles, ``sin^2 theta =
  min_t (x_j - a_t |x_k|)^2 / ((1 + a_t^2) |x|^2)``. With ``cos theta <= 1 - sin^2 theta / 2``, its
  float dot product is below ``|x| (1 + e) (1 - sin^2 theta / 2 + g3)``; if the block's best float dot
  product ``B > 0`` exceeds that (compared squared, with relative slack for the rounding of the bound),
  every codeword outside is strictly worse.
* Cap scan. A codeword with ``|v - u| > R`` (chord, ``R <= 1``) has ``<u, v> < 1 - R^2 / 2``. Given
  the best ``B`` found so far, ``_cap_needed`` returns the ``R`` beyond which every float dot product is
  below ``B``; the scan covers every cell that may hold a direction within ``R`` (``_face_range``: on
  a face of axis ``k``, sign ``s``, ``|v_i - u_i| <= R`` and ``s v_k >= 1 / sqrt 3`` bound the face
  coordinates ``v_j / (s v_k)`` by interval quotients), widening until the cap is covered, or scanning
  every codeword once ``R > 1``.

Either way the argmax over the scanned codewords, lowest index among exact ties, is the argmax over
all of them: :func:`~spherequant.lookup.brute_force_nearest`. Cell boundaries are padded (``1e-7``
cells; ``1e-9`` relative on ``sin^2``) for the rounding of the codewords' own cell computation. Queries
whose scale may make a dot product under- or overflow are marked ``-2`` (brute force, as on the table
path). Proof: ``proofs/nearest_index_scan.md``; tests: ``tests/test_lookup_scan.py``.
"""

from __future__ import annotations

import math

import numpy as np

try:
    import numba as _numba
except ImportError:  # pragma: no cover - depends on the environment
    _numba = None

#: Lower bound of ``s v_k`` on a face of axis ``k`` (``1 / sqrt 3``), rounded down.
_FACE_MIN = 0.5773502691896257 * (1.0 - 1e-12)
#: Padding of a face-coordinate range, in cells (covers the rounding of the codewords' cell computation).
_PAD = 1e-7
#: Starting cap radius, in codeword spacings ``sqrt(4 pi / K)`` (about the typical nearest distance).
START_RADIUS = 0.55
#: Up to this many codewords every query scans them all.
SCAN_ALL = 24

_KOPTS = dict(nogil=True, boundscheck=False, fastmath=False, error_model="numpy", cache=True)
_COMPILED: dict = {}


def face_buckets_impl(pts, g, H, amax):  # pragma: no cover - compiled
    """Codewords sorted into the ``g x g`` buckets of every face (the cube map's cells at ``g`` per face
    edge), extended by ``H`` buckets beyond each edge. Shared by the scan (``H = 1``, buckets = cells) and
    the candidate-table construction of ``lookup`` (``_SUB`` buckets per cell edge).

    Face ``f`` (axis ``k = f // 2``, sign ``+`` for even ``f``) holds the codewords with ``sign x_k > 0``
    whose face coordinates ``(a, b) = (x_{k+1}, x_{k+2}) / (sign x_k)`` map, by the quadratic warp
    extended continuously beyond the face (the inverse of ``_a_of_s``), to ``s`` in ``[-H/g, 1 + H/g)``,
    in bucket ``(f, I, J)``, ``I = floor(s_a g) + H``, ``J = floor(s_b g) + H``. So a codeword near a face
    edge is held by the grids of up to three faces, and the block of buckets around a cell needs no
    cross-face bookkeeping. ``amax`` (at least the largest ``|a|`` of the extended grid) only skips faces
    early. Returns ``(bstart, bx, by, bz, bid)``: bucket ``u = (f E + I) E + J`` (``E = g + 2 H``) holds
    entries ``bstart[u]:bstart[u + 1]`` of the coordinate arrays ``bx, by, bz`` and of ``bid`` (codeword
    indices, ascending within a bucket).
    """
    k_ = pts.shape[0]
    E = g + 2 * H
    gf = np.float64(g)
    slot = np.full((k_, 3), -1, np.int32)
    bstart = np.zeros(6 * E * E + 1, np.int32)  # int32: less memory to touch (a fresh build pays its pages)
    for p in range(k_):
        for k in range(3):
            xk = pts[p, k]
            face = 2 * k + (1 if xk < 0 else 0)
            xk = abs(xk)
            ya = pts[p, (k + 1) % 3]
            yb = pts[p, (k + 2) % 3]
            if not (xk > 0.0 and abs(ya) <= amax * xk and abs(yb) <= amax * xk):
                continue
            a = ya / xk
            b = yb / xk
            pa = 0.5 * np.sqrt(1.0 + 3.0 * abs(a))
            pb = 0.5 * np.sqrt(1.0 + 3.0 * abs(b))
            ii = np.floor((pa if a >= 0 else 1.0 - pa) * gf) + H
            jj = np.floor((pb if b >= 0 else 1.0 - pb) * gf) + H
            if ii < 0 or jj < 0 or ii >= E or jj >= E:
                continue
            u = (face * E + int(ii)) * E + int(jj)
            slot[p, k] = np.int32(u)
            bstart[u + 1] += 1
    for u in range(6 * E * E):
        bstart[u + 1] += bstart[u]
    n = bstart[-1]
    bx = np.empty(n)
    by = np.empty(n)
    bz = np.empty(n)
    bid = np.empty(n, np.int32)
    for p in range(k_):  # ascending p within each bucket; bstart[u] runs to the end of bucket u
        for k in range(3):
            u = slot[p, k]
            if u >= 0:
                t = bstart[u]
                bx[t] = pts[p, 0]
                by[t] = pts[p, 1]
                bz[t] = pts[p, 2]
                bid[t] = p
                bstart[u] = t + 1
    for u in range(6 * E * E, 0, -1):  # back to starts
        bstart[u] = bstart[u - 1]
    bstart[0] = 0
    return bstart, bx, by, bz, bid


def _block_sizes(bstart, g):
    """Most codewords in a 3 x 3 block of cells of the extended grids (``bstart`` of ``face_buckets_impl``
    with ``H = 1``)."""
    e = g + 2
    counts = np.diff(bstart.astype(np.int64)).reshape(6, e, e)
    rows = counts[:, :, :-2] + counts[:, :, 1:-1] + counts[:, :, 2:]
    return int((rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]).max())


def _axes_impl(k, v0, v1, v2):  # pragma: no cover - compiled
    """``(v_k, v_{k+1}, v_{k+2})`` (indices mod 3): a vector in the axes of the faces of axis ``k``."""
    if k == 0:
        return v0, v1, v2
    if k == 1:
        return v1, v2, v0
    return v2, v0, v1


def _warp_impl(a):  # pragma: no cover - compiled
    """Face coordinate a in [-1, 1] -> s in [0, 1] (the quadratic warp of ``lookup._s_of_a``)."""
    p = 0.5 * np.sqrt(1.0 + 3.0 * abs(a))
    return p if a >= 0 else 1.0 - p


def _face_range_impl(num, r, d0, d1, g):  # pragma: no cover - compiled
    """Cell range [lo, hi] (-1 .. g, the ring included) on one face axis of the directions with ``v_j``
    in ``num +- r`` and ``s v_k`` in ``[d0, d1]`` (``d0 > 0``): the face coordinate ``v_j / (s v_k)``
    lies between interval quotients."""
    nlo = num - r
    nhi = num + r
    alo = nlo / d1 if nlo >= 0 else nlo / d0
    ahi = nhi / d0 if nhi >= 0 else nhi / d1
    alo = max(-1.0, alo)
    ahi = min(1.0, ahi)
    lo = int(np.floor(_warp(alo) * g - _PAD))
    hi = int(np.floor(_warp(ahi) * g + _PAD))
    # -1 and g: the grid's outer ring (a codeword with a face coordinate of exactly +-1 lies there)
    return max(-1, lo), min(g, hi)


def _scan_cap_impl(x0, x1, x2, u0, u1, u2, r, g, start, order, c0, c1, c2, best, bi):  # pragma: no cover
    """Best (dot, index) over every cell that may hold a codeword within chord ``r`` of ``u``."""
    for face in range(6):
        sg = 1.0 if face % 2 == 0 else -1.0
        uk, uj, ul = _axes(face // 2, u0, u1, u2)
        uk = sg * uk
        # a direction of this face has s v_k >= |v_j|, |v_l| and s v_k >= 1/sqrt(3)
        d1 = min(1.0, uk + r)
        if d1 < _FACE_MIN or d1 + 1e-12 < max(abs(uj), abs(ul)) - r:
            continue
        d0 = max(_FACE_MIN, uk - r)
        ilo, ihi = _face_range(uj, r, d0, d1, g)
        jlo, jhi = _face_range(ul, r, d0, d1, g)
        E = g + 2
        for i in range(ilo + 1, ihi + 2):  # the face's own cells are rows/columns 1..g of its grid
            row = (face * E + i) * E
            for t in range(start[row + jlo + 1], start[row + jhi + 2]):
                d = (x0 * c0[t] + x1 * c1[t]) + x2 * c2[t]
                if d > best or (d == best and order[t] < bi):
                    best = d
                    bi = order[t]
    return best, bi


def _scan_all_impl(x0, x1, x2, order, c0, c1, c2, best, bi):  # pragma: no cover - compiled
    for t in range(order.shape[0]):
        d = (x0 * c0[t] + x1 * c1[t]) + x2 * c2[t]
        if d > best or (d == best and order[t] < bi):
            best = d
            bi = order[t]
    return best, bi


def _cap_needed_impl(b, xn, e, g3, dv):  # pragma: no cover - compiled
    """Chord radius (around the float64 codewords' directions) outside which every codeword's float dot
    product is below ``b`` (``xn = |x|``; ``dv`` bounds how far rounding to the query dtype moved a
    codeword's direction)."""
    inside = 1.0 + g3 + 1e-15 - b / (xn * (1.0 + e))
    if inside <= 0.0:
        return 1e-15 + dv
    return np.sqrt(2.0 * inside) * (1.0 + 1e-12) + 1e-15 + dv


def _cap_query_impl(x0, x1, x2, m, r0, g, start, order, c0, c1, c2, e, g3, dv):  # pragma: no cover
    """One query by cap scans: start at chord ``r0``, widen to the radius its best dot product needs."""
    y0, y1, y2 = np.float64(x0) / m, np.float64(x1) / m, np.float64(x2) / m
    yn = np.sqrt((y0 * y0 + y1 * y1) + y2 * y2)
    u0, u1, u2 = y0 / yn, y1 / yn, y2 / yn
    xn = np.float64(m) * yn
    best = -np.inf
    bi = -1
    r = r0
    while True:
        best, bi = _scan_cap(x0, x1, x2, u0, u1, u2, r, g, start, order, c0, c1, c2, best, bi)
        if bi >= 0:
            need = _cap_needed(np.float64(best), xn, e, g3, dv)
            if need <= r:
                return bi
            r = need
        else:
            r = 2.0 * r
        if r > 1.0:  # too wide a cap for the bound: every codeword
            return _scan_all(x0, x1, x2, order, c0, c1, c2, best, bi)[1]


def _cells_impl(x, s0, mb, g, X0, X1, X2, CC):  # pragma: no cover - compiled
    """Cube-map cells ``CC[:mb]`` of queries ``s0 .. s0 + mb - 1`` by branch-free (vectorised) arithmetic;
    in range whatever the row (NaN-safe clamps)."""
    for t in range(mb):
        X0[t] = x[s0 + t, 0]
        X1[t] = x[s0 + t, 1]
        X2[t] = x[s0 + t, 2]
    gf = np.float64(g)
    gm = np.float64(g - 1)
    for t in range(mb):
        x0, x1, x2 = X0[t], X1[t], X2[t]
        a0, a1, a2 = abs(x0), abs(x1), abs(x2)
        c0_ = (a0 >= a1) & (a0 >= a2)
        c1_ = a1 >= a2
        xk = x0 if c0_ else (x1 if c1_ else x2)
        ya = x1 if c0_ else (x2 if c1_ else x0)
        yb = x2 if c0_ else (x0 if c1_ else x1)
        face = (0.0 if c0_ else (2.0 if c1_ else 4.0)) + (1.0 if xk < 0 else 0.0)
        inv = 1.0 / abs(xk)
        fa = ya * inv
        fb = yb * inv
        pa = 0.5 * np.sqrt(1.0 + 3.0 * abs(fa))
        pb = 0.5 * np.sqrt(1.0 + 3.0 * abs(fb))
        fi = np.floor((pa if fa >= 0 else 1.0 - pa) * gf)
        fj = np.floor((pb if fb >= 0 else 1.0 - pb) * gf)
        fi = fi if fi > 0.0 else 0.0  # NaN -> 0
        fj = fj if fj > 0.0 else 0.0
        fi = fi if fi < gm else gm
        fj = fj if fj < gm else gm
        CC[t] = np.int64((face * gf + fi) * gf + fj)


def _classify_impl(x, g, order, c0, c1, c2, lo, hi, use_block, qcell, count, out):  # pragma: no cover
    """Step 1: each query's cell into ``qcell`` (and ``count[cell + 1] += 1``), or its answer now: ``-1``
    for NaN/inf and zero rows, ``-2`` outside the scale range, the scan of every codeword for tiny
    codebooks; ``-3`` marks rows still to answer. Returns ``(bad, first_zero, extreme)``."""
    n = x.shape[0]
    k = order.shape[0]
    bad = 0
    first_zero = -1
    extreme = 0
    blk = 64
    X0 = np.empty(blk, np.float64)
    X1 = np.empty(blk, np.float64)
    X2 = np.empty(blk, np.float64)
    CC = np.empty(blk, np.int64)
    for s0 in range(0, n, blk):
        mb = min(n, s0 + blk) - s0
        _cells(x, s0, mb, g, X0, X1, X2, CC)
        for t in range(mb):
            q = s0 + t
            x0, x1, x2 = x[q, 0], x[q, 1], x[q, 2]
            a0, a1, a2 = abs(x0), abs(x1), abs(x2)
            m = max(a0, max(a1, a2))
            qcell[q] = -1
            if not (a0 + a1 + a2 < np.inf):  # a NaN or infinite entry (max() may skip a NaN)
                bad += 1
                out[q] = -1
            elif m == 0:
                if first_zero < 0:
                    first_zero = q
                out[q] = -1
            elif m < lo or m > hi:
                extreme += 1
                out[q] = -2
            elif k <= SCAN_ALL:
                out[q] = _scan_all(x0, x1, x2, order, c0, c1, c2, -np.inf, -1)[1]
            else:
                out[q] = -3  # not answered yet
                if use_block:
                    c = CC[t]
                    qcell[q] = np.int32(c)
                    count[c + 1] += 1
    return bad, first_zero, extreme


def _group_impl(x, qcell, count):  # pragma: no cover - compiled
    """Step 2: ``count`` to cell starts (prefix sums) and the queries in cell order, one record
    ``(x0, x1, x2, row)`` each (one scattered write per query)."""
    ncell = count.shape[0] - 1
    for c in range(ncell):
        count[c + 1] += count[c]
    xs = np.empty((count[ncell], 4), np.float64)
    fill = count[:-1].copy()
    for q in range(x.shape[0]):
        c = qcell[q]
        if c >= 0:
            t = fill[c]
            xs[t, 0] = x[q, 0]
            xs[t, 1] = x[q, 1]
            xs[t, 2] = x[q, 2]
            xs[t, 3] = q
            fill[c] = t + 1
    return xs


def _gather_block_impl(face, i, j, g, start, order, c0, c1, c2, b0, b1, b2, bid):  # pragma: no cover
    """The codewords of the 3 x 3 cells around cell ``(face, i, j)`` (extended grid rows ``i .. i + 2``,
    columns ``j .. j + 2``) into ``b0, b1, b2, bid``; returns their number."""
    e = g + 2
    nb = 0
    for ii in range(i, i + 3):
        row = (face * e + ii) * e
        for t in range(start[row + j], start[row + j + 3]):
            b0[nb] = c0[t]
            b1[nb] = c1[t]
            b2[nb] = c2[t]
            bid[nb] = order[t]
            nb += 1
    return nb


def _best_in_block_impl(xs, c_lo, nq, b0, b1, b2, bid, nb, y0, y1, y2, qb, qi, k):  # pragma: no cover
    """Best float dot product ``qb`` and codeword ``qi`` (lowest index among exact ties) in the block of
    each of the ``nq`` queries ``xs[c_lo:]`` (in the query dtype of ``y0``; loops over the queries
    innermost, so they vectorise)."""
    for u in range(nq):  # back to the query dtype (exact)
        y0[u] = xs[c_lo + u, 0]
        y1[u] = xs[c_lo + u, 1]
        y2[u] = xs[c_lo + u, 2]
        qb[u] = -np.inf
        qi[u] = k
    for r in range(nb):
        p0, p1, p2 = b0[r], b1[r], b2[r]
        for u in range(nq):
            qb[u] = max(qb[u], (y0[u] * p0 + y1[u] * p1) + y2[u] * p2)
    for r in range(nb):
        p0, p1, p2, o = b0[r], b1[r], b2[r], bid[r]
        for u in range(nq):
            d = (y0[u] * p0 + y1[u] * p1) + y2[u] * p2
            qi[u] = min(qi[u], o) if d == qb[u] else qi[u]


def _certified_impl(x0, x1, x2, kk, bb, la0, lc0, la1, lc1, lb0, ld0, lb1, ld1, e2, gsl):  # pragma: no cover
    """Block certificate (``proofs/nearest_index_scan.md`` (A)): does the best float dot product ``bb`` of
    the block exceed every outside codeword's? ``la/lc``, ``lb/ld``: the block's edge lines along the two
    face axes, ``(a_t, 1 / (1 + a_t^2))``."""
    if not bb > 0:
        return False
    xk, xa, xb = _axes(kk, x0, x1, x2)
    xk = abs(xk)
    # smallest sin^2 of the angle to the block's edge lines, times |x|^2
    t1 = xa - la0 * xk
    t2 = xa - la1 * xk
    t3 = xb - lb0 * xk
    t4 = xb - lb1 * xk
    tmin = min(min(t1 * t1 * lc0, t2 * t2 * lc1), min(t3 * t3 * ld0, t4 * t4 * ld1))
    xx = (x0 * x0 + x1 * x1) + x2 * x2
    # cos <= 1 - sin^2 / 2 bounds every outside codeword's dot: |x| (1 + e) (cos + dv + g3)
    w = xx * gsl - 0.5 * (tmin * (1.0 - 1e-9) - 1e-22 * xx)
    return bb * bb * xx > e2 * w * w


def _blocks_impl(
    x, xs, count, g, start, order, c0, c1, c2, lines, wblock, e, g3, dv, out
):  # pragma: no cover
    """Step 3: per cell, its queries against its 3 x 3 block; the certified answers into ``out``."""
    k = order.shape[0]
    nqmax = 0
    for c in range(count.shape[0] - 1):
        nqmax = max(nqmax, count[c + 1] - count[c])
    b0 = np.empty(wblock, c0.dtype)
    b1 = np.empty(wblock, c0.dtype)
    b2 = np.empty(wblock, c0.dtype)
    bid = np.empty(wblock, np.int64)
    y0 = np.empty(nqmax, x.dtype)
    y1 = np.empty(nqmax, x.dtype)
    y2 = np.empty(nqmax, x.dtype)
    qb = np.empty(nqmax, x.dtype)
    qi = np.empty(nqmax, np.int64)
    e2 = (1.0 + e) * (1.0 + e) * (1.0 + 1e-14)
    # dv: the block was cut from the float64 directions; rounding moved them by at most dv (cos is
    # 1-Lipschitz, so an outside direction has <u, v> <= cos(theta) + dv)
    gsl = 1.0 + g3 + dv + 1e-15
    for face in range(6):
        kk = face // 2
        for i in range(g):
            la0, lc0 = lines[i, 0], lines[i, 1]
            la1, lc1 = lines[i + 3, 0], lines[i + 3, 1]
            for j in range(g):
                c = (face * g + i) * g + j
                c_lo = count[c]
                nq = count[c + 1] - c_lo
                if nq == 0:
                    continue
                nb = _gather_block(face, i, j, g, start, order, c0, c1, c2, b0, b1, b2, bid)
                if nb == 0:
                    continue
                _best_in_block(xs, c_lo, nq, b0, b1, b2, bid, nb, y0, y1, y2, qb, qi, k)
                lb0, ld0 = lines[j, 0], lines[j, 1]
                lb1, ld1 = lines[j + 3, 0], lines[j + 3, 1]
                for u in range(nq):
                    x0, x1, x2 = xs[c_lo + u, 0], xs[c_lo + u, 1], xs[c_lo + u, 2]
                    bb = np.float64(qb[u])
                    if _certified(x0, x1, x2, kk, bb, la0, lc0, la1, lc1, lb0, ld0, lb1, ld1, e2, gsl):
                        out[int(xs[c_lo + u, 3])] = qi[u]


def _query_impl(
    x, g, start, order, c0, c1, c2, lines, wblock, e, g3, dv, r0, lo, hi, use_block, out
):  # pragma: no cover - compiled
    """Nearest codeword of every row of ``x`` (N, 3) into ``out``; returns (bad, first_zero, extreme, slow).

    1. Each query's cube-map cell ``(face, i, j)`` (``_classify_impl``). 2. The queries grouped by cell
    (counting sort, ``_group_impl``). 3. Per cell, its queries against the codewords of the 3 x 3 cells
    around it in the face's extended grid (gathered once per cell; dot products vectorised over the
    cell's queries), certified by the angle to the block's four edge lines (``lines[t + 1] = (a_t, 1 /
    (1 + a_t^2))``, ``a_t`` the face coordinate of the grid line ``s = t / g``, ``t = -1 .. g + 1``):
    every codeword outside the block is at least that far (``_blocks_impl``). 4. The uncertified rest
    (``slow``) by cap scans (``_cap_query_impl``). ``bad``: rows with NaN or infinite entries;
    ``first_zero``: first all-zero row (-1 if none); ``extreme``: rows outside the safe scale range,
    marked ``-2`` for brute force.
    """
    n = x.shape[0]
    qcell = np.empty(n, np.int32)  # the cell of each query (-1: answered already)
    count = np.zeros(6 * g * g + 1, np.int64)  # queries per cell, then cell starts
    bad, first_zero, extreme = _classify(x, g, order, c0, c1, c2, lo, hi, use_block, qcell, count, out)
    xs = _group(x, qcell, count)
    _blocks(x, xs, count, g, start, order, c0, c1, c2, lines, wblock, e, g3, dv, out)
    slow = 0
    for q in range(n):
        if out[q] == -3:
            slow += 1
            x0, x1, x2 = x[q, 0], x[q, 1], x[q, 2]
            m = max(abs(x0), max(abs(x1), abs(x2)))
            out[q] = _cap_query(x0, x1, x2, m, r0, g, start, order, c0, c1, c2, e, g3, dv)
    return bad, first_zero, extreme, slow


_axes = _warp = _face_range = _scan_cap = _scan_all = _cap_needed = _cap_query = None
_cells = _classify = _group = _gather_block = _best_in_block = _certified = _blocks = None
#: The compiled steps: inlined into their callers (a real call per query or cell costs more than its work)
#: or, for the steps of the query kernel and the cap scan of one query, called.
_INLINE_STEPS = ("_axes", "_warp", "_face_range", "_scan_cap", "_scan_all", "_cap_needed", "_cells",
                 "_gather_block", "_best_in_block", "_certified")  # fmt: skip
_CALLED_STEPS = ("_cap_query", "_classify", "_group", "_blocks")


def compiled(name: str):
    """Compiled build (``"buckets"``) or query (``"query"``) kernel; ``None`` without numba."""
    if _numba is None:
        return None
    if name not in _COMPILED:
        steps = globals()
        if steps["_warp"] is None:
            for step in _INLINE_STEPS:
                steps[step] = _numba.njit(inline="always", **_KOPTS)(steps[step + "_impl"])
            for step in _CALLED_STEPS:
                steps[step] = _numba.njit(**_KOPTS)(steps[step + "_impl"])
        impl = {"buckets": face_buckets_impl, "query": _query_impl}[name]
        _COMPILED[name] = _numba.njit(**_KOPTS)(impl)
    return _COMPILED[name]


class CapScan:
    """Codewords bucket-sorted by cube-map cell, queried by certified block and cap scans (compiled).

    Parameters
    ----------
    points : ndarray of shape (K, 3)
        Validated float64 unit codewords.
    normerr : float
        Largest deviation of a codeword's norm from 1.
    grid : int
        Cells per cube-face edge.
    """

    def __init__(self, points: np.ndarray, normerr: float, grid: int):
        build = compiled("buckets")
        if build is None:
            raise RuntimeError("CapScan needs numba")
        self.grid = int(grid)
        # face coordinate of the outer ring's far edge (s = 1 + 1 / g), with slack
        s_out = 1.0 + 1.0 / self.grid
        amax = (4.0 * s_out * s_out - 1.0) / 3.0 * (1.0 + 1e-9) + 1e-9
        self.start, c0, c1, c2, self.order = build(points, self.grid, 1, amax)
        self._wblock = _block_sizes(self.start, self.grid)
        self._columns_of = {"float64": ((c0, c1, c2), float(normerr) * (1.0 + 1e-9) + 1e-15, 0.0)}
        self._r0 = min(1.0, START_RADIUS * math.sqrt(4.0 * math.pi / points.shape[0]))
        # the cell boundaries' face coordinates a_t (inverse of the warp at s = t / g) and 1 / (1 + a_t^2)
        s = np.arange(-1, self.grid + 2, dtype=np.float64) / self.grid
        a = np.where(s >= 0.5, (4.0 * s * s - 1.0) / 3.0, (1.0 - 4.0 * (1.0 - s) ** 2) / 3.0)
        self._lines = np.ascontiguousarray(np.stack([a, 1.0 / (1.0 + a * a)], axis=1))

    def _columns(self, dtype: str):
        """Bucketed coordinate columns in ``dtype``, the largest deviation ``e`` of their norms from 1 (with
        slack) and ``dv``, how far rounding to ``dtype`` moved a codeword's direction."""
        if dtype not in self._columns_of:
            cols64 = self._columns_of["float64"][0]
            cols = tuple(np.ascontiguousarray(c.astype(dtype)) for c in cols64)
            r = [c.astype(np.float64) for c in cols]
            n = np.sqrt((r[0] * r[0] + r[1] * r[1]) + r[2] * r[2])
            err = float(np.abs(n - 1.0).max()) if n.size else 0.0
            # |p32 - p| <= u32 |p| per coordinate (sqrt(3) u32 in all), doubled for the change of its
            # norm; 2x slack
            dv = 4.0 * 2.0**-24 * math.sqrt(3.0)
            self._columns_of[dtype] = (cols, err * (1.0 + 1e-9) + 1e-15, dv)
        return self._columns_of[dtype]

    def query(self, flat: np.ndarray, out: np.ndarray, scale: tuple[float, float], *, use_block: bool = True):
        """Fill ``out`` with the nearest codeword of each row of ``flat`` (float32/float64, (N, 3)).

        ``scale``: the range of ``max_i |x_i|`` answered here; rows outside it are marked ``-2`` (their
        dot products may under- or overflow). ``use_block=False`` sends every query to the cap scan
        (for tests of that path). Returns ``(bad, first_zero, extreme, slow)`` as ``_query_impl``.
        """
        dtype = "float32" if flat.dtype == np.float32 else "float64"
        (c0, c1, c2), e, dv = self._columns(dtype)
        u = 2.0**-24 if dtype == "float32" else 2.0**-53
        g3 = 3.0 * u / (1.0 - 3.0 * u) * (1.0 + 1e-6)
        args = (self._lines, self._wblock, e, g3, dv, self._r0, scale[0], scale[1], bool(use_block))
        return compiled("query")(flat, self.grid, self.start, self.order, c0, c1, c2, *args, out)
