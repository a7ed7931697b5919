"""Tokenized corpora cached on disk, and whole splits kept on the device as token streams."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from .corpora import REPO_ROOT, Corpus, DataNotFoundError, check_corpus_name, load_corpus, local_checksums
from .tokenizers import BPETokenizer, WordTokenizer, load_tokenizer


#: Bump when tokenization or split logic changes, so old cache entries are ignored.
FORMAT_VERSION = 1

_SPLITS = ("train", "valid", "test")


@dataclass
class TokenizedCorpus:
    """A corpus as int64 1-D token streams (CPU) plus the tokenizer that made them."""

    name: str
    tokenizer: WordTokenizer | BPETokenizer = field(repr=False)
    train: torch.Tensor = field(repr=False)
    valid: torch.Tensor = field(repr=False)
    test: torch.Tensor = field(repr=False)
    files: dict[str, str] = field(default_factory=dict, repr=False)
    note: str = field(default="", repr=False)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={getattr(self, s).numel():,}" for s in _SPLITS)
        return f"TokenizedCorpus(name={self.name!r}, tokenizer={self.tokenizer!r}, {sizes})"


def default_cache_dir() -> Path:
    """``$PILLM_CACHE_DIR`` or ``<repo>/.cache/tokenized`` (git-ignored)."""
    env = os.environ.get("PILLM_CACHE_DIR", "").strip()
    return Path(env).expanduser() if env else REPO_ROOT / ".cache" / "tokenized"


def _tokenizer_kind(name: str, tokenizer: str) -> str:
    if tokenizer == "auto":
        return "word" if name in ("wikitext2", "ptb") else "bpe"
    if tokenizer not in ("word", "bpe"):
        raise ValueError(f"tokenizer must be 'auto', 'word' or 'bpe', not {tokenizer!r}.")
    return tokenizer


def _cache_key(name: str, kind: str, bpe_vocab_size: int | None, files: dict[str, str]) -> str:
    payload = {"name": name, "tokenizer": kind, "bpe_vocab_size": bpe_vocab_size if kind == "bpe" else None,
               "files": dict(sorted(files.items())), "format": FORMAT_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _tokenize_corpus(corpus: Corpus, kind: str, bpe_vocab_size: int):
    """Fit a tokenizer on train and encode every split.  Returns (tokenizer, {split: ids})."""
    train = corpus.splits["train"]
    tok = WordTokenizer.build(train) if kind == "word" else BPETokenizer.train(train, vocab_size=bpe_vocab_size)
    return tok, {split: tok.encode_lines(corpus.splits[split]) for split in _SPLITS}


def _read_cache(entry: Path, key: str, kind: str):
    """(tokenizer, tensors, meta) of a complete cache entry; raises on any problem."""
    meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
    if meta.get("key") != key:
        raise ValueError("cache key mismatch")
    tensors = torch.load(entry / "tokens.pt", map_location="cpu", weights_only=True)
    tok = load_tokenizer(entry / "tokenizer")
    if tok.kind != kind:
        raise ValueError(f"cached tokenizer is {tok.kind!r}, expected {kind!r}")
    for split in _SPLITS:
        t = tensors[split]
        if not (isinstance(t, torch.Tensor) and t.dtype == torch.long and t.dim() == 1):
            raise ValueError(f"cached {split!r} is not an int64 1-D tensor")
        if t.numel() and not (0 <= int(t.min()) and int(t.max()) < tok.vocab_size):
            raise ValueError(f"cached {split!r} has ids outside the vocabulary")
    return tok, tensors, meta


def _write_cache(entry: Path, tok, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write a cache entry atomically: built in a temporary directory beside it, then renamed (a crash
    mid-write leaves at most a ``.tmp-*`` directory, never a half entry)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=entry.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the entry may be shared
        torch.save(tensors, tmp / "tokens.pt")
        tok.save(tmp / "tokenizer")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        shutil.rmtree(entry, ignore_errors=True)  # a stale or corrupt entry that we just rebuilt
        try:
            os.replace(tmp, entry)
        except OSError:
            if not entry.exists():  # a concurrent writer winning the race is fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a no-op after the rename


def load_tokenized(name: str, tokenizer: str = "auto", *, bpe_vocab_size: int = 8192,
                   cache_dir: str | os.PathLike | None = None, max_train_tokens: int | None = None) -> TokenizedCorpus:
    """Corpus ``name`` as token streams, tokenized once and cached on disk.

    ``tokenizer``: "auto" (word for wikitext2/ptb, bpe for tinystories), "word" or "bpe"; it is fit on the
    train split only. ``cache_dir``: default :func:`default_cache_dir`; entries are keyed by (name, tokenizer
    kind, ``bpe_vocab_size``, the data files' sha256, :data:`FORMAT_VERSION`), so changed data or code never
    reads a stale entry, and an unreadable entry is rebuilt. ``max_train_tokens``: keep only the first this
    many train tokens (after caching).
    """
    check_corpus_name(name)
    if name == "lambada":
        raise ValueError("LAMBADA has no train split to fit a tokenizer on. Evaluate it with the tokenizer of a "
                         "model trained on another corpus, e.g. load_tokenizer(run_dir).encode(context) on "
                         "lambada_examples().")
    kind = _tokenizer_kind(name, tokenizer)
    # Provenance first, without parsing: a cache hit then only hashes the files (once per process), which is
    # much cheaper than reading them as text.
    corpus = None
    try:
        files = {s: local_checksums(name)[s] for s in _SPLITS}  # resolves and verifies the local files
    except DataNotFoundError:
        corpus = load_corpus(name)  # the hub, or a clear DataNotFoundError
        files = {s: corpus.files[s] for s in _SPLITS}
    key = _cache_key(name, kind, bpe_vocab_size, files)
    suffix = f"bpe{bpe_vocab_size}" if kind == "bpe" else "word"
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = root / f"{name}-{suffix}-{key[:16]}"

    cached = None
    if entry.exists():
        try:
            cached = _read_cache(entry, key, kind)
        except Exception as err:  # noqa: BLE001 - any damage means "rebuild"
            warnings.warn(f"Rebuilding unreadable cache entry {entry}: {type(err).__name__}: {err}")
    if cached is not None:
        tok, tensors, meta = cached
        note = meta.get("note", "")
    else:
        corpus = corpus or load_corpus(name)
        tok, tensors = _tokenize_corpus(corpus, kind, bpe_vocab_size)
        note = corpus.note
        meta = {"key": key, "name": name, "tokenizer": kind, "files": files, "note": note, "format": FORMAT_VERSION,
                "bpe_vocab_size": bpe_vocab_size if kind == "bpe" else None,
                "num_tokens": {s: t.numel() for s, t in tensors.items()}}
        try:
            _write_cache(entry, tok, tensors, meta)
        except OSError as err:  # e.g. a read-only cache dir: work uncached
            warnings.warn(f"Could not write cache entry {entry}: {err}")

    train = tensors["train"]
    if max_train_tokens is not None:
        train = train[:max_train_tokens].clone()  # clone: free the full stream's memory
    return TokenizedCorpus(name, tok, train, tensors["valid"], tensors["test"], files=files, note=note)


class TokenStream:
    """A whole split as one 1-D LongTensor, moved to ``device`` once: batches are views or on-device gathers
    of it, so a training loop makes no host->device copies per step."""

    def __init__(self, ids: torch.Tensor, device: str | torch.device = "cpu"):
        ids = torch.as_tensor(ids)
        if ids.dim() != 1:
            raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}.")
        self.device = torch.device(device)
        self.ids = ids.to(device=self.device, dtype=torch.long)

    def __len__(self) -> int:
        return self.ids.numel()

    def _windows(self, offset: int, n: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` consecutive (x, y) windows ``[n, T]`` from ``offset``, ``y`` shifted by one token."""
        if n < 1:
            raise ValueError(f"Stream of {len(self)} tokens is too short for block_size={T}.")
        return self.ids[offset:offset + n * T].view(n, T), self.ids[offset + 1:offset + n * T + 1].view(n, T)

    def windows(self, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """All non-overlapping (x, y) windows from the start, each ``[n, T]`` with ``n = (len - 1) // T``.  For
        evaluation: every token except the first is predicted exactly once, except for a tail shorter than T."""
        return self._windows(0, (len(self) - 1) // block_size, block_size)

    def num_train_windows(self, block_size: int) -> int:
        """Windows per training epoch, the same for every start offset in [0, T).

        With offset ``o`` a window needs ``o + n*T + 1 <= len`` tokens; the worst offset is ``T - 1``, hence
        ``n = (len - T) // T``.  Fixing ``n`` keeps the epoch length (and so LR schedules) independent of the
        random offset, at the cost of at most one window per epoch.
        """
        return (len(self) - block_size) // block_size

    def num_batches(self, block_size: int, batch_size: int) -> int:
        """Batches per :meth:`train_batches` epoch (the last, partial one included)."""
        return -(-self.num_train_windows(block_size) // batch_size)  # ceil division

    def train_batches(self, block_size: int, batch_size: int, *, generator: torch.Generator | None = None,
                      offset: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled, non-overlapping ``[B, T]`` (x, y) batches: every window exactly once, the last
        batch possibly smaller than ``batch_size``.

        The windows start at a random ``offset`` in ``[0, T)`` (drawn from ``generator``, or the global torch
        RNG, unless given), so successive epochs see different window boundaries.  Random numbers are drawn on
        the generator's device: with a CPU generator and CUDA data (the common case for reproducibility) the
        permutation is drawn on the CPU and moved to the stream's device once per epoch, not per batch.
        """
        T, B = block_size, batch_size
        if T < 1 or B < 1:
            raise ValueError("block_size and batch_size must be positive.")
        n = self.num_train_windows(T)
        rng_device = generator.device if generator is not None else self.device
        if offset is None:
            offset = int(torch.randint(T, (1,), generator=generator, device=rng_device).item())
        elif not 0 <= offset < T:
            raise ValueError(f"offset must be in [0, {T}), got {offset}.")
        x, y = self._windows(offset, n, T)
        perm = torch.randperm(n, generator=generator, device=rng_device).to(self.device)
        for start in range(0, n, B):
            rows = perm[start : start + B]
            yield x[rows], y[rows]
