"""Per-item work spread over worker processes, results returned in input order.

IG attribution is independent per trace, so several processes (one per GPU, or several single-
threaded processes on a CPU, where a tiny model's small matrix products use two threads poorly) finish
a stage sooner than one process. Each worker is started with ``spawn`` (safe with CUDA and inside
Jupyter kernels), runs ``initializer(*initargs, device)`` once with its own device, then ``work(item)``
per item. Results come back in the order of ``items`` so that callers can append each one to a
resumable store as soon as it and all earlier ones are done.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def _start_worker(device_queue, threads: int, initializer: Callable, initargs: tuple) -> None:
    import torch

    torch.set_num_threads(threads)
    initializer(*initargs, device_queue.get())


def map_in_workers(
    work: Callable[[Any], Any],
    items: Iterable[Any],
    devices: Sequence[str],
    threads: int,
    initializer: Callable,
    initargs: tuple = (),
) -> Iterator[Any]:
    """Yield ``work(item)`` for every item, computed in ``len(devices)`` spawned processes.

    ``work``, ``initializer`` and ``initargs`` must be picklable (module-level functions); worker ``i``
    gets ``devices[i]`` and ``threads`` torch threads. A failure in a worker is raised here, naming the
    item's position.
    """
    if not devices:
        raise ValueError("map_in_workers needs at least one device")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads per worker must be a positive int, got {threads!r}")
    context = multiprocessing.get_context("spawn")
    device_queue = context.Queue()
    for device in devices:
        device_queue.put(device)
    with ProcessPoolExecutor(
        max_workers=len(devices),
        mp_context=context,
        initializer=_start_worker,
        initargs=(device_queue, threads, initializer, initargs),
    ) as pool:
        futures = [pool.submit(work, item) for item in items]
        try:
            for position, future in enumerate(futures):
                try:
                    yield future.result()
                except Exception as error:
                    raise RuntimeError(f"worker failed on item {position}: {type(error).__name__}: {error}") from error
        finally:
            for future in futures:
                future.cancel()
