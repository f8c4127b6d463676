"""Stage 06's segment-level faithfulness (beyond the paper) on hand-made stage 01-05 artifacts and the
tiny random model of ``conftest``: the settings are validated, each ordering ranks in the direction its
measure claims (checked against rankings written out by hand), the curves' end points equal a plain
forward pass of the real and of the fully masked sequence, the artifacts have their columns and no NaN,
a rerun recomputes nothing, and the whole stage writes its table, figure and beyond-the-paper rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from segattr_utils import dag, services
from segattr_utils.artifacts import RecordStore, read_table, write_table
from segattr_utils.config import Profile
from segattr_utils.llm.generation import derive_seed
from segattr_utils.measures import faithfulness_run
from segattr_utils.measures.faithfulness import random_order
from segattr_utils.method.token_spans import build_attribution_sequence
from segattr_utils.report.paper_vs_run import beyond_paper_marker
from segattr_utils.run_log import read_run_log
from segattr_utils.stages import stage06_distribution_position as stage

from .conftest import QUESTIONS

#: Correct traces with their ground-truth kinds (q1:correct has one segment and is left out).
TRACES = {
    "q0:correct": (
        ["Okay, so 2 + 1 = 3.", "\n\nWait, so 2 + 1 = 3.", "\n\nAnother step, 3 * 2 = 6. So the result is 6."],
        ["productive", "repetition", "productive"],
    ),
    "q0:extra": (
        ["Okay, so 2 + 1 = 3.", "\n\nWait, what if I", "\n\nAnother step, 3 * 2 = 6.", "\n\nSo the result is 6."],
        ["productive", "truncated", "productive", "verification"],
    ),
    "q1:extra": (["Okay, 5 - 1 = 4.", "\n\nWait, 5 - 1 = 4. So the result is 4."], ["productive", "repetition"]),
    "q1:correct": (["Okay, 5 - 1 = 4. So the result is 4."], ["productive"]),
}
#: Per trace: normalised strength (stage 03), removal perplexity increase and mean entropy (stage 05),
#: confidence Δ (stage 04).
SIGNALS = {
    "q0:correct": ([0.2, 0.1, 0.7], [0.5, 0.9, 0.1], [0.9, 0.1, 0.2], [0.0, -0.1, 0.3]),
    "q0:extra": ([0.1, 0.2, 0.4, 0.3], [0.2, 0.1, 0.4, 0.3], [0.5, 0.6, 0.1, 0.2], [0.1, 0.0, 0.5, 0.2]),
    "q1:extra": ([0.3, 0.7], [0.8, 0.2], [0.3, 0.4], [0.6, 0.1]),
    "q1:correct": ([1.0], [0.4], [0.2], [0.5]),
}
ORDERINGS = ["ig", "oracle", "random", "length", "perplexity", "entropy", "confidence"]


def write_artifacts(profile: Profile, signals: dict = SIGNALS, with_confidence: bool = True) -> None:
    """Stage 01-05 tables of :data:`TRACES` (the correct traces) and ``conftest``'s incorrect trace."""
    kept = read_table(dag.GENERATION.path(profile, "kept_traces"))
    base = kept.set_index("trace_id")
    rows, segments, scores, confidence, linguistics = [], [], [], [], []
    for tid, (texts, kinds) in TRACES.items():
        qid = tid.split(":")[0]
        question, answer = QUESTIONS[qid]
        template = base.loc[f"{qid}:correct"].to_dict()
        rows.append({**template, "trace_id": tid, "question_id": qid, "question": question, "answer": answer})
        strength, removal, entropy, delta = signals[tid]
        for index, (text, kind) in enumerate(zip(texts, kinds)):
            common = {"trace_id": tid, "segment": index, "correct": True, "n_segments": len(texts)}
            segments.append({**common, "question_id": qid, "text": text, "n_chars": len(text), "kind": kind})
            scores.append(
                {
                    **common,
                    "n_tokens": 5,
                    "norm_strength": strength[index],
                    "consistency": 0.5,
                    "important": strength[index] >= 0.3,
                    "high_strength": True,
                    "kind": kind,
                }
            )
            confidence.append({"trace_id": tid, "segment": index, "delta": delta[index]})
            linguistics.append(
                {
                    "trace_id": tid,
                    "segment": index,
                    "correct": True,
                    "n_tokens": 5,
                    "log_ppl": 0.1,
                    "entropy": entropy[index],
                    "bleu": 0.0,
                    "removal_ppl_increase": removal[index],
                }
            )
    incorrect = kept[~kept["correct"]]
    old_segments = read_table(dag.SEGMENTATION.path(profile, "segments"))
    old_scores = read_table(dag.IG_ATTRIBUTION.path(profile, "segment_scores"))
    write_table(dag.GENERATION.path(profile, "kept_traces"), pd.concat([pd.DataFrame(rows), incorrect]))
    write_table(
        dag.SEGMENTATION.path(profile, "segments"),
        pd.concat([pd.DataFrame(segments), old_segments[~old_segments["correct"]]], ignore_index=True),
    )
    write_table(
        dag.IG_ATTRIBUTION.path(profile, "segment_scores"),
        pd.concat([pd.DataFrame(scores), old_scores[~old_scores["correct"]]], ignore_index=True),
    )
    if with_confidence:
        write_table(dag.CONFIDENCE_DELTA.path(profile, "segment_confidence"), pd.DataFrame(confidence))
    write_table(dag.LINGUISTICS.path(profile, "segment_linguistics"), pd.DataFrame(linguistics))


