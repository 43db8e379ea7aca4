"""Tests of spherequant.hypersphere: codebooks on S^(d-1) (nearest search, k-means, covering estimate)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spherequant import hypersphere as H


# ==========================================================================================================
# codebooks on S^(d-1)
# ==========================================================================================================
def test_hypersphere_codebook_nearest_matches_slow_search(float_dtype, rng):
    cb = H.HypersphereCodebook.random(97, dim=5, seed=2)
    assert np.allclose(np.linalg.norm(cb.points, axis=1), 1.0, atol=1e-15)
    x = rng.standard_normal((3, 40, 5)).astype(float_dtype)
    got = cb.nearest(x)
    got_t = cb.nearest(torch.tensor(x))
    assert got.shape == (3, 40) and got.dtype == np.int64
    np.testing.assert_array_equal(got_t.numpy(), got)
    for idx in np.ndindex(3, 40):  # slow: smallest angle, computed in float64 without the dot-product argmax
        u = x[idx].astype(np.float64) / np.linalg.norm(x[idx].astype(np.float64))
        ang = [2 * math.atan2(np.linalg.norm(u - c), np.linalg.norm(u + c)) for c in cb.points]
        best = min(ang)
        assert ang[got[idx]] <= best + 1e-5, f"query {idx}: angle {ang[got[idx]]} > best {best}"
    with pytest.raises(ValueError, match="zero vector"):
        cb.nearest(np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"\(\.\.\., 5\)"):
        cb.nearest(np.ones((2, 3)))


def test_hypersphere_kmeans_and_covering_estimate(rng):
    data = rng.standard_normal((3000, 5))
    km = H.HypersphereCodebook.kmeans(data, 32, seed=0)
    rnd = H.HypersphereCodebook.random(32, 5, seed=0)
    assert km.size == 32 and km.dim == 5

    def mean_angle(cb):
        u = data / np.linalg.norm(data, axis=1, keepdims=True)
        return np.arccos(np.clip(np.sum(u * cb.quantize(u), axis=1), -1, 1)).mean()

    assert mean_angle(km) < mean_angle(rnd), "k-means must fit its data better than random points"
    est = km.covering_radius_estimate(5000, seed=1)
    assert 0 < est < math.pi


def test_hypersphere_codebook_rows_of_any_scale_and_duplicates():
    """Rows of norm ~1e300 or ~1e-300 (or whose norm overflows) normalise correctly (was: zero rows or a
    spurious 'zero row' error); duplicate directions are refused."""
    base = np.array([[3.0, 4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 2.0, 2.0], [1.0, 0.0, 0.0, 0.0, -1.0]])
    ref = base / np.linalg.norm(base, axis=1, keepdims=True)
    for scale in (1e-300, 1e-160, 1.0, 1e160, 1e300, 1.5e308 / 4):
        cb = H.HypersphereCodebook(base * scale)
        assert np.abs(cb.points - ref).max() <= 4e-16, scale
    with pytest.raises(ValueError, match="points has duplicate directions"):
        H.HypersphereCodebook(np.vstack([base, 2.0 * base[1]]))
    with pytest.raises(ValueError, match="chunk"):
        H.HypersphereCodebook(base).nearest(base, chunk=0)
