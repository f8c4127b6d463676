"""Stage 00 (notebook ``00_world``): the world and the base reasoning model (Sec. 3, Sec. 4.1).

- World profiles (tiny, smoke): the questions, R1-style teacher traces with ground-truth segment
  kinds, a locally built tokenizer and the tiny generator trained from scratch with TRL; then the base
  model's greedy accuracy on the test suites.
- Hub profiles (paper): which configured models and datasets are available locally, which GPU packages
  the profile's settings need (vLLM, DeepSpeed, bitsandbytes) are installed, and how to get the missing
  ones; the run stops there when something is missing.
"""

from __future__ import annotations

import importlib.util
import time
import tomllib

import numpy as np
import pandas as pd

from .. import dag, services
from .. import world as world_lib
from ..artifacts import read_json, read_table, write_json, write_table
from ..config import Profile, find_project_root
from ..data.questions import load_hub_questions, world_suites
from ..llm.evaluation import Benchmark, evaluate_model, summarise_outputs
from ..llm.models import resolve_model_path
from ..method.segmentation import segment
from ..run_log import log_seconds, log_timings
from . import StageResult, finish

STAGE = dag.WORLD


def world_seed(profile: Profile) -> int:
    """The seed of the world's questions and teacher traces: ``world.seed`` when set, else the profile's
    ``seed`` (which always seeds the base model's initialisation and training, and every sampling step).
    ``make robustness`` pins ``world.seed`` so that its draws retrain the model on the same world."""
    world = profile.get("world") or {}
    value = world.get("seed")
    return int(profile["seed"] if value is None else value)


def build_world(profile: Profile) -> dict:
    """Questions, teacher traces, tokenizer and the trained tiny generator (world profiles); returns the
    base model's training summary. Resumable: a trained model is not retrained."""
    from ..llm.training import TrainSettings, is_trained, train_sft
    from ..world.tiny_model import build_tiny_model, build_world_tokenizer, teacher_examples, teacher_traces

    world, seed, world_seed_value = profile["world"], int(profile["seed"]), world_seed(profile)
    suites = world_suites(world, world_seed_value)
    questions = pd.DataFrame([p.to_record() for suite in suites.values() for p in suite])
    write_table(STAGE.path(profile, "questions"), questions)

    # The pretraining traces come from a weak teacher (world.pretrain_misconception); the reference
    # traces of the training questions (LIMO's role) from the correct one.
    misconception = world_lib.Misconception.from_dict(world.get("pretrain_misconception"))
    max_value = world_lib.Arithmetic.from_dict(world.get("arithmetic")).max_value
    traces = {
        "pretrain": teacher_traces(suites["pretrain"], world["rates"], world_seed_value, misconception, max_value),
        "train": teacher_traces(suites["train"], world["rates"], world_seed_value + 1, None, max_value),
    }
    trace_rows = []
    for name in ("pretrain", "train"):
        for problem, trace in zip(suites[name], traces[name]):
            trace_rows.append(
                {
                    "question_id": problem.id,
                    "suite": name,
                    "completion": trace.completion,
                    "segments": trace.segments,
                    "kinds": trace.kinds,
                    "correct": trace.answer_text == problem.answer,
                }
            )
    write_table(STAGE.path(profile, "teacher_traces"), pd.DataFrame(trace_rows))

    model_dir = services.model_path(profile, "generator")
    run_dir = STAGE.path(profile, "generator_checkpoints")
    started = time.time()
    if not is_trained(run_dir):
        tokenizer = build_world_tokenizer(suites["pretrain"], traces["pretrain"], world["tokenizer_vocab_size"])
        model = build_tiny_model(tokenizer, profile.get_path("models.architecture"), seed)
        examples = teacher_examples(tokenizer, suites["pretrain"], traces["pretrain"])
        settings = TrainSettings.from_dict(profile.get_path("models.base_training"))
        summary = train_sft(model, tokenizer, examples, settings, run_dir, seed)
        log_timings(profile, STAGE, "base model", summary)
        summary["n_parameters"] = sum(p.numel() for p in model.parameters())
        summary["mean_tokens_per_example"] = float(np.mean([len(e.input_ids) for e in examples]))
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        write_json(STAGE.path(profile, "base_training"), summary)
        log_seconds(profile, STAGE, "base model: build and train", time.time() - started)
    return read_json(STAGE.path(profile, "base_training"))


def check_hub_availability(profile: Profile) -> pd.DataFrame:
    """Hub profiles: which configured models and datasets can be loaded here, and how to get the rest."""
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
            rows.append(
                {
                    "what": f"model:{role}",
                    "id": spec["id"],
                    "available": False,
                    "how_to_get": f"huggingface-cli download {spec['id']} --local-dir models/{spec['id'].split('/')[-1]} "
                    f"and set models.{role}.local_path ({type(error).__name__})",
                }
            )
    for name, spec in (profile.get("data") or {}).items():
        if name == "traces":  # imported traces (stage 01 reads them instead of generating)
            if spec:
                rows.append(trace_source_row(spec))
            continue
        if not isinstance(spec, dict) or "hub_id" not in spec:
            continue
        try:
            load_hub_questions(spec, name, limit=1)
            rows.append({"what": f"data:{name}", "id": spec["hub_id"], "available": True, "how_to_get": ""})
        except Exception as error:  # ModelUnavailableError, or whatever the datasets library raises
            rows.append(
                {
                    "what": f"data:{name}",
                    "id": spec["hub_id"],
                    "available": False,
                    "how_to_get": str(error).splitlines()[-1] if str(error) else type(error).__name__,
                }
            )
    rows += gpu_package_rows(profile)
    report = pd.DataFrame(rows)
    write_table(STAGE.path(profile, "availability"), report)
    return report


