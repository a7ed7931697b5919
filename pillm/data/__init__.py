"""Datasets, tokenizers and batching for pillm (modules ``corpora``, ``tokenizers``, ``streams``).

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

from .corpora import (
    CORPORA, SHA256, Corpus, DataError, DataNotFoundError, data_dir_candidates, file_sha256, lambada_examples,
    load_corpus, resolve_file, wikitext_tokenize,
)
from .streams import FORMAT_VERSION, TokenizedCorpus, TokenStream, default_cache_dir, load_tokenized
from .tokenizers import BPETokenizer, WordTokenizer, load_tokenizer

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
    "wikitext_tokenize",
]
