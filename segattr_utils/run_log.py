"""Wall-clock timings, kept in a run log beside the data (``results/<profile>/<NN_name>/run_log.csv``).

Data tables hold data only: a resumed run and an uninterrupted one write the same bytes when their data
agree. How long things took goes here instead, one row per event (``what``, ``seconds``), appended.
"""

from __future__ import annotations

import csv
from pathlib import Path

from . import dag
from .config import Profile

#: Keys of training summaries that are wall-clock measurements, not data.
TIMING_KEYS = ("train_runtime", "train_seconds", "trainer_runtime", "seconds_per_step", "seconds")
#: Keys of training summaries that say how the work was split over calls (a run resumed from a checkpoint
#: trains only its remaining steps), not what was trained.
SESSION_KEYS = ("steps_this_session",)


def log_seconds(profile: Profile, stage: dag.Stage, what: str, seconds: float) -> Path:
    """Append one timing to ``stage``'s run log and return its path."""
    return append_seconds(stage.dir(profile) / dag.RUN_LOG_FILE, what, seconds)


def append_seconds(path: str | Path, what: str, seconds: float) -> Path:
    """Append one timing to the run log at ``path`` (a ``what,seconds`` CSV, created with its header)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["what", "seconds"])
        writer.writerow([what, f"{float(seconds):.3f}"])
    return path


def log_timings(profile: Profile, stage: dag.Stage, what: str, summary: dict) -> dict:
    """Move the wall-clock fields of ``summary`` (:data:`TIMING_KEYS`) into the run log and drop its
    session fields (:data:`SESSION_KEYS`); return the summary without them, the same for a resumed run
    as for an uninterrupted one."""
    for key in SESSION_KEYS:
        summary.pop(key, None)
    for key in TIMING_KEYS:
        if key in summary:
            value = summary.pop(key)
            if value == value:  # NaN: nothing was timed
                log_seconds(profile, stage, f"{what}: {key}", value)
    return summary


def read_run_log(profile: Profile, stage: dag.Stage):
    """The stage's run log as a DataFrame (empty when nothing was logged)."""
    import pandas as pd

    path = stage.dir(profile) / dag.RUN_LOG_FILE
    return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["what", "seconds"])
