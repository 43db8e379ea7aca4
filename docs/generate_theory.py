"""Render the written proofs (``proofs/*.md``) as pages of the Theory section.

For every ``proofs/<name>.md`` (except ``README.md``) this writes ``docs/theory/<name>.md``: the proof's text
with its relative links rewritten for the site (links to other proofs become page links; links to source
files become literal paths, since the site does not host the repository), followed by a "How it is checked"
section listing the sympy check scripts (``proofs/check_*.py``; each rendered in full) and the tests that
the proof names. A check script belongs to a proof when either file names the other.

:func:`toctree_block` returns the MyST toctree that ``docs/conf.py`` splices into ``theory.md`` at the
marker line ``<!-- proofs-toctree -->``, after the body of ``proofs/README.md`` (:func:`readme_block`).
With no proofs present the block is a short note instead, so the
build never fails for want of proofs.

Run by ``docs/conf.py`` at build time, or by hand: ``python docs/generate_theory.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

from spherequant._report import atomic_write_text

__all__ = ["MARKER", "proof_files", "readme_block", "toctree_block", "write_theory_pages"]

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
#: Line of ``theory.md`` replaced by the generated toctree.
MARKER = "<!-- proofs-toctree -->"
_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")
_CHECK = re.compile(r"check_[A-Za-z0-9_]+\.py")
_TEST = re.compile(
    r"tests/test_[A-Za-z0-9_]+\.py(?:::[A-Za-z0-9_\[\].-]+)*|\btest_[a-z0-9_]+\.py(?:::[\w.-]+)*"
)


def proof_files(root: Path | str = ROOT) -> list[Path]:
    """The proof files ``proofs/*.md`` in sorted order (``README.md`` excluded)."""
    proofs = Path(root) / "proofs"
    if not proofs.is_dir():
        return []
    return sorted(p for p in proofs.glob("*.md") if p.name.lower() != "readme.md")


def _rewrite_links(
    text: str, stems: set[str], root: Path, prefix: str = "", index: str = "../theory.md"
) -> str:
    def repl(m: re.Match) -> str:
        label, target = m.group(1), m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            return m.group(0)  # absolute URL or in-page anchor
        path, _, anchor = target.partition("#")
        name = Path(path).name
        if name.endswith(".md") and Path(name).stem in stems:
            return f"[{label}]({prefix}{Path(name).stem}.md{'#' + anchor if anchor else ''})"
        if name.lower() == "readme.md":
            return f"[{label}]({index})"
        rel = path
        while rel.startswith("../") or rel.startswith("./"):
            rel = rel[3:] if rel.startswith("../") else rel[2:]
        if not (root / rel).exists() and (root / "proofs" / rel).exists():
            rel = f"proofs/{rel}"
        shown = f"`{rel}`"
        return shown if label.strip("`") == rel or label.strip("`") == path else f"{label} ({shown})"

    out, fenced = [], False
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        out.append(line if fenced else _LINK.sub(repl, line))
    return "".join(out)


def _checks_for(proof: Path, text: str) -> list[Path]:
    found = {proof.parent / name for name in _CHECK.findall(text)}
    for script in proof.parent.glob("check_*.py"):
        if proof.name in script.read_text(errors="replace"):
            found.add(script)
    return sorted(p for p in found if p.exists())


def _page(proof: Path, stems: set[str], root: Path) -> str:
    text = proof.read_text()
    body = _rewrite_links(text, stems, root)
    if not re.search(r"^# ", body, flags=re.M):
        body = f"# {proof.stem.replace('_', ' ')}\n\n{body}"
    checks = _checks_for(proof, text)
    tests = sorted(set(_TEST.findall(text)))
    out = [body.rstrip(), "\n\n## How it is checked\n\n", f"Source: `proofs/{proof.name}`.\n\n"]
    if tests:
        out.append("Tests enforcing this result (run with `python -m pytest <id>`):\n\n")
        out.extend(f"- `{t}`\n" for t in tests)
        out.append("\n")
    else:
        out.append("This proof names no test.\n\n")
    if not checks:
        out.append("No sympy check script names this proof.\n")
    for script in checks:
        rel = script.relative_to(root).as_posix()
        out.append(f"### Sympy check `{rel}`\n\nRun `python {rel}` (exits non-zero on failure).\n\n")
        out.append(f"```{{literalinclude}} ../../{rel}\n:language: python\n```\n\n")
    return "".join(out)


def write_theory_pages(root: Path | str = ROOT, docs_dir: Path | str = DOCS) -> list[str]:
    """Write ``<docs_dir>/theory/<name>.md`` for every proof; return the document names (``theory/<name>``).

    Pages of proofs that no longer exist are removed; unchanged pages are not rewritten.
    """
    proofs = proof_files(root)
    out_dir = Path(docs_dir) / "theory"
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = {p.stem for p in proofs}
    names = []
    for proof in proofs:
        path = out_dir / f"{proof.stem}.md"
        text = _page(proof, stems, Path(root))
        if not path.exists() or path.read_text() != text:
            atomic_write_text(path, text)
        names.append(f"theory/{proof.stem}")
    for stale in out_dir.glob("*.md"):
        if stale.stem not in stems:
            stale.unlink()
    return names


def readme_block(root: Path | str = ROOT) -> str:
    """The body of ``proofs/README.md`` without its title, links fixed for ``theory.md``; "" if absent."""
    root = Path(root)
    readme = root / "proofs" / "README.md"
    if not readme.exists():
        return ""
    text = re.sub(r"\A\s*# [^\n]*\n", "", readme.read_text(), count=1)
    stems = {p.stem for p in proof_files(root)}
    return _rewrite_links(text, stems, root, prefix="theory/", index="#") + "\n"


def toctree_block(docnames: list[str]) -> str:
    """The MyST toctree listing ``docnames``, or a note when there are none."""
    if not docnames:
        return "```{note}\nNo proofs were found in `proofs/` when this site was built.\n```\n"
    return "```{toctree}\n:maxdepth: 1\n\n" + "".join(f"{d}\n" for d in docnames) + "```\n"


if __name__ == "__main__":
    for name in write_theory_pages():
        print(name)
