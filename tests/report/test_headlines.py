"""The headline registry: every reader on hand-made artifacts (values computed by hand), on an empty results
folder (missing, never NaN, no folder created) and on the committed results/tiny (every headline finite)."""

from __future__ import annotations

import math

import pytest

from segattr_utils import dag
from segattr_utils.config import find_project_root, load_profile
from segattr_utils.report.headlines import BY_NAME, HEADLINES, Artifacts, Missing, finite, only_row, read_headlines

from ..fixtures.run_artifacts import EXPECTED, MISSING, NOTES, run_profile, write_run


def test_the_registry_covers_every_stage_with_results_and_names_are_unique():
    assert len(BY_NAME) == len(HEADLINES)
    stages = {h.stage.folder for h in HEADLINES}
    assert {"00_world", "03_ig_attribution", "04_confidence_delta", "05_linguistics"} <= stages
    assert {"06_distribution_position", "07_truncation_judge", "09_evaluation"} <= stages
    assert set(EXPECTED) | set(MISSING) == set(BY_NAME)
    for headline in HEADLINES:
        assert headline.paper_sign in (None, 1, -1)
        assert headline.effect or headline.paper_sign is None


def test_every_reader_on_hand_made_artifacts(tmp_path):
    profile = run_profile(tmp_path / "results")
    write_run(profile)
    readings = {r.headline.name: r for r in read_headlines(profile)}
    for name, expected in EXPECTED.items():
        reading = readings[name]
        assert reading.missing == "", f"{name}: {reading.missing}"
        assert reading.value == pytest.approx(expected, abs=1e-9), name
    for name, reason in MISSING.items():
        assert readings[name].value is None, name
        assert reason in readings[name].missing, (name, readings[name].missing)
    for name, label in NOTES.items():
        assert readings[name].note == label


def test_an_absent_run_reads_missing_and_creates_nothing(tmp_path):
    profile = run_profile(tmp_path / "results")
    readings = read_headlines(profile)
    assert all(r.value is None for r in readings)
    assert all("not found" in r.missing for r in readings)
    base = next(r for r in readings if r.headline.name == "base_greedy_acc_id")
    assert "tiny/00_world/base_eval.csv not found (notebook 00_world has not run)" == base.missing
    assert not (tmp_path / "results").exists()


def test_a_run_that_stopped_after_notebook_08_has_no_stage_09_headlines(tmp_path):
    profile = run_profile(tmp_path / "results")
    write_run(profile)
    dag.EVALUATION.path(profile, "graded").unlink()
    readings = {r.headline.name: r for r in read_headlines(profile)}
    assert readings["base_final_loss"].value == 0.25
    assert readings["table1_greedy_acc_change_self"].value is None
    assert "09_evaluation/graded.parquet not found" in readings["table1_greedy_acc_change_self"].missing
    assert readings["fig5_best_tau"].value is None
    # the paper tables are still there: their p-values read
    assert readings["table1_pass1_p_self"].value == 0.04


def test_nan_and_absent_rows_are_missing_not_nan():
    import pandas as pd

    with pytest.raises(Missing, match="not computed"):
        finite(float("nan"), "x")
    with pytest.raises(Missing, match="no value"):
        finite(None, "x")
    frame = pd.DataFrame({"suite": ["test_id"], "accuracy": [0.5]})
    assert only_row(frame, "t", suite="test_id")["accuracy"] == 0.5
    with pytest.raises(Missing, match="no row with suite = 'test_ood'"):
        only_row(frame, "t", suite="test_ood")
    with pytest.raises(Missing, match="no column"):
        only_row(frame, "t", benchmark="x")


def test_paths_are_the_dag_paths_of_the_profile(tmp_path):
    profile = run_profile(tmp_path / "results")
    write_run(profile)
    artifacts = Artifacts(profile)
    assert artifacts.path(dag.WORLD, "base_eval") == dag.WORLD.path(profile, "base_eval")
    with pytest.raises(KeyError):
        artifacts.path(dag.WORLD, "no_such_artifact")


def test_every_headline_reads_a_finite_number_from_the_committed_tiny_results():
    root = find_project_root()
    if not (root / "results" / "tiny" / "09_evaluation" / "graded.parquet").exists():
        pytest.skip("results/tiny is not committed in this checkout")
    readings = read_headlines(load_profile("tiny"), root)
    missing = {r.headline.name: r.missing for r in readings if r.value is None}
    assert not missing
    assert all(math.isfinite(r.value) for r in readings)
    notes = {r.headline.name: r.note for r in readings if r.note}
    assert set(notes) == {"table2_best_greedy_acc", "table3_best_greedy_acc", "table4_best_greedy_acc"}
