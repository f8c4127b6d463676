"""Stage 03 (notebook ``03_ig_attribution``): token IG of the correct answer for every kept trace
(Sec. 2.2, Eq. 1-2, App. C.4), segment strength, consistency and normalised strength (Eq. 3-4), the
important set (Eq. 5-7, always-kept segments of App. C.4), completeness deltas, and how much the number
of path points J changes the segment-level results.

The sequence is ``prompt + trace + answer suffix``; one record per trace, its scored trace
(:class:`~segattr_utils.scored_trace.ScoredTrace`) and how the run went, is appended to the
``attributions_store`` as soon as it is done (resumable); the segment table and stage 08's training
examples are built from these records as stored (:func:`scored_traces`). The reference traces that notebook 08 also
trains on are attributed there with the same settings (:func:`attribute_traces`). Path points per pass and
activation checkpointing may be ``auto`` (per trace, from the cost estimator and the device's free
memory); a trace that runs out of accelerator memory is retried with less and, failing that, skipped with
its reason instead of aborting the stage (:func:`attribution_record`, :func:`skipped_traces`).
"""

from __future__ import annotations

import random
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

from .. import dag, distributed, services
from ..artifacts import RecordStore, write_table
from ..config import Profile
from ..llm.models import free_accelerator_memory
from ..method.ig_plan import IGSettings
from ..progress import progress
from ..report import figures
from ..report.paper_vs_run import comparison_row, paper
from ..run_log import log_seconds
from ..scored_trace import AttributionOutOfMemoryError, OverLengthError, ScoredTrace, attribute_segments, segment_table
from . import StageResult, finish

STAGE = dag.IG_ATTRIBUTION


def attribution_record(model, tokenizer, baseline: int, settings: dict, trace: dict) -> dict:
    """Token IG (Eq. 2-3) of the correct answer for one trace, as the record stage 03 stores: the scored
    trace (:meth:`segattr_utils.scored_trace.ScoredTrace.to_record`: question, gold answer, prompt,
    segments, answer part, per-segment token ids, attributions and character offsets, F(x), F(x'),
    delta, n_tokens, the IG settings) and how the run went (``skipped``, points per pass, checkpointing,
    out-of-memory retries; ``segment_spans`` and ``answer_span``, the token positions in the attributed
    sequence). Stage 08 and every training variant train from this record as stored.

    ``trace`` holds ``trace_id``, ``question``, ``answer`` (gold), ``segments``, ``answer_part`` and,
    when graded elsewhere (stage 01), ``correct``.

    ``attribution.max_length`` is an optional cap: the authors attribute every trace (no cap, the paper
    profile); a longer sequence is skipped, never truncated (IG needs the answer at the end of the sequence,
    and a cut trace would leave segments without attributions), and its record says why, so that
    :func:`over_length_traces` counts it and the stage's check "every kept trace is attributed" fails.

    The attribution itself is :func:`segattr_utils.method.ig_plan.attribute_sequence`: points per pass and
    checkpointing planned per trace, an out-of-memory error retried down the ladder and, failing that, the
    record is ``skipped: "out_of_memory ..."`` (:func:`skipped_traces` lists it; ``attribution.retry_skipped``
    tries it again on a later run). The record carries the settings that were used.
    """
    prompt = services.prompt(tokenizer, trace["question"])
    ig = IGSettings.from_mapping(settings)
    try:
        # the stage records every trace's error and flags those over attribution.flag_relative_delta in its
        # completeness table and histogram: no warning per trace in the executed notebook
        scored, sequence = attribute_segments(
            model,
            tokenizer,
            trace["question"],
            prompt,
            trace["segments"],
            str(trace["answer"]),
            trace["answer_part"],
            baseline_token_id=baseline,
            ig=ig,
            answer_suffix=settings["answer_suffix"],
            max_length=settings.get("max_length"),
            max_length_name="attribution.max_length",
            correct=trace.get("correct"),
        )
    except OverLengthError as error:
        what = "attribution.max_length" if error.limit == settings.get("max_length") else "the model's positions"
        reason = f"sequence of {error.n_tokens} tokens exceeds {what}"
        return {"trace_id": trace["trace_id"], "n_tokens": error.n_tokens, "skipped": reason}
    except AttributionOutOfMemoryError as error:
        return {"trace_id": trace["trace_id"], "n_tokens": error.n_tokens, "skipped": str(error)}
    run = ("internal_batch_size", "activation_checkpointing", "out_of_memory_retries")
    return {
        "trace_id": trace["trace_id"],
        "n_tokens": scored.n_tokens,
        "skipped": None,
        **{key: scored.settings[key] for key in run},
        **scored.to_record(),
        "answer_span": list(sequence.answer_span),
        "segment_spans": [list(s) for s in sequence.segment_spans],
    }


