"""Tests for the SFT and evaluation stages (notebooks 08-09): supervision built from selections, the run
plan, the paper-table metrics and the paired tests, benchmark loading helpers.

Expected values are computed by hand or by an independent route (the tokenizer's own offsets, pass@k
by enumeration), never by the function under test.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from segattr_utils.config import load_profile
from segattr_utils.data.questions import answer_text, multiple_choice_row
from segattr_utils.report import tables
from segattr_utils.stages import stage09_evaluation as ev

CORPUS = [
    "Start with 12, then first add 3. Okay, so 12 + 3 = 15.\n\nWait, let me check 12 + 3 = 15 again.",
    "The final answer is \\boxed{15}.",
    "Please reason step by step.",
] * 5


def _graded():
    rows = []
    # model m: bench A two questions, greedy right on q1 only; samples: q1 3/4 correct, q2 1/4
    for qid, greedy_ok, sampled in (("q1", True, [1, 1, 1, 0]), ("q2", False, [0, 0, 1, 0])):
        rows.append(
            {
                "model": "m",
                "benchmark": "A",
                "domain": "in",
                "mode": "greedy",
                "question_id": qid,
                "sample": 0,
                "correct": greedy_ok,
                "n_tokens": 100 if greedy_ok else 200,
                "finished": True,
            }
        )
        for s, ok in enumerate(sampled):
            rows.append(
                {
                    "model": "m",
                    "benchmark": "A",
                    "domain": "in",
                    "mode": "sample",
                    "question_id": qid,
                    "sample": s,
                    "correct": bool(ok),
                    "n_tokens": 10 * (s + 1),
                    "finished": True,
                }
            )
    # bench B one question, greedy right, samples all wrong
    rows.append(
        {
            "model": "m",
            "benchmark": "B",
            "domain": "out",
            "mode": "greedy",
            "question_id": "b1",
            "sample": 0,
            "correct": True,
            "n_tokens": 50,
            "finished": True,
        }
    )
    for s in range(4):
        rows.append(
            {
                "model": "m",
                "benchmark": "B",
                "domain": "out",
                "mode": "sample",
                "question_id": "b1",
                "sample": s,
                "correct": False,
                "n_tokens": 40,
                "finished": True,
            }
        )
    return pd.DataFrame(rows)


def _pass_at_k_by_enumeration(flags, k):
    subsets = list(itertools.combinations(range(len(flags)), k))
    return sum(any(flags[i] for i in subset) for subset in subsets) / len(subsets)


def test_benchmark_metrics_and_macro_average():
    metrics = ev.benchmark_metrics(_graded(), ks=[1, 2]).set_index("benchmark")
    assert metrics.loc["A", "greedy_acc"] == pytest.approx(50.0)
    assert metrics.loc["A", "greedy_tokens"] == pytest.approx(150.0)
    expected_p2 = 100 * (_pass_at_k_by_enumeration([1, 1, 1, 0], 2) + _pass_at_k_by_enumeration([0, 0, 1, 0], 2)) / 2
    assert metrics.loc["A", "pass@2"] == pytest.approx(expected_p2)
    assert metrics.loc["A", "pass@1"] == pytest.approx(100 * (0.75 + 0.25) / 2)
    assert metrics.loc["A", "sample_tokens"] == pytest.approx(25.0)
    assert metrics.loc["B", "pass@1"] == 0.0
    overall = ev.overall_metrics(metrics.reset_index()).set_index("model")
    # macro: each benchmark counts once, whatever its size
    assert overall.loc["m", "greedy_acc"] == pytest.approx((50 + 100) / 2)
    assert overall.loc["m", "pass@1"] == pytest.approx((50 + 0) / 2)


#: Table 1 of the paper, R1-Distill-Qwen-1.5B, greedy accuracy per benchmark; "Overall" is 36.7.
R1_1P5B_GREEDY = {"MATH500": 70.6, "AMC23": 52.5, "AIME24": 16.7, "GPQA": 27.3, "Minerva": 21.7, "OlympiadBench": 31.4}


def _paper_metrics(aime25: float = 23.3) -> pd.DataFrame:
    """A hand-made per-benchmark table for the base model: the paper's six numbers plus AIME25."""
    scores = {**R1_1P5B_GREEDY, "AIME25": aime25}
    return pd.DataFrame(
        [
            {"model": tables.BASE, "benchmark": b, "domain": "in", "greedy_acc": v, "greedy_tokens": 1000.0}
            for b, v in scores.items()
        ]
    )


