"""Tests for segattr_utils.measures.judge (App. B) and the pure-data parts of stage 07.

The two-round protocol is driven by stub generators that record every call, so the prompts, seeds and
sampling settings of each round can be checked against what App. B prescribes; an end-to-end check
runs a tiny randomly initialised Qwen2 through the same protocol.
"""

from __future__ import annotations

import pandas as pd
import pytest

from segattr_utils.artifacts import RecordStore
from segattr_utils.config import load_profile
from segattr_utils.llm.generation import SamplingSettings, derive_seed
from segattr_utils.measures import judge
from segattr_utils.measures.judge import (
    EARLY_STOPPING_PROMPT,
    JudgeSettings,
    Triple,
    parse_judgement,
    run_judge,
    segment_triples,
)
from segattr_utils.world.tokenizer import build_bpe_tokenizer

# ----------------------------------------------------------------------------------------------
# Parser


@pytest.mark.parametrize(
    "text, expected",
    [
        # the digit after </think> decides; digits inside the reasoning never do
        ("Segment 1 says 0 items, then 1 more. So 0? or 1?\n</think>\n\n1", 1),
        ("I count 1 equation and 1 result.\n</think>\n\n0", 0),
        ("reasoning with 0 and 1\n</think>\n\nAnswer: 1", 1),
        ("reasoning 1\n</think>\n\n**Answer:** 0", 0),
        ("reasoning\n</think>\n\nThe final answer is \\boxed{1}.", 1),
        ("reasoning\n</think>\n\nSegment 2 ends mid-sentence, so Segment 3 cannot follow it.\n\n1", 1),
        # trailing whitespace and punctuation
        ("r\n</think>\n\n1.  \n", 1),
        ("r\n</think>\n\n0\n\n", 0),
        ("r\n</think>\n\n`0`!", 0),
        ("r\n</think>\n\nAnswer: 1.", 1),
        # both digits in the final answer: undecided
        ("r\n</think>\n\n0 or 1", None),
        ("r\n</think>\n\nAnswer: 0\nAnswer: 1", None),
        # no digit in the final answer: undecided (even if the reasoning has one)
        ("the answer is 1\n</think>\n\nIt is truncated.", None),
        ("r\n</think>\n\n", None),
        # not a 0/1 digit
        ("r\n</think>\n\n10", None),
        ("r\n</think>\n\n0.5", None),
        ("r\n</think>\n\n2", None),
        # a thinking block that never closed: undecided, whatever digits it holds
        ("<think>\nAnswer: 1", None),
        # no thinking block at all: the whole text is the final answer
        ("Answer: 0", 0),
        ("1", 1),
    ],
)
def test_parse_judgement(text, expected):
    assert parse_judgement(text) == expected


def test_parse_judgement_with_a_prompt_that_opened_thinking():
    # An R1-style generation prompt ends with "<think>\n": the output is reasoning until </think>.
    assert parse_judgement("Segment 2 ends with = 1. So 1", open_think=True) is None
    assert parse_judgement("Segment 2 ends with = 1. So\n</think>\n\n0", open_think=True) == 0
    assert parse_judgement("so it is 1", open_think=False) == 1


def test_opens_thinking():
    assert judge.opens_thinking("<｜User｜>x<｜Assistant｜><think>\n")
    assert not judge.opens_thinking("<|im_start|>assistant\n")
    assert not judge.opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")


# ----------------------------------------------------------------------------------------------
# Triples and prompts


def test_segment_triples_have_empty_neighbours_at_the_ends():
    assert segment_triples(["a", "b", "c"]) == [Triple("", "a", "b"), Triple("a", "b", "c"), Triple("b", "c", "")]
    assert segment_triples(["only"]) == [Triple("", "only", "")]
    assert segment_triples([]) == []


