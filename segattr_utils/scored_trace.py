"""A reasoning trace scored end to end (Sec. 2), and the selective-SFT example it gives (Sec. 2.3).

:func:`score_trace` takes what a user has: a model, its tokenizer, a question, one R1-format output
(reasoning, ``</think>``, an answer with ``\\boxed{}``) and the gold answer, and returns a
:class:`ScoredTrace`:

1. the output is split at its last ``</think>`` into the reasoning T and the trace's own answer part
   (:func:`segattr_utils.llm.grading.split_output`; the answer part keeps the newlines before ``</think>``);
2. T is split into segments at transition keywords (Sec. 2.1, App. C.2);
3. ``prompt + T + "</think> So, the final answer is \\boxed{gold}"`` is tokenised once and integrated
   gradients of the gold answer's log-probability give every token an attribution (Eq. 1-2, App. C.4),
   planned for the memory at hand (:func:`segattr_utils.method.ig_plan.attribute_sequence`: path points
   per pass and activation checkpointing chosen by the cost estimator, an out-of-memory pass retried with
   less; a trace that fits nowhere raises :class:`AttributionOutOfMemoryError`);
4. per segment: strength and consistency (Eq. 3), normalised strength (Eq. 4), high strength (top-k*
   holding tau of the strength, Eq. 5-6), important = high strength and consistency <= beta (Eq. 7), and
   the always-kept first and last segments (App. C.4).

A scored trace is also what stage 03 stores per trace (:meth:`ScoredTrace.to_record`, with each token's
character offsets in the trace) and what stage 08 and every training variant select from: its segment
table (:func:`segment_table`) is the one stage 03 writes, and :meth:`ScoredTrace.regrouped` cuts it into
other segments (Table 7) without re-tokenising.

:func:`training_example` is the one builder of SFT examples (``segattr export``, stage 08's variants): it
turns a scored trace into ``input_ids``, ``labels`` and ``completion_mask`` for TRL's ``SFTTrainer``. The training sequence is NOT the attributed one: it is ``prompt + T + the trace's
own answer part + EOS`` (the synthetic answer suffix only serves as the IG target). Labels are -100 on the
prompt and on unselected segments; the selected segments (important or always kept), the answer part
and EOS are labelled, so the model's loss is Eq. 9 (``mask="selective"``); ``mask="full"`` labels every
segment (Eq. 8); ``mask="pruned"`` deletes the unselected segments from the text and labels the rest.
A variant's own selection replaces the trace's (``segments=``), and a token-level one (Table 2) is given
as per-token flags (``token_masks=``).

Over-length policy (``max_length``): ``overlength="truncate"`` keeps the first ``max_length`` tokens, as
TRL's ``truncation_mode="keep_start"`` and the authors' trainer do (the answer part and EOS of a cut
trace are then not trained); ``overlength="skip"`` drops the example. Either way :func:`training_example`
returns ``None`` for an example that is dropped, and an example left with no labelled token after
truncation is dropped too (TRL would silently drop it). The callers list what they dropped
(``segattr export`` writes ``skipped.csv``). Attribution itself never truncates: IG needs the answer at
the end of the sequence, so a trace longer than ``score_trace``'s ``max_length`` (or the model's
positions) raises :class:`OverLengthError` and is listed as skipped by ``segattr score``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import pandas as pd
import torch

from .data.questions import r1_prompt
from .llm.grading import is_equivalent, last_boxed, split_output
from .llm.training import TrainingExample, build_char_masked_example, build_training_example
from .method.attribution import FLAG_RELATIVE_DELTA
from .method.ig_plan import AUTO, IGSettings, attribute_sequence
from .method.importance import always_keep_indices, importance_flags, segment_scores
from .method.segmentation import DEFAULT_KEYWORDS, segment
from .method.token_spans import (
    DEFAULT_ANSWER_SUFFIX,
    AttributionSequence,
    build_attribution_sequence,
    char_spans_to_token_spans,
)

Mask = Literal["selective", "full", "pruned"]
Overlength = Literal["truncate", "skip"]
MASKS: tuple[str, ...] = ("selective", "full", "pruned")
OVERLENGTH_POLICIES: tuple[str, ...] = ("truncate", "skip")
IGNORE_INDEX = -100


class TraceFormatError(ValueError):
    """An output that cannot be scored as an R1 trace; ``reason`` is a short tag for tables
    (``no </think>``, ``empty reasoning``, ``no boxed answer``)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class OverLengthError(ValueError):
    """The attribution sequence is longer than allowed (``max_length``, or the model's positions)."""

    reason = "over-length"

    def __init__(self, n_tokens: int, limit: int, what: str):
        super().__init__(
            f"the attribution sequence has {n_tokens} tokens, more than {what} ({limit}); IG needs the whole "
            "trace and the answer after it, so the trace is skipped, not truncated"
        )
        self.n_tokens, self.limit = n_tokens, limit


