"""The vLLM backend (Sec. 3 setup, Sec. 4.1 sampling on GPUs) against the CPU stand-in of ``tests/fakes/vllm``,
which, like real vLLM, seeds every request on its own from ``SamplingParams.seed``.

The K samples of a prompt must be independent draws (one seed per request, not one per call), reproducible
for a run seed, a stage's missing requests must go to the engine in chunks of at most
``generation.vllm_chunk_requests`` (whole prompt groups where they fit) with each chunk stored as it ends, a
resumed run must give the records of an uninterrupted one (the stand-in's samples do not depend on the batch,
as vLLM's with batch invariance), the profile's ``generation.vllm`` settings must reach ``vllm.LLM`` (and
``batch_invariant`` the engine processes' environment), no Hugging Face copy of the weights may be loaded, and
``close()`` must release the engine. The engine must see the prompt ids the Hugging Face paths use (one BOS),
data parallel workers (real subprocesses running the stand-in) must give the outputs of one engine, and a
worker that dies (SIGKILL) must cost no other worker's finished chunks.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from tokenizers import processors

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
from segattr_utils.llm.vllm_parallel import Devices
from segattr_utils.llm.vllm_worker import WorkerError
from segattr_utils.measures import judge as judge_lib
from segattr_utils.world.tokenizer import BOS, build_bpe_tokenizer

PROMPTS = {f"q{i}": f"What is {i} + {i}?" for i in range(5)}
SAMPLED = SamplingSettings(temperature=0.6, max_new_tokens=16)
GREEDY = SamplingSettings(temperature=0, max_new_tokens=16)
FAKES = Path(__file__).resolve().parents[1] / "fakes"
CORPUS = ["What is 1 + 1? Please reason step by step, and put your final answer within \\boxed{}."] * 3
#: A tiny Qwen2 config (1.5B's head counts: 12 attention, 2 KV heads), for tensor_parallel_size: auto.
TINY_CONFIG = {
    "model_type": "qwen2",
    "hidden_size": 96,
    "intermediate_size": 192,
    "num_hidden_layers": 2,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 300,
}


def r1_like_tokenizer():
    """The project's test tokenizer that, as R1-Distill's (``add_bos_token: true``), prepends BOS when
    called with ``add_special_tokens=True``; its chat template writes BOS itself."""
    tokenizer = build_bpe_tokenizer(CORPUS, vocab_size=300)
    tokenizer.backend_tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tokenizer.bos_token_id)]
            ),
        ]
    )
    return tokenizer


TOKENIZER = build_bpe_tokenizer(CORPUS, vocab_size=300)


def _generator(model: str = "some/model", **kwargs) -> VLLMGenerator:
    return VLLMGenerator(model, tokenizer=TOKENIZER, **kwargs)


def _model_folder(folder: Path, tokenizer=None) -> Path:
    """A folder as vLLM loads a model (config.json and tokenizer; no weights: the stand-in needs none)."""
    (tokenizer or TOKENIZER).save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG))
    return folder


def _texts(store: RecordStore) -> dict[tuple, str]:
    return {tuple(r["key"]): r["text"] for r in store.records()}


def test_samples_of_a_prompt_are_independent_and_reproducible(fake_vllm, tmp_path):
    generator = _generator()
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


def test_all_missing_requests_of_all_tasks_in_one_chunk_when_they_fit(fake_vllm, tmp_path):
    generator = _generator()
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
    generator = _generator()
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
    generator = _generator()
    with pytest.raises(ValueError, match="seeds"):
        generator.generate(["a", "b"], SAMPLED, [1])


def test_close_releases_the_engine(fake_vllm):
    from vllm.distributed import parallel_state

    generator = _generator()
    engine = fake_vllm.ENGINES[0]
    generator.close()
    assert generator.llm is None
    assert engine.llm_engine.engine_core.shutdown_calls == 1
    assert parallel_state.CALLS == ["destroy_model_parallel", "destroy_distributed_environment"]
    generator.close()  # idempotent
    assert engine.llm_engine.engine_core.shutdown_calls == 1 and len(parallel_state.CALLS) == 2


def test_judge_round_is_one_call_with_a_seed_per_request(fake_vllm, tmp_path):
    generator = _generator()
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
    """The paper profile with every model's ``local_path`` at a folder holding a tokenizer and a config (no
    weights), no GPU visible, and ``services.load_model`` made to fail: nothing may load Hugging Face weights
    with the vllm backend."""
    from segattr_utils.llm import vllm_parallel

    folder = _model_folder(tmp_path / "model")
    profile = load_profile("paper")
    for role in services.ROLES:
        profile["models"][role]["local_path"] = str(folder)
    profile["generation"]["backend"] = "vllm"
    profile["results_root"] = str(tmp_path / "results")

    def refuse(*args, **kwargs):
        raise AssertionError("services.load_model was called with the vllm backend")

    monkeypatch.setattr(services, "load_model", refuse)
    monkeypatch.setattr(vllm_parallel, "visible_devices", lambda: Devices(()))
    return profile


def test_engine_settings_from_the_profile_reach_vllm(fake_vllm, paper_profile):
    """paper.yaml's TP and DP are ``auto``: resolved before vLLM sees them (TP 1 for the 1.5B-8B models;
    DP is the project's own, never a ``vllm.LLM`` argument); every other setting reaches vLLM as it is."""
    settings = paper_profile.get_path("generation.vllm")
    assert settings["tensor_parallel_size"] == settings["data_parallel_size"] == "auto"
    for role, backend in (("generator", "vllm"), ("judge", "auto")):
        generator, tokenizer = services.load_generator(paper_profile, role, backend)
        assert isinstance(generator, VLLMGenerator) and tokenizer is not None
        assert generator.tokenizer is tokenizer and generator.workers is None  # no GPU: one engine, in-process
    assert generator.chunk_requests == paper_profile.get_path("generation.vllm_chunk_requests")
    assert settings["batch_invariant"] is False and generator.batch_invariant is False
    # DP is the project's own and batch_invariant an environment variable: neither is a vllm.LLM argument
    expected = {k: v for k, v in settings.items() if k not in ("data_parallel_size", "batch_invariant")}
    expected |= {"tensor_parallel_size": 1}
    for engine in fake_vllm.ENGINES:
        assert engine.dtype == "bfloat16"
        assert engine.engine_kwargs == expected and engine.engine_kwargs["max_model_len"] >= 32768
    assert [e.model for e in fake_vllm.ENGINES] == [paper_profile["models"]["generator"]["local_path"]] * 2


