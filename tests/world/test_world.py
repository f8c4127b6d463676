"""Tests for segattr_utils.world: the arithmetic-chain world, its R1-style teacher traces and the
ground-truth segment classifier.

Expected values are written by hand (chains evaluated in the head, kinds derived from the rules in the
module docstring); the property tests compare the classifier and the keyword segmenter with the
teacher's own intended segments/kinds, which are produced independently by the trace generator.
"""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from segattr_utils import segment
from segattr_utils.world import (
    SEGMENT_KINDS,
    SINGLE_DIGIT,
    Arithmetic,
    Problem,
    apply_op,
    classify_segments,
    equation,
    format_completion,
    make_problems,
    parse_equations,
    random_problem,
    teacher_trace,
    user_prompt,
)

RATES = {
    "repetition": 0.3,
    "truncated": 0.25,
    "superficial": 0.25,
    "wrong_exploration": 0.15,
    "segment_step": 0.4,
    "verification": 0.5,
}

# start 7, add 5 -> 12, multiply 3 -> 36, subtract 4 -> 32
HAND = Problem(id="hand-0", start=7, ops=(("add", 5), ("multiply", 3), ("subtract", 4)), suite="test")


# ----------------------------------------------------------------------------------------------
# Problems


def test_hand_problem_values_answer_steps():
    assert HAND.values == [7, 12, 36, 32]
    assert HAND.answer == "32"
    assert HAND.steps == [(7, "+", 5, 12), (12, "*", 3, 36), (36, "-", 4, 32)]


def test_second_hand_problem():
    p = Problem(id="h", start=20, ops=(("subtract", 9), ("multiply", 2), ("add", 1), ("subtract", 3)))
    assert p.values == [20, 11, 22, 23, 20]
    assert p.answer == "20"
    assert p.steps[-1] == (23, "-", 3, 20)
    assert p.suite == "train"


def test_apply_op_and_unknown_op():
    assert apply_op(6, "add", 3) == 9
    assert apply_op(6, "subtract", 3) == 3
    assert apply_op(6, "multiply", 3) == 18
    with pytest.raises(ValueError):
        apply_op(6, "divide", 3)


def test_equation_text():
    assert equation(7, "+", 5, 12) == "7 + 5 = 12"
    assert parse_equations("Step 1: 7 + 5 = 12. Then 12 * 3 = 36 and 36 - 4 = 32.") == [
        (7, "+", 5, 12),
        (12, "*", 3, 36),
        (36, "-", 4, 32),
    ]


def test_question_contains_every_step_in_order():
    q = HAND.question
    assert q.startswith("Start with 7, then ")
    expected = ["first add 5", "second multiply by 3", "third subtract 4"]
    positions = [q.index(s) for s in expected]
    assert positions == sorted(positions)
    assert q.endswith("What is the result?")


def test_user_prompt_has_r1_instruction():
    prompt = user_prompt(HAND)
    assert prompt.startswith(HAND.question)
    assert prompt.endswith("put your final answer within \\boxed{}.")


def test_record_round_trip():
    record = HAND.to_record()
    assert record["ops"] == ["add:5", "multiply:3", "subtract:4"]
    assert record["answer"] == "32"
    assert record["start"] == 7 and record["suite"] == "test" and record["id"] == "hand-0"
    assert Problem.from_record(record) == HAND
    # records read back from JSON/parquet may hold the ops as pairs
    record2 = dict(record, ops=[["add", 5], ["multiply", "3"], ["subtract", 4]])
    assert Problem.from_record(record2) == HAND


def test_random_problem_needs_an_operation():
    with pytest.raises(ValueError):
        random_problem(random.Random(0), 0, "x", "train")


@pytest.mark.parametrize("n_ops", [1, 3, 6, 12])
def test_generated_values_and_operands_in_range(n_ops):
    rng = random.Random(n_ops)
    for i in range(400):
        p = random_problem(rng, n_ops, f"p{i}", "train")
        assert len(p.ops) == n_ops
        assert 2 <= p.start <= 20
        values = p.values
        assert all(1 <= v <= SINGLE_DIGIT.max_value for v in values), (p, values)
        for (op, k), before in zip(p.ops, values):
            if op == "add":
                assert 1 <= k <= 9
            elif op == "subtract":
                assert 1 <= k <= 9 and k < before  # stays >= 1
            else:
                assert op == "multiply" and k in (2, 3)
        # the answer is the exact chain value
        v = p.start
        for op, k in p.ops:
            v = {"add": v + k, "subtract": v - k, "multiply": v * k}[op]
        assert p.answer == str(v)