def with_faithfulness(profile: Profile, **overrides) -> Profile:
    spec = {**profile.get_path("analysis.faithfulness"), **overrides}
    return Profile({**profile, "analysis": {**profile["analysis"], "faithfulness": spec}})


def manual_f(model, ids: list[int], span: tuple[int, int]) -> float:
    """F from a plain forward: full logits, log-softmax, the answer ids gathered at t - 1."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    return float(sum(log_probs[t - 1, ids[t]] for t in range(*span)))


def descending(values) -> list[int]:
    """Indices by value, highest first, ties by index (written without the package's helpers)."""
    return [int(i) for i in np.lexsort((np.arange(len(values)), -np.asarray(values, dtype=float)))]


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"enabled": "yes"}, "enabled must be true or false"),
        ({"n_traces": 0}, "n_traces must be an integer >= 1 or null"),
        ({"n_traces": 2.5}, "n_traces"),
        ({"budgets": []}, "budgets must be a non-empty list"),
        ({"budgets": [0.0, 0.5]}, "budgets: every budget must lie in"),
        ({"budgets": [0.1, 0.1]}, "duplicate"),
        ({"aopc_steps": -1}, "aopc_steps"),
        ({"normalised_min_gap": -0.5}, "normalised_min_gap"),
        ({"normalised_min_gap": float("nan")}, "normalised_min_gap"),
        ({"random_seed": -1}, "random_seed"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"curve_grid_points": 1}, "curve_grid_points"),
        ({"budget": [0.1]}, r"unknown settings \['budget'\]"),
    ],
)
def test_bad_settings_raise_clear_errors(profile, overrides, match):
    bad = with_faithfulness(profile, **overrides)
    with pytest.raises(ValueError, match=match):
        stage.faithfulness_settings(bad)
    with pytest.raises(ValueError, match=match):  # the stage stops before any work
        stage.run(bad)


def test_missing_section_or_setting_raise(profile):
    spec = dict(profile.get_path("analysis.faithfulness"))
    spec.pop("batch_size")
    missing = Profile({**profile, "analysis": {**profile["analysis"], "faithfulness": spec}})
    with pytest.raises(ValueError, match=r"missing settings \['batch_size'\]"):
        stage.faithfulness_settings(missing)
    analysis = {k: v for k, v in profile["analysis"].items() if k != "faithfulness"}
    with pytest.raises(ValueError, match="no analysis.faithfulness section"):
        stage.faithfulness_settings(Profile({**profile, "analysis": analysis}))


def test_profiles_settings_are_valid():
    from segattr_utils.config import load_profile

    for name in ("smoke", "tiny", "paper"):
        settings = stage.faithfulness_settings(load_profile(name))
        assert settings.enabled and settings.budgets == (0.1, 0.2, 0.5)
    # 25 traces keep the paper profile within 24 h on 8 x H200 (make gpu-hours, stage 06's row)
    assert stage.faithfulness_settings(load_profile("paper")).n_traces == 25


# --------------------------------------------------------------------------- orderings


