"""The quantization spec: one frozen, validated description of how a So3krates model is quantized.

Re-exported by :mod:`spherequant.models.gaq`; see :class:`QuantizationSpec`.

A spec is built once (from a YAML ``quantization:`` section with :meth:`QuantizationSpec.from_dict`, from
flat keywords with :meth:`QuantizationSpec.from_options`, or from a checkpoint entry with
:meth:`QuantizationSpec.from_checkpoint`), validated in ``__post_init__`` and then carried unchanged:
``quantize_(model, spec)`` attaches it to the model (:func:`~spherequant.models.gaq.quantization_spec` reads
it back), the checkpoint stores :meth:`QuantizationSpec.to_checkpoint`, the loader rebuilds the same spec.
It has three parts:

* :class:`StorageFormat`: what the quantized model stores (weight and activation bits, the MDDQ codebook
  and magnitude code, the attention switch, the k-means / learned-codebook seed);
* :class:`QATSchedule`: how quantization-aware training proceeds (staged warm-up, LEE weight, the STE of
  the MDDQ direction, calibration batches);
* :class:`InferenceOptions`: which forces the quantized model reports (``force_mode``).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spherequant._validation import check_bool, check_choice, check_int, check_positive, check_real

__all__ = [
    "BASELINES",
    "BASELINE_FORMAT_KEYS",
    "BASELINE_OPTIONS",
    "BRANCHES",
    "CODEBOOK_FAMILIES",
    "FORCE_MODES",
    "GAQ_OPTION_KEYS",
    "METHODS",
    "WEIGHT_SCHEMES",
    "GAQConfig",
    "InferenceOptions",
    "QATSchedule",
    "QuantizationSpec",
    "StorageFormat",
    "icosahedral_level",
    "to_spec",
]

BRANCHES = ("equivariant", "invariant")
CODEBOOK_FAMILIES = ("fibonacci", "icosahedral", "learned", "kmeans")
FORCE_MODES = ("ste", "smooth")
WEIGHT_SCHEMES = ("symmetric", "minmax", "lsq")
BASELINES = ("naive_int8", "svq_kmeans", "degree_quant", "lsq", "qdrop")
METHODS = ("gaq", *BASELINES)
#: Method-specific options of the baselines and their defaults (see :mod:`spherequant.models.baselines`).
#: ``svq_kmeans``'s two options are fields of the storage format (``codebook_size``, ``magnitude_bits``).
BASELINE_OPTIONS: dict[str, dict[str, float]] = {
    "naive_int8": {},
    "svq_kmeans": {},
    "degree_quant": {"p_min": 0.0, "p_max": 0.1, "percentile": 99.9},
    "lsq": {},
    "qdrop": {"p": 0.5},
}
#: The storage fields (the bit budget) a baseline's YAML options may set; the method fixes the rest.
BASELINE_FORMAT_KEYS = ("weight_bits_equivariant", "weight_bits_invariant", "activation_bits",
                         "quantize_embedding", "seed")  # fmt: skip
_SVQ_FORMAT_KEYS = ("codebook_size", "magnitude_bits")


def icosahedral_level(k: int) -> int | None:
    """Subdivision level of an icosahedral codebook of ``k = 10 4^level + 2`` points (None if no level).

    Examples
    --------
    >>> icosahedral_level(642), icosahedral_level(100)
    (3, None)
    """
    for level in range(11):
        if 10 * 4**level + 2 == k:
            return level
    return None


def _set(obj, name: str, value) -> None:
    object.__setattr__(obj, name, value)


# ----------------------------------------------------------------------------------------------------------
# the three parts
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StorageFormat:
    """What the quantized model stores (validated on construction; frozen).

    Parameters
    ----------
    weight_bits_equivariant : int
        Weight bits of the equivariant branch (geometric blocks), 2 to 8. Default 4.
    weight_bits_invariant : int
        Weight bits of the invariant branch (embedding, feature and exchange blocks, readout), 2 to 8.
    activation_bits : int
        Bits of the symmetric per-tensor quantizer of ``x`` (and of chi blocks of degree >= 2), 2 to 16.
    quantize_embedding : bool
        Quantize the embedding table (invariant branch) too.
    vector_quantizer : {"mddq", "per_axis"}
        MDDQ on the degree-1 block of ``chi`` (GAQ), or every component of ``chi`` as an independent scalar
        with ``ceil(bits_per_vector / 3)`` bits (ablation; the codebook options are then unused).
    codebook : {"fibonacci", "icosahedral", "learned", "kmeans"}
        Direction codebook of the MDDQ (``"learned"``: :func:`spherequant.learn.minimax_codebook`;
        ``"kmeans"``: a spherical k-means codebook per layer fitted on calibration activations).
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
    seed : int
        Seed of the k-means and learned codebooks.

    Examples
    --------
    >>> StorageFormat(codebook="icosahedral", codebook_size=642).bits_per_vector
    18
    >>> StorageFormat(codebook_size=100, codebook="icosahedral")
    Traceback (most recent call last):
    ...
    ValueError: codebook_size for 'icosahedral' must be 10 * 4**level + 2 (12, 42, 162, 642, ...), got 100
    """

    weight_bits_equivariant: int = 4
    weight_bits_invariant: int = 8
    activation_bits: int = 8
    quantize_embedding: bool = True
    vector_quantizer: str = "mddq"
    codebook: str = "fibonacci"
    codebook_size: int = 4096
    magnitude_bits: int = 8
    magnitude: str = "uniform"
    attention: str = "cosine"
    tau: float | None = None
    seed: int = 0

    def __post_init__(self):
        bits_eq = check_int(self.weight_bits_equivariant, "weight_bits_equivariant", minimum=2, maximum=8)
        _set(self, "weight_bits_equivariant", bits_eq)
        _set(
            self,
            "weight_bits_invariant",
            check_int(self.weight_bits_invariant, "weight_bits_invariant", minimum=2, maximum=8),
        )
        _set(
            self, "activation_bits", check_int(self.activation_bits, "activation_bits", minimum=2, maximum=16)
        )
        check_choice(self.codebook, "codebook", CODEBOOK_FAMILIES)
        _set(self, "codebook_size", check_int(self.codebook_size, "codebook_size", minimum=1, maximum=10**7))
        if self.codebook == "icosahedral" and icosahedral_level(self.codebook_size) is None:
            raise ValueError(
                "codebook_size for 'icosahedral' must be 10 * 4**level + 2 (12, 42, 162, 642, ...), "
                f"got {self.codebook_size}"
            )
        if self.codebook == "learned" and self.codebook_size < 4:
            raise ValueError(f"codebook_size for 'learned' must be >= 4, got {self.codebook_size}")
        _set(self, "magnitude_bits", check_int(self.magnitude_bits, "magnitude_bits", minimum=2, maximum=16))
        check_choice(self.magnitude, "magnitude", ("uniform", "log"))
        check_choice(self.attention, "attention", ("cosine", "keep"))
        if self.tau is not None:
            _set(self, "tau", check_positive(self.tau, "tau"))
        check_bool(self.quantize_embedding, "quantize_embedding")
        check_choice(self.vector_quantizer, "vector_quantizer", ("mddq", "per_axis"))
        if self.vector_quantizer == "per_axis" and self.codebook == "kmeans":
            raise ValueError("vector_quantizer 'per_axis' has no codebook; codebook 'kmeans' makes no sense")
        _set(self, "seed", check_int(self.seed, "seed", minimum=0))

    @property
    def bits_per_vector(self) -> int:
        """MDDQ bits of one degree-1 feature vector: ``magnitude_bits + ceil(log2 K)``."""
        return self.magnitude_bits + (self.codebook_size - 1).bit_length()

    @property
    def per_axis_bits(self) -> int:
        """Bits per component of the ``"per_axis"`` ablation: ``ceil(bits_per_vector / 3)``."""
        return -(-self.bits_per_vector // 3)

    def weight_bits(self, branch: str) -> int:
        """Weight bits of ``branch`` ("equivariant" or "invariant")."""
        check_choice(branch, "branch", BRANCHES)
        return self.weight_bits_equivariant if branch == "equivariant" else self.weight_bits_invariant


@dataclass(frozen=True)
class QATSchedule:
    """How quantization-aware training proceeds (validated on construction; frozen).

    Parameters
    ----------
    warmup_epochs : int
        Epochs (1-based, ``epoch <= warmup_epochs``) with the equivariant branch's quantization disabled
        (staged warm-up, :class:`~spherequant.models.gaq.GAQScheduler`).
    lee_weight : float
        Weight of :func:`~spherequant.models.gaq.lee_penalty` in the training loss (0 disables it).
    direction_ste : {"geometric", "plain", "none"}
        Backward pass of the MDDQ direction (``"none"``: hard assignment, the SVQ baseline).
    calibration_batches : int
        Training batches the observers are calibrated on before training (>= 1).
    """

    warmup_epochs: int = 10
    lee_weight: float = 0.1
    direction_ste: str = "geometric"
    calibration_batches: int = 16

    def __post_init__(self):
        _set(self, "warmup_epochs", check_int(self.warmup_epochs, "warmup_epochs", minimum=0))
        _set(self, "lee_weight", check_real(self.lee_weight, "lee_weight", minimum=0.0))
        check_choice(self.direction_ste, "direction_ste", ("geometric", "plain", "none"))
        _set(
            self, "calibration_batches", check_int(self.calibration_batches, "calibration_batches", minimum=1)
        )

    def equivariant_enabled(self, epoch: int) -> bool:
        """Whether the equivariant branch is quantized in (1-based) ``epoch``."""
        return check_int(epoch, "epoch", minimum=1) > self.warmup_epochs


@dataclass(frozen=True)
class InferenceOptions:
    """Which energy and forces the quantized model reports (validated; frozen).

    Parameters
    ----------
    force_mode : {"ste", "smooth"}
        ``"ste"``: forces by autograd through the fake-quantized network (what QAT trains); ``"smooth"``:
        each activation quantizer acts as its saturation (its clip, corners rounded; no rounding), so the
        forces of the weight-quantized network are conservative (:mod:`spherequant.models.saturation`,
        :mod:`spherequant.models.gaq`).
    """

    force_mode: str = "ste"

    def __post_init__(self):
        check_choice(self.force_mode, "force_mode", FORCE_MODES)


_PARTS = {"format": StorageFormat, "schedule": QATSchedule, "inference": InferenceOptions}
_FIELD_PART = {f.name: part for part, cls in _PARTS.items() for f in dataclasses.fields(cls)}
#: The flat option names of GAQ (the YAML ``quantization.options`` keys and the checkpoint ``config``
#: keys), in the order of the former ``GAQConfig``.
GAQ_OPTION_KEYS = ("weight_bits_equivariant", "weight_bits_invariant", "activation_bits", "codebook",
                   "codebook_size", "magnitude_bits", "magnitude", "attention", "tau", "lee_weight",
                   "warmup_epochs", "direction_ste", "force_mode", "quantize_embedding", "vector_quantizer",
                   "seed")  # fmt: skip
# the method's fixed values of a baseline (the fields its YAML options do not set)
_BASELINE_FIXED = {"attention": "keep", "lee_weight": 0.0, "warmup_epochs": 0}
_SVQ_FIXED = {**_BASELINE_FIXED, "codebook": "kmeans", "direction_ste": "none", "vector_quantizer": "mddq",
              "codebook_size": 256, "magnitude_bits": 8}  # fmt: skip


def _allowed_options(method: str) -> tuple[str, ...]:
    if method == "gaq":
        return GAQ_OPTION_KEYS
    extra = _SVQ_FORMAT_KEYS if method == "svq_kmeans" else tuple(sorted(BASELINE_OPTIONS[method]))
    return BASELINE_FORMAT_KEYS + extra


# ----------------------------------------------------------------------------------------------------------
# the spec
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantizationSpec:
    """How a model is quantized: method, storage format, QAT schedule, inference choice (frozen; validated).

    Built once and carried unchanged: YAML section -> :func:`~spherequant.models.gaq.quantize_` -> the
    model (:func:`~spherequant.models.gaq.quantization_spec`) -> checkpoint (:meth:`to_checkpoint`) ->
    loader (:meth:`from_checkpoint`) -> deployment and MD.

    Parameters
    ----------
    method : {"gaq", "naive_int8", "svq_kmeans", "degree_quant", "lsq", "qdrop"}
    format : StorageFormat
    schedule : QATSchedule
    inference : InferenceOptions
    options : mapping, optional
        Baseline options (:data:`~spherequant.models.baselines.BASELINE_OPTIONS`; ``p`` of QDrop,
        ``p_min``, ``p_max``, ``percentile`` of Degree-Quant); missing ones take their defaults. Stored as
        sorted ``(name, value)`` pairs; read them with :attr:`method_options`.

    Raises
    ------
    ValueError, TypeError
        Naming the field: an unknown method, a bad value of any part, an option the method does not take,
        or a format the method cannot have (a baseline switching the attention or with a LEE term or
        warm-up; an SVQ spec whose codebook is not a k-means codebook with hard assignment).

    Examples
    --------
    >>> spec = QuantizationSpec.from_options("gaq", codebook_size=642, codebook="icosahedral")
    >>> spec.format.bits_per_vector, spec.schedule.warmup_epochs, spec.inference.force_mode
    (18, 10, 'ste')
    >>> QuantizationSpec.from_dict(spec.to_dict()) == spec
    True
    >>> QuantizationSpec.from_options("qdrop", p=1.5)
    Traceback (most recent call last):
    ...
    ValueError: p must be in [0.0, 1.0], got 1.5
    """

    method: str = "gaq"
    format: StorageFormat = field(default_factory=StorageFormat)
    schedule: QATSchedule = field(default_factory=QATSchedule)
    inference: InferenceOptions = field(default_factory=InferenceOptions)
    options: tuple = ()

    def __post_init__(self):
        check_choice(self.method, "method", METHODS)
        for name, cls in _PARTS.items():
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        _set(self, "options", self._checked_options(self.options))
        if self.method != "gaq":
            self._check_baseline()

    def _checked_options(self, options) -> tuple:
        if not isinstance(options, (Mapping, tuple, list)):
            raise TypeError(f"options must be a mapping of option names, got {type(options).__name__}")
        pairs = dict(options)
        allowed = BASELINE_OPTIONS.get(self.method, {})
        unknown = sorted(set(pairs) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown options {unknown} for method {self.method!r}; allowed: {sorted(allowed)}"
            )
        merged = {**allowed, **pairs}
        for key in ("p", "p_min", "p_max"):
            if key in merged:
                merged[key] = check_real(merged[key], key, minimum=0.0, maximum=1.0)
        if "percentile" in merged:
            pct = check_real(
                merged["percentile"], "percentile", minimum=0.0, maximum=100.0, exclusive_minimum=True
            )
            merged["percentile"] = pct
        if merged.get("p_min", 0.0) > merged.get("p_max", 1.0):
            raise ValueError(f"p_min ({merged['p_min']}) must not exceed p_max ({merged['p_max']})")
        return tuple(sorted(merged.items()))

    def _check_baseline(self) -> None:
        fixed = _SVQ_FIXED if self.method == "svq_kmeans" else _BASELINE_FIXED
        for key, value in fixed.items():
            if key in ("codebook_size", "magnitude_bits"):
                continue  # defaults of SVQ, not constraints
            have = getattr(getattr(self, _FIELD_PART[key]), key)
            if have != value:
                raise ValueError(f"{key} must be {value!r} for method {self.method!r}, got {have!r}")

    @property
    def method_options(self) -> dict[str, float]:
        """The baseline options as a dict (empty for GAQ and the option-free baselines)."""
        return dict(self.options)

    # -- flat options ------------------------------------------------------------------------------------
    @classmethod
    def from_options(cls, method: str = "gaq", **options) -> QuantizationSpec:
        """The spec of ``method`` from flat option names (the YAML ``quantization.options`` keys).

        For ``"gaq"`` every field of the three parts (:data:`GAQ_OPTION_KEYS`); for a baseline the bit-budget
        fields ``weight_bits_equivariant``, ``weight_bits_invariant``, ``activation_bits``,
        ``quantize_embedding``, ``seed`` plus its own options (``svq_kmeans``: ``codebook_size`` (256) and
        ``magnitude_bits`` (8)); the method fixes the rest.
        """
        check_choice(method, "method", METHODS)
        allowed = _allowed_options(method)
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(f"unknown options {unknown} for method {method!r}; allowed: {list(allowed)}")
        if method == "gaq":
            flat, extra = dict(options), {}
        else:
            fixed = _SVQ_FIXED if method == "svq_kmeans" else _BASELINE_FIXED
            flat = {**fixed, **{k: v for k, v in options.items() if k in _FIELD_PART}}
            extra = {k: v for k, v in options.items() if k not in _FIELD_PART}
        parts = {name: {} for name in _PARTS}
        for key, value in flat.items():
            parts[_FIELD_PART[key]][key] = value
        return cls(method, **{name: _PARTS[name](**kw) for name, kw in parts.items()}, options=extra)

    def flat_options(self) -> dict[str, Any]:
        """The spec as flat option names, exactly the keys :meth:`from_options` takes for its method."""
        every = {**dataclasses.asdict(self.format), **dataclasses.asdict(self.schedule),
                 **dataclasses.asdict(self.inference), **self.method_options}  # fmt: skip
        return {k: every[k] for k in _allowed_options(self.method)}

    # -- YAML section ------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, section: Mapping) -> QuantizationSpec:
        """From a YAML ``quantization:`` section: ``method``, ``calibration_batches`` (optional, default 16)
        and ``options`` (flat names, :meth:`from_options`). ``init_checkpoint`` belongs to the training run
        (:class:`~spherequant.models.train.TrainConfig`), not to the spec."""
        if not isinstance(section, Mapping):
            raise TypeError(f"quantization must be a mapping, got {type(section).__name__}")
        unknown = sorted(set(section) - {"method", "calibration_batches", "options"})
        if unknown:
            raise ValueError(
                f"unknown key(s) {unknown} in quantization; "
                "allowed: ['method', 'calibration_batches', 'options']"
            )
        options = section.get("options")
        options = {} if options is None else options
        if not isinstance(options, Mapping):
            raise TypeError(f"quantization options must be a mapping, got {type(options).__name__}")
        options = dict(options)
        if "calibration_batches" in section:
            if "calibration_batches" in options:
                raise ValueError("calibration_batches is given twice (in the section and in its options)")
            n_cal = check_int(section["calibration_batches"], "calibration_batches", minimum=1)
        else:
            n_cal = QATSchedule.calibration_batches
        spec = cls.from_options(section.get("method", "gaq"), **options)
        return dataclasses.replace(
            spec, schedule=dataclasses.replace(spec.schedule, calibration_batches=n_cal)
        )

    def to_dict(self) -> dict[str, Any]:
        """The YAML ``quantization:`` section (without ``init_checkpoint``); :meth:`from_dict` inverts it."""
        opts = self.flat_options()
        return {
            "method": self.method,
            "calibration_batches": self.schedule.calibration_batches,
            "options": opts,
        }

    # -- checkpoint entry --------------------------------------------------------------------------------
    def to_checkpoint(self) -> dict[str, Any]:
        """The spec part of a checkpoint's ``quantization`` entry: ``method``, ``config`` (the flat GAQ
        options, :data:`GAQ_OPTION_KEYS`, as checkpoints have always stored them), ``options`` (baseline
        options) and ``calibration_batches``. The model's state (``step``, ``enabled``, current
        ``force_mode``) is added by :func:`~spherequant.models.checkpoints.quantization_entry`."""
        every = {**dataclasses.asdict(self.format), **dataclasses.asdict(self.schedule),
                 **dataclasses.asdict(self.inference)}  # fmt: skip
        options = self.method_options
        if self.method == "svq_kmeans":
            options = {k: every[k] for k in _SVQ_FORMAT_KEYS}
        return {
            "method": self.method,
            "config": {k: every[k] for k in GAQ_OPTION_KEYS},
            "options": options,
            "calibration_batches": self.schedule.calibration_batches,
        }

    @classmethod
    def from_checkpoint(cls, entry: Mapping) -> QuantizationSpec:
        """The spec of a checkpoint's ``quantization`` entry (written by any version of this package).

        Checkpoints store ``config`` as the flat GAQ options; a baseline's entry written before the spec
        existed holds the GAQ defaults there for the fields the method fixes (its attention switch, LEE weight
        and warm-up were never applied), so only its bit-budget fields are read.
        """
        if not isinstance(entry, Mapping):
            raise TypeError(f"quantization entry must be a mapping, got {type(entry).__name__}")
        method = check_choice(entry.get("method"), "quantization method", METHODS)
        config = dict(entry.get("config") or {})
        unknown = sorted(set(config) - set(GAQ_OPTION_KEYS))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in the checkpoint's quantization config")
        options = dict(entry.get("options") or {})
        if method == "gaq":
            spec = cls.from_options("gaq", **config)
        elif method == "svq_kmeans":
            keep = BASELINE_FORMAT_KEYS + _SVQ_FORMAT_KEYS
            spec = cls.from_options(method, **{k: v for k, v in config.items() if k in keep})
        else:
            bits = {k: v for k, v in config.items() if k in BASELINE_FORMAT_KEYS}
            spec = cls.from_options(method, **bits, **options)
        n_cal = entry.get("calibration_batches")
        if n_cal is not None:
            schedule = dataclasses.replace(spec.schedule, calibration_batches=n_cal)
            spec = dataclasses.replace(spec, schedule=schedule)
        return spec


def to_spec(config, name: str = "config") -> QuantizationSpec:
    """``config`` as a :class:`QuantizationSpec` (a spec, or a deprecated :class:`GAQConfig`)."""
    if isinstance(config, QuantizationSpec):
        return config
    if isinstance(config, GAQConfig):
        return config.to_spec()
    raise TypeError(f"{name} must be a QuantizationSpec, got {type(config).__name__}")


# ----------------------------------------------------------------------------------------------------------
# the former flat options object
# ----------------------------------------------------------------------------------------------------------
@dataclass
class GAQConfig:
    """Deprecated flat form of a GAQ :class:`QuantizationSpec`; use ``QuantizationSpec.from_options("gaq",
    ...)``.

    Takes the flat GAQ options (:data:`GAQ_OPTION_KEYS`; see :class:`StorageFormat`, :class:`QATSchedule`,
    :class:`InferenceOptions` for their meaning), validates them by building the spec (:meth:`to_spec`) and
    warns with a ``DeprecationWarning``. Every function that takes a spec still accepts it.

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore", DeprecationWarning)
    ...     cfg = GAQConfig(codebook="icosahedral", codebook_size=642)
    >>> cfg.to_spec() == QuantizationSpec.from_options("gaq", codebook="icosahedral", codebook_size=642)
    True
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
        warnings.warn(
            "GAQConfig is deprecated; use QuantizationSpec.from_options('gaq', ...) (spherequant.models.gaq)",
            DeprecationWarning,
            stacklevel=3,
        )
        spec = QuantizationSpec.from_options("gaq", **dataclasses.asdict(self))
        for key, value in spec.flat_options().items():
            setattr(self, key, value)

    def to_spec(self) -> QuantizationSpec:
        """The equivalent :class:`QuantizationSpec` (method ``"gaq"``)."""
        return QuantizationSpec.from_options("gaq", **dataclasses.asdict(self))

    @property
    def bits_per_vector(self) -> int:
        """MDDQ bits of one degree-1 feature vector (:attr:`StorageFormat.bits_per_vector`)."""
        return self.to_spec().format.bits_per_vector

    @property
    def per_axis_bits(self) -> int:
        """Bits per component of the ``"per_axis"`` ablation (:attr:`StorageFormat.per_axis_bits`)."""
        return self.to_spec().format.per_axis_bits

    def weight_bits(self, branch: str) -> int:
        """Weight bits of ``branch`` (:meth:`StorageFormat.weight_bits`)."""
        return self.to_spec().format.weight_bits(branch)

    def to_dict(self) -> dict:
        """Plain dict of the flat options."""
        return dataclasses.asdict(self)
