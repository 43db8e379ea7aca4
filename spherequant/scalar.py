"""Scalar quantizers: symmetric, asymmetric min-max and learned-step-size (LSQ), with module forms.

numpy and torch; the torch paths are differentiable through straight-through estimators.

* symmetric linear, signed ``b`` bits with levels ``-(2^(b-1) - 1) .. 2^(b-1) - 1`` (zero is a level), per
  tensor or per channel, scale from the max-abs or a percentile of ``|x|``: :func:`symmetric_scale`,
  :func:`quantize_symmetric`, :func:`dequantize`, :func:`fake_quantize_symmetric`;
* asymmetric min-max (the paper's "naive" per-tensor INT8), unsigned codes ``0 .. 2^b - 1`` with an integer
  zero point: :func:`minmax_params`, :func:`quantize_minmax`, :func:`fake_quantize_minmax`;
* learned step size (LSQ, Esser et al. 2020): :func:`fake_quantize_lsq`;
* module forms with observers for the models layer: :class:`SymmetricQuantizer`, :class:`MinMaxQuantizer`,
  :class:`LSQQuantizer`;
* the integer dtype that holds a given number of codes: :func:`code_dtype`.

STE convention of the fake quantizers: the forward pass returns the quantized value, the backward pass the
incoming gradient times the clipping mask ``1[qmin <= round(x / s) + z <= qmax]`` (as
``torch.fake_quantize_per_tensor_affine``); the scale and zero point receive no gradient (except in LSQ).

Vector features are quantized by :mod:`spherequant.quantize` (MDDQ); these functions were part of that
module before and are still reachable there, with a :class:`DeprecationWarning`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._backend import as_float_array, backend_name, gradient_carrier, is_torch, namespace
from ._validation import (
    check_bool,
    check_choice,
    check_finite,
    check_float_dtype,
    check_int,
    check_positive,
    check_real,
    is_traced,
)

__all__ = [
    "LSQQuantizer",
    "MinMaxQuantizer",
    "SymmetricQuantizer",
    "code_dtype",
    "dequantize",
    "fake_quantize_lsq",
    "fake_quantize_minmax",
    "fake_quantize_symmetric",
    "learned_step",
    "minmax_params",
    "quantize_minmax",
    "quantize_symmetric",
    "soft_clamp",
    "symmetric_scale",
]

_SCALE_METHODS = ("maxabs", "percentile")


# ----------------------------------------------------------------------------------------------------------
# validation and conversion helpers
# ----------------------------------------------------------------------------------------------------------
def _check_zero_point(zero_point: Any, bits: int | None, name: str = "zero_point") -> None:
    """Validate that a zero point is finite, integer-valued and (given ``bits``) in ``[0, 2^bits - 1]``.

    Checked in float64 on the given value, before any cast to the data's dtype (float32 rounds
    ``2^32 - 1`` up to ``2^32``).
    """
    if is_torch(zero_point):
        if zero_point.is_complex() or zero_point.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer or integer-valued, got dtype {zero_point.dtype}")
        if zero_point.device.type == "meta":
            raise ValueError(f"{name} is on the meta device (a tensor without data)")
        if is_traced(zero_point):
            return
        z = zero_point.detach().cpu().to(torch.float64).numpy()
    else:
        if isinstance(zero_point, (bool, np.bool_)):
            raise TypeError(f"{name} must be an integer, got bool")
        z = np.asarray(zero_point)
        if z.dtype.kind not in "iuf":
            raise TypeError(f"{name} must be an integer or integer-valued, got dtype {z.dtype}")
        z = z.astype(np.float64)
    if not np.all(np.isfinite(z)):
        raise ValueError(f"{name} contains NaN or infinite entries")
    if not np.all(z == np.round(z)):
        bad = z[z != np.round(z)].ravel()[0]
        raise ValueError(f"{name} must be integer-valued (the zero is represented exactly), got {bad!r}")
    if bits is not None and z.size and (z.min() < 0 or z.max() > 2**bits - 1):
        bad = z.min() if z.min() < 0 else z.max()
        raise ValueError(f"{name} must lie in [0, {2**bits - 1}] for bits={bits}, got {int(bad)}")


def _to_codes(t, lo: int, hi: int, dt):
    """Integer codes of dtype ``dt`` from rounded floats ``t``, clipped to ``[lo, hi]`` exactly.

    The float clip alone is not enough: ``hi`` may not be representable (float32 rounds ``2^31 - 1`` up to
    ``2^31``, which wraps to ``-2^31`` in int32), so the final clip is done in int64.
    """
    t = namespace(t).clip(t, lo, hi)
    if is_torch(t):
        return torch.clamp(t.to(torch.int64), lo, hi).to(dt)
    return np.clip(t.astype(np.int64), lo, hi).astype(dt)


def _normalize_axis(axis: Any, ndim: int) -> int | None:
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an integer or None, got {type(axis).__name__}")
    if not -ndim <= int(axis) < ndim:
        raise ValueError(f"axis {axis} is out of range for an array with {ndim} dimensions")
    return int(axis) % ndim


def code_dtype(n_values: int, backend: str = "numpy"):
    """Smallest integer dtype that holds the codes ``0 .. n_values - 1``.

    numpy uses unsigned types (``uint8``, ``uint16``, ``uint32``, ``uint64``). torch supports few operations
    on unsigned types other than ``uint8``, so torch uses ``uint8`` up to 255 and then the smallest *signed*
    type that holds the largest code: ``int16`` (up to 32767), ``int32``, ``int64``. Indexing with torch
    codes needs ``.long()`` (a ``uint8`` tensor used as an index is read as a boolean mask).

    Parameters
    ----------
    n_values : int
        Number of distinct codes (at least 1).
    backend : {"numpy", "torch"}
        Which library's dtype to return.

    Returns
    -------
    numpy.dtype or torch.dtype

    Examples
    --------
    >>> code_dtype(256), code_dtype(257), code_dtype(2**16 + 1)
    (dtype('uint8'), dtype('uint16'), dtype('uint32'))
    >>> code_dtype(257, "torch"), code_dtype(2**16, "torch")
    (torch.int16, torch.int32)
    """
    n_values = check_int(n_values, "n_values", minimum=1)
    check_choice(backend, "backend", ("numpy", "torch"))
    top = int(n_values) - 1
    if backend == "numpy":
        for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
            if top <= np.iinfo(dt).max:
                return np.dtype(dt)
        raise ValueError(f"n_values={n_values} does not fit in 64 bits")
    if top <= 255:
        return torch.uint8
    for dt in (torch.int16, torch.int32, torch.int64):
        if top <= torch.iinfo(dt).max:
            return dt
    raise ValueError(f"n_values={n_values} does not fit in a torch int64")


def _signed_code_dtype(bits: int, backend: str):
    if backend == "numpy":
        return np.dtype(np.int8 if bits <= 8 else np.int16 if bits <= 16 else np.int32)
    return torch.int8 if bits <= 8 else torch.int16 if bits <= 16 else torch.int32


def _tiny(x) -> float:
    """Smallest positive normal number of the dtype of ``x``."""
    return float(torch.finfo(x.dtype).tiny) if is_torch(x) else float(np.finfo(x.dtype).tiny)


def _as_param(value: Any, like, name: str, *, positive: bool):
    """Convert a scale / zero point to the kind, dtype and device of ``like`` and validate it."""
    if is_torch(value) and (value.dtype == torch.bool or value.is_complex()):
        raise TypeError(f"{name} must be real and numeric, got dtype {value.dtype}")
    if is_torch(value) and value.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (a tensor without data)")
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a number, got bool")
    if is_torch(like):
        if not is_torch(value):
            value = np.asarray(value)  # python floats become float64 before the single cast below
            if value.dtype.kind not in "iuf":
                raise TypeError(f"{name} must be numeric, got dtype {value.dtype}")
        t = torch.as_tensor(value, device=like.device).to(like.dtype)
    else:
        if is_torch(value):
            raise TypeError(f"{name} must be a numpy array or number for numpy input, got a torch tensor")
        t = np.asarray(value)
        if t.dtype.kind not in "iuf":
            raise TypeError(f"{name} must be numeric, got dtype {t.dtype}")
        t = t.astype(like.dtype if like.dtype.kind == "f" else np.float64)
    xp = namespace(t)
    check_finite(t, name)
    if positive and not is_traced(t) and not bool(xp.all(t > 0)):
        raise ValueError(f"{name} must be positive everywhere")
    try:
        (np.broadcast_shapes if not is_torch(t) else torch.broadcast_shapes)(
            tuple(t.shape), tuple(like.shape)
        )
    except (ValueError, RuntimeError) as exc:
        raise ValueError(
            f"{name} of shape {tuple(t.shape)} does not broadcast to x {tuple(like.shape)}"
        ) from exc
    return t


# ----------------------------------------------------------------------------------------------------------
# straight-through fake quantization (shared by symmetric and min-max)
# ----------------------------------------------------------------------------------------------------------
def _fake_quant_ste(x, scale, zero_point, qmin: int, qmax: int):
    """Forward ``(clip(round(x/s) + z, qmin, qmax) - z) s`` (saturated at +-max float); backward
    ``grad * 1[qmin <= round(x/s) + z <= qmax]`` (straight-through, :func:`gradient_carrier`)."""
    xd = x.detach()
    t = torch.round(xd / scale) + zero_point
    top = torch.finfo(x.dtype).max  # levels beyond +-max (ranges near the float max) saturate
    y = torch.clamp((torch.clamp(t, qmin, qmax) - zero_point) * scale, -top, top)
    if not torch.is_grad_enabled():
        return y
    mask = ((t >= qmin) & (t <= qmax)).to(x.dtype)
    return y + mask * gradient_carrier(x)


def _fake_quant(x, scale, zero_point, qmin: int, qmax: int):
    if is_torch(x):
        return _fake_quant_ste(x, scale.detach(), zero_point, qmin, qmax)
    with np.errstate(over="ignore"):  # x / scale may overflow to +-inf: it clips to qmin / qmax
        t = np.clip(np.round(x / scale) + zero_point, qmin, qmax)
        y = ((t - zero_point) * scale).astype(x.dtype, copy=False)
    top = np.finfo(x.dtype).max  # levels beyond +-max (ranges near the float max) saturate
    return np.clip(y, -top, top).astype(x.dtype, copy=False)


def _bound(value, name: str, like: torch.Tensor) -> torch.Tensor:
    """A real scalar or tensor argument of :func:`soft_clamp` as a finite tensor of ``like``'s dtype."""
    if is_torch(value):
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must be real, got dtype {value.dtype}")
        out = value.to(dtype=like.dtype, device=like.device)
    else:
        out = torch.as_tensor(check_real(value, name), dtype=like.dtype, device=like.device)
    if not is_traced(out) and not bool(torch.isfinite(out).all()):
        raise ValueError(f"{name} must be finite, got {out.tolist()}")
    return out


