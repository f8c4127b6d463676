"""Starting the package's subprocesses, and per-item work spread over processes and machines with
accelerate, one record store per rank.

Every subprocess the package starts to do work goes through :func:`run_commands`: a list of
:class:`Command` (a plain ``python -m segattr_utils.workers <job> ...``, :func:`worker_command`, with its
environment, e.g. ``CUDA_VISIBLE_DEVICES`` for a per-GPU run; or an ``accelerate launch``,
:func:`launch_command`, with a config file or a process count), each with its own log file, a progress bar
fed by the caller's count of finished work, and on a failure one error naming the failed process, its exit
status, its log's end and its command, raised once the others have finished. The rank-worker entry
points are the jobs of :mod:`segattr_utils.workers`.

IG attribution (Sec. 2.2) is independent per trace, so stage 03 runs it in as many processes as there
are GPUs (or several single-threaded processes on a CPU). ``accelerate launch`` starts the processes, on
one machine or several (:func:`launch_ranks`); :func:`process_state` (accelerate's ``PartialState``) tells
each its rank; :func:`deal` gives each rank its share of the items; each rank appends its records to its
own :class:`~segattr_utils.artifacts.RecordStore` beside the main one (:func:`rank_store_path`), so that
no two processes write one file and a killed run keeps what every rank finished.
:func:`merge_rank_stores` then appends the ranks' records to the main store in the items' input order and
removes the rank stores (:func:`launch_over_processes` does all of it).

The notebook starts the launch itself; on several machines the same command is started on each machine
by hand (README, "Attribution on several GPUs and machines") and the next run of the notebook merges what
the ranks wrote.

On a machine without CUDA, accelerate's ``--cpu`` flag starts one process whatever ``--num_processes``
says (its multi-CPU mode needs mpirun); :func:`launch_command` therefore uses the torchrun launcher
(``--multi_gpu``) everywhere and each process asks for a CPU state (gloo) when it is to run on the CPU.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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


# ---------------------------------------------------------------------------------------------
# Starting processes: one launcher for every subprocess of the package


#: The module of the rank-worker entry points (``python -m segattr_utils.workers <job> ...``).
WORKERS = "segattr_utils.workers"


def worker_arguments(target: str, arguments: Sequence[str] = ()) -> list[str]:
    """``-m <module> <arguments>`` for ``target``: a job of :mod:`segattr_utils.workers` (a name without
    dots, e.g. ``attribution``) or a module (``segattr_utils.something``)."""
    return ["-m", target, *arguments] if "." in target else ["-m", WORKERS, target, *arguments]


def worker_command(target: str, arguments: Sequence[str] = ()) -> list[str]:
    """``python -m segattr_utils.workers <job> <arguments>`` (or ``python -m <module> ...``) with this
    interpreter, so that it works without the environment's scripts on PATH (e.g. under ``make``)."""
    return [sys.executable, *worker_arguments(target, arguments)]


def launch_command(
    target: str,
    arguments: Sequence[str],
    num_processes: int | None = None,
    port: int | None = None,
    config_file: str | Path | None = None,
) -> list[str]:
    """``python -m accelerate.commands.launch ... -m <module> <arguments>`` on this machine, with this
    interpreter; ``target`` as in :func:`worker_arguments`. Without ``config_file``: ``num_processes``
    processes started by torchrun (``--multi_gpu``, on GPUs or CPUs); with it: what the config file says
    (``num_processes``, when given, overrides its count). Every launch gets a free rendezvous port."""
    if config_file is None and num_processes is None:
        raise ValueError("a launch needs num_processes or an accelerate config file")
    if config_file is None:
        options = [
            "--multi_gpu",  # torchrun: num_processes processes on GPUs or CPUs (--cpu would start one)
            "--num_processes",
            str(num_processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ]
    else:
        options = ["--config_file", str(config_file)]
        options += ["--num_processes", str(num_processes)] if num_processes is not None else []
    port_option = ["--main_process_port", str(port if port is not None else free_port())]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *options,
        *port_option,
        *worker_arguments(target, arguments),
    ]


