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
5. an independent numeric check (numpy only, not the library): the candidate set (supporting planes through
   three codewords, bisector points, antipodes) reproduces the dense-grid maximum of ``f`` on general,
   hemisphere-confined, coplanar and two-point codebooks, while two wrong recipes (Voronoi vertices only,
   or unsigned facet distances) are caught failing.

Run ``python proofs/check_covering_radius.py``; exits non-zero on failure.
"""

from __future__ import annotations

import itertools

import numpy as np
import sympy as sp
from _check_helpers import is_zero, ok, sphere_point

__all__ = ["candidate_covering_radius", "main"]


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


def _fibonacci(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + 5**0.5) * i
    r = np.sqrt(1 - z**2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _grid_max(points: np.ndarray, grid: np.ndarray) -> float:
    return float(max(_f(points, grid[i : i + 50_000]).max() for i in range(0, len(grid), 50_000)))


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
    ok(sp.simplify(second - sp.cos(al)) == 0, "second derivative at phi = pi is cos(alpha) > 0 (a minimum)")
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

    # Independent numeric check of the whole theorem on degenerate and hemisphere codebooks.
    rng = np.random.default_rng(20240601)
    grid = _fibonacci(200_000)
    spacing = 2.0 * np.sqrt(4 * np.pi / len(grid))  # generous bound on grid-to-sphere distance
    for name, pts in _numeric_cases(rng).items():
        exact = candidate_covering_radius(pts)
        gmax = _grid_max(pts, grid)
        ok(
            exact >= gmax - 1e-12 and exact - gmax <= spacing,
            f"{name}: candidate max {np.degrees(exact):.4f} deg vs grid max {np.degrees(gmax):.4f} deg",
        )
    pts = _numeric_cases(np.random.default_rng(20240601))["two points"]
    no_bis = candidate_covering_radius(pts, bisectors=False)
    ok(
        not np.isfinite(no_bis) or no_bis < _grid_max(pts, grid) - 1e-3,
        "negative control: dropping bisector points misses the two-point maximiser",
    )
    pts = _numeric_cases(np.random.default_rng(20240601))["7 points in a small cap"]
    unsigned = candidate_covering_radius(pts, signed=False)
    ok(
        unsigned < _grid_max(pts, grid) - 1e-2,
        f"negative control: unsigned facet distances give {np.degrees(unsigned):.2f} deg for a cap set "
        f"(true {np.degrees(candidate_covering_radius(pts)):.2f} deg)",
    )
    print("Covering radius: all checks passed.")


if __name__ == "__main__":
    main()
