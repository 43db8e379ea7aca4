"""Tests for spherequant.so3: Wigner-D against e3nn and sympy, representation identities, Haar sampling,
conversion round trips (near 0 and pi), backends, gradients and input validation.

Note on the e3nn reference: e3nn 0.6 builds its Lie-algebra generators in torch's *default* dtype, so
``e3nn.o3.wigner_D`` is only float32-accurate (~4e-7) unless the default dtype is float64. The comparisons
below run e3nn under ``torch.set_default_dtype(torch.float64)`` (fixture ``e3nn64``), where it agrees with
``spherequant.so3`` to ~1e-14.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial.transform import Rotation as SciRot

from spherequant import so3
from spherequant.so3 import (
    angles_to_matrix,
    axis_angle_to_matrix,
    check_rotation,
    matrix_to_angles,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    quaternion_to_matrix,
    random_rotation,
    wigner_D,
    wigner_D_from_angles,
)

o3 = pytest.importorskip("e3nn.o3")

TOL = {"float32": 1e-5, "float64": 1e-12}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny tensors: one thread avoids oversubscription stalls on a shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def e3nn64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _angles(n, seed):
    rng = np.random.default_rng(seed)
    a = rng.uniform(-2 * np.pi, 2 * np.pi, n)
    b = rng.uniform(-np.pi, 2 * np.pi, n)
    c = rng.uniform(-2 * np.pi, 2 * np.pi, n)
    return a, b, c


def _worst(err):
    err = np.asarray(err)
    return f"max err {err.max():.3e} at index {np.unravel_index(err.argmax(), err.shape)}"


# ------------------------------------------------------------------------------------- Wigner-D vs e3nn
@pytest.mark.parametrize("l", range(7))
def test_wigner_D_matches_e3nn(l, e3nn64):
    a, b, c = _angles(40, seed=l)
    # include gimbal-lock and identity cases
    a, b, c = (np.concatenate([x, [0.0, 0.3, 1.0]]) for x in (a, b, c))
    b[-3:] = [0.0, 0.0, np.pi]
    ta, tb, tc = (torch.tensor(x) for x in (a, b, c))
    ref = o3.wigner_D(l, ta, tb, tc).numpy()
    got_angles = wigner_D_from_angles(l, a, b, c)
    got_matrix = wigner_D(l, o3.angles_to_matrix(ta, tb, tc).numpy())
    got_torch = wigner_D_from_angles(l, ta, tb, tc)
    for got in (got_angles, got_matrix, got_torch.numpy()):
        err = np.abs(got - ref).max(axis=(-1, -2))
        assert err.max() <= 1e-10, _worst(err)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_wigner_D_of_degree_one_is_R(dtype):
    R = random_rotation(100, seed=1, dtype=dtype)
    assert np.array_equal(wigner_D(1, R), R)
    Rt = torch.tensor(R)
    assert torch.equal(wigner_D(1, Rt), Rt)
    D0 = wigner_D(0, R)
    assert D0.shape == (100, 1, 1) and np.all(D0 == 1) and D0.dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("l", [0, 1, 2, 3, 5, 8, 12])
def test_wigner_D_homomorphism_orthogonal_det_one(l, dtype):
    R1 = random_rotation(50, seed=2, dtype=dtype)
    R2 = random_rotation(50, seed=3, dtype=dtype)
    D12 = wigner_D(l, R1 @ R2)
    D1, D2 = wigner_D(l, R1), wigner_D(l, R2)
    tol = TOL[dtype] * (10 if dtype == "float32" else 100)
    err = np.abs(D12 - D1 @ D2).max(axis=(-1, -2))
    assert err.max() <= tol, "homomorphism: " + _worst(err)
    eye = np.eye(2 * l + 1)
    err = np.abs(D1 @ np.swapaxes(D1, -1, -2) - eye).max(axis=(-1, -2))
    assert err.max() <= tol, "orthogonality: " + _worst(err)
    det = np.linalg.det(D1.astype(np.float64))
    assert np.abs(det - 1).max() <= 10 * tol, f"det: {_worst(np.abs(det - 1))}"
    # inverse and identity
    err = np.abs(wigner_D(l, np.swapaxes(R1, -1, -2)) - np.swapaxes(D1, -1, -2)).max()
    assert err <= tol, f"D(R^T) != D(R)^T by {err:.3e}"
    assert np.abs(wigner_D(l, np.eye(3)) - eye).max() <= tol


@pytest.mark.parametrize("l", range(7))
def test_spherical_harmonics_equivariance(l, e3nn64):
    """Y(R x) = D(R) Y(x) with e3nn's real spherical harmonics (the defining property of the basis)."""
    R = random_rotation(30, seed=10 + l)
    x = np.random.default_rng(l).standard_normal((30, 3))
    Rx = np.einsum("nij,nj->ni", R, x)
    Y = o3.spherical_harmonics(l, torch.tensor(x), normalize=True).numpy()
    YR = o3.spherical_harmonics(l, torch.tensor(Rx), normalize=True).numpy()
    D = wigner_D(l, R)
    err = np.abs(YR - np.einsum("nij,nj->ni", D, Y)).max(axis=-1)
    assert err.max() <= 1e-10, _worst(err)
    # the transpose convention would fail: D(R)^T Y(x) != Y(R x) for l >= 1
    if l >= 1:
        wrong = np.abs(YR - np.einsum("nji,nj->ni", D, Y)).max()
        assert wrong > 1e-3


