"""``quantize_(model, spec)``: one entry point, one prepare handler per quantization method (torchao style).

Re-exported by :mod:`spherequant.models.gaq` (and :func:`prepare_baseline` by
:mod:`spherequant.models.baselines`). Every method goes through :func:`quantize_`: the handler of
``spec.method`` swaps the weight modules, installs the activation quantizers and attaches the
:class:`~spherequant.models.gaq.QuantizationState`; ``step="convert"`` is shared by all methods.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from spherequant import codebook as _codebook
from spherequant._validation import check_choice
from spherequant.scalar import LSQQuantizer, MinMaxQuantizer, SymmetricQuantizer

from ._fake_quant import (
    ActivationQuantizer,
    DegreeQuantActivation,
    QDropActivation,
    QuantEmbedding,
    QuantLinear,
    VectorFeatureQuantizer,
    WeightFakeQuantizer,
    branch_of,
)
from ._quant_spec import BASELINE_FORMAT_KEYS, BASELINES, QuantizationSpec, icosahedral_level, to_spec
from ._quant_state import (
    STATE_ATTR,
    QuantizationState,
    _set_submodule,
    calibrate_,
    check_model,
    observers,
    quantization_state,
    require_state,
    set_force_mode,
    set_quant_enabled,
)
from .so3krates import Attention, So3krates

__all__ = [
    "install_activation_quantizers",
    "prepare_baseline",
    "quantize_",
    "swap_weight_quantizers",
    "switch_to_cosine_attention",
]


# ----------------------------------------------------------------------------------------------------------
# module surgery shared by the handlers
# ----------------------------------------------------------------------------------------------------------
def swap_weight_quantizers(
    model: nn.Module, bits_of: Callable[[str], int], scheme: str, filter_fn, quantize_embedding: bool
) -> list[str]:
    """Replace every plain ``nn.Linear`` (and the embedding) by its fake-quant version with the bits of its
    branch (``bits_of(branch)``); returns the swapped names."""
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


def install_activation_quantizers(
    model: So3krates, make_x: Callable[[], nn.Module], make_chi: Callable[[], nn.Module]
) -> None:
    """Put ``make_x()`` at every layer's ``x_quant`` and ``make_chi()`` at its ``chi_quant``."""
    dtype, device = model.dtype, model.device
    for layer in model.layers:
        if not isinstance(layer.x_quant, nn.Identity) or not isinstance(layer.chi_quant, nn.Identity):
            raise ValueError("model already has quantizers at x_quant / chi_quant; prepare a float model")
        layer.x_quant = make_x().to(device=device, dtype=dtype)
        layer.chi_quant = make_chi().to(device=device, dtype=dtype)


