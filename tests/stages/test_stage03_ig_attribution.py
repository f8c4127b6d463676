"""Stage 03's attribution loop: spread over processes started by accelerate launch (attribute_traces with
attribution.processes > 1: same records as one process, in input order, rank stores merged, failures
named with the launch log's end); out of
memory (torch.OutOfMemoryError, raised by a stand-in for the engine above a threshold): retried with half
the chunk, then checkpointing, then skipped with its reason, not retried on resume unless asked, reported
by the stage and by notebook 08; ``auto`` settings taken from the cost estimator."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from segattr_utils.artifacts import RecordStore
from segattr_utils.config import load_profile, save_profile
from segattr_utils.distributed import rank_store_path, rank_store_paths
from segattr_utils.method import attribution as engine
from segattr_utils.method import ig_plan
from segattr_utils.stages import stage03_ig_attribution as pipeline
from segattr_utils.world.tokenizer import build_bpe_tokenizer

from ..fixtures.tiny_models import save_model_folder, tiny_qwen2

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
        "answer_part": f"\n</think>\n\nThe final answer is \\boxed{{{i + 5}}}.",
    }
    for i in range(2, 7)
]


@pytest.fixture(scope="module")
def world_profile(tmp_path_factory):
    tokenizer = build_bpe_tokenizer(CORPUS, vocab_size=320)
    # no pad_token_id in the config: Qwen2 would zero the pad row, a degenerate IG baseline
    folder = save_model_folder(tmp_path_factory.mktemp("generator"), tiny_qwen2(tokenizer=tokenizer), tokenizer)
    profile = load_profile("smoke")
    profile["results_root"] = str(tmp_path_factory.mktemp("results"))  # run logs too, never the repo's results/
    profile["models"]["generator"]["local_path"] = str(folder)
    profile["attribution"].update(n_steps=8, internal_batch_size=4, method="gausslegendre")
    return profile


def test_attribution_in_two_launched_processes_equals_one_process_and_resumes(world_profile, tmp_path):
    """Two processes under accelerate launch (torchrun, gloo on the CPU) give the records of one process, in
    input order; a trace an interrupted launch's rank left in its rank store is merged, not attributed again."""
    serial_profile = load_profile("smoke")
    serial_profile.update({k: v for k, v in world_profile.items()})
    serial_profile["attribution"] = dict(world_profile["attribution"], processes=1)
    serial = pipeline.attribute_traces(
        serial_profile, TRACES, RecordStore(tmp_path / "serial.jsonl", key_fn=lambda r: r["trace_id"]), "serial"
    )

    parallel_profile = load_profile("smoke")
    parallel_profile.update({k: v for k, v in world_profile.items()})
    parallel_profile["attribution"] = dict(world_profile["attribution"], processes=2, threads_per_process=1)
    store_path = tmp_path / "parallel.jsonl"
    store = RecordStore(store_path, key_fn=lambda r: r["trace_id"])
    store.append([serial[0]])  # an earlier run already merged the first trace
    left_by_a_killed_rank = RecordStore(rank_store_path(store_path, 1), key_fn=lambda r: r["trace_id"])
    left_by_a_killed_rank.append([dict(serial[3], seconds=-1.0)])  # marked: it must be merged, not recomputed
    parallel = pipeline.attribute_traces(parallel_profile, TRACES, store, "parallel")

    assert [r["trace_id"] for r in parallel] == [t["trace_id"] for t in TRACES]  # input order, however split
    assert parallel[3]["seconds"] == -1.0
    assert rank_store_paths(store_path) == [] and not store_path.with_suffix(".launch").exists()
    for ours, reference in zip(parallel, serial):
        assert ours["segment_spans"] == reference["segment_spans"]
        assert ours["f_input"] == pytest.approx(reference["f_input"], abs=1e-5)
        flat_ours = [v for segment in ours["token_attributions"] for v in segment]
        flat_reference = [v for segment in reference["token_attributions"] for v in segment]
        assert flat_ours == pytest.approx(flat_reference, abs=1e-5)
        # completeness (Eq. 3) holds in every process's record
        assert abs(ours["delta"]) <= 0.05 * abs(ours["f_input"] - ours["f_baseline"]) + 1e-4


