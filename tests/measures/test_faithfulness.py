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
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from segattr_utils.measures.faithfulness import (
    DEFAULT_MIN_GAP,
    Curves,
    Score,
    aopc,
    comprehensiveness,
    curve_metrics,
    deletion_area,
    deletion_curve,
    faithfulness_summary,
    insertion_area,
    insertion_curve,
    length_order,
    metric_frame,
    normalised_deletion_auc,
    normalised_insertion_auc,
    oracle_order,
    ordering_curves,
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


def test_deletion_area_in_nats_by_hand():
    fractions = [0.0, 0.5, 0.7, 1.0]
    # drops F0 - Fk = [0, 2, 3, 4]; areas .5*(0+2)/2 + .2*(2+3)/2 + .3*(3+4)/2 = .5 + .5 + 1.05
    assert deletion_area(fractions, [-1.0, -3.0, -4.0, -5.0]) == pytest.approx(2.05)
    # F falls all the way at the first step: drops [0, 1, 1, 1] -> .25 + .2 + .3
    assert deletion_area(fractions, [0.0, -1.0, -1.0, -1.0]) == pytest.approx(0.75)
    # F only falls at the last step: drops [0, 0, 0, 1] -> .3 / 2
    assert deletion_area(fractions, [0.0, 0.0, 0.0, -1.0]) == pytest.approx(0.15)
    # linear in the tokens removed: half the total drop, in nats (scale kept, unlike the normalised area)
    assert deletion_area([0, 0.25, 1], [10.0, 7.5, 0.0]) == pytest.approx(5.0)
    assert deletion_area([0, 0.25, 1], [-1.0, -1.25, -2.0]) == pytest.approx(0.5)
    # removing segments raises F: a negative area (the ranking removes what the answer does not need)
    assert deletion_area([0, 0.5, 1], [-4.0, -2.0, -2.0]) == pytest.approx(-(0.5 + 1.0))


def test_insertion_area_in_nats_by_hand():
    fractions = [0.0, 0.5, 0.7, 1.0]
    # gains Gk - G0 = [0, 3, 3.5, 4]; areas .5*1.5 + .2*3.25 + .3*3.75
    assert insertion_area(fractions, [-5.0, -2.0, -1.5, -1.0]) == pytest.approx(0.75 + 0.65 + 1.125)
    assert insertion_area([0, 1], [-3.0, -1.0]) == pytest.approx(1.0)


def test_areas_stay_bounded_where_the_normalised_ones_blow_up():
    # F_0 ~ F_n (the answer hardly depends on the segments) but the curve wobbles by 0.3 nats on the way
    fractions, curve = [0.0, 0.5, 1.0], [-1.0, -1.3, -1.01]
    assert deletion_area(fractions, curve) == pytest.approx(0.5 * 0.15 + 0.5 * (0.3 + 0.01) / 2)
    unbounded = normalised_deletion_auc(fractions, curve, min_gap=0.0).value
    assert unbounded == pytest.approx(deletion_area(fractions, curve) / 0.01) and unbounded > 15
    guarded = normalised_deletion_auc(fractions, curve)  # the default gap of 1 nat
    assert guarded.value is None and "1 nats" in guarded.note
    assert DEFAULT_MIN_GAP == 1.0


def test_normalised_deletion_auc_by_hand():
    fractions = [0.0, 0.5, 0.7, 1.0]
    # d = (F0 - Fk) / (F0 - Fn) = [0, .5, .75, 1]; areas .5*.25 + .2*.625 + .3*.875
    score = normalised_deletion_auc(fractions, [-1.0, -3.0, -4.0, -5.0])
    assert isinstance(score, Score) and score.note == ""
    assert score.value == pytest.approx(0.125 + 0.125 + 0.2625)
    # equal to the nats area divided by the total drop
    assert score.value == pytest.approx(deletion_area(fractions, [-1.0, -3.0, -4.0, -5.0]) / 4.0)
    # F falls all the way at the first step: d = [0, 1, 1, 1]
    assert normalised_deletion_auc(fractions, [0.0, -2.0, -2.0, -2.0]).value == pytest.approx(0.25 + 0.2 + 0.3)
    # F falls only at the last step: d = [0, 0, 0, 1]
    assert normalised_deletion_auc(fractions, [0.0, 0.0, 0.0, -2.0]).value == pytest.approx(0.15)
    # linear in the tokens removed: 0.5 whatever the scale of F
    assert normalised_deletion_auc([0, 0.25, 1], [10.0, 7.5, 0.0]).value == pytest.approx(0.5)
    assert normalised_deletion_auc([0, 0.25, 1], [-1.0, -1.25, -2.0], min_gap=0.5).value == pytest.approx(0.5)


def test_normalised_deletion_auc_when_removal_raises_f():
    # F_n > F_0: d = (F0 - Fk)/(F0 - Fn) = [0, 1, 1] -> area .5*.5 + .5*1
    assert normalised_deletion_auc([0, 0.5, 1], [-4.0, -2.0, -2.0]).value == pytest.approx(0.75)


def test_non_monotone_curve_can_leave_the_unit_interval():
    # d = [0, 2, 1]: area .5*1 + .5*1.5
    assert normalised_deletion_auc([0, 0.5, 1], [0.0, -4.0, -2.0]).value == pytest.approx(1.25)


def test_normalised_insertion_auc_by_hand():
    fractions = [0.0, 0.5, 0.7, 1.0]
    # r = (Gk - G0) / (Gn - G0) = [0, .75, .875, 1]
    score = normalised_insertion_auc(fractions, [-5.0, -2.0, -1.5, -1.0])
    assert score.value == pytest.approx(0.5 * 0.375 + 0.2 * 0.8125 + 0.3 * 0.9375)
    assert score.note == ""


@pytest.mark.parametrize("area", [normalised_deletion_auc, normalised_insertion_auc])
def test_degenerate_curve_is_none_with_a_note(area):
    score = area([0, 0.5, 1], [-2.0, -1.0, -2.0])
    assert score.value is None
    assert "undefined" in score.note
    assert area([0, 1], [1.0, 1.0 + 1e-9], min_gap=1e-6).value is None
    assert area([0, 1], [1.0, 2.0], min_gap=1e-6).value == pytest.approx(0.5)
    assert area([0, 1], [1.0, 1.5]).value is None  # 0.5 nats is under the default gap
    for bad in (-0.1, float("nan"), "1", True):
        with pytest.raises(ValueError, match="min_gap"):
            area([0, 1], [1.0, 2.0], min_gap=bad)


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
@pytest.mark.parametrize("area", [deletion_area, insertion_area, normalised_deletion_auc, normalised_insertion_auc])
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


# --------------------------------------------------------------------------- several orderings at once


def test_ordering_curves_match_each_curve_and_run_each_sequence_once(qwen, ids):
    sequence = SimpleNamespace(input_ids=ids, answer_span=ANSWER, segment_spans=SEGMENTS)
    orders = {"a": [2, 0, 4, 1, 3], "b": [2, 0, 1, 3, 4], "c": [4, 3, 2, 1, 0]}
    result = ordering_curves(qwen, sequence, orders, BASELINE, batch_size=3)
    assert list(result.curves) == ["a", "b", "c"]
    for name, order in orders.items():
        curves = result.curves[name]
        assert curves.order == order
        np.testing.assert_allclose(curves.deletion, manual_deletion(qwen, ids, ANSWER, SEGMENTS, order), atol=1e-5)
        np.testing.assert_allclose(curves.insertion, manual_insertion(qwen, ids, ANSWER, SEGMENTS, order), atol=1e-5)
        np.testing.assert_allclose(curves.fractions, removal_curve_fractions([4, 3, 6, 2, 7], order))
    # the distinct masked sets, counted by hand: deletion prefixes and insertion suffixes of the three orders
    distinct = {frozenset(o[:k]) for o in orders.values() for k in range(6)}
    distinct |= {frozenset(o[k:]) for o in orders.values() for k in range(6)}
    assert result.n_forward == len(distinct) < 3 * 2 * 6
    # every curve shares the two end points exactly (one forward pass each)
    ends = {(c.deletion[0], c.deletion[-1], c.insertion[0], c.insertion[-1]) for c in result.curves.values()}
    assert len(ends) == 1
    f_full, f_empty, g_first, g_last = ends.pop()
    assert (g_first, g_last) == (f_empty, f_full)


def test_ordering_curves_validation(qwen, ids):
    sequence = SimpleNamespace(input_ids=ids, answer_span=ANSWER, segment_spans=SEGMENTS)
    with pytest.raises(ValueError, match="orders is empty"):
        ordering_curves(qwen, sequence, {}, BASELINE)
    with pytest.raises(ValueError, match="permutation"):
        ordering_curves(qwen, sequence, {"a": [0, 1, 2, 3]}, BASELINE)


def test_curve_metrics_by_hand():
    # three segments of 2, 3, 5 tokens ranked [2, 0, 1]: x = [0, .5, .7, 1]
    curves = Curves(
        order=[2, 0, 1],
        fractions=np.array([0.0, 0.5, 0.7, 1.0]),
        deletion=np.array([-1.0, -3.0, -4.0, -5.0]),
        insertion=np.array([-5.0, -2.0, -1.5, -1.0]),
    )
    row = curve_metrics([2, 3, 5], curves, budgets=(0.2, 0.5, 0.7), aopc_steps=2)
    assert row["f_full"] == -1.0 and row["f_empty"] == -5.0
    assert row["deletion_area"] == pytest.approx(2.05)
    assert row["insertion_area"] == pytest.approx(0.75 + 0.65 + 1.125)
    assert row["deletion_auc_normalised"] == pytest.approx(2.05 / 4)
    assert row["insertion_auc_normalised"] == pytest.approx((0.75 + 0.65 + 1.125) / 4)
    # 20% of 10 tokens: segment 2 alone (5 tokens, at least one segment), 50%: segment 2, 70%: segments 2, 0
    assert row["comprehensiveness_20"] == pytest.approx(2.0) and row["budget_share_20"] == pytest.approx(0.5)
    assert row["sufficiency_20"] == pytest.approx(-1.0 - -2.0)
    assert row["comprehensiveness_50"] == pytest.approx(2.0) and row["budget_share_50"] == pytest.approx(0.5)
    assert row["comprehensiveness_70"] == pytest.approx(3.0) and row["budget_share_70"] == pytest.approx(0.7)
    assert row["sufficiency_70"] == pytest.approx(-1.0 - -1.5)
    assert row["aopc"] == pytest.approx(2.5) and row["aopc_steps"] == 2
    assert row["note"] == ""
    # K = min(aopc_steps, n); None = every step
    assert curve_metrics([2, 3, 5], curves, aopc_steps=10)["aopc_steps"] == 3
    assert curve_metrics([2, 3, 5], curves)["aopc"] == pytest.approx(3.0)
    flat = Curves([0, 1], np.array([0.0, 0.5, 1.0]), np.array([-1.0, -1.3, -1.2]), np.array([-1.2, -1.1, -1.0]))
    row = curve_metrics([1, 1], flat)
    assert row["deletion_auc_normalised"] is None and row["insertion_auc_normalised"] is None
    assert "undefined" in row["note"] and row["deletion_area"] == pytest.approx(0.5 * 0.15 + 0.5 * 0.25)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"budgets": (0.0,)}, "budget"),
        ({"budgets": (0.1, 0.1)}, "duplicate"),
        ({"budgets": ("0.1",)}, "budget"),
        ({"aopc_steps": 0}, "aopc_steps"),
        ({"aopc_steps": 1.5}, "aopc_steps"),
        ({"min_gap": -1.0}, "min_gap"),
    ],
)
def test_curve_metrics_validation(kwargs, match):
    curves = Curves([0, 1], np.array([0.0, 0.5, 1.0]), np.array([0.0, -1.0, -2.0]), np.array([-2.0, -1.0, 0.0]))
    with pytest.raises(ValueError, match=match):
        curve_metrics([1, 1], curves, **kwargs)
    with pytest.raises(ValueError, match="points"):
        curve_metrics([1, 1, 1], Curves([0, 1, 2], np.zeros(3), np.zeros(3), np.zeros(3)))


