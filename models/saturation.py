"""Saturation: the deterministic part of an activation quantizer, as plain modules.

A fake quantizer ``Q(x) = round(clamp(x, lo, hi) / s) s`` does two things: it clips to the range of its grid
and it rounds. Quantization-aware training teaches the network both, and the clipping is not small: a
trained network relies on it (its activations grow past the calibrated range during training, and the
clip holds them there). The smooth force mode (:mod:`spherequant.models.gaq`) therefore drops only the
rounding and keeps the clipping: each activation quantizer acts as its saturation, the clamp to its range
with the two corners rounded over :data:`SMOOTH_SATURATION_WIDTH` grid steps
(:func:`spherequant.scalar.soft_clamp`; MDDQ: its magnitude clip, :func:`spherequant.quantize.clip_magnitude`,
rounded over that many magnitude steps). It lies within ``(1/2 + width ln 2)`` steps of ``Q(x)`` (MDDQ: plus
the direction error of the codebook), and the energy is infinitely differentiable, so its autograd forces
are the exact gradient and velocity Verlet keeps its usual energy conservation.

Why round the corners: with the plain clamp the forces jump where an activation reaches its bound, and
every such crossing leaves an energy error that does not average out. ``benchmarks/saturation_width.py``
measures NVE drift and test accuracy against the width (the Results page shows its table);
``benchmarks/force_modes.py`` the accuracy of every study model in each force mode.

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
from spherequant.scalar import soft_clamp

__all__ = ["SMOOTH_SATURATION_WIDTH", "Clamp", "DegreeOneNormClip", "clip_degree_one"]

#: Width, in grid steps, over which the smooth force mode rounds the corners of each clamp (see above).
SMOOTH_SATURATION_WIDTH = 0.5


def clip_degree_one(chi: torch.Tensor, r_max: float, degrees, width: float = 0.0) -> torch.Tensor:
    """``chi`` (N, M) with its degree-1 block clipped in magnitude at ``r_max``, the corner rounded over
    ``width`` (:func:`~spherequant.quantize.clip_magnitude`); the blocks of other degrees unchanged."""
    degrees = tuple(degrees)
    if degrees == (1,):
        return clip_magnitude(chi, r_max, width)
    o = sum(2 * l + 1 for l in degrees[: degrees.index(1)])
    clipped = clip_magnitude(chi[:, o : o + 3], r_max, width)
    return torch.cat([chi[:, :o], clipped, chi[:, o + 3 :]], dim=1)


class Clamp(nn.Module):
    """:func:`~spherequant.scalar.soft_clamp` with fixed bounds and width (buffers: scalars, or (C,) for the
    last axis); ``width = 0`` is the plain clamp.

    Parameters
    ----------
    lo, hi : float or torch.Tensor
        Bounds with ``lo <= hi`` (scalars or one per channel of the last axis).
    width : float or torch.Tensor
        Non-negative width of the corners (units of the input; scalar or per channel).

    Examples
    --------
    >>> Clamp(-1.0, 2.0)(torch.tensor([-3.0, 0.5, 9.0])).tolist()
    [-1.0, 0.5, 2.0]
    """

    def __init__(self, lo, hi, width=0.0):
        super().__init__()
        lo = torch.as_tensor(lo, dtype=torch.float64).detach().clone()  # cast to the input's dtype in use
        hi = torch.as_tensor(hi, dtype=torch.float64).detach().clone()
        width = torch.as_tensor(width, dtype=torch.float64).detach().clone()
        if lo.shape != hi.shape or lo.ndim > 1 or width.ndim > lo.ndim:
            shapes = f"{tuple(lo.shape)}, {tuple(hi.shape)} and {tuple(width.shape)}"
            raise ValueError(f"lo, hi (and width) must be scalars or (C,) of one shape, got {shapes}")
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()) or bool((lo > hi).any()):
            raise ValueError(f"lo and hi must be finite, lo <= hi, got lo={lo.tolist()}, hi={hi.tolist()}")
        if not torch.isfinite(width).all() or bool((width < 0).any()):
            raise ValueError(f"width must be finite and non-negative, got {width.tolist()}")
        self.register_buffer("lo", lo)
        self.register_buffer("hi", hi)
        self.register_buffer("width", torch.broadcast_to(width, lo.shape).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return soft_clamp(x, self.lo.to(x.dtype), self.hi.to(x.dtype), self.width.to(x.dtype))

    def extra_repr(self) -> str:
        if self.lo.ndim == 0:
            return f"lo={float(self.lo):.6g}, hi={float(self.hi):.6g}, width={float(self.width):.3g}"
        return f"channels={self.lo.numel()}"


class DegreeOneNormClip(nn.Module):
    """Magnitude clip of the degree-1 block of ``chi`` (N, M) at ``r_max``, its corner rounded over
    ``width`` (:func:`clip_degree_one`); other degree blocks unchanged.

    Parameters
    ----------
    r_max : float
        Positive clipping magnitude.
    degrees : sequence of int
        The model's degrees (block order of ``chi``); must contain 1.
    width : float
        Non-negative width of the corner (units of ``chi``); 0 for the plain clip.

    Examples
    --------
    >>> out = DegreeOneNormClip(1.0, (1,))(torch.tensor([[0.0, 3.0, 4.0], [0.1, 0.0, 0.0]]))
    >>> [round(v, 4) for v in out.flatten().tolist()]
    [0.0, 0.6, 0.8, 0.1, 0.0, 0.0]
    """

    def __init__(self, r_max: float, degrees, width: float = 0.0):
        super().__init__()
        self.degrees = tuple(int(l) for l in degrees)
        if 1 not in self.degrees:
            raise ValueError(f"degrees must contain 1, got {self.degrees}")
        self.r_max = float(r_max)
        if not self.r_max > 0:
            raise ValueError(f"r_max must be positive, got {r_max}")
        self.width = float(width)
        if not self.width >= 0:
            raise ValueError(f"width must be non-negative, got {width}")

    def forward(self, chi: torch.Tensor) -> torch.Tensor:
        return clip_degree_one(chi, self.r_max, self.degrees, self.width)

    def get_extra_state(self):
        return {"r_max": self.r_max, "degrees": self.degrees, "width": self.width}

    def set_extra_state(self, state) -> None:
        self.__init__(state["r_max"], state["degrees"], state.get("width", 0.0))

    def extra_repr(self) -> str:
        return f"r_max={self.r_max:.6g}, degrees={self.degrees}, width={self.width:.3g}"
