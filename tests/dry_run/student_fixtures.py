"""Local stand-ins for the student profiles (Table 1's other students, Table 8) on the CPU.

:func:`build_students` writes, beside the paper dry run's stand-ins of :mod:`tests.dry_run.fixtures`:

- ``models/student-r1-7b``: a tiny random Qwen2 with the R1-Distill chat template (the role of
  DeepSeek-R1-Distill-Qwen-7B as a student).
- ``models/student-qwen25-instruct``: a tiny random Qwen2 with a Qwen2.5-Instruct-style ChatML template
  (default system message, no thinking block in the generation prompt), no BOS, EOS ``<|im_end|>`` and pad
  ``<|endoftext|>``, as Qwen/Qwen2.5-7B-Instruct's tokenizer_config.json has them.
- ``models/student-llama31-instruct``: a tiny random ``LlamaForCausalLM`` with a Llama-3.1-Instruct-style
  template (``<|begin_of_text|>`` written by the template, the dated system header, turns closed by
  ``<|eot_id|>``), EOS ``<|eot_id|>`` and no pad token, as meta-llama/Llama-3.1-8B-Instruct's.
- one profile per student: ``base`` the packaged student profile, ``upstream`` the paper dry run's profile,
  and only where things are changed (local paths, the results folder) plus two CPU stand-ins: the in-process
  launcher (per_gpu needs CUDA) and ``adamw_torch`` for the GPU-only 8-bit optimizer.

The templates are written here from the published layouts (tool-call branches left out); nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from segattr_utils.config import load_profile
from segattr_utils.world.tokenizer import build_bpe_tokenizer

from .fixtures import R1_DISTILL_CHAT_TEMPLATE, R1_SPECIAL_TOKENS, THINK_TOKENS, _corpus, _save_model

#: Qwen2.5-Instruct's ChatML layout with its default system message; the generation prompt is the bare
#: assistant header (no thinking block).
QWEN25_INSTRUCT_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

#: Llama-3.1-Instruct's layout: BOS from the template, a system header with the knowledge and today's date
#: (the template's default date), turns closed by <|eot_id|>; the generation prompt is the assistant header.
LLAMA31_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content']|trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

QWEN25_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_end|>", "<|im_start|>")
LLAMA31_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
)

#: The packaged student profiles and the stand-in each one fine-tunes.
STUDENTS = {
    "paper-r1-7b": "student-r1-7b",
    "paper-qwen25-7b-instruct": "student-qwen25-instruct",
    "paper-llama31-8b": "student-llama31-instruct",
}


def _tokenizers() -> dict:
    """The three students' tokenizers: byte-level BPE trained on the dry run's corpus, special tokens and
    BOS/EOS/pad as the published tokenizers set them (``<think>`` is plain text for the instruct models)."""
    r1 = build_bpe_tokenizer(
        _corpus(),
        vocab_size=600,
        special_tokens=R1_SPECIAL_TOKENS,
        added_tokens=THINK_TOKENS,
        chat_template=R1_DISTILL_CHAT_TEMPLATE,
    )
    qwen = build_bpe_tokenizer(
        _corpus(),
        vocab_size=600,
        special_tokens=QWEN25_SPECIAL_TOKENS,
        added_tokens=(),
        chat_template=QWEN25_INSTRUCT_CHAT_TEMPLATE,
    )
    qwen.bos_token = None
    qwen.pad_token = "<|endoftext|>"
    llama = build_bpe_tokenizer(
        _corpus(),
        vocab_size=600,
        special_tokens=LLAMA31_SPECIAL_TOKENS,
        added_tokens=(),
        chat_template=LLAMA31_CHAT_TEMPLATE,
    )
    llama.pad_token = None
    return {"student-r1-7b": r1, "student-qwen25-instruct": qwen, "student-llama31-instruct": llama}


def build_student_models(folder: Path) -> dict[str, Path]:
    """The students' tiny random models with their tokenizers, by stand-in name."""
    tokenizers = _tokenizers()
    architectures = {"student-r1-7b": "qwen2", "student-qwen25-instruct": "qwen2", "student-llama31-instruct": "llama"}
    paths = {}
    for seed, (name, tokenizer) in enumerate(tokenizers.items(), start=11):
        paths[name] = folder / name
        _save_model(paths[name], tokenizer, architectures[name], seed)
    return paths


def student_profile(student: str, model: Path, upstream_path: Path) -> dict:
    """``student``'s packaged profile with the dry run's stand-ins: the local student model, the paper dry
    run's profile as upstream (its generator, judge, data and benchmarks) and its results folder."""
    upstream = load_profile(upstream_path)
    return {
        "base": student,
        "name": f"{student}-dry-run",
        "upstream": str(upstream_path),
        "results_root": upstream["results_root"],
        "models": {
            "generator": {"local_path": upstream.get_path("models.generator.local_path")},
            "student": {"local_path": str(model)},
            "judge": {"local_path": upstream.get_path("models.judge.local_path")},
        },
        "data": {"train": {"local_path": upstream.get_path("data.train.local_path")}},
        "evaluation": {"benchmarks": upstream.get_path("evaluation.benchmarks")},
        "training": {"launcher": "inprocess", "sft": {"optim": "adamw_torch"}},
    }


def build_students(folder: str | Path, upstream_path: Path) -> dict[str, Path]:
    """Write the students' stand-ins under ``folder`` and one profile per student profile; returns the path
    of each profile file by packaged profile name."""
    folder = Path(folder).resolve()
    models = build_student_models(folder / "models")
    paths = {}
    for student, model in STUDENTS.items():
        paths[student] = folder / f"{student}.yaml"
        profile = student_profile(student, models[model], upstream_path)
        paths[student].write_text(yaml.safe_dump(profile, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return paths
