"""First-layer runs (pillm/studies/firstlayer.py): each projection kind is what it says, the control
reproduces the checkpoint's own solve, data-dependent projections see fresh inputs (the layers below
already re-solved), nothing but the FFNs changes, and the runs carry their own module in their key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pillm import experiments as ex
from pillm.model import landmark_keys
from pillm.studies.firstlayer import KINDS, FirstLayerSpec, execute, projections
from pillm.train import TrainConfig, landmark_inputs
from conftest import TINY_TRAIN, attn_then_pil_checkpoint

REPO = Path(__file__).resolve().parent.parent
TRAIN = TINY_TRAIN


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny attention→PIL model (Bi-PIL, expansion 4) trained on a WikiText-2 slice."""
    return attn_then_pil_checkpoint(tmp_path_factory)


def _inputs(n=4096, c=16, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(c, c, generator=g) * torch.linspace(0.1, 3.0, c)  # correlated, unequal variances
    return torch.randn(n, c, generator=g) @ mix + 0.5


@pytest.mark.parametrize("kind", ["random", "landmarks", "whitened", "pca", "autoencoder", "mixed"])
def test_every_kind_gives_unit_scaled_preactivations(kind):
    u = _inputs()
    ws = projections(kind, u, m=32, count=2, scale=1.5, generator=torch.Generator().manual_seed(1))
    assert len(ws) == 2 and all(w.shape == (16, 32) for w in ws)
    for w in ws:
        assert torch.allclose((u @ w).std(dim=0), torch.full((32,), 1.5), rtol=1e-3)


def test_each_kind_is_built_from_what_it_claims():
    u, g = _inputs(), torch.Generator().manual_seed(1)
    m = 32
    # landmarks: columns are the sampled inputs themselves, less the inputs' mean (unit-normalised, then scaled)
    lm = projections("landmarks", u, m, 1, 1.0, g)[0]
    centred = torch.nn.functional.normalize(u[:m] - u.mean(0), dim=1)
    assert torch.allclose(torch.nn.functional.normalize(lm.T, dim=1), centred, atol=1e-5)
    # autoencoder: columns solve (UᵀU/n + εI) w = u_j, i.e. rows of the ridge pseudoinverse
    enc = projections("autoencoder", u, m, 1, 1.0, g)[0]
    gram = u.T @ u / u.shape[0]
    back = gram @ enc + 1e-3 * gram.diagonal().mean() * enc
    assert torch.allclose(torch.nn.functional.normalize(back.T, dim=1), torch.nn.functional.normalize(u[:m], dim=1),
                          atol=1e-4)
    # whitened: M^{1/2}·w points in isotropic random directions (w = M^{-1/2} r, M = UᵀU/n); not so for raw w
    evals, evecs = torch.linalg.eigh(u.T @ u / u.shape[0])
    root = evecs @ torch.diag(evals.sqrt()) @ evecs.T

    def spread(w):  # condition number of the second moment of the unit directions M^{1/2}·w
        d = torch.nn.functional.normalize((root @ w).T, dim=1)
        return float(torch.linalg.cond(d.T @ d))

    wh = projections("whitened", u, 4096, 1, 1.0, torch.Generator().manual_seed(2))[0]
    raw = projections("random", u, 4096, 1, 1.0, torch.Generator().manual_seed(2))[0]
    assert spread(wh) < 1.5 < 10 < spread(raw)
    # pca: the directions lie in the span of the top-k eigenvectors, k the fewest holding 90% of the moment
    pc = projections("pca", u, m, 1, 1.0, g)[0]
    share = evals.flip(0).cumsum(0) / evals.sum()
    k = int((share < 0.9).sum()) + 1
    assert 1 <= k < u.shape[1]
    outside = evecs[:, :-k].T @ pc  # components along the other eigenvectors
    assert float(outside.norm() / pc.norm()) < 1e-4
    # mixed, two projections: one random, one of landmarks
    mixed = projections("mixed", u, m, 2, 1.0, g)
    assert torch.allclose(torch.nn.functional.normalize(mixed[1].T, dim=1), centred, atol=1e-5)


def test_no_kind_turns_the_inputs_mean_into_a_constant_feature():
    """LayerNorm-ed inputs (γ, β ≠ 0) have a nonzero mean and a nearly null direction; whitening them
    about their mean would make most pre-activations a large constant (GELU then acts linearly)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8192, 64, generator=g) @ torch.randn(64, 64, generator=g)
    u = torch.nn.functional.layer_norm(x, (64,)) * (1 + 0.5 * torch.randn(64, generator=g)) + 0.5 * torch.randn(64, generator=g)
    for kind in ("random", "whitened", "pca", "autoencoder", "mixed"):
        for w in projections(kind, u, 256, 2, 1.0, torch.Generator().manual_seed(1)):
            z = u @ w
            assert float((z.mean(0).abs() / z.std(0)).median()) < 1.0, kind


def test_a_single_projection_mixes_random_and_landmark_columns():
    u = _inputs()
    w = projections("mixed", u, 32, 1, 1.0, torch.Generator().manual_seed(1))[0]
    keys = torch.nn.functional.normalize(u[:16] - u.mean(0), dim=1)  # centred landmarks
    assert torch.allclose(torch.nn.functional.normalize(w[:, 16:].T, dim=1), keys, atol=1e-5)
    assert not torch.allclose(torch.nn.functional.normalize(w[:, :16].T, dim=1), keys, atol=1e-2)


def test_only_attention_then_pil_checkpoints_are_accepted(tmp_path):
    (tmp_path / "config.json").write_text('{"model": {}, "method": "pil_then_attn"}')
    with pytest.raises(ValueError, match="pretrain with method='attn_then_pil'"):
        execute(FirstLayerSpec(checkpoint=str(tmp_path), projection="random"), progress=False)


def test_too_few_inputs_for_keys_say_so():
    with pytest.raises(ValueError, match="need at least 64 input rows"):
        projections("landmarks", _inputs(n=40), 32, 2, 1.0, torch.Generator())
    with pytest.raises(ValueError, match="projection must be one of"):
        FirstLayerSpec(checkpoint="x", projection="kmeans")
    with pytest.raises(ValueError, match="expansion must be at least 1"):
        ex.make_first_layer_run("r", checkpoint="x", expansion=0.5)


@pytest.mark.slow
def test_same_projections_reproduce_the_checkpoint_and_only_ffns_change(checkpoint):
    result, model = execute(FirstLayerSpec(checkpoint=str(checkpoint), projection="same", train=TRAIN),
                            progress=False)
    assert result["optimizer_steps"] == 0
    assert result["test_ppl"] == pytest.approx(result["before"]["test_ppl"], rel=1e-6)
    _, wider = execute(FirstLayerSpec(checkpoint=str(checkpoint), projection="whitened", expansion=1, train=TRAIN),
                       progress=False)
    old = {k: v for k, v in model.state_dict().items() if ".ffn." not in k}
    assert all(torch.equal(v, wider.state_dict()[k]) for k, v in old.items())  # embeddings, attention, norms
    assert wider.config.expansion == 1.0 and wider.blocks[0].ffn.features.proj_fwd.shape == (64, 64)
    with pytest.raises(ValueError, match="'same' keeps the checkpoint's width"):
        execute(FirstLayerSpec(checkpoint=str(checkpoint), projection="same", expansion=1, train=TRAIN), progress=False)


@pytest.mark.slow
def test_keys_are_drawn_from_fresh_inputs(checkpoint):
    """Layer 1's landmarks must come from its inputs with layer 0 already re-solved: recomputing them
    from the final model gives the same keys, which would not be so for inputs sampled before."""
    result, model = execute(FirstLayerSpec(checkpoint=str(checkpoint), projection="landmarks", expansion=1,
                                           train=TRAIN), progress=False)
    corpus_train = _train_stream(model)
    cfg = TrainConfig(method="attn_then_pil", **TRAIN)
    feats = model.blocks[1].ffn.features
    u = landmark_inputs(model, 1, corpus_train, cfg)
    m = feats.proj_fwd.shape[1]
    keys = landmark_keys(u[:m], u).T
    assert torch.allclose(torch.nn.functional.normalize(feats.proj_fwd.T, dim=1), keys, atol=1e-5)
    # with layer 0's readout zeroed (its state before the re-solve) the inputs, hence the keys, differ
    model.blocks[0].ffn.out_weight.zero_()
    model.blocks[0].ffn.out_bias.zero_()
    u_stale = landmark_inputs(model, 1, corpus_train, cfg)
    stale = landmark_keys(u_stale[:m], u_stale).T
    assert not torch.allclose(stale, keys, atol=1e-3)


def _train_stream(model):
    from pillm.data import TokenStream, load_tokenized

    corpus = load_tokenized("wikitext2", "auto", max_train_tokens=TRAIN["max_train_tokens"])
    return TokenStream(corpus.train, "cpu")


def test_first_layer_keys_name_the_checkpoints_run(tmp_path):
    spec = ex.run_spec(ex.make_first_layer_run("a", checkpoint=str(tmp_path / "ckpt"), projection="pca", expansion=16))
    # the checkpoint enters the key through the run that wrote it, however the path is spelled
    run = tmp_path / "pretrain"
    (run / "checkpoint").mkdir(parents=True)
    (run / "run.json").write_text('{"key": "k1"}')
    by_dir, by_ckpt = (ex.run_key(ex.run_spec(ex.make_first_layer_run("d", checkpoint=str(c))))
                       for c in (run, run / "checkpoint"))
    assert by_dir == by_ckpt
    (run / "run.json").write_text('{"key": "k2"}')  # the checkpoint was retrained: its readers are stale
    assert ex.run_key(ex.run_spec(ex.make_first_layer_run("d", checkpoint=str(run)))) != by_dir
    narrow = ex.run_spec(ex.make_first_layer_run("c", checkpoint=str(tmp_path / "ckpt"), projection="pca"))
    assert ex.expected_cost(spec) > ex.expected_cost(narrow)  # the 16x runs start first


def test_the_report_orders_projections_as_the_module_lists_them():
    from pillm import report

    assert report.PROJECTION_ORDER == KINDS
