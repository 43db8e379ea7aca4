"""Fake-quantization modules of the GAQ harness: quantized weights, activation and vector-feature quantizers.

Re-exported by :mod:`spherequant.models.gaq` (and the baselines' activation quantizers by
:mod:`spherequant.models.baselines`). A quantized weight module (:class:`QuantLinear`,
:class:`QuantEmbedding`) keeps its float weight as the trainable parameter and uses a fake-quantized copy in
the forward pass; an :class:`ActivationQuantizer` sits at a hook point (``x_quant``, ``chi_quant``) of a
So3krates layer with the switches of the QAT schedule (``enabled``, ``smooth``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spherequant import codebook as _codebook
from spherequant._validation import check_choice, check_int, check_real, is_traced
from spherequant.quantize import MDDQ
from spherequant.scalar import (
    SymmetricQuantizer,
    fake_quantize_lsq,
    fake_quantize_minmax,
    fake_quantize_symmetric,
    learned_step,
    minmax_params,
    symmetric_scale,
)

from ._quant_spec import BRANCHES, WEIGHT_SCHEMES
from .saturation import SMOOTH_SATURATION_WIDTH, Clamp, DegreeOneNormClip, clip_degree_one

__all__ = [
    "ActivationQuantizer",
    "DegreeQuantActivation",
    "QDropActivation",
    "QuantEmbedding",
    "QuantLinear",
    "VectorFeatureQuantizer",
    "WeightFakeQuantizer",
    "branch_of",
    "degree_protection_probability",
]


def branch_of(name: str) -> str:
    """Branch of the submodule with qualified name ``name``: ``"equivariant"`` inside a geometric block.

    Examples
    --------
    >>> branch_of("layers.0.geometric_block.attention.query"), branch_of("energy_mlp.0")
    ('equivariant', 'invariant')
    """
    parts = name.split(".")
    return "equivariant" if ("geometric_block" in parts or "chi_quant" in parts) else "invariant"


# ----------------------------------------------------------------------------------------------------------
# fake-quantized weights
# ----------------------------------------------------------------------------------------------------------
class WeightFakeQuantizer:
    """Mixin of the quantized weight modules (:class:`QuantLinear`, :class:`QuantEmbedding`): symmetric
    per-channel, min-max per-tensor or LSQ per-channel fake quantization of ``self.weight``.

    Attributes
    ----------
    bits : int
        Weight bits, 2 to 8.
    branch : {"equivariant", "invariant"}
    scheme : {"symmetric", "minmax", "lsq"}
    enabled : bool
        False: the forward pass uses the float weight (staged warm-up).
    converted : bool
        True after :meth:`convert`: integer codes + scale are the stored state.
    """

    def _init_quant(self, bits: int, branch: str, scheme: str):
        self.bits = check_int(bits, "bits", minimum=2, maximum=8)
        self.branch = check_choice(branch, "branch", BRANCHES)
        self.scheme = check_choice(scheme, "scheme", WEIGHT_SCHEMES)
        self.enabled = True
        self.converted = False
        if scheme == "lsq":
            qp = 2 ** (self.bits - 1) - 1
            with torch.no_grad():
                w = self.weight.detach()
                step = 2 * w.abs().mean(dim=1, keepdim=True) / math.sqrt(qp)
                step = torch.where(step > 0, step, torch.full_like(step, 1.0 / qp))
            self.step = nn.Parameter(step)

    def _qparams(self, w):
        """(codes as float, scale, zero point) of the weight ``w`` (no gradient)."""
        if self.scheme == "symmetric":
            s = symmetric_scale(w.detach(), self.bits, axis=0)
            qmax = 2 ** (self.bits - 1) - 1
            return torch.clamp(torch.round(w.detach() / s), -qmax, qmax), s, 0
        if self.scheme == "minmax":
            s, zp = minmax_params(w.detach(), self.bits)
            codes = torch.clamp(torch.round(w.detach() / s) + zp, 0, 2**self.bits - 1)
            return codes, s, zp
        step = learned_step(self.step.detach()).to(w.dtype)
        qn, qp = 2 ** (self.bits - 1), 2 ** (self.bits - 1) - 1
        return torch.round(torch.clamp(w.detach() / step, -qn, qp)), step, 0

    def fake_quantized_weight(self) -> torch.Tensor:
        """Weight used by the forward pass: fake-quantized (STE) when enabled, dequantized codes after
        :meth:`convert`, the float weight when disabled."""
        if self.converted:
            return (
                self.weight_codes.to(self.weight_scale.dtype) - self.weight_zero_point
            ) * self.weight_scale
        w = self.weight
        if not self.enabled:
            return w
        if self.scheme == "symmetric":
            return fake_quantize_symmetric(w, self.bits, axis=0)
        if self.scheme == "minmax":
            return fake_quantize_minmax(w, self.bits)
        qp = 2 ** (self.bits - 1) - 1
        return fake_quantize_lsq(  # the step's magnitude: an Adam update may carry a tiny step across zero
            w, learned_step(self.step), self.bits, signed=True, grad_scale=1.0 / math.sqrt(w[0].numel() * qp)
        )

    @torch.no_grad()
    def convert(self) -> None:
        """Replace the float weight by integer codes + scale (+ zero point); idempotent."""
        if self.converted:
            return
        w = self.weight.detach()
        codes, scale, zp = self._qparams(w)
        dtype = torch.uint8 if self.scheme == "minmax" else torch.int8
        del self.weight  # the Parameter; re-registered below as a non-persistent dequantized buffer
        self.register_buffer("weight_codes", codes.to(dtype))
        self.register_buffer("weight_scale", torch.as_tensor(scale, dtype=w.dtype).clone())
        if self.scheme == "minmax":
            self.register_buffer("weight_zero_point", torch.as_tensor(zp, dtype=w.dtype).clone())
        else:
            self.weight_zero_point = 0
        if self.scheme == "lsq":
            del self.step
        self.converted = True
        self.register_buffer("weight", self.fake_quantized_weight().detach(), persistent=False)
        self.register_load_state_dict_post_hook(_refresh_weight)

    def packed_bytes(self) -> int:
        """Bytes of the packed weight codes plus FP32 scales / zero points / bias."""
        n = self.weight_codes.numel() if self.converted else self.weight.numel()
        channels = 1 if self.scheme == "minmax" else (n // self._row_size())
        extra = 2 * 4 if self.scheme == "minmax" else channels * 4
        bias = getattr(self, "bias", None)
        return math.ceil(n * self.bits / 8) + extra + (0 if bias is None else 4 * bias.numel())

    def _row_size(self) -> int:
        shape = self.weight_codes.shape if self.converted else self.weight.shape
        return int(shape[1])

    def _quant_repr(self) -> str:
        return f"bits={self.bits}, branch={self.branch!r}, scheme={self.scheme!r}, converted={self.converted}"


def _refresh_weight(module, incompatible_keys) -> None:
    if module.converted:
        module.weight = module.fake_quantized_weight().detach()


class QuantLinear(WeightFakeQuantizer, nn.Linear):
    """``nn.Linear`` with fake-quantized weights (per output channel by default); activations untouched.

    The float ``weight`` stays the trainable parameter; the forward pass uses
    :meth:`fake_quantized_weight` (straight-through gradient). After :meth:`convert` the state holds
    ``weight_codes`` (int8, or uint8 for ``scheme="minmax"``), ``weight_scale`` (and ``weight_zero_point``
    for min-max), and ``weight`` is a non-persistent buffer with the dequantized values. Codes are stored
    one per byte in the ``state_dict`` (4-bit codes are not nibble-packed on disk);
    :func:`model_size_bytes` counts the packed size.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
    bits : int
        Weight bits, 2 to 8.
    branch : {"equivariant", "invariant"}
    scheme : {"symmetric", "minmax", "lsq"}
        Per-channel symmetric max-abs, per-tensor asymmetric min-max, or per-channel learned step (LSQ).

    Examples
    --------
    >>> lin = QuantLinear.from_linear(nn.Linear(4, 3), bits=4)
    >>> w = lin.fake_quantized_weight()
    >>> bool(all(len(set(row.tolist())) <= 15 for row in w))
    True
    >>> isinstance(lin.to_linear(), nn.Linear)
    True
    """

    def __init__(
        self, in_features, out_features, bias=True, *, bits=8, branch="invariant", scheme="symmetric",
        device=None, dtype=None,
    ):  # fmt: skip
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_quant(bits, branch, scheme)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 8, branch: str = "invariant", scheme="symmetric"):
        """Wrap ``linear`` (its weight and bias Parameters are shared, not copied)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight = linear.weight
        new.bias = linear.bias
        new._init_quant(bits, branch, scheme)
        new.train(linear.training)
        return new

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the weight this module currently uses (float or dequantized)."""
        w = self.fake_quantized_weight().detach()
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        out = out.to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            out.weight.copy_(w)
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.fake_quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self._quant_repr()}"


class QuantEmbedding(WeightFakeQuantizer, nn.Embedding):
    """``nn.Embedding`` with a fake-quantized table (one scale per element row).

    Examples
    --------
    >>> emb = QuantEmbedding.from_embedding(nn.Embedding(5, 8), bits=8)
    >>> emb(torch.tensor([1, 2])).shape
    torch.Size([2, 8])
    """

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, bits: int = 8, branch: str = "invariant", scheme="symmetric"):
        """Wrap ``emb`` (its weight Parameter is shared)."""
        if not isinstance(emb, nn.Embedding):
            raise TypeError(f"emb must be an nn.Embedding, got {type(emb).__name__}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for k in ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type",
                  "scale_grad_by_freq", "sparse"):  # fmt: skip
            setattr(new, k, getattr(emb, k))
        new.weight = emb.weight
        new._init_quant(bits, branch, scheme)
        return new

    def to_embedding(self) -> nn.Embedding:
        """A plain ``nn.Embedding`` with the table this module currently uses (float or dequantized)."""
        w = self.fake_quantized_weight().detach()
        out = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx)
        out = out.to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            out.weight.copy_(w)
        return out

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.fake_quantized_weight(), self.padding_idx)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self._quant_repr()}"


# ----------------------------------------------------------------------------------------------------------
# activation quantizers
# ----------------------------------------------------------------------------------------------------------
class ActivationQuantizer(nn.Module):
    """Hook-point module wrapping a scalar fake quantizer, with the switches of the QAT schedule.

    ``enabled=False`` (warm-up) makes it the identity; ``smooth=True`` (``force_mode="smooth"``) makes it
    its saturation (:meth:`saturate`: the clamp without the rounding); while the inner quantizer is
    calibrating it still observes.

    Parameters
    ----------
    quantizer : nn.Module
        E.g. :class:`~spherequant.scalar.SymmetricQuantizer`, ``MinMaxQuantizer``, ``LSQQuantizer``.
    branch : {"equivariant", "invariant"}

    Examples
    --------
    >>> q = ActivationQuantizer(SymmetricQuantizer(8), "invariant")
    >>> [round(v, 4) for v in q(torch.tensor([[0.5, -1.27]]))[0].tolist()]
    [0.5, -1.27]
    """

    #: Corner width of the smooth mode's clamp, in grid steps (:mod:`spherequant.models.saturation`).
    saturation_width = SMOOTH_SATURATION_WIDTH

    def __init__(self, quantizer: nn.Module, branch: str):
        super().__init__()
        self.quantizer = quantizer
        self.branch = check_choice(branch, "branch", BRANCHES)
        self.enabled = True
        self.smooth = False

    def active(self) -> bool:
        """Whether the forward pass quantizes (enabled and not in the smooth force mode)."""
        return self.enabled and not self.smooth

    def calibrate(self, mode: bool = True):
        """Switch the inner quantizer's range observation on or off (no-op for LSQ); returns ``self``."""
        if hasattr(self.quantizer, "calibrate"):
            self.quantizer.calibrate(mode)
        return self

    def freeze(self):
        """Stop observing ranges; returns ``self``."""
        return self.calibrate(False)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """The quantized values (no schedule switches, no training-time masks)."""
        return self.quantizer(x)

    def saturates(self) -> bool:
        """Whether the smooth force mode clamps here: an invariant-branch quantizer with a ``saturate``
        method and a known range. A per-component quantizer of the equivariant features has no clamp that
        commutes with rotations, so it is the identity in the smooth mode (as is one without a range yet)."""
        q = self.quantizer
        if self.branch == "equivariant" or not hasattr(q, "saturate"):
            return False
        flag = getattr(q, "initialized", None)
        return flag is None or is_traced(flag) or bool(flag)

    def saturate(self, x: torch.Tensor) -> torch.Tensor:
        """The quantizer without its rounding (the clamp to its grid's range, corners rounded over
        :attr:`saturation_width` steps), or ``x`` where :meth:`saturates` is False; see
        :mod:`spherequant.models.saturation`."""
        return self.quantizer.saturate(x, self.saturation_width) if self.saturates() else x

    def saturation_module(self) -> nn.Module:
        """:meth:`saturate` as a plain module: :class:`~spherequant.models.saturation.Clamp` or
        ``nn.Identity``."""
        if not self.saturates():
            return nn.Identity()
        lo, hi = self.quantizer.clip_range(torch.float64)
        if lo.ndim and getattr(self.quantizer, "axis", None) not in (-1, None):
            raise ValueError(
                f"per-channel range along axis {self.quantizer.axis}: only the last axis is supported"
            )
        return Clamp(lo, hi, self.saturation_width * self.quantizer.grid_step(torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active():
            if getattr(self.quantizer, "calibrating", False):
                self.quantizer.observe(x)
            return self.saturate(x) if (self.smooth and self.enabled) else x
        return self.quantize(x)

    def extra_repr(self) -> str:
        return f"branch={self.branch!r}, enabled={self.enabled}, smooth={self.smooth}"


class VectorFeatureQuantizer(ActivationQuantizer):
    """Quantizer of ``chi`` (N, M): MDDQ on the degree-1 block, per-tensor symmetric on degrees >= 2.

    Parameters
    ----------
    degrees : sequence of int
        The model's degrees (block order of ``chi``).
    codebook : spherequant.codebook.Codebook or None
        Direction codebook; None for a k-means codebook fitted by :meth:`fit_codebook` after calibration.
    codebook_size : int
        K (used by the k-means fit).
    magnitude_bits, magnitude, direction_ste
        MDDQ options (``direction_ste="none"``: hard assignment, used by the SVQ baseline).
    activation_bits : int
        Bits of the per-component quantizer of degree >= 2 blocks.
    seed : int
        Seed of the k-means fit.

    Examples
    --------
    >>> q = VectorFeatureQuantizer((1,), _codebook.fibonacci(64), 64, 8, "uniform", "geometric", 8)
    >>> chi = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.4, 0.0]])
    >>> out = q(chi)  # calibrating: r_max becomes 0.5
    >>> out[0].tolist(), round(float(out[1].norm()), 3)
    ([0.0, 0.0, 0.0], 0.5)
    """

    def __init__(
        self, degrees, codebook, codebook_size, magnitude_bits, magnitude, direction_ste, activation_bits,
        seed=0, max_samples=50_000,
    ):  # fmt: skip
        super().__init__(nn.Identity(), "equivariant")
        self.degrees = tuple(int(l) for l in degrees)
        self.codebook_size = int(codebook_size)
        self.seed = int(seed)
        self.max_samples = int(max_samples)
        self._mddq_options = dict(
            magnitude_bits=magnitude_bits, magnitude=magnitude, direction_ste=direction_ste
        )
        self.kmeans = codebook is None
        self._samples: list[torch.Tensor] = []
        self._n_samples = 0
        self.mddq = MDDQ(codebook if codebook is not None else _codebook.fibonacci(codebook_size),
                         **self._mddq_options)  # fmt: skip
        self.fitted = not self.kmeans
        self.blocks = nn.ModuleDict()
        self.offsets = []
        off = 0
        for l in self.degrees:
            self.offsets.append(off)
            if l != 1:
                self.blocks[str(l)] = SymmetricQuantizer(activation_bits)
            off += 2 * l + 1
        self.dim = off

    # --- calibration ---------------------------------------------------------------------------------
    @property
    def calibrating(self) -> bool:
        return self.mddq.calibrating

    def calibrate(self, mode: bool = True):
        self.mddq.calibrate(mode)
        for q in self.blocks.values():
            q.calibrate(mode)
        return self

    def freeze(self):
        return self.calibrate(False)

    def observe(self, chi: torch.Tensor) -> None:
        self._split_apply(chi, observe_only=True)

    @torch.no_grad()
    def _collect(self, v: torch.Tensor) -> None:
        if not self.kmeans or self._n_samples >= self.max_samples:
            return
        nz = v[(v != 0).any(-1)].detach().to(torch.float64).cpu()
        nz = nz[: self.max_samples - self._n_samples]
        self._samples.append(nz)
        self._n_samples += nz.shape[0]

    def fit_codebook(self) -> None:
        """Fit the k-means codebook on the collected degree-1 calibration vectors (k-means mode only)."""
        if not self.kmeans:
            return
        from spherequant.learn import spherical_kmeans

        if not self._samples:
            raise RuntimeError(
                "no non-zero degree-1 features were seen during calibration; cannot fit k-means"
            )
        data = torch.cat(self._samples).numpy()
        try:
            pts = spherical_kmeans(data, self.codebook_size, seed=self.seed)
        except ValueError as exc:
            raise ValueError(
                f"cannot fit a k-means codebook of {self.codebook_size} codewords on {data.shape[0]} "
                f"calibration vectors: {exc}; calibrate on more data or lower codebook_size"
            ) from exc
        self._set_codebook(pts)
        self._samples, self._n_samples = [], 0

    def _set_codebook(self, pts) -> None:
        old = self.mddq
        new = MDDQ(_codebook.Codebook(np.asarray(pts, dtype=np.float64), kind="kmeans"), **self._mddq_options,
                   r_max=old.r_max)  # fmt: skip
        new.calibrate(old.calibrating)
        self.mddq = new
        self.fitted = True

    def get_extra_state(self):
        pts = (
            np.asarray(self.mddq.codebook.points, dtype=np.float64) if (self.kmeans and self.fitted) else None
        )
        return {"kmeans_points": None if pts is None else torch.tensor(pts, dtype=torch.float64)}

    def set_extra_state(self, state) -> None:
        if state.get("kmeans_points") is not None:
            self._set_codebook(torch.as_tensor(state["kmeans_points"], dtype=torch.float64).numpy())

    @property
    def has_samples(self) -> bool:
        """Whether calibration vectors for the k-means fit have been collected."""
        return bool(self._samples)

    @property
    def codebook(self):
        """The direction codebook in use."""
        return self.mddq.codebook

    # --- forward -------------------------------------------------------------------------------------
    def _split_apply(self, chi, observe_only=False):
        if chi.ndim != 2 or chi.shape[1] != self.dim:
            raise ValueError(
                f"chi must have shape (N, {self.dim}) for degrees {self.degrees}, got {tuple(chi.shape)}"
            )
        parts = []
        for l, off in zip(self.degrees, self.offsets):
            block = chi[:, off : off + 2 * l + 1]
            if l == 1:
                if self.mddq.calibrating:
                    self._collect(block)
                if observe_only:
                    if self.mddq.calibrating:
                        self.mddq.observe(block)
                    parts.append(block)
                elif self.kmeans and not self.fitted:
                    if not self.mddq.calibrating:
                        raise RuntimeError(
                            "k-means codebook not fitted: run calibrate_(model, batches) first"
                        )
                    self.mddq.observe(block)
                    parts.append(block)  # pass through until the codebook exists
                else:
                    parts.append(self.mddq(block))
            else:
                q = self.blocks[str(l)]
                if observe_only:
                    if q.calibrating:
                        q.observe(block)
                    parts.append(block)
                else:
                    parts.append(q(block))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def quantize(self, chi: torch.Tensor) -> torch.Tensor:
        return self._split_apply(chi)

    def saturates(self) -> bool:
        """Whether the smooth force mode clips here: a degree-1 block and a known ``r_max`` (the magnitude
        clip commutes with rotations; blocks of degree >= 2 pass unchanged)."""
        return 1 in self.degrees and self.mddq.r_max is not None

    def saturate(self, chi: torch.Tensor) -> torch.Tensor:
        """MDDQ without its rounding on the degree-1 block (its magnitude clip), or ``chi`` where
        :meth:`saturates` is False; see :mod:`spherequant.models.saturation`."""
        if not self.saturates():
            return chi
        return clip_degree_one(chi, self.mddq.r_max, self.degrees, self._saturation_width())

    def saturation_module(self) -> nn.Module:
        """:meth:`saturate` as a plain module: :class:`~spherequant.models.saturation.DegreeOneNormClip` or
        ``nn.Identity``."""
        if not self.saturates():
            return nn.Identity()
        return DegreeOneNormClip(self.mddq.r_max, self.degrees, self._saturation_width())

    def _saturation_width(self) -> float:
        return self.saturation_width * self.mddq.top_magnitude_step

    def forward(self, chi: torch.Tensor) -> torch.Tensor:
        if not self.active():
            if self.calibrating:
                self.observe(chi)
            return self.saturate(chi) if (self.smooth and self.enabled) else chi
        return self.quantize(chi)

    def stored_codebook_bytes(self) -> int:
        """Bytes to store the codebook: 0 for generated ones (Fibonacci, icosahedral), FP32 points else."""
        kind = getattr(self.mddq.codebook, "kind", "custom")
        return 0 if kind in ("fibonacci", "icosahedral") else 12 * self.mddq.num_codewords

    def extra_repr(self) -> str:
        return (
            f"degrees={self.degrees}, K={self.mddq.num_codewords}, kmeans={self.kmeans}, "
            + super().extra_repr()
        )


def degree_protection_probability(in_degree: torch.Tensor, p_min: float, p_max: float) -> torch.Tensor:
    """Degree-Quant protection probability per node, linear in the in-degree between ``p_min`` and ``p_max``.

    Parameters
    ----------
    in_degree : torch.Tensor of shape (N,)
    p_min, p_max : float
        Probabilities of the lowest- and highest-degree node of the batch, ``0 <= p_min <= p_max <= 1``.

    Returns
    -------
    torch.Tensor of shape (N,), dtype float of ``in_degree`` (float64 for integer input)

    Examples
    --------
    >>> degree_protection_probability(torch.tensor([0, 2, 4]), 0.0, 0.2).tolist()
    [0.0, 0.1, 0.2]
    """
    d = in_degree.to(torch.float64) if not in_degree.is_floating_point() else in_degree
    if d.numel() == 0:
        return d
    lo, hi = d.min(), d.max()
    span = hi - lo
    frac = torch.where(span > 0, (d - lo) / torch.where(span > 0, span, torch.ones_like(span)), d * 0)
    return p_min + (p_max - p_min) * frac


class DegreeQuantActivation(ActivationQuantizer):
    """Activation quantizer with Degree-Quant's stochastic protection of high in-degree nodes (training only).

    ``in_degree`` (N,) is set before every layer call by a forward pre-hook installed by
    :func:`prepare_baseline`.

    Examples
    --------
    >>> q = DegreeQuantActivation(SymmetricQuantizer(2), "invariant", p_min=1.0, p_max=1.0)
    >>> q.in_degree = torch.tensor([1, 3])
    >>> x = torch.tensor([[0.3], [1.0]])
    >>> q.train()(x).tolist(), [round(v, 3) for v in q.eval()(x).flatten().tolist()]
    ([[0.30000001192092896], [1.0]], [0.0, 1.0])
    """

    #: Per-call state (set by the hook / by the last training call), not configuration: not part of the key
    #: of a traced graph (:mod:`spherequant.models.compiled`).
    scratch_attributes = ("in_degree", "last_mask")

    def __init__(self, quantizer, branch, p_min=0.0, p_max=0.1):
        super().__init__(quantizer, branch)
        self.p_min, self.p_max = (
            check_real(p_min, "p_min", minimum=0.0, maximum=1.0),
            check_real(p_max, "p_max", minimum=0.0, maximum=1.0),
        )
        if self.p_min > self.p_max:
            raise ValueError(f"p_min ({p_min}) must not exceed p_max ({p_max})")
        self.in_degree: torch.Tensor | None = None
        self.last_mask: torch.Tensor | None = None

    def forward(self, x):
        if not self.active():
            return super().forward(x)
        q = self.quantize(x)
        if not self.training:
            return q
        if self.in_degree is None or self.in_degree.shape[0] != x.shape[0]:
            raise RuntimeError("DegreeQuantActivation needs in_degree of the current graph (set by the hook)")
        p = degree_protection_probability(self.in_degree, self.p_min, self.p_max).to(x.dtype)
        keep = torch.rand(x.shape[0], device=x.device, dtype=x.dtype) < p
        self.last_mask = keep
        return torch.where(keep[:, None], x, q)


class QDropActivation(ActivationQuantizer):
    """Activation quantizer that, in training mode, keeps each element's FP value with probability ``p``.

    Examples
    --------
    >>> q = QDropActivation(SymmetricQuantizer(8), "invariant", p=0.0)
    >>> float((q.train()(torch.tensor([0.5, 1.0])) - torch.tensor([0.5, 1.0])).abs().max()) < 1e-2
    True
    """

    #: Per-call state, not configuration (see :class:`DegreeQuantActivation`).
    scratch_attributes = ("last_mask",)

    def __init__(self, quantizer, branch, p=0.5):
        super().__init__(quantizer, branch)
        self.p = check_real(p, "p", minimum=0.0, maximum=1.0)
        self.last_mask: torch.Tensor | None = None

    def forward(self, x):
        if not self.active():
            return super().forward(x)
        q = self.quantize(x)
        if not self.training:
            return q
        keep = torch.rand_like(x) < self.p
        self.last_mask = keep
        return torch.where(keep, x, q)
