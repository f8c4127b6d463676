"""Tests for segattr_utils.llm.variants: every training variant's selection rule on hand-made traces.

Expected selections are derived by hand from the attribution values below (strength = sum|IG|/sqrt(N),
consistency = |sum IG| / sum|IG|), not from the package's own scoring.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from segattr_utils.llm.variants import (
    REGISTRY,
    SelectionSettings,
    TraceSelection,
    get_variant,
    register,
    selected_token_share,
    threshold_by_token_share,
)

from ..fixtures.scored import trace_record


def record(values, trace_id="t0", **signals):
    segments = [f"seg{i} " * len(v) for i, v in enumerate(values)]
    offsets, cursor = [], 0
    for text, v in zip(segments, values):
        offsets.append([(cursor + 5 * j, cursor + 5 * j + 5) for j in range(len(v))])
        cursor += len(text)
    return trace_record(trace_id, "q", "1", segments, "a", values, offsets, **signals)


# Five segments of 4 tokens each.
#   seg0: [1, 1, 1, 1]     strength 4/2 = 2.0, consistency 1.0
#   seg1: [3, -3, 3, -1]   strength 10/2 = 5.0, consistency 2/10 = 0.2
#   seg2: [0.5]*4          strength 1.0, consistency 1.0
#   seg3: [4, 4, 4, -4]    strength 16/2 = 8.0, consistency 8/16 = 0.5
#   seg4: [0.1]*4          strength 0.2, consistency 1.0
# total strength 16.2 -> normalised: 0.123, 0.309, 0.062, 0.494, 0.012
# ranking: 3, 1, 0, 2, 4; cumulative 0.494, 0.802, 0.926, ...
VALUES = [[1, 1, 1, 1], [3, -3, 3, -1], [0.5] * 4, [4, 4, 4, -4], [0.1] * 4]
SETTINGS = SelectionSettings(tau=0.7, beta=0.8, always_keep="none")


def select(name, records, settings=SETTINGS):
    return get_variant(name).select(records, settings)


def test_full_learns_every_segment():
    (sel,) = select("full", [record(VALUES)])
    assert sel.segments == {0, 1, 2, 3, 4} and not sel.tokens


def test_selective_is_top_strength_with_moderate_consistency():
    # tau 0.7: top-2 (3, 1) reach 0.802; both have consistency <= 0.8
    (sel,) = select("selective", [record(VALUES)])
    assert sel.segments == {1, 3}
    # tau 0.9 adds segment 0 (cumulative 0.926) but its consistency 1.0 > beta
    (sel,) = select("selective", [record(VALUES)], SETTINGS.with_overrides(tau=0.9))
    assert sel.segments == {1, 3}
    (sel,) = select("selective", [record(VALUES)], SETTINGS.with_overrides(tau=0.9, beta=1.0))
    assert sel.segments == {0, 1, 3}
    # beta 0.4 drops segment 3 (consistency 0.5)
    (sel,) = select("selective", [record(VALUES)], SETTINGS.with_overrides(beta=0.4))
    assert sel.segments == {1}


def test_always_kept_first_and_last_are_added():
    settings = SETTINGS.with_overrides(always_keep="first_last")
    for name in ("selective", "high_strength", "random_segments", "pruned_ig"):
        (sel,) = select(name, [record(VALUES)], settings)
        assert {0, 4} <= sel.segments, name
    (sel,) = select("selective", [record(VALUES)], SETTINGS.with_overrides(always_keep="official"))
    assert sel.segments == {0, 1, 3, 4}  # {0, n-2, n-1} adds 3 (already in) and 4


def test_high_strength_ignores_consistency():
    (sel,) = select("high_strength", [record(VALUES)], SETTINGS.with_overrides(tau=0.9))
    assert sel.segments == {0, 1, 3}


def test_random_segments_count_and_determinism():
    records = [record(VALUES, trace_id=f"t{i}") for i in range(20)]
    first = select("random_segments", records)
    again = select("random_segments", records)
    assert [s.segments for s in first] == [s.segments for s in again]
    assert all(len(s.segments) == round(0.33 * 5) for s in first)  # 2 of 5
    assert len({frozenset(s.segments) for s in first}) > 1  # traces get different draws
    other_seed = select("random_segments", records, SETTINGS.with_overrides(seed=1))
    assert [s.segments for s in other_seed] != [s.segments for s in first]


def test_top_abs_and_signed_ig_tokens():
    # 20 tokens; 45% -> 9 tokens.
    rec = record(VALUES)
    (abs_sel,) = select("abs_ig_tokens", [rec])
    # |IG| ranking: the four 4s of seg3, then the three 3s of seg1, then seg1's -3 ... : 4,4,4,4 (seg3), 3,3,3 (seg1 0,1,2)
    # then 1s: seg0's four 1s and seg1's -1 tie at 1 -> the earliest two (seg0 tokens 0, 1)
    expected_abs = {(3, 0), (3, 1), (3, 2), (3, 3), (1, 0), (1, 1), (1, 2), (0, 0), (0, 1)}
    assert abs_sel.tokens == expected_abs and abs_sel.segments == set()
    (signed_sel,) = select("signed_ig_tokens", [rec])
    # signed ranking: 4,4,4 (seg3 0-2), 3,3 (seg1 0,2), 1,1,1,1 (seg0) -> 9
    assert signed_sel.tokens == {(3, 0), (3, 1), (3, 2), (1, 0), (1, 2), (0, 0), (0, 1), (0, 2), (0, 3)}
    assert selected_token_share([rec], [abs_sel]) == pytest.approx(9 / 20)


def test_token_mask_and_share():
    rec = record(VALUES)
    sel = TraceSelection({1}, {(3, 2)})
    masks = sel.token_mask(rec)
    assert [m.tolist() for m in masks][1] == [True] * 4
    assert masks[3].tolist() == [False, False, True, False]
    assert sel.token_share(rec) == pytest.approx(5 / 20)


def test_first_correct_keeps_segments_up_to_the_decision():
    (sel,) = select("first_correct", [record(VALUES, decision_segment=2)])
    assert sel.segments == {0, 1, 2}
    (sel,) = select("first_correct", [record(VALUES, decision_segment=None)])
    assert sel.segments == {0, 1, 2, 3, 4}  # no decision segment found: nothing is dropped


def test_confidence_gain_keeps_positive_deltas():
    delta = np.array([0.0, 0.25, -0.1, 0.5, 0.0])
    (sel,) = select("confidence_gain", [record(VALUES, confidence_delta=delta)])
    assert sel.segments == {1, 3}


def test_missing_signal_is_a_clear_error():
    with pytest.raises(ValueError, match="confidence_delta"):
        select("confidence_gain", [record(VALUES)])
    with pytest.raises(ValueError, match="NaN"):
        select("confidence_gain", [record(VALUES, confidence_delta=np.array([0, np.nan, 0, 0, 0]))])
    with pytest.raises(ValueError, match="shape"):
        select("segment_entropy", [record(VALUES, entropy=np.array([1.0, 2.0]))])


def test_threshold_by_token_share_matches_the_target():
    # two traces, segments of 4 tokens; scores chosen so that the k highest segments are known
    recs = [record(VALUES, trace_id="a"), record(VALUES, trace_id="b")]
    scores = [np.array([5, 4, 3, 2, 1.0]), np.array([10, 0, 0, 0, 0.0])]
    # 40 tokens; target 30% = 12 tokens = 3 segments: the pooled top 3 are 10 (b0), 5 (a0), 4 (a1)
    sels = threshold_by_token_share(recs, scores, 0.30, SETTINGS)
    assert sels[0].segments == {0, 1} and sels[1].segments == {0}
    sels = threshold_by_token_share(recs, scores, 0.30, SETTINGS, higher_is_important=False)
    # lowest first: b's four zeros pass together (16 tokens = 40%), then a4 (50%): 40% is closest to 30%
    assert sels[0].segments == set() and sels[1].segments == {1, 2, 3, 4}
    assert selected_token_share(recs, sels) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        threshold_by_token_share(recs, scores, 0.0, SETTINGS)


def test_matched_baselines_use_our_token_share():
    rec = record(
        VALUES, entropy=np.array([0.1, 0.2, 5.0, 0.3, 4.0]), removal_ppl_increase=np.array([0.0, 1.0, 0.5, 2.0, 0.1])
    )
    ours = select("selective", [rec])[0]
    assert selected_token_share([rec], [ours]) == pytest.approx(0.4)
    (ppl,) = select("segment_perplexity", [rec])
    assert ppl.segments == {1, 3}  # the two largest increases = 8 of 20 tokens = 40%
    (ent,) = select("segment_entropy", [rec])
    assert ent.segments == {2, 4}  # highest summed entropy (equal lengths: highest mean)


def test_pruned_ig_tunes_tau_to_the_pruned_share():
    rec = record(VALUES)
    (sel,) = select("pruned_ig", [rec], SETTINGS.with_overrides(prune_token_share=0.6))
    # keep ~40% of tokens: tau in (0.494, 0.802] keeps {1, 3} = 8/20
    assert sel.segments == {1, 3}
    assert get_variant("pruned_ig").mode == "pruned"


def test_registry_and_registration_errors():
    for name in (
        "full",
        "selective",
        "random_segments",
        "abs_ig_tokens",
        "signed_ig_tokens",
        "high_strength",
        "first_correct",
        "confidence_gain",
        "segment_perplexity",
        "segment_entropy",
        "pruned_ig",
        "pruned_first_correct",
        "pruned_confidence_gain",
        "pruned_perplexity",
        "pruned_entropy",
    ):
        assert name in REGISTRY
    with pytest.raises(KeyError, match="registered"):
        get_variant("nope")
    with pytest.raises(ValueError, match="twice"):
        register("full", label="x", mode="full", tables=())(lambda r, s: [])
    with pytest.raises(ValueError, match="unknown selection settings"):
        SETTINGS.with_overrides(gamma=1)


def test_trace_record_checks_lengths():
    with pytest.raises(ValueError, match="segments"):
        trace_record("t", "q", "1", ["a", "b"], "x", [[0.0]], [[(0, 1)]])
    with pytest.raises(ValueError, match="offsets"):
        trace_record("t", "q", "1", ["a"], "x", [[0.0, 0.0]], [[(0, 1)]])
    assert math.isclose(record(VALUES).table(SelectionSettings())["strength"].iloc[1], 5.0)


def test_signals_needed_is_the_union_of_the_needs_of_a_tables_variants():
    from segattr_utils.llm.variants import SIGNAL_SOURCES, signals_needed

    # Tables 3 and 4: confidence gain (Δ of notebook 04), removal perplexity and entropy (notebook 05)
    baselines = {"confidence_delta", "removal_ppl_increase", "entropy"}
    assert signals_needed(["3"]) == signals_needed(["4"]) == signals_needed(["1", "3", "4"]) == baselines
    assert signals_needed(["1", "2", "7", "fig5"]) == frozenset() and signals_needed([]) == frozenset()
    for variant in REGISTRY.values():
        assert set(variant.needs) <= set(SIGNAL_SOURCES), variant.name
    register("needs_log_ppl", label="Low Log-PPL", mode="selective", tables=("2",), needs=("log_ppl",))(
        lambda records, settings: [TraceSelection({0}) for _ in records]
    )
    try:
        assert signals_needed(["2"]) == {"log_ppl"}
    finally:
        del REGISTRY["needs_log_ppl"]