def test_a_failing_launch_raises_with_the_end_of_its_log(world_profile, tmp_path):
    profile = load_profile("smoke")
    profile.update({k: v for k, v in world_profile.items()})
    generator = dict(world_profile["models"]["generator"], local_path=str(tmp_path / "no-model-here"))
    profile["models"] = dict(world_profile["models"], generator=generator)
    profile["attribution"] = dict(world_profile["attribution"], processes=2, threads_per_process=1)
    store = RecordStore(tmp_path / "store.jsonl", key_fn=lambda r: r["trace_id"])
    with pytest.raises(
        RuntimeError, match=r"(?s)launched processes failed.*FileNotFoundError.*model is missing at .*no-model-here"
    ):
        pipeline.attribute_traces(profile, TRACES[:2], store, "failing")
    assert len(store) == 0


def test_attribution_processes_setting_is_validated(monkeypatch):
    with pytest.raises(ValueError, match="attribution.processes"):
        pipeline.attribution_processes({"processes": 0}, "world")
    with pytest.raises(ValueError, match="attribution.workers was renamed"):
        pipeline.attribution_processes({"workers": 2}, "world")
    assert pipeline.attribution_processes({"processes": 2, "threads_per_process": 1}, "world") == (2, 1)
    assert pipeline.attribution_processes({}, "world")[0] == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert pipeline.attribution_processes({"processes": "auto"}, "hub")[0] == 8
    assert pipeline.attribution_processes({"processes": "auto"}, "world")[0] == 1  # the tiny world stays on the CPU


def test_a_device_map_model_is_attributed_in_one_process(world_profile, tmp_path):
    profile = load_profile("smoke")
    profile.update({k: v for k, v in world_profile.items()})
    profile["models"] = dict(
        world_profile["models"], generator=dict(world_profile["models"]["generator"], device_map="auto")
    )
    store = RecordStore(tmp_path / "store.jsonl", key_fn=lambda r: r["trace_id"])
    with pytest.raises(ValueError, match="attribution.processes: 1"):
        pipeline.launch_attribution(profile, TRACES, store, 2, 1, "device_map")


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
        sum(len(v) for v in record["token_attributions"])
        == record["segment_spans"][-1][1] - record["segment_spans"][0][0]
    )
    assert pipeline.over_length_traces([record]) == []
    # a cap below the trace's length skips it, and the skip is counted
    capped = dict(world_profile["attribution"], max_length=record["n_tokens"] - 1)
    skipped = pipeline.attribution_record(model, tokenizer, baseline, capped, trace)
    assert skipped["skipped"] and "token_attributions" not in skipped
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


# ---------------------------------------------------------------------------------------------------
# Out of memory: retried with half the chunk, then checkpointing, then skipped


REAL_TOKEN_ATTRIBUTIONS = engine.token_attributions


def _oom_after(rule, calls):
    """A token_attributions that raises torch.OutOfMemoryError (constructible on the CPU) where
    ``rule(internal_batch_size, activation_checkpointing, n_tokens)`` says so, and else runs the engine."""
    real = REAL_TOKEN_ATTRIBUTIONS

    def fake(model, input_ids, target_span, **kwargs):
        setting = (kwargs["internal_batch_size"], kwargs["activation_checkpointing"])
        calls.append(setting)
        if rule(*setting, input_ids.numel()):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
        return real(model, input_ids, target_span, **kwargs)

    return fake


def test_out_of_memory_ladder():
    assert ig_plan.out_of_memory_ladder(8, False) == [
        (8, False),
        (4, False),
        (2, False),
        (1, False),
        (8, True),
        (4, True),
        (2, True),
        (1, True),
    ]
    assert ig_plan.out_of_memory_ladder(3, True) == [(3, True), (1, True)]
    assert ig_plan.out_of_memory_ladder(1, False) == [(1, False), (1, True)]


@pytest.mark.parametrize(
    "rule, expected_calls, used",
    [
        # chunks above 2 points do not fit: 8 -> 4 -> 2
        (lambda chunk, ckpt, n: chunk > 2, [(8, False), (4, False), (2, False)], (2, False)),
        # nothing fits without checkpointing: halved to 1, then checkpointing with the full chunk
        (lambda chunk, ckpt, n: not ckpt, [(8, False), (4, False), (2, False), (1, False), (8, True)], (8, True)),
    ],
    ids=["half-chunk", "checkpointing"],
)
def test_out_of_memory_is_retried_down_the_ladder(world_profile, monkeypatch, rule, expected_calls, used):
    from segattr_utils import services

    model, tokenizer = services.load_model(world_profile, "generator")
    baseline = services.baseline_token(world_profile, tokenizer)
    settings = dict(world_profile["attribution"], internal_batch_size=8, activation_checkpointing=False)
    reference = pipeline.attribution_record(model, tokenizer, baseline, settings, TRACES[0])
    calls = []
    monkeypatch.setattr(engine, "token_attributions", _oom_after(rule, calls))
    record = pipeline.attribution_record(model, tokenizer, baseline, settings, TRACES[0])
    assert calls == expected_calls
    assert record["skipped"] is None
    assert (record["internal_batch_size"], record["activation_checkpointing"]) == used
    assert record["out_of_memory_retries"] == len(expected_calls) - 1
    # the retried trace gets the attributions of an undisturbed run
    assert record["f_input"] == pytest.approx(reference["f_input"], abs=1e-6)
    flat = [v for segment in record["token_attributions"] for v in segment]
    assert flat == pytest.approx([v for segment in reference["token_attributions"] for v in segment], abs=1e-5)


