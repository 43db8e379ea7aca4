"""Quantization of any e3nn feature tensor described by an :class:`e3nn.o3.Irreps`.

An e3nn feature of irreps ``mul_1 x ir_1 + mul_2 x ir_2 + ...`` is a tensor of shape ``(..., irreps.dim)``
whose last axis holds, block after block, ``mul`` channels of ``2 l + 1`` components each. A rotation ``R``
acts on it block-diagonally by ``D^l(R)`` (e3nn's real basis) and the inversion ``-I`` multiplies a block of
parity ``p`` by ``p``. :class:`IrrepsQuantizer` fake-quantizes such a tensor block by block:

* **scalars** (``0e``, ``0o``): a scalar quantizer with a running-max observer, ``"symmetric"`` (signed,
  zero is a level, odd: ``Q(-x) = -Q(x)``) or ``"minmax"`` (asymmetric, the paper's naive INT8);
* **vectors** (``1o``, ``1e``): every channel is a 3-vector quantized by MDDQ
  (:class:`spherequant.quantize.MDDQ`, Def. 3.1: magnitude code + nearest codeword of a direction codebook on
  ``S^2``) with the geometric straight-through estimator in the backward pass (the direction part of the
  gradient is projected onto the tangent plane, Prop. III.1). The block is first converted to Cartesian
  ``(x, y, z)`` with :func:`l1_change_of_basis`, so the codebook acts on true 3-vectors; in e3nn 0.6 that
  change of basis is the identity (``D^1(R) = R``, pinned by the tests). The per-component scalar
  schemes are available for vectors too, as the baseline;
* **degree l >= 2**: per the ``higher`` option, see *Choice for l >= 2* below.

One observer range per irreps block (all channels of a block share it). Calibration: every quantizer starts
in calibration mode, where each forward call raises its ranges to the data seen (running max, so calibration
does not depend on the order of the batches); :meth:`IrrepsQuantizer.freeze` stops it, after which the
output is a deterministic function of the input.

Guarantees (``delta`` the covering radius of the direction codebook, ``r = |v|``, ``Q_m`` the magnitude
quantizer; proofs in ``proofs/mddq_error_bound.md``, ``proofs/commutation_bound.md``,
``proofs/symmetry_exactness.md``):

* MDDQ blocks: ``|Q(v) - v| <= |Q_m(r) - r| + 2 r sin(delta / 2)``; for every rotation
  ``|Q(R v) - R Q(v)| <= Q_m(r) 4 sin(delta / 2)`` (``Q_m(|R v|) = Q_m(r)`` since ``|R v| = r``); for ``R``
  in the codebook's symmetry group (``R C = C``; the default icosahedral codebook has the 60 rotations of
  the icosahedron) ``Q(R v) = R Q(v)`` exactly, away from Voronoi boundaries and magnitude thresholds.
* Parity: the inversion acts on a vector block as ``-I`` (``1o``) or ``I`` (``1e``). For ``1e``
  commutation is trivial. For ``1o`` it needs ``Q(-v) = -Q(v)``, which holds exactly when the codebook is
  centrally symmetric (``C = -C``: icosahedral, octahedral, HEALPix grids); otherwise (e.g. spherical
  Fibonacci points) the parity error obeys the commutation bound ``Q_m(r) 4 sin(delta / 2)`` (the proof
  only uses that ``-I`` is orthogonal) and is in general not 0. Symmetric scalar quantization is odd, so
  ``0o`` blocks (and odd-parity blocks quantized per component) commute with the inversion exactly;
  ``"minmax"`` is not odd and carries no parity guarantee.
* Scalars (``0e``, ``0o``) are invariant under rotations, so their quantization commutes with rotations
  exactly. ``"symmetric"``: ``|Q(x) - x| <= s / 2`` with ``s = range / (2^(b-1) - 1)`` for ``|x| <= range``.

Choice for l >= 2 (``higher``):

* ``"symmetric"`` (the default): per-component symmetric quantization with one scale per block, taken from
  the running max of the channel *norms* ``|v|`` (not of the components). Every component of ``D^l(R) v``
  is at most ``|v|`` in absolute value, so rotated inputs are never clipped, and with
  ``s = r_max / (2^(b-1) - 1)``: ``|Q(v) - v| <= sqrt(2l+1) s / 2`` and
  ``|Q(D v) - D Q(v)| <= sqrt(2l+1) s`` for every rotation (triangle inequality, ``D`` orthogonal); parity
  exact (odd quantizer). This is certified and needs no codebook on a high-dimensional sphere.
* ``"mddq"``: MDDQ on ``S^(2l)`` with a :class:`spherequant.hypersphere.HypersphereCodebook`. The library's
  exact covering radii live on ``S^2``; on ``S^(2l)`` only a Monte-Carlo *lower* estimate is available,
  and for a given number of bits the covering radius is much larger (``K`` points cover ``S^4`` with
  ``delta ~ K^(-1/4)`` versus ``K^(-1/2)`` on ``S^2``). Guarantees: the magnitude commutes exactly
  (``D^l`` is orthogonal); ``|Q(v) - v| <= |Q_m(r) - r| + r |u - Q_d(u)|`` and
  ``|Q(D v) - D Q(v)| <= Q_m(r) 4 sin(delta / 2)`` hold with the true (unknown) ``delta``. The default
  codebook (:func:`orbit_codebook`) is a union of orbits ``{+-D^l(g) p_j : g in G}`` of random points under
  a finite rotation group ``G`` (default icosahedral) and their antipodes, so ``Q`` commutes *exactly* with
  ``D^l(g)``, ``g in G``, and with the inversion, like the vector blocks with the icosahedral codebook.
* ``"minmax"``: per-component asymmetric min-max, the naive baseline (no guarantee).

:func:`quantize_irreps_` attaches an :class:`IrrepsQuantizer` to chosen submodules of any ``nn.Module``
(by a ``filter_fn(module, name)``, by qualified names, or by types), torchao style: the submodule keeps its
identity and its output (shape ``(..., module.irreps_out.dim)``) is replaced by its fake-quantized value
through a forward hook.

Examples
--------
>>> import torch
>>> from spherequant.irreps import IrrepsQuantizer
>>> q = IrrepsQuantizer("4x0e + 2x1o")
>>> x = torch.randn(10, 10, dtype=torch.float64)
>>> _ = q(x)           # calibration: observe the ranges
>>> _ = q.freeze()
>>> y = q(x)
>>> y.shape, q.bits_report()["bits_per_feature"]  # 4 x 8 + 2 x (8 + 12) bits over 10 features
(torch.Size([10, 10]), 7.2)
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from e3nn import o3
from torch import nn

from . import codebook as _codebook
from . import hypersphere as _hypersphere
from . import quantize as _quantize
from . import scalar as _scalar
from . import so3 as _so3
from . import symmetry as _symmetry
from ._backend import safe_norm
from ._validation import check_choice, check_int

__all__ = [
    "IrrepsQuantConfig",
    "IrrepsQuantizer",
    "irreps_quantizers",
    "l1_change_of_basis",
    "orbit_codebook",
    "quantize_irreps_",
    "remove_irreps_quantization_",
    "set_irreps_calibration",
]

_SCALAR_SCHEMES = ("symmetric", "minmax")
_VECTOR_SCHEMES = ("mddq", "symmetric", "minmax")
_HIGHER_SCHEMES = ("symmetric", "minmax", "mddq")
_MAGNITUDE_KINDS = ("uniform", "log")
_DIRECTION_STES = ("geometric", "plain", "none")
_MAX_ORBIT_DEGREE = 10  # largest degree of the default orbit codebooks (orbit_codebook)

#: Name of the child module that holds the output quantizer of a module prepared by :func:`quantize_irreps_`.
_QUANTIZER_ATTR = "irreps_output_quantizer"


# ----------------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------------
def _as_irreps(irreps: Any, name: str = "irreps") -> o3.Irreps:
    """``irreps`` as an :class:`e3nn.o3.Irreps` (from an Irreps, an Irrep or a string like ``"2x0e+1x1o"``).

    Raises TypeError naming ``name`` for any other type, ValueError for a string e3nn cannot parse.
    """
    if isinstance(irreps, o3.Irreps):
        return irreps
    if isinstance(irreps, o3.Irrep):
        return o3.Irreps(irreps)
    if not isinstance(irreps, str):
        raise TypeError(
            f"{name} must be an e3nn.o3.Irreps, an Irrep or a string like '4x0e + 2x1o', "
            f"got {type(irreps).__name__} {irreps!r}"
        )
    try:
        return o3.Irreps(irreps)
    except (ValueError, AssertionError) as exc:
        raise ValueError(f"{name} {irreps!r} is not a valid irreps string: {exc}") from exc


# ----------------------------------------------------------------------------------------------------------
# e3nn's l = 1 basis
# ----------------------------------------------------------------------------------------------------------
def _signed_permutations() -> list[np.ndarray]:
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = np.zeros((3, 3))
            m[range(3), perm] = signs
            if np.linalg.det(m) > 0:
                out.append(m)
    return out


def l1_change_of_basis(d_from_matrix: Callable | None = None) -> np.ndarray:
    """The signed permutation ``P`` (det +1) with ``D^1(R) = P R P^T`` for e3nn's degree-1 representation.

    An e3nn ``1o`` / ``1e`` channel ``x`` (e3nn's basis) and the Cartesian vector ``v`` it represents are
    related by ``x = P v``, ``v = P^T x``; MDDQ is applied to ``v``. e3nn 0.6 orders the l = 1 basis as
    ``(x, y, z)`` and gives ``P = I``; earlier e3nn versions used ``(y, z, x)``. ``P`` is determined from
    ``D^1`` at two fixed rotations (an intertwiner of an irreducible representation is unique up to a factor;
    the sign is fixed by ``det P = +1``).

    Parameters
    ----------
    d_from_matrix : callable, optional
        ``R (3, 3) float64 tensor -> D^1(R) (3, 3)``; default e3nn's ``o3.Irrep("1o").D_from_matrix``.

    Returns
    -------
    numpy.ndarray, shape (3, 3), float64
        Entries in ``{-1, 0, 1}``.

    Raises
    ------
    TypeError
        If ``d_from_matrix`` is not callable.
    ValueError
        If ``d_from_matrix`` does not return a finite ``(3, 3)`` matrix, or one that is not a signed
        permutation of ``R``.
    RuntimeError
        If e3nn's ``D^1`` (the default) is not a signed permutation of ``R`` (then e3nn's basis is not a
        permuted Cartesian one).

    Examples
    --------
    >>> l1_change_of_basis().tolist()  # e3nn 0.6: D^1(R) = R
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    if d_from_matrix is None:
        return _e3nn_l1_basis().copy()
    if not callable(d_from_matrix):
        raise TypeError(
            f"d_from_matrix must be callable (R (3, 3) tensor -> D^1(R)), got {type(d_from_matrix).__name__}"
        )
    return _find_l1_basis(d_from_matrix, ValueError)


