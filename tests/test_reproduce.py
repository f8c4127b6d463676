import ast
import csv
import json
import os
import re
from pathlib import Path

import pytest

from segattr_utils.progress import QUIET_ENV
from segattr_utils.reproduce import (
    _strip_volatile_metadata,
    clean_notebook,
    kernel_environment,
    notebooks_in_order,
    record_run_time,
    run_nbval,
    run_papermill,
)


def read_rows(path):
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_run_times_keep_latest_row_per_notebook(tmp_path):
    record_run_time(tmp_path, "03_ig_attribution", 500.04, resumed=False)
    record_run_time(tmp_path, "00_world", 12.0, resumed=False)
    record_run_time(tmp_path, "03_ig_attribution", 7.0, resumed=True)
    rows = read_rows(tmp_path / "run_times.csv")
    assert [row["notebook"] for row in rows] == ["00_world", "03_ig_attribution"]
    assert rows[1] == {"notebook": "03_ig_attribution", "wall_seconds": "7.0", "resumed": "true"}
    assert rows[0]["wall_seconds"] == "12.0" and rows[0]["resumed"] == "false"


def test_notebooks_in_order_filters_by_prefix(tmp_path):
    for name in ["03_c.ipynb", "00_a.ipynb", "01_b.ipynb", "notes.ipynb"]:
        (tmp_path / name).write_text("{}")
    assert [p.name for p in notebooks_in_order(tmp_path)] == ["00_a.ipynb", "01_b.ipynb", "03_c.ipynb"]
    assert [p.name for p in notebooks_in_order(tmp_path, ["01", "03"])] == ["01_b.ipynb", "03_c.ipynb"]


# ---------------------------------------------------------------------------------------------
# Post-processing of executed notebooks: no absolute paths, no volatile ids or timings

ROOT = Path("/home/someone/projects/segattr")
HOME = Path("/home/someone")


def executed_notebook():
    """What papermill writes: absolute paths, random cell ids, timings, a Styler table with a uuid."""
    timing = {"start_time": "2025-01-01T10:00:00.000001", "end_time": "2025-01-01T10:00:01.5", "duration": 1.5}
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "widgets": {"application/vnd.jupyter.widget-state+json": {"state": {"a1b2": {}}}},
            "papermill": {
                "input_path": f"{ROOT}/notebooks/00_world.ipynb",
                "output_path": f"{ROOT}/results/tiny/00_world/00_world.ipynb",
                "parameters": {"PROFILE": "tiny"},
                "environment_variables": {},
                "exception": None,
                "version": "2.7.0",
                **timing,
            },
        },
        "cells": [
            {
                "id": "4aff3586",
                "cell_type": "markdown",
                "metadata": {"papermill": {"status": "completed", **timing}},
                "source": ["# World"],
            },
            {
                "id": "d687aa38",
                "cell_type": "code",
                "metadata": {"tags": ["parameters"]},
                "execution_count": 1,
                "outputs": [],
                "source": ['PROFILE = "smoke"'],
            },
            {
                "id": "0f3c9e5a-7b1d-4c2e-9a8f-123456789abc",
                "cell_type": "code",
                "execution_count": 2,
                "metadata": {
                    "tags": ["injected-parameters"],
                    "execution": {"iopub.status.busy": "2025-01-01T10:00:00"},
                    "papermill": {"exception": False, "status": "completed", **timing},
                },
                "outputs": [],
                "source": ['PROFILE = "tiny"'],
            },
            {
                "id": "ffd61b7f",
                "cell_type": "code",
                "execution_count": 3,
                "metadata": {},
                "source": ["run()"],
                "outputs": [
                    {
                        "output_type": "stream",
                        "name": "stdout",
                        "text": [
                            f"artifacts in {ROOT}/results/tiny/00_world\n",
                            f"root {ROOT}, cache {HOME}/.cache\n",
                            f"not ours: {ROOT}-old/x /srv{ROOT}/y\n",
                        ],
                    },
                    {
                        "output_type": "display_data",
                        "metadata": {},
                        "data": {
                            "text/plain": ["<pandas.io.formats.style.Styler at 0x7fd50eb9ef50>"],
                            "text/html": [
                                '<style type="text/css">\n',
                                "#T_8c16b_row0_col0 {color: red}\n",
                                "</style>\n",
                                '<table id="T_8c16b">\n',
                                '<th id="T_8c16b_level0_col0">share</th>\n',
                                "</table>",
                            ],
                        },
                    },
                    {
                        "output_type": "display_data",
                        "metadata": {},
                        "data": {
                            "text/plain": ["HBox()"],
                            "application/vnd.jupyter.widget-view+json": {"model_id": "e3b0c442", "version_major": 2},
                        },
                    },
                    {
                        "output_type": "error",
                        "ename": "OSError",
                        "evalue": f"no file {ROOT}/results/x",
                        "traceback": [f"File {ROOT}/segattr_utils/a.py:3", f"File {HOME}/.venv/lib/b.py:9"],
                    },
                ],
            },
        ],
    }


