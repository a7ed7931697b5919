"""Experiments: grids of runs with resume, tidy summaries, and notebooks executed with provenance.

    from pillm import experiments as ex
    runs = ex.expand({"size": "tiny", "train": {"epochs": 1}}, method=["baseline", "pil_then_attn"], seed=[0, 1])
    df = ex.run_grid("benchmark", runs, profile="smoke")     # results/smoke/benchmark/{runs/,summary.csv}

    pillm experiments --profile smoke [--only NAME ...] [--force] [--results-dir DIR]

Layout under ``<root>/<profile>/`` (``<root>``: ``--results-dir``, ``$PILLM_RESULTS_DIR`` or
``<repo>/results``)::

    <experiment>/runs/<name>/result.json   one run (pillm.run.execute), + checkpoint/ if kept
    <experiment>/runs/<name>/run.json      name, varied parameters, run key (written last)
    <experiment>/summary.csv               one row per run (+ other tables / figure data)
    <experiment>/provenance.json           staleness hash, git commit, environment, wall time
    <experiment>/.complete                 the staleness hash; written last, atomically
    <experiment>.ipynb, <experiment>.html  the executed notebook and its HTML export (not committed)

A run counts as done when its ``run.json`` holds the current *run key* (the spec plus the
library sources that produce results), so an interrupted grid resumes and a library change
recomputes. A notebook counts as done when ``.complete`` holds its *staleness hash* (notebook
source without outputs, parameters, ``pillm/*.py``, ``pillm/experiments.yaml``, data checksums).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import hashlib
import importlib
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, fields
from pathlib import Path

import pandas as pd

from .report import complexity_model_seconds, log_gap_share
from .report import rel as _show  # a path relative to the repository when inside it
from .run import REPO, RunSpec, environment, execute, load, write_atomic, write_json_atomic

PACKAGE = Path(__file__).resolve().parent
REGISTRY = PACKAGE / "experiments.yaml"
KERNEL = "pillm"
# Modules that do not change what a run computes (they may change without invalidating runs). Only the
# top-level modules are hashed: the report package (pillm/report/) is outside every run key too.
_NOT_RESULT_CODE = {"experiments.py", "cli.py", "__main__.py", "bench.py"}
#: The run-dict key of each spec kind that is not a RunSpec, with the module (own key) that executes it.
_OTHER_SPECS = {"adapt": ("adapt", "AdaptSpec"), "first_layer": ("firstlayer", "FirstLayerSpec")}
#: Modules that only some runs execute: hashed into those runs' keys, not into every run's.
_OWN_KEY_MODULES = {f"{module}.py" for module, _ in _OTHER_SPECS.values()}

@functools.cache
def _field_names(cls) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


_SPEC_FIELDS = _field_names(RunSpec)


def _read_json(path: Path):
    """The parsed JSON file, or None when it is missing or unreadable (an interrupted write)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _source_parts(files) -> list[bytes]:
    """Name and contents of each file, for the code and staleness hashes."""
    return [p.name.encode() + b"\0" + p.read_bytes() for p in files]


# --------------------------------------------------------------------------------------------
# Paths and atomic writes
# --------------------------------------------------------------------------------------------