def resolved_accelerate_config(config_file: str | Path, root: str | Path) -> dict:
    """The accelerate config ``config_file`` with its DeepSpeed file (``deepspeed_config.deepspeed_config_file``)
    as an absolute path: the configs name it relative to the project root ``root``
    (``configs/ds_zero2.json``), and the launched processes would open it relative to their working
    directory (``notebooks/`` under papermill). A config file or DeepSpeed file that does not exist is
    refused with its path."""
    import yaml

    config_file = Path(config_file)
    if not config_file.is_file():
        raise FileNotFoundError(f"the accelerate config file {config_file} does not exist")
    config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
    if not isinstance(config, dict):
        raise ValueError(f"the accelerate config file {config_file} must hold a mapping")
    deepspeed = (config.get("deepspeed_config") or {}).get("deepspeed_config_file")
    if deepspeed:
        resolved = Path(deepspeed) if Path(deepspeed).is_absolute() else Path(root) / deepspeed
        if not resolved.is_file():
            raise FileNotFoundError(
                f"the DeepSpeed config file {deepspeed} named by {config_file} does not exist (looked for {resolved})"
            )
        config["deepspeed_config"]["deepspeed_config_file"] = str(resolved.resolve())
    return config


def accelerate_config_for_launch(config_file: str | Path, folder: str | Path, root: str | Path) -> Path:
    """A copy of the accelerate config ``config_file`` in ``folder`` (``accelerate_config.yaml``) for
    ``accelerate launch --config_file``, its DeepSpeed file an absolute path
    (:func:`resolved_accelerate_config`)."""
    import yaml

    config = resolved_accelerate_config(config_file, root)
    Path(folder).mkdir(parents=True, exist_ok=True)
    return atomic_write_text(Path(folder) / "accelerate_config.yaml", yaml.safe_dump(config, sort_keys=False))


@dataclass(frozen=True)
class Command:
    """One process for :func:`run_commands` to start.

    ``argv``: the command line; ``log``: the file its output goes to; ``name``: what a failure calls it
    (``SFT process 0 of 2``); ``env``: variables added to its environment (``CUDA_VISIBLE_DEVICES``);
    ``queue``: the commands of one queue run one after another in list order (the runs of one GPU), those
    of different queues, and those without one, at the same time."""

    name: str
    argv: Sequence[str]
    log: Path
    env: Mapping[str, str] = field(default_factory=dict)
    queue: str | None = None


