"""The `pillm` CLI on a WikiText-2 slice: every method trains in seconds and beats a uniform model."""

import json

import pytest
import torch

import pillm
from pillm.cli import main
from pillm.train import METHODS

EVAL_TOKENS = "2000"  # scored tokens per split, in training and in `pillm evaluate` below
SLICE = ["--size", "tiny", "--dataset", "wikitext2", "--epochs", "1", "--max-train-tokens", "12000",
         "--max-eval-tokens", EVAL_TOKENS, "--search-tokens", "256", "--batch-size", "16", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, wikitext2):
    """One CLI run per method (module scope: trained once, inspected by several tests)."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for method in METHODS:
        extra = ["--fusion", "sum", "--expansion", "2"] if method == "pil_then_attn" else []
        assert main(["train", "--method", method, *SLICE, *extra, "--out", str(root / method)]) == 0
        out[method] = json.loads((root / method / "result.json").read_text())
    return root, out


@pytest.mark.parametrize("method", METHODS)
def test_every_method_beats_a_uniform_model(trained, method, wikitext2):
    _, results = trained
    r = results[method]
    assert r["complete"] is True
    assert r["test_ppl"] < wikitext2.vocab_size, f"{method}: {r['test_ppl']:.0f} is no better than uniform"
    assert r["environment"]["torch"] == torch.__version__
    for key in ("valid_ppl", "test_acc", "train_s", "pil_s", "total_s", "optimizer_steps", "params", "solves"):
        assert key in r
    if method == "pil_pure":
        assert r["optimizer_steps"] == 0 and r["train_s"] == 0
    if method in ("pil_pure", "pil_then_attn", "attn_then_pil", "alternating"):
        assert r["solves"] and all({"cond", "solver", "fallback", "tokens", "lam_abs", "r2"} <= s.keys()
                                   for s in r["solves"])
        assert r["params"]["ffn_solved"] > 0


def test_cli_flags_reach_the_model(trained):
    """--fusion / --expansion / --single must arrive in the layer, not just in the args."""
    root, results = trained
    cfg = results["pil_then_attn"]["model_config"]
    assert cfg["fusion"] == "sum" and cfg["expansion"] == 2 and cfg["ffn"] == "bipil"
    model, _ = pillm.load(root / "pil_then_attn")
    feats = model.blocks[0].ffn.features
    assert feats.fusion == "sum" and feats.n_features == 2 * model.config.n_embd


def test_checkpoint_round_trip(trained, wikitext2):
    root, results = trained
    model, tokenizer = pillm.load(root / "baseline")
    assert not model.training
    assert tokenizer.vocab_size == wikitext2.vocab_size
    ids = torch.tensor([tokenizer.encode("the game was released", add_eos=False)])
    logits = model(ids)
    assert logits.shape == (1, ids.shape[1], wikitext2.vocab_size)
    again, _ = pillm.load(root / "baseline")
    torch.testing.assert_close(again(ids), logits)


def test_evaluate_command(trained, capsys):
    root, results = trained
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(root / "baseline"), "--dataset", "wikitext2", "--split", "test",
                 "--device", "cpu", "--max-tokens", EVAL_TOKENS, "--batch-size", "16", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ppl"] == pytest.approx(results["baseline"]["test_ppl"], rel=1e-6)  # same protocol, same tokens


@pytest.mark.parametrize("args, message", [
    (["--lam", "-1"], "lam must be >= 0"),
    (["--expansion", "0.5"], "expansion must be >= 1"),
    (["--target", "zero", "--method", "nope"], None),
])
def test_bad_configuration_is_a_clear_error(tmp_path, capsys, args, message):
    argv = ["train", "--method", "pil_pure", *SLICE, "--out", str(tmp_path / "r")]
    if message is None:  # argparse rejects unknown choices itself
        with pytest.raises(SystemExit):
            main([a for a in argv if a not in ("--method", "pil_pure")] + args)
        return
    assert main(argv + args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r" / "result.json").exists()


def test_diverged_run_writes_no_result(tmp_path, monkeypatch):
    import pillm.run as run
    from pillm.train import TrainingDiverged

    class Broken(run.PILLM):
        def __init__(self, cfg):
            super().__init__(cfg)
            with torch.no_grad():
                self.tok_emb.weight.fill_(float("nan"))

    monkeypatch.setattr(run, "PILLM", Broken)
    with pytest.raises(TrainingDiverged):
        main(["train", "--method", "baseline", *SLICE, "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r" / "result.json").exists()
