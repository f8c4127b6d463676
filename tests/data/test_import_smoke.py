"""Notebooks 00-07 on an imported trace file: the smoke profile with ``data.traces`` pointing at
the R1-format file of ``tests/fixtures/r1_traces.py``, under nbval as ``make test-notebooks`` runs them.

Notebook 00 still builds the smoke world and trains its model and tokenizer (the generator role the later
stages use); notebook 01 imports the file instead of generating; every check cell must hold. The tests
below then check that the pipeline ran on the file's traces, with counts worked out by hand from
:func:`smoke_rows`, and wrote nothing under results/smoke.

Run with ``make test-import`` (``pytest -m import_smoke tests/data``): minutes on two cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from segattr_utils import dag, services
from segattr_utils.artifacts import read_table
from segattr_utils.config import load_profile

from ..fixtures.r1_traces import SMOKE_PROBLEMS, smoke_rows, write_import_profile

pytestmark = pytest.mark.import_smoke

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ("00", "01", "02", "03", "04", "05", "06", "07")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Write the trace file and its profile, run notebooks 00-07 on it; the loaded profile."""
    folder = tmp_path_factory.mktemp("import_smoke")
    profile_path = write_import_profile(folder)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "segattr_utils.reproduce", "--profile", str(profile_path), "--nbval", "--fresh"]
    finished = subprocess.run(
        [*command, "--only", *NOTEBOOKS], cwd=ROOT, env=environment, capture_output=True, text=True
    )
    assert finished.returncode == 0, f"notebooks failed on the imported traces:\n{finished.stdout[-6000:]}"
    profile = load_profile(profile_path)
    prepared = sorted(p.name[:2] for p in (Path(profile["results_root"]) / profile.name / "_nbval").glob("*.ipynb"))
    assert prepared == list(NOTEBOOKS)  # every notebook asked for ran under nbval (one item per cell)
    return profile


def test_stage_01_graded_and_kept_the_files_outputs(imported):
    samples = read_table(dag.GENERATION.path(imported, "samples"))
    # smoke_rows by hand: r1-000 [right, right, wrong], r1-001 [right] + [wrong] on line 5, r1-002 [wrong, right],
    # r1-003 right (a string), r1-004 [right, right]: 10 outputs, 7 correct, none rejected
    outputs = {(r.question_id, r.sample): r.correct for r in samples.itertuples()}
    assert outputs == {
        ("r1-000", 0): True,
        ("r1-000", 1): True,
        ("r1-000", 2): False,
        ("r1-001", 0): True,
        ("r1-001", 1): False,
        ("r1-002", 0): False,
        ("r1-002", 1): True,
        ("r1-003", 0): True,
        ("r1-004", 0): True,
        ("r1-004", 1): True,
    }
    assert read_table(dag.GENERATION.path(imported, "rejected_outputs")).empty
    kept = services.kept_traces(imported)
    assert sorted(kept["trace_id"]) == sorted(
        [f"{p.id}:correct" for p in SMOKE_PROBLEMS] + ["r1-000:incorrect", "r1-001:incorrect", "r1-002:incorrect"]
    )
    written = {
        text
        for row in smoke_rows()
        for text in (row["generations"] if isinstance(row["generations"], list) else [row["generations"]])
    }
    assert set(kept["text"]) <= written
    assert set(services.load_questions(imported, "train")["id"]) == {p.id for p in SMOKE_PROBLEMS}


def test_stages_02_to_07_ran_on_the_imported_traces_without_world_ground_truth(imported):
    kept = set(services.kept_traces(imported)["trace_id"])
    segments = read_table(dag.SEGMENTATION.path(imported, "segments"))
    assert set(segments["trace_id"]) == kept and segments["kind"].isna().all()
    scores = read_table(dag.IG_ATTRIBUTION.path(imported, "segment_scores"))
    assert set(scores["trace_id"]) == kept  # every kept trace attributed (attribute_incorrect: true)
    assert dag.CONFIDENCE_DELTA.path(imported, "segment_confidence").is_file()
    assert dag.LINGUISTICS.path(imported, "segment_linguistics").is_file()
    assert not dag.LINGUISTICS.path(imported, "kind_shares").exists()  # no ground-truth kinds
    assert dag.DISTRIBUTION_POSITION.path(imported, "decision_segments").is_file()
    judgements = read_table(dag.TRUNCATION_JUDGE.path(imported, "judgements"))
    assert set(judgements["trace_id"]) <= {t for t in kept if t.endswith(":correct")}
    assert not dag.TRUNCATION_JUDGE.path(imported, "judge_quality").exists()  # no truncation labels


def test_results_stay_in_the_profiles_own_folder(imported):
    assert Path(imported["results_root"]).name == "results"
    assert not (ROOT / "results" / imported.name).exists()
