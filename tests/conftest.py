"""Shared pytest fixtures.

* The whole session runs offline (``PILLM_OFFLINE=1``: never touch the
  Hugging Face hub) and caches tokenized corpora in a session temp dir, so
  tests never read or write the repository's ``.cache/``.
* Data-dependent fixtures skip (with the reason) when a dataset is not
  installed; a corrupt dataset is a failure, never a skip.
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
