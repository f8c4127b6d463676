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
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .. import dag, distributed, services
from ..artifacts import RecordStore, read_json, write_json, write_table
from ..config import Profile, find_project_root, save_profile
from ..llm.training import TrainingExample, TrainSettings, is_trained, train_sft
from ..llm.variants import (
    SelectionSettings,
    TraceRecord,
    TraceSelection,
    get_variant,
    selected_token_share,
    variants_for,
)
from ..method.segmentation import segment
from ..progress import progress
from ..run_log import log_timings
from ..scored_trace import MASKS, training_example
from . import StageResult, finish
from .stage03_ig_attribution import attribute_traces, over_length_traces, scored_traces, skipped_traces

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
    ablation_seeds = [int(s) for s in (main_seeds if cfg["ablation_seeds"] is None else cfg["ablation_seeds"])]
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
            for tau in cfg["tau_sweep"]:
                runs += [
                    RunSpec(name, source_of["fig5"], seed, ("fig5",), (("tau", float(tau)),)) for seed in ablation_seeds
                ]
            for beta in cfg["beta_sweep"]:
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
        random_segment_share=float(cfg["random_segment_share"]),
        token_share=float(cfg["token_share"]),
        prune_token_share=float(cfg["prune_token_share"]),
        seed=int(spec.seed) if spec else 0,
    )
    return settings.with_overrides(**dict(spec.overrides)) if spec and spec.overrides else settings


# ---------------------------------------------------------------------------------------------
# Training traces with their signals


def _keyword_list(profile: Profile, name: str | None) -> tuple[str, ...]:
    return services.keywords_for(profile, name)


