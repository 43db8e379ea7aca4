"""Scalar quantizers, magnitude quantizers and magnitude-direction decoupled quantization (MDDQ).

Scalar quantizers (numpy and torch; the torch paths are differentiable through straight-through estimators):

* symmetric linear, signed ``b`` bits with levels ``-(2^(b-1) - 1) .. 2^(b-1) - 1`` (zero is a level), per
  tensor or per channel, scale from the max-abs or a percentile of ``|x|``: :func:`symmetric_scale`,
  :func:`quantize_symmetric`, :func:`dequantize`, :func:`fake_quantize_symmetric`;
* asymmetric min-max (the paper's "naive" per-tensor INT8), unsigned codes ``0 .. 2^b - 1`` with an integer
  zero point: :func:`minmax_params`, :func:`quantize_minmax`, :func:`fake_quantize_minmax`;
* learned step size (LSQ, Esser et al. 2020): :func:`fake_quantize_lsq`;
* module forms with observers for the models layer: :class:`SymmetricQuantizer`, :class:`MinMaxQuantizer`,
  :class:`LSQQuantizer`.

Magnitudes ``r >= 0`` are quantized by :class:`MagnitudeQuantizer` (uniform or logarithmic levels, level 0
exactly 0, range clipped to ``[0, r_max]``). :func:`mddq` and :class:`MDDQ` implement Def. 3.1 of the paper,
``Q(v) = Q_m(|v|) Q_d(v / |v|)``, with the nearest-codeword direction quantizer of a
:class:`spherequant.codebook.Codebook` and the backward pass of DESIGN.md: with ``g = dL/dQ(v)``,
``r = |v|``, ``u = v / r``, ``m = Q_m(r)``, ``c = Q_d(u)``,

    dL/dv = (m / r) P_u g + <c, g> 1[r <= r_max] u,        P_u = I - u u^T.

The first term is the geometric STE of the direction (orthogonal to ``v``, Prop. III.1), the second the
magnitude STE. Zero vectors quantize to 0 with gradient 0 (never NaN).

STE convention of the fake quantizers: the forward pass returns the quantized value, the backward pass the
incoming gradient times the clipping mask ``1[qmin <= round(x / s) + z <= qmax]`` (as
``torch.fake_quantize_per_tensor_affine``); the scale and zero point receive no gradient (except in LSQ).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
from torch import nn

from ._backend import as_float_array, check_vectors, is_torch, namespace, safe_norm
from ._validation import (
    check_bool,
    check_choice,
    check_finite,
    check_int,
    check_positive,
    check_real,
    check_seed,
)

__all__ = [
    "MDDQ",
    "HypersphereCodebook",
    "LSQQuantizer",
    "MagnitudeQuantizer",
    "MinMaxQuantizer",
    "SymmetricQuantizer",
    "bits_per_vector",
    "code_dtype",
    "compare_vector_quantizers",
    "dequantize",
    "fake_quantize_lsq",
    "fake_quantize_minmax",
    "fake_quantize_symmetric",
    "mddq",
    "minmax_params",
    "quantize_minmax",
    "quantize_symmetric",
    "symmetric_scale",
]

_SCALE_METHODS = ("maxabs", "percentile")
_MAGNITUDE_KINDS = ("uniform", "log")
_DIRECTION_STES = ("geometric", "plain", "none")


# ----------------------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------------------
def _check_float_dtype(dtype: Any, backend: str, name: str = "dtype"):
    """Validate an output dtype: a floating numpy dtype (numpy) or a floating torch dtype (torch).

    Integer, bool and complex dtypes are refused: an integer output would silently truncate the levels
    (e.g. every level below 1 would decode to 0).
    """
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


def _backend_name(x) -> str:
    return "torch" if is_torch(x) else "numpy"


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
    if not bool(xp.all(xp.isfinite(t))):
        raise ValueError(f"{name} contains NaN or infinite entries")
    if positive and not bool(xp.all(t > 0)):
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
class _FakeQuantSTE(torch.autograd.Function):
    """Forward (clip(round(x/s) + z, qmin, qmax) - z) s (saturated at +-max float); backward
    grad * 1[qmin <= round(x/s) + z <= qmax]."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        t = torch.round(x / scale) + zero_point
        mask = (t >= qmin) & (t <= qmax)
        ctx.save_for_backward(mask)
        top = torch.finfo(x.dtype).max  # levels beyond +-max (ranges near the float max) saturate
        return torch.clamp((torch.clamp(t, qmin, qmax) - zero_point) * scale, -top, top)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask.to(grad.dtype), None, None, None, None


def _fake_quant(x, scale, zero_point, qmin: int, qmax: int):
    if is_torch(x):
        return _FakeQuantSTE.apply(x, scale.detach(), zero_point, qmin, qmax)
    with np.errstate(over="ignore"):  # x / scale may overflow to +-inf: it clips to qmin / qmax
        t = np.clip(np.round(x / scale) + zero_point, qmin, qmax)
        y = ((t - zero_point) * scale).astype(x.dtype, copy=False)
    top = np.finfo(x.dtype).max  # levels beyond +-max (ranges near the float max) saturate
    return np.clip(y, -top, top).astype(x.dtype, copy=False)


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
    return _to_codes(t, -qmax, qmax, _signed_code_dtype(bits, _backend_name(x)))


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
        c = codes.to(_check_float_dtype(dtype, "torch"))
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
        c = c.astype(_check_float_dtype(dtype, "numpy"))
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
    return _to_codes(t, 0, 2**bits - 1, code_dtype(2**bits, _backend_name(x)))


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
class _LSQFunction(torch.autograd.Function):
    """LSQ (Esser et al. 2020): x_hat = round(clip(x / s, -Qn, Qp)) * s with the LSQ gradients."""

    @staticmethod
    def forward(ctx, x, step, qn, qp, grad_scale):
        t = x / step
        q = torch.round(torch.clamp(t, -qn, qp))
        ctx.save_for_backward(t, q)
        ctx.qn, ctx.qp, ctx.grad_scale, ctx.step_shape = qn, qp, grad_scale, step.shape
        return q * step

    @staticmethod
    def backward(ctx, grad):
        t, q = ctx.saved_tensors
        qn, qp = ctx.qn, ctx.qp
        below, above = t <= -qn, t >= qp
        inside = ~(below | above)
        grad_x = grad * inside.to(grad.dtype)
        dstep = torch.where(below, torch.full_like(t, -qn), torch.where(above, torch.full_like(t, qp), q - t))
        grad_step = (grad * dstep).sum_to_size(ctx.step_shape) * ctx.grad_scale
        return grad_x, grad_step, None, None, None


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
    if not bool(torch.all(torch.isfinite(step) & (step > 0))):
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
    return _LSQFunction.apply(x, step.to(x.dtype), qn, qp, float(grad_scale))


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

    def _require_calibrated(self) -> None:
        if not bool(self.initialized):
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
    ``grad_scale``). See :func:`fake_quantize_lsq`.

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_torch(x):
            raise TypeError(f"x must be a torch tensor (LSQQuantizer is a module), got {type(x).__name__}")
        x = as_float_array(x, "x")
        if x.numel() == 0:
            raise ValueError("x must be a non-empty tensor")
        if not bool(self.initialized):
            self.initialize(x)
        gs = self.grad_scale if self.grad_scale is not None else 1.0 / math.sqrt(x.numel() * self.qp)
        return fake_quantize_lsq(x, self.step, self.bits, signed=self.signed, grad_scale=gs)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, grad_scale={self.grad_scale}"


