"""Reading R1 trace files for ``segattr score`` (``segattr_utils.commands.trace_file``) through notebook 01's
trace import: every invalid record is returned with notebook 01's message (naming the record, the field and
the command-line option), none is dropped silently; nothing is turned into text silently (a list output)."""

from __future__ import annotations

import json
import re

import pytest

from segattr_utils.commands.trace_file import TraceFileError, TraceInput, read_score_traces, trace_settings

OUTPUT = "<think>\nOkay, 1 + 1 = 2.\n</think>\n\n\\boxed{2}"


def _write(tmp_path, rows, name="traces.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _read(path, fields=None, output_index=None):
    return read_score_traces(trace_settings(path, fields, output_index))


def test_defaults_and_ids(tmp_path):
    rows = [
        {"id": "a", "question": "1 + 1?", "output": OUTPUT, "answer": "2"},
        {"id": "b", "question": "1 + 1?", "output": OUTPUT, "answer": 2},  # a number answer, as written
    ]
    assert _read(_write(tmp_path, rows)) == (
        [TraceInput("a", "1 + 1?", OUTPUT, "2"), TraceInput("b", "1 + 1?", OUTPUT, "2")],
        [],
    )
    # without an id field, a trace is named by its line
    rows = [{k: v for k, v in row.items() if k != "id"} for row in rows]
    traces, rejected = _read(_write(tmp_path, rows))
    assert [t.trace_id for t in traces] == ["line-1", "line-2"] and rejected == []


def test_renamed_fields_and_output_index(tmp_path):
    rows = [{"uuid": 7, "problem": "1 + 1?", "generations": ["first", OUTPUT], "final": " 2 "}]
    fields = {"id": "uuid", "question": "problem", "output": "generations", "answer": "final"}
    assert _read(_write(tmp_path, rows), fields, output_index=1) == ([TraceInput("7", "1 + 1?", OUTPUT, "2")], [])
    with pytest.raises(TraceFileError, match="has 2 items, no item 5"):
        _read(_write(tmp_path, rows), fields, output_index=5)


def test_json_list_file(tmp_path):
    path = tmp_path / "traces.json"
    path.write_text(json.dumps([{"question": "q", "output": OUTPUT, "answer": "2"}]), encoding="utf-8")
    assert [t.trace_id for t in _read(path)[0]] == ["row-0"]


@pytest.mark.parametrize(
    "row, reason, message",
    [
        ({"question": "q", "answer": "2"}, "invalid record", r"line 2: missing field 'output' \(--output-field\)"),
        (
            {"question": "q", "output": [OUTPUT, OUTPUT], "answer": "2"},
            "invalid record",
            "line 2: field 'output' .* list of 2 items .*; choose one with --output-index",
        ),
        ({"question": "q", "output": {"text": OUTPUT}, "answer": "2"}, "invalid record", "holds a dict where"),
        ({"question": "  ", "output": OUTPUT, "answer": "2"}, "invalid record", r"'question' \(question\) is empty"),
        ({"question": "q", "output": OUTPUT, "answer": ""}, "invalid record", "no gold answer"),
        ({"question": "q", "output": OUTPUT}, "invalid record", r"missing field 'answer' \(--answer-field\)"),
        ({"question": "q", "output": "Okay, 1 + 1", "answer": "2"}, "no </think>", "has no </think>"),
        ({"question": "q", "output": "<think>\n\n</think> \\boxed{2}", "answer": "2"}, "empty reasoning", "empty"),
    ],
)
def test_invalid_records_are_listed_and_the_valid_ones_kept(tmp_path, row, reason, message):
    good = {"question": "1 + 1?", "output": OUTPUT, "answer": "2"}
    traces, rejected = _read(_write(tmp_path, [good, row, good]))
    assert [t.trace_id for t in traces] == ["line-1", "line-3"]
    assert len(rejected) == 1 and rejected[0]["trace_id"] == "line-2" and rejected[0]["reason"] == reason
    assert re.search(message, rejected[0]["detail"]), rejected[0]["detail"]
    assert "data.traces" not in rejected[0]["detail"]  # the options of the command line, not a profile's


def test_unreadable_lines_shared_ids_empty_and_missing_files(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps({"question": "q", "output": OUTPUT, "answer": "2"}) + "\n{not json\n")
    traces, rejected = _read(path)
    assert [t.trace_id for t in traces] == ["line-1"]
    assert rejected == [{"trace_id": "line-2", "reason": "invalid record", "detail": rejected[0]["detail"]}]
    assert "is not valid JSON" in rejected[0]["detail"]
    # two outputs of one id are two traces; an id whose records disagree on the gold answer is listed
    rows = [{"id": "x", "question": "q", "output": OUTPUT, "answer": "2"}] * 2
    rows.append({"id": "x", "question": "q", "output": OUTPUT, "answer": "3"})
    traces, rejected = _read(_write(tmp_path, rows))
    assert [t.trace_id for t in traces] == ["x-0", "x-1"]
    assert (
        rejected[0]["trace_id"] == "x"
        and "differs from '2' given for the same question at line 1" in (rejected[0]["detail"])
    )
    with pytest.raises(TraceFileError, match="1 problem"):  # nothing valid: an error listing the problems
        _read(_write(tmp_path, [{"question": "q", "output": [OUTPUT], "answer": "2"}]))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(TraceFileError, match="holds no traces"):
        _read(tmp_path / "empty.jsonl")
    with pytest.raises(TraceFileError, match="does not exist"):
        trace_settings(tmp_path / "nowhere.jsonl")