# ------------------------------------------------------------------------------ independent sympy check
def _real_from_complex(l: int) -> np.ndarray:
    """T with Y_real[m] = sum_k T[m, k] Y_complex[k], m, k = -l..l (Condon-Shortley complex harmonics).

    The usual real form: m < 0: (i / sqrt 2) (Y^m - (-1)^m Y^{-m}); m = 0: Y^0; m > 0: (1 / sqrt 2)
    (Y^{-m} + (-1)^m Y^m). For l = 1 this gives (y, z, x) up to a common positive factor.
    """
    n = 2 * l + 1
    T = np.zeros((n, n), dtype=complex)
    s = 1 / np.sqrt(2)
    for m in range(-l, l + 1):
        if m < 0:
            T[m + l, m + l] = 1j * s
            T[m + l, -m + l] = -1j * (-1) ** m * s
        elif m == 0:
            T[l, l] = 1
        else:
            T[m + l, -m + l] = s
            T[m + l, m + l] = (-1) ** m * s
    return T


def _sympy_D(l, a, b, c):
    """sympy's complex Wigner-D matrix, rows m = -l..l, columns m' = -l..l (sympy.physics.wigner.wigner_d)."""
    import sympy
    from sympy.physics.wigner import wigner_d

    return np.array(sympy.N(wigner_d(l, a, b, c), 20), dtype=complex)


def _sympy_rotation_D(l, a, b, c):
    """The same matrix element by element from sympy.physics.quantum.spin.Rotation.D (slower)."""
    import sympy
    from sympy.physics.quantum.spin import Rotation

    a, b, c = (sympy.Float(x, 20) for x in (a, b, c))
    n = 2 * l + 1
    D = np.zeros((n, n), dtype=complex)
    for i, m in enumerate(range(-l, l + 1)):
        for j, mp in enumerate(range(-l, l + 1)):
            D[i, j] = complex(sympy.N(Rotation.D(l, m, mp, a, b, c).doit(), 20))
    return D


def _expm_D(l, a, b, c):
    """<l m| exp(-i a Jz) exp(-i b Jy) exp(-i c Jz) |l m'> from the ladder operators (Condon-Shortley)."""
    from scipy.linalg import expm

    m = np.arange(-l, l + 1)
    Jz = np.diag(m).astype(complex)
    Jp = np.zeros((2 * l + 1, 2 * l + 1), dtype=complex)
    for k in range(2 * l):
        Jp[k + 1, k] = np.sqrt(l * (l + 1) - m[k] * (m[k] + 1))
    Jy = (Jp - Jp.T) / 2j
    return expm(-1j * a * Jz) @ expm(-1j * b * Jy) @ expm(-1j * c * Jz)


