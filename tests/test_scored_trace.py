"""The library used directly (``segattr_utils.scored_trace``): one call from (model, tokenizer, question,
output, gold answer) to a scored trace, and its SFT example.

Expectations are computed independently: the reasoning and answer part by string operations on the
output, segment scores from the stored token attributions with numpy (Eq. 3-7 written out), F(x) from a
full-logits forward pass, and the labels from the tokenizer's offset mapping of the trained text. The
README's library snippets are executed as written. Tiny local Qwen2 (``r1_model_dir``): nothing is
downloaded.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from segattr_utils import CompletenessWarning, OverLengthError, ScoredTrace, TraceFormatError, score_trace
from segattr_utils import training_example as make_example
from segattr_utils.llm.models import load_causal_lm
from segattr_utils.world import PROMPT_SUFFIX

from .conftest import R1_TRACES, hand_labels

IGNORE = -100
TRACES = {r["id"]: r for r in R1_TRACES}
SUFFIX_WORDS = "So, the final answer is"  # the synthetic IG suffix: never part of a training example


@pytest.fixture(scope="module")
def loaded(r1_model_dir):
    return load_causal_lm(str(r1_model_dir), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def scored(loaded):
    model, tokenizer = loaded
    out = {}
    for trace_id in ("sum", "long"):
        r = TRACES[trace_id]
        out[trace_id] = score_trace(model, tokenizer, r["question"], r["output"], r["answer"], n_steps=8)
    return out


def _reasoning_and_answer(output: str) -> tuple[str, str]:
    """By hand: the text between "<think>\\n" and the newlines before "</think>", and the rest."""
    head, _ = output.split("</think>", 1)
    reasoning = head.removeprefix("<think>\n").rstrip("\n")
    return reasoning, output[len("<think>\n") + len(reasoning) :]


def test_score_trace_splits_the_output_and_keeps_its_own_answer(loaded, scored):
    _, tokenizer = loaded
    r = TRACES["sum"]
    trace = scored["sum"]
    reasoning, answer_part = _reasoning_and_answer(r["output"])
    assert trace.reasoning == reasoning and trace.answer_part == answer_part
    assert answer_part == "\n</think>\n\nThe final answer is \\boxed{11}."
    assert [s.split(",")[0].strip() for s in trace.segments] == ["Okay", "Wait", "Alternatively"]  # "So" is no keyword
    expected_prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": r["question"] + PROMPT_SUFFIX}], tokenize=False, add_generation_prompt=True
    )
    assert trace.prompt == expected_prompt and expected_prompt.endswith("<think>\n")  # "<think>" not repeated
    assert (trace.predicted, trace.correct, trace.gold_answer) == ("11", True, "11")
    wrong = TRACES["wrong"]
    model, _ = loaded
    graded = score_trace(model, tokenizer, wrong["question"], wrong["output"], wrong["answer"], n_steps=2)
    assert (graded.predicted, graded.correct) == ("14", False)


def test_segment_scores_follow_eq_3_to_7(scored):
    trace = scored["long"]
    values = [np.array(v) for v in trace.token_attributions]
    strength = np.array([np.abs(v).sum() / math.sqrt(v.size) for v in values])  # Eq. 3
    consistency = np.array([abs(v.sum()) / np.abs(v).sum() for v in values])
    norm = strength / strength.sum()  # Eq. 4
    order = sorted(range(len(norm)), key=lambda i: -norm[i])
    k_star = next(k for k in range(1, len(norm) + 1) if norm[order[:k]].sum() >= 0.7 - 1e-9)  # Eq. 5-6
    high = set(order[:k_star])
    important = sorted(i for i in high if consistency[i] <= 0.8)  # Eq. 7
    table = trace.scores
    np.testing.assert_allclose(table["strength"], strength, rtol=1e-9)
    np.testing.assert_allclose(table["consistency"], consistency, rtol=1e-9)
    np.testing.assert_allclose(table["norm_strength"], norm, rtol=1e-9)
    assert trace.important == important
    assert trace.selected == sorted(set(important) | {0, len(values) - 1})  # App. C.4: first and last kept
    assert list(table["always_kept"]) == [i in (0, len(values) - 1) for i in range(len(values))]
    assert list(table["text"]) == list(trace.segments)
    rescored = trace.rescored(tau=1.0, beta=1.0)
    assert rescored.selected == list(range(len(values))) and rescored.token_attributions is trace.token_attributions


def test_attributions_cover_the_trace_tokens_of_one_tokenisation(loaded, scored):
    model, tokenizer = loaded
    trace = scored["sum"]
    text = trace.prompt + trace.reasoning + "</think> So, the final answer is \\boxed{11}"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n_prompt = len(tokenizer(trace.prompt, add_special_tokens=False)["input_ids"])
    flat = [t for seg in trace.token_ids for t in seg]
    assert ids[n_prompt : n_prompt + len(flat)] == flat and len(ids) == trace.n_tokens
    assert [len(v) for v in trace.token_attributions] == [len(t) for t in trace.token_ids]
    # F(x): the gold answer's summed log-probability from a full-logits forward pass (Eq. 1's target)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    first, last = text.rindex("11"), len(text) - 1  # the answer's characters, before the closing brace
    covering = [i for i, (s, e) in enumerate(offsets) if s < last and e > first]
    start, end = covering[0], covering[-1] + 1
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    f_input = sum(float(log_probs[t - 1, ids[t]]) for t in range(start, end))
    assert trace.f_input == pytest.approx(f_input, abs=1e-4)
    assert trace.relative_delta == pytest.approx(abs(trace.delta) / abs(trace.f_input - trace.f_baseline))


def _hand_labels(tokenizer, trace: ScoredTrace, selected: set[int]) -> tuple[list[int], list[int]]:
    return hand_labels(tokenizer, trace.prompt, trace.segments, trace.answer_part, selected)


def test_training_example_labels_the_selected_segments_and_the_trace_own_answer(loaded, scored):
    _, tokenizer = loaded
    trace = scored["long"]
    assert 0 < len(trace.selected) < trace.n_segments  # some segments are masked
    example = make_example(tokenizer, trace)
    ids, labels = _hand_labels(tokenizer, trace, set(trace.selected))
    assert example["input_ids"] == ids and example["labels"] == labels
    assert example["completion_mask"] == [int(label != IGNORE) for label in labels]
    trained = tokenizer.decode([t for t in example["labels"] if t != IGNORE])
    assert trained.endswith("</think>\n\nThe final answer is \\boxed{10}." + tokenizer.eos_token)
    assert SUFFIX_WORDS not in tokenizer.decode(example["input_ids"])
    for i, seg in enumerate(trace.segments):
        assert (seg.strip() in trained) == (i in trace.selected), i
    n_prompt = len(tokenizer(trace.prompt, add_special_tokens=False)["input_ids"])
    assert example["labels"][:n_prompt] == [IGNORE] * n_prompt


def test_full_and_pruned_masks(loaded, scored):
    _, tokenizer = loaded
    trace = scored["long"]
    full = make_example(tokenizer, trace, mask="full")
    assert full["input_ids"] == make_example(tokenizer, trace)["input_ids"]  # same sequence, other labels
    assert full["labels"] == _hand_labels(tokenizer, trace, set(range(trace.n_segments)))[1]
    pruned = make_example(tokenizer, trace, mask="pruned")
    kept_text = trace.prompt + "".join(trace.segments[i] for i in trace.selected) + trace.answer_part
    expected = tokenizer(kept_text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    n_prompt = len(tokenizer(trace.prompt, add_special_tokens=False)["input_ids"])
    assert pruned["input_ids"] == expected
    assert pruned["labels"] == [IGNORE] * n_prompt + expected[n_prompt:]
    with pytest.raises(ValueError, match="mask"):
        make_example(tokenizer, trace, mask="everything")
    nothing = trace.rescored(beta=0.0, always_keep="none")  # no segment has consistency 0: none is important
    assert nothing.selected == []
    selective = make_example(tokenizer, nothing)  # only the answer part and EOS are trained
    assert selective["labels"] == _hand_labels(tokenizer, trace, set())[1]
    with pytest.raises(ValueError, match="pruned"):
        make_example(tokenizer, nothing, mask="pruned")


def test_over_length_policy_truncates_or_skips(loaded, scored):
    _, tokenizer = loaded
    trace = scored["long"]
    whole = make_example(tokenizer, trace)
    n = len(whole["input_ids"]) - 20
    cut = make_example(tokenizer, trace, max_length=n)
    assert cut == {key: values[:n] for key, values in whole.items()}  # keep_start, as TRL
    assert make_example(tokenizer, trace, max_length=n, overlength="skip") is None
    assert make_example(tokenizer, trace, max_length=len(whole["input_ids"]), overlength="skip") == whole
    n_prompt = len(tokenizer(trace.prompt, add_special_tokens=False)["input_ids"])
    assert make_example(tokenizer, trace, max_length=n_prompt) is None  # nothing labelled is left
    with pytest.raises(ValueError, match="overlength"):
        make_example(tokenizer, trace, max_length=n, overlength="drop")


@pytest.mark.parametrize(
    "output, reason",
    [
        ("<think>\nOkay, 2 + 2 = 4.\n\nWait, let me think about", "no </think>"),
        ("<think>\n\n</think>\n\nThe answer is \\boxed{4}.", "empty reasoning"),
        ("<think>\nOkay, 2 + 2 = 4.\n</think>\n\nThe answer is 4.", "no boxed answer"),
    ],
)
def test_outputs_that_are_not_finished_r1_traces(loaded, output, reason):
    model, tokenizer = loaded
    with pytest.raises(TraceFormatError) as info:
        score_trace(model, tokenizer, "What is 2 + 2?", output, "4", n_steps=2)
    assert info.value.reason == reason


def test_bad_arguments_name_the_field(loaded):
    model, tokenizer = loaded
    r = TRACES["double"]
    with pytest.raises(TypeError, match="output must be a string, got list"):
        score_trace(model, tokenizer, r["question"], [r["output"]], r["answer"])
    with pytest.raises(ValueError, match="gold_answer is empty"):
        score_trace(model, tokenizer, r["question"], r["output"], " ")
    # a numeric gold answer is its text
    scored = score_trace(model, tokenizer, r["question"], r["output"], 12, n_steps=2, warn_relative_delta=None)
    assert scored.gold_answer == "12" and scored.correct


def test_over_length_trace_raises_with_its_length(loaded):
    model, tokenizer = loaded
    r = TRACES["long"]
    with pytest.raises(OverLengthError) as info:
        score_trace(model, tokenizer, r["question"], r["output"], r["answer"], max_length=100)
    assert info.value.reason == "over-length" and info.value.n_tokens > 100 and info.value.limit == 100
    assert "skipped, not truncated" in str(info.value)


def test_completeness_warning(loaded):
    model, tokenizer = loaded
    r = TRACES["sum"]
    with pytest.warns(CompletenessWarning, match="incomplete"):
        coarse = score_trace(model, tokenizer, r["question"], r["output"], r["answer"], n_steps=2, method="official")
    assert coarse.relative_delta > 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompletenessWarning)
        score_trace(
            model,
            tokenizer,
            r["question"],
            r["output"],
            r["answer"],
            n_steps=2,
            method="official",
            warn_relative_delta=None,
        )


def test_record_round_trip(scored):
    trace = scored["sum"]
    record = json.loads(json.dumps(trace.to_record()))
    back = ScoredTrace.from_record(record)
    assert back.to_record() == trace.to_record()
    assert back.selected == trace.selected and back.scores.equals(trace.scores)


def _readme_python_blocks(heading: str) -> list[str]:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_library_snippets_run_and_end_in_real_labels(loaded):
    model, tokenizer = loaded
    r = TRACES["long"]
    blocks = _readme_python_blocks("## The package")
    namespace = {
        "model": model,
        "tokenizer": tokenizer,
        "question": r["question"],
        "output": r["output"],
        "gold_answer": r["answer"],
    }
    exec(blocks[0], namespace)  # noqa: S102 - the README's own code
    labels = namespace["labels"]
    expected = make_example(tokenizer, namespace["scored"])["labels"]
    assert labels == expected
    trained = tokenizer.decode([t for t in labels if t != IGNORE])
    assert trained.endswith("\\boxed{10}." + tokenizer.eos_token) and SUFFIX_WORDS not in trained


def test_token_offsets_are_the_tokenizers_own_relative_to_the_trace(loaded, scored):
    _, tokenizer = loaded
    trace = scored["long"]
    text = trace.prompt + trace.reasoning + "</think> So, the final answer is \\boxed{10}"
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    start, end = len(trace.prompt), len(trace.prompt) + len(trace.reasoning)
    in_trace = [i for i, (s, _) in enumerate(encoded["offset_mapping"]) if start <= s < end]
    assert [o for seg in trace.token_offsets for o in seg] == [
        (encoded["offset_mapping"][i][0] - start, encoded["offset_mapping"][i][1] - start) for i in in_trace
    ]
    assert [t for seg in trace.token_ids for t in seg] == [encoded["input_ids"][i] for i in in_trace]


def test_regrouped_moves_the_stored_tokens_to_the_new_boundaries(loaded, scored):
    """By hand: a token belongs to the new segment holding its first character; values travel with it."""
    _, tokenizer = loaded
    trace = scored["long"]
    reasoning = trace.reasoning
    cut = reasoning.index(" ", len(reasoning) // 3)  # a boundary inside an old segment
    pieces = [reasoning[:cut], reasoning[cut:]]
    regrouped = trace.rescored(tau=1.0).regrouped(pieces)
    assert regrouped.segments == tuple(pieces) and regrouped.settings["tau"] == 1.0
    tokens = [
        (t, v, o)
        for ids, values, offsets in zip(trace.token_ids, trace.token_attributions, trace.token_offsets)
        for t, v, o in zip(ids, values, offsets)
    ]
    expected = [[x for x in tokens if x[2][0] < cut], [x for x in tokens if x[2][0] >= cut]]
    for segment, want in zip(range(2), expected):
        assert list(regrouped.token_ids[segment]) == [t for t, _, _ in want]
        assert list(regrouped.token_attributions[segment]) == [v for _, v, _ in want]
        assert list(regrouped.token_offsets[segment]) == [o for _, _, o in want]
    with pytest.raises(ValueError, match="concatenate"):
        trace.regrouped([reasoning[:cut]])


def test_training_example_takes_any_segment_or_token_selection(loaded, scored):
    _, tokenizer = loaded
    trace = scored["long"]
    example = make_example(tokenizer, trace, segments=[1])
    assert (example["input_ids"], example["labels"]) == _hand_labels(tokenizer, trace, {1})
    # token level: every other stored token of segment 0, by hand from the trained text's own offsets
    masks = [
        [i % 2 == 0 for i in range(len(ids))] if s == 0 else [False] * len(ids) for s, ids in enumerate(trace.token_ids)
    ]
    chosen = [o for o, m in zip(trace.token_offsets[0], masks[0]) if m]
    tokens = make_example(tokenizer, trace, token_masks=masks)
    text = trace.prompt + trace.reasoning + trace.answer_part
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    expected = []
    for token, (first, _) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        position = first - len(trace.prompt)
        learned = position >= len(trace.reasoning) or any(s <= position < e for s, e in chosen)
        expected.append(token if learned else IGNORE)
    assert tokens["labels"] == expected + [tokenizer.eos_token_id]
    assert tokens["input_ids"] == encoded["input_ids"] + [tokenizer.eos_token_id]
    with pytest.raises(ValueError, match="token_masks"):
        make_example(tokenizer, trace, "pruned", token_masks=masks)
    with pytest.raises(ValueError, match="out of range"):
        make_example(tokenizer, trace, segments=[trace.n_segments])


def test_record_round_trip_keeps_token_offsets_and_names_a_missing_field(scored):
    trace = scored["long"]
    back = ScoredTrace.from_record(json.loads(json.dumps(trace.to_record())))
    assert back.token_offsets == trace.token_offsets and back.token_ids == trace.token_ids
    assert back.token_attributions == trace.token_attributions and back.settings == trace.settings
    record = trace.to_record()
    del record["token_ids"]
    with pytest.raises(ValueError, match="lacks token_ids"):
        ScoredTrace.from_record(record)
    record = trace.to_record()
    record["token_offsets"][0] = record["token_offsets"][0][:-1]
    with pytest.raises(ValueError, match="segment 0"):
        ScoredTrace.from_record(record)
