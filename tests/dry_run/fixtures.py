"""Local stand-ins for everything the paper profile downloads, for the CPU dry run of its code path.

:func:`build` writes, under one folder:

- ``models/{generator,student,judge}``: tiny random-weight models saved in Hugging Face format, each
  with a locally trained byte-level BPE tokenizer. The generator and the student (the roles of
  DeepSeek-R1-Distill-Qwen-7B and -1.5B) are Qwen2 models with the R1-Distill chat template; the judge
  (Qwen3-8B's role) is a Qwen3 model with a Qwen3-style template and its ``enable_thinking`` switch.
- ``data/LIMO/train.jsonl``: a dozen questions in LIMO's schema (``question``, ``solution``,
  ``answer``), the solutions written like R1 traces (transition words between segments).
- ``data/<benchmark>/<split>.jsonl``: the seven benchmarks in the columns their hub datasets publish
  (MATH-500, AMC23, AIME24, AIME25, GPQA-Diamond, Minerva, OlympiadBench), three rows each, with the
  cases that tripped the grader (Minerva's e-notation, OlympiadBench's list answers and context).
- ``accelerate_cpu.yaml``: an accelerate config for one CPU process.
- ``profile.yaml``: ``base: paper`` with only these stand-ins set (local paths, the results folder,
  the accelerate launcher on the CPU and the 8-bit optimizer's plain counterpart, bitsandbytes being
  GPU-only). Every other setting is paper.yaml's.

The answers are small integers (and letters for GPQA) because the fake vLLM of ``tests/fakes/vllm``
answers with those: the generator then writes correct and incorrect traces, as the real one does.
Nothing here is read from outside the project.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from segattr_utils.config import load_profile
from segattr_utils.world.tokenizer import build_bpe_tokenizer

#: DeepSeek-R1-Distill-Qwen's chat template (tool-call branches left out: no tool use here). The
#: generation prompt opens the thinking block, and an assistant turn keeps only what follows
#: ``</think>``, as in the published tokenizer_config.json.
R1_DISTILL_CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}"
    "{{bos_token}}{{ns.system_prompt}}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    "{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}"
    "{%- endif %}"
    "{%- endfor -%}"
    "{% if add_generation_prompt %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)

#: Qwen3's chat layout: ChatML turns; with ``enable_thinking`` false the generation prompt holds an
#: empty thinking block (the model then answers directly).
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

R1_SPECIAL_TOKENS = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>")
QWEN3_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_end|>", "<|im_start|>")
THINK_TOKENS = ("<think>", "</think>")


def _trace(*segments: str) -> str:
    return "".join(segments)


#: LIMO-schema rows: R1-style solutions whose segments start with the paper's transition words.
LIMO_ROWS = [
    {
        "question": "How many real solutions does $x^2 + 1 = 0$ have?",
        "solution": _trace(
            "Okay, so I need the real solutions of $x^2 + 1 = 0$. That means $x^2 = -1$.",
            "\n\nWait, a square of a real number is never negative, so $x^2 = -1$ has no real root.",
            "\n\nAlternatively, the discriminant is $0 - 4 = -4 < 0$, which confirms it.",
            "\n\nSo there are no real solutions.\n\n**Final Answer**\n\\boxed{0}",
        ),
        "answer": "0",
    },
    {
        "question": "What is the remainder when $2023$ is divided by $4$?",
        "solution": _trace(
            "Let me divide. $4 \\times 505 = 2020$, and $2023 - 2020 = 3$.",
            "\n\nWait, let me double-check with the last two digits: $23 = 4 \\times 5 + 3$.",
            "\n\nSo the remainder is $3$.\n\n**Final Answer**\n\\boxed{3}",
        ),
        "answer": "3",
    },
    {
        "question": "Find the value of $\\log_2 4 - \\log_3 3$.",
        "solution": _trace(
            "First, $\\log_2 4 = 2$ because $2^2 = 4$.",
            "\n\nThen $\\log_3 3 = 1$.",
            "\n\nHmm, so the difference is $2 - 1 = 1$.",
            "\n\nBut wait, is $\\log_3 3$ really $1$? Yes, $3^1 = 3$.\n\n**Final Answer**\n\\boxed{1}",
        ),
        "answer": "1",
    },
    {
        "question": "How many positive divisors does $4$ have that are less than $4$?",
        "solution": _trace(
            "The divisors of $4$ are $1, 2, 4$.",
            "\n\nThose less than $4$ are $1$ and $2$, so there are $2$.",
            "\n\nAlternatively, $4 = 2^2$ has $3$ divisors, and removing $4$ itself leaves $2$.",
            "\n\nSo the answer is $2$.\n\n**Final Answer**\n\\boxed{2}",
        ),
        "answer": "2",
    },
    {
        "question": "Compute $\\sin^2(\\theta) + \\cos^2(\\theta) - 1$ for any real $\\theta$.",
        "solution": _trace(
            "By the Pythagorean identity, $\\sin^2\\theta + \\cos^2\\theta = 1$.",
            "\n\nWait, so the expression is $1 - 1 = 0$ for every $\\theta$.",
            "\n\nLet me test $\\theta = 0$: $0 + 1 - 1 = 0$. Good.\n\n**Final Answer**\n\\boxed{0}",
        ),
        "answer": "0",
    },
    {
        "question": "If $3x + 2 = 11$, what is $x$?",
        "solution": _trace(
            "Subtract $2$: $3x = 9$.",
            "\n\nDivide by $3$: $x = 3$.",
            "\n\nWait, check: $3 \\cdot 3 + 2 = 11$. Correct.",
            "\n\nAnother way: $x = (11 - 2) / 3 = 3$.\n\n**Final Answer**\n\\boxed{3}",
        ),
        "answer": "3",
    },
    {
        "question": "How many integers $n$ satisfy $n^2 < 2$?",
        "solution": _trace(
            "We need $-\\sqrt{2} < n < \\sqrt{2}$, about $-1.41 < n < 1.41$.",
            "\n\nSo $n \\in \\{-1, 0, 1\\}$, which is $3$ integers.",
            "\n\nWait, is $n = 1$ allowed? $1 < 2$, yes.",
            "\n\nHowever, $n = 2$ gives $4$, too big. So $3$.\n\n**Final Answer**\n\\boxed{3}",
        ),
        "answer": "3",
    },
    {
        "question": "What is the units digit of $5^{100} - 4$?",
        "solution": _trace(
            "Every power of $5$ ends in $5$.",
            "\n\nSo $5^{100} - 4$ ends in $5 - 4 = 1$.",
            "\n\nNot sure about borrowing: $5 - 4$ needs none, so the units digit is $1$.\n\n**Final Answer**\n\\boxed{1}",
        ),
        "answer": "1",
    },
    {
        "question": "Evaluate $\\lim_{x \\to 0} \\frac{\\sin x}{x} + 1$.",
        "solution": _trace(
            "The standard limit is $\\lim_{x\\to 0} \\sin x / x = 1$.",
            "\n\nAlternatively, by L'Hopital, $\\cos 0 / 1 = 1$.",
            "\n\nSo the value is $1 + 1 = 2$.\n\n**Final Answer**\n\\boxed{2}",
        ),
        "answer": "2",
    },
    {
        "question": "How many of the numbers $2, 4, 6$ are prime?",
        "solution": _trace(
            "$2$ is prime. $4 = 2 \\cdot 2$ is not. $6 = 2 \\cdot 3$ is not.",
            "\n\nWait, so only one of them is prime.",
            "\n\nGoing back to $2$: its only divisors are $1$ and $2$, so it is prime.\n\n**Final Answer**\n\\boxed{1}",
        ),
        "answer": "1",
    },
    {
        "question": "Find $x$ if $2^x = 4$.",
        "solution": _trace(
            "Since $4 = 2^2$, we get $x = 2$.",
            "\n\nWait, could $x$ be negative? $2^x > 1$ needs $x > 0$, and $2^x$ is increasing.",
            "\n\nSo $x = 2$ is the only solution.\n\n**Final Answer**\n\\boxed{2}",
        ),
        "answer": "2",
    },
    {
        "question": "What is $0 \\times 7 + 0$?",
        "solution": _trace(
            "Anything times zero is zero, so $0 \\times 7 = 0$.",
            "\n\nThen $0 + 0 = 0$.",
            "\n\nBut wait, let me reread: yes, the expression is $0 \\times 7 + 0 = 0$.\n\n**Final Answer**\n\\boxed{0}",
        ),
        "answer": "0",
    },
]


def _olympiad_row(index: int, question: str, solution: str, answer: str, context: str | None, subfield: str) -> dict:
    """A row of math-ai/olympiadbench: list-valued solution and final answer (with $...$), the other columns
    as the text-only English math problems have them."""
    return {
        "id": index,
        "question": question,
        "solution": [solution],
        "final_answer": [answer],
        "context": context,
        "image_1": None,
        "modality": "Text-only",
        "difficulty": "Competition",
        "is_multiple_answer": False,
        "unit": None,
        "answer_type": "Numerical",
        "error": None,
        "question_type": "Open-ended",
        "subfield": subfield,
        "subject": "Math",
        "language": "English",
    }


#: One row per benchmark question, in the columns of the dataset named in paper.yaml (``hub_id``).
BENCHMARK_ROWS: dict[str, list[dict]] = {
    "MATH500": [
        {
            "problem": "What is $1 + 1$?",
            "solution": "$1 + 1 = 2$.",
            "answer": "2",
            "subject": "Prealgebra",
            "level": 1,
            "unique_id": "test/prealgebra/1.json",
        },
        {
            "problem": "How many real roots has $x^2 = 0$?",
            "solution": "Only $x = 0$.",
            "answer": "1",
            "subject": "Algebra",
            "level": 1,
            "unique_id": "test/algebra/2.json",
        },
        {
            "problem": "Simplify $\\frac{2}{4}$.",
            "solution": "$\\frac{1}{2}$.",
            "answer": "\\frac{1}{2}",
            "subject": "Prealgebra",
            "level": 1,
            "unique_id": "test/prealgebra/3.json",
        },
    ],
    "AMC23": [
        {"id": 0, "question": "What is $3 - 3$?", "answer": 0.0, "url": "https://example.org/amc23/0"},
        {"id": 1, "question": "What is $6 / 2$?", "answer": 3.0, "url": "https://example.org/amc23/1"},
        {"id": 2, "question": "What is $2 \\cdot 1$?", "answer": 2.0, "url": "https://example.org/amc23/2"},
    ],
    "AIME24": [
        {"id": 60, "problem": "Find $2^0 + 2^0$.", "solution": "$2$.", "answer": "2", "url": "u", "year": "2024"},
        {"id": 61, "problem": "Find $9 - 8$.", "solution": "$1$.", "answer": "1", "url": "u", "year": "2024"},
        {"id": 62, "problem": "Find $7 - 4$.", "solution": "$3$.", "answer": "3", "url": "u", "year": "2024"},
    ],
    "AIME25": [
        {"problem": "Find $5 - 5$.", "answer": "0", "id": "0"},
        {"problem": "Find $4 - 3$.", "answer": "1", "id": "1"},
        {"problem": "Find $1 + 2$.", "answer": "3", "id": "2"},
    ],
    "GPQA": [
        {
            "Question": "Which particle carries a negative charge?",
            "Correct Answer": "electron",
            "Incorrect Answer 1": "proton",
            "Incorrect Answer 2": "neutron",
            "Incorrect Answer 3": "photon",
            "Explanation": "The electron is negative.",
            "Subdomain": "Physics (general)",
            "High-level domain": "Physics",
        },
        {
            "Question": "What is the chemical symbol of sodium?",
            "Correct Answer": "Na",
            "Incorrect Answer 1": "So",
            "Incorrect Answer 2": "S",
            "Incorrect Answer 3": "N",
            "Explanation": "From Latin natrium.",
            "Subdomain": "Chemistry (general)",
            "High-level domain": "Chemistry",
        },
        {
            "Question": "Which base pairs with adenine in DNA?",
            "Correct Answer": "thymine",
            "Incorrect Answer 1": "cytosine",
            "Incorrect Answer 2": "guanine",
            "Incorrect Answer 3": "uracil",
            "Explanation": "A-T pairing.",
            "Subdomain": "Molecular Biology",
            "High-level domain": "Biology",
        },
    ],
    "Minerva": [
        {"question": "A star emits $4.5 \\times 10^{33}$ erg/s. Give the luminosity in erg/s.", "answer": "4.5e33"},
        {"question": "How many photons are in one quantum?", "answer": "1"},
        {"question": "What is $2 - 0$ in units of meters?", "answer": "2"},
    ],
    "OlympiadBench": [
        _olympiad_row(1, "Find the smallest non-negative integer $n$.", "$n = 0$.", "$0$", None, "Number Theory"),
        _olympiad_row(
            2,
            "How many are left?",
            "$3 - 1 = 2$.",
            "$2$",
            "Three apples lie on a table; one is eaten.",
            "Combinatorics",
        ),
        _olympiad_row(3, "Compute $1^5$.", "$1$.", "$1$", None, "Algebra"),
    ],
}

#: Where each benchmark's rows go: the dataset's folder name and split (paper.yaml's ``split``).
BENCHMARK_FILES = {
    "MATH500": "MATH-500/test.jsonl",
    "AMC23": "amc23/test.jsonl",
    "AIME24": "aime_2024/train.jsonl",
    "AIME25": "aime25/test.jsonl",
    "GPQA": "gpqa/gpqa_diamond/train.jsonl",
    "Minerva": "minervamath/test.jsonl",
    "OlympiadBench": "olympiadbench/test.jsonl",
}

#: Tiny shapes: the real architectures' code paths (GQA, RoPE, SwiGLU) at a size a CPU trains in seconds.
TINY_SHAPES = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def _corpus() -> list[str]:
    texts = [r["question"] + r["solution"] for r in LIMO_ROWS]
    texts += [json.dumps(row, ensure_ascii=False) for rows in BENCHMARK_ROWS.values() for row in rows]
    return texts * 4


def _save_model(folder: Path, tokenizer, architecture: str, seed: int) -> None:
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    config_class, model_class = {
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "qwen3": (Qwen3Config, Qwen3ForCausalLM),
        "llama": (LlamaConfig, LlamaForCausalLM),
    }[architecture]
    # No pad_token_id in the config, as in the published R1-Distill configs: a padding index would get a zero
    # embedding, and the pad token is IG's baseline (the tokenizer's pad token is EOS).
    config = config_class(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **TINY_SHAPES,
    )
    torch.manual_seed(seed)
    model = model_class(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def build_models(folder: Path) -> dict[str, Path]:
    """The three roles' tiny models (random weights, fixed seeds) with their tokenizers."""
    r1 = build_bpe_tokenizer(
        _corpus(), vocab_size=600, special_tokens=R1_SPECIAL_TOKENS, chat_template=R1_DISTILL_CHAT_TEMPLATE
    )
    qwen3 = build_bpe_tokenizer(
        _corpus(), vocab_size=600, special_tokens=QWEN3_SPECIAL_TOKENS, chat_template=QWEN3_CHAT_TEMPLATE
    )
    paths = {role: folder / role for role in ("generator", "student", "judge")}
    _save_model(paths["generator"], r1, "qwen2", seed=1)
    _save_model(paths["student"], r1, "qwen2", seed=2)
    _save_model(paths["judge"], qwen3, "qwen3", seed=3)
    return paths


