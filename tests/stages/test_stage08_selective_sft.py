"""Tests for the SFT and evaluation stages (notebooks 08-09): supervision built from selections, the run
plan, the paper-table metrics and the paired tests, benchmark loading helpers.

Expected values are computed by hand or by an independent route (the tokenizer's own offsets, pass@k
by enumeration), never by the function under test.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from segattr_utils.config import Profile, load_profile, validate_profile
from segattr_utils.llm.training import build_char_masked_example, build_training_example, tokenize_with_offsets
from segattr_utils.stages import stage08_selective_sft as sft
from segattr_utils.world.tokenizer import build_bpe_tokenizer

from ..fixtures.scored import trace_record

CORPUS = [
    "Start with 12, then first add 3. Okay, so 12 + 3 = 15.\n\nWait, let me check 12 + 3 = 15 again.",
    "The final answer is \\boxed{15}.",
    "Please reason step by step.",
] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return build_bpe_tokenizer(CORPUS, vocab_size=300)


PROMPT_MSG = "Start with 12, then first add 3."
SEGMENTS = ["Okay, so 12 + 3 = 15.", "\n\nWait, let me check 12 + 3 = 15 again."]
ANSWER = "\n</think>\n\nThe final answer is \\boxed{15}."


def test_char_masked_example_learns_exactly_the_chosen_tokens(tokenizer):
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT_MSG}], tokenize=False, add_generation_prompt=True
    )
    trace = "".join(SEGMENTS)
    ids, offsets = tokenize_with_offsets(tokenizer, prompt + trace + ANSWER)
    trace_tokens = [i for i, (s, _) in enumerate(offsets) if len(prompt) <= s < len(prompt) + len(trace)]
    chosen = trace_tokens[1::3]  # every third trace token
    spans = [(offsets[i][0] - len(prompt), offsets[i][1] - len(prompt)) for i in chosen]
    example = build_char_masked_example(tokenizer, prompt, trace, ANSWER, spans)
    answer_tokens = [i for i, (s, _) in enumerate(offsets) if s >= len(prompt) + len(trace)]
    expected = [-100] * len(ids)
    for i in chosen + answer_tokens:
        expected[i] = ids[i]
    assert example.input_ids == ids + [tokenizer.eos_token_id]
    assert example.labels == expected + [tokenizer.eos_token_id]


def test_char_masked_example_with_whole_segments_equals_segment_selection(tokenizer):
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT_MSG}], tokenize=False, add_generation_prompt=True
    )
    # the second segment's characters: the segment-level builder must give the same labels
    start = len(SEGMENTS[0])
    by_chars = build_char_masked_example(
        tokenizer, prompt, "".join(SEGMENTS), ANSWER, [(start, start + len(SEGMENTS[1]))]
    )
    by_segments = build_training_example(tokenizer, prompt, SEGMENTS, ANSWER, selected=[1])
    assert by_chars.input_ids == by_segments.input_ids
    assert by_chars.labels == by_segments.labels
    with pytest.raises(ValueError, match="outside the trace"):
        build_char_masked_example(tokenizer, prompt, "".join(SEGMENTS), ANSWER, [(0, 10_000)])


def _profile(**training) -> Profile:
    profile = load_profile("tiny")
    profile["training"] = {**profile["training"], **training}
    return profile


def test_plan_runs_counts_and_names():
    runs = sft.plan_runs(_profile())
    names = [r.name for r in runs]
    assert len(names) == len(set(names))
    # main comparison: 2 sources x 3 seeds x (full, selective)
    main = [r for r in runs if r.tables == ("1",)]
    assert len(main) == 12 and {r.seed for r in main} == {0, 1, 2}
    assert names[0] == "full__self__seed0"
    # Table 2's pruned row and Table 4's IG row are one run per seed, on the main seeds (like for like)
    pruned = [r for r in runs if r.variant == "pruned_ig"]
    assert [r.seed for r in pruned] == [0, 1, 2] and all(r.tables == ("2", "4") for r in pruned)
    # fig5: 3 tau + 2 beta values x 3 seeds; table 7: one retro-search run per seed
    assert sum("fig5" in r.tables for r in runs) == 15
    retro = [r for r in runs if r.keywords == "retro_search"]
    assert [r.name for r in retro] == [f"selective__self__retro_search__seed{s}" for s in (0, 1, 2)]
    # 19 variants besides Table 1's two, each on the 3 main seeds
    assert len(runs) == 12 + 19 * 3
    tau_run = next(r for r in runs if r.overrides == (("tau", 0.9),))
    assert tau_run.setting == "selective__self__tau0.9" and sft.run_label(tau_run) == "Segment Selective SFT (τ = 0.9)"
    assert len(sft.plan_runs(_profile(tables=[], sources=["self"], main_seeds=[5]))) == 2
    # without ablation_seeds, the variants take the main seeds (the schema's default)
    unset = _profile(tables=["2"], sources=["self"], main_seeds=[4, 7])
    del unset["training"]["ablation_seeds"]
    unset = Profile(validate_profile(dict(unset), [(unset.source_path, {})]))
    assert {r.seed for r in sft.plan_runs(unset) if r.variant == "random_segments"} == {4, 7}
    with pytest.raises(ValueError, match="sources"):
        sft.plan_runs(_profile(sources=["self", "web"]))


def test_two_stage_schedule():
    one = sft.schedule(_profile())
    assert len(one) == 1 and one[0].epochs == 5
    two = sft.schedule(_profile(schedule="two_stage"))
    assert [s.epochs for s in two] == [7, 4] and two[1].learning_rate == 0.0003 and two[0].learning_rate == 0.0005
    with pytest.raises(ValueError, match="schedule"):
        sft.schedule(_profile(schedule="three_stage"))


# ---------------------------------------------------------------------------------------------
# Evaluation metrics


# ---------------------------------------------------------------------------------------------
# Benchmark loading helpers


def test_stop_after_epoch_ends_training_early(tmp_path):
    from segattr_utils.llm.training import TrainingExample, TrainSettings, train_sft

    from ..fixtures.tiny_models import tiny_qwen2

    tok = build_bpe_tokenizer(CORPUS, vocab_size=300)
    model = tiny_qwen2(len(tok), seed=None, hidden_size=16, num_hidden_layers=1, max_position_embeddings=64)
    ids = tok("12 + 3 = 15", add_special_tokens=False)["input_ids"]
    examples = [TrainingExample(ids, ids)] * 8
    settings = TrainSettings(
        epochs=4, batch_size=4, stop_after_epoch=2, save_steps=1000, logging_steps=1, learning_rate=1e-3
    )
    summary = train_sft(model, tok, examples, settings, tmp_path / "run", seed=0)
    assert summary["steps"] == 4  # 2 steps per epoch, stopped after epoch 2 of 4
    assert math.isfinite(summary["final_loss"])


def test_the_registry_alone_drives_the_run_plan():
    from segattr_utils.llm import variants

    profile = _profile(tables=["2"], ablation_seeds=[0])
    before = {r.name for r in sft.plan_runs(profile)}
    variants.register("my_rule", label="My Segments", mode="selective", tables=("2",))(
        lambda records, settings: [variants.TraceSelection({0}) for _ in records]
    )
    try:
        after = {r.name for r in sft.plan_runs(profile)}
    finally:
        del variants.REGISTRY["my_rule"]
    assert after - before == {"my_rule__self__seed0"}
    # Table 2's pruned row is the pruned_ig run, which Table 4 shares
    (pruned,) = [r for r in sft.plan_runs(_profile(tables=["2", "4"], ablation_seeds=[0])) if r.variant == "pruned_ig"]
    assert pruned.tables == ("2", "4")


def test_a_variant_names_the_signal_it_needs():

    from segattr_utils.llm.variants import SelectionSettings, get_variant

    record = trace_record("t", "q", "1", ["a", "b"], "x", [[1.0], [1.0]], [[(0, 1)], [(1, 2)]])
    with pytest.raises(ValueError, match="needs 'confidence_delta' .*notebook 04"):
        get_variant("confidence_gain").selections([record], SelectionSettings())


# ---------------------------------------------------------------------------------------------
# Launching runs (paper profile): one GPU per run, spread over the visible GPUs; accelerate as an option


def _paper_profile(tmp_path, **training) -> Profile:
    profile = load_profile("paper")
    profile["results_root"] = str(tmp_path / "results")
    profile["training"] = {**profile["training"], **training}
    return profile


# A stand-in for the ``sft`` worker: writes the run's summary (or fails with status 4 for a run named in
# FAIL_RUNS) and records the GPU it saw.
FAKE_SFT_WORKER = """
import json, os, sys
from pathlib import Path
folder, run = Path(sys.argv[1]), sys.argv[2]
(Path(sys.argv[3]) / (run + ".gpu")).write_text(os.environ.get("CUDA_VISIBLE_DEVICES", ""))
if run in os.environ.get("FAIL_RUNS", "").split(","):
    print("out of memory in", run)
    sys.exit(4)
