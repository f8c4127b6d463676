"""Token spans of segments inside ONE tokenisation of the whole sequence (Sec. 2.2, App. C.4).

The sequence that is attributed is ``prompt + trace + answer suffix``. It is tokenised once with a fast
tokenizer's offset mapping, and every character span (a segment, the answer) is mapped onto token
indices from those offsets. Prefixes are never re-tokenised: byte-level BPE merges across the boundary
(".\\n\\n" is one Qwen token), so re-tokenising prefixes gives spans that disagree with the real
sequence.

Boundary rule (``rule="first_char"``, the default): a token belongs to the span that contains its
first character. A token that straddles a boundary (".\\n\\n" before "Wait") therefore stays with the
earlier segment, so the spans of consecutive segments are contiguous, never overlap and partition the
tokens of the trace. ``rule="last_char"`` assigns a straddling token to the span holding its last
character instead. Tokens with an empty offset range (some special tokens) belong to the span that
contains their position.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

BoundaryRule = Literal["first_char", "last_char"]


def _anchor_positions(offsets: Sequence[tuple[int, int]], rule: BoundaryRule) -> list[int]:
    if rule == "first_char":
        anchors = [int(start) for start, _ in offsets]
    elif rule == "last_char":
        anchors = [int(start) if end <= start else int(end) - 1 for start, end in offsets]
    else:
        raise ValueError(f"unknown boundary rule {rule!r}; use 'first_char' or 'last_char'")
    for i in range(1, len(anchors)):
        if anchors[i] < anchors[i - 1]:
            raise ValueError(
                f"offset mapping is not monotonic at token {i} ({offsets[i - 1]} then {offsets[i]}); "
                "give the offsets of a single left-to-right tokenisation"
            )
    return anchors


def char_spans_to_token_spans(
    offsets: Sequence[tuple[int, int]],
    char_spans: Sequence[tuple[int, int]],
    rule: BoundaryRule = "first_char",
) -> list[tuple[int, int]]:
    """Map character spans onto half-open token spans ``[(tok_start, tok_end), ...]``.

    ``offsets`` is the offset mapping of one tokenisation (``(char_start, char_end)`` per token). Token
    ``t`` is assigned to the character span containing its anchor character (see the module docstring
    for the rule). Character spans must be sorted and non-overlapping; spans that hold no anchor get an
    empty token span ``(k, k)``.
    """
    anchors = _anchor_positions(offsets, rule)
    token_spans = []
    previous_end = None
    for char_start, char_end in char_spans:
        if char_end < char_start:
            raise ValueError(f"character span ({char_start}, {char_end}) ends before it starts")
        if previous_end is not None and char_start < previous_end:
            raise ValueError("character spans must be sorted and must not overlap")
        previous_end = char_end
        token_spans.append((bisect.bisect_left(anchors, char_start), bisect.bisect_left(anchors, char_end)))
    return token_spans


def char_span_to_covering_tokens(offsets: Sequence[tuple[int, int]], char_start: int, char_end: int) -> tuple[int, int]:
    """The smallest token span whose tokens cover every character of ``[char_start, char_end)``.

    Used for the answer target: every token that overlaps the answer's characters is scored, so an
    answer merged with a neighbouring brace ("{2") is never dropped.
    """
    if char_end <= char_start:
        raise ValueError(f"empty character span ({char_start}, {char_end})")
    covering = [i for i, (s, e) in enumerate(offsets) if s < char_end and e > char_start]
    if not covering:
        raise ValueError(f"no token covers characters [{char_start}, {char_end})")
    return covering[0], covering[-1] + 1


@dataclass(frozen=True)
class AttributionSequence:
    """A tokenised ``prompt + trace + suffix`` with the spans the IG pipeline needs.

    ``segment_spans`` are token spans of the trace's segments (boundary rule above), ``answer_span``
    the tokens of the answer inside ``\\boxed{}`` in the suffix (the IG target, App. C.4), and
    ``trace_span`` the union of the segment spans.
    """

    text: str
    input_ids: list[int]
    offsets: list[tuple[int, int]]
    prompt_span: tuple[int, int]
    segment_spans: list[tuple[int, int]]
    answer_span: tuple[int, int]
    segment_char_spans: list[tuple[int, int]]

    @property
    def trace_span(self) -> tuple[int, int]:
        return self.segment_spans[0][0], self.segment_spans[-1][1]

    def __len__(self) -> int:
        return len(self.input_ids)


#: The authors' answer suffix (App. C.4): the answer is forced after the trace; F scores the tokens
#: inside the braces.
DEFAULT_ANSWER_SUFFIX = "</think> So, the final answer is \\boxed{{{answer}}}"


def tokenize_with_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """One tokenisation of ``text`` with its offset mapping (fast tokenizers only)."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            "a fast tokenizer (tokenizers-backed) is required: offset mappings are how segment spans "
            "are found without re-tokenising prefixes"
        )
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(encoded["input_ids"]), [(int(start), int(end)) for start, end in encoded["offset_mapping"]]


def build_attribution_sequence(
    tokenizer,
    prompt: str,
    trace_segments: Sequence[str],
    answer: str,
    suffix_template: str = DEFAULT_ANSWER_SUFFIX,
    rule: BoundaryRule = "first_char",
) -> AttributionSequence:
    """Tokenise ``prompt + trace + suffix`` once and locate segments and the answer (Sec. 2.2).

    ``prompt`` is the fully templated prompt text (chat template with the generation prompt), the
    trace is the concatenation of ``trace_segments``, and ``suffix_template`` must contain
    ``{answer}`` exactly once; the tokens covering the answer are the IG target span.
    """
    if not trace_segments or not "".join(trace_segments):
        raise ValueError("trace is empty: there are no segments to attribute")
    if any(s == "" for s in trace_segments):
        raise ValueError("a segment is empty; segments must be non-empty strings")
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError("answer is empty: IG needs the correct answer's tokens as its target")
    if suffix_template.count("{answer}") != 1:
        raise ValueError("suffix_template must contain '{answer}' exactly once")
    head, tail = suffix_template.split("{answer}")
    head = head.replace("{{", "{").replace("}}", "}")
    tail = tail.replace("{{", "{").replace("}}", "}")

    trace = "".join(trace_segments)
    text = prompt + trace + head + answer + tail
    input_ids, offsets = tokenize_with_offsets(tokenizer, text)

    seg_char_spans = []
    cursor = len(prompt)
    for seg in trace_segments:
        seg_char_spans.append((cursor, cursor + len(seg)))
        cursor += len(seg)
    answer_start = len(prompt) + len(trace) + len(head)
    answer_end = answer_start + len(answer)

    spans = char_spans_to_token_spans(offsets, [(0, len(prompt))] + seg_char_spans, rule)
    prompt_span, segment_spans = spans[0], spans[1:]
    answer_span = char_span_to_covering_tokens(offsets, answer_start, answer_end)
    if answer_span[0] < segment_spans[-1][1]:
        raise ValueError("the answer's first token merges with the trace; put a separator in the suffix")
    if answer_span[0] == 0:
        raise ValueError("the answer cannot be the first token: nothing precedes it to predict it")
    return AttributionSequence(
        text=text,
        input_ids=input_ids,
        offsets=offsets,
        prompt_span=prompt_span,
        segment_spans=segment_spans,
        answer_span=answer_span,
        segment_char_spans=seg_char_spans,
    )
