"""Tests for segattr_utils.method.importance (paper Eq. 3-7, App. C.4).

Every expected number is computed by hand from the paper's formulas and written into the test:

    Strength(S)    = sum|IG| / sqrt(N)           Consistency(S) = |sum IG| / sum|IG|      (Eq. 3)
    Strength'(S_m) = Strength(S_m) / sum_j Strength(S_j)                                   (Eq. 4)
    k* = min{k : sum_{i<=k} Strength'(S_pi(i)) >= tau};  keep top-k* with Consistency <= beta (Eq. 5-7)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segattr_utils.method.importance import (
    AGGREGATIONS,
    always_keep_indices,
    segment_consistency,
    segment_scores,
    segment_strength,
    select_important,
    top_strength_segments,
)

SQRT2 = math.sqrt(2.0)

# --------------------------------------------------------------------------------------------------
# Eq. 3: strength and consistency of single segments
# --------------------------------------------------------------------------------------------------


def test_aggregations_are_the_three_of_app_c4():
    assert set(AGGREGATIONS) == {"sqrt_len", "sum", "top20_mean"}


@pytest.mark.parametrize(
    "values, strength, consistency",
    [
        ([3.0, -1.0], 4 / SQRT2, 2 / 4),  # |3|+|-1| = 4 over sqrt 2; |3-1| = 2 over 4
        ([1.0, 1.0, 1.0, 1.0], 4 / 2, 1.0),  # all positive: consistency 1
        ([-2.0, -2.0], 4 / SQRT2, 1.0),  # all negative: consistency 1
        ([2.0, -2.0], 4 / SQRT2, 0.0),  # perfectly mixed: consistency 0
        ([5.0], 5.0, 1.0),  # a single token
        ([-0.5], 0.5, 1.0),
        ([1.0, -2.0, 3.0, -4.0, 0.0, 0.0, 0.0, 0.0, 0.0], 10 / 3, 2 / 10),  # N = 9, sqrt = 3
    ],
)
def test_strength_and_consistency_eq3(values, strength, consistency):
    array = np.array(values)
    assert segment_strength(array) == pytest.approx(strength, rel=1e-12)
    assert segment_strength(array, "sqrt_len") == pytest.approx(strength, rel=1e-12)
    assert segment_consistency(array) == pytest.approx(consistency, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    "values, expected",
    [
        ([3.0, -1.0], 4.0),
        ([1.0, 1.0, 1.0, 1.0], 4.0),
        ([-4.0, 1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 1.0], 8.0),
    ],
)
def test_sum_aggregation(values, expected):
    assert segment_strength(np.array(values), "sum") == pytest.approx(expected)


@pytest.mark.parametrize(
    "values, expected",
    [
        ([3.0, -1.0], 3.0),  # N = 2: ceil(0.4) = 1 token -> |3|
        ([1.0, 1.0, 1.0, 1.0], 1.0),  # N = 4: ceil(0.8) = 1
        ([0.1, -0.7, 0.2, 0.3, 0.4], 0.7),  # N = 5: ceil(1.0) = 1 -> |-0.7|
        ([1.0, 2.0, 3.0, -6.0, 0.5, 0.5], (6.0 + 3.0) / 2),  # N = 6: ceil(1.2) = 2
        ([-4.0, 1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 1.0], (4.0 + 2.0) / 2),  # N = 10: 2 tokens
        ([float(i) for i in range(1, 12)], (11.0 + 10.0 + 9.0) / 3),  # N = 11: ceil(2.2) = 3
        ([float(i) for i in range(1, 16)], (15.0 + 14.0 + 13.0) / 3),  # N = 15: exactly 3
        ([float(-i) for i in range(1, 36)], (35 + 34 + 33 + 32 + 31 + 30 + 29) / 7),  # N = 35: exactly 7
        ([7.0], 7.0),  # N = 1: at least one token
    ],
)
def test_top20_mean_aggregation(values, expected):
    assert segment_strength(np.array(values), "top20_mean") == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n", range(1, 41))
def test_top20_mean_uses_ceil_of_20_percent_tokens(n):
    # Magnitudes 1..n: the mean of the top ceil(n/5) (integer ceiling, no float rounding).
    k = max(1, -(-n // 5))
    values = np.arange(1, n + 1, dtype=float)
    expected = sum(range(n - k + 1, n + 1)) / k
    assert segment_strength(values, "top20_mean") == pytest.approx(expected, rel=1e-12)


def test_all_zero_segment_has_zero_strength_and_zero_consistency():
    zeros = np.zeros(4)
    for aggregation in AGGREGATIONS:
        assert segment_strength(zeros, aggregation) == 0.0
    consistency = segment_consistency(zeros)
    assert consistency == 0.0 and not math.isnan(consistency)


def test_empty_segment_has_zero_strength_and_consistency():
    empty = np.array([], dtype=float)
    assert segment_strength(empty) == 0.0
    assert segment_consistency(empty) == 0.0


def test_unknown_aggregation_raises():
    with pytest.raises(ValueError, match="aggregation"):
        segment_strength(np.array([1.0, 2.0]), "mean")
    with pytest.raises(ValueError, match="aggregation"):
        segment_scores([[1.0, 2.0]], aggregation="mean")


# --------------------------------------------------------------------------------------------------
# segment_scores: the per-segment table (Eq. 3-4)
# --------------------------------------------------------------------------------------------------


def test_segment_scores_two_segments_hand_computed():
    scores = segment_scores([[3.0, -1.0], [1.0, 1.0, 1.0, 1.0]])
    assert list(scores.columns) == ["n_tokens", "signed_sum", "abs_sum", "strength", "consistency", "norm_strength"]
    assert list(scores["n_tokens"]) == [2, 4]
    assert list(scores["signed_sum"]) == pytest.approx([2.0, 4.0])
    assert list(scores["abs_sum"]) == pytest.approx([4.0, 4.0])
    assert list(scores["strength"]) == pytest.approx([2 * SQRT2, 2.0])
    assert list(scores["consistency"]) == pytest.approx([0.5, 1.0])
    # Eq. 4: 2sqrt2 / (2sqrt2 + 2) = 2 - sqrt2 ;  2 / (2sqrt2 + 2) = sqrt2 - 1
    assert list(scores["norm_strength"]) == pytest.approx([2 - SQRT2, SQRT2 - 1], rel=1e-12)
    assert scores["norm_strength"].sum() == pytest.approx(1.0, abs=1e-12)


def test_segment_scores_sum_and_top20_aggregations():
    segments = [[3.0, -1.0], [1.0, 1.0, 1.0, 1.0], [-4.0, 1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 1.0]]
    by_sum = segment_scores(segments, aggregation="sum")
    assert list(by_sum["strength"]) == pytest.approx([4.0, 4.0, 8.0])
    assert list(by_sum["norm_strength"]) == pytest.approx([0.25, 0.25, 0.5])
    assert list(by_sum["consistency"]) == pytest.approx([0.5, 1.0, 0.0])
    top20 = segment_scores(segments, aggregation="top20_mean")
    assert list(top20["strength"]) == pytest.approx([3.0, 1.0, 3.0])
    assert list(top20["norm_strength"]) == pytest.approx([3 / 7, 1 / 7, 3 / 7])


def test_segment_scores_zero_segment_among_others():
    scores = segment_scores([[0.0, 0.0, 0.0], [2.0, -2.0], [1.0]])
    assert list(scores["strength"]) == pytest.approx([0.0, 4 / SQRT2, 1.0])
    consistency = list(scores["consistency"])
    assert consistency == pytest.approx([0.0, 0.0, 1.0])
    assert not any(math.isnan(c) for c in consistency)
    total = 4 / SQRT2 + 1.0
    assert list(scores["norm_strength"]) == pytest.approx([0.0, (4 / SQRT2) / total, 1.0 / total])


def test_segment_scores_norm_strength_sums_to_one_random():
    rng = np.random.default_rng(0)
    segments = [rng.normal(size=int(n)) for n in rng.integers(1, 60, size=25)]
    for aggregation in AGGREGATIONS:
        scores = segment_scores(segments, aggregation=aggregation)
        assert scores["norm_strength"].sum() == pytest.approx(1.0, abs=1e-12)
        assert (scores["norm_strength"] >= 0).all()
    # sqrt_len strength recomputed independently in plain Python
    scores = segment_scores(segments)
    for values, strength, consistency in zip(segments, scores["strength"], scores["consistency"]):
        abs_sum = sum(abs(float(v)) for v in values)
        assert strength == pytest.approx(abs_sum / math.sqrt(len(values)), rel=1e-12)
        assert consistency == pytest.approx(abs(sum(float(v) for v in values)) / abs_sum, rel=1e-12)


def test_segment_scores_accepts_lists_numpy_and_tensors():
    expected = [2 * SQRT2, 2.0]
    as_list = segment_scores([[3.0, -1.0], [1.0, 1.0, 1.0, 1.0]])
    as_numpy = segment_scores([np.array([3.0, -1.0]), np.array([1.0, 1.0, 1.0, 1.0], dtype=np.float32)])
    as_torch = segment_scores([torch.tensor([3.0, -1.0]), torch.ones(4, requires_grad=True)])
    for scores in (as_list, as_numpy, as_torch):
        assert list(scores["strength"]) == pytest.approx(expected, rel=1e-6)


def test_segment_scores_segment_without_tokens():
    scores = segment_scores([[], [1.0, -1.0]])
    assert list(scores["n_tokens"]) == [0, 2]
    assert list(scores["strength"]) == pytest.approx([0.0, 2 / SQRT2])
    assert list(scores["consistency"]) == pytest.approx([0.0, 0.0])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_segment_scores_rejects_nan_and_inf(bad):
    with pytest.raises(ValueError, match="NaN or inf") as info:
        segment_scores([[1.0, 2.0], [0.5, bad]])
    assert "segment 1" in str(info.value)


def test_segment_scores_rejects_empty_input():
    with pytest.raises(ValueError, match="empty"):
        segment_scores([])


@pytest.mark.parametrize("segments", [[[0.0, 0.0]], [[0.0], [0.0, 0.0, 0.0]], [[]]])
def test_segment_scores_rejects_all_zero_strengths(segments):
    with pytest.raises(ValueError, match="zero"):
        segment_scores(segments)


@pytest.mark.parametrize("bad", ["abc", b"abc", 3.0, None])
def test_segment_scores_rejects_non_list(bad):
    with pytest.raises(TypeError, match="list"):
        segment_scores(bad)


def test_segment_scores_rejects_non_numeric_and_2d():
    with pytest.raises(TypeError, match="segment 0.*not numeric"):
        segment_scores([["a", "b"]])
    with pytest.raises(ValueError, match="1-D"):
        segment_scores([[[1.0, 2.0], [3.0, 4.0]]])


# --------------------------------------------------------------------------------------------------
# Eq. 5-6: the top-k* segments by normalised strength
# --------------------------------------------------------------------------------------------------

# Exactly representable: ranking 1 (.375), 3 (.25), 4 (.1875), 0 (.125), 2 (.0625)
# cumulative .375, .625, .8125, .9375, 1.0
NORM = [0.125, 0.375, 0.0625, 0.25, 0.1875]
CONS = [0.9, 0.5, 0.2, 0.85, 0.7]


@pytest.mark.parametrize(
    "tau, expected",
    [
        (0.1, [1]),
        (0.375, [1]),  # exactly the first cumulative value
        (0.376, [1, 3]),
        (0.625, [1, 3]),  # exactly the second
        (0.7, [1, 3, 4]),
        (0.8125, [1, 3, 4]),
        (0.9, [1, 3, 4, 0]),
        (1.0, [1, 3, 4, 0, 2]),
        (1, [1, 3, 4, 0, 2]),  # an int is accepted
    ],
)
def test_top_strength_segments_hand_computed(tau, expected):
    assert top_strength_segments(NORM, tau) == expected


def test_top_strength_default_tau_is_0_7():
    assert top_strength_segments(NORM) == [1, 3, 4]


def test_tau_exactly_on_decimal_cumulative_boundary():
    # 0.5 + 0.3 = 0.8 exactly in arithmetic (float: 0.8); k* = 2, not 3.
    assert top_strength_segments([0.5, 0.3, 0.2], 0.8) == [0, 1]
    # 0.7 + 0.2 = 0.9 in arithmetic but 0.8999999999999999 in floating point: still k* = 2.
    assert top_strength_segments([0.1, 0.2, 0.7], 0.9) == [2, 1]


def test_tau_one_selects_every_segment_despite_rounding():
    # ten times 0.1 sums to 0.9999999999999999 in floating point; tau = 1 must still select all.
    assert top_strength_segments([0.1] * 10, 1.0) == list(range(10))


def test_tau_one_stops_at_last_positive_strength():
    # Eq. 6 takes the smallest k: zero-strength segments add nothing once the total is reached.
    assert top_strength_segments([0.0, 0.6, 0.0, 0.4], 1.0) == [1, 3]


def test_ties_keep_earlier_index_first():
    # Stable ranking: among equal strengths, the earlier segment ranks first.
    assert top_strength_segments([0.25, 0.25, 0.25, 0.25], 0.5) == [0, 1]
    assert top_strength_segments([0.25, 0.25, 0.25, 0.25], 0.75) == [0, 1, 2]
    assert top_strength_segments([0.2, 0.4, 0.4], 0.4) == [1]
    assert top_strength_segments([0.2, 0.4, 0.4], 0.5) == [1, 2]
    assert top_strength_segments([0.1, 0.3, 0.2, 0.3, 0.1], 0.6) == [1, 3]
    assert top_strength_segments([0.1, 0.3, 0.2, 0.3, 0.1], 1.0) == [1, 3, 2, 0, 4]


def test_single_segment():
    assert top_strength_segments([1.0], 0.7) == [0]
    assert top_strength_segments([1.0], 1.0) == [0]


def test_unnormalised_strengths_are_normalised():
    # Raw strengths proportional to NORM give the same ranking and cut.
    assert top_strength_segments([8 * v for v in NORM], 0.7) == [1, 3, 4]


def test_accepts_numpy_and_tensor():
    assert top_strength_segments(np.array(NORM), 0.7) == [1, 3, 4]
    assert top_strength_segments(torch.tensor(NORM, dtype=torch.float64), 0.7) == [1, 3, 4]
    result = top_strength_segments(np.array(NORM), 0.7)
    assert all(type(i) is int for i in result)


@pytest.mark.parametrize("tau", [0, 0.0, 1.5, -0.1, 1.0000001, float("nan"), float("inf"), True, "0.7", None])
def test_tau_outside_unit_interval_raises(tau):
    with pytest.raises(ValueError, match="tau"):
        top_strength_segments(NORM, tau)
    with pytest.raises(ValueError, match="tau"):
        select_important(NORM, CONS, tau=tau)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_norm_strength_raises(bad):
    with pytest.raises(ValueError, match="norm_strength.*NaN"):
        top_strength_segments([0.5, bad, 0.25], 0.7)
    with pytest.raises(ValueError, match="norm_strength.*NaN"):
        select_important([0.5, bad, 0.25], [0.1, 0.1, 0.1])


def test_empty_norm_strength_raises():
    with pytest.raises(ValueError, match="empty"):
        top_strength_segments([], 0.7)
    with pytest.raises(ValueError, match="empty"):
        select_important([], [])


def test_negative_or_2d_norm_strength_raises():
    with pytest.raises(ValueError, match="non-negative"):
        top_strength_segments([0.5, -0.1, 0.6], 0.7)
    with pytest.raises(ValueError, match="1-D"):
        top_strength_segments([[0.5, 0.5]], 0.7)


def test_all_zero_norm_strength_raises():
    with pytest.raises(ValueError, match="zero"):
        top_strength_segments([0.0, 0.0, 0.0], 0.7)
    with pytest.raises(ValueError, match="zero"):
        select_important([0.0, 0.0, 0.0], [0.5, 0.5, 0.5])


# --------------------------------------------------------------------------------------------------
# Eq. 7: consistency filter, always-keep, final selection
# --------------------------------------------------------------------------------------------------


def test_select_important_hand_computed_default():
    # tau = 0.7 -> top {1, 3, 4}; beta = 0.8 drops 3 (consistency 0.85).
    assert select_important(NORM, CONS) == [1, 4]
    assert select_important(NORM, CONS, tau=0.7, beta=0.8) == [1, 4]


def test_select_important_worked_example_from_scores():
    # Segments: A=[3,-1] (str 2sqrt2, cons .5), B=[1,1,1,1] (str 2, cons 1),
    # C=[0.1,-0.1] (str 0.2/sqrt2, cons 0), D=[1,-3,1] (str 5/sqrt3, cons 1/5).
    # Ranking by strength: D (2.887), A (2.828), B (2), C (0.141); total 7.856
    # cumulative: .3675, .7275, .9820, 1.0 -> tau .7 gives k* = 2 = {D, A}; both consistency <= .8.
    scores = segment_scores([[3.0, -1.0], [1.0, 1.0, 1.0, 1.0], [0.1, -0.1], [1.0, -3.0, 1.0]])
    strengths = [2 * SQRT2, 2.0, 0.2 / SQRT2, 5 / math.sqrt(3)]
    total = sum(strengths)
    assert list(scores["norm_strength"]) == pytest.approx([s / total for s in strengths])
    assert list(scores["consistency"]) == pytest.approx([0.5, 1.0, 0.0, 0.2])
    assert select_important(scores["norm_strength"], scores["consistency"], tau=0.7, beta=0.8) == [0, 3]
    # tau = 0.9 adds B (k* = 3), which is then filtered by beta (consistency 1).
    assert select_important(scores["norm_strength"], scores["consistency"], tau=0.9, beta=0.8) == [0, 3]
    # with beta = 1 B stays
    assert select_important(scores["norm_strength"], scores["consistency"], tau=0.9, beta=1.0) == [0, 1, 3]


def test_tau_one_selects_all_then_beta_filters():
    assert select_important(NORM, CONS, tau=1.0, beta=0.8) == [1, 2, 4]
    assert select_important(NORM, CONS, tau=1.0, beta=1.0) == [0, 1, 2, 3, 4]


def test_beta_zero_keeps_only_zero_consistency():
    consistency = [0.0, 0.5, 0.0, 0.0, 1.0]
    # top at tau .7: {1, 3, 4}; only segment 3 has consistency 0.
    assert select_important(NORM, consistency, tau=0.7, beta=0.0) == [3]
    assert select_important(NORM, CONS, tau=0.7, beta=0.0) == []


def test_beta_one_keeps_every_top_segment():
    assert select_important(NORM, [1.0] * 5, tau=0.7, beta=1.0) == [1, 3, 4]


def test_beta_is_inclusive():
    # Eq. 7 uses <=: consistency exactly beta is kept.
    assert select_important(NORM, [0.0, 0.8, 0.0, 0.8, 0.81], tau=0.7, beta=0.8) == [1, 3]


def test_always_keep_adds_indices_and_result_is_sorted():
    assert select_important(NORM, CONS, always_keep=(0,)) == [0, 1, 4]
    assert select_important(NORM, CONS, always_keep=(0, 4)) == [0, 1, 4]
    assert select_important(NORM, CONS, always_keep=[2, 0]) == [0, 1, 2, 4]
    # always_keep wins over the consistency filter
    assert select_important(NORM, CONS, always_keep=(3,)) == [1, 3, 4]


def test_always_keep_negative_indices_count_from_end():
    assert select_important(NORM, CONS, always_keep=(-1,)) == [1, 4]  # -1 -> 4
    assert select_important(NORM, CONS, always_keep=(-2,)) == [1, 3, 4]  # -2 -> 3
    assert select_important(NORM, CONS, always_keep=(-5, -1)) == [0, 1, 4]  # -5 -> 0
    assert select_important(NORM, CONS, always_keep=(0, -1, -2)) == [0, 1, 3, 4]


def test_always_keep_accepts_numpy_integers():
    assert select_important(NORM, CONS, always_keep=np.array([0, 2])) == [0, 1, 2, 4]


def test_single_segment_selection():
    assert select_important([1.0], [0.5]) == [0]
    assert select_important([1.0], [0.9], beta=0.8) == []
    assert select_important([1.0], [0.9], beta=0.8, always_keep=(0,)) == [0]
    assert select_important([1.0], [0.9], beta=0.8, always_keep=(-1,)) == [0]


@pytest.mark.parametrize("beta", [-0.1, 1.1, 2, float("nan"), True, "0.8", None])
def test_beta_outside_unit_interval_raises(beta):
    with pytest.raises(ValueError, match="beta"):
        select_important(NORM, CONS, beta=beta)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_in_consistency_raises(bad):
    with pytest.raises(ValueError, match="consistency.*NaN"):
        select_important(NORM, [0.1, 0.2, bad, 0.3, 0.4])


@pytest.mark.parametrize("consistency", [[0.1, 0.2, 0.3], [0.1] * 6, [0.5]])
def test_mismatched_lengths_raise(consistency):
    with pytest.raises(ValueError, match="length"):
        select_important(NORM, consistency)


@pytest.mark.parametrize("keep", [(5,), (-6,), (0, 100)])
def test_always_keep_out_of_range_raises(keep):
    with pytest.raises(ValueError, match="always_keep.*out of range"):
        select_important(NORM, CONS, always_keep=keep)


@pytest.mark.parametrize("keep", [(1.0,), ("0",), (True,), (None,)])
def test_always_keep_non_integer_raises(keep):
    with pytest.raises(TypeError, match="always_keep"):
        select_important(NORM, CONS, always_keep=keep)


# --------------------------------------------------------------------------------------------------
# always_keep_indices (App. C.4)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, rule, expected",
    [
        (5, "first_last", (0, 4)),
        (5, "official", (0, 3, 4)),
        (5, "none", ()),
        (3, "official", (0, 1, 2)),
        (2, "first_last", (0, 1)),
        (2, "official", (0, 1)),
        (2, "none", ()),
        (1, "first_last", (0,)),
        (1, "official", (0,)),
        (1, "none", ()),
        (49, "first_last", (0, 48)),
        (49, "official", (0, 47, 48)),
    ],
)
def test_always_keep_indices(n, rule, expected):
    assert always_keep_indices(n, rule) == expected


def test_always_keep_indices_default_rule_is_first_last():
    assert always_keep_indices(7) == (0, 6)


def test_always_keep_indices_errors():
    with pytest.raises(ValueError, match="at least one segment"):
        always_keep_indices(0)
    with pytest.raises(ValueError, match="at least one segment"):
        always_keep_indices(-3)
    with pytest.raises(ValueError, match="rule"):
        always_keep_indices(5, "first")


def test_always_keep_indices_feed_select_important():
    keep = always_keep_indices(len(NORM), "official")
    assert select_important(NORM, CONS, always_keep=keep) == [0, 1, 3, 4]
    keep = always_keep_indices(len(NORM), "first_last")
    assert select_important(NORM, CONS, always_keep=keep) == [0, 1, 4]
