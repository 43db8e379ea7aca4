"""Tests for spherequant.sphere: manifold identities (property tests), accuracy, backends, gradients, errors.

Reference values are computed independently in ``np.longdouble`` (80-bit on x86, eps ~ 1e-19) with a
different formula (``2 atan2(|a - b|, |a + b|)`` for the angle, explicit cos/sin for the exponential).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from spherequant import sphere
from spherequant.sphere import angle, chord, exp_map, log_map, normalize, random_unit_vectors, to_tangent

TOL = {"float32": 1e-5, "float64": 1e-12}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny tensors: one thread avoids oversubscription stalls on a shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


LD_EPS = float(np.finfo(np.longdouble).eps)

# ---------------------------------------------------------------------------------------------- strategies
coords = st.floats(-1.0, 1.0, allow_nan=False, width=64)
raw_vectors = hnp.arrays(np.float64, st.tuples(st.integers(1, 6), st.just(3)), elements=coords)


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows normalised, rows of tiny norm replaced by e_z (a hypothesis-side helper, not under test)."""
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    x = np.where(n > 1e-3, x, np.array([0.0, 0.0, 1.0]))
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


unit_batches = raw_vectors.map(_unit)
# tangent lengths from 0 (exactly) through tiny to just below pi
lengths = st.one_of(st.just(0.0), st.floats(1e-12, 1e-3), st.floats(1e-3, np.pi - 1e-3))


def _tangent_of(u: np.ndarray, raw: np.ndarray, t: float) -> np.ndarray:
    """A tangent vector at each row of u of length t (direction from raw; independent plain numpy)."""
    w = raw - np.sum(raw * u, axis=-1, keepdims=True) * u
    n = np.linalg.norm(w, axis=-1, keepdims=True)
    # fall back to any vector orthogonal to u
    alt = np.cross(u, np.array([1.0, 0.0, 0.0]))
    alt = np.where(np.linalg.norm(alt, axis=-1, keepdims=True) > 0.1, alt, np.cross(u, [0.0, 1.0, 0.0]))
    w = np.where(n > 1e-3, w, alt)
    w = w - np.sum(w * u, axis=-1, keepdims=True) * u
    return t * w / np.linalg.norm(w, axis=-1, keepdims=True)


