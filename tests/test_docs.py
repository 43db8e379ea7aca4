"""Documentation checks: library doctests, ``pycon`` snippets of the docs pages, API-reference coverage, the
Results/Theory generators, and (slow) the full Sphinx build with warnings as errors.

The doctests run per module (one test each), so a failure names its module. Modules that need an optional
extra (tblite, rdkit) are skipped when it is missing.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import json
import os
import pkgutil
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS))

import generate_api  # noqa: E402
import generate_results  # noqa: E402
import generate_theory  # noqa: E402

PACKAGES = ("spherequant", "spherequant.models")
#: Optional extras: a module whose import fails for want of one of these is skipped, not failed.
OPTIONAL = ("tblite", "rdkit", "torch_sim")
DOCTEST_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _all_modules() -> list[str]:
    """Every module of the two packages (private ones too: their doctests must pass as well)."""
    names = []
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        names.append(pkg_name)
        names += [f"{pkg_name}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)]
    return names


def _import_or_skip(name: str) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing = getattr(exc, "name", "") or ""
        if missing.split(".")[0] in OPTIONAL:
            pytest.skip(f"{name} needs the optional dependency {missing!r}")
        raise


def _run_doctests(tests: list[doctest.DocTest], label: str, shared: bool = False) -> None:
    """Run ``tests``; with ``shared=True`` the blocks of one page share a namespace."""
    runner = doctest.DocTestRunner(optionflags=DOCTEST_FLAGS, verbose=False)
    report: list[str] = []
    for test in tests:
        runner.run(test, out=report.append, clear_globs=not shared)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, (
        f"{result.failed} of {result.attempted} doctests failed in {label}:\n" + "".join(report)
    )


# ----------------------------------------------------------------------------------------------------------
# (a) doctests of every module
# ----------------------------------------------------------------------------------------------------------
# Docstring examples of Hypothesis strategies call ``.example()``, meant for just such interactive use.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
@pytest.mark.parametrize("module_name", _all_modules())
def test_module_doctests(module_name, monkeypatch, tmp_path):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("SPHEREQUANT_CACHE", str(tmp_path / "cache"))  # never touch the user's cache
    monkeypatch.chdir(tmp_path)  # doctests that write files write here
    module = _import_or_skip(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = [t for t in finder.find(module, module_name) if t.examples]
    tests.sort(key=lambda t: t.name)
    _run_doctests(tests, module_name)


def _pycon_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, body)`` of every ```pycon fenced block of a Markdown page."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == "```pycon":
            start, body = i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            blocks.append((start, "\n".join(body) + "\n"))
        i += 1
    return blocks


def test_pycon_block_parser_finds_blocks():
    text = "x\n```pycon\n>>> 1 + 1\n2\n```\n```python\nignored\n```\n```pycon\n>>> 3\n3\n```\n"
    assert [b for _, b in _pycon_blocks(text)] == [">>> 1 + 1\n2\n", ">>> 3\n3\n"]


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md") if "```pycon" in p.read_text()))
def test_docs_page_snippets(page, monkeypatch, tmp_path):
    """The ```pycon snippets of a docs page run in order, sharing one namespace, and print what they show."""
    monkeypatch.setenv("SPHEREQUANT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    text = (DOCS / page).read_text()
    parser, globs, tests = doctest.DocTestParser(), {}, []
    for line, body in _pycon_blocks(text):
        test = parser.get_doctest(body, globs, f"{page}:{line}", str(DOCS / page), line)
        test.globs = globs  # DocTest copies its globals; the blocks of a page share one namespace
        tests.append(test)
    assert tests, f"{page} has no pycon blocks"
    _run_doctests(tests, page, shared=True)


# ----------------------------------------------------------------------------------------------------------
# (b) every public name is in the API reference
# ----------------------------------------------------------------------------------------------------------
def _public_modules_independent() -> list[str]:
    """Public modules found by walking the package folders on disk (independent of generate_api)."""
    found = []
    for pkg_name in PACKAGES:
        spec = importlib.util.find_spec(pkg_name)
        found.append(pkg_name)
        for folder in spec.submodule_search_locations:
            for path in Path(folder).iterdir():
                stem = path.stem if path.suffix == ".py" else path.name
                is_module = path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").exists())
                if is_module and not stem.startswith("_"):
                    found.append(f"{pkg_name}.{stem}")
    return sorted(set(found))


def _listed_names(page: str, module_name: str) -> set[str]:
    """Names a generated module page documents: its own names (a stub page in the toctree *and* a line in the
    list), re-exports and submodules."""
    in_toctree = set(re.findall(rf"^   \.\./names/{re.escape(module_name)}\.(\w+)$", page, flags=re.M))
    in_list = set(re.findall(rf"^\* :py:obj:`~{re.escape(module_name)}\.(\w+)`", page, flags=re.M))
    names = in_toctree & in_list
    names |= set(re.findall(r"^\* :py:obj:`[\w.]+\.(\w+) <[\w.]+>`", page, flags=re.M))
    names |= {m.rsplit(".", 1)[1] for m in re.findall(r"^\* :mod:`([\w.]+)`", page, flags=re.M)}
    return names


@pytest.fixture(scope="module")
def api_pages(tmp_path_factory):
    docs = tmp_path_factory.mktemp("docs")
    paths = generate_api.write_api_pages(docs)
    return {p.stem: p.read_text() for p in paths}


def test_api_reference_has_a_page_per_public_module(api_pages):
    expected = _public_modules_independent()
    missing = sorted(set(expected) - set(api_pages))
    assert not missing, f"public modules without an API page: {missing}"
    assert set(generate_api.public_modules()) == set(expected)


def test_api_reference_lists_every_public_name(api_pages):
    missing = []
    for module_name in _public_modules_independent():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue  # the page carries a note instead; test_module_doctests reports the import
        listed = _listed_names(api_pages[module_name], module_name)
        missing += [f"{module_name}.{n}" for n in getattr(module, "__all__", []) if n not in listed]
    assert not missing, f"{len(missing)} public names missing from the API pages: {missing}"


def test_api_page_parser_is_not_vacuous(api_pages):
    """The page parser is not vacuous: it finds known names on known pages."""
    assert {"Codebook", "fibonacci", "icosahedral"} <= _listed_names(
        api_pages["spherequant.codebook"], "spherequant.codebook"
    )
    assert {"codebook", "so3"} <= _listed_names(api_pages["spherequant"], "spherequant")
    assert "Codebook" not in _listed_names(api_pages["spherequant.so3"], "spherequant.so3")


def test_api_stub_pages_document_each_name(tmp_path):
    generate_api.write_api_pages(tmp_path)
    stub = (tmp_path / "api" / "generated" / "names" / "spherequant.codebook.Codebook.rst").read_text()
    assert ".. currentmodule:: spherequant.codebook" in stub and ".. autoclass:: Codebook" in stub
    stub = (tmp_path / "api" / "generated" / "names" / "spherequant.sphere.angle.rst").read_text()
    assert ".. autofunction:: angle" in stub


def test_api_page_of_a_package_links_reexports(tmp_path, monkeypatch):
    pkg = tmp_path / "sqdocs_fakepkg"
    pkg.mkdir()
    (pkg / "inner.py").write_text('__all__ = ["Thing"]\n\n\nclass Thing:\n    """A thing. More."""\n')
    (pkg / "__init__.py").write_text(
        "from . import inner\nfrom .inner import Thing\n\n"
        '__all__ = ["Thing", "inner", "CONSTANT"]\nCONSTANT = 3\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    page, stubs = generate_api._module_page("sqdocs_fakepkg")
    assert "* :py:obj:`sqdocs_fakepkg.Thing <sqdocs_fakepkg.inner.Thing>`" in page
    assert "* :mod:`sqdocs_fakepkg.inner`" in page
    assert (
        "../names/sqdocs_fakepkg.CONSTANT" in page
        and "autodata:: CONSTANT" in stubs["sqdocs_fakepkg.CONSTANT"]
    )
    assert _listed_names(page, "sqdocs_fakepkg") == {"Thing", "inner", "CONSTANT"}
    inner, stubs = generate_api._module_page("sqdocs_fakepkg.inner")
    assert (
        "* :py:obj:`~sqdocs_fakepkg.inner.Thing` -- A thing." in inner
        and "sqdocs_fakepkg.inner.Thing" in stubs
    )


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ("Angle of ``a . b``. More text.", "Angle of ``a . b``."),
        ("Norm ``|v|`` and |x|. Rest.", "Norm ``|v|`` and \\|x\\|."),
        ("Unbalanced ``x. y z", "Unbalanced x. y z"),
        ("Balanced ``x. y`` z. Rest.", "Balanced ``x. y`` z."),
        ("No period at all", "No period at all"),
        ("Checked by :meth:`validate` and :math:`x^2`. Rest.", "Checked by ``validate`` and :math:`x^2`."),
        ("See :func:`~spherequant.sphere.angle`.", "See ``spherequant.sphere.angle``."),
    ],
)
def test_api_summary_is_safe_rest(doc, expected):
    def f():
        pass

    f.__doc__ = doc
    assert generate_api.summary(f) == expected


def test_every_public_module_defines_all():
    lacking = []
    for module_name in _public_modules_independent():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if "__all__" not in vars(module):
            lacking.append(module_name)
    assert not lacking, f"public modules without an explicit __all__ (STYLE: one per module): {lacking}"


# ----------------------------------------------------------------------------------------------------------
# the generators of the Results and Theory pages
# ----------------------------------------------------------------------------------------------------------
def test_results_page_tables_come_from_the_json(tmp_path):
    res = tmp_path / "benchmarks" / "results"
    res.mkdir(parents=True)
    data = {
        "n": 7,
        "rows": [
            {"name": "a", "bits": 16, "mean_err": 0.123456789},
            {"name": "b|c", "bits": 24, "extra": 1e-7},
        ],
        "sweep": [
            {"family": "MDDQ", "bits": 9, "mean_err": 0.5, "mean_comm": 0.4},
            {"family": "MDDQ", "bits": 12, "mean_err": 0.2, "mean_comm": 0.1},
        ],
    }
    (res / "mddq.json").write_text(json.dumps(data))
    (res / "broken.json").write_text("{not json")
    out = generate_results.write_results(tmp_path, tmp_path / "docs" / "results.md")
    text = out.read_text()
    assert "| name | bits | mean_err | extra |" in text
    assert "| a | 16 | 0.1235 |  |" in text
    assert "| b\\|c | 24 |  | 1.000e-07 |" in text
    assert "**n**: 7" in text
    assert "could not be read" in text and "broken.json" in text
    assert (tmp_path / "docs" / "_generated" / "results" / "mddq.png").stat().st_size > 1000
    assert "![" in text and "_generated/results/mddq.png" in text
    assert "covering_radius.json" in text  # the missing known benchmark is named with its script


def test_results_page_closes_a_figure_that_fails_to_save(tmp_path, monkeypatch, capsys):
    """A plot that fails leaves no open figure (sphinx-gallery would save it with the first tutorial's) and
    the page says which plot is missing and why."""
    import matplotlib.pyplot as plt

    res = tmp_path / "benchmarks" / "results"
    res.mkdir(parents=True)
    sweep = [{"family": "MDDQ", "bits": 9, "mean_err": 0.5, "mean_comm": 0.4}]
    (res / "mddq.json").write_text(json.dumps({"sweep": sweep}))

    def failing_save(fig, path, **kwargs):
        raise ValueError("Axis limits cannot be NaN or Inf")

    monkeypatch.setattr(generate_results, "atomic_savefig", failing_save)
    plt.close("all")
    text = generate_results.write_results(tmp_path, tmp_path / "results.md").read_text()
    assert plt.get_fignums() == []
    assert "(No plot: ValueError: Axis limits cannot be NaN or Inf.)" in text
    assert "no plot mddq.png of mddq.json" in capsys.readouterr().err
    assert "| MDDQ | 9 |" in text  # the table is still there


def test_results_page_closes_a_figure_of_a_plot_that_fails_before_saving(tmp_path, monkeypatch):
    """A plot function that raises after opening its figure (before saving) leaves no figure open either;
    figures opened before the page was generated stay open."""
    import matplotlib.pyplot as plt

    def failing_plot(data, out):
        plt.figure()
        raise KeyError("drift_mean")

    res = tmp_path / "benchmarks" / "results"
    res.mkdir(parents=True)
    (res / "mddq.json").write_text(json.dumps({"sweep": []}))
    monkeypatch.setitem(generate_results._PLOTS, "mddq", [("mddq", failing_plot)])
    plt.close("all")
    mine = plt.figure().number
    text = generate_results.write_results(tmp_path, tmp_path / "results.md").read_text()
    assert plt.get_fignums() == [mine]
    assert "(No plot: KeyError: 'drift_mean'.)" in text
    plt.close("all")


def _anchor_record(parent_forces_at_end):
    """A small results file in the anchor scripts' layout (two epochs; the parent's blocks)."""
    history = [
        {"epoch": 1, "val_forces_mae": 90.0, "cpu_s_total": 3600.0},
        {"epoch": 2, "val_forces_mae": 40.0, "cpu_s_total": 7200.0},
    ]
    best = None if parent_forces_at_end is None else {"epoch": 30, "val_forces_mae": parent_forces_at_end}
    return {
        "model": {"parameters": 1234},
        "training": {
            "epochs": 2,
            "cpu_s": 7200.0,
            "stop_reason": "cpu-hours",
            "best": {"epoch": 2, "val_forces_mae": 40.0},
        },
        "history": history,
        "validation": {"energy_mae": 5.5, "forces_mae": 40.0, "n_frames": 50},
        "test": {"energy_mae": 6.5, "forces_mae": 41.5, "n_frames": 4000},
        "parent": {
            "run_dir": "azobenzene_fp32_parent",
            "epochs_written": 900,
            "best_epoch": 880,
            "val_energy_mae": 3.2,
            "val_forces_mae": 10.5,
            "train_wall_s": 18000.0,
            "test": {"energy_mae": 3.3, "forces_mae": 10.0, "n_frames": 4000},
        },
        "parent_at_equal_time": {
            "clock": "cpu",
            "at_end": {"time_s": 7200.0, "epochs_done": 31 if best else 0, "best": best},
            "per_epoch": [
                {"time_s": r["cpu_s_total"], "parent_val_forces_mae_last": 20.0 if best else None}
                for r in history
            ],
        },
    }


def test_results_page_anchor_section(tmp_path):
    """The anchors' validation and test rows beside the parent's (parameters from parents.json), the
    equal-time comparison and the plot; the anchor files get no generic section; a missing one is named
    with its command."""
    res = tmp_path / "benchmarks" / "results"
    res.mkdir(parents=True)
    (res / "anchor_mace.json").write_text(json.dumps(_anchor_record(12.25)))
    parents = [{"name": "p", "config": "models/configs/azobenzene_fp32_parent.yaml", "parameters": 4321}]
    (res / "parents.json").write_text(json.dumps({"parents": parents}))
    text = generate_results.write_results(tmp_path, tmp_path / "docs" / "results.md").read_text()
    section = text.split("## Anchors")[1].split("\n## ")[0]
    assert "| MACE (mace-torch) | 1234 | 2 | 2 | cpu-hours | 2 | 5.5 | 40 | 6.5 | 41.5 | 4000 |" in section
    assert "| ours (FP32 parent) | 4321 | 900 | 5 |  | 880 | 3.2 | 10.5 | 3.3 | 10 | 4000 |" in section
    assert "| MACE (mace-torch) | 2 | 40 | 12.25 | 31 |" in section
    assert "no `anchor_peer.json` yet" in section and "benchmarks/anchor_peer.py" in section
    assert "_generated/results/anchors.png" in section
    assert (tmp_path / "docs" / "_generated" / "results" / "anchors.png").stat().st_size > 1000
    assert "## anchor mace" not in text.lower()  # no generic section of the same file

    (res / "anchor_peer.json").write_text(json.dumps(_anchor_record(None)))  # the parent had no epoch yet
    (res / "anchor_mace.json").write_text(json.dumps({"history": []}))
    text = generate_results.write_results(tmp_path, tmp_path / "docs" / "results.md").read_text()
    assert "`anchor_mace.json` could not be read (ValueError: no training, validation, test)" in text
    assert "| so3krates-torch (peer port) | 2 | 40 | no epoch yet | 0 |" in text


def test_results_page_without_results(tmp_path):
    out = generate_results.write_results(tmp_path, tmp_path / "results.md")
    assert "No benchmark results were found" in out.read_text()


@pytest.mark.parametrize(
    ("value", "text"), [(0.5, "0.5"), (123456.0, "1.235e+05"), (2e-5, "2.000e-05"), (3, "3"), (True, "True")]
)
def test_format_value(value, text):
    assert generate_results.format_value(value) == text


def test_theory_pages_link_proofs_checks_and_tests(tmp_path):
    proofs = tmp_path / "proofs"
    proofs.mkdir()
    (proofs / "README.md").write_text("# Proofs\n\n| [A](prop_a.md) | [check](check_a.py) |\n")
    (proofs / "prop_a.md").write_text(
        "# Prop A\n\nSee [B](prop_b.md), [the index](README.md), [code](../spherequant/x.py) and "
        "<https://example.org>.\nEnforced by `tests/test_x.py::test_a`.\n```\n[not](a link.md)\n```\n"
    )
    (proofs / "prop_b.md").write_text("No title here; checked by check_b.py.\n")
    (proofs / "check_b.py").write_text('"""Checks prop_b.md."""\n')
    (proofs / "check_a.py").write_text('"""Sympy check of proofs/prop_a.md."""\n')
    docs = tmp_path / "docs"
    names = generate_theory.write_theory_pages(tmp_path, docs)
    assert names == ["theory/prop_a", "theory/prop_b"]
    a = (docs / "theory" / "prop_a.md").read_text()
    b = (docs / "theory" / "prop_b.md").read_text()
    assert "[B](prop_b.md)" in a and "[the index](../theory.md)" in a
    assert "code (`spherequant/x.py`)" in a and "[not](a link.md)" in a
    assert "- `tests/test_x.py::test_a`" in a
    assert "{literalinclude} ../../proofs/check_a.py" in a and "check_b.py" not in a
    assert b.startswith("# prop b") and "{literalinclude} ../../proofs/check_b.py" in b
    assert "This proof names no test." in b
    block = generate_theory.toctree_block(names)
    assert "theory/prop_a\ntheory/prop_b\n" in block
    assert "No proofs were found" in generate_theory.toctree_block([])
    index = generate_theory.readme_block(tmp_path)
    assert "# Proofs" not in index and "| [A](theory/prop_a.md) | check (`proofs/check_a.py`) |" in index


# ----------------------------------------------------------------------------------------------------------
# (c) the full build
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sphinx_build_has_no_warnings(tmp_path):
    """``sphinx -W`` into a temporary folder (tutorials at small sizes); every public name gets a page."""
    pytest.importorskip("sphinx")
    pytest.importorskip("sphinx_gallery")
    env = {**os.environ, "SPHEREQUANT_DOCS_QUICK": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "html"
    cmd = [
        sys.executable,
        "-m",
        "sphinx",
        "-b",
        "html",
        "-W",
        "-n",
        "--keep-going",
        "-q",
        "-d",
        str(tmp_path / "dt"),
    ]
    proc = subprocess.run([*cmd, str(DOCS), str(out)], env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"sphinx failed:\n{proc.stderr[-6000:]}"
    html = "".join(p.read_text(errors="replace") for p in (out / "api" / "generated").rglob("*.html"))
    missing = []
    for module_name in _public_modules_independent():
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            target = f"{getattr(obj, '__module__', module_name)}.{name}"
            if isinstance(obj, types.ModuleType):
                target = obj.__name__
            if f'id="{target}"' not in html and f'id="module-{target}"' not in html and target not in html:
                missing.append(f"{module_name}.{name}")
    assert not missing, f"names without an entry in the built API pages: {missing}"
    assert (out / "auto_examples" / "plot_codebooks.html").exists()
    assert (out / "auto_examples" / "plot_mddq.html").exists()
