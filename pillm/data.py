"""Datasets, tokenizers and batching for pillm.

Everything a training or evaluation script needs to turn a corpus name into
token tensors on a device:

1. **Files.**  :func:`resolve_file` finds a dataset file in the first of
   :func:`data_dir_candidates` that holds it and checks its pinned sha256
   (:data:`SHA256`).  Results are exactly reproducible because the bytes are.
2. **Corpora.**  :func:`load_corpus` parses a corpus into splits of documents
   (:class:`Corpus`).  :func:`lambada_examples` gives LAMBADA
   (context, target) pairs.
3. **Tokenizers.**  :class:`WordTokenizer` (pytorch/examples
   ``word_language_model`` convention, for pre-tokenized WikiText-2 / PTB) and
   :class:`BPETokenizer` (byte-level BPE from Hugging Face ``tokenizers``).
4. **Token streams.**  :func:`load_tokenized` tokenizes a corpus into int64
   streams and caches them on disk, keyed by the data files' checksums.
5. **Batches.**  :class:`TokenStream` keeps a whole split on the device and
   slices (x, y) windows from it, so training does no per-batch host->device
   copies.

Example
-------
>>> from pillm.data import load_tokenized, TokenStream
>>> wt2 = load_tokenized("wikitext2")                    # doctest: +SKIP
>>> train = TokenStream(wt2.train, "cuda")               # doctest: +SKIP
>>> for x, y in train.train_batches(128, 32):            # doctest: +SKIP
...     loss = model(x, y)

Environment variables
---------------------
PILLM_DATA_DIR
    Extra directory searched first for the dataset files (same layout as
    ``shared/data``: ``wikitext-2/train.txt``, ``ptb/ptb.train.txt``, ...).
PILLM_CACHE_DIR
    Where tokenized corpora are cached (default ``<repo>/.cache/tokenized``).
PILLM_OFFLINE, HF_DATASETS_OFFLINE
    If truthy, never try the Hugging Face hub when a file is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

__all__ = [
    "DataError",
    "DataNotFoundError",
    "SHA256",
    "data_dir_candidates",
    "resolve_file",
    "file_sha256",
    "CORPORA",
    "Corpus",
    "load_corpus",
    "lambada_examples",
    "WordTokenizer",
    "BPETokenizer",
    "load_tokenizer",
    "FORMAT_VERSION",
    "TokenizedCorpus",
    "load_tokenized",
    "default_cache_dir",
    "TokenStream",
]

# The repository root: pillm/data.py -> pillm/ -> <repo>.
REPO_ROOT = Path(__file__).resolve().parent.parent


class DataError(RuntimeError):
    """A dataset file is missing, corrupt or malformed.  The message says how to fix it."""


class DataNotFoundError(DataError):
    """A dataset file exists in none of the searched places (and the hub did not help).

    A subclass so that callers (e.g. test fixtures) can tell "not installed here"
    apart from "installed but corrupt", which must never be skipped silently.
    """


# ---------------------------------------------------------------------------
# Files and checksums
# ---------------------------------------------------------------------------

#: sha256 of every file in ``shared/data/SHA256SUMS``, keyed by relative path.
#: Hard-coded so that a changed or truncated copy can never slip through.
SHA256: dict[str, str] = {
    "lambada/lambada_development_plain_text.txt": "f5b0f1e38fcdad6a1cd3a17bee4b6932a28cd9c5f463ada970c61de0f8679f2f",
    "lambada/lambada_test.jsonl": "4aa8d02cd17c719165fc8a7887fddd641f43fcafa4b1c806ca8abc31fabdb226",
    "lambada/lambada_test_plain_text.txt": "4ab6062b68422bf2e83653d367c9765d42404f7ec21b8b59b6518b45606aaef2",
    "ptb/ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
    "ptb/ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "ptb/ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "tinystories/TinyStories-train.first2MiB.txt": "5352b299dcb1a32898b2d779b145b5a05f3e1265953fd21c264c9f9f9c9ae33d",
    "wikitext-2-raw/wiki.test.raw": "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
    "wikitext-2/test.txt": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
    "wikitext-2/train.txt": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
    "wikitext-2/valid.txt": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
}

# (absolute path, size, mtime_ns) -> sha256.  Hashing 13 MB on every call would
# dominate small scripts; a file that changes gets a new mtime and is re-hashed.
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def data_dir_candidates() -> list[Path]:
    """Directories searched for dataset files, in order of preference.

    1. ``$PILLM_DATA_DIR`` (if set and non-empty),
    2. ``<repo>/data`` (git-ignored; put or symlink files here),
    3. ``<repo>/../shared/data`` (if it exists; the project's shared copy).
    """
    dirs = []
    env = os.environ.get("PILLM_DATA_DIR", "").strip()
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(REPO_ROOT / "data")
    shared = REPO_ROOT.parent / "shared" / "data"
    if shared.is_dir():
        dirs.append(shared)
    return dirs


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (streamed, so memory use is constant)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _cached_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    digest = _SHA_CACHE.get(key)
    if digest is None:
        digest = _SHA_CACHE[key] = file_sha256(path)
    return digest


def resolve_file(relpath: str, *, verify: bool = True) -> Path:
    """Path of dataset file ``relpath`` (e.g. ``"ptb/ptb.train.txt"``), checksum-verified.

    The first directory of :func:`data_dir_candidates` that holds the file wins.
    A copy that fails verification is an error, even if a later directory holds a
    good copy: silently reading a different file than the user pointed us to
    would make results irreproducible.

    Raises
    ------
    DataNotFoundError
        If no candidate directory holds the file.
    DataError
        If the file's sha256 differs from :data:`SHA256`, or ``verify`` is set
        for a path that has no pinned checksum.
    """
    relpath = Path(relpath).as_posix()
    expected = SHA256.get(relpath)
    if verify and expected is None:
        raise DataError(
            f"No pinned sha256 for {relpath!r}; known files: {sorted(SHA256)}. "
            "Pass verify=False to read an unpinned file."
        )
    searched = []
    for directory in data_dir_candidates():
        path = directory / relpath
        searched.append(path)
        if not path.is_file():
            continue
        if verify:
            actual = _cached_sha256(path)
            if actual != expected:
                raise DataError(
                    f"Checksum mismatch for {path} ({relpath}):\n"
                    f"  expected sha256 {expected}\n"
                    f"  actual   sha256 {actual}\n"
                    "The file is corrupt or a different version. Replace it with the "
                    "original (see shared/data/README.md) or remove it; pillm does not "
                    "fall back to other copies when one is corrupt."
                )
        return path
    where = "\n".join(f"  - {p}" for p in searched)
    raise DataNotFoundError(
        f"Data file {relpath!r} not found. Searched:\n{where}\n"
        f"Expected sha256: {expected or '(not pinned)'}\n"
        "To fix: set PILLM_DATA_DIR to a directory that holds "
        f"{relpath!r}, or put (or symlink) the dataset folders into "
        f"{REPO_ROOT / 'data'} (git-ignored). The expected layout and sources are "
        "described in shared/data/README.md."
    )


# ---------------------------------------------------------------------------
# Corpora
# ---------------------------------------------------------------------------

CORPORA = ("wikitext2", "ptb", "tinystories", "lambada")

_TINYSTORIES_FILE = "tinystories/TinyStories-train.first2MiB.txt"
_EOT = "<|endoftext|>"
# Stories in the 2 MiB slice; the hub fallback takes the same number from the
# start of the train split so that both sources give corpora of the same size.
_TINYSTORIES_N_STORIES = 2316

# split -> file, for the corpora whose splits are separate files.
_SPLIT_FILES = {
    "wikitext2": {
        "train": "wikitext-2/train.txt",
        "valid": "wikitext-2/valid.txt",
        "test": "wikitext-2/test.txt",
    },
    "ptb": {
        "train": "ptb/ptb.train.txt",
        "valid": "ptb/ptb.valid.txt",
        "test": "ptb/ptb.test.txt",
    },
    "tinystories": {s: _TINYSTORIES_FILE for s in ("train", "valid", "test")},
    "lambada": {
        "test": "lambada/lambada_test.jsonl",
        "test_plain": "lambada/lambada_test_plain_text.txt",
        "dev_plain": "lambada/lambada_development_plain_text.txt",
    },
}

# Hugging Face hub fallbacks: (path, config) for datasets.load_dataset.
_HUB_IDS = {
    "wikitext2": ("wikitext", "wikitext-2-v1"),
    "ptb": ("ptb_text_only", None),
    "tinystories": ("roneneldan/TinyStories", None),
    "lambada": ("EleutherAI/lambada_openai", "default"),
}

_WORD_NOTE = (
    "Lines of the pre-tokenized files as-is (blank lines kept); word tokenization "
    "appends <eos> to every line (pytorch/examples word_language_model)."
)


@dataclass
class Corpus:
    """A corpus as lists of documents (strings), one list per split.

    Attributes
    ----------
    name : one of :data:`CORPORA`.
    splits : split name -> documents.  "train"/"valid"/"test" for language
        modelling corpora; LAMBADA has "test", "test_plain" and "dev_plain".
    level : "word" (pre-tokenized text, split on whitespace) or "text" (raw
        text, meant for BPE).
    files : split -> sha256 of the file it came from, or "hub:<dataset id>".
        This is the provenance of the data and part of every cache key.
    note : how the splits were made (e.g. TinyStories' held-out stories).
    """

    name: str
    splits: dict[str, list[str]]
    level: str
    files: dict[str, str]
    note: str = ""

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v):,}" for k, v in self.splits.items())
        return f"Corpus(name={self.name!r}, level={self.level!r}, {sizes})"


def _read_lines(path: Path) -> list[str]:
    """Lines of a text file without their "\\n" (same lines as ``for line in f``)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":  # the final newline does not start a new line
        lines.pop()
    return lines


def _split_stories(lines: Sequence[str]) -> list[str]:
    """Complete stories of a TinyStories text file, stripped.

    Stories are terminated by a ``<|endoftext|>`` line.  Text after the last
    separator is a story cut off by the 2 MiB slice and is dropped.
    """
    stories, current = [], []
    for line in lines:
        if line.strip() == _EOT:
            story = "\n".join(current).strip()
            if story:
                stories.append(story)
            current = []
        else:
            current.append(line)
    return stories  # `current` (the cut-off story) is deliberately discarded


def _hold_out(stories: list[str]) -> tuple[dict[str, list[str]], str]:
    """Split stories in order: first 90% train, the rest halved into valid | test."""
    n = len(stories)
    n_train = (9 * n) // 10  # integer arithmetic: no float rounding surprises
    n_valid = (n - n_train) // 2
    splits = {
        "train": stories[:n_train],
        "valid": stories[n_train : n_train + n_valid],
        "test": stories[n_train + n_valid :],
    }
    note = (
        f"TinyStories has no valid/test in this slice: of {n:,} complete stories "
        f"(in file order), the first {n_train:,} (90%) are train, the last "
        f"{n - n_train:,} are held out and halved in order: valid = the next "
        f"{n_valid:,}, test = the last {n - n_train - n_valid:,}. valid/test are "
        "held-out *training* stories, "
        "not the official TinyStories validation set."
    )
    return splits, note


def _parse_local(name: str, paths: dict[str, Path]) -> tuple[dict[str, list[str]], str]:
    if name in ("wikitext2", "ptb"):
        return {s: _read_lines(p) for s, p in paths.items()}, _WORD_NOTE
    if name == "tinystories":
        stories = _split_stories(_read_lines(paths["train"]))
        splits, note = _hold_out(stories)
        note = (
            "Source: the first 2 MiB of TinyStories-train.txt; the final story, "
            "cut off by the slice, is dropped. " + note
        )
        return splits, note
    if name == "lambada":
        texts = []
        for i, line in enumerate(_read_lines(paths["test"])):
            if not line.strip():
                continue
            try:
                texts.append(json.loads(line)["text"])
            except (ValueError, KeyError, TypeError) as err:
                raise DataError(f"{paths['test']}:{i + 1}: not a {{'text': ...}} JSON line ({err})")
        splits = {
            "test": texts,
            "test_plain": _read_lines(paths["test_plain"]),
            "dev_plain": _read_lines(paths["dev_plain"]),
        }
        note = (
            "test: OpenAI's detokenized LAMBADA test set (GPT-2/3 evaluations); "
            "test_plain / dev_plain: the original tokenized, lower-cased passages "
            "(Paperno et al. 2016). The target is the last word of each passage."
        )
        return splits, note
    raise AssertionError(name)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _hub_id(name: str) -> str:
    path, config = _HUB_IDS[name]
    return f"hub:{path}" + (f":{config}" if config else "")


def _hub_load(name: str) -> tuple[dict[str, list[str]], str]:
    """Load a corpus from the Hugging Face hub (only used when local files are missing)."""
    from datasets import load_dataset  # imported lazily: slow, and rarely needed

    path, config = _HUB_IDS[name]
    if name == "wikitext2":
        ds = load_dataset(path, config)
        # HF lines keep their "\n"; drop it to match the local files' lines.
        splits = {
            ours: [t.removesuffix("\n") for t in ds[theirs]["text"]]
            for ours, theirs in (("train", "train"), ("valid", "validation"), ("test", "test"))
        }
        return splits, "From the Hugging Face hub. " + _WORD_NOTE
    if name == "ptb":
        ds = load_dataset(path)
        splits = {
            ours: list(ds[theirs]["sentence"])
            for ours, theirs in (("train", "train"), ("valid", "validation"), ("test", "test"))
        }
        return splits, "From the Hugging Face hub. " + _WORD_NOTE
    if name == "tinystories":
        # Stream, so only the first stories are downloaded, not the 1.9 GB file.
        rows = load_dataset(path, split="train", streaming=True).take(_TINYSTORIES_N_STORIES)
        stories = [s for s in (row["text"].strip() for row in rows) if s]
        splits, note = _hold_out(stories)
        return splits, (
            f"From the Hugging Face hub: the first {len(stories):,} stories of the "
            "train split. " + note
        )
    if name == "lambada":
        texts = list(load_dataset(path, config, split="test")["text"])
        return {"test": texts}, (
            "From the Hugging Face hub: only OpenAI's test set ('test'); the plain-text "
            "test/dev files are not available there."
        )
    raise AssertionError(name)


def _corpus_paths(name: str) -> dict[str, Path]:
    """split -> verified local path (raises DataNotFoundError / DataError)."""
    resolved: dict[str, Path] = {}
    for relpath in dict.fromkeys(_SPLIT_FILES[name].values()):
        resolved[relpath] = resolve_file(relpath)
    return {split: resolved[rel] for split, rel in _SPLIT_FILES[name].items()}


def _check_name(name: str) -> None:
    if name not in CORPORA:
        raise ValueError(f"Unknown corpus {name!r}; choose one of {CORPORA}.")


def load_corpus(name: str) -> Corpus:
    """Load corpus ``name`` (one of :data:`CORPORA`) from the verified local files.

    If a file is missing from every candidate directory, the Hugging Face hub
    is tried (unless ``PILLM_OFFLINE`` or ``HF_DATASETS_OFFLINE`` is set); hub
    data is not checksummed and its ``files`` entries read ``"hub:<id>"``.
    A corrupt local file is always an error.

    Corpora
    -------
    wikitext2 : word level; lines of ``wikitext-2/{train,valid,test}.txt``.
    ptb : word level; lines of ``ptb/ptb.{train,valid,test}.txt``.
    tinystories : text level; complete stories of the 2 MiB slice, 90% train,
        then the held-out 10% halved into valid | test (see ``note``).
    lambada : text level; "test" (OpenAI jsonl texts), "test_plain" and
        "dev_plain" (original tokenized passages).  No train split.
    """
    _check_name(name)
    level = "word" if name in ("wikitext2", "ptb") else "text"
    try:
        paths = _corpus_paths(name)
    except DataNotFoundError as missing:
        if _env_flag("PILLM_OFFLINE") or _env_flag("HF_DATASETS_OFFLINE"):
            raise DataNotFoundError(
                f"{missing}\n(The Hugging Face hub was not tried: PILLM_OFFLINE or "
                "HF_DATASETS_OFFLINE is set.)"
            ) from None
        try:
            splits, note = _hub_load(name)
        except Exception as hub_err:  # noqa: BLE001 - any hub failure means "not available"
            raise DataNotFoundError(
                f"{missing}\nThe Hugging Face hub fallback ({_hub_id(name)[4:]}) failed "
                f"too: {type(hub_err).__name__}: {hub_err}"
            ) from hub_err
        files = {split: _hub_id(name) for split in splits}
        return Corpus(name, splits, level, files, note)
    splits, note = _parse_local(name, paths)
    files = {split: SHA256[_SPLIT_FILES[name][split]] for split in splits}
    return Corpus(name, splits, level, files, note)


def _split_last_word(text: str) -> tuple[str, str]:
    parts = text.rstrip().rsplit(None, 1)
    if len(parts) == 1:
        return "", parts[0]
    return parts[0], parts[1]  # rsplit(None) already drops the whitespace in between


def lambada_examples(kind: str = "openai") -> list[tuple[str, str]]:
    """LAMBADA as (context, target_word) pairs.

    The target is the passage's last whitespace-separated word; the context is
    everything before it, trailing whitespace stripped (so a scorer should
    predict ``" " + target`` after ``context`` for BPE models).  This is the
    lm-evaluation-harness convention; in 38 OpenAI passages the target keeps an
    opening quote glued to it (e.g. ``'"Nadia'``).

    kind : "openai" (detokenized test jsonl, the GPT-2/3 setup), "openai_wikitext"
        (the same passages, cased, tokenized like WikiText by
        :func:`wikitext_tokenize`, target stripped of quotes and punctuation: for
        word-level models trained on WikiText, whose vocabulary is cased), "plain"
        (the original tokenized, lower-cased test passages) or "dev_plain" (the
        original development set).
    """
    if kind == "openai_wikitext":
        return [(wikitext_tokenize(ctx), word.strip(_QUOTES_PUNCT) or word)
                for ctx, word in lambada_examples("openai")]
    split = {"openai": "test", "plain": "test_plain", "dev_plain": "dev_plain"}.get(kind)
    if split is None:
        raise ValueError(f"Unknown LAMBADA kind {kind!r}; choose 'openai', 'openai_wikitext', 'plain' or "
                         "'dev_plain'.")
    corpus = load_corpus("lambada")
    if split not in corpus.splits:
        raise DataNotFoundError(
            f"LAMBADA split {split!r} is not available ({corpus.note}). Put the LAMBADA "
            "files into a data directory (see resolve_file)."
        )
    return [_split_last_word(text) for text in corpus.splits[split] if text.strip()]


_QUOTES_PUNCT = "\"'“”‘’.,;:!?()[]"
_WT_RULES = [  # WikiText's (Moses-style) tokenization, approximated with regular expressions
    (re.compile(r"(?<=\w)-(?=\w)"), " @-@ "),  # well-known -> well @-@ known
    (re.compile(r"(?<=\d),(?=\d)"), " @,@ "),  # 1,000 -> 1 @,@ 000
    (re.compile(r"(?<=\d)\.(?=\d)"), " @.@ "),  # 3.5 -> 3 @.@ 5
    (re.compile(r"[“”]"), '"'),
    (re.compile(r"[‘’]"), "'"),
    (re.compile(r"(?i)(\w)(n't)\b"), r"\1 \2"),  # don't -> do n't
    (re.compile(r"(?i)(\w)('s|'re|'ve|'ll|'d|'m)\b"), r"\1 \2"),  # Tom's -> Tom 's
    (re.compile(r"(?<!@)([.,!?;:\"()\[\]]|--|…)(?!@)"), r" \1 "),  # not inside @,@ / @.@
    (re.compile(r"(^|\s)'(?!(?:s|re|ve|ll|d|m|t)\b)(?=\w)"), r"\1' "),  # opening quote, not a clitic
]


def wikitext_tokenize(text: str) -> str:
    """Raw text tokenized (approximately) the way WikiText was, words separated by spaces.

    Used to score LAMBADA's cased OpenAI passages with word-level models trained on WikiText:
    punctuation is split off, ``n't``/``'s`` clitics are separated and in-word hyphens and
    digit separators become ``@-@``, ``@,@``, ``@.@`` as in WikiText.
    """
    for pattern, repl in _WT_RULES:
        text = pattern.sub(repl, text)
    return " ".join(text.split())


# ---------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------


def _as_id_list(ids) -> list[int]:
    return ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)


class WordTokenizer:
    """Whitespace word tokenizer with a fixed vocabulary (pytorch/examples convention).

    Each line becomes ``line.split() + ["<eos>"]``; the vocabulary holds the
    training tokens in first-seen order, so ids match pytorch/examples'
    ``word_language_model`` exactly.  Unknown words map to ``<unk>``.
    """

    kind = "word"
    EOS = "<eos>"
    UNK = "<unk>"

    def __init__(self, itos: Sequence[str]):
        self.itos = list(itos)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("Vocabulary has duplicate entries.")
        for special in (self.EOS, self.UNK):
            if special not in self.stoi:
                raise ValueError(f"Vocabulary lacks {special!r}.")
        self.eos_id = self.stoi[self.EOS]
        self.unk_id = self.stoi[self.UNK]

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    @staticmethod
    def _tokens(lines: Sequence[str]) -> list[str]:
        # One big split is ~10x faster than splitting line by line in Python.
        # Same result: "<eos>" never merges with neighbours because of the spaces.
        if not lines:
            return []
        return (" <eos> ".join(lines) + " <eos>").split()

    @classmethod
    def build(cls, lines: Sequence[str]) -> "WordTokenizer":
        """Vocabulary from (training) lines, in first-seen order, plus <eos>/<unk> if absent."""
        itos = list(dict.fromkeys(cls._tokens(lines)))  # dicts keep insertion order
        for special in (cls.EOS, cls.UNK):
            if special not in itos:
                itos.append(special)
        return cls(itos)

    def encode(self, text: str, add_eos: bool = True) -> list[int]:
        """Ids of one line; out-of-vocabulary words become ``unk_id``."""
        get, unk = self.stoi.get, self.unk_id
        ids = [get(w, unk) for w in text.split()]
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def encode_lines(self, lines: Sequence[str]) -> torch.Tensor:
        """One int64 stream for many lines, <eos> after every line."""
        get, unk = self.stoi.get, self.unk_id
        return torch.tensor([get(w, unk) for w in self._tokens(lines)], dtype=torch.long)

    def decode(self, ids) -> str:
        itos = self.itos
        return " ".join(itos[i] for i in _as_id_list(ids))

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / "tokenizer.json", "w", encoding="utf-8") as f:
            json.dump({"kind": self.kind, "itos": self.itos}, f, ensure_ascii=False)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "WordTokenizer":
        with open(Path(directory) / "tokenizer.json", encoding="utf-8") as f:
            obj = json.load(f)
        if obj.get("kind") != cls.kind:
            raise ValueError(f"{directory}/tokenizer.json is not a word tokenizer.")
        return cls(obj["itos"])

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size})"


