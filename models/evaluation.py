"""Evaluation of trained force fields on their own test split: energy/force errors and equivariance (LEE).

A checkpoint (training or exported, FP32 or quantized) records its training configuration; the data set and
the rMD17-style split are rebuilt from it, so the test frames are exactly the frames the model never saw in
training or validation.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from spherequant.equivariance import lee

from . import checkpoints as ckpt_mod
from . import data as data_mod
from .baselines import prepare_baseline
from .train import error_metrics, load_training_data

__all__ = [
    "accuracy_and_lee",
    "checkpoint_test_data",
    "evaluate_checkpoint",
    "force_lee",
    "naive_int8_model",
    "naive_int8_ptq",
]


def _count(name: str, value, minimum: int, optional: bool = False):
    """``value`` as an int >= ``minimum`` (None passes when ``optional``); TypeError/ValueError naming it."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_run_args(max_test_frames, lee_frames, n_rotations, seed, device) -> None:
    _count("max_test_frames", max_test_frames, 1, optional=True)
    _count("lee_frames", lee_frames, 1)
    _count("n_rotations", n_rotations, 1)
    _count("seed", seed, 0)
    ckpt_mod.resolve_device(device)


def force_lee(model, dataset, indices, *, n_rotations: int = 8, seed: int = 0, batch_size: int = 50) -> dict:
    """Local equivariance error of the forces, ``|| F(R x) - R F(x) ||`` per atom (Eq. 1), in meV/Angstrom.

    Parameters
    ----------
    model : So3krates
        Any model with the So3krates forward signature (float or quantized).
    dataset : MolecularDataset
        Fixed-composition data set (one molecule).
    indices : array_like of int
        Frames to rotate.
    n_rotations : int
        Haar-random rotations (seeded by ``seed``), each applied to every frame.
    batch_size : int
        Frames per model call.

    Returns
    -------
    dict
        ``lee_mean`` and ``lee_max`` (meV/Angstrom) over rotations, frames and atoms; ``n_frames``,
        ``n_rotations``.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(dataset, data_mod.MolecularDataset):
        raise TypeError(f"dataset must be a MolecularDataset, got {type(dataset).__name__}")
    if not dataset.fixed_composition:
        raise ValueError("force_lee needs a data set of one molecule (fixed composition)")
    n_rotations = _count("n_rotations", n_rotations, 1)
    batch_size = _count("batch_size", batch_size, 1)
    _count("seed", seed, 0)
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError(f"indices must be a non-empty 1-D array of frame indices, got shape {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
    if idx.min() < 0 or idx.max() >= len(dataset):
        raise IndexError(f"indices out of range for {len(dataset)} frames (min {idx.min()}, max {idx.max()})")
    idx = idx.astype(np.int64)
    p = next(model.parameters())
    ptr = dataset.ptr
    first = int(idx[0])
    z = torch.as_tensor(dataset.numbers[ptr[first] : ptr[first + 1]], dtype=torch.long, device=p.device)
    n = z.shape[0]
    frames = np.stack([dataset.positions[ptr[i] : ptr[i + 1]] for i in idx])
    pos_all = torch.as_tensor(frames, dtype=p.dtype, device=p.device)

    def forces(x: torch.Tensor) -> torch.Tensor:  # x: (B, n, 3) -> forces (B, n, 3)
        out = []
        for s in range(0, x.shape[0], batch_size):
            xb = x[s : s + batch_size]
            b = xb.shape[0]
            batch = torch.arange(b, device=x.device).repeat_interleave(n)
            res = model(z.repeat(b), xb.reshape(-1, 3), batch, num_graphs=b)
            out.append(res["forces"].detach().reshape(b, n, 3))
        return torch.cat(out)

    was_training = model.training
    model.eval()
    try:
        res = lee(forces, pos_all, int(n_rotations), seed=seed)
    finally:
        model.train(was_training)
    return {
        "lee_mean": 1000.0 * float(res.mean),
        "lee_max": 1000.0 * float(res.max),
        "lee_frames": int(idx.size),
        "lee_rotations": int(n_rotations),
    }


def evaluate_checkpoint(
    spec: Any,
    *,
    max_test_frames: int | None = None,
    lee_frames: int = 200,
    n_rotations: int = 8,
    seed: int = 0,
    device: str = "cpu",
    force_mode: str | None = None,
) -> dict:
    """Test-split accuracy and force equivariance of a checkpoint, on the data set it was trained on.

    Parameters
    ----------
    spec : str or path-like
        Checkpoint path or pretrained name (see :func:`spherequant.models.checkpoints.load_model`).
    max_test_frames : int, optional
        Evaluate only the first frames of the (seeded, shuffled) test split; all by default.
    lee_frames : int
        Test frames used for the LEE (``n_rotations`` Haar rotations each).
    n_rotations : int
        Rotations per frame for the LEE.
    seed : int
        Seed of the rotations.
    device : str
        Torch device.
    force_mode : {"smooth", "ste"}, optional
        Quantized models: which forces to evaluate (default: the stored mode).

    Returns
    -------
    dict
        ``energy_mae`` (meV), ``forces_mae`` (meV/Angstrom, per component), RMSEs, ``lee_mean``/``lee_max``
        (meV/Angstrom), frame counts, the data set name, ``seconds``.

    Raises
    ------
    TypeError, ValueError
        For a non-integer or too small count, an unknown or unavailable ``device``, an unreadable, unsafe or
        non-finite checkpoint (:func:`~spherequant.models.checkpoints.read_checkpoint`) or one without a
        training configuration; the message names the argument or the file.
    """
    t0 = time.perf_counter()
    _check_run_args(max_test_frames, lee_frames, n_rotations, seed, device)
    raw, ds, sp = checkpoint_test_data(spec)
    model = ckpt_mod.load_model(raw, device=device, force_mode=force_mode)
    out = {"dataset": raw["train_config"]["dataset"], "checkpoint": str(spec)}
    out.update(accuracy_and_lee(model, ds, sp.test, max_test_frames, lee_frames, n_rotations, seed))
    out["seconds"] = time.perf_counter() - t0
    return out


def naive_int8_ptq(
    spec: Any,
    *,
    calibration_frames: int = 100,
    max_test_frames: int | None = None,
    lee_frames: int = 200,
    n_rotations: int = 8,
    seed: int = 0,
    device: str = "cpu",
) -> dict:
    """The paper's naive INT8 baseline applied post-training to an FP32 checkpoint, then evaluated.

    Per-tensor min-max INT8 on every weight and activation, vector components treated as independent scalars
    (:func:`spherequant.models.baselines.prepare_baseline` ``"naive_int8"``), calibrated on the first
    ``calibration_frames`` training frames; no training. Same outputs as :func:`evaluate_checkpoint`.
    """
    t0 = time.perf_counter()
    _check_run_args(max_test_frames, lee_frames, n_rotations, seed, device)
    calibration_frames = _count("calibration_frames", calibration_frames, 1)
    raw, ds, sp = checkpoint_test_data(spec)
    if raw.get("quantization"):
        raise ValueError("naive_int8_ptq needs an FP32 checkpoint")
    model = naive_int8_model(raw, ds, sp, calibration_frames, device)
    out = {"dataset": raw["train_config"]["dataset"], "checkpoint": str(spec), "method": "naive_int8"}
    out.update(accuracy_and_lee(model, ds, sp.test, max_test_frames, lee_frames, n_rotations, seed))
    out["seconds"] = time.perf_counter() - t0
    return out


def naive_int8_model(raw, ds, sp, calibration_frames: int, device):
    """The FP32 checkpoint ``raw`` under naive INT8 PTQ, calibrated on its first ``calibration_frames``
    training frames (batches of 25), in eval mode.

    Parameters
    ----------
    raw : dict
        A loaded FP32 checkpoint (:func:`checkpoint_test_data`).
    ds : MolecularDataset
    sp : Split
        Its split (the training frames calibrate).
    calibration_frames : int
    device : str or torch.device
    """

    model = ckpt_mod.load_model(raw, device=device)
    p = next(model.parameters())
    calib = list(
        data_mod.iterate_batches(ds, sp.train[: int(calibration_frames)], 25, device=p.device, dtype=p.dtype)
    )
    prepare_baseline(model, "naive_int8", calibration_batches=calib)
    return model.eval()


def checkpoint_test_data(spec):
    """``(raw checkpoint dict, its data set, its split)`` for a checkpoint path or pretrained name: the
    data set and split (hence the test frames) its ``train_config`` records."""
    path = ckpt_mod.resolve_checkpoint(spec)
    raw = ckpt_mod.read_checkpoint(path)
    tc = raw.get("train_config")
    if not isinstance(tc, dict) or "dataset" not in tc:
        raise ValueError(f"{str(path)!r} records no training configuration, so its test split is unknown")
    ds = load_training_data(str(tc["dataset"]))
    sp = data_mod.split(
        len(ds), n_train=tc.get("n_train", 950), n_val=tc.get("n_val", 50), seed=tc.get("split_seed", 0)
    )
    return raw, ds, sp


def accuracy_and_lee(model, ds, test, max_test_frames, lee_frames, n_rotations, seed) -> dict:
    """Test errors (:func:`~spherequant.models.train.error_metrics`) on the first ``max_test_frames`` test
    frames (None: all) and the force LEE (:func:`force_lee`) on the first ``lee_frames`` of them."""
    available = len(test)
    test = test if max_test_frames is None else test[: int(max_test_frames)]
    out = dict(error_metrics(model, ds, test))
    out["n_test_frames_available"] = available
    out.update(force_lee(model, ds, test[: int(lee_frames)], n_rotations=n_rotations, seed=seed))
    return out
