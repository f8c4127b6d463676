"""Stage 06 (notebook ``06_distribution_position``): the CDF of normalised strength over segments
ranked by strength for correct and incorrect traces (Fig. 1 right-bottom, Sec. 3 setup), the decision
segment and the positional shares of App. A, the segment viewer's examples (Fig. 1 left), and, beyond
the paper, the segment-level faithfulness of IG strength against the other measures (ERASER, RISE,
AOPC on whole segments). Definitions in :mod:`segattr_utils.measures.position`,
:mod:`segattr_utils.report.viewer`, :mod:`segattr_utils.measures.faithfulness`,
:mod:`segattr_utils.measures.faithfulness_stats` and :mod:`segattr_utils.measures.faithfulness_run`.

Artifacts in ``results/<profile>/06_distribution_position/``: ``cdf.csv`` (the averaged curves),
``cdf_summary.csv`` (share of segments holding ``analysis.cdf_mass``), ``decision_segments.parquet``,
``positional_shares.csv`` and ``viewer/<trace>.html``; with ``analysis.faithfulness.enabled``:

- ``faithfulness.jsonl``: a :class:`RecordStore` with one record per trace (keyed by the trace id and a
  fingerprint of its text, scores and the settings its orders depend on; a resumed run skips it): the
  orderings and their deletion and insertion curves (F after each step) and the forward passes (data
  only: the time taken goes to the stage's ``run_log.csv``, so equal data give equal bytes);
- ``faithfulness.parquet``: one row per (trace, ordering) with every score of
  :func:`~segattr_utils.measures.faithfulness.curve_metrics` (recomputed from the store's curves by
  :func:`~segattr_utils.measures.faithfulness_run.faithfulness_rows`, so a changed budget or gap needs no
  forward pass);
- ``faithfulness_summary.csv`` (one row per ordering), ``faithfulness_tests.csv`` (IG strength against
  each other ordering, trace-level Wilcoxon, Holm) and ``faithfulness_curves.csv`` (the mean curves).

Stage 06 reads stages 04 and 05 for the faithfulness orderings of confidence gain, segment perplexity
and segment entropy (:func:`segattr_utils.services.segment_signals`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from .. import dag, services
from ..artifacts import RecordStore, read_table, write_table
from ..config import Profile
from ..measures.faithfulness_run import (
    ORDERING_LABELS,
    REFERENCE,
    FaithfulnessSettings,
    faithfulness_checks,
    faithfulness_record,
    faithfulness_tables,
    ordering_test,
    record_key,
    select_traces,
    settings_from_spec,
    summary_value,
    trace_items,
)
from ..measures.group_stats import MISSING_TEXT, format_p, readable
from ..measures.position import (
    curve_share_holding,
    decision_segment,
    mean_cdf,
    percent_grid,
    positional_shares,
    share_holding,
    world_decision_segment,
)
from ..method.importance import label_segments
from ..method.token_spans import build_attribution_sequence
from ..progress import progress
from ..report import figures
from ..report.paper_vs_run import beyond_paper_row, comparison_row, paper
from ..report.viewer import record_token_values, token_pieces, trace_view, write_html
from ..run_log import log_seconds
from . import StageResult, finish

STAGE = dag.DISTRIBUTION_POSITION
LABELS = {True: "correct", False: "incorrect"}


def load_scores(profile: Profile) -> pd.DataFrame:
    return read_table(dag.IG_ATTRIBUTION.path(profile, "segment_scores"))


def strength_cdf(profile: Profile, scores: pd.DataFrame) -> dict:
    """The averaged CDF per correctness and the share of segments holding ``analysis.cdf_mass``."""
    mass = profile.get_path("analysis.cdf_mass")
    grid = percent_grid(int(profile.get_path("analysis.cdf_grid_points")))
    curves, rows = {}, []
    for correct in (True, False):
        subset = scores[scores["correct"].astype(bool) == correct] if len(scores) else scores
        traces = (
            [g.sort_values("segment")["norm_strength"].to_numpy() for _, g in subset.groupby("trace_id")]
            if len(subset)
            else []
        )
        row = {"traces": LABELS[correct], "n_traces": len(traces), "mass": mass}
        if traces:
            curves[LABELS[correct]] = mean_cdf(traces, grid, profile.get_path("analysis.cdf_interpolation"))
            per_trace = [share_holding(t, mass) for t in traces]
            row.update(
                {
                    "share_from_mean_curve": curve_share_holding(grid, curves[LABELS[correct]], mass),
                    "mean_share_per_trace": float(pd.Series(per_trace).mean()),
                    "median_share_per_trace": float(pd.Series(per_trace).median()),
                    "mean_segments": float(pd.Series([len(t) for t in traces]).mean()),
                    "note": "",
                }
            )
        else:
            row.update(
                {
                    "share_from_mean_curve": None,
                    "mean_share_per_trace": None,
                    "median_share_per_trace": None,
                    "mean_segments": None,
                    "note": f"no attributed {LABELS[correct]} trace",
                }
            )
        rows.append(row)
    write_table(STAGE.path(profile, "cdf"), pd.DataFrame({"fraction": grid, **curves}))
    summary = pd.DataFrame(rows)
    write_table(STAGE.path(profile, "cdf_summary"), summary)
    return {"grid": grid, "curves": curves, "summary": summary, "mass": mass}


def decision_segments(profile: Profile, scores: pd.DataFrame) -> pd.DataFrame:
    """The decision segment of every attributed trace: in world profiles the first segment stating the
    chain's final equation; otherwise (and for world traces that never state it) the first segment
    containing the gold answer. ``rule`` records which rule decided."""
    kept = services.kept_traces(profile)
    segments = services.segment_table(profile)
    ids = sorted(set(scores["trace_id"])) if len(scores) else []
    texts = {
        tid: g.sort_values("segment")["text"].tolist()
        for tid, g in segments[segments["trace_id"].isin(ids)].groupby("trace_id")
    }
    kept = kept.set_index("trace_id")
    problems = services.world_problems(profile)
    rows = []
    for tid in ids:
        trace = kept.loc[tid]
        index, rule = None, ""
        if problems:
            index, rule = world_decision_segment(problems[trace["question_id"]], texts[tid]), "final equation (world)"
        if index is None:  # the general rule, and the world's fallback for traces that never state the final equation
            index, rule = decision_segment(texts[tid], trace["answer"]), "first segment containing the answer"
        rows.append(
            {
                "trace_id": tid,
                "correct": bool(trace["correct"]),
                "n_segments": len(texts[tid]),
                "decision_segment": index,
                "rule": rule,
            }
        )
    table = pd.DataFrame(rows, columns=["trace_id", "correct", "n_segments", "decision_segment", "rule"])
    table["decision_segment"] = table["decision_segment"].astype("Int64")
    write_table(STAGE.path(profile, "decision_segments"), table)
    return table


def position_analysis(profile: Profile, scores: pd.DataFrame, decisions: pd.DataFrame) -> dict:
    """App. A on the correct traces at the Sec. 3.1 thresholds."""
    analysis = profile["analysis"]
    correct = scores[scores["correct"].astype(bool)] if len(scores) else scores
    labelled = label_segments(correct, analysis["groups_tau"], analysis["groups_beta"])
    correct_decisions = decisions[decisions["correct"]]
    mapping = {
        r.trace_id: (None if pd.isna(r.decision_segment) else int(r.decision_segment))
        for r in correct_decisions.itertuples()
    }
    shares = positional_shares(labelled, mapping)
    write_table(STAGE.path(profile, "positional_shares"), shares)
    return {"shares": shares, "n_traces": len(mapping), "n_with_decision": sum(v is not None for v in mapping.values())}


def write_viewer_examples(profile: Profile, scores: pd.DataFrame, count: int | None = None) -> list[Path]:
    """HTML views of the first ``count`` correct traces with more than one segment (most segments
    first; ties by id), coloured by the profile's selection (Eq. 7 and the always-kept segments, stage
    03), with the question, the gold and the trace's own answer, and token attributions where stage 03's
    records are at hand."""
    count = int(profile.get_path("analysis.viewer_examples")) if count is None else count
    segments = services.segment_table(profile)
    chosen = example_traces(scores, count)
    kept = services.kept_traces(profile).set_index("trace_id")
    store_path = dag.IG_ATTRIBUTION.path(profile, "attributions_store")
    records = (
        {r["trace_id"]: r for r in RecordStore(store_path, key_fn=lambda r: r["trace_id"]).records()}
        if chosen and store_path.exists()
        else {}
    )
    # Only the tokenizer (no weights): the token texts of the attributed sequence.
    tokenizer = services.load_role_tokenizer(profile, "generator") if set(chosen) & set(records) else None
    paths = []
    for tid in chosen:
        view = trace_view(scores, segments, tid)
        trace = kept.loc[tid]
        name = tid.replace(":", "_")
        paths.append(
            write_html(
                STAGE.path(profile, "viewer") / f"{name}.html",
                view,
                title=f"{tid} ({profile.name} profile)",
                question=trace["question"],
                gold_answer=str(trace["answer"]),
                trace_answer=trace["answer_part"],
                correct=bool(trace["correct"]),
                tokens=example_tokens(profile, tokenizer, trace, view["text"].tolist(), records.get(tid)),
            )
        )
    return paths


def example_tokens(profile: Profile, tokenizer, trace: pd.Series, texts: list[str], record: dict | None):
    """The viewer's token pieces of one trace from its stage 03 record (the attributed sequence rebuilt
    with the same tokenizer and suffix), or ``None`` when there is no record or it no longer matches
    the segments (then the page has no token toggle)."""
    if tokenizer is None or record is None or record.get("skipped"):
        return None
    sequence = build_attribution_sequence(
        tokenizer,
        services.prompt(tokenizer, trace["question"]),
        texts,
        str(trace["answer"]),
        suffix_template=profile.get_path("attribution.answer_suffix"),
    )
    if [list(span) for span in sequence.segment_spans] != [list(span) for span in record["segment_spans"]]:
        return None
    return token_pieces(sequence, record_token_values(record, len(sequence)))


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
        note = (
            (
                f"{record['n_traces']} traces; first grid point where the averaged CDF reaches {mass:.0%} "
                f"(mean per-trace k*/n: {_fmt(record['mean_share_per_trace'])})"
            )
            if record["n_traces"]
            else record["note"]
        )
        rows.append(
            comparison_row(
                "Sec. 3, Fig. 1 right-bottom",
                f"share of segments holding {mass:.0%} of the attribution, {record['traces']} traces",
                paper("fig1.cdf_share"),
                _pct(record["share_from_mean_curve"]),
                note,
                "{:.0%}",
            )
        )
    shares = positions["shares"].set_index("set")
    note = f"{positions['n_with_decision']} of {positions['n_traces']} correct traces have a decision segment"
    for name, where, key in (
        ("important", "after", "important_after"),
        ("unimportant", "before", "unimportant_before"),
        ("low-strength unimportant", "before", "low_strength_unimportant_before"),
        ("high-consistency unimportant", "after", "high_consistency_unimportant_after"),
    ):
        value = shares.loc[name, f"share_{where}"]
        rows.append(
            comparison_row(
                "App. A",
                f"share of {name} segments {where} the decision segment",
                paper(f"appA.{key}"),
                _pct(value),
                f"{note}; n = {int(shares.loc[name, 'n'])}",
                "{:.0%}",
            )
        )
    return rows


def _fmt(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.0%}"


# ---------------------------------------------------------------------------------------------
# Segment-level faithfulness (beyond the paper)

FAITHFULNESS_SECTION = "beyond the paper: segment faithfulness (ERASER, RISE, AOPC)"


def faithfulness_settings(profile: Profile) -> FaithfulnessSettings:
    """The validated ``analysis.faithfulness`` section; raises ``ValueError`` naming the bad setting."""
    spec = profile.get_path("analysis.faithfulness", None)
    return settings_from_spec(spec)


def faithfulness_items(profile: Profile, scores: pd.DataFrame, settings: FaithfulnessSettings) -> tuple[list, dict]:
    """The traces whose orderings are measured, and counts of the traces left out.

    The attributed correct traces with at least 2 segments (with one, every ordering is the same), or
    ``n_traces`` of them (:func:`~segattr_utils.measures.faithfulness_run.sample_traces`). Each item holds
    what its orderings and its sequence need: question, gold answer, segment texts, ground-truth kinds
    (world profiles), stage 03's normalised strength and the signals of stages 04-05 per segment, and the
    ``fingerprint`` of all of that with the settings the orders depend on (its record is recomputed when
    any of it changes; :func:`~segattr_utils.measures.faithfulness_run.trace_items`).
    """
    correct, chosen, counts = select_traces(scores, settings)
    if not chosen:
        return [], counts
    kept = services.kept_traces(profile).set_index("trace_id")
    segments = services.segment_table(profile)
    world = services.world_ground_truth(profile) and "kind" in segments.columns
    signals = services.segment_signals(profile, "self")
    suffix = profile.get_path("attribution.answer_suffix")
    baseline = profile.get_path("attribution.baseline")
    items = trace_items(
        correct,
        chosen,
        kept,
        segments,
        signals,
        world=world,
        suffix=suffix,
        baseline=baseline,
        seed=settings.random_seed,
    )
    return items, counts


def trace_sequence(tokenizer, item: dict, suffix: str):
    """Stage 03's sequence ``prompt + trace + answer suffix`` of one item."""
    return build_attribution_sequence(
        tokenizer, services.prompt(tokenizer, item["question"]), list(item["segments"]), item["answer"], suffix
    )