def _find_l1_basis(d_from_matrix: Callable, error: type[Exception] = RuntimeError) -> np.ndarray:
    rots = _so3.random_rotation(2, seed=20240607)
    ds = []
    for r in rots:
        d = d_from_matrix(torch.tensor(r))
        try:
            d = np.asarray(torch.as_tensor(d).detach().cpu(), np.float64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(
                f"d_from_matrix must return a real (3, 3) matrix, got {type(d).__name__}"
            ) from exc
        if d.shape != (3, 3) or not np.all(np.isfinite(d)):
            raise ValueError(f"d_from_matrix must return a finite (3, 3) matrix, got shape {d.shape}: {d}")
        ds.append(d)
    best, best_res = None, math.inf
    for p in _signed_permutations():
        res = max(float(np.abs(d - p @ r @ p.T).max()) for d, r in zip(ds, rots))
        if res < best_res:
            best, best_res = p, res
    if best_res > 1e-4:
        raise error(
            "the degree-1 representation (d_from_matrix) is not a signed permutation of the rotation matrix "
            f"(best residual {best_res:.3g}); spherequant.irreps supports e3nn bases with D^1(R) = P R P^T"
        )
    return best


@functools.lru_cache(maxsize=1)
def _e3nn_l1_basis() -> np.ndarray:
    p = _find_l1_basis(lambda r: o3.Irrep("1o").D_from_matrix(r))
    p.setflags(write=False)
    return p


# ----------------------------------------------------------------------------------------------------------
# codebooks on S^(2l) invariant under a finite rotation group
# ----------------------------------------------------------------------------------------------------------
def orbit_codebook(
    l: int, n: int = 4096, group: str = "icosahedral", *, antipodal: bool = True, seed: int = 0
) -> _hypersphere.HypersphereCodebook:
    """Direction codebook on ``S^(2l)`` invariant under ``D^l(G)`` for a finite rotation group ``G``.

    The codewords are ``{D^l(g) p_j : g in G, j}`` (and their antipodes with ``antipodal=True``) for
    ``m = floor(n / |G|)`` (resp. ``floor(n / (2 |G|))``) random unit points ``p_j`` (seeded). Since
    ``D^l(g) C = C`` for ``g in G`` (and ``-C = C``), MDDQ with this codebook commutes exactly with ``D^l(g)``
    (and with the inversion) away from Voronoi boundaries, like an icosahedral codebook on ``S^2`` does for
    vectors. ``D^l`` is :func:`spherequant.so3.wigner_D` (e3nn's real basis).

    Parameters
    ----------
    l : int
        Degree, 1 to 10 (``2 l + 1`` components).
    n : int
        Largest number of codewords; the size is the largest multiple of ``|G|`` (``2 |G|``) not above it.
    group : str
        A name accepted by :func:`spherequant.symmetry.rotation_group` (``"icosahedral"``, ``"octahedral"``,
        ...).
    antipodal : bool
        Also include ``-C`` (central symmetry: exact commutation with the inversion).
    seed : int
        Seed of the points ``p_j``.

    Returns
    -------
    spherequant.hypersphere.HypersphereCodebook
        Points of shape ``(K, 2l + 1)``.

    Examples
    --------
    >>> cb = orbit_codebook(2, n=500, group="icosahedral")
    >>> cb.points.shape  # 4 orbits of 60 points and their antipodes
    (480, 5)
    """
    l = check_int(l, "l", minimum=1, maximum=_MAX_ORBIT_DEGREE)
    n = check_int(n, "n", minimum=1, maximum=2**24)
    if not isinstance(antipodal, (bool, np.bool_)):
        raise TypeError(f"antipodal must be a bool, got {type(antipodal).__name__}")
    seed = check_int(seed, "seed", minimum=0, maximum=2**63 - 1)
    if not isinstance(group, str):
        raise TypeError(f"group must be a group name such as 'icosahedral', got {type(group).__name__}")
    try:
        rots = _symmetry.rotation_group(group)
    except ValueError as exc:
        raise ValueError(f"group: {exc}") from exc
    per_point = rots.shape[0] * (2 if antipodal else 1)
    m = n // per_point
    if m < 1:
        raise ValueError(f"n must be at least {per_point} for group {group!r} (antipodal={bool(antipodal)})")
    d = np.asarray(_so3.wigner_D(l, rots), dtype=np.float64)  # (G, 2l+1, 2l+1)
    p = np.random.default_rng(seed).standard_normal((m, 2 * l + 1))
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    pts = np.einsum("gij,mj->mgi", d, p).reshape(-1, 2 * l + 1)
    if antipodal:
        pts = np.concatenate([pts, -pts])
    return _hypersphere.HypersphereCodebook(pts)


# ----------------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class IrrepsQuantConfig:
    """How :class:`IrrepsQuantizer` quantizes each kind of irreps block.

    Parameters
    ----------
    scalar : {"symmetric", "minmax"}
        Scheme of ``l = 0`` blocks.
    scalar_bits : int
        Bits per scalar component, 2 to 16.
    vector : {"mddq", "symmetric", "minmax"}
        Scheme of ``l = 1`` blocks: MDDQ per channel (the default), or per-component (the baseline).
    vector_codebook : spherequant.codebook.Codebook, optional
        Direction codebook on ``S^2`` for ``vector="mddq"``; default ``codebook.icosahedral(4)`` (2562 points,
        12 bits, covering radius 2.73 degrees, centrally symmetric, 60 symmetry rotations).
    magnitude_bits : int
        Bits of the MDDQ magnitude code (vector and ``higher="mddq"`` blocks), 2 to 16.
    magnitude : {"uniform", "log"}
        Level spacing of the MDDQ magnitude quantizer.
    direction_ste : {"geometric", "plain", "none"}
        Backward pass of the MDDQ direction (see :func:`spherequant.quantize.mddq`); ``"geometric"`` is the
        tangent-projected STE of Eq. 8.
    vector_bits : int
        Bits per component for ``vector="symmetric"`` / ``"minmax"``.
    higher : {"symmetric", "minmax", "mddq"}
        Scheme of ``l >= 2`` blocks (see the module docstring for the guarantees of each).
    higher_bits : int
        Bits per component for ``higher="symmetric"`` / ``"minmax"``.
    higher_codebooks : mapping of int to HypersphereCodebook, optional
        Codebooks for ``higher="mddq"`` by degree (dimension ``2 l + 1``); missing degrees get
        ``orbit_codebook(l, higher_codebook_size, higher_group)``.
    higher_codebook_size : int
        Size bound of the default orbit codebooks.
    higher_group : str
        Rotation group of the default orbit codebooks.

    Examples
    --------
    >>> IrrepsQuantConfig(magnitude_bits=6).vector
    'mddq'
    >>> IrrepsQuantConfig.naive_int8().vector
    'minmax'
    """

    scalar: str = "symmetric"
    scalar_bits: int = 8
    vector: str = "mddq"
    vector_codebook: Any = None
    magnitude_bits: int = 8
    magnitude: str = "uniform"
    direction_ste: str = "geometric"
    vector_bits: int = 8
    higher: str = "symmetric"
    higher_bits: int = 8
    higher_codebooks: Mapping[int, Any] | None = None
    higher_codebook_size: int = 4096
    higher_group: str = "icosahedral"

    def __post_init__(self):
        check_choice(self.scalar, "scalar", _SCALAR_SCHEMES)
        check_choice(self.vector, "vector", _VECTOR_SCHEMES)
        check_choice(self.higher, "higher", _HIGHER_SCHEMES)
        check_choice(self.magnitude, "magnitude", _MAGNITUDE_KINDS)
        check_choice(self.direction_ste, "direction_ste", _DIRECTION_STES)
        for name in ("scalar_bits", "vector_bits", "higher_bits", "magnitude_bits"):
            check_int(getattr(self, name), name, minimum=2, maximum=16)
        check_int(self.higher_codebook_size, "higher_codebook_size", minimum=1, maximum=2**24)
        if self.vector_codebook is not None and not isinstance(self.vector_codebook, _codebook.Codebook):
            raise TypeError(
                "vector_codebook must be a spherequant.codebook.Codebook (points on S^2), got "
                f"{type(self.vector_codebook).__name__}"
            )
        if self.higher_codebooks is not None:
            if not isinstance(self.higher_codebooks, Mapping):
                raise TypeError(
                    "higher_codebooks must be a mapping {degree: HypersphereCodebook}, got "
                    f"{type(self.higher_codebooks).__name__}"
                )
            for l, cb in self.higher_codebooks.items():
                check_int(l, "higher_codebooks key (degree)", minimum=2, maximum=100)
                if not isinstance(cb, _hypersphere.HypersphereCodebook):
                    raise TypeError(
                        f"higher_codebooks[{l}] must be a spherequant.hypersphere.HypersphereCodebook, got "
                        f"{type(cb).__name__}"
                    )
                if cb.dim != 2 * l + 1:
                    raise ValueError(
                        f"higher_codebooks[{l}] must be a HypersphereCodebook of dimension {2 * l + 1}, got "
                        f"{cb!r}"
                    )
        if not isinstance(self.higher_group, str):
            raise TypeError(f"higher_group must be a group name, got {type(self.higher_group).__name__}")
        try:
            _group_order(self.higher_group)  # validates the name
        except ValueError as exc:
            raise ValueError(f"higher_group: {exc}") from exc

    @classmethod
    def naive_int8(cls) -> IrrepsQuantConfig:
        """Every component an independent per-block min-max INT8 scalar (the paper's naive baseline)."""
        return cls(scalar="minmax", vector="minmax", higher="minmax")

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]) -> IrrepsQuantConfig:
        """Build from a mapping of option names; unknown names raise ValueError listing the allowed ones."""
        return cls._from_mapping(options, "options")

    @classmethod
    def _from_mapping(cls, options: Any, name: str) -> IrrepsQuantConfig:
        """``from_dict`` whose errors name the caller's argument ``name`` (``options`` or ``config``)."""
        if not isinstance(options, Mapping):
            raise TypeError(f"{name} must be an IrrepsQuantConfig or a dict, got {type(options).__name__}")
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(map(repr, set(options) - set(allowed)))
        if unknown:
            raise ValueError(
                f"{name} has unknown option(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
            )
        try:
            return cls(**options)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{name}: {exc}") from exc


