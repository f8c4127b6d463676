"""The stages behind notebooks 00-03, wired from the profile to artifacts under ``results/<profile>/``.

Each stage reads only earlier stages' artifacts and writes its own folder:

- ``00_world``: questions (+ teacher traces and the trained tiny model in the world profiles), or an
  availability report of the configured hub models and data (paper profile);
- ``01_generation``: K sampled + one greedy output per training question, graded; the shortest correct
  and shortest incorrect trace per question (Sec. 3 setup);
- ``02_segmentation``: segments of every kept trace and per-trace statistics;
- ``03_ig_attribution``: token IG per kept trace, segment strength/consistency/normalised strength,
  the important segments at the profile's tau/beta, and completeness deltas.

Every stage resumes: finished records are skipped and finished files are not rewritten unless their
inputs changed.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import world as world_lib
from .artifacts import RecordStore, read_json, read_table, write_json, write_table
from .method.attribution import token_attributions
from .config import Profile, stage_dir
from .llm.generation import SamplingSettings, make_generator, run_generation
from .llm.grading import grade, split_output
from .method.importance import always_keep_indices, segment_scores, select_important, top_strength_segments
from .llm.models import load_causal_lm, resolve_model_path
from .data.questions import chat_prompt, load_hub_questions, world_suites
from .method.segmentation import DEFAULT_KEYWORDS, RETRO_SEARCH_KEYWORDS, segment
from .method.token_spans import build_attribution_sequence
from .workers import map_in_workers

STAGES = ("00_world", "01_generation", "02_segmentation", "03_ig_attribution")


def keywords_for(profile: Profile) -> tuple[str, ...]:
    name = profile.get_path("segmentation.keywords")
    lists = {"default": DEFAULT_KEYWORDS, "retro_search": RETRO_SEARCH_KEYWORDS}
    if isinstance(name, list):
        return tuple(name)
    if name not in lists:
        raise ValueError(f"segmentation.keywords must be 'default', 'retro_search' or a list, got {name!r}")
    return lists[name]


# ---------------------------------------------------------------------------------------------
# Stage 00: the world (tiny/smoke) or the availability check (paper)

def generator_path(profile: Profile) -> str:
    """Where the generator model lives: the trained tiny model's folder, or the hub id/local path."""
    spec = profile.get_path("models.generator")
    if profile["kind"] == "world":
        return spec.get("local_path") or str(stage_dir(profile, "00_world") / "models" / "generator")
    return resolve_model_path(spec["id"], spec.get("local_path"))


def build_world(profile: Profile) -> dict:
    """Stage 00 for world profiles: questions, teacher traces, tokenizer, and the trained tiny model."""
    from .world.tiny_model import build_tiny_model, build_world_tokenizer, teacher_examples, teacher_traces
    from .llm.training import TrainSettings, is_trained, train_sft

    out = stage_dir(profile, "00_world")
    world, seed = profile["world"], int(profile["seed"])
    suites = world_suites(world, seed)
    questions = pd.DataFrame([p.to_record() for suite in suites.values() for p in suite])
    write_table(out / "questions.parquet", questions)

    # The pretraining traces come from a weak teacher (world.pretrain_misconception); the reference
    # traces of the training questions (LIMO's role) from the correct one.
    misconception = world_lib.Misconception.from_dict(world.get("pretrain_misconception"))
    max_value = world_lib.Arithmetic.from_dict(world.get("arithmetic")).max_value
    traces = {"pretrain": teacher_traces(suites["pretrain"], world["rates"], seed, misconception, max_value),
              "train": teacher_traces(suites["train"], world["rates"], seed + 1, None, max_value)}
    trace_rows = []
    for name, problems in (("pretrain", suites["pretrain"]), ("train", suites["train"])):
        for problem, trace in zip(problems, traces[name]):
            trace_rows.append({"question_id": problem.id, "suite": name, "completion": trace.completion,
                               "segments": trace.segments, "kinds": trace.kinds,
                               "correct": trace.answer_text == problem.answer})
    write_table(out / "teacher_traces.parquet", pd.DataFrame(trace_rows))

    model_dir = Path(generator_path(profile))
    run_dir = out / "checkpoints" / "generator"
    started = time.time()
    if not is_trained(run_dir):
        tokenizer = build_world_tokenizer(suites["pretrain"], traces["pretrain"], world["tokenizer_vocab_size"])
        model = build_tiny_model(tokenizer, profile.get_path("models.architecture"), seed)
        examples = teacher_examples(tokenizer, suites["pretrain"], traces["pretrain"])
        settings = TrainSettings.from_dict(profile.get_path("models.base_training"))
        summary = train_sft(model, tokenizer, examples, settings, run_dir, seed)
        summary["n_parameters"] = sum(p.numel() for p in model.parameters())
        summary["train_seconds"] = round(time.time() - started, 1)
        summary["mean_tokens_per_example"] = float(np.mean([len(e.input_ids) for e in examples]))
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        write_json(out / "base_training.json", summary)
    return read_json(out / "base_training.json")


