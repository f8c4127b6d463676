"""The segment viewer (Fig. 1 left): one trace, its segments coloured by what selective SFT does with
them, in a standalone HTML file.

Three classes (:func:`segment_classes`): **important** segments (Eq. 7, trained), **always kept**
segments (the first and last, App. C.4; trained although Eq. 7 may not select them) and **masked**
segments (label -100). Each segment shows its normalised attribution strength (Eq. 4) and direction
consistency (Eq. 3).

The page is one file with inline CSS and a few lines of inline JS, nothing fetched from a network, and
is built for real traces of hundreds of segments:

- the question, the gold answer and the trace's own answer on top, then a summary line (segments,
  important, always kept, masked, share of trace tokens trained);
- a strength strip, one thin bar per segment (height = normalised strength), each a link to its segment;
- runs of consecutive masked segments collapsed into one ``<details>`` line ("12 masked segments,
  1,834 tokens"), expandable without JS;
- with token attributions (:func:`token_pieces`), a checkbox that colours every token by its signed
  attribution on a diverging palette (a CSS-only toggle).

All text is HTML-escaped; newlines are kept and shown as ``↵``. The entry point for other code (the
``segattr view`` command, stage 06) is :func:`write_html` on a table built by :func:`trace_view`.

:func:`render_index` is the page over many traces (``segattr view`` without ``--trace``): one row per
scored trace (segments, tokens, completeness error, share of tokens trained, correct), each a link to
its trace's page, sortable by a click on a column header (a few lines of inline JS; the order is kept
in the URL as ``#sort=<column>-<asc|desc>``), and the skipped traces with their reasons.
The PNG/PDF rendering for notebooks is :func:`segattr_utils.report.figures.fig1_left_segment_viewer`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..artifacts import atomic_write_text
from ..method.importance import always_keep_indices

IMPORTANT_COLOR = "#b7e4c7"  # green: Eq. 7 selects it, trained
KEPT_COLOR = "#bcd7f5"  # blue: always kept (App. C.4), trained
MASKED_COLOR = "#e3e3e3"  # gray: masked out of the loss
CLASSES = ("important", "kept", "masked")
CLASS_COLORS = {"important": IMPORTANT_COLOR, "kept": KEPT_COLOR, "masked": MASKED_COLOR}
# The strength strip: darker than the blocks' pastels, so that bars one pixel wide stay visible.
STRIP_COLORS = {"important": "#2d9a5a", "kept": "#3a78c2", "masked": "#b0b0b0"}
CLASS_LABELS = {"important": "important (trained)", "kept": "always kept (trained)", "masked": "masked"}
NEWLINE_MARK = "↵"
VIEW_COLUMNS = ("segment", "text", "important", "norm_strength", "consistency")
#: Token colours: bins of signed attribution / scale, negative (red) to positive (blue).
TOKEN_BINS = 5
_NEGATIVE = ("#fde0d2", "#fbb7a0", "#f4846a", "#e34a3a", "#b2182b")
_POSITIVE = ("#dbeaf5", "#b4d4ea", "#7fb3d8", "#4a89c2", "#2166ac")

TokenPieces = Sequence[Sequence[tuple[str, float | None]]]


# ---------------------------------------------------------------------------------------------
# The per-segment table


def trace_view(
    scores: pd.DataFrame,
    segments: pd.DataFrame | None,
    trace_id: str,
    important: str = "important",
    always_keep: str | None = None,
) -> pd.DataFrame:
    """One trace's segments in order, with ``segment``, ``text``, ``important`` (the column named by
    ``important``), ``always_kept``, ``norm_strength``, ``consistency`` and, where ``scores`` has them,
    ``n_tokens`` and ``kind``.

    ``segments`` gives the texts (``trace_id``, ``segment``, ``text``); pass ``None`` when ``scores``
    already has a ``text`` column. ``always_keep`` is a rule of
    :func:`segattr_utils.method.importance.always_keep_indices` (``first_last``, ``official``, ``none``);
    ``None`` takes ``scores``' own ``always_kept`` column (stage 03 writes it) or else ``first_last``,
    the paper's rule.
    """
    trace_scores = scores[scores["trace_id"] == trace_id]
    if trace_scores.empty:
        raise KeyError(f"trace {trace_id!r} has no segment scores")
    if segments is None:
        if "text" not in trace_scores:
            raise ValueError("scores has no 'text' column: pass the segments table")
        view = trace_scores.sort_values("segment")
    else:
        texts = segments[segments["trace_id"] == trace_id][["segment", "text"]]
        trace_scores = trace_scores.drop(columns="text", errors="ignore")  # the segments table's texts win
        view = trace_scores.merge(texts, on="segment", how="left", validate="one_to_one").sort_values("segment")
    if view["text"].isna().any():
        raise ValueError(f"trace {trace_id!r}: some scored segments have no text in the segments table")
    n = len(view)
    if view["segment"].tolist() != list(range(n)):
        # Always-kept segments are positions (first, last): a gap would silently move them.
        raise ValueError(f"trace {trace_id!r}: segments must be numbered 0..{n - 1} without gaps")
    if always_keep is None and "always_kept" in view:
        kept = view["always_kept"].astype(bool).to_numpy()
    else:
        kept = view["segment"].isin(always_keep_indices(n, always_keep or "first_last")).to_numpy()
    if important != "important":  # another selection (a variant's column) replaces Eq. 7's
        view = view.drop(columns="important", errors="ignore")
    view = view.rename(columns={important: "important"}).assign(always_kept=kept)
    optional = [c for c in ("n_tokens", "kind") if c in view]
    columns = ["segment", "text", "important", "always_kept", "norm_strength", "consistency", *optional]
    return view[columns].reset_index(drop=True)


def _validate(view: pd.DataFrame) -> None:
    missing = [c for c in VIEW_COLUMNS if c not in view.columns]
    if missing:
        raise ValueError(f"the trace view lacks {missing}")
    if view.empty:
        raise ValueError("the trace has no segments to render")


def _always_kept(view: pd.DataFrame) -> np.ndarray:
    """The view's ``always_kept`` column, or the paper's first-and-last rule for a view without one."""
    if "always_kept" in view:
        return view["always_kept"].astype(bool).to_numpy()
    kept = np.zeros(len(view), dtype=bool)
    kept[list(always_keep_indices(len(view), "first_last"))] = True
    return kept


def segment_classes(view: pd.DataFrame) -> list[str]:
    """Per segment, in view order: ``important`` (Eq. 7 selects it), else ``kept`` (always kept),
    else ``masked``. A segment both important and always kept counts as important."""
    _validate(view)
    important = view["important"].astype(bool).to_numpy()
    kept = _always_kept(view)
    return ["important" if i else "kept" if k else "masked" for i, k in zip(important, kept)]


def masked_runs(classes: Sequence[str], min_run: int = 2) -> list[tuple[int, int]]:
    """Half-open position ranges ``(start, end)`` of the runs of at least ``min_run`` consecutive masked
    segments, in order (the runs the HTML collapses)."""
    if min_run < 1:
        raise ValueError(f"min_run must be at least 1, got {min_run}")
    runs, start = [], None
    for position, cls in enumerate([*classes, "end"]):
        if cls == "masked" and start is None:
            start = position
        elif cls != "masked" and start is not None:
            if position - start >= min_run:
                runs.append((start, position))
            start = None
    return runs


def _token_counts(view: pd.DataFrame) -> list[int] | None:
    """Tokens per segment from the view's ``n_tokens`` (stage 03 writes it); ``None`` without it."""
    return [int(n) for n in view["n_tokens"]] if "n_tokens" in view else None


