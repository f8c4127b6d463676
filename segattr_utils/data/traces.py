"""Traces one already has: R1-format outputs read from a file or a hub dataset (profile ``data.traces``),
validated record by record, so that stage 01 grades and keeps them instead of generating, and
``segattr score`` scores them (:mod:`segattr_utils.commands.trace_file`).

The profile section::

    data:
      traces:
        path: my_traces.jsonl        # .jsonl, .json, .parquet or a saved dataset folder (or hub_id)
        hub_id: null
        split: train
        fields: {question: problem, output: generation, answer: answer, id: null, solution: null}
        outputs: single              # single | first | all
        require_think_close: true
        on_invalid: error            # error | skip

Each record holds a question, its gold answer and one output (``outputs: single``), or a list of
outputs: ``first`` takes the list's first item, ``all`` takes every item as a sample of the question.
Several records may share a question (the same ``id``, or the same question text without an ``id``
field); their outputs are all samples of it. An output is split at its last ``</think>`` into the
reasoning that is segmented and the answer part kept with the trace
(:func:`segattr_utils.llm.grading.split_output` with ``last=True``). ``output_index: N`` (``segattr
score --output-index``) takes item N of an output list instead.

Validation collects every problem before failing (:class:`TraceImportError` lists up to
:data:`MAX_LISTED` of them with their count); each names the record (``line N`` of a JSONL file,
``row N`` of any other source, counting from 0, with the record's id where there is one) and the field.
Checked: a missing field, a list or another non-text value where one text is expected (never read as
its Python repr), an empty question or output, an output without ``</think>`` (unless
``require_think_close: false``), an empty reasoning before ``</think>``, a missing or empty gold answer,
two records of one question that disagree on its text or gold answer, and a reference solution holding
``</think>`` (a full output given as the solution). With ``on_invalid: skip`` the invalid outputs are
left out with a warning and listed in the ``rejected`` table instead.

Messages name the settings as the user writes them: ``data.traces.fields.output`` in a profile, the
command-line option (``--output-field``) for ``segattr score`` (:attr:`TraceSettings.spelling`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..llm.grading import THINK_CLOSE, split_output
from ..llm.models import ModelUnavailableError, offline
from .questions import answer_text

OUTPUT_MODES = ("single", "first", "all")
ON_INVALID = ("error", "skip")
#: Profile field names (``data.traces.fields``) and whether each must be named.
FIELDS = {"question": True, "output": True, "answer": True, "id": False, "solution": False}
#: How many problems an error message lists before "... and N more".
MAX_LISTED = 20
#: Columns of the rejected-output table (one row per problem).
REJECTED_COLUMNS = ["record", "question_id", "item", "field", "problem"]


class TraceImportError(ValueError):
    """Invalid imported traces; ``problems`` holds every problem found (see :class:`Problem`)."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = problems or []


