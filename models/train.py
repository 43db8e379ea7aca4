"""Training of So3krates force fields: YAML config, Adam + schedule + EMA, checkpoints, exact resume, DDP.

One run writes into ``output_dir``:

* ``last.pt`` (every epoch) and ``best.pt`` (lowest validation loss), written atomically; each holds the
  model configuration and state, the EMA state, optimizer, scheduler, epoch, normalisation, history, the
  training configuration and the RNG states, so ``train(config, resume=True)`` continues exactly;
* ``metrics.csv`` / ``metrics.json``: one row per epoch (validation energy MAE in meV, force MAE in
  meV/Angstrom, both computed with the EMA weights; the epoch's wall and process CPU seconds,
  ``epoch_time_s`` and ``epoch_cpu_s``), ``learning_curve.png``; ``split/`` the frame indices;
  ``test_metrics.json`` after the last epoch when ``evaluate_test`` is set;
* ``run.json``: the run's configuration and data fingerprint (:func:`data_fingerprint`); ``.train.lock``
  while a training runs there.

A folder belongs to one run. A new run in a folder holding results of another run is refused with
:class:`RunDirectoryError` naming the differing keys (``n_train: 950 -> 500; split_seed: 0 -> 1``) unless
``overwrite=True`` (CLI ``--overwrite``), which deletes that run's files and starts over; a resume whose
configuration differs from ``last.pt`` outside :data:`RESUME_MUTABLE_KEYS` (more epochs, device, compile,
folder location, reporting, the NaN policy) is refused naming the keys, since it would no longer be the same
run; a folder in use by a running training is refused (the lock file holds pid and host; the lock of a process
that no longer runs on this host is stale and taken over, so ``kill -9`` then resume works).

Non-finite values never pass for a model: every step checks the loss and the gradients, every epoch the
weights, the EMA weights and the validation loss. ``on_nonfinite: stop`` (default) raises
:class:`TrainingDivergedError` (CLI exit status 1) before anything of the failing epoch is written, so
``last.pt`` and ``best.pt`` keep the last finite epoch; ``rollback`` repeats the epoch from its start at a
lower learning rate (see :class:`TrainConfig`).

Quantization-aware training: a ``quantization`` section (see :class:`TrainConfig`) finetunes an FP32
checkpoint as GAQ (:mod:`spherequant.models.gaq`) or one of the baselines
(:mod:`spherequant.models.baselines`): prepare -> calibrate on training batches -> optimizer; per epoch the
GAQ staged warm-up (:class:`~spherequant.models.gaq.GAQScheduler`) and the LEE penalty
(:func:`~spherequant.models.gaq.qat_loss_terms`, rotations from a per-epoch seeded generator, so resume stays
exact); the EMA model is prepared the same way. The section is turned into a
:class:`~spherequant.models.gaq.QuantizationSpec` once, when the config is validated
(:attr:`TrainConfig.quantization_spec`), and that spec is what ``quantize_`` applies and the checkpoints store
(``quantization``, :func:`~spherequant.models.checkpoints.quantization_entry`); they load with
:func:`~spherequant.models.checkpoints.load_model`. Warm-up epochs are never kept as ``best.pt``.
``epochs: 0`` (required by ``naive_int8``) calibrates, evaluates and saves (one row with ``epoch`` 0).

Energy reference refit: the loss weights the per-atom energy lightly (forces dominate), so the sum of the
atomic shifts is barely constrained and a constant energy offset survives training. With
``refit_energy_shift`` (default) the best checkpoint's per-element shifts get the least-squares correction of
its training-frame energy residuals (:func:`refit_energy_shift`) before the test evaluation; forces are
unchanged. Only training frames are used.

Multi-GPU data parallel training: launch the same command with ``torchrun --nproc_per_node=K``; every
process takes a share of each global batch (``batch_size`` is the global batch size), gradients are averaged
by :class:`torch.nn.parallel.DistributedDataParallel` (NCCL on GPUs, gloo on CPUs); only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import hashlib
import inspect
import io
import json
import math
import os
import random
import socket
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from spherequant._report import atomic_write, pid_alive

from . import checkpoints as ckpt_mod
from . import compiled as compiled_mod
from . import data as data_mod
from .gaq import (
    METHODS,
    GAQScheduler,
    QuantizationSpec,
    branches_enabled,
    qat_loss_terms,
    quantization_spec,
    quantize_,
    set_quant_enabled,
)
from .so3krates import So3krates

__all__ = [
    "RESUME_MUTABLE_KEYS",
    "RunDirectoryError",
    "TrainConfig",
    "TrainingDivergedError",
    "TrainingRun",
    "data_fingerprint",
    "error_metrics",
    "evaluate",
    "export_model",
    "load_config",
    "load_training_data",
    "refit_energy_shift",
    "train",
]

_MODEL_KEYS = set(inspect.signature(So3krates.__init__).parameters) - {"self"}
_SCHEDULERS = ("plateau", "exponential", "none")
_ON_NONFINITE = ("stop", "rollback")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_QUANT_KEYS = ("method", "init_checkpoint", "calibration_batches", "options")


@dataclass
class TrainConfig:
    """Settings of one training run (all validated by :meth:`validate`; load with :func:`load_config`).

    Attributes
    ----------
    dataset : str
        Name of a shipped data set (:func:`spherequant.models.data.load_dataset`) or a path to an rMD17-style
        ``.npz`` or any file ASE reads (extxyz, ...).
    output_dir : str
        Folder for checkpoints, metrics and plots.
    n_train, n_val, split_seed : int
        rMD17 split: ``n_train`` training, ``n_val`` validation frames drawn with ``split_seed``, rest test.
    model : dict
        Keyword arguments of :class:`~spherequant.models.so3krates.So3krates`.
    dtype : {"float32", "float64"}
    epochs, batch_size, val_batch_size : int
        Number of epochs, global training batch size, evaluation batch size.
    lr, weight_decay : float
        Adam learning rate and (L2) weight decay.
    scheduler : {"plateau", "exponential", "none"}
        Reduce-on-plateau of the validation loss (``lr_factor``, ``patience``) or per-epoch exponential decay
        by ``lr_factor``; never below ``min_lr``.
    energy_weight, forces_weight : float
        Loss ``energy_weight * mean(((E - E_ref) / n_atoms)^2) + forces_weight * mean((F - F_ref)^2)``
        (eV, Angstrom).
    ema_decay : float
        Decay of the exponential moving average of the weights used for validation and checkpoints' EMA.
    grad_clip : float or None
        Max gradient norm (None: no clipping).
    seed : int
        Seeds initialisation and the per-epoch shuffling.
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    progress, plot, evaluate_test : bool
        Progress bar; learning-curve PNG every epoch; test-set evaluation of the best EMA model at the end.
    stop_at_min_lr : bool
        With ``scheduler: plateau``, stop once the learning rate has reached ``min_lr`` and the validation
        loss has then not improved for ``patience`` epochs (the plateau at the floor: training has converged
        by the schedule's own rule); ``epochs`` stays the upper bound. Default False.
    refit_energy_shift : bool
        After the last epoch, correct the per-element energy shifts of ``best.pt`` by least squares on the
        training frames (:func:`refit_energy_shift`); recorded in the checkpoint as ``energy_shift_refit``.
    init_checkpoint : str or None
        FP32 only: start from the weights and energy statistics of this FP32 checkpoint (path or pretrained
        name) instead of a fresh initialisation; its model configuration is used and keys given in ``model``
        must agree. (Quantized runs name theirs in ``quantization.init_checkpoint``.)
    quantization : dict or None
        Quantization-aware training (or post-training quantization with ``epochs: 0``):
        ``method`` (``"gaq"``, ``"naive_int8"``, ``"svq_kmeans"``, ``"degree_quant"``, ``"lsq"``,
        ``"qdrop"``), ``init_checkpoint`` (FP32 checkpoint path or pretrained name to finetune from; its
        model configuration and energy statistics are used, and keys given in ``model`` must agree),
        ``calibration_batches`` (number of training batches the observers are calibrated on, default 16)
        and ``options`` (the flat fields of :class:`~spherequant.models.gaq.QuantizationSpec` for
        ``"gaq"``, :meth:`~spherequant.models.gaq.QuantizationSpec.from_options`; for a baseline its options
        (:data:`~spherequant.models.baselines.BASELINE_OPTIONS`) plus the bit-budget fields
        ``weight_bits_equivariant``, ``weight_bits_invariant``, ``activation_bits``, ``quantize_embedding``,
        ``seed``). ``"naive_int8"`` is post-training only and needs ``epochs: 0``.
    on_nonfinite : {"stop", "rollback"}
        What to do when a training loss or gradient norm, the weights, the EMA weights or the validation loss
        become NaN/inf. ``"stop"`` (default): raise :class:`TrainingDivergedError` at once; nothing of the
        failing epoch is written, so ``last.pt`` / ``best.pt`` keep the last finite epoch. ``"rollback"``:
        return to the state at the start of the failing epoch (weights, EMA, optimizer, scheduler, RNG),
        multiply the learning rate by ``rollback_lr_factor`` and repeat the epoch; after ``max_rollbacks``
        rollbacks in one run, stop as with ``"stop"``.
    max_rollbacks : int
        Most rollbacks per run (>= 1).
    rollback_lr_factor : float
        Learning-rate factor applied at each rollback, in (0, 1).
    compile : bool
        Run the training step's energies and forces through :mod:`spherequant.models.compiled` (one traced
        graph of energy and forces compiled with ``torch.compile``: faster steps after a compilation of
        minutes at the start of each process) and Adam's fused update (``fused=True``: the same update in one
        kernel per tensor). Quantization-aware models are compiled too (GAQ, naive INT8, LSQ, SVQ-KMeans);
        those it does not handle (Degree-Quant's hooks, QDrop's random masks, DDP) keep the default forward.
        A resume may switch it (the same function; as after a change of device, the continued run's
        rounding then differs from an uninterrupted one, so only an unchanged resume is bit-exact).
        Default False.
    """

    dataset: str = "azobenzene-gfn2-500K"
    output_dir: str = "runs/azobenzene_fp32"
    n_train: int = 950
    n_val: int = 50
    split_seed: int = 0
    model: dict = field(default_factory=dict)
    dtype: str = "float32"
    epochs: int = 1000
    batch_size: int = 5
    val_batch_size: int = 50
    lr: float = 1e-3
    weight_decay: float = 0.0
    scheduler: str = "plateau"
    lr_factor: float = 0.5
    patience: int = 25
    min_lr: float = 1e-5
    energy_weight: float = 0.01
    forces_weight: float = 0.99
    ema_decay: float = 0.99
    grad_clip: float | None = 10.0
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    plot: bool = True
    evaluate_test: bool = True
    stop_at_min_lr: bool = False
    refit_energy_shift: bool = True
    init_checkpoint: str | None = None
    quantization: dict | None = None
    on_nonfinite: str = "stop"
    max_rollbacks: int = 3
    rollback_lr_factor: float = 0.5
    compile: bool = False

    def validate(self) -> TrainConfig:
        """Check types and ranges; raise ``TypeError``/``ValueError`` naming the offending key."""
        _expect(self, "dataset", str)
        _expect(self, "output_dir", str)
        for key in (
            "n_train",
            "n_val",
            "split_seed",
            "epochs",
            "batch_size",
            "val_batch_size",
            "patience",
            "seed",
            "max_rollbacks",
        ):
            _expect(self, key, int)
        for key in ("n_train", "batch_size", "val_batch_size", "patience", "max_rollbacks"):
            _range(self, key, getattr(self, key) >= 1, ">= 1")
        if self.quantization is None:
            _range(self, "epochs", self.epochs >= 1, ">= 1")
        else:
            _range(self, "epochs", self.epochs >= 0, ">= 0 (0: calibrate and evaluate only)")
        _range(self, "n_val", self.n_val >= 1, ">= 1")
        _range(self, "seed", self.seed >= 0, ">= 0")
        _range(self, "split_seed", self.split_seed >= 0, ">= 0")
        for key in (
            "lr",
            "weight_decay",
            "lr_factor",
            "min_lr",
            "energy_weight",
            "forces_weight",
            "ema_decay",
            "rollback_lr_factor",
        ):
            _expect(self, key, float)
            _range(
                self, key, math.isfinite(getattr(self, key)) and getattr(self, key) >= 0, "finite and >= 0"
            )
        _range(self, "lr", self.lr > 0, "> 0")
        _range(self, "min_lr", self.min_lr <= self.lr, f"<= lr ({self.lr})")
        _range(self, "lr_factor", 0 < self.lr_factor <= 1, "in (0, 1]")
        _range(self, "ema_decay", self.ema_decay < 1, "in [0, 1)")
        _range(self, "energy_weight", self.energy_weight + self.forces_weight > 0, "> 0 with forces_weight")
        if self.grad_clip is not None:
            _expect(self, "grad_clip", float)
            _range(self, "grad_clip", self.grad_clip > 0, "> 0 or null")
        _range(self, "rollback_lr_factor", 0 < self.rollback_lr_factor < 1, "in (0, 1)")
        if not self.output_dir.strip():
            raise ValueError(
                "config key 'output_dir' must name a folder, got an empty string (it would write into the "
                "current directory; use '.' to mean that explicitly)"
            )
        _expect(self, "on_nonfinite", str)
        if self.on_nonfinite not in _ON_NONFINITE:
            raise ValueError(
                f"config key 'on_nonfinite' must be one of {list(_ON_NONFINITE)}, got {self.on_nonfinite!r}"
            )
        if self.dtype not in _DTYPES:
            raise ValueError(f"config key 'dtype' must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.scheduler not in _SCHEDULERS:
            raise ValueError(
                f"config key 'scheduler' must be one of {list(_SCHEDULERS)}, got {self.scheduler!r}"
            )
        _expect(self, "device", str)
        for key in ("progress", "plot", "evaluate_test", "stop_at_min_lr", "refit_energy_shift", "compile"):
            _expect(self, key, bool)
        if self.init_checkpoint is not None:
            _expect(self, "init_checkpoint", str)
            if self.quantization is not None:
                raise ValueError(
                    "config key 'init_checkpoint' is for FP32 runs; a quantized run names its starting "
                    "checkpoint in 'quantization.init_checkpoint'"
                )
        if not isinstance(self.model, dict):
            raise TypeError(f"config key 'model' must be a mapping, got {type(self.model).__name__}")
        unknown = sorted(set(self.model) - _MODEL_KEYS)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in config 'model'; allowed: {sorted(_MODEL_KEYS)}")
        if "degrees" in self.model:
            if not isinstance(self.model["degrees"], (list, tuple)):
                raise TypeError(f"config key 'model.degrees' must be a list, got {self.model['degrees']!r}")
            self.model["degrees"] = list(self.model["degrees"])
        So3krates(**_model_kwargs(self.model))  # validates the model keywords
        spec = None
        if self.quantization is not None:
            self.quantization, spec = _validate_quantization(self.quantization)
            if self.quantization["method"] == "naive_int8" and self.epochs != 0:
                raise ValueError(
                    f"config key 'epochs' must be 0 for quantization method 'naive_int8' (post-training "
                    f"quantization only), got {self.epochs}"
                )
        self._quantization_spec = spec
        return self

    @property
    def quantization_spec(self) -> QuantizationSpec | None:
        """The :class:`~spherequant.models.gaq.QuantizationSpec` of the ``quantization`` section (None for
        an FP32 run), built once by :meth:`validate`."""
        if "_quantization_spec" not in self.__dict__:
            self.validate()
        return self._quantization_spec

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build and validate from a mapping; unknown keys raise ``ValueError`` listing the allowed keys."""
        if not isinstance(values, dict):
            raise TypeError(f"a config must be a mapping, got {type(values).__name__}")
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; allowed: {allowed}")
        vals = dict(values)
        for f in dataclasses.fields(cls):  # YAML writes 1e-3 as a str in some dialects and ints for floats
            v = vals.get(f.name)
            if f.type in ("float", "float | None") and isinstance(v, int) and not isinstance(v, bool):
                vals[f.name] = float(v)
        return cls(**vals).validate()

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict copy (YAML/JSON serialisable)."""
        return dataclasses.asdict(self)


def _validate_quantization(q) -> tuple[dict, QuantizationSpec]:
    """Check the ``quantization`` section; returns it completed with defaults, and its spec (built here,
    once, and carried unchanged to ``quantize_`` and the checkpoints)."""
    if not isinstance(q, dict):
        raise TypeError(f"config key 'quantization' must be a mapping or null, got {type(q).__name__}")
    unknown = sorted(set(q) - set(_QUANT_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in config 'quantization'; allowed: {list(_QUANT_KEYS)}")
    method = q.get("method")
    if method not in METHODS:
        raise ValueError(f"config key 'quantization.method' must be one of {list(METHODS)}, got {method!r}")
    init = q.get("init_checkpoint")
    if init is not None and not isinstance(init, str):
        raise TypeError(f"config key 'quantization.init_checkpoint' must be a str or null, got {init!r}")
    n_cal = q.get("calibration_batches", 16)
    if isinstance(n_cal, bool) or not isinstance(n_cal, int):
        raise TypeError(f"config key 'quantization.calibration_batches' must be int, got {n_cal!r}")
    if n_cal < 1:
        raise ValueError(f"config key 'quantization.calibration_batches' must be >= 1, got {n_cal}")
    options = q.get("options")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise TypeError(f"config key 'quantization.options' must be a mapping, got {type(options).__name__}")
    try:
        spec = QuantizationSpec.from_dict(
            {"method": method, "calibration_batches": n_cal, "options": options}
        )
    except (TypeError, ValueError) as err:
        raise type(err)(f"config 'quantization.options' for method {method!r}: {err}") from None
    section = {
        "method": method,
        "init_checkpoint": init,
        "calibration_batches": n_cal,
        "options": dict(options),
    }
    return section, spec


def _model_kwargs(model: dict) -> dict:
    kwargs = dict(model)
    if "degrees" in kwargs:
        kwargs["degrees"] = tuple(kwargs["degrees"])
    return kwargs


def _expect(cfg, key, typ):
    value = getattr(cfg, key)
    ok = isinstance(value, typ) and not (typ is not bool and isinstance(value, bool))
    if not ok:
        raise TypeError(f"config key {key!r} must be {typ.__name__}, got {value!r} ({type(value).__name__})")


def _range(cfg, key, ok, text):
    if not ok:
        raise ValueError(f"config key {key!r} must be {text}, got {getattr(cfg, key)!r}")


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read a YAML file into a validated :class:`TrainConfig`.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.yaml"
    >>> _ = p.write_text("epochs: 3\\nmodel: {num_features: 8, num_heads: 2}\\n")
    >>> load_config(p).epochs
    3
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    with open(path) as fh:
        try:
            values = yaml.safe_load(fh)
        except yaml.YAMLError as err:
            raise ValueError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    return TrainConfig.from_dict(values or {})


# ---------------------------------------------------------------------------------------------- helpers
def load_training_data(spec: str) -> data_mod.MolecularDataset:
    """The data set a config names: an existing file (``.npz`` via ``load_npz``, else any ASE format) or a
    shipped data set name (:func:`spherequant.models.data.load_dataset`)."""
    path = Path(spec)
    if path.exists():
        return data_mod.load_npz(path) if path.suffix == ".npz" else data_mod.read_ase(path)
    return data_mod.load_dataset(spec)


def _resolve_device(spec: str, local_rank: int) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = ckpt_mod.resolve_device(spec, name="config key 'device'")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def _atomic_save(obj, path: Path) -> None:
    atomic_write(path, lambda fh: torch.save(obj, fh))


def _atomic_text(text: str, path: Path) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode()))


def _loss_terms(out, batch):
    n = batch.n_atoms.to(out["energy"].dtype)
    e_err = (out["energy"] - batch.energy) / n
    if batch.forces is None:  # energy-only data (e.g. QM9): no force term
        return (e_err * e_err).mean(), e_err.new_zeros(())
    f_err = out["forces"] - batch.forces
    return (e_err * e_err).mean(), (f_err * f_err).mean()


class _EMA:
    """Exponential moving average of a model's floating parameters; buffers copied."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: _clone(v) for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        params = dict(model.named_parameters())
        for k, v in model.state_dict().items():
            if not torch.is_tensor(v):  # extra state of quantizers (ranges, codebooks)
                self.shadow[k] = copy.deepcopy(v)
            elif k in params and v.is_floating_point():
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)