def check_hub_availability(profile: Profile) -> pd.DataFrame:
    """Stage 00 for hub profiles: which configured models and datasets can be loaded here."""
    from transformers import AutoConfig

    rows = []
    for role, spec in profile["models"].items():
        if not isinstance(spec, dict) or "id" not in spec:
            continue
        try:
            path = resolve_model_path(spec["id"], spec.get("local_path"))
            AutoConfig.from_pretrained(path, local_files_only=True)
            rows.append({"what": f"model:{role}", "id": spec["id"], "available": True, "how_to_get": ""})
        except Exception as error:  # missing cache, missing folder, gated repo
            rows.append({"what": f"model:{role}", "id": spec["id"], "available": False,
                         "how_to_get": f"huggingface-cli download {spec['id']} --local-dir models/{spec['id'].split('/')[-1]} "
                                       f"and set models.{role}.local_path ({type(error).__name__})"})
    for name, spec in (profile.get("data") or {}).items():
        if not isinstance(spec, dict) or "hub_id" not in spec:
            continue
        try:
            load_hub_questions(spec, name, limit=1)
            rows.append({"what": f"data:{name}", "id": spec["hub_id"], "available": True, "how_to_get": ""})
        except Exception as error:  # ModelUnavailableError, or whatever the datasets library raises
            rows.append({"what": f"data:{name}", "id": spec["hub_id"], "available": False,
                         "how_to_get": str(error).splitlines()[-1] if str(error) else type(error).__name__})
    report = pd.DataFrame(rows)
    write_table(stage_dir(profile, "00_world") / "availability.csv", report)
    return report


def evaluate_base_model(profile: Profile, suites: tuple[str, ...] = ("test_id", "test_ood")) -> pd.DataFrame:
    """Greedy accuracy of the base generator on the test suites (resumable; ``00_world/base_eval``)."""
    from .llm.evaluation import generate_and_grade, summarise_outputs

    out = stage_dir(profile, "00_world")
    model, tokenizer = load_generator(profile)
    generator = make_generator("hf", model=model, tokenizer=tokenizer)
    store = RecordStore(out / "base_eval_outputs.jsonl")
    rows = []
    for suite in suites:
        questions = load_questions(profile, suite)
        prompts = {r.id: chat_prompt(tokenizer, user_message(r.question)) for r in questions.itertuples()}
        answers = dict(zip(questions["id"], questions["answer"]))
        graded = generate_and_grade(generator, prompts, answers, 1, sampling_settings(profile, greedy=True), store,
                                    profile.get_path("generation.batch_size"), int(profile["seed"]), f"greedy-{suite}")
        rows.append({"suite": suite, **summarise_outputs(graded)})
    table = pd.DataFrame(rows)
    write_table(out / "base_eval.csv", table)
    return table


def load_questions(profile: Profile, suite: str) -> pd.DataFrame:
    """Questions of one suite from stage 00 (world) or from the hub data (paper)."""
    if profile["kind"] == "world":
        questions = read_table(stage_dir(profile, "00_world") / "questions.parquet")
        return questions[questions["suite"] == suite].reset_index(drop=True)
    spec = profile.get_path(f"data.{suite}")
    return pd.DataFrame(load_hub_questions(spec, suite))


def world_problems(profile: Profile) -> dict[str, "world_lib.Problem"]:
    """Every question of a world profile as a :class:`~segattr_utils.world.Problem`, by id (empty on hub
    profiles, whose traces have no ground truth)."""
    if profile["kind"] != "world":
        return {}
    questions = read_table(stage_dir(profile, "00_world") / "questions.parquet")
    return {r["id"]: world_lib.Problem.from_record(r) for r in questions.to_dict("records")}


