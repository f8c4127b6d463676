"""make robustness (segattr_utils.robustness): the per-seed profiles, the statistics and the floor by hand,
claim_status, the report, and the orchestration with the notebook runner replaced by a recorder."""

from __future__ import annotations

import copy
import math
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from segattr_utils import dag, robustness
from segattr_utils.config import load_profile, results_dir, save_profile
from segattr_utils.report.headlines import BY_NAME, Reading
from segattr_utils.robustness import (
    NOT_REPRODUCED,
    REPRODUCED,
    UNDETERMINED,
    WITHIN_NOISE,
    RobustnessUnavailable,
    check_seeds,
    claim_status,
    draws,
    headline_table,
    noise_floor,
    robustness_dir,
    robustness_settings,
    seed_dir,
    seed_profile,
    summarise,
)

from .fixtures.run_artifacts import EXPECTED, run_profile, write_run, write_world


def _profile(tmp_path, name="tiny"):
    """The profile with its main run in tmp_path/results and its robustness root in tmp_path/robustness."""
    profile = run_profile(tmp_path / "results", name)
    profile["robustness"] = {**profile["robustness"], "results_root": str(tmp_path / "robustness")}
    return profile


def _flatten(node, prefix=""):
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


# ----------------------------------------------------------------------------------------------
# Settings and per-seed profiles


def test_packaged_settings():
    assert robustness_settings(load_profile("tiny")) == {"seeds": [1, 2], "results_root": None}
    assert robustness_settings(load_profile("smoke"))["seeds"] == [1]
    with pytest.raises(RobustnessUnavailable, match="252 GPU-hours"):
        robustness_settings(load_profile("paper"))


def test_seeds_must_not_repeat_or_be_the_main_run():
    tiny = load_profile("tiny")
    with pytest.raises(RobustnessUnavailable, match="own seed 0"):
        check_seeds(tiny, [0, 1])
    with pytest.raises(RobustnessUnavailable, match="twice"):
        check_seeds(tiny, [1, 1])
    with pytest.raises(RobustnessUnavailable, match="no seed"):
        check_seeds(tiny, [])
    assert check_seeds(tiny, ["3"]) == [3]


def test_default_folders_are_under_results_robustness(tmp_path):
    tiny = load_profile("tiny")
    root = robustness_dir(tiny)
    assert root.parts[-3:] == ("results", "robustness", "tiny")
    assert seed_dir(tiny, 2) == root / "seed-2"
    tiny["robustness"]["results_root"] = "elsewhere/robust"  # relative to the project root
    assert robustness_dir(tiny) == root.parents[2] / "elsewhere" / "robust" / "tiny"


def test_a_seed_profile_changes_the_seed_the_results_root_and_pins_the_world_only(tmp_path):
    profile = _profile(tmp_path)
    original = copy.deepcopy(dict(profile))
    draw = seed_profile(profile, 2)
    assert dict(profile) == original  # the main profile is untouched
    before, after = _flatten(original), _flatten(dict(draw))
    changed = {key for key in before.keys() | after.keys() if before.get(key, "absent") != after.get(key, "absent")}
    assert changed == {"seed", "results_root", "world.seed"}
    assert draw["seed"] == 2 and draw["world"]["seed"] == 0
    assert Path(draw["results_root"]) == (tmp_path / "robustness" / "tiny" / "seed-2").resolve()
    assert Path(draw["results_root"]).is_absolute()
    assert results_dir(draw) == Path(draw["results_root"]) / "tiny"
    # a saved seed profile loads back equal (how the notebooks get it)
    path = save_profile(draw, tmp_path / "profile.yaml")
    assert dict(load_profile(path)) == dict(draw)


def test_the_world_seed_keeps_the_questions_of_the_main_run():
    from segattr_utils.stages.stage00_world import world_seed

    tiny = load_profile("tiny")
    assert world_seed(tiny) == 0
    assert world_seed(seed_profile(tiny, 5)) == 0
    unpinned = copy.deepcopy(dict(tiny))
    unpinned["seed"] = 5
    assert world_seed(unpinned) == 5
    main_world = load_profile("tiny")
    main_world["seed"] = 7  # a main run on seed 7: its draws keep world seed 7
    assert world_seed(seed_profile(main_world, 1)) == 7


