"""Evaluation protocol: every token scored once, sliding windows, LAMBADA on the whole word."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pillm.evaluate import _windows, evaluate_stream, generate, lambada
from pillm.model import IGNORE_INDEX, PILLM, config_for


@pytest.mark.parametrize("n, block, stride", [(100, 16, 16), (100, 16, 5), (17, 16, 16), (5, 16, 16), (64, 8, 1)])
def test_windows_score_every_target_exactly_once(n, block, stride):
    ids = torch.arange(n)
    x, y = _windows(ids, block, stride)
    scored = y[y != IGNORE_INDEX]
    assert sorted(scored.tolist()) == list(range(1, n))  # each of ids[1:] exactly once
    # inputs and targets are aligned: target j of a window is the token after input j
    for row in range(x.shape[0]):
        keep = y[row] != IGNORE_INDEX
        assert torch.equal(y[row][keep], x[row][keep] + 1)


def test_sliding_window_gives_each_scored_target_long_context():
    ids = torch.arange(200)
    block, stride = 32, 8
    x, y = _windows(ids, block, stride)
    for row in range(1, x.shape[0]):
        positions = (y[row] != IGNORE_INDEX).nonzero().flatten()
        assert positions.min() >= block - stride - 1 or row == 0


class Lookup(nn.Module):
    """A 'model' that predicts next = table[current] with certainty (for LAMBADA tests)."""

    def __init__(self, table, block_size=32):
        super().__init__()
        self.config = config_for("tiny", vocab_size=len(table), block_size=block_size)
        self.register_buffer("table", torch.tensor(table))
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        return F.one_hot(self.table[ids], self.config.vocab_size).float() * 20.0


class ToyTokenizer:
    """Word → several sub-tokens: 'ab' → [a, b]; letters a..j are ids 0..9."""

    kind = "bpe"
    unk_id = None

    def encode(self, text, add_eos=False):
        return [ord(ch) - ord("a") for ch in text if ch != " "]


def test_lambada_scores_the_whole_word_not_the_first_token():
    """Pitfall: LAMBADA scored on the first sub-token only."""
    table = [(i + 1) % 10 for i in range(10)]  # predicts the next letter
    model = Lookup(table)
    tok = ToyTokenizer()
    examples = [("abc", "de"),  # d, e both predicted: correct
                ("abc", "df"),  # first token right, second wrong: must be wrong
                ("abc", "ga")]  # wrong from the start
    out = lambada(model, tok, examples, batch_size=2)
    assert out["n"] == 3
    assert out["acc"] == pytest.approx(1 / 3)


def test_lambada_is_independent_of_batching_and_padding():
    table = [(i + 1) % 10 for i in range(10)]
    model = Lookup(table)
    examples = [("a", "bc"), ("abcdefg", "hi"), ("cde", "fh"), ("abcdefghi", "ja")]
    a = lambada(model, ToyTokenizer(), examples, batch_size=1)
    b = lambada(model, ToyTokenizer(), examples, batch_size=4)
    assert a == b
    assert a["acc"] == pytest.approx(3 / 4)


class UnkTokenizer(ToyTokenizer):
    """ToyTokenizer whose letter 'j' (id 9) is the unknown-word token."""

    unk_id = 9


def test_lambada_counts_unknown_words_as_wrong():
    """A target the tokenizer cannot represent is wrong even when the model predicts ``<unk>``."""
    table = [(i + 1) % 10 for i in range(10)]  # after 'i' comes 'j' = <unk>
    examples = [("ghi", "j"), ("abc", "d")]
    out = lambada(Lookup(table), UnkTokenizer(), examples)
    assert out["oov_rate"] == 0.5
    assert out["acc"] == 0.5  # greedy decoding reproduces both targets; only the known word counts
    assert lambada(Lookup(table), ToyTokenizer(), examples)["acc"] == 1.0


class TrainModeBreaks(Lookup):
    """Predicts perfectly in eval mode and uniformly wrong in training mode (as heavy dropout would)."""

    def forward(self, ids):
        logits = super().forward(ids)
        return logits.roll(1, dims=-1) if self.training else logits


def test_evaluation_runs_in_eval_mode_and_restores_the_mode():
    table = [(i + 1) % 10 for i in range(10)]
    ids = torch.arange(40) % 10
    reference = evaluate_stream(TrainModeBreaks(table).eval(), ids)
    assert reference["acc"] == 1.0
    model = TrainModeBreaks(table).train()
    assert evaluate_stream(model, ids) == reference
    assert model.training
    examples = [("abc", "de"), ("cde", "fg")]
    assert lambada(model, ToyTokenizer(), examples)["acc"] == 1.0
    assert model.training


def test_evaluate_stream_matches_direct_computation():
    torch.manual_seed(0)
    model = PILLM(config_for("tiny", vocab_size=30, block_size=8, dropout=0.0)).eval()
    ids = torch.randint(0, 30, (33,))
    out = evaluate_stream(model, ids)
    logits = model(ids[:32].view(4, 8))
    nll = F.cross_entropy(logits.reshape(-1, 30), ids[1:33].view(4, 8).reshape(-1))
    assert out["tokens"] == 32
    assert out["loss"] == pytest.approx(nll.item(), rel=1e-5)
    assert out["ppl"] == pytest.approx(math.exp(nll.item()), rel=1e-5)
    assert 0 <= out["acc"] <= 1


def test_generate_shapes_and_determinism():
    torch.manual_seed(0)
    model = PILLM(config_for("tiny", vocab_size=30, block_size=8))
    ids = torch.zeros(2, 3, dtype=torch.long)
    a = generate(model, ids, 12, top_k=5, generator=torch.Generator().manual_seed(1))
    b = generate(model, ids, 12, top_k=5, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 15) and torch.equal(a, b)


def test_score_without_accuracy_gives_the_same_loss():
    from pillm.evaluate import score

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g) * 4
    y = torch.randint(0, 11, (3, 5), generator=g)
    y[0, :2] = IGNORE_INDEX
    full, lean = score([(logits, y)]), score([(logits, y)], accuracy=False)
    assert lean["loss"] == pytest.approx(full["loss"], rel=1e-6) and lean["tokens"] == full["tokens"] == 13
    assert lean["acc"] is None
