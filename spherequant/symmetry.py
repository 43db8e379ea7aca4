"""Finite rotation groups and the symmetry groups of codebooks.

A codebook ``C`` commutes exactly with a rotation ``g`` (``Q_d(g u) = g Q_d(u)`` away from Voronoi
boundaries) precisely when ``g C = C``. This module builds the finite rotation groups by closure from
generators and finds, for any codebook, all rotations that map it onto itself together with the permutation of
codeword indices each one induces.

Orientation of the named groups (all matrices float64, acting actively ``v' = R @ v``):

* ``"tetrahedral"`` (``"T"``, 12 rotations): 2-fold axes along the coordinate axes, 3-fold axes along
  ``(+-1, +-1, +-1)``; it maps the tetrahedron ``{(1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)}`` to
  itself.
* ``"octahedral"`` (``"O"``, 24): 4-fold axes along the coordinate axes; symmetries of the octahedron
  ``{+-e_x, +-e_y, +-e_z}`` and of the cube ``(+-1, +-1, +-1)``.
* ``"icosahedral"`` (``"I"``, 60): contains the tetrahedral group above; symmetries of the icosahedron whose
  vertices are the cyclic permutations of ``(0, +-1, +-phi)``, ``phi`` the golden ratio.
* ``"C<n>"`` (cyclic, n rotations about z) and ``"D<n>"`` (dihedral, 2n: ``C<n>`` plus half-turns about axes
  in the xy-plane, one along x); ``"trivial"`` is ``C1``.

Examples
--------
>>> from spherequant.symmetry import rotation_group
>>> rotation_group("icosahedral").shape
(60, 3, 3)
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from ._backend import as_float_array, is_torch, safe_norm
from ._points import PHI
from ._validation import check_bool, check_int, check_real

__all__ = [
    "GROUP_ORDERS",
    "codebook_symmetry_group",
    "generate_group",
    "induced_permutation",
    "rotation_group",
    "symmetry_group",
]

#: Orders of the named polyhedral groups.
GROUP_ORDERS = {"tetrahedral": 12, "octahedral": 24, "icosahedral": 60}

_ALIASES = {"t": "tetrahedral", "o": "octahedral", "i": "icosahedral", "trivial": "c1", "identity": "c1"}


def _half_turn(axis) -> np.ndarray:
    """Rotation by pi about ``axis``: ``2 n n^T - I`` (exact up to the normalisation of ``n``)."""
    n = np.asarray(axis, dtype=np.float64)
    n = n / np.linalg.norm(n)
    return 2.0 * np.outer(n, n) - np.eye(3)


def _z_turn(n: int) -> np.ndarray:
    """Rotation by ``2 pi / n`` about the z axis."""
    c, s = math.cos(2.0 * math.pi / n), math.sin(2.0 * math.pi / n)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# Cyclic permutation of coordinates: a 3-fold rotation about (1, 1, 1), exact.
_CYCLE = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def generate_group(generators: Any, *, tol: float = 1e-9, max_order: int = 10_000) -> np.ndarray:
    """Close a set of rotation matrices under multiplication.

    Breadth-first search from the identity: every found element is multiplied on the left by every
    generator, and products not yet present (entrywise within ``tol``) are added.

    Parameters
    ----------
    generators : array_like, shape (k, 3, 3) or (3, 3)
        Rotation matrices (orthogonal, determinant +1, within ``sqrt(tol)``).
    tol : float, default 1e-9
        Entrywise tolerance identifying two matrices.
    max_order : int, default 10000
        Give up (ValueError) when the group grows beyond this many elements, e.g. for a generator that is a
        rotation by an irrational multiple of pi, which generates an infinite group.

    Returns
    -------
    numpy.ndarray, shape (G, 3, 3), float64
        The group elements, the identity first, in breadth-first order.

    Raises
    ------
    ValueError
        If a generator is not a rotation matrix or the closure exceeds ``max_order`` elements.

    Examples
    --------
    >>> import numpy as np
    >>> from spherequant.symmetry import generate_group
    >>> quarter_turn_z = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    >>> generate_group(quarter_turn_z).shape
    (4, 3, 3)
    """
    from .so3 import check_rotation

    tol = _check_tol(tol)
    max_order = check_int(max_order, "max_order", minimum=1)
    gens = check_rotation(generators, "generators")
    gens = np.asarray(gens.detach().cpu().numpy() if hasattr(gens, "detach") else gens, dtype=np.float64)
    if gens.ndim == 2:
        gens = gens[None]
    if gens.ndim != 3 or gens.shape[0] == 0:
        raise ValueError(f"generators must have shape (k, 3, 3) or (3, 3) with k >= 1, got {gens.shape}")
    elements = [np.eye(3)]
    stacked = np.eye(3)[None]
    frontier = [np.eye(3)]
    while frontier:
        new_frontier = []
        for element in frontier:
            for g in gens:
                candidate = g @ element
                if np.abs(stacked - candidate).max(axis=(-1, -2)).min() <= tol:
                    continue
                elements.append(candidate)
                stacked = np.concatenate([stacked, candidate[None]])
                new_frontier.append(candidate)
                if len(elements) > max_order:
                    raise ValueError(
                        f"the generated group has more than max_order={max_order} elements "
                        "(an infinite group, or increase max_order)"
                    )
        frontier = new_frontier
    return np.stack(elements)


def rotation_group(name: str) -> np.ndarray:
    """The rotation matrices of a named finite rotation group.

    Parameters
    ----------
    name : str
        ``"tetrahedral"`` / ``"T"`` (12 elements), ``"octahedral"`` / ``"O"`` (24), ``"icosahedral"`` /
        ``"I"`` (60), ``"C<n>"`` (cyclic about z, n elements), ``"D<n>"`` (dihedral, 2n), ``"trivial"``
        (identity). Case-insensitive. The orientation is described in the module docstring.

    Returns
    -------
    numpy.ndarray, shape (G, 3, 3), float64
        The group elements, identity first.

    Raises
    ------
    TypeError
        If ``name`` is not a string.
    ValueError
        For an unknown name.

    Examples
    --------
    >>> from spherequant.symmetry import rotation_group
    >>> [rotation_group(n).shape[0] for n in ("T", "O", "I", "C5", "D3")]
    [12, 24, 60, 5, 6]
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key == "tetrahedral":
        gens = [_CYCLE, np.diag([-1.0, -1.0, 1.0])]
    elif key == "octahedral":
        gens = [_CYCLE, _z_turn(4)]
    elif key == "icosahedral":
        # T plus the half-turn about the midpoint of the edge (0, 1, phi)-(1, phi, 0).
        gens = [_CYCLE, np.diag([-1.0, -1.0, 1.0]), _half_turn([1.0, 1.0 + PHI, PHI])]
    else:
        match = re.fullmatch(r"([cd])(\d+)", key)
        if not match or int(match.group(2)) < 1:
            raise ValueError(
                f"unknown group name {name!r}; expected 'tetrahedral', 'octahedral', 'icosahedral' "
                "(or 'T', 'O', 'I'), 'C<n>', 'D<n>' with n >= 1, or 'trivial'"
            )
        n = int(match.group(2))
        gens = [_z_turn(n)]
        if match.group(1) == "d":
            gens.append(np.diag([1.0, -1.0, -1.0]))
    return generate_group(np.stack(gens))


