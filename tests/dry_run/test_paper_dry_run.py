"""The paper profile's code path on the CPU: notebooks 00-09 under ``paper.yaml`` with local stand-ins.

``fixtures.build`` writes tiny models, LIMO and the seven benchmarks in their hub schemas and a profile
that changes nothing in paper.yaml but where things are (and two CPU stand-ins); vLLM is the fake of
``tests/fakes/vllm``, which logs what the notebook kernels asked of it. The notebooks run under nbval,
as ``make test-notebooks`` runs the smoke profile, and their check cells assert. The tests below then
check that the paper's paths were the ones taken: the vLLM backend with the profile's engine settings,
one engine at a time, independent per-request seeds, the reference ablation source with its signals,
the accelerate launcher, and Table 1's overall over six benchmarks.

Run with ``make test-dry-run`` (``pytest -m dry_run tests/dry_run``): several minutes on two cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from segattr_utils import dag
from segattr_utils.config import load_profile

from .fixtures import build

pytestmark = pytest.mark.dry_run

ROOT = Path(__file__).resolve().parents[2]
FAKES = ROOT / "tests" / "fakes"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """Build the stand-ins, run every notebook on them; ``(profile, vLLM event log)``. ``SEGATTR_DRY_RUN_DIR``
    keeps everything in that folder (to look at a failed run) instead of a temporary one."""
    kept = os.environ.get("SEGATTR_DRY_RUN_DIR")
    folder = Path(kept) if kept else tmp_path_factory.mktemp("paper_dry_run")
    profile_path = build(folder)
    log = folder / "vllm_events.jsonl"
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(FAKES), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "FAKE_VLLM_LOG": str(log),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        # Tiny models gain nothing from a second thread, and two OpenMP threads spin-wait for each other when
        # the cores are busy (an SFT step of the 2-layer model took 1.4 s instead of 40 ms under load).
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "segattr_utils.reproduce", "--profile", str(profile_path), "--nbval", "--fresh"]
    finished = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True)
    first_failure = finished.stdout.find("FAILURES")
    report = finished.stdout[first_failure : first_failure + 8000] if first_failure >= 0 else finished.stdout[-8000:]
    assert finished.returncode == 0, f"notebooks failed on the paper profile:\n{report}\n{finished.stderr[-2000:]}"
    events = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    return load_profile(profile_path), events


def test_only_local_stand_ins_differ_from_paper_yaml(dry_run):
    profile, _ = dry_run
    paper = load_profile("paper")

    def flatten(tree, prefix=""):
        if isinstance(tree, dict):
            for key, value in tree.items():
                yield from flatten(value, f"{prefix}{key}.")
        else:
            yield prefix.rstrip("."), tree

    changed = {key for key, value in flatten(profile) if dict(flatten(paper)).get(key, object()) != value}
    allowed_prefixes = ("models.generator.local_path", "models.student.local_path", "models.judge.local_path")
    allowed = {"name", "results_root", "data.train.local_path", "evaluation.benchmarks"}
    allowed |= {"training.launcher", "training.accelerate_config", "training.sft.optim"}
    assert changed - allowed - set(allowed_prefixes) == set()
    for ours, theirs in zip(profile.get_path("evaluation.benchmarks"), paper.get_path("evaluation.benchmarks")):
        assert {k: v for k, v in ours.items() if k != "local_path"} == {
            k: v for k, v in theirs.items() if k != "local_path"
        }


def test_every_generation_went_through_vllm_with_the_profiles_engine_settings(dry_run):
    profile, events = dry_run
    starts = [e for e in events if e["event"] == "start"]
    engine_settings = profile.get_path("generation.vllm")
    assert starts, "no vLLM engine was started"
    # tensor_parallel_size / data_parallel_size: auto, resolved without GPUs: TP 1, one engine in the kernel
    # (DP is the project's own worker count and batch_invariant sets VLLM_BATCH_INVARIANT for the engine
    # processes: neither is a vllm.LLM argument); the other settings as they are
    own = {"data_parallel_size", "batch_invariant"}
    resolved = {k: v for k, v in engine_settings.items() if k not in own} | {"tensor_parallel_size": 1}
    for start in starts:
        assert start["engine_kwargs"] == resolved
    models = Counter(Path(e["model"]).name for e in starts)
    # stage 01 and 04 sample from the generator, 07 asks the judge, 09 evaluates every model
    assert models["generator"] >= 2 and models["judge"] == 1
    runs = pd.read_parquet(dag.SELECTIVE_SFT.path(profile, "runs"))
    assert len(starts) >= len(runs) + 4  # + base model in 09, generator in 01 and 04, judge in 07


def test_one_engine_at_a_time(dry_run):
    _, events = dry_run
    alive: set = set()
    for event in events:
        key = (event["pid"], event["engine"])
        if event["event"] == "start":
            assert not {a for a in alive if a[0] == event["pid"]}, "an engine started beside a live one"
            alive.add(key)
        elif event["event"] == "shutdown":
            alive.discard(key)
    assert not alive, "an engine was never shut down"


def test_sampled_requests_of_one_call_carry_distinct_seeds(dry_run):
    _, events = dry_run
    sampled_calls = 0
    for event in (e for e in events if e["event"] == "generate"):
        sampled = [r for r in event["requests"] if r["temperature"] > 0]
        if not sampled:
            continue
        sampled_calls += 1
        assert all(r["seed"] is not None for r in sampled)
        seeds = Counter((r["prompt"], r["seed"]) for r in sampled)
        assert max(seeds.values()) == 1, "two requests with the same prompt and seed: identical samples"
    assert sampled_calls >= 3


def test_the_ablations_train_on_the_reference_traces_with_their_signals(dry_run):
    profile, _ = dry_run
    reference_segments = sum(len(s) for s in _reference_segments(profile))
    confidence = pd.read_parquet(dag.CONFIDENCE_DELTA.path(profile, "reference_segment_confidence"))
    linguistics = pd.read_parquet(dag.LINGUISTICS.path(profile, "reference_segment_linguistics"))
    assert len(confidence) == reference_segments == len(linguistics)
    runs = pd.read_parquet(dag.SELECTIVE_SFT.path(profile, "runs"))
    ablations = runs[runs["variant"].isin(["confidence_gain", "segment_perplexity", "segment_entropy"])]
    assert set(ablations["source"]) == {"reference"} and len(ablations) == 3
    pruned = runs[runs["variant"].isin(["pruned_confidence_gain", "pruned_perplexity", "pruned_entropy"])]
    assert set(pruned["source"]) == {"reference"} and len(pruned) == 3


def _reference_segments(profile):
    from segattr_utils import services

    return services.reference_traces(profile)["segments"].tolist()


def test_every_run_trained_under_accelerate_launch(dry_run):
    profile, _ = dry_run
    runs = pd.read_parquet(dag.SELECTIVE_SFT.path(profile, "runs"))
    assert len(runs) > 0 and runs["accelerate_launch"].all()


def test_overall_is_the_mean_of_the_six_table1_benchmarks(dry_run):
    profile, _ = dry_run
    six = profile.get_path("evaluation.overall")
    assert len(six) == 6 and "AIME25" not in six
    graded = pd.read_parquet(dag.EVALUATION.path(profile, "graded"))
    greedy = graded[(graded["model"] == "base") & (graded["mode"] == "greedy")]
    by_benchmark = greedy.groupby("benchmark")["correct"].mean() * 100
    assert set(by_benchmark.index) == {b["name"] for b in profile.get_path("evaluation.benchmarks")}
    table = pd.read_csv(dag.profile_path(profile, dag.TABLES_DIR) / "table1.csv")
    base = table[(table["Decoding"] == "greedy") & (table["Method"] == "Base model (no SFT)")].iloc[0]
    assert float(base["Acc./Pass@1"]) == pytest.approx(by_benchmark[six].mean(), abs=0.051)  # rounded to 0.1
    assert float(base["AIME25"]) == pytest.approx(by_benchmark["AIME25"], abs=0.051)