def test_overall_is_the_mean_of_table1_benchmarks_without_aime25():
    profile = load_profile("paper")
    assert sorted(profile.get_path("evaluation.overall")) == sorted(R1_1P5B_GREEDY)
    for aime25 in (0.0, 23.3, 100.0):
        overall = ev.overall_metrics(_paper_metrics(aime25), profile.get_path("evaluation.overall"))
        assert round(float(overall["greedy_acc"].iloc[0]), 1) == 36.7
    everything = ev.overall_metrics(_paper_metrics(100.0))
    assert float(everything["greedy_acc"].iloc[0]) == pytest.approx((220.2 + 100.0) / 7)
    with pytest.raises(ValueError, match="AIME26"):
        ev.overall_metrics(_paper_metrics(), ["AIME24", "AIME26"])


def test_world_overall_averages_both_suites():
    assert load_profile("tiny").get_path("evaluation.overall") == ["test_id", "test_ood"]
    assert load_profile("smoke").get_path("evaluation.overall") == ["test_id", "test_ood"]


def test_table1_reports_aime25_beside_the_overall(tmp_path):
    profile = load_profile("paper")
    profile["results_root"] = str(tmp_path)  # no runs: the base model only
    metrics = _paper_metrics()
    overall = ev.attach_runs(profile, ev.overall_metrics(metrics, profile.get_path("evaluation.overall")))
    table = tables.table1(profile, ev.attach_runs(profile, metrics), overall)
    columns = list(table.columns)
    assert columns.index("AIME25") > columns.index("Acc./Pass@1")
    assert all(columns.index(b) < columns.index("Acc./Pass@1") for b in R1_1P5B_GREEDY)
    row = table.iloc[0]
    assert row["Acc./Pass@1"] == "36.7" and row["AIME25"] == "23.3" and row["MATH500"] == "70.6"


def test_paired_tests_over_seeds_and_questions():
    per_model = pd.DataFrame(
        {
            "model": ["f0", "f1", "f2", "s0", "s1", "s2"],
            "setting": ["full"] * 3 + ["sel"] * 3,
            "seed": [0, 1, 2] * 2,
            "greedy_acc": [40.0, 42.0, 41.0, 45.0, 46.0, 44.0],
        }
    )
    rows = []
    rng = np.random.default_rng(0)
    for model in per_model["model"]:
        for q in range(30):
            p = 0.4 if model.startswith("f") else 0.6
            rows.append(
                {
                    "model": model,
                    "mode": "greedy",
                    "benchmark": "A",
                    "question_id": f"q{q}",
                    "correct": bool(rng.random() < p),
                }
            )
    graded = pd.DataFrame(rows)
    result = ev.paired_tests(per_model, graded, "full", "sel", "greedy_acc")
    from scipy.stats import ttest_rel, wilcoxon

    assert result["seeds"] == 3
    assert result["mean_difference"] == pytest.approx(np.mean([5, 4, 3]))
    assert result["t_test_p"] == pytest.approx(ttest_rel([45, 46, 44], [40, 42, 41]).pvalue)
    per_q = (
        graded.assign(setting=graded["model"].str[0]).groupby(["setting", "question_id"])["correct"].mean().unstack(0)
    )
    diff = (per_q["s"] - per_q["f"]).to_numpy()
    assert result["questions"] == 30
    assert result["wilcoxon_p"] == pytest.approx(wilcoxon(diff).pvalue)
    with pytest.raises(ValueError, match="no paired test"):
        ev.paired_tests(per_model, graded, "full", "sel", "pass@4")


def test_paired_tests_use_the_metric_of_each_row():
    # greedy correctness identical, sampled lengths differ: only the length test may find a difference
    per_model = pd.DataFrame(
        {
            "model": ["f0", "s0"],
            "setting": ["full", "sel"],
            "seed": [0, 0],
            "greedy_acc": [50.0, 50.0],
            "sample_tokens": [20.0, 10.0],
        }
    )
    rows = []
    for model, length in (("f0", 20), ("s0", 10)):
        for q in range(12):
            rows.append(
                {
                    "model": model,
                    "mode": "greedy",
                    "benchmark": "A",
                    "question_id": f"q{q}",
                    "correct": q % 2 == 0,
                    "n_tokens": 100,
                }
            )
            rows.append(
                {
                    "model": model,
                    "mode": "sample",
                    "benchmark": "A",
                    "question_id": f"q{q}",
                    "correct": True,
                    "n_tokens": length + q,
                }
            )
    graded = pd.DataFrame(rows)
    assert ev.paired_tests(per_model, graded, "full", "sel", "greedy_acc")["wilcoxon_p"] == 1.0
    lengths = ev.paired_tests(per_model, graded, "full", "sel", "sample_tokens")
    from scipy.stats import wilcoxon

    assert lengths["wilcoxon_p"] == pytest.approx(wilcoxon(np.full(12, -10.0)).pvalue)
    assert lengths["mean_difference"] == -10.0


