"""Hypothesis strategies for property tests of code that works on the sphere and on rotations.

The strategies draw unit vectors, general 3-vectors (tiny to huge magnitudes, optionally zero), rotation
matrices, codebooks, vector fields and atomistic point clouds. They are public so that users can write
property tests for their own models with the same generators the library's tests use.

This module requires `Hypothesis <https://hypothesis.readthedocs.io>`_, which is a development extra of
spherequant (``pip install hypothesis``); importing it without Hypothesis raises :class:`ImportError`.

Every strategy takes a ``dtype``: a numpy floating dtype (``np.float64``, ``"float32"``) gives numpy arrays, a
torch floating dtype (``torch.float32``) gives CPU torch tensors. Draws shrink towards simple values: unit
vectors towards ``(1, 0, 0)``, rotations towards the identity, codebooks towards the first listed kind at its
smallest size, vector fields towards few, simple vectors.

Examples
--------
>>> from hypothesis import given, settings
>>> import numpy as np
>>> from spherequant.strategies import unit_vectors
>>> @settings(max_examples=20, deadline=None, derandomize=True)
... @given(unit_vectors())
... def test_unit(u):
...     assert abs(np.linalg.norm(u) - 1.0) < 1e-12
>>> test_unit()
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._validation import check_bool, check_int, check_real

try:
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - exercised only without the dev extra
    raise ImportError(
        "spherequant.strategies requires the 'hypothesis' package, a development extra of spherequant; "
        "install it with `pip install hypothesis`"
    ) from exc

__all__ = [
    "CODEBOOK_KINDS",
    "codebooks",
    "point_clouds",
    "rotations",
    "unit_vectors",
    "vector_fields",
    "vectors",
]

#: Codebook constructors understood by :func:`codebooks`.
CODEBOOK_KINDS = (
    "fibonacci",
    "icosahedral",
    "random",
    "healpix",
    "tetrahedron",
    "octahedron",
    "cube",
    "icosahedron",
    "dodecahedron",
)

# Smallest nonzero components drawn for directions: below this a drawn triple is treated as "too small to
# define a direction" and replaced, so unit vectors never come from normalising a denormal triple.
_MIN_DIRECTION_NORM = 1e-3


# ----------------------------------------------------------------------------------------------------------
# dtype handling
# ----------------------------------------------------------------------------------------------------------
def _resolve_dtype(dtype: Any):
    """Return ``("numpy", np.dtype)`` or ``("torch", torch.dtype)`` for a floating dtype, else raise."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        torch = None
    if torch is not None and isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point or dtype.is_complex:
            raise ValueError(f"dtype must be a real floating dtype, got {dtype}")
        return "torch", dtype
    try:
        npdt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be a numpy or torch floating dtype, got {dtype!r}") from exc
    if npdt.kind != "f":
        raise ValueError(f"dtype must be a real floating dtype, got {npdt}")
    return "numpy", npdt


def _converter(dtype: Any):
    """Return a function turning a float64 numpy array into the requested array kind and dtype."""
    kind, dt = _resolve_dtype(dtype)
    if kind == "torch":
        import torch

        return lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=dt)
    return lambda a: np.asarray(a, dtype=np.float64).astype(dt)


def _check_max_norm(max_norm: float, dtype: Any) -> None:
    """Reject norm ranges whose vectors would overflow the target dtype."""
    kind, dt = _resolve_dtype(dtype)
    if kind == "torch":
        import torch

        top = float(torch.finfo(dt).max)
    else:
        top = float(np.finfo(dt).max)
    if float(max_norm) > top / 2.0:
        raise ValueError(f"max_norm={max_norm:g} overflows dtype {dt} (largest finite value {top:g})")


def _check_count(value: Any, name: str) -> tuple[int, int]:
    """Turn an int or an inclusive ``(lo, hi)`` pair into a validated ``(lo, hi)`` pair of counts."""
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        lo = check_int(value[0], f"{name}[0] (min)", minimum=0)
        return lo, check_int(value[1], f"{name}[1] (max)", minimum=lo)
    if isinstance(value, (str, bytes)) or isinstance(value, Sequence):
        raise TypeError(f"{name} must be an int or a (min, max) pair of ints, got {value!r}")
    lo = check_int(value, name, minimum=0)
    return lo, lo


