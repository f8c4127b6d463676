"""``segattr view``: a scored trace of a ``segattr score`` folder as a standalone HTML page (the page itself
is the viewer's, tested in tests/report/test_viewer.py; here: which trace, and the errors)."""

from __future__ import annotations

import html

import pandas as pd

from segattr_utils import cli

SEGMENTS = {
    "first": ["Okay, <b>so</b> 2 + 1 = 3.", "\n\nWait, 2 + 1 = 3 indeed.", "\n\nSo it is 3."],
    "second": ["Okay, 5 - 1 = 4.", "\n\nAlternatively, count down: 4."],
}


def _scores(folder):
    rows = []
    for trace_id, texts in SEGMENTS.items():
        for i, text in enumerate(texts):
            rows.append(
                {
                    "trace_id": trace_id,
                    "segment": i,
                    "text": text,
                    "n_tokens": 5,
                    "strength": 1.0,
                    "consistency": 0.5 + 0.1 * i,
                    "norm_strength": 1 / len(texts),
                    "high_strength": True,
                    "moderate_consistency": True,
                    "important": i == 1,
                    "always_kept": i in (0, len(texts) - 1),
                    "selected": True,
                    "token_ids": [1, 2, 3, 4, 5],
                    "token_attributions": [0.1, 0.2, 0.3, 0.4, 0.5],
                }
            )
    folder.mkdir()
    pd.DataFrame(rows).to_parquet(folder / "segments.parquet", index=False)
    return folder


def test_view_writes_the_chosen_trace(tmp_path, capsys):
    scores = _scores(tmp_path / "scores")
    out = tmp_path / "views" / "second.html"
    assert cli.main(["view", "--scores", str(scores), "--trace", "second", "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html") and "second" in page
    assert "count down: 4." in page and "5 - 1 = 4." in page and "2 + 1 = 3" not in page
    assert "trace second ->" in capsys.readouterr().out


def test_view_defaults_to_the_first_trace_and_escapes_text(tmp_path):
    scores = _scores(tmp_path / "scores")
    out = tmp_path / "first.html"
    assert cli.main(["view", "--scores", str(scores), "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert html.escape("<b>so</b>") in page and "<b>so</b>" not in page
    assert "2 + 1 = 3 indeed." in page


def test_view_errors_name_what_is_missing(tmp_path, capsys):
    scores = _scores(tmp_path / "scores")
    assert cli.main(["view", "--scores", str(scores), "--trace", "third", "--out", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err
    assert "no scored trace 'third'" in err and "(scored: first, second)" in err
    assert cli.main(["view", "--scores", str(tmp_path / "empty"), "--out", str(tmp_path / "x.html")]) == 2
    assert "run `segattr score` first" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()
