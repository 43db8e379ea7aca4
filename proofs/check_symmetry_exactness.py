"""Sympy (and independent numeric) check of exact commutation under the codebook's symmetry group.

Checks the steps of ``proofs/symmetry_exactness.md``:

1. ``<g u, g c> = <u, c>`` for a symbolic orthogonal ``g`` (``g^T g = I`` for the rational rotation built from
   a symbolic quaternion) and symbolic ``u, c``;
2. the icosahedron (vertices ``(0, +-1, +-phi)`` and cyclic permutations, ``phi`` the golden ratio) is mapped
   onto itself *exactly* by three generators: the 3-fold cyclic permutation, the 2-fold ``diag(1, -1, -1)`` and
   the 5-fold rotation about a vertex (angle ``2 pi / 5``, ``cos = (sqrt(5) - 1)/4``);
3. numerically (numpy only, not the library): the generated group has 60 elements, and for every element ``g``
   and 2000 random ``u`` away from Voronoi boundaries the index map satisfies ``Q_d(g u) = g Q_d(u)``;
4. negative controls: a random rotation breaks commutation for some ``u``; at a tie (an edge midpoint) a
   lowest-index tie-break is *not* equivariant under the half-turn swapping the edge's endpoints.

Run ``python proofs/check_symmetry_exactness.py``; exits non-zero on failure.
"""

from __future__ import annotations

import numpy as np
import sympy as sp
from _check_helpers import is_zero, ok

__all__ = ["main"]


