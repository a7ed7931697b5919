"""Dataset files (found, checksum-verified) and corpora parsed into splits of documents."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]  # pillm/data/corpora.py -> <repo>


class DataError(RuntimeError):
    """A dataset file is missing, corrupt or malformed.  The message says how to fix it."""


class DataNotFoundError(DataError):
    """A dataset file exists in none of the searched places (and the hub did not help): "not installed
    here", which callers may skip, unlike "installed but corrupt"."""


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


def data_dir_candidates() -> list[Path]:
    """Directories searched for dataset files, in order of preference: ``$PILLM_DATA_DIR`` (if set),
    ``<repo>/data`` (git-ignored; put or symlink files here), the project's shared copy ``<repo>/../shared/data``."""
    env = os.environ.get("PILLM_DATA_DIR", "").strip()
    dirs = ([Path(env).expanduser()] if env else []) + [REPO_ROOT / "data"]
    shared = REPO_ROOT.parent / "shared" / "data"
    if shared.is_dir():
        dirs.append(shared)
    return dirs


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (streamed, so memory use is constant)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@functools.cache
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    """Hashing 13 MB on every call would dominate small scripts: a file is hashed once per (path, size,
    mtime), so a file that changes is hashed again."""
    return file_sha256(path)


def resolve_file(relpath: str, *, verify: bool = True) -> Path:
    """Path of dataset file ``relpath`` (e.g. ``"ptb/ptb.train.txt"``), checksum-verified.

    The first directory of :func:`data_dir_candidates` that holds the file wins.  A copy that fails
    verification is an error (:class:`DataError`), even if a later directory holds a good copy: silently
    reading a different file than the user pointed us to would make results irreproducible.  A path without
    a pinned checksum is an error too unless ``verify`` is False; no copy anywhere: :class:`DataNotFoundError`.
    """
    relpath = Path(relpath).as_posix()
    expected = SHA256.get(relpath)
    if verify and expected is None:
        raise DataError(f"No pinned sha256 for {relpath!r}; known files: {sorted(SHA256)}. "
                        "Pass verify=False to read an unpinned file.")
    searched = []
    for directory in data_dir_candidates():
        path = directory / relpath
        searched.append(path)
        if not path.is_file():
            continue
        if verify:
            st = path.stat()
            actual = _sha256_of(str(path.resolve()), st.st_size, st.st_mtime_ns)
            if actual != expected:
                raise DataError(f"Checksum mismatch for {path} ({relpath}):\n  expected sha256 {expected}\n"
                                f"  actual   sha256 {actual}\nThe file is corrupt or a different version. "
                                "Replace it with the original (see shared/data/README.md) or remove it; pillm "
                                "does not fall back to other copies when one is corrupt.")
        return path
    where = "\n".join(f"  - {p}" for p in searched)
    raise DataNotFoundError(f"Data file {relpath!r} not found. Searched:\n{where}\nExpected sha256: "
                            f"{expected or '(not pinned)'}\nTo fix: set PILLM_DATA_DIR to a directory that holds "
                            f"{relpath!r}, or put (or symlink) the dataset folders into {REPO_ROOT / 'data'} "
                            "(git-ignored). The expected layout and sources are described in shared/data/README.md.")


CORPORA = ("wikitext2", "ptb", "tinystories", "lambada")

END_OF_TEXT = "<|endoftext|>"
# Stories in the 2 MiB slice; the hub fallback takes the same number from the start of the train split
# so that both sources give corpora of the same size.
_TINYSTORIES_N_STORIES = 2316

# split -> file, for the corpora whose splits are separate files.
_SPLIT_FILES = {
    "wikitext2": {s: f"wikitext-2/{s}.txt" for s in ("train", "valid", "test")},
    "ptb": {s: f"ptb/ptb.{s}.txt" for s in ("train", "valid", "test")},
    "tinystories": dict.fromkeys(("train", "valid", "test"), "tinystories/TinyStories-train.first2MiB.txt"),
    "lambada": {"test": "lambada/lambada_test.jsonl", "test_plain": "lambada/lambada_test_plain_text.txt",
                "dev_plain": "lambada/lambada_development_plain_text.txt"},
}

