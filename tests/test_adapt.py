"""Adaptation runs (pillm/studies/adapt.py): LoRA adapters start as the identity change and train alone,
specs are validated, and adaptation keys carry their own module without moving every other key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pillm import experiments as ex
from pillm.studies.adapt import AdaptSpec, LoRALinear, add_attention_lora
from pillm.model import PILLM, config_for

REPO = Path(__file__).resolve().parent.parent


def test_lora_starts_at_the_pretrained_model_and_trains_only_adapters():
    torch.manual_seed(0)
    model = PILLM(config_for("tiny", vocab_size=50, ffn="pil")).eval()
    x = torch.randint(0, 50, (2, 8))
    before = model(x)
    add_attention_lora(model, rank=2)
    assert torch.allclose(model(x), before)  # B = 0: no change until trained
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".a", ".b")) and ".attn." in n for n in trainable)
    assert all(isinstance(b.attn.qkv, LoRALinear) and isinstance(b.attn.proj, LoRALinear) for b in model.blocks)
    layer = model.blocks[0].attn.qkv
    assert layer.a.shape == (2, layer.base.in_features) and layer.b.shape == (layer.base.out_features, 2)


def test_adapt_spec_says_what_is_wrong():
    with pytest.raises(ValueError, match="domain must be one of"):
        AdaptSpec(checkpoint="x", domain="wiki")
    with pytest.raises(ValueError, match="how must be one of"):
        AdaptSpec(checkpoint="x", how="distill")
    with pytest.raises(ValueError, match="lora_rank"):
        AdaptSpec(checkpoint="x", how="lora", lora_rank=0)
    with pytest.raises(ValueError, match="how must be one of"):
        ex.make_adapt_run("r", checkpoint="x", how="nope")


def test_adaptation_keys(tmp_path):
    """Adaptation runs are keyed by their spec: another domain is another run."""
    run = ex.make_adapt_run("a", checkpoint=str(tmp_path / "ckpt"), domain="ptb", how="resolve", train={"epochs": 1})
    spec = ex.run_spec(run)
    assert isinstance(spec, AdaptSpec)
    other = ex.run_spec(ex.make_adapt_run("b", checkpoint=str(tmp_path / "ckpt"), domain="tinystories",
                                          how="resolve", train={"epochs": 1}))
    assert ex.run_key(other) != ex.run_key(spec)
    assert ex.expected_cost(spec) == 1.0
