"""A lower bound of the README main job on this host: the parts of a full LFW photo build that
no change inside maskgen can remove, measured, against the job's < 20 s target.

    MASKGEN_DATA_HOME=<data folder> python benchmarks/lfw_floor.py [--n 400] [--workers 2]

Per photo, in one process and one thread (as a build's task runs), over every k-th LFW photo:
the JPEG decode (a photo build decodes each photo twice: the landmark pass and the shard task),
dlib's HOG detector on the central fast-path crop (``DlibBackend._fast_boxes``, the cheapest
search a photo gets) and the batched 68-point fits in its boxes. Then a local Ray start as a
build does it (``maskgen.parallel.start_ray``, one trivial task per worker, so the workers are
up). The floor is

    Ray start + photos x (2 decodes + HOG + fits) / workers

and leaves out everything else the job does (pose, pHash, the audit attributes, masks,
alignment, JPEG encodes, JSON, the plan, the merge and the report), so the job cannot be
faster than it on this host with dlib's detector. A pure-Python loop of 10 M steps is printed as
a yardstick of the host's speed (hosts of this project have differed by 2.5x).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import cv2
import numpy as np

from maskgen.data_home import dataset_dir

TARGET_S = 20.0


def _python_loop() -> float:
    t = time.process_time()
    x = 0
    for i in range(10_000_000):
        x += i
    return time.process_time() - t


def _ray_start(workers: int) -> float:
    from maskgen.parallel import start_ray, stop_ray

    if not os.environ.get("RAY_TMPDIR"):  # Ray's files away from any cluster on the machine
        os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="maskgen-floor-ray-")
    t = time.perf_counter()
    start_ray(workers, quiet=True)
    import ray

    @ray.remote(num_cpus=1)
    def ping(i: int) -> int:
        import maskgen.masks.landmarks  # noqa: F401  (what a landmark task imports first)

        return i

    ray.get([ping.remote(i) for i in range(workers)])
    dt = time.perf_counter() - t
    stop_ray()
    return dt


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="LFW photos measured (evenly spaced)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data-home", default=None)
    args = ap.parse_args(argv)
    from maskgen.masks import decode_image
    from maskgen.masks.landmarks import get_detector, to_gray
    from maskgen.pipelines.runner import one_thread

    one_thread()
    all_files = sorted(dataset_dir("lfw", args.data_home).glob("*/*.jpg"))
    if not all_files:
        sys.exit("no LFW images (set MASKGEN_DATA_HOME)")
    files = all_files[:: max(1, len(all_files) // args.n)][: args.n]
    datas = [f.read_bytes() for f in files]
    det = get_detector("dlib")
    model = det.batch_model
    warm = to_gray(decode_image(datas[0])[0])
    model.shapes([warm], np.array([[60, 60, 180, 180]], np.float64), compiled=True)  # compile / load cache
    det._fast_boxes(warm)

    t = time.process_time()
    imgs = [decode_image(d)[0] for d in datas]
    t_dec = (time.process_time() - t) / len(datas)
    grays = [to_gray(im) for im in imgs]
    t = time.process_time()
    found = [det._fast_boxes(g) for g in grays]
    t_hog = (time.process_time() - t) / len(grays)
    fg = [g for g, bx in zip(grays, found) for _ in bx]
    fb = np.array([[int(round(v)) for v in box] for bx in found for box, _ in bx], np.float64)
    t = time.process_time()
    model.shapes(fg, fb, compiled=True)
    t_fit = (time.process_time() - t) / len(grays)
    loop = _python_loop()
    ray_s = _ray_start(args.workers)

    photos = len(all_files)
    per_photo = 2 * t_dec + t_hog + t_fit
    floor = ray_s + photos * per_photo / args.workers
    print(f"host yardstick: 10 M-step Python loop {loop:.2f} s")
    print(f"{len(files)} LFW photos, one thread, CPU-ms per photo: decode {t_dec * 1e3:.3f} (x2), "
          f"dlib HOG on the fast-path crop {t_hog * 1e3:.3f}, 68-point fits {t_fit * 1e3:.3f} "
          f"({len(fb)} boxes): {per_photo * 1e3:.3f}")
    print(f"local Ray start with {args.workers} workers up: {ray_s:.2f} s")
    print(f"floor of the README job ({photos:,} photos, {args.workers} workers): {floor:.1f} s "
          f"(Ray {ray_s:.1f} + HOG {photos * t_hog / args.workers:.1f} + fits {photos * t_fit / args.workers:.1f} "
          f"+ decodes {photos * 2 * t_dec / args.workers:.1f}); target < {TARGET_S:.0f} s: "
          f"{'reachable' if floor < TARGET_S else 'NOT reachable on this host'}"
          f" ({floor / TARGET_S:.2f}x the target before any other work)")


if __name__ == "__main__":
    main()
