"""The proofs index: every sympy check script passes, and proofs/README.md matches the files and the tests.

The scripts in ``proofs/`` are standalone (``proofs`` is not a package), so they are loaded by path, with the
folder on ``sys.path`` for their shared ``_check_helpers``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
PROOFS = ROOT / "proofs"
README = PROOFS / "README.md"
CHECKS = sorted(PROOFS.glob("check_*.py"))
PROOF_FILES = sorted(p for p in PROOFS.glob("*.md") if p.name != "README.md")
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _load(path: Path):
    return load_script(f"proofs/{path.name}", name=f"_proof_check_{path.stem}", on_path=True)


def test_there_are_proofs_and_checks():
    assert len(CHECKS) >= 8, f"expected >= 8 check scripts in {PROOFS}, found {[p.name for p in CHECKS]}"
    names = [p.name for p in PROOF_FILES]
    assert len(PROOF_FILES) >= 8, f"expected >= 8 proof files in {PROOFS}, found {names}"
    assert not (PROOFS / "__init__.py").exists(), "proofs/ must not be a package"


@pytest.mark.parametrize("script", CHECKS, ids=[p.stem for p in CHECKS])
def test_check_script_passes(script, capsys):
    module = _load(script)
    assert callable(getattr(module, "main", None)), f"{script.name} must define main()"
    module.main()  # raises AssertionError on a failed check
    out = capsys.readouterr().out
    n_ok = out.count("  ok  ")
    assert n_ok >= 5, f"{script.name} printed only {n_ok} passed checks:\n{out}"
    assert "negative control" in out or "wrong variant" in out, f"{script.name} has no negative control"
    assert "__main__" in script.read_text(), f"{script.name} is not runnable as a script"


def test_readme_lists_every_proof_and_check():
    text = README.read_text()
    missing = [p.name for p in PROOF_FILES + CHECKS if f"({p.name})" not in text]
    assert not missing, f"proofs/README.md does not link: {missing}"
    linked = set(re.findall(r"\]\(([\w.]+\.(?:md|py))\)", text))
    dangling = sorted(name for name in linked if not (PROOFS / name).exists())
    assert not dangling, f"proofs/README.md links to missing files: {dangling}"


@pytest.mark.parametrize("proof", PROOF_FILES, ids=[p.stem for p in PROOF_FILES])
def test_proof_file_footer(proof):
    """Each proof ends with 'Checked by: <existing script>; enforced by: <tests listed in the README>'."""
    text = proof.read_text()
    tail = text[text.rfind("Checked by:") :]
    assert "Checked by:" in text and "enforced by:" in tail, f"{proof.name} lacks the 'Checked by' footer"
    scripts = re.findall(r"`proofs/(check_\w+\.py)`", tail)
    assert scripts, f"{proof.name}: the footer names no check script"
    assert all((PROOFS / s).exists() for s in scripts), f"{proof.name}: missing check script in {scripts}"
    refs = TEST_REF.findall(tail)
    assert refs, f"{proof.name}: no enforcing test named in the footer"
    readme = README.read_text()
    for path, name in refs:
        assert f"`{path}::{name}`" in readme, f"{proof.name} names {path}::{name}, absent from the README"
    has_proof = "## Proof" in text or "## Checks" in text
    assert "$" in text and has_proof, f"{proof.name} has no math or no proof section"


def _readme_test_refs():
    return sorted(set(TEST_REF.findall(README.read_text())))


@pytest.mark.parametrize("path,name", _readme_test_refs(), ids=lambda x: str(x))
def test_enforcing_test_exists(path, name):
    """Every enforcing test named in proofs/README.md exists (written by the module owners)."""
    test_file = ROOT / path
    assert test_file.exists(), f"{path} (named in proofs/README.md) does not exist yet"
    pattern = re.compile(rf"^\s*(?:async\s+)?def\s+{name}\s*\(", re.MULTILINE)
    assert pattern.search(test_file.read_text()), f"{path} has no 'def {name}(' (named in proofs/README.md)"