class AttributionOutOfMemoryError(ValueError):
    """Integrated gradients ran out of accelerator memory at every setting tried, down to one checkpointed
    path point per pass (:func:`segattr_utils.method.ig_plan.out_of_memory_ladder`); the message lists them,
    ``n_tokens`` is the attributed sequence's length."""

    reason = "out_of_memory"

    def __init__(self, message: str, n_tokens: int | None = None):
        super().__init__(message)
        self.n_tokens = n_tokens


def segment_table(
    token_attributions: Sequence[Sequence[float]],
    tau: float,
    beta: float,
    aggregation: str = "sqrt_len",
    always_keep: str = "first_last",
) -> pd.DataFrame:
    """One row per segment: the columns of :func:`segment_scores` (Eq. 3-4), ``high_strength``,
    ``moderate_consistency`` and ``important`` (Eq. 5-7), ``always_kept`` (App. C.4) and ``selected``
    (important or always kept: the segments selective SFT trains on, Eq. 9)."""
    table = segment_scores(list(token_attributions), aggregation=aggregation)
    flags = importance_flags(table["norm_strength"], table["consistency"], tau, beta)
    kept = set(always_keep_indices(len(table), always_keep))
    table.insert(0, "segment", range(len(table)))
    for column in ("high_strength", "moderate_consistency", "important"):
        table[column] = flags[column].to_numpy()
    table["always_kept"] = table["segment"].isin(kept)
    table["selected"] = table["important"] | table["always_kept"]
    return table