def summary_counts(view: pd.DataFrame) -> dict:
    """Counts behind the summary line: ``segments``, ``important``, ``kept``, ``masked`` and, where the
    view has ``n_tokens``, ``tokens`` and ``trained_tokens`` (trace tokens of the important and
    always-kept segments; the answer part and EOS, also trained, are not in the view)."""
    classes = segment_classes(view)
    counts = {"segments": len(classes), **{cls: classes.count(cls) for cls in CLASSES}}
    lengths = _token_counts(view)
    if lengths is not None:
        counts["tokens"] = sum(lengths)
        counts["trained_tokens"] = sum(n for n, cls in zip(lengths, classes) if cls != "masked")
    return counts


# ---------------------------------------------------------------------------------------------
# Token attributions


def token_pieces(sequence, values: Sequence[float | None]) -> list[list[tuple[str, float | None]]]:
    """Per segment, the segment's text cut at its tokens: ``[(text, attribution), ...]``, whose texts
    concatenate to exactly the segment's text (the form :func:`render_html` takes as ``tokens``).

    ``sequence`` is a :class:`segattr_utils.method.token_spans.AttributionSequence` (``text``,
    ``offsets``, ``segment_char_spans``, ``segment_spans``); ``values`` holds one attribution per
    token of the whole sequence (``None`` where unknown). Cuts come from the offset mapping, never from
    decoding tokens one by one (byte-level BPE splits characters). Characters before a segment's first
    token belong to the straddling token of the previous segment (".\\n\\n" before "Wait") and carry its
    value; tokens that start inside one character (a split UTF-8 character) are summed into one piece.
    """
    if len(values) != len(sequence.offsets):
        raise ValueError(f"{len(values)} attributions for a sequence of {len(sequence.offsets)} tokens")
    text, offsets = sequence.text, sequence.offsets
    result = []
    for (a, b), (s, e) in zip(sequence.segment_char_spans, sequence.segment_spans):
        starts = [min(max(int(offsets[t][0]), a), b) for t in range(s, e)]
        pieces: list[tuple[str, float | None]] = []
        first = starts[0] if starts else b
        if first > a:
            owner = values[s - 1] if s > 0 and offsets[s - 1][1] > a else None
            pieces.append((text[a:first], owner))
        pending: float | None = 0.0
        for j, t in enumerate(range(s, e)):
            pending = None if pending is None or values[t] is None else pending + float(values[t])
            end = starts[j + 1] if j + 1 < len(starts) else b
            if end > starts[j]:
                pieces.append((text[starts[j] : end], pending))
                pending = 0.0
        if pending != 0.0 and pieces:  # zero-width tokens at the very end join the last piece
            last_text, last_value = pieces[-1]
            pieces[-1] = (last_text, None if pending is None or last_value is None else last_value + pending)
        result.append(pieces)
    return result


