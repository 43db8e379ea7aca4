"""Sympy check of the commutation bounds for the direction quantizer and for MDDQ.

Checks the steps of ``proofs/commutation_bound.md``:

1. a symbolic rotation (Rodrigues formula, axis on a rational parametrisation of the sphere, symbolic angle)
   is orthogonal with determinant 1, hence an isometry: ``||R x - R y|| = ||x - y||`` and ``||R x|| = ||x||``;
2. the spherical triangle inequality in cosine form: for ``x, z`` at polar angles ``alpha, beta`` from ``y``,
   ``<x, z> - cos(alpha + beta) = sin(alpha) sin(beta) (1 + cos(phi)) >= 0``;
3. the sharpened bound is never worse: ``2 sin(delta) = 4 sin(delta/2) cos(delta/2) <= 4 sin(delta/2)``, and
   ``2 <= 4 sin(delta/2)`` when ``delta >= pi/2``;
4. tightness of ``2 sin(min(pi, 2 delta)/2)`` for ``C = {N, S}`` (``delta = pi/2``): the commutation error
   tends to 2 under small rotations across the equator, while the naive value ``2 sin(delta/2)`` (no doubling)
   is exceeded (negative control);
5. the MDDQ reduction: ``Q(R v) - R Q(v) = Q_m(r) (Q_d(R u) - R Q_d(u))`` because ``|R v| = |v|``.

Run ``python proofs/check_commutation_bound.py``; exits non-zero on failure.
"""

from __future__ import annotations

import sympy as sp
from _check_helpers import is_zero, never_negative, ok, sphere_point

__all__ = ["main", "rodrigues"]


