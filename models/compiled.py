"""Compiled training step of So3krates: energy and forces as one traced graph under ``torch.compile``.

A force loss needs the gradient of the forces ``F = -dE/dpos`` with respect to the parameters, a second
derivative of the network. AOTAutograd (the autograd layer of ``torch.compile``) differentiates a graph
once, so here the energy *and* its autograd force computation are first traced into one graph of aten
operations (``make_fx`` with symbolic shapes, through ``torch.func.functional_call`` of the fast path's
fused network ``spherequant.models.fast.node_energies()``; the forces by ``torch.func.grad``, see below),
a function ``(parameters, buffers, atoms,
positions, edges) -> (atomic energies, forces)`` with no autograd call left inside. ``torch.compile``
(inductor) then compiles that graph and its *first-order* backward, which is all the training loss needs.

Shapes: the number of atoms and of edges are marked dynamic, so batches of different molecules and frames
whose edge count changes run the same compiled code (one compilation per process and model structure;
inductor's on-disk cache shortens the compilation in later processes). A batch with 0 or 1 atoms or edges
may compile once more (torch specialises those sizes).

Why ``torch.func.grad`` and not ``torch.autograd.grad`` inside the trace: ``make_fx`` records the
backward of an operation whose derivative formula reuses the operation's *output* (``exp``, norms,
``sqrt``, ``reciprocal``: the softmax and the normalised queries and keys of cosine attention) with that
output detached, so forces traced through ``torch.autograd.grad`` are right in value but lose part of
their dependence on the parameters, and the force-loss gradients come out wrong (by 100 % and more for
cosine attention; the So3krates attention happened to contain no such operation on a parameter path).
The functorch transform traces the same formulas with that dependence kept; the tests compare every
parameter gradient with the eager reference in both attention modes and on a minimal ``exp`` example.

Numerically it is the same function as the eager reference (``So3krates.reference_forward``): the same
formulas, with the floating-point rounding of fused kernels. Bitwise it differs from the uncompiled path;
a resume of a training (:mod:`spherequant.models.train`, key ``compile``) is bit-exact only on the path the
run was on, and switching the key at a resume continues the same training on the other path.

Supported: So3krates models with degrees ``(1,)`` in either attention mode (``"so3krates"`` and ``"cosine"``,
a learnable temperature included: the shipped models and both study parents), no hooks on the layers and no
recorded attention, on one process (no DDP): full-precision models and quantization-aware (fake-quant) ones
of GAQ (MDDQ on vector features, W4A8), naive INT8, LSQ and SVQ-KMeans once calibrated. Their
straight-through estimators are ordinary differentiable operations (``spherequant._backend.gradient_carrier``:
value ``0``, gradient the estimator's), so the trace keeps them in both derivatives; MDDQ's exact direction
lookup becomes one node of the custom operator ``spherequant::nearest_codeword``. A traced graph bakes in the
quantizers' state (switches of the QAT schedule, bits, MDDQ's ``r_max``, codebooks): that state is part of
the graph's key (``_quant_signature``), so e.g. the end of the warm-up traces once more. Not traced (the
fast path runs, :func:`unsupported_reason` says why): quantizers still calibrating (they update their ranges
at every call), an LSQ step not yet initialised, and Degree-Quant and QDrop in training mode, whose random
masks a compiled graph would draw from the compiler's random stream rather than the eager one.

Switch: the training configuration key ``compile`` (default False); in code :func:`training_forward`
returns None for a model it does not handle, and the caller runs ``model(...)``.

Inference: with ``spherequant.models.fast.set_compile(True)`` (``SPHEREQUANT_COMPILE=1``,
``spherequant md --compile``, the NVE benchmark), ``So3krates.forward`` runs the same traced graph without
gradients (:func:`inference_forward`) for the models that the written-out inference pass of
:mod:`~spherequant.models.fast` does not cover: quantization-aware models (both force modes) and cosine
attention; Degree-Quant and QDrop too (in eval mode they only quantize; Degree-Quant's in-degree pre-hook,
marked ``inert_in_eval``, is skipped). Tensors that library code makes lazily and caches (magnitude levels,
codebook points, unpacked weights) are not cached when made inside a trace
(``spherequant._backend.cached_tensors``): they are fake.
"""

