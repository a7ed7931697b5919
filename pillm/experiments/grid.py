"""Run grids: run dicts and specs, run keys, reuse of finished runs, parallel execution, summaries."""

from __future__ import annotations

import contextlib
import functools
import importlib
import itertools
import json
import math
import os
import re
import shutil
import sys
import warnings
from dataclasses import MISSING, asdict, fields, replace
from pathlib import Path

import pandas as pd

from ..data import SHA256
from ..model import ModelConfig
from ..run import RunSpec, execute, write_json_atomic
from ..train import TrainConfig
from ..version import COMPUTE_VERSION
from .files import experiment_dir, read_json, rel, sha, write_csv_atomic


#: The run-dict key of each spec kind that is not a RunSpec, with the module and class that execute it.
_OTHER_SPECS = {"adapt": ("studies.adapt", "AdaptSpec"), "first_layer": ("studies.firstlayer", "FirstLayerSpec"),
                "lambda_path": ("studies.lampath", "LambdaPathSpec"),
                "fixed_attention": ("studies.fixedattn", "FixedAttentionSpec")}


@functools.cache
def _field_names(cls) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


_SPEC_FIELDS = _field_names(RunSpec)


def _route(key: str) -> str:
    """Where a flat parameter goes: a RunSpec field, ``model`` (ModelConfig) or ``train`` (TrainConfig)."""
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
        (run if where == "spec" else run[where])[key] = value
    run["vary"] = {**base.get("vary", {}), **(labels or {}), **vary}
    run["name"] = name or ",".join(f"{k}={_fmt(v)}" for k, v in vary.items()) or "run"
    return run


def expand(base: dict, **grid) -> list[dict]:
    """Cartesian product of ``grid`` (each value a list) over ``base``; seeds are just ``seed=[…]``."""
    for k, values in grid.items():
        if not isinstance(values, (list, tuple)):
            raise TypeError(f"grid values must be lists, got {k}={values!r}")
    return [make_run(base, **dict(zip(grid, values))) for values in itertools.product(*grid.values())]


def _spec_module(kind: str):
    return importlib.import_module(f"..{_OTHER_SPECS[kind][0]}", __package__)  # pillm.studies.adapt, .firstlayer, …


def run_spec(run: dict):
    """The spec of a run dict: a :class:`RunSpec`, or for a study's run (``{"adapt": {...}}``, …) the spec
    class that :data:`_OTHER_SPECS` names."""
    for kind, (_, cls) in _OTHER_SPECS.items():
        if kind in run:
            return getattr(_spec_module(kind), cls)(**run[kind])
    return RunSpec(**{k: v for k, v in run.items() if k in _SPEC_FIELDS})


def _other_run(kind: str, name: str, labels: dict | None = None, **fields) -> dict:
    """A run dict of a study (``kind`` in :data:`_OTHER_SPECS`): ``fields`` of its spec, ``labels`` as
    extra summary columns."""
    run = {"name": name, kind: fields, "vary": dict(labels or {})}
    run_spec(run)  # validate now, not in a worker
    return run


#: ``make_adapt_run(name, labels=None, **AdaptSpec fields)``, and the same for the other studies.
make_adapt_run = functools.partial(_other_run, "adapt")
make_first_layer_run = functools.partial(_other_run, "first_layer")
make_lambda_path_run = functools.partial(_other_run, "lambda_path")
make_fixed_attention_run = functools.partial(_other_run, "fixed_attention")


def _kind_of(spec) -> str:
    """The run-dict key (``adapt``, ``first_layer``, …) of a spec that is not a RunSpec."""
    return next(k for k, (_, cls) in _OTHER_SPECS.items() if type(spec).__name__ == cls)


# Relative cost of the training procedures (10-epoch `small` runs on an H200, results/paper):
# `alternating` re-solves every FFN ten times; a final re-solve or a solved head adds passes.
_METHOD_COST = {"alternating": 4.0, "pil_pure": 1.5}


