"""Shared fixtures of the stage tests: hand-made stage 01-03 artifacts and a tiny random model; and the
same with the paper's ablation source (reference traces of hand-made world questions)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

from segattr_utils.artifacts import write_table
from segattr_utils.config import Profile, load_profile, results_dir
from segattr_utils.world import Problem
from segattr_utils.world.tokenizer import build_bpe_tokenizer

from ..fixtures.tiny_models import save_model_folder, tiny_qwen2

TRACES = {
    "q0:correct": [
        "Okay, so 2 + 1 = 3.",
        "\n\nWait, so 2 + 1 = 3.",
        "\n\nAnother step, 3 * 2 = 6. So the result is 6.",
    ],
    "q1:correct": ["Okay, 5 - 1 = 4. So the result is 4."],
    "q1:incorrect": ["Okay, 5 - 1 = 3.", "\n\nWait, what if I"],
}
QUESTIONS = {
    "q0": ("Start with 2, then first add 1, second multiply by 2. What is the result?", "6"),
    "q1": ("Start with 5, then first subtract 1. What is the result?", "4"),
}
#: The world problems behind QUESTIONS (their questions are the same text) and their reference traces
#: (the world's correct teacher; LIMO's provided CoTs on the paper profile): 3 + 2 segments.
PROBLEMS = {"q0": (2, (("add", 1), ("multiply", 2))), "q1": (5, (("subtract", 1),))}
REFERENCE = {
    "q0": ["Okay, 2 + 1 = 3.", "\n\nAnother step, 3 * 2 = 6.", "\n\nWait, so 3 * 2 = 6. So the result is 6."],
    "q1": ["Okay, 5 - 1 = 4.", "\n\nWait, 5 - 1 = 4. So the result is 4."],
}


@pytest.fixture(scope="session")
def _model_template(tmp_path_factory):
    """The tiny random Qwen2 and BPE tokenizer of the stage tests, built and saved once, and torch's RNG
    state after the model's draws; each test's ``profile`` gets its own copy of the folder and that state."""
    corpus = (
        [q for q, _ in QUESTIONS.values()] + ["".join(s) for s in TRACES.values()] + ["The final answer is \\boxed{6}."]
    )
    tokenizer = build_bpe_tokenizer(corpus * 3, vocab_size=300)
    model = tiny_qwen2(tokenizer=tokenizer, num_hidden_layers=1, max_position_embeddings=512)
    return save_model_folder(tmp_path_factory.mktemp("stage-model") / "model", model, tokenizer), torch.get_rng_state()


@pytest.fixture()
def profile(tmp_path, _model_template):
    template, rng_state = _model_template
    model_dir = tmp_path / "model"
    shutil.copytree(template, model_dir)
    torch.set_rng_state(rng_state)  # as if this test had seeded torch and drawn the model itself
    base = load_profile("smoke")
    profile = Profile(
        {
            **base,
            "results_root": str(tmp_path / "results"),
            "models": {**base["models"], "generator": {**base["models"]["generator"], "local_path": str(model_dir)}},
        }
    )
    kept, segments, scores = [], [], []
    for tid, texts in TRACES.items():
        qid, label = tid.split(":")
        question, answer = QUESTIONS[qid]
        reasoning = "".join(texts)
        kept.append(
            {
                "trace_id": tid,
                "question_id": qid,
                "question": question,
                "answer": answer,
                "correct": label == "correct",
                "sample": 0,
                "n_tokens": 10,
                "text": reasoning,
                "reasoning": reasoning,
                "answer_part": f"\n</think>\n\nThe final answer is \\boxed{{{answer}}}.",
                "pred": answer,
            }
        )
        n = len(texts)
        for index, text in enumerate(texts):
            segments.append(
                {
                    "trace_id": tid,
                    "question_id": qid,
                    "correct": label == "correct",
                    "segment": index,
                    "n_segments": n,
                    "text": text,
                    "n_chars": len(text),
                    "kind": "productive",
                }
            )
            scores.append(
                {
                    "trace_id": tid,
                    "segment": index,
                    "n_tokens": 5,
                    "norm_strength": 1 / n,
                    "consistency": 0.5,
                    "correct": label == "correct",
                    "n_segments": n,
                    "important": index == 0,
                    "high_strength": True,
                    "kind": "productive",
                }
            )
    write_table((results_dir(profile) / "01_generation") / "kept_traces.parquet", pd.DataFrame(kept))
    write_table((results_dir(profile) / "02_segmentation") / "segments.parquet", pd.DataFrame(segments))
    write_table((results_dir(profile) / "03_ig_attribution") / "segment_scores.parquet", pd.DataFrame(scores))
    return profile


@pytest.fixture()
def reference_profile(profile):
    """``profile`` with the paper's ablation source: Tables 2-4, 7 and Fig. 5 train on the reference
    traces (``training.ablation_source: reference``; every run on them, so stage 08 needs no IG of the
    self traces), whose world questions and teacher traces stage 00 would have written."""
    derived = Profile(
        {**profile, "training": {**profile["training"], "sources": ["reference"], "ablation_source": "reference"}}
    )
    questions = [Problem(qid, start, ops, suite="train").to_record() for qid, (start, ops) in PROBLEMS.items()]
    assert [(q["question"], q["answer"]) for q in questions] == list(QUESTIONS.values())
    teacher = [
        {
            "question_id": qid,
            "suite": "train",
            "completion": "".join(segments),
            "segments": segments,
            "kinds": ["productive"] * len(segments),
            "correct": True,
        }
        for qid, segments in REFERENCE.items()
    ]
    write_table((results_dir(derived) / "00_world") / "questions.parquet", pd.DataFrame(questions))
    write_table((results_dir(derived) / "00_world") / "teacher_traces.parquet", pd.DataFrame(teacher))
    return derived
