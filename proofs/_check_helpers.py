"""Helpers shared by the sympy check scripts in this folder (imported by path, not a package).

The check scripts run as ``python proofs/check_x.py`` (this folder is then on ``sys.path``) and are loaded by
``tests/test_proofs.py``, which puts this folder on ``sys.path`` first.
"""

from __future__ import annotations

import sympy as sp

__all__ = ["is_zero", "ok", "sphere_point"]


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
