"""Ray plumbing: start (or join) Ray once, run tasks in a bounded window.

The window keeps at most ``workers`` tasks in flight, so memory stays bounded by a few shards
however large the dataset, and ``workers=1`` really runs one task at a time even on a bigger
Ray instance (as the reproducibility check needs).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

OBJECT_STORE_BYTES = 200 * 1024 * 1024  # task payloads are small: plan rows and stats only


def start_ray(workers: int | None, ray_address: str | None) -> bool:
    """Initialise Ray unless it already is; returns True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    # Workers must import maskgen from the same install; no runtime-env packaging needed.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    if ray_address:
        ray.init(address=ray_address, log_to_driver=True, configure_logging=False)
    else:
        ray.init(
            num_cpus=workers or os.cpu_count() or 1,
            include_dashboard=False,
            object_store_memory=OBJECT_STORE_BYTES,
            log_to_driver=True,
            configure_logging=False,
        )
    return True


def one_thread() -> None:
    """A task holds one Ray CPU: keep OpenCV's own thread pool from taking the others (it
    would oversubscribe the cores that the other tasks were given)."""
    import cv2

    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def run_window(
    fn: Callable[[Any], Any],
    tasks: Iterable[Any],
    max_in_flight: int,
    on_done: Callable[[Any, Any, BaseException | None], None],
) -> None:
    """Run ``fn(task)`` on Ray for every task, at most ``max_in_flight`` at once, calling
    ``on_done(task, result, error)`` in completion order on the driver."""
    import ray

    remote = ray.remote(num_cpus=1, max_retries=2)(fn)
    it = iter(tasks)
    pending: dict[Any, Any] = {}

    def submit() -> bool:
        try:
            t = next(it)
        except StopIteration:
            return False
        pending[remote.remote(t)] = t
        return True

    for _ in range(max(1, max_in_flight)):
        if not submit():
            break
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            task = pending.pop(ref)
            try:
                result, error = ray.get(ref), None
            except Exception as exc:  # a crashed task is reported, the build goes on
                result, error = None, exc
            on_done(task, result, error)
            submit()
