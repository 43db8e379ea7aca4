"""Fast path of the So3krates force field: the same function as the eager reference, with far fewer ops.

:class:`~spherequant.models.so3krates.So3krates` runs this path by default (``model(z, pos, ...)``,
``forward_batch``, and so training, MD, the ASE calculator, evaluation and the tables). The layer-by-layer
module code stays the reference (``So3krates.reference_forward``) and is used when the fast path is switched
off or cannot represent the model.

What it changes (numerically the same function; only floating-point rounding differs):

* The radial filter MLPs of every layer and both attention blocks share their input ``rbf(r_ij)``: their first
  linear layers run as one matmul for all layers; per layer, the second linear layers of the radial and the
  spherical filter of both blocks run as one matmul (block-diagonal weight), giving both filters at once.
* The query/key/value projections of both blocks of a layer are one matmul; the receiver and the sender rows
  are gathered once per layer; per-head sums and the head-to-channel expansion are small matmuls; the
  feature and geometric messages are aggregated by one ``index_add_``.
* In the first layer ``chi = 0``, so the spherical filter input is 0 and its output is computed on one row.
* For degrees ``(1,)`` the spherical harmonics are ``r / |r|`` (e3nn's degree-1 block with ``"norm"``
  normalisation), computed from the distance already at hand.
* A plain full-precision model (``nn.Linear`` modules, and ``nn.Identity`` or the saturation modules of
  :mod:`~spherequant.models.saturation` at the hook points) keeps its fused weights and
  the isolated-atom reference energies ``u(x^0)`` of all elements in a cache keyed on the version counters
  of its parameters and buffers (so an optimiser step or ``load_state_dict`` refreshes it), when the outputs
  carry no parameter gradient (inference, MD). Otherwise (training, quantization-aware models) the fused
  weights are built at every call (the fake-quantized weights included, so gradients reach them) and the
  reference atoms are appended to the batch exactly as in the reference.

Quantization hook points (``x_quant``, ``chi_quant``), the embedding, the cosine-attention bias and any
linear layer of a type it does not know are called as modules, so fake-quant modules of
:mod:`~spherequant.models.gaq` and :mod:`~spherequant.models.baselines` (random masks included, in the same
order) work unchanged; ``QuantLinear`` weights are fused through ``fake_quantized_weight()``. A linear-like
module can opt in to fusion by defining ``fast_linear_params()`` returning ``(weight, bias)`` with
``module(x) == F.linear(x, weight, bias)``, or ``None`` when that does not hold at the moment.
Forward pre-hooks of a ``So3kratesLayer`` (Degree-Quant's in-degree hook) are called with the layer's
arguments ``(x, chi, sh, rbf, phi, i, j)`` (in eval mode, not those marked ``inert_in_eval``); a model with
forward (post) hooks on a layer runs the reference.

Switch
------
The fast path is on unless the environment variable ``SPHEREQUANT_FAST_PATH`` is ``0`` / ``false`` / ``off``
when this module is imported. In code: :func:`set_fast_path` (global) or the context manager
:func:`fast_path` (``with fast_path(False): ...``); per call, ``So3krates.reference_forward``.

Inference (forces requested, outputs not differentiable) of a plain degree-1 model with "so3krates"
attention, like the shipped FP32 model, skips autograd altogether: :func:`energies_and_forces` runs the
forward pass and a written-out reverse pass for the forces. :func:`set_compile` (or
``SPHEREQUANT_COMPILE=1``) compiles that pass with ``torch.compile`` for long runs (opt-in: the first call
compiles for minutes on a small CPU).

Training (a force loss, so a second derivative) can run through :mod:`spherequant.models.compiled` instead:
energy and forces traced into one graph and compiled (training configuration key ``compile``).

Caveat: the cache notices in-place changes of parameters through their version counters; writing through
``param.data`` bypasses them (call :func:`clear_cache` after doing so).
"""

from __future__ import annotations

import math
import os
import warnings
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .saturation import Clamp, DegreeOneNormClip

__all__ = [
    "MODULE_GENERATION",
    "UnsupportedModel",
    "build_plan",
    "clear_cache",
    "compile_enabled",
    "energies_and_forces",
    "fast_path",
    "fast_path_enabled",
    "node_energies",
    "set_compile",
    "set_fast_path",
    "unsupported_reason",
]


def _env_enabled(value: str) -> bool:
    """Whether a value of ``SPHEREQUANT_FAST_PATH`` leaves the fast path on (all but 0/false/off/no)."""
    return value.strip().lower() not in ("0", "false", "off", "no")


_ENABLED = [_env_enabled(os.environ.get("SPHEREQUANT_FAST_PATH", "1"))]
_COMPILE = [os.environ.get("SPHEREQUANT_COMPILE", "0").strip().lower() in ("1", "true", "on", "yes")]
_COMPILED: dict = {}


def fast_path_enabled() -> bool:
    """Whether ``So3krates.forward`` uses the fast path (process-wide switch).

    Examples
    --------
    >>> with fast_path(False):
    ...     fast_path_enabled()
    False
    """
    return _ENABLED[0]


