"""The contact sheet: every mask type x wear mode on a few real faces, to judge realism at a glance."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from maskgen.data_home import dataset_dir
from maskgen.masks.api import MaskSpec, mask_face
from maskgen.masks.designs import MASK_TYPES
from maskgen.masks.geometry import WEAR_MODES
from maskgen.masks.imageio import load_image
from maskgen.masks.landmarks import Face, detect_faces


def _rows() -> list[tuple[str, dict]]:
    rows = [(t, {"type": t}) for t in MASK_TYPES]
    rows.insert(2, ("n95+valve", {"type": "n95", "valve": True}))
    rows.append(("surgical/checks", {"type": "surgical", "color": "white", "texture": "checks"}))
    rows.append(("cloth/floral", {"type": "cloth", "color": "navy", "texture": "floral"}))
    rows.append(("kn95/#c8a2c8", {"type": "kn95", "color": "#c8a2c8", "texture": "stripes"}))
    return rows


def pick_faces(n: int, seed: int, data_home: str | None) -> list[tuple[str, np.ndarray, Face]]:
    """A few LFW faces with a spread of yaw (frontal first, then the most turned), else astronaut."""
    lfw = dataset_dir("lfw", data_home)
    out: list[tuple[str, np.ndarray, Face]] = []
    if lfw.is_dir():
        files = sorted(lfw.glob("*/*.jpg"))
        rng = np.random.default_rng(seed)
        cand = []
        for i in rng.choice(len(files), size=min(len(files), 40), replace=False):
            img, _ = load_image(files[int(i)])
            if img is None:
                continue
            faces = detect_faces(img, select="center")
            if faces:
                cand.append((files[int(i)].stem, img, faces[0]))
        cand.sort(key=lambda c: abs(c[2].pose[0]))
        if cand:
            picks = [cand[0]]
            rest = cand[1:]
            while len(picks) < n and rest:
                # alternately the most turned and a mid-range one
                j = len(rest) - 1 if len(picks) % 2 == 1 else len(rest) // 2
                picks.append(rest.pop(j))
            out = picks
    if not out:
        try:
            from skimage import data as skdata  # the public-domain astronaut portrait
        except ImportError as exc:
            raise RuntimeError(f"no LFW under {lfw} and scikit-image (for the fallback face) is not installed") from exc
        img = np.ascontiguousarray(skdata.astronaut())
        faces = detect_faces(img, select="largest")
        out = [("astronaut", img, faces[0])] if faces else []
    return out


def _crop(img: np.ndarray, face: Face, cell: int) -> np.ndarray:
    lm = face.landmarks
    c = (lm.min(0) + lm.max(0)) / 2
    side = 1.5 * float(max(np.ptp(lm[:, 0]), np.ptp(lm[:, 1])))
    m = np.array([[cell / side, 0, cell / 2 - c[0] * cell / side], [0, cell / side, cell / 2 - c[1] * cell / side]])
    return cv2.warpAffine(img, m, (cell, cell), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_CONSTANT)


def make_contact_sheet(
    n_faces: int = 3,
    seed: int = 0,
    cell: int = 176,
    data_home: str | None = None,
    pack: str | None = None,
) -> tuple[np.ndarray, list[str]]:
    """(RGB sheet, face names): rows = mask designs, columns = wear modes x faces."""
    faces = pick_faces(n_faces, seed, data_home)
    if not faces:
        raise RuntimeError("no face found for the contact sheet")
    rows = _rows()
    if pack and (Path(pack) / "masks.cfg").is_file():
        rows.append(("pack:surgical_blue", {"type": "pack:surgical_blue", "pack": str(pack)}))
        rows.append(("pack:KN95", {"type": "pack:KN95", "pack": str(pack)}))
    label_w, head_h = 130, 26
    ncol = len(WEAR_MODES) * len(faces) + len(faces)
    sheet = np.full((head_h + cell * len(rows), label_w + cell * ncol, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    col = 0
    headers = [("original", fi) for fi in range(len(faces))] + [(w, fi) for w in WEAR_MODES for fi in range(len(faces))]
    for k, (title, fi) in enumerate(headers):
        x = label_w + k * cell
        cv2.putText(sheet, f"{title} #{fi + 1}", (x + 6, 18), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for r, (name, kw) in enumerate(rows):
        y = head_h + r * cell
        cv2.putText(sheet, name, (6, y + cell // 2), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        for col, (title, fi) in enumerate(headers):
            _, img, face = faces[fi]
            if title == "original":
                tile = _crop(img, face, cell)
            else:
                res = mask_face(img, MaskSpec(wear=title, **kw), seed=seed + r, faces=[face])
                tile = _crop(res.image, face, cell)
                cv2.putText(tile, f"fit {res.fit:.2f}", (4, cell - 6), font, 0.38, (255, 255, 255), 1, cv2.LINE_AA)
            sheet[y : y + cell, label_w + col * cell : label_w + (col + 1) * cell] = tile
    return sheet, [f"{n} (yaw {f.pose[0]:+.0f})" for n, _, f in faces]
