"""Fixed-attention pure PIL (pillm/studies/fixedattn.py): the position code is exactly shift-equivariant, a ``prevK``
head attends to the token K back, an ``avg`` head averages the causal context, attention writes only into the
token coordinates, bad head lists are refused, no optimizer step is taken, and the runs carry their own
module in their key."""

from __future__ import annotations

import math

import pytest
import torch

from pillm import experiments as ex
from pillm.studies.fixedattn import FixedAttentionSpec, execute, fix_attention, position_codes, shift
from pillm.model import PILLM, config_for

TRAIN = {"max_train_tokens": 2048, "max_eval_tokens": 1024, "search_tokens": 128, "eval_every_epoch": False,
         "device": "cpu", "batch_size": 16}


def test_the_rotation_maps_each_code_to_the_one_k_positions_back():
    codes, omega = position_codes(64, 16, torch.Generator().manual_seed(0))
    for k in (1, 2, 5):
        assert torch.allclose(codes[k:] @ shift(omega, k).T, codes[:-k], atol=1e-12)
    dots = codes @ codes.T  # Σ_f cos ω_f (i − j): 8 on the diagonal, well below it elsewhere
    off = dots[~torch.eye(64, dtype=torch.bool)]
    assert torch.allclose(dots.diagonal(), torch.full((64,), 8.0, dtype=torch.float64))
    assert off.abs().max() < 0.75 * 8


def _weights(model, layer: int, ids: torch.Tensor) -> torch.Tensor:
    """Attention weights ``[B, H, T, T]`` of ``layer`` for ``ids``."""
    cfg = model.config
    with torch.no_grad():
        x = model.tok_emb(ids) + model.pos_emb(torch.arange(ids.shape[1]))
        for block in model.blocks[:layer]:
            x = block(x)
        q, k, _ = model.blocks[layer].attn.qkv(model.blocks[layer].ln1(x)).split(cfg.n_embd, dim=2)
    b, t, c = q.shape
    q, k = (z.view(b, t, cfg.n_head, -1).transpose(1, 2) for z in (q, k))
    logits = q @ k.transpose(-1, -2) / math.sqrt(c // cfg.n_head)
    return logits.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf")).softmax(-1)


@pytest.mark.parametrize("size, heads", [("tiny", ("prev1", "avg")), ("small", ("prev1", "prev3", "avg", "prev2"))])
def test_heads_attend_where_their_kind_says(size, heads):
    torch.manual_seed(0)
    model = PILLM(config_for(size, vocab_size=500, ffn="bipil")).eval()
    layout = fix_attention(model, heads, 12.0, torch.Generator().manual_seed(0))
    p, c = layout["pos_dim"], model.config.n_embd
    assert p == c // model.config.n_head
    assert model.tok_emb.weight[:, :p].abs().max() == 0 and model.pos_emb.weight[:, p:].abs().max() == 0
    assert model.blocks[0].attn.proj.weight[:p].abs().max() == 0  # attention never writes into the code
    ids = torch.randint(0, 500, (3, model.config.block_size))
    w = _weights(model, 0, ids)
    t = model.config.block_size
    for h, kind in enumerate(heads):
        if kind == "avg":
            assert torch.allclose(w[:, h], torch.ones(t, t).tril() / torch.arange(1, t + 1)[:, None], atol=1e-6)
        else:
            k = int(kind[4:])
            i = torch.arange(k, t)
            assert w[:, h, i, i - k].min() > 0.95


def test_bad_specs_say_what_to_change():
    with pytest.raises(ValueError, match="'prevK'"):
        FixedAttentionSpec(heads=("prev0", "avg"))
    with pytest.raises(ValueError, match="'prevK'"):
        ex.make_fixed_attention_run("r", heads=["next1"])
    with pytest.raises(ValueError, match="embed must be one of"):
        FixedAttentionSpec(embed="glove")
    with pytest.raises(ValueError, match="not train\\['embed_init'\\]"):
        FixedAttentionSpec(train={"embed_init": "ppmi"})
    with pytest.raises(ValueError, match="pure PIL"):
        FixedAttentionSpec(train={"method": "attn_then_pil"})
    model = PILLM(config_for("tiny", vocab_size=50, ffn="bipil"))
    with pytest.raises(ValueError, match="one per head"):
        fix_attention(model, ("prev1", "prev2", "avg"), 12.0, torch.Generator())


@pytest.mark.slow
def test_a_fixed_attention_run_is_pure_pil_on_the_fixed_heads():
    result, model = execute(FixedAttentionSpec(heads=("prev1", "avg"), size="tiny", embed="random", train=TRAIN),
                            progress=False)
    assert result["optimizer_steps"] == 0 and result["method"] == "pil_pure" and math.isfinite(result["test_ppl"])
    assert result["heads"] == ["prev1", "avg"] and result["layout"]["pos_dim"] == 32
    assert {s["layer"] for s in result["solves"]} == {0, 1}  # every FFN solved in closed form
    # the procedure changed only the FFN readouts: the heads are still the fixed ones
    ids = torch.randint(0, model.config.vocab_size, (2, model.config.block_size))
    i = torch.arange(1, model.config.block_size)
    assert _weights(model.cpu().eval(), 0, ids)[:, 0, i, i - 1].min() > 0.95


def test_fixed_attention_keys_name_the_heads():
    """Other heads are another run. (Editing fixedattn.py staling these runs only: test_experiments.)"""
    spec = ex.run_spec(ex.make_fixed_attention_run("a", heads=["prev1", "prev2", "prev3", "avg"]))
    assert isinstance(spec, FixedAttentionSpec)
    other = ex.run_spec(ex.make_fixed_attention_run("b", heads=["prev1", "avg", "avg", "avg"]))
    assert ex.run_key(other) != ex.run_key(spec)
