"""Reading R1 trace files for ``segattr score`` (``segattr_utils.commands.trace_file``): every bad field is an
error that names the line and the field; nothing is turned into text silently (a list output, a number)."""

from __future__ import annotations

import json

import pytest

from segattr_utils.commands.trace_file import TraceFileError, TraceInput, read_r1_traces

OUTPUT = "<think>\nOkay, 1 + 1 = 2.\n</think>\n\n\\boxed{2}"


def _write(tmp_path, rows, name="traces.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_defaults_and_ids(tmp_path):
    rows = [
        {"id": "a", "question": "1 + 1?", "output": OUTPUT, "answer": "2"},
        {"question": "1 + 1?", "output": OUTPUT, "answer": 2},  # no id: named by its line; a number answer
    ]
    assert read_r1_traces(_write(tmp_path, rows)) == [
        TraceInput("a", "1 + 1?", OUTPUT, "2"),
        TraceInput("line-2", "1 + 1?", OUTPUT, "2"),
    ]


def test_renamed_fields_and_output_index(tmp_path):
    rows = [{"uuid": 7, "problem": "1 + 1?", "generations": ["first", OUTPUT], "final": " 2 "}]
    fields = {"id": "uuid", "question": "problem", "output": "generations", "answer": "final"}
    assert read_r1_traces(_write(tmp_path, rows), fields, output_index=1) == [TraceInput("7", "1 + 1?", OUTPUT, "2")]
    with pytest.raises(TraceFileError, match="has 2 items, no item 5"):
        read_r1_traces(_write(tmp_path, rows), fields, output_index=5)


def test_json_list_file(tmp_path):
    path = tmp_path / "traces.json"
    path.write_text(json.dumps([{"question": "q", "output": OUTPUT, "answer": "2"}]), encoding="utf-8")
    assert [t.trace_id for t in read_r1_traces(path)] == ["item-1"]


@pytest.mark.parametrize(
    "row, message",
    [
        (
            {"question": "q", "answer": "2"},
            r"line 1: no field 'output' for the output \(fields present: answer, question\)",
        ),
        ({"question": "q", "output": [OUTPUT, OUTPUT], "answer": "2"}, "'output' .* list of 2 items.*--output-index"),
        ({"question": "q", "output": OUTPUT, "answer": ["2"]}, r"'answer' \(answer\) is a list of 1 items"),
        ({"question": "q", "output": {"text": OUTPUT}, "answer": "2"}, "must be a string, got dict"),
        ({"question": "  ", "output": OUTPUT, "answer": "2"}, r"'question' \(question\) is empty"),
        ({"question": "q", "output": OUTPUT, "answer": ""}, r"'answer' \(answer\) is empty"),
        ({"question": "q", "output": OUTPUT, "answer": None}, "must be a string, got NoneType"),
        (["q", OUTPUT, "2"], "must be a JSON object, got list"),
    ],
)
def test_bad_fields_are_named(tmp_path, row, message):
    with pytest.raises(TraceFileError, match=message):
        read_r1_traces(_write(tmp_path, [row]))


def test_bad_json_duplicates_empty_and_missing_files(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps({"question": "q", "output": OUTPUT, "answer": "2"}) + "\n{not json\n")
    with pytest.raises(TraceFileError, match="line 2: not a JSON object"):
        read_r1_traces(path)
    rows = [{"id": "x", "question": "q", "output": OUTPUT, "answer": "2"}] * 2
    with pytest.raises(TraceFileError, match="line 2: trace id 'x' is also on line 1"):
        read_r1_traces(_write(tmp_path, rows))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(TraceFileError, match="holds no traces"):
        read_r1_traces(tmp_path / "empty.jsonl")
    with pytest.raises(TraceFileError, match="does not exist"):
        read_r1_traces(tmp_path / "nowhere.jsonl")
