"""Geometry of the unit sphere :math:`S^2` (batched, numpy or torch).

Every function takes arrays of shape ``(..., 3)`` (numpy arrays or torch tensors; leading axes broadcast) and
returns the same kind; torch paths are differentiable and keep the input's device and dtype.
Argument order follows geomstats: the vector first, the base point last, e.g. ``exp_map(tangent_vec,
base_point)``. Angles are in radians.

Numerical policies
------------------
* **Zero vectors** have no direction. :func:`normalize` raises ``ValueError`` on them by default; with
  ``zero="zero"`` it maps them to the zero vector (with a zero, NaN-free gradient in torch).
  :func:`angle` raises on zero rows.
* **Unit inputs.** Base points (and the ``point`` of :func:`log_map`) must be unit vectors to within
  ``max(1e-6, 1000 * eps)`` of the dtype (about ``1.2e-4`` in float32, ``1e-6`` in float64); otherwise
  ``ValueError``. Normalise first with :func:`normalize`.
* **Antipodes.** The logarithm of an antipodal pair is not unique. :func:`log_map` raises ``ValueError`` when
  ``point`` is antipodal to ``base_point`` to within ``antipodal_tol`` (see there).
* Angles use ``atan2(|a x b|, a . b)``, accurate near 0 and pi; ``sin(t)/t``-type factors use Taylor branches
  near 0 so values and torch gradients stay finite.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._backend import check_vectors, cos_and_sin_dir, is_torch, namespace, pow2_scale, safe_norm
from ._sampling import as_output, parse_shape
from ._validation import check_bool, check_choice, check_real, check_seed

__all__ = [
    "angle",
    "chord",
    "exp_map",
    "log_map",
    "normalize",
    "random_unit_vectors",
    "to_tangent",
]

_ZERO_POLICIES = ("raise", "zero")


def _unit_tol(x) -> float:
    """Tolerance on ``| ||x|| - 1 |`` accepted for 'unit' inputs of the dtype of ``x``.

    ``max(1e-6, 1000 eps)`` for float32/float64; ``16 eps`` for the half-precision types (float16: 0.016,
    bfloat16: 0.125), where ``1000 eps`` would exceed 1 and accept any vector as a unit vector.
    """
    eps = float(namespace(x).eps(x))
    if eps > 1e-5:  # float16 / bfloat16
        return 16.0 * eps
    return max(1e-6, 1000.0 * eps)


def _check_unit(x, name: str):
    """Validate finite ``(..., 3)`` input whose rows are unit vectors within :func:`_unit_tol`."""
    x = check_vectors(x, name)
    xp = namespace(x)
    dev = xp.abs(safe_norm(x, axis=-1) - 1.0)
    if is_torch(dev):
        dev = dev.detach()
    if dev.numel() if is_torch(dev) else dev.size:
        worst = float(xp.max(dev))
        if worst > _unit_tol(x):
            raise ValueError(
                f"{name} must contain unit vectors (| ||{name}|| - 1 | <= {_unit_tol(x):.1e}); "
                f"worst deviation {worst:.3e}. Use spherequant.sphere.normalize first."
            )
    return x


def _match(a, b, names: tuple[str, str] = ("a", "b")):
    """Bring two validated arrays to one kind and dtype.

    Two numpy arrays or two tensors: the wider float dtype. A tensor and a numpy array: the numpy array is
    converted to the tensor's dtype and device (a float32 tensor stays float32). Two tensors on different
    devices raise ValueError naming both arguments.
    """
    if is_torch(a) and is_torch(b):
        if a.device != b.device:
            raise ValueError(
                f"{names[0]} and {names[1]} must be on the same device, got {a.device} and {b.device}"
            )
        dt = torch.promote_types(a.dtype, b.dtype)
        return a.to(dt), b.to(dt)
    if is_torch(a):
        return a, torch.as_tensor(b, dtype=a.dtype, device=a.device)
    if is_torch(b):
        return torch.as_tensor(a, dtype=b.dtype, device=b.device), b
    dt = np.promote_types(a.dtype, b.dtype)
    return a.astype(dt, copy=False), b.astype(dt, copy=False)


def normalize(x: Any, *, zero: str = "raise", eps: float = 0.0):
    """Scale each 3-vector to unit length.

    The norm is computed after dividing each row by its largest absolute entry, so tiny (subnormal) and huge
    rows normalise without underflow or overflow.

    Parameters
    ----------
    x : array_like or torch.Tensor, shape (..., 3)
        Vectors (any length).
    zero : {"raise", "zero"}, default "raise"
        Policy for rows of norm ``<= eps`` (by default: exactly zero rows), whose direction is undefined.
        ``"raise"``: raise ValueError. ``"zero"``: return the zero vector for those rows; in torch their
        gradient is exactly zero (never NaN).
    eps : float, default 0.0
        Rows with Euclidean norm ``<= eps`` count as zero. Must be finite and ``>= 0``.

    Returns
    -------
    same kind as ``x``, shape (..., 3)
        Unit vectors (zero rows under ``zero="zero"``).

    Raises
    ------
    ValueError
        On bad shape, NaN/inf, an unknown ``zero`` policy, a bad ``eps``, or zero rows with ``zero="raise"``.

    Examples
    --------
    >>> import numpy as np
    >>> normalize(np.array([3.0, 0.0, 4.0]))
    array([0.6, 0. , 0.8])
    >>> normalize(np.zeros((1, 3)), zero="zero")
    array([[0., 0., 0.]])
    """
    check_choice(zero, "zero", _ZERO_POLICIES)
    eps = check_real(eps, "eps", minimum=0.0)
    x = check_vectors(x, "x")
    xp = namespace(x)
    scale = xp.max(xp.abs(x), axis=-1, keepdims=True)
    if is_torch(scale):
        # The result does not depend on the scale, so it need not carry gradient (avoids max's tie rules).
        scale = scale.detach()
    is_zero_scale = scale == 0
    safe_scale = xp.where(is_zero_scale, xp.ones_like(scale), scale)
    y = x / safe_scale
    ny2 = xp.sum(y * y, axis=-1, keepdims=True)  # in [1, 3] for non-zero rows
    ny = xp.sqrt(xp.where(is_zero_scale, xp.ones_like(ny2), ny2))  # sqrt never sees 0: finite gradients
    with np.errstate(over="ignore"):  # |x| may overflow to inf for huge rows: then it is not small
        small = is_zero_scale | (ny * safe_scale <= eps)
    n_small = int(xp.sum(small)) if (small.numel() if is_torch(small) else small.size) else 0
    if n_small and zero == "raise":
        idx = np.argwhere(np.asarray(small.cpu() if is_torch(small) else small)[..., 0])[0]
        raise ValueError(
            f"x has {n_small} row(s) of norm <= {eps} (first at index {tuple(int(i) for i in idx)}); "
            "their direction is undefined. Pass zero='zero' to map them to 0."
        )
    if not n_small:
        return y / ny
    safe_ny = xp.where(small, xp.ones_like(ny), ny)
    safe_y = xp.where(small, xp.ones_like(y), y)
    return xp.where(small, xp.zeros_like(y), safe_y / safe_ny)


def angle(a: Any, b: Any, *, degrees: bool = False):
    """Angle between the directions of ``a`` and ``b``, computed as ``atan2(|a x b|, a . b)``.

    Accurate near 0 and near pi (unlike ``arccos`` of the dot product). The inputs need not be unit
    vectors: they are normalised first (overflow-safe), so the result is the angle between directions.

    Parameters
    ----------
    a, b : array_like or torch.Tensor, shape (..., 3)
        Non-zero vectors; leading axes broadcast.
    degrees : bool, default False
        Return degrees instead of radians.

    Returns
    -------
    same kind as the inputs, shape (...)
        Angles in ``[0, pi]`` (or ``[0, 180]``).

    Raises
    ------
    ValueError
        On bad shapes, NaN/inf or zero vectors.

    Examples
    --------
    >>> import numpy as np
    >>> float(angle(np.array([1.0, 0, 0]), np.array([0, 2.0, 0]), degrees=True))
    90.0
    >>> float(angle(np.array([1.0, 0, 0]), np.array([-1.0, 1e-20, 0])))  # doctest: +ELLIPSIS
    3.14159265358979...
    """
    a = check_vectors(a, "a")
    b = check_vectors(b, "b")
    degrees = check_bool(degrees, "degrees")
    a, b = _match(a, b)
    try:
        ua = normalize(a)
    except ValueError as exc:
        raise ValueError(f"a contains a zero vector; its angle is undefined ({exc})") from None
    try:
        ub = normalize(b)
    except ValueError as exc:
        raise ValueError(f"b contains a zero vector; its angle is undefined ({exc})") from None
    xp = namespace(ua)
    cr = xp.cross(ua, ub)
    s2 = xp.sum(cr * cr, axis=-1)
    # sqrt with a zero-safe gradient (the angle has a kink at 0; its subgradient there is taken as 0).
    pos = s2 > 0
    s = xp.where(pos, xp.sqrt(xp.where(pos, s2, xp.ones_like(s2))), xp.zeros_like(s2))
    c = xp.sum(ua * ub, axis=-1)
    theta = xp.arctan2(s, c)
    return theta * (180.0 / np.pi) if degrees else theta


def chord(a: Any, b: Any):
    """Chordal (Euclidean) distance ``||a - b||`` between points of the sphere.

    For unit vectors at angle ``t`` this equals ``2 sin(t / 2)``. The inputs are *not* normalised: for
    non-unit vectors this is simply the Euclidean distance.

    Parameters
    ----------
    a, b : array_like or torch.Tensor, shape (..., 3)
        Points (normally unit vectors); leading axes broadcast.

    Returns
    -------
    same kind as the inputs, shape (...)
        Computed without squaring overflow or underflow (exact to rounding for any finite distance; ``inf``
        only if the distance exceeds the largest number of the dtype).

    Examples
    --------
    >>> import numpy as np
    >>> float(chord(np.array([1.0, 0, 0]), np.array([-1.0, 0, 0])))
    2.0
    """
    a = check_vectors(a, "a")
    b = check_vectors(b, "b")
    a, b = _match(a, b)
    with np.errstate(over="ignore"):  # a - b overflows only when the distance itself is not representable
        d = a - b
    return safe_norm(d, axis=-1)  # scale-safe: no overflow / underflow of the squares


def to_tangent(vector: Any, base_point: Any):
    """Project ``vector`` onto the tangent plane at ``base_point``: ``P_u v = v - (u . v) u``.

    This is also the Riemannian gradient of a function whose Euclidean gradient is ``vector`` (Eq. 7).

    Parameters
    ----------
    vector : array_like or torch.Tensor, shape (..., 3)
        Any vectors.
    base_point : array_like or torch.Tensor, shape (..., 3)
        Unit vectors; leading axes broadcast with ``vector``.

    Returns
    -------
    same kind as the inputs, shape (broadcast(...), 3)
        Tangent vectors, orthogonal to ``base_point``.

    Examples
    --------
    >>> import numpy as np
    >>> to_tangent(np.array([1.0, 2.0, 3.0]), np.array([0.0, 0.0, 1.0]))
    array([1., 2., 0.])
    """
    vector = check_vectors(vector, "vector")
    base_point = _check_unit(base_point, "base_point")
    vector, base_point = _match(vector, base_point, ("vector", "base_point"))
    return _project(vector, base_point, namespace(vector))


def _project(v, u, xp):
    return v - xp.sum(v * u, axis=-1, keepdims=True) * u


def exp_map(tangent_vec: Any, base_point: Any):
    """Riemannian exponential: follow the great circle from ``base_point`` along ``tangent_vec``.

    ``exp_u(v) = cos(|v|) u + sin(|v|) v / |v|``, with ``v`` first projected onto the tangent plane at ``u``
    (any normal component is discarded). ``sin(t)/t`` uses a Taylor branch for ``t < 1e-3``, so tiny and
    zero tangent vectors are exact and torch gradients are finite. ``|v|`` is computed without squaring the
    entries, so tangent vectors of any finite length (up to ~1e308 in float64, ~3e38 in float32) give unit
    results (``t`` is reduced modulo ``2 pi`` by ``cos`` / ``sin``).

    Parameters
    ----------
    tangent_vec : array_like or torch.Tensor, shape (..., 3)
        Tangent vectors at ``base_point`` (length = geodesic distance travelled, radians).
    base_point : array_like or torch.Tensor, shape (..., 3)
        Unit vectors; leading axes broadcast.

    Returns
    -------
    same kind as the inputs, shape (broadcast(...), 3)
        Unit vectors.

    Raises
    ------
    ValueError
        On bad shapes, NaN/inf, a non-unit ``base_point``, or a tangent vector whose norm overflows the dtype.

    Examples
    --------
    >>> import numpy as np
    >>> p = exp_map(np.array([np.pi / 2, 0.0, 0.0]), np.array([0.0, 0.0, 1.0]))
    >>> np.round(p, 12) + 0.0
    array([1., 0., 0.])
    """
    v = check_vectors(tangent_vec, "tangent_vec")
    u = _check_unit(base_point, "base_point")
    v, u = _match(v, u, ("tangent_vec", "base_point"))
    xp = namespace(v)
    # Project a rescaled copy (the projection is linear), so that v . u cannot overflow for huge v.
    m = pow2_scale(xp.max(xp.abs(v.detach() if is_torch(v) else v), axis=-1, keepdims=True))
    m = xp.where(m > 0, m, xp.ones_like(m))  # a power of two: the rescaling is exact
    with np.errstate(over="ignore"):  # an overflow here is reported by cos_and_sin_dir
        w = _project(v / m, u, xp) * m
    cos, sin_dir = cos_and_sin_dir(w, xp, "tangent_vec")
    return cos * u + sin_dir


def log_map(point: Any, base_point: Any, *, antipodal_tol: float | None = None):
    """Riemannian logarithm: the tangent vector at ``base_point`` pointing to ``point``.

    Inverse of :func:`exp_map` for tangent vectors of length ``< pi``: ``log_u(p) = t w / |w|`` with
    ``w = P_u (p -/+ u)`` (the sign chosen to avoid cancellation, so ``w`` is accurate both near ``u`` and
    near ``-u``) and ``t = atan2(|w|, u . p)``. For ``|w| < 1e-4`` with ``u . p > 0`` the factor ``t/|w|``
    uses its Taylor series, keeping values and torch gradients finite at ``p = u``.

    Parameters
    ----------
    point : array_like or torch.Tensor, shape (..., 3)
        Unit vectors.
    base_point : array_like or torch.Tensor, shape (..., 3)
        Unit vectors; leading axes broadcast.
    antipodal_tol : float, optional
        ``point`` counts as antipodal to ``base_point`` when ``u . p < 0`` and
        ``sin(angle) <= antipodal_tol``. Default ``8 * eps`` of the dtype (``~1.8e-15`` in float64,
        ``~9.5e-7`` in float32): inside that band the direction of the logarithm is decided by
        rounding errors. Pass a larger value to refuse ill-conditioned pairs earlier.

    Returns
    -------
    same kind as the inputs, shape (broadcast(...), 3)
        Tangent vectors at ``base_point`` of length ``angle(point, base_point)`` in ``[0, pi)``.

    Raises
    ------
    ValueError
        If ``point`` and ``base_point`` are antipodal (the logarithm is not unique), if inputs are not unit
        vectors, or on bad shapes / NaN.

    Examples
    --------
    >>> import numpy as np
    >>> v = log_map(np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0]))
    >>> np.round(v, 12) + 0.0
    array([1.57079633, 0.        , 0.        ])
    """
    p = _check_unit(point, "point")
    u = _check_unit(base_point, "base_point")
    p, u = _match(p, u, ("point", "base_point"))
    xp = namespace(p)
    if antipodal_tol is None:
        antipodal_tol = 8.0 * float(xp.eps(p))
    else:
        antipodal_tol = check_real(antipodal_tol, "antipodal_tol", minimum=0.0)
    c = xp.sum(p * u, axis=-1, keepdims=True)
    sgn = xp.where(c >= 0, xp.ones_like(c), -xp.ones_like(c))
    d = p - sgn * u  # small when p ~ +-u, so P_u d = P_u p is computed without cancellation
    w = _project(d, u, xp)
    s2 = xp.sum(w * w, axis=-1, keepdims=True)
    anti = (c < 0) & (s2 <= antipodal_tol**2)
    if bool(xp.any(anti)):
        n_anti = int(xp.sum(anti))
        raise ValueError(
            f"point is antipodal to base_point in {n_anti} row(s) (sin(angle) <= {antipodal_tol:.1e}); "
            "the logarithm is not unique there"
        )
    near0 = (s2 < 1e-8) & (c > 0)  # |w| = sin(angle) < 1e-4
    safe_s = xp.sqrt(xp.where(near0, xp.ones_like(s2), s2))
    # t / sin(t) as a series in x = sin(t): 1 + x^2/6 + 3 x^4/40 (+ 5 x^6/112, below 5e-26 here)
    ratio = xp.where(near0, 1.0 + s2 / 6.0 + 0.075 * s2 * s2, xp.arctan2(safe_s, c) / safe_s)
    return ratio * w


def random_unit_vectors(n=1, seed=None, *, dtype="float64", backend: str = "numpy", device=None):
    """Independent samples from the uniform distribution on :math:`S^2`.

    Normalised standard Gaussian 3-vectors (rotation invariant). Samples are drawn in float64 with numpy, so
    a seed gives the same points for every ``dtype`` and ``backend``.

    Parameters
    ----------
    n : int or tuple of int, default 1
        Batch shape; the result has shape ``(*n, 3)``.
    seed : None, int or numpy.random.Generator
        Randomness source (None: fresh OS entropy).
    dtype : {"float64", "float32"} or the numpy/torch dtype, default "float64"
    backend : {"numpy", "torch"}, default "numpy"
    device : torch device, optional
        Only with ``backend="torch"``.

    Returns
    -------
    numpy.ndarray or torch.Tensor, shape (*n, 3)
        Unit vectors.

    Examples
    --------
    >>> x = random_unit_vectors(5, seed=0)
    >>> x.shape
    (5, 3)
    >>> bool(abs(np.linalg.norm(x, axis=-1) - 1).max() < 1e-12)
    True
    """
    shape = parse_shape(n)
    rng = check_seed(seed)
    x = rng.standard_normal((*shape, 3))
    r = np.linalg.norm(x, axis=-1, keepdims=True)
    bad = r[..., 0] < 1e-12  # essentially never; resample so no row is (near) zero
    while bad.any():
        x[bad] = rng.standard_normal((int(bad.sum()), 3))
        r = np.linalg.norm(x, axis=-1, keepdims=True)
        bad = r[..., 0] < 1e-12
    return as_output(x / r, dtype, backend, device)
