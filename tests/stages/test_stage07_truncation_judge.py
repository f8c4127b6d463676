"""Stage 07's summaries of the judgements: the truncated share among important vs unimportant segments,
tested at trace level (within-trace share differences, Wilcoxon signed-rank over traces, a bootstrap over
traces for the pooled share difference), with the segment-pooled Fisher exact test beside it, and the
paper-vs-run rows that quote them. Expected values are computed by hand."""

from __future__ import annotations

from itertools import combinations
from math import comb

import pandas as pd
import pytest

from segattr_utils.config import load_profile
from segattr_utils.measures.group_stats import format_p
from segattr_utils.measures.trace_stats import cluster_bootstrap
from segattr_utils.stages.stage07_truncation_judge import comparison_rows, rounds_table, truncated_share_table


def _judgements(traces: dict, selection_is_groups: bool = True) -> pd.DataFrame:
    """Judged segments from ``{trace: [(important, label, n), ...]}``: ``n`` segments of the group with the
    label (1 truncated, 0 complete, None undecided); the ground truth equals the label (undecided: True)."""
    rows = []
    for trace, groups in traces.items():
        for important, label, n in groups:
            rows += [
                {
                    "trace_id": trace,
                    "segment": 0,
                    "important": important,
                    "important_selection": important if selection_is_groups else not important,
                    "label": label,
                    "undecided": label is None,
                    "truth": True if label is None else bool(label),
                    "rounds": 2 if label is None else 1,
                    "round1_finished": True,
                    "round1_n_tokens": 5,
                }
            ] * n
    frame = pd.DataFrame(rows)
    frame["label"] = frame["label"].astype("Int64")
    frame["truth"] = frame["truth"].astype("boolean")
    return frame


def test_truncated_share_and_pooled_fisher_test_by_hand():
    table = _judgements(
        {
            "t1": [(True, 1, 2), (True, 0, 8), (False, 1, 6), (False, 0, 4), (False, None, 1)],
        }
    )
    table = truncated_share_table(table).set_index(["grouping", "group"])
    important, unimportant = table.loc[("sec3.1", "important")], table.loc[("sec3.1", "unimportant")]
    assert (important["decided"], important["judged_truncated"]) == (10, 2)
    assert important["truncated_share"] == pytest.approx(0.2)
    assert (unimportant["segments"], unimportant["decided"], unimportant["undecided"]) == (11, 10, 1)
    assert unimportant["truncated_share"] == pytest.approx(0.6)
    assert unimportant["truth_share"] == pytest.approx(7 / 11)
    # hand computation: hypergeometric two-sided p for [[2, 8], [6, 4]] (row sums 10/10, column sums 8/12)
    probabilities = [comb(8, k) * comb(12, 10 - k) / comb(20, 10) for k in range(0, 9)]
    observed = comb(8, 2) * comb(12, 8) / comb(20, 10)
    expected_p = sum(p for p in probabilities if p <= observed * (1 + 1e-7))
    assert important["pooled_segments_fisher_p"] == pytest.approx(expected_p)
    assert important["pooled_segments_odds_ratio"] == pytest.approx((2 * 4) / (8 * 6))
    # one trace: one within-trace difference (0.2 - 0.6), too few for the signed-rank test
    assert important["n_traces"] == 1 and important["trace_share_difference"] == pytest.approx(-0.4)
    assert important["trace_p"] is None and "at least 2" in important["note"]


# One long trace whose unimportant segments are all truncated dominates the pooled shares (important 7 of
# 17 decided segments truncated, unimportant 41 of 51: Fisher p tiny), while in 5 of the 6 traces with decided
# segments in both groups the important segments are the more often truncated.
POOLING_DISAGREES = {
    "long": [(True, 0, 2), (False, 1, 40)],  # 0/2 vs 40/40: -1
    "t1": [(True, 1, 1), (True, 0, 1), (False, 0, 1)],  # 1/2 vs 0/1: +1/2
    "t2": [(True, 1, 1), (False, 1, 1), (False, 0, 3)],  # 1/1 vs 1/4: +3/4
    "t3": [(True, 1, 1), (True, 0, 3), (False, 0, 2)],  # 1/4 vs 0/2: +1/4
    "t4": [(True, 1, 2), (True, 0, 1), (False, 0, 1)],  # 2/3 vs 0/1: +2/3
    "t5": [(True, 1, 1), (True, 0, 2), (False, 0, 3)],  # 1/3 vs 0/3: +1/3
    "undecided_unimportant": [(True, 0, 1), (False, None, 2)],  # decided segments in one group only
    "only_important": [(True, 1, 1)],  # no unimportant segment
}


