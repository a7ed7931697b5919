"""First layers better than random, still in closed form (issue 7, item 2).

A model trained by attention→PIL (a run that kept its checkpoint) gets new FFN projections of one
kind, optionally a wider feature map, and then every readout is re-solved bottom-up on its training
split as in its own closed-form phase: readouts zeroed first (so the base target is the zero output
of an unsolved layer), the checkpoint's target, λ and η grid (η chosen on validation). Each layer's projections are drawn
from that layer's LayerNorm-ed inputs *after* the layers below were re-solved (fresh inputs, never
stale ones). No optimizer step: embeddings and attention stay the checkpoint's.

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

Only these runs execute this module, so it is hashed into their run keys alone
(:func:`pillm.experiments.code_hash`).

    pillm experiments --profile paper --only first_layer     # notebooks/first_layer.ipynb
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import TokenStream, load_tokenized
from .evaluate import evaluate_stream
from .model import PILLM, SolvedFFN
from .run import environment, load, write_json_atomic
from .train import RunLog, TrainConfig, _search_windows, _set_landmarks, _sync, resolve_device, solve_layer

KINDS = ("same", "random", "landmarks", "whitened", "pca", "autoencoder", "mixed")
#: TrainConfig fields of the checkpoint's own solve that a first-layer run repeats unless its spec overrides them
_SOLVE_SETTINGS = ("lam", "eta_grid", "search_tokens", "max_train_tokens", "max_eval_tokens", "solve_batch_size",
                   "target", "seed")
PCA_VARIANCE = 0.9  # the principal subspace of ``pca`` keeps this share of the input variance


@dataclass
class FirstLayerSpec:
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

    def config(self) -> TrainConfig:
        # attention→PIL: the procedure whose closed-form phase this run repeats
        return TrainConfig(**{"method": "attn_then_pil", **self.train})


def _scaled(w: torch.Tensor, u: torch.Tensor, scale: float) -> torch.Tensor:
    """``w [C, M]`` with each column scaled so that ``u @ w`` has standard deviation ``scale``."""
    return w * (scale / (u @ w).std(dim=0).clamp_min(1e-6))


def projections(kind: str, u: torch.Tensor, m: int, count: int, scale: float,
                generator: torch.Generator) -> list[torch.Tensor]:
    """``count`` projections ``[C, m]`` of ``kind`` from the layer's sampled inputs ``u [n, C]``
    (``n ≥ count·m`` rows for the kinds that use inputs as keys)."""
    u = u.float()
    n, c = u.shape
    gauss = lambda rows: torch.randn(rows, m, generator=generator).to(u.device)  # noqa: E731
    if kind == "random":
        return [_scaled(gauss(c), u, scale) for _ in range(count)]
    if kind == "mixed":  # one random and one landmark projection (a single one: half each)
        if count == 1:
            half = m // 2
            keys = F.normalize(u[:m - half], dim=1).T
            return [_scaled(torch.cat([gauss(c)[:, :half], keys], dim=1), u, scale)]
        return [_scaled(gauss(c), u, scale)] + projections("landmarks", u, m, count - 1, scale, generator)
    if kind == "landmarks":
        if n < count * m:
            raise ValueError(f"need at least {count * m} input rows for the landmarks, got {n}")
        return [_scaled(F.normalize(u[i * m:(i + 1) * m], dim=1).T, u, scale) for i in range(count)]
    # Second moments about zero, not about the mean: the feature map u ↦ φ(u·w) has no bias, so a direction
    # whitened about the mean would turn the inputs' mean into a large constant in every pre-activation.
    gram = u.T @ u / n
    if kind == "autoencoder":
        if n < count * m:
            raise ValueError(f"need at least {count * m} input rows for the encoder, got {n}")
        ridge = gram + 1e-3 * gram.diagonal().mean() * torch.eye(c, device=u.device)
        enc = torch.linalg.solve(ridge, u[:count * m].T)  # [C, count·m]: rows of the ridge pseudoinverse
        return [_scaled(enc[:, i * m:(i + 1) * m], u, scale) for i in range(count)]
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    keep = evals > 1e-5 * float(evals[-1])  # LayerNorm-ed inputs can have an (almost) null direction: left out
    evals, evecs = evals[keep], evecs[:, keep]
    if kind == "whitened":
        root = evecs @ torch.diag(evals.rsqrt()) @ evecs.T  # (UᵀU/n)^{-1/2}, pseudo-inverse root
        return [_scaled(root @ gauss(c), u, scale) for _ in range(count)]
    if kind == "pca":
        share = evals.flip(0).cumsum(0) / evals.sum()
        k = int((share < PCA_VARIANCE).sum()) + 1
        basis = evecs[:, -k:] * evals[-k:].rsqrt()  # [C, k]: the top-k directions, whitened
        return [_scaled(basis @ gauss(k), u, scale) for _ in range(count)]
    raise ValueError(f"unknown projection kind {kind!r}; choose from {KINDS}")


@torch.no_grad()
def layer_inputs(model: PILLM, layer: int, train: TokenStream, cfg: TrainConfig) -> torch.Tensor:
    """The layer's LayerNorm-ed inputs ``[n, C]`` sampled exactly as ``proj_init='landmarks'`` samples
    them (:func:`pillm.train._set_landmarks`, with the layers below as they are now). Its sampling is
    reused by capturing what it passes to ``set_landmarks`` rather than copied: train.py is part of
    every run's key, so it is not refactored for this experiment."""
    feats = model.blocks[layer].ffn.features
    captured: list[torch.Tensor] = []
    feats.set_landmarks = lambda u, scale=1.0: captured.append(u)  # instance attribute: shadows the method
    try:
        _set_landmarks(model, layer, train, cfg)
    finally:
        del feats.set_landmarks
    return captured[0]


