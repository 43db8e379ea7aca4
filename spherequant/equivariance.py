"""Measuring how far functions and quantizers are from rotation equivariance.

* :func:`lee` -- the Local Equivariance Error (Eq. 1 of the paper), ``|| f(R x) - rho_out(R) f(x) ||`` for
  functions of point sets (e.g. a force field), per rotation and output point, with mean and max.
* :func:`commutation_error` -- Eq. 4, ``|| Q(R u) - R Q(u) ||`` for a quantizer ``Q`` of 3-vectors; bounded by
  ``4 sin(delta / 2)`` for a nearest-codeword quantizer with covering radius ``delta``.
* :func:`lie_derivative` -- the Lie-derivative metric of Gruver et al. (2022) for rotations:
  ``L_k f(x) = d/dt [ rho_out(R_t)^-1 f(R_t x) ]`` at ``t = 0`` with ``R_t = exp(t J_k)``; zero for every
  ``k`` when ``f`` is equivariant.
* :func:`assert_equivariant` -- a test helper in the style of e3nn: raises :class:`AssertionError` naming the
  worst rotation, output point and error.

Conventions: inputs ``x`` of shape ``(..., n, 3)`` (point sets, leading axes are a batch) rotate as
``x -> x @ R.T`` (active ``v' = R v`` on every point) unless ``rho_in`` says otherwise; outputs of shape
``(..., m, d)`` rotate with ``rho_out(R)`` (default: ``R`` itself, i.e. vectors such as forces), or are
invariant with ``rho_out="invariant"`` (any shape, compared elementwise). Representations are real matrices
given as callables ``R -> (d, d)``, e.g. ``lambda R: spherequant.so3.wigner_D(2, R)``; they receive ``R`` in
the array kind (numpy/torch) and dtype of the data they act on. Errors carry the units of ``f``'s output.

Examples
--------
>>> import numpy as np
>>> from spherequant.equivariance import lee
>>> x = np.random.default_rng(0).normal(size=(5, 3))
>>> res = lee(lambda p: p - p.mean(axis=-2, keepdims=True), x, 4)  # centring is equivariant
>>> res.max < 1e-12
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._backend import as_float_array, check_vectors, is_torch, safe_norm
from ._validation import check_callable, check_choice, check_real

__all__ = [
    "EquivarianceResult",
    "assert_equivariant",
    "commutation_error",
    "lee",
    "lie_derivative",
]

_REDUCTIONS = ("summary", "mean", "max", "none")

# Generators of so(3): (J_k)_{ij} = -epsilon_{kij}, so that J_k v = e_k x v and exp(t J_k) is the rotation
# by t about e_k.
_GENERATORS = np.zeros((3, 3, 3))
for _k, _i, _j in ((0, 2, 1), (1, 0, 2), (2, 1, 0)):
    _GENERATORS[_k, _i, _j] = 1.0
    _GENERATORS[_k, _j, _i] = -1.0


@dataclass(frozen=True)
class EquivarianceResult:
    """Summary of equivariance errors over rotations and output points.

    Attributes
    ----------
    mean : float
        Mean error over all rotations and output points (units of ``f``'s output).
    max : float
        Largest error.
    errors : numpy.ndarray or torch.Tensor
        Every error, shape ``(G, *point_shape)``: ``G`` rotations, ``point_shape`` the output shape without
        its representation axis (e.g. ``(..., m)`` for vector outputs ``(..., m, 3)``). Same kind as the
        output of ``f`` (torch tensors detached).
    worst_rotation : int
        Index of the rotation with the largest error.
    worst_index : tuple of int
        Index into ``point_shape`` of the output point with the largest error.
    """

    mean: float
    max: float
    errors: Any
    worst_rotation: int
    worst_index: tuple[int, ...]


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def _to_numpy(a) -> np.ndarray:
    if is_torch(a):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _like(mat: np.ndarray, ref):
    """``mat`` as the array kind, dtype (and device) of ``ref``."""
    if is_torch(ref):
        return torch.as_tensor(mat, dtype=ref.dtype, device=ref.device)
    return np.asarray(mat, dtype=np.asarray(ref).dtype)


def _detach(a):
    return a.detach() if is_torch(a) else a


def _as_rotations(rotations: Any, seed: Any = None, name: str = "rotations") -> np.ndarray:
    """Validate rotations as float64 numpy (G, 3, 3); an int draws that many Haar rotations."""
    if isinstance(rotations, (int, np.integer)) and not isinstance(rotations, bool):
        if rotations < 1:
            raise ValueError(f"{name} as a count must be at least 1, got {rotations}")
        from .so3 import random_rotation

        rot = _to_numpy(random_rotation(int(rotations), seed=seed)).astype(np.float64)
        return rot.reshape(-1, 3, 3)
    from .so3 import check_rotation

    rot = _to_numpy(check_rotation(rotations, name)).astype(np.float64)
    if rot.ndim == 2:
        rot = rot[None]
    if rot.ndim != 3 or rot.shape[0] == 0:
        raise ValueError(
            f"{name} must have shape (G, 3, 3) or (3, 3) with G >= 1, or be an int, got {tuple(rot.shape)}"
        )
    return rot


def _check_f(f: Any) -> None:
    check_callable(f, "f", "callable (the function under test)")


def _check_reduce(reduce: str, allowed=_REDUCTIONS) -> str:
    return check_choice(reduce, "reduce", allowed)


def _check_rho(rho: Any, name: str):
    if rho is None or callable(rho) or (name == "rho_out" and rho == "invariant"):
        return rho
    extra = ", 'invariant'" if name == "rho_out" else ""
    raise TypeError(f"{name} must be None{extra} or a callable R -> (d, d) matrix, got {rho!r}")


def _rho_of(rho, r, ref, name: str):
    """``rho(r)`` for a rotation ``r`` (already numpy/torch as needed), cast to ``ref``'s kind and dtype."""
    mat = rho(r)
    if is_torch(ref):
        mat = mat if is_torch(mat) else torch.as_tensor(np.asarray(mat), device=ref.device)
        mat = mat.to(ref.dtype)
    else:
        mat = np.asarray(_to_numpy(mat), dtype=ref.dtype)
    d = ref.shape[-1] if ref.ndim else 0
    if tuple(mat.shape) != (d, d):
        raise ValueError(
            f"{name}(R) must be a square matrix matching the last axis ({d}) of the data it acts on, "
            f"got shape {tuple(mat.shape)}"
        )
    return mat


def _rep_matrix(rho, rot: np.ndarray, ref, name: str):
    """``rho(R)`` (``R`` itself when rho is None) in the kind and dtype of ``ref``."""
    r = _like(rot, ref)
    return r if rho is None else _rho_of(rho, r, ref, name)


def _act(rho, rot: np.ndarray, y, name: str):
    """Apply the representation of ``rot`` to the last axis of ``y``: ``y @ rho(R).T``."""
    mat = _rep_matrix(rho, rot, y, name)
    return y @ mat.T


def _check_input(x: Any, rho_in) -> Any:
    if rho_in is None:
        x = check_vectors(x, "x")
        if x.ndim < 2:
            raise ValueError(f"x must be a point set of shape (..., n, 3), got {tuple(x.shape)}")
        return x
    x = as_float_array(x, "x")
    if x.ndim < 1:
        raise ValueError("x must have at least one axis (the representation axis)")
    return x


def _check_output(y: Any, rho_out) -> Any:
    if not (is_torch(y) or isinstance(y, (np.ndarray, np.generic, float, int))):
        raise TypeError(f"f must return a numpy array or torch tensor, got {type(y).__name__}")
    y = as_float_array(y, "f(x)")
    finite = torch.isfinite(y.detach()).all() if is_torch(y) else np.isfinite(y).all()
    if not bool(finite):
        raise ValueError("f returned NaN or infinite values; the equivariance error is undefined")
    if rho_out != "invariant":
        if y.ndim < 1:
            raise ValueError(
                "f(x) must have a representation axis last, got a scalar (use rho_out='invariant')"
            )
        if rho_out is None and y.shape[-1] != 3:
            raise ValueError(f"f(x) must have shape (..., m, 3) for vector outputs, got {tuple(y.shape)}")
    return y


def _point_errors(diff, rho_out):
    """Error per output point: norm over the representation axis (abs for invariant outputs)."""
    if rho_out == "invariant":
        return diff.abs() if is_torch(diff) else np.abs(diff)
    return safe_norm(diff, axis=-1)  # no overflow / underflow of the squares (outputs of any scale)


def _errors_and_scales(f, x, rot, rho_in, rho_out):
    """Errors (G, *point_shape) and reference magnitudes ||rho_out(R) f(x)|| of the same shape (same kind)."""
    y = _check_output(f(x), rho_out)
    errs, scales = [], []
    for g in range(rot.shape[0]):
        y_rot = _check_output(f(_act(rho_in, rot[g], x, "rho_in")), rho_out)
        if tuple(y_rot.shape) != tuple(y.shape):
            raise ValueError(f"f(R x) has shape {tuple(y_rot.shape)} but f(x) has shape {tuple(y.shape)}")
        if rho_out == "invariant":
            expected = y
        else:
            if is_torch(y_rot) != is_torch(y):
                raise TypeError("f returned different array kinds for x and R x")
            expected = _act(rho_out, rot[g], y, "rho_out")
        errs.append(_detach(_point_errors(y_rot - expected, rho_out)))
        scales.append(_detach(_point_errors(expected, rho_out)))
    if is_torch(errs[0]):
        return torch.stack(errs), torch.stack(scales)
    return np.stack(errs), np.stack(scales)


def _summary(errors) -> EquivarianceResult:
    e = _to_numpy(errors).astype(np.float64)
    if e.size == 0:
        raise ValueError("f(x) has no output points; nothing to measure")
    flat = int(np.argmax(e))
    idx = np.unravel_index(flat, e.shape)
    return EquivarianceResult(
        mean=float(e.mean()),
        max=float(e.max()),
        errors=errors,
        worst_rotation=int(idx[0]),
        worst_index=tuple(int(i) for i in idx[1:]),
    )


def _reduce(errors, reduce: str):
    if reduce == "none":
        return errors
    res = _summary(errors)
    return {"summary": res, "mean": res.mean, "max": res.max}[reduce]


# ----------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------
def lee(
    f: Callable,
    x: Any,
    rotations: Any,
    *,
    rho_in: Callable | None = None,
    rho_out: Callable | str | None = None,
    reduce: str = "summary",
    seed: Any = None,
):
    """Local Equivariance Error ``|| f(R x) - rho_out(R) f(x) ||`` (Eq. 1) over rotations and output points.

    For a force field ``F`` (``rho_out`` the default) this is ``|| F(R x) - R F(x) ||`` per atom; the paper
    reports its mean over atoms, rotations and samples, and its max.

    Parameters
    ----------
    f : callable
        Maps ``x`` (numpy or torch, as given) to an output of shape ``(..., m, d)``: ``d = 3`` vectors by
        default, ``d`` the size of ``rho_out(R)`` otherwise, any shape with ``rho_out="invariant"``. May use
        autograd internally (no ``torch.no_grad`` is imposed).
    x : array_like or torch.Tensor, shape (..., n, 3)
        Input point set(s) (shape ``(..., d_in)`` with ``rho_in``).
    rotations : array_like, shape (G, 3, 3) or (3, 3), or int
        Rotation matrices, or a number of Haar-random rotations (drawn with ``seed``).
    rho_in, rho_out : callable, optional
        Representations ``R -> (d, d)`` acting on the last axis of input/output; default ``R``.
        ``rho_out="invariant"`` compares ``f(R x)`` with ``f(x)`` elementwise.
    reduce : {"summary", "mean", "max", "none"}, default "summary"
        What to return (see Returns).
    seed : None, int or numpy.random.Generator
        Only used when ``rotations`` is an int.

    Returns
    -------
    EquivarianceResult or float or array
        ``"summary"``: an :class:`EquivarianceResult` (mean, max, all errors, worst rotation and point);
        ``"mean"`` / ``"max"``: a float; ``"none"``: the errors, shape ``(G, *point_shape)``, same kind as
        ``f``'s output (detached). Units of ``f``'s output.

    Raises
    ------
    ValueError, TypeError
        For malformed input, rotations that are not rotations, or outputs of the wrong shape.

    Examples
    --------
    >>> import numpy as np
    >>> from spherequant.equivariance import lee
    >>> x = np.random.default_rng(0).normal(size=(4, 3))
    >>> shifted = lambda p: p + np.array([0.0, 0.0, 1.0])  # not equivariant
    >>> half_turn_x = np.diag([1.0, -1.0, -1.0])
    >>> round(lee(shifted, x, half_turn_x).max, 6)  # ||e_z - R e_z|| = 2
    2.0
    """
    _check_f(f)
    _check_reduce(reduce)
    rho_in = _check_rho(rho_in, "rho_in")
    rho_out = _check_rho(rho_out, "rho_out")
    x = _check_input(x, rho_in)
    rot = _as_rotations(rotations, seed)
    errors, _ = _errors_and_scales(f, x, rot, rho_in, rho_out)
    return _reduce(errors, reduce)


def commutation_error(quantizer: Callable, rotations: Any, u: Any, *, reduce: str = "none", seed: Any = None):
    """Commutation error ``|| Q(R u) - R Q(u) ||`` (Eq. 4) for every rotation and vector.

    For a nearest-codeword quantizer ``Q_d`` with covering radius ``delta`` this is at most
    ``4 sin(delta / 2)`` on unit vectors; for MDDQ at most ``Q_m(r) 4 sin(delta / 2)``. It is zero for
    rotations in the codebook's symmetry group (away from Voronoi boundaries), and for no finite codebook
    zero for all rotations.

    Parameters
    ----------
    quantizer : callable
        Maps vectors ``(..., 3)`` to quantized vectors ``(..., 3)``, e.g. ``Codebook.quantize`` or an
        ``MDDQ`` module. Called once on the stacked rotated batch ``(G, ..., 3)`` and once on ``u``; a
        quantizer with state (an ``MDDQ`` still calibrating its range) should be frozen first.
    rotations : array_like, shape (G, 3, 3) or (3, 3), or int
        Rotation matrices, or a number of Haar-random rotations drawn with ``seed``.
    u : array_like or torch.Tensor, shape (..., 3)
        Input vectors (unit vectors for direction quantizers).
    reduce : {"none", "mean", "max", "summary"}, default "none"
        ``"none"``: errors of shape ``(G, ...)`` in the kind of the quantizer's output (detached);
        ``"mean"``/``"max"``: floats; ``"summary"``: an :class:`EquivarianceResult`.
    seed : None, int or numpy.random.Generator
        Only used when ``rotations`` is an int.

    Returns
    -------
    array or float or EquivarianceResult
        Errors in the units of ``u`` (chordal distances for unit vectors).

    Examples
    --------
    >>> import numpy as np
    >>> from spherequant.equivariance import commutation_error
    >>> signs = lambda v: np.sign(v) / np.sqrt(3.0)  # nearest cube vertex
    >>> quarter_turn_z = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    >>> u = np.array([[0.6, 0.7, 0.2]]) / np.linalg.norm([0.6, 0.7, 0.2])
    >>> float(commutation_error(signs, quarter_turn_z, u).max())  # a cube symmetry: exact
    0.0
    """
    _check_reduce(reduce)
    if not callable(quantizer):
        raise TypeError(f"quantizer must be callable, got {type(quantizer).__name__}")
    u = check_vectors(u, "u")
    rot = _as_rotations(rotations, seed)
    r_u = _like(rot, u)
    rotated = torch.einsum("gij,...j->g...i", r_u, u) if is_torch(u) else np.einsum("gij,...j->g...i", r_u, u)
    q_rot = as_float_array(quantizer(rotated), "quantizer output")
    q_u = as_float_array(quantizer(u), "quantizer output")
    if tuple(q_u.shape) != tuple(u.shape) or tuple(q_rot.shape) != tuple(rotated.shape):
        raise ValueError(f"quantizer must return the shape of its input (..., 3), got {tuple(q_u.shape)}")
    r_q = _like(rot, q_u)
    if is_torch(q_u):
        diff = q_rot - torch.einsum("gij,...j->g...i", r_q, q_u)
        errors = safe_norm(diff.detach(), axis=-1)
    else:
        diff = q_rot - np.einsum("gij,...j->g...i", r_q, q_u)
        errors = safe_norm(diff, axis=-1)
    return _reduce(errors, reduce)


def _default_step(dtype) -> float:
    eps = torch.finfo(dtype).eps if isinstance(dtype, torch.dtype) else np.finfo(dtype).eps
    return float(eps) ** (1.0 / 3.0)


def lie_derivative(
    f: Callable,
    x: Any,
    *,
    rho_in: Callable | None = None,
    rho_out: Callable | str | None = None,
    method: str = "auto",
    step: float | None = None,
    reduce: str = "norm",
):
    """Lie derivative of ``f`` along the three rotation generators (Gruver et al., 2022).

    ``L_k f(x) = d/dt [ rho_out(R_t)^{-1} f(rho_in(R_t) x) ]`` at ``t = 0``, with ``R_t = exp(t J_k)`` the
    rotation by ``t`` radians about the coordinate axis ``e_k`` (``J_k v = e_k x v``). For vector outputs this
    is ``L_k f(x) = Df(x)[J_k x] - J_k f(x)``. It vanishes for all ``k`` iff ``f`` is equivariant to first
    order at ``x``; its norm measures the local equivariance error per radian.

    Parameters
    ----------
    f : callable
        As in :func:`lee`.
    x : array_like or torch.Tensor, shape (..., n, 3)
        Input point set(s).
    rho_in, rho_out : callable or "invariant", optional
        As in :func:`lee`; ``rho_out(R_t)^{-1}`` is evaluated as ``rho_out(R_t^T)``.
    method : {"auto", "autograd", "fd"}, default "auto"
        ``"autograd"``: exact derivative in ``t`` by :func:`torch.autograd.functional.jvp` (torch ``x``
        and differentiable ``f`` required; straight-through estimators inside ``f`` contribute their
        surrogate derivatives). ``"fd"``: central finite difference
        with ``step``. ``"auto"``: autograd for torch input, fd for numpy.
    step : float, optional
        Finite-difference step in radians; default ``eps ** (1/3)`` of the dtype (about 6e-6 in float64,
        5e-3 in float32).
    reduce : {"norm", "none", "mean", "max"}, default "norm"
        ``"none"``: the derivatives, shape ``(3, *out_shape)`` (generator first); ``"norm"``: per output point
        ``sqrt(sum_k ||L_k f||^2)`` over generators and the representation axis (elementwise for invariant
        outputs), shape ``point_shape``; ``"mean"`` / ``"max"`` of those as floats.

    Returns
    -------
    array or float
        In units of ``f``'s output per radian; same kind as ``f``'s output (torch detached).

    Examples
    --------
    >>> import numpy as np
    >>> from spherequant.equivariance import lie_derivative
    >>> x = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]])
    >>> float(lie_derivative(lambda p: p * (p**2).sum(-1, keepdims=True), x, reduce="max")) < 1e-6
    True
    """
    _check_f(f)
    _check_reduce(reduce, ("norm", "none", "mean", "max"))
    check_choice(method, "method", ("auto", "autograd", "fd"))
    rho_in = _check_rho(rho_in, "rho_in")
    rho_out = _check_rho(rho_out, "rho_out")
    x = _check_input(x, rho_in)
    if method == "auto":
        method = "autograd" if is_torch(x) else "fd"
    if method == "autograd" and not is_torch(x):
        raise TypeError("method='autograd' needs x as a torch tensor (and f differentiable in torch)")
    if step is None:
        step = _default_step(x.dtype)
    else:
        step = check_real(step, "step", minimum=0.0, exclusive_minimum=True)
    y0 = _check_output(f(x), rho_out)
    derivs = [_generator_derivative(f, x, k, rho_in, rho_out, method, step) for k in range(3)]
    out = torch.stack(derivs) if is_torch(derivs[0]) else np.stack(derivs)
    if tuple(out.shape[1:]) != tuple(y0.shape):
        raise ValueError(f"f(R_t x) has shape {tuple(out.shape[1:])} but f(x) has shape {tuple(y0.shape)}")
    return _reduce_lie(out, rho_out, reduce)


def _transported(f, x, t, k: int, rho_in, rho_out):
    """``rho_out(R_t)^{-1} f(rho_in(R_t) x)`` with ``R_t = exp(t J_k)`` (``t`` a scalar array/tensor)."""
    if is_torch(t):
        gen = torch.as_tensor(_GENERATORS[k], dtype=x.dtype, device=x.device)
        r_t = torch.linalg.matrix_exp(t * gen)
    else:
        from scipy.linalg import expm

        r_t = expm(float(t) * _GENERATORS[k])
    r_in = _like(_to_numpy(r_t), x) if not is_torch(r_t) else r_t
    x_t = x @ (r_in.T if rho_in is None else _rho_of(rho_in, r_in, x, "rho_in").T)
    y_t = _check_output(f(x_t), rho_out)
    if rho_out == "invariant":
        return y_t
    r_back = r_t.T
    if is_torch(y_t) and not is_torch(r_back):
        r_back = torch.as_tensor(r_back, dtype=y_t.dtype, device=y_t.device)
    mat = r_back if rho_out is None else _rho_of(rho_out, r_back, y_t, "rho_out")
    if is_torch(mat):
        mat = mat.to(y_t.dtype)
    else:
        mat = np.asarray(mat, dtype=np.asarray(y_t).dtype)
    return y_t @ mat.T


def _generator_derivative(f, x, k: int, rho_in, rho_out, method: str, step: float):
    """``d/dt`` of :func:`_transported` at ``t = 0`` (autograd jvp or central difference), detached."""

    def at(t):
        return _transported(f, x, t, k, rho_in, rho_out)

    if method == "autograd":
        t0 = torch.zeros((), dtype=x.dtype, device=x.device)
        _, d = torch.autograd.functional.jvp(at, t0, torch.ones_like(t0))
        return d.detach()
    if is_torch(x):
        tp = torch.tensor(step, dtype=x.dtype, device=x.device)
        return ((at(tp) - at(-tp)) / (2.0 * step)).detach()
    return np.asarray((at(step) - at(-step)) / (2.0 * step))


def _reduce_lie(out, rho_out, reduce: str):
    """The Lie derivatives ``out`` (generator first) reduced as ``lie_derivative``'s ``reduce`` says."""
    if reduce == "none":
        return out
    # sqrt(sum_k ||L_k f||^2) without squaring overflow / underflow: flatten (generator, rep axis) last.
    if rho_out != "invariant":
        out_flat = out.movedim(0, -2) if is_torch(out) else np.moveaxis(out, 0, -2)
        out_flat = out_flat.reshape(*out_flat.shape[:-2], -1)
    else:
        out_flat = out.movedim(0, -1) if is_torch(out) else np.moveaxis(out, 0, -1)
    norms = safe_norm(out_flat, axis=-1)
    if reduce == "norm":
        return norms
    n = _to_numpy(norms).astype(np.float64)
    return float(n.mean()) if reduce == "mean" else float(n.max())


def _rotation_angle_axis(rot: np.ndarray) -> tuple[float, np.ndarray]:
    """Angle (radians) and unit axis of a rotation matrix, for messages."""
    vee = np.array([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0], rot[1, 0] - rot[0, 1]])
    s = 0.5 * np.linalg.norm(vee)
    c = 0.5 * (np.trace(rot) - 1.0)
    ang = math.atan2(s, c)
    if s > 1e-8:
        axis = vee / (2.0 * s)
    else:  # identity or a half-turn: axis from the largest column of R + I
        sym = rot + np.eye(3)
        col = sym[:, int(np.argmax(np.linalg.norm(sym, axis=0)))]
        axis = col / np.linalg.norm(col) if np.linalg.norm(col) > 0 else np.array([0.0, 0.0, 1.0])
    return ang, axis