def scored_traces(profile: Profile, records: list[dict]) -> dict[str, ScoredTrace]:
    """The scored trace of every attributed record (trace id -> :class:`ScoredTrace`, in record order) at
    the profile's ``selection`` (tau, beta, aggregation, always-kept segments; App. C.4), as stored:
    nothing is re-tokenised. Skipped records have none. A record written before records held scored
    traces raises, naming the store to rebuild."""
    selection = {k: profile["selection"][k] for k in ("tau", "beta", "aggregation", "always_keep")}
    out = {}
    for record in records:
        if record.get("skipped"):
            continue
        try:
            out[record["trace_id"]] = ScoredTrace.from_record(record).rescored(**selection)
        except ValueError as error:
            raise ValueError(
                f"attribution record of {record['trace_id']!r}: {error}; rerun the attribution (delete the "
                "record store of notebook 03, or stage 08's reference store)"
            ) from None
    return out


def attribution_processes(settings: dict, kind: str) -> tuple[int, int]:
    """(processes, torch threads per process) of IG from ``attribution.processes`` (``auto``: one per
    visible GPU) and ``attribution.threads_per_process`` (:func:`segattr_utils.distributed.resolve_processes`)."""
    renamed = [old for old in ("workers", "threads_per_worker") if old in settings]
    if renamed:
        raise ValueError(
            f"attribution.{renamed[0]} was renamed: use attribution.processes and attribution.threads_per_process "
            "(IG now runs under accelerate launch)"
        )
    return distributed.resolve_processes(settings, kind, "attribution")


def over_length_traces(records: list[dict]) -> list[str]:
    """The traces skipped because they exceed ``attribution.max_length`` (reported by notebooks 03 and 08)."""
    return [r["trace_id"] for r in records if (r.get("skipped") or "").endswith("attribution.max_length")]


def skipped_traces(records: list[dict]) -> pd.DataFrame:
    """Every trace that has no attributions, with its length and why (over ``attribution.max_length``,
    or out of memory at every setting of :func:`out_of_memory_ladder`)."""
    rows = [
        {
            "trace_id": r["trace_id"],
            "n_tokens": r["n_tokens"],
            "cause": "out_of_memory" if r["skipped"].startswith("out_of_memory") else "over_length",
            "reason": r["skipped"],
        }
        for r in records
        if r.get("skipped")
    ]
    return pd.DataFrame(rows, columns=["trace_id", "n_tokens", "cause", "reason"])


def attribute_traces(
    profile: Profile, traces: list[dict], store: RecordStore, desc: str, stage: dag.Stage = STAGE
) -> list[dict]:
    """Token IG of the correct answer for every trace (``trace_id``, ``question``, ``answer``,
    ``segments``) not yet in ``store``; one record per trace, appended as soon as it is done.

    With ``attribution.processes`` > 1 the traces are attributed by that many processes started with
    ``accelerate launch`` (:func:`launch_attribution`; the records equal one process's up to float
    rounding). Records that ranks wrote and nobody merged (a killed launch, or a launch on several
    machines started by hand) are merged into ``store`` first. A skipped trace (over length, out of
    memory) keeps its record, so a resumed run does not meet it again, unless ``attribution.retry_skipped``
    is true: then its record is dropped and it is tried again.
    """
    settings = profile["attribution"]
    processes, threads = attribution_processes(settings, profile["kind"])
    order = [t["trace_id"] for t in traces]
    distributed.merge_rank_stores(store, order)
    if settings["retry_skipped"]:
        wanted = set(order)
        store.discard([r["trace_id"] for r in store.records() if r.get("skipped") and r["trace_id"] in wanted])
    todo = [t for t in traces if t["trace_id"] not in store]
    if not todo:
        return _in_input_order(store.records(), order)
    started = time.perf_counter()
    if processes == 1:
        for record in progress(
            _attribute_in_process(profile, settings, todo), total=len(todo), desc=desc, unit="trace"
        ):
            store.append([record])
    else:
        launch_attribution(profile, todo, store, processes, threads, desc)
    log_seconds(profile, stage, f"{desc}: {len(todo)} traces", time.perf_counter() - started)
    free_accelerator_memory()  # the generator is gone: SFT (notebook 08) gets the whole GPU
    return _in_input_order(store.records(), order)


