"""Model: configuration errors, FFN kinds, fusion wiring, GELU regime, parameter counting."""

import math

import pytest
import torch
import torch.nn.functional as F

from pillm.model import FFN_KINDS, FUSIONS, PILLM, ModelConfig, config_for


def tiny(**kw) -> ModelConfig:
    return config_for("tiny", **{"vocab_size": 50, "block_size": 16, "dropout": 0.0, **kw})


@pytest.mark.parametrize("kind", FFN_KINDS)
def test_forward_shapes_and_causality(kind):
    torch.manual_seed(0)
    model = PILLM(tiny(ffn=kind)).eval()
    ids = torch.randint(0, 50, (2, 16))
    logits = model(ids)
    assert logits.shape == (2, 16, 50)
    changed = ids.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 50
    # Future tokens must not change earlier predictions.
    torch.testing.assert_close(model(changed)[:, :10], logits[:, :10])


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("n_head", 3, "divisible"),
        ("expansion", 0.5, "expansion"),
        ("ffn", "transformer", "ffn="),
        ("fusion", "product", "fusion="),
        ("dropout", 1.0, "dropout"),
    ],
)
def test_invalid_config_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        tiny(**{field: value})


def test_unknown_size_lists_presets():
    with pytest.raises(ValueError, match="tiny, small, medium, large"):
        config_for("huge")


def test_presets_match_the_paper():
    assert (config_for("small").n_layer, config_for("small").n_embd, config_for("small").n_head) == (4, 256, 4)
    assert (config_for("medium").n_layer, config_for("medium").n_embd, config_for("medium").n_head) == (6, 384, 6)
    assert (config_for("large").n_layer, config_for("large").n_embd, config_for("large").n_head) == (8, 512, 8)


def test_tied_embeddings():
    model = PILLM(tiny())
    ids = torch.randint(0, 50, (1, 4))
    x = model.embed(ids)
    expected = model.ln_f(x) @ model.tok_emb.weight.T
    torch.testing.assert_close(model.head(x), expected)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fusion_reaches_the_layer(fusion):
    """Pitfall: a fusion option that was never passed through to the layer."""
    cfg = tiny(ffn="bipil", fusion=fusion)
    model = PILLM(cfg)
    feats = model.blocks[0].ffn.features
    assert feats.fusion == fusion
    m = cfg.hidden
    assert feats.n_features == (2 * m if fusion == "concat" else m)
    u = F.layer_norm(torch.randn(7, cfg.n_embd), (cfg.n_embd,))
    h_f, z_b = F.gelu(u @ feats.proj_fwd), u @ feats.proj_bwd
    expected = {"concat": torch.cat([h_f, F.gelu(z_b)], -1), "sum": h_f + F.gelu(z_b),
                "gate": h_f * torch.sigmoid(z_b)}[fusion]
    torch.testing.assert_close(feats(u), expected)


def test_bipil_projections_are_independent():
    feats = PILLM(tiny(ffn="bipil")).blocks[0].ffn.features
    assert not torch.allclose(feats.proj_fwd, feats.proj_bwd)


def test_random_projection_keeps_gelu_nonlinear():
    """Pitfall: projections scaled so small that GELU is linear (random features collapse)."""
    torch.manual_seed(0)
    cfg = config_for("small", vocab_size=50, ffn="pil")
    feats = PILLM(cfg).blocks[0].ffn.features
    u = F.layer_norm(torch.randn(4096, cfg.n_embd), (cfg.n_embd,))
    z = u @ feats.proj_fwd
    assert 0.8 < z.var().item() < 1.25  # unit variance pre-activations
    h = feats(u)

    def linear_r2(pre, post):
        pre, post = pre.reshape(-1, 1).double(), post.reshape(-1, 1).double()  # float32 lstsq over 4M rows drifts
        x = torch.cat([pre, torch.ones_like(pre)], 1)
        resid = post - x @ torch.linalg.lstsq(x, post).solution
        return 1 - (resid.var() / post.var()).item()

    assert linear_r2(z, h) < 0.85  # GELU in its curved regime
    # the same check flags the pitfall (1/M scaling of an earlier implementation) as linear
    tiny_z = z / cfg.hidden * math.sqrt(cfg.n_embd)
    assert linear_r2(tiny_z, F.gelu(tiny_z)) > 0.99


