"""Covering-radius bounds, chord/angle conversions and the error bounds of the paper's propositions.

All angles are in radians unless a ``degrees=True`` flag says otherwise. Array arguments may be numpy arrays
or torch tensors (the result has the same kind, device and dtype, and torch paths are differentiable);
plain Python numbers give a Python ``float``.

The quantities, for a codebook :math:`C \\subset S^2` with covering radius :math:`\\delta`:

* Fejes Toth lower bound (any ``n`` points): :math:`\\cos\\delta \\le \\cot(w)/\\sqrt{3}`,
  :math:`w = n\\pi / (6(n-2))`; tight for ``n = 3, 4, 6, 12``.
* Asymptotics: the best ``n``-point covering has :math:`\\delta \\approx \\sqrt{8\\pi/(3\\sqrt{3}\\,n)}`.
* Prop. 3.4: :math:`\\|u - Q_d(u)\\| \\le 2\\sin(\\delta/2)` for unit ``u``.
* MDDQ bound: :math:`\\|Q(v) - v\\| \\le |Q_m(r) - r| + 2 r \\sin(\\delta/2)`, :math:`r = \\|v\\|`.
* Commutation error (Eq. 4): :math:`\\|Q(Rv) - RQ(v)\\| \\le Q_m(r)\\, 4\\sin(\\delta/2)`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from ._backend import as_float_array, is_torch, namespace
from ._validation import check_bool, check_finite, check_int

__all__ = [
    "angle_to_chord",
    "asymptotic_covering_radius",
    "chord_to_angle",
    "commutation_error_bound",
    "direction_error_bound",
    "fejes_toth_covering_radius",
    "mddq_error_bound",
]

# Inputs outside a valid closed interval by at most this much (relative rounding noise) are clipped to it.
_SLACK = 1e-12


def _to_array(x: Any, name: str):
    """Return ``(array, was_scalar)`` with finite-value validation."""
    was_scalar = isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number or array, got bool")
    arr = as_float_array(x, name)
    check_finite(arr, name)
    return arr, was_scalar


def _check_interval(x, name: str, lo: float, hi: float):
    """Raise ValueError if any entry lies outside ``[lo, hi]`` by more than the slack; clip the rest."""
    xp = namespace(x)
    slack = _SLACK * max(1.0, abs(hi))
    if bool(xp.any(x < lo - slack)) or bool(xp.any(x > hi + slack)):
        bad = x[(x < lo - slack) | (x > hi + slack)]
        raise ValueError(f"{name} must lie in [{lo:g}, {hi:g}], got {float(bad.reshape(-1)[0])!r}")
    return xp.clip(x, lo, hi)


def _out(y, was_scalar: bool):
    return float(y) if was_scalar else y


def fejes_toth_covering_radius(n: int, *, degrees: bool = False) -> float:
    """Fejes Toth lower bound on the covering radius of any ``n`` points on the unit sphere.

    For ``n >= 3``, every set of ``n`` points has covering radius ``delta`` with
    ``cos(delta) <= cot(w) / sqrt(3)``, ``w = n pi / (6 (n - 2))``; the returned value is the ``delta``
    attaining equality. It is evaluated as ``atan2(2 sqrt(sin(e) sin(w + pi/6)), cos(w))`` with
    ``e = pi / (3 (n - 2))`` (an algebraically equal form that stays accurate for large ``n``).
    The bound is attained for ``n = 3`` (equilateral triangle on a great circle, ``pi/2``), ``n = 4``
    (tetrahedron, 70.5288 deg), ``n = 6`` (octahedron, 54.7356 deg) and ``n = 12`` (icosahedron, 37.3774 deg).

    The formula does not apply to ``n = 1, 2``; the exact optimal values are returned instead:
    ``pi`` for one point (its antipode) and ``pi/2`` for two points (an antipodal pair; any other pair is
    worse, since two points at angle ``t`` leave a hole of ``pi - t/2``).

    Parameters
    ----------
    n : int
        Number of points, ``n >= 1``.
    degrees : bool, optional
        Return degrees instead of radians.

    Returns
    -------
    float
        The lower bound on the covering radius (radians, or degrees).

    Raises
    ------
    TypeError
        If ``n`` is not an integer.
    ValueError
        If ``n < 1``.

    Examples
    --------
    >>> round(fejes_toth_covering_radius(12, degrees=True), 4)
    37.3774
    >>> round(fejes_toth_covering_radius(1), 6) == round(math.pi, 6)
    True
    """
    n = check_int(n, "n", minimum=1)
    degrees = check_bool(degrees, "degrees")
    if n == 1:
        out = math.pi
    elif n == 2:
        out = math.pi / 2
    else:
        e = math.pi / (3 * (n - 2))
        w = math.pi / 6 + e
        out = math.atan2(2.0 * math.sqrt(math.sin(e) * math.sin(w + math.pi / 6)), math.cos(w))
    return math.degrees(out) if degrees else out


def asymptotic_covering_radius(n: int, *, degrees: bool = False) -> float:
    """Large-``n`` asymptotic covering radius ``sqrt(8 pi / (3 sqrt(3) n))`` of an optimal ``n``-point set.

    This is the covering radius of a hexagonal arrangement of ``n`` equal caps of total area ``4 pi``; the
    Fejes Toth bound approaches it as ``n -> inf``.

    Parameters
    ----------
    n : int
        Number of points, ``n >= 1``.
    degrees : bool, optional
        Return degrees instead of radians.

    Returns
    -------
    float
        Asymptotic covering radius (radians, or degrees).

    Examples
    --------
    >>> round(asymptotic_covering_radius(10000, degrees=True), 2)
    1.26
    """
    n = check_int(n, "n", minimum=1)
    degrees = check_bool(degrees, "degrees")
    out = math.sqrt(8.0 * math.pi / (3.0 * math.sqrt(3.0) * n))
    return math.degrees(out) if degrees else out


def chord_to_angle(chord: Any):
    """Convert chord length(s) between unit vectors to angle(s): ``theta = 2 arcsin(chord / 2)``.

    Evaluated as ``2 atan2(h, sqrt((1 - h)(1 + h)))`` with ``h = chord / 2``, accurate near 0 and ``pi``.

    Parameters
    ----------
    chord : float or array_like or torch.Tensor, shape (...)
        Chord lengths in ``[0, 2]`` (values outside by at most 1e-12 are clipped).

    Returns
    -------
    float or ndarray or torch.Tensor, shape (...)
        Angles in radians, in ``[0, pi]``.

    Raises
    ------
    ValueError
        On NaN/inf, or values outside ``[0, 2]``.

    Examples
    --------
    >>> round(chord_to_angle(2.0), 6) == round(math.pi, 6)
    True
    >>> round(chord_to_angle(1.0), 6) == round(math.pi / 3, 6)
    True
    """
    c, scalar = _to_array(chord, "chord")
    c = _check_interval(c, "chord", 0.0, 2.0)
    xp = namespace(c)
    h = c / 2
    return _out(2 * xp.arctan2(h, xp.sqrt((1 - h) * (1 + h))), scalar)


def angle_to_chord(angle: Any):
    """Convert angle(s) between unit vectors to chord length(s): ``2 sin(angle / 2)``.

    Parameters
    ----------
    angle : float or array_like or torch.Tensor, shape (...)
        Angles in radians, in ``[0, pi]`` (values outside by at most ~1e-12 are clipped).

    Returns
    -------
    float or ndarray or torch.Tensor, shape (...)
        Chord lengths in ``[0, 2]``.

    Raises
    ------
    ValueError
        On NaN/inf, or angles outside ``[0, pi]``.

    Examples
    --------
    >>> round(angle_to_chord(math.pi / 3), 12)
    1.0
    """
    a, scalar = _to_array(angle, "angle")
    a = _check_interval(a, "angle", 0.0, math.pi)
    xp = namespace(a)
    return _out(2 * xp.sin(a / 2), scalar)


def direction_error_bound(delta: Any):
    """Prop. 3.4 chordal bound ``2 sin(delta / 2)`` on ``||u - Q_d(u)||`` for unit ``u``.

    Parameters
    ----------
    delta : float or array_like or torch.Tensor, shape (...)
        Covering radius in radians, in ``[0, pi]``.

    Returns
    -------
    float or ndarray or torch.Tensor, shape (...)
        Upper bound on the chordal direction error (unitless, in ``[0, 2]``).

    Examples
    --------
    >>> round(direction_error_bound(math.pi / 3), 12)
    1.0
    """
    d, scalar = _to_array(delta, "delta")
    d = _check_interval(d, "delta", 0.0, math.pi)
    xp = namespace(d)
    return _out(2 * xp.sin(d / 2), scalar)


def mddq_error_bound(r: Any, q_r: Any, delta: Any):
    """MDDQ error bound ``|q_r - r| + 2 r sin(delta / 2)`` on ``||Q(v) - v||`` (Def. 3.1).

    Parameters
    ----------
    r : float or array_like or torch.Tensor, shape (...)
        Vector magnitudes ``||v|| >= 0``.
    q_r : float or array_like or torch.Tensor, shape (...)
        Quantized magnitudes ``Q_m(r)`` (same units as ``r``); broadcast against ``r``.
    delta : float or array_like or torch.Tensor, shape (...)
        Covering radius of the direction codebook in radians, in ``[0, pi]``.

    Returns
    -------
    float or ndarray or torch.Tensor, shape (broadcast)
        Upper bound on the vector error, in the units of ``r``.

    Raises
    ------
    ValueError
        On NaN/inf, negative ``r`` or ``delta`` outside ``[0, pi]``.

    Examples
    --------
    >>> round(mddq_error_bound(2.0, 2.5, math.pi / 3), 12)
    2.5
    """
    r_, s1 = _to_array(r, "r")
    q_, s2 = _to_array(q_r, "q_r")
    d_, s3 = _to_array(delta, "delta")
    if bool(namespace(r_).any(r_ < 0)):
        raise ValueError("r must be non-negative (a magnitude)")
    d_ = _check_interval(d_, "delta", 0.0, math.pi)
    xp = namespace(r_, q_, d_)
    if is_torch(r_) or is_torch(q_) or is_torch(d_):
        like = next(t for t in (r_, q_, d_) if is_torch(t))
        r_, q_, d_ = (xp.asarray(t, like) if not is_torch(t) else t for t in (r_, q_, d_))
    out = xp.abs(q_ - r_) + 2 * r_ * xp.sin(d_ / 2)
    return _out(out, s1 and s2 and s3)


def commutation_error_bound(delta: Any, magnitude: Any = 1.0):
    """Commutation-error bound ``magnitude * 4 sin(delta / 2)`` on ``||Q(Rv) - R Q(v)||`` (Eq. 4).

    For the direction quantizer alone use ``magnitude = 1``; for MDDQ pass the quantized magnitude
    ``Q_m(r)`` (rotation does not change ``r``, so both terms share it).

    Parameters
    ----------
    delta : float or array_like or torch.Tensor, shape (...)
        Covering radius in radians, in ``[0, pi]``.
    magnitude : float or array_like or torch.Tensor, shape (...), optional
        Non-negative (quantized) magnitude; broadcast against ``delta``. Default 1.

    Returns
    -------
    float or ndarray or torch.Tensor, shape (broadcast)
        Upper bound on the commutation error, in the units of ``magnitude``.

    Examples
    --------
    >>> round(commutation_error_bound(math.pi / 3, magnitude=0.5), 12)
    1.0
    """
    d_, s1 = _to_array(delta, "delta")
    m_, s2 = _to_array(magnitude, "magnitude")
    d_ = _check_interval(d_, "delta", 0.0, math.pi)
    if bool(namespace(m_).any(m_ < 0)):
        raise ValueError("magnitude must be non-negative")
    xp = namespace(d_, m_)
    if is_torch(d_) != is_torch(m_):
        like = d_ if is_torch(d_) else m_
        d_, m_ = (t if is_torch(t) else xp.asarray(t, like) for t in (d_, m_))
    return _out(m_ * 4 * xp.sin(d_ / 2), s1 and s2)
