"""Artifacts under ``results/<profile>/``: atomic writes and resumable per-record stores.

Data flows one way: each stage (notebook) writes into its own folder ``results/<profile>/<NN_name>/``
and reads only earlier stages' folders. Every file is written to a temporary name and renamed, so an
interrupted run never leaves a half-written table, and gets the ordinary permissions of a new file
(0o666 less the process umask: 0644 under umask 022). Per-record work (one generation, one
attribution) goes to a :class:`RecordStore`, a JSONL file whose records are appended whole and keyed,
so a resumed run skips what is done and never duplicates a record.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

_TEMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)


def _create_temp(path: Path) -> tuple[int, str]:
    """Create and open a new temporary file ``.<name>.<random>.tmp`` next to ``path``.

    :func:`tempfile.mkstemp` creates its file with mode 0600, which the rename would carry over to
    the artifact. Here the file is created with mode 0o666 and the kernel applies the process umask
    as for any new file (0644 under umask 022, 0600 under 077): nothing reads or changes the umask,
    so there is no race with other threads. ``O_EXCL`` makes the name ours, as mkstemp does.
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {path}")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def fingerprint(*parts) -> str:
    """A short stable digest of JSON-serialisable ``parts``: record-store keys that change when a trace
    or a setting behind the record changes, so a resumed stage never reuses a stale record."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy arrays/scalars and tensors; .item() fails on arrays of size > 1
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_table(path: str | Path, frame: pd.DataFrame) -> Path:
    """Write a DataFrame atomically as Parquet (``.parquet``), CSV (``.csv``) or Markdown (``.md``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)  # pandas reopens it by name: truncating keeps the mode
    os.close(fd)
    try:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        elif path.suffix == ".csv":
            frame.to_csv(tmp, index=False)
        elif path.suffix == ".md":
            Path(tmp).write_text(frame.to_markdown(index=False) + "\n", encoding="utf-8")
        else:
            raise ValueError(f"unsupported table format {path.suffix!r}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the notebook that produces it first")
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def save_figure(fig, directory: str | Path, name: str, formats: Iterable[str] = ("png", "pdf")) -> list[Path]:
    """Save a matplotlib figure as ``<name>.png`` and ``<name>.pdf`` atomically (deterministic metadata)."""
    import io

    paths = []
    for fmt in formats:
        buffer = io.BytesIO()
        metadata = {"Software": None} if fmt == "png" else {"Creator": None, "Producer": None, "CreationDate": None}
        fig.savefig(buffer, format=fmt, bbox_inches="tight", dpi=120, metadata=metadata)
        paths.append(atomic_write_bytes(Path(directory) / f"{name}.{fmt}", buffer.getvalue()))
    return paths


class RecordStore:
    """An append-only JSONL file of keyed records, safe to interrupt and resume.

    Each record is one line written with a single ``write`` and flushed to disk. On open, a trailing
    line cut by an interruption (no newline or invalid JSON) is truncated away. Records are unique
    by ``key_fn(record)``: appending a key that exists raises ``ValueError``.
    """

    def __init__(self, path: str | Path, key_fn: Callable[[dict], Any] = lambda r: r["key"]):
        self.path = Path(path)
        self.key_fn = key_fn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self._keys = {self._freeze(key_fn(r)) for r in self._read()}

    @staticmethod
    def _freeze(key: Any) -> Any:
        return tuple(key) if isinstance(key, list) else key

    def _repair(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        good = 0
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                json.loads(line)
            except json.JSONDecodeError:
                break
            good += len(line)
        if good != len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(good)

    def _read(self) -> Iterator[dict]:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)

    def __contains__(self, key: Any) -> bool:
        return self._freeze(key) in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def append(self, records: Iterable[dict]) -> None:
        records = list(records)
        lines, batch_keys = [], set()
        for record in records:
            key = self._freeze(self.key_fn(record))
            if key in self._keys or key in batch_keys:
                raise ValueError(f"record {key!r} is already in {self.path} or twice in this batch")
            batch_keys.add(key)
            lines.append(json.dumps(record, sort_keys=True, default=json_default) + "\n")
        with open(self.path, "a", encoding="utf-8") as handle:
            for record, line in zip(records, lines):
                handle.write(line)
                self._keys.add(self._freeze(self.key_fn(record)))
            handle.flush()
            os.fsync(handle.fileno())

    def discard(self, keys: Iterable[Any]) -> int:
        """Remove the records with these keys (so that they are computed again); the file is rewritten
        atomically, other records keep their lines and order. Returns how many were removed."""
        drop = {self._freeze(key) for key in keys} & self._keys
        if not drop:
            return 0
        with open(self.path, encoding="utf-8") as handle:
            kept = [line for line in handle if self._freeze(self.key_fn(json.loads(line))) not in drop]
        atomic_write_text(self.path, "".join(kept))
        self._keys -= drop
        return len(drop)

    def records(self) -> list[dict]:
        return list(self._read())