(folder / run).mkdir(parents=True, exist_ok=True)
(folder / run / "summary.json").write_text(json.dumps({"run": run}))
"""


def _fake_worker(profile, seen_dir, commands, profiles=None):
    """``_run_command`` replaced by the stand-in worker (one run per command); the real commands are kept in
    ``commands``, the profiles the processes would read in ``profiles``."""
    real = sft._run_command
    seen_dir.mkdir(parents=True, exist_ok=True)

    def command(specs, profile_file, accelerate_config=None):
        (spec,) = specs
        commands.append(real(specs, profile_file, accelerate_config))
        if profiles is not None:
            profiles.append(load_profile(profile_file))
        folder = sft.STAGE.path(profile, "run_folders")
        return [sys.executable, "-c", FAKE_SFT_WORKER, str(folder), spec.name, str(seen_dir)]

    return command


def test_default_paper_plan_trains_each_run_on_one_gpu_with_the_authors_batch(tmp_path, monkeypatch):
    profile = _paper_profile(tmp_path)
    assert profile.get_path("training.launcher") == "per_gpu"
    (settings,) = sft.schedule(profile)
    assert settings.batch_size == 2 and settings.gradient_accumulation_steps == 1
    assert settings.save_strategy == "epoch"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    runs = sft.plan_runs(profile)
    assigned = sft.assign_gpus(runs, sft.visible_gpus(profile))
    assert assigned == {str(gpu): runs[gpu::4] for gpu in range(4)}
    # every run trains on exactly one GPU
    assert sorted(r.name for specs in assigned.values() for r in specs) == sorted(r.name for r in runs)


def test_runs_go_round_robin_to_the_visible_gpus_one_subprocess_each(tmp_path, monkeypatch):
    profile = _paper_profile(tmp_path)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    commands, profiles = [], []
    profile["training"]["sft"] = {**profile["training"]["sft"], "learning_rate": 1e-6}  # changed in memory
    monkeypatch.setattr(sft, "_run_command", _fake_worker(profile, tmp_path / "seen", commands, profiles))
    runs = sft.plan_runs(profile)[:5]
    summaries = sft._train_per_gpu(profile, runs, poll_seconds=0.02)
    assert [s["run"] for s in summaries] == [r.name for r in runs]
    gpu_of = {r.name: (tmp_path / "seen" / f"{r.name}.gpu").read_text() for r in runs}
    assert gpu_of == {r.name: gpu for r, gpu in zip(runs, ["3", "5", "3", "5", "3"])}
    # the worker command: this interpreter, the sft job, the profile as it was in memory, one run
    command = commands[0]
    assert command[:4] == [sys.executable, "-m", "segattr_utils.workers", "sft"]
    assert profiles[0] == profile and profiles[0]["training"]["sft"]["learning_rate"] == 1e-6
    assert sorted(c[c.index("--runs") + 1] for c in commands) == sorted(r.name for r in runs)
    assert not (sft.STAGE.path(profile, "run_folders") / ".launch").exists()
    # finished runs are not relaunched; training.gpus limits the GPUs used
    commands.clear()
    assert len(sft._train_per_gpu(profile, runs)) == 5 and not commands
    assert sft.visible_gpus(_paper_profile(tmp_path, gpus=1)) == ["3"]
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        sft._train_per_gpu(profile, sft.plan_runs(profile)[5:6])


def test_a_failed_run_stops_its_gpu_the_other_gpu_finishes_its_runs(tmp_path, monkeypatch):
    profile = _paper_profile(tmp_path)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    runs = sft.plan_runs(profile)[:6]  # GPU 0: runs 0, 2, 4; GPU 1: runs 1, 3, 5
    monkeypatch.setenv("FAIL_RUNS", runs[2].name)
    monkeypatch.setattr(sft, "_run_command", _fake_worker(profile, tmp_path / "seen", []))
    with pytest.raises(RuntimeError) as error:
        sft._train_per_gpu(profile, runs, poll_seconds=0.02)
    log = sft.STAGE.path(profile, "run_folders") / ".launch" / f"{runs[2].name}.log"
    assert str(error.value).startswith(f"SFT run {runs[2].name} on GPU 0 failed (exit status 4)")
    assert f"{log}:\nout of memory in {runs[2].name}\n" in str(error.value)
    assert f"not started, after a failure in their queue: SFT run {runs[4].name} on GPU 0" in str(error.value)
    finished = {r.name for r in runs if sft._finished(profile, r)}
    assert finished == {runs[0].name, runs[1].name, runs[3].name, runs[5].name}
    # the next call trains what is left, nothing twice
    monkeypatch.delenv("FAIL_RUNS")
    for seen in (tmp_path / "seen").glob("*.gpu"):
        seen.unlink()
    assert [s["run"] for s in sft._train_per_gpu(profile, runs, poll_seconds=0.02)] == [r.name for r in runs]
    assert sorted(p.stem for p in (tmp_path / "seen").glob("*.gpu")) == sorted([runs[2].name, runs[4].name])


def test_accelerate_launch_runs_with_this_interpreter(tmp_path, monkeypatch):
    profile = _paper_profile(tmp_path, launcher="accelerate")
    commands = []
    monkeypatch.setattr(sft, "_run_command", _fake_worker(profile, tmp_path / "seen", commands))
    specs = sft.plan_runs(profile)[:2]
    assert sft._launch_with_accelerate(profile, specs, poll_seconds=0.02) == [{"run": s.name} for s in specs]
    for command, spec in zip(commands, specs):  # one launch per run, in turn
        assert command[:5] == [sys.executable, "-m", "accelerate.commands.launch", "--config_file", command[4]]
        assert command[4].endswith(".launch/accelerate_config.yaml")  # the launch's copy of the config
        at = command.index("-m", 5)
        assert command[at : at + 3] == ["-m", "segattr_utils.workers", "sft"]
        assert command[command.index("--runs") + 1 :] == [spec.name]


def test_the_accelerate_launcher_finds_its_deepspeed_file_from_the_notebooks_folder(tmp_path, monkeypatch):
    """papermill runs notebook 08 in notebooks/; the processes accelerate launches open the DeepSpeed file
    named by configs/accelerate_deepspeed_zero2.yaml (configs/ds_zero2.json) relative to that folder.
    The config the launch reads must name it so that it is found from there."""
    from accelerate.commands.config.config_args import load_config_from_file

    from segattr_utils.config import find_project_root

    root = find_project_root()
    monkeypatch.chdir(root / "notebooks")
    profile = _paper_profile(tmp_path, launcher="accelerate")
    assert profile.get_path("training.accelerate_config") == "configs/accelerate_deepspeed_zero2.yaml"
    read = {}

    def fake_run_commands(commands, **kwargs):
        for command in commands:
            config = command.argv[command.argv.index("--config_file") + 1]
            # what accelerate launch reads and passes on to its processes (ACCELERATE_DEEPSPEED_CONFIG_FILE)
            read[config] = load_config_from_file(config).deepspeed_config["deepspeed_config_file"]
            run = command.argv[command.argv.index("--runs") + 1]
            (sft.STAGE.path(profile, "run_folders") / run).mkdir(parents=True, exist_ok=True)
            (sft.STAGE.path(profile, "run_folders") / run / "summary.json").write_text(f'{{"run": "{run}"}}')

    monkeypatch.setattr(sft.distributed, "run_commands", fake_run_commands)
    sft._launch_with_accelerate(profile, sft.plan_runs(profile)[:1])
    ((deepspeed_file,),) = [read.values()]
    assert os.path.isfile(deepspeed_file)  # found from notebooks/, where the processes run
    assert Path(deepspeed_file) == root / "configs" / "ds_zero2.json"


def test_a_launcher_that_cannot_start_is_refused_before_the_reference_ig(tmp_path, monkeypatch):
    def no_work(profile):
        raise AssertionError("work started before the launcher was checked")

    monkeypatch.setattr(sft, "attribute_reference_traces", no_work)
    missing = tmp_path / "accelerate.yaml"
    missing.write_text("deepspeed_config:\n  deepspeed_config_file: configs/no_such_ds.json\n")
    with pytest.raises(FileNotFoundError, match="DeepSpeed config file configs/no_such_ds.json"):
        sft.train_all(_paper_profile(tmp_path, launcher="accelerate", accelerate_config=str(missing)))
    with pytest.raises(ValueError, match="training.launcher must be one of"):
        sft.train_all(_paper_profile(tmp_path, launcher="slurm"))
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    with pytest.raises(RuntimeError, match="per_gpu needs a CUDA GPU"):
        sft.train_all(_paper_profile(tmp_path, launcher="per_gpu"))


# A module run as each rank of a launch: is this rank the one that writes the final model?
MAIN_PROCESS_PROBE = """
import os, sys
from segattr_utils import distributed
from segattr_utils.stages.stage08_selective_sft import _is_main_process
distributed.process_state(cpu=True)  # the Trainer sets up the state first (gloo on the CPU)
rank = os.environ["RANK"]
open(os.path.join(sys.argv[1], "rank-" + rank), "w").write(str(_is_main_process()))
"""


def test_only_accelerates_main_process_writes_the_model(tmp_path, monkeypatch):
    """Which process writes the final model comes from accelerate's state: in a launch of two processes
    exactly rank 0; outside a launch the one process, whatever RANK an outer job left in the environment."""
    from segattr_utils import distributed

    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "__init__.py").write_text("")
    (tmp_path / "probe" / "main_process.py").write_text(MAIN_PROCESS_PROBE)
    env_path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", env_path)
    distributed.launch_ranks(
        "probe.main_process",  # a module: a dotted name
        [str(tmp_path)],
        processes=2,
        threads=1,
        logs=tmp_path / "logs",
        total=2,
        count_done=lambda: len(list(tmp_path.glob("rank-*"))),
        desc="probe",
        poll_seconds=0.5,
    )
    assert {p.name: p.read_text() for p in tmp_path.glob("rank-*")} == {"rank-0": "True", "rank-1": "False"}
    monkeypatch.setenv("RANK", "1")
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        if name != "RANK":
            monkeypatch.delenv(name, raising=False)
    assert sft._is_main_process()


# ---------------------------------------------------------------------------------------------
# Over-length traces: kept, truncated at SFT, counted


def test_an_over_length_trace_is_kept_truncated_and_counted(tokenizer):
    from segattr_utils.llm.variants import TraceSelection

    long_segments = SEGMENTS * 6
    records = [
        trace_record("short", PROMPT_MSG, "15", SEGMENTS, ANSWER, [[1.0]] * 2, [[(0, 1)]] * 2),
        trace_record("long", PROMPT_MSG, "15", long_segments, ANSWER, [[1.0]] * 12, [[(0, 1)]] * 12),
    ]
    selections = [TraceSelection({0}), TraceSelection({0})]
    examples = sft.build_examples(tokenizer, records, selections, "selective")
    short, long = (len(e.input_ids) for e in examples)
    max_length = (short + long) // 2
    assert short <= max_length < long
    stats = sft.supervision_stats(records, selections, examples, "selective", max_length)
    assert stats["traces"] == 2 and stats["truncated_traces"] == 1
    # the long trace is trained on its first max_length tokens: its answer part is cut off
    assert stats["sequence_tokens"] == short + max_length
    assert stats["trained_tokens"] == examples[0].n_trained + sum(
        label != -100 for label in examples[1].labels[:max_length]
    )
    assert sft.supervision_stats(records, selections, examples, "selective", long)["truncated_traces"] == 0


# ---------------------------------------------------------------------------------------------
# Ablations on the reference traces (the paper profile): their signals come from stages 04-05

ABLATIONS_WITH_SIGNALS = {
    "confidence_gain": "confidence_delta",
    "pruned_confidence_gain": "confidence_delta",
    "segment_perplexity": "removal_ppl_increase",
    "pruned_perplexity": "removal_ppl_increase",
    "segment_entropy": "entropy",
    "pruned_entropy": "entropy",
}


@pytest.mark.parametrize("name", ["tiny", "smoke", "paper"])
def test_planned_signals_are_the_needs_of_the_planned_runs(name):
    from segattr_utils import services
    from segattr_utils.llm.variants import get_variant

    profile = load_profile(name)
    planned: dict[str, set] = {}
    for spec in sft.plan_runs(profile):
        planned.setdefault(spec.source, set()).update(get_variant(spec.variant).needs)
    assert {s: set(n) for s, n in services.planned_signals(profile).items()} == planned
    ablation = profile.get_path("training.ablation_source")
    assert planned[ablation] == set(ABLATIONS_WITH_SIGNALS.values())
    other = "self" if ablation == "reference" else "reference"
    assert not planned[other]  # the main comparison needs no signal: nothing is measured for it


def test_stages_04_and_05_compute_every_signal_a_variant_may_need():
    from segattr_utils.llm.variants import SIGNAL_SOURCES
    from segattr_utils.stages import stage04_confidence_delta, stage05_linguistics

    for stage in (stage04_confidence_delta, stage05_linguistics):
        for signal in stage.SIGNALS:
            assert SIGNAL_SOURCES[signal] == f"notebook {stage.STAGE.number}"
    assert set(stage04_confidence_delta.SIGNALS) | set(stage05_linguistics.SIGNALS) == set(SIGNAL_SOURCES)


def test_ablations_on_reference_traces_carry_the_signals_of_stages_04_and_05(reference_profile):
    from segattr_utils import dag
    from segattr_utils.artifacts import read_table
    from segattr_utils.llm.variants import get_variant
    from segattr_utils.stages import stage04_confidence_delta, stage05_linguistics

    profile = reference_profile
    sft.attribute_reference_traces(profile)
    settings = sft.selection_settings(profile)
    # before notebooks 04-05 measured the reference traces: the variant names the notebook it needs
    records = sft.load_trace_records(profile, "reference")
    assert all(r.confidence_delta is None and r.entropy is None for r in records)
    with pytest.raises(ValueError, match="needs 'confidence_delta' .*notebook 04"):
        get_variant("confidence_gain").selections(records, settings)
    with pytest.raises(ValueError, match="needs 'removal_ppl_increase' .*notebook 05"):
        get_variant("pruned_perplexity").selections(records, settings)

    # notebooks 04 and 05 as they run: the Sec. 3 analyses on the self traces, the signals of both sources
    results = [stage.run(profile) for stage in (stage04_confidence_delta, stage05_linguistics)]
    records = sft.load_trace_records(profile, "reference")
    assert [r.trace_id for r in records] == ["q0:reference", "q1:reference"]
    for name in ABLATIONS_WITH_SIGNALS:  # before this change: "variant ... needs 'confidence_delta'"
        selections = get_variant(name).selections(records, settings)
        assert len(selections) == 2 and all(s.segments for s in selections)
    for result in results:
        assert not result.failed_checks()
        assert any("every reference trace" in check for check in result.checks)
    confidence = read_table(dag.CONFIDENCE_DELTA.path(profile, "reference_segment_confidence"))
    measures = read_table(dag.LINGUISTICS.path(profile, "reference_segment_linguistics"))
    for record in records:
        rows = confidence[confidence["trace_id"] == record.trace_id].sort_values("segment")
        assert record.confidence_delta.tolist() == rows["delta"].tolist()
        rows = measures[measures["trace_id"] == record.trace_id].sort_values("segment")
        assert len(rows) == record.n_segments
        for column in ("log_ppl", "entropy", "removal_ppl_increase"):
            assert getattr(record, column).tolist() == rows[column].tolist()
    # every planned setting (all on the reference traces) builds its supervision
    preview = sft.supervision_preview(profile)
    planned = {f"{name}__reference" for name in ABLATIONS_WITH_SIGNALS}
    assert planned <= set(preview["setting"])
    assert (preview["traces"] == 2).all()


def test_reference_ig_started_by_hand_is_merged_by_the_next_notebook_run(reference_profile, tmp_path):
    """``python -m segattr_utils.workers attribution --items reference`` (a rank of a launch on several
    machines, here one process) writes its rank store; notebook 08's reference IG then merges it, in input
    order, and has nothing left to attribute."""
    import subprocess

    from segattr_utils.artifacts import RecordStore
    from segattr_utils.config import save_profile
    from segattr_utils.distributed import rank_store_paths

    profile_file = save_profile(reference_profile, tmp_path / "profile.yaml")
    command = [sys.executable, "-m", "segattr_utils.workers", "attribution", "--profile", str(profile_file)]
    subprocess.run([*command, "--items", "reference"], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    traces, store_path = sft.reference_traces_to_attribute(reference_profile)
    assert len(rank_store_paths(store_path)) == 1 and not store_path.exists()
    table = sft.attribute_reference_traces(reference_profile)
    assert list(table["trace_id"]) == [t["trace_id"] for t in traces] and table["skipped"].isna().all()
    assert rank_store_paths(store_path) == [] and len(RecordStore(store_path, key_fn=lambda r: r["trace_id"])) == 2
    refused = subprocess.run([*command, "--items", "refrence"], capture_output=True, text=True)
    assert (
        refused.returncode == 2 and "--items refrence is not one of kept, reference and needs --store" in refused.stderr
    )
    unknown = [sys.executable, "-m", "segattr_utils.workers", "sft", "--profile", str(profile_file), "--runs", "nope"]
    refused = subprocess.run(unknown, capture_output=True, text=True)
    assert refused.returncode == 2 and "no planned run 'nope'; planned: full__reference__seed0" in refused.stderr


# ---------------------------------------------------------------------------------------------
# The processes launcher: runs dealt over single-threaded subprocesses (the tiny profile's default)


def _copy_inputs(profile, root):
    """``profile`` with its results under ``root``, holding a copy of the stage 00-03 inputs."""
    import shutil

    from segattr_utils import dag
    from segattr_utils.config import results_dir

    moved = Profile({**profile, "results_root": str(root)})
    for stage in (dag.WORLD, dag.GENERATION, dag.SEGMENTATION, dag.IG_ATTRIBUTION, dag.SELECTIVE_SFT):
        if (results_dir(profile) / stage.folder).exists():
            shutil.copytree(results_dir(profile) / stage.folder, results_dir(moved) / stage.folder)
    return moved


def test_runs_dealt_over_two_processes_train_what_one_process_trains(reference_profile, tmp_path):
    """training.launcher: processes trains each run in a single-threaded subprocess of its own share; the
    runs reach the losses and weights one in-process run reaches, up to float rounding (each run seeds
    itself), the processes got the thread count asked for, and no launch folder is left behind."""
    import torch
    from safetensors.torch import load_file

    profile = Profile(
        {
            **reference_profile,
            "training": {
                **reference_profile["training"],
                "sft": {**reference_profile["training"]["sft"], "logging_steps": 1},
            },
        }
    )
    wanted = ["full__reference__seed0", "selective__reference__seed0"]
    assert set(wanted) <= {r.name for r in sft.plan_runs(profile)}
    one = _copy_inputs(profile, tmp_path / "one")
    one["training"] = {**profile["training"], "launcher": "inprocess"}
    two = _copy_inputs(profile, tmp_path / "two")
    two["training"] = {**profile["training"], "launcher": "processes", "processes": 2, "threads_per_process": 1}
    alone = sft.train_all(one, only=wanted).set_index("run")
    spread = sft.train_all(two, only=wanted).set_index("run")
    assert list(spread.index) == wanted
    for run in wanted:
        assert spread.loc[run, "final_loss"] == pytest.approx(alone.loc[run, "final_loss"], rel=1e-4)
        assert spread.loc[run, "steps"] == alone.loc[run, "steps"]
        a = load_file(str(sft.STAGE.path(one, "models") / run / "model.safetensors"))
        b = load_file(str(sft.STAGE.path(two, "models") / run / "model.safetensors"))
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)
    assert not (sft.STAGE.path(two, "run_folders") / ".launch").exists()
    # a second call deals nothing: every run is finished
    assert list(sft.train_all(two, only=wanted)["run"]) == wanted


def test_a_resumed_train_all_rewrites_runs_parquet_byte_for_byte(reference_profile):
    """Equal runs, equal bytes: the second call finds every run finished and reads its summary back from
    ``summary.json`` (sorted keys), yet writes the same ``runs.parquet`` as the call that trained them, with
    the columns in their declared order; no wall-clock value is in the table or in a run's summaries (the
    seconds are in the stage's run log)."""
    import json

    profile = Profile({**reference_profile, "training": {**reference_profile["training"], "launcher": "inprocess"}})
    wanted = ["full__reference__seed0", "selective__reference__seed0"]
    path = sft.STAGE.path(profile, "runs")
    fresh = sft.train_all(profile, only=wanted)
    first = path.read_bytes()
    assert list(fresh.columns[:3]) == ["run", "setting", "variant"] and list(fresh["run"]) == wanted
    resumed = sft.train_all(profile, only=wanted)
    assert path.read_bytes() == first
    assert list(resumed.columns) == list(fresh.columns)
    timing = {"train_runtime", "trainer_runtime", "train_seconds", "seconds_per_step", "steps_this_session"}
    assert not timing & set(fresh.columns)
    for run in wanted:
        folder = sft.STAGE.path(profile, "run_folders") / run
        for summary in [folder / "summary.json", *folder.glob("stage*/stage_summary.json")]:
            assert not timing & set(json.loads(summary.read_text())), summary
    from segattr_utils.run_log import read_run_log

    log = read_run_log(profile, sft.STAGE)
    for run in wanted:
        assert {f"{run}: stage1: train_runtime", f"{run}: seconds_per_step"} <= set(log["what"])


