"""Progress output follows SEGATTR_QUIET_PROGRESS: a bar in a terminal, nothing in executed notebooks."""

import io
import math
import warnings

import pytest

from segattr_utils.progress import (
    QUIET_ENV,
    progress,
    quiet_environment,
    quiet_libraries,
    quiet_progress,
    trainer_progress,
)


@pytest.fixture
def restore_library_state():
    """quiet_libraries() changes process-wide switches of transformers and datasets: put them back."""
    import datasets
    import transformers.utils.logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    dataset_bars = datasets.is_progress_bar_enabled()
    yield
    (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()
    hf_logging.set_verbosity(verbosity)
    (datasets.enable_progress_bars if dataset_bars else datasets.disable_progress_bars)()


@pytest.mark.parametrize("value, quiet", [("1", True), ("true", True), ("ON", True), ("0", False), ("", False)])
def test_quiet_progress_reads_the_variable(monkeypatch, value, quiet):
    monkeypatch.setenv(QUIET_ENV, value)
    assert quiet_progress() is quiet


def test_progress_shows_a_bar_without_the_variable(monkeypatch):
    monkeypatch.delenv(QUIET_ENV, raising=False)
    stream = io.StringIO()
    assert list(progress(range(3), desc="work", file=stream, mininterval=0)) == [0, 1, 2]
    assert "work" in stream.getvalue() and "3/3" in stream.getvalue()


def test_progress_is_silent_under_the_variable(monkeypatch, capsys):
    monkeypatch.setenv(QUIET_ENV, "1")
    stream = io.StringIO()
    bar = progress(range(3), desc="work", file=stream, disable=False)
    assert list(bar) == [0, 1, 2]
    assert bar.disable
    assert stream.getvalue() == ""
    assert capsys.readouterr() == ("", "")
    with progress(total=2) as manual:  # the non-iterable form works too
        manual.update(2)


def test_quiet_environment_switches_the_libraries_and_keeps_other_warning_filters(monkeypatch):
    monkeypatch.setenv("PYTHONWARNINGS", "error::ResourceWarning")
    env = quiet_environment()
    assert env[QUIET_ENV] == "1"
    assert env["HF_HUB_DISABLE_PROGRESS_BARS"] == env["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1"
    assert env["TRANSFORMERS_VERBOSITY"] == "error"
    assert env["TQDM_DISABLE"] == "1"  # tqdm's default for bars made without disable= (other libraries')
    assert env["PYTHONWARNINGS"] == "error::ResourceWarning,ignore:IProgress not found:Warning"
    monkeypatch.setenv("PYTHONWARNINGS", env["PYTHONWARNINGS"])
    assert quiet_environment()["PYTHONWARNINGS"] == env["PYTHONWARNINGS"]  # not appended twice


def test_quiet_libraries_does_nothing_without_the_variable(monkeypatch, restore_library_state):
    import transformers.utils.logging as hf_logging

    monkeypatch.delenv(QUIET_ENV, raising=False)
    hf_logging.enable_progress_bar()
    assert quiet_libraries() is False
    assert hf_logging.is_progress_bar_enabled()
    assert trainer_progress() == {"disable_tqdm": False}


def test_quiet_libraries_switches_off_transformers_and_datasets_bars(monkeypatch, restore_library_state):
    import logging

    import datasets
    import transformers.utils.logging as hf_logging

    monkeypatch.setenv(QUIET_ENV, "1")
    hf_logging.enable_progress_bar()
    datasets.enable_progress_bars()
    assert quiet_libraries() is True
    assert not hf_logging.is_progress_bar_enabled()  # "Loading weights", "Writing model shards"
    assert hf_logging.get_verbosity() == logging.ERROR
    assert not datasets.is_progress_bar_enabled()  # "Truncating train dataset", ...
    assert trainer_progress() == {"disable_tqdm": True}


@pytest.mark.slow
def test_quiet_training_prints_nothing_and_warns_nothing(monkeypatch, tmp_path, capsys, restore_library_state):
    """train_sft under the switch: no bar, no log dicts, no HTML table, no deprecation or pin_memory warning."""
    from segattr_utils.llm.training import TrainingExample, TrainSettings, train_sft
    from segattr_utils.world.tokenizer import build_bpe_tokenizer

    from .fixtures.tiny_models import tiny_qwen2

    monkeypatch.setenv(QUIET_ENV, "1")
    tok = build_bpe_tokenizer(["12 + 3 = 15", "4 * 5 = 20", "7 - 2 = 5"] * 10, vocab_size=300)
    model = tiny_qwen2(len(tok), seed=None, hidden_size=16, num_hidden_layers=1, max_position_embeddings=64)
    ids = tok("12 + 3 = 15", add_special_tokens=False)["input_ids"]
    settings = TrainSettings(epochs=2, batch_size=4, save_steps=1000, logging_steps=1, learning_rate=1e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train_sft(model, tok, [TrainingExample(ids, ids)] * 8, settings, tmp_path / "run", seed=0)
    assert summary["steps"] == 4 and math.isfinite(summary["final_loss"])
    assert capsys.readouterr() == ("", "")
    messages = [f"{w.category.__name__}: {w.message}" for w in caught]
    assert not [m for m in messages if "checkpointing" in m or "pin_memory" in m], messages
