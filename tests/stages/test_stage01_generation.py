"""Pure-data pieces of the notebook stages, checked on hand-made tables."""

import pandas as pd
import pytest

from segattr_utils.stages.stage01_generation import keep_shortest_traces


def _sample(qid, sample, text, n_tokens, correct, finished=True, tag="sample"):
    return {
        "question_id": qid,
        "tag": tag,
        "sample": sample,
        "text": text,
        "n_tokens": n_tokens,
        "finished": finished,
        "pred": None,
        "correct": correct,
    }


@pytest.fixture
def questions():
    return pd.DataFrame(
        [{"id": "q1", "question": "Q1?", "answer": "3"}, {"id": "q2", "question": "Q2?", "answer": "5"}]
    )


def test_keeps_shortest_correct_and_incorrect_per_question(questions):
    ok = "a\n\nWait b\n</think>\n\n\\boxed{3}"
    samples = pd.DataFrame(
        [
            _sample("q1", 0, ok, 30, True),
            _sample("q1", 1, ok, 20, True),  # shortest correct
            _sample("q1", 2, ok, 20, True),  # tie: the lower sample index wins
            _sample("q1", 3, "x</think>\\boxed{4}", 50, False),
            _sample("q1", 4, "y</think>\\boxed{4}", 10, False, finished=False),  # unfinished: not eligible
            _sample("q1", 5, "no think at all", 5, False),  # no </think>: not eligible
            _sample("q1", 6, "\n</think>\n\n\\boxed{9}", 3, False),  # empty reasoning: not eligible
            _sample("q1", 0, ok, 1, True, tag="greedy"),  # greedy: not a sample
            _sample("q2", 0, ok.replace("3", "5"), 40, True),
        ]
    )
    kept = keep_shortest_traces(samples, questions).set_index("trace_id")
    assert sorted(kept.index) == ["q1:correct", "q1:incorrect", "q2:correct"]
    assert kept.loc["q1:correct", "sample"] == 1
    assert kept.loc["q1:incorrect", "sample"] == 3
    assert kept.loc["q1:correct", "reasoning"] == "a\n\nWait b"
    assert kept.loc["q1:correct", "answer_part"] == "\n</think>\n\n\\boxed{3}"
    for row in kept.itertuples():
        assert row.reasoning + row.answer_part == row.text
