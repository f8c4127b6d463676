"""The student profiles' code path on the CPU: Table 1's other students and Table 8 on local stand-ins.

The upstream is the paper dry run's profile (:mod:`tests.dry_run.fixtures`) with fewer samples and IG steps
(its traces only need to exist: what is tested here is what the students do with them). Each student profile
(``paper-r1-7b``, ``paper-qwen25-7b-instruct``, ``paper-llama31-8b`` with the stand-ins of
:mod:`tests.dry_run.student_fixtures`) runs its stages 08 and 09 on the upstream's attributed traces: SFT of
its tiny student, evaluation with the fake vLLM. To keep the dry run short, the upstream's stages 01-03 and
the two Qwen2 students' stages run in one process (as the notebooks call them, with their checks); the Llama
student runs ``python -m segattr_utils.reproduce --profile <student> --nbval``, which picks its notebooks 08
and 09. The tests check what each student trained on against sequences and labels built here from the
templates and the upstream's artifacts.

Run with ``make test-dry-run`` (``pytest -m dry_run tests/dry_run``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from segattr_utils import dag
from segattr_utils.config import load_profile

from .fixtures import build
from .student_fixtures import build_students

pytestmark = pytest.mark.dry_run

ROOT = Path(__file__).resolve().parents[2]
FAKES = ROOT / "tests" / "fakes"

#: The upstream's stages 01-03 (the traces every student trains on), then stages 08 and 09 of the student
#: profiles given after it, in one process; each stage's checks must hold, as the notebooks assert.
IN_PROCESS_SCRIPT = """
import sys
from segattr_utils.config import load_profile
from segattr_utils.stages import stage01_generation, stage02_segmentation, stage03_ig_attribution
from segattr_utils.stages import stage08_selective_sft, stage09_evaluation
upstream = load_profile(sys.argv[1])
for stage in (stage01_generation, stage02_segmentation, stage03_ig_attribution):
    failed = stage.run(upstream).failed_checks()
    assert not failed, (stage.__name__, failed)
for path in sys.argv[2:]:
    student = load_profile(path)
    for stage in (stage08_selective_sft, stage09_evaluation):
        failed = stage.run(student).failed_checks()
        assert not failed, (student.name, stage.__name__, failed)