def test_a_run_under_accelerate_launch_on_the_cpu_trains_and_writes_its_model(reference_profile, tmp_path, monkeypatch):
    """training.launcher: accelerate, with a one-process CPU accelerate config started from notebooks/ (as
    under papermill): the run trains under accelerate launch (its summary says so), its main process writes
    the model, and the launch folder with the config's copy is removed."""
    import yaml

    from segattr_utils.config import find_project_root

    config = tmp_path / "accelerate_cpu.yaml"
    cpu = {"compute_environment": "LOCAL_MACHINE", "distributed_type": "NO", "num_machines": 1, "num_processes": 1}
    config.write_text(yaml.safe_dump({**cpu, "machine_rank": 0, "mixed_precision": "no", "use_cpu": True}))
    launched = _copy_inputs(reference_profile, tmp_path / "launched")
    sft_settings = {**reference_profile["training"]["sft"], "logging_steps": 1}  # a loss to read back
    launched["training"] = {
        **reference_profile["training"],
        "sft": sft_settings,
        "launcher": "accelerate",
        "accelerate_config": str(config),
    }
    wanted = ["full__reference__seed0"]
    monkeypatch.chdir(find_project_root() / "notebooks")
    runs = sft.train_all(launched, only=wanted).set_index("run")
    assert list(runs.index) == wanted and bool(runs.loc[wanted[0], "accelerate_launch"])
    assert runs.loc[wanted[0], "world_size"] == 1 and np.isfinite(runs.loc[wanted[0], "final_loss"])
    assert (sft.STAGE.path(launched, "models") / wanted[0] / "model.safetensors").is_file()
    assert not (sft.STAGE.path(launched, "run_folders") / ".launch").exists()