def test_format_mean_std():
    assert tables.format_mean_std(45.123, 1.26, 3) == "45.1 ± 1.3"
    assert tables.format_mean_std(45.123, float("nan"), 1) == "45.1"
    assert tables.format_mean_std(float("nan"), 0, 3) == "n/a"
    assert tables.format_mean_std(12345.6, 10.2, 3, 0) == "12346 ± 10"


def test_multiple_choice_row_shuffles_with_a_fixed_seed():
    choices = {"question": "Q", "correct": "C", "incorrect": ["I1", "I2", "I3"]}
    letters = []
    for i in range(40):
        row = multiple_choice_row(
            {"Q": "Pick.", "C": "right", "I1": "w1", "I2": "w2", "I3": "w3"}, choices, seed=f"s:{i}"
        )
        letter = row["answer"]
        assert f"({letter}) right" in row["question"]
        assert row["question"].count("(") == 4
        letters.append(letter)
        again = multiple_choice_row(
            {"Q": "Pick.", "C": "right", "I1": "w1", "I2": "w2", "I3": "w3"}, choices, seed=f"s:{i}"
        )
        assert again == row
    assert len(set(letters)) == 4  # not every answer is "A"


def test_answer_text_normalises_lists_and_dollars():
    assert answer_text(["$\\frac{1}{2}$", "0.5"]) == "\\frac{1}{2}"
    assert answer_text(np.array(["7"])) == "7"
    assert answer_text(42) == "42"
    with pytest.raises(ValueError):
        answer_text([])


def test_table1_tests_carry_the_seed_variance_and_holm_over_the_family():
    """The seed x question bootstrap: its difference is the hand-computed mean over seeds and questions (in
    percent); a difference the same on every seed and question has a point interval and p below 1/n_boot;
    seeds trained for one setting only are left out; Holm over the family by hand."""
    per_model = pd.DataFrame(
        {
            "model": ["f0", "f1", "f2", "s0", "s1", "s3"],
            "setting": ["full"] * 3 + ["sel"] * 3,
            "seed": [0, 1, 2, 0, 1, 3],
            "greedy_acc": [40.0, 42.0, 41.0, 45.0, 46.0, 44.0],
            "greedy_tokens": [10.0] * 6,
        }
    )
    rows = []
    rng = np.random.default_rng(1)
    for model in per_model["model"]:
        for q in range(20):
            rows.append(
                {
                    "model": model,
                    "mode": "greedy",
                    "benchmark": "A" if q < 12 else "B",
                    "question_id": f"q{q}",
                    "correct": bool(rng.random() < (0.4 if model.startswith("f") else 0.6)),
                    "n_tokens": 100 + q - (7 if model.startswith("s") else 0),  # selective: 7 tokens shorter
                }
            )
    graded = pd.DataFrame(rows)
    accuracy = ev.paired_tests(per_model, graded, "full", "sel", "greedy_acc", n_boot=2000)
    used = graded[graded["model"].isin(["f0", "f1", "s0", "s1"])]  # seeds 0 and 1 only: 2 and 3 lack a partner
    by_setting = used.assign(setting=used["model"].str[0]).groupby("setting")["correct"].mean()
    assert accuracy["bootstrap_seeds"] == 2 and accuracy["bootstrap_questions"] == 20
    assert accuracy["bootstrap_difference"] == pytest.approx(100 * (by_setting["s"] - by_setting["f"]))
    assert accuracy["bootstrap_ci_low"] <= accuracy["bootstrap_difference"] <= accuracy["bootstrap_ci_high"]
    assert "dropped" in accuracy["bootstrap_note"]
    lengths = ev.paired_tests(per_model, graded, "full", "sel", "greedy_tokens", n_boot=2000)
    assert lengths["bootstrap_difference"] == pytest.approx(-7.0)
    assert lengths["bootstrap_ci_low"] == pytest.approx(-7.0) and lengths["bootstrap_ci_high"] == pytest.approx(-7.0)
    assert lengths["bootstrap_p"] == 0.0

    family = ev.family_tests([accuracy, lengths])
    assert family["family_size"].tolist() == [2, 2]
    # Holm with m = 2: the smallest p (lengths, 0) times 2, the other times 1, never below the previous one
    assert accuracy["bootstrap_p"] > 0
    assert family["bootstrap_p_holm"].tolist() == pytest.approx([accuracy["bootstrap_p"], 0.0])
    note = ev.table1_note(family.iloc[1])
    assert note.startswith("2 seeds x 20 questions: difference -7 [95% CI -7, -7], seed x question bootstrap p < 5e-04")
    assert "Holm over 2: p < 5e-04" in note and "paired t-test over seeds" in note


