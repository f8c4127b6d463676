"""Tests of the faithfulness summaries over traces (``segattr_utils.measures.faithfulness_stats``):
medians, means and tests checked against values worked out by hand and against scipy's Wilcoxon
test called directly on the differences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from segattr_utils.measures.faithfulness_stats import (
    TEST_COLUMNS,
    curve_on_grid,
    mean_curves,
    ordering_summary,
    paired_differences,
    paired_ordering_tests,
)


def rows_of(values: dict[str, list[float]], insertion_shift: float = 0.0, normalised=None) -> pd.DataFrame:
    """Per-trace rows: ``values`` {ordering: deletion areas of traces t0, t1, ...}; the other scores
    derived from them (insertion = deletion + shift, comprehensiveness = 2x, sufficiency = -x, AOPC = 3x)."""
    rows = []
    for ordering, areas in values.items():
        for i, area in enumerate(areas):
            rows.append(
                {
                    "trace_id": f"t{i}",
                    "ordering": ordering,
                    "deletion_area": area,
                    "insertion_area": area + insertion_shift,
                    "deletion_auc_normalised": None if normalised is None else normalised[i],
                    "insertion_auc_normalised": None if normalised is None else normalised[i],
                    "comprehensiveness_10": 2 * area,
                    "sufficiency_10": -area,
                    "budget_share_10": 0.25,
                    "aopc": 3 * area,
                }
            )
    frame = pd.DataFrame(rows)
    for column in ("deletion_auc_normalised", "insertion_auc_normalised"):
        frame[column] = pd.array([r[column] for r in rows], dtype="Float64")
    return frame


def test_ordering_summary_by_hand():
    rows = rows_of({"ig": [1.0, 2.0, 6.0], "random": [0.5, 0.5, 2.0]}, insertion_shift=1.0, normalised=[0.8, None, 0.4])
    summary = ordering_summary(rows, ["ig", "random"])
    assert summary["ordering"].tolist() == ["ig", "random"]
    ig = summary.iloc[0]
    assert ig["n_traces"] == 3
    assert ig["deletion_area_median"] == pytest.approx(2.0) and ig["deletion_area_mean"] == pytest.approx(3.0)
    assert ig["insertion_area_median"] == pytest.approx(3.0) and ig["insertion_area_mean"] == pytest.approx(4.0)
    assert ig["comprehensiveness_10_mean"] == pytest.approx(6.0) and ig["sufficiency_10_mean"] == pytest.approx(-3.0)
    assert ig["budget_share_10_mean"] == pytest.approx(0.25)
    assert ig["aopc_median"] == pytest.approx(6.0) and ig["aopc_mean"] == pytest.approx(9.0)
    # the normalised areas: over the 2 traces where they are defined
    assert ig["normalised_traces"] == 2 and ig["deletion_auc_normalised_median"] == pytest.approx(0.6)
    assert "undefined on 1 of 3 traces" in ig["note"]
    assert summary.iloc[1]["deletion_area_median"] == pytest.approx(0.5)


def test_ordering_summary_none_when_nothing_normalised_and_nan_raises():
    rows = rows_of({"ig": [1.0, 2.0]})
    summary = ordering_summary(rows)
    assert summary.iloc[0]["deletion_auc_normalised_median"] is None and summary.iloc[0]["normalised_traces"] == 0
    broken = rows.copy()
    broken.loc[0, "deletion_area"] = np.nan
    with pytest.raises(ValueError, match="'deletion_area' holds NaN"):
        ordering_summary(broken)
    with pytest.raises(ValueError, match="no rows for the orderings"):
        ordering_summary(rows, ["ig", "oracle"])
    with pytest.raises(ValueError, match="lack the columns"):
        ordering_summary(rows.drop(columns=["aopc"]))


def test_paired_ordering_tests_against_scipy_and_holm_by_hand():
    ig = [3.0, 2.5, 4.0, 1.0, 2.2, 5.0, 0.7]
    rnd = [1.0, 2.0, 3.1, 1.5, 1.0, 2.0, 0.1]
    length = [3.1, 2.4, 4.2, 0.9, 2.0, 5.5, 0.75]
    rows = rows_of({"ig": ig, "random": rnd, "length": length}, insertion_shift=0.3)
    tests = paired_ordering_tests(rows, "ig", n_boot=2000, seed=1)
    assert list(tests.columns) == list(TEST_COLUMNS)
    assert tests[["metric", "ordering"]].values.tolist() == [
        ["deletion_area", "random"],
        ["deletion_area", "length"],
        ["insertion_area", "random"],
        ["insertion_area", "length"],
    ]
    d = np.array(ig) - np.array(rnd)
    row = tests.iloc[0]
    assert row["n_traces"] == 7 and row["reference_better"] == pytest.approx(6 / 7)
    assert row["mean_difference"] == pytest.approx(d.mean()) and row["median_difference"] == pytest.approx(np.median(d))
    assert row["p_value"] == pytest.approx(wilcoxon(d).pvalue)
    assert row["ci_low"] < d.mean() < row["ci_high"]
    # Holm over the 4 tests, by hand (insertion = deletion + a constant: the same differences, the same p-values)
    p = tests["p_value"].to_numpy()
    order = np.argsort(p, kind="stable")
    expected = np.maximum.accumulate(np.minimum(1.0, (4 - np.arange(4)) * p[order]))
    np.testing.assert_allclose(tests["p_holm"].to_numpy()[order], expected)


def test_paired_tests_orient_lower_is_better_metrics():
    rows = rows_of({"ig": [1.0, 2.0, 3.0], "random": [2.0, 4.0, 3.5]})
    tests = paired_ordering_tests(rows, "ig", {"sufficiency_10": False}, n_boot=100)
    # sufficiency = -area: ig's is higher (worse) by 1, 2, 0.5 ... negated, so positive = ig better
    assert tests.iloc[0]["mean_difference"] == pytest.approx(-(1.0 + 2.0 + 0.5) / 3)
    assert tests.iloc[0]["reference_better"] == 0.0
    with pytest.raises(ValueError, match="reference ordering 'oracle'"):
        paired_ordering_tests(rows, "oracle")


def test_paired_differences_use_traces_with_both_orderings():
    rows = rows_of({"ig": [1.0, 2.0, 3.0], "random": [0.5, 1.0]})
    d = paired_differences(rows, "deletion_area", "ig", "random")
    assert d.to_dict() == {"t0": 0.5, "t1": 1.0}
    tests = paired_ordering_tests(rows, "ig", n_boot=100)
    assert tests.iloc[0]["n_traces"] == 2 and tests.iloc[0]["p_value"] is not None


def test_too_few_traces_give_none_with_a_note_not_nan():
    tests = paired_ordering_tests(rows_of({"ig": [1.0], "random": [0.5]}), "ig", n_boot=100)
    assert tests.iloc[0]["p_value"] is None and tests.iloc[0]["p_holm"] is None
    assert "at least 2" in tests.iloc[0]["note"]


def test_curve_on_grid_by_hand_with_repeated_fractions():
    # a 0-token segment repeats x = 0.5: the curve takes the value after it (2.0), then rises to 4 at x = 1
    values = curve_on_grid([0.0, 0.5, 0.5, 1.0], [0.0, 1.0, 2.0, 4.0], [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(values, [0.0, 1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="non-decreasing"):
        curve_on_grid([0.0, 0.6, 0.5, 1.0], [0, 1, 2, 3], [0.5])
    with pytest.raises(ValueError, match="NaN"):
        curve_on_grid([0.0, 1.0], [0.0, np.nan], [0.5])


def test_mean_curves_by_hand():
    curves = [
        {
            "ordering": "ig",
            "fractions": [0.0, 0.5, 1.0],
            "deletion": [-1.0, -3.0, -3.0],
            "insertion": [-3.0, -1.0, -1.0],
        },
        {"ordering": "ig", "fractions": [0.0, 1.0], "deletion": [0.0, -1.0], "insertion": [-1.0, 0.0]},
        {"ordering": "random", "fractions": [0.0, 1.0], "deletion": [0.0, -2.0], "insertion": [-2.0, 0.0]},
    ]
    table = mean_curves(curves, [0.0, 0.5, 1.0], ["random", "ig", "oracle"])
    assert table["ordering"].tolist() == ["random"] * 3 + ["ig"] * 3
    ig = table[table["ordering"] == "ig"]
    # drops: trace 1 [0, 2, 2], trace 2 [0, .5, 1] -> mean [0, 1.25, 1.5]
    np.testing.assert_allclose(ig["deletion_drop"], [0.0, 1.25, 1.5])
    np.testing.assert_allclose(ig["insertion_gain"], [0.0, 1.25, 1.5])
    assert (ig["n_traces"] == 2).all()
    assert mean_curves([], [0.0, 1.0]).empty
