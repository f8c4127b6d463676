"""The student profiles (Table 1's R1-Distill-Qwen-7B and Qwen2.5-7B-Instruct rows, Table 8's Llama-3.1-8B-Instruct):
their settings against App. C.3, the ``upstream`` setting, the R1 prompt on templates without a thinking block,
which notebooks they run, and padding for a tokenizer without a pad token."""

from __future__ import annotations

import pytest
import torch
import yaml

from segattr_utils import services
from segattr_utils.config import load_profile, save_profile
from segattr_utils.data.questions import opens_thinking
from segattr_utils.llm.generation import HFGenerator, SamplingSettings, left_padded_batch
from segattr_utils.llm.models import ModelUnavailableError
from segattr_utils.reproduce import student_notebooks
from segattr_utils.stages.stage08_selective_sft import load_trace_records, plan_runs, schedule
from segattr_utils.world.tokenizer import build_bpe_tokenizer

STUDENTS = {
    # profile: (hub id, source, [(epochs, learning rate, stop after epoch)], tables)
    "paper-r1-7b": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "reference", [(10, 1.5e-5, 9)], []),
    "paper-qwen25-7b-instruct": ("Qwen/Qwen2.5-7B-Instruct", "self", [(7, 1.5e-5, None), (4, 8e-6, None)], []),
    "paper-llama31-8b": ("meta-llama/Llama-3.1-8B-Instruct", "reference", [(7, 1.5e-5, None), (4, 8e-6, None)], ["8"]),
}

CHATML = (
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
R1 = (
    "{{ bos_token }}{% for message in messages %}{{ '<｜User｜>' + message['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)
CORPUS = ["What is two plus two? Please reason step by step, and put your final answer within boxed."] * 4


def _tokenizer(template: str, special=("<s>", "</s>", "<|im_start|>", "<|im_end|>")):
    return build_bpe_tokenizer(CORPUS, vocab_size=300, special_tokens=special, added_tokens=(), chat_template=template)


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_student_profiles_train_the_papers_students_on_the_main_runs_traces(name):
    hub_id, source, stages, tables = STUDENTS[name]
    profile = load_profile(name)
    paper = load_profile("paper")
    assert profile.get_path("models.student.id") == hub_id
    assert services.upstream_profile(profile).name == "paper"
    assert profile.get_path("models.generator") == paper.get_path("models.generator")
    assert services.training_sources(profile) == [source]
    assert [(s.epochs, s.learning_rate, s.stop_after_epoch) for s in schedule(profile)] == stages
    assert {s.max_length for s in schedule(profile)} == {16384} and {s.batch_size for s in schedule(profile)} == {2}
    # Table 1's comparison only: full-CoT vs segment selective SFT, the paper's seed
    assert [(r.variant, r.source, r.seed) for r in plan_runs(profile)] == [
        ("full", source, 3407),
        ("selective", source, 3407),
    ]
    assert profile.get_path("training.tables") == tables
    assert services.planned_signals(profile) == {source: frozenset()}  # stages 04-05 measure nothing for it


def test_a_student_loads_from_the_hub_and_offline_says_what_to_download(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="(?s)meta-llama/Llama-3.1-8B-Instruct.*huggingface-cli download"):
        services.load_role_tokenizer(load_profile("paper-llama31-8b"), "student")


def _write(path, data):
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_upstream_is_resolved_relative_to_its_profile_and_survives_a_saved_copy(tmp_path):
    (tmp_path / "runs").mkdir()
    main = _write(tmp_path / "runs" / "main.yaml", {"base": "smoke", "name": "main-run"})
    student = _write(tmp_path / "runs" / "student.yaml", {"base": "smoke", "name": "student", "upstream": "main.yaml"})
    profile = load_profile(student)
    assert profile["upstream"] == str(main.resolve())
    copy = load_profile(save_profile(profile, tmp_path / "elsewhere" / "copy.yaml"))
    assert services.upstream_profile(copy).name == "main-run"
    plain = load_profile("smoke")
    assert services.upstream_profile(plain) is plain


@pytest.mark.parametrize(
    ("upstream", "message"),
    [
        ("", "upstream must name a profile"),
        (3, "upstream must name a profile"),
        ("same.yaml", "names itself"),
        ("chained.yaml", "names an upstream itself"),
        ("paper", "cannot train on the traces"),
    ],
)
def test_bad_upstreams_are_refused_with_a_clear_message(tmp_path, upstream, message):
    _write(tmp_path / "same.yaml", {"base": "smoke", "name": "student"})
    _write(tmp_path / "chained.yaml", {"base": "smoke", "name": "chained", "upstream": "smoke"})
    path = _write(tmp_path / "student.yaml", {"base": "smoke", "name": "student", "upstream": upstream})
    with pytest.raises(ValueError, match=message):
        services.upstream_profile(load_profile(path))


def test_a_student_without_the_upstreams_traces_names_the_upstream_before_loading_anything(tmp_path):
    main = _write(tmp_path / "main.yaml", {"base": "smoke", "name": "main-run", "results_root": str(tmp_path)})
    student = load_profile(
        _write(
            tmp_path / "s.yaml", {"base": "smoke", "name": "s", "upstream": str(main), "results_root": str(tmp_path)}
        )
    )
    with pytest.raises(FileNotFoundError, match="notebooks 01-03 of profile 'main-run'"):
        load_trace_records(student, "self")


def test_templates_without_a_thinking_block_get_the_r1_opening_after_the_generation_prompt():
    chatml = _tokenizer(CHATML)
    assert not opens_thinking(chatml)
    assert services.prompt(chatml, "Q?") == "<|im_start|>user\nQ?" + (
        "\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n"
    )
    r1 = _tokenizer(R1)
    assert opens_thinking(r1)
    assert (
        services.prompt(r1, "Q?").endswith("<｜Assistant｜><think>\n")
        and services.prompt(r1, "Q?").count("<think>") == 1
    )


def test_student_profiles_run_notebooks_08_and_09_only(tmp_path):
    notebooks = [
        tmp_path / f"{n}.ipynb" for n in ("00_world", "03_ig_attribution", "08_selective_sft", "09_evaluation")
    ]
    student = load_profile("paper-r1-7b")
    assert [p.stem for p in student_notebooks(student, notebooks, None)] == ["08_selective_sft", "09_evaluation"]
    assert student_notebooks(load_profile("paper"), notebooks, None) == notebooks
    with pytest.raises(ValueError, match="only notebooks 08 and 09 run under it, not 03_ig_attribution"):
        student_notebooks(student, notebooks[1:2], ["03"])


def test_a_tokenizer_without_a_pad_token_is_padded_with_eos_on_the_left():
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer(CHATML, special=("<|begin_of_text|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>"))
    tokenizer.pad_token = None
    prompts = ["What is two plus two?", "two"]
    batch = left_padded_batch(tokenizer, prompts, "cpu")
    short = tokenizer(prompts[1], add_special_tokens=False)["input_ids"]
    width = batch["input_ids"].shape[1]
    assert batch["input_ids"][1].tolist() == [tokenizer.eos_token_id] * (width - len(short)) + short
    assert batch["attention_mask"][1].tolist() == [0] * (width - len(short)) + [1] * len(short)
    assert tokenizer.pad_token is None  # left as it was
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        eos_token_id=tokenizer.eos_token_id,
    )
    outputs = HFGenerator(LlamaForCausalLM(config), tokenizer).generate(
        prompts, SamplingSettings(temperature=0.0, top_p=1.0, max_new_tokens=3), seed=0
    )
    assert len(outputs) == 2 and all(o["n_tokens"] <= 3 for o in outputs)
