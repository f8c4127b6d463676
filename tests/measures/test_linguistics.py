"""Tests for segattr_utils.measures.linguistics (Sec. 3.1 findings 2-3, Fig. 3; the removal perplexity of
Cui et al. for Table 3).

Per-token statistics are checked on hand-made logits; the model passes on a hand-built bigram
language model (p(next | current) = softmax(W[current])) whose NLLs are recomputed here token by
token from separately tokenised pieces; BLEU values follow sacrebleu's sentence BLEU formula by hand.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from segattr_utils.measures.linguistics import (
    output_perplexities,
    perplexity,
    removal_perplexity_increase,
    segment_bleu,
    segment_perplexity_entropy,
    span_means,
    summed_entropy,
    token_nll_and_entropy,
)
from segattr_utils.world.tokenizer import build_bpe_tokenizer

# ----------------------------------------------------------------------------------------------
# Per-token statistics from logits


def test_token_nll_and_entropy_hand_values():
    # Position 0 predicts token 1 with a uniform distribution over 4 tokens: NLL = entropy = ln 4.
    # Position 1 predicts token 2 with p = (0.1, 0.2, 0.3, 0.4); token 2 has id 3: NLL = -ln 0.4,
    # entropy = -sum p ln p. Position 2 has no next token.
    p = np.array([0.1, 0.2, 0.3, 0.4])
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], np.log(p).tolist(), [5.0, 0.0, 0.0, 0.0]])
    nll, entropy = token_nll_and_entropy(logits, torch.tensor([2, 0, 3]))
    assert nll.tolist() == pytest.approx([math.log(4), -math.log(0.4)])
    assert entropy.tolist() == pytest.approx([math.log(4), -float((p * np.log(p)).sum())])
    # chunking does not change the result
    nll_chunked, entropy_chunked = token_nll_and_entropy(logits, torch.tensor([2, 0, 3]), chunk=1)
    assert nll_chunked.tolist() == pytest.approx(nll.tolist()) and entropy_chunked.tolist() == pytest.approx(
        entropy.tolist()
    )
    with pytest.raises(ValueError):
        token_nll_and_entropy(logits[:1], torch.tensor([2]))


def test_span_means_and_perplexity():
    per_token = np.array([1.0, 2.0, 3.0, 6.0])  # tokens 1..4
    assert span_means(per_token, [(1, 3), (3, 5)]) == [1.5, 4.5]
    for bad in ([(2, 2)], [(0, 2)], [(3, 7)]):
        with pytest.raises(ValueError):
            span_means(per_token, bad)
    assert perplexity([math.log(2), math.log(8)]) == pytest.approx(4.0)  # exp(mean) = exp(ln 4)
    with pytest.raises(ValueError):
        perplexity([])


# ----------------------------------------------------------------------------------------------
# Model passes with a bigram language model


CORPUS = [
    "Question: start with 7 and add 5",
    "Okay so seven plus five is twelve",
    "Wait let me check the sum",
    "Alternatively count up from seven",
    "The final answer is twelve",
] * 4


@pytest.fixture(scope="module")
def tokenizer():
    return build_bpe_tokenizer(CORPUS, vocab_size=300)


class BigramLM(torch.nn.Module):
    """logits at position t = W[x_t]: a hand-built model whose probabilities are known exactly."""

    def __init__(self, vocab_size: int):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(vocab_size, vocab_size, generator=generator) * 2)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.weight[input_ids])


@pytest.fixture(scope="module")
def bigram(tokenizer):
    return BigramLM(len(tokenizer))


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _bigram_nll(model, previous: int, token: int) -> float:
    log_probs = torch.log_softmax(model.weight[previous].detach().double(), dim=-1)
    return float(-log_probs[token])


def _bigram_entropy(model, previous: int) -> float:
    log_probs = torch.log_softmax(model.weight[previous].detach().double(), dim=-1)
    return float(-(log_probs.exp() * log_probs).sum())


# Pieces end in a letter and the next starts with "\n\n" (its own pre-token), so tokenising the pieces
# separately gives the tokens of the whole text: the reference below needs no offsets.
PROMPT = "Question: start with 7 and add 5<think>"
SEGMENTS = [
    "Okay so seven plus five is twelve",
    "\n\nWait let me check the sum",
    "\n\nAlternatively count up from seven",
]


def test_segment_perplexity_entropy_matches_token_by_token_reference(bigram, tokenizer):
    pieces = [_ids(tokenizer, PROMPT)] + [_ids(tokenizer, s) for s in SEGMENTS]
    assert sum(pieces, []) == _ids(tokenizer, PROMPT + "".join(SEGMENTS))  # the premise of the reference
    table = segment_perplexity_entropy(bigram, tokenizer, PROMPT, SEGMENTS)
    previous = pieces[0][-1]
    for index, ids in enumerate(pieces[1:]):
        nll, entropy = [], []
        for token in ids:
            nll.append(_bigram_nll(bigram, previous, token))
            entropy.append(_bigram_entropy(bigram, previous))
            previous = token
        row = table.iloc[index]
        assert row["segment"] == index and row["n_tokens"] == len(ids)
        assert row["log_ppl"] == pytest.approx(np.mean(nll), rel=1e-9)
        assert row["entropy"] == pytest.approx(np.mean(entropy), rel=1e-9)


def _reference_perplexity(model, tokenizer, prompt, output):
    prompt_ids, output_ids = _ids(tokenizer, prompt), _ids(tokenizer, output)
    previous, nll = prompt_ids[-1], []
    for token in output_ids:
        nll.append(_bigram_nll(model, previous, token))
        previous = token
    return math.exp(np.mean(nll))


def test_output_perplexities_batched_with_padding(bigram, tokenizer):
    outputs = ["Okay so seven", "Okay so seven plus five is twelve", "The final answer is twelve"]
    expected = [_reference_perplexity(bigram, tokenizer, PROMPT, o) for o in outputs]
    for batch_size in (1, 2, 3):
        assert output_perplexities(bigram, tokenizer, PROMPT, outputs, batch_size) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError):
        output_perplexities(bigram, tokenizer, PROMPT, [""])


def test_removal_perplexity_increase_hand_reference(bigram, tokenizer):
    answer = "\n\nThe final answer is twelve"
    full = _reference_perplexity(bigram, tokenizer, PROMPT, "".join(SEGMENTS) + answer)
    expected = []
    for m in range(len(SEGMENTS)):
        rest = "".join(s for j, s in enumerate(SEGMENTS) if j != m) + answer
        expected.append(_reference_perplexity(bigram, tokenizer, PROMPT, rest) - full)
    assert removal_perplexity_increase(bigram, tokenizer, PROMPT, SEGMENTS, answer, batch_size=2) == pytest.approx(
        expected, rel=1e-9
    )
    # One segment: removing it leaves only the answer part, which is still scored.
    single = removal_perplexity_increase(bigram, tokenizer, PROMPT, SEGMENTS[:1], answer)
    assert single == pytest.approx(
        [
            _reference_perplexity(bigram, tokenizer, PROMPT, answer)
            - _reference_perplexity(bigram, tokenizer, PROMPT, SEGMENTS[0] + answer)
        ]
    )


# ----------------------------------------------------------------------------------------------
# BLEU against preceding segments


def test_bleu_identical_disjoint_and_first_segment():
    assert segment_bleu(["a b c d", "a b c d"]) == [0.0, pytest.approx(1.0)]
    assert segment_bleu(["a b c d", "e f g h"]) == [0.0, 0.0]  # no n-gram in common
    assert segment_bleu(["only one"]) == [0.0]
    assert segment_bleu([]) == []


def test_bleu_partial_overlap_hand_value():
    # hypothesis "a b x y" vs reference "a b c d" (equal lengths: brevity penalty 1):
    # 1-grams 2/4, 2-grams 1/3, 3-grams 0/2 and 4-grams 0/1 smoothed by the exponential method to
    # 1/(2*2) and 1/(4*1); BLEU = geometric mean.
    expected = (0.5 * (1 / 3) * 0.25 * 0.25) ** 0.25
    assert segment_bleu(["a b c d", "a b x y"])[1] == pytest.approx(expected, rel=1e-9)


def test_bleu_reference_modes():
    segments = ["a b c d", " e f g h", " a b c d"]
    # Each preceding segment a reference: the verbatim repetition of segment 0 scores 1.
    assert segment_bleu(segments, "segments")[2] == pytest.approx(1.0)
    # One concatenated reference of 8 words against a 4-word hypothesis: every n-gram matches but the
    # brevity penalty is exp(1 - 8/4) = e^-1.
    assert segment_bleu(segments, "concatenation")[2] == pytest.approx(math.exp(-1), rel=1e-9)
    with pytest.raises(ValueError):
        segment_bleu(segments, "mean")


def test_bleu_of_a_verbatim_repeat_is_at_most_one():
    # sacrebleu scores this repeat 100.00000000000004: divided by 100 it left [0, 1], which the tiny
    # run's notebook check (BLEU lies in [0, 1]) caught once checks could fail
    segments = [
        "Okay, let's see. I begin with 4 and apply the steps one by one.\n\nNow first add 2, so 4 + 2 = 6.",
        "\n\nWait, so first add 2, so 4 + 2 = 6.",
        "\n\nAlternatively, I can just continue with second subtract 2, so 6 - 2 = 4.",
        "\n\nWait, so first add 2, so 4 + 2 = 6.",
    ]
    scores = segment_bleu(segments)
    assert scores[3] == 1.0
    assert all(0.0 <= score <= 1.0 for score in scores)


def test_summed_entropy_is_mean_times_tokens():
    np.testing.assert_allclose(summed_entropy([0.5, 0.1, 2.0], [4, 30, 1]), [2.0, 3.0, 2.0])
    with pytest.raises(ValueError, match="one length"):
        summed_entropy([0.5, 0.1], [4])
    with pytest.raises(ValueError, match="NaN"):
        summed_entropy([0.5, float("nan")], [4, 2])
