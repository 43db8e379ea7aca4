"""One loader for every checkpoint kind: FP32, QAT-prepared and converted quantized So3krates models.

A checkpoint (training ``last.pt`` / ``best.pt`` or an exported inference ``.pt``) holds ``model_config``
(So3krates keywords, as ``model.config`` after any quantization prepare), ``model_state`` (and optionally
``ema_state``) and, for a quantized model, ``quantization`` (see :func:`quantization_entry`). Loading rebuilds
the float model, rebuilds the :class:`~spherequant.models.gaq.QuantizationSpec` from that entry
(:meth:`~spherequant.models.gaq.QuantizationSpec.from_checkpoint`), prepares the model with it
(:func:`~spherequant.models.gaq.quantize_`, every method alike; then ``convert`` when stored converted) and
loads the state; calibration is not repeated, since every calibrated range, codebook and step is part of
the state.

Files are read with ``torch.load(weights_only=True)`` (:func:`read_checkpoint`): opening a checkpoint can
never run code. Besides tensors and plain Python values only NumPy arrays are allowed (training checkpoints
hold the NumPy random state); anything else (a pickled function or class) is refused with a ``ValueError``. A
checkpoint whose weights hold NaN or inf is refused unless ``allow_nonfinite=True``.

The elements a model was trained on travel with it: ``trained_elements`` (sorted atomic numbers) when the
checkpoint records them; for older checkpoints they are derived (:func:`trained_elements`) from the training
normalisation (its per-element energy shifts are fitted on exactly the training frames' elements) or, failing
that, from the data set named in ``train_config``. The loaded model refuses other elements
(:meth:`~spherequant.models.so3krates.So3krates.check_elements`).
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spherequant._validation import check_choice

from . import gaq
from ._quant_state import branches_enabled
from .so3krates import So3krates

__all__ = [
    "PRETRAINED_DIR",
    "QUANT_METHODS",
    "apply_quantization",
    "available_pretrained",
    "check_finite_state",
    "load_model",
    "quantization_entry",
    "quantization_spec",
    "read_checkpoint",
    "rebuild_model",
    "resolve_checkpoint",
    "resolve_device",
    "restore_switches",
    "trained_elements",
]

#: Folder of the shipped checkpoints (``<name>.pt``), installed with the package.
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
QUANT_METHODS = gaq.METHODS


def available_pretrained() -> list[str]:
    """Names of the shipped ``.pt`` files in :data:`PRETRAINED_DIR`.

    Examples
    --------
    >>> isinstance(available_pretrained(), list)
    True
    """
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.pt"))


def resolve_checkpoint(spec: str | os.PathLike) -> Path:
    """Path of ``spec``: an existing file, or a pretrained name (``"azobenzene-gfn2-fp32"``).

    Raises
    ------
    FileNotFoundError
        When ``spec`` is neither; the message lists :func:`available_pretrained`.
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a path or a pretrained name, got {type(spec).__name__}")
    path = Path(spec)
    if path.is_file():
        return path
    name = str(spec)
    key = name[:-3] if name.endswith(".pt") else name
    if key in available_pretrained():
        return PRETRAINED_DIR / f"{key}.pt"
    raise FileNotFoundError(
        f"checkpoint {name!r} does not exist and is not a pretrained name "
        f"(available: {available_pretrained()})"
    )


