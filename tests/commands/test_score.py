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


def test_two_processes_score_what_one_process_scores(scored_dir, r1_model_dir, traces_file, tmp_path):
    """``--processes 2`` runs two ranks under accelerate launch (on the CPU here): the same tables as the
    one-process run (attributions up to float rounding: the ranks use one thread each), no launch folder
    or rank store left behind, and a timing per scored trace in the run log."""
    out = tmp_path / "scores"
    assert _score(r1_model_dir, traces_file, out, "--processes", "2") == 0
    assert not (out / "records.launch").exists()
    assert sorted(p.name for p in out.glob("records*")) == ["records.jsonl"]
    for table in ("traces.parquet", "segments.parquet"):
        ours, one = pd.read_parquet(out / table), pd.read_parquet(scored_dir / table)
        pd.testing.assert_frame_equal(ours, one, check_exact=False, rtol=1e-4, atol=1e-6)
    assert (out / "skipped.csv").read_bytes() == (scored_dir / "skipped.csv").read_bytes()
    logged = pd.read_csv(out / "run_log.csv")
    assert sorted(logged["what"]) == sorted([f"{t}: integrated gradients" for t in SCORED] + ["long: over-length"])


def test_a_killed_launch_keeps_what_its_ranks_finished(scored_dir, r1_model_dir, traces_file, tmp_path, counted):
    """A rank store left by a killed launch (or by ranks started by hand on other machines) is merged on
    the next run: its trace is not attributed again, and the tables are the uninterrupted run's bytes."""
    from segattr_utils.distributed import rank_store_path

    out = tmp_path / "scores"
    shutil.copytree(scored_dir, out)
    store = out / "records.jsonl"
    lines = store.read_text().splitlines(keepends=True)
    rank = [line for line in lines if json.loads(line)["trace_id"] == "double"]
    store.write_text("".join(line for line in lines if line not in rank))
    rank_store_path(store, 1).write_text("".join(rank))
    for table in TABLES:
        (out / table).unlink()
    assert _score(r1_model_dir, traces_file, out) == 0
    assert counted == {"ig": 0, "load": 0}
    assert not rank_store_path(store, 1).exists()
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


