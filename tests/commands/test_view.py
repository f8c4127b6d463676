"""``segattr view``: the scored traces of a ``segattr score`` folder as standalone HTML pages.

The score folders are written by ``scores_dir.write_scores`` from hand-made :class:`ScoredTrace` objects (no
model). Checked here: one trace's page shows the question, the gold and the trace's own answer; the index
lists every scored trace (its numbers computed again from the scored traces) and every skipped one, links
each to an existing page, escapes hostile ids; arguments are checked before any work; the folder is written
whole or not at all; and 300 traces render in headless Chromium, where the column headers sort the table
(skipped without a browser, unless SEGATTR_REQUIRE_CHROMIUM=1, as CI sets it)."""

from __future__ import annotations

import html
import html.parser
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from segattr_utils import cli
from segattr_utils.commands import scores_dir, view
from segattr_utils.report import viewer
from segattr_utils.scored_trace import ScoredTrace

from ..fixtures.chromium import run_chromium

SETTINGS = {
    "flag_relative_delta": 0.05,
    "tau": 0.7,
    "beta": 0.8,
    "aggregation": "sqrt_len",
    "always_keep": "first_last",
}
SELECTION = {k: SETTINGS[k] for k in scores_dir.SELECTION_KEYS}
HOSTILE_IDS = ["<script>alert(1)</script>", "../x", "a/b", "A", "a", "con", ".hidden", "q 1 & 2", "é" * 200]


def _trace(i: int, rng: np.random.Generator, n_segments: int | None = None, **fields) -> ScoredTrace:
    """A scored trace made by hand: ``n_segments`` segments of 2-9 tokens with random attributions."""
    n = int(rng.integers(1, 13)) if n_segments is None else n_segments
    lengths = rng.integers(2, 10, n)
    attributions = tuple(tuple(float(v) for v in rng.normal(0, 1, k) * rng.lognormal(0, 1.5)) for k in lengths)
    texts = tuple(("" if s == 0 else "\n\nWait, ") + f"step {s} of trace {i}: 2 < 3 & <b>x</b>" for s in range(n))
    answer = str(i % 7)
    values = {
        "question": f"Question {i}: is <i>{i}</i> & {i + 1} < {i + 2}?",
        "gold_answer": str(i % 5),
        "prompt": f"<|user|>Question {i}<|assistant|><think>\n",
        "segments": texts,
        "answer_part": f"\n</think>\n\nSo the answer is \\boxed{{{answer}}} <ok>.",
        "predicted": answer,
        "correct": answer == str(i % 5),
        "token_ids": tuple(tuple(range(100 + s, 100 + s + k)) for s, k in enumerate(lengths)),
        "token_attributions": attributions,
        "f_input": -0.5,
        "f_baseline": -3.0,
        "delta": float(rng.uniform(-0.1, 0.1)),  # at most 4% of F(x) - F(x'): not flagged
        "n_tokens": int(lengths.sum()) + 30,
        "settings": dict(SELECTION),
    }
    return ScoredTrace(**{**values, **fields})


def _write(folder: Path, scored: dict[str, ScoredTrace], skipped: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True)
    scores_dir.write_scores(folder, scored, skipped or [], dict(SETTINGS))
    return folder


def _folder(tmp_path: Path, ids: list[str], seed: int = 0, skipped: list[dict] | None = None, name: str = "scores"):
    rng = np.random.default_rng(seed)
    scored = {tid: _trace(i, rng) for i, tid in enumerate(ids)}
    return _write(tmp_path / name, scored, skipped), scored


SKIPPED = [
    {"trace_id": "long<1>", "reason": "over-length", "detail": "the attribution sequence has 9000 tokens & more"},
    {
        "trace_id": "007",
        "reason": "no </think>",
        "detail": "the output has no </think>: there is no finished reasoning",
    },
    {"trace_id": "NA", "reason": "no boxed answer", "detail": ""},
]