def build_data(folder: Path) -> dict[str, Path]:
    """LIMO's and the seven benchmarks' rows as local files; returns the path of each (``train``, names)."""
    paths = {"train": folder / "LIMO" / "train.jsonl"}
    _write_jsonl(paths["train"], LIMO_ROWS)
    for name, rows in BENCHMARK_ROWS.items():
        paths[name] = folder / BENCHMARK_FILES[name]
        _write_jsonl(paths[name], rows)
    return paths


ACCELERATE_CPU_CONFIG = {
    "compute_environment": "LOCAL_MACHINE",
    "distributed_type": "NO",
    "num_machines": 1,
    "num_processes": 1,
    "machine_rank": 0,
    "mixed_precision": "no",
    "use_cpu": True,
}


def dry_run_profile(models: dict[str, Path], data: dict[str, Path], accelerate_config: Path, results: Path) -> dict:
    """paper.yaml's overrides for the dry run: local copies of the models and data, nothing else of the
    method changed. The CPU needs two more stand-ins: the accelerate launcher (per_gpu needs CUDA) and
    ``adamw_torch`` for ``adamw_bnb_8bit`` (bitsandbytes' 8-bit optimizer runs on CUDA only)."""
    paper = load_profile("paper")
    benchmarks = [{**spec, "local_path": str(data[spec["name"]])} for spec in paper.get_path("evaluation.benchmarks")]
    return {
        "base": "paper",
        "name": "paper-dry-run",
        "results_root": str(results),
        "models": {role: {"local_path": str(path)} for role, path in models.items()},
        "data": {"train": {"local_path": str(data["train"])}},
        "evaluation": {"benchmarks": benchmarks},
        "training": {
            "launcher": "accelerate",
            "accelerate_config": str(accelerate_config),
            "sft": {"optim": "adamw_torch"},
        },
    }


def build(folder: str | Path) -> Path:
    """Write every stand-in under ``folder`` and return the path of the dry run's profile file."""
    folder = Path(folder).resolve()
    models = build_models(folder / "models")
    data = build_data(folder / "data")
    accelerate_config = folder / "accelerate_cpu.yaml"
    accelerate_config.write_text(yaml.safe_dump(ACCELERATE_CPU_CONFIG), encoding="utf-8")
    profile = dry_run_profile(models, data, accelerate_config, folder / "results")
    path = folder / "profile.yaml"
    path.write_text(yaml.safe_dump(profile, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


if __name__ == "__main__":
    import sys

    print(build(sys.argv[1] if len(sys.argv) > 1 else "dry_run"))
