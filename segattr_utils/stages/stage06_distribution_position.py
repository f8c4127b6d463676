"""Stage 06 (notebook ``06_distribution_position``): the CDF of normalised strength over segments
ranked by strength for correct and incorrect traces (Fig. 1 right-bottom, Sec. 3 setup), the decision
segment and the positional shares of App. A, and the segment viewer's examples (Fig. 1 left).
Definitions in :mod:`segattr_utils.measures.position` and :mod:`segattr_utils.report.viewer`.

Artifacts in ``results/<profile>/06_distribution_position/``: ``cdf.csv`` (the averaged curves),
``cdf_summary.csv`` (share of segments holding ``analysis.cdf_mass``), ``decision_segments.parquet``,
``positional_shares.csv`` and ``viewer/<trace>.html``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..artifacts import read_table, write_table
from ..measures.confidence import label_segments
from ..config import Profile, stage_dir
from ..measures.group_stats import MISSING_TEXT
from ..report.paper_vs_run import comparison_row
from ..measures.position import (
    curve_share_holding,
    decision_segment,
    mean_cdf,
    percent_grid,
    positional_shares,
    share_holding,
    world_decision_segment,
)
from ..report.viewer import trace_view, write_html
from ..pipeline import world_problems

STAGE = "06_distribution_position"
LABELS = {True: "correct", False: "incorrect"}


def load_scores(profile: Profile) -> pd.DataFrame:
    return read_table(stage_dir(profile, "03_ig_attribution") / "segment_scores.parquet")


def strength_cdf(profile: Profile, scores: pd.DataFrame) -> dict:
    """The averaged CDF per correctness and the share of segments holding ``analysis.cdf_mass``."""
    mass = profile.get_path("analysis.cdf_mass")
    grid = percent_grid(int(profile.get_path("analysis.cdf_grid_points")))
    curves, rows = {}, []
    for correct in (True, False):
        subset = scores[scores["correct"].astype(bool) == correct] if len(scores) else scores
        traces = [g.sort_values("segment")["norm_strength"].to_numpy() for _, g in subset.groupby("trace_id")] if len(subset) else []
        row = {"traces": LABELS[correct], "n_traces": len(traces), "mass": mass}
        if traces:
            curves[LABELS[correct]] = mean_cdf(traces, grid, profile.get_path("analysis.cdf_interpolation"))
            per_trace = [share_holding(t, mass) for t in traces]
            row.update({"share_from_mean_curve": curve_share_holding(grid, curves[LABELS[correct]], mass),
                        "mean_share_per_trace": float(pd.Series(per_trace).mean()),
                        "median_share_per_trace": float(pd.Series(per_trace).median()),
                        "mean_segments": float(pd.Series([len(t) for t in traces]).mean()), "note": ""})
        else:
            row.update({"share_from_mean_curve": None, "mean_share_per_trace": None, "median_share_per_trace": None,
                        "mean_segments": None, "note": f"no attributed {LABELS[correct]} trace"})
        rows.append(row)
    out = stage_dir(profile, STAGE)
    write_table(out / "cdf.csv", pd.DataFrame({"fraction": grid, **curves}))
    summary = pd.DataFrame(rows)
    write_table(out / "cdf_summary.csv", summary)
    return {"grid": grid, "curves": curves, "summary": summary, "mass": mass}


def decision_segments(profile: Profile, scores: pd.DataFrame) -> pd.DataFrame:
    """The decision segment of every attributed trace: in world profiles the first segment stating the
    chain's final equation; otherwise (and for world traces that never state it) the first segment
    containing the gold answer. ``rule`` records which rule decided."""
    kept = read_table(stage_dir(profile, "01_generation") / "kept_traces.parquet")
    segments = read_table(stage_dir(profile, "02_segmentation") / "segments.parquet")
    ids = sorted(set(scores["trace_id"])) if len(scores) else []
    texts = {tid: g.sort_values("segment")["text"].tolist() for tid, g in segments[segments["trace_id"].isin(ids)].groupby("trace_id")}
    kept = kept.set_index("trace_id")
    problems = world_problems(profile)
    rows = []
    for tid in ids:
        trace = kept.loc[tid]
        index, rule = None, ""
        if problems:
            index, rule = world_decision_segment(problems[trace["question_id"]], texts[tid]), "final equation (world)"
        if index is None:  # the general rule, and the world's fallback for traces that never state the final equation
            index, rule = decision_segment(texts[tid], trace["answer"]), "first segment containing the answer"
        rows.append({"trace_id": tid, "correct": bool(trace["correct"]), "n_segments": len(texts[tid]),
                     "decision_segment": index, "rule": rule})
    table = pd.DataFrame(rows, columns=["trace_id", "correct", "n_segments", "decision_segment", "rule"])
    table["decision_segment"] = table["decision_segment"].astype("Int64")
    write_table(stage_dir(profile, STAGE) / "decision_segments.parquet", table)
    return table


def position_analysis(profile: Profile, scores: pd.DataFrame, decisions: pd.DataFrame) -> dict:
    """App. A on the correct traces at the Sec. 3.1 thresholds."""
    analysis = profile["analysis"]
    correct = scores[scores["correct"].astype(bool)] if len(scores) else scores
    labelled = label_segments(correct, analysis["groups_tau"], analysis["groups_beta"])
    correct_decisions = decisions[decisions["correct"]]
    mapping = {r.trace_id: (None if pd.isna(r.decision_segment) else int(r.decision_segment))
               for r in correct_decisions.itertuples()}
    shares = positional_shares(labelled, mapping)
    write_table(stage_dir(profile, STAGE) / "positional_shares.csv", shares)
    return {"shares": shares, "n_traces": len(mapping),
            "n_with_decision": sum(v is not None for v in mapping.values())}


def write_viewer_examples(profile: Profile, scores: pd.DataFrame, count: int | None = None) -> list[Path]:
    """HTML views of the first ``count`` correct traces with more than one segment (most segments
    first; ties by id), coloured by the profile's selection (Eq. 7, stage 03)."""
    count = int(profile.get_path("analysis.viewer_examples")) if count is None else count
    segments = read_table(stage_dir(profile, "02_segmentation") / "segments.parquet")
    chosen = example_traces(scores, count)
    paths = []
    for tid in chosen:
        view = trace_view(scores, segments, tid)
        name = tid.replace(":", "_")
        paths.append(write_html(stage_dir(profile, STAGE) / "viewer" / f"{name}.html", view,
                                title=f"{tid} ({profile.name} profile)"))
    return paths


