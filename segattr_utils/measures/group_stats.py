"""Comparing a measure between two groups of segments (Sec. 3.1: "significantly larger/lower").

The paper compares important with unimportant segments (Fig. 2-3) without naming its test. Here
every comparison is a two-sided Mann-Whitney U test (``scipy.stats.mannwhitneyu``, asymptotic
p-value with tie correction), a rank test that needs neither normality nor equal variances: Δ,
log-perplexity, entropy and BLEU are all bounded, skewed or zero-inflated.

A group may be empty (the smoke profile has a handful of segments). The comparison then carries no
mean and no p-value, and its ``note`` says why; callers print the note instead of a NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

TEST_NAME = "two-sided Mann-Whitney U"
#: The text of a statistic that could not be measured (an empty group). Not a bare "n/a": CSV readers
#: turn that into a missing value.
MISSING_TEXT = "n/a (see note)"


def _finite(name: str, values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(list(values), dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of numbers")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf")
    return array


def describe(values: Sequence[float] | np.ndarray) -> dict:
    """``n``, ``mean``, ``sem`` and ``median`` of one group (``None`` for the statistics an empty or
    single-value group does not have)."""
    array = _finite("values", values)
    n = int(array.size)
    return {
        "n": n,
        "mean": float(array.mean()) if n else None,
        "sem": float(array.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
        "median": float(np.median(array)) if n else None,
    }


def compare_groups(a: Sequence[float], b: Sequence[float], name_a: str = "a", name_b: str = "b") -> dict:
    """Means of two groups, their difference ``mean_a - mean_b`` and a two-sided Mann-Whitney U test.

    Returns ``n_a``, ``n_b``, ``mean_a``, ``mean_b``, ``difference``, ``u``, ``p_value``, ``test`` and
    ``note``. Statistics that do not exist (an empty group; a test where every value is identical)
    are ``None`` and ``note`` says why.
    """
    x, y = _finite(name_a, a), _finite(name_b, b)
    left, right = describe(x), describe(y)
    result = {
        "n_a": left["n"],
        "n_b": right["n"],
        "mean_a": left["mean"],
        "mean_b": right["mean"],
        "difference": None,
        "u": None,
        "p_value": None,
        "test": TEST_NAME,
        "note": "",
    }
    empty = [name for name, group in ((name_a, x), (name_b, y)) if group.size == 0]
    if empty:
        result["note"] = f"no {' and no '.join(empty)} segments: nothing to compare"
        return result
    result["difference"] = left["mean"] - right["mean"]
    if np.ptp(np.concatenate([x, y])) == 0:
        result["note"] = "every value is identical: the rank test is undefined"
        return result
    from scipy.stats import mannwhitneyu

    test = mannwhitneyu(x, y, alternative="two-sided", method="asymptotic")
    result["u"], result["p_value"] = float(test.statistic), float(test.pvalue)
    return result


def format_p(p_value) -> str:
    """A p-value for text: ``p = 0.012``, ``p < 1e-10``, or ``n/a``."""
    if p_value is None or (isinstance(p_value, float) and math.isnan(p_value)):
        return "n/a"
    return "p < 1e-10" if p_value < 1e-10 else f"p = {p_value:.2g}"


def readable(frame, digits: int = 3):
    """A copy of ``frame`` for display: floats rounded to ``digits``, missing values shown as "n/a"."""
    import pandas as pd

    shown = frame.copy()
    for column in shown.columns:
        values = shown[column]
        if pd.api.types.is_float_dtype(values):
            values = values.round(digits)
        shown[column] = values.astype(object).where(values.notna(), "n/a")
    return shown