def _numel_unique(model):
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel()
    return total


@pytest.mark.parametrize("kind", FFN_KINDS)
def test_parameter_counts_cover_every_tensor(kind):
    """Pitfall: PIL weights stored as buffers and left out of parameter counts."""
    cfg = tiny(ffn=kind)
    model = PILLM(cfg)
    counts = model.parameter_counts()
    assert counts["total"] == _numel_unique(model)  # every parameter and buffer, the tied head once
    c, m, L = cfg.n_embd, cfg.hidden, cfg.n_layer
    assert counts["embedding"] == cfg.vocab_size * c + cfg.block_size * c
    if kind == "pil":
        assert counts["ffn_solved"] == L * (m * c + c)
        assert counts["ffn_frozen_random"] == L * c * m
        assert counts["ffn_trainable"] == 0
    if kind == "bipil":
        assert counts["ffn_solved"] == L * (2 * m * c + c)
        assert counts["ffn_frozen_random"] == L * 2 * c * m
    if kind == "rf_adamw":
        assert counts["ffn_trainable"] == L * (m * c + c) and counts["ffn_solved"] == 0
    if kind == "mlp":
        assert counts["ffn_trainable"] == L * (2 * m * c + m + c)
    if kind == "lora":
        assert counts["ffn_frozen_random"] == L * 2 * c * m and counts["ffn_solved"] == 0
    if kind == "none":
        assert counts["ffn_trainable"] == counts["ffn_solved"] == counts["ffn_frozen_random"] == 0


def test_solved_head_is_counted():
    model = PILLM(tiny(ffn="pil", head="solved"))
    assert model.parameter_counts()["head_solved"] == 64 * 50 + 50 + 50  # weight, bias, unigram


def test_unigram_mixture_head_gives_normalised_log_probabilities():
    model = PILLM(tiny(ffn="pil", head="solved")).eval()
    with torch.no_grad():
        model.head_weight.normal_()
        model.head_log_unigram.copy_(torch.randn(50).log_softmax(-1))
        model.head_mix.fill_(0.25)
        ids = torch.randint(0, 50, (2, 8))
        logp = model(ids)
        torch.testing.assert_close(logp.exp().sum(-1), torch.ones(2, 8))
        # the mixture is exactly (1 − α)·softmax + α·unigram
        model.head_mix.fill_(0.0)
        p = model(ids).softmax(-1)
        torch.testing.assert_close(logp.exp(), 0.75 * p + 0.25 * model.head_log_unigram.exp(), rtol=1e-5, atol=1e-6)


def test_pil_weights_are_parameters_without_gradients():
    ffn = PILLM(tiny(ffn="pil")).blocks[0].ffn
    names = dict(ffn.named_parameters())
    assert set(names) == {"out_weight", "out_bias"}
    assert not any(p.requires_grad for p in names.values())
    assert {"features.proj_fwd"} <= set(dict(ffn.named_buffers()))
    rf = PILLM(tiny(ffn="rf_adamw")).blocks[0].ffn
    assert all(p.requires_grad for p in rf.parameters())


def test_unsolved_pil_layer_is_identity_on_the_residual():
    torch.manual_seed(0)
    pil = PILLM(tiny(ffn="pil")).eval()
    torch.manual_seed(0)
    attn = PILLM(tiny(ffn="none")).eval()
    attn.load_state_dict({k: v for k, v in pil.state_dict().items() if ".ffn." not in k})
    ids = torch.randint(0, 50, (2, 16))
    torch.testing.assert_close(pil(ids), attn(ids))