def _in_input_order(records: list[dict], order: list[str]) -> list[dict]:
    """The records of the traces in ``order`` in that order, then the store's others: the same list however
    the work was split over processes and runs."""
    position = {trace_id: i for i, trace_id in enumerate(order)}
    return sorted(records, key=lambda r: position.get(r["trace_id"], len(position)))


def _attribute_in_process(profile: Profile, settings: dict, traces: list[dict]):
    """The records of ``traces`` in this process; the model is released once the last one is yielded."""
    model, tokenizer = services.load_model(profile, "generator")
    baseline = services.baseline_token(profile, tokenizer)
    for trace in traces:
        yield attribution_record(model, tokenizer, baseline, settings, trace)


def launch_attribution(
    profile: Profile, traces: list[dict], store: RecordStore, processes: int, threads: int, desc: str
) -> None:
    """Attribute ``traces`` in ``processes`` processes on this machine, each running the ``attribution`` job
    of :mod:`segattr_utils.workers` (:func:`attribute_share`;
    :func:`segattr_utils.distributed.launch_over_processes`); their records are merged into ``store`` in
    the order of ``traces``."""
    if profile.get_path("models.generator.device_map"):
        raise ValueError(
            "models.generator.device_map spreads one copy of the generator over every visible GPU; set "
            f"attribution.processes: 1 with it (got {processes})"
        )
    distributed.launch_over_processes(profile, "attribution", traces, store, processes, threads, desc)


def attribute_share(profile: Profile, traces: list[dict], store_path: Path) -> int:
    """This process's share of ``traces`` (a rank under ``accelerate launch``; all of them outside one):
    the traces that neither the store nor any rank store holds, dealt longest first over the ranks
    (:func:`segattr_utils.distributed.share_of_this_process`), each record appended to this rank's own
    store. Returns how many traces this rank attributed."""
    settings = profile["attribution"]
    on_cpu = profile["kind"] == "world" or not torch.cuda.is_available()
    store = RecordStore(store_path, key_fn=lambda r: r["trace_id"])
    state, mine, own = distributed.share_of_this_process(traces, store, cpu=on_cpu, weight=_trace_characters)
    if not mine:
        return 0
    _, threads = attribution_processes(settings, profile["kind"])
    torch.set_num_threads(threads)
    model, tokenizer = services.load_model(profile, "generator", device="cpu" if on_cpu else str(state.device))
    baseline = services.baseline_token(profile, tokenizer)
    bar = progress(mine, desc=f"IG, rank {state.process_index}", unit="trace", disable=not state.is_local_main_process)
    for trace in bar:
        own.append([attribution_record(model, tokenizer, baseline, settings, trace)])
    return len(mine)


def _trace_characters(trace: dict) -> int:
    return sum(len(s) for s in trace["segments"])


def kept_traces_to_attribute(profile: Profile) -> tuple[list[dict], Path]:
    """The kept traces notebook 03 attributes (correct and, with ``attribution.attribute_incorrect``,
    incorrect ones), with their segments, and the store their records go to."""
    by_trace = services.segment_texts(services.segment_table(profile))
    traces = [dict(t, segments=by_trace[t["trace_id"]]) for t in _kept_to_attribute(profile).to_dict("records")]
    return traces, STAGE.path(profile, "attributions_store")


def _kept_to_attribute(profile: Profile) -> pd.DataFrame:
    kept = services.kept_traces(profile)
    return kept if profile["attribution"]["attribute_incorrect"] else kept[kept["correct"]]


def attribute_kept_traces(profile: Profile) -> pd.DataFrame:
    """Token IG of the correct answer for every kept trace (resumable, one record per trace), then
    segment scores and the important set. Returns the per-segment table."""
    traces, store_path = kept_traces_to_attribute(profile)
    store = RecordStore(store_path, key_fn=lambda r: r["trace_id"])
    records = attribute_traces(profile, traces, store, "integrated gradients")
    return score_segments(profile, _kept_to_attribute(profile), services.segment_table(profile), records)


