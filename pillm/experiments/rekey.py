"""Record the present run keys and compute version in stored results whose computation did not change.

    python -m pillm.experiments.rekey [RESULTS_ROOT]      (default: <repo>/results)

For every finished run under ``<root>/<profile>/<experiment>/runs/``: its key (from the spec stored in its
``result.json``) and ``compute_version`` go into ``run.json``, and ``compute_version`` into ``result.json``;
every complete experiment's ``.complete`` and ``provenance.json`` get its present staleness hash. This
declares the stored numbers current under :data:`pillm.version.COMPUTE_VERSION`: run it after a change
that moved no numbers (a refactor, a new option whose default keeps the old computation), never after one
that did (bump the version instead and recompute).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..run import write_json_atomic
from ..version import COMPUTE_VERSION
from .files import read_json, root_dir, write_text_atomic
from .grid import run_key, run_spec
from .registry import load_registry, staleness_hash

#: ``result.json``'s ``kind`` → the run-dict key of its spec (plain runs have no kind).
_KINDS = {"adaptation": "adapt", "first_layer": "first_layer", "lambda_path": "lambda_path",
          "fixed_attention": "fixed_attention"}


def _local(path: str | None, profile_dir: Path) -> str | None:
    """A checkpoint path recorded where the run was computed, moved under ``profile_dir`` (this clone)."""
    if path is None:
        return None
    marker = f"/{profile_dir.name}/"
    return str(profile_dir / path.split(marker, 1)[1]) if marker in path else path


def stored_spec(result: dict, profile_dir: Path):
    """The spec of a stored run, rebuilt from its ``result.json``."""
    fields = dict(result["spec"])
    for name in ("checkpoint", "teacher"):
        if name in fields:
            fields[name] = _local(fields[name], profile_dir)
    kind = _KINDS.get(result.get("kind"))
    return run_spec({kind: fields} if kind else fields)


def _with_version(result: dict) -> dict:
    out = {k: v for k, v in result.items() if k not in ("compute_version", "complete")}
    out["compute_version"] = COMPUTE_VERSION
    return out | ({"complete": result["complete"]} if "complete" in result else {})


def rekey(root=None) -> int:
    """Rewrite the keys and versions under ``root``; returns the number of runs re-keyed."""
    root = root_dir(root)
    runs = [p.parent for p in sorted(root.glob("*/*/runs/*/run.json")) if (p.parent / "result.json").exists()]
    # Runs that read a checkpoint key it by the key of the run that wrote it: those go second.
    stored = {d: read_json(d / "result.json") for d in runs}
    reads = lambda d: any(stored[d]["spec"].get(k) for k in ("checkpoint", "teacher"))  # noqa: E731
    done = 0
    for d in sorted(runs, key=reads):
        meta, result = read_json(d / "run.json"), stored[d]
        key = run_key(stored_spec(result, d.parents[2]))
        write_json_atomic(d / "result.json", _with_version(result))
        rest = {k: v for k, v in meta.items() if k not in ("key", "compute_version")}
        write_json_atomic(d / "run.json", {"name": meta["name"], "vary": meta.get("vary", {}), "key": key,
                                           "compute_version": COMPUTE_VERSION} | rest)
        done += 1
    registry = load_registry()
    for mark in sorted(root.glob("*/*/.complete")):
        exp_dir, profile = mark.parent, mark.parent.parent.name
        entry = registry.get(exp_dir.name)
        if entry is None or profile not in entry["parameters"]:
            continue
        digest = staleness_hash(entry["notebook"], dict(entry["parameters"][profile] or {}), profile)
        prov = read_json(exp_dir / "provenance.json")
        if prov is not None:
            write_json_atomic(exp_dir / "provenance.json", prov | {"hash": digest})
        write_text_atomic(mark, digest + "\n")
    return done


if __name__ == "__main__":
    n = rekey(sys.argv[1] if len(sys.argv) > 1 else None)
    print(f"re-keyed {n} runs at compute version {COMPUTE_VERSION}")