@dataclass(frozen=True, eq=False)
class ScoredTrace:
    """One trace with its segments, token attributions and segment scores (Sec. 2).

    ``prompt + "".join(segments) + answer_part`` is the trace as trained; ``answer_part`` is the trace's
    own answer (from the newlines before ``</think>`` to the end), ``predicted`` its last ``\\boxed{}`` and
    ``correct`` whether that equals ``gold_answer``. ``token_ids`` and ``token_attributions`` hold, per
    segment, the tokens of the attributed sequence and their IG values (Eq. 2); ``f_input``,
    ``f_baseline`` and ``delta`` its completeness (``delta = F(x) - F(x') - sum IG``), ``n_tokens`` its
    length. ``settings`` records how it was scored (J, method, keywords, tau, beta, ...); :attr:`scores`
    is the per-segment table at ``settings``' tau and beta (:meth:`rescored` changes them without
    recomputing IG). ``token_offsets`` (when known) holds, per segment, each token's character span
    relative to the start of the reasoning: token-level selections (Table 2) become character spans of
    the trained text with it, and :meth:`regrouped` moves tokens to other segment boundaries (Table 7);
    neither needs the tokenizer.
    """

    question: str
    gold_answer: str
    prompt: str
    segments: tuple[str, ...]
    answer_part: str
    predicted: str | None
    correct: bool
    token_ids: tuple[tuple[int, ...], ...]
    token_attributions: tuple[tuple[float, ...], ...]
    f_input: float
    f_baseline: float
    delta: float
    n_tokens: int
    settings: dict = field(default_factory=dict)
    token_offsets: tuple[tuple[tuple[int, int], ...], ...] | None = None

    def __post_init__(self):
        n = len(self.segments)
        if len(self.token_ids) != n or len(self.token_attributions) != n:
            raise ValueError(
                f"{n} segments but {len(self.token_ids)} token id lists and {len(self.token_attributions)} "
                "attribution lists"
            )
        for index, (ids, values) in enumerate(zip(self.token_ids, self.token_attributions)):
            if len(ids) != len(values):
                raise ValueError(f"segment {index}: {len(ids)} token ids but {len(values)} attributions")
        if self.token_offsets is not None:
            if len(self.token_offsets) != n:
                raise ValueError(f"{n} segments but {len(self.token_offsets)} token offset lists")
            for index, (ids, offsets) in enumerate(zip(self.token_ids, self.token_offsets)):
                if len(ids) != len(offsets):
                    raise ValueError(f"segment {index}: {len(ids)} token ids but {len(offsets)} token offsets")

    @classmethod
    def from_sequence(
        cls,
        sequence: AttributionSequence,
        attribution,
        *,
        question: str,
        gold_answer: str,
        prompt: str,
        segments: Sequence[str],
        answer_part: str,
        settings: dict,
        correct: bool | None = None,
    ) -> ScoredTrace:
        """The scored trace of one attributed sequence (:func:`build_attribution_sequence` of ``prompt``,
        ``segments`` and ``gold_answer``) and its IG result (``values``, ``f_input``, ``f_baseline``,
        ``delta``). ``predicted`` is the answer part's last ``\\boxed{}``; ``correct`` is whether it
        equals the gold answer unless given (a grade made elsewhere, e.g. stage 01's)."""
        values = attribution.values.tolist()
        predicted = last_boxed(answer_part)
        if correct is None:
            correct = predicted is not None and is_equivalent(predicted, gold_answer)
        start = len(prompt)
        return cls(
            question=question,
            gold_answer=gold_answer,
            prompt=prompt,
            segments=tuple(segments),
            answer_part=answer_part,
            predicted=predicted,
            correct=bool(correct),
            token_ids=tuple(tuple(sequence.input_ids[s:e]) for s, e in sequence.segment_spans),
            token_attributions=tuple(tuple(values[s:e]) for s, e in sequence.segment_spans),
            f_input=float(attribution.f_input),
            f_baseline=float(attribution.f_baseline),
            delta=float(attribution.delta),
            n_tokens=len(sequence),
            settings=dict(settings),
            token_offsets=tuple(
                tuple((a - start, b - start) for a, b in sequence.offsets[s:e]) for s, e in sequence.segment_spans
            ),
        )

    @cached_property
    def scores(self) -> pd.DataFrame:
        table = segment_table(
            self.token_attributions,
            self.settings.get("tau", 0.7),
            self.settings.get("beta", 0.8),
            self.settings.get("aggregation", "sqrt_len"),
            self.settings.get("always_keep", "first_last"),
        )
        table.insert(1, "text", list(self.segments))
        return table

    @property
    def reasoning(self) -> str:
        return "".join(self.segments)

    @property
    def n_segments(self) -> int:
        return len(self.segments)

    @property
    def important(self) -> list[int]:
        """Indices of the important segments (Eq. 7)."""
        return [int(i) for i in self.scores.index[self.scores["important"]]]

    @property
    def selected(self) -> list[int]:
        """Indices of the segments selective SFT trains on: important or always kept (Eq. 9, App. C.4)."""
        return [int(i) for i in self.scores.index[self.scores["selected"]]]

    @property
    def relative_delta(self) -> float:
        """|delta| / |F(x) - F(x')|: the relative completeness error of the attributions."""
        gap = abs(self.f_input - self.f_baseline)
        return abs(self.delta) / gap if gap > 0 else (0.0 if self.delta == 0 else math.inf)

    def rescored(self, **selection) -> ScoredTrace:
        """The same trace with other selection settings (``tau``, ``beta``, ``aggregation``,
        ``always_keep``); the attributions are reused."""
        unknown = set(selection) - {"tau", "beta", "aggregation", "always_keep"}
        if unknown:
            raise ValueError(f"rescored() takes tau, beta, aggregation, always_keep; got {sorted(unknown)}")
        return dataclasses.replace(self, settings={**self.settings, **selection})

    def regrouped(self, segments: Sequence[str]) -> ScoredTrace:
        """The same trace cut into other ``segments`` (another keyword list, Table 7): their concatenation
        must be the reasoning. Token attributions do not depend on segmentation, so the stored tokens are
        regrouped by the new character boundaries (a token belongs to the segment holding its first
        character, the rule of :mod:`segattr_utils.method.token_spans`); nothing is re-tokenised."""
        segments = tuple(segments)
        if "".join(segments) != self.reasoning:
            raise ValueError("the new segments do not concatenate to the trace's reasoning")
        if any(not s for s in segments):
            raise ValueError("a segment is empty; segments must be non-empty strings")
        if self.token_offsets is None:
            raise ValueError("this scored trace has no token offsets: it cannot be regrouped without re-tokenising")
        ids = [t for seg in self.token_ids for t in seg]
        values = [v for seg in self.token_attributions for v in seg]
        offsets = [o for seg in self.token_offsets for o in seg]
        char_spans, cursor = [], 0
        for text in segments:
            char_spans.append((cursor, cursor + len(text)))
            cursor += len(text)
        spans = char_spans_to_token_spans(offsets, char_spans)
        spans[0] = (0, spans[0][1])  # every stored token belongs to the trace
        spans[-1] = (spans[-1][0], len(ids))
        return dataclasses.replace(
            self,
            segments=segments,
            token_ids=tuple(tuple(ids[s:e]) for s, e in spans),
            token_attributions=tuple(tuple(values[s:e]) for s, e in spans),
            token_offsets=tuple(tuple(offsets[s:e]) for s, e in spans),
        )

    def learned_char_spans(self, token_masks: Sequence[Sequence[bool]]) -> list[tuple[int, int]]:
        """The character spans (relative to the reasoning) of the tokens that ``token_masks`` (per
        segment, one flag per token) learn, clipped to the reasoning."""
        if self.token_offsets is None:
            raise ValueError("a token-level selection needs the scored trace's token offsets (token_offsets)")
        if len(token_masks) != self.n_segments:
            raise ValueError(f"{len(token_masks)} token masks for {self.n_segments} segments")
        n_chars = len(self.reasoning)
        spans = []
        for index, (offsets, mask) in enumerate(zip(self.token_offsets, token_masks)):
            if len(mask) != len(offsets):
                raise ValueError(f"segment {index}: a mask of {len(mask)} flags for {len(offsets)} tokens")
            spans += [(max(0, s), min(n_chars, e)) for (s, e), m in zip(offsets, mask) if m]
        return spans

    def to_record(self) -> dict:
        """A JSON-serialisable dict (:meth:`from_record` restores the trace)."""
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        record["segments"] = list(self.segments)
        record["token_ids"] = [list(t) for t in self.token_ids]
        record["token_attributions"] = [list(v) for v in self.token_attributions]
        record["settings"] = dict(self.settings)
        if self.token_offsets is not None:
            record["token_offsets"] = [[list(o) for o in seg] for seg in self.token_offsets]
        return record

    @classmethod
    def from_record(cls, record: dict) -> ScoredTrace:
        """The scored trace of :meth:`to_record`'s dict (other keys, e.g. a store's run metadata, are
        ignored); a record without a field of the trace raises naming it."""
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [name for name in required if name not in record]
        if missing:
            raise ValueError(f"the record lacks {', '.join(missing)}: it holds no scored trace")
        values = {f.name: record[f.name] for f in dataclasses.fields(cls) if f.name in record}
        values["segments"] = tuple(values["segments"])
        values["token_ids"] = tuple(tuple(int(t) for t in ids) for ids in values["token_ids"])
        values["token_attributions"] = tuple(tuple(float(v) for v in vs) for vs in values["token_attributions"])
        if values.get("token_offsets") is not None:
            values["token_offsets"] = tuple(tuple((int(a), int(b)) for a, b in seg) for seg in values["token_offsets"])
        values["settings"] = dict(values.get("settings") or {})
        return cls(**values)


