"""Tests for segattr_utils.method.token_spans and segattr_utils.world.tokenizer.build_bpe_tokenizer (Sec. 2.2, App. C.4).

Two levels: hand-made offset mappings with hand-written expected token spans, and a small locally
trained byte-level BPE tokenizer (Qwen2 split regex) where ".\\n\\n" is one token, so a segment
boundary "\\n\\nWait" falls inside a token. Expectations for the real tokenizer are derived from its
offset mapping by independent helper code, never from the package's own span output.
"""

from __future__ import annotations

import pytest

from segattr_utils.method.token_spans import (
    DEFAULT_ANSWER_SUFFIX,
    build_attribution_sequence,
    char_span_to_covering_tokens,
    char_spans_to_token_spans,
    tokenize_with_offsets,
)
from segattr_utils.world.tokenizer import (
    ASSISTANT,
    BOS,
    THINK_CLOSE,
    THINK_OPEN,
    USER,
    build_bpe_tokenizer,
)

# --------------------------------------------------------------------------------------------------
# Hand-made offsets
# --------------------------------------------------------------------------------------------------
#
#   text   = "Hi.\n\nWait ok"
#   chars  :  H0 i1 .2 \n3 \n4 W5 a6 i7 t8 _9 o10 k11
#   tokens :  "Hi"(0,2)  ".\n\n"(2,5)  "Wait"(5,9)  " ok"(9,12)
#   segments: "Hi." = (0,3)   "\n\nWait ok" = (3,12)   -> token 1 straddles the boundary at char 3
HAND_TEXT = "Hi.\n\nWait ok"
HAND_OFFSETS = [(0, 2), (2, 5), (5, 9), (9, 12)]
HAND_SEGMENTS = [(0, 3), (3, 12)]


def test_hand_offsets_are_those_of_the_text():
    assert [HAND_TEXT[s:e] for s, e in HAND_OFFSETS] == ["Hi", ".\n\n", "Wait", " ok"]
    assert [HAND_TEXT[s:e] for s, e in HAND_SEGMENTS] == ["Hi.", "\n\nWait ok"]


def test_first_char_rule_keeps_straddling_token_with_earlier_segment():
    assert char_spans_to_token_spans(HAND_OFFSETS, HAND_SEGMENTS) == [(0, 2), (2, 4)]
    assert char_spans_to_token_spans(HAND_OFFSETS, HAND_SEGMENTS, rule="first_char") == [(0, 2), (2, 4)]


def test_last_char_rule_moves_straddling_token_to_later_segment():
    # last characters: 1, 4, 8, 11 -> ".\n\n" (last char 4) lies in segment 2.
    assert char_spans_to_token_spans(HAND_OFFSETS, HAND_SEGMENTS, rule="last_char") == [(0, 1), (1, 4)]


def test_no_straddle_both_rules_agree():
    # "Hi.\n\nWait" tokenised as "Hi" "." "\n\n" "Wait": the boundary at 3 is a token boundary.
    offsets = [(0, 2), (2, 3), (3, 5), (5, 9)]
    spans = [(0, 3), (3, 9)]
    expected = [(0, 2), (2, 4)]
    assert char_spans_to_token_spans(offsets, spans, rule="first_char") == expected
    assert char_spans_to_token_spans(offsets, spans, rule="last_char") == expected


def test_prompt_and_three_segments_partition_tokens():
    # text: "Q?" + "A.\n\nWait b.\n\nWait c" ; tokens: "Q" "?" "A" ".\n\n" "Wait" " b" ".\n\n" "Wait" " c"
    text = "Q?A.\n\nWait b.\n\nWait c"
    offsets = [(0, 1), (1, 2), (2, 3), (3, 6), (6, 10), (10, 12), (12, 15), (15, 19), (19, 21)]
    assert [text[s:e] for s, e in offsets] == ["Q", "?", "A", ".\n\n", "Wait", " b", ".\n\n", "Wait", " c"]
    char_spans = [(0, 2), (2, 4), (4, 13), (13, 21)]  # prompt, "A.", "\n\nWait b.", "\n\nWait c"
    assert [text[s:e] for s, e in char_spans] == ["Q?", "A.", "\n\nWait b.", "\n\nWait c"]
    assert char_spans_to_token_spans(offsets, char_spans) == [(0, 2), (2, 4), (4, 7), (7, 9)]
    assert char_spans_to_token_spans(offsets, char_spans, rule="last_char") == [(0, 2), (2, 3), (3, 6), (6, 9)]


