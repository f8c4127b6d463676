"""Segment-level faithfulness over a run's traces (beyond the paper): which traces are measured, the
orderings of each trace's segments, the record kept per trace, one row per (trace, ordering) and the
tables and checks over traces.

The curves and per-trace scores are :mod:`segattr_utils.measures.faithfulness`'s (deletion and insertion
curves of F, the target of Eq. 1, on the fraction of trace tokens removed; ERASER, RISE, AOPC); the
summaries and trace-level tests are :mod:`segattr_utils.measures.faithfulness_stats`'s. The orderings
(:func:`trace_orders`) are IG strength (Eq. 3-4) and the measures Table 3 selects by, each in the
direction its authors call a segment important. Stage 06
(:mod:`segattr_utils.stages.stage06_distribution_position`) reads the artifacts, loads the model, keeps
the record store and writes the tables.

Records and rows hold data only: equal inputs give equal bytes, and the stage keeps its timings in its
run log (:mod:`segattr_utils.run_log`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..artifacts import fingerprint
from ..llm.generation import derive_seed
from ..llm.variants import SIGNAL_SOURCES
from .faithfulness import (
    Curves,
    budget_name,
    budget_shares,
    curve_metrics,
    length_order,
    metric_frame,
    oracle_order,
    ordering_curves,
    random_order,
    removal_curve_fractions,
    segment_order,
)
from .faithfulness_stats import TEST_COLUMNS, mean_curves, ordering_summary, paired_ordering_tests
from .linguistics import summed_entropy

#: The orderings compared, in display order. Each ranks a trace's segments most important first, in the
#: direction in which its authors call a segment important (:func:`trace_orders`).
ORDERING_LABELS = {
    "ig": "IG strength (ours)",
    "oracle": "ground-truth kinds (oracle)",
    "random": "random",
    "length": "longest first",
    "perplexity": "segment perplexity",
    "entropy": "segment entropy",
    "confidence": "confidence gain",
}
#: The ordering tested against every other one.
REFERENCE = "ig"
#: The orderings by another measure and the per-segment signal each reads (stages 04-05).
SIGNAL_ORDERINGS = {"perplexity": "removal_ppl_increase", "entropy": "entropy", "confidence": "confidence_delta"}


@dataclass(frozen=True)
class FaithfulnessSettings:
    """``analysis.faithfulness``: ``enabled``; ``n_traces`` (None: every attributed correct trace with at
    least 2 segments; N: a sample of N drawn with ``random_seed``); ``budgets`` (shares of the trace
    tokens for comprehensiveness/sufficiency); ``aopc_steps`` (None: all); ``normalised_min_gap``
    (nats); ``random_seed``; ``batch_size`` (masked sequences per forward pass); ``curve_grid_points``
    (of the mean curves' token-fraction grid)."""

    enabled: bool
    n_traces: int | None
    budgets: tuple[float, ...]
    aopc_steps: int | None
    normalised_min_gap: float
    random_seed: int
    batch_size: int
    curve_grid_points: int


def _optional_int_setting(name: str, value, minimum: int) -> int | None:
    """``value`` as an integer >= ``minimum``, or None; else a ``ValueError`` naming the setting."""
    return None if value is None else _int_setting(name, value, minimum, allowed=" or null")


def _int_setting(name: str, value, minimum: int, allowed: str = "") -> int:
    """``value`` as an integer >= ``minimum``; else a ``ValueError`` naming the setting."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"analysis.faithfulness.{name} must be an integer >= {minimum}{allowed}, got {value!r}")
    return value


def settings_from_spec(spec) -> FaithfulnessSettings:
    """The validated ``analysis.faithfulness`` section ``spec`` (None: the profile has none); raises
    ``ValueError`` naming the bad setting."""
    fields = FaithfulnessSettings.__dataclass_fields__
    if not isinstance(spec, dict):
        raise ValueError(f"the profile has no analysis.faithfulness section (settings: {', '.join(fields)})")
    unknown, missing = sorted(set(spec) - set(fields)), [f for f in fields if f not in spec]
    if unknown or missing:
        raise ValueError(f"analysis.faithfulness: unknown settings {unknown}, missing settings {missing}")
    if not isinstance(spec["enabled"], bool):
        raise ValueError(f"analysis.faithfulness.enabled must be true or false, got {spec['enabled']!r}")
    if not isinstance(spec["budgets"], (list, tuple)) or not spec["budgets"]:
        raise ValueError(f"analysis.faithfulness.budgets must be a non-empty list, got {spec['budgets']!r}")
    try:
        budgets = tuple(budget_shares(spec["budgets"]))
    except ValueError as error:
        raise ValueError(f"analysis.faithfulness.budgets: {error}") from error
    gap = spec["normalised_min_gap"]
    if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not (math.isfinite(gap) and gap >= 0):
        raise ValueError(f"analysis.faithfulness.normalised_min_gap must be a number of nats >= 0, got {gap!r}")
    return FaithfulnessSettings(
        enabled=spec["enabled"],
        n_traces=_optional_int_setting("n_traces", spec["n_traces"], 1),
        budgets=budgets,
        aopc_steps=_optional_int_setting("aopc_steps", spec["aopc_steps"], 1),
        normalised_min_gap=float(gap),
        random_seed=_int_setting("random_seed", spec["random_seed"], 0),
        batch_size=_int_setting("batch_size", spec["batch_size"], 1),
        curve_grid_points=_int_setting("curve_grid_points", spec["curve_grid_points"], 2),
    )


def sample_traces(trace_ids: Sequence[str], n: int | None, seed: int) -> list[str]:
    """``n`` of ``trace_ids`` drawn without replacement with ``numpy.random.default_rng(seed)`` (all of
    them when ``n`` is None or not smaller), sorted."""
    ids = sorted(trace_ids)
    if n is None or n >= len(ids):
        return ids
    chosen = np.random.default_rng(seed).permutation(len(ids))[:n]
    return sorted(ids[i] for i in chosen)


def _trace_signal(signals: dict, trace_id: str, name: str, n: int) -> list[float]:
    values = signals.get(trace_id, {}).get(name)
    if values is None:
        raise ValueError(
            f"trace {trace_id!r} has no {name!r}: run {SIGNAL_SOURCES[name]} before notebook 06's faithfulness "
            "analysis (or set analysis.faithfulness.enabled: false)"
        )
    if len(values) != n:
        raise ValueError(
            f"trace {trace_id!r}: {len(values)} values of {name!r} for {n} segments; rerun notebooks 04-05"
        )
    return [float(v) for v in values]


def select_traces(scores: pd.DataFrame, settings: FaithfulnessSettings) -> tuple[pd.DataFrame, list[str], dict]:
    """The attributed correct traces of ``scores`` (stage 03's segment scores), the ids of those measured
    (at least 2 segments: with one, every ordering is the same; ``n_traces`` of them drawn by
    :func:`sample_traces`), and counts of the traces left out."""
    correct = scores[scores["correct"].astype(bool)] if len(scores) else scores
    sizes = correct.groupby("trace_id").size() if len(correct) else pd.Series(dtype=int)
    eligible = sorted(sizes[sizes >= 2].index)
    chosen = sample_traces(eligible, settings.n_traces, settings.random_seed)
    counts = {"correct": int(len(sizes)), "single_segment": int((sizes < 2).sum()), "measured": len(chosen)}
    return correct, chosen, counts


def trace_items(
    correct: pd.DataFrame,
    chosen: Sequence[str],
    kept: pd.DataFrame,
    segments: pd.DataFrame,
    signals: dict,
    *,
    world: bool,
    suffix: str,
    baseline,
    seed: int,
) -> list[dict]:
    """One item per trace of ``chosen`` (:func:`select_traces`) with what its orderings and its sequence
    need: question and gold answer (``kept``: stage 01's kept traces indexed by trace id), segment texts
    (``segments``: stage 02's table) and, with ``world``, their ground-truth kinds, stage 03's normalised
    strength (``correct``) and the per-segment signals of stages 04-05 (``signals``:
    :data:`SIGNAL_ORDERINGS`' values per trace), and the ``fingerprint`` of all of that with the answer
    suffix, the baseline and ``seed`` (a stored record is recomputed when any of it changes)."""
    segments = segments[segments["trace_id"].isin(set(chosen))]
    by_trace = {tid: group.sort_values("segment") for tid, group in segments.groupby("trace_id")}
    items = []
    for tid in chosen:
        strength = correct[correct["trace_id"] == tid].sort_values("segment")["norm_strength"].tolist()
        texts = by_trace[tid]["text"].tolist() if tid in by_trace else []
        if len(texts) != len(strength):
            raise ValueError(f"trace {tid!r}: {len(texts)} segments in stage 02 but {len(strength)} scored in stage 03")
        item = {
            "trace_id": tid,
            "question": kept.loc[tid, "question"],
            "answer": str(kept.loc[tid, "answer"]),
            "segments": texts,
            "kinds": by_trace[tid]["kind"].tolist() if world else None,
            "norm_strength": strength,
            **{name: _trace_signal(signals, tid, name, len(texts)) for name in SIGNAL_ORDERINGS.values()},
        }
        item["fingerprint"] = fingerprint(item, suffix, baseline, seed)
        items.append(item)
    return items


def trace_orders(item: dict, lengths: Sequence[int], seed: int) -> dict[str, list[int]]:
    """The orderings of one trace, each a permutation of its segments, most important first.

    - ``ig``: normalised IG strength (Eq. 3-4, stage 03), highest first: the method's score;
    - ``oracle`` (world profiles only): the ground-truth kinds, productive segments first and redundant
      ones last (:func:`~segattr_utils.measures.faithfulness.oracle_order`);
    - ``random``: a permutation seeded by ``seed`` and the trace id;
    - ``length``: most tokens first (``lengths``: the segments' token counts in the sequence);
    - ``perplexity``: removal perplexity increase (Cui et al., Sec. 4.4's "Segment Perplexity"), highest
      first: the segment whose removal raises the output's perplexity most is the most important;
    - ``entropy``: summed token entropy (Li et al., Sec. 4.4's "Segment Entropy",
      :func:`~segattr_utils.measures.linguistics.summed_entropy`), highest first;
    - ``confidence``: confidence gain Δ (Xu et al.; Sec. 3.1 finding 1, stage 04), highest first: the
      segment after which the forced answer is most often correct, relative to before it.

    These are the directions in which Table 3's baselines select segments (stage 08's variants); the
    paper reports that IG-important segments have *lower* perplexity and entropy (Sec. 3.1), so these
    orderings are not IG's in disguise. Ties keep trace order (``segment_order``).
    """
    orders = {"ig": segment_order(item["norm_strength"])}
    if item.get("kinds") is not None:
        orders["oracle"] = oracle_order(item["kinds"])
    orders["random"] = random_order(len(lengths), derive_seed(seed, "faithfulness-random", item["trace_id"]))
    orders["length"] = length_order(lengths)
    orders["perplexity"] = segment_order(item["removal_ppl_increase"])
    orders["entropy"] = segment_order(summed_entropy(item["entropy"], lengths))
    orders["confidence"] = segment_order(item["confidence_delta"])
    return orders


def record_key(record: dict) -> list:
    """The store key of a record or item: its trace id and fingerprint."""
    return [record["trace_id"], record["fingerprint"]]


def faithfulness_record(model, sequence, item: dict, baseline: int, settings: FaithfulnessSettings) -> dict:
    """The curves of every ordering of one trace (:func:`trace_orders`) on its stage 03 sequence
    ``prompt + trace + answer suffix`` (``sequence``:
    :func:`~segattr_utils.method.token_spans.build_attribution_sequence`) with the IG baseline token: the
    record the store keeps. It holds data only (no timing), so equal inputs give equal records."""
    lengths = [end - start for start, end in sequence.segment_spans]
    orders = trace_orders(item, lengths, settings.random_seed)
    result = ordering_curves(model, sequence, orders, baseline, batch_size=settings.batch_size)
    return {
        "trace_id": item["trace_id"],
        "fingerprint": item["fingerprint"],
        "n_tokens": len(sequence),
        "segment_lengths": lengths,
        "orders": {name: curves.order for name, curves in result.curves.items()},
        "deletion": {name: curves.deletion.tolist() for name, curves in result.curves.items()},
        "insertion": {name: curves.insertion.tolist() for name, curves in result.curves.items()},
        "n_forward": result.n_forward,
    }


def record_curves(record: dict) -> dict[str, Curves]:
    """The :class:`~segattr_utils.measures.faithfulness.Curves` of each ordering of a stored record, in the
    order of :data:`ORDERING_LABELS` (the store writes its keys sorted)."""
    rank = {name: i for i, name in enumerate(ORDERING_LABELS)}
    names = sorted(record["orders"], key=lambda name: (rank.get(name, len(rank)), name))
    return {
        name: Curves(
            order=list(order),
            fractions=removal_curve_fractions(record["segment_lengths"], order),
            deletion=np.asarray(record["deletion"][name], dtype=np.float64),
            insertion=np.asarray(record["insertion"][name], dtype=np.float64),
        )
        for name, order in ((name, record["orders"][name]) for name in names)
    }


def row_columns(budgets: Sequence[float]) -> list[str]:
    """The columns of :func:`faithfulness_rows` at ``budgets``."""
    per_budget = [
        f"{m}_{budget_name(b)}" for b in budgets for m in ("comprehensiveness", "sufficiency", "budget_share")
    ]
    head = [
        "trace_id",
        "ordering",
        "n_segments",
        "trace_tokens",
        "forward_passes",
        "f_full",
        "f_empty",
    ]
    areas = ["deletion_area", "insertion_area", "deletion_auc_normalised", "insertion_auc_normalised"]
    return [*head, *areas, *per_budget, "aopc", "aopc_steps", "note"]


def faithfulness_rows(records: Sequence[dict], settings: FaithfulnessSettings) -> pd.DataFrame:
    """One row per (trace, ordering) of the stored records, with every score of ``curve_metrics`` at the
    profile's budgets, AOPC steps and normalisation gap. A ``seconds`` field of a record (stores written before
    records held data only) is ignored."""
    rows = []
    for record in records:
        lengths = record["segment_lengths"]
        for name, curves in record_curves(record).items():
            metrics = curve_metrics(
                lengths,
                curves,
                budgets=settings.budgets,
                aopc_steps=settings.aopc_steps,
                min_gap=settings.normalised_min_gap,
            )
            rows.append(
                {
                    "trace_id": record["trace_id"],
                    "ordering": name,
                    "n_segments": len(lengths),
                    "trace_tokens": int(sum(lengths)),
                    "forward_passes": record["n_forward"],
                    **metrics,
                }
            )
    columns = row_columns(settings.budgets)
    return metric_frame(rows)[columns] if rows else pd.DataFrame(columns=columns)


def faithfulness_tables(records: Sequence[dict], settings: FaithfulnessSettings) -> dict:
    """The tables over the stored ``records``: the per-trace rows (:func:`faithfulness_rows`), the summary
    per ordering (:func:`~segattr_utils.measures.faithfulness_stats.ordering_summary`), the trace-level
    tests of :data:`REFERENCE` against each other ordering
    (:func:`~segattr_utils.measures.faithfulness_stats.paired_ordering_tests`, Wilcoxon, Holm) and the mean
    curves on ``curve_grid_points`` token fractions, with the orderings present in display order."""
    rows = faithfulness_rows(records, settings)
    orderings = [name for name in ORDERING_LABELS if name in set(rows["ordering"])]
    summary = ordering_summary(rows, orderings)
    tests = paired_ordering_tests(rows, REFERENCE, seed=settings.random_seed) if len(rows) else _no_tests()
    grid = np.linspace(0.0, 1.0, settings.curve_grid_points)
    curves = mean_curves(_curve_dicts(records), grid, orderings)
    return {"rows": rows, "summary": summary, "tests": tests, "curves": curves, "orderings": orderings}


def _no_tests() -> pd.DataFrame:
    return pd.DataFrame(columns=list(TEST_COLUMNS))


def _curve_dicts(records: Sequence[dict]) -> list[dict]:
    return [
        {"ordering": name, "fractions": c.fractions, "deletion": c.deletion, "insertion": c.insertion}
        for record in records
        for name, c in record_curves(record).items()
    ]


def faithfulness_checks(result: dict) -> dict[str, bool]:
    """Conditions the faithfulness artifacts must satisfy (the notebook's check cell asserts them)."""
    rows, records = result["rows"], result["records"]
    scores = [c for c in rows.columns if c.startswith(("deletion_area", "insertion_area", "compre", "suffi", "aopc"))]
    per_trace = rows.groupby("trace_id")["ordering"].nunique() if len(rows) else pd.Series(dtype=int)
    return {
        "faithfulness: every selected trace has its curves": len(records) == result["counts"]["measured"],
        "faithfulness: every trace has a row for every ordering": bool((per_trace == len(result["orderings"])).all()),
        "faithfulness: no NaN among the per-trace scores in nats": bool(
            np.isfinite(rows[scores].to_numpy(dtype=np.float64)).all()
        ),
        "faithfulness: every ordering of a trace starts and ends at the same F (F_0, F_n)": all(
            _shared_end_points(record) for record in records
        ),
    }


def _shared_end_points(record: dict) -> bool:
    ends = {
        (d[0], d[-1], record["insertion"][name][-1], record["insertion"][name][0])
        for name, d in record["deletion"].items()
    }
    return len(ends) == 1 and all(a == c and b == e for a, b, c, e in ends)


def summary_value(summary: pd.DataFrame, ordering: str, column: str) -> float | None:
    """``column`` of ``ordering``'s summary row, or None (no row, or no value)."""
    row = summary[summary["ordering"] == ordering]
    return None if row.empty or row[column].iloc[0] is None else float(row[column].iloc[0])


def ordering_test(tests: pd.DataFrame, metric: str, ordering: str) -> dict | None:
    """The test of :data:`REFERENCE` against ``ordering`` on ``metric``, or None."""
    row = tests[(tests["metric"] == metric) & (tests["ordering"] == ordering)]
    return None if row.empty else row.iloc[0].to_dict()