def measure_faithfulness(profile: Profile, scores: pd.DataFrame) -> dict:
    """The faithfulness analysis: the curves of every item (:func:`faithfulness_items`) not in the store
    yet (the generator is loaded only then; the time taken goes to the stage's run log), then the
    per-trace rows, the summary per ordering, the trace-level tests of IG strength against each other
    ordering and the mean curves (:func:`~segattr_utils.measures.faithfulness_run.faithfulness_tables`),
    each written to its artifact. Returns them with the settings, the counts and the records."""
    settings = faithfulness_settings(profile)
    items, counts = faithfulness_items(profile, scores, settings)
    store = RecordStore(STAGE.path(profile, "faithfulness_store"), key_fn=record_key)
    todo = [item for item in items if record_key(item) not in store]
    if todo:
        started = time.perf_counter()
        model, tokenizer = services.load_model(profile, "generator")
        baseline = services.baseline_token(profile, tokenizer)
        suffix = profile.get_path("attribution.answer_suffix")
        per_trace = []
        for item in progress(todo, desc="faithfulness", unit="trace"):
            trace_started = time.perf_counter()
            record = faithfulness_record(model, trace_sequence(tokenizer, item, suffix), item, baseline, settings)
            per_trace.append(time.perf_counter() - trace_started)
            store.append([record])
        log_seconds(profile, STAGE, f"faithfulness: {len(todo)} traces", time.perf_counter() - started)
        log_seconds(profile, STAGE, f"faithfulness: median per trace of {len(todo)}", float(np.median(per_trace)))
    wanted = {tuple(record_key(item)) for item in items}
    records = sorted((r for r in store.records() if tuple(record_key(r)) in wanted), key=lambda r: r["trace_id"])
    tables = faithfulness_tables(records, settings)
    for name, table in (
        ("faithfulness", tables["rows"]),
        ("faithfulness_summary", tables["summary"]),
        ("faithfulness_tests", tables["tests"]),
        ("faithfulness_curves", tables["curves"]),
    ):
        write_table(STAGE.path(profile, name), table)
    return {"settings": settings, "counts": counts, "records": records, **tables}


