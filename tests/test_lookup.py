"""Fast exact nearest-codeword search (spherequant.lookup) against brute force on adversarial queries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _core_helpers import adversarial_queries as _adversarial
from _core_helpers import mismatch_report as _report
from _core_helpers import unit as _unit
from _scripts import load_script
from hypothesis import given
from hypothesis import strategies as st
from scipy.spatial import ConvexHull

from spherequant import codebook as cbm
from spherequant.lookup import (
    _FILTER_SCALE,
    _SCALE32,
    _SCALE64,
    NearestIndex,
    _a_of_s,
    _keinert_guess,
    _numba_kernel,
    brute_force_nearest,
    cube_cell,
    fibonacci_nearest,
)

HAVE_NUMBA = _numba_kernel() is not None


def _codebooks():
    rng = np.random.default_rng(7)
    hemi = _unit(rng.normal(size=(300, 3)))
    hemi[:, 2] = np.abs(hemi[:, 2])
    cluster = _unit(rng.normal(size=(200, 3)) * 0.05 + np.array([0.3, -0.2, 1.0]))
    octa = np.concatenate([np.eye(3), -np.eye(3)])
    return {
        "single": np.array([[0.0, 0.6, 0.8]]),
        "antipodal_pair": np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]),
        "octahedron": octa,
        "icosahedron": np.asarray(cbm.icosahedron().points),
        "fibonacci_1000": np.asarray(cbm.fibonacci(1000).points),
        "random_2000": _unit(rng.normal(size=(2000, 3))),
        "hemisphere": hemi,
        "cluster": cluster,
        "icosahedral_3": np.asarray(cbm.icosahedral(3).points),
    }


CODEBOOKS = _codebooks()


@pytest.mark.parametrize("name", sorted(CODEBOOKS))
def test_index_equals_brute_force_numpy_and_torch(name, float_dtype, rng):
    p = CODEBOOKS[name]
    index = NearestIndex(p)
    x = _adversarial(p, index.grid, rng).astype(float_dtype)
    ref = brute_force_nearest(p, x)
    got = index.query(x, backend="numpy")
    assert not _report(got, ref, x), _report(got, ref, x)
    got_t = index.query(torch.from_numpy(x))
    assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.int64
    assert not _report(got_t.numpy(), ref, x), _report(got_t.numpy(), ref, x)
    if HAVE_NUMBA:
        for method in ("table", "scan"):
            got_n = index.query(x, backend="numba", method=method)
            assert not _report(got_n, ref, x), f"{method}: " + _report(got_n, ref, x)


@pytest.mark.parametrize("name", ["octahedron", "fibonacci_1000", "cluster"])
def test_brute_force_reference_is_nearest_by_angle(name, float_dtype, rng):
    """Independent check of the reference itself: float64 angles, tolerance set by the query dtype."""
    p = CODEBOOKS[name]
    x = _adversarial(p, 4, rng).astype(float_dtype)
    idx = brute_force_nearest(p, x)
    u = _unit(x.astype(np.float64))
    ang = np.arctan2(np.linalg.norm(np.cross(u[:, None], p[None]), axis=-1), u @ p.T)
    excess = ang[np.arange(len(x)), idx] - ang.min(axis=1)
    tol = 2e-3 if float_dtype == "float32" else 1e-7  # angle error from dot rounding ~ sqrt(eps)
    assert excess.max() <= tol, f"max excess {excess.max():.3e} at {x[excess.argmax()]}"


def test_exact_ties_go_to_lowest_index():
    octa = np.concatenate([np.eye(3), -np.eye(3)])  # order: +x, +y, +z, -x, -y, -z
    x = np.array([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0], [0.0, -1.0, -1.0], [-1.0, 1.0, 0.0], [1.0, 0.0, -1.0]])
    expect = [0, 3, 4, 1, 0]
    index = NearestIndex(octa)
    assert brute_force_nearest(octa, x).tolist() == expect
    assert index.query(x).tolist() == expect
    assert index.query(torch.tensor(x, dtype=torch.float32)).tolist() == expect


@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 400), density=st.sampled_from([0.3, 1.0, 3.0]))
def test_index_property_random_codebooks(seed, k, density):
    g = np.random.default_rng(seed)
    p = _unit(g.normal(size=(k, 3)))
    index = NearestIndex(p, density=density)
    x = np.concatenate([g.normal(size=(300, 3)), p, -p])
    for dt in ("float32", "float64"):
        xd = x.astype(dt)
        ref = brute_force_nearest(p, xd)
        for method in ("scan", "table") if HAVE_NUMBA else ("auto",):
            got = index.query(xd, method=method)
            assert not _report(got, ref, xd), f"{method}: " + _report(got, ref, xd)


def test_batch_shape_device_and_kinds(rng):
    p = CODEBOOKS["random_2000"]
    index = NearestIndex(p)
    x = rng.normal(size=(4, 5, 3))
    out = index.query(x)
    assert out.shape == (4, 5) and out.dtype == np.int64
    t = index.query(torch.tensor(x, dtype=torch.float64, requires_grad=True))
    assert t.shape == (4, 5) and t.device.type == "cpu"
    np.testing.assert_array_equal(t.numpy(), out)
    h = index.query(torch.tensor(x, dtype=torch.float16))  # computed in float32
    assert h.shape == (4, 5)
    assert index.query(np.zeros((0, 3))).shape == (0,)
    assert index.query(torch.from_numpy(x), backend="torch").shape == (4, 5)
    np.testing.assert_array_equal(index.query(x, backend="torch"), out)


def test_candidate_lists_are_small_and_grid_cells_are_consistent(rng):
    p = np.asarray(cbm.fibonacci(16384).points)
    index = NearestIndex(p)
    s = index.stats()
    assert s["cells"] == 6 * index.grid**2
    assert s["mean_candidates"] < 8 and s["max_candidates"] <= 16, s
    # the cell of each face centre is the middle cell of that face
    g = 5
    cells = cube_cell(np.concatenate([np.eye(3), -np.eye(3)]), g)
    assert cells.tolist() == [f * g * g + 2 * g + 2 for f in (0, 2, 4, 1, 3, 5)]
    # torch and numpy cell maps agree everywhere (including face boundaries)
    x = _adversarial(p[:50], g, rng)
    np.testing.assert_array_equal(cube_cell(torch.from_numpy(x), g).numpy(), cube_cell(x, g))


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: NearestIndex(np.zeros((0, 3))), ValueError, "at least one"),
        (lambda: NearestIndex(np.ones((4, 2))), ValueError, r"\(\.\.\., 3\)"),
        (lambda: NearestIndex(np.ones((3, 3))), ValueError, "unit vectors"),
        (lambda: NearestIndex(np.eye(3), grid=0), ValueError, "grid"),
        (lambda: NearestIndex(np.eye(3), density=-1.0), ValueError, "density"),
        (lambda: NearestIndex(np.eye(3)).query(np.zeros(3)), ValueError, "zero vector"),
        (lambda: NearestIndex(np.eye(3)).query(np.array([[1.0, np.nan, 0.0]])), ValueError, "NaN"),
        (lambda: NearestIndex(np.eye(3)).query("abc"), TypeError, "x"),
        (lambda: NearestIndex(np.eye(3)).query(np.eye(3), backend="gpu"), ValueError, "backend"),
        (lambda: NearestIndex(np.eye(3)).query(torch.zeros(2, 3)), ValueError, "zero vector"),
        (lambda: fibonacci_nearest(np.eye(3), 0), ValueError, "n must be"),
        (lambda: fibonacci_nearest(np.zeros((2, 3)), 10), ValueError, "zero vector"),
        (lambda: cube_cell(np.eye(3), 0), ValueError, "grid"),
    ],
)
def test_bad_input_raises(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
def test_numba_kernel_flags_zero_rows():
    with pytest.raises(ValueError, match="flat row 1"):
        NearestIndex(np.eye(3)).query(np.array([[1.0, 0, 0], [0, 0, 0]]), backend="numba")


# ----------------------------------------------------------------------------------------------------------
# compiled kernels: float32 pre-selection, packed rows, extreme scales
# ----------------------------------------------------------------------------------------------------------
def _near_ties(p, scale):
    """Points on the bisector of each Delaunay edge (i, j), nudged by +-scale towards c_j."""
    simp = ConvexHull(p).simplices
    e = np.unique(np.sort(np.concatenate([simp[:, [0, 1]], simp[:, [1, 2]], simp[:, [2, 0]]]), 1), axis=0)
    mid = _unit(p[e[:, 0]] + p[e[:, 1]])
    step = (p[e[:, 1]] - p[e[:, 0]]) * scale
    return np.concatenate([mid, mid + step, mid - step])


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
def test_float32_preselection_defers_near_ties_to_float64():
    """Near-ties below float32 resolution must be settled by the exact float64 re-check.

    The nudge (1e-10) flips the float64 winner but is invisible in float32: a float32-only decision
    disagrees with brute force on many of these queries, so this test fails without the re-check.
    """
    p = CODEBOOKS["fibonacci_1000"]
    index = NearestIndex(p)
    x = _near_ties(p, 1e-10)
    ref = brute_force_nearest(p, x)
    float32_only = brute_force_nearest(p, x.astype(np.float32))
    assert (float32_only != ref).sum() > 50, "the near-tie queries do not separate float32 from float64"
    got = index.query(x, backend="numba")
    assert not _report(got, ref, x), _report(got, ref, x)
    t = index.table("float64")
    rf, ri, w = t.packed(index.points)
    out = np.empty(len(x), dtype=np.int64)
    pts = index.points
    res = _numba_kernel(w)["filter"](x, index.grid, rf, ri, w, False, pts, t.indptr, t.indices, out)
    bad, first_zero, extreme, rechecked = res
    assert (bad, first_zero, extreme) == (0, -1, 0)
    assert rechecked >= (float32_only != ref).sum(), f"only {rechecked} re-checks"
    np.testing.assert_array_equal(out, ref)
    # random queries almost never need the re-check (it is the rare slow path)
    xr = np.random.default_rng(3).normal(size=(20000, 3))
    out = np.empty(len(xr), dtype=np.int64)
    kernel = _numba_kernel(w)["filter"]
    rechecked = kernel(xr, index.grid, rf, ri, w, False, pts, t.indptr, t.indices, out)[3]
    assert rechecked < 0.01 * len(xr), f"{rechecked} re-checks of {len(xr)} random queries"
    np.testing.assert_array_equal(out, brute_force_nearest(p, xr))


def test_filter_threshold_bounds_float32_dot_error():
    """Independent check of the pre-selection error bound: float32 dot of (t, c) vs exact, |t_i| <= 1.

    The threshold is twice the per-dot bound 5 u32 |t| (plus float64 terms); here each float32 dot must
    stay within half of it. Exact products via Python fractions of the float64 inputs.
    """
    from fractions import Fraction

    g = np.random.default_rng(11)
    c = _unit(g.normal(size=(400, 3)))
    t = g.normal(size=(400, 3))
    t /= np.abs(t).max(axis=1, keepdims=True)  # scaled as in the kernel: largest |t_i| == 1
    t[:100, 1:] *= 1e-3  # near the face centres too
    t32, c32 = t.astype(np.float32), c.astype(np.float32)
    d32 = (t32[:, 0] * c32[:, 0] + t32[:, 1] * c32[:, 1]) + t32[:, 2] * c32[:, 2]
    exact = np.array([float(sum(Fraction(a) * Fraction(b) for a, b in zip(ti, ci))) for ti, ci in zip(t, c)])
    err = np.abs(d32.astype(np.float64) - exact) / np.linalg.norm(t, axis=1)
    bound = _FILTER_SCALE / 2.0
    assert err.max() <= bound, f"max err {err.max():.3e} > bound {bound:.3e} at t = {t[err.argmax()]}"
    assert err.max() >= 0.05 * bound, f"bound {bound:.3e} far from the observed {err.max():.3e}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_extreme_scales_equal_brute_force(dtype, rng):
    """Huge, tiny and subnormal queries (dot products under/overflow) still equal brute force."""
    p = CODEBOOKS["fibonacci_1000"]
    index = NearestIndex(p)
    u = _unit(rng.normal(size=(300, 3)))
    lo, hi = _SCALE32 if dtype == "float32" else _SCALE64
    fmax, tiny = np.finfo(dtype).max, np.finfo(dtype).smallest_subnormal
    scales = [hi * 0.5, hi * 2.0, lo * 2.0, lo * 0.5, fmax / 4, tiny * 64]
    x = np.concatenate([u * s for s in scales] + [np.array([[1.0, 1e-30, 0.0], [tiny, 0.0, -tiny]])])
    x = x.astype(dtype)
    assert np.isfinite(x).all() and not (x == 0).all(axis=1).any()
    ref = brute_force_nearest(p, x)
    runs = [("numpy", "auto"), ("torch", "auto")]
    runs += [("numba", "table"), ("numba", "scan")] if HAVE_NUMBA else []
    for backend, method in runs:
        got = index.query(x, backend=backend, method=method)
        assert not _report(got, ref, x), f"{backend}/{method}: " + _report(got, ref, x)


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
def test_packed_rows_layout():
    p = CODEBOOKS["random_2000"]
    index = NearestIndex(p)
    for dtype in ("float32", "float64"):
        t = index.table(dtype)
        rf, ri, w = t.packed(index.points)
        assert w % 4 == 0 and w >= max(8, t.width) and rf.ctypes.data % 64 == 0
        rows, ints = rf.reshape(-1, 4 * w), ri.reshape(-1, 4 * w)
        counts = np.diff(t.indptr)
        assert rows.shape[0] == counts.size
        for c in np.random.default_rng(0).choice(counts.size, 50, replace=False):
            cand = t.indices[t.indptr[c] : t.indptr[c + 1]]
            k = cand.size
            np.testing.assert_array_equal(ints[c, 3 * w : 4 * w], np.r_[cand, [cand[0]] * (w - k)])
            for axis in range(3):
                expect = p[cand, axis].astype(np.float32)
                np.testing.assert_array_equal(rows[c, axis * w : axis * w + k], expect)
                assert np.isnan(rows[c, axis * w + k : (axis + 1) * w]).all()


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("method", ["table", "scan"])
@pytest.mark.parametrize("name", ["octahedron", "random_2000"])
def test_numba_bad_rows_and_float32_ties(method, name):
    index = NearestIndex(CODEBOOKS[name])
    for dtype in ("float32", "float64"):
        x = np.ones((200, 3), dtype=dtype)
        for bad in (np.nan, np.inf, -np.inf):
            x[137, 1] = bad
            with pytest.raises(ValueError, match="NaN or infinite"):
                index.query(x, backend="numba", method=method)
        x[137, 1] = 0.0
        x[[90, 150]] = 0.0
        with pytest.raises(ValueError, match="flat row 90"):
            index.query(x, backend="numba", method=method)
    octa = CODEBOOKS["octahedron"]  # order: +x, +y, +z, -x, -y, -z
    x = np.array([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0], [0.0, -1.0, -1.0], [-1.0, 1.0, 0.0], [1.0, 0.0, -1.0]])
    for dtype in ("float32", "float64"):
        got = NearestIndex(octa).query(x.astype(dtype), backend="numba", method=method)
        assert got.tolist() == [0, 3, 4, 1, 0]


# ----------------------------------------------------------------------------------------------------------
# Fibonacci inverse mapping
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 12, 100, 1000, 20000])
def test_fibonacci_nearest_equals_brute_force(n, float_dtype, rng):
    p = np.asarray(cbm.fibonacci(n).points)
    x = _adversarial(p if n <= 1000 else p[::7], 3, rng).astype(float_dtype)
    ref = brute_force_nearest(p, x)
    got = fibonacci_nearest(x, n)
    assert not _report(got, ref, x), _report(got, ref, x)
    got_t = fibonacci_nearest(torch.from_numpy(x), n)
    assert isinstance(got_t, torch.Tensor)
    assert not _report(got_t.numpy(), ref, x), _report(got_t.numpy(), ref, x)


def test_keinert_lattice_guess_float64_exact_float32_fails_for_large_n(rng):
    """The O(1) lattice step alone is (almost always) right in float64 and breaks down in float32.

    This is why fibonacci_nearest upcasts queries to float64 for the lattice step.
    """
    n = 100_000
    p = np.asarray(cbm.fibonacci(n).points)
    u = _unit(rng.normal(size=(3000, 3)))
    ref = brute_force_nearest(p, u)
    miss64 = float(np.mean(_keinert_guess(u, n) != ref))
    miss32 = float(np.mean(_keinert_guess(u, n, np.float32) != ref))
    assert miss64 <= 1e-3, f"float64 lattice guess misses {miss64:.2%}"
    assert miss32 >= 0.1, f"float32 lattice guess misses only {miss32:.2%} (expected a precision failure)"
    # the public function is exact for float32 queries anyway (float64 lattice step + certified walk)
    u32 = u.astype(np.float32)
    np.testing.assert_array_equal(fibonacci_nearest(u32, n), brute_force_nearest(p, u32))


# ----------------------------------------------------------------------------------------------------------
# compiled path by default, its on-disk cache, and the fallback without numba
# ----------------------------------------------------------------------------------------------------------
def test_numba_is_a_core_dependency_and_the_default_path(monkeypatch, rng):
    import importlib.metadata
    import platform

    reqs = importlib.metadata.requires("spherequant") or []
    core = [r for r in reqs if r.startswith("numba") and "extra ==" not in r]
    assert core, f"numba is not an unconditional requirement: {reqs}"
    if platform.python_implementation() != "CPython":
        pytest.skip("numba is required on CPython only")
    assert HAVE_NUMBA, "numba is a core dependency on CPython but cannot be imported"
    import spherequant.lookup as lk

    calls = []
    orig_table, orig_scan = NearestIndex._query_numba, NearestIndex._query_scan

    def spy_table(self, flat, t):
        calls.append(("table", flat.shape))
        return orig_table(self, flat, t)

    def spy_scan(self, flat):
        calls.append(("scan", flat.shape))
        return orig_scan(self, flat)

    monkeypatch.setattr(NearestIndex, "_query_numba", spy_table)
    monkeypatch.setattr(NearestIndex, "_query_scan", spy_scan)
    p = CODEBOOKS["random_2000"]
    book = cbm.Codebook(p)
    x = rng.normal(size=(500, 3))
    got = book.nearest(x)  # the library's entry point, default options
    assert calls == [("scan", (500, 3))], f"default numpy path did not use the compiled scan: {calls}"
    np.testing.assert_array_equal(got, brute_force_nearest(p, x))
    # once the queries answered reach TABLE_AFTER per codeword, the same index builds its table
    big = rng.normal(size=(int(lk.TABLE_AFTER * len(p)), 3))
    np.testing.assert_array_equal(book.nearest(big), brute_force_nearest(p, big))
    np.testing.assert_array_equal(book.nearest(x), got)
    assert [c[0] for c in calls] == ["scan", "table", "table"], calls
    assert lk._numba_build() is not None


def _tables_equal(a, b):
    return np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("name", sorted(CODEBOOKS))
def test_compiled_construction_equals_numpy_construction(name):
    p = CODEBOOKS[name]
    for density in (0.3, 1.0, 3.0):
        index = NearestIndex(p, density=density)
        for dtype in ("float32", "float64"):
            eps = float(np.finfo(dtype).eps)
            fast, slow = index._build(eps), index._build_numpy(eps)
            assert _tables_equal(fast, slow), f"{name} density={density} {dtype}: candidate lists differ"


def _bucket_edge_points(grid: int, sub: int) -> np.ndarray:
    """Directions on the edges of the construction's buckets (``sub`` per cell edge), all six faces."""
    s = np.arange(sub * grid + 1) / (sub * grid)
    av = _a_of_s(s)
    mid = _a_of_s((np.arange(sub * grid) + 0.5) / (sub * grid))
    qs = []
    for k in range(3):
        for sign in (1.0, -1.0):
            for ga, gb in (np.meshgrid(av, av, indexing="ij"), np.meshgrid(av, mid, indexing="ij")):
                v = np.zeros((*ga.shape, 3))
                v[..., k] = sign
                v[..., (k + 1) % 3] = ga
                v[..., (k + 2) % 3] = gb
                qs.append(v.reshape(-1, 3))
    return np.concatenate(qs)