def test_trace_out_of_memory_everywhere_is_skipped_and_not_retried_unless_asked(world_profile, tmp_path, monkeypatch):
    from segattr_utils import services
    from segattr_utils.method.token_spans import build_attribution_sequence

    _, tokenizer = services.load_model(world_profile, "generator")
    traces = TRACES[:2] + [dict(TRACES[2], segments=TRACES[2]["segments"] * 3)] + TRACES[3:]
    lengths = {
        t["trace_id"]: len(
            build_attribution_sequence(
                tokenizer,
                services.prompt(tokenizer, t["question"]),
                t["segments"],
                t["answer"],
                suffix_template=world_profile["attribution"]["answer_suffix"],
            )
        )
        for t in traces
    }
    victim = traces[2]["trace_id"]
    assert sorted(lengths.values()).count(lengths[victim]) == 1  # its length singles it out
    calls = []
    monkeypatch.setattr(engine, "token_attributions", _oom_after(lambda c, k, n: n == lengths[victim], calls))
    profile = load_profile("smoke")
    profile.update({k: v for k, v in world_profile.items()})
    profile["attribution"] = dict(world_profile["attribution"], internal_batch_size=4, activation_checkpointing=False)
    store = RecordStore(tmp_path / "records.jsonl", key_fn=lambda r: r["trace_id"])

    records = pipeline.attribute_traces(profile, traces, store, "oom")  # no abort: every trace has a record
    assert [r["trace_id"] for r in records] == [t["trace_id"] for t in traces]
    skipped = pipeline.skipped_traces(records)
    assert list(skipped["trace_id"]) == [victim] and list(skipped["cause"]) == ["out_of_memory"]
    reason = skipped["reason"].iloc[0]
    assert reason.startswith("out_of_memory after 6 attempts") and "CUDA out of memory" in reason
    assert "1 point(s) per pass checkpointed" in reason
    assert pipeline.over_length_traces(records) == []

    # a resumed run leaves it skipped (and attributes nothing) ...
    calls.clear()
    monkeypatch.setattr(engine, "token_attributions", _oom_after(lambda c, k, n: False, calls))
    assert pipeline.attribute_traces(profile, traces, store, "resume") == records and calls == []
    # ... unless attribution.retry_skipped asks for it; then it is attributed, in its place among the others
    profile["attribution"]["retry_skipped"] = True
    again = pipeline.attribute_traces(profile, traces, store, "retry")
    assert calls == [(4, False)]
    assert sorted(r["trace_id"] for r in again) == sorted(t["trace_id"] for t in traces)
    assert all(r["skipped"] is None for r in again)


def test_auto_settings_take_the_estimators_choice(world_profile, monkeypatch):
    from segattr_utils import services
    from segattr_utils.method.ig_cost import estimate_ig_cost

    model, _ = services.load_model(world_profile, "generator")
    n_tokens, answer, steps = 200, 3, 8
    auto = dict(n_steps=steps, internal_batch_size="auto", activation_checkpointing="auto")

    def cost(chunk, checkpointing):
        return estimate_ig_cost(
            model.config,
            n_tokens,
            points_per_chunk=chunk,
            activation_checkpointing=checkpointing,
            dtype=model.dtype,
            n_steps=steps,
            answer_tokens=answer,
        ).working_bytes

    def choose(budget_bytes, **settings):
        budget_bytes += 64  # float rounding of bytes -> GiB -> bytes
        settings = dict(auto, memory_budget_gb=budget_bytes / 2**30, **settings)
        return ig_plan.plan_ig(model, n_tokens, answer, ig_plan.IGSettings.from_mapping(settings))

    assert choose(10 * cost(steps, False)) == (steps, False)  # room for everything: one pass
    assert choose(cost(4, False) / 0.9) == (4, False)  # DEFAULT_MARGIN keeps 10% free
    assert choose(cost(1, True) / 0.9) == (1, True)
    assert choose(cost(1, True) / 2) == (1, True)  # nothing fits: the most frugal setting, OOM handles the rest
    assert choose(cost(1, True) / 2, activation_checkpointing=False) == (1, False)
    # fixed settings are used as they are, without consulting the memory
    assert ig_plan.plan_ig(model, n_tokens, answer, ig_plan.IGSettings(n_steps=steps, internal_batch_size=None)) == (
        steps,
        False,
    )
    assert ig_plan.plan_ig(model, n_tokens, answer, ig_plan.IGSettings(n_steps=steps, internal_batch_size=64)) == (
        8,
        False,
    )


