"""The public Hypothesis strategies (spherequant.strategies): what they draw, and how they shrink."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample
from scipy.spatial.distance import pdist

from spherequant import codebook as cbm
from spherequant.strategies import (
    CODEBOOK_KINDS,
    codebooks,
    point_clouds,
    rotations,
    unit_vectors,
    vector_fields,
    vectors,
)

DTYPES = [np.float32, np.float64, torch.float32, torch.float64]
UNIT_TOL = {np.float32: 1e-6, np.float64: 1e-14, torch.float32: 1e-6, torch.float64: 1e-14}


def _np(a):
    return a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _check_kind(a, dtype):
    if isinstance(dtype, torch.dtype):
        assert isinstance(a, torch.Tensor) and a.dtype == dtype, f"got {type(a).__name__} {a.dtype}"
    else:
        assert isinstance(a, np.ndarray) and a.dtype == np.dtype(dtype), f"got {type(a).__name__} {a.dtype}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=40)
@given(data=st.data())
def test_unit_vectors_are_unit(dtype, data):
    u = data.draw(unit_vectors(dtype))
    _check_kind(u, dtype)
    assert tuple(u.shape) == (3,)
    err = abs(float(np.linalg.norm(_np(u).astype(np.float64))) - 1.0)
    assert err <= UNIT_TOL[dtype], f"| |u| - 1 | = {err:.3e} for u = {_np(u).tolist()}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64, torch.float64], ids=str)
@settings(max_examples=60)
@given(data=st.data(), lo=st.sampled_from([0.0, 1e-6, 0.5]), hi=st.sampled_from([1.0, 1e3, 1e6]))
def test_vectors_respect_the_norm_range(dtype, data, lo, hi):
    v = data.draw(vectors(dtype, min_norm=lo, max_norm=hi, allow_zero=False))
    _check_kind(v, dtype)
    x = _np(v).astype(np.float64)
    assert x.any(), "allow_zero=False drew the zero vector"
    # scale-safe norm: |v| of v ~ 1e-233 underflows to 0 when squared directly
    scale = np.abs(x).max()
    r = float(scale * np.linalg.norm(x / scale))
    rel = 1e-6 if dtype == np.float32 or dtype == torch.float32 else 1e-12
    assert lo * (1 - rel) <= r <= hi * (1 + rel), f"norm {r!r} outside [{lo}, {hi}] for v = {_np(v).tolist()}"


def test_vectors_cover_zero_tiny_and_huge_magnitudes():
    def norm(v):  # overflow/underflow-safe (a naive norm of a 1e-175 vector underflows to 0)
        scale = float(np.abs(v).max())
        return scale * float(np.linalg.norm(v / scale)) if scale > 0 else 0.0

    quick = settings(phases=[Phase.generate], database=None, max_examples=500)  # existence only, no shrinking
    assert not find(vectors(), lambda v: norm(v) == 0.0, settings=quick).any()
    tiny = find(vectors(allow_zero=False), lambda v: norm(v) < 1e-20, settings=quick)
    assert 0 < norm(tiny) < 1e-20
    huge = find(vectors(max_norm=1e6), lambda v: norm(v) > 0.9e6, settings=quick)
    assert 0.9e6 < norm(huge) <= 1e6 * (1 + 1e-12)
    # the zero vector is an extra edge case even above min_norm ...
    assert not find(vectors(min_norm=1.0, max_norm=2.0), lambda v: norm(v) < 1.0, settings=quick).any()
    # ... and never drawn when excluded (also not through underflow to float32 zeros)
    with pytest.raises(NoSuchExample):
        find(
            vectors(np.float32, allow_zero=False),
            lambda v: not v.any(),
            settings=settings(quick, max_examples=100),
        )


def test_draws_shrink_to_simple_values():
    u = find(unit_vectors(), lambda u: True)
    assert u.tolist() == [1.0, 0.0, 0.0]
    r = find(rotations(), lambda r: True)
    assert np.abs(r - np.eye(3)).max() < 1e-15, f"minimal rotation {r.tolist()}"
    # half-turns (where conversions are delicate) are drawn, here one about the x axis
    quick = settings(phases=[Phase.generate], database=None, max_examples=300)
    r = find(rotations(), lambda r: r[0, 0] == 1.0 and np.trace(r) < -0.999, settings=quick)
    assert np.abs(r - np.diag([1.0, -1.0, -1.0])).max() < 1e-12, f"found {r.tolist()}"
    cb = find(codebooks(), lambda cb: True)
    assert cb.kind == "fibonacci" and len(cb.points) == 4
    cb = find(codebooks(), lambda cb: len(cb.points) > 50)
    assert cb.kind == "fibonacci" and len(cb.points) == 51
    field = find(vector_fields((1, 10)), lambda a: True)
    assert field.shape == (1, 3) and not field.any()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("haar_only", [False, True])
@settings(max_examples=40)
@given(data=st.data())
def test_rotations_are_rotations(dtype, haar_only, data):
    r = data.draw(rotations(dtype, haar_only=haar_only))
    _check_kind(r, dtype)
    rr = _np(r).astype(np.float64)
    tol = 1e-6 if dtype in (np.float32, torch.float32) else 1e-13
    ortho = np.abs(rr @ rr.T - np.eye(3)).max()
    assert ortho < tol, f"|R R^T - I| = {ortho:.3e} for R = {rr.tolist()}"
    assert abs(np.linalg.det(rr) - 1.0) < tol


def test_haar_rotations_are_uniform():
    """The Haar branch: the rotation angle has density (1 - cos t) / pi; compare its CDF (Kolmogorov)."""
    draws = []

    @settings(max_examples=250, database=None)
    @given(rotations(haar_only=True))
    def collect(r):
        draws.append(r)

    collect()
    r = np.stack(draws)
    ang = np.sort(np.arccos(np.clip((np.trace(r, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    cdf = (ang - np.sin(ang)) / np.pi
    emp = np.arange(1, len(ang) + 1) / len(ang)
    ks = np.abs(cdf - emp).max()
    assert len(np.unique(ang)) > 200
    assert ks < 1.63 / np.sqrt(len(ang)) + 0.02, f"KS distance {ks:.3f} over {len(ang)} draws"


@settings(max_examples=40)
@given(cb=codebooks(kinds=CODEBOOK_KINDS, min_size=4, max_size=200))
def test_codebooks_have_sizes_in_range(cb):
    k = len(cb.points)
    assert 4 <= k <= 200
    assert cb.kind in CODEBOOK_KINDS or cb.kind in ("platonic", "custom"), cb.kind
    assert np.abs(np.linalg.norm(cb.points, axis=1) - 1).max() < 1e-12


def test_codebook_kinds_all_reachable():
    for kind in CODEBOOK_KINDS:
        cb = find(codebooks(kinds=(kind,), max_size=200), lambda cb: True)
        expected = {"tetrahedron": 4, "octahedron": 6, "cube": 8, "icosahedron": 12, "dodecahedron": 20,
                    "icosahedral": 12, "healpix": 12, "fibonacci": 4, "random": 4}[kind]  # fmt: skip
        assert len(cb.points) == expected, f"{kind}: {len(cb.points)} points"
    ico = find(codebooks(kinds=("icosahedral",), min_size=13, max_size=200), lambda cb: True)
    assert np.allclose(ico.points, cbm.icosahedral(1).points)


@pytest.mark.parametrize("dtype", [np.float32, torch.float64], ids=str)
@settings(max_examples=30)
@given(data=st.data())
def test_vector_fields_shapes(dtype, data):
    a = data.draw(vector_fields((2, 7), dtype, unit=True))
    _check_kind(a, dtype)
    assert a.shape[1] == 3 and 2 <= a.shape[0] <= 7
    err = np.abs(np.linalg.norm(_np(a).astype(np.float64), axis=1) - 1).max()
    assert err < 1e-6
    b = data.draw(vector_fields(5, dtype, min_norm=1e-3, max_norm=10.0, allow_zero=False))
    nb = np.linalg.norm(_np(b).astype(np.float64), axis=1)
    assert b.shape == (5, 3) and nb.min() >= 1e-3 * (1 - 1e-6) and nb.max() <= 10.0 * (1 + 1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=str)
@settings(max_examples=40)
@given(data=st.data(), dmin=st.sampled_from([0.5, 1.0, 2.5]))
def test_point_clouds_keep_the_minimum_distance(dtype, data, dmin):
    x = data.draw(point_clouds((2, 20), dtype, min_distance=dmin))
    _check_kind(x, dtype)
    assert x.shape[1] == 3 and 2 <= x.shape[0] <= 20
    d = pdist(x.astype(np.float64)).min()
    assert d >= dmin * (1 - 1e-6), f"closest pair {d:.6f} < {dmin}"
    assert np.ptp(x, axis=0).max() <= 2 * dmin * 4 + dmin  # compact: a lattice of side <= 4 sites


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda: unit_vectors(np.int32), ValueError, "floating"),
        (lambda: unit_vectors("nonsense"), TypeError, "dtype"),
        (lambda: unit_vectors(torch.int64), ValueError, "floating"),
        (lambda: vectors(min_norm=2.0, max_norm=1.0), ValueError, "min_norm"),
        (lambda: vectors(max_norm=float("inf")), ValueError, "finite"),
        (lambda: vectors(max_norm=0.0, allow_zero=False), ValueError, "allow_zero"),
        (lambda: vectors(np.float32, max_norm=1e39), ValueError, "overflows"),
        (lambda: vector_fields(3, torch.float32, max_norm=1e39), ValueError, "overflows"),
        (lambda: codebooks(kinds=("hexagonal",)), ValueError, "unknown codebook kinds"),
        (lambda: codebooks(kinds=()), ValueError, "at least one"),
        (
            lambda: codebooks(kinds=("icosahedral",), min_size=13, max_size=41),
            ValueError,
            "none of the kinds",
        ),
        (lambda: codebooks(min_size=0), ValueError, "min_size"),
        (lambda: vector_fields((3, 1)), ValueError, "n_points"),
        (lambda: vector_fields("many"), TypeError, "n_points"),
        (lambda: point_clouds(4, min_distance=0.0), ValueError, "min_distance"),
    ],
)
def test_invalid_arguments_raise(make, exc, match):
    with pytest.raises(exc, match=match):
        make()
