"""PIL-LM: a decoder-only pre-LN Transformer whose feed-forward layers can be solved in closed form.

Every block is ``x ← x + Attn(LN₁ x);  x ← x + FFN(LN₂ x)``. The FFN kind is a config field:

=========  ===================================================================================
``mlp``    ``W₂·GELU(W₁·u)``, trained by backprop (the baseline)
``none``   no FFN (attention-only control)
``pil``    ``H = GELU(u·W_rand)`` with a fixed Gaussian projection, output ``H·W_out + b``;
           ``W_out, b`` are solved by ridge regression (:mod:`pillm.solver`), never by gradients
``bipil``  two independent fixed projections ``W_fwd, W_bwd`` fused by ``concat``/``sum``/``gate``
``lora``   frozen random ``W₁, W₂`` plus trainable rank-r adapters on both (LoRA-style baseline)
``rf_adamw`` the ``pil`` random features with ``W_out, b`` trained by AdamW: isolates
           "closed form vs gradient" from "random first layer"
=========  ===================================================================================

Random projections are scaled so that pre-activations of a LayerNorm-ed input have variance
``proj_scale²`` (1 by default): GELU then works in its curved regime. (A ``1/m`` scale would put
pre-activations at ~0.01, where GELU(z) ≈ z/2 is linear and the features collapse to a linear map.)

Solved weights are ``nn.Parameter(requires_grad=False)`` so that they are saved, moved and counted
like every other weight; random projections are persistent buffers and counted as frozen.

Initialisation is paired across FFN kinds: every FFN draws its weights from its own generator,
seeded from the run's seed and the layer index, so at one seed every kind starts from the same
embeddings and attention and a comparison by seed compares methods, not initialisations.
Shapes in comments: B batch, T time, C = n_embd, M = random features, V = vocab.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

FFN_KINDS = ("mlp", "none", "pil", "bipil", "lora", "rf_adamw")
FUSIONS = ("concat", "sum", "gate")
HEADS = ("tied", "solved")
PROJ_INITS = ("random", "landmarks")
IGNORE_INDEX = -100  # targets equal to this (padding) contribute nothing to losses or solves

PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=2, block_size=64),
    "small": dict(n_layer=4, n_embd=256, n_head=4),
    "medium": dict(n_layer=6, n_embd=384, n_head=6),
    "large": dict(n_layer=8, n_embd=512, n_head=8),
}


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not valid; allowed values: {', '.join(map(str, allowed))}")


class DictConfig:
    """``to_dict`` / ``from_dict`` of the config dataclasses; keys a stored dict has and the class lacks are ignored."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class ModelConfig(DictConfig):
    vocab_size: int = 33278
    block_size: int = 128  # context length T
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.1
    ffn: str = "mlp"  # one of FFN_KINDS
    expansion: float = 4.0  # hidden width / n_embd (per projection for bipil)
    fusion: str = "concat"  # bipil only: one of FUSIONS
    lora_rank: int = 8
    proj_scale: float = 1.0  # std of random pre-activations for LayerNorm-ed inputs
    proj_init: str = "random"  # "landmarks": projections set from the layer's own inputs before its solve
    head: str = "tied"  # "tied" to the embedding, or "solved" (closed-form ridge head, pure PIL)

    def __post_init__(self) -> None:
        _choice("ffn", self.ffn, FFN_KINDS)
        _choice("fusion", self.fusion, FUSIONS)
        _choice("head", self.head, HEADS)
        _choice("proj_init", self.proj_init, PROJ_INITS)
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "lora_rank"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                             "choose n_head among the divisors of n_embd")
        if self.expansion < 1:
            raise ValueError(f"expansion must be >= 1 (hidden width = expansion * n_embd), got {self.expansion}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.proj_scale <= 0:
            raise ValueError(f"proj_scale must be > 0, got {self.proj_scale}")

    @property
    def hidden(self) -> int:
        return int(round(self.expansion * self.n_embd))


def config_for(size: str, **overrides) -> ModelConfig:
    """A preset (``tiny``/``small``/``medium``/``large``) with field overrides."""
    _choice("size", size, tuple(PRESETS))
    return ModelConfig(**{**PRESETS[size], **overrides})


# Feed-forward variants: u = LN₂(x) [B, T, C] -> [B, T, C]
def _randn(shape, std: float, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator) * std


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, generator: torch.Generator):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.n_embd)
        with torch.no_grad():  # GPT-2's init, as PILLM._init_weights gives every other linear map
            self.fc.weight.copy_(_randn(self.fc.weight.shape, 0.02, generator))
            self.proj.weight.copy_(_randn(self.proj.weight.shape, 0.02 / math.sqrt(2 * cfg.n_layer), generator))
            self.fc.bias.zero_()
            self.proj.bias.zero_()

    def forward(self, u):
        return self.proj(F.gelu(self.fc(u)))