def assert_equivariant(
    f: Callable,
    x: Any,
    *,
    rotations: Any = None,
    n_rotations: int = 8,
    atol: float | None = None,
    rtol: float | None = None,
    seed: Any = 0,
    rho_in: Callable | None = None,
    rho_out: Callable | str | None = None,
):
    """Assert ``f(R x) == rho_out(R) f(x)`` within tolerance for several rotations (a test helper).

    An output point passes when its error ``|| f(R x) - rho_out(R) f(x) ||`` is at most
    ``atol + rtol * || rho_out(R) f(x) ||``.

    Parameters
    ----------
    f, x, rho_in, rho_out
        As in :func:`lee`.
    rotations : array_like, shape (G, 3, 3), optional
        Rotations to test; default ``n_rotations`` Haar-random ones drawn with ``seed``.
    n_rotations : int, default 8
    atol, rtol : float, optional
        Defaults by the output's dtype: 1e-4 each for float32 (and lower), 1e-10 each for float64.
    seed : None, int or numpy.random.Generator, default 0

    Returns
    -------
    numpy.ndarray or torch.Tensor, shape (G, *point_shape)
        The errors (same kind as ``f``'s output, detached), when the assertion holds.

    Raises
    ------
    AssertionError
        Naming the worst rotation (index, angle, axis), the worst output point, the error, the tolerance and
        the expected and obtained values.

    Examples
    --------
    >>> import numpy as np
    >>> from spherequant.equivariance import assert_equivariant
    >>> x = np.random.default_rng(0).normal(size=(6, 3))
    >>> errors = assert_equivariant(lambda p: p - p.mean(axis=-2, keepdims=True), x)
    >>> errors.shape
    (8, 6)
    """
    _check_f(f)
    rho_in = _check_rho(rho_in, "rho_in")
    rho_out = _check_rho(rho_out, "rho_out")
    x = _check_input(x, rho_in)
    if atol is not None:
        atol = check_real(atol, "atol", minimum=0.0)
    if rtol is not None:
        rtol = check_real(rtol, "rtol", minimum=0.0)
    if rotations is None:
        if not isinstance(n_rotations, (int, np.integer)) or isinstance(n_rotations, bool) or n_rotations < 1:
            raise ValueError(f"n_rotations must be a positive int, got {n_rotations!r}")
        rotations = int(n_rotations)
    rot = _as_rotations(rotations, seed)
    errors, scales = _errors_and_scales(f, x, rot, rho_in, rho_out)
    low_precision = (
        (errors.dtype in (torch.float32, torch.float16, torch.bfloat16))
        if is_torch(errors)
        else (np.asarray(errors).dtype.itemsize <= 4)
    )
    default = 1e-4 if low_precision else 1e-10
    atol = default if atol is None else float(atol)
    rtol = default if rtol is None else float(rtol)
    if atol < 0 or rtol < 0 or not (math.isfinite(atol) and math.isfinite(rtol)):
        raise ValueError(f"atol and rtol must be finite and non-negative, got atol={atol}, rtol={rtol}")
    e = _to_numpy(errors).astype(np.float64)
    s = _to_numpy(scales).astype(np.float64)
    threshold = atol + rtol * s
    excess = e - threshold
    if e.size and (excess.max() > 0 or not np.all(np.isfinite(e))):
        flat = int(np.nanargmax(np.where(np.isfinite(e), excess, np.inf)))
        idx = np.unravel_index(flat, e.shape)
        g, point = int(idx[0]), tuple(int(i) for i in idx[1:])
        ang, axis = _rotation_angle_axis(rot[g])
        y = _to_numpy(f(x))
        y_rot = _to_numpy(f(_act(rho_in, rot[g], x, "rho_in")))
        if rho_out == "invariant":
            expected = y[point]
        else:
            expected = _to_numpy(_act(rho_out, rot[g], _like(y, y), "rho_out"))[point]
        n_fail = int((excess > 0).sum() + (~np.isfinite(e)).sum())
        raise AssertionError(
            f"f is not equivariant: error {e[idx]:.3e} > atol + rtol * |expected| = {threshold[idx]:.3e} "
            f"(atol={atol:.1e}, rtol={rtol:.1e}) at rotation {g} (angle {ang:.4f} rad about axis "
            f"{np.array2string(axis, precision=4)}), output point {point}: expected "
            f"{np.array2string(np.asarray(expected), precision=6)}, got "
            f"{np.array2string(np.asarray(y_rot[point]), precision=6)}; {n_fail} of {e.size} errors exceed "
            f"the tolerance, max error {e.max():.3e}"
        )
    return errors