# ----------------------------------------------------------------------------------------------------------
# directions and vectors
# ----------------------------------------------------------------------------------------------------------
_AXES = tuple(np.array(v, dtype=np.float64) for v in np.vstack([np.eye(3), -np.eye(3)]))


def _normalised(triple) -> np.ndarray:
    v = np.asarray(triple, dtype=np.float64)
    return v / np.linalg.norm(v)


def _directions() -> st.SearchStrategy[np.ndarray]:
    """Float64 unit vectors: coordinate axes first (simplest), then normalised drawn triples."""
    component = st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False)
    general = (
        st.tuples(component, component, component)
        .filter(lambda t: math.hypot(*t) >= _MIN_DIRECTION_NORM)
        .map(_normalised)
    )
    return st.one_of(st.sampled_from(_AXES), general)


def unit_vectors(dtype: Any = np.float64) -> st.SearchStrategy:
    """Strategy for single unit vectors of shape ``(3,)``.

    Draws the six coordinate axes (edge cases; failures shrink to ``(1, 0, 0)``) and normalised triples of
    drawn components in ``[-1, 1]`` (triples shorter than 1e-3 are rejected, so the normalisation is
    accurate). The normalisation is done in float64 and then cast, so the norm is 1 to within the target
    dtype's rounding.

    Parameters
    ----------
    dtype : numpy or torch floating dtype, default ``np.float64``
        A numpy dtype gives numpy arrays, a torch dtype CPU tensors.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of arrays/tensors of shape ``(3,)``, unit norm (dimensionless).

    Examples
    --------
    >>> from spherequant.strategies import unit_vectors
    >>> u = unit_vectors().example()
    >>> u.shape
    (3,)
    """
    convert = _converter(dtype)
    return _directions().map(convert)


def _magnitudes(min_norm: float, max_norm: float) -> st.SearchStrategy[float]:
    """Magnitudes in ``[min_norm, max_norm]``: plain floats (shrink to ``min_norm``) and log-uniform ones."""
    plain = st.floats(min_norm, max_norm, allow_nan=False, allow_infinity=False)
    if min_norm > 0:
        lo, hi = math.log10(min_norm), math.log10(max_norm)
    else:
        lo, hi = math.log10(max_norm) - 30.0, math.log10(max_norm)
    logs = st.floats(lo, hi, allow_nan=False, allow_infinity=False).map(
        lambda e: float(min(max(10.0**e, min_norm), max_norm))
    )
    return st.one_of(plain, logs)


