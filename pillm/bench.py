"""Performance benchmarks: ``pillm bench`` → ``results/bench/<device-slug>.json`` (+ ``.pdf``).

    python -m pillm bench                                   # one GPU, full sizes (~2–3 min expected)
    python -m pillm bench --baseline-epochs 10              # + the full 10-epoch baseline run
    torchrun --nproc_per_node=2 -m pillm bench --distributed   # → <slug>-2gpu.json
    python -m pillm bench --quick --device cpu --out /tmp/b # tiny sizes, CPU, seconds (tests)
    python -m pillm bench --parts train,hybrid --hybrid NAME --baseline-epochs 10   # a gap variant vs the baseline

Everything is measured in one process, against ceilings measured in the same run (dense fp32 and bf16 matmul,
copy bandwidth). Timings are medians of repeats after warm-up calls (CUDA events on a GPU, ``perf_counter`` on
a CPU) on random normal inputs. ``docs/PERF_NOTES.md`` gives each FLOP model and what bounds each ratio.

1. ``gram``: ``RidgeAccumulator.update`` per D; ``gram_rate_ratio`` = its FLOP/s ÷ a dense fp32 matmul's.
2. ``solve``: ``RidgeAccumulator.solve`` (float64) per D, Cholesky and eigh paths: seconds and peak memory.
3. ``train``: one PIL phase against the ``mlp`` baseline's AdamW epochs; ``pil_phase_over_baseline_train`` =
   PIL seconds ÷ the baseline's whole run (``TrainConfig().epochs``, projected unless measured).
4. ``--distributed`` (torchrun): ``pil_phase_speedup_<world>gpu`` = the PIL phase on rank 0 alone ÷ on all ranks.
5. ``hybrid``: a gap variant's whole training; ``hybrid_over_baseline_train`` = its seconds ÷ the baseline's run.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from .atomic import write_atomic, write_json_atomic
from .data import TokenStream, load_tokenized
from .model import PILLM, config_for
from .run import environment, utc_now
from .solver import RidgeAccumulator, no_tf32, sync_device as sync
from .train import (AdamWRunner, RunLog, TrainConfig, pil_phase, rank_world, resolve_device, run_procedure,
                    search_windows)
from .version import COMPUTE_VERSION

FULL_SIZES = (1024, 2048, 4096, 8192)
QUICK_SIZES = (64, 128)
DEFAULT_PARTS = ("gram", "solve", "train")
PARTS = DEFAULT_PARTS + ("hybrid",)  # hybrid: a whole training run (minutes on a GPU), only when asked for
#: Top-level keys of the headline ratios: printed, and summarised over repeats by ``--combine``.
HEADLINE_PREFIXES = ("gram_rate", "pil_phase", "baseline_", "hybrid_", "attn_only_")
SYNTHETIC_VOCAB = 512
# NVLink multicast can take a shared host's GPUs out of service: keep it off in every process.
NO_MULTICAST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def _log(msg: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def settings(args: argparse.Namespace, device: torch.device) -> dict:
    """Sizes for this run: full (GPU) or ``--quick`` (CPU-friendly, seconds). The ceiling measurements
    shrink on a CPU (an 8192³ fp32 product takes minutes there)."""
    quick = bool(args.quick)
    small_ceiling = quick or device.type != "cuda"
    sizes = list(QUICK_SIZES if quick else FULL_SIZES)
    if args.sizes:
        sizes = [int(v) for v in str(args.sizes).replace(" ", "").split(",") if v]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--sizes must be positive integers, e.g. 1024,2048 (got {args.sizes!r})")
    if args.baseline_epochs is not None and args.baseline_epochs < 1:
        raise ValueError(f"--baseline-epochs must be >= 1, got {args.baseline_epochs}")
    return dict(
        quick=quick, sizes=sizes, size="tiny" if quick else "small", expansion=4.0, lam=1e-4, seed=0,
        rows=1024 if quick else 16384, outputs=32 if quick else 256,  # N rows per update, K outputs
        warmup=1 if quick else 3, repeats=3 if quick else 10,
        ceiling_n=(256 if quick else 1024) if small_ceiling else 8192,  # square matmul: fp32 / bf16 ceilings
        copy_bytes=(16 if quick else 256 if small_ceiling else 2048) * 2**20,
        max_train_tokens=8192 if quick else None, search_tokens=512 if quick else 16384,
        solve_batch_size=16 if quick else 64, baseline_epochs=args.baseline_epochs or 1,
        dataset="synthetic" if quick else "wikitext2",
    )


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def device_slug(name: str, quick: bool = False) -> str:
    """``NVIDIA H200`` → ``nvidia-h200``; ``cpu``; ``-quick`` appended for ``--quick`` runs."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"
    return f"{slug}-quick" if quick else slug


