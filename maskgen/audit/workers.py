"""Pixel work of the audit in worker processes, with progress lines.

The audit's main process never decodes an image: a hostile or huge file can cost a worker,
never the report. Work goes out in chunks to a pool of spawned processes (spawned, not forked:
no inherited threads or locks) and comes back in order, so results do not depend on the
number of workers. Long runs report on a :class:`maskgen.progress.Progress` (done/total,
images/s, ETA).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import TYPE_CHECKING, Any

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
    unfinished chunks are retried item by item, and an item that kills a worker on its own
    gets ``on_crash(item, reason)`` as its result (without ``on_crash`` the error is raised).
    """
    if not chunks:
        return []
    ctx = multiprocessing.get_context("spawn")
    done: dict[int, list[Any]] = {}
    singles: dict[int, dict[int, Any]] = {}  # results of chunks retried item by item
    # a task is (chunk index, None) for a whole chunk or (chunk index, item index)
    tasks: list[tuple[int, int | None]] = [(i, None) for i in range(len(chunks))]
    for phase in range(3):  # all chunks; then the unfinished items; then those one at a time
        broken = _run_pool(fn, chunks, tasks, done, singles, ctx, workers if phase < 2 else 1,
                           progress, one_by_one=phase == 2)
        if not broken:
            break
        if on_crash is None:
            raise RuntimeError("an audit worker process died (out of memory or a crash)")
        if phase == 2:  # each of these ran alone and still killed its worker
            for ci, k in broken:
                singles.setdefault(ci, {})[k] = on_crash(chunks[ci][k], "worker process died")
            break
        tasks = sorted({(ci, k) for ci, kk in broken
                        for k in (range(len(chunks[ci])) if kk is None else [kk])
                        if k not in singles.get(ci, {})})
    for ci, items in singles.items():
        if len(items) == len(chunks[ci]):
            done[ci] = [items[k] for k in range(len(chunks[ci]))]
    return [done.get(i, []) for i in range(len(chunks))]


def _run_pool(fn, chunks, tasks, done, singles, ctx, workers, progress, one_by_one):
    """Run ``tasks``; returns the tasks a broken pool left unfinished (all of them when
    several ran together, the ones that died alone when ``one_by_one``); empty: all done."""
    from concurrent.futures.process import BrokenProcessPool

    crashed: list[tuple[int, int | None]] = []
    queue = list(tasks)
    while queue:
        batch = queue[:1] if one_by_one else queue
        queue = queue[1:] if one_by_one else []
        with ProcessPoolExecutor(max_workers=max(1, min(workers, len(batch))),
                                 mp_context=ctx) as ex:
            pending = {}
            for ci, k in batch:
                items = chunks[ci] if k is None else [chunks[ci][k]]
                pending[ex.submit(fn, items)] = (ci, k)
            lost: list[tuple[int, int | None]] = []
            while pending and not lost:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    task = pending.pop(fut)
                    try:
                        res = fut.result()
                    except BrokenProcessPool:
                        lost.append(task)
                        continue
                    ci, k = task
                    if k is None:
                        done[ci] = res
                    else:
                        singles.setdefault(ci, {})[k] = res[0]
                    if progress is not None:
                        progress.advance(len(chunks[ci]) if k is None else 1)
            if lost:
                if not one_by_one:
                    return lost + list(pending.values()) + queue
                crashed.append(batch[0])  # this item killed its own worker
    return crashed
