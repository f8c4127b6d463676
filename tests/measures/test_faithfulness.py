"""Tests of segment-level faithfulness (``segattr_utils.measures.faithfulness``).

The metric functions are checked on hand-made curves against areas computed by hand; the model side
against an independent loop written here: each masked sequence is built token by token, run through
the *full* model forward on ``input_ids`` (all logits), ``log_softmax`` over the vocabulary and the
answer ids gathered at the positions that predict them. Tiny randomly initialised Qwen2 models:
nothing is downloaded.
"""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from segattr_utils.measures.faithfulness import (
    Score,
    aopc,
    comprehensiveness,
    deletion_auc,
    deletion_curve,
    faithfulness_summary,
    insertion_auc,
    insertion_curve,
    length_order,
    random_order,
    removal_curve_fractions,
    segment_order,
    segments_within_budget,
    sufficiency,
)

VOCAB = 64
BASELINE = 3
# prompt 0..5, five segments 5..27 (lengths 4, 3, 6, 2, 7), suffix 27..29, answer 29..32, tail 32..34
SEGMENTS = [(5, 9), (9, 12), (12, 18), (18, 20), (20, 27)]
ANSWER = (29, 32)
LENGTH = 34


def tiny_qwen2(seed: int = 0, vocab: int = VOCAB, layers: int = 2) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.1,
        pad_token_id=None,
    )
    return Qwen2ForCausalLM(config).float().eval()


@pytest.fixture(scope="module")
def qwen():
    return tiny_qwen2()


@pytest.fixture(scope="module")
def ids():
    g = torch.Generator().manual_seed(7)
    out = torch.randint(4, VOCAB, (LENGTH,), generator=g)
    assert not (out == BASELINE).any()
    return out


# --------------------------------------------------------------------------- independent reference


def manual_f(model, ids: torch.Tensor, span: tuple[int, int]) -> float:
    """F from a plain forward: full logits, log-softmax, answer ids gathered at t - 1."""
    start, end = span
    with torch.no_grad():
        logits = model(input_ids=ids.unsqueeze(0), use_cache=False).logits[0].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    return float(sum(log_probs[t - 1, ids[t]] for t in range(start, end)))


def masked(ids: torch.Tensor, spans, segments) -> torch.Tensor:
    out = ids.clone()
    for i in segments:
        for t in range(spans[i][0], spans[i][1]):
            out[t] = BASELINE
    return out


def manual_deletion(model, ids, span, spans, order) -> list[float]:
    return [manual_f(model, masked(ids, spans, order[:k]), span) for k in range(len(order) + 1)]


def manual_insertion(model, ids, span, spans, order) -> list[float]:
    return [manual_f(model, masked(ids, spans, order[k:]), span) for k in range(len(order) + 1)]


# --------------------------------------------------------------------------- fractions and areas


def test_removal_curve_fractions_by_hand():
    np.testing.assert_allclose(removal_curve_fractions([2, 3, 5], [2, 0, 1]), [0.0, 0.5, 0.7, 1.0])
    x = removal_curve_fractions([1, 1, 1], [0, 1, 2])
    assert x[0] == 0.0 and x[-1] == 1.0
    np.testing.assert_allclose(x, [0, 1 / 3, 2 / 3, 1])
    # a 0-token segment repeats a fraction
    np.testing.assert_allclose(removal_curve_fractions([0, 4], [0, 1]), [0.0, 0.0, 1.0])


@pytest.mark.parametrize(
    "lengths, order, match",
    [
        ([], [], "non-empty"),
        ([2, -1], [0, 1], "non-negative"),
        ([0, 0], [0, 1], "0 tokens"),
        ([1.5, 2], [0, 1], "whole token counts"),
        ([2, 3], [0, 0], "permutation"),
        ([2, 3], [0], "permutation"),
        ([2, 3], [0, 1, 2], "permutation"),
    ],
)
def test_removal_curve_fractions_validation(lengths, order, match):
    with pytest.raises(ValueError, match=match):
        removal_curve_fractions(lengths, order)


