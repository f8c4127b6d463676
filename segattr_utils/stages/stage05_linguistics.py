"""Stage 05 (notebook ``05_linguistics``): per-segment log-perplexity, entropy, BLEU against the
preceding segments (Sec. 3.1 findings 2-3, Fig. 3) and the removal perplexity of Cui et al. (Table 3);
in the world profiles also the precision/recall of each measure's unimportant set against the
ground-truth redundant kinds. Definitions in :mod:`segattr_utils.measures.linguistics` and
:mod:`segattr_utils.measures.redundancy`.

Artifacts in ``results/<profile>/05_linguistics/``:

- ``linguistics.jsonl``: a :class:`RecordStore` with one record per trace (resumable; keyed by the
  trace id and a fingerprint of its text, so a changed trace is measured again);
- ``segment_linguistics.parquet``: trace_id, segment, correct, n_tokens, log_ppl, entropy, bleu,
  removal_ppl_increase for every attributed correct trace (and the incorrect ones when
  ``analysis.linguistics.include_incorrect``); read by the training notebook's Tables 3-4;
- ``reference_linguistics.jsonl`` and ``reference_segment_linguistics.parquet``: the same for the
  reference traces of the training questions (``services.reference_traces``), measured with the same
  model only when the run plan trains a variant that needs these signals on them
  (``training.ablation_source: reference``, the paper's Tables 3-4 on LIMO's CoTs); training only;
- ``comparisons.csv``, ``bleu_shares.csv``, ``kind_shares.csv``, ``redundancy_precision_recall.csv``.

Sec. 3.1's comparisons of important and unimportant segments are tested at trace level, where
observations are independent (importance is relative within a trace): the three means of Fig. 3
(:func:`compare_measures`) and the share with BLEU above the threshold (:func:`bleu_shares`) each by
within-trace differences and a Wilcoxon signed-rank test over traces. The four form one family,
reported together in notebook 05 (tables and paper-vs-run rows), and Holm's correction is applied over
those four (:func:`fig3_holm`). The segment-pooled tests (Mann-Whitney U, Fisher exact) stay beside
them, named as pooled.
"""

from __future__ import annotations

import functools

import pandas as pd

from .. import dag, distributed, services
from ..artifacts import RecordStore, fingerprint, read_table, write_table
from ..config import Profile
from ..measures.group_stats import MISSING_TEXT, compare_groups, format_p, readable
from ..measures.linguistics import removal_perplexity_increase, segment_bleu, segment_perplexity_entropy
from ..measures.redundancy import redundancy_table
from ..measures.trace_stats import holm, none_preserving_frame, share_comparison, trace_level_comparison
from ..method.importance import label_segments
from ..progress import progress
from ..report import figures
from ..report.paper_vs_run import comparison_row, paper
from ..world import REDUNDANT_KINDS
from . import StageResult, finish

STAGE = dag.LINGUISTICS
LINGUISTIC_COLUMNS = (
    "trace_id",
    "segment",
    "correct",
    "n_tokens",
    "log_ppl",
    "entropy",
    "bleu",
    "removal_ppl_increase",
)
MEASURES = {"log_ppl": "log perplexity", "entropy": "entropy", "bleu": "BLEU vs preceding segments"}
#: The family of trace-level tests notebook 05 reports (Fig. 3 and Sec. 3.1 finding 3), over which
#: Holm's correction is applied: the three means of :data:`MEASURES` and the share with BLEU above the
#: threshold.
FIG3_FAMILY = (*MEASURES, "bleu_share")


#: The per-segment signals of this stage that training variants read (``TraceRecord`` fields).
SIGNALS = ("log_ppl", "entropy", "removal_ppl_increase")
#: Per source: the record store and the per-segment table. The self-generated traces serve Sec. 3's
#: analyses and the self-source runs; the reference traces only training (the paper's Table 3-4
#: baselines on LIMO's CoTs).
TRACE_SETS = {
    "self": ("linguistics_store", "segment_linguistics"),
    "reference": ("reference_linguistics_store", "reference_segment_linguistics"),
}


