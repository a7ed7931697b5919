"""nbval: every notebook re-executed with its default (smoke) parameters must reproduce the outputs
committed with it (text, tables, printed numbers; images are not compared).

Each notebook runs in its own ``pytest --nbval`` subprocess with a fresh results root
(``$PILLM_RESULTS_DIR``), so every run is recomputed and ``results/`` is left alone; several run
at once (one CPU thread each; ``PILLM_NBVAL_WORKERS`` overrides). By hand:

    cd notebooks && PILLM_RESULTS_DIR=$(mktemp -d) ../.venv/bin/python -m pytest --nbval . \\
        --nbval-sanitize-with ../nbval_sanitize.cfg -p no:cacheprovider

After changing a notebook, refresh its committed outputs with ``python notebooks/_build.py NAME``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pillm import data
from pillm import experiments as ex

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.name for p in (REPO / "notebooks").glob("[!_]*.ipynb"))
# Longest first, so that parallel workers finish together.
ORDER = ["benchmark", "training_curves", "training_strategy", "ablation_lambda", "ablation_fusion"]


def _nbval(notebook: str, results: Path) -> subprocess.CompletedProcess:
    env = os.environ | ex.REPRODUCIBLE_CPU_ENV | {"PILLM_RESULTS_DIR": str(results), "PILLM_OFFLINE": "1",
                                                  "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--nbval",
           f"notebooks/{notebook}", "--nbval-sanitize-with", "nbval_sanitize.cfg", "--rootdir", str(REPO)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="session")
def nbval_runs(request, tmp_path_factory):
    """Start nbval for every selected notebook at once (a small pool); tests wait for their own."""
    try:
        ex.check_kernel()
    except SystemExit as e:
        pytest.fail(str(e))
    selected = [item.callspec.params["notebook"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_notebook" and hasattr(item, "callspec")]
    selected.sort(key=lambda n: ORDER.index(n[:-6]) if n[:-6] in ORDER else len(ORDER))
    for corpus in ("wikitext2", "tinystories"):  # tokenize once (session cache), not in every worker
        try:
            data.load_tokenized(corpus)
        except data.DataNotFoundError:
            pass
    results = tmp_path_factory.mktemp("nbval-results")
    workers = int(os.environ.get("PILLM_NBVAL_WORKERS", min(4, os.cpu_count() or 1)))
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    futures = {nb: pool.submit(_nbval, nb, results) for nb in selected}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook(notebook, nbval_runs):
    r = nbval_runs[notebook].result()
    assert r.returncode == 0, f"nbval failed for {notebook}:\n{r.stdout[-8000:]}\n{r.stderr[-2000:]}"