# Timing and ceilings
def time_calls(fn: Callable[[], Any], device: torch.device, *, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls: CUDA events around each
    call on a GPU (no host sync between calls), ``perf_counter`` on CPU."""
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(repeats)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) / 1e3 for start, end in events]
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _timing(seconds: list[float], flops: float | None = None, nbytes: float | None = None) -> dict:
    med = statistics.median(seconds)
    d = {"seconds_median": med, "seconds_min": min(seconds), "seconds_max": max(seconds), "repeats": len(seconds)}
    if flops is not None:
        d |= {"flops": flops, "tflops": flops / med / 1e12}
    if nbytes is not None:
        d |= {"bytes": nbytes, "gbytes_per_s": nbytes / med / 1e9}
    return d


def measure_ceilings(s: dict, device: torch.device) -> dict:
    """Dense ``[n, n]×[n, n]`` matmul (2·n³ flops) in fp32 (TF32 off) and bf16; a device-to-device copy
    (bytes counted read + written)."""
    _log("ceilings: fp32 (TF32 off) and bf16 dense matmul, copy bandwidth")
    kw = dict(warmup=s["warmup"], repeats=s["repeats"])
    n = s["ceiling_n"]
    out = {}
    for key, dtype in (("fp32_dense", torch.float32), ("bf16_dense", torch.bfloat16)):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        c = torch.empty(n, n, device=device, dtype=dtype)
        with no_tf32():
            secs = time_calls(lambda: torch.mm(a, b, out=c), device, **kw)
        out[key] = {"n": n, "dtype": str(dtype).removeprefix("torch."), "tf32": False, **_timing(secs, 2.0 * n**3)}
    src = torch.randn(s["copy_bytes"] // 4, device=device)
    dst = torch.empty_like(src)
    secs = time_calls(lambda: dst.copy_(src), device, **kw)
    out["copy"] = {"size_bytes": src.numel() * 4, **_timing(secs, None, 2.0 * src.numel() * 4)}
    return out


# 1. Gram accumulation, 2. solve
def gram_cost(n: int, d: int, k: int) -> tuple[float, float]:
    """Flops of one update, ``G += HᵀH`` (2·N·D²) and ``C += HᵀY`` (2·N·D·K), and its minimal fp32 traffic
    in bytes (read H, Y once; read and write G, C)."""
    return 2.0 * n * d * d + 2.0 * n * d * k, 4.0 * (n * d + n * k + 2 * (d * d + d * k))


def bench_gram(d: int, s: dict, device: torch.device, bandwidth: float) -> tuple[dict, RidgeAccumulator]:
    """Time ``RidgeAccumulator.update`` (with and without mask), a bare ``addmm_`` pair and a dense mm at one D;
    (record, the accumulator, whose statistics feed :func:`bench_solve`)."""
    n, k = s["rows"], s["outputs"]
    kw = dict(warmup=s["warmup"], repeats=s["repeats"])
    g = torch.Generator(device=device).manual_seed(s["seed"] + d)
    h = torch.randn(n, d, device=device, generator=g)
    y = torch.randn(n, k, device=device, generator=g)
    mask = torch.rand(n, device=device, generator=g) > 0.01  # ~1 % padding, as in real streams
    acc = RidgeAccumulator(d, k, device=device)
    g_bare = torch.zeros(d, d, device=device)
    c_bare = torch.zeros(d, k, device=device)
    g_dense = torch.empty(d, d, device=device)
    ht = h.mT

    def bare_pair():
        g_bare.addmm_(ht, h)
        c_bare.addmm_(ht, y)

    flops, nbytes = gram_cost(n, d, k)
    dense_flops, dense_bytes = 2.0 * n * d * d, 4.0 * (n * d + d * d)
    rec: dict[str, Any] = {"D": d, "N": n, "K": k, "flops_update": flops, "bytes_update": nbytes,
                           "intensity_flop_per_byte": flops / nbytes, "flops_dense": dense_flops,
                           "bytes_dense": dense_bytes, "layout": "Hᵀ (transposed view) × H"}
    with no_tf32():
        rec["dense_mm"] = _timing(time_calls(lambda: torch.mm(ht, h, out=g_dense), device, **kw), dense_flops,
                                  dense_bytes)
        runs = {key: time_calls(fn, device, **kw) for key, fn in (
            ("update_masked", lambda: acc.update(h, y, mask)), ("update", lambda: acc.update(h, y)),
            ("addmm_pair", bare_pair))}
    dense_rate = dense_flops / rec["dense_mm"]["seconds_median"]
    for key, secs in runs.items():
        r = rec[key] = _timing(secs, flops, nbytes)
        r["rate_over_dense"] = (flops / r["seconds_median"]) / dense_rate
        r["roofline_seconds"] = max(flops / dense_rate, nbytes / bandwidth)
        r["fraction_of_roofline"] = r["roofline_seconds"] / r["seconds_median"]
    rec["gram_rate_ratio"] = rec["update_masked"]["rate_over_dense"]
    rec["gram_rate_ratio_unmasked"] = rec["update"]["rate_over_dense"]
    rec["update_over_addmm_pair"] = rec["addmm_pair"]["seconds_median"] / rec["update_masked"]["seconds_median"]
    return rec, acc


def _timed(fn: Callable[[], Any], device: torch.device, barrier: Callable[[], Any] = lambda: None
           ) -> tuple[Any, float, dict]:
    """Run ``fn`` once between device syncs and ``barrier`` calls: (result, seconds, peak memory record).
    ``barrier``: ``torch.distributed.barrier`` when every rank runs ``fn``, so that the time is the slowest rank's."""
    mem: dict[str, Any] = {"peak_bytes": None, "peak_extra_bytes": None}
    barrier()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    barrier()
    seconds = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        mem = {"peak_bytes": peak, "peak_extra_bytes": peak - before, "allocated_before_bytes": before}
    return out, seconds, mem


def bench_solve(acc: RidgeAccumulator, s: dict, device: torch.device, *, warm: bool = False) -> dict:
    """Time ``acc.solve`` on the Cholesky path (with its κ check) and the forced eigh path, plus the kernels.
    ``warm``: run both paths once untimed first (solver handles, kernel loading); do it at the smallest D."""
    d, k = acc.n_features, acc.n_outputs
    chol, eigvalsh = d**3 / 3 + 2.0 * d * d * k, 4.0 / 3.0 * d**3  # approximate float64 flops (PERF_NOTES.md)
    flops = {"cholesky": chol, "eigvalsh": eigvalsh, "auto": chol + eigvalsh, "eigh": 9.0 * d**3 + 4.0 * d * d * k}
    rec: dict[str, Any] = {"D": d, "K": k, "lam": s["lam"], "flops": flops}
    for path in ("auto", "eigh"):
        if warm:
            acc.solve(s["lam"], solver=path)
        (_w, _b, info), seconds, mem = _timed(lambda path=path: acc.solve(s["lam"], solver=path), device)
        rec[path] = {"seconds": seconds, "solver_used": info.solver, "fallback": info.fallback,
                     "cond": info.cond, "r2": info.r2, **mem}
    # Kernel breakdown of the auto path on A = G_c + λ I (float64).
    gc, cc, *_ = acc.centered_stats()
    gc.diagonal().add_(s["lam"] * float(gc.diagonal().mean()))
    _, t_chol, m_chol = _timed(lambda: torch.cholesky_solve(cc, torch.linalg.cholesky_ex(gc)[0]), device)
    _, t_eigvals, m_eigvals = _timed(lambda: torch.linalg.eigvalsh(gc), device)
    rec["kernels"] = {"cholesky_and_solve": {"seconds": t_chol, **m_chol},
                      "eigvalsh_kappa_check": {"seconds": t_eigvals, **m_eigvals}}
    rec["kappa_check_share_of_auto"] = t_eigvals / rec["auto"]["seconds"]
    return rec


# 3. PIL phase vs baseline training
def load_streams(s: dict, device: torch.device):
    """Train / valid :class:`TokenStream` on the device: ``s["dataset"]``, a corpus or ``synthetic`` (the ``--quick``
    default): uniform random tokens of a small vocabulary, so that CPU runs are not dominated by WikiText-2's
    33k-word output head (the timings do not depend on what the tokens say)."""
    name = s["dataset"]
    if name == "synthetic":
        vocab = SYNTHETIC_VOCAB
        g = torch.Generator().manual_seed(s["seed"])
        train, valid = (torch.randint(vocab, (n,), generator=g) for n in (s["max_train_tokens"], 4096))
    else:
        corpus = load_tokenized(name, max_train_tokens=s["max_train_tokens"])
        train, valid, vocab = corpus.train, corpus.valid, corpus.vocab_size
    return TokenStream(train, device), TokenStream(valid, device), vocab, name


def _fresh(mcfg, seed: int, device: torch.device):
    """A new model on the device, initialised from ``seed`` (every timed model of a kind starts the same)."""
    torch.manual_seed(seed)
    return PILLM(mcfg).to(device)


def _warm_slice(stream, windows: int, block: int):
    return TokenStream(stream.ids[: windows * block + block + 1], stream.device)


def baseline_flops_per_token(model) -> dict:
    """Training flops per token: ``6·P + 12·L·C·T`` (PaLM; attention not discounted for causality). P: the
    weights used in matmuls, every 2-D parameter but the position embedding (a lookup); the token embedding
    counts once, as the tied output head."""
    c = model.config
    p = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and not n.startswith("pos_emb"))
    attn = 12.0 * c.n_layer * c.n_embd * c.block_size
    return {"matmul_params": p, "dense": 6.0 * p, "attention": attn, "total": 6.0 * p + attn}


