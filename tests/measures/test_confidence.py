"""Tests for segattr_utils.measures.confidence (Sec. 3.1 finding 1, Sec. 3.2, Fig. 2 and 4) and
segattr_utils.measures.group_stats.

Expected values are computed by hand in the comments: confidences are fractions of graded answers,
Δ_k = c_k - c_{k-1}, groups follow Eq. 5-7, and the τ search picks the largest Δ gap.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from segattr_utils.llm.generation import HFGenerator, SamplingSettings
from segattr_utils.measures.confidence import (
    GROUPS,
    _filter_top_p,
    answer_confidence,
    beta_ablation,
    choose_threshold,
    confidence_deltas,
    delta_gap,
    forced_answer_prompt,
    group_summary,
    importance_shares,
    label_segments,
    sample_continuations,
    segment_groups,
    tau_search,
)
from segattr_utils.measures.group_stats import compare_groups, describe, format_p, readable
from segattr_utils.world.tokenizer import build_bpe_tokenizer

from ..fixtures.tiny_models import tiny_qwen2

LEAD_IN = "\n</think>\n\nThe final answer is \\boxed{"


# ----------------------------------------------------------------------------------------------
# Forced-answer confidence


def test_forced_answer_prompt_appends_k_segments_then_lead_in():
    segments = ["Okay, 2 + 1 = 3.", "\n\nWait, 3 * 2 = 6."]
    assert forced_answer_prompt("P|", segments, 0, LEAD_IN) == "P|" + LEAD_IN
    assert forced_answer_prompt("P|", segments, 1, LEAD_IN) == "P|Okay, 2 + 1 = 3." + LEAD_IN
    assert forced_answer_prompt("P|", segments, 2, LEAD_IN) == "P|Okay, 2 + 1 = 3.\n\nWait, 3 * 2 = 6." + LEAD_IN
    with pytest.raises(ValueError):
        forced_answer_prompt("P|", segments, 3, LEAD_IN)
    with pytest.raises(ValueError):
        forced_answer_prompt("P|", segments, 1, "")


def test_answer_confidence_is_the_fraction_of_correct_boxed_answers():
    # "6}." closes the box with 6 (correct); "5}." is wrong; "6" never closes the box (wrong);
    # "6}" is correct; "06}" is numerically 6 (math-verify: correct). 3 of 5 correct.
    assert answer_confidence(["6}.", "5}.", "6", "6}", "06}"], "6", LEAD_IN) == pytest.approx(3 / 5)
    assert answer_confidence(["7}"], "6", LEAD_IN) == 0.0
    with pytest.raises(ValueError):
        answer_confidence([], "6", LEAD_IN)


def test_confidence_deltas_hand_values():
    table = confidence_deltas([0.0, 0.25, 0.25, 1.0])
    assert table["segment"].tolist() == [0, 1, 2]
    assert table["confidence_before"].tolist() == [0.0, 0.25, 0.25]
    assert table["confidence_after"].tolist() == [0.25, 0.25, 1.0]
    assert table["delta"].tolist() == pytest.approx([0.25, 0.0, 0.75])
    for bad in ([0.5], [0.1, 1.2], [0.1, float("nan")], [-0.1, 0.2]):
        with pytest.raises(ValueError):
            confidence_deltas(bad)


# ----------------------------------------------------------------------------------------------
# Shared-prefix sampling


CORPUS = [
    "Start with 7, then add 5. What is the result?",
    "Okay, so 7 + 5 = 12. Then 12 * 3 = 36.",
    "\n\nWait, let me check 7 + 5 = 12 again.",
    "The final answer is \\boxed{36}.",
] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return build_bpe_tokenizer(CORPUS, vocab_size=300)


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_qwen2(tokenizer=tokenizer, initializer_range=0.2).eval()


PROMPTS = ["Start with 7.", "Okay, so 7 + 5 = 12. Then 12 * 3 = 36.\n\nWait, let me check", "Then"]


def test_greedy_shared_prefix_sampling_matches_model_generate(model, tokenizer):
    # Left padding, the shared cache and the position ids must reproduce HF's greedy decoding exactly.
    settings = SamplingSettings(temperature=0.0, max_new_tokens=6)
    ours = sample_continuations(model, tokenizer, PROMPTS, 3, settings, seed=0)
    reference = HFGenerator(model, tokenizer).generate(PROMPTS, settings, seed=0)
    assert [len(samples) for samples in ours] == [3, 3, 3]
    for samples, ref in zip(ours, reference):
        assert samples == [ref["text"]] * 3


def test_sampling_is_seeded_and_follows_the_model_distribution(model, tokenizer):
    settings = SamplingSettings(temperature=1.0, top_p=1.0, max_new_tokens=1)
    a = sample_continuations(model, tokenizer, PROMPTS[:1], 8, settings, seed=3)
    b = sample_continuations(model, tokenizer, PROMPTS[:1], 8, settings, seed=3)
    assert a == b
    # The frequency of the most likely first token over 3000 samples matches its model probability
    # (5 binomial standard errors of tolerance).
    ids = tokenizer(PROMPTS[0], add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids).logits[0, -1].double(), dim=-1)
    top = int(probs.argmax())
    n = 3000
    samples = sample_continuations(model, tokenizer, PROMPTS[:1], n, settings, seed=1)[0]
    # Several tokens (special tokens, EOS) decode to the same text: sum their probabilities.
    expected_text = tokenizer.decode([top], skip_special_tokens=True)
    p = sum(
        float(probs[v]) for v in range(len(probs)) if tokenizer.decode([v], skip_special_tokens=True) == expected_text
    )
    frequency = sum(s == expected_text for s in samples) / n
    assert abs(frequency - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_top_p_filter_hand_values():
    probs = torch.tensor([[0.5, 0.3, 0.2]])
    # top_p 0.7: 0.5 alone does not reach 0.7, 0.5 + 0.3 does -> keep {0.5, 0.3}, renormalised.
    assert _filter_top_p(probs, 0.7)[0].tolist() == pytest.approx([0.625, 0.375, 0.0])
    # top_p 0.5: the first token already reaches it.
    assert _filter_top_p(probs, 0.5)[0].tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert torch.equal(_filter_top_p(probs, 1.0), probs)


# ----------------------------------------------------------------------------------------------
# Groups (Eq. 5-7 at the analysis thresholds)


def test_segment_groups_hand_example():
    # Strength ranks 0.5, 0.3 | 0.1, 0.1; cumulative 0.5, 0.8 reaches tau = 0.8 at k* = 2.
    # beta = 0.95: consistencies 0.5 and 0.2 are moderate, 0.99 and 0.97 are high.
    groups = segment_groups([0.5, 0.3, 0.1, 0.1], [0.5, 0.99, 0.2, 0.97], tau=0.8, beta=0.95)
    assert groups["high_strength"].tolist() == [True, True, False, False]
    assert groups["moderate_consistency"].tolist() == [True, False, True, False]
    assert groups["important"].tolist() == [True, False, False, False]
    assert groups["group"].tolist() == list(GROUPS)
    with pytest.raises(ValueError):
        segment_groups([0.5, 0.5], [0.1], 0.8, 0.95)


def _hand_table():
    # One trace: strengths 0.4 > 0.3 > 0.2 > 0.1, every consistency moderate, Δ = 0.5, 0.3, -0.1, 0.0.
    return pd.DataFrame(
        {
            "trace_id": "t",
            "segment": [0, 1, 2, 3],
            "norm_strength": [0.4, 0.3, 0.2, 0.1],
            "consistency": [0.5] * 4,
            "delta": [0.5, 0.3, -0.1, 0.0],
            "n_tokens": [10, 10, 10, 10],
        }
    )


def test_group_summary_and_gap_hand_values():
    labelled = label_segments(_hand_table(), tau=0.7, beta=0.95)  # k* = 2: segments 0 and 1
    assert labelled["important"].tolist() == [True, True, False, False]
    summary = group_summary(labelled).set_index("group")
    assert summary.loc["important", "mean"] == pytest.approx(0.4)
    assert summary.loc["unimportant", "mean"] == pytest.approx(-0.05)
    assert summary.loc["important", "n"] == 2 and summary.loc["high strength, high consistency", "n"] == 0
    assert summary.loc["high strength, high consistency", "note"] == "no segments in this group"
    gap = delta_gap(labelled)
    assert gap["gap"] == pytest.approx(0.45)
    # one trace: one within-trace difference (0.45), too few for a signed-rank test, said in the note
    assert gap["n_traces"] == 1 and gap["trace_difference"] == pytest.approx(0.45)
    assert gap["trace_p"] is None and gap["trace_note"]


def test_tau_search_picks_the_largest_gap():
    # tau 0.4: important {0}: 0.5 vs mean(0.3, -0.1, 0) = 0.0667 -> gap 0.4333
    # tau 0.7: important {0, 1}: 0.4 vs mean(-0.1, 0) = -0.05  -> gap 0.45   (largest)
    # tau 0.9: important {0, 1, 2}: 0.2333 vs 0.0            -> gap 0.2333
    # tau 1.0: everything important: no unimportant segment -> not admissible
    search = tau_search(_hand_table(), [0.4, 0.7, 0.9, 1.0], beta=0.95)
    assert search["gap"].iloc[:3].tolist() == pytest.approx([0.5 - 0.2 / 3, 0.45, 0.7 / 3])
    assert search["n_unimportant"].tolist() == [3, 2, 1, 0]
    assert search["gap"].iloc[3] is None or pd.isna(search["gap"].iloc[3])
    assert search["selected"].tolist() == [False, True, False, False]
    assert choose_threshold(search) == 0.7


def test_choose_threshold_ties_and_inadmissible():
    tied = pd.DataFrame(
        {
            "tau": [0.5, 0.6, 0.7],
            "gap": [0.2, 0.2, 0.1],
            "n_important": [1, 1, 1],
            "n_unimportant": [1, 1, 1],
            "delta_unimportant": [0.1, -0.2, 0.0],
        }
    )
    assert choose_threshold(tied) == 0.6  # equal gaps: the lower unimportant Δ wins
    tied["delta_unimportant"] = [0.0, 0.0, 0.0]
    assert choose_threshold(tied) == 0.5  # then the smaller threshold
    inverted = tied.assign(gap=[-0.1, -0.2, 0.0])
    assert choose_threshold(inverted) is None  # no grid value where important segments gain more


def test_beta_ablation_hand_values():
    # tau = 1: both segments are high strength. beta 0.6: none important; 0.8: {0} (0.4 vs 0.1, gap 0.3);
    # 0.95: both important. Only beta = 0.8 is admissible.
    table = pd.DataFrame(
        {
            "trace_id": "t",
            "segment": [0, 1],
            "norm_strength": [0.5, 0.5],
            "consistency": [0.7, 0.9],
            "delta": [0.4, 0.1],
            "n_tokens": [3, 3],
        }
    )
    ablation = beta_ablation(table, 1.0, [0.6, 0.8, 0.95])
    assert ablation["n_important"].tolist() == [0, 1, 2]
    assert ablation["gap"].iloc[1] == pytest.approx(0.3)
    assert choose_threshold(ablation, "beta") == 0.8
    assert ablation["selected"].tolist() == [False, True, False]


def test_importance_shares_average_over_traces():
    # Trace a: tokens 10/20/30, only the first important -> 1/3 of segments, 10/60 of tokens.
    # Trace b: both important -> 1 and 1. Means: (1/3 + 1) / 2 = 2/3 and (1/6 + 1) / 2 = 7/12.
    table = pd.DataFrame(
        {
            "trace_id": ["a", "a", "a", "b", "b"],
            "n_tokens": [10, 20, 30, 5, 5],
            "important": [True, False, False, True, True],
        }
    )
    shares = importance_shares(table)
    assert shares["traces"] == 2
    assert shares["segment_share"] == pytest.approx(2 / 3)
    assert shares["token_share"] == pytest.approx(7 / 12)
    assert importance_shares(table.iloc[:0])["segment_share"] is None


# ----------------------------------------------------------------------------------------------
# group_stats


def test_compare_groups_mann_whitney_hand_value():
    # a = 1, 2, 3 vs b = 4, 5: U_a = 0; mean U = 3, sd = sqrt(3 * 2 * 6 / 12) = sqrt(3);
    # continuity-corrected z = (0 - 3 + 0.5) / sqrt(3); p = erfc(|z| / sqrt(2)).
    stats = compare_groups([1, 2, 3], [4, 5])
    assert stats["u"] == 0.0
    z = (0 - 3 + 0.5) / math.sqrt(3)
    assert stats["p_value"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-9)
    assert stats["mean_a"] == 2.0 and stats["mean_b"] == 4.5 and stats["difference"] == -2.5


def test_compare_groups_empty_and_constant():
    empty = compare_groups([], [1.0, 2.0], "important", "unimportant")
    assert empty["p_value"] is None and empty["mean_a"] is None and "no important" in empty["note"]
    constant = compare_groups([1.0, 1.0], [1.0])
    assert constant["difference"] == 0.0 and constant["p_value"] is None and "identical" in constant["note"]
    with pytest.raises(ValueError):
        compare_groups([float("nan")], [1.0])


def test_describe_format_and_readable():
    assert describe([1.0, 3.0]) == {
        "n": 2,
        "mean": 2.0,
        "sem": pytest.approx(math.sqrt(2) / math.sqrt(2)),
        "median": 2.0,
    }
    assert describe([])["mean"] is None
    assert format_p(None) == "n/a" and format_p(1e-12) == "p < 1e-10" and format_p(0.0123) == "p = 0.012"
    shown = readable(pd.DataFrame({"x": [0.12345, np.nan], "y": ["a", None]}))
    assert shown["x"].tolist() == [0.123, "n/a"] and shown["y"].tolist() == ["a", "n/a"]