def _clone(v):
    return v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v)


def _to_device(v, device):
    return v.to(device) if torch.is_tensor(v) else v


def _float_model(config: TrainConfig, init_spec, key: str, ds, split, device, dtype):
    """FP32 model and its normalisation: loaded from ``init_spec`` (config key ``key``) or freshly initialised
    with energy statistics of the training frames."""
    if not init_spec:
        model = So3krates(**_model_kwargs(config.model)).to(device=device, dtype=dtype)
        stats = data_mod.energy_statistics(ds, split.train)
        model.set_energy_statistics(stats.shifts, stats.scale)
        return model, {"shifts": stats.shifts, "scale": stats.scale, "method": stats.method}
    try:
        path = ckpt_mod.resolve_checkpoint(init_spec)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"config key {key!r}: {err}") from None
    init = _read_ckpt(path)
    if init.get("quantization") is not None:
        raise ValueError(
            f"config key {key!r} must be an FP32 checkpoint; {str(path)!r} is already quantized "
            f"({init['quantization']['method']})"
        )
    model = ckpt_mod.load_model(init, device=device, dtype=dtype)
    for name, value in config.model.items():
        have = model.config.get(name)
        if (list(value) if isinstance(value, (list, tuple)) else value) != have:
            raise ValueError(
                f"config key 'model.{name}' is {value!r} but the {key} model has {have!r}; "
                "leave it out or make them agree"
            )
    # The starting model's per-element energy shifts cover only the elements it was trained on: refuse a
    # data set with others now, at setup, rather than on the first batch.
    try:
        model.check_elements(torch.as_tensor(np.unique(ds.numbers)))
    except ValueError as err:
        raise ValueError(f"config key {key!r}: the data set's {err}") from None
    return model, init.get("normalisation")