def test_oracle_order_puts_productive_first_and_redundant_last():
    kinds = ["repetition", "productive", "verification", "superficial", "productive", "wrong_exploration"]
    assert oracle_order(kinds) == [1, 4, 2, 5, 0, 3]
    with pytest.raises(ValueError, match="no ground-truth kind"):
        oracle_order(["productive", None])
    with pytest.raises(ValueError, match="empty"):
        oracle_order([])


def test_metric_frame_keeps_none_as_missing_not_nan(tmp_path):
    frame = metric_frame(
        [
            {"ordering": "a", "deletion_auc_normalised": 0.5, "insertion_auc_normalised": None},
            {"ordering": "b", "deletion_auc_normalised": None, "insertion_auc_normalised": 0.25},
        ]
    )
    assert str(frame["deletion_auc_normalised"].dtype) == "Float64"
    assert frame["deletion_auc_normalised"].isna().tolist() == [False, True]
    path = tmp_path / "rows.parquet"
    frame.to_parquet(path)
    back = pd.read_parquet(path)
    assert str(back["insertion_auc_normalised"].dtype) == "Float64"
    assert back["insertion_auc_normalised"][0] is pd.NA


# --------------------------------------------------------------------------- a model whose answer needs one segment


class _Backbone(nn.Module):
    """Hidden state at t = count of ``KEY`` tokens at positions <= t (a causal prefix sum)."""

    def forward(self, inputs_embeds, use_cache=False):
        return SimpleNamespace(last_hidden_state=torch.cumsum(inputs_embeds, dim=1))


