"""The traces ``segattr score`` scores, read and validated by notebook 01's trace import
(:mod:`segattr_utils.data.traces`): one file, one set of checks, the same messages.

The file is JSON Lines, a JSON list (``.json``), Parquet or a saved dataset folder; each record holds a
question, one model output (reasoning, ``</think>``, an answer with ``\\boxed{}``) and the gold answer.
Field names default to ``id``, ``question``, ``output`` and ``answer`` and are renamed with
``--question-field problem`` and so on; a list of outputs needs ``--output-index``. The output is split at
its last ``</think>``.

A record that is not valid (a missing or empty field, a list where one text is expected, no ``</think>``,
an empty reasoning, two records of one id that disagree on the question or gold answer) is not scored and
is listed with notebook 01's message (:func:`read_score_traces` returns it, ``segattr score`` writes it to
``skipped.csv``); it is never dropped silently. A file with no valid record at all is an error.

Trace ids: the id field where the file has one (``id-N`` for the N-th output of an id given by several
records), else the record's place in the file (``line-3`` of a JSONL file, ``row-2`` of another source).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..data.traces import Problem, TraceImportError, TraceSettings, parse_traces, problem_report, read_records

DEFAULT_FIELDS = {"id": "id", "question": "question", "output": "output", "answer": "answer"}
#: The reason tag of a record that cannot be scored, unless its problem has a more precise one.
INVALID_RECORD = "invalid record"


class TraceFileError(ValueError):
    """A trace file that cannot be scored at all (missing, unreadable, or without a valid record)."""


@dataclass(frozen=True)
class TraceInput:
    trace_id: str
    question: str
    output: str
    answer: str


def trace_settings(path: str | Path, fields: dict | None = None, output_index: int | None = None) -> TraceSettings:
    """The :class:`TraceSettings` of a ``segattr score`` call: its file, the ``--*-field`` names (an id
    field named ``None`` is used when the records have it) and ``--output-index``; messages name the
    command-line options. Checks the arguments only (the file is not read)."""
    names = {**DEFAULT_FIELDS, **{k: v for k, v in (fields or {}).items() if v is not None}}
    unknown = set(names) - set(DEFAULT_FIELDS)
    if unknown:
        raise ValueError(f"unknown trace fields {sorted(unknown)}; use {', '.join(DEFAULT_FIELDS)}")
    if not Path(path).exists():
        raise TraceFileError(f"the trace file {str(path)!r} does not exist")
    spec = {"path": str(path), "fields": names, "outputs": "single", "on_invalid": "skip", "output_index": output_index}
    settings = TraceSettings.from_spec(spec)
    return dataclasses.replace(settings, spelling="cli")


def _trace_id(location: str) -> str:
    return location.replace(" ", "-")


def read_score_traces(settings: TraceSettings) -> tuple[list[TraceInput], list[dict]]:
    """``(traces, rejected)`` of the file: the valid traces in file order, and one row per invalid record
    (``trace_id``, ``reason``, ``detail``: notebook 01's messages for that record, joined). Raises
    :class:`TraceFileError` when the file cannot be read or holds no valid trace."""
    try:
        records, unreadable = read_records(settings)
    except (OSError, ValueError) as error:  # an unsupported suffix, a broken .json, a missing folder
        raise TraceFileError(f"{settings.source}: {error}") from None
    if not records and not unreadable:
        raise TraceFileError(f"{settings.source} holds no traces")
    id_field = settings.fields["id"]
    if id_field == DEFAULT_FIELDS["id"] and not any(id_field in row for _, row in records):
        # no record has the default id field: the traces are named by their place in the file (a field
        # named with --id-field must be there)
        settings = dataclasses.replace(settings, fields={**settings.fields, "id": None})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the invalid records are returned and listed, not warned about
            imported = parse_traces(records, settings, unreadable)
    except TraceImportError as error:
        n_read = len(records) + len(unreadable)
        raise TraceFileError(
            problem_report(error.problems, settings, n_read) if error.problems else str(error)
        ) from None
    questions = imported.questions.set_index("id")
    outputs = imported.outputs
    per_question = outputs["question_id"].value_counts()
    traces = []
    for row in outputs.itertuples():
        if settings.fields["id"]:
            trace_id = row.question_id if per_question[row.question_id] == 1 else f"{row.question_id}-{row.sample}"
        else:
            trace_id = _trace_id(row.record)
        question = questions.loc[row.question_id]
        traces.append(TraceInput(trace_id, question["question"], row.text, question["answer"].strip()))
    return traces, _rejected(imported.problems)


def _rejected(problems: list[Problem]) -> list[dict]:
    """One row per invalid record: its id (or place), the first precise reason, every message."""
    by_record: dict[str, list[Problem]] = {}
    for problem in problems:
        by_record.setdefault(problem.record, []).append(problem)
    rows = []
    for record, found in by_record.items():
        trace_id = next((p.question_id for p in found if p.question_id), None) or _trace_id(record)
        reason = next((p.kind for p in found if p.kind), INVALID_RECORD)
        rows.append({"trace_id": trace_id, "reason": reason, "detail": "; ".join(str(p) for p in found)})
    return rows