def pil_phase_flops(mcfg, n_tokens: int, search_tokens: int, n_eta: int) -> dict:
    """Flop model of one PIL phase (target ``local``) over ``n_tokens`` train tokens.

    Per layer ``l`` and token: forward of blocks ``< l`` and block ``l``'s attention, the features
    twice (``features`` and ``ffn(u)`` both compute them: 2·2·C·D), the readout 2·D·C, the local
    target (head forward + backward to its input: 4·C·V) and the Gram (2·D² + 2·D·2C).  Per layer
    the η search runs ``n_eta`` full forwards on ``search_tokens`` validation tokens.
    """
    c, t, v, n_layer = mcfg.n_embd, mcfg.block_size, mcfg.vocab_size, mcfg.n_layer
    d = mcfg.hidden * (2 if mcfg.ffn == "bipil" and mcfg.fusion == "concat" else 1)
    proj = mcfg.hidden * (2 if mcfg.ffn == "bipil" else 1)  # random-projection columns
    attn = 2.0 * 4 * c * c + 4.0 * t * c  # qkv + out projections, QKᵀ and AV
    block = attn + 2.0 * c * proj + 2.0 * d * c
    lower_blocks = n_layer * (n_layer - 1) / 2  # blocks below each layer, summed over the layers
    out = {"gram": n_layer * n_tokens * (2.0 * d * d + 2.0 * d * 2 * c),
           "local_target": n_layer * n_tokens * 4.0 * c * v,
           "forward": n_tokens * (lower_blocks * block + n_layer * (attn + 2 * 2.0 * c * proj + 2.0 * d * c)),
           "eta_search": n_layer * n_eta * search_tokens * (n_layer * block + 2.0 * c * v)}
    out["total"] = sum(out.values())
    out["features_D"] = d
    return out


