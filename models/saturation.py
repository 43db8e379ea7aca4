"""Saturation: the deterministic part of an activation quantizer, as plain modules.

A fake quantizer ``Q(x) = round(clamp(x, lo, hi) / s) s`` does two things: it clips to the range of its grid
and it rounds. Quantization-aware training teaches the network both, and the clipping is not small: a
trained network relies on it (its activations grow past the calibrated range during training, and the
clip holds them there). The smooth force mode (:mod:`spherequant.models.gaq`) therefore drops only the
rounding and keeps the clipping: each activation quantizer acts as its saturation ``clamp(x, lo, hi)``
(MDDQ: its magnitude clip, :func:`spherequant.quantize.clip_magnitude`), which differs from ``Q(x)`` by at
most half a step (MDDQ: half a magnitude step plus the direction error of the codebook) and is continuous
and piecewise smooth, so its autograd forces are the exact gradient of the energy.

The modules here are what :func:`~spherequant.models.gaq.smooth_float_model` puts at the hook points
``x_quant`` / ``chi_quant`` of the plain float copy; the fast path writes out their derivative.

Invariance and equivariance: clamping the invariant features ``x`` keeps the energy invariant; the degree-1
block of ``chi`` is clipped in magnitude, which commutes with rotations. A per-component quantizer of
``chi`` (the scalar baselines on the equivariant branch) has no rotation-commuting saturation and acts as
the identity in the smooth mode.
"""

from __future__ import annotations

import torch
from torch import nn

from spherequant.quantize import clip_magnitude

__all__ = ["Clamp", "DegreeOneNormClip", "clip_degree_one"]


def clip_degree_one(chi: torch.Tensor, r_max: float, degrees) -> torch.Tensor:
    """``chi`` (N, M) with its degree-1 block clipped in magnitude at ``r_max``
    (:func:`~spherequant.quantize.clip_magnitude`); the blocks of other degrees unchanged."""
    degrees = tuple(degrees)
    if degrees == (1,):
        return clip_magnitude(chi, r_max)
    o = sum(2 * l + 1 for l in degrees[: degrees.index(1)])
    return torch.cat([chi[:, :o], clip_magnitude(chi[:, o : o + 3], r_max), chi[:, o + 3 :]], dim=1)


class Clamp(nn.Module):
    """``clamp(x, lo, hi)`` with fixed bounds (buffers: scalars, or (C,) for the last axis).

    Parameters
    ----------
    lo, hi : float or torch.Tensor
        Bounds with ``lo <= hi`` (scalars or one per channel of the last axis).

    Examples
    --------
    >>> Clamp(-1.0, 2.0)(torch.tensor([-3.0, 0.5, 9.0])).tolist()
    [-1.0, 0.5, 2.0]
    """

    def __init__(self, lo, hi):
        super().__init__()
        lo = torch.as_tensor(lo, dtype=torch.float64).detach().clone()  # cast to the input's dtype in use
        hi = torch.as_tensor(hi, dtype=torch.float64).detach().clone()
        if lo.shape != hi.shape or lo.ndim > 1:
            shapes = f"{tuple(lo.shape)} and {tuple(hi.shape)}"
            raise ValueError(f"lo and hi must be scalars or (C,) of one shape, got {shapes}")
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()) or bool((lo > hi).any()):
            raise ValueError(f"lo and hi must be finite, lo <= hi, got lo={lo.tolist()}, hi={hi.tolist()}")
        self.register_buffer("lo", lo)
        self.register_buffer("hi", hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, self.lo.to(x.dtype), self.hi.to(x.dtype))

    def extra_repr(self) -> str:
        if self.lo.ndim == 0:
            return f"lo={float(self.lo):.6g}, hi={float(self.hi):.6g}"
        return f"channels={self.lo.numel()}"


class DegreeOneNormClip(nn.Module):
    """Magnitude clip of the degree-1 block of ``chi`` (N, M) at ``r_max``; other degree blocks unchanged.

    Parameters
    ----------
    r_max : float
        Positive clipping magnitude.
    degrees : sequence of int
        The model's degrees (block order of ``chi``); must contain 1.

    Examples
    --------
    >>> DegreeOneNormClip(1.0, (1,))(torch.tensor([[0.0, 3.0, 4.0], [0.1, 0.0, 0.0]])).tolist()
    [[0.0, 0.6000000238418579, 0.800000011920929], [0.10000000149011612, 0.0, 0.0]]
    """

    def __init__(self, r_max: float, degrees):
        super().__init__()
        self.degrees = tuple(int(l) for l in degrees)
        if 1 not in self.degrees:
            raise ValueError(f"degrees must contain 1, got {self.degrees}")
        self.r_max = float(r_max)
        if not self.r_max > 0:
            raise ValueError(f"r_max must be positive, got {r_max}")

    def forward(self, chi: torch.Tensor) -> torch.Tensor:
        return clip_degree_one(chi, self.r_max, self.degrees)

    def get_extra_state(self):
        return {"r_max": self.r_max, "degrees": self.degrees}

    def set_extra_state(self, state) -> None:
        self.__init__(state["r_max"], state["degrees"])

    def extra_repr(self) -> str:
        return f"r_max={self.r_max:.6g}, degrees={self.degrees}"