class OneSegmentModel(nn.Module):
    """The answer token's logit is ``GAIN`` x (number of ``KEY`` tokens before it), every other logit 0:
    F depends on the KEY tokens, which sit in one segment only, and on nothing else."""

    def __init__(self, vocab: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, 1)
        self.embed.weight.data.zero_()
        self.embed.weight.data[KEY, 0] = 1.0
        self.base_model = _Backbone()
        self.head = nn.Linear(1, vocab, bias=False)
        self.head.weight.data.zero_()
        self.head.weight.data[ANSWER_ID, 0] = GAIN

    def get_input_embeddings(self):
        return self.embed

    def get_output_embeddings(self):
        return self.head


KEY, ANSWER_ID, GAIN, OTHER = 5, 9, 1.5, 7


def _one_segment_trace():
    # prompt 0..2, segments (2, 5) (5, 7) (7, 13) (13, 14) with the two KEY tokens in segment 2, answer 14..15
    spans = [(2, 5), (5, 7), (7, 13), (13, 14)]
    ids = torch.full((15,), OTHER, dtype=torch.long)
    ids[[8, 11]] = KEY
    ids[14] = ANSWER_ID
    return SimpleNamespace(input_ids=ids, answer_span=(14, 15), segment_spans=spans), [3, 2, 6, 1]


