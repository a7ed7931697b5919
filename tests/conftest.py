"""Shared pytest fixtures.

* The whole session runs offline (``PILLM_OFFLINE=1``: never touch the
  Hugging Face hub) and caches tokenized corpora in a session temp dir, so
  tests never read or write the repository's ``.cache/``.
* Data-dependent fixtures skip (with the reason) when a dataset is not
  installed; a corrupt dataset is a failure, never a skip.
* The notebooks of tests/test_notebooks.py execute in a pool of kernels that
  starts with the session, beside the other tests; their tests run last.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pillm import data

#: A tiny run's TrainConfig overrides: one epoch over a 2,048-token slice of WikiText-2, on the CPU.
TINY_TRAIN = {"epochs": 1, "batch_size": 16, "max_train_tokens": 2048, "max_eval_tokens": 1024, "search_tokens": 128,
              "eval_every_epoch": False, "device": "cpu"}


def attn_then_pil_checkpoint(tmp_path_factory, **train) -> Path:
    """The checkpoint of a tiny attention→PIL model (Bi-PIL, expansion 4) trained on a WikiText-2 slice, with
    ``train`` overriding :data:`TINY_TRAIN` (e.g. ``target="global"``): what the re-solving modules read."""
    import torch

    from pillm.run import RunSpec
    from pillm.run import execute as train_run

    out = tmp_path_factory.mktemp("pretrain")
    torch.use_deterministic_algorithms(True, warn_only=True)
    train_run(RunSpec(method="attn_then_pil", size="tiny", train=TINY_TRAIN | train), out=out, progress=False)
    return out / "checkpoint"


#: ``pillm train`` flags of the shared tiny checkpoint: a baseline that learns enough in ~32 AdamW steps on a
#: 4,096-token slice to beat a unigram model of the same tokens (see test_cli.py).
TINY_CLI = ["--method", "baseline", "--size", "tiny", "--epochs", "4", "--lr", "3e-3", "--dropout", "0",
            "--batch-size", "8", "--max-train-tokens", "4096", "--max-eval-tokens", "1024", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, wikitext2):
    """One tiny run trained through ``pillm train`` once per session and shared: ``.dir`` (the run
    directory), ``.result`` (its result.json), ``.model`` (the trained model as it left training) and
    ``.stdout`` (what the command printed). Tests must not modify it."""
    import contextlib
    import io
    import json
    import types

    import pillm.run
    from pillm.cli import main

    out = tmp_path_factory.mktemp("tiny") / "run"
    trained = {}
    execute = pillm.run.execute

    def keep_model(*args, **kwargs):
        result, trained["model"] = execute(*args, **kwargs)
        return result, trained["model"]

    mp, stdout = pytest.MonkeyPatch(), io.StringIO()
    mp.setattr(pillm.run, "execute", keep_model)
    try:
        with contextlib.redirect_stdout(stdout):
            assert main(["train", *TINY_CLI, "--out", str(out)]) == 0
    finally:
        mp.undo()
    return types.SimpleNamespace(dir=out, result=json.loads((out / "result.json").read_text()),
                                 model=trained["model"], stdout=stdout.getvalue())


@pytest.fixture(scope="session", autouse=True)
def _offline_and_private_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("PILLM_OFFLINE", "1")
    mp.setenv("PILLM_CACHE_DIR", str(tmp_path_factory.mktemp("pillm-cache")))
    yield
    mp.undo()


def _or_skip(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except data.DataNotFoundError as err:
        pytest.skip(f"dataset not available: {err}")


@pytest.fixture(scope="session")
def wikitext2(_offline_and_private_cache) -> data.TokenizedCorpus:
    """WikiText-2 with the word tokenizer (tokenized once per session, then cached)."""
    return _or_skip(data.load_tokenized, "wikitext2")


@pytest.fixture(scope="session")
def ptb(_offline_and_private_cache) -> data.TokenizedCorpus:
    """Penn Treebank with the word tokenizer."""
    return _or_skip(data.load_tokenized, "ptb")


@pytest.fixture(scope="session")
def tinystories_corpus(_offline_and_private_cache) -> data.Corpus:
    """The TinyStories 2 MiB slice as stories (untokenized)."""
    return _or_skip(data.load_corpus, "tinystories")


@pytest.fixture(scope="session")
def lambada_corpus(_offline_and_private_cache) -> data.Corpus:
    return _or_skip(data.load_corpus, "lambada")


# --------------------------------------------------------------------------------------------
# The notebook pool (tests/test_notebooks.py)
# --------------------------------------------------------------------------------------------

NOTEBOOK_TEST = "test_notebook"
NOTEBOOK_NICE = 5  # the kernels' scheduling priority (os.setpriority), lower than the tests'
# Longest first, so that the kernels finish together.
NOTEBOOK_ORDER = ["benchmark", "training_curves", "tuning", "training_strategy", "adaptation", "first_layer", "gap"]
# Run before each notebook in a reused kernel: a fresh namespace, figures closed, the kernel's initial
# warning filters (changing them also clears the once-per-location registries, so warnings show again).
RESET = """%reset -f
import warnings as _w, matplotlib.pyplot as _plt
_plt.close("all")
_w.filterwarnings("ignore", message="__pillm_reset__")
_w.filters[:] = __pillm_filters__
del _w, _plt"""


def pytest_collection_modifyitems(config, items):
    """The notebook tests last: their kernels work from the session's start, beside the other tests."""
    items.sort(key=lambda item: getattr(item, "originalname", "") == NOTEBOOK_TEST)