class BPETokenizer:
    """Byte-level BPE (GPT-2 style) trained with Hugging Face ``tokenizers``.

    Byte-level BPE covers every byte, so there are no out-of-vocabulary inputs
    and ``unk_id`` is None; ``decode(encode(text, add_eos=False)) == text`` for
    any text.  ``"<|endoftext|>"`` is the end-of-document token (``eos_id``);
    that literal string inside a text is encoded as ``eos_id`` too.
    """

    kind = "bpe"
    EOS = _EOT
    unk_id = None

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer  # a tokenizers.Tokenizer
        eos_id = tokenizer.token_to_id(self.EOS)
        if eos_id is None:
            raise ValueError(f"Tokenizer lacks the {self.EOS!r} token.")
        self.eos_id = eos_id

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @classmethod
    def train(
        cls, texts: Sequence[str], vocab_size: int = 8192, min_frequency: int = 2
    ) -> "BPETokenizer":
        """Train on ``texts`` (one document each).  The result may be smaller than
        ``vocab_size`` when the texts have too few frequent pairs."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet) + 1:
            raise ValueError(f"vocab_size must be >= {len(alphabet) + 1} (256 bytes + eos).")
        tok = Tokenizer(models.BPE())  # no unk token: every byte is in the alphabet
        # add_prefix_space=False keeps the round trip exact (no invented leading space).
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[cls.EOS],
            initial_alphabet=alphabet,  # all 256 bytes, even those unseen in training
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
        return cls(tok)

    def encode(self, text: str, add_eos: bool = True) -> list[int]:
        ids = self.tokenizer.encode(text).ids
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def encode_lines(self, docs: Sequence[str]) -> torch.Tensor:
        """One int64 stream for many documents, eos after each (batched in Rust)."""
        encode_batch = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        ids: list[int] = []
        eos = self.eos_id
        for enc in encode_batch(list(docs)):
            ids.extend(enc.ids)
            ids.append(eos)
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids) -> str:
        # Keep special tokens, or decode() would silently drop "<|endoftext|>".
        return self.tokenizer.decode(_as_id_list(ids), skip_special_tokens=False)

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(directory / "tokenizer.json"))
        with open(directory / "pillm_tokenizer.json", "w", encoding="utf-8") as f:
            json.dump({"kind": self.kind}, f)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "BPETokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(Path(directory) / "tokenizer.json")))

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


def load_tokenizer(directory: str | os.PathLike) -> WordTokenizer | BPETokenizer:
    """Load a tokenizer saved by ``WordTokenizer.save`` or ``BPETokenizer.save``."""
    directory = Path(directory)
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"No tokenizer.json in {directory}.")
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    if obj.get("kind") == WordTokenizer.kind:
        return WordTokenizer(obj["itos"])
    marker = directory / "pillm_tokenizer.json"
    if marker.is_file() and json.loads(marker.read_text()).get("kind") == BPETokenizer.kind:
        return BPETokenizer.load(directory)
    raise ValueError(f"{directory} holds no pillm tokenizer (unknown kind).")


# ---------------------------------------------------------------------------
# Tokenized corpora with an on-disk cache
# ---------------------------------------------------------------------------

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
        return (
            f"TokenizedCorpus(name={self.name!r}, tokenizer={self.tokenizer!r}, "
            f"train={self.train.numel():,}, valid={self.valid.numel():,}, "
            f"test={self.test.numel():,})"
        )


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
    payload = {
        "name": name,
        "tokenizer": kind,
        "bpe_vocab_size": bpe_vocab_size if kind == "bpe" else None,  # irrelevant for words
        "files": dict(sorted(files.items())),
        "format": FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _tokenize_corpus(corpus: Corpus, kind: str, bpe_vocab_size: int):
    """Fit a tokenizer on train and encode every split.  Returns (tokenizer, {split: ids})."""
    train = corpus.splits["train"]
    if kind == "word":
        tok = WordTokenizer.build(train)
    else:
        tok = BPETokenizer.train(train, vocab_size=bpe_vocab_size)
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
    """Write a cache entry atomically: build it in a temp dir next to it, then rename.

    A crash mid-write leaves at most a ``.tmp-*`` directory, never a half entry.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=entry.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the entry may be shared
        torch.save(tensors, tmp / "tokens.pt")
        tok.save(tmp / "tokenizer")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        if entry.exists():  # a stale or corrupt entry that we just rebuilt
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.replace(tmp, entry)
        except OSError:
            if not entry.exists():  # a concurrent writer winning the race is fine
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_tokenized(
    name: str,
    tokenizer: str = "auto",
    *,
    bpe_vocab_size: int = 8192,
    cache_dir: str | os.PathLike | None = None,
    max_train_tokens: int | None = None,
) -> TokenizedCorpus:
    """Corpus ``name`` as token streams, tokenized once and cached on disk.

    Parameters
    ----------
    tokenizer : "auto" (word for wikitext2/ptb, bpe for tinystories), "word" or
        "bpe".  The tokenizer is always fit on the train split only.
    bpe_vocab_size : target vocabulary size of a BPE tokenizer.
    cache_dir : cache root; default :func:`default_cache_dir`.  Entries are keyed
        by (name, tokenizer kind, bpe_vocab_size, the data files' sha256,
        FORMAT_VERSION), so changed data or code never reads a stale entry.  An
        unreadable entry is rebuilt.
    max_train_tokens : keep only the first this many train tokens (after
        caching; handy for quick tests).
    """
    _check_name(name)
    if name == "lambada":
        raise ValueError(
            "LAMBADA has no train split to fit a tokenizer on. Evaluate it with the "
            "tokenizer of a model trained on another corpus, e.g. "
            "load_tokenizer(run_dir).encode(context) on lambada_examples()."
        )
    kind = _tokenizer_kind(name, tokenizer)
    # Provenance first, without parsing: a cache hit then only hashes the files
    # (once per process), which is much cheaper than reading them as text.
    corpus = None
    try:
        _corpus_paths(name)  # resolves and verifies the local files
        files = {s: SHA256[_SPLIT_FILES[name][s]] for s in _SPLITS}
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
        meta = {
            "key": key,
            "name": name,
            "tokenizer": kind,
            "bpe_vocab_size": bpe_vocab_size if kind == "bpe" else None,
            "files": files,
            "note": note,
            "format": FORMAT_VERSION,
            "num_tokens": {s: t.numel() for s, t in tensors.items()},
        }
        try:
            _write_cache(entry, tok, tensors, meta)
        except OSError as err:  # e.g. a read-only cache dir: work uncached
            warnings.warn(f"Could not write cache entry {entry}: {err}")

    train = tensors["train"]
    if max_train_tokens is not None:
        train = train[:max_train_tokens].clone()  # clone: free the full stream's memory
    return TokenizedCorpus(
        name=name,
        tokenizer=tok,
        train=train,
        valid=tensors["valid"],
        test=tensors["test"],
        files=files,
        note=note,
    )


