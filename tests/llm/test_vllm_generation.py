"""The vLLM backend (Sec. 3 setup, Sec. 4.1 sampling on GPUs) against the CPU stand-in of ``tests/fakes/vllm``,
which, like real vLLM, seeds every request on its own from ``SamplingParams.seed``.

The K samples of a prompt must be independent draws (one seed per request, not one per call), reproducible
for a run seed, all of a stage's missing requests must go to the engine in one call, a resumed run must give
the records of an uninterrupted one, the profile's ``generation.vllm`` settings must reach ``vllm.LLM``, no
Hugging Face copy of the weights may be loaded, and ``close()`` must release the engine.
"""

from __future__ import annotations

import json

import pytest

from segattr_utils import services
from segattr_utils.artifacts import RecordStore
from segattr_utils.config import load_profile
from segattr_utils.llm.generation import (
    GenerationTask,
    SamplingSettings,
    VLLMGenerator,
    derive_seed,
    run_generation,
    run_generation_tasks,
)
from segattr_utils.measures import judge as judge_lib
from segattr_utils.world.tokenizer import build_bpe_tokenizer

PROMPTS = {f"q{i}": f"What is {i} + {i}?" for i in range(5)}
SAMPLED = SamplingSettings(temperature=0.6, max_new_tokens=16)
GREEDY = SamplingSettings(temperature=0, max_new_tokens=16)


def _texts(store: RecordStore) -> dict[tuple, str]:
    return {tuple(r["key"]): r["text"] for r in store.records()}


def test_samples_of_a_prompt_are_independent_and_reproducible(fake_vllm, tmp_path):
    generator = VLLMGenerator("some/model")
    a = RecordStore(tmp_path / "a.jsonl")
    run_generation(generator, PROMPTS, 4, SAMPLED, a, batch_size=8, seed=7, tag="sample")
    texts = _texts(a)
    assert len(texts) == 5 * 4
    for qid in PROMPTS:
        assert len({texts[(qid, "sample", s)] for s in range(4)}) == 4  # K distinct samples of one prompt
    # every request carries its own seed, derived from (run seed, tag, question, sample)
    (prompts, params) = fake_vllm.ENGINES[0].calls[0]
    assert [p.seed for p in params] == [derive_seed(7, "sample", q, s) for q in PROMPTS for s in range(4)]
    assert prompts == [PROMPTS[q] for q in PROMPTS for _ in range(4)]
    # the same run seed gives the same samples; another seed other samples
    b = RecordStore(tmp_path / "b.jsonl")
    run_generation(generator, PROMPTS, 4, SAMPLED, b, batch_size=3, seed=7, tag="sample")
    assert _texts(b) == texts
    c = RecordStore(tmp_path / "c.jsonl")
    run_generation(generator, PROMPTS, 4, SAMPLED, c, batch_size=8, seed=8, tag="sample")
    assert all(_texts(c)[key] != text for key, text in texts.items())


def test_all_missing_requests_of_all_tasks_in_one_call(fake_vllm, tmp_path):
    generator = VLLMGenerator("some/model")
    store = RecordStore(tmp_path / "gen.jsonl")
    tasks = [GenerationTask("greedy", PROMPTS, 1, GREEDY), GenerationTask("sample", PROMPTS, 3, SAMPLED)]
    run_generation_tasks(generator, tasks, store, batch_size=2, seed=0, extra={"model": "m"})
    engine = fake_vllm.ENGINES[0]
    assert len(engine.calls) == 1  # batch_size does not cut the vLLM call
    prompts, params = engine.calls[0]
    assert len(prompts) == 5 + 15
    assert [p.temperature for p in params] == [0.0] * 5 + [0.6] * 15  # one SamplingParams per request
    assert all(p.max_tokens == 16 for p in params)
    records = store.records()
    assert [r["key"] for r in records] == [[q, "greedy", 0] for q in PROMPTS] + [
        [q, "sample", s] for q in PROMPTS for s in range(3)
    ]
    assert all(r["model"] == "m" and set(r) >= {"text", "n_tokens", "finished"} for r in records)
    # nothing left: no further call
    run_generation_tasks(generator, tasks, store, batch_size=2, seed=0)
    assert len(engine.calls) == 1