def time_pil_phase(s: dict, device: torch.device, train, valid, vocab: int) -> tuple[dict, Any]:
    """One :func:`pil_phase` on a fresh Bi-PIL model, after a warm-up on a small slice; (record, model). Under a
    process group every rank streams its shard, and the wall clock runs between barriers."""
    world = rank_world()[1]
    mcfg = config_for(s["size"], vocab_size=vocab, ffn="bipil", expansion=s["expansion"])  # concat fusion
    tcfg = TrainConfig(method="pil_pure", target="local", lam=s["lam"], search_tokens=s["search_tokens"],
                       solve_batch_size=s["solve_batch_size"], device=str(device), seed=s["seed"],
                       eval_every_epoch=False)
    barrier = dist.barrier if world > 1 else lambda: None

    def run(stream) -> tuple[Any, RunLog, float]:
        model, log = _fresh(mcfg, s["seed"], device), RunLog()
        _, wall, _ = _timed(lambda: pil_phase(model, stream, valid, tcfg, log, progress=False), device, barrier)
        return model, log, wall

    block = mcfg.block_size
    run(_warm_slice(train, 2 * world * tcfg.solve_batch_size, block))
    model, log, wall = run(train)
    n_tokens = train.windows(block)[0].shape[0] * block  # solve_layer streams every whole window
    n_search = search_windows(valid, tcfg, block)[0].shape[0]  # the windows the η search scores
    flops = pil_phase_flops(mcfg, n_tokens, n_search * block, len(tcfg.eta_grid))
    seconds = log.seconds("pil")
    rec = {
        "seconds": seconds, "wall_seconds": wall, "tokens": n_tokens, "tokens_per_s": n_tokens / seconds,
        "token_layers_per_s": n_tokens * mcfg.n_layer / seconds,
        "layers": mcfg.n_layer, "features_D": flops["features_D"], "outputs_K": 2 * mcfg.n_embd,
        "flops": flops, "tflops": flops["total"] / seconds / 1e12,
        "model_config": mcfg.to_dict(), "train_config": tcfg.to_dict(),
        "per_layer": [{"layer": r["layer"], "seconds_total": r["seconds_total"], "solve_seconds": r["seconds"],
                       "solver": r["solver"], "cond": r["cond"], "eta": r["eta"], "r2": r["r2"],
                       "tokens": r["tokens"]} for r in log.solves],
    }
    return rec, model


def time_baseline(s: dict, device: torch.device, train, valid, vocab: int, compile_: bool) -> dict:
    """``baseline_epochs`` AdamW epochs of the ``mlp`` model via :class:`AdamWRunner` (after a short warm-up)."""
    mcfg = config_for(s["size"], vocab_size=vocab, ffn="mlp", expansion=s["expansion"])
    epochs = s["baseline_epochs"]
    tcfg = TrainConfig(method="baseline", epochs=epochs, device=str(device), compile=compile_, seed=s["seed"],
                       eval_every_epoch=False)
    # Warm-up (kernels, allocator, autotuning) on a throwaway model and a slice of a few batches.
    AdamWRunner(_fresh(mcfg, s["seed"], device), _warm_slice(train, 4 * tcfg.batch_size, mcfg.block_size), valid, tcfg,
                RunLog(), 1, progress=False).run_epoch("warmup")
    model, log = _fresh(mcfg, s["seed"], device), RunLog()
    runner = AdamWRunner(model, train, valid, tcfg, log, epochs, progress=False)
    losses = [runner.run_epoch("baseline") for _ in range(epochs)]
    epoch_s = [p["seconds"] for p in log.phases if p["phase"] == "adamw"]
    steady = statistics.median(epoch_s[1:]) if len(epoch_s) > 1 else epoch_s[0]
    ref_epochs = TrainConfig().epochs
    projected = epochs < ref_epochs
    train_s = sum(epoch_s) + (ref_epochs - epochs) * steady if projected else sum(epoch_s[:ref_epochs])
    tokens = train.num_train_windows(mcfg.block_size) * mcfg.block_size
    fpt = baseline_flops_per_token(model)
    return {
        "epochs_measured": epochs, "epoch_seconds": epoch_s, "epoch_seconds_steady": steady,
        "first_epoch_seconds": epoch_s[0], "train_epochs": ref_epochs, "train_seconds": train_s,
        "train_projected": projected, "tokens_per_epoch": tokens, "tokens_per_s": tokens / steady,
        "steps_per_epoch": runner.steps_per_epoch, "train_loss": losses,
        "flops_per_token": fpt, "flops_per_epoch": fpt["total"] * tokens,
        "achieved_tflops": fpt["total"] * tokens / steady / 1e12,
        "compile_requested": compile_, "compile_used": runner.forward is not model,  # one device: only compile wraps it
        "amp_bf16": bool(tcfg.amp and device.type == "cuda"), "fused_adamw": device.type == "cuda",
        "model_config": mcfg.to_dict(), "train_config": tcfg.to_dict(), "params": model.parameter_counts(),
    }


