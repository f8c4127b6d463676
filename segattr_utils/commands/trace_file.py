"""Reading a file of R1-format traces for ``segattr score``: one record per trace with a question, one
model output (reasoning, ``</think>``, an answer with ``\\boxed{}``) and the gold answer.

The file is JSON Lines (one object per line) or, named ``*.json``, a JSON list of objects. Field names default to
``id``, ``question``, ``output`` and ``answer`` and can be renamed (``--question-field problem``). Every
field is checked, and an error names the line and the field: a missing field (with the fields the record
has), a list where a string is expected (a list of outputs needs ``--output-index``), an empty question,
output or answer, a duplicate id. Without an ``id`` field a trace is called ``line-N`` (``item-N`` in a JSON list).

What is checked here is the record's shape; whether an output is a finished R1 trace (``</think>``, a
boxed answer) is decided per trace by :func:`segattr_utils.scored_trace.score_trace`, and such traces
are listed as skipped, not rejected with the file.

(The pipeline's own trace import, notebook 01's ``data.traces``, validates the same fields; the two are
to be merged.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DEFAULT_FIELDS = {"id": "id", "question": "question", "output": "output", "answer": "answer"}


class TraceFileError(ValueError):
    """A trace file that cannot be read: the message names the line and the field."""


@dataclass(frozen=True)
class TraceInput:
    trace_id: str
    question: str
    output: str
    answer: str


def _records(path: Path) -> list[tuple[str, object]]:
    """``(where, record)`` pairs: ``line N`` of a JSONL file, ``item N`` of a JSON list."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise TraceFileError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(items, list):
            raise TraceFileError(f"{path}: a .json trace file must hold a list of objects")
        return [(f"item {i + 1}", item) for i, item in enumerate(items)]
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as error:
            raise TraceFileError(f"{path}, line {number}: not a JSON object ({error.msg})") from None
    return records


def _field(record: dict, name: str, key: str, where: str, *, option: str, index: int | None = None):
    if key not in record:
        present = ", ".join(sorted(map(str, record))) or "none"
        raise TraceFileError(
            f"{where}: no field {key!r} for the {name} (fields present: {present}); name it with --{option}-field"
        )
    value = record[key]
    if isinstance(value, list):
        if index is None:
            hint = f"; choose one with --{option}-index" if name == "output" else ""
            raise TraceFileError(f"{where}: field {key!r} ({name}) is a list of {len(value)} items, not a string{hint}")
        if not -len(value) <= index < len(value):
            raise TraceFileError(f"{where}: field {key!r} ({name}) has {len(value)} items, no item {index}")
        value = value[index]
    if name in ("answer", "id") and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise TraceFileError(f"{where}: field {key!r} ({name}) must be a string, got {type(value).__name__}")
    if not value.strip():
        raise TraceFileError(f"{where}: field {key!r} ({name}) is empty")
    return value


def read_r1_traces(path: str | Path, fields: dict | None = None, output_index: int | None = None) -> list[TraceInput]:
    """The traces of an R1 JSONL (or JSON list) file, in file order; :class:`TraceFileError` names the
    line and field of the first bad record. ``fields`` renames ``id``/``question``/``output``/``answer``;
    ``output_index`` picks one output where the output field holds a list."""
    path = Path(path)
    if not path.is_file():
        raise TraceFileError(f"the trace file {str(path)!r} does not exist")
    names = {**DEFAULT_FIELDS, **(fields or {})}
    unknown = set(names) - set(DEFAULT_FIELDS)
    if unknown:
        raise ValueError(f"unknown trace fields {sorted(unknown)}; use {', '.join(DEFAULT_FIELDS)}")
    traces, seen = [], {}
    for position, record in _records(path):
        where = f"{path}, {position}"
        if not isinstance(record, dict):
            raise TraceFileError(f"{where}: a trace must be a JSON object, got {type(record).__name__}")
        trace_id = (
            _field(record, "id", names["id"], where, option="id")
            if names["id"] in record
            else position.replace(" ", "-")
        )
        if trace_id in seen:
            raise TraceFileError(f"{where}: trace id {trace_id!r} is also on {seen[trace_id]}")
        seen[trace_id] = position
        traces.append(
            TraceInput(
                trace_id=trace_id,
                question=_field(record, "question", names["question"], where, option="question"),
                output=_field(record, "output", names["output"], where, option="output", index=output_index),
                answer=_field(record, "answer", names["answer"], where, option="answer").strip(),
            )
        )
    if not traces:
        raise TraceFileError(f"{path} holds no traces")
    return traces
