"""Ridge λ chosen per layer on validation, from one Gram matrix per layer (issue 7 item 3, issue 8).

A model trained by attention→PIL (a run that kept its checkpoint) has every FFN readout re-solved
bottom-up as in its own closed-form phase (readouts zeroed first, the checkpoint's target, η grid and
search slice), except that each layer also chooses its ridge λ: the layer's statistics ``HᵀH``,
``HᵀY`` are accumulated once over the training split, every λ of ``lams`` is solved from them
(:meth:`pillm.solver.RidgeAccumulator.solve` leaves them intact), and the (λ, η) pair with the lowest
loss on the validation search windows is kept. The layers above see the layers below as chosen (fresh
inputs, never stale ones). No optimizer step. With ``lams = (checkpoint's λ,)`` the run reproduces the
checkpoint's own solve: the control of this experiment.

Cost over the checkpoint's solve: one Cholesky per λ (``D³/3`` for ``D`` features) and ``len(lams)`` times
the η search's validation passes; the pass over the training split, which dominates, is made once.

Only these runs execute this module, so it is hashed into their run keys alone
(:func:`pillm.experiments.code_hash`).

    pillm experiments --profile paper --only lambda_path     # notebooks/lambda_path.ipynb
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from .data import TokenStream, load_tokenized
from .evaluate import evaluate_stream
from .model import PILLM, SolvedFFN
from .run import environment, load, write_json_atomic
from .solver import RidgeAccumulator
from .targets import SEARCHED, layer_data
from .train import RunLog, TrainConfig, _fit_r2, _mean_loss, _rank_world, _search_windows, _sync, resolve_device

#: Decades around the hybrids' λ = 1e-4 (relative to the mean diagonal of HᵀH) up to 10: the λ ablation
#: chose 1e-1, the top of its grid (results/paper/ablation_lambda), so the grid reaches two decades above.
LAMS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
#: TrainConfig fields of the checkpoint's own solve that a λ-path run repeats unless its spec overrides them
_SOLVE_SETTINGS = ("lam", "eta_grid", "search_tokens", "max_train_tokens", "max_eval_tokens", "solve_batch_size",
                   "target", "seed")


@dataclass
class LambdaPathSpec:
    """One run: which attention→PIL checkpoint, and the λ grid every layer chooses from."""

    checkpoint: str  # a run directory's checkpoint/ (written with save_checkpoint=True), or the run directory
    lams: tuple = LAMS  # relative ridge λ (× mean diag of HᵀH), as TrainConfig.lam
    dataset: str = "wikitext2"  # the data the checkpoint was trained on (its tokenizer reads it)
    tokenizer: str = "auto"
    train: dict = field(default_factory=dict)  # TrainConfig overrides (eta_grid, search_tokens, seed, device, …)

    def __post_init__(self) -> None:
        lams = tuple(float(v) for v in self.lams)
        if not lams:
            raise ValueError("lams is empty: give at least one ridge λ, e.g. lams=(1e-4, 1e-2, 1.0)")
        bad = [v for v in lams if not (math.isfinite(v) and v >= 0)]
        if bad:
            raise ValueError(f"every λ must be finite and >= 0 (relative to mean diag(HᵀH)), got {bad}")
        self.lams = tuple(sorted(set(lams)))
        if "lam" in self.train:
            raise ValueError("train['lam'] would be ignored: a λ-path run chooses λ from `lams`; "
                             "give lams=(λ,) to solve with one λ")

    def config(self) -> TrainConfig:
        # attention→PIL: the procedure whose closed-form phase this run repeats
        return TrainConfig(**{"method": "attn_then_pil", **self.train})


def solve_layer_path(model: PILLM, layer: int, train: TokenStream, search: tuple, cfg: TrainConfig,
                     lams: tuple, progress: bool = True) -> dict:
    """Solve block ``layer``'s FFN readout for every λ of ``lams`` from one pass over ``train``; keep the
    (λ, η) pair with the lowest loss on ``search`` (the validation windows). Returns the layer's record.

    The accumulation is :func:`pillm.train.solve_layer`'s (targets ``[Y₀, Δ]`` side by side, so every η is a
    combination of two solutions); it is repeated here rather than refactored there, because train.py is part
    of every run's key (docs/OPEN_WORK.md: merge with the recomputation)."""
    block, c = model.config.block_size, model.config.n_embd
    ffn = model.blocks[layer].ffn
    device = ffn.out_weight.device
    x_all, y_all = train.windows(block)
    rank, world = _rank_world()
    x_all, y_all = x_all[rank::world], y_all[rank::world]
    acc = RidgeAccumulator(ffn.n_features, 2 * c, fit_bias=True, device=device)
    cross = torch.zeros(c, dtype=torch.float64, device=device)  # Σ Y₀·Δ per column, for R²(η)
    t0 = time.perf_counter()
    for i in tqdm(range(0, x_all.shape[0], cfg.solve_batch_size), desc=f"solve layer {layer} (λ path)",
                  disable=not progress or rank != 0, leave=False):
        d = layer_data(model, layer, x_all[i:i + cfg.solve_batch_size], y_all[i:i + cfg.solve_batch_size],
                       cfg.target, None)
        acc.update(d.features, torch.cat([d.base, d.step], dim=1), d.mask)
        cross += torch.where(d.mask.unsqueeze(1), d.base.double() * d.step.double(), 0.0).sum(0)
    if world > 1:
        acc.all_reduce()
        dist.all_reduce(cross)
    accumulate_s = time.perf_counter() - t0
    etas = cfg.eta_grid if cfg.target in SEARCHED else (0.0,)  # zero target: Y = Y₀, nothing to search
    search_log, solutions = [], {}
    for lam in lams:
        weight, bias, rec = acc.solve(lam)
        w_base, w_step, b_base, b_step = weight[:, :c], weight[:, c:], bias[:c], bias[c:]
        solutions[lam] = (w_base, w_step, b_base, b_step, rec)
        for eta in etas:
            ffn.set_solution(w_base - eta * w_step, b_base - eta * b_step)
            search_log.append({"lam": lam, "eta": eta, "valid_loss": _mean_loss(model, *search, cfg.solve_batch_size)})
    best = min(search_log, key=lambda r: r["valid_loss"])
    lam, eta = best["lam"], best["eta"]
    w_base, w_step, b_base, b_step, rec = solutions[lam]
    w, b = w_base - eta * w_step, b_base - eta * b_step
    ffn.set_solution(w, b)
    lam_at_edge = len(lams) > 1 and lam in (lams[0], lams[-1])
    eta_at_edge = len(etas) > 1 and eta in (min(etas), max(etas))
    edges = (("λ", lam, "lams", lam_at_edge), ("step size η", eta, "eta_grid", eta_at_edge))
    for name, value, grid, at_edge in edges:
        if at_edge:
            warnings.warn(f"layer {layer}: the best {name}={value:g} is at the edge of {grid}; widen the grid",
                          RuntimeWarning, stacklevel=2)
    _sync(device)
    return rec.to_dict() | {
        "layer": layer, "target": cfg.target, "lam": lam, "eta": eta, "search": search_log,
        "lam_at_edge": lam_at_edge, "eta_at_edge": eta_at_edge, "n_features": ffn.n_features,
        "r2": _fit_r2(acc, w, b, eta, cross, c), "accumulate_s": accumulate_s,
        "seconds_total": time.perf_counter() - t0,
    }


