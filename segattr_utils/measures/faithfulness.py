"""Faithfulness of a segment ranking: delete or insert whole segments and watch F (ERASER, RISE, AOPC).

A ranking of the segments of one trace (by attribution strength, or any other score) is *faithful*
when the segments it puts first are the ones the model's answer depends on. This module measures that
the way ERASER (DeYoung et al., 2020), RISE (Petsiuk et al., 2018) and AOPC (Samek et al., 2017) do for
tokens or pixels, but with whole segments of a reasoning trace (the paper's unit, Sec. 2.1-2.2) as the
unit:

- **Deletion curve** F_0 .. F_n: F after the tokens of the first k ranked segments are replaced by a
  baseline token (k = 0 .. n). F_0 is F of the real sequence, F_n of the sequence with every segment
  replaced.
- **Insertion curve** G_0 .. G_n: start from every segment replaced and restore the first k ranked
  segments. G_0 = F_n and G_n = F_0 (the same two sequences).

F is THE target of the attribution engine (:func:`segattr_utils.method.attribution.answer_log_prob`,
the target of Eq. 1): the summed log-probability of the real answer tokens at ``answer_span`` of
``prompt + trace + answer suffix``, each predicted from everything before it. Only segment tokens are
replaced; the prompt and the answer suffix (and so the answer ids that F scores) never change, and
the length of the sequence never changes (a replaced token is the baseline token at the same
position, as on the IG path's baseline end, App. C.4).

Every curve point is an exact forward pass. The orderings of one trace share many masked sequences
(every deletion curve starts at the real sequence and ends with every segment replaced; two orderings
that rank the same segment first share their first step), so :func:`ordering_curves` runs each
distinct masked sequence once. The metric functions then only need the curves:

- :func:`deletion_area` / :func:`insertion_area` (the primary scores): areas **in nats** on the axis
  of the *fraction of trace tokens* removed/inserted (:func:`removal_curve_fractions`), so that a
  ranking is not rewarded for putting long segments first by accident. Deletion: the mean over the
  axis of F_0 - F(x); insertion: the mean of G(x) - G_0. Both are oriented so that **higher means more
  faithful**. They are not divided by anything: every ordering of one trace shares the end points
  F_0 and F_n, so orderings are compared within a trace, and a trace whose answer does not depend on
  its segments (F_0 ~ F_n) contributes a small area instead of a ratio of two small numbers.
- :func:`normalised_deletion_auc` / :func:`normalised_insertion_auc`: the same areas divided by the
  trace's own total change |F_0 - F_n| (RISE's min-max normalisation), defined only when that change
  exceeds ``min_gap`` nats (:data:`DEFAULT_MIN_GAP`); otherwise ``None`` with a note. Near F_0 = F_n
  the ratio is unbounded (means of 3.7 and 6.05 on the tiny profile before the gap was required).
- :func:`comprehensiveness` / :func:`sufficiency` (ERASER) at token budgets
  (:func:`segments_within_budget`; 10/20/50% of the trace tokens by default), in nats of
  log-probability: comprehensiveness higher = more faithful, sufficiency lower = more faithful.
- :func:`aopc`: the mean drop of F over the first K deletion steps (nats, higher = more faithful).

:func:`curve_metrics` computes all of them for one ordering of one trace; :func:`faithfulness_summary`
gives one row per ordering of one trace: each given score (descending), plus a seeded random order and
the longest-first order as baselines. :func:`oracle_order` ranks segments by ground-truth kinds (the
tiny world). Summaries over traces: :mod:`segattr_utils.measures.faithfulness_stats`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..method.attribution import answer_log_prob, execution_device, frozen_eval, split_causal_lm
from ..world import REDUNDANT_KINDS

#: Token budgets of the comprehensiveness/sufficiency columns of :func:`faithfulness_summary`.
DEFAULT_BUDGETS = (0.1, 0.2, 0.5)
#: Nats: below this total change |F_0 - F_n| the normalised areas are undefined (``None``): a trace whose
#: answer log-probability moves by less than a factor e when every segment is replaced.
DEFAULT_MIN_GAP = 1.0
#: Names of the baseline orderings :func:`faithfulness_summary` adds to the given methods.
RANDOM, LENGTH = "random", "length"
#: Ground-truth kinds that carry the chain of the world's problem (:mod:`segattr_utils.world`).
PRODUCTIVE_KINDS = ("productive",)
# Relative slack of the budget comparison: 0.29 * 100 is 28.999999999999996 in floating point.
_BUDGET_SLACK = 1e-9


class Score(NamedTuple):
    """A normalised area and why it is missing: ``value`` is ``None`` (never NaN) exactly when the
    normalisation is undefined, and ``note`` then says why (empty otherwise)."""

    value: float | None
    note: str = ""


@dataclass(frozen=True)
class Curves:
    """The deletion and insertion curves of one ordering of one trace: ``order`` (segment indices,
    most important first), ``fractions`` x_0 .. x_n (:func:`removal_curve_fractions`), ``deletion``
    F_0 .. F_n and ``insertion`` G_0 .. G_n (float64)."""

    order: list[int]
    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray


class CurveSet(NamedTuple):
    """:func:`ordering_curves`' result: the :class:`Curves` of each ordering and ``n_forward``, the number
    of distinct masked sequences that were run (each once)."""

    curves: dict[str, Curves]
    n_forward: int


# --------------------------------------------------------------------------- validation helpers


def _lengths(segment_lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    lengths = np.asarray(list(segment_lengths))
    if lengths.ndim != 1 or lengths.size == 0:
        raise ValueError("segment_lengths must be a non-empty 1-D sequence of token counts")
    if not np.issubdtype(lengths.dtype, np.integer):
        if not np.issubdtype(lengths.dtype, np.floating) or not np.all(lengths == np.round(lengths)):
            raise ValueError(f"segment_lengths must be whole token counts, got {list(segment_lengths)!r}")
        lengths = lengths.astype(np.int64)
    if np.any(lengths < 0):
        raise ValueError(f"segment_lengths must be non-negative, got {lengths.tolist()}")
    if lengths.sum() == 0:
        raise ValueError("every segment has 0 tokens: there is nothing to remove")
    return lengths.astype(np.int64)


def _permutation(order: Sequence[int] | np.ndarray, n: int) -> list[int]:
    values = list(order)
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in values):
        raise ValueError(f"order must hold segment indices (ints), got {values!r}")
    values = [int(v) for v in values]
    if sorted(values) != list(range(n)):
        raise ValueError(f"order must be a permutation of range({n}) (every segment once), got {values}")
    return values


def _curve(name: str, values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(list(values), dtype=np.float64)
    if array.ndim != 1 or array.size < 2:
        raise ValueError(f"{name} must be a 1-D sequence of at least 2 points (k = 0 .. n)")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf")
    return array


def _fractions(fractions: Sequence[float] | np.ndarray, n_points: int) -> np.ndarray:
    x = _curve("fractions", fractions)
    if x.size != n_points:
        raise ValueError(f"fractions has {x.size} points but the curve has {n_points}")
    if np.any(np.diff(x) < 0):
        raise ValueError("fractions must be non-decreasing")
    if not (abs(x[0]) <= 1e-12 and abs(x[-1] - 1.0) <= 1e-12):
        raise ValueError(f"fractions must start at 0 and end at 1, got {x[0]} .. {x[-1]}")
    return x


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def _min_gap(min_gap: float) -> float:
    if isinstance(min_gap, bool) or not isinstance(min_gap, (int, float, np.integer, np.floating)):
        raise ValueError(f"min_gap must be a number of nats, got {min_gap!r}")
    if not (np.isfinite(min_gap) and min_gap >= 0):
        raise ValueError(f"min_gap must be a finite number of nats >= 0, got {min_gap!r}")
    return float(min_gap)


def budget_shares(budgets: Sequence[float]) -> list[float]:
    """``budgets`` as floats, each a share of the trace tokens in (0, 1] with its own column name
    (:func:`budget_name`); raises ``ValueError`` otherwise."""
    shares = []
    for share in budgets:
        if isinstance(share, bool) or not isinstance(share, (int, float, np.integer, np.floating)):
            raise ValueError(f"every budget must be a share of the trace tokens in (0, 1], got {share!r}")
        if not 0.0 < float(share) <= 1.0:
            raise ValueError(f"every budget must lie in (0, 1], got {share!r}")
        shares.append(float(share))
    if len({budget_name(s) for s in shares}) != len(shares):
        raise ValueError(f"budgets {shares} give duplicate column names")
    return shares


def _aopc_steps(steps: int | None) -> int | None:
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1):
        raise ValueError(f"aopc_steps must be a positive int or None (every step), got {steps!r}")
    return None if steps is None else int(steps)


def budget_name(share: float) -> str:
    """The column suffix of a token budget: its percentage (``0.1`` -> ``"10"``)."""
    return f"{round(100 * share):g}"


# --------------------------------------------------------------------------- metrics on a curve


def removal_curve_fractions(
    segment_lengths: Sequence[int] | np.ndarray, order: Sequence[int] | np.ndarray
) -> np.ndarray:
    """x_0 .. x_n: the fraction of the trace's tokens removed after k = 0 .. n deletion steps.

    ``x_k = sum_{j < k} len(order[j]) / sum_i len(i)``, so ``x_0 = 0`` and ``x_n = 1`` exactly. The
    same axis serves the insertion curve (fraction of trace tokens restored). Segments with 0 tokens
    are allowed (they repeat a fraction); a trace with 0 tokens in all is not.
    """
    lengths = _lengths(segment_lengths)
    ranked = _permutation(order, lengths.size)
    x = np.concatenate([[0.0], np.cumsum(lengths[ranked]) / lengths.sum()])
    x[-1] = 1.0
    return x


def deletion_area(fractions: Sequence[float] | np.ndarray, f_values: Sequence[float] | np.ndarray) -> float:
    """Area between F_0 and the deletion curve on the token-fraction axis, in nats; **higher = more
    faithful**.

    With F_0 .. F_n the deletion curve and x_0 .. x_n the fractions of trace tokens removed
    (:func:`removal_curve_fractions`), the score is the trapezoid area
    ``sum_k (x_{k+1} - x_k) ((F_0 - F_k) + (F_0 - F_{k+1})) / 2``: since x runs from 0 to 1, the mean
    over the axis of the drop F_0 - F(x), with F linear between steps. A ranking whose first, short
    segments already take F down scores near the total drop F_0 - F_n; a ranking under which F only
    falls at the very end scores near 0 (RISE's deletion area, measured as the drop so that higher is
    better, and in nats instead of min-max normalised).

    Every ordering of one trace has the same F_0 and F_n, so orderings are compared within a trace;
    the area is bounded by the curve's range (|area| <= max_k |F_0 - F_k|) and never divides by
    anything, so a trace whose F hardly moves gives a small area, not an unbounded ratio.
    """
    y = _curve("f_values", f_values)
    return _trapezoid(_fractions(fractions, y.size), y[0] - y)


def insertion_area(fractions: Sequence[float] | np.ndarray, g_values: Sequence[float] | np.ndarray) -> float:
    """Area between the insertion curve and its start G_0 on the token-fraction axis, in nats;
    **higher = more faithful**.

    With G_0 .. G_n the insertion curve (G_0: every segment replaced by the baseline, G_n: the real
    sequence) and x_k the fraction of trace tokens restored, the score is
    ``sum_k (x_{k+1} - x_k) ((G_k - G_0) + (G_{k+1} - G_0)) / 2``, the mean over the axis of the
    recovery G(x) - G_0 (RISE's insertion area relative to its start, in nats). Near G_n - G_0 when
    restoring the first, short segments already brings F back.
    """
    y = _curve("g_values", g_values)
    return _trapezoid(_fractions(fractions, y.size), y - y[0])


def _normalised_area(fractions, values, *, kind: str, min_gap: float) -> Score:
    y = _curve("f_values", values)
    x = _fractions(fractions, y.size)
    min_gap = _min_gap(min_gap)
    gap = y[0] - y[-1]
    if not abs(gap) > min_gap:
        return Score(
            None,
            f"F barely changes between every segment and none ({kind}: first {y[0]:.6g}, last {y[-1]:.6g}, "
            f"|gap| <= {min_gap:g} nats): the normalised {kind} area is undefined",
        )
    return Score(_trapezoid(x, (y[0] - y) / gap))


def normalised_deletion_auc(
    fractions: Sequence[float] | np.ndarray, f_values: Sequence[float] | np.ndarray, *, min_gap: float = DEFAULT_MIN_GAP
) -> Score:
    """The deletion area divided by the trace's total drop; **higher = more faithful**. Secondary to
    :func:`deletion_area`.

    ``d_k = (F_0 - F_k) / (F_0 - F_n)`` (0 at k = 0, 1 at k = n) and the score is its trapezoid area
    on the token-fraction axis: 1 - (RISE's deletion area of the min-max normalised curve), reversed
    so that higher is better: near 1 when the first, short segments already take F all the way down,
    0.5 when F falls linearly in the tokens removed, near 0 when F only falls at the very end. It lies
    in [0, 1] when F falls monotonically; a non-monotone curve can leave it (the further, the smaller
    the total drop). If removing every segment *raises* F the score still measures how early F
    reaches its end value.

    ``|F_0 - F_n| <= min_gap`` nats leaves it undefined: ``value`` is ``None`` (never NaN) and ``note``
    says why. With ``min_gap = 0`` only an exactly flat curve is undefined and a gap of 0.01 nats can
    turn curve noise into a score of 100.
    """
    return _normalised_area(fractions, f_values, kind="deletion", min_gap=min_gap)


def normalised_insertion_auc(
    fractions: Sequence[float] | np.ndarray, g_values: Sequence[float] | np.ndarray, *, min_gap: float = DEFAULT_MIN_GAP
) -> Score:
    """The insertion area divided by the trace's total recovery; **higher = more faithful**.

    ``r_k = (G_k - G_0) / (G_n - G_0)`` (0 at k = 0, 1 at k = n) and the score is its trapezoid area,
    as RISE's insertion metric: near 1 when restoring the first, short segments already brings F back,
    0.5 for a linear recovery. ``|G_n - G_0| <= min_gap`` nats gives ``value`` ``None`` with a
    ``note`` (see :func:`normalised_deletion_auc`).
    """
    return _normalised_area(fractions, g_values, kind="insertion", min_gap=min_gap)


def comprehensiveness(f_full: float, f_removed: float) -> float:
    """ERASER comprehensiveness in log-probability: ``F(x) - F(x without the rationale)``.

    ``f_removed`` is F with the selected (top-ranked) segments replaced by the baseline token. In nats;
    **higher = more faithful** (removing what the ranking calls important hurts the answer). ERASER
    uses the probability of the predicted class; here F is the answer's summed log-probability, the
    quantity IG attributes.
    """
    return float(f_full) - float(f_removed)


def sufficiency(f_full: float, f_kept_only: float) -> float:
    """ERASER sufficiency in log-probability: ``F(x) - F(rationale only)``.

    ``f_kept_only`` is F with every segment *except* the selected ones replaced by the baseline token
    (prompt and answer suffix kept). In nats; **lower = more faithful** (the selected segments alone
    nearly keep the answer's log-probability); it can be negative.
    """
    return float(f_full) - float(f_kept_only)


def segments_within_budget(
    segment_lengths: Sequence[int] | np.ndarray, order: Sequence[int] | np.ndarray, share: float
) -> list[int]:
    """The top-ranked segments that fit in ``share`` of the trace's tokens, in rank order.

    Rule: walk ``order`` and take segments while the cumulative token count stays ``<= share * total``
    (with a relative slack of 1e-9 against floating-point rounding); stop at the first segment that
    does not fit (the selection is always a prefix of the ranking, never a knapsack); take at least
    one segment even if it alone exceeds the budget. ``share`` must lie in (0, 1].
    """
    lengths = _lengths(segment_lengths)
    ranked = _permutation(order, lengths.size)
    share = float(share)
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must lie in (0, 1], got {share}")
    limit = share * lengths.sum() * (1.0 + _BUDGET_SLACK)
    cumulative = np.cumsum(lengths[ranked])
    k = max(1, int(np.searchsorted(cumulative, limit, side="right")))
    return ranked[:k]


def aopc(f_values: Sequence[float] | np.ndarray, k: int | None = None) -> float:
    """Area over the perturbation curve of a deletion curve: ``(1/K) sum_{k=1..K} (F_0 - F_k)``.

    F_0 .. F_n is the deletion curve (most important segments removed first); ``k`` is K, the number of
    steps averaged (default: all n). In nats; **higher = more faithful**. Samek et al. (2017) divide
    the same sum by K + 1 (their sum includes the k = 0 term, which is 0); this mean over the K real
    steps is (K + 1) / K times theirs. Steps are segments, which hold different numbers of tokens; the
    token-fraction axis of :func:`deletion_area` corrects for that, AOPC does not.
    """
    y = _curve("f_values", f_values)
    n = y.size - 1
    if k is None:
        k = n
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in 1 .. {n} (the number of deletion steps), got {k!r}")
    return float(np.mean(y[0] - y[1 : int(k) + 1]))


def curve_metrics(
    segment_lengths: Sequence[int],
    curves: Curves,
    *,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    aopc_steps: int | None = None,
    min_gap: float = DEFAULT_MIN_GAP,
) -> dict:
    """Every faithfulness score of one ordering of one trace, from its :class:`Curves`.

    Keys: ``f_full`` (F_0) and ``f_empty`` (F_n, every segment replaced); ``deletion_area`` and
    ``insertion_area`` (nats, the primary scores); ``deletion_auc_normalised`` and
    ``insertion_auc_normalised`` (``None`` when ``|F_0 - F_n| <= min_gap``); per budget b (percent):
    ``comprehensiveness_<b>``, ``sufficiency_<b>`` and ``budget_share_<b>``, the share of trace tokens the
    selection of :func:`segments_within_budget` actually holds (at least one segment, so it can exceed
    the budget); ``aopc`` over ``aopc_steps`` = K = min(``aopc_steps``, n) steps (all n when ``None``);
    ``note`` (why a normalised area is ``None``, else empty).

    Removing the top-k segments is the deletion curve's step k and keeping only them the insertion
    curve's step k, so the budget scores read the curves.
    """
    lengths = _lengths(segment_lengths)
    order = _permutation(curves.order, lengths.size)
    fractions = removal_curve_fractions(lengths, order)
    deletion = _curve("deletion", curves.deletion)
    insertion = _curve("insertion", curves.insertion)
    if deletion.size != lengths.size + 1 or insertion.size != lengths.size + 1:
        raise ValueError(f"curves need {lengths.size + 1} points (k = 0 .. n), got {deletion.size}, {insertion.size}")
    steps = _aopc_steps(aopc_steps)
    steps = lengths.size if steps is None else min(steps, lengths.size)
    dele = normalised_deletion_auc(fractions, deletion, min_gap=min_gap)
    ins = normalised_insertion_auc(fractions, insertion, min_gap=min_gap)
    row: dict[str, object] = {
        "f_full": float(deletion[0]),
        "f_empty": float(deletion[-1]),
        "deletion_area": deletion_area(fractions, deletion),
        "insertion_area": insertion_area(fractions, insertion),
        "deletion_auc_normalised": dele.value,
        "insertion_auc_normalised": ins.value,
    }
    for share in budget_shares(budgets):
        k = len(segments_within_budget(lengths, order, share))
        name = budget_name(share)
        row[f"comprehensiveness_{name}"] = comprehensiveness(deletion[0], deletion[k])
        row[f"sufficiency_{name}"] = sufficiency(deletion[0], insertion[k])
        row[f"budget_share_{name}"] = float(fractions[k])
    row["aopc"] = aopc(deletion, steps)
    row["aopc_steps"] = int(steps)
    row["note"] = "; ".join(dict.fromkeys(s.note for s in (dele, ins) if s.note))
    return row


# --------------------------------------------------------------------------- orders


def _finite_scores(scores: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(list(scores), dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf")
    return array


def segment_order(scores: Sequence[float] | np.ndarray, *, descending: bool = True) -> list[int]:
    """Segment indices ranked by ``scores`` (highest first unless ``descending=False``); equal scores
    keep the lower segment index first, in both directions."""
    s = _finite_scores(scores, "scores")
    sign = -1.0 if descending else 1.0
    return sorted(range(s.size), key=lambda i: (sign * s[i], i))


def random_order(n: int, seed: int) -> list[int]:
    """A uniformly random permutation of ``range(n)`` from ``numpy.random.default_rng(seed)``
    (the same seed gives the same order)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    return [int(i) for i in np.random.default_rng(seed).permutation(int(n))]


def length_order(lengths: Sequence[int], *, descending: bool = True) -> list[int]:
    """Segment indices by token count, longest first unless ``descending=False``; ties keep the lower
    segment index first. The baseline that removes the most tokens per step."""
    return segment_order(_finite_scores(lengths, "lengths"), descending=descending)


def oracle_order(
    kinds: Sequence[str],
    productive: Sequence[str] = PRODUCTIVE_KINDS,
    redundant: Sequence[str] = REDUNDANT_KINDS,
) -> list[int]:
    """The ground-truth ordering of a world trace (tiny/smoke profiles): ``productive`` segments first
    (they state the chain's steps, :mod:`segattr_utils.world`), then every other kind (wrong
    explorations, verifications), then the ``redundant`` kinds (repetition, truncated, superficial;
    Fig. 1 left's redundant segments); within a tier, in trace order. Raises ``ValueError`` for a
    segment without a kind (hub traces have none)."""
    kinds = list(kinds)
    if not kinds:
        raise ValueError("kinds is empty: a trace has at least one segment")
    if any(not isinstance(kind, str) for kind in kinds):
        raise ValueError("some segments have no ground-truth kind (only the world profiles have kinds)")
    tiers = [2 if kind in productive else 0 if kind in redundant else 1 for kind in kinds]
    return segment_order(tiers)


# --------------------------------------------------------------------------- model side


def _validate_sequence(model, input_ids, answer_span, segment_spans, baseline_token_id, batch_size):
    if not isinstance(input_ids, torch.Tensor):
        input_ids = torch.as_tensor(list(input_ids), dtype=torch.long)
    input_ids = input_ids.detach().cpu()  # the masks are built on the CPU; batches move to the model
    if input_ids.dim() != 1 or input_ids.numel() == 0:
        raise ValueError(f"input_ids must be one non-empty 1-D sequence, got shape {tuple(input_ids.shape)}")
    if input_ids.dtype != torch.long:
        raise ValueError(f"input_ids must hold token ids (torch.long), got dtype {input_ids.dtype}")
    length = input_ids.numel()
    if len(answer_span) != 2:
        raise ValueError(f"answer_span must be a (start, end) pair, got {answer_span!r}")
    a_start, a_end = (int(v) for v in answer_span)
    if not 1 <= a_start < a_end <= length:
        raise ValueError(
            f"answer_span {tuple(answer_span)} must satisfy 1 <= start < end <= {length} (a non-empty answer "
            "inside the sequence, with a token before it)"
        )
    spans = []
    for i, span in enumerate(segment_spans):
        if len(span) != 2:
            raise ValueError(f"segment span {i} must be a (start, end) pair, got {span!r}")
        start, end = int(span[0]), int(span[1])
        if not 0 <= start <= end <= length:
            raise ValueError(f"segment span {i} ({start}, {end}) lies outside the sequence of length {length}")
        if start < a_end and a_start < end:
            raise ValueError(
                f"segment span {i} ({start}, {end}) overlaps the answer span ({a_start}, {a_end}): the answer "
                "tokens that F scores must never be replaced"
            )
        spans.append((start, end))
    if not spans:
        raise ValueError("segment_spans is empty: there are no segments to delete")
    ranked = sorted(range(len(spans)), key=lambda i: spans[i])
    for a, b in zip(ranked, ranked[1:]):
        if spans[b][0] < spans[a][1]:
            raise ValueError(f"segment spans {a} {spans[a]} and {b} {spans[b]} overlap")
    if sum(e - s for s, e in spans) == 0:
        raise ValueError("every segment span is empty: there are no tokens to delete")
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(getattr(embedding, "weight", None), "shape", (None,))[0]
    if (
        isinstance(baseline_token_id, bool)
        or not isinstance(baseline_token_id, (int, np.integer))
        or baseline_token_id < 0
        or (vocab is not None and baseline_token_id >= vocab)
    ):
        raise ValueError(f"baseline_token_id {baseline_token_id!r} is not a valid token id")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return input_ids, (a_start, a_end), spans


def _segment_of_token(length: int, spans: list[tuple[int, int]]) -> torch.Tensor:
    """Per token: the index of the segment holding it, -1 outside every segment."""
    owner = torch.full((length,), -1, dtype=torch.long)
    for index, (start, end) in enumerate(spans):
        owner[start:end] = index
    return owner


def _f_of_masks(model, input_ids, answer_span, spans, masks, baseline_token_id, batch_size) -> dict:
    """F of every distinct masked sequence: ``{frozenset of replaced segments: F}``, each run once,
    ``batch_size`` sequences per forward pass under ``torch.no_grad()`` in eval mode."""
    unique = list(dict.fromkeys(masks))
    owner = _segment_of_token(input_ids.numel(), spans)
    embedding, backbone, head = split_causal_lm(model)
    device = execution_device(embedding) or next(model.parameters()).device
    softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    start, end = answer_span
    values = []
    with frozen_eval(model), torch.no_grad():
        for first in range(0, len(unique), batch_size):
            chunk = unique[first : first + batch_size]
            replaced = torch.stack([torch.isin(owner, torch.tensor(sorted(m), dtype=torch.long)) for m in chunk])
            batch = torch.where(
                replaced, torch.full_like(replaced, int(baseline_token_id), dtype=torch.long), input_ids
            )
            batch = batch.to(device)
            targets = batch[:, start:end]  # the real answer ids: no segment overlaps the answer span
            f = answer_log_prob(backbone, head, embedding(batch), targets, (start, end), softcap)
            values.append(f.double().cpu())
    out = torch.cat(values).numpy()
    if not np.all(np.isfinite(out)):
        raise FloatingPointError("F is not finite (NaN/inf) at some curve point; check the model dtype and inputs")
    return dict(zip(unique, out.tolist()))


def _deletion_masks(order: list[int]) -> list[frozenset]:
    return [frozenset(order[:k]) for k in range(len(order) + 1)]


def _insertion_masks(order: list[int]) -> list[frozenset]:
    return [frozenset(order[k:]) for k in range(len(order) + 1)]


def deletion_curve(
    model: nn.Module,
    input_ids: torch.Tensor,
    answer_span: tuple[int, int],
    segment_spans: Sequence[tuple[int, int]],
    order: Sequence[int],
    baseline_token_id: int,
    *,
    batch_size: int = 8,
) -> np.ndarray:
    """F_0 .. F_n: F after the tokens of the first k segments of ``order`` are replaced by
    ``baseline_token_id`` (k = 0 .. n), as float64.

    F is :func:`~segattr_utils.method.attribution.answer_log_prob` of the real answer ids at
    ``answer_span`` (with the model's ``final_logit_softcapping``, as in ``token_attributions``).
    ``input_ids`` is one 1-D sequence (a tensor or a list, e.g. ``AttributionSequence.input_ids``);
    ``segment_spans`` are half-open token ranges that must lie inside it, must not overlap each other
    or the answer span; ``order`` must be a permutation of ``range(len(segment_spans))``. Tokens
    outside the segments (prompt, answer suffix) are never replaced. The n + 1 sequences run
    ``batch_size`` at a time under ``torch.no_grad()`` with the model in eval mode (its mode and
    ``requires_grad`` flags are restored afterwards).
    """
    ids, span, spans = _validate_sequence(model, input_ids, answer_span, segment_spans, baseline_token_id, batch_size)
    masks = _deletion_masks(_permutation(order, len(spans)))
    f = _f_of_masks(model, ids, span, spans, masks, baseline_token_id, batch_size)
    return np.array([f[m] for m in masks], dtype=np.float64)


def insertion_curve(
    model: nn.Module,
    input_ids: torch.Tensor,
    answer_span: tuple[int, int],
    segment_spans: Sequence[tuple[int, int]],
    order: Sequence[int],
    baseline_token_id: int,
    *,
    batch_size: int = 8,
) -> np.ndarray:
    """G_0 .. G_n: F with every segment replaced by ``baseline_token_id`` except the first k of
    ``order`` (k = 0 .. n), as float64. G_0 is the deletion curve's F_n and G_n its F_0. Arguments and
    validation as :func:`deletion_curve`."""
    ids, span, spans = _validate_sequence(model, input_ids, answer_span, segment_spans, baseline_token_id, batch_size)
    masks = _insertion_masks(_permutation(order, len(spans)))
    f = _f_of_masks(model, ids, span, spans, masks, baseline_token_id, batch_size)
    return np.array([f[m] for m in masks], dtype=np.float64)


class SequenceLike(Protocol):
    """What :func:`ordering_curves` and :func:`faithfulness_summary` read (e.g. an ``AttributionSequence``)."""

    input_ids: Sequence[int] | torch.Tensor
    answer_span: tuple[int, int]
    segment_spans: Sequence[tuple[int, int]]


def ordering_curves(
    model: nn.Module,
    sequence: SequenceLike,
    orders: Mapping[str, Sequence[int]],
    baseline_token_id: int,
    *,
    batch_size: int = 8,
) -> CurveSet:
    """The deletion and insertion curves of every ordering in ``orders`` ({name: permutation of the
    segment indices, most important first}) of ONE trace.

    Each distinct masked sequence runs once: all curves share the real sequence and the one with every
    segment replaced, and orderings that agree on their first segments share those steps. So at most
    ``2 + 2 (n - 1) len(orders)`` forward passes (``CurveSet.n_forward`` says how many ran); the
    values equal :func:`deletion_curve` and :func:`insertion_curve` of each ordering.
    """
    ids, span, spans = _validate_sequence(
        model, sequence.input_ids, sequence.answer_span, sequence.segment_spans, baseline_token_id, batch_size
    )
    if not orders:
        raise ValueError("orders is empty: give at least one ordering")
    ranked = {name: _permutation(order, len(spans)) for name, order in orders.items()}
    masks = [m for order in ranked.values() for m in (*_deletion_masks(order), *_insertion_masks(order))]
    f = _f_of_masks(model, ids, span, spans, masks, baseline_token_id, batch_size)
    lengths = [end - start for start, end in spans]
    curves = {
        name: Curves(
            order=order,
            fractions=removal_curve_fractions(lengths, order),
            deletion=np.array([f[m] for m in _deletion_masks(order)], dtype=np.float64),
            insertion=np.array([f[m] for m in _insertion_masks(order)], dtype=np.float64),
        )
        for name, order in ranked.items()
    }
    return CurveSet(curves, len(f))


# --------------------------------------------------------------------------- one trace, several orderings


def faithfulness_summary(
    model: nn.Module,
    sequence: SequenceLike,
    scores_by_method: Mapping[str, Sequence[float]],
    *,
    baseline_token_id: int,
    seed: int = 0,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    aopc_steps: int | None = None,
    min_gap: float = DEFAULT_MIN_GAP,
    batch_size: int = 8,
) -> pd.DataFrame:
    """Faithfulness of several segment orderings of ONE trace.

    One row per ordering: each method of ``scores_by_method`` (segments ranked by its scores, highest
    first, :func:`segment_order`), then ``"random"`` (:func:`random_order` with ``seed``) and
    ``"length"`` (:func:`length_order`, longest first). Columns: ``ordering`` and the keys of
    :func:`curve_metrics` (nats areas, normalised areas or ``None``, comprehensiveness/sufficiency and
    realised token share per budget, AOPC, note).
    """
    spans = [tuple(span) for span in sequence.segment_spans]
    n = len(spans)
    lengths = [int(end) - int(start) for start, end in spans]
    orders: dict[str, list[int]] = {}
    for method, scores in scores_by_method.items():
        if method in (RANDOM, LENGTH):
            raise ValueError(f"method name {method!r} is reserved for the baseline ordering it names")
        if len(scores) != n:
            raise ValueError(f"method {method!r} has {len(scores)} scores for {n} segments")
        orders[method] = segment_order(scores)
    orders[RANDOM] = random_order(n, seed)
    orders[LENGTH] = length_order(lengths)
    budgets = budget_shares(budgets)
    _aopc_steps(aopc_steps)
    _min_gap(min_gap)
    result = ordering_curves(model, sequence, orders, baseline_token_id, batch_size=batch_size)
    rows = [
        {"ordering": name, **curve_metrics(lengths, curves, budgets=budgets, aopc_steps=aopc_steps, min_gap=min_gap)}
        for name, curves in result.curves.items()
    ]
    return metric_frame(rows)


def metric_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """Rows of :func:`curve_metrics` as a DataFrame whose normalised-area columns are pandas' nullable
    ``Float64``: a ``None`` stays missing (``<NA>``, also through Parquet), never a silent NaN."""
    rows = list(rows)
    frame = pd.DataFrame(rows)
    for column in ("deletion_auc_normalised", "insertion_auc_normalised"):
        if column in frame:  # from the rows themselves: the frame has already turned None into NaN
            values = [row[column] for row in rows]
            frame[column] = pd.array([None if v is None else float(v) for v in values], dtype="Float64")
    return frame
