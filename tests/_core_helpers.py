"""Helpers shared by the core tests: array-kind conversion and the gradcheck harness of the STEs.

Test modules import what they need from here (``from _core_helpers import surrogate``; pytest puts
``tests/`` on ``sys.path``). Only numpy and torch are imported: the core tests run without the ``models``
extra.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["TORCH_DTYPES", "as_backend", "surrogate", "to_numpy", "vjp"]

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def as_backend(x, backend: str, float_dtype: str):
    """``x`` as a numpy array (``backend="numpy"``) or CPU torch tensor of ``float_dtype``."""
    x = np.asarray(x, dtype=float_dtype)
    return torch.tensor(x) if backend == "torch" else x


def to_numpy(x) -> np.ndarray:
    """A numpy copy of a tensor (detached, on the CPU) or ``np.asarray(x)``."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def vjp(fn, inputs, grad):
    """Vector-Jacobian product of ``fn`` at ``inputs`` with cotangent ``grad`` (under autograd)."""
    with torch.enable_grad():
        xs = [t.detach().requires_grad_(True) for t in inputs]
        return torch.autograd.grad(fn(*xs), xs, grad)


def surrogate(forward, library):
    """An autograd function with the smooth ``forward`` and the backward of ``library`` (for gradcheck).

    The STE forward passes are piecewise constant, so ``torch.autograd.gradcheck`` is run on this wrapper:
    its numerical Jacobian is that of the surrogate the STE claims to differentiate, its analytical one the
    library's backward.
    """

    class Wrapper(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            ctx.save_for_backward(*inputs)
            with torch.no_grad():
                return forward(*inputs)

        @staticmethod
        def backward(ctx, grad):
            return vjp(library, ctx.saved_tensors, grad)

    return Wrapper.apply