def test_deletion_auc_by_hand():
    fractions = [0.0, 0.5, 0.7, 1.0]
    # d = (F0 - Fk) / (F0 - Fn) = [0, .5, .75, 1]; areas .5*.25 + .2*.625 + .3*.875
    score = deletion_auc(fractions, [-1.0, -3.0, -4.0, -5.0])
    assert isinstance(score, Score) and score.note == ""
    assert score.value == pytest.approx(0.125 + 0.125 + 0.2625)
    # F falls all the way at the first step: d = [0, 1, 1, 1]
    assert deletion_auc(fractions, [0.0, -1.0, -1.0, -1.0]).value == pytest.approx(0.25 + 0.2 + 0.3)
    # F falls only at the last step: d = [0, 0, 0, 1]
    assert deletion_auc(fractions, [0.0, 0.0, 0.0, -1.0]).value == pytest.approx(0.15)
    # linear in the tokens removed: 0.5 whatever the scale of F
    assert deletion_auc([0, 0.25, 1], [10.0, 7.5, 0.0]).value == pytest.approx(0.5)
    assert deletion_auc([0, 0.25, 1], [-1.0, -1.25, -2.0]).value == pytest.approx(0.5)


def test_deletion_auc_when_removal_raises_f():
    # F_n > F_0: d = (F0 - Fk)/(F0 - Fn) = [0, 1, 1] -> area .5*.5 + .5*1
    assert deletion_auc([0, 0.5, 1], [-4.0, -2.0, -2.0]).value == pytest.approx(0.75)


def test_non_monotone_curve_can_leave_the_unit_interval():
    # d = [0, 2, 1]: area .5*1 + .5*1.5
    assert deletion_auc([0, 0.5, 1], [0.0, -2.0, -1.0]).value == pytest.approx(1.25)


def test_insertion_auc_by_hand():
    fractions = [0.0, 0.5, 0.7, 1.0]
    # r = (Gk - G0) / (Gn - G0) = [0, .75, .875, 1]
    score = insertion_auc(fractions, [-5.0, -2.0, -1.5, -1.0])
    assert score.value == pytest.approx(0.5 * 0.375 + 0.2 * 0.8125 + 0.3 * 0.9375)
    assert score.note == ""


@pytest.mark.parametrize("area", [deletion_auc, insertion_auc])
def test_degenerate_curve_is_none_with_a_note(area):
    score = area([0, 0.5, 1], [-2.0, -1.0, -2.0])
    assert score.value is None
    assert "undefined" in score.note
    assert area([0, 1], [1.0, 1.0 + 1e-9], min_gap=1e-6).value is None
    assert area([0, 1], [1.0, 2.0], min_gap=1e-6).value == pytest.approx(0.5)


@pytest.mark.parametrize(
    "fractions, values, match",
    [
        ([0, 1], [1.0, 2.0, 3.0], "points"),
        ([0, 0.6, 0.5, 1], [4.0, 3.0, 2.0, 1.0], "non-decreasing"),
        ([0.1, 1], [2.0, 1.0], "start at 0"),
        ([0, 0.9], [2.0, 1.0], "end at 1"),
        ([0, 1], [2.0, float("nan")], "NaN"),
        ([0], [2.0], "at least 2"),
    ],
)
@pytest.mark.parametrize("area", [deletion_auc, insertion_auc])
def test_area_validation(area, fractions, values, match):
    with pytest.raises(ValueError, match=match):
        area(fractions, values)


def test_comprehensiveness_and_sufficiency():
    assert comprehensiveness(-1.0, -3.5) == pytest.approx(2.5)
    assert sufficiency(-1.0, -1.25) == pytest.approx(0.25)
    assert sufficiency(-1.0, -0.5) == pytest.approx(-0.5)


def test_segments_within_budget_by_hand():
    lengths, order = [4, 1, 3, 2], [0, 2, 1, 3]  # 10 tokens
    assert segments_within_budget(lengths, order, 0.1) == [0]  # 4 > 1, but at least one segment
    assert segments_within_budget(lengths, order, 0.5) == [0]  # 4 <= 5 < 7; segment 1 would fit but a prefix stops
    assert segments_within_budget(lengths, order, 0.7) == [0, 2]  # 7 <= 7: equality is included
    assert segments_within_budget(lengths, order, 0.8) == [0, 2, 1]
    assert segments_within_budget(lengths, order, 1.0) == [0, 2, 1, 3]
    # 0.29 * 100 is 28.999999999999996: the boundary segment still counts as within the budget
    assert segments_within_budget([10, 19, 71], [0, 1, 2], 0.29) == [0, 1]
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="share"):
            segments_within_budget(lengths, order, bad)