def test_clean_notebook_removes_paths_ids_and_timings():
    notebook = clean_notebook(executed_notebook(), ROOT, HOME)
    text = json.dumps(notebook)
    assert str(HOME) not in text.replace(f"/srv{ROOT}", "")  # only the path that is not under the root is left
    papermill = notebook["metadata"]["papermill"]
    assert papermill == {
        "input_path": "notebooks/00_world.ipynb",
        "output_path": "results/tiny/00_world/00_world.ipynb",
        "parameters": {"PROFILE": "tiny"},
        "exception": None,
        "version": "2.7.0",
    }
    assert "widgets" not in notebook["metadata"]
    assert [cell["id"] for cell in notebook["cells"]] == ["cell-00", "cell-01", "cell-02", "cell-03"]
    assert notebook["cells"][0]["metadata"] == {"papermill": {"status": "completed"}}
    assert notebook["cells"][2]["metadata"] == {
        "tags": ["injected-parameters"],
        "papermill": {"exception": False, "status": "completed"},
    }
    stream, styler, widget, error = notebook["cells"][3]["outputs"]
    assert stream["text"] == [
        "artifacts in results/tiny/00_world\n",
        "root ., cache ~/.cache\n",
        "not ours: ~/projects/segattr-old/x /srv/home/someone/projects/segattr/y\n",
    ]
    html = "".join(styler["data"]["text/html"])
    assert styler["data"]["text/plain"] == ["<pandas.io.formats.style.Styler>"]
    assert "8c16b" not in html and '<table id="T_c03t0">' in html and "#T_c03t0_row0_col0" in html
    assert widget["data"] == {"text/plain": ["HBox()"]}
    assert error["evalue"] == "no file results/x"
    assert error["traceback"] == ["File segattr_utils/a.py:3", "File ~/.venv/lib/b.py:9"]


def test_clean_notebook_is_idempotent():
    once = clean_notebook(executed_notebook(), ROOT, HOME)
    twice = clean_notebook(json.loads(json.dumps(once)), ROOT, HOME)
    assert twice == once


def test_executed_notebook_file_is_rewritten_byte_identically(tmp_path):
    path = tmp_path / "00_world.ipynb"
    path.write_text(json.dumps(executed_notebook()), encoding="utf-8")
    _strip_volatile_metadata(path, ROOT)
    first = path.read_bytes()
    _strip_volatile_metadata(path, ROOT)
    assert path.read_bytes() == first
    # a second run with the same results but other ids, timings and a different checkout gives the same bytes
    other = executed_notebook()
    other["cells"][2]["id"] = "99999999-aaaa-bbbb-cccc-dddddddddddd"
    other["metadata"]["papermill"]["duration"] = 99.0
    text = json.dumps(other).replace("8c16b", "a0f3e").replace("0x7fd50eb9ef50", "0x7f14e8930bd0")
    again = tmp_path / "again.ipynb"
    again.write_text(text, encoding="utf-8")
    _strip_volatile_metadata(again, ROOT)
    assert again.read_bytes() == first
    assert first.endswith(b"}\n") and json.loads(first)["nbformat_minor"] == 5


