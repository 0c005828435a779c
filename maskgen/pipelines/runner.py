"""Ray plumbing: start (or join) Ray once, run tasks in a bounded window.

The window keeps at most ``workers`` tasks in flight, so memory stays bounded by a few shards
however large the dataset, and ``workers=1`` really runs one task at a time even on a bigger
Ray instance (as the reproducibility check needs).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

OBJECT_STORE_BYTES = 200 * 1024 * 1024  # task payloads are small: part paths, per-identity slices, counts


def start_ray(workers: int | None, ray_address: str | None) -> tuple[bool, str]:
    """Initialise Ray unless it already is; returns (this call started it, what it did).

    Without ``ray_address`` a build always starts its own local instance
    (``address="local"``): it never attaches to a ``ray start`` cluster that happens to run
    on the machine, nor follows ``RAY_ADDRESS`` or a stale address file. With
    ``ray_address`` (``auto`` or ``HOST:PORT``) it joins that cluster and runs every stage
    there; then inputs and outputs must be on a file system every node sees.
    """
    import ray

    if ray.is_initialized():
        return False, f"using the Ray instance already initialised in this process ({cluster_cpus()} CPUs)"
    # Workers must import maskgen from the same install; no runtime-env packaging needed.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    if ray_address:
        ray.init(address=ray_address, log_to_driver=True, configure_logging=False)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        return True, f"joined the Ray cluster at {ray_address} ({cluster_cpus()} CPUs on {len(nodes)} node(s))"
    saved = os.environ.pop("RAY_ADDRESS", None)  # "local" must not be overridden by the environment
    try:
        ray.init(
            address="local",
            num_cpus=workers or os.cpu_count() or 1,
            include_dashboard=False,
            object_store_memory=OBJECT_STORE_BYTES,
            log_to_driver=True,
            configure_logging=False,
        )
    finally:
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved
    return True, f"started a local Ray with {workers or os.cpu_count()} CPUs (not attached to any running cluster)"


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


def error_line(error: BaseException) -> str:
    """One line naming what went wrong in a task (the cause inside Ray's wrapper)."""
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"[:500]
