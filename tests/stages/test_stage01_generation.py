"""Stage 01: the selection of kept traces on hand-made tables, the error when no output finished, and
imported traces (data.traces) graded and kept instead of generated ones."""

import pandas as pd
import pytest

from segattr_utils import dag, services
from segattr_utils.artifacts import read_table, write_table
from segattr_utils.config import Profile, results_dir
from segattr_utils.stages import stage01_generation as generation
from segattr_utils.stages.stage01_generation import keep_shortest_traces

from ..fixtures.r1_traces import UNIT_ROWS, write_jsonl


def _sample(qid, sample, text, n_tokens, correct, finished=True, tag="sample"):
    return {
        "question_id": qid,
        "tag": tag,
        "sample": sample,
        "text": text,
        "n_tokens": n_tokens,
        "finished": finished,
        "pred": None,
        "correct": correct,
    }


@pytest.fixture
def questions():
    return pd.DataFrame(
        [{"id": "q1", "question": "Q1?", "answer": "3"}, {"id": "q2", "question": "Q2?", "answer": "5"}]
    )


def test_keeps_shortest_correct_and_incorrect_per_question(questions):
    ok = "a\n\nWait b\n</think>\n\n\\boxed{3}"
    samples = pd.DataFrame(
        [
            _sample("q1", 0, ok, 30, True),
            _sample("q1", 1, ok, 20, True),  # shortest correct
            _sample("q1", 2, ok, 20, True),  # tie: the lower sample index wins
            _sample("q1", 3, "x</think>\\boxed{4}", 50, False),
            _sample("q1", 4, "y</think>\\boxed{4}", 10, False, finished=False),  # unfinished: not eligible
            _sample("q1", 5, "no think at all", 5, False),  # no </think>: not eligible
            _sample("q1", 6, "\n</think>\n\n\\boxed{9}", 3, False),  # empty reasoning: not eligible
            _sample("q1", 0, ok, 1, True, tag="greedy"),  # greedy: not a sample
            _sample("q2", 0, ok.replace("3", "5"), 40, True),
        ]
    )
    kept = keep_shortest_traces(samples, questions).set_index("trace_id")
    assert sorted(kept.index) == ["q1:correct", "q1:incorrect", "q2:correct"]
    assert kept.loc["q1:correct", "sample"] == 1
    assert kept.loc["q1:incorrect", "sample"] == 3
    assert kept.loc["q1:correct", "reasoning"] == "a\n\nWait b"
    assert kept.loc["q1:correct", "answer_part"] == "\n</think>\n\n\\boxed{3}"
    for row in kept.itertuples():
        assert row.reasoning + row.answer_part == row.text


def test_no_kept_trace_still_gives_the_kept_columns(questions):
    samples = pd.DataFrame([_sample("q1", 0, "a\n</think>\\boxed{3}", 9, True, finished=False)])
    kept = keep_shortest_traces(samples, questions)
    assert kept.empty and "correct" in kept.columns and "trace_id" in kept.columns


# ---------------------------------------------------------------------------------------------
# A generation that finishes no output


class _UnfinishedGenerator:
    """Every output reaches max_new_tokens: no EOS, no </think>."""

    def generate(self, prompts, settings, seed):
        return [{"text": "Okay, so 2 + 1 = 3 and then", "n_tokens": settings.max_new_tokens, "finished": False}] * len(
            prompts
        )

    def close(self):
        pass


class _Template:
    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return messages[0]["content"]


def test_a_generation_that_finishes_no_output_says_which_setting_to_raise(profile, monkeypatch):
    """Before: KeyError 'question_id' (the empty selection lost its columns). Now: the setting and its value."""
    write_table(
        (results_dir(profile) / "00_world") / "questions.parquet",
        pd.DataFrame([{"id": "q0", "suite": "train", "question": "Start with 2, then first add 1.", "answer": "3"}]),
    )
    profile["generation"] = {**profile["generation"], "max_new_tokens": 7, "n_samples": 2, "backend": "hf"}
    monkeypatch.setattr(services, "load_generator", lambda *args, **kwargs: (_UnfinishedGenerator(), _Template()))
    with pytest.raises(RuntimeError) as error:
        generation.generate_training_traces(profile)
    message = str(error.value)
    assert "none of the 2 sampled outputs finished" in message
    assert "Raise generation.max_new_tokens" in message and "generation.max_new_tokens = 7 tokens" in message
    assert str(dag.GENERATION.path(profile, "samples_store")) in message  # its unfinished records would be reused


