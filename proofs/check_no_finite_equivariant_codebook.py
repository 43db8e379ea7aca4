"""Sympy check for "no finite codebook commutes with all rotations" (Eq. 3 is impossible).

Checks the steps of ``proofs/no_finite_equivariant_codebook.md``:

1. transitivity: for a symbolic unit ``w`` with ``w_z != -1`` the matrix
   ``R_w = I + K + K^2 / (1 + w_z)`` (``K`` the cross-product matrix of ``e_z x w``) is a rotation with
   ``R_w e_z = w``, and ``diag(1, -1, -1)`` sends ``e_z`` to ``-e_z``: the SO(3)-orbit of a point is all of S^2;
   so ``R_w R_c^T`` sends any ``c`` to any ``w``;
2. the finite symmetry group: the 24 signed permutation matrices with determinant 1 each map the octahedron
   codebook onto itself (exact integers), whereas the rotation by ``pi/4`` about ``z`` sends the codeword
   ``e_x`` outside the codebook, so commutation fails at ``u = e_x`` (and near it);
3. the bound ``|Sym(C)| <= K (K - 1)`` for a codebook not contained in a line (24 <= 30 for the octahedron);
4. a rotation-invariant *map into a finite set* exists for single axes: for ``C = {N, S}`` every rotation about
   ``z`` preserves the sign of ``u_z``, so commutation with one axis does not imply a contradiction (the
   theorem needs the whole group, or two independent axes).

Run ``python proofs/check_no_finite_equivariant_codebook.py``; exits non-zero on failure.
"""

from __future__ import annotations

import itertools

import sympy as sp
from _check_helpers import is_zero, ok, sphere_point

__all__ = ["main"]


def _nearest(points: list[sp.Matrix], u: sp.Matrix) -> sp.Matrix:
    """Exact nearest codeword (largest inner product); raises on a tie so the check cannot hide one."""
    scores = [sp.nsimplify(u.dot(p)) for p in points]
    best = max(scores, key=lambda z: float(z))
    if sum(1 for z in scores if sp.simplify(z - best) == 0) != 1:
        raise ValueError("tie in the exact nearest-codeword search")
    return points[scores.index(best)]


def main() -> None:
    """Run every check; raise AssertionError on the first failure."""
    print("No finite codebook commutes with all rotations:")
    s, t = sp.symbols("s t", real=True)
    w = sphere_point(s, t)  # w_z = (s^2 + t^2 - 1)/(s^2 + t^2 + 1) > -1 for every real s, t
    ez = sp.Matrix([0, 0, 1])
    k = ez.cross(w)
    kx = sp.Matrix([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    Rw = sp.eye(3) + kx + kx * kx / (1 + w[2])
    ok(all(is_zero(e) for e in (Rw * ez - w)), "R_w e_z = w for every unit w with w_z != -1")
    ok(all(is_zero(e) for e in (Rw.T * Rw - sp.eye(3))), "R_w^T R_w = I")
    ok(is_zero(Rw[:, 0].dot(Rw[:, 1].cross(Rw[:, 2])) - 1), "det R_w = 1")
    flip = sp.diag(1, -1, -1)
    ok(flip * ez == -ez and flip.det() == 1, "diag(1, -1, -1) is a rotation sending e_z to -e_z")
    wrong = sp.eye(3) + kx  # first-order (wrong) rotation: must fail
    ok(
        not all(is_zero(e) for e in (wrong.T * wrong - sp.eye(3))),
        "negative control: I + K is not orthogonal",
    )

    # The octahedron's rotation group.
    octa = [sp.Matrix(v) for v in ([1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1])]
    octa_set = {tuple(v) for v in octa}
    group = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            g = sp.zeros(3, 3)
            for row, col in enumerate(perm):
                g[row, col] = signs[row]
            if g.det() == 1:
                group.append(g)
    ok(len(group) == 24, f"24 signed permutation matrices with det 1 (found {len(group)})")
    ok(
        all({tuple(g * v) for v in octa} == octa_set for g in group),
        "each of them permutes the octahedron codebook (g C = C)",
    )
    ok(len(group) <= len(octa) * (len(octa) - 1), "|Sym(C)| = 24 <= K (K - 1) = 30")
    r45 = sp.Matrix([[1, -1, 0], [1, 1, 0], [0, 0, sp.sqrt(2)]]) / sp.sqrt(2)
    ok(sp.simplify(r45.T * r45 - sp.eye(3)) == sp.zeros(3, 3), "R = rotation by pi/4 about z is orthogonal")
    image = sp.simplify(r45 * octa[0])
    ok(tuple(image) not in octa_set, f"R e_x = {tuple(image)} is not a codeword")
    u = sp.Matrix([1, sp.Rational(1, 10), sp.Rational(1, 20)])  # a point near e_x, in its open Voronoi cell
    lhs = _nearest(octa, sp.simplify(r45 * u))
    rhs = sp.simplify(r45 * _nearest(octa, u))
    ok(lhs != rhs, f"commutation fails near e_x: Q_d(R u) = {tuple(lhs)} but R Q_d(u) = {tuple(rhs)}")

    # One axis is not enough for a contradiction: rotations about z commute with sign(u_z) for C = {N, S}.
    a = sp.symbols("a", real=True)
    rz = sp.Matrix([[sp.cos(a), -sp.sin(a), 0], [sp.sin(a), sp.cos(a), 0], [0, 0, 1]])
    x = sp.Matrix(sp.symbols("x1:4", real=True))
    ok(
        (rz * x)[2] == x[2] and rz * ez == ez,
        "rotations about z fix N, S and preserve u_z (remark on one axis)",
    )
    print("No finite equivariant codebook: all checks passed.")


if __name__ == "__main__":
    main()