def test_a_hub_profile_has_no_world_to_pin(tmp_path):
    paper = load_profile("paper")
    draw = seed_profile(paper, 1)
    changed = {k for k, v in _flatten(dict(draw)).items() if _flatten(dict(paper)).get(k, "absent") != v}
    assert changed == {"seed", "results_root"}


# ----------------------------------------------------------------------------------------------
# Statistics and claims


def test_statistics_by_hand():
    # draws 10 (main), 12, 7: mean 29/3; deviations 1/3, 7/3, -8/3 -> variance (1 + 49 + 64) / 9 / 2 = 19/3
    stats = summarise(10.0, [12.0, 7.0])
    assert stats["draws"] == 3
    assert stats["mean"] == pytest.approx(29 / 3)
    assert stats["sd"] == pytest.approx(math.sqrt(19 / 3))
    assert (stats["min"], stats["max"]) == (7.0, 12.0)
    assert stats["floor"] == 3.0  # |7 - 10|
    # a missing draw is left out, not counted as NaN
    stats = summarise(10.0, [None, 12.0])
    assert stats["draws"] == 2 and stats["mean"] == 11.0 and stats["sd"] == pytest.approx(math.sqrt(2))
    assert stats["floor"] == 2.0
    # the main run alone: no spread, no floor
    assert summarise(10.0, [None, None]) == {
        "draws": 1,
        "mean": 10.0,
        "sd": None,
        "min": 10.0,
        "max": 10.0,
        "floor": None,
    }
    # seeds without the main run: statistics, but no floor
    stats = summarise(None, [1.0, 3.0])
    assert stats["mean"] == 2.0 and stats["floor"] is None
    assert noise_floor(0.0, [-0.5, 0.25]) == 0.5
    assert noise_floor(None, [1.0]) is None and noise_floor(1.0, []) is None


@pytest.mark.parametrize(
    "effect, floor, draws, paper_sign, status",
    [
        (5.0, 2.0, [4.0, 6.5], 1, REPRODUCED),  # beyond the floor, stable sign, the paper's sign
        (-37.0, 16.0, [-21.0, -30.0], -1, REPRODUCED),
        (5.0, 2.0, [4.0, 6.5], None, REPRODUCED),  # no paper direction: a stable effect
        (3.3, 4.9, [-1.6, 1.0], 1, WITHIN_NOISE),  # |effect| <= floor
        (2.0, 2.0, [0.0], 1, WITHIN_NOISE),  # equal to the floor is within noise
        (-1.0, 3.0, [2.0], 1, WITHIN_NOISE),  # against the paper but within noise: the sign is not established
        (0.0, 0.0, [0.0], 1, WITHIN_NOISE),
        (5.0, 1.0, [4.5, -0.5], 1, NOT_REPRODUCED),  # a draw flips the sign (a floor from elsewhere)
        (5.0, 1.0, [4.5, 0.0], 1, NOT_REPRODUCED),  # a draw of exactly 0 has no sign
        (-8.0, 2.0, [-7.0, -9.0], 1, NOT_REPRODUCED),  # stable, but against the paper's direction
        (5.0, None, [], 1, UNDETERMINED),  # no second draw
        (None, 1.0, [1.0], 1, UNDETERMINED),
        (float("nan"), 1.0, [], 1, UNDETERMINED),
        (5.0, 2.0, [None, 4.0], 1, REPRODUCED),  # a missing draw is skipped
    ],
)
def test_claim_status(effect, floor, draws, paper_sign, status):
    assert claim_status(effect, floor, draws, paper_sign) == status


# ----------------------------------------------------------------------------------------------
# The report


def _reading(name, value, missing="", note=""):
    return Reading(BY_NAME[name], value, missing, note)