def test_bad_chunk_or_batch_invariance_settings_fail_before_anything_loads(fake_vllm, paper_profile, monkeypatch):
    monkeypatch.setattr(services, "load_tokenizer", lambda *a: pytest.fail("the tokenizer was loaded"))
    for bad in (0, -5, 1.5, "many", None):
        paper_profile["generation"]["vllm_chunk_requests"] = bad
        with pytest.raises(ValueError, match=f"generation.vllm_chunk_requests must be a positive integer, got {bad!r}"):
            services.load_generator(paper_profile, "generator", "vllm")
    paper_profile["generation"]["vllm_chunk_requests"] = 512
    paper_profile["generation"]["vllm"]["batch_invariant"] = "false"
    with pytest.raises(ValueError, match="generation.vllm.batch_invariant must be true or false, got 'false'"):
        services.load_generator(paper_profile, "generator", "vllm")
    assert fake_vllm.ENGINES == []


# ----------------------------------------------------------------------------------------------
# The prompt ids the engine sees


def test_the_engine_sees_the_hf_prompt_ids_with_one_bos(fake_vllm, tmp_path):
    """With R1-Distill's tokenizer (BOS added by ``add_special_tokens=True``) a text prompt would reach
    vLLM 0.30.0 with two BOS tokens; the generator sends the ids of the HF paths (the chat template's)."""
    tokenizer = r1_like_tokenizer()
    folder = _model_folder(tmp_path / "model", tokenizer)
    question = services.prompt(tokenizer, "What is 3 + 4?")
    template = tokenizer.apply_chat_template(
        [{"role": "user", "content": services.user_message("What is 3 + 4?")}],
        tokenize=True,
        add_generation_prompt=True,
    )
    template_ids = list(template["input_ids"] if hasattr(template, "keys") else template)
    hf_ids = tokenizer(question, add_special_tokens=False)["input_ids"]
    assert hf_ids == template_ids and template_ids[:2] == [tokenizer.bos_token_id, template_ids[1]]
    generator = VLLMGenerator(str(folder), tokenizer=tokenizer)
    generator.generate([question, question], GREEDY, [1, 2])
    (engine,) = fake_vllm.ENGINES
    assert engine.prompt_token_ids[-1] == [hf_ids, hf_ids]
    assert engine.calls[-1][0] == [question, question]  # the text rides along: no detokenisation
    assert generator.engine_prompts([question]) == [{"prompt_token_ids": hf_ids, "prompt": question}]
    # what a text prompt would have given (the bug this guards against)
    text_ids = engine.generate([question])[0].prompt_token_ids
    assert text_ids[:2] == [tokenizer.bos_token_id] * 2 and text_ids[1:] == hf_ids