def vectors(
    dtype: Any = np.float64,
    *,
    min_norm: float = 0.0,
    max_norm: float = 1e6,
    allow_zero: bool = True,
) -> st.SearchStrategy:
    """Strategy for single 3-vectors of shape ``(3,)`` with every order of magnitude in a range.

    A vector is a direction from :func:`unit_vectors` times a magnitude drawn either directly in
    ``[min_norm, max_norm]`` (shrinks towards ``min_norm``) or log-uniformly (covering tiny and huge values;
    with ``min_norm = 0`` the log range spans 30 decades below ``max_norm``).

    Parameters
    ----------
    dtype : numpy or torch floating dtype, default ``np.float64``
    min_norm, max_norm : float
        Range of the Euclidean norm (units of the caller's vectors), ``0 <= min_norm <= max_norm``, finite.
        The norm of a drawn vector lies in the range up to the rounding of the target dtype.
    allow_zero : bool, default True
        Whether the exact zero vector may be drawn. With ``min_norm > 0`` it is added as an extra edge case;
        with ``allow_zero=False`` no zero vector is ever drawn (also not one whose components underflow in the
        target dtype).

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of arrays/tensors of shape ``(3,)``.

    Raises
    ------
    ValueError
        If the norm range is invalid or ``max_norm`` would overflow ``dtype``.

    Examples
    --------
    >>> import numpy as np
    >>> from spherequant.strategies import vectors
    >>> v = vectors(min_norm=1.0, max_norm=2.0, allow_zero=False).example()
    >>> bool(1.0 <= np.linalg.norm(v) <= 2.0 + 1e-12)
    True
    """
    min_norm, max_norm = check_real(min_norm, "min_norm"), check_real(max_norm, "max_norm")
    if not (math.isfinite(min_norm) and math.isfinite(max_norm)):
        raise ValueError(f"min_norm and max_norm must be finite, got {min_norm}, {max_norm}")
    if not 0.0 <= min_norm <= max_norm:
        raise ValueError(f"need 0 <= min_norm <= max_norm, got min_norm={min_norm}, max_norm={max_norm}")
    if max_norm == 0.0 and not allow_zero:
        raise ValueError("max_norm = 0 only allows the zero vector, but allow_zero is False")
    _check_max_norm(max_norm, dtype)
    convert = _converter(dtype)

    def build(pair):
        direction, magnitude = pair
        return convert(direction * magnitude)

    nonzero_mag = _magnitudes(min_norm, max_norm) if max_norm > 0 else st.just(0.0)
    drawn = st.tuples(_directions(), nonzero_mag).map(build)
    if allow_zero:
        return st.one_of(st.just(0).map(lambda _: convert(np.zeros(3))), drawn)
    return drawn.filter(lambda v: bool((v != 0).any()))


# ----------------------------------------------------------------------------------------------------------
# rotations
# ----------------------------------------------------------------------------------------------------------
def rotations(dtype: Any = np.float64, *, haar_only: bool = False) -> st.SearchStrategy:
    """Strategy for rotation matrices of shape ``(3, 3)`` (orthogonal, determinant +1).

    Two kinds of draws are mixed:

    * axis-angle rotations, the axis from :func:`unit_vectors` and the angle in ``[0, pi]`` (radians, with
      0, pi and pi/2 as explicit edge cases); these cover every rotation, including the half-turns where
      many conversions are delicate, and shrink towards the identity;
    * exactly Haar-distributed rotations from :func:`spherequant.so3.random_rotation` seeded by four drawn
      32-bit words.

    Parameters
    ----------
    dtype : numpy or torch floating dtype, default ``np.float64``
    haar_only : bool, default False
        Draw only the seeded Haar rotations (the distribution the paper's bounds average over). These shrink
        to the zero seed, not to the identity.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of arrays/tensors of shape ``(3, 3)``, acting actively as ``v' = R @ v``.

    Examples
    --------
    >>> import numpy as np
    >>> from spherequant.strategies import rotations
    >>> R = rotations().example()
    >>> bool(np.allclose(R @ R.T, np.eye(3)))
    True
    """
    haar_only = check_bool(haar_only, "haar_only")
    convert = _converter(dtype)

    def haar(words: tuple[int, ...]) -> np.ndarray:
        from spherequant.so3 import random_rotation

        rng = np.random.default_rng(list(words))
        return np.asarray(random_rotation(seed=rng), dtype=np.float64)

    def from_axis_angle(pair) -> np.ndarray:
        from spherequant.so3 import axis_angle_to_matrix

        axis, angle = pair
        return np.asarray(axis_angle_to_matrix(axis * angle), dtype=np.float64)

    # Four seed words: besides giving 128 bits of seed, a draw then takes more choices than the simplest
    # axis-angle draw, so Hypothesis (which prefers shorter choice sequences) shrinks towards axis-angle ones.
    word = st.integers(0, 2**32 - 1)
    seeded = st.tuples(word, word, word, word).map(haar)
    if haar_only:
        return seeded.map(convert)
    angles = st.one_of(
        st.sampled_from([0.0, math.pi, math.pi / 2.0]),
        st.floats(0.0, math.pi, allow_nan=False, allow_infinity=False),
    )
    axis_angle = st.tuples(_directions(), angles).map(from_axis_angle)
    return st.one_of(axis_angle, seeded).map(convert)


