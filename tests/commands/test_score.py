"""``segattr score`` on a tiny local model and an R1 JSONL written here: the tables it writes (checked
against the library called directly and against Eq. 5-7 recomputed), the traces it skips with their
reasons (one over-length, one without ``</think>``), resuming (a second run does no IG and loads no
model; changed selection settings reuse the stored attributions; changed J recomputes them; a killed run
finishes with the same bytes), arguments refused before the model loads, and memory: an injected
out-of-memory error retried with less or skipping the trace, and a small ``--memory-budget`` that makes
the cost estimator checkpoint."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

import segattr_utils.llm.models as models
import segattr_utils.method.attribution as engine
import segattr_utils.scored_trace as scored_trace
from segattr_utils import cli
from segattr_utils.commands.score import read_keywords
from segattr_utils.method.importance import importance_flags
from segattr_utils.method.segmentation import DEFAULT_KEYWORDS, RETRO_SEARCH_KEYWORDS

from ..conftest import R1_TRACES

OPTIONS = ["--n-steps", "4", "--max-length", "200", "--dtype", "float32", "--device", "cpu"]
SCORED = ["sum", "double", "wrong"]  # file order; "long" is over 200 tokens, "unfinished" has no </think>
TABLES = ("segments.parquet", "traces.parquet", "segments.csv", "skipped.csv", "settings.json")


def _score(model_dir, traces, out, *extra):
    return cli.main(["score", "--model", str(model_dir), "--traces", str(traces), "--out", str(out), *OPTIONS, *extra])


@pytest.fixture(scope="module")
def traces_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("traces") / "traces.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in R1_TRACES), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def scored_dir(r1_model_dir, traces_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("score") / "scores"
    assert _score(r1_model_dir, traces_file, out) == 0
    return out


@pytest.fixture
def counted(monkeypatch):
    """Count IG runs and model loads of `segattr score` (both still run)."""
    calls = {"ig": 0, "load": 0}
    real_ig, real_load = engine.token_attributions, models.load_causal_lm

    def ig(*args, **kwargs):
        calls["ig"] += 1
        return real_ig(*args, **kwargs)

    def load(*args, **kwargs):
        calls["load"] += 1
        return real_load(*args, **kwargs)

    monkeypatch.setattr(engine, "token_attributions", ig)
    monkeypatch.setattr(models, "load_causal_lm", load)
    return calls


def test_tables_and_skipped_traces(scored_dir, r1_model_dir):
    skipped = pd.read_csv(scored_dir / "skipped.csv")
    assert dict(zip(skipped["trace_id"], skipped["reason"])) == {"unfinished": "no </think>", "long": "over-length"}
    detail = skipped.set_index("trace_id").loc["long", "detail"]
    assert "more than max_length (200)" in detail and "not truncated" in detail
    # an invalid record is listed with notebook 01's message for it
    detail = skipped.set_index("trace_id").loc["unfinished", "detail"]
    assert detail.startswith("line 5 (id 'unfinished'): field 'output' (output) has no </think>")
    traces = pd.read_parquet(scored_dir / "traces.parquet")
    assert list(traces["trace_id"]) == SCORED
    # how IG ran is recorded per trace (the tiny model fits at once: J points per pass, no checkpointing);
    # no wall-clock column: timings are in the run log
    assert "seconds" not in traces.columns
    assert list(traces["n_steps"]) == [4] * 3 and not traces["activation_checkpointing"].any()
    assert list(traces["internal_batch_size"]) == [4] * 3 and list(traces["out_of_memory_retries"]) == [0] * 3
    log = pd.read_csv(scored_dir / "run_log.csv")
    assert list(log.columns) == ["what", "seconds"] and len(log) == 4  # the four valid records, timed
    assert list(traces["correct"]) == [True, True, False] and list(traces["predicted"]) == ["11", "12", "14"]
    assert set(traces.columns) >= {"n_tokens", "f_input", "f_baseline", "delta", "relative_delta", "flagged"}
    assert (traces["n_tokens"] <= 200).all()
    np.testing.assert_allclose(
        traces["relative_delta"], (traces["delta"].abs() / (traces["f_input"] - traces["f_baseline"]).abs())
    )
    assert list(traces["flagged"]) == list(traces["relative_delta"] > 0.05)

    segments = pd.read_parquet(scored_dir / "segments.parquet")
    csv = pd.read_csv(scored_dir / "segments.csv", keep_default_na=False)
    assert list(csv.columns) == [c for c in segments.columns if c not in ("token_ids", "token_attributions")]
    assert list(csv["text"]) == list(segments["text"])
    # the CLI's rows are the library's, called directly with the same settings
    model, tokenizer = models.load_causal_lm(str(r1_model_dir), dtype="float32", device="cpu")
    for record in (r for r in R1_TRACES if r["id"] in SCORED):
        direct = scored_trace.score_trace(
            model,
            tokenizer,
            record["question"],
            record["output"],
            record["answer"],
            n_steps=4,
            warn_relative_delta=None,
        )
        rows = segments[segments["trace_id"] == record["id"]].reset_index(drop=True)
        assert list(rows["text"]) == list(direct.segments)
        for column in ("strength", "consistency", "norm_strength"):
            np.testing.assert_allclose(rows[column], direct.scores[column], rtol=1e-5, atol=1e-7)
        for column in ("important", "always_kept", "selected"):
            assert list(rows[column]) == list(direct.scores[column]), column
        assert [list(t) for t in rows["token_ids"]] == [list(t) for t in direct.token_ids]
    # Eq. 5-7 recomputed from the table at tau 0.7, beta 0.8; first and last always kept
    for _, rows in segments.groupby("trace_id"):
        flags = importance_flags(rows["norm_strength"], rows["consistency"], 0.7, 0.8)
        assert list(rows["important"]) == list(flags["important"])
        ends = {0, len(rows) - 1}
        assert list(rows["selected"]) == [imp or i in ends for i, imp in enumerate(rows["important"])]
    settings = json.loads((scored_dir / "settings.json").read_text())
    assert settings["n_steps"] == 4 and settings["keywords"] == list(DEFAULT_KEYWORDS)


def test_second_run_does_no_work_and_selection_changes_reuse_attributions(
    scored_dir, r1_model_dir, traces_file, tmp_path, counted, capsys
):
    out = tmp_path / "scores"
    shutil.copytree(scored_dir, out)
    before = pd.read_parquet(out / "segments.parquet")
    assert _score(r1_model_dir, traces_file, out) == 0
    assert counted == {"ig": 0, "load": 0}
    assert "4 traces, 4 already scored" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_parquet(out / "segments.parquet"), before)

    assert _score(r1_model_dir, traces_file, out, "--tau", "0.4", "--beta", "0.6") == 0
    assert counted == {"ig": 0, "load": 0}
    after = pd.read_parquet(out / "segments.parquet")
    np.testing.assert_array_equal(after["norm_strength"], before["norm_strength"])
    for _, rows in after.groupby("trace_id"):
        flags = importance_flags(rows["norm_strength"], rows["consistency"], 0.4, 0.6)
        assert list(rows["important"]) == list(flags["important"])

    assert _score(r1_model_dir, traces_file, out, "--n-steps", "6") == 0  # J changes the attributions
    assert counted == {"ig": len(SCORED), "load": 1}


def test_interrupted_run_resumes_where_it_stopped(scored_dir, r1_model_dir, traces_file, tmp_path, counted):
    out = tmp_path / "scores"
    shutil.copytree(scored_dir, out)
    store = out / "records.jsonl"
    lines = store.read_text().splitlines(keepends=True)
    assert [json.loads(line)["trace_id"] for line in lines] == ["sum", "double", "wrong", "long"]
    assert all("seconds" not in json.loads(line) for line in lines)
    store.write_text("".join(lines[:2]) + lines[2][:40])  # killed while writing "wrong"
    for table in TABLES:
        (out / table).unlink()
    assert _score(r1_model_dir, traces_file, out) == 0
    assert counted == {"ig": 1, "load": 1}  # only "wrong" is attributed again; the skips are only re-checked
    assert list(pd.read_parquet(out / "traces.parquet")["trace_id"]) == SCORED
    # equal data, equal bytes: the killed-and-resumed folder's tables are the uninterrupted run's
    for table in TABLES:
        assert (out / table).read_bytes() == (scored_dir / table).read_bytes(), table


def test_missing_model_folder_and_bad_trace_file(tmp_path, traces_file, capsys):
    missing = tmp_path / "models" / "no-such-model"
    assert _score(missing, traces_file, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"the model folder {str(missing)!r} does not exist" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "output": ["a", "b"], "answer": "1"}) + "\n")
    assert _score(missing, bad, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "line 1: field 'output'" in err and "--output-index" in err


def test_hub_id_offline_says_what_to_download(tmp_path, traces_file, monkeypatch, capsys):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    hub_id = "someone/no-such-r1-model"
    assert _score(hub_id, traces_file, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"model {hub_id!r} is not available locally" in err and f"huggingface-cli download {hub_id}" in err


def test_keyword_lists(tmp_path):
    assert read_keywords("default") == DEFAULT_KEYWORDS
    assert read_keywords("retro_search") == RETRO_SEARCH_KEYWORDS
    (tmp_path / "k.json").write_text(json.dumps(["\n\nWait", "\n\nHmm"]))
    assert read_keywords(str(tmp_path / "k.json")) == ("\n\nWait", "\n\nHmm")
    (tmp_path / "k.txt").write_text("\\n\\nWait\n\n\\n\\nSo\n")
    assert read_keywords(str(tmp_path / "k.txt")) == ("\n\nWait", "\n\nSo")
    with pytest.raises(ValueError, match="neither"):
        read_keywords(str(tmp_path / "none.txt"))
