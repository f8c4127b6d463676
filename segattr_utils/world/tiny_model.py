"""The tiny base reasoning model of the world: a ``Qwen2ForCausalLM`` (the R1-Distill-Qwen
architecture) built from a config and trained from scratch on teacher traces with TRL.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from ..data.questions import r1_prompt
from ..llm.training import TrainingExample, build_training_example
from . import Misconception, Problem, TeacherTrace, format_completion, teacher_trace, user_prompt
from .tokenizer import build_bpe_tokenizer


def answer_part(answer: str) -> str:
    """The text after the reasoning: ``</think>`` and the boxed answer (R1 layout)."""
    return format_completion("", answer)


def teacher_traces(
    problems: Sequence[Problem], rates: dict, seed: int, misconception: Misconception | None = None, max_value: int = 9
) -> list[TeacherTrace]:
    """Teacher traces of ``problems``; with ``misconception`` they are the weak pretraining teacher's."""
    rng = random.Random(f"teacher:{seed}")
    return [teacher_trace(p, rng, rates, misconception, max_value) for p in problems]


def build_world_tokenizer(problems: Sequence[Problem], traces: Sequence[TeacherTrace], vocab_size: int):
    """A byte-level BPE trained on the world's prompts and teacher completions."""
    corpus = [user_prompt(p) for p in problems] + [t.completion for t in traces]
    return build_bpe_tokenizer(corpus, vocab_size=vocab_size)


def build_tiny_model(tokenizer, architecture: dict, seed: int) -> Qwen2ForCausalLM:
    """A freshly initialised Qwen2 causal LM sized by ``architecture`` (profile ``models.architecture``).

    ``pad_token_id`` is left unset in the model config: a ``padding_idx`` row is zeroed at
    initialisation and never trained, and an all-zero pad embedding is a degenerate IG baseline
    (see :mod:`segattr_utils.method.attribution`). The tokenizer's pad token is EOS, as in R1-Distill-Qwen,
    and its embedding is trained through the tied output layer.
    """
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
        **architecture,
    )
    return Qwen2ForCausalLM(config)


def teacher_examples(tokenizer, problems: Sequence[Problem], traces: Sequence[TeacherTrace]) -> list[TrainingExample]:
    """Full-CoT training examples from teacher traces (prompt masked, reasoning + answer trained)."""
    return [
        build_training_example(tokenizer, r1_prompt(tokenizer, p.question), t.segments, answer_part(p.answer))
        for p, t in zip(problems, traces)
    ]