def load_trace_records(profile: Profile, source: str, keywords: str | None = None) -> list[TraceRecord]:
    """The training traces of one source: the scored traces stored by the attribution (``self``: stage
    03's record store; ``reference``: this stage's, attributed by the same
    :func:`~segattr_utils.stages.stage03_ig_attribution.attribution_record`), used as stored (token ids,
    attributions and offsets are not recomputed, and no tokenizer is loaded), joined by trace id and
    segment with the world's ground-truth kinds, the decision segment and, where computed for that
    source, the signals of stages 04 (confidence gain) and 05 (perplexity, entropy).

    ``keywords`` re-segments the traces with another keyword list (Table 7): token attributions do not
    depend on segmentation, so the stored tokens are regrouped by the new segment boundaries
    (:meth:`~segattr_utils.scored_trace.ScoredTrace.regrouped`).

    The traces, their attributions and signals are those of :func:`segattr_utils.services.upstream_profile`
    (the profile itself, or the main run a student profile names as ``upstream``). Each record's token
    offsets are character spans of the trace, which the student's own tokenizer maps onto its tokens
    (:func:`build_examples`).
    """
    owner = services.upstream_profile(profile)
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
                "segments": grouped[t["trace_id"]]["text"].tolist(),
                "kinds": grouped[t["trace_id"]]["kind"].tolist(),
            }
            for t in kept.to_dict("records")
        ]
    else:
        traces = services.reference_traces(owner).to_dict("records")
    stored = RecordStore(store_path, key_fn=lambda r: r["trace_id"]).records()
    over_length = over_length_traces(stored)
    if over_length:
        warnings.warn(
            f"{len(over_length)} {source} traces exceed attribution.max_length and were not attributed: no run "
            "learns from them (set attribution.max_length: null to attribute every trace, as the authors)",
            stacklevel=2,
        )
    out_of_memory = (skipped_traces(stored)["cause"] == "out_of_memory").sum()
    if out_of_memory:
        warnings.warn(
            f"{out_of_memory} {source} traces ran out of memory in IG and were not attributed: no run learns from "
            "them (attribution.retry_skipped: true tries them again)",
            stacklevel=2,
        )
    wanted = {t["trace_id"] for t in traces}
    scored = scored_traces(profile, [r for r in stored if r["trace_id"] in wanted])
    # Table 7 re-segments the traces: the signals of stages 04-05 belong to the profile's own segments.
    signals = services.segment_signals(owner, source) if keywords is None else {}
    problems = services.world_problems(owner)
    records = []
    for trace in traces:
        trace_id = trace["trace_id"]
        if trace_id not in scored:
            continue
        attributed = scored[trace_id]
        if list(attributed.segments) != list(trace["segments"]):
            raise ValueError(
                f"trace {trace_id}: its attribution record holds other segments than the segment table; rerun "
                f"the attribution of its store ({store_path.name})"
            )
        kinds = list(trace.get("kinds") or [None] * attributed.n_segments)
        if keywords is not None:
            attributed = attributed.regrouped(segment(attributed.reasoning, _keyword_list(owner, keywords)))
            kinds = [None] * attributed.n_segments
        records.append(
            TraceRecord(
                trace_id=trace_id,
                scored=attributed,
                kinds=kinds,
                decision_segment=_decision(
                    problems.get(trace.get("question_id")), list(attributed.segments), attributed.gold_answer
                ),
                **signals.get(trace_id, {}),
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
    scored = scored_traces(profile, records)
    rows = []
    for r in records:
        trace = scored.get(r["trace_id"])
        rows.append(
            {
                "trace_id": r["trace_id"],
                "n_tokens": r["n_tokens"],
                "skipped": r.get("skipped"),
                "relative_delta": trace.relative_delta if trace else None,
                "delta": trace.delta if trace else None,
                "flagged": trace is not None and trace.relative_delta > threshold,
            }
        )
    table = pd.DataFrame(rows)
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
    """Training examples of one variant, each from its scored trace by
    :func:`segattr_utils.scored_trace.training_example` with the student's prompt: the whole trace with a
    loss mask (``full``/``selective``, Eq. 8/9; a token-level selection masks tokens, Table 2) or the
    trace with unselected segments deleted (``pruned``)."""
    if mode not in MASKS:
        raise ValueError(f"unknown supervision mode {mode!r}")
    examples = []
    for record, selection in zip(records, selections):
        example = training_example(
            tokenizer,
            record.scored,
            mode,
            segments=sorted(selection.segments),
            token_masks=selection.token_mask(record) if mode == "selective" and selection.tokens else None,
            prompt=services.prompt(tokenizer, record.question),
        )
        examples.append(TrainingExample(example["input_ids"], example["labels"]))
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
    if cfg["schedule"] == "one_stage":
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
    # Loaded on the CPU: the trainer places it (on this process's GPU under accelerate/DeepSpeed). In the
    # dtype the optimizer updates (training.sft.precision: float32 master weights unless bf16_weights).
    weight_dtype = stages[0].weight_dtype
    model, tokenizer = services.load_model(profile, "student", device="cpu", dtype=weight_dtype)
    full_examples = build_examples(tokenizer, records, _whole_traces(records), "full")
    examples = build_examples(tokenizer, records, selections, variant.mode)
    stats = supervision_stats(records, selections, examples, variant.mode, stages[-1].max_length)
    started = time.time()
    stage_summaries = []
    runtime, steps_now = 0.0, 0  # the trainer's seconds and steps of the stages trained by this call
    for index, stage_settings in enumerate(stages):
        # Two-stage schedule: stage 1 is full-CoT SFT for every variant (App. C.3).
        stage_examples = full_examples if len(stages) == 2 and index == 0 else examples
        out = run_dir(profile, spec) / f"stage{index + 1}"
        if is_trained(out):
            model, tokenizer = services.load_model(profile, "student", path=out / "final", dtype=weight_dtype)
            stage_summaries.append(read_json(out / "stage_summary.json"))
            continue
        model.train()
        deepspeed = profile.get_path("training.deepspeed_config")
        deepspeed = (
            str(find_project_root() / deepspeed)
            if deepspeed and profile.get_path("training.launcher") == "accelerate"
            else None
        )
        summary = train_sft(model, tokenizer, stage_examples, stage_settings, out, seed=spec.seed, deepspeed=deepspeed)
        runtime += summary.get("train_runtime", float("nan"))
        steps_now += summary.get("steps_this_session", summary["steps"])
        # The stage's summary is data (steps, losses, settings); its seconds go to the run log.
        write_json(out / "stage_summary.json", log_timings(profile, STAGE, f"{spec.name}: stage{index + 1}", summary))
        stage_summaries.append(summary)
    if not _is_main_process():
        return {}
    final_dir = model_dir(profile, spec)
    tmp_dir = final_dir.with_name(final_dir.name + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    if stages[-1].save_dtype:  # e.g. bfloat16: half the disk of float32 master weights
        import torch

        model.to(getattr(torch, stages[-1].save_dtype))
    model.save_pretrained(tmp_dir)
    tokenizer.save_pretrained(tmp_dir)
    shutil.rmtree(final_dir, ignore_errors=True)
    tmp_dir.rename(final_dir)
    steps = sum(s["steps"] for s in stage_summaries)
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
            "trainer_runtime": runtime if steps_now else float("nan"),
            "seconds_per_step": runtime / steps_now if steps_now else float("nan"),
        },
    )
    write_json(summary_path, summary)
    return summary


def _is_main_process() -> bool:
    """Under ``accelerate launch`` only the main process writes the final model and summary. accelerate's
    state says which process that is: the state the Trainer set up (with DeepSpeed, the launch's process
    group), or, when every stage was already trained and no Trainer ran, the one this process joins now
    (on the CPU, gloo); outside a launch, one process, the main one."""
    import torch

    return distributed.process_state(cpu=not torch.cuda.is_available()).is_main_process


LAUNCHERS = ("inprocess", "processes", "per_gpu", "accelerate")


def train_all(profile: Profile, only: list[str] | None = None) -> pd.DataFrame:
    """Train every planned run (resumable) where ``training.launcher`` says and write ``runs.parquet``;
    returns the run table. A launcher that cannot start (an unknown one, ``per_gpu`` without a GPU, a
    missing accelerate or DeepSpeed config file) is refused before any work."""
    runs = plan_runs(profile)
    if only:
        runs = [r for r in runs if r.name in only or r.setting in only]
    launcher = profile.get_path("training.launcher")
    if launcher not in LAUNCHERS:
        raise ValueError(f"training.launcher must be one of {', '.join(map(repr, LAUNCHERS))}, got {launcher!r}")
    if launcher == "per_gpu":
        _gpus_for_runs(profile)
    if launcher == "accelerate":
        _accelerate_config(profile)
    if any(r.source == "reference" for r in runs):
        attribute_reference_traces(profile)
    trainers = {
        "inprocess": _train_in_process,
        "processes": _train_in_processes,
        "per_gpu": _train_per_gpu,
        "accelerate": _launch_with_accelerate,
    }
    table = run_table(trainers[launcher](profile, runs))
    write_table(STAGE.path(profile, "runs"), table)
    return table


#: The columns of ``runs.parquet`` in order (:func:`train_run`'s summary); the shares of the world's segment
#: kinds (``chosen_share_<kind>``) follow, by name, then any other summary key, by name.
RUN_COLUMNS = (
    "run",
    "setting",
    "variant",
    "label",
    "mode",
    "source",
    "seed",
    "tables",
    "overrides",
    "keywords",
    "traces",
    "segment_share",
    "token_share",
    "trained_tokens",
    "sequence_tokens",
    "truncated_traces",
    "steps",
    "final_loss",
    "accelerate_launch",
    "world_size",
)


def run_table(summaries: list[dict]) -> pd.DataFrame:
    """The run summaries as ``runs.parquet``'s table, its columns in the order of :data:`RUN_COLUMNS`
    whatever the order of each summary's keys (a summary read back from ``summary.json`` has them sorted,
    one just trained has them as built): equal runs give equal bytes, fresh or resumed."""
    table = pd.DataFrame(summaries)
    declared = [c for c in RUN_COLUMNS if c in table.columns]
    kinds = sorted(c for c in table.columns if c.startswith("chosen_share_"))
    rest = sorted(c for c in table.columns if c not in declared and c not in kinds)
    table = table[declared + kinds + rest]
    table["tables"] = table["tables"].map(lambda t: ",".join(t))
    table["overrides"] = table["overrides"].map(lambda o: json.dumps(o, sort_keys=True))
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


def train_named_runs(profile: Profile, names: list[str]) -> list[dict]:
    """The planned runs ``names`` trained one after another in this process: what each process the
    launchers start runs (the ``sft`` job of :mod:`segattr_utils.workers`). An unknown name is refused
    before any training."""
    specs = {r.name: r for r in plan_runs(profile)}
    unknown = [name for name in names if name not in specs]
    if unknown:
        raise ValueError(f"no planned run {', '.join(map(repr, unknown))}; planned: {', '.join(specs)}")
    return _train_in_process(profile, [specs[name] for name in names])


# ---------------------------------------------------------------------------------------------
# Launchers: subprocesses of the ``sft`` worker job, started by segattr_utils.distributed.run_commands
#
# Each run is an independent fine-tuning job. Runs are therefore never spread over the ranks of one
# ``accelerate launch`` (as IG's traces are): the Trainer in a launched process joins the launch's
# process group and makes one DDP job of all ranks, which would train one run with averaged gradients,
# not one run per rank. The processes and per_gpu launchers start plain processes without a process group;
# the accelerate launcher gives every run a launch of its own, over the config's processes.


def _finished(profile: Profile, spec: RunSpec) -> bool:
    return (run_dir(profile, spec) / "summary.json").exists()


def _summaries(profile: Profile, runs: list[RunSpec]) -> list[dict]:
    return [read_json(run_dir(profile, spec) / "summary.json") for spec in runs]


def _launch_folder(profile: Profile) -> tuple[Path, Path]:
    """``runs/.launch/`` (the processes' logs) and the profile file the processes read there: the profile
    as it is in memory (a profile changed by a notebook's parameters reaches the processes as it is)."""
    folder = STAGE.path(profile, "run_folders") / ".launch"
    folder.mkdir(parents=True, exist_ok=True)
    return folder, save_profile(profile, folder / "profile.yaml")


def _run_command(specs: list[RunSpec], profile_file: Path, accelerate_config: Path | None = None) -> list[str]:
    """``python -m segattr_utils.workers sft --profile <file> --runs <name> ...`` (:func:`train_named_runs`)
    with this interpreter; with ``accelerate_config``, the same under ``accelerate launch --config_file``."""
    arguments = ["--profile", str(profile_file), "--runs", *(s.name for s in specs)]
    if accelerate_config is None:
        return distributed.worker_command("sft", arguments)
    return distributed.launch_command("sft", arguments, config_file=accelerate_config)


def _run_launch(
    profile: Profile,
    commands: list[distributed.Command],
    todo: list[RunSpec],
    desc: str,
    folder: Path,
    threads: int | None = None,
    poll_seconds: float = 1.0,
) -> None:
    """Start ``commands`` with a progress bar of the finished runs of ``todo``; the launch folder is removed
    once every process succeeded (a failure keeps it, with the logs, and the runs finished are kept)."""
    distributed.run_commands(
        commands,
        total=len(todo),
        count_done=lambda: sum(_finished(profile, spec) for spec in todo),
        desc=desc,
        unit="run",
        threads=threads,
        poll_seconds=poll_seconds,
    )
    shutil.rmtree(folder)


def _train_in_processes(profile: Profile, runs: list[RunSpec], poll_seconds: float = 1.0) -> list[dict]:
    """The runs dealt in turn over ``training.processes`` subprocesses on this machine, each with
    ``training.threads_per_process`` torch threads, training its runs one after another (on 2 CPU cores,
    two single-threaded processes train ~1.3x the steps per second of one two-threaded process: the tiny
    model's matrix products use two threads poorly). Every run seeds itself, so which process trains it
    changes only float rounding. A finished run is not dealt again. Each process's output goes to
    ``runs/.launch/process-<i>.log``, whose end a failure shows."""
    processes, threads = distributed.resolve_processes(profile["training"], profile["kind"], "training")
    todo = [spec for spec in runs if not _finished(profile, spec)]
    if todo:
        folder, profile_file = _launch_folder(profile)
        shares = [distributed.deal(todo, rank, processes) for rank in range(min(processes, len(todo)))]
        commands = [
            distributed.Command(
                f"SFT process {rank} of {len(shares)}",
                _run_command(share, profile_file),
                folder / f"process-{rank}.log",
            )
            for rank, share in enumerate(shares)
        ]
        desc = f"SFT runs ({len(shares)} processes)"
        _run_launch(profile, commands, todo, desc, folder, threads=threads, poll_seconds=poll_seconds)
    return _summaries(profile, runs)


def visible_gpus(profile: Profile) -> list[str]:
    """The GPUs runs are spread over: ``training.gpus`` of the visible ones (null: all), by the ids that
    ``CUDA_VISIBLE_DEVICES`` gives them in this process."""
    import torch

    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in listed.split(",")][:count] if listed else [str(i) for i in range(count)]
    wanted = profile.get_path("training.gpus")
    return ids[: int(wanted)] if wanted else ids


