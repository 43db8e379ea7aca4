"""spherequant: verified quantizers on the sphere.

The core package holds pure geometry and quantizers (numpy and torch). Submodules are imported on first
attribute access, so ``import spherequant as sq; sq.codebook.fibonacci(100)`` works without importing
everything up front. The models layer (``spherequant.models``) is never imported from here.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "bounds",
    "codebook",
    "comparison",
    "equivariance",
    "hypersphere",
    "irreps",
    "learn",
    "lookup",
    "plotting",
    "quantize",
    "scalar",
    "so3",
    "sphere",
    "ste",
    "strategies",
    "symmetry",
)

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES))