def measured_sources(profile: Profile) -> list[str]:
    """The sources whose traces stage 05 measures: the self-generated traces always, the reference
    traces when the run plan trains a variant that needs one of :data:`SIGNALS` on them
    (:func:`segattr_utils.services.planned_signals`)."""
    return ["self"] + [s for s in services.sources_needing(profile, SIGNALS) if s != "self"]


def traces_to_measure(profile: Profile, source: str = "self") -> list[dict]:
    """The traces of ``source`` to measure, by trace id, each with ``trace_id``, ``question``,
    ``answer_part``, ``correct`` and ``segments``: the attributed kept traces (correct, plus incorrect
    when configured), or the reference traces of the training questions."""
    if source == "self":
        scores = read_table(dag.IG_ATTRIBUTION.path(profile, "segment_scores"))
        kept = services.kept_traces(profile)
        ids = set(scores["trace_id"]) if len(scores) else set()
        kept = kept[kept["trace_id"].isin(ids)]
        if not profile.get_path("analysis.linguistics.include_incorrect"):
            kept = kept[kept["correct"].astype(bool)]
        texts = services.segment_texts(services.segment_table(profile), kept["trace_id"])
        traces = [dict(t, segments=texts[t["trace_id"]]) for t in kept.to_dict("records")]
    elif source == "reference":
        # The reference traces are trained on as correct solutions (Sec. 4), so they count as correct.
        traces = [dict(t, correct=True) for t in services.reference_traces(profile).to_dict("records")]
    else:
        raise ValueError(f"unknown trace source {source!r}; use one of {', '.join(TRACE_SETS)}")
    return sorted(traces, key=lambda t: t["trace_id"])


def linguistics_record(model, tokenizer, trace: dict, spec: dict) -> dict:
    """Per-segment token counts, log-perplexity, entropy, BLEU and removal perplexity of one trace."""
    segments = list(trace["segments"])
    prompt = services.prompt(tokenizer, trace["question"])
    stats = segment_perplexity_entropy(model, tokenizer, prompt, segments)
    removal = removal_perplexity_increase(
        model, tokenizer, prompt, segments, trace["answer_part"], batch_size=int(spec["batch_size"])
    )
    return {
        "trace_id": trace["trace_id"],
        "correct": bool(trace["correct"]),
        "n_tokens": stats["n_tokens"].tolist(),
        "log_ppl": stats["log_ppl"].tolist(),
        "entropy": stats["entropy"].tolist(),
        "bleu": segment_bleu(segments, spec["bleu_reference"]),
        "removal_ppl_increase": removal,
    }


def segment_rows(records: list[dict]) -> pd.DataFrame:
    """One row per segment of the per-trace records, by trace and segment."""
    rows = []
    for record in records:
        for index in range(len(record["log_ppl"])):
            rows.append(
                {
                    "trace_id": record["trace_id"],
                    "segment": index,
                    "correct": record["correct"],
                    **{c: record[c][index] for c in LINGUISTIC_COLUMNS[3:]},
                }
            )
    return (
        pd.DataFrame(rows, columns=list(LINGUISTIC_COLUMNS)).sort_values(["trace_id", "segment"]).reset_index(drop=True)
    )


def items_to_measure(profile: Profile, source: str = "self") -> tuple[list[dict], RecordStore]:
    """The traces of ``source`` (:func:`traces_to_measure`), each with the ``fingerprint`` of its text and
    the BLEU setting (a changed trace is measured again), and the store their records go to."""
    spec = profile.get_path("analysis.linguistics")
    store_name, _ = TRACE_SETS[source]
    items = [
        dict(t, fingerprint=fingerprint(t["question"], t["answer_part"], list(t["segments"]), spec["bleu_reference"]))
        for t in traces_to_measure(profile, source)
    ]
    return items, RecordStore(STAGE.path(profile, store_name), key_fn=_record_key)


