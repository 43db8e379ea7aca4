r"""GAQ: geometric-aware quantization of :class:`~spherequant.models.so3krates.So3krates` (torchao style).

Usage (quantization-aware finetuning of a trained FP32 model)::

    cfg = GAQConfig()                                  # W4 equivariant / W8 invariant, A8, MDDQ on chi
    quantize_(model, cfg, step="prepare")              # fake-quant modules, cosine attention
    calibrate_(model, calibration_batches)             # activation ranges (and the k-means codebook)
    sched = GAQScheduler(cfg)
    for epoch in range(1, epochs + 1):
        sched.on_epoch_start(model, epoch)             # staged warm-up of the equivariant branch
        for batch in loader:
            out = model(batch.z, batch.pos, batch.batch, num_graphs=batch.num_graphs)
            loss = task_loss(out, batch) + qat_loss_terms(model, batch, cfg, out=out)["loss"]
            ...
    quantize_(model, cfg, step="convert")              # integer codes + scales; smaller state_dict

Branches
--------
The *equivariant branch* is everything that writes the equivariant features ``chi``: the ``nn.Linear``
modules inside every ``layers[k].geometric_block`` (its filter network, query/key projections and, in cosine
mode, the logit bias) and the vector-feature quantizers at ``layers[k].chi_quant``. Its weights default to
4 bits. The *invariant branch* is the rest: the embedding table, every ``feature_block`` and
``exchange_block`` linear layer, the ``energy_mlp`` readout and the scalar-feature quantizers at
``layers[k].x_quant``; weights default to 8 bits. Weights are quantized symmetrically per output channel
(per row of ``nn.Linear.weight``; per element row of the embedding table) with levels
``-(2^(b-1) - 1) .. 2^(b-1) - 1`` times a max-abs scale, with a straight-through gradient to the float
weight (which stays the trainable parameter until ``convert``).

Activations: ``x`` (N, F) gets a per-tensor symmetric ``activation_bits`` quantizer (max-abs EMA observer);
the degree-1 block of ``chi`` (an ordinary 3-vector per atom) gets MDDQ (Def. 3.1): magnitude
``magnitude_bits`` (uniform or log levels up to a calibrated ``r_max``) times the nearest codeword of a
direction codebook of ``codebook_size`` points, with the geometric STE backward. Blocks of degree ``l >= 2``
(absent from the paper's degree-1 model) are quantized per component with a per-tensor symmetric
``activation_bits`` quantizer: an MDDQ on ``S^(2l)`` would need a codebook with a useful covering radius in
4+ dimensions, which costs far more codewords than the bit budget allows. These components are therefore
*not* equivariance-preserving; use ``degrees=(1,)`` (the paper's GAQ model) for the guarantees below.

Forces of a quantized model (``force_mode``)
--------------------------------------------
With quantized activations the energy ``E_q(R)`` is piecewise constant in the positions ``R``: its true
gradient is 0 almost everywhere and undefined on the code boundaries. Two consistent choices are offered:

``"ste"`` (what QAT trains)
    Energy ``E_q`` (all quantizers active) and forces ``-dE/dR`` by autograd through the fake-quantized
    network, where every quantizer's derivative is its straight-through surrogate. These forces are *not*
    the gradient of the reported energy (finite differences of ``E_q`` are 0 or jumps), so the force field
    is not conservative: ``F . dR`` does not integrate to ``-dE_q``, and NVE energy is not conserved by
    construction. The test suite measures the mismatch.

``"smooth"`` (for MD and for reporting conservative forces)
    Weights stay quantized (so the stored model is W4/W8), but every activation quantizer is replaced by
    the identity in the forward pass. The reported energy ``E_s`` is then a smooth function of ``R`` and the
    forces ``F = -dE_s/dR`` are its exact gradient (conservative; verified against central finite
    differences). Because weight quantization does not touch the architecture, ``E_s`` and ``F`` are
    *exactly* equivariant (LEE at floating-point round-off). The activation-quantized energy ``E_q`` is
    reported beside it (key ``"energy_quantized"``, eval mode only, one extra gradient-free pass), so the
    cost of quantizing stored/communicated features is visible as ``|E_q - E_s|``.

Consequence: a model trained with ``"ste"`` and deployed with ``"smooth"`` runs its MD on the
weight-quantized network, not on the fully quantized one; the activation formats are a storage and
communication format whose error is reported, not a part of the dynamics. :func:`set_force_mode` switches
a prepared model between the two.

LEE regularisation
------------------
:func:`lee_penalty` draws one Haar-random rotation per graph and returns
``mean over atoms ||F(R x) - R F(x)||^2`` (eV^2/Angstrom^2; the squared norm, so that it is smooth at 0 and
has the units of the force MSE times 3). :func:`qat_loss_terms` returns ``lee_weight`` times it for the
training loss.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spherequant import codebook as _codebook
from spherequant.quantize import (
    MDDQ,
    SymmetricQuantizer,
    fake_quantize_lsq,
    fake_quantize_minmax,
    fake_quantize_symmetric,
    minmax_params,
    symmetric_scale,
)

from .so3krates import So3krates, _Attention

__all__ = [
    "ActivationQuantizer",
    "GAQConfig",
    "GAQScheduler",
    "QuantEmbedding",
    "QuantLinear",
    "VectorFeatureQuantizer",
    "branch_of",
    "calibrate_",
    "lee_penalty",
    "model_size_bytes",
    "qat_loss_terms",
    "quantize_",
    "quantized_energy",
    "set_force_mode",
    "set_quant_enabled",
    "size_breakdown",
]

BRANCHES = ("equivariant", "invariant")
CODEBOOK_FAMILIES = ("fibonacci", "icosahedral", "learned", "kmeans")
FORCE_MODES = ("ste", "smooth")
WEIGHT_SCHEMES = ("symmetric", "minmax", "lsq")
_STATE_ATTR = "_gaq_state"


# ----------------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------------
def _int(name, value, lo, hi=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {rng}, got {value}")
    return int(value)


def _real(name, value, *, positive=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(
            f"{name} must be {'positive' if positive else 'non-negative'} and finite, got {value}"
        )
    return value


def _choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def _icosahedral_level(k: int) -> int | None:
    for level in range(11):
        if 10 * 4**level + 2 == k:
            return level
    return None


@dataclass
class GAQConfig:
    """Options of geometric-aware quantization (validated on construction).

    Parameters
    ----------
    weight_bits_equivariant : int
        Weight bits of the equivariant branch (geometric blocks), 2 to 8. Default 4.
    weight_bits_invariant : int
        Weight bits of the invariant branch (embedding, feature and exchange blocks, energy readout), 2 to 8.
        Default 8.
    activation_bits : int
        Bits of the symmetric per-tensor quantizer of ``x`` (and of chi blocks of degree >= 2), 2 to 16.
    codebook : {"fibonacci", "icosahedral", "learned", "kmeans"}
        Direction codebook of the MDDQ on the degree-1 block of chi. ``"learned"`` is the minimax covering
        codebook of :func:`spherequant.learn.minimax_codebook` (slow to build for large sizes, then cached);
        ``"kmeans"`` a spherical k-means codebook per layer fitted on the calibration activations.
    codebook_size : int
        Number of codewords K (``10 4^level + 2`` for ``"icosahedral"``, >= 4 for ``"learned"``).
    magnitude_bits : int
        Bits of the MDDQ magnitude code, 2 to 16.
    magnitude : {"uniform", "log"}
        Magnitude level spacing.
    attention : {"cosine", "keep"}
        Switch every attention block to cosine attention (Eq. 10) at prepare, or keep the model's mode.
    tau : float, optional
        Cosine-attention temperature; default: keep the model's, or ``sqrt(head_dim)`` when switching.
    lee_weight : float
        Weight of :func:`lee_penalty` in :func:`qat_loss_terms` (0 disables it).
    warmup_epochs : int
        Epochs (1-based, ``epoch <= warmup_epochs``) during which the equivariant branch's quantization is
        disabled by :class:`GAQScheduler`.
    direction_ste : {"geometric", "plain", "none"}
        Backward pass of the MDDQ direction (``"none"``: hard assignment, the SVQ baseline).
    force_mode : {"ste", "smooth"}
        Which energy and forces the quantized model reports (module docstring).
    quantize_embedding : bool
        Quantize the embedding table (invariant branch) too.
    vector_quantizer : {"mddq", "per_axis"}
        How ``chi`` is quantized: MDDQ on its degree-1 block (GAQ), or ``"per_axis"`` (ablation): every
        component of ``chi`` as an independent scalar, symmetric per tensor, with
        ``ceil(bits_per_vector / 3)`` bits per component (21 bits per vector for MDDQ's 8 + 12); the codebook
        and magnitude options are then unused.
    seed : int
        Seed of the k-means codebook fit.

    Examples
    --------
    >>> cfg = GAQConfig(codebook="icosahedral", codebook_size=642)
    >>> cfg.bits_per_vector
    18
    >>> GAQConfig(codebook_size=100, codebook="icosahedral")
    Traceback (most recent call last):
    ...
    ValueError: codebook_size for 'icosahedral' must be 10 * 4**level + 2 (12, 42, 162, 642, ...), got 100
    """

    weight_bits_equivariant: int = 4
    weight_bits_invariant: int = 8
    activation_bits: int = 8
    codebook: str = "fibonacci"
    codebook_size: int = 4096
    magnitude_bits: int = 8
    magnitude: str = "uniform"
    attention: str = "cosine"
    tau: float | None = None
    lee_weight: float = 0.1
    warmup_epochs: int = 10
    direction_ste: str = "geometric"
    force_mode: str = "ste"
    quantize_embedding: bool = True
    vector_quantizer: str = "mddq"
    seed: int = 0

    def __post_init__(self):
        self.weight_bits_equivariant = _int("weight_bits_equivariant", self.weight_bits_equivariant, 2, 8)
        self.weight_bits_invariant = _int("weight_bits_invariant", self.weight_bits_invariant, 2, 8)
        self.activation_bits = _int("activation_bits", self.activation_bits, 2, 16)
        _choice("codebook", self.codebook, CODEBOOK_FAMILIES)
        self.codebook_size = _int("codebook_size", self.codebook_size, 1, 10**7)
        if self.codebook == "icosahedral" and _icosahedral_level(self.codebook_size) is None:
            raise ValueError(
                "codebook_size for 'icosahedral' must be 10 * 4**level + 2 (12, 42, 162, 642, ...), "
                f"got {self.codebook_size}"
            )
        if self.codebook == "learned" and self.codebook_size < 4:
            raise ValueError(f"codebook_size for 'learned' must be >= 4, got {self.codebook_size}")
        self.magnitude_bits = _int("magnitude_bits", self.magnitude_bits, 2, 16)
        _choice("magnitude", self.magnitude, ("uniform", "log"))
        _choice("attention", self.attention, ("cosine", "keep"))
        if self.tau is not None:
            self.tau = _real("tau", self.tau, positive=True)
        self.lee_weight = _real("lee_weight", self.lee_weight)
        self.warmup_epochs = _int("warmup_epochs", self.warmup_epochs, 0)
        _choice("direction_ste", self.direction_ste, ("geometric", "plain", "none"))
        _choice("force_mode", self.force_mode, FORCE_MODES)
        if not isinstance(self.quantize_embedding, bool):
            raise TypeError(
                f"quantize_embedding must be a bool, got {type(self.quantize_embedding).__name__}"
            )
        _choice("vector_quantizer", self.vector_quantizer, ("mddq", "per_axis"))
        if self.vector_quantizer == "per_axis" and self.codebook == "kmeans":
            raise ValueError("vector_quantizer 'per_axis' has no codebook; codebook 'kmeans' makes no sense")
        self.seed = _int("seed", self.seed, 0)

    @property
    def per_axis_bits(self) -> int:
        """Bits per component of the ``"per_axis"`` ablation: ``ceil(bits_per_vector / 3)``."""
        return -(-self.bits_per_vector // 3)

    @property
    def bits_per_vector(self) -> int:
        """MDDQ bits of one degree-1 feature vector: ``magnitude_bits + ceil(log2 K)``."""
        return self.magnitude_bits + (self.codebook_size - 1).bit_length()

    def weight_bits(self, branch: str) -> int:
        """Weight bits of ``branch`` ("equivariant" or "invariant")."""
        _choice("branch", branch, BRANCHES)
        return self.weight_bits_equivariant if branch == "equivariant" else self.weight_bits_invariant

    def to_dict(self) -> dict:
        """Plain dict of the options (for checkpoints)."""
        return asdict(self)


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
class _WeightQuantMixin:
    """Shared weight fake quantization (symmetric per-channel, min-max per-tensor, LSQ per-channel)."""

    def _init_quant(self, bits: int, branch: str, scheme: str):
        self.bits = _int("bits", bits, 2, 8)
        self.branch = _choice("branch", branch, BRANCHES)
        self.scheme = _choice("scheme", scheme, WEIGHT_SCHEMES)
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
        step = self.step.detach().to(w.dtype)
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
        return fake_quantize_lsq(
            w, self.step, self.bits, signed=True, grad_scale=1.0 / math.sqrt(w[0].numel() * qp)
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


class QuantLinear(_WeightQuantMixin, nn.Linear):
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


class QuantEmbedding(_WeightQuantMixin, nn.Embedding):
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

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.fake_quantized_weight(), self.padding_idx)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self._quant_repr()}"


# ----------------------------------------------------------------------------------------------------------
# activation quantizers
# ----------------------------------------------------------------------------------------------------------
class ActivationQuantizer(nn.Module):
    """Hook-point module wrapping a scalar fake quantizer, with the switches of the QAT schedule.

    ``enabled=False`` (warm-up) or ``smooth=True`` (``force_mode="smooth"``) make it the identity; while
    the inner quantizer is calibrating it still observes.

    Parameters
    ----------
    quantizer : nn.Module
        E.g. :class:`~spherequant.quantize.SymmetricQuantizer`, ``MinMaxQuantizer``, ``LSQQuantizer``.
    branch : {"equivariant", "invariant"}

    Examples
    --------
    >>> q = ActivationQuantizer(SymmetricQuantizer(8), "invariant")
    >>> [round(v, 4) for v in q(torch.tensor([[0.5, -1.27]]))[0].tolist()]
    [0.5, -1.27]
    """

    def __init__(self, quantizer: nn.Module, branch: str):
        super().__init__()
        self.quantizer = quantizer
        self.branch = _choice("branch", branch, BRANCHES)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active():
            if getattr(self.quantizer, "calibrating", False):
                self.quantizer.observe(x)
            return x
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
        pts = self.mddq._points if (self.kmeans and self.fitted) else None
        return {"kmeans_points": None if pts is None else torch.tensor(pts, dtype=torch.float64)}

    def set_extra_state(self, state) -> None:
        if state.get("kmeans_points") is not None:
            self._set_codebook(torch.as_tensor(state["kmeans_points"], dtype=torch.float64).numpy())

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

    def forward(self, chi: torch.Tensor) -> torch.Tensor:
        if not self.active():
            if self.calibrating:
                self.observe(chi)
            return chi
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


# ----------------------------------------------------------------------------------------------------------
# the harness: swapping modules, attention switch, switches
# ----------------------------------------------------------------------------------------------------------
def _check_model(model) -> So3krates:
    if not isinstance(model, So3krates):
        raise TypeError(f"model must be a So3krates, got {type(model).__name__}")
    return model


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _swap_weights(model, bits_of: Callable[[str], int], scheme: str, filter_fn, quantize_embedding: bool):
    """Replace plain nn.Linear (and the embedding) by their fake-quant versions; returns the swapped names."""
    swapped = []
    for name, mod in list(model.named_modules()):
        if type(mod) is nn.Linear and (filter_fn is None or filter_fn(mod, name)):
            branch = branch_of(name)
            _set_submodule(model, name, QuantLinear.from_linear(mod, bits_of(branch), branch, scheme))
            swapped.append(name)
        elif (type(mod) is nn.Embedding and quantize_embedding
              and (filter_fn is None or filter_fn(mod, name))):  # fmt: skip
            _set_submodule(
                model, name, QuantEmbedding.from_embedding(mod, bits_of("invariant"), "invariant", scheme)
            )
            swapped.append(name)
    return swapped


def _install_activation_quantizers(model, make_x: Callable[[], nn.Module], make_chi: Callable[[], nn.Module]):
    dtype, device = model.dtype, model.device
    for layer in model.layers:
        if not isinstance(layer.x_quant, nn.Identity) or not isinstance(layer.chi_quant, nn.Identity):
            raise ValueError("model already has quantizers at x_quant / chi_quant; prepare a float model")
        layer.x_quant = make_x().to(device=device, dtype=dtype)
        layer.chi_quant = make_chi().to(device=device, dtype=dtype)


def _switch_attention(model: So3krates, tau: float | None) -> None:
    for mod in model.modules():
        if not isinstance(mod, _Attention):
            continue
        t = (
            tau
            if tau is not None
            else (float(mod.tau) if mod.attention == "cosine" else math.sqrt(mod.head_dim))
        )
        ref = mod.query.weight
        if mod.attention != "cosine":
            width = mod.num_heads * mod.head_dim
            mod.bias = nn.Linear(width, mod.num_heads).to(device=ref.device, dtype=ref.dtype)
            nn.init.zeros_(mod.bias.weight)
            nn.init.zeros_(mod.bias.bias)
            log_tau = torch.tensor(math.log(t), dtype=ref.dtype, device=ref.device)
            if model.config.get("learnable_tau"):
                mod.log_tau = nn.Parameter(log_tau)
            else:
                mod.register_buffer("log_tau", log_tau)
            mod.eps = 1e-6
            mod.attention = "cosine"
        elif tau is not None:
            with torch.no_grad():
                mod.log_tau.fill_(math.log(t))
    model.config["attention"] = "cosine"
    if tau is not None:
        model.config["tau"] = float(tau)


def _quant_modules(model):
    return [m for m in model.modules() if isinstance(m, (_WeightQuantMixin, ActivationQuantizer))]


def _observers(model):
    out = []
    for m in model.modules():
        if isinstance(m, VectorFeatureQuantizer):
            out.append(m)
        elif isinstance(m, ActivationQuantizer) and hasattr(m.quantizer, "calibrate"):
            out.append(m.quantizer)
    return out


def _state(model) -> dict:
    state = getattr(model, _STATE_ATTR, None)
    if state is None:
        raise ValueError("model has not been prepared: call quantize_(model, config, step='prepare') first")
    return state


def quantize_(model: So3krates, config: GAQConfig, step: str = "prepare", filter_fn=None) -> So3krates:
    """Quantize ``model`` in place (torchao style): ``"prepare"`` for QAT, then ``"convert"``.

    ``"prepare"``: switch to cosine attention (``config.attention``), replace every ``nn.Linear`` (for which
    ``filter_fn(module, qualified_name)`` is true, default all) by a :class:`QuantLinear` with its branch's
    bits, the embedding by a :class:`QuantEmbedding`, and install an :class:`ActivationQuantizer` at every
    ``x_quant`` and a :class:`VectorFeatureQuantizer` at every ``chi_quant`` (observers in calibration mode;
    call :func:`calibrate_` next). ``"convert"``: freeze the observers, enable every quantizer and store
    integer weight codes + scales instead of float weights.

    Parameters
    ----------
    model : So3krates
    config : GAQConfig
    step : {"prepare", "convert"}
    filter_fn : callable(module, name) -> bool, optional

    Returns
    -------
    So3krates
        The same object.

    Examples
    --------
    >>> m = So3krates(num_features=8, num_layers=1, num_heads=2, degrees=(1,), num_rbf=4, max_z=9)
    >>> _ = quantize_(m, GAQConfig(codebook_size=64), step="prepare")
    >>> q = m.layers[0].geometric_block.attention.query
    >>> type(q).__name__, q.bits, q.branch
    ('QuantLinear', 4, 'equivariant')
    """
    _check_model(model)
    if not isinstance(config, GAQConfig):
        raise TypeError(f"config must be a GAQConfig, got {type(config).__name__}")
    _choice("step", step, ("prepare", "convert"))
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError("filter_fn must be callable(module, name) -> bool or None")
    if step == "prepare":
        if getattr(model, _STATE_ATTR, None) is not None:
            raise ValueError("model is already prepared; quantize_ a fresh float model")
        if config.attention == "cosine":
            _switch_attention(model, config.tau)
        _swap_weights(model, config.weight_bits, "symmetric", filter_fn, config.quantize_embedding)
        if config.codebook == "fibonacci":
            cb = _codebook.fibonacci(config.codebook_size)
        elif config.codebook == "icosahedral":
            cb = _codebook.icosahedral(_icosahedral_level(config.codebook_size))
        elif config.codebook == "learned":
            from spherequant.learn import minimax_codebook

            cb = _codebook.Codebook(minimax_codebook(config.codebook_size, seed=config.seed), kind="learned")
        else:
            cb = None
        _install_activation_quantizers(
            model,
            lambda: ActivationQuantizer(SymmetricQuantizer(config.activation_bits), "invariant"),
            lambda: VectorFeatureQuantizer(
                model.degrees, cb, config.codebook_size, config.magnitude_bits, config.magnitude,
                config.direction_ste, config.activation_bits, seed=config.seed,
            ) if config.vector_quantizer == "mddq" else ActivationQuantizer(
                SymmetricQuantizer(config.per_axis_bits), "equivariant"
            ),
        )  # fmt: skip
        setattr(model, _STATE_ATTR, {"config": config, "step": "prepared", "method": "gaq"})
        set_force_mode(model, config.force_mode)
        return model
    state = _state(model)
    if state["step"] == "converted":
        return model
    for obs in _observers(model):
        obs.freeze()
    for m in model.modules():
        if isinstance(m, VectorFeatureQuantizer) and m.kmeans and not m.fitted and m._samples:
            m.fit_codebook()
    set_quant_enabled(model, "equivariant", True)
    set_quant_enabled(model, "invariant", True)
    for m in model.modules():
        if isinstance(m, _WeightQuantMixin):
            m.convert()
    state["step"] = "converted"
    return model


def _unpack_batch(b):
    if isinstance(b, dict):
        return b["z"], b["pos"], b.get("batch"), b.get("num_graphs")
    if isinstance(b, (tuple, list)):
        z, pos = b[0], b[1]
        return z, pos, (b[2] if len(b) > 2 else None), None
    return b.z, b.pos, getattr(b, "batch", None), getattr(b, "num_graphs", None)


def calibrate_(model: So3krates, batches: Iterable, freeze: bool = True) -> So3krates:
    """Calibrate the activation observers on ``batches`` (energies only, no gradient), then freeze them.

    Every quantizer is switched on during calibration (warm-up and smooth switches are restored after).
    A k-means codebook (``codebook="kmeans"``) is fitted on the collected degree-1 features of each layer.

    Parameters
    ----------
    model : So3krates
        A prepared model.
    batches : iterable
        Items with ``z``, ``pos``, ``batch`` (and ``num_graphs``) attributes (``GraphBatch``), dicts with
        those keys, or tuples ``(z, pos[, batch])``.
    freeze : bool
        Freeze the observers afterwards.

    Returns
    -------
    So3krates
        The same object.
    """
    _check_model(model)
    mods = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
    saved = [(m.enabled, m.smooth) for m in mods]
    was_training = model.training
    for obs in _observers(model):
        obs.calibrate(True)
    for m in mods:
        m.enabled, m.smooth = True, False
    model.eval()
    state = _state(model)
    state["in_hook"] = True  # no extra quantized-energy passes while calibrating
    n = 0
    try:
        with torch.no_grad():
            for b in batches:
                z, pos, batch, num_graphs = _unpack_batch(b)
                model(z, pos, batch, compute_forces=False, num_graphs=num_graphs)
                n += 1
    finally:
        for m, (e, s) in zip(mods, saved):
            m.enabled, m.smooth = e, s
        model.train(was_training)
        state["in_hook"] = False
    if n == 0:
        raise ValueError("batches is empty; calibration needs at least one batch")
    for m in mods:
        if isinstance(m, VectorFeatureQuantizer):
            m.fit_codebook()
    if freeze:
        for obs in _observers(model):
            obs.freeze()
    return model


def set_quant_enabled(model: nn.Module, branch: str, enabled: bool) -> None:
    """Enable or disable every quantizer (weights and activations) of ``branch`` ("equivariant" /
    "invariant"); disabled quantizers are the identity (float weights / activations)."""
    _choice("branch", branch, BRANCHES)
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    for m in _quant_modules(model):
        if m.branch == branch:
            if not enabled and getattr(m, "converted", False):
                raise ValueError("a converted model cannot disable weight quantization")
            m.enabled = enabled


def set_force_mode(model: nn.Module, mode: str) -> None:
    """Switch a prepared model between ``force_mode="ste"`` and ``"smooth"`` (module docstring)."""
    _choice("force_mode", mode, FORCE_MODES)
    state = _state(model)
    for m in model.modules():
        if isinstance(m, ActivationQuantizer):
            m.smooth = mode == "smooth"
    handle = state.pop("hook", None)
    if handle is not None:
        handle.remove()
    if mode == "smooth":
        state["hook"] = model.register_forward_hook(_report_quantized_energy, with_kwargs=True)
    state["force_mode"] = mode


def _report_quantized_energy(module, args, kwargs, output):
    state = getattr(module, _STATE_ATTR, {})
    if module.training or state.get("in_hook"):
        return output
    z = args[0] if args else kwargs["z"]
    pos = args[1] if len(args) > 1 else kwargs["pos"]
    batch = args[2] if len(args) > 2 else kwargs.get("batch")
    output["energy_quantized"] = quantized_energy(
        module, z, pos, batch, edge_index=kwargs.get("edge_index"), num_graphs=kwargs.get("num_graphs")
    )
    return output


def quantized_energy(model, z, pos, batch=None, *, edge_index=None, num_graphs=None) -> torch.Tensor:
    """Energy ``E_q`` (B,) with every activation quantizer active (whatever the force mode); no gradient."""
    state = _state(model)
    mods = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
    saved = [m.smooth for m in mods]
    state["in_hook"] = True
    try:
        for m in mods:
            m.smooth = False
        with torch.no_grad():
            out = model(
                z, pos.detach(), batch, compute_forces=False, edge_index=edge_index, num_graphs=num_graphs
            )
    finally:
        for m, s in zip(mods, saved):
            m.smooth = s
        state["in_hook"] = False
    return out["energy"].detach()


class GAQScheduler:
    """Staged warm-up: the equivariant branch's quantization is off for epochs ``1 .. warmup_epochs``.

    Examples
    --------
    >>> m = So3krates(num_features=8, num_layers=1, num_heads=2, degrees=(1,), num_rbf=4, max_z=9)
    >>> cfg = GAQConfig(codebook_size=64, warmup_epochs=2)
    >>> _ = quantize_(m, cfg)
    >>> sched = GAQScheduler(cfg)
    >>> [sched.on_epoch_start(m, e) for e in (1, 2, 3)]
    [False, False, True]
    """

    def __init__(self, config: GAQConfig):
        if not isinstance(config, GAQConfig):
            raise TypeError(f"config must be a GAQConfig, got {type(config).__name__}")
        self.config = config

    def equivariant_enabled(self, epoch: int) -> bool:
        """Whether the equivariant branch is quantized in (1-based) ``epoch``."""
        return _int("epoch", epoch, 1) > self.config.warmup_epochs

    def on_epoch_start(self, model: nn.Module, epoch: int) -> bool:
        """Apply the schedule for ``epoch`` (1-based); returns whether the equivariant branch is quantized."""
        on = self.equivariant_enabled(epoch)
        set_quant_enabled(model, "equivariant", on)
        set_quant_enabled(model, "invariant", True)
        return on


# ----------------------------------------------------------------------------------------------------------
# LEE regularisation
# ----------------------------------------------------------------------------------------------------------
def _haar_rotations(n: int, generator: torch.Generator | None, dtype, device) -> torch.Tensor:
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    q = q / torch.linalg.vector_norm(q, dim=1, keepdim=True)
    w, x, y, z = q.unbind(1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=1,
    ).reshape(n, 3, 3)  # fmt: skip
    return rot.to(device=device, dtype=dtype)


def lee_penalty(
    model: nn.Module, batch, generator: torch.Generator | None = None, *, forces=None
) -> torch.Tensor:
    """LEE penalty ``mean over atoms ||F(R_b x) - R_b F(x)||^2`` with one Haar rotation ``R_b`` per graph.

    Differentiable with respect to the model's parameters when the model is in training mode (the model
    keeps the force graph then). Units: (eV/Angstrom)^2.

    Parameters
    ----------
    model : So3krates
    batch : GraphBatch-like
        ``z`` (N,), ``pos`` (N, 3), ``batch`` (N,), ``num_graphs``.
    generator : torch.Generator, optional
        CPU generator of the rotations (quaternions from ``torch.randn``, normalised: Haar).
    forces : torch.Tensor of shape (N, 3), optional
        ``F(x)`` already computed for this batch (saves a forward pass).

    Returns
    -------
    torch.Tensor, shape ()

    Examples
    --------
    >>> m = So3krates(num_features=8, num_layers=1, num_heads=2, degrees=(1,), num_rbf=4, max_z=9).double()
    >>> b = {"z": torch.tensor([8, 1, 1]), "pos": torch.tensor([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]],
    ...      dtype=torch.float64)}
    >>> float(lee_penalty(m.eval(), b, torch.Generator().manual_seed(0))) < 1e-20
    True
    """
    z, pos, b, num_graphs = _unpack_batch(batch)
    if b is None:
        b = torch.zeros(z.shape[0], dtype=torch.long, device=pos.device)
    b = b.long()
    if num_graphs is None:
        num_graphs = int(b.max()) + 1 if b.numel() else 0
    if z.shape[0] == 0:
        return pos.new_zeros(())
    rot = _haar_rotations(num_graphs, generator, pos.dtype, pos.device)
    r_atom = rot.index_select(0, b)
    pos0 = pos.detach()
    pos_rot = torch.einsum("nij,nj->ni", r_atom, pos0)
    if forces is None:
        forces = model(z, pos0, b, num_graphs=num_graphs)["forces"]
    f_rot = model(z, pos_rot, b, num_graphs=num_graphs)["forces"]
    diff = f_rot - torch.einsum("nij,nj->ni", r_atom, forces)
    return (diff * diff).sum(-1).mean()


def qat_loss_terms(model: nn.Module, batch, config: GAQConfig, *, out: dict | None = None,
                   generator: torch.Generator | None = None) -> dict:  # fmt: skip
    """Extra QAT loss terms for the training loop: ``{"lee": penalty, "loss": lee_weight * penalty}``.

    Wiring (in the training step, after the task loss)::

        extra = qat_loss_terms(model, b, gaq_config, out=out, generator=g)
        loss = loss + extra["loss"]

    With ``lee_weight == 0`` no extra forward pass is made and both terms are 0.

    Parameters
    ----------
    model, batch
        As for :func:`lee_penalty`.
    config : GAQConfig
    out : dict, optional
        The model's output on ``batch`` (its ``"forces"`` are reused).
    generator : torch.Generator, optional
    """
    if not isinstance(config, GAQConfig):
        raise TypeError(f"config must be a GAQConfig, got {type(config).__name__}")
    _, pos, _, _ = _unpack_batch(batch)
    if config.lee_weight == 0:
        zero = pos.new_zeros(())
        return {"lee": zero, "loss": zero}
    pen = lee_penalty(model, batch, generator, forces=None if out is None else out.get("forces"))
    return {"lee": pen, "loss": config.lee_weight * pen}


# ----------------------------------------------------------------------------------------------------------
# model size
# ----------------------------------------------------------------------------------------------------------
def size_breakdown(model: nn.Module) -> dict:
    """Bytes per branch of a (prepared or converted) model at its packed bit widths.

    Quantized weights count ``ceil(numel * bits / 8)`` plus FP32 scales (and zero points) and biases; every
    other parameter and persistent floating buffer (energy statistics, radial basis, observer ranges,
    cosine-attention temperatures) counts 4 bytes per element (FP32); stored (k-means, learned) codebooks
    count 12 bytes per codeword, generated ones (Fibonacci, icosahedral) nothing.

    Returns
    -------
    dict
        ``{"equivariant": int, "invariant": int, "other": int, "total": int}``.
    """
    out = {"equivariant": 0, "invariant": 0, "other": 0}
    quant_prefixes = set()
    for name, mod in model.named_modules():
        if isinstance(mod, _WeightQuantMixin):
            out[mod.branch] += mod.packed_bytes()
            quant_prefixes.add(name)
        elif isinstance(mod, VectorFeatureQuantizer):
            out["equivariant"] += mod.stored_codebook_bytes()
    for key, t in model.state_dict().items():
        prefix = key.rpartition(".")[0]
        if prefix in quant_prefixes or not torch.is_tensor(t) or not t.is_floating_point():
            continue
        top = key.split(".")[0]
        branch = "other" if top in ("radial_basis", "energy_shift", "energy_scale") else branch_of(prefix)
        out[branch] += 4 * t.numel()
    out["total"] = out["equivariant"] + out["invariant"] + out["other"]
    return out


def model_size_bytes(model: nn.Module, config: GAQConfig | None = None) -> int:
    """Total bytes of ``model`` at its packed bit widths (see :func:`size_breakdown`); an unquantized
    So3krates counts 4 bytes per parameter and floating buffer. ``config`` is accepted for symmetry with
    the other entry points and only type-checked.

    Examples
    --------
    >>> m = So3krates(num_features=8, num_layers=1, num_heads=2, degrees=(1,), num_rbf=4, max_z=9)
    >>> fp32 = model_size_bytes(m)
    >>> _ = quantize_(m, GAQConfig(codebook_size=64))
    >>> model_size_bytes(m) < fp32
    True
    """
    if config is not None and not isinstance(config, GAQConfig):
        raise TypeError(f"config must be a GAQConfig or None, got {type(config).__name__}")
    return size_breakdown(model)["total"]