@dataclass(frozen=True)
class Problem:
    """One invalid record or output: where (``record``, the output ``item`` of a list), which profile
    field (``question``, ``output``, ...; the file's column is named in ``message``) and what."""

    record: str
    field: str | None
    message: str
    item: int | None = None
    question_id: str | None = None
    #: a short tag of an output that is no finished R1 trace (``no </think>``, ``empty reasoning``)
    kind: str | None = None

    def __str__(self) -> str:
        where = self.record if self.question_id is None else f"{self.record} (id {self.question_id!r})"
        if self.item is not None:
            where += f", output {self.item}"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class TraceSettings:
    """The ``data.traces`` section, checked: where the records are, which columns hold what, and the
    policies for lists, a missing ``</think>`` and invalid records."""

    path: str | None
    hub_id: str | None
    split: str
    config: str | None
    fields: dict[str, str | None]
    outputs: str
    require_think_close: bool
    on_invalid: str
    output_index: int | None = None
    #: how messages name the settings: ``profile`` (``data.traces.fields.output``) or ``cli`` (``--output-field``)
    spelling: str = "profile"

    @classmethod
    def from_spec(cls, spec: dict) -> TraceSettings:
        if not isinstance(spec, dict):
            raise ValueError(f"data.traces must be a mapping (path, fields, ...), got {type(spec).__name__}")
        unknown = (
            set(spec)
            - {"path", "hub_id", "split", "config", "fields", "outputs"}
            - {"require_think_close", "on_invalid", "output_index"}
        )
        if unknown:
            raise ValueError(f"data.traces has unknown settings {sorted(unknown)}")
        if not spec.get("path") and not spec.get("hub_id"):
            raise ValueError("data.traces needs a path (a local file or saved dataset folder) or a hub_id")
        names = dict(spec.get("fields") or {})
        unknown_fields = set(names) - set(FIELDS)
        if unknown_fields:
            raise ValueError(f"data.traces.fields has unknown keys {sorted(unknown_fields)}; use {list(FIELDS)}")
        # A required field defaults to a column of its own name; optional ones are off unless named.
        fields = {key: names.get(key, key if required else None) for key, required in FIELDS.items()}
        outputs = spec.get("outputs", "single")
        if outputs not in OUTPUT_MODES:
            raise ValueError(f"data.traces.outputs must be one of {', '.join(OUTPUT_MODES)}, got {outputs!r}")
        output_index = spec.get("output_index")
        if output_index is not None and (
            not isinstance(output_index, int) or isinstance(output_index, bool) or output_index < 0
        ):
            raise ValueError(f"data.traces.output_index must be an integer of at least 0, got {output_index!r}")
        on_invalid = spec.get("on_invalid", "error")
        if on_invalid not in ON_INVALID:
            raise ValueError(f"data.traces.on_invalid must be one of {', '.join(ON_INVALID)}, got {on_invalid!r}")
        return cls(
            path=spec.get("path"),
            hub_id=spec.get("hub_id"),
            split=spec.get("split") or "train",
            config=spec.get("config"),
            fields=fields,
            outputs=outputs,
            require_think_close=bool(spec.get("require_think_close", True)),
            on_invalid=on_invalid,
            output_index=output_index,
        )

    def field_option(self, key: str) -> str:
        """How the user names the column of ``key``: ``data.traces.fields.output`` or ``--output-field``."""
        return f"--{key}-field" if self.spelling == "cli" else f"data.traces.fields.{key}"

    @property
    def source(self) -> str:
        return str(self.path) if self.path else f"{self.hub_id} ({self.split})"


@dataclass
class ImportedTraces:
    """What :func:`parse_traces` read: ``questions`` (id, suite, question, answer[, solution]), the valid
    ``outputs`` (question_id, sample, record, item, text, reasoning, answer_part), the ``rejected``
    outputs (:data:`REJECTED_COLUMNS`) and how many outputs the source held in all."""

    questions: pd.DataFrame
    outputs: pd.DataFrame
    rejected: pd.DataFrame
    n_outputs_read: int
    problems: list[Problem] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Reading records


def read_records(settings: TraceSettings) -> tuple[list[tuple[str, dict]], list[Problem]]:
    """``(location, record)`` pairs of the source, and the lines that are not JSON objects.

    JSONL records are located by line number (from 1, as an editor shows them); any other source's
    records by row (from 0, as pandas and ``datasets`` index them)."""
    if settings.path:
        path = Path(settings.path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"data.traces.path {str(path)!r} does not exist")
        if path.suffix == ".jsonl":
            return _read_jsonl(path)
        if path.is_dir():
            from datasets import load_from_disk

            dataset = load_from_disk(str(path))
            if hasattr(dataset, "keys"):  # a DatasetDict: the configured split, else its only one
                dataset = dataset[settings.split if settings.split in dataset else list(dataset.keys())[0]]
            rows = [dict(row) for row in dataset]
        elif path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            rows = data if isinstance(data, list) else data.get("data") if isinstance(data, dict) else None
            if not isinstance(rows, list):
                raise ValueError(f"{path}: a .json trace file holds a list of records (or {{'data': [...]}})")
        elif path.suffix == ".parquet":
            rows = pd.read_parquet(path).to_dict("records")
        else:
            raise ValueError(f"unsupported trace file {path} (use .jsonl, .json, .parquet or a saved dataset folder)")
    else:
        rows = _load_hub_rows(settings)
    records, problems = [], []
    for index, row in enumerate(rows):
        if isinstance(row, dict):
            records.append((f"row {index}", row))
        else:
            problems.append(Problem(f"row {index}", None, f"is a {type(row).__name__}, not a record (an object)"))
    return records, problems


