"""Shape, dtype, backend and device arguments of the random samplers (private).

:func:`spherequant.sphere.random_unit_vectors` and :func:`spherequant.so3.random_rotation` draw float64
numpy samples and hand them to :func:`as_output`, which returns them in the requested kind, dtype and
device. This module is private: its names may change without notice.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

__all__ = ["as_output", "check_device", "parse_dtype", "parse_shape"]


def parse_shape(n, name: str = "n") -> tuple[int, ...]:
    """The sample shape from ``n``: an int ``k`` gives ``(k,)``, a tuple/list of ints is kept (all >= 0)."""
    if isinstance(n, bool):
        raise TypeError(f"{name} must be an int or a tuple of ints, got bool")
    if isinstance(n, numbers.Integral):
        n = (int(n),)
    elif isinstance(n, (tuple, list)):
        if not all(isinstance(k, numbers.Integral) and not isinstance(k, bool) for k in n):
            raise TypeError(f"{name} must be an int or a tuple of ints, got {n!r}")
        n = tuple(int(k) for k in n)
    else:
        raise TypeError(f"{name} must be an int or a tuple of ints, got {type(n).__name__}")
    if any(k < 0 for k in n):
        raise ValueError(f"{name} must be non-negative, got {n}")
    return n


def parse_dtype(dtype, backend: str):
    """float32 or float64 (numpy, torch or string spelling) as the dtype object of ``backend``."""
    names = {"float32": 0, "float64": 1}
    if isinstance(dtype, str) and dtype in names:
        k = names[dtype]
    elif dtype in (np.float32, torch.float32) or (isinstance(dtype, np.dtype) and dtype == np.float32):
        k = 0
    elif dtype in (np.float64, torch.float64) or (isinstance(dtype, np.dtype) and dtype == np.float64):
        k = 1
    else:
        raise ValueError(f"dtype must be float32 or float64 (numpy, torch or str), got {dtype!r}")
    if backend == "torch":
        return (torch.float32, torch.float64)[k]
    return (np.float32, np.float64)[k]


def check_device(device):
    """A usable torch device from ``device`` (None: cpu), else ValueError naming ``device``."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    if dev.type == "meta":
        raise ValueError("device 'meta' holds no data; use 'cpu' or 'cuda'")
    if dev.type not in ("cpu", "cuda"):
        try:
            torch.empty(0, device=dev)
        except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
            raise ValueError(f"device {device!r} is not available on this machine") from exc
    return dev


def as_output(arr: np.ndarray, dtype, backend: str, device):
    """The float64 sample ``arr`` as a numpy array or torch tensor of ``dtype`` (on ``device`` for torch).

    Validates ``backend`` (``"numpy"`` or ``"torch"``), ``dtype`` (:func:`parse_dtype`) and ``device``
    (:func:`check_device`; only meaningful for torch), each error naming the argument.
    """
    if not isinstance(backend, str) or backend not in ("numpy", "torch"):
        raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")
    dt = parse_dtype(dtype, backend)
    if backend == "torch":
        return torch.as_tensor(arr, device=check_device(device)).to(dt)
    if device is not None:
        raise ValueError("device is only meaningful with backend='torch'")
    return arr.astype(dt)
