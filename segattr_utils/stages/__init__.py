"""The stage behind each notebook, one module per notebook with its number and name
(``stage03_ig_attribution`` <-> ``notebooks/03_ig_attribution.ipynb`` <-> ``tests/stages/test_stage03_ig_attribution.py``).

Every stage module has the same shape:

- ``STAGE``: its :class:`segattr_utils.dag.Stage` (folder, the stages it reads, its artifacts);
- ``run(profile) -> StageResult``: runs the stage (resumable: finished records are skipped), writes its
  artifacts, its tables and figures and its paper-vs-run rows, and returns all of it, so a notebook
  shows what the call returned and never re-reads a file by name;
- the functions ``run`` is made of, small enough to call and test on their own.

A stage module has no command line: what a process started by a launcher runs (a rank's share of IG,
an SFT run, ...) is a job of :mod:`segattr_utils.workers`, which calls the stage's functions.

A :class:`StageResult` carries ``checks``: named conditions the stage's output must satisfy. The
notebook's check cell asserts them, so a failed check fails ``make test``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import Profile
from ..dag import Stage
from ..report.paper_vs_run import assemble_paper_vs_run, write_stage_comparison


@dataclass
class StageResult:
    """What one stage wrote: ``tables`` (shown by the notebook, by name), ``figures`` (saved PNG paths,
    by the paper's figure name), ``comparison`` (this stage's paper-vs-run rows), ``checks`` (named
    conditions that must hold) and ``values`` (other results the notebook quotes)."""

    stage: Stage
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    comparison: pd.DataFrame = field(default_factory=pd.DataFrame)
    checks: dict[str, bool] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)

    def failed_checks(self) -> list[str]:
        return [name for name, ok in self.checks.items() if not bool(ok)]


def finish(profile: Profile, stage: Stage, rows: list[dict] | None = None, **parts) -> StageResult:
    """Write the stage's paper-vs-run rows (when it has any), reassemble ``paper_vs_run.md`` and return
    the :class:`StageResult` built from ``parts``."""
    comparison = pd.DataFrame()
    if rows is not None:
        write_stage_comparison(profile, stage.folder, rows)
        table = assemble_paper_vs_run(profile)
        comparison = table[table["notebook"] == stage.folder].drop(columns="notebook").reset_index(drop=True)
    return StageResult(stage=stage, comparison=comparison, **parts)
