"""Training procedures: AdamW phases, closed-form (PIL) phases, and their orders.

    pillm train --method pil_then_attn --size small --dataset wikitext2 --epochs 10 --out runs/pil

==================  ==========================================================================
``baseline``        standard Transformer (``mlp`` FFN), everything by AdamW
``attn_only``       no FFN at all, everything by AdamW
``lora``            frozen random FFN weights + trainable low-rank adapters, AdamW
``rf_adamw``        the PIL random features with the FFN readout trained by AdamW
``pil_pure``        zero optimizer steps anywhere: attention stays at its seeded init; FFNs solved
                    bottom-up; optionally a closed-form output head (``solve_head``) and
                    closed-form embeddings (``embed_init='ppmi'``)
``pil_then_attn``   solve FFNs on the initial model, then AdamW on everything but the FFNs
``attn_then_pil``   AdamW with the FFNs at zero, then solve the FFNs
``alternating``     solve, then AdamW epochs each followed by a re-solve (one LR schedule)
==================  ==========================================================================

``final_resolve`` re-solves every FFN after any procedure (with ``final_target``).

A PIL phase solves layer ``l = 0 … L−1`` in order; for each layer one streaming pass over the
whole training stream recomputes activations with the layers below already solved (never stale),
accumulates ``ΣHᵀH`` and ``ΣHᵀ[Y₀|Δ]`` (:mod:`pillm.targets`), solves the ridge problem once, and
picks the step size η of the target by validation loss (forward passes only). Under
``torch.distributed`` every rank streams its own shard and the statistics are all-reduced.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import math
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from .data import TokenStream
from .evaluate import evaluate_stream, score
from .model import IGNORE_INDEX, PILLM, DictConfig, landmark_projections
from .solver import RidgeAccumulator, sync_device
from .targets import SEARCHED, check_target, layer_data

METHODS = ("baseline", "attn_only", "lora", "rf_adamw", "pil_pure", "pil_then_attn", "attn_then_pil", "alternating")
FIXED_FFN = {"baseline": "mlp", "attn_only": "none", "lora": "lora", "rf_adamw": "rf_adamw"}
EMBED_INITS = ("random", "ppmi")
DEFAULT_ETA_GRID = tuple(10.0 ** (k / 2) for k in range(-8, 13))  # 1e-4 … 1e6, half decades
HEAD_TEMPERATURES = tuple(2.0 ** k for k in range(-2, 12))
HEAD_MIXES = (0.0, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)  # α = 1 is the unigram alone


class TrainingDiverged(RuntimeError):
    """The loss became NaN/Inf; no result is written."""


def ffn_kind_for(method: str, bipil: bool = True) -> str:
    """The FFN kind a method trains: PIL methods use ``bipil`` (or ``pil`` with ``bipil=False``)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not valid; allowed values: {', '.join(METHODS)}")
    return FIXED_FFN.get(method, "bipil" if bipil else "pil")