def test_truncated_share_test_is_at_trace_level_where_pooling_disagrees():
    judgements = _judgements(POOLING_DISAGREES)
    table = truncated_share_table(judgements, seed=5).set_index(["grouping", "group"])
    important, unimportant = table.loc[("sec3.1", "important")], table.loc[("sec3.1", "unimportant")]
    assert (important["decided"], important["judged_truncated"]) == (17, 7)
    assert (unimportant["segments"], unimportant["decided"], unimportant["judged_truncated"]) == (53, 51, 41)
    assert important["truncated_share"] == pytest.approx(7 / 17)
    assert unimportant["truncated_share"] == pytest.approx(41 / 51)

    differences = [-1, 1 / 2, 3 / 4, 1 / 4, 2 / 3, 1 / 3]
    assert important["n_traces"] == 6 and important["n_nonzero"] == 6
    assert important["traces_with_one_group"] == 2  # the undecided-only and the important-only trace, counted
    assert "2 trace(s) with segments in one group only" in important["note"]
    assert important["trace_share_difference"] == pytest.approx(sum(differences) / 6)  # +0.25
    assert important["trace_ci_low"] <= sum(differences) / 6 <= important["trace_ci_high"]
    # exact signed-rank p by hand: |d| ranks 1..6, the one negative difference has rank 6: W- = 6, W+ = 15;
    # p = 2 P(W <= 6) over the 2^6 equally likely sign patterns = 28/64
    at_most_6 = sum(1 for k in range(7) for ranks in combinations(range(1, 7), k) if sum(ranks) <= 6)
    assert important["trace_p"] == pytest.approx(2 * at_most_6 / 2**6)
    assert important["rank_biserial"] == pytest.approx((15 - 6) / 21)

    assert important["pooled_share_difference"] == pytest.approx(7 / 17 - 41 / 51)
    decided = judgements[~judgements["undecided"]]

    def pooled(sample):
        truncated = sample["label"] == 1
        return truncated[sample["important"]].mean() - truncated[~sample["important"]].mean()

    expected = cluster_bootstrap(decided, pooled, n_boot=10_000, seed=5)
    assert (important["pooled_ci_low"], important["pooled_ci_high"]) == pytest.approx(
        (expected["ci_low"], expected["ci_high"])
    )
    # the pooled Fisher test on [[7, 10], [41, 10]] (margins 17/51 decided, 48 truncated) looks decisive
    probability = {k: comb(17, k) * comb(51, 48 - k) / comb(68, 48) for k in range(0, 18)}
    fisher = sum(p for p in probability.values() if p <= probability[7] * (1 + 1e-7))
    assert important["pooled_segments_fisher_p"] == pytest.approx(fisher)
    assert important["pooled_segments_fisher_p"] < 0.01 < 0.4 < important["trace_p"]
    for column in ("n_traces", "trace_p", "pooled_segments_fisher_p", "pooled_ci_low"):
        assert important[column] == unimportant[column]


def test_selection_grouping_gets_its_own_trace_level_test():
    judgements = _judgements(POOLING_DISAGREES, selection_is_groups=False)  # selection flips the groups
    table = truncated_share_table(judgements).set_index(["grouping", "group"])
    groups, selection = table.loc[("sec3.1", "important")], table.loc[("selection", "unimportant")]
    assert selection["trace_share_difference"] == pytest.approx(-groups["trace_share_difference"])
    assert selection["trace_p"] == pytest.approx(groups["trace_p"])
    assert selection["truncated_share"] == pytest.approx(7 / 17)


def test_an_empty_group_gives_none_with_a_note():
    table = truncated_share_table(_judgements({"a": [(True, 1, 1)], "b": [(True, 0, 2)]}))
    row = table[(table["grouping"] == "sec3.1") & (table["group"] == "unimportant")].iloc[0]
    assert row["segments"] == 0 and row["truncated_share"] is None
    for column in ("trace_share_difference", "trace_p", "pooled_share_difference", "pooled_segments_fisher_p"):
        assert row[column] is None, column
    assert row["n_traces"] == 0 and row["traces_with_one_group"] == 2
    assert "no decided judgement in this group" in row["note"]
    assert "no pooled share difference, no interval, no Fisher test" in row["note"]


def test_comparison_rows_quote_the_trace_level_test():
    profile = load_profile("smoke")
    judgements = _judgements(POOLING_DISAGREES)
    tables = {"truncated_share": truncated_share_table(judgements), "rounds": rounds_table(judgements)}
    rows = comparison_rows(profile, tables)
    test = tables["truncated_share"].iloc[0]
    row = next(r for r in rows if "within traces" in r["statistic"])
    assert f"{test['trace_share_difference']:+.3f} [95% CI {test['trace_ci_low']:+.3f}" in row["run"]
    assert f"(traces: {format_p(test['trace_p'])})" in row["run"]
    assert "6 traces with decided segments in both groups (2 with one group only left out" in row["note"]
    assert f"treats segments as independent): {format_p(test['pooled_segments_fisher_p'])}" in row["note"]
    assert not any(r["statistic"].startswith("Fisher") for r in rows)
