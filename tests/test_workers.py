"""segattr_utils.workers.map_in_workers: results in input order, the initializer run per worker, failures named.
(Attribution in worker processes is tested with stage 03.)"""

from __future__ import annotations

import pytest

from segattr_utils.workers import map_in_workers


def _square_or_fail(item):
    if item == 3:
        raise ValueError("three is not allowed")
    return item * item + _WORKER_OFFSET["value"]


_WORKER_OFFSET: dict = {}


def _set_offset(offset, device):
    _WORKER_OFFSET["value"] = offset if device == "cpu" else -1


def test_map_in_workers_keeps_order_and_runs_the_initializer():
    results = list(
        map_in_workers(
            _square_or_fail, [5, 1, 4, 2], ["cpu", "cpu"], threads=1, initializer=_set_offset, initargs=(100,)
        )
    )
    assert results == [125, 101, 116, 104]


def test_map_in_workers_names_the_failing_item():
    with pytest.raises(RuntimeError, match=r"item 2: ValueError: three is not allowed"):
        list(
            map_in_workers(
                _square_or_fail, [1, 2, 3, 4], ["cpu", "cpu"], threads=1, initializer=_set_offset, initargs=(0,)
            )
        )
    with pytest.raises(ValueError, match="threads per worker"):
        list(map_in_workers(_square_or_fail, [1], ["cpu"], threads=0, initializer=_set_offset, initargs=(0,)))