def test_headline_table_by_hand(tmp_path):
    profile = _profile(tmp_path)
    draw_list = draws(profile, [1, 2])
    for draw in draw_list:
        results_dir(draw.profile).mkdir(parents=True)
    readings = [
        [_reading("base_greedy_acc_id", 70.0), _reading("table1_greedy_tokens_change_self", -37.0)],
        [_reading("base_greedy_acc_id", 71.0), _reading("table1_greedy_tokens_change_self", -21.0)],
        [_reading("base_greedy_acc_id", None, "x not found"), _reading("table1_greedy_tokens_change_self", -30.0)],
    ]
    table = headline_table(draw_list, readings).set_index("headline")
    accuracy = table.loc["base_greedy_acc_id"]
    assert (accuracy["main"], accuracy["seed_1"], accuracy["seed_2"]) == (70.0, 71.0, "missing")
    assert accuracy["draws"] == 2 and accuracy["mean"] == 70.5 and accuracy["floor"] == 1.0
    assert accuracy["status"] == ""  # not a directional claim
    assert accuracy["notes"] == "seed 2: x not found"
    length = table.loc["table1_greedy_tokens_change_self"]
    assert length["floor"] == 16.0 and length["paper_sign"] == "-1"
    assert length["status"] == REPRODUCED  # |-37| > 16, negative in every draw, the paper's direction
    assert length["min"] == -37.0 and length["max"] == -21.0
    assert length["sd"] == pytest.approx(pd.Series([-37.0, -21.0, -30.0]).std())


def test_report_on_a_main_run_and_one_seed_that_stopped_after_notebook_00(tmp_path):
    profile = _profile(tmp_path)
    write_run(profile)
    draw = seed_profile(profile, 1)
    write_world(draw, final_loss=0.3, accuracy_id=0.6)
    report, csv = robustness.write_report(profile, [1, 2])
    assert report == tmp_path / "robustness" / "tiny" / "report.md"
    table = pd.read_csv(csv, keep_default_na=False).set_index("headline")
    assert set(table.index) == set(BY_NAME)
    loss = table.loc["base_final_loss"]
    assert float(loss["main"]) == 0.25 and float(loss["seed_1"]) == 0.3 and loss["seed_2"] == "missing"
    assert float(loss["floor"]) == pytest.approx(0.05)
    accuracy = table.loc["base_greedy_acc_id"]
    assert float(accuracy["floor"]) == pytest.approx(10.0) and float(accuracy["mean"]) == pytest.approx(65.0)
    tau = table.loc["tau_star"]
    assert float(tau["main"]) == EXPECTED["tau_star"] and tau["seed_1"] == "missing" and tau["floor"] == "n/a"
    assert "seed 1: tiny/04_confidence_delta/tau_search.csv not found" in tau["notes"]
    assert "seed 2" not in tau["notes"]  # a draw that has not run is named once, in the report
    text = report.read_text()
    assert "Not run yet (no results folder; every value reads missing): seed 2." in text
    assert "| main (seed 0) | 0.25 | 625 |" in text and "| seed 1 | 0.3 | 625 |" in text
    assert "| seed 2 | missing | missing | 0 |" in text
    assert "| Table 2: best row's greedy accuracy | ours |" in text  # ours ties for first in Table 2 (like for like)


# ----------------------------------------------------------------------------------------------
# Orchestration (the notebook runner replaced by a recorder)


class Recorder:
    """Stands in for reproduce.run_papermill: records each call, loads the profile it was given, writes a
    marker artifact; fails on the seeds in ``fail``."""

    def __init__(self, fail=()):
        self.calls, self.fail = [], set(fail)

    def __call__(self, profile_name, notebooks, out_root):
        profile = load_profile(profile_name)
        self.calls.append({"profile": profile, "path": profile_name, "notebooks": [n.name for n in notebooks]})
        assert Path(out_root) == results_dir(profile)
        marker = Path(out_root) / "00_world" / "marker.txt"
        existed = marker.exists()
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("resumed" if existed else "first")
        return 1 if profile["seed"] in self.fail else 0


def _profile_file(tmp_path) -> Path:
    """A profile YAML of tiny with the main run and the robustness root under tmp_path."""
    profile = _profile(tmp_path)
    return save_profile(profile, tmp_path / "mine.yaml")