# ----------------------------------------------------------------------------------------------------------
# codebooks
# ----------------------------------------------------------------------------------------------------------
def _codebook_sizes(kind: str, min_size: int, max_size: int) -> st.SearchStrategy:
    """Strategy for ready-made codebooks of one kind with ``min_size <= K <= max_size`` points."""
    from spherequant import codebook as cbm

    if kind == "fibonacci":
        return st.integers(min_size, max_size).map(cbm.fibonacci)
    if kind == "random":
        return st.tuples(st.integers(min_size, max_size), st.integers(0, 2**32 - 1)).map(
            lambda t: cbm.random(t[0], seed=t[1])
        )
    if kind == "icosahedral":
        levels = [lvl for lvl in range(8) if min_size <= 10 * 4**lvl + 2 <= max_size]
        return st.sampled_from(levels).map(cbm.icosahedral) if levels else st.nothing()
    if kind == "healpix":
        nsides = [2**k for k in range(12) if min_size <= 12 * 4**k <= max_size]
        return st.sampled_from(nsides).map(cbm.healpix) if nsides else st.nothing()
    size = {"tetrahedron": 4, "octahedron": 6, "cube": 8, "icosahedron": 12, "dodecahedron": 20}[kind]
    return st.just(kind).map(lambda k: getattr(cbm, k)()) if min_size <= size <= max_size else st.nothing()


def codebooks(
    kinds: Sequence[str] = ("fibonacci", "icosahedral", "random", "healpix"),
    *,
    min_size: int = 4,
    max_size: int = 200,
) -> st.SearchStrategy:
    """Strategy for :class:`spherequant.codebook.Codebook` instances of the given kinds and sizes.

    Sizes: ``fibonacci(n)`` and ``random(n, seed=...)`` for any ``n`` in range; ``icosahedral(level)`` with
    ``10 * 4**level + 2`` points; ``healpix(nside)`` with ``nside`` a power of two and ``12 * nside**2``
    points; the platonic kinds have 4, 6, 8, 12 and 20 points. Kinds with no size in range are skipped. Draws
    shrink to the first listed kind at its smallest size.

    Parameters
    ----------
    kinds : sequence of str
        Any of :data:`CODEBOOK_KINDS`.
    min_size, max_size : int
        Inclusive range of the number of codewords ``K``, ``1 <= min_size <= max_size``.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of :class:`~spherequant.codebook.Codebook`.

    Raises
    ------
    ValueError
        For an unknown kind, an invalid size range, or when no listed kind has a size in range.

    Examples
    --------
    >>> from spherequant.strategies import codebooks
    >>> cb = codebooks(kinds=("fibonacci",), max_size=50).example()
    >>> 4 <= cb.points.shape[0] <= 50
    True
    """
    if isinstance(kinds, str):
        kinds = (kinds,)
    if not isinstance(kinds, Sequence):
        raise TypeError(f"kinds must be a kind name or a sequence of names, got {type(kinds).__name__}")
    kinds = tuple(kinds)
    if not kinds:
        raise ValueError("kinds must name at least one codebook kind")
    unknown = [k for k in kinds if k not in CODEBOOK_KINDS]
    if unknown:
        raise ValueError(f"kinds contains unknown codebook kinds {unknown}; allowed: {list(CODEBOOK_KINDS)}")
    min_size = check_int(min_size, "min_size", minimum=1)
    max_size = check_int(max_size, "max_size", minimum=min_size)
    parts = [_codebook_sizes(k, min_size, max_size) for k in kinds]
    parts = [p for p in parts if not p.is_empty]
    if not parts:
        raise ValueError(f"none of the kinds {list(kinds)} has a codebook with {min_size}..{max_size} points")
    return st.one_of(parts)


