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
    limited = gh.with_settings(paper, {"evaluation.limit": 100})
    assert gh.evaluation_requests(limited) == 100 * 7 + 40 * 33 + 30 * 33 * 2 + 100 * 7 * 3
    assert paper.get_path("evaluation.limit") is None  # the scenarios never change the loaded profile


def test_stage09_row_by_hand(paper, rows):
    """Stage 09 on H100s: 24 models (base + 23 planned runs) x 14,815 outputs of 16,520 tokens, 1.5B at TP 4."""
    models, outputs, out_tokens, prompt = 24, 14_815, 16_520, 150
    weights_gpu = 2 * 1_777_088_000 / 4
    kv_token_gpu = 14_336
    room = 0.9 * 79.6 * GIB - weights_gpu - 4 * GIB
    context = prompt + out_tokens / 2
    concurrency = min(1024, room / kv_token_gpu / context)
    bandwidth = 3.35e12 * 0.6
    step = (weights_gpu + concurrency * context * kv_token_gpu) / bandwidth + 0.005
    decode = models * outputs * out_tokens / (concurrency / step)
    flops_per_token = 2 * 1_543_714_304 + 2 * 1536 * 28
    prefill = models * outputs * prompt / 4 * flops_per_token / (4 * 989e12 * 0.4)
    tail = models * 32_768 * ((weights_gpu + context * kv_token_gpu) / bandwidth + 0.005)
    engine_s = decode + prefill + tail + models * 90
    row = rows["09"]
    assert row.gpu_hours == pytest.approx(4 * engine_s / 3600, rel=1e-9)
    assert row.wall_ideal_h == pytest.approx(engine_s / 3600 / 2, rel=1e-9)  # two TP-4 engines per node
    assert row.wall_configured_h == pytest.approx(engine_s / 3600, rel=1e-9)  # one engine at a time


def test_ig_rows_follow_the_published_calibration(gh, rows):
    """08 IG is the calibration point itself (817 LIMO traces, J = 50: 7 GPU-hours); 03 scales it by FLOPs."""
    assert rows["08 IG"].gpu_hours == pytest.approx(7.0)
    assert rows["08 IG"].wall_ideal_h == pytest.approx(7.0 / 8)
    assert rows["08 IG"].wall_configured_h == pytest.approx(7.0)  # attribution.workers: 1 in paper.yaml

    def f(length):  # one forward pass of the 7B: 2·N·L + 2·L²·d·layers
        return 2 * 7_070_619_136 * length + 2 * length**2 * 3584 * 28

    reference = 817 * 50 * f(6180)
    self_traces = 613 * 50 * f(7180) + 654 * 50 * f(9180) + 20 * 200 * f(7180)  # + the J = 200 sensitivity run
    assert rows["03"].gpu_hours == pytest.approx(7.0 * self_traces / reference, rel=1e-9)


def test_sft_runs_are_the_stage_plan(gh, paper, rows):
    from segattr_utils.stages.stage08_selective_sft import plan_runs

    assert f"{len(plan_runs(paper))} SFT runs" in rows["08 SFT"].work
    assert gh.lpt_makespan([4, 3, 3, 2], 2) == 6  # 4+2 and 3+3
    assert gh.lpt_makespan([1.0] * 23, 8) == 3


def test_report_states_the_verdict_and_assumptions(gh, paper):
    text = gh.report(paper, gh.Assumptions(), "h100")
    assert "| **total** |" in text and "Verdict" in text and "reference_trace_tokens" in text