def test_main_runs_every_seed_never_the_main_run_and_writes_the_report(tmp_path):
    path = _profile_file(tmp_path)
    write_run(load_profile(path))  # the main run's artifacts
    recorder = Recorder()
    assert robustness.main(["--profile", str(path)], runner=recorder) == 0
    assert [c["profile"]["seed"] for c in recorder.calls] == [1, 2]
    notebooks = sorted(p.name for p in (Path(__file__).parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for call in recorder.calls:
        seed = call["profile"]["seed"]
        assert call["notebooks"] == notebooks
        assert Path(call["path"]) == tmp_path / "robustness" / "tiny" / f"seed-{seed}" / "profile.yaml"
        assert call["profile"]["world"]["seed"] == 0
        assert not str(results_dir(call["profile"])).startswith(str(tmp_path / "results"))
    # the main run was read, not run: its artifacts are as written and it got no marker
    assert not (tmp_path / "results" / "tiny" / "00_world" / "marker.txt").exists()
    table = pd.read_csv(tmp_path / "robustness" / "tiny" / "headlines.csv").set_index("headline")
    assert float(table.loc["base_greedy_acc_id", "main"]) == 70.0
    assert table.loc["base_greedy_acc_id", "seed_1"] == "missing"


def test_a_rerun_resumes_each_seed_and_fresh_starts_the_seeds_over(tmp_path):
    path = _profile_file(tmp_path)
    marker = tmp_path / "robustness" / "tiny" / "seed-1" / "tiny" / "00_world" / "marker.txt"
    assert robustness.main(["--profile", str(path), "--seeds", "1"], runner=Recorder()) == 0
    assert marker.read_text() == "first"
    assert robustness.main(["--profile", str(path), "--seeds", "1"], runner=Recorder()) == 0
    assert marker.read_text() == "resumed"  # the seed's folder was kept: its run resumes from its artifacts
    assert robustness.main(["--profile", str(path), "--seeds", "1", "--fresh"], runner=Recorder()) == 0
    assert marker.read_text() == "first"


def test_a_failing_seed_stops_the_draws_and_the_report_is_still_written(tmp_path, capsys):
    path = _profile_file(tmp_path)
    recorder = Recorder(fail={1})
    assert robustness.main(["--profile", str(path)], runner=recorder) == 1
    assert [c["profile"]["seed"] for c in recorder.calls] == [1]
    assert "seed 1 FAILED" in capsys.readouterr().err
    assert (tmp_path / "robustness" / "tiny" / "report.md").exists()


def test_report_only_runs_nothing_and_only_selects_notebooks(tmp_path):
    path = _profile_file(tmp_path)
    recorder = Recorder()
    assert robustness.main(["--profile", str(path), "--report-only"], runner=recorder) == 0
    assert recorder.calls == []
    assert (tmp_path / "robustness" / "tiny" / "report.md").exists()
    assert robustness.main(["--profile", str(path), "--seeds", "3", "--only", "00", "01"], runner=recorder) == 0
    assert recorder.calls[0]["notebooks"] == ["00_world.ipynb", "01_generation.ipynb"]


def test_a_profile_without_the_setting_is_refused(tmp_path, capsys):
    profile = _profile(tmp_path)
    del profile["robustness"]
    path = save_profile(profile, tmp_path / "none.yaml")
    recorder = Recorder()
    assert robustness.main(["--profile", str(path)], runner=recorder) == 2
    assert "has no robustness setting" in capsys.readouterr().err
    assert robustness.main(["--profile", str(path), "--seeds", "0"], runner=recorder) == 2
    assert recorder.calls == []


def test_the_make_target_runs_the_module_after_the_venv_stamp():
    makefile = (Path(__file__).parents[1] / "Makefile").read_text(encoding="utf-8")
    assert "robustness: $(STAMP)\n\t$(PY) -m segattr_utils.robustness --profile $(PROFILE)\n" in makefile
    test_line = next(line for line in makefile.splitlines() if line.startswith("test:"))
    reproduce = makefile.split("reproduce: $(STAMP)\n", 1)[1].split("\n\n", 1)[0]
    assert "robustness" not in test_line and "robustness" not in reproduce


def _git_ignores(path: str) -> bool:
    root = Path(__file__).parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    done = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=root, check=False)
    assert done.returncode in (0, 1), done
    return done.returncode == 0


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("results/robustness/tiny/report.md", False),
        ("results/robustness/tiny/headlines.csv", False),
        ("results/robustness/tiny/seed-1/profile.yaml", False),
        ("results/robustness/tiny/seed-1/tiny/05_sft/table1.csv", False),
        ("results/robustness/tiny/seed-1/tiny/run_times.csv", False),
        ("results/robustness/tiny/seed-1/tiny/00_base_model.ipynb", True),
        ("results/robustness/tiny/seed-1/tiny/03_analysis/figure.png", True),
        ("results/robustness/tiny/seed-1/tiny/04_viewer/viewer/index.html", True),
        ("results/robustness/tiny/seed-1/tiny/01_traces/traces.jsonl", True),
        ("results/robustness/tiny/seed-1/tiny/00_world/model/model.safetensors", True),
        ("results/robustness/smoke/report.md", True),
    ],
)
def test_a_draws_tables_are_committed_and_its_notebooks_figures_models_are_not(path, ignored):
    # The seeds can run in separate sessions only if a draw's tables survive a clean clone (--report-only).
    assert _git_ignores(path) is ignored