# ----------------------------------------------------------------------------------------------------------
# arrays of vectors
# ----------------------------------------------------------------------------------------------------------
def vector_fields(
    n_points: int | tuple[int, int] = (1, 16),
    dtype: Any = np.float64,
    *,
    unit: bool = False,
    min_norm: float = 0.0,
    max_norm: float = 1e6,
    allow_zero: bool = True,
) -> st.SearchStrategy:
    """Strategy for arrays of vectors of shape ``(n, 3)``, e.g. forces or features attached to points.

    Rows are drawn independently by :func:`unit_vectors` (``unit=True``) or :func:`vectors`, so failures
    shrink row by row and to fewer rows.

    Parameters
    ----------
    n_points : int or (int, int)
        Number of rows, or an inclusive range for it.
    dtype : numpy or torch floating dtype, default ``np.float64``
    unit : bool, default False
        Draw unit rows (then the norm arguments are ignored).
    min_norm, max_norm, allow_zero
        As in :func:`vectors`.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of arrays/tensors of shape ``(n, 3)``.

    Examples
    --------
    >>> from spherequant.strategies import vector_fields
    >>> vector_fields(n_points=5, unit=True).example().shape
    (5, 3)
    """
    lo, hi = _check_count(n_points, "n_points")
    unit = check_bool(unit, "unit")
    if not unit:
        _check_max_norm(max_norm, dtype)
    row = (
        _directions()
        if unit
        else vectors(np.float64, min_norm=min_norm, max_norm=max_norm, allow_zero=allow_zero)
    )
    convert = _converter(dtype)
    rows = st.lists(row, min_size=lo, max_size=hi)
    field = rows.map(lambda rs: convert(np.stack(rs) if rs else np.zeros((0, 3))))
    if not allow_zero and not unit:  # rows that underflow to zero in the target dtype are rejected
        field = field.filter(lambda a: bool((a != 0).any(-1).all()))
    return field


def point_clouds(
    n_points: int | tuple[int, int] = (2, 12),
    dtype: Any = np.float64,
    *,
    min_distance: float = 1.0,
) -> st.SearchStrategy:
    """Strategy for point clouds of shape ``(n, 3)`` with a guaranteed minimum pairwise distance.

    Points are distinct sites of a cubic lattice of spacing ``2 * min_distance`` (drawn without replacement),
    each moved by a drawn jitter of at most ``min_distance / 2`` per coordinate, so every pair is at least
    ``min_distance`` apart: usable as atomic positions for pair potentials and force fields without
    singularities. Failures shrink towards the first lattice sites with no jitter.

    Parameters
    ----------
    n_points : int or (int, int)
        Number of points, or an inclusive range for it.
    dtype : numpy or torch floating dtype, default ``np.float64``
    min_distance : float, default 1.0
        Minimum distance between any two points (length units of the caller, e.g. Angstrom), positive.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of arrays/tensors of shape ``(n, 3)``.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.spatial.distance import pdist
    >>> from spherequant.strategies import point_clouds
    >>> x = point_clouds(n_points=6, min_distance=0.8).example()
    >>> bool(pdist(x).min() >= 0.8 - 1e-12)
    True
    """
    lo, hi = _check_count(n_points, "n_points")
    min_distance = check_real(min_distance, "min_distance")
    if not (math.isfinite(min_distance) and min_distance > 0):
        raise ValueError(f"min_distance must be positive and finite, got {min_distance}")
    side = max(2, math.ceil(hi ** (1.0 / 3.0)) + 1)
    spacing = 2.0 * min_distance
    half_jitter = 0.5 * min_distance
    convert = _converter(dtype)
    jitter = st.floats(-half_jitter, half_jitter, allow_nan=False, allow_infinity=False)

    @st.composite
    def draw_cloud(draw):
        n = draw(st.integers(lo, hi))
        sites = draw(st.lists(st.integers(0, side**3 - 1), min_size=n, max_size=n, unique=True))
        offsets = draw(st.lists(st.tuples(jitter, jitter, jitter), min_size=n, max_size=n))
        idx = np.asarray(sites, dtype=np.int64).reshape(n)
        grid = np.stack([idx % side, (idx // side) % side, idx // side**2], axis=-1).astype(np.float64)
        pts = grid * spacing + np.asarray(offsets, dtype=np.float64).reshape(n, 3)
        return convert(pts)

    return draw_cloud()