def execute(spec: LambdaPathSpec, out: str | Path | None = None, *, progress: bool = True) -> tuple[dict, PILLM]:
    """Re-solve ``spec.checkpoint``'s FFNs with λ chosen per layer; writes ``out/result.json``."""
    path = Path(spec.checkpoint)
    ckpt = path / "checkpoint" if (path / "checkpoint").is_dir() else path
    stored = json.loads((ckpt / "config.json").read_text())
    if stored.get("method") != "attn_then_pil":
        raise ValueError(f"{spec.checkpoint}: a λ-path run repeats attention→PIL's closed-form phase, but this "
                         f"checkpoint was trained by {stored.get('method')!r}; pretrain with method='attn_then_pil'")
    solve = {k: v for k, v in stored.get("train", {}).items() if k in _SOLVE_SETTINGS}
    cfg = TrainConfig(**solve | spec.train | {"method": "attn_then_pil"})
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model, _ = load(spec.checkpoint, device=str(device))
    layers = [i for i, b in enumerate(model.blocks)
              if isinstance(b.ffn, SolvedFFN) and not b.ffn.out_weight.requires_grad]
    if not layers:
        raise ValueError(f"{spec.checkpoint}: no closed-form FFN to re-solve (ffn={model.config.ffn!r}); "
                         "pretrain with a PIL method such as attn_then_pil")
    corpus = load_tokenized(spec.dataset, spec.tokenizer, max_train_tokens=cfg.max_train_tokens)
    if corpus.vocab_size != model.config.vocab_size:
        raise ValueError(f"{spec.dataset} has {corpus.vocab_size} types with tokenizer {spec.tokenizer!r}, the "
                         f"checkpoint {model.config.vocab_size}: give the dataset and tokenizer it was trained with")
    train, valid = TokenStream(corpus.train, device), TokenStream(corpus.valid, device)
    ev = dict(batch_size=cfg.batch_size, max_tokens=cfg.max_eval_tokens)
    before = {"valid_ppl": evaluate_stream(model, valid.ids, **ev)["ppl"],
              "test_ppl": evaluate_stream(model, corpus.test, **ev)["ppl"], "lam": cfg.lam}
    search = _search_windows(valid, cfg, model.config.block_size)
    log = RunLog()
    _sync(device)
    t0 = time.perf_counter()
    for layer in layers:  # readouts zeroed: an unsolved layer is the identity, as before the first solve
        model.blocks[layer].ffn.out_weight.zero_()
        model.blocks[layer].ffn.out_bias.zero_()
    for layer in layers:  # bottom-up: each layer's inputs with the layers below already re-solved
        rec = solve_layer_path(model, layer, train, search, cfg, spec.lams, progress)
        log.solves.append(rec | {"phase": "lambda_path", "sweep": 0})
    _sync(device)
    solve_s = time.perf_counter() - t0
    model.eval()
    v, t = evaluate_stream(model, valid.ids, **ev), evaluate_stream(model, corpus.test, **ev)
    result = {
        "kind": "lambda_path", "method": "attn_then_pil", "target": cfg.target, "lams": list(spec.lams),
        "chosen_lams": [s["lam"] for s in log.solves], "seed": cfg.seed, "spec": asdict(spec),
        "model_config": model.config.to_dict(), "train_config": cfg.to_dict(), "before": before,
        "valid_ppl": v["ppl"], "valid_acc": v["acc"], "test_ppl": t["ppl"], "test_acc": t["acc"],
        "test_tokens": t["tokens"], "pil_s": solve_s, "total_s": solve_s, "optimizer_steps": 0,
        "params": model.parameter_counts(), "solves": log.solves, "train_tokens": int(corpus.train.numel()),
        "data_files": corpus.files, "environment": environment(), "complete": True,
    }
    if out is not None:
        write_json_atomic(Path(out) / "result.json", result)
    return result, model


__all__ = ["LAMS", "LambdaPathSpec", "execute", "solve_layer_path"]
