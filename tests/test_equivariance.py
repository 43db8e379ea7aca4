"""Equivariance metrics (spherequant.equivariance) and the commutation bounds of the paper.

Enforces (cited from proofs/):
* test_commutation_bound_direction: ||Q_d(R u) - R Q_d(u)|| <= 4 sin(delta / 2);
* test_commutation_bound_mddq: ||Q(R v) - R Q(v)|| <= Q_m(r) 4 sin(delta / 2);
* test_no_finite_codebook_commutes_with_all_rotations: an explicit u, R with Q(R u) != R Q(u).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from e3nn import o3
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from spherequant import codebook as cbm
from spherequant.equivariance import (
    EquivarianceResult,
    assert_equivariant,
    commutation_error,
    lee,
    lie_derivative,
)
from spherequant.quantize import MDDQ
from spherequant.so3 import wigner_D
from spherequant.strategies import (
    CODEBOOK_KINDS,
    codebooks,
    point_clouds,
    rotations,
    vector_fields,
)

TOL = {"float32": 1e-5, "float64": 1e-12}


def _haar(n, seed):
    """Independent Haar rotations (scipy), float64 (n, 3, 3)."""
    return Rotation.random(n, random_state=seed).as_matrix()


def _unit_batch(n, seed, dtype="float64"):
    u = np.random.default_rng(seed).standard_normal((n, 3))
    return (u / np.linalg.norm(u, axis=1, keepdims=True)).astype(dtype)


def _np(a):
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


# ------------------------------------------------------------------------------------------ test functions
def centred(x):
    """Equivariant: subtract the centroid."""
    return (
        x - x.mean(axis=-2, keepdims=True)
        if not isinstance(x, torch.Tensor)
        else x - x.mean(-2, keepdim=True)
    )


def pair_forces(x):
    """Equivariant forces of the pair potential phi(r) = exp(-r) / r (numpy or torch, batched)."""
    diff = x[..., :, None, :] - x[..., None, :, :]
    if isinstance(x, torch.Tensor):
        r = torch.linalg.vector_norm(diff, dim=-1)
        eye = torch.eye(x.shape[-2], dtype=torch.bool, device=x.device)
        r = torch.where(eye, torch.ones_like(r), r)
        dphi = -torch.exp(-r) * (1.0 / r + 1.0 / r**2)
        w = torch.where(eye, torch.zeros_like(r), -dphi / r)
        return (w[..., None] * diff).sum(-2)
    r = np.linalg.norm(diff, axis=-1)
    eye = np.eye(x.shape[-2], dtype=bool)
    r = np.where(eye, 1.0, r)
    dphi = -np.exp(-r) * (1.0 / r + 1.0 / r**2)
    w = np.where(eye, 0.0, -dphi / r)
    return (w[..., None] * diff).sum(-2).astype(x.dtype)


def pair_energy_forces_autograd(x):
    """Forces as -dE/dx by autograd (a conservative model, as the force field computes them)."""
    x = x.detach().requires_grad_(True)
    diff = x[:, None, :] - x[None, :, :]
    iu = torch.triu_indices(x.shape[0], x.shape[0], 1)
    r = torch.linalg.vector_norm(diff[iu[0], iu[1]], dim=-1)
    energy = (torch.exp(-r) / r).sum()
    (grad,) = torch.autograd.grad(energy, x, create_graph=True)
    return -grad


# ------------------------------------------------------------------------------------------ commutation
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@given(
    cb=codebooks(kinds=("fibonacci", "icosahedral", "random"), max_size=400),
    rot=rotations(),
    extra=vector_fields((0, 6), unit=True),
    seed=st.integers(0, 2**16),
)
def test_commutation_bound_direction(dtype, cb, rot, extra, seed):
    u = np.concatenate([_unit_batch(64, seed), extra]).astype(dtype)
    delta = cb.covering_radius()
    bound = 4.0 * np.sin(delta / 2.0)
    err = commutation_error(cb.quantize, rot.astype(dtype), u)
    assert err.shape == (1, len(u))
    worst = int(np.argmax(err))
    assert err.max() <= bound + TOL[dtype], (
        f"commutation error {err.max():.6e} > 4 sin(delta/2) = {bound:.6e} for {cb!r} "
        f"at u = {u[worst].tolist()}"
    )


def test_commutation_bound_direction_is_nearly_attained():
    """The bound is not vacuous: a worst case over many pairs comes within a factor 2 of it."""
    cb = cbm.fibonacci(50)
    bound = 4.0 * np.sin(cb.covering_radius() / 2.0)
    err = commutation_error(cb.quantize, _haar(200, 3), _unit_batch(2000, 4))
    assert bound / 2 < err.max() <= bound, f"max {err.max():.4f}, bound {bound:.4f}"


def test_commutation_error_matches_a_slow_loop():
    cb = cbm.random(30, seed=2)
    pts = np.asarray(cb.points)
    rots = _haar(5, 7)
    u = _unit_batch(40, 8)
    got = commutation_error(cb.quantize, rots, u)
    want = np.empty((5, 40))
    for g in range(5):
        for i in range(40):
            ru = rots[g] @ u[i]
            q_ru = pts[np.argmax(pts @ ru)]
            q_u = pts[np.argmax(pts @ u[i])]
            want[g, i] = np.linalg.norm(q_ru - rots[g] @ q_u)
    assert np.abs(got - want).max() < 1e-14
    res = commutation_error(cb.quantize, rots, u, reduce="summary")
    assert isinstance(res, EquivarianceResult)
    assert res.max == want.max() and abs(res.mean - want.mean()) < 1e-14
    assert (res.worst_rotation, *res.worst_index) == np.unravel_index(want.argmax(), want.shape)
    assert commutation_error(cb.quantize, rots, u, reduce="max") == want.max()


def test_commutation_error_torch_and_symmetric_codebook():
    cb = cbm.octahedron()
    quarter = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    u = torch.tensor(_unit_batch(100, 1))
    err = commutation_error(cb.quantize, quarter, u)
    assert isinstance(err, torch.Tensor) and err.shape == (1, 100)
    assert float(err.max()) < 1e-15  # a symmetry of the octahedron: exact commutation
    err = commutation_error(cb.quantize, torch.tensor(_haar(3, 0)), u)
    assert float(err.max()) > 0.1


@pytest.mark.parametrize("backend", ["numpy-float64", "torch-float32"])
@given(
    cb=codebooks(kinds=("fibonacci", "icosahedral", "random"), max_size=300),
    rot=rotations(),
    v=vector_fields((1, 24), min_norm=0.0, max_norm=10.0),
    bits=st.sampled_from([2, 3, 8]),
    magnitude=st.sampled_from(["uniform", "log"]),
)
def test_commutation_bound_mddq(backend, cb, rot, v, bits, magnitude):
    q = MDDQ(cb, magnitude_bits=bits, magnitude=magnitude, r_max=4.0)
    if backend == "torch-float32":
        v_in, r_in, tol = torch.tensor(v, dtype=torch.float32), torch.tensor(rot, dtype=torch.float32), 1e-5
    else:
        v_in, r_in, tol = v, rot, 1e-12
    err = _np(commutation_error(q, r_in, v_in))[0].astype(np.float64)
    r = np.linalg.norm(_np(v_in).astype(np.float64), axis=-1)
    m = q.magnitude_quantizer.quantize(r)  # Q_m(r), float64, independent of the rotation
    bound = m * 4.0 * np.sin(cb.covering_radius() / 2.0)
    # Q_m(||R v||) = Q_m(r) unless rounding moves ||R v|| across a decision threshold of Q_m
    mag_v, _ = q.encode(v_in)
    mag_rv, _ = q.encode(v_in @ r_in.T)
    same = _np(mag_v) == _np(mag_rv)
    thr = q.magnitude_quantizer.thresholds
    if not same.all():
        gap = np.abs(r[~same, None] - thr[None]).min(axis=1) / np.maximum(r[~same], 1e-300)
        assert gap.max() < 1e-5, f"magnitude codes differ away from a threshold: r = {r[~same].tolist()}"
    slack = np.where(same, 0.0, np.abs(q.magnitude_quantizer.quantize(r * (1 + 1e-5)) - m) + 1e-5)
    excess = err - (bound + slack + tol * np.maximum(1.0, m))
    i = int(np.argmax(excess))
    assert excess[i] <= 0, (
        f"||Q(Rv) - RQ(v)|| = {err[i]:.6e} > Q_m(r) 4 sin(delta/2) = {bound[i]:.6e} at v = {v[i].tolist()}"
    )


@settings(max_examples=40)
@given(cb=codebooks(kinds=CODEBOOK_KINDS, min_size=2, max_size=500), pick=st.integers(0, 10**6))
def test_no_finite_codebook_commutes_with_all_rotations(cb, pick):
    pts = np.asarray(cb.points, dtype=np.float64)
    i = pick % len(pts)
    c = pts[i]
    others = np.delete(pts, i, axis=0)
    # angle from c to its nearest other codeword (atan2 form), and a rotation moving c by half of it
    ang = np.arctan2(np.linalg.norm(np.cross(others, c), axis=1), others @ c).min()
    alpha = ang / 2.0
    e = np.eye(3)[np.argmin(np.abs(c))]
    axis = np.cross(c, e)
    axis /= np.linalg.norm(axis)
    rot = Rotation.from_rotvec(alpha * axis).as_matrix()
    # R c is alpha away from c and at least ang - alpha = alpha away from every other codeword: not in C
    assert np.asarray(cb.nearest(c[None]))[0] == i, "Q(c) must be c for a codeword c"
    err = commutation_error(cb.quantize, rot, c[None])[0, 0]
    lower = 2.0 * np.sin(alpha / 2.0)  # chord from R c to the nearest codeword
    assert err >= lower * (1 - 1e-9) and err > 0, (
        f"Q(R c) = R Q(c) for c = {c.tolist()} (error {err:.3e}, expected >= {lower:.3e}); {cb!r}"
    )


# ------------------------------------------------------------------------------------------ LEE
@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@settings(max_examples=25)
@given(x=point_clouds((2, 10), min_distance=0.9), rot=rotations())
def test_lee_zero_for_equivariant_functions(backend, dtype, x, rot):
    xx = torch.tensor(x, dtype=getattr(torch, dtype)) if backend == "torch" else x.astype(dtype)
    rots = np.stack([rot, *_haar(3, 0)])
    for f in (centred, pair_forces):
        res = lee(f, xx, rots)
        scale = max(1.0, float(np.abs(_np(f(xx))).max()), float(np.abs(x).max()))
        assert isinstance(res, EquivarianceResult)
        assert res.errors.shape == (4, len(x))
        assert isinstance(res.errors, torch.Tensor) == (backend == "torch")
        assert res.max <= 10 * TOL[dtype] * scale, f"{f.__name__}: LEE max {res.max:.3e} (scale {scale:.2e})"


def test_lee_of_autograd_forces_is_zero():
    x = torch.tensor(np.random.default_rng(0).normal(scale=2.0, size=(7, 3)))
    res = lee(pair_energy_forces_autograd, x, _haar(6, 1))
    assert res.max < 1e-12, f"max {res.max:.3e}"
    assert_equivariant(pair_energy_forces_autograd, x)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_lee_reports_a_broken_function(backend):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 3))
    shift = np.array([0.3, -1.2, 0.5])
    weights = np.array([0.5, 2.0, 1.0, 3.0, 0.1, 1.5])

    def broken(p):
        s = torch.tensor(np.outer(weights, shift), dtype=p.dtype) if isinstance(p, torch.Tensor) else None
        return p + (s if s is not None else np.outer(weights, shift))

    rots = _haar(5, 11)
    xx = torch.tensor(x) if backend == "torch" else x
    # independent: f(R x) - R f(x) = w_i (I - R) s
    want = weights[None, :] * np.linalg.norm(shift - rots @ shift, axis=-1)[:, None]
    res = lee(broken, xx, rots)
    assert np.abs(_np(res.errors) - want).max() < 1e-12
    assert abs(res.mean - want.mean()) < 1e-12 and abs(res.max - want.max()) < 1e-12
    g, i = np.unravel_index(want.argmax(), want.shape)
    assert (res.worst_rotation, res.worst_index) == (g, (i,))
    assert lee(broken, xx, rots, reduce="max") == res.max
    assert lee(broken, xx, rots, reduce="mean") == res.mean
    assert np.array_equal(_np(lee(broken, xx, rots, reduce="none")), _np(res.errors))


def test_lee_batched_inputs_and_count_of_rotations():
    x = np.random.default_rng(1).normal(size=(4, 5, 3))
    res = lee(pair_forces, x, 3, seed=0)
    assert res.errors.shape == (3, 4, 5) and res.max < 1e-12
    broken = lambda p: p**2  # noqa: E731
    assert lee(broken, x, 3, seed=0).max > 0.1


def test_lee_invariant_and_general_representations():
    x = torch.tensor(np.random.default_rng(2).normal(size=(5, 3)))
    rots = _haar(4, 2)
    distances = lambda p: torch.cdist(p, p)  # noqa: E731
    assert lee(distances, x, rots, rho_out="invariant").max < 1e-12
    first_coord = lambda p: p[..., 0]  # noqa: E731
    res = lee(first_coord, x, rots, rho_out="invariant")
    want = np.abs(np.einsum("gj,nj->gn", rots[:, 0, :], x.numpy()) - x.numpy()[None, :, 0])
    assert np.abs(res.errors.numpy() - want).max() < 1e-12
    # l = 2 spherical harmonics transform with D^2: e3nn's own (independent; its tables are float32-accurate)
    # and spherequant.so3's (float64-accurate)
    sh2 = lambda p: o3.spherical_harmonics(2, p, normalize=True)  # noqa: E731
    assert lee(sh2, x, rots, rho_out=lambda r: o3.Irrep("2e").D_from_matrix(r)).max < 1e-6
    d2 = lambda r: wigner_D(2, r)  # noqa: E731
    assert lee(sh2, x, rots, rho_out=d2).max < 1e-12
    assert lee(sh2, x, rots, rho_out=lambda r: torch.eye(5, dtype=r.dtype)).max > 0.1
    # rho_in: features of degree 2 in, same features out
    feats = sh2(x)
    assert lee(lambda y: 2.0 * y, feats, rots, rho_in=d2, rho_out=d2).max < 1e-12
    assert lee(lambda y: y.flip(-1), feats, rots, rho_in=d2, rho_out=d2).max > 0.1


# -------------------------------------------------------------------------------------- assert_equivariant
@pytest.mark.parametrize("kind", ["numpy-float64", "numpy-float32", "torch-float32", "torch-float64"])
def test_assert_equivariant_passes_for_equivariant_functions(kind):
    backend, dtype = kind.split("-")
    x = np.random.default_rng(3).normal(size=(6, 3)).astype(dtype)
    xx = torch.tensor(x) if backend == "torch" else x
    errors = assert_equivariant(pair_forces, xx)
    assert errors.shape == (8, 6)
    assert isinstance(errors, torch.Tensor) == (backend == "torch")
    assert_equivariant(centred, xx, rotations=_haar(2, 0))


def test_assert_equivariant_raises_with_the_worst_case():
    x = np.random.default_rng(4).normal(size=(5, 3))
    shift = np.array([0.0, 0.0, 1.0])
    weights = np.array([1.0, 1.0, 4.0, 1.0, 1.0])
    broken = lambda p: p + np.outer(weights, shift)  # noqa: E731
    rots = _haar(6, 9)
    want = weights[None, :] * np.linalg.norm(shift - rots @ shift, axis=-1)[:, None]
    g = int(np.argmax(want.max(axis=1)))
    with pytest.raises(AssertionError) as info:
        assert_equivariant(broken, x, rotations=rots)
    msg = str(info.value)
    assert f"{want.max():.3e}" in msg, msg
    assert f"rotation {g} " in msg and "output point (2,)" in msg, msg
    # tolerances: a generous atol makes it pass
    errors = assert_equivariant(broken, x, rotations=rots, atol=10.0)
    assert np.abs(errors - want).max() < 1e-12


def test_assert_equivariant_rho_in_rho_out():
    x = torch.tensor(np.random.default_rng(6).normal(size=(4, 3)))
    feats = o3.spherical_harmonics(2, x, normalize=True)
    d2 = lambda r: wigner_D(2, r)  # noqa: E731
    assert_equivariant(lambda y: y * 3.0, feats, rho_in=d2, rho_out=d2)
    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(lambda y: y.roll(1, -1), feats, rho_in=d2, rho_out=d2)


# ------------------------------------------------------------------------------------------ Lie derivative
def _analytic_lie(x, eps):
    """For f(x) = x (1 + eps x_0): L_k f(x) = eps (e_0 . (e_k x x)) x."""
    out = []
    for k in range(3):
        jx = np.cross(np.eye(3)[k], x)
        out.append(eps * jx[..., :1] * x)
    return np.stack(out)


@pytest.mark.parametrize("kind", ["numpy-fd", "torch-autograd", "torch-fd", "torch32-autograd"])
def test_lie_derivative_matches_analytic_value(kind):
    eps = 0.3
    x = np.random.default_rng(7).normal(size=(5, 3))
    want = _analytic_lie(x, eps)
    if kind.startswith("numpy"):
        xx, method, tol = x, "fd", 1e-8
    elif kind == "torch32-autograd":
        xx, method, tol = torch.tensor(x, dtype=torch.float32), "autograd", 1e-5
    else:
        xx, method, tol = torch.tensor(x), kind.split("-")[1], (1e-12 if kind.endswith("autograd") else 1e-8)

    def f(p):
        return p * (1.0 + eps * p[..., :1])

    got = _np(lie_derivative(f, xx, method=method, reduce="none")).astype(np.float64)
    assert got.shape == (3, 5, 3)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < tol, f"relative error {err:.3e} ({kind})"
    norms = _np(lie_derivative(f, xx, method=method))
    assert np.abs(norms - np.sqrt((want**2).sum(axis=(0, 2)))).max() < tol * np.abs(want).max() * 10
    assert lie_derivative(f, xx, method=method, reduce="max") > 0.1


@pytest.mark.parametrize("method", ["fd", "autograd"])
def test_lie_derivative_vanishes_for_equivariant_functions(method):
    x = torch.tensor(np.random.default_rng(8).normal(scale=1.5, size=(6, 3)))
    assert lie_derivative(pair_forces, x, method=method, reduce="max") < 1e-8
    assert lie_derivative(lambda p: p * (p**2).sum(-1, keepdim=True), x, method=method, reduce="max") < 1e-8
    sh2 = lambda p: o3.spherical_harmonics(2, p, normalize=True)  # noqa: E731
    assert lie_derivative(sh2, x, rho_out=lambda r: wigner_D(2, r), method=method, reduce="max") < 1e-8


def test_lie_derivative_invariant_output():
    x = np.random.default_rng(9).normal(size=(4, 3))
    got = lie_derivative(lambda p: p[..., 2], x, rho_out="invariant", reduce="none")
    want = np.stack([np.cross(np.eye(3)[k], x)[..., 2] for k in range(3)])
    assert np.abs(got - want).max() < 1e-8


# ------------------------------------------------------------------------------------------ validation
def test_invalid_input_raises():
    x = np.random.default_rng(0).normal(size=(4, 3))
    with pytest.raises(ValueError, match="rotations"):
        lee(centred, x, np.eye(3) * 2.0)
    with pytest.raises(ValueError, match="rotation"):
        lee(centred, x, np.diag([1.0, 1.0, -1.0]))
    with pytest.raises(ValueError, match="reduce"):
        lee(centred, x, np.eye(3), reduce="median")
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 3\)"):
        lee(centred, np.zeros((4, 2)), np.eye(3))
    with pytest.raises(ValueError, match="point set"):
        lee(centred, np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match=r"f\(x\) must have shape"):
        lee(lambda p: p[..., :2], x, np.eye(3))
    with pytest.raises(TypeError, match="rho_out"):
        lee(centred, x, np.eye(3), rho_out="vector")
    with pytest.raises(ValueError, match="rho_out"):
        lee(centred, x, np.eye(3), rho_out=lambda r: np.eye(5))
    with pytest.raises(ValueError, match="count"):
        lee(centred, x, 0)
    with pytest.raises(ValueError, match="NaN"):
        lee(lambda p: p * np.nan, x, np.eye(3))
    with pytest.raises(TypeError, match="quantizer"):
        commutation_error("nearest", np.eye(3), x)
    with pytest.raises(ValueError, match="u contains NaN"):
        commutation_error(cbm.octahedron().quantize, np.eye(3), np.full((2, 3), np.nan))
    with pytest.raises(TypeError, match="autograd"):
        lie_derivative(centred, x, method="autograd")
    with pytest.raises(ValueError, match="method"):
        lie_derivative(centred, x, method="spline")
    with pytest.raises(ValueError, match="step"):
        lie_derivative(centred, x, step=-1.0)
    with pytest.raises(ValueError, match="n_rotations"):
        assert_equivariant(centred, x, n_rotations=0)
    with pytest.raises(ValueError, match="atol"):
        assert_equivariant(centred, x, atol=-1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_keep_the_device():
    x = torch.tensor(np.random.default_rng(0).normal(size=(5, 3)), device="cuda")
    res = lee(pair_forces, x, _haar(3, 0))
    assert res.errors.device.type == "cuda" and res.max < 1e-12
    ld = lie_derivative(pair_forces, x, reduce="none")
    assert ld.device.type == "cuda" and float(ld.abs().max()) < 1e-10
    err = commutation_error(cbm.fibonacci(100).quantize, _haar(2, 1), x / x.norm(dim=-1, keepdim=True))
    assert err.device.type == "cuda"
