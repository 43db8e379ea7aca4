"""Array-kind dispatch shared by the core modules.

Every public function of :mod:`spherequant` accepts numpy arrays or torch tensors and returns the same
kind. Functions obtain a namespace with :func:`namespace` and write numpy-style code against it; for
torch inputs the namespace maps the numpy names onto differentiable torch operations on the input's device
and dtype.
This module is private: its names may change without notice.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch

from ._validation import check_finite, is_traced

__all__ = [
    "as_float_array",
    "backend_name",
    "cached_tensors",
    "check_features",
    "check_vectors",
    "cos_and_sin_dir",
    "gradient_carrier",
    "is_torch",
    "namespace",
    "polar",
    "pow2_scale",
    "safe_norm",
]


def is_torch(x: Any) -> bool:
    """Return True when ``x`` is a torch tensor."""
    return isinstance(x, torch.Tensor)


class _TorchNamespace:
    """A numpy-named facade over torch (only the operations the core needs)."""

    pi = np.pi
    float32 = torch.float32
    float64 = torch.float64

    @staticmethod
    def sum(x, axis=None, keepdims=False):
        if axis is None:
            return torch.sum(x)
        return torch.sum(x, dim=axis, keepdim=keepdims)

    @staticmethod
    def max(x, axis=None, keepdims=False):
        if axis is None:
            return torch.max(x)
        return torch.amax(x, dim=axis, keepdim=keepdims)

    @staticmethod
    def min(x, axis=None, keepdims=False):
        if axis is None:
            return torch.min(x)
        return torch.amin(x, dim=axis, keepdim=keepdims)

    @staticmethod
    def argmax(x, axis=-1):
        return torch.argmax(x, dim=axis)

    @staticmethod
    def norm(x, axis=-1, keepdims=False):
        return safe_norm(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def cross(a, b):
        a, b = torch.broadcast_tensors(a, b)
        return torch.linalg.cross(a, b, dim=-1)

    @staticmethod
    def stack(xs, axis=0):
        return torch.stack(list(xs), dim=axis)

    @staticmethod
    def concatenate(xs, axis=0):
        return torch.cat(list(xs), dim=axis)

    @staticmethod
    def clip(x, lo, hi):
        return torch.clamp(x, lo, hi)

    @staticmethod
    def where(c, a, b):
        if not isinstance(a, torch.Tensor):
            a = torch.as_tensor(a, dtype=b.dtype if isinstance(b, torch.Tensor) else None, device=c.device)
        if not isinstance(b, torch.Tensor):
            b = torch.as_tensor(b, dtype=a.dtype, device=c.device)
        return torch.where(c, a, b)

    @staticmethod
    def asarray(x, like):
        return torch.as_tensor(x, dtype=like.dtype, device=like.device)

    @staticmethod
    def eps(x):
        return torch.finfo(x.dtype).eps

    @staticmethod
    def expand_dims(x, axis):
        return torch.unsqueeze(x, axis)

    sqrt = staticmethod(torch.sqrt)
    sin = staticmethod(torch.sin)
    cos = staticmethod(torch.cos)
    arctan2 = staticmethod(torch.atan2)
    arccos = staticmethod(torch.arccos)
    arcsin = staticmethod(torch.arcsin)
    abs = staticmethod(torch.abs)
    sign = staticmethod(torch.sign)
    maximum = staticmethod(torch.maximum)
    minimum = staticmethod(torch.minimum)
    isfinite = staticmethod(torch.isfinite)
    any = staticmethod(torch.any)
    all = staticmethod(torch.all)
    einsum = staticmethod(torch.einsum)
    zeros_like = staticmethod(torch.zeros_like)
    ones_like = staticmethod(torch.ones_like)
    exp = staticmethod(torch.exp)
    log = staticmethod(torch.log)
    round = staticmethod(torch.round)
    floor = staticmethod(torch.floor)


class _NumpyNamespace:
    """numpy itself, plus the few helpers whose numpy spelling differs from the torch facade."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def norm(x, axis=-1, keepdims=False):
        return safe_norm(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def cross(a, b):
        return np.cross(a, b)

    @staticmethod
    def asarray(x, like):
        return np.asarray(x, dtype=like.dtype)

    @staticmethod
    def eps(x):
        return np.finfo(x.dtype).eps


_NP = _NumpyNamespace()
_TORCH = _TorchNamespace()


def backend_name(x: Any) -> str:
    """``"torch"`` for a torch tensor, else ``"numpy"``."""
    return "torch" if is_torch(x) else "numpy"


def namespace(*arrays):
    """Return the numpy-named namespace for the kind of the given arrays (torch if any is a tensor)."""
    return _TORCH if any(is_torch(a) for a in arrays) else _NP


def pow2_scale(m):
    """The power of two ``2^(e-1)`` with ``m in [2^(e-1), 2^e)`` for each entry of ``m >= 0`` (0 for 0).

    Dividing by it is exact (no rounding), keeps the largest entry in ``[1, 2)`` and never overflows (for
    the largest finite float it is ``2^1023``, resp. ``2^127``). Infinite or NaN entries give ``inf``/NaN.
    """
    if is_torch(m):
        if not m.is_floating_point():
            m = m.to(torch.get_default_dtype())
        if is_traced(m):
            # inside a graph trace: inductor's CPU code for frexp does not compile (float64, torch 2.13).
            # 2^floor(log2 m) is the same power of two except where log2 rounds up to an integer just below
            # it; any power of two divides exactly, so the callers' results are the same either way.
            top = math.frexp(torch.finfo(m.dtype).max)[1] - 1  # 2^top: the largest finite power of 2
            return torch.where(m > 0, torch.exp2(torch.floor(torch.log2(m)).clamp(max=top)), m)
        _, e = torch.frexp(m)
        return torch.where(m > 0, torch.ldexp(torch.ones_like(m), e - 1), m)
    m = np.asarray(m)
    _, e = np.frexp(m)
    with np.errstate(over="ignore"):
        p = np.ldexp(np.ones_like(m), e - 1)
    return np.where(m > 0, p, m).astype(m.dtype, copy=False)


def cached_tensors(cache: dict, key, make):
    """``cache[key]``, made by ``make()`` (a tensor or a tuple of tensors) on first use.

    What ``make()`` returns inside a trace (``make_fx``, ``torch.compile``: fake tensors, :func:`is_traced`)
    is returned but not kept: a fake tensor has no values, and a later eager call that found it in the cache
    would compute with it (and return fake tensors). A cached real tensor is used by a trace as a constant.
    """
    hit = cache.get(key)
    if hit is not None:
        return hit
    value = make()
    if not any(is_traced(t) for t in (value if isinstance(value, tuple) else (value,))):
        cache[key] = value
    return value


def gradient_carrier(x):
    """``x - x.detach()``: exactly 0 in value, the identity in gradient (torch tensors).

    Every straight-through estimator of the library is written with it: the forward value ``y`` (computed
    without gradient) plus ``L(gradient_carrier(x))`` for a linear map ``L`` with detached coefficients is
    exactly ``y`` forward and ``L^T`` backward (``y + 0`` is ``y`` bit for bit, -0 becoming +0; a zero
    input keeps every term finite, whatever the scale of ``x``). Unlike a ``torch.autograd.Function``, these
    are ordinary differentiable operations, so ``torch.func`` transforms and graph capture (``make_fx``,
    ``torch.compile``) see the estimator and differentiate it again (the second derivative of a force loss).
    The coefficients are constants of the backward pass, as the saved tensors of a custom backward are.
    """
    return x - x.detach()


def polar(v):
    """Polar split ``(r, u, nonzero)`` of vectors along the last axis, without overflow or underflow.

    ``r = |v|`` (shape ``v.shape[:-1]``), ``u = v / |v|`` (shape of ``v``) and ``nonzero = v != 0`` (any
    entry); ``u = 0`` and ``r = 0`` for zero vectors. Each row is divided by its largest absolute entry
    first, so entries near the largest or smallest float give exact directions. The MDDQ forward pass
    (:mod:`spherequant.quantize`) splits vectors with it; the models layer's fused deploy kernels
    reproduce it op for op.
    """
    xp = namespace(v)
    mx = xp.max(xp.abs(v), axis=-1, keepdims=True)
    nonzero = mx > 0
    one = xp.ones_like(mx)
    vs = v / xp.where(nonzero, mx, one)
    rs = xp.norm(vs, axis=-1, keepdims=True)
    u = xp.where(nonzero, vs / xp.where(nonzero, rs, one), xp.zeros_like(vs))
    return (mx * rs)[..., 0], u, nonzero[..., 0]


def safe_norm(x, axis: int = -1, keepdims: bool = False):
    """Euclidean norm along ``axis`` without overflow or underflow of the squares.

    ``np.linalg.norm`` and ``torch.linalg.vector_norm`` square the entries first, so a row of entries
    ~1e200 (float64; ~1e20 in float32) gets norm ``inf`` and one of entries ~1e-200 gets norm 0. Here each
    row is divided by the power of two ``m`` of :func:`pow2_scale` of its largest absolute entry (exact;
    detached in torch: the norm is homogeneous, so the gradient is unchanged) and the norm is
    ``m * sqrt(sum((x / m)^2))``, exact up to rounding whenever the true norm is a finite number of the
    dtype (it is ``inf`` only if the norm itself overflows). Zero rows give 0 with a zero (never NaN)
    gradient in torch.

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor, floating, shape (..., n, ...)
    axis : int
        Axis to reduce.
    keepdims : bool
        Keep the reduced axis with length 1.

    Returns
    -------
    same kind and dtype as ``x``, shape of ``x`` without ``axis`` (or with length 1 there)
    """
    if is_torch(x):
        if x.shape[axis] == 0:
            return torch.sum(x * x, dim=axis, keepdim=keepdims)
        m = pow2_scale(torch.amax(torch.abs(x.detach()), dim=axis, keepdim=True))
        nz = m > 0
        safe_m = torch.where(nz, m, torch.ones_like(m))
        y = x / safe_m
        s2 = torch.sum(y * y, dim=axis, keepdim=True)  # in [1, n] on non-zero rows
        s = torch.sqrt(torch.where(nz, s2, torch.ones_like(s2)))
        out = torch.where(nz, s * m, torch.zeros_like(s))
        return out if keepdims else out.squeeze(axis)
    x = np.asarray(x)
    if x.shape[axis] == 0:
        return np.sum(x * x, axis=axis, keepdims=keepdims)
    m = pow2_scale(np.max(np.abs(x), axis=axis, keepdims=True))
    safe_m = np.where(m > 0, m, 1).astype(m.dtype, copy=False)
    y = x / safe_m
    with np.errstate(over="ignore"):  # the norm overflows only if it is not representable
        out = np.sqrt(np.sum(y * y, axis=axis, keepdims=True)) * m
    return out if keepdims else np.squeeze(out, axis=axis)


def cos_and_sin_dir(v, xp, name: str, factor: float = 1.0):
    """``cos(f t)`` and ``sin(f t) v / t`` for ``t = |v|`` (shape (..., 1) and (..., 3)), overflow-safe.

    ``t`` is computed by :func:`safe_norm` (no squaring of the entries), and for ``f t >= 1e-3`` the second
    factor is ``sin(f t)`` times the unit direction (never ``sin(f t) / t`` times ``v``, which would be
    subnormal for huge ``t``), so tangent vectors up to the largest finite norm give finite results. Below
    ``1e-3`` the Taylor series of ``cos`` and ``sin(s)/s`` are used (exact at 0, finite torch gradients).

    Raises
    ------
    ValueError
        If the norm of a row of ``v`` overflows the dtype.
    """
    t = safe_norm(v, axis=-1, keepdims=True)
    if not bool(xp.all(xp.isfinite(t))):
        raise ValueError(f"{name} has a row whose norm overflows its dtype ({v.dtype}); scale it down")
    ft = factor * t
    small = ft < 1e-3  # truncation error below (f t)**6 / 5040 ~ 2e-22
    s2 = xp.where(small, ft, xp.zeros_like(ft)) ** 2
    safe_t = xp.where(small, xp.ones_like(t), t)
    safe_ft = xp.where(small, xp.ones_like(ft), ft)
    cos = xp.where(small, 1.0 - s2 / 2.0 + s2 * s2 / 24.0, xp.cos(safe_ft))
    sin_dir = xp.where(
        small,
        (factor * (1.0 - s2 / 6.0 + s2 * s2 / 120.0)) * v,
        xp.sin(safe_ft) * (v / safe_t),
    )
    return cos, sin_dir


def as_float_array(x: Any, name: str):
    """Validate ``x`` as a floating array/tensor; integers and lists are converted to float64 numpy.

    Raises
    ------
    TypeError
        If ``x`` is not array-like or has a non-numeric, complex or bool dtype.
    ValueError
        If ``x`` is a tensor on the ``meta`` device (it has no values to compute with).
    """
    if is_torch(x):
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must be a real floating tensor, got dtype {x.dtype}")
        if x.device.type == "meta":
            raise ValueError(f"{name} is on the meta device (a tensor without data); move it to cpu or cuda")
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        return x
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    if isinstance(x, numbers.Number):
        x = np.asarray(x, dtype=np.float64)
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists etc.
        raise TypeError(f"{name} must be array-like, got {type(x).__name__}") from exc
    if arr.dtype == object or arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must have a real numeric (not bool) dtype, got {arr.dtype}")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    return arr


def check_vectors(x: Any, name: str, *, finite: bool = True):
    """Validate a batch of 3-vectors of shape ``(..., 3)`` and return it as a float array/tensor.

    Raises
    ------
    TypeError
        For non-numeric input.
    ValueError
        If the last axis is not of length 3, or (with ``finite=True``) on NaN/inf entries.
    """
    x = as_float_array(x, name)
    if x.ndim == 0 or x.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (..., 3), got {tuple(x.shape)}")
    if finite:
        check_finite(x, name)
    return x


def check_features(x: Any, name: str, *, dim: int):
    """Validate finite features of shape ``(..., dim)`` (``dim = 3``: :func:`check_vectors`).

    Raises
    ------
    TypeError
        For non-numeric input.
    ValueError
        If the last axis is not of length ``dim``, or on NaN/inf entries.
    """
    if dim == 3:
        return check_vectors(x, name)
    x = as_float_array(x, name)
    if x.ndim == 0 or x.shape[-1] != dim:
        raise ValueError(f"{name} must have shape (..., {dim}) to match the codebook, got {tuple(x.shape)}")
    check_finite(x, name)
    return x