def test_judge_message_shows_the_triple_and_optional_few_shot():
    message = judge.judge_message(Triple("", "\n\nWait, maybe the", "\n\nSo 3 + 4 = 7."))
    assert message.startswith(judge.TASK_DESCRIPTION)
    assert "Segment 1: <<<>>>" in message
    assert "Segment 2: <<<Wait, maybe the>>>" in message
    assert "Segment 3: <<<So 3 + 4 = 7.>>>" in message
    assert "Example 1" not in message
    with_examples = judge.judge_message(Triple("a", "b", "c"), few_shot=True)
    assert with_examples.count("Example ") == len(judge.FEW_SHOT_EXAMPLES)
    assert with_examples.index("Example 1") < with_examples.index("Segment 2: <<<b>>>")
    assert with_examples.rstrip().endswith("Segment 3: <<<c>>>")
    # every few-shot example ends with its label as the answer
    for example in judge.FEW_SHOT_EXAMPLES:
        assert f"Reasoning: {example.reasoning}\nAnswer: {example.label}" in with_examples


def test_clip_triple_keeps_the_ends_that_matter():
    long = "x" * 50 + "MIDDLE" + "y" * 50
    clipped = judge.clip_triple(Triple("A" * 30 + "end-of-one", long, "start-of-three" + "B" * 30), 20)
    assert clipped.before == "[...]AAAAAend-of-one"  # 5 + 15 characters
    assert clipped.after == "start-of-threeB[...]"
    assert clipped.segment == "x" * 7 + "[...]" + "y" * 7
    assert judge.clip_triple(Triple("a", "b", "c"), 20) == Triple("a", "b", "c")
    assert judge.clip_triple(Triple("a" * 99, "b", "c"), None) == Triple("a" * 99, "b", "c")


def _tokenizer(template=None):
    kwargs = {"chat_template": template} if template else {}
    return build_bpe_tokenizer(["Segment 1: <<<a>>> judge truncated complete 0 1"] * 4, vocab_size=300, **kwargs)


#: A Qwen3-like template: the generation prompt opens an empty thinking block when thinking is off.
QWEN3_LIKE_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def test_chat_prompt_passes_enable_thinking_to_the_template():
    tokenizer = _tokenizer(QWEN3_LIKE_TEMPLATE)
    thinking = judge.judge_chat_prompt(tokenizer, "hello", enable_thinking=True)
    plain = judge.judge_chat_prompt(tokenizer, "hello", enable_thinking=False)
    assert thinking == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert plain == thinking + "<think>\n\n</think>\n\n"
    # the R1-style template ignores the variable and opens <think> itself
    r1 = _tokenizer()
    assert judge.judge_chat_prompt(r1, "hi", True) == judge.judge_chat_prompt(r1, "hi", False)
    assert judge.opens_thinking(judge.judge_chat_prompt(r1, "hi"))


def test_chat_prompt_falls_back_when_the_tokenizer_refuses_extra_arguments():
    class OldTokenizer:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return f"U:{messages[0]['content']}|A:"

    assert judge.judge_chat_prompt(OldTokenizer(), "hi") == "U:hi|A:"

    class NoTemplate:
        chat_template = None

    with pytest.raises(ValueError, match="no chat template"):
        judge.judge_chat_prompt(NoTemplate(), "hi")


# ----------------------------------------------------------------------------------------------
# Settings from the profile


def test_settings_come_from_the_profile():
    paper = JudgeSettings.from_profile(load_profile("paper"))
    # App. B: round 1 thinking, 2000 tokens, T = 0.2, top-p 0.7, penalty 1.1; round 2 T = 0.1, 1000 tokens
    assert paper.round1 == SamplingSettings(temperature=0.2, top_p=0.7, max_new_tokens=2000, repetition_penalty=1.1)
    assert paper.round2 == SamplingSettings(temperature=0.1, top_p=0.7, max_new_tokens=1000, repetition_penalty=1.1)
    assert paper.enable_thinking and paper.few_shot and paper.max_segment_chars is None
    tiny = JudgeSettings.from_profile(load_profile("tiny"))
    assert (tiny.round1.temperature, tiny.round1.top_p, tiny.round1.repetition_penalty) == (0.2, 0.7, 1.1)
    assert (tiny.round2.temperature, tiny.round2.top_p, tiny.round2.repetition_penalty) == (0.1, 0.7, 1.1)
    assert tiny.round1.max_new_tokens < 2000 and not tiny.few_shot