def record_token_values(record: dict, n_tokens: int) -> list[float | None]:
    """Per-token attributions of a whole sequence from a stage 03 record (``segment_spans`` and
    ``token_attributions``, per segment); ``None`` outside the segments (the record keeps only the trace's
    tokens)."""
    values: list[float | None] = [None] * n_tokens
    for (start, end), segment_values in zip(record["segment_spans"], record["token_attributions"]):
        values[start:end] = [float(v) for v in segment_values]
    return values


def _check_tokens(view: pd.DataFrame, tokens: TokenPieces) -> None:
    if len(tokens) != len(view):
        raise ValueError(f"tokens has {len(tokens)} segments, the view {len(view)}")
    for position, (pieces, text) in enumerate(zip(tokens, view["text"])):
        joined = "".join(piece for piece, _ in pieces)
        if joined != str(text):
            raise ValueError(
                f"the token texts of segment {int(view['segment'].iloc[position])} do not concatenate to its text "
                "(build them with token_pieces from the attribution sequence's offsets)"
            )


def token_scale(tokens: TokenPieces) -> float:
    """The attribution that gets the darkest colour: the 99th percentile of |attribution| over the trace
    (IG attributions are heavy-tailed; the maximum would leave almost every token pale)."""
    magnitudes = np.abs([v for pieces in tokens for _, v in pieces if v is not None])
    if magnitudes.size == 0:
        return 0.0
    scale = float(np.quantile(magnitudes, 0.99))
    return scale if scale > 0 else float(magnitudes.max())


def token_bin(value: float | None, scale: float) -> str:
    """The CSS class of a token's colour: ``n5``..``n1`` (negative), ``z`` (near zero or unknown),
    ``p1``..``p5`` (positive)."""
    if value is None or not scale > 0:
        return "z"
    level = min(TOKEN_BINS, int(math.floor(abs(value) / scale * TOKEN_BINS + 0.5)))
    return "z" if level == 0 else f"{'p' if value > 0 else 'n'}{level}"


# ---------------------------------------------------------------------------------------------
# HTML