def test_aopc_by_hand():
    curve = [-1.0, -3.0, -4.0, -5.0]  # drops 2, 3, 4
    assert aopc(curve) == pytest.approx(3.0)
    assert aopc(curve, 2) == pytest.approx(2.5)
    assert aopc(curve, 1) == pytest.approx(2.0)
    for bad in (0, 4, 1.5, True):
        with pytest.raises(ValueError, match="k must be"):
            aopc(curve, bad)


# --------------------------------------------------------------------------- orders


def test_segment_order_ties_by_index():
    scores = [0.5, 0.9, 0.5, 0.1, 0.9]
    assert segment_order(scores) == [1, 4, 0, 2, 3]
    assert segment_order(scores, descending=False) == [3, 0, 2, 1, 4]
    with pytest.raises(ValueError, match="NaN"):
        segment_order([0.1, float("nan")])
    with pytest.raises(ValueError, match="non-empty"):
        segment_order([])


def test_length_order_longest_first_ties_by_index():
    assert length_order([3, 5, 3, 1]) == [1, 0, 2, 3]
    assert length_order([3, 5, 3, 1], descending=False) == [3, 0, 2, 1]


def test_random_order_is_a_seeded_permutation():
    a = random_order(20, seed=1)
    assert sorted(a) == list(range(20)) and all(isinstance(i, int) for i in a)
    assert random_order(20, seed=1) == a
    assert random_order(20, seed=2) != a
    with pytest.raises(ValueError):
        random_order(0, seed=1)


# --------------------------------------------------------------------------- curves on a tiny model


ORDER = [2, 0, 4, 1, 3]


def test_deletion_curve_matches_manual_loop(qwen, ids):
    curve = deletion_curve(qwen, ids, ANSWER, SEGMENTS, ORDER, BASELINE, batch_size=4)
    expected = manual_deletion(qwen, ids, ANSWER, SEGMENTS, ORDER)
    assert curve.dtype == np.float64 and curve.shape == (len(SEGMENTS) + 1,)
    np.testing.assert_allclose(curve, expected, atol=1e-5, rtol=0)
    assert curve[0] == pytest.approx(manual_f(qwen, ids, ANSWER), abs=1e-5)  # k = 0: the real sequence
    assert curve[-1] == pytest.approx(manual_f(qwen, masked(ids, SEGMENTS, range(5)), ANSWER), abs=1e-5)
    assert np.ptp(curve) > 1e-3  # masking moves F: the comparison is not vacuous


def test_insertion_curve_matches_manual_loop_and_reverses_endpoints(qwen, ids):
    curve = insertion_curve(qwen, ids, ANSWER, SEGMENTS, ORDER, BASELINE, batch_size=4)
    np.testing.assert_allclose(curve, manual_insertion(qwen, ids, ANSWER, SEGMENTS, ORDER), atol=1e-5, rtol=0)
    deletion = deletion_curve(qwen, ids, ANSWER, SEGMENTS, ORDER, BASELINE)
    assert curve[0] == pytest.approx(deletion[-1], abs=1e-5)
    assert curve[-1] == pytest.approx(deletion[0], abs=1e-5)


def test_batch_size_list_input_and_model_state(ids):
    model = tiny_qwen2(seed=1, layers=1).train()
    flags = [p.requires_grad for p in model.parameters()]
    one = deletion_curve(model, ids, ANSWER, SEGMENTS, ORDER, BASELINE, batch_size=1)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    many = deletion_curve(
        model, ids.tolist(), list(ANSWER), [list(s) for s in SEGMENTS], ORDER, BASELINE, batch_size=16
    )
    np.testing.assert_allclose(one, many, atol=1e-5, rtol=0)
    np.testing.assert_allclose(one, manual_deletion(model.eval(), ids, ANSWER, SEGMENTS, ORDER), atol=1e-5, rtol=0)