def _read_jsonl(path: Path) -> tuple[list[tuple[str, dict]], list[Problem]]:
    records, problems = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            problems.append(Problem(f"line {number}", None, f"is not valid JSON ({error.msg})"))
            continue
        if isinstance(row, dict):
            records.append((f"line {number}", row))
        else:
            problems.append(Problem(f"line {number}", None, f"is a JSON {type(row).__name__}, not an object"))
    return records, problems


def _load_hub_rows(settings: TraceSettings) -> list[dict]:
    from datasets import load_dataset

    try:
        return [dict(r) for r in load_dataset(settings.hub_id, settings.config, split=settings.split)]
    except Exception as error:  # datasets raises several types when the hub is unreachable
        hint = " (HF_HUB_OFFLINE is set)" if offline() else ""
        raise ModelUnavailableError(
            f"trace dataset {settings.hub_id!r} could not be loaded{hint}: {type(error).__name__}: {error}\n"
            "Download it on a machine with network access and set data.traces.path to the file or folder."
        ) from error


# ---------------------------------------------------------------------------------------------
# Values of one record


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _is_list(value) -> bool:
    # parquet and datasets give list columns as numpy arrays
    return isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and getattr(value, "ndim", 0) > 0)


def _text(row: dict, key: str, column: str, option: str) -> tuple[str | None, str | None]:
    """``(text, None)`` of a field that must hold one non-empty string, else ``(None, problem)``;
    ``option`` names the setting that maps the field."""
    if column not in row:
        return None, f"missing field {column!r} ({option})"
    value = row[column]
    if _missing(value):
        return None, f"field {column!r} ({key}) is empty (null)"
    if _is_list(value):
        return None, f"field {column!r} ({key}) holds a list of {len(value)} items where one text is expected"
    if not isinstance(value, str):
        return None, f"field {column!r} ({key}) holds a {type(value).__name__} where a text is expected"
    if not value.strip():
        return None, f"field {column!r} ({key}) is empty"
    return value, None


def _gold(row: dict, column: str, option: str) -> tuple[str | None, str | None]:
    """The gold answer as text (:func:`answer_text`: the first item of a list, numbers as written)."""
    if column not in row:
        return None, f"missing field {column!r} ({option}): no gold answer"
    value = row[column]
    if _missing(value):
        return None, f"field {column!r} (answer) is empty (null): no gold answer"
    if isinstance(value, (dict, bool)):
        return None, f"field {column!r} (answer) holds a {type(value).__name__}, not a gold answer"
    try:
        text = answer_text(value)
    except ValueError:
        return None, f"field {column!r} (answer) is an empty list: no gold answer"
    if not text.strip():
        return None, f"field {column!r} (answer) is empty: no gold answer"
    return text, None


def _record_id(row: dict, column: str, option: str) -> tuple[str | None, str | None]:
    if column not in row:
        return None, f"missing field {column!r} ({option})"
    value = row[column]
    if _missing(value) or (isinstance(value, str) and not value.strip()):
        return None, f"field {column!r} (id) is empty"
    if _is_list(value) or isinstance(value, dict):
        return None, f"field {column!r} (id) holds a {type(value).__name__} where one id is expected"
    return str(value).strip(), None


def _outputs(row: dict, column: str, settings: TraceSettings) -> tuple[list[tuple[int | None, object]], str | None]:
    """The record's outputs as ``(item, value)`` (item: position in a list, None for a single output)."""
    mode, index = settings.outputs, settings.output_index
    if column not in row:
        return [], f"missing field {column!r} ({settings.field_option('output')})"
    value = row[column]
    if _missing(value):
        return [], f"field {column!r} (output) is empty (null)"
    if not _is_list(value):
        return [(None, value)], None
    items = list(value.tolist() if hasattr(value, "tolist") else value)
    if index is not None:
        if index >= len(items):
            return [], f"field {column!r} (output) has {len(items)} items, no item {index}"
        return [(index, items[index])], None
    if mode == "single":
        hint = (
            "choose one with --output-index"
            if settings.spelling == "cli"
            else "set data.traces.outputs: all (every item a sample of the question) or first (its first item)"
        )
        return [], f"field {column!r} (output) holds a list of {len(items)} items where one output is expected; {hint}"
    if not items:
        return [], f"field {column!r} (output) is an empty list"
    if mode == "first":
        return [(0, items[0])], None
    return list(enumerate(items)), None


