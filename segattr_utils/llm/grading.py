"""Answer extraction and grading (Sec. 4.1): the last ``\\boxed{}`` of an output, compared with the
reference by math-verify (numeric, then symbolic equality), or by letter for multiple choice.
"""

from __future__ import annotations

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


def split_output(output: str) -> tuple[str, str, str]:
    """(prefix, reasoning, answer part) with ``prefix + reasoning + answer_part == output``.

    ``prefix`` is a leading ``<think>`` line (absent when the chat template opened it), the reasoning ends
    before the newlines preceding ``</think>``, and the answer part starts there. Raises ``ValueError``
    without ``</think>``.
    """
    if THINK_CLOSE not in output:
        raise ValueError("output has no </think>: there is no finished reasoning trace")
    prefix = ""
    match = re.match(r"<think>\n*", output)
    if match:
        prefix = match.group(0)
    head = output[len(prefix) : output.index(THINK_CLOSE)]
    reasoning = head.rstrip("\n")
    return prefix, reasoning, output[len(prefix) + len(reasoning) :]


def split_reasoning(output: str) -> tuple[str, str | None]:
    """(reasoning, answer part) of an R1-style output; the answer part is None without ``</think>``.

    Leading ``<think>`` and surrounding newlines are not part of the trace that is segmented.
    """
    if THINK_CLOSE not in output:
        return output, None
    reasoning, answer_part = output.split(THINK_CLOSE, 1)
    if reasoning.startswith("<think>"):
        reasoning = reasoning[len("<think>") :]
    return reasoning.rstrip("\n"), answer_part


@lru_cache(maxsize=4096)
def _parse_gold(answer: str):
    from math_verify import parse

    return parse("$" + answer + "$")


def is_equivalent(predicted: str | None, gold: str) -> bool:
    """math-verify equivalence of two answer strings (no timeouts-as-errors: failures are False)."""
    if predicted is None or predicted == "":
        return False
    if predicted.strip() == gold.strip():
        return True
    from math_verify import parse, verify

    try:
        return bool(verify(_parse_gold(gold), parse("$" + predicted + "$")))
    except Exception:  # math-verify raises on unparsable LaTeX; an unparsable answer is wrong.
        return False


def grade(output: str, gold: str, choices: str | None = None) -> dict:
    """Grade one model output: extract the last boxed answer and compare with ``gold``.

    ``choices`` (e.g. "ABCD") switches to multiple-choice grading by letter (GPQA). Returns
    ``{"pred": str | None, "correct": bool}``.
    """
    if not isinstance(gold, str) or not gold.strip():
        raise ValueError("gold answer is empty")
    pred = last_boxed(output)
    if choices:
        letter = None
        if pred:
            match = re.search(rf"\b([{choices}])\b", pred.replace("\\text{", " ").upper())
            letter = match.group(1) if match else None
        return {"pred": letter, "correct": letter is not None and letter == gold.strip().upper()}
    return {"pred": pred, "correct": is_equivalent(pred, gold)}
