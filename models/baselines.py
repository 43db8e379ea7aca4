r"""The five quantization baselines of the GAQ paper, each a configuration of the :mod:`.gaq` harness.

:func:`prepare_baseline` returns the prepared (fake-quantized) model; ``quantize_(model, config,
step="convert")`` of :mod:`.gaq` converts any of them. Bit budgets follow the ``GAQConfig`` given (default:
4-bit weights in the equivariant branch, 8-bit in the invariant branch, 8-bit activations) wherever the
method allows:

``"naive_int8"``
    Post-training quantization, calibration only (no training): per-tensor asymmetric min-max INT8 on every
    weight (both branches, embedding included) and on every activation; ``chi`` is quantized as
    independent scalars (one min-max range over all its components). Ignores the GAQ weight bits (8 bits
    everywhere, as the paper's naive INT8 row). Needs calibration batches.
``"svq_kmeans"``
    Hard vector quantization of the degree-1 features: MDDQ whose direction codebook is a spherical k-means
    codebook (``codebook_size`` codewords, default 256) fitted per layer on calibration activations, with no
    gradient through the assignment (``direction_ste="none"``; the magnitude keeps its STE). Attention mode
    unchanged, no LEE term. Weights as GAQ. Needs calibration batches.
``"degree_quant"``
    Degree-Quant (Tailor et al. 2020): symmetric per-tensor activation quantizers with percentile ranges
    (``percentile``, default 99.9 of ``|x|``; Degree-Quant's momentum min/max percentiles are replaced by this
    symmetric form) and, in training mode only, stochastic protection: node ``i`` keeps its full-precision
    ``x_i`` and ``chi_i`` with probability ``p_i = p_min + (p_max - p_min) (d_i - d_lo) / (d_hi - d_lo)``, a
    linear function of its in-degree ``d_i`` within the batch (``p_min = 0``, ``p_max = 0.1`` by default;
    ``p_min`` everywhere when all degrees are equal). In eval mode every node is quantized. ``chi``
    components are independent scalars (24 bits per vector instead of GAQ's MDDQ budget).
``"lsq"``
    Learned step size quantization (Esser et al. 2020): per-output-channel learned weight steps at the GAQ
    branch bits, per-tensor learned steps for ``x`` and for ``chi`` (components as scalars, 8 bits each).
``"qdrop"``
    QDrop (Wei et al. 2022): symmetric per-tensor activation quantizers (max-abs observers) and
    per-channel symmetric weights at the GAQ bits; in training mode each activation element keeps its
    full-precision value with probability ``p`` (default 0.5); in eval mode everything is quantized.
    ``chi`` components are scalars.

Calibration batches are optional for the three QAT baselines (observers then calibrate on the first
training batches; LSQ initialises its steps on the first call) and required for the two PTQ-style ones.
"""

from __future__ import annotations

import math
import numbers

import torch

from spherequant.quantize import LSQQuantizer, MinMaxQuantizer, SymmetricQuantizer

from .gaq import (
    _STATE_ATTR,
    ActivationQuantizer,
    GAQConfig,
    _check_model,
    _install_activation_quantizers,
    _swap_weights,
    calibrate_,
    quantize_,
    set_force_mode,
)
from .so3krates import So3krates

__all__ = [
    "BASELINES",
    "DegreeQuantActivation",
    "QDropActivation",
    "degree_protection_probability",
    "prepare_baseline",
]

BASELINES = ("naive_int8", "svq_kmeans", "degree_quant", "lsq", "qdrop")
_OPTIONS = {
    "naive_int8": {},
    "svq_kmeans": {"codebook_size": 256, "magnitude_bits": 8},
    "degree_quant": {"p_min": 0.0, "p_max": 0.1, "percentile": 99.9},
    "lsq": {},
    "qdrop": {"p": 0.5},
}


