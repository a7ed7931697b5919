"""The registry (experiments.yaml): staleness, notebooks executed with provenance, ``pillm experiments``."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..run import REPO, environment, utc_now, write_json_atomic
from ..version import COMPUTE_VERSION
from .files import experiment_dir, read_json, REGISTRY, rel, root_dir, sha, write_text_atomic
from .grid import compile_match, FINISHED_ONLY, MATCH, PARTIAL


KERNEL = "pillm"

#: What every notebook's ``parameters`` cell declares, and all that papermill injects: the settings
#: themselves come from the registry (:func:`experiment_settings`).
NOTEBOOK_PARAMETERS = ("profile", "results_root", "progress", "registry")


def load_registry(path=None) -> dict:
    """``{name: {"notebook": Path, "parameters": {profile: dict}, ...}}`` from ``experiments.yaml``."""
    import yaml

    exps = yaml.safe_load(Path(path or REGISTRY).read_text()).get("experiments") or {}
    for entry in exps.values():
        entry["notebook"] = REPO / entry["notebook"]  # an absolute path stays as it is
        entry.setdefault("parameters", {})
    return exps


def experiment_settings(name: str, profile: str, registry=None) -> dict:
    """The settings of experiment ``name`` under ``profile``, from ``registry`` (default
    pillm/experiments.yaml): the one source of every setting a notebook uses."""
    return _entry(load_registry(registry), name, profile)[1]


def notebook_source_hash(path) -> str:
    """Hash of a notebook's cells (type, source, tags): outputs and other metadata do not count."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    cells = [(c.cell_type, c.source, sorted(c.get("metadata", {}).get("tags", []))) for c in nb.cells]
    return sha(cells)


def staleness_hash(notebook, parameters: dict, profile: str, *, version: int | None = None) -> str:
    """What an experiment's results depend on: notebook source, parameters, profile, compute version, data."""
    from ..data import SHA256

    version = COMPUTE_VERSION if version is None else version
    return sha(notebook_source_hash(notebook), parameters, profile, {"compute_version": version}, SHA256)


def check_kernel() -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        raise SystemExit(f"the Jupyter kernel {KERNEL!r} is not installed: run `make setup` "
                         f"(it runs `python -m ipykernel install --sys-prefix --name {KERNEL}`)") from None


def notebook_parameters(path) -> dict:
    """The notebook's ``parameters`` cell as ``{name: default value}``."""
    import ast

    import papermill

    return {k: ast.literal_eval(v["default"]) for k, v in papermill.inspect_notebook(str(path)).items()}


def _entry(registry: dict, name: str, profile: str) -> tuple[dict, dict]:
    if name not in registry:
        raise SystemExit(f"unknown experiment {name!r}; known: {', '.join(registry)}")
    entry = registry[name]
    if profile not in entry["parameters"]:
        raise SystemExit(f"experiment {name!r} has no parameters for profile {profile!r} "
                         f"(has: {', '.join(entry['parameters'])})")
    return entry, dict(entry["parameters"][profile] or {})


