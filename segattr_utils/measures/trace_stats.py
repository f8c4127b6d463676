"""Honest statistics for comparisons whose observations are not independent.

Two places in the paper compare numbers that are not independent draws:

* **Segments within a trace (Sec. 3.1).** Confidence Δ, log-perplexity, entropy and BLEU are compared
  between important and unimportant segments. Importance is relative within a trace (the top share of
  one trace's attribution), and segments of one trace share its problem, its length and its model
  state, so they are not independent observations. Pooling all segments in one rank test (as
  ``group_stats.compare_groups`` does) lets a trace with many segments dominate and counts each
  segment as evidence, which inflates significance. Here the unit is the trace:
  :func:`within_trace_differences` reduces every trace to one difference (mean over important minus
  mean over unimportant segments), :func:`paired_trace_test` tests those differences with a Wilcoxon
  signed-rank test and :func:`cluster_bootstrap` resamples whole traces for any other statistic.
* **Seeds and questions (Table 1).** SFT variants are trained with 3 seeds and each is evaluated on the
  same benchmark questions. A difference between two variants varies with the training seed and with
  the questions drawn; :func:`seed_question_bootstrap` resamples both (seeds, then questions shared by
  both variants) so its interval carries the training-seed variance instead of treating one seed's
  questions as the whole story.

Several comparisons of one figure or table form a family; :func:`holm` adjusts their p-values (Holm's
step-down procedure, which controls the family-wise error rate without assuming independence).

As in ``group_stats``, a statistic that cannot be computed (too few traces, no common seed) is ``None``
and the result's ``note`` says why; no function returns NaN, and no row is dropped without being
reported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from segattr_utils.measures.group_stats import _finite

WILCOXON_TEST = "two-sided Wilcoxon signed-rank over traces (zero_method='wilcox')"


# ----------------------------------------------------------------------------------------------
# Validation helpers


def _require_columns(table: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [column for column in columns if column not in table.columns]
    if missing:
        names = ", ".join(repr(column) for column in missing)
        raise ValueError(f"table has no column {names} (columns: {list(table.columns)})")


def _finite_column(table: pd.DataFrame, column: str) -> np.ndarray:
    try:
        return _finite(f"column {column!r}", table[column])
    except (TypeError, ValueError) as error:
        if "NaN or inf" in str(error):
            raise
        raise ValueError(f"column {column!r} must hold numbers: {error}") from error


def _no_missing(table: pd.DataFrame, column: str) -> None:
    if table[column].isna().any():
        raise ValueError(f"column {column!r} has missing values")


def _check_bootstrap(n_boot: int, confidence: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")


def _percentile_interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    """The percentile interval of bootstrap ``draws``: their ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` quantiles."""
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return float(low), float(high)


def _plain(value):
    """A numpy scalar as the Python scalar it holds (for seeds and trace ids in results)."""
    return value.item() if isinstance(value, np.generic) else value


def _sorted(values) -> list:
    values = [_plain(value) for value in values]
    try:
        return sorted(values)
    except TypeError:
        return values


# ----------------------------------------------------------------------------------------------
# Segments within traces (Sec. 3.1)


def within_trace_differences(
    table: pd.DataFrame, measure: str, group: str = "important", trace: str = "trace_id"
) -> pd.DataFrame:
    """One difference per trace: mean ``measure`` over its ``group``-True segments minus the mean over
    its ``group``-False segments.

    ``table`` holds one row per segment. Returns a frame with one row per trace that has segments in
    both groups (in order of first appearance) and columns ``trace`` (named as the argument),
    ``n_in``, ``n_out``, ``mean_in``, ``mean_out`` and ``difference``. Traces with segments in only one
    group have no difference; they are dropped and listed in ``frame.attrs["dropped_traces"]``.

    Raises ValueError naming the column when a column is missing, ``measure`` is not numeric or holds
    NaN/inf, ``group`` holds anything but booleans (or 0/1) or ``trace`` has missing values.
    """
    _require_columns(table, [trace, group, measure])
    values = _finite_column(table, measure)
    _no_missing(table, trace)
    flags = table[group]
    if flags.isna().any() or not set(flags.unique()) <= {True, False}:
        raise ValueError(f"column {group!r} must hold only True/False (or 1/0)")
    frame = pd.DataFrame({"trace": table[trace].to_numpy(), "flag": flags.astype(bool).to_numpy(), "value": values})
    rows, dropped = [], []
    for trace_id, segments in frame.groupby("trace", sort=False):
        inside = segments.loc[segments["flag"], "value"]
        outside = segments.loc[~segments["flag"], "value"]
        if inside.empty or outside.empty:
            dropped.append(_plain(trace_id))
            continue
        mean_in, mean_out = float(inside.mean()), float(outside.mean())
        rows.append(
            {
                trace: _plain(trace_id),
                "n_in": int(inside.size),
                "n_out": int(outside.size),
                "mean_in": mean_in,
                "mean_out": mean_out,
                "difference": mean_in - mean_out,
            }
        )
    result = pd.DataFrame(rows, columns=[trace, "n_in", "n_out", "mean_in", "mean_out", "difference"])
    result.attrs["dropped_traces"] = dropped
    return result


def rank_biserial(differences: Sequence[float]) -> float | None:
    """The matched-pairs rank-biserial correlation ``(W+ - W-) / (W+ + W-)`` of paired differences.

    ``W+`` and ``W-`` are the sums of the ranks of ``|d|`` (average ranks for ties) over the positive
    and the negative differences; zero differences are excluded before ranking (as the Wilcoxon test
    with ``zero_method='wilcox'`` does). Returns a value in [-1, 1] (1: every non-zero difference is
    positive), or ``None`` when no difference is non-zero.
    """
    from scipy.stats import rankdata

    d = _finite("differences", differences)
    d = d[d != 0]
    if d.size == 0:
        return None
    ranks = rankdata(np.abs(d))
    w_plus, w_minus = float(ranks[d > 0].sum()), float(ranks[d < 0].sum())
    return (w_plus - w_minus) / (w_plus + w_minus)


def paired_trace_test(
    differences: Sequence[float], *, n_boot: int = 10_000, seed: int = 0, confidence: float = 0.95
) -> dict:
    """Test whether per-trace differences (e.g. ``within_trace_differences(...)["difference"]``) are
    centred on zero, with the trace as the unit.

    The test is a two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, ``method='auto'``:
    exact for up to 50 traces without ties or zeros, otherwise scipy's permutation or normal
    approximation). Zero differences are discarded before ranking (``zero_method='wilcox'``): a trace
    whose groups have equal means carries no sign.

    Returns ``n_traces``, ``n_nonzero``, ``mean_difference``, ``median_difference``, ``ci_low`` and
    ``ci_high`` (a percentile bootstrap interval of the mean difference, resampling traces with
    ``numpy.random.default_rng(seed)``), ``confidence``, ``n_boot``, ``w_plus`` and ``w_minus`` (rank
    sums of the positive and negative differences), ``statistic`` and ``p_value`` (scipy's),
    ``rank_biserial`` (the effect size, see :func:`rank_biserial`), ``test`` and ``note``. With fewer
    than 2 non-zero differences the test statistics and p-value are ``None``; with no traces every
    statistic is ``None``; ``note`` says why.
    """
    from scipy.stats import rankdata, wilcoxon

    _check_bootstrap(n_boot, confidence)
    d = _finite("differences", differences)
    nonzero = d[d != 0]
    result = {
        "n_traces": int(d.size),
        "n_nonzero": int(nonzero.size),
        "mean_difference": None,
        "median_difference": None,
        "ci_low": None,
        "ci_high": None,
        "confidence": confidence,
        "n_boot": n_boot,
        "w_plus": None,
        "w_minus": None,
        "statistic": None,
        "p_value": None,
        "rank_biserial": None,
        "test": WILCOXON_TEST,
        "note": "",
    }
    if d.size == 0:
        result["note"] = "no traces: nothing to test"
        return result
    result["mean_difference"] = float(d.mean())
    result["median_difference"] = float(np.median(d))
    rng = np.random.default_rng(seed)
    draws = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    result["ci_low"], result["ci_high"] = _percentile_interval(draws, confidence)
    if nonzero.size:
        ranks = rankdata(np.abs(nonzero))
        result["w_plus"] = float(ranks[nonzero > 0].sum())
        result["w_minus"] = float(ranks[nonzero < 0].sum())
        result["rank_biserial"] = rank_biserial(nonzero)
    if nonzero.size < 2:
        result["note"] = (
            f"{nonzero.size} non-zero difference{'s' if nonzero.size != 1 else ''} among {d.size} traces: "
            "the signed-rank test needs at least 2"
        )
        return result
    test = wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    result["statistic"], result["p_value"] = float(test.statistic), float(test.pvalue)
    if nonzero.size < d.size:
        result["note"] = f"{d.size - nonzero.size} zero difference(s) discarded by the signed-rank test"
    return result


def trace_level_comparison(
    table: pd.DataFrame, measure: str, group: str = "important", trace: str = "trace_id", *, seed: int = 0
) -> dict:
    """The trace-level test of one segment comparison, flat for a results table: ``n_traces`` (traces
    with segments in both groups), ``traces_with_one_group`` (left out, counted), ``trace_difference``
    (mean over traces of the within-trace difference, :func:`within_trace_differences`), its bootstrap
    interval ``trace_ci_low`` / ``trace_ci_high``, the Wilcoxon signed-rank ``trace_p`` and the
    ``rank_biserial`` effect size (:func:`paired_trace_test`), and ``trace_note``."""
    differences = within_trace_differences(table, measure, group, trace)
    test = paired_trace_test(differences["difference"], seed=seed)
    return {
        "n_traces": test["n_traces"],
        "traces_with_one_group": len(differences.attrs["dropped_traces"]),
        "trace_difference": test["mean_difference"],
        "trace_ci_low": test["ci_low"],
        "trace_ci_high": test["ci_high"],
        "trace_p": test["p_value"],
        "rank_biserial": test["rank_biserial"],
        "trace_note": test["note"],
    }


def _boolean_column(table: pd.DataFrame, column: str) -> np.ndarray:
    flags = table[column]
    if flags.isna().any() or not set(flags.unique()) <= {True, False}:
        raise ValueError(f"column {column!r} must hold only True/False (or 1/0)")
    return flags.astype(bool).to_numpy()


def share_comparison(
    table: pd.DataFrame,
    outcome: str,
    group: str = "important",
    trace: str = "trace_id",
    *,
    n_boot: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """The share of ``outcome``-True segments among ``group``-True vs ``group``-False segments (e.g. the
    share with BLEU > 0.8, or judged truncated, among important vs unimportant segments), tested with
    the trace as the unit; the segment-pooled Fisher exact test beside it.

    ``table`` holds one row per segment; ``outcome`` and ``group`` hold booleans (or 0/1). Three
    analyses, flat for a results table:

    * **Trace level (the reported test).** Per trace with segments in both groups, the within-trace
      difference of the share (share among its important minus among its unimportant segments,
      :func:`within_trace_differences` of the 0/1 outcome), tested with :func:`paired_trace_test`
      (Wilcoxon signed-rank over traces, rank-biserial effect size, percentile bootstrap interval of
      the mean difference over traces): ``n_traces``, ``traces_with_one_group`` (traces with segments in
      one group only have no difference; they are counted, not silently dropped), ``n_nonzero`` (traces
      whose difference is not 0; the signed-rank test uses only these), ``trace_difference``,
      ``trace_ci_low``, ``trace_ci_high``, ``trace_p``, ``rank_biserial``.
    * **Pooled share, cluster-bootstrapped.** ``share_in`` / ``share_out`` over all segments of each
      group (``n_in``, ``n_out`` segments, ``k_in``, ``k_out`` with the outcome) and their difference
      ``pooled_difference``, with a percentile interval ``pooled_ci_low`` / ``pooled_ci_high`` from a
      bootstrap that resamples whole traces (every trace, those with one group too, since the pooled
      shares count their segments); its draws are those of :func:`cluster_bootstrap` with the same
      ``seed`` (computed from per-trace counts instead of copied rows). ``pooled_invalid_draws``
      counts resamples in which a group had no segment (left out of the interval).
    * **Segments pooled as if independent.** ``pooled_segments_fisher_p`` and
      ``pooled_segments_odds_ratio``: the two-sided Fisher exact test of the 2 x 2 table (group x
      outcome) over all segments. It treats the segments of a trace as independent observations, which
      they are not (importance is relative within a trace); it stays for comparison only.

    ``test`` names the trace-level test and ``note`` says why a statistic is missing. A statistic that
    cannot be computed (an empty group, no trace with both groups, fewer than 2 non-zero differences,
    an odds ratio with a zero margin) is ``None``, never NaN. Raises ValueError naming the column when
    a column is missing, ``outcome`` or ``group`` holds anything but booleans (or 0/1), or ``trace`` has
    missing values.
    """
    from scipy.stats import fisher_exact

    _check_bootstrap(n_boot, confidence)
    _require_columns(table, [trace, group, outcome])
    _no_missing(table, trace)
    flags = _boolean_column(table, group)
    hits = _boolean_column(table, outcome)
    n_in, n_out = int(flags.sum()), int((~flags).sum())
    k_in, k_out = int(hits[flags].sum()), int(hits[~flags].sum())
    result = {
        "n_in": n_in,
        "n_out": n_out,
        "k_in": k_in,
        "k_out": k_out,
        "share_in": k_in / n_in if n_in else None,
        "share_out": k_out / n_out if n_out else None,
        "n_traces": 0,
        "traces_with_one_group": 0,
        "n_nonzero": 0,
        "trace_difference": None,
        "trace_ci_low": None,
        "trace_ci_high": None,
        "trace_p": None,
        "rank_biserial": None,
        "pooled_difference": None,
        "pooled_ci_low": None,
        "pooled_ci_high": None,
        "pooled_invalid_draws": None,
        "pooled_segments_fisher_p": None,
        "pooled_segments_odds_ratio": None,
        "test": WILCOXON_TEST,
        "note": "",
    }
    notes = [f"no segment with {group} {value}" for value, n in ((True, n_in), (False, n_out)) if n == 0]
    frame = pd.DataFrame({"trace": table[trace].to_numpy(), "flag": flags, "hit": hits.astype(np.float64)})

    differences = within_trace_differences(frame, "hit", "flag", "trace")
    test = paired_trace_test(differences["difference"], n_boot=n_boot, seed=seed, confidence=confidence)
    result.update(
        n_traces=test["n_traces"],
        traces_with_one_group=len(differences.attrs["dropped_traces"]),
        n_nonzero=test["n_nonzero"],
        trace_difference=test["mean_difference"],
        trace_ci_low=test["ci_low"],
        trace_ci_high=test["ci_high"],
        trace_p=test["p_value"],
        rank_biserial=test["rank_biserial"],
    )
    if result["traces_with_one_group"]:
        notes.append(
            f"{result['traces_with_one_group']} trace(s) with segments in one group only left out of the trace-level test"
        )
    if test["note"]:
        notes.append(f"trace level: {test['note']}")

    if n_in and n_out:
        result["pooled_difference"] = k_in / n_in - k_out / n_out
        by_trace = frame.assign(hit_in=frame["hit"] * frame["flag"], hit_out=frame["hit"] * ~frame["flag"])
        by_trace = by_trace.assign(out=~by_trace["flag"]).groupby("trace", sort=False)
        counts = by_trace[["flag", "hit_in", "out", "hit_out"]].sum().to_numpy(dtype=np.float64)
        draws = _cluster_share_draws(counts, n_boot, seed)
        valid = draws[np.isfinite(draws)]
        result["pooled_invalid_draws"] = int(n_boot - valid.size)
        if valid.size:
            result["pooled_ci_low"], result["pooled_ci_high"] = _percentile_interval(valid, confidence)
        else:
            notes.append("pooled share: a group was empty in every resample, no interval")
        if valid.size < n_boot:
            notes.append(
                f"pooled share: {n_boot - valid.size} of {n_boot} resamples had an empty group and were left out"
            )
        if len(counts) == 1:
            notes.append("pooled share: a single trace, the interval cannot reflect between-trace variation")
        odds, p_value = fisher_exact([[k_in, n_in - k_in], [k_out, n_out - k_out]], alternative="two-sided")
        result["pooled_segments_fisher_p"] = float(p_value)
        if np.isfinite(odds):
            result["pooled_segments_odds_ratio"] = float(odds)
        else:
            notes.append("odds ratio undefined (a zero margin in the 2 x 2 table)")
    else:
        notes.append("no pooled share difference, no interval, no Fisher test")
    result["note"] = "; ".join(notes)
    return result


def _cluster_share_draws(counts: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap draws of the pooled share difference from per-cluster counts (rows: clusters; columns:
    segments in the group, with the outcome among them, segments out of it, with the outcome among
    them). Each draw resamples clusters with replacement exactly as :func:`cluster_bootstrap` does (the
    same generator stream, drawn in blocks) and sums the drawn clusters' counts; a draw with an empty
    group is NaN."""
    n_clusters = len(counts)
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    step = max(1, 1_000_000 // n_clusters)  # draws per block: caps the block's matrices at about 8 MB each
    for start in range(0, n_boot, step):
        size = min(step, n_boot - start)
        chosen = rng.integers(0, n_clusters, size=(size, n_clusters))
        cells = (np.arange(size)[:, None] * n_clusters + chosen).ravel()
        weights = np.bincount(cells, minlength=size * n_clusters).reshape(size, n_clusters)
        n_in, k_in, n_out, k_out = (weights @ counts).T
        with np.errstate(divide="ignore", invalid="ignore"):
            draws[start : start + size] = k_in / n_in - k_out / n_out
    return draws


def cluster_bootstrap(
    table: pd.DataFrame,
    statistic: Callable[[pd.DataFrame], float],
    cluster: str = "trace_id",
    n_boot: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """A percentile bootstrap interval of ``statistic(table)`` that resamples whole clusters (traces)
    with replacement, keeping every row of a drawn cluster.

    In each resample a cluster drawn twice appears twice, and its rows get a distinct label in the
    ``cluster`` column per copy (the draw's position, 0 to ``n_clusters - 1``), so a statistic that
    groups by ``cluster`` sees two clusters rather than one with doubled rows. The estimate itself is
    ``statistic`` of the original ``table`` (original labels).

    Returns ``estimate``, ``ci_low``, ``ci_high``, ``se`` (standard deviation of the draws),
    ``confidence``, ``n_boot``, ``n_clusters``, ``n_invalid_draws`` (resamples whose statistic was NaN or
    inf; they are left out of the interval and counted) and ``note``. Raises ValueError when the column
    is missing or has missing values, the table is empty or the statistic of the table is not finite.
    """
    _check_bootstrap(n_boot, confidence)
    _require_columns(table, [cluster])
    _no_missing(table, cluster)
    if table.empty:
        raise ValueError("table has no rows: nothing to bootstrap")
    estimate = float(statistic(table))
    if not np.isfinite(estimate):
        raise ValueError(f"statistic of the table is {estimate}: nothing to bootstrap")
    positions = list(table.groupby(cluster, sort=False).indices.values())
    n_clusters = len(positions)
    sizes = np.array([len(rows) for rows in positions])
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for b, chosen in enumerate(rng.integers(0, n_clusters, size=(n_boot, n_clusters))):
        rows = np.concatenate([positions[c] for c in chosen])
        sample = table.iloc[rows].copy()
        sample[cluster] = np.repeat(np.arange(n_clusters), sizes[chosen])
        draws[b] = float(statistic(sample))
    valid = draws[np.isfinite(draws)]
    result = {
        "estimate": estimate,
        "ci_low": None,
        "ci_high": None,
        "se": None,
        "confidence": confidence,
        "n_boot": n_boot,
        "n_clusters": n_clusters,
        "n_invalid_draws": int(n_boot - valid.size),
        "note": "",
    }
    if valid.size == 0:
        result["note"] = "the statistic was NaN or inf on every resample: no interval"
        return result
    result["ci_low"], result["ci_high"] = _percentile_interval(valid, confidence)
    result["se"] = float(valid.std(ddof=1)) if valid.size > 1 else None
    notes = []
    if n_clusters == 1:
        notes.append("a single cluster: the interval cannot reflect between-cluster variation")
    if valid.size < n_boot:
        notes.append(f"{n_boot - valid.size} of {n_boot} resamples gave NaN or inf and were left out")
    result["note"] = "; ".join(notes)
    return result


def none_preserving_frame(rows: Sequence[Mapping]) -> pd.DataFrame:
    """A frame of ``rows`` (dicts) in which a ``None`` stays ``None``: a column that holds ``None`` in some
    row is kept as an object column of the rows' values (pandas would turn ``[0.5, None]`` into
    ``[0.5, NaN]``); other columns get pandas' usual dtypes."""
    frame = pd.DataFrame(list(rows))
    for column in frame.columns:
        values = [row.get(column) for row in rows]
        if any(value is None for value in values):
            frame[column] = pd.Series(values, index=frame.index, dtype=object)
    return frame


# ----------------------------------------------------------------------------------------------
# A family of tests


def holm(p_values: Mapping[str, float | None] | Sequence[float | None]):
    """Holm's step-down adjustment of a family of p-values.

    With the ``m`` p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value of the i-th
    is ``max over j <= i of min(1, (m - j + 1) * p_(j))``. ``None`` entries (tests that could not be
    run) are passed through as ``None`` and not counted in ``m``.

    Returns the adjusted p-values in the input's order and shape: a dict with the same keys for a
    mapping, a Series with the same index for a Series, otherwise a list. Raises ValueError for NaN or a
    value outside [0, 1].
    """
    if isinstance(p_values, pd.Series):
        keys, values = list(p_values.index), list(p_values.to_numpy(dtype=object))
    elif isinstance(p_values, Mapping):
        keys, values = list(p_values.keys()), list(p_values.values())
    elif isinstance(p_values, str):
        raise ValueError("p_values must be a mapping or a sequence of numbers, not a string")
    else:
        keys, values = None, list(p_values)
    present = [i for i, value in enumerate(values) if value is not None]
    p = np.array([values[i] for i in present], dtype=np.float64)
    if np.isnan(p).any():
        raise ValueError("p_values contains NaN (pass None for a test that could not be run)")
    if ((p < 0) | (p > 1)).any():
        raise ValueError("p_values must lie in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    stepped = np.maximum.accumulate(scaled) if m else scaled
    adjusted: list[float | None] = [None] * len(values)
    for rank, index in enumerate(order):
        adjusted[present[index]] = float(stepped[rank])
    if isinstance(p_values, pd.Series):
        return pd.Series(adjusted, index=p_values.index, name=p_values.name, dtype=object)
    if keys is not None:
        return dict(zip(keys, adjusted))
    return adjusted


# ----------------------------------------------------------------------------------------------
# Seeds and questions (Table 1)


def seed_question_bootstrap(
    results: pd.DataFrame,
    a: str,
    b: str,
    *,
    variant: str = "variant",
    seed_col: str = "seed",
    question: str = "question_id",
    score: str = "correct",
    n_boot: int = 10_000,
    rng_seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Difference of mean ``score`` between variants ``a`` and ``b`` (a minus b) with a two-level
    bootstrap over training seeds and benchmark questions.

    ``results`` holds one row per (variant, training seed, question); several rows for one such triple
    (e.g. several samples of one question) are averaged first. Like is compared with like: only seeds
    present for both variants are used, and only questions answered by both variants under every used
    seed; the others are listed as dropped.

    With ``D[s, q] = score_a - score_b`` on seed ``s`` and question ``q``, the estimate is the mean over
    seeds of the per-seed mean difference (``D.mean()``). Each bootstrap draw resamples seeds with
    replacement, then questions with replacement; the questions are the same benchmark for every seed,
    so one question draw serves both variants and every drawn seed (a crossed design), and the draw's
    statistic is the mean of ``D`` over the drawn seeds and questions. The p-value is the two-sided
    bootstrap p-value ``min(1, 2 * min(share of draws <= 0, share of draws >= 0))``: how often the
    resampled difference falls on the other side of zero. It is 0 when no draw reaches zero, which
    means p < 1 / n_boot, not p = 0.

    Returns ``estimate``, ``ci_low``, ``ci_high``, ``p_value``, ``confidence``, ``n_boot``, ``n_seeds``,
    ``n_questions``, ``seeds_used``, ``seeds_dropped``, ``questions_dropped``, ``seed_differences`` (seed
    -> mean_a - mean_b over the used questions) and ``note``. With a single common seed the seed
    variance cannot be estimated (the note says so) and only questions are resampled; with no common
    seed or question the statistics are ``None``. Raises ValueError for a missing column, a score that is
    not finite, missing seeds or questions, ``a == b`` or a variant that is not in ``results``.
    """
    _check_bootstrap(n_boot, confidence)
    _require_columns(results, [variant, seed_col, question, score])
    scores = _finite_column(results, score)
    for column in (variant, seed_col, question):
        _no_missing(results, column)
    if a == b:
        raise ValueError(f"variants a and b are both {a!r}: nothing to compare")
    present = set(results[variant].unique())
    absent = [name for name in (a, b) if name not in present]
    if absent:
        raise ValueError(f"column {variant!r} has no variant {', '.join(map(repr, absent))} (has: {_sorted(present)})")
    frame = pd.DataFrame(
        {
            "variant": results[variant].to_numpy(),
            "seed": results[seed_col].to_numpy(),
            "question": results[question].to_numpy(),
            "score": scores,
        }
    )
    frame = frame[frame["variant"].isin([a, b])]
    cells = frame.groupby(["variant", "seed", "question"], sort=False)["score"].mean()
    seeds_a = set(cells.loc[a].index.get_level_values("seed"))
    seeds_b = set(cells.loc[b].index.get_level_values("seed"))
    seeds_used = _sorted(seeds_a & seeds_b)
    only_a, only_b = _sorted(seeds_a - seeds_b), _sorted(seeds_b - seeds_a)
    result: dict[str, object] = {
        "estimate": None,
        "ci_low": None,
        "ci_high": None,
        "p_value": None,
        "confidence": confidence,
        "n_boot": n_boot,
        "n_seeds": len(seeds_used),
        "n_questions": 0,
        "seeds_used": seeds_used,
        "seeds_dropped": _sorted(seeds_a ^ seeds_b),
        "questions_dropped": [],
        "seed_differences": {},
        "note": "",
    }
    notes = []
    for name, only in ((a, only_a), (b, only_b)):
        if only:
            other = b if name == a else a
            notes.append(f"seed(s) {only} of {name!r} have no run of {other!r} and were dropped")
    if not seeds_used:
        notes.append("no seed common to both variants: nothing to compare")
        result["note"] = "; ".join(notes)
        return result
    wide_a = cells.loc[a].unstack("question").loc[seeds_used]
    wide_b = cells.loc[b].unstack("question").loc[seeds_used]
    all_questions = set(wide_a.columns) | set(wide_b.columns)
    questions = [q for q in wide_a.columns if q in wide_b.columns]
    questions = [q for q in questions if wide_a[q].notna().all() and wide_b[q].notna().all()]
    dropped_questions = _sorted(all_questions - set(questions))
    result["questions_dropped"] = dropped_questions
    result["n_questions"] = len(questions)
    if dropped_questions:
        notes.append(
            f"{len(dropped_questions)} question(s) not answered by both variants under every used seed were dropped"
        )
    if not questions:
        notes.append("no question answered by both variants under every used seed: nothing to compare")
        result["note"] = "; ".join(notes)
        return result
    d = wide_a[questions].to_numpy(dtype=np.float64) - wide_b[questions].to_numpy(dtype=np.float64)
    n_seeds, n_questions = d.shape
    result["seed_differences"] = {seed: float(row.mean()) for seed, row in zip(seeds_used, d)}
    result["estimate"] = float(d.mean())
    rng = np.random.default_rng(rng_seed)
    # A draw's mean over resampled seeds and questions is w_seed @ D @ w_question, with w the share of
    # the draw that each seed (question) received.
    seed_weights = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=n_boot) / n_seeds
    question_weights = rng.multinomial(n_questions, np.full(n_questions, 1 / n_questions), size=n_boot) / n_questions
    draws = np.einsum("bs,sq,bq->b", seed_weights, d, question_weights)
    result["ci_low"], result["ci_high"] = _percentile_interval(draws, confidence)
    result["p_value"] = float(min(1.0, 2 * min(np.mean(draws <= 0), np.mean(draws >= 0))))
    if n_seeds == 1:
        notes.append(
            f"a single common seed ({seeds_used[0]!r}): the training-seed variance cannot be estimated, "
            "the interval reflects questions only"
        )
    result["note"] = "; ".join(notes)
    return result
