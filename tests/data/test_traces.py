"""Imported traces (segattr_utils.data.traces): reading, the split at the last </think>, and validation
whose every message names the field and the record; checked on the hand-written fixtures of
tests/fixtures/r1_traces.py, the expected values worked out by hand."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from segattr_utils.data.traces import (
    MAX_LISTED,
    TraceImportError,
    TraceSettings,
    load_traces,
)
from segattr_utils.llm.grading import split_output
from segattr_utils.llm.models import ModelUnavailableError

from ..fixtures.r1_traces import INVALID_FIELDS, INVALID_ROWS, UNIT_ROWS, write_jsonl


def _spec(path, **settings) -> dict:
    return {"path": str(path), **settings}


#: UNIT_ROWS' columns have the default names; their id column is named (an id field is optional).
UNIT_FIELDS = {"id": "id"}


# ---------------------------------------------------------------------------------------------
# The split


def test_split_at_the_last_think_close_keeps_a_quoted_one_in_the_reasoning():
    output = "<think>\nI will write </think> later.\n\nWait, done.\n</think>\n\nSo \\boxed{1}."
    _, reasoning, answer_part = split_output(output, last=True)
    assert reasoning == "I will write </think> later.\n\nWait, done."
    assert answer_part == "\n</think>\n\nSo \\boxed{1}."


def test_split_without_think_close():
    with pytest.raises(ValueError, match="no </think>"):
        split_output("3 + 4 = 7, \\boxed{7}", last=True)
    assert split_output("<think>\n3 + 4 = 7, \\boxed{7}", last=True, require_close=False)[1:] == (
        "3 + 4 = 7, \\boxed{7}",
        "",
    )
    assert split_output("3 + 4 = 7", last=True, require_close=False)[1:] == ("3 + 4 = 7", "")


# ---------------------------------------------------------------------------------------------
# Reading valid records


def test_unit_rows_give_questions_and_numbered_samples(tmp_path):
    path = write_jsonl(tmp_path / "traces.jsonl", UNIT_ROWS)
    imported = load_traces(_spec(path, outputs="all", fields=UNIT_FIELDS))
    assert imported.questions.to_dict("records") == [
        {"id": "q1", "suite": "train", "question": "What is 3 * 4?", "answer": "12"},
        {"id": "q2", "suite": "train", "question": "What is 10 / 2?", "answer": "5"},  # first item of the list
    ]
    outputs = imported.outputs
    assert list(zip(outputs["question_id"], outputs["sample"], outputs["record"], outputs["item"])) == [
        ("q1", 0, "line 1", 0),
        ("q1", 1, "line 1", 1),
        ("q1", 2, "line 1", 2),
        ("q1", 3, "line 1", 3),
        ("q2", 0, "line 2", 0),
    ]
    assert imported.n_outputs_read == 5 and imported.rejected.empty
    # the leading <think> line is dropped, as for generated outputs; the rest splits back into the output
    first = outputs.iloc[0]
    assert first["reasoning"] == "Okay, 3 * 4 = 12.\n\nWait, let me check: 4 + 4 + 4 = 12."
    assert "<think>\n" + first["reasoning"] + first["answer_part"] == first["text"]
    assert outputs.iloc[4]["reasoning"] == "I will write </think> at the end. 10 / 2 = 5."


def test_outputs_first_takes_the_first_item_and_single_accepts_strings(tmp_path):
    path = write_jsonl(tmp_path / "traces.jsonl", UNIT_ROWS)
    imported = load_traces(_spec(path, outputs="first"))
    assert imported.outputs["text"].tolist() == [UNIT_ROWS[0]["output"][0], UNIT_ROWS[1]["output"][0]]
    strings = [{**row, "output": row["output"][0]} for row in UNIT_ROWS]
    single = load_traces(_spec(write_jsonl(tmp_path / "single.jsonl", strings)))
    assert single.outputs["text"].tolist() == [UNIT_ROWS[0]["output"][0], UNIT_ROWS[1]["output"][0]]
    assert single.outputs["item"].isna().all()


def test_records_of_one_question_without_an_id_field_are_grouped_by_question_text(tmp_path):
    rows = [
        {"question": "Q?", "answer": "1", "output": "a\n</think>\\boxed{1}"},
        {"question": "R?", "answer": "2", "output": "b\n</think>\\boxed{2}"},
        {"question": "Q?", "answer": "1", "output": "c\n</think>\\boxed{3}"},
    ]
    imported = load_traces(_spec(write_jsonl(tmp_path / "t.jsonl", rows)))
    assert imported.questions["id"].tolist() == ["train-00000", "train-00001"]
    assert list(zip(imported.outputs["question_id"], imported.outputs["sample"])) == [
        ("train-00000", 0),
        ("train-00001", 0),
        ("train-00000", 1),
    ]


def test_parquet_and_json_lists_and_rows(tmp_path):
    # parquet hands list columns back as numpy arrays: still lists of outputs, never their repr
    frame = pd.DataFrame(UNIT_ROWS)
    frame["answer"] = ["12", "5"]
    frame.to_parquet(tmp_path / "t.parquet")
    imported = load_traces(_spec(tmp_path / "t.parquet", outputs="all", fields=UNIT_FIELDS))
    assert imported.outputs["text"].tolist() == UNIT_ROWS[0]["output"] + UNIT_ROWS[1]["output"]
    assert imported.outputs["record"].tolist() == ["row 0"] * 4 + ["row 1"]
    with pytest.raises(TraceImportError, match=r"row 0 \(id 'q1'\): field 'output' \(output\) holds a list of 4"):
        load_traces(_spec(tmp_path / "t.parquet", fields=UNIT_FIELDS))
    (tmp_path / "t.json").write_text(json.dumps({"data": UNIT_ROWS}), encoding="utf-8")
    assert len(load_traces(_spec(tmp_path / "t.json", outputs="all")).outputs) == 5


def test_a_solution_field_must_not_hold_a_full_output(tmp_path):
    rows = [
        {"id": "a", "question": "Q?", "answer": "1", "output": "x\n</think>\\boxed{1}", "sol": "x. So 1."},
        {"id": "b", "question": "R?", "answer": "2", "output": "y\n</think>\\boxed{2}", "sol": "y\n</think>\\boxed{2}"},
    ]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(TraceImportError) as error:
        load_traces(_spec(path, fields={"solution": "sol", "id": "id"}))
    assert [(p.record, p.field) for p in error.value.problems] == [("line 2", "solution")]
    assert "line 2 (id 'b'): field 'sol' (solution) holds </think>" in str(error.value)
    with pytest.warns(UserWarning, match="skipped 1 of 2 outputs"):
        imported = load_traces(_spec(path, fields={"solution": "sol", "id": "id"}, on_invalid="skip"))
    assert imported.questions.to_dict("records") == [
        {"id": "a", "suite": "train", "question": "Q?", "answer": "1", "solution": "x. So 1."}
    ]


# ---------------------------------------------------------------------------------------------
# Validation


#: INVALID_ROWS' problems by hand: (line, id, field, what the message says)
EXPECTED_PROBLEMS = [
    ("line 3", "no-gold", "answer", "missing field 'answer' (data.traces.fields.answer): no gold answer"),
    ("line 4", "listed", "output", "field 'generation' (output) holds a list of 1 items where one output is expected"),
    ("line 5", "open", "output", "field 'generation' (output) has no </think>"),
    ("line 6", "blank", "output", "field 'generation' (output) has an empty reasoning before </think>"),
    ("line 7", "empty-gold", "answer", "field 'answer' (answer) is empty: no gold answer"),
    ("line 8", None, None, "is not valid JSON"),
    ("line 10", "no-question", "question", "missing field 'problem' (data.traces.fields.question)"),
    ("line 11", "ok", "answer", "gold answer '3' differs from '2' given for the same question at line 1"),
    ("line 12", None, "id", "field 'uuid' (id) is empty"),
]


def _invalid_spec(tmp_path, **settings) -> dict:
    return _spec(write_jsonl(tmp_path / "invalid.jsonl", INVALID_ROWS), fields=INVALID_FIELDS, **settings)


def test_every_problem_is_listed_with_its_field_and_line(tmp_path):
    with pytest.raises(TraceImportError) as error:
        load_traces(_invalid_spec(tmp_path))
    problems = error.value.problems
    assert [(p.record, p.question_id, p.field) for p in problems] == [e[:3] for e in EXPECTED_PROBLEMS]
    message = str(error.value)
    # 12 lines, one blank; line 4's list counts as one record's output
    assert message.startswith(f"data.traces: 9 problem(s) in {tmp_path / 'invalid.jsonl'} (11 outputs read):")
    for line, qid, _, what in EXPECTED_PROBLEMS:
        where = line if qid is None else f"{line} (id {qid!r})"
        assert f"  - {where}: {what}" in message
    assert "on_invalid: skip" in message
    # a list is reported as a list, never turned into its Python repr
    assert "['3 + 3" not in message


def test_skip_leaves_invalid_records_out_with_a_warning_and_a_table(tmp_path):
    with pytest.warns(UserWarning, match=r"skipped 9 of 11 outputs .*9 problem\(s\)"):
        imported = load_traces(_invalid_spec(tmp_path, on_invalid="skip"))
    assert imported.questions["id"].tolist() == ["ok"]
    assert imported.outputs["record"].tolist() == ["line 1", "line 2"]
    rejected = imported.rejected.astype(object).where(imported.rejected.notna(), None)
    assert list(zip(rejected["record"], rejected["question_id"], rejected["field"])) == [
        e[:3] for e in EXPECTED_PROBLEMS
    ]
    assert list(rejected.columns) == ["record", "question_id", "item", "field", "problem"]


def test_a_list_item_that_is_invalid_is_named_by_its_position(tmp_path):
    rows = [{"id": "q", "question": "Q?", "answer": "1", "output": ["a\n</think>\\boxed{1}", "no close", 7]}]
    with pytest.raises(TraceImportError) as error:
        load_traces(_spec(write_jsonl(tmp_path / "t.jsonl", rows), outputs="all", fields=UNIT_FIELDS))
    assert [(p.record, p.item, p.field) for p in error.value.problems] == [
        ("line 1", 1, "output"),
        ("line 1", 2, "output"),
    ]
    assert "line 1 (id 'q'), output 1: field 'output' (output) has no </think>" in str(error.value)
    assert "line 1 (id 'q'), output 2: field 'output' (output) holds a int where an output (a text) is expected" in str(
        error.value
    )


def test_at_most_twenty_problems_are_listed_with_their_count(tmp_path):
    rows = [{"question": f"Q{i}?", "output": "a\n</think>\\boxed{1}"} for i in range(MAX_LISTED + 5)]
    with pytest.raises(TraceImportError) as error:
        load_traces(_spec(write_jsonl(tmp_path / "t.jsonl", rows)))
    message = str(error.value)
    assert f"{MAX_LISTED + 5} problem(s)" in message
    assert len(re.findall(r"^  - line \d+: missing field 'answer'", message, flags=re.M)) == MAX_LISTED
    assert "  ... and 5 more" in message


def test_require_think_close_false_takes_the_whole_output_as_reasoning(tmp_path):
    rows = [{"question": "Q?", "answer": "7", "output": "<think>\n3 + 4 = 7, so \\boxed{7}"}]
    imported = load_traces(_spec(write_jsonl(tmp_path / "t.jsonl", rows), require_think_close=False))
    assert imported.outputs[["reasoning", "answer_part"]].to_dict("records") == [
        {"reasoning": "3 + 4 = 7, so \\boxed{7}", "answer_part": ""}
    ]


def test_only_invalid_records_raise_even_when_skipping(tmp_path):
    rows = [{"question": "Q?", "answer": "7", "output": "no close"}]
    with pytest.warns(UserWarning), pytest.raises(TraceImportError, match="holds no valid output"):
        load_traces(_spec(write_jsonl(tmp_path / "t.jsonl", rows), on_invalid="skip"))


def test_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="needs a path"):
        TraceSettings.from_spec({"fields": {}})
    with pytest.raises(ValueError, match="outputs must be one of single, first, all"):
        TraceSettings.from_spec({"path": "x.jsonl", "outputs": "every"})
    with pytest.raises(ValueError, match="on_invalid must be one of error, skip"):
        TraceSettings.from_spec({"path": "x.jsonl", "on_invalid": "drop"})
    with pytest.raises(ValueError, match=r"unknown keys \['gold'\]"):
        TraceSettings.from_spec({"path": "x.jsonl", "fields": {"gold": "answer"}})
    with pytest.raises(ValueError, match=r"unknown settings \['local_path'\]"):
        TraceSettings.from_spec({"path": "x.jsonl", "local_path": "y"})
    settings = TraceSettings.from_spec({"path": "x.jsonl", "fields": {"output": "generation"}})
    assert settings.fields == {
        "question": "question",
        "output": "generation",
        "answer": "answer",
        "id": None,
        "solution": None,
    }
    with pytest.raises(FileNotFoundError, match="data.traces.path .*missing.jsonl' does not exist"):
        load_traces({"path": str(tmp_path / "missing.jsonl")})


def test_a_saved_dataset_folder_and_a_hub_dataset(tmp_path, monkeypatch):
    import datasets

    datasets.Dataset.from_list(UNIT_ROWS[:1]).save_to_disk(str(tmp_path / "saved"))
    imported = load_traces(_spec(tmp_path / "saved", outputs="all", fields=UNIT_FIELDS))
    assert imported.outputs["text"].tolist() == UNIT_ROWS[0]["output"]
    assert imported.outputs["record"].tolist() == ["row 0"] * 4

    asked = []

    def load_dataset(hub_id, config, split):
        asked.append((hub_id, config, split))
        if hub_id == "me/unreachable":
            raise ConnectionError("offline")
        return UNIT_ROWS

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    imported = load_traces({"hub_id": "me/r1-traces", "split": "test", "outputs": "all", "fields": UNIT_FIELDS})
    assert asked == [("me/r1-traces", None, "test")] and len(imported.outputs) == 5
    with pytest.raises(ModelUnavailableError, match="trace dataset 'me/unreachable' could not be loaded"):
        load_traces({"hub_id": "me/unreachable"})


def test_records_of_one_id_must_agree_on_the_question(tmp_path):
    rows = [
        {"id": "a", "question": "Q?", "answer": "1", "output": "x\n</think>\\boxed{1}"},
        {"id": "a", "question": "Other?", "answer": "1", "output": "y\n</think>\\boxed{1}"},
    ]
    with pytest.raises(TraceImportError) as error:
        load_traces(_spec(write_jsonl(tmp_path / "t.jsonl", rows), fields=UNIT_FIELDS))
    assert (
        "  - line 2 (id 'a'): field 'question' (question) differs from the text given for the same id at line 1"
        in str(error.value)
    )
