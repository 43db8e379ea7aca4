"""The table-free scan of NearestIndex (``method="scan"``, ``spherequant._capscan``) equals brute force.

Both of its certificates are tested on their own: the 3 x 3 block (default) and the cap scan that takes
the queries the block cannot certify (``use_block=False`` sends every query there). Negative controls
weaken each certificate and check that the same queries then catch wrong answers.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from _core_helpers import adversarial_queries, mismatch_report, unit
from hypothesis import given
from hypothesis import strategies as st

from spherequant import _capscan
from spherequant import codebook as cbm
from spherequant.lookup import (
    _SCALE32,
    _SCALE64,
    TABLE_AFTER,
    NearestIndex,
    _a_of_s,
    _checked_points,
    _numba_kernel,
    brute_force_nearest,
)

pytestmark = pytest.mark.skipif(_numba_kernel() is None, reason="the scan is compiled (numba)")


def _cube_edge_points():
    """Axes, cube-edge midpoints and cube corners: face coordinates of exactly 0 and +-1."""
    axes = np.concatenate([np.eye(3), -np.eye(3)])
    mids = [v for v in itertools.product((-1.0, 0.0, 1.0), repeat=3) if sum(map(abs, v)) == 2]
    corners = list(itertools.product((-1.0, 1.0), repeat=3))
    return unit(np.concatenate([axes, np.array(mids), np.array(corners)]))


def _codebooks():
    rng = np.random.default_rng(11)
    t = np.linspace(0.0, 2.0 * np.pi, 100, endpoint=False)
    lat = np.deg2rad(30.0)
    cap = unit(rng.normal(size=(500, 3)) * [0.15, 0.15, 0.0] + [0.0, 0.0, 1.0])
    hemi = unit(rng.normal(size=(400, 3)))
    hemi[:, 2] = np.abs(hemi[:, 2])
    base = unit(rng.normal(size=(40, 3)))
    near = unit(base + 1e-9 * rng.normal(size=base.shape))  # near-duplicates of base
    return {
        "fibonacci_25": np.asarray(cbm.fibonacci(25).points),
        "fibonacci_1000": np.asarray(cbm.fibonacci(1000).points),
        "fibonacci_4000": np.asarray(cbm.fibonacci(4000).points),
        "random_2000": unit(rng.normal(size=(2000, 3))),
        "icosahedral_3": np.asarray(cbm.icosahedral(3).points),
        "great_circle": np.stack([np.cos(t), np.sin(t), np.zeros_like(t)], 1),
        "small_circle": np.stack(
            [np.cos(lat) * np.cos(t), np.cos(lat) * np.sin(t), np.full_like(t, np.sin(lat))], 1
        ),
        "cap": cap,
        "hemisphere": hemi,
        "cluster": unit(rng.normal(size=(300, 3)) * 0.02 + [0.3, -0.2, 1.0]),
        "near_duplicates": np.concatenate([base, near]),
        "cube_edges": _cube_edge_points(),
    }


CODEBOOKS = _codebooks()


def _scan(points):
    pts, normerr = _checked_points(points)
    return _capscan.CapScan(pts, normerr, max(1, math.ceil(math.sqrt(len(pts) / 6.0))))


def _queries(points, scan, rng):
    """Adversarial queries (see ``adversarial_queries``) plus the scan grid's lines, ring included."""
    x = [adversarial_queries(points, scan.grid, rng)]
    g = scan.grid
    a = _a_of_s(np.arange(-1, g + 2) / g)  # every cell boundary, the outer ring's too
    aa, bb = np.meshgrid(a, np.linspace(-1.05, 1.05, 9), indexing="ij")
    for k in range(3):
        for sign in (1.0, -1.0):
            v = np.zeros((*aa.shape, 3))
            v[..., k], v[..., (k + 1) % 3], v[..., (k + 2) % 3] = sign, aa, bb
            x.append(v.reshape(-1, 3))
    x.append(points + 1e-7 * rng.normal(size=points.shape))
    return np.concatenate(x)


def _run(scan, x, *, use_block=True):
    out = np.empty(len(x), np.int64)
    scale = _SCALE32 if x.dtype == np.float32 else _SCALE64
    bad, first_zero, extreme, slow = scan.query(np.ascontiguousarray(x), out, scale, use_block=use_block)
    assert bad == 0 and first_zero == -1 and extreme == 0
    return out, slow


@pytest.mark.parametrize("use_block", [True, False], ids=["block", "cap"])
@pytest.mark.parametrize("name", sorted(CODEBOOKS))
def test_scan_equals_brute_force_on_adversarial_queries(name, use_block, float_dtype, rng):
    p = CODEBOOKS[name]
    scan = _scan(p)
    x = _queries(p, scan, rng).astype(float_dtype)
    got, _ = _run(scan, x, use_block=use_block)
    ref = brute_force_nearest(p, x)
    assert not mismatch_report(got, ref, x), f"{name}: " + mismatch_report(got, ref, x)