def soft_clamp(x: torch.Tensor, lo, hi, width=0.0) -> torch.Tensor:
    """``clamp(x, lo, hi)`` with its two corners rounded over ``width``: ``lo + w sp((x - lo) / w) -
    w sp((x - hi) / w)``, ``sp`` the softplus.

    ``width = 0`` is the plain clamp. For ``width > 0`` the result is infinitely differentiable, increasing,
    within ``[lo, hi]``, equal to ``x`` far inside the range and within ``width * ln 2`` of the clamp
    everywhere (the largest gap is at the corners); its derivative is
    ``sigmoid((x - lo) / w) - sigmoid((x - hi) / w)``.

    Parameters
    ----------
    x : torch.Tensor
    lo, hi : float or torch.Tensor
        Bounds, ``lo <= hi`` (broadcast against ``x``).
    width : float or torch.Tensor
        Non-negative width of the rounding (units of ``x``; broadcast against ``x``).

    Returns
    -------
    torch.Tensor, shape and dtype of ``x``

    Examples
    --------
    >>> x = torch.tensor([-5.0, 0.0, 1.0, 5.0], dtype=torch.float64)
    >>> soft_clamp(x, -1.0, 1.0).tolist()
    [-1.0, 0.0, 1.0, 1.0]
    >>> [round(v, 4) for v in soft_clamp(x, -1.0, 1.0, 0.1).tolist()]
    [-1.0, 0.0, 0.9307, 1.0]

    Raises
    ------
    TypeError
        ``x`` is not a floating torch tensor, or a bound or the width is not real.
    ValueError
        Non-finite ``x``, bounds or width, ``lo > hi`` or a negative width.
    """
    if not is_torch(x):
        raise TypeError(f"x must be a torch tensor, got {type(x).__name__}")
    x = as_float_array(x, "x")
    check_finite(x, "x")
    lo, hi, width = (_bound(v, name, x) for v, name in ((lo, "lo"), (hi, "hi"), (width, "width")))
    if not is_traced(width):
        if bool((lo > hi).any()):
            raise ValueError(f"lo must not exceed hi, got lo={lo.tolist()}, hi={hi.tolist()}")
        if bool((width < 0).any()):
            raise ValueError(f"width must be non-negative, got {width.min().item()}")
        if not bool((width > 0).any()):
            return torch.clamp(x, lo, hi)
    w = torch.where(width > 0, width, torch.ones_like(width))
    soft = lo + w * F.softplus((x - lo) / w, threshold=40.0) - w * F.softplus((x - hi) / w, threshold=40.0)
    return torch.where(width > 0, soft, torch.clamp(x, lo, hi))


