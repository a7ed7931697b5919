"""Files: content hashes, paths as the paper shows them, writes that skip unchanged files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .config import REPO


def write_if_changed(path: Path, data: bytes | str) -> None:
    data = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_bytes() == data:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def sha256_short(path: Path, n: int = 8) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:n]


def rel(path: Path) -> str:
    """A path relative to the repository when inside it (stable across machines)."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
