"""Tests of spherequant.irreps: quantization of e3nn features by their Irreps.

The bounds enforced are those of proofs/mddq_error_bound.md
(``|Q(v) - v| <= |Q_m(r) - r| + 2 r sin(delta/2)``), proofs/commutation_bound.md
(``|Q(R v) - R Q(v)| <= Q_m(r) 4 sin(delta/2)``) and proofs/symmetry_exactness.md
(``Q(g v) = g Q(v)`` for ``g C = C``, off the Voronoi boundaries), applied block by block. Rotations of
features are built here from :func:`spherequant.so3.wigner_D` (``D^0 = 1``, ``D^1 = R``), not from the code
under test; norms are computed scale-safely (inputs reach 1e+-300).
"""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch
from e3nn import nn as enn
from e3nn import o3
from hypothesis import given
from hypothesis import strategies as st

import spherequant as sq
from spherequant import codebook, so3
from spherequant import irreps as qi
from spherequant import quantize as Q
from spherequant._backend import safe_norm
from spherequant.hypersphere import HypersphereCodebook
from spherequant.strategies import codebooks, rotations
from spherequant.symmetry import rotation_group

DTYPES = {"float32": torch.float32, "float64": torch.float64}
L01 = ["0e", "0o", "1o", "1e"]


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float64)


def _blocks(irreps: o3.Irreps, x: np.ndarray):
    """(l, p, (..., mul, 2l+1) view) for every block of x (numpy, last axis irreps.dim)."""
    out = []
    for (mul, ir), sl in zip(irreps, irreps.slices()):
        if mul:
            out.append((ir.l, ir.p, x[..., sl].reshape(*x.shape[:-1], mul, 2 * ir.l + 1)))
    return out


def _rotate(irreps: o3.Irreps, x: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """D(R) x, block by block with so3.wigner_D (float64)."""
    out = np.empty_like(x, dtype=np.float64)
    for (mul, ir), sl in zip(irreps, irreps.slices()):
        if not mul:
            continue
        d = so3.wigner_D(ir.l, rot) if ir.l else np.ones((1, 1))
        blk = x[..., sl].reshape(*x.shape[:-1], mul, 2 * ir.l + 1)
        out[..., sl] = (blk @ np.asarray(d).T).reshape(*x.shape[:-1], -1)
    return out


def _parity(irreps: o3.Irreps, x: np.ndarray) -> np.ndarray:
    """The inversion -I acting on features: block of parity p times p."""
    out = np.array(x, dtype=np.float64)
    for (_, ir), sl in zip(irreps, irreps.slices()):
        out[..., sl] *= ir.p
    return out


# ==========================================================================================================
# e3nn's l = 1 basis
# ==========================================================================================================
def test_e3nn_l1_basis_is_cartesian():
    """Pin e3nn 0.6: D^1(R) = R for 1o and 1e, Y^1 ordered (x, y, z), and the inversion's parity signs."""
    assert np.array_equal(qi.l1_change_of_basis(), np.eye(3))
    rot = torch.tensor(so3.random_rotation(5, seed=1))
    for ir in ("1o", "1e"):
        d = o3.Irrep(ir).D_from_matrix(rot)
        err = float((d - rot).abs().max())
        assert err < 1e-5, f"e3nn {ir} D_from_matrix differs from R by {err:.2e}"
    for axis in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[axis] = 1.0
        y = o3.spherical_harmonics(1, e, normalize=True, normalization="component")
        assert torch.allclose(y, math.sqrt(3) * e), f"Y^1 of e_{axis} is {y.tolist()}"
    inv = -torch.eye(3, dtype=torch.float64)
    assert torch.equal(o3.Irrep("1o").D_from_matrix(inv), inv)
    assert torch.equal(o3.Irrep("1e").D_from_matrix(inv), torch.eye(3, dtype=torch.float64))


def test_l1_basis_of_a_permuted_convention():
    """An e3nn-like (y, z, x) basis is found as the permutation P with D(R) = P R P^T; others are refused."""
    perm = np.zeros((3, 3))
    perm[[0, 1, 2], [1, 2, 0]] = 1.0  # x_e3nn = (y, z, x) = P v
    d_yzx = lambda r: torch.tensor(perm) @ r @ torch.tensor(perm.T)  # noqa: E731
    p = qi.l1_change_of_basis(d_yzx)
    assert np.array_equal(p, perm)
    mixed = so3.random_rotation(seed=3)  # a generic orthogonal change of basis is not a signed permutation
    with pytest.raises(ValueError, match="signed permutation"):
        qi.l1_change_of_basis(lambda r: torch.tensor(mixed) @ r @ torch.tensor(mixed.T))


def test_vector_blocks_are_quantized_as_cartesian_vectors(monkeypatch, rng):
    """With a permuted e3nn basis, MDDQ must act on v = P^T x: Q_irreps(P v) = P Q_mddq(v)."""
    perm = np.zeros((3, 3))
    perm[[0, 1, 2], [1, 2, 0]] = 1.0
    monkeypatch.setattr(qi, "_e3nn_l1_basis", lambda: perm)
    cb = codebook.fibonacci(50)  # no permutation symmetry: skipping the conversion would change the output
    q = qi.IrrepsQuantizer("4x1o", {"vector_codebook": cb, "magnitude_bits": 5})
    v = rng.standard_normal((30, 4, 3))
    x = torch.tensor(v @ perm.T).reshape(30, 12)
    y = _np(q(x)).reshape(30, 4, 3)
    ref = Q.MDDQ(cb, magnitude_bits=5, r_max=float(np.linalg.norm(v, axis=-1).max()))(v)
    np.testing.assert_allclose(y, ref @ perm.T, rtol=0, atol=1e-12)
    # quantizing the e3nn components as if they were (x, y, z) would give another answer
    naive = Q.MDDQ(cb, magnitude_bits=5, r_max=float(np.linalg.norm(v, axis=-1).max()))(v @ perm.T)
    assert np.abs(naive - ref @ perm.T).max() > 0.01


# ==========================================================================================================
# l <= 1: error and commutation bounds (property test)
# ==========================================================================================================
@st.composite
def _l01_case(draw):
    blocks = draw(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(L01)), min_size=1, max_size=5))
    if sum(m for m, _ in blocks) == 0:
        blocks.append((1, "1o"))
    irreps = o3.Irreps([(m, o3.Irrep(ir)) for m, ir in blocks])
    float_dtype = draw(st.sampled_from(["float32", "float64"]))
    top = 300 if float_dtype == "float64" else 30
    exponent = draw(st.integers(-top, top))
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(1, 5))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, irreps.dim)) * np.exp(rng.uniform(-2, 2, (n, irreps.dim)))
    x[rng.random((n, irreps.dim)) < 0.1] = 0.0  # some exact zeros
    return irreps, float_dtype, x * 10.0**exponent