def _text(name: str, value, *, allow_number: bool = False) -> str:
    if allow_number and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}: {str(value)[:80]!r}")
    return value


def score_trace(
    model,
    tokenizer,
    question: str,
    output: str,
    gold_answer: str,
    *,
    n_steps: int = 50,
    method: str = "gausslegendre",
    tau: float = 0.7,
    beta: float = 0.8,
    keywords: Sequence[str] = DEFAULT_KEYWORDS,
    aggregation: str = "sqrt_len",
    always_keep: str = "first_last",
    baseline_token_id: int | None = None,
    internal_batch_size: int | str | None = AUTO,
    activation_checkpointing: bool | str = AUTO,
    memory_budget_gb: float | None = None,
    answer_suffix: str = DEFAULT_ANSWER_SUFFIX,
    max_length: int | None = None,
    prompt: str | None = None,
    warn_relative_delta: float | None = FLAG_RELATIVE_DELTA,
) -> ScoredTrace:
    """Segment, attribute and score one R1 output (Sec. 2: Eq. 1-7, App. C.2, C.4).

    Args:
        model, tokenizer: a Hugging Face causal LM and its fast tokenizer (with a chat template unless
            ``prompt`` is given).
        question: the question as the user asked it; the prompt is
            :func:`segattr_utils.data.questions.r1_prompt` unless ``prompt`` (the fully templated prompt
            text) is given.
        output: the model's output: reasoning, ``</think>``, an answer with ``\\boxed{}``.
        gold_answer: the correct answer; its log-probability after the trace is the IG target.
        n_steps, method: the IG path points J and quadrature rule (``official`` is the authors' rule).
        tau, beta, aggregation, always_keep: the selection of Eq. 5-7 and App. C.4.
        keywords: the transition keywords (:data:`DEFAULT_KEYWORDS`, or ``RETRO_SEARCH_KEYWORDS``).
        baseline_token_id: the IG baseline token (default: the tokenizer's pad token).
        internal_batch_size: path points per forward/backward pass: an int, ``None`` (all J at once) or
            ``"auto"`` (the default: the most the memory allows, by the cost estimator).
        activation_checkpointing: recompute each layer in the backward pass (``True``), never
            (``False``), or ``"auto"`` (the default: only where the trace does not fit otherwise).
        memory_budget_gb: GiB the attribution may use beside the weights (default: the device's free
            memory); ``auto`` settings are chosen to fit it.
        answer_suffix: the forced answer after the trace, with ``{answer}`` (App. C.4).
        max_length: longest attribution sequence accepted (default: the model's positions).
        warn_relative_delta: warn (``CompletenessWarning``) above this relative completeness error.

    The settings used are in the result's ``settings``: ``internal_batch_size`` and
    ``activation_checkpointing`` as run, and ``out_of_memory_retries``.

    Raises :class:`TraceFormatError` (no ``</think>``, empty reasoning, no ``\\boxed{}`` answer),
    :class:`OverLengthError` and :class:`AttributionOutOfMemoryError`, each with a ``reason`` tag, and
    ``ValueError`` for invalid IG settings before any work.
    """
    ig_settings = IGSettings(
        n_steps=n_steps,
        method=method,
        internal_batch_size=internal_batch_size,
        activation_checkpointing=activation_checkpointing,
        memory_budget_gb=memory_budget_gb,
    )
    question = _text("question", question)
    output = _text("output", output)
    gold_answer = _text("gold_answer", gold_answer, allow_number=True).strip()
    if not gold_answer:
        raise ValueError("gold_answer is empty: IG needs the correct answer as its target")
    prompt = r1_prompt(tokenizer, question) if prompt is None else _text("prompt", prompt)
    try:
        # at the last </think>: an earlier one is quoted inside the reasoning (as notebook 01 imports traces)
        prefix, reasoning, answer_part = split_output(output, last=True)
    except ValueError:
        raise TraceFormatError("no </think>", "the output has no </think>: there is no finished reasoning") from None
    if not reasoning.strip():
        raise TraceFormatError("empty reasoning", "the output has no reasoning before </think>")
    # a leading <think> is context, neither segmented, attributed nor trained: dropped when the prompt
    # already opens the thinking block (R1-Distill's generation prompt ends with "<think>\n"), else prompt
    if prefix and not prompt.rstrip().endswith("<think>"):
        prompt = prompt + prefix
    predicted = last_boxed(answer_part)
    if predicted is None:
        raise TraceFormatError("no boxed answer", "the answer part after </think> has no \\boxed{} answer")
    if baseline_token_id is None:
        baseline_token_id = tokenizer.pad_token_id  # App. C.4: the pad token (R1: pad = EOS)
    scored, _ = attribute_segments(
        model,
        tokenizer,
        question,
        prompt,
        segment(reasoning, keywords),
        gold_answer,
        answer_part,
        baseline_token_id=baseline_token_id,
        ig=ig_settings,
        answer_suffix=answer_suffix,
        max_length=max_length,
        warn_relative_delta=warn_relative_delta,
        settings={
            "tau": tau,
            "beta": beta,
            "aggregation": aggregation,
            "always_keep": always_keep,
            "keywords": list(keywords),
        },
    )
    return scored