def expected_cost(spec: RunSpec) -> float:
    """A rough relative run time, only used to start the slowest runs first."""
    if not isinstance(spec, RunSpec):  # an adaptation (a few epochs or one solve), or one re-solve per layer
        kind = _kind_of(spec)
        if kind == "adapt":
            return float(max(1, spec.config().epochs))
        if kind == "lambda_path":
            return 1.0  # one pass per layer; the extra λ cost validation passes only
        if kind == "fixed_attention":
            return _METHOD_COST["pil_pure"]  # a pure-PIL run
        return (spec.expansion or 4.0) / 4.0  # first layer: the Gram grows with the width
    mcfg, tcfg = spec.configs(vocab_size=1)
    cost = _METHOD_COST.get(spec.method, 1.0) * max(1, tcfg.epochs)
    cost *= mcfg.n_layer * mcfg.n_embd ** 2 / (4 * 256 ** 2)
    return cost * (1.5 if tcfg.final_resolve else 1.0) * (1.5 if tcfg.solve_head else 1.0)


def _non_default(config: dict, cls) -> dict:
    """The entries of ``config`` (a dataclass's fields as a dict) that differ from ``cls``'s defaults: a new
    field whose default keeps the old computation leaves every key as it was."""
    defaults = {f.name: f.default if f.default_factory is MISSING else f.default_factory()
                for f in fields(cls) if f.default is not MISSING or f.default_factory is not MISSING}
    return {k: v for k, v in config.items() if k not in defaults or v != defaults[k]}


def run_key(spec, *, version: int | None = None) -> str:
    """What a run computes: its resolved configuration (so that two notebooks that spell the same run
    differently, e.g. with or without an explicit default, share one key), the data checksums and the
    compute version (:mod:`pillm.version`). The source text is not part of it: refactoring leaves stored
    runs current, and a change that moves numbers bumps ``COMPUTE_VERSION``."""
    if not isinstance(spec, RunSpec):  # adaptation, first-layer, λ-path, fixed-attention run
        canonical = {"kind": _kind_of(spec)} | _non_default(asdict(spec), type(spec))
        canonical["train"] = _non_default(spec.config().to_dict(), TrainConfig)
        if getattr(spec, "checkpoint", None) is not None:  # the run that wrote it, however the path is spelled
            canonical["checkpoint"] = _teacher_identity(spec.checkpoint)
    else:
        mcfg, tcfg = spec.configs(vocab_size=1)  # the vocabulary comes from the data, in SHA256
        canonical = _non_default({k: v for k, v in asdict(spec).items() if k not in ("model", "train", "bipil")},
                                 RunSpec)
        canonical |= {"model_config": _non_default(mcfg.to_dict() | {"vocab_size": None}, ModelConfig),
                      "train_config": _non_default(tcfg.to_dict(), TrainConfig)}
        if spec.teacher is not None:
            canonical["teacher"] = _teacher_identity(spec.teacher)
    return sha({"compute_version": COMPUTE_VERSION if version is None else version}, canonical, SHA256)


def _teacher_identity(checkpoint) -> dict:
    """A checkpoint (a teacher's, or one to adapt) as it enters a run key: its path relative to the
    repository (so that the key does not depend on where the clone lives) and the key of the run
    that wrote it (so that retraining it makes the runs that read it stale)."""
    path = Path(checkpoint).resolve()
    if (path / "checkpoint").is_dir():  # given the run directory, as pillm.run.load accepts
        path = path / "checkpoint"
    return {"path": rel(path), "key": (read_json(path.parent / "run.json") or {}).get("key")}


def _finished_runs(profile_dir: Path) -> dict[str, tuple[Path, dict]]:
    """Key → (directory, run.json) of every finished run of a profile (any experiment), for reuse."""
    found = {}
    for path in sorted(profile_dir.glob("*/runs/*/run.json")):
        meta = read_json(path)
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
                                            "compute_version": COMPUTE_VERSION, "warnings": meta.get("warnings", []),
                                            "reused_from": str(source.relative_to(rdir.parents[2]))})
    return result


def _done(run_dir: Path, key: str, spec: RunSpec, need_checkpoint: bool = True) -> dict | None:
    """The finished run's result, or None (not run, interrupted, stale, or its checkpoint is gone and
    ``need_checkpoint``: checkpoints are not committed, so a summary of finished runs does without)."""
    checkpoint = run_dir / "checkpoint" / "config.json"
    if need_checkpoint and getattr(spec, "save_checkpoint", False) and not checkpoint.exists():
        return None
    meta = read_json(run_dir / "run.json")
    if meta is None or meta.get("key") != key:
        return None
    return read_json(run_dir / "result.json")


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


