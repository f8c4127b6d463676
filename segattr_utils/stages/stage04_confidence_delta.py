"""Stage 04 (notebook ``04_confidence_delta``): correct-answer confidence after every prefix of the
attributed correct traces, Δ per segment (Sec. 3.1 finding 1, Fig. 2), and the greedy τ search and
β ablation (Sec. 3.2, Fig. 4). Definitions in :mod:`segattr_utils.measures.confidence`.

Artifacts in ``results/<profile>/04_confidence_delta/``:

- ``forced_answers.jsonl``: a :class:`RecordStore` with one record per (trace, prefix length k,
  fingerprint of the trace text and sampling settings): the K graded answers and the confidence c_k. Prefixes are sampled in fixed batches of
  ``analysis.confidence.batch_size // n_samples`` prefixes (job order: trace, then k), each batch
  seeded with ``derive_seed(seed, "forced-answer", batch index)``; a finished batch is skipped on resume.
  With vLLM every missing prefix is sent, answer j of prefix k of trace t seeded with
  ``derive_seed(seed, "forced-answer", t, k, j)``, in chunks of ``generation.vllm_chunk_requests``
  requests per engine; a prefix's record is appended as soon as its last answer's chunk finishes, so an
  interrupted run keeps every finished chunk and a resumed one sends only the missing prefixes (the same
  records with the HF sampler; with vLLM other samples of the same distribution unless
  ``generation.vllm.batch_invariant``: :mod:`segattr_utils.llm.generation`).

  Host memory with vLLM: the engine keeps each request's prompt ids twice (``vllm/v1/request.py``), ~44
  bytes per prompt token per request (two 8-byte list slots and a 28-byte int object; an estimate from
  CPython object sizes, not measured). The paper profile's ~1.1M forced-answer requests (~34k prefixes x
  32 answers), at a mean prompt of ~4k tokens (what the ~190 GB of one call for all of them points to),
  would hold ~1.1M x 4k x 44 B ≈ 190 GB in one call; one
  chunk of 2048 requests holds 2048 x 4k x 44 B ≈ 0.36 GB per engine (≈ 2.9 GB on 8 engines), and at most
  2048 x 34,816 x 44 B ≈ 3.1 GB per engine if every prompt were ``max_model_len`` long. This process keeps
  the ids of every distinct prompt at 4 bytes a token (~0.55 GB for ~140M prefix tokens).
- ``segment_confidence.parquet``: trace_id, segment, confidence_before, confidence_after, delta
  (one row per segment of every attributed correct trace; read by the training notebook's Tables 3-4).
- ``reference_forced_answers.jsonl`` and ``reference_segment_confidence.parquet``: the same for the
  reference traces of the training questions (``services.reference_traces``), measured only when the
  run plan trains a variant that needs Δ on them (``training.ablation_source: reference``, the paper's
  Tables 3-4 on LIMO's CoTs); same model, seeds ``derive_seed(seed, "reference-forced-answer", ...)``.
  They feed training only: the analyses below use the self-generated traces.
- ``groups.csv``, ``tau_search.csv``, ``beta_ablation.csv``, ``importance_shares.csv``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from .. import dag, services
from ..artifacts import RecordStore, fingerprint, read_table, write_table
from ..config import Profile
from ..llm.generation import HFGenerator, SamplingSettings, derive_seed, generate_in_chunks
from ..measures.confidence import (
    AnswerCloses,
    beta_ablation,
    choose_threshold,
    confidence_deltas,
    delta_gap,
    forced_answer_prompt,
    grade_forced_answers,
    group_summary,
    importance_shares,
    label_segments,
    sample_continuations,
    tau_search,
)
from ..measures.group_stats import MISSING_TEXT, format_p, readable
from ..progress import progress
from ..report import figures
from ..report.paper_vs_run import comparison_row, paper
from . import StageResult, finish

STAGE = dag.CONFIDENCE_DELTA
CONFIDENCE_COLUMNS = ("trace_id", "segment", "confidence_before", "confidence_after", "delta")
#: The per-segment signal of this stage that training variants read (``TraceRecord.confidence_delta``).
SIGNALS = ("confidence_delta",)


@dataclass(frozen=True)
class TraceSet:
    """Where the forced answers of one source's traces go: its record store, its per-segment table and
    the tag of its seeds. The self traces keep the tag they always had; the reference traces get their
    own, so that their batches (numbered from 0 as well) draw other seeds than the self traces'."""

    store: str
    table: str
    seed_tag: str


