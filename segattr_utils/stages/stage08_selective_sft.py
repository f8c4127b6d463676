"""Stage 08: selective SFT and every comparison variant (Sec. 4, Tables 1-4, 7, Fig. 5, App. C.3-C.4).

The run plan comes from the profile's ``training`` section (:func:`plan_runs`): full-CoT and segment
selective SFT with several seeds on each supervision source (self-generated shortest-correct traces of
stage 01, and the reference traces), the ablations of Tables 2-4 on one source, the tau/beta sweep of
Fig. 5 and the Retro-Search keywords of Table 7. Every run starts from the same base model with the
same schedule and seed schedule; only the labels (selective) or the trace text (pruned) differ.

Each run is resumable (TRL checkpoints; a finished run has a completion marker and is never
retrained) and writes its model to ``results/<profile>/08_selective_sft/models/<run>/``.
``runs.parquet`` lists every run with its supervision statistics and cost. ``training.launcher`` says
where runs train: ``inprocess`` (one after another in this process), ``processes`` (the tiny world: the
runs dealt over ``training.processes`` CPU processes of ``training.threads_per_process`` torch threads,
each training its runs one after another), ``per_gpu`` (the paper profile: each run on one GPU, the runs
spread over the visible GPUs) or ``accelerate`` (each run over ``training.accelerate_config``'s
processes, DeepSpeed with ``training.deepspeed_config``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import dag, distributed, services
from ..artifacts import RecordStore, read_json, write_json, write_table
from ..config import Profile, find_project_root, load_profile, save_profile
from ..llm.training import (
    TrainingExample,
    TrainSettings,
    build_char_masked_example,
    build_training_example,
    is_trained,
    train_sft,
)
from ..llm.variants import (
    SelectionSettings,
    TraceRecord,
    TraceSelection,
    get_variant,
    selected_token_share,
    variants_for,
)
from ..method.segmentation import segment
from ..method.token_spans import build_attribution_sequence
from ..progress import QUIET_ENV, progress
from ..run_log import log_timings, read_run_log
from . import StageResult, finish
from .stage03_ig_attribution import attribute_share, attribute_traces, over_length_traces, skipped_traces

STAGE = dag.SELECTIVE_SFT
SOURCES = services.SOURCES


@dataclass(frozen=True)
class RunSpec:
    """One fine-tuning run: a registered variant on one supervision source with one seed.

    ``overrides`` change selection thresholds (Fig. 5); ``keywords`` names another segmentation list
    (Table 7); ``tables`` says which of the paper's tables/figures the run belongs to.
    """

    variant: str
    source: str
    seed: int
    tables: tuple[str, ...]
    overrides: tuple[tuple[str, float], ...] = ()
    keywords: str | None = None

    @property
    def name(self) -> str:
        parts = [self.variant, self.source]
        parts += [f"{k}{v:g}" for k, v in self.overrides]
        if self.keywords:
            parts.append(self.keywords)
        return "__".join(parts) + f"__seed{self.seed}"

    @property
    def setting(self) -> str:
        """The run's name without its seed: runs of one setting differ only in the seed."""
        return self.name.rsplit("__seed", 1)[0]


