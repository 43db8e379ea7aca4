"""Tests of spherequant._report: atomic writes leave no temporary files behind and survive interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from spherequant import _report


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_write_writes_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "out.json"
    _report.write_json(target, {"a": [1, 2.5]})
    assert json.loads(target.read_text()) == {"a": [1, 2.5]}
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_error_in_writer_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "out.bin"
    _report.atomic_write_bytes(target, b"old")

    def boom(fh):
        fh.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        _report.atomic_write(target, boom)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_temp_name_carries_the_pid(tmp_path):
    seen = []

    def spy(fh):
        seen.extend(p.name for p in tmp_path.iterdir())
        fh.write(b"x")

    _report.atomic_write(tmp_path / "f.txt", spy)
    assert seen[0].startswith(f".f.txt.{os.getpid()}.") and seen[0].endswith(".tmp")


def test_stale_temp_files_rule(tmp_path):
    """Exactly the stale temporary files of the same target are removed, nothing else."""
    dead, live = _dead_pid(), os.getpid()
    target = tmp_path / "model.pt"
    files = {
        "dead_old": (f".model.pt.{dead}.abcd1234.tmp", 120, True),
        "dead_fresh": (f".model.pt.{dead}.abcd1235.tmp", 5, False),  # may still be written
        "live_old": (f".model.pt.{live}.abcd1236.tmp", 120, False),  # a live writer's file
        "live_abandoned": (f".model.pt.{live}.abcd1237.tmp", 2 * 86400, True),
        "legacy_old": (".model.pt.abcd1238.tmp", 2 * 86400, True),
        "legacy_recent": (".model.pt.abcd1239.tmp", 3600, False),
        "other_target": (f".model.pt2.{dead}.abcd1240.tmp", 120, False),
        "other_target_prefix": (f".model.{dead}.abcd1241.tmp", 120, False),
        "not_ours": (f"model.pt.{dead}.abcd1242.tmp", 120, False),
        "wrong_suffix": (f".model.pt.{dead}.abcd1243.tmpx", 120, False),
        "user_file": ("notes.txt", 2 * 86400, False),
    }
    for name, age, _ in files.values():
        (tmp_path / name).write_bytes(b"x")
        _age(tmp_path / name, age)
    (tmp_path / f".model.pt.{dead}.dir12345.tmp").mkdir()  # a folder with our pattern: not a file
    _age(tmp_path / f".model.pt.{dead}.dir12345.tmp", 120)
    removed = {p.name for p in _report.remove_stale_temp_files(target)}
    expected = {name for name, _, gone in files.values() if gone}
    assert removed == expected
    for key, (name, _, gone) in files.items():
        assert (tmp_path / name).exists() != gone, key
    assert (tmp_path / f".model.pt.{dead}.dir12345.tmp").is_dir()


def test_killed_writer_leftover_is_removed_by_next_write(tmp_path):
    """kill -9 during a write leaves the temporary file; the next write of the target removes it."""
    target = tmp_path / "result.json"
    script = textwrap.dedent(
        f"""
        import sys, time
        from spherequant import _report
        def slow(fh):
            fh.write(b"partial")
            fh.flush()
            print("writing", flush=True)
            time.sleep(60)
        _report.atomic_write({str(target)!r}, slow)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".result.json.")]
        assert len(leftovers) == 1 and f".{proc.pid}." in leftovers[0].name
        # While the writer lives, a concurrent write leaves its temporary file alone (even when old).
        _age(leftovers[0], 3600)
        _report.write_json(target, {"ok": 1})
        assert leftovers[0].exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert leftovers[0].exists()
    _age(leftovers[0], 3600)
    _report.write_json(target, {"ok": 2})
    assert json.loads(target.read_text()) == {"ok": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_directory_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(a, b):
        events.append(("replace", Path(b).name))
        return real_replace(a, b)

    def fsync(fd):
        import stat

        events.append(("fsync", "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    _report.atomic_write_bytes(tmp_path / "a.bin", b"data")
    assert events == [("fsync", "file"), ("replace", "a.bin"), ("fsync", "dir")]


@pytest.mark.parametrize("suffix", ["png", "pdf", "svg"])
def test_atomic_savefig(tmp_path, suffix):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    out = _report.atomic_savefig(fig, tmp_path / f"fig.{suffix}", dpi=50)
    plt.close(fig)
    magic = {"png": b"\x89PNG", "pdf": b"%PDF", "svg": b"<?xml"}[suffix]
    assert out.read_bytes().startswith(magic)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"fig.{suffix}"]
    with pytest.raises(ValueError, match="path needs a file suffix"):
        _report.atomic_savefig(fig, tmp_path / "nosuffix")


def test_atomic_write_text_is_utf8(tmp_path):
    _report.atomic_write_text(tmp_path / "t.md", "Fejes Tóth ≤ δ\n")
    assert (tmp_path / "t.md").read_bytes() == "Fejes Tóth ≤ δ\n".encode()


def test_write_json_is_strict_json(tmp_path):
    """NaN / inf become null and numpy values plain numbers: the file parses with a strict parser."""
    import json

    import numpy as np

    from spherequant._report import write_json

    obj = {"a": float("nan"), "b": [1.0, float("inf"), np.float32(-np.inf)], "c": np.arange(3)}
    obj["d"] = (np.int64(4),)
    write_json(tmp_path / "x.json", obj)

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    back = json.loads((tmp_path / "x.json").read_text(), parse_constant=refuse)
    assert back == {"a": None, "b": [1.0, None, None], "c": [0, 1, 2], "d": [4]}, back
