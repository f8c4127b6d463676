"""Stage 04 end to end on hand-made stage 01-03 artifacts and a tiny random model: the artifact columns
other notebooks read, one row per segment, resuming after an interruption gives the records of an
uninterrupted run; with the paper's ablation source the reference traces are measured too (and only
then), Δ of each recomputed from the stored forced answers."""

from __future__ import annotations

import json

import pandas as pd

from segattr_utils import dag
from segattr_utils.artifacts import RecordStore, read_table
from segattr_utils.config import results_dir
from segattr_utils.stages import stage04_confidence_delta as confidence_delta

from .conftest import QUESTIONS, REFERENCE


def test_confidence_stage_columns_rows_and_resume(profile):
    table = confidence_delta.segment_confidence(profile)
    assert list(table.columns) == ["trace_id", "segment", "confidence_before", "confidence_after", "delta"]
    # one row per segment of every correct trace (3 + 1), none for the incorrect trace
    assert table["trace_id"].tolist() == ["q0:correct"] * 3 + ["q1:correct"]
    assert table["segment"].tolist() == [0, 1, 2, 0]
    assert (table["delta"] == table["confidence_after"] - table["confidence_before"]).all()
    # consecutive segments chain: the confidence after segment k is the one before segment k + 1
    q0 = table[table["trace_id"] == "q0:correct"]
    assert q0["confidence_after"].iloc[:-1].tolist() == q0["confidence_before"].iloc[1:].tolist()

    store = (results_dir(profile) / "04_confidence_delta") / "forced_answers.jsonl"
    lines = store.read_text().splitlines()
    assert len(lines) == 4 + 2  # prefixes 0..3 of q0 and 0..1 of q1
    n_samples = profile.get_path("analysis.confidence.n_samples")
    assert all(json.loads(line)["n_samples"] == n_samples for line in lines)
    # Interrupt: keep the first record and a cut line; the resumed run redoes the rest identically.
    store.write_text(lines[0] + "\n" + lines[1][:20])
    resumed = confidence_delta.segment_confidence(profile)
    pd.testing.assert_frame_equal(resumed, table)
    assert sorted(store.read_text().splitlines()) == sorted(lines)


def test_reference_traces_are_measured_when_an_ablation_trains_on_them(reference_profile):
    tables = confidence_delta.segment_confidences(reference_profile)
    assert list(tables) == ["self", "reference"]
    reference = tables["reference"]
    pd.testing.assert_frame_equal(
        read_table(dag.CONFIDENCE_DELTA.path(reference_profile, "reference_segment_confidence")), reference
    )
    # one row per reference segment (3 + 2); the self table is the Sec. 3 one, without reference traces
    assert reference["trace_id"].tolist() == ["q0:reference"] * 3 + ["q1:reference"] * 2
    assert reference["segment"].tolist() == [0, 1, 2, 0, 1]
    assert tables["self"]["trace_id"].tolist() == ["q0:correct"] * 3 + ["q1:correct"]

    # Δ recomputed from the stored forced answers: c_k = correct answers / samples after k segments
    n_samples = reference_profile.get_path("analysis.confidence.n_samples")
    store = dag.CONFIDENCE_DELTA.path(reference_profile, "reference_forced_answers_store")
    records = RecordStore(store, key_fn=lambda r: [r["trace_id"], r["prefix"]]).records()
    assert len(records) == (3 + 1) + (2 + 1)
    assert all(len(r["answers"]) == r["n_samples"] == n_samples for r in records)
    for qid, segments in REFERENCE.items():
        by_prefix = {
            r["prefix"]: r["n_correct"] / r["n_samples"] for r in records if r["trace_id"] == f"{qid}:reference"
        }
        c = [by_prefix[k] for k in range(len(segments) + 1)]
        rows = reference[reference["trace_id"] == f"{qid}:reference"]
        assert rows["delta"].tolist() == [c[k + 1] - c[k] for k in range(len(segments))]
        assert rows["confidence_before"].tolist() == c[:-1]

    # reproducible: measured again from an empty store, the same answers (seeds from the seed and a tag)
    lines = sorted(store.read_text().splitlines())
    store.unlink()
    again = confidence_delta.segment_confidence(reference_profile, "reference")
    pd.testing.assert_frame_equal(again, reference)
    assert sorted(store.read_text().splitlines()) == lines


def test_no_reference_measurement_when_the_ablations_train_on_self(profile):
    assert profile.get_path("training.ablation_source") == "self"
    assert confidence_delta.measured_sources(profile) == ["self"]
    # the fixture has no world questions: reading the reference traces would fail
    assert list(confidence_delta.segment_confidences(profile)) == ["self"]
    for artifact in ("reference_forced_answers_store", "reference_segment_confidence"):
        assert not dag.CONFIDENCE_DELTA.path(profile, artifact).exists()


def test_reference_delta_by_hand_with_one_sampler_for_both_sources(reference_profile, monkeypatch):
    """A stand-in sampler answers correctly once the forced prefix states the answer ("= 6"): Δ is 1 at
    the first segment that reaches it, 0 elsewhere. Both sources share one sampler, loaded once."""
    from segattr_utils import services

    tokenizer = services.load_role_tokenizer(reference_profile, "generator")
    gold = {question: answer for question, answer in QUESTIONS.values()}
    events = []

    class Generator:
        per_request_seeds = False

        def close(self):
            events.append("close")

    def sample(prompts, n, settings, seed):
        answers = []
        for prompt in prompts:
            answer = next(a for q, a in gold.items() if q in prompt)
            answers.append([f"{answer}}}." if f"= {answer}" in prompt else "0}."] * n)
        return answers

    def load(profile):
        events.append("load")
        return Generator(), tokenizer, sample

    monkeypatch.setattr(confidence_delta, "_forced_answer_sampler", load)
    tables = confidence_delta.segment_confidences(reference_profile)
    assert events == ["load", "close"]
    # q0: "Okay, 2 + 1 = 3." | "Another step, 3 * 2 = 6." | "Wait, so 3 * 2 = 6. ..."; q1: "Okay, 5 - 1 = 4." | ...
    assert tables["reference"]["delta"].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert tables["reference"]["confidence_after"].tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]
    # the self traces: q0 reaches "= 6" in its last segment, q1 in its only one
    assert tables["self"]["delta"].tolist() == [0.0, 0.0, 1.0, 1.0]


def test_a_threshold_on_the_edge_of_its_grid_is_said_to_be():
    from segattr_utils.stages.stage04_confidence_delta import grid_edge_note

    assert "lowest value of the grid" in grid_edge_note(0.5, [0.5, 0.6, 0.7], "τ")
    assert "highest value of the grid" in grid_edge_note(0.9, [0.5, 0.9], "τ")
    assert grid_edge_note(0.6, [0.5, 0.6, 0.7], "τ") == ""
