"""Tests for segattr_utils.report.viewer (Fig. 1 left): escaping, the three segment classes against a hand
computation with importance_flags and the always-kept rule, collapsed runs of masked segments, the token
toggle, token pieces from offsets, the bounded PNG figure, and a 200-segment trace rendered in headless
Chromium (skipped without a browser, unless SEGATTR_REQUIRE_CHROMIUM=1, as CI sets it)."""

from __future__ import annotations

import html.parser
import itertools
import json
import struct
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from segattr_utils.method.importance import importance_flags
from segattr_utils.method.token_spans import build_attribution_sequence
from segattr_utils.report.figures import fig1_left_segment_viewer as render_figure
from segattr_utils.report.viewer import (
    NEWLINE_MARK,
    masked_runs,
    render_html,
    render_index,
    segment_classes,
    token_pieces,
    trace_view,
    write_html,
)
from segattr_utils.world.tokenizer import build_bpe_tokenizer

from ..fixtures.chromium import run_chromium

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
            "important": [False, True, False, False],
            "always_kept": [True, False, False, True],
            "norm_strength": [0.4, 0.35, 0.05, 0.2],
            "consistency": [0.61, 0.72, 0.99, 0.97],
            "n_tokens": [12, 20, 7, 15],
            "kind": ["productive", "productive", "truncated", "superficial"],
        }
    )


def _shown(text: str) -> str:
    """What a segment's block shows: newlines opening it as marks only, every other newline as mark + break."""
    body = text.lstrip("\n")
    return NEWLINE_MARK * (len(text) - len(body)) + body.replace("\n", NEWLINE_MARK + "\n")


class _PageParser(html.parser.HTMLParser):
    """Collects, in document order, every ``div.segment`` (classes, meta text, text) and every collapsed
    run (``details.run``: its summary and the segments inside)."""

    def __init__(self):
        super().__init__()
        self.segments: list[dict] = []
        self.runs: list[dict] = []
        self.inputs: list[str] = []
        self.token_spans = 0
        self.bars: list[dict] = []
        self._stack: list[str] = []
        self._field: str | None = None
        self._field_depth = 0
        self._run: dict | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "input":
            self.inputs.append(attrs.get("id") or "")
            return
        if tag == "a" and "bar" in classes:
            self.bars.append({"href": attrs["href"], "classes": classes})
        if tag == "span" and "t" in classes:
            self.token_spans += 1
        if tag == "details" and "run" in classes:
            self._run = {"summary": "", "segments": [], "open": "open" in attrs}
            self.runs.append(self._run)
        if tag == "summary" and self._run is not None:
            self._field, self._field_depth = "summary", len(self._stack) + 1
        if tag == "div" and "segment" in classes:
            self.segments.append({"classes": classes, "id": attrs["id"], "meta": "", "text": ""})
            if self._run is not None:
                self._run["segments"].append(int(attrs["data-segment"]))
        if tag == "div" and ("meta" in classes or "text" in classes) and self.segments and self._field is None:
            self._field, self._field_depth = ("meta" if "meta" in classes else "text"), len(self._stack) + 1
        self._stack.append(tag)

    def handle_endtag(self, tag):
        if tag in ("input",):
            return
        if self._field is not None and len(self._stack) == self._field_depth and tag == self._stack[-1]:
            self._field = None
        if tag == "details":
            self._run = None
        self._stack.pop()

    def handle_data(self, data):
        if self._field == "summary":
            self._run["summary"] += data
        elif self._field is not None:
            self.segments[-1][self._field] += data


def _parse(document: str) -> _PageParser:
    parser = _PageParser()
    parser.feed(document)
    return parser