# ----------------------------------------------------------------------------------------------------------
# symmetric linear quantization
# ----------------------------------------------------------------------------------------------------------
def _reduce_abs(x, axis: int | None, method: str, percentile: float):
    """max or percentile of |x| over all axes but ``axis`` (keepdims shape), no gradient."""
    xp = namespace(x)
    a = xp.abs(x.detach() if is_torch(x) else x)
    if axis is None:
        flat = a.reshape(1, -1)
        out_shape = ()
    else:
        moved = a.movedim(axis, 0) if is_torch(a) else np.moveaxis(a, axis, 0)
        flat = moved.reshape(a.shape[axis], -1)
        out_shape = tuple(n if i == axis else 1 for i, n in enumerate(a.shape))
    if method == "maxabs":
        red = xp.max(flat, axis=1)
    elif is_torch(flat):
        # numpy's default "linear" percentile, written with a sort (torch.quantile caps the input size).
        srt = torch.sort(flat, dim=1).values
        pos = (percentile / 100.0) * (srt.shape[1] - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, srt.shape[1] - 1)
        frac = pos - lo
        red = srt[:, lo] + (srt[:, hi] - srt[:, lo]) * frac
    else:
        red = np.percentile(flat, percentile, axis=1).astype(flat.dtype)
    return red.reshape(out_shape)


def symmetric_scale(
    x: Any, bits: int, axis: int | None = None, method: str = "maxabs", percentile: float = 99.99
):
    """Scale of a symmetric signed ``bits``-bit quantizer: ``range / (2^(bits-1) - 1)``.

    ``range`` is ``max |x|`` (``method="maxabs"``) or the ``percentile``-th percentile of ``|x|`` (numpy's
    linear interpolation), over the whole tensor (``axis=None``) or over every axis except the channel axis
    ``axis`` (per-channel scales). An all-zero tensor or channel gets ``range = 1`` so that the scale is
    positive, and the scale is at least the smallest normal number of the dtype (a range of subnormals
    would otherwise give a scale of 0). The scale carries no gradient.

    Parameters
    ----------
    x : array_like or torch.Tensor, any non-empty shape
        Data to calibrate on (finite).
    bits : int
        Bit width, 2 to 32.
    axis : int or None
        Channel axis for per-channel scales.
    method : {"maxabs", "percentile"}
        How the range is taken.
    percentile : float
        Percentile in ``(0, 100]`` for ``method="percentile"``.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        Shape ``()`` per tensor, or ``x.shape`` with every axis but ``axis`` set to 1 (broadcasts against
        ``x``); dtype of ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> float(symmetric_scale(np.array([-2.54, 1.0, 0.5]), bits=8))
    0.02
    >>> symmetric_scale(np.array([[1.0, -4.0], [0.5, 2.0]]), bits=3, axis=1).tolist()
    [[0.3333333333333333, 1.3333333333333333]]
    """
    x = as_float_array(x, "x")
    bits = check_int(bits, "bits", minimum=2, maximum=32)
    check_choice(method, "method", _SCALE_METHODS)
    percentile = check_real(percentile, "percentile", minimum=0.0, maximum=100.0, exclusive_minimum=True)
    if x.ndim == 0 or math.prod(x.shape) == 0:
        raise ValueError(f"x must be a non-empty array, got shape {tuple(x.shape)}")
    axis = _normalize_axis(axis, x.ndim)
    check_finite(x, "x")
    xp = namespace(x)
    amax = _reduce_abs(x, axis, method, float(percentile))
    amax = xp.where(amax > 0, amax, xp.ones_like(amax))
    # A range of a few subnormals would give a scale that underflows to 0: keep it a normal number.
    return xp.maximum(amax / (2 ** (bits - 1) - 1), xp.asarray(_tiny(amax), like=amax))


def quantize_symmetric(x: Any, scale: Any, bits: int):
    """Integer codes ``clip(round(x / scale), -(2^(bits-1) - 1), 2^(bits-1) - 1)``.

    Parameters
    ----------
    x : array_like or torch.Tensor
        Finite data.
    scale : float, array_like or torch.Tensor
        Positive scale broadcasting against ``x`` (e.g. from :func:`symmetric_scale`).
    bits : int
        Bit width, 2 to 32.

    Returns
    -------
    numpy.ndarray or torch.Tensor, shape of ``x``
        Codes of dtype ``int8`` (bits <= 8), ``int16`` (<= 16) or ``int32``.

    Examples
    --------
    >>> import numpy as np
    >>> quantize_symmetric(np.array([0.26, -1.0, 9.0]), 0.1, bits=4).tolist()
    [3, -7, 7]
    """
    x = as_float_array(x, "x")
    bits = check_int(bits, "bits", minimum=2, maximum=32)
    check_finite(x, "x")
    scale = _as_param(scale, x, "scale", positive=True)
    qmax = 2 ** (bits - 1) - 1
    xp = namespace(x)
    xd = x.detach() if is_torch(x) else x
    with np.errstate(over="ignore"):  # x / scale may overflow to +-inf: it clips to +-qmax
        t = xp.round(xd / scale)
    return _to_codes(t, -qmax, qmax, _signed_code_dtype(bits, backend_name(x)))