def _build_quantized_model(config: TrainConfig, ds, split, device, dtype, resume_ckpt):
    """Float model (fresh or from ``init_checkpoint``) -> prepare -> calibrate; or, when resuming, the
    structure of the checkpoint (its state is loaded by the caller). Returns ``(model, normalisation)``."""
    if resume_ckpt is not None:
        entry = resume_ckpt.get("quantization")
        if entry is None:
            raise ValueError("cannot resume a quantized run from an FP32 checkpoint (no 'quantization')")
        model = ckpt_mod.rebuild_model(resume_ckpt["model_config"], entry, dtype=dtype, device=device)
        ckpt_mod.restore_switches(model, entry)
        return model.train(), resume_ckpt.get("normalisation")
    key = "quantization.init_checkpoint"
    spec = config.quantization_spec
    init = config.quantization["init_checkpoint"]
    model, normalisation = _float_model(config, init, key, ds, split, device, dtype)
    order = np.random.default_rng([config.seed, 0]).permutation(np.asarray(split.train))
    n = min(spec.schedule.calibration_batches, -(-len(order) // config.batch_size))
    calib = [
        data_mod.collate(ds, order[k * config.batch_size : (k + 1) * config.batch_size], device=device,
                         dtype=dtype)
        for k in range(n)
    ]  # fmt: skip
    ckpt_mod.apply_quantization(model, spec, calib)
    return model.train(), normalisation


def error_metrics(model, dataset, indices, batch_size: int = 50, device=None) -> dict[str, float]:
    """Energy / force errors of ``model`` on frames ``indices`` of ``dataset`` (validation and test rows).

    Returns
    -------
    dict
        ``energy_mae`` (meV), ``forces_mae`` (meV/Angstrom, per Cartesian component), ``energy_rmse``,
        ``forces_rmse``, ``loss_energy`` (mean squared per-atom energy error, eV^2), ``loss_forces``
        (eV^2/A^2), ``n_frames``. For energy-only data the force entries are None (``loss_forces`` 0).
    """
    device = device or next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    e_abs = e_sq = f_abs = f_sq = le = lf = 0.0
    n_frames = n_comp = 0
    for b in data_mod.iterate_batches(dataset, indices, batch_size, device=device, dtype=dtype):
        no_forces = {} if b.forces is not None else {"compute_forces": False}  # energy-only data
        out = model(b.z, b.pos, b.batch, num_graphs=b.num_graphs, **no_forces)
        de = (out["energy"].detach() - b.energy).double()
        e_abs += float(de.abs().sum())
        e_sq += float((de * de).sum())
        le += float(((de / b.n_atoms) ** 2).sum())
        n_frames += b.num_graphs
        if b.forces is not None:
            df = (out["forces"].detach() - b.forces).double()
            f_abs += float(df.abs().sum())
            f_sq += float((df * df).sum())
            lf += float((df * df).sum())
            n_comp += df.numel()
    model.train(was_training)
    return {
        "energy_mae": 1000 * e_abs / n_frames,
        "energy_rmse": 1000 * math.sqrt(e_sq / n_frames),
        "forces_mae": 1000 * f_abs / n_comp if n_comp else None,
        "forces_rmse": 1000 * math.sqrt(f_sq / n_comp) if n_comp else None,
        "loss_energy": le / n_frames,
        "loss_forces": lf / n_comp if n_comp else 0.0,
        "n_frames": n_frames,
    }


def evaluate(model, dataset, indices, batch_size: int = 50, device=None) -> dict[str, float]:
    """Deprecated name of :func:`error_metrics` (one of three things called "evaluate"; the others are
    :func:`spherequant.models.evaluation.evaluate_checkpoint` and the ``spherequant evaluate`` command)."""
    warnings.warn("train.evaluate is deprecated: use train.error_metrics", DeprecationWarning, stacklevel=2)
    return error_metrics(model, dataset, indices, batch_size, device)


def _rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_metrics(history: list[dict], out_dir: Path, plot: bool) -> None:
    buf = io.StringIO()
    # the union of the rows' keys: a run resumed from an older version gains columns its first rows lack
    fields = list(dict.fromkeys(k for row in history for k in row))
    writer = csv.DictWriter(buf, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows(history)
    _atomic_text(buf.getvalue(), out_dir / "metrics.csv")
    _atomic_text(json.dumps(history, indent=1), out_dir / "metrics.json")
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ep = [h["epoch"] for h in history]
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
        ax[0].semilogy(ep, [h["val_energy_mae"] for h in history], label="val energy MAE (meV)")
        ax[0].semilogy(ep, [h["val_forces_mae"] for h in history], label="val force MAE (meV/Å)")
        ax[0].set_xlabel("epoch")
        ax[0].legend()
        train_loss = [float("nan") if h["train_loss"] is None else h["train_loss"] for h in history]
        ax[1].semilogy(ep, train_loss, label="train loss")
        ax[1].semilogy(ep, [h["val_loss"] for h in history], label="val loss (EMA)")
        ax[1].set_xlabel("epoch")
        ax[1].legend()
        fig.tight_layout()
        atomic_write(out_dir / "learning_curve.png", lambda fh: fig.savefig(fh, format="png", dpi=100))
        plt.close(fig)


# ------------------------------------------------------------------------------------- run folder, NaN
class TrainingDivergedError(RuntimeError):
    """Training produced NaN or inf (loss, gradient, weights, EMA weights or validation loss).

    Raised by :func:`train` with ``on_nonfinite: "stop"`` at the first non-finite value, and with
    ``"rollback"`` once ``max_rollbacks`` rollbacks are spent. Nothing of the failing epoch is written:
    ``last.pt`` and ``best.pt`` keep the last finite epoch.

    Attributes
    ----------
    epoch : int
        The failing epoch.
    batch : int or None
        1-based training batch of the failure, None when the end-of-epoch check (weights, EMA weights,
        validation loss) failed.
    quantity : str
        What was non-finite, e.g. ``"training loss"`` or ``"gradient of 'layers.0.w'"``.
    """

    def __init__(self, message: str, *, epoch: int, batch: int | None, quantity: str):
        super().__init__(message)
        self.epoch, self.batch, self.quantity = epoch, batch, quantity


class RunDirectoryError(ValueError):
    """``output_dir`` holds another run, is in use by a running training, or differs from a resumed run."""


class _NonFinite(Exception):
    def __init__(self, quantity: str, value: float, epoch: int, batch: int | None):
        super().__init__(quantity)
        self.quantity, self.value, self.epoch, self.batch = quantity, value, epoch, batch


#: Result files of a run; a folder holding any of them belongs to that run.
_RUN_RESULTS = (
    "last.pt",
    "best.pt",
    "metrics.csv",
    "metrics.json",
    "learning_curve.png",
    "test_metrics.json",
)
_RUN_RECORD = "run.json"
_LOCK_NAME = ".train.lock"
_SPLIT_FILES = tuple(f"{p}.{ext}" for p in ("train", "val", "test") for ext in ("npy", "txt"))
#: Config keys a resume may change: the number of epochs (extend, not below the epochs done), where the run
#: computes and where its folder now lies, reporting, and the NaN policy. Every other key fixes the numbers.
RESUME_MUTABLE_KEYS = ("epochs", "device", "output_dir", "progress", "plot", "evaluate_test", "on_nonfinite",
                       "max_rollbacks", "rollback_lr_factor", "stop_at_min_lr", "compile")  # fmt: skip
_MISSING = object()


def data_fingerprint(dataset: data_mod.MolecularDataset) -> str:
    """Short SHA-256 of a data set's atoms per frame, atomic numbers and energies (identifies a run's data).

    Examples
    --------
    >>> ds = data_mod.MolecularDataset([1, 1], [[[0, 0, 0], [0.7, 0, 0]]], [-1.0], [[[0, 0, 0], [0, 0, 0]]])
    >>> len(data_fingerprint(ds))
    16
    """
    if not isinstance(dataset, data_mod.MolecularDataset):
        raise TypeError(f"dataset must be a MolecularDataset, got {type(dataset).__name__}")
    h = hashlib.sha256()
    for arr in (dataset.ptr, dataset.numbers, dataset.energies):
        a = np.ascontiguousarray(arr)
        h.update(str(a.dtype).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _read_ckpt(path: Path, *, allow_nonfinite: bool = False) -> dict:
    """Read a checkpoint through the shared safe reader of :mod:`~spherequant.models.checkpoints`
    (``read_checkpoint``: no code execution, non-finite weights refused unless ``allow_nonfinite``)."""
    return ckpt_mod.read_checkpoint(path, allow_nonfinite=allow_nonfinite)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _config_diff(old: dict, new: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, old, new)`` for every differing entry; nested mappings are compared key by key."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diff(a, b, f"{prefix}{key}.")
        elif not _same_value(a, b):
            out.append((f"{prefix}{key}", a, b))
    return out


def _same_value(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _run_differences(
    old_config: dict, old_fp: str | None, config: TrainConfig, fp: str
) -> list[tuple[str, Any, Any]]:
    """``(key, old, new)`` for what differs between a recorded run and ``config`` on data ``fp``."""
    defaults = TrainConfig().to_dict()  # keys added after the record was written take their defaults
    old = {**defaults, **old_config}
    diffs = _config_diff(old, config.to_dict())
    if old_fp is not None:  # same data under another name (moved file) is the same run
        diffs = [d for d in diffs if d[0] != "dataset"]
        if old_fp != fp:
            diffs.append(("dataset contents (fingerprint)", old_fp, fp))
    return diffs


def _describe(diffs: list[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, a, b in diffs)


def _show(v) -> str:
    return "(absent)" if v is _MISSING else repr(v)


def _recorded_run(out_dir: Path) -> tuple[dict | None, str | None, str]:
    """The configuration and data fingerprint of the run in ``out_dir``: from ``run.json``, else (older runs)
    from ``last.pt`` / ``best.pt``. Returns ``(config or None, fingerprint or None, why not found)``."""
    rec = _read_json(out_dir / _RUN_RECORD)
    if isinstance(rec, dict) and isinstance(rec.get("train_config"), dict):
        return rec["train_config"], rec.get("data_fingerprint"), ""
    why = "it records no configuration"
    for name in ("last.pt", "best.pt"):
        if (out_dir / name).is_file():
            try:
                ckpt = _read_ckpt(out_dir / name, allow_nonfinite=True)
            except (OSError, ValueError) as err:
                why = f"its {name} cannot be read ({err})"
                continue
            if isinstance(ckpt.get("train_config"), dict):
                return ckpt["train_config"], ckpt.get("data_fingerprint"), ""
    return None, None, why


def _prepare_fresh(out_dir: Path, config: TrainConfig, fp: str, overwrite: bool, n_frames: int) -> str:
    """Make ``out_dir`` ready for a new run; returns where the split comes from (``"drawn"`` or ``"files"``).

    A folder holding results of a run (:data:`_RUN_RESULTS`) is refused, naming what differs, unless
    ``overwrite``, which deletes that run's files (only those; other files stay). Files of a start that ended
    before its first epoch (``run.json``, the drawn split) are replaced. A ``split/`` folder placed in a new
    folder by the user (no ``run.json``) is the split, if its sizes agree with ``n_train`` / ``n_val``; it is
    input, not output, so ``overwrite`` keeps it.
    """
    results = [n for n in _RUN_RESULTS if (out_dir / n).exists()]
    if results and not overwrite:
        old, old_fp, why = _recorded_run(out_dir)
        what = f"output_dir {str(out_dir)!r} already holds another run ({', '.join(results)})"
        if old is None:
            detail = f"{why}, so it cannot be compared"
        else:
            diffs = _run_differences(old, old_fp, config, fp)
            detail = (
                f"which differs in {_describe(diffs)}" if diffs
                else "with the same configuration (continue it with --resume / resume=True)"
            )  # fmt: skip
        raise RunDirectoryError(
            f"{what} {detail}; pass --overwrite (API: overwrite=True) to delete it and start over, or choose "
            "another output_dir"
        )
    record = _read_json(out_dir / _RUN_RECORD)
    split_dir = out_dir / "split"
    user_split = (isinstance(record, dict) and record.get("split_source") == "files") or (
        not results and record is None and any((split_dir / f).exists() for f in _SPLIT_FILES)
    )
    for name in (*_RUN_RESULTS, _RUN_RECORD):
        (out_dir / name).unlink(missing_ok=True)
    if user_split:
        sp = data_mod.split(
            n_frames, config.n_train, config.n_val, seed=config.split_seed, index_dir=split_dir
        )
        if (len(sp.train), len(sp.val)) != (config.n_train, config.n_val):
            raise RunDirectoryError(
                f"output_dir {str(out_dir)!r} holds a split/ folder with {len(sp.train)} training and "
                f"{len(sp.val)} validation frames, but the config asks for n_train {config.n_train} and "
                f"n_val {config.n_val}; make them agree or remove split/"
            )
        return "files"
    for name in _SPLIT_FILES:
        (split_dir / name).unlink(missing_ok=True)
    if split_dir.is_dir() and not any(split_dir.iterdir()):
        split_dir.rmdir()
    return "drawn"


def _check_resume(out_dir: Path, config: TrainConfig, fp: str) -> dict:
    """The ``last.pt`` a resume continues, after checking that ``config`` only changes
    :data:`RESUME_MUTABLE_KEYS` (and ``epochs`` not below the epochs done)."""
    path = out_dir / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"cannot resume: {str(path)!r} does not exist (start the run without --resume)"
        )
    try:
        ckpt = _read_ckpt(path)
    except ValueError as err:
        raise ValueError(f"cannot resume: {err}") from None
    old = ckpt.get("train_config")
    if not isinstance(old, dict):
        raise ValueError(f"cannot resume: {str(path)!r} records no training configuration")
    diffs = _run_differences(old, ckpt.get("data_fingerprint"), config, fp)
    diffs = [d for d in diffs if d[0].split(".")[0] not in RESUME_MUTABLE_KEYS]
    if diffs:
        raise RunDirectoryError(
            f"cannot resume {str(path)!r} with a changed configuration: {_describe(diffs)} (a resume may "
            f"change only {', '.join(RESUME_MUTABLE_KEYS)}); undo the change, or start over with --overwrite "
            "or in another output_dir"
        )
    if config.epochs < ckpt["epoch"]:
        raise ValueError(
            f"config key 'epochs' is {config.epochs} but {str(path)!r} already holds epoch "
            f"{ckpt['epoch']}; a resume can only keep or extend the number of epochs"
        )
    return ckpt


class _RunLock:
    """``output_dir/.train.lock``, created with ``O_CREAT | O_EXCL``; holds pid, host, start time, a token.

    A lock whose process is gone (same host, pid not running) is stale and taken over; a lock of a live
    process, or of another host (which cannot be checked), is refused with a message naming it.
    """

    def __init__(self, path: Path):
        self.path = path
        self.token: str | None = None

    def acquire(self) -> None:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "token": uuid.uuid4().hex,
        }
        for attempt in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = _read_json(self.path)
                if attempt < 2 and self._stale(holder):
                    self._break(holder)
                    continue
                raise RunDirectoryError(self._held_message(holder)) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(info, fh)
                fh.flush()
                os.fsync(fh.fileno())
            self.token = info["token"]
            return

    def _stale(self, holder) -> bool:
        if not isinstance(holder, dict):  # unreadable: a writer died between create and write, or torn
            try:
                return time.time() - self.path.stat().st_mtime > 30
            except FileNotFoundError:
                return True
        if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return False
        return not pid_alive(holder["pid"])

    def _break(self, holder) -> None:
        """Remove the stale lock ``holder``; a live lock another process created meanwhile is put back."""
        aside = self.path.with_name(f"{self.path.name}.stale.{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        moved = _read_json(aside)
        if isinstance(holder, dict) and isinstance(moved, dict) and moved != holder:
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
        aside.unlink(missing_ok=True)

    def _held_message(self, holder) -> str:
        where = f"output_dir {str(self.path.parent)!r} is in use by another training run"
        if isinstance(holder, dict):
            who = (
                f"pid {holder.get('pid')} on host {holder.get('host')!r}, started {holder.get('started_utc')}"
            )
        else:
            who = "a lock file being written"
        return (
            f"{where} ({who}; lock file {str(self.path)!r}); wait for it to finish, or delete the lock "
            "file if that run is certainly gone"
        )

    def release(self) -> None:
        if self.token is None:
            return
        holder = _read_json(self.path)
        if isinstance(holder, dict) and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)
        self.token = None


def _as_config(config) -> TrainConfig:
    if isinstance(config, (str, os.PathLike)):
        return load_config(config)
    if isinstance(config, dict):
        return TrainConfig.from_dict(config)
    if isinstance(config, TrainConfig):
        return config.validate()
    raise TypeError(f"config must be a TrainConfig, dict or YAML path, got {type(config).__name__}")


def _state_nonfinite(state: dict) -> str | None:
    """Name of the first floating tensor of ``state`` holding NaN/inf, or None."""
    for name, v in state.items():
        if torch.is_tensor(v) and v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all()):
            return name
    return None


# ---------------------------------------------------------------------------------------------- training
def train(
    config: TrainConfig | dict | str | os.PathLike,
    *,
    resume: bool = False,
    dataset=None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a So3krates model as described by ``config``.

    The output folder belongs to one run. A new run in a folder that holds results of another run is
    refused (:class:`RunDirectoryError`, naming what differs) unless ``overwrite``; a resume whose config
    differs from ``last.pt`` in any key outside :data:`RESUME_MUTABLE_KEYS` is refused, naming the keys; a
    folder in use by a running training (lock file ``.train.lock``) is refused. Non-finite values stop the
    run (:class:`TrainingDivergedError`) or roll it back, as ``config.on_nonfinite`` says.

    Parameters
    ----------
    config : TrainConfig, dict or path to a YAML file
    resume : bool
        Continue from ``output_dir/last.pt`` (exactly: same parameters as an uninterrupted run on the same
        device type).
    dataset : MolecularDataset, optional
        Use this data instead of loading ``config.dataset``.
    overwrite : bool
        Delete the files of a previous run in ``output_dir`` (only the files a run writes) and start over.

    Returns
    -------
    dict
        ``history`` (list of per-epoch metric rows), ``best`` (best validation row), ``test`` (test metrics or
        None), ``output_dir``, ``model``; on rank 0 only when run under ``torchrun``; other ranks get the same
        keys.

    Raises
    ------
    TrainingDivergedError
        NaN/inf in training (see ``on_nonfinite``).
    RunDirectoryError
        ``output_dir`` belongs to another run, differs from the resumed run, or is in use.
    FileNotFoundError
        ``resume`` without ``output_dir/last.pt``.
    """
    run = TrainingRun(config, resume=resume, dataset=dataset, overwrite=overwrite)
    try:
        return run.fit()
    finally:
        run.close()


class TrainingRun:
    """One training run: what :func:`train` does, as named steps.

    Construction checks everything a user can get wrong (config, data, output folder, resume checkpoint,
    initial checkpoints) and claims the folder (``_setup``: processes, folder, split, models, optimizer,
    resumed state); :meth:`fit` runs the epoch loop (one epoch: ``_train_epoch``, then ``_end_epoch``:
    validation, row, checkpoints) and the final refit and test evaluation; :meth:`close`
    releases the folder's lock (also after errors). ``train_cli`` constructs it first, so setup errors are
    one-line user errors and never follow hours of training.

    Parameters
    ----------
    config : TrainConfig, dict or path to a YAML file
    resume, dataset, overwrite
        As for :func:`train`.
    """

    def __init__(self, config, *, resume: bool = False, dataset=None, overwrite: bool = False):
        for name, value in (("resume", resume), ("overwrite", overwrite)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other (overwrite deletes the run to resume)")
        self.config = _as_config(config)
        self.lock: _RunLock | None = None
        self.own_group = False
        try:
            self._setup(resume, dataset, overwrite)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the folder's lock and a process group this run started (idempotent)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.own_group and dist.is_initialized():
            dist.destroy_process_group()
            self.own_group = False

    # -- setup ------------------------------------------------------------------------------------------
    def _setup(self, resume: bool, dataset, overwrite: bool) -> None:
        """The setup steps in order: processes and device, data, output folder, split, models, optimizer,
        resumed state."""
        config = self.config
        self._init_processes()
        self.dtype = _DTYPES[config.dtype]
        self.out_dir = Path(config.output_dir)
        self.ds = dataset if dataset is not None else load_training_data(config.dataset)
        self.fingerprint = data_fingerprint(self.ds)
        resume_ckpt, split_source = self._claim_folder(resume, overwrite)
        self.split = self._load_split(resume, split_source)
        # the elements of the training frames, stored in every checkpoint: a loaded model refuses others
        ds = self.ds
        z_train = [ds.numbers[ds.ptr[i] : ds.ptr[i + 1]] for i in np.asarray(self.split.train)]
        self.trained_elements = sorted(int(z) for z in np.unique(np.concatenate(z_train)))
        if resume and not self.is_main:
            resume_ckpt = _read_ckpt(self.out_dir / "last.pt")
        torch.manual_seed(config.seed)
        self._build_models(resume_ckpt)
        self._build_optimizer()
        self._restore(resume_ckpt)
        self.net = self.model
        if self.distributed:
            device = self.device
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )

    def _init_processes(self) -> None:
        """World size, rank, device; the process group under ``torchrun``."""
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = device = _resolve_device(self.config.device, local_rank)
        self.distributed = self.world > 1
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.own_group = True
        if device.type == "cuda":
            torch.cuda.set_device(device)
        self.is_main = self.rank == 0

    def _claim_folder(self, resume: bool, overwrite: bool) -> tuple[dict | None, str]:
        """Rank 0 claims the output folder (lock, run checks) and reads the resume checkpoint; the other
        ranks learn the outcome from it. Returns ``(resume checkpoint or None, split source)``."""
        out_dir, config = self.out_dir, self.config
        resume_ckpt, split_source, error = None, "drawn", None
        if self.is_main:
            try:
                if out_dir.exists() and not out_dir.is_dir():
                    raise RunDirectoryError(f"output_dir {str(out_dir)!r} exists and is not a folder")
                out_dir.mkdir(parents=True, exist_ok=True)
                self.lock = _RunLock(out_dir / _LOCK_NAME)
                self.lock.acquire()
                if resume:
                    resume_ckpt = _check_resume(out_dir, config, self.fingerprint)
                else:
                    split_source = _prepare_fresh(out_dir, config, self.fingerprint, overwrite, len(self.ds))
            except Exception as err:  # re-raised below, after telling the other ranks
                error = err
        if self.distributed:
            msg = [None if error is None else f"{type(error).__name__}: {error}"]
            dist.broadcast_object_list(msg, src=0)
            if error is None and msg[0] is not None:
                raise RunDirectoryError(f"rank 0 refused the run: {msg[0]}")
        if error is not None:
            raise error
        return resume_ckpt, split_source

    def _load_split(self, resume: bool, split_source: str):
        """Rank 0 draws (or reloads) the split and writes it with the run record first; the others read it."""
        config, out_dir, ds = self.config, self.out_dir, self.ds
        split_dir = out_dir / "split"
        split = None
        if self.is_main:
            split = data_mod.split(
                ds, config.n_train, config.n_val, seed=config.split_seed, index_dir=split_dir
            )
            if resume:
                old = _read_json(out_dir / _RUN_RECORD)
                split_source = old.get("split_source", "drawn") if isinstance(old, dict) else "drawn"
            record = {
                "train_config": config.to_dict(),
                "data_fingerprint": self.fingerprint,
                "n_frames": len(ds),
                "split_source": split_source,
                "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            _atomic_text(json.dumps(record, indent=1), out_dir / _RUN_RECORD)
        if self.distributed:
            dist.barrier()
        if split is None:
            split = data_mod.split(
                ds, config.n_train, config.n_val, seed=config.split_seed, index_dir=split_dir
            )
        return split

    def _build_models(self, resume_ckpt: dict | None) -> None:
        """The trained model, its EMA and the EMA model used for validation (prepared alike when
        quantized), the normalisation, and the QAT schedule (None for FP32)."""
        config, device, dtype = self.config, self.device, self.dtype
        if config.quantization is None:
            init = config.init_checkpoint
            model, normalisation = _float_model(
                config, init, "init_checkpoint", self.ds, self.split, device, dtype
            )
            ema_model = ckpt_mod.rebuild_model(model.config, dtype=dtype, device=device)
            self.sched = None
        else:
            model, normalisation = _build_quantized_model(
                config, self.ds, self.split, device, dtype, resume_ckpt
            )
            entry = ckpt_mod.quantization_entry(model)
            ema_model = ckpt_mod.rebuild_model(model.config, entry, dtype=dtype, device=device)
            self.sched = GAQScheduler(quantization_spec(model))
        self.ema = _EMA(model, config.ema_decay)
        if config.quantization is not None:
            ema_model.load_state_dict(self.ema.shadow)
            ckpt_mod.restore_switches(ema_model, entry)
        self.model, self.normalisation, self.ema_model = model, normalisation, ema_model

    def _build_optimizer(self) -> None:
        """Adam (fused with ``compile``: the same update, one kernel per tensor) and the lr schedule."""
        config = self.config
        fused = True if config.compile else None
        optimizer = torch.optim.Adam(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=fused
        )
        if config.scheduler == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=config.lr_factor, patience=config.patience, min_lr=config.min_lr
            )
        elif config.scheduler == "exponential":
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda ep: max(config.lr_factor**ep, config.min_lr / config.lr)
            )
        else:
            scheduler = None
        self.optimizer, self.scheduler = optimizer, scheduler

    def _restore(self, ckpt: dict | None) -> None:
        """Progress counters; with a resume checkpoint, everything the run had at its last epoch."""
        self.start_epoch, self.history, self.best = 1, [], None
        self.rollbacks: list[dict] = []
        self.last_saved: int | None = None
        if ckpt is None:
            return
        self.model.load_state_dict(ckpt["model_state"])
        self.ema.shadow = {k: _to_device(v, self.device) for k, v in ckpt["ema_state"].items()}
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"])
        self.start_epoch = ckpt["epoch"] + 1
        self.history = list(ckpt["history"])
        self.best = ckpt.get("best")
        self.rollbacks = list(ckpt.get("nonfinite_rollbacks") or [])
        self.last_saved = ckpt["epoch"]

    # -- training ---------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train: the epoch loop, then the energy-shift refit and the test evaluation of ``best.pt``.

        Returns
        -------
        dict
            As :func:`train`.
        """
        self._epoch_loop()
        test = self._finish_run()
        return {
            "history": self.history,
            "best": self.best,
            "test": test,
            "output_dir": str(self.out_dir),
            "model": self.model,
        }

    def _epoch_loop(self) -> None:
        """Every remaining epoch (epoch 0 of a post-training quantization: calibrate, evaluate, save), with
        the non-finite policy: stop, or roll back and repeat the epoch at a lower learning rate."""
        from tqdm.auto import tqdm

        config = self.config
        todo = max(config.epochs - self.start_epoch + 1, 0)
        show = config.progress and self.is_main
        self.bar = tqdm(total=todo, desc="epochs", disable=not show, dynamic_ncols=True)
        try:
            if config.epochs == 0 and not self.history:
                try:
                    self._end_epoch(0, None, None, (time.perf_counter(), time.process_time()))
                except _NonFinite as bad:
                    raise self._diverged(bad) from None
            epoch = self.start_epoch
            while epoch <= config.epochs and not self._converged():  # (a resumed converged run does no epoch)
                snapshot = self._snapshot() if config.on_nonfinite == "rollback" else None
                t0 = (time.perf_counter(), time.process_time())
                try:
                    train_loss, train_lee = self._train_epoch(epoch)
                    self._end_epoch(epoch, train_loss, train_lee, t0)
                except _NonFinite as bad:
                    if snapshot is None or len(self.rollbacks) >= config.max_rollbacks:
                        raise self._diverged(bad) from None
                    self._rollback(snapshot, bad)
                    continue  # the same epoch again, at the lower learning rate
                self.bar.update(1)
                epoch += 1
        finally:
            self.bar.close()

    def _finish_run(self) -> dict | None:
        """Refit the energy shifts of ``best.pt`` and evaluate it on the test frames (None when not asked)."""
        config, out_dir, ds, split, device = self.config, self.out_dir, self.ds, self.split, self.device
        best_path = out_dir / "best.pt"
        if config.refit_energy_shift and self.is_main and best_path.is_file():
            refit_energy_shift(best_path, dataset=ds, indices=split.train, device=device)
        if self.distributed:
            dist.barrier()
        if not (config.evaluate_test and len(split.test) and best_path.is_file()):
            return None
        best_model = ckpt_mod.load_model(best_path, use_ema=True, device=device)
        test = error_metrics(best_model, ds, split.test, config.val_batch_size, device)
        if self.is_main:
            _atomic_text(json.dumps(test, indent=1), out_dir / "test_metrics.json")
        return test

    def _converged(self) -> bool:
        """``stop_at_min_lr``: the plateau schedule sits at ``min_lr`` and has seen ``patience`` epochs there
        without improvement (decided from the scheduler's state, so a resumed run decides the same)."""
        config, scheduler = self.config, self.scheduler
        if not (config.stop_at_min_lr and config.scheduler == "plateau" and scheduler is not None):
            return False
        at_floor = all(g["lr"] <= config.min_lr * (1 + 1e-9) for g in self.optimizer.param_groups)
        return at_floor and scheduler.num_bad_epochs >= config.patience

    def _train_epoch(self, epoch: int) -> tuple[float, float]:
        config, model, optimizer = self.config, self.model, self.optimizer
        rank, world, device, dtype = self.rank, self.world, self.device, self.dtype
        model.train()
        gen = None
        if self.sched is not None:
            on = self.sched.on_epoch_start(model, epoch)
            set_quant_enabled(self.ema_model, "equivariant", on)
            gen = torch.Generator().manual_seed(int(config.seed) * 1_000_003 + epoch * 7919 + rank)
        order = np.random.default_rng([config.seed, epoch]).permutation(np.asarray(self.split.train))
        n_batches = -(-len(order) // config.batch_size)
        loss_sum = lee_sum = 0.0
        params = [p for p in model.parameters() if p.requires_grad]
        for k in range(n_batches):
            chunk = order[k * config.batch_size : (k + 1) * config.batch_size]
            if self.distributed:
                if len(chunk) < world:  # every rank needs at least one frame; same decision on all ranks
                    continue
                chunk = chunk[rank::world]
            b = data_mod.collate(self.ds, chunk, device=device, dtype=dtype)
            if b.forces is not None:
                out = self._train_forward(b.z, b.pos, b.batch, b.num_graphs)
            else:  # energy-only data
                out = self.net(b.z, b.pos, b.batch, num_graphs=b.num_graphs, compute_forces=False)
            le, lf = _loss_terms(out, b)
            loss = config.energy_weight * le + config.forces_weight * lf
            if self.sched is not None and self.sched.spec.schedule.lee_weight > 0:
                extra = qat_loss_terms(
                    model, b, self.sched.spec, out=out, generator=gen, forward=self._lee_forward
                )
                loss = loss + extra["loss"]
                lee_sum += float(extra["lee"].detach())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._check_step(loss, params, epoch, k + 1)
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            self.ema.update(model)
            loss_sum += float(loss.detach())
        train_loss = loss_sum / max(n_batches, 1)
        train_lee = lee_sum / max(n_batches, 1)
        if self.distributed:
            t = torch.tensor([train_loss, train_lee], dtype=torch.float64, device=device)
            dist.all_reduce(t)
            train_loss, train_lee = (float(v) / world for v in t)
        return train_loss, train_lee

    def _train_forward(self, z, pos, batch, num_graphs, *, plain: bool = False):
        """Energies and forces of a training step: the compiled graph with ``compile`` (one process, a model
        :mod:`~spherequant.models.compiled` handles), else the network (fast path or DDP wrapper; the bare
        model with ``plain``, as the LEE penalty's extra passes use it)."""
        if self.config.compile and not self.distributed:
            out = compiled_mod.training_forward(self.model, z, pos, batch, num_graphs=num_graphs)
            if out is not None:
                return out
        return (self.model if plain else self.net)(z, pos, batch, num_graphs=num_graphs)

    def _lee_forward(self, z, pos, batch, num_graphs):
        return self._train_forward(z, pos, batch, num_graphs, plain=True)

    def _check_step(self, loss: torch.Tensor, params: list, epoch: int, batch: int) -> None:
        """Raise :class:`_NonFinite` when the loss or a gradient is NaN/inf (on any rank), before the step."""
        flags = [torch.isfinite(loss.detach()).reshape(())]
        flags += [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
        ok = torch.stack(flags).all()
        if self.distributed:
            bad = (~ok).to(torch.int32).reshape(1)
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
            ok = bad[0] == 0
        if bool(ok):
            return
        value = float(loss.detach())
        if not math.isfinite(value):
            raise _NonFinite("training loss", value, epoch, batch)
        for name, p in self.model.named_parameters():
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                first = float(p.grad[~torch.isfinite(p.grad)].flatten()[0])
                raise _NonFinite(f"gradient of {name!r}", first, epoch, batch)
        raise _NonFinite("loss or gradient on another rank", float("nan"), epoch, batch)

    def _end_epoch(self, epoch: int, train_loss, train_lee, t0: tuple[float, float]) -> None:
        """After an epoch's training steps: validate, record the row (and the best), save the checkpoints.

        ``t0`` is ``(time.perf_counter(), time.process_time())`` at the epoch's start: the row's
        ``epoch_time_s`` is the epoch's wall time and ``epoch_cpu_s`` the process CPU time (every thread of
        this process, not the compiler's worker subprocesses of a first compiled epoch), validation included.
        """
        val, val_loss = self._validate(epoch)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_energy_mae": val["energy_mae"],
            "val_forces_mae": val["forces_mae"],
            "val_energy_rmse": val["energy_rmse"],
            "val_forces_rmse": val["forces_rmse"],
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_time_s": time.perf_counter() - t0[0],
            "epoch_cpu_s": time.process_time() - t0[1],
        }
        if self.sched is not None:
            row["train_lee"] = train_lee
            row["quant_equivariant"] = branches_enabled(self.model)["equivariant"]
        self.history.append(row)
        # during the GAQ warm-up the equivariant branch is not quantized yet: such epochs are never "best";
        # a recorded best that is not finite (older runs) is always replaced
        eligible = epoch == 0 or self.sched is None or self.sched.equivariant_enabled(epoch)
        best = self.best
        improved = eligible and (
            best is None or not math.isfinite(best["val_loss"]) or val_loss < best["val_loss"]
        )
        if improved:
            self.best = dict(row)
        self.bar.set_postfix(
            E=f"{val['energy_mae']:.2f}meV", F=f"{val['forces_mae'] or 0:.2f}meV/A", lr=f"{row['lr']:.1e}"
        )
        if self.is_main:
            self._save_checkpoints(epoch, improved)
        self.last_saved = epoch
        if self.distributed:
            dist.barrier()

    def _validate(self, epoch: int) -> tuple[dict, float]:
        """Check the weights and the EMA weights, validate the EMA model, step the lr schedule; returns the
        validation metrics and loss. Raises ``_NonFinite`` for NaN/inf anywhere."""
        config, ema = self.config, self.ema
        for what, state in (("weight", self.model.state_dict()), ("EMA weight", ema.shadow)):
            name = _state_nonfinite(state)
            if name is not None:
                v = state[name]
                raise _NonFinite(f"{what} {name!r}", float(v[~torch.isfinite(v)].flatten()[0]), epoch, None)
        self.ema_model.load_state_dict(ema.shadow)
        val = error_metrics(self.ema_model, self.ds, self.split.val, config.val_batch_size, self.device)
        val_loss = config.energy_weight * val["loss_energy"] + config.forces_weight * val["loss_forces"]
        if not math.isfinite(val_loss):
            raise _NonFinite("validation loss", val_loss, epoch, None)
        if self.scheduler is not None and epoch > 0:
            if config.scheduler == "plateau":
                self.scheduler.step(val_loss)
            else:
                self.scheduler.step()
        return val, val_loss

    def _save_checkpoints(self, epoch: int, improved: bool) -> None:
        """Write ``last.pt`` (and ``best.pt`` when ``improved``) atomically, then the metrics files."""
        model, scheduler = self.model, self.scheduler
        ckpt = {
            "model_config": model.config,
            "model_state": model.state_dict(),
            "ema_state": self.ema.shadow,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "epoch": epoch,
            "history": self.history,
            "best": self.best,
            "normalisation": self.normalisation,
            "trained_elements": self.trained_elements,
            "train_config": self.config.to_dict(),
            "data_fingerprint": self.fingerprint,
            "nonfinite_rollbacks": self.rollbacks,
            "rng": _rng_state(),
            "world_size": self.world,
        }
        if self.sched is not None:
            ckpt["quantization"] = ckpt_mod.quantization_entry(model)
        _atomic_save(ckpt, self.out_dir / "last.pt")
        if improved:
            _atomic_save(ckpt, self.out_dir / "best.pt")
        _write_metrics(self.history, self.out_dir, self.config.plot)

    # -- non-finite values ------------------------------------------------------------------------------
    def _snapshot(self) -> dict[str, Any]:
        return {
            "model": {k: _clone(v) for k, v in self.model.state_dict().items()},
            "ema": {k: _clone(v) for k, v in self.ema.shadow.items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scheduler": None if self.scheduler is None else copy.deepcopy(self.scheduler.state_dict()),
            "rng": _rng_state(),
            "n_history": len(self.history),
            "best": copy.deepcopy(self.best),
        }

    def _rollback(self, snap: dict[str, Any], bad: _NonFinite) -> None:
        """Return to ``snap`` (the start of the failing epoch) and lower the learning rate."""
        factor = self.config.rollback_lr_factor
        self.model.load_state_dict(snap["model"])
        self.ema.shadow = {k: _clone(v) for k, v in snap["ema"].items()}
        self.optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))
        if self.scheduler is not None:
            self.scheduler.load_state_dict(copy.deepcopy(snap["scheduler"]))
            if isinstance(self.scheduler, torch.optim.lr_scheduler.LambdaLR):
                self.scheduler.base_lrs = [b * factor for b in self.scheduler.base_lrs]
        for group in self.optimizer.param_groups:
            group["lr"] *= factor
            if "initial_lr" in group:
                group["initial_lr"] *= factor
        _set_rng_state(snap["rng"])
        del self.history[snap["n_history"] :]
        self.best = snap["best"]
        lr = self.optimizer.param_groups[0]["lr"]
        event = {"epoch": bad.epoch, "batch": bad.batch, "quantity": bad.quantity, "lr_after": lr}
        self.rollbacks.append(event)
        if self.is_main:
            warnings.warn(
                f"non-finite {bad.quantity} at epoch {bad.epoch}"
                + (f", batch {bad.batch}" if bad.batch else "")
                + f": rolled back to the start of the epoch, lr now {lr:.3g} (rollback {len(self.rollbacks)} "
                f"of at most {self.config.max_rollbacks})",
                RuntimeWarning,
                stacklevel=2,
            )

    def _diverged(self, bad: _NonFinite) -> TrainingDivergedError:
        where = f"epoch {bad.epoch}" + (f", batch {bad.batch}" if bad.batch else " (end-of-epoch check)")
        saved = (
            "no checkpoint was written" if self.last_saved is None
            else f"last.pt keeps epoch {self.last_saved}"
        )  # fmt: skip
        after = f" after {len(self.rollbacks)} rollback(s) (max_rollbacks)" if self.rollbacks else ""
        lr = self.optimizer.param_groups[0]["lr"]
        hint = "" if self.rollbacks else "; or continue with resume and on_nonfinite: rollback"
        message = (
            f"training diverged{after}: non-finite {bad.quantity} ({bad.value}) at {where}, lr {lr:.3g}; "
            f"nothing of this epoch was saved ({saved} in {str(self.out_dir)!r}); start over (overwrite) "
            f"with a lower 'lr' or a 'grad_clip'{hint}"
        )
        return TrainingDivergedError(message, epoch=bad.epoch, batch=bad.batch, quantity=bad.quantity)


def refit_energy_shift(
    checkpoint: str | os.PathLike, *, dataset=None, indices=None, batch_size: int = 50, device="cpu"
) -> dict[str, Any]:
    """Least-squares correction of a checkpoint's per-element energy shifts on its training frames, in place.

    With residuals ``r_f = E_ref(f) - E_model(f)`` (eV) of the EMA model over the training frames and the
    element-count matrix ``C`` (frames x elements), the correction ``d`` minimises ``||C d - r||`` (minimum
    norm when ``C`` is rank deficient, e.g. a one-molecule data set, where only the molecule's total shift is
    determined). ``d`` is added to ``energy_shift`` of both the raw and the EMA weights; forces do not change.
    Idempotent up to round-off; the checkpoint is rewritten atomically and records ``energy_shift_refit``
    (the correction per element in eV, the residual mean before and after, in meV).

    Parameters
    ----------
    checkpoint : path-like
        Training checkpoint (``best.pt``/``last.pt``) or exported model file.
    dataset : MolecularDataset, optional
        The training data (default: rebuilt from the checkpoint's ``train_config``).
    indices : array_like of int, optional
        Training frames (default: the checkpoint's training split).
    batch_size : int
        Frames per model call.
    device : str or torch.device
        Where to evaluate.

    Returns
    -------
    dict
        The ``energy_shift_refit`` record.
    """
    path = Path(checkpoint)
    ckpt = _read_ckpt(path)
    if "model_state" not in ckpt or "energy_shift" not in ckpt["model_state"]:
        raise ValueError(f"{str(path)!r} is not a So3krates checkpoint (no model_state.energy_shift)")
    if dataset is None or indices is None:
        tc = ckpt.get("train_config") or {}
        if "dataset" not in tc:
            raise ValueError(f"{str(path)!r} records no training configuration; pass dataset and indices")
        dataset = load_training_data(str(tc["dataset"])) if dataset is None else dataset
        if indices is None:
            sp = data_mod.split(len(dataset), n_train=tc.get("n_train", 950), n_val=tc.get("n_val", 50),
                                seed=tc.get("split_seed", 0))  # fmt: skip
            indices = sp.train
    idx = np.asarray(indices, dtype=np.int64)
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError(f"indices must be a non-empty 1-D array of frame indices, got shape {idx.shape}")
    model = ckpt_mod.load_model(ckpt, use_ema=True, device=device)
    p = next(model.parameters())
    resid = []
    for b in data_mod.iterate_batches(dataset, idx, batch_size, device=p.device, dtype=p.dtype):
        out = model(b.z, b.pos, b.batch, num_graphs=b.num_graphs)
        resid.append((b.energy - out["energy"].detach()).double().cpu().numpy())
    r = np.concatenate(resid)
    sub = dataset.subset(idx)
    elements = np.unique(sub.numbers)
    counts = np.zeros((len(sub), len(elements)))
    frame_of_atom = np.repeat(np.arange(len(sub)), sub.n_atoms)
    np.add.at(counts, (frame_of_atom, np.searchsorted(elements, sub.numbers)), 1.0)
    d = np.linalg.lstsq(counts, r, rcond=None)[0]
    after = r - counts @ d
    delta = torch.zeros_like(ckpt["model_state"]["energy_shift"], dtype=torch.float64)
    delta[torch.as_tensor(elements)] = torch.as_tensor(d)
    for key in ("model_state", "ema_state"):
        state = ckpt.get(key)
        if state and "energy_shift" in state:
            old = state["energy_shift"]
            state["energy_shift"] = (old.double() + delta.to(old.device)).to(old.dtype)
    record = {
        "delta_ev": {int(z): float(v) for z, v in zip(elements, d)},
        "residual_mean_mev_before": 1000 * float(r.mean()),
        "residual_mean_mev_after": 1000 * float(after.mean()),
        "n_frames": int(idx.size),
    }
    ckpt["energy_shift_refit"] = record
    _atomic_save(ckpt, path)
    return record


def export_model(
    checkpoint: str | os.PathLike, out_path: str | os.PathLike, *, use_ema: bool = True, convert: bool = False
) -> Path:
    """Write a small inference checkpoint (e.g. ``models/pretrained/<name>.pt``) from a training checkpoint.

    The file keeps ``model_config``, ``model_state`` (the EMA weights by default), ``normalisation``,
    ``train_config``, the best validation row (``metrics``) and, for a quantized model, ``quantization``;
    it loads with :func:`~spherequant.models.checkpoints.load_model` and
    :meth:`~spherequant.models.calculator.SphereQuantCalculator.from_checkpoint`.

    Parameters
    ----------
    checkpoint : path-like
        ``best.pt`` or ``last.pt`` written by :func:`train`.
    out_path : path-like
        Destination ``.pt`` file (written atomically).
    use_ema : bool
        Export the EMA weights (as validated) rather than the raw weights.
    convert : bool
        Quantized models only: store the converted model (integer weight codes + scales, every quantizer
        enabled; ``quantize_(..., step="convert")``) instead of the QAT-prepared float weights.

    Returns
    -------
    pathlib.Path
        ``out_path``.
    """
    ckpt = _read_ckpt(checkpoint)
    for key in ("model_config", "model_state"):
        if key not in ckpt:
            raise ValueError(f"{str(checkpoint)!r} is not a training checkpoint (no {key!r})")
    if not isinstance(convert, bool):
        raise TypeError(f"convert must be a bool, got {type(convert).__name__}")
    quant = ckpt.get("quantization")
    if convert and quant is None:
        raise ValueError(f"convert=True needs a quantized checkpoint; {str(checkpoint)!r} is FP32")
    state = ckpt["ema_state"] if use_ema and ckpt.get("ema_state") else ckpt["model_state"]
    if convert and quant["step"] != "converted":
        model = ckpt_mod.load_model(ckpt, use_ema=use_ema)
        quantize_(model, quantization_spec(model), step="convert")
        state = model.state_dict()
        quant = ckpt_mod.quantization_entry(model)
    small = {
        "model_config": ckpt["model_config"],
        "model_state": {k: _cpu(v) for k, v in state.items()},
        "normalisation": ckpt.get("normalisation"),
        "trained_elements": ckpt_mod.trained_elements(ckpt),
        "train_config": ckpt.get("train_config"),
        "metrics": ckpt.get("best"),
        "epoch": ckpt.get("epoch"),
    }
    if ckpt.get("energy_shift_refit") is not None:
        small["energy_shift_refit"] = ckpt["energy_shift_refit"]
    if quant is not None:
        small["quantization"] = quant
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(small, out_path)
    return out_path


def _cpu(v):
    return v.detach().cpu().clone() if torch.is_tensor(v) else copy.deepcopy(v)
