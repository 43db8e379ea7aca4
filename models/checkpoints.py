"""One loader for every checkpoint kind: FP32, QAT-prepared and converted quantized So3krates models.

A checkpoint (training ``last.pt`` / ``best.pt`` or an exported inference ``.pt``) holds ``model_config``
(So3krates keywords, as ``model.config`` after any quantization prepare), ``model_state`` (and optionally
``ema_state``) and, for a quantized model, ``quantization`` (see :func:`quantization_spec`). Loading rebuilds
the float model, re-applies the stored preparation (GAQ :func:`~spherequant.models.gaq.quantize_` or a
baseline of :func:`~spherequant.models.baselines.prepare_baseline`, then ``convert`` when stored converted)
and loads the state; calibration is not repeated, since every calibrated range, codebook and step is part of
the state.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from . import gaq
from .so3krates import So3krates

__all__ = [
    "PRETRAINED_DIR",
    "QUANT_METHODS",
    "available_pretrained",
    "load_model",
    "quantization_spec",
    "rebuild_model",
    "resolve_checkpoint",
]

#: Folder of the shipped checkpoints (``<name>.pt``), installed with the package.
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
QUANT_METHODS = ("gaq", "naive_int8", "svq_kmeans", "degree_quant", "lsq", "qdrop")


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


def quantization_spec(model: torch.nn.Module) -> dict[str, Any] | None:
    """What a checkpoint stores to rebuild the quantized ``model`` (None for a float model).

    Returns
    -------
    dict or None
        ``method`` (one of :data:`QUANT_METHODS`), ``config`` (the effective ``GAQConfig`` as a dict),
        ``options`` (baseline options), ``step`` ("prepared" or "converted"), ``enabled`` (per branch, the
        staged warm-up switches) and ``force_mode``.
    """
    state = getattr(model, gaq._STATE_ATTR, None)
    if state is None:
        return None
    enabled = {}
    for branch in gaq.BRANCHES:
        mods = [m for m in gaq._quant_modules(model) if m.branch == branch]
        enabled[branch] = all(m.enabled for m in mods) if mods else True
    return {
        "method": state["method"],
        "config": state["config"].to_dict(),
        "options": dict(state.get("options") or {}),
        "step": state["step"],
        "enabled": enabled,
        "force_mode": state.get("force_mode", "ste"),
    }


def _dummy_batch(model: So3krates) -> dict:
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.74, 0.0, 0.0]], dtype=model.dtype, device=model.device)
    return {"z": torch.ones(2, dtype=torch.long, device=model.device), "pos": pos}


def apply_quantization(model: So3krates, spec: dict[str, Any], calibration_batches=None) -> So3krates:
    """Prepare the float ``model`` in place as ``spec`` says (and calibrate on ``calibration_batches``).

    Without ``calibration_batches`` nothing is calibrated (the state is expected to be loaded next); the
    naive INT8 baseline, which insists on calibration, then runs on one dummy H2 molecule whose ranges the
    loaded state overwrites. A ``"converted"`` spec is converted after preparing.
    """
    from .baselines import prepare_baseline

    method = spec["method"]
    if method not in QUANT_METHODS:
        raise ValueError(f"quantization method must be one of {QUANT_METHODS}, got {method!r}")
    cfg = gaq.GAQConfig(**spec["config"])
    if method == "gaq" or (method == "svq_kmeans" and calibration_batches is None):
        # loading: the stored config of svq_kmeans is already the effective k-means GAQConfig
        gaq.quantize_(model, cfg, step="prepare")
        getattr(model, gaq._STATE_ATTR)["method"] = method
        if calibration_batches is not None:
            gaq.calibrate_(model, calibration_batches)
    else:
        batches = calibration_batches
        if batches is None and method == "naive_int8":
            batches = [_dummy_batch(model)]
        prepare_baseline(model, method, batches, config=cfg, **spec.get("options", {}))
    if spec.get("step") == "converted":
        gaq.quantize_(model, cfg, step="convert")
    return model


def _finish(model: So3krates, spec: dict[str, Any], force_mode: str | None) -> So3krates:
    for m in model.modules():
        if isinstance(m, gaq.ActivationQuantizer):
            m.freeze()
    if spec.get("step") != "converted":
        for branch, on in spec.get("enabled", {}).items():
            gaq.set_quant_enabled(model, branch, bool(on))
    gaq.set_force_mode(model, force_mode or spec.get("force_mode", "ste"))
    return model


def rebuild_model(model_config: dict, quantization: dict | None = None, *, dtype=None, device="cpu"):
    """A fresh model with the structure of a checkpoint (random weights; load the state next).

    Parameters
    ----------
    model_config : dict
        So3krates keywords.
    quantization : dict, optional
        :func:`quantization_spec` of the saved model.
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

    Returns
    -------
    So3krates
        In eval mode, on ``device``.

    Examples
    --------
    >>> m = So3krates(num_features=8, num_layers=1, num_heads=2, degrees=(1,), num_rbf=4, max_z=9)
    >>> load_model({"model_config": m.config, "model_state": m.state_dict()}).config == m.config
    True
    """
    if isinstance(spec, dict):
        ckpt = spec
    else:
        ckpt = torch.load(resolve_checkpoint(spec), map_location="cpu", weights_only=False)
    for key in ("model_config", "model_state"):
        if key not in ckpt:
            raise ValueError(f"checkpoint has no {key!r} entry (keys: {sorted(ckpt)})")
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if force_mode is not None:
        gaq._choice("force_mode", force_mode, gaq.FORCE_MODES)
    state = ckpt.get("ema_state") if use_ema and ckpt.get("ema_state") else ckpt["model_state"]
    state_dtype = next(v.dtype for v in state.values() if torch.is_tensor(v) and v.is_floating_point())
    quant = ckpt.get("quantization")
    if force_mode is not None and quant is None:
        raise ValueError("force_mode applies to quantized checkpoints only; this one is FP32")
    model = rebuild_model(ckpt["model_config"], quant, dtype=state_dtype)
    model.load_state_dict(state)
    if quant is not None:
        _finish(model, quant, force_mode)
    model.to(device=torch.device(device), dtype=dtype or state_dtype)
    return model.eval()
