"""Tests for segattr_utils.measures.trace_stats (Sec. 3.1 trace-level tests, Table 1 seed bootstrap).

Every expected value is computed independently of the module: by hand, or with scipy on hand-typed
numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from segattr_utils.measures.group_stats import compare_groups
from segattr_utils.measures.trace_stats import (
    cluster_bootstrap,
    holm,
    paired_trace_test,
    rank_biserial,
    seed_question_bootstrap,
    within_trace_differences,
)

N_BOOT = 2_000


def _segments(rows):
    return pd.DataFrame(rows, columns=["trace_id", "important", "delta"])


# A 3-trace table with known per-trace means, plus a trace with important segments only.
THREE_TRACES = _segments(
    [
        ("t1", True, 2.0),
        ("t1", True, 4.0),
        ("t1", False, 1.0),  # t1: in 3.0, out 1.0, difference 2.0
        ("t2", False, 1.5),
        ("t2", True, 0.5),
        ("t2", False, 2.5),
        ("t2", False, 3.5),  # t2: in 0.5, out 2.5, difference -2.0
        ("t3", True, 1.0),
        ("t3", False, 1.0),
        ("t3", True, 1.0),
        ("t3", True, 1.0),  # t3: in 1.0, out 1.0, difference 0.0
        ("t4", True, 5.0),  # t4: no unimportant segment
    ]
)


# ----------------------------------------------------------------------------------------------
# within_trace_differences


def test_within_trace_differences_known_means_and_dropped_trace():
    frame = within_trace_differences(THREE_TRACES, "delta")
    assert list(frame.columns) == ["trace_id", "n_in", "n_out", "mean_in", "mean_out", "difference"]
    assert frame["trace_id"].tolist() == ["t1", "t2", "t3"]
    assert frame["n_in"].tolist() == [2, 1, 3]
    assert frame["n_out"].tolist() == [1, 3, 1]
    assert frame["mean_in"].tolist() == pytest.approx([3.0, 0.5, 1.0])
    assert frame["mean_out"].tolist() == pytest.approx([1.0, 2.5, 1.0])
    assert frame["difference"].tolist() == pytest.approx([2.0, -2.0, 0.0])
    assert frame.attrs["dropped_traces"] == ["t4"]


def test_within_trace_differences_custom_columns_and_integer_flags():
    table = pd.DataFrame(
        {"doc": [7, 7, 7, 8, 8], "top": [1, 0, 0, 0, 1], "ppl": [3.0, 1.0, 2.0, 4.0, 1.0]},
    )
    frame = within_trace_differences(table, "ppl", group="top", trace="doc")
    assert frame["doc"].tolist() == [7, 8]
    assert frame["difference"].tolist() == pytest.approx([3.0 - 1.5, 1.0 - 4.0])
    assert frame.attrs["dropped_traces"] == []


@pytest.mark.parametrize("column", ["trace_id", "important", "delta"])
def test_within_trace_differences_missing_column_is_named(column):
    with pytest.raises(ValueError, match=f"'{column}'"):
        within_trace_differences(THREE_TRACES.drop(columns=column), "delta")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_within_trace_differences_rejects_nan_and_inf(bad):
    table = THREE_TRACES.copy()
    table.loc[2, "delta"] = bad
    with pytest.raises(ValueError, match="'delta' contains NaN or inf"):
        within_trace_differences(table, "delta")


def test_within_trace_differences_rejects_non_boolean_groups_and_text_measures():
    table = THREE_TRACES.copy()
    table["important"] = table["important"].astype(int) * 2
    with pytest.raises(ValueError, match="'important'"):
        within_trace_differences(table, "delta")
    table = THREE_TRACES.assign(delta="high")
    with pytest.raises(ValueError, match="'delta' must hold numbers"):
        within_trace_differences(table, "delta")


# ----------------------------------------------------------------------------------------------
# paired_trace_test and rank_biserial

# |d| ranks by hand: 0.3→1, 0.4→2, 0.8→3, 1.1→4, 1.2→5, 1.7→6, 2.5→7, 3.0→8.
# W- = 2 + 4 = 6, W+ = 36 - 6 = 30, r = (30 - 6) / 36 = 2/3.
# Exact two-sided p: subsets of {1..8} with rank sum <= 6 number 1+1+1+2+2+3+4 = 14, p = 2 * 14 / 2^8.
HAND_DIFFERENCES = [1.2, -0.4, 2.5, 0.8, -1.1, 3.0, 0.3, 1.7]


def test_paired_trace_test_matches_scipy_and_hand_ranks():
    result = paired_trace_test(HAND_DIFFERENCES, n_boot=N_BOOT)
    reference = wilcoxon(HAND_DIFFERENCES, zero_method="wilcox", alternative="two-sided")
    assert result["p_value"] == pytest.approx(float(reference.pvalue))
    assert result["p_value"] == pytest.approx(28 / 256)
    assert result["w_plus"] == 30.0 and result["w_minus"] == 6.0
    assert result["rank_biserial"] == pytest.approx(2 / 3)
    assert result["n_traces"] == 8 and result["n_nonzero"] == 8
    assert result["mean_difference"] == pytest.approx(sum(HAND_DIFFERENCES) / 8)
    assert result["median_difference"] == pytest.approx((0.8 + 1.2) / 2)
    assert result["ci_low"] < result["mean_difference"] < result["ci_high"]
    assert result["note"] == ""


def test_paired_trace_test_discards_zeros_and_averages_tied_ranks():
    # Zeros dropped before ranking: |1|,|-2|,|3|,|4| → ranks 1..4, W+ = 8, W- = 2, r = 0.6.
    with_zeros = [0.0, 0.0, 1.0, -2.0, 3.0, 4.0]
    result = paired_trace_test(with_zeros, n_boot=N_BOOT)
    reference = wilcoxon(with_zeros, zero_method="wilcox", alternative="two-sided")
    assert result["p_value"] == pytest.approx(float(reference.pvalue))
    assert result["n_traces"] == 6 and result["n_nonzero"] == 4
    assert result["rank_biserial"] == pytest.approx(0.6)
    assert "2 zero difference" in result["note"]
    # Ties: |1|,|1|,|-1| share rank 2, |2| has rank 4: W+ = 8, W- = 2.
    assert rank_biserial([1.0, 1.0, -1.0, 2.0]) == pytest.approx(0.6)
    assert rank_biserial([0.0, 0.0]) is None
    assert rank_biserial([-0.5, -2.0]) == -1.0


def test_paired_trace_test_too_few_nonzero_differences_gives_none_and_note():
    result = paired_trace_test([0.0, 0.0, 0.5], n_boot=N_BOOT)
    assert result["p_value"] is None and result["statistic"] is None
    assert "1 non-zero difference" in result["note"]
    assert result["mean_difference"] == pytest.approx(0.5 / 3)
    assert result["rank_biserial"] == 1.0
    empty = paired_trace_test([], n_boot=N_BOOT)
    assert empty["n_traces"] == 0 and empty["mean_difference"] is None and empty["ci_low"] is None
    assert empty["note"]


def test_paired_trace_test_bootstrap_interval():
    constant = paired_trace_test([0.5] * 6, n_boot=N_BOOT)
    assert constant["ci_low"] == pytest.approx(0.5) and constant["ci_high"] == pytest.approx(0.5)
    # On 400 standard-normal differences the 95% interval of the mean is about mean ± 1.96 sd / sqrt(n).
    d = np.random.default_rng(11).normal(size=400)
    result = paired_trace_test(d, n_boot=N_BOOT, seed=3)
    half_width = 1.96 * d.std(ddof=1) / np.sqrt(d.size)
    assert result["ci_low"] == pytest.approx(d.mean() - half_width, abs=0.25 * half_width)
    assert result["ci_high"] == pytest.approx(d.mean() + half_width, abs=0.25 * half_width)
    assert paired_trace_test(d, n_boot=N_BOOT, seed=3) == result  # seeded: reproducible


def test_paired_trace_test_rejects_nan_and_bad_arguments():
    with pytest.raises(ValueError, match="NaN or inf"):
        paired_trace_test([1.0, float("nan")])
    with pytest.raises(ValueError, match="n_boot"):
        paired_trace_test([1.0, 2.0], n_boot=0)
    with pytest.raises(ValueError, match="confidence"):
        paired_trace_test([1.0, 2.0], confidence=95)


def test_trace_level_test_does_not_inflate_where_pooled_segments_look_significant():
    # One long trace where important segments are clearly higher dominates the pooled segments; the
    # nine short traces show no consistent direction.
    rows = [("long", True, 1.0 + 0.001 * i) for i in range(100)]
    rows += [("long", False, 0.0 + 0.001 * i) for i in range(100)]
    for k, shift in enumerate([0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8, -0.9]):
        trace = f"short{k}"
        rows += [(trace, True, 0.5 + shift), (trace, True, 0.52 + shift)]
        rows += [(trace, False, 0.5), (trace, False, 0.52)]
    table = _segments(rows)

    pooled = compare_groups(
        table.loc[table["important"], "delta"], table.loc[~table["important"], "delta"], "important", "unimportant"
    )
    assert pooled["p_value"] < 1e-10  # segments as independent observations: "highly significant"

    differences = within_trace_differences(table, "delta")["difference"]
    assert len(differences) == 10
    trace_level = paired_trace_test(differences, n_boot=N_BOOT)
    reference = wilcoxon(
        [1.0, 0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8, -0.9], zero_method="wilcox", alternative="two-sided"
    )
    assert trace_level["p_value"] == pytest.approx(float(reference.pvalue))
    assert trace_level["p_value"] > 0.5


# ----------------------------------------------------------------------------------------------
# cluster_bootstrap


def test_cluster_bootstrap_collapses_when_all_clusters_are_identical():
    table = pd.DataFrame({"trace_id": np.repeat(["a", "b", "c", "d"], 3), "value": [1.0, 2.0, 3.0] * 4})
    result = cluster_bootstrap(table, lambda t: t["value"].mean(), n_boot=N_BOOT)
    assert result["estimate"] == pytest.approx(2.0)
    assert result["ci_low"] == pytest.approx(2.0) and result["ci_high"] == pytest.approx(2.0)
    assert result["n_clusters"] == 4 and result["n_invalid_draws"] == 0


def test_cluster_bootstrap_counts_a_cluster_drawn_twice_as_two_clusters():
    table = pd.DataFrame({"trace_id": ["a", "a", "b", "c"], "value": [1.0, 2.0, 3.0, 4.0]})
    result = cluster_bootstrap(table, lambda t: t["trace_id"].nunique(), n_boot=200)
    assert result["estimate"] == 3
    assert result["ci_low"] == 3 and result["ci_high"] == 3


def test_cluster_bootstrap_is_wider_than_a_row_level_interval_on_clustered_data():
    # 10 traces with a strong trace effect, 50 segments each: rows are far from independent.
    rng = np.random.default_rng(5)
    effects = rng.normal(scale=1.0, size=10)
    table = pd.DataFrame(
        {
            "trace_id": np.repeat(np.arange(10), 50),
            "value": np.repeat(effects, 50) + rng.normal(scale=0.1, size=500),
        }
    )
    result = cluster_bootstrap(table, lambda t: t["value"].mean(), n_boot=N_BOOT)
    row_level_half_width = 1.96 * table["value"].std(ddof=1) / np.sqrt(len(table))
    assert result["ci_high"] - result["ci_low"] > 4 * row_level_half_width
    # ... and close to the interval from the 10 trace means (independent units).
    trace_means = table.groupby("trace_id")["value"].mean()
    trace_half_width = 1.96 * trace_means.std(ddof=1) / np.sqrt(10)
    assert (result["ci_high"] - result["ci_low"]) / 2 == pytest.approx(trace_half_width, rel=0.35)


def test_cluster_bootstrap_counts_invalid_draws_and_validates():
    table = pd.DataFrame({"trace_id": ["a", "b"], "value": [1.0, 2.0]})

    def spread(t):  # undefined when a resample holds one cluster twice
        return float(t["value"].max() - t["value"].min()) if t["value"].nunique() > 1 else float("nan")

    result = cluster_bootstrap(table, spread, n_boot=N_BOOT)
    assert result["n_invalid_draws"] == pytest.approx(N_BOOT / 2, rel=0.1)
    assert "NaN or inf" in result["note"]
    assert result["ci_low"] == result["ci_high"] == 1.0
    with pytest.raises(ValueError, match="'trace_id'"):
        cluster_bootstrap(table.drop(columns="trace_id"), spread)
    with pytest.raises(ValueError, match="not finite|nothing to bootstrap"):
        cluster_bootstrap(table.iloc[:1], spread)


# ----------------------------------------------------------------------------------------------
# share_comparison (a share of segments, important vs unimportant, at trace level)


def _shares(rows):
    return pd.DataFrame(rows, columns=["trace_id", "important", "hit"])


# t1: 1 of 2 important and 0 of 2 unimportant segments hit (+0.5); t2: 0 of 1 vs 2 of 3 (-2/3); t3: 2 of 2
# vs 1 of 1 (0); t4: 1 of 3 vs 0 of 1 (+1/3); t5: important segments only (left out, counted).
SHARE_TRACES = _shares(
    [("t1", True, True), ("t1", True, False), ("t1", False, False), ("t1", False, False)]
    + [("t2", True, False), ("t2", False, True), ("t2", False, True), ("t2", False, False)]
    + [("t3", True, True), ("t3", True, True), ("t3", False, True)]
    + [("t4", True, True), ("t4", True, False), ("t4", True, False), ("t4", False, False)]
    + [("t5", True, True), ("t5", True, False)]
)


def test_share_comparison_within_trace_share_differences_by_hand():
    from segattr_utils.measures.trace_stats import share_comparison

    result = share_comparison(SHARE_TRACES, "hit", n_boot=N_BOOT)
    # pooled: important 10 segments, 5 hits; unimportant 7 segments, 3 hits
    assert (result["n_in"], result["k_in"], result["n_out"], result["k_out"]) == (10, 5, 7, 3)
    assert result["share_in"] == pytest.approx(0.5) and result["share_out"] == pytest.approx(3 / 7)
    assert result["pooled_difference"] == pytest.approx(0.5 - 3 / 7)
    differences = [0.5, -2 / 3, 0.0, 1 / 3]
    assert result["n_traces"] == 4 and result["traces_with_one_group"] == 1 and result["n_nonzero"] == 3
    assert result["trace_difference"] == pytest.approx(np.mean(differences))
    # non-zero |d| ranks: 1/3 -> 1, 1/2 -> 2, 2/3 -> 3; W+ = 1 + 2 = 3, W- = 3
    assert result["rank_biserial"] == pytest.approx(0.0)
    assert result["trace_p"] == pytest.approx(wilcoxon(differences, zero_method="wilcox").pvalue)
    assert "1 trace(s) with segments in one group only" in result["note"]
    assert "1 zero difference(s) discarded" in result["note"]
    # Fisher on the pooled [[5, 5], [3, 4]] (margins 10/7 segments, 8 hits): treats the 17 segments as
    # independent
    from math import comb

    probability = {k: comb(10, k) * comb(7, 8 - k) / comb(17, 8) for k in range(1, 9)}
    assert result["pooled_segments_fisher_p"] == pytest.approx(
        sum(p for p in probability.values() if p <= probability[5] * (1 + 1e-7))
    )
    assert result["pooled_segments_odds_ratio"] == pytest.approx((5 * 4) / (5 * 3))


def test_share_comparison_pooled_interval_is_cluster_bootstrap_of_the_pooled_difference():
    from segattr_utils.measures.trace_stats import share_comparison

    rng = np.random.default_rng(2)
    table = _shares(
        [(f"t{t}", bool(rng.random() < 0.6), bool(rng.random() < 0.3)) for t in rng.integers(0, 30, size=200)]
    )

    def pooled(sample):
        hits = sample["hit"].to_numpy()
        flags = sample["important"].to_numpy()
        if flags.all() or not flags.any():
            return float("nan")
        return hits[flags].mean() - hits[~flags].mean()

    for n_boot in (1, 777, 3_000):  # the draws are cluster_bootstrap's, whatever the block size
        result = share_comparison(table, "hit", n_boot=n_boot, seed=11)
        expected = cluster_bootstrap(table, pooled, n_boot=n_boot, seed=11)
        assert result["pooled_difference"] == pytest.approx(expected["estimate"])
        assert (result["pooled_ci_low"], result["pooled_ci_high"]) == pytest.approx(
            (expected["ci_low"], expected["ci_high"])
        )
        assert result["pooled_invalid_draws"] == expected["n_invalid_draws"]


def test_share_comparison_empty_group_and_no_outcome_give_none_with_notes():
    from segattr_utils.measures.trace_stats import share_comparison

    only_important = _shares([("a", True, True), ("b", True, False)])
    result = share_comparison(only_important, "hit", n_boot=N_BOOT)
    assert result["share_out"] is None and result["pooled_difference"] is None
    assert result["pooled_ci_low"] is None and result["pooled_segments_fisher_p"] is None
    assert result["trace_difference"] is None and result["trace_p"] is None and result["rank_biserial"] is None
    assert result["n_traces"] == 0 and result["traces_with_one_group"] == 2
    assert "no segment with important False" in result["note"] and "no traces" in result["note"]
    # nothing hit anywhere: every within-trace difference is 0, the odds ratio has a zero margin
    nothing = _shares([("a", True, False), ("a", False, False), ("b", True, False), ("b", False, False)])
    result = share_comparison(nothing, "hit", n_boot=N_BOOT)
    assert result["trace_difference"] == 0.0 and result["trace_p"] is None and result["n_nonzero"] == 0
    assert result["pooled_segments_fisher_p"] == pytest.approx(1.0)
    assert result["pooled_segments_odds_ratio"] is None and "odds ratio undefined" in result["note"]
    assert not any(isinstance(v, float) and np.isnan(v) for v in result.values())


def test_share_comparison_validates_its_columns():
    from segattr_utils.measures.trace_stats import share_comparison

    with pytest.raises(ValueError, match="'hit'"):
        share_comparison(SHARE_TRACES.drop(columns="hit"), "hit")
    with pytest.raises(ValueError, match="'hit' must hold only True/False"):
        share_comparison(SHARE_TRACES.assign(hit=0.5), "hit")
    with pytest.raises(ValueError, match="'important' must hold only True/False"):
        share_comparison(SHARE_TRACES.assign(important=None), "hit")
    with pytest.raises(ValueError, match="'trace_id' has missing values"):
        share_comparison(SHARE_TRACES.assign(trace_id=None), "hit")


def test_none_preserving_frame_keeps_none_where_pandas_would_write_nan():
    from segattr_utils.measures.trace_stats import none_preserving_frame

    frame = none_preserving_frame([{"a": 0.5, "b": 1, "c": None}, {"a": None, "b": 2, "c": None}])
    assert frame["a"].tolist() == [0.5, None] and frame["c"].tolist() == [None, None]
    assert frame["b"].dtype == np.int64


# ----------------------------------------------------------------------------------------------
# holm


def test_holm_textbook_example_in_input_order():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1, then monotone
    assert holm([]) == []


def test_holm_passes_none_through_and_keeps_the_shape():
    adjusted = holm([0.01, None, 0.04, 0.03, 0.005])
    assert adjusted[1] is None
    assert [adjusted[i] for i in (0, 2, 3, 4)] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    by_name = holm({"delta": 0.04, "bleu": None, "ppl": 0.01, "entropy": 0.03})
    assert list(by_name) == ["delta", "bleu", "ppl", "entropy"]
    assert by_name["bleu"] is None
    # m = 3: 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 → 0.06
    assert by_name["ppl"] == pytest.approx(0.03)
    assert by_name["entropy"] == pytest.approx(0.06) and by_name["delta"] == pytest.approx(0.06)
    assert holm([None, None]) == [None, None]
    series = holm(pd.Series([0.02, 0.01], index=["x", "y"]))
    assert list(series.index) == ["x", "y"] and series.tolist() == pytest.approx([0.02, 0.02])


def test_holm_rejects_nan_and_values_outside_unit_interval():
    with pytest.raises(ValueError, match="NaN"):
        holm([0.01, float("nan")])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm({"a": 1.5})


# ----------------------------------------------------------------------------------------------
# seed_question_bootstrap


def _results(differences_by_seed, n_questions=10, seeds_b=None):
    """Scores of variants a and b: b has a fixed pattern per (seed, question), a = b + the seed's
    difference (one number or one per question)."""
    rows = []
    for seed, difference in differences_by_seed.items():
        for q in range(n_questions):
            base = 0.2 + 0.05 * ((3 * q + seed) % 7)
            shift = difference[q] if isinstance(difference, list) else difference
            rows.append(("a", seed, q, base + shift))
            if seeds_b is None or seed in seeds_b:
                rows.append(("b", seed, q, base))
    return pd.DataFrame(rows, columns=["variant", "seed", "question_id", "correct"])


def test_seed_question_bootstrap_constant_advantage_collapses_to_it():
    results = _results({0: 0.1, 1: 0.1, 2: 0.1})
    out = seed_question_bootstrap(results, "a", "b", n_boot=N_BOOT)
    assert out["estimate"] == pytest.approx(0.1)
    assert out["ci_low"] == pytest.approx(0.1) and out["ci_high"] == pytest.approx(0.1)
    assert out["p_value"] == 0.0
    assert out["n_seeds"] == 3 and out["n_questions"] == 10
    assert out["seeds_used"] == [0, 1, 2] and out["seeds_dropped"] == []
    assert out["seed_differences"] == pytest.approx({0: 0.1, 1: 0.1, 2: 0.1})
    assert out["note"] == ""
    reverse = seed_question_bootstrap(results, "b", "a", n_boot=N_BOOT)
    assert reverse["estimate"] == pytest.approx(-0.1) and reverse["p_value"] == 0.0


def test_seed_question_bootstrap_drops_and_lists_a_seed_missing_for_one_variant():
    results = _results({0: 0.1, 1: 0.3, 2: 0.2}, seeds_b={0, 1})
    out = seed_question_bootstrap(results, "a", "b", n_boot=N_BOOT)
    assert out["seeds_used"] == [0, 1] and out["seeds_dropped"] == [2]
    assert out["n_seeds"] == 2
    assert "[2]" in out["note"] and "'a'" in out["note"]
    assert out["seed_differences"] == pytest.approx({0: 0.1, 1: 0.3})
    assert out["estimate"] == pytest.approx(0.2)


def test_seed_question_bootstrap_carries_seed_variance():
    # Seeds disagree in sign (+0.5, -0.5, +0.5) while questions agree within a seed: a draw's value
    # depends on the drawn seeds only and is <= 0 iff the -0.5 seed is drawn at least twice of three,
    # with probability 3 (1/3)^2 (2/3) + (1/3)^3 = 7/27; the two-sided p-value is 2 * 7/27. The extremes
    # -0.5 (probability 1/27) and +0.5 (8/27) both lie inside the 95% interval.
    results = _results({0: 0.5, 1: -0.5, 2: 0.5})
    results.loc[results["variant"] == "b", "correct"] = 0.5
    results.loc[results["variant"] == "a", "correct"] = np.where(
        results.loc[results["variant"] == "a", "seed"] == 1, 0.0, 1.0
    )
    out = seed_question_bootstrap(results, "a", "b", n_boot=N_BOOT)
    assert out["estimate"] == pytest.approx(1 / 6)
    assert out["ci_low"] == pytest.approx(-0.5) and out["ci_high"] == pytest.approx(0.5)
    assert out["p_value"] == pytest.approx(14 / 27, abs=0.07)


def test_seed_question_bootstrap_single_common_seed_says_so():
    results = _results({0: [0.1, -0.1, 0.3, 0.0, 0.2, 0.1, 0.0, 0.2, -0.1, 0.3], 4: 0.2}, seeds_b={0})
    out = seed_question_bootstrap(results, "a", "b", n_boot=N_BOOT)
    assert out["n_seeds"] == 1 and out["seeds_used"] == [0] and out["seeds_dropped"] == [4]
    assert "seed variance cannot be estimated" in out["note"]
    assert out["estimate"] == pytest.approx(0.1)
    assert out["ci_low"] < 0.1 < out["ci_high"]


def test_seed_question_bootstrap_pairs_questions_and_averages_repeats():
    results = pd.DataFrame(
        [
            ("a", 0, "q1", 1.0),
            ("a", 0, "q1", 0.0),  # two samples of q1: a scores 0.5 on it
            ("a", 0, "q2", 1.0),
            ("a", 0, "q3", 1.0),  # q3 has no run of b: dropped
            ("b", 0, "q1", 0.0),
            ("b", 0, "q2", 1.0),
        ],
        columns=["variant", "seed", "question_id", "correct"],
    )
    out = seed_question_bootstrap(results, "a", "b", n_boot=N_BOOT)
    assert out["n_questions"] == 2 and out["questions_dropped"] == ["q3"]
    assert out["estimate"] == pytest.approx((0.5 - 0.0 + 1.0 - 1.0) / 2)


def test_seed_question_bootstrap_no_common_seed_gives_none():
    results = _results({0: 0.1, 1: 0.1}, seeds_b=set())
    results = pd.concat([results, pd.DataFrame([("b", 9, 0, 0.5)], columns=results.columns)])
    out = seed_question_bootstrap(results, "a", "b", n_boot=N_BOOT)
    assert out["estimate"] is None and out["p_value"] is None and out["n_seeds"] == 0
    assert out["seeds_dropped"] == [0, 1, 9]
    assert "no seed common" in out["note"]


def test_seed_question_bootstrap_clear_errors():
    results = _results({0: 0.1, 1: 0.1})
    with pytest.raises(ValueError, match="'correct'"):
        seed_question_bootstrap(results.drop(columns="correct"), "a", "b")
    nan_scores = results.copy()
    nan_scores.loc[0, "correct"] = np.nan
    with pytest.raises(ValueError, match="'correct' contains NaN or inf"):
        seed_question_bootstrap(nan_scores, "a", "b")
    with pytest.raises(ValueError, match="'c'"):
        seed_question_bootstrap(results, "a", "c")
    with pytest.raises(ValueError, match="nothing to compare"):
        seed_question_bootstrap(results, "a", "a")
    with pytest.raises(ValueError, match="'seed'"):
        seed_question_bootstrap(results.assign(seed=[None] * len(results)), "a", "b")
