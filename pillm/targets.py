"""Regression targets ``Y`` for the FFN of block ``l``.

The FFN reads ``u = LN₂(x_mid)`` where ``x_mid = x + Attn(LN₁ x)`` and writes an update added to
the residual stream, ``f = x_mid + FFN(u)``. A target says what that update should be. Every
strategy returns it in the form

    Y(η) = Y₀ − η·Δ        (Y₀, Δ: [N, C])

so that one streaming pass accumulates ``Hᵀ[Y₀ | Δ]`` and the solution for any step size is
``W(η) = W₀ − η·W_Δ`` (ridge is linear in ``Y``). The step size η is then chosen by a cheap 1-D
search on a validation slice with forward passes only (see :func:`pillm.train.solve_layer`).

============================  ================================================================
``local``                     ``Y₀`` = current FFN output, ``Δ = ∂CE/∂f`` through the final
                              LayerNorm and the tied head at this block (an early exit): a
                              layer-local error signal, no backprop through other blocks
``global``                    the same with ``Δ = ∂L/∂f`` of the full network loss (backprop to
                              activations only, never to FFN weights): gradient-informed
``next_embedding``            ``Y = β·(e_next − x_mid)``: move the residual toward the next
                              token's embedding (naive target propagation), β searched as η
``teacher``                   ``Y₀`` = the FFN output of a trained ``mlp`` model at the same layer
                              on the same tokens (distillation; capacity probe); no search
``zero``                      ``Y = 0``: reproduces the attention-only model exactly
============================  ================================================================

Losses use ``reduction="sum"`` so that ``Δ`` is the per-token gradient, not one divided by the
batch size, and ignore positions whose next token is ``IGNORE_INDEX`` (padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import IGNORE_INDEX, PILLM

TARGETS = ("local", "global", "next_embedding", "teacher", "zero")
SEARCHED = ("local", "global", "next_embedding")  # targets whose step size is chosen on validation


def check_target(name: str) -> None:
    if name not in TARGETS:
        raise ValueError(f"target={name!r} is not valid; allowed values: {', '.join(TARGETS)}")


@dataclass
class LayerData:
    """One batch, one layer: features and the two target components (rows flattened)."""

    features: torch.Tensor  # H  [N, M]
    base: torch.Tensor  # Y₀ [N, C]
    step: torch.Tensor  # Δ  [N, C]
    mask: torch.Tensor  # [N] bool, False where the next token is padding


def layer_data(model: PILLM, layer: int, ids: torch.Tensor, next_ids: torch.Tensor, target: str,
               teacher: PILLM | None = None) -> LayerData:
    """Features and targets for block ``layer`` on a batch ``ids [B, T]`` with labels ``next_ids``.

    Activations are computed with the model as it is *now*, so lower layers that were already
    solved are used with their solved weights (no stale inputs).
    """
    check_target(target)
    block = model.blocks[layer]
    if block.ffn is None or not hasattr(block.ffn, "features"):
        raise ValueError(f"block {layer} has FFN kind {model.config.ffn!r}; only pil/bipil/rf_adamw layers are solved")
    mask = (next_ids != IGNORE_INDEX).reshape(-1)
    with torch.no_grad():
        x_mid = block.attend(model.residual_before(ids, layer))
        feats = block.ffn.features(block.ln2(x_mid))
        current = feats @ block.ffn.out_weight + block.ffn.out_bias  # Y₀: the layer's output now
    c = x_mid.shape[-1]
    zeros = torch.zeros_like(x_mid)

    if target == "zero":
        base, step = zeros, zeros
    elif target in ("local", "global"):  # local: the head right after this block (an early exit)
        f = (x_mid + current).detach().requires_grad_(True)
        logits = model.forward_from(f, layer + 1) if target == "global" else model.head(f)
        loss = F.cross_entropy(logits.flatten(0, 1), next_ids.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
        (grad,) = torch.autograd.grad(loss, f)
        base, step = current, grad
    elif target == "next_embedding":
        with torch.no_grad():
            e_next = model.tok_emb(next_ids.clamp_min(0))
        base, step = zeros, -(e_next - x_mid)  # Y = β·(e_next − x_mid) = 0 − β·Δ
    else:  # teacher
        if teacher is None:
            raise ValueError("target='teacher' needs a trained mlp teacher model (pass teacher=...)")
        if teacher.config.ffn != "mlp" or teacher.config.n_layer != model.config.n_layer:
            raise ValueError("the teacher must be an 'mlp' model with the same number of layers")
        t_block = teacher.blocks[layer]
        with torch.no_grad():
            t_mid = t_block.attend(teacher.residual_before(ids, layer))
            base, step = t_block.ffn(t_block.ln2(t_mid)), zeros

    return LayerData(features=feats.reshape(-1, feats.shape[-1]), base=base.detach().reshape(-1, c),
                     step=step.detach().reshape(-1, c), mask=mask)
