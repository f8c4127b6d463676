"""Shared services of the stages: the model of each role, questions, prompts, trace texts, keywords.

Every stage asks this module, so each of these decisions is made in one place:

- :func:`load_model` / :func:`model_path` / :func:`load_role_tokenizer`: the model of a role
  (``generator``: writes and attributes traces; ``student``: the model every SFT variant fine-tunes;
  ``judge``: the truncation judge of App. B) or of a finished SFT run, on the device the profile's kind
  implies (the tiny world's models always run on the CPU).
- :func:`load_generator`: a role's model as a sampler of the profile's generation backend (with vLLM
  only the tokenizer is loaded in this process; the engine takes its settings from ``generation.vllm``).
- :func:`load_questions`, :func:`world_problems`: question suites and the world's ground truth
  (:func:`imported_traces`: the training questions and their traces come from a file instead,
  ``data.traces``; the world's ground truth then does not apply, :func:`world_ground_truth`).
- :func:`user_message`, :func:`prompt` (:func:`segattr_utils.data.questions.r1_prompt`): the R1 prompt format (question + "Please reason step by step,
  and put your final answer within \\boxed{}.", wrapped in the chat template).
- :func:`keywords_for`: the segmentation keyword list (App. C.2) a profile or run asks for.
- :func:`kept_traces`, :func:`segment_texts`, :func:`reference_traces`: the traces the stages read.
- :func:`baseline_token`, :func:`sampling_settings`: the IG baseline and the decoding settings.
- :func:`training_sources`, :func:`table_sources`, :func:`planned_signals`: which supervision source the
  runs of each table train on, and so which per-segment signals stages 04 and 05 measure on which traces;
  :func:`segment_signals`: those signals per trace (read by the training variants and stage 06).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from . import dag
from . import world as world_lib
from .artifacts import read_table
from .config import Profile
from .data.questions import load_hub_questions, r1_prompt, r1_user_message
from .llm.generation import SamplingSettings, VLLMGenerator, check_batch_invariant, make_generator, vllm_available
from .llm.models import load_causal_lm, load_tokenizer, resolve_model_path
from .llm.variants import signals_needed
from .llm.vllm_requests import check_chunk_requests
from .method.segmentation import DEFAULT_KEYWORDS, RETRO_SEARCH_KEYWORDS, segment

ROLES = ("generator", "student", "judge")
KEYWORD_LISTS = {"default": DEFAULT_KEYWORDS, "retro_search": RETRO_SEARCH_KEYWORDS}
#: Supervision sources (Sec. 4): the model's own shortest correct traces, the reference traces.
SOURCES = ("self", "reference")
#: The table whose runs (full-CoT vs segment selective SFT) train on every source.
MAIN_TABLE = "1"

#: The R1 prompt format under the names the stages call; built in one place, :mod:`.data.questions`.
user_message = r1_user_message
prompt = r1_prompt


# ---------------------------------------------------------------------------------------------
# Models by role


def model_path(profile: Profile, role: str) -> str:
    """Where the model of ``role`` lives: a trained tiny model's folder (world profiles) or the hub id
    / local copy of ``models.<role>`` (hub profiles)."""
    if role not in ROLES:
        raise ValueError(f"unknown model role {role!r}; use one of {', '.join(ROLES)}")
    if profile["kind"] == "world":
        if role == "judge":
            return str(dag.TRUNCATION_JUDGE.path(profile, "judge_model"))
        # The world's student is its generator: every SFT run starts from the base model of stage 00.
        spec = profile.get_path("models.generator")
        return spec.get("local_path") or str(dag.WORLD.path(profile, "generator_model"))
    spec = profile.get_path(f"models.{role}")
    return resolve_model_path(spec["id"], spec.get("local_path"))


def _dtype(profile: Profile, role: str) -> str:
    if profile["kind"] == "world":
        return (profile.get_path("models.generator.dtype") or "float32") if role != "judge" else "float32"
    return profile.get_path(f"models.{role}.dtype") or "bfloat16"  # null: the schema's hub default


def load_model(
    profile: Profile, role: str, device: str | None = None, path: str | Path | None = None, dtype: str | None = None
):
    """``(model, tokenizer)`` of ``role``, or of the fine-tuned model saved at ``path`` (which then has
    the role's dtype). World models always load on the CPU; hub models on ``device`` (default: CUDA
    when available), or over several GPUs with the role's ``device_map`` when no device is given.
    ``dtype`` overrides the role's dtype (SFT loads the student in its training precision's)."""
    dtype = dtype or _dtype(profile, role)
    if profile["kind"] == "world":
        folder = Path(path) if path is not None else Path(model_path(profile, role))
        if not folder.is_dir():
            raise FileNotFoundError(
                f"the tiny {role} model is missing at {folder}: run the notebook that trains it first"
            )
        return load_causal_lm(str(folder), dtype=dtype, device="cpu")
    if path is not None:
        return load_causal_lm(str(path), dtype=dtype, device=device)
    spec = profile.get_path(f"models.{role}")
    # models.<role>.device_map spreads one copy of the model over the visible GPUs (one process).
    device_map = spec.get("device_map") if device is None else None
    return load_causal_lm(spec["id"], spec.get("local_path"), dtype=dtype, device=device, device_map=device_map)


def load_generator(
    profile: Profile, role: str, backend: str, path: str | Path | None = None, device: str | None = None
) -> tuple:
    """``(generator, tokenizer)`` sampling from ``role``'s model (or the fine-tuned model at ``path``)
    with ``backend``: ``hf``, ``vllm`` or ``auto`` (vLLM when installed, else HF). ``device`` places the
    Hugging Face model (:func:`load_model`; one process's GPU when several processes evaluate).

    With vLLM only the tokenizer is loaded here: the engine loads the weights itself and claims
    ``generation.vllm.gpu_memory_utilization`` of every GPU it uses, so a Hugging Face copy of the model
    beside it would keep it from starting. The engine settings are the profile's ``generation.vllm``
    section (``tensor_parallel_size`` / ``data_parallel_size: auto``: one engine per GPU for the paper's
    models, each in its own worker process; ``batch_invariant``: ``VLLM_BATCH_INVARIANT=1`` for the engine
    processes); each engine call holds at most ``generation.vllm_chunk_requests`` requests (both checked
    before anything is loaded); the engine gets its prompts encoded by this tokenizer. Call
    ``generator.close()`` when done, before another model is loaded.
    """
    if backend == "auto":
        backend = "vllm" if vllm_available() else "hf"
    if backend == "vllm":
        target = str(path) if path is not None else model_path(profile, role)
        engine = dict(profile.get_path("generation.vllm"))
        chunk = check_chunk_requests(profile.get_path("generation.vllm_chunk_requests"))
        check_batch_invariant(engine.get("batch_invariant", False))  # an engine setting: unset is off
        tokenizer = load_tokenizer(target)
        generator = VLLMGenerator(
            target, dtype=_dtype(profile, role), tokenizer=tokenizer, chunk_requests=chunk, **engine
        )
        return generator, tokenizer
    model, tokenizer = load_model(profile, role, device=device, path=path)
    return make_generator(backend, model=model, tokenizer=tokenizer), tokenizer


def load_role_tokenizer(profile: Profile, role: str):
    """The tokenizer of ``role`` alone (no weights loaded)."""
    return load_tokenizer(model_path(profile, role))


def upstream_profile(profile: Profile) -> Profile:
    """The profile whose traces this one trains on: ``upstream`` (a profile name or YAML path; a relative
    path is relative to the profile file that names it) when set, else ``profile`` itself.

    A student profile (Table 1's other students, Table 8) fine-tunes another model on the main run's
    traces: stages 01-03 of the upstream run wrote them, segmented and attributed them with the upstream's
    generator and settings, and stage 08 reads them there (and attributes the reference traces into the
    upstream's stage 08 folder when that has not happened yet: one IG pass serves every student)."""
    name = profile.get("upstream")
    if not name:
        return profile
    from .config import load_profile

    upstream = load_profile(str(name))  # a relative YAML path was made absolute by load_profile
    if upstream.get("upstream"):
        raise ValueError(
            f"profile {profile.name!r}: its upstream {upstream.name!r} names an upstream itself; point "
            "upstream at the run that generated and attributed the traces"
        )
    if upstream.name == profile.name:
        raise ValueError(f"profile {profile.name!r} names itself (or a profile of the same name) as its upstream")
    if upstream["kind"] != profile["kind"]:
        raise ValueError(
            f"profile {profile.name!r} (kind {profile['kind']}) cannot train on the traces of {upstream.name!r} "
            f"(kind {upstream['kind']})"
        )
    return upstream


# ---------------------------------------------------------------------------------------------
# Questions and prompts


def imported_traces(profile: Profile) -> dict | None:
    """The ``data.traces`` section when the profile reads traces one already has (stage 01 then grades and
    keeps them instead of generating; :mod:`segattr_utils.data.traces`), else None."""
    return profile.get_path("data.traces") or None


def world_ground_truth(profile: Profile) -> bool:
    """Whether the world's ground truth (segment kinds, truncation labels) describes the kept traces: a
    world profile whose traces its own model generated. Imported traces have none, as hub traces."""
    return profile["kind"] == "world" and imported_traces(profile) is None


def load_questions(profile: Profile, suite: str) -> pd.DataFrame:
    """Questions of one suite from stage 00 (world) or from the hub data (paper); with imported traces
    (``data.traces``) the training questions are those of the trace file, as stage 01 read them."""
    if suite == "train" and imported_traces(profile) is not None:
        path = dag.GENERATION.path(profile, "imported_questions")
        if not path.is_file():
            raise FileNotFoundError(f"the imported training questions are missing at {path}: run notebook 01 first")
        return read_table(path)
    if profile["kind"] == "world":
        questions = read_table(dag.WORLD.path(profile, "questions"))
        return questions[questions["suite"] == suite].reset_index(drop=True)
    spec = profile.get_path(f"data.{suite}")
    return pd.DataFrame(load_hub_questions(spec, suite))


def world_problems(profile: Profile) -> dict[str, world_lib.Problem]:
    """Every question of a world profile as a :class:`~segattr_utils.world.Problem`, by id (empty on hub
    profiles and for imported traces, which have no ground truth: :func:`world_ground_truth`)."""
    if not world_ground_truth(profile):
        return {}
    questions = read_table(dag.WORLD.path(profile, "questions"))
    return {r["id"]: world_lib.Problem.from_record(r) for r in questions.to_dict("records")}


def keywords_for(profile: Profile, name: str | None = None) -> tuple[str, ...]:
    """The segmentation keywords: ``name`` (``default``, ``retro_search``) or the profile's
    ``segmentation.keywords`` (one of those names or an explicit list)."""
    choice = profile.get_path("segmentation.keywords") if name is None else name
    if isinstance(choice, list):
        return tuple(choice)
    if choice not in KEYWORD_LISTS:
        raise ValueError(f"segmentation.keywords must be 'default', 'retro_search' or a list, got {choice!r}")
    return KEYWORD_LISTS[choice]


def sampling_settings(profile: Profile, greedy: bool = False) -> SamplingSettings:
    """Decoding settings of stage 01 (``generation``); ``greedy`` sets temperature 0."""
    gen = profile["generation"]
    return SamplingSettings(
        temperature=0.0 if greedy else gen["temperature"], top_p=gen["top_p"], max_new_tokens=gen["max_new_tokens"]
    )


def baseline_token(profile: Profile, tokenizer) -> int:
    """The IG baseline token (``attribution.baseline``): ``pad``, a token id, or a token string."""
    choice = profile.get_path("attribution.baseline")
    if choice == "pad":
        if tokenizer.pad_token_id is None:
            raise ValueError("attribution.baseline is 'pad' but the tokenizer has no pad token")
        return int(tokenizer.pad_token_id)
    if isinstance(choice, int):
        return choice
    return int(tokenizer.convert_tokens_to_ids(choice))


# ---------------------------------------------------------------------------------------------
# Trace texts


def kept_traces(profile: Profile) -> pd.DataFrame:
    """Stage 01's shortest correct and incorrect trace per question."""
    return read_table(dag.GENERATION.path(profile, "kept_traces"))


def segment_table(profile: Profile) -> pd.DataFrame:
    """Stage 02's table of segments (one row per segment of every kept trace)."""
    return read_table(dag.SEGMENTATION.path(profile, "segments"))


def segment_texts(segments: pd.DataFrame, trace_ids=None) -> dict[str, list[str]]:
    """The segment texts of every trace of a segment table, in order (optionally only ``trace_ids``)."""
    if trace_ids is not None:
        segments = segments[segments["trace_id"].isin(set(trace_ids))]
    return {tid: group.sort_values("segment")["text"].tolist() for tid, group in segments.groupby("trace_id")}


def reference_traces(profile: Profile) -> pd.DataFrame:
    """The reference CoT of every training question, segmented with the profile's keywords: the world's
    teacher traces (tiny/smoke) or the ``solution`` field of the training data (LIMO, paper profile; with
    imported traces, the field ``data.traces.fields.solution`` names).

    Columns: trace_id ("<qid>:reference"), question_id, question, answer, segments, kinds, answer_part.
    """
    from .world.tiny_model import answer_part as world_answer_part

    questions = load_questions(profile, "train")
    keywords = keywords_for(profile)
    rows = []
    world = world_ground_truth(profile)
    if world:
        teacher = read_table(dag.WORLD.path(profile, "teacher_traces"))
        teacher = teacher[teacher["suite"] == "train"].set_index("question_id")
    problems = world_problems(profile)
    field = "data.traces.fields.solution" if imported_traces(profile) is not None else "data.train.fields.solution"
    for question in questions.to_dict("records"):
        qid = question["id"]
        if world:
            reasoning = "".join(teacher.loc[qid, "segments"])
        else:
            solution = question.get("solution")
            if not isinstance(solution, str) or not solution.strip():
                raise ValueError(
                    f"training question {qid} has no reference solution ({field}); "
                    "without one, train on the self traces only (training.sources: [self])"
                )
            reasoning = solution.strip()
        segments = segment(reasoning, keywords)
        kinds = world_lib.classify_segments(problems[qid], segments) if world else [None] * len(segments)
        rows.append(
            {
                "trace_id": f"{qid}:reference",
                "question_id": qid,
                "question": question["question"],
                "answer": question["answer"],
                "segments": segments,
                "kinds": kinds,
                "answer_part": world_answer_part(question["answer"]),
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# The training plan's sources and the signals it needs on them


#: Per source: the tables of stages 04 (confidence Δ) and 05 (perplexity, entropy) holding its
#: per-segment signals.
SIGNAL_TABLES = {
    "self": ("segment_confidence", "segment_linguistics"),
    "reference": ("reference_segment_confidence", "reference_segment_linguistics"),
}
#: The per-segment columns of stage 05's table that :func:`segment_signals` returns.
LINGUISTIC_SIGNALS = ("log_ppl", "entropy", "removal_ppl_increase")


def segment_signals(profile: Profile, source: str = "self") -> dict[str, dict[str, np.ndarray]]:
    """Per trace, the per-segment signals notebooks 04 and 05 wrote for ``source``'s traces, in segment
    order: ``confidence_delta`` (stage 04's Δ) and ``log_ppl``, ``entropy``, ``removal_ppl_increase``
    (stage 05). A signal whose notebook has not run (or did not measure the trace) is absent from the
    trace's dict; the caller that needs it names the notebook (training variants, stage 06's
    faithfulness orderings)."""
    if source not in SIGNAL_TABLES:
        raise ValueError(f"unknown trace source {source!r}; use one of {', '.join(SIGNAL_TABLES)}")
    confidence_table, linguistics_table = SIGNAL_TABLES[source]
    confidence = _optional_table(dag.CONFIDENCE_DELTA.path(profile, confidence_table))
    linguistics = _optional_table(dag.LINGUISTICS.path(profile, linguistics_table))
    out: dict[str, dict[str, np.ndarray]] = {}
    if confidence is not None:
        for trace_id, group in confidence.groupby("trace_id"):
            out.setdefault(trace_id, {})["confidence_delta"] = group.sort_values("segment")["delta"].to_numpy()
    if linguistics is not None:
        for trace_id, group in linguistics.groupby("trace_id"):
            group = group.sort_values("segment")
            entry = out.setdefault(trace_id, {})
            for column in LINGUISTIC_SIGNALS:
                entry[column] = group[column].to_numpy()
    return out


def _optional_table(path: Path) -> pd.DataFrame | None:
    return read_table(path) if path.exists() else None


def training_sources(profile: Profile) -> list[str]:
    """``training.sources``: the sources Table 1's runs train on (default: the self-generated traces)."""
    sources = [str(s) for s in profile.get_path("training.sources")]
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise ValueError(f"training.sources holds unknown sources {sorted(unknown)}; use {SOURCES}")
    return sources


def table_sources(profile: Profile) -> dict[str, str]:
    """The source that the runs of each other table of ``training.tables`` train on (Sec. 4.3-4.5):
    ``training.ablation_source`` (default: the first source; the paper: LIMO's reference CoTs) for
    Tables 2-4 and Fig. 5, ``training.table7_source`` (default: the ablation source) for Table 7."""
    cfg = profile["training"]
    ablation_source = cfg["ablation_source"] or training_sources(profile)[0]  # null: the first source
    tables = [str(t) for t in cfg["tables"] if str(t) != MAIN_TABLE]
    return {t: (cfg["table7_source"] or ablation_source) if t == "7" else ablation_source for t in tables}


def planned_signals(profile: Profile) -> dict[str, frozenset[str]]:
    """The per-segment signals the run plan needs on each source: the ``needs`` of the variants
    registered for the tables that train on it (:func:`table_sources`; Table 1 on every source).

    Stages 04 and 05 measure a source's traces when it needs one of their signals, so the paper profile's
    Table 3-4 baselines (confidence gain, segment perplexity and entropy) get them on LIMO's CoTs.
    """
    needs = {source: signals_needed([MAIN_TABLE]) for source in training_sources(profile)}
    for table, source in table_sources(profile).items():
        needs[source] = needs.get(source, frozenset()) | signals_needed([table])
    return needs


def sources_needing(profile: Profile, signals: Iterable[str]) -> list[str]:
    """The sources (in :data:`SOURCES` order) on which the run plan needs any of ``signals``."""
    needs = planned_signals(profile)
    return [source for source in SOURCES if needs.get(source, frozenset()) & set(signals)]