#: The columns of ``segment_scores`` (stage 03's per-segment table), in order.
SEGMENT_SCORE_COLUMNS = [
    "trace_id",
    "segment",
    "n_tokens",
    "signed_sum",
    "abs_sum",
    "strength",
    "consistency",
    "norm_strength",
    "correct",
    "n_segments",
    "high_strength",
    "important",
    "always_kept",
    "selected_for_sft",
    "kind",
]


def score_segments(profile: Profile, kept: pd.DataFrame, segments: pd.DataFrame, records: list[dict]) -> pd.DataFrame:
    """Segment strength, consistency and normalised strength (Eq. 3-4) and the important set
    (Eq. 5-7 with the always-kept segments of App. C.4) for every attributed trace, from its stored
    scored trace (:attr:`ScoredTrace.scores <segattr_utils.scored_trace.ScoredTrace.scores>`, the table
    every training variant selects from); writes ``segment_scores`` and ``completeness``.
    ``selected_for_sft`` (important or always kept) is the selection the ``selective`` variant of stage
    08 trains on (Eq. 9)."""
    correct = dict(zip(kept["trace_id"], kept["correct"]))
    kinds = {(r["trace_id"], r["segment"]): r["kind"] for r in segments.to_dict("records")}
    threshold = profile.get_path("attribution.flag_relative_delta")
    rows, completeness = [], []
    for trace_id, scored in scored_traces(profile, [r for r in records if r["trace_id"] in correct]).items():
        table = scored.scores.rename(columns={"selected": "selected_for_sft"})
        table.insert(0, "trace_id", trace_id)
        table["correct"] = correct[trace_id]
        table["n_segments"] = scored.n_segments
        table["kind"] = [kinds.get((trace_id, i)) for i in range(scored.n_segments)]
        rows.append(table[SEGMENT_SCORE_COLUMNS])
        completeness.append(
            {
                "trace_id": trace_id,
                "correct": correct[trace_id],
                "f_input": scored.f_input,
                "f_baseline": scored.f_baseline,
                "delta": scored.delta,
                "relative_delta": scored.relative_delta,
                "flagged": scored.relative_delta > threshold,
                "n_tokens": scored.n_tokens,
            }
        )
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    write_table(STAGE.path(profile, "segment_scores"), table)
    write_table(STAGE.path(profile, "completeness"), pd.DataFrame(completeness))
    return table


def _important_set(values: list, selection: dict) -> set[int]:
    table = segment_table(values, selection["tau"], selection["beta"], selection["aggregation"], "none")
    return {int(i) for i in table.loc[table["important"], "segment"]}


