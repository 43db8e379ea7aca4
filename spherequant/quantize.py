"""Magnitude quantizers and magnitude-direction decoupled quantization (MDDQ) of vector features.

Magnitudes ``r >= 0`` are quantized by :class:`MagnitudeQuantizer` (uniform or logarithmic levels, level 0
exactly 0, range clipped to ``[0, r_max]``). :func:`mddq` and :class:`MDDQ` implement Def. 3.1 of the paper,
``Q(v) = Q_m(|v|) Q_d(v / |v|)``, with the nearest-codeword direction quantizer of a
:class:`spherequant.codebook.Codebook` (or, for features of any dimension, a
:class:`spherequant.hypersphere.HypersphereCodebook`) and the backward pass of
``docs/theory/geometric_ste.md``: with ``g = dL/dQ(v)``, ``r = |v|``, ``u = v / r``, ``m = Q_m(r)``,
``c = Q_d(u)``,

    dL/dv = (m / r) P_u g + <c, g> 1[r <= r_max] u,        P_u = I - u u^T.

The first term is the geometric STE of the direction (orthogonal to ``v``, Prop. III.1), the second the
magnitude STE. Zero vectors quantize to 0 with gradient 0 (never NaN). A vector costs
:func:`bits_per_vector` bits.

Scalar quantizers live in :mod:`spherequant.scalar`, the ``S^(d-1)`` codebook in
:mod:`spherequant.hypersphere` and the per-axis-versus-MDDQ comparison in :mod:`spherequant.comparison`;
their old names here still work and warn (:class:`DeprecationWarning`).
"""

from __future__ import annotations

import importlib
import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from ._backend import (
    as_float_array,
    backend_name,
    cached_tensors,
    check_features,
    gradient_carrier,
    is_torch,
    namespace,
    polar,
)
from ._validation import (
    check_choice,
    check_finite,
    check_float_dtype,
    check_int,
    check_positive,
    check_real,
    is_traced,
)
from .scalar import code_dtype as _code_dtype

__all__ = ["MDDQ", "MagnitudeQuantizer", "bits_per_vector", "clip_magnitude", "mddq"]

_MAGNITUDE_KINDS = ("uniform", "log")
_DIRECTION_STES = ("geometric", "plain", "none")

#: Names that moved out of this module: old name -> module that defines it now.
_MOVED = {
    **dict.fromkeys(
        (
            "LSQQuantizer",
            "MinMaxQuantizer",
            "SymmetricQuantizer",
            "code_dtype",
            "dequantize",
            "fake_quantize_lsq",
            "fake_quantize_minmax",
            "fake_quantize_symmetric",
            "minmax_params",
            "quantize_minmax",
            "quantize_symmetric",
            "symmetric_scale",
        ),
        "spherequant.scalar",
    ),
    "HypersphereCodebook": "spherequant.hypersphere",
    "compare_vector_quantizers": "spherequant.comparison",
}


