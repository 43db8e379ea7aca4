"""Raw point sets on the unit sphere: the generators behind the codebook constructors (bottom layer).

Every function returns a plain float64 array of shape (n, 3) (unit rows) and validates nothing: the
public constructors (:mod:`spherequant.codebook`, :mod:`spherequant.learn`) check their arguments and
wrap the arrays. :mod:`spherequant.lookup`, :mod:`spherequant.learn` and :mod:`spherequant.codebook` all
import from here, and this module imports none of them, so the three never need each other's internals.

Also here: the duplicate-direction test shared by :class:`spherequant.codebook.Codebook` and
:func:`spherequant.learn.hull_holes`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

#: The golden ratio.
PHI = (1.0 + math.sqrt(5.0)) / 2.0
#: Two directions at an angle below this (radians) are duplicates.
DUPLICATE_ANGLE = 1e-12


def _unit(x: np.ndarray) -> np.ndarray:
    """Non-zero rows scaled to unit length as :func:`spherequant.sphere.normalize` does (same bits)."""
    y = x / np.max(np.abs(x), axis=-1, keepdims=True)
    return y / np.sqrt(np.sum(y * y, axis=-1, keepdims=True))


def _spiral(z: np.ndarray, n: int, step: float) -> np.ndarray:
    """Points at heights ``z`` with longitude ``2 pi frac(i * step)`` for ``i = 0..n-1`` (step ~ 1/PHI)."""
    i = np.arange(n, dtype=np.float64)
    phi = 2.0 * np.pi * np.mod(i * step, 1.0)
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


def fibonacci_points(n: int) -> np.ndarray:
    """Spherical Fibonacci spiral: ``z_i = 1 - (2 i + 1) / n``, ``phi_i = 2 pi frac(i / PHI)``; (n, 3)."""
    i = np.arange(n, dtype=np.float64)
    return _spiral(1.0 - (2.0 * i + 1.0) / n, n, PHI - 1.0)


def pole_corrected_fibonacci_points(n: int, offset: float = 0.25) -> np.ndarray:
    """Spiral with ``z_i = 1 - 2 (i + offset) / (n - 1 + 2 offset)`` (end points nearer the poles); (n, 3)."""
    i = np.arange(n, dtype=np.float64)
    # 2 / (1 + sqrt 5) is 1/PHI one ulp below PHI - 1: kept, so the shipped table's starts are reproduced
    return _spiral(1.0 - 2.0 * (i + offset) / (n - 1 + 2.0 * offset), n, 2.0 / (1.0 + math.sqrt(5.0)))


def icosahedron_mesh() -> tuple[np.ndarray, np.ndarray]:
    """Vertices (12, 3) unit and faces (20, 3) of the regular icosahedron (outward orientation)."""
    v = np.array(
        [
            [-1, PHI, 0], [1, PHI, 0], [-1, -PHI, 0], [1, -PHI, 0],
            [0, -1, PHI], [0, 1, PHI], [0, -1, -PHI], [0, 1, -PHI],
            [PHI, 0, -1], [PHI, 0, 1], [-PHI, 0, -1], [-PHI, 0, 1],
        ],
        dtype=np.float64,
    )  # fmt: skip
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    f = np.array(
        [
            [0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11],
            [1, 5, 9], [5, 11, 4], [11, 10, 2], [10, 7, 6], [7, 1, 8],
            [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9],
            [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1],
        ]
    )  # fmt: skip
    return v, f


def icosahedral_points(level: int) -> np.ndarray:
    """``level`` rounds of midpoint subdivision of the icosahedron: ``10 * 4**level + 2`` points.

    The 12 icosahedron vertices come first, then each round's new edge midpoints (projected to the
    sphere; a midpoint shared by two faces is created once).
    """
    v, f = icosahedron_mesh()
    for _ in range(level):
        e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
        uniq, inv = np.unique(e, axis=0, return_inverse=True)
        mid = _unit(v[uniq[:, 0]] + v[uniq[:, 1]])
        m01, m12, m20 = len(v) + inv.reshape(3, -1)  # midpoint index of edge (01), (12), (20) of each face
        v = np.concatenate([v, mid])
        a, b, c = f[:, 0], f[:, 1], f[:, 2]
        f = np.concatenate(
            [
                np.stack([a, m01, m20], 1),
                np.stack([b, m12, m01], 1),
                np.stack([c, m20, m12], 1),
                np.stack([m01, m12, m20], 1),
            ]
        )
    return v


def geodesic_points(i: int, j: int) -> np.ndarray:
    """Geodesic grid of the icosahedron with Goldberg-Coxeter parameters ``(i, j)``: ``10 T + 2`` points,
    ``T = i^2 + i j + j^2``.

    On each face ``(A, B, C)`` (outward orientation) the triangular lattice ``a u + b v`` (``u = (1, 0)``,
    ``v = (1/2, sqrt(3)/2)``) is laid so that the face's corners are the lattice points ``0``,
    ``P = i u + j v`` and ``P`` turned by 60 degrees; every lattice point of the closed triangle is mapped
    by its barycentric coordinates to ``lambda_A A + lambda_B B + lambda_C C`` and projected to the sphere.
    Points on shared edges and corners are kept once (the first face's copy), in face order.
    ``(1, 0)`` is the icosahedron and ``(2, 0)`` the point set of ``icosahedral_points(1)`` (deeper
    midpoint subdivisions project at every halving, so they differ from ``(2**k, 0)``); ``(i, j)`` and
    ``(j, i)`` are mirror images.
    """
    v3, faces = icosahedron_mesh()
    u = np.array([1.0, 0.0])
    w = np.array([0.5, math.sqrt(3.0) / 2.0])
    p_ = i * u + j * w
    q_ = -j * u + (i + j) * w
    inv = np.linalg.inv(np.stack([p_, q_], axis=1))
    span = np.arange(-j - 1, i + j + 2)
    a, b = np.meshgrid(span, span, indexing="ij")
    xy = a.reshape(-1, 1) * u + b.reshape(-1, 1) * w
    lam = xy @ inv.T  # barycentric weights of P and Q
    bary = np.concatenate([1.0 - lam.sum(axis=1, keepdims=True), lam], axis=1)
    bary = bary[(bary >= -1e-9).all(axis=1)]
    pts = np.concatenate([bary @ v3[face] for face in faces])
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    _, first = np.unique(np.round(pts, 9), axis=0, return_index=True)
    return pts[np.sort(first)]


def healpix_points(nside: int) -> np.ndarray:
    """HEALPix pixel centres in the RING ordering (Gorski et al. 2005): ``12 nside**2`` points.

    Rings ``i = 1 .. 4 nside - 1`` from north to south. Polar rings (``i < nside``) hold ``4 i`` pixels at
    ``z = 1 - i^2 / (3 nside^2)``, ``phi = pi (j - 1/2) / (2 i)``; equatorial rings hold ``4 nside`` pixels
    at ``z = 4/3 - 2 i / (3 nside)``, ``phi = pi (j - 1 + s/2) / (2 nside)`` with
    ``s = (i - nside + 1) mod 2``; southern rings mirror the northern ones.
    """
    ns = float(nside)
    rings = []
    for i in range(1, nside):  # north polar cap
        j = np.arange(1, 4 * i + 1, dtype=np.float64)
        one_minus_z = i * i / (3.0 * ns * ns)
        rings.append(
            (1.0 - one_minus_z, np.sqrt(one_minus_z * (2.0 - one_minus_z)), np.pi * (j - 0.5) / (2 * i))
        )
    north = list(rings)
    j = np.arange(1, 4 * nside + 1, dtype=np.float64)
    for i in range(nside, 3 * nside + 1):  # equatorial belt
        z = 4.0 / 3.0 - 2.0 * i / (3.0 * ns)
        s = (i - nside + 1) % 2
        rings.append((z, math.sqrt((1.0 - z) * (1.0 + z)), np.pi * (j - 1.0 + s / 2.0) / (2 * ns)))
    for z, st, phi in reversed(north):  # south polar cap (mirror of the north)
        rings.append((-z, st, phi))
    return np.concatenate(
        [
            np.stack([st * np.cos(phi), st * np.sin(phi), np.full(phi.shape, z)], axis=1)
            for z, st, phi in rings
        ]
    )


def tetrahedron_points() -> np.ndarray:
    """``(1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)``, normalised: (4, 3)."""
    return np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=np.float64) / math.sqrt(3.0)


def octahedron_points() -> np.ndarray:
    """``+x, -x, +y, -y, +z, -z``: (6, 3)."""
    return np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64)


def cube_points() -> np.ndarray:
    """``(+-1, +-1, +-1) / sqrt(3)`` in lexicographic sign order: (8, 3)."""
    s = np.array([-1.0, 1.0])
    return np.stack(np.meshgrid(s, s, s, indexing="ij"), axis=-1).reshape(-1, 3) / math.sqrt(3.0)


def icosahedron_points() -> np.ndarray:
    """Cyclic permutations of ``(0, +-1, +-PHI)``, normalised (the order of :func:`icosahedron_mesh`)."""
    return icosahedron_mesh()[0]


def dodecahedron_points() -> np.ndarray:
    """``(+-1, +-1, +-1)`` and cyclic ``(0, +-1/PHI, +-PHI)``, normalised: (20, 3)."""
    s = np.array([-1.0, 1.0])
    v = [np.stack(np.meshgrid(s, s, s, indexing="ij"), axis=-1).reshape(-1, 3)]
    for a in (-1.0, 1.0):
        for b in (-1.0, 1.0):
            u, w = a / PHI, b * PHI
            v.append(np.array([[0.0, u, w], [u, w, 0.0], [w, 0.0, u]]))
    v = np.concatenate(v)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def duplicate_pair(points: np.ndarray, tree: cKDTree | None = None) -> tuple[int, int, float] | None:
    """The first pair of unit rows less than ``DUPLICATE_ANGLE`` apart, as ``(i, j, angle)``, or None.

    ``tree`` is an optional ``cKDTree`` of ``points`` (reused when the caller has one). Angles are
    ``atan2(|a x b|, a . b)`` (accurate near 0).
    """
    if points.shape[0] < 2:
        return None
    tree = cKDTree(points) if tree is None else tree
    pairs = tree.query_pairs(r=2 * DUPLICATE_ANGLE, output_type="ndarray")
    if not len(pairs):
        return None
    a, b = points[pairs[:, 0]], points[pairs[:, 1]]
    ang = np.arctan2(np.linalg.norm(np.cross(a, b), axis=1), np.einsum("ij,ij->i", a, b))
    bad = ang < DUPLICATE_ANGLE
    if not bad.any():
        return None
    k = int(np.argmax(bad))
    i, j = sorted(int(v) for v in pairs[k])
    return i, j, float(ang[k])
