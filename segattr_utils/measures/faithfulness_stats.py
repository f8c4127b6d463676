"""Faithfulness over traces: one summary row per ordering, trace-level paired tests of one ordering
(the method's IG strength) against each other one, and mean curves on the token-fraction axis.

The per-trace scores come from :func:`segattr_utils.measures.faithfulness.curve_metrics` (ERASER's
comprehensiveness/sufficiency, RISE's deletion/insertion areas in nats, AOPC). Every ordering of one
trace shares the trace's end points F_0 (the real sequence) and F_n (every segment replaced), so the
comparison that isolates the ordering is *within* a trace: :func:`paired_ordering_tests` reduces each
trace to one difference (reference minus other ordering) and tests those with the Wilcoxon signed-rank
test of :func:`segattr_utils.measures.trace_stats.paired_trace_test` (bootstrap interval of the mean
difference over traces), Holm over the whole family of comparisons. The scores' scale differs between
traces (nats of the trace's own answer), which is why :func:`ordering_summary` gives medians beside
means. No function returns NaN: a statistic that cannot be computed is ``None`` and a ``note`` says why.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .trace_stats import holm, paired_trace_test

#: The primary scores, both in nats with higher = more faithful (the tested family).
PRIMARY_METRICS: Mapping[str, bool] = {"deletion_area": True, "insertion_area": True}
NORMALISED = ("deletion_auc_normalised", "insertion_auc_normalised")
TEST_COLUMNS = (
    "metric",
    "reference",
    "ordering",
    "n_traces",
    "reference_better",
    "mean_difference",
    "median_difference",
    "ci_low",
    "ci_high",
    "p_value",
    "p_holm",
    "rank_biserial",
    "note",
)


def _require(rows: pd.DataFrame, columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in rows.columns]
    if missing:
        raise ValueError(f"faithfulness rows lack the columns {missing} (columns: {list(rows.columns)})")


def _finite(rows: pd.DataFrame, column: str) -> np.ndarray:
    values = pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"column {column!r} holds NaN, inf or missing values: a curve point was not computed")
    return values


def budget_names(rows: pd.DataFrame) -> list[str]:
    """The token budgets (in percent, as in the column names) that ``rows`` has scores for."""
    return [m.group(1) for c in rows.columns if (m := re.fullmatch(r"comprehensiveness_(\d+)", c))]


def _orderings(rows: pd.DataFrame, orderings: Sequence[str] | None) -> list[str]:
    present = list(dict.fromkeys(rows["ordering"]))
    if orderings is None:
        return present
    unknown = [o for o in orderings if o not in present]
    if unknown and len(rows):
        raise ValueError(f"no rows for the orderings {unknown}; the rows have {present}")
    return list(orderings)


def _centre(values: np.ndarray) -> tuple[float | None, float | None]:
    return (float(np.median(values)), float(values.mean())) if values.size else (None, None)


def ordering_summary(rows: pd.DataFrame, orderings: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per ordering (in ``orderings`` order, default: as they first appear) of the per-trace
    rows (``trace_id``, ``ordering`` and :func:`~segattr_utils.measures.faithfulness.curve_metrics`' keys).

    Columns: ``ordering``, ``n_traces``; the median and mean of ``deletion_area`` and
    ``insertion_area`` (nats, higher = more faithful); per budget b the mean ``comprehensiveness_<b>``
    (higher = more faithful), ``sufficiency_<b>`` (lower = more faithful) and ``budget_share_<b>`` (the
    share of tokens actually selected); the median and mean ``aopc``; ``normalised_traces`` (traces
    whose normalised areas are defined, |F_0 - F_n| > min_gap) and the medians of the two normalised
    areas over those (``None`` when there is none); ``note``. Raises ValueError when a primary score is
    NaN or missing.
    """
    _require(rows, ("trace_id", "ordering", *PRIMARY_METRICS, "aopc", *NORMALISED))
    budgets = budget_names(rows)
    out = []
    for ordering in _orderings(rows, orderings):
        group = rows[rows["ordering"] == ordering]
        row: dict = {"ordering": ordering, "n_traces": int(group["trace_id"].nunique())}
        for metric in PRIMARY_METRICS:
            row[f"{metric}_median"], row[f"{metric}_mean"] = _centre(_finite(group, metric))
        for b in budgets:
            for name in ("comprehensiveness", "sufficiency", "budget_share"):
                values = _finite(group, f"{name}_{b}")
                row[f"{name}_{b}_mean"] = float(values.mean()) if values.size else None
        row["aopc_median"], row["aopc_mean"] = _centre(_finite(group, "aopc"))
        defined = group[NORMALISED[0]].notna() & group[NORMALISED[1]].notna()
        row["normalised_traces"] = int(defined.sum())
        for column in NORMALISED:
            row[f"{column}_median"] = _centre(_finite(group[defined], column))[0]
        row["note"] = _summary_note(len(group), int(defined.sum()))
        out.append(row)
    return pd.DataFrame(out, columns=_summary_columns(budgets))


def _summary_note(n: int, defined: int) -> str:
    if n == 0:
        return "no traces"
    if defined < n:
        return f"normalised areas undefined on {n - defined} of {n} traces (|F_0 - F_n| <= min_gap)"
    return ""


def _summary_columns(budgets: Sequence[str]) -> list[str]:
    columns = ["ordering", "n_traces"]
    columns += [f"{m}_{s}" for m in PRIMARY_METRICS for s in ("median", "mean")]
    columns += [f"{n}_{b}_mean" for b in budgets for n in ("comprehensiveness", "sufficiency", "budget_share")]
    columns += ["aopc_median", "aopc_mean", "normalised_traces", *(f"{c}_median" for c in NORMALISED), "note"]
    return columns