def test_prompt_and_suffix_are_never_replaced(qwen, ids):
    # one segment of one prompt-adjacent token: the all-masked sequence differs from the real one there only
    spans = [(5, 6)]
    curve = deletion_curve(qwen, ids, ANSWER, spans, [0], BASELINE)
    expected = ids.clone()
    expected[5] = BASELINE
    assert curve[1] == pytest.approx(manual_f(qwen, expected, ANSWER), abs=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"answer_span": (0, 3)}, "answer_span"),
        ({"answer_span": (29, 40)}, "answer_span"),
        ({"answer_span": (30, 30)}, "answer_span"),
        ({"segment_spans": [(5, 9), (9, 40)], "order": [0, 1]}, "outside the sequence"),
        ({"segment_spans": [(-1, 9)], "order": [0]}, "outside the sequence"),
        ({"segment_spans": [(5, 9), (8, 12)], "order": [0, 1]}, "overlap"),
        ({"segment_spans": [(5, 9), (27, 30)], "order": [0, 1]}, "overlaps the answer span"),
        ({"segment_spans": [], "order": []}, "no segments"),
        ({"segment_spans": [(5, 5)], "order": [0]}, "empty"),
        ({"order": [0, 1, 2, 3]}, "permutation"),
        ({"order": [0, 1, 2, 3, 3]}, "permutation"),
        ({"order": [0, 1, 2, 3, 5]}, "permutation"),
        ({"order": [0.0, 1, 2, 3, 4]}, "indices"),
        ({"baseline_token_id": VOCAB}, "baseline_token_id"),
        ({"baseline_token_id": -1}, "baseline_token_id"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
@pytest.mark.parametrize("curve", [deletion_curve, insertion_curve])
def test_invalid_inputs_raise(qwen, ids, curve, kwargs, match):
    args = {
        "answer_span": ANSWER,
        "segment_spans": SEGMENTS,
        "order": ORDER,
        "baseline_token_id": BASELINE,
        "batch_size": 8,
    }
    args.update(kwargs)
    batch_size = args.pop("batch_size")
    with pytest.raises(ValueError, match=match):
        curve(qwen, ids, *args.values(), batch_size=batch_size)


def test_two_dimensional_input_raises(qwen, ids):
    with pytest.raises(ValueError, match="1-D"):
        deletion_curve(qwen, ids.unsqueeze(0), ANSWER, SEGMENTS, ORDER, BASELINE)


# --------------------------------------------------------------------------- summary


def test_faithfulness_summary_against_manual_computation(qwen, ids):
    sequence = SimpleNamespace(input_ids=ids, answer_span=ANSWER, segment_spans=SEGMENTS)
    strength = [0.1, 0.3, 0.9, 0.05, 0.2]  # order [2, 1, 4, 0, 3]
    frame = faithfulness_summary(qwen, sequence, {"strength": strength}, baseline_token_id=BASELINE, seed=3)
    assert list(frame["method"]) == ["strength", "random", "length"]
    assert list(frame.columns) == [
        "method",
        "deletion_auc",
        "insertion_auc",
        "comprehensiveness_10",
        "sufficiency_10",
        "comprehensiveness_20",
        "sufficiency_20",
        "comprehensiveness_50",
        "sufficiency_50",
        "aopc",
        "note",
    ]
    row = frame.iloc[0]
    order = [2, 1, 4, 0, 3]  # lengths 6, 3, 7, 4, 2 of 22 tokens
    f = manual_deletion(qwen, ids, ANSWER, SEGMENTS, order)
    g = manual_insertion(qwen, ids, ANSWER, SEGMENTS, order)
    x = [0, 6 / 22, 9 / 22, 16 / 22, 20 / 22, 1]
    d = [(f[0] - v) / (f[0] - f[-1]) for v in f]
    r = [(v - g[0]) / (g[-1] - g[0]) for v in g]
    area = lambda y: sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(5))  # noqa: E731
    assert row["deletion_auc"] == pytest.approx(area(d), abs=1e-4)
    assert row["insertion_auc"] == pytest.approx(area(r), abs=1e-4)
    # budgets of 22 tokens: 10% -> 2.2 (segment 2 alone, at least one), 20% -> 4.4 (segment 2 alone), 50% -> 11 (2, 1)
    full = manual_f(qwen, ids, ANSWER)
    for budget, kept in (("10", [2]), ("20", [2]), ("50", [2, 1])):
        removed = manual_f(qwen, masked(ids, SEGMENTS, kept), ANSWER)
        only = manual_f(qwen, masked(ids, SEGMENTS, [i for i in range(5) if i not in kept]), ANSWER)
        assert row[f"comprehensiveness_{budget}"] == pytest.approx(full - removed, abs=1e-5)
        assert row[f"sufficiency_{budget}"] == pytest.approx(full - only, abs=1e-5)
    assert row["aopc"] == pytest.approx(np.mean([f[0] - v for v in f[1:]]), abs=1e-5)
    assert row["note"] == ""
    assert frame["deletion_auc"].dtype == np.float64
    # the length baseline: longest first
    length_row = frame.iloc[2]
    lf = manual_deletion(qwen, ids, ANSWER, SEGMENTS, [4, 2, 0, 1, 3])
    assert length_row["aopc"] == pytest.approx(np.mean([lf[0] - v for v in lf[1:]]), abs=1e-5)
    # seeded random baseline
    again = faithfulness_summary(qwen, sequence, {"strength": strength}, baseline_token_id=BASELINE, seed=3)
    assert again.iloc[1]["aopc"] == pytest.approx(frame.iloc[1]["aopc"], abs=1e-9)


