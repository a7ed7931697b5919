"""Interpolated modified Kneser-Ney n-gram language models (a count-based anchor).

A pure-Python re-implementation of the estimator of KenLM's ``lmplz`` (Heafield et al. 2013), interpolated
modified Kneser-Ney smoothing (Chen & Goodman 1998): the classic count-based baselines beside the neural
models' word-level perplexities, without a C++ dependency.

Model
-----
Sentences are padded as ``<s> w_1 ... w_m </s>``; ``</s>`` is predicted (and counted in perplexity), ``<s>``
is only ever context.  For a model of order N:

* **Counts.**  The N-grams get their raw counts.  A lower-order n-gram (n < N) gets its *adjusted*
  (continuation) count ``N1+(. g)``, the number of distinct words seen immediately to its left -- except
  n-grams that start with ``<s>``, which cannot be extended to the left and keep their raw counts.
* **Discounts.**  For every order, from the count-of-counts ``n_k`` of the counts used at that order
  (Chen & Goodman eq. 26)::

      Y = n1 / (n1 + 2 n2)
      D1 = 1 - 2 Y n2 / n1,   D2 = 2 - 3 Y n3 / n2,   D3+ = 3 - 4 Y n4 / n3

* **Interpolation.**  With ``a`` the count of the order, ``h`` a context and ``h'`` the context without its
  first word::

      p(w | h) = (a(h w) - D(a(h w))) / sum_v a(h v)  +  gamma(h) p(w | h')
      gamma(h) = (D1 N1(h .) + D2 N2(h .) + D3+ N3+(h .)) / sum_v a(h v)

  where ``N_k(h .)`` counts the words following ``h`` with count k (3: >= 3).  A context never seen at some
  order passes the lower-order probability through unchanged (KenLM's backoff weight of 1).  The unigram
  distribution is interpolated with the uniform distribution over the vocabulary (every word type seen in
  training, ``</s>`` and ``<unk>``; not ``<s>``), so any word gets a finite probability and a distribution
  sums to exactly 1.
* **OOV.**  A word not seen in training is scored as ``<unk>`` (counted in the perplexity, and in ``oov``).
  In WikiText ``<unk>`` is an ordinary (frequent) training word and gets its estimated probability; if
  ``<unk>`` never occurs in training it keeps only its uniform share, as in KenLM.  (Stock ``lmplz`` refuses
  ``<unk>`` in its input, or deletes it with ``--skip_symbols``; the references treat it as a word.)
* **Discount fallback.**  Where count-of-counts give no valid discounts (``n1``, ``n2`` or ``n3`` = 0),
  ``lmplz --discount_fallback`` uses D = (0.5, 1, 1.5); so does this module by default.  WikiText-2 needs it
  for the unigram model (its vocabulary was cut at 3 occurrences: n1 = n2 = 0), and there every word gets
  the same discount D3+, which the uniform term gives straight back: the order-1 model *is* the
  maximum-likelihood unigram.

Protocol decisions (WikiText-2, see :func:`evaluate_orders`)
------------------------------------------------------------
Every line of a split file is one sentence, tokens are ``line.split()``.  *Blank lines are kept* as empty
sentences ``<s> </s>`` in training and in scoring (each contributes one predicted ``</s>``): this is what
``lmplz`` and ``query`` do with an empty line, and it is what reproduces the KenLM reference perplexities
(:data:`KENLM_REFERENCE`): orders 2-5 within 0.03%, order 1 911.7 vs 914.4 (-0.3%).  Dropping blank lines
(``skip_blank=True``) instead gives test 926.0 / 269.9 / 230.9 for orders 1-3, 1.3-2.2% off.  WikiText-2
test: 241,211 words + 4,358 ``</s>`` = 245,569 predicted tokens, no OOV.

>>> lm = KneserNey.fit([["a", "b"], ["a", "c", "b"]], order=2)   # doctest: +SKIP
>>> lm.logprob("b", ("a",)), lm.perplexity([["a", "b"]])        # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter, defaultdict
from typing import Iterable, Sequence

__all__ = ["BOS", "EOS", "UNK", "KENLM_REFERENCE", "FALLBACK_DISCOUNTS", "NGramCounts", "KneserNey",
           "discounts_from_counts", "count_of_counts", "wikitext_sentences", "evaluate_orders", "summary"]

BOS, EOS, UNK = "<s>", "</s>", "<unk>"

#: Test (and one valid) perplexities of KenLM ``lmplz`` modified Kneser-Ney models on WikiText-2 word tokens.
KENLM_REFERENCE = {"test": {1: 914.4, 2: 264.0, 3: 226.1, 4: 221.3, 5: 220.1}, "valid": {5: 234.9}}


def count_of_counts(counts: Iterable[int], upto: int = 4) -> list[int]:
    """``n[k]`` = number of entries with count exactly ``k``, for k = 0..upto."""
    n = [0] * (upto + 1)
    for c in counts:
        if c <= upto:
            n[c] += 1
    return n


#: ``lmplz --discount_fallback`` default discounts (D1, D2, D3+).
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)


def discounts_from_counts(n: Sequence[int], fallback: Sequence[float] | None = None
                          ) -> tuple[float, float, float]:
    """Modified Kneser-Ney discounts (D1, D2, D3+) from count-of-counts.

    ``n[k]`` is the number of n-grams with count k (``n[0]`` is ignored), as returned by
    :func:`count_of_counts`.  When a discount is undefined (n1, n2 or n3 is 0) or out of range [0, k], return
    ``fallback`` if given (``lmplz --discount_fallback``), else raise ``ValueError`` (``lmplz``'s default).
    """
    n1, n2, n3, n4 = n[1], n[2], n[3], n[4]
    d = None
    if min(n1, n2, n3) > 0:
        y = n1 / (n1 + 2.0 * n2)
        d = (1.0 - 2.0 * y * n2 / n1, 2.0 - 3.0 * y * n3 / n2, 3.0 - 4.0 * y * n4 / n3)
        if all(0.0 <= dk <= k for k, dk in enumerate(d, start=1)):
            return d
    if fallback is not None:
        return tuple(float(x) for x in fallback)
    raise ValueError(f"cannot estimate Kneser-Ney discounts from count-of-counts n1..n4 = {n1, n2, n3, n4}: "
                     + ("need n1, n2, n3 > 0 (is this small or artificial data?)" if d is None
                        else f"(D1, D2, D3+) = {d} is out of the range [0, k]"))


class NGramCounts:
    """Raw and adjusted n-gram counts up to ``max_order``, counted once.

    Words are mapped to integer ids (``vocab``); n-grams are tuples of ids.  ``raw[n]`` holds raw counts of
    all n-grams (n = 1..max_order) of the padded sentences, without the ``<s>`` unigram.  ``adjusted(n)``
    gives the counts a model of higher order uses at order n: continuation counts, except raw counts for
    n-grams that start with ``<s>``.  A model of any order k <= max_order can be built from one
    ``NGramCounts`` (raw counts at order k, adjusted counts below), so fitting orders 1..5 counts only once.
    """

    def __init__(self, sentences: Iterable[Sequence[str]], max_order: int):
        if max_order < 1:
            raise ValueError(f"order must be >= 1, got {max_order}")
        self.max_order = max_order
        self.vocab: dict[str, int] = {UNK: 0, BOS: 1, EOS: 2}
        self.words: list[str] = [UNK, BOS, EOS]
        vocab, words = self.vocab, self.words
        bos, eos = vocab[BOS], vocab[EOS]
        raw = [Counter() for _ in range(max_order + 1)]  # raw[0] unused
        self.sentences, self.tokens = 0, 0  # tokens: the predicted ones, </s> included
        for sent in sentences:
            ids = [bos]
            for w in sent:
                i = vocab.get(w)
                if i is None:
                    i = vocab[w] = len(words)
                    words.append(w)
                ids.append(i)
            ids.append(eos)
            self.sentences += 1
            self.tokens += len(ids) - 1
            for n in range(1, min(max_order, len(ids)) + 1):
                # all windows of length n; each starts with <s> at most once
                raw[n].update(zip(*(ids[j:] for j in range(n))))
        raw[1].pop((bos,), None)  # <s> is never predicted
        self.raw, self.bos = raw, bos
        self._adjusted: dict[int, Counter] = {}

    def adjusted(self, n: int) -> dict:
        """Adjusted counts at order n < max_order (cached)."""
        if not 1 <= n < self.max_order:
            raise ValueError(f"adjusted counts exist for orders 1..{self.max_order - 1}, not {n}")
        if n not in self._adjusted:
            bos = self.bos
            adj = Counter(g[1:] for g in self.raw[n + 1])  # distinct left extensions
            for g, c in self.raw[n].items():
                if g[0] == bos:
                    adj[g] = c  # cannot be extended to the left: raw count
            self._adjusted[n] = adj
        return self._adjusted[n]


class _OrderTable:
    """Discounted probabilities and interpolation weights of one order."""

    __slots__ = ("discounts", "prob", "gamma", "count_of_counts")

    def __init__(self, counts: dict, fallback: Sequence[float] | None):
        self.count_of_counts = count_of_counts(counts.values())
        d1, d2, d3 = self.discounts = discounts_from_counts(self.count_of_counts, fallback)
        disc = (0.0, d1, d2, d3)
        denom, mass = defaultdict(int), defaultdict(float)  # per context: sum of counts, discounted mass
        for g, c in counts.items():
            if c > 0:
                denom[g[:-1]] += c
                mass[g[:-1]] += disc[min(c, 3)]
        self.prob = {g: (c - disc[min(c, 3)]) / denom[g[:-1]] for g, c in counts.items() if c > 0}
        self.gamma = {h: mass[h] / denom[h] for h in denom}


class KneserNey:
    """Interpolated modified Kneser-Ney language model of a fixed order (:meth:`from_counts` builds several orders
    from one counting pass)."""

    def __init__(self, order: int):
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        self.order = order
        self.counts: NGramCounts | None = None
        self.tables: list[_OrderTable | None] = [None] * (order + 1)  # tables[n], n = 1..order
        self.unigram: list[float] = []  # p(w) for every word id (uniform-interpolated)

    @classmethod
    def fit(cls, sentences: Iterable[Sequence[str]], order: int,
            discount_fallback: Sequence[float] | None = FALLBACK_DISCOUNTS) -> "KneserNey":
        """Count n-grams of ``sentences`` (lists of tokens, no ``<s>``/``</s>``) and estimate.

        ``discount_fallback``: discounts used at an order whose count-of-counts give no valid discounts
        (``lmplz --discount_fallback``); ``None`` raises ``ValueError`` there instead.
        """
        return cls.from_counts(NGramCounts(sentences, order), order, discount_fallback)

    @classmethod
    def from_counts(cls, counts: NGramCounts, order: int | None = None,
                    discount_fallback: Sequence[float] | None = FALLBACK_DISCOUNTS,
                    _shared: dict | None = None) -> "KneserNey":
        """Model of ``order`` (default ``counts.max_order``) from precounted n-grams; ``_shared`` (a dict) caches
        the adjusted-count tables between models built from the same counts."""
        order = counts.max_order if order is None else order
        if not 1 <= order <= counts.max_order:
            raise ValueError(f"order {order} not in 1..{counts.max_order}")
        self = cls(order)
        self.counts = counts
        shared = {} if _shared is None else _shared
        for n in range(1, order):
            if n not in shared:
                shared[n] = _OrderTable(counts.adjusted(n), discount_fallback)
            self.tables[n] = shared[n]
        self.tables[order] = _OrderTable(counts.raw[order], discount_fallback)
        t1 = self.tables[1]
        vsize = len(counts.words) - 1  # every type but <s> (<unk> and </s> included)
        uniform = t1.gamma[()] / vsize
        self.unigram = [t1.prob.get((i,), 0.0) + uniform for i in range(len(counts.words))]
        self.unigram[counts.bos] = 0.0
        return self

    @property
    def discounts(self) -> list[tuple[float, float, float]]:
        """(D1, D2, D3+) of orders 1..order."""
        return [self.tables[n].discounts for n in range(1, self.order + 1)]

    def _id(self, word: str) -> int:
        return self.counts.vocab.get(word, 0)  # OOV -> <unk> (id 0)

    def _prob_ids(self, w: int, ctx: tuple) -> float:
        """p(w | ctx) for ids; ctx already truncated to at most order - 1 words."""
        p = self.unigram[w]
        tables = self.tables
        k = len(ctx)
        for n in range(2, k + 2):
            h = ctx[k - n + 1:]
            t = tables[n]
            g = t.gamma.get(h)
            if g is None:  # context unseen at this order (then also at higher ones)
                break
            p = t.prob.get(h + (w,), 0.0) + g * p
        return p

    def prob(self, word: str, context: tuple[str, ...] = ()) -> float:
        """Interpolated probability of ``word`` after ``context`` (oldest word first).

        Only the last ``order - 1`` context words are used; put ``<s>`` first to condition on a sentence
        start.  OOV words (and context words) are treated as ``<unk>``.
        """
        ctx = tuple(self._id(c) for c in context[max(0, len(context) - self.order + 1):]) if self.order > 1 else ()
        return self._prob_ids(self._id(word), ctx)

    def logprob(self, word: str, context: tuple[str, ...] = ()) -> float:
        """Natural log of :meth:`prob`."""
        return math.log(self.prob(word, context))

    def perplexity(self, sentences: Iterable[Sequence[str]]) -> dict:
        """Perplexity over ``sentences``, every word plus one ``</s>`` each predicted.

        Returns ``{"ppl", "tokens", "oov", "logprob"}`` (natural-log total).  OOV words are scored as
        ``<unk>`` and included (KenLM's "perplexity including OOVs"); ``oov`` counts them.
        """
        vocab = self.counts.vocab
        bos, eos = vocab[BOS], vocab[EOS]
        keep = self.order - 1
        prob, log = self._prob_ids, math.log  # looked up once: the loop below runs per token
        total, tokens, oov = 0.0, 0, 0
        for sent in sentences:
            ids = []
            for w in sent:
                i = vocab.get(w)
                if i is None or i == bos:
                    oov += 1
                    i = 0
                ids.append(i)
            ids.append(eos)
            hist = [bos]
            for w in ids:
                ctx = tuple(hist[max(0, len(hist) - keep):]) if keep else ()
                total += log(prob(w, ctx))
                hist.append(w)
            tokens += len(ids)
        return {"ppl": math.exp(-total / tokens) if tokens else float("nan"),
                "tokens": tokens, "oov": oov, "logprob": total}


def wikitext_sentences(lines: Iterable[str], skip_blank: bool = False) -> list[list[str]]:
    """One sentence per line, tokens ``line.split()``; blank lines kept unless ``skip_blank``."""
    out = [line.split() for line in lines]
    return [s for s in out if s] if skip_blank else out


def evaluate_orders(orders: Sequence[int] = (1, 2, 3, 4, 5), dataset: str = "wikitext2",
                    skip_blank: bool = False, verbose: bool = False) -> list[dict]:
    """Fit modified-KN models of every order on ``dataset`` train; score valid and test.

    Counts once at ``max(orders)`` and derives every model from those counts (lower orders share their
    adjusted-count tables).  Returns one row per order: ``{order, valid_ppl, test_ppl, tokens, oov, seconds}``
    where ``tokens`` is the number of predicted test tokens (``</s>`` included) and ``seconds`` the time for
    building that order's model and scoring both splits (the counting time is ``count_seconds``).
    """
    from pillm.data import load_corpus

    corpus = load_corpus(dataset)
    split = {s: wikitext_sentences(corpus.splits[s], skip_blank) for s in ("train", "valid", "test")}
    t0 = time.perf_counter()
    counts = NGramCounts(split["train"], max(orders))
    count_seconds = time.perf_counter() - t0
    if verbose:
        print(f"counted {counts.tokens} train tokens up to order {counts.max_order} in {count_seconds:.1f} s")
    shared: dict = {}
    rows = []
    for order in orders:
        t0 = time.perf_counter()
        lm = KneserNey.from_counts(counts, order, _shared=shared)
        valid, test = (lm.perplexity(split[s]) for s in ("valid", "test"))
        row = {"order": order, "valid_ppl": valid["ppl"], "test_ppl": test["ppl"],
               "tokens": test["tokens"], "valid_tokens": valid["tokens"], "oov": test["oov"],
               "seconds": time.perf_counter() - t0, "count_seconds": count_seconds}
        rows.append(row)
        if verbose:
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    return rows


def summary(orders: Sequence[int] = (1, 2, 3, 4, 5), dataset: str = "wikitext2"):
    """A tidy table (pandas) of :func:`evaluate_orders`, with the KenLM reference beside each order.

    Columns: ``experiment, method, order, valid_ppl, test_ppl, kenlm_test_ppl, test_vs_kenlm_pct,
    tokens, oov, seconds`` (``seconds`` is wall time; everything else is deterministic).
    """
    import pandas as pd

    rows = evaluate_orders(orders, dataset)
    ref = KENLM_REFERENCE["test"] if dataset == "wikitext2" else {}
    df = pd.DataFrame([{"experiment": "ngram", "method": f"kn{r['order']}", "order": r["order"],
                        "valid_ppl": r["valid_ppl"], "test_ppl": r["test_ppl"],
                        "kenlm_test_ppl": ref.get(r["order"], float("nan")),
                        "tokens": r["tokens"], "oov": r.get("oov", 0), "seconds": r["seconds"]} for r in rows])
    df["test_vs_kenlm_pct"] = 100 * (df["test_ppl"] / df["kenlm_test_ppl"] - 1)
    return df


if __name__ == "__main__":  # python -m pillm.ngram
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--dataset", default="wikitext2")
    ap.add_argument("--skip-blank", action="store_true")
    args = ap.parse_args()
    evaluate_orders(args.orders, args.dataset, args.skip_blank, verbose=True)
