"""The paper build: results → numbers, tables and figures → checked claims → PDF, arXiv bundle.

    pillm paper --profile paper     # tables/, figures/ → paper/build/main.pdf
    pillm paper --profile smoke     # everything under paper/build/smoke/
    pillm arxiv --profile paper     # paper/build/arxiv.tar.gz, extracted and compiled once as a check

The text is written by hand in ``paper/sections``; the report supplies only what the results decide:

``results``  reading results; :data:`~results.SERIES` names the per-seed series the other modules share
``numbers``  one TeX macro per number the text uses (``tables/numbers.tex``), naming its results file
``claims``   the text's ``\\claim{name}{...}`` statements, checked: a contradicted claim fails the build
``tables``   the tables (booktabs; mean and 95 % interval over seeds)
``figures``  the figures (matplotlib)
``build``    rendering, staging, latexmk, the checks on the PDF, the arXiv bundle and the CLI

The report reads results and never runs experiments: a missing result renders as "not run".
Statistics (paired differences, intervals, gap shares, the cost model) live in :mod:`pillm.stats`.
"""

from ..stats import complexity_model_seconds, log_gap_share
from .build import add_subcommands, build_arxiv, build_paper, default_dirs, render, tex_available
from .config import PAPER_EXPERIMENTS, PROJECTION_ORDER, ReportError
from .files import rel, sha256_short, write_if_changed

__all__ = ["PAPER_EXPERIMENTS", "PROJECTION_ORDER", "ReportError", "add_subcommands", "build_arxiv", "build_paper",
           "complexity_model_seconds", "default_dirs", "log_gap_share", "rel", "render", "sha256_short",
           "tex_available", "write_if_changed"]
