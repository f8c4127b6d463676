"""Training variants: which parts of each trace a fine-tuning run learns from (Sec. 4, Tables 1-4, 7, Fig. 5).

Every variant is one entry of :data:`REGISTRY`, made by decorating one selection function with
:func:`register`. A selection function looks at the whole training set (a list of
:class:`TraceRecord`) and returns one :class:`TraceSelection` per trace: the segments (or, for the
token-level baselines of Table 2, the tokens) that are *learned*. The variant's ``mode`` says how the
selection becomes supervision:

- ``full``: every segment is trained (full-CoT SFT, Eq. 8);
- ``selective``: the sequence is unchanged, the loss is masked outside the selection (Eq. 9);
- ``pruned``: unselected segments are deleted from the trace and the rest is trained (Sec. 4.3, 4.5).

The first and last segments are always learned, in every variant and mode (App. C.4): they set up the
problem and format the answer. Adding a variant is one decorated function: its ``tables`` put it in the
run plan of stage 08 (:func:`segattr_utils.stages.stage08_selective_sft.plan_runs` reads nothing else),
and its ``needs`` make stages 04 and 05 measure those signals on the traces its tables train on
(:func:`signals_needed`, :func:`segattr_utils.services.planned_signals`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np

from ..measures.linguistics import summed_entropy
from ..method.importance import always_keep_indices
from ..scored_trace import ScoredTrace

Mode = Literal["full", "selective", "pruned"]


@dataclass(eq=False)
class TraceRecord:
    """One training trace: its scored trace (stage 03's record: segments, token ids, token attributions
    and offsets, the segment table) and every other per-segment signal a selection rule may use.

    The optional signals come from stages 04 (``confidence_delta``) and 05 (``log_ppl``, ``entropy``,
    ``removal_ppl_increase``), measured on the self-generated traces and, when a planned variant needs
    them there, on the reference traces; ``decision_segment`` is the first segment that reaches the
    answer, ``kinds`` the world's ground truth per segment.
    """

    trace_id: str
    scored: ScoredTrace
    confidence_delta: np.ndarray | None = None
    log_ppl: np.ndarray | None = None
    entropy: np.ndarray | None = None
    removal_ppl_increase: np.ndarray | None = None
    decision_segment: int | None = None
    kinds: list | None = None
    _tables: dict = field(default_factory=dict, init=False, repr=False)

    @property
    def question(self) -> str:
        return self.scored.question

    @property
    def answer(self) -> str:
        return self.scored.gold_answer

    @property
    def segments(self) -> list[str]:
        return list(self.scored.segments)

    @property
    def answer_part(self) -> str:
        return self.scored.answer_part

    @property
    def n_segments(self) -> int:
        return self.scored.n_segments

    @cached_property
    def token_values(self) -> list[np.ndarray]:
        """The IG attribution of each token, per segment (Eq. 2)."""
        return [np.asarray(v, dtype=np.float64) for v in self.scored.token_attributions]

    @cached_property
    def segment_tokens(self) -> np.ndarray:
        return np.array([len(v) for v in self.scored.token_ids])

    def table(self, settings: SelectionSettings):
        """The scored trace's segment table (:func:`segattr_utils.scored_trace.segment_table`: Eq. 3-7 and
        the always-kept segments) at the settings' tau, beta, aggregation and always-keep rule: the table
        stage 03 writes, so that a rule selects from the same flags."""
        key = (settings.tau, settings.beta, settings.aggregation, settings.always_keep)
        if key not in self._tables:
            self._tables[key] = self.scored.rescored(
                tau=settings.tau, beta=settings.beta, aggregation=settings.aggregation, always_keep=settings.always_keep
            ).scores
        return self._tables[key]


@dataclass
class TraceSelection:
    """What one trace contributes to training: whole ``segments`` (indices), or for token-level variants
    ``tokens`` = (segment, token-in-segment) pairs on top of the always-kept segments."""

    segments: set[int]
    tokens: set[tuple[int, int]] = field(default_factory=set)

    def token_mask(self, record: TraceRecord) -> list[np.ndarray]:
        """Per segment, a boolean array over its tokens: True where the token is learned."""
        masks = []
        for index, n in enumerate(record.segment_tokens):
            mask = np.full(n, index in self.segments)
            for seg, tok in self.tokens:
                if seg == index:
                    mask[tok] = True
            masks.append(mask)
        return masks

    def token_share(self, record: TraceRecord) -> float:
        masks = self.token_mask(record)
        total = sum(len(m) for m in masks)
        return float(sum(m.sum() for m in masks) / total) if total else 0.0


@dataclass(frozen=True)
class Variant:
    """A named training variant: its selection rule, how the selection is used, and its place in the paper."""

    name: str
    label: str
    mode: Mode
    tables: tuple[str, ...]
    select: Callable[[Sequence[TraceRecord], SelectionSettings], list[TraceSelection]]
    needs: tuple[str, ...] = ()

    def selections(self, records: Sequence[TraceRecord], settings: SelectionSettings) -> list[TraceSelection]:
        """The variant's selection of every trace, after checking that each trace carries the signals
        the rule ``needs`` (a clear error names the missing signal and where it comes from)."""
        for name in self.needs:
            missing = [r.trace_id for r in records if getattr(r, name) is None]
            if missing:
                raise ValueError(
                    f"variant {self.name!r} needs {name!r} ({SIGNAL_SOURCES.get(name, 'an earlier stage')}), "
                    f"which {len(missing)} of {len(records)} traces lack, e.g. {missing[0]!r}"
                )
        return self.select(records, settings)


@dataclass(frozen=True)
class SelectionSettings:
    """Thresholds of the selection rules (profile ``selection`` and ``training.selection``)."""

    tau: float = 0.7
    beta: float = 0.8
    aggregation: str = "sqrt_len"
    always_keep: str = "first_last"
    random_segment_share: float = 0.33
    token_share: float = 0.45
    prune_token_share: float = 0.30
    seed: int = 0

    def with_overrides(self, **overrides) -> SelectionSettings:
        unknown = set(overrides) - set(self.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown selection settings: {sorted(unknown)}")
        values = {k: getattr(self, k) for k in self.__dataclass_fields__}
        values.update(overrides)
        return SelectionSettings(**values)


REGISTRY: dict[str, Variant] = {}

#: Where each optional per-segment signal of a :class:`TraceRecord` comes from. Both notebooks measure
#: the self-generated traces, and the reference traces when the run plan needs the signal there.
SIGNAL_SOURCES = {
    "confidence_delta": "notebook 04",
    "log_ppl": "notebook 05",
    "entropy": "notebook 05",
    "removal_ppl_increase": "notebook 05",
}


def variants_for(table: str) -> list[Variant]:
    """The registered variants that belong to one of the paper's tables (``"1"``, ``"2"``, ..., ``"fig5"``),
    in registration order."""
    return [variant for variant in REGISTRY.values() if table in variant.tables]


def signals_needed(tables: Iterable[str]) -> frozenset[str]:
    """The per-segment signals that the variants registered for any of ``tables`` need (the union of
    their ``needs``): what stages 04 and 05 must measure on the traces those tables train on."""
    return frozenset(name for table in tables for variant in variants_for(str(table)) for name in variant.needs)


def register(name: str, *, label: str, mode: Mode, tables: Sequence[str], needs: Sequence[str] = ()):
    """Decorator: add a selection function to :data:`REGISTRY` under ``name``."""

    def decorate(function):
        if name in REGISTRY:
            raise ValueError(f"variant {name!r} is registered twice")
        REGISTRY[name] = Variant(
            name=name, label=label, mode=mode, tables=tuple(tables), select=function, needs=tuple(needs)
        )
        return function

    return decorate


def get_variant(name: str) -> Variant:
    if name not in REGISTRY:
        raise KeyError(f"unknown training variant {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


# ---------------------------------------------------------------------------------------------
# Helpers shared by the rules


def _kept(record: TraceRecord, settings: SelectionSettings) -> set[int]:
    return set(always_keep_indices(record.n_segments, settings.always_keep))


def _signal(record: TraceRecord, name: str) -> np.ndarray:
    values = getattr(record, name)
    if values is None:
        raise ValueError(f"trace {record.trace_id} has no {name!r}: run the notebook that computes it first")
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (record.n_segments,):
        raise ValueError(f"trace {record.trace_id}: {name} has shape {values.shape}, expected ({record.n_segments},)")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"trace {record.trace_id}: {name} holds NaN or inf")
    return values


def ours(record: TraceRecord, settings: SelectionSettings) -> set[int]:
    """Important segments (Eq. 5-7) at the settings' tau and beta, plus the always-kept ones: the
    ``selected`` column of the scored trace's segment table (stage 03's ``selected_for_sft``)."""
    table = record.table(settings)
    return {int(i) for i in table.loc[table["selected"], "segment"]}


def selected_token_share(records: Sequence[TraceRecord], selections: Sequence[TraceSelection]) -> float:
    """Share of all trace tokens that the selections learn (pooled over the training set)."""
    learned = sum(sum(m.sum() for m in s.token_mask(r)) for r, s in zip(records, selections))
    total = sum(int(r.segment_tokens.sum()) for r in records)
    return float(learned / total) if total else 0.0


def threshold_by_token_share(
    records: Sequence[TraceRecord],
    scores: Sequence[np.ndarray],
    target_share: float,
    settings: SelectionSettings,
    higher_is_important: bool = True,
) -> list[TraceSelection]:
    """Select segments whose score passes ONE global threshold, chosen so that the pooled share of learned
    tokens (always-kept segments included) is as close as possible to ``target_share``.

    This is how the paper matches the perplexity and entropy baselines to its own token ratio
    (Sec. 4.4: "thresholds ... to ensure the selected important content occupies approximately the same
    45~50% token ratio").
    """
    if not 0 < target_share <= 1:
        raise ValueError(f"target token share must lie in (0, 1], got {target_share}")
    signs = 1.0 if higher_is_important else -1.0
    pooled = np.concatenate([signs * np.asarray(s, dtype=np.float64) for s in scores])
    candidates = np.unique(pooled)[::-1]
    best, best_gap = None, np.inf
    for threshold in candidates:
        selections = [
            TraceSelection({i for i, v in enumerate(signs * np.asarray(s)) if v >= threshold} | _kept(r, settings))
            for r, s in zip(records, scores)
        ]
        gap = abs(selected_token_share(records, selections) - target_share)
        if gap < best_gap - 1e-12:
            best, best_gap = selections, gap
    return best


# ---------------------------------------------------------------------------------------------
# Table 1: full-CoT SFT and segment selective SFT


@register("full", label="Full CoT SFT", mode="full", tables=("1", "2", "3", "4", "7", "fig5"))
def _full(records, settings):
    return [TraceSelection(set(range(r.n_segments))) for r in records]


@register("selective", label="Segment Selective SFT", mode="selective", tables=("1", "2", "3", "7", "fig5"))
def _selective(records, settings):
    return [TraceSelection(ours(r, settings)) for r in records]


# ---------------------------------------------------------------------------------------------
# Table 2: ablations


# Table 2's "Pruned CoT SFT" and Table 4's IG row are one run (the paper reports identical numbers for
# them): IG-important segments with tau tuned so that about 30% of the tokens are pruned.
@register("pruned_ig", label="IG-based Important Segments (pruned)", mode="pruned", tables=("2", "4"))
def _pruned_ig(records, settings):
    tuned = settings.with_overrides(tau=_tau_for_pruned_share(records, settings))
    return [TraceSelection(ours(r, tuned)) for r in records]


@register("random_segments", label="Random Segments", mode="selective", tables=("2",))
def _random_segments(records, settings):
    selections = []
    for r in records:
        rng = random.Random(f"random_segments:{settings.seed}:{r.trace_id}")
        k = max(1, round(settings.random_segment_share * r.n_segments))
        selections.append(
            TraceSelection(set(rng.sample(range(r.n_segments), min(k, r.n_segments))) | _kept(r, settings))
        )
    return selections


def _top_tokens(records, settings, transform) -> list[TraceSelection]:
    selections = []
    for r in records:
        flat = [
            (seg, tok, transform(value))
            for seg, values in enumerate(r.token_values)
            for tok, value in enumerate(values)
        ]
        k = int(round(settings.token_share * len(flat)))
        # stable order: ties keep the earlier token
        ranked = sorted(range(len(flat)), key=lambda i: -flat[i][2])[:k]
        selections.append(TraceSelection(_kept(r, settings), {(flat[i][0], flat[i][1]) for i in ranked}))
    return selections


@register("abs_ig_tokens", label="High-Abs-IG Tokens", mode="selective", tables=("2",))
def _abs_ig_tokens(records, settings):
    return _top_tokens(records, settings, abs)


@register("signed_ig_tokens", label="High-Orig.-IG Tokens", mode="selective", tables=("2",))
def _signed_ig_tokens(records, settings):
    return _top_tokens(records, settings, float)


@register("high_strength", label="High Strength Segments", mode="selective", tables=("2",))
def _high_strength(records, settings):
    out = []
    for r in records:
        table = r.table(settings)
        out.append(TraceSelection({int(i) for i in table.loc[table["high_strength"], "segment"]} | _kept(r, settings)))
    return out


# ---------------------------------------------------------------------------------------------
# Table 3: other importance measures (selective SFT)


def _first_correct(records, settings):
    selections = []
    for r in records:
        last = r.decision_segment if r.decision_segment is not None else r.n_segments - 1
        selections.append(TraceSelection(set(range(last + 1)) | _kept(r, settings)))
    return selections


def _confidence_gain(records, settings):
    return [
        TraceSelection({i for i, d in enumerate(_signal(r, "confidence_delta")) if d > 0} | _kept(r, settings))
        for r in records
    ]


def _matched(records, settings, signal, target):
    return threshold_by_token_share(records, [_signal(r, signal) for r in records], target, settings)


def _entropy_sum(record: TraceRecord) -> np.ndarray:
    """Aggregated token entropy of each segment: mean entropy x tokens = the summed entropy."""
    return summed_entropy(_signal(record, "entropy"), record.segment_tokens)


def _our_share(records, settings) -> float:
    return selected_token_share(records, [TraceSelection(ours(r, settings)) for r in records])


# A trace without a decision segment is learned whole (the rule's fallback), so it needs no signal.
register("first_correct", label="First-Correct Solution", mode="selective", tables=("3",))(_first_correct)
register(
    "confidence_gain", label="Confidence-Gain Segments", mode="selective", tables=("3",), needs=("confidence_delta",)
)(_confidence_gain)


@register(
    "segment_perplexity", label="Segment Perplexity", mode="selective", tables=("3",), needs=("removal_ppl_increase",)
)
def _segment_perplexity(records, settings):
    return _matched(records, settings, "removal_ppl_increase", _our_share(records, settings))


@register("segment_entropy", label="Segment Entropy", mode="selective", tables=("3",), needs=("entropy",))
def _segment_entropy(records, settings):
    return threshold_by_token_share(
        records, [_entropy_sum(r) for r in records], _our_share(records, settings), settings
    )


# ---------------------------------------------------------------------------------------------
# Table 4: pruning with each measure, ~30% of tokens pruned


def _tau_for_pruned_share(records, settings) -> float:
    """The tau whose important set (plus always-kept segments) keeps the share of tokens closest to
    ``1 - prune_token_share`` (Sec. 4.5: "adjust thresholds ... to prune nearly 30% of tokens")."""
    target = 1 - settings.prune_token_share
    grid = np.round(np.arange(0.05, 1.0001, 0.05), 2)
    shares = [
        selected_token_share(records, [TraceSelection(ours(r, settings.with_overrides(tau=float(t)))) for r in records])
        for t in grid
    ]
    return float(grid[int(np.argmin([abs(s - target) for s in shares]))])


register("pruned_first_correct", label="First-Correct Solution (pruned)", mode="pruned", tables=("4",))(_first_correct)
register(
    "pruned_confidence_gain",
    label="Confidence-Gain Segments (pruned)",
    mode="pruned",
    tables=("4",),
    needs=("confidence_delta",),
)(_confidence_gain)


@register(
    "pruned_perplexity",
    label="Segment Perplexity (pruned)",
    mode="pruned",
    tables=("4",),
    needs=("removal_ppl_increase",),
)
def _pruned_perplexity(records, settings):
    return _matched(records, settings, "removal_ppl_increase", 1 - settings.prune_token_share)


@register("pruned_entropy", label="Segment Entropy (pruned)", mode="pruned", tables=("4",), needs=("entropy",))
def _pruned_entropy(records, settings):
    return threshold_by_token_share(
        records, [_entropy_sum(r) for r in records], 1 - settings.prune_token_share, settings
    )
