r"""Direction codebooks on the unit sphere: the :class:`Codebook` class and its constructors.

A codebook is a finite set :math:`C = \{c_0, \dots, c_{K-1}\} \subset S^2`. Its nearest-codeword
quantizer is :math:`Q_d(u) = \arg\max_k \langle u, c_k \rangle` and its covering radius is

.. math:: \delta(C) = \max_{u \in S^2} \min_k \angle(u, c_k),

computed **exactly** (up to float64 rounding) by :meth:`Codebook.covering_radius` for every non-empty
codebook, including point sets inside a hemisphere and points on one circle.

Constructors: :func:`fibonacci`, :func:`icosahedral`, :func:`geodesic`, :func:`healpix`, :func:`tetrahedron`,
:func:`octahedron`, :func:`cube`, :func:`icosahedron`, :func:`dodecahedron`, :func:`random`; any point set via
``Codebook(points)``.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from typing import Any

import numpy as np
import torch
from scipy.spatial import ConvexHull, QhullError, cKDTree

from . import _points
from ._backend import as_float_array, check_vectors, is_torch
from ._points import DUPLICATE_ANGLE  # two codewords closer than this (radians) are rejected as duplicates
from ._validation import check_bool, check_int, is_traced
from .bounds import fejes_toth_covering_radius
from .learn import minimax_codebook, spherical_kmeans
from .lookup import NearestIndex, brute_force_nearest, cell_vertices
from .sphere import angle, normalize, random_unit_vectors

__all__ = [
    "Codebook",
    "cube",
    "dodecahedron",
    "fibonacci",
    "geodesic",
    "healpix",
    "icosahedral",
    "icosahedron",
    "kmeans",
    "learned",
    "octahedron",
    "random",
    "tetrahedron",
]

#: Largest number of points the constructors will build (memory guard).
_MAX_POINTS = 10**8
#: Queries per chunk in the KD-tree evaluation of the covering-radius candidates (bounds temporary memory).
_QUERY_CHUNK = 1 << 18
#: Codebooks with at most this many points are searched by brute force, larger ones by the cube-map index.
_BRUTE_MAX_K = 32
#: From this size on (and with numba) the covering radius comes from the lookup index's cells, not qhull.
_INDEX_COVERING_MIN = 20_000


def _search_dtype(x):
    """The floating dtype in which queries of ``x`` are compared (float32 or float64; others -> float32)."""
    if is_torch(x):
        return np.dtype(np.float64) if x.dtype == torch.float64 else np.dtype(np.float32)
    return np.dtype(np.float64) if x.dtype == np.float64 else np.dtype(np.float32)


def _brute_nearest(points: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Reference float argmax of the dot products (lowest index among equal maxima), chunked.

    Delegates to :func:`spherequant.lookup.brute_force_nearest`, which fixes the evaluation order of the
    dot product shared by every search path.
    """
    return np.asarray(brute_force_nearest(points, flat), dtype=np.int64)


# ---------------------------------------------------------------------------------------------- traced lookup
# A graph trace (make_fx, torch.compile) cannot run the numpy/numba search on its fake tensors, so a traced
# call of Codebook.nearest becomes one node of a custom operator, which runs the same exact search on the
# real tensors when the graph is replayed. The graph holds an integer key; the registry maps it to the
# codebook (a strong reference: codebooks built on the fly must outlive the call that traced them), one key
# per distinct set of points, so the registry grows only with the number of different codebooks traced.
_TRACE_KEYS: dict = {}  # sha1 of the points -> key
_TRACE_REGISTRY: dict = {}  # key -> Codebook
_NEAREST_OP: list = []


def _nearest_op():
    """The operator ``spherequant::nearest_codeword(x (..., 3), key) -> (...) int64`` (defined once)."""
    if not _NEAREST_OP:

        @torch.library.custom_op("spherequant::nearest_codeword", mutates_args=())
        def nearest_codeword(x: torch.Tensor, key: int) -> torch.Tensor:
            codebook = _TRACE_REGISTRY.get(key)
            if codebook is None:
                raise RuntimeError(f"no codebook was traced with key {key} in this process")
            return codebook.nearest(x).clone()

        @nearest_codeword.register_fake
        def _(x, key):
            return x.new_empty(x.shape[:-1], dtype=torch.long)

        _NEAREST_OP.append(nearest_codeword)
    return _NEAREST_OP[0]


def _transformed(x) -> bool:
    """Whether ``x`` is a tensor wrapped by a ``torch.func`` transform (no storage to read as numpy)."""
    functorch = getattr(torch._C, "_functorch", None)
    return (
        isinstance(x, torch.Tensor)
        and functorch is not None
        and bool(functorch.is_functorch_wrapped_tensor(x))
    )


def _traced_nearest(codebook, x):
    key = codebook._cache.get("trace_key")
    if key is None:
        key = codebook._cache["trace_key"] = _TRACE_KEYS.setdefault(codebook.digest, len(_TRACE_KEYS) + 1)
        _TRACE_REGISTRY.setdefault(key, codebook)
    return _nearest_op()(x, key)


