"""Fixed attention that means something, for pure PIL.

Pure PIL takes no optimizer step, so its attention stays whatever it was set to. At its random
initialisation a head mixes the context with weights that carry no information about the words; this
module sets every head instead to a fixed, interpretable pattern, and then runs the ordinary pure-PIL
procedure (:func:`pillm.train.run_procedure`, method ``pil_pure``: closed-form FFNs and, optionally, a
closed-form output head) on top. Still zero gradient steps anywhere.

Layout of the residual stream ``[C]``: the first ``P = C / n_head`` coordinates hold a position code, the
other ``C − P`` the token embedding (random, or closed-form PPMI vectors). Positions are coded by sinusoids
of ``P / 2`` random frequencies ``ω_f ∈ (0.1, π)``, ``p_t = (cos ω_f t, sin ω_f t)_f``: a rotation ``R_k``
(angle ``−k ω_f`` per pair) maps ``p_t`` to ``p_{t−k}`` exactly, and
``p_{i−k} · p_j = Σ_f cos ω_f (i−k−j)`` is ``P / 2`` at ``j = i − k`` and of order ``√(P/4)`` elsewhere
(incommensurate frequencies: no aliasing).

Head kinds (each head of every layer; ``heads`` lists one per head):

``prevK``  attends to the token ``K`` positions back: ``q = s R_K Π_P x̂``, ``k = Π_P x̂`` (``x̂``: LN₁ of the
           stream), ``s`` set so that the logit at ``j = i − K`` stands ``sharpness`` nats above the mean
``avg``    a causal average of the whole context: ``q = 0``

Every head's value reads the token part of ``x̂`` through a fixed random map, and the output projection writes
only into the token coordinates, so the position code reaches every layer unchanged by attention.

    pillm experiments --profile paper --only pure_attention     # notebooks/pure_attention.ipynb
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..data import TokenStream, load_tokenized
from ..evaluate import evaluate_stream
from ..model import PILLM
from ..run import RunSpec, result_record, save_checkpoint, write_json_atomic
from ..solver import sync_device
from ..train import ppmi_embeddings, resolve_device, run_procedure

_KIND = re.compile(r"prev([1-9]\d*)|avg")
EMBEDS = ("random", "ppmi")


@dataclass
class FixedAttentionSpec:
    """One pure-PIL run whose attention heads are fixed patterns (``heads``, one per head)."""

    heads: tuple = ("prev1", "prev2", "prev3", "avg")
    size: str = "small"
    dataset: str = "wikitext2"
    tokenizer: str = "auto"
    embed: str = "ppmi"  # token embeddings in the token coordinates: "random" or closed-form "ppmi"
    sharpness: float = 12.0  # nats by which a prevK head's logit at i − K exceeds the mean logit
    model: dict = field(default_factory=dict)  # ModelConfig overrides
    train: dict = field(default_factory=dict)  # TrainConfig overrides of pil_pure (solve_head, lam, seed, …)
    save_checkpoint: bool = False

    def __post_init__(self) -> None:
        self.heads = tuple(str(h) for h in self.heads)
        bad = [h for h in self.heads if not _KIND.fullmatch(h)]
        if bad or not self.heads:
            raise ValueError(f"heads must be a non-empty list of 'prevK' (K ≥ 1) or 'avg', got {list(self.heads)}")
        if self.embed not in EMBEDS:
            raise ValueError(f"embed must be one of {EMBEDS}, not {self.embed!r}")
        if "embed_init" in self.train:
            raise ValueError("give the embeddings as embed='ppmi' or 'random', not train['embed_init']: they fill "
                             "only the token coordinates here")
        if self.train.get("method", "pil_pure") != "pil_pure":
            raise ValueError("a fixed-attention run is pure PIL: drop train['method']")
        if not self.sharpness > 0:
            raise ValueError(f"sharpness must be > 0 (nats), got {self.sharpness}")

    def run_spec(self) -> RunSpec:
        return RunSpec(method="pil_pure", size=self.size, dataset=self.dataset, tokenizer=self.tokenizer,
                       model=self.model, train=self.train)

    def config(self):
        return self.run_spec().configs(vocab_size=1)[1]


def position_codes(block_size: int, dim: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sinusoidal codes ``[T, dim]`` of ``dim / 2`` random frequencies, and the frequencies ``[dim / 2]``."""
    omega = 0.1 + (math.pi - 0.1) * torch.rand(dim // 2, generator=generator, dtype=torch.float64)
    angle = torch.arange(block_size, dtype=torch.float64)[:, None] * omega  # [T, F]
    codes = torch.stack([angle.cos(), angle.sin()], dim=-1).reshape(block_size, dim)
    return codes, omega


def shift(omega: torch.Tensor, k: int) -> torch.Tensor:
    """``[2F, 2F]`` block rotation with ``shift(ω, k) @ p_t = p_{t−k}`` for the codes of :func:`position_codes`."""
    c, s = torch.cos(k * omega), torch.sin(k * omega)
    blocks = [torch.tensor([[ci, si], [-si, ci]], dtype=torch.float64) for ci, si in zip(c.tolist(), s.tolist())]
    return torch.block_diag(*blocks)


@torch.no_grad()
def fix_attention(model: PILLM, heads: tuple, sharpness: float, generator: torch.Generator) -> dict:
    """Write the position code into ``pos_emb``, clear the position coordinates of ``tok_emb`` and set every
    layer's attention to ``heads``. Returns the layout (``pos_dim``, the frequencies)."""
    cfg = model.config
    c, n_head = cfg.n_embd, cfg.n_head
    if len(heads) != n_head:
        raise ValueError(f"heads lists {len(heads)} kinds but the model has n_head={n_head}: give one per head")
    d = p = c // n_head  # the position code takes one head's width
    if p < 2 or p % 2 or c - p < 1:
        raise ValueError(f"n_embd={c} with n_head={n_head} leaves no room for a position code of even width "
                         f"and token coordinates; choose n_head ≥ 2 with n_embd / n_head even")
    codes, omega = position_codes(cfg.block_size, p, generator)
    tok = model.tok_emb.weight
    tok[:, :p] = 0  # the position coordinates hold the code alone
    # the position code as large as a token embedding, so that LN₁ weighs both alike
    amplitude = float(tok.norm(dim=1).mean()) / math.sqrt(p / 2)
    model.pos_emb.weight.zero_()
    model.pos_emb.weight[:, :p] = (amplitude * codes).to(tok.dtype)
    # LN₁ at init: x̂ = (x − mean) / std, so the code's coordinates reach q, k scaled by 1 / std
    rms = math.sqrt((tok.norm(dim=1).pow(2).mean() + (amplitude ** 2) * p / 2) / c)
    code_sq = (amplitude / rms) ** 2  # |x̂_P|² per unit of Σ_f cos(·), i.e. the logit scale before s
    for block in model.blocks:
        attn = block.attn
        qkv = torch.zeros(3 * c, c, dtype=torch.float64)
        proj = torch.zeros(c, c, dtype=torch.float64)
        for h, kind in enumerate(heads):
            rows = slice(h * d, (h + 1) * d)
            m = _KIND.fullmatch(kind)
            if m.group(1):  # prevK: logit = s · code_sq · Σ_f cos ω_f (i − K − j) / √d (SDPA's scale)
                s = sharpness * math.sqrt(d) / (code_sq * p / 2)
                qkv[rows, :p] = s * shift(omega, int(m.group(1)))
                qkv[c + h * d:c + (h + 1) * d, :p] = torch.eye(p, dtype=torch.float64)
            # value: the token coordinates through a fixed random map (variance-preserving)
            qkv[2 * c + h * d:2 * c + (h + 1) * d, p:] = (
                torch.randn(d, c - p, generator=generator, dtype=torch.float64) / math.sqrt(c - p))
            # output: into the token coordinates only, so the position code stays clean for the layers above, and
            # at the stream's own scale (the values read LN₁'s unit-variance output; the stream has RMS `rms`),
            # so that the context joins the current token's embedding instead of drowning it
            proj[p:, rows] = torch.randn(c - p, d, generator=generator, dtype=torch.float64) * (rms / math.sqrt(c))
        attn.qkv.weight.copy_(qkv.to(attn.qkv.weight.dtype))
        attn.qkv.bias.zero_()
        attn.proj.weight.copy_(proj.to(attn.proj.weight.dtype))
        attn.proj.bias.zero_()
    return {"pos_dim": p, "omega": omega.tolist(), "amplitude": amplitude}


def execute(spec: FixedAttentionSpec, out: str | Path | None = None, *, progress: bool = True) -> tuple[dict, PILLM]:
    """Build the model, fix its attention, run pure PIL on it; writes ``out/result.json``.

    The result has the fields of :func:`pillm.run.execute`'s (the same procedure after a different
    initialisation), plus ``heads`` and ``layout``."""
    rs = spec.run_spec()
    probe = rs.configs(vocab_size=1)[1]
    torch.manual_seed(probe.seed)
    device = resolve_device(probe.device)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    corpus = load_tokenized(spec.dataset, spec.tokenizer, max_train_tokens=probe.max_train_tokens)
    mcfg, tcfg = rs.configs(corpus.vocab_size)
    torch.manual_seed(tcfg.seed)  # the same initialisation as a pil_pure run of this seed, before the changes
    model = PILLM(mcfg).to(device)
    train, valid = TokenStream(corpus.train, device), TokenStream(corpus.valid, device)
    generator = torch.Generator().manual_seed(tcfg.seed)
    t0 = time.perf_counter()
    if spec.embed == "ppmi":  # as embed_init='ppmi', in the token coordinates only
        p = mcfg.n_embd // mcfg.n_head
        vec = ppmi_embeddings(train.ids, mcfg.vocab_size, mcfg.n_embd - p, tcfg.ppmi_window)
        with torch.no_grad():
            model.tok_emb.weight[:, p:] = vec.to(model.tok_emb.weight) * model.tok_emb.weight.std()
    layout = fix_attention(model, spec.heads, spec.sharpness, generator)
    sync_device(device)
    setup_s = time.perf_counter() - t0
    log = run_procedure(model, train, valid, tcfg, progress=progress)
    log.phases.insert(0, {"phase": "pil", "name": "fixed_attention", "seconds": setup_s})
    total_s = time.perf_counter() - t0
    ev = dict(batch_size=tcfg.batch_size, max_tokens=tcfg.max_eval_tokens)
    scores = {"valid": evaluate_stream(model, valid.ids, **ev), "test": evaluate_stream(model, corpus.test, **ev)}
    result = result_record(rs, mcfg, tcfg, model, corpus, log, scores, total_s, {
        "kind": "fixed_attention", "heads": list(spec.heads), "embed": spec.embed, "layout": layout,
        "spec": asdict(spec)})
    if out is not None:
        out = Path(out)
        if spec.save_checkpoint:
            save_checkpoint(model, corpus.tokenizer, out / "checkpoint",
                            {"train": tcfg.to_dict(), "dataset": spec.dataset, "method": "pil_pure"})
        write_json_atomic(out / "result.json", result)
    return result, model


__all__ = ["EMBEDS", "FixedAttentionSpec", "execute", "fix_attention", "position_codes", "shift"]
