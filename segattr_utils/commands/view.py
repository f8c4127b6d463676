"""segattr view: the scored traces of a `segattr score` folder as standalone HTML pages (segments coloured
by what selective SFT does with them, with their strength and consistency, under the question, the gold
answer and the trace's own answer).

Without --trace, --out is a folder: index.html lists every scored trace (segments, tokens, completeness
error, share of tokens trained, correct; click a column header to sort) and the skipped traces with
their reasons, and links each scored trace to its page traces/<id>.html. With --trace, --out is the one
trace's HTML file. Nothing is fetched from a network; the folder is written whole or not at all.

Example:
    segattr view --scores scores/ --out scores_view/
    segattr view --scores scores/ --trace q17 --out q17.html
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from ..progress import progress
from . import scores_dir

INDEX, PAGES = "index.html", "traces"
SEGMENT_COLUMNS = (
    "trace_id",
    "segment",
    "text",
    "n_tokens",
    "norm_strength",
    "consistency",
    "important",
    "always_kept",
    "selected",
)
TRACE_COLUMNS = ("trace_id", "question", "gold_answer", "answer_part", "correct", "relative_delta", "flagged")
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


class UsageError(Exception):
    """A mistake in the arguments or the folder, reported as one line (exit status 2)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scores", required=True, help="a folder written by `segattr score`")
    parser.add_argument(
        "--trace",
        default=None,
        help="one trace's page only (--out is then the HTML file); default: every scored trace",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="the folder to write (index.html, traces/); with --trace, the HTML file to write",
    )


# ---------------------------------------------------------------------------------------------
# Reading the score folder


@dataclass
class ScoreTables:
    segments: pd.DataFrame  # SEGMENT_COLUMNS (and ``kind`` where present), without the token lists
    traces: pd.DataFrame  # one row per scored trace, file order
    skipped: pd.DataFrame | None  # SKIPPED_COLUMNS; None when not read
    settings: dict


def _parquet(folder: Path, name: str, required: tuple[str, ...]) -> pd.DataFrame:
    path = folder / name
    if not path.is_file():
        raise UsageError(f"{folder} holds no {name}: run `segattr score` first")
    metadata = pq.read_metadata(path)
    names = metadata.schema.names
    if metadata.num_rows == 0:  # an empty run writes tables without the score columns
        return pd.DataFrame({c: pd.Series(dtype=object) for c in required})
    missing = [c for c in required if c not in names]
    if missing:
        raise UsageError(f"{path} lacks the columns {missing}: rerun `segattr score`")
    extra = [c for c in ("kind",) if c in names and c not in required]
    frame = pd.read_parquet(path, columns=[*required, *extra])
    frame["trace_id"] = frame["trace_id"].astype(str)
    return frame


def read_tables(folder: Path, *, skipped: bool) -> ScoreTables:
    """The tables of a ``segattr score`` folder the viewer needs (:mod:`.scores_dir`), checked to agree."""
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder: run `segattr score` first")
    segments = _parquet(folder, scores_dir.SEGMENTS, SEGMENT_COLUMNS)
    traces = _parquet(folder, scores_dir.TRACES, TRACE_COLUMNS)
    duplicated = traces["trace_id"][traces["trace_id"].duplicated()].unique().tolist()
    if duplicated:
        raise UsageError(
            f"{folder / scores_dir.TRACES} lists the traces {_shown(duplicated)} twice: rerun `segattr score`"
        )
    scored, segmented = list(traces["trace_id"]), set(segments["trace_id"])
    only_traces = [t for t in scored if t not in segmented]
    only_segments = sorted(segmented - set(scored))
    if only_traces or only_segments:
        raise UsageError(
            f"{scores_dir.TRACES} and {scores_dir.SEGMENTS} of {folder} disagree (traces without segments: "
            f"{_shown(only_traces) or 'none'}; segments of unlisted traces: {_shown(only_segments) or 'none'}): "
            "rerun `segattr score`"
        )
    table = None
    if skipped:
        path = folder / scores_dir.SKIPPED
        if not path.is_file():
            raise UsageError(f"{folder} holds no {scores_dir.SKIPPED}: run `segattr score` first")
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = [c for c in scores_dir.SKIPPED_COLUMNS if c not in table.columns]
        if missing:
            raise UsageError(f"{path} lacks the columns {missing}: rerun `segattr score`")
    settings = scores_dir.read_settings(folder) if (folder / scores_dir.SETTINGS).is_file() else {}
    return ScoreTables(segments, traces, table, settings)


