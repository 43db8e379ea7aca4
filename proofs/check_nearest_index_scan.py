"""Sympy (and independent numeric) check of the table-free nearest-codeword certificates.

Checks the steps of ``proofs/nearest_index_scan.md``:

1. the chord identity ``|v - u|^2 = 2 - 2 <u, v>`` for unit ``u, v`` (rational parametrisation);
2. ``1 - s^2 / 2 - sqrt(1 - s^2) = (1 - c)^2 / 2 >= 0`` with ``c = sqrt(1 - s^2)`` (so ``cos <= 1 - sin^2 / 2``);
3. the angle from ``u`` to the great circle of normal ``n``: ``|u - <u, m> m|^2 = 1 - <u, m>^2`` (``m`` the
   unit normal), so the nearest point of the circle has ``cos = sqrt(1 - sin^2)`` with ``sin = |<u, m>|``;
4. ``R*(B)`` solves ``|x| (1 + e) (1 - R^2 / 2 + g3) = B``;
5. the interval quotient ``n / d`` (``d > 0``) is increasing in ``n`` and monotone in ``d`` with the sign of
   ``-n``; the face warp ``s(a)`` is increasing on both branches;
6. numerically (numpy only, not the library): for random blocks of a cube face and random ``u`` inside, every
   ``v`` outside has ``angle(u, v) >= theta`` (the certificate's angle), nearly attained; negative controls:
   ``cos theta <= 1 - sin^2 theta`` fails, and a bound that forgets two of the four edge lines is violated.

Run ``python proofs/check_nearest_index_scan.py``; exits non-zero on failure.
"""

from __future__ import annotations

import numpy as np
import sympy as sp
from _check_helpers import is_zero, ok, sphere_point

__all__ = ["main"]


def _block_theta(u, a0, a1, b0, b1):
    """Smallest angle from unit u (on face +z) to the four edge circles of the block (the formula)."""
    sins = [abs(u[0] - a * u[2]) / np.sqrt(1 + a * a) for a in (a0, a1)] + [
        abs(u[1] - b * u[2]) / np.sqrt(1 + b * b) for b in (b0, b1)
    ]
    return np.arcsin(min(sins)), np.arcsin(min(sins[:2]))


def main() -> None:
    s1, t1, s2, t2, a = sp.symbols("s1 t1 s2 t2 a", real=True)
    u = sphere_point(s1, t1)
    v = sphere_point(s2, t2)
    ok(is_zero((v - u).dot(v - u) - (2 - 2 * u.dot(v))), "chord identity |v - u|^2 = 2 - 2 <u, v>")

    c = sp.symbols("c", nonnegative=True)
    expr = 1 - (1 - c**2) / 2 - c
    ok(is_zero(expr - (1 - c) ** 2 / 2), "1 - sin^2/2 - cos = (1 - cos)^2 / 2 (>= 0: cos <= 1 - sin^2/2)")

    n = sp.Matrix([1, 0, -a])  # the plane v_0 = a v_2 (face +z, a cell-boundary line)
    m = n / sp.sqrt(1 + a**2)
    w = u - u.dot(m) * m
    ok(
        is_zero(sp.simplify(w.dot(w) - (1 - u.dot(m) ** 2))),
        "|u - <u,m> m|^2 = 1 - <u,m>^2 (nearest circle point)",
    )
    ok(is_zero(sp.simplify(w.dot(m))), "that point lies on the great circle of n")

    xn, e, g3, b, r = sp.symbols("xn e g3 B R", positive=True)
    sol = sp.solve(sp.Eq(xn * (1 + e) * (1 - r**2 / 2 + g3), b), r**2)
    ok(
        len(sol) == 1 and is_zero(sol[0] - 2 * (1 + g3 - b / (xn * (1 + e)))),
        "R*^2 = 2 (1 + g3 - B / (|x| (1+e)))",
    )

    num, den = sp.symbols("n d", real=True)
    q = num / den
    ok(sp.simplify(sp.diff(q, num) - 1 / den) == 0, "d(n/d)/dn = 1/d > 0 for d > 0")
    ok(sp.simplify(sp.diff(q, den) + num / den**2) == 0, "d(n/d)/dd = -n/d^2: sign of -n")
    ap = sp.symbols("ap", nonnegative=True)
    warp_pos = sp.sqrt(1 + 3 * ap) / 2  # a >= 0
    warp_neg = 1 - sp.sqrt(1 + 3 * ap) / 2  # a = -ap <= 0, as a function of a: d/da = -d/dap
    ok(sp.diff(warp_pos, ap).is_positive, "face warp increasing for a >= 0")
    ok((-sp.diff(warp_neg, ap)).is_positive, "face warp increasing for a <= 0")

    rng = np.random.default_rng(3)
    worst, tight, violated = np.inf, np.inf, False
    for _ in range(300):
        a0, a1 = np.sort(rng.uniform(-1.3, 1.3, 2))
        b0, b1 = np.sort(rng.uniform(-1.3, 1.3, 2))
        if a1 - a0 < 0.02 or b1 - b0 < 0.02:
            continue
        fa, fb = rng.uniform(a0, a1), rng.uniform(b0, b1)
        uq = np.array([fa, fb, 1.0]) / np.sqrt(1 + fa * fa + fb * fb)
        theta, theta_a_only = _block_theta(uq, a0, a1, b0, b1)
        vs = rng.normal(size=(4000, 3))
        vs /= np.linalg.norm(vs, axis=1, keepdims=True)
        vs = np.concatenate([vs, uq + 0.2 * theta * rng.normal(size=(4000, 3))])
        vs /= np.linalg.norm(vs, axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            inside = (vs[:, 2] > 0) & (vs[:, 0] >= a0 * vs[:, 2]) & (vs[:, 0] <= a1 * vs[:, 2])
            inside &= (vs[:, 1] >= b0 * vs[:, 2]) & (vs[:, 1] <= b1 * vs[:, 2])
        out = vs[~inside]
        ang = np.arccos(np.clip(out @ uq, -1.0, 1.0))
        worst = min(worst, float((ang - theta).min()))
        tight = min(tight, float((ang - theta).min() / max(theta, 1e-12)))
        violated |= bool((ang < theta_a_only - 1e-9).any())
    ok(worst >= -1e-12, f"every direction outside a block is >= theta from u (worst margin {worst:.2e} rad)")
    ok(tight < 0.05, f"and the bound is nearly attained (closest outside point within {tight:.3f} theta)")
    ok(violated, "negative control: a bound from only the two a-lines is violated by some outside direction")
    th = 0.3
    ok(
        np.cos(th) > 1 - np.sin(th) ** 2,
        "negative control: cos theta <= 1 - sin^2 theta is false (theta = 0.3)",
    )
    print("Table-free nearest-codeword certificates: all checks passed.")


if __name__ == "__main__":
    main()