def plan_runs(profile: Profile) -> list[RunSpec]:
    """Every run the profile asks for, main comparison first (so a short budget still gets Table 1).

    The variant registry (:mod:`segattr_utils.llm.variants`) alone says which variant belongs to which
    table: Table 1 is full-CoT vs segment selective SFT with ``training.main_seeds`` on every source;
    each other table of ``training.tables`` adds its registered variants with ``training.ablation_seeds``
    (by default the main seeds, so that a variant is ranked against full-CoT and ours on the same seeds)
    on the source :func:`segattr_utils.services.table_sources` gives it (the ablation source; a variant
    in several tables is one run); Table 7 re-segments with the Retro-Search keywords and Fig. 5 sweeps
    τ and β of the variants registered for them. The same table-to-source map decides which signals
    stages 04 and 05 measure on which traces (:func:`segattr_utils.services.planned_signals`).
    """
    cfg = profile["training"]
    main_seeds = [int(s) for s in cfg["main_seeds"]]
    ablation_seeds = [int(s) for s in cfg.get("ablation_seeds", main_seeds)]
    sources = services.training_sources(profile)
    source_of = services.table_sources(profile)
    tables = list(source_of)
    main = [v.name for v in variants_for("1")]
    runs: list[RunSpec] = []
    for source in sources:
        for seed in main_seeds:
            runs += [RunSpec(name, source, seed, ("1",)) for name in main]
    planned: dict[str, list[str]] = {}
    for table in ("2", "3", "4"):
        if table in tables:
            for variant in variants_for(table):
                if variant.name not in main:
                    planned.setdefault(variant.name, []).append(table)
    for name, in_tables in planned.items():
        runs += [RunSpec(name, source_of[in_tables[0]], seed, tuple(in_tables)) for seed in ablation_seeds]
    sweeps = [v.name for v in variants_for("fig5") if v.mode != "full"]
    if "fig5" in tables:
        for name in sweeps:
            for tau in cfg.get("tau_sweep", []):
                runs += [
                    RunSpec(name, source_of["fig5"], seed, ("fig5",), (("tau", float(tau)),)) for seed in ablation_seeds
                ]
            for beta in cfg.get("beta_sweep", []):
                runs += [
                    RunSpec(name, source_of["fig5"], seed, ("fig5",), (("beta", float(beta)),))
                    for seed in ablation_seeds
                ]
    if "7" in tables:
        for variant in variants_for("7"):
            if variant.mode != "full":
                runs += [
                    RunSpec(variant.name, source_of["7"], seed, ("7",), keywords="retro_search")
                    for seed in ablation_seeds
                ]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError("two planned runs share a name")
    return runs


def run_label(spec: RunSpec) -> str:
    """The variant's row label in the paper's tables, with the run's threshold overrides and keywords."""
    label = get_variant(spec.variant).label
    details = [f"{'τ' if k == 'tau' else 'β' if k == 'beta' else k} = {v:g}" for k, v in spec.overrides]
    if spec.keywords:
        details.append(f"{spec.keywords.replace('_', '-')} keywords")
    return f"{label} ({', '.join(details)})" if details else label


def selection_settings(profile: Profile, spec: RunSpec | None = None) -> SelectionSettings:
    selection, cfg = profile["selection"], profile["training"]
    settings = SelectionSettings(
        tau=float(selection["tau"]),
        beta=float(selection["beta"]),
        aggregation=selection["aggregation"],
        always_keep=selection["always_keep"],
        random_segment_share=float(cfg.get("random_segment_share", 0.33)),
        token_share=float(cfg.get("token_share", 0.45)),
        prune_token_share=float(cfg.get("prune_token_share", 0.30)),
        seed=int(spec.seed) if spec else 0,
    )
    return settings.with_overrides(**dict(spec.overrides)) if spec and spec.overrides else settings


# ---------------------------------------------------------------------------------------------
# Training traces with their signals


def _keyword_list(profile: Profile, name: str | None) -> tuple[str, ...]:
    return services.keywords_for(profile, name)


