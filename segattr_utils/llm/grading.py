"""Answer extraction and grading (Sec. 4.1): the last ``\\boxed{}`` of an output, compared with the
reference numerically, then symbolically by math-verify, or by letter for multiple choice.

The paper's numbers come from its authors' Qwen2.5-Math-style grader, which this module follows where
it matters for the benchmarks: two numbers are equal within a relative tolerance of 1e-4
(``math.isclose``), read from plain, e-notation (``4.5e33``, Minerva's gold answers), LaTeX scientific
(``4.5 \\times 10^{33}``) or fraction form; a percentage also matches a hundredth or a hundred times
its value; multiple choice takes the last option letter in the box. What still differs:

- Normalisation and symbolic equality are math-verify's, not the authors' ``strip_string`` followed by
  sympy/latex2sympy (unit words, ``^\\circ``, ``x =`` prefixes, tuples and matrices are left to
  math-verify), and their case-insensitive string match is not repeated.
- Two integers are compared exactly; the authors' tolerance accepts ``100001`` for ``100000``.
- A hundredth or a hundred times the reference counts only when one side has a percent sign; the
  authors' grader drops every ``%`` and accepts ``200`` for a gold ``2``.
- Only well-formed thousands separators (``1,000``, ``1{,}000``, ``1\\,000``) are removed; the authors'
  grader deletes every comma, reading ``1,2`` as ``12``.
- Multiple-choice letters are the benchmark's options (A-D for GPQA), the authors' A-E.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

THINK_CLOSE = "</think>"


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced; None if absent."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            return text[start : i - 1].strip()
    return None


def split_output(output: str, last: bool = False, require_close: bool = True) -> tuple[str, str, str]:
    """(prefix, reasoning, answer part) with ``prefix + reasoning + answer_part == output``: the one
    split of an R1 output into the reasoning that is segmented and the answer part kept with it.

    ``prefix`` is a leading ``<think>`` line (absent when the chat template opened it), the reasoning ends
    before the newlines preceding ``</think>``, and the answer part starts there (so it begins with those
    newlines and ``</think>``). The split is at the first ``</think>``, or with ``last`` at the last one
    (imported outputs and ``segattr score``, where an earlier ``</think>`` is quoted inside the reasoning
    and the answer part follows only the last). Without ``</think>``: ``ValueError``, or with
    ``require_close=False`` the whole output after the prefix is the reasoning and the answer part is empty.
    """
    prefix = ""
    match = re.match(r"<think>\n*", output)
    if match:
        prefix = match.group(0)
    if THINK_CLOSE not in output:
        if require_close:
            raise ValueError("output has no </think>: there is no finished reasoning trace")
        return prefix, output[len(prefix) :], ""
    close = output.rindex(THINK_CLOSE) if last else output.index(THINK_CLOSE)
    head = output[len(prefix) : close]
    reasoning = head.rstrip("\n")
    return prefix, reasoning, output[len(prefix) + len(reasoning) :]


#: Relative tolerance of numeric equality (the authors' grader: ``math.isclose(..., rel_tol=1e-4)``).
REL_TOL = 1e-4

_MANTISSA = r"[-+]?(?:\d+\.?\d*|\.\d+)"
_DECIMAL = re.compile(rf"{_MANTISSA}(?:[eE][-+]?\d+)?")
_INTEGER = re.compile(r"[-+]?\d+")
_SCIENTIFIC = re.compile(rf"({_MANTISSA})\s*(?:\\times|\\cdot|\*)\s*10\s*\^\s*(?:\{{\s*([-+]?\d+)\s*\}}|(\d))")
_FRACTION = re.compile(rf"([-+]?)\\[dt]?frac\s*\{{\s*({_MANTISSA})\s*\}}\s*\{{\s*({_MANTISSA})\s*\}}")
_SLASH = re.compile(rf"({_MANTISSA})\s*/\s*({_MANTISSA})")
_THOUSANDS = re.compile(r"(?<![\d.])\d{1,3}(?:(?:,|\{,\}|\\,)\d{3})+(?!\d)")


def parse_number(text: str) -> tuple[int | float, bool] | None:
    """``(value, has a percent sign)`` of a numeric answer, None for anything else.

    Reads plain numbers, e-notation (``4.5e33``), LaTeX scientific notation (``4.5 \\times 10^{33}``,
    ``4.5\\cdot10^{33}``), thousands separators (``1,000``, ``1{,}000``, ``1\\,000``), fractions of two
    numbers (``\\frac{3}{4}``, ``-\\dfrac{3}{4}``, ``3/4``) and a trailing ``%`` or ``\\%``, inside
    optional ``$...$``. The value is an ``int`` where the answer is written as an integer.
    """
    number = text.strip().strip("$").strip()
    percent = number.endswith("%")
    if percent:
        number = number[:-1].removesuffix("\\").rstrip()
    number = _THOUSANDS.sub(lambda match: re.sub(r"\D", "", match.group(0)), number)
    if _INTEGER.fullmatch(number):
        return int(number), percent
    if _DECIMAL.fullmatch(number):
        return float(number), percent
    if match := _SCIENTIFIC.fullmatch(number):
        return float(f"{match.group(1)}e{match.group(2) or match.group(3)}"), percent
    if match := _FRACTION.fullmatch(number):
        sign, numerator, denominator = match.groups()
    elif match := _SLASH.fullmatch(number):
        sign, (numerator, denominator) = "", match.groups()
    else:
        return None
    if float(denominator) == 0:
        return None
    return (-1 if sign == "-" else 1) * float(numerator) / float(denominator), percent


def numbers_equal(predicted: str, gold: str) -> bool | None:
    """Numeric equality of two answers, None unless both are numbers (:func:`parse_number`).

    As the authors' grader: equal within relative tolerance :data:`REL_TOL`, and where either side is a
    percentage the prediction may also be a hundredth or a hundred times the reference (``50\\%`` =
    ``0.5``). Two integers must be equal exactly.
    """
    parsed_predicted, parsed_gold = parse_number(predicted), parse_number(gold)
    if parsed_predicted is None or parsed_gold is None:
        return None
    (value, predicted_percent), (reference, gold_percent) = parsed_predicted, parsed_gold
    if predicted_percent or gold_percent:
        return any(
            math.isclose(value, target, rel_tol=REL_TOL) for target in (reference, reference / 100, reference * 100)
        )
    if isinstance(value, int) and isinstance(reference, int):
        return value == reference
    return math.isclose(value, reference, rel_tol=REL_TOL)


@lru_cache(maxsize=4096)
def _parse_gold(answer: str):
    from math_verify import parse

    return parse("$" + answer + "$")


def is_equivalent(predicted: str | None, gold: str) -> bool:
    """Equivalence of two answer strings: equal text, else :func:`numbers_equal` where both are numbers,
    else math-verify's symbolic equivalence (no timeouts-as-errors: failures are False)."""
    if predicted is None or predicted == "":
        return False
    if predicted.strip() == gold.strip():
        return True
    numeric = numbers_equal(predicted, gold)
    if numeric is not None:
        return numeric
    from math_verify import parse, verify

    try:
        return bool(verify(_parse_gold(gold), parse("$" + predicted + "$")))
    except Exception:  # math-verify raises on unparsable LaTeX; an unparsable answer is wrong.
        return False


def grade(output: str, gold: str, choices: str | None = None) -> dict:
    """Grade one model output: extract the last boxed answer and compare with ``gold``.

    ``choices`` (e.g. "ABCD") switches to multiple-choice grading by the last option letter in the box
    (GPQA; "B or D? final: D" answers D, as the authors' grader reads it). Returns
    ``{"pred": str | None, "correct": bool}``.
    """
    if not isinstance(gold, str) or not gold.strip():
        raise ValueError("gold answer is empty")
    pred = last_boxed(output)
    if choices:
        letter = None
        if pred:
            letters = re.findall(rf"\b([{choices}])\b", pred.replace("\\text{", " ").upper())
            letter = letters[-1] if letters else None
        return {"pred": letter, "correct": letter is not None and letter == gold.strip().upper()}
    return {"pred": pred, "correct": is_equivalent(pred, gold)}