def _html_text(text: str, break_leading: bool = True) -> str:
    """Escaped text with every newline shown as ↵ and kept as a line break (``white-space: pre-wrap``).

    With ``break_leading=False`` the newlines that open the text are shown as ↵ without breaking the
    line: a segment's block already starts on a new line, and most segments of real traces open with
    "\\n\\n" (two empty lines per segment, hundreds of times over)."""
    body = text if break_leading else text.lstrip("\n")
    mark = f'<span class="nl">{NEWLINE_MARK}</span>'
    return mark * (len(text) - len(body)) + html.escape(body, quote=True).replace("\n", mark + "\n")


def _annotation(row, cls: str) -> str:
    kind = f" · {row['kind']}" if "kind" in row and isinstance(row["kind"], str) else ""
    length = f" · {int(row['n_tokens'])} tokens" if "n_tokens" in row and pd.notna(row["n_tokens"]) else ""
    return (
        f"S{int(row['segment']) + 1} · {CLASS_LABELS[cls]} · strength {row['norm_strength']:.3f} · "
        f"consistency {row['consistency']:.3f}{length}{kind}"
    )


def _token_html(pieces: Sequence[tuple[str, float | None]], scale: float) -> str:
    """One ``<span class="t …">`` per piece; newlines opening the segment are marks only, as in plain text."""
    spans, opening = [], True
    for piece, value in pieces:
        label = "attribution unknown" if value is None else f"attribution {value:+.3g}"
        body = _html_text(piece, break_leading=not opening)
        opening = opening and not piece.strip("\n")
        spans.append(f'<span class="t {token_bin(value, scale)}" title="{label}">{body}</span>')
    return "".join(spans)


def _segment_html(row, cls: str, pieces, scale: float) -> str:
    index = int(row["segment"])
    body = _html_text(str(row["text"]), break_leading=False) if pieces is None else _token_html(pieces, scale)
    return (
        f'<div class="segment {cls}" id="segment-{index}" data-segment="{index}" data-class="{cls}">'
        f'<div class="meta">{html.escape(_annotation(row, cls))}</div>'
        f'<div class="text">{body}</div></div>'
    )


def _count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1 ("1 segment", "1,834 tokens")."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _run_html(rows: list, lengths: list[int] | None, inner: list[str]) -> str:
    first, last = int(rows[0]["segment"]) + 1, int(rows[-1]["segment"]) + 1
    size = f", {_count(sum(lengths), 'token')}" if lengths is not None else ""
    return (
        f'<details class="run" id="run-{first - 1}" data-segments="{len(rows)}">'
        f"<summary>{_count(len(rows), 'masked segment')} (S{first}–S{last}){size} — show</summary>"
        + "".join(inner)
        + "</details>"
    )


def _strip_html(view: pd.DataFrame, classes: list[str]) -> str:
    """One bar per segment, height proportional to normalised strength, each a link to its segment."""
    peak = float(view["norm_strength"].max()) or 1.0
    bars = []
    for (_, row), cls in zip(view.iterrows(), classes):
        index = int(row["segment"])
        height = max(6.0, 100.0 * float(row["norm_strength"]) / peak)  # a zero-strength bar stays clickable
        bars.append(
            f'<a class="bar {cls}" href="#segment-{index}" style="height:{height:.0f}%" '
            f'title="S{index + 1} · {CLASS_LABELS[cls]} · strength {row["norm_strength"]:.3f}" '
            f'aria-label="segment {index + 1}"></a>'
        )
    return '<nav class="strip" aria-label="normalised strength per segment">' + "".join(bars) + "</nav>"


def _summary_html(counts: dict) -> str:
    parts = [
        _count(counts["segments"], "segment"),
        f"{counts['important']:,} important",
        f"{counts['kept']:,} always kept",
        f"{counts['masked']:,} masked",
    ]
    if "tokens" in counts:
        share = counts["trained_tokens"] / counts["tokens"] if counts["tokens"] else 0.0
        parts.append(f"trace tokens trained {counts['trained_tokens']:,} of {counts['tokens']:,} ({share:.1%})")
    return '<p class="summary">' + " · ".join(parts) + "</p>"