def trace_source_row(spec: dict) -> dict:
    """The availability row of ``data.traces``: its file, folder or hub dataset can be read (the records
    themselves are validated by stage 01)."""
    from ..data.traces import TraceSettings, read_records

    row = {"what": "data:traces", "id": spec.get("path") or spec.get("hub_id"), "available": True, "how_to_get": ""}
    try:
        read_records(TraceSettings.from_spec(spec))
    except Exception as error:  # a missing file, an unreadable one, an unreachable hub dataset
        row.update(available=False, how_to_get=str(error).splitlines()[-1] if str(error) else type(error).__name__)
    return row


def gpu_package_rows(profile: Profile) -> list[dict]:
    """One availability row per GPU package the profile's settings need: vLLM (a generation or evaluation
    backend ``vllm``, or ``auto`` on a GPU), DeepSpeed (``training.deepspeed_config``) and bitsandbytes
    (``optim: adamw_bnb_8bit``), each with the command that installs the version of the ``gpu`` extra."""
    import torch

    backends = {profile.get_path("generation.backend"), profile.get_path("evaluation.backend")}
    cfg = profile["training"]
    optims = {cfg["sft"].get("optim")} | {stage.get("optim") for stage in (cfg.get("two_stage") or {}).values()}
    needed = {
        "vllm": "vllm" in backends or ("auto" in backends and torch.cuda.is_available()),
        "deepspeed": bool(cfg.get("deepspeed_config")),
        "bitsandbytes": "adamw_bnb_8bit" in optims,
    }
    pins = _gpu_extra_pins()
    return [
        {
            "what": f"package:{name}",
            "id": pins[name],
            "available": importlib.util.find_spec(name) is not None,
            "how_to_get": f"make setup-gpu (or: pip install -c constraints.txt '{pins[name]}')",
        }
        for name, need in needed.items()
        if need
    ]


def _gpu_extra_pins() -> dict[str, str]:
    """The ``gpu`` extra of pyproject.toml ({name: "name==version"})."""
    from packaging.requirements import Requirement

    project = tomllib.loads((find_project_root() / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {Requirement(r).name: r for r in project["optional-dependencies"]["gpu"]}


def world_benchmarks(profile: Profile, suites: tuple[str, ...] = ("test_id", "test_ood")) -> list[Benchmark]:
    """The world's test suites as evaluation benchmarks (in-domain and out-of-domain)."""
    domains = {"test_id": "in", "test_ood": "out"}
    return [
        Benchmark(name=suite, domain=domains.get(suite, "in"), questions=services.load_questions(profile, suite))
        for suite in suites
    ]


def evaluate_base_model(profile: Profile) -> pd.DataFrame:
    """Greedy accuracy of the base generator on the world's test suites (resumable), through the same
    evaluation code as stage 09 (:func:`segattr_utils.llm.evaluation.evaluate_model`)."""
    graded = evaluate_model(
        lambda: services.load_generator(profile, "generator", "hf"),
        world_benchmarks(profile),
        STAGE.path(profile, "base_eval_outputs"),
        greedy=services.sampling_settings(profile, greedy=True),
        sampled=None,
        batch_size=profile.get_path("generation.batch_size"),
        seed=int(profile["seed"]),
        make_prompt=services.prompt,
    )
    rows = [
        {"suite": suite, **summarise_outputs(group.drop(columns=["benchmark"]))}
        for suite, group in graded.groupby("benchmark", sort=False)
    ]
    table = pd.DataFrame(rows)
    write_table(STAGE.path(profile, "base_eval"), table)
    return table


def run(profile: Profile) -> StageResult:
    """Stage 00: the world and its base model (world profiles) or the availability report (hub)."""
    if profile["kind"] == "hub":
        report = check_hub_availability(profile)
        missing = report[~report["available"]]
        if len(missing):
            raise RuntimeError(
                f"missing for the {profile.name} profile:\n"
                + "\n".join(f"- {r.what} {r.id}: {r.how_to_get}" for r in missing.itertuples())
            )
        return finish(
            profile,
            STAGE,
            tables={"availability": report},
            checks={"every model, dataset and GPU package is available": True},
        )
    training = build_world(profile)
    questions = read_table(STAGE.path(profile, "questions"))
    teacher = read_table(STAGE.path(profile, "teacher_traces"))
    problems = {r["id"]: world_lib.Problem.from_record(r) for r in questions.to_dict("records")}
    suites = questions.groupby("suite").agg(
        questions=("id", "size"),
        steps_min=("ops", lambda s: min(map(len, s))),
        steps_max=("ops", lambda s: max(map(len, s))),
    )
    kinds = teacher.explode("kinds")["kinds"].value_counts(normalize=True).rename("share of segments").to_frame()
    base_eval = evaluate_base_model(profile)
    checks = {
        "teacher traces segment as written": all(
            segment("".join(t.segments)) == list(t.segments) for t in teacher.itertuples()
        ),
        "the classifier agrees with the generator's kinds": all(
            world_lib.classify_segments(problems[t.question_id], list(t.segments)) == list(t.kinds)
            for t in teacher.itertuples()
        ),
        "the base model answered every test question": bool((base_eval["questions"] > 0).all()),
    }
    example = teacher.iloc[0]
    return finish(
        profile,
        STAGE,
        tables={
            "suites": suites,
            "segment_kinds": kinds,
            "base_training": pd.Series(training).drop(labels=["settings"]).to_frame("base training"),
            "base_eval": base_eval,
        },
        checks=checks,
        values={
            "example_question": questions.set_index("id").loc[example.question_id, "question"],
            "example_segments": list(zip(example.segments, example.kinds)),
            "segments_per_trace": float(teacher["segments"].map(len).mean()),
        },
    )