@pytest.mark.parametrize("l", [0, 1, 2, 3])
def test_wigner_D_against_sympy_complex_basis(l):
    """Independent check through sympy's complex Wigner-D.

    Conventions (pinned by the first assertions, so a change in sympy shows up here and not as a mystery):
    in sympy 1.14 both ``sympy.physics.wigner.wigner_d(j, a, b, c)[m, m']`` and
    ``sympy.physics.quantum.spin.Rotation.D(j, m, m', a, b, c).doit()`` equal
    ``<j m| exp(-i a Jz) exp(-i b Jy) exp(-i c Jz) |j m'>`` (active, z-y-z, Condon-Shortley; rows and
    columns m = -j..j). Older sympy releases used the opposite sign of ``b`` in ``Rotation.d``; the pin
    catches that.

    Frames: e3nn's real basis uses y as the polar axis. With standard coordinates (x', y', z') = (z, x, y)
    of e3nn's (x, y, z) -- a cyclic relabelling, so a proper rotation -- e3nn's ``Y(t)`` is a rotation about
    z' and ``X(t)`` one about y', so e3nn's ``Y(a) X(b) Y(c)`` is the z'-y'-z' rotation with the same angles.
    The real l = 1 basis (m = -1, 0, 1) is (y', z', x') = e3nn's (x, y, z).

    Basis change: with ``Y_real = T Y_complex`` (see :func:`_real_from_complex`) and ``D_c[m, m'] =
    <m|U|m'>``, the matrix of U on the real basis (as e3nn uses: ``Y_real(R x) = D Y_real(x)``) is
    ``D_real = conj(T) D_c T^T``; it must come out real.
    """
    rng = np.random.default_rng(100 + l)
    T = _real_from_complex(l)
    assert np.allclose(T @ T.conj().T, np.eye(2 * l + 1), atol=1e-15)
    if l <= 2:
        pin = np.abs(_sympy_rotation_D(l, 0.3, 1.1, -0.7) - _sympy_D(l, 0.3, 1.1, -0.7)).max()
        assert pin <= 1e-13, f"sympy's Rotation.D and wigner_d disagree by {pin:.1e}"
    for a, b, c in [(0.3, 1.1, -0.7), *rng.uniform(-3, 3, (3, 3)), (0.0, np.pi, 0.4)]:
        Dc = _sympy_D(l, a, b, c)
        pin = np.abs(Dc - _expm_D(l, a, b, c)).max()
        assert pin <= 1e-13, f"sympy's Wigner-D convention changed (off by {pin:.1e})"
        Dr = T.conj() @ Dc @ T.T
        assert np.abs(Dr.imag).max() <= 1e-14, "real-basis D has an imaginary part"
        got = wigner_D_from_angles(l, a, b, c)
        err = np.abs(got - Dr.real)
        assert err.max() <= 1e-12, f"l={l} angles={(a, b, c)}: " + _worst(err)
        if l >= 1:  # the conjugate (passive) convention is a different matrix: the test can fail
            assert np.abs(got - (T.conj() @ Dc.conj() @ T.T).real).max() > 1e-3