def load_trace_records(profile: Profile, source: str, keywords: str | None = None) -> list[TraceRecord]:
    """The training traces of one source with IG per token and, where computed for that source, the
    signals of stages 04 (confidence gain) and 05 (perplexity, entropy), the decision segment and
    ground-truth kinds.

    ``keywords`` re-segments the traces with another keyword list (Table 7): token attributions do not
    depend on segmentation, so the tokens of the attributed sequence are regrouped by the new spans.

    The traces, their attributions and signals are those of :func:`segattr_utils.services.upstream_profile`
    (the profile itself, or the main run a student profile names as ``upstream``). The attributed sequence
    is the generator's, so its spans are found with the generator's tokenizer and prompt; each record's
    token offsets are character spans of the trace, which the student's own tokenizer maps onto its
    tokens (:func:`build_examples`).
    """
    owner = services.upstream_profile(profile)
    settings = owner["attribution"]
    stores = {
        "self": dag.IG_ATTRIBUTION.path(owner, "attributions_store"),
        "reference": STAGE.path(owner, "reference_attributions_store"),
    }
    if source not in stores:
        raise ValueError(f"unknown supervision source {source!r}; use {SOURCES}")
    store_path = stores[source]
    if not store_path.exists():
        of = f" of profile {owner.name!r} (this profile's upstream)" if owner is not profile else ""
        raise FileNotFoundError(
            f"{store_path} does not exist: run notebooks 01-03{of} (self-generated traces) or "
            "attribute_reference_traces (reference traces) first"
        )
    if source == "self":
        kept = services.kept_traces(owner)
        kept = kept[kept["correct"]]
        segments_table = services.segment_table(owner)
        grouped = {t: g.sort_values("segment") for t, g in segments_table.groupby("trace_id")}
        traces = [
            {
                "trace_id": t["trace_id"],
                "question_id": t["question_id"],
                "question": t["question"],
                "answer": t["answer"],
                "segments": grouped[t["trace_id"]]["text"].tolist(),
                "kinds": grouped[t["trace_id"]]["kind"].tolist(),
                "answer_part": t["answer_part"],
            }
            for t in kept.to_dict("records")
        ]
    else:
        traces = services.reference_traces(owner).to_dict("records")
    tokenizer = services.load_role_tokenizer(owner, "generator")
    attributions = {r["trace_id"]: r for r in RecordStore(store_path, key_fn=lambda r: r["trace_id"]).records()}
    over_length = over_length_traces(list(attributions.values()))
    if over_length:
        warnings.warn(
            f"{len(over_length)} {source} traces exceed attribution.max_length and were not attributed: no run "
            "learns from them (set attribution.max_length: null to attribute every trace, as the authors)",
            stacklevel=2,
        )
    out_of_memory = (skipped_traces(list(attributions.values()))["cause"] == "out_of_memory").sum()
    if out_of_memory:
        warnings.warn(
            f"{out_of_memory} {source} traces ran out of memory in IG and were not attributed: no run learns from "
            "them (attribution.retry_skipped: true tries them again)",
            stacklevel=2,
        )
    # Table 7 re-segments the traces: the signals of stages 04-05 belong to the profile's own segments.
    signals = services.segment_signals(owner, source) if keywords is None else {}
    problems = services.world_problems(owner)
    records = []
    for trace in traces:
        record = attributions.get(trace["trace_id"])
        if record is None or record.get("skipped"):
            continue
        prompt = services.prompt(tokenizer, trace["question"])
        flat_values = np.concatenate([np.asarray(v, dtype=np.float64) for v in record["segment_values"]])
        trace_start = record["segment_spans"][0][0]
        segments = list(trace["segments"])
        kinds = list(trace.get("kinds") or [None] * len(segments))
        if keywords is not None:
            segments = segment("".join(segments), _keyword_list(owner, keywords))
            kinds = [None] * len(segments)
        sequence = build_attribution_sequence(
            tokenizer, prompt, segments, trace["answer"], suffix_template=settings["answer_suffix"]
        )
        if sequence.trace_span[0] != trace_start or sequence.trace_span[1] - trace_start != len(flat_values):
            raise ValueError(
                f"trace {trace['trace_id']}: its tokenisation no longer matches the attributed sequence; "
                "rerun notebook 03"
            )
        values, offsets = [], []
        for start, end in sequence.segment_spans:
            values.append(flat_values[start - trace_start : end - trace_start])
            offsets.append([(s - len(prompt), e - len(prompt)) for s, e in sequence.offsets[start:end]])
        extra = signals.get(trace["trace_id"], {})
        records.append(
            TraceRecord(
                trace_id=trace["trace_id"],
                question=trace["question"],
                answer=trace["answer"],
                segments=segments,
                answer_part=trace["answer_part"],
                token_values=values,
                token_offsets=offsets,
                kinds=kinds,
                decision_segment=_decision(problems.get(trace.get("question_id")), segments, trace["answer"]),
                **extra,
            )
        )
    if not records:
        raise ValueError(f"no attributed {source} traces to train on")
    return records


def reference_traces_to_attribute(profile: Profile) -> tuple[list[dict], Path]:
    """The reference traces of the training questions that this stage attributes, and their store (both
    the upstream's, :func:`segattr_utils.services.upstream_profile`)."""
    owner = services.upstream_profile(profile)
    traces = services.reference_traces(owner).to_dict("records")
    return traces, STAGE.path(owner, "reference_attributions_store")