def load_generator(profile: Profile, device: str | None = None):
    """The generator (model, tokenizer): the trained tiny model (always on the CPU) or the hub model,
    on ``device`` (default: CUDA when available)."""
    spec = profile.get_path("models.generator")
    if profile["kind"] == "world":
        path = generator_path(profile)
        if not Path(path).is_dir():
            raise FileNotFoundError(f"the tiny generator model is missing at {path}: run notebook 00 first")
        return load_causal_lm(path, dtype=spec.get("dtype", "float32"), device="cpu")
    return load_causal_lm(spec["id"], spec.get("local_path"), dtype=spec.get("dtype", "bfloat16"), device=device)


def user_message(question: str) -> str:
    return question + world_lib.PROMPT_SUFFIX


# ---------------------------------------------------------------------------------------------
# Stage 01: generation

def sampling_settings(profile: Profile, greedy: bool = False) -> SamplingSettings:
    gen = profile["generation"]
    return SamplingSettings(temperature=0.0 if greedy else gen["temperature"], top_p=gen["top_p"],
                            max_new_tokens=gen["max_new_tokens"])


def generate_training_traces(profile: Profile) -> pd.DataFrame:
    """Stage 01: K samples (temperature from the profile) and one greedy output per training question,
    graded by the last ``\\boxed{}`` with math-verify. Returns every graded output."""
    out = stage_dir(profile, "01_generation")
    questions = load_questions(profile, "train")
    model, tokenizer = load_generator(profile)
    prompts = {row.id: chat_prompt(tokenizer, user_message(row.question)) for row in questions.itertuples()}
    gen = profile["generation"]
    generator = make_generator(gen["backend"], model=model, tokenizer=tokenizer, model_path=generator_path(profile))
    store = RecordStore(out / "samples.jsonl")
    seed = int(profile["seed"])
    run_generation(generator, prompts, 1, sampling_settings(profile, greedy=True), store, gen["batch_size"], seed, "greedy")
    run_generation(generator, prompts, gen["n_samples"], sampling_settings(profile), store, gen["batch_size"], seed, "sample")

    answers = dict(zip(questions["id"], questions["answer"]))
    rows = []
    for record in store.records():
        verdict = grade(record["text"], answers[record["question_id"]])
        rows.append({"question_id": record["question_id"], "tag": record["tag"], "sample": record["sample"],
                     "text": record["text"], "n_tokens": record["n_tokens"], "finished": record["finished"],
                     "pred": verdict["pred"], "correct": verdict["correct"]})
    samples = pd.DataFrame(rows).sort_values(["question_id", "tag", "sample"]).reset_index(drop=True)
    write_table(out / "samples.parquet", samples)
    kept = keep_shortest_traces(samples, questions)
    write_table(out / "kept_traces.parquet", kept)
    return samples


def keep_shortest_traces(samples: pd.DataFrame, questions: pd.DataFrame) -> pd.DataFrame:
    """The shortest correct and the shortest incorrect sampled trace per question (Sec. 3 setup).

    Only finished outputs with a ``</think>`` and a non-empty reasoning are eligible (an unfinished
    trace has no answer to attribute). Ties in length go to the lower sample index.
    """
    sampled = samples[(samples["tag"] == "sample") & samples["finished"]].copy()
    sampled["has_think"] = sampled["text"].str.contains("</think>", regex=False)
    sampled = sampled[sampled["has_think"]]
    # An output that closes </think> at once has no reasoning to segment or attribute.
    sampled = sampled[sampled["text"].map(lambda text: split_output(text)[1].strip() != "")]
    answers = dict(zip(questions["id"], questions["answer"]))
    texts = dict(zip(questions["id"], questions["question"]))
    kept = []
    for (qid, correct), group in sampled.groupby(["question_id", "correct"], sort=True):
        best = group.sort_values(["n_tokens", "sample"]).iloc[0]
        _, reasoning, answer_part = split_output(best["text"])
        kept.append({"trace_id": f"{qid}:{'correct' if correct else 'incorrect'}", "question_id": qid,
                     "question": texts[qid], "answer": answers[qid], "correct": bool(correct),
                     "sample": int(best["sample"]), "n_tokens": int(best["n_tokens"]), "text": best["text"],
                     "reasoning": reasoning, "answer_part": answer_part, "pred": best["pred"]})
    return pd.DataFrame(kept)