from __future__ import annotations

import math
import time
import warnings

import torch
from torch import nn

from spherequant.codebook import Codebook

from . import fast as _fast

__all__ = ["compile_seconds", "inference_forward", "training_forward", "unsupported_reason"]

#: torch.compile backend ("inductor"; tests use "aot_eager" to check the traced graph without compiling).
BACKEND = ["inductor"]
#: inductor options of the compiled step (none: inductor's defaults). ``{"cpp_wrapper": True}`` (kernels
#: called from generated C++) looked 1.15x faster per step on a loaded machine but gave the same 11.8 ms
#: at batch 5 on a quiet one (64 x 2 model), at a longer first compile, so it is not the default.
INDUCTOR_OPTIONS: dict = {}
_CACHE: dict = {}
_FAILED: dict = {}
_SECONDS: dict = {}


class _Energies(nn.Module):
    """``(atomic energies (N,), forces (N, 3))`` of ``model`` (a submodule here, for functional_call)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, z_all, pos, edge_index, ref_index):
        # torch.func.grad, not torch.autograd.grad: make_fx records a backward formula that reuses a forward
        # *output* (exp, norms, sqrt, reciprocal) with that output detached, so the traced forces would lose
        # their dependence on the parameters through it (wrong force-loss gradients, e.g. through the softmax
        # of cosine attention); the functorch transform traces the same formulas with the dependence kept.
        def total(p):
            e = self._atom_energies(z_all, p, edge_index, ref_index)
            return e.sum(), e

        g, e = torch.func.grad(total, has_aux=True)(pos.detach())
        return e, -g

    def _atom_energies(self, z_all, pos, edge_index, ref_index):
        model = self.model
        plan, _ = _fast.build_plan(model)
        n = pos.shape[0]
        i, j = edge_index[0], edge_index[1]
        r = pos.index_select(0, j) - pos.index_select(0, i)
        d = torch.linalg.vector_norm(r, dim=-1)
        sh = r / d[:, None]
        rb = model.radial_basis
        phi = 0.5 * (torch.cos(d * (math.pi / rb.cutoff)) + 1.0)
        phi = torch.where(d < rb.cutoff, phi, torch.zeros_like(phi))
        arg = -rb.beta * (torch.exp(-d)[:, None] - rb.centers) ** 2
        rbf = phi[:, None] * torch.exp(arg.clamp_min(-60.0))
        u = _fast.node_energies(model, plan, z_all, pos, edge_index, (sh, rbf, phi))
        zl = z_all[:n]
        return model.energy_shift[zl] + model.energy_scale[zl] * (u[:n] - u.index_select(0, ref_index))


def unsupported_reason(model) -> str | None:
    """Why :func:`training_forward` does not handle ``model`` (None when it does).

    Parameters
    ----------
    model : So3krates
    """
    if not isinstance(model, nn.Module) or not hasattr(model, "radial_basis"):
        return f"not a So3krates model ({type(model).__name__})"
    return _hooks_reason(model) or _structure_reason(model) or _quant_reason(model)


def _hooks_reason(model):
    if model._forward_hooks or model._forward_pre_hooks:
        return "the model has hooks"
    return _layer_hooks_reason(model)


def _layer_hooks_reason(model):
    for layer in model.layers:
        pre = [h for h in layer._forward_pre_hooks.values() if model.training or not _inert_in_eval(h)]
        if pre or layer._forward_hooks or layer.record_attention:
            return "a layer has hooks or records its attention"
    return None


def _inert_in_eval(hook) -> bool:
    """Whether a layer pre-hook only sets state that modules read in training mode (attribute
    ``inert_in_eval``, e.g. Degree-Quant's in-degree hook): a traced eval-mode graph may skip it."""
    return bool(getattr(hook, "inert_in_eval", False))


def _structure_reason(model):
    if tuple(model.degrees) != (1,):
        return f"degrees {tuple(model.degrees)} (only (1,) is traced)"
    if not model.layers:
        return "a model without layers"
    try:
        with torch.no_grad():
            _fast.build_plan(model)
    except _fast.UnsupportedModel as exc:
        return f"the fast path does not represent it ({exc})"
    return None


#: Hook-point modules whose forward draws random masks in training mode (Degree-Quant, QDrop): traced, they
#: would replay the compiler's random stream, not the eager one, so training stays on the fast path (in eval
#: mode they only quantize, and the compiled inference pass takes them).
_RANDOM_MASK_TYPES = ("DegreeQuantActivation", "QDropActivation")


def _quant_reason(model, modules=None):
    """Why the quantization modules of ``model`` cannot be traced now (None if they can). Evaluated at every
    step: calibration and the QAT schedule switch module states without registering modules. ``modules``:
    the model's own (not ``torch.nn``) modules as ``(name, module)`` pairs, if at hand (the states checked
    are attributes of this package's quantizers)."""
    if modules is None:
        modules = _own_modules(model.named_modules())
    for name, mod in modules:
        kind = type(mod).__name__
        if kind in _RANDOM_MASK_TYPES and mod.training:  # (in eval mode they only quantize)
            return f"{name} ({kind}) draws random masks"
        if getattr(mod, "calibrating", False):
            return f"{name} ({kind}) is calibrating (it updates its range at every call)"
        if getattr(mod, "kmeans", False) and not getattr(mod, "fitted", True):
            return f"{name} ({kind}) has no fitted k-means codebook yet"
        initialized = getattr(mod, "initialized", None)
        if isinstance(initialized, torch.Tensor) and not bool(initialized):
            return f"{name} ({kind}) is not initialised (its first call sets its step)"
    return None


def _quant_signature(model, modules=None) -> tuple:
    """The state that a traced graph of a quantization-aware model bakes in: every public scalar attribute
    of each module (switches, bits, ranges such as MDDQ's ``r_max``) and a digest of each direction
    codebook's points. A change of any of them traces again (e.g. the end of the QAT warm-up); a module's
    ``scratch_attributes`` (per-call state such as Degree-Quant's in-degree) are left out. ``modules``:
    the model's own (not ``torch.nn``) modules as ``(name, module)`` pairs, if at hand."""
    if modules is None:
        modules = _own_modules(model.named_modules())
    sig = []
    for name, mod in modules:
        scratch = getattr(type(mod), "scratch_attributes", ())
        for k, v in vars(mod).items():
            if k.startswith("_") or k == "training" or k in scratch:
                continue
            if v is None or isinstance(v, (bool, int, float, str)):
                sig.append((name, k, v))
            elif isinstance(v, Codebook):
                sig.append((name, k, v.digest))
    return tuple(sig)


def _own_modules(named_modules) -> list:
    return [(n, m) for n, m in named_modules if not type(m).__module__.startswith("torch.")]


def _layout(model) -> dict:
    """What a step needs of the module tree, walked once per module generation (``_fast.MODULE_GENERATION``
    changes whenever a module, parameter or buffer is registered or assigned anywhere): the named modules,
    the model's own (quantization) modules and the structural reason."""
    seen = model.__dict__.get("_compiled_layout")
    if seen is None or seen["generation"] != _fast.MODULE_GENERATION[0]:
        modules = list(model.named_modules())
        seen = model.__dict__["_compiled_layout"] = dict(
            generation=_fast.MODULE_GENERATION[0],
            modules=modules,
            own=_own_modules(modules),
            structure=_structure_reason(model),
        )
    return seen


def _named_tensors(layout) -> tuple[tuple, list]:
    """Names and tensors of the parameters, then the buffers, as ``named_parameters()`` and
    ``named_buffers()`` give them, read from the remembered modules at each call (so a tensor replaced
    without a registration is still the one passed)."""
    names, out, seen = [], [], set()
    for slot in ("_parameters", "_buffers"):
        for prefix, mod in layout["modules"]:
            for k, t in getattr(mod, slot).items():
                if t is not None and id(t) not in seen:
                    seen.add(id(t))
                    names.append(f"{prefix}.{k}" if prefix else k)
                    out.append(t)
    return tuple(names), out


def _reason(model, layout=None):
    """:func:`unsupported_reason`; the structural part remembered until a module, parameter or buffer is
    registered anywhere (module types change only then)."""
    if not hasattr(model, "radial_basis"):
        return unsupported_reason(model)
    hooks = _hooks_reason(model)
    if hooks is not None:
        return hooks
    layout = _layout(model) if layout is None else layout
    return layout["structure"] or _quant_reason(model, layout["own"])


def _label(model):
    c = model.config
    return f"{c['num_features']} features, {c['num_layers']} layers, {str(model.dtype).replace('torch.', '')}"


def _key(model, layout=None, named=None):
    """The compiled graph's cache key: configuration, device, the parameters' and buffers' names, shapes and
    dtypes (and whether the parameters take gradients), the backend and the quantizers' baked-in state.
    ``layout`` and ``named`` (:func:`_layout`, :func:`_named_tensors`) if at hand."""
    layout = _layout(model) if layout is None else layout
    names, tensors = _named_tensors(layout) if named is None else named
    shapes = tuple((k, tuple(t.shape), t.dtype, t.requires_grad) for k, t in zip(names, tensors))
    return (
        repr(sorted(model.config.items())),
        str(model.device),
        model.training,
        shapes,
        BACKEND[0],
        _quant_signature(model, layout["own"]),
    )


def _example(model, wrapper):
    """Synthetic inputs whose sizes differ from every parameter dimension (make_fx shares the symbol of
    equal sizes: an atom count equal to a feature width would tie the two in the traced graph)."""
    taken = {2, 3}
    for t in list(wrapper.parameters()) + list(wrapper.buffers()):
        taken.update(int(s) for s in t.shape)
    sizes = [s for s in range(11, 10_000) if s not in taken]
    n, n_all, e = sizes[0], sizes[3], sizes[20]
    g = torch.Generator().manual_seed(0)
    dev = model.device
    z_all = torch.randint(1, model.max_z + 1, (n_all,), generator=g).to(dev)
    pos = (torch.randn(n, 3, generator=g, dtype=torch.float64) * 2.0).to(device=dev, dtype=model.dtype)
    i = torch.randint(0, n, (e,), generator=g)
    j = (i + torch.randint(1, n, (e,), generator=g)) % n
    ref = torch.randint(n, n_all, (n,), generator=g).to(dev)
    return z_all, pos, torch.stack([i, j]).to(dev), ref


def _build_compiled(model, named):
    """The compiled graph of ``model``, called with the tensors of ``named`` (:func:`_named_tensors`)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    wrapper = _Energies(model)
    names = [f"model.{k}" for k in named[0]]

    def energies(tensors, z_all, pos, edge_index, ref_index):
        return torch.func.functional_call(
            wrapper, dict(zip(names, tensors)), (z_all, pos, edge_index, ref_index)
        )

    graph = make_fx(energies, tracing_mode="symbolic", _allow_non_fake_inputs=True)(
        named[1], *_example(model, wrapper)
    )
    options = dict(INDUCTOR_OPTIONS) if BACKEND[0] == "inductor" and INDUCTOR_OPTIONS else None
    return torch.compile(graph, backend=BACKEND[0], dynamic=None, options=options)


def compile_seconds() -> dict:
    """Wall seconds of each compilation in this process (trace + first compiled call), by model structure."""
    return dict(_SECONDS)


def training_forward(model, z, pos, batch, *, num_graphs: int, edge_index=None) -> dict | None:
    """Energies and forces of a training step through the compiled graph, or None (run ``model(...)``).

    Same inputs and outputs as ``So3krates.forward`` in training mode (``energy`` (B,) in eV, ``forces``
    (N, 3) in eV/Angstrom, both differentiable in the parameters). None when the model is not in training
    mode, gradients are off, :func:`unsupported_reason` names a reason, or compiling failed earlier in this
    process (then a warning was issued once).

    Parameters
    ----------
    model : So3krates
    z : torch.Tensor of shape (N,), integer
    pos : torch.Tensor of shape (N, 3)
    batch : torch.Tensor of shape (N,), long
    num_graphs : int
    edge_index : torch.Tensor of shape (2, E), optional
        Default: the model's radius graph, as ``So3krates.forward`` builds it.
    """
    if not (model.training and torch.is_grad_enabled()):
        return None
    layout = _supported(model, model_hooks=True)
    if layout is None:
        return None
    if model.validate_inputs:
        model.check_inputs(z, pos, batch)
    batch = batch.long()
    if edge_index is None and z.shape[0] >= 2:
        from .neighbors import radius_graph

        if num_graphs <= 1 and bool(torch.isfinite(pos.detach()).all()):
            edge_index = _fast.radius_graph_single(pos, model.cutoff)
        else:
            edge_index = radius_graph(pos, model.cutoff, batch if num_graphs > 1 else None)
    res = _run(model, layout, z, pos, edge_index)
    if res is None:
        return None
    e_atoms, forces = res
    energy = e_atoms.new_zeros(num_graphs).index_add_(0, batch, e_atoms)
    return {"energy": energy, "forces": forces}


def inference_forward(model, z, pos, edge_index) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Atomic energies (N,) and forces (N, 3) through the compiled graph, without an autograd graph, or None.

    The compiled inference path of ``So3krates.forward`` (``spherequant.models.fast.set_compile``) for the
    models that the written-out inference pass of :mod:`~spherequant.models.fast` does not cover:
    quantization-aware (fake-quant) models and cosine attention. The same traced graph as the training
    step, run under ``torch.no_grad`` (inductor then compiles its forward only). Hooks on the model itself
    are allowed (``model(...)`` runs them around this call, e.g. the ``smooth`` force mode's report of the
    quantized energy); hooks on a layer are not. None when :func:`unsupported_reason` names another reason,
    or compiling failed earlier in this process.

    Parameters
    ----------
    model : So3krates
    z : torch.Tensor of shape (N,), integer
        Inputs already checked by the caller.
    pos : torch.Tensor of shape (N, 3)
    edge_index : torch.Tensor of shape (2, E), long
    """
    layout = _supported(model, model_hooks=False)
    if layout is None:
        return None
    with torch.no_grad():
        return _run(model, layout, z, pos, edge_index)


def _supported(model, *, model_hooks: bool):
    """The :func:`_layout` of ``model`` if the compiled graph handles it now, else None. ``model_hooks``:
    hooks on the model itself also make it unsupported (the caller calls the graph instead of
    ``model(...)``, which would run them)."""
    if not hasattr(model, "radial_basis"):
        return None
    layout = _layout(model)
    if model_hooks or not (model._forward_hooks or model._forward_pre_hooks):
        reason = _reason(model, layout)
    else:
        reason = _layer_hooks_reason(model) or layout["structure"] or _quant_reason(model, layout["own"])
    return layout if reason is None else None


def _run(model, layout, z, pos, edge_index):
    """``(atomic energies, forces)`` of the compiled graph of a supported model (``layout`` from
    :func:`_supported`), or None (no edges, or compiling failed)."""
    if edge_index is None or z.shape[0] < 2 or edge_index.shape[1] < 2:
        return None  # no edges: nothing worth compiling
    named = _named_tensors(layout)
    key = _key(model, layout, named)
    if key in _FAILED:
        return None
    n = z.shape[0]
    if model.validate_inputs:
        i, j = edge_index[0], edge_index[1]
        r = pos.detach().index_select(0, j) - pos.detach().index_select(0, i)
        if bool((r == 0).all(-1).any()):
            raise ValueError("two atoms of one graph share a position (zero edge length)")
    zl = z.long()
    elements, element_of_atom = torch.unique(zl, return_inverse=True)
    z_all = torch.cat([zl, elements])
    ref_index = element_of_atom + n
    fn = _CACHE.get(key)
    first = fn is None
    what = "training step" if torch.is_grad_enabled() else "inference pass"
    try:
        if first:
            t0 = time.perf_counter()
            fn = _CACHE[key] = _build_compiled(model, named)
        pos = pos.detach().contiguous()  # one stride layout: e.g. rotated positions (LEE) are einsum views
        for t, dim in ((z_all, 0), (pos, 0), (edge_index, 1), (ref_index, 0)):
            torch._dynamo.maybe_mark_dynamic(t, dim)
        e_atoms, forces = fn(named[1], z_all, pos, edge_index, ref_index)
    except Exception as exc:  # a compiler failure must not stop a run: warn once, run the fast path
        _CACHE.pop(key, None)
        _FAILED[key] = repr(exc)
        warnings.warn(f"torch.compile of the {what} failed ({type(exc).__name__}: {exc}); running the "
                      "uncompiled path", RuntimeWarning, stacklevel=3)  # fmt: skip
        return None
    if first:
        _SECONDS[f"{_label(model)}, {what}"] = time.perf_counter() - t0
    return e_atoms, forces