@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(25, 1500),
    spread=st.sampled_from([1.0, 0.2, 0.02]),
    density=st.sampled_from([0.25, 1.0, 4.0]),
)
def test_scan_property_random_codebooks(seed, k, spread, density):
    """Uniform to tightly clustered codebooks, any grid: every query, both dtypes, both certificates."""
    g = np.random.default_rng(seed)
    p = unit(g.normal(size=(k, 3)) * spread + g.normal(size=3))
    p = np.unique(p, axis=0)
    pts, normerr = _checked_points(p)
    scan = _capscan.CapScan(pts, normerr, max(1, math.ceil(math.sqrt(density * len(p) / 6.0))))
    x = np.concatenate([g.normal(size=(300, 3)), p, -p, p + 1e-9 * g.normal(size=p.shape)])
    for dt, use_block in itertools.product(("float32", "float64"), (True, False)):
        xd = x.astype(dt)
        got, _ = _run(scan, xd, use_block=use_block)
        ref = brute_force_nearest(p, xd)
        assert not mismatch_report(got, ref, xd), f"{dt}, block={use_block}: " + mismatch_report(got, ref, xd)


def test_block_certifies_almost_every_uniform_query(rng):
    """The fast path is what runs: on a uniform codebook the cap scan takes under 1 % of the queries, on
    a tight cluster most of them (and both stay exact)."""
    x = rng.normal(size=(20000, 3))
    scan = _scan(CODEBOOKS["fibonacci_4000"])
    _, slow = _run(scan, x)
    assert slow < 0.01 * len(x), f"{slow} of {len(x)} queries went to the cap scan"
    scan = _scan(CODEBOOKS["cluster"])
    got, slow = _run(scan, x)
    assert slow > 0.5 * len(x), f"only {slow} of {len(x)} queries needed the cap scan on a cluster"
    np.testing.assert_array_equal(got, brute_force_nearest(CODEBOOKS["cluster"], x))


@pytest.mark.parametrize("name", ["random_2000", "cap"])
def test_weakened_block_certificate_is_caught(name, rng):
    """Negative control: claim the block's edges are 10x farther (1 / (1 + a^2) times 100): some queries
    are then wrongly certified, and the comparison with brute force catches them."""
    p = CODEBOOKS[name]
    scan = _scan(p)
    scan._lines = scan._lines.copy()
    scan._lines[:, 1] *= 100.0
    x = rng.normal(size=(20000, 3))
    got, _ = _run(scan, x)
    assert (got != brute_force_nearest(p, x)).sum() > 0


def test_weakened_cap_certificate_is_caught(rng):
    """Negative control: a cap radius rule that ignores the gap (g3 = -1e-2) stops at the first cap."""
    p = CODEBOOKS["random_2000"]
    scan = _scan(p)
    (c0, c1, c2), e, dv = scan._columns("float64")
    x = rng.normal(size=(20000, 3))
    out = np.empty(len(x), np.int64)
    args = (scan._lines, scan._wblock, e, -1e-2, dv, scan._r0, *_SCALE64, False)
    _capscan.compiled("query")(x, scan.grid, scan.start, scan.order, c0, c1, c2, *args, out)
    assert (out != brute_force_nearest(p, x)).sum() > 0


def test_every_codeword_is_in_its_own_face_grid_and_near_faces_rings():
    """Bucket invariant behind both certificates: each codeword sits in its own face's grid and in the
    grid of every other face whose outer ring reaches it: a cube corner in three grids, an edge midpoint
    in two, an axis in one."""
    p = CODEBOOKS["cube_edges"]
    scan = _scan(p)
    e = scan.grid + 2
    held = {i: [] for i in range(len(p))}
    for u in range(6 * e * e):
        for t in range(scan.start[u], scan.start[u + 1]):
            held[int(scan.order[t])].append(divmod(u, e * e))
    for i, v in enumerate(p):
        own = 2 * int(np.argmax(np.abs(v))) + int(v[np.argmax(np.abs(v))] < 0)
        assert own in [f for f, _ in held[i]], f"codeword {v} not in its face {own}'s grid"
        assert len(held[i]) == len({f for f, _ in held[i]}), "a codeword twice in one face grid"
    nonzero = (np.abs(p) > 0.1).sum(axis=1)
    assert [len(held[i]) for i in range(len(p))] == nonzero.tolist()


def test_auto_scans_then_builds_the_table_once_it_pays(rng):
    p = CODEBOOKS["random_2000"]
    index = NearestIndex(p)
    x = rng.normal(size=(1000, 3))
    ref = brute_force_nearest(p, x)
    np.testing.assert_array_equal(index.query(x), ref)
    assert index.answered_by_scan == 1000 and not index._tables
    big = rng.normal(size=(int(TABLE_AFTER * len(p)), 3))
    np.testing.assert_array_equal(index.query(big), brute_force_nearest(p, big))
    assert "float64" in index._tables and index.answered_by_scan == 1000
    np.testing.assert_array_equal(index.query(x, method="scan"), ref)
    assert index.answered_by_scan == 2000
    with pytest.raises(ValueError, match="method"):
        index.query(x, method="fast")


def test_scan_needs_the_compiled_kernels(monkeypatch, rng):
    import spherequant.lookup as lk

    monkeypatch.setattr(lk, "_numba_kernel", lambda width=8: None)
    index = NearestIndex(CODEBOOKS["random_2000"])
    with pytest.raises(ValueError, match="method 'scan' needs"):
        index.query(rng.normal(size=(5, 3)), method="scan")
    x = rng.normal(size=(50, 3))
    np.testing.assert_array_equal(index.query(x), brute_force_nearest(CODEBOOKS["random_2000"], x))