def test_a_failed_training_process_names_its_log(profile, tmp_path, monkeypatch):
    two = Profile({**profile, "training": {**profile["training"], "launcher": "processes", "processes": 2}})
    seen = []

    def failing(specs, profile_file, accelerate_config=None):
        seen.append(([s.name for s in specs], profile_file))
        return [sys.executable, "-c", "import os, sys; print('threads', os.environ['OMP_NUM_THREADS']); sys.exit(3)"]

    monkeypatch.setattr(sft, "_run_command", failing)
    runs = sft.plan_runs(two)[:5]
    with pytest.raises(RuntimeError, match=r"SFT process 0 of 2 failed \(exit status 3\)(.|\n)*threads 1"):
        sft._train_in_processes(two, runs, poll_seconds=0.05)
    # dealt in turn: 3 runs and 2 runs; the saved profile is the one in memory
    assert [names for names, _ in seen] == [[r.name for r in runs[0::2]], [r.name for r in runs[1::2]]]
    assert load_profile(seen[0][1])["training"]["launcher"] == "processes"
    # the logs are kept for a look
    assert (sft.STAGE.path(two, "run_folders") / ".launch" / "process-1.log").read_text() == "threads 1\n"


# ---------------------------------------------------------------------------------------------
# Stage 08 trains from the scored traces stage 03 stored


