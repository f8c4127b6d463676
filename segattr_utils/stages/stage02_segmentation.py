"""Stage 02 (notebook ``02_segmentation``): every kept trace split into segments at the profile's
transition keywords (Sec. 2.1, App. C.2), with the world's ground-truth kinds in world profiles, and
the correct vs incorrect lengths of the same questions (Fig. 1 right-top).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import dag, services
from .. import world as world_lib
from ..artifacts import write_table
from ..config import Profile
from ..method.segmentation import segment
from ..progress import progress
from ..report import figures
from ..report.paper_vs_run import comparison_row, paper
from . import StageResult, finish

STAGE = dag.SEGMENTATION


def segment_kept_traces(profile: Profile) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Segments of every kept trace (with world ground-truth kinds) and per-trace statistics."""
    kept = services.kept_traces(profile)
    keywords = services.keywords_for(profile)
    problems = services.world_problems(profile)
    segment_rows, trace_rows = [], []
    for trace in progress(kept.to_dict("records"), desc="segment", unit="trace"):
        segments = segment(trace["reasoning"], keywords)
        kinds = (
            world_lib.classify_segments(problems[trace["question_id"]], segments)
            if problems
            else [None] * len(segments)
        )
        for index, (text, kind) in enumerate(zip(segments, kinds)):
            segment_rows.append(
                {
                    "trace_id": trace["trace_id"],
                    "question_id": trace["question_id"],
                    "correct": trace["correct"],
                    "segment": index,
                    "n_segments": len(segments),
                    "text": text,
                    "n_chars": len(text),
                    "kind": kind,
                }
            )
        trace_rows.append(
            {
                "trace_id": trace["trace_id"],
                "question_id": trace["question_id"],
                "correct": trace["correct"],
                "n_segments": len(segments),
                "n_tokens": trace["n_tokens"],
            }
        )
    segments_table, traces_table = pd.DataFrame(segment_rows), pd.DataFrame(trace_rows)
    write_table(STAGE.path(profile, "segments"), segments_table)
    write_table(STAGE.path(profile, "trace_stats"), traces_table)
    return segments_table, traces_table


def paired_length_comparison(traces: pd.DataFrame) -> pd.DataFrame:
    """Segments and tokens of the correct vs incorrect trace of the same questions (Fig. 1 right-top),
    with a Wilcoxon signed-rank test on the paired differences."""
    from scipy.stats import wilcoxon

    pivot = traces.pivot_table(index="question_id", columns="correct", values=["n_segments", "n_tokens"])
    pivot = pivot.dropna()
    rows = []
    for metric in ("n_segments", "n_tokens"):
        if pivot.empty:
            rows.append({"metric": metric, "questions": 0})
            continue
        correct, incorrect = pivot[(metric, True)], pivot[(metric, False)]
        differences = (incorrect - correct).to_numpy()
        p_value = (
            float(wilcoxon(differences).pvalue) if np.any(differences != 0) and len(differences) > 1 else float("nan")
        )
        rows.append(
            {
                "metric": metric,
                "questions": len(pivot),
                "correct_mean": float(correct.mean()),
                "incorrect_mean": float(incorrect.mean()),
                "share_incorrect_longer": float((differences > 0).mean()),
                "wilcoxon_p": p_value,
            }
        )
    return pd.DataFrame(rows)


def comparison_rows(comparison: pd.DataFrame) -> list[dict]:
    """The paper-vs-run rows of stage 02 (Fig. 1 right-top)."""
    rows = []
    for row in comparison.to_dict("records"):
        if row.get("questions", 0):
            what = "segments" if row["metric"] == "n_segments" else "tokens"
            rows.append(
                comparison_row(
                    "Fig. 1 right-top",
                    f"{what} per trace, correct vs incorrect (same questions)",
                    paper("fig1.incorrect_longer"),
                    f"{row['correct_mean']:.1f} vs {row['incorrect_mean']:.1f}",
                    f"incorrect longer for {row['share_incorrect_longer']:.0%} of {row['questions']} questions; "
                    f"Wilcoxon p = {row['wilcoxon_p']:.2g}",
                )
            )
    return rows


def run(profile: Profile) -> StageResult:
    """Stage 02: segment every kept trace and compare correct with incorrect traces."""
    segments, traces = segment_kept_traces(profile)
    kept = services.kept_traces(profile).set_index("trace_id")
    joined = segments.sort_values(["trace_id", "segment"]).groupby("trace_id")["text"].agg("".join)
    comparison = paired_length_comparison(traces)
    tables = {
        "length_by_correctness": traces.groupby("correct")[["n_segments", "n_tokens"]].describe().T,
        "paired_lengths": comparison,
    }
    if segments["kind"].notna().any():
        tables["kinds"] = segments.groupby("correct")["kind"].value_counts(normalize=True).unstack(0).fillna(0)
    fig = figures.fig1_right_top(traces)
    return finish(
        profile,
        STAGE,
        comparison_rows(comparison),
        tables=tables,
        figures={"fig1_right_top_segments_tokens": figures.save(fig, profile, "fig1_right_top_segments_tokens")},
        checks={
            "segments concatenate back to every trace": bool(len(joined))
            and bool((joined == kept.loc[joined.index, "reasoning"]).all())
        },
        values={"n_traces": len(traces), "n_segments": len(segments)},
    )
