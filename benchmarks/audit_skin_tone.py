"""Study: how far the ITA skin-tone estimate can be trusted on FairFace, and what moves it.

    python benchmarks/audit_skin_tone.py [--fairface DIR] [--cache build/fairface-landmarks.parquet]

FairFace's 5,000 validation crops carry perceived race labels. The script detects landmarks
once (dlib, cached in ``--cache``), then measures ITA on every detected face in several ways:

- ``baseline``: the landmark skin polygons, all their pixels (the audit before this study);
- ``skin-pixels``: the same polygons keeping only pixels that look like lit skin (no dark
  shadow, no grey/blue/green pixel, no highlight) -- "which pixels count as skin";
- ``grey-world``: the image white-balanced first (grey-world over the whole crop) -- white
  balance;
- ``both`` (what the audit now uses);
- ``exposure``: the L* shift of each face divided out by the brightness of the whole image
  (a diagnostic of lighting, not used by the audit: it would erase real differences too).

It prints, per variant: the share of each Del Bino bin, the share of "dark" among faces
labelled Black and among all faces, the ITA median per race label, the correlation of ITA
with the face's brightness, the rank agreement of ITA with race labels, and the cross-tab
of the ITA bins with brightness bins. Results are recorded in ``benchmarks/audit_skin_tone.md``
and summarised in ``docs/audit.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _detect_chunk(paths: list[str]) -> list[dict]:
    from maskgen.masks.imageio import load_image
    from maskgen.masks.landmarks import detect_faces, select_faces

    out = []
    for p in paths:
        img, reason = load_image(p)
        if img is None:
            out.append({"file": p, "status": "failed", "reason": reason})
            continue
        faces = detect_faces(img, backend="dlib")
        if not faces:
            out.append({"file": p, "status": "failed", "reason": "no face"})
            continue
        f = select_faces(faces, img.shape[:2], "center")[0]
        out.append({"file": p, "status": "ok",
                    "landmarks": np.asarray(f.landmarks, np.float32).ravel().tolist()})
    return out


def landmarks_cache(fairface: Path, cache: Path, workers: int) -> pd.DataFrame:
    """Landmarks of every FairFace validation crop (dlib), computed once."""
    if cache.is_file():
        return pd.read_parquet(cache)
    files = sorted((fairface / "val").glob("*.jpg"), key=lambda p: int(p.stem))
    chunks = [[str(p) for p in files[i:i + 100]] for i in range(0, len(files), 100)]
    rows: list[dict] = []
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as ex:
        for i, part in enumerate(ex.map(_detect_chunk, chunks)):
            rows += part
            if (i + 1) % 10 == 0:
                print(f"[landmarks] {len(rows):,}/{len(files):,} "
                      f"({len(rows) / (time.perf_counter() - t0):.1f} images/s)", flush=True)
    df = pd.DataFrame(rows)
    df["file"] = [f"val/{Path(p).name}" for p in df["file"]]
    cache.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(cache)
    return df


def _grey_world(img: np.ndarray, skin: np.ndarray) -> float:
    """Rejected alternative, for comparison: grey-world white balance of the whole crop."""
    from maskgen.datasets.attributes import SRGB_TO_LINEAR, corrected_ita

    mean = SRGB_TO_LINEAR[img].reshape(-1, 3).mean(axis=0)
    # a reference whose inverse is the grey-world gain (image mean -> 18% grey)
    ref = (mean / 0.18).astype(np.float32)
    return corrected_ita(skin, ref, select=False)[0] if ref.min() > 0 else float("nan")


def _measure_chunk(items: list[tuple[str, list]]) -> list[dict]:
    import cv2

    from maskgen.datasets.attributes import (
        _MAX_SKIN_PIXELS,
        corrected_ita,
        face_regions,
        ita_of_pixels,
        white_reference,
    )
    from maskgen.masks.imageio import load_image

    out = []
    for path, lm in items:
        img, _ = load_image(path)
        rgb, skin, face, _, _ = face_regions(img, np.asarray(lm, np.float32).reshape(68, 2))
        if skin.shape[0] > _MAX_SKIN_PIXELS:
            skin = skin[:: -(-skin.shape[0] // _MAX_SKIN_PIXELS)]
        ref = white_reference(rgb)
        both, corrected = corrected_ita(skin, ref)
        out.append({
            "baseline": ita_of_pixels(skin),
            "skin-pixels": corrected_ita(skin, None)[0],
            "white-point": corrected_ita(skin, ref, select=False)[0],
            "both": both,
            "grey-world": _grey_world(rgb, skin),
            "white_corrected": corrected,
            "image_luma": float(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).mean()),
            "face_luma": float(cv2.cvtColor(np.ascontiguousarray(face),
                                            cv2.COLOR_RGB2GRAY).mean()),
        })
    return out


VARIANTS = ["baseline", "skin-pixels", "white-point", "both", "grey-world"]


def _auc(hi: np.ndarray, lo: np.ndarray) -> float:
    """P(a face labelled White has a higher ITA than one labelled Black) (rank AUC)."""
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(hi, lo).statistic / (len(hi) * len(lo)))


def study(fairface: Path, lm: pd.DataFrame, workers: int) -> pd.DataFrame:
    from maskgen.datasets.attributes import SKIN_TONES, skin_tone_label

    labels = pd.read_csv(fairface / "fairface_label_val.csv", dtype=str)
    df = lm[lm["status"] == "ok"].merge(labels, on="file").reset_index(drop=True)
    items = [(str(fairface / f), list(l)) for f, l in zip(df["file"], df["landmarks"])]
    chunks = [items[i:i + 200] for i in range(0, len(items), 200)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as ex:
        res = [r for part in ex.map(_measure_chunk, chunks) for r in part]
    print(f"measured {len(res):,} faces in {time.perf_counter() - t0:.1f} s")
    m = pd.concat([df, pd.DataFrame(res)], axis=1)
    black, white = m["race"] == "Black", m["race"] == "White"
    from scipy.stats import spearmanr

    print(f"\nfaces with landmarks: {len(m):,}; labelled Black: {black.mean():.1%}; "
          f"white reference usable: {m['white_corrected'].mean():.1%}\n")
    print("| variant | dark (all) | dark among Black | dark among White | White in brown or dark "
          "| AUC White > Black | Spearman ITA vs image luma (White) |")
    print("|---|---|---|---|---|---|---|")
    for v in VARIANTS:
        t = m[v].map(skin_tone_label)
        rho = spearmanr(m.loc[white, v], m.loc[white, "image_luma"], nan_policy="omit")[0]
        print(f"| {v} | {(t == 'dark').mean():.1%} | {(t[black] == 'dark').mean():.1%} | "
              f"{(t[white] == 'dark').mean():.1%} | {t[white].isin(['brown', 'dark']).mean():.1%} "
              f"| {_auc(m.loc[white, v].dropna(), m.loc[black, v].dropna()):.3f} | {rho:.2f} |")
    for v in ("baseline", "both"):
        t = m[v].map(skin_tone_label)
        print(f"\nITA bins by race label, {v} (row shares):\n")
        tab = pd.crosstab(m["race"], t, normalize="index")[SKIN_TONES]
        print("| race | " + " | ".join(SKIN_TONES) + " | median ITA |")
        print("|---|" + "---|" * (len(SKIN_TONES) + 1))
        for race, row in tab.iterrows():
            print(f"| {race} | " + " | ".join(f"{x:.1%}" for x in row) +
                  f" | {m.loc[m['race'] == race, v].median():.1f} |")
        bins = pd.cut(m["face_luma"], [-1, 70, 110, 160, 256],
                      labels=["dark <70", "dim 70-110", "normal 110-160", "bright >=160"])
        tab = pd.crosstab(bins, t, normalize="index").reindex(columns=SKIN_TONES, fill_value=0)
        print(f"\nITA bins by face brightness, {v} (row shares):\n")
        print("| face luma | faces | " + " | ".join(SKIN_TONES) + " |")
        print("|---|---|" + "---|" * len(SKIN_TONES))
        for b, row in tab.iterrows():
            print(f"| {b} | {int((bins == b).sum()):,} | " + " | ".join(f"{x:.1%}" for x in row)
                  + " |")
    return m


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fairface", type=Path,
                    default=Path(os.environ.get("MASKGEN_DATA_HOME", ROOT.parent / "shared" / "data"))
                    / "fairface-val")
    ap.add_argument("--cache", type=Path, default=ROOT / "build" / "fairface-landmarks.parquet")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    if not (args.fairface / "fairface_label_val.csv").is_file():
        print(f"FairFace validation crops not found in {args.fairface}", file=sys.stderr)
        return 2
    lm = landmarks_cache(args.fairface, args.cache, args.workers)
    print(f"{int((lm['status'] == 'ok').sum()):,} of {len(lm):,} faces with landmarks")
    study(args.fairface, lm, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
