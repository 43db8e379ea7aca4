r"""The five quantization baselines of the GAQ paper, each a configuration of the :mod:`.gaq` harness.

Every baseline is a :class:`~spherequant.models.gaq.QuantizationSpec` with its ``method`` set
(``QuantizationSpec.from_options("qdrop", p=0.5)``) and goes through the same
:func:`~spherequant.models.gaq.quantize_` as GAQ (one prepare handler per method); :func:`prepare_baseline`
prepares and calibrates in one call, and ``quantize_(model, spec, step="convert")`` converts any of them.
Bit budgets follow the spec's :class:`~spherequant.models.gaq.StorageFormat` (default: 4-bit weights in the
equivariant branch, 8-bit in the invariant branch, 8-bit activations) wherever the method allows; the
method-specific options and their defaults are :data:`BASELINE_OPTIONS`:

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

Re-exports: the modules live in the private modules of :mod:`spherequant.models.gaq` (``_fake_quant``,
``_quant_prepare``).
"""

from __future__ import annotations

from . import _quant_spec
from ._fake_quant import DegreeQuantActivation, QDropActivation, degree_protection_probability
from ._quant_prepare import prepare_baseline

#: The five baseline methods, in the order of the study's table.
BASELINES = _quant_spec.BASELINES
#: Method-specific options of each baseline and their defaults (``{method: {option: default}}``).
BASELINE_OPTIONS = _quant_spec.BASELINE_OPTIONS

__all__ = [
    "BASELINES",
    "BASELINE_OPTIONS",
    "DegreeQuantActivation",
    "QDropActivation",
    "degree_protection_probability",
    "prepare_baseline",
]
