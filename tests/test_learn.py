"""Learned codebooks (spherequant.learn): shipped minimax table, optimiser, cache, spherical k-means."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spherequant import _minimax, learn
from spherequant.bounds import fejes_toth_covering_radius
from spherequant.codebook import Codebook, fibonacci, icosahedron
from spherequant.learn import (
    hull_holes,
    minimax_codebook,
    pole_corrected_fibonacci,
    shipped_table,
    spherical_kmeans,
)
from spherequant.lookup import brute_force_nearest

INDEX, TABLE = shipped_table()
#: What the shipped table reaches for n <= 130 (max 1.0582 at n = 11); n = 5 cannot go below 1.0395 (its
#: proven optimum, atan 2, is 1.0395 times the bound).
RATIO_MAX_SMALL = 1.06


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------------------------------
# shipped table
# ----------------------------------------------------------------------------------------------------------
def test_shipped_table_present_and_consistent():
    assert TABLE, "spherequant/data/learned_codebooks.npz is missing"
    assert set(INDEX["entries"]) == {str(n) for n in TABLE}
    assert INDEX["version"] == learn.ALGORITHM_VERSION
    assert all(n in TABLE for n in range(4, 131)), sorted(set(range(4, 131)) - set(TABLE))
    assert sorted(TABLE) == list(range(4, max(TABLE) + 1)), "the shipped sizes are not contiguous from 4"


@pytest.mark.parametrize("n", sorted(TABLE))
def test_shipped_entry_exact_radius_and_ratio(n):
    p = TABLE[n]
    assert p.shape == (n, 3)
    err = np.abs(np.linalg.norm(p, axis=1) - 1.0)
    assert err.max() < 1e-12, f"max |norm - 1| {err.max():.3e} at row {err.argmax()}"
    entry = INDEX["entries"][str(n)]
    delta = Codebook(p).covering_radius()  # independent exact computation (codebook.py)
    assert abs(delta - entry["covering_radius"]) < 1e-12, (delta, entry)
    bound = fejes_toth_covering_radius(n)
    ratio = delta / bound
    assert abs(ratio - entry["ratio"]) < 1e-12
    assert ratio >= 1.0 - 1e-9, f"n={n}: ratio {ratio} below the Fejes Toth lower bound"
    if n <= 130:
        assert ratio <= RATIO_MAX_SMALL, f"n={n}: ratio {ratio:.5f}"
    # the learned codebook beats the Fibonacci spiral of the same size
    assert delta < Codebook(fibonacci(n).points).covering_radius() + 1e-12


def _delta(points) -> float:
    return Codebook(points).covering_radius()


#: Exact covering radii of the shipped table, computed once (codebook.py's exact algorithm).
DELTA = {n: _delta(p) for n, p in TABLE.items()}


@pytest.mark.parametrize("n", [n for n in sorted(TABLE) if n - 1 in TABLE])
def test_shipped_table_is_never_beaten_by_the_previous_size_plus_its_deepest_hole(n):
    prev = TABLE[n - 1]
    hole = Codebook(prev).deepest_hole()
    # the hole really is a deepest point of the previous codebook (independent brute-force check)
    ang = np.arctan2(np.linalg.norm(np.cross(prev, hole), axis=1), prev @ hole).min()
    assert abs(ang - DELTA[n - 1]) < 1e-12, f"n={n - 1}: hole at {ang}, covering radius {DELTA[n - 1]}"
    grown = _delta(np.vstack([prev, hole]))
    assert DELTA[n] <= grown + 1e-12, (
        f"learned({n}) = {np.degrees(DELTA[n]):.6f} deg is beaten by learned({n - 1}) + its deepest hole "
        f"= {np.degrees(grown):.6f} deg"
    )


def test_shipped_table_is_monotone():
    ns = sorted(TABLE)
    worst = max((DELTA[b] - min(DELTA[a] for a in ns if a < b), b) for b in ns[1:])
    assert worst[0] <= 1e-12, f"learned({worst[1]}) is worse than a smaller one by {worst[0]:.3e} rad"


def _families(n: int) -> dict[str, np.ndarray]:
    """Every codebook of the library with exactly n points (built here, independently of learn.py)."""
    from itertools import combinations

    from spherequant import codebook as cbm

    out = {"fibonacci": np.asarray(fibonacci(n).points), "pole_corrected": pole_corrected_fibonacci(n)}
    for level in range(6):
        if 10 * 4**level + 2 == n:
            out[f"icosahedral({level})"] = np.asarray(cbm.icosahedral(level).points)
    for i in range(1, 6):
        for j in range(i + 1):
            if 10 * (i * i + i * j + j * j) + 2 == n:
                out[f"geodesic({i},{j})"] = np.asarray(cbm.geodesic(i, j).points)
    for side in range(1, 10):
        if 12 * side * side == n:
            out[f"healpix({side})"] = np.asarray(cbm.healpix(side).points)
    solids = [cbm.tetrahedron, cbm.octahedron, cbm.cube, cbm.icosahedron, cbm.dodecahedron]
    for r in range(1, 6):
        for combo in combinations(solids, r):
            pts = np.concatenate([np.asarray(f().points) for f in combo])
            if len(pts) == n and len(np.unique(np.round(pts, 9), axis=0)) == n:
                out["+".join(f.__name__ for f in combo)] = pts
    return out


@pytest.mark.parametrize("n", sorted(TABLE))
def test_shipped_table_dominates_every_family_of_the_same_size(n):
    for name, pts in _families(n).items():
        other = _delta(pts)
        assert DELTA[n] <= other + 1e-12, f"n={n}: {name} {np.degrees(other):.6f} deg beats learned"


@pytest.mark.parametrize("n", [4, 6, 12])
def test_shipped_optima_reach_the_bound(n):
    delta = Codebook(TABLE[n]).covering_radius()
    gap = delta - fejes_toth_covering_radius(n)
    assert abs(gap) < 1e-6, f"n={n}: covering radius exceeds the bound by {gap:.3e} rad"


def test_minimax_codebook_serves_the_shipped_table(monkeypatch, tmp_path):
    monkeypatch.setenv("SPHEREQUANT_CACHE", str(tmp_path))
    monkeypatch.setattr(learn, "best_codebook", lambda *a, **k: pytest.fail("optimiser ran for a shipped n"))
    np.testing.assert_array_equal(minimax_codebook(12), TABLE[12])


# ----------------------------------------------------------------------------------------------------------
# optimiser and cache
# ----------------------------------------------------------------------------------------------------------
def test_minimax_small_run_deterministic_and_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("SPHEREQUANT_CACHE", str(tmp_path))
    opts = {"restarts": 2, "iterations": 30, "slp_iterations": 30, "seed": 3}
    a = minimax_codebook(9, **opts)
    files = list((tmp_path / "learned").glob("minimax_n9_*.npz"))
    assert len(files) == 1 and not list((tmp_path / "learned").glob("*.tmp*"))
    b = minimax_codebook(9, **opts, cache=False)  # recomputed from scratch
    np.testing.assert_array_equal(a, b)
    monkeypatch.setattr(learn, "best_codebook", lambda *a, **k: pytest.fail("cache miss"))
    np.testing.assert_array_equal(minimax_codebook(9, **opts), a)
    # improves on its own Fibonacci start (restart 0)
    assert Codebook(a).covering_radius() < Codebook(fibonacci(9).points).covering_radius()
    # a different key (other seed) is a different cache entry
    monkeypatch.undo()
    monkeypatch.setenv("SPHEREQUANT_CACHE", str(tmp_path))
    minimax_codebook(9, **{**opts, "seed": 4})
    assert len(list((tmp_path / "learned").glob("minimax_n9_*.npz"))) == 2


def test_corrupt_cache_entry_is_recomputed(monkeypatch, tmp_path):
    monkeypatch.setenv("SPHEREQUANT_CACHE", str(tmp_path))
    opts = {"restarts": 1, "iterations": 5, "slp_iterations": 5}
    a = minimax_codebook(7, **opts)
    (path,) = (tmp_path / "learned").glob("minimax_n7_*.npz")
    path.write_bytes(b"not an npz file")
    np.testing.assert_array_equal(minimax_codebook(7, **opts), a)


def test_kkt_polish_reaches_the_icosahedron_to_rounding(rng):
    ico = np.asarray(icosahedron().points)
    d0 = fejes_toth_covering_radius(12)
    start = _minimax.slp_phase(_unit(ico + 2e-3 * rng.normal(size=ico.shape)), 12, d0)
    gap0 = _delta(start) - d0
    polished = _minimax.kkt_polish(start, d0, steps=12)
    gap = _delta(polished) - d0
    # after a short SLP run the active set is identified; Newton on it converges to rounding
    assert gap0 > 1e-8 and abs(gap) < 1e-12, (gap0, gap)


def test_refine_never_worsens_its_start(rng):
    d0 = fejes_toth_covering_radius(20)
    for trial in range(3):
        p = _unit(rng.normal(size=(20, 3)))
        q = _minimax.refine(p, d0, iterations=3, slp_iterations=3)
        assert _delta(q) <= _delta(p) + 1e-12, f"trial {trial}"


def test_smooth_phase_lowers_many_holes_at_once():
    n = 700
    d0 = fejes_toth_covering_radius(n)
    p = _minimax.cap_centre_phase(pole_corrected_fibonacci(n), 10)
    q = _minimax.smooth_phase(p, d0, betas=(40.0, 80.0), rounds=2, max_iter=30)
    r0, r1 = _delta(p) / d0, _delta(q) / d0
    assert r1 < r0 - 0.02, (r0, r1)


@pytest.mark.slow
@pytest.mark.parametrize(("n", "limit"), [(1000, 1.03), (10_000, 1.09)])
def test_large_learned_codebooks_stay_close_to_the_fejes_toth_bound(n, limit):
    p = minimax_codebook(n, cache=False)  # default options (no LP steps; smooth phase and relaxed grids)
    ratio = _delta(p) / fejes_toth_covering_radius(n)
    assert ratio <= limit, f"n={n}: Fejes Toth ratio {ratio:.4f} > {limit}"


@pytest.mark.slow
@pytest.mark.parametrize("n", [4, 6, 12])
def test_optimiser_reaches_the_bound_from_scratch(n):
    p = minimax_codebook(n, cache=False)
    gap = Codebook(p).covering_radius() - fejes_toth_covering_radius(n)
    assert abs(gap) < 1e-6, f"n={n}: gap {gap:.3e} rad"


def test_hull_holes_match_exact_covering_radius(rng):
    _, centres, radii = hull_holes(np.concatenate([np.eye(3), -np.eye(3)]))
    assert abs(np.degrees(radii.max()) - 54.735610317245346) < 1e-9
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1.0, atol=1e-12)
    for k in (20, 200):
        p = _unit(rng.normal(size=(k, 3)))
        cb = Codebook(p)
        simp, centres, radii = hull_holes(p)
        # each cap centre is equidistant from its facet's three vertices and that distance is the radius
        ang = np.arctan2(
            np.linalg.norm(np.cross(centres[:, None], p[simp]), axis=-1),
            np.einsum("fd,fvd->fv", centres, p[simp]),
        )
        assert np.abs(ang - radii[:, None]).max() < 1e-9
        assert abs(radii.max() - cb.covering_radius()) < 1e-12


def test_pole_corrected_fibonacci_beats_fibonacci():
    for n in (100, 1000):
        p = pole_corrected_fibonacci(n)
        np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-12)
        r_pc = Codebook(p).fejes_toth_ratio()
        r_fib = fibonacci(n).fejes_toth_ratio()
        assert r_pc < 1.19 < 1.23 < r_fib, (n, r_pc, r_fib)
    # offset 0.5 is the standard spiral
    np.testing.assert_allclose(pole_corrected_fibonacci(50, offset=0.5), fibonacci(50).points, atol=1e-15)


# ----------------------------------------------------------------------------------------------------------
# spherical k-means
# ----------------------------------------------------------------------------------------------------------
def _clustered(rng, k=6, per=80):
    means = _unit(rng.normal(size=(k, 3)))
    x = np.concatenate([m + 0.15 * rng.normal(size=(per, 3)) for m in means])
    return x * rng.uniform(0.5, 3.0, size=(x.shape[0], 1))


def test_kmeans_deterministic_unit_and_fixed_point(rng):
    x = _clustered(rng)
    c1 = spherical_kmeans(x, 6, seed=1, iterations=200, tol=0.0)
    c2 = spherical_kmeans(x, 6, seed=1, iterations=200, tol=0.0)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_allclose(np.linalg.norm(c1, axis=1), 1.0, atol=1e-12)
    # at convergence each centre is the normalised mean of its cluster (independent recomputation)
    u = _unit(x)
    assign = brute_force_nearest(c1, u)
    for k in range(6):
        s = u[assign == k].sum(axis=0)
        err = np.linalg.norm(s / np.linalg.norm(s) - c1[k])
        assert err < 1e-12, f"centre {k}: distance {err:.3e} from its cluster's normalised mean"
    c3 = spherical_kmeans(torch.from_numpy(x), 6, seed=1, iterations=200, tol=0.0)
    np.testing.assert_array_equal(c3, c1)


def test_kmeans_finds_well_separated_clusters(rng):
    means = np.concatenate([np.eye(3), -np.eye(3)])
    x = np.concatenate([m + 0.05 * rng.normal(size=(50, 3)) for m in means])
    c = spherical_kmeans(x, 6, seed=0)
    err = np.abs(c @ means.T).max(axis=0)
    assert (err > 0.99).all(), f"worst recovered mean cosine {err.min():.4f}"


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: spherical_kmeans(np.eye(3), 4), ValueError, "distinct directions"),
        (lambda: spherical_kmeans(np.zeros((5, 3)), 2), ValueError, "zero vector"),
        (lambda: spherical_kmeans(np.eye(3), 0), ValueError, "n must be"),
        (lambda: spherical_kmeans(np.eye(3), 2, tol=-1.0), ValueError, "tol"),
        (lambda: spherical_kmeans(np.ones((4, 2)), 2), ValueError, r"\(\.\.\., 3\)"),
        (lambda: minimax_codebook(3), ValueError, "n must be"),
        (lambda: minimax_codebook(8.0), TypeError, "n must be an integer"),
        (lambda: minimax_codebook(8, restarts=0), ValueError, "restarts"),
        (lambda: pole_corrected_fibonacci(10, offset=2.0), ValueError, "offset"),
        (lambda: hull_holes(np.eye(3)), ValueError, "K >= 4"),
    ],
)
def test_bad_input_raises(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
