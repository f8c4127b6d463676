"""The data flow written down once (segattr_utils.dag): each stage module, notebook and test lines up
with its stage, and a stage module touches only the stages it declares it reads."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

from segattr_utils import dag
from segattr_utils.config import load_profile

ROOT = Path(__file__).resolve().parents[1]
CONSTANTS = {name: stage for name, stage in vars(dag).items() if isinstance(stage, dag.Stage)}


def _module(stage: dag.Stage):
    return importlib.import_module(f"segattr_utils.stages.stage{stage.folder}")


@pytest.mark.parametrize("stage", dag.PIPELINE, ids=lambda s: s.folder)
def test_stage_module_notebook_and_test_line_up(stage):
    module = _module(stage)
    assert module.STAGE is stage
    assert callable(module.run)
    notebook = json.loads((ROOT / "notebooks" / stage.notebook).read_text())
    code = "\n".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code")
    assert f"from segattr_utils.stages import stage{stage.folder} as stage" in code
    assert "stage.run(profile)" in code


@pytest.mark.parametrize("stage", dag.PIPELINE, ids=lambda s: s.folder)
def test_stage_module_touches_only_the_stages_it_reads(stage):
    source = (ROOT / "segattr_utils" / "stages" / f"stage{stage.folder}.py").read_text()
    used = {CONSTANTS[name].folder for name in re.findall(r"dag\.([A-Z_]+)\b", source) if name in CONSTANTS}
    assert used <= set(stage.reads) | {stage.folder}, (
        f"{stage.folder} reads {sorted(used - set(stage.reads))} undeclared"
    )
    # no stage folder or artifact file name spelt out in a stage module
    assert not re.search(r'"\d\d_[a-z_]+"', source)
    assert not re.search(r'"[a-z_]+\.(parquet|jsonl|csv)"', source)


def test_reads_point_backwards_only():
    order = [stage.folder for stage in dag.PIPELINE]
    for stage in dag.PIPELINE:
        for read in stage.reads:
            assert order.index(read) < order.index(stage.folder)


def test_artifact_paths_are_declared(tmp_path):
    profile = load_profile("smoke")
    profile["results_root"] = str(tmp_path)
    assert (
        dag.IG_ATTRIBUTION.path(profile, "segment_scores")
        == tmp_path / "smoke" / "03_ig_attribution" / "segment_scores.parquet"
    )
    with pytest.raises(KeyError, match="declares no artifact 'segment_score'"):
        dag.IG_ATTRIBUTION.path(profile, "segment_score")
    with pytest.raises(KeyError):
        dag.profile_path(profile, "elsewhere")


def test_mermaid_draws_every_edge():
    drawing = dag.mermaid()
    edges = sum(len(stage.reads) for stage in dag.PIPELINE)
    assert drawing.count("-->") == edges
    assert "s03 --> s04" in drawing


def test_every_paper_number_used_in_code_is_in_the_data_file():
    from segattr_utils.report.paper_vs_run import paper

    keys = set()
    for path in (ROOT / "segattr_utils").rglob("*.py"):
        keys |= set(re.findall(r'paper\("([\w.@]+)"\)', path.read_text()))
    assert len(keys) > 15
    for key in keys:
        assert paper(key)
    for table in ("1", "2", "3", "7"):
        assert paper(f"table{table}.{'greedy_acc' if table == '1' else 'best' if table != '7' else 'retro_search'}")
    with pytest.raises(KeyError, match="no entry"):
        paper("table9.best")
