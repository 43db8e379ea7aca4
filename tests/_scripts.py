"""Load a repository script (``benchmarks/*.py``, ``docs/generate_results.py``, ``proofs/*.py``) as a module.

The scripts are not part of the installed package; tests import them from their files. Standard library
only, so that the core tests can use it without the ``models`` extra.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relpath: str, *, name: str | None = None, on_path: bool = False) -> ModuleType:
    """Execute ``ROOT / relpath`` as a fresh module and return it.

    Parameters
    ----------
    relpath : str
        Path of the script relative to the repository root, e.g. ``"benchmarks/nve_stability.py"``.
    name : str, optional
        Module name (default ``"_" + file stem``); a name not in ``sys.modules``, so each call loads anew.
    on_path : bool
        Put the script's folder on ``sys.path`` first (scripts that import their siblings, e.g. ``proofs/``).
    """
    path = ROOT / relpath
    if not path.is_file():
        raise FileNotFoundError(f"relpath {relpath!r}: no such script under the repository root")
    if on_path and str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name or f"_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