# ---------------------------------------------------------------------------------------------
# Imported traces (data.traces) instead of generation


def _importing(profile, path, **settings):
    return Profile({**profile, "data": {"traces": {"path": str(path), "fields": {"id": "id"}, **settings}}})


def test_imported_traces_are_graded_and_the_shortest_kept(profile, tmp_path):
    """UNIT_ROWS by hand: q1 (gold 12) has outputs 0 and 1 correct (1 is shorter), 2 and 3 incorrect
    (7 and 11; 2 is shorter); q2 (gold "5", the first of a list) has one correct output whose reasoning
    quotes </think>, split at the last one."""
    imported = _importing(profile, write_jsonl(tmp_path / "traces.jsonl", UNIT_ROWS), outputs="all")
    result = generation.run(imported)
    assert not result.failed_checks()
    samples = read_table(dag.GENERATION.path(imported, "samples"))
    assert samples["correct"].tolist() == [True, True, False, False, True]
    assert samples["pred"].tolist() == ["12", "12", "7", "11", "5"]
    kept = services.kept_traces(imported).set_index("trace_id")
    assert sorted(kept.index) == ["q1:correct", "q1:incorrect", "q2:correct"]
    assert kept.loc["q1:correct", "sample"] == 1 and kept.loc["q1:incorrect", "sample"] == 2
    assert kept.loc["q1:correct", "text"] == UNIT_ROWS[0]["output"][1]
    assert kept.loc["q1:correct", "reasoning"] == "Okay, 3 * 4 = 12."
    assert kept.loc["q1:correct", "answer_part"] == "\n</think>\n\n\\boxed{12}"
    assert kept.loc["q2:correct", "reasoning"] == "I will write </think> at the end. 10 / 2 = 5."
    assert kept.loc["q2:correct", "answer"] == "5"
    tokenizer = services.load_role_tokenizer(imported, "generator")
    assert kept.loc["q1:correct", "n_tokens"] == len(
        tokenizer(UNIT_ROWS[0]["output"][1], add_special_tokens=False).input_ids
    )
    summary = result.tables["summary"][imported.name]
    assert summary["outputs_read"] == 5 and summary["outputs_rejected"] == 0 and summary["outputs_correct"] == 3
    assert summary["kept_correct"] == 2 and summary["kept_incorrect"] == 1
    # the later stages find the file's questions through the services, without the world's ground truth
    assert services.load_questions(imported, "train")["id"].tolist() == ["q1", "q2"]
    assert services.world_problems(imported) == {} and not services.world_ground_truth(imported)
    assert services.world_ground_truth(profile)


def test_imported_traces_skip_lists_the_rejected_outputs(profile, tmp_path):
    rows = [*UNIT_ROWS, {"id": "q3", "question": "Q?", "answer": "1", "output": ["no close"]}]
    imported = _importing(profile, write_jsonl(tmp_path / "traces.jsonl", rows), outputs="all", on_invalid="skip")
    with pytest.warns(UserWarning, match="skipped 1 of 6 outputs"):
        result = generation.run(imported)
    rejected = read_table(dag.GENERATION.path(imported, "rejected_outputs"))
    assert rejected[["record", "question_id", "item", "field"]].to_dict("records") == [
        {"record": "line 3", "question_id": "q3", "item": 0, "field": "output"}
    ]
    assert result.tables["rejected"]["problem"].str.contains("has no </think>").all()
    summary = result.tables["summary"][imported.name]
    assert summary["outputs_read"] == 6 and summary["outputs_rejected"] == 1 and summary["outputs_graded"] == 5


def test_imported_training_questions_need_stage_01_and_a_solution_for_reference_traces(profile, tmp_path):
    imported = _importing(profile, write_jsonl(tmp_path / "traces.jsonl", UNIT_ROWS), outputs="all")
    with pytest.raises(FileNotFoundError, match="run notebook 01 first"):
        services.load_questions(imported, "train")
    generation.run(imported)
    with pytest.raises(ValueError, match=r"no reference solution \(data.traces.fields.solution\)"):
        services.reference_traces(imported)