def test_trace_orders_rank_in_each_measures_direction():
    item = {
        "trace_id": "t",
        "norm_strength": [0.2, 0.1, 0.7, 0.0],
        "kinds": ["repetition", "productive", "verification", "productive"],
        "removal_ppl_increase": [0.5, 0.9, 0.1, 0.2],
        "entropy": [0.9, 0.2, 0.5, 0.3],  # mean entropy; times tokens [1, 10, 2, 3]: [0.9, 2.0, 1.0, 0.9]
        "confidence_delta": [0.0, -0.1, 0.3, 0.3],
    }
    orders = faithfulness_run.trace_orders(item, [1, 10, 2, 3], seed=4)
    assert list(orders) == ORDERINGS
    assert orders["ig"] == [2, 0, 1, 3]
    assert orders["oracle"] == [1, 3, 2, 0]  # productive, then verification, then the redundant repetition
    assert orders["length"] == [1, 3, 2, 0]
    assert orders["perplexity"] == [1, 0, 3, 2]
    assert orders["entropy"] == [1, 2, 0, 3]  # the SUM: by mean entropy it would be [0, 2, 3, 1]
    assert orders["confidence"] == [2, 3, 0, 1]
    assert orders["random"] == random_order(4, derive_seed(4, "faithfulness-random", "t"))
    # seeded by the trace id: other traces draw other permutations (6 segments, 8 traces)
    six = {**item, **{k: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6] for k in item if k not in ("trace_id", "kinds")}}
    draws = {
        str(faithfulness_run.trace_orders({**six, "trace_id": f"t{i}", "kinds": None}, [1] * 6, seed=4)["random"])
        for i in range(8)
    }
    assert len(draws) > 1
    assert "oracle" not in faithfulness_run.trace_orders({**item, "kinds": None}, [1, 10, 2, 3], seed=4)


def test_sample_traces_is_seeded_and_sorted():
    ids = [f"t{i}" for i in range(10)]
    sample = faithfulness_run.sample_traces(ids, 4, seed=1)
    assert len(sample) == 4 and sample == sorted(sample) and set(sample) <= set(ids)
    assert faithfulness_run.sample_traces(ids, 4, seed=1) == sample
    assert (
        faithfulness_run.sample_traces(ids, None, seed=1)
        == sorted(ids)
        == faithfulness_run.sample_traces(ids, 20, seed=1)
    )


# --------------------------------------------------------------------------- the analysis