@given(
    case=_l01_case(),
    cb=codebooks(kinds=("fibonacci", "icosahedral", "random", "healpix"), min_size=4, max_size=200),
    rot=rotations(np.float64),
    bits=st.tuples(st.integers(2, 10), st.integers(2, 10)),
)
def test_l01_error_and_commutation_bounds(case, cb, rot, bits):
    """Every l <= 1 irreps: scalars |Q(x) - x| <= s/2, vectors the MDDQ error bound; Q commutes with D(R)
    exactly on scalars and within |m' - m| + m 4 sin(delta/2) on vectors (m' = m off magnitude thresholds)."""
    irreps, float_dtype, x64 = case
    dt = DTYPES[float_dtype]
    sbits, mbits = bits
    q = qi.IrrepsQuantizer(irreps, {"vector_codebook": cb, "magnitude_bits": mbits, "scalar_bits": sbits})
    x = torch.tensor(x64, dtype=dt)
    rx = torch.tensor(_rotate(irreps, _np(x), rot), dtype=dt)
    q(torch.cat([x, rx]))  # calibrate on x and R x (so that neither is clipped), then freeze
    q.freeze()
    y, ry = _np(q(x)), _np(q(rx))
    assert q(x).dtype == dt and q(x).shape == x.shape
    xs, rxs = _np(x), _np(rx)
    eps = float(np.finfo(float_dtype).eps)
    tiny = float(np.finfo(float_dtype).tiny)
    delta = cb.covering_radius()
    calib = np.concatenate([xs, rxs])
    d_rot = _rotate(irreps, y, rot)  # R Q(x)
    views = [[b[2] for b in _blocks(irreps, a)] for a in (xs, y, ry, d_rot, calib)]
    for (l, _, _), xb, yb, ryb, dyb, cb_ in zip(_blocks(irreps, xs), *views):
        if l == 0:
            amax = float(np.abs(cb_).max())  # the observed range; an all-zero block gets range 1
            s = (amax if amax > 0 else 1.0) / (2 ** (sbits - 1) - 1)
            err = np.abs(yb - xb)
            worst = float((err - s / 2 - 4 * eps * np.abs(xb)).max())
            assert worst <= 2 * eps * s + tiny, f"scalar error exceeds s/2 by {worst:.3e} (s={s:.3e})"
            np.testing.assert_array_equal(ryb, yb)  # scalars are invariant: Q(D x) = Q(x) = D Q(x)
            continue
        r = safe_norm(xb, axis=-1)
        m = safe_norm(yb, axis=-1)
        r_max = float(safe_norm(cb_, axis=-1).max())
        err = safe_norm(yb - xb, axis=-1)
        bound = np.abs(m - r) + 2 * r * math.sin(delta / 2)
        slack = 64 * eps * (r + m) + tiny
        excess = err - bound - slack
        k = np.unravel_index(np.argmax(excess), excess.shape)
        assert excess.max() <= 0, f"MDDQ bound exceeded by {excess.max():.3e} at v={xb[k]}, r_max={r_max:.3e}"
        if r_max > 0:  # uniform magnitude levels: |Q_m(r) - r| <= half a step (no clipping: r <= r_max)
            step = r_max / (2**mbits - 1)
            assert np.all(np.abs(m - r) <= step / 2 + slack + 2 * eps * r_max), (
                "magnitude off the nearest level"
            )
        # commutation
        m_r = safe_norm(ryb, axis=-1)
        comm = safe_norm(ryb - dyb, axis=-1)
        mq = Q.MagnitudeQuantizer(mbits, r_max) if r_max > 0 else None
        if mq is not None:
            near = np.min(np.abs(mq.thresholds[None, None, :] - r[..., None]), axis=-1) <= 64 * eps * r
            same = np.isclose(m_r, m, rtol=16 * eps, atol=tiny)
            assert np.all(same | near), "Q_m(|R v|) != Q_m(|v|) away from a magnitude threshold"
        cbound = np.abs(m_r - m) + np.minimum(m, m_r) * 4 * math.sin(delta / 2) + 64 * eps * (m + m_r) + tiny
        assert np.all(comm <= cbound), f"commutation error {comm.max():.3e} above its bound"