def bench_training(s: dict, device: torch.device, streams: tuple, compile_: bool, ceilings: dict) -> dict:
    train, valid, vocab, name = streams
    _log(f"training: {name}, {len(train)} train tokens, vocab {vocab}; PIL phase")
    pil, _ = time_pil_phase(s, device, train, valid, vocab)
    _log(f"PIL phase {pil['seconds']:.2f} s; baseline: {s['baseline_epochs']} epoch(s)")
    base = time_baseline(s, device, train, valid, vocab, compile_)
    # MFU against the dense rate of the dtype the baseline computes in (bf16 autocast on CUDA).
    ref = "bf16_dense" if base["amp_bf16"] else "fp32_dense"
    base |= {"mfu_reference": ref, "mfu_reference_tflops": ceilings[ref]["tflops"],
             "mfu": base["achieved_tflops"] / ceilings[ref]["tflops"]}
    return {
        "dataset": name, "train_tokens": len(train), "vocab_size": vocab, "pil": pil, "baseline": base,
        "pil_phase_over_baseline_epoch": pil["seconds"] / base["epoch_seconds_steady"],
        "pil_phase_over_baseline_train": pil["seconds"] / base["train_seconds"],
    }


# 5. A hybrid's whole training vs the baseline's
def gap_variant(name: str) -> tuple[dict, dict]:
    """``(options, parameters)`` of a variant of the ``gap`` experiment's paper profile
    (pillm/experiments.yaml): its run options and the profile's parameters."""
    from .experiments.registry import load_registry

    params = load_registry()["gap"]["parameters"]["paper"]
    variants = params["variants"]
    if name not in variants:
        raise ValueError(f"--hybrid {name!r} is not a variant of the gap experiment's paper profile; "
                         f"choose one of: {', '.join(variants)}")
    return dict(variants[name]), params


def time_variant(s: dict, device: torch.device, train, valid, vocab: int, options: dict, params: dict) -> dict:
    """The whole training (:func:`run_procedure`) of one run of the ``gap`` experiment's paper profile with
    ``options``, alone, built by the experiment's own ``make_run``: the procedure the paper reports. Only what a
    timing must not include changes: no evaluation per epoch (the baseline's timing has none), the device, and for
    ``--quick`` the bench's small search and batch sizes. No warm-up: part 3 warmed the AdamW and solver kernels.
    """
    from .experiments.grid import make_run, run_spec

    train_cfg = {**(params.get("train") or {}), "device": str(device), "eval_every_epoch": False,
                 "max_train_tokens": None, "max_eval_tokens": None}
    if s["quick"]:
        train_cfg |= {"search_tokens": s["search_tokens"], "solve_batch_size": s["solve_batch_size"]}
    base = {"size": s["size"], "dataset": s["dataset"], "model": dict(params.get("model") or {}),
            "train": train_cfg, "save_checkpoint": False}
    mcfg, tcfg = run_spec(make_run(base, **options, seed=s["seed"])).configs(vocab)
    model = _fresh(mcfg, tcfg.seed, device)
    log, seconds, _ = _timed(lambda: run_procedure(model, train, valid, tcfg, progress=False), device)
    return {"options": options, "seconds": seconds, "adamw_seconds": log.seconds("adamw"),
            "pil_seconds": log.seconds("pil"), "optimizer_steps": log.optimizer_steps, "epochs": tcfg.epochs,
            "model_config": mcfg.to_dict(), "train_config": tcfg.to_dict(), "params": model.parameter_counts()}


def bench_hybrid(s: dict, device: torch.device, streams: tuple, variant: str, baseline: dict) -> dict:
    """The gap variant ``variant`` and attention only, each trained alone, against ``baseline`` (part 3's
    record) for the same number of epochs."""
    train, valid, vocab, name = streams
    _log(f"hybrid: the gap variant {variant!r}, alone, on {name}")
    options, params = gap_variant(variant)
    rec = {"variant": variant} | time_variant(s, device, train, valid, vocab, options, params)
    if rec["epochs"] != baseline["train_epochs"]:
        raise ValueError(f"the hybrid trains {rec['epochs']} epochs but the baseline's timed run is "
                         f"{baseline['train_epochs']} (TrainConfig.epochs): compare equal budgets")
    _log(f"hybrid {variant}: {rec['seconds']:.2f} s (AdamW {rec['adamw_seconds']:.2f} s); "
         f"baseline's run {baseline['train_seconds']:.2f} s; attention only next")
    # An attention-first hybrid's AdamW phase trains exactly this model (its unsolved FFNs are skipped)
    attn = time_variant(s, device, train, valid, vocab, {"method": "attn_only"}, params)
    _log(f"attention only: {attn['seconds']:.2f} s")
    base_s = baseline["train_seconds"]
    return rec | {"baseline_train_seconds": base_s, "baseline_train_projected": baseline["train_projected"],
                  "hybrid_over_baseline_train": rec["seconds"] / base_s,
                  "hybrid_adamw_over_baseline_train": rec["adamw_seconds"] / base_s,
                  "hybrid_sweeps_over_baseline_train": rec["pil_seconds"] / base_s,
                  "attn_only": attn, "attn_only_over_baseline_train": attn["seconds"] / base_s,
                  "hybrid_adamw_over_attn_only": rec["adamw_seconds"] / attn["seconds"]}


# Output
def _finite(obj):
    """JSON-safe copy: non-finite floats become strings ("inf", "nan", "-inf")."""
    return json.loads(json.dumps(obj, default=str), parse_constant=lambda token: str(float(token)))