# ---------------------------------------------------------------------------------------- Haar sampling
def test_random_rotation_haar():
    R = random_rotation(20000, seed=7)
    assert R.shape == (20000, 3, 3) and R.dtype == np.float64
    check_rotation(R)
    mean = R.mean(axis=0)
    assert np.abs(mean).max() < 0.02, f"mean rotation not ~0: {mean}"
    # rotation angle t has density (1 - cos t) / pi on [0, pi]; CDF (t - sin t) / pi
    t = np.arccos(np.clip((np.trace(R, axis1=1, axis2=2) - 1) / 2, -1, 1))
    cdf = lambda s: (s - np.sin(s)) / np.pi  # noqa: E731
    p = stats.kstest(t, cdf).pvalue
    assert p > 1e-3, f"rotation angle not Haar-distributed: KS p = {p:.2e}"
    # the same test rejects a non-Haar sampler (uniform Euler angles): the test can fail
    a, b, c = np.random.default_rng(7).uniform(0, 2 * np.pi, (3, 20000))
    bad = angles_to_matrix(a, b, c)
    tb = np.arccos(np.clip((np.trace(bad, axis1=1, axis2=2) - 1) / 2, -1, 1))
    assert stats.kstest(tb, cdf).pvalue < 1e-3
    # the image of a fixed vector is uniform on the sphere (z-coordinate uniform on [-1, 1])
    z = R[:, 2, 0]
    assert stats.kstest(z, stats.uniform(loc=-1, scale=2).cdf).pvalue > 1e-3


def test_random_rotation_shapes_seeds_backends():
    R = random_rotation(seed=0)
    assert R.shape == (3, 3)
    assert np.array_equal(random_rotation(5, seed=1), random_rotation(5, seed=1))
    assert not np.array_equal(random_rotation(5, seed=1), random_rotation(5, seed=2))
    assert random_rotation((2, 3), seed=0).shape == (2, 3, 3, 3)
    Rt = random_rotation(5, seed=1, backend="torch", dtype="float32")
    assert isinstance(Rt, torch.Tensor) and Rt.dtype == torch.float32
    np.testing.assert_allclose(Rt.numpy(), random_rotation(5, seed=1), atol=1e-7)
    assert random_rotation(2, seed=np.random.default_rng(0)).shape == (2, 3, 3)


