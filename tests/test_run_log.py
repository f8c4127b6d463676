"""Wall-clock timings go to a run log beside the data, never into the data tables."""

from __future__ import annotations

import math

from segattr_utils import dag
from segattr_utils.config import load_profile
from segattr_utils.run_log import log_seconds, log_timings, read_run_log


def test_timings_leave_the_summary_for_the_run_log(tmp_path):
    profile = load_profile("smoke")
    profile["results_root"] = str(tmp_path)
    summary = {
        "steps": 4,
        "final_loss": 0.5,
        "train_runtime": 1.25,
        "seconds_per_step": math.nan,
        "steps_this_session": 2,  # a resumed run trained 2 of its 4 steps: history, not data
    }
    left = log_timings(profile, dag.SELECTIVE_SFT, "run-a", summary)
    assert left == {"steps": 4, "final_loss": 0.5}
    log_seconds(profile, dag.SELECTIVE_SFT, "other", 2)
    log = read_run_log(profile, dag.SELECTIVE_SFT)
    assert log["what"].tolist() == ["run-a: train_runtime", "other"]  # NaN timings are not logged
    assert log["seconds"].tolist() == [1.25, 2.0]
    assert read_run_log(profile, dag.WORLD).empty