def _qa_html(question, gold_answer, trace_answer, correct) -> str:
    if question is None and gold_answer is None and trace_answer is None:
        return ""
    items = []
    if question is not None:
        items.append(f'<h2>Question</h2><div class="box">{_html_text(str(question))}</div>')
    if gold_answer is not None:
        items.append(f'<h2>Gold answer</h2><div class="box">{_html_text(str(gold_answer))}</div>')
    if trace_answer is not None:
        verdict = "" if correct is None else (" (correct)" if correct else " (incorrect)")
        items.append(f'<h2>The trace\'s answer{verdict}</h2><div class="box">{_html_text(str(trace_answer))}</div>')
    return '<section class="qa">' + "".join(items) + "</section>"


def _back_html(index_href: str | None) -> str:
    if index_href is None:
        return ""
    return f'<nav class="back"><a href="{html.escape(index_href, quote=True)}">&larr; all traces</a></nav>'


STYLE = (
    "body{font-family:sans-serif;max-width:64em;margin:1em auto;padding:0 1em;color:#222;}"
    "h1{font-size:1.3em;}h2{font-size:0.95em;margin:0.8em 0 0.2em;}"
    ".box{white-space:pre-wrap;font-family:monospace;background:#f7f7f7;padding:6px 10px;border-radius:6px;"
    "max-height:14em;overflow:auto;}"
    ".summary{font-weight:bold;}"
    ".segment{border-radius:6px;padding:6px 10px;margin:6px 0;scroll-margin-top:80px;}"
    ".segment:target{outline:2px solid #333;}"
    + "".join(f".{cls}{{background:{color};}}" for cls, color in CLASS_COLORS.items())
    + ".meta{font-size:0.8em;color:#333;margin-bottom:4px;}"
    ".text{white-space:pre-wrap;font-family:monospace;}.nl{color:#999;}"
    ".legend span{padding:2px 8px;margin-right:8px;border-radius:4px;}"
    ".strip{display:flex;align-items:flex-end;gap:1px;height:48px;overflow-x:auto;position:sticky;top:0;background:#fff;"
    "padding:4px 0;border-bottom:1px solid #ccc;z-index:1;}"
    ".strip .bar{flex:1 1 0;min-width:1px;display:block;}"
    + "".join(f".strip .{cls}{{background:{color};}}" for cls, color in STRIP_COLORS.items())
    + ".run{margin:6px 0;border-left:4px solid #b0b0b0;padding-left:8px;}"
    ".run>summary{cursor:pointer;color:#555;padding:4px 0;}"
    "#show-tokens:checked~main .segment .text{background:#fff;padding:2px;}"
    + "".join(f"#show-tokens:checked~main .t.n{i + 1}{{background:{c};}}" for i, c in enumerate(_NEGATIVE))
    + "".join(f"#show-tokens:checked~main .t.p{i + 1}{{background:{c};}}" for i, c in enumerate(_POSITIVE))
    # White text on the two darkest bins of either sign, so that the text stays readable.
    + "".join(f"#show-tokens:checked~main .t.{sign}{level}{{color:#fff;}}" for sign in "np" for level in (4, 5))
    + ".palette span{display:inline-block;width:1.4em;}"
)

# Opens the collapsed run holding a segment before jumping to it (the strip's links, a #segment-N URL);
# everything else works without JS.
SCRIPT = """<script>
function openTo(hash) {
  const target = hash && document.getElementById(hash.slice(1));
  if (!target) return;
  for (let el = target.parentElement; el; el = el.parentElement) if (el.tagName === 'DETAILS') el.open = true;
  target.scrollIntoView({block: 'start'});
}
window.addEventListener('hashchange', () => openTo(location.hash));
window.addEventListener('DOMContentLoaded', () => openTo(location.hash));
</script>"""


