"""spherequant.models: the quantized SO(3)-equivariant force field built on the spherequant core.

Installed from the top-level ``models/`` folder as ``spherequant.models``. Heavy submodules are imported on
first attribute access.
"""

from __future__ import annotations

import importlib

# public name -> submodule that defines it
_LAZY = {
    "So3krates": "so3krates",
    "model_from_checkpoint": "so3krates",
    "load_model": "checkpoints",
    "radius_graph": "neighbors",
    "SphereQuantCalculator": "calculator",
    "TrainConfig": "train",
    "train": "train",
    "evaluate": "train",
    "export_model": "train",
    "GAQConfig": "gaq",
    "quantize_": "gaq",
    "calibrate_": "gaq",
    "prepare_baseline": "baselines",
    "convert_to_integer": "deploy",
    "memory_report": "deploy",
    "run_md": "md",
    "MDResult": "md",
    "MDBlowUp": "md",
    "MorseLJPotential": "md",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