@given(
    ls=st.lists(
        st.tuples(st.integers(1, 3), st.integers(2, 4), st.sampled_from([1, -1])), min_size=1, max_size=3
    ),
    float_dtype=st.sampled_from(["float32", "float64"]),
    exponent=st.integers(-300, 300),
    seed=st.integers(0, 2**32 - 1),
    rot=rotations(np.float64),
    bits=st.integers(2, 12),
)
def test_higher_degree_per_component_bounds(ls, float_dtype, exponent, seed, rot, bits):
    """l >= 2 per component, calibrated on x only: D(R) x is never clipped (range = largest norm), and
    |Q(v) - v| <= sqrt(2l+1) s/2, |Q(D v) - D Q(v)| <= sqrt(2l+1) s with s = r_max / (2^(b-1) - 1)."""
    irreps = o3.Irreps([(mul, (l, p)) for mul, l, p in ls])
    dt = DTYPES[float_dtype]
    top = 300 if float_dtype == "float64" else 30
    rng = np.random.default_rng(seed)
    x = torch.tensor(rng.standard_normal((4, irreps.dim)) * 10.0 ** max(-top, min(top, exponent)), dtype=dt)
    q = qi.IrrepsQuantizer(irreps, {"higher_bits": bits})
    q(x)
    q.freeze()
    rx = torch.tensor(_rotate(irreps, _np(x), rot), dtype=dt)
    y, ry = _np(q(x)), _np(q(rx))
    dy = _rotate(irreps, y, rot)
    eps = float(np.finfo(float_dtype).eps)
    for (l, _, xb), (_, _, yb), (_, _, ryb), (_, _, rxb), (_, _, dyb) in zip(
        *(_blocks(irreps, a) for a in (_np(x), y, ry, _np(rx), dy))
    ):
        r_max = float(safe_norm(xb, axis=-1).max())
        s = r_max / (2 ** (bits - 1) - 1)
        k = math.sqrt(2 * l + 1)
        assert np.abs(rxb).max() <= r_max * (1 + 8 * eps), "a rotated component exceeds the range"
        err = safe_norm(yb - xb, axis=-1)
        assert np.all(err <= k * s / 2 * (1 + 1e-6) + 8 * eps * r_max), (
            f"l={l}: error {err.max():.3e} > {k * s / 2:.3e}"
        )
        comm = safe_norm(ryb - dyb, axis=-1)
        assert np.all(comm <= k * s * (1 + 1e-6) + 16 * eps * r_max), f"l={l}: commutation {comm.max():.3e}"


# ==========================================================================================================
# exact equivariance under the codebook's symmetry group, parity
# ==========================================================================================================
def _off_boundaries(q: qi.IrrepsQuantizer, x: np.ndarray, margin: float) -> np.ndarray:
    """Mask (n,) of samples whose every MDDQ channel is off the Voronoi boundaries and magnitude thresholds:
    best and second-best codeword scores differ by more than ``margin``, and |r - threshold| > margin r."""
    ok = np.ones(x.shape[0], dtype=bool)
    blocks = [b for b in _blocks(q.irreps, x)]
    for (_, _, xb), blk in zip(blocks, q.quantizers):
        if not isinstance(blk, qi._MDDQBlock):
            continue
        r = safe_norm(xb, axis=-1)
        u = xb / np.where(r > 0, r, 1)[..., None]
        scores = np.sort(u @ blk.mddq.codebook.points.T, axis=-1)
        gap = scores[..., -1] - scores[..., -2]
        thr = blk.mddq.magnitude_quantizer.thresholds
        dist = np.min(np.abs(thr[None, None, :] - r[..., None]), axis=-1)
        ok &= np.all((gap > margin) & (dist > margin * r), axis=-1)
    return ok


