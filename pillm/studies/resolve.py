"""The re-solve path of a trained attention→PIL checkpoint, shared by the first-layer and λ-path studies.

A study opens the checkpoint (:func:`open_checkpoint`: its own solve settings unless the spec overrides
them, the checks, the corpus, the perplexities before), re-solves the layers bottom-up its own way from
zeroed readouts (:func:`timed_resolve`), and :func:`finish` scores the result and writes the fields every
re-solve result has.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..data import TokenizedCorpus, TokenStream, load_tokenized
from ..evaluate import evaluate_stream
from ..model import PILLM, SolvedFFN
from ..run import checkpoint_dir, environment, load, write_json_atomic
from ..solver import sync_device
from ..train import RunLog, TrainConfig, resolve_device, search_windows

#: TrainConfig fields of the checkpoint's own solve that a re-solve repeats unless its spec overrides them
SOLVE_SETTINGS = ("lam", "eta_grid", "search_tokens", "max_train_tokens", "max_eval_tokens", "solve_batch_size",
                  "target", "seed")


class ResolveSpec:
    """What the specs of the re-solve studies share: the training config is attention→PIL's, whose closed-form
    phase they repeat (with the spec's ``train`` overrides)."""

    def config(self) -> TrainConfig:
        return TrainConfig(**{"method": "attn_then_pil", **self.train})


@dataclass
class Resolve:
    """An opened checkpoint and what its re-solve reads."""

    cfg: TrainConfig
    model: PILLM
    layers: list  # indices of the closed-form FFNs
    corpus: TokenizedCorpus
    train: TokenStream
    valid: TokenStream
    search: tuple  # the validation windows of the step-size search
    before: dict  # perplexities of the checkpoint as it was

    def evaluate(self) -> tuple[dict, dict]:
        ev = dict(batch_size=self.cfg.batch_size, max_tokens=self.cfg.max_eval_tokens)
        return evaluate_stream(self.model, self.valid.ids, **ev), evaluate_stream(self.model, self.corpus.test, **ev)


def open_checkpoint(checkpoint, dataset: str, tokenizer: str, overrides: dict, study: str) -> Resolve:
    """Load ``checkpoint`` (trained by attention→PIL) with its solve settings, ``overrides`` on top."""
    stored = json.loads((checkpoint_dir(checkpoint) / "config.json").read_text())
    if stored.get("method") != "attn_then_pil":
        raise ValueError(f"{checkpoint}: a {study} run repeats attention→PIL's closed-form phase, but this "
                         f"checkpoint was trained by {stored.get('method')!r}; pretrain with method='attn_then_pil'")
    solve = {k: v for k, v in stored.get("train", {}).items() if k in SOLVE_SETTINGS}
    cfg = TrainConfig(**solve | overrides | {"method": "attn_then_pil"})
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model, _ = load(checkpoint, device=str(device))
    layers = [i for i, b in enumerate(model.blocks)
              if isinstance(b.ffn, SolvedFFN) and not b.ffn.out_weight.requires_grad]
    if not layers:
        raise ValueError(f"{checkpoint}: no closed-form FFN to re-solve (ffn={model.config.ffn!r}); "
                         "pretrain with a PIL method such as attn_then_pil")
    corpus = load_tokenized(dataset, tokenizer, max_train_tokens=cfg.max_train_tokens)
    if corpus.vocab_size != model.config.vocab_size:
        raise ValueError(f"{dataset} has {corpus.vocab_size} types with tokenizer {tokenizer!r}, the "
                         f"checkpoint {model.config.vocab_size}: give the dataset and tokenizer it was trained with")
    train, valid = TokenStream(corpus.train, device), TokenStream(corpus.valid, device)
    r = Resolve(cfg, model, layers, corpus, train, valid, search_windows(valid, cfg, model.config.block_size), {})
    v, t = r.evaluate()
    r.before = {"valid_ppl": v["ppl"], "test_ppl": t["ppl"]}
    return r


def timed_resolve(r: Resolve, solve_one, phase: str) -> tuple[RunLog, float]:
    """Zero the readouts (an unsolved layer is the identity, as before the first solve), then
    ``solve_one(layer) → record`` bottom-up; returns the log and the seconds."""
    log = RunLog()
    device = next(r.model.parameters()).device
    sync_device(device)
    t0 = time.perf_counter()
    for layer in r.layers:
        r.model.blocks[layer].ffn.clear()
    for layer in r.layers:  # bottom-up: each layer's inputs with the layers below already re-solved
        log.solves.append(solve_one(layer) | {"phase": phase, "sweep": 0})
    sync_device(device)
    return log, time.perf_counter() - t0


def finish(r: Resolve, spec, kind: str, log: RunLog, solve_s: float, out=None, **fields) -> dict:
    """Score the re-solved model and write ``out/result.json`` with the fields every re-solve has."""
    r.model.eval()
    v, t = r.evaluate()
    result = {
        "kind": kind, "method": "attn_then_pil", **fields, "seed": r.cfg.seed, "spec": asdict(spec),
        "model_config": r.model.config.to_dict(), "train_config": r.cfg.to_dict(), "before": r.before,
        "valid_ppl": v["ppl"], "valid_acc": v["acc"], "test_ppl": t["ppl"], "test_acc": t["acc"],
        "test_tokens": t["tokens"], "pil_s": solve_s, "total_s": solve_s, "optimizer_steps": 0,
        "params": r.model.parameter_counts(), "solves": log.solves, "train_tokens": int(r.corpus.train.numel()),
        "data_files": r.corpus.files, "environment": environment(), "complete": True,
    }
    if out is not None:
        write_json_atomic(Path(out) / "result.json", result)
    return result
