"""Stage 07: the truncated-segment judge on the attributed correct traces (Sec. 3.1 finding 3, App. B).

Every segment of every attributed correct trace is judged with the two-round protocol of
:mod:`segattr_utils.measures.judge`; the truncated share among important and unimportant segments (the
paper reports 49% of unimportant vs 26% of important segments truncated) is compared at trace level,
where observations are independent (importance is relative within a trace): per trace, its important
segments' truncated share minus its unimportant segments', tested with a Wilcoxon signed-rank test over
traces (:func:`segattr_utils.measures.trace_stats.share_comparison`). Fisher's exact test on the
segments pooled stays beside it, named as pooled: it treats the segments of a trace as independent.
Important vs unimportant are the groups of the Sec. 3.1 comparative analysis: Eq. 6-7 with
``analysis.groups_tau`` / ``analysis.groups_beta`` (tau = 80%, beta = 0.95), recomputed per trace from
stage 03's normalised strength and consistency; stage 03's own selection (the profile's
``selection.tau``/``beta``) is kept as ``important_selection``.

- Paper profile: the judge is ``models.judge`` (Qwen3-8B, thinking enabled through its chat
  template), run with the generation backend of stage 01 (vLLM when installed, else batched HF
  generate).
- World profiles: a tiny Qwen2 judge trained here on balanced labelled triples of the world's
  teacher traces (label 1 iff the segment's kind is ``truncated``), with teacher outputs in the
  protocol's format; its accuracy, precision and recall are measured against the ground-truth kinds
  of the judged segments.

Artifacts (``results/<profile>/07_truncation_judge/``): ``judgements.jsonl`` (raw round outputs,
resumable), ``judgements.parquet``, ``truncated_share.csv``, ``rounds.csv``, ``judge_quality.csv``
(world), ``judge_training.json`` (world), and ``figures/judge_confusion_matrix.png/.pdf`` (world).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from .. import dag, services
from ..artifacts import RecordStore, read_json, read_table, write_json, write_table
from ..config import Profile
from ..measures import judge as judge_lib
from ..measures.group_stats import format_p
from ..measures.trace_stats import none_preserving_frame, share_comparison
from ..method.importance import label_segments
from ..report import figures
from ..report.paper_vs_run import comparison_row, paper
from ..run_log import log_seconds, log_timings
from . import StageResult, finish

STAGE = dag.TRUNCATION_JUDGE
PAPER_TRUNCATED_SHARE = {
    "unimportant": paper("appB.unimportant_truncated"),
    "important": paper("appB.important_truncated"),
}


def judge_settings(profile: Profile) -> judge_lib.JudgeSettings:
    return judge_lib.JudgeSettings.from_profile(profile)


# ---------------------------------------------------------------------------------------------
# The judge model: trained in the world, or the hub model of the paper profile


def judge_training_triples(profile: Profile) -> list[tuple[judge_lib.Triple, int]]:
    """Balanced labelled triples from the world's pretraining teacher traces (``00_world``)."""
    traces = read_table(dag.WORLD.path(profile, "teacher_traces"))
    traces = traces[traces["suite"] == "pretrain"]
    labelled = judge_lib.labelled_triples(zip(traces["segments"], traces["kinds"]))
    return judge_lib.balanced_triples(labelled, int(profile.get_path("judge.n_training_triples")), int(profile["seed"]))


