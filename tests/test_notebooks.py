"""Every notebook re-executed with its default (smoke) settings must reproduce the outputs committed with
it (text, tables, printed numbers; images are not compared), as nbval would check them.

The notebooks run in a small pool of Jupyter kernels (``PILLM_NB_KERNELS``, default 2), one notebook
after another in each kernel (its namespace reset in between), so that the kernels' start-up and imports
are paid once per kernel rather than once per notebook. The results root is fresh (``$PILLM_RESULTS_DIR``),
so every run is recomputed and ``results/`` is left alone. The same check with nbval, by hand:

    cd notebooks && PILLM_RESULTS_DIR=$(mktemp -d) ../.venv/bin/python -m pytest --nbval . \\
        --nbval-sanitize-with ../nbval_sanitize.cfg -p no:cacheprovider

After changing a notebook, refresh its committed outputs with ``python notebooks/_build.py NAME``.
"""

from __future__ import annotations

import os
import queue
import re
import threading
from concurrent.futures import Future
from pathlib import Path

import nbformat
import pytest

from pillm import data
from pillm import experiments as ex

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.name for p in (REPO / "notebooks").glob("[!_]*.ipynb"))
# Longest first, so that the kernels finish together.
ORDER = ["benchmark", "training_curves", "tuning", "training_strategy", "adaptation", "first_layer", "gap"]
IGNORE = "nbval-ignore-output"
# Run before each notebook in a reused kernel: a fresh namespace, figures closed, the kernel's initial
# warning filters (changing them also clears the once-per-location registries, so warnings show again).
RESET = """%reset -f
import warnings as _w, matplotlib.pyplot as _plt
_plt.close("all")
_w.filterwarnings("ignore", message="__pillm_reset__")
_w.filters[:] = __pillm_filters__
del _w, _plt"""


def _sanitizers() -> list[tuple[re.Pattern, str]]:
    lines = [ln for ln in (REPO / "nbval_sanitize.cfg").read_text().splitlines() if ln.startswith(("regex:", "replace:"))]
    return [(re.compile(a.split(":", 1)[1].strip()), b.split(":", 1)[1].strip()) for a, b in zip(lines[::2], lines[1::2])]


SANITIZE = _sanitizers()


def _clean(text: str) -> str:
    for pattern, replace in SANITIZE:
        text = pattern.sub(replace, text)
    return text


def comparable(outputs) -> list[tuple[str, str]]:
    """A cell's outputs as nbval compares them: streams joined by name, the text and HTML of results and
    displays (images left out), errors; every text sanitized."""
    out: list[tuple[str, str]] = []
    for o in outputs:
        if o["output_type"] == "stream":
            if out and out[-1][0] == o["name"]:
                out[-1] = (o["name"], out[-1][1] + o["text"])
            else:
                out.append((o["name"], o["text"]))
        elif o["output_type"] in ("execute_result", "display_data"):
            out += [(mime, o["data"][mime]) for mime in ("text/plain", "text/html") if mime in o["data"]]
        elif o["output_type"] == "error":
            out.append(("error", f"{o['ename']}: {o['evalue']}"))
    return [(kind, _clean(text)) for kind, text in out]


def differences(committed, executed) -> list[str]:
    """Where an executed notebook's outputs differ from the committed ones (cells tagged nbval-ignore-output
    are executed, not compared)."""
    found = []
    for i, (a, b) in enumerate(zip(committed.cells, executed.cells)):
        if a.cell_type != "code" or IGNORE in a.metadata.get("tags", []):
            continue
        want, got = comparable(a.outputs), comparable(b.outputs)
        if want != got:
            found.append(f"cell {i} ({a.source.splitlines()[0] if a.source else ''!r}):\n"
                         f"  committed: {want!r}\n  executed:  {got!r}")
    return found


def _worker(jobs: queue.Queue, env: dict) -> None:
    from jupyter_client import KernelManager
    from nbclient import NotebookClient

    km = KernelManager(kernel_name=ex.KERNEL)
    km.start_kernel(cwd=str(REPO / "notebooks"), env=env)
    first = True
    try:
        while True:
            try:
                name, future = jobs.get_nowait()
            except queue.Empty:
                return
            try:
                nb = nbformat.read(str(REPO / "notebooks" / name), as_version=4)
                setup = "import warnings\n__pillm_filters__ = list(warnings.filters)" if first else RESET
                first = False
                nb.cells.insert(0, nbformat.v4.new_code_cell(setup))
                NotebookClient(nb, km=km, timeout=1200, allow_errors=True,
                               resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
                nb.cells.pop(0)
                future.set_result(nb)
            except Exception as err:  # noqa: BLE001 - reported by the notebook's own test
                future.set_exception(err)
    finally:
        km.shutdown_kernel(now=True)


@pytest.fixture(scope="session")
def executed(request, tmp_path_factory):
    """Execute every selected notebook in a pool of kernels; each test waits for its own."""
    try:
        ex.check_kernel()
    except SystemExit as e:
        pytest.fail(str(e))
    selected = [item.callspec.params["notebook"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_notebook" and hasattr(item, "callspec")]
    selected.sort(key=lambda n: ORDER.index(n[:-6]) if n[:-6] in ORDER else len(ORDER))
    for corpus in ("wikitext2", "tinystories"):  # tokenize once (disk cache), not in every kernel
        try:
            data.load_tokenized(corpus)
        except data.DataNotFoundError:
            pass
    env = os.environ | ex.REPRODUCIBLE_CPU_ENV | {"PILLM_RESULTS_DIR": str(tmp_path_factory.mktemp("nb-results")),
                                                  "PILLM_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    jobs: queue.Queue = queue.Queue()
    futures = {name: Future() for name in selected}
    for name in selected:
        jobs.put((name, futures[name]))
    kernels = max(1, min(int(os.environ.get("PILLM_NB_KERNELS", "2")), len(selected)))
    threads = [threading.Thread(target=_worker, args=(jobs, env), daemon=True) for _ in range(kernels)]
    for t in threads:
        t.start()
    yield futures
    for t in threads:
        t.join()


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook(notebook, executed):
    committed = nbformat.read(str(REPO / "notebooks" / notebook), as_version=4)
    found = differences(committed, executed[notebook].result())
    assert not found, f"{notebook}: outputs differ from the committed ones:\n" + "\n".join(found)[:8000]


def test_comparison_sees_a_changed_number_and_ignores_what_nbval_ignores():
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="ppl 12.5"),
                    nbformat.v4.new_output("stream", name="stdout", text=" at /tmp/abc\n"),
                    nbformat.v4.new_output("display_data", data={"image/png": "AAA", "text/plain": "<Figure>"})]
    other = nbformat.v4.new_code_cell("x")
    other.outputs = [nbformat.v4.new_output("stream", name="stdout", text="ppl 12.5 at /tmp/xyz\n"),
                     nbformat.v4.new_output("display_data", data={"image/png": "BBB", "text/plain": "<Figure>"})]
    a, b = nbformat.v4.new_notebook(cells=[cell]), nbformat.v4.new_notebook(cells=[other])
    assert differences(a, b) == []
    other.outputs[0]["text"] = "ppl 12.6 at /tmp/xyz\n"
    assert len(differences(a, b)) == 1
    cell.metadata["tags"] = [IGNORE]
    assert differences(a, b) == []