# ----------------------------------------------------------------------------------------------------------
# magnitude quantizers
# ----------------------------------------------------------------------------------------------------------
class _MagnitudeSTE(torch.autograd.Function):
    """Q_m(r) forward; grad * 1[r <= r_max] backward."""

    @staticmethod
    def forward(ctx, r, q, r_max):
        ctx.save_for_backward(r <= r_max)
        return q.clone()

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside.to(grad.dtype), None, None


class MagnitudeQuantizer:
    """Quantizer of magnitudes ``r >= 0`` with ``2^bits`` levels, level 0 exactly 0, clipped at ``r_max``.

    ``kind="uniform"``: levels ``k r_max / (2^bits - 1)``, ``k = 0 .. 2^bits - 1``; ``r`` is rounded to the
    nearest level. ``kind="log"``: level 0 is 0 and levels ``1 .. 2^bits - 1`` are geometric from ``r_min`` to
    ``r_max`` (constant ratio); ``r`` is rounded in the log domain (thresholds are geometric means of
    neighbours) above ``r_min`` and to the nearest of {0, r_min} below it (threshold ``r_min / 2``).
    Magnitudes above ``r_max`` clip to ``r_max``; those below half the first non-zero level map to 0.

    Parameters
    ----------
    bits : int
        Bit width, 2 to 16.
    r_max : float
        Largest level (positive).
    kind : {"uniform", "log"}
    r_min : float, optional
        Smallest non-zero level of the log kind, in ``(0, r_max)``; default ``1e-3 r_max``. Not used by the
        uniform kind (giving it raises ValueError).

    Attributes
    ----------
    levels : numpy.ndarray, shape (2^bits,)
        The levels (float64, increasing, ``levels[0] == 0``, ``levels[-1] == r_max``).
    thresholds : numpy.ndarray, shape (2^bits - 1,)
        Decision boundaries: code ``k`` is chosen for ``thresholds[k-1] <= r < thresholds[k]``.

    Examples
    --------
    >>> import numpy as np
    >>> mq = MagnitudeQuantizer(bits=2, r_max=3.0)
    >>> mq.levels.tolist(), mq.encode(np.array([0.4, 1.6, 7.0])).tolist()
    ([0.0, 1.0, 2.0, 3.0], [0, 2, 3])
    >>> MagnitudeQuantizer(bits=2, r_max=4.0, kind="log", r_min=1.0).levels.tolist()
    [0.0, 1.0, 2.0, 4.0]
    """

    def __init__(self, bits: int, r_max: float, kind: str = "uniform", r_min: float | None = None):
        self.bits = check_int(bits, "bits", minimum=2, maximum=16)
        self.r_max = check_positive(r_max, "r_max")
        self.kind = check_choice(kind, "kind", _MAGNITUDE_KINDS)
        n = 2**self.bits
        if self.kind == "uniform":
            if r_min is not None:
                raise ValueError("r_min is only used by kind='log'; leave it None for kind='uniform'")
            self.r_min = None
            self.levels = np.arange(n, dtype=np.float64) * (self.r_max / (n - 1))
            self.levels[-1] = self.r_max
            self.thresholds = 0.5 * (self.levels[:-1] + self.levels[1:])
        else:
            self.r_min = 1e-3 * self.r_max if r_min is None else check_positive(r_min, "r_min")
            if not self.r_min < self.r_max:
                raise ValueError(
                    f"r_min must be smaller than r_max, got r_min={self.r_min}, r_max={self.r_max}"
                )
            expo = np.arange(n - 1, dtype=np.float64) / (n - 2)
            nz = self.r_min * (self.r_max / self.r_min) ** expo
            nz[0], nz[-1] = self.r_min, self.r_max
            self.levels = np.concatenate([[0.0], nz])
            self.thresholds = np.concatenate([[0.5 * self.r_min], np.sqrt(nz[:-1] * nz[1:])])
        self._cache: dict = {}

    @property
    def n_levels(self) -> int:
        """Number of levels, ``2^bits``."""
        return 2**self.bits

    def _tables(self, like):
        """(levels, thresholds) as tensors of like's dtype/device, cached."""
        key = (like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = (
                torch.as_tensor(self.levels, dtype=like.dtype, device=like.device),
                torch.as_tensor(self.thresholds, dtype=like.dtype, device=like.device),
            )
        return self._cache[key]

    def _check_r(self, r):
        r = as_float_array(r, "r")
        xp = namespace(r)
        if not bool(xp.all(xp.isfinite(r))):
            raise ValueError("r contains NaN or infinite entries")
        if not bool(xp.all(r >= 0)):
            raise ValueError("r must be non-negative (magnitudes)")
        return r

    def _encode_unchecked(self, r):
        if is_torch(r):
            _, thr = self._tables(r)
            codes = torch.bucketize(r.detach(), thr, right=True)
            return codes.to(code_dtype(self.n_levels, "torch"))
        codes = np.asarray(np.searchsorted(self.thresholds.astype(r.dtype), r, side="right"))
        return codes.astype(code_dtype(self.n_levels, "numpy"))

    def _decode_unchecked(self, codes, dtype):
        if is_torch(codes):
            like = torch.empty((), dtype=dtype, device=codes.device)
            levels, _ = self._tables(like)
            return levels[codes.long()]
        return self.levels.astype(dtype)[codes]

    def encode(self, r: Any):
        """Codes of the nearest levels.

        Parameters
        ----------
        r : array_like or torch.Tensor, any shape
            Non-negative finite magnitudes.

        Returns
        -------
        numpy.ndarray or torch.Tensor, shape of ``r``
            numpy ``uint8`` (bits <= 8) / ``uint16``; torch ``uint8`` / ``int16`` / ``int32``
            (see :func:`code_dtype`).
        """
        return self._encode_unchecked(self._check_r(r))

    def decode(self, codes: Any, dtype: Any = None):
        """Levels of the given codes.

        Parameters
        ----------
        codes : array_like or torch.Tensor of integers in ``[0, 2^bits)``
        dtype : floating dtype, optional
            Default float64 (numpy) or torch's default dtype; a numpy dtype for numpy codes, a torch dtype
            for torch codes. Integer dtypes raise TypeError (they would truncate the levels).

        Returns
        -------
        numpy.ndarray or torch.Tensor, shape of ``codes``
        """
        codes = _check_codes(codes, self.n_levels, "codes")
        if dtype is None:
            dtype = torch.get_default_dtype() if is_torch(codes) else np.float64
        return self._decode_unchecked(codes, _check_float_dtype(dtype, _backend_name(codes)))

    def quantize(self, r: Any):
        """``decode(encode(r))`` in the dtype of ``r`` (no gradient)."""
        r = self._check_r(r)
        return self._decode_unchecked(self._encode_unchecked(r), r.dtype)

    def forward(self, r: Any):
        """Fake quantization ``Q_m(r)``; for torch, ``dQ/dr`` is taken as ``1[r <= r_max]`` (STE)."""
        r = self._check_r(r)
        q = self._decode_unchecked(self._encode_unchecked(r), r.dtype)
        if is_torch(r):
            return _MagnitudeSTE.apply(r, q, self.r_max)
        return q

    __call__ = forward

    def __repr__(self) -> str:
        extra = f", r_min={self.r_min:g}" if self.kind == "log" else ""
        return f"MagnitudeQuantizer(bits={self.bits}, r_max={self.r_max:g}, kind={self.kind!r}{extra})"


def _check_codes(codes: Any, n: int, name: str):
    if is_torch(codes):
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, got dtype {codes.dtype}")
        c = codes.long()
    else:
        codes = np.asarray(codes)
        if codes.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer array, got dtype {codes.dtype}")
        c = codes.astype(np.int64)
    xp = namespace(c)
    if c.ndim > 0 and math.prod(c.shape) > 0 and not (bool(xp.all(c >= 0)) and bool(xp.all(c < n))):
        raise ValueError(f"{name} must lie in [0, {n - 1}]")
    if c.ndim == 0 and not 0 <= int(c) < n:
        raise ValueError(f"{name} must lie in [0, {n - 1}]")
    return c


# ----------------------------------------------------------------------------------------------------------
# MDDQ
# ----------------------------------------------------------------------------------------------------------
def _polar(v):
    """(r, u, nonzero): |v| and v/|v| without overflow/underflow; u = 0 and r = 0 for v = 0."""
    xp = namespace(v)
    mx = xp.max(xp.abs(v), axis=-1, keepdims=True)
    nonzero = mx > 0
    one = xp.ones_like(mx)
    vs = v / xp.where(nonzero, mx, one)
    rs = xp.norm(vs, axis=-1, keepdims=True)
    u = xp.where(nonzero, vs / xp.where(nonzero, rs, one), xp.zeros_like(vs))
    return (mx * rs)[..., 0], u, nonzero[..., 0]


class _MDDQFunction(torch.autograd.Function):
    """Forward m c; backward (m/r) P_u g + <c, g> 1[r <= r_max] u (geometric), g (plain), 2nd term (none)."""

    @staticmethod
    def forward(ctx, v, u, r, m, c, inside, mode):
        ctx.save_for_backward(u, r, m, c, inside)
        ctx.mode = mode
        return m.unsqueeze(-1) * c

    @staticmethod
    def backward(ctx, grad):
        u, r, m, c, inside = ctx.saved_tensors
        if ctx.mode == "plain":
            return grad, None, None, None, None, None, None
        # magnitude STE: <c, g> 1[r in range] u   (u = 0 for zero vectors)
        grad_v = (torch.sum(c * grad, dim=-1) * inside.to(grad.dtype)).unsqueeze(-1) * u
        if ctx.mode == "geometric":
            # geometric STE of the direction: (m / r) P_u g, defined as 0 for r = 0 (then m = 0 too)
            ratio = torch.where(r > 0, m / torch.where(r > 0, r, torch.ones_like(r)), torch.zeros_like(r))
            tangent = grad - u * torch.sum(u * grad, dim=-1, keepdim=True)
            grad_v = grad_v + ratio.unsqueeze(-1) * tangent
        return grad_v, None, None, None, None, None, None


def _codebook_points(codebook) -> np.ndarray:
    pts = getattr(codebook, "points", None)
    if pts is None or not callable(getattr(codebook, "nearest", None)):
        raise TypeError(
            "codebook must be a spherequant.codebook.Codebook or a HypersphereCodebook (with .points and "
            f".nearest), got {type(codebook).__name__}"
        )
    pts = np.array(pts.detach().cpu() if is_torch(pts) else pts, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] < 2 or pts.shape[0] < 1:
        raise ValueError(f"codebook.points must have shape (K, d) with d >= 2, got {pts.shape}")
    return pts


def _check_features(v: Any, dim: int, name: str = "v"):
    """Validate finite (..., dim) features (dim = 3: :func:`check_vectors`)."""
    if dim == 3:
        return check_vectors(v, name)
    v = as_float_array(v, name)
    if v.ndim == 0 or v.shape[-1] != dim:
        raise ValueError(f"{name} must have shape (..., {dim}) to match the codebook, got {tuple(v.shape)}")
    check_finite(v, name)
    return v


class HypersphereCodebook:
    """A finite set of unit vectors on ``S^(d-1)``, ``d >= 2``, with exact brute-force nearest search.

    Direction codebook for MDDQ of degree-``l`` features (``d = 2 l + 1`` components; e.g. ``d = 5`` for
    ``l = 2``), where :class:`spherequant.codebook.Codebook` (``S^2`` only) does not apply. The nearest
    codeword is ``argmax_k <x, c_k>`` (lowest index among exact ties), evaluated in the query's dtype; the
    torch path stays on the query's device.

    Parameters
    ----------
    points : array_like or torch.Tensor, shape (K, d)
        Codeword directions (finite, non-zero rows; rows are normalised without overflow or underflow, so
        rows of any finite scale work). Two rows with the same direction raise ValueError (a duplicate
        codeword can never be chosen and wastes code space). Stored read-only as float64.

    Examples
    --------
    >>> import numpy as np
    >>> cb = HypersphereCodebook.random(64, dim=5, seed=0)
    >>> cb.points.shape, cb.dim
    ((64, 5), 5)
    >>> x = cb.points[[3, 7]] * 2.0
    >>> cb.nearest(x).tolist()
    [3, 7]
    """

    def __init__(self, points: Any):
        p = as_float_array(points, "points")  # refuses complex, bool and meta tensors before any cast
        if is_torch(p):
            p = p.detach().cpu().to(torch.float64).numpy()
        if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 2:
            raise ValueError(f"points must have shape (K, d) with K >= 1 and d >= 2, got {tuple(p.shape)}")
        check_finite(p, "points")
        p = np.array(p, dtype=np.float64)
        norms = safe_norm(p, axis=1)
        if not np.all(norms > 0):
            raise ValueError(
                f"points has a zero row (row {int(np.argmin(norms))}); a codeword needs a direction"
            )
        big = ~np.isfinite(norms)  # norm overflows float64: scale those rows down first (exact, power of 2)
        if big.any():
            p[big] *= 2.0**-64
            norms[big] = safe_norm(p[big], axis=1)
        p /= norms[:, None]
        _, first, counts = np.unique(p, axis=0, return_index=True, return_counts=True)
        if np.any(counts > 1):
            rows = np.flatnonzero(np.all(p == p[first[np.argmax(counts > 1)]], axis=1))
            raise ValueError(
                f"points has duplicate directions (rows {rows.tolist()[:5]}); every codeword must be distinct"
            )
        p.setflags(write=False)
        self._points = p
        self._torch: dict = {}

    @property
    def points(self) -> np.ndarray:
        """Codewords, shape (K, d), float64, unit rows (read-only)."""
        return self._points

    @property
    def size(self) -> int:
        """Number of codewords ``K``."""
        return int(self._points.shape[0])

    @property
    def dim(self) -> int:
        """Ambient dimension ``d``."""
        return int(self._points.shape[1])

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"HypersphereCodebook(size={self.size}, dim={self.dim})"

    def nearest(self, x: Any, chunk: int = 16384):
        """Index of the nearest codeword to each direction of ``x``.

        Parameters
        ----------
        x : array_like or torch.Tensor, shape (..., d)
            Non-zero finite query vectors (only the direction matters).
        chunk : int
            Queries per block of the ``(chunk, K)`` dot-product matrix.

        Returns
        -------
        numpy.ndarray or torch.Tensor, shape (...), int64 (on ``x``'s device for torch)
        """
        x = _check_features(x, self.dim, "x")
        chunk = check_int(chunk, "chunk", minimum=1)
        flat = (x.detach() if is_torch(x) else x).reshape(-1, self.dim)
        zero = (flat == 0).all(-1) if is_torch(flat) else (flat == 0).all(axis=-1)
        if flat.shape[0] and bool(zero.any()):
            raise ValueError(
                "x contains a zero vector; its direction, hence its nearest codeword, is undefined"
            )
        if is_torch(flat):
            key = (flat.dtype, flat.device)
            if key not in self._torch:
                self._torch[key] = torch.tensor(self._points, dtype=flat.dtype, device=flat.device)
            pts = self._torch[key]
            parts = [
                torch.argmax(flat[i : i + chunk] @ pts.T, dim=-1) for i in range(0, flat.shape[0], chunk)
            ]
            out = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long, device=flat.device)
        else:
            pts = self._points.astype(flat.dtype)
            parts = [np.argmax(flat[i : i + chunk] @ pts.T, axis=-1) for i in range(0, flat.shape[0], chunk)]
            out = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            out = out.astype(np.int64)
        return out.reshape(tuple(x.shape[:-1]))

    def quantize(self, x: Any):
        """Nearest codeword of each direction of ``x``, shape (..., d), dtype of ``x``."""
        idx = self.nearest(x)
        if is_torch(idx):
            return self._torch[(x.dtype, x.device)][idx]  # filled by nearest()
        return self._points.astype(np.asarray(x).dtype)[idx]

    def covering_radius_estimate(self, n_samples: int = 100_000, seed: Any = 0) -> float:
        """Monte-Carlo *lower bound* of the covering radius (radians): the largest angle from ``n_samples``
        uniform random directions to their nearest codewords.

        Angles use ``2 atan2(|u - c|, |u + c|)`` (accurate near 0 and pi). The exact covering radius on
        ``S^(d-1)`` for ``d > 3`` is not computed; this estimate can only be too small.
        """
        n_samples = check_int(n_samples, "n_samples", minimum=1)
        rng = check_seed(seed)
        u = rng.standard_normal((int(n_samples), self.dim))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        c = self._points[self.nearest(u)]
        ang = 2 * np.arctan2(np.linalg.norm(u - c, axis=1), np.linalg.norm(u + c, axis=1))
        return float(ang.max())

    @classmethod
    def random(cls, n: int, dim: int, seed: Any = None) -> HypersphereCodebook:
        """``n`` independent uniform points on ``S^(dim-1)`` (normalised Gaussians)."""
        n = check_int(n, "n", minimum=1)
        dim = check_int(dim, "dim", minimum=2)
        return cls(check_seed(seed).standard_normal((int(n), int(dim))))

    @classmethod
    def kmeans(cls, data: Any, n: int, iterations: int = 50, seed: Any = None) -> HypersphereCodebook:
        """Spherical k-means of the directions of ``data`` (shape (N, d), zero rows ignored).

        Lloyd iterations: assign each direction to its nearest centre, replace each centre by the normalised
        mean of its cluster (an empty cluster keeps its centre). Initialised with ``n`` distinct data
        directions drawn with ``seed`` (so ``n`` is at most the number of distinct directions).
        """
        x = as_float_array(data, "data")
        if is_torch(x):
            x = x.detach().cpu().to(torch.float64).numpy()
        if x.ndim != 2 or x.shape[1] < 2:
            raise ValueError(f"data must have shape (N, d) with d >= 2, got {tuple(x.shape)}")
        check_finite(x, "data")
        iterations = check_int(iterations, "iterations", minimum=0)
        x = np.array(x, dtype=np.float64)
        x *= 1.0 / np.maximum(np.abs(x).max(axis=1, keepdims=True), np.finfo(np.float64).tiny)
        norms = safe_norm(x, axis=1)
        x = x[norms > 0] / norms[norms > 0, None]
        distinct = np.unique(x, axis=0)
        if check_int(n, "n", minimum=1) > distinct.shape[0]:
            raise ValueError(
                f"n must be in [1, {distinct.shape[0]}] (distinct non-zero data directions), got {n!r}"
            )
        rng = check_seed(seed)
        centres = distinct[rng.choice(distinct.shape[0], size=int(n), replace=False)].copy()
        for _ in range(int(iterations)):
            assign = np.argmax(x @ centres.T, axis=1)
            sums = np.zeros_like(centres)
            np.add.at(sums, assign, x)
            lengths = np.linalg.norm(sums, axis=1)
            moved = lengths > 0
            new = centres.copy()
            new[moved] = sums[moved] / lengths[moved, None]
            if np.array_equal(new, centres):
                break
            centres = new
        return cls(centres)