def _output_problem(
    value, column: str, settings: TraceSettings
) -> tuple[tuple[str, str] | None, str | None, str | None]:
    """``(split, None, None)`` of a valid output (reasoning and answer part, split at the last ``</think>``
    by :func:`split_output`), else ``(None, problem, kind)``."""
    if _missing(value):
        return None, f"field {column!r} (output) is empty (null)", None
    if _is_list(value):
        return None, f"field {column!r} (output) holds a nested list where an output (a text) is expected", None
    if not isinstance(value, str):
        kind = type(value).__name__
        return None, f"field {column!r} (output) holds a {kind} where an output (a text) is expected", None
    if not value.strip():
        return None, f"field {column!r} (output) is empty", None
    if settings.require_think_close and THINK_CLOSE not in value:
        hint = (
            ""
            if settings.spelling == "cli"
            else " (data.traces.require_think_close: false takes the whole output as reasoning)"
        )
        message = f"field {column!r} (output) has no </think>: an R1 output closes its thinking before the answer"
        return None, message + hint, "no </think>"
    _, reasoning, answer_part = split_output(value, last=True, require_close=settings.require_think_close)
    if not reasoning.strip():
        message = f"field {column!r} (output) has an empty reasoning" + (" before </think>" if answer_part else "")
        return None, message, "empty reasoning"
    return (reasoning, answer_part), None, None


# ---------------------------------------------------------------------------------------------
# Parsing and validation


def parse_traces(
    records: list[tuple[str, dict]], settings: TraceSettings, problems: list[Problem] | None = None
) -> ImportedTraces:
    """Validate ``records`` (from :func:`read_records`) and gather their questions and outputs.

    Every problem is collected first. With ``on_invalid: error`` any problem raises one
    :class:`TraceImportError` listing them; with ``skip`` the affected outputs (all of a record whose
    question, id or gold answer is invalid) are left out with a warning and listed in ``rejected``.
    """
    problems = list(problems or [])
    fields = settings.fields
    questions: dict[str, dict] = {}  # question key -> question record (first valid record wins)
    first_seen: dict[str, str] = {}  # question key -> its first record's location
    outputs: list[dict] = []
    n_outputs = sum(1 for p in problems if p.field is None)  # unreadable lines: one output each
    for location, row in records:
        record_problems: list[Problem] = []
        qid = None
        if fields["id"]:
            qid, message = _record_id(row, fields["id"], settings.field_option("id"))
            if message:
                record_problems.append(Problem(location, "id", message))

        def problem(name: str, message: str, item: int | None = None, where=location, qid=qid) -> Problem:
            return Problem(where, name, message, item=item, question_id=qid)

        question, message = _text(row, "question", fields["question"], settings.field_option("question"))
        if message:
            record_problems.append(problem("question", message))
        gold, message = _gold(row, fields["answer"], settings.field_option("answer"))
        if message:
            record_problems.append(problem("answer", message))
        solution = None
        if fields["solution"]:
            solution, message = _text(row, "solution", fields["solution"], settings.field_option("solution"))
            if message:
                record_problems.append(problem("solution", message))
            elif THINK_CLOSE in solution:
                record_problems.append(
                    problem(
                        "solution",
                        f"field {fields['solution']!r} (solution) holds </think>: a reference solution is the "
                        "reasoning alone, not a full output",
                    )
                )
        items, message = _outputs(row, fields["output"], settings)
        n_outputs += max(len(items), 1)
        if message:
            record_problems.append(problem("output", message))

        key = qid if fields["id"] else question
        if key is not None and question is not None and gold is not None and not record_problems:
            if key in questions:
                known = questions[key]
                if known["question"] != question:
                    record_problems.append(
                        problem(
                            "question",
                            f"field {fields['question']!r} (question) differs from the text given for the same id "
                            f"at {first_seen[key]}",
                        )
                    )
                if known["answer"] != gold:
                    record_problems.append(
                        problem(
                            "answer",
                            f"gold answer {gold!r} differs from {known['answer']!r} given for the same question "
                            f"at {first_seen[key]}",
                        )
                    )
            else:
                questions[key] = {"question": question, "answer": gold}
                if solution is not None:
                    questions[key]["solution"] = solution
                first_seen[key] = location
        if record_problems:
            problems.extend(record_problems)
            continue
        for item, value in items:
            split, message, kind = _output_problem(value, fields["output"], settings)
            if message:
                problems.append(dataclasses.replace(problem("output", message, item), kind=kind))
                continue
            outputs.append(
                {
                    "key": key,
                    "record": location,
                    "item": item,
                    "text": value,
                    "reasoning": split[0],
                    "answer_part": split[1],
                }
            )

    # in file order (the unreadable lines were found first): "line 8" / "row 8" sorts by its number
    problems.sort(key=lambda p: int(p.record.split()[-1]))
    if problems and settings.on_invalid == "error":
        raise TraceImportError(problem_report(problems, settings, n_outputs), problems)
    ids = _question_ids(questions, bool(fields["id"]))
    with_outputs = {output["key"] for output in outputs}  # a question whose every output was skipped is left out
    question_table = pd.DataFrame(
        [{"id": ids[key], "suite": "train", **values} for key, values in questions.items() if key in with_outputs],
        columns=["id", "suite", "question", "answer"] + (["solution"] if fields["solution"] else []),
    )
    output_table = _number_samples(outputs, ids)
    rejected = rejected_table(problems)
    if problems:
        warnings.warn(
            f"data.traces: skipped {n_outputs - len(output_table)} of {n_outputs} outputs of {settings.source} "
            f"(on_invalid: skip; {len(problems)} problem(s), listed in stage 01's rejected table):\n"
            + _listing(problems),
            stacklevel=2,
        )
    if output_table.empty:
        raise TraceImportError(f"data.traces: {settings.source} holds no valid output", problems)
    return ImportedTraces(question_table, output_table, rejected, n_outputs, problems)