# ---------------------------------------------------------------------------------------- conversions
def _special_rotations():
    """Identity, tiny angles, exactly pi about axes and random axes, just below pi."""
    rng = np.random.default_rng(11)
    axes = rng.standard_normal((6, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    diag = np.array([[1, 1, 0], [0, 1, 1], [1, 1, 1]]) / np.sqrt([[2], [2], [3]])
    axes = np.concatenate([np.eye(3), -np.eye(3), axes, diag])
    angles = [0.0, 1e-300, 1e-12, 1e-8, 1e-4, 0.5, np.pi / 2, 2.0, np.pi - 1e-4, np.pi - 1e-9, np.pi]
    vecs = np.array([ax * t for ax in axes for t in angles])
    return vecs, np.array([t for _ in axes for t in angles])


def test_axis_angle_roundtrip_special_and_against_scipy():
    vecs, angles = _special_rotations()
    R = axis_angle_to_matrix(vecs)
    ref = SciRot.from_rotvec(vecs).as_matrix()
    err = np.abs(R - ref).max(axis=(1, 2))
    assert err.max() <= 4e-16 * 4, "axis_angle_to_matrix vs scipy: " + _worst(err)
    back = matrix_to_axis_angle(R)
    got_angle = np.linalg.norm(back, axis=1)
    aerr = np.abs(got_angle - angles)
    # the angle of a matrix is determined to ~eps (near 0: the matrix holds only 1 - t^2/2 to eps ...)
    assert aerr.max() <= 1e-8, "angle: " + _worst(aerr)
    # ... but back-conversion reproduces the matrix to rounding everywhere, including at pi
    err = np.abs(axis_angle_to_matrix(back) - R).max(axis=(1, 2))
    assert err.max() <= 1e-15, "R -> rotvec -> R: " + _worst(err)
    # below pi the vector itself comes back (at exactly pi, v and -v are the same rotation)
    below = angles < np.pi - 1e-3
    verr = np.abs(back[below] - vecs[below]).max(axis=1)
    assert verr.max() <= 1e-15, "rotvec -> R -> rotvec: " + _worst(verr)
    assert np.all(got_angle <= np.pi * (1 + 4e-16)), f"angle above pi: {got_angle.max()!r}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conversion_roundtrips_random(dtype):
    R = random_rotation(500, seed=12, dtype=dtype)
    tol = 10 * TOL[dtype] if dtype == "float32" else 1e-14
    q = matrix_to_quaternion(R)
    assert q.dtype == np.dtype(dtype) and np.all(q[:, 0] >= 0)
    assert np.abs(np.linalg.norm(q, axis=1) - 1).max() <= tol
    for name, back in [
        ("quaternion", quaternion_to_matrix(q)),
        ("axis-angle", axis_angle_to_matrix(matrix_to_axis_angle(R))),
        ("angles", angles_to_matrix(*matrix_to_angles(R))),
    ]:
        err = np.abs(back - R).max(axis=(1, 2))
        assert err.max() <= tol, f"{name} round trip: " + _worst(err)
    # quaternion agrees with scipy's (scalar-last) up to the sign convention
    qs = SciRot.from_matrix(R.astype(np.float64)).as_quat()[:, [3, 0, 1, 2]]
    qs *= np.where(qs[:, :1] < 0, -1, 1)
    assert np.abs(q - qs).max() <= tol


def test_quaternion_special_cases():
    vecs, _ = _special_rotations()
    R = axis_angle_to_matrix(vecs)
    q = matrix_to_quaternion(R)
    assert np.all(q[:, 0] >= 0)
    err = np.abs(quaternion_to_matrix(q) - R).max(axis=(1, 2))
    assert err.max() <= 1e-15, _worst(err)
    # exactly pi about an axis: w = 0 and the first non-zero of (x, y, z) is positive
    qpi = matrix_to_quaternion(np.diag([-1.0, 1.0, -1.0]))
    np.testing.assert_array_equal(qpi, [0.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(matrix_to_quaternion(np.diag([-1.0, -1.0, 1.0])), [0.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(matrix_to_quaternion(np.diag([1.0, -1.0, -1.0])), [0.0, 1.0, 0.0, 0.0])
    half = np.sqrt(0.5)  # pi about (1, -1, 0)/sqrt 2: the first non-zero component (x) is made positive
    q = matrix_to_quaternion(np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]))
    np.testing.assert_allclose(q, [0.0, half, -half, 0.0], atol=1e-16)
    # q and -q, and non-unit q, are the same rotation
    q = np.array([0.5, -0.1, 0.7, 0.2])
    np.testing.assert_allclose(quaternion_to_matrix(q), quaternion_to_matrix(-3 * q), atol=1e-15)


def test_euler_angles_match_e3nn(e3nn64):
    a, b, c = _angles(100, seed=20)
    ta, tb, tc = (torch.tensor(x) for x in (a, b, c))
    Rref = o3.angles_to_matrix(ta, tb, tc)
    R = angles_to_matrix(a, b, c)
    assert np.abs(R - Rref.numpy()).max() <= 1e-15
    got = matrix_to_angles(R)
    ref = o3.matrix_to_angles(Rref)
    for g, r, name in zip(got, ref, "abc"):
        d = np.angle(np.exp(1j * (g - r.numpy())))  # equal modulo 2 pi
        assert np.abs(d).max() <= 1e-12, f"{name}: " + _worst(np.abs(d))
    assert np.all((got[1] >= 0) & (got[1] <= np.pi))
    # gimbal lock: beta = 0 and beta = pi
    for beta in (0.0, np.pi):
        Rg = angles_to_matrix(0.4, beta, -1.3)
        err = np.abs(angles_to_matrix(*matrix_to_angles(Rg)) - Rg).max()
        assert err <= 1e-15, f"gimbal-lock round trip at beta={beta}: {err:.3e}"
    # scalars and broadcasting
    assert angles_to_matrix(0.1, np.zeros(4), 0.0).shape == (4, 3, 3)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_and_torch_agree(dtype):
    R = random_rotation(40, seed=30, dtype=dtype)
    Rt = torch.tensor(R)
    v = matrix_to_axis_angle(R)
    cases = [
        (matrix_to_quaternion(R), matrix_to_quaternion(Rt)),
        (v, matrix_to_axis_angle(Rt)),
        (axis_angle_to_matrix(v), axis_angle_to_matrix(torch.tensor(v))),
        (quaternion_to_matrix(matrix_to_quaternion(R)), quaternion_to_matrix(matrix_to_quaternion(Rt))),
        (np.stack(matrix_to_angles(R)), torch.stack(matrix_to_angles(Rt))),
        (wigner_D(4, R), wigner_D(4, Rt)),
    ]
    for i, (a, b) in enumerate(cases):
        assert isinstance(b, torch.Tensor) and b.dtype == getattr(torch, dtype), f"case {i}: {b.dtype}"
        assert a.dtype == np.dtype(dtype), f"case {i}: {a.dtype}"
        err = np.abs(a - b.numpy()).max()
        assert err <= 10 * TOL[dtype], f"case {i}: numpy vs torch differ by {err:.3e}"


@given(
    w=st.lists(st.floats(-1, 1, allow_nan=False), min_size=4, max_size=4).filter(
        lambda q: sum(x * x for x in q) > 1e-6
    )
)
def test_quaternion_matrix_roundtrip_property(w):
    q = np.array(w) / np.linalg.norm(w)
    R = quaternion_to_matrix(q)
    check_rotation(R, atol=1e-14)
    q2 = matrix_to_quaternion(R)
    # same rotation, hence q2 = +-q
    err = min(np.abs(q2 - q).max(), np.abs(q2 + q).max())
    assert err <= 1e-14, f"q={q} -> {q2}"


# ------------------------------------------------------------------------------------------- gradients
def test_gradcheck_through_parametrisations():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(2, 3, dtype=torch.float64, generator=g).requires_grad_()
    ang = torch.randn(2, 3, dtype=torch.float64, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: wigner_D(3, axis_angle_to_matrix(x)), (v,))
    assert torch.autograd.gradcheck(lambda x: wigner_D_from_angles(2, x[:, 0], x[:, 1], x[:, 2]), (ang,))
    assert torch.autograd.gradcheck(lambda x: matrix_to_quaternion(axis_angle_to_matrix(x)), (v,))
    assert torch.autograd.gradcheck(lambda x: matrix_to_axis_angle(axis_angle_to_matrix(x)), (v,))
    assert torch.autograd.gradcheck(lambda x: torch.stack(matrix_to_angles(axis_angle_to_matrix(x))), (v,))
    small = (1e-5 * torch.randn(2, 3, dtype=torch.float64, generator=g)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: matrix_to_axis_angle(axis_angle_to_matrix(x)), (small,))


@pytest.mark.parametrize("l", [1, 2, 3])
def test_lie_algebra_at_identity_matches_e3nn_generators(l, e3nn64):
    """d/dt D(exp(t A_k)) at t = 0 (autograd through the identity, no NaN) equals e3nn's generator X_k."""
    X = o3.so3_generators(l).numpy()
    for k in range(3):
        t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        e = torch.zeros(3, dtype=torch.float64)
        e[k] = 1.0
        jac = torch.autograd.functional.jacobian(lambda s, e=e: wigner_D(l, axis_angle_to_matrix(s * e)), t)
        assert torch.isfinite(jac).all()
        err = np.abs(jac.numpy() - X[k]).max()
        assert err <= 1e-12, f"generator {k} of l={l}: err {err:.3e}"
    Rid = torch.eye(3, dtype=torch.float64, requires_grad=True)
    matrix_to_axis_angle(Rid).sum().backward()
    assert torch.isfinite(Rid.grad).all()


# ------------------------------------------------------------------------------------------ bad inputs
ROT = np.eye(3)
BAD_CALLS = [
    (lambda: wigner_D(2, np.eye(2)), ValueError, r"R must have shape \(\.\.\., 3, 3\)"),
    (lambda: wigner_D(2, np.ones(3)), ValueError, "R must have shape"),
    (lambda: wigner_D(2, np.ones((3, 4))), ValueError, "R must have shape"),
    (lambda: wigner_D(2, 2 * np.eye(3)), ValueError, "R must be orthogonal"),
    (lambda: wigner_D(2, np.eye(3) + 1e-3), ValueError, "R must be orthogonal"),
    (lambda: wigner_D(2, np.diag([1.0, 1.0, -1.0])), ValueError, "a reflection"),
    (lambda: wigner_D(2, np.full((3, 3), np.nan)), ValueError, "R contains NaN"),
    (lambda: wigner_D(2, torch.full((3, 3), np.inf)), ValueError, "R contains NaN"),
    (lambda: wigner_D(-1, ROT), ValueError, "l must be >= 0"),
    (lambda: wigner_D(2.0, ROT), TypeError, "l must be an int"),
    (lambda: wigner_D(True, ROT), TypeError, "l must be an int"),
    (lambda: wigner_D("2", ROT), TypeError, "l must be an int"),
    (lambda: wigner_D(2, "R"), TypeError, "R must"),
    (lambda: wigner_D_from_angles(-2, 0.0, 0.0, 0.0), ValueError, "l must be >= 0"),
    (lambda: wigner_D_from_angles(1, np.nan, 0.0, 0.0), ValueError, "alpha contains NaN"),
    (lambda: angles_to_matrix(0.0, np.ones(2), np.ones(3)), ValueError, "broadcast"),
    (lambda: matrix_to_quaternion(-np.eye(3)), ValueError, "reflection"),
    (lambda: matrix_to_axis_angle(np.zeros((3, 3))), ValueError, "R must be orthogonal"),
    (lambda: matrix_to_angles(np.eye(4)), ValueError, "R must have shape"),
    (lambda: quaternion_to_matrix(np.zeros(4)), ValueError, "zero quaternion"),
    (lambda: quaternion_to_matrix(np.ones(3)), ValueError, r"q must have shape \(\.\.\., 4\)"),
    (lambda: quaternion_to_matrix(np.array([np.nan, 0, 0, 1.0])), ValueError, "q contains NaN"),
    (lambda: axis_angle_to_matrix(np.ones(4)), ValueError, "rotvec must have shape"),
    (lambda: check_rotation(np.eye(3) * 1.01, "M"), ValueError, "M must be orthogonal"),
    (lambda: random_rotation(-1), ValueError, "n must be non-negative"),
    (lambda: random_rotation(1.5), TypeError, "n must be an int"),
    (lambda: random_rotation(2, dtype="float16"), ValueError, "dtype must be"),
]


@pytest.mark.parametrize("call, exc, msg", BAD_CALLS, ids=[str(i) for i in range(len(BAD_CALLS))])
def test_bad_inputs_raise(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_check_rotation_tolerance_and_kinds():
    R = random_rotation(4, seed=40)
    assert check_rotation(R) is R
    assert check_rotation(R + 1e-9).shape == (4, 3, 3)  # within the default float64 tolerance
    with pytest.raises(ValueError, match="orthogonal"):
        check_rotation(R + 1e-9, atol=1e-12)
    R32 = torch.tensor(R, dtype=torch.float32)
    assert check_rotation(R32).dtype == torch.float32
    assert check_rotation(np.eye(3, dtype=int)).dtype == np.float64
    assert check_rotation(np.zeros((0, 3, 3))).shape == (0, 3, 3)
    with pytest.raises(ValueError, match=r"index \(2,\)"):
        bad = R.copy()
        bad[2] = -bad[2]
        check_rotation(bad)


def test_public_names():
    assert set(so3.__all__) == {
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
    }
    for name in so3.__all__:
        assert getattr(so3, name).__doc__