def _attribution_lengths(profile) -> dict[str, int]:
    """Each kept trace's attribution sequence length, tokenized here independently of the stage."""
    from segattr_utils import services
    from segattr_utils.method.token_spans import build_attribution_sequence

    _, tokenizer = services.load_model(profile, "generator")
    segments = services.segment_texts(services.segment_table(profile))
    kept = services.kept_traces(profile).set_index("trace_id")
    return {
        trace_id: len(
            build_attribution_sequence(
                tokenizer,
                services.prompt(tokenizer, kept.loc[trace_id, "question"]),
                segments[trace_id],
                kept.loc[trace_id, "answer"],
                suffix_template=profile["attribution"]["answer_suffix"],
            )
        )
        for trace_id in kept.index
    }


def test_stage_result_reports_skipped_traces_and_why(profile, monkeypatch):
    """run() finishes despite a trace that does not fit, lists it in tables['skipped'] with its cause and
    fails the check "every kept trace is attributed" (the notebook shows the table before the checks)."""
    from segattr_utils.stages import stage03_ig_attribution as stage

    lengths = _attribution_lengths(profile)
    victim = max(lengths, key=lengths.get)
    assert sorted(lengths.values()).count(lengths[victim]) == 1
    monkeypatch.setattr(engine, "token_attributions", _oom_after(lambda c, k, n: n == lengths[victim], []))

    with pytest.warns(UserWarning, match="ran out of memory"):
        result = stage.run(profile)
    skipped = result.tables["skipped"]
    assert list(skipped["trace_id"]) == [victim]
    assert list(skipped["cause"]) == ["out_of_memory"] and list(skipped["n_tokens"]) == [lengths[victim]]
    assert result.values["out_of_memory_skipped"] == 1 and result.values["over_length_skipped"] == 0
    assert result.failed_checks() == ["every kept trace is attributed"]


def test_stage_warning_names_the_traces_over_attribution_max_length(profile):
    """A cap of attribution.max_length below the longest trace skips that trace; run()'s warning names it
    by its trace id, and the skip is counted as over length."""
    from segattr_utils.stages import stage03_ig_attribution as stage

    lengths = _attribution_lengths(profile)
    victim = max(lengths, key=lengths.get)
    assert sorted(lengths.values()).count(lengths[victim]) == 1
    profile["attribution"]["max_length"] = lengths[victim] - 1

    with pytest.warns(UserWarning, match="exceed attribution.max_length") as caught:
        result = stage.run(profile)
    (message,) = [str(w.message) for w in caught if "exceed attribution.max_length" in str(w.message)]
    listed = message.split("(IG needs the whole trace): ", 1)[1].split(";", 1)[0]
    assert listed == victim
    assert list(result.tables["skipped"]["trace_id"]) == [victim]
    assert result.values["over_length_skipped"] == 1 and result.values["out_of_memory_skipped"] == 0


def test_notebook_08_warns_about_traces_skipped_out_of_memory(profile, monkeypatch):
    """Selective SFT (stage 08) learns nothing from a trace without attributions and says why."""
    from segattr_utils import dag, services
    from segattr_utils.stages import stage08_selective_sft as sft

    model, tokenizer = services.load_model(profile, "generator")
    monkeypatch.setattr(services, "load_role_tokenizer", lambda profile, role: tokenizer)
    monkeypatch.setattr(services, "world_problems", lambda profile: {})  # no stage-00 world here
    kept = services.kept_traces(profile).set_index("trace_id")
    trace = dict(kept.loc["q1:correct"], trace_id="q1:correct")
    trace["segments"] = services.segment_texts(services.segment_table(profile))["q1:correct"]
    baseline = services.baseline_token(profile, tokenizer)
    attributed = pipeline.attribution_record(model, tokenizer, baseline, profile["attribution"], trace)
    store = RecordStore(dag.IG_ATTRIBUTION.path(profile, "attributions_store"), key_fn=lambda r: r["trace_id"])
    store.append([attributed])
    store.append([{"trace_id": "q0:correct", "n_tokens": 99, "skipped": "out_of_memory after 2 attempts (...)"}])
    with pytest.warns(UserWarning, match="1 self traces ran out of memory in IG"):
        records = sft.load_trace_records(profile, "self")
    assert [r.trace_id for r in records] == ["q1:correct"]


