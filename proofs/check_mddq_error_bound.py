"""Sympy (and a small independent numeric) check of the MDDQ error bound.

Checks the steps of ``proofs/mddq_error_bound.md``:

1. the exact error identity ``||m c - r u||^2 = (m - r)^2 + 4 m r sin^2(theta/2)`` for unit ``u, c`` with
   ``<u, c> = cos(theta)`` (symbolic unit vectors, symbolic ``m, r``);
2. the splitting ``m c - r u = (m - r) c + r (c - u)`` used by the triangle inequality;
3. the sharper bound implies the stated one:
   ``(|m - r| + 2 r s)^2 - ((m - r)^2 + 4 m r s^2) = 4 r s (|m - r| - (m - r) s) >= 0`` for ``s in [0, 1]``;
4. a numeric check with an independent uniform clipped magnitude quantizer and a random codebook
   (numpy only): the bound holds for every sample, including clipped magnitudes and ``v = 0``;
5. negative control: the bound without the factor 2 (``|Q_m(r) - r| + r sin(delta/2)``) is violated.

Run ``python proofs/check_mddq_error_bound.py``; exits non-zero on failure.
"""

from __future__ import annotations

import numpy as np
import sympy as sp
from _check_helpers import is_zero, ok, sphere_point

__all__ = ["main"]


def _uniform_magnitude(r: np.ndarray, r_max: float, bits: int) -> np.ndarray:
    """Round-to-nearest uniform quantizer of r >= 0 on [0, r_max] with 2**bits levels (clipped above)."""
    step = r_max / (2**bits - 1)
    return np.round(np.clip(r, 0.0, r_max) / step) * step


def main() -> None:
    """Run every check; raise AssertionError on the first failure."""
    print("MDDQ error bound:")
    s1, t1, s2, t2 = sp.symbols("s1 t1 s2 t2", real=True)
    m, r = sp.symbols("m r", nonnegative=True)
    u = sphere_point(s1, t1)
    c = sphere_point(s2, t2)
    err2 = (m * c - r * u).dot(m * c - r * u)
    ok(
        is_zero(err2 - ((m - r) ** 2 + 2 * m * r * (1 - u.dot(c)))),
        "||m c - r u||^2 = (m-r)^2 + 2mr(1-<u,c>)",
    )
    th = sp.symbols("theta", real=True)
    ok(
        sp.simplify(
            (m - r) ** 2 + 2 * m * r * (1 - sp.cos(th)) - ((m - r) ** 2 + 4 * m * r * sp.sin(th / 2) ** 2)
        )
        == 0,
        "... = (m - r)^2 + 4 m r sin^2(theta/2)",
    )
    split1 = m * c - r * u - ((m - r) * c + r * (c - u))
    split2 = m * c - r * u - ((m - r) * u + m * (c - u))
    ok(all(is_zero(e) for e in split1), "m c - r u = (m-r) c + r (c-u)")
    ok(all(is_zero(e) for e in split2), "m c - r u = (m-r) u + m (c-u) (the other split)")

    sv = sp.symbols("s", nonnegative=True)
    gap_hi = (sp.Abs(m - r) + 2 * r * sv) ** 2 - ((m - r) ** 2 + 4 * m * r * sv**2)
    branches = (
        ("m >= r", m - r, (m - r) * (1 - sv), "(m - r)(1 - s)"),
        ("m < r", r - m, (r - m) * (1 + sv), "(r - m)(1 + s)"),
    )
    for branch, absval, factored, text in branches:
        g = sp.expand(gap_hi.subs(sp.Abs(m - r), absval))
        target = 4 * r * sv * (absval - (m - r) * sv)
        ok(sp.expand(g - target) == 0, f"{branch}: gap = 4 r s (|m-r| - (m-r) s)")
        ok(
            sp.expand(absval - (m - r) * sv - factored) == 0,
            f"{branch}: |m-r| - (m-r) s = {text}",
        )
    # the signs: on each branch write m - r (or r - m) = a >= 0 and s = 1 - b, b in [0, 1]; sympy's assumptions
    # then decide the sign of the factored form
    a_, b_ = sp.symbols("a b", nonnegative=True)
    s01 = sp.symbols("s01", nonnegative=True)
    ok(
        bool((a_ * b_).is_nonnegative) and bool((a_ * (1 + s01)).is_nonnegative),
        "m >= r: (m - r)(1 - s) = a b >= 0; m < r: (r - m)(1 + s) = a (1 + s) >= 0 for s in [0, 1]",
    )
    ok(
        ((a_ * (s01 - 1)).is_nonnegative) is not True,
        "negative control: (m - r)(s - 1) >= 0 is not decided true",
    )

    # Numeric: independent clipped uniform magnitude quantizer and a random codebook.
    rng = np.random.default_rng(7)
    cb = rng.normal(size=(40, 3))
    cb /= np.linalg.norm(cb, axis=1, keepdims=True)
    grid = rng.normal(size=(200_000, 3))
    grid /= np.linalg.norm(grid, axis=1, keepdims=True)
    delta_lb = np.arccos((grid @ cb.T).max(axis=1)).max()  # grid estimate (a lower bound) of delta
    v = rng.normal(size=(20_000, 3)) * rng.uniform(0, 1.5, size=(20_000, 1))
    v[:10] = 0.0
    r_v = np.linalg.norm(v, axis=1)
    safe = np.where(r_v > 0, r_v, 1.0)
    u_v = v / safe[:, None]
    q_d = cb[(u_v @ cb.T).argmax(axis=1)]
    m_v = _uniform_magnitude(r_v, r_max=2.0, bits=4)  # r up to ~5 > 2: clipped samples included
    q = np.where(r_v[:, None] > 0, m_v[:, None] * q_d, 0.0)  # MDDQ; 0 maps to 0
    err = np.linalg.norm(q - v, axis=1)
    theta = np.arctan2(np.linalg.norm(np.cross(u_v, q_d), axis=1), (u_v * q_d).sum(axis=1))
    exact = np.sqrt((m_v - r_v) ** 2 + 4 * m_v * r_v * np.sin(theta / 2) ** 2)
    ok(
        np.abs(err - exact).max() < 1e-12,
        f"exact identity numerically (max dev {np.abs(err - exact).max():.1e})",
    )
    # delta_hat <= delta (a grid maximum, raised to cover every sampled theta): checking the bound with a
    # value no larger than delta is a *stronger* test than checking it with the exact covering radius.
    delta_hat = max(delta_lb, theta.max())
    bound = np.abs(m_v - r_v) + 2 * r_v * np.sin(delta_hat / 2)
    nz = r_v > 0
    ok(
        (err <= bound + 1e-12).all(),
        f"||Q(v) - v|| <= |Q_m(r) - r| + 2 r sin(delta/2) on 20000 samples (min slack for v != 0: "
        f"{(bound - err)[nz].min():.2e}, "
        f"clipped samples: {(r_v > 2.0).sum()}, zero vectors: {(r_v == 0).sum()})",
    )
    wrong = np.abs(m_v - r_v) + r_v * np.sin(delta_hat / 2)
    ok((err > wrong + 1e-9).any(), "negative control: the bound without the factor 2 is violated")
    print(f"      (delta estimate used: {np.degrees(delta_hat):.3f} deg)")
    print("MDDQ error bound: all checks passed.")


if __name__ == "__main__":
    main()
