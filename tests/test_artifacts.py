"""Tests for segattr_utils.artifacts: atomic writes, tables and the resumable RecordStore."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from segattr_utils import artifacts
from segattr_utils.artifacts import (
    RecordStore,
    atomic_write_bytes,
    atomic_write_text,
    read_json,
    read_table,
    write_json,
    write_table,
)


def _temp_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------------------------
# RecordStore


def test_store_append_contains_len_records(tmp_path):
    path = tmp_path / "sub" / "store.jsonl"
    store = RecordStore(path)
    assert len(store) == 0 and store.records() == []
    assert "a" not in store
    store.append([{"key": "a", "x": 1}, {"key": "b", "x": 2}])
    store.append([{"key": "c", "x": 3}])
    assert len(store) == 3
    assert "a" in store and "c" in store and "d" not in store
    assert store.records() == [{"key": "a", "x": 1}, {"key": "b", "x": 2}, {"key": "c", "x": 3}]
    # one JSON object per line, newline-terminated
    lines = path.read_text().split("\n")
    assert lines[-1] == "" and [json.loads(line) for line in lines[:-1]] == store.records()
    # reopening sees the same records
    again = RecordStore(path)
    assert len(again) == 3 and "b" in again and again.records() == store.records()


def test_store_discard_removes_records_so_they_can_be_appended_again(tmp_path):
    path = tmp_path / "store.jsonl"
    store = RecordStore(path, key_fn=lambda r: [r["id"], r["j"]])
    store.append([{"id": "a", "j": 1, "x": 1}, {"id": "b", "j": 1, "x": 2}, {"id": "c", "j": 2, "x": 3}])
    assert store.discard([["b", 1], ["zzz", 0]]) == 1
    assert ["b", 1] not in store and len(store) == 2
    assert store.records() == [{"id": "a", "j": 1, "x": 1}, {"id": "c", "j": 2, "x": 3}]
    assert RecordStore(path, key_fn=store.key_fn).records() == store.records()  # on disk too
    store.append([{"id": "b", "j": 1, "x": 20}])
    assert store.records()[-1] == {"id": "b", "j": 1, "x": 20}
    assert store.discard([]) == 0


def test_store_append_empty_batch(tmp_path):
    store = RecordStore(tmp_path / "s.jsonl")
    store.append([])
    assert len(store) == 0 and store.records() == []


def test_store_duplicate_key_raises_and_writes_nothing(tmp_path):
    path = tmp_path / "s.jsonl"
    store = RecordStore(path)
    store.append([{"key": "a", "x": 1}])
    before = path.read_bytes()
    with pytest.raises(ValueError):
        store.append([{"key": "new", "x": 0}, {"key": "a", "x": 2}])
    assert path.read_bytes() == before
    assert "new" not in store and len(store) == 1
    # also after reopening
    with pytest.raises(ValueError):
        RecordStore(path).append([{"key": "a"}])


def test_store_duplicate_key_within_one_batch_raises(tmp_path):
    path = tmp_path / "s.jsonl"
    store = RecordStore(path)
    with pytest.raises(ValueError):
        store.append([{"key": "a", "x": 1}, {"key": "a", "x": 2}])
    assert RecordStore(path).records() == []


def test_store_custom_key_fn(tmp_path):
    store = RecordStore(tmp_path / "s.jsonl", key_fn=lambda r: (r["q"], r["s"]))
    store.append([{"q": "q1", "s": 0}, {"q": "q1", "s": 1}])
    assert ("q1", 0) in store and ("q1", 2) not in store
    with pytest.raises(ValueError):
        store.append([{"q": "q1", "s": 1}])


def test_store_list_keys(tmp_path):
    path = tmp_path / "s.jsonl"
    store = RecordStore(path)
    store.append([{"key": ["q1", "greedy", 0]}, {"key": ["q1", "greedy", 1]}])
    assert ["q1", "greedy", 0] in store
    assert ("q1", "greedy", 1) in store
    assert ["q1", "greedy", 2] not in store
    with pytest.raises(ValueError):
        store.append([{"key": ["q1", "greedy", 0]}])
    reopened = RecordStore(path)
    assert ["q1", "greedy", 1] in reopened and len(reopened) == 2
    with pytest.raises(ValueError):
        reopened.append([{"key": ["q1", "greedy", 1]}])


def _write_good(path, n):
    lines = [json.dumps({"key": i, "v": f"r{i}"}) + "\n" for i in range(n)]
    path.write_text("".join(lines))
    return "".join(lines)


@pytest.mark.parametrize(
    "tail",
    [
        '{"key": 9, "v": "par',  # cut mid-record, no newline
        '{"key": 9, "v": "r9"}',  # complete JSON but the newline was never written
        '{"key": 9, "v": "r9", \n',  # newline but invalid JSON
        '{"key": 9',  # short fragment
    ],
)
def test_store_repairs_truncated_last_line(tmp_path, tail):
    path = tmp_path / "s.jsonl"
    good = _write_good(path, 3)
    with open(path, "a") as handle:
        handle.write(tail)
    store = RecordStore(path)
    assert path.read_text() == good
    assert len(store) == 3 and 9 not in store
    assert [r["key"] for r in store.records()] == [0, 1, 2]
    store.append([{"key": 9, "v": "r9"}, {"key": 10, "v": "r10"}])
    reopened = RecordStore(path)
    assert [r["key"] for r in reopened.records()] == [0, 1, 2, 9, 10]
    assert reopened.records()[3] == {"key": 9, "v": "r9"}


def test_store_repair_of_only_a_partial_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"key": "a", "v"')
    store = RecordStore(path)
    assert len(store) == 0 and path.read_bytes() == b""
    store.append([{"key": "a", "v": 1}])
    assert RecordStore(path).records() == [{"key": "a", "v": 1}]


def test_store_intact_file_not_modified(tmp_path):
    path = tmp_path / "s.jsonl"
    good = _write_good(path, 4)
    RecordStore(path)
    assert path.read_text() == good


def test_store_serialises_numpy_scalars(tmp_path):
    import numpy as np

    store = RecordStore(tmp_path / "s.jsonl")
    store.append([{"key": "a", "x": np.float32(0.5), "n": np.int64(4), "b": np.bool_(True)}])
    assert store.records() == [{"key": "a", "x": 0.5, "n": 4, "b": True}]


def test_store_serialises_numpy_arrays(tmp_path):
    import numpy as np

    store = RecordStore(tmp_path / "s.jsonl")
    store.append([{"key": "a", "y": np.arange(3)}])
    assert store.records() == [{"key": "a", "y": [0, 1, 2]}]


# ----------------------------------------------------------------------------------------------
# Tables and JSON


@pytest.fixture
def frame():
    return pd.DataFrame(
        {
            "question_id": ["q1", "q2", "q3"],
            "correct": [True, False, True],
            "n_tokens": [10, 250, 3],
            "score": [0.5, -1.25, 2.0],
        }
    )


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_write_table_round_trip(tmp_path, frame, suffix):
    path = tmp_path / "deep" / f"table{suffix}"
    assert write_table(path, frame) == path
    back = read_table(path)
    assert list(back.columns) == list(frame.columns)
    assert back["question_id"].tolist() == ["q1", "q2", "q3"]
    assert back["correct"].tolist() == [True, False, True]
    assert back["n_tokens"].tolist() == [10, 250, 3]
    assert back["score"].tolist() == [0.5, -1.25, 2.0]
    assert _temp_files(path.parent) == []


def test_write_table_markdown(tmp_path, frame):
    path = tmp_path / "table.md"
    write_table(path, frame[["question_id", "n_tokens"]])
    text = path.read_text()
    assert text.endswith("\n")
    rows = [line for line in text.splitlines() if line.strip()]
    assert len(rows) == 2 + 3  # header, separator, three rows
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]
    assert cells[0] == ["question_id", "n_tokens"]
    assert set("".join(cells[1])) <= set("-:")
    assert cells[2:] == [["q1", "10"], ["q2", "250"], ["q3", "3"]]
    assert _temp_files(tmp_path) == []


def test_write_table_overwrites_and_unsupported_format(tmp_path, frame):
    path = tmp_path / "t.csv"
    write_table(path, frame)
    write_table(path, frame.head(1))
    assert len(read_table(path)) == 1
    with pytest.raises(ValueError):
        write_table(tmp_path / "t.xlsx", frame)
    assert not (tmp_path / "t.xlsx").exists()
    assert _temp_files(tmp_path) == []


def test_read_table_missing_names_path(tmp_path):
    missing = tmp_path / "nope" / "table.parquet"
    with pytest.raises(FileNotFoundError, match="nope"):
        read_table(missing)
    with pytest.raises(FileNotFoundError) as info:
        read_table(missing)
    assert str(missing) in str(info.value)


def test_json_round_trip(tmp_path):
    import numpy as np

    path = tmp_path / "a" / "b.json"
    write_json(path, {"b": 1, "a": [1, 2], "x": np.float64(0.25), "n": np.int32(7)})
    assert read_json(path) == {"a": [1, 2], "b": 1, "x": 0.25, "n": 7}
    text = path.read_text()
    assert text.endswith("\n")
    assert text.index('"a"') < text.index('"b"')  # sorted keys
    assert _temp_files(path.parent) == []


def test_write_json_numpy_array(tmp_path):
    import numpy as np

    path = tmp_path / "arr.json"
    write_json(path, {"arr": np.array([1, 2]), "m": np.zeros((2, 2))})
    assert read_json(path) == {"arr": [1, 2], "m": [[0.0, 0.0], [0.0, 0.0]]}


def test_failed_serialisation_leaves_old_file(tmp_path):
    path = tmp_path / "summary.json"
    write_json(path, {"ok": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert path.read_bytes() == before
    assert _temp_files(tmp_path) == []


def test_failed_replace_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "notes.txt"
    atomic_write_text(path, "old content\n")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(artifacts.os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(path, "new content\n")
    with pytest.raises(OSError):
        write_table(tmp_path / "t.csv", pd.DataFrame({"a": [1]}))
    monkeypatch.undo()
    assert path.read_text() == "old content\n"
    assert not (tmp_path / "t.csv").exists()
    assert _temp_files(tmp_path) == []


def test_atomic_write_bytes_creates_parents(tmp_path):
    path = tmp_path / "x" / "y" / "z.bin"
    assert atomic_write_bytes(path, b"\x00\x01") == path
    assert path.read_bytes() == b"\x00\x01"
    atomic_write_text(path, "é")
    assert path.read_bytes() == "é".encode()
    assert os.listdir(path.parent) == ["z.bin"]


def test_store_unserialisable_record_writes_nothing(tmp_path):
    path = tmp_path / "s.jsonl"
    store = RecordStore(path)
    store.append([{"key": "a"}])
    before = path.read_bytes()
    with pytest.raises(TypeError):
        store.append([{"key": "b"}, {"key": "c", "obj": object()}])
    assert path.read_bytes() == before
    assert "b" not in store and "c" not in store and len(store) == 1
    store.append([{"key": "b"}])
    assert [r["key"] for r in RecordStore(path).records()] == ["a", "b"]


# ----------------------------------------------------------------------------------------------
# File permissions: written files get what any new file gets (0o666 less the umask), not
# mkstemp's 0600.


@pytest.fixture
def set_umask():
    """Set the process umask for one test (``set_umask(0o022)``); the old one comes back after."""
    old = os.umask(0o022)
    os.umask(old)
    try:
        yield os.umask
    finally:
        os.umask(old)


def _writers():
    import numpy as np

    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    return {
        "atomic_write_bytes": lambda folder: atomic_write_bytes(folder / "blob.bin", b"\x00\x01"),
        "atomic_write_text": lambda folder: atomic_write_text(folder / "notes.txt", "text\n"),
        "write_json": lambda folder: write_json(folder / "summary.json", {"x": np.float64(0.5)}),
        "write_table.parquet": lambda folder: write_table(folder / "t.parquet", frame),
        "write_table.csv": lambda folder: write_table(folder / "t.csv", frame),
        "write_table.md": lambda folder: write_table(folder / "t.md", frame),
    }


def _mode(path):
    return path.stat().st_mode & 0o777


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("writer", sorted(_writers()))
def test_written_file_is_0644_under_umask_022(tmp_path, set_umask, writer):
    set_umask(0o022)
    path = _writers()[writer](tmp_path)
    assert _mode(path) == 0o666 & ~0o022 == 0o644
    # Replacing a file keeps ordinary permissions, too.
    path = _writers()[writer](tmp_path)
    assert _mode(path) == 0o644
    assert _temp_files(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("writer", sorted(_writers()))
def test_written_file_mode_follows_the_umask(tmp_path, set_umask, writer):
    # umask 077: private files (0600), as before; 027 and 002: group bits follow the umask, too.
    for umask, expected in [(0o077, 0o600), (0o027, 0o640), (0o002, 0o664)]:
        set_umask(umask)
        folder = tmp_path / f"umask{umask:03o}"
        path = _writers()[writer](folder)
        assert _mode(path) == 0o666 & ~umask == expected, f"umask {umask:03o}"
        assert _temp_files(folder) == []
