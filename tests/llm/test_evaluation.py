"""Tests for segattr_utils.llm.evaluation: the unbiased pass@k estimator, the output summary, and one
model's evaluation (generated, graded in job order, resumed) with a stub generator."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pandas as pd
import pytest

from segattr_utils.llm.evaluation import pass_at_k, summarise_outputs


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of the k-subsets of n samples (the first c correct) holding at least one correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    hits = sum(1 for subset in subsets if any(samples[i] for i in subset))
    return float(Fraction(hits, len(subsets)))


@pytest.mark.parametrize(
    "n, c, k",
    [
        (1, 0, 1),
        (1, 1, 1),
        (2, 1, 1),
        (2, 1, 2),
        (4, 1, 2),
        (5, 2, 3),
        (6, 3, 2),
        (8, 1, 4),
        (8, 5, 4),
        (10, 3, 1),
        (10, 3, 5),
        (10, 7, 4),
        (12, 2, 6),
        (12, 11, 1),
        (7, 0, 3),
        (7, 7, 3),
    ],
)
def test_pass_at_k_matches_brute_force(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_1_is_the_fraction_correct():
    for n in range(1, 9):
        for c in range(n + 1):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n)


def test_pass_at_k_edge_cases():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 10, 10) == 1.0
    # fewer incorrect samples than k: every k-subset holds a correct one
    assert pass_at_k(10, 8, 3) == 1.0
    assert pass_at_k(5, 1, 5) == 1.0
    # hand value: n=4, c=1, k=2 -> 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "n, c, k",
    [
        (5, 6, 1),  # c > n
        (5, -1, 1),  # c < 0
        (5, 2, 0),  # k < 1
        (5, 2, 6),  # k > n
        (0, 0, 1),  # no samples
    ],
)
def test_pass_at_k_invalid(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def _graded():
    # q1: 2 of 4 correct; q2: 0 of 4; q3: 4 of 4
    rows = []
    correct = {"q1": [True, False, True, False], "q2": [False] * 4, "q3": [True] * 4}
    tokens = {"q1": [10, 20, 30, 40], "q2": [100, 100, 100, 100], "q3": [1, 2, 3, 6]}
    finished = {"q1": [True, True, True, False], "q2": [False] * 4, "q3": [True] * 4}
    for qid in ("q1", "q2", "q3"):
        for s in range(4):
            rows.append(
                {
                    "question_id": qid,
                    "sample": s,
                    "correct": correct[qid][s],
                    "n_tokens": tokens[qid][s],
                    "finished": finished[qid][s],
                }
            )
    return pd.DataFrame(rows)


def test_summarise_outputs_hand_values():
    summary = summarise_outputs(_graded(), ks=(1, 2, 4))
    assert summary["questions"] == 3
    assert summary["accuracy"] == pytest.approx(6 / 12)
    assert summary["mean_tokens"] == pytest.approx((100 + 400 + 12) / 12)
    assert summary["finished"] == pytest.approx(7 / 12)
    # pass@1 per question: 0.5, 0, 1
    assert summary["pass@1"] == pytest.approx((0.5 + 0 + 1) / 3)
    # pass@2: q1 = 1 - C(2,2)/C(4,2) = 5/6, q2 = 0, q3 = 1
    assert summary["pass@2"] == pytest.approx((5 / 6 + 0 + 1) / 3)
    # pass@4: q1 = 1, q2 = 0, q3 = 1
    assert summary["pass@4"] == pytest.approx(2 / 3)


def test_summarise_outputs_skips_k_above_samples():
    frame = _graded()
    # q2 has only 2 samples: pass@4 cannot be estimated for it, so it is left out altogether
    frame = frame[~((frame["question_id"] == "q2") & (frame["sample"] >= 2))]
    summary = summarise_outputs(frame, ks=(1, 2, 4))
    assert "pass@4" not in summary
    assert summary["pass@2"] == pytest.approx((5 / 6 + 0 + 1) / 3)
    assert summary["accuracy"] == pytest.approx(6 / 10)


def test_summarise_outputs_default_ks_and_unequal_samples():
    frame = pd.DataFrame(
        {
            "question_id": ["a", "a", "a", "b"],
            "correct": [True, False, False, True],
            "n_tokens": [3, 5, 7, 9],
            "finished": [True, True, True, True],
        }
    )
    summary = summarise_outputs(frame)
    # accuracy is over outputs, pass@1 is averaged over questions
    assert summary["accuracy"] == pytest.approx(2 / 4)
    assert summary["pass@1"] == pytest.approx((1 / 3 + 1) / 2)
    assert summary["mean_tokens"] == pytest.approx(6.0)
    assert summary["questions"] == 2


class _BoxedStub:
    """Answers a prompt ending in i with \\boxed{i} at even positions of its batch and \\boxed{-1} at odd
    ones; ``n_tokens`` is 5 + the position. Counts its batches and whether it was closed."""

    def __init__(self):
        self.batches = 0
        self.closed = False

    def generate(self, prompts, settings, seed):
        self.batches += 1
        out = []
        for position, prompt in enumerate(prompts):
            value = prompt.split()[-1] if position % 2 == 0 else "-1"
            out.append(
                {
                    "text": f"Think.\n</think>\n\nThe final answer is \\boxed{{{value}}}.",
                    "n_tokens": 5 + position,
                    "finished": True,
                }
            )
        return out

    def close(self):
        self.closed = True


def test_evaluate_model_generates_grades_in_job_order_and_resumes(tmp_path):
    from segattr_utils.llm.evaluation import Benchmark, evaluate_model
    from segattr_utils.llm.generation import SamplingSettings

    suites = [
        Benchmark(
            "A",
            "math",
            pd.DataFrame({"id": ["q1", "q2"], "question": ["Say 1", "Say 2"], "answer": ["1", "2.0"]}),
            n_samples=2,
        ),
        Benchmark("B", "math", pd.DataFrame({"id": ["p1"], "question": ["Say 3"], "answer": ["3"]})),
    ]
    stub = _BoxedStub()
    arguments = dict(
        benchmarks=suites,
        store_path=tmp_path / "eval.jsonl",
        greedy=SamplingSettings(temperature=0),
        sampled=SamplingSettings(temperature=0.6),
        batch_size=4,
        seed=0,
        make_prompt=lambda tokenizer, question: question,
        model_name="m",
    )
    graded = evaluate_model(lambda: (stub, None), **arguments)
    # one batch per output set: greedy-A (q1,0) (q2,0); sample-A (q1,0) (q1,1) (q2,0) (q2,1); greedy-B (p1,0)
    assert stub.batches == 3 and stub.closed
    expected = [
        ("A", "greedy", "q1", 0, True, 5),
        ("A", "greedy", "q2", 0, False, 6),
        ("A", "sample", "q1", 0, True, 5),
        ("A", "sample", "q1", 1, False, 6),
        ("A", "sample", "q2", 0, True, 7),  # "2" graded equal to "2.0"
        ("A", "sample", "q2", 1, False, 8),
        ("B", "greedy", "p1", 0, True, 5),
    ]
    columns = ["benchmark", "mode", "question_id", "sample", "correct", "n_tokens"]
    assert [tuple(row) for row in graded[columns].itertuples(index=False)] == expected
    assert set(graded["model"]) == {"m"} and set(graded["domain"]) == {"math"} and graded["finished"].all()
    sampled = graded[graded["mode"] == "sample"].drop(columns=["benchmark"])
    summary = summarise_outputs(sampled, ks=(1, 2))
    assert summary["accuracy"] == 0.5 and summary["pass@2"] == 1.0 and summary["mean_tokens"] == 6.5

    # resumed: every output is stored, so the model is not even loaded, and the grades are the same
    def no_load():
        raise AssertionError("nothing is left to generate")

    pd.testing.assert_frame_equal(evaluate_model(no_load, **arguments), graded)