def dequantize(codes: Any, scale: Any, zero_point: Any = 0, dtype: Any = None):
    """Real values ``(codes - zero_point) * scale``.

    Parameters
    ----------
    codes : array_like or torch.Tensor
        Integer codes (integer dtype; floating codes raise TypeError, as they are usually a mistake such as
        passing the fake-quantized values).
    scale : float, array_like or torch.Tensor
        Positive scale broadcasting against ``codes``.
    zero_point : int, array_like or torch.Tensor
        Integer-valued zero point (0 for symmetric quantizers).
    dtype : numpy / torch floating dtype, optional
        Output dtype; default: the dtype of a floating ``scale`` array, else float64 (numpy) or torch's
        default dtype. Integer dtypes raise TypeError.

    Returns
    -------
    numpy.ndarray or torch.Tensor, shape of ``codes``

    Examples
    --------
    >>> import numpy as np
    >>> dequantize(np.array([3, -7], dtype=np.int8), 0.5).tolist()
    [1.5, -3.5]
    >>> dequantize(np.array([0, 255], dtype=np.uint8), 0.25, zero_point=128).tolist()
    [-32.0, 31.75]
    """
    if is_torch(codes):
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise TypeError(f"codes must be an integer tensor, got dtype {codes.dtype}")
        if dtype is None:
            dtype = (
                scale.dtype if is_torch(scale) and scale.is_floating_point() else torch.get_default_dtype()
            )
        c = codes.to(check_float_dtype(dtype, "dtype", backend="torch"))
    else:
        if is_torch(scale) or is_torch(zero_point):
            raise TypeError("scale and zero_point must be numpy arrays or numbers for numpy codes")
        if isinstance(codes, (str, bytes)):
            raise TypeError(f"codes must be an integer array, got {type(codes).__name__}")
        c = np.asarray(codes)
        if c.dtype.kind not in "iu":
            raise TypeError(f"codes must be an integer array, got dtype {c.dtype}")
        if dtype is None:
            s = np.asarray(scale)
            dtype = s.dtype if s.dtype.kind == "f" else np.float64
        c = c.astype(check_float_dtype(dtype, "dtype", backend="numpy"))
    _check_zero_point(zero_point, None)
    scale = _as_param(scale, c, "scale", positive=True)
    zero_point = _as_param(zero_point, c, "zero_point", positive=False)
    return (c - zero_point) * scale


def fake_quantize_symmetric(
    x: Any,
    bits: int,
    scale: Any = None,
    axis: int | None = None,
    method: str = "maxabs",
    percentile: float = 99.99,
):
    """Symmetric fake quantization ``quantize_symmetric(x) * scale`` with a straight-through gradient.

    Parameters
    ----------
    x : array_like or torch.Tensor
        Finite data.
    bits : int
        Bit width, 2 to 32.
    scale : float, array_like or torch.Tensor, optional
        Positive scale; computed by :func:`symmetric_scale` (``axis``, ``method``, ``percentile``) if omitted.
    axis, method, percentile
        Passed to :func:`symmetric_scale` when ``scale`` is None.

    Returns
    -------
    numpy.ndarray or torch.Tensor, shape and dtype of ``x``
        Quantized values. For torch, ``dL/dx = dL/dout * 1[|round(x / scale)| <= 2^(bits-1) - 1]`` and the
        scale receives no gradient.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([0.26, -1.0, 9.0], requires_grad=True)
    >>> y = fake_quantize_symmetric(x, bits=4, scale=0.1)
    >>> [round(v, 6) for v in y.tolist()]
    [0.3, -0.7, 0.7]
    >>> y.sum().backward(); x.grad.tolist()
    [1.0, 0.0, 0.0]
    """
    x = as_float_array(x, "x")
    bits = check_int(bits, "bits", minimum=2, maximum=32)
    if scale is None:
        scale = symmetric_scale(x, bits, axis=axis, method=method, percentile=percentile)
    else:
        check_finite(x, "x")
    scale = _as_param(scale, x, "scale", positive=True)
    qmax = 2 ** (bits - 1) - 1
    return _fake_quant(x, scale, 0, -qmax, qmax)


# ----------------------------------------------------------------------------------------------------------
# asymmetric min-max quantization
# ----------------------------------------------------------------------------------------------------------
def _minmax_from_range(lo, hi, bits: int):
    """scale, integer zero point from a range [lo, hi] (widened to contain 0)."""
    xp = namespace(lo)
    qmax = 2**bits - 1
    lo = xp.minimum(lo, xp.zeros_like(lo))
    hi = xp.maximum(hi, xp.zeros_like(hi))
    # (hi - lo) / qmax would overflow for ranges near +-max float: divide first (qmax >= 3, so the sum of
    # the two halves is finite). A range of a few subnormals would give 0: keep the scale a normal number.
    with np.errstate(over="ignore"):
        width = hi - lo
    scale = xp.where(xp.isfinite(width), width / qmax, hi / qmax - lo / qmax)
    scale = xp.where(hi > lo, scale, xp.ones_like(scale) / qmax)
    scale = xp.maximum(scale, xp.asarray(_tiny(scale), like=scale))
    zp = _to_codes(xp.round(-lo / scale), 0, qmax, torch.int64 if is_torch(lo) else np.int64)
    return scale, zp


