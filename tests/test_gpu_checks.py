"""benchmarks/gpu_checks.py on a CPU: the registry in --quick mode (CUDA/vLLM checks skipped with a reason,
the CPU-runnable ones run), failures recorded without stopping the run, and the vLLM checks' code against
the CPU stand-in of ``tests/fakes/vllm`` (which tokenises text prompts as vLLM 0.30.0 does)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
VLLM_CHECKS = [
    "vllm_engine_memory",
    "vllm_seed_diversity",
    "vllm_throughput",
    "prompt_token_ids",
    "vllm_data_parallel",
    "vllm_chunked_resume",
]
FAKES = Path(__file__).resolve().parent / "fakes"


def _load(name: str):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def gpu_checks():
    return _load("gpu_checks")


@pytest.fixture(scope="module")
def quick_rows(gpu_checks, tmp_path_factory):
    if gpu_checks.missing_requirement("cuda") is None:
        pytest.skip("this test describes a CPU machine")
    return {row["check"]: row for row in gpu_checks.run_checks(quick=True, workdir=tmp_path_factory.mktemp("quick"))}


@pytest.mark.slow
def test_quick_mode_runs_the_cpu_checks_and_skips_the_rest(gpu_checks, quick_rows):
    assert list(quick_rows) == [c.name for c in gpu_checks.REGISTRY]
    for name in (
        "vllm_engine_memory",
        "vllm_seed_diversity",
        "vllm_throughput",
        "vllm_data_parallel",
        "vllm_chunked_resume",
    ):
        assert quick_rows[name]["status"] == "skipped"
        assert "needs CUDA" in quick_rows[name]["error"]
    for name in ("sdpa_flash_gqa", "prompt_token_ids", "sft_16k", "sft_fp32_master", "ig_memory", "score_long_trace"):
        assert quick_rows[name]["status"] == "passed", quick_rows[name]
    # the planner checkpointed the long trace under a budget of half a plain path point
    scored = quick_rows["score_long_trace"]["values"]
    assert scored["activation_checkpointing"] is True and scored["n_tokens"] >= 512
    assert quick_rows["environment"]["status"] in ("passed", "failed")  # pip check's verdict on this venv
    assert "pip_check" in quick_rows["environment"]["values"]
    assert quick_rows["sdpa_flash_gqa"]["values"]["flash"] == "not run: needs CUDA"
    ids = quick_rows["prompt_token_ids"]["values"]
    assert ids["hf_ids_equal_template"] and ids["template_starts_with_bos"]
    # the R1-like tokenizer adds BOS when asked, as R1-Distill's does: what vLLM's default would double
    assert ids["add_special_tokens_true_doubles_bos"]
    assert ids["vllm"].startswith("not run")
    assert quick_rows["sft_16k"]["values"]["steps"] == 2
    for row in quick_rows.values():
        assert set(row) >= {"check", "status", "passed", "values", "seconds", "error"}


@pytest.mark.slow
def test_results_are_written_as_json_and_markdown(gpu_checks, quick_rows, tmp_path):
    rows = list(quick_rows.values())
    gpu_checks.write_results(rows, tmp_path / "checks.json", quick=True)
    saved = json.loads((tmp_path / "checks.json").read_text())
    assert saved["quick"] is True and [r["check"] for r in saved["rows"]] == [r["check"] for r in rows]
    table = (tmp_path / "checks.md").read_text().splitlines()
    assert table[0].startswith("| check | status") and len(table) == 2 + len(rows)


def test_a_failing_check_is_recorded_and_the_others_run(gpu_checks, tmp_path):
    def boom(res):
        raise RuntimeError("boom")

    def fine(res):
        return {"answer": 42, "passed": True}

    def wrong(res):
        return {"answer": 41, "passed": False}

    def skip(res):
        raise gpu_checks.Skip("not today")

    registry = [
        gpu_checks.Check("boom", boom),
        gpu_checks.Check("fine", fine),
        gpu_checks.Check("wrong", wrong),
        gpu_checks.Check("skip", skip),
        gpu_checks.Check("needs_cuda", fine, needs=("cuda",)),
    ]
    rows = {r["check"]: r for r in gpu_checks.run_checks(quick=True, workdir=tmp_path, registry=registry)}
    assert rows["boom"]["status"] == "failed" and rows["boom"]["passed"] is False
    assert rows["boom"]["error"] == "RuntimeError: boom" and "Traceback" in rows["boom"]["traceback"]
    assert rows["fine"] == {**rows["fine"], "status": "passed", "passed": True, "values": {"answer": 42}}
    assert rows["wrong"]["status"] == "failed" and rows["wrong"]["error"] is None
    assert rows["skip"]["status"] == "skipped" and rows["skip"]["error"] == "not today"
    if gpu_checks.missing_requirement("cuda"):
        assert rows["needs_cuda"]["status"] == "skipped" and "needs CUDA" in rows["needs_cuda"]["error"]


def test_unknown_check_names_are_refused(gpu_checks):
    with pytest.raises(ValueError, match="unknown checks"):
        gpu_checks.run_checks(["no_such_check"], quick=True)


def test_r1_like_tokenizer_covers_the_vocabulary_and_round_trips(gpu_checks):
    tokenizer = gpu_checks.build_r1_like_tokenizer(151936)
    assert len(tokenizer) == 151936
    text = "Wait, 3 + 4 = 7.\n\nSo the answer is \\boxed{7}."
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert tokenizer.convert_ids_to_tokens(151935) == "</think>"  # special tokens last, as in Qwen's vocabulary
    assert tokenizer.decode([150000]) != ""  # filler ids decode (a random model samples them)


@pytest.mark.slow
def test_vllm_checks_run_against_the_cpu_stand_in(gpu_checks, fake_vllm, monkeypatch, tmp_path):
    """The vLLM checks' code end to end with tests/fakes/vllm, CUDA's absence waived (free memory is then
    None). The stand-in tokenises text prompts with add_special_tokens=True, as vLLM 0.30.0, so the
    prompt-id check sees the doubled BOS of a text prompt, and one BOS in what the generator sends. The
    data parallel check's workers are subprocesses that find the stand-in through PYTHONPATH."""
    import os

    real = gpu_checks.missing_requirement
    monkeypatch.setattr(gpu_checks, "missing_requirement", lambda need: None if need == "cuda" else real(need))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(FAKES), os.environ.get("PYTHONPATH")) if p))
    rows = {r["check"]: r for r in gpu_checks.run_checks(VLLM_CHECKS, quick=True, workdir=tmp_path)}
    memory = rows["vllm_engine_memory"]
    assert memory["status"] == "passed", memory
    assert memory["values"]["engine1_outputs"] == memory["values"]["engine2_outputs"] == 4
    assert "Token" in memory["values"]["beside_engine"] and not memory["values"]["model_beside_engine"]
    seeds = rows["vllm_seed_diversity"]
    assert seeds["status"] == "passed", seeds
    assert seeds["values"]["distinct_with_derived_seeds"] == seeds["values"]["copies"]
    assert seeds["values"]["distinct_with_one_shared_seed"] == 1
    throughput = rows["vllm_throughput"]
    assert throughput["status"] == "passed" and throughput["values"]["every_request_ran_to_max_tokens"]
    ids = rows["prompt_token_ids"]
    assert ids["status"] == "passed", ids
    assert ids["values"]["vllm_leading_bos_count"] == 1 and ids["values"]["vllm_ids_equal_template"]
    assert ids["values"]["text_prompt_leading_bos_count"] == 2  # what vLLM would see from a text prompt
    parallel = rows["vllm_data_parallel"]
    assert parallel["status"] == "passed", parallel
    assert parallel["values"]["dp2_exit_codes"] == [0, 0] and parallel["values"]["workers_on"] == ["0", "0"]
    assert parallel["values"]["identical_greedy_share"] == parallel["values"]["identical_sampled_share"] == 1.0
    resumed = rows["vllm_chunked_resume"]
    assert resumed["status"] == "passed", resumed
    assert resumed["values"]["worker_error"] and "-9" in resumed["values"]["worker_error"]
    assert 8 <= resumed["values"]["records_kept_after_kill"] < resumed["values"]["requests"] == 128
    engines = fake_vllm.ENGINES
    # check 4 starts and closes two engines; the shared engine of checks 3, 5, 7 is one more, closed before the
    # data parallel check, whose in-process engine is the fourth (its two workers' engines are in subprocesses)
    assert len(engines) == 4 and all(e.llm_engine.engine_core.shutdown_calls == 1 for e in engines)
    assert all(e.alive_at_start == 0 for e in engines)


def test_one_sft_step_with_fp32_master_weights_on_the_cpu(gpu_checks, tmp_path):
    """--quick: the 1.5B's head layout at CPU widths, built in bf16, trains one step as float32 master weights
    (the CPU without autocast); every weight with a gradient moves."""
    if gpu_checks.missing_requirement("cuda") is None:
        pytest.skip("this test describes a CPU machine")
    (row,) = gpu_checks.run_checks(["sft_fp32_master"], quick=True, workdir=tmp_path)
    assert row["status"] == "passed", row
    values = row["values"]
    assert values["precision"] == "fp32_master" and values["steps"] == 1 and not values["bf16_autocast"]
    assert values["weight_dtypes"] == ["torch.float32"]
    assert values["layer0_mlp_weight_and_output_dtype"] == [("torch.float32", "torch.float32")]
    assert values["moved_share"] > 0.9 and 0 < values["lost_in_bf16_share"] <= 1