@pytest.mark.parametrize("float_dtype", ["float32", "float64"])
def test_exact_equivariance_under_icosahedral_group(float_dtype, rng):
    """Icosahedral codebook on S^2 and icosahedral orbit codebooks on S^(2l): Q(D(g) x) = D(g) Q(x) for all
    60 rotations g, up to rounding, for every sample off the Voronoi boundaries / magnitude thresholds."""
    irreps = o3.Irreps("2x0e + 1x0o + 3x1o + 2x1e + 2x2e + 1x3o")
    cfg = {"higher": "mddq", "higher_codebook_size": 960, "vector_codebook": codebook.icosahedral(3)}
    q = qi.IrrepsQuantizer(irreps, cfg)
    dt = DTYPES[float_dtype]
    eps = float(np.finfo(float_dtype).eps)
    x64 = rng.standard_normal((40, irreps.dim))
    x = torch.tensor(x64, dtype=dt)
    group = rotation_group("icosahedral")
    q(torch.cat([x] + [torch.tensor(_rotate(irreps, _np(x), g), dtype=dt) for g in group[:2]]))
    q(x * 1.5)  # a wider range than every rotated input (|D(g) v| = |v|)
    q.freeze()
    y = _np(q(x))
    checked = 0
    for g in group:
        gx = torch.tensor(_rotate(irreps, _np(x), g), dtype=dt)
        gy = _np(q(gx))
        ok = _off_boundaries(q, _np(x), 64 * eps) & _off_boundaries(q, _np(gx), 64 * eps)
        err = np.abs(gy - _rotate(irreps, y, g)).max(axis=-1)
        assert np.all(err[ok] <= 64 * eps * (1 + np.abs(y).max())), (
            f"Q(D(g) x) != D(g) Q(x): error {err[ok].max():.3e} for g={g.tolist()}"
        )
        checked += int(ok.sum())
    assert checked >= 0.9 * 60 * 40, f"only {checked} sample-rotation pairs off the boundaries"


def test_equivariance_test_can_fail(rng):
    """A codebook without the icosahedral symmetry (Fibonacci) is not equivariant under the same rotations."""
    irreps = o3.Irreps("8x1o")
    q = qi.IrrepsQuantizer(irreps, {"vector_codebook": codebook.fibonacci(642)})
    x = rng.standard_normal((40, irreps.dim))
    q(torch.tensor(x) * 1.5)
    q.freeze()
    g = rotation_group("icosahedral")[7]
    err = np.abs(_np(q(torch.tensor(_rotate(irreps, x, g)))) - _rotate(irreps, _np(q(torch.tensor(x))), g))
    assert err.max() > 1e-3


@pytest.mark.parametrize("float_dtype", ["float32", "float64"])
def test_parity_exact_for_centrally_symmetric_codebooks(float_dtype, rng):
    """The inversion (block of parity p times p, from e3nn's D_from_matrix(-I)) commutes with Q exactly for
    symmetric scalars, MDDQ with a centrally symmetric codebook, per-component l >= 2 and orbit codebooks."""
    irreps = o3.Irreps("2x0e + 2x0o + 3x1o + 3x1e + 2x2o + 2x2e")
    dt = DTYPES[float_dtype]
    inv = irreps.D_from_matrix(-torch.eye(3, dtype=torch.float64)).numpy()
    assert np.array_equal(inv, np.diag(np.diag(inv))) and set(np.diag(inv)) == {-1.0, 1.0}
    x = torch.tensor(rng.standard_normal((50, irreps.dim)), dtype=dt)
    px = torch.tensor(x.double().numpy() @ inv.T, dtype=dt)
    np.testing.assert_array_equal(_np(px), _parity(irreps, _np(x)))
    for higher in ("symmetric", "mddq"):
        q = qi.IrrepsQuantizer(irreps, {"higher": higher, "higher_codebook_size": 600})
        q(torch.cat([x, px]))
        q.freeze()
        np.testing.assert_array_equal(_np(q(px)), _parity(irreps, _np(q(x))))


def test_parity_of_a_non_symmetric_codebook_is_bounded(rng):
    """Fibonacci points are not centrally symmetric: 1o blocks break parity, within Q_m(r) 4 sin(delta/2);
    1e blocks (inversion = identity) keep it exactly."""
    cb = codebook.fibonacci(100)
    irreps = o3.Irreps("20x1o + 20x1e")
    q = qi.IrrepsQuantizer(irreps, {"vector_codebook": cb, "magnitude_bits": 6})
    x = torch.tensor(rng.standard_normal((10, irreps.dim)))
    px = torch.tensor(_parity(irreps, _np(x)))
    q(x)
    q.freeze()
    err = (_np(q(px)) - _parity(irreps, _np(q(x)))).reshape(10, 40, 3)
    m = np.linalg.norm(_np(q(x)).reshape(10, 40, 3), axis=-1)
    bound = m * 4 * math.sin(cb.covering_radius() / 2) + 1e-12
    assert np.all(np.linalg.norm(err, axis=-1) <= bound)
    assert np.abs(err[:, :20]).max() > 1e-3, "1o parity error should be visible for Fibonacci points"
    assert np.all(err[:, 20:] == 0), "1e blocks are inversion-invariant"


