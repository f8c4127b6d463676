"""Tests for segattr_utils.method.segmentation (paper Sec. 2.1, App. C.2).

Expected values are written by hand (keyword lists copied from App. C.2, segmentations of a small
R1-style trace split by eye) or computed by an independent brute-force oracle in the property tests.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segattr_utils.method.segmentation import (
    DEFAULT_KEYWORDS,
    RETRO_SEARCH_KEYWORDS,
    segment,
    segment_char_spans,
)

# --------------------------------------------------------------------------------------------------
# Keyword lists: exactly those of App. C.2
# --------------------------------------------------------------------------------------------------

PAPER_DEFAULT = (
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

PAPER_RETRO = (
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


def test_default_keywords_equal_paper_list():
    assert tuple(DEFAULT_KEYWORDS) == PAPER_DEFAULT
    assert len(set(DEFAULT_KEYWORDS)) == len(DEFAULT_KEYWORDS) == 11


def test_retro_search_keywords_equal_paper_list():
    assert tuple(RETRO_SEARCH_KEYWORDS) == PAPER_RETRO
    assert len(set(RETRO_SEARCH_KEYWORDS)) == len(RETRO_SEARCH_KEYWORDS) == 11


@pytest.mark.parametrize("keywords", [DEFAULT_KEYWORDS, RETRO_SEARCH_KEYWORDS], ids=["default", "retro"])
def test_every_keyword_starts_with_blank_line(keywords):
    for keyword in keywords:
        assert keyword.startswith("\n\n"), keyword
        assert len(keyword) > 2 and not keyword[2].isspace(), keyword


def test_default_list_differs_from_retro_exactly_as_paper_describes():
    # App. C.2: "But" narrowed to three variants; fillers "Hmm"/"Hmmm" dropped; the rest shared.
    default, retro = set(DEFAULT_KEYWORDS), set(RETRO_SEARCH_KEYWORDS)
    assert default - retro == {"\n\nBut wait", "\n\nBut alternatively", "\n\nBut just to"}
    assert retro - default == {"\n\nBut", "\n\nHmm", "\n\nHmmm"}


# --------------------------------------------------------------------------------------------------
# A small hand-written R1-style trace with hand-written expected segmentations
# --------------------------------------------------------------------------------------------------

TRACE = (
    "Okay, so I need to find the remainder when 2^10 is divided by 7. Let me start by computing "
    "powers of 2 modulo 7.\n\n"
    "2^1 = 2, 2^2 = 4, 2^3 = 8, which is 1 mod 7.\n\n"
    "Wait, so the powers repeat with period 3. Since 10 = 3*3 + 1, we get 2^10 = 2^1 = 2 mod 7.\n\n"
    "But let me double-check by direct computation: 2^10 = 1024, and 7*146 = 1022, so the remainder "
    "is 2. Wait, is 7*146 really 1022? 7*140 = 980 and 7*6 = 42, so yes.\n\n"
    "Hmm, that matches.\n\n"
    "Alternatively, Fermat's little theorem gives 2^6 = 1 mod 7, so 2^10 = 2^4 = 16.\n"
    "Wait, 16 = 14 + 2.\n\n"
    "But wait, 16 mod 7 is 2, yes.\n\n"
    "So the remainder is 2.\n"
)

EXPECTED_DEFAULT = [
    "Okay, so I need to find the remainder when 2^10 is divided by 7. Let me start by computing "
    "powers of 2 modulo 7.\n\n2^1 = 2, 2^2 = 4, 2^3 = 8, which is 1 mod 7.",
    "\n\nWait, so the powers repeat with period 3. Since 10 = 3*3 + 1, we get 2^10 = 2^1 = 2 mod 7."
    "\n\nBut let me double-check by direct computation: 2^10 = 1024, and 7*146 = 1022, so the "
    "remainder is 2. Wait, is 7*146 really 1022? 7*140 = 980 and 7*6 = 42, so yes."
    "\n\nHmm, that matches.",
    "\n\nAlternatively, Fermat's little theorem gives 2^6 = 1 mod 7, so 2^10 = 2^4 = 16.\nWait, 16 = 14 + 2.",
    "\n\nBut wait, 16 mod 7 is 2, yes.\n\nSo the remainder is 2.\n",
]

EXPECTED_RETRO = [
    EXPECTED_DEFAULT[0],
    "\n\nWait, so the powers repeat with period 3. Since 10 = 3*3 + 1, we get 2^10 = 2^1 = 2 mod 7.",
    "\n\nBut let me double-check by direct computation: 2^10 = 1024, and 7*146 = 1022, so the "
    "remainder is 2. Wait, is 7*146 really 1022? 7*140 = 980 and 7*6 = 42, so yes.",
    "\n\nHmm, that matches.",
    EXPECTED_DEFAULT[2],
    EXPECTED_DEFAULT[3],
]


def test_fixture_is_consistent():
    # The hand-written expectations are partitions of the fixture text.
    assert "".join(EXPECTED_DEFAULT) == TRACE
    assert "".join(EXPECTED_RETRO) == TRACE


def test_realistic_trace_default_keywords():
    assert segment(TRACE) == EXPECTED_DEFAULT
    assert segment(TRACE, DEFAULT_KEYWORDS) == EXPECTED_DEFAULT


def test_realistic_trace_retro_keywords():
    assert segment(TRACE, RETRO_SEARCH_KEYWORDS) == EXPECTED_RETRO


def test_realistic_trace_char_spans():
    # Spans derived by hand from the lengths of the hand-written segments.
    expected, start = [], 0
    for seg in EXPECTED_DEFAULT:
        expected.append((start, start + len(seg)))
        start += len(seg)
    spans = segment_char_spans(TRACE)
    assert spans == expected
    assert spans[0][0] == 0 and spans[-1][1] == len(TRACE)
    assert [TRACE[s:e] for s, e in spans] == EXPECTED_DEFAULT


# --------------------------------------------------------------------------------------------------
# Boundary rules on tiny inputs
# --------------------------------------------------------------------------------------------------


def test_trace_without_transitions_is_one_segment():
    text = "Okay, let me compute 3 + 4 = 7.\n\nSo the answer is 7.\n"
    assert segment(text) == [text]
    assert segment(text, RETRO_SEARCH_KEYWORDS) == [text]
    assert segment_char_spans(text) == [(0, len(text))]


def test_single_character_trace():
    assert segment("x") == ["x"]
    assert segment_char_spans("x") == [(0, 1)]


def test_but_filler_is_not_a_boundary_with_default_list():
    text = "We have x = 3.\n\nBut let me substitute it back: 3 + 1 = 4."
    assert segment(text) == [text]


def test_but_filler_is_a_boundary_with_retro_list():
    text = "We have x = 3.\n\nBut let me substitute it back: 3 + 1 = 4."
    assert segment(text, RETRO_SEARCH_KEYWORDS) == [
        "We have x = 3.",
        "\n\nBut let me substitute it back: 3 + 1 = 4.",
    ]


@pytest.mark.parametrize("variant", ["But wait", "But alternatively", "But just to"])
def test_but_variants_are_boundaries_with_default_list(variant):
    text = f"x = 3.\n\n{variant} be sure, x = 3."
    assert segment(text) == ["x = 3.", f"\n\n{variant} be sure, x = 3."]


def test_but_wait_is_one_boundary_with_retro_list():
    # "\n\nBut" and "\n\nBut wait" both match at the same position: one boundary, not two.
    text = "x = 3.\n\nBut wait, x = 3."
    assert segment(text, RETRO_SEARCH_KEYWORDS) == ["x = 3.", "\n\nBut wait, x = 3."]


def test_hmm_is_boundary_only_with_retro_list():
    text = "x = 3.\n\nHmm, fine.\n\nHmmm, also fine."
    assert segment(text) == [text]
    assert segment(text, RETRO_SEARCH_KEYWORDS) == ["x = 3.", "\n\nHmm, fine.", "\n\nHmmm, also fine."]


@pytest.mark.parametrize(
    "text",
    [
        "x = 3. Wait, x = 3.",
        "x = 3.\nWait, x = 3.",
        "x = 3.\n Wait, x = 3.",
        "x = 3.\n\n Wait, x = 3.",
        "x = 3.\n\nwait, x = 3.",
        "x = 3.\r\n\r\nWait, x = 3.",
    ],
    ids=["inline", "single-newline", "newline-space", "blank-line-space", "lowercase", "crlf"],
)
def test_wait_without_blank_line_is_not_a_boundary(text):
    assert segment(text) == [text]
    assert segment(text, RETRO_SEARCH_KEYWORDS) == [text]


def test_keyword_at_position_zero_is_not_a_boundary():
    text = "\n\nWait, the trace opens with a keyword."
    assert segment(text) == [text]
    assert segment_char_spans(text) == [(0, len(text))]


def test_consecutive_keywords():
    assert segment("\n\nWait\n\nWait") == ["\n\nWait", "\n\nWait"]
    assert segment("a\n\nWait\n\nWait") == ["a", "\n\nWait", "\n\nWait"]
    assert segment("a\n\nWait\n\nAlternatively\n\nHowever") == [
        "a",
        "\n\nWait",
        "\n\nAlternatively",
        "\n\nHowever",
    ]
    assert segment_char_spans("a\n\nWait\n\nWait") == [(0, 1), (1, 7), (7, 13)]


def test_extra_newlines_before_keyword():
    # The keyword is "\n\nWait"; the extra leading newlines stay with the previous segment.
    assert segment("\n\n\n\nWait") == ["\n\n", "\n\nWait"]
    assert segment("x.\n\n\n\nWait, y.") == ["x.\n\n", "\n\nWait, y."]
    assert segment("x.\n\n\nWait, y.") == ["x.\n", "\n\nWait, y."]


def test_custom_keyword_list():
    text = "a\n\nSo b\n\nWait c"
    assert segment(text, ["\n\nSo"]) == ["a", "\n\nSo b\n\nWait c"]
    assert segment(text, ("\n\nSo", "\n\nWait")) == ["a", "\n\nSo b", "\n\nWait c"]
    # Any iterable of strings works, including a generator.
    assert segment(text, (k for k in ["\n\nWait"])) == ["a\n\nSo b", "\n\nWait c"]


def test_regex_metacharacters_in_keywords_are_literal():
    text = "a.b\n\n(?) c\n\n.* d"
    assert segment(text, ["\n\n(?)", "\n\n.*"]) == ["a.b", "\n\n(?) c", "\n\n.* d"]


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("func", [segment, segment_char_spans])
def test_empty_trace_raises_value_error(func):
    with pytest.raises(ValueError, match="empty"):
        func("")


@pytest.mark.parametrize("bad", [None, b"\n\nWait", 42, ["a", "b"]])
@pytest.mark.parametrize("func", [segment, segment_char_spans])
def test_non_str_trace_raises_type_error(func, bad):
    with pytest.raises(TypeError, match="str"):
        func(bad)


@pytest.mark.parametrize("empty", [[], (), set()])
def test_empty_keyword_list_raises_value_error(empty):
    with pytest.raises(ValueError, match="keyword"):
        segment("a\n\nWait b", empty)


def test_single_string_as_keywords_raises_type_error():
    with pytest.raises(TypeError, match="single string"):
        segment("a\n\nWait b", "\n\nWait")
    with pytest.raises(TypeError):
        segment_char_spans("a\n\nWait b", "\n\nWait")


@pytest.mark.parametrize("bad", [[""], ["\n\nWait", ""], ["\n\nWait", None]])
def test_empty_or_non_str_keyword_raises_value_error(bad):
    with pytest.raises(ValueError, match="keyword"):
        segment("a\n\nWait b", bad)


# --------------------------------------------------------------------------------------------------
# Property tests: round trip and an independent brute-force oracle for the boundaries
# --------------------------------------------------------------------------------------------------

ALL_KEYWORDS = sorted(set(DEFAULT_KEYWORDS) | set(RETRO_SEARCH_KEYWORDS))

_free_text = st.text(
    alphabet=st.sampled_from(list("abcWBHw ,.:?\n\n\n\t=+0123456789") + ["é", "∑", "你", "\r"]),
    min_size=0,
    max_size=12,
)
_piece = st.one_of(
    _free_text,
    st.sampled_from(ALL_KEYWORDS),
    st.sampled_from(["\n\n\n\nWait", "\n\n", "\n", "Wait", "But", "Hmm", "\n\nBut ", "\n\nWaiting"]),
    st.sampled_from(ALL_KEYWORDS).map(lambda k: k[2:]),  # keyword without its blank line
)
traces = st.lists(_piece, min_size=1, max_size=14).map("".join).filter(bool)
# Traces that open with a keyword (position 0) and contain consecutive keywords.
keyword_first_traces = st.tuples(
    st.sampled_from(ALL_KEYWORDS), st.lists(st.sampled_from(ALL_KEYWORDS), max_size=4), traces
).map(lambda t: t[0] + "".join(t[1]) + t[2])


def _oracle_starts(text: str, keywords) -> list[int]:
    """Segment starts by brute force: 0 plus every position > 0 where some keyword occurs."""
    return [0] + [p for p in range(1, len(text)) if any(text.startswith(k, p) for k in keywords)]


_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _check_against_oracle(text: str, keywords) -> None:
    segments = segment(text, keywords)
    # Exact round trip.
    assert "".join(segments) == text
    # Every segment non-empty; every segment after the first opens with a keyword.
    assert all(segments)
    for seg in segments[1:]:
        assert any(seg.startswith(k) for k in keywords), repr(seg)
    # Spans: contiguous, cover the text, and start exactly where the brute-force oracle says.
    spans = segment_char_spans(text, keywords)
    starts = _oracle_starts(text, keywords)
    assert [s for s, _ in spans] == starts
    assert [e for _, e in spans] == starts[1:] + [len(text)]
    assert [text[s:e] for s, e in spans] == segments


@_SETTINGS
@given(text=traces)
def test_property_default_keywords(text):
    _check_against_oracle(text, DEFAULT_KEYWORDS)


@_SETTINGS
@given(text=traces)
def test_property_retro_keywords(text):
    _check_against_oracle(text, RETRO_SEARCH_KEYWORDS)


@_SETTINGS
@given(text=keyword_first_traces, use_retro=st.booleans())
def test_property_keyword_at_start_and_consecutive(text, use_retro):
    keywords = RETRO_SEARCH_KEYWORDS if use_retro else DEFAULT_KEYWORDS
    _check_against_oracle(text, keywords)
    # A keyword at position 0 never produces an empty first segment.
    assert segment(text, keywords)[0] != ""


@_SETTINGS
@given(text=traces)
def test_property_retro_is_at_least_as_fine_as_default(text):
    # Every default boundary is also a retro boundary ("\n\nBut" covers the three But-variants).
    default_starts = {s for s, _ in segment_char_spans(text, DEFAULT_KEYWORDS)}
    retro_starts = {s for s, _ in segment_char_spans(text, RETRO_SEARCH_KEYWORDS)}
    assert default_starts <= retro_starts
