"""Tests for segattr_utils.report.viewer (Fig. 1 left): escaping, newlines, the matplotlib figure, and a
render of the HTML in headless Chromium that checks every segment is laid out with its text."""

from __future__ import annotations

import html.parser
import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from segattr_utils.report.figures import fig1_left_segment_viewer as render_figure
from segattr_utils.report.viewer import NEWLINE_MARK, render_html, trace_view, write_html

SEGMENTS = [
    "Okay, so 2 + 1 = 3 & <b>not bold</b>.",
    "\n\nWait, <script>document.title='hacked'</script> 3 * 2 = 6.",
    "\n\nAlternatively, maybe I should",
    "\n\nSo the result is \\boxed{6} \"quoted\" 'single'.",
]


def _view() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "segment": range(4),
            "text": SEGMENTS,
            "important": [True, True, False, False],
            "norm_strength": [0.4, 0.35, 0.05, 0.2],
            "consistency": [0.61, 0.72, 0.99, 0.97],
            "kind": ["productive", "productive", "truncated", "superficial"],
        }
    )


class _SegmentParser(html.parser.HTMLParser):
    """Collects the text of every ``div.segment > div.text`` and each segment's classes."""

    def __init__(self):
        super().__init__()
        self.segments, self.classes, self.meta = [], [], []
        self._depth_text = None
        self._in_meta = False
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div":
            self._depth += 1
            classes = (attrs.get("class") or "").split()
            if "segment" in classes:
                self.classes.append(classes)
            if "text" in classes:
                self.segments.append("")
                self._depth_text = self._depth
            if "meta" in classes:
                self.meta.append("")
                self._in_meta = True

    def handle_endtag(self, tag):
        if tag == "div":
            if self._depth_text == self._depth:
                self._depth_text = None
            self._in_meta = False
            self._depth -= 1

    def handle_data(self, data):
        if self._depth_text is not None:
            self.segments[-1] += data
        elif self._in_meta:
            self.meta[-1] += data


def _parse(document: str) -> _SegmentParser:
    parser = _SegmentParser()
    parser.feed(document)
    return parser


def test_html_escapes_text_and_keeps_newlines():
    document = render_html(_view(), title="<trace & co>")
    assert "<script>document" not in document and "<b>not bold</b>" not in document
    assert "&lt;script&gt;" in document and "&amp;" in document and "&lt;trace &amp; co&gt;" in document
    parser = _parse(document)
    assert len(parser.segments) == 4
    # The text of each block is the segment with a visible mark before every newline.
    assert parser.segments == [s.replace("\n", NEWLINE_MARK + "\n") for s in SEGMENTS]
    assert [c[1] for c in parser.classes] == ["important", "important", "unimportant", "unimportant"]
    assert parser.meta[2] == "S3 · unimportant · strength 0.050 · consistency 0.990 · truncated"


def test_render_rejects_bad_views():
    with pytest.raises(ValueError):
        render_html(_view().iloc[:0])
    with pytest.raises(ValueError):
        render_html(_view().drop(columns=["consistency"]))


def test_trace_view_joins_scores_and_texts():
    scores = pd.DataFrame(
        {
            "trace_id": ["t"] * 2 + ["u"],
            "segment": [1, 0, 0],
            "important": [False, True, True],
            "norm_strength": [0.3, 0.7, 1.0],
            "consistency": [0.99, 0.5, 0.4],
            "kind": ["repetition", "productive", None],
        }
    )
    segments = pd.DataFrame(
        {"trace_id": ["t", "t", "u"], "segment": [0, 1, 0], "text": ["first", "\n\nsecond", "only"]}
    )
    view = trace_view(scores, segments, "t")
    assert view["segment"].tolist() == [0, 1] and view["text"].tolist() == ["first", "\n\nsecond"]
    assert view["important"].tolist() == [True, False]
    with pytest.raises(KeyError):
        trace_view(scores, segments, "missing")
    with pytest.raises(ValueError):
        trace_view(scores, segments.iloc[:1], "t")


def test_figure_draws_every_segment(tmp_path):
    fig = render_figure(_view(), title="example")
    texts = [t.get_text() for t in fig.axes[0].texts]
    for index in range(4):
        assert any(t.startswith(f"S{index + 1} · ") for t in texts)
    assert any("\\boxed{6}" in t for t in texts)  # drawn literally, not as mathtext
    path = tmp_path / "viewer.png"
    fig.savefig(path)
    assert path.stat().st_size > 1000
    patches = fig.axes[0].patches
    assert len(patches) == 4


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Injected by the test only: after layout, record each segment's rendered height and text.
CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const rows = [...document.querySelectorAll('div.segment')].map(el => ({
    segment: el.dataset.segment, height: el.getBoundingClientRect().height,
    text: el.querySelector('div.text').textContent,
    background: getComputedStyle(el).backgroundColor}));
  const out = document.createElement('pre'); out.id = 'render-check';
  out.textContent = JSON.stringify({title: document.title, rows: rows});
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium browser installed (Debian: apt-get install chromium)")
def test_html_renders_every_segment_in_headless_chromium(tmp_path):
    page = write_html(tmp_path / "trace.html", _view(), title="render test")
    checked = tmp_path / "checked.html"
    checked.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--dump-dom",
        Path(checked).as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    start = result.stdout.index('<pre id="render-check">') + len('<pre id="render-check">')
    payload = html.unescape(result.stdout[start : result.stdout.index("</pre>", start)])
    report = json.loads(payload)
    assert report["title"] == "render test"  # the escaped <script> in a segment did not run
    assert [row["segment"] for row in report["rows"]] == ["0", "1", "2", "3"]
    for row, text in zip(report["rows"], SEGMENTS):
        assert row["height"] > 10
        assert row["text"] == text.replace("\n", NEWLINE_MARK + "\n")
    colors = [row["background"] for row in report["rows"]]
    assert colors[0] == colors[1] != colors[2] == colors[3]