def test_html_escapes_every_text_and_keeps_newlines():
    document = render_html(
        _view(),
        title="<trace & co>",
        question="Is $a<b$ & <i>c</i>?",
        gold_answer="\\frac{1}{2} < 1",
        trace_answer="</think> So \\boxed{<6>}",
        correct=True,
    )
    assert "<script>document" not in document and "<b>not bold</b>" not in document and "<i>c</i>" not in document
    for escaped in ("&lt;script&gt;", "&lt;trace &amp; co&gt;", "Is $a&lt;b$ &amp; &lt;i&gt;c&lt;/i&gt;?"):
        assert escaped in document
    assert "\\frac{1}{2} &lt; 1" in document and "&lt;/think&gt; So \\boxed{&lt;6&gt;}" in document
    assert "http://" not in document and "https://" not in document  # nothing fetched from a network
    parser = _parse(document)
    assert [s["text"] for s in parser.segments] == [_shown(s) for s in SEGMENTS]
    assert parser.segments[2]["meta"] == "S3 · masked · strength 0.050 · consistency 0.990 · 7 tokens · truncated"
    assert parser.segments[0]["meta"].startswith("S1 · always kept (trained) · ")


def test_render_rejects_bad_views():
    with pytest.raises(ValueError):
        render_html(_view().iloc[:0])
    with pytest.raises(ValueError):
        render_html(_view().drop(columns=["consistency"]))


def test_trace_view_joins_scores_and_texts():
    scores = pd.DataFrame(
        {
            "trace_id": ["t"] * 3 + ["u"],
            "segment": [1, 0, 2, 0],
            "important": [False, True, False, True],
            "always_kept": [False, True, True, True],
            "norm_strength": [0.3, 0.5, 0.2, 1.0],
            "consistency": [0.99, 0.5, 0.9, 0.4],
            "n_tokens": [4, 5, 6, 7],
            "kind": ["repetition", "productive", None, None],
        }
    )
    segments = pd.DataFrame(
        {"trace_id": ["t", "t", "t", "u"], "segment": [0, 1, 2, 0], "text": ["first", "\n\nsecond", "\n\nthird", "x"]}
    )
    view = trace_view(scores, segments, "t")
    assert view["segment"].tolist() == [0, 1, 2] and view["text"].tolist() == ["first", "\n\nsecond", "\n\nthird"]
    assert view["important"].tolist() == [True, False, False]
    assert view["always_kept"].tolist() == [True, False, True] and view["n_tokens"].tolist() == [5, 4, 6]
    # A rule overrides the table's column; a table without the column gets the paper's first-and-last rule.
    assert trace_view(scores, segments, "t", always_keep="official")["always_kept"].tolist() == [True, True, True]
    assert trace_view(scores.drop(columns="always_kept"), segments, "t")["always_kept"].tolist() == [True, False, True]
    other = trace_view(scores.assign(mine=[True, True, False, False]), segments, "t", important="mine")
    assert other["important"].tolist() == [True, True, False]
    # Texts already in the scores table (the CLI's per-segment table).
    with_text = scores.merge(segments, on=["trace_id", "segment"])
    assert trace_view(with_text, None, "t")["text"].tolist() == view["text"].tolist()
    with pytest.raises(KeyError):
        trace_view(scores, segments, "missing")
    with pytest.raises(ValueError, match="no text"):
        trace_view(scores, segments.iloc[:1], "t")
    with pytest.raises(ValueError, match="without gaps"):
        trace_view(scores[scores["segment"] != 1], segments, "t")


def _long_scores(n: int = 200, seed: int = 0) -> pd.DataFrame:
    """A stage-03-like table of one ``n``-segment trace: heavy-tailed strengths (few segments hold most of
    it), the first, second-to-last and last segments weak so that only the always-kept rule trains them."""
    rng = np.random.default_rng(seed)
    strength = np.exp(3 * rng.standard_normal(n))
    strength[[0, n - 2, n - 1]] = strength.min() / 2
    norm = strength / strength.sum()
    consistency = rng.uniform(0, 1, n)
    flags = importance_flags(norm, consistency, tau=0.7, beta=0.8)
    texts = [("" if i == 0 else "\n\n") + f"Wait, step {i}: 2 < {i} & {{x}}^2 " + "so " * (i % 9) for i in range(n)]
    return pd.DataFrame(
        {
            "trace_id": "long",
            "segment": range(n),
            "text": texts,
            "norm_strength": norm,
            "consistency": consistency,
            "important": flags["important"],
            "n_tokens": [3 + i % 11 for i in range(n)],
        }
    )