def _prob(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


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

    def __init__(self, quantizer, branch, p_min=0.0, p_max=0.1):
        super().__init__(quantizer, branch)
        self.p_min, self.p_max = _prob("p_min", p_min), _prob("p_max", p_max)
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

    def __init__(self, quantizer, branch, p=0.5):
        super().__init__(quantizer, branch)
        self.p = _prob("p", p)
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


def _set_in_degree(layer, args):
    x, i = args[0], args[5]
    deg = torch.bincount(i, minlength=x.shape[0])
    layer.x_quant.in_degree = deg
    layer.chi_quant.in_degree = deg


def prepare_baseline(
    model: So3krates, name: str, calibration_batches=None, *, config: GAQConfig | None = None, **options
) -> So3krates:
    """Prepare ``model`` in place as the baseline ``name`` (module docstring); returns it.

    Parameters
    ----------
    model : So3krates
        A float model (not yet prepared).
    name : {"naive_int8", "svq_kmeans", "degree_quant", "lsq", "qdrop"}
    calibration_batches : iterable, optional
        As for :func:`~spherequant.models.gaq.calibrate_`; required by "naive_int8" and "svq_kmeans".
    config : GAQConfig, optional
        Bit budget (weights per branch, activation bits); default ``GAQConfig()``.
    **options
        "svq_kmeans": ``codebook_size`` (256), ``magnitude_bits`` (8); "degree_quant": ``p_min`` (0),
        ``p_max`` (0.1), ``percentile`` (99.9); "qdrop": ``p`` (0.5).

    Examples
    --------
    >>> m = So3krates(num_features=8, num_layers=1, num_heads=2, degrees=(1,), num_rbf=4, max_z=9)
    >>> _ = prepare_baseline(m, "qdrop", p=0.5)
    >>> type(m.layers[0].x_quant).__name__, m.layers[0].feature_block.value.bits
    ('QDropActivation', 8)
    """
    _check_model(model)
    if name not in BASELINES:
        raise ValueError(f"name must be one of {', '.join(map(repr, BASELINES))}; got {name!r}")
    cfg = GAQConfig() if config is None else config
    if not isinstance(cfg, GAQConfig):
        raise TypeError(f"config must be a GAQConfig or None, got {type(cfg).__name__}")
    unknown = sorted(set(options) - set(_OPTIONS[name]))
    if unknown:
        raise TypeError(f"unknown options for {name!r}: {unknown}; allowed: {sorted(_OPTIONS[name])}")
    opts = {**_OPTIONS[name], **options}
    if name in ("naive_int8", "svq_kmeans") and calibration_batches is None:
        raise ValueError(f"baseline {name!r} is calibrated post-training: give calibration_batches")
    if getattr(model, _STATE_ATTR, None) is not None:
        raise ValueError("model is already prepared; use a fresh float model")
    bits = cfg.activation_bits

    if name == "svq_kmeans":
        svq = GAQConfig(
            weight_bits_equivariant=cfg.weight_bits_equivariant,
            weight_bits_invariant=cfg.weight_bits_invariant,
            activation_bits=bits,
            codebook="kmeans",
            codebook_size=opts["codebook_size"],
            magnitude_bits=opts["magnitude_bits"],
            attention="keep",
            lee_weight=0.0,
            warmup_epochs=0,
            direction_ste="none",
            force_mode="ste",
            seed=cfg.seed,
        )
        quantize_(model, svq, step="prepare")
        getattr(model, _STATE_ATTR)["method"] = name
        calibrate_(model, calibration_batches)
        return model

    if name == "naive_int8":
        _swap_weights(model, lambda branch: 8, "minmax", None, True)
        _install_activation_quantizers(
            model,
            lambda: ActivationQuantizer(MinMaxQuantizer(8), "invariant"),
            lambda: ActivationQuantizer(MinMaxQuantizer(8), "equivariant"),
        )
    elif name == "lsq":
        _swap_weights(model, cfg.weight_bits, "lsq", None, cfg.quantize_embedding)
        _install_activation_quantizers(
            model,
            lambda: ActivationQuantizer(LSQQuantizer(bits), "invariant"),
            lambda: ActivationQuantizer(LSQQuantizer(bits), "equivariant"),
        )
    elif name == "degree_quant":
        _swap_weights(model, cfg.weight_bits, "symmetric", None, cfg.quantize_embedding)

        def make(branch):
            sq = SymmetricQuantizer(bits, method="percentile", percentile=opts["percentile"])
            return DegreeQuantActivation(sq, branch, p_min=opts["p_min"], p_max=opts["p_max"])

        _install_activation_quantizers(model, lambda: make("invariant"), lambda: make("equivariant"))
    else:  # qdrop
        _swap_weights(model, cfg.weight_bits, "symmetric", None, cfg.quantize_embedding)
        _install_activation_quantizers(
            model,
            lambda: QDropActivation(SymmetricQuantizer(bits), "invariant", p=opts["p"]),
            lambda: QDropActivation(SymmetricQuantizer(bits), "equivariant", p=opts["p"]),
        )
    state = {"config": cfg, "step": "prepared", "method": name, "options": opts}
    setattr(model, _STATE_ATTR, state)
    if name == "degree_quant":
        state["degree_hooks"] = [layer.register_forward_pre_hook(_set_in_degree) for layer in model.layers]
    set_force_mode(model, "ste")
    if calibration_batches is not None:
        calibrate_(model, calibration_batches)
    return model