def assign_gpus(runs: list[RunSpec], gpus: list[str]) -> dict[str, list[RunSpec]]:
    """Round-robin: run i trains on GPU i mod len(gpus); each GPU trains its runs one after another."""
    return {gpu: runs[index :: len(gpus)] for index, gpu in enumerate(gpus) if runs[index :: len(gpus)]}


def _gpus_for_runs(profile: Profile) -> list[str]:
    gpus = visible_gpus(profile)
    if not gpus:
        raise RuntimeError("training.launcher: per_gpu needs a CUDA GPU; use training.launcher: inprocess on a CPU")
    return gpus


def _train_per_gpu(profile: Profile, runs: list[RunSpec], poll_seconds: float = 1.0) -> list[dict]:
    """The paper profile's default (the authors: one GPU, batch 2): every run is a subprocess that sees one
    GPU (``CUDA_VISIBLE_DEVICES``), with its output in ``runs/.launch/<run>.log``; each GPU trains its
    runs (:func:`assign_gpus`) one after another, the GPUs at the same time. A finished run is not
    relaunched; a failed run stops its GPU's later runs, the other GPUs finish theirs."""
    gpus = _gpus_for_runs(profile)
    todo = [spec for spec in runs if not _finished(profile, spec)]
    if todo:
        folder, profile_file = _launch_folder(profile)
        commands = [
            distributed.Command(
                f"SFT run {spec.name} on GPU {gpu}",
                _run_command([spec], profile_file),
                folder / f"{spec.name}.log",
                env={"CUDA_VISIBLE_DEVICES": gpu},
                queue=f"GPU {gpu}",
            )
            for gpu, specs in assign_gpus(runs, gpus).items()
            for spec in specs
            if not _finished(profile, spec)
        ]
        desc = f"SFT runs ({len(gpus)} GPUs)"
        _run_launch(profile, commands, todo, desc, folder, poll_seconds=poll_seconds)
    return _summaries(profile, runs)