def root_dir(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$PILLM_RESULTS_DIR``, else ``<repo>/results``."""
    return Path(root or os.environ.get("PILLM_RESULTS_DIR") or REPO / "results").expanduser().resolve()


def experiment_dir(experiment: str, profile: str, root=None) -> Path:
    return root_dir(root) / profile / experiment


def write_text_atomic(path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text))


def write_csv_atomic(df: pd.DataFrame, path) -> None:
    write_atomic(path, lambda f: df.to_csv(f, index=False))


def _sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Run grids
# --------------------------------------------------------------------------------------------


def _route(key: str) -> str:
    """Where a flat parameter goes: a RunSpec field, ``model`` (ModelConfig) or ``train`` (TrainConfig)."""
    from .model import ModelConfig
    from .train import TrainConfig

    if key in _SPEC_FIELDS:
        return "spec"
    if key in _field_names(ModelConfig):
        return "model"
    if key in _field_names(TrainConfig):
        return "train"
    raise ValueError(f"unknown run parameter {key!r}: not a RunSpec, ModelConfig or TrainConfig field")


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def make_run(base: dict, name: str | None = None, labels: dict | None = None, **vary) -> dict:
    """One run dict: ``base`` (RunSpec fields, ``model``/``train`` dicts) with ``vary`` applied.

    Flat keys in ``vary`` are routed to the RunSpec, ``model`` or ``train`` by field name; the
    default name is ``k=v,k=v`` over ``vary``. ``labels`` are extra summary columns (not part of
    the spec), e.g. ``{"variant": "PIL 2x"}``.
    """
    run = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    run.setdefault("model", {})
    run.setdefault("train", {})
    for key in list(run):
        if key not in _SPEC_FIELDS | {"name", "vary"}:
            raise ValueError(f"base key {key!r} is not a RunSpec field (put it in 'model' or 'train')")
    for key, value in vary.items():
        where = _route(key)
        if where == "spec":
            run[key] = value
        else:
            run[where][key] = value
    run["vary"] = {**base.get("vary", {}), **(labels or {}), **vary}
    run["name"] = name or ",".join(f"{k}={_fmt(v)}" for k, v in vary.items()) or "run"
    return run


def expand(base: dict, **grid) -> list[dict]:
    """Cartesian product of ``grid`` (each value a list) over ``base``; seeds are just ``seed=[…]``."""
    keys = list(grid)
    for k in keys:
        if not isinstance(grid[k], (list, tuple)):
            raise TypeError(f"grid values must be lists, got {k}={grid[k]!r}")
    return [make_run(base, **dict(zip(keys, values))) for values in itertools.product(*(grid[k] for k in keys))]


def _spec_module(kind: str):
    return importlib.import_module(f".{_OTHER_SPECS[kind][0]}", __package__)


def run_spec(run: dict):
    """The spec of a run dict: a :class:`RunSpec`, an ``AdaptSpec`` for ``{"adapt": {...}}`` or a
    ``FirstLayerSpec`` for ``{"first_layer": {...}}``."""
    for kind, (_, cls) in _OTHER_SPECS.items():
        if kind in run:
            return getattr(_spec_module(kind), cls)(**run[kind])
    return RunSpec(**{k: v for k, v in run.items() if k in _SPEC_FIELDS})


def _other_run(kind: str, name: str, labels: dict | None, fields: dict) -> dict:
    run = {"name": name, kind: fields, "vary": dict(labels or {})}
    run_spec(run)  # validate now, not in a worker
    return run


def make_adapt_run(name: str, labels: dict | None = None, **adapt) -> dict:
    """A run dict for :func:`pillm.adapt.execute` (``AdaptSpec`` fields in ``adapt``)."""
    return _other_run("adapt", name, labels, adapt)


def make_first_layer_run(name: str, labels: dict | None = None, **fields) -> dict:
    """A run dict for :func:`pillm.firstlayer.execute` (``FirstLayerSpec`` fields)."""
    return _other_run("first_layer", name, labels, fields)


def _kind_of(spec) -> str:
    """``adapt`` or ``first_layer``: the run-dict key of a spec that is not a RunSpec."""
    return next(k for k, (_, cls) in _OTHER_SPECS.items() if type(spec).__name__ == cls)


def code_hash(package: Path = PACKAGE) -> str:
    """Hash of the library sources that determine what a run computes, and the data checksums."""
    from .data import SHA256

    files = sorted(p for p in Path(package).glob("*.py") if p.name not in _NOT_RESULT_CODE | _OWN_KEY_MODULES)
    return _sha(*_source_parts(files), SHA256)


# Relative cost of the training procedures (10-epoch `small` runs on an H200, results/paper):
# `alternating` re-solves every FFN ten times; a final re-solve or a solved head adds passes.
_METHOD_COST = {"alternating": 4.0, "pil_pure": 1.5}


def expected_cost(spec: RunSpec) -> float:
    """A rough relative run time, only used to start the slowest runs first."""
    if not isinstance(spec, RunSpec):  # an adaptation (a few epochs or one solve) or a first-layer re-solve
        if _kind_of(spec) == "adapt":
            return float(max(1, spec.config().epochs))
        return (spec.expansion or 4.0) / 4.0  # one solve per layer; the Gram grows with the width
    mcfg, tcfg = spec.configs(vocab_size=1)
    cost = _METHOD_COST.get(spec.method, 1.0) * max(1, tcfg.epochs)
    cost *= mcfg.n_layer * mcfg.n_embd ** 2 / (4 * 256 ** 2)
    return cost * (1.5 if tcfg.final_resolve else 1.0) * (1.5 if tcfg.solve_head else 1.0)


def run_key(spec: RunSpec, package: Path = PACKAGE, *, code: str | None = None) -> str:
    """What a run computes: its resolved model and training configs (so that two notebooks that
    spell the same run differently, e.g. with or without an explicit default, share one key),
    the other spec fields, and the library code (``code``: a precomputed ``code_hash(package)``)."""
    code = code if code is not None else code_hash(package)
    if not isinstance(spec, RunSpec):  # an adaptation or a first-layer run: its own module joins the key
        canonical = asdict(spec) | {"checkpoint": _teacher_identity(spec.checkpoint),
                                    "train": spec.config().to_dict()}
        module = _OTHER_SPECS[_kind_of(spec)][0]
        return _sha(canonical, code, *_source_parts([Path(package) / f"{module}.py"]))
    mcfg, tcfg = spec.configs(vocab_size=1)  # the vocabulary comes from the data, hashed in code_hash
    canonical = {k: v for k, v in asdict(spec).items() if k not in ("model", "train", "bipil")}
    canonical |= {"model_config": mcfg.to_dict() | {"vocab_size": None}, "train_config": tcfg.to_dict()}
    if spec.teacher is not None:
        canonical["teacher"] = _teacher_identity(spec.teacher)
    return _sha(canonical, code)


def _teacher_identity(checkpoint) -> dict:
    """A checkpoint (a teacher's, or one to adapt) as it enters a run key: its path relative to the
    repository (so that the key does not depend on where the clone lives) and the key of the run
    that wrote it (so that retraining it makes the runs that read it stale)."""
    path = Path(checkpoint).resolve()
    if (path / "checkpoint").is_dir():  # given the run directory, as pillm.run.load accepts
        path = path / "checkpoint"
    meta = _read_json(path.parent / "run.json") or {}
    return {"path": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path), "key": meta.get("key")}


def _finished_runs(profile_dir: Path) -> dict[str, tuple[Path, dict]]:
    """Key → (directory, run.json) of every finished run of a profile (any experiment), for reuse."""
    found = {}
    for path in sorted(profile_dir.glob("*/runs/*/run.json")):
        meta = _read_json(path)
        if meta and meta.get("key") and (path.parent / "result.json").exists():
            found.setdefault(meta["key"], (path.parent, meta))
    return found


def _reuse(source: Path, meta: dict, rdir: Path, spec: RunSpec, run: dict, key: str) -> dict | None:
    """Copy an identical finished run (same key, its ``run.json`` is ``meta``) of another experiment
    instead of recomputing it."""
    result = _done(source, key, spec)
    if result is None:
        return None
    rdir.mkdir(parents=True, exist_ok=True)
    if spec.save_checkpoint:
        shutil.copytree(source / "checkpoint", rdir / "checkpoint", dirs_exist_ok=True)
    (rdir / "run.json").unlink(missing_ok=True)
    write_json_atomic(rdir / "result.json", result)
    write_json_atomic(rdir / "run.json", {"name": run["name"], "vary": run.get("vary", {}), "key": key,
                                            "warnings": meta.get("warnings", []),
                                            "reused_from": str(source.relative_to(rdir.parents[2]))})
    return result


def _done(run_dir: Path, key: str, spec: RunSpec, need_checkpoint: bool = True) -> dict | None:
    """The finished run's result, or None (not run, interrupted, stale, or its checkpoint is gone and
    ``need_checkpoint``: checkpoints are not committed, so a summary of finished runs does without)."""
    checkpoint = run_dir / "checkpoint" / "config.json"
    if need_checkpoint and getattr(spec, "save_checkpoint", False) and not checkpoint.exists():
        return None
    meta = _read_json(run_dir / "run.json")
    if meta is None or meta.get("key") != key:
        return None
    return _read_json(run_dir / "result.json")


def summarize(experiment: str, run: dict, result: dict) -> dict:
    """One tidy row: experiment, name, varied parameters, then the standard metrics."""
    row = {"experiment": experiment, "name": run["name"], **run.get("vary", {})}
    std = {k: result.get(k) for k in ("method", "seed", "size", "dataset", "valid_ppl", "test_ppl", "test_acc",
                                       "valid_acc", "train_s", "pil_s", "total_s", "optimizer_steps")}
    std |= {f"params_{k}": v for k, v in result.get("params", {}).items()}
    conds = [s["cond"] for s in result.get("solves", []) if s.get("cond") is not None]
    std["n_features"] = max((s.get("n_features", 0) for s in result.get("solves", [])), default=0) or math.nan
    std["max_cond"] = max(conds) if conds else math.nan
    std["any_fallback"] = any(bool(s.get("fallback")) for s in result.get("solves", []))
    std["concurrent_runs"] = result.get("environment", {}).get("concurrent_runs", 1)  # runs sharing the machine
    if "lambada" in result:  # RunSpec(lambada=True)
        std |= {f"lambada_{k}": v for k, v in result["lambada"].items()}
    if result.get("kind") == "adaptation":  # before → after on the new domain, and forgetting
        std |= {k: result.get(k) for k in ("domain", "wiki_test_ppl", "adapt_s", "oov_rate", "trained_params")}
    std |= {f"before_{k}": v for k, v in result.get("before", {}).items()}  # adaptation, first layer
    return row | {k: v for k, v in std.items() if k not in row}


_STANDARD = {"experiment", "valid_ppl", "test_ppl", "test_acc", "valid_acc", "train_s", "pil_s", "total_s",
             "optimizer_steps", "n_features", "max_cond", "any_fallback", "concurrent_runs", "wiki_test_ppl",
             "adapt_s", "oov_rate", "trained_params"}


def _run_columns(df: pd.DataFrame) -> list[str]:
    """The columns of a summary that describe a run (name, varied parameters), not its metrics."""
    return [c for c in df.columns if c not in _STANDARD and not c.startswith(("params_", "lambada_", "before_"))]


def _execute_run(experiment: str, run: dict, rdir: Path, key: str, progress: bool) -> dict:
    """Execute one run into ``rdir`` and record its key and warnings (``run.json``, written last)."""
    spec = run_spec(run)
    for stale in ("run.json", "result.json"):
        (rdir / stale).unlink(missing_ok=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_ = execute if isinstance(spec, RunSpec) else _spec_module(_kind_of(spec)).execute
        result, _ = run_(spec, out=rdir, progress=progress)
    notes = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
    write_json_atomic(rdir / "run.json", {"name": run["name"], "vary": run.get("vary", {}), "key": key,
                                             "warnings": notes})
    if progress:
        print(f"[{experiment}] {run['name']}: test ppl {result['test_ppl']:.2f}, {result['total_s']:.1f} s", flush=True)
    return result


#: Where a parallel grid's workers write each run's progress (tqdm bars, warnings, its last line):
#: ``<experiment dir>/logs/<run name>.log`` (git-ignored). A run killed by a time limit leaves its log,
#: which says how far it got.
RUN_LOGS = "logs"


def _execute_logged(experiment: str, run: dict, rdir: Path, key: str, log: Path) -> dict:
    """:func:`_execute_run` in a worker process, its output (progress bars included) written to ``log``."""
    import contextlib

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", buffering=1) as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        return _execute_run(experiment, run, rdir, key, True)


def visible_gpus(count: int) -> list[str]:
    """The GPUs a grid's workers share: the entries of the caller's ``CUDA_VISIBLE_DEVICES`` when it
    is set (so that one grid can be kept to some GPUs while another uses the rest), else 0…count-1."""
    listed = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def _worker_init(counter, gpus: list[str]) -> None:
    """Pin each worker process to one of ``gpus``, round robin (before CUDA is initialised)."""
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]


def _parallel_jobs() -> int:
    """Concurrent runs: ``PILLM_JOBS`` (default 1). Small models leave a GPU mostly idle, so
    several runs per GPU raise throughput; each run is still timed on its own (shared GPU: the
    timings of concurrent runs are slower than alone, which ``result.json`` records as
    ``environment.concurrent_runs``)."""
    return max(1, int(os.environ.get("PILLM_JOBS", "1")))


#: Set to 1 (``pillm experiments --finished-only``) to summarize only the runs that have finished and
#: run none: ``partial.json`` then lists the missing ones, and the experiment is not marked complete.
FINISHED_ONLY = "PILLM_FINISHED_ONLY"
PARTIAL = "partial.json"


#: A regular expression (``pillm experiments --match``): only the pending runs whose name it matches
#: (``re.search``) run; the summary leaves the other unfinished runs out and the experiment stays
#: incomplete, as with ``PILLM_FINISHED_ONLY``. For fitting a call's time limit, e.g. ``epochs=5``.
MATCH = "PILLM_MATCH"


def finished_only() -> bool:
    return os.environ.get(FINISHED_ONLY, "0") == "1"


def run_filter() -> "re.Pattern | None":
    """The compiled ``PILLM_MATCH`` pattern, or None when every run may run."""
    pattern = os.environ.get(MATCH, "")
    return _compile_match(pattern) if pattern else None


def _compile_match(pattern: str) -> "re.Pattern":
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"--match / {MATCH} {pattern!r} is not a regular expression ({e}); match run names "
                         "such as 'method=alternating' or 'epochs=5'") from None


def partial_allowed() -> bool:
    """Whether this process may summarize an incomplete grid (``--finished-only`` or ``--match``)."""
    return finished_only() or run_filter() is not None


def _not_run(runs: list[dict], pending: list[int]) -> list[int]:
    """The pending runs that this process does not run: all under ``PILLM_FINISHED_ONLY``, those
    that ``PILLM_MATCH`` does not match otherwise."""
    pattern = run_filter()
    return [i for i in pending if finished_only() or (pattern is not None and not pattern.search(runs[i]["name"]))]


def _finished_subset(experiment: str, runs: list[dict], missing: list[int], partial: Path) -> list[int]:
    """Indices of the runs to summarize (finished, or to run now), after recording the ``missing``
    ones in ``partial``."""
    if len(missing) == len(runs):
        raise RuntimeError(f"{experiment}: none of its {len(runs)} runs has finished or is selected "
                           f"({FINISHED_ONLY}={os.environ.get(FINISHED_ONLY, '0')}, "
                           f"{MATCH}={os.environ.get(MATCH, '')!r}): nothing to summarize")
    names = [runs[i]["name"] for i in missing]
    print(f"[{experiment}] summarizing {len(runs) - len(names)} of {len(runs)} runs; "
          f"{len(names)} not run: {', '.join(names)}", flush=True)
    write_json_atomic(partial, {"runs": len(runs), "finished": len(runs) - len(names), "missing": names})
    return sorted(set(range(len(runs))) - set(missing))


def run_grid(experiment: str, runs: list[dict], *, profile: str, results_root=None, progress: bool = True,
             summary: str = "summary.csv") -> pd.DataFrame:
    """Execute ``runs`` (skipping finished ones), write ``summary.csv`` atomically and return it.

    With ``PILLM_JOBS=N`` pending runs execute in N worker processes (spread over the visible
    GPUs); the summary is the same whatever N. With ``PILLM_FINISHED_ONLY=1`` nothing runs: the
    summary holds the finished runs and ``partial.json`` names the others.
    """
    names = [r["name"] for r in runs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"run names must be unique within {experiment!r}; duplicated: {dup}")
    exp_dir = experiment_dir(experiment, profile, results_root)
    code = code_hash()  # once per grid, not once per run: it reads every library source
    specs = [run_spec(run) for run in runs]
    keys = [run_key(spec, code=code) for spec in specs]
    dirs = [exp_dir / "runs" / run["name"] for run in runs]
    results = [_done(d, k, spec) for spec, d, k in zip(specs, dirs, keys)]
    pending = [i for i, r in enumerate(results) if r is None]
    finished = _finished_runs(exp_dir.parent) if pending else {}
    reused = 0
    for i in list(pending):  # identical runs finished by another experiment of this profile
        source, meta = finished.get(keys[i], (None, None))
        if source is not None and source != dirs[i] and (
                result := _reuse(source, meta, dirs[i], specs[i], runs[i], keys[i])):
            results[i] = result
            pending.remove(i)
            reused += 1
    if progress:
        print(f"[{experiment}] {len(runs)} runs, {len(runs) - len(pending) - reused} done, {reused} reused from "
              f"other experiments, {len(pending)} to run", flush=True)
    # One partial record per summary file (an experiment may summarize several grids).
    partial = exp_dir / (PARTIAL if summary == "summary.csv" else f"{Path(summary).stem}.{PARTIAL}")
    not_run = _not_run(runs, pending)
    for i in not_run:  # finished, but its checkpoint is gone: summarized, though a full run redoes it
        results[i] = _done(dirs[i], keys[i], specs[i], need_checkpoint=False)
    missing = [i for i in not_run if results[i] is None]
    pending = [i for i in pending if i not in not_run]
    if missing:
        keep = _finished_subset(experiment, runs, missing, partial)
        pending = [keep.index(i) for i in pending]
        runs, dirs, keys, specs, results = ([xs[i] for i in keep] for xs in (runs, dirs, keys, specs, results))
    else:
        partial.unlink(missing_ok=True)
    jobs = min(_parallel_jobs(), len(pending))
    if jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        import torch

        ctx = mp.get_context("spawn")
        counter = ctx.Value("i", 0)
        # Inherited by the (spawned) workers. PILLM_OTHER_RUNS: runs that other processes execute on
        # the same machine at the same time (tools/device_experiments.sh runs several grids at once).
        # TQDM_MININTERVAL: tqdm reads it when imported, so it must be in a worker's environment from the
        # start; a bar update every few seconds keeps the run logs small.
        worker_env = {"PILLM_CONCURRENT_RUNS": str(jobs + int(os.environ.get("PILLM_OTHER_RUNS", "0"))),
                      "TQDM_MININTERVAL": os.environ.get("TQDM_MININTERVAL", "5")}
        previous = {k: os.environ.get(k) for k in worker_env}
        os.environ.update(worker_env)
        try:
            with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                                     initargs=(counter, visible_gpus(torch.cuda.device_count()))) as pool:
                # Longest first, so that a time-limited call is not left waiting for one slow run
                # started last; a stable sort keeps the grid's order among equals.
                order = sorted(pending, key=lambda i: -expected_cost(specs[i]))
                logs = exp_dir / RUN_LOGS
                if progress:
                    print(f"[{experiment}] {jobs} runs at a time; the progress of each: {_show(logs)}/", flush=True)
                futures = {pool.submit(_execute_logged, experiment, runs[i], dirs[i], keys[i],
                                       logs / f"{runs[i]['name']}.log"): i for i in order}
                for fut in as_completed(futures):  # report each run when it finishes
                    i = futures[fut]
                    results[i] = fut.result()
                    if progress:
                        print(f"[{experiment}] {runs[i]['name']}: test ppl {results[i]['test_ppl']:.2f}", flush=True)
        finally:  # a later sequential grid in the same kernel must not record concurrent runs
            for k, v in previous.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    else:
        for n, i in enumerate(pending, 1):
            if progress:
                print(f"[{experiment}] run {n}/{len(pending)}: {runs[i]['name']}", flush=True)
            results[i] = _execute_run(experiment, runs[i], dirs[i], keys[i], progress)
    rows = []
    for run, rdir, result in zip(runs, dirs, results):
        # Warnings are recorded with the run and shown the same way whether it ran now or before.
        for note in json.loads((rdir / "run.json").read_text()).get("warnings", []):
            print(f"{run['name']}: {note}", file=sys.stderr, flush=True)
        rows.append(summarize(experiment, run, result))
    df = pd.DataFrame(rows)
    write_csv_atomic(df, exp_dir / summary)
    return df


def teacher_summary(teachers: pd.DataFrame, students: pd.DataFrame) -> dict:
    """How well fixed random features represent trained FFNs (issue 7, diagnosis).

    ``teachers``: the trained baselines. ``students``: runs labelled by ``variant`` that keep a
    teacher's embeddings and attention and fit every FFN readout in closed form to the teacher's FFN
    output (``target='teacher'``, zero gradient steps), one variant ``no FFN`` (``target='zero'``).
    Retention of a variant: the share of the teacher's log-perplexity gain over "no FFN" that the
    random-feature fit keeps, ``100·(ln ppl[no FFN] − ln ppl[variant]) / (ln ppl[no FFN] − ln ppl[teacher])``
    on the means over seeds of test perplexity."""
    ppl = students.groupby("variant", sort=False)["test_ppl"].mean().to_dict()
    if "no FFN" not in ppl:
        raise ValueError(f"teacher_summary: no 'no FFN' variant among {sorted(ppl)}")
    teacher = float(teachers["test_ppl"].mean())
    share = {v: log_gap_share(ppl["no FFN"], teacher, x) for v, x in ppl.items() if v != "no FFN"}
    fits = {v: {"test_ppl": float(ppl[v]), "retention_pct": math.nan if r is None else r} for v, r in share.items()}
    return {"teacher_test_ppl": teacher, "no_ffn_test_ppl": float(ppl["no FFN"]), "fits": fits,
            "seeds": int(teachers["seed"].nunique())}


def gap_summary(df: pd.DataFrame, roles: dict, ngram: pd.DataFrame | None = None) -> dict:
    """Issue-7 headline numbers from a run grid labelled by ``variant`` (means over seeds).

    ``roles`` names the ``baseline`` and ``attn_only`` variants and the ``pure`` PIL candidates
    (one label or a list); every other variant is a hybrid candidate. The best hybrid and the best
    pure variant are chosen on **validation** perplexity only; their test perplexities are then
    reported. ``ngram`` is the ``ngram`` experiment's summary (``kn5_test_ppl`` is its order-5 row;
    None when it was not run).
    """
    means = df.groupby("variant")[["valid_ppl", "test_ppl", "total_s"]].mean()
    seeds = df.groupby("variant")["seed"].nunique()
    pure = roles.get("pure") or []
    pure = [pure] if isinstance(pure, str) else list(pure)
    fixed = {roles.get("baseline"), roles.get("attn_only"), *pure}

    def get(label, col: str):
        return float(means.loc[label, col]) if label in means.index else None

    def best_of(labels):
        labels = [v for v in labels if v in means.index]
        return min(labels, key=lambda v: means.loc[v, "valid_ppl"]) if labels else None

    hybrids = [v for v in means.index if v not in fixed]
    best, best_pure = best_of(hybrids), best_of(pure)
    kn5 = None
    if ngram is not None and len(ngram) and 5 in set(ngram["order"]):
        kn5 = float(ngram.loc[ngram["order"] == 5, "test_ppl"].iloc[0])
    out = {"baseline_test_ppl": get(roles.get("baseline"), "test_ppl"),
           "attn_only_test_ppl": get(roles.get("attn_only"), "test_ppl"),
           "best_hybrid_test_ppl": get(best, "test_ppl"), "best_hybrid_valid_ppl": get(best, "valid_ppl"),
           "best_hybrid_name": best, "pure_pil_test_ppl": get(best_pure, "test_ppl"),
           "pure_pil_valid_ppl": get(best_pure, "valid_ppl"), "pure_pil_name": best_pure, "kn5_test_ppl": kn5,
           "baseline_total_s": get(roles.get("baseline"), "total_s"), "best_hybrid_total_s": get(best, "total_s"),
           "selection": "lowest mean valid_ppl among hybrids (and among pure variants)", "hybrids": hybrids,
           "pure_candidates": [v for v in pure if v in means.index], "seeds": {k: int(v) for k, v in seeds.items()}}
    if out["baseline_test_ppl"] and out["best_hybrid_test_ppl"]:
        out["hybrid_over_baseline"] = out["best_hybrid_test_ppl"] / out["baseline_test_ppl"]
    return out


def choose_on_validation(df: pd.DataFrame, by: str, params: list[str], default: dict | None = None) -> pd.DataFrame:
    """Per value of ``by`` (e.g. each method), the trial with the lowest mean validation perplexity.

    Every group must have the same trials (same budget for every method). Under
    ``PILLM_FINISHED_ONLY=1`` (a partial summary) a group with fewer trials than the largest gets no
    choice instead: its row has ``complete`` False and no parameters or perplexities.
    ``default`` names the setting the other experiments use (e.g. ``{"lr": 1e-3, "dropout": 0.1}``);
    its validation perplexity is reported beside the choice. Test perplexity is reported for the
    chosen trial only.
    """
    missing = [c for c in [by, *params, "valid_ppl", "test_ppl"] if c not in df.columns]
    if missing:
        raise ValueError(f"choose_on_validation: columns {missing} are not in the summary")
    means = df.groupby([by, *params], dropna=False)[["valid_ppl", "test_ppl"]].mean().reset_index()
    trials = means.groupby(by).size()
    incomplete = {}
    if trials.nunique() > 1:
        if not partial_allowed():
            raise ValueError(f"unequal tuning budgets: trials per {by} = {trials.to_dict()}; "
                             f"give every {by} the same grid")
        incomplete = {k: int(n) for k, n in trials.items() if n < trials.max()}
        print(f"choose_on_validation: grid incomplete for {incomplete} (of {trials.max()} trials): not chosen")
    rows = []
    for key, g in means.groupby(by, sort=False):
        if key in incomplete:
            rows.append({by: key, "trials": len(g), "complete": False})
            continue
        best = g.loc[g["valid_ppl"].idxmin()]
        row = {by: key, "trials": len(g), "complete": True, **{p: best[p] for p in params},
               "valid_ppl": float(best["valid_ppl"]), "test_ppl": float(best["test_ppl"])}
        if default:
            d = g
            for p, v in default.items():
                d = d[d[p] == v]
            row["default_valid_ppl"] = float(d["valid_ppl"].iloc[0]) if len(d) else math.nan
            row["chosen_is_default"] = bool(len(d)) and all(best[p] == v for p, v in default.items())
        rows.append(row)
    return pd.DataFrame(rows)


def run_dir(experiment: str, name: str, profile: str, results_root=None) -> Path:
    return experiment_dir(experiment, profile, results_root) / "runs" / name


def load_result(experiment: str, name: str, profile: str, results_root=None) -> dict:
    return json.loads((run_dir(experiment, name, profile, results_root) / "result.json").read_text())


def load_model(experiment: str, name: str, profile: str, results_root=None, device: str = "auto"):
    """``(model, tokenizer)`` of a run that kept its checkpoint (``save_checkpoint=True``)."""
    from .train import resolve_device

    return load(run_dir(experiment, name, profile, results_root), device=str(resolve_device(device)))


def evaluate_checkpoint(experiment: str, name: str, profile: str, results_root=None, *, split: str = "test",
                        stride: int | None = None, max_tokens: int | None = None, batch_size: int = 32,
                        device: str = "auto") -> dict:
    """Perplexity of a finished run's checkpoint on ``split`` of its own dataset, scored with windows
    that slide by ``stride`` tokens (None: non-overlapping, as in every run's ``result.json``): with
    ``stride = s`` every scored token sees at least ``T − s`` tokens of context."""
    from .data import load_tokenized
    from .evaluate import evaluate_stream

    result = load_result(experiment, name, profile, results_root)
    model, _ = load_model(experiment, name, profile, results_root, device)
    corpus = load_tokenized(result["dataset"], result["spec"].get("tokenizer", "auto"))
    ids = getattr(corpus, split).to(next(model.parameters()).device)
    r = evaluate_stream(model, ids, batch_size=batch_size, stride=stride, max_tokens=max_tokens)
    return {"split": split, "stride": stride or model.config.block_size, "ppl": r["ppl"], "tokens": r["tokens"]}


# --------------------------------------------------------------------------------------------
# Analysis helpers for notebooks
# --------------------------------------------------------------------------------------------


def mean_std(df: pd.DataFrame, by, cols) -> pd.DataFrame:
    """Mean and std over seeds: columns ``<col>_mean``, ``<col>_std`` and ``n`` per group."""
    by, cols = ([by] if isinstance(by, str) else list(by)), ([cols] if isinstance(cols, str) else list(cols))
    g = df.groupby(by, sort=False, dropna=False)
    out = g[cols].agg(["mean", "std"])
    out.columns = [f"{c}_{s}" for c, s in out.columns]
    out["n"] = g.size()
    return out.reset_index()


def curves(experiment: str, df: pd.DataFrame, profile: str, results_root=None) -> pd.DataFrame:
    """Validation curves (``result['curve']``) of every run in ``df``, tidy, with ``df``'s columns."""
    rows = []
    for rec in df[_run_columns(df)].to_dict("records"):
        for point in load_result(experiment, rec["name"], profile, results_root)["curve"]:
            rows.append(rec | point)
    return pd.DataFrame(rows)


def solves(experiment: str, df: pd.DataFrame, profile: str, results_root=None) -> pd.DataFrame:
    """Per-layer solver records (κ, R², fallback, λ, η, tokens, seconds) of every run in ``df``."""
    keep = ("phase", "layer", "sweep", "solver", "fallback", "reason", "cond", "r2", "lam_abs", "eta", "eta_at_edge",
            "tokens", "n_features", "seconds", "seconds_total")
    rows = []
    for rec in df[_run_columns(df)].to_dict("records"):
        for s in load_result(experiment, rec["name"], profile, results_root)["solves"]:
            rows.append(rec | {k: s.get(k) for k in keep if k in s})
    return pd.DataFrame(rows)


def _lstsq(columns: list, y) -> tuple[list[float], float, "np.ndarray"]:
    """Least squares ``y ≈ Σ coef·column``: coefficients, R² and the fitted values."""
    import numpy as np

    x = np.stack([np.asarray(c, dtype=float) for c in columns], axis=1)
    y = np.asarray(y, dtype=float)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    fit = x @ coef
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - float(((y - fit) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    return [float(v) for v in coef], r2, fit


def fit_complexity(df: pd.DataFrame, n: str = "tokens", d: str = "n_features", solve: str = "seconds",
                   total: str = "seconds_total") -> dict:
    """Cost model of one layer's closed-form phase, fitted on its two measured parts.

    ``total`` is the whole phase of a layer and ``solve`` the ridge solve alone, so ``total − solve``
    is the streaming pass: the forward pass up to the layer, its features and the ``HᵀH`` update.
    Per ``(N, D)`` cell the median over layers is fitted (it drops one-off costs such as the first
    solve's library initialisation, and averages out the depth of the forward pass):

    - streaming ≈ ``e + c·N + a·N·D²`` (``c·N``: the part of the pass that does not grow with D),
    - solve ≈ ``s + b·D³``.

    Returns ``a, b, c, e, s``, ``r2_stream``, ``r2_solve``, ``r2`` (the smaller of the two) and
    ``fitted`` (the model's total per row of ``df``). The accumulation ``a·N·D²`` exceeds the solve
    ``b·D³`` for ``N > (b/a)·D``, and the D-independent part of the pass ``c·N`` for ``D > √(c/a)``.
    """
    import numpy as np

    cells = (df.assign(_stream=df[total] - df[solve]).groupby([n, d])[["_stream", solve]].median().reset_index())
    nn, dd = cells[n].to_numpy(float), cells[d].to_numpy(float)
    (e, c, a), r2_stream, _ = _lstsq([np.ones_like(nn), nn, nn * dd ** 2], cells["_stream"])
    (s, b), r2_solve, _ = _lstsq([np.ones_like(dd), dd ** 3], cells[solve])
    terms = {"a": a, "b": b, "c": c, "e": e, "s": s}
    fitted = complexity_model_seconds(terms, df[n].to_numpy(float), df[d].to_numpy(float))
    return {**terms, "r2_stream": r2_stream, "r2_solve": r2_solve, "r2": min(r2_stream, r2_solve),
            "cells": len(cells), "fitted": fitted}


def samples(experiment: str, df: pd.DataFrame, profile: str, results_root=None) -> pd.DataFrame:
    """Generation samples (``RunSpec(samples=…)``) of every run in ``df``, one row per prompt × seed."""
    rows = []
    for rec in df[_run_columns(df)].to_dict("records"):
        for s in load_result(experiment, rec["name"], profile, results_root).get("samples", []):
            rows.append(rec | {"sample_" + k if k in rec else k: v for k, v in s.items()})
    return pd.DataFrame(rows)


def setup_notebook(threads: int | None = None) -> None:
    """Notebook defaults: CPU threads (``None`` keeps torch's), pandas display, seaborn theme."""
    import seaborn as sns
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    pd.set_option("display.precision", 4)
    pd.set_option("display.width", 160)
    pd.set_option("display.max_columns", 40)
    sns.set_theme(context="notebook", style="whitegrid")


def summary_table(df: pd.DataFrame, by, metrics=("test_ppl", "test_acc"), first=()) -> pd.DataFrame:
    """One row per group of ``by``: the ``first`` columns (constant within a group, e.g. parameter
    counts), then ``<metric>_mean`` / ``<metric>_std`` over seeds and ``n``."""
    by = [by] if isinstance(by, str) else list(by)
    stats = mean_std(df, by, list(metrics))
    if not first:
        return stats
    return df.groupby(by, sort=False, dropna=False)[list(first)].first().reset_index().merge(stats, on=by)


def _round_col(name, s: pd.Series, digits: int | None) -> pd.Series:
    if not pd.api.types.is_float_dtype(s):
        return s
    if digits is not None:
        return s.round(digits)
    name = str(name)
    if "cond" in name:  # 4 significant digits
        import numpy as np

        mag = np.floor(np.log10(np.abs(s.where(s != 0, 1.0)).astype(float)))
        return (s / 10.0 ** (mag - 3)).round() * 10.0 ** (mag - 3)
    if "ppl" in name or name.endswith(("_s", "_s_mean", "_s_std")):
        return s.round(2)
    if any(k in name for k in ("acc", "rate", "r2")):
        return s.round(4)
    return s  # parameters (λ, η, …) are shown exactly


def rounded(df: pd.DataFrame, digits: int | None = None, *, drop_empty: bool = True) -> pd.DataFrame:
    """For display, so that printed numbers are reproducible: perplexities and seconds 2 decimals,
    accuracies/rates/R² 4, condition numbers 4 significant digits, other columns as they are
    (``digits``: every float column to that many decimals). Drops all-NaN columns (the std of a
    single seed) unless ``drop_empty=False``."""
    if df.empty:
        return df
    out = df.apply(lambda s: _round_col(s.name, s, digits))
    return out.dropna(axis=1, how="all") if drop_empty else out


def barplot(df: pd.DataFrame, x: str, y: str, hue: str | None = None, *, log: bool = False, title: str = "",
            ax=None, **kw):
    """Bar plot (mean ± sd over seeds); returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = (plt.subplots(figsize=(7, 3.5)) if ax is None else (ax.figure, ax))
    sns.barplot(data=df, x=x, y=y, hue=hue, errorbar="sd", ax=ax, **kw)
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    return fig


def lineplot(df: pd.DataFrame, x: str, y, hue: str | None = None, *, logx: bool = False, logy: bool = False,
             title: str = "", **kw):
    """One panel per ``y`` (a name or a list), mean ± sd over seeds; returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    ys = [y] if isinstance(y, str) else list(y)
    fig, axes = plt.subplots(1, len(ys), figsize=(4.5 * len(ys), 3.5), squeeze=False)
    for ax, col in zip(axes[0], ys):
        sns.lineplot(data=df, x=x, y=col, hue=hue, marker="o", errorbar="sd", ax=ax, **kw)
        ax.set_xscale("log" if logx else "linear")
        ax.set_yscale("log" if logy else "linear")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def heatmap(table: pd.DataFrame, *, title: str = "", fmt: str = ".1f", **kw):
    """Annotated heatmap of a pivot table; returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(1.6 * table.shape[1] + 2.5, 0.6 * table.shape[0] + 1.5))
    sns.heatmap(table, annot=True, fmt=fmt, cmap="viridis_r", ax=ax, **kw)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_curves(curve_df: pd.DataFrame, hue: str = "method", y: str = "valid_ppl"):
    """Validation ``y`` against epoch and against wall-clock seconds; returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, x in zip(axes, ("epoch", "wall_s")):
        sns.lineplot(data=curve_df, x=x, y=y, hue=hue, marker="o", errorbar="sd", ax=ax)
        ax.set_yscale("log")
    axes[1].set_xlabel("wall-clock (s)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Registry, staleness and notebook execution
# --------------------------------------------------------------------------------------------


def load_registry(path=None) -> dict:
    """``{name: {"notebook": Path, "parameters": {profile: dict}, ...}}`` from ``experiments.yaml``."""
    import yaml

    path = Path(path or REGISTRY)
    doc = yaml.safe_load(path.read_text())
    exps = doc.get("experiments") or {}
    for name, entry in exps.items():
        nb = Path(entry["notebook"])
        entry["notebook"] = nb if nb.is_absolute() else REPO / nb
        entry.setdefault("parameters", {})
    return exps


def notebook_source_hash(path) -> str:
    """Hash of a notebook's cells (type, source, tags): outputs and other metadata do not count."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    cells = [(c.cell_type, c.source, sorted(c.get("metadata", {}).get("tags", []))) for c in nb.cells]
    return _sha(cells)


def staleness_hash(notebook, parameters: dict, profile: str, *, package: Path = PACKAGE) -> str:
    """What an experiment's results depend on: notebook source, parameters, library, registry, data."""
    from .data import SHA256

    package = Path(package)
    sources = sorted(package.glob("*.py")) + [package / "experiments.yaml"]
    return _sha(notebook_source_hash(notebook), parameters, profile,
                *_source_parts(p for p in sources if p.exists()), SHA256)


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
    params = dict(entry["parameters"][profile] or {})
    return entry, params


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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
    declared = notebook_parameters(notebook)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        print(f"{name}: parameters {unknown} are not in {notebook.name}'s parameters cell", file=sys.stderr)
        return 2
    digest = staleness_hash(notebook, params, profile)
    exp_dir = experiment_dir(name, profile, root)
    if force and exp_dir.exists():
        shutil.rmtree(exp_dir)  # --force recomputes every run, not only the notebook
    exp_dir.mkdir(parents=True, exist_ok=True)
    for stale in (".complete", "provenance.json", "failed.json", *exp_dir.glob(f"*{PARTIAL}")):
        (exp_dir / stale).unlink(missing_ok=True)
    out_nb = root / profile / f"{name}.ipynb"
    injected = params | {"profile": profile, "results_root": str(root)}
    if "progress" in declared:
        injected["progress"] = True
    started, t0 = _now(), time.perf_counter()
    error = None
    try:
        papermill.execute_notebook(str(notebook), str(out_nb), parameters=injected, kernel_name=KERNEL,
                                   cwd=str(notebook.parent), progress_bar=False,
                                   stdout_file=sys.stdout, stderr_file=sys.stderr)
    except PapermillExecutionError as e:
        error = {"cell_index": _source_cell_index(out_nb, e.cell_index), "executed_cell_index": e.cell_index,
                 "execution_count": e.exec_count, "ename": e.ename, "evalue": e.evalue,
                 "cell_source": (e.source or "").strip().splitlines()[:1], "notebook": str(out_nb), "date": _now()}
    except Exception as e:  # noqa: BLE001 - a dead kernel, a timeout, …: still a failure with a record
        error = {"cell_index": None, "execution_count": None, "ename": type(e).__name__, "evalue": str(e),
                 "notebook": str(out_nb), "date": _now()}
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
    env = environment()  # runs git twice: once is enough
    partial = next(filter(None, map(_read_json, sorted(exp_dir.glob(f"*{PARTIAL}")))), None)
    write_json_atomic(exp_dir / "provenance.json", {
        "experiment": name, "profile": profile, "hash": digest,
        "notebook": _show(notebook), "executed_notebook": out_nb.name,
        "parameters": injected | {"results_root": None},  # the root is where this file is
        "git_commit": env.get("git_commit"), "environment": env,
        "runs": run_provenance(exp_dir), "wall_s": wall, "started": started, "finished": _now(),
        "partial": partial,
    })
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
        result = results[path] if results is not None and path in results else _read_json(path)
        meta = _read_json(path.parent / "run.json")
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

    executed = Path(executed)
    if executed.exists():
        body, _ = HTMLExporter().from_filename(str(executed))
        write_text_atomic(executed.with_suffix(".html"), body)


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
        env[MATCH] = _compile_match(match).pattern  # a bad pattern fails here, before any notebook runs
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
        print(f"[{i}/{len(names)}] {name}: running {_show(entry['notebook'])}", flush=True)
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
            info = experiment_dir(name, profile, root) / "failed.json"
            why = ""
            if info.exists():
                e = json.loads(info.read_text())
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


__all__ = ["choose_on_validation", "teacher_summary", "make_adapt_run", "make_first_layer_run", "evaluate_checkpoint", "run_grid", "expand", "make_run", "mean_std", "curves", "solves", "fit_complexity", "samples",
           "setup_notebook", "summary_table", "rounded", "barplot", "lineplot", "heatmap", "plot_curves",
           "load_result", "load_model", "run_experiments", "run_one", "staleness_hash", "notebook_source_hash", "load_registry",
           "root_dir", "experiment_dir", "write_csv_atomic", "write_text_atomic"]
