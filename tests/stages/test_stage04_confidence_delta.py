"""Stages 04 and 05 end to end on hand-made stage 01-03 artifacts and a tiny random model: the
artifact columns other notebooks read, one row per segment, resuming after an interruption gives the
records of an uninterrupted run, and the BLEU column matches the segments' hand-computed values."""

from __future__ import annotations

import json

import pandas as pd

from segattr_utils.config import stage_dir
from segattr_utils.stages import stage04_confidence_delta as confidence_delta


def test_confidence_stage_columns_rows_and_resume(profile):
    table = confidence_delta.segment_confidence(profile)
    assert list(table.columns) == ["trace_id", "segment", "confidence_before", "confidence_after", "delta"]
    # one row per segment of every correct trace (3 + 1), none for the incorrect trace
    assert table["trace_id"].tolist() == ["q0:correct"] * 3 + ["q1:correct"]
    assert table["segment"].tolist() == [0, 1, 2, 0]
    assert (table["delta"] == table["confidence_after"] - table["confidence_before"]).all()
    # consecutive segments chain: the confidence after segment k is the one before segment k + 1
    q0 = table[table["trace_id"] == "q0:correct"]
    assert q0["confidence_after"].iloc[:-1].tolist() == q0["confidence_before"].iloc[1:].tolist()

    store = stage_dir(profile, "04_confidence_delta") / "forced_answers.jsonl"
    lines = store.read_text().splitlines()
    assert len(lines) == 4 + 2  # prefixes 0..3 of q0 and 0..1 of q1
    n_samples = profile.get_path("analysis.confidence.n_samples")
    assert all(json.loads(line)["n_samples"] == n_samples for line in lines)
    # Interrupt: keep the first record and a cut line; the resumed run redoes the rest identically.
    store.write_text(lines[0] + "\n" + lines[1][:20])
    resumed = confidence_delta.segment_confidence(profile)
    pd.testing.assert_frame_equal(resumed, table)
    assert sorted(store.read_text().splitlines()) == sorted(lines)