def attribute_segments(
    model,
    tokenizer,
    question: str,
    prompt: str,
    segments: Sequence[str],
    gold_answer: str,
    answer_part: str,
    *,
    baseline_token_id: int | None,
    ig: IGSettings,
    answer_suffix: str = DEFAULT_ANSWER_SUFFIX,
    max_length: int | None = None,
    max_length_name: str = "max_length",
    correct: bool | None = None,
    settings: dict | None = None,
    warn_relative_delta: float | None = None,
) -> tuple[ScoredTrace, AttributionSequence]:
    """The scored trace of ``segments`` after ``prompt`` (``question`` templated; Sec. 2.2-2.3), and the attributed sequence: one
    tokenisation of ``prompt + segments + answer suffix`` (:func:`build_attribution_sequence`), IG of the gold
    answer's log-probability (Eq. 1-2) through :func:`segattr_utils.method.ig_plan.attribute_sequence` (the
    one attribution entry point: planned points per pass and checkpointing, the out-of-memory ladder), and the
    segment scores. What ``score_trace`` and stage 03 share.

    ``settings`` (selection and segmentation settings) are recorded with the IG settings and the ones the
    run used. Raises :class:`OverLengthError` for a sequence longer than ``max_length`` (named
    ``max_length_name`` in the message) or the model's positions, and :class:`AttributionOutOfMemoryError`
    when no setting fits; neither truncates nor half-writes anything.
    """
    sequence = build_attribution_sequence(tokenizer, prompt, list(segments), gold_answer, suffix_template=answer_suffix)
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if max_length is not None and len(sequence) > max_length:
        raise OverLengthError(len(sequence), max_length, max_length_name)
    if isinstance(positions, int) and len(sequence) > positions:
        raise OverLengthError(len(sequence), positions, "the model's maximum positions")
    run = attribute_sequence(
        model,
        torch.tensor(sequence.input_ids),
        sequence.answer_span,
        baseline_token_id=baseline_token_id,
        settings=ig,
        warn_relative_delta=warn_relative_delta,
    )
    if run.skipped:
        raise AttributionOutOfMemoryError(run.skipped, n_tokens=len(sequence))
    scored = ScoredTrace.from_sequence(
        sequence,
        run.attribution,
        question=question,
        gold_answer=gold_answer,
        prompt=prompt,
        segments=segments,
        answer_part=answer_part,
        correct=correct,
        settings={
            **(settings or {}),
            "n_steps": ig.n_steps,
            "method": ig.method,
            "baseline_token_id": baseline_token_id,
            "answer_suffix": answer_suffix,
            **run.settings_record(),
        },
    )
    return scored, sequence