# Hugging Face hub fallbacks: (path, config) for datasets.load_dataset.
_HUB_IDS = {"wikitext2": ("wikitext", "wikitext-2-v1"), "ptb": ("ptb_text_only", None),
            "tinystories": ("roneneldan/TinyStories", None), "lambada": ("EleutherAI/lambada_openai", "default")}

_WORD_NOTE = ("Lines of the pre-tokenized files as-is (blank lines kept); word tokenization appends <eos> to "
              "every line (pytorch/examples word_language_model).")


@dataclass
class Corpus:
    """A corpus as lists of documents (strings), one list per split.

    ``splits``: "train"/"valid"/"test" (LAMBADA: "test", "test_plain", "dev_plain"). ``level``: "word"
    (pre-tokenized, split on whitespace) or "text" (raw, for BPE). ``files``: split -> sha256 of its file, or
    "hub:<dataset id>": the provenance of the data, part of every cache key. ``note``: how the splits were made.
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
    text = path.read_text(encoding="utf-8")
    return text.removesuffix("\n").split("\n") if text else []  # the final newline does not start a new line


def _split_stories(lines: Sequence[str]) -> list[str]:
    """Complete stories of a TinyStories text file, stripped: each ends with a ``<|endoftext|>`` line; the
    text after the last one is a story cut off by the 2 MiB slice and is dropped."""
    stories, current = [], []
    for line in lines:
        if line.strip() == END_OF_TEXT:
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
    splits = {"train": stories[:n_train], "valid": stories[n_train:n_train + n_valid],
              "test": stories[n_train + n_valid:]}
    note = (f"TinyStories has no valid/test in this slice: of {n:,} complete stories (in file order), the first "
            f"{n_train:,} (90%) are train, the last {n - n_train:,} are held out and halved in order: valid = the "
            f"next {n_valid:,}, test = the last {n - n_train - n_valid:,}. valid/test are held-out *training* "
            "stories, not the official TinyStories validation set.")
    return splits, note


def _parse_local(name: str, paths: dict[str, Path]) -> tuple[dict[str, list[str]], str]:
    if name in ("wikitext2", "ptb"):
        return {s: _read_lines(p) for s, p in paths.items()}, _WORD_NOTE
    if name == "tinystories":
        splits, note = _hold_out(_split_stories(_read_lines(paths["train"])))
        return splits, ("Source: the first 2 MiB of TinyStories-train.txt; the final story, cut off by the slice, "
                        "is dropped. " + note)
    if name == "lambada":
        texts = []
        for i, line in enumerate(_read_lines(paths["test"])):
            if not line.strip():
                continue
            try:
                texts.append(json.loads(line)["text"])
            except (ValueError, KeyError, TypeError) as err:
                raise DataError(f"{paths['test']}:{i + 1}: not a {{'text': ...}} JSON line ({err})")
        splits = {"test": texts, "test_plain": _read_lines(paths["test_plain"]),
                  "dev_plain": _read_lines(paths["dev_plain"])}
        return splits, ("test: OpenAI's detokenized LAMBADA test set (GPT-2/3 evaluations); test_plain / dev_plain: "
                        "the original tokenized, lower-cased passages (Paperno et al. 2016). The target is the last "
                        "word of each passage.")
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
    if name in ("wikitext2", "ptb"):
        ds, column = load_dataset(path, config), "text" if name == "wikitext2" else "sentence"
        # WikiText's lines keep their "\n"; drop it to match the local files' lines.
        splits = {ours: [t.removesuffix("\n") for t in ds[theirs][column]]
                  for ours, theirs in (("train", "train"), ("valid", "validation"), ("test", "test"))}
        return splits, "From the Hugging Face hub. " + _WORD_NOTE
    if name == "tinystories":
        # Stream, so only the first stories are downloaded, not the 1.9 GB file.
        rows = load_dataset(path, split="train", streaming=True).take(_TINYSTORIES_N_STORIES)
        stories = [s for s in (row["text"].strip() for row in rows) if s]
        splits, note = _hold_out(stories)
        return splits, f"From the Hugging Face hub: the first {len(stories):,} stories of the train split. " + note
    texts = list(load_dataset(path, config, split="test")["text"])  # lambada
    return {"test": texts}, ("From the Hugging Face hub: only OpenAI's test set ('test'); the plain-text test/dev "
                             "files are not available there.")


def _corpus_paths(name: str) -> dict[str, Path]:
    """split -> verified local path (raises DataNotFoundError / DataError)."""
    return {split: resolve_file(relpath) for split, relpath in _SPLIT_FILES[name].items()}


def check_corpus_name(name: str) -> None:
    """Raise a ValueError naming the choices unless ``name`` is one of :data:`CORPORA`."""
    if name not in CORPORA:
        raise ValueError(f"Unknown corpus {name!r}; choose one of {CORPORA}.")


def load_corpus(name: str) -> Corpus:
    """Load corpus ``name`` (one of :data:`CORPORA`) from the verified local files.

    If a file is missing from every candidate directory, the Hugging Face hub is tried (unless
    ``PILLM_OFFLINE`` or ``HF_DATASETS_OFFLINE`` is set); hub data is not checksummed and its ``files`` entries
    read ``"hub:<id>"``.  A corrupt local file is always an error.  How the splits were made: ``Corpus.note``.
    """
    check_corpus_name(name)
    level = "word" if name in ("wikitext2", "ptb") else "text"
    try:
        paths = _corpus_paths(name)
    except DataNotFoundError as missing:
        if _env_flag("PILLM_OFFLINE") or _env_flag("HF_DATASETS_OFFLINE"):
            raise DataNotFoundError(f"{missing}\n(The Hugging Face hub was not tried: PILLM_OFFLINE or "
                                    "HF_DATASETS_OFFLINE is set.)") from None
        try:
            splits, note = _hub_load(name)
        except Exception as hub_err:  # noqa: BLE001 - any hub failure means "not available"
            raise DataNotFoundError(f"{missing}\nThe Hugging Face hub fallback ({_hub_id(name)[4:]}) failed too: "
                                    f"{type(hub_err).__name__}: {hub_err}") from hub_err
        return Corpus(name, splits, level, {split: _hub_id(name) for split in splits}, note)
    splits, note = _parse_local(name, paths)
    files = {split: SHA256[_SPLIT_FILES[name][split]] for split in splits}
    return Corpus(name, splits, level, files, note)


def _split_last_word(text: str) -> tuple[str, str]:
    *context, word = text.rstrip().rsplit(None, 1)  # rsplit(None) drops the whitespace in between
    return (context[0] if context else ""), word


def lambada_examples(kind: str = "openai") -> list[tuple[str, str]]:
    """LAMBADA as (context, target_word) pairs.

    The target is the passage's last whitespace-separated word; the context is everything before it, trailing
    whitespace stripped (so a scorer should predict ``" " + target`` after ``context`` for BPE models).  This
    is the lm-evaluation-harness convention; in 38 OpenAI passages the target keeps an opening quote glued to
    it (e.g. ``'"Nadia'``).

    ``kind``: "openai" (detokenized test jsonl, the GPT-2/3 setup), "openai_wikitext" (the same passages,
    cased, tokenized like WikiText by :func:`wikitext_tokenize`, target stripped of quotes and punctuation: for
    word-level models trained on WikiText, whose vocabulary is cased), "plain" (the original tokenized,
    lower-cased test passages) or "dev_plain" (the original development set).
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
        raise DataNotFoundError(f"LAMBADA split {split!r} is not available ({corpus.note}). Put the LAMBADA "
                                "files into a data directory (see resolve_file).")
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
    """Raw text tokenized (approximately) the way WikiText was, words separated by spaces: for scoring LAMBADA's
    cased OpenAI passages with word-level models trained on WikiText."""
    for pattern, repl in _WT_RULES:
        text = pattern.sub(repl, text)
    return " ".join(text.split())


def local_checksums(name: str) -> dict[str, str]:
    """split -> sha256 of corpus ``name``'s local files, verified (raises DataNotFoundError / DataError)."""
    _corpus_paths(name)
    return {split: SHA256[relpath] for split, relpath in _SPLIT_FILES[name].items()}