def run_one(name: str, profile: str, results_root=None, *, force: bool = False, registry=None) -> int:
    """Execute one registry notebook with papermill (called in its own process by run_experiments).

    The notebook's kernel inherits this process's environment, so :data:`FINISHED_ONLY` and
    :data:`MATCH` reach its ``run_grid`` calls; when some runs are missing the experiment is left
    incomplete (no ``.complete``)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    root = root_dir(results_root)
    entry, params = _entry(load_registry(registry), name, profile)
    notebook = Path(entry["notebook"])
    missing = sorted(set(NOTEBOOK_PARAMETERS) - set(notebook_parameters(notebook)))
    if missing:
        print(f"{name}: {notebook.name}'s parameters cell lacks {missing} (it reads its settings from the "
              f"registry with ex.experiment_settings(EXPERIMENT, profile, registry))", file=sys.stderr)
        return 2
    digest = staleness_hash(notebook, params, profile)
    exp_dir = experiment_dir(name, profile, root)
    if force and exp_dir.exists():
        shutil.rmtree(exp_dir)  # --force recomputes every run, not only the notebook
    exp_dir.mkdir(parents=True, exist_ok=True)
    # Not done until it finishes again. A summary's partial.json stays: run_grid replaces or removes it with its
    # summary, so a notebook killed midway leaves the old partial summary marked partial (and its provenance).
    for stale in (".complete", "failed.json"):
        (exp_dir / stale).unlink(missing_ok=True)
    out_nb = root / profile / f"{name}.ipynb"
    injected = {"profile": profile, "results_root": str(root), "progress": True,
                "registry": None if registry is None else str(Path(registry).resolve())}
    started, t0, wall_start = utc_now(), time.perf_counter(), time.time()
    error = None
    try:
        papermill.execute_notebook(str(notebook), str(out_nb), parameters=injected, kernel_name=KERNEL,
                                   cwd=str(notebook.parent), progress_bar=False,
                                   stdout_file=sys.stdout, stderr_file=sys.stderr)
    except PapermillExecutionError as e:
        error = {"cell_index": _source_cell_index(out_nb, e.cell_index), "executed_cell_index": e.cell_index,
                 "execution_count": e.exec_count, "ename": e.ename, "evalue": e.evalue,
                 "cell_source": (e.source or "").strip().splitlines()[:1], "notebook": str(out_nb), "date": utc_now()}
    except Exception as e:  # noqa: BLE001 - a dead kernel, a timeout, …: still a failure with a record
        error = {"cell_index": None, "execution_count": None, "ename": type(e).__name__, "evalue": str(e),
                 "notebook": str(out_nb), "date": utc_now()}
    wall = time.perf_counter() - t0
    try:
        _export_html(out_nb)
    except Exception as e:  # noqa: BLE001 - the HTML copy is a convenience, never a failure
        print(f"{name}: HTML export failed: {type(e).__name__}: {e}", file=sys.stderr)
    if error is not None:
        write_json_atomic(exp_dir / "failed.json", error)
        where = "" if error["cell_index"] is None else (
            f" in cell {error['cell_index']} of {notebook.name} (execution count {error['execution_count']}, "
            f"first line: {' '.join(error['cell_source'])!r})")
        print(f"{name}: FAILED{where}: {error['ename']}: {error['evalue']}\n  executed notebook kept: {out_nb}",
              file=sys.stderr)
        return 1
    for leftover in exp_dir.glob(f"*{PARTIAL}"):  # of a grid this notebook no longer runs (or no longer leaves partial)
        if leftover.stat().st_mtime < wall_start - 2:  # 2 s: file systems with coarse timestamps
            leftover.unlink()
    env = environment()  # runs git twice: once is enough
    partial = next(filter(None, map(read_json, sorted(exp_dir.glob(f"*{PARTIAL}")))), None)
    write_json_atomic(exp_dir / "provenance.json", {
        "experiment": name, "profile": profile, "hash": digest, "notebook": rel(notebook),
        "executed_notebook": out_nb.name, "parameters": params, "registry": injected["registry"],
        "git_commit": env.get("git_commit"), "environment": env, "runs": run_provenance(exp_dir), "wall_s": wall,
        "started": started, "finished": utc_now(), "partial": partial})
    if partial:  # a summary of some runs: the experiment still has to run
        print(f"{name}: partial, {partial['finished']} of {partial['runs']} runs summarized", file=sys.stderr)
        return 0
    write_text_atomic(exp_dir / ".complete", digest + "\n")  # last: its presence means done
    return 0


def run_provenance(exp_dir: Path, results: dict[Path, dict] | None = None) -> dict:
    """Where the runs of an experiment were computed (the notebook that collects them may execute
    elsewhere, e.g. on a CPU once every run is done): counts by device, torch, CUDA, commit,
    concurrency, and the runs copied from other experiments. ``results``: the ``result.json``
    files already read, by path (the report has them), so that they are not read twice."""
    tally: dict[str, dict] = {k: {} for k in ("device_name", "torch", "cuda", "git_commit", "git_dirty",
                                               "concurrent_runs")}
    n = reused = 0
    for path in sorted(Path(exp_dir).glob("runs/*/result.json")):
        result = results[path] if results is not None and path in results else read_json(path)
        meta = read_json(path.parent / "run.json")
        if result is None or meta is None:
            continue
        env = result.get("environment", {})
        n += 1
        reused += "reused_from" in meta
        for k, counts in tally.items():
            v = str(env.get(k))
            counts[v] = counts.get(v, 0) + 1
    return {"count": n, "reused_from_other_experiments": reused, **tally}


def _source_cell_index(executed, index: int | None) -> int | None:
    """The index in the source notebook of cell ``index`` of the executed one (papermill inserts
    an ``injected-parameters`` cell after the ``parameters`` cell)."""
    import nbformat

    if index is None:
        return None
    try:
        cells = nbformat.read(str(executed), as_version=4).cells[:index]
    except Exception:  # noqa: BLE001
        return index
    return index - sum("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in cells)


def _export_html(executed) -> None:
    from nbconvert import HTMLExporter

    if Path(executed).exists():
        write_text_atomic(Path(executed).with_suffix(".html"), HTMLExporter().from_filename(str(executed))[0])


def run_experiments(profile: str, only=None, force: bool = False, results_root=None, registry=None,
                    finished_only: bool = False, match: str | None = None) -> int:
    """Run every registry notebook that is missing or stale for ``profile``; returns an exit code.

    ``finished_only``: summarize the runs that have finished and run none (no GPU at hand).
    ``match``: run only the pending runs whose name this regular expression matches.
    Both reach each notebook's process through its environment (:data:`FINISHED_ONLY`, :data:`MATCH`)."""
    env = dict(os.environ)
    if finished_only:
        env[FINISHED_ONLY] = "1"
    if match:
        env[MATCH] = compile_match(match).pattern  # a bad pattern fails here, before any notebook runs
    reg = load_registry(registry)
    names = list(dict.fromkeys(only)) if only else list(reg)
    for name in names:
        _entry(reg, name, profile)  # unknown names or profiles: fail before running anything
    check_kernel()
    root = root_dir(results_root)
    print(f"pillm experiments: profile {profile}, {len(names)} experiment(s), results in {root / profile}", flush=True)
    failed, ran, skipped = [], [], []
    for i, name in enumerate(names, 1):
        entry, params = _entry(reg, name, profile)
        digest = staleness_hash(entry["notebook"], params, profile)
        mark = experiment_dir(name, profile, root) / ".complete"
        if not force and mark.exists() and mark.read_text().strip() == digest:
            print(f"[{i}/{len(names)}] {name}: up to date, skipped", flush=True)
            skipped.append(name)
            continue
        print(f"[{i}/{len(names)}] {name}: running {rel(entry['notebook'])}", flush=True)
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "pillm", "experiments", "--one", name, "--profile", profile,
               "--results-dir", str(root)] + (["--force"] if force else []) \
            + (["--registry", str(registry)] if registry else [])
        rc = subprocess.call(cmd, cwd=REPO, env=env)
        took = time.perf_counter() - t0
        if rc == 0:
            print(f"[{i}/{len(names)}] {name}: done in {took:.1f} s", flush=True)
            ran.append(name)
        else:
            e, why = read_json(experiment_dir(name, profile, root) / "failed.json"), ""
            if e:
                cell = "" if e["cell_index"] is None else f"cell {e['cell_index']} raised "
                why = f": {cell}{e['ename']}: {e['evalue']} (see {e['notebook']})"
            print(f"[{i}/{len(names)}] {name}: FAILED after {took:.1f} s (exit {rc}){why}", flush=True)
            failed.append(name)
    print(f"pillm experiments: {len(ran)} ran, {len(skipped)} skipped, {len(failed)} failed"
          + (f" ({', '.join(failed)})" if failed else ""), flush=True)
    return 1 if failed else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="smoke", help="parameter profile in pillm/experiments.yaml (smoke, paper)")
    p.add_argument("--only", action="extend", nargs="+", metavar="NAME", help="run only these experiments")
    p.add_argument("--force", action="store_true", help="rerun even if up to date (recomputes every run)")
    p.add_argument("--results-dir", help="results root (default $PILLM_RESULTS_DIR or <repo>/results)")
    p.add_argument("--finished-only", action="store_true",
                   help="summarize the runs that have finished and run none (the experiment stays incomplete)")
    p.add_argument("--match", metavar="REGEX",
                   help="run only the pending runs whose name matches (e.g. 'epochs=5'); the others are left "
                        "out of the summaries and their experiments stay incomplete")
    p.add_argument("--registry", help=argparse.SUPPRESS)  # an alternative experiments.yaml (tests)
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: execute one notebook in this process


def main(args: argparse.Namespace) -> int:
    if args.one:  # --finished-only and --match arrive in the environment (run_experiments)
        return run_one(args.one, args.profile, args.results_dir, force=args.force, registry=args.registry)
    try:
        return run_experiments(args.profile, only=args.only, force=args.force, results_root=args.results_dir,
                               registry=args.registry, finished_only=args.finished_only, match=args.match)
    except ValueError as e:
        print(f"pillm experiments: {e}", file=sys.stderr)
        return 2

