"""segattr view: one scored trace as a standalone HTML page (segments coloured by importance, with
their strength and consistency).

Reads a `segattr score` folder; --trace picks the trace (default: the first scored one).

Example:
    segattr view --scores scores/ --trace q17 --out q17.html
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from . import scores_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scores", required=True, help="a folder written by `segattr score`")
    parser.add_argument("--trace", default=None, help="the trace id (default: the first scored trace)")
    parser.add_argument("--out", required=True, help="the HTML file to write")


def render(segments: pd.DataFrame, trace_id: str, out: Path) -> Path:
    """The viewer's page of ``trace_id``: the one place that calls :mod:`segattr_utils.report.viewer`."""
    from ..report import viewer

    scores = segments.drop(columns=["text", *scores_dir.TOKEN_COLUMNS])
    view = viewer.trace_view(scores, segments[["trace_id", "segment", "text"]], trace_id)
    return viewer.write_html(out, view, title=f"trace {trace_id}")


def run(args: argparse.Namespace) -> int:
    path = Path(args.scores) / scores_dir.SEGMENTS
    if not path.is_file():
        print(f"segattr view: {args.scores} holds no {scores_dir.SEGMENTS}: run `segattr score` first", file=sys.stderr)
        return 2
    segments = pd.read_parquet(path)
    ids = list(dict.fromkeys(segments["trace_id"]))
    if not ids:
        print(f"segattr view: {args.scores} holds no scored trace", file=sys.stderr)
        return 1
    trace_id = args.trace if args.trace is not None else ids[0]
    if trace_id not in ids:
        shown = ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else "")
        print(f"segattr view: no scored trace {trace_id!r} in {args.scores} (scored: {shown})", file=sys.stderr)
        return 2
    written = render(segments, trace_id, Path(args.out))
    print(f"trace {trace_id} -> {written}")
    return 0
