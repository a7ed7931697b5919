"""Where results live, atomic writes, paths shown relative to the repository, and hashes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd

from ..run import REPO, write_atomic

REGISTRY = Path(__file__).resolve().parents[1] / "experiments.yaml"


def read_json(path: Path):
    """The parsed JSON file, or None when it is missing or unreadable (an interrupted write)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def rel(path) -> str:
    """A path relative to the repository when inside it (stable across machines)."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def root_dir(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$PILLM_RESULTS_DIR``, else ``<repo>/results``."""
    return Path(root or os.environ.get("PILLM_RESULTS_DIR") or REPO / "results").expanduser().resolve()


def experiment_dir(experiment: str, profile: str, root=None) -> Path:
    return root_dir(root) / profile / experiment


def write_text_atomic(path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text))


def write_csv_atomic(df: pd.DataFrame, path) -> None:
    write_atomic(path, lambda f: df.to_csv(f, index=False))


def sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


#: Environment for executing the committed notebooks' smoke outputs (notebooks/_build.py) and for checking
#: them (tests/test_notebooks.py): MKL's COMPATIBLE reproducibility branch and ATen's and oneDNN's AVX2 kernels,
#: so that the float results do not depend on which x86 CPU computes them (MKL picks other code paths on other
#: processors). Set before the kernel starts: each library reads it once.
REPRODUCIBLE_CPU_ENV = {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