def test_segment_swallowed_by_a_token_gets_empty_span():
    # Char span (3, 4) ("\n") lies inside token ".\n\n" (2, 5) that starts in the previous span.
    spans = char_spans_to_token_spans(HAND_OFFSETS, [(0, 3), (3, 4), (4, 12)])
    assert spans == [(0, 2), (2, 2), (2, 4)]


def test_empty_offset_token_belongs_to_span_containing_its_position():
    # A special token with an empty offset range at position 0, then "Hi" ".\n\n" "Wait" " ok".
    offsets = [(0, 0)] + HAND_OFFSETS
    assert char_spans_to_token_spans(offsets, HAND_SEGMENTS) == [(0, 3), (3, 5)]
    assert char_spans_to_token_spans(offsets, HAND_SEGMENTS, rule="last_char") == [(0, 2), (2, 5)]


def test_repeated_offsets_of_multibyte_character_are_monotonic():
    # Byte-level BPE may split one character into several tokens that share its offsets.
    offsets = [(0, 1), (1, 2), (1, 2), (2, 3)]
    assert char_spans_to_token_spans(offsets, [(0, 2), (2, 3)]) == [(0, 3), (3, 4)]


def test_covering_tokens_hand_offsets():
    assert char_span_to_covering_tokens(HAND_OFFSETS, 5, 9) == (2, 3)  # exactly "Wait"
    assert char_span_to_covering_tokens(HAND_OFFSETS, 4, 6) == (1, 3)  # "\nW" touches two tokens
    assert char_span_to_covering_tokens(HAND_OFFSETS, 10, 11) == (3, 4)  # inside " ok"
    assert char_span_to_covering_tokens(HAND_OFFSETS, 0, 12) == (0, 4)


def test_covering_tokens_errors():
    with pytest.raises(ValueError, match="empty"):
        char_span_to_covering_tokens(HAND_OFFSETS, 5, 5)
    with pytest.raises(ValueError, match="empty"):
        char_span_to_covering_tokens(HAND_OFFSETS, 6, 5)
    with pytest.raises(ValueError, match="no token"):
        char_span_to_covering_tokens(HAND_OFFSETS, 20, 25)


@pytest.mark.parametrize("rule", ["first_char", "last_char"])
def test_non_monotonic_offsets_raise(rule):
    with pytest.raises(ValueError, match="monotonic"):
        char_spans_to_token_spans([(0, 2), (5, 9), (2, 5)], [(0, 3), (3, 9)], rule=rule)


def test_overlapping_char_spans_raise():
    with pytest.raises(ValueError, match="overlap"):
        char_spans_to_token_spans(HAND_OFFSETS, [(0, 5), (3, 12)])
    with pytest.raises(ValueError, match="overlap"):
        char_spans_to_token_spans(HAND_OFFSETS, [(3, 12), (0, 3)])  # unsorted


def test_reversed_char_span_raises():
    with pytest.raises(ValueError, match="ends before it starts"):
        char_spans_to_token_spans(HAND_OFFSETS, [(3, 0)])


def test_unknown_rule_raises():
    with pytest.raises(ValueError, match="rule"):
        char_spans_to_token_spans(HAND_OFFSETS, HAND_SEGMENTS, rule="middle_char")


# --------------------------------------------------------------------------------------------------
# A real (small, locally trained) byte-level BPE tokenizer
# --------------------------------------------------------------------------------------------------

CORPUS = [
    "Okay, so I need to find x such that 2x + 3 = 11. Let me subtract 3 from both sides.\n\n"
    "Wait, that gives 2x = 8, so x = 4.\n\nBut wait, let me check: 2*4 + 3 = 11. Yes.\n\n"
    "Alternatively, I could divide everything by 2 first.\n\nHowever, that gives fractions.\n\n"
    "So the answer is 4.",
    "Let me think about this problem. The sum of the first n numbers is n(n+1)/2.\n\n"
    "Hmm, for n = 10 that is 55.\n\nWait, let me list them: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10.\n\n"
    "Another way to see it: pair 1 with 10, 2 with 9, and so on.\n\n"
    "Not sure that is right, so let me verify again.\n\nGoing back to the formula, 10*11/2 = 55.",
    "The final answer is \\boxed{55}. The area of the triangle is \\frac{1}{2} b h.\n\n"
    "Wait, the base is 6 and the height is 4, so the area is 12.\n\nTrace back: 6*4 = 24, 24/2 = 12.",
    # Makes "{x" one token, so an answer starting with "x" merges with the opening brace of \boxed{.
    "So \\boxed{x} means the value of \\boxed{x} and \\boxed{xy} is \\boxed{x}.",
]
VOCAB_SIZE = 400