def test_faithfulness_on_the_smoke_fixture(profile, monkeypatch):
    write_artifacts(profile)
    scores = stage.load_scores(profile)
    result = stage.measure_faithfulness(profile, scores)
    assert result["counts"] == {"correct": 4, "single_segment": 1, "measured": 3}
    assert result["orderings"] == ORDERINGS

    # artifacts: per-trace rows with the right columns and no NaN, one row per (trace, ordering)
    rows = read_table(dag.DISTRIBUTION_POSITION.path(profile, "faithfulness"))
    assert list(rows.columns) == faithfulness_run.row_columns((0.1, 0.2, 0.5))
    assert len(rows) == 3 * len(ORDERINGS)
    assert rows.groupby("trace_id")["ordering"].apply(list).map(lambda o: o == ORDERINGS).all()
    scored = rows.drop(columns=["trace_id", "ordering", "note", "deletion_auc_normalised", "insertion_auc_normalised"])
    assert np.isfinite(scored.to_numpy(dtype=float)).all()
    assert str(rows["deletion_auc_normalised"].dtype) == "Float64"  # None stays <NA>, never NaN
    summary = read_table(dag.DISTRIBUTION_POSITION.path(profile, "faithfulness_summary"))
    assert summary["ordering"].tolist() == ORDERINGS and (summary["n_traces"] == 3).all()
    for column in ("deletion_area_median", "deletion_area_mean", "insertion_area_median", "aopc_mean"):
        assert summary[column].notna().all()
    ig = rows[rows["ordering"] == "ig"]
    assert summary.loc[0, "deletion_area_median"] == pytest.approx(float(np.median(ig["deletion_area"])))
    assert summary.loc[0, "comprehensiveness_20_mean"] == pytest.approx(float(ig["comprehensiveness_20"].mean()))
    tests = read_table(dag.DISTRIBUTION_POSITION.path(profile, "faithfulness_tests"))
    assert len(tests) == 2 * 6 and set(tests["ordering"]) == set(ORDERINGS) - {"ig"}
    curves = read_table(dag.DISTRIBUTION_POSITION.path(profile, "faithfulness_curves"))
    assert len(curves) == 101 * len(ORDERINGS) and curves[["deletion_drop", "insertion_gain"]].notna().all().all()
    assert np.allclose(curves.loc[curves["fraction"] == 0, ["deletion_drop", "insertion_gain"]], 0.0)

    # the stored orders are the hand rankings; the curves' end points are plain forward passes
    store = RecordStore(
        dag.DISTRIBUTION_POSITION.path(profile, "faithfulness_store"), key_fn=faithfulness_run.record_key
    )
    records = {r["trace_id"]: r for r in store.records()}
    assert set(records) == {"q0:correct", "q0:extra", "q1:extra"}
    model, tokenizer = services.load_model(profile, "generator")
    pad = services.baseline_token(profile, tokenizer)
    for tid, record in records.items():
        strength, removal, entropy, delta = SIGNALS[tid]
        lengths = record["segment_lengths"]
        assert record["orders"]["ig"] == descending(strength)
        assert record["orders"]["perplexity"] == descending(removal)
        assert record["orders"]["entropy"] == descending(np.asarray(entropy) * np.asarray(lengths))
        assert record["orders"]["confidence"] == descending(delta)
        assert record["orders"]["length"] == descending(lengths)
        kinds = TRACES[tid][1]
        assert kinds[record["orders"]["oracle"][0]] == "productive"
        assert kinds[record["orders"]["oracle"][-1]] in ("repetition", "truncated", "verification")
        question, answer = QUESTIONS[tid.split(":")[0]]
        sequence = build_attribution_sequence(
            tokenizer,
            services.prompt(tokenizer, question),
            TRACES[tid][0],
            answer,
            suffix_template=profile.get_path("attribution.answer_suffix"),
        )
        assert lengths == [e - s for s, e in sequence.segment_spans] and record["n_tokens"] == len(sequence)
        masked = list(sequence.input_ids)
        for start, end in sequence.segment_spans:
            masked[start:end] = [pad] * (end - start)
        for name in ORDERINGS:
            deletion, insertion = record["deletion"][name], record["insertion"][name]
            assert len(deletion) == len(insertion) == len(lengths) + 1
            assert deletion[0] == pytest.approx(manual_f(model, sequence.input_ids, sequence.answer_span), abs=1e-5)
            assert deletion[-1] == pytest.approx(manual_f(model, masked, sequence.answer_span), abs=1e-5)
        assert record["n_forward"] <= 2 + 2 * (len(lengths) - 1) * len(ORDERINGS)
        assert "seconds" not in record  # data only: the time goes to the run log
    assert all(faithfulness_run.faithfulness_checks(result).values())

    # a rerun computes nothing (the model is not even loaded) and writes the same rows
    monkeypatch.setattr(services, "load_model", lambda *a, **k: pytest.fail("a finished trace was recomputed"))
    again = stage.measure_faithfulness(profile, scores)
    pd.testing.assert_frame_equal(again["rows"], result["rows"])
    # a changed budget needs no forward pass either: the scores are recomputed from the stored curves
    other = stage.measure_faithfulness(with_faithfulness(profile, budgets=[0.3]), scores)
    assert "comprehensiveness_30" in other["rows"] and "comprehensiveness_10" not in other["rows"]


def test_two_runs_from_scratch_write_the_same_bytes(reference_profile):
    profile = reference_profile
    write_artifacts(profile)
    table = dag.DISTRIBUTION_POSITION.path(profile, "faithfulness")
    store = dag.DISTRIBUTION_POSITION.path(profile, "faithfulness_store")
    stage.run(profile)
    first = table.read_bytes(), store.read_bytes()
    table.unlink()
    store.unlink()  # the second run measures every trace again
    stage.run(profile)
    assert (table.read_bytes(), store.read_bytes()) == first
    assert not {"seconds", "trace_seconds"} & set(read_table(table).columns)
    log = read_run_log(profile, dag.DISTRIBUTION_POSITION)
    assert log["what"].str.startswith("faithfulness: ").sum() == 4  # both runs timed, in the run log