def _mddq_core(v, codebook, points, mq: MagnitudeQuantizer):
    """(r, u, m, c, mag_idx, dir_idx, inside) for validated v; no gradient."""
    vd = v.detach() if is_torch(v) else v
    r, u, nonzero = _polar(vd)
    xp = namespace(vd)
    mag_idx = mq._encode_unchecked(r)
    placeholder = xp.zeros_like(u)
    placeholder[..., -1] = 1
    u_query = xp.where(nonzero[..., None], u, placeholder)
    if math.prod(v.shape[:-1]) == 0:
        dir_idx = xp.zeros_like(r).long() if is_torch(r) else np.zeros(r.shape, dtype=np.int64)
    else:
        if is_torch(u_query) and u_query.dtype in (torch.float16, torch.bfloat16):
            u_query = u_query.float()  # the codebooks search in float32/float64 (the nearest is the same)
        dir_idx = codebook.nearest(u_query)
    m = mq._decode_unchecked(mag_idx, vd.dtype)
    if is_torch(vd):
        dir_idx = dir_idx.long()
        c = points[dir_idx]
    else:
        dir_idx = np.asarray(dir_idx).astype(np.int64)
        c = points.astype(vd.dtype)[dir_idx]
    inside = r <= mq.r_max
    return r, u, m, c, mag_idx, dir_idx, inside


