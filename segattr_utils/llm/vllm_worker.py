"""Data parallel vLLM: one engine per worker process, requests and outputs exchanged as JSONL files.

vLLM refuses ``LLM(data_parallel_size > 1)`` in one process, so :class:`~segattr_utils.llm.generation.
VLLMGenerator` starts DP workers (``python -m segattr_utils.llm.vllm_worker <folder>``), each with
``CUDA_VISIBLE_DEVICES`` set to its TP GPUs (:func:`~segattr_utils.llm.vllm_parallel.plan_engines`) and
the engine environment of the profile (``VLLM_BATCH_INVARIANT=1`` with ``generation.vllm.batch_invariant``).

The protocol, in the worker's folder of a temporary directory:

1. the parent writes ``engine.json`` (model, dtype, ``vllm.LLM`` keyword arguments) and starts the worker;
   the worker builds its engine and writes ``ready``;
2. per chunk the parent writes ``chunk-<n>.requests.jsonl`` (one prompt group per line:
   :func:`~segattr_utils.llm.vllm_requests.group_requests`) and sends ``chunk-<n>`` on the worker's stdin;
   the worker runs the chunk's requests in one engine call (:func:`~segattr_utils.llm.vllm_requests.run_groups`,
   as the in-process engine does) and writes ``chunk-<n>.outputs.jsonl`` (one output per request, with its
   index in the call). The parent keeps :data:`CHUNKS_IN_FLIGHT` chunks queued per worker, so that an
   engine starts its next chunk as soon as one ends, reads every finished chunk at once and hands it to
   the caller (which stores it) before it waits for the next;
3. end of stdin (``close()``, or the parent's death) makes the worker shut its engine down and exit,
   which frees its GPUs.

Files appear whole (written beside and renamed). A worker's stdout and stderr go to ``log.txt``; a worker
that exits early loses its chunk in flight: the parent still collects the other workers' chunks in flight,
then raises :class:`WorkerError` with the end of that log.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from .vllm_requests import chunk_groups, group_work, run_groups, sendable, shutdown_engine

#: Seconds a worker is given to shut its engine down and exit after its stdin closes, then to die after
#: SIGTERM; a busy worker (a call still running when the parent gave up) is stopped by the signal.
STOP_GRACE_S = 60.0
KILL_GRACE_S = 15.0
LOG_TAIL_CHARS = 4000
#: Chunks sent ahead to each worker: the one its engine runs and the next, read from stdin as it ends.
CHUNKS_IN_FLIGHT = 2


class WorkerError(RuntimeError):
    """A data parallel vLLM worker exited before it answered."""


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` beside ``path`` and rename it into place, so that a reader never sees half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_atomically(path, "".join(json.dumps(row) + "\n" for row in rows))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def package_root() -> str:
    """The folder holding this ``segattr_utils``: first on the workers' PYTHONPATH, so that they import the
    parent's code whatever is installed."""
    return str(Path(__file__).resolve().parents[2])


# ---------------------------------------------------------------------------------------------
# Parent side


