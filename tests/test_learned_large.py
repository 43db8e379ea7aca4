"""Learned codebooks beyond the shipped table (spherequant._relax): grid starts, minimax relaxation, the
large-n path of ``minimax_codebook``/``learned``, judged by the exact ``Codebook.covering_radius``."""

from __future__ import annotations

import time

import numpy as np
import pytest

from spherequant import _minimax, _relax, learn
from spherequant._points import geodesic_points, icosahedron_points
from spherequant.bounds import fejes_toth_covering_radius
from spherequant.codebook import Codebook, learned
from spherequant.learn import minimax_codebook

#: The contract of issue 17 for learned(n), 257 <= n <= 10^4 (the relaxed grids reach 1.01-1.04).
RATIO_LIMIT = 1.09


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _delta(p):
    return Codebook(p).covering_radius()  # exact (codebook.py), independent of the optimiser's hull radii


def _ratio(p):
    return _delta(p) / fejes_toth_covering_radius(len(p))


def _angle(a, b):
    return float(np.arctan2(np.linalg.norm(np.cross(a, b)), np.dot(a, b)))


def _check_points(p, n):
    assert p.shape == (n, 3) and p.dtype == np.float64
    err = np.abs(np.linalg.norm(p, axis=1) - 1.0)
    assert err.max() < 1e-12, f"max |norm - 1| {err.max():.3e} at row {err.argmax()}"
    Codebook(p)  # raises on duplicate directions


# ----------------------------------------------------------------------------------------------------------
# grid starts
# ----------------------------------------------------------------------------------------------------------
def test_geodesic_sizes_are_every_grid_size_with_a_matching_grid():
    sizes = _relax.geodesic_sizes(1500)
    expect = {
        10 * (i * i + i * j + j * j) + 2
        for i in range(1, 20)
        for j in range(0, 20)
        if 10 * (i * i + i * j + j * j) + 2 <= 1500
    }
    assert set(sizes) == expect
    assert list(sizes) == sorted(sizes)
    for m, (i, j) in sizes.items():
        assert j <= i and geodesic_points(i, j).shape[0] == m, (m, i, j)
    assert sizes[492] == (7, 0), sizes[492]  # 492 = 10 * 49 + 2: the mirror-symmetric (7, 0), not (5, 3)


def _naive_spread(c, k, first):
    chosen = [first]
    for _ in range(k - 1):
        best, pick = np.inf, None
        for j in range(c.shape[0]):
            if j in chosen:
                continue
            closest = max(float(c[j] @ c[i]) for i in chosen)
            if closest < best:
                best, pick = closest, j
        chosen.append(pick)
    return chosen


def test_spread_is_farthest_point_sampling(rng):
    c = _unit(rng.normal(size=(60, 3)))
    for first, k in [(0, 1), (5, 12), (59, 30)]:
        got = _relax.spread(c, k, first).tolist()
        assert got == _naive_spread(c, k, first), (first, k, got)


@pytest.mark.parametrize("n", [257, 263, 300, 700])
def test_adjusted_grids_have_exactly_n_unit_points_from_their_parent_grid(n):
    starts = _relax.grid_starts(n)
    assert [name for name, _ in starts][-1] == "pole_fibonacci"
    assert len(starts) == 2 * _relax.GRID_PER_SIDE + 1
    for name, p in starts[:-1]:
        _check_points(p, n)
        i, j = (int(v) for v in name[5:-1].split(","))
        parent = geodesic_points(i, j)
        m = parent.shape[0]
        if m <= n:  # insertion: the parent first, then the largest hole's centre, then spread hole centres
            np.testing.assert_array_equal(p[:m], parent)
            if m < n:
                gap = min(_angle(p[m], q) for q in parent)
                assert abs(gap - _delta(parent)) < 1e-12, (name, gap, _delta(parent))
        else:  # removal: a subset of the parent, in the parent's order
            rows = {tuple(r) for r in parent}
            assert all(tuple(r) in rows for r in p), name
            assert _delta(p) > _delta(parent), name


# ----------------------------------------------------------------------------------------------------------
# relaxation
# ----------------------------------------------------------------------------------------------------------
def test_relax_lowers_the_exact_covering_radius_and_reports_it():
    n = 400
    d0 = fejes_toth_covering_radius(n)
    p = _relax.adjusted_grid(5, 2, n)  # 392 points + 8 inserted; ratio 1.094
    q, val = _relax.relax(p, d0, betas=(40.0, 80.0), rounds=2)
    _check_points(q, n)
    assert abs(val - _delta(q)) < 1e-12, (val, _delta(q))
    r0, r1 = _ratio(p), _ratio(q)
    assert r1 < r0 - 0.04, (r0, r1)