def _mddq_apply(v, codebook, points, mq: MagnitudeQuantizer, direction_ste: str):
    r, u, m, c, _, _, inside = _mddq_core(v, codebook, points, mq)
    if is_torch(v):
        return _MDDQFunction.apply(v, u, r, m, c, inside, direction_ste)
    return m[..., None] * c


def bits_per_vector(magnitude_bits: int, num_codewords: int) -> int:
    """Storage cost of one MDDQ-coded vector: ``magnitude_bits + ceil(log2 K)`` bits.

    The magnitude code takes ``magnitude_bits`` bits, the direction index ``ceil(log2 K)`` bits for a
    codebook of ``K = num_codewords`` directions (0 bits for ``K = 1``).

    Parameters
    ----------
    magnitude_bits : int
        Bits of the magnitude code, ``>= 0``.
    num_codewords : int
        Codebook size ``K >= 1``.

    Returns
    -------
    int
        Bits per vector.

    Examples
    --------
    >>> bits_per_vector(4, 642)  # icosahedral level 3: 642 directions need 10 bits
    14
    >>> bits_per_vector(4, 1024), bits_per_vector(4, 1025)
    (14, 15)
    """
    magnitude_bits = check_int(magnitude_bits, "magnitude_bits", minimum=0)
    num_codewords = check_int(num_codewords, "num_codewords", minimum=1)
    return magnitude_bits + (num_codewords - 1).bit_length()


