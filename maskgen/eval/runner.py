"""Embedding many images: in-process, or on Ray actors that each hold one copy of the model.

The chunk of images is the unit of work; the cache is saved after every few chunks so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from maskgen.eval.cache import EmbeddingCache
from maskgen.eval.extract import ExtractConfig, ImageJob, ImageRecord, process_jobs
from maskgen.training.progress import progress_line

log = logging.getLogger(__name__)


def _chunks(jobs: list[ImageJob], size: int) -> list[list[ImageJob]]:
    return [jobs[i:i + size] for i in range(0, len(jobs), size)]


def pending_jobs(jobs: list[ImageJob], cache: EmbeddingCache) -> list[ImageJob]:
    """The jobs with at least one variant not yet in the cache (only those variants kept)."""
    out = []
    for j in jobs:
        todo = tuple(v for v in j.variants if not cache.has(j.key, v))
        if todo:
            lm = cache.landmarks.get(j.key)
            out.append(ImageJob(j.key, j.path, j.data, todo, lm,
                                cache.meta.get(j.key, {}).get("landmark_status", "") if lm is not None else ""))
    return out


def embed_images(jobs: list[ImageJob], model: str, cfg: ExtractConfig, cache: EmbeddingCache,
                 workers: int = 1, chunk_size: int = 32, device: str = "cpu",
                 save_every: int = 8, progress: Callable[[str], None] | None = None) -> dict:
    """Fill ``cache`` with every (image, variant) of ``jobs``; returns timing figures."""
    todo = pending_jobs(jobs, cache)
    n_img = len(todo)
    t0 = time.perf_counter()
    chunks = _chunks(todo, chunk_size)
    say = progress or (lambda s: log.info(s))
    done = 0

    def consume(records: list[ImageRecord], chunk: list[ImageJob], i: int) -> None:
        nonlocal done
        for rec, job in zip(records, chunk):
            cache.add(rec, job.variants)
        done += len(chunk)
        if (i + 1) % save_every == 0 or done == n_img:
            cache.save()
            say(progress_line("embedded", done, n_img, time.perf_counter() - t0, "images"))

    if chunks and workers <= 1:
        from maskgen.eval.embedders import load_embedder

        emb = load_embedder(model, device=device)
        for i, chunk in enumerate(chunks):
            consume(process_jobs(chunk, emb, cfg), chunk, i)
    elif chunks:
        _run_ray(chunks, model, cfg, workers, device, consume)
    cache.save()
    dt = time.perf_counter() - t0
    return {"images_embedded": n_img, "seconds": dt, "images_per_s": n_img / dt if dt > 0 and n_img else None,
            "workers": workers}


def _run_ray(chunks: list[list[ImageJob]], model: str, cfg: ExtractConfig, workers: int,
             device: str, consume: Callable) -> None:
    import ray

    # Ray hides GPUs from actors that do not ask for one: "auto" means the CPU there
    device = "cpu" if device == "auto" else device
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
        started = True

    @ray.remote(num_cpus=1)
    class _Worker:
        def __init__(self, model: str, device: str) -> None:
            import os

            os.environ.setdefault("OMP_NUM_THREADS", "1")
            from maskgen.eval.embedders import load_embedder

            self.emb = load_embedder(model, device=device)

        def run(self, chunk: list[ImageJob], cfg: ExtractConfig) -> list[ImageRecord]:
            return process_jobs(chunk, self.emb, cfg)

    if not started:
        # Joining an instance that is already busy: ask only for the CPUs that are free, or the
        # actors would wait for CPUs forever.
        free_cpus = int(ray.available_resources().get("CPU", 0))
        workers = max(1, min(workers, free_cpus))
    actors: list = []
    try:
        actors = [_Worker.remote(model, device) for _ in range(workers)]
        cfg_ref = ray.put(cfg)
        inflight: dict = {}
        it = iter(enumerate(chunks))
        free = list(actors) * 2  # two chunks queued per actor keeps them busy
        finished = 0
        while True:
            while free:
                nxt = next(it, None)
                if nxt is None:
                    break
                i, chunk = nxt
                a = free.pop()
                inflight[a.run.remote(chunk, cfg_ref)] = (a, chunk)
            if not inflight:
                break
            ready, _ = ray.wait(list(inflight), num_returns=1)
            a, chunk = inflight.pop(ready[0])
            consume(ray.get(ready[0]), chunk, finished)
            finished += 1
            free.append(a)
    finally:
        for a in actors:  # free their CPUs on a Ray instance that outlives this call
            ray.kill(a)
        if started:
            ray.shutdown()
