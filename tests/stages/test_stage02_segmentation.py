"""Pure-data pieces of the notebook stages, checked on hand-made tables."""

import pandas as pd
import pytest

from segattr_utils.stages.stage02_segmentation import paired_length_comparison


def test_paired_comparison_uses_only_questions_with_both():
    traces = pd.DataFrame(
        [
            {"question_id": "a", "correct": True, "n_segments": 2, "n_tokens": 10},
            {"question_id": "a", "correct": False, "n_segments": 5, "n_tokens": 40},
            {"question_id": "b", "correct": True, "n_segments": 3, "n_tokens": 20},
            {"question_id": "b", "correct": False, "n_segments": 4, "n_tokens": 30},
            {"question_id": "c", "correct": True, "n_segments": 9, "n_tokens": 99},
        ]
    )
    table = paired_length_comparison(traces).set_index("metric")
    assert table.loc["n_segments", "questions"] == 2
    assert table.loc["n_segments", "correct_mean"] == pytest.approx(2.5)
    assert table.loc["n_segments", "incorrect_mean"] == pytest.approx(4.5)
    assert table.loc["n_tokens", "share_incorrect_longer"] == pytest.approx(1.0)