def minmax_params(x: Any, bits: int = 8, axis: int | None = None):
    """Scale and zero point of the asymmetric min-max quantizer (unsigned codes ``0 .. 2^bits - 1``).

    The range ``[min(x), max(x)]`` is widened to contain 0, ``scale = (max - min) / (2^bits - 1)`` (1 for a
    constant-zero range) and ``zero_point = round(-min / scale)`` is an integer, so that 0 is exactly
    representable: it maps to the code ``zero_point`` and back to 0. When ``max - min`` overflows (ranges
    near the largest float) the scale is evaluated as ``max / (2^bits - 1) - min / (2^bits - 1)``, so it is
    finite for any finite data; it is at least the smallest normal number of the dtype.

    Parameters
    ----------
    x : array_like or torch.Tensor, non-empty
        Data to calibrate on (finite).
    bits : int
        Bit width, 2 to 32.
    axis : int or None
        Channel axis for per-channel parameters (other axes are reduced).

    Returns
    -------
    scale : numpy.ndarray or torch.Tensor
        Positive, dtype of ``x``; shape ``()`` or the keepdims shape of the channel axis.
    zero_point : numpy.ndarray or torch.Tensor
        int64, same shape as ``scale``, in ``[0, 2^bits - 1]``.

    Examples
    --------
    >>> import numpy as np
    >>> s, z = minmax_params(np.array([-1.0, 0.2, 3.0]), bits=8)
    >>> round(float(s), 6), int(z)
    (0.015686, 64)
    """
    x = as_float_array(x, "x")
    bits = check_int(bits, "bits", minimum=2, maximum=32)
    if x.ndim == 0 or math.prod(x.shape) == 0:
        raise ValueError(f"x must be a non-empty array, got shape {tuple(x.shape)}")
    axis = _normalize_axis(axis, x.ndim)
    check_finite(x, "x")
    xd = x.detach() if is_torch(x) else x
    xp = namespace(xd)
    if axis is None:
        lo, hi = xp.min(xd), xp.max(xd)
    else:
        red = tuple(i for i in range(x.ndim) if i != axis)
        if is_torch(xd):
            lo, hi = torch.amin(xd, dim=red, keepdim=True), torch.amax(xd, dim=red, keepdim=True)
        else:
            lo, hi = xd.min(axis=red, keepdims=True), xd.max(axis=red, keepdims=True)
    return _minmax_from_range(lo, hi, bits)


def quantize_minmax(x: Any, scale: Any, zero_point: Any, bits: int = 8):
    """Unsigned codes ``clip(round(x / scale) + zero_point, 0, 2^bits - 1)``.

    Parameters
    ----------
    x : array_like or torch.Tensor
        Finite data.
    scale, zero_point
        From :func:`minmax_params` (or given), broadcasting against ``x``; ``scale`` positive,
        ``zero_point`` integer-valued in ``[0, 2^bits - 1]`` (else ValueError).
    bits : int
        Bit width, 2 to 32.

    Returns
    -------
    numpy.ndarray or torch.Tensor, shape of ``x``
        Codes with dtype ``code_dtype(2**bits)`` (numpy: uint8/uint16/uint32; torch: uint8/int16/int32/int64).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([-1.0, 0.0, 3.0])
    >>> s, z = minmax_params(x, bits=8)
    >>> quantize_minmax(x, s, z).tolist()
    [0, 64, 255]
    """
    x = as_float_array(x, "x")
    bits = check_int(bits, "bits", minimum=2, maximum=32)
    check_finite(x, "x")
    scale = _as_param(scale, x, "scale", positive=True)
    _check_zero_point(zero_point, bits)
    zero_point = _as_param(zero_point, x, "zero_point", positive=False)
    xp = namespace(x)
    xd = x.detach() if is_torch(x) else x
    with np.errstate(over="ignore"):  # x / scale may overflow to +-inf: it clips to 0 or 2^bits - 1
        t = xp.round(xd / scale) + zero_point
    return _to_codes(t, 0, 2**bits - 1, code_dtype(2**bits, backend_name(x)))


def fake_quantize_minmax(
    x: Any, bits: int = 8, scale: Any = None, zero_point: Any = None, axis: int | None = None
):
    """Asymmetric min-max fake quantization with a straight-through gradient.

    Parameters
    ----------
    x : array_like or torch.Tensor
        Finite data.
    bits : int
        Bit width, 2 to 32.
    scale, zero_point : optional
        Given together, or both computed from ``x`` by :func:`minmax_params` (per tensor or per ``axis``);
        ``zero_point`` must be integer-valued in ``[0, 2^bits - 1]``.
    axis : int or None
        Channel axis when the parameters are computed here.

    Returns
    -------
    numpy.ndarray or torch.Tensor, shape and dtype of ``x``
        ``(quantize_minmax(x) - zero_point) * scale``; for torch the gradient is the incoming one times the
        clipping mask.

    Examples
    --------
    >>> import numpy as np
    >>> y = fake_quantize_minmax(np.array([-1.0, 0.0, 0.5, 3.0]), bits=8)
    >>> [round(v, 4) for v in y.tolist()]
    [-1.0039, 0.0, 0.502, 2.9961]
    """
    x = as_float_array(x, "x")
    bits = check_int(bits, "bits", minimum=2, maximum=32)
    if (scale is None) != (zero_point is None):
        raise ValueError("scale and zero_point must be given together (or both omitted)")
    if scale is None:
        scale, zero_point = minmax_params(x, bits, axis=axis)
    else:
        check_finite(x, "x")
        _check_zero_point(zero_point, bits)
    scale = _as_param(scale, x, "scale", positive=True)
    zero_point = _as_param(zero_point, x, "zero_point", positive=False)
    return _fake_quant(x, scale, zero_point, 0, 2**bits - 1)


# ----------------------------------------------------------------------------------------------------------
# learned step size quantization (LSQ)
# ----------------------------------------------------------------------------------------------------------
def _lsq_ste(x, step, qn: int, qp: int, grad_scale: float):
    """LSQ (Esser et al. 2020): ``x_hat = round(clip(x / s, -Qn, Qp)) * s`` with the LSQ gradients
    ``g 1[-Qn < x/s < Qp]`` for ``x`` and ``grad_scale * sum g (round(x/s) - x/s | -Qn | Qp)`` for ``s``
    (straight-through, :func:`gradient_carrier`; the step's gradient sums over broadcast axes)."""
    sd = step.detach()
    t = x.detach() / sd
    q = torch.round(torch.clamp(t, -qn, qp))
    y = q * sd
    if not torch.is_grad_enabled():
        return y
    below, above = t <= -qn, t >= qp
    inside = (~(below | above)).to(x.dtype)
    dstep = torch.where(below, torch.full_like(t, -qn), torch.where(above, torch.full_like(t, qp), q - t))
    return y + inside * gradient_carrier(x) + (grad_scale * dstep) * gradient_carrier(step)


