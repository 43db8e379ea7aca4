"""Argument validators shared by the core modules and the models layer.

Every validator takes the value first, then the argument's name (used in every message), then keyword-only
constraints, and returns the value in its canonical Python type. A value of the wrong *type* raises
:class:`TypeError`; a value of the right type outside its allowed set raises :class:`ValueError`. Both
messages start with the argument's name and show what was received.

``bool`` (and ``numpy.bool_``) is never accepted as a number: ``True`` is an ``int`` to Python, but passing
it as a bit width or a tolerance is always a mistake.

This module is private: import its names from here, not through another module.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Collection
from typing import Any

import numpy as np

__all__ = [
    "check_bool",
    "check_callable",
    "check_choice",
    "check_finite",
    "check_float_dtype",
    "check_int",
    "check_positive",
    "check_real",
    "check_seed",
    "is_traced",
]


def _describe(value: Any) -> str:
    """``"<type> <repr>"``, the repr shortened to 60 characters."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _range_text(minimum, maximum, exclusive_minimum: bool = False, exclusive_maximum: bool = False) -> str:
    """The allowed range: ``">= 0"``, ``"in [2, 32]"``, ``"positive (> 0)"``, ``"in (0, 1]"``."""
    if minimum is not None and maximum is not None:
        lo, hi = "(" if exclusive_minimum else "[", ")" if exclusive_maximum else "]"
        return f"in {lo}{minimum}, {maximum}{hi}"
    if minimum is not None:
        if minimum == 0 and exclusive_minimum:
            return "positive (> 0)"
        return f"{'>' if exclusive_minimum else '>='} {minimum}"
    return f"{'<' if exclusive_maximum else '<='} {maximum}"


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Validate an integer (Python or numpy; bool and integral floats refused) in ``[minimum, maximum]``.

    Parameters
    ----------
    value : Any
    name : str
        Argument name used in the messages.
    minimum, maximum : int, optional
        Inclusive bounds (None: unbounded on that side).

    Returns
    -------
    int

    Raises
    ------
    TypeError
        For bool, float (even ``4.0``), str, arrays and every other non-integer.
    ValueError
        For an integer outside the bounds.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {_describe(value)}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {_range_text(minimum, maximum)}, got {value}")
    return value


def check_real(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
) -> float:
    """Validate a finite real scalar (Python or numpy number; bool refused) within optional bounds.

    Parameters
    ----------
    value : Any
    name : str
        Argument name used in the messages.
    minimum, maximum : float, optional
        Bounds (None: unbounded on that side); inclusive unless ``exclusive_minimum`` /
        ``exclusive_maximum``.

    Returns
    -------
    float

    Raises
    ------
    TypeError
        For bool, str, complex, arrays and other non-real values.
    ValueError
        For NaN, infinity or a value outside the bounds.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_describe(value)}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    low = minimum is not None and (v <= minimum if exclusive_minimum else v < minimum)
    high = maximum is not None and (v >= maximum if exclusive_maximum else v > maximum)
    if low or high:
        rng = _range_text(minimum, maximum, exclusive_minimum, exclusive_maximum)
        raise ValueError(f"{name} must be {rng}, got {v}")
    return v


def check_positive(value: Any, name: str) -> float:
    """Validate a positive finite real number (``check_real`` with ``minimum=0, exclusive_minimum=True``)."""
    return check_real(value, name, minimum=0.0, exclusive_minimum=True)


def check_bool(value: Any, name: str) -> bool:
    """Validate a flag: Python or numpy bool only (``"no"``, ``0``, ``1`` and ``None`` raise TypeError)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool (True or False), got {_describe(value)}")
    return bool(value)


def check_choice(value: Any, name: str, choices: Collection[Any]) -> Any:
    """Validate that ``value`` is one of ``choices`` (compared by type and equality); return it.

    Raises
    ------
    ValueError
        For any other value (also of another type: ``3`` for a string option), listing the choices.
    """
    for choice in choices:
        if type(value) is type(choice) and value == choice:
            return value
    listed = ", ".join(repr(c) for c in choices)
    raise ValueError(f"{name} must be one of {listed}; got {_describe(value)}")


def check_callable(value: Any, name: str, what: str = "a callable") -> Any:
    """Validate a callable argument; ``what`` describes the expected callable in the TypeError."""
    if not callable(value):
        raise TypeError(f"{name} must be {what}, got {_describe(value)}")
    return value


def check_seed(value: Any, name: str = "seed") -> np.random.Generator:
    """A numpy Generator from ``None`` (fresh entropy), a non-negative integer, or a Generator (as is).

    Raises
    ------
    TypeError
        For bool, float, str and other types.
    ValueError
        For a negative integer.
    """
    if isinstance(value, np.random.Generator):
        return value
    if value is not None and (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral)):
        raise TypeError(f"{name} must be None, an integer or a numpy Generator, got {_describe(value)}")
    if value is not None and value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")
    return np.random.default_rng(None if value is None else int(value))


def is_traced(x: Any) -> bool:
    """Whether ``x`` is a tensor without values: a fake tensor of a ``make_fx`` / ``torch.compile`` trace.

    A trace records operations, not data, so value checks (finite, positive, in range) cannot run on it; the
    traced graph is replayed later on inputs that its caller checked (see :mod:`spherequant.models.compiled`).
    """
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(x, torch.Tensor):
        return False
    fake = sys.modules.get("torch._subclasses.fake_tensor")
    return fake is not None and bool(fake.is_fake(x))


def check_finite(x: Any, name: str) -> None:
    """Raise ValueError naming ``name`` if the numpy array or torch tensor ``x`` holds NaN or infinity (no
    check of a traced tensor, :func:`is_traced`: it has no values)."""
    torch = sys.modules.get("torch")  # not imported: x cannot be a tensor (this module does not need torch)
    if torch is not None and isinstance(x, torch.Tensor):
        if is_traced(x):
            return
        ok = bool(torch.all(torch.isfinite(x.detach())))
    else:
        ok = bool(np.all(np.isfinite(x)))
    if not ok:
        raise ValueError(f"{name} contains NaN or infinite entries")


def check_float_dtype(dtype: Any, name: str = "dtype", *, backend: str):
    """Validate an output dtype: a floating numpy dtype (``backend="numpy"``) or torch dtype (``"torch"``).

    Integer, bool and complex dtypes are refused: an integer output would silently truncate real values
    (e.g. every level below 1 would decode to 0). Returns the ``numpy.dtype`` or ``torch.dtype``.

    Raises
    ------
    TypeError
        For a dtype of the other backend, a non-floating dtype or anything that is not a dtype.
    """
    import torch

    if backend == "torch":
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"{name} must be a torch floating dtype for torch codes, got {dtype!r}")
        if not dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating dtype (the output is real), got {dtype}")
        return dtype
    if isinstance(dtype, torch.dtype):
        raise TypeError(f"{name} must be a numpy floating dtype for numpy codes, got {dtype}")
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"{name} must be a numpy floating dtype, got {dtype!r}") from exc
    if dt.kind != "f":
        raise TypeError(f"{name} must be a floating dtype (the output is real), got {dt}")
    return dt