def test_kernel_environment_is_set_while_running_and_restored(monkeypatch):
    monkeypatch.delenv(QUIET_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    with kernel_environment():
        assert os.environ[QUIET_ENV] == "1"
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
        assert os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1"
    assert QUIET_ENV not in os.environ
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"


# ---------------------------------------------------------------------------------------------
# Checks that can fail


def code_cell(source, tags=()):
    return {
        "cell_type": "code",
        "execution_count": None,
        "id": f"c{abs(hash(source)) % 10**8}",
        "metadata": {"tags": list(tags)},
        "outputs": [],
        "source": source,
    }


def check_notebook(path, check_source):
    path.parent.mkdir(parents=True)
    notebook = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "cells": [
            code_cell('PROFILE = "smoke"', tags=["parameters"]),
            code_cell("value = len(PROFILE)"),
            code_cell(f"# NBVAL_CHECK_OUTPUT\n{check_source}"),
        ],
    }
    path.write_text(json.dumps(notebook), encoding="utf-8")
    return path


@pytest.mark.slow
def test_nbval_run_fails_when_a_check_fails_and_passes_when_it_holds(tmp_path, capfd):
    """The runner behind ``make test``'s notebook step returns non-zero when a check cell's assert fails."""
    failing = check_notebook(tmp_path / "failing" / "00_check.ipynb", 'assert value == 0, "check failed"')
    passing = check_notebook(tmp_path / "passing" / "00_check.ipynb", 'assert value == 4, "check failed"')
    assert run_nbval("tiny", [failing], tmp_path / "out_fail") != 0
    assert "check failed" in capfd.readouterr().out
    assert run_nbval("tiny", [passing], tmp_path / "out_pass") == 0


def test_every_check_cell_of_the_notebooks_asserts():
    """A cell marked ``# NBVAL_CHECK_OUTPUT`` must hold an ``assert``: nbval-lax only fails on an error."""
    notebooks = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert notebooks
    without_assert = []
    for path in notebooks:
        for index, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            if cell["cell_type"] != "code" or "NBVAL_CHECK_OUTPUT" not in source:
                continue
            python = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
            if not any(isinstance(node, ast.Assert) for node in ast.walk(ast.parse(python))):
                without_assert.append(f"{path.name} cell {index}")
    assert not without_assert, f"check cells without an assert: {without_assert}"


def test_kernels_get_a_fixed_hash_seed(monkeypatch):
    import os

    from segattr_utils.reproduce import kernel_environment

    monkeypatch.setenv("PYTHONHASHSEED", "random")
    with kernel_environment():
        assert os.environ["PYTHONHASHSEED"] == "0"
    assert os.environ["PYTHONHASHSEED"] == "random"


# ---------------------------------------------------------------------------------------------
# Executed notebooks written by run_papermill: no wall-clock data

#: What a wall-clock value looks like in an executed notebook: papermill's and nbclient's ISO timestamps,
#: a progress bar's rate or elapsed time, the memory address of a default repr.
WALL_CLOCK = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}|it/s|s/it|\[\d\d:\d\d<| at 0x[0-9a-f]+>")
TIMING_KEYS = {"start_time", "end_time", "duration", "execution"}


def _keys(value):
    """Every dict key anywhere in a JSON value."""
    if isinstance(value, dict):
        return set(value) | {k for item in value.values() for k in _keys(item)}
    if isinstance(value, list):
        return {k for item in value for k in _keys(item)}
    return set()


def project_notebook(root, name, *sources):
    """``root/notebooks/<name>.ipynb``: a parameters cell, then one code cell per source."""
    path = root / "notebooks" / f"{name}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    notebook = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "cells": [code_cell('PROFILE = "smoke"', tags=["parameters"]), *(code_cell(s) for s in sources)],
    }
    path.write_text(json.dumps(notebook), encoding="utf-8")
    return path