def test_the_segment_the_answer_needs_first_beats_random_by_hand():
    model = OneSegmentModel()
    sequence, lengths = _one_segment_trace()
    f_with = math.log(math.exp(2 * GAIN) / (math.exp(2 * GAIN) + 15))  # two KEY tokens seen
    f_without = math.log(1 / 16)
    drop = f_with - f_without
    orders = {"key_first": [2, 0, 1, 3], "key_last": [0, 1, 3, 2]}
    result = ordering_curves(model, sequence, orders, baseline_token_id=0)
    first = result.curves["key_first"]
    np.testing.assert_allclose(first.deletion, [f_with] + [f_without] * 4, atol=1e-6)
    np.testing.assert_allclose(first.insertion, [f_without] + [f_with] * 4, atol=1e-6)
    # by hand on x = [0, 6/12, 9/12, 11/12, 1]: the drop is total from the first step on
    x1 = 6 / 12
    assert deletion_area(first.fractions, first.deletion) == pytest.approx(x1 * drop / 2 + (1 - x1) * drop, abs=1e-6)
    last = result.curves["key_last"]
    # the KEY segment goes last: F only falls over the last 6/12 of the axis
    assert deletion_area(last.fractions, last.deletion) == pytest.approx(0.5 * drop / 2, abs=1e-6)
    # every one of the 24 orderings: the KEY segment first is never beaten, and beats the mean of all of them
    from itertools import permutations

    all_orders = {str(p): list(p) for p in permutations(range(4))}
    curves = ordering_curves(model, sequence, all_orders, baseline_token_id=0).curves
    areas = {name: deletion_area(c.fractions, c.deletion) for name, c in curves.items()}
    gains = {name: insertion_area(c.fractions, c.insertion) for name, c in curves.items()}
    best = max(v for name, v in areas.items() if all_orders[name][0] == 2)
    assert max(areas.values()) == pytest.approx(best)
    assert best > np.mean(list(areas.values())) + 0.1 * drop
    assert max(gains.values()) == pytest.approx(max(v for name, v in gains.items() if all_orders[name][0] == 2))
    # the summary's rows: IG-like scores with the KEY segment on top and the oracle from the kinds beat random
    kinds = ["superficial", "repetition", "productive", "truncated"]
    assert oracle_order(kinds)[0] == 2
    assert random_order(4, 1) == [0, 1, 2, 3]  # seed 1: the KEY segment third
    frame = faithfulness_summary(
        model, sequence, {"ig": [0.1, 0.2, 0.9, 0.3], "oracle": [0, 0, 1, 0]}, baseline_token_id=0, seed=1
    )
    by = frame.set_index("ordering")
    assert by.loc["ig", "deletion_area"] == pytest.approx(x1 * drop / 2 + (1 - x1) * drop, abs=1e-6)
    # random [0, 1, 2, 3]: x = [0, 3/12, 5/12, 11/12, 1], F falls between 5/12 and 11/12
    assert by.loc["random", "deletion_area"] == pytest.approx(0.5 * drop / 2 + drop / 12, abs=1e-6)
    assert by.loc["ig", "deletion_area"] > by.loc["random", "deletion_area"] + 0.4 * drop
    assert by.loc["oracle", "insertion_area"] > by.loc["random", "insertion_area"] + 0.4 * drop
    assert by.loc["ig", "comprehensiveness_50"] == pytest.approx(drop, abs=1e-6)  # segment 2 = 50% of the tokens
    assert by.loc["ig", "sufficiency_50"] == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- summary


