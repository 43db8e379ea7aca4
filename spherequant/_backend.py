"""Array-kind dispatch shared by the core modules.

Every public function of :mod:`spherequant` accepts numpy arrays or torch tensors and returns the same
kind. Functions obtain a namespace with :func:`namespace` and write numpy-style code against it; for
torch inputs the namespace maps the numpy names onto differentiable torch operations on the input's device
and dtype.
This module is private: its names may change without notice.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch

__all__ = [
    "as_float_array",
    "check_vectors",
    "is_torch",
    "namespace",
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
        return torch.linalg.vector_norm(x, dim=axis, keepdim=keepdims)

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
        return np.linalg.norm(x, axis=axis, keepdims=keepdims)

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


def namespace(*arrays):
    """Return the numpy-named namespace for the kind of the given arrays (torch if any is a tensor)."""
    return _TORCH if any(is_torch(a) for a in arrays) else _NP


def as_float_array(x: Any, name: str):
    """Validate ``x`` as a floating array/tensor; integers and lists are converted to float64 numpy.

    Raises
    ------
    TypeError
        If ``x`` is not array-like or has a non-numeric dtype.
    """
    if is_torch(x):
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must be a real floating tensor, got dtype {x.dtype}")
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
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must have a real numeric dtype, got {arr.dtype}")
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
        xp = namespace(x)
        if not bool(xp.all(xp.isfinite(x))):
            raise ValueError(f"{name} contains NaN or infinite entries")
    return x
