"""How much a second worker can add on this machine: each kernel of a build timed alone, then
with a copy of itself running on the other core at the same time.

A 1 -> 2 worker speed-up of a build can be no better than the speed-up of the kernels it spends
its time in. This prints, per kernel, ms per call alone and when paired, and the speed-up two
processes give (2 x alone / paired; 2.0 is perfect). On a 2-vCPU virtual machine whose vCPUs
share one physical core, or whose memory system is throttled, memory-bound kernels such as
dlib's 68-point predictor (~100 MB of regression trees read at random) gain little or nothing.

    MASKGEN_DATA_HOME=../shared/data python benchmarks/core_scaling.py [--seconds 4]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time

KERNELS = ("dlib 68-point predictor", "batched 68-point fit (per face)", "compact aligned predictor",
           "HOG detector (112 px)", "JPEG decode (250x250)", "mask on an aligned crop",
           "build landmarks stage (per image)", "pure Python")
# kernels whose one call handles a batch: times are divided by this many units
UNITS = {"batched 68-point fit (per face)": 128, "build landmarks stage (per image)": 128}


def _setup(name: str, data_home: str | None):
    """A zero-argument callable running one unit of ``name`` on real LFW data."""
    import cv2
    import numpy as np

    from maskgen.data_home import dataset_dir
    from maskgen.masks import MaskSpec, align_face, decode_image, detect_faces, get_detector, mask_face
    from maskgen.masks.landmarks import to_gray

    cv2.setNumThreads(1)
    every = 131 if name not in UNITS else 40
    files = sorted(dataset_dir("lfw", data_home).glob("*/*.jpg"))[::every][: max(40, UNITS.get(name, 0))]
    if not files:
        sys.exit("no LFW images (set MASKGEN_DATA_HOME)")
    raw = [f.read_bytes() for f in files]
    imgs = [decode_image(b)[0] for b in raw]
    faces = [detect_faces(im, select="center") for im in imgs]
    keep = [i for i, f in enumerate(faces) if f]
    it = iter(range(1 << 62))

    def pick(seq):
        return seq[keep[next(it) % len(keep)]]

    if name == "dlib 68-point predictor":
        det = get_detector("dlib")
        grays = [to_gray(im) for im in imgs]
        return lambda: (lambda k: det.fit(grays[k], faces[k][0].box))(pick(range(len(imgs))))
    if name == "batched 68-point fit (per face)":
        det = get_detector("dlib")
        grays = [to_gray(imgs[k]) for k in keep]
        boxes = [faces[k][0].box for k in keep]
        n = UNITS[name]
        def batch():
            k = next(it)
            idx = [(k + i) % len(grays) for i in range(n)]
            return det.fit_many([grays[i] for i in idx], [boxes[i] for i in idx])

        return batch
    if name == "compact aligned predictor":
        det = get_detector("aligned")
        crops = [to_gray(align_face(imgs[k], faces[k][0].landmarks)) for k in keep]
        box = (14, 26, 101, 116)
        return lambda: det.fit(crops[next(it) % len(crops)], box)
    if name == "HOG detector (112 px)":
        det = get_detector("dlib")
        smalls = [cv2.resize(to_gray(im)[45:205, 45:205], (112, 112), interpolation=cv2.INTER_AREA) for im in imgs]
        return lambda: det.detector.run(smalls[next(it) % len(smalls)], 0, 0.0)
    if name == "JPEG decode (250x250)":
        return lambda: decode_image(raw[next(it) % len(raw)])
    if name == "mask on an aligned crop":
        crops = [align_face(imgs[k], faces[k][0].landmarks) for k in keep]
        lms = [detect_faces(c, backend="aligned") for c in crops]
        specs = [MaskSpec.random(i) for i in range(len(crops))]

        def one():
            k = next(it) % len(crops)
            mask_face(crops[k], specs[k], seed=k, faces=lms[k])

        return one
    if name == "build landmarks stage (per image)":
        from maskgen.pipelines.analyze import analyze_rows

        rows = [{"source": "folder", "path": str(f), "offset": None, "nbytes": None, "_cache_key": str(f)} for f in files]
        return lambda: analyze_rows(rows[: UNITS[name]], "auto")  # one landmark task's chunk
    if name == "pure Python":
        return lambda: sum(i * i for i in range(3000))
    raise ValueError(name)


def _worker(name: str, data_home: str | None, seconds: float, start, out) -> None:
    fn = _setup(name, data_home)
    for _ in range(3):
        fn()
    start.wait()
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    out.put((time.perf_counter() - t0) / n * 1e3 / UNITS.get(name, 1))


def _timed(name: str, procs: int, data_home: str | None, seconds: float) -> list[float]:
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(procs)
    out = ctx.Queue()
    ps = [ctx.Process(target=_worker, args=(name, data_home, seconds, start, out)) for _ in range(procs)]
    for p in ps:
        p.start()
    res = [out.get() for _ in ps]
    for p in ps:
        p.join()
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3, help="alone/paired alternations; the best of each counts")
    ap.add_argument("--data-home", default=None)
    ap.add_argument("--kernels", nargs="*", default=list(KERNELS))
    args = ap.parse_args(argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"core scaling on {os.cpu_count()} cpus (load average {load:.1f}); {args.seconds:.0f} s per measurement, "
          f"{args.rounds} alternating rounds, best of each")
    print(f"{'kernel':36s} {'alone ms':>9s} {'paired ms':>10s} {'2-process speed-up':>19s}")
    for name in args.kernels:
        # alternate so that a change in the machine's state hits both figures alike
        alone, paired = [], []
        for _ in range(args.rounds):
            alone.append(_timed(name, 1, args.data_home, args.seconds)[0])
            p = _timed(name, 2, args.data_home, args.seconds)
            paired.append(sum(p) / len(p))
        a, b = min(alone), min(paired)
        print(f"{name:36s} {a:9.3f} {b:10.3f} {2 * a / b:18.2f}x", flush=True)


if __name__ == "__main__":
    main()