# ---------------------------------------------------------------------------------------------
# Like for like: Tables 2-4, 7 and Fig. 5 ranked on common seeds


def _runs(rows):
    """per-model rows (setting, seed, greedy accuracy, greedy length) -> the overall table's layout"""
    frame = pd.DataFrame(rows, columns=["setting", "seed", "greedy_acc", "greedy_tokens"])
    frame["model"] = frame["setting"] + "__seed" + frame["seed"].astype(str)
    frame["label"] = frame["setting"]
    return frame


def _graded_from(runs: pd.DataFrame, n_questions: int = 10) -> pd.DataFrame:
    """Greedy outputs whose per-model accuracy and length equal the run's (accuracy a multiple of 10%)."""
    rows = []
    for run in runs.itertuples():
        n_right = round(run.greedy_acc / 100 * n_questions)
        for q in range(n_questions):
            rows.append(
                {
                    "model": run.model,
                    "mode": "greedy",
                    "benchmark": "A",
                    "question_id": f"q{q}",
                    "correct": q < n_right,
                    "n_tokens": run.greedy_tokens,
                }
            )
    return pd.DataFrame(rows)


def test_common_seeds_rank_every_row_on_the_same_seeds():
    overall = _runs(
        [
            ("full__self", 0, 40, 180),
            ("full__self", 1, 50, 180),
            ("full__self", 2, 60, 180),
            ("random__self", 0, 90, 120),
            ("selective__self", 0, 50, 110),
            ("selective__self", 1, 60, 110),
            ("selective__self", 2, 70, 110),
        ]
    )
    settings = ["full__self", "random__self", "selective__self", "never_trained__self"]
    # the single-seed variant restricts the table to seed 0; a setting without runs does not empty it
    assert tables.common_seeds(overall, settings) == [0]
    assert tables.common_seeds(overall, ["full__self", "selective__self"]) == [0, 1, 2]
    assert tables.common_seeds(overall, ["nothing"]) == []
    part = tables.on_seeds(overall, [0])
    assert sorted(part["model"]) == ["full__self__seed0", "random__self__seed0", "selective__self__seed0"]
    table = tables.comparison_table(part, settings[:3])
    # like for like: ours is 50 on seed 0 (not its 3-seed mean 60), the variant 90, full 40
    assert list(table["Greedy Acc."]) == ["40.0", "90.0", "50.0"] and set(table["Seeds"]) == {1}


def test_table_reference_is_ours_or_ig_pruning_in_table4():
    assert tables.table_reference("2", ["full__self", "x__self", "selective__self"], "self") == "selective__self"
    assert tables.table_reference("4", ["full__self", "pruned_ig__self"], "self") == "pruned_ig__self"
    assert tables.table_reference("4", ["full__self", "pruned_entropy__self"], "self") == "full__self"