class Codebook:
    r"""A finite set of distinct unit vectors with an exact nearest-codeword quantizer.

    Parameters
    ----------
    points : array_like or torch.Tensor, shape (K, 3)
        Codeword directions, ``K >= 1``; finite, no zero rows. Rows are scaled to unit length (rows already
        unit to within 4 float64 ulps are kept bit for bit). Stored as a read-only float64 numpy array.
    kind : str, optional
        Label of the construction (``"fibonacci"``, ``"healpix"``, ...), default ``"custom"``.
    name : str or None, optional
        Free-form label shown in ``repr``.

    Raises
    ------
    TypeError
        For non-numeric ``points`` or non-string ``kind``/``name``.
    ValueError
        If ``points`` is empty, not of shape (K, 3), non-finite, has a zero row, or two rows with the same
        direction (angle below ``DUPLICATE_ANGLE = 1e-12`` rad).

    Notes
    -----
    Points are immutable, so derived quantities (covering radius, deepest hole, minimum separation, the
    KD-tree) are computed once and cached.

    Examples
    --------
    >>> import numpy as np
    >>> cb = Codebook(np.eye(3) * 2.0)
    >>> cb
    Codebook(kind='custom', size=3)
    >>> round(cb.covering_radius(degrees=True), 4)  # hole at -(1, 1, 1) / sqrt(3)
    125.2644
    >>> int(cb.nearest(np.array([0.1, 0.9, 0.2])))
    1
    """

    def __init__(self, points: Any, *, kind: str = "custom", name: str | None = None):
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"kind must be a non-empty str, got {kind!r}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {type(name).__name__}")
        if is_torch(points):  # dtype and device checked before the copy (complex, bool, meta refused)
            points = as_float_array(points, "points").detach().cpu().to(torch.float64).numpy()
        p = check_vectors(points, "points")
        if p.ndim != 2:
            raise ValueError(f"points must have shape (K, 3), got {tuple(p.shape)}")
        if p.shape[0] == 0:
            raise ValueError("points must contain at least one codeword, got shape (0, 3)")
        p = np.array(p, dtype=np.float64)
        zero = (p == 0).all(axis=1)
        if zero.any():
            k = int(np.argmax(zero))
            raise ValueError(f"points has a zero row (row {k}); a codeword needs a direction")
        norms = np.linalg.norm(p, axis=1)  # may underflow to 0 for tiny rows: those are renormalised below
        off = np.abs(norms - 1.0) > 4 * np.finfo(np.float64).eps
        if off.any():
            p[off] = normalize(p[off])
        p.setflags(write=False)
        self._points = p
        self._kind = kind
        self._name = name
        self._tree = cKDTree(p)
        self._cache: dict[str, Any] = {}
        self._torch_points: dict[tuple, torch.Tensor] = {}
        self._check_duplicates()

    # -- basic protocol -------------------------------------------------------------------------------
    @property
    def points(self) -> np.ndarray:
        """Codewords, float64 array of shape (K, 3) with unit rows (read-only)."""
        return self._points

    @property
    def digest(self) -> str:
        """SHA-1 of the codewords' float64 bytes (computed once; the points are read-only): two codebooks
        with the same digest quantize identically (e.g. the key of a traced graph baking the codebook in)."""
        if "digest" not in self._cache:
            self._cache["digest"] = hashlib.sha1(np.ascontiguousarray(self._points).tobytes()).hexdigest()
        return self._cache["digest"]

    @property
    def size(self) -> int:
        """Number of codewords ``K``."""
        return self._points.shape[0]

    @property
    def kind(self) -> str:
        """Label of the construction (e.g. ``"fibonacci"``)."""
        return self._kind

    @property
    def name(self) -> str | None:
        """Optional free-form label."""
        return self._name

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        extra = f", name={self._name!r}" if self._name is not None else ""
        return f"Codebook(kind={self._kind!r}, size={self.size}{extra})"

    def _check_duplicates(self) -> None:
        dup = _points.duplicate_pair(self._points, self._tree)
        if dup is not None:
            i, j, ang = dup
            raise ValueError(
                f"points has duplicate directions: rows {i} and {j} are {ang:.3e} "
                f"rad apart (minimum {DUPLICATE_ANGLE:g})"
            )

    # -- geometry -------------------------------------------------------------------------------------
    def _f(self, u: np.ndarray) -> np.ndarray:
        """Exact ``f(u) = min_k angle(u, c_k)`` (radians) for unit float64 rows ``u`` of shape (N, 3)."""
        k = min(3, self.size)
        out = np.empty(u.shape[0])
        for s in range(0, u.shape[0], _QUERY_CHUNK):
            q = u[s : s + _QUERY_CHUNK]
            _, idx = self._tree.query(q, k=k)
            idx = idx.reshape(q.shape[0], k)
            # the chord-nearest codeword is the angle-nearest; min over a few absorbs rounding near ties
            out[s : s + _QUERY_CHUNK] = angle(q[:, None, :], self._points[idx]).min(axis=1)
        return out

    def _covering(self) -> tuple[float, np.ndarray]:
        if "covering" not in self._cache:
            self._cache["covering"] = _exact_covering(self)
        return self._cache["covering"]

    def covering_radius(self, degrees: bool = False) -> float:
        r"""Exact covering radius :math:`\delta(C) = \max_{u \in S^2} \min_k \angle(u, c_k)`.

        Algorithm. On the Voronoi cell of ``c``, ``f(u) = min_k angle(u, c_k)`` equals ``angle(u, c)``, whose
        only local maximum is ``-c``; on the Voronoi edge of a pair ``(a, b)`` (an arc of their bisector
        great circle) ``cos angle(u, a) = <u, a + b> / 2`` is unimodal along the circle, so the edge maximum
        is at an end (a Voronoi vertex) or at ``-(a + b) / |a + b|``. Hence the maximiser of ``f`` is among
        (i) Voronoi vertices, (ii) ``-(a + b)/|a + b|`` for Voronoi-neighbour pairs, (iii) antipodes ``-c``.

        * ``K = 1``: ``pi``. ``K = 2`` at angle ``t``: ``pi - t / 2`` (``pi/2`` for an antipodal pair).
        * Points on one circle (``K = 3`` always; detected by an SVD plane fit with residual below 1e-12):
          the Voronoi vertices are the two plane normals ``+-n``; candidates are ``+-n``, circumcentres of
          triples (all triples for ``K <= 40``, else angularly consecutive ones: they absorb the rounding
          of the plane fit), the bisector antipodes of angularly adjacent pairs (all pairs for
          ``K <= 500``) and all ``-c``. (For ``K > 40`` points off a plane by 1e-13..1e-12 the result
          may be low by about that deviation; exactly planar input and all other sets are exact.)
        * Otherwise the convex hull (qhull, triangulated with ``Qt``) gives everything: each facet with
          outward unit normal ``m`` and offset ``d`` (all points satisfy ``<m, x> <= d``) bounds an empty
          cap centred at ``m``, so ``m`` is a Voronoi vertex with ``f(m) = angle(m, facet vertex)`` (also
          when ``d < 0``, i.e. the origin is outside the hull); every Voronoi vertex arises this way, and
          Voronoi neighbours are hull edges. When the origin is strictly inside the hull (``d > 1e-9`` for
          every facet) no cap exceeds a hemisphere, candidates (ii) and (iii) can never be maximisers, and
          ``delta`` is the largest facet angle (fast path; ``cos delta = min_facets d``). Otherwise all
          facet normals, hull-edge bisector antipodes and ``-c`` are evaluated.
        * ``K >= 20000`` (with numba): no global hull. If the hull of the codewords nearest to 14 fixed
          directions contains the origin strictly (so the full hull does, and the maximisers are Voronoi
          vertices), each cell of the nearest-codeword index (:class:`spherequant.lookup.NearestIndex`)
          evaluates the circumcentres of its candidate triples that fall inside it: a Voronoi vertex in a
          cell is equidistant from its nearest codewords, which are all candidates of that cell, so the
          deepest of these true values of ``f`` is ``delta`` (about 5x faster than qhull at ``K = 10**6``).
          Otherwise the hull path above runs.

        Every candidate value is a true value of ``f`` -- evaluated by an exact nearest-codeword search
        (KD-tree on the unit vectors; chord is monotone in angle) with angles from ``atan2`` -- and the
        maximiser is among the candidates, so the maximum is ``delta`` up to float64 rounding. Facet normals
        are recomputed from the facet's vertices (cross product of edge vectors) for accuracy on tiny facets
        (``delta ~ 2e-3`` for ``K = 10**6``).

        Parameters
        ----------
        degrees : bool, optional
            Return degrees instead of radians.

        Returns
        -------
        float
            Covering radius in ``[0, pi]`` (radians) or degrees.

        Examples
        --------
        >>> round(octahedron().covering_radius(degrees=True), 4)
        54.7356
        >>> round(Codebook([[0.0, 0.0, 1.0]]).covering_radius(), 6) == round(math.pi, 6)
        True
        """
        delta = self._covering()[0]
        return math.degrees(delta) if check_bool(degrees, "degrees") else delta

    def deepest_hole(self) -> np.ndarray:
        """A point of the sphere farthest from the codebook (it attains :meth:`covering_radius`).

        Returns
        -------
        ndarray, shape (3,)
            Unit vector (float64). When the maximiser is not unique, one of them.

        Examples
        --------
        >>> import numpy as np
        >>> h = Codebook(np.eye(3)).deepest_hole()
        >>> np.round(np.abs(h), 6).tolist()  # a corner direction of the negative octant
        [0.57735, 0.57735, 0.57735]
        """
        return self._covering()[1].copy()

    def min_separation(self, degrees: bool = False) -> float:
        """Smallest angle between two distinct codewords (exact: KD-tree nearest neighbours, atan2 angles).

        Parameters
        ----------
        degrees : bool, optional
            Return degrees instead of radians.

        Returns
        -------
        float
            Minimum pairwise angle; ``inf`` for a single codeword (the minimum over no pairs).

        Examples
        --------
        >>> round(octahedron().min_separation(degrees=True), 6)
        90.0
        """
        degrees = check_bool(degrees, "degrees")
        if "min_sep" not in self._cache:
            if self.size == 1:
                self._cache["min_sep"] = math.inf
            else:
                k = min(3, self.size)
                _, idx = self._tree.query(self._points, k=k)
                nb = self._points[idx[:, 1:]]
                self._cache["min_sep"] = float(angle(self._points[:, None, :], nb).min())
        v = self._cache["min_sep"]
        return math.degrees(v) if degrees else v

    def fejes_toth_ratio(self) -> float:
        """Covering radius divided by the Fejes Toth lower bound for ``K`` points (``>= 1``; 1 is optimal).

        Examples
        --------
        >>> round(icosahedron().fejes_toth_ratio(), 9)
        1.0
        """
        return self.covering_radius() / fejes_toth_covering_radius(self.size)

    # -- quantization ---------------------------------------------------------------------------------
    def nearest_unchecked(self, flat: np.ndarray) -> np.ndarray:
        """Nearest-codeword indices of queries that the caller has already validated (no checks here).

        For inference loops that check their inputs once (e.g. the integer model of
        :mod:`spherequant.models.deploy`): ``flat`` must be a C-contiguous numpy array of shape (N, 3), dtype
        float32 or float64, with finite non-zero rows; anything else gives undefined indices, not an error.
        Use :meth:`nearest` everywhere else.

        This is the single dispatch point of :meth:`nearest` / :meth:`quantize`: faster exact structures
        (e.g. :mod:`spherequant.lookup`) plug in here. Contract: return exactly
        ``spherequant.lookup.brute_force_nearest(self.points, flat)`` (int64, shape (N,)).

        Small codebooks (``K <= 32``) are searched by brute force; larger ones by the exact cube-map index of
        :class:`spherequant.lookup.NearestIndex` (a few candidates per cell, same dot-product expression and
        tie rule as brute force, so the result is identical).
        """
        if flat.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        if self.size <= _BRUTE_MAX_K:
            return _brute_nearest(self._points, flat)
        return self._index().query_unchecked(flat)

    def prepare_nearest(self, dtype: str = "float32") -> None:
        """Build the nearest-codeword search structure for queries of ``dtype`` now (the cube-map candidate
        table of :class:`spherequant.lookup.NearestIndex`, a few milliseconds at ``K = 4096``) instead of
        after many queries: for inference loops that will query this codebook many times with few vectors
        per call (the table answers those several times faster than the table-free scan)."""
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        if self.size > _BRUTE_MAX_K:
            self._index().table(dtype)

    def _index(self):
        """The cube-map :class:`spherequant.lookup.NearestIndex` of this codebook (built once, cached)."""
        if "index" not in self._cache:
            self._cache["index"] = NearestIndex(self._points)
        return self._cache["index"]

    def nearest(self, x: Any):
        r"""Index of the nearest codeword to each direction of ``x``.

        Nearest by angle equals largest dot product: for non-zero ``x`` and unit ``c``,
        ``cos angle(x, c) = <x, c> / |x|`` and ``angle`` is decreasing in the cosine on ``[0, pi]``, so
        ``argmin_k angle(x, c_k) = argmax_k <x, c_k>`` (``|x|`` is common to all ``k``). The dot products are
        evaluated in the query's floating dtype (float32 or float64; other dtypes as float32) with the fixed
        expression of :func:`spherequant.lookup.brute_force_nearest`; ties (equal computed maxima) go to the
        lowest index, so results are deterministic and identical across search paths.

        Parameters
        ----------
        x : array_like or torch.Tensor, shape (..., 3)
            Query vectors (any non-zero length; only the direction matters).

        Returns
        -------
        ndarray or torch.Tensor, shape (...), int64
            Codeword indices; a tensor on ``x``'s device for torch input.

        Raises
        ------
        TypeError
            For non-numeric input.
        ValueError
            On a bad shape, NaN/inf, or a zero vector (its direction, hence its codeword, is undefined;
            MDDQ maps zero vectors to zero before calling this).

        Examples
        --------
        >>> import numpy as np
        >>> cb = octahedron()
        >>> cb.nearest(np.array([[0.2, -0.9, 0.1], [0.0, 0.0, 5.0]])).tolist()
        [3, 4]
        """
        if (
            isinstance(x, torch.Tensor)
            and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64)
            and not (is_traced(x) or _transformed(x))
        ):
            # a plain CPU tensor: checked and searched as the numpy array sharing its memory (the numpy
            # checks cost a few microseconds; torch's reductions on small tensors cost tens)
            idx = self.nearest(x.detach().numpy())
            return torch.from_numpy(idx) if isinstance(idx, np.ndarray) else torch.as_tensor(idx)
        x = check_vectors(x, "x")
        if is_traced(x) or _transformed(x):
            return _traced_nearest(self, x)
        if is_torch(x) and x.device.type != "cpu" and self.size > _BRUTE_MAX_K:
            # stay on the accelerator: the index's torch path gathers candidates without a host round trip
            if bool((x == 0).all(dim=-1).any()):
                raise ValueError(
                    "x contains a zero vector; its direction, hence its nearest codeword, is undefined"
                )
            return self._index().query(x)
        dev = x.device if is_torch(x) else None
        dt = _search_dtype(x)
        if is_torch(x) and x.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float32)  # float16/bfloat16/int tensors: compared in float32 (no numpy bfloat16)
        flat = x.detach().cpu().numpy() if is_torch(x) else x
        shape = tuple(flat.shape[:-1])
        flat = np.asarray(flat.reshape(-1, 3), dtype=dt)
        if flat.shape[0] and (flat == 0).any():  # (a zero component is rare: then look for zero rows)
            zero = (flat == 0).all(axis=1)
            if zero.any():
                raise ValueError(
                    f"x contains a zero vector (flat row {int(np.argmax(zero))}); its direction, hence its "
                    "nearest codeword, is undefined"
                )
        idx = self.nearest_unchecked(flat).reshape(shape)
        return torch.as_tensor(idx, device=dev) if dev is not None else idx

    def quantize(self, x: Any):
        """Nearest codeword ``Q_d(x)`` of each direction of ``x``.

        Parameters
        ----------
        x : array_like or torch.Tensor, shape (..., 3)
            Query vectors (non-zero).

        Returns
        -------
        ndarray or torch.Tensor, shape (..., 3)
            Unit codewords in ``x``'s floating dtype (numpy: float32 stays float32, otherwise float64; torch:
            the input dtype and device). The map is piecewise constant, so torch outputs carry no gradient;
            use :mod:`spherequant.ste` for straight-through training.

        Raises
        ------
        TypeError, ValueError
            As :meth:`nearest`.

        Examples
        --------
        >>> import numpy as np
        >>> octahedron().quantize(np.array([0.2, -0.9, 0.1])).tolist()
        [0.0, -1.0, 0.0]
        """
        x = check_vectors(x, "x")
        idx = self.nearest(x)
        if is_torch(x):
            key = (x.dtype, str(x.device))
            if key not in self._torch_points:
                self._torch_points[key] = torch.from_numpy(self._points.copy()).to(x.device, x.dtype)
            return self._torch_points[key][idx]
        dt = np.float32 if x.dtype == np.float32 else np.float64
        return self._points.astype(dt, copy=False)[idx]

    def rotated(self, rotation: Any) -> Codebook:
        """The codebook ``{R c_k}`` (active rotation, same codeword order), as a new :class:`Codebook`.

        Parameters
        ----------
        rotation : array_like or torch.Tensor, shape (3, 3)
            Rotation matrix (orthogonal to 1e-6, determinant +1).

        Returns
        -------
        Codebook
            Same ``kind`` and ``name``; derived quantities are recomputed, not copied.

        Raises
        ------
        ValueError
            If ``rotation`` is not a 3x3 proper rotation.

        Examples
        --------
        >>> import numpy as np
        >>> R = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        >>> octahedron().rotated(R).points[0].round(12).tolist()
        [0.0, 1.0, 0.0]
        """
        if is_torch(rotation):
            rotation = as_float_array(rotation, "rotation").detach().cpu().to(torch.float64).numpy()
        r = np.asarray(as_float_array(rotation, "rotation"), dtype=np.float64)
        if r.shape != (3, 3):
            raise ValueError(f"rotation must have shape (3, 3), got {r.shape}")
        if not np.isfinite(r).all():
            raise ValueError("rotation contains NaN or infinite entries")
        err = float(np.abs(r.T @ r - np.eye(3)).max())
        if err > 1e-6 or np.linalg.det(r) <= 0:
            raise ValueError(
                f"rotation must be a proper rotation matrix (R^T R = I to 1e-6, det +1); got "
                f"max |R^T R - I| = {err:.2e}, det = {np.linalg.det(r):.3f}"
            )
        return Codebook(self._points @ r.T, kind=self._kind, name=self._name)