def _test_note(test: dict, n_tests: int) -> str:
    if test["mean_difference"] is None:
        return test["note"] or "no trace"
    return (
        f"{test['n_traces']} traces: IG larger in {test['reference_better']:.0%}; within-trace difference "
        f"{test['mean_difference']:+.3g} nats [95% CI {test['ci_low']:+.3g}, {test['ci_high']:+.3g}], Wilcoxon "
        f"signed-rank, Holm over {n_tests}: {format_p(test['p_holm'])}"
    )


def faithfulness_comparison_rows(result: dict) -> list[dict]:
    """The paper-vs-run rows of the faithfulness analysis, marked beyond the paper: IG strength against the
    random order on the deletion and insertion areas (medians in nats), and the ordering with the largest
    median deletion area."""
    summary, tests = result["summary"], result["tests"]
    n_tests = int(tests["p_value"].notna().sum()) if len(tests) else 0
    rows = []
    for metric, what in (("deletion_area", "deletion"), ("insertion_area", "insertion")):
        ig, rnd = (
            summary_value(summary, REFERENCE, f"{metric}_median"),
            summary_value(summary, "random", f"{metric}_median"),
        )
        test = ordering_test(tests, metric, "random")
        run = MISSING_TEXT if ig is None or rnd is None else f"{ig:.3g} vs {rnd:.3g}"
        note = _test_note(test, n_tests) if test else "no trace measured"
        statistic = f"{what} area (nats, median over traces), IG strength vs random order"
        rows.append(beyond_paper_row(FAITHFULNESS_SECTION, statistic, run, note))
    best = summary.dropna(subset=["deletion_area_median"]) if len(summary) else summary
    if len(best):
        top = best.loc[best["deletion_area_median"].astype(float).idxmax()]
        run = f"{ORDERING_LABELS[top['ordering']]} ({float(top['deletion_area_median']):.3g} nats)"
        note = f"of {len(best)} orderings; {int(top['n_traces'])} traces"
    else:
        run, note = MISSING_TEXT, "no trace measured"
    rows.append(beyond_paper_row(FAITHFULNESS_SECTION, "ordering with the largest median deletion area", run, note))
    return rows