def test_settings_reject_incomplete_rounds():
    profile = load_profile("paper")
    del profile["judge"]["round2"]["top_p"]
    with pytest.raises(ValueError, match="missing \\['top_p'\\]"):
        JudgeSettings.from_profile(profile)
    profile = load_profile("paper")
    del profile["judge"]["few_shot"]
    with pytest.raises(KeyError, match="judge.few_shot"):
        JudgeSettings.from_profile(profile)


# ----------------------------------------------------------------------------------------------
# The two-round protocol with stub generators

ROUND1 = SamplingSettings(temperature=0.2, top_p=0.7, max_new_tokens=2000, repetition_penalty=1.1)
ROUND2 = SamplingSettings(temperature=0.1, top_p=0.7, max_new_tokens=1000, repetition_penalty=1.1)


def _settings(batch_size=2):
    return JudgeSettings(round1=ROUND1, round2=ROUND2, enable_thinking=True, few_shot=False, batch_size=batch_size)


class ScriptedGenerator:
    """Answers each prompt by a rule; records (prompts, settings, seed) of every call."""

    def __init__(self, round1_answer, round2_answer):
        self.round1_answer, self.round2_answer = round1_answer, round2_answer
        self.calls = []

    def generate(self, prompts, settings, seed):
        self.calls.append((list(prompts), settings, seed))
        outputs = []
        for prompt in prompts:
            text = self.round2_answer(prompt) if prompt.endswith(EARLY_STOPPING_PROMPT) else self.round1_answer(prompt)
            outputs.append({"text": text, "n_tokens": len(text.split()), "finished": True})
        return outputs


def test_round2_runs_only_for_undecided_items(tmp_path):
    prompts = {"a": "P-a<think>\n", "b": "P-b<think>\n", "c": "P-c<think>\n", "d": "P-d<think>\n"}
    round1 = {
        "P-a<think>\n": "think 1\n</think>\n\n1",  # decided
        "P-b<think>\n": "I think the answer is 0 or 1",  # never closes its thinking
        "P-c<think>\n": "hmm\n</think>\n\n0 or 1",  # both digits
        "P-d<think>\n": "ok\n</think>\n\n0",
    }  # decided
    generator = ScriptedGenerator(lambda p: round1[p], lambda p: "0")
    results = run_judge(generator, prompts, _settings(batch_size=2), RecordStore(tmp_path / "j.jsonl"), seed=7)

    round1_calls = [c for c in generator.calls if c[1] == ROUND1]
    round2_calls = [c for c in generator.calls if c[1] == ROUND2]
    assert [c[0] for c in round1_calls] == [["P-a<think>\n", "P-b<think>\n"], ["P-c<think>\n", "P-d<think>\n"]]
    assert [c[2] for c in round1_calls] == [derive_seed(7, "judge", 1, 0), derive_seed(7, "judge", 1, 1)]
    # round 2: only b and c, each = original input + round-1 output + early-stopping prompt, round-2 settings
    assert len(round2_calls) == 1
    assert round2_calls[0][0] == [
        "P-b<think>\n" + round1["P-b<think>\n"] + EARLY_STOPPING_PROMPT,
        "P-c<think>\n" + round1["P-c<think>\n"] + EARLY_STOPPING_PROMPT,
    ]
    assert round2_calls[0][2] == derive_seed(7, "judge", 2, 0)
    assert len(generator.calls) == 3

    by_key = {r["key"]: r for r in results}
    assert [r["key"] for r in results] == ["a", "b", "c", "d"]
    assert (by_key["a"]["label"], by_key["a"]["rounds"], by_key["a"]["undecided"]) == (1, 1, False)
    assert (by_key["d"]["label"], by_key["d"]["rounds"]) == (0, 1)
    assert (by_key["b"]["label"], by_key["b"]["rounds"], by_key["b"]["undecided"]) == (0, 2, False)
    assert (by_key["c"]["label"], by_key["c"]["rounds"]) == (0, 2)
    assert by_key["b"]["round1_output"] == round1["P-b<think>\n"] and by_key["b"]["round2_output"] == "0"
    assert by_key["a"]["round2_output"] is None


