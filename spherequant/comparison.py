"""Naive per-axis scalar quantization versus MDDQ on random 3-vectors: the comparison protocol.

:func:`compare_vector_quantizers` is the computation behind ``benchmarks/mddq.py`` and the vector-quantizer
table of ``spherequant demo``; :func:`spherequant.plotting.plot_error_vs_bits` draws its sweep. It lived in
:mod:`spherequant.quantize` before (still reachable there, with a :class:`DeprecationWarning`).
"""

from __future__ import annotations

import numpy as np

from ._validation import check_bool, check_choice, check_int
from .codebook import Codebook, fibonacci
from .quantize import MagnitudeQuantizer, mddq
from .scalar import fake_quantize_minmax, fake_quantize_symmetric, minmax_params, symmetric_scale
from .so3 import random_rotation

__all__ = ["compare_vector_quantizers"]

_MAGNITUDE_KINDS = ("uniform", "log")


def _per_axis(v: np.ndarray, bits: tuple[int, int, int], kind: str, calib: np.ndarray) -> np.ndarray:
    """Quantize each Cartesian component separately (per-tensor range from ``calib``)."""
    out = np.empty_like(v)
    for i, b in enumerate(bits):
        if kind == "minmax":
            scale, zp = minmax_params(calib, b)
            out[..., i] = fake_quantize_minmax(v[..., i], b, scale=scale, zero_point=zp)
        else:
            out[..., i] = fake_quantize_symmetric(v[..., i], b, scale=symmetric_scale(calib, b))
    return out


def _stats(v, rv, rot, q, rq) -> dict:
    err = np.linalg.norm(q - v, axis=-1)
    comm = np.linalg.norm(rq - np.einsum("nij,nj->ni", rot, q), axis=-1)
    mean_norm = float(np.mean(np.linalg.norm(v, axis=-1)))
    return {
        "mean_err": float(err.mean()),
        "max_err": float(err.max()),
        "rel_mean_err": float(err.mean() / mean_norm),
        "mean_comm": float(comm.mean()),
        "max_comm": float(comm.max()),
    }


def compare_vector_quantizers(
    n: int = 100_000,
    seed: int = 0,
    *,
    sweep: bool = True,
    sweep_n: int = 20_000,
    magnitude: str = "uniform",
) -> dict:
    """Naive per-axis scalar quantization versus MDDQ on random 3-vectors, at equal or fewer bits.

    Vectors are ``N(0, I_3)`` samples (so magnitudes are chi-distributed with 3 degrees of freedom, like
    equivariant features) drawn with ``numpy.random.default_rng(seed)``; each is paired with a Haar-random
    rotation ``R`` (:func:`spherequant.so3.random_rotation`, seed ``seed + 1``). Every quantizer is calibrated
    once on the union of the ``v`` and ``R v`` (so that no quantizer clips rotated inputs more than the
    originals) and then kept fixed. Reported per quantizer: mean / max of ``||Q(v) - v||``, the mean error
    relative to ``mean |v|``, and mean / max of the commutation error ``||Q(R v) - R Q(v)||``.

    Quantizers: per-axis ``3 x 8 = 24`` bits (per-tensor min-max, i.e. the paper's naive INT8, and symmetric
    max-abs); per-axis 5/5/6 = 16 bits (symmetric); MDDQ 8 + 12 = 20 bits, 6 + 10 and 4 + 12 = 16 bits,
    and MDDQ 8 + 16 = 24 bits, with spherical Fibonacci codebooks of ``2^direction bits`` points and
    ``r_max`` = the largest magnitude.
    With ``sweep=True`` also the error versus total bits on the first ``sweep_n`` vectors: per-axis ``3 b``
    bits (``b = 3 .. 10``, both kinds) and MDDQ at ``T = 9 .. 30`` bits with the best of a few
    magnitude/direction splits (direction codebooks up to 2^20 points).

    Parameters
    ----------
    n : int
        Number of vectors.
    seed : int
        Seed of the data and the rotations.
    sweep : bool
        Also run the bit sweep.
    sweep_n : int
        Number of vectors used by the sweep.
    magnitude : {"uniform", "log"}
        Magnitude level spacing of the MDDQ entries.

    Returns
    -------
    dict
        ``{"n", "seed", "rows": [{"name", "family", "bits", "mean_err", "max_err", "rel_mean_err",
        "mean_comm", "max_comm"}, ...], "sweep": [{"family", "bits", "config", ...}, ...]}``.

    Examples
    --------
    >>> res = compare_vector_quantizers(n=2000, sweep=False)
    >>> [row["bits"] for row in res["rows"]]
    [24, 24, 16, 20, 16, 16, 24]
    >>> axis16, mddq16 = res["rows"][2], res["rows"][4]  # 16 bits each: per-axis 5/5/6 vs MDDQ 6+10
    >>> mddq16["mean_err"] < axis16["mean_err"] and mddq16["mean_comm"] < axis16["mean_comm"]
    True
    """
    n = check_int(n, "n", minimum=2)
    seed = check_int(seed, "seed", minimum=0)
    sweep_n = check_int(sweep_n, "sweep_n", minimum=2)
    sweep = check_bool(sweep, "sweep")
    check_choice(magnitude, "magnitude", _MAGNITUDE_KINDS)
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, 3))
    rot = np.asarray(random_rotation(n, seed=seed + 1), dtype=np.float64)
    rv = np.einsum("nij,nj->ni", rot, v)
    runner = _Runner(np.concatenate([v, rv]), magnitude)
    rows = [
        {"name": name, "family": family, "bits": bits, **runner.run(v, rv, rot, family, config)}
        for name, family, bits, config in _FIXED
    ]
    sweep_rows = _sweep(runner, v[: min(sweep_n, n)], rv[: min(sweep_n, n)], rot[: min(sweep_n, n)])
    return {
        "n": n,
        "seed": seed,
        "magnitude": magnitude,
        "r_max": runner.r_max,
        "rows": rows,
        "sweep": sweep_rows if sweep else [],
    }