def _record_key(record: dict) -> list:
    return [record["trace_id"], record["fingerprint"]]


def measure_linguistics(profile: Profile, source: str = "self", load_model=None) -> pd.DataFrame:
    """Measure every trace of ``source`` (resumable, one record per trace in that source's store) and
    write its table (``segment_linguistics`` or ``reference_segment_linguistics``). ``load_model()``
    returns ``(model, tokenizer)``; pass one that caches to share the model between sources. With
    ``analysis.linguistics.processes`` > 1 (``auto``: one per GPU) the traces are measured by that many
    processes under ``accelerate launch`` (:func:`segattr_utils.distributed.launch_over_processes`; each
    runs the ``linguistics`` job of :mod:`segattr_utils.workers`, :func:`measure_share`), as
    stage 03's IG; records that ranks wrote and nobody merged are merged first."""
    spec = profile.get_path("analysis.linguistics")
    _, table_name = TRACE_SETS[source]
    items, store = items_to_measure(profile, source)
    processes, threads = distributed.resolve_processes(spec, profile["kind"], "analysis.linguistics")
    distributed.merge_rank_stores(store, [_record_key(item) for item in items])
    todo = [item for item in items if _record_key(item) not in store]
    desc = "perplexity, entropy, BLEU" if source == "self" else f"perplexity, entropy, BLEU ({source})"
    if todo and processes == 1:
        model, tokenizer = load_model() if load_model else services.load_model(profile, "generator")
        for item in progress(todo, desc=desc, unit="trace"):
            store.append([{**linguistics_record(model, tokenizer, item, spec), "fingerprint": item["fingerprint"]}])
    elif todo:
        distributed.launch_over_processes(profile, "linguistics", todo, store, processes, threads, desc)
    wanted = {(item["trace_id"], item["fingerprint"]) for item in items}
    table = segment_rows([r for r in store.records() if (r["trace_id"], r["fingerprint"]) in wanted])
    write_table(STAGE.path(profile, table_name), table)
    return table


def measure_share(profile: Profile, items: list[dict], store: RecordStore) -> int:
    """This process's share of ``items`` (a rank under ``accelerate launch``): dealt longest first over the
    ranks (:func:`segattr_utils.distributed.share_of_this_process`), each record appended to this rank's
    own store. Returns how many traces this rank measured."""
    import torch

    spec = profile.get_path("analysis.linguistics")
    on_cpu = profile["kind"] == "world" or not torch.cuda.is_available()
    weight = lambda item: sum(len(s) for s in item["segments"])  # noqa: E731
    state, mine, own = distributed.share_of_this_process(items, store, cpu=on_cpu, weight=weight)
    if not mine:
        return 0
    torch.set_num_threads(distributed.resolve_processes(spec, profile["kind"], "analysis.linguistics")[1])
    model, tokenizer = services.load_model(profile, "generator", device="cpu" if on_cpu else str(state.device))
    for item in progress(mine, desc=f"perplexity, rank {state.process_index}", disable=not state.is_local_main_process):
        own.append([{**linguistics_record(model, tokenizer, item, spec), "fingerprint": item["fingerprint"]}])
    return len(mine)


def linguistics_tables(profile: Profile) -> dict[str, pd.DataFrame]:
    """:func:`measure_linguistics` of every source of :func:`measured_sources`; the generator is loaded
    once, and only when some trace is not measured yet."""
    load_model = functools.cache(lambda: services.load_model(profile, "generator"))
    return {source: measure_linguistics(profile, source, load_model) for source in measured_sources(profile)}