def test_never_answering_judge_is_undecided_after_two_rounds(tmp_path):
    generator = ScriptedGenerator(lambda p: "still thinking about segment 1 and 0", lambda p: "I cannot tell.")
    prompts = {str(i): f"prompt {i}<think>\n" for i in range(5)}
    results = run_judge(generator, prompts, _settings(batch_size=3), RecordStore(tmp_path / "j.jsonl"), seed=0)
    assert all(r["undecided"] and r["label"] is None and r["rounds"] == 2 for r in results)
    assert all(r["round2_output"] == "I cannot tell." for r in results)
    round2_calls = [c for c in generator.calls if c[1] == ROUND2]
    assert [len(c[0]) for c in round2_calls] == [3, 2]
    assert all(p.endswith(EARLY_STOPPING_PROMPT) for c in round2_calls for p in c[0])


def test_run_judge_resumes_without_regenerating(tmp_path):
    prompts = {str(i): f"prompt {i}<think>\n" for i in range(4)}

    def answer(prompt):
        return "r\n</think>\n\n1" if prompt.startswith("prompt 1") else "unfinished"

    store_path = tmp_path / "j.jsonl"
    first = ScriptedGenerator(answer, lambda p: "0")
    results = run_judge(first, prompts, _settings(), RecordStore(store_path), seed=3)
    again = ScriptedGenerator(lambda p: pytest.fail("regenerated"), lambda p: pytest.fail("regenerated"))
    assert run_judge(again, prompts, _settings(), RecordStore(store_path), seed=3) == results
    assert again.calls == []
    # a store made with other prompts is refused
    with pytest.raises(ValueError, match="different prompt"):
        run_judge(again, {k: v + "x" for k, v in prompts.items()}, _settings(), RecordStore(store_path), seed=3)


def test_judge_triples_uses_the_chat_template(tmp_path):
    tokenizer = _tokenizer(QWEN3_LIKE_TEMPLATE)
    seen = []

    class Echo:
        def generate(self, prompts, settings, seed):
            seen.extend(prompts)
            return [
                {"text": "<think>\nSegment 2 ends with 1\n</think>\n\n1", "n_tokens": 9, "finished": True}
                for _ in prompts
            ]

    triples = {"x": Triple("", "Wait, maybe the", "So 2 + 2 = 4.")}
    results = judge.judge_triples(Echo(), tokenizer, triples, _settings(), RecordStore(tmp_path / "j.jsonl"), 0)
    assert results[0]["label"] == 1 and results[0]["rounds"] == 1
    assert seen == ["<|im_start|>user\n" + judge.judge_message(triples["x"]) + "<|im_end|>\n<|im_start|>assistant\n"]


def test_generator_returning_too_few_outputs_is_an_error(tmp_path):
    class Short:
        def generate(self, prompts, settings, seed):
            return []

    with pytest.raises(RuntimeError, match="0 outputs for 1 prompts"):
        run_judge(Short(), {"a": "p"}, _settings(), RecordStore(tmp_path / "j.jsonl"), 0)


# ----------------------------------------------------------------------------------------------
# Tiny judge training data

TRACE = (
    [
        "Okay, start with 3.\n\nSo first add 2, so 3 + 2 = 5.",
        "\n\nWait, maybe I should",
        "\n\nNot sure it matters, but addition is the easy part.",
        "\n\nAnother step, second add 1, so 5 + 1 = 6.",
    ],
    ["productive", "truncated", "superficial", "productive"],
)