def _ld_angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Independent reference angle in long double: 2 atan2(|a^ - b^|, |a^ + b^|)."""
    a = np.asarray(a, dtype=np.longdouble)
    b = np.asarray(b, dtype=np.longdouble)
    a = a / np.sqrt(np.sum(a * a, axis=-1, keepdims=True))
    b = b / np.sqrt(np.sum(b * b, axis=-1, keepdims=True))
    d, s = a - b, a + b
    return 2 * np.arctan2(np.sqrt(np.sum(d * d, axis=-1)), np.sqrt(np.sum(s * s, axis=-1)))


def _ld_exp(v: np.ndarray, u: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.longdouble)
    u = np.asarray(u, dtype=np.longdouble)
    t = np.sqrt(np.sum(v * v, axis=-1, keepdims=True))
    safe = np.where(t > 0, t, 1)
    return np.cos(t) * u + np.where(t > 0, np.sin(safe) / safe, 1) * v


# ------------------------------------------------------------------------------------- property tests (S^2)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@given(u=unit_batches, raw=raw_vectors, t=lengths)
@example(
    u=_unit(np.array([[0.41760433, 0.90862898, 0.0]])), raw=np.array([[1.0, 0.0, 0.0]]), t=3.0491547146184206
)
def test_exp_lands_on_sphere_and_matches_longdouble(dtype, u, raw, t):
    n = min(len(u), len(raw))
    u, raw = u[:n], raw[:n]
    v = _tangent_of(u, raw, t)
    u_, v_ = u.astype(dtype), v.astype(dtype)
    p = exp_map(v_, u_)
    assert p.dtype == np.dtype(dtype)
    norm_err = np.abs(np.linalg.norm(p.astype(np.longdouble), axis=-1) - 1)
    bound = 2e-15 if dtype == "float64" else 1e-6
    assert norm_err.max() <= bound, f"|exp|-1 = {norm_err.max():.3e} at v={v[norm_err.argmax()]}"
    ref = _ld_exp(v_, u_)
    err = np.abs(p - ref).max(axis=-1)
    # Rounding |v| to the working precision moves t by up to ~2 eps t, and |dp/dt| = 1, so the error grows
    # with t (near t = pi the sin term amplifies it: explore profile found 4.04e-16 at t = 3.05); plus a few
    # eps from the final sum.
    eps = float(np.finfo(dtype).eps)
    t_ld = np.linalg.norm(v_.astype(np.longdouble), axis=-1)
    bound = 2 * eps * (t_ld + 2) if dtype == "float64" else 1e-6
    assert (err <= bound).all(), f"max err/bound {(err / bound).max():.3f} at v={v[(err / bound).argmax()]}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@given(u=unit_batches, p=unit_batches)
def test_log_is_tangent_and_exp_log_roundtrip(dtype, u, p):
    n = min(len(u), len(p))
    u, p = u[:n].astype(dtype), p[:n].astype(dtype)
    # keep away from the antipode, where the log is ill-conditioned (tested separately)
    keep = _ld_angle(u, p) < np.pi - 1e-2
    u, p = u[keep], p[keep]
    v = log_map(p, u)
    tang = np.abs(np.sum(v * u, axis=-1))
    assert tang.max(initial=0) <= 10 * TOL[dtype], f"<log, u> = {tang.max():.3e}"
    bound = 1e-4 if dtype == "float32" else 1e-14
    length_err = np.abs(np.linalg.norm(v, axis=-1) - _ld_angle(u, p))
    assert length_err.max(initial=0) <= bound, f"| |log| - angle | = {length_err.max():.3e}"
    back = exp_map(v, u)
    err = np.abs(back - p).max(axis=-1)
    assert err.max(initial=0) <= bound, f"max |exp(log p) - p| {err.max(initial=0):.3e}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@given(u=unit_batches, raw=raw_vectors, t=lengths)
def test_log_exp_roundtrip(dtype, u, raw, t):
    n = min(len(u), len(raw))
    u, raw = u[:n], raw[:n]
    v = _tangent_of(u, raw, t).astype(dtype)
    u = u.astype(dtype)
    back = log_map(exp_map(v, u), u)
    # conditioning of log near the antipode: error ~ eps / (pi - t)
    bound = (1e-14 if dtype == "float64" else 2e-5) * max(1.0, 1e-2 / (np.pi - t))
    err = np.abs(back - v).max(axis=-1)
    assert err.max() <= bound, f"max |log(exp v) - v| {err.max():.3e} at |v|={t}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@given(u=unit_batches, raw=raw_vectors)
def test_to_tangent_is_tangent_and_idempotent(dtype, u, raw):
    n = min(len(u), len(raw))
    u, raw = u[:n].astype(dtype), (3 * raw[:n]).astype(dtype)
    t = to_tangent(raw, u)
    dots = np.abs(np.sum(t * u, axis=-1))
    assert dots.max() <= 10 * TOL[dtype], f"<P v, u> = {dots.max():.3e} at v={raw[dots.argmax()]}"
    tt = to_tangent(t, u)
    err = np.abs(tt - t).max()
    assert err <= 10 * TOL[dtype], f"P(P v) - P v = {err:.3e}"
    # the removed part is parallel to u
    resid = np.linalg.norm(np.cross(raw - t, u), axis=-1)
    assert resid.max() <= 10 * TOL[dtype]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@given(a=raw_vectors, b=raw_vectors, scale=st.sampled_from([1e-200, 1e-3, 1.0, 1e150]))
def test_angle_symmetric_in_range_and_matches_longdouble(dtype, a, b, scale):
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    keep = (np.linalg.norm(a, axis=-1) > 1e-3) & (np.linalg.norm(b, axis=-1) > 1e-3)
    a, b = a[keep], b[keep]
    if dtype == "float32":
        scale = min(scale, 1e30) if scale > 1 else max(scale, 1e-30)
    a = (a * scale).astype(dtype)
    b = b.astype(dtype)
    t = angle(a, b)
    assert np.array_equal(t, angle(b, a)), "angle is not symmetric"
    assert np.all((t >= 0) & (t <= np.pi)), f"angle out of [0, pi]: {t}"
    err = np.abs(t - _ld_angle(a, b))
    bound = 4e-15 if dtype == "float64" else 1e-6
    assert err.max(initial=0) <= bound, f"max err {err.max():.3e} at a={a[err.argmax()]}, b={b[err.argmax()]}"
    deg = angle(a, b, degrees=True)
    np.testing.assert_allclose(deg, np.degrees(t), rtol=1e-6)


@pytest.mark.parametrize("t", [1e-12, 1e-9, 1e-6, 1e-3])
def test_angle_accurate_near_zero_and_pi(t):
    """arccos(a . b) loses all accuracy here (e.g. 0 at t = 1e-9); atan2 keeps relative accuracy."""
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([np.cos(t), np.sin(t), 0.0])
    got = float(angle(a, b))
    assert abs(got - t) <= 4e-16 * t, f"angle near 0: {got!r} vs {t!r}"
    c = np.array([-np.cos(t), np.sin(t), 0.0])
    got_pi = float(angle(a, c))
    ref = float(_ld_angle(a, c))
    assert abs(got_pi - ref) <= 4e-16, f"angle near pi: {got_pi!r} vs {ref!r}"
    assert abs((np.pi - got_pi) - t) <= 1e-15


def test_chord_equals_two_sin_half_angle(rng):
    a = random_unit_vectors(200, seed=1)
    b = random_unit_vectors(200, seed=2)
    ch = chord(a, b)
    ref = 2 * np.sin(_ld_angle(a, b) / 2)
    err = np.abs(ch - ref)
    assert err.max() <= 4e-16 * 4, f"max err {err.max():.3e} at {a[err.argmax()]}"
    assert float(chord(a[0], a[0])) == 0.0


# ------------------------------------------------------------------------------------ specific accuracy
@pytest.mark.parametrize("t", [0.0, 1e-300, 1e-12, 9.99e-4, 1.001e-3, 0.5, 3.0, np.pi - 1e-9])
def test_exp_map_taylor_branch_and_unit_norm(t):
    u = random_unit_vectors(64, seed=3)
    v = _tangent_of(u, random_unit_vectors(64, seed=4), t)
    p = exp_map(v, u)
    ref = _ld_exp(v, u)
    err = np.abs(p - ref).max()
    assert err <= 4e-16, f"exp_map err {err:.3e} at |v| = {t}"
    nerr = np.abs(np.linalg.norm(p.astype(np.longdouble), axis=-1) - 1).max()
    assert nerr <= 1e-15, f"| |exp| - 1 | = {float(nerr):.3e} at |v| = {t}"


@pytest.mark.parametrize("gap", [1e-3, 1e-6, 1e-9, 1e-12])
def test_log_map_accurate_near_antipode(gap):
    """Points pi - gap away: log has the right length and direction (relative error ~ eps / gap at worst)."""
    u = np.array([0.0, 0.0, 1.0])
    t = np.pi - gap
    p = np.array([np.sin(t), 0.0, np.cos(t)])
    v = log_map(p, u)
    # reference from the long-double angle of the *stored* p (independent formula)
    t_ref = float(_ld_angle(u, p))
    np.testing.assert_allclose(v, [t_ref, 0.0, 0.0], rtol=0, atol=1e-15)


@pytest.mark.parametrize("t", [0.0, 1e-200, 1e-10, 1e-5, 1e-3])
def test_log_map_accurate_near_zero(t):
    u = np.array([0.0, 0.0, 1.0])
    p = np.array([np.sin(t), 0.0, np.cos(t)])
    v = log_map(p, u)
    assert abs(v[0] - t) <= 4e-16 * t and v[1] == 0 and abs(v[2]) <= 1e-300 + 4e-16 * t * t, f"{v} vs {t}"


def test_log_map_antipodal_raises_and_tolerance():
    u = random_unit_vectors(5, seed=5)
    with pytest.raises(ValueError, match="antipodal"):
        log_map(-u, u)
    # a clearly non-antipodal pair is fine, but refused with a larger tolerance
    t = np.pi - 1e-6
    p = np.array([np.sin(t), 0.0, np.cos(t)])
    e3 = np.array([0.0, 0.0, 1.0])
    assert np.isfinite(log_map(p, e3)).all()
    with pytest.raises(ValueError, match="antipodal"):
        log_map(p, e3, antipodal_tol=1e-5)
    with pytest.raises(ValueError, match="antipodal"):
        log_map(torch.tensor(-u), torch.tensor(u))
    with pytest.raises(ValueError, match="antipodal_tol"):
        log_map(p, e3, antipodal_tol=-1.0)


def test_normalize_extreme_scales():
    x = np.array([[1e-320, 0.0, 0.0], [1e300, 1e300, 0.0], [3.0, 0.0, 4.0], [5e-324, 5e-324, 0.0]])
    y = normalize(x)
    r = np.sqrt(0.5)
    np.testing.assert_allclose(y, [[1, 0, 0], [r, r, 0], [0.6, 0, 0.8], [r, r, 0]], rtol=0, atol=1e-15)
    x32 = np.array([[1e-44, 0.0, 0.0], [3e38, 3e38, 0.0]], dtype=np.float32)
    y32 = normalize(x32)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, [[1, 0, 0], [r, r, 0]], atol=1e-6)


# ------------------------------------------------------------------------------------------- zero policy
def test_zero_policy_raise_default():
    x = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match=r"x has 1 row.*index \(1,\)"):
        normalize(x)
    with pytest.raises(ValueError, match="zero vector"):
        angle(x, np.ones(3))
    with pytest.raises(ValueError, match="b contains a zero"):
        angle(np.ones(3), x)
    with pytest.raises(ValueError, match="zero must be one of"):
        normalize(x, zero="nan")


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_zero_policy_zero_values_and_eps(backend):
    x = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 4.0], [1e-3, 0.0, 0.0]])
    xx = torch.tensor(x) if backend == "torch" else x
    y = normalize(xx, zero="zero")
    y = y.numpy() if backend == "torch" else y
    np.testing.assert_allclose(y, [[0, 0, 0], [0.6, 0, 0.8], [1, 0, 0]], atol=1e-15)
    y2 = normalize(xx, zero="zero", eps=1e-2)
    y2 = y2.numpy() if backend == "torch" else y2
    np.testing.assert_allclose(y2, [[0, 0, 0], [0.6, 0, 0.8], [0, 0, 0]], atol=1e-15)
    with pytest.raises(ValueError, match=r"norm <= 0\.01"):
        normalize(xx[1:], eps=1e-2)
    for bad, exc in ((-1.0, ValueError), (float("nan"), ValueError), ("a", TypeError), (True, TypeError)):
        with pytest.raises(exc, match="eps"):
            normalize(xx, eps=bad)


def test_zero_policy_gradient_is_zero_not_nan():
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0], [1e-3, 0.0, 0.0]], dtype=torch.float64)
    x.requires_grad_()
    y = normalize(x, zero="zero", eps=1e-2)
    (y * torch.arange(9.0, dtype=torch.float64).reshape(3, 3)).sum().backward()
    g = x.grad
    assert torch.isfinite(g).all(), f"non-finite gradient {g}"
    zero = torch.zeros(3, dtype=torch.float64)
    assert torch.equal(g[0], zero) and torch.equal(g[2], zero), f"gradient of zero rows: {g}"
    # the non-zero row has the analytic gradient P_u w / |x|
    u = x[1].detach() / 3.0
    w = torch.tensor([3.0, 4.0, 5.0], dtype=torch.float64)
    ref = (w - (w @ u) * u) / 3.0
    assert torch.allclose(g[1], ref, atol=1e-15), f"{g[1]} vs {ref}"


# ----------------------------------------------------------------------------------- backends, gradients
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_and_torch_agree(dtype):
    u = random_unit_vectors(50, seed=6).astype(dtype)
    p = random_unit_vectors(50, seed=7).astype(dtype)
    v = to_tangent(random_unit_vectors(50, seed=8), u.astype(np.float64)).astype(dtype)
    tu, tp, tv = (torch.tensor(a) for a in (u, p, v))
    cases = [
        (normalize(3 * p), normalize(3 * tp)),
        (angle(u, p), angle(tu, tp)),
        (chord(u, p), chord(tu, tp)),
        (to_tangent(p, u), to_tangent(tp, tu)),
        (exp_map(v, u), exp_map(tv, tu)),
        (log_map(p, u), log_map(tp, tu)),
    ]
    for i, (a, b) in enumerate(cases):
        assert isinstance(b, torch.Tensor) and b.dtype == getattr(torch, dtype)
        assert isinstance(a, np.ndarray) and a.dtype == np.dtype(dtype)
        err = np.abs(a - b.numpy()).max()
        assert err <= 10 * TOL[dtype], f"case {i}: numpy vs torch differ by {err:.3e}"


def test_mixed_numpy_torch_broadcasting():
    u = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    v = np.array([[0.1, 0.0, 0.0], [0.0, 0.2, 0.0]])
    p = exp_map(v, u)
    assert isinstance(p, torch.Tensor) and p.shape == (2, 3)
    # a tensor keeps its dtype when combined with a (float64) numpy array
    u32 = u.to(torch.float32)
    assert exp_map(v, u32).dtype == torch.float32 and angle(u32, v).dtype == torch.float32
    assert angle(u32, u.double()).dtype == torch.float64  # two tensors: the wider dtype


def _unit_t(x):
    return normalize(x)


def test_gradcheck_exp_log_normalize():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    u = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: normalize(a), (x,))
    assert torch.autograd.gradcheck(lambda a, b: exp_map(a, _unit_t(b)), (v, u))
    assert torch.autograd.gradcheck(lambda a, b: log_map(_unit_t(a), _unit_t(b)), (x, u))
    assert torch.autograd.gradcheck(lambda a, b: angle(a, b), (x, u))
    assert torch.autograd.gradcheck(lambda a, b: to_tangent(a, _unit_t(b)), (v, u))
    # tiny tangent vectors go through the Taylor branch: still correct derivatives
    small = (1e-5 * torch.randn(4, 3, dtype=torch.float64, generator=g)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: exp_map(a, _unit_t(b)), (small, u))


def test_gradients_finite_at_singular_points():
    u = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    v = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    exp_map(v, u).sum().backward()
    # d exp_u(v) / dv at v = 0 is P_u: the gradient of sum() is (1, 1, 0)
    assert torch.allclose(v.grad, torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64))
    p = u.detach().clone().requires_grad_()
    log_map(p, u).sum().backward()
    assert torch.isfinite(p.grad).all() and torch.isfinite(u.grad).all()
    assert torch.allclose(p.grad, torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)), p.grad
    a = u.detach().clone().requires_grad_()
    angle(a, a.detach()).backward()
    assert torch.isfinite(a.grad).all()
    c = torch.tensor([1.0, 1.0, 1.0], requires_grad=True)
    chord(c, c.detach()).backward()
    assert torch.isfinite(c.grad).all()


# ------------------------------------------------------------------------------------- random sampling
def test_random_unit_vectors_shapes_dtypes_reproducible():
    x = random_unit_vectors(7, seed=0)
    assert x.shape == (7, 3) and x.dtype == np.float64
    assert np.abs(np.linalg.norm(x, axis=-1) - 1).max() <= 1e-15
    assert np.array_equal(x, random_unit_vectors(7, seed=0))
    assert not np.array_equal(x, random_unit_vectors(7, seed=1))
    assert random_unit_vectors((2, 4), seed=0).shape == (2, 4, 3)
    assert random_unit_vectors(0, seed=0).shape == (0, 3)
    t = random_unit_vectors(7, seed=0, backend="torch", dtype="float32")
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), x, atol=1e-7)
    assert random_unit_vectors(3, seed=np.random.default_rng(0), dtype=np.float32).dtype == np.float32
    assert random_unit_vectors(3, dtype=torch.float64, backend="torch").dtype == torch.float64


def test_random_unit_vectors_uniform():
    """Archimedes: each coordinate of a uniform point on S^2 is uniform on [-1, 1] (KS test, fixed seed)."""
    from scipy import stats

    x = random_unit_vectors(20000, seed=123)
    for k in range(3):
        p = stats.kstest(x[:, k], stats.uniform(loc=-1, scale=2).cdf).pvalue
        assert p > 1e-3, f"coordinate {k} not uniform on [-1, 1]: KS p = {p:.2e}"
    assert np.abs(x.mean(axis=0)).max() < 0.02
    # a biased sampler (normalised uniform cube) must fail the same test: the test can fail
    cube = normalize(np.random.default_rng(123).uniform(-1, 1, (20000, 3)))
    assert stats.kstest(cube[:, 0], stats.uniform(loc=-1, scale=2).cdf).pvalue < 1e-3


# -------------------------------------------------------------------------------------------- bad input
E3 = np.array([0.0, 0.0, 1.0])

BAD_CALLS = [
    (lambda: normalize(np.ones((4, 2))), ValueError, r"x must have shape \(\.\.\., 3\)"),
    (lambda: normalize(np.array([np.nan, 0, 1])), ValueError, "x contains NaN"),
    (lambda: normalize("abc"), TypeError, "x must"),
    (lambda: normalize(np.array([1 + 1j, 0, 0])), TypeError, "x must"),
    (lambda: angle(np.ones(3), np.ones(2)), ValueError, "b must have shape"),
    (lambda: angle(np.array([np.inf, 0, 0]), np.ones(3)), ValueError, "a contains NaN"),
    (lambda: chord(np.ones(4), np.ones(3)), ValueError, "a must have shape"),
    (lambda: to_tangent(np.ones(3), np.ones(3)), ValueError, "base_point must contain unit vectors"),
    (lambda: to_tangent(np.ones(2), E3), ValueError, "vector must have shape"),
    (lambda: exp_map(np.ones(3), 2 * E3), ValueError, "base_point must contain unit vectors"),
    (lambda: exp_map(np.array([np.nan, 0, 0]), E3), ValueError, "tangent_vec contains NaN"),
    (lambda: log_map(2 * E3, E3), ValueError, "point must contain unit vectors"),
    (lambda: log_map(E3, np.zeros(3)), ValueError, "base_point must contain unit vectors"),
    (lambda: log_map(E3, np.array([0.0, np.nan, 1.0])), ValueError, "base_point contains NaN"),
    (lambda: random_unit_vectors(-1), ValueError, "n must be non-negative"),
    (lambda: random_unit_vectors(2.5), TypeError, "n must be an int"),
    (lambda: random_unit_vectors(True), TypeError, "n must be an int"),
    (lambda: random_unit_vectors(3, dtype="int32"), ValueError, "dtype must be float32 or float64"),
    (lambda: random_unit_vectors(3, backend="jax"), ValueError, "backend must be"),
    (lambda: random_unit_vectors(3, seed="x"), TypeError, "seed must be"),
    (lambda: random_unit_vectors(3, device="cpu"), ValueError, "device"),
]


@pytest.mark.parametrize("call, exc, msg", BAD_CALLS, ids=[str(i) for i in range(len(BAD_CALLS))])
def test_bad_inputs_raise(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_public_names():
    assert set(sphere.__all__) == {
        "angle",
        "chord",
        "exp_map",
        "log_map",
        "normalize",
        "random_unit_vectors",
        "to_tangent",
    }
    for name in sphere.__all__:
        assert callable(getattr(sphere, name)) and getattr(sphere, name).__doc__


# ------------------------------------------------------------------- extreme scales (issue 13, item 7)
def _mp_exp(v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Independent exp_u(v) in 300-digit arithmetic (mpmath): exact norm, exact reduction of the angle."""
    import mpmath

    with mpmath.workdps(300):
        vm = [mpmath.mpf(float(c)) for c in v]
        um = [mpmath.mpf(float(c)) for c in u]
        dot = sum(a * b for a, b in zip(vm, um))
        w = [a - dot * b for a, b in zip(vm, um)]
        t = mpmath.sqrt(sum(a * a for a in w))
        if t == 0:
            return np.asarray([float(b) for b in um])
        return np.asarray([float(mpmath.cos(t) * b + mpmath.sin(t) * a / t) for a, b in zip(w, um)])