def _accelerate_config(profile: Profile) -> Path:
    """``training.accelerate_config`` (relative to the project root), checked with the DeepSpeed file it
    names (:func:`segattr_utils.distributed.resolved_accelerate_config`)."""
    name = profile.get_path("training.accelerate_config")
    if not name:
        raise ValueError("training.launcher: accelerate needs training.accelerate_config (an accelerate config file)")
    config = find_project_root() / name
    distributed.resolved_accelerate_config(config, find_project_root())
    return config


def _launch_with_accelerate(profile: Profile, runs: list[RunSpec], poll_seconds: float = 1.0) -> list[dict]:
    """One ``accelerate launch`` per run, one after another, with the profile's accelerate config (DeepSpeed
    with ``training.deepspeed_config``); the launched processes train this run only, their output in
    ``runs/.launch/<run>.log``. The launch reads a copy of the config whose DeepSpeed file is an absolute
    path (the processes run in the notebook's working directory, ``notebooks/`` under papermill)."""
    config = _accelerate_config(profile)
    todo = [spec for spec in runs if not _finished(profile, spec)]
    if todo:
        folder, profile_file = _launch_folder(profile)
        launch_config = distributed.accelerate_config_for_launch(config, folder, find_project_root())
        commands = [
            distributed.Command(
                f"the accelerate launch of SFT run {spec.name}",
                _run_command([spec], profile_file, launch_config),
                folder / f"{spec.name}.log",
                queue="accelerate",
            )
            for spec in todo
        ]
        _run_launch(profile, commands, todo, "SFT runs (accelerate launch)", folder, poll_seconds=poll_seconds)
    return _summaries(profile, runs)


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
    # Wall-clock costs (each run's trainer seconds and seconds per step) are in the stage's run log,
    # run_log.csv of 08_selective_sft/, not in these tables.
    return finish(
        profile,
        STAGE,
        tables=tables,
        values=values,
        checks={"every planned run finished": set(runs["run"]) == {r.name for r in plan}},
    )