def render_html(
    view: pd.DataFrame,
    title: str = "",
    *,
    question: str | None = None,
    gold_answer: str | None = None,
    trace_answer: str | None = None,
    correct: bool | None = None,
    tokens: TokenPieces | None = None,
    collapse_min: int = 2,
    index_href: str | None = None,
) -> str:
    """The standalone HTML page of one trace (see the module docstring).

    ``view``: the per-segment table of :func:`trace_view` (``segment``, ``text``, ``important``,
    ``norm_strength``, ``consistency``; optional ``always_kept`` (default: first and last),
    ``n_tokens``, ``kind``). ``tokens``: per segment, ``(text, attribution)`` pieces from
    :func:`token_pieces`; when given, a checkbox colours every token by its signed attribution.
    Runs of at least ``collapse_min`` consecutive masked segments are collapsed. ``index_href``, when
    given, is the (relative) address of the page over all traces, linked above the title.
    """
    classes = segment_classes(view)
    if tokens is not None:
        _check_tokens(view, tokens)
    scale = token_scale(tokens) if tokens is not None else 0.0
    lengths = _token_counts(view)
    rows = [row for _, row in view.iterrows()]
    runs = {start: end for start, end in masked_runs(classes, collapse_min)}
    blocks, position = [], 0
    while position < len(rows):
        end = runs.get(position, position + 1)
        inner = [
            _segment_html(rows[p], classes[p], None if tokens is None else tokens[p], scale)
            for p in range(position, end)
        ]
        if position in runs:
            blocks.append(_run_html(rows[position:end], None if lengths is None else lengths[position:end], inner))
        else:
            blocks.extend(inner)
        position = end
    legend = (
        '<div class="legend">'
        + "".join(f'<span class="{cls}">{CLASS_LABELS[cls]}</span>' for cls in CLASSES)
        + " strength = normalised attribution strength (Eq. 4), consistency = attribution direction consistency "
        "(Eq. 3); the bars below are the segments' strengths, click one to jump to it</div>"
    )
    toggle = ""
    if tokens is not None:
        palette = "".join(
            f'<span style="background:{c}">&nbsp;</span>' for c in (*reversed(_NEGATIVE), "#fff", *_POSITIVE)
        )
        # The checkbox precedes <main> as its sibling, so that CSS alone (`:checked ~ main`) colours the tokens.
        toggle = (
            '<input type="checkbox" id="show-tokens"> <label for="show-tokens">colour tokens by their signed '
            f'attribution</label> <span class="palette">negative {palette} positive</span> '
            f"(darkest at |attribution| &ge; {scale:.3g}; hover a token for its value)"
        )
    escaped_title = html.escape(title)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escaped_title}</title><style>{STYLE}</style>{SCRIPT}</head><body>"
        f"<header>{_back_html(index_href)}<h1>{escaped_title}</h1>"
        f"{_qa_html(question, gold_answer, trace_answer, correct)}"
        f"{_summary_html(summary_counts(view))}{legend}</header>{toggle}"
        f"{_strip_html(view, classes)}"
        '<main class="trace">\n' + "\n".join(blocks) + "\n</main></body></html>\n"
    )


def write_html(
    path: str | Path,
    view: pd.DataFrame,
    title: str = "",
    *,
    question: str | None = None,
    gold_answer: str | None = None,
    trace_answer: str | None = None,
    correct: bool | None = None,
    tokens: TokenPieces | None = None,
    collapse_min: int = 2,
    index_href: str | None = None,
) -> Path:
    """Write :func:`render_html` of ``view`` atomically to ``path`` and return it: the entry point of
    ``segattr view`` and stage 06. Example::

        view = trace_view(scores, segments, "q7:correct")          # or segments=None if scores has text
        write_html("q7.html", view, title="q7", question=q, gold_answer="42", trace_answer=answer_part,
                   correct=True, tokens=token_pieces(sequence, ig.values.tolist()))
    """
    document = render_html(
        view,
        title,
        question=question,
        gold_answer=gold_answer,
        trace_answer=trace_answer,
        correct=correct,
        tokens=tokens,
        collapse_min=collapse_min,
        index_href=index_href,
    )
    return atomic_write_text(path, document)


# ---------------------------------------------------------------------------------------------
# The index over many traces

#: The index's columns: (sort key, header, type); ``number`` columns sort by their ``data-value``.
INDEX_COLUMNS = (
    ("id", "trace id", "text"),
    ("segments", "segments", "number"),
    ("tokens", "tokens", "number"),
    ("error", "completeness error", "number"),
    ("share", "share of tokens trained", "number"),
    ("correct", "correct", "number"),
)
#: Marks the index page as this module's (``segattr view`` replaces only a folder it wrote itself).
INDEX_GENERATOR = '<meta name="generator" content="segattr view">'
INDEX_FIELDS = ("trace_id", "href", "n_segments", "n_tokens", "relative_delta", "flagged", "trained_share", "correct")
SKIPPED_FIELDS = ("trace_id", "reason", "detail")
_HEADER_TITLES = {
    "tokens": "tokens of the reasoning (its segments); the attributed sequence adds the prompt and the answer",
    "error": "relative completeness error |F(x) - F(x') - sum IG| / |F(x) - F(x')| of the attributions",
    "share": "tokens of the selected segments (important or always kept, Eq. 9) over all tokens of the reasoning",
    "correct": "whether the trace's own boxed answer equals the gold answer",
}

