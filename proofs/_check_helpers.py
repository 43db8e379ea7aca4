"""Helpers shared by the sympy check scripts in this folder (imported by path, not a package).

The check scripts run as ``python proofs/check_x.py`` (this folder is then on ``sys.path``) and are loaded by
``tests/test_proofs.py``, which puts this folder on ``sys.path`` first.
"""

from __future__ import annotations

import sympy as sp

__all__ = ["is_zero", "never_negative", "nonneg_from", "ok", "sphere_point"]


def sphere_point(s, t) -> sp.Matrix:
    """Inverse stereographic projection: a unit vector (rational in ``s, t``) for every real ``(s, t)``."""
    q = s**2 + t**2 + 1
    return sp.Matrix([2 * s, 2 * t, s**2 + t**2 - 1]) / q


def is_zero(expr) -> bool:
    """Exact test for a rational function being identically zero (its numerator expands to 0)."""
    return sp.expand(sp.numer(sp.together(expr))) == 0


def ok(cond: bool, what: str) -> None:
    """Print ``ok <what>`` or raise ``AssertionError("FAILED: <what>")``."""
    if not cond:
        raise AssertionError(f"FAILED: {what}")
    print(f"  ok  {what}")


def never_negative(expr, var, domain) -> bool:
    """True if sympy proves ``expr < 0`` has no solution for ``var`` in ``domain`` (an exact sign check).

    ``solveset`` returns a ``ConditionSet`` when it cannot decide; that counts as *not* proven.
    """
    return sp.solveset(expr < 0, var, domain) == sp.S.EmptySet


def nonneg_from(expr, var, lo, depth: int = 3) -> bool:
    """Prove ``expr(var) >= 0`` for ``var >= lo`` exactly: directly by :func:`never_negative`, or by
    monotonicity -- ``expr(lo) >= 0`` (exact) and, recursively (at most ``depth`` derivatives),
    ``expr'(var) >= 0`` on ``[lo, oo)``.
    """
    if never_negative(expr, var, sp.Interval(lo, sp.oo)):
        return True
    if depth <= 0:
        return False
    at_lo = sp.simplify(expr.subs(var, lo))
    return bool(at_lo.is_nonnegative) and nonneg_from(sp.diff(expr, var), var, lo, depth - 1)
