"""Sphinx configuration for spherequant.

Build with ``make -C docs html`` (warnings are errors). ``SPHEREQUANT_DOCS_QUICK=1`` runs the tutorials at
small sizes (continuous integration does).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS))
os.environ.setdefault("MPLBACKEND", "Agg")

import generate_api  # noqa: E402
import generate_results  # noqa: E402
import generate_theory  # noqa: E402

import spherequant  # noqa: E402

# Generated sources (never edited by hand): the API pages from every public module's __all__, the Theory pages
# from proofs/*.md, and the Results page from benchmarks/results/*.json.
generate_api.write_api_pages(DOCS)
_THEORY_DOCS = generate_theory.write_theory_pages(ROOT, DOCS)
generate_results.write_results(ROOT, DOCS / "results.md")
# No figure may stay open into the tutorials: sphinx-gallery's scraper saves every open figure with an
# example's own.
import matplotlib.pyplot as _plt  # noqa: E402

_plt.close("all")

project = "spherequant"
author = "the spherequant developers"
copyright = "2026, the spherequant developers"
release = spherequant.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx.ext.intersphinx",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# Class pages (docs/generate_api.py) also document members inherited from the library's own private bases
# and mixins, but not those of torch's Module, Linear and Embedding or of object.
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_typehints = "none"
# Methods without a docstring of their own (e.g. nn.Module overrides such as forward) are not listed;
# inheriting torch's docstrings would pull torch's cross-references (unresolvable offline) into our pages.
autodoc_inherit_docstrings = False
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
# Parameter types as plain (emphasised) text: numpydoc types are free-form ("callable(module, name) -> bool"),
# and turned into cross-references their words would resolve to unrelated objects (e.g. "name").
napoleon_use_param = False
# "Attributes" sections as :ivar: fields: as attribute directives they would duplicate the dataclass fields
# that autodoc documents ("duplicate object description").
napoleon_use_ivar = True

intersphinx_mapping = {}

# Tutorials: examples/plot_*.py rendered by sphinx-gallery; SPHEREQUANT_DOCS_QUICK=1 (CI) runs them small.
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    # A failing tutorial does not stop the others; the build still fails, with every failure's traceback in
    # the closing summary (aborting at the first showed only its message).
    "abort_on_example_error": False,
}

html_theme = "furo"
html_title = f"spherequant {release}"
html_static_path = []
exclude_patterns = [
    "_build",
    "Thumbs.db",
    ".DS_Store",
    "auto_examples/*.ipynb",
    "auto_examples/*.py",
    "auto_examples/*.zip",
    "auto_examples/*.md5",
    "auto_examples/*.json",
]
suppress_warnings = ["config.cache"]
# The Makefile builds with -n (nitpicky): every explicit cross-reference to a spherequant object (:func:,
# :meth:, :mod:, :attr:, :obj:) must resolve. Two kinds of targets are exempt: py:class targets, which the
# Python domain also creates from the free-form numpydoc type descriptions ("ndarray of shape (N, 3)",
# "{'a', 'b'}", "optional"), and objects of other libraries, whose inventories (intersphinx) are not
# available offline.
nitpick_ignore_regex = [
    ("py:class", r".*"),
    (r"py:.*", r"(torch|nn|numpy|np|scipy|ase|e3nn|healpy|matplotlib|hypothesis|os|pathlib|json)(\..*)?"),
]


def _splice_theory_toctree(app, docname, source):
    """Replace the marker line of theory.md with the proofs' index (proofs/README.md) and their toctree."""
    if docname == "theory":
        block = generate_theory.readme_block(ROOT) + generate_theory.toctree_block(_THEORY_DOCS)
        source[0] = source[0].replace(generate_theory.MARKER, block)


def setup(app):
    app.connect("source-read", _splice_theory_toctree)