def landmark_keys(rows: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Projection columns ``[C, len(rows)]`` from landmark inputs: each row less the inputs' mean ``u.mean(0)``,
    unit-normalised. An uncentred key points along the inputs' common component (a LayerNorm bias
    β ≠ 0), which shifts its pre-activations by about ‖β‖ standard deviations, where GELU is nearly
    linear; a centred key sees that component only as a random direction does."""
    return F.normalize(rows.float() - u.float().mean(0), dim=1).T


def scaled_to(w: torch.Tensor, u: torch.Tensor, scale: float) -> torch.Tensor:
    """``w [C, M]`` with each column scaled so that ``u @ w`` has standard deviation ``scale``."""
    return w * (scale / (u.float() @ w).std(dim=0).clamp_min(1e-6))


def landmark_projections(u: torch.Tensor, m: int, count: int, scale: float) -> list[torch.Tensor]:
    """Data-dependent projections (Nyström-style landmarks; the FFN as a key-value memory): ``count`` matrices
    ``[C, m]`` whose columns are consecutive rows of the layer's LayerNorm-ed inputs ``u`` (:func:`landmark_keys`),
    scaled so that their pre-activations over ``u`` have standard deviation ``scale``, as random ones do."""
    if u.shape[0] < count * m:
        raise ValueError(f"need at least {count * m} input rows for the landmarks, got {u.shape[0]}")
    return [scaled_to(landmark_keys(u[i * m:(i + 1) * m], u), u, scale) for i in range(count)]


class RandomFeatures(nn.Module):
    """Fixed random feature map H = φ(u) [.., M]; never trained, never solved."""

    def __init__(self, cfg: ModelConfig, bidirectional: bool, generator: torch.Generator):
        super().__init__()
        c, m = cfg.n_embd, cfg.hidden
        std = cfg.proj_scale / math.sqrt(c)  # LN-ed u has unit variance per coordinate
        self.fusion = cfg.fusion if bidirectional else None
        self.register_buffer("proj_fwd", _randn((c, m), std, generator))
        if bidirectional:
            self.register_buffer("proj_bwd", _randn((c, m), std, generator))
        self.n_features = 2 * m if self.fusion == "concat" else m

    @torch.no_grad()
    def set_projections(self, make) -> None:
        """Replace the projections by ``make(M, count)``: ``count`` matrices ``[C, M]``, one per projection
        (e.g. :func:`landmark_projections` of the layer's own inputs)."""
        names = ["proj_fwd"] + (["proj_bwd"] if self.fusion is not None else [])
        for name, w in zip(names, make(self.proj_fwd.shape[1], len(names))):
            getattr(self, name).copy_(w)

    def forward(self, u):
        h = F.gelu(u @ self.proj_fwd)
        if self.fusion is None:
            return h
        z = u @ self.proj_bwd
        if self.fusion == "concat":
            return torch.cat([h, F.gelu(z)], dim=-1)
        if self.fusion == "sum":
            return h + F.gelu(z)
        return h * torch.sigmoid(z)  # gate


class SolvedFFN(nn.Module):
    """Random features followed by a linear readout ``H·W_out + b``.

    For ``pil``/``bipil`` the readout is solved in closed form (``requires_grad=False``); for
    ``rf_adamw`` the same readout is trained by AdamW. Zero-initialised so that an unsolved layer
    is the identity on the residual stream.

    ``is_zero`` says that the readout is known to be zero without looking at it (a closed-form
    readout not yet solved): the block then skips the features, so an AdamW phase before the
    first solve costs what attention alone costs. It is a Python flag, set by ``set_solution``
    and by loading a state dict, never a check of the weights (that would sync the host).
    """

    def __init__(self, cfg: ModelConfig, generator: torch.Generator):
        super().__init__()
        self.features = RandomFeatures(cfg, bidirectional=cfg.ffn == "bipil", generator=generator)
        trainable = cfg.ffn == "rf_adamw"
        self.is_zero = not trainable  # a trained readout gets gradients through the features
        self.out_weight = nn.Parameter(torch.zeros(self.features.n_features, cfg.n_embd), requires_grad=trainable)
        self.out_bias = nn.Parameter(torch.zeros(cfg.n_embd), requires_grad=trainable)

    def forward(self, u):
        return self.features(u) @ self.out_weight + self.out_bias

    @torch.no_grad()
    def set_solution(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        if weight.shape != self.out_weight.shape:
            raise ValueError(f"solved weight has shape {tuple(weight.shape)}, expected {tuple(self.out_weight.shape)}")
        self.out_weight.copy_(weight)
        self.out_bias.copy_(bias if bias is not None else torch.zeros_like(self.out_bias))
        self.is_zero = False

    @torch.no_grad()
    def clear(self) -> None:
        """Zero the readout: the layer is the identity on the residual stream again (a solved one is skipped)."""
        self.out_weight.zero_()
        self.out_bias.zero_()
        self.is_zero = not self.out_weight.requires_grad

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "out_weight" in state_dict:  # a loaded readout may be anything
            self.is_zero = False


class LoRAFFN(nn.Module):
    """Frozen random ``W₁, W₂`` with trainable low-rank adapters: ``(W₂+A₂B₂)·GELU((W₁+A₁B₁)·u)``."""

    def __init__(self, cfg: ModelConfig, generator: torch.Generator):
        super().__init__()
        c, m, r = cfg.n_embd, cfg.hidden, cfg.lora_rank
        self.register_buffer("w1", _randn((c, m), 1 / math.sqrt(c), generator))
        self.register_buffer("w2", _randn((m, c), 0.02 / math.sqrt(2 * cfg.n_layer), generator))
        self.a1 = nn.Parameter(_randn((c, r), 1 / math.sqrt(c), generator))
        self.b1 = nn.Parameter(torch.zeros(r, m))  # adapters start as a no-op, as in LoRA
        self.a2 = nn.Parameter(_randn((m, r), 1 / math.sqrt(m), generator))
        self.b2 = nn.Parameter(torch.zeros(r, c))
        self.bias1 = nn.Parameter(torch.zeros(m))
        self.bias2 = nn.Parameter(torch.zeros(c))

    def forward(self, u):
        h = F.gelu(u @ self.w1 + (u @ self.a1) @ self.b1 + self.bias1)
        return h @ self.w2 + (h @ self.a2) @ self.b2 + self.bias2


def ffn_generator(seed: int, layer: int) -> torch.Generator:
    """The generator of layer ``layer``'s FFN weights (apart from the one of its landmarks)."""
    return torch.Generator().manual_seed((seed * 1000 + 500 + layer) % 2**63)


def make_ffn(cfg: ModelConfig, generator: torch.Generator) -> nn.Module | None:
    if cfg.ffn == "none":
        return None
    # The global generator is left as it was, so that what is drawn after the FFNs does not
    # depend on their kind (nn.Linear draws a default init when it is built).
    with torch.random.fork_rng(devices=[]):
        if cfg.ffn == "mlp":
            return MLP(cfg, generator)
        if cfg.ffn == "lora":
            return LoRAFFN(cfg, generator)
        return SolvedFFN(cfg, generator)  # pil, bipil, rf_adamw


# Transformer
def mixture_log_probs(logits, mix, log_unigram):
    """``log((1 − α)·softmax(logits) + α·unigram)`` (α = 0: the log-softmax; α = 1: the unigram).

    Cross-entropy re-normalises log-probabilities to themselves, so they serve as logits.
    ``mix`` may be a tensor: no host sync.
    """
    mix = torch.as_tensor(mix, dtype=logits.dtype, device=logits.device)
    return torch.logaddexp(torch.log1p(-mix) + logits.log_softmax(-1), torch.log(mix) + log_unigram.to(logits.dtype))


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.proj.is_residual_out = True
        self.dropout = cfg.dropout

    def forward(self, x):  # [B, T, C] -> [B, T, C]
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, generator: torch.Generator):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.ffn = make_ffn(cfg, generator)
        self.drop = nn.Dropout(cfg.dropout)

    @property
    def ffn_active(self) -> bool:
        """False when the block has no FFN or one whose readout is known to be zero."""
        return self.ffn is not None and not getattr(self.ffn, "is_zero", False)

    def attend(self, x):
        """Residual stream after attention, ``x_mid = x + Attn(LN₁ x)`` — what the FFN reads."""
        return x + self.drop(self.attn(self.ln1(x)))

    def forward(self, x):
        x = self.attend(x)
        if self.ffn_active:
            x = x + self.drop(self.ffn(self.ln2(x)))
        return x


class PILLM(nn.Module):
    """Decoder-only Transformer language model; ``model(ids)`` returns logits ``[B, T, V]``."""

    def __init__(self, cfg: ModelConfig, seed: int | None = None):
        """``seed`` seeds the FFNs' own generators (default: the seed the global generator was given)."""
        super().__init__()
        self.config = cfg
        seed = torch.initial_seed() if seed is None else seed
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, ffn_generator(seed, i)) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        if cfg.head == "solved":
            # Closed-form readout onto one-hot next tokens, calibrated on validation:
            # p = (1 − α)·softmax(temperature · scores) + α·unigram.
            self.head_weight = nn.Parameter(torch.zeros(cfg.n_embd, cfg.vocab_size), requires_grad=False)
            self.head_bias = nn.Parameter(torch.zeros(cfg.vocab_size), requires_grad=False)
            self.head_log_unigram = nn.Parameter(torch.full((cfg.vocab_size,), -math.log(cfg.vocab_size)),
                                                 requires_grad=False)
            self.register_buffer("head_temperature", torch.tensor(1.0))
            self.register_buffer("head_mix", torch.tensor(0.0))  # α
        ffns = {id(m) for b in self.blocks if b.ffn is not None for m in b.ffn.modules()}
        for module in self.modules():  # the FFNs initialised themselves from their own generators
            if id(module) not in ffns:
                self._init_weights(module)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if getattr(module, "is_residual_out", False) else 0.02
            nn.init.normal_(module.weight, 0.0, std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, 0.02)

    # -- pieces used by the solver and the targets -------------------------------------------
    def embed(self, ids):  # [B, T] -> [B, T, C]
        t = ids.shape[1]
        if t > self.config.block_size:
            raise ValueError(f"sequence length {t} exceeds block_size={self.config.block_size}")
        pos = torch.arange(t, device=ids.device)
        return self.drop(self.tok_emb(ids) + self.pos_emb(pos))

    def head(self, x):  # residual stream [.., C] -> logits [.., V]
        h = self.ln_f(x)
        if self.config.head == "solved":
            logits = (h @ self.head_weight + self.head_bias) * self.head_temperature
            return mixture_log_probs(logits, self.head_mix, self.head_log_unigram)
        return h @ self.tok_emb.weight.T  # tied

    def forward(self, ids):
        return self.forward_from(self.embed(ids), 0)

    def residual_before(self, ids, layer: int):
        """Residual stream entering block ``layer`` (computed with the current lower blocks)."""
        x = self.embed(ids)
        for block in self.blocks[:layer]:
            x = block(x)
        return x

    def forward_from(self, x, layer: int):
        """Logits from the residual stream ``x`` entering block ``layer`` (``layer = n_layer``: the head)."""
        for block in self.blocks[layer:]:
            x = block(x)
        return self.head(x)

    # -- bookkeeping ---------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """Counts by kind. Solved weights and random buffers are counted: they are the model too.
        An FFN's buffers are its frozen random weights; its parameters are trainable or solved by ``requires_grad``.

        Keys: ``embedding`` (token + position; the tied head adds nothing), ``attention``,
        ``norm``, ``ffn_trainable``, ``ffn_solved``, ``ffn_frozen_random``, ``head_solved`` and
        ``total``.
        """
        counts = dict.fromkeys(("embedding", "attention", "norm", "ffn_trainable", "ffn_solved",
                                "ffn_frozen_random", "head_solved"), 0)
        for name, tensor in list(self.named_parameters()) + list(self.named_buffers()):
            if name in ("head_temperature", "head_mix"):
                continue
            if ".ffn." in name and not isinstance(tensor, nn.Parameter):
                role = "ffn_frozen_random"  # an FFN's fixed random weights are its buffers
            elif ".ffn." in name:
                role = "ffn_trainable" if tensor.requires_grad else "ffn_solved"
            elif name.startswith(("tok_emb", "pos_emb")):
                role = "embedding"
            elif ".attn." in name:
                role = "attention"
            elif name.startswith("head_"):
                role = "head_solved"
            elif "ln" in name:
                role = "norm"
            else:  # pragma: no cover - a new module must be given a role
                raise RuntimeError(f"parameter {name} has no counting role")
            counts[role] += tensor.numel()
        counts["total"] = sum(counts.values())
        return counts
