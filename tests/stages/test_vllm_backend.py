"""Stages 01, 04 and 09 with ``generation.backend`` / ``evaluation.backend`` vllm, on the CPU stand-in of
``tests/fakes/vllm``: no stage loads Hugging Face weights (``services.load_model`` raises), every stage
hands the engine all of its missing requests (in one call when they fit in ``generation.vllm_chunk_requests``;
stage 04 in chunks, resumed after a crash) with one seed per request, the samples of a
question differ, and an engine is shut down before the next model's engine starts; with one engine per (fake)
GPU, stage 09 grades as with one engine."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from segattr_utils import services
from segattr_utils.config import results_dir
from segattr_utils.llm import vllm_parallel
from segattr_utils.llm.evaluation import Benchmark
from segattr_utils.stages import stage01_generation, stage09_evaluation
from segattr_utils.stages import stage04_confidence_delta as confidence_delta

from .conftest import QUESTIONS


@pytest.fixture
def vllm_profile(profile, fake_vllm, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("services.load_model was called with the vllm backend")

    monkeypatch.setattr(services, "load_model", refuse)
    profile["generation"] = {**profile["generation"], "backend": "vllm", "vllm": {"max_model_len": 1024}}
    profile["evaluation"] = {**profile["evaluation"], "backend": "vllm"}
    return profile


def _questions() -> pd.DataFrame:
    return pd.DataFrame([{"id": qid, "question": q, "answer": a} for qid, (q, a) in QUESTIONS.items()])


def test_stage01_samples_with_one_engine_call(vllm_profile, fake_vllm, monkeypatch):
    monkeypatch.setattr(services, "load_questions", lambda profile, suite: _questions())
    samples = stage01_generation.generate_training_traces(vllm_profile)
    (engine,) = fake_vllm.ENGINES
    assert engine.engine_kwargs == {"max_model_len": 1024}
    assert len(engine.calls) == 1  # greedy and sampled outputs of every question together
    k = vllm_profile.get_path("generation.n_samples")
    assert len(engine.calls[0][0]) == len(QUESTIONS) * (1 + k)
    sampled = samples[samples["tag"] == "sample"]
    assert (sampled.groupby("question_id")["text"].nunique() == k).all()  # K independent samples
    assert engine.llm_engine.engine_core.shutdown_calls == 1


def test_stage04_forced_answers_with_one_engine_call_and_resume(vllm_profile, fake_vllm):
    vllm_profile["analysis"]["confidence"] = {**vllm_profile["analysis"]["confidence"], "sampler": "generator"}
    table = confidence_delta.segment_confidence(vllm_profile)
    assert table["trace_id"].tolist() == ["q0:correct"] * 3 + ["q1:correct"]
    (engine,) = fake_vllm.ENGINES
    n = vllm_profile.get_path("analysis.confidence.n_samples")
    ((prompts, params),) = engine.calls
    assert len(prompts) == (4 + 2) * n  # every prefix of both correct traces, n answers each
    assert len({p.seed for p in params}) == len(params)  # the n copies of a prefix are independent draws
    assert engine.llm_engine.engine_core.shutdown_calls == 1
    # a resumed run generates only the missing prefixes and gives the uninterrupted run's table
    store = (results_dir(vllm_profile) / "04_confidence_delta") / "forced_answers.jsonl"
    lines = store.read_text().splitlines()
    store.write_text("\n".join(lines[:2]) + "\n")
    resumed = confidence_delta.segment_confidence(vllm_profile)
    pd.testing.assert_frame_equal(resumed, table)
    assert len(fake_vllm.ENGINES) == 2 and len(fake_vllm.ENGINES[1].calls[0][0]) == 4 * n
    assert sorted(store.read_text().splitlines()) == sorted(lines)


def test_stage04_in_chunks_keeps_finished_prefixes_after_a_crash(vllm_profile, fake_vllm, monkeypatch):
    """Chunks of n - 1 requests (n answers per prefix): each prefix's answers come back in two chunks (n - 1,
    then 1), and its record is stored once the last is back. The engine fails in its fourth chunk: the one
    prefix whose answers all came back is stored, the half-answered one is not; a resumed run sends only the
    other prefixes and ends with the records and table of one call."""
    vllm_profile["analysis"]["confidence"] = {**vllm_profile["analysis"]["confidence"], "sampler": "generator"}
    n = vllm_profile.get_path("analysis.confidence.n_samples")
    assert n >= 2
    table = confidence_delta.segment_confidence(vllm_profile)  # the default chunk holds every request
    store = (results_dir(vllm_profile) / "04_confidence_delta") / "forced_answers.jsonl"
    lines = sorted(store.read_text().splitlines())
    assert len(lines) == 6 and len(fake_vllm.ENGINES[0].calls) == 1
    store.unlink()
    vllm_profile["generation"]["vllm_chunk_requests"] = n - 1
    monkeypatch.setenv("FAKE_VLLM_FAIL_AFTER_CALLS", "3")
    fake_vllm.reset()
    with pytest.raises(RuntimeError, match="fake engine failure"):
        confidence_delta.segment_confidence(vllm_profile)
    # a prompt group larger than a chunk is split: prefix 0 in two chunks, then n - 1 answers of prefix 1
    assert [len(prompts) for prompts, _ in fake_vllm.ENGINES[0].calls] == [n - 1, 1, n - 1]
    assert len(store.read_text().splitlines()) == 1
    monkeypatch.delenv("FAKE_VLLM_FAIL_AFTER_CALLS")
    resumed = confidence_delta.segment_confidence(vllm_profile)
    assert sum(len(prompts) for prompts, _ in fake_vllm.ENGINES[1].calls) == 5 * n  # only the 5 missing prefixes
    assert all(len(prompts) <= n - 1 for prompts, _ in fake_vllm.ENGINES[1].calls)
    assert sorted(store.read_text().splitlines()) == lines
    pd.testing.assert_frame_equal(resumed, table)


def test_stage09_evaluates_each_model_with_its_own_engine(vllm_profile, fake_vllm, monkeypatch):
    model_dir = vllm_profile.get_path("models.generator.local_path")
    benchmarks = [
        Benchmark("A", "in", _questions(), n_samples=3),
        Benchmark("B", "out", _questions().assign(id=lambda f: "b" + f["id"]), n_samples=0),
    ]
    monkeypatch.setattr(stage09_evaluation, "evaluation_benchmarks", lambda profile: benchmarks)
    entries = [
        {"model": "base", "path": None, "setting": "base", "seed": None},
        {"model": "run1", "path": model_dir, "setting": "full__reference", "seed": 1},
    ]
    monkeypatch.setattr(stage09_evaluation, "models_to_evaluate", lambda profile: entries)
    graded = stage09_evaluation.evaluate_all(vllm_profile)
    assert len(fake_vllm.ENGINES) == 2
    for engine in fake_vllm.ENGINES:
        assert engine.model == model_dir
        assert len(engine.calls) == 1  # both benchmarks, greedy and sampled, in one call
        assert len(engine.calls[0][0]) == 2 * (1 + 3) + 2 * 1
        assert engine.alive_at_start == 0  # the previous model's engine was shut down first
        assert engine.llm_engine.engine_core.shutdown_calls == 1
    assert graded.groupby("model").size().tolist() == [10, 10]
    sampled = graded[graded["mode"] == "sample"]
    assert set(sampled["sample"]) == {0, 1, 2}


def test_stage04_measures_both_sources_with_one_engine(reference_profile, fake_vllm, monkeypatch):
    """With the paper's ablation source the reference traces' prefixes go to the same engine, each answer
    seeded from its trace id, prefix and sample (reproducible, independent of the self traces' seeds)."""
    from segattr_utils.llm.generation import derive_seed

    from .conftest import REFERENCE

    monkeypatch.setattr(services, "load_model", lambda *a, **k: pytest.fail("HF weights loaded with vllm"))
    profile = reference_profile
    profile["generation"] = {**profile["generation"], "backend": "vllm", "vllm": {"max_model_len": 1024}}
    profile["analysis"]["confidence"] = {**profile["analysis"]["confidence"], "sampler": "generator"}
    tables = confidence_delta.segment_confidences(profile)
    assert len(tables["reference"]) == 3 + 2
    (engine,) = fake_vllm.ENGINES
    assert len(engine.calls) == 2 and engine.llm_engine.engine_core.shutdown_calls == 1
    n, seed = profile.get_path("analysis.confidence.n_samples"), int(profile["seed"])
    expected = [
        derive_seed(seed, "reference-forced-answer", f"{qid}:reference", k, j)
        for qid, segments in REFERENCE.items()
        for k in range(len(segments) + 1)
        for j in range(n)
    ]
    assert [p.seed for p in engine.calls[1][1]] == expected


def test_stage09_with_one_engine_per_gpu_grades_as_one_engine(vllm_profile, fake_vllm, monkeypatch, tmp_path):
    """``tensor_parallel_size`` / ``data_parallel_size: auto`` on two (fake) GPUs: each model is evaluated
    by two worker processes (real subprocesses running the stand-in), and the graded outputs equal those of
    one engine in this process; no engine lives in this process."""
    fakes = Path(__file__).resolve().parents[1] / "fakes"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(fakes), os.environ.get("PYTHONPATH")) if p))
    benchmarks = [
        Benchmark("A", "in", _questions(), n_samples=3),
        Benchmark("B", "out", _questions().assign(id=lambda f: "b" + f["id"]), n_samples=2),
    ]
    monkeypatch.setattr(stage09_evaluation, "evaluation_benchmarks", lambda profile: benchmarks)
    entries = [{"model": "base", "path": None, "setting": "base", "seed": None}]
    monkeypatch.setattr(stage09_evaluation, "models_to_evaluate", lambda profile: entries)
    vllm_profile["generation"]["vllm"] = {"tensor_parallel_size": "auto", "data_parallel_size": "auto"}
    graded = {}
    for gpus in ((), ("fake0", "fake1")):
        monkeypatch.setattr(vllm_parallel, "visible_devices", lambda gpus=gpus: vllm_parallel.Devices(gpus))
        vllm_profile["results_root"] = str(tmp_path / f"results_{len(gpus)}")
        graded[len(gpus)] = stage09_evaluation.evaluate_all(vllm_profile)
    assert len(fake_vllm.ENGINES) == 1  # the one-engine run; the two-GPU run's engines were in the workers
    assert len(graded[2]) == 2 * (1 + 3) + 2 * (1 + 2)  # two questions per benchmark, greedy + samples
    pd.testing.assert_frame_equal(graded[2], graded[0])
