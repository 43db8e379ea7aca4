r"""GAQ: geometric-aware quantization of :class:`~spherequant.models.so3krates.So3krates` (torchao style).

Usage (quantization-aware finetuning of a trained FP32 model)::

    spec = QuantizationSpec()                          # W4 equivariant / W8 invariant, A8, MDDQ on chi
    quantize_(model, spec, step="prepare")             # fake-quant modules, cosine attention
    calibrate_(model, calibration_batches)             # activation ranges (and the k-means codebook)
    sched = GAQScheduler(spec)
    for epoch in range(1, epochs + 1):
        sched.on_epoch_start(model, epoch)             # staged warm-up of the equivariant branch
        for batch in loader:
            out = model(batch.z, batch.pos, batch.batch, num_graphs=batch.num_graphs)
            loss = task_loss(out, batch) + qat_loss_terms(model, batch, spec, out=out)["loss"]
            ...
    quantize_(model, spec, step="convert")             # integer codes + scales; smaller state_dict

Layout
------
This module is the public namespace; the code lives in one private module per concept:

* ``_quant_spec``: :class:`QuantizationSpec` and its parts :class:`StorageFormat` (bits, codebook,
  magnitude), :class:`QATSchedule` (warm-up, LEE weight, direction STE, calibration batches) and
  :class:`InferenceOptions` (force mode); the deprecated flat :class:`GAQConfig`;
* ``_fake_quant``: the fake-quantization modules (:class:`QuantLinear`, :class:`QuantEmbedding`,
  :class:`ActivationQuantizer`, :class:`VectorFeatureQuantizer`, the baselines' activation quantizers);
* ``_quant_state``: what a quantized model carries (:class:`QuantizationState` at
  ``model.quantization_state``, read with :func:`quantization_spec`), calibration, switches, model size;
* ``_quant_prepare``: :func:`quantize_` with one prepare handler per method (GAQ and the baselines of
  :mod:`spherequant.models.baselines`);
* ``_qat``: the QAT schedule (:class:`GAQScheduler`) and loss term (:func:`lee_penalty`).

The spec is made once (from the YAML ``quantization:`` section, :meth:`QuantizationSpec.from_dict`) and
travels unchanged: ``quantize_(model, spec)`` attaches it to the model, checkpoints store
:meth:`QuantizationSpec.to_checkpoint`, the loader rebuilds it with :meth:`QuantizationSpec.from_checkpoint`.

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
    Weights stay quantized (so the stored model is W4/W8), and every activation quantizer keeps its
    clipping but drops its rounding: it acts as its saturation (:mod:`spherequant.models.saturation`: the
    clamp to the grid's range for the invariant features, the magnitude clip at ``r_max`` for MDDQ, each
    with its corners rounded over half a grid step so that the energy stays infinitely differentiable; a
    per-component quantizer of the vector features, which has no rotation-commuting clamp, acts as the
    identity). The reported energy ``E_s`` is then a smooth function of ``R`` and the forces
    ``F = -dE_s/dR`` are its exact gradient (conservative; verified against central finite differences).
    Every saturation commutes with rotations, so ``E_s`` and ``F`` are *exactly* invariant and equivariant
    (LEE at floating-point round-off). Keeping the clipping matters: QAT trains a network that relies on it
    (activations grow past the calibrated range while training), and with the identity instead the shipped
    GAQ model's test force error grew several-fold, while each saturation lies within
    ``(1/2 + ln 2 / 2)`` steps of its quantizer's output (the figures: ``benchmarks/force_modes.py``).
    The activation-quantized energy ``E_q`` is
    reported beside it (key ``"energy_quantized"``, eval mode only, one extra gradient-free pass), so the
    cost of quantizing stored/communicated features is visible as ``|E_q - E_s|``. MD does not read it and
    switches the extra pass off (:func:`quantized_energy_report`).

Consequence: a model trained with ``"ste"`` and deployed with ``"smooth"`` runs its MD on the
weight-quantized network with saturated activations, not on the fully quantized one; the activation
rounding is a storage and communication format whose error is reported, not a part of the dynamics.
:func:`set_force_mode` switches a prepared model between the two; the spec's ``inference.force_mode`` is
the mode it starts in.

LEE regularisation
------------------
:func:`lee_penalty` draws one Haar-random rotation per graph and returns
``mean over atoms ||F(R x) - R F(x)||^2`` (eV^2/Angstrom^2; the squared norm, so that it is smooth at 0 and
has the units of the force MSE times 3). :func:`qat_loss_terms` returns ``lee_weight`` times it for the
training loss (``spec.schedule.lee_weight``).
"""

from __future__ import annotations

from ._fake_quant import (
    ActivationQuantizer,
    QuantEmbedding,
    QuantLinear,
    VectorFeatureQuantizer,
    WeightFakeQuantizer,
    branch_of,
)
from ._qat import GAQScheduler, haar_rotations, lee_penalty, qat_loss_terms
from ._quant_prepare import quantize_
from ._quant_spec import (
    BRANCHES,
    CODEBOOK_FAMILIES,
    FORCE_MODES,
    GAQ_OPTION_KEYS,
    METHODS,
    WEIGHT_SCHEMES,
    GAQConfig,
    InferenceOptions,
    QATSchedule,
    QuantizationSpec,
    StorageFormat,
)
from ._quant_state import (
    QuantizationState,
    branches_enabled,
    calibrate_,
    model_size_bytes,
    quantization_spec,
    quantization_state,
    quantized_energy,
    quantized_energy_report,
    set_force_mode,
    set_quant_enabled,
    size_breakdown,
    smooth_float_model,
)

__all__ = [
    "BRANCHES",
    "CODEBOOK_FAMILIES",
    "FORCE_MODES",
    "GAQ_OPTION_KEYS",
    "METHODS",
    "WEIGHT_SCHEMES",
    "ActivationQuantizer",
    "GAQConfig",
    "GAQScheduler",
    "InferenceOptions",
    "QATSchedule",
    "QuantEmbedding",
    "QuantLinear",
    "QuantizationSpec",
    "QuantizationState",
    "StorageFormat",
    "VectorFeatureQuantizer",
    "WeightFakeQuantizer",
    "branch_of",
    "branches_enabled",
    "calibrate_",
    "haar_rotations",
    "lee_penalty",
    "model_size_bytes",
    "qat_loss_terms",
    "quantization_spec",
    "quantization_state",
    "quantize_",
    "quantized_energy",
    "quantized_energy_report",
    "set_force_mode",
    "set_quant_enabled",
    "size_breakdown",
    "smooth_float_model",
]