# ----------------------------------------------------------------------------------------------
# Arguments: refused before any work


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--tau", "1.5"], "--tau must lie in (0, 1]"),
        (["--tau", "0"], "--tau must lie in (0, 1]"),
        (["--beta", "-0.1"], "--beta must lie in [0, 1]"),
        (["--n-steps", "1"], "--n-steps must be an integer of at least 2"),
        (["--internal-batch-size", "-3"], "--internal-batch-size must be 'auto' or a positive integer, got -3"),
        (["--internal-batch-size", "many"], "--internal-batch-size must be 'auto' or a positive integer"),
        (["--memory-budget", "0"], "--memory-budget must be a positive number of GiB, got 0.0"),
        (["--memory-budget", "nan"], "--memory-budget must be a positive number of GiB"),
        (["--flag-relative-delta", "-1"], "--flag-relative-delta must be a finite number of at least 0"),
        (["--max-length", "0"], "--max-length must be a positive number of tokens"),
        (["--output-index", "-1"], "--output-index must be 0 or more"),
        (["--keywords", "none.txt"], "--keywords 'none.txt' is neither 'default', 'retro_search' nor an existing file"),
        (["--processes", "0"], "--processes must be 'auto' or a positive integer, got 0"),
        (["--processes", "two"], "--processes must be 'auto' or a positive integer, got 'two'"),
        (["--processes", "2", "--device", "cuda:1"], "--device cuda:1 names one device; with --processes"),
    ],
)
def test_bad_arguments_are_refused_before_the_model_loads(tmp_path, traces_file, monkeypatch, capsys, extra, message):
    import segattr_utils.commands.trace_file as trace_file

    def not_called(*args, **kwargs):
        pytest.fail("a bad argument must be refused before this")

    monkeypatch.setattr(models, "load_causal_lm", not_called)
    monkeypatch.setattr(trace_file, "read_records", not_called)  # nor is the traces file read
    assert _score(tmp_path / "model", traces_file, tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"segattr score: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_a_missing_traces_file_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(models, "load_causal_lm", lambda *a, **k: pytest.fail("loaded"))
    assert _score(tmp_path / "model", tmp_path / "nowhere.jsonl", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err == f"segattr score: the trace file {str(tmp_path / 'nowhere.jsonl')!r} does not exist\n"


# ----------------------------------------------------------------------------------------------
# Memory: the out-of-memory ladder and the cost estimator's choice


def _failing_engine(monkeypatch, fails):
    """The IG engine, raising ``torch.OutOfMemoryError`` where ``fails(call, chunk, checkpointing)``; the
    calls are recorded as (chunk, checkpointing)."""
    import torch

    real, calls = engine.token_attributions, []

    def attribute(*args, internal_batch_size, activation_checkpointing, **kwargs):
        calls.append((internal_batch_size, activation_checkpointing))
        if fails(len(calls), internal_batch_size, activation_checkpointing):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 84.8 GiB")
        return real(
            *args, internal_batch_size=internal_batch_size, activation_checkpointing=activation_checkpointing, **kwargs
        )

    monkeypatch.setattr(engine, "token_attributions", attribute)
    return calls


#: Fixed settings, so that the ladder is known: 4 points per pass, then 2, 1, then the same checkpointed.
LADDER = [(4, False), (2, False), (1, False), (4, True), (2, True), (1, True)]
FIXED = ["--internal-batch-size", "4", "--activation-checkpointing", "off"]


def test_out_of_memory_is_retried_with_less_and_recorded(scored_dir, r1_model_dir, traces_file, tmp_path, monkeypatch):
    # only one checkpointed point per pass fits
    calls = _failing_engine(monkeypatch, lambda call, chunk, checkpointing: chunk > 1 or not checkpointing)
    out = tmp_path / "scores"
    assert _score(r1_model_dir, traces_file, out, *FIXED) == 0
    assert calls == LADDER * len(SCORED)
    traces = pd.read_parquet(out / "traces.parquet")
    assert list(traces["trace_id"]) == SCORED
    assert list(traces["internal_batch_size"]) == [1] * 3 and traces["activation_checkpointing"].all()
    assert list(traces["out_of_memory_retries"]) == [len(LADDER) - 1] * 3
    stored = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["scored"]["settings"]["out_of_memory_retries"] for r in stored if r["skipped"] is None] == [5] * 3
    # the attributions are those of the run that had memory enough (other chunks, no checkpointing)
    reference = pd.read_parquet(scored_dir / "segments.parquet")
    for got, want in zip(
        pd.read_parquet(out / "segments.parquet")["token_attributions"], reference["token_attributions"]
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_out_of_memory_everywhere_skips_the_trace_and_the_run_goes_on(
    r1_model_dir, traces_file, tmp_path, monkeypatch, capsys
):
    calls = _failing_engine(monkeypatch, lambda call, chunk, checkpointing: call <= len(LADDER))  # "sum": every try
    out = tmp_path / "scores"
    assert _score(r1_model_dir, traces_file, out, *FIXED) == 0
    assert calls[: len(LADDER)] == LADDER and len(calls) == len(LADDER) + 2
    skipped = pd.read_csv(out / "skipped.csv").set_index("trace_id")
    assert skipped.loc["sum", "reason"] == "out_of_memory"
    assert skipped.loc["sum", "detail"].startswith("out_of_memory after 6 attempts (4 point(s) per pass; ")
    assert list(pd.read_parquet(out / "traces.parquet")["trace_id"]) == ["double", "wrong"]
    assert "skipped 1 (out_of_memory): sum" in capsys.readouterr().out
    # a rerun keeps it skipped; --retry-out-of-memory attributes it again (here with the memory it needs)
    assert _score(r1_model_dir, traces_file, out, *FIXED) == 0
    assert len(calls) == len(LADDER) + 2
    assert _score(r1_model_dir, traces_file, out, *FIXED, "--retry-out-of-memory") == 0
    assert calls[len(LADDER) + 2 :] == [(4, False)]
    assert list(pd.read_parquet(out / "traces.parquet")["trace_id"]) == SCORED


def test_score_trace_raises_out_of_memory_with_its_reason(r1_model_dir, monkeypatch):
    from segattr_utils import AttributionOutOfMemoryError

    model, tokenizer = models.load_causal_lm(str(r1_model_dir), dtype="float32", device="cpu")
    calls = _failing_engine(monkeypatch, lambda *_: True)
    record = R1_TRACES[0]
    with pytest.raises(AttributionOutOfMemoryError, match="out_of_memory after 2 attempts") as raised:
        scored_trace.score_trace(
            model,
            tokenizer,
            record["question"],
            record["output"],
            record["answer"],
            n_steps=4,
            internal_batch_size=2,
            activation_checkpointing=True,
        )
    assert raised.value.reason == "out_of_memory" and isinstance(raised.value, ValueError)
    assert calls == [(2, True), (1, True)]  # the ladder from the settings given: halved, already checkpointed


LONG = {
    "id": "repeated",
    "question": "What is 5 + 5?",
    "output": "<think>\nOkay, 5 + 5 = 10."
    + "".join(f"\n\nWait, let me check it again: 5 + 5 = 10, step {i}." for i in range(40))
    + "\n</think>\n\nThe final answer is \\boxed{10}.",
    "answer": "10",
}


def test_a_small_memory_budget_makes_the_estimator_checkpoint(r1_model_dir, tmp_path):
    import torch

    from segattr_utils.data.questions import r1_prompt
    from segattr_utils.method.ig_cost import DEFAULT_MARGIN, estimate_ig_cost
    from segattr_utils.method.token_spans import build_attribution_sequence

    model, tokenizer = models.load_causal_lm(str(r1_model_dir), dtype="float32", device="cpu")
    question, output, answer = LONG["question"], LONG["output"], LONG["answer"]
    unchecked = scored_trace.score_trace(
        model,
        tokenizer,
        question,
        output,
        answer,
        n_steps=4,
        internal_batch_size=None,
        activation_checkpointing=False,
        warn_relative_delta=None,
    )
    sequence = build_attribution_sequence(tokenizer, r1_prompt(tokenizer, question), list(unchecked.segments), answer)
    n_tokens, answer_tokens = len(sequence), sequence.answer_span[1] - sequence.answer_span[0]
    assert n_tokens == unchecked.n_tokens > 400  # a long trace for this model

    def working(chunk, checkpointing):
        cost = estimate_ig_cost(
            model.config,
            n_tokens,
            points_per_chunk=chunk,
            activation_checkpointing=checkpointing,
            dtype=torch.float32,
            n_steps=4,
            answer_tokens=answer_tokens,
        )
        return cost.working_bytes

    # a budget between one checkpointed point per pass and one unchecked point per pass (less the margin)
    assert working(1, True) < working(1, False)
    budget = (working(1, True) + working(1, False)) / 2 / (1 - DEFAULT_MARGIN)
    expected_chunk = max(c for c in (1, 2, 4) if working(c, True) <= budget * (1 - DEFAULT_MARGIN))
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps(LONG) + "\n", encoding="utf-8")
    out = tmp_path / "scores"
    gib = repr(budget / 2**30)
    assert _score(r1_model_dir, path, out, "--max-length", "1024", "--memory-budget", gib) == 0
    traces = pd.read_parquet(out / "traces.parquet")
    assert traces["activation_checkpointing"].tolist() == [True]
    assert traces["internal_batch_size"].tolist() == [expected_chunk]
    assert traces["out_of_memory_retries"].tolist() == [0]
    rows = pd.read_parquet(out / "segments.parquet")
    for got, want in zip(rows["token_attributions"], unchecked.token_attributions):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # with the device's free memory (no budget) the same trace is not checkpointed
    assert _score(r1_model_dir, path, tmp_path / "free", "--max-length", "1024") == 0
    assert pd.read_parquet(tmp_path / "free" / "traces.parquet")["activation_checkpointing"].tolist() == [False]