#: The self-generated traces (Sec. 3's analyses and the self-source runs) and the reference traces
#: (training only: the Table 3-4 baselines when they train on the reference traces, as in the paper).
TRACE_SETS = {
    "self": TraceSet("forced_answers_store", "segment_confidence", "forced-answer"),
    "reference": TraceSet("reference_forced_answers_store", "reference_segment_confidence", "reference-forced-answer"),
}


def attributed_correct_traces(profile: Profile) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, list[str]]]:
    """(kept correct traces that were attributed, their segment scores, segment texts per trace)."""
    scores = read_table(dag.IG_ATTRIBUTION.path(profile, "segment_scores"))
    scores = scores[scores["correct"].astype(bool)] if len(scores) else scores
    kept = services.kept_traces(profile)
    ids = set(scores["trace_id"]) if len(scores) else set()
    kept = kept[kept["trace_id"].isin(ids)].sort_values("trace_id").reset_index(drop=True)
    texts = services.segment_texts(services.segment_table(profile), ids)
    for tid in ids:
        n_scored = int((scores["trace_id"] == tid).sum())
        if len(texts.get(tid, [])) != n_scored:
            raise ValueError(
                f"trace {tid!r}: {len(texts.get(tid, []))} segments in stage 02 but {n_scored} scored in stage 03; "
                "rerun notebooks 02-03"
            )
    return kept, scores, texts


def confidence_settings(profile: Profile) -> SamplingSettings:
    spec = profile.get_path("analysis.confidence")
    return SamplingSettings(temperature=spec["temperature"], top_p=spec["top_p"], max_new_tokens=spec["max_new_tokens"])


def _forced_answer_sampler(profile: Profile):
    """``(generator, tokenizer, sample)`` for ``analysis.confidence.sampler``, where ``sample(prompts, n,
    settings, seed) -> [[text] * n]``.

    ``shared_prefix``: each prefix encoded once, its KV cache shared by the n samples (HF). ``generator``:
    the prompts repeated n times through ``generation.backend``, one seed for the batch. A generator with
    ``per_request_seeds`` (vLLM) is not called through ``sample``: :func:`measure_prefix_confidence` sends
    its requests in chunks, one seed per answer (vLLM seeds every request on its own, so n copies of a
    prompt under one seed would be n identical answers). The HF samplers stop a row at the brace that
    closes the lead-in's ``\\boxed{`` (:class:`AnswerCloses`); vLLM samples to ``max_new_tokens`` and the
    grading cuts there (:func:`grade_forced_answers`). The caller closes ``generator``.
    """
    mode = profile.get_path("analysis.confidence.sampler")
    lead_in = profile.get_path("analysis.confidence.answer_lead_in")
    if mode == "shared_prefix":
        generator, tokenizer = services.load_generator(profile, "generator", "hf")
        return (
            generator,
            tokenizer,
            lambda prompts, n, settings, seed: sample_continuations(
                generator.model, tokenizer, prompts, n, settings, seed, lead_in=lead_in
            ),
        )
    if mode != "generator":
        raise ValueError(f"analysis.confidence.sampler must be 'shared_prefix' or 'generator', got {mode!r}")
    generator, tokenizer = services.load_generator(profile, "generator", profile.get_path("generation.backend"))

    def sample(prompts, n, settings, seed):
        repeated = [p for p in prompts for _ in range(n)]
        if isinstance(generator, HFGenerator):
            stop = [AnswerCloses(tokenizer, lead_in)]
            outputs = generator.generate(repeated, settings, seed, stopping_criteria=stop)
        else:
            outputs = generator.generate(repeated, settings, seed)
        texts = [o["text"] for o in outputs]
        return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]

    return generator, tokenizer, sample