@pytest.fixture(scope="module")
def tok():
    tokenizer = build_bpe_tokenizer(CORPUS * 10, vocab_size=VOCAB_SIZE)
    assert tokenizer.is_fast
    return tokenizer


def _pieces(tok, text):
    ids, offsets = tokenize_with_offsets(tok, text)
    return ids, offsets, [text[s:e] for s, e in offsets]


# The attributed sequence of the tests below: R1-style prompt, four segments, the paper's suffix.
PROMPT = f"{BOS}{USER}Solve 2x + 3 = 11.{ASSISTANT}{THINK_OPEN}\n"
SEGMENTS = [
    "Okay, so 2x = 8, so x = 4.",  # ends with "." -> ".\n\n" straddles the next boundary
    "\n\nWait, let me check: 2*4 + 3 = 11.",  # ends with "." -> straddles again
    "\n\nBut wait, 2*4 is 8",  # ends with a digit -> "\n\n" is its own token, no straddle
    "\n\nSo the answer is 4.\n",
]
ANSWER = "4"


def test_tokenizer_is_deterministic_and_has_r1_specials(tok):
    again = build_bpe_tokenizer(CORPUS * 10, vocab_size=VOCAB_SIZE)
    assert again.get_vocab() == tok.get_vocab()
    assert tok.bos_token == BOS and tok.pad_token == tok.eos_token
    _, _, pieces = _pieces(tok, PROMPT)
    # Special and added tokens are single tokens.
    assert pieces[:2] == [BOS, USER]
    assert pieces[-3:] == [ASSISTANT, THINK_OPEN, "\n"]


def test_tokenizer_vocab_size_too_small_raises():
    with pytest.raises(ValueError, match="vocab_size"):
        build_bpe_tokenizer(CORPUS, vocab_size=200)


def test_chat_template_renders_r1_prompt(tok):
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "Solve 2x + 3 = 11."}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == PROMPT


def test_period_blank_line_is_a_single_token(tok):
    # Qwen2's regex keeps ".\n\n" one pre-token and the corpus makes BPE merge it: the premise of
    # every straddling test below.
    _, offsets, pieces = _pieces(tok, "x = 4.\n\nWait, y")
    assert ".\n\n" in pieces
    assert "Wait" in pieces
    k = pieces.index(".\n\n")
    assert pieces[k + 1] == "Wait"
    assert offsets[k] == (5, 8)  # starts at "." (char 5) and straddles the boundary at char 6
    # ... whereas after a digit ("\p{N}" is its own pre-token) no token crosses the boundary.
    text = "x = 4\n\nWait, y"
    _, offsets, pieces = _pieces(tok, text)
    boundary = text.index("\n\nWait")
    assert not any(s < boundary < e for s, e in offsets)
    assert ".\n\n" not in pieces


def test_tokenize_with_offsets_matches_tokenizer(tok):
    text = PROMPT + "".join(SEGMENTS)
    ids, offsets = tokenize_with_offsets(tok, text)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert ids == list(enc["input_ids"])
    assert offsets == [tuple(o) for o in enc["offset_mapping"]]
    assert all(isinstance(o, tuple) and len(o) == 2 for o in offsets)
    assert tok.decode(ids) == text


# ---- helpers that compute expectations from offsets alone ------------------------------------------


def _owner_tokens(offsets, char_start, char_end, rule):
    """Token indices whose anchor char (first or last) lies in [char_start, char_end)."""
    out = []
    for i, (s, e) in enumerate(offsets):
        anchor = s if rule == "first_char" or e <= s else e - 1
        if char_start <= anchor < char_end:
            out.append(i)
    return out


def _straddler(offsets, boundary):
    """The token that starts before `boundary` and ends after it (None if the boundary is clean)."""
    hits = [i for i, (s, e) in enumerate(offsets) if s < boundary < e]
    assert len(hits) <= 1
    return hits[0] if hits else None


