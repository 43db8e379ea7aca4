"""What a quantized model carries and how it is switched: its :class:`QuantizationState`, calibration, the
branch and force-mode switches, the quantized energy and the packed model size.

Re-exported by :mod:`spherequant.models.gaq`. A model prepared by
:func:`~spherequant.models.gaq.quantize_` holds a :class:`QuantizationState` at the documented attribute
``model.quantization_state``; read it with :func:`quantization_state` and its spec with
:func:`quantization_spec` (None for a float model).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from spherequant._validation import check_choice

from ._fake_quant import (
    ActivationQuantizer,
    QuantEmbedding,
    QuantLinear,
    VectorFeatureQuantizer,
    WeightFakeQuantizer,
    branch_of,
)
from ._quant_spec import BRANCHES, FORCE_MODES, QuantizationSpec, to_spec
from .so3krates import So3krates

__all__ = [
    "STATE_ATTR",
    "QuantizationState",
    "branches_enabled",
    "calibrate_",
    "check_model",
    "model_size_bytes",
    "observers",
    "quant_modules",
    "quantization_spec",
    "quantization_state",
    "quantized_energy",
    "quantized_energy_report",
    "require_state",
    "set_force_mode",
    "set_quant_enabled",
    "size_breakdown",
    "smooth_float_model",
    "unpack_batch",
]

#: Name of the model attribute holding the :class:`QuantizationState`.
STATE_ATTR = "quantization_state"


@dataclass(eq=False)
class QuantizationState:
    """The quantization of one model: its spec (never changed) and its mutable state.

    Attributes
    ----------
    spec : QuantizationSpec
        As given to :func:`~spherequant.models.gaq.quantize_` (or rebuilt from a checkpoint).
    step : {"prepared", "converted"}
        Fake-quantized float weights (QAT) or integer codes + scales.
    force_mode : {"ste", "smooth"}
        The force mode in use (:func:`set_force_mode`; starts as ``spec.inference.force_mode``).
    hooks : dict
        Removable hook handles installed on the model (the smooth mode's quantized-energy report, the
        Degree-Quant in-degree hooks).
    busy : bool
        True while an internal pass runs (calibration, :func:`quantized_energy`): no extra passes then.
    report_quantized_energy : bool
        Whether the smooth mode's report runs (one extra pass per call); :func:`quantized_energy_report`
        switches it off for callers that do not read it (MD).
    """

    spec: QuantizationSpec
    step: str = "prepared"
    force_mode: str = "ste"
    hooks: dict = field(default_factory=dict, repr=False)
    busy: bool = False
    report_quantized_energy: bool = True


def check_model(model) -> So3krates:
    """``model`` if it is a So3krates; ``TypeError`` naming ``model`` otherwise."""
    if not isinstance(model, So3krates):
        raise TypeError(f"model must be a So3krates, got {type(model).__name__}")
    return model


def quantization_state(model: nn.Module) -> QuantizationState | None:
    """The :class:`QuantizationState` of ``model`` (None for a float model)."""
    return getattr(model, STATE_ATTR, None)


def quantization_spec(model: nn.Module) -> QuantizationSpec | None:
    """The :class:`~spherequant.models.gaq.QuantizationSpec` ``model`` was quantized with (None: float).

    Examples
    --------
    >>> from spherequant.models.gaq import QuantizationSpec, quantize_
    >>> m = So3krates(num_features=8, num_layers=1, num_heads=2, degrees=(1,), num_rbf=4, max_z=9)
    >>> quantization_spec(m) is None
    True
    >>> spec = QuantizationSpec.from_options("gaq", codebook_size=64)
    >>> quantization_spec(quantize_(m, spec)) is spec
    True
    """
    state = quantization_state(model)
    return None if state is None else state.spec


def require_state(model: nn.Module) -> QuantizationState:
    """The state of a prepared ``model``; ``ValueError`` for a float model."""
    state = quantization_state(model)
    if state is None:
        raise ValueError("model has not been prepared: call quantize_(model, spec, step='prepare') first")
    return state


def quant_modules(model: nn.Module) -> list[nn.Module]:
    """Every quantized weight module and activation quantizer of ``model``."""
    return [m for m in model.modules() if isinstance(m, (WeightFakeQuantizer, ActivationQuantizer))]


def observers(model: nn.Module) -> list[nn.Module]:
    """Every range observer of ``model`` (vector-feature quantizers and observing scalar quantizers)."""
    out = []
    for m in model.modules():
        if isinstance(m, VectorFeatureQuantizer):
            out.append(m)
        elif isinstance(m, ActivationQuantizer) and hasattr(m.quantizer, "calibrate"):
            out.append(m.quantizer)
    return out


def unpack_batch(b):
    """``(z, pos, batch, num_graphs)`` of a ``GraphBatch``-like object, a dict or a tuple ``(z, pos[,
    batch])`` (missing entries None)."""
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
    check_model(model)
    mods = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
    saved = [(m.enabled, m.smooth) for m in mods]
    was_training = model.training
    for obs in observers(model):
        obs.calibrate(True)
    for m in mods:
        m.enabled, m.smooth = True, False
    model.eval()
    state = require_state(model)
    state.busy = True  # no extra quantized-energy passes while calibrating
    n = 0
    try:
        with torch.no_grad():
            for b in batches:
                z, pos, batch, num_graphs = unpack_batch(b)
                model(z, pos, batch, compute_forces=False, num_graphs=num_graphs)
                n += 1
    finally:
        for m, (e, s) in zip(mods, saved):
            m.enabled, m.smooth = e, s
        model.train(was_training)
        state.busy = False
    if n == 0:
        raise ValueError("batches is empty; calibration needs at least one batch")
    for m in mods:
        if isinstance(m, VectorFeatureQuantizer):
            m.fit_codebook()
    if freeze:
        for obs in observers(model):
            obs.freeze()
    return model


def set_quant_enabled(model: nn.Module, branch: str, enabled: bool) -> None:
    """Enable or disable every quantizer (weights and activations) of ``branch`` ("equivariant" /
    "invariant"); disabled quantizers are the identity (float weights / activations)."""
    check_choice(branch, "branch", BRANCHES)
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    for m in quant_modules(model):
        if m.branch == branch:
            if not enabled and getattr(m, "converted", False):
                raise ValueError("a converted model cannot disable weight quantization")
            m.enabled = enabled


def branches_enabled(model: nn.Module) -> dict[str, bool]:
    """Per branch, whether all its quantizers are enabled (the staged warm-up switches)."""
    enabled = {}
    for branch in BRANCHES:
        mods = [m for m in quant_modules(model) if m.branch == branch]
        enabled[branch] = all(m.enabled for m in mods) if mods else True
    return enabled


def set_force_mode(model: nn.Module, mode: str) -> None:
    """Switch a prepared model between ``force_mode="ste"`` and ``"smooth"`` (see
    :mod:`spherequant.models.gaq`); the spec keeps the mode it was trained for."""
    check_choice(mode, "force_mode", FORCE_MODES)
    state = require_state(model)
    for m in model.modules():
        if isinstance(m, ActivationQuantizer):
            m.smooth = mode == "smooth"
    handle = state.hooks.pop("quantized_energy", None)
    if handle is not None:
        handle.remove()
    if mode == "smooth":
        state.hooks["quantized_energy"] = model.register_forward_hook(
            _report_quantized_energy, with_kwargs=True
        )
    state.force_mode = mode


def smooth_float_model(model: nn.Module) -> So3krates:
    """The plain float network that ``model``'s smooth force mode evaluates, as a new model.

    In ``force_mode="smooth"`` the weights are quantized and every activation quantizer acts as its
    saturation (the clamp to its range with rounded corners, no rounding to the grid;
    :mod:`spherequant.models.saturation`), so energy and
    forces are those of a float So3krates whose weights are the (fake-)quantized ones, with clamps at its
    hook points. This returns that network with plain modules: every
    :class:`~spherequant.models.gaq.QuantLinear` / :class:`~spherequant.models.gaq.QuantEmbedding` becomes an
    ``nn.Linear`` / ``nn.Embedding`` holding the weight the module uses, every activation quantizer its
    :meth:`~spherequant.models.gaq.ActivationQuantizer.saturation_module` (a
    :class:`~spherequant.models.saturation.Clamp`, a
    :class:`~spherequant.models.saturation.DegreeOneNormClip` or ``nn.Identity``); no quantization state or
    hooks. Its energies and forces equal the smooth mode's to float
    round-off (the operations are the same, evaluated in another order), and as a plain model it takes the
    fast path's written-out forces (compiled with :func:`spherequant.models.fast.set_compile`): molecular
    dynamics of a weight-quantized model at the speed of the float one. The copy holds the weights as plain
    parameters: it is for inference, not for further quantization-aware training.

    Parameters
    ----------
    model : So3krates
        Prepared (or converted) by :func:`~spherequant.models.gaq.quantize_` or a baseline, in the smooth
        force mode (:func:`~spherequant.models.gaq.set_force_mode`).

    Returns
    -------
    So3krates
        In eval mode, on ``model``'s device and dtype; ``model`` is not changed.

    Raises
    ------
    TypeError
        ``model`` is not a So3krates.
    ValueError
        ``model`` has no quantization state, is not in the smooth force mode, or has hooks that are not
        marked inert in eval mode.
    """
    if not isinstance(model, So3krates):
        raise TypeError(f"model must be a So3krates, got {type(model).__name__}")
    state = require_state(model)
    if state.force_mode != "smooth":
        raise ValueError(
            "model must be in the smooth force mode (set_force_mode(model, 'smooth')), got "
            f"{state.force_mode!r}: with the ste forces the activation quantizers round, and no float "
            "network computes them"
        )
    for name, mod in model.named_modules():
        hooks = list(mod._forward_pre_hooks.values()) + list(mod._forward_hooks.values())
        # dropped: hooks that only act in training mode, and the smooth mode's quantized-energy report
        if any(not getattr(h, "inert_in_eval", False) and h is not _report_quantized_energy for h in hooks):
            raise ValueError(
                f"module {name or 'model'} has forward hooks, which smooth_float_model cannot keep"
            )
    out = copy.deepcopy(model)
    delattr(out, STATE_ATTR)
    for name, mod in list(out.named_modules()):
        for key in _MODEL_CACHES:  # built for the quantized modules
            mod.__dict__.pop(key, None)
        mod._forward_pre_hooks.clear()
        mod._forward_hooks.clear()
        mod._forward_hooks_with_kwargs.clear()
        if not name:
            continue
        if isinstance(mod, QuantLinear):
            _set_submodule(out, name, mod.to_linear())
        elif isinstance(mod, QuantEmbedding):
            _set_submodule(out, name, mod.to_embedding())
        elif isinstance(mod, ActivationQuantizer):
            _set_submodule(out, name, mod.saturation_module())
    return out.eval()


#: Per-model caches of the fast, compiled and integer paths (rebuilt on first use).
_MODEL_CACHES = ("_fast_cache", "_compiled_layout", "_fused_plans", "_weight_cache")


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at the dotted submodule path ``name`` of ``model`` (module surgery of the handlers)."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _report_quantized_energy(module, args, kwargs, output):
    state = quantization_state(module)
    if module.training or state is None or state.busy or not state.report_quantized_energy:
        return output
    z = args[0] if args else kwargs["z"]
    pos = args[1] if len(args) > 1 else kwargs["pos"]
    batch = args[2] if len(args) > 2 else kwargs.get("batch")
    output["energy_quantized"] = quantized_energy(
        module, z, pos, batch, edge_index=kwargs.get("edge_index"), num_graphs=kwargs.get("num_graphs")
    )
    return output


@contextmanager
def quantized_energy_report(model: nn.Module, enabled: bool):
    """Context manager: the smooth force mode's report of ``"energy_quantized"`` (an extra gradient-free pass
    per call) on or off inside the block; nothing to switch for a float model or in the ``ste`` mode.

    Parameters
    ----------
    model : nn.Module
    enabled : bool
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    state = quantization_state(model)
    if state is None:
        yield
        return
    old = state.report_quantized_energy
    state.report_quantized_energy = enabled
    try:
        yield
    finally:
        state.report_quantized_energy = old