def resolve_device(spec: Any, name: str = "device") -> torch.device:
    """The torch device ``spec`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a ``torch.device``),
    checked to exist on this machine.

    Parameters
    ----------
    spec : str or torch.device
    name : str
        Argument name used in error messages.

    Raises
    ------
    TypeError
        For a non-string, non-device ``spec``.
    ValueError
        For an unknown device type (``"tpu"``) or one this machine does not have (``"cuda"`` without a GPU,
        ``"cuda:3"`` with two).

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(spec, torch.device):
        device = spec
    elif isinstance(spec, str):
        try:
            device = torch.device(spec.strip())
        except (RuntimeError, ValueError):
            raise ValueError(
                f"{name} must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got {spec!r}"
            ) from None
    else:
        raise TypeError(f"{name} must be a str or torch.device, got {type(spec).__name__}")
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} is {str(spec)!r} but CUDA is not available on this machine (use 'cpu')")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"{name} is {str(spec)!r} but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        return device
    if device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"{name} is {str(spec)!r} but MPS is not available on this machine")
        return device
    raise ValueError(f"{name} must be 'cpu', 'cuda[:N]' or 'mps', got {str(spec)!r} (unsupported type)")


def _numpy_safe_globals() -> list:
    """NumPy array reconstruction, allowed in training checkpoints (they hold ``np.random.get_state()``)."""
    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    allowed = [reconstruct, np.ndarray, np.dtype, (reconstruct, "numpy.core.multiarray._reconstruct")]
    allowed += [type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64, np.float32, np.bool_)]
    return allowed


_SAFE_GLOBALS = _numpy_safe_globals()


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unpickling_reason(err: Exception) -> str:
    text = str(err)
    patterns = (
        r"(Unsupported global: GLOBAL \S+)",
        r"(unsupported GLOBAL \S+)",
        r"(Unsupported operand \S+)",
    )
    for pattern in patterns:
        m = re.search(pattern, text)
        if m:
            return m.group(1).rstrip(".")
    m = re.search(r"WeightsUnpickler error:(.*?)(?:\n\n|Check the documentation|$)", text, re.S)
    return _one_line(m.group(1) if m else text, 200)


def read_checkpoint(spec: Any, *, allow_nonfinite: bool = False) -> dict:
    """Read a checkpoint file safely (``torch.load(weights_only=True)``; never runs code from the file).

    Parameters
    ----------
    spec : str or path-like
        Checkpoint file or pretrained name (:func:`resolve_checkpoint`).
    allow_nonfinite : bool
        Accept NaN/inf in the stored weights (``model_state`` / ``ema_state``); refused by default, since such
        a model only produces NaN.

    Returns
    -------
    dict
        The checkpoint, on the CPU.

    Raises
    ------
    FileNotFoundError
        When ``spec`` is neither a file nor a pretrained name.
    ValueError
        For a truncated, garbage or empty file, for a file holding anything besides tensors, NumPy arrays and
        plain Python values (e.g. a pickled function: refused, not executed), for a file that is not a dict,
        and for non-finite weights (unless ``allow_nonfinite``). The message names the file.
    """
    if not isinstance(allow_nonfinite, bool):
        raise TypeError(f"allow_nonfinite must be a bool, got {type(allow_nonfinite).__name__}")
    path = resolve_checkpoint(spec)
    where = f"checkpoint {str(path)!r}"
    if path.stat().st_size == 0:
        raise ValueError(f"{where} is an empty file")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS), warnings.catch_warnings():
            # a plain (non-torch) pickle triggers a protocol warning before the refusal below
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{where} cannot be loaded safely ({_unpickling_reason(err)}): it is corrupt or holds objects "
            "other than tensors, arrays and plain values, and is refused (loading never executes code)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError) as err:
        raise ValueError(
            f"{where} is not a readable PyTorch checkpoint (truncated or corrupt?): {_one_line(err)}"
        ) from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{where} holds a {type(ckpt).__name__}, not a checkpoint dict")
    if not allow_nonfinite:
        check_finite_state(ckpt, where)
    return ckpt


def check_finite_state(ckpt: dict, where: str = "checkpoint") -> None:
    """Raise ``ValueError`` naming the first tensor of ``model_state`` / ``ema_state`` holding NaN or inf."""
    for key in ("model_state", "ema_state"):
        state = ckpt.get(key)
        if not isinstance(state, dict):
            continue
        for name, value in state.items():
            if torch.is_tensor(value) and value.is_floating_point() and value.numel():
                bad = int((~torch.isfinite(value)).sum())
                if bad:
                    raise ValueError(
                        f"{where}: {key} tensor {name!r} has {bad} non-finite value(s) (NaN/inf) of "
                        f"{value.numel()}; the model is broken (pass allow_nonfinite=True to load it anyway)"
                    )


def trained_elements(ckpt: dict) -> tuple[int, ...] | None:
    """Sorted atomic numbers the checkpoint's model was trained on, or None when unknown.

    Taken from the ``trained_elements`` entry when present. Older checkpoints lack it; then the keys of
    ``normalisation["shifts"]`` are used (the per-element energy shifts are fitted on the training frames, so
    their keys are exactly the elements seen in training) and, failing that, the elements of the data set
    named in ``train_config["dataset"]`` (all its frames, a superset of the training frames' elements for a
    variable-composition set). None when the checkpoint records neither (a hand-made dict): no check is made.

    Examples
    --------
    >>> trained_elements({"normalisation": {"shifts": {6: -1.0, 1: -0.5}}})
    (1, 6)
    """
    if not isinstance(ckpt, dict):
        raise TypeError(f"ckpt must be a dict, got {type(ckpt).__name__}")
    stored = ckpt.get("trained_elements")
    if stored is None:
        norm = ckpt.get("normalisation")
        shifts = norm.get("shifts") if isinstance(norm, dict) else None
        if isinstance(shifts, dict) and shifts:
            stored = list(shifts)
    if stored is None:
        tc = ckpt.get("train_config")
        if isinstance(tc, dict) and isinstance(tc.get("dataset"), str):
            from .data import available_datasets, load_dataset, load_npz

            name = tc["dataset"]
            if not Path(name).is_file() and name.removesuffix(".npz") not in available_datasets():
                return None
            try:
                ds = load_npz(name) if Path(name).is_file() else load_dataset(name)
            except (ValueError, FileNotFoundError):
                return None
            stored = np.unique(ds.numbers).tolist()
    if stored is None:
        return None
    try:
        out = sorted({int(z) for z in stored})
    except (TypeError, ValueError):
        raise ValueError(
            f"checkpoint entry trained_elements must be atomic numbers, got {stored!r}"
        ) from None
    if not out or out[0] < 1 or out[-1] > 118:
        raise ValueError(f"checkpoint entry trained_elements must be atomic numbers in 1..118, got {out}")
    return tuple(out)


def quantization_entry(model: torch.nn.Module) -> dict[str, Any] | None:
    """The ``quantization`` entry a checkpoint stores to rebuild the quantized ``model`` (None: float).

    Returns
    -------
    dict or None
        The spec (:meth:`~spherequant.models.gaq.QuantizationSpec.to_checkpoint`: ``method``, ``config`` the
        flat GAQ options, ``options`` the baseline options, ``calibration_batches``) and the model's state:
        ``step`` ("prepared" or "converted"), ``enabled`` (per branch, the staged warm-up switches) and
        ``force_mode`` (the one in use). :func:`load_model` reads it back with
        :meth:`~spherequant.models.gaq.QuantizationSpec.from_checkpoint`.
    """
    state = gaq.quantization_state(model)
    if state is None:
        return None
    return {
        **state.spec.to_checkpoint(),
        "step": state.step,
        "enabled": branches_enabled(model),
        "force_mode": state.force_mode,
    }


def quantization_spec(model: torch.nn.Module) -> dict[str, Any] | None:
    """Deprecated: the checkpoint entry of ``model``; use :func:`quantization_entry` (this dict) or
    :func:`spherequant.models.gaq.quantization_spec` (the spec itself)."""
    warnings.warn(
        "checkpoints.quantization_spec is deprecated: use checkpoints.quantization_entry (the checkpoint "
        "dict) or gaq.quantization_spec (the QuantizationSpec)",
        DeprecationWarning,
        stacklevel=2,
    )
    return quantization_entry(model)


def _dummy_batch(model: So3krates) -> dict:
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.74, 0.0, 0.0]], dtype=model.dtype, device=model.device)
    return {"z": torch.ones(2, dtype=torch.long, device=model.device), "pos": pos}


def apply_quantization(
    model: So3krates, spec: gaq.QuantizationSpec | dict[str, Any], calibration_batches=None
) -> So3krates:
    """Prepare the float ``model`` in place as ``spec`` says (and calibrate it on ``calibration_batches``).

    Parameters
    ----------
    model : So3krates
        A float model.
    spec : QuantizationSpec or dict
        The spec, or a checkpoint's ``quantization`` entry (:func:`quantization_entry`), whose ``step``
        is then re-applied (a ``"converted"`` entry is converted after preparing).
    calibration_batches : iterable, optional
        Without them nothing is calibrated (the state is expected to be loaded next); the naive INT8
        baseline, whose min-max observers need one pass, then runs on one dummy H2 molecule whose ranges the
        loaded state overwrites.
    """
    entry = spec if isinstance(spec, dict) else {}
    if isinstance(spec, dict):
        spec = gaq.QuantizationSpec.from_checkpoint(spec)
    gaq.quantize_(model, spec)
    batches = calibration_batches
    if batches is None and spec.method == "naive_int8":
        batches = [_dummy_batch(model)]
    if batches is not None:
        gaq.calibrate_(model, batches)
    if entry.get("step") == "converted":
        gaq.quantize_(model, spec, step="convert")
    return model


def restore_switches(model: So3krates, entry: dict[str, Any], force_mode: str | None = None) -> So3krates:
    """Freeze the observers of a model rebuilt from ``entry`` (a :func:`quantization_entry`) and restore
    its warm-up switches and force mode (``force_mode`` overrides the stored one)."""
    for m in model.modules():
        if isinstance(m, gaq.ActivationQuantizer):
            m.freeze()
    if entry.get("step") != "converted":
        for branch, on in entry.get("enabled", {}).items():
            gaq.set_quant_enabled(model, branch, bool(on))
    gaq.set_force_mode(model, force_mode or entry.get("force_mode", "ste"))
    return model


def rebuild_model(model_config: dict, quantization: dict | None = None, *, dtype=None, device="cpu"):
    """A fresh model with the structure of a checkpoint (random weights; load the state next).

    Parameters
    ----------
    model_config : dict
        So3krates keywords.
    quantization : dict, optional
        :func:`quantization_entry` of the saved model.
    dtype, device
        Where to build it.

    Examples
    --------
    >>> m = rebuild_model(dict(num_features=8, num_layers=1, num_heads=2, degrees=[1], num_rbf=4, max_z=9))
    >>> type(m).__name__
    'So3krates'
    """
    if not isinstance(model_config, dict):
        raise TypeError(f"model_config must be a dict, got {type(model_config).__name__}")
    cfg = dict(model_config)
    cfg["degrees"] = tuple(cfg["degrees"])
    model = So3krates(**cfg).to(device=device, dtype=dtype or torch.float32)
    if quantization is not None:
        apply_quantization(model, quantization)
    return model


def load_model(
    spec,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    use_ema: bool = True,
    force_mode: str | None = None,
    allow_nonfinite: bool = False,
) -> So3krates:
    """Load any So3krates checkpoint (FP32 or quantized) from a path, a pretrained name or a loaded dict.

    Parameters
    ----------
    spec : str, path-like or dict
        Checkpoint file, pretrained name (:func:`available_pretrained`) or an already loaded checkpoint.
    device : str or torch.device
    dtype : torch.dtype, optional
        Default: the dtype of the stored state.
    use_ema : bool
        Load the EMA weights when the checkpoint has them.
    force_mode : {"ste", "smooth"}, optional
        Quantized models only: override the stored force mode (``"smooth"``: conservative forces of the
        weight-quantized network, see :mod:`spherequant.models.gaq`).
    allow_nonfinite : bool
        Load even when the stored weights hold NaN/inf (refused by default).

    Returns
    -------
    So3krates
        In eval mode, on ``device``, refusing elements it was not trained on (:func:`trained_elements`).

    Raises
    ------
    ValueError
        For an unreadable, unsafe or broken file (see :func:`read_checkpoint`), a state that does not match
        its configuration, an unknown or unavailable ``device``.

    Examples
    --------
    >>> m = So3krates(num_features=8, num_layers=1, num_heads=2, degrees=(1,), num_rbf=4, max_z=9)
    >>> load_model({"model_config": m.config, "model_state": m.state_dict()}).config == m.config
    True
    """
    if not isinstance(allow_nonfinite, bool):
        raise TypeError(f"allow_nonfinite must be a bool, got {type(allow_nonfinite).__name__}")
    device = resolve_device(device)
    if isinstance(spec, dict):
        ckpt, where = spec, "checkpoint"
        if not allow_nonfinite:
            check_finite_state(ckpt, where)
    else:
        ckpt = read_checkpoint(spec, allow_nonfinite=allow_nonfinite)
        where = f"checkpoint {str(resolve_checkpoint(spec))!r}"
    for key in ("model_config", "model_state"):
        if key not in ckpt:
            raise ValueError(f"{where} has no {key!r} entry (keys: {sorted(map(str, ckpt))})")
    if not isinstance(ckpt["model_state"], dict) or not isinstance(ckpt["model_config"], dict):
        raise ValueError(f"{where}: 'model_config' and 'model_state' must be dicts")
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if force_mode is not None:
        check_choice(force_mode, "force_mode", gaq.FORCE_MODES)
    state = ckpt.get("ema_state") if use_ema and ckpt.get("ema_state") else ckpt["model_state"]
    floats = (v.dtype for v in state.values() if torch.is_tensor(v) and v.is_floating_point())
    state_dtype = next(floats, None)
    if state_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{where}: the stored weights must be float32 or float64, got {state_dtype}")
    quant = ckpt.get("quantization")
    if force_mode is not None and quant is None:
        raise ValueError("force_mode applies to quantized checkpoints only; this one is FP32")
    try:
        model = rebuild_model(ckpt["model_config"], quant, dtype=state_dtype)
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as err:
        raise ValueError(f"{where} does not match its model_config: {_one_line(err)}") from None
    if quant is not None:
        restore_switches(model, quant, force_mode)
    elements = trained_elements(ckpt)
    if elements is not None:
        model.set_trained_elements(elements)
    model.to(device=device, dtype=dtype or state_dtype)
    return model.eval()
