"""Atomic file writes: a reader sees the old file or the new one, never half of one.

A leaf module (no torch, nothing from :mod:`pillm`), so that every layer, the report included, writes
through the same code.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def umask() -> int:
    """The process's umask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain ``open`` would give a new file: 0o666 less the umask (mkstemp gives 0o600)."""
    return 0o666 & ~umask()


def write_atomic(path, content) -> None:
    """Write ``content`` (``str``, ``bytes``, or a callable given a text file) to ``path`` atomically.

    The content goes into a temporary sibling that is renamed into place: readers see the old file or
    the new one, never half of it; on error the temporary is removed. The file gets the user's umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        binary = isinstance(content, (bytes, bytearray))
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", newline="", encoding="utf-8")) as f:
            content(f) if callable(content) else f.write(content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")