# ==========================================================================================================
# gradients
# ==========================================================================================================
def test_gradients_geometric_ste(rng):
    """Scalars: incoming gradient (no clipping after calibration); vectors: (m/r) P_u g + <c, g> u, whose
    direction part is tangent (orthogonal to v, Prop. III.1); zero channels get 0, never NaN."""
    irreps = o3.Irreps("3x0e + 4x1o + 2x1e")
    x = rng.standard_normal((6, irreps.dim))
    x[0, 3:6] = 0.0  # a zero vector channel
    g = rng.standard_normal((6, irreps.dim))
    grads = {}
    for ste in ("geometric", "none"):
        q = qi.IrrepsQuantizer(irreps, {"direction_ste": ste, "vector_codebook": codebook.icosahedral(2)})
        q(torch.tensor(x))
        q.freeze()
        xt = torch.tensor(x, requires_grad=True)
        (grad,) = torch.autograd.grad(q(xt), xt, torch.tensor(g))
        grads[ste] = grad.numpy()
    grad = grads["geometric"]
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[:, :3], g[:, :3])
    pts = codebook.icosahedral(2).points
    xv, gv, dv = (a[:, 3:].reshape(6, 6, 3) for a in (x, g, grad))
    tangent = (grads["geometric"] - grads["none"])[:, 3:].reshape(6, 6, 3)
    for block in (slice(0, 4), slice(4, 6)):
        r_max = np.linalg.norm(xv[:, block], axis=-1).max()
        levels = np.arange(256) * (r_max / 255)
        for i in range(6):
            for c in range(block.start, block.stop):
                v, gg = xv[i, c], gv[i, c]
                r = np.linalg.norm(v)
                if r == 0:
                    assert np.all(dv[i, c] == 0)
                    continue
                u = v / r
                m = levels[np.argmin(np.abs(levels - r))]
                cw = pts[np.argmax(pts @ u)]
                expected = (m / r) * (gg - u * (u @ gg)) + (cw @ gg) * u
                np.testing.assert_allclose(dv[i, c], expected, rtol=0, atol=1e-12)
                assert abs(tangent[i, c] @ v) <= 1e-12 * np.linalg.norm(gg) * r


# ==========================================================================================================
# calibration, freezing, state, bits
# ==========================================================================================================
def test_calibration_order_independent_freeze_deterministic_state_dict(rng):
    irreps = o3.Irreps("3x0e + 1x0o + 2x1o + 1x2e")
    batches = [torch.tensor(rng.standard_normal((8, irreps.dim)) * s) for s in (1.0, 3.0, 0.5)]
    qa, qb = qi.IrrepsQuantizer(irreps), qi.IrrepsQuantizer(irreps)
    for b in batches:
        qa(b)
    for b in batches[::-1]:
        qb(b)
    assert qa.calibrating
    qa.freeze(), qb.freeze()
    assert not qa.calibrating
    test = torch.tensor(rng.standard_normal((5, irreps.dim)) * 10)  # out of the calibrated range
    ya = qa(test)
    assert torch.equal(ya, qb(test)), "a running max does not depend on the order of the batches"
    assert torch.equal(ya, qa(test)), "frozen: the same input gives the same output"
    assert torch.equal(qa(test), ya), "a frozen quantizer must not recalibrate"
    # the vector range is the largest norm seen, the scalar range the largest |x|
    r_max = max(float(np.linalg.norm(b.numpy()[:, 4:10].reshape(-1, 3), axis=1).max()) for b in batches)
    assert qa.quantizers[2].mddq.r_max == pytest.approx(r_max, rel=1e-15)
    assert qa.quantizers[0].hi == max(float(b[:, :3].abs().max()) for b in batches)
    qc = qi.IrrepsQuantizer(irreps)
    qc.load_state_dict(qa.state_dict())
    assert not qc.calibrating, "the frozen state travels with the state_dict"
    assert torch.equal(qc(test), ya)
    # module dtype casts must not round the ranges: a float32 copy quantizes float64 input identically
    assert torch.equal(copy.deepcopy(qa).float()(test), ya)
    qd = pickle.loads(pickle.dumps(qa))
    assert torch.equal(qd(test), ya)


def test_uncalibrated_frozen_quantizer_raises():
    q = qi.IrrepsQuantizer("2x0e + 1x2e").freeze()
    with pytest.raises(RuntimeError, match="calibration mode"):
        q(torch.ones(3, 7))


@pytest.mark.parametrize("config", [None, "naive_int8", {"higher": "mddq", "higher_codebook_size": 240}])
def test_empty_batch_needs_no_range(config):
    """An empty batch is returned as it is (shape (0, dim)), even by a frozen, never calibrated quantizer,
    and does not set any range."""
    cfg = qi.IrrepsQuantConfig.naive_int8() if config == "naive_int8" else config
    irreps = "2x0e + 1x1o + 1x2e"
    q = qi.IrrepsQuantizer(irreps, cfg)
    out = q(torch.zeros(0, 10, dtype=torch.float64))
    assert out.shape == (0, 10) and out.dtype == torch.float64
    assert all(getattr(b, "hi", None) is None and getattr(getattr(b, "mddq", None), "r_max", None) is None
               for b in q.quantizers)  # fmt: skip
    assert q.freeze()(torch.zeros(3, 0, 10)).shape == (3, 0, 10)


@pytest.mark.parametrize(
    ("irreps", "cfg", "bits"),
    [
        ("4x0e + 2x1o", None, 4 * 8 + 2 * (8 + 12)),
        ("4x0e + 2x1o", qi.IrrepsQuantConfig.naive_int8(), 10 * 8),
        (
            "1x0o + 3x1e + 1x2e",
            {"magnitude_bits": 6, "vector_codebook": codebook.icosahedral(2)},
            8 + 3 * 14 + 40,
        ),
        ("2x2e", {"higher": "mddq", "higher_codebook_size": 1000}, 2 * (8 + 10)),  # 8 orbits x 120 = 960
        ("2x0e + 0x1o", {"scalar_bits": 4}, 8),
    ],
)
def test_bits_report(irreps, cfg, bits):
    q = qi.IrrepsQuantizer(irreps, cfg)
    rep = q.bits_report()
    dim = o3.Irreps(irreps).dim
    assert rep["bits"] == bits and rep["dim"] == dim
    assert rep["bits_per_feature"] == pytest.approx(bits / dim)
    assert rep["compression_vs_fp32"] == pytest.approx(32 * dim / bits)
    assert sum(b["dim"] for b in rep["blocks"]) == dim