def __getattr__(name: str):
    """Old names of the scalar quantizers, the hypersphere codebook and the comparison, with a warning."""
    if name in _MOVED:
        target = _MOVED[name]
        warnings.warn(
            f"spherequant.quantize.{name} moved to {target}.{name}; import it from there "
            "(the old name will be removed in a future release)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(target), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_MOVED))


# ----------------------------------------------------------------------------------------------------------
# magnitude quantizers
# ----------------------------------------------------------------------------------------------------------
def _magnitude_ste(r, q, r_max):
    """``Q_m(r)`` forward; ``grad * 1[r <= r_max]`` backward (:func:`gradient_carrier`)."""
    if not torch.is_grad_enabled():
        return q
    return q + (r.detach() <= r_max).to(r.dtype) * gradient_carrier(r)


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

    def level_tensors(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(levels, thresholds)`` as tensors of ``like``'s dtype and device (cached per dtype/device).

        For inference code that encodes validated magnitudes itself: ``torch.bucketize(r, thresholds,
        right=True)`` is :meth:`encode` without its argument checks.

        Parameters
        ----------
        like : torch.Tensor
            Any tensor of the wanted dtype and device.

        Returns
        -------
        levels : torch.Tensor of shape (2^bits,)
        thresholds : torch.Tensor of shape (2^bits - 1,)
        """
        if not isinstance(like, torch.Tensor) or not like.dtype.is_floating_point:
            raise TypeError(f"like must be a floating-point torch tensor, got {type(like).__name__}")
        return cached_tensors(
            self._cache,
            (like.dtype, like.device),
            lambda: (
                torch.as_tensor(self.levels, dtype=like.dtype, device=like.device),
                torch.as_tensor(self.thresholds, dtype=like.dtype, device=like.device),
            ),
        )

    def _check_r(self, r):
        r = as_float_array(r, "r")
        xp = namespace(r)
        check_finite(r, "r")
        if not is_traced(r) and not bool(xp.all(r >= 0)):
            raise ValueError("r must be non-negative (magnitudes)")
        return r

    def _encode_unchecked(self, r):
        if is_torch(r):
            _, thr = self.level_tensors(r)
            codes = torch.bucketize(r.detach(), thr, right=True)
            return codes.to(_code_dtype(self.n_levels, "torch"))
        codes = np.asarray(np.searchsorted(self.thresholds.astype(r.dtype), r, side="right"))
        return codes.astype(_code_dtype(self.n_levels, "numpy"))

    def _decode_unchecked(self, codes, dtype):
        if is_torch(codes):
            like = torch.empty((), dtype=dtype, device=codes.device)
            levels, _ = self.level_tensors(like)
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
            (see :func:`spherequant.scalar.code_dtype`).
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
        return self._decode_unchecked(codes, check_float_dtype(dtype, "dtype", backend=backend_name(codes)))

    def quantize(self, r: Any):
        """``decode(encode(r))`` in the dtype of ``r`` (no gradient)."""
        r = self._check_r(r)
        return self._decode_unchecked(self._encode_unchecked(r), r.dtype)

    def forward(self, r: Any):
        """Fake quantization ``Q_m(r)``; for torch, ``dQ/dr`` is taken as ``1[r <= r_max]`` (STE)."""
        r = self._check_r(r)
        q = self._decode_unchecked(self._encode_unchecked(r), r.dtype)
        if is_torch(r):
            return _magnitude_ste(r, q, self.r_max)
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
def _mddq_ste(v, u, r, m, c, inside, mode):
    """Forward ``m c``; backward ``(m/r) P_u g + <c, g> 1[r <= r_max] u`` (geometric), ``g`` (plain), the
    second term only (none). Written with :func:`gradient_carrier` ``d``: the Jacobian ``J`` of the
    estimator enters as ``J d`` with ``J = 1[r <= r_max] c u^T + (m/r) (I - u u^T)`` (geometric), whose
    transpose applied to ``g`` is the backward above; ``u, r, m, c`` are constants of the backward."""
    y = m.unsqueeze(-1) * c
    if not torch.is_grad_enabled():
        return y
    d = gradient_carrier(v)
    if mode == "plain":
        return y + d
    ud = torch.sum(u * d, dim=-1, keepdim=True)
    y = y + (inside.to(v.dtype).unsqueeze(-1) * c) * ud  # magnitude STE (u = 0 for zero vectors)
    if mode == "geometric":
        # geometric STE of the direction: (m / r) P_u, defined as 0 for r = 0 (then m = 0 too)
        ratio = torch.where(r > 0, m / torch.where(r > 0, r, torch.ones_like(r)), torch.zeros_like(r))
        y = y + ratio.unsqueeze(-1) * (d - u * ud)
    return y


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


def _mddq_core(v, codebook, points, mq: MagnitudeQuantizer):
    """(r, u, m, c, mag_idx, dir_idx, inside) for validated v; no gradient."""
    vd = v.detach() if is_torch(v) else v
    r, u, nonzero = polar(vd)
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
        return _mddq_ste(v, u, r, m, c, inside, direction_ste)
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


def clip_magnitude(v: Any, r_max: float, width: float = 0.0):
    """``v`` with its magnitude ``r`` mapped to ``min(r, r_max)`` (``width = 0``) or to the smooth
    ``r - w [sp((r - r_max) / w) - sp(-r_max / w)]`` (``width = w > 0``, ``sp`` the softplus); directions
    kept.

    MDDQ without its rounding: with ``width = 0``, ``mddq(clip_magnitude(v, r_max)) == mddq(v)`` for a
    magnitude quantizer clipping at ``r_max`` (up to ties between codewords, decided by float round-off).
    With ``width > 0`` the map is infinitely differentiable, the new magnitude is increasing in ``r``, 0 at
    ``r = 0`` and within ``w ln 2`` of ``min(r, r_max)``. It commutes with rotations,
    ``clip_magnitude(v R^T) = clip_magnitude(v) R^T``; for torch its autograd gradient (any order) is the
    exact derivative, also at ``v = 0``.

    Parameters
    ----------
    v : array_like or torch.Tensor of shape (..., d)
        Vectors (finite).
    r_max : float
        Positive clipping magnitude.
    width : float
        Non-negative width over which the clip's corner is rounded (units of ``v``).

    Returns
    -------
    numpy.ndarray or torch.Tensor, shape and dtype of ``v``

    Examples
    --------
    >>> clip_magnitude(np.array([[3.0, 4.0, 0.0], [0.3, 0.4, 0.0]]), 2.0).round(12).tolist()
    [[1.2, 1.6, 0.0], [0.3, 0.4, 0.0]]
    >>> round(float(np.linalg.norm(clip_magnitude(np.array([3.0, 4.0, 0.0]), 2.0, width=0.1))), 6)
    2.0
    """
    v = as_float_array(v, "v")
    check_finite(v, "v")
    r_max = check_positive(r_max, "r_max")
    width = check_real(width, "width", minimum=0.0)
    xp = namespace(v)
    if v.ndim == 0:
        raise ValueError("v must have a last axis of vector components, got a scalar")
    r2 = (v * v).sum(-1, keepdims=True) if not is_torch(v) else (v * v).sum(-1, keepdim=True)
    if width == 0.0:
        # |v| only where it exceeds r_max > 0: no square root (or its derivatives, any order) at v = 0
        outside = r2 > r_max * r_max
        r = xp.sqrt(xp.where(outside, r2, xp.ones_like(r2)))
        return v * xp.where(outside, r_max / r, xp.ones_like(r))
    # below r_max - 40 w the rounding changes r by < w e^-40 (under float64's relative eps): scale 1 there,
    # which keeps the square root away from v = 0
    near = r2 > max(r_max - 40.0 * width, 0.0) ** 2
    r = xp.sqrt(xp.where(near, r2, xp.ones_like(r2)))
    if is_torch(v):
        sp = torch.nn.functional.softplus
        cut = sp((r - r_max) / width, threshold=40.0) - float(np.logaddexp(0.0, -r_max / width))
    else:
        cut = np.logaddexp(0.0, (r - r_max) / width) - np.logaddexp(0.0, -r_max / width)
    return v * xp.where(near, (r - width * cut) / r, xp.ones_like(r))


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
    v = check_features(v, "v", dim=pts.shape[1])
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
    Code dtypes (:func:`spherequant.scalar.code_dtype`): numpy unsigned ``uint8``/``uint16``/``uint32``;
    torch ``uint8`` up to 255 codes, then ``int16``/``int32`` (torch has little support for wider unsigned
    types). ``decode`` accepts any integer dtype. The codewords are kept in float64 and copied once per
    (dtype, device) on first use, so ``module.to(dtype)`` does not round them and the forward pass stays on
    the input's device. They are not part of the ``state_dict``, which holds ``r_max`` and the calibration
    flag (extra state).

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
        v = check_features(v, "v", dim=self.dim)
        if math.prod(v.shape[:-1]) == 0:
            return
        r, _, _ = polar(v.detach() if is_torch(v) else v)
        top = float(r.max())
        if not math.isfinite(top):
            raise ValueError("v has a magnitude that overflows its dtype")
        if top > 0 and (self.r_max is None or top > self.r_max):
            self.r_max = top
            self._mq = self._make_mq(top)

    def _torch_points(self, dtype, device) -> torch.Tensor:
        def make():
            return torch.tensor(self._points, dtype=dtype, device=device)

        return cached_tensors(self._points_cache, (dtype, device), make)

    def _points_for(self, v):
        if is_torch(v):
            return self._torch_points(v.dtype, v.device)
        return self._points

    def forward(self, v: Any):
        """Fake-quantized ``Q(v)``, shape and dtype of ``v`` (see :func:`mddq` for the backward pass)."""
        v = check_features(v, "v", dim=self.dim)
        if self.calibrating:
            self.observe(v)
        if self._mq is None and self.calibrating:
            return v * 0  # all zeros so far: Q(0) = 0, gradient 0
        return _mddq_apply(
            v, self.codebook, self._points_for(v), self.magnitude_quantizer, self.direction_ste
        )

    def saturate(self, v: Any, width: float = 0.0):
        """MDDQ without its rounding: :func:`clip_magnitude` at ``r_max``, its corner rounded over ``width``
        times the spacing of the two largest magnitude levels (no observation, no gradient estimator: a
        surrogate of :meth:`forward` that commutes with rotations)."""
        v = check_features(v, "v", dim=self.dim)
        width = check_real(width, "width", minimum=0.0)
        return clip_magnitude(v, self.magnitude_quantizer.r_max, width * self.top_magnitude_step)

    @property
    def top_magnitude_step(self) -> float:
        """Spacing of the two largest magnitude levels (where the clip acts)."""
        levels = self.magnitude_quantizer.levels
        return float(levels[-1] - levels[-2])

    def encode(self, v: Any):
        """Integer codes ``(mag_idx, dir_idx)``, each of shape ``v.shape[:-1]`` (dtypes: see Notes).

        ``dir_idx`` is 0 wherever ``mag_idx`` is 0 (the direction of a zero output is irrelevant).
        """
        v = check_features(v, "v", dim=self.dim)
        mq = self.magnitude_quantizer
        _, _, _, _, mag_idx, dir_idx, _ = _mddq_core(v, self.codebook, self._points_for(v), mq)
        backend = backend_name(v)
        xp = namespace(v)
        dir_idx = xp.where(mag_idx == 0, xp.zeros_like(dir_idx), dir_idx)
        dt = _code_dtype(self.num_codewords, backend)
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
        dtype = check_float_dtype(dtype, "dtype", backend=backend_name(mag))
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