def test_samples_do_not_depend_on_the_prompt_form(fake_vllm, tmp_path):
    """The stand-in samples from the prompt text, whether sent as text or as ids with their text."""
    generator = _generator(str(_model_folder(tmp_path / "model")))
    outputs = generator.generate(list(PROMPTS.values()), SAMPLED, list(range(5)))
    llm = fake_vllm.ENGINES[0]
    from vllm import SamplingParams

    as_text = llm.generate(
        list(PROMPTS.values()), [SamplingParams(temperature=0.6, max_tokens=16, seed=i) for i in range(5)]
    )
    assert [o["text"] for o in outputs] == [o.outputs[0].text for o in as_text]


# ----------------------------------------------------------------------------------------------
# Data parallel workers


@pytest.fixture
def worker_env(fake_vllm, monkeypatch, tmp_path):
    """Workers are real subprocesses: they find the stand-in through PYTHONPATH and log to FAKE_VLLM_LOG."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(FAKES), os.environ.get("PYTHONPATH")) if p))
    log = tmp_path / "vllm_events.jsonl"
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
    return log


def _events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def _stage09_like_tasks() -> list[GenerationTask]:
    """Two benchmarks, greedy and sampled outputs of every question (the samples share their prompt)."""
    other = {f"b{i}": f"Compute {i} times {i + 2}." for i in range(4)}
    return [
        GenerationTask("greedy-A", PROMPTS, 1, GREEDY),
        GenerationTask("sample-A", PROMPTS, 3, SAMPLED),
        GenerationTask("greedy-B", other, 1, GREEDY),
        GenerationTask("sample-B", other, 4, SAMPLED),
    ]


def test_data_parallel_workers_give_the_outputs_of_one_engine(worker_env, fake_vllm, tmp_path):
    folder = str(_model_folder(tmp_path / "model"))
    settings = {"tensor_parallel_size": "auto", "data_parallel_size": "auto", "max_model_len": 1024}
    one = _generator(folder, devices=Devices(()), **settings)
    assert one.workers is None and one.plan.engine_kwargs == {"tensor_parallel_size": 1, "max_model_len": 1024}
    single = RecordStore(tmp_path / "dp1.jsonl")
    run_generation_tasks(one, _stage09_like_tasks(), single, batch_size=4, seed=11)
    one.close()
    started = time.perf_counter()
    two = _generator(folder, devices=Devices(("fake0", "fake1")), **settings)
    assert two.llm is None and two.plan.device_groups == (("fake0",), ("fake1",))
    assert len(fake_vllm.ENGINES) == 1  # the workers' engines live in the workers, none in this process
    double = RecordStore(tmp_path / "dp2.jsonl")
    run_generation_tasks(two, _stage09_like_tasks(), double, batch_size=4, seed=11)
    # the same records; their lines in the order the workers' chunks finished
    assert sorted(map(json.dumps, double.records())) == sorted(map(json.dumps, single.records()))
    pool = two.workers
    two.close()
    assert pool.exit_codes() == [0, 0] and not pool.folder.exists()
    print(f"DP=2 start, call and stop: {time.perf_counter() - started:.1f} s")

    events = [e for e in _events(worker_env) if e["pid"] != os.getpid()]
    starts = {e["pid"]: e for e in events if e["event"] == "start"}
    assert sorted(e["cuda_visible_devices"] for e in starts.values()) == ["fake0", "fake1"]
    assert all(e["engine_kwargs"] == {"tensor_parallel_size": 1, "max_model_len": 1024} for e in starts.values())
    prompts_by_worker = {
        pid: {r["prompt"] for e in events if e["pid"] == pid and e["event"] == "generate" for r in e["requests"]}
        for pid in starts
    }
    first, second = prompts_by_worker.values()
    assert first and second and not first & second  # every prompt's requests in one worker
    assert len(first | second) == len(PROMPTS) + 4
    assert {e["pid"] for e in events if e["event"] == "shutdown"} == set(starts)  # each worker shut its engine down


def test_a_failing_worker_raises_with_the_end_of_its_log(worker_env, fake_vllm, tmp_path):
    folder = str(_model_folder(tmp_path / "model"))
    generator = _generator(folder, devices=Devices(("fake0", "fake1")), data_parallel_size=2, max_model_len=24)
    long = "What is " + " + ".join(["1"] * 40) + "?"
    try:
        with pytest.raises(WorkerError, match="maximum model length") as failure:
            generator.generate([long, "What is 1 + 1?"], GREEDY, [0, 1])
        assert "exited with code 1" in str(failure.value) and "Traceback" in str(failure.value)
    finally:
        pool = generator.workers
        generator.close()
    assert all(code is not None for code in pool.exit_codes())


def test_a_worker_that_cannot_start_raises_at_once(worker_env, fake_vllm, tmp_path):
    """An engine that fails to start (here: a dtype vLLM does not know) fails the constructor, with the log."""
    folder = str(_model_folder(tmp_path / "model"))
    with pytest.raises(WorkerError, match="starting its engine(.|\\n)*Unknown dtype: 'int3'"):
        _generator(folder, dtype="int3", devices=Devices(("fake0", "fake1")), data_parallel_size=2)


# ----------------------------------------------------------------------------------------------
# Chunks: what a crash leaves behind, and the resume


def _chunked_tasks() -> list[GenerationTask]:
    return [GenerationTask("greedy", PROMPTS, 1, GREEDY), GenerationTask("sample", PROMPTS, 3, SAMPLED)]


def test_chunked_generation_gives_the_records_of_one_call(fake_vllm, tmp_path):
    """5 prompts x (1 greedy + 3 samples) = 5 prompt groups of 4 requests; chunks of at most 8 requests hold
    whole groups (8, 8, 4), and the stored records equal those of one call."""
    whole = RecordStore(tmp_path / "whole.jsonl")
    run_generation_tasks(_generator(chunk_requests=10_000), _chunked_tasks(), whole, batch_size=4, seed=5)
    assert [len(prompts) for prompts, _ in fake_vllm.ENGINES[0].calls] == [20]
    chunked = RecordStore(tmp_path / "chunked.jsonl")
    run_generation_tasks(_generator(chunk_requests=8), _chunked_tasks(), chunked, batch_size=4, seed=5)
    calls = fake_vllm.ENGINES[1].calls
    assert [len(prompts) for prompts, _ in calls] == [8, 8, 4]
    assert all(prompts.count(p) == 4 for prompts, _ in calls for p in prompts)  # a prompt's requests together
    # the same records; the store's lines chunk by chunk (a chunk holds a prompt's greedy and sampled outputs)
    assert sorted(map(json.dumps, chunked.records())) == sorted(map(json.dumps, whole.records()))


def test_a_group_larger_than_a_chunk_is_split():
    from segattr_utils.llm.vllm_requests import chunk_groups

    groups = [{"prompt": p, "requests": [{"index": i} for i in range(n)]} for p, n in (("a", 2), ("b", 5), ("c", 1))]
    chunks = chunk_groups(groups, 3)
    assert [[(g["prompt"], len(g["requests"])) for g in chunk] for chunk in chunks] == [
        [("a", 2)],
        [("b", 3)],
        [("b", 2)],
        [("c", 1)],
    ]
    for bad in (0, -1, 2.5, True, "2048"):
        with pytest.raises(ValueError, match="vllm_chunk_requests must be a positive integer"):
            chunk_groups(groups, bad)


def test_a_crash_keeps_the_finished_chunks_and_a_resume_completes(fake_vllm, tmp_path, monkeypatch):
    """One engine in this process fails in its third chunk: the first two chunks' records are stored; a
    resumed run sends only the rest and ends with the records of an uninterrupted run."""
    reference = RecordStore(tmp_path / "reference.jsonl")
    run_generation_tasks(_generator(chunk_requests=4), _chunked_tasks(), reference, batch_size=4, seed=2)
    fake_vllm.reset()
    monkeypatch.setenv("FAKE_VLLM_FAIL_AFTER_CALLS", "2")
    store = RecordStore(tmp_path / "gen.jsonl")
    with pytest.raises(RuntimeError, match="fake engine failure after 2 calls"):
        run_generation_tasks(_generator(chunk_requests=4), _chunked_tasks(), store, batch_size=4, seed=2)
    first_two = sum(len(prompts) for prompts, _ in fake_vllm.ENGINES[0].calls)
    assert first_two == 4 + 4 and len(RecordStore(store.path)) == first_two
    monkeypatch.delenv("FAKE_VLLM_FAIL_AFTER_CALLS")
    resumed = RecordStore(store.path)
    run_generation_tasks(_generator(chunk_requests=4), _chunked_tasks(), resumed, batch_size=4, seed=2)
    assert sum(len(prompts) for prompts, _ in fake_vllm.ENGINES[1].calls) == 20 - first_two  # only the missing
    assert sorted(map(json.dumps, resumed.records())) == sorted(map(json.dumps, reference.records()))


def test_a_dead_worker_does_not_cost_the_other_workers_outputs(worker_env, fake_vllm, tmp_path, monkeypatch):
    """Default chunk size (each worker's share in one chunk): the worker given q3 is killed; the other
    worker's outputs, finished and written to the exchange folder, reach the store before WorkerError is
    raised and the folder is removed (they were deleted unread when the pool stopped)."""
    folder = str(_model_folder(tmp_path / "model"))
    prompts = PROMPTS | {f"r{i}": f"What is {i} - 1?" for i in range(5)}
    monkeypatch.setenv("FAKE_VLLM_KILL_ON", PROMPTS["q3"])
    store = RecordStore(tmp_path / "gen.jsonl")
    generator = _generator(folder, devices=Devices(("fake0", "fake1")), data_parallel_size=2)
    try:
        with pytest.raises(WorkerError, match="exited with code -9"):
            run_generation_tasks(generator, [GenerationTask("sample", prompts, 2, SAMPLED)], store, 4, seed=9)
    finally:
        generator.close()
    answered = [e for e in _events(worker_env) if e["event"] == "generate"]
    assert len(answered) == 1 and len(answered[0]["requests"]) > 0  # the surviving worker's one call
    stored = RecordStore(store.path).records()
    assert len(stored) == len(answered[0]["requests"]) and all(r["question_id"] != "q3" for r in stored)


def test_a_killed_worker_keeps_every_workers_finished_chunks(worker_env, fake_vllm, tmp_path, monkeypatch):
    """Two data parallel workers, chunks of 4 requests (two prompts); the worker that holds the prompt of q3
    is killed (SIGKILL) in the chunk with it. Every chunk a worker answered, the other worker's included, is
    in the store when WorkerError is raised (no finished output is deleted unread); a resume with fresh
    workers generates only what is missing and ends with the records of an uninterrupted run."""
    folder = str(_model_folder(tmp_path / "model"))
    devices = Devices(("fake0", "fake1"))
    prompts = PROMPTS | {f"r{i}": f"What is {i} - 1?" for i in range(5)}
    tasks = [GenerationTask("sample", prompts, 2, SAMPLED)]
    key_of_seed = {derive_seed(9, "sample", q, s): (q, "sample", s) for q in prompts for s in range(2)}
    reference = RecordStore(tmp_path / "reference.jsonl")
    run_generation_tasks(_generator(folder, devices=Devices(())), tasks, reference, batch_size=4, seed=9)

    monkeypatch.setenv("FAKE_VLLM_KILL_ON", PROMPTS["q3"])
    store = RecordStore(tmp_path / "gen.jsonl")
    generator = _generator(folder, devices=devices, data_parallel_size=2, chunk_requests=4)
    pool = generator.workers
    try:
        with pytest.raises(WorkerError, match="exited with code -9 while running chunk-"):
            run_generation_tasks(generator, tasks, store, batch_size=4, seed=9)
    finally:
        generator.close()
    assert sorted(pool.exit_codes()) == [-9, 0]  # the other worker finished its chunks and stopped cleanly
    answered = [e for e in _events(worker_env) if e["event"] == "generate" and e["pid"] != os.getpid()]
    assert all(len(e["requests"]) <= 4 for e in answered)
    done = {key_of_seed[r["seed"]] for e in answered for r in e["requests"]}
    kept = {tuple(r["key"]) for r in RecordStore(store.path).records()}
    assert kept == done and ("q3", "sample", 0) not in kept and len(kept) >= 10  # the other worker's half at least

    monkeypatch.delenv("FAKE_VLLM_KILL_ON")
    before = len(_events(worker_env))
    resumed = RecordStore(store.path)
    generator = _generator(folder, devices=devices, data_parallel_size=2, chunk_requests=4)
    try:
        run_generation_tasks(generator, tasks, resumed, batch_size=4, seed=9)
    finally:
        generator.close()
    again = [e for e in _events(worker_env)[before:] if e["event"] == "generate"]
    assert sum(len(e["requests"]) for e in again) == 20 - len(kept)  # only the missing requests
    assert sorted(map(json.dumps, resumed.records())) == sorted(map(json.dumps, reference.records()))


def test_batch_invariance_reaches_every_engine_process(worker_env, fake_vllm, tmp_path, monkeypatch):
    """``generation.vllm.batch_invariant: true`` sets VLLM_BATCH_INVARIANT=1 where vLLM reads it: in this
    process before the in-process engine starts, and in each data parallel worker's environment; it is no
    ``vllm.LLM`` argument. Off (the default) it leaves the environment alone."""
    monkeypatch.delenv("VLLM_BATCH_INVARIANT", raising=False)
    folder = str(_model_folder(tmp_path / "model"))
    off = _generator(folder, devices=Devices(()))
    assert fake_vllm.ENGINES[-1].environment is None
    off.close()
    with pytest.raises(ValueError, match="batch_invariant must be true or false, got 'yes'"):
        _generator(folder, devices=Devices(()), batch_invariant="yes")
    on = _generator(folder, devices=Devices(()), batch_invariant=True, max_model_len=64)
    assert fake_vllm.ENGINES[-1].environment == "1" and fake_vllm.ENGINES[-1].engine_kwargs == {"max_model_len": 64}
    on.close()
    monkeypatch.delenv("VLLM_BATCH_INVARIANT")  # set by the in-process engine above
    workers = _generator(folder, devices=Devices(("fake0", "fake1")), data_parallel_size=2, batch_invariant=True)
    workers.close()
    starts = [e for e in _events(worker_env) if e["event"] == "start" and e["pid"] != os.getpid()]
    assert [e["vllm_batch_invariant"] for e in starts] == ["1", "1"]
    assert all("batch_invariant" not in e["engine_kwargs"] for e in starts)