def test_orbit_codebook_is_group_invariant_and_centrally_symmetric():
    for l in (2, 3):
        cb = qi.orbit_codebook(l, n=500, group="octahedral")
        pts = cb.points
        assert pts.shape == (480, 2 * l + 1)  # 10 orbits of 24 and their antipodes
        for g in rotation_group("octahedral"):
            moved = pts @ np.asarray(so3.wigner_D(l, g)).T
            assert np.array_equal(np.sort(cb.nearest(moved)), np.arange(480))
            assert np.abs(pts[cb.nearest(moved)] - moved).max() < 1e-12
        assert np.abs(pts[cb.nearest(-pts)] + pts).max() < 1e-15
    assert qi.orbit_codebook(2, n=130, antipodal=False).points.shape == (120, 5)
    with pytest.raises(ValueError, match="n must be at least 120"):
        qi.orbit_codebook(2, n=100)


def test_empty_irreps_and_batch_shapes():
    q = qi.IrrepsQuantizer("0x0e")
    x = torch.zeros(4, 0)
    assert q(x).shape == (4, 0)
    q2 = qi.IrrepsQuantizer("1x0e + 1x1o")
    for shape in [(4,), (2, 3, 4), (0, 4)]:
        assert q2(torch.ones(shape)).shape == shape


# ==========================================================================================================
# bad input
# ==========================================================================================================
@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: qi.IrrepsQuantizer(3), TypeError, "irreps must be an e3nn.o3.Irreps"),
        (lambda: qi.IrrepsQuantizer([(1, (1, -1))]), TypeError, "irreps must be"),
        (lambda: qi.IrrepsQuantizer(None), TypeError, "irreps must be"),
        (lambda: qi.IrrepsQuantizer("2x1q"), ValueError, "irreps '2x1q' is not a valid irreps string"),
        (lambda: qi.IrrepsQuantizer("1x1o", {"foo": 1}), ValueError, r"config has unknown option\(s\) 'foo'"),
        (
            lambda: qi.IrrepsQuantizer("1x1o", {"scalar_bits": 1}),
            ValueError,
            r"config: scalar_bits must be in",
        ),
        (lambda: qi.IrrepsQuantConfig.from_dict({"foo": 1}), ValueError, r"options has unknown option\(s\)"),
        (lambda: qi.IrrepsQuantConfig.from_dict([("scalar", "minmax")]), TypeError, "options must be"),
        (lambda: qi.IrrepsQuantConfig.from_dict({"vector": 3}), ValueError, "options: vector must be one of"),
        (
            lambda: qi.IrrepsQuantizer("1x11e", {"higher": "mddq"}),
            ValueError,
            r"irreps 1x11e has degree l = 11: higher='mddq' has default codebooks up to l = 10",
        ),
        (lambda: qi.IrrepsQuantizer("1x1o", 5), TypeError, "config must be an IrrepsQuantConfig or a dict"),
        (lambda: qi.IrrepsQuantConfig(foo=1), TypeError, "foo"),
        (lambda: qi.IrrepsQuantConfig(vector="int8"), ValueError, "vector must be one of"),
        (lambda: qi.IrrepsQuantConfig(higher="mdq"), ValueError, "higher must be one of"),
        (lambda: qi.IrrepsQuantConfig(scalar="mddq"), ValueError, "scalar must be one of"),
        (lambda: qi.IrrepsQuantConfig(magnitude_bits=1), ValueError, r"magnitude_bits must be in \[2, 16\]"),
        (lambda: qi.IrrepsQuantConfig(scalar_bits=8.0), TypeError, "scalar_bits must be an integer"),
        (lambda: qi.IrrepsQuantConfig(vector_codebook=np.eye(3)), TypeError, "vector_codebook must be"),
        (
            lambda: qi.IrrepsQuantConfig(higher_codebooks={2: HypersphereCodebook.random(10, dim=7)}),
            ValueError,
            r"higher_codebooks\[2\] must be a HypersphereCodebook of dimension 5",
        ),
        (lambda: qi.IrrepsQuantConfig(higher_group="X7"), ValueError, "higher_group: unknown group name"),
        (lambda: qi.orbit_codebook(0), ValueError, r"l must be in \[1, 10\]"),
        (lambda: qi.orbit_codebook(2, group=3), TypeError, "group must be a group name"),
        (lambda: qi.orbit_codebook(2, group="X7"), ValueError, "group: unknown group name 'X7'"),
        (lambda: qi.l1_change_of_basis(3), TypeError, "d_from_matrix must be callable"),
        (
            lambda: qi.l1_change_of_basis(lambda r: r[:2]),
            ValueError,
            r"d_from_matrix must return a finite \(3, 3\)",
        ),
        (
            lambda: qi.l1_change_of_basis(lambda r: r * math.nan),
            ValueError,
            "d_from_matrix must return a finite",
        ),
        (lambda: qi.l1_change_of_basis(lambda r: "D"), ValueError, "d_from_matrix must return a real"),
        (
            lambda: qi.l1_change_of_basis(lambda r: 2 * r),
            ValueError,
            r"representation \(d_from_matrix\) is not",
        ),
        (
            lambda: qi.IrrepsQuantConfig(higher_codebooks={2: np.eye(5)}),
            TypeError,
            r"higher_codebooks\[2\] must",
        ),
        (lambda: qi.set_irreps_calibration(None, True), TypeError, r"module must be a torch\.nn\.Module"),
    ],
)
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize(
    ("x", "exc", "match"),
    [
        (torch.ones(2, 6), ValueError, r"x must have shape \(\.\.\., 7\) for irreps 1x0e\+2x1o \(dim 7\)"),
        (torch.ones(()), ValueError, r"x must have shape \(\.\.\., 7\)"),
        (np.ones((2, 7)), TypeError, "x must be a torch tensor"),
        (torch.ones(2, 7, dtype=torch.int64), TypeError, "x must be a floating tensor"),
        (torch.full((2, 7), float("nan")), ValueError, "x contains NaN"),
        (torch.empty(2, 7, device="meta"), ValueError, "x is on the meta device"),
        # a channel whose norm overflows float32 (components 3e38): refused, naming the block
        (torch.full((2, 7), 3e38), ValueError, "x, block 2x1o: .*overflows"),
        (torch.full((2, 7), 1.5e308, dtype=torch.float64), ValueError, "x, block 2x1o: .*overflows"),
    ],
)
def test_bad_features(x, exc, match):
    q = qi.IrrepsQuantizer("1x0e + 2x1o")
    with pytest.raises(exc, match=match):
        q(x)