def write_outputs(result: dict, out_dir: Path, stem: str, figure: bool) -> Path:
    """``<out_dir>/<stem>.json`` (non-finite numbers as strings) and, unless ``figure`` is false, ``<stem>.pdf``."""
    path = Path(out_dir) / f"{stem}.json"
    write_json_atomic(path, _finite(result))
    if figure:
        try:
            plot(result, path.with_suffix(".pdf"))
        except Exception as err:  # noqa: BLE001 - a figure must never lose the JSON
            _log(f"figure not written: {type(err).__name__}: {err}")
    return path


def plot(result: dict, path: Path) -> None:
    """Gram rate vs D, solve time / memory vs D, PIL phase vs baseline times; with ``--distributed``, the PIL
    phase on one device vs all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "world_size" in result:
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        w = result["world_size"]
        ax.bar(["1 device", f"{w} devices"], [result["pil_phase_seconds_1"], result[f"pil_phase_seconds_{w}"]],
               color=["C0", "C2"])
        ax.set(ylabel="seconds", title=f"PIL phase: speedup {result['pil_phase_speedup']:.2f}×")
    else:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        gram = result.get("gram", {}).get("per_size", [])
        for key, label in (("dense_mm", "dense fp32 mm"), ("addmm_pair", "2× addmm_"),
                           ("update", "update"), ("update_masked", "update (mask)")):
            axes[0].plot([r["D"] for r in gram], [r[key]["tflops"] for r in gram], marker="o", label=label)
        axes[0].set(xlabel="D (features)", ylabel="TFLOP/s", title="Gram accumulation (fp32)")
        solve = result.get("solve", {}).get("per_size", [])
        for key in ("auto", "eigh"):
            axes[1].plot([r["D"] for r in solve], [r[key]["seconds"] for r in solve], marker="o", label=f"solve {key}")
        axes[1].set(yscale="log", xlabel="D", ylabel="seconds", title="Ridge solve (float64)")
        if solve and solve[0]["eigh"].get("peak_extra_bytes") is not None:
            ax2 = axes[1].twinx()
            ax2.plot([r["D"] for r in solve], [r["eigh"]["peak_extra_bytes"] / 2**30 for r in solve], "k--",
                     label="eigh peak extra")
            ax2.set_ylabel("GiB")
        for ax in axes[:2]:
            ax.set_xscale("log", base=2)
            ax.legend(fontsize=7)
        if tr := result.get("training"):
            b = tr["baseline"]
            labels = ["PIL phase", "baseline\n1 epoch",
                      f"baseline\n{b['train_epochs']} epochs" + ("\n(projected)" if b["train_projected"] else "")]
            axes[2].bar(labels, [tr["pil"]["seconds"], b["epoch_seconds_steady"], b["train_seconds"]],
                        color=["C2", "C0", "C0"])
            axes[2].set(ylabel="seconds", title="PIL phase vs baseline")
        fig.suptitle(f"pillm bench — {result.get('device_name', '')}", fontsize=9)
    fig.tight_layout()
    pdf = io.BytesIO()
    fig.savefig(pdf, format="pdf")
    write_atomic(path, pdf.getvalue())
    plt.close(fig)


# Single-device run and repeats
def _header(s: dict, args: argparse.Namespace, device: torch.device) -> dict:
    return {
        "benchmark": "pillm bench", "format": 1, "quick": s["quick"], "device": str(device),
        "device_name": device_name(device),
        "environment": environment(), "settings": s, "args": {k: v for k, v in vars(args).items() if k != "func"},
        "date": utc_now(), "compute_version": COMPUTE_VERSION,
        "timing": "median of repeats after warm-up; CUDA events on GPU, perf_counter on CPU",
    }


def _parts(args) -> tuple[str, ...]:
    parts = tuple(p for p in str(args.parts or ",".join(DEFAULT_PARTS)).split(",") if p)
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise ValueError(f"--parts {','.join(bad)} is not valid; allowed values: {', '.join(PARTS)}")
    if "hybrid" in parts and "train" not in parts:
        raise ValueError("--parts hybrid is timed against the baseline of part train: use --parts train,hybrid")
    if "hybrid" in parts and not args.hybrid:
        raise ValueError("--parts ...,hybrid needs --hybrid NAME: a variant of the gap experiment's paper profile "
                         "in pillm/experiments.yaml (e.g. the best hybrid on validation that the paper reports)")
    return parts


def run_single(args: argparse.Namespace, device: torch.device, stem: str) -> dict:
    """Ceilings, then Gram + solve per D, then PIL phase vs baseline, then the hybrid; the JSON is written
    (``"complete": false``) after each part, so a later failure keeps the numbers."""
    s = settings(args, device)
    parts = _parts(args)
    torch.manual_seed(s["seed"])
    t_start = time.perf_counter()
    result = _header(s, args, device) | {"complete": False}
    result["ceilings"] = measure_ceilings(s, device)
    copy = result["ceilings"]["copy"]
    headline: dict[str, Any] = {}
    if "gram" in parts or "solve" in parts:
        gram_rows, solve_rows = [], []
        for i, d in enumerate(sorted(s["sizes"])):
            _log(f"gram D={d} N={s['rows']} K={s['outputs']}")
            rec, acc = bench_gram(d, s, device, copy["bytes"] / copy["seconds_median"])
            gram_rows.append(rec)
            if "solve" in parts:
                _log(f"solve D={d}")
                solve_rows.append(bench_solve(acc, s, device, warm=i == 0))
            del acc
            if device.type == "cuda":
                torch.cuda.empty_cache()
        largest = gram_rows[-1]
        result["gram"] = {"dtype": "float32", "tf32": False, "rows": s["rows"], "outputs": s["outputs"],
                          "fp32_dense_square_tflops": result["ceilings"]["fp32_dense"]["tflops"],
                          "per_size": gram_rows}
        headline |= {"gram_rate_ratio": largest["gram_rate_ratio"],
                     "gram_rate_ratio_unmasked": largest["gram_rate_ratio_unmasked"], "gram_rate_ratio_D": largest["D"]}
        if solve_rows:
            result["solve"] = {"dtype": "float64", "lam_relative": s["lam"], "per_size": solve_rows}
        write_outputs(result | headline, Path(args.out), stem, figure=False)
    if "train" in parts:
        streams = load_streams(s, device)
        tr = result["training"] = bench_training(s, device, streams, bool(args.compile), result["ceilings"])
        headline |= {k: tr[k] for k in ("pil_phase_over_baseline_epoch", "pil_phase_over_baseline_train")}
        headline |= {"baseline_mfu": tr["baseline"]["mfu"], "baseline_tokens_per_s": tr["baseline"]["tokens_per_s"],
                     "compile_used": tr["baseline"]["compile_used"]}
        write_outputs(result | headline, Path(args.out), stem, figure=False)
    if "hybrid" in parts:
        h = result["hybrid"] = bench_hybrid(s, device, streams, args.hybrid, tr["baseline"])
        headline |= {k: v for k, v in h.items() if "_over_" in k}
    return result | headline | {"seconds_total": time.perf_counter() - t_start, "complete": True}


def combine(paths: list[Path], out_dir: Path) -> Path:
    """Summarise complete repeats of one benchmark into ``<device>.json``: the first repeat's record, with each
    headline ratio replaced by its median over the repeats (``<key>_min``/``<key>_max`` beside it) and every
    repeat's values under ``repeats``."""
    records = [json.loads(path.read_text()) for path in paths]
    for path, rec in zip(paths, records):
        if not rec.get("complete"):
            raise ValueError(f"{path} is not a complete benchmark: rerun it before combining")
    for what in ("device_name", "quick", "compute_version"):
        seen = {str(r.get(what)) for r in records}
        if len(seen) > 1:
            raise ValueError(f"the repeats differ in {what} ({', '.join(sorted(seen))}): combine like with like")
    keys = [k for k in records[0] if k.startswith(HEADLINE_PREFIXES) and isinstance(records[0][k], (int, float))
            and not isinstance(records[0][k], bool) and all(isinstance(r.get(k), (int, float)) for r in records)]
    out = dict(records[0])
    for k in keys:
        values = [float(r[k]) for r in records]
        out[k], out[f"{k}_min"], out[f"{k}_max"] = statistics.median(values), min(values), max(values)
    out["repeat_keys"] = keys
    out["repeats"] = [{"file": p.name, "date": r.get("date"), **{k: r[k] for k in keys}}
                      for p, r in zip(paths, records)]
    out["timing"] = f"median over {len(records)} repeats of the whole benchmark, each alone on the device"
    # named from the recorded device: repeats combine on a machine without that GPU
    stem = device_slug(str(records[0]["device_name"]), bool(records[0]["quick"]))
    return write_outputs(out, out_dir, stem, figure=False)


