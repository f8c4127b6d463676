"""Tests for segattr_utils.measures.position (Fig. 1 right-bottom, App. A) on hand-made examples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segattr_utils.measures.position import (
    cdf_at,
    contains_answer,
    cumulative_strength,
    curve_share_holding,
    decision_segment,
    mean_cdf,
    percent_grid,
    positional_shares,
    share_holding,
    world_decision_segment,
)
from segattr_utils.world import Problem


def test_cumulative_strength_sorts_descending():
    assert cumulative_strength([0.2, 0.5, 0.3]).tolist() == pytest.approx([0.5, 0.8, 1.0])
    # unnormalised input is renormalised
    assert cumulative_strength([1.0, 3.0]).tolist() == pytest.approx([0.75, 1.0])
    for bad in ([], [0.0, 0.0], [0.5, -0.1], [float("nan")]):
        with pytest.raises(ValueError):
            cumulative_strength(bad)


def test_cdf_at_step_function_of_whole_segments():
    c = [0.5, 0.8, 1.0]  # n = 3
    # x = 0 -> 0 segments; 0.3 -> floor(0.9) = 0; 1/3 -> 1 segment (despite rounding); 0.5 -> 1; 0.7 -> 2; 1 -> 3
    assert cdf_at(c, [0.0, 0.3, 1 / 3, 0.5, 0.7, 1.0], "step").tolist() == pytest.approx([0.0, 0.0, 0.5, 0.5, 0.8, 1.0])
    ten = np.linspace(0.1, 1.0, 10)  # n = 10: 0.3 * 10 is 3.0000000000000004 or 2.9999999999999996
    assert cdf_at(ten, [0.3], "step")[0] == pytest.approx(0.3)
    with pytest.raises(ValueError):
        cdf_at(c, [1.5], "step")


def test_cdf_at_linear_interpolation_between_segment_points():
    c = [0.5, 0.8, 1.0]  # points (0, 0), (1/3, 0.5), (2/3, 0.8), (1, 1)
    # x = 1/6: half of the first segment -> 0.25; x = 0.5: 0.5 + 0.3 / 2 = 0.65; x = 5/6: 0.8 + 0.2 / 2 = 0.9
    assert cdf_at(c, [0.0, 1 / 6, 1 / 3, 0.5, 5 / 6, 1.0]).tolist() == pytest.approx([0.0, 0.25, 0.5, 0.65, 0.9, 1.0])
    assert cdf_at(c, [0.5], "linear")[0] == pytest.approx(0.65)
    with pytest.raises(ValueError):
        cdf_at(c, [0.5], "spline")


def test_mean_cdf_hand_example():
    # Trace A: strengths 0.5, 0.3, 0.2; trace B: four equal strengths (its curve is F(x) = x).
    # Step: at x = 0.25, A holds floor(0.75) = 0 segments -> 0 and B holds 1 -> 0.25: mean 0.125;
    #       at x = 0.5, A holds 1 segment -> 0.5 and B 2 -> 0.5.
    curve = mean_cdf([[0.5, 0.3, 0.2], [0.25] * 4], [0.0, 0.25, 0.5, 1.0], "step")
    assert curve.tolist() == pytest.approx([0.0, 0.125, 0.5, 1.0])
    # Linear: A(0.25) = 0.25 / (1/3) * 0.5 = 0.375, A(0.5) = 0.65; B(x) = x.
    curve = mean_cdf([[0.5, 0.3, 0.2], [0.25] * 4], [0.0, 0.25, 0.5, 1.0])
    assert curve.tolist() == pytest.approx([0.0, (0.375 + 0.25) / 2, (0.65 + 0.5) / 2, 1.0])
    with pytest.raises(ValueError):
        mean_cdf([], [0.0, 1.0])


def test_share_holding_is_k_star_over_n():
    assert share_holding([0.5, 0.3, 0.2], 0.8) == pytest.approx(2 / 3)
    assert share_holding([0.25] * 4, 0.8) == 1.0  # 0.25, 0.5, 0.75 < 0.8 <= 1
    assert share_holding([0.25] * 4, 0.75) == 0.75  # reaches 0.75 at k = 3 despite rounding
    assert share_holding([1.0], 0.8) == 1.0
    with pytest.raises(ValueError):
        share_holding([0.5, 0.5], 0.0)


def test_curve_share_holding_and_grid():
    grid = percent_grid(5)
    assert grid.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert curve_share_holding(grid, [0.0, 0.6, 0.79, 0.8, 1.0], 0.8) == 0.75
    with pytest.raises(ValueError):
        curve_share_holding(grid, [0.0, 0.1, 0.2, 0.3, 0.4], 0.8)


@pytest.mark.parametrize(
    "text, answer, expected",
    [
        ("so 3 + 3 = 6.", "6", True),
        ("the result is \\boxed{6}", "6", True),
        ("we get 16 here", "6", False),
        ("about 6.5 units", "6", False),
        ("x6 is a name", "6", False),
        ("6", "6", True),
        ("so it is -3, done", "-3", True),
        ("so x = \\frac{1}{2}.", "\\frac{1}{2}", True),
        ("value 1.6", "6", False),
    ],
)
def test_contains_answer(text, answer, expected):
    assert contains_answer(text, answer) is expected


def test_decision_segment_text_rule():
    segments = ["Start with 4 and add 12.", "\n\nSo 4 + 12 = 16.", "\n\nWait, 16 again."]
    assert decision_segment(segments, "16") == 1
    assert decision_segment(segments, "99") is None


def test_world_decision_segment_uses_the_final_equation():
    # 3 -> *2 -> 6 -> +1 -> 7 -> -1 -> 6: the answer 6 also appears as an intermediate value in segment 0.
    problem = Problem("p", 3, (("multiply", 2), ("add", 1), ("subtract", 1)))
    segments = ["Okay, 3 * 2 = 6.", "\n\nAnother step, 6 + 1 = 7.", "\n\nWait, so 7 - 1 = 6. So the result is 6."]
    assert problem.answer == "6"
    assert decision_segment(segments, "6") == 0  # the text rule is fooled by the intermediate value
    assert world_decision_segment(problem, segments) == 2
    assert world_decision_segment(problem, segments[:2]) is None


def test_positional_shares_hand_example():
    # Trace a (decision segment 2), trace b (decision 0), trace c (no decision: left out).
    labelled = pd.DataFrame(
        {
            "trace_id": ["a"] * 5 + ["b"] * 2 + ["c"],
            "segment": [0, 1, 2, 3, 4, 0, 1, 0],
            "important": [True, False, True, True, False, True, False, False],
            "high_strength": [True, False, True, True, True, True, False, True],
            "moderate_consistency": [True, True, True, True, False, True, False, False],
        }
    )
    shares = positional_shares(labelled, {"a": 2, "b": 0, "c": None}).set_index("set")
    # important: a0 before, a2 at, a3 after, b0 at -> 1/4 before, 2/4 at, 1/4 after
    assert shares.loc["important", "n"] == 4
    assert shares.loc["important", ["share_before", "share_at", "share_after"]].tolist() == pytest.approx(
        [0.25, 0.5, 0.25]
    )
    # unimportant: a1 before, a4 after, b1 after -> 1/3 before, 2/3 after
    assert shares.loc["unimportant", ["share_before", "share_after"]].tolist() == pytest.approx([1 / 3, 2 / 3])
    # low-strength unimportant: a1 (before), b1 (after); high-consistency unimportant: a4, b1 (both after)
    assert shares.loc["low-strength unimportant", ["n", "share_before"]].tolist() == pytest.approx([2, 0.5])
    assert shares.loc["high-consistency unimportant", ["n", "share_after"]].tolist() == pytest.approx([2, 1.0])
    empty = positional_shares(labelled, {"c": None}).set_index("set")
    assert empty.loc["important", "n"] == 0 and empty.loc["important", "note"] == "no segments in this set"
    assert empty.loc["important", "share_before"] is None or pd.isna(empty.loc["important", "share_before"])