def ig_step_sensitivity(profile: Profile) -> pd.DataFrame:
    """How much the number of path points J changes the segment-level results (App. C.4).

    For ``attribution.sensitivity.n_traces`` attributed correct traces (a seeded sample), token IG is
    recomputed with each J in ``attribution.sensitivity.n_steps`` and compared with the stage's own
    attributions (``attribution.n_steps``): the relative completeness error at both J, the Spearman
    correlation of normalised segment strengths, the largest change of a consistency, and the Jaccard
    overlap of the important sets (Eq. 7). Resumable: one record per (trace, J).
    """
    from scipy.stats import spearmanr

    settings, selection = profile["attribution"], profile["selection"]
    spec = settings["sensitivity"] or {"n_traces": 0, "n_steps": []}  # null: off
    records = scored_traces(
        profile, RecordStore(STAGE.path(profile, "attributions_store"), key_fn=lambda r: r["trace_id"]).records()
    )
    kept = services.kept_traces(profile)
    candidates = sorted(t for t in kept.loc[kept["correct"], "trace_id"] if t in records)
    n_traces = min(int(spec["n_traces"]), len(candidates))
    if not n_traces or not spec["n_steps"]:
        return pd.DataFrame()
    chosen = sorted(random.Random(f"sensitivity:{profile['seed']}").sample(candidates, n_traces))
    by_trace = services.segment_texts(services.segment_table(profile))
    questions = kept.set_index("trace_id")
    store = RecordStore(STAGE.path(profile, "sensitivity_store"), key_fn=lambda r: [r["trace_id"], r["n_steps"]])
    jobs = [(tid, int(j)) for tid in chosen for j in spec["n_steps"] if [tid, int(j)] not in store]
    if jobs:
        model, tokenizer = services.load_model(profile, "generator")
        baseline = services.baseline_token(profile, tokenizer)
    for trace_id, n_steps in progress(jobs, desc="IG with other J", unit="trace"):
        trace = {
            "trace_id": trace_id,
            "question": questions.loc[trace_id, "question"],
            "answer": questions.loc[trace_id, "answer"],
            "segments": by_trace[trace_id],
            "answer_part": questions.loc[trace_id, "answer_part"],
        }
        record = attribution_record(model, tokenizer, baseline, dict(settings, n_steps=n_steps), trace)
        if record["skipped"]:  # out of memory at every setting: kept, so that a resume does not retry it
            store.append([{"trace_id": trace_id, "n_steps": n_steps, "skipped": record["skipped"]}])
            continue
        other = ScoredTrace.from_record(record)
        store.append(
            [
                {
                    "trace_id": trace_id,
                    "n_steps": n_steps,
                    "relative_delta": other.relative_delta,
                    "segment_values": record["token_attributions"],
                }
            ]
        )
    rows = []
    for record in store.records():
        if record["trace_id"] not in chosen or record["n_steps"] not in [int(j) for j in spec["n_steps"]]:
            continue
        if record.get("skipped"):
            continue
        reference = records[record["trace_id"]]
        ours = reference.scores
        other = segment_table(record["segment_values"], selection["tau"], selection["beta"], selection["aggregation"])
        important = [set(reference.important), _important_set(record["segment_values"], selection)]
        union = important[0] | important[1]
        rho = spearmanr(ours["norm_strength"], other["norm_strength"])[0] if len(ours) > 2 else float("nan")
        rows.append(
            {
                "trace_id": record["trace_id"],
                "n_steps": record["n_steps"],
                "profile_n_steps": settings["n_steps"],
                "relative_delta": record["relative_delta"],
                "profile_relative_delta": reference.relative_delta,
                "n_segments": len(ours),
                "spearman_norm_strength": rho,
                "max_norm_strength_change": float((ours["norm_strength"] - other["norm_strength"]).abs().max()),
                "max_consistency_change": float((ours["consistency"] - other["consistency"]).abs().max()),
                "important_jaccard": len(important[0] & important[1]) / len(union) if union else 1.0,
            }
        )
    table = pd.DataFrame(rows)
    write_table(STAGE.path(profile, "step_sensitivity"), table)
    return table


