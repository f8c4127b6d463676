"""Tests for segattr_utils.llm.generation: seeds, settings, resumable batched generation and the HF backend.

``run_generation`` is driven by a stub generator whose outputs are a pure function of (prompt, seed,
position in batch), so an interrupted-then-resumed run can be compared with an uninterrupted one
record by record. The Hugging Face backend runs a tiny randomly initialised Qwen2 with a locally built
BPE tokenizer (nothing is downloaded).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch

from segattr_utils.artifacts import RecordStore
from segattr_utils.llm import generation
from segattr_utils.llm.generation import (
    HFGenerator,
    SamplingSettings,
    derive_seed,
    make_generator,
    run_generation,
    sample_jobs,
)
from segattr_utils.world.tokenizer import build_bpe_tokenizer

from ..fixtures.tiny_models import tiny_qwen2

# ----------------------------------------------------------------------------------------------
# derive_seed / SamplingSettings


def test_derive_seed_stable_and_distinct():
    a = derive_seed(0, "sample", 3)
    assert a == derive_seed(0, "sample", 3)
    assert isinstance(a, int) and 0 <= a < 2**31
    # hand computation: first 4 bytes of sha256("0:sample:3"), little endian, top bit cleared
    digest = hashlib.sha256(b"0:sample:3").digest()
    assert a == int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
    seeds = {derive_seed(s, t, i) for s in (0, 1) for t in ("sample", "greedy") for i in range(50)}
    assert len(seeds) == 200
    assert derive_seed(1, 2) != derive_seed(2, 1)
    assert derive_seed("x") == derive_seed("x")


def test_sampling_settings_validation():
    s = SamplingSettings()
    assert s.temperature == 0.6 and not s.greedy
    assert SamplingSettings(temperature=0).greedy
    assert SamplingSettings(temperature=0.0, top_p=1.0, max_new_tokens=1).greedy
    for kwargs in (
        {"temperature": -0.1},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_p": -1},
        {"max_new_tokens": 0},
        {"max_new_tokens": -5},
    ):
        with pytest.raises(ValueError):
            SamplingSettings(**kwargs)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.temperature = 1.0  # frozen


def test_sample_jobs_question_major():
    assert sample_jobs(["a", "b"], 3) == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    assert sample_jobs(["a"], 0) == []


# ----------------------------------------------------------------------------------------------
# run_generation with a stub generator


class Interrupted(RuntimeError):
    pass


class StubGenerator:
    """Deterministic outputs from (prompt, seed, position); records every call; can fail after N calls."""

    def __init__(self, fail_after: int | None = None):
        self.calls: list[tuple[list[str], int]] = []
        self.fail_after = fail_after

    def generate(self, prompts, settings, seed):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise Interrupted("simulated crash")
        self.calls.append((list(prompts), seed))
        out = []
        for position, prompt in enumerate(prompts):
            h = hashlib.sha256(f"{prompt}|{seed}|{position}|{settings.temperature}".encode()).hexdigest()
            out.append(
                {
                    "text": f"{prompt} -> {h[:12]}",
                    "n_tokens": int(h[:4], 16) % 97 + 1,
                    "finished": int(h[4], 16) % 2 == 0,
                }
            )
        return out


PROMPTS = {f"q{i}": f"What is {i} + {i}?" for i in range(5)}
SETTINGS = SamplingSettings(temperature=0.6, max_new_tokens=16)


def _run(generator, store, n_samples=3, batch_size=4, seed=7, tag="sample", prompts=PROMPTS, **kw):
    run_generation(generator, prompts, n_samples, SETTINGS, store, batch_size, seed, tag, **kw)


def test_run_generation_all_jobs_once(tmp_path):
    store = RecordStore(tmp_path / "gen.jsonl")
    stub = StubGenerator()
    _run(stub, store)
    records = store.records()
    # 5 questions x 3 samples = 15 jobs in batches of 4 -> 4 batches (4, 4, 4, 3)
    assert [len(p) for p, _ in stub.calls] == [4, 4, 4, 3]
    assert len(records) == 15 and len(store) == 15
    keys = [r["key"] for r in records]
    assert keys == [[f"q{i}", "sample", s] for i in range(5) for s in range(3)]
    for r in records:
        assert r["question_id"] == r["key"][0] and r["tag"] == "sample" and r["sample"] == r["key"][2]
        assert r["text"].startswith(PROMPTS[r["question_id"]] + " -> ")
        assert set(r) == {"key", "question_id", "sample", "tag", "text", "n_tokens", "finished"}
    # the prompts of each batch follow job order
    flat = [p for prompts, _ in stub.calls for p in prompts]
    assert flat == [PROMPTS[f"q{i}"] for i in range(5) for _ in range(3)]
    # one distinct seed per batch
    seeds = [seed for _, seed in stub.calls]
    assert len(set(seeds)) == 4
    # a second run does nothing
    again = StubGenerator()
    _run(again, store)
    assert again.calls == [] and store.records() == records


def test_run_generation_seeds_depend_on_run_seed_tag_and_batch(tmp_path):
    a, b, c = StubGenerator(), StubGenerator(), StubGenerator()
    _run(a, RecordStore(tmp_path / "a.jsonl"), seed=1)
    _run(b, RecordStore(tmp_path / "b.jsonl"), seed=2)
    _run(c, RecordStore(tmp_path / "c.jsonl"), seed=1, tag="other")
    sa, sb, sc = ([s for _, s in g.calls] for g in (a, b, c))
    assert not set(sa) & set(sb) and not set(sa) & set(sc)
    # the same run seed and tag give the same seeds
    d = StubGenerator()
    _run(d, RecordStore(tmp_path / "d.jsonl"), seed=1)
    assert [s for _, s in d.calls] == sa


def test_run_generation_tags_share_a_store(tmp_path):
    store = RecordStore(tmp_path / "gen.jsonl")
    _run(StubGenerator(), store, n_samples=1, tag="greedy")
    _run(StubGenerator(), store, n_samples=2, tag="sample", extra={"model": "m0"})
    records = store.records()
    assert len(records) == 5 + 10
    assert {tuple(r["key"][:2]) for r in records if r["tag"] == "greedy"} == {(q, "greedy") for q in PROMPTS}
    assert all(r["model"] == "m0" for r in records if r["tag"] == "sample")
    assert all("model" not in r for r in records if r["tag"] == "greedy")


def test_run_generation_invalid_batch_size(tmp_path):
    with pytest.raises(ValueError):
        _run(StubGenerator(), RecordStore(tmp_path / "g.jsonl"), batch_size=0)


@pytest.mark.parametrize("fail_after", [0, 1, 3])
def test_interrupt_and_resume_equals_uninterrupted(tmp_path, fail_after):
    reference_stub = StubGenerator()
    reference = RecordStore(tmp_path / "ref.jsonl")
    _run(reference_stub, reference)

    path = tmp_path / "resumed.jsonl"
    crashing = StubGenerator(fail_after=fail_after)
    with pytest.raises(Interrupted):
        _run(crashing, RecordStore(path))
    assert len(RecordStore(path)) == 4 * fail_after  # finished batches only

    resumer = StubGenerator()
    store = RecordStore(path)
    _run(resumer, store)
    # only the unfinished batches were generated, with the seeds the uninterrupted run used for them
    assert resumer.calls == reference_stub.calls[fail_after:]
    assert store.records() == reference.records()
    assert path.read_bytes() == (tmp_path / "ref.jsonl").read_bytes()


def test_resume_after_crash_inside_a_batch(tmp_path):
    reference_stub = StubGenerator()
    reference = RecordStore(tmp_path / "ref.jsonl")
    _run(reference_stub, reference)
    lines = (tmp_path / "ref.jsonl").read_text().splitlines(keepends=True)
    # crash while writing batch 2 (records 8..11): records 8, 9 written, record 10 cut mid-line
    path = tmp_path / "partial.jsonl"
    path.write_text("".join(lines[:10]) + lines[10][:15])
    resumer = StubGenerator()
    store = RecordStore(path)
    assert len(store) == 10
    _run(resumer, store)
    # batch 2 regenerated whole (same seed, same prompts), batch 3 generated; earlier ones skipped
    assert resumer.calls == reference_stub.calls[2:]
    assert sorted(map(json.dumps, store.records())) == sorted(map(json.dumps, reference.records()))
    assert len(store.records()) == 15


# ----------------------------------------------------------------------------------------------
# make_generator


def test_make_generator_vllm_missing(monkeypatch):
    monkeypatch.setattr(generation, "vllm_available", lambda: False)
    with pytest.raises(ImportError, match="(?i)vllm"):
        make_generator("vllm", model_path="some/model")


def test_make_generator_vllm_really_missing():
    if generation.vllm_available():
        pytest.skip("vllm is installed here")
    with pytest.raises(ImportError) as info:
        make_generator("vllm", model_path="some/model")
    assert "vLLM is not installed" in str(info.value)
    assert "'hf'" in str(info.value)


def test_make_generator_unknown_and_hf_without_model(monkeypatch):
    with pytest.raises(ValueError, match="unknown generation backend"):
        make_generator("tensorrt")
    with pytest.raises(ValueError):
        make_generator("hf")
    monkeypatch.setattr(generation, "vllm_available", lambda: False)
    with pytest.raises(ValueError):
        make_generator("auto", model_path="x")  # falls back to hf, which needs a model


# ----------------------------------------------------------------------------------------------
# HFGenerator


CORPUS = [
    "Start with 7. Step 1: add 5. Step 2: multiply by 3. What is the result?",
    "Okay, so 7 + 5 = 12. Then 12 * 3 = 36.\n\nWait, let me check: 36 - 4 = 32. So the result is 32.",
    "The final answer is \\boxed{32}. Alternatively, step 2 gives 36.",
] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return build_bpe_tokenizer(CORPUS, vocab_size=300)


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    return tiny_qwen2(tokenizer=tokenizer, initializer_range=0.2).eval()


BATCH_PROMPTS = ["Start with 7.", "Okay, so 7 + 5 = 12. Then 12 * 3 = 36.\n\nWait, let me check", "Step 2"]


def test_hf_greedy_left_padding_matches_single_prompt(tokenizer, tiny_model):
    gen = HFGenerator(tiny_model, tokenizer)
    greedy = SamplingSettings(temperature=0, max_new_tokens=10)
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in BATCH_PROMPTS]
    assert len(set(lengths)) == 3  # the batch really needs padding
    side = tokenizer.padding_side
    batched = gen.generate(BATCH_PROMPTS, greedy, seed=0)
    assert tokenizer.padding_side == side  # restored
    alone = [gen.generate([p], greedy, seed=123)[0] for p in BATCH_PROMPTS]
    assert batched == alone
    for out in batched:
        assert set(out) == {"text", "n_tokens", "finished"}
        assert 1 <= out["n_tokens"] <= 10
        if not out["finished"]:
            assert out["n_tokens"] == 10
    # the outputs are not all the same (the test would be vacuous otherwise)
    assert len({o["text"] for o in batched}) > 1


def _manual_greedy(model, tokenizer, prompt, n):
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=ids).logits[0, -1]
            token = int(torch.argmax(logits))
            new.append(token)
            if token == tokenizer.eos_token_id:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return new


def test_hf_greedy_matches_manual_decoding(tokenizer, tiny_model):
    gen = HFGenerator(tiny_model, tokenizer)
    out = gen.generate(BATCH_PROMPTS, SamplingSettings(temperature=0, max_new_tokens=8), seed=0)
    for prompt, result in zip(BATCH_PROMPTS, out):
        tokens = _manual_greedy(tiny_model, tokenizer, prompt, 8)
        if tokenizer.eos_token_id in tokens:
            tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
        assert result["n_tokens"] == len(tokens)
        assert result["text"] == tokenizer.decode(tokens, skip_special_tokens=True)


def test_hf_sampling_reproducible_with_seed(tokenizer, tiny_model):
    gen = HFGenerator(tiny_model, tokenizer)
    settings = SamplingSettings(temperature=1.0, top_p=1.0, max_new_tokens=10)
    a = gen.generate(BATCH_PROMPTS, settings, seed=5)
    torch.manual_seed(999)  # global RNG state must not matter
    b = gen.generate(BATCH_PROMPTS, settings, seed=5)
    assert a == b
    others = [gen.generate(BATCH_PROMPTS, settings, seed=s) for s in (6, 7, 8)]
    assert any(o != a for o in others)
    assert tiny_model.training is False


class FakeModel(torch.nn.Module):
    """A stand-in for a causal LM whose ``generate`` appends planned tokens (records its inputs)."""

    def __init__(self, planned):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.planned = torch.tensor(planned)
        self.seen = {}

    def generate(self, input_ids, attention_mask, **kwargs):
        self.seen = {"input_ids": input_ids.clone(), "attention_mask": attention_mask.clone(), **kwargs}
        self.seen["training_during_generate"] = self.training
        return torch.cat([input_ids, self.planned[: input_ids.shape[0]]], dim=1)


def test_hf_n_tokens_counts_tokens_before_eos(tokenizer):
    eos = tokenizer.eos_token_id
    x = tokenizer("Wait", add_special_tokens=False)["input_ids"][0]
    a = tokenizer("Okay", add_special_tokens=False)["input_ids"][0]
    planned = [
        [x, a, eos, eos, eos],  # 2 tokens, finished
        [x, x, x, x, x],  # never finished: 5 tokens
        [eos, eos, eos, eos, eos],  # empty answer, finished
    ]
    model = FakeModel(planned)
    model.train()
    gen = HFGenerator(model, tokenizer)
    out = gen.generate(
        ["Start with 7.", "Okay, so 7 + 5 = 12. Then", "Step"],
        SamplingSettings(temperature=0, max_new_tokens=5),
        seed=0,
    )
    assert [o["n_tokens"] for o in out] == [2, 5, 0]
    assert [o["finished"] for o in out] == [True, False, True]
    assert out[0]["text"] == tokenizer.decode([x, a])
    assert out[2]["text"] == ""
    # left padding: the shorter prompts are padded on the left with the pad token and masked
    ids, mask = model.seen["input_ids"], model.seen["attention_mask"]
    lengths = [
        len(tokenizer(p, add_special_tokens=False)["input_ids"])
        for p in ["Start with 7.", "Okay, so 7 + 5 = 12. Then", "Step"]
    ]
    width = max(lengths)
    assert ids.shape[1] == width
    for row, n in enumerate(lengths):
        assert mask[row].tolist() == [0] * (width - n) + [1] * n
        assert ids[row, : width - n].tolist() == [tokenizer.pad_token_id] * (width - n)
    assert model.seen["do_sample"] is False and model.seen["max_new_tokens"] == 5
    assert model.seen["pad_token_id"] == tokenizer.pad_token_id
    assert model.seen["eos_token_id"] == eos
    assert model.seen["training_during_generate"] is False
    assert model.training is True  # mode restored


def test_hf_sampling_kwargs(tokenizer):
    model = FakeModel([[tokenizer.eos_token_id]])
    gen = HFGenerator(model, tokenizer)
    gen.generate(["Step"], SamplingSettings(temperature=0.6, top_p=0.9, max_new_tokens=3), seed=1)
    assert model.seen["do_sample"] is True
    assert model.seen["temperature"] == 0.6 and model.seen["top_p"] == 0.9


def test_tasks_on_hf_are_the_runs_of_each_task_in_turn(tmp_path):
    """With a batch-seeded generator (HF), several tasks give exactly the records and batch seeds of one
    ``run_generation`` per task (the vLLM-only single call must not change the HF path)."""
    from segattr_utils.llm.generation import GenerationTask, run_generation_tasks

    greedy = SamplingSettings(temperature=0, max_new_tokens=16)
    separate, together = StubGenerator(), StubGenerator()
    run_generation(separate, PROMPTS, 1, greedy, RecordStore(tmp_path / "a.jsonl"), 4, 7, "greedy")
    run_generation(separate, PROMPTS, 3, SETTINGS, RecordStore(tmp_path / "a.jsonl"), 4, 7, "sample")
    tasks = [GenerationTask("greedy", PROMPTS, 1, greedy), GenerationTask("sample", PROMPTS, 3, SETTINGS)]
    run_generation_tasks(together, tasks, RecordStore(tmp_path / "b.jsonl"), 4, 7)
    assert together.calls == separate.calls
    assert [seed for _, seed in together.calls] == [derive_seed(7, "greedy", i) for i in range(2)] + [
        derive_seed(7, "sample", i) for i in range(4)
    ]
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