def _hand_classes(scores: pd.DataFrame, kept: set[int]) -> list[str]:
    """The classes computed by hand: Eq. 5-7 through importance_flags, then the always-kept positions."""
    flags = importance_flags(scores["norm_strength"], scores["consistency"], tau=0.7, beta=0.8)
    return ["important" if flags["important"][i] else "kept" if i in kept else "masked" for i in range(len(scores))]


def _hand_runs(classes: list[str]) -> list[list[int]]:
    runs, position = [], 0
    for cls, group in itertools.groupby(classes):
        size = len(list(group))
        if cls == "masked" and size >= 2:
            runs.append(list(range(position, position + size)))
        position += size
    return runs


@pytest.mark.parametrize("rule, kept", [("first_last", {0, 199}), ("official", {0, 198, 199})])
def test_segment_classes_match_a_hand_computation(rule, kept):
    scores = _long_scores()
    expected = _hand_classes(scores, kept)
    assert expected[0] == expected[199] == "kept" and 0 < expected.count("important") < 100
    view = trace_view(scores, None, "long", always_keep=rule)
    assert segment_classes(view) == expected
    parser = _parse(render_html(view))
    assert [s["classes"][1] for s in parser.segments] == expected
    assert [s["id"] for s in parser.segments] == [f"segment-{i}" for i in range(200)]
    # The always-kept segments are trained: never coloured like the masked ones.
    assert all(parser.segments[i]["classes"][1] != "masked" for i in kept)
    assert [b["classes"][1] for b in parser.bars] == expected and [b["href"] for b in parser.bars] == [
        f"#segment-{i}" for i in range(200)
    ]


def test_runs_of_masked_segments_are_collapsed_with_counts():
    scores = _long_scores()
    view = trace_view(scores, None, "long")
    classes = _hand_classes(scores, {0, 199})
    expected_runs = _hand_runs(classes)
    assert masked_runs(classes) == [(r[0], r[-1] + 1) for r in expected_runs]
    document = render_html(view)
    parser = _parse(document)
    assert [r["segments"] for r in parser.runs] == expected_runs and not any(r["open"] for r in parser.runs)
    for run in parser.runs:
        tokens = sum(3 + i % 11 for i in run["segments"])
        first, last = run["segments"][0] + 1, run["segments"][-1] + 1
        assert run["summary"] == f"{len(run['segments'])} masked segments (S{first}–S{last}), {tokens:,} tokens — show"
    # A lone masked segment between trained ones stays in line.
    inside = {i for r in expected_runs for i in r}
    assert any(c == "masked" and i not in inside for i, c in enumerate(classes))
    trained = sum(n for n, c in zip(scores["n_tokens"], classes) if c != "masked")
    counts = (classes.count("important"), classes.count("kept"), classes.count("masked"))
    total = int(scores["n_tokens"].sum())
    assert (
        f"200 segments · {counts[0]} important · {counts[1]} always kept · {counts[2]} masked · "
        f"trace tokens trained {trained:,} of {total:,} ({trained / total:.1%})"
    ) in document
    assert len(_parse(render_html(view, collapse_min=10**6)).runs) == 0


def _pieces_for(view: pd.DataFrame) -> list[list[tuple[str, float]]]:
    """Hand-made token pieces: every segment cut into words, alternating signed attributions."""
    pieces = []
    for text in view["text"]:
        words = [w for w in text.replace(" ", " \0").split("\0") if w]
        pieces.append([(w, (-1) ** k * 0.01 * (k + 1)) for k, w in enumerate(words)])
    return pieces