INDEX_STYLE = (
    "body{font-family:sans-serif;max-width:72em;margin:1em auto;padding:0 1em;color:#222;}"
    "h1{font-size:1.3em;}h2{font-size:1.05em;margin-top:1.5em;}"
    "table{border-collapse:collapse;width:100%;font-size:0.9em;}"
    "th,td{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right;vertical-align:top;}"
    "th:first-child,td:first-child,#skipped th,#skipped td{text-align:left;}"
    "#skipped td.detail{white-space:pre-wrap;font-family:monospace;font-size:0.9em;}"
    "thead th{position:sticky;top:0;background:#f4f4f4;}"
    "th button{font:inherit;font-weight:bold;background:none;border:0;cursor:pointer;padding:0;}"
    "th[aria-sort=ascending] button::after{content:' \\25B2';}"
    "th[aria-sort=descending] button::after{content:' \\25BC';}"
    "tr.flagged td.error{color:#b2182b;font-weight:bold;}"
    "td.id{font-family:monospace;word-break:break-all;}"
)

# Sorts the table by a column: a click on a header (ascending, then descending), or the page's address
# (#sort=<column>-<asc|desc>, kept so that a sorted view can be linked and reloaded). Ties keep the
# file order; text sorts numerically where it holds numbers (q2 before q10).
INDEX_SCRIPT = """<script>
(() => {
  const table = document.getElementById('traces');
  if (!table) return;
  const heads = [...table.tHead.rows[0].cells];
  const body = table.tBodies[0];
  const collator = new Intl.Collator(undefined, {numeric: true});
  let current = '';
  function value(row, col, numeric) {
    const raw = row.cells[col].dataset.value;
    if (!numeric) return raw;
    const v = Number(raw);
    return Number.isNaN(v) ? -Infinity : v;
  }
  function sortTable(name, dir) {
    const col = heads.findIndex(th => th.dataset.key === name);
    if (col < 0 || current === name + '-' + dir) return;
    const numeric = heads[col].dataset.type === 'number';
    const sign = dir === 'desc' ? -1 : 1;
    const rows = [...body.rows];
    rows.sort((a, b) => {
      const x = value(a, col, numeric), y = value(b, col, numeric);
      const order = numeric ? (x < y ? -1 : x > y ? 1 : 0) : collator.compare(x, y);
      return sign * order || (Number(a.dataset.order) - Number(b.dataset.order));
    });
    body.append(...rows);
    heads.forEach((th, i) => th.setAttribute('aria-sort', i !== col ? 'none' : dir === 'desc' ? 'descending' : 'ascending'));
    current = name + '-' + dir;
  }
  function fromAddress() {
    const match = /^#sort=([a-z]+)-(asc|desc)$/.exec(location.hash);
    if (match) sortTable(match[1], match[2]);
  }
  heads.forEach(th => th.querySelector('button').addEventListener('click', () => {
    const dir = th.getAttribute('aria-sort') === 'ascending' ? 'desc' : 'asc';
    sortTable(th.dataset.key, dir);
    location.hash = 'sort=' + th.dataset.key + '-' + dir;
  }));
  window.addEventListener('hashchange', fromAddress);
  fromAddress();
})();
</script>"""