TWO_DIGIT = Arithmetic(max_value=99, max_operand=19, start_min=10, start_max=60, multipliers=(2, 3))


@pytest.mark.parametrize("n_ops", [1, 4, 9])
def test_two_digit_arithmetic_stays_in_range(n_ops):
    rng = random.Random(100 + n_ops)
    multiplied = False
    for i in range(300):
        p = random_problem(rng, n_ops, f"q{i}", "train", TWO_DIGIT)
        assert 10 <= p.start <= 60
        assert all(1 <= v <= 99 for v in p.values), p
        for (op, k), before in zip(p.ops, p.values):
            if op == "multiply":
                multiplied = True
                assert k in (2, 3) and before * k <= 99
            else:
                assert 1 <= k <= 19
    assert multiplied


@pytest.mark.parametrize(
    "bad",
    [
        dict(start_min=0),
        dict(start_min=7, start_max=5),
        dict(start_max=12),
        dict(max_operand=0),
        dict(multipliers=(1,)),
    ],
)
def test_arithmetic_rejects_bad_ranges(bad):
    with pytest.raises(ValueError):
        Arithmetic(**bad)


def test_arithmetic_from_dict_names_unknown_keys():
    assert Arithmetic.from_dict(None) == SINGLE_DIGIT
    assert Arithmetic.from_dict({"max_value": 50, "multipliers": [2]}).multipliers == (2,)
    with pytest.raises(ValueError, match="max_valu"):
        Arithmetic.from_dict({"max_valu": 50})


def test_make_problems_distinct_deterministic_no_repeated_steps():
    a = make_problems(200, [2, 3, 4], seed=3, suite="train")
    b = make_problems(200, [2, 3, 4], seed=3, suite="train")
    assert a == b
    assert len(a) == 200
    assert len({(p.start, p.ops) for p in a}) == 200
    assert len({p.id for p in a}) == 200
    assert {len(p.ops) for p in a} == {2, 3, 4}
    assert all(p.suite == "train" for p in a)
    for p in a:
        eqs = [equation(*s) for s in p.steps]
        assert len(set(eqs)) == len(eqs), p
    c = make_problems(200, [2, 3, 4], seed=4, suite="train")
    assert [(p.start, p.ops) for p in c] != [(p.start, p.ops) for p in a]


def test_make_problems_excludes():
    first = make_problems(150, [2, 3], seed=0, suite="pretrain")
    second = make_problems(150, [2, 3], seed=0, suite="test_id", exclude=first)
    keys_first = {(p.start, p.ops) for p in first}
    assert not keys_first & {(p.start, p.ops) for p in second}
    assert len({(p.start, p.ops) for p in second}) == 150


def test_make_problems_impossible_raises():
    # one operation from a start in [2, 20]: fewer than 19 * 20 < 500 distinct problems exist
    with pytest.raises(RuntimeError):
        make_problems(500, [1], seed=0, suite="x")


# ----------------------------------------------------------------------------------------------
# Teacher traces


def _traces(n_problems=120, seeds=(0, 1, 2), rates=RATES, ops=(2, 3, 4, 5, 6)):
    problems = make_problems(n_problems, list(ops), seed=11, suite="prop")
    out = []
    for seed in seeds:
        rng = random.Random(seed)
        for p in problems:
            out.append((p, teacher_trace(p, rng, rates)))
    return out


def test_teacher_segments_and_kinds_reproduced():
    kinds = Counter()
    traces = _traces()
    for problem, trace in traces:
        assert trace.problem_id == problem.id
        assert len(trace.segments) == len(trace.kinds)
        assert set(trace.kinds) <= set(SEGMENT_KINDS)
        assert trace.kinds[0] == "productive"
        assert segment(trace.reasoning) == trace.segments
        assert classify_segments(problem, trace.segments) == trace.kinds
        kinds.update(trace.kinds)
    # every kind appears over a few hundred traces
    assert set(kinds) == set(SEGMENT_KINDS), kinds


