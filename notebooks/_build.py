"""Re-execute notebooks in place with their default (smoke) parameters: the committed outputs.

    .venv/bin/python notebooks/_build.py                 # every notebook in this folder
    .venv/bin/python notebooks/_build.py quickstart      # some of them

The .ipynb files are the source of truth; this only refreshes their outputs (which nbval compares
in `make test`) after an edit. Runs go to a fresh temporary results root (``$PILLM_RESULTS_DIR``),
so nothing stale is reused and ``results/`` is left alone. Timing metadata is not recorded, so
re-executing an unchanged notebook gives an unchanged file. The kernels run under
``pillm.experiments.REPRODUCIBLE_CPU_ENV`` (as nbval does in tests/test_notebooks.py), so that the
outputs do not depend on the CPU model.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from pillm.experiments import REPRODUCIBLE_CPU_ENV

HERE = Path(__file__).resolve().parent


def build(path: Path) -> float:
    nb = nbformat.read(str(path), as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, kernel_name="pillm", timeout=1800, record_timing=False,
                   resources={"metadata": {"path": str(HERE)}}).execute()
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    nbformat.validate(nb)
    nbformat.write(nb, str(path))
    return time.perf_counter() - t0


def main(names: list[str]) -> int:
    paths = [HERE / f"{n.removesuffix('.ipynb')}.ipynb" for n in names] or sorted(HERE.glob("[!_]*.ipynb"))
    with tempfile.TemporaryDirectory(prefix="pillm-nb-") as tmp:
        os.environ["PILLM_RESULTS_DIR"] = tmp
        os.environ.setdefault("PILLM_OFFLINE", "1")
        os.environ.update(REPRODUCIBLE_CPU_ENV)  # the kernels inherit it: outputs independent of the CPU model
        for p in paths:
            print(f"{p.name}: {build(p):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