def test_faithfulness_summary_against_manual_computation(qwen, ids):
    sequence = SimpleNamespace(input_ids=ids, answer_span=ANSWER, segment_spans=SEGMENTS)
    strength = [0.1, 0.3, 0.9, 0.05, 0.2]  # order [2, 1, 4, 0, 3]
    frame = faithfulness_summary(qwen, sequence, {"strength": strength}, baseline_token_id=BASELINE, seed=3)
    assert list(frame["ordering"]) == ["strength", "random", "length"]
    assert list(frame.columns) == [
        "ordering",
        "f_full",
        "f_empty",
        "deletion_area",
        "insertion_area",
        "deletion_auc_normalised",
        "insertion_auc_normalised",
        "comprehensiveness_10",
        "sufficiency_10",
        "budget_share_10",
        "comprehensiveness_20",
        "sufficiency_20",
        "budget_share_20",
        "comprehensiveness_50",
        "sufficiency_50",
        "budget_share_50",
        "aopc",
        "aopc_steps",
        "note",
    ]
    row = frame.iloc[0]
    order = [2, 1, 4, 0, 3]  # lengths 6, 3, 7, 4, 2 of 22 tokens
    f = manual_deletion(qwen, ids, ANSWER, SEGMENTS, order)
    g = manual_insertion(qwen, ids, ANSWER, SEGMENTS, order)
    x = [0, 6 / 22, 9 / 22, 16 / 22, 20 / 22, 1]
    area = lambda y: sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(5))  # noqa: E731
    assert row["deletion_area"] == pytest.approx(area([f[0] - v for v in f]), abs=1e-5)
    assert row["insertion_area"] == pytest.approx(area([v - g[0] for v in g]), abs=1e-5)
    assert row["f_full"] == pytest.approx(f[0], abs=1e-5) and row["f_empty"] == pytest.approx(f[-1], abs=1e-5)
    gap = abs(f[0] - f[-1])
    if gap > 1.0:  # the default min_gap
        assert row["deletion_auc_normalised"] == pytest.approx(area([(f[0] - v) / (f[0] - f[-1]) for v in f]), abs=1e-4)
    else:
        assert row["deletion_auc_normalised"] is pd.NA and "undefined" in row["note"]
    strict = faithfulness_summary(
        qwen, sequence, {"strength": strength}, baseline_token_id=BASELINE, seed=3, min_gap=0.0
    ).iloc[0]
    assert strict["deletion_auc_normalised"] == pytest.approx(area([(f[0] - v) / (f[0] - f[-1]) for v in f]), abs=1e-4)
    assert strict["insertion_auc_normalised"] == pytest.approx(area([(v - g[0]) / (g[-1] - g[0]) for v in g]), abs=1e-4)
    # budgets of 22 tokens: 10% -> 2.2 (segment 2 alone, at least one), 20% -> 4.4 (segment 2 alone), 50% -> 11 (2, 1)
    full = manual_f(qwen, ids, ANSWER)
    for budget, kept in (("10", [2]), ("20", [2]), ("50", [2, 1])):
        removed = manual_f(qwen, masked(ids, SEGMENTS, kept), ANSWER)
        only = manual_f(qwen, masked(ids, SEGMENTS, [i for i in range(5) if i not in kept]), ANSWER)
        assert row[f"comprehensiveness_{budget}"] == pytest.approx(full - removed, abs=1e-5)
        assert row[f"sufficiency_{budget}"] == pytest.approx(full - only, abs=1e-5)
        assert row[f"budget_share_{budget}"] == pytest.approx(sum([4, 3, 6, 2, 7][i] for i in kept) / 22)
    assert row["aopc"] == pytest.approx(np.mean([f[0] - v for v in f[1:]]), abs=1e-5)
    assert frame["deletion_area"].dtype == np.float64
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
    for column in ("deletion_auc_normalised", "insertion_auc_normalised"):
        assert frame[column].isna().all() and str(frame[column].dtype) == "Float64"  # <NA>, not NaN
    assert all("undefined" in note for note in frame["note"])
    columns = ["deletion_area", "insertion_area", "comprehensiveness_10", "sufficiency_50", "aopc"]
    assert not frame[columns].isna().any().any()
    assert (frame[columns] == 0).all().all()


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
    values = frame.drop(columns=["ordering", "note", "deletion_auc_normalised", "insertion_auc_normalised"])
    values = values.to_numpy(dtype=float)
    assert np.all(np.isfinite(values)) and not math.isnan(values.sum())
