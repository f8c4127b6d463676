"""How attribution is distributed over the segments of a trace (Sec. 3 setup, Fig. 1 right-bottom)
and where important segments sit relative to the decision segment (App. A).

**CDF of normalised strength (Fig. 1 right-bottom).** "Segments are ranked as Eq. 5, with cumulative
attribution averaged across percentage intervals." For one trace with n segments and normalised
strengths sorted in descending order, c_k is the strength held by its top k segments (c_0 = 0,
c_n = 1). Traces have different numbers of segments, so each is put on a common percentage axis
before averaging: F(x) at a fraction x of its segments is the piecewise-linear curve through the points
(k/n, c_k) (``interpolation="linear"``, the default: a 4-segment trace holds half of its second
segment's strength at x = 3/8) or the step function c_⌊x·n⌋ of whole segments (``"step"``). The
figure averages F over traces on a grid of percentages (profile ``analysis.cdf_interpolation``).
The share of segments holding ``mass`` (80% in the paper, "30~40% of segments") is reported two ways:
per trace k*/n with k* the smallest k with c_k >= mass (Eq. 6), averaged over traces, and the first
grid point where the averaged curve reaches ``mass``.

**Decision segment (App. A).** "The decision segment, defined as the first segment that derives the
correct answer." In general (:func:`decision_segment`): the first segment whose text contains the
gold answer as a standalone expression (not part of a longer number or word). In the tiny world
(:func:`world_decision_segment`) intermediate values can equal the answer, so the ground truth is used
instead: the first segment that states the chain's final equation (the step that yields the answer).

**Positional shares (App. A).** For segments of traces that have a decision segment, the share of
each set that lies before, at and after it. Sets (at the Sec. 3.1 thresholds): important;
unimportant; low-strength unimportant (not in the top-k*); high-consistency unimportant (consistency
> β, whatever the strength). The last two overlap in the low-strength, high-consistency segments,
as the paper's wording does not exclude them. Paper: 40% of important segments after, 57% of
unimportant before, 64% of low-strength unimportant before, 72% of high-consistency unimportant after.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import cast

import numpy as np
import pandas as pd

from ..world import Problem, parse_equations

_EPS = 1e-9


def cumulative_strength(norm_strength: Sequence[float]) -> np.ndarray:
    """c_1..c_n: the normalised strength held by the top-k segments (descending order, Eq. 5),
    renormalised to end at exactly 1."""
    strength = np.asarray(list(norm_strength), dtype=np.float64)
    if strength.ndim != 1 or strength.size == 0:
        raise ValueError("norm_strength must be a non-empty 1-D sequence")
    if not np.all(np.isfinite(strength)) or np.any(strength < 0):
        raise ValueError("norm_strength must be finite and non-negative")
    total = strength.sum()
    if not total > 0:
        raise ValueError("norm_strength is all zero: the CDF is undefined")
    return np.cumsum(np.sort(strength)[::-1]) / total


def cdf_at(
    cumulative: Sequence[float] | np.ndarray, fractions: Sequence[float] | np.ndarray, interpolation: str = "linear"
) -> np.ndarray:
    """F(x) at each fraction x in [0, 1] of a trace's segments, from c_1..c_n (c_0 = 0): linear
    interpolation between the points (k/n, c_k), or the step function c_⌊x·n⌋ (``"step"``)."""
    c = np.concatenate([[0.0], np.asarray(list(cumulative), dtype=np.float64)])
    x = np.asarray(list(fractions), dtype=np.float64)
    if np.any((x < 0) | (x > 1)):
        raise ValueError("fractions must lie in [0, 1]")
    n = c.size - 1
    if interpolation == "linear":
        return np.interp(x, np.arange(n + 1) / n, c)
    if interpolation == "step":
        return c[np.floor(x * n + _EPS).astype(int)]
    raise ValueError(f"interpolation must be 'linear' or 'step', got {interpolation!r}")


def mean_cdf(traces: Iterable[Sequence[float]], grid: Sequence[float], interpolation: str = "linear") -> np.ndarray:
    """The average over traces of F on ``grid`` (each trace given by its normalised strengths)."""
    curves = [cdf_at(cumulative_strength(strength), grid, interpolation) for strength in traces]
    if not curves:
        raise ValueError("no traces: the averaged CDF is undefined")
    return np.mean(curves, axis=0)


def share_holding(norm_strength: Sequence[float], mass: float = 0.8) -> float:
    """k*/n: the share of a trace's segments whose top-strength members hold ``mass`` (Eq. 6)."""
    if not 0 < mass <= 1:
        raise ValueError(f"mass must lie in (0, 1], got {mass!r}")
    cumulative = cumulative_strength(norm_strength)
    k_star = int(np.searchsorted(cumulative, mass - _EPS, side="left")) + 1
    return min(k_star, cumulative.size) / cumulative.size