"""
#: The student profiles whose stages run in the process above; the others run their notebooks.
IN_PROCESS = ("paper-r1-7b", "paper-qwen25-7b-instruct")


def _environment(log: Path) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(FAKES), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "FAKE_VLLM_LOG": str(log),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


def _run(command: list[str], environment: dict, what: str) -> None:
    finished = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True)
    first_failure = finished.stdout.find("FAILURES")
    report = finished.stdout[first_failure : first_failure + 8000] if first_failure >= 0 else finished.stdout[-8000:]
    assert finished.returncode == 0, f"{what} failed:\n{report}\n{finished.stderr[-3000:]}"


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    """The upstream's traces, then notebooks 08-09 of every student profile; ``(upstream, {name: profile},
    vLLM event log)``. ``SEGATTR_DRY_RUN_DIR`` keeps everything in that folder instead of a temporary one."""
    kept = os.environ.get("SEGATTR_DRY_RUN_DIR")
    folder = Path(kept) / "students" if kept else tmp_path_factory.mktemp("students_dry_run")
    upstream_path = build(folder)
    spec = yaml.safe_load(upstream_path.read_text(encoding="utf-8"))
    spec["name"] = "paper-upstream-dry-run"
    spec["generation"] = {"n_samples": 4}
    spec["attribution"] = {"n_steps": 8, "sensitivity": {"n_traces": 0, "n_steps": []}}
    upstream_path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
    log = folder / "vllm_events.jsonl"
    environment = _environment(log)
    profiles = build_students(folder, upstream_path)
    in_process = [str(profiles[name]) for name in IN_PROCESS]
    _run([sys.executable, "-c", IN_PROCESS_SCRIPT, str(upstream_path), *in_process], environment, "stages 01-09")
    for name in set(profiles) - set(IN_PROCESS):
        command = [sys.executable, "-m", "segattr_utils.reproduce", "--profile", str(profiles[name]), "--nbval"]
        _run(command, environment, f"notebooks 08-09 of {name}")
    events = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    return load_profile(upstream_path), {name: load_profile(path) for name, path in profiles.items()}, events


#: What each student profile trains: its supervision source, the stand-in's architecture and its schedule
#: (App. C.3: epochs and learning rate of each training stage).
EXPECTED = {
    "paper-r1-7b": ("reference", "Qwen2ForCausalLM", [(10, 1.5e-5)]),
    "paper-qwen25-7b-instruct": ("self", "Qwen2ForCausalLM", [(7, 1.5e-5), (4, 8e-6)]),
    "paper-llama31-8b": ("reference", "LlamaForCausalLM", [(7, 1.5e-5), (4, 8e-6)]),
}
SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."
LLAMA_HEAD = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
    "Today Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
)
LLAMA_ASSISTANT = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n<think>\n"


def _records(profile, source):
    from segattr_utils.stages.stage08_selective_sft import load_trace_records

    return load_trace_records(profile, source)


def _tokenizer(profile):
    from segattr_utils import services

    return services.load_role_tokenizer(profile, "student")


def _trained_tokens(tokenizer, prompt: str, record, selected: set[int]) -> int:
    """Trained tokens of one example, counted here: a token of ``prompt + trace + answer part`` is trained
    when its first character lies in a selected segment or the answer part (never in the prompt), plus EOS."""
    encoded = tokenizer(
        prompt + "".join(record.segments) + record.answer_part, add_special_tokens=False, return_offsets_mapping=True
    )
    learned, cursor = [], len(prompt)
    for index, text in enumerate(record.segments):
        if index in selected:
            learned.append((cursor, cursor + len(text)))
        cursor += len(text)
    learned.append((cursor, cursor + len(record.answer_part)))
    starts = [start for start, _ in encoded["offset_mapping"]]
    return sum(any(a <= s < b for a, b in learned) for s in starts) + 1


def _stage_summaries(profile, run: str) -> list[dict]:
    folder = dag.SELECTIVE_SFT.path(profile, "run_folders") / run
    return [
        json.loads((folder / f"stage{i}" / "stage_summary.json").read_text())
        for i in (1, 2)
        if (folder / f"stage{i}").is_dir()
    ]


def test_the_students_run_stages_08_and_09_only_on_the_upstreams_traces(students):
    upstream, profiles, _ = students
    from segattr_utils.config import results_dir

    for profile in profiles.values():
        made = {p.name[:2] for p in results_dir(profile).iterdir() if p.is_dir() and p.name[:2].isdigit()}
        assert made == {"08", "09"}, profile.name
    # the first student that trains on LIMO's CoTs attributed them once, into the upstream's stage 08 folder
    reference = dag.SELECTIVE_SFT.path(upstream, "reference_attributions_store")
    assert len(reference.read_text(encoding="utf-8").splitlines()) == 12
    assert not dag.SELECTIVE_SFT.path(upstream, "runs").exists()


def test_each_student_fine_tunes_its_own_model_on_its_source(students):
    upstream, profiles, events = students
    kept = pd.read_parquet(dag.GENERATION.path(upstream, "kept_traces"))
    n_traces = {"reference": 12, "self": int(kept["correct"].sum())}
    started = [Path(e["model"]) for e in events if e["event"] == "start"]
    for name, profile in profiles.items():
        source, architecture, _ = EXPECTED[name]
        runs = pd.read_parquet(dag.SELECTIVE_SFT.path(profile, "runs"))
        assert sorted(runs["variant"]) == ["full", "selective"] and set(runs["source"]) == {source}
        assert set(runs["traces"]) == {n_traces[source]}
        student = Path(profile.get_path("models.student.local_path"))
        for run in runs["run"]:
            config = json.loads((dag.SELECTIVE_SFT.path(profile, "models") / run / "config.json").read_text())
            assert config["architectures"] == [architecture]
            assert config["vocab_size"] == len(_tokenizer(profile))
            assert dag.SELECTIVE_SFT.path(profile, "models") / run in started  # evaluated in stage 09
        assert student in started  # the base model of stage 09 is the student, not the generator


def test_the_schedules_train_full_cot_first_then_the_variants_labels(students):
    from segattr_utils import services
    from segattr_utils.llm.variants import get_variant
    from segattr_utils.stages.stage08_selective_sft import plan_runs, selection_settings

    _, profiles, _ = students
    for name, profile in profiles.items():
        source, _, stages = EXPECTED[name]
        tokenizer = _tokenizer(profile)
        records = _records(profile, source)
        prompts = [services.prompt(tokenizer, r.question) for r in records]
        whole = sum(_trained_tokens(tokenizer, p, r, set(range(r.n_segments))) for p, r in zip(prompts, records))
        plan = {spec.variant: spec for spec in plan_runs(profile)}
        chosen = get_variant("selective").selections(records, selection_settings(profile, plan["selective"]))
        selective = sum(_trained_tokens(tokenizer, p, r, c.segments) for p, r, c in zip(prompts, records, chosen))
        assert 0 < selective < whole
        batches = -(-len(records) // 2)  # batch 2, no accumulation
        for variant, last in (("full", whole), ("selective", selective)):
            summaries = _stage_summaries(profile, plan[variant].name)
            assert [(s["settings"]["epochs"], s["settings"]["learning_rate"]) for s in summaries] == stages
            # two stages: full CoT first for every variant, then the variant's own labels
            assert [s["n_trained_tokens"] for s in summaries] == [whole] * (len(stages) - 1) + [last]
            stop = [s["settings"]["stop_after_epoch"] or s["settings"]["epochs"] for s in summaries]
            assert [s["steps"] for s in summaries] == [int(epochs) * batches for epochs in stop]


def test_llama_sequences_hold_one_bos_and_train_only_after_the_generation_prompt(students):
    from segattr_utils.stages.stage08_selective_sft import _whole_traces, build_examples

    _, profiles, events = students
    profile = profiles["paper-llama31-8b"]
    tokenizer = _tokenizer(profile)
    bos, eot = tokenizer.convert_tokens_to_ids(["<|begin_of_text|>", "<|eot_id|>"])
    assert tokenizer.eos_token_id == eot and tokenizer.pad_token is None
    records = _records(profile, "reference")
    examples = build_examples(tokenizer, records, _whole_traces(records), "full")
    trained = 0
    for record, example in zip(records, examples):
        prompt = LLAMA_HEAD + record.question + SUFFIX + LLAMA_ASSISTANT
        head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert example.input_ids[: len(head)] == head
        assert example.input_ids.count(bos) == 1 and example.input_ids[0] == bos
        assert set(example.labels[: len(head)]) == {-100}
        assert example.labels[len(head) :] == example.input_ids[len(head) :]
        assert example.input_ids[-1] == eot
        assert tokenizer.decode(example.input_ids[len(head) : -1]) == "".join(record.segments) + record.answer_part
        trained += len(example.input_ids) - len(head)
    full = next(spec for spec in _plan(profile) if spec.variant == "full")
    assert _stage_summaries(profile, full.name)[0]["n_trained_tokens"] == trained
    # stage 09 prompts every Llama model the same way, each benchmark question (the fake vLLM logs their hashes)
    from segattr_utils.stages.stage09_evaluation import evaluation_benchmarks

    llama_models = {str(dag.SELECTIVE_SFT.path(profile, "models") / run) for run in _runs(profile)}
    llama_models.add(profile.get_path("models.student.local_path"))
    questions = [q for bench in evaluation_benchmarks(profile) for q in bench.questions["question"]]
    expected = {
        hashlib.sha256((LLAMA_HEAD + q + SUFFIX + LLAMA_ASSISTANT).encode()).hexdigest()[:16] for q in questions
    }
    for model in llama_models:
        logged = {
            r["prompt"] for e in events if e["event"] == "generate" and e["model"] == model for r in e["requests"]
        }
        assert logged == expected, model


def test_qwen_instruct_prompts_open_the_thinking_block_after_the_chatml_header(students):
    _, profiles, _ = students
    profile = profiles["paper-qwen25-7b-instruct"]
    tokenizer = _tokenizer(profile)
    from segattr_utils import services

    prompt = services.prompt(tokenizer, "What is 2 + 2?")
    assert prompt == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 2?" + SUFFIX + "<|im_end|>\n<|im_start|>assistant\n<think>\n"
    )
    assert tokenizer.eos_token == "<|im_end|>"


def _plan(profile):
    from segattr_utils.stages.stage08_selective_sft import plan_runs

    return plan_runs(profile)


def _runs(profile) -> list[str]:
    return pd.read_parquet(dag.SELECTIVE_SFT.path(profile, "runs"))["run"].tolist()


def test_table8_is_the_llama_runs_macro_average_of_the_graded_outputs(students):
    _, profiles, _ = students
    profile = profiles["paper-llama31-8b"]
    six = profile.get_path("evaluation.overall")
    graded = pd.read_parquet(dag.EVALUATION.path(profile, "graded"))
    graded = graded[graded["benchmark"].isin(six)]
    table = pd.read_csv(dag.profile_path(profile, dag.TABLES_DIR) / "table8.csv")
    assert table["Method"].tolist() == ["Llama-3.1-8B-Instruct (no SFT)", "Full CoT SFT", "Segment Selective SFT"]
    models = ["base", *[spec.name for spec in _plan(profile)]]
    for model, row in zip(models, table.to_dict("records")):
        mine = graded[graded["model"] == model]
        greedy = mine[mine["mode"] == "greedy"].groupby("benchmark")
        sampled = mine[mine["mode"] == "sample"]
        pass1 = sampled.groupby(["benchmark", "question_id"])["correct"].mean().groupby("benchmark").mean()
        assert float(row["Greedy Acc."]) == pytest.approx(100 * greedy["correct"].mean().mean(), abs=0.051)
        assert float(row["Greedy Length"]) == pytest.approx(greedy["n_tokens"].mean().mean(), abs=0.51)
        assert float(row["Pass@1"]) == pytest.approx(100 * pass1.mean(), abs=0.051)
        lengths = sampled.groupby("benchmark")["n_tokens"].mean().mean()
        assert float(row["Sampling Length"]) == pytest.approx(lengths, abs=0.51)
    # Table 1 only otherwise: no ablation table from two rows
    for name, student in profiles.items():
        written = {p.stem for p in dag.profile_path(student, dag.TABLES_DIR).glob("*.csv")}
        assert written == {"table1", "table1_paired_tests"} | ({"table8"} if name == "paper-llama31-8b" else set())
    assert np.isfinite(graded["n_tokens"]).all()