_LENGTHS = [1e-300, 1e-40, 1e-4, 1.0, 3.0, 1e10, 1e19, 1e20, 1e38, 1e154, 1e155, 1e300, 8e307]


def _exp_np(v, u, dtype, backend):
    v_, u_ = np.asarray(v, dtype), np.asarray(u, dtype)
    if backend == "torch":
        return exp_map(torch.tensor(v_), torch.tensor(u_)).numpy()
    return exp_map(v_, u_)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exp_map_any_finite_length_matches_mpmath(dtype, backend):
    """Tangent vectors up to the largest finite norm give the exact exponential (was: NaN above ~1e154 in
    float64 / ~1e19 in float32, where |v|^2 overflowed).

    For huge lengths the exponential is ill-conditioned (a relative rounding of |v| moves the angle by
    ~eps |v| radians), so the comparison with the exact value uses axis-aligned inputs, whose projection and
    norm are exact; for general directions the result must be a unit vector on the right great circle.
    """
    top = float(np.finfo(dtype).max)
    lengths = [min(x, top / 2) for x in _LENGTHS]
    worst, where = 0.0, None
    eye = np.eye(3)
    for length in lengths:
        for i in range(3):
            for j in range(3):
                if i == j:
                    continue
                for su, sv in ((1, 1), (-1, 1), (1, -1)):
                    u, v = su * eye[i], sv * np.float64(np.asarray(length, dtype)) * eye[j]
                    p = _exp_np(v, u, dtype, backend)
                    ref = _mp_exp(v, u)
                    err = float(np.abs(p.astype(np.float64) - ref).max())
                    if not err <= worst:
                        worst, where = err, (length, i, j, su, sv)
    bound = 4e-16 if dtype == "float64" else 3e-7
    assert worst <= bound, f"worst error {worst:.3e} at (|v|, axis u, axis v, signs) = {where}"

    rng = np.random.default_rng(7)
    u = random_unit_vectors(16, seed=3)
    worst_unit = worst_plane = 0.0
    for length in lengths:
        raw = rng.standard_normal((16, 3))
        v = raw - np.sum(raw * u, axis=-1, keepdims=True) * u
        v = v / np.linalg.norm(v, axis=-1, keepdims=True) * length
        p = _exp_np(v, u, dtype, backend).astype(np.float64)
        assert np.all(np.isfinite(p)), f"non-finite result at |v| = {length:g}"
        worst_unit = max(worst_unit, float(np.abs(np.linalg.norm(p, axis=-1) - 1).max()))
        normal = np.cross(u, v / length)
        normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
        worst_plane = max(worst_plane, float(np.abs(np.sum(p * normal, axis=-1)).max()))
        if length <= 10:  # well conditioned: compare with the exact value directly
            for k in range(16):
                ref = _mp_exp(v[k].astype(dtype).astype(np.float64), u[k].astype(dtype).astype(np.float64))
                err = float(np.abs(p[k] - ref).max())
                assert err <= 8 * bound, f"error {err:.3e} at |v| = {length:g}, row {k}"
    tol = 4e-16 if dtype == "float64" else 3e-7
    assert worst_unit <= tol, f"| |exp| - 1 | = {worst_unit:.3e}"
    assert worst_plane <= 4 * tol, f"distance from the great circle {worst_plane:.3e}"


