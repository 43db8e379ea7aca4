"""spherequant.models: the quantized SO(3)-equivariant force field built on the spherequant core.

Installed from the top-level ``models/`` folder as ``spherequant.models``. Heavy submodules are imported on
first attribute access.
"""

from __future__ import annotations

import importlib

# The folder models/ is installed only as spherequant.models. Imported as a bare top-level ``models`` (the
# repository root on sys.path), it would load a second, separate copy of every class (two GAQConfig types,
# two So3krates types) whose isinstance checks fail against the first: refuse that at once.
if __name__ != "spherequant.models":
    raise ImportError(
        f"the spherequant models layer was imported as {__name__!r}; import it as 'spherequant.models' "
        "(e.g. 'from spherequant.models import So3krates'), never as a bare 'models' package"
    )

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
    "error_metrics": "train",
    "export_model": "train",
    "GAQConfig": "gaq",
    "QuantizationSpec": "gaq",
    "quantization_spec": "gaq",
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