def measured_sources(profile: Profile) -> list[str]:
    """The sources whose traces stage 04 measures: the self-generated traces always, the reference
    traces when the run plan trains a variant that needs Δ on them (the paper profile: Tables 3-4 on
    LIMO's CoTs; :func:`segattr_utils.services.planned_signals`). The tiny profile measures no more than
    its self traces."""
    return ["self"] + [s for s in services.sources_needing(profile, SIGNALS) if s != "self"]


def traces_to_measure(profile: Profile, source: str = "self") -> list[dict]:
    """The traces of ``source`` whose every prefix is measured, by trace id, each with ``trace_id``,
    ``question``, ``answer`` and ``segments``: the attributed correct kept traces (self), or the reference
    traces of the training questions (reference)."""
    if source == "self":
        kept, _, texts = attributed_correct_traces(profile)
        traces = [dict(t, segments=texts[t["trace_id"]]) for t in kept.to_dict("records")]
    elif source == "reference":
        traces = services.reference_traces(profile).to_dict("records")
    else:
        raise ValueError(f"unknown trace source {source!r}; use one of {', '.join(TRACE_SETS)}")
    return sorted(traces, key=lambda t: t["trace_id"])


class ForcedAnswerSampler:
    """The sampler of :func:`_forced_answer_sampler`, loaded at the first missing prefix and shared by the
    sources one run measures (a model is loaded once; a run whose records all exist loads none)."""

    def __init__(self, profile: Profile):
        self.profile = profile
        self._loaded = None

    def get(self) -> tuple:
        """``(generator, tokenizer, sample)``."""
        if self._loaded is None:
            self._loaded = _forced_answer_sampler(self.profile)
        return self._loaded

    def close(self) -> None:
        if self._loaded is not None:
            self._loaded[0].close()
            self._loaded = None

    def __enter__(self) -> ForcedAnswerSampler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prefix_jobs(trace_ids: Iterable[str], texts: dict[str, list[str]]) -> list[tuple[str, int]]:
    """Every (trace_id, k) with k = 0..n: the answer forced after k segments."""
    return [(tid, k) for tid in trace_ids for k in range(len(texts[tid]) + 1)]