def test_a_store_with_timed_records_is_read_as_before(profile, monkeypatch):
    """Records that carry a wall-clock ``seconds`` field (stores written before records held data only)
    are reused as they are: nothing is recomputed and the rows are the same."""
    write_artifacts(profile)
    scores = stage.load_scores(profile)
    result = stage.measure_faithfulness(profile, scores)
    path = dag.DISTRIBUTION_POSITION.path(profile, "faithfulness_store")
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    path.write_text("".join(json.dumps({**r, "seconds": 0.25 * i}) + "\n" for i, r in enumerate(lines)), "utf-8")
    monkeypatch.setattr(services, "load_model", lambda *a, **k: pytest.fail("a stored trace was recomputed"))
    again = stage.measure_faithfulness(profile, scores)
    pd.testing.assert_frame_equal(again["rows"], result["rows"])
    assert all(again[name].equals(result[name]) for name in ("summary", "tests", "curves"))


def test_changed_signal_recomputes_only_that_trace(profile, monkeypatch):
    write_artifacts(profile)
    stage.measure_faithfulness(profile, stage.load_scores(profile))
    changed = {**SIGNALS, "q1:extra": ([0.3, 0.7], [0.2, 0.8], [0.3, 0.4], [0.6, 0.1])}  # perplexity order flips
    write_artifacts(profile, changed)
    measured = []
    original = stage.faithfulness_record
    monkeypatch.setattr(stage, "faithfulness_record", lambda *a: measured.append(a[2]["trace_id"]) or original(*a))
    result = stage.measure_faithfulness(profile, stage.load_scores(profile))
    assert measured == ["q1:extra"]
    record = next(r for r in result["records"] if r["trace_id"] == "q1:extra")
    assert record["orders"]["perplexity"] == [1, 0]


def test_n_traces_samples_and_missing_signals_raise(profile):
    write_artifacts(profile)
    result = stage.measure_faithfulness(with_faithfulness(profile, n_traces=2), stage.load_scores(profile))
    assert result["counts"]["measured"] == 2 and result["rows"]["trace_id"].nunique() == 2
    write_artifacts(profile, with_confidence=False)
    dag.CONFIDENCE_DELTA.path(profile, "segment_confidence").unlink(missing_ok=True)
    with pytest.raises(ValueError, match="has no 'confidence_delta': run notebook 04"):
        stage.measure_faithfulness(profile, stage.load_scores(profile))


def test_no_measurable_trace_gives_empty_tables_and_a_sentence(profile):
    write_artifacts(profile)
    scores = stage.load_scores(profile)
    only_single = scores[scores["trace_id"].isin(["q1:correct", "q1:incorrect"])]
    result = stage.measure_faithfulness(profile, only_single)
    assert result["rows"].empty and result["summary"].empty and result["tests"].empty
    assert list(result["rows"].columns) == faithfulness_run.row_columns((0.1, 0.2, 0.5))
    assert "no faithfulness result" in stage.faithfulness_sentence(result)
    rows = stage.faithfulness_comparison_rows(result)
    assert all(r["paper"] == beyond_paper_marker() for r in rows) and all("n/a" in r["run"] for r in rows)


def test_the_whole_stage_with_and_without_faithfulness(reference_profile):
    profile = reference_profile
    write_artifacts(profile)
    result = stage.run(profile)
    assert not result.failed_checks(), result.failed_checks()
    assert any(name.startswith("faithfulness:") for name in result.checks)
    assert result.figures["faithfulness"].is_file()
    summary = result.tables["faithfulness_summary"]
    assert summary["ordering"].tolist() == ORDERINGS
    beyond = result.comparison[result.comparison["paper"] == beyond_paper_marker()]
    assert len(beyond) == 3 and beyond["section"].str.contains("beyond the paper").all()
    assert beyond["statistic"].iloc[0].startswith("deletion area")
    sentence = result.values["faithfulness_sentence"]
    assert "3 correct traces" in sentence and "nats" in sentence
    assert "faithfulness_seconds_per_trace" not in result.values
    log = read_run_log(profile, dag.DISTRIBUTION_POSITION)  # the timings: in the run log, not in the data
    assert log["what"].str.startswith("faithfulness: ").sum() == 2 and (log["seconds"] > 0).all()
    assert (result.comparison["paper"] != beyond_paper_marker()).sum() == 6  # the paper's own rows stay

    off = stage.run(with_faithfulness(profile, enabled=False))
    assert "faithfulness_summary" not in off.tables and "faithfulness" not in off.figures
    assert not any(name.startswith("faithfulness") for name in off.checks)
    assert (off.comparison["paper"] != beyond_paper_marker()).all()