def train_tiny_judge(profile: Profile) -> dict:
    """Train the world's judge (resumable; a finished run is not repeated) and return its summary.

    The judge gets its own byte-level BPE tokenizer, trained on the judge prompts and teacher outputs:
    the generator's tokenizer never saw the task description's words and would spend several tokens
    on each. Architecture and schedule: profile ``judge.model``.
    """
    from ..llm.training import TrainSettings, is_trained, train_sft
    from ..world.tiny_model import build_tiny_model
    from ..world.tokenizer import build_bpe_tokenizer

    if profile["kind"] != "world":
        raise ValueError("only world profiles train their judge; the paper profile uses models.judge")
    run_dir = STAGE.path(profile, "judge_checkpoints")
    model_dir = STAGE.path(profile, "judge_model")
    summary_path = STAGE.path(profile, "judge_training")
    if is_trained(run_dir) and (model_dir / "config.json").is_file() and summary_path.is_file():
        return read_json(summary_path)
    spec, seed, settings = profile.get_path("judge.model"), int(profile["seed"]), judge_settings(profile)
    started = time.time()
    triples = judge_training_triples(profile)
    tokenizer = build_bpe_tokenizer(judge_lib.judge_corpus(triples, settings), vocab_size=spec["tokenizer_vocab_size"])
    examples = judge_lib.judge_training_examples(tokenizer, triples, settings, spec["round2_share"], seed)
    model = build_tiny_model(tokenizer, spec["architecture"], seed)
    train_settings = TrainSettings.from_dict(spec["training"])
    if is_trained(run_dir):  # trained before, but the saved model or summary is missing: reload the final weights
        from ..llm.models import load_causal_lm

        model, tokenizer = load_causal_lm(str(run_dir / "final"), dtype="float32", device="cpu")
        summary = {"resumed_from": "checkpoints/judge/final"}
    else:
        summary = log_timings(
            profile, STAGE, "judge", train_sft(model, tokenizer, examples, train_settings, run_dir, seed)
        )
    log_seconds(profile, STAGE, "judge: build and train", time.time() - started)
    summary.update(
        {
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "n_triples": len(triples),
            "n_truncated": sum(label for _, label in triples),
            "mean_tokens_per_example": float(np.mean([len(e.input_ids) for e in examples])),
            "vocab_size": len(tokenizer),
        }
    )
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    write_json(summary_path, summary)
    return summary


def load_judge(profile: Profile):
    """``(generator, tokenizer)`` of the judge (:func:`segattr_utils.services.load_generator`, role ``judge``).

    World: the trained tiny judge with batched HF generate. Paper: ``models.judge`` with the profile's
    generation backend (vLLM when installed and ``generation.backend`` is ``auto``/``vllm``: only the
    tokenizer is loaded here; else batched HF generate); offline without a local copy it raises
    :class:`ModelUnavailableError`.
    """
    backend = "hf" if profile["kind"] == "world" else profile.get_path("generation.backend")
    return services.load_generator(profile, "judge", backend)


# ---------------------------------------------------------------------------------------------
# What is judged


def segments_to_judge(profile: Profile) -> pd.DataFrame:
    """Every segment of the attributed correct traces with its neighbours, group and ground truth.

    Columns: trace_id, question_id, segment, n_segments, text, before, after, important (Sec. 3.1
    groups), important_selection (stage 03), kind, truth (kind == "truncated"; world only, else None).
    """
    segments = services.segment_table(profile)
    scores = read_table(dag.IG_ATTRIBUTION.path(profile, "segment_scores"))
    if scores.empty:
        raise ValueError("stage 03 attributed no trace: nothing to judge")
    scores = scores[scores["correct"]].copy()
    if scores.empty:
        raise ValueError(
            "stage 03 attributed no correct trace: there are no segments to judge (Sec. 3.1 uses correct traces)"
        )
    scores = scores.sort_values(["trace_id", "segment"]).reset_index(drop=True)
    labelled = label_segments(scores, profile.get_path("analysis.groups_tau"), profile.get_path("analysis.groups_beta"))
    scores["important_groups"] = labelled["important"].to_numpy()
    rows, world = [], services.world_ground_truth(profile)  # imported traces have no truncation labels
    by_trace = {tid: g.sort_values("segment") for tid, g in segments.groupby("trace_id")}
    for trace_id, trace_scores in scores.groupby("trace_id", sort=True):
        trace, trace_scores = by_trace.get(trace_id), trace_scores.sort_values("segment")
        if trace is None or trace["segment"].tolist() != trace_scores["segment"].tolist():
            raise ValueError(f"trace {trace_id}: stage 02 and stage 03 disagree on its segments; rerun stage 03")
        triples = judge_lib.segment_triples(trace["text"].tolist())
        for seg, triple, important, selected in zip(
            trace.itertuples(), triples, trace_scores["important_groups"], trace_scores["important"]
        ):
            rows.append(
                {
                    "trace_id": trace_id,
                    "question_id": seg.question_id,
                    "segment": int(seg.segment),
                    "n_segments": int(seg.n_segments),
                    "text": triple.segment,
                    "before": triple.before,
                    "after": triple.after,
                    "important": bool(important),
                    "important_selection": bool(selected),
                    "kind": seg.kind,
                    "truth": (seg.kind == "truncated") if world else None,
                }
            )
    return pd.DataFrame(rows)


