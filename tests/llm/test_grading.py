"""Tests for segattr_utils.llm.grading: last-\\boxed{} extraction, reasoning/answer split and grading.

The outputs below are short hand-written R1-style completions (reasoning, ``</think>``, answer).
"""

from __future__ import annotations

import pytest

from segattr_utils.llm.grading import (
    grade,
    is_equivalent,
    last_boxed,
    numbers_equal,
    parse_number,
    split_output,
)

R1_CORRECT = (
    "Okay, so I need to compute 12 + 15. 12 + 15 = 27.\n\n"
    "Wait, let me double check: 10 + 15 = 25, plus 2 is 27. So it is 27.\n"
    "</think>\n\n"
    "The sum is $12 + 15 = 27$.\n\nThe final answer is \\boxed{27}."
)
R1_WRONG = (
    "Okay, 12 + 15. Hmm, 12 + 15 = 26.\n\nWait, maybe \\boxed{27}? No, I'll go with 26.\n"
    "</think>\n\n"
    "The final answer is \\boxed{26}."
)
R1_FRACTION = "Half of one is one half.\n</think>\n\nTherefore the probability is \\boxed{\\frac{1}{2}}."
R1_UNFINISHED = "Okay, so I need to compute 12 + 15. Let me think about 12 +"
R1_NO_BOX = "Easy.\n</think>\n\nThe answer is 27."
R1_CHOICE = "Option B fits, the others do not.\n</think>\n\nThe answer is \\boxed{B}."
R1_CHOICE_TEXT = "Comparing the options, (C) is right.\n</think>\n\n**Answer:** \\boxed{\\text{(C)}}"


# ----------------------------------------------------------------------------------------------
# last_boxed


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is \\boxed{27}.", "27"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("so \\boxed{\\sqrt{\\frac{a}{b}} + {c}} done", "\\sqrt{\\frac{a}{b}} + {c}"),
        ("First \\boxed{1}, then \\boxed{2}, finally \\boxed{3}.", "3"),
        ("\\fbox{7}", "7"),
        ("\\boxed{5} but actually \\fbox{6}", "6"),
        ("\\boxed{ 42 }", "42"),
        ("x \\boxed {42} y", "42"),
        ("no box here", None),
        ("", None),
        ("\\boxed{", None),
        ("\\boxed{12", None),
        ("\\boxed{1} and then \\boxed{2", "1"),  # unbalanced last box: the earlier one wins
        ("\\boxed{\\frac{1}{2} and \\boxed{3}", "3"),  # the inner box is balanced
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_last_boxed_on_r1_outputs():
    assert last_boxed(R1_CORRECT) == "27"
    assert last_boxed(R1_WRONG) == "26"  # the box inside the reasoning is not the last
    assert last_boxed(R1_FRACTION) == "\\frac{1}{2}"
    assert last_boxed(R1_UNFINISHED) is None
    assert last_boxed(R1_NO_BOX) is None


def test_last_boxed_rejects_non_str():
    with pytest.raises(TypeError):
        last_boxed(None)
    with pytest.raises(TypeError):
        last_boxed(b"\\boxed{1}")


# ----------------------------------------------------------------------------------------------
# split_output


def test_split_output_with_think_tags():
    assert split_output("<think>abc</think>answer") == ("<think>", "abc", "</think>answer")
    assert split_output("<think>a\n\nb\n\n</think>\n\nThe answer") == (
        "<think>",
        "a\n\nb",
        "\n\n</think>\n\nThe answer",
    )


def test_split_output_r1_output():
    prefix, reasoning, answer = split_output(R1_CORRECT)
    assert prefix == ""
    assert reasoning == (
        "Okay, so I need to compute 12 + 15. 12 + 15 = 27.\n\n"
        "Wait, let me double check: 10 + 15 = 25, plus 2 is 27. So it is 27."
    )
    assert answer == "\n</think>\n\nThe sum is $12 + 15 = 27$.\n\nThe final answer is \\boxed{27}."
    # the three parts are the output, in order (as the pipeline relies on)
    assert prefix + reasoning + answer == R1_CORRECT