def set_fast_path(enabled: bool) -> bool:
    """Switch the fast path on or off for the whole process; returns the previous setting.

    Parameters
    ----------
    enabled : bool
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    old = _ENABLED[0]
    _ENABLED[0] = enabled
    return old


def compile_enabled() -> bool:
    """Whether inference energies + forces run compiled (:func:`set_compile`)."""
    return _COMPILE[0]


def set_compile(enabled: bool) -> bool:
    """Compile the inference energy + forces pass with ``torch.compile`` (off by default); returns the old
    setting.

    Opt-in for long runs (MD, large evaluations): the first call compiles (about 2 minutes on a 2-core CPU;
    inductor's on-disk cache shortens later processes), with the numbers of atoms and edges dynamic, so a
    changing number of atoms or edges does not recompile. Also switched on by ``SPHEREQUANT_COMPILE=1``.
    Plain models with So3krates attention compile the written-out inference pass
    (:func:`energies_and_forces`); the others (quantization-aware fake-quant models, cosine attention) the
    traced energy + forces graph of :func:`spherequant.models.compiled.inference_forward` (one compilation
    per model structure and quantizer state, e.g. per force mode). If compiling fails, a warning is issued and
    the eager path runs.

    Parameters
    ----------
    enabled : bool
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    old = _COMPILE[0]
    _COMPILE[0] = enabled
    return old


@contextmanager
def fast_path(enabled: bool = True):
    """Context manager setting the fast-path switch inside its block (restored on exit).

    Parameters
    ----------
    enabled : bool
        False runs every So3krates inside the block through the eager reference.

    Examples
    --------
    >>> from spherequant.models.so3krates import So3krates
    >>> m = So3krates(num_features=8, num_layers=1, num_heads=2, degrees=(1,), num_rbf=4, max_z=9).double()
    >>> z, pos = torch.tensor([8, 1, 1]), torch.tensor([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]).double()
    >>> with fast_path(False):
    ...     ref = m(z, pos)["energy"]
    >>> bool(torch.allclose(m(z, pos)["energy"], ref, rtol=1e-12, atol=0))
    True
    """
    old = set_fast_path(enabled)
    try:
        yield
    finally:
        _ENABLED[0] = old


def clear_cache(model) -> None:
    """Drop the cached fused weights and reference energies of ``model`` (after writes to ``param.data``)."""
    model.__dict__.pop("_fast_cache", None)


# ----------------------------------------------------------------------------------------------------------
# parameters of linear-like modules
# ----------------------------------------------------------------------------------------------------------
_QUANT_LINEAR: list = []


def _quant_linear_type():
    if not _QUANT_LINEAR:
        from .gaq import QuantLinear

        _QUANT_LINEAR.append(QuantLinear)
    return _QUANT_LINEAR[0]


def _linear(mod):
    """``(weight, bias, plain)`` of a module equal to ``F.linear(x, weight, bias)``, or None."""
    t = type(mod)
    if t is nn.Linear:
        return mod.weight, mod.bias, True
    if t is _quant_linear_type():
        return mod.fake_quantized_weight(), mod.bias, False
    fn = getattr(mod, "fast_linear_params", None)
    if fn is not None:
        out = fn()
        if out is not None:
            return out[0], out[1], False
    return None


def _mlp2(seq):
    """``[(W1, b1), (W2, b2)], plain`` of ``Sequential(Linear, SiLU, Linear)`` with biases, or None."""
    if type(seq) is not nn.Sequential or len(seq) != 3 or type(seq[1]) is not nn.SiLU:
        return None
    a, b = _linear(seq[0]), _linear(seq[2])
    if a is None or b is None or a[1] is None or b[1] is None:
        return None
    return [(a[0], a[1]), (b[0], b[1])], a[2] and b[2]


class UnsupportedModel(Exception):
    """The fast path cannot represent a model (the message says which part); it runs the reference."""


def _need(value, what):
    if value is None:
        raise UnsupportedModel(what)
    return value


# ----------------------------------------------------------------------------------------------------------
# the fused weights of one model
# ----------------------------------------------------------------------------------------------------------
def _segments(widths_heads, dtype, device, scale: bool):
    """Matrix (sum widths, sum heads) summing each head's channels (times 1/sqrt(head_dim) if ``scale``)."""
    rows = sum(w for w, _ in widths_heads)
    cols = sum(h for _, h in widths_heads)
    out = torch.zeros(rows, cols, dtype=torch.float64)
    r = c = 0
    for w, h in widths_heads:
        dh = w // h
        for k in range(h):
            out[r + k * dh : r + (k + 1) * dh, c + k] = 1.0 / math.sqrt(dh) if scale else 1.0
        r, c = r + w, c + h
    return out.to(device=device, dtype=dtype)


def _expansion(num_heads, head_dim, degrees, dtype, device):
    """Matrix (H + L, F + M) copying feature head h to its head_dim channels and degree k to its 2l+1."""
    f = num_heads * head_dim
    m = sum(2 * l + 1 for l in degrees)
    out = torch.zeros(num_heads + len(degrees), f + m, dtype=torch.float64)
    for h in range(num_heads):
        out[h, h * head_dim : (h + 1) * head_dim] = 1.0
    off = f
    for k, l in enumerate(degrees):
        out[num_heads + k, off : off + 2 * l + 1] = 1.0
        off += 2 * l + 1
    return out.to(device=device, dtype=dtype)


#: Hook-point modules of a plain model (the smooth force mode's float copy has clamps there).
_PLAIN_HOOKS = (nn.Identity, Clamp, DegreeOneNormClip)


def build_plan(model):
    """Fused weights and constants of ``model`` (differentiable in its parameters); ``(plan, plain)``."""
    dtype, device = model.dtype, model.device
    plain = True
    layers = []
    radial_w1, radial_b1 = [], []
    for layer in model.layers:
        if layer._forward_hooks or getattr(layer, "_forward_hooks_with_kwargs", None):
            raise UnsupportedModel("a layer has forward hooks")
        fa, ga = layer.feature_block.attention, layer.geometric_block.attention
        if fa.attention != ga.attention:
            raise UnsupportedModel("feature and geometric blocks use different attention modes")
        # filters: radial (first layers fused across all layers) + spherical; second layers block-diagonal
        fr, fp = _need(_mlp2(fa.filter.radial), "radial filter")
        gr, gp = _need(_mlp2(ga.filter.radial), "radial filter")
        fs, fsp = _need(_mlp2(fa.filter.spherical), "spherical filter")
        gs, gsp = _need(_mlp2(ga.filter.spherical), "spherical filter")
        plain = plain and fp and gp and fsp and gsp
        radial_w1 += [fr[0][0], gr[0][0]]
        radial_b1 += [fr[0][1], gr[0][1]]
        sph_w1 = torch.cat([fs[0][0], gs[0][0]])
        sph_b1 = torch.cat([fs[0][1], gs[0][1]])
        # second layers per block: w = b_r + b_s + W_r h_r + W_s h_s (hidden widths hf_, hg_)
        blocks = [
            dict(w2r=fr[1][0], w2s=fs[1][0], b2=fr[1][1] + fs[1][1], hidden=fr[0][0].shape[0]),
            dict(w2r=gr[1][0], w2s=gs[1][0], b2=gr[1][1] + gs[1][1], hidden=gr[0][0].shape[0]),
        ]
        projections = [fa.query, ga.query, fa.key, ga.key, layer.feature_block.value]
        lins = [_need(_linear(p), "attention projection") for p in projections]
        plain = plain and all(p[2] for p in lins)
        proj_w = torch.cat([p[0] for p in lins])
        biases = [p[1] for p in lins]
        if any(b is not None for b in biases):
            proj_b = torch.cat(
                [b if b is not None else p[0].new_zeros(p[0].shape[0]) for b, p in zip(biases, lins)]
            )
        else:
            proj_b = None
        ex, exp = _need(_mlp2(layer.exchange_block.mlp), "exchange MLP")
        plain = plain and exp
        entry = dict(
            sph_w1=sph_w1, sph_b1=sph_b1, blocks=blocks, proj_w=proj_w, proj_b=proj_b,
            ex_w1=ex[0][0], ex_b1=ex[0][1], ex_w2=ex[1][0], ex_b2=ex[1][1],
        )  # fmt: skip
        if fa.attention == "cosine":
            fb, gb = _need(_linear(fa.bias), "attention bias"), _need(_linear(ga.bias), "attention bias")
            entry.update(bias_f=fb[:2], bias_g=gb[:2], tau_f=fa.tau, tau_g=ga.tau, eps_f=fa.eps, eps_g=ga.eps)
        layers.append(entry)
    plan = dict(layers=layers)
    if layers:
        plan["radial_widths"] = [int(w.shape[0]) for w in radial_w1]
        plan["radial_w1"] = torch.cat(radial_w1)
        plan["radial_b1"] = torch.cat(radial_b1)
    readout = _mlp2(model.energy_mlp)
    if readout is not None:
        plan["readout"] = readout[0]
        plain = plain and readout[1]
    else:
        plain = False
    if model.layers:
        fa, ga = model.layers[0].feature_block.attention, model.layers[0].geometric_block.attention
        hf, dhf, hg, dhg = fa.num_heads, fa.head_dim, ga.num_heads, ga.head_dim
        scale = fa.attention == "so3krates"
        plan["seg"] = _segments([(hf * dhf, hf), (hg * dhg, hg)], dtype, device, scale)
        plan["seg_f"] = _segments([(hf * dhf, hf)], dtype, device, scale)
        plan["seg_g"] = _segments([(hg * dhg, hg)], dtype, device, scale)
        plan["expand_g"] = _expansion(0, 1, model.degrees, dtype, device)  # (L, M): degree k to its 2l+1
        plan["dims"] = (hf * dhf, hg * dhg, hf)
    plan["degree_matrix"] = model.layers[0].degree_matrix.to(dtype) if model.layers else None
    if not all(type(layer.x_quant) in _PLAIN_HOOKS and type(layer.chi_quant) in _PLAIN_HOOKS
               for layer in model.layers):  # fmt: skip
        plain = False
    if type(model.embedding) is not nn.Embedding:
        plain = False
    return plan, plain


def unsupported_reason(model) -> str | None:
    """Why ``model`` cannot run the fast path (then it runs the reference), or None when it can.

    Parameters
    ----------
    model : So3krates
    """
    try:
        with torch.no_grad():
            build_plan(model)
    except UnsupportedModel as exc:
        return str(exc)
    return None


# Structural changes (a submodule, parameter or buffer assigned or registered anywhere) bump a generation
# counter through torch's global registration hooks; in-place changes of a tensor bump its version counter and
# a new storage changes its data pointer. Together they decide whether a cached plan is still valid.
MODULE_GENERATION = [0]


def _bump_generation(*args):
    MODULE_GENERATION[0] += 1


_mod = nn.modules.module
_mod.register_module_module_registration_hook(_bump_generation)
_mod.register_module_parameter_registration_hook(_bump_generation)
_mod.register_module_buffer_registration_hook(_bump_generation)


def _tensors(model):
    return [t for t in model.parameters()] + [t for t in model.buffers()]


def _versions(tensors):
    return tuple([t._version for t in tensors]), tuple([t.data_ptr() for t in tensors])


def _cache_valid(entry) -> bool:
    # tensors made under torch.inference_mode() cannot enter an autograd graph later: rebuild outside it
    return (
        entry["generation"] == MODULE_GENERATION[0]
        and entry["inference_mode"] == torch.is_inference_mode_enabled()
        and _versions(entry["tensors"]) == entry["versions"]
    )


# ----------------------------------------------------------------------------------------------------------
# the network
# ----------------------------------------------------------------------------------------------------------
def _edge_geometry(model, pos, i, j):
    """``sh`` (E, M), ``rbf`` (E, K), ``phi`` (E,), edge length ``d`` (E,)."""
    r = pos.index_select(0, j) - pos.index_select(0, i)
    d = torch.linalg.vector_norm(r, dim=-1)
    if model.validate_inputs and d.numel() and bool((d == 0).any()):
        raise ValueError("two atoms of one graph share a position (zero edge length)")
    if model.degrees == (1,):
        sh = r / d[:, None]
    else:
        from e3nn import o3

        sh = o3.spherical_harmonics(list(model.degrees), r, normalize=True, normalization="norm")
    rb = model.radial_basis
    phi = 0.5 * (torch.cos(d * (math.pi / rb.cutoff)) + 1.0)
    phi = torch.where(d < rb.cutoff, phi, torch.zeros_like(phi))
    arg = -rb.beta * (torch.exp(-d)[:, None] - rb.centers) ** 2
    rbf = phi[:, None] * torch.exp(arg.clamp_min(-60.0))
    return sh, rbf, phi


def _call_pre_hooks(layer, args):
    """The layer's forward pre-hooks, except, in eval mode, those marked ``inert_in_eval`` (they only set
    state read in training mode, e.g. Degree-Quant's in-degree: skipping them keeps an eval-mode trace free
    of their data-dependent shapes)."""
    for hook in layer._forward_pre_hooks.values():
        if not layer.training and getattr(hook, "inert_in_eval", False):
            continue
        if hook(layer, args) is not None:
            raise RuntimeError(
                "a forward pre-hook of a So3kratesLayer returned new inputs, which the fast path cannot "
                "honour; run with spherequant.models.fast.fast_path(False)"
            )


def _attention_so3krates(plan, q, w, k, phi):
    """Attention weights ``(E, H)`` and ``(E, L)`` of both blocks (mode "so3krates") times the cutoff."""
    a_f = (q[0] * w[0] * k[0]) @ plan["seg_f"]
    a_g = (q[1] * w[1] * k[1]) @ plan["seg_g"]
    return a_f * phi[:, None], a_g * phi[:, None]


def _attention_cosine(plan, entry, q, w, k, phi, i, num_nodes):
    from .so3krates import scatter_softmax

    ff, fg, hf = plan["dims"]
    e = phi.shape[0]
    hg = plan["seg"].shape[1] - hf
    logits = []
    for qb, wb, kb, heads, width, tau, eps, (bw, bb) in (
        (q[0], w[0], k[0], hf, ff, entry["tau_f"], entry["eps_f"], entry["bias_f"]),
        (q[1], w[1], k[1], hg, fg, entry["tau_g"], entry["eps_g"], entry["bias_g"]),
    ):
        dh = width // heads
        qh = qb.reshape(e, heads, dh)
        kh = (kb * wb).view(e, heads, dh)
        q_hat = qh / (torch.linalg.vector_norm(qh, dim=-1, keepdim=True) + eps)
        k_hat = kh / (torch.linalg.vector_norm(kh, dim=-1, keepdim=True) + eps)
        logits.append(tau * (q_hat * k_hat).sum(-1) + F.linear(wb, bw, bb))
    alpha = scatter_softmax(torch.cat(logits, dim=1), i, num_nodes, weight=phi) * phi[:, None]
    return torch.split(alpha, [hf, hg], dim=1)


def _hook_point(mod):
    """The quantization hook-point module, or None for a plain ``nn.Identity`` without hooks (skipped)."""
    if type(mod) is nn.Identity and not _has_hooks(mod):
        return None
    return mod


def node_energies(model, plan, zl, pos, edge_index, geometry=None):
    """Network outputs ``u`` (N,) of atoms ``zl`` (long) with edges ``edge_index`` (may be empty).

    Tensors consumed in pieces are cut with ``torch.split`` (one ``cat`` in the backward pass) rather than
    by slicing (a zero-filled full-size gradient per slice).
    """
    i, j = edge_index[0], edge_index[1]
    n = zl.shape[0]
    emb = model.embedding
    if type(emb) is nn.Embedding and emb.max_norm is None and not (emb.scale_grad_by_freq or emb.sparse):
        x = F.embedding(zl, emb.weight, emb.padding_idx)
    else:
        x = emb(zl)
    chi = x.new_zeros(n, model.chi_dim)
    if not model.layers:
        return _readout(model, plan, x)
    if geometry is None:
        sh, rbf, phi = _edge_geometry(model, pos, i, j)
    else:
        sh, rbf, phi = geometry
    e = phi.shape[0]
    one_degree = len(model.degrees) == 1
    dm = plan["degree_matrix"]
    ff, fg, hf = plan["dims"]
    dh_f = ff // hf
    num_degrees = len(model.degrees)
    cosine = model.layers[0].feature_block.attention.attention == "cosine"
    hidden = F.silu(torch.addmm(plan["radial_b1"], rbf, plan["radial_w1"].t()))
    hidden = torch.split(hidden, plan["radial_widths"], dim=1)  # per layer and block
    for k, (layer, entry) in enumerate(zip(model.layers, plan["layers"])):
        if layer._forward_pre_hooks:
            _call_pre_hooks(layer, (x, chi, sh, rbf, phi, i, j))
        xq, cq = _hook_point(layer.x_quant), _hook_point(layer.chi_quant)
        blocks = entry["blocks"]
        hr = hidden[2 * k : 2 * k + 2]  # radial hidden of the feature and the geometric filter
        if k == 0:
            # chi = 0 on entry: the spherical filter sees |chi_j - chi_i|^2 = 0 on every edge, so its output
            # is one row, folded into the bias
            zero = x.new_zeros(1, num_degrees)
            hs = F.silu(torch.addmm(entry["sph_b1"], zero, entry["sph_w1"].t()))
            hs = torch.split(hs, [blocks[0]["hidden"], blocks[1]["hidden"]], dim=1)
            w = [torch.addmm(torch.addmm(blk["b2"], hsb, blk["w2s"].t()), hrb, blk["w2r"].t())
                 for blk, hrb, hsb in zip(blocks, hr, hs)]  # fmt: skip
        else:
            diff = chi.index_select(0, j) - chi.index_select(0, i)
            sq = diff * diff
            inv = sq.sum(-1, keepdim=True) if one_degree else sq @ dm
            hs = F.silu(torch.addmm(entry["sph_b1"], inv, entry["sph_w1"].t()))
            hs = torch.split(hs, [blocks[0]["hidden"], blocks[1]["hidden"]], dim=1)
            w = [torch.addmm(torch.addmm(blk["b2"], hrb, blk["w2r"].t()), hsb, blk["w2s"].t())
                 for blk, hrb, hsb in zip(blocks, hr, hs)]  # fmt: skip
        if entry["proj_b"] is None:
            p = x @ entry["proj_w"].t()
        else:
            p = torch.addmm(entry["proj_b"], x, entry["proj_w"].t())
        # queries at the receivers, keys and values at the senders: one gather per piece, so that every
        # edge-sized tensor is contiguous (strided edge-sized views make CPU kernels slow at large batch)
        p_qf, p_qg, p_kf, p_kg, p_v = torch.split(p, [ff, fg, ff, fg, ff], dim=1)
        q = (p_qf.index_select(0, i), p_qg.index_select(0, i))
        kf, kg, v = p_kf.index_select(0, j), p_kg.index_select(0, j), p_v.index_select(0, j)
        if cosine:
            a_f, a_g = _attention_cosine(plan, entry, q, w, (kf, kg), phi, i, n)
        else:
            a_f, a_g = _attention_so3krates(plan, q, w, (kf, kg), phi)
        if layer.record_attention:
            layer.last_attention = {"feature": a_f.detach(), "geometric": a_g.detach()}
        msg_f = (v.view(e, hf, dh_f) * a_f[:, :, None]).view(e, ff)
        msg_g = a_g * sh if one_degree else (a_g @ plan["expand_g"]) * sh
        dx = x.new_zeros(n, ff).index_add_(0, i, msg_f)
        dchi = chi.new_zeros(n, chi.shape[1]).index_add_(0, i, msg_g)
        x = x + dx if xq is None else xq(x + dx)
        chi = chi + dchi if cq is None else cq(chi + dchi)
        sq = chi * chi
        inv = sq.sum(-1, keepdim=True) if one_degree else sq @ dm
        y = F.silu(torch.addmm(entry["ex_b1"], torch.cat([x, inv], dim=1), entry["ex_w1"].t()))
        a, b = torch.split(torch.addmm(entry["ex_b2"], y, entry["ex_w2"].t()), [ff, num_degrees], dim=1)
        dchi = b * chi if one_degree else (b @ dm.t()) * chi
        x = x + a if xq is None else xq(x + a)
        chi = chi + dchi if cq is None else cq(chi + dchi)
    return _readout(model, plan, x)


def _readout(model, plan, x):
    if "readout" in plan:
        (w1, b1), (w2, b2) = plan["readout"]
        h = F.silu(torch.addmm(b1, x, w1.t()))
        return torch.addmm(b2, h, w2.t()).squeeze(-1)
    return model.energy_mlp(x).squeeze(-1)


def _cached(model, device):
    """The valid cache entry of a plain model (built if needed), None for a model that is not plain, False
    for an unsupported one."""
    entry = model.__dict__.get("_fast_cache")
    if entry is not None and _cache_valid(entry):
        return entry if entry["plain"] else None
    model.__dict__.pop("_fast_cache", None)
    with torch.no_grad():
        try:
            plan, plain = build_plan(model)
        except UnsupportedModel:
            return False
        if not plain:  # remember that (module types only change with a registration, which is noticed)
            tensors = _tensors(model)
            model.__dict__["_fast_cache"] = dict(
                generation=MODULE_GENERATION[0], tensors=tensors, versions=_versions(tensors),
                inference_mode=torch.is_inference_mode_enabled(), plain=False,
            )  # fmt: skip
            return None
        every = torch.arange(model.max_z + 1, device=device)
        empty = torch.zeros(2, 0, dtype=torch.long, device=device)
        u_ref = node_energies(model, plan, every, torch.zeros(every.shape[0], 3, dtype=model.dtype,
                                                               device=device), empty)  # fmt: skip
        table = torch.stack([model.energy_shift, model.energy_scale, u_ref], dim=1)
        tensors = _tensors(model)
        entry = dict(generation=MODULE_GENERATION[0], tensors=tensors, versions=_versions(tensors),
                     inference_mode=torch.is_inference_mode_enabled(), plain=True, plan=plan,
                     table=table)  # fmt: skip
        model.__dict__["_fast_cache"] = entry
    return entry


def atomic_energies(model, z, pos, edge_index, *, cache: bool):
    """Atomic energies (N,) in eV; the fast equivalent of ``So3krates.reference_atomic_energies``.

    Parameters
    ----------
    model : So3krates
    z : torch.Tensor of shape (N,), integer
    pos : torch.Tensor of shape (N, 3)
    edge_index : torch.Tensor of shape (2, E), long
    cache : bool
        The caller needs no gradient with respect to the parameters: a plain model may use cached fused
        weights and reference energies.

    Returns
    -------
    torch.Tensor of shape (N,), or None when the model is not supported (run the reference then).
    """
    zl = z.long()
    if cache:
        entry = _cached(model, pos.device)
        if entry is False:
            return None
        if entry is not None:
            plan, table = entry["plan"], entry["table"]
            u = node_energies(model, plan, zl, pos, edge_index)
            t = table.index_select(0, zl)
            return t[:, 0] + t[:, 1] * (u - t[:, 2])
    try:
        plan, _ = build_plan(model)
    except UnsupportedModel:
        return None
    n = zl.shape[0]
    elements, element_of_atom = torch.unique(zl, return_inverse=True)
    geometry = _edge_geometry(model, pos, edge_index[0], edge_index[1])
    u = node_energies(model, plan, torch.cat([zl, elements]), pos, edge_index, geometry)
    u_atoms, u_ref = u[:n], u[n:]
    return model.energy_shift[zl] + model.energy_scale[zl] * (u_atoms - u_ref[element_of_atom])


# ----------------------------------------------------------------------------------------------------------
# inference: energies and forces with a hand-written reverse pass (no autograd graph)
# ----------------------------------------------------------------------------------------------------------
#: Largest edge count for which the eager written-out force pass is used (beyond it, the autograd fast path
#: was faster on the 2-core development CPU: memory traffic, not operation count, dominates there).
ANALYTIC_MAX_EDGES = 1024


def _silu_parts(pre):
    """``(silu(pre), sigmoid(pre))``."""
    sig = torch.sigmoid(pre)
    return pre * sig, sig


def _dsilu(pre, sig):
    """Derivative of silu at ``pre`` given ``sigmoid(pre)``."""
    return sig * (1.0 + pre * (1.0 - sig))


def _analytic_ok(model, entry) -> bool:
    """Can the written-out pass run this model? The module structure is checked once per cache entry (a
    new module registration makes a new entry); hooks and the attention-recording flag at every call."""
    if "analytic" not in entry:
        plan = entry["plan"]
        static = (
            model.degrees == (1,)
            and bool(model.layers)
            and model.layers[0].feature_block.attention.attention == "so3krates"
            and "readout" in plan
            and all(_written_out_hooks(lay) for lay in model.layers)
        )
        entry["analytic"] = [(lay, lay.x_quant, lay.chi_quant) for lay in model.layers] if static else None
        if static:  # (the cache entry is rebuilt when a buffer, e.g. a clamp's width, changes)
            entry["soft_x"] = [type(lay.x_quant) is Clamp and bool((lay.x_quant.width > 0).any())
                               for lay in model.layers]  # fmt: skip
    layers = entry["analytic"]
    if layers is None:
        return False
    for layer, xq, cq in layers:
        if layer._forward_pre_hooks or layer.record_attention or _has_hooks(xq) or _has_hooks(cq):
            return False
    return True


def _written_out_hooks(layer) -> bool:
    """Hook points whose derivative the written-out pass knows: ``nn.Identity``, a scalar or per-feature
    :class:`~spherequant.models.saturation.Clamp` on ``x``, a degree-(1,) norm clip on ``chi``."""
    xq, cq = layer.x_quant, layer.chi_quant
    x_ok = type(xq) in (nn.Identity, Clamp)
    chi_ok = type(cq) is nn.Identity or (type(cq) is DegreeOneNormClip and cq.degrees == (1,))
    return x_ok and chi_ok


def _has_hooks(mod) -> bool:
    return bool(mod._forward_hooks or mod._forward_pre_hooks)


def _saturations(entry, dtype) -> list:
    """Per layer ``((lo, hi, width), (r_max, width))`` of its hook points: None for an identity, ``width``
    None for a plain clamp / clip."""
    out = []
    for (_, xq, cq), soft in zip(entry["analytic"], entry["soft_x"]):
        x_sat = None
        if type(xq) is Clamp:
            x_sat = (xq.lo.to(dtype), xq.hi.to(dtype), xq.width.to(dtype) if soft else None)
        chi_sat = None
        if type(cq) is DegreeOneNormClip:
            chi_sat = (cq.r_max, cq.width if cq.width > 0 else None)
        out.append((x_sat, chi_sat))
    return out


def _clamp_forward(t, sat):
    """:func:`~spherequant.scalar.soft_clamp` of ``t`` (``sat = (lo, hi, width)``; None: identity) and
    its derivative (the plain clamp's: 1 where ``lo <= t <= hi``, as autograd's)."""
    if sat is None:
        return t, None
    lo, hi, w = sat
    if w is None:
        return torch.clamp(t, lo, hi), ((t >= lo) & (t <= hi)).to(t.dtype)
    ws = torch.where(w > 0, w, torch.ones_like(w))
    a, b = (t - lo) / ws, (t - hi) / ws
    soft = lo + ws * F.softplus(a, threshold=40.0) - ws * F.softplus(b, threshold=40.0)
    hard = (t >= lo) & (t <= hi)
    return (torch.where(w > 0, soft, torch.clamp(t, lo, hi)),
            torch.where(w > 0, torch.sigmoid(a) - torch.sigmoid(b), hard.to(t.dtype)))  # fmt: skip


def _clip_forward(v, sat):
    """Magnitude clip of the rows of ``v`` (N, 3) (``sat = (r_max, width)``, as
    :func:`~spherequant.quantize.clip_magnitude`; None: identity) and what its derivative needs: the scale
    ``s = r' / r``, the unit vectors ``u`` and ``c = dr'/dr - s`` (0 where the clip does not act)."""
    if sat is None:
        return v, None
    r_max, w = sat
    r2 = (v * v).sum(-1, keepdim=True)
    one = torch.ones_like(r2)
    if w is None:
        near = r2 > r_max * r_max
        r = torch.sqrt(torch.where(near, r2, one))
        s = torch.where(near, r_max / r, one)
        slope = torch.zeros_like(r2)  # dr'/dr outside the ball
    else:
        near = r2 > max(r_max - 40.0 * w, 0.0) ** 2
        r = torch.sqrt(torch.where(near, r2, one))
        a = (r - r_max) / w
        cut = F.softplus(a, threshold=40.0) - math.log1p(math.exp(-r_max / w))
        s = torch.where(near, (r - w * cut) / r, one)
        slope = 1.0 - torch.sigmoid(a)
    return v * s, (s, v / r, torch.where(near, slope - s, torch.zeros_like(s)))


def _clip_backward(g, saved):
    """Reverse of :func:`_clip_forward`: ``s g + c u (u . g)``."""
    if saved is None:
        return g
    s, u, c = saved
    return s * g + (c * (u * g).sum(-1, keepdim=True)) * u


def energies_and_forces(model, z, pos, edge_index):
    """Atomic energies (N,) and forces (N, 3) of a plain model without an autograd graph, or None.

    The inference path of ``So3krates.forward`` (forces requested, no differentiable outputs): the forward
    pass keeps what the reverse pass needs, and the reverse pass (the chain rule written out, layer by layer)
    gives ``-dE/dpos`` for the total energy of all graphs. Supported: plain models (``nn.Linear``; at the hook
    points ``nn.Identity``, :class:`~spherequant.models.saturation.Clamp` on ``x`` and
    :class:`~spherequant.models.saturation.DegreeOneNormClip` on ``chi``, whose derivatives it writes out),
    attention mode "so3krates", degrees ``(1,)``; otherwise None (the autograd path runs).

    Parameters
    ----------
    model : So3krates
    z : torch.Tensor of shape (N,), integer
    pos : torch.Tensor of shape (N, 3)
    edge_index : torch.Tensor of shape (2, E), long

    Returns
    -------
    (torch.Tensor of shape (N,), torch.Tensor of shape (N, 3)) or None
    """
    if edge_index.shape[1] > ANALYTIC_MAX_EDGES and not _COMPILE[0]:
        return None  # large graphs: the autograd path streams memory better (measured on a 2-core CPU)
    entry = _cached(model, pos.device)
    if not entry or not _analytic_ok(model, entry):
        return None
    zl, pos = z.long(), pos.detach()
    with torch.no_grad():
        if _COMPILE[0]:
            fn = _compiled()
            if fn is not None:
                try:
                    e_atoms, forces, zero_edge = fn(model, entry, zl, pos, edge_index)
                except Exception as exc:  # a compiler failure must not stop a run: warn once, run eager
                    _COMPILED["fn"] = None
                    warnings.warn(f"torch.compile of the fast path failed ({type(exc).__name__}: {exc}); "
                                  "running it eagerly", RuntimeWarning, stacklevel=2)  # fmt: skip
                else:
                    if model.validate_inputs and bool(zero_edge):
                        raise ValueError("two atoms of one graph share a position (zero edge length)")
                    return e_atoms, forces
        return _energies_and_forces(model, entry, zl, pos, edge_index, model.validate_inputs)


def _energies_and_forces_flagged(model, entry, zl, pos, edge_index):
    """:func:`_energies_and_forces` and a flag: does any edge have zero length? (The compiled form: the
    check is fused into the graph, and the caller raises after one host sync.)"""
    i, j = edge_index[0], edge_index[1]
    zero_edge = ((pos.index_select(0, j) - pos.index_select(0, i)) == 0).all(-1).any()
    e_atoms, forces = _energies_and_forces(model, entry, zl, pos, edge_index, False)
    return e_atoms, forces, zero_edge


def _compiled():
    """The compiled inference pass. Only the number of atoms and of edges are dynamic (marked at each call):
    with ``dynamic=True`` every size would be a symbol, the head count included, and inductor's kernels then
    index the head-to-channel expansion with an integer division per element (1.6x slower, measured)."""
    if "fn" not in _COMPILED:
        # cpp_wrapper: inductor's kernel calls from generated C++ instead of Python (fewer per-call
        # allocations and views; about 1.2x faster at batch 1, measured) at a longer first compile
        compiled = torch.compile(_energies_and_forces_flagged, dynamic=None, options={"cpp_wrapper": True})

        def run(model, entry, zl, pos, edge_index):
            torch._dynamo.maybe_mark_dynamic(zl, 0)
            torch._dynamo.maybe_mark_dynamic(pos, 0)
            torch._dynamo.maybe_mark_dynamic(edge_index, 1)
            return compiled(model, entry, zl, pos, edge_index)

        _COMPILED["fn"] = run
    return _COMPILED["fn"]


def _energies_and_forces(model, entry, zl, pos, edge_index, check: bool):
    """Atomic energies (N,) and forces (N, 3) in four named steps: the edge geometry, the layers forward
    (keeping what the reverse pass needs), the readout with its gradient, and the reverse pass back through
    the layers and the geometry. Everything is plain tensor code, so ``torch.compile`` traces it whole."""
    plan, table = entry["plan"], entry["table"]
    i, j = edge_index[0], edge_index[1]
    geo = _analytic_geometry(model.radial_basis, plan, pos, i, j, check)
    x = F.embedding(zl, model.embedding.weight)
    chi = x.new_zeros(zl.shape[0], 3)
    saved = []
    sats = _saturations(entry, x.dtype)
    for k, lay in enumerate(plan["layers"]):
        x, chi, sv = _layer_forward(plan, lay, k, x, chi, geo, i, j, sats[k])
        saved.append(sv)
    e_atoms, g_x = _analytic_readout(plan, table, zl, x)
    grads = {
        "phi": geo["d"].new_zeros(i.shape[0]),
        "sh": geo["sh"].new_zeros(i.shape[0], 3),
        "hidden": [None] * len(plan["radial_widths"]),
    }
    g_chi = x.new_zeros(zl.shape[0], 3)
    for k in range(len(plan["layers"]) - 1, -1, -1):
        g_x, g_chi = _layer_backward(plan, plan["layers"][k], k, saved[k], g_x, g_chi, geo, grads, i, j)
    return e_atoms, _geometry_backward(model.radial_basis, plan, geo, grads, pos, i, j)


def _analytic_geometry(rb, plan, pos, i, j, check: bool) -> dict:
    """Edge vectors, lengths, unit vectors, cutoff ``phi``, radial basis and the radial MLP's hidden units
    (split per filter), plus the intermediates the reverse pass reuses."""
    r = pos.index_select(0, j) - pos.index_select(0, i)
    d = torch.linalg.vector_norm(r, dim=-1)
    if check and i.shape[0] and bool((d == 0).any()):
        raise ValueError("two atoms of one graph share a position (zero edge length)")
    inv_d = 1.0 / d
    c = math.pi / rb.cutoff
    inside = d < rb.cutoff
    phi = torch.where(inside, 0.5 * (torch.cos(d * c) + 1.0), torch.zeros_like(d))
    ed = torch.exp(-d)
    dc = ed[:, None] - rb.centers
    arg0 = -rb.beta * dc * dc
    ex = torch.exp(arg0.clamp_min(-60.0))
    rbf = phi[:, None] * ex
    pre_r = torch.addmm(plan["radial_b1"], rbf, plan["radial_w1"].t())
    hidden, sig_r = _silu_parts(pre_r)
    return {"r": r, "d": d, "inv_d": inv_d, "sh": r * inv_d[:, None], "c": c, "inside": inside, "phi": phi,
            "ed": ed, "dc": dc, "arg0": arg0, "ex": ex, "rbf": rbf, "pre_r": pre_r, "sig_r": sig_r,
            "hidden": torch.split(hidden, plan["radial_widths"], dim=1)}  # fmt: skip


def _filters(lay, k, chi, hr, i, j, sv):
    """The two attention filters (E, F) and (E, G) of layer ``k`` from the radial and spherical hidden units
    (layer 0 has chi = 0, so its spherical input is zero); stores the spherical intermediates in ``sv``."""
    blocks = lay["blocks"]
    if k == 0:
        hs, _ = _silu_parts(torch.addmm(lay["sph_b1"], chi.new_zeros(1, 1), lay["sph_w1"].t()))
        hs = torch.split(hs, [blocks[0]["hidden"], blocks[1]["hidden"]], dim=1)
        return [torch.addmm(torch.addmm(b["b2"], hsb, b["w2s"].t()), hrb, b["w2r"].t())
                for b, hrb, hsb in zip(blocks, hr, hs)]  # fmt: skip
    diff = chi.index_select(0, j) - chi.index_select(0, i)
    pre_s = torch.addmm(lay["sph_b1"], (diff * diff).sum(-1, keepdim=True), lay["sph_w1"].t())
    hs, sig_s = _silu_parts(pre_s)
    sv.update(diff=diff, pre_s=pre_s, sig_s=sig_s)
    hs = torch.split(hs, [blocks[0]["hidden"], blocks[1]["hidden"]], dim=1)
    return [torch.addmm(torch.addmm(b["b2"], hrb, b["w2r"].t()), hsb, b["w2s"].t())
            for b, hrb, hsb in zip(blocks, hr, hs)]  # fmt: skip


def _layer_forward(plan, lay, k, x, chi, geo, i, j, sat=(None, None)):
    """One interaction layer: ``(x, chi) -> (x', chi')`` and the dict of intermediates its reverse needs;
    ``sat``: the saturations of its hook points (:func:`_saturations`), applied after each block as in
    ``So3kratesLayer.forward``."""
    x_sat, chi_sat = sat
    ff, fg, hf = plan["dims"]
    n, e, dh = x.shape[0], i.shape[0], ff // hf
    phi, sh = geo["phi"], geo["sh"]
    sv = {}
    w = _filters(lay, k, chi, geo["hidden"][2 * k : 2 * k + 2], i, j, sv)
    p = x @ lay["proj_w"].t() if lay["proj_b"] is None else torch.addmm(lay["proj_b"], x, lay["proj_w"].t())
    p_qf, p_qg, p_kf, p_kg, p_v = torch.split(p, [ff, fg, ff, fg, ff], dim=1)
    qf, qg = p_qf.index_select(0, i), p_qg.index_select(0, i)
    kf, kg, v = p_kf.index_select(0, j), p_kg.index_select(0, j), p_v.index_select(0, j)
    qw_f, qw_g = qf * w[0], qg * w[1]
    s_f = (qw_f * kf) @ plan["seg_f"]
    s_g = (qw_g * kg) @ plan["seg_g"]
    a_f, a_g = s_f * phi[:, None], s_g * phi[:, None]
    msg_f = (v.view(e, hf, dh) * a_f[:, :, None]).view(e, ff)
    x1, m_x1 = _clamp_forward(x + x.new_zeros(n, ff).index_add_(0, i, msg_f), x_sat)
    chi1, c_chi1 = _clip_forward(chi + chi.new_zeros(n, 3).index_add_(0, i, a_g * sh), chi_sat)
    pre_e = torch.addmm(lay["ex_b1"], torch.cat([x1, (chi1 * chi1).sum(-1, keepdim=True)], dim=1),
                        lay["ex_w1"].t())  # fmt: skip
    y1, sig_e = _silu_parts(pre_e)
    a, bb = torch.split(torch.addmm(lay["ex_b2"], y1, lay["ex_w2"].t()), [ff, 1], dim=1)
    sv.update(w=w, qf=qf, qg=qg, kf=kf, kg=kg, qw_f=qw_f, qw_g=qw_g, v=v, s_f=s_f, s_g=s_g, a_f=a_f,
              a_g=a_g, chi1=chi1, pre_e=pre_e, sig_e=sig_e, bb=bb, m_x1=m_x1, c_chi1=c_chi1)  # fmt: skip
    x_out, sv["m_x"] = _clamp_forward(x1 + a, x_sat)
    chi_out, sv["c_chi"] = _clip_forward(chi1 + bb * chi1, chi_sat)
    return x_out, chi_out, sv


def _analytic_readout(plan, table, zl, x):
    """Atomic energies (N,) (readout MLP, then the per-element scale and shift of ``table``) and their
    total's gradient with respect to the final features ``x`` (N, F)."""
    (w1o, b1o), (w2o, b2o) = plan["readout"]
    pre_o = torch.addmm(b1o, x, w1o.t())
    h_o, sig_o = _silu_parts(pre_o)
    u = torch.addmm(b2o, h_o, w2o.t()).squeeze(-1)
    t = table.index_select(0, zl)
    e_atoms = t[:, 0] + t[:, 1] * (u - t[:, 2])
    return e_atoms, ((t[:, 1:2] * w2o) * _dsilu(pre_o, sig_o)) @ w1o


def _layer_backward(plan, lay, k, sv, g_x, g_chi, geo, grads, i, j):
    """Reverse of :func:`_layer_forward`: ``(dE/dx', dE/dchi') -> (dE/dx, dE/dchi)``; accumulates the
    gradients of ``phi`` and ``sh`` and stores those of the radial hidden units in ``grads``."""
    ff, fg, hf = plan["dims"]
    n, e, dh = g_x.shape[0], i.shape[0], ff // hf
    phi, sh = geo["phi"], geo["sh"]
    chi1, bb = sv["chi1"], sv["bb"]
    # the output clamps, then x = x1 + a, chi = chi1 (1 + bb)
    if sv["m_x"] is not None:
        g_x = g_x * sv["m_x"]
    g_chi = _clip_backward(g_chi, sv["c_chi"])
    g_bb = (g_chi * chi1).sum(-1, keepdim=True)
    g_chi1 = g_chi * (1.0 + bb)
    g_pre_e = (torch.cat([g_x, g_bb], dim=1) @ lay["ex_w2"]) * _dsilu(sv["pre_e"], sv["sig_e"])
    g_in = g_pre_e @ lay["ex_w1"]
    g_x1 = g_x + g_in[:, :ff]
    g_chi1 = g_chi1 + 2.0 * chi1 * g_in[:, ff:]
    # the clamps after the attention blocks
    if sv["m_x1"] is not None:
        g_x1 = g_x1 * sv["m_x1"]
    g_chi1 = _clip_backward(g_chi1, sv["c_chi1"])
    # x1 = x + sum_i msg_f, chi1 = chi + sum_i a_g sh
    g_mf = g_x1.index_select(0, i).view(e, hf, dh)
    g_mg = g_chi1.index_select(0, i)
    v, a_f, a_g = sv["v"], sv["a_f"], sv["a_g"]
    g_v = (g_mf * a_f[:, :, None]).view(e, ff)
    g_af = (g_mf * v.view(e, hf, dh)).sum(-1)
    g_ag = (g_mg * sh).sum(-1, keepdim=True)
    grads["sh"] += g_mg * a_g
    # a = s phi, s = (q w k) @ seg
    grads["phi"] += (g_af * sv["s_f"]).sum(-1) + (g_ag * sv["s_g"]).sum(-1)
    g_tf = (g_af * phi[:, None]) @ plan["seg_f"].t()
    g_tg = (g_ag * phi[:, None]) @ plan["seg_g"].t()
    wf, wg = sv["w"]
    gk_f, gk_g = g_tf * sv["kf"], g_tg * sv["kg"]
    g_wf, g_wg = gk_f * sv["qf"], gk_g * sv["qg"]
    # gradients of the projections p = x W^T, gathered at receivers (q) and senders (k, v)
    g_p = torch.cat(
        [g_x.new_zeros(n, ff).index_add_(0, i, gk_f * wf),
         g_x.new_zeros(n, fg).index_add_(0, i, gk_g * wg),
         g_x.new_zeros(n, ff).index_add_(0, j, g_tf * sv["qw_f"]),
         g_x.new_zeros(n, fg).index_add_(0, j, g_tg * sv["qw_g"]),
         g_x.new_zeros(n, ff).index_add_(0, j, g_v)],
        dim=1,
    )  # fmt: skip
    # filters: w_b = b + W_r h_r + W_s h_s
    blocks = lay["blocks"]
    grads["hidden"][2 * k] = g_wf @ blocks[0]["w2r"]
    grads["hidden"][2 * k + 1] = g_wg @ blocks[1]["w2r"]
    if k == 0:
        return g_x1 + g_p @ lay["proj_w"], g_chi1
    g_hs = torch.cat([g_wf @ blocks[0]["w2s"], g_wg @ blocks[1]["w2s"]], dim=1)
    g_inv = (g_hs * _dsilu(sv["pre_s"], sv["sig_s"])) @ lay["sph_w1"]  # (E, 1)
    g_diff = 2.0 * sv["diff"] * g_inv
    g_chi = g_chi1 + g_chi1.new_zeros(n, 3).index_add_(0, j, g_diff).index_add_(0, i, -g_diff)
    return g_x1 + g_p @ lay["proj_w"], g_chi


def _geometry_backward(rb, plan, geo, grads, pos, i, j):
    """Forces (N, 3) = -dE/dpos from the gradients of the radial hidden units, ``phi`` and ``sh``."""
    r, d, inv_d, c, rbf = geo["r"], geo["d"], geo["inv_d"], geo["c"], geo["rbf"]
    g_rbf = (torch.cat(grads["hidden"], dim=1) * _dsilu(geo["pre_r"], geo["sig_r"])) @ plan["radial_w1"]
    g_phi = grads["phi"] + (g_rbf * geo["ex"]).sum(-1)
    g_arg = torch.where(geo["arg0"] >= -60.0, g_rbf * rbf, torch.zeros_like(rbf))
    g_d = (g_arg * (-2.0 * rb.beta) * geo["dc"]).sum(-1) * (-geo["ed"])
    g_d += torch.where(geo["inside"], g_phi * (-0.5 * c) * torch.sin(d * c), torch.zeros_like(d))
    g_sh = grads["sh"]
    radial = g_d * inv_d - (g_sh * r).sum(-1) * inv_d**3
    g_r = g_sh * inv_d[:, None] + r * radial[:, None]
    return pos.new_zeros(pos.shape[0], 3).index_add_(0, i, g_r).index_add_(0, j, -g_r)


def radius_graph_single(pos: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Edges (2, E) of one graph, identical to ``radius_graph(pos, cutoff)`` (same order), in fewer ops.

    Parameters
    ----------
    pos : torch.Tensor of shape (N, 3), finite
    cutoff : float

    Examples
    --------
    >>> radius_graph_single(torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [5.0, 0.0, 0.0]]), 2.0).tolist()
    [[0, 1], [1, 0]]
    """
    p = pos.detach()
    diff = p[None, :, :] - p[:, None, :]
    mask = (diff * diff).sum(-1) < cutoff * cutoff
    mask.fill_diagonal_(False)
    return mask.nonzero().t()
