"""Sympy check of Prop. III.1 (geometric STE) and of the MDDQ backward formula.

Checks the steps of ``proofs/geometric_ste.md``:

1. the tangent projector ``P_u = I - u u^T`` for symbolic unit ``u``: ``P^2 = P``, ``P^T = P``, ``P u = 0``,
   ``<P g, u> = 0`` and ``<P_{v/|v|} g, v> = 0`` for symbolic ``v != 0`` (Prop. III.1);
2. first-order norm preservation: ``d/d eta |v - eta P g|^2`` vanishes at ``eta = 0``;
3. surrogate A, ``F_A(v) = M(|v|) v / |v|`` (direction treated as the identity): its exact vector-Jacobian
   product is ``(M/r) P_u g + M'(r) <u, g> u``;
4. surrogate B, ``F_B(v') = M(|v'|) (c + v'/|v'| - u)`` linearised at ``v`` (forward value ``M(r) c``; the
   direction quantizer replaced by ``c`` plus the identity on the sphere): its exact vector-Jacobian product at
   ``v' = v`` is ``(M/r) P_u g + M'(r) <c, g> u``, the backward of :class:`spherequant.quantize.MDDQ`;
5. the two differ by the purely radial ``M'(r) <c - u, g> u``; and the stated MDDQ backward is *not* the
   derivative of surrogate A unless ``c = u`` (negative control).

Run ``python proofs/check_geometric_ste.py``; exits non-zero on failure.
"""

from __future__ import annotations

import sympy as sp
from _check_helpers import is_zero, ok, sphere_point

__all__ = ["main"]


def main() -> None:
    """Run every check; raise AssertionError on the first failure."""
    print("Geometric STE (Prop. III.1) and the MDDQ backward:")
    s, t = sp.symbols("s t", real=True)
    u = sphere_point(s, t)
    g = sp.Matrix(sp.symbols("g1:4", real=True))
    P = sp.eye(3) - u * u.T
    ok(all(is_zero(e) for e in (P * P - P)), "P_u^2 = P_u")
    ok(P.T == P, "P_u^T = P_u")
    ok(all(is_zero(e) for e in (P * u)), "P_u u = 0")
    ok(is_zero((P * g).dot(u)), "<P_u g, u> = 0 for every g")
    ok(not is_zero(g.dot(u)), "negative control: <g, u> itself is not 0 (the plain STE has a radial part)")

    x = sp.Matrix(sp.symbols("x1:4", real=True))
    r = sp.sqrt(x.dot(x))
    uh = x / r
    Pv = sp.eye(3) - uh * uh.T
    ok(sp.simplify((Pv * g).dot(x)) == 0, "<P_{v/|v|} g, v> = 0 for symbolic v != 0 (Prop. III.1)")
    P_bad = sp.eye(3) - x * x.T  # forgetting to normalise v
    ok(
        sp.simplify((P_bad * g).dot(x)) != 0,
        "negative control: I - v v^T (unnormalised) is not orthogonal to v",
    )
    eta = sp.symbols("eta", real=True)
    step = x - eta * (Pv * g)
    ok(
        sp.simplify(sp.diff(step.dot(step), eta).subs(eta, 0)) == 0,
        "d/d eta |v - eta P g|^2 = 0 at eta = 0 (norm preserved to first order)",
    )

    # Surrogates for the MDDQ backward, with M a generic smooth magnitude surrogate (M' = 1 in range for the STE).
    M = sp.Function("M")
    rr = sp.symbols("r", positive=True)
    c = sp.Matrix(sp.symbols("c1:4", real=True))
    u0 = sp.Matrix(sp.symbols("w1:4", real=True))  # stands for u = v/|v| frozen at the current point

    def vjp(F):
        J = F.jacobian(x)
        return J.T * g

    # Canonical form for exact zero tests: M(r) -> m0, M'(r) -> m1 (distinct symbols), |v| -> rho, and
    # v -> rho * (unit vector in rational parametrisation). Everything is then a rational function, so
    # "numerator expands to 0" is an exact identity test (and fast, unlike simplify with square roots).
    rho, m0, m1 = sp.symbols("rho m0 m1", positive=True)
    s2, t2 = sp.symbols("s2 t2", real=True)
    unit = sphere_point(s2, t2)

    def _vec_zero(vec) -> bool:
        out = []
        for e in vec:
            e = e.doit()
            e = e.replace(lambda z: isinstance(z, (sp.Subs, sp.Derivative)), lambda z: m1)
            e = e.replace(lambda z: isinstance(z, sp.core.function.AppliedUndef), lambda z: m0)
            e = e.subs(r, rho).subs({x[i]: rho * unit[i] for i in range(3)})
            out.append(is_zero(e))
        return all(out)

    stated = M(r) / r * (Pv * g) + sp.Subs(sp.Derivative(M(rr), rr), rr, r).doit() * c.dot(g) * uh
    plain = M(r) / r * (Pv * g) + sp.Subs(sp.Derivative(M(rr), rr), rr, r).doit() * uh.dot(g) * uh

    F_A = M(r) * uh
    ok(_vec_zero(vjp(F_A) - plain), "surrogate A = M(|v|) v/|v| has VJP (M/r) P_u g + M'(r) <u, g> u")
    F_B = M(r) * (c + uh - u0)
    vjp_B = (vjp(F_B)).subs({u0[i]: uh[i] for i in range(3)})
    ok(
        _vec_zero(vjp_B - stated),
        "surrogate B = M(|v'|)(c + v'/|v'| - u) has VJP (M/r) P_u g + M'(r) <c, g> u",
    )
    ok(
        _vec_zero(F_B.subs({u0[i]: uh[i] for i in range(3)}) - M(r) * c),
        "surrogate B reproduces the forward value M(r) c at v' = v",
    )
    diff = stated - plain
    ok(
        _vec_zero(diff - sp.Subs(sp.Derivative(M(rr), rr), rr, r).doit() * (c - uh).dot(g) * uh),
        "B - A = M'(r) <c - u, g> u",
    )
    ok(_vec_zero(diff.cross(x)), "the difference is radial (parallel to v)")
    ok(
        not _vec_zero(vjp(F_A) - stated),
        "negative control: the stated backward is not the VJP of surrogate A",
    )
    ok(sp.simplify((M(r) / r * (Pv * g)).dot(x)) == 0, "the tangential term (m/r) P_u g is orthogonal to v")
    print("Geometric STE: all checks passed.")


if __name__ == "__main__":
    main()