def test_faithfulness_summary_degenerate_trace_gives_none_not_nan(qwen, ids):
    # the segments already consist of the baseline token: replacing them changes nothing, F_0 == F_n
    flat = masked(ids, SEGMENTS, range(len(SEGMENTS)))
    sequence = SimpleNamespace(input_ids=flat, answer_span=ANSWER, segment_spans=SEGMENTS)
    frame = faithfulness_summary(qwen, sequence, {"s": [1, 2, 3, 4, 5]}, baseline_token_id=BASELINE, min_gap=1e-6)
    for column in ("deletion_auc", "insertion_auc"):
        assert all(v is None for v in frame[column])
    assert all("undefined" in note for note in frame["note"])
    assert not frame[["comprehensiveness_10", "sufficiency_50", "aopc"]].isna().any().any()
    assert (frame["aopc"] == 0).all()


def test_faithfulness_summary_validation(qwen, ids):
    sequence = SimpleNamespace(input_ids=ids, answer_span=ANSWER, segment_spans=SEGMENTS)
    with pytest.raises(ValueError, match="reserved"):
        faithfulness_summary(qwen, sequence, {"random": [1, 2, 3, 4, 5]}, baseline_token_id=BASELINE)
    with pytest.raises(ValueError, match="4 scores for 5 segments"):
        faithfulness_summary(qwen, sequence, {"m": [1, 2, 3, 4]}, baseline_token_id=BASELINE)


def test_faithfulness_summary_on_a_tokenised_trace():
    from segattr_utils.method.token_spans import build_attribution_sequence
    from segattr_utils.world.tokenizer import build_bpe_tokenizer

    segments = ["First add 2 and 3.", " Wait, that is 5.", " So the sum is 5."]
    tokenizer = build_bpe_tokenizer(["Question: what is 2 + 3? " + "".join(segments)], vocab_size=300)
    sequence = build_attribution_sequence(tokenizer, "Question: what is 2 + 3? ", segments, "5")
    model = tiny_qwen2(seed=2, vocab=len(tokenizer), layers=1)
    frame = faithfulness_summary(
        model, sequence, {"a": [0.2, 0.5, 0.3]}, baseline_token_id=tokenizer.pad_token_id, budgets=(0.25,)
    )
    assert isinstance(frame, pd.DataFrame) and len(frame) == 3
    assert {"comprehensiveness_25", "sufficiency_25"} <= set(frame.columns)
    values = frame.drop(columns=["method", "note"]).to_numpy(dtype=float)
    assert np.all(np.isfinite(values)) and not math.isnan(values.sum())
