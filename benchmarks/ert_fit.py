"""Per-face cost of the batched 68-point fits: the Numba kernel against the NumPy form.

    MASKGEN_DATA_HOME=<data folder> python benchmarks/ert_fit.py [--n 600] [--repeats 3]

Fits dlib's 68-point model in the fast-path HOG boxes of every k-th LFW photo (one process,
one thread), compiled (``maskgen.masks.ert_kernel``) and in NumPy, in the same run, and prints
CPU-ms per face, the ratio, and whether the float32 shapes are the same bits.
"""

from __future__ import annotations

import argparse
import sys
import time

import cv2
import numpy as np

from maskgen.data_home import dataset_dir
from maskgen.masks.landmarks import get_detector


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600, help="LFW photos (evenly spaced)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-home", default=None)
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    files = sorted(dataset_dir("lfw", args.data_home).glob("*/*.jpg"))
    if not files:
        sys.exit("no LFW images (set MASKGEN_DATA_HOME)")
    files = files[:: max(1, len(files) // args.n)][: args.n]
    det = get_detector("dlib")
    model = det.batch_model
    grays, boxes = [], []
    for f in files:
        g = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        for box, _ in det._fast_boxes(g):
            grays.append(g)
            boxes.append([int(round(v)) for v in box])
    b = np.array(boxes, np.float64)
    model.shapes(grays[:2], b[:2], compiled=True)  # compiled, or loaded from Numba's cache
    for _ in range(args.repeats):
        t = time.process_time()
        ref = model.shapes(grays, b, compiled=False)
        t_np = time.process_time() - t
        t = time.process_time()
        got = model.shapes(grays, b, compiled=True)
        t_nb = time.process_time() - t
        print(f"{len(grays)} faces: NumPy {t_np / len(grays) * 1e3:.3f} ms/face, Numba {t_nb / len(grays) * 1e3:.3f} "
              f"ms/face, {t_np / t_nb:.2f}x, same bits: {np.array_equal(ref, got)}")


if __name__ == "__main__":
    main()