def attribute_reference_traces(profile: Profile) -> pd.DataFrame:
    """Token IG of the reference traces of the training questions (the world's correct teacher; LIMO's
    provided CoTs on the paper profile), with stage 03's settings; resumable, one record per trace in
    ``reference_attributions.jsonl``. Returns and writes their completeness table.

    A student profile (``upstream`` set) attributes them with the upstream's generator and settings into
    the upstream's folder, where the upstream's own notebook 08 finds them done (and every other student
    too): no trace is attributed twice. Run the first such notebook 08 alone, or the upstream's first."""
    profile = services.upstream_profile(profile)
    traces, store_path = reference_traces_to_attribute(profile)
    store = RecordStore(store_path, key_fn=lambda r: r["trace_id"])
    records = attribute_traces(profile, traces, store, "integrated gradients (reference)", STAGE)
    threshold = profile.get_path("attribution.flag_relative_delta")
    table = pd.DataFrame(
        [
            {
                "trace_id": r["trace_id"],
                "n_tokens": r["n_tokens"],
                "skipped": r.get("skipped"),
                "relative_delta": r.get("relative_delta"),
                "delta": r.get("delta"),
                "flagged": (r.get("relative_delta") or 0) > threshold,
            }
            for r in records
        ]
    )
    write_table(STAGE.path(profile, "reference_completeness"), table)
    return table


def _decision(problem, segments: list[str], answer: str) -> int | None:
    """The first segment that reaches the answer (App. A): the world's rule when a problem is known."""
    from ..measures.position import decision_segment, world_decision_segment

    found = world_decision_segment(problem, segments) if problem is not None else None
    return found if found is not None else decision_segment(segments, answer)


# ---------------------------------------------------------------------------------------------
# Supervision


def build_examples(
    tokenizer, records: list[TraceRecord], selections: list[TraceSelection], mode: str
) -> list[TrainingExample]:
    """Training examples of one variant: the whole trace with a loss mask (``full``/``selective``,
    Eq. 8/9) or the trace with unselected segments deleted (``pruned``)."""
    examples = []
    for record, selection in zip(records, selections):
        prompt = services.prompt(tokenizer, record.question)
        if mode == "full":
            examples.append(build_training_example(tokenizer, prompt, record.segments, record.answer_part))
        elif mode == "pruned":
            kept = [record.segments[i] for i in sorted(selection.segments)]
            # each kept segment keeps its own transition text, so the pruned trace still reads as paragraphs
            examples.append(build_training_example(tokenizer, prompt, kept, record.answer_part))
        elif mode == "selective" and not selection.tokens:
            examples.append(
                build_training_example(
                    tokenizer, prompt, record.segments, record.answer_part, selected=sorted(selection.segments)
                )
            )
        elif mode == "selective":
            masks = selection.token_mask(record)
            spans = [span for offsets, mask in zip(record.token_offsets, masks) for span, m in zip(offsets, mask) if m]
            trace = "".join(record.segments)
            spans = [(max(0, s), min(len(trace), e)) for s, e in spans]
            examples.append(build_char_masked_example(tokenizer, prompt, trace, record.answer_part, spans))
        else:
            raise ValueError(f"unknown supervision mode {mode!r}")
    return examples


def _whole_traces(records: list[TraceRecord]) -> list[TraceSelection]:
    return [TraceSelection(set(range(r.n_segments))) for r in records]


def supervision_stats(
    records: list[TraceRecord],
    selections: list[TraceSelection],
    examples: list[TrainingExample],
    mode: str,
    max_length: int,
) -> dict:
    """How much of the traces a run learns from (segment and token shares, kinds in the tiny world), and
    how many of its examples SFT truncates to their first ``max_length`` tokens (as the authors' trainer:
    a long trace is kept and cut, never dropped; the token counts are those of the truncated examples)."""
    n_segments = sum(r.n_segments for r in records)
    chosen = sum(len(s.segments) for s in selections)
    stats = {
        "traces": len(records),
        "segment_share": chosen / n_segments if n_segments else float("nan"),
        "token_share": selected_token_share(records, selections),
        "trained_tokens": int(sum(e.truncated(max_length).n_trained for e in examples)),
        "sequence_tokens": int(sum(len(e.truncated(max_length).input_ids) for e in examples)),
        "truncated_traces": sum(len(e.input_ids) > max_length for e in examples),
    }
    if mode == "full":
        stats["segment_share"], stats["token_share"] = 1.0, 1.0
    kinds = [(k, i in s.segments) for r, s in zip(records, selections) for i, k in enumerate(r.kinds or []) if k]
    if kinds:
        frame = pd.DataFrame(kinds, columns=["kind", "chosen"])
        for kind, share in frame.groupby("kind")["chosen"].mean().items():
            stats[f"chosen_share_{kind}"] = float(share) if mode != "full" else 1.0
    return stats