def test_labelled_triples_mark_exactly_the_truncated_segments():
    labelled = judge.labelled_triples([TRACE, (["Alternatively, I could try to"], ["truncated"])])
    assert [label for _, label in labelled] == [0, 1, 0, 0, 1]
    assert labelled[1][0] == Triple(TRACE[0][0], TRACE[0][1], TRACE[0][2])
    assert labelled[4][0] == Triple("", "Alternatively, I could try to", "")
    with pytest.raises(ValueError, match="2 segments but 1 kinds"):
        judge.labelled_triples([(["a", "b"], ["productive"])])


def test_balanced_triples_are_balanced_and_deterministic():
    labelled = judge.labelled_triples([TRACE] * 3)  # 3 truncated, 9 complete
    chosen = judge.balanced_triples(labelled, 10, seed=1)
    assert len(chosen) == 10 and sum(label for _, label in chosen) == 5
    assert chosen == judge.balanced_triples(labelled, 10, seed=1)
    # the 3 truncated triples are used whole before any repeats
    truncated = [t for t, label in chosen if label == 1]
    assert set(truncated) == {t for t, label in labelled if label == 1}
    with pytest.raises(ValueError, match="no truncated segments"):
        judge.balanced_triples(judge.labelled_triples([(["a."], ["productive"])]), 4, 0)


def test_teacher_output_has_the_protocol_format_and_the_right_digit():
    for triple, label in judge.labelled_triples([TRACE]):
        output = judge.teacher_output(triple, label)
        assert parse_judgement(output, open_think=True) == label
        assert output.endswith(f"</think>\n\n{label}")
    assert "breaks off" in judge.teacher_output(Triple("", "\n\nWait, maybe I should", ""), 1)
    assert "finished sentence" in judge.teacher_output(Triple("", "\n\nWait, so 3 + 2 = 5.", ""), 0)


def test_training_examples_train_the_right_label():
    tokenizer = build_bpe_tokenizer(
        [
            m
            for t, label in judge.labelled_triples([TRACE])
            for m in (judge.judge_message(t), judge.teacher_output(t, label))
        ],
        vocab_size=400,
    )
    labelled = judge.labelled_triples([TRACE])
    settings = _settings()
    for share in (0.0, 1.0):
        examples = judge.judge_training_examples(tokenizer, labelled, settings, round2_share=share, seed=0)
        for (triple, label), example in zip(labelled, examples):
            trained = [t for t, lab in zip(example.input_ids, example.labels) if lab != -100]
            assert trained[-1] == tokenizer.eos_token_id
            text = tokenizer.decode(trained[:-1])
            prompt = judge.judge_chat_prompt(tokenizer, judge.judge_message(triple))
            assert tokenizer.decode(example.input_ids).startswith(prompt)
            if share == 0.0:  # round-1 form: reasoning + </think> + digit trained
                assert text == judge.teacher_output(triple, label)
            else:  # round-2 form: only the digit after the early-stopping prompt is trained
                assert text == str(label)
                assert EARLY_STOPPING_PROMPT in tokenizer.decode(example.input_ids)
            assert parse_judgement(tokenizer.decode(example.input_ids)[len(prompt) :], open_think=True) == label


# ----------------------------------------------------------------------------------------------
# End to end with a tiny random model, and the stage's summaries


