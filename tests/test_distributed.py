"""segattr_utils.distributed: dealing items over ranks, rank stores merged in input order, the launch command,
the one launcher of the package's subprocesses (queues, logs, progress, failures) and the accelerate config
copy a launch reads. (Attribution in two launched processes is tested with stage 03, the SFT launchers
with stage 08.)"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

import pytest
import yaml

from segattr_utils import distributed
from segattr_utils.artifacts import RecordStore
from segattr_utils.distributed import (
    Command,
    RankRecordCounter,
    deal,
    keys_in_rank_stores,
    launch_command,
    merge_rank_stores,
    rank_store_path,
    rank_store_paths,
    run_commands,
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


def test_launch_command_with_a_config_file_and_a_worker_job():
    command = launch_command("sft", ["--runs", "a"], config_file="/x/accelerate.yaml", port=4321)
    assert command[:5] == [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "/x/accelerate.yaml"]
    assert "--multi_gpu" not in command and "--num_processes" not in command  # the config file says
    assert command[command.index("--main_process_port") + 1] == "4321"
    assert command[-5:] == ["-m", "segattr_utils.workers", "sft", "--runs", "a"]
    assert distributed.worker_command("attribution", ["--items", "kept"]) == [
        sys.executable,
        "-m",
        "segattr_utils.workers",
        "attribution",
        "--items",
        "kept",
    ]
    with pytest.raises(ValueError, match="num_processes or an accelerate config"):
        launch_command("sft", [])


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


# A command that appends "<name> <start> <end>" (monotonic seconds) to events.txt and writes a marker file.
STEP = (
    "import os, sys, time; start = time.monotonic(); time.sleep(float(sys.argv[2])); "
    "open(os.path.join(sys.argv[3], sys.argv[1] + '.done'), 'w').write(os.environ.get('GPU', '') + ' ' "
    "+ os.environ.get('OMP_NUM_THREADS', '')); "
    "open(os.path.join(sys.argv[3], 'events.txt'), 'a').write(f'{sys.argv[1]} {start} {time.monotonic()}\\n'); "
    "print('step', sys.argv[1]); sys.exit(int(sys.argv[4]))"
)


def _step(tmp_path, name, seconds=0.0, status=0, queue=None, env=None):
    argv = [*_python(STEP), name, str(seconds), str(tmp_path), str(status)]
    return Command(f"step {name}", argv, tmp_path / "logs" / f"{name}.log", env=env or {}, queue=queue)


def _events(tmp_path):
    rows = [line.split() for line in (tmp_path / "events.txt").read_text().splitlines()]
    return {name: (float(start), float(end)) for name, start, end in rows}


def test_commands_of_a_queue_run_in_turn_the_others_at_once_each_with_its_log_and_env(tmp_path):
    commands = [
        _step(tmp_path, "a1", 0.3, queue="A", env={"GPU": "3"}),
        _step(tmp_path, "b1", 0.3, queue="B", env={"GPU": "5"}),
        _step(tmp_path, "a2", 0.0, queue="A", env={"GPU": "3"}),
        _step(tmp_path, "alone", 0.3),
    ]
    done = lambda: len(list(tmp_path.glob("*.done")))  # noqa: E731
    run_commands(commands, total=4, count_done=done, desc="steps", threads=2, poll_seconds=0.02)
    events = _events(tmp_path)
    assert set(events) == {"a1", "b1", "a2", "alone"}
    assert events["a2"][0] >= events["a1"][1]  # a queue's commands one after another
    assert events["b1"][0] < events["a1"][1] and events["alone"][0] < events["a1"][1]  # the others at once
    # each command's own environment and the launcher's thread count; each its own log
    assert (tmp_path / "a2.done").read_text() == "3 2" and (tmp_path / "b1.done").read_text() == "5 2"
    assert (tmp_path / "alone.done").read_text() == " 2"
    for name in events:
        assert (tmp_path / "logs" / f"{name}.log").read_text() == f"step {name}\n"


def test_a_failure_lets_the_others_finish_stops_its_queue_and_names_process_status_log_and_command(tmp_path):
    commands = [
        _step(tmp_path, "bad", 0.0, status=3, queue="GPU 0"),
        _step(tmp_path, "after-bad", 0.0, queue="GPU 0"),
        _step(tmp_path, "slow", 0.5, queue="GPU 1"),
        _step(tmp_path, "after-slow", 0.0, queue="GPU 1"),
    ]
    with pytest.raises(RuntimeError) as error:
        run_commands(commands, total=4, count_done=lambda: 0, desc="steps", poll_seconds=0.02)
    message = str(error.value)
    assert message.startswith("step bad failed (exit status 3)")
    assert f"The last lines of {tmp_path / 'logs' / 'bad.log'}:\nstep bad\n" in message
    assert f"\ncommand: {shlex.join(commands[0].argv)}\n" in message  # a command one can paste into a shell
    assert message.endswith("not started, after a failure in their queue: step after-bad")
    # the other queue finished all of its commands, and what they wrote is kept
    assert set(_events(tmp_path)) == {"bad", "slow", "after-slow"}
    assert not (tmp_path / "after-bad.done").exists()


def test_several_failures_and_a_signal_are_all_reported(tmp_path):
    commands = [
        _step(tmp_path, "first", 0.0, status=1),
        Command("killed", _python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"), tmp_path / "k.log"),
    ]
    with pytest.raises(RuntimeError, match=r"(?s)failed \(.*1 more failed: .*killed by signal SIGKILL"):
        run_commands(commands, total=2, count_done=lambda: 0, desc="steps", poll_seconds=0.02)


def test_the_progress_bar_shows_what_the_callers_count_says(tmp_path, monkeypatch):
    shown = []

    class Bar:
        def __init__(self, total, desc, unit):
            self.n, self.total = 0, total
            shown.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, by):
            self.n += by

    monkeypatch.setattr(distributed, "progress", lambda **kwargs: Bar(**kwargs))
    counts = iter([5, 6, 6, 7, 8, 8, 8, 8, 8, 8])  # 5 were done before the launch

    def count():
        return next(counts, 8)

    run_commands([_step(tmp_path, "x", 0.1)], total=3, count_done=count, desc="steps", poll_seconds=0.01)
    (bar,) = shown
    assert bar.total == 3 and bar.n == 3


def test_an_interrupted_caller_terminates_the_processes_it_started(tmp_path):
    pid_file = tmp_path / "pid"
    sleeper = Command(
        "sleeper",
        _python(f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"),
        tmp_path / "sleeper.log",
    )

    def interrupt_once_started():
        if pid_file.exists() and pid_file.read_text():
            raise KeyboardInterrupt
        return 0

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_commands([sleeper], total=1, count_done=interrupt_once_started, desc="x", poll_seconds=0.02)
    assert time.monotonic() - started < 30
    with pytest.raises(ProcessLookupError):  # terminated and reaped
        os.kill(int(pid_file.read_text()), 0)


def test_the_launch_copy_of_an_accelerate_config_names_its_deepspeed_file_absolutely(tmp_path, monkeypatch):
    """The DeepSpeed file is named relative to the project root; the launched processes open it relative
    to their working directory (notebooks/ under papermill): the copy names it absolutely."""
    root = tmp_path / "project"
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "ds.json").write_text("{}")
    (root / "notebooks").mkdir()
    config = {"distributed_type": "DEEPSPEED", "deepspeed_config": {"deepspeed_config_file": "configs/ds.json"}}
    (root / "configs" / "acc.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(root / "notebooks")
    assert not Path("configs/ds.json").exists()  # what the processes would have looked for
    copy = distributed.accelerate_config_for_launch(root / "configs" / "acc.yaml", tmp_path / "launch", root)
    named = yaml.safe_load(copy.read_text())["deepspeed_config"]["deepspeed_config_file"]
    assert Path(named).is_absolute() and Path(named).is_file() and Path(named) == (root / "configs" / "ds.json")
    assert yaml.safe_load(copy.read_text())["distributed_type"] == "DEEPSPEED"
    # a missing DeepSpeed file or config file is refused with its path
    config["deepspeed_config"]["deepspeed_config_file"] = "configs/missing.json"
    (root / "configs" / "acc.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(FileNotFoundError, match="DeepSpeed config file configs/missing.json named by .*acc.yaml"):
        distributed.resolved_accelerate_config(root / "configs" / "acc.yaml", root)
    with pytest.raises(FileNotFoundError, match="accelerate config file .*nothing.yaml does not exist"):
        distributed.resolved_accelerate_config(root / "nothing.yaml", root)