def mddq(v: Any, codebook, magnitude_quantizer: MagnitudeQuantizer, direction_ste: str = "geometric"):
    """Magnitude-direction decoupled quantization (Def. 3.1): ``Q(v) = Q_m(|v|) Q_d(v / |v|)``.

    Parameters
    ----------
    v : array_like or torch.Tensor, shape (..., d)
        Finite vectors, float32 or float64; ``d = 3`` for a :class:`~spherequant.codebook.Codebook`, or the
        dimension of a :class:`HypersphereCodebook` (e.g. ``d = 2 l + 1`` for degree-``l`` features).
    codebook : spherequant.codebook.Codebook or HypersphereCodebook
        Direction codebook; ``Q_d(u)`` is ``codebook.nearest(u)``'s codeword.
    magnitude_quantizer : MagnitudeQuantizer
        ``Q_m``.
    direction_ste : {"geometric", "plain", "none"}
        Backward pass (torch only), with ``g = dL/dQ(v)``: ``"geometric"``:
        ``dL/dv = (m / r) P_u g + <c, g> 1[r <= r_max] u``; ``"plain"``: ``dL/dv = g``; ``"none"``: the
        direction is hard (its a.e. derivative 0 is used) and only the magnitude term
        ``<c, g> 1[r <= r_max] u`` remains.

    Returns
    -------
    numpy.ndarray or torch.Tensor, shape of ``v``, dtype of ``v``
        ``Q(v)``; 0 for ``v = 0`` and for magnitudes that round to level 0 (gradient finite, 0 at ``v = 0``).

    Examples
    --------
    >>> import numpy as np
    >>> from spherequant import codebook
    >>> cb = codebook.octahedron()
    >>> mq = MagnitudeQuantizer(bits=4, r_max=1.5)
    >>> mddq(np.array([[0.9, 0.2, 0.1], [0.0, 0.0, 0.0]]), cb, mq).round(3).tolist()
    [[0.9, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """
    pts = _codebook_points(codebook)
    v = _check_features(v, pts.shape[1])
    if not isinstance(magnitude_quantizer, MagnitudeQuantizer):
        raise TypeError(
            f"magnitude_quantizer must be a MagnitudeQuantizer, got {type(magnitude_quantizer).__name__}"
        )
    check_choice(direction_ste, "direction_ste", _DIRECTION_STES)
    points = torch.as_tensor(pts, dtype=v.dtype, device=v.device) if is_torch(v) else pts
    return _mddq_apply(v, codebook, points, magnitude_quantizer, direction_ste)