def supervision_preview(profile: Profile) -> pd.DataFrame:
    """What every planned setting learns from, before any training: segment and token shares of the
    traces (and, in the tiny world, the share of each ground-truth kind that is learned), and how many
    traces SFT truncates at ``max_length`` (the whole trace: full and selective; pruned: what is left)."""
    rows, cache = [], {}
    seen = set()
    tokenizer = services.load_role_tokenizer(profile, "student")
    max_length = schedule(profile)[-1].max_length
    for spec in plan_runs(profile):
        if spec.setting in seen:
            continue
        seen.add(spec.setting)
        key = (spec.source, spec.keywords)
        if key not in cache:
            records = load_trace_records(profile, spec.source, spec.keywords)
            cache[key] = records, build_examples(tokenizer, records, _whole_traces(records), "full")
        records, whole = cache[key]
        variant = get_variant(spec.variant)
        selections = variant.selections(records, selection_settings(profile, spec))
        examples = build_examples(tokenizer, records, selections, "pruned") if variant.mode == "pruned" else whole
        stats = supervision_stats(records, selections, examples, variant.mode, max_length)
        stats.pop("trained_tokens"), stats.pop("sequence_tokens")
        rows.append(
            {
                "setting": spec.setting,
                "label": run_label(spec),
                "mode": variant.mode,
                "tables": ",".join(spec.tables),
                **stats,
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Running


def schedule(profile: Profile) -> list[TrainSettings]:
    """The training stages every variant runs: one stage (App. C.3 for R1-Distill models) or two
    (Qwen2.5-Instruct: full CoT first, then the variant's supervision)."""
    cfg = profile["training"]
    base = dict(cfg["sft"])
    if cfg.get("schedule", "one_stage") == "one_stage":
        return [TrainSettings.from_dict(base)]
    if cfg["schedule"] != "two_stage":
        raise ValueError(f"training.schedule must be 'one_stage' or 'two_stage', got {cfg['schedule']!r}")
    stages = cfg["two_stage"]
    return [
        TrainSettings.from_dict({**base, **stages["stage1"]}),
        TrainSettings.from_dict({**base, **stages["stage2"]}),
    ]


def run_dir(profile: Profile, spec: RunSpec) -> Path:
    return STAGE.path(profile, "run_folders") / spec.name


def model_dir(profile: Profile, spec: RunSpec) -> Path:
    return STAGE.path(profile, "models") / spec.name


def train_run(profile: Profile, spec: RunSpec, records: list[TraceRecord]) -> dict:
    """Train one run (resumable) and return its summary; a finished run is read back, never retrained."""
    summary_path = run_dir(profile, spec) / "summary.json"
    if summary_path.exists() and model_dir(profile, spec).is_dir():
        return read_json(summary_path)
    variant = get_variant(spec.variant)
    settings = selection_settings(profile, spec)
    selections = variant.selections(records, settings)
    stages = schedule(profile)
    # Loaded on the CPU: the trainer places it (on this process's GPU under accelerate/DeepSpeed).
    model, tokenizer = services.load_model(profile, "student", device="cpu")
    full_examples = build_examples(tokenizer, records, _whole_traces(records), "full")
    examples = build_examples(tokenizer, records, selections, variant.mode)
    stats = supervision_stats(records, selections, examples, variant.mode, stages[-1].max_length)
    started = time.time()
    stage_summaries = []
    for index, stage_settings in enumerate(stages):
        # Two-stage schedule: stage 1 is full-CoT SFT for every variant (App. C.3).
        stage_examples = full_examples if len(stages) == 2 and index == 0 else examples
        out = run_dir(profile, spec) / f"stage{index + 1}"
        if is_trained(out):
            model, tokenizer = services.load_model(profile, "student", path=out / "final")
            stage_summaries.append(read_json(out / "stage_summary.json"))
            continue
        model.train()
        deepspeed = profile.get_path("training.deepspeed_config", None)
        deepspeed = (
            str(find_project_root() / deepspeed)
            if deepspeed and profile.get_path("training.launcher", "") == "accelerate"
            else None
        )
        summary = train_sft(model, tokenizer, stage_examples, stage_settings, out, seed=spec.seed, deepspeed=deepspeed)
        write_json(out / "stage_summary.json", summary)
        stage_summaries.append(summary)
    if not _is_main_process():
        return {}
    final_dir = model_dir(profile, spec)
    tmp_dir = final_dir.with_name(final_dir.name + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    model.save_pretrained(tmp_dir)
    tokenizer.save_pretrained(tmp_dir)
    shutil.rmtree(final_dir, ignore_errors=True)
    tmp_dir.rename(final_dir)
    steps = sum(s["steps"] for s in stage_summaries)
    runtime = sum(s.get("train_runtime", float("nan")) for s in stage_summaries)
    summary = {
        "run": spec.name,
        "setting": spec.setting,
        "variant": spec.variant,
        "label": run_label(spec),
        "mode": variant.mode,
        "source": spec.source,
        "seed": spec.seed,
        "tables": list(spec.tables),
        "overrides": dict(spec.overrides),
        "keywords": spec.keywords or profile.get_path("segmentation.keywords"),
        **stats,
        "steps": steps,
        "final_loss": stage_summaries[-1]["final_loss"],
        # How the run was actually started (accelerate's launcher sets ACCELERATE_MIXED_PRECISION for its processes).
        "accelerate_launch": "ACCELERATE_MIXED_PRECISION" in os.environ,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    }
    log_timings(
        profile,
        STAGE,
        spec.name,
        {
            "train_seconds": time.time() - started,
            "trainer_runtime": runtime,
            "seconds_per_step": runtime / steps if steps else float("nan"),
        },
    )
    write_json(summary_path, summary)
    return summary


def _is_main_process() -> bool:
    """Under ``accelerate launch`` only rank 0 writes the final model and summary."""
    return int(os.environ.get("RANK", "0")) == 0


def train_all(profile: Profile, only: list[str] | None = None) -> pd.DataFrame:
    """Train every planned run (resumable) where ``training.launcher`` says and write ``runs.parquet``;
    returns the run table."""
    runs = plan_runs(profile)
    if only:
        runs = [r for r in runs if r.name in only or r.setting in only]
    launcher = profile.get_path("training.launcher", "inprocess")
    if any(r.source == "reference" for r in runs):
        attribute_reference_traces(profile)
    if launcher == "inprocess":
        summaries = _train_in_process(profile, runs)
    elif launcher == "processes":
        summaries = _train_in_processes(profile, runs)
    elif launcher == "per_gpu":
        summaries = _train_per_gpu(profile, runs)
    elif launcher == "accelerate":
        summaries = [_launch_with_accelerate(profile, spec) for spec in progress(runs, desc="SFT runs", unit="run")]
    else:
        raise ValueError(
            f"training.launcher must be 'inprocess', 'processes', 'per_gpu' or 'accelerate', got {launcher!r}"
        )
    table = pd.DataFrame(summaries)
    # A fixed column order: summaries read back from summary.json have sorted keys, fresh ones do not.
    kind_columns = sorted(c for c in table.columns if c.startswith("chosen_share_"))
    table = table[[c for c in table.columns if c not in kind_columns] + kind_columns]
    table["tables"] = table["tables"].map(lambda t: ",".join(t))
    table["overrides"] = table["overrides"].map(lambda o: json.dumps(o, sort_keys=True))
    write_table(STAGE.path(profile, "runs"), table)
    return table


def _train_in_process(profile: Profile, runs: list[RunSpec]) -> list[dict]:
    """One run after another in this process (CPU, the tiny world)."""
    cache: dict[tuple, list[TraceRecord]] = {}
    summaries = []
    for spec in progress(runs, desc="SFT runs", unit="run"):
        key = (spec.source, spec.keywords)
        if key not in cache:
            cache[key] = load_trace_records(profile, spec.source, spec.keywords)
        summaries.append(train_run(profile, spec, cache[key]))
    return summaries


def _train_in_processes(profile: Profile, runs: list[RunSpec], poll_seconds: float = 1.0) -> list[dict]:
    """The runs dealt in turn over ``training.processes`` subprocesses of :func:`main` on this machine, each
    with ``training.threads_per_process`` torch threads, training its runs one after another (on 2 CPU
    cores, two single-threaded processes train ~1.3x the steps per second of one two-threaded process:
    the tiny model's matrix products use two threads poorly). Every run seeds itself, so which process
    trains it changes only float rounding. A finished run is not dealt again. The profile travels in a
    file (a profile changed in memory by a notebook reaches the processes as it is); each process's output
    goes to ``runs/.launch/process-<i>.log``, whose end a failure shows."""
    processes, threads = distributed.resolve_processes(profile["training"], profile["kind"], "training")
    todo = [spec for spec in runs if not (run_dir(profile, spec) / "summary.json").exists()]
    if todo:
        folder = STAGE.path(profile, "run_folders") / ".launch"
        folder.mkdir(parents=True, exist_ok=True)
        save_profile(profile, folder / "profile.yaml")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), QUIET_ENV: "1"}
        shares = [distributed.deal(todo, rank, processes) for rank in range(min(processes, len(todo)))]
        started = []
        for rank, share in enumerate(shares):
            log = open(folder / f"process-{rank}.log", "wb")  # noqa: SIM115 - closed when its process ends
            command = _run_command(profile, share, profile_file=folder / "profile.yaml")
            started.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log, command))

        def finished() -> int:
            return sum((run_dir(profile, spec) / "summary.json").exists() for spec in todo)

        with progress(total=len(todo), desc=f"SFT runs ({len(shares)} processes)", unit="run") as bar:
            while any(process.poll() is None for process, _, _ in started):
                time.sleep(poll_seconds)
                bar.update(finished() - bar.n)
            bar.update(finished() - bar.n)
        for _, log, _ in started:
            log.close()
        for rank, (process, log, command) in enumerate(started):
            if process.returncode != 0:
                tail = Path(log.name).read_text(errors="replace").splitlines()[-40:]
                raise RuntimeError(
                    f"SFT process {rank} of {len(started)} failed (exit status {process.returncode}); the runs "
                    f"the others finished are kept. The last lines of {log.name}:\n"
                    + "\n".join(tail)
                    + f"\ncommand: {' '.join(command)}"
                )
        shutil.rmtree(folder)
    return [read_json(run_dir(profile, spec) / "summary.json") for spec in runs]