def test_every_ffn_kind_starts_from_the_same_embeddings_and_attention():
    """At one seed the methods differ only in their FFNs: comparisons by seed are paired."""
    shared = {}
    for kind in FFN_KINDS:
        torch.manual_seed(3)
        model = PILLM(tiny(ffn=kind))
        state = {k: v for k, v in model.state_dict().items() if ".ffn." not in k}
        assert any(".attn." in k for k in state) and "tok_emb.weight" in state
        for k, v in state.items():
            torch.testing.assert_close(v, shared.setdefault(k, v), rtol=0, atol=0, msg=f"{kind}: {k}")
        draw = torch.randn(())  # the global generator is left where the FFN kind does not matter
        torch.testing.assert_close(draw, shared.setdefault("next draw", draw), rtol=0, atol=0)
    torch.manual_seed(4)
    other = PILLM(tiny(ffn="pil"))
    assert not torch.equal(other.tok_emb.weight, shared["tok_emb.weight"])  # the seed still matters


def test_ffn_projections_follow_the_seed_and_the_layer():
    torch.manual_seed(0)
    a = PILLM(tiny(ffn="bipil"))
    b = PILLM(tiny(ffn="bipil"), seed=0)
    c = PILLM(tiny(ffn="bipil"), seed=1)
    fa, fb, fc = (m.blocks[0].ffn.features.proj_fwd for m in (a, b, c))
    assert torch.equal(fa, fb) and not torch.equal(fa, fc)
    assert not torch.equal(a.blocks[0].ffn.features.proj_fwd, a.blocks[1].ffn.features.proj_fwd)
    # the pil features equal rf_adamw's: the two differ only in how the readout is fitted
    torch.manual_seed(0)
    assert torch.equal(PILLM(tiny(ffn="pil")).blocks[1].ffn.features.proj_fwd,
                       PILLM(tiny(ffn="rf_adamw"), seed=0).blocks[1].ffn.features.proj_fwd)


def test_an_unsolved_ffn_costs_nothing_in_the_forward(monkeypatch):
    """A closed-form FFN whose readout is still zero is skipped; once solved it is computed."""
    from pillm.model import RandomFeatures

    calls = []
    original = RandomFeatures.forward
    monkeypatch.setattr(RandomFeatures, "forward", lambda self, u: calls.append(1) or original(self, u))
    torch.manual_seed(0)
    model = PILLM(tiny(ffn="bipil")).eval()
    ids = torch.randint(0, 50, (2, 16))
    skipped = model(ids)
    assert calls == []
    for block in model.blocks:  # the computed path adds exactly zero
        block.ffn.set_solution(torch.zeros_like(block.ffn.out_weight), None)
    torch.testing.assert_close(model(ids), skipped, rtol=0, atol=0)
    assert len(calls) == len(model.blocks)
    # a trained readout is never skipped, and a loaded one is computed
    torch.manual_seed(0)
    rf = PILLM(tiny(ffn="rf_adamw"))
    assert all(b.ffn_active for b in rf.blocks)
    fresh = PILLM(tiny(ffn="bipil"))
    assert not any(b.ffn_active for b in fresh.blocks)
    fresh.load_state_dict(model.state_dict())
    assert all(b.ffn_active for b in fresh.blocks)


def test_landmark_keys_are_centred():
    """Inputs sharing a common component μ (a LayerNorm bias): an uncentred key points along μ, so its
    pre-activations sit far from zero (about ‖μ‖ standard deviations); a centred key sees μ only as a
    random direction does (about one per-coordinate size of μ)."""
    from pillm.model import landmark_keys

    g = torch.Generator().manual_seed(0)
    u = torch.randn(2048, 256, generator=g) + 1.0  # μ = 1 in every coordinate, ‖μ‖ = 16
    offset = lambda z: (z.mean(0).abs() / z.std(0)).median()  # noqa: E731
    assert offset(u @ landmark_keys(u[:64], u)) < 1.5
    assert offset(u @ F.normalize(u[:64], dim=1).T) > 5.0
