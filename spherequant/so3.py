"""Rotations of :math:`\\mathbb{R}^3`: Haar sampling, conversions and Wigner-D matrices (numpy or torch).

Conventions (pinned by the tests against e3nn 0.6):

* Rotations act actively on column vectors: ``v' = R @ v``; ``R`` has shape ``(..., 3, 3)``.
* Quaternions are ``(w, x, y, z)`` (scalar first), canonical sign ``w >= 0``.
* Rotation vectors (axis-angle) are ``axis * angle`` with angle in ``[0, pi]``.
* Euler angles are e3nn's Y-X-Y convention: ``R = Y(alpha) @ X(beta) @ Y(gamma)``.
* Wigner-D matrices are in e3nn's real basis: ``wigner_D(1, R) == R`` and
  ``Y_l(R x) = wigner_D(l, R) @ Y_l(x)`` for ``e3nn.o3.spherical_harmonics(l, x, normalize=True)``.

All functions take numpy arrays or torch tensors and return the same kind; torch paths are differentiable and
stay on the input's device. Inputs are validated (``ValueError``/``TypeError`` naming the argument).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from ._backend import as_float_array, cached_tensors, check_vectors, cos_and_sin_dir, is_torch, namespace
from ._sampling import as_output, parse_shape
from ._validation import check_int, check_real, check_seed

__all__ = [
    "angles_to_matrix",
    "axis_angle_to_matrix",
    "check_rotation",
    "matrix_to_angles",
    "matrix_to_axis_angle",
    "matrix_to_quaternion",
    "quaternion_to_matrix",
    "random_rotation",
    "wigner_D",
    "wigner_D_from_angles",
]


# ----------------------------------------------------------------------------------------------- validation
def _size(x) -> int:
    return int(x.numel()) if is_torch(x) else int(x.size)


def _to_float(x) -> float:
    return float(x.detach()) if is_torch(x) else float(x)


def _default_atol(x) -> float:
    eps = float(namespace(x).eps(x))
    if eps > 1e-5:  # float16 / bfloat16: 1000 eps would accept any matrix with entries below 1 in size
        return 16.0 * eps
    return max(1e-6, 1000.0 * eps)


def _det3(R, xp):
    return xp.sum(R[..., 0, :] * xp.cross(R[..., 1, :], R[..., 2, :]), axis=-1)


def _mT(x):
    return x.transpose(-1, -2) if is_torch(x) else np.swapaxes(x, -1, -2)


def check_rotation(R: Any, name: str = "R", *, atol: float | None = None):
    """Validate a batch of rotation matrices and return it as a float array/tensor.

    Parameters
    ----------
    R : array_like or torch.Tensor, shape (..., 3, 3)
        Candidate rotation matrices.
    name : str, default "R"
        Argument name used in error messages.
    atol : float, optional
        Accepted deviation: ``max |R^T R - I| <= atol`` and ``|det R - 1| <= atol``. Default
        ``max(1e-6, 1000 * eps)`` of the dtype (``1e-6`` in float64, about ``1.2e-4`` in float32).

    Returns
    -------
    same kind as ``R`` (integers become float64 numpy), shape (..., 3, 3)

    Raises
    ------
    TypeError
        For non-numeric input.
    ValueError
        For a wrong shape, NaN/inf, a non-orthogonal matrix or a reflection (``det = -1``).

    Examples
    --------
    >>> import numpy as np
    >>> check_rotation(np.eye(3)).shape
    (3, 3)
    >>> check_rotation(-np.eye(3))
    Traceback (most recent call last):
    ...
    ValueError: R must be a rotation (det +1), got det -1 (a reflection) at index ()
    """
    R = as_float_array(R, name)
    if R.ndim < 2 or tuple(R.shape[-2:]) != (3, 3):
        raise ValueError(f"{name} must have shape (..., 3, 3), got {tuple(R.shape)}")
    xp = namespace(R)
    if not bool(xp.all(xp.isfinite(R))):
        raise ValueError(f"{name} contains NaN or infinite entries")
    atol = _default_atol(R) if atol is None else check_real(atol, "atol", minimum=0.0)
    if _size(R) == 0:
        return R
    Rd = R.detach() if is_torch(R) else R
    eye = xp.asarray(np.eye(3), like=Rd)
    with np.errstate(over="ignore", invalid="ignore"):  # huge entries: inf / NaN deviation, refused below
        orth = xp.max(xp.max(xp.abs(_mT(Rd) @ Rd - eye), axis=-1), axis=-1)
        det = _det3(Rd, xp)
    orth = xp.where(xp.isfinite(orth), orth, xp.asarray(np.inf, like=orth))
    worst = _to_float(xp.max(orth))
    if worst > atol:
        idx = np.unravel_index(int(np.argmax(np.asarray(orth.cpu() if is_torch(orth) else orth))), orth.shape)
        raise ValueError(
            f"{name} must be orthogonal: max |R^T R - I| = {worst:.3e} > atol = {atol:.1e} at index "
            f"{tuple(int(i) for i in idx)}"
        )
    bad_det = xp.abs(det - 1.0)
    worst_det = _to_float(xp.max(bad_det))
    if worst_det > atol:
        dnp = np.asarray(det.cpu() if is_torch(det) else det)
        idx = np.unravel_index(int(np.argmax(np.abs(dnp - 1.0))), dnp.shape)
        d = float(dnp[idx])
        what = "a reflection" if d < 0 else "not a rotation"
        raise ValueError(
            f"{name} must be a rotation (det +1), got det {d:.6g} ({what}) at index "
            f"{tuple(int(i) for i in idx)}"
        )
    return R


# --------------------------------------------------------------------------------------------- quaternions
def quaternion_to_matrix(q: Any):
    """Rotation matrices of quaternions ``(w, x, y, z)``.

    ``q`` and ``-q`` give the same rotation. Non-unit quaternions are accepted and normalised first (the
    formula divides by ``|q|^2``); the zero quaternion raises.

    Parameters
    ----------
    q : array_like or torch.Tensor, shape (..., 4)
        Quaternions, scalar part first.

    Returns
    -------
    same kind as ``q``, shape (..., 3, 3)

    Examples
    --------
    >>> import numpy as np
    >>> R = quaternion_to_matrix(np.array([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)]))  # 90 deg about z
    >>> np.round(R, 12) + 0.0
    array([[ 0., -1.,  0.],
           [ 1.,  0.,  0.],
           [ 0.,  0.,  1.]])
    """
    q = as_float_array(q, "q")
    if q.ndim == 0 or q.shape[-1] != 4:
        raise ValueError(f"q must have shape (..., 4), got {tuple(q.shape)}")
    xp = namespace(q)
    if not bool(xp.all(xp.isfinite(q))):
        raise ValueError("q contains NaN or infinite entries")
    # The rotation does not depend on the scale of q: divide by the largest entry first, so that |q|^2
    # neither overflows (q ~ 1e200 would give the identity) nor underflows (q ~ 1e-200 would count as zero).
    m = xp.max(xp.abs(q.detach() if is_torch(q) else q), axis=-1, keepdims=True)
    if _size(m) and bool(xp.any(m == 0)):
        raise ValueError("q contains a zero quaternion, which is not a rotation")
    q = q / m
    return _quaternion_to_matrix(q, xp)


def _quaternion_to_matrix(q, xp, n2=None):
    if n2 is None:
        n2 = xp.sum(q * q, axis=-1)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    s = 2.0 / n2
    rows = [
        [1.0 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w)],
        [s * (x * y + z * w), 1.0 - s * (x * x + z * z), s * (y * z - x * w)],
        [s * (x * z - y * w), s * (y * z + x * w), 1.0 - s * (x * x + y * y)],
    ]
    return xp.stack([xp.stack(r, axis=-1) for r in rows], axis=-2)


def matrix_to_quaternion(R: Any):
    """Unit quaternions ``(w, x, y, z)`` of rotation matrices, with canonical sign.

    Shepperd's method: the largest of ``4w^2, 4x^2, 4y^2, 4z^2`` (read off the diagonal) is taken by a
    square root and the other components from the off-diagonal sums/differences divided by it, so no
    division by a small number occurs for any rotation (robust near angle 0 and pi).
    The sign is fixed by ``w > 0``; for rotations by exactly pi (``w = 0``) the first non-zero of
    ``(x, y, z)`` is made positive.

    Parameters
    ----------
    R : array_like or torch.Tensor, shape (..., 3, 3)
        Rotation matrices (validated by :func:`check_rotation`).

    Returns
    -------
    same kind as ``R``, shape (..., 4)

    Examples
    --------
    >>> import numpy as np
    >>> matrix_to_quaternion(np.eye(3))
    array([1., 0., 0., 0.])
    """
    R = check_rotation(R, "R")
    return _matrix_to_quaternion(R, namespace(R))


def _matrix_to_quaternion(R, xp):
    r00, r11, r22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
    tr = r00 + r11 + r22
    t = xp.stack([1.0 + tr, 1.0 + 2.0 * r00 - tr, 1.0 + 2.0 * r11 - tr, 1.0 + 2.0 * r22 - tr], axis=-1)
    k = xp.argmax(t, axis=-1)
    onehot = xp.stack([k == i for i in range(4)], axis=-1)
    # The selected t_k = 4 q_k^2 is >= 1 (the four sum to 4), so s = 2 |q_k| >= 1: no small divisors.
    t_sel = xp.sum(xp.where(onehot, t, xp.zeros_like(t)), axis=-1)
    s = xp.sqrt(xp.maximum(t_sel, xp.ones_like(t_sel)))
    # With s = 2 |q_k|: (R21 - R12) = 4 w x, (R02 - R20) = 4 w y, (R10 - R01) = 4 w z, (R01 + R10) = 4 x y,
    # (R02 + R20) = 4 x z, (R12 + R21) = 4 y z; dividing by 2 s gives the other components times sign(q_k).
    a = (R[..., 2, 1] - R[..., 1, 2]) / (2.0 * s)
    b = (R[..., 0, 2] - R[..., 2, 0]) / (2.0 * s)
    c = (R[..., 1, 0] - R[..., 0, 1]) / (2.0 * s)
    d = (R[..., 0, 1] + R[..., 1, 0]) / (2.0 * s)
    e = (R[..., 0, 2] + R[..., 2, 0]) / (2.0 * s)
    f = (R[..., 1, 2] + R[..., 2, 1]) / (2.0 * s)
    h = 0.5 * s
    cands = xp.stack(
        [
            xp.stack([h, a, b, c], axis=-1),  # w largest
            xp.stack([a, h, d, e], axis=-1),  # x largest
            xp.stack([b, d, h, f], axis=-1),  # y largest
            xp.stack([c, e, f, h], axis=-1),  # z largest
        ],
        axis=-2,
    )
    q = xp.sum(xp.where(onehot[..., None], cands, xp.zeros_like(cands)), axis=-2)
    q = q / xp.sqrt(xp.sum(q * q, axis=-1, keepdims=True))
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    flip = (w < 0) | ((w == 0) & ((x < 0) | ((x == 0) & ((y < 0) | ((y == 0) & (z < 0))))))
    return xp.where(flip[..., None], -q, q)


# ----------------------------------------------------------------------------------------------- axis-angle
def axis_angle_to_matrix(rotvec: Any):
    """Rotation matrices of rotation vectors ``axis * angle`` (Rodrigues, via the half-angle quaternion).

    ``sin(t/2)/t`` uses a Taylor branch for tiny angles, so the zero vector maps exactly to the identity and
    torch gradients stay finite there. Angles beyond pi wrap around as rotations do; the norm is computed
    without squaring the entries, so any finite angle is accepted (a norm that overflows the dtype raises).

    Parameters
    ----------
    rotvec : array_like or torch.Tensor, shape (..., 3)
        Rotation vectors; the norm is the angle in radians (counter-clockwise about the axis).

    Returns
    -------
    same kind as ``rotvec``, shape (..., 3, 3)

    Examples
    --------
    >>> import numpy as np
    >>> R = axis_angle_to_matrix(np.array([0.0, 0.0, np.pi / 2]))
    >>> np.round(R @ np.array([1.0, 0.0, 0.0]), 12) + 0.0
    array([0., 1., 0.])
    """
    v = check_vectors(rotvec, "rotvec")
    xp = namespace(v)
    # cos(t/2) and sin(t/2) v/|v| with |v| computed without squaring: any finite angle works.
    half_cos, half_sin_dir = cos_and_sin_dir(v, xp, "rotvec", factor=0.5)
    q = xp.concatenate([half_cos, half_sin_dir], axis=-1)
    return _quaternion_to_matrix(q, xp)


def matrix_to_axis_angle(R: Any):
    """Rotation vectors ``axis * angle`` of rotation matrices, angle in ``[0, pi]``.

    Computed from the canonical quaternion (:func:`matrix_to_quaternion`) as ``angle = 2 atan2(|xyz|, w)``,
    accurate near 0 and near pi; near the identity ``angle / |xyz|`` uses a Taylor branch (finite torch
    gradients at ``R = I``). At exactly pi the axis sign follows the quaternion's sign rule.

    Parameters
    ----------
    R : array_like or torch.Tensor, shape (..., 3, 3)
        Rotation matrices (validated by :func:`check_rotation`).

    Returns
    -------
    same kind as ``R``, shape (..., 3)

    Examples
    --------
    >>> import numpy as np
    >>> v = matrix_to_axis_angle(np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]))
    >>> np.round(v / np.pi, 12) + 0.0
    array([0. , 0. , 0.5])
    """
    R = check_rotation(R, "R")
    xp = namespace(R)
    q = _matrix_to_quaternion(R, xp)
    w, xyz = q[..., :1], q[..., 1:]
    s2 = xp.sum(xyz * xyz, axis=-1, keepdims=True)
    small = s2 < 1e-8  # |xyz| = sin(angle/2) < 1e-4, and w > 0
    safe_s = xp.sqrt(xp.where(small, xp.ones_like(s2), s2))
    # angle/|xyz| = 2 asin(s)/s = 2 (1 + s^2/6 + 3 s^4/40 + ...) for small s
    ratio = xp.where(small, 2.0 + s2 / 3.0 + 0.15 * s2 * s2, 2.0 * xp.arctan2(safe_s, w) / safe_s)
    return ratio * xyz


# ------------------------------------------------------------------------------------------- Euler (Y-X-Y)
def _angles(alpha, beta, gamma):
    arrs = [as_float_array(v, n) for v, n in ((alpha, "alpha"), (beta, "beta"), (gamma, "gamma"))]
    if any(is_torch(a) for a in arrs):
        ref = next(a for a in arrs if is_torch(a))
        dt = ref.dtype
        for a in arrs:
            if is_torch(a):
                dt = torch.promote_types(dt, a.dtype)
        arrs = [torch.as_tensor(a, device=ref.device).to(dt) for a in arrs]
        arrs = list(torch.broadcast_tensors(*arrs))
    else:
        dt = np.result_type(*arrs)
        arrs = [a.astype(dt) for a in np.broadcast_arrays(*arrs)]
    xp = namespace(*arrs)
    for a, n in zip(arrs, ("alpha", "beta", "gamma")):
        if not bool(xp.all(xp.isfinite(a))):
            raise ValueError(f"{n} contains NaN or infinite entries")
    return arrs, xp


def _rot_y(t, xp):
    c, s, o, z = xp.cos(t), xp.sin(t), xp.ones_like(t), xp.zeros_like(t)
    return xp.stack([xp.stack([c, z, s], -1), xp.stack([z, o, z], -1), xp.stack([-s, z, c], -1)], -2)


def _rot_x(t, xp):
    c, s, o, z = xp.cos(t), xp.sin(t), xp.ones_like(t), xp.zeros_like(t)
    return xp.stack([xp.stack([o, z, z], -1), xp.stack([z, c, -s], -1), xp.stack([z, s, c], -1)], -2)


def angles_to_matrix(alpha: Any, beta: Any, gamma: Any):
    """Rotation matrices ``Y(alpha) @ X(beta) @ Y(gamma)`` (e3nn's Euler convention).

    ``Y(t)`` and ``X(t)`` are counter-clockwise rotations by ``t`` about the y and x axes.

    Parameters
    ----------
    alpha, beta, gamma : float, array_like or torch.Tensor, shape (...)
        Angles in radians; they broadcast together.

    Returns
    -------
    same kind as the inputs (torch if any is a tensor), shape (broadcast(...), 3, 3)

    Examples
    --------
    >>> import numpy as np
    >>> R = angles_to_matrix(np.pi / 2, 0.0, 0.0)  # 90 deg about y: z -> x
    >>> np.round(R @ np.array([0.0, 0.0, 1.0]), 12) + 0.0
    array([1., 0., 0.])
    """
    (a, b, c), xp = _angles(alpha, beta, gamma)
    return _rot_y(a, xp) @ _rot_x(b, xp) @ _rot_y(c, xp)


def matrix_to_angles(R: Any):
    """Y-X-Y Euler angles ``(alpha, beta, gamma)`` with ``R = Y(alpha) X(beta) Y(gamma)``.

    ``beta = angle(R e_y, e_y)`` in ``[0, pi]`` (via ``atan2``), ``alpha, gamma`` in ``[-pi, pi]``. At
    the gimbal-lock poles ``beta in {0, pi}`` only ``alpha +- gamma`` is defined: there ``alpha = 0`` (up to
    the sign of zero) and ``gamma`` carries the rotation, and torch gradients are not defined.

    Parameters
    ----------
    R : array_like or torch.Tensor, shape (..., 3, 3)
        Rotation matrices (validated by :func:`check_rotation`).

    Returns
    -------
    tuple of three arrays of the kind of ``R``, each shape (...)

    Examples
    --------
    >>> import numpy as np
    >>> a, b, c = matrix_to_angles(angles_to_matrix(0.1, 0.2, 0.3))
    >>> [round(float(t), 12) for t in (a, b, c)]
    [0.1, 0.2, 0.3]
    """
    R = check_rotation(R, "R")
    xp = namespace(R)
    y = R[..., :, 1]  # R e_y = Y(alpha) X(beta) e_y
    rho2 = y[..., 0] * y[..., 0] + y[..., 2] * y[..., 2]
    pos = rho2 > 0
    rho = xp.where(pos, xp.sqrt(xp.where(pos, rho2, xp.ones_like(rho2))), xp.zeros_like(rho2))
    beta = xp.arctan2(rho, y[..., 1])
    alpha = xp.arctan2(y[..., 0], y[..., 2])
    rest = _mT(_rot_y(alpha, xp) @ _rot_x(beta, xp)) @ R  # = Y(gamma)
    gamma = xp.arctan2(rest[..., 0, 2], rest[..., 0, 0])
    return alpha, beta, gamma


# --------------------------------------------------------------------------------------- random rotations
def random_rotation(n=None, seed=None, *, dtype="float64", backend: str = "numpy", device=None):
    """Haar-uniform random rotation matrices.

    Built from uniformly distributed unit quaternions (normalised 4-d Gaussians), whose image under the
    double cover is the Haar measure on SO(3). Samples are drawn in float64 with numpy, so a seed gives the
    same rotations for every ``dtype`` and ``backend``.

    Parameters
    ----------
    n : None, int or tuple of int
        ``None`` gives one matrix of shape (3, 3); otherwise the batch shape.
    seed : None, int or numpy.random.Generator
    dtype : {"float64", "float32"} or the numpy/torch dtype, default "float64"
    backend : {"numpy", "torch"}, default "numpy"
    device : torch device, optional
        Only with ``backend="torch"``.

    Returns
    -------
    numpy.ndarray or torch.Tensor, shape (3, 3) or (*n, 3, 3)

    Examples
    --------
    >>> import numpy as np
    >>> R = random_rotation(10, seed=0)
    >>> R.shape
    (10, 3, 3)
    >>> bool(np.allclose(R @ R.transpose(0, 2, 1), np.eye(3)) and np.allclose(np.linalg.det(R), 1))
    True
    """
    shape = () if n is None else parse_shape(n)
    rng = check_seed(seed)
    q = rng.standard_normal((*shape, 4))
    n2 = np.sum(q * q, axis=-1)
    bad = n2 < 1e-24
    while bad.any():  # essentially never
        q[bad] = rng.standard_normal((int(bad.sum()), 4))
        n2 = np.sum(q * q, axis=-1)
        bad = n2 < 1e-24
    R = _quaternion_to_matrix(q, namespace(q), n2)
    return as_output(R, dtype, backend, device)


# ------------------------------------------------------------------------------------------------ Wigner-D
def _real_basis(l: int) -> np.ndarray:
    """Rows: real spherical harmonics of degree l (m = -l..l) in terms of the complex ones (Condon-Shortley).

    ``Y_real[m] = sum_k T[m, k] Y_complex[k]`` with the usual real form: for ``m < 0``
    ``i (Y^m - (-1)^m Y^-m) / sqrt 2``, ``Y^0``, for ``m > 0`` ``(Y^-m + (-1)^m Y^m) / sqrt 2``.
    """
    n = 2 * l + 1
    T = np.zeros((n, n), dtype=complex)
    r = 1.0 / np.sqrt(2.0)
    T[l, l] = 1.0
    for m in range(1, l + 1):
        sign = (-1.0) ** m
        T[l - m, l - m] = 1j * r  # m' = -m < 0: i (Y^{-m} - (-1)^m Y^{m}) / sqrt 2
        T[l - m, l + m] = -1j * sign * r
        T[l + m, l - m] = r  # m > 0: (Y^{-m} + (-1)^m Y^{m}) / sqrt 2
        T[l + m, l + m] = sign * r
    return T


def _cg_stretched(l: int) -> np.ndarray:
    """Clebsch-Gordan coefficients <l m1; 1 m2 | l+1 M> as an array [m1 + l, m2 + 1, M + l + 1]."""
    L = l + 1
    C = np.zeros((2 * l + 1, 3, 2 * L + 1))
    for M in range(-L, L + 1):
        for m2 in (-1, 0, 1):
            m1 = M - m2
            if abs(m1) > l:
                continue
            if m2 == 1:
                v = (l + M) * (l + M + 1) / ((2 * l + 1) * (2 * l + 2))
            elif m2 == 0:
                v = (l - M + 1) * (l + M + 1) / ((2 * l + 1) * (l + 1))
            else:
                v = (l - M) * (l - M + 1) / ((2 * l + 1) * (2 * l + 2))
            C[m1 + l, m2 + 1, M + L] = np.sqrt(v)
    return C


@functools.cache
def _coupling(l: int) -> np.ndarray:
    """Real isometry C of shape ((2l+1) * 3, 2l+3) with ``D^{l+1} = C^T (D^l kron D^1) C`` (e3nn basis)."""
    T_l, T_1, T_L = _real_basis(l), _real_basis(1), _real_basis(l + 1)
    # real_L[a] = sum_M T_L[a, M] |L M>, |L M> = sum CG |l m1>|1 m2>, |l m1> = sum_n inv(T_l)[m1, n] real_l[n]
    C = np.einsum(
        "aM,nmM,nN,mP->NPa", T_L, _cg_stretched(l), np.linalg.inv(T_l), np.linalg.inv(T_1), optimize=True
    )
    big = np.unravel_index(np.argmax(np.abs(C)), C.shape)
    C = C * (np.conj(C[big]) / abs(C[big]))  # remove the global phase; the result is real
    if np.abs(C.imag).max() > 1e-12:  # pragma: no cover - internal consistency
        raise RuntimeError(f"internal error: coupling for l={l} is not real")
    C = np.ascontiguousarray(C.real.reshape((2 * l + 1) * 3, 2 * l + 3))
    C.setflags(write=False)
    return C


_COUPLING_TORCH: dict = {}


def _coupling_torch(l: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    return cached_tensors(
        _COUPLING_TORCH,
        (l, dtype, device),
        lambda: torch.tensor(np.array(_coupling(l)), dtype=dtype, device=device),
    )


def _wigner_D(l: int, R):
    """Wigner-D of already validated rotations by the recursion ``D^{k+1} = C_k^T (D^k kron R) C_k``.

    Every step is a polynomial in the entries of R, so the result is smooth in R (no Euler-angle poles).
    """
    batch = tuple(R.shape[:-2])
    if l == 0:
        ones = R[..., :1, 0:1] * 0.0 + 1.0
        return ones
    D = R * 1.0  # a copy (keeps autograd)
    for k in range(1, l):
        n, nn = 2 * k + 1, 2 * k + 3
        if is_torch(R):
            C = _coupling_torch(k, R.dtype, str(R.device))
        else:
            C = _coupling(k).astype(R.dtype, copy=False)
        A = (_mT(D) @ C.reshape(n, 3 * nn)).reshape(*batch, n, 3, nn)  # A[n, Q, b] = sum_m D[m, n] C[m, Q, b]
        B = _mT(R)[..., None, :, :] @ A  # B[n, P, b] = sum_Q R[Q, P] A[n, Q, b]
        D = _mT(B.reshape(*batch, n * 3, nn)) @ C  # D'[b, a] = sum_{n, P} B[n, P, b] C[n, P, a]
    return D


def wigner_D(l: int, R: Any):
    """Wigner-D matrices of degree ``l`` of rotation matrices, in e3nn 0.6's real basis.

    ``D^0 = 1``, ``D^1(R) = R``, and ``D^l`` is built by coupling with ``D^1``:
    ``D^{k+1} = C_k^T (D^k kron R) C_k`` where ``C_k`` (columns: the degree ``k+1`` part of ``k x 1``) is
    computed here from the Clebsch-Gordan coefficients and the real<->complex change of basis. The result is a
    polynomial in the entries of ``R``: exact homomorphism, orthogonal, smooth (no Euler-angle singularities)
    and differentiable in torch.

    Parameters
    ----------
    l : int
        Degree, ``>= 0``.
    R : array_like or torch.Tensor, shape (..., 3, 3)
        Rotation matrices (validated by :func:`check_rotation`).

    Returns
    -------
    same kind as ``R``, shape (..., 2l+1, 2l+1)
        Satisfies ``Y_l(R x) = D @ Y_l(x)`` with e3nn's real spherical harmonics.

    Raises
    ------
    TypeError
        If ``l`` is not an integer.
    ValueError
        If ``l < 0`` or ``R`` is not a batch of rotations.

    Examples
    --------
    >>> import numpy as np
    >>> R = random_rotation(seed=0)
    >>> bool(np.allclose(wigner_D(1, R), R))
    True
    >>> D = wigner_D(2, R)
    >>> D.shape, bool(np.allclose(D @ D.T, np.eye(5)))
    ((5, 5), True)
    """
    l = check_int(l, "l", minimum=0)
    R = check_rotation(R, "R")
    return _wigner_D(l, R)


def wigner_D_from_angles(l: int, alpha: Any, beta: Any, gamma: Any):
    """Wigner-D of degree ``l`` for Y-X-Y Euler angles; equals ``e3nn.o3.wigner_D(l, alpha, beta, gamma)``.

    Parameters
    ----------
    l : int
        Degree, ``>= 0``.
    alpha, beta, gamma : float, array_like or torch.Tensor, shape (...)
        Angles in radians (see :func:`angles_to_matrix`); they broadcast together.

    Returns
    -------
    same kind as the inputs, shape (broadcast(...), 2l+1, 2l+1)

    Examples
    --------
    >>> import numpy as np
    >>> D = wigner_D_from_angles(1, 0.3, 0.0, 0.0)
    >>> bool(np.allclose(D, angles_to_matrix(0.3, 0.0, 0.0)))
    True
    """
    l = check_int(l, "l", minimum=0)
    return _wigner_D(l, angles_to_matrix(alpha, beta, gamma))
