"""Stage 05 end to end on hand-made stage 01-03 artifacts and a tiny random model: the artifact columns
other notebooks read, one row per segment, a resumed run gives the same table, and the BLEU column
matches the segments' hand-computed values; with the paper's ablation source the reference traces are
measured too (and only then), their perplexity and entropy checked against a forward pass by hand; Fig. 3's
comparisons (three means and the BLEU share) are tested at trace level, with Holm over the four."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from segattr_utils import dag, services
from segattr_utils.artifacts import read_table
from segattr_utils.config import Profile, results_dir
from segattr_utils.distributed import rank_store_paths
from segattr_utils.stages import stage05_linguistics as linguistics
from segattr_utils.world.tiny_model import answer_part as world_answer_part

from .conftest import QUESTIONS, REFERENCE


def test_linguistics_stage_columns_and_bleu(profile):
    table = linguistics.measure_linguistics(profile)
    for column in ("trace_id", "segment", "n_tokens", "log_ppl", "entropy", "bleu", "removal_ppl_increase"):
        assert column in table.columns
    # smoke profile measures incorrect traces too: 3 + 1 + 2 segments
    assert len(table) == 6 and not table[["log_ppl", "entropy", "bleu", "removal_ppl_increase"]].isna().any().any()
    q0 = table[table["trace_id"] == "q0:correct"].sort_values("segment")
    # segment 1 repeats "so 2 + 1 = 3." from segment 0: BLEU > 0; the first segment of a trace has BLEU 0
    assert q0["bleu"].iloc[0] == 0.0 and q0["bleu"].iloc[1] > 0.3
    assert (table["n_tokens"] > 0).all() and (table["entropy"] > 0).all()
    again = linguistics.measure_linguistics(profile)  # resumed: nothing recomputed, same table
    pd.testing.assert_frame_equal(again, table)


def test_reference_traces_are_measured_when_an_ablation_trains_on_them(reference_profile):
    tables = linguistics.linguistics_tables(reference_profile)
    assert list(tables) == ["self", "reference"]
    reference = tables["reference"]
    pd.testing.assert_frame_equal(
        read_table(dag.LINGUISTICS.path(reference_profile, "reference_segment_linguistics")), reference
    )
    assert reference["trace_id"].tolist() == ["q0:reference"] * 3 + ["q1:reference"] * 2
    assert reference["segment"].tolist() == [0, 1, 2, 0, 1] and reference["correct"].all()
    assert not reference[list(linguistics.SIGNALS)].isna().any().any()
    assert set(tables["self"]["trace_id"]) == {"q0:correct", "q1:correct", "q1:incorrect"}

    # q0's reference trace by hand: one unbatched forward pass per text, NLL and entropy in float64,
    # a token in the segment (or output) that holds its first character
    model, tokenizer = services.load_model(reference_profile, "generator")
    question, answer = QUESTIONS["q0"]
    segments = REFERENCE["q0"]
    prompt = services.prompt(tokenizer, question)

    def per_token(text):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor(encoded["input_ids"])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=ids[None]).logits[0, :-1].double(), dim=-1)
        nll = -log_probs[torch.arange(len(ids) - 1), ids[1:]]
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        starts = [start for start, _ in encoded["offset_mapping"][1:]]  # token t + 1 of each prediction t
        return nll.numpy(), entropy.numpy(), np.array(starts)

    nll, entropy, starts = per_token(prompt + "".join(segments))
    cursor = len(prompt)
    rows = reference[reference["trace_id"] == "q0:reference"]
    for index, text in enumerate(segments):
        inside = (starts >= cursor) & (starts < cursor + len(text))
        cursor += len(text)
        assert rows["n_tokens"].iloc[index] == inside.sum()
        assert rows["log_ppl"].iloc[index] == pytest.approx(nll[inside].mean(), rel=1e-6)
        assert rows["entropy"].iloc[index] == pytest.approx(entropy[inside].mean(), rel=1e-6)

    def output_perplexity(output):
        nll, _, starts = per_token(prompt + output)
        return math.exp(nll[starts >= len(prompt)].mean())

    answer_part = world_answer_part(answer)  # the reference trace's answer part (R1 layout)
    full = output_perplexity("".join(segments) + answer_part)
    without_second = output_perplexity(segments[0] + segments[2] + answer_part)
    assert rows["removal_ppl_increase"].iloc[1] == pytest.approx(without_second - full, rel=1e-4, abs=1e-6)


def test_no_reference_measurement_when_the_ablations_train_on_self(profile):
    assert linguistics.measured_sources(profile) == ["self"]
    assert list(linguistics.linguistics_tables(profile)) == ["self"]  # no world questions: none are read
    for artifact in ("reference_linguistics_store", "reference_segment_linguistics"):
        assert not dag.LINGUISTICS.path(profile, artifact).exists()


def test_two_launched_processes_measure_what_one_process_measures(profile, tmp_path):
    """analysis.linguistics.processes: 2 runs the perplexity passes under accelerate launch (two ranks, gloo
    on the CPU); the table equals one process's up to float rounding, and no rank store or launch folder is
    left behind."""
    one = linguistics.measure_linguistics(profile)
    spread = Profile({**profile, "results_root": str(tmp_path / "spread")})
    spread["analysis"] = {
        **profile["analysis"],
        "linguistics": {**profile["analysis"]["linguistics"], "processes": 2, "threads_per_process": 1},
    }
    for stage in (dag.GENERATION, dag.SEGMENTATION, dag.IG_ATTRIBUTION):  # the same inputs in the new results folder
        shutil.copytree(results_dir(profile) / stage.folder, results_dir(spread) / stage.folder)
    two = linguistics.measure_linguistics(spread)
    pd.testing.assert_frame_equal(two, one, rtol=1e-5, atol=1e-6)
    _, store = linguistics.items_to_measure(spread)
    assert len(store) == 3 and rank_store_paths(store.path) == []
    assert not store.path.with_suffix(".launch").exists()


def _holm_by_hand(p_values: dict) -> dict:
    """Holm: sorted ascending, (m - rank) x p, then the running maximum, capped at 1."""
    ordered, running, adjusted = sorted(p_values, key=p_values.get), 0.0, {}
    for rank, key in enumerate(ordered):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[key]))
        adjusted[key] = running
    return adjusted


def test_measures_and_bleu_share_are_tested_at_trace_level_with_holm_over_the_four():
    """Fig. 3's comparisons test within-trace differences over traces (segments of a trace are not
    independent); hand-computed differences, scipy's Wilcoxon on them, and Holm by hand over the family
    notebook 05 reports: the three means and the BLEU > threshold share."""
    from scipy.stats import wilcoxon

    rows = []
    # trace t: important segments get log_ppl 1 + t, unimportant 1; entropy the reverse; bleu mixed; the
    # second important segment of traces 1-4 is above the BLEU threshold 0.5, no unimportant one is
    for t in range(1, 7):
        for index, important in enumerate((True, True, False)):
            rows.append(
                {
                    "trace_id": f"t{t}",
                    "important": important,
                    "log_ppl": 1.0 + (0.1 * t if important else 0.0),
                    "entropy": 1.0 - (0.05 * t if important else 0.0) + (0.001 * t if not important else 0.0),
                    "bleu": 0.45 + (0.01 * (-1) ** t if important else 0.0) + (0.2 if index == 1 and t <= 4 else 0),
                }
            )
    table = pd.DataFrame(rows)
    comparisons, shares = linguistics.fig3_holm(
        linguistics.compare_measures(table), linguistics.bleu_shares(table, 0.5)
    )
    result = comparisons.set_index("column")
    expected_differences = {
        "log_ppl": [0.1 * t for t in range(1, 7)],
        "entropy": [-0.05 * t - 0.001 * t for t in range(1, 7)],
        "bleu": [0.01 * (-1) ** t + (0.1 if t <= 4 else 0.0) for t in range(1, 7)],
    }
    p_values = {}
    for column, differences in expected_differences.items():
        assert result.loc[column, "n_traces"] == 6
        assert result.loc[column, "trace_difference"] == pytest.approx(np.mean(differences))
        p_values[column] = wilcoxon(differences).pvalue
        assert result.loc[column, "trace_p"] == pytest.approx(p_values[column])
    # BLEU share: traces 1-4 have 1 of 2 important segments above 0.5 and 0 of 1 unimportant: +0.5; traces
    # 5-6 have 0 and 0: a zero difference, discarded by the signed-rank test
    assert shares["n_traces"].tolist() == [6, 6] and shares["n_nonzero"].tolist() == [4, 4]
    assert shares["trace_share_difference"].iloc[0] == pytest.approx(4 * 0.5 / 6)
    p_values["bleu_share"] = wilcoxon([0.5, 0.5, 0.5, 0.5, 0.0, 0.0], zero_method="wilcox").pvalue
    assert shares["trace_p"].iloc[0] == pytest.approx(p_values["bleu_share"])
    adjusted = _holm_by_hand(p_values)
    for column in expected_differences:
        assert result.loc[column, "trace_p_holm"] == pytest.approx(adjusted[column])
    assert shares["trace_p_holm"].tolist() == pytest.approx([adjusted["bleu_share"]] * 2)
    assert comparisons["holm_family_size"].tolist() == [4, 4, 4] and shares["holm_family_size"].tolist() == [4, 4]
    # 18 segments pooled as if independent look far stronger than 6 traces for log_ppl
    assert result.loc["log_ppl", "p_value"] < result.loc["log_ppl", "trace_p"]


def _bleu_table(traces: dict) -> pd.DataFrame:
    """Segments from ``{trace: (important above, important below, unimportant above, unimportant below)}``
    with BLEU 0.9 above and 0.1 below the threshold 0.8."""
    rows = []
    for trace, counts in traces.items():
        for (important, bleu), n in zip(((True, 0.9), (True, 0.1), (False, 0.9), (False, 0.1)), counts):
            rows += [{"trace_id": trace, "important": important, "bleu": bleu}] * n
    return pd.DataFrame(rows)


# One long trace whose unimportant segments are all repetitive dominates the pooled shares (important 7 of
# 18 above the threshold, unimportant 33 of 42: unimportant more, Fisher p < 0.01), while in 5 of the 6
# traces with both sets the important segments are the more repetitive ones.
POOLING_DISAGREES = {
    "long": (0, 2, 30, 0),  # important 0/2, unimportant 30/30: -1
    "b1": (1, 1, 0, 1),  # 1/2 vs 0/1: +1/2
    "b2": (1, 2, 0, 2),  # 1/3 vs 0/2: +1/3
    "b3": (2, 1, 0, 1),  # 2/3 vs 0/1: +2/3
    "b4": (1, 3, 0, 1),  # 1/4 vs 0/1: +1/4
    "b5": (1, 0, 1, 4),  # 1/1 vs 1/5: +4/5
    "only_important": (1, 2, 0, 0),  # no unimportant segment: cannot contribute
    "only_unimportant": (0, 0, 2, 0),  # no important segment: cannot contribute
}


def test_bleu_share_test_is_at_trace_level_where_pooling_disagrees():
    from itertools import combinations
    from math import comb

    from segattr_utils.measures.trace_stats import cluster_bootstrap

    table = _bleu_table(POOLING_DISAGREES)
    shares = linguistics.bleu_shares(table, 0.8, seed=3).set_index("set")
    important, unimportant = shares.loc["important"], shares.loc["unimportant"]
    assert (important["n"], important["n_above"], unimportant["n"], unimportant["n_above"]) == (18, 7, 42, 33)
    assert important["share_above"] == pytest.approx(7 / 18) and unimportant["share_above"] == pytest.approx(33 / 42)

    differences = [-1, 1 / 2, 1 / 3, 2 / 3, 1 / 4, 4 / 5]
    assert important["n_traces"] == 6 and important["traces_with_one_group"] == 2 and important["n_nonzero"] == 6
    assert important["trace_share_difference"] == pytest.approx(np.mean(differences))  # +0.258: important more
    assert important["trace_ci_low"] <= np.mean(differences) <= important["trace_ci_high"]
    # exact signed-rank p by hand: |d| ranks 1..6, the single negative difference has rank 6, so W- = 6 and
    # W+ = 15; p = 2 P(W <= 6) over the 2^6 equally likely sign patterns
    at_most_6 = sum(1 for k in range(7) for ranks in combinations(range(1, 7), k) if sum(ranks) <= 6)
    assert important["trace_p"] == pytest.approx(2 * at_most_6 / 2**6)  # 28/64
    assert important["rank_biserial"] == pytest.approx((15 - 6) / 21)

    # the pooled difference, with whole traces resampled (a hand-written statistic through cluster_bootstrap)
    assert important["pooled_share_difference"] == pytest.approx(7 / 18 - 33 / 42)

    def pooled(sample):
        above = sample["bleu"] > 0.8
        return above[sample["important"]].mean() - above[~sample["important"]].mean()

    expected = cluster_bootstrap(table, pooled, n_boot=10_000, seed=3)
    assert (important["pooled_ci_low"], important["pooled_ci_high"]) == pytest.approx(
        (expected["ci_low"], expected["ci_high"])
    )
    # Fisher on the pooled 2 x 2 table [[7, 11], [33, 9]]: hypergeometric two-sided p by hand (margins 18/42
    # segments, 40 above the threshold)
    probability = {k: comb(18, k) * comb(42, 40 - k) / comb(60, 40) for k in range(0, 19)}
    fisher = sum(p for p in probability.values() if p <= probability[7] * (1 + 1e-7))
    assert important["pooled_segments_fisher_p"] == pytest.approx(fisher)
    assert important["pooled_segments_fisher_p"] < 0.01 < 0.4 < important["trace_p"]  # pooling overstates
    assert "2 trace(s) with segments in one group only" in important["note"]
    for column in ("trace_p", "pooled_segments_fisher_p", "n_traces", "note"):
        assert important[column] == unimportant[column]


def test_bleu_share_with_an_empty_set_is_none_with_a_note():
    table = _bleu_table({"a": (1, 2, 0, 0), "b": (0, 3, 0, 0)})  # no unimportant segment at all
    shares = linguistics.bleu_shares(table, 0.8).set_index("set")
    unimportant = shares.loc["unimportant"]
    assert unimportant["n"] == 0 and unimportant["share_above"] is None
    assert shares.loc["important", "share_above"] == pytest.approx(1 / 6)
    for column in ("trace_share_difference", "trace_p", "pooled_share_difference", "pooled_segments_fisher_p"):
        assert unimportant[column] is None, column
    assert unimportant["n_traces"] == 0 and unimportant["traces_with_one_group"] == 2
    assert "no segment with important False" in unimportant["note"]
    assert "no traces" in unimportant["note"]


def test_comparison_rows_quote_the_trace_level_test_of_the_bleu_share():
    from segattr_utils.config import load_profile
    from segattr_utils.measures.group_stats import format_p

    profile = load_profile("smoke")
    threshold = profile.get_path("analysis.bleu_threshold")
    rng = np.random.default_rng(0)
    table = _bleu_table(POOLING_DISAGREES).assign(log_ppl=rng.random(60), entropy=rng.random(60))
    table["bleu"] = np.where(table["bleu"] > 0.5, threshold + 0.05, threshold - 0.05)
    comparisons, shares = linguistics.fig3_holm(
        linguistics.compare_measures(table), linguistics.bleu_shares(table, threshold)
    )
    rows = linguistics.comparison_rows(profile, {"comparisons": comparisons, "bleu_shares": shares})
    share_row = rows[-1]
    test = shares.iloc[0]
    assert share_row["statistic"].startswith(f"share with BLEU > {threshold:g}")
    assert f"(traces: {format_p(test['trace_p_holm'])}, Holm)" in share_row["run"]
    assert "6 traces with both sets (2 with one set only left out, 6 with a non-zero difference)" in share_row["note"]
    assert f"{test['trace_share_difference']:+.3f} [95% CI {test['trace_ci_low']:+.3f}" in share_row["note"]
    assert "Holm over the 4 tests of Fig. 3" in share_row["note"]
    assert f"Fisher exact, not independent): {format_p(test['pooled_segments_fisher_p'])}" in share_row["note"]
    assert all("Holm over the 4 tests of Fig. 3" in row["note"] for row in rows[:3])
