"""Ray plumbing of the build: run tasks in a bounded window (Ray itself is started by
:func:`maskgen.parallel.start_ray`, the one start of every stage).

The window keeps at most ``workers`` tasks in flight, so memory stays bounded by a few shards
however large the dataset, and ``workers=1`` really runs one task at a time even on a bigger
Ray instance (as the reproducibility check needs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def one_thread() -> None:
    """A task holds one Ray CPU: keep OpenCV's own thread pool from taking the others (it
    would oversubscribe the cores that the other tasks were given)."""
    import cv2

    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


def driver_memory() -> dict[str, float]:
    """This process's resident memory now and its peak so far, in MiB (Linux: from
    ``/proc/self/status``; elsewhere the peak only, from ``getrusage``)."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out["rss" if line.startswith("VmRSS") else "peak"] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        out["peak"] = round(peak / (2**20 if sys.platform == "darwin" else 1024), 1)
    return out


def release_memory() -> None:
    """Hand freed memory back to the system at the end of a driver stage: Arrow's pool keeps
    freed buffers, and glibc keeps freed heap pages (the Python objects of a stage's task
    payloads and results) that would otherwise add up, stage after stage, in the driver's
    peak RSS. Changes nothing but the process's footprint."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None


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
