"""Tests for the loaders (segattr_utils.llm.models, segattr_utils.data.questions) and the SFT example builder
(segattr_utils.llm.training.build_training_example).

Nothing is downloaded: hub ids are requested with HF_HUB_OFFLINE=1 (and the datasets/huggingface_hub
offline switches forced on), local models are tiny Qwen2s saved into tmp_path, data fixtures are
written into tmp_path. Label expectations are computed by hand from the tokenizer's offset mapping.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from segattr_utils.data.questions import chat_prompt, load_hub_questions
from segattr_utils.llm.models import ModelUnavailableError, load_causal_lm, load_tokenizer, resolve_model_path
from segattr_utils.llm.training import build_training_example
from segattr_utils.world.tokenizer import EOS, build_bpe_tokenizer

from ..fixtures.tiny_models import save_model_folder, tiny_qwen2

HUB_MODEL = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"

CORPUS = [
    "Start with 7. Step 1: add 5. Step 2: multiply by 3. What is the result?",
    "Okay, so 7 + 5 = 12. Then 12 * 3 = 36.\n\nWait, let me check: 12 * 3 = 36. So the result is 36.",
    "\n</think>\n\nThe final answer is \\boxed{36}.",
    "Alternatively, step 2 gives 36.\n\nHowever, multiplying by 3 means adding the number 3 times.",
] * 5


@pytest.fixture
def offline_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    # the libraries read these switches at import time: force them on for this test as well
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    try:
        import datasets.config as ds_config

        monkeypatch.setattr(ds_config, "HF_HUB_OFFLINE", True, raising=False)
        monkeypatch.setattr(ds_config, "HF_DATASETS_OFFLINE", True, raising=False)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture(scope="module")
def tokenizer():
    return build_bpe_tokenizer(CORPUS, vocab_size=320)


@pytest.fixture(scope="module")
def saved_model(tokenizer, tmp_path_factory):
    model = tiny_qwen2(tokenizer=tokenizer).eval()
    return model, save_model_folder(tmp_path_factory.mktemp("tiny-model"), model, tokenizer)


# ----------------------------------------------------------------------------------------------
# models


def test_hub_model_offline_raises_with_instructions(offline_env):
    with pytest.raises(ModelUnavailableError) as info:
        load_causal_lm(HUB_MODEL)
    message = str(info.value)
    assert HUB_MODEL in message
    assert f"huggingface-cli download {HUB_MODEL} --local-dir" in message
    assert "local_path" in message
    assert isinstance(info.value, RuntimeError)


def test_hub_model_download_disallowed_explicitly(offline_env):
    with pytest.raises(ModelUnavailableError, match="DeepSeek-R1-Distill-Qwen-7B"):
        load_causal_lm(HUB_MODEL, allow_download=False)


def test_missing_local_path(offline_env, tmp_path):
    missing = tmp_path / "models" / "R1-7B"
    with pytest.raises(ModelUnavailableError) as info:
        load_causal_lm(HUB_MODEL, local_path=str(missing))
    message = str(info.value)
    # first that the folder does not exist (a typo is the usual cause), then how to download the model there
    assert message.startswith(f"the model folder {str(missing)!r} does not exist")
    assert f"huggingface-cli download {HUB_MODEL} --local-dir {missing}" in message
    assert message.index("does not exist") < message.index("download")
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        resolve_model_path(HUB_MODEL, str(missing))


def test_misspelt_local_path_names_the_close_folder(offline_env, tmp_path):
    (tmp_path / "models" / "R1-Distill-7B").mkdir(parents=True)
    typo = tmp_path / "models" / "R1-Distil-7B"
    with pytest.raises(ModelUnavailableError) as info:
        load_causal_lm(HUB_MODEL, local_path=str(typo))
    message = str(info.value)
    assert "does not exist" in message and str(tmp_path / "models" / "R1-Distill-7B") in message


@pytest.mark.parametrize("written", ["{tmp}/no-such-model", "./no-such-folder/model", "~/no/such/model/folder"])
def test_model_id_written_as_a_missing_folder(offline_env, tmp_path, written):
    name = written.format(tmp=tmp_path)
    with pytest.raises(ModelUnavailableError, match="does not exist") as info:
        load_causal_lm(name)
    assert "huggingface-cli" not in str(info.value)  # a path is not a hub id: no download advice


def test_owner_slash_name_next_to_a_local_folder_is_a_path(offline_env, tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelUnavailableError, match="'models/R1' does not exist"):
        resolve_model_path("models/R1")
    assert resolve_model_path(HUB_MODEL) == HUB_MODEL  # no deepseek-ai folder here: a hub id


def test_unknown_dtype(offline_env):
    with pytest.raises(ValueError, match="dtype"):
        load_causal_lm(HUB_MODEL, dtype="int3")


def test_resolve_model_path(tmp_path):
    assert resolve_model_path(HUB_MODEL) == HUB_MODEL
    assert resolve_model_path(HUB_MODEL, str(tmp_path)) == str(tmp_path)
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)


def test_local_tiny_model_round_trip(offline_env, tokenizer, saved_model):
    model, folder = saved_model
    for path_args in ({"model_id": str(folder)}, {"model_id": "tiny-r1-qwen2", "local_path": str(folder)}):
        loaded, loaded_tok = load_causal_lm(**path_args, dtype="float32", device="cpu")
        assert isinstance(loaded_tok, PreTrainedTokenizerFast)
        assert "Qwen" not in type(loaded_tok).__name__
        assert not loaded.training
        text = "Okay, so 7 + 5 = 12.\n\nWait, let me check</think>\n\nThe final answer is \\boxed{12}." + EOS
        assert (
            loaded_tok(text, add_special_tokens=False)["input_ids"]
            == tokenizer(text, add_special_tokens=False)["input_ids"]
        )
        assert loaded_tok.eos_token_id == tokenizer.eos_token_id
        assert loaded_tok.pad_token_id == tokenizer.pad_token_id
        assert loaded_tok.chat_template == tokenizer.chat_template
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            expected = model(input_ids=ids).logits
            got = loaded(input_ids=ids).logits
        assert torch.equal(expected, got)


def test_local_model_with_device_map(offline_env, saved_model, monkeypatch):
    """models.<role>.device_map reaches from_pretrained (which dispatches the model with accelerate) and
    the model is not moved afterwards; on this CPU-only machine every module maps to the CPU."""
    from segattr_utils import services
    from segattr_utils.config import load_profile
    from segattr_utils.llm import models

    model, folder = saved_model
    device_map = {"model.embed_tokens": "cpu", "model.layers": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    calls = []
    from_pretrained = models.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(
        models.AutoModelForCausalLM,
        "from_pretrained",
        lambda *args, **kwargs: calls.append(kwargs) or from_pretrained(*args, **kwargs),
    )
    loaded, _ = load_causal_lm(str(folder), dtype="float32", device_map=device_map)
    assert calls[-1]["device_map"] == device_map and not loaded.training
    ids = torch.tensor([[5, 9, 12, 40]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)

    seen = {}
    monkeypatch.setattr(services, "load_causal_lm", lambda *args, **kwargs: seen.update(kwargs))
    profile = load_profile("paper")
    profile["models"]["generator"]["device_map"] = "auto"
    services.load_model(profile, "generator")
    assert seen["device_map"] == "auto"
    services.load_model(profile, "generator", device="cuda:1")  # an explicit device wins
    assert seen["device_map"] is None and seen["device"] == "cuda:1"


def test_load_tokenizer_from_folder(tokenizer, saved_model):
    _, folder = saved_model
    loaded = load_tokenizer(str(folder))
    assert isinstance(loaded, PreTrainedTokenizerFast) and "Qwen" not in type(loaded).__name__
    text = "Start with 7. Step 1: add 5."
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]


# ----------------------------------------------------------------------------------------------
# questions

LIMO_ROWS = [
    {"question": "What is 2 + 2?", "solution": "2 + 2 = 4.", "answer": "4"},
    {"question": "Compute 3 * 5.", "solution": "3 * 5 = 15.", "answer": " 15 \n"},
    {"question": "Half of 1?", "solution": "It is 1/2.", "answer": "\\frac{1}{2}"},
]
LIMO_FIELDS = {"question": "question", "solution": "solution", "answer": "answer"}


def _expected(suite, rows=LIMO_ROWS):
    return [
        {
            "id": f"{suite}-{i:05d}",
            "suite": suite,
            "question": r["question"],
            "answer": r["answer"].strip(),
            "solution": r["solution"],
        }
        for i, r in enumerate(rows)
    ]


def test_local_jsonl(offline_env, tmp_path):
    path = tmp_path / "limo.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in LIMO_ROWS) + "\n")
    spec = {"hub_id": "GAIR/LIMO", "local_path": str(path), "fields": LIMO_FIELDS}
    questions = load_hub_questions(spec, "train")
    assert questions == _expected("train")
    assert questions[1]["answer"] == "15"
    assert load_hub_questions(spec, "train", limit=2) == _expected("train")[:2]


def test_local_parquet(offline_env, tmp_path):
    path = tmp_path / "limo.parquet"
    pd.DataFrame(LIMO_ROWS).to_parquet(path, index=False)
    spec = {"hub_id": "GAIR/LIMO", "local_path": str(path), "fields": LIMO_FIELDS}
    assert load_hub_questions(spec, "limo") == _expected("limo")
    assert len(load_hub_questions(spec, "limo", limit=1)) == 1


def test_local_json_list(offline_env, tmp_path):
    path = tmp_path / "limo.json"
    path.write_text(json.dumps(LIMO_ROWS))
    spec = {"local_path": str(path), "fields": LIMO_FIELDS}
    assert load_hub_questions(spec, "train") == _expected("train")


def test_field_mapping(offline_env, tmp_path):
    rows = [
        {"problem": "What is 6 / 3?", "final": 2, "extra": "x"},
        {"problem": "What is 1 + 0?", "final": 1, "extra": "y"},
    ]
    path = tmp_path / "other.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    spec = {"hub_id": "someone/other", "local_path": str(path), "fields": {"question": "problem", "answer": "final"}}
    assert load_hub_questions(spec, "test") == [
        {"id": "test-00000", "suite": "test", "question": "What is 6 / 3?", "answer": "2"},
        {"id": "test-00001", "suite": "test", "question": "What is 1 + 0?", "answer": "1"},
    ]


def test_olympiadbench_context_precedes_the_question(offline_env, tmp_path):
    rows = [  # the hub schema of math-ai/olympiadbench: question, final_answer (a list), context
        {"question": "Find $v$.", "final_answer": ["$3$"], "context": "A ball moves at speed $v$ with $v^2 = 9$."},
        {"question": "Compute $1 + 1$.", "final_answer": ["$2$"], "context": None},
        {"question": "Compute $2 + 2$.", "final_answer": ["4"], "context": ""},
    ]
    path = tmp_path / "olympiadbench.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    fields = {"question": "question", "answer": "final_answer", "context": "context"}
    spec = {"hub_id": "math-ai/olympiadbench", "local_path": str(path), "fields": fields}
    questions = load_hub_questions(spec, "OlympiadBench")
    assert [q["question"] for q in questions] == [
        "A ball moves at speed $v$ with $v^2 = 9$.\nFind $v$.",
        "Compute $1 + 1$.",
        "Compute $2 + 2$.",
    ]
    assert [q["answer"] for q in questions] == ["3", "2", "4"]
    # without a context mapping the column is ignored, as for every other dataset
    del spec["fields"]["context"]
    assert load_hub_questions(spec, "OlympiadBench")[0]["question"] == "Find $v$."


def test_default_fields(offline_env, tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text(json.dumps({"question": "Q?", "answer": "7"}) + "\n")
    assert load_hub_questions({"local_path": str(path)}, "s") == [
        {"id": "s-00000", "suite": "s", "question": "Q?", "answer": "7"}
    ]


def test_missing_field(offline_env, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "Q?", "solution": "s"}) + "\n")
    spec = {"hub_id": "GAIR/LIMO", "local_path": str(path), "fields": LIMO_FIELDS}
    with pytest.raises(ValueError, match="answer"):
        load_hub_questions(spec, "train")


def test_unsupported_local_format(offline_env, tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("Q?\n")
    with pytest.raises(ValueError):
        load_hub_questions({"local_path": str(path)}, "train")


def test_missing_local_file(offline_env, tmp_path):
    missing = tmp_path / "nope" / "limo.jsonl"
    spec = {"hub_id": "GAIR/LIMO", "local_path": str(missing), "fields": LIMO_FIELDS}
    with pytest.raises(ModelUnavailableError) as info:
        load_hub_questions(spec, "train")
    message = str(info.value)
    assert str(missing) in message and "GAIR/LIMO" in message
    assert "huggingface-cli download --repo-type dataset GAIR/LIMO" in message


def test_hub_dataset_offline(offline_env, tmp_path, monkeypatch):
    import datasets.config as ds_config

    # an empty cache, so a copy cached on this machine cannot satisfy the request
    monkeypatch.setattr(ds_config, "HF_DATASETS_CACHE", tmp_path / "ds-cache", raising=False)
    spec = {"hub_id": "GAIR/LIMO", "split": "train", "local_path": None, "fields": LIMO_FIELDS}
    with pytest.raises(ModelUnavailableError) as info:
        load_hub_questions(spec, "train")
    message = str(info.value)
    assert "GAIR/LIMO" in message
    assert "HF_HUB_OFFLINE" in message
    assert "huggingface-cli download --repo-type dataset GAIR/LIMO --local-dir" in message
    assert "local_path" in message


# ----------------------------------------------------------------------------------------------
# build_training_example

SEGMENTS = [
    "Okay, so 7 + 5 = 12. Then 12 * 3 = 36.",
    "\n\nWait, let me check: 12 * 3 = 36.",
    "\n\nHowever, multiplying by 3 means adding the number 3 times. So the result is 36.",
]
ANSWER_PART = "\n</think>\n\nThe final answer is \\boxed{36}."


def _hand_labels(tokenizer, prompt, segments, answer_part, selected):
    """Labels from the offsets: a token belongs to the piece holding its first character; the prompt
    is never trained, the answer part and the appended EOS always are."""
    text = prompt + "".join(segments) + answer_part
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    bounds = [len(prompt)]
    for seg in segments:
        bounds.append(bounds[-1] + len(seg))
    labels = []
    for token, (start, _end) in zip(ids, offsets):
        if start < len(prompt):
            labels.append(-100)
        elif start >= bounds[-1]:
            labels.append(token)  # answer part
        else:
            piece = max(i for i in range(len(segments)) if bounds[i] <= start)
            labels.append(token if piece in selected else -100)
    return ids + [tokenizer.eos_token_id], labels + [tokenizer.eos_token_id]


@pytest.fixture(scope="module")
def prompt(tokenizer):
    return chat_prompt(tokenizer, "Start with 7. Step 1: add 5. Step 2: multiply by 3. What is the result?")


def test_chat_prompt_r1_layout(tokenizer, prompt):
    assert prompt.startswith(tokenizer.bos_token + "<｜User｜>Start with 7.")
    assert prompt.endswith("<｜Assistant｜><think>\n")


def test_training_example_full(tokenizer, prompt):
    example = build_training_example(tokenizer, prompt, SEGMENTS, ANSWER_PART)
    ids, labels = _hand_labels(tokenizer, prompt, SEGMENTS, ANSWER_PART, selected={0, 1, 2})
    assert example.input_ids == ids
    assert example.labels == labels
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    # the prompt ends with "\n" after an added token, so it tokenises on its own
    assert ids[:n_prompt] == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert example.labels[:n_prompt] == [-100] * n_prompt
    assert example.labels[n_prompt:] == example.input_ids[n_prompt:]  # everything after the prompt
    assert example.input_ids[-1] == tokenizer.eos_token_id and example.labels[-1] == tokenizer.eos_token_id
    assert example.n_trained == len(ids) - n_prompt


def test_training_example_selected_first_segment(tokenizer, prompt):
    example = build_training_example(tokenizer, prompt, SEGMENTS, ANSWER_PART, selected=[0])
    ids, labels = _hand_labels(tokenizer, prompt, SEGMENTS, ANSWER_PART, selected={0})
    assert example.input_ids == ids
    assert example.labels == labels
    trained_text = tokenizer.decode([t for t in example.labels if t != -100 and t != tokenizer.eos_token_id])
    # segment 0 (plus the ".\n\n"-style token it shares with segment 1) and the whole answer part
    assert trained_text.startswith("Okay, so 7 + 5 = 12.")
    assert "Wait" not in trained_text and "However" not in trained_text
    assert "</think>" in trained_text and "\\boxed{36}" in trained_text
    assert example.labels[-1] == tokenizer.eos_token_id


def test_training_example_selected_middle_segment(tokenizer, prompt):
    example = build_training_example(tokenizer, prompt, SEGMENTS, ANSWER_PART, selected=[1])
    _, labels = _hand_labels(tokenizer, prompt, SEGMENTS, ANSWER_PART, selected={1})
    assert example.labels == labels
    trained_text = tokenizer.decode([t for t in labels if t != -100])
    assert "Wait" in trained_text and "Okay" not in trained_text and "However" not in trained_text


def test_training_example_straddling_token_goes_to_earlier_segment(tokenizer, prompt):
    # ".\n\n" at the end of segment 0 is one token that straddles the boundary to "\n\nWait"
    text = prompt + "".join(SEGMENTS) + ANSWER_PART
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    boundary = len(prompt) + len(SEGMENTS[0])
    straddling = [i for i, (s, e) in enumerate(encoded["offset_mapping"]) if s < boundary < e]
    assert straddling, "the test corpus should make '.\\n\\n' a single token"
    index = straddling[0]
    assert build_training_example(tokenizer, prompt, SEGMENTS, ANSWER_PART, selected=[0]).labels[index] != -100
    assert build_training_example(tokenizer, prompt, SEGMENTS, ANSWER_PART, selected=[1]).labels[index] == -100


def test_training_example_no_eos_and_errors(tokenizer, prompt):
    example = build_training_example(tokenizer, prompt, SEGMENTS, ANSWER_PART, selected=[], append_eos=False)
    ids, labels = _hand_labels(tokenizer, prompt, SEGMENTS, ANSWER_PART, selected=set())
    assert example.input_ids == ids[:-1]
    assert example.labels == labels[:-1]
    trained_text = tokenizer.decode([t for t in example.labels if t != -100])
    assert "</think>" in trained_text and "Okay" not in trained_text and "Wait" not in trained_text
    with pytest.raises(ValueError):
        build_training_example(tokenizer, prompt, [], ANSWER_PART)
    with pytest.raises(ValueError):
        build_training_example(tokenizer, prompt, SEGMENTS, ANSWER_PART, selected=[4])


# ----------------------------------------------------------------------------------------------
# offline switch


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("YES", True), ("0", False), ("", False)])
def test_offline_switch(monkeypatch, value, expected):
    from segattr_utils.llm.models import offline

    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert offline() is expected


def test_offline_switch_on(monkeypatch):
    from segattr_utils.llm.models import offline

    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "on")
    assert offline() is True