def _number(value: float) -> str:
    """A ``data-value`` that JavaScript's ``Number()`` reads back (``Infinity``, not Python's ``inf``)."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def _error_text(value: float) -> str:
    value = float(value)
    return "n/a" if math.isnan(value) else "∞" if math.isinf(value) else f"{value:.2%}"


def _index_row(order: int, row: dict) -> str:
    trace_id = html.escape(str(row["trace_id"]), quote=True)
    href = html.escape(str(row["href"]), quote=True)
    flagged = bool(row["flagged"])
    correct = bool(row["correct"])
    cells = [
        f'<td class="id" data-value="{trace_id}"><a href="{href}">{trace_id}</a></td>',
        f'<td data-value="{int(row["n_segments"])}">{int(row["n_segments"]):,}</td>',
        f'<td data-value="{int(row["n_tokens"])}">{int(row["n_tokens"]):,}</td>',
        f'<td class="error" data-value="{_number(row["relative_delta"])}">{_error_text(row["relative_delta"])}'
        f"{' (flagged)' if flagged else ''}</td>",
        f'<td data-value="{_number(row["trained_share"])}">{float(row["trained_share"]):.1%}</td>',
        f'<td data-value="{int(correct)}">{"yes" if correct else "no"}</td>',
    ]
    flag = ' class="flagged"' if flagged else ""
    return f'<tr data-order="{order}" data-trace="{trace_id}"{flag}>' + "".join(cells) + "</tr>"


def _skipped_html(skipped: pd.DataFrame) -> str:
    if skipped.empty:
        return "<h2>Skipped traces</h2><p>No trace was skipped.</p>"
    reasons = skipped["reason"].astype(str).value_counts()
    counts = " · ".join(f"{html.escape(reason)}: {count:,}" for reason, count in reasons.items())
    rows = "".join(
        f'<tr data-trace="{html.escape(str(r["trace_id"]), quote=True)}">'
        f'<td class="id">{html.escape(str(r["trace_id"]))}</td><td>{html.escape(str(r["reason"]))}</td>'
        f'<td class="detail">{html.escape("" if pd.isna(r["detail"]) else str(r["detail"]))}</td></tr>'
        for r in skipped.to_dict("records")
    )
    return (
        f"<h2>Skipped traces ({len(skipped):,})</h2><p>{counts}</p>"
        '<table id="skipped"><thead><tr><th>trace id</th><th>reason</th><th>detail</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )


def render_index(
    traces: pd.DataFrame, skipped: pd.DataFrame, title: str = "", *, flag_threshold: float | None = None
) -> str:
    """The standalone HTML page over many traces (see the module docstring).

    ``traces``: one row per scored trace, in the order shown until sorted, with ``trace_id``, ``href``
    (the address of its page), ``n_segments``, ``n_tokens``, ``relative_delta`` (the completeness
    error), ``flagged``, ``trained_share`` (0..1) and ``correct``. ``skipped``: ``trace_id``, ``reason``,
    ``detail``. ``flag_threshold``: the completeness error above which a trace is flagged (shown in the
    summary line).
    """
    for name, table, fields in (("traces", traces, INDEX_FIELDS), ("skipped", skipped, SKIPPED_FIELDS)):
        missing = [c for c in fields if c not in table.columns]
        if missing:
            raise ValueError(f"the index's {name} table lacks {missing}")
    records = traces.to_dict("records")
    n_correct = sum(bool(r["correct"]) for r in records)
    n_flagged = sum(bool(r["flagged"]) for r in records)
    above = "" if flag_threshold is None else f" above {flag_threshold:g}"
    summary = (
        f"{_count(len(records), 'scored trace')} · {n_correct:,} correct · {n_flagged:,} flagged "
        f"(completeness error{above}) · {_count(len(skipped), 'skipped trace')}"
    )
    heads = "".join(
        f'<th data-key="{key}" data-type="{kind}" aria-sort="none"'
        + (f' title="{html.escape(_HEADER_TITLES[key], quote=True)}"' if key in _HEADER_TITLES else "")
        + f'><button type="button">{label}</button></th>'
        for key, label, kind in INDEX_COLUMNS
    )
    rows = "\n".join(_index_row(order, row) for order, row in enumerate(records))
    escaped_title = html.escape(title)
    table = (
        f'<table id="traces"><thead><tr>{heads}</tr></thead><tbody>\n{rows}\n</tbody></table>'
        if records
        else "<p>No scored trace.</p>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{INDEX_GENERATOR}<title>{escaped_title}</title><style>{INDEX_STYLE}</style></head><body>"
        f'<h1>{escaped_title}</h1><p class="summary">{summary}</p>'
        "<p>Click a column header to sort by it (again for the reverse order); a trace id opens its "
        "segments.</p>"
        f"{table}{_skipped_html(skipped)}{INDEX_SCRIPT}</body></html>\n"
    )