def symmetry_group(name: str) -> np.ndarray:
    """Alias of :func:`rotation_group`.

    Examples
    --------
    >>> from spherequant.symmetry import symmetry_group
    >>> symmetry_group("octahedral").shape
    (24, 3, 3)
    """
    return rotation_group(name)


# ----------------------------------------------------------------------------------------------------------
# symmetry groups of point sets
# ----------------------------------------------------------------------------------------------------------
def _points_of(codebook: Any, name: str = "codebook") -> np.ndarray:
    """Unit codeword rows (K, 3) float64 from a Codebook or an array, validated."""
    pts = getattr(codebook, "points", codebook)
    pts = as_float_array(pts, name)  # refuses str, None, object, complex, bool and meta tensors
    if is_torch(pts):
        pts = pts.detach().cpu().numpy()
    pts = np.asarray(pts, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or pts.shape[0] == 0:
        raise ValueError(f"{name} points must have shape (K, 3) with K >= 1, got {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ValueError(f"{name} points contain NaN or infinite entries")
    norms = safe_norm(pts, axis=1)
    if np.abs(norms - 1.0).max() > 1e-6:
        raise ValueError(f"{name} points must be unit vectors, got norms in [{norms.min()}, {norms.max()}]")
    pts = pts / norms[:, None]
    _, counts = np.unique(pts, axis=0, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(f"{name} points contain duplicate rows; the induced permutation would be ambiguous")
    return pts


def _check_tol(tol: float) -> float:
    return check_real(tol, "tol", minimum=0.0, maximum=0.1, exclusive_minimum=True, exclusive_maximum=True)


def _match(tree: cKDTree, images: np.ndarray, tol: float) -> np.ndarray | None:
    """Indices of the codewords within ``tol`` of each image; None unless that is a bijection."""
    dist, idx = tree.query(images, k=1, distance_upper_bound=tol)
    if not np.all(np.isfinite(dist)):
        return None
    if np.unique(idx).size != idx.size:
        return None
    return idx


def induced_permutation(rotation: Any, codebook: Any, *, tol: float = 1e-8) -> np.ndarray:
    """The permutation of codeword indices induced by a symmetry ``g`` of a codebook.

    Parameters
    ----------
    rotation : array_like, shape (3, 3)
        A rotation ``g`` with ``g C = C``.
    codebook : Codebook or array_like, shape (K, 3)
        The codebook ``C`` (unit rows).
    tol : float, default 1e-8
        Largest chordal distance at which ``g c_i`` and ``c_j`` count as the same point.

    Returns
    -------
    numpy.ndarray, shape (K,), int64
        ``perm`` with ``g @ c_i == c_{perm[i]}`` (within ``tol``).

    Raises
    ------
    ValueError
        If ``g`` does not map the codebook onto itself.

    Examples
    --------
    >>> import numpy as np
    >>> from spherequant.symmetry import induced_permutation
    >>> octahedron = np.vstack([np.eye(3), -np.eye(3)])
    >>> quarter_turn_z = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    >>> induced_permutation(quarter_turn_z, octahedron).tolist()
    [1, 3, 2, 4, 0, 5]
    """
    from .so3 import check_rotation

    pts = _points_of(codebook)
    tol = _check_tol(tol)
    g = check_rotation(rotation, "rotation")
    g = np.asarray(g.detach().cpu().numpy() if is_torch(g) else g, dtype=np.float64)
    if g.shape != (3, 3):
        raise ValueError(f"rotation must have shape (3, 3), got {g.shape}")
    perm = _match(cKDTree(pts), pts @ g.T, tol)
    if perm is None:
        raise ValueError("rotation does not map the codebook onto itself (within tol)")
    return perm.astype(np.int64)


def _frame(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Right-handed orthonormal frame (columns) from two non-parallel unit vectors."""
    e2 = b - np.dot(a, b) * a
    e2 = e2 / np.linalg.norm(e2)
    return np.stack([a, e2, np.cross(a, e2)], axis=1)


def _kabsch(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Best rotation R (least squares) with R src_i ~ dst_i."""
    u, _, vt = np.linalg.svd(dst.T @ src)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def codebook_symmetry_group(
    codebook: Any, *, tol: float = 1e-8, return_permutations: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """All rotations ``g`` with ``g C = C`` for a finite codebook ``C`` on the sphere.

    Any such ``g`` is fixed by the images of two non-parallel codewords ``p0, p1``: ``g p0 = c_i`` and
    ``g p1 = c_j`` with ``<c_i, c_j> = <p0, p1>``. Candidates ``c_i`` are pruned by comparing the sorted
    distances to the nearest neighbours (an invariant of ``g``); each candidate rotation is checked on every
    codeword and refined by a least-squares (Kabsch) fit over all matched pairs.

    Parameters
    ----------
    codebook : Codebook or array_like, shape (K, 3)
        Unit codewords (a :class:`spherequant.codebook.Codebook` or its points).
    tol : float, default 1e-8
        Largest chordal distance at which ``g c_i`` and ``c_j`` count as the same codeword (and tolerance on
        the invariants). Must be well below half the minimum separation of the codebook.
    return_permutations : bool, default False
        Also return the induced permutations.

    Returns
    -------
    rotations : numpy.ndarray, shape (G, 3, 3), float64
        The symmetry rotations, identity first (a random codebook gives only the identity; the platonic
        solids and icosahedral geodesic grids give 12, 24, 60).
    permutations : numpy.ndarray, shape (G, K), int64
        Only with ``return_permutations``: ``rotations[g] @ c_i == c_{permutations[g, i]}``.

    Raises
    ------
    ValueError
        If all codewords lie on one line (``K = 1`` or an antipodal pair: the symmetry group is infinite),
        or on invalid input.

    Examples
    --------
    >>> import numpy as np
    >>> from spherequant.symmetry import codebook_symmetry_group
    >>> octahedron = np.vstack([np.eye(3), -np.eye(3)])
    >>> codebook_symmetry_group(octahedron).shape
    (24, 3, 3)
    """
    pts = _points_of(codebook)
    tol = _check_tol(tol)
    return_permutations = check_bool(return_permutations, "return_permutations")
    k_pts = pts.shape[0]
    p0 = pts[0]
    cross = np.linalg.norm(np.cross(pts, p0), axis=1)
    off_axis = np.flatnonzero(cross > 1e-6)
    if off_axis.size == 0:
        raise ValueError(
            "codebook points all lie on one line through the origin; their symmetry group (all rotations "
            "about that axis, and half-turns) is infinite"
        )
    dots0 = pts[off_axis] @ p0
    i1 = int(off_axis[np.argmax(dots0)])  # nearest non-parallel neighbour of p0
    d01 = float(pts[i1] @ p0)
    ref = _frame(p0, pts[i1])

    tree = cKDTree(pts)
    # Invariant profile: sorted chordal distances to the nearest neighbours.
    n_nb = min(k_pts, 8)
    prof, _ = tree.query(pts, k=n_nb)
    prof = np.asarray(prof).reshape(k_pts, n_nb)
    cand_i = np.flatnonzero(np.abs(prof - prof[0]).max(axis=1) <= 10.0 * tol)

    rotations: list[np.ndarray] = []
    perms: list[np.ndarray] = []
    seen: set[tuple[int, ...]] = set()
    for i in cand_i:
        dots_i = pts @ pts[i]
        for j in np.flatnonzero(np.abs(dots_i - d01) <= 10.0 * tol):
            if j == i:
                continue
            g = _frame(pts[i], pts[j]) @ ref.T
            perm = _match(tree, pts @ g.T, tol)
            if perm is None:
                continue
            key = tuple(perm.tolist())
            if key in seen:
                continue
            seen.add(key)
            g = _kabsch(pts, pts[perm])
            rotations.append(g)
            perms.append(perm.astype(np.int64))
    if not rotations:  # cannot happen for a valid codebook (the identity always matches)
        raise ValueError("no symmetry found; is tol too small for the accuracy of the codebook points?")
    order = sorted(range(len(rotations)), key=lambda n: (np.abs(rotations[n] - np.eye(3)).max() > tol, n))
    rot = np.stack([rotations[n] for n in order])
    if return_permutations:
        return rot, np.stack([perms[n] for n in order])
    return rot
