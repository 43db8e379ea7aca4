"""Tests of spherequant.scalar: symmetric and min-max quantizers, LSQ, observers and code dtypes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _core_helpers import TORCH_DTYPES, as_backend, surrogate, to_numpy
from hypothesis import given
from hypothesis import strategies as st

from spherequant import scalar as S


# ==========================================================================================================
# symmetric linear quantizer
# ==========================================================================================================
@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("bits", [2, 3, 8, 9, 16, 17, 24])
def test_symmetric_codes_range_dtype_and_roundtrip(bits, backend, float_dtype, rng):
    x_np = rng.standard_normal(2000) * 3.0
    x = as_backend(x_np, backend, float_dtype)
    scale = S.symmetric_scale(x, bits)
    codes = S.quantize_symmetric(x, scale, bits)
    qmax = 2 ** (bits - 1) - 1
    expected_dtype = "int8" if bits <= 8 else "int16" if bits <= 16 else "int32"
    assert str(codes.dtype).endswith(expected_dtype), f"codes dtype {codes.dtype} for {bits} bits"
    c = to_numpy(codes).astype(np.int64)
    assert c.min() >= -qmax and c.max() <= qmax
    assert c.max() == qmax or c.min() == -qmax, "max-abs scale must use the extreme level"
    deq = S.dequantize(codes, scale)
    xs = to_numpy(x).astype(np.float64)
    s = float(to_numpy(scale))
    err = np.abs(to_numpy(deq).astype(np.float64) - xs)
    # rounding of x/s in the working dtype adds up to eps * |x / s| levels
    bound = s / 2 + 4 * np.finfo(float_dtype).eps * np.abs(xs)
    assert np.all(err <= bound), f"max excess {(err - bound).max():.3e} at x={xs[(err - bound).argmax()]}"
    fq = S.fake_quantize_symmetric(x, bits)
    np.testing.assert_allclose(
        to_numpy(fq), to_numpy(deq), rtol=0, atol=4 * np.finfo(float_dtype).eps * 3 * 5
    )


def test_symmetric_scale_per_channel_axis(rng):
    x = rng.standard_normal((4, 5, 6))
    for axis in (1, -1, 0):
        scale = S.symmetric_scale(x, 8, axis=axis)
        ax = axis % 3
        shape = [1, 1, 1]
        shape[ax] = x.shape[ax]
        assert scale.shape == tuple(shape), f"axis={axis}: scale shape {scale.shape}"
        for ch in range(x.shape[ax]):
            expected = np.abs(np.take(x, ch, axis=ax)).max() / 127
            got = np.take(scale, ch, axis=ax).item()
            assert got == pytest.approx(expected, rel=1e-15), f"axis={axis} channel {ch}"
        xt = torch.tensor(x)
        np.testing.assert_array_equal(S.symmetric_scale(xt, 8, axis=axis).numpy(), scale)
        codes = S.quantize_symmetric(x, scale, 8)
        # every channel reaches the extreme level
        assert np.all(np.abs(codes).max(axis=tuple(i for i in range(3) if i != ax)) == 127)


@pytest.mark.parametrize("percentile", [50.0, 90.0, 99.99, 100.0])
def test_symmetric_scale_percentile(percentile, rng):
    x = rng.standard_normal((37, 4)) * np.array([1.0, 2.0, 0.5, 10.0])

    def slow_percentile(values, p):  # numpy's "linear" method written out
        srt = sorted(values)
        pos = p / 100 * (len(srt) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(srt) - 1)
        return srt[lo] + (srt[hi] - srt[lo]) * (pos - lo)

    got = S.symmetric_scale(x, 6, method="percentile", percentile=percentile)
    expected = slow_percentile(np.abs(x).ravel().tolist(), percentile) / 31
    assert float(got) == pytest.approx(expected, rel=1e-12)
    per_ch = S.symmetric_scale(torch.tensor(x), 6, axis=1, method="percentile", percentile=percentile)
    for ch in range(4):
        exp_ch = slow_percentile(np.abs(x[:, ch]).tolist(), percentile) / 31
        assert float(per_ch[0, ch]) == pytest.approx(exp_ch, rel=1e-12), f"channel {ch}"


def test_symmetric_all_zero_channel_gets_positive_scale():
    x = np.zeros((3, 2))
    x[:, 1] = [1.0, -2.0, 0.5]
    scale = S.symmetric_scale(x, 4, axis=1)
    assert np.all(scale > 0)
    np.testing.assert_array_equal(S.fake_quantize_symmetric(x, 4, scale=scale)[:, 0], 0.0)


def test_fake_quantize_symmetric_clipping_mask(float_dtype):
    dt = TORCH_DTYPES[float_dtype]
    x = torch.tensor([-2.0, -0.76, -0.74, 0.0, 0.3, 0.74, 0.76, 5.0], dtype=dt, requires_grad=True)
    y = S.fake_quantize_symmetric(x, 4, scale=0.1)  # levels -0.7 .. 0.7
    expected = np.clip(np.round(x.detach().double().numpy() / 0.1), -7, 7) * 0.1
    np.testing.assert_allclose(y.detach().double().numpy(), expected, atol=1e-6)
    y.backward(torch.full_like(y, 2.0))
    # round(x / s) in [-7, 7] <=> inside; -0.74 -> -7 (inside), -0.76 -> -8 (clipped)
    np.testing.assert_array_equal(x.grad.numpy(), [0, 0, 2, 2, 2, 2, 0, 0])


# ==========================================================================================================
# min-max (asymmetric) quantizer
# ==========================================================================================================
@given(
    data=st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=40),
    bits=st.sampled_from([2, 4, 8, 12, 16]),
    backend=st.sampled_from(["numpy", "torch"]),
    float_dtype=st.sampled_from(["float32", "float64"]),
)
def test_minmax_zero_point_exact_and_roundtrip(data, bits, backend, float_dtype):
    x = as_backend(np.array(data), backend, float_dtype)
    scale, zp = S.minmax_params(x, bits)
    qmax = 2**bits - 1
    z = int(to_numpy(zp))
    assert to_numpy(zp).dtype == np.int64 and 0 <= z <= qmax
    assert float(to_numpy(scale)) > 0
    # 0 maps to the integer zero point and back to exactly 0
    zero = as_backend(np.zeros(3), backend, float_dtype)
    assert np.all(to_numpy(S.quantize_minmax(zero, scale, zp, bits)).astype(np.int64) == z)
    assert np.all(to_numpy(S.fake_quantize_minmax(zero, bits, scale=scale, zero_point=zp)) == 0)
    codes = S.quantize_minmax(x, scale, zp, bits)
    assert codes.dtype == S.code_dtype(2**bits, backend)
    c = to_numpy(codes).astype(np.int64)
    assert c.min() >= 0 and c.max() <= qmax
    deq = to_numpy(S.dequantize(codes, scale, zp)).astype(np.float64)
    xs = to_numpy(x).astype(np.float64)
    s = float(to_numpy(scale))
    eps = np.finfo(float_dtype).eps
    bound = s / 2 + 8 * eps * (np.abs(xs) + s * qmax)
    err = np.abs(deq - xs)
    assert np.all(err <= bound), f"max excess {(err - bound).max():.3e} at x={xs[(err - bound).argmax()]}"


def test_minmax_per_channel(rng):
    x = rng.standard_normal((10, 3)) + np.array([5.0, -5.0, 0.0])
    scale, zp = S.minmax_params(x, 8, axis=1)
    assert scale.shape == (1, 3) and zp.shape == (1, 3)
    for ch in range(3):
        lo, hi = min(x[:, ch].min(), 0), max(x[:, ch].max(), 0)
        assert scale[0, ch] == pytest.approx((hi - lo) / 255, rel=1e-14)
        assert zp[0, ch] == round(-lo / ((hi - lo) / 255))
    y = S.fake_quantize_minmax(x, 8, axis=1)
    assert np.abs(y - x).max() <= scale.max() / 2 + 1e-12


def test_fake_quantize_minmax_mask():
    x = torch.tensor([-1.0, 0.0, 3.0, 4.0], dtype=torch.float64, requires_grad=True)
    scale, zp = S.minmax_params(x.detach()[:3], 8)  # calibrated on [-1, 3]: 4.0 clips
    y = S.fake_quantize_minmax(x, 8, scale=scale, zero_point=zp)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 1.0, 1.0, 0.0])
    assert float(y[3].detach()) == pytest.approx(float((255 - zp) * scale))


# ==========================================================================================================
# observers (module forms)
# ==========================================================================================================
def test_symmetric_quantizer_ema_freeze_and_state_dict():
    q = S.SymmetricQuantizer(bits=8, momentum=0.25)
    q(torch.tensor([1.0, -2.0]))
    q(torch.tensor([4.0, 0.0]))
    expected = 0.75 * 2.0 + 0.25 * 4.0
    assert float(q.running_range) == pytest.approx(expected)
    q.freeze()
    q(torch.tensor([100.0]))
    assert float(q.running_range) == pytest.approx(expected), "frozen observer must not update"
    y = q(torch.tensor([100.0, 1.0]))
    assert float(y[0]) == pytest.approx(expected, rel=1e-6), "values above the range clip"
    fresh = S.SymmetricQuantizer(bits=8)
    fresh.load_state_dict(q.state_dict())
    fresh.freeze()
    assert torch.equal(fresh(torch.tensor([0.3, 9.0])), q(torch.tensor([0.3, 9.0])))
    assert "bits=8" in repr(q)


def test_symmetric_quantizer_per_channel_and_uncalibrated():
    q = S.SymmetricQuantizer(bits=4, axis=-1, momentum=1.0)
    x = torch.tensor([[1.0, -7.0], [0.6, 3.4]])
    y = q(x)
    assert q.running_range.shape == (2,)
    assert torch.allclose(q.running_range, torch.tensor([1.0, 7.0], dtype=torch.float64))
    assert torch.allclose(y, torch.tensor([[1.0, -7.0], [4 / 7, 3.0]]), atol=1e-6)
    loaded = S.SymmetricQuantizer(bits=4, axis=-1)
    loaded.load_state_dict(q.state_dict())
    assert torch.equal(loaded.running_range, q.running_range)
    with pytest.raises(RuntimeError, match="calibration"):
        S.SymmetricQuantizer(bits=4).freeze()(x)
    with pytest.raises(ValueError, match="channels"):
        q.freeze()(torch.ones(2, 3))


def test_minmax_quantizer_ema():
    q = S.MinMaxQuantizer(bits=8, momentum=0.5)
    q(torch.tensor([-1.0, 3.0]))
    q(torch.tensor([-3.0, 1.0]))
    assert float(q.running_min) == pytest.approx(-2.0) and float(q.running_max) == pytest.approx(2.0)
    q.freeze()
    y = q(torch.tensor([0.0, 10.0, -10.0]))
    scale, zp = q.params()
    assert float(y[0]) == 0.0
    assert float(y[1]) == pytest.approx(float((255 - zp) * scale), rel=1e-6)
    assert float(y[2]) == pytest.approx(float(-zp * scale), rel=1e-6)


# ==========================================================================================================
# LSQ
# ==========================================================================================================
def _lsq_reference(x: np.ndarray, s: float, qn: int, qp: int, g: float, upstream: np.ndarray):
    """Esser et al. 2020, Eq. 1-3 written out element by element (slow, float64)."""
    out = np.empty_like(x)
    dx = np.empty_like(x)
    ds = 0.0
    for i, xi in enumerate(x):
        t = xi / s
        if t <= -qn:
            out[i], dx[i], d = -qn * s, 0.0, -qn
        elif t >= qp:
            out[i], dx[i], d = qp * s, 0.0, qp
        else:
            out[i], dx[i], d = round(t) * s, 1.0, -t + round(t)
        ds += upstream[i] * d
    return out, dx * upstream, ds * g


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_lsq_step_gradient_matches_paper(bits, signed, rng):
    x = rng.standard_normal(300) * 2.0
    qn, qp = (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    s = np.abs(x).max() / (1.3 * max(qn, qp))  # some values clip at both ends
    g = 1.0 / math.sqrt(x.size * qp)
    up = rng.standard_normal(300)
    xt = torch.tensor(x, requires_grad=True)
    st_ = torch.tensor(s, requires_grad=True)
    y = S.fake_quantize_lsq(xt, st_, bits, signed=signed)  # default grad scale = 1/sqrt(N Qp)
    y.backward(torch.tensor(up))
    ref_out, ref_dx, ref_ds = _lsq_reference(x, s, qn, qp, g, up)
    np.testing.assert_allclose(y.detach().numpy(), ref_out, rtol=0, atol=1e-12)
    np.testing.assert_allclose(xt.grad.numpy(), ref_dx, rtol=0, atol=0)
    assert float(st_.grad) == pytest.approx(ref_ds, rel=1e-10, abs=1e-12)
    assert (x / s <= -qn).any() or not signed
    assert (x / s >= qp).any()


def test_lsq_module_init_and_learning():
    x = torch.tensor([0.5, -1.0, 1.5, 3.0])
    q = S.LSQQuantizer(bits=4)
    y = q(x)
    assert float(q.step.detach()) == pytest.approx(2 * 1.5 / math.sqrt(7), rel=1e-6)
    y.sum().backward()
    assert q.step.grad is not None and torch.isfinite(q.step.grad)
    state = q.state_dict()
    q2 = S.LSQQuantizer(bits=4)
    q2.load_state_dict(state)
    assert bool(q2.initialized) and torch.equal(q2.step, q.step)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lsq_step_across_zero_stays_defined(dtype):
    """An Adam update larger than the step carries it across zero (the azobenzene LSQ run: steps of 1e-5 under
    a learning rate of 1e-4). The quantizer then uses the step's magnitude: same outputs as the positive
    step, finite gradients, and an exact zero gives zeros, never NaN."""
    x = torch.tensor([0.3, -0.7, 1.1, 2.5], dtype=dtype)
    q = S.LSQQuantizer(bits=4)
    q(x)
    opt = torch.optim.Adam(q.parameters(), lr=10 * float(q.step.detach()))
    for _ in range(3):  # each update moves the step by ~lr: it ends negative
        opt.zero_grad()
        q(x).pow(2).sum().backward()
        opt.step()
    assert float(q.step.detach()) < 0, float(q.step.detach())
    y = q(x)
    mirror = S.fake_quantize_lsq(x, q.step.detach().abs(), 4, grad_scale=1.0)
    assert torch.equal(y, mirror) and torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(q.step.grad).all()
    with torch.no_grad():
        q.step.zero_()
    y0 = q(x)
    assert torch.isfinite(y0).all() and y0.abs().max() < 1e-30, y0
    assert S.learned_step(torch.tensor([0.0], dtype=dtype)).item() == torch.finfo(dtype).tiny
    with pytest.raises(TypeError, match="step"):
        S.learned_step(torch.tensor([1, 2]))


# ==========================================================================================================
# gradcheck of the scalar autograd Functions (fake quant, LSQ)
# ==========================================================================================================
# The forward passes are piecewise constant, so gradcheck runs on wrappers whose forward is the smooth
# surrogate the STE claims to differentiate and whose backward is the library's (called under autograd):
#   fake quant : x -> mask0 * x                (mask0 = clipping mask at the checked point)
#   LSQ        : (x, s) -> s' R(x / s'),  s' = g s + (1 - g) s0,  R(t) = clip(t) + (round(t0) - t0) 1[inside]
#                (R(t) - t R'(t) reproduces round(t0) - t0 inside and -Qn / Qp outside; s' carries g)
def test_gradcheck_fake_quant_functions(rng):
    x = torch.tensor(rng.uniform(-1.3, 1.3, 20), requires_grad=True)
    s = 0.1
    mask = (torch.round(x / s).abs() <= 7).double()
    fwd = surrogate(lambda t: mask * t, lambda t: S.fake_quantize_symmetric(t, 4, scale=s))
    assert torch.autograd.gradcheck(fwd, (x,))
    scale, zp = S.minmax_params(np.array([-0.5, 1.0]), 4)
    t = torch.round(x / float(scale)) + int(zp)
    mask = ((t >= 0) & (t <= 15)).double()
    fwd = surrogate(lambda t: mask * t, lambda t: S.fake_quantize_minmax(t, 4, scale=scale, zero_point=zp))
    assert torch.autograd.gradcheck(fwd, (x,))
    # the harness can fail: the symmetric backward is not the identity surrogate for clipped entries
    wrong = surrogate(lambda t: t.clone(), lambda t: S.fake_quantize_symmetric(t, 4, scale=s))
    assert not torch.autograd.gradcheck(wrong, (x,), raise_exception=False)


def test_gradcheck_lsq(rng):
    bits, qn, qp, g = 3, 4, 3, 0.37
    x = torch.tensor(rng.uniform(-2.0, 2.0, 16), requires_grad=True)
    s0 = torch.tensor(0.45, dtype=torch.float64)
    step = s0.clone().requires_grad_(True)
    t0 = x.detach() / s0
    inside = ((t0 > -qn) & (t0 < qp)).double()
    offset = (torch.round(t0) - t0) * inside

    def smooth(xx, ss):
        se = g * ss + (1 - g) * s0
        return se * (torch.clamp(xx / se, -qn, qp) + offset)

    def library(xx, ss):
        return S.fake_quantize_lsq(xx, ss, bits, grad_scale=g)

    assert torch.autograd.gradcheck(surrogate(smooth, library), (x, step))


# ==========================================================================================================
# code dtypes
# ==========================================================================================================
@pytest.mark.parametrize("k", [2, 3, 255, 256, 257, 32767, 32768, 32769, 65535, 65536, 65537])
def test_code_dtype_smallest(k):
    npd = S.code_dtype(k, "numpy")
    assert npd.kind == "u" and np.iinfo(npd).max >= k - 1
    smaller = [d for d in (np.uint8, np.uint16, np.uint32) if np.dtype(d).itemsize < npd.itemsize]
    assert all(np.iinfo(d).max < k - 1 for d in smaller), f"K={k}: {npd} is not the smallest"
    td = S.code_dtype(k, "torch")
    assert td in (torch.uint8, torch.int16, torch.int32)
    assert torch.iinfo(td).max >= k - 1
    smaller = [d for d in (torch.uint8, torch.int16, torch.int32) if d.itemsize < td.itemsize]
    assert all(torch.iinfo(d).max < k - 1 for d in smaller), f"K={k}: {td} is not the smallest"


# ==========================================================================================================
# silent wrong answers (issue 13, item 7): each case now raises or is computed correctly
# ==========================================================================================================
@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("bits", [2, 8, 16, 32])
@pytest.mark.parametrize("float_dtype", ["float32", "float64"])
def test_minmax_params_near_float_max(bits, backend, float_dtype):
    """A range near +-max float gives a finite scale equal to the exact (hi - lo) / qmax (was: inf)."""
    from fractions import Fraction

    top = float(np.finfo(float_dtype).max)
    for lo, hi in [(-top, top), (-top, 0.0), (0.0, top), (-top / 3, top)]:
        x = as_backend(np.array([lo, 0.5, hi]), backend, float_dtype)
        scale, zp = S.minmax_params(x, bits)
        s, z = float(to_numpy(scale)), int(to_numpy(zp))
        qmax = 2**bits - 1
        lo_, hi_ = float(to_numpy(x).min()), float(to_numpy(x).max())
        exact = (Fraction(hi_) - Fraction(lo_)) / qmax
        eps = float(np.finfo(float_dtype).eps)
        assert math.isfinite(s) and abs(Fraction(s) - exact) <= 2 * eps * exact, (lo, hi, s, float(exact))
        exact_z = Fraction(-lo_) / Fraction(s)
        assert 0 <= z <= qmax and abs(z - exact_z) <= Fraction(1, 2) + qmax * eps, (lo, hi, z)
        y = to_numpy(S.fake_quantize_minmax(x, bits, scale=scale, zero_point=zp)).astype(np.float64)
        assert np.all(np.isfinite(y)), (lo, hi, y)
        err = np.abs(y - to_numpy(x).astype(np.float64)).max()
        assert err <= 0.5 * s * (1 + 1e-6) + 4 * eps * top, f"fake-quant error {err:.3e} > scale/2 ({s:.3e})"


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("float_dtype", ["float32", "float64"])
def test_scales_of_subnormal_ranges_are_positive(backend, float_dtype):
    """A range of a few subnormals no longer gives scale 0 (and a zero point of -2^63)."""
    tiny = float(np.finfo(float_dtype).tiny)
    sub = float(np.finfo(float_dtype).smallest_subnormal)
    if backend == "torch" and not float(torch.tensor(sub, dtype=TORCH_DTYPES[float_dtype])) > 0:
        pytest.skip("this torch build flushes subnormals")
    x = as_backend(np.array([0.0, sub, 3 * sub]), backend, float_dtype)
    scale, zp = S.minmax_params(x, 8)
    assert float(to_numpy(scale)) == tiny and int(to_numpy(zp)) == 0
    assert float(to_numpy(S.symmetric_scale(x, 8))) == tiny
    codes = to_numpy(S.quantize_minmax(x, scale, zp))
    assert codes.tolist() == [0, 0, 0]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_32_bit_codes_clip_exactly(backend):
    """float32 cannot hold 2^31 - 1 or 2^32 - 1: clipping there used to wrap to -2^31 / 0 / 2^32."""
    x = as_backend(np.array([1e30, -1e30, 0.0]), backend, "float32")
    sym = to_numpy(S.quantize_symmetric(x, 1.0, 32)).astype(np.int64)
    assert sym.tolist() == [2**31 - 1, -(2**31 - 1), 0]
    mm = to_numpy(S.quantize_minmax(x, 1.0, 7, 32)).astype(np.int64)
    assert mm.tolist() == [2**32 - 1, 0, 7]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize(
    ("zero_point", "exc", "match"),
    [
        (3.5, ValueError, "zero_point must be integer-valued"),
        (-1, ValueError, r"zero_point must lie in \[0, 255\]"),
        (256, ValueError, r"zero_point must lie in \[0, 255\]"),
        (float("nan"), ValueError, "zero_point contains NaN"),
        (True, TypeError, "zero_point"),
        ("3", TypeError, "zero_point"),
        (1 + 2j, TypeError, "zero_point"),
    ],
)
def test_zero_point_validation(zero_point, exc, match, backend):
    x = as_backend(np.array([-1.0, 0.0, 2.0]), backend, "float64")
    with pytest.raises(exc, match=match):
        S.quantize_minmax(x, 0.1, zero_point, bits=8)
    with pytest.raises(exc, match=match):
        S.fake_quantize_minmax(x, 8, scale=0.1, zero_point=zero_point)


def test_zero_point_integer_valued_float_accepted():
    x = np.array([-1.0, 0.0, 2.0])
    assert S.quantize_minmax(x, 0.1, 10.0).tolist() == S.quantize_minmax(x, 0.1, 10).tolist() == [0, 10, 30]


# ==========================================================================================================
# bad inputs
# ==========================================================================================================
@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: S.symmetric_scale(np.ones(3), 0), ValueError, "bits"),
        (lambda: S.symmetric_scale(np.ones(3), 1), ValueError, "bits"),
        (lambda: S.symmetric_scale(np.ones(3), 33), ValueError, "bits"),
        (lambda: S.symmetric_scale(np.ones(3), 8.0), TypeError, "bits"),
        (lambda: S.symmetric_scale(np.ones(3), 8, method="mean"), ValueError, "method"),
        (
            lambda: S.symmetric_scale(np.ones(3), 8, method="percentile", percentile=0),
            ValueError,
            "percentile",
        ),
        (lambda: S.symmetric_scale(np.ones((2, 3)), 8, axis=2), ValueError, "axis"),
        (lambda: S.symmetric_scale(np.array([1.0, np.nan]), 8), ValueError, "x contains NaN"),
        (lambda: S.symmetric_scale(np.array([]), 8), ValueError, "non-empty"),
        (lambda: S.quantize_symmetric(np.ones(3), -1.0, 8), ValueError, "scale"),
        (lambda: S.quantize_symmetric(np.ones(3), np.ones(2), 8), ValueError, "scale"),
        (lambda: S.quantize_symmetric(np.ones(3), 0.1, 33), ValueError, "bits"),
        (lambda: S.fake_quantize_symmetric(torch.tensor([np.nan]), 8), ValueError, "x contains NaN"),
        (lambda: S.minmax_params(np.ones(3), 1), ValueError, "bits"),
        (lambda: S.minmax_params(np.array([np.inf]), 8), ValueError, "x contains NaN"),
        (lambda: S.fake_quantize_minmax(np.ones(3), 8, scale=0.1), ValueError, "zero_point"),
        (lambda: S.dequantize(np.ones(3, dtype=np.int64), 0.0), ValueError, "scale"),
        (lambda: S.dequantize(np.ones(3), 0.5), TypeError, "codes must be an integer"),
        (lambda: S.fake_quantize_lsq(np.ones(3), torch.tensor(1.0), 4), TypeError, "torch"),
        (lambda: S.fake_quantize_lsq(torch.ones(3), torch.tensor(-1.0), 4), ValueError, "step"),
    ],
)
def test_bad_inputs_scalar(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: S.dequantize(np.array([1.0, 2.0]), 0.5), TypeError, "codes must be an integer array"),
        (lambda: S.dequantize(torch.tensor([1.0]), 0.5), TypeError, "codes must be an integer tensor"),
        (lambda: S.dequantize(np.array([1, 2]), 0.5, zero_point=0.5), ValueError, "zero_point"),
        (lambda: S.dequantize(np.array([1, 2]), 0.5, dtype=np.int64), TypeError, "dtype"),
        (lambda: S.dequantize(torch.tensor([1]), 0.5, dtype=torch.int32), TypeError, "dtype"),
        (lambda: S.dequantize(np.array([1]), 0.5, dtype=torch.float32), TypeError, "dtype"),
        (
            lambda: S.fake_quantize_lsq(torch.ones(3), torch.tensor(0.1), 4, grad_scale=-1.0),
            ValueError,
            "grad_scale",
        ),
        (
            lambda: S.fake_quantize_lsq(torch.ones(3), torch.tensor(0.1), 4, grad_scale=float("inf")),
            ValueError,
            "grad_scale",
        ),
        (lambda: S.fake_quantize_lsq(torch.ones(3), torch.tensor(0.1), 4, signed="no"), TypeError, "signed"),
        (lambda: S.LSQQuantizer(4, grad_scale=0.0), ValueError, "grad_scale"),
        (lambda: S.LSQQuantizer(4, signed=1), TypeError, "signed"),
    ],
)
def test_silent_wrong_answers_now_raise_scalar(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ==========================================================================================================
# saturation: the quantizer without its rounding (the smooth force mode of spherequant.models.gaq)
# ==========================================================================================================
def _calibrated(kind, bits, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    calib = (torch.randn(64, generator=gen) * 2.0 + 0.5).to(dtype)
    q = {"symmetric": S.SymmetricQuantizer(bits), "minmax": S.MinMaxQuantizer(bits),
         "lsq": S.LSQQuantizer(bits)}[kind]  # fmt: skip
    q(calib)
    if kind != "lsq":
        q.freeze()
    return q


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["symmetric", "minmax", "lsq"])
@given(bits=st.integers(2, 10), seed=st.integers(0, 2**16), spread=st.floats(0.1, 30.0))
def test_saturate_is_the_quantizer_without_rounding(kind, dtype, bits, seed, spread):
    """For every x: Q(saturate(x)) == Q(x) exactly, |Q(x) - saturate(x)| <= step / 2 (plus the round-off of
    x / step), saturate is the identity inside clip_range and one of its ends outside, and its gradient is
    the clamp's indicator."""
    q = _calibrated(kind, bits, dtype, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = (torch.randn(500, generator=gen) * spread).to(dtype).requires_grad_(True)
    lo, hi = q.clip_range(dtype)
    sat = q.saturate(x)
    with torch.no_grad():
        qx = q(x.detach())
        assert torch.equal(q(sat.detach()), qx), f"{kind}: Q(saturate(x)) != Q(x)"
        step = float((hi - lo) / (2**bits - 1)) if kind != "symmetric" else float(hi) / (2 ** (bits - 1) - 1)
        err = (qx - sat).abs().double()
        bound = step / 2 * (1 + 1e-9) + 8 * torch.finfo(dtype).eps * x.detach().abs().double()
        worst = int((err - bound).argmax())
        assert bool((err <= bound).all()), (
            f"{kind}, {bits} bits: |Q(x) - saturate(x)| = {float(err[worst]):.3e} > "
            f"{float(bound[worst]):.3e} at x = {float(x[worst]):.6g}"
        )
        inside = (x >= lo) & (x <= hi)
        assert torch.equal(sat[inside], x[inside])
        assert bool(((sat == lo) | (sat == hi))[~inside].all())
    sat.sum().backward()
    assert torch.equal(x.grad, inside.to(dtype))


def test_saturate_per_channel_and_before_calibration():
    q = S.SymmetricQuantizer(bits=4, axis=-1, momentum=1.0)
    q(torch.tensor([[1.0, -7.0]]))
    out = q.saturate(torch.tensor([[3.0, -9.0], [-0.5, 6.0]]))
    assert torch.equal(out, torch.tensor([[1.0, -7.0], [-0.5, 6.0]]))
    with pytest.raises(RuntimeError, match="calibration"):
        S.SymmetricQuantizer(bits=4).saturate(torch.ones(3))
    with pytest.raises(RuntimeError, match="no step yet"):
        S.LSQQuantizer(bits=4).saturate(torch.ones(3))
    with pytest.raises(TypeError, match="torch tensor"):
        S.LSQQuantizer(bits=4).saturate(np.ones(3))


@given(
    lo=st.floats(-100, 100),
    span=st.floats(0, 100),
    width=st.floats(1e-3, 10),
    x=st.lists(st.floats(-1e4, 1e4), min_size=1, max_size=50),
)
def test_soft_clamp_properties(lo, span, width, x):
    """Within width ln 2 of the clamp, inside [lo, hi], increasing, its gradient the difference of two
    sigmoids (checked against the closed form), and the plain clamp at width 0."""
    hi = lo + span
    t = torch.tensor(sorted(x), dtype=torch.float64, requires_grad=True)
    out = S.soft_clamp(t, lo, hi, width)
    hard = torch.clamp(t.detach(), lo, hi)
    gap = (out.detach() - hard).abs()
    slack = 1e-12 * (abs(lo) + abs(hi) + t.detach().abs() + 1)
    assert bool((gap <= width * math.log(2) + slack).all()), f"worst gap {float(gap.max()):.3e}, w={width}"
    assert bool((out.detach() >= lo - slack).all() and (out.detach() <= hi + slack).all())
    assert bool((out.detach().diff() >= -slack[1:]).all()), "not increasing"
    out.sum().backward()
    want = torch.sigmoid((t.detach() - lo) / width) - torch.sigmoid((t.detach() - hi) / width)
    assert torch.allclose(t.grad, want, rtol=1e-9, atol=1e-12)
    assert torch.equal(S.soft_clamp(t.detach(), lo, hi, 0.0), hard)


@pytest.mark.parametrize("width", [0.5, 2.0])
@pytest.mark.parametrize("kind", ["symmetric", "minmax", "lsq"])
def test_saturate_with_rounded_corners_bounds_the_rounding(kind, width):
    """|Q(x) - saturate(x, width)| <= (1/2 + width ln 2) step for every x."""
    q = _calibrated(kind, 6, torch.float64, 11)
    x = torch.linspace(-30, 30, 20001, dtype=torch.float64)
    step = float(q.grid_step())
    err = (q(x) - q.saturate(x, width)).abs().detach()
    bound = (0.5 + width * math.log(2)) * step * (1 + 1e-9)
    assert float(err.max()) <= bound, (
        f"{kind}: {float(err.max()):.4g} > {bound:.4g} at x={float(x[err.argmax()])}"
    )
    with pytest.raises(ValueError, match="width"):
        q.saturate(x, -1.0)