def curve_share_holding(grid: Sequence[float], curve: Sequence[float], mass: float = 0.8) -> float:
    """The first grid fraction at which an (averaged) CDF reaches ``mass``."""
    grid, curve = np.asarray(list(grid), dtype=np.float64), np.asarray(list(curve), dtype=np.float64)
    reached = np.nonzero(curve >= mass - _EPS)[0]
    if reached.size == 0:
        raise ValueError(f"the curve never reaches {mass}")
    return float(grid[reached[0]])


def percent_grid(points: int = 101) -> np.ndarray:
    """``points`` evenly spaced fractions from 0 to 1 (101 = every whole percent)."""
    if points < 2:
        raise ValueError("the grid needs at least two points")
    return np.linspace(0.0, 1.0, points)


# ---------------------------------------------------------------------------------------------
# Decision segment


def contains_answer(text: str, answer: str) -> bool:
    """Whether ``answer`` occurs in ``text`` as a standalone expression: not preceded by a letter,
    digit, '.' or backslash and not followed by a letter, digit or a decimal part ("6" is in
    "3 + 3 = 6." and "\\boxed{6}", not in "16", "6.5" or "x6")."""
    answer = answer.strip()
    if not answer:
        raise ValueError("answer is empty")
    pattern = rf"(?<![\w.\\]){re.escape(answer)}(?![\w]|\.\d)"
    return re.search(pattern, text) is not None


def decision_segment(segments: Sequence[str], answer: str) -> int | None:
    """Index of the first segment that contains the gold answer (:func:`contains_answer`), or None."""
    for index, text in enumerate(segments):
        if contains_answer(text, answer):
            return index
    return None


def world_decision_segment(problem: Problem, segments: Sequence[str]) -> int | None:
    """Tiny world: index of the first segment stating the chain's final equation, or None."""
    final_step = problem.steps[-1]
    for index, text in enumerate(segments):
        if final_step in parse_equations(text):
            return index
    return None


# ---------------------------------------------------------------------------------------------
# Positional shares (App. A)

POSITION_SETS: tuple[str, ...] = (
    "important",
    "unimportant",
    "low-strength unimportant",
    "high-consistency unimportant",
)


def relative_position(segment: int, decision: int) -> str:
    return "before" if segment < decision else ("at" if segment == decision else "after")


def positional_shares(labelled: pd.DataFrame, decisions: Mapping[str, int | None]) -> pd.DataFrame:
    """Share of each set of :data:`POSITION_SETS` before, at and after the decision segment.

    ``labelled`` holds ``trace_id``, ``segment``, ``important``, ``high_strength`` and
    ``moderate_consistency`` (:func:`segattr_utils.measures.confidence.label_segments`); ``decisions`` maps
    trace ids to the decision segment's index or None. Traces without a decision segment are left
    out (the caller reports how many). Shares of an empty set are None with a note.
    """
    missing = {"trace_id", "segment", "important", "high_strength", "moderate_consistency"} - set(labelled.columns)
    if missing:
        raise ValueError(f"the segment table lacks {sorted(missing)}")
    table = labelled[labelled["trace_id"].map(lambda t: decisions.get(t) is not None)].copy()
    table["position"] = [
        relative_position(s, cast(int, decisions[t])) for t, s in zip(table["trace_id"], table["segment"])
    ]
    unimportant = ~table["important"]
    selectors = {
        "important": table["important"],
        "unimportant": unimportant,
        "low-strength unimportant": unimportant & ~table["high_strength"],
        "high-consistency unimportant": unimportant & ~table["moderate_consistency"],
    }
    rows = []
    for name in POSITION_SETS:
        positions = table.loc[selectors[name], "position"]
        n = int(len(positions))
        row = {"set": name, "n": n}
        for where in ("before", "at", "after"):
            row[f"share_{where}"] = float((positions == where).mean()) if n else None
        row["note"] = "" if n else "no segments in this set"
        rows.append(row)
    return pd.DataFrame(rows)