# ---------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------


class TokenStream:
    """A whole split as one 1-D LongTensor, moved to ``device`` once.

    Batches are views or on-device gathers of this tensor, so a training loop
    makes no host->device copies per step.
    """

    def __init__(self, ids: torch.Tensor, device: str | torch.device = "cpu"):
        ids = torch.as_tensor(ids)
        if ids.dim() != 1:
            raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}.")
        self.device = torch.device(device)
        self.ids = ids.to(device=self.device, dtype=torch.long)

    def __len__(self) -> int:
        return self.ids.numel()

    def windows(self, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """All non-overlapping (x, y) windows from the start, each ``[n, T]``.

        ``y`` is ``x`` shifted by one token; ``n = (len - 1) // T``.  Use this for
        evaluation: every token except the first is predicted exactly once,
        except for a tail shorter than T.
        """
        T = block_size
        n = (len(self) - 1) // T
        if n < 1:
            raise ValueError(f"Stream of {len(self)} tokens is too short for block_size={T}.")
        x = self.ids[: n * T].view(n, T)
        y = self.ids[1 : n * T + 1].view(n, T)
        return x, y

    def num_train_windows(self, block_size: int) -> int:
        """Windows per training epoch, the same for every start offset in [0, T).

        With offset ``o`` a window needs ``o + n*T + 1 <= len`` tokens; the worst
        offset is ``T - 1``, hence ``n = (len - T) // T``.  Fixing ``n`` keeps the
        epoch length (and so LR schedules) independent of the random offset, at
        the cost of at most one window per epoch.
        """
        return (len(self) - block_size) // block_size

    def num_batches(self, block_size: int, batch_size: int) -> int:
        """Batches per :meth:`train_batches` epoch (the last, partial one included)."""
        return -(-self.num_train_windows(block_size) // batch_size)  # ceil division

    def train_batches(
        self,
        block_size: int,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        offset: int | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled, non-overlapping ``[B, T]`` (x, y) batches.

        The windows start at a random ``offset`` in ``[0, T)`` (drawn from
        ``generator``, or the global torch RNG, unless given), so successive
        epochs see different window boundaries.  The rows are shuffled with
        ``torch.randperm``; every window appears exactly once, and the last
        batch may be smaller than ``batch_size``.

        Random numbers are drawn on the generator's device.  If that differs from
        the stream's device (a CPU generator with CUDA data, the common case for
        reproducibility), the permutation is drawn on the CPU and moved once per
        epoch: one small copy per epoch, not per batch.
        """
        T, B = block_size, batch_size
        if T < 1 or B < 1:
            raise ValueError("block_size and batch_size must be positive.")
        n = self.num_train_windows(T)
        if n < 1:
            raise ValueError(f"Stream of {len(self)} tokens is too short for block_size={T}.")
        rng_device = generator.device if generator is not None else self.device
        if offset is None:
            offset = int(torch.randint(T, (1,), generator=generator, device=rng_device).item())
        elif not 0 <= offset < T:
            raise ValueError(f"offset must be in [0, {T}), got {offset}.")
        x = self.ids[offset : offset + n * T].view(n, T)
        y = self.ids[offset + 1 : offset + n * T + 1].view(n, T)
        perm = torch.randperm(n, generator=generator, device=rng_device).to(self.device)
        for start in range(0, n, B):
            rows = perm[start : start + B]
            yield x[rows], y[rows]