def visible_gpus(profile: Profile) -> list[str]:
    """The GPUs runs are spread over: ``training.gpus`` of the visible ones (null: all), by the ids that
    ``CUDA_VISIBLE_DEVICES`` gives them in this process."""
    import torch

    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in listed.split(",")][:count] if listed else [str(i) for i in range(count)]
    wanted = profile.get_path("training.gpus", None)
    return ids[: int(wanted)] if wanted else ids


def assign_gpus(runs: list[RunSpec], gpus: list[str]) -> dict[str, list[RunSpec]]:
    """Round-robin: run i trains on GPU i mod len(gpus); each GPU trains its runs one after another."""
    return {gpu: runs[index :: len(gpus)] for index, gpu in enumerate(gpus) if runs[index :: len(gpus)]}


def _train_per_gpu(profile: Profile, runs: list[RunSpec]) -> list[dict]:
    """The paper profile's default (the authors: one GPU, batch 2): every run is a subprocess of
    :func:`main` that sees one GPU (``CUDA_VISIBLE_DEVICES``); the GPUs work through their runs at the
    same time. A finished run is not relaunched."""
    gpus = visible_gpus(profile)
    if not gpus:
        raise RuntimeError("training.launcher: per_gpu needs a CUDA GPU; use training.launcher: inprocess on a CPU")

    def train_on(gpu: str, specs: list[RunSpec]) -> None:
        for spec in specs:
            if not (run_dir(profile, spec) / "summary.json").exists():
                subprocess.run(
                    _run_command(profile, [spec]), check=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
                )

    with ThreadPoolExecutor(max_workers=len(gpus)) as pool:
        for done in [pool.submit(train_on, gpu, specs) for gpu, specs in assign_gpus(runs, gpus).items()]:
            done.result()  # a failed run raises here, after the other GPUs finished their runs
    return [read_json(run_dir(profile, spec) / "summary.json") for spec in runs]


