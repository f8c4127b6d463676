"""Loss masks for selective SFT (Sec. 2.3, Eq. 9).

The selective loss averages token cross-entropy over the tokens of important segments only:

    L = -(1 / sum_t I(o_t)) * sum_t I(o_t) log P(o_t | o_<t, q)                          (Eq. 9)

Hugging Face models implement exactly this when the labels are the token ids where I(o_t) = 1 and
``ignore_index`` (-100) elsewhere. With every segment selected the labels are those of full-CoT SFT
(Eq. 8): the trace (and answer) tokens are trained, the prompt never is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


def validate_spans(spans: Sequence[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """Check token spans are well-formed, inside ``[0, length)`` and non-overlapping; return them as tuples."""
    checked = []
    for i, span in enumerate(spans):
        if len(span) != 2:
            raise ValueError(f"span {i} must be a (start, end) pair, got {span!r}")
        start, end = int(span[0]), int(span[1])
        if start < 0 or end > length or end < start:
            raise ValueError(f"span {i} ({start}, {end}) falls outside the sequence of length {length}")
        checked.append((start, end))
    ordered = sorted(range(len(checked)), key=lambda i: checked[i])
    for a, b in zip(ordered, ordered[1:]):
        if checked[b][0] < checked[a][1]:
            raise ValueError(f"spans {a} {checked[a]} and {b} {checked[b]} overlap")
    return checked


def selective_labels(
    input_ids,
    segment_spans: Sequence[tuple[int, int]],
    selected: Iterable[int],
    ignore_index: int = -100,
) -> torch.Tensor:
    """Labels for selective SFT (Eq. 9): token ids inside the selected segments' spans, ``ignore_index``
    everywhere else.

    ``input_ids``: 1-D sequence of token ids; ``segment_spans``: token spans of every segment (plus,
    if wanted, extra spans such as the answer suffix treated as a segment); ``selected``: indices into
    ``segment_spans``. Returns a LongTensor of the same length.
    """
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    if ids.dim() != 1:
        raise ValueError(f"input_ids must be 1-D, got shape {tuple(ids.shape)}")
    spans = validate_spans(segment_spans, ids.numel())
    labels = torch.full_like(ids, ignore_index)
    for index in selected:
        if isinstance(index, bool) or not isinstance(index, int) and not (hasattr(index, "__index__")):
            raise TypeError(f"selected must hold integer segment indices, got {index!r}")
        index = int(index)
        if not 0 <= index < len(spans):
            raise ValueError(f"selected segment {index} does not exist ({len(spans)} segments)")
        start, end = spans[index]
        labels[start:end] = ids[start:end]
    return labels