@pytest.mark.parametrize(
    "rates",
    [
        {k: 1.0 for k in RATES},
        {k: 0.0 for k in RATES},
        dict(RATES, segment_step=1.0, verification=1.0),
    ],
)
def test_teacher_traces_extreme_rates(rates):
    for problem, trace in _traces(n_problems=40, seeds=(5,), rates=rates):
        assert segment(trace.reasoning) == trace.segments
        assert classify_segments(problem, trace.segments) == trace.kinds
        if rates["repetition"] == 0.0 and rates["verification"] == 0.0:
            assert set(trace.kinds) <= {"productive"}
            # with segment_step == 0 the whole chain is one paragraph
            assert len(trace.segments) == 1


def test_teacher_trace_states_every_step_and_answer():
    for problem, trace in _traces(n_problems=30, seeds=(7,)):
        reasoning = trace.reasoning
        for step in problem.steps:
            assert equation(*step) in reasoning
        assert trace.answer_text == problem.answer
        completion = trace.completion
        assert completion.endswith(f"\\boxed{{{problem.answer}}}.")
        assert completion.startswith(reasoning)


def test_teacher_trace_deterministic():
    p = HAND
    a = teacher_trace(p, random.Random(42), RATES)
    b = teacher_trace(p, random.Random(42), RATES)
    assert a.segments == b.segments and a.kinds == b.kinds


# ----------------------------------------------------------------------------------------------
# classify_segments, rule by rule (HAND: 7 + 5 = 12, 12 * 3 = 36, 36 - 4 = 32)


def test_classify_first_segment_productive():
    assert classify_segments(HAND, ["Okay, I start with 7 and apply 3 steps."]) == ["productive"]
    assert classify_segments(HAND, ["Okay. Step 1: 7 + 5 = 12."]) == ["productive"]


def test_classify_wrong_equation_is_wrong_exploration():
    segs = ["Okay. Step 1: 7 + 5 = 12.", "\n\nWait, so step 2: 12 * 3 = 35.", "\n\nWait, no. Step 2: 12 * 3 = 36."]
    assert classify_segments(HAND, segs) == ["productive", "wrong_exploration", "productive"]


def test_classify_wrong_equation_wins_over_new_step():
    # a segment with one new correct step and one wrong equation is still wrong exploration
    segs = ["Okay.", "\n\nWait, 7 + 5 = 12 and 12 * 3 = 30."]
    assert classify_segments(HAND, segs) == ["productive", "wrong_exploration"]


def test_classify_wrong_first_segment():
    assert classify_segments(HAND, ["Step 1: 7 + 5 = 13."]) == ["wrong_exploration"]


def test_classify_equation_of_another_problem_is_wrong():
    # a true equation that is not a step of this chain
    segs = ["Okay. Step 1: 7 + 5 = 12.", "\n\nAlternatively, 2 + 2 = 4."]
    assert classify_segments(HAND, segs) == ["productive", "wrong_exploration"]


def test_classify_new_chain_step_is_productive():
    segs = ["Okay. Step 1: 7 + 5 = 12.", "\n\nAnother step, step 2 is multiply by 3: 12 * 3 = 36."]
    assert classify_segments(HAND, segs) == ["productive", "productive"]


def test_classify_out_of_order_new_step_is_productive():
    segs = ["Okay.", "\n\nGoing back, 12 * 3 = 36."]
    assert classify_segments(HAND, segs) == ["productive", "productive"]


def test_classify_restated_step_before_final_is_repetition():
    segs = [
        "Okay. Step 1: 7 + 5 = 12.",
        "\n\nWait, let me check step 1 again: 7 + 5 = 12.",
        "\n\nAnother step: 12 * 3 = 36.",
        "\n\nGoing back, step 2: 12 * 3 = 36.",
    ]
    assert classify_segments(HAND, segs) == ["productive", "repetition", "productive", "repetition"]


def test_classify_restated_after_final_is_verification():
    segs = [
        "Okay. Step 1: 7 + 5 = 12. Step 2: 12 * 3 = 36. Step 3: 36 - 4 = 32. So the result is 32.",
        "\n\nBut just to be sure, let me verify step 3: 36 - 4 = 32. Yes, the result is 32.",
        "\n\nAnother check of step 1: 7 + 5 = 12. Correct.",
    ]
    assert classify_segments(HAND, segs) == ["productive", "verification", "verification"]


def test_classify_final_step_reached_out_of_order():
    # the final step stated first: the answer is reached, later restatements verify it
    segs = ["Okay. 36 - 4 = 32.", "\n\nWait, 36 - 4 = 32.", "\n\nWait, 7 + 5 = 12.", "\n\nWait, 7 + 5 = 12."]
    assert classify_segments(HAND, segs) == ["productive", "verification", "productive", "verification"]