def measure_prefix_confidence(
    profile: Profile, source: str = "self", sampler: ForcedAnswerSampler | None = None
) -> pd.DataFrame:
    """Sample and grade the forced answers of every prefix of ``source``'s traces (resumable, in that
    source's record store); one row per (trace, k). ``sampler`` may be shared with another source; by
    default one is opened and closed here."""
    if sampler is None:
        with ForcedAnswerSampler(profile) as own:
            return measure_prefix_confidence(profile, source, own)
    traces = {t["trace_id"]: t for t in traces_to_measure(profile, source)}
    texts = {tid: list(t["segments"]) for tid, t in traces.items()}
    trace_set = TRACE_SETS[source]
    spec = profile.get_path("analysis.confidence")
    n_samples, lead_in = int(spec["n_samples"]), spec["answer_lead_in"]
    settings = confidence_settings(profile)
    # The key holds a fingerprint of the trace, the answer and the sampling settings: records of a trace
    # whose text changed upstream, or of other settings, are not reused.
    store = RecordStore(
        STAGE.path(profile, trace_set.store), key_fn=lambda r: [r["trace_id"], r["prefix"], r["fingerprint"]]
    )
    fingerprints = {tid: fingerprint(t["question"], t["answer"], texts[tid], spec) for tid, t in traces.items()}
    jobs = prefix_jobs(traces, texts)
    per_batch = max(1, int(spec["batch_size"]) // n_samples)
    batches = [jobs[i : i + per_batch] for i in range(0, len(jobs), per_batch)]
    todo = [(i, b) for i, b in enumerate(batches) if not all([tid, k, fingerprints[tid]] in store for tid, k in b)]
    if todo:
        generator, tokenizer, sample = sampler.get()
        prompts = {tid: services.prompt(tokenizer, t["question"]) for tid, t in traces.items()}
        seed, tag = int(profile["seed"]), trace_set.seed_tag
        desc = "forced answers" if source == "self" else f"forced answers ({source})"

        def record(tid, k, answers):
            verdicts = grade_forced_answers(answers, traces[tid]["answer"], lead_in)
            n_correct = sum(v["correct"] for v in verdicts)
            return {
                "trace_id": tid,
                "prefix": k,
                "fingerprint": fingerprints[tid],
                "n_samples": len(verdicts),
                "n_correct": n_correct,
                "confidence": n_correct / len(verdicts),
                "answers": [v["pred"] for v in verdicts],
            }

        if generator.per_request_seeds:
            # vLLM: every missing prefix, answer j after k segments of trace t seeded with
            # derive_seed(seed, tag, t, k, j), in the generator's chunks; a prefix is stored once all of
            # its answers are back.
            missing = [(tid, k) for _, batch in todo for tid, k in batch if [tid, k, fingerprints[tid]] not in store]
            requests = [forced_answer_prompt(prompts[tid], texts[tid], k, lead_in) for tid, k in missing]
            seeds = [derive_seed(seed, tag, tid, k, j) for tid, k in missing for j in range(n_samples)]
            answers: dict[int, dict[int, str]] = {}
            for chunk in generate_in_chunks(
                generator, [p for p in requests for _ in range(n_samples)], settings, seeds, desc
            ):
                done = []
                for index, output in chunk:
                    position, j = divmod(index, n_samples)
                    answers.setdefault(position, {})[j] = output["text"]
                    if len(answers[position]) == n_samples:
                        done.append(position)
                finished = {i: answers.pop(i) for i in sorted(done)}
                store.append([record(*missing[i], [got[j] for j in range(n_samples)]) for i, got in finished.items()])
        else:
            for index, batch in progress(todo, desc=desc, unit="batch"):
                batch_prompts = [forced_answer_prompt(prompts[tid], texts[tid], k, lead_in) for tid, k in batch]
                continuations = sample(batch_prompts, n_samples, settings, derive_seed(seed, tag, index))
                store.append(
                    [
                        record(tid, k, answers)
                        for (tid, k), answers in zip(batch, continuations)
                        if [tid, k, fingerprints[tid]] not in store
                    ]
                )
    wanted = {(tid, k, fingerprints[tid]) for tid, k in jobs}
    records = [r for r in store.records() if (r["trace_id"], r["prefix"], r["fingerprint"]) in wanted]
    columns = ["trace_id", "prefix", "n_samples", "n_correct", "confidence"]
    return pd.DataFrame([{c: r[c] for c in columns} for r in records], columns=columns)


def deltas_by_trace(prefixes: pd.DataFrame) -> pd.DataFrame:
    """Confidence before/after and Δ of every segment from the per-prefix confidences (one row per
    (trace, k), every k = 0..n present)."""
    parts = []
    for tid, group in prefixes.sort_values(["trace_id", "prefix"]).groupby("trace_id", sort=True):
        if group["prefix"].tolist() != list(range(len(group))):
            raise ValueError(f"trace {tid!r}: forced-answer records are missing for some prefixes")
        table = confidence_deltas(group["confidence"].tolist())
        table.insert(0, "trace_id", tid)
        parts.append(table)
    table = (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(
            {
                "trace_id": pd.Series(dtype=str),
                "segment": pd.Series(dtype="int64"),
                **{c: pd.Series(dtype=float) for c in CONFIDENCE_COLUMNS[2:]},
            }
        )
    )
    return table[list(CONFIDENCE_COLUMNS)]


def segment_confidence(
    profile: Profile, source: str = "self", sampler: ForcedAnswerSampler | None = None
) -> pd.DataFrame:
    """Stage 04's main artifact for ``source``: confidence before/after and Δ of every segment (writes
    ``segment_confidence`` or ``reference_segment_confidence``)."""
    table = deltas_by_trace(measure_prefix_confidence(profile, source, sampler))
    write_table(STAGE.path(profile, TRACE_SETS[source].table), table)
    return table


def segment_confidences(profile: Profile) -> dict[str, pd.DataFrame]:
    """:func:`segment_confidence` of every source of :func:`measured_sources`, one sampler shared."""
    with ForcedAnswerSampler(profile) as sampler:
        return {source: segment_confidence(profile, source, sampler) for source in measured_sources(profile)}


def analysis_table(profile: Profile, confidence: pd.DataFrame | None = None) -> pd.DataFrame:
    """Segment scores of the attributed correct traces joined with their Δ."""
    if confidence is None:
        confidence = read_table(STAGE.path(profile, "segment_confidence"))
    _, scores, _ = attributed_correct_traces(profile)
    if scores.empty:
        return scores.assign(**{c: pd.Series(dtype=float) for c in CONFIDENCE_COLUMNS[2:]})
    return scores.merge(confidence, on=["trace_id", "segment"], how="inner", validate="one_to_one")


def analyse(profile: Profile, table: pd.DataFrame) -> dict:
    """Fig. 2 groups, the τ search, the β ablation and the important shares (writes CSVs)."""
    analysis = profile["analysis"]
    tau, beta = analysis["groups_tau"], analysis["groups_beta"]
    labelled = label_segments(table, tau, beta)
    groups = group_summary(labelled)
    comparison = delta_gap(labelled)
    search = tau_search(table, analysis["tau_grid"], beta)
    tau_star = choose_threshold(search, "tau")
    ablation_tau = tau_star if tau_star is not None else profile.get_path("selection.tau")
    ablation = beta_ablation(table, ablation_tau, analysis["beta_grid"])
    beta_star = choose_threshold(ablation, "beta")
    shares = importance_shares(table, "important")
    shares_table = pd.DataFrame(
        [{"tau": profile.get_path("selection.tau"), "beta": profile.get_path("selection.beta"), **shares}]
    )
    write_table(STAGE.path(profile, "groups"), groups)
    write_table(STAGE.path(profile, "tau_search"), search)
    write_table(STAGE.path(profile, "beta_ablation"), ablation)
    write_table(STAGE.path(profile, "importance_shares"), shares_table)
    return {
        "labelled": labelled,
        "groups": groups,
        "comparison": comparison,
        "tau_search": search,
        "tau_star": tau_star,
        "beta_ablation": ablation,
        "ablation_tau": ablation_tau,
        "beta_star": beta_star,
        "shares": shares,
        "shares_table": shares_table,
        "groups_tau": tau,
        "groups_beta": beta,
    }


def _mean_text(value) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def grid_edge_note(chosen: float, grid, name: str) -> str:
    """Says so when the chosen value is the grid's lowest or highest (the best value may lie beyond it)."""
    values = [float(v) for v in grid]
    if len(values) > 1 and chosen in (min(values), max(values)):
        edge = "lowest" if chosen == min(values) else "highest"
        return f"{name}* is the {edge} value of the grid {values}: the largest gap may lie beyond it"
    return ""


def _trace_interval(cmp: dict) -> str:
    if cmp["trace_difference"] is None or pd.isna(cmp["trace_difference"]):
        return MISSING_TEXT
    return f"{cmp['trace_difference']:+.3f} [95% CI {cmp['trace_ci_low']:+.3f}, {cmp['trace_ci_high']:+.3f}]"


def comparison_rows(profile: Profile, results: dict) -> list[dict]:
    """The paper-vs-run rows of stage 04."""
    shares, cmp = results["shares"], results["comparison"]
    sel = f"τ = {profile.get_path('selection.tau'):g}, β = {profile.get_path('selection.beta'):g}"
    empty_note = "no correct trace was attributed" if not shares["traces"] else f"{shares['traces']} correct traces"
    rows = [
        comparison_row(
            "Sec. 3.2",
            f"share of segments important ({sel})",
            paper("sec3_2.important_segment_share"),
            shares["segment_share"] if shares["segment_share"] is not None else MISSING_TEXT,
            empty_note,
            "{:.1%}",
        ),
        comparison_row(
            "Sec. 3.2",
            f"share of tokens in important segments ({sel})",
            paper("sec3_2.important_token_share"),
            shares["token_share"] if shares["token_share"] is not None else MISSING_TEXT,
            empty_note,
            "{:.1%}",
        ),
        comparison_row(
            "Sec. 3.1, Fig. 2",
            f"mean Δ confidence, important vs unimportant (τ = {results['groups_tau']:g}, β = {results['groups_beta']:g})",
            paper("fig2.delta"),
            f"{_mean_text(cmp['delta_important'])} vs {_mean_text(cmp['delta_unimportant'])} "
            f"(traces: {format_p(cmp['trace_p'])})",
            f"{cmp['n_traces']} traces: within-trace difference {_trace_interval(cmp)}, Wilcoxon signed-rank; "
            f"segments pooled ({cmp['n_important']} vs {cmp['n_unimportant']}, Mann-Whitney U, not independent): "
            f"{format_p(cmp['p_value'])}"
            + (f"; {cmp['note']}" if cmp["note"] else "")
            + (f"; {cmp['trace_note']}" if cmp["trace_note"] else ""),
        ),
        comparison_row(
            "Sec. 3.2, Fig. 4",
            "τ* of the greedy search (largest Δ gap)",
            paper("sec3_2.tau_star"),
            results["tau_star"] if results["tau_star"] is not None else MISSING_TEXT,
            grid_edge_note(results["tau_star"], profile.get_path("analysis.tau_grid"), "τ")
            if results["tau_star"] is not None
            else "no τ on the grid gives important segments a larger mean Δ",
            "{:g}",
        ),
        comparison_row(
            "Sec. 3.2, App. D",
            f"β with the largest Δ gap under τ = {results['ablation_tau']:g}",
            paper("sec3_2.beta"),
            results["beta_star"] if results["beta_star"] is not None else MISSING_TEXT,
            "Δ criterion only; the paper picks β by accuracy (App. D)",
            "{:g}",
        ),
    ]
    return rows


def run(profile: Profile) -> StageResult:
    """Stage 04: forced-answer confidence after every prefix, Δ per segment, Fig. 2, the τ search and the
    β ablation (Fig. 4), the important shares; Δ of the reference traces too when training needs it."""
    spec = profile.get_path("analysis.confidence")
    by_source = segment_confidences(profile)
    confidence = by_source["self"]
    _, scores, _ = attributed_correct_traces(profile)
    results = analyse(profile, analysis_table(profile, confidence))
    comparison = results["comparison"]
    fig2 = figures.fig2_confidence_delta(
        results["groups"], f"traces: {format_p(comparison['trace_p'])}", results["groups_tau"], results["groups_beta"]
    )
    fig4 = figures.fig4_tau_search(results["tau_search"], results["beta_ablation"])
    columns = [
        "tau",
        "beta",
        "n_important",
        "n_unimportant",
        "delta_important",
        "delta_unimportant",
        "gap",
        "n_traces",
        "trace_difference",
        "trace_p",
        "p_value",
        "selected",
        "note",
    ]
    fractions = [i / spec["n_samples"] for i in range(spec["n_samples"] + 1)]
    checks = {
        "one row per segment of every attributed correct trace": len(confidence) == len(scores),
        "confidences are fractions of the samples": bool(
            confidence[["confidence_before", "confidence_after"]].isin(fractions).all().all()
        ),
    }
    if "reference" in by_source:  # only when an ablation trains on the reference traces
        n_segments = sum(len(t["segments"]) for t in traces_to_measure(profile, "reference"))
        checks["one row per segment of every reference trace"] = len(by_source["reference"]) == n_segments
    return finish(
        profile,
        STAGE,
        comparison_rows(profile, results),
        tables={
            "groups": readable(results["groups"]),
            "tau_search": readable(results["tau_search"][columns]),
            "beta_ablation": readable(results["beta_ablation"][columns]),
            "importance_shares": readable(results["shares_table"]),
        },
        figures={
            "fig2_confidence_delta": figures.save(fig2, profile, "fig2_confidence_delta"),
            "fig4_tau_search": figures.save(fig4, profile, "fig4_tau_search"),
        },
        checks=checks,
        values={key: results[key] for key in ("comparison", "tau_star", "ablation_tau", "beta_star")},
    )
