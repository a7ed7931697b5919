"""Tests for pillm.data: real-data counts, checksums, tokenizers, cache, batching."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pillm import data
from pillm.data import corpora, streams
from pillm.data import (
    BPETokenizer,
    DataError,
    DataNotFoundError,
    TokenStream,
    WordTokenizer,
    load_tokenizer,
)


def _resolve_or_skip(relpath: str) -> Path:
    try:
        return data.resolve_file(relpath)
    except DataNotFoundError as err:
        pytest.skip(f"dataset not available: {err}")


# ---------------------------------------------------------------------------
# Real corpora: the published token counts
# ---------------------------------------------------------------------------


def test_wikitext2_standard_counts(wikitext2):
    assert wikitext2.train.numel() == 2_088_628
    assert wikitext2.valid.numel() == 217_646
    assert wikitext2.test.numel() == 245_569
    assert wikitext2.vocab_size == 33_278
    for split in (wikitext2.train, wikitext2.valid, wikitext2.test):
        assert split.dtype == torch.int64 and split.dim() == 1
    # The vocabulary of train covers valid and test: every <unk> id in valid is
    # a literal "<unk>" of the file, none comes from an OOV word.
    tok = wikitext2.tokenizer
    valid_lines = data.load_corpus("wikitext2").splits["valid"]
    literal_unks = sum(line.split().count("<unk>") for line in valid_lines)
    assert int((wikitext2.valid == tok.unk_id).sum()) == literal_unks
    # pytorch/examples convention: the first line of train is blank -> "<eos>" is id 0.
    assert tok.itos[0] == "<eos>" and tok.decode(wikitext2.train[:6]) == "<eos> = Valkyria Chronicles III ="


def test_wikitext2_corpus_metadata():
    corpus = data.load_corpus("wikitext2")
    assert corpus.level == "word"
    assert corpus.files["train"] == data.SHA256["wikitext-2/train.txt"]
    assert [len(corpus.splits[s]) for s in ("train", "valid", "test")] == [36_718, 3_760, 4_358]
    assert corpus.splits["train"][0] == " "  # blank lines are kept as-is


def test_ptb_standard_counts(ptb):
    assert (ptb.train.numel(), ptb.valid.numel(), ptb.test.numel()) == (929_589, 73_760, 82_430)
    assert ptb.vocab_size == 10_000
    assert ptb.files["train"] == data.SHA256["ptb/ptb.train.txt"]


def test_lambada(lambada_corpus):
    assert lambada_corpus.level == "text"
    assert len(lambada_corpus.splits["test"]) == 5_153
    assert len(lambada_corpus.splits["test_plain"]) == 5_153
    assert len(lambada_corpus.splits["dev_plain"]) == 4_869

    openai = data.lambada_examples("openai")
    assert len(openai) == 5_153
    for (context, target), text in zip(openai, lambada_corpus.splits["test"]):
        assert context and target
        assert not any(c.isspace() for c in target)
        assert context == context.rstrip()
        assert text.rstrip().endswith(target) and text.startswith(context)
    assert openai[0][1] == "signs"

    plain = data.lambada_examples("plain")
    assert len(plain) == 5_153
    # Same passages in both files: the original (lower-cased, tokenized) target is
    # the tail of the OpenAI target, which in 38 passages keeps an opening quote
    # glued to it ('"Nadia' vs 'nadia'), exactly as a whitespace split gives it.
    assert all(a[1].lower().endswith(b[1].lower()) for a, b in zip(openai, plain))
    assert sum(a[1].lower() != b[1].lower() for a, b in zip(openai, plain)) == 38
    assert len(data.lambada_examples("dev_plain")) == 4_869
    with pytest.raises(ValueError):
        data.lambada_examples("nope")


def test_lambada_has_no_tokenized_form():
    with pytest.raises(ValueError, match="no train split"):
        data.load_tokenized("lambada")


def test_tinystories_split(tinystories_corpus):
    c = tinystories_corpus
    train, valid, test = c.splits["train"], c.splits["valid"], c.splits["test"]
    assert len(train) + len(valid) + len(test) == 2_316
    assert len(train) == 2_084 and len(valid) == len(test) == 116
    assert not (set(train) & set(valid)) and not (set(train) & set(test)) and not (set(valid) & set(test))
    assert c.level == "text" and "held out" in c.note and "2,084" in c.note

    # Independent parse: the splits are the complete stories, in file order.
    raw = _resolve_or_skip("tinystories/TinyStories-train.first2MiB.txt").read_text(encoding="utf-8")
    *complete, cut_off = raw.split("<|endoftext|>")
    assert train + valid + test == [s.strip() for s in complete]
    assert train[0].startswith("One day, a little girl named Lily found a needle")
    cut_off = cut_off.strip()
    assert len(cut_off) == 805 and cut_off.endswith("She said it was")
    assert all(cut_off not in story for story in train + valid + test)


# ---------------------------------------------------------------------------
# File resolution and checksums
# ---------------------------------------------------------------------------


def test_sha256_table_matches_sha256sums():
    sums = Path(corpora.REPO_ROOT).parent / "shared" / "data" / "SHA256SUMS"
    if not sums.is_file():
        pytest.skip(f"{sums} not present")
    pinned = dict(reversed(line.split()) for line in sums.read_text().splitlines() if line.strip())
    assert data.SHA256 == pinned


def test_data_dir_candidates_order(monkeypatch, tmp_path):
    monkeypatch.setenv("PILLM_DATA_DIR", str(tmp_path))
    dirs = data.data_dir_candidates()
    assert dirs[0] == tmp_path and dirs[1] == corpora.REPO_ROOT / "data"
    monkeypatch.delenv("PILLM_DATA_DIR")
    assert data.data_dir_candidates()[0] == corpora.REPO_ROOT / "data"


def _corrupt_copy(tmp_path: Path, relpath: str) -> Path:
    src = _resolve_or_skip(relpath)
    dst = tmp_path / relpath
    dst.parent.mkdir(parents=True)
    shutil.copyfile(src, dst)
    raw = bytearray(dst.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    dst.write_bytes(raw)
    return dst


def test_corrupt_file_is_an_error_not_skipped(monkeypatch, tmp_path):
    relpath = "ptb/ptb.valid.txt"
    bad = _corrupt_copy(tmp_path, relpath)
    monkeypatch.setenv("PILLM_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError) as info:
        data.resolve_file(relpath)
    msg = str(info.value)
    assert not isinstance(info.value, DataNotFoundError)
    assert data.SHA256[relpath] in msg and data.file_sha256(bad) in msg and str(bad) in msg
    # A good copy further down the candidate list must not be used instead.
    with pytest.raises(DataError, match=data.SHA256[relpath]):
        data.load_corpus("ptb")
    assert data.resolve_file(relpath, verify=False) == bad


def test_verification_cache_notices_a_changed_file(monkeypatch, tmp_path):
    relpath = "ptb/ptb.test.txt"
    src = _resolve_or_skip(relpath)
    dst = tmp_path / relpath
    dst.parent.mkdir(parents=True)
    shutil.copyfile(src, dst)
    monkeypatch.setenv("PILLM_DATA_DIR", str(tmp_path))
    assert data.resolve_file(relpath) == dst  # verified (and cached)
    raw = bytearray(dst.read_bytes())
    raw[0] ^= 0x01
    dst.write_bytes(raw)  # same size; a new mtime invalidates the cached hash
    st = dst.stat()
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(DataError, match="Checksum mismatch"):
        data.resolve_file(relpath)


def test_missing_everywhere_lists_searched_paths(monkeypatch, tmp_path):
    empty = [tmp_path / "a", tmp_path / "b"]
    monkeypatch.setattr(corpora, "data_dir_candidates", lambda: empty)
    with pytest.raises(DataNotFoundError) as info:
        data.resolve_file("ptb/ptb.train.txt")
    msg = str(info.value)
    for d in empty:
        assert str(d / "ptb" / "ptb.train.txt") in msg
    assert data.SHA256["ptb/ptb.train.txt"] in msg and "PILLM_DATA_DIR" in msg

    # load_corpus: offline (set by conftest) -> the same error, hub not tried.
    with pytest.raises(DataError, match="hub was not tried") as info:
        data.load_corpus("ptb")
    assert str(empty[0] / "ptb" / "ptb.train.txt") in str(info.value)


def test_hub_failure_is_appended_to_missing_error(monkeypatch, tmp_path):
    monkeypatch.setattr(corpora, "data_dir_candidates", lambda: [tmp_path])
    monkeypatch.delenv("PILLM_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)

    def no_network(name):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(corpora, "_hub_load", no_network)
    with pytest.raises(DataNotFoundError, match="hub unreachable") as info:
        data.load_corpus("wikitext2")
    assert str(tmp_path / "wikitext-2" / "train.txt") in str(info.value)

    # HF_DATASETS_OFFLINE alone also disables the hub.
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataNotFoundError, match="hub was not tried"):
        data.load_corpus("wikitext2")


def test_hub_path_parses_datasets_output(monkeypatch, tmp_path):
    """The real hub code path, with `datasets.load_dataset` faked (no network here)."""
    import datasets

    fake = {
        "train": {"sentence": ["a b c", "b d"]},
        "validation": {"sentence": ["a x"]},
        "test": {"sentence": ["d"]},
    }
    calls = []

    def fake_load_dataset(path, *args, **kwargs):
        calls.append(path)
        return fake

    monkeypatch.setattr(corpora, "data_dir_candidates", lambda: [tmp_path])
    monkeypatch.delenv("PILLM_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    corpus = data.load_corpus("ptb")
    assert calls == ["ptb_text_only"]
    assert corpus.splits == {"train": ["a b c", "b d"], "valid": ["a x"], "test": ["d"]}
    assert corpus.files["train"] == "hub:ptb_text_only"
    tc = data.load_tokenized("ptb", cache_dir=tmp_path / "cache")
    assert tc.tokenizer.decode(tc.valid) == "a <unk> <eos>"


# ---------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------


def test_word_tokenizer(tmp_path):
    tok = WordTokenizer.build(["the cat sat", " ", "the dog"])
    assert tok.itos == ["the", "cat", "sat", "<eos>", "dog", "<unk>"]  # first-seen; <unk> appended
    assert (tok.eos_id, tok.unk_id, tok.vocab_size) == (3, 5, 6)
    assert tok.encode("the zebra sat") == [0, tok.unk_id, 2, tok.eos_id]
    assert tok.encode("the zebra", add_eos=False) == [0, tok.unk_id]
    assert tok.decode(tok.encode("the dog sat")) == "the dog sat <eos>"
    stream = tok.encode_lines(["the cat", "", "zebra dog"])
    assert stream.dtype == torch.int64
    assert stream.tolist() == tok.encode("the cat") + tok.encode("") + tok.encode("zebra dog")
    assert tok.decode(stream) == "the cat <eos> <eos> <unk> dog <eos>"

    tok.save(tmp_path)
    assert json.loads((tmp_path / "tokenizer.json").read_text())["kind"] == "word"
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, WordTokenizer)
    assert loaded.itos == tok.itos and loaded.stoi == tok.stoi
    assert WordTokenizer.load(tmp_path).encode("the zebra") == tok.encode("the zebra")


def test_word_tokenizer_keeps_existing_unk_position():
    tok = WordTokenizer.build(["a <unk> b"])
    assert tok.itos == ["a", "<unk>", "b", "<eos>"] and tok.unk_id == 1


@pytest.fixture(scope="module")
def small_bpe(tinystories_corpus) -> BPETokenizer:
    return BPETokenizer.train(tinystories_corpus.splits["train"][:300], vocab_size=512)


def test_bpe_basics(small_bpe, tinystories_corpus, tmp_path):
    tok = small_bpe
    assert tok.kind == "bpe" and tok.vocab_size == 512 and tok.unk_id is None
    story = tinystories_corpus.splits["valid"][0]
    ids = tok.encode(story)
    assert ids[-1] == tok.eos_id and tok.eos_id not in ids[:-1]
    assert len(ids) < len(story.encode("utf-8")) / 2  # it does merge
    assert tok.decode(ids) == story + "<|endoftext|>"
    docs = tinystories_corpus.splits["test"][:5]
    stream = tok.encode_lines(docs)
    assert stream.dtype == torch.int64
    assert stream.tolist() == sum((tok.encode(d) for d in docs), [])

    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, BPETokenizer) and loaded.vocab_size == tok.vocab_size
    assert torch.equal(loaded.encode_lines(docs), stream)
    assert loaded.encode("héllo wörld ✓ 🙂") == tok.encode("héllo wörld ✓ 🙂")


@settings(max_examples=50, deadline=None)
@given(text=st.text(max_size=200))
def test_bpe_round_trip(small_bpe, text):
    ids = small_bpe.encode(text, add_eos=False)
    assert all(0 <= i < small_bpe.vocab_size for i in ids)
    assert small_bpe.decode(ids) == text


def test_bpe_round_trip_examples(small_bpe):
    for text in ["", " ", "  leading spaces", "tab\tand\nnewline\r\n", "\x00\x7f", "日本語のテキスト", "a<|endoftext|>b"]:
        assert small_bpe.decode(small_bpe.encode(text, add_eos=False)) == text


# ---------------------------------------------------------------------------
# Tokenized corpora and the on-disk cache
# ---------------------------------------------------------------------------


def _entries(root: Path) -> list[Path]:
    return sorted(root.iterdir()) if root.exists() else []


def test_cache_hit_and_corrupt_entry_rebuild(monkeypatch, tmp_path, ptb):
    calls = []
    real = streams._tokenize_corpus

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(streams, "_tokenize_corpus", counting)
    first = data.load_tokenized("ptb", cache_dir=tmp_path)
    assert calls == ["word"]
    (entry,) = _entries(tmp_path)  # one complete entry, no temp dirs left behind
    assert entry.name.startswith("ptb-word-")
    assert torch.equal(first.train, ptb.train) and first.tokenizer.itos == ptb.tokenizer.itos

    def must_not_tokenize(*args, **kwargs):
        raise AssertionError("cache miss")

    monkeypatch.setattr(streams, "_tokenize_corpus", must_not_tokenize)
    second = data.load_tokenized("ptb", cache_dir=tmp_path)
    for split in ("train", "valid", "test"):
        assert torch.equal(getattr(first, split), getattr(second, split))
    assert second.tokenizer.itos == first.tokenizer.itos
    assert second.note == first.note and second.files == first.files

    short = data.load_tokenized("ptb", cache_dir=tmp_path, max_train_tokens=1000)
    assert torch.equal(short.train, first.train[:1000]) and torch.equal(short.valid, first.valid)

    # Truncate the tensor file: the entry is rebuilt with a warning, not fatal.
    tokens = entry / "tokens.pt"
    tokens.write_bytes(tokens.read_bytes()[: tokens.stat().st_size // 2])
    monkeypatch.setattr(streams, "_tokenize_corpus", counting)
    with pytest.warns(UserWarning, match="Rebuilding"):
        third = data.load_tokenized("ptb", cache_dir=tmp_path)
    assert calls == ["word", "word"]
    assert torch.equal(third.train, first.train)
    assert _entries(tmp_path) == [entry]
    monkeypatch.setattr(streams, "_tokenize_corpus", must_not_tokenize)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt entry is healthy again
        data.load_tokenized("ptb", cache_dir=tmp_path)


def test_interrupted_cache_write_leaves_no_entry(monkeypatch, tmp_path):
    def disk_full(self, directory):
        raise OSError("No space left on device")

    monkeypatch.setattr(WordTokenizer, "save", disk_full)
    with pytest.warns(UserWarning, match="Could not write cache entry"):
        tc = data.load_tokenized("ptb", cache_dir=tmp_path, max_train_tokens=10)
    assert tc.train.numel() == 10  # still usable, just uncached
    assert _entries(tmp_path) == []  # neither a half entry nor a temp dir


def test_bpe_tokenized_cache(monkeypatch, tmp_path, tinystories_corpus):
    first = data.load_tokenized("tinystories", bpe_vocab_size=300, cache_dir=tmp_path)
    assert first.tokenizer.kind == "bpe" and first.vocab_size == 300
    assert first.files["train"] == data.SHA256["tinystories/TinyStories-train.first2MiB.txt"]
    assert int((first.valid == first.tokenizer.eos_id).sum()) == len(tinystories_corpus.splits["valid"])
    monkeypatch.setattr(streams, "_tokenize_corpus", lambda *a, **k: pytest.fail("cache miss"))
    second = data.load_tokenized("tinystories", bpe_vocab_size=300, cache_dir=tmp_path)
    assert torch.equal(first.test, second.test)
    assert second.tokenizer.decode(second.test[:50]) == first.tokenizer.decode(first.test[:50])
    assert second.tokenizer.encode("Once upon a time") == first.tokenizer.encode("Once upon a time")
    # A different vocabulary size is a different cache entry.
    key300 = streams._cache_key("tinystories", "bpe", 300, first.files)
    assert key300 != streams._cache_key("tinystories", "bpe", 301, first.files)
    assert key300 != streams._cache_key("tinystories", "bpe", 300, {**first.files, "train": "0" * 64})


def test_load_tokenized_rejects_bad_arguments():
    with pytest.raises(ValueError, match="Unknown corpus"):
        data.load_tokenized("wikitext103")
    with pytest.raises(ValueError, match="tokenizer must be"):
        data.load_tokenized("ptb", tokenizer="sentencepiece")


# ---------------------------------------------------------------------------
# TokenStream
# ---------------------------------------------------------------------------

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_windows(device):
    stream = TokenStream(torch.arange(103), device)
    x, y = stream.windows(10)
    assert x.shape == y.shape == (10, 10)
    assert x.device.type == y.device.type == device
    assert torch.equal(x.cpu(), torch.arange(100).view(10, 10))
    assert torch.equal(y, x + 1)
    with pytest.raises(ValueError):
        TokenStream(torch.arange(5), device).windows(10)


@pytest.mark.parametrize("device", DEVICES)
def test_train_batches_cover_each_window_once(device):
    ids = torch.arange(1000)
    stream = TokenStream(ids, device)
    T, B = 16, 7
    n = stream.num_train_windows(T)
    assert n == (1000 - T) // T == 61
    g = torch.Generator().manual_seed(0)
    offsets = set()
    for _ in range(5):
        batches = list(stream.train_batches(T, B, generator=g))
        assert len(batches) == stream.num_batches(T, B) == 9  # ceil(61 / 7)
        assert [x.shape[0] for x, _ in batches] == [7] * 8 + [5]  # last partial batch kept
        x = torch.cat([b[0] for b in batches]).cpu()
        y = torch.cat([b[1] for b in batches]).cpu()
        assert batches[0][0].device.type == device and batches[0][1].device.type == device
        assert torch.equal(y, x + 1)
        starts = x[:, 0]
        offset = int(starts.min())
        offsets.add(offset)
        assert 0 <= offset < T
        assert sorted(starts.tolist()) == [offset + k * T for k in range(n)]  # each window once
        assert torch.equal(x, ids[starts.unsqueeze(1) + torch.arange(T)])  # contiguous windows
        assert not torch.equal(starts, starts.sort().values)  # shuffled
    assert len(offsets) > 1  # the offset changes between epochs


def test_train_batches_reproducible_and_explicit_offset():
    stream = TokenStream(torch.arange(500), "cpu")
    run = lambda seed: [x for x, _ in stream.train_batches(8, 4, generator=torch.Generator().manual_seed(seed))]
    assert all(torch.equal(a, b) for a, b in zip(run(1), run(1)))
    xs = torch.cat([x for x, _ in stream.train_batches(8, 4, offset=3)])
    assert sorted(xs[:, 0].tolist()) == [3 + 8 * k for k in range(stream.num_train_windows(8))]
    with pytest.raises(ValueError):
        next(stream.train_batches(8, 4, offset=8))


def test_token_stream_from_corpus(wikitext2):
    stream = TokenStream(wikitext2.valid, torch.device("cpu"))
    assert len(stream) == 217_646 and stream.ids.dtype == torch.int64
    x, y = stream.windows(256)
    assert x.shape == ((217_646 - 1) // 256, 256)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_wikitext_tokenize_matches_wikitext_conventions():
    from pillm.data import wikitext_tokenize

    text = 'He said, "I don\'t know Tom\'s well-known 1,000 dogs, 3.5 m." (Really?) \'Nadia'
    assert wikitext_tokenize(text) == (
        "He said , \" I do n't know Tom 's well @-@ known 1 @,@ 000 dogs , 3 @.@ 5 m . \" ( Really ? ) ' Nadia")


def test_lambada_for_word_models_is_cased_and_tokenized_like_wikitext(wikitext2, lambada_corpus):
    """The lower-cased original file would make half the targets OOV for WikiText's cased vocabulary."""
    from pillm.data import lambada_examples

    stoi = wikitext2.tokenizer.stoi
    ex = lambada_examples("openai_wikitext")
    assert len(ex) == 5153
    assert all(word and " " not in word and word[0] not in "\"'“‘" for _, word in ex)
    oov = sum(w not in stoi for _, w in ex) / len(ex)
    plain_oov = sum(w not in stoi for _, w in lambada_examples("plain")) / 5153
    assert oov < 0.3 < 0.45 < plain_oov