@functools.lru_cache(maxsize=32)
def _group_order(name: str) -> int:
    """Order of a named rotation group (ValueError for an unknown name); cached, as building it takes ms."""
    return int(_symmetry.rotation_group(name).shape[0])


def _as_config(config: Any) -> IrrepsQuantConfig:
    if config is None:
        return IrrepsQuantConfig()
    if isinstance(config, IrrepsQuantConfig):
        return config
    return IrrepsQuantConfig._from_mapping(config, "config")


# ----------------------------------------------------------------------------------------------------------
# block quantizers
# ----------------------------------------------------------------------------------------------------------
class _ComponentBlock(nn.Module):
    """Per-component scalar quantization of a block ``(..., mul, d)`` with one range per block.

    ``symmetric``: range = running max of the channel norms ``|v|`` (= ``|x|`` for d = 1), signed levels,
    scale ``range / (2^(b-1) - 1)``. ``minmax``: running min / max of the components. The range is kept as
    Python floats in the extra state (like :class:`spherequant.quantize.MDDQ`'s ``r_max``), so module dtype
    casts (``.float()``, ``.half()``) never round it.
    """

    def __init__(self, scheme: str, bits: int):
        super().__init__()
        self.scheme = scheme
        self.bits = bits
        self.calibrating = True
        self.lo: float | None = None
        self.hi: float | None = None

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        if x.numel() == 0:
            return
        xd = x.detach()
        if self.scheme == "symmetric":
            hi = float(safe_norm(xd, axis=-1).max())
            if not math.isfinite(hi):
                raise ValueError("a channel norm overflows the dtype of the features")
            lo = -hi
        else:
            lo, hi = float(xd.min()), float(xd.max())
        if self.lo is not None:
            lo, hi = min(lo, self.lo), max(hi, self.hi)
        self.lo, self.hi = lo, hi

    def params(self, like: torch.Tensor):
        if self.hi is None:
            raise RuntimeError("the irreps quantizer has no range yet: call it in calibration mode first")
        if self.scheme == "symmetric":
            rng = torch.tensor([self.hi], dtype=torch.float64, device=like.device)
            return _scalar.symmetric_scale(rng, self.bits).reshape(()), None
        pair = torch.tensor([self.lo, self.hi], dtype=torch.float64, device=like.device)
        return _scalar.minmax_params(pair, self.bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.observe(x)
        if x.numel() == 0:
            return x * 0
        scale, zp = self.params(x)
        if self.scheme == "symmetric":
            return _scalar.fake_quantize_symmetric(x, self.bits, scale=scale)
        return _scalar.fake_quantize_minmax(x, self.bits, scale=scale, zero_point=zp)

    def get_extra_state(self):
        return {"lo": self.lo, "hi": self.hi, "calibrating": self.calibrating}

    def set_extra_state(self, state) -> None:
        self.lo, self.hi, self.calibrating = state["lo"], state["hi"], bool(state["calibrating"])

    def extra_repr(self) -> str:
        rng = "None" if self.hi is None else f"[{self.lo:.4g}, {self.hi:.4g}]"
        return f"scheme={self.scheme!r}, bits={self.bits}, range={rng}, calibrating={self.calibrating}"


class _MDDQBlock(nn.Module):
    """MDDQ per channel of a block ``(..., mul, d)``; ``basis`` (d = 3): Cartesian ``v = x @ basis``."""

    def __init__(self, mddq: _quantize.MDDQ, basis: np.ndarray | None):
        super().__init__()
        self.mddq = mddq
        identity = basis is None or np.array_equal(basis, np.eye(3))
        self._basis = None if identity else np.array(basis, dtype=np.float64)

    @property
    def calibrating(self) -> bool:
        return self.mddq.calibrating

    @calibrating.setter
    def calibrating(self, mode: bool) -> None:
        self.mddq.calibrate(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._basis is None:
            return self.mddq(x)
        p = torch.as_tensor(self._basis, dtype=x.dtype, device=x.device)
        return self.mddq(x @ p) @ p.T  # exact: p is a signed permutation


# ----------------------------------------------------------------------------------------------------------
# the irreps quantizer
# ----------------------------------------------------------------------------------------------------------
class IrrepsQuantizer(nn.Module):
    """Fake quantizer of e3nn features ``(..., irreps.dim)``, block by block (see the module docstring).

    Parameters
    ----------
    irreps : e3nn.o3.Irreps or str
        Layout of the last axis of the features.
    config : IrrepsQuantConfig or dict, optional
        Schemes and bit widths (default :class:`IrrepsQuantConfig`).

    Attributes
    ----------
    irreps : e3nn.o3.Irreps
    config : IrrepsQuantConfig
    quantizers : torch.nn.ModuleList
        One quantizer per block of non-zero multiplicity, in the order of ``irreps``.

    Notes
    -----
    The forward pass is differentiable: scalar components pass the gradient through the clipping mask
    (straight-through), MDDQ channels use ``(m / r) P_u g + <c, g> 1[r <= r_max] u`` (geometric STE of the
    direction plus the magnitude STE). The ranges and the calibration flags are extra state: they travel with
    ``state_dict`` and are not rounded by module dtype casts.
    """

    def __init__(self, irreps: Any, config: Any = None):
        super().__init__()
        self.irreps = _as_irreps(irreps)
        self.config = _as_config(config)
        self._slices: list[tuple[slice, int, int, o3.Irrep]] = []
        blocks = []
        cfg = self.config
        for (mul, ir), sl in zip(self.irreps, self.irreps.slices()):
            if mul == 0:
                continue
            d = 2 * ir.l + 1
            if ir.l == 0:
                block: nn.Module = _ComponentBlock(cfg.scalar, cfg.scalar_bits)
            elif ir.l == 1 and cfg.vector == "mddq":
                cb = cfg.vector_codebook if cfg.vector_codebook is not None else _default_vector_codebook()
                block = _MDDQBlock(self._make_mddq(cb), _e3nn_l1_basis())
            elif ir.l == 1:
                block = _ComponentBlock(cfg.vector, cfg.vector_bits)
            elif cfg.higher == "mddq":
                books = cfg.higher_codebooks or {}
                cb = books.get(ir.l)
                if cb is None and ir.l > _MAX_ORBIT_DEGREE:
                    raise ValueError(
                        f"irreps {self.irreps} has degree l = {ir.l}: higher='mddq' has default codebooks up "
                        f"to l = {_MAX_ORBIT_DEGREE}; give higher_codebooks[{ir.l}] or use higher='symmetric'"
                    )
                if cb is None:
                    cb = _default_orbit_codebook(ir.l, cfg.higher_codebook_size, cfg.higher_group)
                block = _MDDQBlock(self._make_mddq(cb), None)
            else:
                block = _ComponentBlock(cfg.higher, cfg.higher_bits)
            blocks.append(block)
            self._slices.append((sl, mul, d, ir))
        self.quantizers = nn.ModuleList(blocks)

    def _make_mddq(self, cb) -> _quantize.MDDQ:
        cfg = self.config
        return _quantize.MDDQ(
            cb, magnitude_bits=cfg.magnitude_bits, magnitude=cfg.magnitude, direction_ste=cfg.direction_ste
        )

    @property
    def irreps_out(self) -> o3.Irreps:
        """The irreps of the output (the input's)."""
        return self.irreps

    @property
    def calibrating(self) -> bool:
        """True while any block still calibrates."""
        return any(q.calibrating for q in self.quantizers)

    def calibrate(self, mode: bool = True) -> IrrepsQuantizer:
        """Switch calibration of every block on or off; returns ``self``."""
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"mode must be a bool, got {type(mode).__name__}")
        for q in self.quantizers:
            q.calibrating = bool(mode)
        return self

    def freeze(self) -> IrrepsQuantizer:
        """Stop calibrating (``calibrate(False)``); returns ``self``."""
        return self.calibrate(False)

    def _check_input(self, x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"x must be a torch tensor of shape (..., {self.irreps.dim}), got {type(x).__name__}"
            )
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating tensor, got dtype {x.dtype}")
        if x.device.type == "meta":
            raise ValueError("x is on the meta device (a tensor without data)")
        if x.ndim == 0 or x.shape[-1] != self.irreps.dim:
            raise ValueError(
                f"x must have shape (..., {self.irreps.dim}) for irreps {self.irreps} "
                f"(dim {self.irreps.dim}), got {tuple(x.shape)}"
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN or infinite entries")
        return x

    def forward(self, x: Any) -> torch.Tensor:
        """Fake-quantized features, shape and dtype of ``x``."""
        x = self._check_input(x)
        if not self._slices or x.numel() == 0:
            return x.clone()  # nothing to quantize (and nothing to calibrate on)
        lead = x.shape[:-1]
        # the blocks tile the last axis (zero-multiplicity blocks take no space)
        parts = []
        for (sl, mul, d, ir), q in zip(self._slices, self.quantizers):
            try:
                parts.append(q(x[..., sl].reshape(*lead, mul, d)).reshape(*lead, mul * d))
            except ValueError as exc:  # e.g. a channel norm that overflows the dtype
                raise ValueError(f"x, block {mul}x{ir}: {exc}") from exc
        return torch.cat(parts, dim=-1)

    def bits_report(self) -> dict:
        """Bits of the quantized representation, per block and per feature component.

        Returns
        -------
        dict
            ``{"irreps": str, "dim": int, "bits": int, "bits_per_feature": float, "compression_vs_fp32":
            float, "blocks": [{"irrep", "mul", "dim", "scheme", "bits_per_channel", "bits"}, ...]}``. The
            observer ranges (a few floats per block) are not counted.
        """
        blocks = []
        for (_, mul, d, ir), q in zip(self._slices, self.quantizers):
            if isinstance(q, _MDDQBlock):
                per = q.mddq.bits_per_vector
                scheme = f"mddq {q.mddq.magnitude_bits}+{per - q.mddq.magnitude_bits}"
            else:
                per = q.bits * d
                scheme = f"{q.scheme} {q.bits}"
            blocks.append(
                {"irrep": str(ir), "mul": mul, "dim": mul * d, "scheme": scheme, "bits_per_channel": per,
                 "bits": per * mul}
            )  # fmt: skip
        total = sum(b["bits"] for b in blocks)
        dim = self.irreps.dim
        bpf = total / dim if dim else 0.0
        return {
            "irreps": str(self.irreps),
            "dim": dim,
            "bits": total,
            "bits_per_feature": bpf,
            "compression_vs_fp32": 32.0 / bpf if bpf else math.inf,
            "blocks": blocks,
        }

    def extra_repr(self) -> str:
        return f"irreps={self.irreps}, config={self.config}"


@functools.lru_cache(maxsize=1)
def _default_vector_codebook() -> _codebook.Codebook:
    return _codebook.icosahedral(4)


@functools.lru_cache(maxsize=16)
def _default_orbit_codebook(l: int, n: int, group: str) -> _hypersphere.HypersphereCodebook:
    return orbit_codebook(l, n, group)


# ----------------------------------------------------------------------------------------------------------
# wrapping submodules of any nn.Module
# ----------------------------------------------------------------------------------------------------------
class _OutputQuantizeHook:
    """Forward hook replacing the output by ``module.irreps_output_quantizer(output)`` (picklable)."""

    def __call__(self, module: nn.Module, args, output):
        q = module._modules.get(_QUANTIZER_ATTR)
        if q is None:
            return output
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"{type(module).__name__} returned {type(output).__name__}; quantize_irreps_ needs modules "
                "whose output is one tensor of shape (..., irreps.dim)"
            )
        return q(output)


def _selector(filter_fn, names, types) -> Callable[[nn.Module, str], bool]:
    given = [a is not None for a in (filter_fn, names, types)]
    if sum(given) != 1:
        raise ValueError(
            "give exactly one of filter_fn (callable(module, name) -> bool), names (qualified submodule "
            "names) or types (module classes)"
        )
    if filter_fn is not None:
        if not callable(filter_fn):
            raise TypeError(
                f"filter_fn must be callable(module, name) -> bool, got {type(filter_fn).__name__}"
            )
        return filter_fn
    if names is not None:
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, Iterable) or not all(isinstance(n, str) for n in names):
            raise TypeError("names must be a string or an iterable of strings (qualified submodule names)")
        wanted = set(names)
        return lambda module, name: name in wanted
    tps = (types,) if isinstance(types, type) else types
    if not isinstance(tps, tuple) or not tps or not all(isinstance(t, type) for t in tps):
        raise TypeError(f"types must be a class or a non-empty tuple of classes, got {types!r}")
    return lambda module, name: isinstance(module, tps)


