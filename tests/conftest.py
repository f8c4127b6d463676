"""Fixtures shared by the test folders."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

FAKES = Path(__file__).with_name("fakes")


def _drop_vllm_modules(monkeypatch=None) -> None:
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        if monkeypatch is None:
            del sys.modules[name]
        else:
            monkeypatch.delitem(sys.modules, name)


@pytest.fixture
def fake_vllm(monkeypatch):
    """The CPU stand-in for vLLM of ``tests/fakes/vllm``, importable as ``vllm`` during the test (and
    found by ``importlib.util.find_spec``); removed again afterwards."""
    _drop_vllm_modules(monkeypatch)
    monkeypatch.syspath_prepend(str(FAKES))
    import vllm

    vllm.reset()
    yield vllm
    _drop_vllm_modules()


# ----------------------------------------------------------------------------------------------
# A tiny R1-style model and R1-format traces (the library and `segattr score/view/export` tests)

#: R1-format records as a user's JSONL holds them: the output opens with ``<think>``, its segments start
#: with transition words, ``</think>`` closes the reasoning and a ``\boxed{}`` answer follows.
R1_TRACES = [
    {
        "id": "sum",
        "question": "What is 3 + 4 * 2?",
        "output": "<think>\nOkay, so 4 * 2 = 8, then 3 + 8 = 11."
        "\n\nWait, let me check: multiplication comes first, so 4 * 2 = 8."
        "\n\nAlternatively, 3 + 4 = 7 and 7 * 2 = 14, but that ignores the order."
        "\n\nSo the result is 11.\n</think>\n\nThe final answer is \\boxed{11}.",
        "answer": "11",
    },
    {
        "id": "double",
        "question": "What is 6 * 2?",
        "output": "<think>\nOkay, 6 * 2 = 12.\n\nWait, 6 + 6 = 12 too.\n</think>\n\nSo the answer is \\boxed{12}.",
        "answer": 12,
    },
    {
        "id": "wrong",
        "question": "What is 3 + 4 * 2?",
        "output": "<think>\nOkay, 3 + 4 = 7.\n\nThen 7 * 2 = 14.\n\nHowever, I will keep 14.\n</think>\n\n"
        "The final answer is \\boxed{14}.",
        "answer": "11",
    },
    {
        "id": "long",
        "question": "What is 5 + 5?",
        "output": "<think>\nOkay, 5 + 5 = 10."
        + "".join(f"\n\nWait, let me check it again: 5 + 5 = 10, step {i}." for i in range(12))
        + "\n</think>\n\nThe final answer is \\boxed{10}.",
        "answer": "10",
    },
    {
        "id": "unfinished",
        "question": "What is 2 + 2?",
        "output": "<think>\nOkay, 2 + 2 = 4.\n\nWait, let me think about",
        "answer": "4",
    },
]


@pytest.fixture(scope="session")
def r1_model_dir(tmp_path_factory):
    """A folder with a tiny random Qwen2 and a BPE tokenizer with the R1 chat template (pad = EOS, as in
    R1-Distill; the config names no pad token, so its embedding row is an ordinary, non-zero one)."""
    from segattr_utils.world.tokenizer import build_bpe_tokenizer

    from .fixtures.tiny_models import save_model_folder, tiny_qwen2

    corpus = [r["question"] + "\n" + r["output"] for r in R1_TRACES]
    corpus.append("Please reason step by step, and put your final answer within \\boxed{}.")
    tokenizer = build_bpe_tokenizer(corpus * 3, vocab_size=400)
    model = tiny_qwen2(tokenizer=tokenizer, max_position_embeddings=1024, initializer_range=0.1)
    return save_model_folder(tmp_path_factory.mktemp("tiny-r1") / "model", model, tokenizer)


@pytest.fixture
def r1_traces_file(tmp_path):
    """:data:`R1_TRACES` written as a JSONL file."""
    import json

    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in R1_TRACES), encoding="utf-8")
    return path


def hand_labels(tokenizer, prompt: str, segments, answer_part: str, selected) -> tuple[list[int], list[int]]:
    """Selective-SFT labels by hand (Eq. 9) from the offset mapping of ``prompt + trace + answer_part``: a
    token is trained when its first character lies in a selected segment or in the answer part, the
    prompt never; EOS is appended and trained. Returns ``(input_ids, labels)``."""
    text = prompt + "".join(segments) + answer_part
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans, cursor = [], len(prompt)
    for seg in segments:
        spans.append((cursor, cursor + len(seg)))
        cursor += len(seg)
    labels = []
    for token, (first, _) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        chosen = first >= cursor or any(s <= first < e for i, (s, e) in enumerate(spans) if i in set(selected))
        labels.append(token if chosen else -100)
    eos = tokenizer.eos_token_id
    return encoded["input_ids"] + [eos], labels + [eos]
