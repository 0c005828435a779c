"""Calibration of the absolute sharpness bins (``SHARPNESS_EDGES`` in maskgen/audit/stats.py).

    python benchmarks/audit_sharpness.py [--n 200]

Sharpness is the variance of the Laplacian of the face region resampled to 96x96
(``maskgen.datasets.attributes.sharpness_of``). The script measures it on real faces (LFW, and
FairFace when its landmark cache from ``benchmarks/audit_skin_tone.py`` exists) as they are,
blurred with a Gaussian of sigma 0.5 to 3 px at the 96-px scale, and downscaled 4x (a face of
about 25 px), and prints the medians and 10th percentiles the bin edges are read from.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SIGMAS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)


def measure(img: np.ndarray, lm: np.ndarray, src: str) -> dict:
    import cv2

    from maskgen.datasets.attributes import SHARPNESS_SIZE, face_regions, sharpness_of

    _, _, face, _, _ = face_regions(img, lm)
    row: dict = {"source": src, "face_px": face.shape[1]}
    for s in SIGMAS:
        f = face if s == 0 else cv2.GaussianBlur(face, (0, 0), s * face.shape[1] / SHARPNESS_SIZE)
        row[f"sigma {s:g}"] = sharpness_of(cv2.cvtColor(np.ascontiguousarray(f),
                                                        cv2.COLOR_RGB2GRAY))
    small = cv2.resize(face, (max(3, face.shape[1] // 4), max(3, face.shape[0] // 4)),
                       interpolation=cv2.INTER_AREA)
    row["downscaled 4x"] = sharpness_of(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="faces per dataset")
    args = ap.parse_args(argv)
    from maskgen.masks.imageio import load_image
    from maskgen.masks.landmarks import detect_faces

    home = Path(os.environ.get("MASKGEN_DATA_HOME", ROOT.parent / "shared" / "data"))
    rows = []
    lfw = sorted((home / "lfw").glob("*/*.jpg"))
    if not lfw:
        print(f"LFW not found in {home}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    for i in rng.choice(len(lfw), min(args.n, len(lfw)), replace=False):
        img, _ = load_image(lfw[i])
        faces = detect_faces(img) if img is not None else []
        if faces:
            rows.append(measure(img, faces[0].landmarks, "lfw"))
    cache = ROOT / "build" / "fairface-landmarks.parquet"
    if cache.is_file():
        ff = pd.read_parquet(cache)
        ff = ff[ff["status"] == "ok"].iloc[: args.n]
        for f, lm in zip(ff["file"], ff["landmarks"]):
            img, _ = load_image(home / "fairface-val" / f)
            rows.append(measure(img, np.asarray(lm, np.float32).reshape(68, 2), "fairface"))
    df = pd.DataFrame(rows)
    cols = [c for c in df.columns if c != "source"]
    for q, name in ((0.5, "median"), (0.1, "10th percentile")):
        t = df.groupby("source")[cols].quantile(q).round(1)
        print(f"\n{name} (faces: " + ", ".join(f"{k} {v}" for k, v in
                                            df["source"].value_counts().items()) + ")\n")
        print("| | " + " | ".join(t.index) + " |\n|---|" + "---|" * len(t.index))
        for c in cols:
            print(f"| {c} | " + " | ".join(f"{t.loc[s, c]:g}" for s in t.index) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
