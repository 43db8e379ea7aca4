"""Sympy check of Prop. 3.4 (angular and chordal bound of the nearest-codeword quantizer).

Checks the algebraic steps of ``proofs/prop_3_4_angular_bound.md``:

1. for unit ``u, c`` (a rational parametrisation of the sphere), ``||u - c||^2 = 2 - 2 <u, c>``;
2. ``2 - 2 cos(t) = 4 sin(t/2)^2`` and ``sin(t/2) >= 0`` on ``[0, pi]``, so ``||u - c|| = 2 sin(t/2)``;
3. ``t -> 2 sin(t/2)`` is increasing on ``[0, pi]`` and ``arccos`` is decreasing on ``(-1, 1)``;
4. small-angle form: ``0 <= t - 2 sin(t/2) <= t^3 / 24`` for ``t >= 0``;
5. tightness: for the octahedron the bound is attained at a face centre (``cos theta = 1/sqrt(3)``);
6. a deliberately wrong variant (``||u - c|| = 2 sin(t)``) is *not* simplified to an identity.

Run ``python proofs/check_prop_3_4.py``; exits non-zero on failure.
"""

from __future__ import annotations

import sympy as sp
from _check_helpers import is_zero, never_negative, nonneg_from, ok, sphere_point

__all__ = ["main"]


def main() -> None:
    """Run every check; raise AssertionError on the first failure."""
    print("Prop. 3.4 (angular / chordal bound):")
    s1, t1, s2, t2 = sp.symbols("s1 t1 s2 t2", real=True)
    u = sphere_point(s1, t1)
    c = sphere_point(s2, t2)
    ok(is_zero(u.dot(u) - 1) and is_zero(c.dot(c) - 1), "the parametrised points are unit vectors")
    ok(is_zero((u - c).dot(u - c) - (2 - 2 * u.dot(c))), "||u - c||^2 = 2 - 2<u, c> for unit u, c")

    t = sp.symbols("theta", real=True)
    ok(sp.simplify(2 - 2 * sp.cos(t) - 4 * sp.sin(t / 2) ** 2) == 0, "2 - 2 cos(theta) = 4 sin(theta/2)^2")
    interval = sp.Interval(0, sp.pi)
    ok(sp.solveset(sp.sin(t / 2) < 0, t, interval) == sp.S.EmptySet, "sin(theta/2) >= 0 on [0, pi]")
    deriv = sp.diff(2 * sp.sin(t / 2), t)
    ok(sp.simplify(deriv - sp.cos(t / 2)) == 0, "d/dtheta 2 sin(theta/2) = cos(theta/2)")
    ok(
        sp.solveset(sp.cos(t / 2) <= 0, t, interval) == sp.FiniteSet(sp.pi),
        "cos(theta/2) > 0 on [0, pi): 2 sin(theta/2) is strictly increasing on [0, pi]",
    )
    x = sp.symbols("x", real=True)
    dacos = sp.diff(sp.acos(x), x)
    ok(
        sp.solveset(dacos >= 0, x, sp.Interval.open(-1, 1)) == sp.S.EmptySet,
        "arccos is strictly decreasing on (-1, 1): argmax <u, c> = argmin angle(u, c)",
    )

    # Small-angle regime: g(t) = t - 2 sin(t/2) satisfies 0 <= g <= t^3/24 for t >= 0.
    g = t - 2 * sp.sin(t / 2)
    ok(sp.simplify(sp.diff(g, t) - (1 - sp.cos(t / 2))) == 0, "g'(theta) = 1 - cos(theta/2), g(0) = 0")
    ok(
        never_negative(1 - sp.cos(t / 2), t, sp.Reals) and g.subs(t, 0) == 0,
        "1 - cos(theta/2) < 0 has no real solution, so g is non-decreasing and g >= g(0) = 0 for theta >= 0",
    )
    ok(nonneg_from(g, t, 0), "g(theta) = theta - 2 sin(theta/2) >= 0 for theta >= 0 (proved by nonneg_from)")
    h = t**3 / 24 - g
    hp = sp.diff(h, t)
    # h'(t) = t^2/8 - 1 + cos(t/2) >= 0 because cos(y) >= 1 - y^2/2; check that remainder identity.
    y = sp.symbols("y", real=True)
    ok(
        sp.simplify(hp - (sp.cos(t / 2) - (1 - (t / 2) ** 2 / 2))) == 0,
        "(t^3/24 - g)'(theta) = cos(theta/2) - (1 - (theta/2)^2/2)",
    )
    k = sp.cos(y) - 1 + y**2 / 2
    ok(
        sp.simplify(sp.diff(k, y) - (y - sp.sin(y))) == 0 and k.subs(y, 0) == 0,
        "cos(y) - 1 + y^2/2 has derivative y - sin(y) and vanishes at 0",
    )
    ok(
        never_negative(1 - sp.cos(y), y, sp.Reals) and (y - sp.sin(y)).subs(y, 0) == 0,
        "y - sin(y) >= 0 for y >= 0: its derivative 1 - cos(y) is never negative and it vanishes at 0",
    )
    ok(nonneg_from(k, y, 0), "hence cos(y) - 1 + y^2/2 >= 0 for y >= 0 (proved by nonneg_from)")
    ok(
        sp.simplify(hp - k.subs(y, t / 2)) == 0 and h.subs(t, 0) == 0 and nonneg_from(h, t, 0),
        "h' (theta) = k(theta/2) >= 0 and h(0) = 0, so theta - 2 sin(theta/2) <= theta^3/24 for theta >= 0",
    )
    ok(
        not nonneg_from(sp.sin(y) - y, y, 0) and not nonneg_from(t**3 / 48 - g, t, 0),
        "negative controls: sin(y) - y >= 0 and g <= theta^3/48 are not proved",
    )
    series = sp.series(g, t, 0, 6).removeO()
    ok(sp.simplify(series - (t**3 / 24 - t**5 / 1920)) == 0, "theta - 2 sin(theta/2) = theta^3/24 - ...")

    # Tightness on the octahedron: the face centre is at angle arccos(1/sqrt(3)) from its 3 nearest vertices.
    w = sp.Matrix([1, 1, 1]) / sp.sqrt(3)
    vertices = [sp.Matrix(v) for v in ([1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0], [0, -1, 0], [0, 0, -1])]
    best = max(sp.nsimplify(w.dot(v)) for v in vertices)
    ok(sp.simplify(best - 1 / sp.sqrt(3)) == 0, "octahedron: max_c <w, c> = 1/sqrt(3) at the face centre w")
    chord = sp.sqrt((w - vertices[0]).dot(w - vertices[0]))
    delta = sp.acos(1 / sp.sqrt(3))
    ok(
        sp.simplify(chord**2 - (2 - 2 * sp.cos(delta))) == 0
        and abs(sp.N(chord - 2 * sp.sin(delta / 2), 60)) < sp.Float("1e-50"),
        "octahedron: ||w - Q_d(w)|| = 2 sin(delta/2) (the bound is attained; exact square, 60 digits)",
    )

    # Deliberately wrong variant must not pass.
    wrong = sp.simplify(2 - 2 * sp.cos(t) - 4 * sp.sin(t) ** 2)
    ok(wrong != 0, "wrong variant ||u - c|| = 2 sin(theta) is rejected (residual is not 0)")
    ok(
        not is_zero((u - c).dot(u - c) - (2 - u.dot(c))),
        "wrong variant ||u - c||^2 = 2 - <u, c> is rejected",
    )
    print("Prop. 3.4: all checks passed.")


if __name__ == "__main__":
    main()