class _IndexParser(html.parser.HTMLParser):
    """The index's trace rows (``data-trace``, per cell its ``data-value`` and text, the link), its skipped
    rows (cell texts), the headers (``data-key``) and every ``src``/``href`` of the page."""

    def __init__(self):
        super().__init__()
        self.rows, self.skipped, self.heads, self.addresses = [], [], [], []
        self.title, self._table, self._cell, self._in_title = "", None, None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "href"):
            if name in attrs:
                self.addresses.append(attrs[name])
        if tag == "title":
            self._in_title = True
        if tag == "table":
            self._table = attrs.get("id")
        elif tag == "th" and self._table == "traces":
            self.heads.append(attrs["data-key"])
        elif tag == "tr" and "data-trace" in attrs:
            row = {"id": attrs["data-trace"], "class": attrs.get("class"), "cells": []}
            (self.rows if self._table == "traces" else self.skipped).append(row)
        elif tag == "td":
            self._cell = {"value": attrs.get("data-value"), "text": "", "href": None}
            (self.rows if self._table == "traces" else self.skipped)[-1]["cells"].append(self._cell)
        elif tag == "a" and self._cell is not None:
            self._cell["href"] = attrs["href"]

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        if self._in_title:
            self.title += data


def _parse_index(document: str) -> _IndexParser:
    parser = _IndexParser()
    parser.feed(document)
    return parser


def _expected_row(scored: ScoredTrace) -> dict:
    """The index's numbers of one trace, from the scored trace itself."""
    lengths = [len(t) for t in scored.token_ids]
    trained = sum(lengths[i] for i in scored.selected)
    return {
        "segments": len(scored.segments),
        "tokens": sum(lengths),
        "error": abs(scored.delta) / abs(scored.f_input - scored.f_baseline)
        if scored.f_input != scored.f_baseline
        else math.inf,
        "share": trained / sum(lengths),
        "correct": scored.correct,
    }


def _view_corpus(scores: Path, out: Path) -> int:
    return cli.main(["view", "--scores", str(scores), "--out", str(out)])


# ---------------------------------------------------------------------------------------------
# One trace's page