@dataclass
class TrainConfig(DictConfig):
    method: str = "baseline"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_frac: float = 0.05
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # closed-form phases
    lam: float = 1e-4  # ridge λ relative to the mean diagonal of the Gram matrix
    target: str = "local"
    iterations: int = 1  # re-linearise and re-solve every layer this many times per PIL phase
    eta_grid: tuple = DEFAULT_ETA_GRID
    eta_max: float | None = None  # cap on the searched step size: grid points above it are skipped
    # validation tokens for the step-size search and the head calibration (the paper's runs: 16384);
    # each η costs one pass of the layers above and the head over them
    search_tokens: int = 2048
    final_resolve: bool = False
    final_target: str = "global"
    solve_head: bool = False  # pil_pure: closed-form output head instead of the tied embedding
    embed_init: str = "random"  # "ppmi": token embeddings from a truncated SVD of the PPMI matrix (closed form)
    ppmi_window: int = 2  # co-occurrence window (words either side) for embed_init="ppmi"
    solve_batch_size: int = 64
    # training tokens each FFN solve accumulates over (None: all): evenly spaced windows across the stream,
    # so that a sweep costs a fraction of a pass while the statistics still cover the whole corpus
    solve_tokens: int | None = None
    # data / evaluation
    max_train_tokens: int | None = None
    max_eval_tokens: int | None = None
    eval_every_epoch: bool = True
    log_every: int = 100  # steps between host syncs (NaN check, progress bar)
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA
    compile: bool = False

    def __post_init__(self) -> None:
        ffn_kind_for(self.method)
        check_target(self.target)
        check_target(self.final_target)
        if self.lam < 0:
            raise ValueError(f"lam must be >= 0 (ridge λ relative to mean diag(HᵀH)), got {self.lam}")
        for name, low in (("epochs", 0), ("iterations", 0), ("batch_size", 1), ("solve_batch_size", 1),
                          ("search_tokens", 1), ("log_every", 1), ("ppmi_window", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.solve_tokens is not None and self.solve_tokens < 1:
            raise ValueError(f"solve_tokens must be >= 1 (or None for the whole stream), got {self.solve_tokens}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.method == "alternating" and self.epochs < 1:
            raise ValueError("method='alternating' needs epochs >= 1")
        if self.solve_head and self.method != "pil_pure":
            raise ValueError("solve_head is only used by method='pil_pure'")
        if self.embed_init not in EMBED_INITS:
            raise ValueError(f"embed_init={self.embed_init!r} is not valid; allowed values: {', '.join(EMBED_INITS)}")
        self.eta_grid = tuple(float(e) for e in self.eta_grid)
        if self.eta_max is not None and not any(e <= self.eta_max for e in self.eta_grid):
            raise ValueError(f"eta_max={self.eta_max} is below every point of eta_grid (smallest "
                             f"{min(self.eta_grid):g}); raise eta_max or extend eta_grid downwards")

    @property
    def searched_etas(self) -> tuple:
        """The step sizes the search tries: ``eta_grid`` up to ``eta_max``."""
        return tuple(e for e in self.eta_grid if self.eta_max is None or e <= self.eta_max)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device='cuda' requested but CUDA is not available; use --device cpu")
    return torch.device(name)


def keep_freed_memory() -> None:
    """Let glibc keep large freed blocks for reuse instead of returning them to the system.

    Every step allocates a fresh logits buffer ``[B, T, V]`` (hundreds of MB at a word-level vocabulary);
    above glibc's mmap threshold each is a new mapping, paid again in page faults: a third of a CPU
    run's time. Without glibc, or where glibc refuses the value, nothing changes.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters (malloc.h)
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, (1 << 31) - 1)


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class RunLog:
    """What a procedure did: time per phase, optimizer steps, solver records, curves."""

    phases: list[dict] = field(default_factory=list)  # {"phase", "seconds", ...}
    optimizer_steps: int = 0
    updated_params: int = 0  # parameters handed to an optimizer
    solves: list[dict] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)  # {"epoch", "wall_s", "valid_ppl", "phase"}
    _t0: float = field(default_factory=time.perf_counter)

    def seconds(self, kind: str) -> float:
        return sum(p["seconds"] for p in self.phases if p["phase"] == kind)


# Closed-form phase
def _batches(x_all: torch.Tensor, y_all: torch.Tensor, batch_size: int, desc: str, progress: bool):
    """``(x, y)`` batches of whole windows in order, under a progress bar."""
    for i in tqdm(range(0, x_all.shape[0], batch_size), desc=desc, disable=not progress, leave=False):
        yield x_all[i:i + batch_size], y_all[i:i + batch_size]


def search_windows(valid: TokenStream, cfg: TrainConfig, block: int):
    x, y = valid.windows(block)
    n = max(1, min(x.shape[0], cfg.search_tokens // block))
    return x[:n], y[:n]


@torch.no_grad()
def _search_losses(model: PILLM, layer: int, search: tuple, batch_size: int, parts: tuple, etas: tuple,
                   progress: bool) -> list[float]:
    """Validation loss with the layer's FFN output at each step size η of ``etas``.

    What the layer and below give is computed once per batch of the search windows: the stream
    after the layer's attention ``x_mid`` and the two components of the solved FFN's output,
    ``H·W₀ + b₀`` and ``H·W_Δ + b_Δ`` (``parts``). The output at η is ``base − η·step``; only
    the blocks above run per grid point.
    """
    block = model.blocks[layer]
    w_base, b_base, w_step, b_step = parts
    cache = []
    for x, y in _batches(*search, batch_size, "", False):
        x_mid = block.attend(model.residual_before(x, layer))
        h = block.ffn.features(block.ln2(x_mid))
        cache.append((x_mid, h @ w_base + b_base, h @ w_step + b_step, y))
    losses = []
    for eta in tqdm(etas, desc=f"step size layer {layer}", disable=not progress or len(etas) == 1, leave=False):
        batches = ((model.forward_from(x_mid + base - eta * step, layer + 1), y) for x_mid, base, step, y in cache)
        losses.append(score(batches, accuracy=False)["loss"])
    return losses


def solve_windows(train: TokenStream, block: int, tokens: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The (x, y) windows an FFN solve streams: all of them, or ``ceil(tokens / block)`` evenly spaced ones."""
    x_all, y_all = train.windows(block)
    if tokens is None or tokens >= x_all.numel():
        return x_all, y_all
    keep = torch.linspace(0, len(x_all) - 1, -(-tokens // block)).round().long().unique()
    return x_all[keep], y_all[keep]


def solve_layer(model: PILLM, layer: int, train: TokenStream, search: tuple, cfg: TrainConfig, target: str,
                teacher: PILLM | None = None, progress: bool = True, lams: tuple | None = None) -> dict:
    """Solve block ``layer``'s FFN readout in closed form; returns its record.

    With ``lams``, every relative ridge λ of it is solved from the one accumulation (the
    statistics are left intact by a solve) and the (λ, η) pair with the lowest search loss is kept;
    the record then also has ``lam_at_edge`` and ``accumulate_s``, and its search rows a ``lam``.
    """
    ffn, c = model.blocks[layer].ffn, model.config.n_embd
    device = ffn.out_weight.device
    rank, world = rank_world()
    x_all, y_all = solve_windows(train, model.config.block_size, cfg.solve_tokens)
    x_all, y_all = x_all[rank::world], y_all[rank::world]  # each rank streams its shard
    acc = RidgeAccumulator(ffn.features.n_features, 2 * c, fit_bias=True, device=device)
    cross = torch.zeros(c, dtype=torch.float64, device=device)  # Σ Y₀·Δ per column, for R²(η)
    t0 = time.perf_counter()
    for x, y in _batches(x_all, y_all, cfg.solve_batch_size, f"solve layer {layer}", progress and rank == 0):
        d = layer_data(model, layer, x, y, target, teacher)
        acc.update(d.features, torch.cat([d.base, d.step], dim=1), d.mask)
        # torch.where, not boolean indexing: no host sync per batch
        cross += torch.where(d.mask.unsqueeze(1), d.base.double() * d.step.double(), 0.0).sum(0)
    if world > 1:
        acc.all_reduce()
        dist.all_reduce(cross)
    accumulate_s = time.perf_counter() - t0

    lam_grid = (cfg.lam,) if lams is None else tuple(lams)
    etas = cfg.searched_etas if target in SEARCHED else (0.0,)  # zero / teacher: Y = Y₀
    search_log, solutions = [], {}
    for lam in lam_grid:
        weight, bias, rec = acc.solve(lam)
        parts = solutions[lam] = (weight[:, :c], bias[:c], weight[:, c:], bias[c:], rec)  # W₀, b₀, W_Δ, b_Δ
        if target not in SEARCHED and lams is None:
            continue
        losses = _search_losses(model, layer, search, cfg.solve_batch_size, parts[:4], etas, progress and rank == 0)
        search_log += [({} if lams is None else {"lam": lam}) | {"eta": eta, "valid_loss": loss}
                       for eta, loss in zip(etas, losses)]
    best = min(search_log, key=lambda r: r["valid_loss"]) if search_log else {"eta": 0.0}
    lam, eta = best.get("lam", lam_grid[0]), best["eta"]
    eta_at_edge = len(etas) > 1 and eta in (min(etas), max(etas))
    lam_at_edge = len(lam_grid) > 1 and lam in (min(lam_grid), max(lam_grid))
    # the top of a grid cut by eta_max is a choice, not an edge to widen
    if eta_at_edge and (eta == min(etas) or max(etas) == max(cfg.eta_grid)):
        warnings.warn(f"layer {layer}: the best step size η={eta:g} is at the edge of eta_grid; "
                      "widen the grid", RuntimeWarning, stacklevel=2)
    if lam_at_edge:
        warnings.warn(f"layer {layer}: the best λ={lam:g} is at the edge of lams; widen the grid",
                      RuntimeWarning, stacklevel=2)
    w_base, b_base, w_step, b_step, rec = solutions[lam]
    w, b = w_base - eta * w_step, b_base - eta * b_step
    ffn.set_solution(w, b)
    sync_device(device)
    record = rec.to_dict() | {"layer": layer, "target": target, "eta": eta, "search": search_log,
                              "eta_at_edge": eta_at_edge, "n_features": ffn.features.n_features,
                              "r2": _fit_r2(acc, w, b, eta, cross, c), "seconds_total": time.perf_counter() - t0}
    if lams is not None:
        record |= {"lam_at_edge": lam_at_edge, "accumulate_s": accumulate_s}
    return record


def _fit_r2(acc: RidgeAccumulator, w, b, eta: float, cross: torch.Tensor, c: int) -> float:
    """R² of the chosen target ``Y₀ − ηΔ`` from the accumulated statistics (no second pass)."""
    s = {k: getattr(acc, k).double() for k in ("G", "C", "sum_h", "sum_y", "sum_y2")}  # raw sums
    n = float(acc.n)
    cy = s["C"][:, :c] - eta * s["C"][:, c:]  # Σ Hᵀ Y(η)
    sum_y = s["sum_y"][:c] - eta * s["sum_y"][c:]
    sum_yy = (s["sum_y2"][:c] + eta ** 2 * s["sum_y2"][c:] - 2 * eta * cross).sum()
    w, b = w.double(), b.double()
    # Σ||Y − HW − b||² expanded in sufficient statistics
    ss_res = (sum_yy - 2 * (w * cy).sum() - 2 * (b * sum_y).sum() + (w * (s["G"] @ w)).sum()
              + 2 * (b * (s["sum_h"] @ w)).sum() + n * (b * b).sum())
    ss_tot = sum_yy - (sum_y * sum_y).sum() / n
    if float(ss_tot) <= 0:
        return 1.0 if float(ss_res) <= 1e-12 else 0.0
    return float(1 - ss_res / ss_tot)


@torch.no_grad()
def landmark_inputs(model: PILLM, layer: int, train: TokenStream, cfg: TrainConfig) -> torch.Tensor:
    """LayerNorm-ed inputs ``[n, C]`` of the layer's FFN, computed with the layers below as they are now.

    Sampled uniformly over the training stream with a generator seeded by ``cfg.seed`` and the
    layer index, so every rank of a distributed run draws the same ones; twice as many rows as
    the layer has landmarks, or all there are.
    """
    feats = model.blocks[layer].ffn.features
    n_needed = feats.proj_fwd.shape[1] * (2 if feats.fusion is not None else 1)
    x_all, _ = train.windows(model.config.block_size)
    g = torch.Generator().manual_seed(cfg.seed * 1000 + layer)
    block = model.blocks[layer]
    rows = []
    for i in torch.randperm(x_all.shape[0], generator=g).tolist():
        u = block.ln2(block.attend(model.residual_before(x_all[i:i + 1], layer)))[0]
        rows.append(u[torch.randperm(u.shape[0], generator=g)[: max(1, u.shape[0] // 8)].to(u.device)])
        if sum(r.shape[0] for r in rows) >= 2 * n_needed:
            break
    u = torch.cat(rows)
    if u.shape[0] < n_needed:
        raise ValueError(f"layer {layer}: the training stream has {u.shape[0]} positions, fewer than the "
                         f"{n_needed} landmarks needed; lower expansion or use proj_init='random'")
    return u


@torch.no_grad()
def ppmi_embeddings(ids: torch.Tensor, vocab_size: int, dim: int, window: int = 2) -> torch.Tensor:
    """Closed-form word vectors ``[V, dim]``: truncated SVD of the positive PMI matrix.

    Co-occurrences are counted within ``window`` words either side of each token of the stream
    ``ids`` (a sparse ``V × V`` matrix, never dense); context counts are smoothed with exponent
    0.75 (Levy et al., 2015). The vectors are ``U·√S`` of a randomised truncated SVD,
    scaled to unit RMS per coordinate. Words that never occur get zero vectors, and so do the
    coordinates beyond the matrix's rank when ``dim`` exceeds the vocabulary.
    """
    ids = ids.reshape(-1).long()
    pairs = [torch.stack([ids[:-k], ids[k:]]) for k in range(1, window + 1) if k < ids.numel()]
    pairs = torch.cat(pairs + [p.flip(0) for p in pairs], dim=1)  # both directions: symmetric
    ones = torch.ones(pairs.shape[1], dtype=torch.float64, device=ids.device)
    counts = torch.sparse_coo_tensor(pairs, ones, (vocab_size, vocab_size), check_invariants=False).coalesce()
    (w, c), n_wc = counts.indices(), counts.values()
    n_w = torch.zeros(vocab_size, dtype=torch.float64, device=ids.device).index_add_(0, w, n_wc)
    p_c = torch.zeros(vocab_size, dtype=torch.float64, device=ids.device).index_add_(0, c, n_wc) ** 0.75
    p_c = p_c / p_c.sum()
    pmi = torch.log(n_wc / n_w[w] / p_c[c])  # log P(w,c) / (P(w) P_α(c))
    keep = pmi > 0
    ppmi = torch.sparse_coo_tensor(torch.stack([w[keep], c[keep]]), pmi[keep].float(), (vocab_size, vocab_size),
                                   check_invariants=False).coalesce()
    u, s, _ = torch.svd_lowrank(ppmi, q=min(dim + 10, vocab_size), niter=4)  # global RNG: seeded per run
    k = min(dim, s.numel())
    vec = F.pad(u[:, :k] * s[:k].sqrt(), (0, dim - k))
    return vec / vec.pow(2).mean().sqrt().clamp_min(1e-12)


def pil_phase(model: PILLM, train: TokenStream, valid: TokenStream, cfg: TrainConfig, log: RunLog, *,
              target: str | None = None, name: str = "pil", teacher: PILLM | None = None,
              progress: bool = True) -> None:
    """Solve every solvable FFN bottom-up (``cfg.iterations`` sweeps)."""
    target = target or cfg.target
    solvable = [i for i, b in enumerate(model.blocks) if b.ffn is not None and hasattr(b.ffn, "set_solution")]
    if not solvable:
        raise ValueError(f"model FFN kind {model.config.ffn!r} has no closed-form layers to solve")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout while collecting statistics
    search = search_windows(valid, cfg, model.config.block_size)
    sync_device(device)
    t0 = time.perf_counter()
    for sweep in range(max(cfg.iterations, 1)):
        for layer in solvable:
            if model.config.proj_init == "landmarks" and sweep == 0 and name == "pil":
                u = landmark_inputs(model, layer, train, cfg)
                model.blocks[layer].ffn.features.set_projections(
                    lambda m, count: landmark_projections(u, m, count, model.config.proj_scale))
            rec = solve_layer(model, layer, train, search, cfg, target, teacher, progress)
            log.solves.append(rec | {"phase": name, "sweep": sweep})
    sync_device(device)
    log.phases.append({"phase": "pil", "name": name, "seconds": time.perf_counter() - t0})
    model.train(was_training)


def solve_output_head(model: PILLM, train: TokenStream, valid: TokenStream, cfg: TrainConfig, log: RunLog,
                      temperatures=HEAD_TEMPERATURES, mixes=HEAD_MIXES, name: str = "head",
                      progress: bool = True) -> None:
    """Closed-form head: ridge from ``LN_f(x)`` onto one-hot next tokens, then calibration.

    The ridge scores are not log-probabilities: the softmax temperature and the weight α of a
    unigram mixture, ``p = (1 − α)·softmax(T·scores) + α·unigram``, are chosen jointly by
    validation loss (``search_tokens`` of the validation split; forward passes only). The
    unigram is add-one smoothed over the training stream.
    """
    if model.config.head != "solved":
        raise ValueError("solve_output_head needs a model built with head='solved'")
    device = next(model.parameters()).device
    d, v, block = model.config.n_embd, model.config.vocab_size, model.config.block_size
    model.eval()
    sync_device(device)
    t0 = time.perf_counter()
    # float64 statistics: the Gram matrix of LN_f outputs is small (d × d), C is d × V
    acc = RidgeAccumulator(d, v, fit_bias=True, dtype=torch.float64, device=device)
    with torch.no_grad():
        for x, y in _batches(*train.windows(block), cfg.solve_batch_size, f"solve {name}", progress):
            u = model.ln_f(model.residual_before(x, model.config.n_layer))
            acc.update_labels(u, y.clamp_min(0), y != IGNORE_INDEX)
    w, b, info = acc.solve(cfg.lam)
    counts, n = acc.sum_y, acc.sum_y.sum()
    model.head_weight.copy_(w.float())
    model.head_bias.copy_(b.float())
    model.head_log_unigram.copy_(((counts + 1) / (n + v)).log().float())
    search = search_windows(valid, cfg, block)
    table = _head_calibration(model, search, cfg.solve_batch_size, temperatures, mixes, progress)
    best = min(table, key=lambda r: r["valid_loss"])
    model.head_temperature.fill_(best["temperature"])
    model.head_mix.fill_(best["mix"])
    sync_device(device)
    log.solves.append({"phase": name, "layer": "head", "temperature": best["temperature"], "mix": best["mix"],
                       "search": table, **info.to_dict()})
    log.phases.append({"phase": "pil", "name": name, "seconds": time.perf_counter() - t0})


@torch.no_grad()
def _head_calibration(model: PILLM, search: tuple, batch_size: int, temperatures, mixes, progress: bool) -> list:
    """Validation loss of the solved head for every (temperature, α), as ``model.head`` gives it.

    The final residual and the ridge scores are computed once per batch; each temperature costs
    one log-softmax over the vocabulary, and the unigram weight α only mixes per-token
    probabilities: ``log((1 − α)·p_T(y) + α·u(y))``.
    """
    mix = torch.tensor(mixes, dtype=torch.float32, device=model.head_weight.device)
    log_keep, log_mix = torch.log1p(-mix), torch.log(mix)
    nll = torch.zeros(len(temperatures), len(mixes), dtype=torch.float64, device=mix.device)
    count = 0
    for x, y in _batches(*search, batch_size, "calibrate head", progress):
        x = model.residual_before(x, model.config.n_layer)
        scores = (model.ln_f(x) @ model.head_weight + model.head_bias).float()  # [B, T, V]
        valid = (y != IGNORE_INDEX).unsqueeze(-1)
        target = y.clamp_min(0).unsqueeze(-1)
        log_unigram = model.head_log_unigram[target]  # [B, T, 1]
        for k, t in enumerate(temperatures):
            log_p = (scores * t).log_softmax(-1).gather(-1, target)  # [B, T, 1]
            log_q = torch.logaddexp(log_keep + log_p, log_mix + log_unigram)  # [B, T, len(mixes)]
            nll[k] -= torch.where(valid, log_q, 0.0).sum((0, 1)).double()
        count += valid.sum()
    losses = (nll / count).tolist()
    return [{"temperature": t, "mix": m, "valid_loss": losses[k][j]}
            for k, t in enumerate(temperatures) for j, m in enumerate(mixes)]


# Gradient phase
def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to ``lr·min_lr_ratio`` over the whole run."""
    warmup = max(1, int(cfg.warmup_frac * total))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: PILLM, cfg: TrainConfig, device: torch.device) -> tuple[torch.optim.Optimizer, int]:
    """AdamW over every parameter with ``requires_grad`` (solved weights and buffers never are); weight decay
    on matrices only (not on biases, norms or embeddings)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2 and "emb" not in n]
    ids = {id(p) for p in decay}
    no_decay = [p for p in params if id(p) not in ids]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    return opt, sum(p.numel() for p in params)


class AdamWRunner:
    """AdamW epochs sharing one optimizer and one LR schedule across the whole procedure."""

    def __init__(self, model: PILLM, train: TokenStream, valid: TokenStream, cfg: TrainConfig, log: RunLog,
                 total_epochs: int, progress: bool = True):
        self.model, self.train, self.valid, self.cfg, self.log = model, train, valid, cfg, log
        self.device = next(model.parameters()).device
        self.progress = progress
        self.optimizer, n_params = make_optimizer(model, cfg, self.device)
        log.updated_params = max(log.updated_params, n_params)
        self.rank, self.world = rank_world()
        # Every rank takes the same number of steps (DDP pairs gradient all-reduces step by step),
        # so with several ranks the last num_batches % world batches of an epoch are dropped.
        n_batches = train.num_batches(model.config.block_size, cfg.batch_size)
        self.steps_per_epoch = max(1, n_batches // self.world)
        self.total_steps = max(1, total_epochs * self.steps_per_epoch)
        self.step = self.epoch = 0
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.forward = model
        if self.world > 1:
            self.forward = torch.nn.parallel.DistributedDataParallel(model)
        if cfg.compile and self.device.type == "cuda":
            self.forward = torch.compile(self.forward)

    def run_epoch(self, name: str = "adamw") -> float:
        model, cfg, device = self.model, self.cfg, self.device
        model.train()
        running = torch.zeros((), device=device)
        sync_device(device)
        t0 = time.perf_counter()
        batches = self.train.train_batches(model.config.block_size, cfg.batch_size, generator=self.generator)
        bar = tqdm(itertools.islice(batches, self.rank, self.steps_per_epoch * self.world, self.world),
                   total=self.steps_per_epoch, desc=f"{name} epoch {self.epoch + 1}",
                   disable=not self.progress or self.rank != 0, leave=False)
        seen = 0
        for x, y in bar:  # this rank's share of the batches
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(self.step, self.total_steps, cfg)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda"):
                logits = self.forward(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.reshape(-1), ignore_index=IGNORE_INDEX)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.step += 1
            seen += 1
            running += loss.detach()
            if seen % cfg.log_every == 0:
                self._check(running / seen)  # one host sync every log_every steps
                bar.set_postfix(loss=f"{float(running) / seen:.3f}")
        mean_loss = self._check(running / max(seen, 1))
        sync_device(device)
        self.log.phases.append({"phase": "adamw", "name": name, "seconds": time.perf_counter() - t0,
                                "epoch": self.epoch + 1, "train_loss": mean_loss})
        self.log.optimizer_steps += seen
        self.epoch += 1
        return mean_loss

    def _check(self, loss: torch.Tensor) -> float:
        value = float(loss)
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"training loss became {value} at step {self.step} (epoch {self.epoch + 1}); "
                f"lower the learning rate (lr={self.cfg.lr}) or raise grad_clip; no result was written")
        return value


# Procedures
def _record_valid(model: PILLM, valid: TokenStream, cfg: TrainConfig, log: RunLog, epoch: float, phase: str) -> None:
    if not cfg.eval_every_epoch:
        return
    r = evaluate_stream(model, valid.ids, batch_size=cfg.batch_size, max_tokens=cfg.max_eval_tokens)
    log.curve.append({"epoch": epoch, "wall_s": time.perf_counter() - log._t0, "valid_ppl": r["ppl"],
                      "valid_acc": r["acc"], "phase": phase})


def run_procedure(model: PILLM, train: TokenStream, valid: TokenStream, cfg: TrainConfig, *,
                  teacher: PILLM | None = None, progress: bool = True) -> RunLog:
    """Train ``model`` in place by ``cfg.method``; returns what was done and how long it took."""
    expected = ffn_kind_for(cfg.method, bipil=model.config.ffn != "pil")
    if model.config.ffn != expected:
        raise ValueError(f"method={cfg.method!r} trains FFN kind {expected!r}, but the model has {model.config.ffn!r}")
    if model.config.head == "solved" and not cfg.solve_head:
        raise ValueError("a model with head='solved' needs solve_head=True")
    log = RunLog()
    m = cfg.method
    if train.ids.device.type == "cpu":
        keep_freed_memory()
    if cfg.embed_init == "ppmi":
        sync_device(train.ids.device)
        t0 = time.perf_counter()
        vec = ppmi_embeddings(train.ids, model.config.vocab_size, model.config.n_embd, cfg.ppmi_window)
        with torch.no_grad():  # same scale as the random init: only the directions change
            model.tok_emb.weight.copy_(vec * model.tok_emb.weight.std())
        sync_device(train.ids.device)
        log.phases.append({"phase": "pil", "name": "embed", "seconds": time.perf_counter() - t0})
    _record_valid(model, valid, cfg, log, 0, "init")
    solve = functools.partial(pil_phase, model, train, valid, cfg, log, teacher=teacher, progress=progress)

    def adamw_epochs(name: str, resolve_between: bool = False) -> None:  # one optimizer, one LR schedule
        runner = AdamWRunner(model, train, valid, cfg, log, cfg.epochs, progress)
        for _ in range(cfg.epochs):
            runner.run_epoch(name)
            if resolve_between:
                solve(name=f"resolve{runner.epoch}")
            _record_valid(model, valid, cfg, log, runner.epoch, name)

    if m in FIXED_FFN:
        adamw_epochs("adamw")
    elif m == "pil_pure":
        if cfg.solve_head:  # a head first, so that the FFNs' local targets have a gradient to follow
            solve_output_head(model, train, valid, cfg, log, name="head0", progress=progress)
        solve(name="pil")
        if cfg.solve_head:
            solve_output_head(model, train, valid, cfg, log, progress=progress)
        _record_valid(model, valid, cfg, log, 0, "pil")
    elif m == "pil_then_attn":
        solve(name="pil")
        _record_valid(model, valid, cfg, log, 0, "pil")
        adamw_epochs("attn")
    elif m == "attn_then_pil":
        adamw_epochs("attn")
        solve(name="pil")
        _record_valid(model, valid, cfg, log, cfg.epochs, "pil")
    elif m == "alternating":
        solve(name="pil")
        adamw_epochs("attn", resolve_between=True)

    if cfg.final_resolve:
        if model.config.ffn not in ("pil", "bipil"):
            raise ValueError(f"final_resolve needs closed-form FFNs; method {m!r} has {model.config.ffn!r}")
        solve(target=cfg.final_target, name="final_resolve")
        _record_valid(model, valid, cfg, log, cfg.epochs, "final_resolve")
    model.eval()
    return log
