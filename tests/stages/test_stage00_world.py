"""Stage 00 on the paper profile: before anything runs, the availability report lists every missing GPU
package the profile's settings need, with the command that installs it."""

from __future__ import annotations

import pytest

from segattr_utils.config import load_profile
from segattr_utils.stages import stage00_world as stage


@pytest.fixture()
def no_gpu_packages(monkeypatch):
    """find_spec sees none of the GPU packages; every other module is found as usual."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name in {"vllm", "deepspeed", "bitsandbytes"} else find_spec(name, *args),
    )


def _paper(tmp_path, **training):
    profile = load_profile("paper")
    profile["results_root"] = str(tmp_path / "results")
    profile["training"] = {**profile["training"], **training}
    return profile


def test_paper_profile_lists_the_gpu_packages_its_settings_need(tmp_path, monkeypatch, no_gpu_packages):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    rows = {r["what"]: r for r in stage.gpu_package_rows(_paper(tmp_path))}
    # generation backend auto on a GPU -> vLLM; optim adamw_bnb_8bit -> bitsandbytes; no deepspeed_config
    assert set(rows) == {"package:vllm", "package:bitsandbytes"}
    assert not any(r["available"] for r in rows.values())
    assert rows["package:vllm"]["id"] == "vllm==0.30.0"
    assert rows["package:vllm"]["how_to_get"] == "make setup-gpu (or: pip install -c constraints.txt 'vllm==0.30.0')"
    with_deepspeed = stage.gpu_package_rows(_paper(tmp_path, launcher="accelerate", deepspeed_config="c.json"))
    assert "package:deepspeed" in {r["what"] for r in with_deepspeed}
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert {r["what"] for r in stage.gpu_package_rows(_paper(tmp_path))} == {"package:bitsandbytes"}
    assert stage.gpu_package_rows(load_profile("tiny")) == []


def test_paper_profile_stops_before_anything_runs_with_the_install_commands(tmp_path, monkeypatch, no_gpu_packages):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr(stage, "resolve_model_path", lambda model_id, local_path=None: model_id)
    monkeypatch.setattr("transformers.AutoConfig.from_pretrained", lambda *args, **kwargs: None)
    monkeypatch.setattr(stage, "load_hub_questions", lambda *args, **kwargs: None)
    with pytest.raises(RuntimeError) as error:
        stage.run(_paper(tmp_path))
    message = str(error.value)
    assert "model:" not in message and "data:" not in message
    assert "- package:vllm vllm==0.30.0: make setup-gpu" in message
    assert "- package:bitsandbytes bitsandbytes==0.50.2: make setup-gpu" in message


def test_an_imported_trace_file_is_in_the_availability_report(tmp_path):
    missing = tmp_path / "missing.jsonl"
    assert stage.trace_source_row({"path": str(missing)}) == {
        "what": "data:traces",
        "id": str(missing),
        "available": False,
        "how_to_get": f"data.traces.path {str(missing)!r} does not exist",
    }
    present = tmp_path / "traces.jsonl"
    present.write_text('{"question": "Q?", "output": "a</think>b", "answer": "1"}\n', encoding="utf-8")
    assert stage.trace_source_row({"path": str(present)})["available"]
    assert load_profile("paper").get_path("data.traces") is None  # off unless a profile sets it
