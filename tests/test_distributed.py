"""segattr_utils.distributed: dealing items over ranks, rank stores merged in input order, the launch command.
(Attribution in two launched processes is tested with stage 03.)"""

from __future__ import annotations

import sys

import pytest

from segattr_utils.artifacts import RecordStore
from segattr_utils.distributed import (
    RankRecordCounter,
    deal,
    keys_in_rank_stores,
    launch_command,
    merge_rank_stores,
    rank_store_path,
    rank_store_paths,
)


def test_deal_gives_every_item_to_exactly_one_rank_in_input_order():
    items = list("abcdefg")
    shares = [deal(items, rank, 3) for rank in range(3)]
    assert shares == [["a", "d", "g"], ["b", "e"], ["c", "f"]]
    assert sorted(sum(shares, [])) == items


def test_deal_by_weight_balances_the_ranks():
    weights = [10, 1, 10, 1, 1, 1]
    items = list(range(len(weights)))
    by_position = [sum(weights[i] for i in deal(items, r, 2)) for r in range(2)]
    shares = [deal(items, r, 2, weight=lambda i: weights[i]) for r in range(2)]
    assert by_position == [21, 3]  # in turn by position, rank 0 gets both long items
    assert [sum(weights[i] for i in share) for share in shares] == [12, 12]
    assert all(share == sorted(share) for share in shares)  # input order within a rank
    assert sorted(sum(shares, [])) == items


@pytest.mark.parametrize("rank, world", [(2, 2), (-1, 2), (0, 0)])
def test_deal_refuses_an_impossible_rank(rank, world):
    with pytest.raises(ValueError, match="rank"):
        deal([1, 2], rank, world)


def _store(path):
    return RecordStore(path, key_fn=lambda r: r["id"])


def test_merge_appends_the_ranks_records_in_input_order_and_removes_the_rank_stores(tmp_path):
    main = _store(tmp_path / "records.jsonl")
    main.append([{"id": "b", "v": 0}])
    _store(rank_store_path(main.path, 0)).append([{"id": "e", "v": 1}, {"id": "a", "v": 1}])
    _store(rank_store_path(main.path, 1)).append([{"id": "c", "v": 2}, {"id": "b", "v": 2}, {"id": "x", "v": 2}])
    _store(rank_store_path(main.path, 12)).append([{"id": "d", "v": 3}, {"id": "a", "v": 3}])
    assert [p.name for p in rank_store_paths(main.path)] == [
        "records.rank-00000.jsonl",
        "records.rank-00001.jsonl",
        "records.rank-00012.jsonl",
    ]
    assert keys_in_rank_stores(main) == {"a", "b", "c", "d", "e", "x"}

    assert merge_rank_stores(main, ["a", "b", "c", "d", "e"]) == 5
    records = main.records()
    # b was merged before and is not taken again; a is in two ranks' stores: the lower rank's copy;
    # x is not in the order: after the others
    assert [(r["id"], r["v"]) for r in records] == [("b", 0), ("a", 1), ("c", 2), ("d", 3), ("e", 1), ("x", 2)]
    assert rank_store_paths(main.path) == []
    assert merge_rank_stores(main, ["a"]) == 0
    # another store's rank files in the same folder are not this store's
    _store(tmp_path / "records_other.rank-00000.jsonl").append([{"id": "z"}])
    assert rank_store_paths(main.path) == []


def test_merge_after_a_merge_cut_short_completes_it(tmp_path):
    main = _store(tmp_path / "records.jsonl")
    _store(rank_store_path(main.path, 0)).append([{"id": "a"}, {"id": "b"}])
    main.append([{"id": "a"}])  # the cut merge had appended a, then stopped before deleting the rank store
    assert merge_rank_stores(main, ["a", "b"]) == 1
    assert [r["id"] for r in main.records()] == ["a", "b"]


def test_launch_command_runs_the_module_with_this_interpreter_on_a_free_port():
    command = launch_command("pkg.module", ["--flag", "x"], 4, port=1234)
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "4"
    assert command[command.index("--main_process_port") + 1] == "1234"
    assert command[-4:] == ["-m", "pkg.module", "--flag", "x"]
    assert "--cpu" not in command  # accelerate's --cpu starts one process whatever --num_processes says
    ports = {launch_command("m", [], 2)[launch_command("m", [], 2).index("--main_process_port") + 1] for _ in range(3)}
    assert all(p.isdigit() and p != "29500" for p in ports)


def test_the_progress_counter_reads_only_what_the_ranks_appended(tmp_path):
    store_path = tmp_path / "records.jsonl"
    counter = RankRecordCounter(store_path)
    assert counter() == 0
    _store(rank_store_path(store_path, 0)).append([{"id": "a"}, {"id": "b"}])
    assert counter() == 2
    _store(rank_store_path(store_path, 1)).append([{"id": "c"}])
    with open(rank_store_path(store_path, 0), "a") as handle:
        handle.write('{"id": "d"')  # a record still being written: not counted yet
    assert counter() == 3
    sizes = {path: path.stat().st_size for path in rank_store_paths(store_path)}
    assert counter.offsets[rank_store_path(store_path, 1)] == sizes[rank_store_path(store_path, 1)]
    assert counter.offsets[rank_store_path(store_path, 0)] < sizes[rank_store_path(store_path, 0)]
    with open(rank_store_path(store_path, 0), "a") as handle:
        handle.write("}\n")
    assert counter() == 4
