"""The folder ``segattr score`` writes, and how ``segattr export`` and ``segattr view`` read it back.

- ``segments.parquet``: one row per segment of every scored trace: ``trace_id``, ``segment``, ``text``,
  ``n_tokens``, ``strength``, ``consistency`` (Eq. 3), ``norm_strength`` (Eq. 4), ``high_strength``
  (Eq. 5-6), ``moderate_consistency``, ``important`` (Eq. 7), ``always_kept`` (App. C.4), ``selected``
  (trained by selective SFT, Eq. 9), and the segment's ``token_ids`` and ``token_attributions`` (Eq. 2);
- ``segments.csv``: the same without the two token lists;
- ``traces.parquet``: one row per scored trace: question, gold and predicted answer, ``correct``, the
  prompt and the trace's own answer part, ``n_segments``, ``n_tokens`` (the attributed sequence),
  completeness (``f_input``, ``f_baseline``, ``delta``, ``relative_delta``, ``flagged`` above the
  threshold) and how IG ran (:data:`RUN_COLUMNS`: ``n_steps``, ``internal_batch_size`` path points per
  pass, ``activation_checkpointing``, ``out_of_memory_retries``);
- ``skipped.csv``: ``trace_id``, ``reason`` (``over-length``, ``out_of_memory``, ``no </think>``, ``empty
  reasoning``, ``no boxed answer``, ``invalid record``, ...) and ``detail``;
- ``settings.json``: the model and every setting of the run;
- ``records.jsonl``: the resumable record store (one record per trace and settings fingerprint);
- ``run_log.csv``: how long each trace's IG took (``what``, ``seconds``; appended by every run). Timings
  are kept out of the tables and records, so a rerun of equal data writes equal bytes.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..artifacts import read_json, write_json, write_table
from ..scored_trace import ScoredTrace

SEGMENTS, SEGMENTS_CSV, TRACES, SKIPPED, SETTINGS, RECORDS, RUN_LOG = (
    "segments.parquet",
    "segments.csv",
    "traces.parquet",
    "skipped.csv",
    "settings.json",
    "records.jsonl",
    "run_log.csv",
)
TOKEN_COLUMNS = ("token_ids", "token_attributions")
SKIPPED_COLUMNS = ("trace_id", "reason", "detail")
SELECTION_KEYS = ("tau", "beta", "aggregation", "always_keep")
#: How each trace's IG ran (its ScoredTrace's settings): traces.parquet's last columns.
RUN_COLUMNS = ("n_steps", "internal_batch_size", "activation_checkpointing", "out_of_memory_retries")


def segment_rows(trace_id: str, scored: ScoredTrace) -> pd.DataFrame:
    table = scored.scores.copy()
    table.insert(0, "trace_id", trace_id)
    table["token_ids"] = [list(t) for t in scored.token_ids]
    table["token_attributions"] = [list(v) for v in scored.token_attributions]
    return table


def trace_row(trace_id: str, scored: ScoredTrace, threshold: float) -> dict:
    return {
        "trace_id": trace_id,
        "question": scored.question,
        "gold_answer": scored.gold_answer,
        "predicted": scored.predicted,
        "correct": scored.correct,
        "prompt": scored.prompt,
        "answer_part": scored.answer_part,
        "n_segments": scored.n_segments,
        "n_selected": len(scored.selected),
        "n_tokens": scored.n_tokens,
        "f_input": scored.f_input,
        "f_baseline": scored.f_baseline,
        "delta": scored.delta,
        "relative_delta": scored.relative_delta,
        "flagged": scored.relative_delta > threshold,
        **{column: scored.settings.get(column) for column in RUN_COLUMNS},
    }


def write_scores(folder: Path, scored: dict[str, ScoredTrace], skipped: list[dict], settings: dict) -> None:
    """Write the tables of the module docstring for ``scored`` (trace id -> scored trace, file order)."""
    segments = (
        pd.concat([segment_rows(tid, s) for tid, s in scored.items()], ignore_index=True)
        if scored
        else pd.DataFrame(columns=["trace_id", "segment", "text", *TOKEN_COLUMNS])
    )
    threshold = settings["flag_relative_delta"]
    traces = pd.DataFrame([trace_row(tid, s, threshold) for tid, s in scored.items()])
    write_table(folder / SEGMENTS, segments)
    write_table(folder / SEGMENTS_CSV, segments.drop(columns=list(TOKEN_COLUMNS)))
    write_table(folder / TRACES, traces)
    write_table(folder / SKIPPED, pd.DataFrame(skipped, columns=list(SKIPPED_COLUMNS)))
    write_json(folder / SETTINGS, settings)


def read_settings(folder: str | Path) -> dict:
    path = Path(folder) / SETTINGS
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no {SETTINGS}: is it a folder written by `segattr score`?")
    return read_json(path)


def _run_settings(row: dict) -> dict:
    """The per-trace IG settings of a traces.parquet row (:data:`RUN_COLUMNS`; absent in older folders)."""
    types = {"n_steps": int, "internal_batch_size": int, "activation_checkpointing": bool, "out_of_memory_retries": int}
    return {c: types[c](row[c]) for c in RUN_COLUMNS if c in row and pd.notna(row[c])}


def load_scored(folder: str | Path) -> dict[str, ScoredTrace]:
    """The scored traces of a ``segattr score`` folder (trace id -> :class:`ScoredTrace`, in file order),
    rebuilt from ``traces.parquet`` and ``segments.parquet`` with the run's selection settings."""
    folder = Path(folder)
    settings = read_settings(folder)
    traces = pd.read_parquet(folder / TRACES) if (folder / TRACES).is_file() else pd.DataFrame()
    segments = pd.read_parquet(folder / SEGMENTS)
    by_trace = {tid: group.sort_values("segment") for tid, group in segments.groupby("trace_id", sort=False)}
    scoring = {k: settings[k] for k in ("n_steps", "method", "keywords", *SELECTION_KEYS) if k in settings}
    out = {}
    for row in traces.to_dict("records"):
        group = by_trace[row["trace_id"]]
        out[row["trace_id"]] = ScoredTrace(
            question=row["question"],
            gold_answer=row["gold_answer"],
            prompt=row["prompt"],
            segments=tuple(group["text"]),
            answer_part=row["answer_part"],
            predicted=row["predicted"],
            correct=bool(row["correct"]),
            token_ids=tuple(tuple(int(t) for t in ids) for ids in group["token_ids"]),
            token_attributions=tuple(tuple(float(v) for v in vs) for vs in group["token_attributions"]),
            f_input=float(row["f_input"]),
            f_baseline=float(row["f_baseline"]),
            delta=float(row["delta"]),
            n_tokens=int(row["n_tokens"]),
            settings={**scoring, **_run_settings(row)},
        )
        # the table is what the user sees; a selection that no longer follows from it (an edited table, a
        # settings file from another run) must not be exported silently
        if out[row["trace_id"]].selected != [int(i) for i in group.loc[group["selected"], "segment"]]:
            raise ValueError(
                f"{folder}: the selected segments of trace {row['trace_id']!r} in {SEGMENTS} do not follow from "
                f"{SETTINGS}; rerun `segattr score`"
            )
    return out