class MDDQ(nn.Module):
    """MDDQ (Def. 3.1) as a module: ``forward`` fake-quantizes, ``encode`` / ``decode`` give integer codes.

    A vector costs ``bits_per_vector = magnitude_bits + ceil(log2 K)`` bits. Zero vectors (and magnitudes
    that round to level 0) are encoded as ``(0, 0)`` and decode to 0.

    Parameters
    ----------
    codebook : spherequant.codebook.Codebook or HypersphereCodebook
        Direction codebook with ``K`` codewords on ``S^2`` (vectors of shape (..., 3)) or, for degree-``l``
        features with ``2 l + 1`` components, on ``S^(2l)`` (vectors of shape (..., 2l+1)).
    magnitude_bits : int
        Bits of the magnitude code, 2 to 16.
    magnitude : {"uniform", "log"}
        Level spacing of the :class:`MagnitudeQuantizer`.
    r_max : float, optional
        Clipping magnitude. If None the module starts in calibration mode: every forward call raises ``r_max``
        to the largest magnitude seen (a running max; reading it back costs one device sync per call) until
        :meth:`freeze`. All-zero inputs quantize to 0 before any range is known.
    r_min : float, optional
        Smallest non-zero level for ``magnitude="log"`` (default ``1e-3 r_max``).
    direction_ste : {"geometric", "plain", "none"}
        Backward pass, see :func:`mddq`.

    Notes
    -----
    Code dtypes (:func:`code_dtype`): numpy unsigned ``uint8``/``uint16``/``uint32``; torch ``uint8`` up to
    255 codes, then ``int16``/``int32`` (torch has little support for wider unsigned types). ``decode``
    accepts any integer dtype. The codewords are kept in float64 and copied once per (dtype, device) on
    first use, so ``module.to(dtype)`` does not round them and the forward pass stays on the input's device.
    They are not part of the ``state_dict``, which holds ``r_max`` and the calibration flag (extra state).

    Examples
    --------
    >>> import torch
    >>> from spherequant import codebook
    >>> q = MDDQ(codebook.fibonacci(4096), magnitude_bits=8, r_max=4.0)
    >>> q.bits_per_vector
    20
    >>> v = torch.tensor([[1.0, 2.0, 2.0]], requires_grad=True)
    >>> mag, dire = q.encode(v)
    >>> mag.dtype, dire.dtype, int(mag[0])
    (torch.uint8, torch.int16, 191)
    >>> bool(torch.allclose(q(v), q.decode(mag, dire, dtype=v.dtype)))
    True
    """

    def __init__(
        self,
        codebook,
        magnitude_bits: int = 8,
        magnitude: str = "uniform",
        r_max: float | None = None,
        r_min: float | None = None,
        direction_ste: str = "geometric",
    ):
        super().__init__()
        pts = _codebook_points(codebook)
        self.codebook = codebook
        pts.setflags(write=False)
        self._points = pts  # float64 master copy: model dtype casts (.float(), .half()) do not round it
        self._points_cache: dict = {}
        self.dim = int(pts.shape[1])
        self.magnitude_bits = check_int(magnitude_bits, "magnitude_bits", minimum=2, maximum=16)
        self.magnitude = check_choice(magnitude, "magnitude", _MAGNITUDE_KINDS)
        self.direction_ste = check_choice(direction_ste, "direction_ste", _DIRECTION_STES)
        self.r_min = None if r_min is None else check_positive(r_min, "r_min")
        if self.magnitude == "uniform" and self.r_min is not None:
            raise ValueError("r_min is only used by magnitude='log'; leave it None for magnitude='uniform'")
        self.r_max = None if r_max is None else check_positive(r_max, "r_max")
        self.calibrating = r_max is None
        self._mq: MagnitudeQuantizer | None = None
        if self.r_max is not None:
            self._mq = self._make_mq(self.r_max)  # validates r_min < r_max

    def _make_mq(self, r_max: float) -> MagnitudeQuantizer:
        return MagnitudeQuantizer(self.magnitude_bits, r_max, kind=self.magnitude, r_min=self.r_min)

    @property
    def num_codewords(self) -> int:
        """Codebook size ``K``."""
        return int(self._points.shape[0])

    @property
    def bits_per_vector(self) -> int:
        """``magnitude_bits + ceil(log2 K)`` (:func:`bits_per_vector`)."""
        return bits_per_vector(self.magnitude_bits, self.num_codewords)

    @property
    def magnitude_quantizer(self) -> MagnitudeQuantizer:
        """The current :class:`MagnitudeQuantizer` (needs ``r_max``)."""
        if self._mq is None:
            raise RuntimeError(
                "MDDQ has no magnitude range yet: give r_max or call it in calibration mode first"
            )
        return self._mq

    def calibrate(self, mode: bool = True):
        """Switch the running-max calibration of ``r_max`` on or off; returns ``self``."""
        self.calibrating = bool(mode)
        return self

    def freeze(self):
        """Stop calibrating (same as ``calibrate(False)``); returns ``self``."""
        return self.calibrate(False)

    @torch.no_grad()
    def observe(self, v: Any) -> None:
        """Raise ``r_max`` to the largest magnitude of ``v`` (ignored when ``v`` is all zero)."""
        v = _check_features(v, self.dim)
        if math.prod(v.shape[:-1]) == 0:
            return
        r, _, _ = _polar(v.detach() if is_torch(v) else v)
        top = float(r.max())
        if not math.isfinite(top):
            raise ValueError("v has a magnitude that overflows its dtype")
        if top > 0 and (self.r_max is None or top > self.r_max):
            self.r_max = top
            self._mq = self._make_mq(top)

    def _torch_points(self, dtype, device) -> torch.Tensor:
        key = (dtype, device)
        if key not in self._points_cache:
            self._points_cache[key] = torch.tensor(self._points, dtype=dtype, device=device)
        return self._points_cache[key]

    def _points_for(self, v):
        if is_torch(v):
            return self._torch_points(v.dtype, v.device)
        return self._points

    def forward(self, v: Any):
        """Fake-quantized ``Q(v)``, shape and dtype of ``v`` (see :func:`mddq` for the backward pass)."""
        v = _check_features(v, self.dim)
        if self.calibrating:
            self.observe(v)
        if self._mq is None and self.calibrating:
            return v * 0  # all zeros so far: Q(0) = 0, gradient 0
        return _mddq_apply(
            v, self.codebook, self._points_for(v), self.magnitude_quantizer, self.direction_ste
        )

    def encode(self, v: Any):
        """Integer codes ``(mag_idx, dir_idx)``, each of shape ``v.shape[:-1]`` (dtypes: see Notes).

        ``dir_idx`` is 0 wherever ``mag_idx`` is 0 (the direction of a zero output is irrelevant).
        """
        v = _check_features(v, self.dim)
        mq = self.magnitude_quantizer
        _, _, _, _, mag_idx, dir_idx, _ = _mddq_core(v, self.codebook, self._points_for(v), mq)
        backend = _backend_name(v)
        xp = namespace(v)
        dir_idx = xp.where(mag_idx == 0, xp.zeros_like(dir_idx), dir_idx)
        dt = code_dtype(self.num_codewords, backend)
        return mag_idx, (dir_idx.to(dt) if is_torch(dir_idx) else dir_idx.astype(dt))

    def decode(self, mag_idx: Any, dir_idx: Any, dtype: Any = None):
        """Vectors ``levels[mag_idx] * codewords[dir_idx]``, shape ``mag_idx.shape + (d,)``.

        ``dtype`` defaults to float64 (numpy) or torch's default dtype; it must be a floating dtype of the
        codes' kind (integer dtypes raise TypeError: they would truncate the unit codewords to 0).
        """
        mq = self.magnitude_quantizer
        if is_torch(mag_idx) != is_torch(dir_idx):
            raise TypeError("mag_idx and dir_idx must be the same kind (both numpy or both torch)")
        mag = _check_codes(mag_idx, mq.n_levels, "mag_idx")
        dire = _check_codes(dir_idx, self.num_codewords, "dir_idx")
        if tuple(mag.shape) != tuple(dire.shape):
            shapes = f"{tuple(mag.shape)} and {tuple(dire.shape)}"
            raise ValueError(f"mag_idx and dir_idx must have the same shape, got {shapes}")
        if dtype is None:
            dtype = torch.get_default_dtype() if is_torch(mag) else np.float64
        dtype = _check_float_dtype(dtype, _backend_name(mag))
        m = mq._decode_unchecked(mag, dtype)
        if is_torch(mag):
            c = self._torch_points(dtype, mag.device)[dire]
        else:
            c = self._points.astype(dtype)[dire]
        return m[..., None] * c

    def get_extra_state(self):
        return {"r_max": self.r_max, "calibrating": self.calibrating}

    def set_extra_state(self, state) -> None:
        self.r_max = state["r_max"]
        self.calibrating = bool(state["calibrating"])
        self._mq = None if self.r_max is None else self._make_mq(self.r_max)

    def extra_repr(self) -> str:
        r_max = "None" if self.r_max is None else f"{self.r_max:.4g}"
        return (
            f"K={self.num_codewords}, magnitude_bits={self.magnitude_bits}, magnitude={self.magnitude!r}, "
            f"r_max={r_max}, direction_ste={self.direction_ste!r}, bits_per_vector={self.bits_per_vector}, "
            f"calibrating={self.calibrating}"
        )