def analysis_table(profile: Profile, linguistics: pd.DataFrame) -> pd.DataFrame:
    """Correct traces' segments with scores, linguistic measures and (when stage 04 has run) Δ,
    labelled important/unimportant at the Sec. 3.1 thresholds (``important``) and at the profile's
    selection thresholds (``important_selection``, Eq. 7 as in stage 03)."""
    scores = read_table(dag.IG_ATTRIBUTION.path(profile, "segment_scores"))
    scores = scores[scores["correct"].astype(bool)] if len(scores) else scores
    table = (
        scores.drop(columns=["n_tokens"])
        .rename(columns={"important": "important_selection"})
        .merge(linguistics.drop(columns=["correct"]), on=["trace_id", "segment"], how="inner", validate="one_to_one")
    )
    confidence_path = dag.CONFIDENCE_DELTA.path(profile, "segment_confidence")
    if confidence_path.exists():
        confidence = read_table(confidence_path)[["trace_id", "segment", "delta"]]
        table = table.merge(confidence, on=["trace_id", "segment"], how="left", validate="one_to_one")
    analysis = profile["analysis"]
    return label_segments(table, analysis["groups_tau"], analysis["groups_beta"])


def compare_measures(table: pd.DataFrame) -> pd.DataFrame:
    """Important vs unimportant for each measure of Fig. 3. The test is at trace level, where observations
    are independent (importance is relative within a trace): per trace, the mean over its important
    segments minus the mean over its unimportant ones, a Wilcoxon signed-rank test over traces with a
    bootstrap interval (:func:`segattr_utils.measures.trace_stats.trace_level_comparison`). Holm's
    correction is applied by :func:`fig3_holm` over the family notebook 05 reports (these three and the
    BLEU share). The pooled Mann-Whitney U over segments (``p_value``) stays beside it for comparison:
    it treats the segments of a trace as independent."""
    rows = []
    for column, name in MEASURES.items():
        stats = compare_groups(
            table.loc[table["important"], column], table.loc[~table["important"], column], "important", "unimportant"
        )
        rows.append({"measure": name, "column": column, **stats, **trace_level_comparison(table, column)})
    return pd.DataFrame(rows)


#: The trace-level and pooled statistics of :func:`bleu_shares`, as its columns (renamed from
#: :func:`segattr_utils.measures.trace_stats.share_comparison`'s keys).
SHARE_TEST_COLUMNS = {
    "n_traces": "n_traces",
    "traces_with_one_group": "traces_with_one_group",
    "n_nonzero": "n_nonzero",
    "trace_difference": "trace_share_difference",
    "trace_ci_low": "trace_ci_low",
    "trace_ci_high": "trace_ci_high",
    "rank_biserial": "rank_biserial",
    "trace_p": "trace_p",
    "pooled_difference": "pooled_share_difference",
    "pooled_ci_low": "pooled_ci_low",
    "pooled_ci_high": "pooled_ci_high",
    "pooled_invalid_draws": "pooled_invalid_draws",
    "pooled_segments_fisher_p": "pooled_segments_fisher_p",
    "pooled_segments_odds_ratio": "pooled_segments_odds_ratio",
    "test": "test",
    "note": "note",
}


def bleu_shares(table: pd.DataFrame, threshold: float, *, seed: int = 0) -> pd.DataFrame:
    """Share of important and of unimportant segments with BLEU > ``threshold`` (Sec. 3.1 finding 3),
    tested at trace level (:func:`segattr_utils.measures.trace_stats.share_comparison`).

    One row per set (``important``, ``unimportant``) with ``n`` segments, ``n_above`` of them above the
    threshold and ``share_above`` (pooled over the set's segments). The test columns are the same on
    both rows: the reported test is at trace level, where observations are independent: per trace
    with segments in both sets, its important segments' share above the threshold minus its
    unimportant segments' share; ``trace_share_difference`` is their mean over the ``n_traces`` traces
    with its bootstrap interval over traces (``trace_ci_low``, ``trace_ci_high``), ``trace_p`` the
    Wilcoxon signed-rank p (over the ``n_nonzero`` traces whose difference is not 0) and
    ``rank_biserial`` its effect size. ``traces_with_one_group`` counts the traces that cannot
    contribute (segments in one set only). ``pooled_share_difference`` is ``share_above`` of important
    minus unimportant, with a cluster-bootstrap interval over traces (``pooled_ci_low``,
    ``pooled_ci_high``). ``pooled_segments_fisher_p`` (and its odds ratio) is the Fisher exact test on
    the segments pooled, which treats the segments of a trace as independent; it is shown for
    comparison. ``trace_p_holm`` is added by :func:`fig3_holm`. A statistic without data is ``None``
    and ``note`` says why.
    """
    _require_columns(table, ["trace_id", "important", "bleu"])
    above = table.assign(bleu_above=table["bleu"] > threshold)
    stats = share_comparison(above, "bleu_above", "important", "trace_id", seed=seed)
    tests = {column: stats[key] for key, column in SHARE_TEST_COLUMNS.items()}
    rows = [
        {"set": name, "n": stats[f"n_{side}"], "n_above": stats[f"k_{side}"], "share_above": stats[f"share_{side}"]}
        | tests
        for name, side in (("important", "in"), ("unimportant", "out"))
    ]
    return none_preserving_frame(rows)