def test_ranking_tests_hand_computed_differences_and_holm():
    overall = _runs(
        [
            ("full__self", 0, 40, 180),
            ("full__self", 1, 40, 180),
            ("rand__self", 0, 60, 120),
            ("rand__self", 1, 60, 120),
            ("selective__self", 0, 50, 110),
            ("selective__self", 1, 50, 110),
        ]
    )
    graded = _graded_from(overall)
    settings = ["full__self", "rand__self", "selective__self"]
    tests = ev.ranking_tests(overall, graded, settings, "selective__self", n_boot=500)
    # 2 rows x 2 metrics, each row minus ours
    assert len(tests) == 4 and set(tests["family_size"]) == {4} and set(tests["a"]) == {"selective__self"}
    by = tests.set_index(["b", "metric"])
    assert by.loc[("full__self", "greedy_acc"), "bootstrap_difference"] == pytest.approx(-10.0)
    assert by.loc[("rand__self", "greedy_acc"), "bootstrap_difference"] == pytest.approx(10.0)
    assert by.loc[("full__self", "greedy_tokens"), "bootstrap_difference"] == pytest.approx(70.0)
    # every resampled length difference is +70: p < 1/draws before and after Holm
    assert by.loc[("full__self", "greedy_tokens"), "bootstrap_p_holm"] == 0.0
    # Holm: each corrected p is at least the raw p
    assert (tests["bootstrap_p_holm"] >= tests["bootstrap_p"] - 1e-12).all()
    columns = tables.ranking_columns(tests, "rand__self")
    assert columns["Δ acc. vs ref. [95% CI]"].startswith("+10.0 [")
    assert columns["Δ length vs ref. [95% CI]"] == "+10 [+10, +10]"
    assert tables.ranking_columns(tests, "selective__self")["Δ acc. vs ref. [95% CI]"] == "reference"
    table = tables.comparison_table(overall, settings, tests=tests)
    assert list(table["Δ length vs ref. [95% CI]"]) == ["+70 [+70, +70]", "+10 [+10, +10]", "reference"]
    # no reference run: no tests rather than an error
    assert ev.ranking_tests(overall, graded, settings, "missing__self").empty


def test_best_row_comparison_ranks_like_for_like_and_names_ours_rank():
    overall = _runs(
        [
            ("full__self", 0, 40, 180),
            ("full__self", 1, 40, 180),
            ("rand__self", 0, 60, 120),
            ("rand__self", 1, 60, 120),
            ("selective__self", 0, 50, 110),
            ("selective__self", 1, 50, 110),
        ]
    )
    tests = ev.ranking_tests(overall, _graded_from(overall), list(dict.fromkeys(overall["setting"])), "selective__self")
    row = ev.best_row_comparison("2", overall, tests, "self")
    assert row["run"] == "rand__self 60.0 (ours 50.0, rank 2 of 3)"
    assert "2 seed(s) per row" in row["note"] and "best minus ours: +10.0" in row["note"]
    assert "Holm over 4" in row["note"]


def test_fig5_points_average_the_given_seeds_with_their_spread():
    rows = []
    for seed, acc in ((0, 40.0), (1, 50.0)):
        rows.append({"variant": "selective", "source": "self", "seed": seed, "overrides": '{"tau": 0.9}'})
        rows[-1].update(greedy_acc=acc, **{"pass@1": acc + 1}, greedy_tokens=100, sample_tokens=90, token_share=0.5)
    rows.append(dict(rows[0], seed=2, greedy_acc=99.0))  # a seed outside the given ones is left out
    points = tables.fig5_points(pd.DataFrame(rows), "self", 0.7, 0.8, [0, 1])
    point = points.set_index(["sweep", "value"]).loc[("tau", 0.9)]
    assert point["greedy_acc"] == pytest.approx(45.0) and point["seeds"] == 2
    assert point["greedy_acc_std"] == pytest.approx(np.std([40.0, 50.0], ddof=1))


def test_length_by_share_orders_settings_and_correlates_over_them():
    overall = _runs(
        [
            ("full__self", 0, 40, 180),
            ("full__self", 1, 40, 190),
            ("a__self", 0, 40, 150),
            ("a__self", 1, 40, 150),
            ("b__self", 0, 40, 120),
            ("b__self", 1, 40, 130),
            ("c__self", 0, 40, 100),  # one seed only: the comparison keeps seed 0 for every setting
        ]
    )
    overall["token_share"] = overall["setting"].map({"full__self": 1.0, "a__self": 0.8, "b__self": 0.6, "c__self": 0.4})
    frame, summary = ev.length_by_share(overall, ["full__self", "a__self", "b__self", "c__self"])
    assert list(frame["setting"]) == ["full__self", "a__self", "b__self", "c__self"]
    assert list(frame["greedy_tokens"]) == [180, 150, 120, 100] and set(frame["seeds"]) == {1}
    # lengths fall strictly as the share falls: Spearman's rho = 1 over the 4 settings
    assert summary["spearman_rho"] == pytest.approx(1.0) and summary["seeds"] == 1
    _, flat = ev.length_by_share(overall, ["full__self", "a__self"])
    assert flat["spearman_rho"] is None  # two settings: no correlation is reported