def test_resumed_run_gives_the_records_of_an_uninterrupted_run(fake_vllm, tmp_path):
    generator = VLLMGenerator("some/model")
    reference = RecordStore(tmp_path / "ref.jsonl")
    run_generation(generator, PROMPTS, 4, SAMPLED, reference, batch_size=4, seed=3, tag="sample")
    lines = (tmp_path / "ref.jsonl").read_text().splitlines(keepends=True)
    # an interrupted run: every other record, and a line cut mid-way
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(lines[::2]) + lines[1][:10])
    store = RecordStore(partial)
    assert len(store) == 10
    run_generation(generator, PROMPTS, 4, SAMPLED, store, batch_size=4, seed=3, tag="sample")
    prompts, _ = fake_vllm.ENGINES[0].calls[-1]
    assert len(prompts) == 10  # only the missing records are generated
    assert sorted(map(json.dumps, store.records())) == sorted(map(json.dumps, reference.records()))


def test_generate_checks_its_seeds(fake_vllm):
    generator = VLLMGenerator("some/model")
    with pytest.raises(ValueError, match="seeds"):
        generator.generate(["a", "b"], SAMPLED, [1])


def test_close_releases_the_engine(fake_vllm):
    from vllm.distributed import parallel_state

    generator = VLLMGenerator("some/model")
    engine = fake_vllm.ENGINES[0]
    generator.close()
    assert generator.llm is None
    assert engine.llm_engine.engine_core.shutdown_calls == 1
    assert parallel_state.CALLS == ["destroy_model_parallel", "destroy_distributed_environment"]
    generator.close()  # idempotent
    assert engine.llm_engine.engine_core.shutdown_calls == 1 and len(parallel_state.CALLS) == 2


def test_judge_round_is_one_call_with_a_seed_per_request(fake_vllm, tmp_path):
    generator = VLLMGenerator("some/model")
    store = RecordStore(tmp_path / "judge.jsonl")
    inputs = {f"t#{i}": f"judge segment {i}" for i in range(5)}
    judge_lib._run_round(generator, list(inputs), inputs, SAMPLED, 1, store, batch_size=2, seed=0, tag="judge")
    (calls,) = fake_vllm.ENGINES[0].calls
    assert [p.seed for p in calls[1]] == [derive_seed(0, "judge", 1, k) for k in inputs]
    assert len(store) == 5


# ----------------------------------------------------------------------------------------------
# Engine settings from the profile; no Hugging Face weights beside the engine


@pytest.fixture
def paper_profile(tmp_path, monkeypatch):
    """The paper profile with every model's ``local_path`` at a folder holding only a tokenizer, and
    ``services.load_model`` made to fail: nothing may load Hugging Face weights with the vllm backend."""
    folder = tmp_path / "tokenizer"
    build_bpe_tokenizer(["What is 1 + 1? Please reason step by step."] * 3, vocab_size=300).save_pretrained(folder)
    profile = load_profile("paper")
    for role in services.ROLES:
        profile["models"][role]["local_path"] = str(folder)
    profile["generation"]["backend"] = "vllm"
    profile["results_root"] = str(tmp_path / "results")

    def refuse(*args, **kwargs):
        raise AssertionError("services.load_model was called with the vllm backend")

    monkeypatch.setattr(services, "load_model", refuse)
    return profile


def test_engine_settings_from_the_profile_reach_vllm(fake_vllm, paper_profile):
    for role, backend in (("generator", "vllm"), ("judge", "auto")):
        generator, tokenizer = services.load_generator(paper_profile, role, backend)
        assert isinstance(generator, VLLMGenerator) and tokenizer is not None
    for engine in fake_vllm.ENGINES:
        assert engine.dtype == "bfloat16"
        assert engine.engine_kwargs == paper_profile.get_path("generation.vllm")
        assert engine.engine_kwargs["tensor_parallel_size"] == 4 and engine.engine_kwargs["max_model_len"] >= 32768
    assert [e.model for e in fake_vllm.ENGINES] == [paper_profile["models"]["generator"]["local_path"]] * 2