@pytest.mark.slow
def test_notebooks_executed_by_run_papermill_hold_no_wall_clock_data(tmp_path, capfd):
    """The executed notebooks that ``python -m segattr_utils.reproduce`` saves, a failed one too, hold no
    timestamps, durations, progress-bar rates or memory addresses, so a rerun writes the same bytes; the
    times are in ``run_times.csv``."""
    root = tmp_path / "project"
    cells = (
        "from tqdm.auto import tqdm\nfor _ in tqdm(range(3)):\n    pass",  # a library's own bar
        "class Thing:\n    pass\n\nThing()",
        "import time\ntime.sleep(0.01)\nprint(PROFILE)",
    )
    ran = project_notebook(root, "00_ran", *cells)
    failed = project_notebook(root, "01_failed", *cells, "raise ValueError('stops here')")
    out = root / "results" / "smoke"
    assert run_papermill("smoke", [ran], out) == 0
    assert run_papermill("smoke", [failed], out) == 1
    assert "stops here" in capfd.readouterr().err
    first = (out / "00_ran" / "00_ran.ipynb").read_bytes()
    for path in (out / "00_ran" / "00_ran.ipynb", out / "01_failed" / "01_failed.ipynb"):
        text = path.read_text(encoding="utf-8")
        assert not TIMING_KEYS & _keys(json.loads(text)), path.name
        assert not WALL_CLOCK.search(text), (path.name, WALL_CLOCK.search(text))
    assert "stops here" in (out / "01_failed" / "01_failed.ipynb").read_text(encoding="utf-8")
    assert "smoke\\n" in first.decode("utf-8")
    assert [row["notebook"] for row in read_rows(out / "run_times.csv")] == ["00_ran"]
    assert run_papermill("smoke", [ran], out) == 0  # rerun: same results, same bytes
    assert (out / "00_ran" / "00_ran.ipynb").read_bytes() == first


#: Files of a results folder that hold times by design: the run log of each stage and the notebooks' times.
TIMING_FILES = {"run_log.csv", "run_times.csv"}


@pytest.mark.slow
def test_two_smoke_reproduces_of_notebooks_00_to_03_write_the_same_bytes(tmp_path):
    """Equal data, equal bytes: ``python -m segattr_utils.reproduce`` of notebooks 00-03 on the smoke profile,
    run twice from empty results into the same folder, writes byte-identical tables, record stores, JSON
    summaries and executed notebooks (every file but the run logs; model weights are compared too)."""
    import filecmp
    import shutil
    import subprocess
    import sys

    project = Path(__file__).resolve().parents[1]
    profile = tmp_path / "smoke_bytes.yaml"
    results = tmp_path / "results"
    profile.write_text(f"base: smoke\nresults_root: {results}\n", encoding="utf-8")
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "segattr_utils.reproduce", "--profile", str(profile)]
    command += ["--only", "00", "01", "02", "03"]
    runs = []
    for attempt in ("first", "second"):
        finished = subprocess.run(command, cwd=project, env=environment, capture_output=True, text=True)
        assert finished.returncode == 0, finished.stderr[-3000:]
        runs.append(results.rename(tmp_path / attempt))
    first, second = runs
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file() and p.name not in TIMING_FILES)
    assert {p.suffix for p in files} >= {".parquet", ".jsonl", ".json", ".ipynb", ".csv"}
    assert files == sorted(
        p.relative_to(second) for p in second.rglob("*") if p.is_file() and p.name not in TIMING_FILES
    )
    different = [str(p) for p in files if not filecmp.cmp(first / p, second / p, shallow=False)]
    assert different == []
    shutil.rmtree(first), shutil.rmtree(second)
