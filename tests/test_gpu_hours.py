"""benchmarks/gpu_hours.py: the arithmetic of its rows against hand calculations on the paper profile."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from segattr_utils.config import load_profile

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
GIB = 2**30


@pytest.fixture(scope="module")
def gh():
    if "gpu_hours" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_hours", BENCHMARKS / "gpu_hours.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_hours"] = module
        spec.loader.exec_module(module)
    return sys.modules["gpu_hours"]


@pytest.fixture(scope="module")
def paper():
    return load_profile("paper")


@pytest.fixture(scope="module")
def rows(gh, paper):
    return {row.stage: row for row in gh.estimate(paper, gh.Assumptions(), "h100")}


def test_parameter_counts_match_the_published_models(gh):
    assert gh.R1_DISTILL_QWEN_7B.params == 7_615_616_512
    assert gh.R1_DISTILL_QWEN_1_5B.params == 1_777_088_000
    assert gh.QWEN3_8B.params == 8_190_735_360
    # 2 K/V x 28 layers x 1 KV head per GPU (2 heads over 4 GPUs: vLLM replicates) x 128 x 2 bytes
    assert gh.R1_DISTILL_QWEN_1_5B.kv_bytes_per_token_per_gpu(4) == 14_336


def test_evaluation_requests_by_hand(gh, paper):
    # greedy + n_samples per question: MATH500, AMC23, AIME24, AIME25, GPQA, Minerva, OlympiadBench
    by_hand = 500 * 7 + 40 * 33 + 30 * 33 + 30 * 33 + 198 * 7 + 272 * 7 + 675 * 7
    assert gh.evaluation_requests(paper) == by_hand == 14_815
    assert gh.evaluation_request_counts(paper) == (1_745, 13_070)  # 12% greedy, 88% sampled
    limited = gh.with_settings(paper, {"evaluation.limit": 100})
    assert gh.evaluation_requests(limited) == 100 * 7 + 40 * 33 + 30 * 33 * 2 + 100 * 7 * 3
    assert paper.get_path("evaluation.limit") is None  # the scenarios never change the loaded profile


@pytest.mark.parametrize("gpu", ["h100", "h200"])
def test_engines_are_laid_out_as_the_code_lays_them_out(gh, paper, gpu):
    """paper.yaml's ``auto``: TP 1 and 8 engines for every model (the code's own parallel_sizes); the old
    settings give one TP-4 engine."""
    for model in (gh.R1_DISTILL_QWEN_1_5B, gh.R1_DISTILL_QWEN_7B, gh.QWEN3_8B):
        assert gh.engine_layout(paper, model, gh.GPUS[gpu], 8) == (1, 8)
        assert gh.engine_layout(gh.with_settings(paper, gh.BEFORE), model, gh.GPUS[gpu], 8) == (4, 1)


def test_stage09_row_by_hand(paper, rows):
    """Stage 09 on H100s: 24 models (base + 23 planned runs) x (1,745 greedy outputs of 16,520 tokens + 13,070
    sampled ones of 10,043: Table 1's 1.5B lengths), 1.5B at TP 1 on 8 engines, each with 1/8 of the requests."""
    models, greedy, sampled, prompt, gpus = 24, 1_745, 13_070, 150, 8
    tokens = greedy * 16_520 + sampled * 10_043
    mean_output = tokens / (greedy + sampled)
    context = prompt + (greedy * 16_520**2 + sampled * 10_043**2) / (2 * tokens)  # running sequences, by length
    weights = 2 * 1_777_088_000  # TP 1: every GPU holds all of them
    kv_token = 2 * 28 * 2 * 128 * 2  # K and V, 28 layers, both KV heads, head dim 128, bf16
    room = 0.9 * 79.6 * GIB - weights - 4 * GIB
    concurrency = min(1024, room / kv_token / context)
    bandwidth = 3.35e12 * 0.6
    step = (weights + concurrency * context * kv_token) / bandwidth + 0.005
    requests_per_engine = models * (greedy + sampled) / gpus
    decode = requests_per_engine * mean_output / (concurrency / step)
    flops_per_token = 2 * 1_543_714_304 + 2 * 1536 * 28
    prefill = requests_per_engine * prompt / 4 * flops_per_token / (989e12 * 0.4)
    tail = models * 32_768 * ((weights + context * kv_token) / bandwidth + 0.005)  # each engine's, at once
    wall_s = decode + prefill + tail + models * 90  # the 8 engines of a model start at once
    row = rows["09"]
    assert row.wall_configured_h == row.wall_ideal_h == pytest.approx(wall_s / 3600, rel=1e-9)
    assert row.gpu_hours == pytest.approx(gpus * wall_s / 3600, rel=1e-9)
    assert row.parallel.startswith("vLLM TP 1 x DP 8")


def test_ig_rows_follow_the_published_calibration(gh, rows):
    """08 IG is the calibration point itself (817 LIMO traces, J = 50: 7 GPU-hours); 03 scales it by FLOPs."""
    assert rows["08 IG"].gpu_hours == pytest.approx(7.0)
    assert rows["08 IG"].wall_ideal_h == pytest.approx(7.0 / 8)
    assert rows["08 IG"].wall_configured_h == pytest.approx(7.0 / 8)  # attribution.processes: auto, 8 GPUs
    assert rows["05"].wall_configured_h == pytest.approx(rows["05"].gpu_hours / 8)  # analysis.linguistics: auto

    def f(length):  # one forward pass of the 7B: 2·N·L + 2·L²·d·layers
        return 2 * 7_070_619_136 * length + 2 * length**2 * 3584 * 28

    reference = 817 * 50 * f(6180)
    self_traces = 613 * 50 * f(7180) + 654 * 50 * f(9180) + 20 * 200 * f(7180)  # + the J = 200 sensitivity run
    assert rows["03"].gpu_hours == pytest.approx(7.0 * self_traces / reference, rel=1e-9)


def test_stage06_faithfulness_row_by_hand(gh, paper, rows):
    """25 of the 613 correct traces (analysis.faithfulness.n_traces), 56 segments each (7,000 trace tokens at 8
    per 1k): at most 2 + 2 x 55 x 6 forward passes of 7,180 tokens per trace, at the calibration's FLOP/s (7 GPU-h
    = 817 traces x 50 path points x 3 forward-pass equivalents of 6,180 tokens), in one process."""

    def f(length):
        return 2 * 7_070_619_136 * length + 2 * length**2 * 3584 * 28

    passes = 25 * (2 + 2 * 55 * 6)
    expected = 7.0 * passes * f(7180) / (817 * 50 * 3 * f(6180))
    assert rows["06"].gpu_hours == pytest.approx(expected, rel=1e-9)
    assert rows["06"].wall_configured_h == pytest.approx(expected)  # one process: no split over GPUs
    disabled = load_profile("paper")
    disabled["analysis"]["faithfulness"]["enabled"] = False
    row = next(r for r in gh.estimate(disabled, gh.Assumptions(), "h100") if r.stage == "06")
    assert row.gpu_hours == 0.0


def test_sft_runs_are_the_stage_plan(gh, paper, rows):
    from segattr_utils.stages.stage08_selective_sft import plan_runs

    assert f"{len(plan_runs(paper))} SFT runs" in rows["08 SFT"].work
    assert gh.lpt_makespan([4, 3, 3, 2], 2) == 6  # 4+2 and 3+3
    assert gh.lpt_makespan([1.0] * 23, 8) == 3


def test_report_states_the_verdict_and_assumptions(gh, paper):
    text = gh.report(paper, gh.Assumptions(), "h100")
    assert "| **total** |" in text and "Verdict" in text and "reference_trace_tokens" in text
    assert "eval_greedy_tokens | 16,520" in text and "eval_sample_tokens | 10,043" in text
    assert "The longest stage is 09" in text


def test_one_process_for_ig_and_stage_05_puts_their_gpu_hours_on_one_gpu(gh):
    profile = gh.with_settings(load_profile("paper"), gh.ONE_GPU_PASSES)
    one = {r.stage: r for r in gh.estimate(profile, gh.Assumptions(), "h100")}
    for stage in ("03", "05", "08 IG", "05 ref."):
        assert one[stage].wall_configured_h == pytest.approx(one[stage].gpu_hours)
        assert one[stage].wall_ideal_h == pytest.approx(one[stage].gpu_hours / 8)