def paired_differences(rows: pd.DataFrame, metric: str, reference: str, other: str) -> pd.Series:
    """Per trace (index: ``trace_id``), ``metric`` of ``reference`` minus ``metric`` of ``other``, over the
    traces that have both orderings."""
    _require(rows, ("trace_id", "ordering", metric))
    table = rows[rows["ordering"].isin([reference, other])]
    wide = table.pivot(index="trace_id", columns="ordering", values=metric)
    if reference not in wide or other not in wide:
        return pd.Series(dtype=np.float64)
    wide = wide[[reference, other]].dropna()
    return (wide[reference].astype(float) - wide[other].astype(float)).rename(metric)


def paired_ordering_tests(
    rows: pd.DataFrame,
    reference: str,
    metrics: Mapping[str, bool] = PRIMARY_METRICS,
    *,
    n_boot: int = 10_000,
    seed: int = 0,
) -> pd.DataFrame:
    """Trace-level tests of ``reference`` against every other ordering on each of ``metrics``
    ({column: higher is more faithful}).

    Per trace the difference is oriented so that **positive = the reference is more faithful**
    (reference minus other when higher is better, other minus reference otherwise);
    :func:`~segattr_utils.measures.trace_stats.paired_trace_test` gives its mean and median, the
    bootstrap interval of the mean (traces resampled, ``seed``), the two-sided Wilcoxon signed-rank
    p-value and the rank-biserial effect size; ``p_holm`` is Holm's adjustment over every (metric,
    ordering) test of the table. ``reference_better`` is the share of traces with a positive difference.
    Columns: :data:`TEST_COLUMNS`.
    """
    _require(rows, ("trace_id", "ordering", *metrics))
    others = [o for o in dict.fromkeys(rows["ordering"]) if o != reference]
    if len(rows) and reference not in set(rows["ordering"]):
        raise ValueError(f"no rows for the reference ordering {reference!r}")
    out = []
    for metric, higher_is_better in metrics.items():
        for other in others:
            d = paired_differences(rows, metric, reference, other)
            d = d if higher_is_better else -d
            test = paired_trace_test(d.to_numpy(dtype=np.float64), n_boot=n_boot, seed=seed)
            out.append(
                {
                    "metric": metric,
                    "reference": reference,
                    "ordering": other,
                    "n_traces": test["n_traces"],
                    "reference_better": float((d > 0).mean()) if len(d) else None,
                    **{k: test[k] for k in ("mean_difference", "median_difference", "ci_low", "ci_high", "p_value")},
                    "rank_biserial": test["rank_biserial"],
                    "note": test["note"],
                }
            )
    adjusted = holm([r["p_value"] for r in out])
    for row, p in zip(out, adjusted):
        row["p_holm"] = p
    return pd.DataFrame(out, columns=list(TEST_COLUMNS))


def curve_on_grid(
    fractions: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray, grid: Sequence[float] | np.ndarray
) -> np.ndarray:
    """A curve given at the token fractions x_0 .. x_n (non-decreasing, 0 to 1), linearly interpolated at
    ``grid``. Where segments of 0 tokens repeat a fraction the curve takes its last value there (the
    state once all of them are removed)."""
    x = np.asarray(list(fractions), dtype=np.float64)
    y = np.asarray(list(values), dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size < 2:
        raise ValueError("fractions and values must be 1-D of the same length (at least 2 points)")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("fractions or values contain NaN or inf")
    if np.any(np.diff(x) < 0):
        raise ValueError("fractions must be non-decreasing")
    last = x.size - 1 - np.unique(x[::-1], return_index=True)[1]  # index of each fraction's last occurrence
    return np.interp(np.asarray(list(grid), dtype=np.float64), x[last], y[last])


def mean_curves(
    curves: Iterable[Mapping], grid: Sequence[float] | np.ndarray, orderings: Sequence[str] | None = None
) -> pd.DataFrame:
    """The mean deletion drop F_0 - F(x) and insertion gain G(x) - G_0 (nats) over traces at each grid
    point x, per ordering.

    ``curves`` holds one mapping per (trace, ordering) with ``ordering``, ``fractions``, ``deletion`` and
    ``insertion`` (the curve points of :class:`~segattr_utils.measures.faithfulness.Curves`); each curve
    is interpolated on ``grid`` (:func:`curve_on_grid`) before averaging. Returns a long table:
    ``ordering``, ``fraction``, ``deletion_drop``, ``insertion_gain``, ``n_traces``.
    """
    grid = np.asarray(list(grid), dtype=np.float64)
    by_ordering: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for curve in curves:
        deletion = np.asarray(curve["deletion"], dtype=np.float64)
        insertion = np.asarray(curve["insertion"], dtype=np.float64)
        by_ordering.setdefault(curve["ordering"], []).append(
            (
                curve_on_grid(curve["fractions"], deletion[0] - deletion, grid),
                curve_on_grid(curve["fractions"], insertion - insertion[0], grid),
            )
        )
    names = list(by_ordering) if orderings is None else [o for o in orderings if o in by_ordering]
    parts = []
    for name in names:
        drops, gains = (np.vstack(column) for column in zip(*by_ordering[name]))
        parts.append(
            pd.DataFrame(
                {
                    "ordering": name,
                    "fraction": grid,
                    "deletion_drop": drops.mean(axis=0),
                    "insertion_gain": gains.mean(axis=0),
                    "n_traces": len(drops),
                }
            )
        )
    columns = ["ordering", "fraction", "deletion_drop", "insertion_gain", "n_traces"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)
