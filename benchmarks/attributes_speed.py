"""Benchmark: the build's per-sample audit attributes, compiled (Numba) against the NumPy form.

LFW photos are decoded and fitted once (dlib's 68 points, the build's ``center`` selection);
then ``face_attributes(image, landmarks, raw=False)`` — what the build's shard task measures
for every decoded sample — runs over all of them with the compiled white reference and
corrected ITA and with the NumPy form, in alternating rounds (the host is shared: a ratio
within one run, medians over rounds). Also prints how many faces got different values (the
two forms are meant to be bit-identical).

    MASKGEN_DATA_HOME=../shared/data python benchmarks/attributes_speed.py
    MASKGEN_DATA_HOME=../shared/data python benchmarks/attributes_speed.py --faces 300 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    import cv2

    cv2.setNumThreads(1)  # as in a build's task
    from maskgen.data_home import data_home
    from maskgen.datasets import attributes as A
    from maskgen.masks import decode_image, detect_faces

    lfw = Path(os.environ.get("MASKGEN_DATA_HOME") or data_home()) / "lfw"
    paths = sorted(lfw.rglob("*.jpg"))
    if not paths:
        raise SystemExit(f"no LFW images under {lfw}")
    step = max(1, len(paths) // args.faces)
    cases = []
    for p in paths[::step]:
        img, _ = decode_image(p.read_bytes())
        faces = detect_faces(img, backend="dlib", select="center") if img is not None else []
        if faces:
            cases.append((img, np.asarray(faces[0].landmarks, np.float32)))
        if len(cases) >= args.faces:
            break
    forms = {"compiled": True, "numpy": False}
    for compiled in forms.values():  # warm up (loads the compiled kernels from Numba's cache)
        A._kernel(compiled)
        for img, lm in cases[:5]:
            _attrs(A, img, lm, compiled)
    times: dict[str, list[float]] = {k: [] for k in forms}
    for r in range(args.rounds):
        for name in (forms if r % 2 == 0 else reversed(list(forms))):
            t = time.perf_counter()
            for img, lm in cases:
                _attrs(A, img, lm, forms[name])
            times[name].append((time.perf_counter() - t) / len(cases) * 1e3)
    diff = sum(_attrs(A, img, lm, True) != _attrs(A, img, lm, False) for img, lm in cases)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{len(cases)} LFW faces, {args.rounds} rounds (alternating order)")
    for k, v in times.items():
        print(f"  {k:9s} median {med[k]:.3f} ms per face (rounds: {', '.join(f'{x:.3f}' for x in v)})")
    print(f"  speed-up {med['numpy'] / med['compiled']:.2f}x; faces whose attributes differ between the forms: {diff}")


def _attrs(A, img, lm, compiled: bool) -> dict:
    """``face_attributes(img, lm, raw=False)`` with the chosen form of the two kernels."""
    old = os.environ.get("MASKGEN_NUMPY_KERNELS")
    try:
        if compiled:
            os.environ.pop("MASKGEN_NUMPY_KERNELS", None)
        else:
            os.environ["MASKGEN_NUMPY_KERNELS"] = "1"
        return A.face_attributes(img, lm, raw=False)
    finally:
        if old is None:
            os.environ.pop("MASKGEN_NUMPY_KERNELS", None)
        else:
            os.environ["MASKGEN_NUMPY_KERNELS"] = old


if __name__ == "__main__":
    main()