#: The fixed quantizers of the table: (name, family, bits per vector, configuration).
_FIXED = (
    ("per-axis INT8 min-max (naive)", "per-axis", 24, ("minmax", (8, 8, 8))),
    ("per-axis INT8 symmetric", "per-axis", 24, ("symmetric", (8, 8, 8))),
    ("per-axis 5/5/6 symmetric", "per-axis", 16, ("symmetric", (5, 5, 6))),
    ("MDDQ 8+12", "MDDQ", 20, (8, 12)),
    ("MDDQ 6+10", "MDDQ", 16, (6, 10)),
    ("MDDQ 4+12", "MDDQ", 16, (4, 12)),
    ("MDDQ 8+16", "MDDQ", 24, (8, 16)),
)


class _Runner:
    """Quantizers calibrated once on ``calib`` (the ``v`` and ``R v``); Fibonacci codebooks cached."""

    def __init__(self, calib: np.ndarray, magnitude: str):
        self.calib = calib
        self.magnitude = magnitude
        self.r_max = float(np.linalg.norm(calib, axis=-1).max())
        self._books: dict[int, Codebook] = {}

    def run(self, v, rv, rot, family: str, config) -> dict:
        """Error statistics of one quantizer: per-axis ``(kind, bits)`` or MDDQ ``(mag bits, dir bits)``."""
        if family == "per-axis":
            kind, bits = config
            return _stats(
                v, rv, rot, _per_axis(v, bits, kind, self.calib), _per_axis(rv, bits, kind, self.calib)
            )
        mb, db = config
        if db not in self._books:
            self._books[db] = fibonacci(2**db)
        mq = MagnitudeQuantizer(mb, self.r_max, kind=self.magnitude)
        cb = self._books[db]
        return _stats(v, rv, rot, mddq(v, cb, mq), mddq(rv, cb, mq))


def _sweep(runner: _Runner, v, rv, rot) -> list[dict]:
    """Error versus total bits: per-axis ``3 b`` bits and the best MDDQ split at ``T = 9 .. 30`` bits."""
    rows = []
    for b in range(3, 11):
        for kind in ("minmax", "symmetric"):
            res = runner.run(v, rv, rot, "per-axis", (kind, (b, b, b)))
            rows.append({"family": f"per-axis {kind}", "bits": 3 * b, "config": f"{b}/{b}/{b}", **res})
    for total in range(9, 31, 3):
        best = None
        for mb in sorted({round(total * f) for f in (0.3, 0.35, 0.4, 0.45, 0.5)}):
            db = total - mb
            if not (2 <= mb <= 16 and 2 <= db <= 20):
                continue
            res = runner.run(v, rv, rot, "MDDQ", (mb, db))
            if best is None or res["mean_err"] < best["mean_err"]:
                best = {"family": "MDDQ", "bits": total, "config": f"{mb}+{db}", **res}
        rows.append(best)
    return rows
