"""Fit score distribution on LFW: every design x wear mode, judged in the aligned 112x112 crop
(what a build's default output keeps) and in the whole photo, plus what the score rejects.

Then the same on deliberately bad renders: a correct-wear surgical mask placed from landmarks
moved up, down or sideways (scored against the true landmarks), and masks on the mean face
turned to extreme yaw. Also reports, for correct wear, how often the upper nose bridge (landmark index 28, 0-based),
the nose tip and the mouth are covered and whether any eye point is. One process, one thread.

    python benchmarks/mask_fit_lfw.py [--n 300] [--data-home DIR]
"""

from __future__ import annotations

import argparse
import sys

import cv2
import numpy as np

from maskgen.data_home import dataset_dir
from maskgen.masks import MASK_TYPES, WEAR_MODES, MaskSpec, detect_faces, fit_score, load_image, mask_face

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
    print("bad renders (surgical, correct wear), scored against the true landmarks:")
    for name, move in (("placed 0.35 IOD too high", (0.0, -0.35)), ("placed 0.6 IOD too low", (0.0, 0.6)),
                       ("placed 0.4 IOD aside", (0.4, 0.0))):
        fits = []
        for i, (img, face) in enumerate(faces):
            lm = face.landmarks.astype(np.float64)
            iod = float(np.linalg.norm(lm[42:48].mean(0) - lm[36:42].mean(0)))
            res = mask_face(img, MaskSpec(type="surgical"), seed=i, faces=[lm + np.array(move) * iod])
            fits.append(fit_score(res.alpha, lm, "correct") if res.ok else 0.0)
        f = np.array(fits)
        print(f"    {name:<26} p50 {np.median(f):.2f}  p95 {np.percentile(f, 95):.2f}  >=0.9 {100 * np.mean(f >= 0.9):5.1f}%")
    blank = np.full((250, 250, 3), 128, np.uint8)
    for yaw in (45, 60, 70, 80):
        fits = [mask_face(blank, MaskSpec(type=k), seed=0, faces=[_mean_face_at(yaw)]).fit for k in MASK_TYPES]
        print(f"    mean face at yaw {yaw}: fit " + ", ".join(f"{k} {f:.2f}" for k, f in zip(MASK_TYPES, fits)))


def _mean_face_at(yaw: float) -> np.ndarray:
    """68 landmarks of the mean 3D face turned by ``yaw`` degrees, in a 250x250 image."""
    from maskgen.masks.pose import MEAN_SHAPE_3D

    r, _ = cv2.Rodrigues(np.array([0.0, np.radians(yaw), 0.0]))
    p = MEAN_SHAPE_3D @ r.T + (0.0, 0.0, 750.0)
    return (p[:, :2] / p[:, 2:] * 750.0 + 125.0).astype(np.float32)


if __name__ == "__main__":
    main()