def judge_segments(profile: Profile, generator=None, tokenizer=None) -> pd.DataFrame:
    """Judge every segment of :func:`segments_to_judge` (resumable) and write ``judgements.parquet``.

    Columns: those of :func:`segments_to_judge` plus label (1 truncated, 0 complete, <NA> undecided),
    judged_truncated, rounds, undecided, round1_output, round1_n_tokens, round1_finished,
    round2_output, round2_n_tokens, round2_finished.
    """
    table = segments_to_judge(profile)
    owned = generator is None or tokenizer is None
    if owned:
        generator, tokenizer = load_judge(profile)
    settings = judge_settings(profile)
    keys = [f"{row.trace_id}#{row.segment}" for row in table.itertuples()]
    triples = {key: judge_lib.Triple(row.before, row.text, row.after) for key, row in zip(keys, table.itertuples())}
    store = RecordStore(STAGE.path(profile, "judgements_store"))
    try:
        results = judge_lib.judge_triples(generator, tokenizer, triples, settings, store, int(profile["seed"]))
    finally:
        if owned:  # a judge loaded here is released here (the GPUs go to the next stage's model)
            generator.close()
    judged = pd.DataFrame(results).drop(columns="key")
    table = pd.concat([table.reset_index(drop=True), judged], axis=1)
    # Nullable dtypes: an undecided label, an unused round 2 and a missing ground truth are <NA>.
    table["label"] = table["label"].astype("Int64")
    table["judged_truncated"] = (table["label"] == judge_lib.TRUNCATED).astype("boolean")
    table["round2_n_tokens"] = table["round2_n_tokens"].astype("Int64")
    table["round2_finished"] = table["round2_finished"].astype("boolean")
    table["truth"] = table["truth"].astype("boolean")
    write_table(STAGE.path(profile, "judgements"), table)
    return table


# ---------------------------------------------------------------------------------------------
# Summaries


#: The trace-level and pooled statistics of :func:`truncated_share_table`, as its columns (renamed from
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
}


