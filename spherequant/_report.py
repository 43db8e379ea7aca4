"""Small helpers shared by the demo and the benchmark scripts: plain-text tables and atomic writes.

Atomic writes and their temporary files
---------------------------------------
:func:`atomic_write` writes ``DIR/NAME`` through a temporary file ``DIR/.NAME.<pid>.<random>.tmp`` (``pid``:
the writer's process id) and renames it into place. A writer killed before the rename (``kill -9``, power
loss) leaves that file behind; every later :func:`atomic_write` of the same target removes such leftovers
(:func:`remove_stale_temp_files`). A temporary file counts as stale, and is removed, only when it matches
this pattern for the same target exactly and has not been modified for :data:`STALE_AFTER_S` seconds, and
either its writer process no longer exists on this machine or it is older than :data:`ABANDONED_AFTER_S`
(a writer on another machine sharing the folder, or a recycled pid). A live writer keeps its file's
modification time fresh while it writes, so its file is never taken. Temporary files of the earlier
pattern without a pid (``.NAME.<random>.tmp``) are removed after :data:`ABANDONED_AFTER_S` seconds
without modification (that name cannot tell a target ``NAME`` from a target ``NAME.<digits>``).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "atomic_savefig",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "format_table",
    "json_safe",
    "pid_alive",
    "remove_stale_temp_files",
    "write_json",
]

#: A leftover temporary file must be this many seconds without modification before it may be removed.
STALE_AFTER_S = 60.0
#: After this many seconds without modification it is removed even if a process with its pid exists.
ABANDONED_AFTER_S = 24 * 3600.0
_RANDOM = r"[a-z0-9_]{8}"  # tempfile.mkstemp's random part


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str], *, floatfmt: str = ".4g") -> str:
    """Render rows as a GitHub-flavoured Markdown table (numbers formatted with ``floatfmt``)."""

    def fmt(v):
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join([line, sep, *body])


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (a permission error means it does)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temp_files(path: str | os.PathLike, *, now: float | None = None) -> list[Path]:
    """Remove the leftover temporary files of interrupted :func:`atomic_write` calls for ``path``.

    Only files named exactly like this module's temporary files *for this target* are considered
    (``.NAME.<pid>.<random>.tmp`` and the older ``.NAME.<random>.tmp``), and only stale ones are removed; see
    the module docstring for the rule. Other files, and the temporary files of other targets, are never
    touched. Errors (a file removed concurrently, a read-only folder) are ignored.

    Parameters
    ----------
    path : str or os.PathLike
        The target file (need not exist).
    now : float, optional
        Current time (seconds since the epoch); default ``time.time()``.

    Returns
    -------
    list of pathlib.Path
        The files removed.
    """
    path = Path(path)
    now = time.time() if now is None else float(now)
    name = re.escape(path.name)
    with_pid = re.compile(rf"\.{name}\.(\d+)\.{_RANDOM}\.tmp")
    legacy = re.compile(rf"\.{name}\.{_RANDOM}\.tmp")
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        m = with_pid.fullmatch(entry.name)
        if m is None and legacy.fullmatch(entry.name) is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if age < STALE_AFTER_S:
            continue  # possibly a live writer
        if age < ABANDONED_AFTER_S and (m is None or pid_alive(int(m.group(1)))):
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


def _fsync_dir(directory: Path) -> None:
    """fsync a directory so that a rename in it survives a crash (a no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # e.g. Windows: directories cannot be opened
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not support fsync on directories
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then move it into place atomically.

    A reader never sees a torn file: the data are flushed and fsync'ed before :func:`os.replace`, and the
    folder is fsync'ed after it (so the rename itself survives a crash); on any error the temporary file is
    removed and ``path`` is left as it was. The file gets the permissions a plain ``open()`` would give
    (``mkstemp`` alone would make it private). Leftover temporary files of earlier interrupted writes of the
    same target are removed first (:func:`remove_stale_temp_files`).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_savefig(fig: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    """``fig.savefig(path, **kwargs)`` through :func:`atomic_write` (format from the file suffix).

    A matplotlib figure written directly is torn if the process dies mid-write; this writes it to a
    temporary file and renames it into place.
    """
    path = Path(path)
    if "format" not in kwargs:
        if not path.suffix:
            raise ValueError(f"path needs a file suffix (e.g. .png) to choose the figure format, got {path}")
        kwargs["format"] = path.suffix[1:].lower()
    return atomic_write(path, lambda fh: fig.savefig(fh, **kwargs))


def json_safe(obj: Any) -> Any:
    """``obj`` as strict-JSON-ready data: non-finite floats (NaN, inf) become ``None``, numpy scalars and
    arrays become Python numbers and lists, tuples become lists (strict JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist") and type(obj).__module__ == "numpy":
        return json_safe(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented strict JSON (see :func:`json_safe`: NaN and inf become null), atomically."""
    text = json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())