def test_classify_no_equation_mid_sentence_is_truncated():
    segs = ["Okay. Step 1: 7 + 5 = 12.", "\n\nAlternatively, maybe I should", "\n\nWait, what if I   "]
    assert classify_segments(HAND, segs) == ["productive", "truncated", "truncated"]


def test_classify_no_equation_full_sentence_is_superficial():
    segs = [
        "Okay. Step 1: 7 + 5 = 12.",
        "\n\nHowever, multiplying by 3 means adding the number 3 times.",
        "\n\nNot sure it matters, but is that obvious?",
        "\n\nHowever, nice!\n",
    ]
    assert classify_segments(HAND, segs) == ["productive", "superficial", "superficial", "superficial"]


def test_classify_superficial_and_truncated_after_answer():
    segs = ["Okay. 7 + 5 = 12. 12 * 3 = 36. 36 - 4 = 32.", "\n\nHowever, that is easy.", "\n\nWait, what if"]
    assert classify_segments(HAND, segs) == ["productive", "superficial", "truncated"]


# ----------------------------------------------------------------------------------------------
# Completion layout


def test_format_completion_layout():
    assert (
        format_completion("I think 7 + 5 = 12.", "12")
        == "I think 7 + 5 = 12.\n</think>\n\nThe final answer is \\boxed{12}."
    )
    assert format_completion("", "32") == "\n</think>\n\nThe final answer is \\boxed{32}."


def test_completion_answer_is_boxed_last():
    trace = teacher_trace(HAND, random.Random(0), RATES)
    boxed = re.findall(r"\\boxed\{([^}]*)\}", trace.completion)
    assert boxed == ["32"]
    reasoning, _, answer = trace.completion.partition("\n</think>\n\n")
    assert reasoning == trace.reasoning
    assert answer == "The final answer is \\boxed{32}."


# ----------------------------------------------------------------------------------------------
# The weak pretraining teacher's slip


def test_misconception_believed_steps_by_hand():
    from segattr_utils.world import Misconception

    slip = Misconception(op="subtract", operand=3, rate=1.0, offset=1)
    problem = Problem(id="m", start=7, ops=(("subtract", 3), ("add", 2), ("subtract", 1)))
    # true chain 7 -> 4 -> 6 -> 5; the slip takes away only two: 7 -> 5, then carries on: 5 + 2 = 7, 7 - 1 = 6
    assert slip.believed_steps(problem, random.Random(0), 9) == [(7, "-", 3, 5), (5, "+", 2, 7), (7, "-", 1, 6)]
    never = Misconception(op="subtract", operand=3, rate=0.0)
    assert never.believed_steps(problem, random.Random(0), 9) == problem.steps
    # other operands are not affected
    other = Problem(id="o", start=7, ops=(("subtract", 2), ("add", 1)))
    assert slip.believed_steps(other, random.Random(0), 9) == other.steps
    # a believed value outside the world's range falls back to the true chain: 9 - 3 -> 7, 7 + 3 = 10 > 9
    overflow = Problem(id="v", start=9, ops=(("subtract", 3), ("add", 3)))
    assert slip.believed_steps(overflow, random.Random(0), 9) == overflow.steps


def test_teacher_trace_with_misconception_narrates_the_wrong_chain():
    from segattr_utils.world import Misconception

    slip = Misconception(op="subtract", operand=3, rate=1.0, offset=1)
    problem = Problem(id="m", start=7, ops=(("subtract", 3), ("add", 2), ("subtract", 1)))
    trace = teacher_trace(problem, random.Random(3), RATES, slip)
    assert trace.answer_text == "6" and problem.answer == "5"
    assert trace.meta["mistaken"]
    assert "7 - 3 = 5" in trace.reasoning and "7 - 3 = 4" not in trace.reasoning
    assert trace.completion.endswith("\\boxed{6}.")
    assert trace.kinds == classify_segments(problem, trace.segments)
    assert trace.kinds[0] == "wrong_exploration"
    assert segment(trace.reasoning) == trace.segments


@pytest.mark.parametrize("bad", [dict(op="divide"), dict(rate=1.5), dict(offset=0)])
def test_misconception_rejects_bad_settings(bad):
    from segattr_utils.world import Misconception

    with pytest.raises(ValueError):
        Misconception(**bad)
    assert Misconception.from_dict(None) is None
    with pytest.raises(ValueError, match="unknown"):
        Misconception.from_dict({"opp": "add"})