def test_protocol_end_to_end_with_a_tiny_random_model(tmp_path):
    from segattr_utils.llm.generation import HFGenerator
    from segattr_utils.world.tiny_model import build_tiny_model

    labelled = judge.labelled_triples([TRACE])
    tokenizer = build_bpe_tokenizer(judge.judge_corpus(labelled, _settings()), vocab_size=300)
    model = build_tiny_model(
        tokenizer,
        {
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 512,
        },
        seed=0,
    )
    settings = JudgeSettings(
        round1=SamplingSettings(0.2, 0.7, 6, 1.1),
        round2=SamplingSettings(0.1, 0.7, 3, 1.1),
        batch_size=3,
        max_segment_chars=60,
    )
    triples = {str(i): t for i, (t, _) in enumerate(labelled)}
    store = RecordStore(tmp_path / "j.jsonl")
    results = judge.judge_triples(HFGenerator(model, tokenizer), tokenizer, triples, settings, store, seed=0)
    assert len(results) == 4
    for r in results:
        assert r["round1_n_tokens"] <= 6
        # an untrained model rarely closes </think> in 6 tokens: such items go to round 2
        expected = parse_judgement(r["round1_output"], open_think=True)
        assert r["rounds"] == (1 if expected is not None else 2)
        if r["rounds"] == 2:
            assert r["round2_n_tokens"] <= 3
            assert r["label"] == parse_judgement(r["round1_output"] + EARLY_STOPPING_PROMPT + r["round2_output"], True)
    again = judge.judge_triples(
        HFGenerator(model, tokenizer), tokenizer, triples, settings, RecordStore(tmp_path / "k.jsonl"), 0
    )
    assert again == results  # deterministic for a seed


def _judgements(rows):
    frame = pd.DataFrame(
        rows,
        columns=[
            "important",
            "important_selection",
            "label",
            "undecided",
            "truth",
            "rounds",
            "round1_finished",
            "round1_n_tokens",
        ],
    )
    frame["label"] = frame["label"].astype("Int64")
    return frame


def test_judge_quality_by_hand():
    from segattr_utils.stages.stage07_truncation_judge import judge_confusion, judge_quality

    rows = (
        [(True, True, 1, False, True, 1, True, 5)] * 3  # tp
        + [(True, True, 0, False, True, 1, True, 5)] * 1  # fn
        + [(True, True, 1, False, False, 1, True, 5)] * 2  # fp
        + [(True, True, 0, False, False, 1, True, 5)] * 4  # tn
        + [(True, True, None, True, True, 2, True, 5)] * 2
    )  # undecided, truly truncated
    frame = _judgements(rows)
    quality = judge_quality(frame).iloc[0]
    assert (quality["tp"], quality["fn"], quality["fp"], quality["tn"], quality["undecided"]) == (3, 1, 2, 4, 2)
    assert quality["accuracy"] == pytest.approx(7 / 10)
    assert quality["accuracy_all"] == pytest.approx(7 / 12)
    assert quality["precision"] == pytest.approx(3 / 5)
    assert quality["recall"] == pytest.approx(3 / 4)
    matrix = judge_confusion(frame)
    assert matrix.loc["truncated"].tolist() == [1, 3, 2]
    assert matrix.loc["complete"].tolist() == [4, 2, 0]
    nothing_flagged = judge_quality(_judgements([(True, True, 0, False, False, 1, True, 5)])).iloc[0]
    assert nothing_flagged["precision"] != nothing_flagged["precision"]
    assert "precision undefined" in nothing_flagged["note"]


def test_important_groups_recomputed_at_the_analysis_thresholds():
    from segattr_utils.method.importance import label_segments

    # trace t: strengths 0.5, 0.3, 0.2 -> tau 0.8 keeps segments 0 and 1; beta 0.95 drops segment 1 (consistency 1)
    scores = pd.DataFrame(
        {
            "trace_id": ["t"] * 3 + ["u"] * 2,
            "segment": [0, 1, 2, 0, 1],
            "norm_strength": [0.5, 0.3, 0.2, 0.9, 0.1],
            "consistency": [0.4, 1.0, 0.1, 0.5, 0.5],
        }
    )
    assert label_segments(scores, 0.8, 0.95)["important"].tolist() == [True, False, False, True, False]
    assert label_segments(scores, 1.0, 1.0)["important"].tolist() == [True, True, True, True, True]


# ----------------------------------------------------------------------------------------------
# Stage 07 wiring on hand-made artifacts


def _profile(tmp_path, name="smoke"):
    profile = load_profile(name)
    profile["results_root"] = str(tmp_path)
    return profile


