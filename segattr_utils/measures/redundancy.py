"""Tiny world only, beyond the paper: how well each importance measure's *unimportant* set recovers
the world's ground-truth redundant segments (``world.REDUNDANT_KINDS``: repetition, truncated,
superficial; Fig. 1 left's "repetitions, truncations, superficial clarifications").

For a set U of segments called unimportant and the set R of ground-truth redundant segments:
precision = |U ∩ R| / |U| and recall = |U ∩ R| / |R|.

Measures compared (Sec. 4.4, Table 3):

- ours: unimportant = not in Eq. 7's important set (top-k* strength with consistency <= β);
- segment perplexity (Cui et al.): the removal perplexity increase, low = unimportant;
- segment entropy (Li et al.): the segment's mean token entropy, low = unimportant;
- confidence gain (Xu et al.): the forced-answer confidence change Δ (Sec. 3.1), low = unimportant.

Matching rule (as Sec. 4.4 matches the selected token ratio): in every trace an alternative measure
calls unimportant the same NUMBER of segments as ours does in that trace, namely its lowest-scoring
ones (ties go to the earlier segment). So every measure labels the same number of segments per trace
and precision/recall differences come from which segments, not how many. A random labelling with the
same counts has the expected precision and recall given in the ``random (expected)`` row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..world import REDUNDANT_KINDS


def lowest_k(values: Sequence[float], k: int) -> np.ndarray:
    """Boolean mask of the ``k`` lowest values (stable: ties go to the earlier position)."""
    values = np.asarray(list(values), dtype=np.float64)
    if not 0 <= k <= values.size:
        raise ValueError(f"k must lie in [0, {values.size}], got {k}")
    if not np.all(np.isfinite(values)):
        raise ValueError("the measure contains NaN or inf")
    mask = np.zeros(values.size, dtype=bool)
    mask[np.argsort(values, kind="stable")[:k]] = True
    return mask


def matched_unimportant(table: pd.DataFrame, measure: str, reference: str = "unimportant") -> pd.Series:
    """Per trace, the segments with the lowest ``measure``, as many as ``reference`` marks in that trace."""
    result = pd.Series(False, index=table.index)
    for _, trace in table.sort_values(["trace_id", "segment"]).groupby("trace_id"):
        mask = lowest_k(trace[measure], int(trace[reference].sum()))
        result.loc[trace.index] = mask
    return result


def precision_recall(predicted: Sequence[bool] | np.ndarray, truth: Sequence[bool] | np.ndarray) -> dict:
    """``tp``, ``predicted``, ``actual``, ``precision`` and ``recall`` (None where a denominator is 0)."""
    predicted, truth = np.asarray(list(predicted), dtype=bool), np.asarray(list(truth), dtype=bool)
    if predicted.shape != truth.shape:
        raise ValueError("predicted and truth have different lengths")
    tp = int((predicted & truth).sum())
    n_pred, n_true = int(predicted.sum()), int(truth.sum())
    return {
        "tp": tp,
        "predicted": n_pred,
        "actual": n_true,
        "precision": tp / n_pred if n_pred else None,
        "recall": tp / n_true if n_true else None,
    }


def is_redundant(kinds: Sequence[str], redundant_kinds: Sequence[str] = REDUNDANT_KINDS) -> np.ndarray:
    """Whether each ground-truth kind is redundant; raises on a missing kind."""
    kinds = list(kinds)
    if any(not isinstance(k, str) for k in kinds):
        raise ValueError("some segments have no ground-truth kind (only the world profiles have kinds)")
    return np.array([k in redundant_kinds for k in kinds], dtype=bool)


def redundancy_table(table: pd.DataFrame, measures: Mapping[str, str], ours: str = "important") -> pd.DataFrame:
    """Precision and recall of each measure's unimportant set against the redundant kinds.

    ``table`` holds ``trace_id``, ``segment``, ``kind``, the boolean column ``ours`` (True = important)
    and one numeric column per entry of ``measures`` ({display name: column}, high = important).
    """
    needed = {"trace_id", "segment", "kind", ours, *measures.values()}
    missing = needed - set(table.columns)
    if missing:
        raise ValueError(f"the segment table lacks {sorted(missing)}")
    table = table.assign(unimportant=~table[ours].astype(bool))
    truth = is_redundant(table["kind"])
    rows = [
        {
            "measure": "ours (IG strength + consistency)",
            "rule": "not in Eq. 7's important set",
            **precision_recall(table["unimportant"], truth),
        }
    ]
    for name, column in measures.items():
        predicted = matched_unimportant(table, column)
        rows.append(
            {
                "measure": name,
                "rule": f"lowest {column} per trace, same count as ours",
                **precision_recall(predicted, truth),
            }
        )
    rows.append(
        {
            "measure": "random (expected)",
            "rule": "same count per trace, uniformly at random",
            **_random_expectation(table, truth),
        }
    )
    result = pd.DataFrame(rows)
    result["note"] = [
        ""
        if r["predicted"] and r["actual"]
        else ("no redundant segments" if not r["actual"] else "no segment called unimportant")
        for r in rows
    ]
    return result


def _random_expectation(table: pd.DataFrame, truth: np.ndarray) -> dict:
    frame = table.assign(_truth=truth)
    expected_tp = 0.0
    for _, trace in frame.groupby("trace_id"):
        expected_tp += trace["unimportant"].sum() * trace["_truth"].mean()
    n_pred, n_true = int(frame["unimportant"].sum()), int(truth.sum())
    return {
        "tp": expected_tp,
        "predicted": n_pred,
        "actual": n_true,
        "precision": expected_tp / n_pred if n_pred else None,
        "recall": expected_tp / n_true if n_true else None,
    }
