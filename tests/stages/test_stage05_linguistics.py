"""Stage 05 end to end on hand-made stage 01-03 artifacts and a tiny random model: the artifact columns
other notebooks read, one row per segment, a resumed run gives the same table, and the BLEU column
matches the segments' hand-computed values; with the paper's ablation source the reference traces are
measured too (and only then), their perplexity and entropy checked against a forward pass by hand."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from segattr_utils import dag, services
from segattr_utils.artifacts import read_table
from segattr_utils.config import Profile, results_dir
from segattr_utils.distributed import rank_store_paths
from segattr_utils.stages import stage05_linguistics as linguistics
from segattr_utils.world.tiny_model import answer_part as world_answer_part

from .conftest import QUESTIONS, REFERENCE


def test_linguistics_stage_columns_and_bleu(profile):
    table = linguistics.measure_linguistics(profile)
    for column in ("trace_id", "segment", "n_tokens", "log_ppl", "entropy", "bleu", "removal_ppl_increase"):
        assert column in table.columns
    # smoke profile measures incorrect traces too: 3 + 1 + 2 segments
    assert len(table) == 6 and not table[["log_ppl", "entropy", "bleu", "removal_ppl_increase"]].isna().any().any()
    q0 = table[table["trace_id"] == "q0:correct"].sort_values("segment")
    # segment 1 repeats "so 2 + 1 = 3." from segment 0: BLEU > 0; the first segment of a trace has BLEU 0
    assert q0["bleu"].iloc[0] == 0.0 and q0["bleu"].iloc[1] > 0.3
    assert (table["n_tokens"] > 0).all() and (table["entropy"] > 0).all()
    again = linguistics.measure_linguistics(profile)  # resumed: nothing recomputed, same table
    pd.testing.assert_frame_equal(again, table)


def test_reference_traces_are_measured_when_an_ablation_trains_on_them(reference_profile):
    tables = linguistics.linguistics_tables(reference_profile)
    assert list(tables) == ["self", "reference"]
    reference = tables["reference"]
    pd.testing.assert_frame_equal(
        read_table(dag.LINGUISTICS.path(reference_profile, "reference_segment_linguistics")), reference
    )
    assert reference["trace_id"].tolist() == ["q0:reference"] * 3 + ["q1:reference"] * 2
    assert reference["segment"].tolist() == [0, 1, 2, 0, 1] and reference["correct"].all()
    assert not reference[list(linguistics.SIGNALS)].isna().any().any()
    assert set(tables["self"]["trace_id"]) == {"q0:correct", "q1:correct", "q1:incorrect"}

    # q0's reference trace by hand: one unbatched forward pass per text, NLL and entropy in float64,
    # a token in the segment (or output) that holds its first character
    model, tokenizer = services.load_model(reference_profile, "generator")
    question, answer = QUESTIONS["q0"]
    segments = REFERENCE["q0"]
    prompt = services.prompt(tokenizer, question)

    def per_token(text):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor(encoded["input_ids"])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=ids[None]).logits[0, :-1].double(), dim=-1)
        nll = -log_probs[torch.arange(len(ids) - 1), ids[1:]]
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        starts = [start for start, _ in encoded["offset_mapping"][1:]]  # token t + 1 of each prediction t
        return nll.numpy(), entropy.numpy(), np.array(starts)

    nll, entropy, starts = per_token(prompt + "".join(segments))
    cursor = len(prompt)
    rows = reference[reference["trace_id"] == "q0:reference"]
    for index, text in enumerate(segments):
        inside = (starts >= cursor) & (starts < cursor + len(text))
        cursor += len(text)
        assert rows["n_tokens"].iloc[index] == inside.sum()
        assert rows["log_ppl"].iloc[index] == pytest.approx(nll[inside].mean(), rel=1e-6)
        assert rows["entropy"].iloc[index] == pytest.approx(entropy[inside].mean(), rel=1e-6)

    def output_perplexity(output):
        nll, _, starts = per_token(prompt + output)
        return math.exp(nll[starts >= len(prompt)].mean())

    answer_part = world_answer_part(answer)  # the reference trace's answer part (R1 layout)
    full = output_perplexity("".join(segments) + answer_part)
    without_second = output_perplexity(segments[0] + segments[2] + answer_part)
    assert rows["removal_ppl_increase"].iloc[1] == pytest.approx(without_second - full, rel=1e-4, abs=1e-6)


def test_no_reference_measurement_when_the_ablations_train_on_self(profile):
    assert linguistics.measured_sources(profile) == ["self"]
    assert list(linguistics.linguistics_tables(profile)) == ["self"]  # no world questions: none are read
    for artifact in ("reference_linguistics_store", "reference_segment_linguistics"):
        assert not dag.LINGUISTICS.path(profile, artifact).exists()


def test_two_launched_processes_measure_what_one_process_measures(profile, tmp_path):
    """analysis.linguistics.processes: 2 runs the perplexity passes under accelerate launch (two ranks, gloo
    on the CPU); the table equals one process's up to float rounding, and no rank store or launch folder is
    left behind."""
    one = linguistics.measure_linguistics(profile)
    spread = Profile({**profile, "results_root": str(tmp_path / "spread")})
    spread["analysis"] = {
        **profile["analysis"],
        "linguistics": {**profile["analysis"]["linguistics"], "processes": 2, "threads_per_process": 1},
    }
    for stage in (dag.GENERATION, dag.SEGMENTATION, dag.IG_ATTRIBUTION):  # the same inputs in the new results folder
        shutil.copytree(results_dir(profile) / stage.folder, results_dir(spread) / stage.folder)
    two = linguistics.measure_linguistics(spread)
    pd.testing.assert_frame_equal(two, one, rtol=1e-5, atol=1e-6)
    _, store = linguistics.items_to_measure(spread)
    assert len(store) == 3 and rank_store_paths(store.path) == []
    assert not store.path.with_suffix(".launch").exists()


def test_measures_are_compared_at_trace_level_with_holm_over_the_three():
    """Fig. 3's comparisons test within-trace differences over traces (segments of a trace are not
    independent); hand-computed differences, scipy's Wilcoxon on them, and Holm by hand."""
    from scipy.stats import wilcoxon

    rows = []
    # trace t: important segments get log_ppl 1 + t, unimportant 1; entropy the reverse; bleu mixed
    for t in range(1, 7):
        for important in (True, True, False):
            rows.append(
                {
                    "trace_id": f"t{t}",
                    "important": important,
                    "log_ppl": 1.0 + (0.1 * t if important else 0.0),
                    "entropy": 1.0 - (0.05 * t if important else 0.0) + (0.001 * t if not important else 0.0),
                    "bleu": 0.5 + (0.01 * (-1) ** t if important else 0.0),
                }
            )
    table = pd.DataFrame(rows)
    result = linguistics.compare_measures(table).set_index("column")
    expected_differences = {
        "log_ppl": [0.1 * t for t in range(1, 7)],
        "entropy": [-0.05 * t - 0.001 * t for t in range(1, 7)],
        "bleu": [0.01 * (-1) ** t for t in range(1, 7)],
    }
    p_values = {}
    for column, differences in expected_differences.items():
        assert result.loc[column, "n_traces"] == 6
        assert result.loc[column, "trace_difference"] == pytest.approx(np.mean(differences))
        p_values[column] = wilcoxon(differences).pvalue
        assert result.loc[column, "trace_p"] == pytest.approx(p_values[column])
    ordered = sorted(p_values, key=p_values.get)  # Holm: (m - rank) x p, then the running maximum, capped at 1
    running = 0.0
    for rank, column in enumerate(ordered):
        running = max(running, min(1.0, (3 - rank) * p_values[column]))
        assert result.loc[column, "trace_p_holm"] == pytest.approx(running)
    # 18 segments pooled as if independent look far stronger than 6 traces for log_ppl
    assert result.loc["log_ppl", "p_value"] < result.loc["log_ppl", "trace_p"]
