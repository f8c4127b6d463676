"""Attribution spread over worker processes (segattr_utils.workers, pipeline.attribute_traces with
attribution.workers > 1): same records as one process, in input order, resumable, failures named."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from segattr_utils.artifacts import RecordStore
from segattr_utils.config import load_profile
from segattr_utils.stages import stage03_ig_attribution as pipeline
from segattr_utils.world.tokenizer import build_bpe_tokenizer

CORPUS = [
    "Start with 7. Step 1: add 5. Step 2: multiply by 3. Please reason step by step, and put your final "
    "answer within \\boxed{}.",
    "Okay, so 7 + 5 = 12. Then 12 * 3 = 36.\n\nWait, let me check: 12 * 3 = 36. So the result is 36.",
    "</think> So, the final answer is \\boxed{36}",
    "Alternatively, step 2 gives 36.\n\nHowever, multiplying by 3 means adding the number 3 times.",
] * 5

TRACES = [
    {
        "trace_id": f"q{i}:sample",
        "question": f"Start with {i}. Step 1: add 5.",
        "answer": str(i + 5),
        "segments": [f"Okay, so {i} + 5 = {i + 5}.", f"\n\nWait, let me check: {i} + 5 = {i + 5}."],
    }
    for i in range(2, 7)
]


@pytest.fixture(scope="module")
def world_profile(tmp_path_factory):
    tokenizer = build_bpe_tokenizer(CORPUS, vocab_size=320)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    # no pad_token_id in the config: Qwen2 would zero the pad row, a degenerate IG baseline
    folder = tmp_path_factory.mktemp("generator")
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    profile = load_profile("smoke")
    profile["models"]["generator"]["local_path"] = str(folder)
    profile["attribution"].update(n_steps=8, internal_batch_size=4, method="gausslegendre")
    return profile


def test_attribution_in_two_workers_equals_one_process_and_resumes(world_profile, tmp_path):
    serial_profile = load_profile("smoke")
    serial_profile.update({k: v for k, v in world_profile.items()})
    serial_profile["attribution"] = dict(world_profile["attribution"], workers=1)
    serial = pipeline.attribute_traces(
        serial_profile, TRACES, RecordStore(tmp_path / "serial.jsonl", key_fn=lambda r: r["trace_id"]), "serial"
    )

    parallel_profile = load_profile("smoke")
    parallel_profile.update({k: v for k, v in world_profile.items()})
    parallel_profile["attribution"] = dict(world_profile["attribution"], workers=2, threads_per_worker=1)
    store = RecordStore(tmp_path / "parallel.jsonl", key_fn=lambda r: r["trace_id"])
    store.append([serial[0]])  # an earlier, interrupted run already did the first trace
    parallel = pipeline.attribute_traces(parallel_profile, TRACES, store, "parallel")

    assert [r["trace_id"] for r in parallel] == [t["trace_id"] for t in TRACES]
    for ours, reference in zip(parallel, serial):
        assert ours["segment_spans"] == reference["segment_spans"]
        assert ours["f_input"] == pytest.approx(reference["f_input"], abs=1e-5)
        flat_ours = [v for segment in ours["segment_values"] for v in segment]
        flat_reference = [v for segment in reference["segment_values"] for v in segment]
        assert flat_ours == pytest.approx(flat_reference, abs=1e-5)
        # completeness (Eq. 3) holds in every worker's record
        assert abs(ours["delta"]) <= 0.05 * abs(ours["f_input"] - ours["f_baseline"]) + 1e-4


def test_attribution_workers_setting_is_validated():
    with pytest.raises(ValueError, match="attribution.workers"):
        pipeline.attribution_workers({"workers": 0}, "world")
    devices, threads = pipeline.attribution_workers({"workers": 2, "threads_per_worker": 1}, "world")
    assert devices == ["cpu", "cpu"] and threads == 1
    assert pipeline.attribution_workers({}, "world")[0] == ["cpu"]


def test_attribution_max_length_is_an_optional_cap_whose_skips_are_counted(world_profile):
    from segattr_utils import services

    model, tokenizer = services.load_model(world_profile, "generator")
    baseline = services.baseline_token(world_profile, tokenizer)
    trace = dict(TRACES[0], segments=TRACES[0]["segments"] * 4)
    # no cap (the authors: every trace is attributed)
    record = pipeline.attribution_record(
        model, tokenizer, baseline, dict(world_profile["attribution"], max_length=None), trace
    )
    assert record["skipped"] is None
    assert (
        sum(len(v) for v in record["segment_values"]) == record["segment_spans"][-1][1] - record["segment_spans"][0][0]
    )
    assert pipeline.over_length_traces([record]) == []
    # a cap below the trace's length skips it, and the skip is counted
    capped = dict(world_profile["attribution"], max_length=record["n_tokens"] - 1)
    skipped = pipeline.attribution_record(model, tokenizer, baseline, capped, trace)
    assert skipped["skipped"] and "segment_values" not in skipped
    assert pipeline.over_length_traces([record, skipped]) == [trace["trace_id"]]


def test_attribution_releases_the_model_before_freeing_gpu_memory(world_profile, tmp_path, monkeypatch):
    import gc
    import weakref

    from segattr_utils import services

    loaded = []
    load_model = services.load_model

    def tracked_load(*args, **kwargs):
        model, tokenizer = load_model(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model, tokenizer

    alive_when_freed = []

    def fake_free():
        gc.collect()
        alive_when_freed.append(loaded[0]() is not None)

    monkeypatch.setattr(services, "load_model", tracked_load)
    monkeypatch.setattr(pipeline, "free_accelerator_memory", fake_free)
    profile = load_profile("smoke")
    profile.update({k: v for k, v in world_profile.items()})
    store = RecordStore(tmp_path / "records.jsonl", key_fn=lambda r: r["trace_id"])
    assert len(pipeline.attribute_traces(profile, TRACES[:2], store, "release")) == 2
    assert alive_when_freed == [False]