def fit_length(example: TrainingExample, max_length: int | None, overlength: Overlength = "truncate"):
    """``example`` under the over-length policy (module docstring): unchanged when it fits, its first
    ``max_length`` tokens (``truncate``) or ``None`` (``skip``, or nothing labelled is left)."""
    if overlength not in OVERLENGTH_POLICIES:
        raise ValueError(f"overlength must be one of {', '.join(OVERLENGTH_POLICIES)}, got {overlength!r}")
    if max_length is not None and not (isinstance(max_length, int) and max_length > 0):
        raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
    if max_length is None or len(example.input_ids) <= max_length:
        return example
    if overlength == "skip":
        return None
    cut = example.truncated(max_length)
    return cut if cut.n_trained else None


def training_example(
    tokenizer,
    scored: ScoredTrace,
    mask: Mask = "selective",
    max_length: int | None = None,
    overlength: Overlength = "truncate",
    *,
    segments: Sequence[int] | None = None,
    token_masks: Sequence[Sequence[bool]] | None = None,
    prompt: str | None = None,
) -> dict | None:
    """The SFT example of a scored trace: ``{"input_ids", "labels", "completion_mask"}`` (Sec. 2.3).

    The sequence is ``prompt + trace + the trace's own answer part + EOS``, tokenised once. Labels are
    the token ids where the loss applies and -100 elsewhere: never on the prompt; on the selected
    segments for ``selective`` (Eq. 9), on every segment for ``full`` (Eq. 8), on what is left after
    deleting the unselected segments for ``pruned``; always on the answer part and EOS.
    ``completion_mask`` is 1 exactly where a label is set, so TRL trains the same tokens from ``labels``
    (which it uses as they are) or, without them, from ``completion_mask`` (``completion_only_loss``).
    Returns ``None`` when the over-length policy drops the example.

    Every training variant is one call:

    - ``segments``: the indices of the learned (``selective``) or kept (``pruned``) segments; by default
      the trace's own selection, important or always kept (:attr:`ScoredTrace.selected`);
    - ``token_masks`` (``selective`` only): per segment, one flag per stored token, a token-level
      selection (Table 2's top-|IG| tokens). The chosen tokens' character spans (``token_offsets``) are
      learned in the training tokenisation: a token there is trained when its first character is one
      of theirs, so the selection carries over even where the two tokenisations differ at the end of
      the trace;
    - ``prompt``: the templated prompt of the model being trained (default: the one that was attributed).
    """
    if mask not in MASKS:
        raise ValueError(f"mask must be one of {', '.join(MASKS)}, got {mask!r}")
    if token_masks is not None and mask != "selective":
        raise ValueError(f"token_masks select tokens for mask 'selective', not {mask!r}")
    texts = list(scored.segments)
    chosen = scored.selected if segments is None else sorted({int(i) for i in segments})
    if any(not 0 <= i < len(texts) for i in chosen):
        raise ValueError(f"segments {chosen} out of range for {len(texts)} segments")
    prompt = scored.prompt if prompt is None else prompt
    if mask == "selective" and token_masks is not None:
        spans = scored.learned_char_spans(token_masks)
        example = build_char_masked_example(tokenizer, prompt, scored.reasoning, scored.answer_part, spans)
    elif mask == "selective":
        example = build_training_example(tokenizer, prompt, texts, scored.answer_part, selected=chosen)
    elif mask == "full":
        example = build_training_example(tokenizer, prompt, texts, scored.answer_part)
    else:
        # each kept segment keeps its own transition words, so the pruned trace still reads as paragraphs
        kept = [texts[i] for i in chosen]
        if not kept:
            raise ValueError("mask 'pruned' needs a selected segment: this trace has none (always_keep='none'?)")
        example = build_training_example(tokenizer, prompt, kept, scored.answer_part)
    example = fit_length(example, max_length, overlength)
    if example is None:
        return None
    return {
        "input_ids": list(example.input_ids),
        "labels": list(example.labels),
        "completion_mask": [int(label != IGNORE_INDEX) for label in example.labels],
    }