def faithfulness_sentence(result: dict) -> str:
    """What the faithfulness table shows, in one sentence computed from it (true whatever the numbers)."""
    summary, tests, counts = result["summary"], result["tests"], result["counts"]
    if not len(result["rows"]):
        return (
            f"No correct trace with two or more segments was measured ({counts['correct']} attributed correct "
            f"traces, {counts['single_segment']} with one segment): there is no faithfulness result."
        )
    ig, rnd = (
        summary_value(summary, REFERENCE, "deletion_area_median"),
        summary_value(summary, "random", "deletion_area_median"),
    )
    test = ordering_test(tests, "deletion_area", "random")
    top = summary.loc[summary["deletion_area_median"].astype(float).idxmax()]
    oracle = summary_value(summary, "oracle", "deletion_area_median")
    oracle_text = f", the ground-truth oracle {oracle:.3g}" if oracle is not None else ""
    return (
        f"Over {int(summary['n_traces'].max())} correct traces, the median deletion area (the drop of the answer's "
        f"log-probability, averaged over the share of trace tokens removed) is {ig:.3g} nats when segments go in "
        f"order of IG strength and {rnd:.3g} in random order{oracle_text}; IG's area is the larger in "
        f"{test['reference_better']:.0%} of traces (Holm {format_p(test['p_holm'])}), and the largest median "
        f"belongs to {ORDERING_LABELS[top['ordering']]} ({float(top['deletion_area_median']):.3g} nats)."
    )


