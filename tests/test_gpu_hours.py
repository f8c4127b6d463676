"""benchmarks/gpu_hours.py: the arithmetic of its rows against hand calculations on the paper profile."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from segattr_utils.config import load_profile

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
GIB = 2**30
CV = 0.5  # Assumptions.sequence_length_cv
A_7B, B_7B = 2 * 7_070_619_136, 2 * 3584 * 28  # a forward pass of the 7B over L tokens: A L + B L^2
A_15B, B_15B = 2 * 1_543_714_304, 2 * 1536 * 28


def phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def lognormal_partial(mean: float, k: int, lower: float = 0.0, upper: float = math.inf, cv: float = CV) -> float:
    """E[L^k; lower < L <= upper] of a lognormal with this mean and coefficient of variation, by hand."""
    s2 = math.log(1 + cv**2)
    mu, s = math.log(mean) - s2 / 2, math.sqrt(s2)

    def cdf(x):
        return 0.0 if x <= 0 else 1.0 if x == math.inf else phi((math.log(x) - mu - k * s2) / s)

    return math.exp(k * mu + k * k * s2 / 2) * (cdf(upper) - cdf(lower))


def f_expected(mean, a=A_7B, b=B_7B, lower=0.0, upper=math.inf):
    """E[A L + B L^2; lower < L <= upper]."""
    return a * lognormal_partial(mean, 1, lower, upper) + b * lognormal_partial(mean, 2, lower, upper)


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
    assert sum(gh.evaluation_request_counts(paper)) == by_hand == 14_815
    assert gh.evaluation_request_counts(paper) == (1_745, 13_070)  # 12% greedy, 88% sampled
    limited = gh.with_settings(paper, {"evaluation.limit": 100})
    assert sum(gh.evaluation_request_counts(limited)) == 100 * 7 + 40 * 33 + 30 * 33 * 2 + 100 * 7 * 3
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
    # every sampled request is seeded: 15 us per running sampled sequence and step; greedy ones draw no noise
    seeded = sampled * 10_043 / tokens
    step = (weights + concurrency * context * kv_token) / bandwidth + 0.005 + concurrency * seeded * 1.5e-5
    requests_per_engine = models * (greedy + sampled) / gpus
    decode = requests_per_engine * mean_output / (concurrency / step)
    flops_per_token = 2 * 1_543_714_304 + 2 * 1536 * 28
    prefill = requests_per_engine * prompt / 4 * flops_per_token / (989e12 * 0.4)
    tail = models * 32_768 * ((weights + context * kv_token) / bandwidth + 0.005 + seeded * 1.5e-5)  # at once
    wall_s = decode + prefill + tail + models * 90  # the 8 engines of a model start at once
    row = rows["09"]
    assert row.wall_configured_h == row.wall_ideal_h == pytest.approx(wall_s / 3600, rel=1e-9)
    assert row.gpu_hours == pytest.approx(gpus * wall_s / 3600, rel=1e-9)
    assert row.parallel.startswith("vLLM TP 1 x DP 8")


def test_length_moments_by_hand(gh):
    lengths = gh.Lengths(7180, CV)
    # E[L^k] = m^k (1 + cv^2)^(k(k-1)/2): E[L^2] = 1.25 m^2, E[L^3] = 1.25^3 m^3 (not m^2, m^3)
    assert lengths.partial_moment(1) == pytest.approx(7180, rel=1e-12)
    assert lengths.partial_moment(2) == pytest.approx(1.25 * 7180**2, rel=1e-12)
    assert lengths.partial_moment(3) == pytest.approx(1.25**3 * 7180**3, rel=1e-12)
    t = 13_663
    for k in range(4):
        assert lengths.partial_moment(k, upper=t) + lengths.partial_moment(k, lower=t) == pytest.approx(
            lengths.partial_moment(k), rel=1e-12
        )
        assert lengths.partial_moment(k, lower=t) == pytest.approx(lognormal_partial(7180, k, lower=t), rel=1e-12)
    assert gh.Lengths(7180).partial_moment(2) == 7180**2 and gh.Lengths(7180).share_above(t) == 0.0
    assert gh.poly_mul([1, 2], [0, 3, 4]) == [0, 3, 10, 8]


@pytest.mark.parametrize("gpu", ["h100", "h200"])
def test_ig_checkpointing_starts_where_a_plain_path_point_no_longer_fits(gh, paper, gpu):
    """attribution.activation_checkpointing: auto on the 7B: the first length at which one path point without
    checkpointing (ig_cost's working memory) exceeds 90% of what the weights leave of the GPU."""
    from types import SimpleNamespace

    from segattr_utils.llm.architectures import R1_DISTILL_QWEN_7B
    from segattr_utils.method.ig_cost import estimate_ig_cost

    config = SimpleNamespace(model_type="qwen2", **R1_DISTILL_QWEN_7B)
    start = gh.ig_checkpoint_from(paper, gh.GPUS[gpu])

    def working(length):
        return estimate_ig_cost(config, length, points_per_chunk=1, n_steps=50).working_bytes

    room = (gh.GPUS[gpu].memory_bytes - 2 * 7_615_616_512) * 0.9
    assert working(int(start) - 1) <= room < working(int(start))
    assert 12_000 < start < 15_000 if gpu == "h100" else 24_000 < start < 28_000
    assert gh.ig_checkpoint_from(gh.with_settings(paper, {"attribution.activation_checkpointing": True}), None) == 0
    off = gh.with_settings(paper, {"attribution.activation_checkpointing": False})
    assert gh.ig_checkpoint_from(off, None) == math.inf


def test_ig_rows_follow_the_published_calibration(gh, paper, rows):
    """The calibration: 7 GPU-hours = 817 reference traces (6,180 tokens on average, lognormal, cv 0.5) x 50
    path points x 3 forward passes (the authors' IG, not checkpointed). Our traces beyond the checkpointing
    length (13,663 tokens on an H100) cost 4 passes per point: 08 IG = 7 (3 E[f] + E[f; L > t]) / (3 E[f])."""
    t = gh.ig_checkpoint_from(paper, gh.GPUS["h100"])
    assert t == 13_663

    def per_trace(mean, j=50):  # 3 passes below t, 4 above
        return j * (3 * f_expected(mean) + f_expected(mean, lower=t))

    calibration = 817 * 50 * 3 * f_expected(6180)
    assert rows["08 IG"].gpu_hours == pytest.approx(7.0 * 817 * per_trace(6180) / calibration, rel=1e-9)
    assert 7.1 < rows["08 IG"].gpu_hours < 7.3  # ~3% above the published cost
    assert rows["08 IG"].wall_ideal_h == pytest.approx(rows["08 IG"].gpu_hours / 8)
    assert rows["08 IG"].wall_configured_h == pytest.approx(rows["08 IG"].gpu_hours / 8)  # processes: auto
    assert rows["05"].wall_configured_h == pytest.approx(rows["05"].gpu_hours / 8)  # analysis.linguistics: auto
    self_traces = 613 * per_trace(7180) + 654 * per_trace(9180) + 20 * per_trace(7180, j=200)  # + J = 200 check
    assert rows["03"].gpu_hours == pytest.approx(7.0 * self_traces / calibration, rel=1e-9)
    # every trace checkpointed: 4/3 of the calibration; none: the calibration itself
    for setting, factor in ((True, 4 / 3), (False, 1.0)):
        profile = gh.with_settings(paper, {"attribution.activation_checkpointing": setting})
        row = next(r for r in gh.estimate(profile, gh.Assumptions(), "h100") if r.stage == "08 IG")
        assert row.gpu_hours == pytest.approx(7.0 * factor, rel=1e-9)


def test_attention_takes_the_second_moment_of_the_lengths(gh, paper):
    """With cv = 0 (every trace of the mean length) the attention term is B m^2; with the spread, B (1 + cv^2) m^2
    per pass: the IG rows of our traces, longer than the reference traces, grow relative to the calibration."""
    from dataclasses import replace

    flat = replace(gh.Assumptions(), sequence_length_cv=0.0)
    off = gh.with_settings(paper, {"attribution.activation_checkpointing": False})
    by_stage = {r.stage: r.gpu_hours for r in gh.estimate(off, flat, "h100")}
    spread = {r.stage: r.gpu_hours for r in gh.estimate(off, gh.Assumptions(), "h100")}

    def f(m, second=1.0):
        return A_7B * m + B_7B * second * m * m

    for cv, hours in ((0.0, by_stage), (CV, spread)):
        expected = 7.0 * (613 * 50 * f(7180, 1 + cv**2) + 654 * 50 * f(9180, 1 + cv**2) + 20 * 200 * f(7180, 1 + cv**2))
        assert hours["03"] == pytest.approx(expected / (817 * 50 * f(6180, 1 + cv**2)), rel=1e-9)
    assert spread["03"] > by_stage["03"]


def test_sft_run_by_hand(gh, paper):
    """One full-CoT run on LIMO's reference traces: 817 x 9 epochs x 3 x E[f(min(L, 16384))] of the 1.5B, at
    the FLOP/s of the paper's 8 GPU-hours for the same with the 7B: 8 x E_1.5B / E_7B."""
    from segattr_utils.stages.stage08_selective_sft import plan_runs

    cap = 16_384

    def capped(a, b):
        return f_expected(6180, a, b, upper=cap) + (a * cap + b * cap**2) * lognormal_partial(6180, 0, lower=cap)

    a = gh.Assumptions()
    ctx = gh.Context(
        paper, a, gh.GPUS["h100"], gh.Calibration.from_paper(paper, a), gh.Workload.from_assumptions(paper, a)
    )
    spec = next(r for r in plan_runs(paper) if r.source == "reference" and r.variant == "full")
    assert gh.run_gpu_hours(ctx, spec) == pytest.approx(8.0 * capped(A_15B, B_15B) / capped(A_7B, B_7B), rel=1e-9)


def test_stage06_faithfulness_row_by_hand(gh, paper, rows):
    """25 of the 613 correct traces (analysis.faithfulness.n_traces); a trace of L tokens has n = 8 (L - 180) / 1000
    segments (56 at the mean 7,180) and at most 2 + 2 (n - 1) x 6 = 0.096 L - 27.28 forward passes of L tokens: per
    trace E[(0.096 L - 27.28)(A L + B L^2)] (E[L^3] = 1.25^3 m^3), at the calibration's FLOP/s (7 GPU-h = 817 traces
    x 50 path points x 3 forward-pass equivalents, E[f] over the reference lengths), in one process."""
    m = 7180

    def moment(k):
        return m**k * 1.25 ** (k * (k - 1) / 2)

    c1, c0 = 12 * 0.008, 2 - 12 - 12 * 0.008 * 180
    per_trace = A_7B * (c1 * moment(2) + c0 * moment(1)) + B_7B * (c1 * moment(3) + c0 * moment(2))
    expected = 7.0 * 25 * per_trace / (817 * 50 * 3 * f_expected(6180))
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