def _old_path_tokens(tokenizer, profile, question, segments, answer, stored):
    """Per segment, the token attributions and trace-relative character offsets of ``segments`` as
    rebuilding the attributed sequence gives them (the tokenizer's own offsets of prompt + trace +
    suffix, a token in the segment holding its first character)."""
    from segattr_utils import services
    from segattr_utils.method.token_spans import build_attribution_sequence

    prompt = services.prompt(tokenizer, question)
    sequence = build_attribution_sequence(
        tokenizer, prompt, segments, answer, suffix_template=profile["attribution"]["answer_suffix"]
    )
    flat = [v for segment in stored["token_attributions"] for v in segment]
    start = sequence.trace_span[0]
    assert sequence.trace_span[1] - start == len(flat)
    values = [flat[s - start : e - start] for s, e in sequence.segment_spans]
    offsets = [
        [(a - len(prompt), b - len(prompt)) for a, b in sequence.offsets[s:e]] for s, e in sequence.segment_spans
    ]
    return values, offsets


def test_stage08_trains_from_stage03s_stored_scored_traces(profile, monkeypatch):
    """load_trace_records reads stage 03's records as stored (no tokenizer is loaded; a tampered token id
    or attribution is used as it is), gives the token attributions and offsets that rebuilding the
    attributed sequence gives, regroups them for Table 7's keywords as re-attributing with the new
    segments would, and the selective variant selects stage 03's selected_for_sft segments."""
    from segattr_utils import dag, services
    from segattr_utils.artifacts import RecordStore
    from segattr_utils.method.segmentation import segment
    from segattr_utils.stages import stage03_ig_attribution as stage03

    monkeypatch.setattr(services, "world_problems", lambda profile: {})  # no stage-00 world here
    scores = stage03.attribute_kept_traces(profile)
    tokenizer = services.load_role_tokenizer(profile, "student")
    store = RecordStore(dag.IG_ATTRIBUTION.path(profile, "attributions_store"), key_fn=lambda r: r["trace_id"])
    stored = {r["trace_id"]: r for r in store.records()}

    def no_tokenizer(*args, **kwargs):
        raise AssertionError("load_trace_records loaded a tokenizer")

    monkeypatch.setattr(services, "load_role_tokenizer", no_tokenizer)
    records = sft.load_trace_records(profile, "self")
    kept = services.kept_traces(profile).set_index("trace_id")
    texts = services.segment_texts(services.segment_table(profile))
    assert [r.trace_id for r in records] == ["q0:correct", "q1:correct"]  # the correct kept traces
    for record in records:
        trace = kept.loc[record.trace_id]
        values, offsets = _old_path_tokens(
            tokenizer, profile, trace["question"], texts[record.trace_id], trace["answer"], stored[record.trace_id]
        )
        assert record.segments == texts[record.trace_id] and record.answer_part == trace["answer_part"]
        assert [v.tolist() for v in record.token_values] == values
        assert [list(o) for o in record.scored.token_offsets] == offsets
        assert record.kinds == ["productive"] * record.n_segments
        # ours = stage 03's selected_for_sft (important or always kept) at the profile's tau and beta
        rows = scores[scores["trace_id"] == record.trace_id]
        (selection,) = get_variant_selections("selective", [record], sft.selection_settings(profile))
        assert selection.segments == set(rows.loc[rows["selected_for_sft"], "segment"])

    # Table 7: the stored tokens regrouped by other segments equal re-attributing with them (the
    # Retro-Search keywords, and a list with "Wait" alone, which merges q0's last two segments)
    for keywords in ("retro_search", ["\n\nWait"]):
        regrouped = sft.load_trace_records(profile, "self", keywords=keywords)
        for record in regrouped:
            trace = kept.loc[record.trace_id]
            segments = segment("".join(texts[record.trace_id]), services.keywords_for(profile, keywords))
            values, offsets = _old_path_tokens(
                tokenizer, profile, trace["question"], segments, trace["answer"], stored[record.trace_id]
            )
            assert record.segments == segments and record.kinds == [None] * len(segments)
            assert [v.tolist() for v in record.token_values] == values
            assert [list(o) for o in record.scored.token_offsets] == offsets
    assert [r.n_segments for r in regrouped] == [2, 1]

    # a record is used as stored: a tampered token id and attribution come through unchanged
    tampered = stored["q1:correct"]
    tampered["token_ids"][0][0] = 7
    tampered["token_attributions"][0][0] = 123.0
    store.discard(["q1:correct"])
    store.append([tampered])
    (record,) = [r for r in sft.load_trace_records(profile, "self") if r.trace_id == "q1:correct"]
    assert record.scored.token_ids[0][0] == 7 and record.token_values[0][0] == 123.0


