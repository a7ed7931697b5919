"""Every notebook re-executed with its default (smoke) settings must reproduce the outputs committed with
it (text, tables, printed numbers; images are not compared), as nbval would check them.

The notebooks run in the ``notebook_pool`` of tests/conftest.py: a small pool of Jupyter kernels
(``PILLM_NB_KERNELS``, default 2) that starts with the session and executes the notebooks one after another
in each kernel (its namespace reset in between) while the other tests run; these tests come last and wait
for their notebook. The results root is fresh (``$PILLM_RESULTS_DIR``), so every run is recomputed and
``results/`` is left alone. The same check with nbval, by hand:

    cd notebooks && PILLM_RESULTS_DIR=$(mktemp -d) ../.venv/bin/python -m pytest --nbval . \\
        --nbval-sanitize-with ../nbval_sanitize.cfg -p no:cacheprovider

After changing a notebook, refresh its committed outputs with ``python notebooks/_build.py NAME``.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.name for p in (REPO / "notebooks").glob("[!_]*.ipynb"))
IGNORE = "nbval-ignore-output"


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


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook(notebook, notebook_pool):
    committed = nbformat.read(str(REPO / "notebooks" / notebook), as_version=4)
    found = differences(committed, notebook_pool[notebook].result())
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
