"""Rapid adaptation of a pretrained model to a new domain.

A model pretrained on WikiText-2 (a run that kept its checkpoint) is adapted to PTB or to the
TinyStories slice, read with the *pretraining* word vocabulary (unknown words become ``<unk>``; the
out-of-vocabulary rate is reported), in one of three ways:

``resolve``   the closed-form phase again, on the new domain (:func:`pillm.train.pil_phase`: the
              readouts are re-solved with local targets and η chosen on the new domain's validation
              split). Its base target is the model's current FFN output, so in function space the
              re-solve is a ridge regression toward the old readout. No optimizer step.
``lora``      rank-``r`` adapters on every attention projection (``qkv`` and output), trained by
              AdamW; every other weight frozen.
``finetune``  AdamW on every parameter, the solved readouts included.

Reported: adaptation wall time, optimizer steps, trained parameters, new-domain validation and test
perplexity before and after, and WikiText-2 test perplexity before and after (forgetting).

    pillm experiments --profile paper --only adaptation      # notebooks/adaptation.ipynb
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data import TokenStream, WordTokenizer, load_corpus, wikitext_tokenize
from ..evaluate import evaluate_stream
from ..run import environment, load, write_json_atomic
from ..solver import sync_device
from ..train import AdamWRunner, RunLog, TrainConfig, pil_phase, resolve_device

HOW = ("resolve", "lora", "finetune")
DOMAINS = ("ptb", "tinystories")


@dataclass
class AdaptSpec:
    """One adaptation run: which pretrained checkpoint, which new domain, how."""

    checkpoint: str  # a run directory's checkpoint/ (written with save_checkpoint=True)
    domain: str = "ptb"
    how: str = "resolve"
    train: dict = field(default_factory=dict)  # TrainConfig overrides (epochs, lr, lam, batch_size, …)
    lora_rank: int = 8

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, not {self.domain!r}")
        if self.how not in HOW:
            raise ValueError(f"how must be one of {HOW}, not {self.how!r}")
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank must be at least 1, not {self.lora_rank}")

    def config(self) -> TrainConfig:
        # The method only selects which FFN kind the config expects; adaptation never calls
        # run_procedure, so any closed-form method would do.
        return TrainConfig(**{"method": "attn_then_pil", **self.train})


class LoRALinear(nn.Module):
    """``base(x) + x Aᵀ Bᵀ`` with a frozen ``base`` and trainable rank-``r`` ``A`` [r, in], ``B`` [out, r].

    ``B`` starts at zero, so the adapted model starts as the pretrained one."""

    def __init__(self, base: nn.Linear, rank: int):
        super().__init__()
        self.base = base.requires_grad_(False)
        device, n_in = base.weight.device, base.in_features
        self.a = nn.Parameter(torch.randn(rank, n_in, device=device) / math.sqrt(n_in))
        self.b = nn.Parameter(torch.zeros(base.out_features, rank, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.a.T) @ self.b.T


def add_attention_lora(model: nn.Module, rank: int) -> None:
    """Freeze ``model`` and wrap every attention projection in a :class:`LoRALinear`."""
    model.requires_grad_(False)
    for block in model.blocks:
        block.attn.qkv = LoRALinear(block.attn.qkv, rank)
        block.attn.proj = LoRALinear(block.attn.proj, rank)


def encode_domain(domain: str, tok: WordTokenizer, max_train_tokens: int | None = None) -> dict:
    """The new domain's splits as ids of the pretraining vocabulary, and its OOV rate.

    PTB is already word-tokenized (lower case, ``N`` for numbers); TinyStories is raw text and is
    split the way WikiText was (:func:`pillm.data.wikitext_tokenize`) first."""
    corpus = load_corpus(domain)
    ids = {split: tok.encode_lines(docs if domain == "ptb" else [wikitext_tokenize(d) for d in docs])
           for split, docs in corpus.splits.items() if split in ("train", "valid", "test")}
    if max_train_tokens is not None:
        ids["train"] = ids["train"][:max_train_tokens]
    words = ids["test"]  # tokens, line ends included
    # PTB marks its own rare words <unk>: those are not out of *our* vocabulary.
    own_unk = sum(line.split().count(WordTokenizer.UNK) for line in corpus.splits["test"]) if domain == "ptb" else 0
    oov = (int((words == tok.unk_id).sum()) - own_unk) / max(1, words.numel())
    return {**ids, "oov_rate": oov, "files": corpus.files}


def _ppl(model, ids: torch.Tensor, cfg: TrainConfig) -> float:
    return float(evaluate_stream(model, ids, batch_size=cfg.batch_size, max_tokens=cfg.max_eval_tokens)["ppl"])


def execute(spec: AdaptSpec, out: str | Path | None = None, *, progress: bool = True) -> tuple[dict, nn.Module]:
    """Adapt ``spec.checkpoint`` to ``spec.domain`` by ``spec.how``; writes ``out/result.json``."""
    cfg = spec.config()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model, tok = load(spec.checkpoint, device=str(device))
    if not isinstance(tok, WordTokenizer):
        raise ValueError(f"{spec.checkpoint}: adaptation reads the new domain with the pretraining word "
                         f"vocabulary, but this checkpoint has a {type(tok).__name__}; pretrain with tokenizer='word'")
    new = encode_domain(spec.domain, tok, cfg.max_train_tokens)
    wiki = tok.encode_lines(load_corpus("wikitext2").splits["test"])
    splits = {"new_valid_ppl": new["valid"], "new_test_ppl": new["test"], "wiki_test_ppl": wiki}
    before = {k: _ppl(model, ids, cfg) for k, ids in splits.items()}
    train, valid = TokenStream(new["train"], device), TokenStream(new["valid"], device)
    log = RunLog()
    sync_device(device)
    t0 = time.perf_counter()
    if spec.how == "resolve":
        pil_phase(model, train, valid, cfg, log, name="adapt", progress=progress)
    else:
        if spec.how == "lora":
            add_attention_lora(model, spec.lora_rank)
        else:
            model.requires_grad_(True)  # every weight, the solved readouts too (buffers stay fixed)
        runner = AdamWRunner(model, train, valid, cfg, log, cfg.epochs, progress)
        for _ in range(cfg.epochs):
            runner.run_epoch("adapt")
    sync_device(device)
    adapt_s = time.perf_counter() - t0
    model.eval()
    after = {k: _ppl(model, ids, cfg) for k, ids in splits.items()}
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad) if spec.how != "resolve" else 0
    result = {
        "kind": "adaptation", "method": spec.how, "how": spec.how, "domain": spec.domain, "seed": cfg.seed,
        "spec": asdict(spec), "train_config": cfg.to_dict(), "oov_rate": new["oov_rate"],
        "train_tokens": int(new["train"].numel()), "before": before, "after": after,
        # the summary's usual columns: the adapted model on the new domain
        "valid_ppl": after["new_valid_ppl"], "test_ppl": after["new_test_ppl"], "wiki_test_ppl": after["wiki_test_ppl"],
        "adapt_s": adapt_s, "total_s": adapt_s, "optimizer_steps": log.optimizer_steps, "trained_params": trained,
        "solves": log.solves, "phases": log.phases, "data_files": new["files"], "environment": environment(),
        "complete": True,
    }
    if out is not None:
        write_json_atomic(Path(out) / "result.json", result)
    return result, model