def test_the_seed_profile_file_is_plain_yaml(tmp_path):
    path = _profile_file(tmp_path)
    robustness.main(["--profile", str(path), "--seeds", "4"], runner=Recorder())
    saved = yaml.safe_load((tmp_path / "robustness" / "tiny" / "seed-4" / "profile.yaml").read_text())
    assert saved["seed"] == 4 and saved["world"]["seed"] == 0 and "base" not in saved
    assert dag.WORLD.folder == "00_world"


def test_a_draw_builds_the_main_runs_world(tmp_path, monkeypatch):
    """Notebook 00 of a draw writes the same questions and teacher traces as the main run (world.seed pinned);
    without the pin, another seed would give another world. The model training is skipped here."""
    from segattr_utils.artifacts import read_table, write_json
    from segattr_utils.llm import training
    from segattr_utils.stages import stage00_world

    monkeypatch.setattr(training, "is_trained", lambda run_dir: True)

    def world_of(profile):
        write_json(dag.WORLD.path(profile, "base_training"), {"final_loss": 0.1})
        stage00_world.build_world(profile)
        return read_table(dag.WORLD.path(profile, "questions")), read_table(dag.WORLD.path(profile, "teacher_traces"))

    main = _profile(tmp_path, "smoke")
    questions, traces = world_of(main)
    draw_questions, draw_traces = world_of(seed_profile(main, 3))
    pd.testing.assert_frame_equal(questions, draw_questions)
    pd.testing.assert_frame_equal(traces, draw_traces)
    unpinned = copy.deepcopy(main)
    unpinned["seed"], unpinned["results_root"] = 3, str(tmp_path / "unpinned")
    other_questions, _ = world_of(unpinned)
    assert not other_questions["question"].equals(questions["question"])


def test_the_committed_noise_floor_is_rebuilt_from_committed_tables_alone(tmp_path):
    # What a clean clone holds (git archive: tracked files only) must be enough to rebuild headlines.csv, and the
    # rebuild must equal the committed one: the report is not edited by hand and needs no ignored artifact.
    root = Path(__file__).parents[1]
    committed = root / "results" / "robustness" / "tiny" / "headlines.csv"
    if not (root / ".git").exists() or not committed.exists():
        pytest.skip("no committed tiny noise floor in this checkout")
    archive = subprocess.run(
        ["git", "archive", "HEAD", "results/tiny", "results/robustness/tiny"], cwd=root, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive, check=True)
    profile = load_profile("tiny")
    profile["results_root"] = str(tmp_path / "results")
    profile["robustness"]["results_root"] = str(tmp_path / "results" / "robustness")
    seeds = robustness.robustness_settings(profile)["seeds"]
    _, rebuilt = robustness.write_report(profile, seeds)
    assert rebuilt == tmp_path / "results" / "robustness" / "tiny" / "headlines.csv"
    pd.testing.assert_frame_equal(pd.read_csv(rebuilt), pd.read_csv(committed))