def _shown(ids: list[str], limit: int = 10) -> str:
    return ", ".join(ids[:limit]) + (" ..." if len(ids) > limit else "")


# ---------------------------------------------------------------------------------------------
# Pages


def safe_names(trace_ids: list[str]) -> dict[str, str]:
    """A file name stem per trace id, unique (also on case-insensitive file systems) and safe: letters,
    digits, ``._-``, not starting with a dot, at most 80 characters. An id that is already such a name
    keeps it; any other gets its cleaned form and a digest of the id (``../x`` -> ``x-<digest>``)."""
    names, used = {}, set()
    for trace_id in trace_ids:
        name = trace_id
        if not _SAFE.fullmatch(name) or name.split(".")[0].lower() in _RESERVED:
            cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", trace_id).lstrip("._-")[:60] or "trace"
            name = f"{cleaned}-{hashlib.sha256(trace_id.encode()).hexdigest()[:10]}"
        stem, counter = name, 1
        while name.lower() in used:
            counter += 1
            name = f"{stem}-{counter}"
        used.add(name.lower())
        names[trace_id] = name
    return names


def _groups(segments: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {tid: group for tid, group in segments.groupby("trace_id", sort=False)}


def write_trace_page(path: Path, trace: dict, segments: pd.DataFrame, index_href: str | None = None) -> Path:
    """One trace's page: its segments (``segments``: its rows of ``segments.parquet``) under the question,
    the gold answer and the trace's own answer from its row of ``traces.parquet`` (``trace``)."""
    from ..report import viewer

    trace_id = trace["trace_id"]
    view = viewer.trace_view(segments, None, trace_id)
    return viewer.write_html(
        path,
        view,
        title=f"trace {trace_id}",
        question=trace["question"],
        gold_answer=str(trace["gold_answer"]),
        trace_answer=trace["answer_part"],
        correct=bool(trace["correct"]),
        index_href=index_href,
    )


def index_rows(
    tables: ScoreTables, names: dict[str, str], groups: dict[str, pd.DataFrame] | None = None
) -> pd.DataFrame:
    """The index's table (:func:`segattr_utils.report.viewer.render_index`): per scored trace, its
    segments, the tokens of its segments, the completeness error and the share of those tokens in the
    selected segments (the ones selective SFT trains, Eq. 9). ``groups``: the segments by trace, where
    already at hand."""
    groups = _groups(tables.segments) if groups is None else groups
    rows = []
    for trace in tables.traces.to_dict("records"):
        group = groups[trace["trace_id"]]
        tokens = int(group["n_tokens"].sum())
        trained = int(group.loc[group["selected"].astype(bool), "n_tokens"].sum())
        rows.append(
            {
                "trace_id": trace["trace_id"],
                "href": f"{PAGES}/{names[trace['trace_id']]}.html",
                "n_segments": len(group),
                "n_tokens": tokens,
                "relative_delta": float(trace["relative_delta"]),
                "flagged": bool(trace["flagged"]),
                "trained_share": trained / tokens if tokens else 0.0,
                "correct": bool(trace["correct"]),
            }
        )
    return pd.DataFrame(
        rows,
        columns=["trace_id", "href", "n_segments", "n_tokens", "relative_delta", "flagged", "trained_share", "correct"],
    )


def write_corpus(tables: ScoreTables, folder: Path, title: str) -> int:
    """``index.html`` and ``traces/<id>.html`` of every scored trace into ``folder`` (an empty folder);
    returns the number of trace pages."""
    from ..artifacts import atomic_write_text
    from ..report import viewer

    names = safe_names(list(tables.traces["trace_id"]))
    groups = _groups(tables.segments)
    (folder / PAGES).mkdir()
    traces = tables.traces.to_dict("records")
    for trace in progress(traces, desc="trace pages", unit="page"):
        path = folder / PAGES / f"{names[trace['trace_id']]}.html"
        write_trace_page(path, trace, groups[trace["trace_id"]], index_href=f"../{INDEX}")
    document = viewer.render_index(
        index_rows(tables, names, groups),
        tables.skipped,
        title,
        flag_threshold=tables.settings.get("flag_relative_delta"),
    )
    atomic_write_text(folder / INDEX, document)
    return len(traces)


def replace_folder(out: Path, fill) -> None:
    """Call ``fill(folder)`` on a new folder beside ``out``, then put that folder in ``out``'s place (an
    existing ``out`` is replaced only after everything was written); on any error the new folder is
    removed and ``out`` is left as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    new, old = out.with_name(f".{out.name}.new-{tag}"), out.with_name(f".{out.name}.old-{tag}")
    new.mkdir()
    try:
        fill(new)
        if out.exists():
            os.replace(out, old)
            try:
                os.replace(new, out)
            except BaseException:
                os.replace(old, out)
                raise
            shutil.rmtree(old)
        else:
            os.replace(new, out)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------
# The command


def _is_view_folder(folder: Path) -> bool:
    from ..report import viewer

    index = folder / INDEX
    if not index.is_file():
        return False
    with index.open(encoding="utf-8", errors="replace") as handle:
        return viewer.INDEX_GENERATOR in handle.read(4096)


def check_out(args: argparse.Namespace) -> Path:
    """``--out``, checked against the mode before anything is read."""
    out, scores = Path(args.out), Path(args.scores)
    if args.trace is not None:
        if out.is_dir():
            raise UsageError(f"--out {out} is a folder; with --trace, --out is the HTML file to write")
        return out
    if out.exists() and not out.is_dir():
        raise UsageError(
            f"--out {out} is an existing file; without --trace, --out is the folder to write ({INDEX}, {PAGES}/)"
        )
    if out.is_dir() and any(out.iterdir()) and not _is_view_folder(out):
        raise UsageError(
            f"--out {out} is a folder that `segattr view` did not write (it is replaced as a whole): "
            "choose a new or empty folder"
        )
    resolved = out.resolve()
    if scores.resolve() == resolved or resolved in scores.resolve().parents:
        raise UsageError(f"--out {out} would replace the score folder {scores}: choose another folder")
    return out


def run(args: argparse.Namespace) -> int:
    try:
        out = check_out(args)
        tables = read_tables(Path(args.scores), skipped=args.trace is None)
    except UsageError as error:
        print(f"segattr view: {error}", file=sys.stderr)
        return 2
    if args.trace is not None:
        return _run_trace(args, tables, out)
    count = len(tables.traces)
    title = f"{Path(args.scores).resolve().name}: scored traces"
    replace_folder(out, lambda folder: write_corpus(tables, folder, title))
    skipped = len(tables.skipped)
    print(f"{count} trace pages and the index of {count} scored and {skipped} skipped traces -> {out / INDEX}")
    return 0


def _run_trace(args: argparse.Namespace, tables: ScoreTables, out: Path) -> int:
    ids = list(tables.traces["trace_id"])
    if not ids:
        print(f"segattr view: {args.scores} holds no scored trace", file=sys.stderr)
        return 1
    if args.trace not in ids:
        print(f"segattr view: no scored trace {args.trace!r} in {args.scores} (scored: {_shown(ids)})", file=sys.stderr)
        return 2
    trace = tables.traces[tables.traces["trace_id"] == args.trace].iloc[0].to_dict()
    segments = tables.segments[tables.segments["trace_id"] == args.trace]
    written = write_trace_page(out, trace, segments)
    print(f"trace {args.trace} -> {written}")
    return 0
