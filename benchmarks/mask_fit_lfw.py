"""Fit score distribution on LFW: every design x wear mode, judged in the aligned 112x112 crop
(what a build's default output keeps) and in the whole photo, plus what the score rejects.

Also reports, for correct wear, how often the upper nose bridge (landmark index 28, 0-based),
the nose tip and the mouth are covered and whether any eye point is. One process, one thread.

    python benchmarks/mask_fit_lfw.py [--n 300] [--data-home DIR]
"""

from __future__ import annotations

import argparse
import sys

import cv2
import numpy as np

from maskgen.data_home import dataset_dir
from maskgen.masks import MASK_TYPES, WEAR_MODES, MaskSpec, detect_faces, load_image, mask_face

THRESHOLDS = (0.5, 0.8, 0.9)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--data-home", default=None)
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    files = sorted(dataset_dir("lfw", args.data_home).glob("*/*.jpg"))
    if not files:
        sys.exit("no LFW images (set MASKGEN_DATA_HOME)")
    faces = []
    for f in files[:: max(1, len(files) // args.n)]:
        img, _ = load_image(f)
        found = detect_faces(img, backend="dlib", select="center") if img is not None else []
        if found:
            faces.append((img, found[0]))
        if len(faces) == args.n:
            break
    yaws = np.array([abs(f.pose[0]) for _, f in faces])
    print(f"{len(faces)} LFW faces (every {max(1, len(files) // args.n)}th photo, dlib HOG + 68 points); "
          f"|yaw| median {np.median(yaws):.0f}, max {yaws.max():.0f} degrees")
    print(f"{'design':<9} {'wear':<11} {'frame':<8} {'p1':>5} {'p5':>5} {'p25':>5} {'p50':>5} "
          + " ".join(f"{'>=' + str(t):>6}" for t in THRESHOLDS))
    for kind in MASK_TYPES:
        for wear in WEAR_MODES:
            for frame in ("aligned", "image"):
                fits, cov = [], []
                for i, (img, face) in enumerate(faces):
                    res = mask_face(img, MaskSpec(type=kind, wear=wear), seed=i, faces=[face], fit_frame=frame)
                    fits.append(res.fit)
                    if wear == "correct" and frame == "aligned":
                        xy = np.round(face.landmarks).astype(int)
                        h, w = res.alpha.shape
                        cov.append(res.alpha[np.clip(xy[:, 1], 0, h - 1), np.clip(xy[:, 0], 0, w - 1)] > 0.5)
                f = np.array(fits)
                p = np.percentile(f, [1, 5, 25, 50])
                print(f"{kind:<9} {wear:<11} {frame:<8} " + " ".join(f"{x:5.2f}" for x in p) + " "
                      + " ".join(f"{100 * np.mean(f >= t):5.1f}%" for t in THRESHOLDS))
                if cov:
                    c = np.array(cov)
                    print(f"    correct wear coverage: lm[28] {100 * c[:, 28].mean():.1f}%, nose tip {100 * c[:, 30].mean():.1f}%, "
                          f"mouth (48-67) all {100 * c[:, 48:68].all(1).mean():.1f}%, any eye point {100 * c[:, 36:48].any(1).mean():.1f}%")


if __name__ == "__main__":
    main()