def _lsq_bounds(bits: int, signed: bool) -> tuple[int, int]:
    return (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def fake_quantize_lsq(x: Any, step: Any, bits: int, signed: bool = True, grad_scale: float | None = None):
    """Learned-step-size fake quantization (LSQ, Esser et al. 2020).

    Forward: ``round(clip(x / s, -Qn, Qp)) * s`` with ``Qn = 2^(b-1), Qp = 2^(b-1) - 1`` (signed) or
    ``Qn = 0, Qp = 2^b - 1`` (unsigned). Backward: ``dL/dx = g * 1[-Qn < x/s < Qp]`` and
    ``dL/ds = grad_scale * sum g * (round(x/s) - x/s  |  -Qn if x/s <= -Qn  |  Qp if x/s >= Qp)``.

    Parameters
    ----------
    x : torch.Tensor
        Finite data.
    step : torch.Tensor
        Positive step size, scalar or broadcasting against ``x`` (per channel).
    bits : int
        Bit width, 2 to 32.
    signed : bool
        Signed or unsigned levels.
    grad_scale : float, optional
        Gradient scale ``g`` of the step, positive and finite (a negative one would make gradient descent
        move the step the wrong way); default ``1 / sqrt(N * Qp)`` with ``N = x.numel() / step.numel()``.

    Returns
    -------
    torch.Tensor, shape and dtype of ``x``

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([0.26, -1.0, 9.0])
    >>> s = torch.tensor(0.1, requires_grad=True)
    >>> y = fake_quantize_lsq(x, s, bits=4, grad_scale=1.0)
    >>> [round(v, 6) for v in y.tolist()]
    [0.3, -0.8, 0.7]
    >>> y.sum().backward(); round(float(s.grad), 6)  # (3 - 2.6) + (-8) + 7
    -0.6
    """
    x = as_float_array(x, "x")
    if not is_torch(x) or not is_torch(step):
        raise TypeError("fake_quantize_lsq needs torch tensors for x and step (the step is learned)")
    bits = check_int(bits, "bits", minimum=2, maximum=32)
    signed = check_bool(signed, "signed")
    if grad_scale is not None:
        grad_scale = check_positive(grad_scale, "grad_scale")
    check_finite(x, "x")
    if not step.is_floating_point():
        raise TypeError(f"step must be a floating tensor, got dtype {step.dtype}")
    if step.device != x.device:
        raise ValueError(f"step is on {step.device} but x is on {x.device}")
    if not is_traced(step) and not bool(torch.all(torch.isfinite(step) & (step > 0))):
        raise ValueError("step must be positive and finite")
    try:
        torch.broadcast_shapes(tuple(step.shape), tuple(x.shape))
    except RuntimeError as exc:
        raise ValueError(
            f"step of shape {tuple(step.shape)} does not broadcast to x {tuple(x.shape)}"
        ) from exc
    qn, qp = _lsq_bounds(bits, bool(signed))
    if grad_scale is None:
        n = max(1, x.numel() // max(1, step.numel()))
        grad_scale = 1.0 / math.sqrt(n * qp)
    return _lsq_ste(x, step.to(x.dtype), qn, qp, float(grad_scale))


def learned_step(step: torch.Tensor) -> torch.Tensor:
    """The step size a learned (LSQ) step parameter stands for: ``max(|step|, tiny)``.

    LSQ learns the step by gradient descent, and an optimiser step can carry a small step across zero (Adam
    moves every parameter by up to its learning rate per update, so a step of 1e-5 under a learning rate of
    1e-4 turns negative within one update). Quantizing with the magnitude keeps the quantizer defined
    everywhere: for a positive step it is the step itself (same value, same gradient), for a negative one
    its mirror image, and an exact zero becomes the smallest normal float (every input then rounds to the
    end levels, times a step of ~1e-38: zero to float precision, never a NaN).

    Parameters
    ----------
    step : torch.Tensor
        The learned parameter (any shape; finite).

    Returns
    -------
    torch.Tensor, same shape and dtype, positive

    Raises
    ------
    TypeError
        When ``step`` is not a floating torch tensor.
    ValueError
        When it holds NaN or infinity.

    Examples
    --------
    >>> import torch
    >>> learned_step(torch.tensor([0.5, -0.25])).tolist()
    [0.5, 0.25]
    """
    if not is_torch(step) or not step.is_floating_point():
        raise TypeError(f"step must be a floating torch tensor, got {type(step).__name__}")
    step = as_float_array(step, "step")  # refuses a meta tensor
    check_finite(step, "step")  # no check on a traced tensor (it has no values)
    return step.abs().clamp_min(torch.finfo(step.dtype).tiny)


# ----------------------------------------------------------------------------------------------------------
# module forms
# ----------------------------------------------------------------------------------------------------------
class _ObserverQuantizer(nn.Module):
    """Shared calibrate/freeze switch and EMA range buffers (resized on first observation and on load)."""

    _range_buffers: tuple[str, ...] = ()

    def __init__(self, bits: int, axis: int | None, momentum: float):
        super().__init__()
        self.bits = check_int(bits, "bits", minimum=2, maximum=32)
        if axis is not None and (isinstance(axis, bool) or not isinstance(axis, numbers.Integral)):
            raise TypeError(f"axis must be an integer or None, got {type(axis).__name__}")
        self.axis = None if axis is None else int(axis)
        self.momentum = check_real(momentum, "momentum", minimum=0.0, maximum=1.0, exclusive_minimum=True)
        self.calibrating = True
        for name in self._range_buffers:
            self.register_buffer(name, torch.zeros(()))
        self.register_buffer("initialized", torch.tensor(False))

    def calibrate(self, mode: bool = True):
        """Switch observation of ranges on (``True``) or off; returns ``self``."""
        self.calibrating = bool(mode)
        return self

    def freeze(self):
        """Stop updating the ranges (same as ``calibrate(False)``); returns ``self``."""
        return self.calibrate(False)

    def _ema(self, name: str, value: torch.Tensor) -> None:
        old = getattr(self, name)
        value = value.detach().to(torch.float64)
        if not bool(self.initialized) or old.shape != value.shape:
            setattr(self, name, value.clone())
        else:
            old.mul_(1 - self.momentum).add_(value, alpha=self.momentum)

    def _channel_shape(self, x: torch.Tensor, stat: torch.Tensor):
        """Reshape a per-channel statistic (C,) to broadcast against x."""
        if self.axis is None:
            return stat.to(x.dtype)
        axis = _normalize_axis(self.axis, x.ndim)
        if x.shape[axis] != stat.numel():
            raise ValueError(
                f"x has {x.shape[axis]} channels along axis {self.axis}, calibrated on {stat.numel()}"
            )
        return stat.to(x.dtype).reshape([-1 if i == axis else 1 for i in range(x.ndim)])

    def _check_input(self, x) -> torch.Tensor:
        if not is_torch(x):
            raise TypeError(
                f"x must be a torch tensor ({type(self).__name__} is a module), got {type(x).__name__}"
            )
        x = as_float_array(x, "x")
        if x.ndim == 0 or x.numel() == 0:
            raise ValueError(f"x must be a non-empty tensor, got shape {tuple(x.shape)}")
        if self.axis is not None:
            _normalize_axis(self.axis, x.ndim)
        return x

    def clip_range(self, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lo, hi)``: the smallest and the largest level of the grid, in ``dtype`` (per-channel: (C,))."""
        raise NotImplementedError

    def grid_step(self, dtype=torch.float64) -> torch.Tensor:
        """Spacing of the grid's levels, in ``dtype`` (per-channel: (C,))."""
        raise NotImplementedError

    def saturate(self, x: torch.Tensor, width: float = 0.0) -> torch.Tensor:
        """The quantizer without its rounding: :func:`soft_clamp` of ``x`` to :meth:`clip_range`, its
        corners rounded over ``width`` grid steps (no observation).

        ``|self(x) - saturate(x, width)| <= (1/2 + width ln 2) step`` elementwise, and with ``width = 0``
        (the plain clamp) ``self(saturate(x)) == self(x)``. The autograd gradient is the exact derivative
        (``width = 0``: 1 inside the range, 0 outside; ``width > 0``: smooth, in ``(0, 1)``).
        """
        x = self._check_input(x)
        width = check_real(width, "width", minimum=0.0)
        lo, hi = self.clip_range(x.dtype)
        w = width * self._channel_shape(x, self.grid_step(x.dtype)) if width else 0.0
        return soft_clamp(x, self._channel_shape(x, lo), self._channel_shape(x, hi), w)

    def _require_calibrated(self) -> None:
        if not is_traced(self.initialized) and not bool(self.initialized):
            raise RuntimeError(f"{type(self).__name__} has no range yet: call it in calibration mode first")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self._range_buffers:
            key = prefix + name
            if key in state_dict:
                getattr(self, name).resize_(state_dict[key].shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class SymmetricQuantizer(_ObserverQuantizer):
    """Symmetric signed fake quantizer with a max-abs / percentile observer (EMA of the range).

    While calibrating (the initial mode), each call observes ``range`` (as :func:`symmetric_scale`: max-abs or
    percentile, per tensor or per channel) and updates ``running_range <- (1 - momentum) running_range +
    momentum range`` (the first observation initialises it); :meth:`freeze` stops the updates. The forward
    pass is :func:`fake_quantize_symmetric` with ``scale = running_range / (2^(bits-1) - 1)``.

    Parameters
    ----------
    bits : int
        Bit width, 2 to 32.
    axis : int or None
        Channel axis for per-channel scales.
    method : {"maxabs", "percentile"}
    percentile : float
    momentum : float
        EMA momentum in ``(0, 1]``.

    Examples
    --------
    >>> import torch
    >>> q = SymmetricQuantizer(bits=8)
    >>> y = q(torch.tensor([-1.27, 0.5, 0.011]))
    >>> _ = q.freeze()
    >>> [round(v, 4) for v in q(torch.tensor([0.5, 3.0])).tolist()]
    [0.5, 1.27]
    """

    _range_buffers = ("running_range",)

    def __init__(
        self,
        bits: int = 8,
        axis: int | None = None,
        method: str = "maxabs",
        percentile: float = 99.99,
        momentum: float = 0.1,
    ):
        super().__init__(bits, axis, momentum)
        self.method = check_choice(method, "method", _SCALE_METHODS)
        self.percentile = check_real(percentile, "percentile")
        if not 0 < self.percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")

    @property
    def scale(self) -> torch.Tensor:
        """Current scale (float64; per-channel: shape (C,))."""
        self._require_calibrated()
        return self.running_range / (2 ** (self.bits - 1) - 1)

    def clip_range(self, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """``(-q s, q s)``, ``q = 2^(bits-1) - 1``, for the scale ``s`` in ``dtype`` (as in ``forward``)."""
        dtype = check_float_dtype(dtype, "dtype", backend="torch")
        hi = (2 ** (self.bits - 1) - 1) * self.scale.to(dtype)
        return -hi, hi

    def grid_step(self, dtype=torch.float64) -> torch.Tensor:
        """The scale ``s`` in ``dtype``."""
        return self.scale.to(check_float_dtype(dtype, "dtype", backend="torch"))

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Update the running range from ``x``."""
        x = self._check_input(x)
        s = symmetric_scale(x, self.bits, axis=self.axis, method=self.method, percentile=self.percentile)
        self._ema(
            "running_range", (s * (2 ** (self.bits - 1) - 1)).reshape(-1 if self.axis is not None else ())
        )
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._check_input(x)
        if self.calibrating:
            self.observe(x)
        return fake_quantize_symmetric(x, self.bits, scale=self._channel_shape(x, self.scale))

    def extra_repr(self) -> str:
        return (
            f"bits={self.bits}, axis={self.axis}, method={self.method!r}, momentum={self.momentum}, "
            f"calibrating={self.calibrating}"
        )


class MinMaxQuantizer(_ObserverQuantizer):
    """Asymmetric min-max fake quantizer (unsigned codes, integer zero point) with an EMA observer.

    While calibrating, each call updates ``running_min`` / ``running_max`` by an EMA of the observed min / max
    (per tensor or per channel); the forward pass is :func:`fake_quantize_minmax` with the parameters of
    :func:`minmax_params` for the running range. ``MinMaxQuantizer(8)`` is the paper's naive per-tensor INT8.

    Parameters
    ----------
    bits : int
        Bit width, 2 to 32.
    axis : int or None
        Channel axis for per-channel parameters.
    momentum : float
        EMA momentum in ``(0, 1]``.

    Examples
    --------
    >>> import torch
    >>> q = MinMaxQuantizer(bits=8)
    >>> y = q(torch.tensor([-1.0, 0.0, 3.0]))
    >>> _ = q.freeze()
    >>> [round(v, 4) for v in q(torch.tensor([0.0, 5.0])).tolist()]
    [0.0, 2.9961]
    """

    _range_buffers = ("running_min", "running_max")

    def __init__(self, bits: int = 8, axis: int | None = None, momentum: float = 0.1):
        super().__init__(bits, axis, momentum)

    def params(self, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` of the running range (per-channel: shape (C,))."""
        self._require_calibrated()
        return _minmax_from_range(self.running_min.to(dtype), self.running_max.to(dtype), self.bits)

    def clip_range(self, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """``(-z s, (2^bits - 1 - z) s)`` for the scale ``s`` and zero point ``z`` of :meth:`params`."""
        dtype = check_float_dtype(dtype, "dtype", backend="torch")
        scale, zp = self.params()
        scale, zp = scale.to(dtype), zp.to(dtype)
        return -zp * scale, (2**self.bits - 1 - zp) * scale

    def grid_step(self, dtype=torch.float64) -> torch.Tensor:
        """The scale of :meth:`params` in ``dtype``."""
        return self.params()[0].to(check_float_dtype(dtype, "dtype", backend="torch"))

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Update the running min and max from ``x``."""
        x = self._check_input(x).detach()
        if self.axis is None:
            lo, hi = torch.amin(x), torch.amax(x)
        else:
            flat = x.movedim(_normalize_axis(self.axis, x.ndim), 0).reshape(x.shape[self.axis], -1)
            lo, hi = torch.amin(flat, dim=1), torch.amax(flat, dim=1)
        check_finite(x, "x")
        self._ema("running_min", lo)
        self._ema("running_max", hi)
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._check_input(x)
        if self.calibrating:
            self.observe(x)
        scale, zp = self.params()  # float64, then cast: the zero point does not depend on x's dtype
        return fake_quantize_minmax(
            x, self.bits, scale=self._channel_shape(x, scale), zero_point=self._channel_shape(x, zp)
        )

    def extra_repr(self) -> str:
        return f"bits={self.bits}, axis={self.axis}, momentum={self.momentum}, calibrating={self.calibrating}"


class LSQQuantizer(nn.Module):
    """Learned-step-size quantizer (LSQ, Esser et al. 2020) as a module with a learnable ``step``.

    The step is initialised on the first call to ``2 mean(|x|) / sqrt(Qp)`` (as in the paper) and learned
    afterwards with the LSQ gradient, scaled by ``g = 1 / sqrt(N Qp)`` where ``N = x.numel()`` (or the given
    ``grad_scale``). The forward pass quantizes with :func:`learned_step` of the parameter (its magnitude),
    so an update that carries it across zero leaves the quantizer defined. See :func:`fake_quantize_lsq`.

    Parameters
    ----------
    bits : int
        Bit width, 2 to 32.
    signed : bool
        Signed levels ``-2^(b-1) .. 2^(b-1) - 1`` or unsigned ``0 .. 2^b - 1``.
    grad_scale : float, optional
        Fixed gradient scale of the step.

    Examples
    --------
    >>> import torch
    >>> q = LSQQuantizer(bits=4)
    >>> y = q(torch.tensor([0.5, -1.0, 1.5]))
    >>> round(q.step.item(), 4)  # 2 * 1.0 / sqrt(7)
    0.7559
    """

    def __init__(self, bits: int = 8, signed: bool = True, grad_scale: float | None = None):
        super().__init__()
        self.bits = check_int(bits, "bits", minimum=2, maximum=32)
        self.signed = check_bool(signed, "signed")
        self.grad_scale = None if grad_scale is None else check_positive(grad_scale, "grad_scale")
        self.qn, self.qp = _lsq_bounds(self.bits, self.signed)
        self.step = nn.Parameter(torch.ones(()))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set ``step = 2 mean(|x|) / sqrt(Qp)`` (1 / sqrt(Qp) for all-zero ``x``)."""
        mean_abs = float(torch.mean(torch.abs(x.detach().to(torch.float64))))
        self.step.fill_(2.0 * (mean_abs if mean_abs > 0 else 0.5) / math.sqrt(self.qp))
        self.initialized.fill_(True)

    def clip_range(self, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """``(-Qn s, Qp s)`` for the current step ``s`` (:func:`learned_step`) in ``dtype``; no gradient."""
        if not is_traced(self.initialized) and not bool(self.initialized):
            raise RuntimeError("LSQQuantizer has no step yet: call it once first")
        step = learned_step(self.step.detach()).to(check_float_dtype(dtype, "dtype", backend="torch"))
        return -self.qn * step, self.qp * step

    def grid_step(self, dtype=torch.float64) -> torch.Tensor:
        """The current step (:func:`learned_step`) in ``dtype``; no gradient."""
        return learned_step(self.step.detach()).to(check_float_dtype(dtype, "dtype", backend="torch"))

    def saturate(self, x: torch.Tensor, width: float = 0.0) -> torch.Tensor:
        """The quantizer without its rounding: :func:`soft_clamp` to :meth:`clip_range` with corners rounded
        over ``width`` steps; ``|self(x) - saturate(x, width)| <= (1/2 + width ln 2) step``."""
        if not is_torch(x):
            raise TypeError(f"x must be a torch tensor (LSQQuantizer is a module), got {type(x).__name__}")
        x = as_float_array(x, "x")
        width = check_real(width, "width", minimum=0.0)
        lo, hi = self.clip_range(x.dtype)
        return soft_clamp(x, lo, hi, width * self.grid_step(x.dtype) if width else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_torch(x):
            raise TypeError(f"x must be a torch tensor (LSQQuantizer is a module), got {type(x).__name__}")
        x = as_float_array(x, "x")
        if x.numel() == 0:
            raise ValueError("x must be a non-empty tensor")
        check_finite(x, "x")  # before a first call sets the step from it
        if not is_traced(self.initialized) and not bool(self.initialized):
            self.initialize(x)
        step = learned_step(self.step)  # an optimiser update may have carried the parameter across zero
        if is_traced(x):  # the element count stays symbolic in a traced graph (math.sqrt would fix it)
            gs = self.grad_scale if self.grad_scale is not None else (x.numel() * self.qp) ** -0.5
            return _lsq_ste(x, step.to(x.dtype), self.qn, self.qp, gs)
        gs = self.grad_scale if self.grad_scale is not None else 1.0 / math.sqrt(x.numel() * self.qp)
        return fake_quantize_lsq(x, step, self.bits, signed=self.signed, grad_scale=gs)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, grad_scale={self.grad_scale}"