# ----------------------------------------------------------------------------------------------------------
# exact covering radius
# ----------------------------------------------------------------------------------------------------------
def _best(cb: Codebook, cands: np.ndarray) -> tuple[float, np.ndarray]:
    """Largest exact ``f`` over the (not necessarily unit) candidate rows; returns (value, unit point)."""
    norms = np.linalg.norm(cands, axis=1)
    cands = cands[norms > 1e-300]
    u = normalize(cands)
    vals = cb._f(u)
    k = int(np.argmax(vals))
    return float(vals[k]), u[k]


def _pair_bisector_antipodes(p: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Direction ``-(a + b)`` for each pair, projected onto the bisector plane ``<u, a - b> = 0``.

    For nearly antipodal pairs ``a + b`` is tiny and its direction inaccurate *within* the plane of ``a``
    and ``b`` (which moves it off the bisector and lowers ``f`` to first order); the projection removes that
    component (``a - b`` is well conditioned), leaving only an error along the bisector circle, where ``f``
    is stationary. It is applied only to pairs more than ``pi/2`` apart: for close pairs ``-(a + b)`` is
    itself accurate and ``a - b`` is not. Exactly antipodal pairs (``a + b = 0``; the whole bisector circle
    is at ``pi/2``, and its maxima are Voronoi vertices) are skipped.
    """
    a, b = p[pairs[:, 0]], p[pairs[:, 1]]
    s = -(a + b)
    d = a - b
    far = np.einsum("ij,ij->i", s, s) < np.einsum("ij,ij->i", d, d)  # angle > pi/2: a - b well conditioned
    if far.any():
        sf, df = s[far], d[far]
        s[far] = sf - (np.einsum("ij,ij->i", sf, df) / np.einsum("ij,ij->i", df, df))[:, None] * df
    return s[np.linalg.norm(s, axis=1) > 0]


def _exact_covering(cb: Codebook) -> tuple[float, np.ndarray]:
    p = cb.points
    k = p.shape[0]
    if k == 1:
        return math.pi, -p[0]
    if k == 2:
        e = np.zeros(3)
        e[int(np.argmin(np.abs(p[0])))] = 1.0
        # bisector antipode (if a + b != 0) and a point of the bisector circle (all of it is at pi/2 when
        # the pair is antipodal)
        cands = [_pair_bisector_antipodes(p, np.array([[0, 1]])), np.cross(p[0] - p[1], e)[None], -p]
        return _best(cb, np.concatenate(cands))
    centre = p.mean(axis=0)
    vt = np.linalg.svd(p - centre, full_matrices=False)[2]
    normal = vt[2]
    if float(np.abs((p - centre) @ normal).max()) <= 1e-12:
        return _circle_covering(cb, normal)
    if k >= _INDEX_COVERING_MIN:
        got = _index_covering(cb)
        if got is not None:
            return got
    return _hull_covering(cb)


def _index_covering(cb: Codebook) -> tuple[float, np.ndarray] | None:
    """Covering radius from the nearest-codeword index's cells (no global hull); ``None`` if not applicable.

    Applies when the origin is strictly inside the hull, certified by the hull of the codewords nearest to
    the 14 directions ``+-e_i`` and ``(+-1, +-1, +-1)`` (offsets > 1e-9; a sub-hull containing the origin
    means the full hull does). Then every cap is smaller than a hemisphere and the maximisers of ``f`` are
    Voronoi vertices (see :meth:`Codebook.covering_radius`). Every Voronoi vertex is the circumcentre of a
    candidate triple of the cell it lies in (:func:`spherequant.lookup.cell_vertices`), so the deepest
    in-cell circumcentre over all cells is ``delta``; the 64 deepest are re-evaluated exactly (KD-tree,
    atan2) like the facet normals of the hull path. Needs numba (``None`` without it).
    """
    p = cb.points
    dirs = np.concatenate([np.eye(3), -np.eye(3), np.array(list(itertools.product((-1.0, 1.0), repeat=3)))])
    near = np.unique(_brute_nearest(p, dirs))  # 14 queries: brute force, no packed query tables needed
    if near.size < 4:
        return None
    try:
        sub = ConvexHull(p[near])
    except QhullError:
        return None
    if float(-sub.equations[:, 3].min()) <= 1e-9:
        return None
    res = cell_vertices(cb._index())
    if res is None:
        return None
    best_cos, best_v = res
    top = np.argpartition(best_cos, min(64, best_cos.size - 1))[:64]
    top = top[best_cos[top] < 2.0]
    if top.size == 0:  # pragma: no cover - every set with the origin inside has Voronoi vertices
        return None
    val, u = _best(cb, best_v[top])
    if val >= math.pi / 2 - 1e-9:  # pragma: no cover - impossible with the origin strictly inside
        return None
    return val, u


def _hull_covering(cb: Codebook) -> tuple[float, np.ndarray]:
    """The covering radius from qhull's convex hull (every point set that is not on one circle)."""
    p = cb.points
    try:
        hull = ConvexHull(p)
    except QhullError:  # pragma: no cover - nearly flat input that escaped the plane test
        hull = ConvexHull(p, qhull_options="QJ")
    simp = hull.simplices
    a, b, c = p[simp[:, 0]], p[simp[:, 1]], p[simp[:, 2]]
    m = np.cross(b - a, c - a)
    mn = np.linalg.norm(m, axis=1)
    q_normal = hull.equations[:, :3]
    ok = mn > 1e-300
    m[ok] /= mn[ok, None]
    m[~ok] = q_normal[~ok]
    m *= np.where(np.einsum("ij,ij->i", m, q_normal) < 0, -1.0, 1.0)[:, None]
    offsets = -hull.equations[:, 3]  # qhull: <n, x> + off <= 0 inside, so d = -off
    if float(offsets.min()) > 1e-9:
        # origin strictly inside: delta = max facet angle. Rank facets by cos(angle) = <m, a> (cheap), then
        # evaluate f exactly (nearest search, atan2) at the best few
        cos_facet = np.einsum("ij,ij->i", m, a)
        top = np.argpartition(cos_facet, min(64, len(m) - 1))[:64]
        return _best(cb, np.concatenate([m[top], q_normal[top]]))  # qhull's own normals as a cross-check
    edges = np.concatenate([simp[:, [0, 1]], simp[:, [1, 2]], simp[:, [2, 0]]])
    if len(hull.coplanar):  # points qhull kept off the vertex list: connect them to their facet's vertices
        cop = hull.coplanar
        extra = [np.stack([cop[:, 0], simp[cop[:, 1], j]], axis=1) for j in range(3)]
        edges = np.concatenate([edges, *extra])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    cands = np.concatenate([m, q_normal, _pair_bisector_antipodes(p, edges), -p])
    return _best(cb, cands)


def _circle_covering(cb: Codebook, normal: np.ndarray) -> tuple[float, np.ndarray]:
    """Covering radius of K >= 3 points on one circle with plane normal ``normal``."""
    p = cb.points
    k = p.shape[0]
    if k <= 500:
        i, j = np.triu_indices(k, 1)
        pairs = np.stack([i, j], axis=1)
    if k > 40:
        e1 = p[0] - (p[0] @ normal) * normal
        if np.linalg.norm(e1) < 1e-9:
            e1 = p[1] - (p[1] @ normal) * normal
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(normal, e1)
        order = np.argsort(np.arctan2(p @ e2, p @ e1))
        if k > 500:
            pairs = np.stack([order, np.roll(order, -1)], axis=1)
    # circumcentres of triples: for points off the plane by rounding (<= 1e-12) the true Voronoi vertices are
    # these (near +-n), not +-n itself; all triples for small K, angularly consecutive ones otherwise
    if k <= 40:
        triples = np.array(list(itertools.combinations(range(k), 3)))
    else:
        triples = np.stack([order, np.roll(order, -1), np.roll(order, -2)], axis=1)
    a, b, c = p[triples[:, 0]], p[triples[:, 1]], p[triples[:, 2]]
    cc = np.cross(b - a, c - a)
    cands = [normal[None], -normal[None], cc, -cc, _pair_bisector_antipodes(p, pairs), -p]
    return _best(cb, np.concatenate(cands))


# ----------------------------------------------------------------------------------------------------------
# constructors
# ----------------------------------------------------------------------------------------------------------
def fibonacci(n: int, *, pole_corrected: bool = False) -> Codebook:
    """Spherical Fibonacci (golden spiral) codebook of ``n`` points.

    Point ``i = 0..n-1`` has ``z_i = 1 - (2 i + 1) / n`` (the standard half-offset, so no point sits at a
    pole) and longitude ``phi_i = 2 pi frac(i / golden_ratio)``; ``(x, y) = sqrt(1 - z_i^2)
    (cos phi_i, sin phi_i)``. This is the point order assumed by :func:`spherequant.lookup.fibonacci_nearest`.

    The standard spiral leaves its largest holes at the poles (ratio to the Fejes Toth bound about 1.24 for
    large ``n``); ``pole_corrected=True`` returns :func:`spherequant.learn.pole_corrected_fibonacci`
    instead (about 1.18), whose point order :func:`spherequant.lookup.fibonacci_nearest` does not know.

    Parameters
    ----------
    n : int
        Number of points, ``1 <= n <= 10**8``.
    pole_corrected : bool, optional
        Use the pole-corrected variant.

    Returns
    -------
    Codebook
        ``kind="fibonacci"`` (or ``"fibonacci_pole_corrected"``).

    Examples
    --------
    >>> cb = fibonacci(100)
    >>> len(cb), round(float(cb.points[0, 2]), 2)
    (100, 0.99)
    """
    n = check_int(n, "n", minimum=1, maximum=_MAX_POINTS)
    if check_bool(pole_corrected, "pole_corrected"):
        if n < 4:
            raise ValueError(f"n must be >= 4 with pole_corrected=True, got {n}")
        return Codebook(_points.pole_corrected_fibonacci_points(n), kind="fibonacci_pole_corrected")
    return Codebook(_points.fibonacci_points(n), kind="fibonacci")


def icosahedral(level: int) -> Codebook:
    """Geodesic icosahedral codebook: ``level`` rounds of midpoint subdivision of the icosahedron's faces.

    Each round splits every triangle into four through its edge midpoints, which are projected to the
    sphere; a midpoint shared by two faces is created once. The 12 icosahedron vertices come first, in the
    order of :func:`icosahedron`, then each round's new points.

    Parameters
    ----------
    level : int
        Subdivision rounds, ``0 <= level <= 10``.

    Returns
    -------
    Codebook
        ``10 * 4**level + 2`` points, ``kind="icosahedral"``.

    Examples
    --------
    >>> [len(icosahedral(k)) for k in range(3)]
    [12, 42, 162]
    """
    level = check_int(level, "level", minimum=0, maximum=10)
    v = _points.icosahedral_points(level)
    return Codebook(v, kind="icosahedral", name=f"level={level}")


def geodesic(i: int, j: int = 0) -> Codebook:
    """Geodesic icosahedral grid with Goldberg-Coxeter parameters ``(i, j)``: ``10 (i^2 + i j + j^2) + 2``
    points with icosahedral rotation symmetry.

    Each face of the icosahedron carries the triangular lattice whose corners are the lattice points
    ``0``, ``i u + j v`` and that point turned by 60 degrees (``u, v`` unit lattice vectors at 60 degrees);
    the lattice points are projected to the sphere (once: :func:`icosahedral` projects at every halving,
    so only ``geodesic(2)`` and ``icosahedral(1)`` share their points). ``j = 0`` and ``i = j`` give the
    mirror-symmetric classes, other pairs the chiral class (``(i, j)`` and ``(j, i)`` are mirror images).
    Refined by the minimax optimiser, these grids reach Hardin, Sloane and Smith's icosahedral coverings
    (``docs/codebooks.md``).

    Parameters
    ----------
    i, j : int
        ``i >= 1``, ``0 <= j``, ``i + j <= 200``.

    Returns
    -------
    Codebook
        ``kind="geodesic"``.

    Examples
    --------
    >>> [len(geodesic(i, j)) for i, j in [(1, 0), (2, 1), (3, 0)]]
    [12, 72, 92]
    """
    i = check_int(i, "i", minimum=1, maximum=200)
    j = check_int(j, "j", minimum=0, maximum=200 - i)
    return Codebook(_points.geodesic_points(i, j), kind="geodesic", name=f"i={i}, j={j}")


def healpix(nside: int) -> Codebook:
    """HEALPix pixel centres in the RING ordering (Gorski et al. 2005): ``12 nside**2`` points.

    Rings ``i = 1 .. 4 nside - 1`` from north to south. Polar rings (``i < nside``) hold ``4 i`` pixels at
    ``z = 1 - i^2 / (3 nside^2)``, ``phi = pi (j - 1/2) / (2 i)``; equatorial rings
    (``nside <= i <= 3 nside``) hold ``4 nside`` pixels at ``z = 4/3 - 2 i / (3 nside)``,
    ``phi = pi (j - 1 + s/2) / (2 nside)`` with ``s = (i - nside + 1) mod 2``, ``j = 1 .. 4 nside`` (so
    pixel order within a ring starts at ``phi = 0`` or half a pixel past it); southern rings mirror the
    northern ones. Pixel ``p`` of :func:`healpy.pix2vec(nside, p)` (``nest=False``) is row ``p``.

    Parameters
    ----------
    nside : int
        Resolution, ``1 <= nside <= 2048`` (any integer is valid for the RING scheme).

    Returns
    -------
    Codebook
        ``kind="healpix"``.

    Examples
    --------
    >>> len(healpix(2))
    48
    """
    nside = check_int(nside, "nside", minimum=1, maximum=2048)
    pts = _points.healpix_points(nside)
    return Codebook(pts, kind="healpix", name=f"nside={nside}")


def tetrahedron() -> Codebook:
    """Vertices of the regular tetrahedron (4 points ``(1, 1, 1), (1, -1, -1), ...`` normalised).

    Examples
    --------
    >>> round(tetrahedron().covering_radius(degrees=True), 4)
    70.5288
    """
    return Codebook(_points.tetrahedron_points(), kind="tetrahedron")


def octahedron() -> Codebook:
    """Vertices of the regular octahedron: ``+-e_x, +-e_y, +-e_z`` (order +x, -x, +y, -y, +z, -z).

    Examples
    --------
    >>> len(octahedron())
    6
    """
    return Codebook(_points.octahedron_points(), kind="octahedron")


def cube() -> Codebook:
    """Vertices of the cube: ``(+-1, +-1, +-1) / sqrt(3)`` (8 points).

    Examples
    --------
    >>> round(cube().covering_radius(degrees=True), 4)
    54.7356
    """
    return Codebook(_points.cube_points(), kind="cube")


def icosahedron() -> Codebook:
    """Vertices of the regular icosahedron: cyclic permutations of ``(0, +-1, +-phi)``, normalised (12).

    Examples
    --------
    >>> round(icosahedron().covering_radius(degrees=True), 4)
    37.3774
    """
    return Codebook(_points.icosahedron_points(), kind="icosahedron")


def dodecahedron() -> Codebook:
    """Vertices of the regular dodecahedron: ``(+-1, +-1, +-1)``, cyclic ``(0, +-1/phi, +-phi)``, normalised.

    Examples
    --------
    >>> len(dodecahedron())
    20
    """
    return Codebook(_points.dodecahedron_points(), kind="dodecahedron")


def random(n: int, seed: Any = None) -> Codebook:
    """``n`` independent uniform random directions (:func:`spherequant.sphere.random_unit_vectors`).

    Parameters
    ----------
    n : int
        Number of points, ``1 <= n <= 10**8``.
    seed : None, int or numpy.random.Generator
        Randomness source (None: fresh entropy).

    Returns
    -------
    Codebook
        ``kind="random"``.

    Raises
    ------
    ValueError
        In the (probability-zero) event of two identical draws.

    Examples
    --------
    >>> len(random(10, seed=0))
    10
    """
    n = check_int(n, "n", minimum=1, maximum=_MAX_POINTS)
    return Codebook(random_unit_vectors(n, seed=seed), kind="random")


def learned(
    n: int,
    *,
    seed: int = 0,
    restarts: int | None = None,
    iterations: int | None = None,
    slp_iterations: int | None = None,
    progress: bool = False,
    cache: bool = True,
) -> Codebook:
    """Codebook of ``n`` points optimised for the covering radius itself (minimax), not mean squared error.

    Calls :func:`spherequant.learn.minimax_codebook`: the shipped table answers default calls for every
    size it holds (4 up to its largest, see :func:`spherequant.learn.shipped_table`) instantly; other sizes
    or options are optimised once and cached on disk. Shipped sizes are never worse than the next smaller
    one plus its deepest hole, nor than any library family of the same size.

    Parameters
    ----------
    n : int
        Number of points.
    seed, restarts, iterations, slp_iterations, progress, cache
        Passed to :func:`spherequant.learn.minimax_codebook`.

    Returns
    -------
    Codebook
        ``kind="learned"``.

    Examples
    --------
    >>> round(learned(12).fejes_toth_ratio(), 6)
    1.0
    """
    pts = minimax_codebook(
        n,
        seed=seed,
        restarts=restarts,
        iterations=iterations,
        slp_iterations=slp_iterations,
        progress=progress,
        cache=cache,
    )
    return Codebook(pts, kind="learned", name=f"n={n}")


def kmeans(data: Any, n: int, *, seed: int = 0, iterations: int = 100, tol: float = 1e-10) -> Codebook:
    """Data-driven codebook: spherical k-means of the directions of ``data`` (k-means++ seeding).

    This is the codebook of the paper's SVQ-KMeans baseline. Calls
    :func:`spherequant.learn.spherical_kmeans`; deterministic for a given ``seed``.

    Parameters
    ----------
    data : array_like or torch.Tensor, shape (M, 3)
        Sample vectors (zero rows are ignored by the clustering; only directions matter).
    n : int
        Number of codewords.
    seed, iterations, tol
        Passed to :func:`spherequant.learn.spherical_kmeans`.

    Returns
    -------
    Codebook
        ``kind="kmeans"``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((500, 3))
    >>> kmeans(x, 8).size
    8
    """
    if is_torch(data):
        data = as_float_array(data, "data").detach().cpu().numpy()
    pts = spherical_kmeans(data, n, seed=seed, iterations=iterations, tol=tol)
    return Codebook(pts, kind="kmeans", name=f"n={n}")