def test_segments_to_judge_builds_triples_groups_and_truth(tmp_path):
    from segattr_utils.artifacts import write_table
    from segattr_utils.config import results_dir
    from segattr_utils.stages.stage07_truncation_judge import segments_to_judge

    profile = _profile(tmp_path)
    texts = ["Okay, 3 + 2 = 5.", "\n\nWait, maybe I should", "\n\nSo 5 + 1 = 6."]
    kinds = ["productive", "truncated", "productive"]
    segments = pd.DataFrame(
        [
            {
                "trace_id": "q:correct",
                "question_id": "q",
                "correct": True,
                "segment": i,
                "n_segments": 3,
                "text": t,
                "n_chars": len(t),
                "kind": k,
            }
            for i, (t, k) in enumerate(zip(texts, kinds))
        ]
        + [
            {
                "trace_id": "q:incorrect",
                "question_id": "q",
                "correct": False,
                "segment": 0,
                "n_segments": 1,
                "text": "x",
                "n_chars": 1,
                "kind": "productive",
            }
        ]
    )
    # strengths 0.6, 0.1, 0.3: tau 0.8 keeps segments 0 and 2; beta 0.95 drops segment 2 (consistency 0.99)
    scores = pd.DataFrame(
        {
            "trace_id": ["q:correct"] * 3 + ["q:incorrect"],
            "segment": [0, 1, 2, 0],
            "norm_strength": [0.6, 0.1, 0.3, 1.0],
            "consistency": [0.5, 0.2, 0.99, 0.5],
            "correct": [True, True, True, False],
            "important": [True, False, False, True],
        }
    )
    write_table((results_dir(profile) / "02_segmentation") / "segments.parquet", segments)
    write_table((results_dir(profile) / "03_ig_attribution") / "segment_scores.parquet", scores)
    table = segments_to_judge(profile)
    assert table["trace_id"].tolist() == ["q:correct"] * 3  # correct traces only
    assert table["before"].tolist() == ["", texts[0], texts[1]]
    assert table["after"].tolist() == [texts[1], texts[2], ""]
    assert table["important"].tolist() == [True, False, False]
    assert table["important_selection"].tolist() == [True, False, False]
    assert table["truth"].tolist() == [False, True, False]


def test_judge_training_triples_come_from_pretraining_teacher_traces(tmp_path):
    from segattr_utils.artifacts import write_table
    from segattr_utils.config import results_dir
    from segattr_utils.stages.stage07_truncation_judge import judge_training_triples

    profile = _profile(tmp_path)
    profile["judge"]["n_training_triples"] = 6
    traces = pd.DataFrame(
        [
            {"question_id": "p", "suite": "pretrain", "completion": "", "segments": TRACE[0], "kinds": TRACE[1]},
            {
                "question_id": "t",
                "suite": "train",
                "completion": "",
                "segments": ["held out."],
                "kinds": ["productive"],
            },
        ]
    )
    write_table((results_dir(profile) / "00_world") / "teacher_traces.parquet", traces)
    triples = judge_training_triples(profile)
    assert len(triples) == 6 and sum(label for _, label in triples) == 3
    for triple, label in triples:
        assert triple.segment in TRACE[0] and triple.segment != "held out."
        assert label == (TRACE[1][TRACE[0].index(triple.segment)] == "truncated")


def test_paper_judge_offline_fails_with_a_clear_message(tmp_path, monkeypatch):
    from segattr_utils.llm.models import ModelUnavailableError
    from segattr_utils.stages.stage07_truncation_judge import load_judge

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    profile = _profile(tmp_path, "paper")
    assert profile.get_path("models.judge.id") == "Qwen/Qwen3-8B"
    profile["models"]["judge"]["id"] = "segattr-tests/no-such-judge"  # never in any cache
    for backend in ("hf", "auto"):
        profile["generation"]["backend"] = backend
        with pytest.raises(ModelUnavailableError, match=r"(?s)segattr-tests/no-such-judge.*huggingface-cli download"):
            load_judge(profile)
    with pytest.raises(FileNotFoundError, match="tiny judge model is missing"):
        load_judge(_profile(tmp_path))
