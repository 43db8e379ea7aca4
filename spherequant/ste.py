"""Straight-through estimators (STE): plain and geometric (tangent-projected).

A quantizer is piecewise constant, so its true derivative is zero almost everywhere. A straight-through
estimator keeps the quantized value in the forward pass and substitutes a chosen surrogate derivative in the
backward pass:

* :func:`ste_round` -- ``round`` forward, identity backward.
* :func:`plain_ste` -- forward ``v_q``, backward ``dL/dv = dL/dv_q`` (the Euclidean STE).
* :func:`geometric_ste` -- forward ``v_q``, backward ``dL/dv = P_{v_hat} dL/dv_q`` with
  ``P_{v_hat} = I - v_hat v_hat^T`` (Eq. 8 of the paper): the radial part of the gradient is removed, so
  ``<dL/dv, v> = 0`` (Prop. III.1) and a first-order update does not change ``|v|``.

All three accept numpy arrays or torch tensors. With numpy input there is no autograd: the functions return
the forward value (``round(x)`` or ``v_q`` itself) unchanged. With torch input they return a tensor on the
input's device and dtype whose gradient flows to the first argument only (``v_q`` receives no gradient).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._backend import as_float_array, check_vectors, gradient_carrier, is_torch, polar
from ._validation import check_finite

__all__ = ["geometric_ste", "plain_ste", "ste_round"]


# The estimators below add gradient_carrier terms (value 0) to a detached forward value: ordinary
# differentiable operations, so torch.func and graph capture see them (see _backend.gradient_carrier).
def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward; identity backward."""
    y = torch.round(x.detach())
    return y + gradient_carrier(x) if torch.is_grad_enabled() else y


def _plain_ste(v: torch.Tensor, v_q: torch.Tensor) -> torch.Tensor:
    """Forward v_q; backward dL/dv = dL/dv_q (v_q gets no gradient)."""
    y = v_q.detach().clone()
    return y + gradient_carrier(v) if torch.is_grad_enabled() else y


def _geometric_ste(v: torch.Tensor, v_q: torch.Tensor) -> torch.Tensor:
    """Forward v_q; backward dL/dv = (I - v_hat v_hat^T) dL/dv_q, zero for v = 0."""
    y = v_q.detach().clone()
    if not torch.is_grad_enabled():
        return y
    # the unit vector v_hat (0 for v = 0), scale-safe: polar divides by the largest component first
    _, u, nonzero = polar(v.detach())
    d = gradient_carrier(v)
    return y + nonzero.to(v.dtype).unsqueeze(-1) * (d - u * torch.sum(u * d, dim=-1, keepdim=True))


def _check_pair(v: Any, v_q: Any, vectors: bool):
    check = (lambda a, n: check_vectors(a, n, finite=False)) if vectors else as_float_array
    v = check(v, "v")
    v_q = check(v_q, "v_q")
    if is_torch(v) != is_torch(v_q):
        raise TypeError(
            f"v and v_q must be the same kind (both numpy or both torch), got {type(v).__name__} and "
            f"{type(v_q).__name__}"
        )
    if tuple(v.shape) != tuple(v_q.shape):
        raise ValueError(f"v_q must have the shape of v, got v_q {tuple(v_q.shape)} and v {tuple(v.shape)}")
    if is_torch(v):
        if v.device != v_q.device:
            raise ValueError(f"v_q must be on the device of v, got {v_q.device} and {v.device}")
        if v_q.dtype != v.dtype:
            v_q = v_q.to(v.dtype)
    check_finite(v, "v")
    check_finite(v_q, "v_q")
    return v, v_q


def ste_round(x: Any):
    """Round to the nearest integer with an identity (straight-through) gradient.

    Parameters
    ----------
    x : array_like or torch.Tensor, any shape
        Real input. Ties round half to even (numpy and torch agree).

    Returns
    -------
    numpy.ndarray or torch.Tensor, same shape
        ``round(x)``; for torch input ``d round(x) / dx`` is taken to be 1 (identity backward).

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([0.2, 1.7, -2.6], requires_grad=True)
    >>> y = ste_round(x)
    >>> y.tolist()
    [0.0, 2.0, -3.0]
    >>> y.sum().backward(); x.grad.tolist()
    [1.0, 1.0, 1.0]
    """
    x = as_float_array(x, "x")
    check_finite(x, "x")
    if is_torch(x):
        return _round_ste(x)
    return np.round(x)


def plain_ste(v: Any, v_q: Any):
    """Euclidean straight-through estimator: forward ``v_q``, backward identity to ``v``.

    Parameters
    ----------
    v : array_like or torch.Tensor, any shape
        Pre-quantization value (receives the gradient).
    v_q : array_like or torch.Tensor, shape of ``v``
        Quantized value returned by the forward pass (receives no gradient; cast to ``v``'s dtype).

    Returns
    -------
    numpy.ndarray or torch.Tensor
        ``v_q`` (for numpy input, ``v_q`` itself); for torch, ``dL/dv = dL/dv_q``.

    Raises
    ------
    TypeError
        If ``v`` and ``v_q`` are of different kinds (numpy and torch) or not real arrays.
    ValueError
        If the shapes or devices differ, or on NaN/inf entries (a NaN gradient would poison training).

    Examples
    --------
    >>> import torch
    >>> v = torch.tensor([0.3, 0.9], requires_grad=True)
    >>> out = plain_ste(v, torch.tensor([0.0, 1.0]))
    >>> (2 * out).sum().backward(); v.grad.tolist()
    [2.0, 2.0]
    """
    v, v_q = _check_pair(v, v_q, vectors=False)
    if is_torch(v):
        return _plain_ste(v, v_q)
    return v_q


def geometric_ste(v: Any, v_q: Any):
    """Geometric straight-through estimator (Eq. 8): the backward pass removes the radial gradient.

    Forward returns ``v_q``; backward returns ``dL/dv = P_{v_hat} dL/dv_q`` with ``P_{v_hat} = I - v_hat
    v_hat^T`` and ``v_hat = v / |v|``. The gradient is therefore orthogonal to ``v`` (Prop. III.1:
    ``<dL/dv, v> = 0``). For ``v = 0`` the direction is undefined and the gradient is 0 (never NaN); tiny and
    huge vectors are normalised without underflow or overflow.

    Parameters
    ----------
    v : array_like or torch.Tensor, shape (..., 3)
        Pre-quantization vectors (receive the gradient).
    v_q : array_like or torch.Tensor, shape (..., 3)
        Quantized vectors returned by the forward pass (receive no gradient).

    Returns
    -------
    numpy.ndarray or torch.Tensor, shape (..., 3)
        ``v_q``. With numpy input there is no autograd and ``v_q`` is returned unchanged.

    Raises
    ------
    TypeError
        If ``v`` and ``v_q`` are of different kinds or not real arrays.
    ValueError
        If the last axis is not 3, the shapes differ, the devices differ, or on NaN/inf entries.

    Examples
    --------
    >>> import torch
    >>> v = torch.tensor([[3.0, 0.0, 0.0]], requires_grad=True)
    >>> out = geometric_ste(v, torch.tensor([[1.0, 0.0, 0.0]]))
    >>> (out * torch.tensor([[5.0, 2.0, -1.0]])).sum().backward()
    >>> v.grad.tolist()  # the radial (x) component is removed
    [[0.0, 2.0, -1.0]]
    """
    v, v_q = _check_pair(v, v_q, vectors=True)
    if is_torch(v):
        return _geometric_ste(v, v_q)
    return v_q
