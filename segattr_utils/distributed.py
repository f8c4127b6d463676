"""Per-item work spread over processes and machines with accelerate, one record store per rank.

IG attribution (Sec. 2.2) is independent per trace, so stage 03 runs it in as many processes as there
are GPUs (or several single-threaded processes on a CPU). ``accelerate launch`` starts the processes, on
one machine or several; :func:`process_state` (accelerate's ``PartialState``) tells each its rank;
:func:`deal` gives each rank its share of the items; each rank appends its records to its own
:class:`~segattr_utils.artifacts.RecordStore` beside the main one (:func:`rank_store_path`), so that no two
processes write one file and a killed run keeps what every rank finished. :func:`merge_rank_stores` then
appends the ranks' records to the main store in the items' input order and removes the rank stores.

The notebook starts the launch itself (:func:`launch_command`, :func:`run_launch`); on several machines
the same command is started on each machine by hand (README, "Attribution on several GPUs and machines")
and the next run of the notebook merges what the ranks wrote.

On a machine without CUDA, accelerate's ``--cpu`` flag starts one process whatever ``--num_processes``
says (its multi-CPU mode needs mpirun); :func:`launch_command` therefore uses the torchrun launcher
(``--multi_gpu``) everywhere and each process asks for a CPU state (gloo) when it is to run on the CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .artifacts import RecordStore, atomic_write_text, json_default
from .config import save_profile
from .progress import QUIET_ENV, progress

#: ``<store>.rank-00003.jsonl``: rank 3's records of ``<store>.jsonl``.
RANK_INFIX = ".rank-"


def process_state(cpu: bool):
    """accelerate's ``PartialState`` of this process (rank, world size, device); one process and no
    process group outside ``accelerate launch``. ``cpu=True`` keeps the process on the CPU (gloo)."""
    from accelerate import PartialState

    return PartialState(cpu=cpu)


def resolve_processes(settings: dict, kind: str, section: str) -> tuple[int, int]:
    """(processes, torch threads per process) from ``<section>.processes`` and
    ``<section>.threads_per_process``. ``auto``: one process per visible GPU (one on a machine without CUDA,
    and for the tiny world, whose models stay on the CPU). One process means no launch."""
    import torch

    processes = settings.get("processes", 1)
    if processes == "auto":
        processes = torch.cuda.device_count() if kind != "world" and torch.cuda.is_available() else 1
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        raise ValueError(f"{section}.processes must be a positive int or 'auto', got {processes!r}")
    threads = settings.get("threads_per_process") or max(1, (os.cpu_count() or 1) // processes)
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"{section}.threads_per_process must be a positive int, got {threads!r}")
    return processes, threads


def deal(items: Sequence[Any], rank: int, world_size: int, weight: Callable[[Any], float] | None = None) -> list:
    """The items rank ``rank`` of ``world_size`` works on: dealt in turn, heaviest first when ``weight``
    is given (so that the ranks finish at about the same time), in input order within the rank.
    Every item goes to exactly one rank."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of {world_size} processes")
    order = range(len(items)) if weight is None else sorted(range(len(items)), key=lambda i: (-weight(items[i]), i))
    mine = sorted(list(order)[rank::world_size])
    return [items[i] for i in mine]


def rank_store_path(store_path: str | Path, rank: int) -> Path:
    """Where rank ``rank`` appends its records of the store at ``store_path``."""
    path = Path(store_path)
    return path.with_name(f"{path.stem}{RANK_INFIX}{rank:05d}{path.suffix}")


def rank_store_paths(store_path: str | Path) -> list[Path]:
    """The rank stores of the store at ``store_path`` that exist, by rank."""
    path = Path(store_path)
    return sorted(path.parent.glob(f"{path.stem}{RANK_INFIX}[0-9]*{path.suffix}"))


def keys_in_rank_stores(store: RecordStore) -> set:
    """The keys the rank stores of ``store`` hold (work done but not merged yet)."""
    keys = set()
    for path in rank_store_paths(store.path):
        keys |= {RecordStore._freeze(store.key_fn(r)) for r in RecordStore(path, key_fn=store.key_fn).records()}
    return keys


class RankRecordCounter:
    """How many records the rank stores of the store at ``store_path`` hold, read incrementally: each call
    reads only the bytes appended since the last one and counts their complete lines (a store appends
    one line per record in one write). Polled every second during a launch, it costs next to nothing
    even when the records are large (the IG values of 16k-token traces: ~300 KB each)."""

    def __init__(self, store_path: str | Path):
        self.store_path = Path(store_path)
        self.offsets: dict[Path, int] = {}
        self.count = 0

    def __call__(self) -> int:
        for path in rank_store_paths(self.store_path):
            with open(path, "rb") as handle:
                handle.seek(self.offsets.get(path, 0))
                new = handle.read()
            complete = new.rfind(b"\n") + 1  # a line still being written is counted next time
            self.count += new.count(b"\n", 0, complete)
            self.offsets[path] = self.offsets.get(path, 0) + complete
        return self.count


def merge_rank_stores(store: RecordStore, order: Sequence[Any]) -> int:
    """Append the records of ``store``'s rank stores that it lacks, those whose key is in ``order`` in that
    order, the others after them by rank; then delete the rank stores. Returns how many were appended.

    Idempotent: a merge cut short is completed by the next one (keys already in ``store`` are skipped)."""
    paths = rank_store_paths(store.path)
    if not paths:
        return 0
    found: dict = {}
    for path in paths:
        for record in RecordStore(path, key_fn=store.key_fn).records():
            key = RecordStore._freeze(store.key_fn(record))
            if key not in store and key not in found:  # a key in two ranks' stores: the same work, kept once
                found[key] = record
    position = {RecordStore._freeze(key): i for i, key in enumerate(order)}
    ranked = sorted(enumerate(found.items()), key=lambda item: (position.get(item[1][0], len(position)), item[0]))
    store.append([record for _, (_, record) in ranked])
    for path in paths:
        path.unlink()
    return len(found)