def test_split_output_without_close_tag():
    with pytest.raises(ValueError, match="no </think>"):
        split_output(R1_UNFINISHED)
    assert split_output(R1_UNFINISHED, require_close=False) == ("", R1_UNFINISHED, "")
    # the opening line is the prefix, the rest (newlines included) the reasoning
    assert split_output("<think>\nabc\n", last=True, require_close=False) == ("<think>\n", "abc\n", "")


def test_split_output_only_first_close_tag():
    assert split_output("r</think>a</think>b") == ("", "r", "</think>a</think>b")


# ----------------------------------------------------------------------------------------------
# grade / is_equivalent


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("1/2", "\\frac{1}{2}"),
        ("\\frac{1}{2}", "1/2"),
        ("0.5", "\\frac12"),
        ("\\frac12", "0.5"),
        ("27", "27.0"),
        ("27.0", "27"),
        ("27", "27"),
        ("\\dfrac{1}{2}", "0.5"),
        ("\\frac{2}{4}", "\\frac{1}{2}"),
    ],
)
def test_equivalent_answers(pred, gold):
    assert is_equivalent(pred, gold)
    assert grade(f"Reasoning.\n</think>\n\nSo \\boxed{{{pred}}}.", gold)["correct"] is True


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("28", "27"),
        ("\\frac{1}{3}", "0.5"),
        ("-27", "27"),
        ("2", "\\frac{1}{2}"),
    ],
)
def test_wrong_answers(pred, gold):
    assert not is_equivalent(pred, gold)
    assert grade(f"\\boxed{{{pred}}}", gold)["correct"] is False


def test_is_equivalent_missing_prediction():
    assert is_equivalent(None, "27") is False
    assert is_equivalent("", "27") is False


def test_grade_r1_outputs():
    assert grade(R1_CORRECT, "27") == {"pred": "27", "correct": True}
    assert grade(R1_WRONG, "27") == {"pred": "26", "correct": False}
    assert grade(R1_FRACTION, "0.5") == {"pred": "\\frac{1}{2}", "correct": True}
    assert grade(R1_FRACTION, "1/2")["correct"] is True


def test_grade_missing_box_is_wrong():
    assert grade(R1_NO_BOX, "27") == {"pred": None, "correct": False}
    assert grade(R1_UNFINISHED, "27") == {"pred": None, "correct": False}
    assert grade("\\boxed{}", "0")["correct"] is False


@pytest.mark.parametrize("gold", ["", "   ", None])
def test_grade_empty_gold_raises(gold):
    with pytest.raises(ValueError):
        grade(R1_CORRECT, gold)


def test_multiple_choice():
    assert grade(R1_CHOICE, "B", choices="ABCD") == {"pred": "B", "correct": True}
    assert grade(R1_CHOICE, "C", choices="ABCD") == {"pred": "B", "correct": False}
    assert grade(R1_CHOICE_TEXT, "C", choices="ABCD") == {"pred": "C", "correct": True}
    assert grade("\\boxed{(A)}", "A", choices="ABCD")["correct"] is True
    assert grade("\\boxed{d}", "D", choices="ABCD") == {"pred": "D", "correct": True}
    assert grade("\\boxed{B}", " b ", choices="ABCD")["correct"] is True
    assert grade("\\boxed{\\textbf{D}}", "D", choices="ABCD")["pred"] == "D"


def test_multiple_choice_no_letter():
    assert grade(R1_NO_BOX, "B", choices="ABCD") == {"pred": None, "correct": False}
    assert grade("\\boxed{42}", "B", choices="ABCD") == {"pred": None, "correct": False}
    # a letter that is not among the choices, or a letter inside a word, is not an answer
    assert grade("\\boxed{E}", "B", choices="ABCD") == {"pred": None, "correct": False}
    assert grade("\\boxed{\\text{BAD}}", "B", choices="ABCD") == {"pred": None, "correct": False}