def test_exp_map_norm_overflow_raises():
    top = np.finfo(np.float64).max
    with pytest.raises(ValueError, match="tangent_vec has a row whose norm overflows"):
        exp_map(np.array([top, top, 0.0]), np.array([0.0, 0.0, 1.0]))


@pytest.mark.parametrize("scale", [1e-300, 1e-160, 1.0, 1e160, 1e300])
def test_chord_scale_safe(scale):
    """chord of non-unit vectors is their Euclidean distance at any scale (was: inf / 0 from the squares)."""
    a, b = np.array([3.0, 0.0, 0.0]) * scale, np.array([0.0, 4.0, 0.0]) * scale
    got = float(chord(a, b))
    assert got == pytest.approx(5.0 * scale, rel=4e-16)
    got_t = float(chord(torch.tensor(a), torch.tensor(b)))
    assert got_t == pytest.approx(5.0 * scale, rel=4e-16)


def test_half_precision_unit_tolerance_is_below_one():
    """float16 base points get a tolerance of 16 eps (1000 eps would accept any vector shorter than 2)."""
    with pytest.raises(ValueError, match="base_point must contain unit vectors"):
        to_tangent(np.ones(3, np.float16), np.array([0.0, 0.0, 0.5], np.float16))
    p = to_tangent(np.ones(3, np.float16), np.array([0.0, 0.0, 1.0], np.float16))
    assert p.dtype == np.float16 and np.array_equal(p, np.array([1.0, 1.0, 0.0], np.float16))