def quantized_energy(model, z, pos, batch=None, *, edge_index=None, num_graphs=None) -> torch.Tensor:
    """Energy ``E_q`` (B,) with every activation quantizer active (whatever the force mode); no gradient."""
    state = require_state(model)
    mods = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
    saved = [m.smooth for m in mods]
    state.busy = True
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
        state.busy = False
    return out["energy"].detach()


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
        if isinstance(mod, WeightFakeQuantizer):
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


def model_size_bytes(model: nn.Module, config: QuantizationSpec | None = None) -> int:
    """Total bytes of ``model`` at its packed bit widths (see :func:`size_breakdown`); an unquantized
    So3krates counts 4 bytes per parameter and floating buffer. ``config`` is accepted for symmetry with
    the other entry points and only type-checked.

    Examples
    --------
    >>> from spherequant.models.gaq import QuantizationSpec, quantize_
    >>> m = So3krates(num_features=8, num_layers=1, num_heads=2, degrees=(1,), num_rbf=4, max_z=9)
    >>> fp32 = model_size_bytes(m)
    >>> _ = quantize_(m, QuantizationSpec.from_options("gaq", codebook_size=64))
    >>> model_size_bytes(m) < fp32
    True
    """
    if config is not None:
        to_spec(config)
    return size_breakdown(model)["total"]