def faithfulness_analysis(profile: Profile, scores: pd.DataFrame) -> dict:
    """:func:`measure_faithfulness`, then its figure, tables, checks, comparison rows and sentence, as
    :func:`run` merges them into the stage's result."""
    result = measure_faithfulness(profile, scores)
    labels = {name: ORDERING_LABELS[name] for name in result["orderings"]}
    figure = figures.save(
        figures.faithfulness_curves(result["curves"], result["rows"], labels, REFERENCE), profile, "faithfulness"
    )
    passes = [r["n_forward"] for r in result["records"]]
    return {
        **result,
        "figure": figure,
        "tables": {
            "faithfulness_summary": readable(result["summary"]),
            "faithfulness_tests": readable(result["tests"]),
        },
        "checks": faithfulness_checks(result),
        "comparison": faithfulness_comparison_rows(result),
        "values": {
            "faithfulness_sentence": faithfulness_sentence(result),
            "faithfulness_forward_passes_per_trace": float(np.mean(passes)) if passes else None,
            "faithfulness_counts": result["counts"],
        },
    }


def run(profile: Profile) -> StageResult:
    """Stage 06: the CDF of normalised strength (Fig. 1 right-bottom), the decision segment and the
    positional shares of App. A, the segment viewer (Fig. 1 left) and, with
    ``analysis.faithfulness.enabled``, the segment-level faithfulness of each ordering (beyond the paper)."""
    settings = faithfulness_settings(profile)  # a bad setting fails before any work
    scores = load_scores(profile)
    cdf = strength_cdf(profile, scores)
    shares = {r["traces"]: r["share_from_mean_curve"] for r in cdf["summary"].to_dict("records") if r["n_traces"]}
    saved = {
        "fig1_right_bottom_cdf": figures.save(
            figures.fig1_right_bottom_cdf(cdf["grid"], cdf["curves"], cdf["mass"], shares),
            profile,
            "fig1_right_bottom_cdf",
        )
    }
    decisions = decision_segments(profile, scores)
    positions = position_analysis(profile, scores, decisions)
    saved["appA_decision_position"] = figures.save(
        figures.app_a_positions(positions["shares"]), profile, "appA_decision_position"
    )
    viewer_paths = write_viewer_examples(profile, scores)
    if viewer_paths:
        example = example_traces(scores, 1)[0]
        view = trace_view(scores, services.segment_table(profile), example)
        fig = figures.fig1_left_segment_viewer(
            view, title=f"{example}: important (green), always kept (blue) and masked (gray) segments"
        )
        saved["fig1_left_segment_viewer"] = figures.save(fig, profile, "fig1_left_segment_viewer")
    curves = cdf["curves"].values()
    tables = {
        "cdf_summary": readable(cdf["summary"]),
        "decisions": decisions.groupby(["correct", "rule"])
        .agg(traces=("trace_id", "size"), with_decision=("decision_segment", "count"))
        .reset_index(),
        "positional_shares": readable(positions["shares"]),
    }
    checks = {
        "every averaged CDF ends at 1": all(abs(curve[-1] - 1) < 1e-9 for curve in curves),
        "every averaged CDF is non-decreasing": all(bool((c[1:] >= c[:-1] - 1e-12).all()) for c in curves),
    }
    values = {
        "viewer": [p.relative_to(dag.profile_path(profile, dag.FIGURES_DIR).parent).as_posix() for p in viewer_paths],
        "faithfulness_sentence": "analysis.faithfulness.enabled is false: the faithfulness analysis did not run.",
    }
    rows = comparison_rows(profile, cdf, positions)
    if settings.enabled:
        faithfulness = faithfulness_analysis(profile, scores)
        saved["faithfulness"] = faithfulness["figure"]
        tables.update(faithfulness["tables"])
        checks.update(faithfulness["checks"])
        values.update(faithfulness["values"])
        rows += faithfulness["comparison"]
    return finish(profile, STAGE, rows, tables=tables, figures=saved, checks=checks, values=values)
