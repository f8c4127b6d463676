"""Helpers to write the numbered notebooks from cell lists (used when (re)authoring notebooks).

Notebooks are the source of truth and can be edited in JupyterLab; this module only makes authoring
them from Python reproducible: ``md(...)`` and ``code(...)`` cells, ``parameters`` tagging, and
``# NBVAL_CHECK_OUTPUT`` cells with their expected output stored.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output


def md(text: str):
    return new_markdown_cell(text.strip())


def code(text: str, parameters: bool = False, expect: str | None = None):
    cell = new_code_cell(text.strip())
    if parameters:
        cell.metadata["tags"] = ["parameters"]
    if expect is not None:
        if not cell.source.startswith("# NBVAL_CHECK_OUTPUT"):
            cell.source = "# NBVAL_CHECK_OUTPUT\n" + cell.source
        cell.outputs = [new_output("stream", name="stdout", text=expect)]
        cell.execution_count = 1
    return cell


def write_notebook(path: str | Path, cells: list) -> None:
    notebook = new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"display_name": "Python 3 (segattr)", "language": "python", "name": "python3"}
    notebook.metadata["language_info"] = {"name": "python"}
    nbformat.validate(notebook)
    Path(path).write_text(nbformat.writes(notebook), encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)
