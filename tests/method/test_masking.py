"""Tests for segattr_utils.method.masking.selective_labels (paper Sec. 2.3, Eq. 8-9).

Expected label vectors are written out by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segattr_utils.method.masking import selective_labels

M = -100
# A 12-token sequence: prompt 0..2, segments [3,5) [5,8) [8,10), answer suffix [10,12).
IDS = [11, 12, 13, 21, 22, 31, 32, 33, 41, 42, 51, 52]
SPANS = [(3, 5), (5, 8), (8, 10)]


def _as_list(labels):
    assert isinstance(labels, torch.Tensor)
    assert labels.dtype == torch.long
    assert labels.dim() == 1
    return labels.tolist()


def test_selected_segments_keep_ids_rest_masked():
    labels = selective_labels(IDS, SPANS, [0, 2])
    assert _as_list(labels) == [M, M, M, 21, 22, M, M, M, 41, 42, M, M]


def test_single_selected_segment():
    assert _as_list(selective_labels(IDS, SPANS, [1])) == [M, M, M, M, M, 31, 32, 33, M, M, M, M]


def test_nothing_selected_masks_everything():
    assert _as_list(selective_labels(IDS, SPANS, [])) == [M] * 12


def test_selection_order_and_duplicates_do_not_matter():
    expected = [M, M, M, 21, 22, M, M, M, 41, 42, M, M]
    assert _as_list(selective_labels(IDS, SPANS, [2, 0])) == expected
    assert _as_list(selective_labels(IDS, SPANS, [2, 0, 2])) == expected
    assert _as_list(selective_labels(IDS, SPANS, (i for i in (0, 2)))) == expected
    assert _as_list(selective_labels(IDS, SPANS, {0, 2})) == expected


def test_all_segments_selected_equals_full_cot_sft_labels():
    # Full-CoT SFT (Eq. 8): the prompt is never trained; every trace token is.
    prompt_len = 3
    trace_spans = SPANS + [(10, 12)]  # the answer suffix treated as a segment
    labels = selective_labels(IDS, trace_spans, range(len(trace_spans)))
    full_cot = [M] * prompt_len + IDS[prompt_len:]
    assert _as_list(labels) == full_cot
    assert _as_list(labels) == [M, M, M, 21, 22, 31, 32, 33, 41, 42, 51, 52]


def test_all_segments_without_suffix_span():
    labels = selective_labels(IDS, SPANS, [0, 1, 2])
    assert _as_list(labels) == [M, M, M, 21, 22, 31, 32, 33, 41, 42, M, M]


def test_custom_ignore_index():
    labels = selective_labels(IDS, SPANS, [1], ignore_index=-1)
    assert _as_list(labels) == [-1, -1, -1, -1, -1, 31, 32, 33, -1, -1, -1, -1]
    labels = selective_labels(IDS, SPANS, [0], ignore_index=0)
    assert _as_list(labels) == [0, 0, 0, 21, 22, 0, 0, 0, 0, 0, 0, 0]


def test_empty_span_contributes_nothing():
    spans = [(3, 5), (5, 5), (5, 8)]
    assert _as_list(selective_labels(IDS, spans, [1])) == [M] * 12
    assert _as_list(selective_labels(IDS, spans, [1, 2])) == [M, M, M, M, M, 31, 32, 33, M, M, M, M]


def test_unsorted_spans_are_allowed_if_disjoint():
    spans = [(8, 10), (3, 5), (5, 8)]
    assert _as_list(selective_labels(IDS, spans, [0, 1])) == [M, M, M, 21, 22, M, M, M, 41, 42, M, M]


def test_span_reaching_sequence_end():
    assert _as_list(selective_labels(IDS, [(10, 12)], [0])) == [M] * 10 + [51, 52]


EXPECTED_0_2 = [M, M, M, 21, 22, M, M, M, 41, 42, M, M]


@pytest.mark.parametrize(
    "ids",
    [
        IDS,
        tuple(IDS),
        np.array(IDS, dtype=np.int64),
        np.array(IDS, dtype=np.int32),
        torch.tensor(IDS),
        torch.tensor(IDS, dtype=torch.int32),
    ],
    ids=["list", "tuple", "numpy-int64", "numpy-int32", "torch-long", "torch-int32"],
)
def test_accepts_list_numpy_and_torch_inputs(ids):
    labels = selective_labels(ids, SPANS, [0, 2])
    assert _as_list(labels) == EXPECTED_0_2


def test_accepts_numpy_and_torch_spans_and_indices():
    labels = selective_labels(IDS, np.array(SPANS), np.array([0, 2]))
    assert _as_list(labels) == EXPECTED_0_2
    labels = selective_labels(IDS, torch.tensor(SPANS), torch.tensor([0, 2]))
    assert _as_list(labels) == EXPECTED_0_2


def test_input_is_not_modified():
    ids = torch.tensor(IDS)
    before = ids.clone()
    labels = selective_labels(ids, SPANS, [0])
    assert torch.equal(ids, before)
    labels[3] = 999
    assert torch.equal(ids, before)


def test_labels_match_hf_shift_free_convention():
    # The labels are aligned with input_ids (HF models shift internally): position i holds token i.
    ids = torch.tensor(IDS)
    labels = selective_labels(ids, SPANS, [1])
    trained = (labels != M).nonzero().flatten().tolist()
    assert trained == [5, 6, 7]
    assert labels[trained].tolist() == ids[trained].tolist()


# ---- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spans",
    [[(3, 6), (5, 8)], [(3, 8), (5, 6)], [(5, 8), (3, 6)], [(3, 5), (3, 5)]],
    ids=["partial", "nested", "unsorted", "duplicate"],
)
def test_overlapping_spans_raise(spans):
    with pytest.raises(ValueError, match="overlap"):
        selective_labels(IDS, spans, [0])


@pytest.mark.parametrize("spans", [[(10, 13)], [(-1, 2)], [(12, 14)], [(5, 3)]])
def test_spans_outside_sequence_raise(spans):
    with pytest.raises(ValueError, match="outside the sequence"):
        selective_labels(IDS, spans, [0])


def test_malformed_span_raises():
    with pytest.raises(ValueError, match="pair"):
        selective_labels(IDS, [(1, 2, 3)], [0])


@pytest.mark.parametrize("selected", [[3], [0, 5], [-1]])
def test_selected_index_that_does_not_exist_raises(selected):
    with pytest.raises(ValueError, match="does not exist"):
        selective_labels(IDS, SPANS, selected)


@pytest.mark.parametrize("selected", [[1.0], ["0"], [True], [None]])
def test_non_integer_selected_raises(selected):
    with pytest.raises(TypeError, match="integer"):
        selective_labels(IDS, SPANS, selected)


@pytest.mark.parametrize(
    "ids",
    [[[1, 2, 3], [4, 5, 6]], np.zeros((2, 6), dtype=np.int64), torch.zeros(1, 12, dtype=torch.long), 7],
    ids=["nested-list", "numpy-2d", "torch-batch", "scalar"],
)
def test_non_1d_input_ids_raise(ids):
    with pytest.raises(ValueError, match="1-D"):
        selective_labels(ids, [(0, 1)], [0])