# ==========================================================================================================
# quantize_irreps_: wrapping submodules of any nn.Module
# ==========================================================================================================
class _Net(torch.nn.Module):
    """A small e3nn block: linear -> tensor product with edge harmonics -> gate."""

    def __init__(self):
        super().__init__()
        irreps_in = o3.Irreps("4x0e + 2x1o")
        self.sh = o3.SphericalHarmonics("1x0e + 1x1o + 1x2e", normalize=True, normalization="component")
        self.lin = o3.Linear(irreps_in, irreps_in)
        self.gate = enn.Gate("3x0e", [torch.tanh], "2x0e", [torch.sigmoid], "2x1o")
        self.tp = o3.FullyConnectedTensorProduct(irreps_in, self.sh.irreps_out, self.gate.irreps_in)
        self.head = torch.nn.Identity()

    def forward(self, x, vec):
        return self.head(self.gate(self.tp(self.lin(x), self.sh(vec))))


def _net_inputs(rng, n=12):
    return torch.tensor(rng.standard_normal((n, 10))), torch.tensor(rng.standard_normal((n, 3)))


def test_quantize_irreps_by_type_name_and_filter(rng):
    torch.manual_seed(0)
    net = _Net().double()
    x, vec = _net_inputs(rng)
    ref = net(x, vec)
    by_type = copy.deepcopy(net)
    qi.quantize_irreps_(by_type, types=(o3.Linear, o3.FullyConnectedTensorProduct))
    assert sorted(qi.irreps_quantizers(by_type)) == ["lin", "tp"]
    assert isinstance(by_type.lin, o3.Linear), "the module keeps its class"
    by_name = copy.deepcopy(net)
    qi.quantize_irreps_(by_name, names=["lin", "tp"])
    by_filter = copy.deepcopy(net)
    qi.quantize_irreps_(by_filter, filter_fn=lambda m, name: name in ("lin", "tp"))
    outs = []
    for model in (by_type, by_name, by_filter):
        model(x, vec)  # calibrate
        assert qi.set_irreps_calibration(model, False) == 2
        outs.append(model(x, vec))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert not torch.equal(outs[0], ref)
    # the hook output is the IrrepsQuantizer of the module's output
    lin_q = qi.irreps_quantizers(by_type)["lin"]
    with torch.no_grad():
        manual = lin_q(net.lin(x))
    assert torch.equal(by_type.lin(x), manual)
    # state_dict carries the quantizers, deepcopy and pickle keep them working
    assert any(k.startswith("lin.irreps_output_quantizer.") for k in by_type.state_dict())
    assert torch.equal(copy.deepcopy(by_type)(x, vec), outs[0])
    assert torch.equal(pickle.loads(pickle.dumps(by_type))(x, vec), outs[0])
    # gradients flow to the inputs and parameters
    xg = x.clone().requires_grad_(True)
    by_type(xg, vec).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
    # removal restores the FP model exactly
    qi.remove_irreps_quantization_(by_type)
    assert qi.irreps_quantizers(by_type) == {}
    assert torch.equal(by_type(x, vec), ref)