def _build_codebooks(n: int, seed: int) -> dict:
    g = np.random.default_rng(seed)
    lumpy = _unit(np.concatenate([g.normal(size=(n // 2, 3)), g.normal(size=(n - n // 2, 3)) * 0.2 + 1.0]))
    off_unit = _unit(g.normal(size=(n, 3))) * (1.0 + g.uniform(-9e-7, 9e-7, size=(n, 1)))
    return {
        "off_unit": off_unit,  # norms up to 9e-7 from 1 (validation accepts 1e-6): the margins cover them
        "fibonacci": np.asarray(cbm.fibonacci(n).points),
        "random": _unit(g.normal(size=(n, 3))),
        "lumpy": lumpy,  # half the codewords crowded around (1, 1, 1): blocks fail, the fallback answers
    }


@pytest.mark.parametrize("n", [50, 700, 2500])
def test_build_gives_brute_force_nearest_on_adversarial_queries(n, float_dtype):
    """The candidate tables (compiled block construction and numpy construction) answer every adversarial
    query exactly as brute force does, ties (Voronoi vertices and edges, codewords) to the lowest index."""
    rng = np.random.default_rng(n)
    for name, p in _build_codebooks(n, n).items():
        index = NearestIndex(p)
        x = np.concatenate([_adversarial(p, index.grid, rng), _bucket_edge_points(index.grid, 2)])
        x = x.astype(float_dtype)
        ref = brute_force_nearest(p, x)
        got = index.query(x)  # default path: compiled construction and kernel where numba is installed
        assert not _report(got, ref, x), f"{name} n={n}: " + _report(got, ref, x)
        got = index.query(x, backend="numpy")
        assert not _report(got, ref, x), f"{name} n={n} numpy: " + _report(got, ref, x)
        if HAVE_NUMBA:
            dtype = "float64" if float_dtype == "float64" else "float32"
            slow = index._build_numpy(float(np.finfo(dtype).eps))
            assert _tables_equal(index.table(dtype), slow), f"{name} n={n} {dtype}: lists differ from numpy"


@pytest.mark.slow
def test_build_gives_brute_force_nearest_at_16384(rng):
    p = np.asarray(cbm.fibonacci(16384).points)
    index = NearestIndex(p)
    x = np.concatenate([_adversarial(p, index.grid, rng), _bucket_edge_points(index.grid, 2)])
    for dt in (np.float32, np.float64):
        xd = x.astype(dt)
        ref = brute_force_nearest(p, xd)
        got = index.query(xd)
        assert not _report(got, ref, xd), _report(got, ref, xd)


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("sub", [1, 2, 3])
def test_block_certificate_holds_every_undominated_codeword(sub):
    """Where ``_block_dots`` certifies a block, every codeword that the block's p* does not dominate (found
    over all codewords, independently) is in the block, and p* is the global one (lowest index on ties)."""
    import spherequant.lookup as lk

    lk._numba_build()
    eps = float(np.finfo(np.float64).eps)
    tau = 32.0 * eps
    checked = 0
    for name, p in [*_build_codebooks(3000, 5).items(), ("octahedron", CODEBOOKS["octahedron"])]:
        g = NearestIndex(p).grid
        slack = 1.0 / (1.0 + float(np.abs(np.linalg.norm(p, axis=1) - 1.0).max()))
        edge_lo, edge_hi = lk._edges(g, 64.0 * eps)
        hmin, hmax = sub, 3 * sub
        ea, local, cos_min = lk._position_tables(g, sub, hmax, hmin, edge_lo, edge_hi)
        bucket = lk._face_buckets(p, sub * g, hmax, max(ea[-1], -ea[0]) * (1.0 + 1e-9) + 1e-9)
        big = len(p) * 3 + 8
        cd, ids = np.empty((5, big)), np.empty(big, np.int64)
        rng = np.random.default_rng(sub)
        for cell in rng.choice(6 * g * g, size=min(300, 6 * g * g), replace=False):
            face, rest = divmod(int(cell), g * g)
            i, j = divmod(rest, g)
            corner = np.empty((4, 3))
            lk._cell_centre(face, edge_lo[i], edge_hi[i], edge_lo[j], edge_hi[j], corner)
            k, sign = face // 2, (1.0 if face % 2 == 0 else -1.0)  # the per-position table, bit for bit
            perm = np.empty((4, 3))
            perm[:, k], perm[:, (k + 1) % 3], perm[:, (k + 2) % 3] = (
                sign * local[i, j, :, 0],
                *local[i, j, :, 1:].T,
            )
            assert np.array_equal(perm, corner), (
                f"{name} cell {cell}: corner table differs from the cell's corners"
            )
            for t, h in enumerate((hmin, hmax)):
                n, w = lk._block_dots(
                    corner, face, i, j, h, g, sub, hmax, bucket, cos_min[t], tau, slack, cd, ids
                )
                if n < 0:
                    continue
                allcd = (corner[:, None, 0] * p[None, :, 0] + corner[:, None, 1] * p[None, :, 1]) + corner[
                    :, None, 2
                ] * p[None, :, 2]  # (4, K)
                star = int(np.argmax(allcd.min(axis=0)))  # first = lowest index among ties
                assert ids[w] == star, f"{name} cell {cell} h={h}: block p* {ids[w]}, global {star}"
                free = np.nonzero(~(allcd[:, star][:, None] - allcd > tau).all(axis=0))[0]
                missing = np.setdiff1d(free, ids[:n])
                assert missing.size == 0, f"{name} cell {cell} h={h}: block lacks undominated {missing[:5]}"
                checked += 1
    assert checked > 300, f"only {checked} certified blocks checked"


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
def test_candidate_lists_do_not_depend_on_block_sizes(monkeypatch):
    """Blocks of every size (and the voxel fallback where small blocks cannot be certified) give the same
    lists as the numpy construction."""
    import spherequant.lookup as lk

    books = {
        **_build_codebooks(2000, 3),
        "hemisphere": CODEBOOKS["hemisphere"],
        "cluster": CODEBOOKS["cluster"],
    }
    for name, p in books.items():
        index = NearestIndex(p)
        slow = index._build_numpy(float(np.finfo(np.float64).eps))
        for sub, margin in ((1, -0.6), (1, 0.95), (2, -0.6), (2, 0.7), (3, 0.4)):
            monkeypatch.setattr(lk, "_SUB", sub)
            monkeypatch.setattr(lk, "_MARGIN", margin)
            fast = index._build(float(np.finfo(np.float64).eps))
            assert _tables_equal(fast, slow), f"{name} sub={sub} margin={margin}: lists differ"


def test_fallback_without_numba_equals_brute_force(monkeypatch, rng):
    import spherequant.lookup as lk

    monkeypatch.setattr(lk, "_numba", None)
    assert lk._numba_kernel() is None and lk._numba_build() is None and lk._numba_pack() is None
    for name in ("random_2000", "cluster", "octahedron"):
        p = CODEBOOKS[name]
        index = NearestIndex(p)
        for dtype in (np.float32, np.float64):
            x = rng.normal(size=(3000, 3)).astype(dtype)
            got = index.query(x)  # "auto" without numba: vectorised numpy
            ref = brute_force_nearest(p, x)
            assert not _report(got, ref, x), f"{name} {dtype}: " + _report(got, ref, x)
        if HAVE_NUMBA:
            monkeypatch.undo()
            compiled = NearestIndex(p).table("float64")
            monkeypatch.setattr(lk, "_numba", None)
            assert _tables_equal(compiled, index.table("float64"))
            rf, ri, w = index.table("float64").packed(index.points)  # numpy fill of the packed rows
            rf2, ri2, w2 = compiled.packed(index.points)
            assert w == w2 and np.array_equal(ri, ri2) and np.array_equal(rf, rf2, equal_nan=True)


@pytest.mark.parametrize("k", [5, 300, 20_000])
def test_repeated_codeword_is_refused_naming_the_first_repeat(monkeypatch, rng, k):
    """The compiled voxel-hash test (K > 256) and numpy's unique (K <= 256, or without numba) agree."""
    import spherequant.lookup as lk

    p = rng.normal(size=(k, 3))
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    NearestIndex(p)  # distinct: accepted
    q = p.copy()
    q[k - 1] = q[1]  # the later copy is the repeat
    q[k // 2] = q[k // 3] if k // 2 != k // 3 else q[0]
    expect = min(k - 1, k // 2)
    with pytest.raises(ValueError, match=rf"points must not repeat a codeword: row {expect} repeats"):
        NearestIndex(q)
    monkeypatch.setattr(lk, "_numba", None)
    with pytest.raises(ValueError, match=rf"row {expect} repeats"):
        NearestIndex(q)
    # a difference in the last bit is not a repeat for the index (it is a distinct codeword)
    r = p.copy()
    r[k - 1] = np.nextafter(p[1], 2.0)
    monkeypatch.undo()
    assert NearestIndex(r).points.shape == (k, 3)


_CACHE_PROBE = """
import time, numpy as np
from spherequant import _capscan
from spherequant.lookup import NearestIndex, _numba_kernel, _numba_build, _numba_repeat
t0 = time.perf_counter()
index = NearestIndex(np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [-0.6, -0.8, 0.0]]))
for method in ("table", "scan"):
    index.query(np.ones((5, 3)), method=method)
    index.query(np.ones((5, 3), np.float32), method=method)
big = np.random.default_rng(0).normal(size=(400, 3))
big_index = NearestIndex(big / np.linalg.norm(big, axis=1, keepdims=True))
big_index.query(np.ones((5, 3)), method="table")
big_index.query(np.ones((5, 3)), method="scan")
seconds = time.perf_counter() - t0
scan = [_capscan.compiled("buckets"), _capscan.compiled("query")]
scan += [getattr(_capscan, s) for s in _capscan._CALLED_STEPS]
fns = [_numba_build(), _numba_repeat(), *_numba_kernel(8).values(), *scan]
misses = sum(sum(f.stats.cache_misses.values()) for f in fns)
hits = sum(sum(f.stats.cache_hits.values()) for f in fns)
print(misses, hits, seconds)
"""


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
def test_second_process_loads_the_compiled_kernels_from_disk(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba"), "OMP_NUM_THREADS": "1"}
    runs = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", _CACHE_PROBE], env=env, capture_output=True, text=True, check=True
        )
        misses, hits, seconds = out.stdout.split()
        runs.append((int(misses), int(hits), float(seconds)))
    (m1, h1, s1), (m2, h2, s2) = runs
    assert m1 >= 7 and h1 == 0, f"first process should compile: {runs}"
    assert m2 == 0 and h2 >= 7, f"second process compiled again: {runs}"
    assert s2 < s1, f"loading from the cache was not faster than compiling: {runs}"


def test_results_page_renders_lookup_benchmark_as_numbers(tmp_path):
    """The docs' Results page shows the lookup benchmark's per-method figures as numbers, not dicts."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    gen = load_script("docs/generate_results.py", name="_gen_results")
    rows = json.loads((root / "benchmarks" / "results" / "lookup.json").read_text())["cpu"]
    table = gen.records_table(rows)
    cells = [c.strip() for line in table.splitlines()[2:] for c in line.strip("|").split("|")]
    assert cells and not [c for c in cells if c.startswith(("{", "["))], table[:500]
    header = table.splitlines()[0]
    assert "index_numba.ratio_vs_cKDTree" in header and "build_query.index_default.ratio_vs_cKDTree" in header


def test_codebook_page_lookup_summary_renders_numbers():
    """docs/codebooks.md includes the lookup summary: ratios as numbers, one row per codebook size."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    gen = load_script("docs/generate_results.py", name="_gen_results2")
    data = json.loads((root / "benchmarks" / "results" / "lookup.json").read_text())
    table = [line for line in gen.lookup_summary_table(root).splitlines() if line.startswith("| ")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    col = header.index("build + 10^5 queries (default) vs cKDTree")
    lines = table[1:]
    assert len(lines) == len(data["cpu"])
    for line, row in zip(lines, data["cpu"], strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert int(cells[0]) == row["n"]
        ratio = row["build_query"]["index_default"]["ratio_vs_cKDTree"]
        assert float(cells[col]) == pytest.approx(ratio, rel=1e-3), (cells, ratio)