# ----------------------------------------------------------------------------------------------------------
# comparison of vector quantizers (used by benchmarks/mddq.py and the demo)
# ----------------------------------------------------------------------------------------------------------
def _per_axis(v: np.ndarray, bits: tuple[int, int, int], kind: str, calib: np.ndarray) -> np.ndarray:
    """Quantize each Cartesian component separately (per-tensor range from ``calib``)."""
    out = np.empty_like(v)
    for i, b in enumerate(bits):
        if kind == "minmax":
            scale, zp = minmax_params(calib, b)
            out[..., i] = fake_quantize_minmax(v[..., i], b, scale=scale, zero_point=zp)
        else:
            out[..., i] = fake_quantize_symmetric(v[..., i], b, scale=symmetric_scale(calib, b))
    return out


def _stats(v, rv, rot, q, rq) -> dict:
    err = np.linalg.norm(q - v, axis=-1)
    comm = np.linalg.norm(rq - np.einsum("nij,nj->ni", rot, q), axis=-1)
    mean_norm = float(np.mean(np.linalg.norm(v, axis=-1)))
    return {
        "mean_err": float(err.mean()),
        "max_err": float(err.max()),
        "rel_mean_err": float(err.mean() / mean_norm),
        "mean_comm": float(comm.mean()),
        "max_comm": float(comm.max()),
    }


