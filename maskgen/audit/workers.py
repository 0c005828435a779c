"""Pixel work of the audit in worker processes, with progress lines.

The audit's main process never decodes an image: a hostile or huge file can cost a worker,
never the report. Work goes out in chunks to helper processes (:class:`maskgen.helper.Helper`:
plain ``python -m`` processes, which inherit no threads or locks and never import the caller's
main module, so a script without a main guard is not run again) and comes back in order, so
results do not depend on the number of workers. Long runs report on a
:class:`maskgen.progress.Progress` (done/total, images/s, ETA).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from maskgen.helper import Helper, HelperCallError, HelperError

if TYPE_CHECKING:
    from maskgen.progress import Progress


def chunked(items: Sequence, size: int) -> list[list]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def map_in_workers(fn: Callable[[list], list], chunks: list[list], *, workers: int = 1,
                   progress: Progress | None = None,
                   on_crash: Callable[[Any, str], Any] | None = None) -> list[list[Any]]:
    """``[fn(c) for c in chunks]``, each call in a worker process; results in chunk order.

    ``fn`` must be a module-level function (it is pickled by name) returning one result per
    item of its chunk; ``progress`` advances by the chunk's length as chunks finish.
    A worker that dies (out of memory, a crashing decoder) costs only its own items: the
    items of its chunk are retried one per call, and an item that kills a worker on its own
    gets ``on_crash(item, reason)`` as its result (without ``on_crash`` the error is raised).
    An exception ``fn`` raises is raised here as a RuntimeError with its text.
    """
    if not chunks:
        return []
    done: dict[int, list[Any]] = {}
    singles: dict[int, dict[int, Any]] = {}  # results of chunks retried item by item
    # a task is (chunk index, None) for a whole chunk or (chunk index, item index)
    lost = _run(fn, chunks, [(i, None) for i in range(len(chunks))], done, singles, workers, progress)
    if lost:
        if on_crash is None:
            raise RuntimeError("an audit worker process died (out of memory or a crash)")
        items = [(ci, k) for ci, _ in lost for k in range(len(chunks[ci]))]
        for ci, k in _run(fn, chunks, items, done, singles, workers, progress):
            singles.setdefault(ci, {})[k] = on_crash(chunks[ci][k], "worker process died")  # it died alone
    for ci, items in singles.items():
        if len(items) == len(chunks[ci]):
            done[ci] = [items[k] for k in range(len(chunks[ci]))]
    return [done.get(i, []) for i in range(len(chunks))]


def _run(fn, chunks, tasks, done, singles, workers, progress) -> list[tuple[int, int | None]]:
    """Run ``tasks`` on up to ``workers`` helper processes (one thread feeding each); returns
    the tasks whose helper died while running them (each died on its own task: a helper runs
    one at a time, and a fresh one takes over the rest)."""
    queue = deque(tasks)
    lock = threading.Lock()
    lost: list[tuple[int, int | None]] = []
    errors: list[str] = []

    def feed() -> None:
        helper = Helper(preload=(fn.__module__,))
        try:
            while True:
                with lock:
                    if not queue or errors:
                        return
                    ci, k = queue.popleft()
                if not helper.alive:
                    with lock:
                        errors.append("cannot start a worker process")
                    return
                try:
                    res = helper.call(fn, chunks[ci] if k is None else [chunks[ci][k]])
                except HelperError:  # it died on this task: a fresh helper for the next ones
                    with lock:
                        lost.append((ci, k))
                    helper = Helper(preload=(fn.__module__,))
                    continue
                except HelperCallError as exc:
                    with lock:
                        errors.append(str(exc))
                    return
                with lock:
                    if k is None:
                        done[ci] = res
                    else:
                        singles.setdefault(ci, {})[k] = res[0]
                    if progress is not None:
                        progress.advance(len(chunks[ci]) if k is None else 1)
        finally:
            helper.close()

    threads = [threading.Thread(target=feed, name=f"maskgen-worker-{i}", daemon=True)
               for i in range(max(1, min(workers, len(tasks))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"an audit worker failed: {errors[0]}")
    return sorted(lost)
