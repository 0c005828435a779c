"""Mask throughput on one core: (a) LFW 250x250 photos with detection, (b) the same faces as
112x112 ArcFace-aligned crops in aligned mode (no detection).

Per image (a) times decode + detection with the ``dlib`` backend, named explicitly (HOG + 68
landmarks + pose; whatever the default backend is) + mask; (b) times decode of the JPEG crop +
landmark fit in the known box + pose + mask. The mask is the full render: a 3D mask on the
head fitted to the landmarks, lit from the face, with loops, contact shadow, blur and noise;
each image gets a seeded draw from the default mix (``MaskSpec.random``, as a build). Aligned
mode fits maskgen's compact model when it has been built (`maskgen landmarks-model`, once per
machine), else dlib's. Files are read into memory first (disk is not measured). One thread
(cv2.setNumThreads(1)), one process. Success = a mask was placed
with a fit score >= 0.9 (nose and mouth covered, eyes free, inside the image and the aligned
crop, no fold; see docs/masks.md "Fit score").

The machine may be shared: images/s per core are counted in process CPU time (time actually
spent on a core), over the whole run and in the least disturbed window of 100 images; wall-clock
figures and a reference workload timed in the same run (the dlib shape predictor on a fixed
face, memory-bound C++ that load inflates like everything else) come with them, so that runs on
a noisy machine can be compared by their ratio to the reference.

    python benchmarks/mask_throughput.py [--n 1000] [--data-home DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from maskgen.data_home import dataset_dir
from maskgen.masks import MaskSpec, align_face, decode_image, detect_faces, get_detector, mask_face
from maskgen.masks.api import get_template

FIT_OK = 0.9
CHUNK = 100
MASKTHEFACE_REF = {"250x250 with detection": "about 20 images/s", "112x112 aligned": "30-45 images/s"}


def _files(n: int, data_home: str | None) -> list[Path]:
    lfw = dataset_dir("lfw", data_home)
    files = sorted(lfw.glob("*/*.jpg"))
    if not files:
        sys.exit(f"no LFW images under {lfw} (set MASKGEN_DATA_HOME)")
    step = max(1, len(files) // n)
    return files[::step][:n]


def _reference(n: int = 200) -> tuple[float, float]:
    """(wall ms, cpu ms) per call of the 68-point predictor on a fixed box: a yardstick that load
    inflates like everything else (it is memory-bound, ~65 MB of regression trees)."""
    det = get_detector("dlib")
    img = np.zeros((250, 250), np.uint8)
    cv2.circle(img, (125, 125), 60, 200, -1)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        det.fit(img, (70, 70, 180, 180))
    return (time.perf_counter() - t) / n * 1e3, (time.process_time() - c) / n * 1e3


def _run(label: str, items: list[bytes], backend: str, select: str, specs: list[MaskSpec]):
    """Decode + landmarks + mask per item, timed per stage in process CPU time."""
    ok = good = 0
    landmarks = []
    cpu = {"decode": 0.0, "landmarks+pose": 0.0, "mask": 0.0}
    t_wall = time.perf_counter()
    t_cpu = t_win = time.process_time()
    windows: list[float] = []
    for i, data in enumerate(items):
        c0 = time.process_time()
        img, reason = decode_image(data)
        c1 = time.process_time()
        cpu["decode"] += c1 - c0
        if img is None:
            landmarks.append(None)
        else:
            faces = detect_faces(img, backend=backend, select=select)
            c2 = time.process_time()
            cpu["landmarks+pose"] += c2 - c1
            res = mask_face(img, specs[i], seed=i, faces=faces)
            cpu["mask"] += time.process_time() - c2
            ok += res.ok
            good += res.ok and res.fit >= FIT_OK
            landmarks.append((img, res.faces[0].landmarks) if res.ok else None)
        if (i + 1) % CHUNK == 0:  # per-window CPU time: the least disturbed window is reported too
            now = time.process_time()
            windows.append(now - t_win)
            t_win = now
    wall = time.perf_counter() - t_wall
    total = time.process_time() - t_cpu
    n = len(items)
    best = CHUNK / min(windows) if windows else n / total
    print(
        f"{label:<34} {n:5d} images  {n / wall:7.1f} img/s wall  {n / total:7.1f} img/s cpu  "
        f"(best {CHUNK}-image window {best:7.1f})  success {100.0 * good / n:6.2f}% (fit>={FIT_OK})  "
        f"masked {100.0 * ok / n:6.2f}%"
    )
    print("    cpu ms/image: " + ", ".join(f"{k} {v / n * 1e3:.2f}" for k, v in cpu.items()))
    return landmarks, n / wall, n / total, good / n, total / n * 1e3, best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--data-home", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    cv2.setNumThreads(1)
    files = _files(args.n, args.data_home)
    raw = [f.read_bytes() for f in files]
    rng = np.random.default_rng(args.seed)
    specs = [MaskSpec.random(rng) for _ in raw]
    for s in set(specs):  # designs are cached per process; build them before timing
        get_template(s)
    get_detector("dlib")
    aligned = get_detector("aligned")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"maskgen mask throughput, one thread, {len(raw)} LFW photos; load average {load:.1f} on {os.cpu_count()} cpus")
    print(f"aligned mode fits {'maskgen' if aligned.model == 'compact' else 'dlib'}'s 68-point model"
          + ("" if aligned.model == "compact" else " (build the compact one with `maskgen landmarks-model`)"))
    ref0 = _reference()

    lms, a_wall, a_cpu, a_ok, a_ms, a_best = _run("(a) 250x250, dlib detection", raw, "dlib", "center", specs)
    crops = []
    for item in lms:
        if item is None:
            continue
        img, lm = item
        crop = align_face(img, lm, 112)
        ok, enc = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        crops.append(enc.tobytes())
    _, b_wall, b_cpu, b_ok, b_ms, b_best = _run("(b) 112x112 aligned, no detection", crops, "aligned", "all", specs)
    ref1 = _reference()

    ref_wall = 0.5 * (ref0[0] + ref1[0])
    ref_cpu = 0.5 * (ref0[1] + ref1[1])
    print(f"reference: 68-point predictor {ref_cpu:.3f} ms cpu / {ref_wall:.3f} ms wall per call in this run "
          f"(before {ref0[1]:.3f}, after {ref1[1]:.3f} ms cpu)")
    print(f"relative:  (a) {a_ms / ref_cpu:.2f} and (b) {b_ms / ref_cpu:.2f} predictor calls of cpu per image")
    print("targets:   (a) >= 100 img/s per core, (b) >= 300 img/s per core, success >= 99%")
    # the verdict is the whole run's figure; the best window only shows how much the host varied
    print(f"result:    (a) {a_cpu:.0f} img/s per core over the run "
          f"({'meets' if a_cpu >= 100 else 'below'} target; {a_best:.0f} in the best window), success {100 * a_ok:.2f}%;"
          f" (b) {b_cpu:.0f} img/s per core over the run "
          f"({'meets' if b_cpu >= 300 else 'below'} target; {b_best:.0f} in the best window), success {100 * b_ok:.2f}%")
    print("context:   MaskTheFace on one core (published/measured by its users, not run here): "
          + "; ".join(f"{k}: {v}" for k, v in MASKTHEFACE_REF.items()))
    print(f"speed-up:  (a) {a_cpu / 20.0:.1f}x MaskTheFace's ~20 img/s; (b) {b_cpu / 45.0:.1f}x-{b_cpu / 30.0:.1f}x its 30-45 img/s")


if __name__ == "__main__":
    main()