def _question_ids(questions: dict[str, dict], from_field: bool) -> dict[str, str]:
    """The file's ids where it has an id field, else ``train-00000``, ... in order of first appearance."""
    if from_field:
        return {key: key for key in questions}
    return {key: f"train-{index:05d}" for index, key in enumerate(questions)}


def _number_samples(outputs: list[dict], ids: dict[str, str]) -> pd.DataFrame:
    """The valid outputs with their question id and a sample index per question, in file order."""
    counts: dict[str, int] = {}
    rows = []
    for output in outputs:
        qid = ids[output.pop("key")]
        rows.append({"question_id": qid, "sample": counts.get(qid, 0), **output})
        counts[qid] = counts.get(qid, 0) + 1
    columns = ["question_id", "sample", "record", "item", "text", "reasoning", "answer_part"]
    table = pd.DataFrame(rows, columns=columns)
    table["item"] = table["item"].astype("Int64")
    return table


def rejected_table(problems: list[Problem]) -> pd.DataFrame:
    """One row per problem (:data:`REJECTED_COLUMNS`)."""
    table = pd.DataFrame(
        [
            {"record": p.record, "question_id": p.question_id, "item": p.item, "field": p.field, "problem": p.message}
            for p in problems
        ],
        columns=REJECTED_COLUMNS,
    )
    table["item"] = table["item"].astype("Int64")
    return table


def _listing(problems: list[Problem]) -> str:
    lines = [f"  - {p}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
    return "\n".join(lines)


def problem_report(problems: list[Problem], settings: TraceSettings, n_outputs: int) -> str:
    """The error message: the count, up to :data:`MAX_LISTED` problems, and what to do."""
    return (
        f"data.traces: {len(problems)} problem(s) in {settings.source} ({n_outputs} outputs read):\n"
        + _listing(problems)
        + "\nFix the records, map the fields with data.traces.fields, or set data.traces.on_invalid: skip "
        "to leave the invalid ones out (they are then listed in stage 01's rejected table)."
    )


def load_traces(spec: dict) -> ImportedTraces:
    """Read and validate the traces of a ``data.traces`` section (:func:`read_records`, :func:`parse_traces`)."""
    settings = TraceSettings.from_spec(spec)
    records, problems = read_records(settings)
    return parse_traces(records, settings, problems)
