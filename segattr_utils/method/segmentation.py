"""Splitting a reasoning trace into segments at transition keywords (paper Sec. 2.1, App. C.2).

A trace T is partitioned into segments S_1..S_n. Each segment after the first begins with a transition
keyword such as "\\n\\nWait"; the keyword (with its leading blank line) starts the new segment, so
``"".join(segment(t)) == t`` for every trace.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

#: The paper's transition list (App. C.2): Retro-Search's keywords with "But" narrowed to three
#: specific variants and the fillers "Hmm"/"Hmmm" dropped.
DEFAULT_KEYWORDS: tuple[str, ...] = (
    "\n\nWait",
    "\n\nAlternatively",
    "\n\nBut wait",
    "\n\nBut alternatively",
    "\n\nBut just to",
    "\n\nHowever",
    "\n\nNot sure",
    "\n\nGoing back",
    "\n\nBacktrack",
    "\n\nTrace back",
    "\n\nAnother",
)

#: The finer Retro-Search list (Lu et al., 2025) used for the paper's Table 7.
RETRO_SEARCH_KEYWORDS: tuple[str, ...] = (
    "\n\nWait",
    "\n\nAlternatively",
    "\n\nBut",
    "\n\nHowever",
    "\n\nHmmm",
    "\n\nHmm",
    "\n\nNot sure",
    "\n\nGoing back",
    "\n\nBacktrack",
    "\n\nTrace back",
    "\n\nAnother",
)


@lru_cache(maxsize=32)
def _boundary_pattern(keywords: tuple[str, ...]) -> re.Pattern[str]:
    # Longest first so that "\n\nBut wait" wins over a "\n\nBut" in the same list; a boundary is a
    # zero-width position, so the keyword itself stays in the segment it opens.
    alternatives = "|".join(re.escape(k) for k in sorted(set(keywords), key=len, reverse=True))
    return re.compile(f"(?=(?:{alternatives}))")


def _validate_keywords(keywords: Sequence[str]) -> tuple[str, ...]:
    if isinstance(keywords, str):
        raise TypeError("keywords must be a sequence of strings, not a single string")
    keywords = tuple(keywords)
    if not keywords:
        raise ValueError("keywords is empty: give at least one transition keyword")
    for keyword in keywords:
        if not isinstance(keyword, str) or not keyword:
            raise ValueError(f"every keyword must be a non-empty string, got {keyword!r}")
    return keywords


def segment_char_spans(text: str, keywords: Sequence[str] = DEFAULT_KEYWORDS) -> list[tuple[int, int]]:
    """Character spans ``[(start, end), ...]`` of the segments of ``text`` (Sec. 2.1).

    A boundary is placed at every occurrence of a keyword except at position 0 (a trace that opens
    with a keyword is still one segment there). The spans are contiguous, non-empty and cover the
    whole text.
    """
    if not isinstance(text, str):
        raise TypeError(f"trace must be a str, got {type(text).__name__}")
    if not text:
        raise ValueError("trace is empty: there is nothing to segment")
    pattern = _boundary_pattern(_validate_keywords(keywords))
    starts = [0] + [m.start() for m in pattern.finditer(text) if m.start() > 0]
    ends = starts[1:] + [len(text)]
    return list(zip(starts, ends))


def segment(text: str, keywords: Sequence[str] = DEFAULT_KEYWORDS) -> list[str]:
    """Split a reasoning trace into segments at transition keywords (Sec. 2.1, App. C.2).

    The transition starts the new segment; ``"".join(segment(t)) == t`` always; a trace without any
    transition is a single segment. Raises ``ValueError`` for an empty trace.
    """
    return [text[start:end] for start, end in segment_char_spans(text, keywords)]
