"""The paper build: results → tables, numbers, figures and result-dependent prose → PDF, arXiv bundle.

    pillm paper --profile paper     # tables/, figures/, paper/generated/ → paper/build/main.pdf
    pillm paper --profile smoke     # everything under paper/build/smoke/ (watermarked "SMOKE RESULTS")
    pillm arxiv --profile paper     # paper/build/arxiv.tar.gz, extracted and compiled once as a check

What is read (written by the experiment notebooks; any part may be missing)
--------------------------------------------------------------------------
``results/<profile>/<experiment>/summary.csv``      one row per run (see :data:`OUTPUT_COLUMNS`;
                                                    every other column but ``seed``/``name`` is a
                                                    varied parameter and a grouping key)
``results/<profile>/<experiment>/provenance.json``  notebook, git commit, environment, wall seconds
``results/<profile>/<experiment>/**/result.json``   per run: ``curve``, ``solves`` (per-layer κ …)
``results/<profile>/tinystories/samples.json``      generation samples (list or dict, see
                                                    :func:`_samples`)
``results/<profile>/complexity/fit.json``           ``{"x": col, "crossover": v, "fits": {series:
                                                    {"exponent": b, "coefficient": a}}}`` (looser
                                                    shapes are accepted: any numeric leaf whose key
                                                    contains "crossover", "exponent" or "slope")
``results/<profile>/gap/summary.json``              baseline/attn-only/hybrid/pure-PIL/KN5 test PPL
``results/bench/*.json``                            gram_rate_ratio, pil_phase_over_baseline_train,
                                                    pil_phase_speedup_2gpu (GPU micro-benchmarks)

What is written
---------------
* ``tables/<name>.tex``   complete ``table`` floats (booktabs; mean ± std over seeds, grouped by
  every column but the seed; the best mean per column in bold where lower/higher is better);
* ``tables/numbers.tex``  one ``\\newcommand`` per number the text uses, each preceded by a comment
  naming the results file (and its hash) it was computed from. A macro is emitted only when a
  template used it (:class:`Numbers` records the use), so every macro is used;
* ``figures/<name>.pdf`` (seaborn) and ``figures/<name>.tex`` (the ``figure`` float);
* ``generated/*.tex``     prose from ``paper/templates/*.tex.j2`` whose wording depends on the
  results (e.g. "does not match the baseline" vs "is competitive with") by the rules in
  :func:`verdict`.

For profile ``paper`` the outputs go to the committed ``tables/``, ``figures/`` and
``paper/generated/``; any other profile writes ``paper/build/<profile>/{tables,figures,generated}``
so that a smoke build never overwrites the paper's files. The paper sources and the generated files
are staged in ``<build>/src`` and compiled there by latexmk into ``<build>`` (``paper/build/main.pdf``
for ``paper``, ``paper/build/<profile>/main.pdf`` otherwise).

Missing results. Every table and figure has a stand-in float with the same label whose body says
the result is not available (not run in this profile); prose templates test
``n.has(...)`` before using a number and say the same; no placeholder number is ever printed.

Every caption names the notebook that made the result, the profile and the first 8 hex digits of
the sha256 of its results file, and links to the notebook when a repository URL is configured
(``PILLM_REPO_URL`` or ``[tool.pillm] repo_url`` in ``pyproject.toml``).

Modules, in the order they import each other
--------------------------------------------
``config``    paths, the experiments the paper reads, display orders, tolerances, titles
``files``     content hashes, repository-relative paths, writes that skip unchanged files
``fmt``       how numbers and names are written in TeX
``numbers``   :class:`Numbers` (one macro per number, with its source) and the wording rules (:func:`verdict`)
``results``   :class:`Experiment` / :class:`Results` and the aggregation and comparison helpers
``tables``    table specifications and the generic mean ± std table
``analysis``  LAMBADA scores, generation samples and the complexity fits, shared by sections and figures
``results_main``, ``ablations``, ``closing``, ``performance``, ``setup_tables``
              one function per paper section, each filling the :class:`Report`'s numbers, tables and claims
``sections``  :class:`Report`: what the sections fill, and :meth:`Report.compute`, which runs every section
``figures``   the seaborn figures
``build``     Jinja2 rendering, staging, latexmk, the arXiv bundle and the ``pillm paper``/``arxiv`` commands

None of these modules is part of the run key (``experiments.code_hash`` reads the top-level modules of
``pillm/`` only): changing the report never makes a finished run stale.
"""

from .analysis import complexity_model_seconds
from .build import (
    Dirs, Rendered, add_subcommands, build_arxiv, build_paper, default_dirs, default_results_root, jinja_env, render,
    tex_available,
)
from .config import PAPER_EXPERIMENTS, PROJECTION_ORDER, ReportError
from .figures import kappa_per_layer
from .files import rel, sha256_short, write_if_changed
from .fmt import method_tex, tex_escape, variant_tex
from .numbers import Numbers, verdict
from .results import Experiment, Results, and_join, beyond_seed_spread, compress_runs, log_gap_share
from .sections import Report

__all__ = [
    "Dirs", "Experiment", "Numbers", "PAPER_EXPERIMENTS", "PROJECTION_ORDER", "Rendered", "Report", "ReportError",
    "Results", "add_subcommands", "and_join", "beyond_seed_spread", "build_arxiv", "build_paper",
    "complexity_model_seconds", "compress_runs", "default_dirs", "default_results_root", "jinja_env",
    "kappa_per_layer", "log_gap_share", "method_tex", "rel", "render", "sha256_short", "tex_available",
    "tex_escape", "variant_tex", "verdict", "write_if_changed",
]
