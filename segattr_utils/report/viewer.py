"""A segment viewer (Fig. 1 left): a trace with its important segments in green and the unimportant
ones in gray, each annotated with its normalised attribution strength (Eq. 4) and direction
consistency (Eq. 3).

The HTML rendering is a standalone file (no external resources; text escaped, newlines kept and shown
as ``↵``); the PNG/PDF rendering of the same view is :func:`segattr_utils.report.figures.fig1_left_segment_viewer`.
Both take a per-segment table as built by :func:`trace_view` from the stage 02/03 artifacts.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from ..artifacts import atomic_write_text

IMPORTANT_COLOR = "#b7e4c7"
UNIMPORTANT_COLOR = "#d9d9d9"
NEWLINE_MARK = "↵"
VIEW_COLUMNS = ("segment", "text", "important", "norm_strength", "consistency")


def trace_view(
    scores: pd.DataFrame, segments: pd.DataFrame, trace_id: str, important: str = "important"
) -> pd.DataFrame:
    """One trace's segments with ``text``, ``important`` (the column named by ``important``),
    ``norm_strength``, ``consistency`` and, where known, ``kind``; in segment order."""
    trace_scores = scores[scores["trace_id"] == trace_id]
    if trace_scores.empty:
        raise KeyError(f"trace {trace_id!r} has no segment scores")
    texts = segments[segments["trace_id"] == trace_id][["segment", "text"]]
    view = trace_scores.merge(texts, on="segment", how="left", validate="one_to_one").sort_values("segment")
    if view["text"].isna().any():
        raise ValueError(f"trace {trace_id!r}: some scored segments have no text in the segments table")
    columns = ["segment", "text", important, "norm_strength", "consistency"] + (["kind"] if "kind" in view else [])
    return view[columns].rename(columns={important: "important"}).reset_index(drop=True)


def _validate(view: pd.DataFrame) -> None:
    missing = [c for c in VIEW_COLUMNS if c not in view.columns]
    if missing:
        raise ValueError(f"the trace view lacks {missing}")
    if view.empty:
        raise ValueError("the trace has no segments to render")


def _annotation(row) -> str:
    label = "important" if row["important"] else "unimportant"
    kind = f" · {row['kind']}" if "kind" in row and isinstance(row["kind"], str) else ""
    return (
        f"S{int(row['segment']) + 1} · {label} · strength {row['norm_strength']:.3f} · "
        f"consistency {row['consistency']:.3f}{kind}"
    )


def _html_text(text: str) -> str:
    """Escaped text with every newline shown as ↵ and kept as a line break (``white-space: pre-wrap``)."""
    return html.escape(text, quote=True).replace("\n", f'<span class="nl">{NEWLINE_MARK}</span>\n')


def render_html(view: pd.DataFrame, title: str = "") -> str:
    """A standalone HTML page of the trace (one ``<div class="segment">`` per segment, in order)."""
    _validate(view)
    blocks = []
    for _, row in view.iterrows():
        state = "important" if row["important"] else "unimportant"
        blocks.append(
            f'<div class="segment {state}" id="segment-{int(row["segment"])}" data-segment="{int(row["segment"])}">'
            f'<div class="meta">{html.escape(_annotation(row))}</div>'
            f'<div class="text">{_html_text(str(row["text"]))}</div></div>'
        )
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:1em auto;}"
        ".segment{border-radius:6px;padding:6px 10px;margin:6px 0;}"
        f".important{{background:{IMPORTANT_COLOR};}}.unimportant{{background:{UNIMPORTANT_COLOR};}}"
        ".meta{font-size:0.8em;color:#333;margin-bottom:4px;}"
        ".text{white-space:pre-wrap;font-family:monospace;}.nl{color:#999;}"
        ".legend span{padding:2px 8px;margin-right:8px;border-radius:4px;}"
    )
    legend = (
        '<div class="legend"><span class="important">important</span>'
        '<span class="unimportant">unimportant</span> strength = normalised attribution strength (Eq. 4), '
        "consistency = attribution direction consistency (Eq. 3)</div>"
    )
    escaped_title = html.escape(title)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escaped_title}</title><style>{style}</style></head><body>"
        f'<h1>{escaped_title}</h1>{legend}<div class="trace">\n' + "\n".join(blocks) + "\n</div></body></html>\n"
    )


def write_html(path: str | Path, view: pd.DataFrame, title: str = "") -> Path:
    """Write :func:`render_html` atomically to ``path``."""
    return atomic_write_text(path, render_html(view, title))
