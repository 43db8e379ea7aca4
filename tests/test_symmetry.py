"""Finite rotation groups and codebook symmetry groups (spherequant.symmetry).

Enforces the exact-commutation statement of proofs/: for g in the symmetry group of C, Q_d(g u) = g Q_d(u)
away from Voronoi boundaries (test_quantizer_commutes_with_symmetry_group).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from spherequant import codebook as cbm
from spherequant.strategies import codebooks, rotations
from spherequant.symmetry import (
    GROUP_ORDERS,
    codebook_symmetry_group,
    generate_group,
    induced_permutation,
    rotation_group,
    symmetry_group,
)

PHI = (1.0 + 5.0**0.5) / 2.0


def _unit(a):
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


TETRAHEDRON = _unit([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])
OCTAHEDRON = np.vstack([np.eye(3), -np.eye(3)])
CUBE = _unit(list(itertools.product([-1, 1], repeat=3)))
ICOSAHEDRON = _unit([np.roll([0.0, s1, s2 * PHI], k) for s1 in (1, -1) for s2 in (1, -1) for k in range(3)])


POLYHEDRA = [
    ("tetrahedral", TETRAHEDRON),
    ("octahedral", OCTAHEDRON),
    ("octahedral", CUBE),
    ("icosahedral", ICOSAHEDRON),
]


def _rotation_angles(mats):
    """Rotation angles from the trace (independent of the library's code)."""
    c = np.clip((np.trace(mats, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    return np.arccos(c)


def _angle_histogram(mats):
    """Counts of rotation angles, as multiples of pi rounded to 1e-6 (a conjugation invariant)."""
    ang = np.round(_rotation_angles(mats) / np.pi, 6)
    vals, counts = np.unique(ang, return_counts=True)
    return dict(zip(vals.tolist(), counts.tolist(), strict=True))


def _index_of(group, mat, tol=1e-9):
    d = np.abs(group - mat).max(axis=(-1, -2))
    hits = np.flatnonzero(d <= tol)
    return hits


def _same_set(a, b, tol=1e-9):
    if a.shape != b.shape:
        return False
    return all(_index_of(b, m, tol).size == 1 for m in a)


def _maps_onto(points, g, tol=1e-9):
    """Brute-force check that g maps the point set onto itself (all pairwise distances, no tree)."""
    img = points @ g.T
    d = np.linalg.norm(img[:, None, :] - points[None, :, :], axis=-1)
    nearest = d.argmin(axis=1)
    return bool(d.min(axis=1).max() <= tol and np.unique(nearest).size == len(points))


# Independent reference: the number of rotations by each angle (multiples of pi) in T, O, I.
ANGLE_CLASSES = {
    "tetrahedral": {0.0: 1, 1.0: 3, round(2 / 3, 6): 8},
    "octahedral": {0.0: 1, 1.0: 9, round(2 / 3, 6): 8, 0.5: 6},
    "icosahedral": {0.0: 1, 1.0: 15, round(2 / 3, 6): 20, 0.4: 12, 0.8: 12},
}


@pytest.mark.parametrize(
    "name", ["tetrahedral", "octahedral", "icosahedral", "C1", "C5", "D4", "T", "o", "I"]
)
def test_named_groups_are_closed_rotation_groups(name):
    g = rotation_group(name)
    n = g.shape[0]
    assert g.dtype == np.float64 and g.shape[1:] == (3, 3)
    ortho = np.abs(g @ g.transpose(0, 2, 1) - np.eye(3)).max()
    assert ortho < 1e-13, f"|R R^T - I| = {ortho:.3e}"
    det = np.linalg.det(g)
    assert np.abs(det - 1).max() < 1e-13, f"det range [{det.min()}, {det.max()}]"
    assert np.abs(g[0] - np.eye(3)).max() == 0.0, "identity must come first"
    # no duplicates, closure under products, inverses present (all by brute force)
    pair_diff = np.abs(g[:, None] - g[None, :]).max(axis=(-1, -2)) + 10 * np.eye(n)
    assert pair_diff.min() > 1e-3, "duplicate group elements"
    products = np.einsum("aij,bjk->abik", g, g).reshape(-1, 3, 3)
    dist = np.abs(products[:, None] - g[None]).max(axis=(-1, -2)).min(axis=1)
    worst = int(dist.argmax())
    assert dist[worst] < 1e-12, f"product {divmod(worst, n)} not in group (distance {dist[worst]:.3e})"
    inv = np.abs(g.transpose(0, 2, 1)[:, None] - g[None]).max(axis=(-1, -2)).min(axis=1)
    assert inv.max() < 1e-12


@pytest.mark.parametrize("name", sorted(GROUP_ORDERS))
def test_group_orders_and_angle_classes(name):
    g = rotation_group(name)
    assert g.shape[0] == GROUP_ORDERS[name]
    assert _angle_histogram(g) == ANGLE_CLASSES[name]
    assert np.array_equal(symmetry_group(name), g)


@pytest.mark.parametrize("n", [1, 2, 3, 6, 7])
def test_cyclic_and_dihedral_orders(n):
    c, d = rotation_group(f"C{n}"), rotation_group(f"D{n}")
    assert c.shape[0] == n and d.shape[0] == 2 * n
    # C_n fixes the z axis; D_n maps the z axis to +-z
    assert np.abs(c[:, :, 2] - [0, 0, 1]).max() < 1e-15
    assert np.abs(np.abs(d[:, 2, 2]) - 1).max() < 1e-15


@pytest.mark.parametrize(
    ("name", "points"),
    [
        ("tetrahedral", TETRAHEDRON),
        ("octahedral", OCTAHEDRON),
        ("octahedral", CUBE),
        ("icosahedral", ICOSAHEDRON),
    ],
)
def test_named_groups_preserve_their_polyhedra(name, points):
    g = rotation_group(name)
    for k in range(len(g)):
        assert _maps_onto(points, g[k]), f"element {k} of {name} does not preserve the polyhedron"


def test_icosahedral_group_preserves_the_cube_only_through_its_tetrahedral_subgroup():
    g = rotation_group("icosahedral")
    keep = [k for k in range(len(g)) if _maps_onto(CUBE, g[k])]
    assert len(keep) == 12
    assert _same_set(g[keep], rotation_group("tetrahedral"))


@pytest.mark.parametrize(
    ("name", "points"),
    [
        ("tetrahedral", TETRAHEDRON),
        ("octahedral", OCTAHEDRON),
        ("octahedral", CUBE),
        ("icosahedral", ICOSAHEDRON),
    ],
)
def test_codebook_symmetry_group_of_standard_polyhedra_equals_named_group(name, points):
    found, perms = codebook_symmetry_group(points, return_permutations=True)
    assert found.shape[0] == GROUP_ORDERS[name]
    assert _same_set(found, rotation_group(name)), "found group differs from the group generated by closure"
    for g, p in zip(found, perms, strict=True):
        assert np.abs(points @ g.T - points[p]).max() < 1e-12


CODEBOOK_CASES = [
    ("tetrahedron", lambda: cbm.tetrahedron(), 12),
    ("octahedron", lambda: cbm.octahedron(), 24),
    ("icosahedron", lambda: cbm.icosahedron(), 60),
    ("icosahedral(1)", lambda: cbm.icosahedral(1), 60),
    ("icosahedral(2)", lambda: cbm.icosahedral(2), 60),
]


@pytest.mark.parametrize(("label", "make", "order"), CODEBOOK_CASES, ids=[c[0] for c in CODEBOOK_CASES])
def test_codebook_symmetry_group_orders(label, make, order):
    cb = make()
    pts = np.asarray(cb.points, dtype=np.float64)
    found = codebook_symmetry_group(cb)
    assert found.shape == (order, 3, 3), f"{label}: found {found.shape[0]} symmetries, expected {order}"
    assert np.abs(found[0] - np.eye(3)).max() < 1e-12
    for k, g in enumerate(found):
        assert _maps_onto(pts, g), f"{label}: element {k} does not map the codebook onto itself"
    # a group: closed under products, conjugate to the named polyhedral group (same angle classes)
    products = np.einsum("aij,bjk->abik", found, found).reshape(-1, 3, 3)
    dist = np.abs(products[:, None] - found[None]).max(axis=(-1, -2)).min(axis=1)
    assert dist.max() < 1e-9, f"{label}: not closed, worst product distance {dist.max():.3e}"
    named = {12: "tetrahedral", 24: "octahedral", 60: "icosahedral"}[order]
    assert _angle_histogram(found) == ANGLE_CLASSES[named]


@settings(max_examples=15)
@given(rot=rotations(), which=st.sampled_from(["tetrahedral", "octahedral", "icosahedral"]))
def test_codebook_symmetry_group_is_conjugated_by_rotating_the_codebook(rot, which):
    points = {"tetrahedral": TETRAHEDRON, "octahedral": CUBE, "icosahedral": ICOSAHEDRON}[which]
    found = codebook_symmetry_group(points @ rot.T)
    expected = np.einsum("ij,gjk,lk->gil", rot, rotation_group(which), rot)
    assert _same_set(found, expected, tol=1e-8), f"R = {rot.tolist()}"


@settings(max_examples=20)
@given(cb=codebooks(kinds=("random",), min_size=5, max_size=120))
def test_random_codebook_has_only_the_identity(cb):
    found = codebook_symmetry_group(cb)
    assert found.shape == (1, 3, 3), f"{found.shape[0]} symmetries for a random codebook of {len(cb.points)}"
    assert np.abs(found[0] - np.eye(3)).max() < 1e-12


def test_two_point_codebook_has_a_half_turn():
    pts = _unit([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    found, perms = codebook_symmetry_group(pts, return_permutations=True)
    assert found.shape[0] == 2
    assert perms.tolist() == [[0, 1], [1, 0]]
    expected = Rotation.from_rotvec(np.pi * _unit([1.0, 1.0, 0.0])).as_matrix()
    assert np.abs(found[1] - expected).max() < 1e-12


@pytest.mark.parametrize("margin_dtype", ["float32", "float64"])
@pytest.mark.parametrize(("label", "make", "order"), CODEBOOK_CASES, ids=[c[0] for c in CODEBOOK_CASES])
def test_quantizer_commutes_with_symmetry_group(label, make, order, margin_dtype, rng):
    cb = make()
    pts = np.asarray(cb.points, dtype=np.float64)
    group, perms = codebook_symmetry_group(cb, return_permutations=True)
    assert group.shape[0] == order
    u = rng.standard_normal((4000, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    # keep u away from Voronoi boundaries: best and second-best dot products differ by a margin
    margin = {"float32": 1e-5, "float64": 1e-9}[margin_dtype]
    dots = np.sort(u @ pts.T, axis=1)
    u = u[dots[:, -1] - dots[:, -2] > margin].astype(margin_dtype)
    assert len(u) > 3000
    base = np.asarray(cb.nearest(u))
    # the brute-force argmax agrees with cb.nearest (so the check below is about the codebook, not the lookup)
    assert np.array_equal(base, np.argmax(u.astype(np.float64) @ pts.T, axis=1))
    for k in range(order):
        g = group[k].astype(margin_dtype)
        rotated_idx = np.asarray(cb.nearest(u @ g.T))
        expected_idx = perms[k][base]
        bad = np.flatnonzero(rotated_idx != expected_idx)
        assert bad.size == 0, (
            f"{label}: Q(g u) != g Q(u) for group element {k} at u = {u[bad[0]].tolist()} "
            f"({bad.size} of {len(u)} vectors)"
        )
        q_rot = np.asarray(cb.quantize(u @ g.T), dtype=np.float64)
        q_exp = np.asarray(cb.quantize(u), dtype=np.float64) @ group[k].T
        err = np.abs(q_rot - q_exp).max()
        assert err < (1e-6 if margin_dtype == "float32" else 1e-12), (
            f"{label}: element {k}, max err {err:.3e}"
        )


@settings(max_examples=30)
@given(data=st.data())
def test_quantizer_commutes_with_symmetry_group_hypothesis(data):
    from spherequant.strategies import unit_vectors

    cb = cbm.icosahedral(1)
    group, perms = codebook_symmetry_group(cb, return_permutations=True)
    k = data.draw(st.integers(0, len(group) - 1), label="group element")
    u = data.draw(unit_vectors(), label="u")
    dots = np.sort(np.asarray(cb.points) @ u)
    if dots[-1] - dots[-2] <= 1e-9:
        return  # on (or numerically at) a Voronoi boundary: the tie may break either way
    i = int(np.asarray(cb.nearest(u[None]))[0])
    j = int(np.asarray(cb.nearest((group[k] @ u)[None]))[0])
    assert j == perms[k][i]


def test_induced_permutation_matches_and_rejects():
    perm = induced_permutation(rotation_group("O")[5], CUBE)
    assert sorted(perm.tolist()) == list(range(8))
    with pytest.raises(ValueError, match="does not map"):
        induced_permutation(Rotation.from_rotvec([0.0, 0.0, 0.3]).as_matrix(), CUBE)
    with pytest.raises(ValueError, match="shape"):
        induced_permutation(np.eye(2), CUBE)


def test_invalid_input_raises():
    with pytest.raises(ValueError, match="unknown group name"):
        rotation_group("dodecahedral")
    with pytest.raises(ValueError, match="unknown group name"):
        rotation_group("C0")
    with pytest.raises(TypeError, match="name"):
        rotation_group(60)
    with pytest.raises(ValueError, match="generators must be a rotation"):
        generate_group(np.diag([1.0, 1.0, -1.0]))
    with pytest.raises(ValueError, match="max_order"):
        generate_group(Rotation.from_rotvec([0.0, 0.0, 1.0]).as_matrix(), max_order=100)
    with pytest.raises(ValueError, match="one line"):
        codebook_symmetry_group(np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]))
    with pytest.raises(ValueError, match="one line"):
        codebook_symmetry_group(np.array([[0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="unit vectors"):
        codebook_symmetry_group(np.array([[0.0, 0.0, 2.0], [1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="shape"):
        codebook_symmetry_group(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="tol"):
        codebook_symmetry_group(CUBE, tol=0.0)