def test_trace_page_shows_the_question_the_gold_and_the_trace_answer(tmp_path, capsys):
    scores, scored = _folder(tmp_path, ["first", "second"])
    out = tmp_path / "views" / "second.html"
    assert cli.main(["view", "--scores", str(scores), "--trace", "second", "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    trace = scored["second"]
    for text in (trace.question, trace.gold_answer, trace.answer_part):
        assert html.escape(text, quote=True).replace("\n", '<span class="nl">↵</span>\n') in page
    verdict = "(correct)" if trace.correct else "(incorrect)"
    assert f"<h2>The trace's answer {verdict}</h2>" in page
    assert "step 0 of trace 1" in page and "trace 0:" not in page and "<b>x</b>" not in page
    assert "all traces" not in page  # a lone page links to no index
    assert "trace second ->" in capsys.readouterr().out


def test_trace_page_errors_name_what_is_missing(tmp_path, capsys):
    scores, _ = _folder(tmp_path, ["first", "second"])
    assert cli.main(["view", "--scores", str(scores), "--trace", "third", "--out", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err
    assert "no scored trace 'third'" in err and "(scored: first, second)" in err
    assert (
        cli.main(["view", "--scores", str(tmp_path / "empty"), "--trace", "a", "--out", str(tmp_path / "x.html")]) == 2
    )
    assert "run `segattr score` first" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    assert cli.main(["view", "--scores", str(scores), "--trace", "first", "--out", str(tmp_path / "folder")]) == 2
    assert "is a folder; with --trace, --out is the HTML file" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists() and not any((tmp_path / "folder").iterdir())


# ---------------------------------------------------------------------------------------------
# The index


def test_index_lists_every_scored_and_skipped_trace(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SEGATTR_QUIET_PROGRESS", raising=False)
    ids = [f"q{i}" for i in range(12)]
    rng = np.random.default_rng(3)
    scored = {tid: _trace(i, rng) for i, tid in enumerate(ids)}
    scored["q3"] = _trace(3, rng, n_segments=1)
    scored["q4"] = _trace(4, rng, delta=0.4)  # relative error 0.4 / 2.5 = 16%: flagged
    scored["q5"] = _trace(5, rng, f_baseline=-0.5, delta=0.1)  # no gap between F(x) and F(x'): infinite error
    scores = _write(tmp_path / "scores", scored, SKIPPED)
    out = tmp_path / "view"
    assert _view_corpus(scores, out) == 0
    captured = capsys.readouterr()
    assert f"12 trace pages and the index of 12 scored and 3 skipped traces -> {out / 'index.html'}" in captured.out
    assert "trace pages" in captured.err and "12/12" in captured.err  # the progress bar
    parser = _parse_index((out / "index.html").read_text(encoding="utf-8"))
    assert parser.heads == ["id", "segments", "tokens", "error", "share", "correct"]
    assert [row["id"] for row in parser.rows] == ids  # the file order until sorted
    for row in parser.rows:
        expected = _expected_row(scored[row["id"]])
        cells = dict(zip(parser.heads, row["cells"]))
        assert cells["id"]["text"] == row["id"] and cells["id"]["href"] == f"traces/{row['id']}.html"
        assert int(cells["segments"]["value"]) == expected["segments"]
        assert (
            int(cells["tokens"]["value"]) == expected["tokens"] and cells["tokens"]["text"] == f"{expected['tokens']:,}"
        )
        assert float(cells["share"]["value"]) == pytest.approx(expected["share"])
        assert cells["share"]["text"] == f"{expected['share']:.1%}"
        assert cells["correct"]["text"] == ("yes" if expected["correct"] else "no")
        if row["id"] == "q5":
            assert cells["error"]["value"] == "Infinity" and cells["error"]["text"] == "∞ (flagged)"
        else:
            assert float(cells["error"]["value"]) == pytest.approx(expected["error"])
            assert cells["error"]["text"].startswith(f"{expected['error']:.2%}")
        assert (row["class"] == "flagged") == (expected["error"] > 0.05) == cells["error"]["text"].endswith("(flagged)")
    assert [r["id"] for r in parser.rows if r["class"] == "flagged"] == ["q4", "q5"]
    assert float(dict(zip(parser.heads, parser.rows[3]["cells"]))["share"]["value"]) == 1.0  # one, always kept
    # The skipped traces with their reasons and details, ids kept as written ("007", "NA").
    assert [[c["text"] for c in row["cells"]] for row in parser.skipped] == [
        [s["trace_id"], s["reason"], s["detail"]] for s in SKIPPED
    ]
    n_correct = sum(s.correct for s in scored.values())
    assert f"12 scored traces · {n_correct} correct · 2 flagged (completeness error above 0.05) · 3 skipped" in (
        html.unescape((out / "index.html").read_text(encoding="utf-8"))
    )


def test_index_has_a_sort_script_and_fetches_nothing(tmp_path):
    scores, _ = _folder(tmp_path, ["q1", "q2"])
    assert _view_corpus(scores, tmp_path / "view") == 0
    for page in (tmp_path / "view").rglob("*.html"):
        document = page.read_text(encoding="utf-8")
        assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", document), page
        assert "<link" not in document and " src=" not in document
    index = (tmp_path / "view" / "index.html").read_text(encoding="utf-8")
    assert index.count("<script>") == 1 and "function sortTable" in index and "location.hash" in index
    assert index.count('<button type="button">') == len(viewer.INDEX_COLUMNS)


def test_hostile_ids_are_escaped_and_get_unique_safe_file_names(tmp_path):
    scores, scored = _folder(
        tmp_path,
        HOSTILE_IDS + ["q1"],
        skipped=[{"trace_id": "<img onerror=x>", "reason": "no </think>", "detail": "<b>"}],
    )
    out = tmp_path / "out" / "view"
    assert _view_corpus(scores, out) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "scores"]  # nothing written beside or above
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["view"]
    pages = sorted(p.name for p in (out / "traces").iterdir())
    assert len(pages) == len(HOSTILE_IDS) + 1 and len({p.lower() for p in pages}) == len(pages)
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*\.html", p) and len(p) <= 90 for p in pages)
    index = (out / "index.html").read_text(encoding="utf-8")
    parser = _parse_index(index)
    assert [row["id"] for row in parser.rows] == HOSTILE_IDS + ["q1"]  # the ids shown as written
    assert "<script>alert" not in index and "<img onerror" not in index and "&lt;script&gt;alert(1)" in index
    for row in parser.rows:
        href = row["cells"][0]["href"]
        target = (out / href).resolve()
        assert target.is_file() and target.parent == (out / "traces").resolve(), href
        page = target.read_text(encoding="utf-8")
        page_parser = _parse_index(page)
        assert page_parser.title == f"trace {row['id']}"  # the id, escaped in the page and read back as written
        assert "<script>alert" not in page and html.escape(scored[row["id"]].question) in page
        back = [a for a in page_parser.addresses if a.endswith("index.html")]
        assert back == ["../index.html"] and (target.parent / back[0]).resolve() == (out / "index.html").resolve()
    # already safe ids keep their names; the others are cleaned and carry a digest of the id
    names = view.safe_names(HOSTILE_IDS + ["q1"])
    assert names["q1"] == "q1" and names["A"] == "A" and names["a"] == "a-2"
    assert names["../x"].startswith("x-") and names["con"].startswith("con-") and names[".hidden"].startswith("hidden-")
    assert view.safe_names(["../x"]) == {"../x": names["../x"]}  # stable, whatever the other ids


def test_a_run_without_scored_traces_lists_the_skipped_ones(tmp_path):
    scores = _write(tmp_path / "scores", {}, SKIPPED)
    assert _view_corpus(scores, tmp_path / "view") == 0
    index = (tmp_path / "view" / "index.html").read_text(encoding="utf-8")
    assert "No scored trace." in index and len(_parse_index(index).skipped) == 3
    assert not any((tmp_path / "view" / "traces").iterdir())


# ---------------------------------------------------------------------------------------------
# Arguments and writing


def _one_line_error(capsys, *parts: str) -> None:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("segattr view: "), err
    for part in parts:
        assert part in err, err


def test_arguments_are_checked_before_any_work(tmp_path, capsys, monkeypatch):
    scores, _ = _folder(tmp_path, ["q1", "q2"])
    monkeypatch.setattr(view, "write_corpus", lambda *a, **k: pytest.fail("work started"))
    taken = tmp_path / "taken.html"
    taken.write_text("mine")
    assert _view_corpus(scores, taken) == 2
    _one_line_error(capsys, f"--out {taken} is an existing file", "without --trace, --out is the folder")
    assert taken.read_text() == "mine"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert _view_corpus(scores, other) == 2
    _one_line_error(capsys, "did not write", "choose a new or empty folder")
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    assert _view_corpus(scores, tmp_path) == 2  # the folder holding the scores
    _one_line_error(capsys)
    assert cli.main(["view", "--scores", str(tmp_path / "nothing"), "--out", str(tmp_path / "v")]) == 2
    _one_line_error(capsys, "is not a folder: run `segattr score` first")
    for name, message in (
        (scores_dir.SKIPPED, f"holds no {scores_dir.SKIPPED}"),
        (scores_dir.TRACES, f"holds no {scores_dir.TRACES}"),
        (scores_dir.SEGMENTS, f"holds no {scores_dir.SEGMENTS}"),
    ):
        (scores / name).unlink()
        assert _view_corpus(scores, tmp_path / "v") == 2
        _one_line_error(capsys, message)
    assert not (tmp_path / "v").exists()


def test_tables_that_disagree_or_lack_columns_are_named(tmp_path, capsys):
    scores, _ = _folder(tmp_path, ["q1", "q2"])
    segments = scores / scores_dir.SEGMENTS
    table = pd.read_parquet(segments)
    table[table["trace_id"] == "q1"].to_parquet(segments, index=False)
    assert _view_corpus(scores, tmp_path / "v") == 2
    _one_line_error(capsys, "disagree (traces without segments: q2;")
    table.drop(columns="selected").to_parquet(segments, index=False)
    assert _view_corpus(scores, tmp_path / "v") == 2
    _one_line_error(capsys, "lacks the columns ['selected']")
    # extra columns (other settings of the run) are no obstacle
    table.assign(internal_batch_size=8).to_parquet(segments, index=False)
    traces = pd.read_parquet(scores / scores_dir.TRACES)
    traces.drop(columns="seconds", errors="ignore").assign(n_steps=50).to_parquet(
        scores / scores_dir.TRACES, index=False
    )
    assert _view_corpus(scores, tmp_path / "v") == 0


def test_a_rerun_replaces_its_own_folder(tmp_path):
    first, _ = _folder(tmp_path, ["q1", "q2", "q3"], name="first")
    second, _ = _folder(tmp_path, ["q2", "r9"], seed=1, name="second")
    out = tmp_path / "view"
    assert _view_corpus(first, out) == 0
    assert _view_corpus(second, out) == 0
    assert sorted(p.name for p in (out / "traces").iterdir()) == ["q2.html", "r9.html"]  # no stale q1, q3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "second", "view"]  # no temporary folder left
    out_empty = tmp_path / "empty"
    out_empty.mkdir()
    assert _view_corpus(second, out_empty) == 0 and (out_empty / "index.html").is_file()


def test_a_failed_run_leaves_no_half_written_folder(tmp_path, monkeypatch):
    scores, _ = _folder(tmp_path, [f"q{i}" for i in range(6)])
    original, calls = viewer.write_html, []

    def failing(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 4:
            raise OSError("disk full")
        return original(path, *args, **kwargs)

    monkeypatch.setattr(viewer, "write_html", failing)
    with pytest.raises(OSError, match="disk full"):
        _view_corpus(scores, tmp_path / "view")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores"]
    # an earlier view stays as it was
    monkeypatch.setattr(viewer, "write_html", original)
    assert _view_corpus(scores, tmp_path / "view") == 0
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "view").rglob("*") if p.is_file()}
    calls.clear()
    monkeypatch.setattr(viewer, "write_html", failing)
    with pytest.raises(OSError, match="disk full"):
        _view_corpus(scores, tmp_path / "view")
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "view").rglob("*") if p.is_file()}
    assert after == before and sorted(p.name for p in tmp_path.iterdir()) == ["scores", "view"]


# ---------------------------------------------------------------------------------------------
# 300 traces in headless Chromium


def _dump_dom(tmp_path: Path, url: str) -> str:
    return run_chromium(tmp_path, url, "--dump-dom").stdout


# Clicks the "share" header twice and the "id" header once, keeping the row order after each click.
CLICK_CHECK = """<script>
window.addEventListener('load', () => {
  const order = () => [...document.querySelectorAll('#traces tbody tr')].map(tr => tr.dataset.trace);
  const click = key => document.querySelector(`th[data-key="${key}"] button`).click();
  const report = {};
  click('share'); report.shareAsc = order(); report.hash = location.hash;
  click('share'); report.shareDesc = order();
  report.ariaSort = document.querySelector('th[data-key="share"]').getAttribute('aria-sort');
  click('id'); report.id = order();
  const out = document.createElement('pre'); out.id = 'render-check';
  out.textContent = JSON.stringify(report);
  document.body.appendChild(out);
});
</script>"""


def _sorted_ids(rows: dict[str, dict], key: str, descending: bool = False) -> list[str]:
    """The ids in the order of ``key`` (ties in file order), computed apart from the page's script."""
    order = list(rows)
    return sorted(order, key=lambda t: ((-1 if descending else 1) * rows[t][key], order.index(t)))


def test_300_traces_in_headless_chromium(tmp_path):
    ids = [f"q{i}" for i in range(298)] + ["<script>alert(1)</script>", "../x"]
    rng = np.random.default_rng(7)
    scored = {tid: _trace(i, rng) for i, tid in enumerate(ids)}
    scores = _write(tmp_path / "scores", scored, SKIPPED)
    out = tmp_path / "view"
    assert _view_corpus(scores, out) == 0
    expected = {tid: _expected_row(s) for tid, s in scored.items()}
    index = out / "index.html"
    document = index.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", document)

    # Sorted by the page's address: tokens, descending.
    dom = _parse_index(_dump_dom(tmp_path, index.as_uri() + "#sort=tokens-desc"))
    assert len(dom.rows) == 300 and len(dom.skipped) == 3
    assert [r["id"] for r in dom.rows] == _sorted_ids(expected, "tokens", descending=True)
    assert [r["id"] for r in _parse_index(document).rows] == ids  # the file itself keeps the file order

    # Sorted by clicks on the headers (a copy of the index beside it, with the clicking script).
    checked = out / "checked.html"
    checked.write_text(document.replace("</body>", CLICK_CHECK + "</body>"), encoding="utf-8")
    dumped = _dump_dom(tmp_path, checked.as_uri())
    start = dumped.index('<pre id="render-check">') + len('<pre id="render-check">')
    report = json.loads(html.unescape(dumped[start : dumped.index("</pre>", start)]))
    assert report["shareAsc"] == _sorted_ids(expected, "share")
    assert report["shareDesc"] == _sorted_ids(expected, "share", descending=True)
    assert report["hash"] == "#sort=share-asc" and report["ariaSort"] == "descending"
    numbered = [t for t in report["id"] if t.startswith("q")]
    assert numbered == sorted(numbered, key=lambda t: int(t[1:]))  # q2 before q10
    assert len(report["id"]) == 300

    # A linked trace page renders its question, gold and answer, and the hostile id stays text.
    href = next(r["cells"][0]["href"] for r in dom.rows if r["id"] == "<script>alert(1)</script>")
    page_dom = _dump_dom(tmp_path, (out / href).as_uri())
    trace = scored["<script>alert(1)</script>"]
    qa = page_dom[page_dom.index('<section class="qa">') : page_dom.index("</section>")]
    qa = html.unescape(re.sub(r"<[^>]+>", "", qa))
    for text in (trace.question, trace.gold_answer, trace.answer_part):
        assert text.replace("\n", "↵\n") in qa
    assert _parse_index(page_dom).title == "trace <script>alert(1)</script>"
    assert page_dom.count("<script>") == 1  # the page's own script only