def test_best_row_comparison_when_ours_is_best_or_tied():
    overall = _runs(
        [
            ("full__self", 0, 40, 180),
            ("rand__self", 0, 50, 120),
            ("selective__self", 0, 60, 110),
        ]
    )
    tests = ev.ranking_tests(
        overall, _graded_from(overall), ["full__self", "rand__self", "selective__self"], "selective__self"
    )
    row = ev.best_row_comparison("2", overall, tests, "self")
    assert row["run"] == "ours 60.0 (next: rand__self 50.0)"
    assert "next minus ours: -10.0" in row["note"]
    tied = overall.assign(greedy_acc=50.0)
    row = ev.best_row_comparison(
        "2", tied, ev.ranking_tests(tied, _graded_from(tied), list(tied["setting"]), "selective__self"), "self"
    )
    # every row ties: ours shares rank 1 and is named, not whichever row sorts first
    assert row["run"].startswith("ours 50.0")


# ---------------------------------------------------------------------------------------------
# Several evaluation processes (the tiny profile's default)


def _evaluation_profile(profile, root, processes: int):
    """``profile`` (the stage fixtures' random model as the base) with world test suites of 2 + 1
    questions, one fine-tuned run (another random model) and ``evaluation.processes``, under ``root``."""
    import shutil

    from segattr_utils import dag
    from segattr_utils.artifacts import write_table
    from segattr_utils.config import Profile

    moved = Profile(
        {
            **profile,
            "results_root": str(root),
            "evaluation": {
                **profile["evaluation"],
                "processes": processes,
                "threads_per_process": 1,
                "max_new_tokens": 12,
            },
        }
    )
    questions = [
        {
            "id": "a",
            "suite": "test_id",
            "question": "Start with 2, then first add 1. What is the result?",
            "answer": "3",
        },
        {
            "id": "b",
            "suite": "test_id",
            "question": "Start with 5, then first subtract 1. What is the result?",
            "answer": "4",
        },
        {
            "id": "c",
            "suite": "test_ood",
            "question": "Start with 3, then first add 1. What is the result?",
            "answer": "4",
        },
    ]
    write_table(dag.WORLD.path(moved, "questions"), pd.DataFrame(questions))
    base = profile["models"]["generator"]["local_path"]
    run_model = dag.SELECTIVE_SFT.path(moved, "models") / "full__self__seed0"
    shutil.copytree(base, run_model)
    write_table(
        dag.SELECTIVE_SFT.path(moved, "runs"),
        pd.DataFrame([{"run": "full__self__seed0", "setting": "full__self", "seed": 0}]),
    )
    return moved


def test_two_evaluation_processes_generate_what_one_process_generates(profile, tmp_path):
    """evaluation.processes: 2 deals the models over two launched single-threaded processes, which write
    every output; the graded table equals one process's (greedy and the per-batch seeded samples do not
    depend on which process generates), every model is marked generated, and nothing of the launch is
    left behind. A second call launches nothing."""
    from segattr_utils import dag
    from segattr_utils.artifacts import RecordStore
    from segattr_utils.distributed import rank_store_paths

    one = ev.evaluate_all(_evaluation_profile(profile, tmp_path / "one", 1))
    spread_profile = _evaluation_profile(profile, tmp_path / "two", 2)
    two = ev.evaluate_all(spread_profile)
    # base: greedy + n_samples per question; the run the same
    n_samples = int(profile["evaluation"]["n_samples"])
    assert len(one) == 2 * 3 * (1 + n_samples)
    keys = ["model", "benchmark", "mode", "question_id", "sample"]
    pd.testing.assert_frame_equal(
        two.sort_values(keys).reset_index(drop=True), one.sort_values(keys).reset_index(drop=True)
    )
    store = RecordStore(dag.EVALUATION.path(spread_profile, "generated_store"), key_fn=lambda r: r["model"])
    assert sorted(r["model"] for r in store.records()) == ["base", "full__self__seed0"]
    assert rank_store_paths(store.path) == [] and not store.path.with_suffix(".launch").exists()


def test_several_evaluation_processes_need_the_hugging_face_backend():
    profile = load_profile("tiny")
    assert ev.evaluation_processes(profile) == (2, 1)
    profile["evaluation"] = {**profile["evaluation"], "backend": "vllm"}
    with pytest.raises(ValueError, match="evaluation.processes: 2 needs evaluation.backend: hf"):
        ev.evaluation_processes(profile)
    profile["evaluation"] = {**profile["evaluation"], "processes": 1}
    assert ev.evaluation_processes(profile)[0] == 1
