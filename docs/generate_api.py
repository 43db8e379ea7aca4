"""Write the API reference source pages from the modules' ``__all__`` lists.

Every public module (no leading underscore) of :mod:`spherequant` and :mod:`spherequant.models` gets one page,
``docs/api/generated/modules/<module>.rst``, listing every name in its ``__all__`` with a one-line summary;
every such name gets a page of its own (``api/generated/names/<module>.<name>.rst``, one autodoc directive).
Names re-exported by a package's ``__all__`` are listed with a link to the module that defines them. Because
the pages are derived from ``__all__`` at build time, a new public name can never be missing from the
reference; ``tests/test_docs.py`` checks this against an independent scan of the package folders.

Run from ``docs/conf.py`` at build time, or by hand: ``python docs/generate_api.py`` (writes into
``docs/api/generated/``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys
import types
from pathlib import Path

from spherequant._report import atomic_write_text

__all__ = ["PACKAGES", "public_modules", "summary", "write_api_pages"]

#: Packages whose public modules are documented.
PACKAGES = ("spherequant", "spherequant.models")


def public_modules() -> list[str]:
    """Names of the packages in :data:`PACKAGES` and of their public submodules, sorted.

    A module is public when no component of its dotted name starts with an underscore.
    """
    names = set()
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        names.add(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                names.add(f"{pkg_name}.{info.name}")
    return sorted(names)


def _title(text: str, char: str = "=") -> str:
    return f"{text}\n{char * len(text)}\n"


def summary(obj) -> str:
    """First sentence of an object's docstring as safe inline reST ("" if none).

    A period ends the sentence only outside ``double-backquoted`` literals; markup that would still be
    unbalanced (an odd number of literal delimiters) is dropped rather than passed to docutils.
    """
    doc = inspect.getdoc(obj) if not isinstance(obj, (int, float, str, tuple, dict, list)) else None
    if not doc:
        return ""
    para = " ".join(doc.split("\n\n", 1)[0].split())
    # cross-reference roles may be relative to the object's own scope: show their targets as literals instead
    para = re.sub(r":(?!math:)(?:py:)?[a-z]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`", r"``\1``", para)
    parts = para.split("``")
    out = []
    for i, part in enumerate(parts):
        if i % 2 == 0:  # outside a literal: the first ". " ends the sentence
            m = re.search(r"\.(\s|$)", part)
            if m:
                out.append(part[: m.start() + 1])
                break
        out.append(part)
    text = "``".join(out).strip()
    if text.count("``") % 2:
        text = text.replace("``", "")
    # "|" outside literals would start a substitution reference; inside literals backslashes are literal
    pieces = text.split("``")
    return "``".join(p if i % 2 else p.replace("|", "\\|") for i, p in enumerate(pieces))


def _directive(obj) -> str:
    if inspect.isclass(obj):
        return "autoclass"
    if callable(obj):
        return "autofunction"
    return "autodata"


#: Classes whose members are not documented on subclasses' pages (members inherited from the library's own
#: private bases and mixins are).
INHERITED_STOP = "Module,Linear,Embedding,object"


def _stub(module_name: str, item: str, obj) -> str:
    directive = _directive(obj)
    options = f"   :inherited-members: {INHERITED_STOP}\n" if directive == "autoclass" else ""
    return (
        _title(f"``{module_name}.{item}``")
        + f"\n.. currentmodule:: {module_name}\n\n.. {directive}:: {item}\n{options}"
    )


def _documented_target(item: str, obj) -> str:
    """Where a re-exported name is documented: its defining module, or, when that module is private (a
    ``_``-prefixed component, e.g. ``spherequant.models._quant_spec``), the public module whose ``__all__``
    lists the same object."""
    home = f"{obj.__module__}.{getattr(obj, '__qualname__', item)}"
    if not any(part.startswith("_") for part in obj.__module__.split(".")):
        return home
    for candidate in public_modules():
        try:
            module = importlib.import_module(candidate)
        except ImportError:
            continue
        if hasattr(module, "__path__"):
            continue  # packages only re-export
        if item in getattr(module, "__all__", ()) and getattr(module, item, None) is obj:
            return f"{candidate}.{item}"
    return home


def _module_page(name: str) -> tuple[str, dict[str, str]]:
    """The reST page of module ``name`` and the stub pages of its names (file stem -> text)."""
    try:
        module = importlib.import_module(name)
    except ImportError as exc:  # an optional dependency is missing: say so instead of failing the build
        return (
            _title(f"``{name}``")
            + f"\n.. note::\n\n   This module could not be imported when the documentation was built "
            f"({type(exc).__name__}: {exc}). Install the optional extra it needs and rebuild.\n"
        ), {}
    exported = list(getattr(module, "__all__", []))
    out = [
        _title(f"``{name}``"),
        f"\n.. automodule:: {name}\n   :no-members:\n\n.. currentmodule:: {name}\n\n",
    ]
    own, submodules, reexports = [], [], []
    for item in exported:
        obj = getattr(module, item)
        if isinstance(obj, types.ModuleType):
            submodules.append(item)
        elif hasattr(module, "__path__") and getattr(obj, "__module__", name) not in (name, None):
            reexports.append((item, obj))
        else:
            own.append((item, obj))
    stubs = {}
    if own:
        out.append(_title("Public names", "-") + "\n")
        out.append(".. toctree::\n   :hidden:\n\n")
        out.extend(f"   ../names/{name}.{item}\n" for item, _ in own)
        out.append("\n")
        for item, obj in own:
            text = summary(obj)
            out.append(f"* :py:obj:`~{name}.{item}`" + (f" -- {text}\n" if text else "\n"))
            stubs[f"{name}.{item}"] = _stub(name, item, obj)
        out.append("\n")
    if submodules:
        out.append(_title("Submodules", "-") + "\n")
        out.extend(f"* :mod:`{name}.{item}`\n" for item in submodules)
        out.append("\n")
    if reexports:
        out.append(_title("Re-exported names", "-") + "\n")
        out.append("These names are importable from this package; each is documented in its own module.\n\n")
        for item, obj in reexports:
            target = _documented_target(item, obj)
            out.append(f"* :py:obj:`{name}.{item} <{target}>`\n")
        out.append("\n")
    if "__all__" not in vars(module):
        out.append(".. note::\n\n   This module defines no ``__all__``; none of its names are listed here.\n")
    return "".join(out), stubs


def _write(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        atomic_write_text(path, text)


def write_api_pages(docs_dir: Path | str | None = None) -> list[Path]:
    """Write ``api/generated/modules/<module>.rst`` for every public module; return the paths written.

    Pages whose text is unchanged are not rewritten (so incremental Sphinx builds stay incremental); pages of
    modules that no longer exist are removed.
    """
    docs_dir = Path(docs_dir) if docs_dir is not None else Path(__file__).resolve().parent
    out_dir = docs_dir / "api" / "generated" / "modules"
    names_dir = docs_dir / "api" / "generated" / "names"
    out_dir.mkdir(parents=True, exist_ok=True)
    names_dir.mkdir(parents=True, exist_ok=True)
    written, stub_paths = [], set()
    for name in public_modules():
        text, stubs = _module_page(name)
        path = out_dir / f"{name}.rst"
        _write(path, text)
        written.append(path)
        for stem, stub in stubs.items():
            _write(names_dir / f"{stem}.rst", stub)
            stub_paths.add(names_dir / f"{stem}.rst")
    for stale in (set(out_dir.glob("*.rst")) - set(written)) | (set(names_dir.glob("*.rst")) - stub_paths):
        stale.unlink()
    return written


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    for p in write_api_pages():
        print(p)
