"""Datasets, tokenizers and batching: a corpus name to token tensors on a device.

1. **Files.**  :func:`resolve_file` finds a dataset file in the first of :func:`data_dir_candidates` that
   holds it and checks its pinned sha256 (:data:`SHA256`): results are reproducible because the bytes are.
2. **Corpora** (``corpora``).  :func:`load_corpus` parses a corpus into splits of documents (:class:`Corpus`);
   :func:`lambada_examples` gives LAMBADA (context, target) pairs.
3. **Tokenizers** (``tokenizers``).  :class:`WordTokenizer` (pytorch/examples ``word_language_model``
   convention, for pre-tokenized WikiText-2 / PTB) and :class:`BPETokenizer` (byte-level BPE).
4. **Token streams** (``streams``).  :func:`load_tokenized` tokenizes a corpus into int64 streams, cached on
   disk by the data files' checksums; :class:`TokenStream` keeps a split on the device and slices (x, y)
   windows from it, so training does no per-batch host->device copies.

>>> wt2 = load_tokenized("wikitext2")                    # doctest: +SKIP
>>> for x, y in TokenStream(wt2.train, "cuda").train_batches(128, 32):   # doctest: +SKIP
...     loss = model(x, y)

Environment: ``PILLM_DATA_DIR`` (searched first for the dataset files, laid out as ``shared/data``:
``wikitext-2/train.txt``, ``ptb/ptb.train.txt``, ...), ``PILLM_CACHE_DIR`` (tokenized corpora; default
``<repo>/.cache/tokenized``), ``PILLM_OFFLINE`` or ``HF_DATASETS_OFFLINE`` (never try the Hugging Face hub
when a file is missing).
"""

from .corpora import (
    CORPORA, SHA256, Corpus, DataError, DataNotFoundError, data_dir_candidates, file_sha256, lambada_examples,
    load_corpus, resolve_file, wikitext_tokenize,
)
from .streams import FORMAT_VERSION, TokenizedCorpus, TokenStream, default_cache_dir, load_tokenized
from .tokenizers import BPETokenizer, WordTokenizer, load_tokenizer

__all__ = [
    "BPETokenizer", "CORPORA", "Corpus", "DataError", "DataNotFoundError", "FORMAT_VERSION", "SHA256",
    "TokenStream", "TokenizedCorpus", "WordTokenizer", "data_dir_candidates", "default_cache_dir", "file_sha256",
    "lambada_examples", "load_corpus", "load_tokenized", "load_tokenizer", "resolve_file", "wikitext_tokenize",
]