def test_quantize_irreps_gate_and_explicit_irreps(rng):
    torch.manual_seed(0)
    net = _Net().double()
    x, vec = _net_inputs(rng)
    qi.quantize_irreps_(net, names="gate")
    qi.quantize_irreps_(net, names="head", irreps="3x0e + 2x1o")
    qi.quantize_irreps_(net, types=o3.SphericalHarmonics, irreps=lambda m: m.irreps_out)
    assert sorted(qi.irreps_quantizers(net)) == ["gate", "head", "sh"]
    net(x, vec)
    qi.set_irreps_calibration(net, False)
    out = net(x, vec)
    assert out.shape == (12, 9) and torch.isfinite(out).all()
    rep = qi.irreps_quantizers(net)["sh"].bits_report()
    assert rep["irreps"] == "1x0e+1x1o+1x2e" and rep["bits"] == 8 + 20 + 5 * 8


def test_quantize_irreps_bad_input():
    torch.manual_seed(0)
    net = _Net()
    with pytest.raises(TypeError, match=r"module must be a torch\.nn\.Module"):
        qi.quantize_irreps_(object(), types=o3.Linear)
    with pytest.raises(ValueError, match="give exactly one of filter_fn"):
        qi.quantize_irreps_(net)
    with pytest.raises(ValueError, match="give exactly one of filter_fn"):
        qi.quantize_irreps_(net, names="lin", types=o3.Linear)
    with pytest.raises(ValueError, match=r"names \['nope'\] are not submodules"):
        qi.quantize_irreps_(net, names=["lin", "nope"])
    with pytest.raises(TypeError, match="submodule 'head' \\(Identity\\) has no irreps_out"):
        qi.quantize_irreps_(net, names="head")
    with pytest.raises(TypeError, match="types must be a class"):
        qi.quantize_irreps_(net, types="Linear")
    with pytest.raises(TypeError, match="filter_fn must be callable"):
        qi.quantize_irreps_(net, filter_fn=3)
    with pytest.raises(ValueError, match=r"no submodule of module \(_Net\) matched"):
        qi.quantize_irreps_(net, types=torch.nn.Conv2d)
    with pytest.raises(ValueError, match="config has unknown option"):
        qi.quantize_irreps_(net, {"bits": 4}, types=o3.Linear)
    with pytest.raises(ValueError, match=r"irreps 1x0e \(dim 1\) does not fit submodule 'lin' \(Linear\)"):
        qi.quantize_irreps_(net, types=o3.Linear, irreps="1x0e")
    assert qi.irreps_quantizers(net) == {}, "a refused call must leave the model unchanged"
    qi.quantize_irreps_(net, types=o3.Linear)
    with pytest.raises(ValueError, match="submodule 'lin' \\(Linear\\) is already quantized"):
        qi.quantize_irreps_(net, names="lin")
    bad = torch.nn.Linear(3, 3)
    bad.irreps_out = "1x1o"
    with pytest.raises(TypeError, match=r"irreps_out of type str, not an e3nn\.o3\.Irreps"):
        qi.quantize_irreps_(torch.nn.Sequential(bad), types=torch.nn.Linear)
    tupled = torch.nn.Sequential(torch.nn.Identity())
    tupled[0].forward = lambda x: (x, x)
    qi.quantize_irreps_(tupled, names="0", irreps="1x1o")
    with pytest.raises(TypeError, match="returned tuple"):
        tupled(torch.ones(2, 3))


def test_top_level_access():
    assert sq.irreps.IrrepsQuantizer is qi.IrrepsQuantizer
    assert "irreps" in sq.__all__


def test_default_codebooks_as_documented():
    """The module docstring's figures: icosahedral(4), 2562 points (12 bits), covering radius 2.73 degrees,
    centrally symmetric, 60 symmetry rotations; the 12-bit S^4 orbit codebook covers only to >= 20 degrees."""
    q = qi.IrrepsQuantizer("1x1o")
    cb = q.quantizers[0].mddq.codebook
    assert len(cb) == 2562 and q.quantizers[0].mddq.bits_per_vector == 8 + 12
    assert cb.covering_radius(degrees=True) == pytest.approx(2.7336, abs=1e-4)
    assert np.abs(cb.points[cb.nearest(-cb.points)] + cb.points).max() < 1e-12
    assert sq.symmetry.codebook_symmetry_group(cb).shape == (60, 3, 3)
    s4 = qi.IrrepsQuantizer("1x2e", {"higher": "mddq"}).quantizers[0].mddq.codebook
    assert len(s4) == 4080  # 34 orbits of 60 and their antipodes: 12 bits
    assert math.degrees(s4.covering_radius_estimate(2000, seed=0)) > 20.0  # a lower bound of delta


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA"))],
)
def test_device_preserving(device, rng):
    """Outputs and gradients stay on the input's device and equal the CPU float64 result."""
    irreps = o3.Irreps("2x0e + 2x1o + 1x2e")
    x = torch.tensor(rng.standard_normal((20, irreps.dim)))
    cfg = {"higher": "mddq", "higher_codebook_size": 600}
    ref_q = qi.IrrepsQuantizer(irreps, cfg)
    ref_q(x)
    ref = ref_q.freeze()(x)
    q = qi.IrrepsQuantizer(irreps, cfg).to(device)
    xd = x.to(device).requires_grad_(True)
    q(xd)
    out = q.freeze()(xd)
    assert out.device == xd.device
    out.sum().backward()
    assert xd.grad.device == xd.device and torch.isfinite(xd.grad).all()
    torch.testing.assert_close(out.detach().cpu(), ref, rtol=0, atol=1e-12)
