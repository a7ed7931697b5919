"""The `pillm` CLI on one tiny checkpoint (trained once per session, see conftest.tiny_checkpoint):
training learns, the checkpoint reloads to the trained model, evaluate and generate work, and every
config field is a flag. Every method is trained in test_pil.py; error handling is in test_cli_errors.py."""

import json
import math
import re
from dataclasses import fields

import pytest
import torch

import pillm
from pillm.cli import METHOD_HELP, TARGET_HELP, _NOT_FLAGS, build_parser, main, spec_from_args
from pillm.model import PILLM, ModelConfig
from pillm.targets import TARGETS
from pillm.train import METHODS, TrainConfig


def _unigram_ppl(train: torch.Tensor, scored: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of an add-one unigram model of ``train`` on the tokens ``scored``."""
    counts = torch.bincount(train, minlength=vocab_size).double() + 1
    return math.exp(-(counts / counts.sum()).log()[scored].mean().item())


def test_training_beats_a_unigram_model_of_its_own_tokens(tiny_checkpoint, wikitext2):
    """The bound is what a model learns first, the word frequencies of the tokens it saw: an untrained
    model (≈ the vocabulary size) fails it, and so does a unigram model of those tokens by construction."""
    r = tiny_checkpoint.result
    n_train, n_test = r["train_tokens"], r["test_tokens"]
    unigram = _unigram_ppl(wikitext2.train[:n_train], wikitext2.test[1:n_test + 1], wikitext2.vocab_size)
    assert unigram < wikitext2.vocab_size / 5  # the bound is far below an untrained model
    assert r["test_ppl"] < unigram, f"test ppl {r['test_ppl']:.0f} is no better than a unigram model ({unigram:.0f})"
    assert r["complete"] is True and r["optimizer_steps"] > 0 and r["pil_s"] == 0
    assert r["environment"]["torch"] == torch.__version__


def test_the_run_ends_with_one_rounded_line(tiny_checkpoint):
    lines = tiny_checkpoint.stdout.strip().splitlines()
    assert len(lines) == 1 and str(tiny_checkpoint.dir) in lines[0] and "test perplexity" in lines[0]
    assert not re.search(r"\d\.\d{3,}", lines[0]), lines[0]  # headline numbers rounded


def test_loaded_checkpoint_is_the_trained_model(tiny_checkpoint, wikitext2):
    model, tokenizer = pillm.load(tiny_checkpoint.dir)
    assert not model.training and tokenizer.vocab_size == wikitext2.vocab_size
    ids = torch.tensor([tokenizer.encode("the game was released in", add_eos=False)])
    trained = tiny_checkpoint.model.eval()
    with torch.no_grad():
        expected = trained(ids)
        torch.testing.assert_close(model(ids), expected, rtol=0, atol=0)
    # and not trivially so: an untrained model of the same shape gives other logits
    assert not torch.allclose(PILLM(model.config).eval()(ids), expected)


def test_evaluate_reproduces_the_run(tiny_checkpoint, capsys):
    r = tiny_checkpoint.result
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint.dir), "--split", "test", "--device", "cpu",
                 "--max-tokens", str(r["test_tokens"]), "--batch-size", "8", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ppl"] == pytest.approx(r["test_ppl"], rel=1e-6)  # same protocol, same tokens


def test_generate(tiny_checkpoint, capsys):
    argv = ["generate", "--checkpoint", str(tiny_checkpoint.dir), "--prompt", "the game was", "--device", "cpu",
            "--max-new-tokens", "12"]
    texts = []
    for seed in ("1", "1", "2"):
        assert main([*argv, "--seed", seed]) == 0
        texts.append(capsys.readouterr().out.strip())
    assert texts[0].startswith("the game was") and len(texts[0].split()) >= 3 + 12 - 2  # <unk>, <eos> may merge
    assert texts[0] == texts[1]  # the seed fixes the sample
    assert texts[0] != texts[2]
    assert callable(pillm.generate)


def test_flags_reach_the_model():
    """--fusion / --expansion / --single must arrive in the layer, not just in the args."""
    args = build_parser().parse_args(["train", "--method", "pil_then_attn", "--size", "tiny", "--fusion", "sum",
                                      "--expansion", "2", "--out", "x"])
    mcfg, _ = spec_from_args(args).configs(vocab_size=100)
    feats = PILLM(mcfg).blocks[0].ffn.features
    assert mcfg.ffn == "bipil" and feats.fusion == "sum" and feats.n_features == 2 * mcfg.n_embd
    args = build_parser().parse_args(["train", "--method", "pil_pure", "--single", "--lam", "0.01", "--out", "x"])
    mcfg, tcfg = spec_from_args(args).configs(vocab_size=100)
    assert mcfg.ffn == "pil" and tcfg.lam == 0.01


def test_every_config_field_is_a_flag_with_its_default_shown():
    train = build_parser().commands["train"]
    help_text = " ".join(train.format_help().split())
    for cls in (ModelConfig, TrainConfig):
        for f in fields(cls):
            if f.name not in _NOT_FLAGS:
                assert f"--{f.name.replace('_', '-')}" in help_text, f.name
    assert "--lr X AdamW peak learning rate (default: 0.001)" in help_text
    assert set(METHOD_HELP) == set(METHODS) and set(TARGET_HELP) == set(TARGETS)
    for name in (*METHODS, *TARGETS, "tiny", "wikitext2", "example"):
        assert name in help_text
    assert "``" not in build_parser().format_help()  # no raw markup in the top-level help


def test_diverged_run_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import pillm.run as run

    class Broken(run.PILLM):
        def __init__(self, cfg):
            super().__init__(cfg)
            with torch.no_grad():
                self.tok_emb.weight.fill_(float("nan"))

    monkeypatch.setattr(run, "PILLM", Broken)
    assert main(["train", "--method", "baseline", "--size", "tiny", "--epochs", "1", "--max-train-tokens", "1024",
                 "--max-eval-tokens", "256", "--device", "cpu", "--quiet", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists() and not list(tmp_path.iterdir())
