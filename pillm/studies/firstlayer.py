"""First layers better than random, still in closed form.

A model trained by attention→PIL (a run that kept its checkpoint) gets new FFN projections of one
kind, optionally a wider feature map, and every readout is re-solved bottom-up as in its own
closed-form phase (:mod:`pillm.studies.resolve`). Each layer's projections are drawn from that layer's
LayerNorm-ed inputs *after* the layers below were re-solved (fresh inputs, never stale ones).

Projection kinds; every projection column is scaled so that its pre-activations over the sampled
inputs have standard deviation ``proj_scale``, as the random projections do:

``same``         the checkpoint's own projections: a control that reproduces the checkpoint's solve
``random``       fresh Gaussian directions
``landmarks``    sampled inputs of the layer as keys (Nyström-style; the FFN as a key-value memory)
``whitened``     random directions in the whitened input space, ``(UᵀU/n)^{-1/2} r``
``pca``          random directions in the principal subspace holding 90% of the inputs' second moment,
                 whitened
``autoencoder``  the encoder of a PIL autoencoder: columns of the inputs' ridge pseudoinverse,
                 ``(UᵀU/n + εI)^{-1} u_j`` (landmarks in the inputs' Mahalanobis geometry)
``mixed``        half random, half landmarks (Bi-PIL: one projection of each)

    pillm experiments --profile paper --only first_layer     # notebooks/first_layer.ipynb
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..model import PILLM, SolvedFFN, ffn_generator, landmark_keys, landmark_projections, scaled_to
from ..train import landmark_inputs, solve_layer
from .resolve import ResolveSpec, finish, open_checkpoint, timed_resolve

KINDS = ("same", "random", "landmarks", "whitened", "pca", "autoencoder", "mixed")
PCA_VARIANCE = 0.9  # the principal subspace of ``pca`` keeps this share of the input variance


@dataclass
class FirstLayerSpec(ResolveSpec):
    """One run: which attention→PIL checkpoint, which projections, how many features per projection."""

    checkpoint: str  # a run directory's checkpoint/ (written with save_checkpoint=True)
    projection: str = "random"
    expansion: float | None = None  # features per projection / n_embd; None keeps the checkpoint's
    dataset: str = "wikitext2"  # the data the checkpoint was trained on (its tokenizer reads it)
    tokenizer: str = "auto"
    train: dict = field(default_factory=dict)  # TrainConfig overrides (lam, search_tokens, seed, device, …)

    def __post_init__(self) -> None:
        if self.projection not in KINDS:
            raise ValueError(f"projection must be one of {KINDS}, not {self.projection!r}")
        if self.expansion is not None and self.expansion < 1:
            raise ValueError(f"expansion must be at least 1 (features per projection / n_embd), not {self.expansion}")


def projections(kind: str, u: torch.Tensor, m: int, count: int, scale: float,
                generator: torch.Generator) -> list[torch.Tensor]:
    """``count`` projections ``[C, m]`` of ``kind`` from the layer's sampled inputs ``u [n, C]``
    (``n ≥ count·m`` rows for the kinds that use inputs as keys)."""
    u = u.float()
    n, c = u.shape
    gauss = lambda rows: torch.randn(rows, m, generator=generator).to(u.device)  # noqa: E731
    if kind == "random":
        return [scaled_to(gauss(c), u, scale) for _ in range(count)]
    if kind == "mixed":  # one random and one landmark projection (a single one: half each)
        if count == 1:
            half = m // 2
            keys = landmark_keys(u[:m - half], u)
            return [scaled_to(torch.cat([gauss(c)[:, :half], keys], dim=1), u, scale)]
        return [scaled_to(gauss(c), u, scale)] + projections("landmarks", u, m, count - 1, scale, generator)
    if kind == "landmarks":
        return landmark_projections(u, m, count, scale)
    # Second moments about zero, not about the mean: the feature map u ↦ φ(u·w) has no bias, so a direction
    # whitened about the mean would turn the inputs' mean into a large constant in every pre-activation.
    gram = u.T @ u / n
    if kind == "autoencoder":
        if n < count * m:
            raise ValueError(f"need at least {count * m} input rows for the encoder, got {n}")
        ridge = gram + 1e-3 * gram.diagonal().mean() * torch.eye(c, device=u.device)
        enc = torch.linalg.solve(ridge, u[:count * m].T)  # [C, count·m]: rows of the ridge pseudoinverse
        return [scaled_to(enc[:, i * m:(i + 1) * m], u, scale) for i in range(count)]
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    keep = evals > 1e-5 * float(evals[-1])  # LayerNorm-ed inputs can have an (almost) null direction: left out
    evals, evecs = evals[keep], evecs[:, keep]
    if kind == "whitened":
        root = evecs @ torch.diag(evals.rsqrt()) @ evecs.T  # (UᵀU/n)^{-1/2}, pseudo-inverse root
        return [scaled_to(root @ gauss(c), u, scale) for _ in range(count)]
    if kind == "pca":
        share = evals.flip(0).cumsum(0) / evals.sum()
        k = int((share < PCA_VARIANCE).sum()) + 1
        basis = evecs[:, -k:] * evals[-k:].rsqrt()  # [C, k]: the top-k directions, whitened
        return [scaled_to(basis @ gauss(k), u, scale) for _ in range(count)]
    raise ValueError(f"unknown projection kind {kind!r}; choose from {KINDS}")


def widen(model: PILLM, expansion: float, seed: int) -> None:
    """Replace every solved FFN by one with ``expansion · n_embd`` features per projection (fresh
    random projections drawn as the model draws them at ``seed``, zero readout); the rest is kept."""
    cfg = dataclasses.replace(model.config, expansion=float(expansion))
    device = next(model.parameters()).device
    for i, block in enumerate(model.blocks):
        if isinstance(block.ffn, SolvedFFN):
            block.ffn = SolvedFFN(cfg, ffn_generator(seed, i)).to(device)
    model.config = cfg


def execute(spec: FirstLayerSpec, out: str | Path | None = None, *, progress: bool = True) -> tuple[dict, PILLM]:
    """Re-solve ``spec.checkpoint``'s FFNs with ``spec.projection`` projections; writes ``out/result.json``."""
    r = open_checkpoint(spec.checkpoint, spec.dataset, spec.tokenizer, spec.train, "first-layer")
    model, cfg = r.model, r.cfg
    if spec.projection == "same" and spec.expansion not in (None, model.config.expansion):
        raise ValueError(f"projection 'same' keeps the checkpoint's width (expansion {model.config.expansion}); "
                         f"drop expansion={spec.expansion} or choose another projection")
    if spec.expansion not in (None, model.config.expansion):
        widen(model, spec.expansion, cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)

    def solve_one(layer: int) -> dict:
        if spec.projection != "same":
            u = landmark_inputs(model, layer, r.train, cfg)
            model.blocks[layer].ffn.features.set_projections(
                lambda m, count: projections(spec.projection, u, m, count, model.config.proj_scale, generator))
        return solve_layer(model, layer, r.train, r.search, cfg, cfg.target, None, progress)

    log, solve_s = timed_resolve(r, solve_one, "first_layer")
    result = finish(r, spec, "first_layer", log, solve_s, out, projection=spec.projection,
                    expansion=model.config.expansion)
    return result, model


__all__ = ["FirstLayerSpec", "KINDS", "execute", "projections", "widen"]
