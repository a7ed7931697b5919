"""λ-path runs (pillm/studies/lampath.py): one accumulation per layer gives the same solutions as solving each λ
apart, the control (one λ, the checkpoint's) reproduces the checkpoint, each layer keeps the (λ, η) pair
its validation search prefers, bad grids are refused, and the runs carry their own module in their key."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch

from pillm import experiments as ex
from pillm.data import TokenStream, load_tokenized
from pillm.studies.lampath import LambdaPathSpec, execute
from pillm.run import load
from pillm.train import TrainConfig, search_windows, solve_layer
from conftest import TINY_TRAIN, attn_then_pil_checkpoint

TRAIN = TINY_TRAIN


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny attention→PIL model (Bi-PIL, global targets) trained on a WikiText-2 slice."""
    return attn_then_pil_checkpoint(tmp_path_factory, target="global")


def _streams():
    corpus = load_tokenized("wikitext2", "auto", max_train_tokens=TRAIN["max_train_tokens"])
    return TokenStream(corpus.train, "cpu"), TokenStream(corpus.valid, "cpu")


def test_bad_grids_and_checkpoints_say_what_to_change(tmp_path):
    with pytest.raises(ValueError, match="lams is empty"):
        LambdaPathSpec(checkpoint="x", lams=())
    with pytest.raises(ValueError, match="finite and >= 0"):
        LambdaPathSpec(checkpoint="x", lams=(1e-2, -1.0))
    with pytest.raises(ValueError, match=r"give lams=\(λ,\)"):
        ex.make_lambda_path_run("r", checkpoint="x", train={"lam": 0.1})
    assert LambdaPathSpec(checkpoint="x", lams=[1.0, 1e-4, 1.0]).lams == (1e-4, 1.0)  # sorted, once each
    (tmp_path / "config.json").write_text('{"model": {}, "method": "pil_then_attn"}')
    with pytest.raises(ValueError, match="pretrain with method='attn_then_pil'"):
        execute(LambdaPathSpec(checkpoint=str(tmp_path)), progress=False)


@pytest.mark.slow
def test_one_accumulation_gives_each_lambdas_own_solve(checkpoint):
    """Layer 0 solved by the path with λ = 1e-2 alone equals train.solve_layer with lam = 1e-2, and with a
    grid it keeps the pair whose validation loss is lowest, no worse than that single solve."""
    train, valid = _streams()
    cfg = TrainConfig(method="attn_then_pil", **TRAIN | {"target": "global", "lam": 1e-2})
    model, _ = load(checkpoint, device="cpu")
    for block in model.blocks:
        block.ffn.out_weight.zero_()
        block.ffn.out_bias.zero_()
    search = search_windows(valid, cfg, model.config.block_size)
    ref, path, grid, pair = model, copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    rec_ref = solve_layer(ref, 0, train, search, cfg, "global", None, progress=False)
    rec_path = solve_layer(path, 0, train, search, cfg, cfg.target, progress=False, lams=(1e-2,))
    assert rec_path["eta"] == rec_ref["eta"] and rec_path["lam"] == 1e-2
    assert torch.allclose(path.blocks[0].ffn.out_weight, ref.blocks[0].ffn.out_weight, rtol=1e-5, atol=1e-7)
    best_ref = min(r["valid_loss"] for r in rec_ref["search"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = solve_layer(grid, 0, train, search, cfg, cfg.target, progress=False, lams=(1e-4, 1e-2, 1.0, 1e3))
    assert {r["lam"] for r in rec["search"]} == {1e-4, 1e-2, 1.0, 1e3}
    assert len(rec["search"]) == 4 * len(cfg.eta_grid)
    best = min(rec["search"], key=lambda r: r["valid_loss"])
    assert (rec["lam"], rec["eta"]) == (best["lam"], best["eta"])
    assert best["valid_loss"] <= best_ref + 1e-9
    assert rec["lam_at_edge"] == (rec["lam"] in (1e-4, 1e3))
    edge = [str(w.message) for w in caught if "is at the edge of lams" in str(w.message)]
    assert len(edge) == rec["lam_at_edge"]  # warned exactly when the choice sits at the grid's edge
    with pytest.warns(RuntimeWarning, match="best λ=.* is at the edge of lams"):  # two points: always an edge
        solve_layer(pair, 0, train, search, cfg, cfg.target, progress=False, lams=(1e-2, 1.0))


@pytest.mark.slow
def test_the_checkpoints_own_lambda_reproduces_it_and_only_readouts_change(checkpoint):
    own = load(checkpoint, device="cpu")[0]
    result, model = execute(LambdaPathSpec(checkpoint=str(checkpoint), lams=(1e-4,), train=TRAIN), progress=False)
    assert result["before"]["lam"] == 1e-4 and result["target"] == "global"
    assert result["optimizer_steps"] == 0 and result["chosen_lams"] == [1e-4] * model.config.n_layer
    assert result["test_ppl"] == pytest.approx(result["before"]["test_ppl"], rel=1e-6)
    changed = {k for k, v in model.state_dict().items() if not torch.allclose(v, own.state_dict()[k], atol=1e-6)}
    assert not changed
    result, model = execute(LambdaPathSpec(checkpoint=str(checkpoint), lams=(1e-4, 1e-1, 10.0), train=TRAIN),
                            progress=False)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, own.state_dict()[k])}
    assert changed and all(".ffn.out_" in k for k in changed)  # readouts only: embeddings, attention, projections kept
    assert result["chosen_lams"] == [s["lam"] for s in result["solves"]]
    assert all(s["lam"] in (1e-4, 1e-1, 10.0) for s in result["solves"])


def test_lambda_path_keys_name_the_grid(tmp_path):
    """Another λ grid is another run. (Editing lampath.py staling λ-path runs only: test_experiments.)"""
    spec = ex.run_spec(ex.make_lambda_path_run("a", checkpoint=str(tmp_path / "ckpt"), lams=[1e-4, 1e-1]))
    assert isinstance(spec, LambdaPathSpec)
    wider = ex.run_spec(ex.make_lambda_path_run("c", checkpoint=str(tmp_path / "ckpt"), lams=[1e-4, 1e-1, 1.0]))
    assert ex.run_key(wider) != ex.run_key(spec)