def _covered(offsets, token_span, char_start, char_end):
    chars = set()
    for i in range(*token_span):
        chars.update(range(*offsets[i]))
    return chars & set(range(char_start, char_end))


@pytest.fixture(scope="module")
def seq(tok):
    return build_attribution_sequence(tok, PROMPT, SEGMENTS, ANSWER)


def test_sequence_text_is_prompt_trace_suffix(seq):
    expected = PROMPT + "".join(SEGMENTS) + "</think> So, the final answer is \\boxed{4}"
    assert seq.text == expected
    assert DEFAULT_ANSWER_SUFFIX.format(answer=ANSWER) == "</think> So, the final answer is \\boxed{4}"


def test_sequence_is_tokenised_once(tok, seq):
    full = tok(seq.text, add_special_tokens=False)["input_ids"]
    assert seq.input_ids == list(full)
    assert len(seq) == len(full)
    assert seq.offsets == [
        tuple(o) for o in tok(seq.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    ]


def test_per_prefix_tokenisation_differs_from_single_tokenisation(tok, seq):
    # Why one tokenisation matters: tokenising pieces separately splits ".\n\n" into "." + "\n\n",
    # so the ids (and therefore the spans) of piecewise tokenisation do not exist in the real sequence.
    enc = lambda s: list(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    suffix = DEFAULT_ANSWER_SUFFIX.format(answer=ANSWER)
    concatenated = enc(PROMPT) + [i for seg in SEGMENTS for i in enc(seg)] + enc(suffix)
    assert tok.decode(concatenated) == seq.text  # same characters ...
    assert concatenated != seq.input_ids  # ... different tokens
    assert len(concatenated) > len(seq.input_ids)
    # The prefix "prompt + first segment" tokenised alone ends with "." - not a prefix of the sequence,
    # whose token at that position is the merged ".\n\n".
    prefix = enc(PROMPT + SEGMENTS[0])
    assert tok.decode(prefix[-1:]) == "."
    assert seq.input_ids[: len(prefix)] != prefix
    assert tok.decode(seq.input_ids[len(prefix) - 1 : len(prefix)]) == ".\n\n"
    # Per-segment tokenisations give the segments token ids that differ from the real sequence's
    # (segment 0 ends "." instead of ".\n\n"; segment 1 starts "\n\n" that in reality is merged).
    for k in (0, 1):
        a, b = seq.segment_spans[k]
        assert enc(SEGMENTS[k]) != seq.input_ids[a:b]
    assert tok.decode(enc(SEGMENTS[0])[-1:]) == "."
    assert tok.decode(seq.input_ids[seq.segment_spans[0][1] - 1 : seq.segment_spans[0][1]]) == ".\n\n"


def test_segment_char_spans_are_hand_lengths(seq):
    expected, cursor = [], len(PROMPT)
    for s in SEGMENTS:
        expected.append((cursor, cursor + len(s)))
        cursor += len(s)
    assert seq.segment_char_spans == expected
    assert [seq.text[s:e] for s, e in seq.segment_char_spans] == SEGMENTS


@pytest.mark.parametrize("rule", ["first_char", "last_char"])
def test_spans_are_contiguous_and_partition_trace_tokens(tok, rule):
    seq = build_attribution_sequence(tok, PROMPT, SEGMENTS, ANSWER, rule=rule)
    trace_start, trace_end = len(PROMPT), len(PROMPT) + len("".join(SEGMENTS))
    # The prompt ends with "<think>\n" and the suffix starts with "</think>": both boundaries are clean.
    assert seq.prompt_span == (0, len(_owner_tokens(seq.offsets, 0, trace_start, rule)))
    assert seq.offsets[seq.prompt_span[1]][0] == trace_start
    assert seq.segment_spans[0][0] == seq.prompt_span[1]
    for (_, b0), (a1, _) in zip(seq.segment_spans, seq.segment_spans[1:]):
        assert b0 == a1
    assert seq.trace_span == (seq.prompt_span[1], seq.segment_spans[-1][1])
    last = seq.segment_spans[-1][1]
    assert seq.offsets[last] == (trace_end, trace_end + len(THINK_CLOSE))
    assert seq.text[slice(*seq.offsets[last])] == THINK_CLOSE
    # Every trace token is in exactly one segment span.
    owners = [i for a, b in seq.segment_spans for i in range(a, b)]
    assert owners == list(range(seq.prompt_span[1], last))
    assert all(b > a for a, b in seq.segment_spans)


@pytest.mark.parametrize("rule", ["first_char", "last_char"])
def test_spans_follow_the_documented_boundary_rule(tok, rule):
    seq = build_attribution_sequence(tok, PROMPT, SEGMENTS, ANSWER, rule=rule)
    for (cs, ce), (a, b) in zip(seq.segment_char_spans, seq.segment_spans):
        assert list(range(a, b)) == _owner_tokens(seq.offsets, cs, ce, rule)


def test_straddling_tokens_first_char(seq):
    # Boundaries 1 and 2 (after "x = 4." and "= 11.") are straddled by ".\n\n"; boundary 3 (after "8") is clean.
    boundaries = [cs for cs, _ in seq.segment_char_spans[1:]]
    straddlers = [_straddler(seq.offsets, b) for b in boundaries]
    assert straddlers[0] is not None and straddlers[1] is not None and straddlers[2] is None
    for k, t in enumerate(straddlers[:2]):
        assert seq.text[slice(*seq.offsets[t])] == ".\n\n"
        # first_char: the straddling token is the LAST token of the earlier segment.
        assert seq.segment_spans[k][1] - 1 == t
        assert seq.segment_spans[k + 1][0] == t + 1
        # ... and the later segment's first token starts right after the blank line, at its keyword.
        assert seq.offsets[t + 1][0] == boundaries[k] + 2


def test_straddling_tokens_last_char(tok):
    seq = build_attribution_sequence(tok, PROMPT, SEGMENTS, ANSWER, rule="last_char")
    boundaries = [cs for cs, _ in seq.segment_char_spans[1:]]
    for k, b in enumerate(boundaries[:2]):
        t = _straddler(seq.offsets, b)
        # last_char: the straddling token is the FIRST token of the later segment.
        assert seq.segment_spans[k + 1][0] == t
        assert seq.segment_spans[k][1] == t


def test_segment_character_coverage_first_char(seq):
    for (cs, ce), span in zip(seq.segment_char_spans, seq.segment_spans):
        covered = _covered(seq.offsets, span, cs, ce)
        t = _straddler(seq.offsets, cs)
        if t is None:
            # No token straddles the start: every character of the segment is covered.
            assert covered == set(range(cs, ce))
        else:
            # Exactly the characters of the straddling token that fall in this segment are missing;
            # by the rule that token belongs to the previous segment.
            missing = set(range(cs, seq.offsets[t][1]))
            assert seq.text[cs : seq.offsets[t][1]] == "\n\n"
            assert covered == set(range(cs, ce)) - missing
            assert t < span[0]
    # Segment 3 (after "... is 8") starts on a clean token boundary: fully covered.
    cs, ce = seq.segment_char_spans[3]
    assert _covered(seq.offsets, seq.segment_spans[3], cs, ce) == set(range(cs, ce))


def test_full_coverage_when_no_token_straddles(tok):
    segments = ["Okay, x = 4", "\n\nWait, x = 4", "\n\nSo x = 4\n"]  # every boundary follows a digit
    seq = build_attribution_sequence(tok, PROMPT, segments, ANSWER)
    for cs, _ in seq.segment_char_spans:
        assert _straddler(seq.offsets, cs) is None
    for (cs, ce), span in zip(seq.segment_char_spans, seq.segment_spans):
        assert _covered(seq.offsets, span, cs, ce) == set(range(cs, ce))
        # and a segment's tokens lie entirely inside it
        assert all(cs <= seq.offsets[i][0] and seq.offsets[i][1] <= ce for i in range(*span))
    seq_last = build_attribution_sequence(tok, PROMPT, segments, ANSWER, rule="last_char")
    assert seq_last.segment_spans == seq.segment_spans


def test_answer_span_covers_exactly_the_answer(tok, seq):
    text = seq.text
    answer_start = len(PROMPT) + len("".join(SEGMENTS)) + len("</think> So, the final answer is \\boxed{")
    answer_end = answer_start + len(ANSWER)
    assert text[answer_start:answer_end] == ANSWER
    a, b = seq.answer_span
    assert seq.offsets[a][0] == answer_start
    assert seq.offsets[b - 1][1] == answer_end
    assert tok.decode(seq.input_ids[a:b]) == ANSWER
    assert a >= seq.trace_span[1]  # inside the suffix
    assert b == len(seq) - 1  # only the closing brace follows
    assert text[slice(*seq.offsets[-1])] == "}"


@pytest.mark.parametrize("answer", ["55", "12", "x = 4", "\\frac{1}{2}"])
def test_answer_span_multi_token_answers(tok, answer):
    seq = build_attribution_sequence(tok, PROMPT, SEGMENTS, answer)
    answer_start = len(seq.text) - len(answer) - 1
    answer_end = answer_start + len(answer)
    assert seq.text[answer_start:answer_end] == answer
    a, b = seq.answer_span
    # The smallest covering span: first token overlaps the answer's start, last token its end,
    # and dropping either end would lose answer characters.
    assert seq.offsets[a][0] <= answer_start < seq.offsets[a][1]
    assert seq.offsets[b - 1][0] < answer_end <= seq.offsets[b - 1][1]
    covered = tok.decode(seq.input_ids[a:b])
    assert answer in covered
    if seq.offsets[a][0] == answer_start and seq.offsets[b - 1][1] == answer_end:
        assert covered == answer


def test_answer_merged_with_brace_is_covered_not_dropped(tok):
    # "{x" is one token (Qwen2 regex: an optional non-letter followed by letters), so the answer
    # "x = 4" begins inside a token that starts at the brace; the covering span keeps that token.
    seq = build_attribution_sequence(tok, PROMPT, SEGMENTS, "x = 4")
    answer_start = len(seq.text) - len("x = 4") - 1
    a, b = seq.answer_span
    assert seq.offsets[a] == (answer_start - 1, answer_start + 1)
    assert seq.text[slice(*seq.offsets[a])] == "{x"
    assert seq.offsets[b - 1][1] == answer_start + len("x = 4")
    assert tok.decode(seq.input_ids[a:b]) == "{x = 4"


def test_custom_suffix_template(tok):
    seq = build_attribution_sequence(tok, PROMPT, SEGMENTS, "4", suffix_template="</think> Answer: {answer}.")
    assert seq.text == PROMPT + "".join(SEGMENTS) + "</think> Answer: 4."
    a, b = seq.answer_span
    assert tok.decode(seq.input_ids[a:b]).strip() == "4"


# ---- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("segments", [[], [""], ["Okay.", ""], ("",)])
def test_empty_trace_or_segment_raises(tok, segments):
    with pytest.raises(ValueError, match="empty"):
        build_attribution_sequence(tok, PROMPT, segments, ANSWER)


@pytest.mark.parametrize("answer", ["", "   ", "\n"])
def test_empty_answer_raises(tok, answer):
    with pytest.raises(ValueError, match="answer is empty"):
        build_attribution_sequence(tok, PROMPT, SEGMENTS, answer)


@pytest.mark.parametrize(
    "template", ["</think> So, the final answer is \\boxed{}", "</think> {answer} and {answer}", ""]
)
def test_suffix_template_without_single_answer_placeholder_raises(tok, template):
    with pytest.raises(ValueError, match=r"\{answer\}"):
        build_attribution_sequence(tok, PROMPT, SEGMENTS, ANSWER, suffix_template=template)


def test_unknown_rule_raises_in_build(tok):
    with pytest.raises(ValueError, match="rule"):
        build_attribution_sequence(tok, PROMPT, SEGMENTS, ANSWER, rule="middle")


class _SlowTokenizer:
    is_fast = False

    def __call__(self, text, **kwargs):  # pragma: no cover - must never be called
        raise AssertionError("a slow tokenizer must be rejected before tokenising")


class _NoFlagTokenizer:
    def __call__(self, text, **kwargs):  # pragma: no cover - must never be called
        raise AssertionError("a tokenizer without is_fast must be rejected before tokenising")


@pytest.mark.parametrize("slow", [_SlowTokenizer(), _NoFlagTokenizer()])
def test_slow_tokenizer_raises_type_error(slow):
    with pytest.raises(TypeError, match="fast tokenizer"):
        tokenize_with_offsets(slow, "abc")
    with pytest.raises(TypeError, match="fast tokenizer"):
        build_attribution_sequence(slow, PROMPT, SEGMENTS, ANSWER)
