"""Tests of spherequant.quantize: magnitude quantizers and MDDQ (Def. 3.1), with S^2 and S^(2l) codebooks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from _core_helpers import TORCH_DTYPES, as_backend, surrogate, to_numpy
from hypothesis import assume, given
from hypothesis import strategies as st

from spherequant import codebook, so3
from spherequant import hypersphere as H
from spherequant import quantize as Q
from spherequant import scalar as S
from spherequant.strategies import codebooks, rotations, vectors

CB = codebook.fibonacci(16)
_MAGS = st.one_of(
    vectors(np.float64, max_norm=1e30),  # 1 .. 1e30 (log-uniform) and plain
    vectors(np.float64, max_norm=1.0),  # 1e-30 .. 1, and exact zero
    vectors(np.float64, min_norm=0.5, max_norm=20.0),
)


def test_gradcheck_magnitude_ste(rng):
    mq = Q.MagnitudeQuantizer(4, r_max=1.0)
    r = torch.tensor(rng.uniform(0.0, 1.5, 12), requires_grad=True)
    inside = (r.detach() <= 1.0).double()
    assert torch.autograd.gradcheck(surrogate(lambda t: inside * t, mq.forward), (r,))


# ==========================================================================================================
# magnitude quantizers
# ==========================================================================================================
@pytest.mark.parametrize("kind", ["uniform", "log"])
@pytest.mark.parametrize("bits", [2, 3, 8, 9, 16])
def test_magnitude_levels(kind, bits):
    r_max = 7.5
    mq = Q.MagnitudeQuantizer(bits, r_max, kind=kind, r_min=0.01 if kind == "log" else None)
    lv = mq.levels
    assert lv.shape == (2**bits,) and mq.n_levels == 2**bits
    assert lv[0] == 0.0, "level 0 must be exactly 0"
    assert lv[-1] == r_max
    assert np.all(np.diff(lv) > 0), "levels must increase"
    if kind == "uniform":
        np.testing.assert_allclose(np.diff(lv), r_max / (2**bits - 1), rtol=1e-9)
    else:
        assert lv[1] == 0.01
        ratios = lv[2:] / lv[1:-1]
        expected = (r_max / 0.01) ** (1 / (2**bits - 2))
        np.testing.assert_allclose(ratios, expected, rtol=1e-9)


@given(
    r=st.lists(st.floats(0, 50, allow_nan=False), min_size=1, max_size=30),
    kind=st.sampled_from(["uniform", "log"]),
    bits=st.integers(2, 6),
    backend=st.sampled_from(["numpy", "torch"]),
)
def test_magnitude_encode_nearest_monotone_roundtrip(r, kind, bits, backend):
    mq = Q.MagnitudeQuantizer(bits, 10.0, kind=kind, r_min=0.05 if kind == "log" else None)
    rs = np.sort(np.array(r))
    codes = mq.encode(torch.tensor(rs) if backend == "torch" else rs)
    assert codes.dtype == S.code_dtype(2**bits, backend)
    c = to_numpy(codes).astype(np.int64)
    assert np.all(np.diff(c) >= 0), "encode must be monotone"
    lv = mq.levels
    for ri, ci in zip(rs, c):
        rc = min(ri, 10.0)
        if kind == "uniform" or rc < 0.05:  # nearest level in absolute distance
            dist = np.abs(lv - rc)
        else:  # nearest non-zero level in the log domain
            dist = np.abs(np.log(np.maximum(lv, 1e-300)) - np.log(rc))
        best = dist.min()
        assert dist[ci] <= best * (1 + 1e-12) + 1e-12, f"r={ri}: code {ci} is not a nearest level"
    # decode(encode(levels)) == levels, and the decoded values are in range
    lv_codes = mq.encode(lv)
    np.testing.assert_array_equal(lv_codes.astype(np.int64), np.arange(2**bits))
    np.testing.assert_array_equal(mq.decode(lv_codes), lv)
    dec = to_numpy(mq.decode(codes, dtype=torch.float64 if backend == "torch" else np.float64))
    assert np.all((dec >= 0) & (dec <= 10.0))


def test_magnitude_forward_ste_indicator():
    mq = Q.MagnitudeQuantizer(3, 2.0)
    r = torch.tensor([0.0, 0.1, 1.0, 2.0, 3.0], requires_grad=True)
    y = mq(r)
    assert float(y[0].detach()) == 0.0 and float(y[-1].detach()) == 2.0
    y.sum().backward()
    np.testing.assert_array_equal(r.grad.numpy(), [1, 1, 1, 1, 0])


@pytest.mark.parametrize(
    ("k", "np_dt", "torch_dt"), [(2, "uint8", torch.uint8), (257, "uint16", torch.int16)]
)
def test_mddq_encode_dtypes(k, np_dt, torch_dt):
    q = Q.MDDQ(codebook.random(k, seed=1), magnitude_bits=9, r_max=1.0)
    v = np.array([[0.3, 0.2, -0.1], [0.0, 0.0, 0.0]])
    mag, dire = q.encode(v)
    assert mag.dtype == np.uint16 and dire.dtype == np.dtype(np_dt)
    mag_t, dir_t = q.encode(torch.tensor(v))
    assert mag_t.dtype == torch.int16 and dir_t.dtype == torch_dt
    assert q.bits_per_vector == 9 + math.ceil(math.log2(k))


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: Q.MagnitudeQuantizer(0, 1.0), ValueError, "bits"),
        (lambda: Q.MagnitudeQuantizer(1, 1.0), ValueError, "bits"),
        (lambda: Q.MagnitudeQuantizer(17, 1.0), ValueError, "bits"),
        (lambda: Q.MagnitudeQuantizer(4, -1.0), ValueError, "r_max"),
        (lambda: Q.MagnitudeQuantizer(4, float("nan")), ValueError, "r_max"),
        (lambda: Q.MagnitudeQuantizer(4, 1.0, kind="cubic"), ValueError, "kind"),
        (lambda: Q.MagnitudeQuantizer(4, 1.0, kind="log", r_min=2.0), ValueError, "r_min"),
        (lambda: Q.MagnitudeQuantizer(4, 1.0, r_min=0.1), ValueError, "r_min"),
        (lambda: Q.MagnitudeQuantizer(4, 1.0).encode(np.array([-0.1])), ValueError, "non-negative"),
        (lambda: Q.MagnitudeQuantizer(4, 1.0).encode(np.array([np.nan])), ValueError, "NaN"),
        (lambda: Q.MagnitudeQuantizer(4, 1.0).decode(np.array([16])), ValueError, "codes"),
        (lambda: Q.MagnitudeQuantizer(4, 1.0).decode(np.array([1.0])), TypeError, "codes"),
        (lambda: Q.MDDQ(CB, magnitude_bits=1), ValueError, "magnitude_bits"),
        (lambda: Q.MDDQ(CB, magnitude_bits=33), ValueError, "magnitude_bits"),
        (lambda: Q.MDDQ(CB, r_max=-2.0), ValueError, "r_max"),
        (lambda: Q.MDDQ(CB, magnitude="cubic"), ValueError, "magnitude"),
        (lambda: Q.MDDQ(CB, direction_ste="euclid"), ValueError, "direction_ste"),
        (lambda: Q.MDDQ(np.eye(3)), TypeError, "codebook"),
        (lambda: Q.MDDQ(CB, r_max=1.0)(np.ones((4, 2))), ValueError, r"v must have shape \(\.\.\., 3\)"),
        (lambda: Q.MDDQ(CB, r_max=1.0)(np.array([[np.nan, 0, 0]])), ValueError, "v contains NaN"),
        (lambda: Q.MDDQ(CB, r_max=1.0)(torch.tensor([[1, 0, 0]], dtype=torch.bool)), TypeError, "v"),
        (lambda: Q.MDDQ(CB).freeze()(np.ones((1, 3))), RuntimeError, "r_max"),
        (lambda: Q.MDDQ(CB, r_max=1.0).decode(np.array([1]), np.array([16])), ValueError, "dir_idx"),
        (lambda: Q.MDDQ(CB, r_max=1.0).decode(np.array([1, 2]), np.array([1])), ValueError, "same shape"),
        (lambda: Q.mddq(np.ones((1, 3)), CB, 3.0), TypeError, "magnitude_quantizer"),
    ],
)
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@given(
    cb=codebooks(kinds=("fibonacci", "icosahedral", "random"), min_size=4, max_size=200),
    vs=st.lists(_MAGS, min_size=1, max_size=8),
    bits=st.integers(2, 10),
    kind=st.sampled_from(["uniform", "log"]),
    r_max=st.sampled_from([1e-3, 1.0, 10.0, 1e6]),
    float_dtype=st.sampled_from(["float32", "float64"]),
    backend=st.sampled_from(["numpy", "torch"]),
)
def test_mddq_error_bound(cb, vs, bits, kind, r_max, float_dtype, backend):
    """||Q(v) - v|| <= |Q_m(r) - r| + 2 r sin(delta / 2) (triangle inequality + Prop. 3.4).

    Clipped magnitudes (r > r_max, up to 1e30) are included: the bound holds with Q_m(r) = r_max, the
    clipped level. Evaluated in float64 on the float32/float64 inputs and outputs; the tolerance is a few
    ulps of the working dtype relative to r + Q_m(r).
    """
    v = np.stack(vs).astype(float_dtype)
    mq = Q.MagnitudeQuantizer(bits, r_max, kind=kind)
    x = torch.tensor(v) if backend == "torch" else v
    out = Q.mddq(x, cb, mq)
    assert type(out) is type(x) and out.dtype == x.dtype and tuple(out.shape) == v.shape
    q = to_numpy(out).astype(np.float64)
    v64 = v.astype(np.float64)
    r = np.linalg.norm(v64, axis=-1)
    m = np.linalg.norm(q, axis=-1)  # = Q_m(r) (codewords are unit)
    level_err = np.abs(mq.levels[None, :] - np.minimum(r, r_max)[:, None]).min(axis=1)
    delta = cb.covering_radius()
    err = np.linalg.norm(q - v64, axis=-1)
    bound = np.abs(m - r) + 2 * r * np.sin(delta / 2)
    eps = np.finfo(float_dtype).eps
    slack = 64 * eps * (r + m) + 1e-300
    excess = err - bound - slack
    assert np.all(excess <= 0), f"bound violated by {excess.max():.3e} at v={v64[excess.argmax()]}"
    # Q_m(r) is a level (up to the dtype's rounding of the codeword norm), the clipped one above r_max
    lv = mq.levels
    dist_to_level = np.abs(m[:, None] - lv[None, :]).min(axis=1)
    assert np.all(dist_to_level <= 8 * eps * (m + 1e-300)), f"|Q(v)| not a level: {m}"
    assert np.all(m[r > r_max * (1 + 1e-6)] >= r_max * (1 - 8 * eps)), "huge vectors must clip to r_max"
    if kind == "uniform":
        # the magnitude part is a nearest-level rounding of the clipped magnitude
        assert np.all(np.abs(m - np.minimum(r, r_max)) <= level_err + 64 * eps * (r + m))


def test_mddq_error_bound_can_fail():
    """The bound is tight enough to catch a wrong codeword: a non-nearest codeword violates it."""
    cb = codebook.icosahedron()
    delta = cb.covering_radius()
    v = np.array([0.3, -0.2, 0.93])
    v = v / np.linalg.norm(v)
    far = cb.points[np.argmin(cb.points @ v)]  # the farthest codeword
    err = np.linalg.norm(far - v)
    assert err > 2 * np.sin(delta / 2), "a wrong codeword must exceed the chordal bound"


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_mddq_forward_equals_decode_encode(backend, float_dtype, rng):
    q = Q.MDDQ(codebook.fibonacci(300), magnitude_bits=5, magnitude="log", r_max=4.0, r_min=0.01)
    v_np = rng.standard_normal((6, 7, 3)) * np.exp(rng.uniform(-6, 2, (6, 7, 1)))
    v_np[0, 0] = 0.0
    v = as_backend(v_np, backend, float_dtype)
    out = q(v)
    mag, dire = q.encode(v)
    assert tuple(mag.shape) == (6, 7) and tuple(dire.shape) == (6, 7)
    dec = q.decode(mag, dire, dtype=v.dtype)
    np.testing.assert_array_equal(to_numpy(out), to_numpy(dec))
    zero_code = to_numpy(mag) == 0
    assert zero_code[0, 0] and np.all(to_numpy(dire)[zero_code] == 0), "zero outputs encode as (0, 0)"
    assert np.all(to_numpy(out)[zero_code] == 0)
    # MDDQ forward is the functional mddq with the same quantizers
    np.testing.assert_array_equal(to_numpy(out), to_numpy(Q.mddq(v, q.codebook, q.magnitude_quantizer)))


@given(
    v=vectors(np.float64, min_norm=1e-3, max_norm=1e3, allow_zero=False),
    rot=rotations(np.float64),
    kind=st.sampled_from(["uniform", "log"]),
)
def test_mddq_magnitude_rotation_commutation(v, rot, kind):
    """Q_m(|R v|) = Q_m(|v|), and ||Q(R v) - R Q(v)|| <= Q_m(r) 4 sin(delta / 2)."""
    cb = codebook.fibonacci(200)
    q = Q.MDDQ(cb, magnitude_bits=6, magnitude=kind, r_max=100.0)
    mq = q.magnitude_quantizer
    r = np.linalg.norm(v)
    # skip draws within rounding of a decision threshold, where |R v| and |v| may round differently
    assume(np.min(np.abs(mq.thresholds - r)) > 1e-12 * r)
    rv = rot @ v
    mag, _ = q.encode(v[None])
    mag_r, _ = q.encode(rv[None])
    assert int(mag[0]) == int(mag_r[0]), f"Q_m(|Rv|) != Q_m(|v|) for v={v}"
    comm = np.linalg.norm(q(rv[None])[0] - rot @ q(v[None])[0])
    m = mq.levels[int(mag[0])]
    bound = m * 4 * np.sin(cb.covering_radius() / 2) + 1e-12 * (1 + m)
    assert comm <= bound, f"commutation error {comm:.3e} > bound {bound:.3e}"


def test_mddq_commutation_exact_for_symmetry_of_codebook(rng):
    """R in the symmetry group of the octahedron codebook: Q(R v) = R Q(v) away from Voronoi boundaries."""
    cb = codebook.octahedron()
    q = Q.MDDQ(cb, magnitude_bits=4, r_max=3.0)
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 degrees about z
    v = rng.standard_normal((200, 3))
    out_rv = q(v @ rot.T)
    np.testing.assert_allclose(out_rv, q(v) @ rot.T, atol=1e-12)


@pytest.mark.parametrize("mode", ["geometric", "plain", "none"])
def test_mddq_zero_vectors(mode, float_dtype):
    dt = TORCH_DTYPES[float_dtype]
    q = Q.MDDQ(codebook.fibonacci(50), magnitude_bits=4, r_max=1.0, direction_ste=mode)
    v = torch.tensor([[0.0, 0.0, 0.0], [1e-30, 0.0, 0.0], [0.01, 0.0, 0.0], [0.5, 0.5, 0.0]], dtype=dt)
    v.requires_grad_(True)
    out = q(v)
    assert torch.isfinite(out).all()
    assert torch.equal(out[:3], torch.zeros(3, 3, dtype=dt)), "below the smallest level the output is 0"
    out.backward(torch.ones_like(out))
    assert torch.isfinite(v.grad).all(), f"non-finite gradient {v.grad}"
    if mode != "plain":
        assert torch.equal(v.grad[0], torch.zeros(3, dtype=dt)), "zero vector must get gradient 0"


def test_mddq_calibration_from_zeros_then_data():
    q = Q.MDDQ(codebook.fibonacci(50), magnitude_bits=4)
    v0 = torch.zeros(3, 3, requires_grad=True)
    out = q(v0)
    assert torch.equal(out, torch.zeros(3, 3))
    out.sum().backward()
    assert torch.equal(v0.grad, torch.zeros(3, 3))
    q(torch.tensor([[3.0, 4.0, 0.0]]))
    q(torch.tensor([[1.0, 0.0, 0.0]]))
    assert q.r_max == pytest.approx(5.0)
    q.freeze()
    q(torch.tensor([[30.0, 0.0, 0.0]]))
    assert q.r_max == pytest.approx(5.0), "a frozen module must not recalibrate"
    q2 = Q.MDDQ(codebook.fibonacci(50), magnitude_bits=4)
    q2.load_state_dict(q.state_dict())
    assert q2.r_max == q.r_max and not q2.calibrating
    x = torch.tensor([[0.3, -2.0, 1.0]])
    assert torch.equal(q2(x), q(x))
    assert "r_max=5" in repr(q) and "bits_per_vector=10" in repr(q)
    # module dtype casts of a model must not round the float64 codewords
    x64 = torch.tensor([[0.3, -2.0, 1.0]], dtype=torch.float64)
    before = q(x64)
    q.float()
    assert torch.equal(q(x64), before)


def _mddq_grad_reference(v, g, q):
    """The MDDQ backward (docs/theory/geometric_ste.md) in float64 numpy:
    (m / r) P_u g + <c, g> 1[r <= r_max] u."""
    mq = q.magnitude_quantizer
    out = np.zeros_like(v)
    for i in range(v.shape[0]):
        r = np.linalg.norm(v[i])
        if r == 0:
            continue
        u = v[i] / r
        m = mq.levels[np.argmin(np.abs(mq.levels - min(r, mq.r_max)))]
        c = q.codebook.points[np.argmax(q.codebook.points @ u)]
        proj = np.eye(3) - np.outer(u, u)
        out[i] = (m / r) * proj @ g[i] + (c @ g[i]) * (r <= mq.r_max) * u
    return out


def test_mddq_backward_formula(rng):
    q = Q.MDDQ(codebook.fibonacci(500), magnitude_bits=6, r_max=2.0)
    v = rng.standard_normal((40, 3))
    v[0] = 0.0
    g = rng.standard_normal((40, 3))
    vt = torch.tensor(v, requires_grad=True)
    (grad,) = torch.autograd.grad(q(vt), vt, torch.tensor(g))
    expected = _mddq_grad_reference(v, g, q)
    err = np.abs(grad.numpy() - expected).max(axis=1)
    assert err.max() < 1e-12, f"max err {err.max():.3e} at v={v[err.argmax()]}"
    assert (np.linalg.norm(v, axis=1) > 2.0).any(), "some magnitudes must be clipped"
    q_plain = Q.MDDQ(q.codebook, magnitude_bits=6, r_max=2.0, direction_ste="plain")
    (grad,) = torch.autograd.grad(q_plain(vt), vt, torch.tensor(g))
    np.testing.assert_array_equal(grad.numpy(), g)


@pytest.mark.parametrize("mode", ["geometric", "none", "plain"])
def test_gradcheck_mddq(mode, rng):
    """gradcheck of MDDQ's autograd Function against its smooth surrogate.

    With m, c and the in-range flag frozen at the checked point v0 (they are locally constant), the MDDQ
    backward (docs/theory/geometric_ste.md) is the Jacobian of S(v) = 1[r0 <= r_max] c |v| + m v / |v|
    ("geometric"), of 1[r0 <= r_max] c |v| ("none"), or of S(v) = v ("plain"). The wrapper's forward is S
    and its backward the library's.
    """
    q = Q.MDDQ(codebook.fibonacci(100), magnitude_bits=5, r_max=1.5, direction_ste=mode)
    v = torch.tensor(rng.standard_normal((8, 3)), requires_grad=True)
    with torch.no_grad():
        out0 = q(v)
    m = out0.norm(dim=-1, keepdim=True)
    c = out0 / m
    inside = (v.detach().norm(dim=-1, keepdim=True) <= 1.5).double()
    assert 0 < inside.sum() < 8, "need points inside and outside the range"

    def smooth(x):
        if mode == "plain":
            return x.clone()
        r = x.norm(dim=-1, keepdim=True)
        return inside * c * r + (m * x / r if mode == "geometric" else 0)

    assert torch.autograd.gradcheck(surrogate(smooth, q), (v,))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_mddq_batch_shapes_and_empty(backend, float_dtype, rng):
    q = Q.MDDQ(codebook.fibonacci(64), magnitude_bits=4, r_max=1.0)
    for shape in [(3,), (2, 3, 4, 3), (0, 3)]:
        v = as_backend(rng.standard_normal(shape), backend, float_dtype)
        out = q(v)
        assert type(out) is type(v) and out.shape == v.shape and out.dtype == v.dtype
        mag, dire = q.encode(v)
        assert type(mag) is type(v) and type(dire) is type(v)
        assert mag.shape == v.shape[:-1] and dire.shape == v.shape[:-1]
        np.testing.assert_array_equal(to_numpy(q.decode(mag, dire, dtype=v.dtype)), to_numpy(out))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mddq_cuda_device_preserving():
    q = Q.MDDQ(codebook.fibonacci(256), magnitude_bits=6, r_max=3.0).to("cuda")
    v = torch.randn(100, 3, device="cuda", requires_grad=True)
    out = q(v)
    assert out.device == v.device
    out.sum().backward()
    assert v.grad.device == v.device and torch.isfinite(v.grad).all()
    cpu = Q.MDDQ(codebook.fibonacci(256), magnitude_bits=6, r_max=3.0)(v.detach().cpu())
    torch.testing.assert_close(out.detach().cpu(), cpu)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_mddq_degree_2_wigner_commutation_and_roundtrip(backend, float_dtype, rng):
    """l = 2: Q_m(|D(R) v|) = Q_m(|v|) (D orthogonal), forward = decode(encode(v)), shapes (..., 5)."""
    cb = H.HypersphereCodebook.random(512, dim=5, seed=3)
    q = Q.MDDQ(cb, magnitude_bits=6, r_max=4.0)
    assert q.bits_per_vector == 6 + 9
    v_np = rng.standard_normal((30, 5))
    rot = so3.random_rotation(30, seed=4)
    d = so3.wigner_D(2, rot)
    dv_np = np.einsum("nij,nj->ni", d, v_np)
    v, dv = as_backend(v_np, backend, float_dtype), as_backend(dv_np, backend, float_dtype)
    mag, _ = q.encode(v)
    mag_r, _ = q.encode(dv)
    r = np.linalg.norm(v_np, axis=1)
    near = np.min(np.abs(q.magnitude_quantizer.thresholds[None] - r[:, None]), axis=1) < 1e-5 * r
    np.testing.assert_array_equal(to_numpy(mag)[~near], to_numpy(mag_r)[~near])
    out = q(v)
    assert tuple(out.shape) == (30, 5)
    np.testing.assert_array_equal(to_numpy(out), to_numpy(q.decode(*q.encode(v), dtype=v.dtype)))
    # error bound with the actual direction error |u - c| (triangle inequality), per vector
    o = to_numpy(out).astype(np.float64)
    m = np.linalg.norm(o, axis=1)
    vv = to_numpy(v).astype(np.float64)
    rr = np.linalg.norm(vv, axis=1)
    c = cb.points[to_numpy(cb.nearest(v))]
    bound = np.abs(m - rr) + rr * np.linalg.norm(vv / rr[:, None] - c, axis=1)
    assert np.all(np.linalg.norm(o - vv, axis=1) <= bound + 1e-5 * (rr + m))
    with pytest.raises(ValueError, match=r"\(\.\.\., 5\)"):
        q(np.ones((2, 3)))


def test_mddq_degree_2_backward_formula_and_orthogonality(rng):
    cb = H.HypersphereCodebook.random(200, dim=5, seed=5)
    q = Q.MDDQ(cb, magnitude_bits=6, r_max=2.5)
    v = rng.standard_normal((25, 5))
    v[0] = 0.0
    g = rng.standard_normal((25, 5))
    vt = torch.tensor(v, requires_grad=True)
    (grad,) = torch.autograd.grad(q(vt), vt, torch.tensor(g))
    q_none = Q.MDDQ(cb, magnitude_bits=6, r_max=2.5, direction_ste="none")
    (grad_none,) = torch.autograd.grad(q_none(vt), vt, torch.tensor(g))
    mq = q.magnitude_quantizer
    for i in range(25):
        r = np.linalg.norm(v[i])
        if r == 0:
            assert np.all(grad[i].numpy() == 0)
            continue
        u = v[i] / r
        m = mq.levels[np.argmin(np.abs(mq.levels - min(r, mq.r_max)))]
        c = cb.points[np.argmax(cb.points @ u)]
        direction = (m / r) * (np.eye(5) - np.outer(u, u)) @ g[i]
        expected = direction + (c @ g[i]) * (r <= mq.r_max) * u
        np.testing.assert_allclose(grad[i].numpy(), expected, rtol=0, atol=1e-12)
        diff = (grad[i] - grad_none[i]).numpy()
        assert abs(diff @ v[i]) <= 1e-12 * (m / r) * np.linalg.norm(g[i]) * r, f"Prop III.1 fails at {v[i]}"


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: Q.MagnitudeQuantizer(4, 1.0).decode(np.array([3]), dtype=np.int64), TypeError, "dtype"),
        (lambda: Q.MagnitudeQuantizer(4, 1.0).decode(np.array([3]), dtype=bool), TypeError, "dtype"),
        (lambda: Q.MagnitudeQuantizer(4, 1.0).decode(np.array([3]), dtype="complex128"), TypeError, "dtype"),
        (lambda: Q.MDDQ(CB, r_max=1.0).decode(np.array([3]), np.array([2]), np.int64), TypeError, "dtype"),
        (
            lambda: Q.MDDQ(CB, r_max=1.0).decode(torch.tensor([3]), torch.tensor([2]), torch.int64),
            TypeError,
            "dtype",
        ),
    ],
)
def test_silent_wrong_answers_now_raise(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_decode_float32_dtype_is_exact_cast():
    """The dtype argument still works for floating dtypes: the float64 result rounded once."""
    q = Q.MDDQ(CB, magnitude_bits=4, r_max=2.0)
    mag, dire = np.array([3, 15, 0]), np.array([5, 0, 0])
    ref = q.decode(mag, dire)
    got = q.decode(mag, dire, np.float32)
    assert got.dtype == np.float32
    assert np.abs(got - ref).max() <= 2.0 * np.finfo(np.float32).eps


def test_bits_per_vector_is_the_smallest_index_width():
    """ceil(log2 K) direction bits: the smallest b with 2^b >= K, checked by counting up from 0."""
    for k in [*range(1, 70), 642, 1023, 1024, 1025, 2562, 10**6]:
        b = 0
        while 2**b < k:
            b += 1
        for mb in (0, 4, 9):
            assert Q.bits_per_vector(mb, k) == mb + b, (mb, k)
    with pytest.raises(ValueError, match="num_codewords"):
        Q.bits_per_vector(4, 0)
    with pytest.raises(TypeError, match="magnitude_bits"):
        Q.bits_per_vector(4.0, 12)


# ==========================================================================================================
# names that moved out of spherequant.quantize keep working, with a DeprecationWarning
# ==========================================================================================================
@pytest.mark.parametrize(
    ("name", "module"),
    [
        # learned_step and soft_clamp are newer than the move
        *[(n, "scalar") for n in S.__all__ if n not in ("learned_step", "soft_clamp")],
        ("HypersphereCodebook", "hypersphere"),
        ("compare_vector_quantizers", "comparison"),
    ],
)
def test_moved_names_warn_and_resolve(name, module):
    import importlib

    target = importlib.import_module(f"spherequant.{module}")
    with pytest.warns(
        DeprecationWarning, match=rf"spherequant\.quantize\.{name} moved to spherequant\.{module}"
    ):
        old = getattr(Q, name)
    assert old is getattr(target, name)
    assert name in dir(Q) and name not in Q.__all__


def test_current_names_do_not_warn_and_unknown_names_raise():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in Q.__all__:
            getattr(Q, name)
        from spherequant.quantize import MDDQ  # noqa: F401
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        Q.no_such_name  # noqa: B018


LEVEL_CASES = [
    dict(bits=3, r_max=2.0),
    dict(bits=4, r_max=5.0, kind="log", r_min=0.01),
    dict(bits=8, r_max=1.0),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kwargs", LEVEL_CASES)
def test_level_tensors_bucketize_is_encode(dtype, kwargs):
    """The public tables the integer inference uses: bucketizing by the thresholds is exactly ``encode``."""
    mq = Q.MagnitudeQuantizer(**kwargs)
    levels, thresholds = mq.level_tensors(torch.zeros(1, dtype=dtype))
    assert levels.dtype == dtype and thresholds.dtype == dtype
    assert levels.shape == (mq.n_levels,) and thresholds.shape == (mq.n_levels - 1,)
    g = torch.Generator().manual_seed(0)
    r = torch.cat([torch.rand(2000, generator=g, dtype=dtype) * 1.2 * kwargs["r_max"], thresholds, levels])
    codes = torch.bucketize(r, thresholds, right=True)
    expected = torch.as_tensor(mq.encode(r)).long()
    bad = (codes != expected).nonzero().flatten()
    assert bad.numel() == 0, f"{bad.numel()} mismatches, first r={r[bad[0]].item()!r}"
    for wrong in (np.zeros(1), torch.zeros(1, dtype=torch.int64)):
        with pytest.raises(TypeError, match="like"):
            mq.level_tensors(wrong)


# ==========================================================================================================
# clip_magnitude: MDDQ without its rounding (the smooth force mode's saturation of vector features)
# ==========================================================================================================
@given(v=vectors(np.float64, max_norm=1e6), r_max=st.floats(1e-3, 1e3), rot=rotations())
def test_clip_magnitude_properties(v, r_max, rot):
    """Identity inside the ball, |out| = r_max outside with the direction kept, commutes with rotations,
    idempotent; numpy and torch agree."""
    out = Q.clip_magnitude(v, r_max)
    r = float(np.linalg.norm(v))
    if r <= r_max:
        assert np.array_equal(out, v)
    else:
        assert abs(np.linalg.norm(out) - r_max) <= 1e-12 * r_max, (np.linalg.norm(out), r_max)
        assert np.allclose(out / r_max, v / r, rtol=0, atol=1e-12)
    rotated = Q.clip_magnitude(v @ rot.T, r_max)
    err = float(np.abs(rotated - out @ rot.T).max())
    assert err <= 1e-12 * max(min(r, r_max), 1e-300) + 1e-300, f"rotation: worst {err:.3e} at |v| = {r:.3e}"
    assert np.allclose(Q.clip_magnitude(out, r_max), out, rtol=1e-15, atol=0)
    assert np.allclose(Q.clip_magnitude(torch.tensor(v), r_max).numpy(), out, rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clip_magnitude_commutes_with_mddq_and_bounds_its_error(dtype):
    """mddq(clip_magnitude(v)) == mddq(v), and |mddq(v) - clip_magnitude(v)| <= half a magnitude step plus
    the chord of the codebook's covering radius at |clip(v)| <= r_max (Prop. 3.4's bound, rounding only)."""
    cb = codebook.fibonacci(64)
    q = Q.MDDQ(cb, magnitude_bits=6, r_max=2.0)
    gen = torch.Generator().manual_seed(3)
    v = (torch.randn(4000, 3, generator=gen) * torch.rand(4000, 1, generator=gen) * 4.0).to(dtype)
    sat = q.saturate(v)
    assert torch.equal(q(sat), q(v))
    delta = cb.covering_radius()
    r_sat = torch.linalg.vector_norm(sat.double(), dim=-1)
    bound = 2.0 / 63 / 2 + r_sat * 2 * math.sin(delta / 2) + 1e-5
    err = torch.linalg.vector_norm((q(v) - sat).double(), dim=-1)
    worst = int((err - bound).argmax())
    assert bool((err <= bound).all()), f"error {float(err[worst]):.4g} > bound {float(bound[worst]):.4g}"


def test_clip_magnitude_gradient_is_the_exact_derivative():
    """Autograd through clip_magnitude (first and second order, also at v = 0) against finite differences."""
    gen = torch.Generator().manual_seed(5)
    v = torch.randn(40, 3, generator=gen, dtype=torch.float64) * 1.5
    v[0] = 0.0
    assert torch.autograd.gradcheck(lambda t: Q.clip_magnitude(t, 1.0), (v.requires_grad_(True),))
    assert torch.autograd.gradgradcheck(lambda t: Q.clip_magnitude(t, 1.0), (v,))
    g = torch.autograd.grad(Q.clip_magnitude(v, 1.0).sum(), v, create_graph=True)[0]
    assert torch.isfinite(torch.autograd.grad(g.sum(), v)[0]).all()


def test_clip_magnitude_bad_input():
    with pytest.raises(ValueError, match="r_max"):
        Q.clip_magnitude(np.ones(3), 0.0)
    with pytest.raises(ValueError, match="v"):
        Q.clip_magnitude(np.array([np.nan, 0.0, 0.0]), 1.0)
    with pytest.raises(ValueError, match="scalar"):
        Q.clip_magnitude(np.float64(2.0), 1.0)
    with pytest.raises(RuntimeError, match="no magnitude range"):
        Q.MDDQ(CB).saturate(torch.ones(2, 3))


@pytest.mark.parametrize("width", [0.05, 0.5])
def test_clip_magnitude_with_rounded_corner(width):
    """Smooth clip: magnitude increasing in r, within width ln 2 of min(r, r_max), exact at the origin,
    rotation-commuting, numpy = torch, and autograd (first and second order) is the exact derivative."""
    r = np.linspace(0.0, 6.0, 6001)
    v = np.stack([r, np.zeros_like(r), np.zeros_like(r)], axis=1)
    out = np.linalg.norm(Q.clip_magnitude(v, 2.0, width), axis=1)
    assert np.all(np.diff(out) >= -1e-15) and np.all(np.diff(out[r < 2.0]) > 0)  # (round-off at the plateau)
    assert np.max(np.abs(out - np.minimum(r, 2.0))) <= width * math.log(2) + 1e-12
    assert out[0] == 0.0
    rot = so3.random_rotation(seed=1)
    w = np.random.default_rng(2).standard_normal((200, 3)) * 2
    assert np.allclose(Q.clip_magnitude(w @ rot.T, 2.0, width), Q.clip_magnitude(w, 2.0, width) @ rot.T,
                       rtol=0, atol=1e-13)  # fmt: skip
    t = torch.tensor(w[:40], requires_grad=True)
    assert np.allclose(Q.clip_magnitude(t, 2.0, width).detach().numpy(), Q.clip_magnitude(w[:40], 2.0, width),
                       rtol=1e-14, atol=1e-15)  # fmt: skip
    assert torch.autograd.gradcheck(lambda a: Q.clip_magnitude(a, 2.0, width), (t,))
    assert torch.autograd.gradgradcheck(lambda a: Q.clip_magnitude(a, 2.0, width), (t,))
    with pytest.raises(ValueError, match="width"):
        Q.clip_magnitude(w, 2.0, -0.1)