def switch_to_cosine_attention(model: So3krates, tau: float | None) -> None:
    """Switch every attention block of ``model`` to cosine attention (Eq. 10) with temperature ``tau``
    (default: keep a cosine block's, ``sqrt(head_dim)`` for a switched one)."""
    for mod in model.modules():
        if not isinstance(mod, Attention):
            continue
        t = (
            tau
            if tau is not None
            else (
                float(torch.as_tensor(mod.tau).detach())
                if mod.attention == "cosine"
                else math.sqrt(mod.head_dim)
            )
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


def _attach(model: So3krates, spec: QuantizationSpec) -> QuantizationState:
    state = QuantizationState(spec)
    setattr(model, STATE_ATTR, state)
    set_force_mode(model, spec.inference.force_mode)
    return state


# ----------------------------------------------------------------------------------------------------------
# one prepare handler per method
# ----------------------------------------------------------------------------------------------------------
def _direction_codebook(fmt):
    """The generated direction codebook of the format (None: k-means, fitted at calibration)."""
    if fmt.codebook == "fibonacci":
        return _codebook.fibonacci(fmt.codebook_size)
    if fmt.codebook == "icosahedral":
        return _codebook.icosahedral(icosahedral_level(fmt.codebook_size))
    if fmt.codebook == "learned":
        from spherequant.learn import minimax_codebook  # slow to import and build; only when asked for

        return _codebook.Codebook(minimax_codebook(fmt.codebook_size, seed=fmt.seed), kind="learned")
    return None


def _prepare_gaq(model: So3krates, spec: QuantizationSpec, filter_fn) -> None:
    """GAQ (and SVQ, a GAQ format with a k-means codebook and hard assignment)."""
    fmt = spec.format
    if fmt.attention == "cosine":
        switch_to_cosine_attention(model, fmt.tau)
    swap_weight_quantizers(model, fmt.weight_bits, "symmetric", filter_fn, fmt.quantize_embedding)
    cb = _direction_codebook(fmt)

    def make_chi():
        if fmt.vector_quantizer == "per_axis":
            return ActivationQuantizer(SymmetricQuantizer(fmt.per_axis_bits), "equivariant")
        return VectorFeatureQuantizer(
            model.degrees, cb, fmt.codebook_size, fmt.magnitude_bits, fmt.magnitude,
            spec.schedule.direction_ste, fmt.activation_bits, seed=fmt.seed,
        )  # fmt: skip

    install_activation_quantizers(
        model, lambda: ActivationQuantizer(SymmetricQuantizer(fmt.activation_bits), "invariant"), make_chi
    )
    _attach(model, spec)


def _prepare_naive_int8(model: So3krates, spec: QuantizationSpec, filter_fn) -> None:
    swap_weight_quantizers(model, lambda branch: 8, "minmax", filter_fn, True)
    install_activation_quantizers(
        model,
        lambda: ActivationQuantizer(MinMaxQuantizer(8), "invariant"),
        lambda: ActivationQuantizer(MinMaxQuantizer(8), "equivariant"),
    )
    _attach(model, spec)


def _prepare_lsq(model: So3krates, spec: QuantizationSpec, filter_fn) -> None:
    fmt, bits = spec.format, spec.format.activation_bits
    swap_weight_quantizers(model, fmt.weight_bits, "lsq", filter_fn, fmt.quantize_embedding)
    install_activation_quantizers(
        model,
        lambda: ActivationQuantizer(LSQQuantizer(bits), "invariant"),
        lambda: ActivationQuantizer(LSQQuantizer(bits), "equivariant"),
    )
    _attach(model, spec)


def _set_in_degree(layer, args):
    x, i = args[0], args[5]
    deg = torch.bincount(i, minlength=x.shape[0])
    layer.x_quant.in_degree = deg
    layer.chi_quant.in_degree = deg


# the in-degree is read in training mode only (the protection masks): an eval-mode trace may skip the hook
_set_in_degree.inert_in_eval = True


def _prepare_degree_quant(model: So3krates, spec: QuantizationSpec, filter_fn) -> None:
    fmt, opts = spec.format, spec.method_options
    swap_weight_quantizers(model, fmt.weight_bits, "symmetric", filter_fn, fmt.quantize_embedding)

    def make(branch):
        sq = SymmetricQuantizer(fmt.activation_bits, method="percentile", percentile=opts["percentile"])
        return DegreeQuantActivation(sq, branch, p_min=opts["p_min"], p_max=opts["p_max"])

    install_activation_quantizers(model, lambda: make("invariant"), lambda: make("equivariant"))
    state = _attach(model, spec)
    state.hooks["degree"] = [layer.register_forward_pre_hook(_set_in_degree) for layer in model.layers]


def _prepare_qdrop(model: So3krates, spec: QuantizationSpec, filter_fn) -> None:
    fmt, p = spec.format, spec.method_options["p"]
    swap_weight_quantizers(model, fmt.weight_bits, "symmetric", filter_fn, fmt.quantize_embedding)
    install_activation_quantizers(
        model,
        lambda: QDropActivation(SymmetricQuantizer(fmt.activation_bits), "invariant", p=p),
        lambda: QDropActivation(SymmetricQuantizer(fmt.activation_bits), "equivariant", p=p),
    )
    _attach(model, spec)


_PREPARE = {
    "gaq": _prepare_gaq,
    "svq_kmeans": _prepare_gaq,
    "naive_int8": _prepare_naive_int8,
    "lsq": _prepare_lsq,
    "degree_quant": _prepare_degree_quant,
    "qdrop": _prepare_qdrop,
}


def _convert(model: So3krates) -> None:
    state = require_state(model)
    if state.step == "converted":
        return
    for obs in observers(model):
        obs.freeze()
    for m in model.modules():
        if isinstance(m, VectorFeatureQuantizer) and m.kmeans and not m.fitted and m.has_samples:
            m.fit_codebook()
    set_quant_enabled(model, "equivariant", True)
    set_quant_enabled(model, "invariant", True)
    for m in model.modules():
        if isinstance(m, WeightFakeQuantizer):
            m.convert()
    state.step = "converted"


def quantize_(model: So3krates, spec: QuantizationSpec, step: str = "prepare", filter_fn=None) -> So3krates:
    """Quantize ``model`` in place as ``spec`` says (torchao style): ``"prepare"`` for QAT, then
    ``"convert"``.

    ``"prepare"`` runs the handler of ``spec.method``. GAQ: switch to cosine attention
    (``spec.format.attention``), replace every ``nn.Linear`` (for which ``filter_fn(module, qualified_name)``
    is true, default all) by a :class:`~spherequant.models.gaq.QuantLinear` with its branch's bits, the
    embedding by a :class:`~spherequant.models.gaq.QuantEmbedding`, and install an
    :class:`~spherequant.models.gaq.ActivationQuantizer` at every ``x_quant`` and a
    :class:`~spherequant.models.gaq.VectorFeatureQuantizer` at every ``chi_quant`` (observers in
    calibration mode; call :func:`~spherequant.models.gaq.calibrate_` next). The baselines install their
    own modules (:mod:`spherequant.models.baselines`). The spec is attached to the model unchanged
    (:func:`~spherequant.models.gaq.quantization_spec`). ``"convert"``: freeze the observers, enable every
    quantizer and store integer weight codes + scales instead of float weights (idempotent).

    Parameters
    ----------
    model : So3krates
    spec : QuantizationSpec
        (A deprecated :class:`~spherequant.models.gaq.GAQConfig` is accepted and converted.) With
        ``"convert"`` it is only type-checked: the model converts as its own spec says.
    step : {"prepare", "convert"}
    filter_fn : callable(module, name) -> bool, optional

    Returns
    -------
    So3krates
        The same object.

    Examples
    --------
    >>> from spherequant.models.gaq import QuantizationSpec
    >>> m = So3krates(num_features=8, num_layers=1, num_heads=2, degrees=(1,), num_rbf=4, max_z=9)
    >>> _ = quantize_(m, QuantizationSpec.from_options("gaq", codebook_size=64), step="prepare")
    >>> q = m.layers[0].geometric_block.attention.query
    >>> type(q).__name__, q.bits, q.branch
    ('QuantLinear', 4, 'equivariant')
    """
    check_model(model)
    spec = to_spec(spec, "spec")
    check_choice(step, "step", ("prepare", "convert"))
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError("filter_fn must be callable(module, name) -> bool or None")
    if step == "prepare":
        if quantization_state(model) is not None:
            raise ValueError("model is already prepared; quantize_ a fresh float model")
        _PREPARE[spec.method](model, spec, filter_fn)
        return model
    _convert(model)
    return model


def prepare_baseline(
    model: So3krates,
    name: str,
    calibration_batches=None,
    *,
    config: QuantizationSpec | None = None,
    **options,
) -> So3krates:
    """Prepare ``model`` in place as the baseline ``name`` and calibrate it; returns it.

    The same as ``quantize_(model, QuantizationSpec.from_options(name, **bits, **options))`` followed by
    :func:`~spherequant.models.gaq.calibrate_` on ``calibration_batches`` (when given).

    Parameters
    ----------
    model : So3krates
        A float model (not yet prepared).
    name : {"naive_int8", "svq_kmeans", "degree_quant", "lsq", "qdrop"}
    calibration_batches : iterable, optional
        As for :func:`~spherequant.models.gaq.calibrate_`; required by "naive_int8" and "svq_kmeans".
    config : QuantizationSpec, optional
        Its bit budget (weight bits per branch, activation bits, embedding switch, seed) is used; default
        that of ``QuantizationSpec()``. (A deprecated ``GAQConfig`` is accepted.)
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
    check_model(model)
    check_choice(name, "name", BASELINES)
    base = QuantizationSpec() if config is None else to_spec(config)
    bits = {k: v for k, v in base.flat_options().items() if k in BASELINE_FORMAT_KEYS}
    try:
        spec = QuantizationSpec.from_options(name, **bits, **options)
    except ValueError as err:
        if str(err).startswith("unknown option"):
            raise TypeError(str(err)) from None
        raise
    if name in ("naive_int8", "svq_kmeans") and calibration_batches is None:
        raise ValueError(f"baseline {name!r} is calibrated post-training: give calibration_batches")
    quantize_(model, spec)
    if calibration_batches is not None:
        calibrate_(model, calibration_batches)
    return model