def example_traces(scores: pd.DataFrame, count: int) -> list[str]:
    """Correct traces to show: those with both important and unimportant segments first, then by
    number of segments (descending) and id."""
    if scores.empty:
        return []
    correct = scores[scores["correct"].astype(bool)]
    summary = correct.groupby("trace_id").agg(n=("segment", "size"), important=("important", "mean")).reset_index()
    summary["mixed"] = (summary["important"] > 0) & (summary["important"] < 1)
    summary = summary.sort_values(["mixed", "n", "trace_id"], ascending=[False, False, True])
    return summary["trace_id"].head(count).tolist()


def _pct(value) -> str | float:
    return MISSING_TEXT if value is None or value != value else value


def comparison_rows(profile: Profile, cdf: dict, positions: dict) -> list[dict]:
    """The paper-vs-run rows of stage 06."""
    mass = cdf["mass"]
    rows = []
    for record in cdf["summary"].to_dict("records"):
        note = (f"{record['n_traces']} traces; first grid point where the averaged CDF reaches {mass:.0%} "
                f"(mean per-trace k*/n: {_fmt(record['mean_share_per_trace'])})") if record["n_traces"] else record["note"]
        rows.append(comparison_row("Sec. 3, Fig. 1 right-bottom",
                                   f"share of segments holding {mass:.0%} of the attribution, {record['traces']} traces",
                                   "30–40%", _pct(record["share_from_mean_curve"]), note, "{:.0%}"))
    shares = positions["shares"].set_index("set")
    note = f"{positions['n_with_decision']} of {positions['n_traces']} correct traces have a decision segment"
    for name, where, paper in (("important", "after", "40%"), ("unimportant", "before", "57%"),
                               ("low-strength unimportant", "before", "64%"),
                               ("high-consistency unimportant", "after", "72%")):
        value = shares.loc[name, f"share_{where}"]
        rows.append(comparison_row("App. A", f"share of {name} segments {where} the decision segment", paper,
                                   _pct(value), f"{note}; n = {int(shares.loc[name, 'n'])}", "{:.0%}"))
    return rows


def _fmt(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.0%}"