def run_columns(df: pd.DataFrame) -> list[str]:
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
                                             "compute_version": COMPUTE_VERSION, "warnings": notes})
    if progress:
        print(f"[{experiment}] {run['name']}: test ppl {result['test_ppl']:.2f}, {result['total_s']:.1f} s", flush=True)
    return result


#: Where a parallel grid's workers write each run's progress (tqdm bars, warnings, its last line):
#: ``<experiment dir>/logs/<run name>.log`` (git-ignored). A run killed by a time limit leaves its log,
#: which says how far it got.
RUN_LOGS = "logs"


def _execute_logged(experiment: str, run: dict, rdir: Path, key: str, log: Path) -> dict:
    """:func:`_execute_run` in a worker process, its output (progress bars included) written to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", buffering=1) as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        return _execute_run(experiment, run, rdir, key, True)


def _warm_up(specs: list) -> None:
    """On a GPU, train each method of ``specs`` for a few steps, untimed and unrecorded, before timed runs share
    this process: otherwise the first run alone pays the process's one-time CUDA set-up (kernel loading, library
    handles, the allocator's first blocks) and times slower than the same run later. Every run reseeds."""
    import torch

    if not torch.cuda.is_available():
        return
    short = {"epochs": 1, "max_train_tokens": 16384, "max_eval_tokens": 4096, "search_tokens": 1024,
             "solve_tokens": None}
    for spec in {s.method: s for s in specs if isinstance(s, RunSpec) and s.teacher is None}.values():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            execute(replace(spec, train={**spec.train, **short}, save_checkpoint=False, lambada=False, samples=None),
                    progress=False)


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
    return compile_match(pattern) if pattern else None


def compile_match(pattern: str) -> "re.Pattern":
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


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    """``os.environ`` updated with ``values`` inside the block (workers started there inherit it), then restored."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


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
    specs = [run_spec(run) for run in runs]
    keys = [run_key(spec) for spec in specs]
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
    # Concurrent runs, PILLM_JOBS (default 1): small models leave a GPU mostly idle, so several runs per GPU raise
    # throughput. Each run is still timed on its own; result.json records environment.concurrent_runs.
    jobs = min(max(1, int(os.environ.get("PILLM_JOBS", "1"))), len(pending))
    # PILLM_OTHER_RUNS: runs that other processes execute on the same machine at the same time
    # (tools/device_experiments.sh runs several grids at once); recorded with each run either way, through an
    # environment set for this grid only (restored afterwards: a later grid in the kernel records its own).
    others = int(os.environ.get("PILLM_OTHER_RUNS", "0"))
    if jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        import torch

        ctx = mp.get_context("spawn")
        counter = ctx.Value("i", 0)
        # Inherited by the (spawned) workers. TQDM_MININTERVAL: tqdm reads it when imported, so it must be
        # in a worker's environment from the start; a bar update every few seconds keeps the run logs small.
        worker_env = {"PILLM_CONCURRENT_RUNS": str(jobs + others),
                      "TQDM_MININTERVAL": os.environ.get("TQDM_MININTERVAL", "5")}
        with _environ(worker_env):
            with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                                     initargs=(counter, visible_gpus(torch.cuda.device_count()))) as pool:
                # Longest first, so that a time-limited call is not left waiting for one slow run
                # started last; a stable sort keeps the grid's order among equals.
                order = sorted(pending, key=lambda i: -expected_cost(specs[i]))
                logs = exp_dir / RUN_LOGS
                if progress:
                    print(f"[{experiment}] {jobs} runs at a time; the progress of each: {rel(logs)}/", flush=True)
                futures = {pool.submit(_execute_logged, experiment, runs[i], dirs[i], keys[i],
                                       logs / f"{runs[i]['name']}.log"): i for i in order}
                for fut in as_completed(futures):  # report each run when it finishes
                    i = futures[fut]
                    results[i] = fut.result()
                    if progress:
                        print(f"[{experiment}] {runs[i]['name']}: test ppl {results[i]['test_ppl']:.2f}", flush=True)
    else:
        _warm_up([specs[i] for i in pending])
        with _environ({"PILLM_CONCURRENT_RUNS": str(1 + others)}):  # one at a time
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
    if not missing:
        # Only now: until this summary replaced the last one, a partial.json still describes it, and a run
        # killed by a time limit must not leave an old partial summary that no partial.json names.
        partial.unlink(missing_ok=True)
    return df