def compare_vector_quantizers(
    n: int = 100_000,
    seed: int = 0,
    *,
    sweep: bool = True,
    sweep_n: int = 20_000,
    magnitude: str = "uniform",
) -> dict:
    """Naive per-axis scalar quantization versus MDDQ on random 3-vectors, at equal or fewer bits.

    Vectors are ``N(0, I_3)`` samples (so magnitudes are chi-distributed with 3 degrees of freedom, like
    equivariant features) drawn with ``numpy.random.default_rng(seed)``; each is paired with a Haar-random
    rotation ``R`` (:func:`spherequant.so3.random_rotation`, seed ``seed + 1``). Every quantizer is calibrated
    once on the union of the ``v`` and ``R v`` (so that no quantizer clips rotated inputs more than the
    originals) and then kept fixed. Reported per quantizer: mean / max of ``||Q(v) - v||``, the mean error
    relative to ``mean |v|``, and mean / max of the commutation error ``||Q(R v) - R Q(v)||``.

    Quantizers: per-axis ``3 x 8 = 24`` bits (per-tensor min-max, i.e. the paper's naive INT8, and symmetric
    max-abs); per-axis 5/5/6 = 16 bits (symmetric); MDDQ 8 + 12 = 20 bits, 6 + 10 and 4 + 12 = 16 bits,
    and MDDQ 8 + 16 = 24 bits, with spherical Fibonacci codebooks of ``2^direction bits`` points and
    ``r_max`` = the largest magnitude.
    With ``sweep=True`` also the error versus total bits on the first ``sweep_n`` vectors: per-axis ``3 b``
    bits (``b = 3 .. 10``, both kinds) and MDDQ at ``T = 9 .. 30`` bits with the best of a few
    magnitude/direction splits (direction codebooks up to 2^20 points).

    Parameters
    ----------
    n : int
        Number of vectors.
    seed : int
        Seed of the data and the rotations.
    sweep : bool
        Also run the bit sweep.
    sweep_n : int
        Number of vectors used by the sweep.
    magnitude : {"uniform", "log"}
        Magnitude level spacing of the MDDQ entries.

    Returns
    -------
    dict
        ``{"n", "seed", "rows": [{"name", "family", "bits", "mean_err", "max_err", "rel_mean_err",
        "mean_comm", "max_comm"}, ...], "sweep": [{"family", "bits", "config", ...}, ...]}``.

    Examples
    --------
    >>> res = compare_vector_quantizers(n=2000, sweep=False)
    >>> [row["bits"] for row in res["rows"]]
    [24, 24, 16, 20, 16, 16, 24]
    >>> axis16, mddq16 = res["rows"][2], res["rows"][4]  # 16 bits each: per-axis 5/5/6 vs MDDQ 6+10
    >>> mddq16["mean_err"] < axis16["mean_err"] and mddq16["mean_comm"] < axis16["mean_comm"]
    True
    """
    from . import codebook as _codebook
    from . import so3 as _so3

    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(sweep_n, bool) or not isinstance(sweep_n, numbers.Integral) or sweep_n < 2:
        raise ValueError(f"sweep_n must be an integer >= 2, got {sweep_n!r}")
    sweep = check_bool(sweep, "sweep")
    check_choice(magnitude, "magnitude", _MAGNITUDE_KINDS)
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((int(n), 3))
    rot = np.asarray(_so3.random_rotation(int(n), seed=seed + 1), dtype=np.float64)
    rv = np.einsum("nij,nj->ni", rot, v)
    calib = np.concatenate([v, rv])
    r_max = float(np.linalg.norm(calib, axis=-1).max())
    books: dict[int, Any] = {}

    def book(k: int):
        if k not in books:
            books[k] = _codebook.fibonacci(k)
        return books[k]

    def run_mddq(x, rx, rr, mb: int, db: int) -> dict:
        mq = MagnitudeQuantizer(mb, r_max, kind=magnitude)
        cb = book(2**db)
        return _stats(x, rx, rr, mddq(x, cb, mq), mddq(rx, cb, mq))

    def run_axis(x, rx, rr, bits, kind) -> dict:
        return _stats(x, rx, rr, _per_axis(x, bits, kind, calib), _per_axis(rx, bits, kind, calib))

    rows = []
    for name, family, bits, fn in [
        ("per-axis INT8 min-max (naive)", "per-axis", 24, lambda: run_axis(v, rv, rot, (8, 8, 8), "minmax")),
        ("per-axis INT8 symmetric", "per-axis", 24, lambda: run_axis(v, rv, rot, (8, 8, 8), "symmetric")),
        ("per-axis 5/5/6 symmetric", "per-axis", 16, lambda: run_axis(v, rv, rot, (5, 5, 6), "symmetric")),
        ("MDDQ 8+12", "MDDQ", 20, lambda: run_mddq(v, rv, rot, 8, 12)),
        ("MDDQ 6+10", "MDDQ", 16, lambda: run_mddq(v, rv, rot, 6, 10)),
        ("MDDQ 4+12", "MDDQ", 16, lambda: run_mddq(v, rv, rot, 4, 12)),
        ("MDDQ 8+16", "MDDQ", 24, lambda: run_mddq(v, rv, rot, 8, 16)),
    ]:
        rows.append({"name": name, "family": family, "bits": bits, **fn()})

    sweep_rows = []
    if sweep:
        m = min(int(sweep_n), int(n))
        xs, rxs, rots = v[:m], rv[:m], rot[:m]
        for b in range(3, 11):
            for kind in ("minmax", "symmetric"):
                res = run_axis(xs, rxs, rots, (b, b, b), kind)
                sweep_rows.append(
                    {"family": f"per-axis {kind}", "bits": 3 * b, "config": f"{b}/{b}/{b}", **res}
                )
        for total in range(9, 31, 3):
            best = None
            splits = sorted({round(total * f) for f in (0.3, 0.35, 0.4, 0.45, 0.5)})
            for mb in splits:
                db = total - mb
                if not (2 <= mb <= 16 and 2 <= db <= 20):
                    continue
                res = run_mddq(xs, rxs, rots, mb, db)
                if best is None or res["mean_err"] < best["mean_err"]:
                    best = {"family": "MDDQ", "bits": total, "config": f"{mb}+{db}", **res}
            sweep_rows.append(best)
    return {
        "n": int(n),
        "seed": int(seed),
        "magnitude": magnitude,
        "r_max": r_max,
        "rows": rows,
        "sweep": sweep_rows,
    }