def _exit_status(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def _failure_message(failed: list[tuple[Command, int]], not_started: list[Command], lines: int) -> str:
    command, returncode = failed[0]
    tail = Path(command.log).read_text(errors="replace").splitlines()[-lines:] if Path(command.log).exists() else []
    message = (
        f"{command.name} failed ({_exit_status(returncode)}); what the other processes finished is kept. "
        f"The last lines of {command.log}:\n" + "\n".join(tail) + f"\ncommand: {shlex.join(command.argv)}"
    )
    if len(failed) > 1:
        others = ", ".join(f"{c.name} ({_exit_status(code)}, {c.log})" for c, code in failed[1:])
        message += f"\n{len(failed) - 1} more failed: {others}"
    if not_started:
        message += f"\nnot started, after a failure in their queue: {', '.join(c.name for c in not_started)}"
    return message


def run_commands(
    commands: Sequence[Command],
    *,
    total: int,
    count_done: Callable[[], int],
    desc: str,
    unit: str = "item",
    threads: int | None = None,
    poll_seconds: float = 1.0,
    tail_lines: int = 40,
) -> None:
    """Start ``commands`` (queues one after another, the rest at once: :class:`Command`), each with its
    output to its own log file, and wait for them, showing a progress bar of ``count_done()`` (how many of
    the ``total`` units of work are finished, e.g. records in the rank stores) while they run (quiet in
    executed notebooks). The processes get no progress bars of their own and, with ``threads``, that many
    OpenMP/torch threads each. Every subprocess of the package is started here.

    A process that fails does not stop the others: they finish (and what they wrote is kept), the later
    commands of its queue are not started, and then one ``RuntimeError`` names the failed process, its exit
    status, the last ``tail_lines`` lines of its log and its command (and any other failures). If the
    caller is interrupted, the processes still running are terminated."""
    base = {**os.environ, QUIET_ENV: "1"}
    if threads is not None:
        base["OMP_NUM_THREADS"] = str(threads)
    queues: dict[Any, deque[Command]] = {}
    for index, command in enumerate(commands):
        queues.setdefault(command.queue if command.queue is not None else ("alone", index), deque()).append(command)
    running: list[tuple[Any, Command, subprocess.Popen, Any]] = []
    failed: list[tuple[Command, int]] = []
    not_started: list[Command] = []

    def start(queue: Any) -> None:
        command = queues[queue].popleft()
        Path(command.log).parent.mkdir(parents=True, exist_ok=True)
        log = open(command.log, "wb")  # noqa: SIM115 - closed when its process ends
        try:
            process = subprocess.Popen(
                list(command.argv), stdout=log, stderr=subprocess.STDOUT, env={**base, **command.env}
            )
        except BaseException:
            log.close()
            raise
        running.append((queue, command, process, log))

    begin = count_done()
    try:
        with progress(total=total, desc=desc, unit=unit) as bar:
            for queue in queues:
                start(queue)
            while running:
                ended = [entry for entry in running if entry[2].poll() is not None]
                for entry in ended:
                    running.remove(entry)
                    queue, command, process, log = entry
                    log.close()
                    if process.returncode != 0:
                        failed.append((command, process.returncode))
                        not_started.extend(queues[queue])
                        queues[queue].clear()
                    elif queues[queue]:
                        start(queue)
                bar.update(count_done() - begin - bar.n)
                if not ended:
                    time.sleep(poll_seconds)
    finally:
        for _, _, process, _log in running:  # only when interrupted: stop what is still running
            process.terminate()
        for _, _, process, log in running:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
    if failed:
        raise RuntimeError(_failure_message(failed, not_started, tail_lines))


def launch_ranks(
    target: str,
    arguments: Sequence[str],
    *,
    processes: int,
    threads: int,
    logs: str | Path,
    total: int,
    count_done: Callable[[], int],
    desc: str,
    unit: str = "item",
    poll_seconds: float = 1.0,
) -> None:
    """``processes`` ranks of one ``accelerate launch`` on this machine, each running ``target`` (a job of
    :mod:`segattr_utils.workers`, or a module) with ``arguments`` and ``threads`` torch threads; the launch's
    output goes to ``<logs>/launch.log``. Progress and failures as :func:`run_commands`."""
    command = launch_command(target, arguments, processes)
    run_commands(
        [Command(f"the {processes} launched processes", command, Path(logs) / "launch.log")],
        total=total,
        count_done=count_done,
        desc=f"{desc} ({processes} processes)",
        unit=unit,
        threads=threads,
        poll_seconds=poll_seconds,
    )


def launch_over_processes(
    profile: dict, job: str, items: list[dict], store: RecordStore, processes: int, threads: int, desc: str
) -> None:
    """Work through ``items`` in ``processes`` processes on this machine: ``accelerate launch`` runs
    ``python -m segattr_utils.workers <job> --profile <file> --items <file> --store <store>`` in each (which
    calls :func:`share_of_this_process` and appends to its rank store), then the ranks' records are merged
    into ``store`` in the order of ``items`` (:func:`launch_items`). The profile travels in a file beside
    the store (a profile changed in memory, e.g. by a notebook's parameters, reaches the processes as it
    is)."""
    folder = launch_folder(store)
    folder.mkdir(parents=True, exist_ok=True)
    save_profile(profile, folder / "profile.yaml")
    launch_items(job, ["--profile", str(folder / "profile.yaml")], items, store, processes, threads, desc)


def launch_folder(store: RecordStore) -> Path:
    """The folder beside ``store`` that a launch's inputs and log live in while it runs."""
    return store.path.with_suffix(".launch")


def launch_items(
    job: str,
    arguments: Sequence[str],
    items: list[dict],
    store: RecordStore,
    processes: int,
    threads: int,
    desc: str,
    unit: str = "item",
) -> None:
    """``processes`` ranks of ``python -m segattr_utils.workers <job> <arguments> --items <file> --store
    <store>`` under one ``accelerate launch``, each working through its share of ``items``
    (:func:`share_of_this_process`) into its rank store; then the rank stores are merged into ``store`` in
    the order of ``items`` and the launch folder (:func:`launch_folder`: the items, the launch's output in
    ``launch.log``, whose end a failure shows) is removed. A killed launch keeps every rank's finished
    records; the next call merges them first."""
    folder = launch_folder(store)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        folder / "items.jsonl", "".join(json.dumps(item, sort_keys=True, default=json_default) + "\n" for item in items)
    )
    launch_ranks(
        job,
        [*arguments, "--items", str(folder / "items.jsonl"), "--store", str(store.path)],
        processes=processes,
        threads=threads,
        logs=folder,
        total=len(items),
        count_done=RankRecordCounter(store.path),  # leftover rank stores were merged before the launch
        desc=desc,
        unit=unit,
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


def read_items(path: str | Path) -> list[dict]:
    """The items of a JSONL file written by :func:`launch_over_processes`."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]
