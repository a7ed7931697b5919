"""Evaluation: perplexity and accuracy over a whole split, LAMBADA, and sampling.

Perplexity protocol. A split is one token stream (documents joined with ``<eos>``). By default it is cut into
non-overlapping windows of the model's context ``T``; every token but the first is predicted exactly once, with
between 0 and ``T − 1`` tokens of context (the standard protocol of pytorch/examples and most small-LM papers). With
``stride=s < T`` the windows slide by ``s`` and only the last ``s`` targets of each window are scored (the first
window scores all), so every token except the first ``T − s`` ones gets at least ``T − s`` tokens of context. Both
protocols score each target exactly once; they differ only in context length.

LAMBADA is scored on the whole target word: the word is tokenized (possibly several sub-tokens) and counts as
correct only if greedy decoding reproduces every one of its tokens given the passage (teacher-forced greedy, as in
GPT-2's evaluation). Targets the tokenizer cannot represent (``<unk>`` with a word-level vocabulary) count as wrong,
and their rate is reported.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .model import IGNORE_INDEX, PILLM


def _windows(ids: torch.Tensor, block: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets [n, T]; targets already scored by an earlier window set to IGNORE."""
    n = ids.numel()
    if n < 2:
        raise ValueError("need at least two tokens to evaluate")
    starts = list(range(0, max(n - 1 - block, 0) + 1, stride))
    if starts[-1] + block < n - 1:  # cover the tail
        starts.append(n - 1 - block)
    t = min(block, n - 1)
    idx = torch.tensor(starts, device=ids.device)[:, None] + torch.arange(t, device=ids.device)[None, :]
    x, y = ids[idx], ids[idx + 1].clone()
    scored_until = 0  # targets with absolute position < scored_until are already counted
    for row, s in enumerate(starts):
        first_new = max(scored_until - s - 1, 0)  # target j is ids[s + j + 1]
        y[row, :first_new] = IGNORE_INDEX
        scored_until = s + t + 1
    return x, y


@torch.no_grad()
def evaluate_stream(model: PILLM, ids: torch.Tensor, *, batch_size: int = 32, stride: int | None = None,
                    max_tokens: int | None = None, progress: bool = False) -> dict:
    """Mean cross-entropy, perplexity and top-1 accuracy of next-token prediction over the 1-D token stream
    ``ids``; ``stride=None`` means non-overlapping windows (stride = context length)."""
    block = model.config.block_size
    stride = stride or block
    if not 1 <= stride <= block:
        raise ValueError(f"stride must be in [1, block_size={block}], got {stride}")
    device = next(model.parameters()).device
    ids = ids.to(device)
    if max_tokens is not None:
        ids = ids[: max_tokens + 1]
    x, y = _windows(ids, block, stride)
    was_training = model.training
    model.eval()

    def batches():
        for i in tqdm(range(0, x.shape[0], batch_size), desc="eval", disable=not progress, leave=False):
            with _autocast(device):
                yield model(x[i:i + batch_size]), y[i:i + batch_size]

    result = score(batches())
    model.train(was_training)
    return result


def score(batches, accuracy: bool = True) -> dict:
    """Mean cross-entropy, perplexity and top-1 accuracy over ``(logits [.., V], targets [..])`` pairs.

    Sums stay on the device (float64 for the loss) until the end: one host sync per call. Targets equal to
    ``IGNORE_INDEX`` are not scored. ``accuracy=False`` skips the arg-max over the vocabulary (``acc`` is then None)
    and computes the loss as ``logsumexp − target logit``: searches need only the loss.
    """
    nll = correct = count = 0
    for logits, y in batches:
        logits = logits.float()
        valid = y != IGNORE_INDEX
        if accuracy:
            nll = nll + F.cross_entropy(logits.flatten(0, 1), y.reshape(-1), ignore_index=IGNORE_INDEX,
                                        reduction="sum").double()
            correct = correct + ((logits.argmax(-1) == y) & valid).sum()
        else:  # the same loss without writing the [.., V] log-probabilities (half the memory traffic)
            target = logits.gather(-1, y.clamp_min(0).unsqueeze(-1)).squeeze(-1)
            nll = nll + torch.where(valid, torch.logsumexp(logits, -1) - target, 0.0).sum().double()
        count = count + valid.sum()
    n = int(count)
    if n == 0:
        raise ValueError("no scored targets: every target is IGNORE_INDEX (padding)")
    loss = float(nll) / n
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "acc": int(correct) / n if accuracy else None, "tokens": n}


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


@torch.no_grad()
def lambada(model: PILLM, tokenizer, examples: list[tuple[str, str]], *, batch_size: int = 64,
            progress: bool = False) -> dict:
    """Whole-word LAMBADA accuracy, target-word perplexity and OOV rate over ``(context, target_word)`` pairs;
    passages longer than the context keep their last ``block_size`` tokens."""
    device = next(model.parameters()).device
    block = model.config.block_size
    unk = getattr(tokenizer, "unk_id", None)
    items = []  # (input ids, word ids, is_oov)
    for context, word in examples:
        ctx = tokenizer.encode(context, add_eos=False)
        tgt = tokenizer.encode(word if tokenizer.kind == "word" else " " + word, add_eos=False)
        if not tgt:
            raise ValueError(f"target word {word!r} encodes to no tokens")
        if len(tgt) > block:
            raise ValueError(f"target word {word!r} has {len(tgt)} tokens, more than block_size={block}")
        items.append(((ctx + tgt)[-(block + 1):-1], tgt, unk is not None and unk in tgt))
    was_training = model.training
    model.eval()
    correct, word_nll = 0, 0.0
    for i in tqdm(range(0, len(items), batch_size), desc="lambada", disable=not progress, leave=False):
        chunk = items[i:i + batch_size]
        width = max(len(inp) for inp, _, _ in chunk)
        # Right padding: causal attention never lets pad positions reach real ones, and pad
        # positions are never scored (their targets are IGNORE_INDEX).
        x = torch.zeros(len(chunk), width, dtype=torch.long)
        y = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        for r, (inp, tgt, _) in enumerate(chunk):
            x[r, : len(inp)] = torch.tensor(inp)
            y[r, len(inp) - len(tgt): len(inp)] = torch.tensor(tgt)  # last k positions predict the word
        x, y = x.to(device), y.to(device)
        with _autocast(device):
            logits = model(x)
        logits = logits.float()
        mask = y != IGNORE_INDEX
        nll = F.cross_entropy(logits.flatten(0, 1), y.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")
        word_nll += float((nll.view_as(y) * mask).sum())
        hit = ((logits.argmax(-1) == y) | ~mask).all(1).tolist()
        correct += sum(h and not is_oov for h, (_, _, is_oov) in zip(hit, chunk))
    model.train(was_training)
    n = len(items)
    return {"acc": correct / n, "word_ppl": math.exp(min(word_nll / n, 700.0)),
            "oov_rate": sum(is_oov for _, _, is_oov in items) / n, "n": n}


@torch.no_grad()
def generate(model: PILLM, ids: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample continuations of ``ids [B, T₀]``; returns ``[B, T₀ + max_new_tokens]``."""
    was_training = model.training
    model.eval()
    for _ in range(max_new_tokens):
        logits = model(ids[:, -model.config.block_size:])[:, -1, :].float()
        if temperature <= 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(F.softmax(logits, -1), 1, generator=generator)
        ids = torch.cat([ids, nxt], dim=1)
    model.train(was_training)
    return ids