# 4. Several GPUs (torchrun)
def ffn_weights(model) -> list[torch.Tensor]:
    return [b.ffn.out_weight.detach().float().cpu().clone() for b in model.blocks if b.ffn is not None]


def allreduce_rate(d: int, k: int, device: torch.device, s: dict) -> dict:
    """All-reduce of one layer's statistics (G [D, D] and C [D, K] fp32); bus bandwidth as NCCL reports it."""
    world = dist.get_world_size()
    g = torch.randn(d, d, device=device)
    c = torch.randn(d, k, device=device)

    def fn():
        dist.all_reduce(g)
        dist.all_reduce(c)

    secs = time_calls(fn, device, warmup=1, repeats=max(3, s["repeats"] // 2))
    nbytes = 4.0 * (d * d + d * k)
    t = _timing(secs, None, nbytes)
    t["bus_gbytes_per_s"] = nbytes * 2 * (world - 1) / world / t["seconds_median"] / 1e9
    return t


def run_distributed(args: argparse.Namespace) -> dict | None:
    """Time the PIL phase on 1 device (rank 0 alone) and on all ranks; compare the solutions. Must run under
    ``torchrun``; the group is NCCL on GPUs (one per rank) and gloo on CPU. The result on rank 0, None elsewhere."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world < 2:
        raise ValueError("--distributed needs several processes: torchrun --nproc_per_node=2 -m pillm bench "
                         "--distributed")
    previous = {k: os.environ.get(k) for k, v in NO_MULTICAST_ENV.items() if os.environ.get(k) != v}
    os.environ.update(NO_MULTICAST_ENV)  # before NCCL starts
    device = torch.device("cpu")
    if torch.cuda.is_available() and (args.device or "auto") != "cpu":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    s = settings(args, device)
    train, valid, vocab, name = load_streams(s, device)
    t_start = time.perf_counter()
    if rank == 0:  # rank 0 alone, before the group exists: nothing is sharded
        _log(f"1 device: PIL phase on {name} ({len(train)} tokens)")
        single, model = time_pil_phase(s, device, train, valid, vocab)
        w1 = ffn_weights(model)
        del model
    # A long timeout: the other ranks wait here while rank 0 times the phase alone.
    backend = "nccl" if device.type == "cuda" else "gloo"
    kw = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30), **kw)
    try:
        dist.all_reduce(torch.ones(1 << 20, device=device))  # communicator set-up outside the timing
        _log(f"{world} devices: PIL phase, sharded")
        multi, model = time_pil_phase(s, device, train, valid, vocab)
        wn = ffn_weights(model)
        per_rank: list[Any] = [None] * world  # every rank's solution, to compare with rank 0's
        dist.all_gather_object(per_rank, {"rank": rank, "pil_seconds": multi["seconds"], "weights": wn,
                                          "etas": [r["eta"] for r in multi["per_layer"]]})
        allreduce = allreduce_rate(multi["features_D"], multi["outputs_K"], device, s)
    finally:
        dist.destroy_process_group()
    if rank != 0:
        return None
    for r in per_rank:
        r["max_abs_diff_vs_rank0"] = max(float((a - b).abs().max()) for a, b in zip(r.pop("weights"), wn))
    max_abs = max(float((a - b).abs().max()) for a, b in zip(w1, wn))
    scale = max(float(a.abs().max()) for a in w1)
    t_multi = multi["wall_seconds"]
    speedup = single["wall_seconds"] / t_multi  # both: wall clock between device syncs (and barriers)
    return _header(s, args, device) | {
        "world_size": world, "backend": backend, "dataset": name,
        "env_set": {k: os.environ[k] for k in NO_MULTICAST_ENV}, "env_previous": previous,
        "single": single, "multi": {**multi, "seconds_phase_rank0": multi["seconds"], "seconds": t_multi,
                                    "per_rank": per_rank},
        "allreduce": allreduce,
        f"pil_phase_speedup_{world}gpu": speedup, "pil_phase_speedup": speedup,
        "pil_phase_seconds_1": single["wall_seconds"], f"pil_phase_seconds_{world}": t_multi,
        "max_abs_diff_W": max_abs, "max_rel_diff_W": max_abs / scale if scale > 0 else max_abs,
        "ranks_identical": all(r["max_abs_diff_vs_rank0"] == 0.0 for r in per_rank),
        "etas_identical": all(r["etas"] == [x["eta"] for x in single["per_layer"]] for r in per_rank),
        "seconds_total": time.perf_counter() - t_start, "complete": True,
    }


# Entry points
def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--out", default="results/bench", help="output directory (default results/bench)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, CPU-friendly (seconds); used by the tests")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--sizes", help="comma-separated feature counts D for the Gram/solve benchmarks "
                                   f"(default {','.join(map(str, FULL_SIZES))})")
    p.add_argument("--baseline-epochs", type=int, help="baseline AdamW epochs to time (default 1; 10 = the full run)")
    p.add_argument("--compile", action="store_true", help="torch.compile the baseline (TrainConfig.compile)")
    p.add_argument("--distributed", action="store_true",
                   help="under torchrun: PIL phase on every rank vs rank 0 alone → <slug>-<world>gpu.json")
    p.add_argument("--parts", help=f"comma-separated subset of {','.join(PARTS)} (default {','.join(DEFAULT_PARTS)})")
    p.add_argument("--hybrid", metavar="NAME", help="with --parts ...,hybrid: the variant of the gap experiment's "
                   "paper profile to time (a name under gap.parameters.paper.variants in pillm/experiments.yaml)")
    p.add_argument("--no-figure", action="store_true", help="skip the PDF figure")
    p.add_argument("--tag", help="suffix of the output's name (<device>-<tag>.json), e.g. r1, r2, r3 for the repeats "
                                 "that --combine then summarises")
    p.add_argument("--combine", nargs="+", metavar="JSON", help="no measurement: summarise complete repeats (the "
                   "same device and parts) into <device>.json with each headline ratio's median, minimum and maximum")
    return p


def main(args: argparse.Namespace | list[str] | None = None) -> int:
    """Run the benchmark (``args`` from :func:`add_arguments`, or an argv list); prints the headline ratios."""
    if not isinstance(args, argparse.Namespace):
        args = add_arguments(argparse.ArgumentParser(prog="pillm bench", description=__doc__.split("\n\n")[0])) \
            .parse_args(args)
    if args.combine:
        path = combine([Path(f) for f in args.combine], Path(args.out))
        result = json.loads(path.read_text())
    else:
        if args.distributed:
            result = run_distributed(args)
            if result is None:
                return 0
            unit = "gpu" if result["backend"] == "nccl" else "proc"
            stem = f"{device_slug(result['device_name'], result['quick'])}-{result['world_size']}{unit}"
        else:
            device = resolve_device(args.device or "auto")
            stem = device_slug(device_name(device), bool(args.quick)) + (f"-{args.tag}" if args.tag else "")
            result = run_single(args, device, stem)
        path = write_outputs(result, Path(args.out), stem, figure=not args.no_figure)
    keys = [k for k in result if k.startswith(HEADLINE_PREFIXES + ("max_", "compile"))]
    print(json.dumps({"json": str(path), **{k: result[k] for k in keys}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
