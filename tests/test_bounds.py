"""Tests for spherequant.bounds: Fejes Toth bound, chord/angle conversions, the propositions' bounds."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spherequant import bounds
from spherequant import codebook as cbm
from spherequant.so3 import random_rotation

_FIX = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _all_codebooks():
    books = [cbm.fibonacci(n) for n in (1, 2, 3, 4, 5, 6, 7, 12, 13, 50, 100, 400, 2000)]
    books += [cbm.icosahedral(k) for k in range(4)]
    books += [cbm.healpix(k) for k in (1, 2, 3, 4)]
    books += [cbm.tetrahedron(), cbm.octahedron(), cbm.cube(), cbm.icosahedron(), cbm.dodecahedron()]
    books += [
        cbm.random(n, seed=s) for n, s in ((1, 0), (2, 1), (3, 2), (4, 3), (6, 4), (12, 5), (30, 6), (500, 7))
    ]
    return books


def test_fejes_toth_below_covering_radius():
    for cb in _all_codebooks():
        ft = bounds.fejes_toth_covering_radius(cb.size)
        delta = cb.covering_radius()
        assert delta >= ft - 1e-12, f"{cb!r}: covering radius {delta!r} below Fejes Toth bound {ft!r}"
        assert cb.fejes_toth_ratio() == pytest.approx(delta / ft, rel=1e-15)


@settings(suppress_health_check=_FIX)
@given(n=st.integers(1, 60), seed=st.integers(0, 2**31 - 1))
def test_fejes_toth_below_covering_radius_random(n, seed):
    cb = cbm.random(n, seed=seed)
    assert cb.covering_radius() >= bounds.fejes_toth_covering_radius(n) - 1e-12, cb


def test_fejes_toth_tight_for_platonic():
    for cb in (cbm.tetrahedron(), cbm.octahedron(), cbm.icosahedron()):
        ft = bounds.fejes_toth_covering_radius(cb.size)
        assert abs(cb.covering_radius() - ft) <= 1e-12, f"{cb!r}: {cb.covering_radius()!r} vs {ft!r}"
        assert abs(cb.fejes_toth_ratio() - 1) <= 1e-12
    # the published values (degrees) and closed forms
    assert round(bounds.fejes_toth_covering_radius(4, degrees=True), 4) == 70.5288
    assert round(bounds.fejes_toth_covering_radius(6, degrees=True), 4) == 54.7356
    assert round(bounds.fejes_toth_covering_radius(12, degrees=True), 4) == 37.3774
    assert abs(bounds.fejes_toth_covering_radius(4) - math.acos(1 / 3)) <= 1e-15
    assert abs(bounds.fejes_toth_covering_radius(6) - math.acos(1 / math.sqrt(3))) <= 1e-15
    # n = 3: an equilateral triangle on a great circle (pi/2) attains it too
    assert abs(bounds.fejes_toth_covering_radius(3) - math.pi / 2) <= 1e-15
    tri = np.array([[math.cos(a), math.sin(a), 0.0] for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)])
    assert abs(cbm.Codebook(tri).covering_radius() - math.pi / 2) <= 1e-12


def test_fejes_toth_small_n_and_formula():
    assert bounds.fejes_toth_covering_radius(1) == math.pi
    assert bounds.fejes_toth_covering_radius(2) == math.pi / 2
    assert bounds.fejes_toth_covering_radius(1, degrees=True) == pytest.approx(180.0)
    # independent evaluation: arccos(cot(w) / sqrt(3)) in extended precision via mpmath-free float math,
    # where arccos is well conditioned (moderate n)
    for n in range(3, 400):
        w = n * math.pi / (6 * (n - 2))
        direct = math.acos(min(1.0, 1 / (math.tan(w) * math.sqrt(3))))
        got = bounds.fejes_toth_covering_radius(n)
        assert abs(got - direct) <= 1e-11 * max(1.0, 1 / direct), (n, got, direct)
    # decreasing in n, and approaching the asymptotic form sqrt(8 pi / (3 sqrt 3 n)) from above, O(1/n)
    vals = [bounds.fejes_toth_covering_radius(n) for n in range(3, 2000)]  # FT(2) = FT(3) = pi/2
    assert all(a > b for a, b in itertools.pairwise(vals))
    for n in (10**4, 10**6, 10**9):
        ratio = bounds.fejes_toth_covering_radius(n) / bounds.asymptotic_covering_radius(n)
        assert 1.0 < ratio < 1.0 + 1.0 / n, (n, ratio)
    assert abs(bounds.fejes_toth_covering_radius(10**9) / bounds.asymptotic_covering_radius(10**9) - 1) < 1e-8


def test_asymptotic_covering_radius_values():
    assert bounds.asymptotic_covering_radius(1) == pytest.approx(math.sqrt(8 * math.pi / (3 * math.sqrt(3))))
    assert bounds.asymptotic_covering_radius(100, degrees=True) == pytest.approx(
        math.degrees(math.sqrt(8 * math.pi / (3 * math.sqrt(3) * 100)))
    )


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_chord_angle_roundtrip(backend, float_dtype, tol, rng):
    theta = np.concatenate(
        [[0.0, 1e-8, math.pi / 3, math.pi / 2, math.pi - 1e-8, math.pi], rng.uniform(0, math.pi, 200)]
    )
    theta = theta.astype(float_dtype)
    t = torch.as_tensor(theta) if backend == "torch" else theta
    c = bounds.angle_to_chord(t)
    back = bounds.chord_to_angle(c)
    assert type(c) is type(t) and type(back) is type(t)
    assert c.dtype == t.dtype and back.dtype == t.dtype
    c_np = c.numpy() if backend == "torch" else c
    back_np = back.numpy() if backend == "torch" else back
    # independent: chord of explicit unit vectors at that angle
    th64 = theta.astype(np.float64)
    ref = np.linalg.norm(np.stack([np.cos(th64), np.sin(th64)], 1) - np.array([1.0, 0.0]), axis=1)
    err = np.abs(c_np - ref)
    assert err.max() <= 4 * tol, f"max err {err.max():.3e} at theta = {theta[err.argmax()]}"
    # roundtrip; near pi the angle is ill-conditioned in the chord (dtheta = dc / cos(theta / 2))
    err = np.abs(back_np - th64) * np.cos(th64 / 2)
    assert err.max() <= 8 * tol, f"max err {err.max():.3e} at theta = {theta[err.argmax()]}"


def test_scalars_give_floats_and_exact_values():
    assert isinstance(bounds.angle_to_chord(1.0), float)
    assert isinstance(bounds.chord_to_angle(np.float64(1.0)), float)
    assert bounds.chord_to_angle(2.0) == pytest.approx(math.pi, abs=1e-15)
    assert bounds.chord_to_angle(0.0) == 0.0
    assert bounds.angle_to_chord(math.pi) == pytest.approx(2.0, abs=1e-15)
    assert bounds.direction_error_bound(math.pi / 3) == pytest.approx(1.0, abs=1e-15)
    assert bounds.commutation_error_bound(math.pi / 3) == pytest.approx(2.0, abs=1e-15)
    assert bounds.commutation_error_bound(math.pi / 3, magnitude=2.5) == pytest.approx(5.0, abs=1e-14)
    assert bounds.mddq_error_bound(2.0, 1.5, math.pi / 3) == pytest.approx(2.5, abs=1e-14)
    # values a rounding error outside the domain are clipped, not rejected
    assert bounds.chord_to_angle(2.0 + 1e-15) == pytest.approx(math.pi)
    assert bounds.angle_to_chord(-1e-16) == 0.0


def test_torch_gradients():
    theta = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    bounds.angle_to_chord(theta).sum().backward()
    torch.testing.assert_close(theta.grad, torch.cos(theta.detach() / 2), rtol=0, atol=1e-14)
    c = torch.tensor([0.1, 1.0, 1.9], dtype=torch.float64, requires_grad=True)
    bounds.chord_to_angle(c).sum().backward()
    torch.testing.assert_close(c.grad, 1 / torch.sqrt(1 - c.detach() ** 2 / 4), rtol=1e-12, atol=0)
    r = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    bounds.mddq_error_bound(r, torch.tensor([1.5, 1.5], dtype=torch.float64), 0.5).sum().backward()
    torch.testing.assert_close(r.grad, torch.tensor([-1.0, 1.0], dtype=torch.float64) + 2 * math.sin(0.25))


def test_bounds_broadcast_and_kinds():
    r = np.array([[0.5], [1.0]])
    q = np.array([0.4, 0.6, 1.1])
    out = bounds.mddq_error_bound(r, q, 0.1)
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out, np.abs(q - r) + 2 * r * math.sin(0.05), atol=1e-15)
    t = bounds.commutation_error_bound(torch.tensor([0.1, 0.2]), np.array([1.0, 2.0], dtype=np.float32))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32


@settings(suppress_health_check=_FIX, max_examples=max(10, settings.default.max_examples // 3))
@given(
    kind=st.sampled_from(["fibonacci", "icosahedral", "healpix", "random"]),
    n=st.integers(4, 300),
    seed=st.integers(0, 2**31 - 1),
)
def test_propositions_hold_for_real_quantizers(kind, n, seed):
    """Direction, MDDQ and commutation bounds hold for actual quantization errors (and are not vacuous)."""
    cb = {
        "fibonacci": lambda: cbm.fibonacci(n),
        "icosahedral": lambda: cbm.icosahedral(n % 3),
        "healpix": lambda: cbm.healpix(1 + n % 3),
        "random": lambda: cbm.random(n, seed=seed),
    }[kind]()
    delta = cb.covering_radius()
    rng = np.random.default_rng(seed)
    u = np.concatenate([_unit(rng.normal(size=(300, 3))), cb.deepest_hole()[None]])
    q = cb.quantize(u)
    err = np.linalg.norm(u - q, axis=1)
    bound = bounds.direction_error_bound(delta)
    assert err.max() <= bound + 1e-12, f"{cb!r}: direction error {err.max():.6e} > {bound:.6e}"
    assert err.max() >= bound - 1e-9  # attained at the deepest hole
    # MDDQ with a uniform magnitude grid of step 0.25
    v = u[:300] * rng.uniform(0.01, 3.0, (300, 1))
    r = np.linalg.norm(v, axis=1)
    q_r = np.round(r / 0.25) * 0.25
    qv = q_r[:, None] * cb.quantize(v)
    e = np.linalg.norm(qv - v, axis=1)
    b = bounds.mddq_error_bound(r, q_r, delta)
    k = int(np.argmax(e - b))
    assert (e <= b + 1e-12).all(), f"{cb!r}: MDDQ error {e[k]:.6e} > bound {b[k]:.6e} at v = {v[k]}"
    # commutation error under Haar-random rotations
    R = random_rotation(seed=seed)
    ce = np.linalg.norm(cb.quantize(u @ R.T) - cb.quantize(u) @ R.T, axis=1)
    cbound = bounds.commutation_error_bound(delta)
    assert ce.max() <= cbound + 1e-12, f"{cb!r}: commutation error {ce.max():.6e} > {cbound:.6e}"
    mce = q_r * np.linalg.norm(cb.quantize(v @ R.T) - cb.quantize(v) @ R.T, axis=1)
    mb = bounds.commutation_error_bound(delta, magnitude=q_r)
    assert (mce <= mb + 1e-12).all()


_BAD = [
    (lambda: bounds.fejes_toth_covering_radius(0), ValueError, "n"),
    (lambda: bounds.fejes_toth_covering_radius(-3), ValueError, "n"),
    (lambda: bounds.fejes_toth_covering_radius(2.5), TypeError, "n"),
    (lambda: bounds.fejes_toth_covering_radius(True), TypeError, "n"),
    (lambda: bounds.fejes_toth_covering_radius("12"), TypeError, "n"),
    (lambda: bounds.asymptotic_covering_radius(0), ValueError, "n"),
    (lambda: bounds.asymptotic_covering_radius(None), TypeError, "n"),
    (lambda: bounds.chord_to_angle(-0.1), ValueError, "chord"),
    (lambda: bounds.chord_to_angle(2.1), ValueError, "chord"),
    (lambda: bounds.chord_to_angle(np.array([1.0, np.nan])), ValueError, "chord"),
    (lambda: bounds.chord_to_angle("1"), TypeError, "chord"),
    (lambda: bounds.chord_to_angle(True), TypeError, "chord"),
    (lambda: bounds.angle_to_chord(4.0), ValueError, "angle"),
    (lambda: bounds.angle_to_chord(-0.5), ValueError, "angle"),
    (lambda: bounds.angle_to_chord(torch.tensor([math.inf])), ValueError, "angle"),
    (lambda: bounds.direction_error_bound(-1.0), ValueError, "delta"),
    (lambda: bounds.direction_error_bound(None), TypeError, "delta"),
    (lambda: bounds.mddq_error_bound(-1.0, 1.0, 0.1), ValueError, "r"),
    (lambda: bounds.mddq_error_bound(1.0, np.nan, 0.1), ValueError, "q_r"),
    (lambda: bounds.mddq_error_bound(1.0, 1.0, 5.0), ValueError, "delta"),
    (lambda: bounds.commutation_error_bound(0.1, magnitude=-1.0), ValueError, "magnitude"),
    (lambda: bounds.commutation_error_bound(7.0), ValueError, "delta"),
    (lambda: bounds.commutation_error_bound(0.1, magnitude="a"), TypeError, "magnitude"),
]


@pytest.mark.parametrize("call,exc,word", _BAD, ids=[f"bad{k}" for k in range(len(_BAD))])
def test_bad_inputs(call, exc, word):
    with pytest.raises(exc, match=word):
        call()