def _require_columns(table: pd.DataFrame, columns: list[str]) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"table has no column {', '.join(map(repr, missing))}")


def fig3_holm(comparisons: pd.DataFrame, shares: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Holm's correction over the family of trace-level tests notebook 05 reports (:data:`FIG3_FAMILY`):
    the three means of :func:`compare_measures` and the BLEU share of :func:`bleu_shares`. Returns copies
    of both with ``trace_p_holm`` (``None`` for a test that could not be run; such a test is not counted)
    and ``holm_family_size`` (how many p-values the correction counted)."""
    by_test = dict(zip(comparisons["column"], comparisons["trace_p"]))
    if (
        set(by_test) != set(MEASURES)
        or len(comparisons) != len(MEASURES)
        or shares["trace_p"].nunique(dropna=False) != 1
    ):
        raise ValueError("fig3_holm needs compare_measures' three rows and one bleu_shares table")
    by_test["bleu_share"] = shares["trace_p"].iloc[0]
    p_values = {
        key: None if by_test[key] is None or pd.isna(by_test[key]) else float(by_test[key]) for key in FIG3_FAMILY
    }
    adjusted = holm(p_values)
    size = sum(p is not None for p in p_values.values())
    comparisons = comparisons.copy()
    comparisons["trace_p_holm"] = pd.Series(
        [adjusted[c] for c in comparisons["column"]], index=comparisons.index, dtype=object
    )
    comparisons["holm_family_size"] = size
    shares = shares.copy()
    shares["trace_p_holm"] = pd.Series([adjusted["bleu_share"]] * len(shares), index=shares.index, dtype=object)
    shares["holm_family_size"] = size
    return comparisons, shares


def kind_shares(table: pd.DataFrame) -> pd.DataFrame:
    """World profiles: share of each ground-truth kind among important and unimportant segments."""
    rows = []
    for name, selector in (("important", table["important"]), ("unimportant", ~table["important"])):
        kinds = table.loc[selector, "kind"]
        row = {"set": name, "n": int(len(kinds))}
        for kind in sorted(set(table["kind"].dropna())):
            row[kind] = float((kinds == kind).mean()) if len(kinds) else None
        row["redundant"] = float(kinds.isin(REDUNDANT_KINDS).mean()) if len(kinds) else None
        rows.append(row)
    return pd.DataFrame(rows)


def redundancy_precision_recall(table: pd.DataFrame) -> pd.DataFrame:
    """Precision/recall of the unimportant sets against the redundant kinds (world profiles); ours at
    the profile's selection thresholds, the alternatives matched to the same count per trace."""
    if "delta" not in table.columns or table["delta"].isna().any():
        raise FileNotFoundError(
            "stage 04's segment_confidence.parquet is missing or incomplete: run notebook 04 first "
            "(the confidence-gain measure comes from it)"
        )
    measures = {
        "segment perplexity (removal, Cui et al.)": "removal_ppl_increase",
        "segment entropy (Li et al.)": "entropy",
        "confidence gain Δ (Xu et al.)": "delta",
    }
    return redundancy_table(table, measures, ours="important_selection")


def analyse(profile: Profile, table: pd.DataFrame) -> dict:
    """Fig. 3 comparisons, BLEU shares and (world profiles, not on imported traces) kinds and
    precision/recall (writes CSVs)."""
    comparisons, shares = fig3_holm(
        compare_measures(table),
        bleu_shares(table, profile.get_path("analysis.bleu_threshold"), seed=int(profile["seed"])),
    )
    results = {"comparisons": comparisons, "bleu_shares": shares}
    write_table(STAGE.path(profile, "comparisons"), results["comparisons"])
    write_table(STAGE.path(profile, "bleu_shares"), results["bleu_shares"])
    if services.world_ground_truth(profile):  # segment kinds exist for the world's own traces only
        results["kind_shares"] = kind_shares(table)
        results["redundancy"] = redundancy_precision_recall(table)
        write_table(STAGE.path(profile, "kind_shares"), results["kind_shares"])
        write_table(STAGE.path(profile, "redundancy"), results["redundancy"])
    return results


def _pair(a, b, fmt="{:.3f}") -> str:
    def show(value) -> str:
        return "n/a" if value is None or value != value else fmt.format(value)  # value != value: NaN

    return f"{show(a)} vs {show(b)}"


def _interval(estimate, low, high) -> str:
    if estimate is None or pd.isna(estimate):
        return MISSING_TEXT
    if low is None or pd.isna(low):
        return f"{estimate:+.3f} [no interval]"
    return f"{estimate:+.3f} [95% CI {low:+.3f}, {high:+.3f}]"


def _holm_family(size: int, threshold: float) -> str:
    tests = f"the {len(FIG3_FAMILY)} tests of Fig. 3 (3 means, the BLEU > {threshold:g} share)"
    return f"Holm over {tests}" if size == len(FIG3_FAMILY) else f"Holm over the {size} of {tests} with a p-value"


def comparison_rows(profile: Profile, results: dict) -> list[dict]:
    """The paper-vs-run rows of stage 05 (important vs unimportant at the Sec. 3.1 thresholds)."""
    analysis = profile["analysis"]
    where = f"τ = {analysis['groups_tau']:g}, β = {analysis['groups_beta']:g}"
    expected = {column: paper(f"fig3.{column}") for column in MEASURES}
    threshold = profile.get_path("analysis.bleu_threshold")
    rows = []
    for record in results["comparisons"].to_dict("records"):
        family = _holm_family(record["holm_family_size"], threshold)
        rows.append(
            comparison_row(
                "Sec. 3.1, Fig. 3",
                f"mean {record['measure']}, important vs unimportant ({where})",
                expected[record["column"]],
                f"{_pair(record['mean_a'], record['mean_b'])} (traces: {format_p(record['trace_p_holm'])}, Holm)",
                f"{record['n_traces']} traces: within-trace difference "
                f"{_interval(record['trace_difference'], record['trace_ci_low'], record['trace_ci_high'])}, "
                f"Wilcoxon signed-rank, {family}; segments pooled ({record['n_a']} vs {record['n_b']}, "
                f"Mann-Whitney U, not independent): {format_p(record['p_value'])}"
                + (f"; {record['note']}" if record["note"] else "")
                + (f"; {record['trace_note']}" if record["trace_note"] else ""),
            )
        )
    shares = results["bleu_shares"].set_index("set")
    test = shares.iloc[0]
    rows.append(
        comparison_row(
            "Sec. 3.1, Fig. 3",
            f"share with BLEU > {threshold:g}, important vs unimportant ({where})",
            paper("fig3.bleu_share"),
            f"{_pair(shares.loc['important', 'share_above'], shares.loc['unimportant', 'share_above'], '{:.1%}')} "
            f"(traces: {format_p(test['trace_p_holm'])}, Holm)",
            f"{test['n_traces']} traces with both sets ({test['traces_with_one_group']} with one set only left out, "
            f"{test['n_nonzero']} with a non-zero difference): within-trace share difference "
            f"{_interval(test['trace_share_difference'], test['trace_ci_low'], test['trace_ci_high'])}, "
            f"Wilcoxon signed-rank {format_p(test['trace_p'])}, {_holm_family(test['holm_family_size'], threshold)}; "
            "pooled share difference "
            f"{_interval(test['pooled_share_difference'], test['pooled_ci_low'], test['pooled_ci_high'])} "
            f"(bootstrap over traces); segments pooled ({shares.loc['important', 'n']} vs "
            f"{shares.loc['unimportant', 'n']}, Fisher exact, not independent): "
            f"{format_p(test['pooled_segments_fisher_p'])}" + (f"; {test['note']}" if test["note"] else ""),
        )
    )
    if "kind_shares" in results:
        kinds = results["kind_shares"].set_index("set")
        truncated = [
            kinds.loc[s, "truncated"] if "truncated" in kinds.columns else None for s in ("unimportant", "important")
        ]
        rows.append(
            comparison_row(
                "Sec. 3.1",
                "share truncated, unimportant vs important",
                paper("fig3.truncated_share"),
                _pair(*truncated, fmt="{:.1%}"),
                "the world's ground-truth kinds, not the judge of notebook 07",
            )
        )
    return rows


def run(profile: Profile) -> StageResult:
    """Stage 05: log-perplexity, entropy and BLEU of every segment (Fig. 3), the removal perplexity of
    Cui et al., and (world profiles) precision/recall against the ground-truth redundant kinds; the
    reference traces' measures too when training needs them."""
    by_source = linguistics_tables(profile)
    linguistics = by_source["self"]  # Sec. 3's analyses: the self-generated traces only
    table = analysis_table(profile, linguistics)
    scores = read_table(dag.IG_ATTRIBUTION.path(profile, "segment_scores"))
    results = analyse(profile, table)
    columns = [
        "measure",
        "n_traces",
        "trace_difference",
        "trace_ci_low",
        "trace_ci_high",
        "rank_biserial",
        "trace_p",
        "trace_p_holm",
        "holm_family_size",
        "n_a",
        "n_b",
        "mean_a",
        "mean_b",
        "difference",
        "u",
        "p_value",
        "test",
        "note",
        "trace_note",
    ]
    tables = {
        "comparisons": readable(
            results["comparisons"][columns].rename(
                columns={
                    "n_a": "n_important",
                    "n_b": "n_unimportant",
                    "mean_a": "mean_important",
                    "mean_b": "mean_unimportant",
                    "p_value": "pooled_segments_p",
                    "test": "pooled_segments_test",
                }
            )
        ),
        "bleu_shares": readable(results["bleu_shares"]),
    }
    if "redundancy" in results:
        tables["kind_shares"] = readable(results["kind_shares"])
        tables["redundancy"] = readable(results["redundancy"])
    p_texts = {
        r["column"]: f"traces, Holm: {format_p(r['trace_p_holm'])}" for r in results["comparisons"].to_dict("records")
    }
    fig = figures.fig3_linguistics(table, p_texts, profile.get_path("analysis.bleu_threshold"))
    measured = linguistics[["log_ppl", "entropy", "bleu", "removal_ppl_increase"]]
    checks = {
        "every segment of every attributed correct trace is measured": len(table) == int(scores["correct"].sum()),
        "no missing value": not measured.isna().any().any(),
        "BLEU lies in [0, 1]": bool(linguistics["bleu"].between(0, 1).all()),
    }
    if "reference" in by_source:  # only when an ablation trains on the reference traces
        reference = by_source["reference"]
        n_segments = sum(len(t["segments"]) for t in traces_to_measure(profile, "reference"))
        checks["one row per segment of every reference trace, no missing value"] = len(reference) == n_segments and (
            not reference[list(SIGNALS)].isna().any().any()
        )
    return finish(
        profile,
        STAGE,
        comparison_rows(profile, results),
        tables=tables,
        figures={"fig3_linguistics": figures.save(fig, profile, "fig3_linguistics")},
        checks=checks,
    )