def _notebook_worker(jobs, env: dict, notebooks: Path) -> None:
    import os
    import queue

    import nbformat
    from jupyter_client import KernelManager
    from nbclient import NotebookClient

    from pillm import experiments as ex

    km = KernelManager(kernel_name=ex.KERNEL)
    km.start_kernel(cwd=str(notebooks), env=env)
    # Below the other tests in priority: those run one after another, the notebooks fill the idle cores.
    pid = km.provisioner.process.pid
    for task in Path(f"/proc/{pid}/task").glob("*"):
        os.setpriority(os.PRIO_PROCESS, int(task.name), NOTEBOOK_NICE)
    first = True
    try:
        while True:
            try:
                name, future = jobs.get_nowait()
            except queue.Empty:
                return
            try:
                nb = nbformat.read(str(notebooks / name), as_version=4)
                setup = "import warnings\n__pillm_filters__ = list(warnings.filters)" if first else RESET
                first = False
                nb.cells.insert(0, nbformat.v4.new_code_cell(setup))
                NotebookClient(nb, km=km, timeout=1200, iopub_timeout=60, allow_errors=True,
                               resources={"metadata": {"path": str(notebooks)}}).execute()
                nb.cells.pop(0)
                future.set_result(nb)
            except Exception as err:  # noqa: BLE001 - reported by the notebook's own test
                future.set_exception(err)
    finally:
        km.shutdown_kernel(now=True)


@pytest.fixture(scope="session", autouse=True)
def notebook_pool(request, tmp_path_factory, _offline_and_private_cache):
    """Execute every selected notebook in a pool of kernels, started with the session so that the kernels
    work while the other tests run; maps each notebook to a Future of its executed copy."""
    import os
    import queue
    import threading
    from concurrent.futures import Future

    from pillm import experiments as ex

    selected = [item.callspec.params["notebook"] for item in request.session.items
                if getattr(item, "originalname", "") == NOTEBOOK_TEST and hasattr(item, "callspec")]
    selected.sort(key=lambda n: NOTEBOOK_ORDER.index(n[:-6]) if n[:-6] in NOTEBOOK_ORDER else len(NOTEBOOK_ORDER))
    futures = {name: Future() for name in selected}
    if not selected:
        yield futures
        return
    try:
        ex.check_kernel()
    except SystemExit as e:  # each notebook test fails with the reason; the other tests run
        for f in futures.values():
            f.set_exception(RuntimeError(str(e)))
        yield futures
        return
    for corpus in ("wikitext2", "tinystories"):  # tokenize once (disk cache), not in every kernel
        try:
            data.load_tokenized(corpus)
        except data.DataNotFoundError:
            pass
    env = os.environ | ex.REPRODUCIBLE_CPU_ENV | {"PILLM_RESULTS_DIR": str(tmp_path_factory.mktemp("nb-results")),
                                                  "PILLM_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    jobs: queue.Queue = queue.Queue()
    for name in selected:
        jobs.put((name, futures[name]))
    notebooks = Path(__file__).resolve().parent.parent / "notebooks"
    kernels = max(1, min(int(os.environ.get("PILLM_NB_KERNELS", "2")), len(selected)))
    threads = [threading.Thread(target=_notebook_worker, args=(jobs, env, notebooks), daemon=True)
               for _ in range(kernels)]
    for t in threads:
        t.start()
    yield futures
    for t in threads:
        t.join()
