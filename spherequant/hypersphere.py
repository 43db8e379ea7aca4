"""Codebooks on the hypersphere ``S^(d-1)``, ``d >= 2``: direction quantizers for degree-``l`` features.

:class:`spherequant.codebook.Codebook` covers ``S^2`` (degree-1 vectors), with exact Voronoi covering radii
and fast nearest-codeword indices. Features of degree ``l >= 2`` have ``d = 2 l + 1`` components, and their
MDDQ direction codebook lives on ``S^(d-1)``: :class:`HypersphereCodebook` holds such a codebook, with an
exact brute-force nearest search (``argmax <x, c_k>``, the cost is ``K d`` per query, fine for the
codebook sizes of higher-degree features), a Monte-Carlo covering-radius estimate, random codebooks and a
spherical k-means fit in any dimension. :mod:`spherequant.irreps` builds its degree-``l`` orbit codebooks
with it, and :class:`spherequant.quantize.MDDQ` accepts it as the direction codebook.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._backend import as_float_array, check_features, is_torch, safe_norm
from ._validation import check_finite, check_int, check_seed

__all__ = ["HypersphereCodebook"]


class HypersphereCodebook:
    """A finite set of unit vectors on ``S^(d-1)``, ``d >= 2``, with exact brute-force nearest search.

    Direction codebook for MDDQ of degree-``l`` features (``d = 2 l + 1`` components; e.g. ``d = 5`` for
    ``l = 2``), where :class:`spherequant.codebook.Codebook` (``S^2`` only) does not apply. The nearest
    codeword is ``argmax_k <x, c_k>`` (lowest index among exact ties), evaluated in the query's dtype; the
    torch path stays on the query's device.

    Parameters
    ----------
    points : array_like or torch.Tensor, shape (K, d)
        Codeword directions (finite, non-zero rows; rows are normalised without overflow or underflow, so
        rows of any finite scale work). Two rows with the same direction raise ValueError (a duplicate
        codeword can never be chosen and wastes code space). Stored read-only as float64.

    Examples
    --------
    >>> import numpy as np
    >>> cb = HypersphereCodebook.random(64, dim=5, seed=0)
    >>> cb.points.shape, cb.dim
    ((64, 5), 5)
    >>> x = cb.points[[3, 7]] * 2.0
    >>> cb.nearest(x).tolist()
    [3, 7]
    """

    def __init__(self, points: Any):
        p = as_float_array(points, "points")  # refuses complex, bool and meta tensors before any cast
        if is_torch(p):
            p = p.detach().cpu().to(torch.float64).numpy()
        if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 2:
            raise ValueError(f"points must have shape (K, d) with K >= 1 and d >= 2, got {tuple(p.shape)}")
        check_finite(p, "points")
        p = np.array(p, dtype=np.float64)
        norms = safe_norm(p, axis=1)
        if not np.all(norms > 0):
            raise ValueError(
                f"points has a zero row (row {int(np.argmin(norms))}); a codeword needs a direction"
            )
        big = ~np.isfinite(norms)  # norm overflows float64: scale those rows down first (exact, power of 2)
        if big.any():
            p[big] *= 2.0**-64
            norms[big] = safe_norm(p[big], axis=1)
        p /= norms[:, None]
        _, first, counts = np.unique(p, axis=0, return_index=True, return_counts=True)
        if np.any(counts > 1):
            rows = np.flatnonzero(np.all(p == p[first[np.argmax(counts > 1)]], axis=1))
            raise ValueError(
                f"points has duplicate directions (rows {rows.tolist()[:5]}); every codeword must be distinct"
            )
        p.setflags(write=False)
        self._points = p
        self._torch: dict = {}

    @property
    def points(self) -> np.ndarray:
        """Codewords, shape (K, d), float64, unit rows (read-only)."""
        return self._points

    @property
    def size(self) -> int:
        """Number of codewords ``K``."""
        return int(self._points.shape[0])

    @property
    def dim(self) -> int:
        """Ambient dimension ``d``."""
        return int(self._points.shape[1])

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"HypersphereCodebook(size={self.size}, dim={self.dim})"

    def nearest(self, x: Any, chunk: int = 16384):
        """Index of the nearest codeword to each direction of ``x``.

        Parameters
        ----------
        x : array_like or torch.Tensor, shape (..., d)
            Non-zero finite query vectors (only the direction matters).
        chunk : int
            Queries per block of the ``(chunk, K)`` dot-product matrix.

        Returns
        -------
        numpy.ndarray or torch.Tensor, shape (...), int64 (on ``x``'s device for torch)
        """
        x = check_features(x, "x", dim=self.dim)
        chunk = check_int(chunk, "chunk", minimum=1)
        flat = (x.detach() if is_torch(x) else x).reshape(-1, self.dim)
        zero = (flat == 0).all(-1) if is_torch(flat) else (flat == 0).all(axis=-1)
        if flat.shape[0] and bool(zero.any()):
            raise ValueError(
                "x contains a zero vector; its direction, hence its nearest codeword, is undefined"
            )
        if is_torch(flat):
            key = (flat.dtype, flat.device)
            if key not in self._torch:
                self._torch[key] = torch.tensor(self._points, dtype=flat.dtype, device=flat.device)
            pts = self._torch[key]
            parts = [
                torch.argmax(flat[i : i + chunk] @ pts.T, dim=-1) for i in range(0, flat.shape[0], chunk)
            ]
            out = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long, device=flat.device)
        else:
            pts = self._points.astype(flat.dtype)
            parts = [np.argmax(flat[i : i + chunk] @ pts.T, axis=-1) for i in range(0, flat.shape[0], chunk)]
            out = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            out = out.astype(np.int64)
        return out.reshape(tuple(x.shape[:-1]))

    def quantize(self, x: Any):
        """Nearest codeword of each direction of ``x``, shape (..., d), dtype of ``x``."""
        idx = self.nearest(x)
        if is_torch(idx):
            return self._torch[(x.dtype, x.device)][idx]  # filled by nearest()
        return self._points.astype(np.asarray(x).dtype)[idx]

    def covering_radius_estimate(self, n_samples: int = 100_000, seed: Any = 0) -> float:
        """Monte-Carlo *lower bound* of the covering radius (radians): the largest angle from ``n_samples``
        uniform random directions to their nearest codewords.

        Angles use ``2 atan2(|u - c|, |u + c|)`` (accurate near 0 and pi). The exact covering radius on
        ``S^(d-1)`` for ``d > 3`` is not computed; this estimate can only be too small.
        """
        n_samples = check_int(n_samples, "n_samples", minimum=1)
        rng = check_seed(seed)
        u = rng.standard_normal((int(n_samples), self.dim))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        c = self._points[self.nearest(u)]
        ang = 2 * np.arctan2(np.linalg.norm(u - c, axis=1), np.linalg.norm(u + c, axis=1))
        return float(ang.max())

    @classmethod
    def random(cls, n: int, dim: int, seed: Any = None) -> HypersphereCodebook:
        """``n`` independent uniform points on ``S^(dim-1)`` (normalised Gaussians)."""
        n = check_int(n, "n", minimum=1)
        dim = check_int(dim, "dim", minimum=2)
        return cls(check_seed(seed).standard_normal((int(n), int(dim))))

    @classmethod
    def kmeans(cls, data: Any, n: int, iterations: int = 50, seed: Any = None) -> HypersphereCodebook:
        """Spherical k-means of the directions of ``data`` (shape (N, d), zero rows ignored).

        Lloyd iterations: assign each direction to its nearest centre, replace each centre by the normalised
        mean of its cluster (an empty cluster keeps its centre). Initialised with ``n`` distinct data
        directions drawn with ``seed`` (so ``n`` is at most the number of distinct directions).
        """
        x = as_float_array(data, "data")
        if is_torch(x):
            x = x.detach().cpu().to(torch.float64).numpy()
        if x.ndim != 2 or x.shape[1] < 2:
            raise ValueError(f"data must have shape (N, d) with d >= 2, got {tuple(x.shape)}")
        check_finite(x, "data")
        iterations = check_int(iterations, "iterations", minimum=0)
        x = np.array(x, dtype=np.float64)
        x *= 1.0 / np.maximum(np.abs(x).max(axis=1, keepdims=True), np.finfo(np.float64).tiny)
        norms = safe_norm(x, axis=1)
        x = x[norms > 0] / norms[norms > 0, None]
        distinct = np.unique(x, axis=0)
        if check_int(n, "n", minimum=1) > distinct.shape[0]:
            raise ValueError(
                f"n must be in [1, {distinct.shape[0]}] (distinct non-zero data directions), got {n!r}"
            )
        rng = check_seed(seed)
        centres = distinct[rng.choice(distinct.shape[0], size=int(n), replace=False)].copy()
        for _ in range(int(iterations)):
            assign = np.argmax(x @ centres.T, axis=1)
            sums = np.zeros_like(centres)
            np.add.at(sums, assign, x)
            lengths = np.linalg.norm(sums, axis=1)
            moved = lengths > 0
            new = centres.copy()
            new[moved] = sums[moved] / lengths[moved, None]
            if np.array_equal(new, centres):
                break
            centres = new
        return cls(centres)
