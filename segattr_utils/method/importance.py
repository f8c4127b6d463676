"""Segment-level attribution metrics and important-segment selection (Sec. 2.2-2.3, Eq. 3-7, App. C.4).

For a segment S with tokens o_1..o_N and token attributions IG(o_n):

    Strength(S)    = sum |IG(o_n)| / sqrt(N)                      (Eq. 3, the default aggregation)
    Consistency(S) = |sum IG(o_n)| / sum |IG(o_n)|                (Eq. 3)
    Strength'(S_m) = Strength(S_m) / sum_j Strength(S_j)          (Eq. 4)

A segment whose attributions are all zero (or that holds no token) has strength 0 and, by convention,
consistency 0 (a 0/0 that would otherwise be NaN): it never passes the strength cut on its own merit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
import pandas as pd

Aggregation = Literal["sqrt_len", "sum", "top20_mean"]
AGGREGATIONS: tuple[str, ...] = ("sqrt_len", "sum", "top20_mean")


def _as_finite_array(values, index: int) -> np.ndarray:
    try:
        array = np.asarray(values.detach().cpu().numpy() if hasattr(values, "detach") else values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"attributions of segment {index} are not numeric: {error}") from None
    if array.ndim != 1:
        raise ValueError(f"attributions of segment {index} must be 1-D, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"attributions of segment {index} contain NaN or inf")
    return array


def segment_strength(values: np.ndarray, aggregation: Aggregation = "sqrt_len") -> float:
    """Attribution strength of one segment (Eq. 3, or an App. C.4 alternative).

    ``sqrt_len``: sum|IG| / sqrt(N) (the paper's choice); ``sum``: sum|IG|; ``top20_mean``: the mean
    of the largest 20% of |IG| (at least one token).
    """
    magnitude = np.abs(values)
    if magnitude.size == 0:
        return 0.0
    if aggregation == "sqrt_len":
        return float(magnitude.sum() / math.sqrt(magnitude.size))
    if aggregation == "sum":
        return float(magnitude.sum())
    if aggregation == "top20_mean":
        k = max(1, math.ceil(0.2 * magnitude.size))
        return float(np.sort(magnitude)[-k:].mean())
    raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")


def segment_consistency(values: np.ndarray) -> float:
    """Direction consistency |sum IG| / sum |IG| (Eq. 3); 0 for an all-zero segment."""
    total = float(np.abs(values).sum())
    return float(abs(values.sum()) / total) if total > 0 else 0.0


def segment_scores(attributions: Sequence, aggregation: Aggregation = "sqrt_len") -> pd.DataFrame:
    """One row per segment: ``n_tokens``, ``signed_sum``, ``abs_sum``, ``strength``, ``consistency``,
    ``norm_strength`` (Eq. 3-4).

    ``attributions`` is a list of per-segment token-attribution arrays (lists, numpy arrays or
    tensors). Raises ``ValueError`` for NaN/inf, for an empty list, or when every segment has zero
    strength (Eq. 4 is then undefined).
    """
    if isinstance(attributions, (str, bytes)) or not hasattr(attributions, "__len__"):
        raise TypeError("attributions must be a list of per-segment arrays")
    if len(attributions) == 0:
        raise ValueError("attributions is empty: a trace has at least one segment")
    arrays = [_as_finite_array(values, i) for i, values in enumerate(attributions)]
    strengths = np.array([segment_strength(a, aggregation) for a in arrays])
    total = strengths.sum()
    if not total > 0:
        raise ValueError("every segment has zero attribution strength: normalised strength (Eq. 4) is undefined")
    return pd.DataFrame(
        {
            "n_tokens": [a.size for a in arrays],
            "signed_sum": [float(a.sum()) for a in arrays],
            "abs_sum": [float(np.abs(a).sum()) for a in arrays],
            "strength": strengths,
            "consistency": [segment_consistency(a) for a in arrays],
            "norm_strength": strengths / total,
        }
    )


def _validated_vector(name: str, values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf")
    return array


def _normalise_indices(indices: Iterable[int], n: int, name: str) -> set[int]:
    result = set()
    for index in indices:
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"{name} must hold integer segment indices, got {index!r}")
        if not -n <= index < n:
            raise ValueError(f"{name} index {index} is out of range for {n} segments")
        result.add(int(index) % n)
    return result


def top_strength_segments(norm_strength, tau: float = 0.7) -> list[int]:
    """The top-k* segments by normalised strength (Eq. 5-6), in rank order.

    k* is the smallest k whose cumulative normalised strength reaches ``tau``. Ties in strength keep
    the earlier segment first (a stable sort), so the result is deterministic.
    """
    if not isinstance(tau, (int, float)) or isinstance(tau, bool) or not (0 < tau <= 1):
        raise ValueError(f"tau must lie in (0, 1], got {tau!r}")
    strength = _validated_vector("norm_strength", norm_strength)
    if strength.size == 0:
        raise ValueError("norm_strength is empty")
    if np.any(strength < 0):
        raise ValueError("norm_strength must be non-negative")
    if not strength.sum() > 0:
        raise ValueError("norm_strength is all zero: there is no attribution to rank (Eq. 6 is undefined)")
    order = np.argsort(-strength, kind="stable")
    cumulative = np.cumsum(strength[order]) / strength.sum()
    # A tolerance so that tau = 1 selects every segment despite rounding in the cumulative sum.
    k_star = int(np.searchsorted(cumulative, tau - 1e-9, side="left")) + 1
    return [int(i) for i in order[: min(k_star, strength.size)]]


def importance_flags(norm_strength, consistency, tau: float = 0.7, beta: float = 0.8) -> pd.DataFrame:
    """THE decision of Eq. 5-7 for one trace, per segment: ``high_strength`` (among the top-k* segments
    holding ``tau`` of the normalised strength, Eq. 5-6), ``moderate_consistency`` (consistency <=
    ``beta``) and ``important`` (both, Eq. 7). Every stage that labels segments calls this."""
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not (0 <= beta <= 1):
        raise ValueError(f"beta must lie in [0, 1], got {beta!r}")
    top = top_strength_segments(norm_strength, tau)
    consistency = _validated_vector("consistency", consistency)
    if consistency.size != len(np.atleast_1d(norm_strength)):
        raise ValueError(
            f"norm_strength and consistency have different lengths ({len(np.atleast_1d(norm_strength))} vs {consistency.size})"
        )
    high = np.zeros(consistency.size, dtype=bool)
    high[top] = True
    moderate = consistency <= beta
    return pd.DataFrame({"high_strength": high, "moderate_consistency": moderate, "important": high & moderate})


def select_important(norm_strength, consistency, tau: float = 0.7, beta: float = 0.8, always_keep=()) -> list[int]:
    """Important segments (Eq. 5-7, :func:`importance_flags`): among the top-k* by strength, those with
    consistency <= beta.

    ``always_keep`` adds segment indices regardless (negative indices count from the end; the pipeline
    passes the first and last segments, App. C.4). Returns sorted indices.
    """
    flags = importance_flags(norm_strength, consistency, tau, beta)
    selected = {int(i) for i in np.flatnonzero(flags["important"].to_numpy())}
    selected |= _normalise_indices(always_keep, len(flags), "always_keep")
    return sorted(selected)


GROUPS: tuple[str, ...] = (
    "high strength, moderate consistency",
    "high strength, high consistency",
    "low strength, moderate consistency",
    "low strength, high consistency",
)


def segment_groups(
    norm_strength: Sequence[float], consistency: Sequence[float], tau: float, beta: float
) -> pd.DataFrame:
    """Per segment of ONE trace: the columns of :func:`importance_flags` and ``group`` (one of
    :data:`GROUPS`, the strength x consistency quadrant of Fig. 2)."""
    strength = np.asarray(list(norm_strength), dtype=np.float64)
    consistency = np.asarray(list(consistency), dtype=np.float64)
    if strength.size != consistency.size:
        raise ValueError(
            f"norm_strength and consistency have different lengths ({strength.size} vs {consistency.size})"
        )
    flags = importance_flags(strength, consistency, tau, beta)
    flags["group"] = [
        f"{'high' if h else 'low'} strength, {'moderate' if m else 'high'} consistency"
        for h, m in zip(flags["high_strength"], flags["moderate_consistency"])
    ]
    return flags


def label_segments(table: pd.DataFrame, tau: float, beta: float) -> pd.DataFrame:
    """``table`` (one row per segment with ``trace_id``, ``segment``, ``norm_strength``, ``consistency``)
    with the columns of :func:`segment_groups` recomputed per trace at ``tau``/``beta``; sorted by
    trace and segment."""
    missing = {"trace_id", "segment", "norm_strength", "consistency"} - set(table.columns)
    if missing:
        raise ValueError(f"the segment table lacks {sorted(missing)}")
    parts = []
    for _, trace in table.sort_values(["trace_id", "segment"]).groupby("trace_id", sort=True):
        labels = segment_groups(trace["norm_strength"], trace["consistency"], tau, beta)
        labels.index = trace.index
        parts.append(trace.drop(columns=[c for c in labels.columns if c in trace.columns]).join(labels))
    if not parts:
        return table.assign(
            high_strength=pd.Series(dtype=bool),
            moderate_consistency=pd.Series(dtype=bool),
            important=pd.Series(dtype=bool),
            group=pd.Series(dtype=object),
        )
    return pd.concat(parts).sort_values(["trace_id", "segment"]).reset_index(drop=True)


def always_keep_indices(
    n_segments: int, rule: Literal["first_last", "official", "none"] = "first_last"
) -> tuple[int, ...]:
    """Segments kept in every variant (App. C.4).

    ``first_last``: the first and last segment, as the paper's text says. ``official``: the authors'
    code keeps the first, second-to-last and last. ``none``: nothing.
    """
    if n_segments < 1:
        raise ValueError("a trace has at least one segment")
    if rule == "none":
        return ()
    if rule == "first_last":
        return tuple(sorted({0, n_segments - 1}))
    if rule == "official":
        return tuple(sorted({0, max(0, n_segments - 2), n_segments - 1}))
    raise ValueError(f"unknown always-keep rule {rule!r}; use 'first_last', 'official' or 'none'")