def _run_command(
    profile: Profile, specs: list[RunSpec], launcher: list[str] | None = None, profile_file: Path | None = None
) -> list[str]:
    """``python -m segattr_utils.stages.stage08_selective_sft --profile ... --run <name> ...`` (:func:`main`),
    with this interpreter, so that it works without the environment's scripts on PATH (under ``make``)."""
    module = ["-m", "segattr_utils.stages.stage08_selective_sft"]
    arguments = [
        "--profile",
        str(profile_file or profile.source_path or profile.name),
        "--run",
        *(s.name for s in specs),
    ]
    return [sys.executable, *(launcher or []), *module, *arguments]


def _launch_with_accelerate(profile: Profile, spec: RunSpec) -> dict:
    """One ``accelerate launch`` per run with the profile's accelerate config (DeepSpeed with
    ``training.deepspeed_config``); the launched processes run :func:`main` for this run only."""
    summary_path = run_dir(profile, spec) / "summary.json"
    if not summary_path.exists():
        config = find_project_root() / profile.get_path("training.accelerate_config")
        launch = ["-m", "accelerate.commands.launch", "--config_file", str(config)]
        subprocess.run(_run_command(profile, [spec], launch), check=True)
    return read_json(summary_path)


def main(argv: list[str] | None = None) -> int:
    """``python -m segattr_utils.stages.stage08_selective_sft --profile paper --run <name> ...``: train these
    runs one after another (what ``accelerate launch`` starts on each GPU, with one run; what the
    ``processes`` launcher starts, with its share). ``--items reference`` instead: this process's share of
    the reference traces' IG under an ``accelerate launch`` started by hand on several machines
    (:func:`segattr_utils.stages.stage03_ig_attribution.attribute_share`); the next run of the notebook
    merges the ranks' stores."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--profile", required=True)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", nargs="+", help="run names from plan_runs (see runs.parquet)")
    what.add_argument("--items", choices=["reference"], help="IG of the reference traces, this rank's share")
    args = parser.parse_args(argv)
    profile = load_profile(args.profile)
    if args.items == "reference":
        traces, store_path = reference_traces_to_attribute(profile)
        attribute_share(profile, traces, store_path)
        return 0
    specs = {r.name: r for r in plan_runs(profile)}
    unknown = [name for name in args.run if name not in specs]
    if unknown:
        print(f"no planned run {', '.join(map(repr, unknown))}; planned: {', '.join(specs)}", file=sys.stderr)
        return 2
    _train_in_process(profile, [specs[name] for name in args.run])
    return 0


def run(profile: Profile) -> StageResult:
    """Stage 08: IG of the reference traces (when a run trains on them), what every variant learns from,
    and every planned run (resumable)."""
    plan = plan_runs(profile)
    tables = {
        "plan": pd.DataFrame(
            [
                {"run": r.name, "variant": r.variant, "source": r.source, "seed": r.seed, "tables": ",".join(r.tables)}
                for r in plan
            ]
        )
    }
    values = {"n_runs": len(plan), "schedule": schedule(profile)}
    if "reference" in profile.get_path("training.sources"):
        reference = attribute_reference_traces(profile)
        values["reference_ig"] = {
            "traces": len(reference),
            "median_relative_delta": float(reference["relative_delta"].median()),
            "flagged_share": float(reference["flagged"].mean()),
        }
    preview = supervision_preview(profile)
    write_table(STAGE.path(profile, "supervision_preview"), preview)
    tables["supervision_preview"] = preview
    values["truncated_traces"] = int(preview["truncated_traces"].max())
    if values["truncated_traces"]:
        warnings.warn(
            f"up to {values['truncated_traces']} traces per setting are longer than training.sft.max_length: SFT "
            "keeps them and trains on their first max_length tokens, as the authors' trainer (column "
            "truncated_traces of the supervision preview and of runs.parquet)",
            stacklevel=2,
        )
    runs = train_all(profile)
    tables["runs"] = runs[["run", "mode", "token_share", "trained_tokens", "steps", "final_loss"]]
    log = read_run_log(profile, STAGE)
    per_step = log[log["what"].str.endswith(": seconds_per_step")].assign(
        run=lambda t: t["what"].str.rsplit(":", n=1).str[0]
    )
    per_step = per_step.drop_duplicates("run", keep="last").merge(runs[["run", "mode"]], on="run")
    if len(per_step):
        tables["cost_per_step"] = per_step.groupby("mode")["seconds"].agg(["mean", "std", "count"])
    return finish(
        profile,
        STAGE,
        tables=tables,
        values=values,
        checks={"every planned run finished": set(runs["run"]) == {r.name for r in plan}},
    )


if __name__ == "__main__":
    sys.exit(main())