def generation_summary(samples: pd.DataFrame) -> pd.DataFrame:
    """Per-question correct counts and the headline rates of stage 01."""
    sampled = samples[samples["tag"] == "sample"]
    per_question = sampled.groupby("question_id")["correct"].agg(["sum", "count"])
    greedy = samples[samples["tag"] == "greedy"]
    return pd.DataFrame([{
        "questions": len(per_question),
        "samples_per_question": int(per_question["count"].max()),
        "greedy_accuracy": float(greedy["correct"].mean()),
        "sample_accuracy": float(sampled["correct"].mean()),
        "questions_with_correct_and_incorrect": float(((per_question["sum"] > 0) & (per_question["sum"] < per_question["count"])).mean()),
        "questions_with_a_correct_sample": float((per_question["sum"] > 0).mean()),
        "unfinished_share": float(1 - sampled["finished"].mean()),
        "mean_output_tokens": float(sampled["n_tokens"].mean()),
    }])


# ---------------------------------------------------------------------------------------------
# Stage 02: segmentation

def segment_kept_traces(profile: Profile) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stage 02: segments of every kept trace (with world ground-truth kinds) and per-trace statistics."""
    out = stage_dir(profile, "02_segmentation")
    kept = read_table(stage_dir(profile, "01_generation") / "kept_traces.parquet")
    keywords = keywords_for(profile)
    problems = world_problems(profile)
    segment_rows, trace_rows = [], []
    for trace in tqdm(kept.to_dict("records"), desc="segment", unit="trace"):
        segments = segment(trace["reasoning"], keywords)
        kinds = world_lib.classify_segments(problems[trace["question_id"]], segments) if problems else [None] * len(segments)
        for index, (text, kind) in enumerate(zip(segments, kinds)):
            segment_rows.append({"trace_id": trace["trace_id"], "question_id": trace["question_id"],
                                 "correct": trace["correct"], "segment": index, "n_segments": len(segments),
                                 "text": text, "n_chars": len(text), "kind": kind})
        trace_rows.append({"trace_id": trace["trace_id"], "question_id": trace["question_id"],
                           "correct": trace["correct"], "n_segments": len(segments), "n_tokens": trace["n_tokens"]})
    segments_table, traces_table = pd.DataFrame(segment_rows), pd.DataFrame(trace_rows)
    write_table(out / "segments.parquet", segments_table)
    write_table(out / "trace_stats.parquet", traces_table)
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
        p_value = float(wilcoxon(differences).pvalue) if np.any(differences != 0) and len(differences) > 1 else float("nan")
        rows.append({"metric": metric, "questions": len(pivot), "correct_mean": float(correct.mean()),
                     "incorrect_mean": float(incorrect.mean()), "share_incorrect_longer": float((differences > 0).mean()),
                     "wilcoxon_p": p_value})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Stage 03: IG attribution

def _baseline_token(profile: Profile, tokenizer) -> int:
    choice = profile.get_path("attribution.baseline")
    if choice == "pad":
        if tokenizer.pad_token_id is None:
            raise ValueError("attribution.baseline is 'pad' but the tokenizer has no pad token")
        return int(tokenizer.pad_token_id)
    if isinstance(choice, int):
        return choice
    return int(tokenizer.convert_tokens_to_ids(choice))


def attribution_record(model, tokenizer, baseline: int, settings: dict, trace: dict) -> dict:
    """Token IG (Eq. 2-3) of the correct answer for one trace, as the record stage 03 stores."""
    prompt = chat_prompt(tokenizer, user_message(trace["question"]))
    sequence = build_attribution_sequence(tokenizer, prompt, list(trace["segments"]), trace["answer"],
                                          suffix_template=settings["answer_suffix"])
    record = {"trace_id": trace["trace_id"], "n_tokens": len(sequence)}
    if len(sequence) > settings["max_length"]:
        record["skipped"] = f"sequence of {len(sequence)} tokens exceeds attribution.max_length"
        return record
    started = time.time()
    result = token_attributions(model, torch.tensor(sequence.input_ids), sequence.answer_span,
                                baseline_token_id=baseline, n_steps=settings["n_steps"],
                                method=settings["method"], internal_batch_size=settings["internal_batch_size"])
    values = result.values.tolist()
    record.update({
        "skipped": None, "seconds": round(time.time() - started, 3),
        "f_input": result.f_input, "f_baseline": result.f_baseline, "delta": result.delta,
        "relative_delta": result.relative_delta, "answer_span": list(sequence.answer_span),
        "segment_spans": [list(s) for s in sequence.segment_spans],
        "segment_values": [values[s:e] for s, e in sequence.segment_spans],
    })
    return record


def attribution_workers(settings: dict, kind: str) -> tuple[list[str], int]:
    """(device per worker process, torch threads per worker) from ``attribution.workers`` and
    ``attribution.threads_per_worker``. One worker means no subprocess. On GPUs the workers take the
    visible devices in turn; the tiny world's models stay on the CPU."""
    workers = settings.get("workers", 1)
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"attribution.workers must be a positive int, got {workers!r}")
    if kind != "world" and torch.cuda.is_available():
        devices = [f"cuda:{i % torch.cuda.device_count()}" for i in range(workers)]
    else:
        devices = ["cpu"] * workers
    threads = settings.get("threads_per_worker") or max(1, torch.get_num_threads() // workers)
    return devices, threads


# Filled once per worker process by _init_attribution_worker, so that each process loads the model once.
_WORKER_STATE: dict = {}


def _init_attribution_worker(profile: Profile, device: str) -> None:
    model, tokenizer = load_generator(profile, device=device)
    _WORKER_STATE.update(model=model, tokenizer=tokenizer, baseline=_baseline_token(profile, tokenizer),
                         settings=profile["attribution"])


def _attribute_in_worker(trace: dict) -> dict:
    return attribution_record(trace=trace, **_WORKER_STATE)


def attribute_traces(profile: Profile, traces: list[dict], store: RecordStore, desc: str) -> list[dict]:
    """Token IG of the correct answer for every trace (``trace_id``, ``question``, ``answer``,
    ``segments``) not yet in ``store``; one record per trace, appended as soon as it is done.

    With ``attribution.workers`` > 1 the traces are spread over that many processes
    (:func:`segattr_utils.workers.map_in_workers`); the records are the same up to float rounding.
    """
    settings = profile["attribution"]
    devices, threads = attribution_workers(settings, profile["kind"])
    todo = [t for t in traces if t["trace_id"] not in store]
    if not todo:
        return store.records()
    if len(devices) == 1:
        model, tokenizer = load_generator(profile)
        baseline = _baseline_token(profile, tokenizer)
        records = (attribution_record(model, tokenizer, baseline, settings, trace) for trace in todo)
    else:
        records = map_in_workers(_attribute_in_worker, todo, devices, threads,
                                 initializer=_init_attribution_worker, initargs=(profile,))
    for record in tqdm(records, total=len(todo), desc=desc, unit="trace"):
        store.append([record])
    return store.records()


def attribute_kept_traces(profile: Profile) -> pd.DataFrame:
    """Stage 03: token IG of the correct answer for every kept trace (resumable, one record per trace),
    then segment scores and the important set. Returns the per-segment table.

    The reference traces that notebook 08 also trains on are attributed there, with the same settings
    (:func:`segattr_utils.stages.stage08_selective_sft.attribute_reference_traces`).
    """
    out = stage_dir(profile, "03_ig_attribution")
    settings = profile["attribution"]
    kept = read_table(stage_dir(profile, "01_generation") / "kept_traces.parquet")
    if not settings.get("attribute_incorrect", True):
        kept = kept[kept["correct"]]
    segments = read_table(stage_dir(profile, "02_segmentation") / "segments.parquet")
    by_trace = {tid: group.sort_values("segment")["text"].tolist() for tid, group in segments.groupby("trace_id")}
    traces = [dict(t, segments=by_trace[t["trace_id"]]) for t in kept.to_dict("records")]
    store = RecordStore(out / "attributions.jsonl", key_fn=lambda r: r["trace_id"])
    records = attribute_traces(profile, traces, store, "integrated gradients")
    return score_segments(profile, kept, segments, records)


def reference_traces(profile: Profile) -> pd.DataFrame:
    """The reference CoT of every training question, segmented with the profile's keywords: the world's
    teacher traces (tiny/smoke) or the ``solution`` field of the training data (LIMO, paper profile).

    Columns: trace_id ("<qid>:reference"), question_id, question, answer, segments, kinds, answer_part.
    """
    from .world.tiny_model import answer_part as world_answer_part

    questions = load_questions(profile, "train")
    keywords = keywords_for(profile)
    rows = []
    if profile["kind"] == "world":
        teacher = read_table(stage_dir(profile, "00_world") / "teacher_traces.parquet")
        teacher = teacher[teacher["suite"] == "train"].set_index("question_id")
    problems = world_problems(profile)
    for question in questions.to_dict("records"):
        qid = question["id"]
        if profile["kind"] == "world":
            reasoning = "".join(teacher.loc[qid, "segments"])
        else:
            if "solution" not in question or not str(question["solution"]).strip():
                raise ValueError(f"training question {qid} has no reference solution (data.train.fields.solution)")
            reasoning = str(question["solution"]).strip()
        segments = segment(reasoning, keywords)
        kinds = world_lib.classify_segments(problems[qid], segments) if profile["kind"] == "world" else [None] * len(segments)
        rows.append({"trace_id": f"{qid}:reference", "question_id": qid, "question": question["question"],
                     "answer": question["answer"], "segments": segments, "kinds": kinds,
                     "answer_part": world_answer_part(question["answer"])})
    return pd.DataFrame(rows)


def score_segments(profile: Profile, kept: pd.DataFrame, segments: pd.DataFrame, records: list[dict]) -> pd.DataFrame:
    """Segment strength, consistency and normalised strength (Eq. 3-4) and the important set
    (Eq. 5-7 with the always-kept segments of App. C.4) for every attributed trace."""
    out = stage_dir(profile, "03_ig_attribution")
    selection = profile["selection"]
    correct = dict(zip(kept["trace_id"], kept["correct"]))
    kinds = {(r["trace_id"], r["segment"]): r["kind"] for r in segments.to_dict("records")}
    rows, completeness = [], []
    for record in records:
        if record.get("skipped") or record["trace_id"] not in correct:
            continue
        scores = segment_scores(record["segment_values"], aggregation=selection["aggregation"])
        n = len(scores)
        chosen = set(select_important(scores["norm_strength"], scores["consistency"], selection["tau"], selection["beta"]))
        kept_always = set(always_keep_indices(n, selection["always_keep"]))
        top = set(top_strength_segments(scores["norm_strength"], selection["tau"]))
        scores.insert(0, "segment", range(n))
        scores.insert(0, "trace_id", record["trace_id"])
        scores["correct"] = correct[record["trace_id"]]
        scores["n_segments"] = n
        scores["high_strength"] = scores["segment"].isin(top)
        scores["important"] = scores["segment"].isin(chosen)
        scores["always_kept"] = scores["segment"].isin(kept_always)
        scores["selected_for_sft"] = scores["important"] | scores["always_kept"]
        scores["kind"] = [kinds.get((record["trace_id"], i)) for i in range(n)]
        rows.append(scores)
        completeness.append({"trace_id": record["trace_id"], "correct": correct[record["trace_id"]],
                             "f_input": record["f_input"], "f_baseline": record["f_baseline"],
                             "delta": record["delta"], "relative_delta": record["relative_delta"],
                             "flagged": record["relative_delta"] > profile.get_path("attribution.flag_relative_delta"),
                             "seconds": record["seconds"], "n_tokens": record["n_tokens"]})
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    write_table(out / "segment_scores.parquet", table)
    write_table(out / "completeness.parquet", pd.DataFrame(completeness))
    return table


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
    spec = settings.get("sensitivity") or {}
    out = stage_dir(profile, "03_ig_attribution")
    records = {r["trace_id"]: r for r in RecordStore(out / "attributions.jsonl", key_fn=lambda r: r["trace_id"]).records()
               if not r.get("skipped")}
    kept = read_table(stage_dir(profile, "01_generation") / "kept_traces.parquet")
    candidates = sorted(t for t in kept.loc[kept["correct"], "trace_id"] if t in records)
    n_traces = min(int(spec.get("n_traces", 0)), len(candidates))
    if not n_traces or not spec.get("n_steps"):
        return pd.DataFrame()
    import random

    chosen = sorted(random.Random(f"sensitivity:{profile['seed']}").sample(candidates, n_traces))
    segments = read_table(stage_dir(profile, "02_segmentation") / "segments.parquet")
    by_trace = {tid: g.sort_values("segment")["text"].tolist() for tid, g in segments.groupby("trace_id")}
    questions = kept.set_index("trace_id")
    model, tokenizer = load_generator(profile)
    baseline = _baseline_token(profile, tokenizer)
    store = RecordStore(out / "step_sensitivity.jsonl", key_fn=lambda r: [r["trace_id"], r["n_steps"]])
    jobs = [(tid, int(j)) for tid in chosen for j in spec["n_steps"] if [tid, int(j)] not in store]
    for trace_id, n_steps in tqdm(jobs, desc="IG with other J", unit="trace"):
        trace = {"trace_id": trace_id, "question": questions.loc[trace_id, "question"],
                 "answer": questions.loc[trace_id, "answer"], "segments": by_trace[trace_id]}
        record = attribution_record(model, tokenizer, baseline, dict(settings, n_steps=n_steps), trace)
        store.append([{"trace_id": trace_id, "n_steps": n_steps, "relative_delta": record["relative_delta"],
                       "segment_values": record["segment_values"]}])
    rows = []
    for record in store.records():
        if record["trace_id"] not in chosen or record["n_steps"] not in [int(j) for j in spec["n_steps"]]:
            continue
        reference = records[record["trace_id"]]
        ours = segment_scores(reference["segment_values"], aggregation=selection["aggregation"])
        other = segment_scores(record["segment_values"], aggregation=selection["aggregation"])
        important = [set(select_important(s["norm_strength"], s["consistency"], selection["tau"], selection["beta"]))
                     for s in (ours, other)]
        union = important[0] | important[1]
        rho = spearmanr(ours["norm_strength"], other["norm_strength"])[0] if len(ours) > 2 else float("nan")
        rows.append({"trace_id": record["trace_id"], "n_steps": record["n_steps"], "profile_n_steps": settings["n_steps"],
                     "relative_delta": record["relative_delta"], "profile_relative_delta": reference["relative_delta"],
                     "n_segments": len(ours), "spearman_norm_strength": rho,
                     "max_norm_strength_change": float((ours["norm_strength"] - other["norm_strength"]).abs().max()),
                     "max_consistency_change": float((ours["consistency"] - other["consistency"]).abs().max()),
                     "important_jaccard": len(important[0] & important[1]) / len(union) if union else 1.0})
    table = pd.DataFrame(rows)
    write_table(out / "step_sensitivity.parquet", table)
    return table


def completeness_summary(completeness: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Median, 90th percentile and maximum relative completeness error, and the flagged share."""
    rows = []
    for name, group in [("all", completeness)] + [("correct" if c else "incorrect", g) for c, g in completeness.groupby("correct")]:
        rel = group["relative_delta"]
        rows.append({"traces": name, "n": len(group), "median_rel_delta": rel.median(), "p90_rel_delta": rel.quantile(0.9),
                     "max_rel_delta": rel.max(), f"flagged_share(>{threshold:g})": (rel > threshold).mean(),
                     "median_abs_delta": group["delta"].abs().median(), "mean_seconds": group["seconds"].mean()})
    return pd.DataFrame(rows)


def selection_summary(scores: pd.DataFrame) -> pd.DataFrame:
    """Share of segments and of tokens that are important (Eq. 7) per trace, averaged over traces."""
    rows = []
    for correct, group in scores.groupby("correct"):
        per_trace = group.groupby("trace_id").apply(
            lambda g: pd.Series({"segments": len(g), "important_segment_share": g["important"].mean(),
                                 "important_token_share": g.loc[g["important"], "n_tokens"].sum() / max(g["n_tokens"].sum(), 1),
                                 "high_strength_share": g["high_strength"].mean(),
                                 "selected_for_sft_token_share": g.loc[g["selected_for_sft"], "n_tokens"].sum() / max(g["n_tokens"].sum(), 1)}),
            include_groups=False)
        rows.append({"traces": "correct" if correct else "incorrect", "n": len(per_trace), **per_trace.mean().to_dict()})
    return pd.DataFrame(rows)
