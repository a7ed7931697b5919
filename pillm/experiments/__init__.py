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

A run counts as done when its ``run.json`` holds the current *run key* (the resolved configuration,
the data checksums and ``pillm.version.COMPUTE_VERSION``), so an interrupted grid resumes and a bump
of the compute version recomputes. A notebook counts as done when ``.complete`` holds its *staleness
hash* (notebook source without outputs, its registry parameters, the compute version, data checksums).
``python -m pillm.experiments.rekey`` records the present keys in stored results whose computation
did not change.

Modules: ``files`` (paths, atomic writes, hashes) · ``grid`` (run dicts, run keys, reuse, parallel
execution) · ``summaries`` (choices on validation, headline summaries) · ``notebook`` (display and plots) ·
``registry`` (experiments.yaml, staleness, notebooks executed with provenance, ``pillm experiments``) ·
``rekey`` (stored results declared current). Notebooks use the names below (``ex.run_grid``, ...).
"""

from ..run import write_json_atomic
from .files import REPRODUCIBLE_CPU_ENV, experiment_dir, root_dir, write_csv_atomic, write_text_atomic
from .grid import (
    FINISHED_ONLY, MATCH, PARTIAL, RUN_LOGS, expand, expected_cost, finished_only, make_adapt_run,
    make_first_layer_run, make_fixed_attention_run, make_lambda_path_run, make_run, partial_allowed, run_filter,
    run_grid, run_key, run_spec, visible_gpus,
)
from .notebook import (
    barplot, curves, fit_complexity, heatmap, lambda_search, lineplot, mean_std, plot_curves, rounded, samples,
    setup_notebook, solves, summary_table, time_to_quality,
)
from .registry import (
    KERNEL, NOTEBOOK_PARAMETERS, add_arguments, check_kernel, experiment_settings, load_registry, main,
    notebook_parameters, run_provenance, staleness_hash,
)
from .summaries import (
    LAMBDA_TUNED, choose_lambda, choose_on_validation, confirmation_runs, evaluate_checkpoint, gap_summary,
    lambda_trials, load_result, run_dir, teacher_summary,
)

__all__ = [
    "FINISHED_ONLY", "KERNEL", "LAMBDA_TUNED", "MATCH", "NOTEBOOK_PARAMETERS", "PARTIAL", "REPRODUCIBLE_CPU_ENV",
    "RUN_LOGS", "add_arguments", "barplot", "check_kernel", "choose_lambda", "choose_on_validation",
    "confirmation_runs", "curves", "evaluate_checkpoint", "expand", "expected_cost", "experiment_dir",
    "experiment_settings", "finished_only", "fit_complexity", "gap_summary", "heatmap", "lambda_search",
    "lambda_trials", "lineplot", "load_registry", "load_result", "main", "make_adapt_run", "make_first_layer_run",
    "make_fixed_attention_run", "make_lambda_path_run", "make_run", "mean_std", "notebook_parameters",
    "partial_allowed", "plot_curves", "root_dir", "rounded", "run_dir", "run_filter", "run_grid", "run_key",
    "run_provenance", "run_spec", "samples", "setup_notebook", "solves", "staleness_hash", "summary_table",
    "teacher_summary", "time_to_quality", "visible_gpus", "write_csv_atomic", "write_json_atomic", "write_text_atomic",
]