def test_a_launch_started_by_hand_is_merged_by_the_next_notebook_run(profile, tmp_path, monkeypatch):
    """The multi-machine path: each machine runs ``python -m segattr_utils.workers attribution --profile ...
    --items kept`` under accelerate launch; here one such process, started by hand. Its records wait in its
    rank store; notebook 03's next run merges them and attributes nothing again."""
    profile_file = save_profile(profile, tmp_path / "profile.yaml")
    assert load_profile(profile_file) == profile
    subprocess.run(
        [
            sys.executable,
            "-m",
            "segattr_utils.workers",
            "attribution",
            "--profile",
            str(profile_file),
            "--items",
            "kept",
        ],
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    traces, store_path = pipeline.kept_traces_to_attribute(profile)
    assert not store_path.exists()
    assert [p.name for p in rank_store_paths(store_path)] == ["attributions.rank-00000.jsonl"]

    def no_more_ig(*args, **kwargs):
        raise AssertionError("a trace the launched process attributed was attributed again")

    monkeypatch.setattr(engine, "token_attributions", no_more_ig)
    scores = pipeline.attribute_kept_traces(profile)
    assert set(scores["trace_id"]) == {t["trace_id"] for t in traces}
    records = RecordStore(store_path, key_fn=lambda r: r["trace_id"]).records()
    assert [r["trace_id"] for r in records] == [t["trace_id"] for t in traces]
    assert rank_store_paths(store_path) == []


def test_segment_scores_come_from_the_stored_scored_traces(world_profile, tmp_path):
    """score_segments reads each record's scored trace: its columns are Eq. 3-7 computed by hand from the
    stored attributions, selected_for_sft is important or first/last; a record without a scored trace
    (an older store) is refused with the store to rebuild, before anything is written."""
    import math

    import pandas as pd

    from segattr_utils import services

    profile = load_profile("smoke")
    profile.update({k: v for k, v in world_profile.items()})
    profile["results_root"] = str(tmp_path / "results")
    model, tokenizer = services.load_model(profile, "generator")
    baseline = services.baseline_token(profile, tokenizer)
    trace = dict(TRACES[0], segments=TRACES[0]["segments"] * 2, correct=True)
    record = pipeline.attribution_record(model, tokenizer, baseline, profile["attribution"], trace)
    kept = pd.DataFrame([{"trace_id": trace["trace_id"], "correct": True}])
    segments = pd.DataFrame(
        [{"trace_id": trace["trace_id"], "segment": i, "kind": f"k{i}"} for i in range(len(trace["segments"]))]
    )
    table = pipeline.score_segments(profile, kept, segments, [record])
    values = record["token_attributions"]
    strength = [sum(abs(v) for v in seg) / math.sqrt(len(seg)) for seg in values]
    consistency = [abs(sum(seg)) / sum(abs(v) for v in seg) for seg in values]
    norm = [s / sum(strength) for s in strength]
    order = sorted(range(len(norm)), key=lambda i: -norm[i])
    k_star = next(
        k for k in range(1, len(norm) + 1) if sum(norm[i] for i in order[:k]) >= profile["selection"]["tau"] - 1e-9
    )
    important = [i in order[:k_star] and consistency[i] <= profile["selection"]["beta"] for i in range(len(norm))]
    assert list(table.columns) == pipeline.SEGMENT_SCORE_COLUMNS
    assert table["norm_strength"].tolist() == pytest.approx(norm) and table["consistency"].tolist() == pytest.approx(
        consistency
    )
    assert table["important"].tolist() == important
    assert table["selected_for_sft"].tolist() == [imp or i in (0, len(norm) - 1) for i, imp in enumerate(important)]
    assert table["kind"].tolist() == ["k0", "k1", "k2", "k3"] and table["n_tokens"].tolist() == [len(v) for v in values]
    older = {k: v for k, v in record.items() if k not in ("token_ids", "token_attributions", "token_offsets")}
    older["segment_values"] = values
    with pytest.raises(ValueError, match=r"q2:sample.*lacks token_ids, token_attributions.*rerun the attribution"):
        pipeline.score_segments(profile, kept, segments, [older])