def _checkpoint_dir(path) -> Path:
    """A checkpoint directory, given it or the run directory that holds it (as :func:`pillm.run.load`)."""
    path = Path(path)
    return path / "checkpoint" if (path / "checkpoint").is_dir() else path


def widen(model: PILLM, expansion: float) -> None:
    """Replace every solved FFN by one with ``expansion · n_embd`` features per projection (fresh
    random projections, zero readout); the rest of the model is kept."""
    cfg = dataclasses.replace(model.config, expansion=float(expansion))
    device = next(model.parameters()).device
    for block in model.blocks:
        if isinstance(block.ffn, SolvedFFN):
            block.ffn = SolvedFFN(cfg).to(device)
    model.config = cfg


def execute(spec: FirstLayerSpec, out: str | Path | None = None, *, progress: bool = True) -> tuple[dict, PILLM]:
    """Re-solve ``spec.checkpoint``'s FFNs with ``spec.projection`` projections; writes ``out/result.json``."""
    stored = json.loads((_checkpoint_dir(spec.checkpoint) / "config.json").read_text())
    if stored.get("method") != "attn_then_pil":
        raise ValueError(f"{spec.checkpoint}: a first-layer run repeats attention→PIL's closed-form phase, but this "
                         f"checkpoint was trained by {stored.get('method')!r}; pretrain with method='attn_then_pil'")
    # the checkpoint's own solve settings (λ, η grid, search slice, …), unless the spec overrides them
    solve = {k: v for k, v in stored.get("train", {}).items() if k in _SOLVE_SETTINGS}
    cfg = TrainConfig(**solve | spec.train | {"method": "attn_then_pil"})
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model, _ = load(spec.checkpoint, device=str(device))
    layers = [i for i, b in enumerate(model.blocks) if isinstance(b.ffn, SolvedFFN) and not b.ffn.out_weight.requires_grad]
    if not layers:
        raise ValueError(f"{spec.checkpoint}: no closed-form FFN to re-solve (ffn={model.config.ffn!r}); "
                         "pretrain with a PIL method such as attn_then_pil")
    if spec.projection == "same" and spec.expansion not in (None, model.config.expansion):
        raise ValueError(f"projection 'same' keeps the checkpoint's width (expansion {model.config.expansion}); "
                         f"drop expansion={spec.expansion} or choose another projection")
    corpus = load_tokenized(spec.dataset, spec.tokenizer, max_train_tokens=cfg.max_train_tokens)
    if corpus.vocab_size != model.config.vocab_size:
        raise ValueError(f"{spec.dataset} has {corpus.vocab_size} types with tokenizer {spec.tokenizer!r}, the "
                         f"checkpoint {model.config.vocab_size}: give the dataset and tokenizer it was trained with")
    train, valid = TokenStream(corpus.train, device), TokenStream(corpus.valid, device)
    ev = dict(batch_size=cfg.batch_size, max_tokens=cfg.max_eval_tokens)
    before = {"valid_ppl": evaluate_stream(model, valid.ids, **ev)["ppl"],
              "test_ppl": evaluate_stream(model, corpus.test, **ev)["ppl"]}
    if spec.expansion not in (None, model.config.expansion):
        widen(model, spec.expansion)
    search = _search_windows(valid, cfg, model.config.block_size)
    generator = torch.Generator().manual_seed(cfg.seed)
    log = RunLog()
    _sync(device)
    t0 = time.perf_counter()
    for layer in layers:  # readouts zeroed: an unsolved layer is the identity, as before the first solve
        model.blocks[layer].ffn.out_weight.zero_()
        model.blocks[layer].ffn.out_bias.zero_()
    for layer in layers:  # bottom-up: each layer's inputs with the layers below already re-solved
        feats = model.blocks[layer].ffn.features
        if spec.projection != "same":
            names = ["proj_fwd"] + (["proj_bwd"] if feats.fusion is not None else [])
            u = layer_inputs(model, layer, train, cfg)
            for name, w in zip(names, projections(spec.projection, u, feats.proj_fwd.shape[1], len(names),
                                                  model.config.proj_scale, generator)):
                getattr(feats, name).copy_(w)
        rec = solve_layer(model, layer, train, search, cfg, cfg.target, None, progress)
        log.solves.append(rec | {"phase": "first_layer", "sweep": 0})
    _sync(device)
    solve_s = time.perf_counter() - t0
    model.eval()
    v, t = evaluate_stream(model, valid.ids, **ev), evaluate_stream(model, corpus.test, **ev)
    result = {
        "kind": "first_layer", "method": "attn_then_pil", "projection": spec.projection,
        "expansion": model.config.expansion, "seed": cfg.seed, "spec": asdict(spec),
        "model_config": model.config.to_dict(), "train_config": cfg.to_dict(), "before": before,
        "valid_ppl": v["ppl"], "valid_acc": v["acc"], "test_ppl": t["ppl"], "test_acc": t["acc"],
        "test_tokens": t["tokens"], "pil_s": solve_s, "total_s": solve_s, "optimizer_steps": 0,
        "params": model.parameter_counts(), "solves": log.solves, "train_tokens": int(corpus.train.numel()),
        "data_files": corpus.files, "environment": environment(), "complete": True,
    }
    if out is not None:
        write_json_atomic(Path(out) / "result.json", result)
    return result, model


__all__ = ["FirstLayerSpec", "KINDS", "execute", "projections", "layer_inputs", "widen"]
