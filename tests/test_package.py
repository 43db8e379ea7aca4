"""Packaging laws: the core never imports the models layer, and no bare top-level ``models`` is installed."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/")


def test_core_never_imports_models():
    code = (
        "import sys, spherequant as sq\n"
        "for name in sq.__all__: getattr(sq, name)\n"
        "bad = sorted(m for m in sys.modules if m.startswith('spherequant.models'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    res = _run(code)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_models_installed_only_under_spherequant():
    res = _run("import models")
    assert res.returncode != 0 and "No module named 'models'" in res.stderr, (res.stdout, res.stderr)
    res = _run("import spherequant.models as m; print(m.__name__)")
    assert res.returncode == 0 and "spherequant.models" in res.stdout, res.stderr


def test_models_under_a_second_name_is_refused():
    """With the repository root on sys.path, ``import models.gaq`` would load a second copy of the layer."""
    root = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    prefix = f"import sys; sys.path.insert(0, {root!r}); "
    res = _run(prefix + "import models.gaq")
    assert res.returncode != 0 and "import it as 'spherequant.models'" in res.stderr, res.stderr
    res = _run(prefix + "import spherequant.models.gaq as g; print(g.__name__)")
    assert res.returncode == 0 and "spherequant.models.gaq" in res.stdout, res.stderr


def test_command_line_help():
    res = subprocess.run(
        [sys.executable, "-m", "spherequant.models.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    for command in ("demo", "data", "train", "evaluate", "md"):
        assert command in res.stdout, f"{command!r} missing from --help:\n{res.stdout}"