# ----------------------------------------------------------------------------------------------
# numeric answers, as the authors' Qwen2.5-Math-style grader compares them (relative tolerance 1e-4)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("27", (27, False)),
        ("-3", (-3, False)),
        ("27.0", (27.0, False)),
        ("4.5e33", (4.5e33, False)),
        ("1.5E-3", (1.5e-3, False)),
        ("4.5 \\times 10^{33}", (4.5e33, False)),
        ("4.5\\cdot10^{-3}", (4.5e-3, False)),
        ("2 \\times 10^3", (2000.0, False)),
        ("1,000", (1000, False)),
        ("1{,}234{,}567", (1234567, False)),
        ("1\\,000.5", (1000.5, False)),
        ("\\frac{3}{4}", (0.75, False)),
        ("-\\dfrac{3}{4}", (-0.75, False)),
        ("3/4", (0.75, False)),
        ("50\\%", (50, True)),
        ("12.5%", (12.5, True)),
        ("$27$", (27, False)),
        ("1,2", None),  # not a thousands separator
        ("\\frac{1}{0}", None),
        ("x + 1", None),
        ("10^{33}", None),  # no mantissa: left to math-verify
    ],
)
def test_parse_number(text, expected):
    parsed = parse_number(text)
    if expected is None:
        assert parsed is None
    else:
        assert parsed[0] == pytest.approx(expected[0]) and parsed[1] is expected[1]
        assert isinstance(parsed[0], int) is isinstance(expected[0], int)


@pytest.mark.parametrize(
    "pred, gold, correct",
    [
        ("4.5 \\times 10^{33}", "4.5e33", True),  # a Minerva gold answer in e-notation
        ("4.5001e33", "4.5e33", True),  # relative difference 2e-5 < 1e-4
        ("4.6e33", "4.5e33", False),
        ("4.5\\cdot10^{33}", "4.5e33", True),
        ("4.5 \\times 10^{32}", "4.5e33", False),
        ("1,000", "1000", True),
        ("1{,}000", "1000", True),
        ("\\frac{1}{3}", "0.33333", True),
        ("0.3", "\\frac{1}{3}", False),
        ("50\\%", "0.5", True),  # a percentage matches its value, a hundredth or a hundred times it
        ("0.5", "50\\%", True),
        ("25\\%", "0.5", False),
        ("200", "2", False),  # without a percent sign, no factor of 100 (the authors' grader accepts it)
        ("100001", "100000", False),  # integers exactly (the authors' tolerance accepts it)
        ("100001.0", "100000", True),
    ],
)
def test_numeric_answers(pred, gold, correct):
    assert numbers_equal(pred, gold) is correct
    assert grade(f"Reasoning.\n</think>\n\nSo \\boxed{{{pred}}}.", gold)["correct"] is correct


def test_numbers_equal_leaves_non_numbers_to_math_verify():
    assert numbers_equal("\\sqrt{2}", "1.41421") is None
    assert numbers_equal("x", "1") is None
    assert is_equivalent("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}")


def test_multiple_choice_takes_the_last_letter():
    assert grade("\\boxed{B or D? final: D}", "D", choices="ABCD") == {"pred": "D", "correct": True}
    assert grade("\\boxed{\\text{(A) or (C)}}", "A", choices="ABCD") == {"pred": "C", "correct": False}


def test_split_output_at_the_first_or_the_last_think_close():
    output = "<think>\nQuoting </think> here.\n\nDone.\n</think>\n\n\\boxed{1}"
    # generated outputs: at the first </think>; imported ones (last=True): at the last
    assert split_output(output) == ("<think>\n", "Quoting ", "</think> here.\n\nDone.\n</think>\n\n\\boxed{1}")
    assert split_output(output, last=True) == (
        "<think>\n",
        "Quoting </think> here.\n\nDone.",
        "\n</think>\n\n\\boxed{1}",
    )
    with pytest.raises(ValueError, match="no </think>"):
        split_output("no close", last=True)