def truncated_share_table(judgements: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """Truncated share among important vs unimportant segments, tested at trace level.

    One row per grouping (``sec3.1``: the comparative-analysis groups; ``selection``: stage 03's
    important set) and group. Shares are over decided judgements (undecided ones are counted apart):
    ``truncated_share`` is ``judged_truncated / decided`` over the group's segments pooled;
    ``truth_share`` is the ground-truth truncated share (world profiles; ``None`` on hub traces).

    The test columns are the same on both rows of a grouping
    (:func:`segattr_utils.measures.trace_stats.share_comparison` on the decided judgements). The
    reported test is at trace level, where observations are independent: per trace with decided
    segments in both groups, its important segments' truncated share minus its unimportant segments';
    ``trace_share_difference`` is their mean over the ``n_traces`` traces with a bootstrap interval
    over traces (``trace_ci_low``, ``trace_ci_high``), ``trace_p`` the two-sided Wilcoxon signed-rank p
    (over the ``n_nonzero`` traces whose difference is not 0) and ``rank_biserial`` its effect size.
    ``traces_with_one_group`` counts the traces that cannot contribute (decided segments in one group
    only). ``pooled_share_difference`` (important minus unimportant ``truncated_share``) has a
    cluster-bootstrap interval over traces (``pooled_ci_low``, ``pooled_ci_high``).
    ``pooled_segments_fisher_p`` and ``pooled_segments_odds_ratio`` are the two-sided Fisher exact test
    of the 2 x 2 table (important/unimportant x truncated/complete) over the segments pooled, which
    treats the segments of a trace as independent; they are shown for comparison. A share or statistic
    without data is ``None`` and ``note`` says why.
    """
    rows = []
    decided_rows = judgements[~judgements["undecided"].astype(bool)]
    truncated = (decided_rows["label"] == judge_lib.TRUNCATED).fillna(False).astype(bool)
    decided_rows = decided_rows.assign(truncated=truncated)
    for grouping, column in (("sec3.1", "important"), ("selection", "important_selection")):
        stats = share_comparison(decided_rows, "truncated", column, "trace_id", seed=seed)
        tests = {name: stats[key] for key, name in SHARE_TEST_COLUMNS.items()}
        for group, flag, side in (("important", True, "in"), ("unimportant", False, "out")):
            part = judgements[judgements[column] == flag]
            truth = part["truth"].dropna()
            notes = [
                "" if stats[f"n_{side}"] else "no decided judgement in this group",
                "" if len(truth) else "no ground-truth kinds",
                stats["note"],
            ]
            rows.append(
                {
                    "grouping": grouping,
                    "group": group,
                    "segments": len(part),
                    "decided": stats[f"n_{side}"],
                    "undecided": int(part["undecided"].sum()),
                    "judged_truncated": stats[f"k_{side}"],
                    "truncated_share": stats[f"share_{side}"],
                    "truth_share": float(truth.mean()) if len(truth) else None,
                    "paper_share": PAPER_TRUNCATED_SHARE[group] if grouping == "sec3.1" else "",
                    **tests,
                    "note": "; ".join(filter(None, notes)),
                }
            )
    return none_preserving_frame(rows)


def _missing(value) -> bool:
    return value is None or bool(pd.isna(value))


def _number(value, fmt: str) -> str:
    return "n/a" if _missing(value) else fmt.format(value)


def _interval(estimate, low, high) -> str:
    """``+0.123 [95% CI +0.010, +0.230]`` (shares as fractions), or ``n/a`` without an estimate."""
    if _missing(estimate):
        return "n/a"
    if _missing(low):
        return f"{estimate:+.3f} [no interval]"
    return f"{estimate:+.3f} [95% CI {low:+.3f}, {high:+.3f}]"


def rounds_table(judgements: pd.DataFrame) -> pd.DataFrame:
    """How many segments were decided in round 1, in round 2, or stayed undecided after both."""
    return pd.DataFrame(
        [
            {
                "segments": len(judgements),
                "decided_round1": int(((judgements["rounds"] == 1) & ~judgements["undecided"]).sum()),
                "round2_used": int((judgements["rounds"] == 2).sum()),
                "decided_round2": int(((judgements["rounds"] == 2) & ~judgements["undecided"]).sum()),
                "undecided": int(judgements["undecided"].sum()),
                "round1_unfinished": int((~judgements["round1_finished"]).sum()),
                "mean_round1_tokens": float(judgements["round1_n_tokens"].mean()) if len(judgements) else float("nan"),
            }
        ]
    )


def judge_confusion(judgements: pd.DataFrame) -> pd.DataFrame:
    """Counts of ground truth (rows: complete, truncated) x judgement (complete, truncated, undecided)."""
    if judgements["truth"].isna().any():
        raise ValueError("judge quality needs ground-truth truncation labels (world profiles only)")
    truth = judgements["truth"].astype(bool)
    judged = np.where(
        judgements["undecided"],
        "undecided",
        np.where(judgements["label"].fillna(-1) == judge_lib.TRUNCATED, "truncated", "complete"),
    )
    matrix = pd.crosstab(
        pd.Categorical(np.where(truth, "truncated", "complete"), ["complete", "truncated"]),
        pd.Categorical(judged, ["complete", "truncated", "undecided"]),
        dropna=False,
    )
    matrix.index.name, matrix.columns.name = "truth", "judged"
    return matrix


def judge_quality(judgements: pd.DataFrame) -> pd.DataFrame:
    """Accuracy, precision and recall of the judge against ground truth (kind == "truncated").

    Over decided judgements; ``accuracy_all`` counts undecided segments as wrong. Precision is NaN when
    the judge called nothing truncated, recall when no judged segment is truly truncated (``note``).
    """
    matrix = judge_confusion(judgements)
    tp, fn = int(matrix.loc["truncated", "truncated"]), int(matrix.loc["truncated", "complete"])
    fp, tn = int(matrix.loc["complete", "truncated"]), int(matrix.loc["complete", "complete"])
    decided, total = tp + fn + fp + tn, len(judgements)
    notes = []
    if tp + fp == 0:
        notes.append("precision undefined: no segment judged truncated")
    if tp + fn == 0:
        notes.append("recall undefined: no decided segment is truly truncated")
    if decided == 0:
        notes.append("no decided judgement")
    return pd.DataFrame(
        [
            {
                "segments": total,
                "decided": decided,
                "undecided": total - decided,
                "tp": tp,
                "fp": fp,
                "tn": tn,
                "fn": fn,
                "accuracy": (tp + tn) / decided if decided else float("nan"),
                "accuracy_all": (tp + tn) / total if total else float("nan"),
                "precision": tp / (tp + fp) if tp + fp else float("nan"),
                "recall": tp / (tp + fn) if tp + fn else float("nan"),
                "note": "; ".join(notes),
            }
        ]
    )


def write_summaries(profile: Profile, judgements: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Write ``truncated_share.csv``, ``rounds.csv`` and (world) ``judge_quality.csv``; return them."""
    tables = {
        "truncated_share": truncated_share_table(judgements, seed=int(profile["seed"])),
        "rounds": rounds_table(judgements),
    }
    if services.world_ground_truth(profile):
        tables["judge_quality"] = judge_quality(judgements)
    for name, table in tables.items():
        write_table(STAGE.path(profile, name), table)
    return tables


def comparison_rows(profile: Profile, tables: dict[str, pd.DataFrame]) -> list[dict]:
    """The paper-vs-run rows of stage 07 (Sec. 3.1 finding 3, App. B)."""
    share = tables["truncated_share"].query("grouping == 'sec3.1'").set_index("group")
    tau, beta = profile.get_path("analysis.groups_tau"), profile.get_path("analysis.groups_beta")
    rows = []
    for group in ("unimportant", "important"):
        row = share.loc[group]
        rows.append(
            comparison_row(
                "Sec. 3.1 (3), App. B",
                f"{group} segments judged truncated",
                PAPER_TRUNCATED_SHARE[group],
                "n/a (see note)" if _missing(row["truncated_share"]) else float(row["truncated_share"]),
                f"{int(row['decided'])} decided of {int(row['segments'])} segments, pooled (tau={tau}, beta={beta})",
                fmt="{:.0%}",
            )
        )
    test = share.loc["important"]
    rows.append(
        comparison_row(
            "Sec. 3.1 (3), App. B",
            "truncated share, important minus unimportant, within traces",
            paper("appB.not_reported"),
            f"{_interval(test['trace_share_difference'], test['trace_ci_low'], test['trace_ci_high'])} "
            f"(traces: {format_p(test['trace_p'])})",
            f"{test['n_traces']} traces with decided segments in both groups ({test['traces_with_one_group']} with "
            f"one group only left out, {test['n_nonzero']} with a non-zero difference); two-sided Wilcoxon "
            f"signed-rank over traces, rank-biserial {_number(test['rank_biserial'], '{:+.2f}')}; pooled share "
            f"difference {_interval(test['pooled_share_difference'], test['pooled_ci_low'], test['pooled_ci_high'])} "
            f"(bootstrap over traces); segments pooled (Fisher's exact, treats segments as independent): "
            f"{format_p(test['pooled_segments_fisher_p'])}; undecided judgements excluded"
            + (f"; {test['note']}" if test["note"] else ""),
        )
    )
    rounds = tables["rounds"].iloc[0]
    rows.append(
        comparison_row(
            "App. B",
            "segments needing round 2 / undecided after round 2",
            paper("appB.not_reported"),
            f"{int(rounds['round2_used'])} / {int(rounds['undecided'])} of {int(rounds['segments'])}",
        )
    )
    if "judge_quality" in tables:
        quality = tables["judge_quality"].iloc[0]
        for metric in ("accuracy", "precision", "recall"):
            rows.append(
                comparison_row(
                    "App. B (world ground truth)",
                    f"judge {metric}",
                    paper("appB.no_ground_truth"),
                    float(quality[metric]),
                    "against kind == 'truncated'",
                    fmt="{:.2f}",
                )
            )
    return rows


def run(profile: Profile) -> StageResult:
    """Stage 07: train the world's judge (world profiles), judge every segment of the attributed correct
    traces in two rounds, and compare the truncated shares of important and unimportant segments."""
    values = {}
    if profile["kind"] == "world":
        values["judge_training"] = train_tiny_judge(profile)
    judgements = judge_segments(profile)
    expected = segments_to_judge(profile)
    tables = write_summaries(profile, judgements)
    saved = {}
    if "judge_quality" in tables:
        tables["confusion"] = judge_confusion(judgements)
        fig = figures.judge_confusion_matrix(tables["confusion"], tables["judge_quality"].iloc[0], len(judgements))
        saved["judge_confusion_matrix"] = figures.save(fig, profile, "judge_confusion_matrix")
    columns = ["trace_id", "segment", "kind", "important", "label", "rounds", "text", "round1_output"]
    tables["examples_truncated"] = judgements[judgements["label"] == 1][columns].head(3)
    tables["examples_complete"] = judgements[judgements["label"] == 0][columns].head(3)
    labels_ok = bool(
        judgements["label"].dropna().isin([0, 1]).all()
        and (judgements["label"].isna() == judgements["undecided"]).all()
    )
    return finish(
        profile,
        STAGE,
        comparison_rows(profile, tables),
        tables=tables,
        figures=saved,
        values=values,
        checks={
            "every segment of the attributed correct traces is judged": len(judgements) == len(expected),
            "labels are 0, 1 or undecided": labels_ok,
            "round 2 ran exactly for the round-1 undecided": bool(
                (judgements["round2_output"].notna() == (judgements["rounds"] == 2)).all()
            ),
        },
    )