def get_variant_selections(name, records, settings):
    from segattr_utils.llm.variants import get_variant

    return get_variant(name).selections(records, settings)


def test_build_examples_labels_equal_hand_built_masks(profile, monkeypatch):
    """Every mode's example from a stored scored trace: selective labels = a hand-built mask over the
    selected segments' characters, token-level labels = the chosen tokens' characters, pruned = the kept
    segments' text, all from the tokenizer's own offsets of the trained text."""
    from segattr_utils import services
    from segattr_utils.llm.variants import TraceSelection
    from segattr_utils.stages import stage03_ig_attribution as stage03

    from ..conftest import hand_labels

    monkeypatch.setattr(services, "world_problems", lambda profile: {})
    stage03.attribute_kept_traces(profile)
    tokenizer = services.load_role_tokenizer(profile, "student")
    (record,) = [r for r in sft.load_trace_records(profile, "self") if r.trace_id == "q0:correct"]
    prompt = services.prompt(tokenizer, record.question)
    assert prompt == record.scored.prompt

    (selective,) = sft.build_examples(tokenizer, [record], [TraceSelection({1})], "selective")
    assert (selective.input_ids, selective.labels) == hand_labels(
        tokenizer, prompt, record.segments, record.answer_part, {1}
    )
    (full,) = sft.build_examples(tokenizer, [record], [TraceSelection({1})], "full")
    assert full.labels == hand_labels(tokenizer, prompt, record.segments, record.answer_part, {0, 1, 2})[1]

    (pruned,) = sft.build_examples(tokenizer, [record], [TraceSelection({0, 2})], "pruned")
    kept = [record.segments[0], record.segments[2]]
    assert (pruned.input_ids, pruned.labels) == hand_labels(tokenizer, prompt, kept, record.answer_part, {0, 1})

    # token level (Table 2): segment 2 whole and the 2nd and 4th tokens of segment 0
    selection = TraceSelection({2}, {(0, 1), (0, 3)})
    (tokens,) = sft.build_examples(tokenizer, [record], [selection], "selective")
    trace = "".join(record.segments)
    chosen = [record.scored.token_offsets[0][1], record.scored.token_offsets[0][3]]
    chosen.append((len(record.segments[0]) + len(record.segments[1]), len(trace)))
    encoded = tokenizer(prompt + trace + record.answer_part, add_special_tokens=False, return_offsets_mapping=True)
    expected = []
    for token, (first, _) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        position = first - len(prompt)
        learned = position >= len(trace) or any(s <= position < e for s, e in chosen)
        expected.append(token if learned else -100)
    assert tokens.input_ids == encoded["input_ids"] + [tokenizer.eos_token_id]
    assert tokens.labels == expected + [tokenizer.eos_token_id]
    assert 0 < sum(label != -100 for label in tokens.labels) < len(tokens.labels)