def test_relax_returns_its_start_when_it_cannot_improve():
    p = icosahedron_points()  # the optimal 12-point covering: no step lowers its largest hole
    q, val = _relax.relax(p, fejes_toth_covering_radius(12), betas=(40.0, 640.0), rounds=2)
    np.testing.assert_array_equal(q, p)
    assert abs(val - _delta(p)) < 1e-12


@pytest.mark.parametrize("n", [257, 1000])
def test_grid_codebook_is_never_worse_than_its_starts(n):
    report = {}
    p = _relax.grid_codebook(n, report=report)
    _check_points(p, n)
    r = _ratio(p)
    assert r <= RATIO_LIMIT, f"n={n}: ratio {r:.4f}"
    worst = [(name, _ratio(s)) for name, s in _relax.grid_starts(n) if _ratio(s) < r - 1e-12]
    assert not worst, f"n={n}: result {r:.5f} worse than starts {worst}"
    assert min(v for k, v in report.items() if "/" not in k) == pytest.approx(r, abs=1e-12), report


def test_grid_codebook_is_deterministic():
    a = _relax.grid_codebook(300, keep=1)
    b = _relax.grid_codebook(300, keep=1)
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------------------------
# minimax_codebook / learned above the shipped table
# ----------------------------------------------------------------------------------------------------------
def test_minimax_codebook_takes_the_better_path_and_caches_it(monkeypatch, tmp_path):
    monkeypatch.setenv("SPHEREQUANT_CACHE", str(tmp_path))
    n = 260
    p = minimax_codebook(n, restarts=1, iterations=3, slp_iterations=0)
    _check_points(p, n)
    spiral = _minimax.optimise(n, 0, 1, 3, 0, False)
    grid = _relax.grid_codebook(n)
    assert _delta(p) <= min(_delta(spiral), _delta(grid)) + 1e-12
    assert _ratio(p) <= RATIO_LIMIT
    files = list((tmp_path / "learned").glob(f"minimax_n{n}_*.npz"))
    assert len(files) == 1, files
    again = minimax_codebook(n, restarts=1, iterations=3, slp_iterations=0)  # served from the cache
    np.testing.assert_array_equal(again, p)
    opts = {"restarts": 1, "iterations": 3, "slp_iterations": 0, "seed": 0}
    small, large = learn._key(100, opts), learn._key(n, opts)
    monkeypatch.setattr(learn, "GRID_VERSION", learn.GRID_VERSION + 1)
    assert learn._key(100, opts) == small, "sizes below GRID_MIN_N do not depend on the grid path"
    assert learn._key(n, opts) != large, "a new grid path must not serve old cache entries"


def test_best_codebook_reports_its_winner():
    report = {}
    p = _relax.best_codebook(_relax.GRID_MIN_N, 0, 1, 2, 0, False, report=report)
    assert report["best"] in ("grid", "spiral") and "fibonacci" in report and "pole_fibonacci" in report
    report = {}
    _relax.best_codebook(_relax.GRID_MIN_N - 1, 0, 1, 2, 0, False, report=report)
    assert report["best"] == "spiral" and not any(k.startswith("grid(") for k in report)
    _check_points(p, _relax.GRID_MIN_N)
    report = {}
    _relax.best_codebook(_relax.GRID_MIN_N, 0, 0, 2, 0, False, report=report)  # grid path alone
    assert report["best"] == "grid" and "fibonacci" not in report
    with pytest.raises(ValueError, match="restarts must be >= 1"):
        _relax.best_codebook(_relax.GRID_MIN_N - 1, 0, 0, 2, 0, False)


def test_minimax_codebook_allows_no_restart_only_where_the_grid_path_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("SPHEREQUANT_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="restarts"):
        minimax_codebook(_relax.GRID_MIN_N - 1, restarts=0)
    p = minimax_codebook(_relax.GRID_MIN_N, restarts=0, slp_iterations=0)
    np.testing.assert_array_equal(p, _relax.grid_codebook(_relax.GRID_MIN_N))


@pytest.mark.slow
@pytest.mark.parametrize("n", [257, 300, 500, 1000, 2000, 4000, 7000, 10_000, 10_242])
def test_learned_stays_within_1_09_of_the_fejes_toth_bound(n):
    t0 = time.process_time()
    cb = learned(n, cache=False)  # default options: relaxed grids (and, up to 500 points, spiral starts)
    seconds = time.process_time() - t0
    _check_points(cb.points, n)
    r = _ratio(cb.points)
    assert r <= RATIO_LIMIT, f"n={n}: Fejes Toth ratio {r:.4f} > {RATIO_LIMIT}"
    assert seconds < 120.0, f"n={n}: {seconds:.0f} s of CPU"  # measured: 10^4 points in about 20 s