def _quaternion_rotation(a, b, c, d) -> sp.Matrix:
    """Rotation matrix of the (non-normalised) quaternion a + b i + c j + d k, divided by its squared norm."""
    n = a**2 + b**2 + c**2 + d**2
    return (
        sp.Matrix(
            [
                [a**2 + b**2 - c**2 - d**2, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                [2 * (b * c + a * d), a**2 - b**2 + c**2 - d**2, 2 * (c * d - a * b)],
                [2 * (b * d - a * c), 2 * (c * d + a * b), a**2 - b**2 - c**2 + d**2],
            ]
        )
        / n
    )


def _icosahedron_exact() -> list[sp.Matrix]:
    phi = (1 + sp.sqrt(5)) / 2
    out = []
    for s1 in (1, -1):
        for s2 in (1, -1):
            out += [sp.Matrix([0, s1, s2 * phi]), sp.Matrix([s1, s2 * phi, 0]), sp.Matrix([s2 * phi, 0, s1])]
    return out


def _exact_zero(expr) -> bool:
    return sp.expand(sp.radsimp(sp.expand(expr))) == 0


def _same_set(points: list[sp.Matrix], images: list[sp.Matrix]) -> bool:
    """Exact set equality; a 30-digit numeric match picks the partner, then equality is proved exactly."""
    remaining = list(points)
    for q in images:
        qn = np.array(sp.N(q, 30).tolist(), dtype=float).ravel()
        hit = [
            i
            for i, p in enumerate(remaining)
            if np.abs(np.array(sp.N(p, 30).tolist(), float).ravel() - qn).max() < 1e-9
        ]
        if len(hit) != 1 or not all(_exact_zero(e) for e in (remaining[hit[0]] - q)):
            return False
        remaining.pop(hit[0])
    return not remaining


def _close_group(generators: list[np.ndarray], limit: int = 500) -> list[np.ndarray]:
    group = [np.eye(3)]
    frontier = [np.eye(3)]
    while frontier:
        new = []
        for g in frontier:
            for h in generators:
                p = h @ g
                if not any(np.abs(p - q).max() < 1e-9 for q in group):
                    group.append(p)
                    new.append(p)
        frontier = new
        if len(group) > limit:
            raise AssertionError("group closure does not terminate: generators are not a finite group")
    return group


def main() -> None:
    """Run every check; raise AssertionError on the first failure."""
    print("Exactness under the codebook's symmetry group:")
    q = sp.symbols("q0:4", real=True)
    g = _quaternion_rotation(*q)
    ok(all(is_zero(e) for e in (g.T * g - sp.eye(3))), "g^T g = I for a symbolic quaternion rotation")
    u = sp.Matrix(sp.symbols("u1:4", real=True))
    c = sp.Matrix(sp.symbols("c1:4", real=True))
    ok(is_zero((g * u).dot(g * c) - u.dot(c)), "<g u, g c> = <u, c>")
    ok(not is_zero((g * u).dot(c) - u.dot(c)), "negative control: <g u, c> != <u, c> in general")

    verts = _icosahedron_exact()
    g3 = sp.Matrix([[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    g2 = sp.diag(1, -1, -1)
    axis = verts[0] / sp.sqrt(verts[0].dot(verts[0]))
    kx = sp.Matrix([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    cos5 = (sp.sqrt(5) - 1) / 4
    sin5 = sp.sqrt(10 + 2 * sp.sqrt(5)) / 4
    ok(sp.simplify(sp.cos(2 * sp.pi / 5) - cos5) == 0, "cos(2 pi / 5) = (sqrt(5) - 1)/4")
    ok(sp.simplify(sp.sin(2 * sp.pi / 5) - sin5) == 0, "sin(2 pi / 5) = sqrt(10 + 2 sqrt(5))/4")
    g5 = (sp.eye(3) + sin5 * kx + (1 - cos5) * kx * kx).applyfunc(lambda e: sp.radsimp(sp.simplify(e)))
    ok(all(_exact_zero(e) for e in (g5.T * g5 - sp.eye(3))), "the 5-fold matrix is exactly orthogonal")
    for name, gen in (("3-fold", g3), ("2-fold", g2), ("5-fold", g5)):
        ok(
            _same_set(verts, [gen * v for v in verts]),
            f"the {name} generator maps the icosahedron onto itself",
        )
    g5_wrong = sp.eye(3) + sin5 * kx + (1 - cos5 / 2) * kx * kx
    ok(not _same_set(verts, [g5_wrong * v for v in verts]), "negative control: a perturbed 5-fold map fails")

    # Numeric: group closure and exact commutation of the index map away from ties.
    gens = [np.array(sp.N(m, 30).tolist(), dtype=float) for m in (g3, g2, g5)]
    group = _close_group(gens)
    ok(len(group) == 60, f"the generated rotation group has {len(group)} elements (60 expected)")
    pts = np.array([np.array(sp.N(v, 30).tolist(), dtype=float).ravel() for v in verts])
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2000, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    scores = x @ pts.T
    top2 = np.sort(scores, axis=1)[:, -2:]
    x = x[top2[:, 1] - top2[:, 0] > 1e-6]  # away from Voronoi boundaries (ties)
    idx = (x @ pts.T).argmax(axis=1)
    worst = 0
    for gm in group:
        perm = (
            np.abs((gm @ pts.T).T[:, None, :] - pts[None, :, :]).sum(-1).argmin(axis=1)
        )  # g c_i = c_perm[i]
        lhs = ((x @ gm.T) @ pts.T).argmax(axis=1)
        worst = max(worst, int((lhs != perm[idx]).sum()))
    ok(worst == 0, f"Q_d(g u) = g Q_d(u) for all 60 g and {len(x)} non-tie u (mismatches: {worst})")
    rand_rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    rand_rot *= np.sign(np.linalg.det(rand_rot))
    images = (rand_rot @ pts.T).T
    nearest_img = (images @ pts.T).max(axis=1)
    ok(nearest_img.min() < 1 - 1e-6, "negative control: a random rotation does not map C onto C")
    # Tie: the midpoint of an edge (c_0, c_j) is fixed by the half-turn about it, which swaps c_0 and c_j.
    j = int(np.argsort(-(pts @ pts[0]))[1])
    mid = (pts[0] + pts[j]) / np.linalg.norm(pts[0] + pts[j])
    half_turn = 2 * np.outer(mid, mid) - np.eye(3)
    lowest = int(np.flatnonzero(np.isclose(pts @ mid, (pts @ mid).max(), atol=1e-12))[0])
    ok(
        np.allclose(half_turn @ mid, mid) and any(np.allclose(half_turn, gm) for gm in group),
        "the half-turn about an edge midpoint is in the group and fixes the midpoint",
    )
    ok(
        not np.allclose(half_turn @ pts[lowest], pts[lowest]),
        "at the tie, the lowest-index rule gives Q_d(g u) = c_0 but g Q_d(u) = c_j: not equivariant",
    )
    print("Symmetry exactness: all checks passed.")


if __name__ == "__main__":
    main()