def test_token_toggle_only_with_token_attributions():
    plain = _parse(render_html(_view()))
    assert plain.inputs == [] and plain.token_spans == 0
    tokens = _pieces_for(_view())
    document = render_html(_view(), tokens=tokens)
    parser = _parse(document)
    assert parser.inputs == ["show-tokens"] and parser.token_spans == sum(len(p) for p in tokens)
    # The text is unchanged, only cut into spans; the colours are CSS classes of the toggle (no JS needed).
    assert [s["text"] for s in parser.segments] == [_shown(s) for s in SEGMENTS]
    assert "#show-tokens:checked~main .t.p5" in document and 'title="attribution -0.02"' in document
    with pytest.raises(ValueError, match="do not concatenate"):
        render_html(_view(), tokens=[[("wrong", 1.0)]] + tokens[1:])
    with pytest.raises(ValueError, match="segments"):
        render_html(_view(), tokens=tokens[:2])


def test_token_pieces_cut_the_text_at_token_starts():
    # ".\n\n" straddles the segment boundary; "é" is split over two byte-level tokens with the same
    # offsets; the last token has an empty offset range.
    sequence = SimpleNamespace(
        text="Q:Hi.\n\nWait é ok",
        offsets=[(0, 2), (2, 4), (4, 7), (7, 11), (11, 12), (12, 13), (12, 13), (13, 16), (16, 16)],
        segment_char_spans=[(2, 5), (5, 16)],
        segment_spans=[(1, 3), (3, 9)],
    )
    values = [None, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    pieces = token_pieces(sequence, values)
    assert pieces[0] == [("Hi", 0.1), (".", 0.2)]
    # The two newlines belong to the straddling ".\n\n" token; the split "é" and the empty token are
    # summed into the pieces that hold their characters.
    assert [p for p, _ in pieces[1]] == ["\n\n", "Wait", " ", "é", " ok"]
    assert [v for _, v in pieces[1]] == pytest.approx([0.2, 0.3, 0.4, 0.5 + 0.6, 0.7 + 0.8])
    assert token_pieces(sequence, values[:5] + [None] + values[6:])[1][3] == ("é", None)
    with pytest.raises(ValueError, match="attributions"):
        token_pieces(sequence, values[:-1])


def test_token_pieces_of_a_real_tokenisation_partition_each_segment():
    segments = ["Okay, 2 + 2 = 4 < 5.", "\n\nWait, is é & ü fine?", "\n\nSo \\boxed{4}."]
    corpus = ["".join(segments) * 3, "Wait, so the answer is 4.\n\n"] * 20
    tokenizer = build_bpe_tokenizer(corpus, vocab_size=400)
    sequence = build_attribution_sequence(tokenizer, "<q>What is 2+2?</q>", segments, "4")
    values = np.linspace(-1, 1, len(sequence)).tolist()
    pieces = token_pieces(sequence, values)
    assert ["".join(p for p, _ in seg) for seg in pieces] == segments
    carried_any = False
    for (start, end), (char_start, _), seg in zip(sequence.segment_spans, sequence.segment_char_spans, pieces):
        carried = sequence.offsets[start][0] > char_start  # the segment opens inside the previous token
        carried_any |= carried
        if carried:
            assert seg[0][1] == values[start - 1]
        # Every token's attribution lands in exactly one piece of its own segment.
        assert sum(v for _, v in seg[int(carried) :]) == pytest.approx(sum(values[start:end]))
    assert carried_any  # ".\n\n" is one token of this tokenizer: the case the carry exists for
    render_html(
        pd.DataFrame(
            {
                "segment": range(3),
                "text": segments,
                "important": [True, False, False],
                "norm_strength": [0.5, 0.3, 0.2],
                "consistency": [0.5, 0.9, 0.9],
            }
        ),
        tokens=pieces,
    )


def test_figure_draws_every_segment_of_a_short_trace(tmp_path):
    fig = render_figure(_view(), title="example")
    texts = [t.get_text() for t in fig.axes[-1].texts]
    for index in range(4):
        assert any(t.startswith(f"S{index + 1} · ") for t in texts)
    assert any(t.startswith("S1 · always kept (trained)") for t in texts)
    assert any("\\boxed{6}" in t for t in texts)  # drawn literally, not as mathtext
    assert len(fig.axes[-1].patches) == 4 and len(fig.axes[0].patches) == 4  # blocks and strip bars
    colours = [p.get_facecolor() for p in fig.axes[-1].patches]
    assert colours[0] == colours[3] != colours[1] != colours[2] != colours[0]  # kept, important, masked
    path = tmp_path / "viewer.png"
    fig.savefig(path)
    plt.close(fig)
    assert path.stat().st_size > 1000


def test_figure_height_is_bounded_for_a_300_segment_trace(tmp_path):
    scores = _long_scores(300, seed=1)
    scores.loc[1, "text"] = "\n".join(["a long segment"] * 400)  # 400 lines: cut after max_lines
    fig = render_figure(trace_view(scores, None, "long"), title="300 segments")
    texts = [t.get_text() for t in fig.axes[-1].texts]
    assert [t.split(" · ")[0] for t in texts if t.startswith("S") and " · " in t] == [
        "S1",
        "S2",
        "S3",
        "S4",
        "S298",
        "S299",
        "S300",
    ]
    assert any(t.startswith("⋯ S5–S297 not shown: 293 segments") for t in texts)
    assert max(t.count("\n") + 1 for t in texts) == 8 and any(
        t.endswith("a long segment" + NEWLINE_MARK + "…") for t in texts
    )
    assert len(fig.axes[0].patches) == 300  # the strength strip has every segment
    path = tmp_path / "long.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    height = matplotlib.image.imread(path).shape[0]
    assert height < 1500, height  # a 186-segment trace used to give 19,000 pixels


def _render_report(tmp_path: Path, page: Path, script: str) -> dict:
    """Load ``page`` with ``script`` injected in headless Chromium and return what it wrote into
    ``<pre id="render-check">`` (JSON) after layout."""
    checked = tmp_path / f"checked-{page.name}"
    checked.write_text(page.read_text(encoding="utf-8").replace("</body>", script + "</body>"), encoding="utf-8")
    result = run_chromium(tmp_path, checked.as_uri(), "--dump-dom")
    start = result.stdout.index('<pre id="render-check">') + len('<pre id="render-check">')
    return json.loads(html.unescape(result.stdout[start : result.stdout.index("</pre>", start)]))


SMALL_CHECK = """<script>
window.addEventListener('load', () => {
  const rows = [...document.querySelectorAll('div.segment')].map(el => ({
    segment: el.dataset.segment, height: el.getBoundingClientRect().height,
    text: el.querySelector('div.text').textContent, background: getComputedStyle(el).backgroundColor}));
  const out = document.createElement('pre'); out.id = 'render-check';
  out.textContent = JSON.stringify({title: document.title, rows: rows});
  document.body.appendChild(out);
});
</script>"""


def test_html_renders_every_segment_in_headless_chromium(tmp_path):
    view = _view().assign(important=[True, True, False, False], always_kept=[False, False, False, True])
    page = write_html(tmp_path / "trace.html", view, title="render test", tokens=_pieces_for(view))
    report = _render_report(tmp_path, page, SMALL_CHECK)
    assert report["title"] == "render test"  # the escaped <script> in a segment did not run
    assert [row["segment"] for row in report["rows"]] == ["0", "1", "2", "3"]
    for row, text in zip(report["rows"], SEGMENTS):
        assert row["height"] > 10
        assert row["text"] == _shown(text)
    colours = [row["background"] for row in report["rows"]]
    assert colours[0] == colours[1] != colours[2] != colours[3] != colours[0]  # important, masked, kept


# After layout: the page height with the runs collapsed and expanded, the strip's bars and where they lead,
# what is visible, and whether the page's own script opens a collapsed run when jumping into it.
LONG_CHECK = """<script>
window.addEventListener('load', () => {
  const root = document.documentElement;
  const visible = el => el.checkVisibility();
  const bars = [...document.querySelectorAll('nav.strip a.bar')];
  const runs = [...document.querySelectorAll('details.run')];
  const report = {
    title: document.title,
    viewport: root.clientWidth,
    collapsedHeight: root.scrollHeight,
    bars: bars.map(a => ({target: a.getAttribute('href'), width: a.getBoundingClientRect().width,
                          height: a.getBoundingClientRect().height,
                          exists: !!document.getElementById(a.getAttribute('href').slice(1))})),
    stripTop: document.querySelector('nav.strip').getBoundingClientRect().top,
    runs: runs.map(d => d.querySelectorAll('div.segment').length),
    visibleSegments: [...document.querySelectorAll('div.segment')].filter(visible).map(el => +el.dataset.segment),
    summaries: runs.map(d => visible(d.querySelector('summary'))),
  };
  const hidden = runs.length ? runs[0].querySelector('div.segment') : null;
  if (hidden) { openTo('#' + hidden.id); report.jumpOpened = runs[0].open && visible(hidden); }
  runs.forEach(d => { d.open = true; });
  report.expandedHeight = root.scrollHeight;
  const out = document.createElement('pre'); out.id = 'render-check';
  out.textContent = JSON.stringify(report);
  document.body.appendChild(out);
});
</script>"""


def test_200_segment_trace_in_headless_chromium(tmp_path):
    scores = _long_scores(200)
    view = trace_view(scores, None, "long")
    classes = _hand_classes(scores, {0, 199})
    runs = _hand_runs(classes)
    collapsed = {i for r in runs for i in r}
    page = write_html(
        tmp_path / "long.html",
        view,
        title="200 segments",
        question="What is <x>?",
        gold_answer="4",
        trace_answer="\\boxed{4}",
        correct=True,
        tokens=_pieces_for(view),
    )
    report = _render_report(tmp_path, page, LONG_CHECK)
    assert report["title"] == "200 segments"
    # The strip: one clickable bar per segment, every one leading to its segment.
    assert [b["target"] for b in report["bars"]] == [f"#segment-{i}" for i in range(200)]
    assert all(b["exists"] and b["width"] >= 1 and b["height"] >= 2 for b in report["bars"])
    # Collapsed runs: closed, with their summary line shown and their segments hidden.
    assert report["runs"] == [len(r) for r in runs] and all(report["summaries"])
    assert report["visibleSegments"] == [i for i in range(200) if i not in collapsed]
    assert report["jumpOpened"] is True
    # Collapsing shortens the page by the collapsed segments' blocks.
    assert report["collapsedHeight"] < report["expandedHeight"] - 30 * len(collapsed)
    assert report["collapsedHeight"] < 400 + 90 * (200 - len(collapsed)) + 40 * len(runs)
    shot = tmp_path / "long.png"
    run_chromium(tmp_path, page.as_uri(), f"--screenshot={shot}")
    with shot.open("rb") as handle:
        header = handle.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", header[16:24]) == (1280, 1000)


def test_index_page_needs_its_columns_and_trace_pages_link_back():
    rows = pd.DataFrame(
        {
            "trace_id": ["a<b"],
            "href": ["traces/a_b.html"],
            "n_segments": [3],
            "n_tokens": [12],
            "relative_delta": [0.01],
            "flagged": [False],
            "trained_share": [0.5],
            "correct": [True],
        }
    )
    skipped = pd.DataFrame({"trace_id": ["s"], "reason": ["over-length"], "detail": ["9000 > 8192"]})
    document = render_index(rows, skipped, title="<corpus>")
    assert "<title>&lt;corpus&gt;</title>" in document and 'data-trace="a&lt;b"' in document
    assert '<a href="traces/a_b.html">a&lt;b</a>' in document and "over-length: 1" in document
    with pytest.raises(ValueError, match="lacks \\['trained_share'\\]"):
        render_index(rows.drop(columns="trained_share"), skipped)
    with pytest.raises(ValueError, match="skipped table lacks \\['detail'\\]"):
        render_index(rows, skipped.drop(columns="detail"))
    page = render_html(_view(), index_href='../index.html?"x"')
    assert '<nav class="back"><a href="../index.html?&quot;x&quot;">&larr; all traces</a></nav>' in page
    assert "all traces" not in render_html(_view())