def free_port() -> int:
    """A TCP port that is free now, for the launched processes' rendezvous on this machine (two launches
    at once must not share accelerate's default 29500)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(module: str, arguments: Sequence[str], num_processes: int, port: int | None = None) -> list[str]:
    """``python -m accelerate.commands.launch ... -m <module> <arguments>`` on this machine, with this
    interpreter (so that it works without the environment's scripts on PATH, e.g. under ``make``)."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",  # torchrun: num_processes processes on GPUs or CPUs (--cpu would start one)
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port if port is not None else free_port()),
        "-m",
        module,
        *arguments,
    ]


def run_launch(
    command: Sequence[str],
    log_path: Path,
    *,
    threads: int,
    total: int,
    count_done: Callable[[], int],
    desc: str,
    poll_seconds: float = 1.0,
) -> None:
    """Run ``command`` (a launch), its output to ``log_path``; show a progress bar of ``count_done()`` out
    of ``total`` while it runs (quiet in executed notebooks). The processes get ``threads`` torch threads
    each and no progress bars of their own. A failure raises ``RuntimeError`` with the end of the log."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), QUIET_ENV: "1"}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = count_done()
    with open(log_path, "wb") as log, progress(total=total, desc=desc, unit="trace") as bar:
        process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, env=env)
        while process.poll() is None:
            time.sleep(poll_seconds)
            bar.update(count_done() - start - bar.n)
        bar.update(count_done() - start - bar.n)
    if process.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-40:]
        raise RuntimeError(
            f"the launched processes failed (exit status {process.returncode}); the last lines of {log_path}:\n"
            + "\n".join(tail)
            + f"\ncommand: {' '.join(command)}"
        )


def launch_over_processes(
    profile: dict, module: str, items: list[dict], store: RecordStore, processes: int, threads: int, desc: str
) -> None:
    """Work through ``items`` in ``processes`` processes on this machine: ``accelerate launch`` runs
    ``python -m <module> --profile <file> --items <file> --store <store>`` in each (which calls
    :func:`share_of_this_process` and appends to its rank store), then the ranks' records are merged into
    ``store`` in the order of ``items``. The profile and the items travel in files beside the store (a
    profile changed in memory, e.g. by a notebook's parameters, reaches the processes as it is); the
    launch's output goes to ``<store>.launch/launch.log``, whose end a failure shows."""
    folder = store.path.with_suffix(".launch")
    folder.mkdir(parents=True, exist_ok=True)
    save_profile(profile, folder / "profile.yaml")
    atomic_write_text(
        folder / "items.jsonl", "".join(json.dumps(item, sort_keys=True, default=json_default) + "\n" for item in items)
    )
    arguments = ["--profile", str(folder / "profile.yaml"), "--items", str(folder / "items.jsonl")]
    command = launch_command(module, [*arguments, "--store", str(store.path)], processes)
    run_launch(
        command,
        folder / "launch.log",
        threads=threads,
        total=len(items),
        count_done=RankRecordCounter(store.path),  # leftover rank stores were merged before the launch
        desc=f"{desc} ({processes} processes)",
    )
    merged = merge_rank_stores(store, [store.key_fn(item) for item in items])
    missing = [store.key_fn(item) for item in items if store.key_fn(item) not in store]
    if missing:
        raise RuntimeError(
            f"the {processes} launched processes exited without doing {len(missing)} items "
            f"({', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''}); merged {merged}; "
            f"see {folder / 'launch.log'}"
        )
    shutil.rmtree(folder)


def share_of_this_process(items: list[dict], store: RecordStore, *, cpu: bool, weight=None):
    """``(state, mine, own_store)`` for a process started by :func:`launch_over_processes` or by hand on
    several machines (and for a lone process): accelerate's state; the items that neither ``store`` nor any
    rank store holds, dealt over the ranks (:func:`deal`); and this rank's own store. Every rank reads the
    stores before any rank writes (a barrier), so all ranks deal the same list. ``store.key_fn`` must
    give an item the key of its record."""
    state = process_state(cpu=cpu)
    done = set(store._keys) | keys_in_rank_stores(store)
    todo = [item for item in items if RecordStore._freeze(store.key_fn(item)) not in done]
    state.wait_for_everyone()
    mine = deal(todo, state.process_index, state.num_processes, weight=weight)
    own = RecordStore(rank_store_path(store.path, state.process_index), key_fn=store.key_fn)
    return state, mine, own


def rank_arguments(description: str, jobs: dict, argv: list[str] | None = None):
    """The arguments of a stage's rank entry point: ``--profile`` (name or YAML file), and ``--items`` (a
    job name from ``jobs`` or a JSONL file, which then needs ``--store``)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--profile", required=True, help="a profile name or YAML file")
    parser.add_argument("--items", required=True, help=f"{' or '.join(jobs)}, or a JSONL file of items")
    parser.add_argument("--store", default=None, help="the record store (with a JSONL file of items)")
    args = parser.parse_args(argv)
    if args.items not in jobs and args.store is None:
        parser.error(f"--items {args.items} is not a job name ({', '.join(jobs)}) and needs --store")
    return args


def read_items(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]
