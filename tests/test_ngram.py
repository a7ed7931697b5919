"""Tests for pillm.ngram (interpolated modified Kneser-Ney)."""

from __future__ import annotations

import math
import random
from collections import defaultdict

import pytest

from pillm import data
from pillm.run import REPO
from pillm.ngram import (
    BOS,
    EOS,
    FALLBACK_DISCOUNTS,
    KENLM_REFERENCE,
    UNK,
    KneserNey,
    NGramCounts,
    count_of_counts,
    discounts_from_counts,
    evaluate_orders,
)


def toy_corpus(n_sent: int = 400, vocab: int = 25, seed: int = 0) -> list[list[str]]:
    """Zipf-ish sentences from a tiny Markov chain: diverse enough count-of-counts at every order."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]
    weights = [1.0 / (i + 1) for i in range(vocab)]
    sents = []
    for _ in range(n_sent):
        length = rng.randint(0, 12)  # includes empty sentences
        s, prev = [], 0
        for _ in range(length):
            # mild dependence on the previous word
            w = rng.choices(words, weights=weights[prev:] + weights[:prev])[0]
            prev = int(w[1:])
            s.append(w)
        sents.append(s)
    return sents


@pytest.fixture(scope="module")
def toy():
    return toy_corpus()


@pytest.fixture(scope="module")
def toy_models(toy):
    counts = NGramCounts(toy, 5)
    shared: dict = {}
    return {k: KneserNey.from_counts(counts, k, _shared=shared) for k in range(1, 6)}


def predictable(lm: KneserNey) -> list[str]:
    return [w for w in lm.counts.words if w != BOS]  # vocabulary incl. <unk> and </s>


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_distributions_sum_to_one(toy, toy_models, order):
    lm = toy_models[order]
    assert KneserNey.fit(toy, order).discounts == lm.discounts  # fit == shared-counts path
    contexts = [(), (BOS,), ("w0",), (BOS, "w0"), ("w1", "w0", "w2"), ("w3", "w3", "w3", "w3"),
                ("w0", "w1", "w0", "w1", "w0", "w1"), ("never", "seen"), (EOS,), toy[3][:4]]
    for ctx in contexts:
        total = sum(lm.prob(w, tuple(ctx)) for w in predictable(lm))
        assert total == pytest.approx(1.0, abs=1e-9), (order, ctx)
        assert lm.prob(BOS, tuple(ctx)) == 0.0


def test_unigram_hand_computed():
    # tokens a b </s> a </s>: counts a=2, b=1, </s>=2, total 5
    # n1=1, n2=2, n3=0 -> discounts undefined -> lmplz fallback D = (0.5, 1, 1.5)
    lm = KneserNey.fit([["a", "b"], ["a"]], order=1)
    assert lm.discounts == [FALLBACK_DISCOUNTS]
    v = 4  # <unk>, a, b, </s>  (never <s>)
    gamma = (0.5 * 1 + 1.0 * 2) / 5
    assert lm.prob("a") == pytest.approx((2 - 1.0) / 5 + gamma / v)
    assert lm.prob("b") == pytest.approx((1 - 0.5) / 5 + gamma / v)
    assert lm.prob(EOS) == pytest.approx((2 - 1.0) / 5 + gamma / v)
    assert lm.prob(UNK) == pytest.approx(gamma / v)
    assert lm.logprob("a", ("b",)) == pytest.approx(math.log(0.325))  # order 1 ignores context
    # perplexity of the training data: 5 predicted tokens
    r = lm.perplexity([["a", "b"], ["a"]])
    assert r["tokens"] == 5 and r["oov"] == 0
    expect = math.exp(-(2 * math.log(0.325) + math.log(0.225) + 2 * math.log(0.325)) / 5)
    assert r["ppl"] == pytest.approx(expect)
    with pytest.raises(ValueError):
        KneserNey.fit([["a", "b"], ["a"]], order=1, discount_fallback=None)


def test_discount_formula():
    n = [0, 10, 5, 3, 2]
    y = 10 / (10 + 2 * 5)
    d = discounts_from_counts(n)
    assert d == pytest.approx((1 - 2 * y * 5 / 10, 2 - 3 * y * 3 / 5, 3 - 4 * y * 2 / 3))
    assert d == pytest.approx((0.5, 1.1, 3 - 4 / 3))
    assert count_of_counts([1, 1, 2, 5, 4, 3, 3, 1]) == [0, 3, 1, 2, 1]
    with pytest.raises(ValueError):
        discounts_from_counts([0, 0, 5, 3, 2])
    assert discounts_from_counts([0, 0, 5, 3, 2], fallback=(0.5, 1, 1.5)) == (0.5, 1.0, 1.5)


def brute_force_counts(sents, order):
    """raw[n] and continuation counts straight from the definition."""
    raw = [defaultdict(int) for _ in range(order + 1)]
    left = [defaultdict(set) for _ in range(order + 1)]
    for s in sents:
        seq = [BOS] + s + [EOS]
        for n in range(1, order + 1):
            for i in range(len(seq) - n + 1):
                g = tuple(seq[i:i + n])
                if g == (BOS,):
                    continue
                raw[n][g] += 1
                if i > 0:
                    left[n][g].add(seq[i - 1])
    return raw, left


def test_discounts_use_adjusted_counts(toy, toy_models):
    raw, left = brute_force_counts(toy, 5)
    lm = toy_models[5]
    for n in range(1, 6):
        if n == 5:
            counts = list(raw[5].values())
        else:  # continuation counts, raw counts for n-grams starting with <s>
            counts = [c if g[0] == BOS else len(left[n][g]) for g, c in raw[n].items()]
        n_k = count_of_counts(counts)
        assert lm.tables[n].count_of_counts[1:] == n_k[1:]
        assert lm.discounts[n - 1] == pytest.approx(discounts_from_counts(n_k, FALLBACK_DISCOUNTS))
    # a lower-order model uses raw counts at its own top order
    assert toy_models[2].discounts[1] == pytest.approx(discounts_from_counts(count_of_counts(raw[2].values())))
    # orders 2..5 of the toy corpus have genuine (non-fallback) discounts
    assert all(d != FALLBACK_DISCOUNTS for d in lm.discounts[1:]), lm.discounts


def test_backoff_and_oov(toy_models):
    lm3 = toy_models[3]
    lm2 = toy_models[2]
    for w in predictable(lm3):
        # unseen context words: finite, and fully backed off to the unigram level
        lp = lm3.logprob(w, ("zzz", "yyy"))
        assert math.isfinite(lp)
        assert lp == pytest.approx(math.log(lm3.prob(w, ())))
        # unseen 2-word context, seen last word: backs off to the bigram of the same model
        assert lm3.prob(w, ("zzz", "w0")) == pytest.approx(lm3.prob(w, ("w0",)))
        assert math.isfinite(lm2.logprob(w, ("zzz",)))
    # OOV words are scored as <unk>
    assert lm3.prob("not-a-word", ("w0", "w1")) == lm3.prob(UNK, ("w0", "w1"))
    assert lm3.prob("w2", ("oov1", "oov2")) == lm3.prob("w2", (UNK, UNK))
    r = lm3.perplexity([["w0", "oovword", "w1"]])
    assert r["tokens"] == 4 and r["oov"] == 1 and math.isfinite(r["ppl"])
    # context longer than order - 1 is truncated
    assert lm3.prob("w1", ("w5", "w6", "w0", "w2")) == lm3.prob("w1", ("w0", "w2"))


def test_higher_order_fits_training_data_better(toy, toy_models):
    ppl = [toy_models[k].perplexity(toy)["ppl"] for k in range(1, 6)]
    assert all(a > b for a, b in zip(ppl, ppl[1:])), ppl


def test_wikitext2_trigram_matches_kenlm():
    """Order 3 on all of WikiText-2 against KenLM (~15 s); orders 1-5 are recorded in the ngram results."""
    try:
        (row,) = evaluate_orders((3,), "wikitext2")
    except data.DataNotFoundError as err:
        pytest.skip(f"dataset not available: {err}")
    assert row["tokens"] == 245569  # 241211 words + 4358 </s> (one per line, blank lines too)
    assert row["oov"] == 0
    assert row["test_ppl"] == pytest.approx(KENLM_REFERENCE["test"][3], rel=1e-3), row


def test_recorded_orders_match_kenlm():
    """The committed full comparison (``ngram`` experiment, paper profile: orders 1-5)."""
    import pandas as pd

    df = pd.read_csv(REPO / "results" / "paper" / "ngram" / "summary.csv").set_index("order")
    assert list(df.index) == [1, 2, 3, 4, 5]
    assert (df["tokens"] == 245569).all() and (df["oov"] == 0).all()
    for order, row in df.iterrows():
        assert row["kenlm_test_ppl"] == KENLM_REFERENCE["test"][order]
        assert row["test_ppl"] == pytest.approx(KENLM_REFERENCE["test"][order], rel=1e-3 if order > 1 else 0.02)
    assert df.loc[5, "valid_ppl"] == pytest.approx(KENLM_REFERENCE["valid"][5], rel=0.02)