def completeness_summary(completeness: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Median, 90th percentile and maximum relative completeness error, and the flagged share."""
    rows = []
    for name, group in [("all", completeness)] + [
        ("correct" if c else "incorrect", g) for c, g in completeness.groupby("correct")
    ]:
        rel = group["relative_delta"]
        rows.append(
            {
                "traces": name,
                "n": len(group),
                "median_rel_delta": rel.median(),
                "p90_rel_delta": rel.quantile(0.9),
                "max_rel_delta": rel.max(),
                f"flagged_share(>{threshold:g})": (rel > threshold).mean(),
                "median_abs_delta": group["delta"].abs().median(),
            }
        )
    return pd.DataFrame(rows)


def selection_summary(scores: pd.DataFrame) -> pd.DataFrame:
    """Share of segments and of tokens that are important (Eq. 7) per trace, averaged over traces."""
    rows = []
    for correct, group in scores.groupby("correct"):
        per_trace = group.groupby("trace_id").apply(
            lambda g: pd.Series(
                {
                    "segments": len(g),
                    "important_segment_share": g["important"].mean(),
                    "important_token_share": g.loc[g["important"], "n_tokens"].sum() / max(g["n_tokens"].sum(), 1),
                    "high_strength_share": g["high_strength"].mean(),
                    "selected_for_sft_token_share": g.loc[g["selected_for_sft"], "n_tokens"].sum()
                    / max(g["n_tokens"].sum(), 1),
                }
            ),
            include_groups=False,
        )
        rows.append(
            {"traces": "correct" if correct else "incorrect", "n": len(per_trace), **per_trace.mean().to_dict()}
        )
    return pd.DataFrame(rows)


def comparison_rows(profile: Profile, completeness: pd.DataFrame, sensitivity: pd.DataFrame) -> list[dict]:
    """The paper-vs-run rows of stage 03 (App. C.4: the completeness error at the profile's J and at the
    other J of the sensitivity check)."""
    settings = profile["attribution"]
    summary = completeness_summary(completeness, settings["flag_relative_delta"]).set_index("traces")
    flag = f"flagged_share(>{settings['flag_relative_delta']:g})"
    rows = [
        comparison_row(
            "App. C.4",
            f"IG completeness error at J = {settings['n_steps']} ({settings['method']})",
            paper("appC4.completeness"),
            f"median {summary.loc['all', 'median_rel_delta']:.2%}",
            f"{summary.loc['all', flag]:.0%} of {int(summary.loc['all', 'n'])} traces over {settings['flag_relative_delta']:.0%}",
        )
    ]
    if len(sensitivity):
        for n_steps, group in sensitivity.groupby("n_steps"):
            rows.append(
                comparison_row(
                    "App. C.4",
                    f"IG completeness error at J = {n_steps} (sample of {len(group)} correct traces)",
                    paper("appC4.j"),
                    f"median {group['relative_delta'].median():.2%}",
                    f"important sets vs J = {settings['n_steps']}: mean Jaccard {group['important_jaccard'].mean():.2f}; "
                    f"strength Spearman {group['spearman_norm_strength'].mean():.2f}",
                )
            )
    return rows


def run(profile: Profile) -> StageResult:
    """Stage 03: attribute every kept trace, score its segments, check completeness and the J sensitivity."""
    settings = profile["attribution"]
    scores = attribute_kept_traces(profile)
    completeness = pd.read_parquet(STAGE.path(profile, "completeness"))
    kept = services.kept_traces(profile)
    sensitivity = ig_step_sensitivity(profile)
    tables = {
        "completeness": completeness_summary(completeness, settings["flag_relative_delta"]),
        "selection": selection_summary(scores),
    }
    correct = scores[scores["correct"]] if len(scores) else scores
    if len(correct):
        example_id = correct["trace_id"].iloc[0]
        segments = services.segment_table(profile)
        tables["example"] = scores[scores["trace_id"] == example_id].merge(
            segments[["trace_id", "segment", "text"]], on=["trace_id", "segment"]
        )[["segment", "kind", "n_tokens", "norm_strength", "consistency", "important", "text"]]
    if len(sensitivity):
        tables["sensitivity"] = (
            sensitivity.groupby(["n_steps", "profile_n_steps"])[
                [
                    "relative_delta",
                    "profile_relative_delta",
                    "spearman_norm_strength",
                    "max_norm_strength_change",
                    "max_consistency_change",
                    "important_jaccard",
                ]
            ]
            .agg(["median", "mean"])
            .T
        )
    fig = figures.completeness_histogram(completeness, settings["flag_relative_delta"])
    store = RecordStore(STAGE.path(profile, "attributions_store"), key_fn=lambda r: r["trace_id"])
    kept_ids = set(kept["trace_id"])
    skipped = skipped_traces([r for r in store.records() if r["trace_id"] in kept_ids])
    over_length = skipped[skipped["cause"] == "over_length"]
    out_of_memory = skipped[skipped["cause"] == "out_of_memory"]
    if len(skipped):
        tables["skipped"] = skipped
    if len(over_length):
        warnings.warn(
            f"{len(over_length)} traces exceed attribution.max_length ({settings['max_length']} tokens) and were "
            f"skipped, not truncated (IG needs the whole trace): {', '.join(over_length['trace_id'].iloc[:10])}"
            f"{' ...' if len(over_length) > 10 else ''}; the authors attribute every trace (attribution.max_length: null)",
            stacklevel=2,
        )
    if len(out_of_memory):
        warnings.warn(
            f"{len(out_of_memory)} traces ran out of memory even with activation checkpointing and one path point "
            "per pass and were skipped (result.tables['skipped']); set attribution.retry_skipped: true to try "
            "them again, e.g. on a larger GPU or with models.generator.device_map",
            stacklevel=2,
        )
    return finish(
        profile,
        STAGE,
        comparison_rows(profile, completeness, sensitivity),
        tables=tables,
        values={"over_length_skipped": len(over_length), "out_of_memory_skipped": len(out_of_memory)},
        figures={"ig_completeness_delta": figures.save(fig, profile, "ig_completeness_delta")},
        checks={"every kept trace is attributed": set(completeness["trace_id"]) == set(kept["trace_id"])},
    )