class Worker:
    """One worker process (its folder, its GPUs, its log)."""

    def __init__(
        self,
        folder: Path,
        model: str,
        dtype: str,
        engine_kwargs: dict,
        gpus: Sequence[str],
        environment: dict[str, str] | None = None,
    ):
        self.folder, self.gpus = folder, tuple(gpus)
        folder.mkdir(parents=True)
        write_atomically(
            folder / "engine.json", json.dumps({"model": model, "dtype": dtype, "engine_kwargs": engine_kwargs})
        )
        path = os.pathsep.join(p for p in (package_root(), os.environ.get("PYTHONPATH", "")) if p)
        environment = {
            **os.environ,
            **(environment or {}),
            "CUDA_VISIBLE_DEVICES": ",".join(self.gpus),
            "PYTHONPATH": path,
        }
        with open(folder / "log.txt", "wb") as log:
            # its own session: a worker that must be stopped is stopped with the engine processes it started
            self.process = subprocess.Popen(
                [sys.executable, "-m", "segattr_utils.llm.vllm_worker", str(folder)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                text=True,
                start_new_session=True,
            )

    def log_tail(self) -> str:
        log = self.folder / "log.txt"
        return log.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:] if log.is_file() else ""

    def failure(self, doing: str) -> WorkerError:
        return WorkerError(
            f"vLLM worker on CUDA_VISIBLE_DEVICES={','.join(self.gpus)} (pid {self.process.pid}) exited with code "
            f"{self.process.returncode} while {doing}; the end of its log:\n{self.log_tail()}"
        )

    def send(self, call: str) -> None:
        try:
            self.process.stdin.write(call + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            self.process.wait(timeout=KILL_GRACE_S)
            raise self.failure(f"being sent {call}") from None

    def stop(self) -> int | None:
        """Close stdin (the worker shuts its engine down and exits); SIGTERM, then SIGKILL, to its process
        group if it does not exit in time. Returns the exit code."""
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
            except OSError:
                pass
            for sig, grace in ((None, STOP_GRACE_S), (signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
                if sig is not None:
                    try:
                        os.killpg(self.process.pid, sig)
                    except ProcessLookupError:
                        break
                try:
                    self.process.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        return self.process.returncode


def wait_for_files(workers: Sequence[Worker], name: str, doing: str) -> None:
    """Until every worker's folder holds ``name``; a worker that exits first raises :class:`WorkerError`."""
    delay = 0.01
    waiting = list(workers)
    while waiting:
        waiting = [w for w in waiting if not (w.folder / name).exists()]
        for worker in waiting:
            if worker.process.poll() is not None and not (worker.folder / name).exists():
                raise worker.failure(doing)
        if waiting:
            time.sleep(delay)
            delay = min(2 * delay, 0.5)


def stop_workers(workers: Sequence[Worker], folder: Path) -> None:
    """Stop every worker (:meth:`Worker.stop`) and remove the exchange folder. By then every chunk a
    worker finished has been read and handed to the caller (:meth:`WorkerPool.run_chunks`); what the
    folder still holds are requests and the output of a chunk that finished after the caller stopped
    reading (an interrupt), which no caller would store."""
    for worker in workers:
        worker.stop()
    shutil.rmtree(folder, ignore_errors=True)


class WorkerPool:
    """DP engines of one model, one worker process each on the GPUs of ``device_groups`` (started at once,
    ready when the constructor returns), with ``environment`` added to each worker's environment.
    :meth:`run_chunks` splits one call's prompt groups between the workers
    (:func:`~segattr_utils.llm.vllm_parallel.shard_groups`: by prompt, balanced by expected work) and
    yields every chunk's outputs as it finishes; :meth:`close` stops the workers and removes their folder
    (also done when the pool is garbage-collected or the interpreter exits without ``close()``)."""

    def __init__(
        self,
        model: str,
        dtype: str,
        engine_kwargs: dict,
        device_groups: Sequence[Sequence[str]],
        environment: dict[str, str] | None = None,
    ):
        self.folder = Path(tempfile.mkdtemp(prefix="segattr_vllm_dp_"))
        self.chunks_sent = 0
        self.workers: list[Worker] = []
        self._stop = weakref.finalize(self, stop_workers, self.workers, self.folder)
        try:
            for i, gpus in enumerate(device_groups):
                self.workers.append(
                    Worker(self.folder / f"worker{i}", model, dtype, engine_kwargs, gpus, environment=environment)
                )
            wait_for_files(self.workers, "ready", "starting its engine")
        except BaseException:
            self.close()
            raise

    def _send(self, worker: Worker, chunk: list[dict]) -> str:
        self.chunks_sent += 1
        name = f"chunk-{self.chunks_sent}"
        write_jsonl(worker.folder / f"{name}.requests.jsonl", sendable(chunk))
        worker.send(name)
        return name

    def run_chunks(self, groups: Sequence[dict], chunk_requests: int) -> Iterator[list[dict]]:
        """Every request of ``groups``: yields ``[{"index", "text", "n_tokens", "finished"}]`` per finished
        chunk (in the order the chunks finish). Each worker gets its shard of the prompt groups cut into
        chunks of at most ``chunk_requests`` requests (:func:`~segattr_utils.llm.vllm_requests.chunk_groups`)
        and works through them on its own: no worker waits for another between chunks.

        A worker that exits loses its chunk in flight (and is sent nothing more); the others finish the
        chunks they hold, which are yielded, and then :class:`WorkerError` is raised for the first worker
        that failed. Nothing a worker finished is lost to another's failure."""
        from .vllm_parallel import shard_groups

        if not self._stop.alive:
            raise RuntimeError("the vLLM workers were stopped")
        shards = shard_groups([group_work(g) for g in groups], len(self.workers))
        queues = {
            worker: deque(chunk_groups([groups[i] for i in shard], chunk_requests))
            for worker, shard in zip(self.workers, shards)
        }
        sent: dict[Worker, deque[str]] = {worker: deque() for worker in self.workers}
        failures: list[WorkerError] = []

        def top_up(worker: Worker) -> None:
            while queues[worker] and len(sent[worker]) < CHUNKS_IN_FLIGHT:
                try:
                    sent[worker].append(self._send(worker, queues[worker].popleft()))
                except WorkerError as error:
                    failures.append(error)
                    queues[worker].clear()

        for worker in self.workers:
            top_up(worker)
        delay = 0.01
        while any(sent.values()):
            progressed = False
            for worker in self.workers:
                while sent[worker]:
                    name = sent[worker][0]
                    outputs = worker.folder / f"{name}.outputs.jsonl"
                    if not outputs.exists():
                        if worker.process.poll() is not None and not outputs.exists():
                            failures.append(worker.failure(f"running {name}"))
                            sent[worker].clear()
                            queues[worker].clear()
                        break
                    rows = read_jsonl(outputs)
                    outputs.unlink()
                    (worker.folder / f"{name}.requests.jsonl").unlink(missing_ok=True)
                    sent[worker].popleft()
                    progressed = True
                    if not failures:
                        top_up(worker)
                    yield rows
                if failures:  # the failed worker's chunks are not given to others: finish what is in flight
                    for other in self.workers:
                        queues[other].clear()
            if progressed:
                delay = 0.01
            elif any(sent.values()):
                time.sleep(delay)
                delay = min(2 * delay, 0.5)
        if failures:
            raise failures[0]

    def run(self, groups: Sequence[dict], chunk_requests: int | None = None) -> list[dict]:
        """Every output of :meth:`run_chunks` (one chunk per worker when ``chunk_requests`` is None)."""
        size = chunk_requests or max(1, sum(len(g["requests"]) for g in groups))
        return [out for chunk in self.run_chunks(groups, size) for out in chunk]

    def exit_codes(self) -> list[int | None]:
        """Each worker's exit code (None while it runs)."""
        return [w.process.poll() for w in self.workers]

    def close(self) -> None:
        """Stop every worker (each shuts its engine down; its GPUs are free once it has exited) and remove
        the exchange folder. Idempotent."""
        self._stop()


# ---------------------------------------------------------------------------------------------
# Worker side


def serve(folder: Path, commands: Iterable[str]) -> None:
    """Build the engine of ``folder/engine.json``, announce ``ready``, answer every call named in
    ``commands`` (stdin), and shut the engine down when they end."""
    from vllm import LLM

    spec = json.loads((folder / "engine.json").read_text(encoding="utf-8"))
    llm = LLM(model=spec["model"], dtype=spec["dtype"], **spec["engine_kwargs"])
    write_atomically(folder / "ready", "")
    try:
        for line in commands:
            call = line.strip()
            if call:
                outputs = run_groups(llm, read_jsonl(folder / f"{call}.requests.jsonl"))
                write_jsonl(folder / f"{call}.outputs.jsonl", outputs)
    finally:
        shutdown_engine(llm)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m segattr_utils.llm.vllm_worker <folder>", file=sys.stderr)
        return 2
    serve(Path(args[0]), sys.stdin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