def rodrigues(axis: sp.Matrix, angle) -> sp.Matrix:
    """Active rotation by ``angle`` about the unit ``axis``: I + sin(a) K + (1 - cos(a)) K^2."""
    kx = sp.Matrix([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return sp.eye(3) + sp.sin(angle) * kx + (1 - sp.cos(angle)) * kx * kx


def _zero_matrix(mat: sp.Matrix) -> bool:
    return all(is_zero(e) for e in mat)


def symbolic_rotation():
    """A rotation with symbolic axis and angle, all entries rational functions.

    The unit axis is an inverse stereographic image of ``(s, t)`` and the angle enters through the
    half-angle substitution ``cos(a) = (1 - w^2)/(1 + w^2)``, ``sin(a) = 2 w/(1 + w^2)``, ``w = tan(a/2)``,
    so every rotation except the half-turns is covered and identities reduce to polynomial arithmetic.
    """
    s, t, w = sp.symbols("s t w", real=True)
    axis = sphere_point(s, t)
    kx = sp.Matrix([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    cos_a = (1 - w**2) / (1 + w**2)
    sin_a = 2 * w / (1 + w**2)
    return sp.eye(3) + sin_a * kx + (1 - cos_a) * kx * kx


def main() -> None:
    """Run every check; raise AssertionError on the first failure."""
    print("Commutation bound:")
    R = symbolic_rotation()
    ok(_zero_matrix(R.T * R - sp.eye(3)), "R^T R = I for a symbolic rotation (Rodrigues, rational form)")
    ok(is_zero(R[:, 0].dot(R[:, 1].cross(R[:, 2])) - 1), "det R = 1 (triple product of the columns)")
    # ||R x - R y||^2 - ||x - y||^2 = (x - y)^T (R^T R - I) (x - y) = 0 and ||R v|| = ||v|| follow.
    ok(not _zero_matrix(R.T - sp.eye(3)), "negative control: R is not the identity")

    al, be, ph = sp.symbols("alpha beta phi", real=True)
    X = sp.Matrix([sp.sin(al), 0, sp.cos(al)])
    Z = sp.Matrix([sp.sin(be) * sp.cos(ph), sp.sin(be) * sp.sin(ph), sp.cos(be)])
    gap = X.dot(Z) - sp.cos(al + be)
    ok(
        sp.simplify(gap - sp.sin(al) * sp.sin(be) * (1 + sp.cos(ph))) == 0,
        "<x, z> - cos(alpha + beta) = sin(alpha) sin(beta) (1 + cos(phi))",
    )
    ok(
        never_negative(sp.sin(al), al, sp.Interval(0, sp.pi))
        and never_negative(sp.sin(be), be, sp.Interval(0, sp.pi))
        and never_negative(1 + sp.cos(ph), ph, sp.Reals),
        "each factor is >= 0 (sin on [0, pi], 1 + cos everywhere), so the gap is >= 0 on [0, pi]^2",
    )
    ok(
        not never_negative(sp.sin(al), al, sp.Interval(0, 2 * sp.pi)),
        "negative control: sin(alpha) >= 0 is not proved on [0, 2 pi]",
    )
    ok(
        sp.simplify(gap.subs(ph, 0) - (sp.cos(al - be) - sp.cos(al + be))) == 0,
        "negative control: the gap is not identically 0 (it equals cos(a-b) - cos(a+b) at phi = 0)",
    )

    d = sp.symbols("delta", real=True)
    ok(
        sp.simplify(2 * sp.sin(d) - 4 * sp.sin(d / 2) * sp.cos(d / 2)) == 0,
        "2 sin(delta) = 4 sin(delta/2) cos(delta/2) <= 4 sin(delta/2)",
    )
    ok(
        sp.solveset(4 * sp.sin(d / 2) < 2, d, sp.Interval(sp.pi / 2, sp.pi)) == sp.S.EmptySet,
        "4 sin(delta/2) >= 2 on [pi/2, pi], so the cap at 2 (the diameter) is also never worse",
    )

    # Tightness for C = {N, S}: u = (0, cos e, sin e) (just north), R = rotation by -2e about the x axis.
    e = sp.symbols("epsilon", positive=True)
    N, S = sp.Matrix([0, 0, 1]), sp.Matrix([0, 0, -1])
    Rx = rodrigues(sp.Matrix([1, 0, 0]), -2 * e)
    u = sp.Matrix([0, sp.cos(e), sp.sin(e)])
    ru = sp.simplify(Rx * u)
    ok(sp.simplify(ru - sp.Matrix([0, sp.cos(e), -sp.sin(e)])) == sp.zeros(3, 1), "R u = (0, cos e, -sin e)")
    # For 0 < e < pi/2, Q_d(u) = N and Q_d(R u) = S (sign of the z component).
    err2 = sp.simplify((S - Rx * N).dot(S - Rx * N))
    ok(sp.simplify(err2 - (2 + 2 * sp.cos(2 * e))) == 0, "||Q_d(R u) - R Q_d(u)||^2 = 2 + 2 cos(2 e)")
    lim = sp.limit(sp.sqrt(err2), e, 0, "+")
    sharp = 2 * sp.sin(sp.Min(sp.pi, 2 * (sp.pi / 2)) / 2)
    ok(
        lim == 2 and sharp == 2,
        "the error tends to 2 = 2 sin(min(pi, 2 delta)/2): the sharpened bound is tight",
    )
    naive = 2 * sp.sin(sp.pi / 4)
    ok(bool(lim > naive), f"negative control: 2 sin(delta/2) = {naive} is exceeded (no doubling is wrong)")

    # MDDQ: Q(R v) = Q_m(|R v|) Q_d(R v / |R v|) and |R v| = |v|; check on a concrete exact rotation.
    v = sp.Matrix(sp.symbols("v1:4", real=True))
    sub = {
        sp.Symbol("s", real=True): sp.Rational(1, 3),
        sp.Symbol("t", real=True): -2,
        sp.Symbol("w", real=True): 5,
    }
    Rc = R.subs(sub)
    ok(sp.expand((Rc * v).dot(Rc * v) - v.dot(v)) == 0, "|R v| = |v| (so Q_m(|R v|) = Q_m(|v|))")
    print("Commutation bound: all checks passed.")


if __name__ == "__main__":
    main()
