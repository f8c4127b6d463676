"""The paper-vs-run table: each of the paper's reported statistics next to this run's value.

Every notebook that measures something the paper reports writes its rows to
``results/<profile>/<NN_stage>/paper_vs_run.csv`` with :func:`write_stage_comparison`, then
:func:`assemble_paper_vs_run` rebuilds ``results/<profile>/paper_vs_run.md`` from the rows of every
stage that has run, in stage order. Data still flows one way: a stage writes only its own rows, and
the assembled table is a view over them. A statistic the paper does not report (an analysis beyond it)
gets a row from :func:`beyond_paper_row`, whose ``paper`` column says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import pandas as pd

from .. import dag
from ..artifacts import atomic_write_text, write_table
from ..config import Profile, results_dir

COLUMNS = ("section", "statistic", "paper", "run", "note")
FILENAME = dag.COMPARISON_FILE
PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.yaml")


@lru_cache(maxsize=1)
def _paper_numbers() -> dict:
    import yaml

    return yaml.safe_load(PAPER_NUMBERS.read_text(encoding="utf-8"))


def paper(key: str) -> str:
    """What the paper reports for ``key`` (dotted, e.g. ``"table1.greedy_acc"``), from ``paper_numbers.yaml``."""
    node = _paper_numbers()
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"paper_numbers.yaml has no entry {key!r}")
        node = node[part]
    return str(node)


def comparison_row(section: str, statistic: str, paper: str, run, note: str = "", fmt: str = "{:.3g}") -> dict:
    """One row. ``run`` may be a number (formatted with ``fmt``; NaN reads "n/a") or text."""
    if isinstance(run, float) and run != run:
        run_text = "n/a"
    elif isinstance(run, (int, float)) and not isinstance(run, bool):
        run_text = fmt.format(run)
    else:
        run_text = str(run)
    return {"section": section, "statistic": statistic, "paper": str(paper), "run": run_text, "note": note}


def beyond_paper_row(section: str, statistic: str, run, note: str = "", fmt: str = "{:.3g}") -> dict:
    """A row for a statistic the paper does not report (an analysis beyond it, e.g. the segment-level
    faithfulness of notebook 06): its ``paper`` column is :func:`beyond_paper_marker`, so the assembled
    table marks it and nobody reads it as a replication."""
    return comparison_row(section, statistic, beyond_paper_marker(), run, note, fmt)


def beyond_paper_marker() -> str:
    """The ``paper`` column of a row beyond the paper (``paper_numbers.yaml``: ``beyond_paper``)."""
    return paper("beyond_paper")


def write_stage_comparison(profile: Profile, stage: str, rows: Iterable[dict]) -> Path:
    """Replace ``stage``'s rows of the comparison and return the path of its CSV."""
    rows = list(rows)
    for row in rows:
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"comparison row {row!r} lacks {missing}")
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return write_table(dag.BY_FOLDER[stage].dir(profile) / FILENAME, frame)


def assemble_paper_vs_run(profile: Profile) -> pd.DataFrame:
    """Gather every stage's rows (stage order) into ``results/<profile>/paper_vs_run.md``; return them."""
    root = results_dir(profile)
    parts = []
    for path in sorted(root.glob(f"[0-9][0-9]_*/{FILENAME}")):
        frame = pd.read_csv(path, keep_default_na=False, dtype=str)  # "n/a" stays text
        frame.insert(0, "notebook", path.parent.name)
        parts.append(frame)
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["notebook", *COLUMNS])
    header = (
        f"# Paper vs this run ({profile.name} profile)\n\n"
        "Each statistic the paper reports, next to the value this run measured; rows whose paper column reads "
        f'"{beyond_paper_marker()}" measure something the paper does not. Written by the notebooks '
        "(each notebook replaces its own rows); regenerate with `make reproduce`.\n\n"
    )
    body = table.to_markdown(index=False) if len(table) else "_No notebook has written a comparison yet._"
    atomic_write_text(dag.profile_path(profile, dag.PAPER_VS_RUN_FILE), header + body + "\n")
    return table
