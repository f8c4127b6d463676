"""Tests for segattr_utils.measures.redundancy: precision/recall of unimportant sets against the world's
ground-truth redundant kinds, with hand-counted expectations."""

from __future__ import annotations

import pandas as pd
import pytest

from segattr_utils.measures.redundancy import (
    is_redundant,
    lowest_k,
    matched_unimportant,
    precision_recall,
    redundancy_table,
)
from segattr_utils.world import REDUNDANT_KINDS


def test_redundant_kinds_are_the_papers_three():
    assert set(REDUNDANT_KINDS) == {"repetition", "truncated", "superficial"}
    assert is_redundant(["productive", "repetition", "truncated", "superficial", "verification"]).tolist() == [
        False,
        True,
        True,
        True,
        False,
    ]
    with pytest.raises(ValueError):
        is_redundant(["productive", None])


def test_lowest_k_is_stable():
    assert lowest_k([3.0, 1.0, 2.0, 1.0], 2).tolist() == [False, True, False, True]
    assert lowest_k([1.0, 1.0, 1.0], 2).tolist() == [True, True, False]  # ties: earlier first
    assert lowest_k([1.0], 0).tolist() == [False]
    with pytest.raises(ValueError):
        lowest_k([1.0, 2.0], 3)
    with pytest.raises(ValueError):
        lowest_k([float("nan")], 1)


def test_precision_recall_hand_counts():
    # predicted T T F F T, truth T F T F T -> tp = 2, predicted 3, actual 3
    result = precision_recall([True, True, False, False, True], [True, False, True, False, True])
    assert result == {
        "tp": 2,
        "predicted": 3,
        "actual": 3,
        "precision": pytest.approx(2 / 3),
        "recall": pytest.approx(2 / 3),
    }
    none = precision_recall([False, False], [False, True])
    assert none["precision"] is None and none["recall"] == 0.0


def _table():
    # Trace a: kinds P R T P, ours calls segments 1 and 3 unimportant (2 of them).
    # Trace b: kinds P S, ours calls segment 1 unimportant.
    return pd.DataFrame(
        {
            "trace_id": ["a", "a", "a", "a", "b", "b"],
            "segment": [0, 1, 2, 3, 0, 1],
            "kind": ["productive", "repetition", "truncated", "productive", "productive", "superficial"],
            "important": [True, False, True, False, True, False],
            "entropy": [0.5, 0.1, 0.2, 0.9, 0.4, 0.3],
        }
    )


def test_matched_unimportant_uses_our_count_per_trace():
    # a: 2 lowest entropies -> segments 1 (0.1) and 2 (0.2); b: 1 lowest -> segment 1 (0.3)
    table = _table().assign(unimportant=lambda t: ~t["important"])
    assert matched_unimportant(table, "entropy").tolist() == [False, True, True, False, False, True]


def test_redundancy_table_hand_values():
    table = redundancy_table(_table(), {"segment entropy": "entropy"}).set_index("measure")
    ours = table.loc["ours (IG strength + consistency)"]
    # ours: unimportant {a1, a3, b1}; redundant {a1, a2, b1}: tp = 2 -> precision 2/3, recall 2/3
    assert (ours["tp"], ours["predicted"], ours["actual"]) == (2, 3, 3)
    assert ours["precision"] == pytest.approx(2 / 3) and ours["recall"] == pytest.approx(2 / 3)
    entropy = table.loc["segment entropy"]
    # entropy: unimportant {a1, a2, b1}: all redundant -> precision 1, recall 1
    assert entropy["precision"] == pytest.approx(1.0) and entropy["recall"] == pytest.approx(1.0)
    random = table.loc["random (expected)"]
    # expected tp: a: 2 picks x 2/4 redundant = 1; b: 1 pick x 1/2 = 0.5 -> 1.5 of 3 picked, of 3 redundant
    assert random["tp"] == pytest.approx(1.5)
    assert random["precision"] == pytest.approx(0.5) and random["recall"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        redundancy_table(_table().drop(columns=["kind"]), {"segment entropy": "entropy"})