def quantize_irreps_(
    module: nn.Module,
    config: Any = None,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    *,
    names: Iterable[str] | str | None = None,
    types: type | tuple[type, ...] | None = None,
    irreps: Any = None,
) -> nn.Module:
    """Fake-quantize the irreps-typed outputs of chosen submodules of ``module``, in place (torchao style).

    Each selected submodule gets a child :class:`IrrepsQuantizer` (attribute ``irreps_output_quantizer``)
    and a forward hook that replaces its output by the quantized one; the submodule keeps its class, its
    parameters and its place in the model. The quantizers start in calibration mode: run a few batches,
    then :func:`set_irreps_calibration` ``(module, False)``.

    Parameters
    ----------
    module : torch.nn.Module
        The model (it may itself be selected, with the name ``""``).
    config : IrrepsQuantConfig or dict, optional
        Passed to every :class:`IrrepsQuantizer`.
    filter_fn : callable(module, name) -> bool, optional
        Selects submodules by predicate (``name`` is the qualified name of ``named_modules``).
    names : str or iterable of str, optional
        Qualified names of the submodules; every name must exist.
    types : class or tuple of classes, optional
        Selects every submodule that is an instance.
    irreps : e3nn.o3.Irreps, str or callable(module) -> Irreps, optional
        Output irreps of the selected modules; default their ``irreps_out`` attribute.

    Exactly one of ``filter_fn``, ``names``, ``types`` must be given.

    Returns
    -------
    torch.nn.Module
        ``module`` itself.

    Raises
    ------
    TypeError
        If ``module`` is not an ``nn.Module``, a selected submodule has no ``irreps_out`` (and ``irreps`` is
        not given) or its ``irreps_out`` is not an Irreps.
    ValueError
        On unknown names, when nothing is selected, when a selected submodule is already quantized, when
        ``irreps`` has another dimension than a selected submodule's ``irreps_out``, or for a bad selector or
        config.

    Examples
    --------
    >>> import torch
    >>> from e3nn import o3
    >>> model = torch.nn.Sequential(o3.Linear("4x0e + 2x1o", "4x0e + 2x1o"))
    >>> _ = quantize_irreps_(model, types=o3.Linear)
    >>> list(irreps_quantizers(model))
    ['0']
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    cfg = _as_config(config)
    select = _selector(filter_fn, names, types)
    if irreps is not None and not callable(irreps):
        irreps = _as_irreps(irreps)
    chosen = [(name, sub) for name, sub in module.named_modules() if select(sub, name)]
    if names is not None:
        wanted = {names} if isinstance(names, str) else set(names)
        missing = sorted(wanted - {name for name, _ in chosen})
        if missing:
            raise ValueError(f"names {missing} are not submodules of the model")
    chosen = [(n, s) for n, s in chosen if not isinstance(s, IrrepsQuantizer)]
    if not chosen:
        raise ValueError(
            f"no submodule of module ({type(module).__name__}) matched the selection "
            "(filter_fn / names / types)"
        )
    plans = []
    for name, sub in chosen:
        if _QUANTIZER_ATTR in sub._modules:
            raise ValueError(f"submodule {name!r} ({type(sub).__name__}) is already quantized")
        if irreps is None:
            if not hasattr(sub, "irreps_out"):
                raise TypeError(
                    f"submodule {name!r} ({type(sub).__name__}) has no irreps_out attribute: "
                    "quantize_irreps_ needs the output irreps (e3nn modules have them), or pass irreps="
                )
            out = sub.irreps_out
            if not isinstance(out, o3.Irreps):
                raise TypeError(
                    f"submodule {name!r} ({type(sub).__name__}) has irreps_out of type {type(out).__name__}, "
                    "not an e3nn.o3.Irreps"
                )
        else:
            out = _as_irreps(irreps(sub)) if callable(irreps) else irreps
            own = getattr(sub, "irreps_out", None)
            if isinstance(own, o3.Irreps) and own.dim != out.dim:
                raise ValueError(
                    f"irreps {out} (dim {out.dim}) does not fit submodule {name!r} ({type(sub).__name__}), "
                    f"whose irreps_out is {own} (dim {own.dim})"
                )
        plans.append((sub, out))
    for sub, out in plans:
        sub.add_module(_QUANTIZER_ATTR, IrrepsQuantizer(out, cfg))
        sub.register_forward_hook(_OutputQuantizeHook())
    return module


def irreps_quantizers(module: nn.Module) -> dict[str, IrrepsQuantizer]:
    """The output quantizers attached by :func:`quantize_irreps_`, by the qualified name of their module."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    return {
        name: sub._modules[_QUANTIZER_ATTR]
        for name, sub in module.named_modules()
        if isinstance(sub._modules.get(_QUANTIZER_ATTR), IrrepsQuantizer)
    }


def set_irreps_calibration(module: nn.Module, mode: bool) -> int:
    """Switch calibration of every :class:`IrrepsQuantizer` in ``module`` on or off; returns how many."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(mode, (bool, np.bool_)):
        raise TypeError(f"mode must be a bool, got {type(mode).__name__}")
    qs = [m for m in module.modules() if isinstance(m, IrrepsQuantizer)]
    for q in qs:
        q.calibrate(bool(mode))
    return len(qs)


def remove_irreps_quantization_(module: nn.Module) -> nn.Module:
    """Undo :func:`quantize_irreps_` in place: drop the output quantizers and hooks; return ``module``."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    for sub in module.modules():
        for key, hook in list(sub._forward_hooks.items()):
            if isinstance(hook, _OutputQuantizeHook):
                del sub._forward_hooks[key]
        if _QUANTIZER_ATTR in sub._modules:
            del sub._modules[_QUANTIZER_ATTR]
    return module
