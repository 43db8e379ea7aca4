"""Sympy (and one small independent numeric) check of the covering-radius candidate theorem.

Checks the steps of ``proofs/covering_radius_candidates.md``:

1. facet-normal identity for a symbolic triangle ``a, b, c`` on the sphere: ``m = (b - a) x (c - a)``
   has ``<m, a> = <m, b> = <m, c>``, so the unit normal is equidistant (in angle) from the three points,
   and it solves the Voronoi-vertex equations ``<u, a - b> = <u, a - c> = 0``;
2. the chart along a great circle: ``<cos(s) u + sin(s) w, c> = t cos(s) + sin(s) <w, c - t u>``
   for ``w`` tangent at ``u`` and ``t = <u, c>`` (the expansion the local optimality argument uses);
3. the Riemannian gradient of ``u -> angle(u, c)`` has unit length away from ``+-c`` (no critical point
   of ``f`` inside a Voronoi cell except the antipode ``-c``);
4. on the bisector great circle of ``a, b`` the angle to ``a`` (and ``b``) is maximised exactly at
   ``-(a + b)/|a + b|`` with value ``pi - theta/2`` (``theta = angle(a, b)``), and for symbolic unit
   ``a, b``: ``<-(a+b)/|a+b|, a>^2 = (1 + <a, b>)/2``;
5. exact completeness on small rational codebooks (random, in a cap, in a hemisphere, on a small circle,
   two points; exactly unit rational points by inverse stereographic projection): the candidate set over
   *every* triple, pair and point, evaluated in rational arithmetic (``cos f`` kept as ``D / sqrt(N)`` and
   compared exactly), agrees to 1e-12 rad with an independent deepest-hole search (multi-start Nelder-Mead
   on ``f`` itself, no candidate theory) -- no point beats the candidates and the search reaches their
   maximum -- and with the float recipe; incomplete recipes (no bisector points, no antipodes, unsigned
   facet distances) are caught with margins of 1e-6 rad or less (the former check used a 0.9 deg grid);
6. the same search on float sets with exact degeneracies (great circle, antipodal pair, a single point).

Run ``python proofs/check_covering_radius.py``; exits non-zero on failure.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import mpmath
import numpy as np
import sympy as sp
from _check_helpers import is_zero, ok, sphere_point

__all__ = [
    "candidate_covering_radius",
    "deepest_hole_search",
    "exact_candidate_cos",
    "exact_covering_radius",
    "main",
    "rational_sphere_point",
]


# ----------------------------------------------------------------------------------------------------------
# Independent numeric reference (numpy only): the candidate theorem and a dense grid.
# ----------------------------------------------------------------------------------------------------------
def _f(points: np.ndarray, u: np.ndarray) -> np.ndarray:
    """f(u) = min_c angle(u, c) = arccos(max_c <u, c>), for rows of u."""
    return np.arccos(np.clip((u @ points.T).max(axis=1), -1.0, 1.0))


def candidate_covering_radius(points: np.ndarray, *, bisectors: bool = True, signed: bool = True) -> float:
    """Covering radius from the candidate set of the theorem (slow O(K^4); for K <= ~20).

    ``bisectors=False`` or ``signed=False`` give the two *wrong* recipes used as negative controls.
    """
    points = np.asarray(points, dtype=float)
    k = len(points)
    if k == 2 and np.allclose(points[0], -points[1]):
        return np.pi / 2  # C = {a, -a}: every u orthogonal to a is a maximiser
    cands = [-p for p in points] if k == 1 else []
    for i, j, l in itertools.combinations(range(k), 3):
        m = np.cross(points[j] - points[i], points[l] - points[i])
        norm = np.linalg.norm(m)
        if norm < 1e-12:
            continue
        m /= norm
        for sign in (1.0, -1.0):
            d = sign * m @ points[i]
            if (sign * points @ m).max() <= d + 1e-12 and (signed or d >= 0):
                cands.append(sign * m)
    if not signed:
        # Wrong recipe: cos(delta) = min over facets of the *unsigned* distance |d|.
        ds = [abs((points @ c).max()) for c in cands]
        return float(np.arccos(min(ds))) if ds else float("nan")
    if bisectors:
        for i, j in itertools.combinations(range(k), 2):
            s = points[i] + points[j]
            if np.linalg.norm(s) > 1e-12:
                cands.append(-s / np.linalg.norm(s))
    if not cands:
        return float("nan")
    return float(_f(points, np.array(cands)).max())


# ----------------------------------------------------------------------------------------------------------
# Exact arithmetic: the candidate set of the theorem over every triple, pair and point, in rationals.
# ----------------------------------------------------------------------------------------------------------
def rational_sphere_point(s: Fraction, t: Fraction) -> tuple[Fraction, Fraction, Fraction]:
    """Inverse stereographic projection of rational ``(s, t)``: an exactly unit rational vector."""
    q = s * s + t * t + 1
    return (2 * s / q, 2 * t / q, (s * s + t * t - 1) / q)


def _dot(u, v):
    return u[0] * v[0] + u[1] * v[1] + u[2] * v[2]


def _cross(u, v):
    return (u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0])


def _sub(u, v):
    return (u[0] - v[0], u[1] - v[1], u[2] - v[2])


def _cos_less(x, y) -> bool:
    """Exact ``D1 / sqrt(N1) < D2 / sqrt(N2)`` for rational ``x = (D1, N1)``, ``y = (D2, N2)``, ``N > 0``."""
    (d1, n1), (d2, n2) = x, y
    if (d1 < 0) != (d2 < 0):
        return d1 < 0
    if d1 >= 0:
        return d1 * d1 * n2 < d2 * d2 * n1
    return d1 * d1 * n2 > d2 * d2 * n1


def exact_candidate_cos(
    points, *, facets: bool = True, bisectors: bool = True, antipodes: bool = True, outward_only: bool = False
):
    """``cos delta`` of rational unit ``points`` from the theorem's candidates, exactly.

    Candidates: the normal ``+-m``, ``m = (b - a) x (c - a)``, of every triple whose plane supports the set
    (``<+-m, x> <= <+-m, a>`` for every point ``x``, decided in rationals), ``-(a + b)`` for every pair
    (a superset of the Voronoi-neighbour pairs: every candidate value is a true value of ``f``) and every
    antipode ``-c``. ``cos f(u) = max_x <u, x> / |u|`` is kept as the exact pair ``(D, |u|^2)``; the
    smallest (by :func:`_cos_less`) is returned with its candidate. ``facets=False``, ``bisectors=False``,
    ``antipodes=False`` and ``outward_only=True`` (only facets with offset ``<m, a> >= 0``, i.e. wrong when
    the origin is outside the hull) are the incomplete recipes of the negative controls.
    """
    pts = [tuple(Fraction(c) for c in p) for p in points]
    cands = []
    for a, b, c in itertools.combinations(pts, 3) if facets else ():
        m = _cross(_sub(b, a), _sub(c, a))
        if m == (0, 0, 0):
            continue
        for sgn in (1, -1):
            ms = (sgn * m[0], sgn * m[1], sgn * m[2])
            if max(_dot(ms, x) for x in pts) == _dot(ms, a) and not (outward_only and _dot(ms, a) < 0):
                cands.append(ms)
    if bisectors:
        for a, b in itertools.combinations(pts, 2):
            s = (-a[0] - b[0], -a[1] - b[1], -a[2] - b[2])
            if s != (0, 0, 0):
                cands.append(s)
    if antipodes:
        cands.extend((-a[0], -a[1], -a[2]) for a in pts)
    best = None
    for u in cands:
        val = (max(_dot(u, x) for x in pts), _dot(u, u))
        if best is None or _cos_less(val, best[0]):
            best = (val, u)
    return best


def exact_covering_radius(points, **kw) -> float:
    """The covering radius from :func:`exact_candidate_cos`, evaluated to 40 digits (mpmath), as a float."""
    (d, n), _ = exact_candidate_cos(points, **kw)
    with mpmath.workdps(40):
        return float(
            mpmath.acos(
                mpmath.mpf(d.numerator) / d.denominator / mpmath.sqrt(mpmath.mpf(n.numerator) / n.denominator)
            )
        )


def deepest_hole_search(points: np.ndarray, rng: np.random.Generator, starts: int = 400) -> float:
    """Largest ``f`` found by multi-start Nelder-Mead in local tangent charts (no candidate theory used).

    ``f(u) = min_x angle(u, x)`` with atan2 angles; 4000 random points seed the search, the best ``starts``
    are refined. The maximum found is a lower bound of the covering radius that does not depend on the
    theorem, so a candidate maximum below it by more than rounding refutes completeness.
    """
    from scipy.optimize import minimize

    pts = np.asarray(points, dtype=np.float64)

    def f(u):
        u = u / np.linalg.norm(u)
        return float(np.arctan2(np.linalg.norm(np.cross(pts, u), axis=1), pts @ u).min())

    seeds = rng.normal(size=(4000, 3))
    seeds /= np.linalg.norm(seeds, axis=1, keepdims=True)
    vals = np.array([f(u) for u in seeds])
    best = float(vals.max())
    for u0 in seeds[np.argsort(vals)[::-1][:starts]]:
        e1 = np.cross(u0, [1.0, 0.0, 0.0] if abs(u0[0]) < 0.9 else [0.0, 1.0, 0.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(u0, e1)
        res = minimize(
            lambda y, u0=u0, e1=e1, e2=e2: -f(u0 + y[0] * e1 + y[1] * e2),
            np.zeros(2),
            method="Nelder-Mead",
            options={
                "xatol": 1e-14,
                "fatol": 1e-16,
                "maxiter": 4000,
                "initial_simplex": [[0, 0], [0.05, 0], [0, 0.05]],
            },
        )
        best = max(best, -float(res.fun))
    return best


def _rational_cases(rng: np.random.Generator) -> dict[str, list]:
    """Small exact point sets: random, confined to a cap (origin outside the hull), on a small circle."""

    def rat(x: float) -> Fraction:
        return Fraction(x).limit_denominator(97)

    cases = {}
    for k in (4, 5, 6, 7, 9):
        cases[f"random {k}"] = [rational_sphere_point(rat(a), rat(b)) for a, b in rng.normal(size=(k, 2))]
    # s, t small: points near (0, 0, -1), all in a cap
    cases["6 in a cap"] = [rational_sphere_point(rat(a), rat(b)) for a, b in 0.3 * rng.normal(size=(6, 2))]
    cases["5 in a hemisphere"] = [
        rational_sphere_point(rat(a), rat(b)) for a, b in 0.9 * rng.uniform(-1, 1, (5, 2))
    ]
    # s^2 + t^2 = 1/4: all on the circle z = -3/5 (exact rational points of that circle)
    circ = [
        (Fraction(3, 10), Fraction(2, 5)),
        (Fraction(-3, 10), Fraction(2, 5)),
        (Fraction(1, 2), 0),
        (Fraction(-2, 5), Fraction(-3, 10)),
    ]
    cases["4 on a small circle"] = [rational_sphere_point(Fraction(a) / 1, Fraction(b) / 1) for a, b in circ]
    cases["two points"] = [rational_sphere_point(rat(a), rat(b)) for a, b in rng.normal(size=(2, 2))]
    return cases


def _numeric_cases(rng: np.random.Generator) -> dict[str, np.ndarray]:
    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    cap = unit(
        rng.normal(size=(7, 3)) * np.array([0.4, 0.4, 0.1]) + np.array([0.0, 0.0, 1.0])
    )  # all in a small cap around +z
    cap5 = unit(rng.normal(size=(5, 3)) + np.array([0.0, 0.0, 2.5]))
    a, b = unit(rng.normal(size=(2, 3)))
    ring = np.array([[np.cos(x), np.sin(x), 0.0] for x in (0.0, 2.0, 4.0)])  # on a great circle
    small_ring = unit(np.array([[np.cos(x), np.sin(x), 3.0] for x in (0.1, 2.2, 4.1)]))  # coplanar, d > 0
    return {
        "random 12 (0 interior)": unit(rng.normal(size=(12, 3))),
        "7 points in a small cap": cap,
        "5 points in a hemisphere": cap5,
        "two points": np.stack([a, b]),
        "three on a great circle": ring,
        "three coplanar near +z": small_ring,
        "one point": unit(rng.normal(size=(1, 3))),
        "antipodal pair": np.stack([a, -a]),
    }


def main() -> None:
    """Run every check; raise AssertionError on the first failure."""
    print("Covering radius: candidate-set theorem and facet-normal identity:")
    s = sp.symbols("s1:4", real=True)
    t = sp.symbols("t1:4", real=True)
    a, b, c = (sphere_point(s[i], t[i]) for i in range(3))
    m = (b - a).cross(c - a)
    ok(is_zero(m.dot(a) - m.dot(b)) and is_zero(m.dot(a) - m.dot(c)), "<m, a> = <m, b> = <m, c>")
    ok(
        is_zero(m.dot(a - b)) and is_zero(m.dot(a - c)),
        "m solves the Voronoi-vertex equations <u, a - b> = <u, a - c> = 0",
    )
    # With unit points, equal inner products with the unit normal mean equal angles, i.e. m/|m| is the
    # spherical circumcentre; check on a concrete rational triangle including a negative offset d.
    sub = {
        s[0]: sp.Rational(1, 3),
        t[0]: sp.Rational(1, 5),
        s[1]: -sp.Rational(1, 2),
        t[1]: sp.Rational(1, 7),
    }
    sub |= {s[2]: sp.Rational(1, 9), t[2]: -sp.Rational(2, 5)}
    mn = (m / sp.sqrt(m.dot(m))).subs(sub)
    angles = [sp.simplify(sp.acos(mn.dot(p.subs(sub)))) for p in (a, b, c)]
    ok(angles[0] == angles[1] == angles[2], "the unit facet normal is at equal angle from the three vertices")
    ok(
        sp.simplify(sp.acos(mn.dot(a.subs(sub))) - sp.acos(-(-mn).dot(a.subs(sub)))) == 0,
        "f(m) = arccos(d) holds with either orientation (d may be negative for the reversed normal)",
    )

    # Great-circle chart: <cos(s) u + sin(s) w, c> = t cos(s) + sin(s) <w, c - t u> for w tangent at u.
    u = sphere_point(s[0], t[0])
    cc = sphere_point(s[1], t[1])
    x = sp.Matrix(sp.symbols("x1:4", real=True))
    w = x - x.dot(u) * u  # an arbitrary tangent vector at u
    sig = sp.symbols("sigma", real=True)
    tt = u.dot(cc)
    lhs = (sp.cos(sig) * u + sp.sin(sig) * w).dot(cc)
    rhs = tt * sp.cos(sig) + sp.sin(sig) * w.dot(cc - tt * u)
    ok(is_zero(lhs - rhs), "<cos(s) u + sin(s) w, c> = t cos(s) + sin(s) <w, p>, p = c - <u, c> u")

    # Riemannian gradient of arccos<u, c>: -P_u c / sqrt(1 - <u, c>^2); |P_u c|^2 = 1 - <u, c>^2.
    puc = cc - tt * u
    ok(
        is_zero(puc.dot(puc) - (1 - tt**2)),
        "|P_u c|^2 = 1 - <u, c>^2: angle(., c) has unit gradient off +-c",
    )

    # Bisector great circle of a = (sin al, 0, cos al), b = (-sin al, 0, cos al): u(phi) = (0, sin phi, cos phi).
    al, ph = sp.symbols("alpha phi", real=True)
    A = sp.Matrix([sp.sin(al), 0, sp.cos(al)])
    B = sp.Matrix([-sp.sin(al), 0, sp.cos(al)])
    U = sp.Matrix([0, sp.sin(ph), sp.cos(ph)])
    ok(sp.simplify(U.dot(A) - U.dot(B)) == 0, "u(phi) is equidistant from a and b")
    crit = sp.solveset(sp.diff(U.dot(A), ph).subs(al, sp.pi / 5), ph, sp.Interval.Ropen(0, 2 * sp.pi))
    ok(crit == sp.FiniteSet(0, sp.pi), "critical points of <u(phi), a> on the bisector circle: phi = 0, pi")
    second = sp.diff(U.dot(A), ph, 2).subs(ph, sp.pi)
    ok(sp.simplify(second - sp.cos(al)) == 0, "second derivative at phi = pi is cos(alpha)")
    ok(
        sp.solveset(sp.cos(al) <= 0, al, sp.Interval.Ropen(0, sp.pi / 2)) == sp.S.EmptySet,
        "cos(alpha) > 0 for the half-angle alpha = theta/2 in [0, pi/2): phi = pi is a strict minimum",
    )
    mid = -(A + B) / sp.sqrt(sp.simplify((A + B).dot(A + B)))
    mid = mid.subs(al, sp.pi / 5)
    ok(sp.simplify(mid - U.subs(ph, sp.pi)) == sp.zeros(3, 1), "the minimiser u(pi) equals -(a + b)/|a + b|")
    ok(
        sp.simplify(sp.acos(U.subs(ph, sp.pi).dot(A)).subs(al, sp.pi / 5) - (sp.pi - sp.pi / 5)) == 0,
        "value there: angle = pi - alpha = pi - theta/2",
    )
    ab = a.dot(b)
    mid_ab = -(a + b)
    ok(
        is_zero(mid_ab.dot(a) ** 2 - (1 + ab) / 2 * mid_ab.dot(mid_ab)),
        "symbolic unit a, b: <-(a+b)/|a+b|, a>^2 = (1 + <a, b>)/2 = cos^2(theta/2)",
    )
    ok(
        not is_zero(mid_ab.dot(a) ** 2 - (1 - ab) / 2 * mid_ab.dot(mid_ab)),
        "wrong variant (1 - <a, b>)/2 is rejected",
    )

    # Exact completeness on small rational sets: the candidate maximum over every triple, pair and point in
    # rational arithmetic, against a deepest-hole search that uses no candidate theory.
    search_rng = np.random.default_rng(7)
    for name, pts in _rational_cases(np.random.default_rng(20240601)).items():
        exact = exact_covering_radius(pts)
        fl = np.array([[float(c) for c in p] for p in pts])
        found = deepest_hole_search(fl, search_rng, starts=40)
        ok(
            found <= exact + 1e-12 and found >= exact - 1e-9,
            f"{name}: exact candidate max {np.degrees(exact):.10f} deg, deepest-hole search "
            f"{np.degrees(found):.10f} deg (difference {found - exact:.1e} rad)",
        )
        ok(
            abs(candidate_covering_radius(fl) - exact) <= 1e-12,
            f"{name}: the float candidate recipe agrees with the rational one",
        )
    # Negative controls, caught by the search with margins far below the old grid's 0.9 deg tolerance.
    cases = _rational_cases(np.random.default_rng(20240601))
    controls = (
        ("two points", {"bisectors": False}),
        ("random 7", {"facets": False}),
        ("6 in a cap", {"outward_only": True}),
    )
    for name, kw in controls:
        fl = np.array([[float(c) for c in p] for p in cases[name]])
        wrong = exact_covering_radius(cases[name], **kw)
        found = deepest_hole_search(fl, search_rng, starts=40)
        ok(
            wrong < found - 1e-6,
            f"negative control ({name}, {kw}): the incomplete recipe gives {np.degrees(wrong):.6f} deg, the "
            f"search finds {np.degrees(found):.6f} deg",
        )
    # Float sets with exact degeneracies (great circle, antipodal pair, one point) against the search.
    for name, pts in _numeric_cases(np.random.default_rng(20240601)).items():
        exact = candidate_covering_radius(pts)
        found = deepest_hole_search(pts, search_rng, starts=20)
        ok(
            found <= exact + 1e-12 and found >= exact - 1e-9,
            f"{name}: candidate max {np.degrees(exact):.10f} deg vs deepest-hole search {np.degrees(found):.10f} deg",
        )
    pts = _numeric_cases(np.random.default_rng(20240601))["7 points in a small cap"]
    unsigned = candidate_covering_radius(pts, signed=False)
    ok(
        unsigned < candidate_covering_radius(pts) - 1e-2,
        f"negative control: unsigned facet distances give {np.degrees(unsigned):.2f} deg for a cap set "
        f"(true {np.degrees(candidate_covering_radius(pts)):.2f} deg)",
    )
    print("Covering radius: all checks passed.")


if __name__ == "__main__":
    main()
