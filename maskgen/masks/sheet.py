"""The contact sheet: every mask design x wear mode x head pose on real faces, and the user's
own real masked photos beside them at the same size, to judge realism at a glance.

Synthetic cells show a face from the data home's LFW (the astronaut when LFW is absent) at a
spread of yaws, framed the same way for every cell; ``real`` photos are framed by their
detected face when one is found (a masked face often is not), else by a centred square crop.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from maskgen.data_home import dataset_dir
from maskgen.errors import InputError
from maskgen.masks.api import MaskSpec, mask_face
from maskgen.masks.designs import DESIGNS, MASK_TYPES
from maskgen.masks.geometry import WEAR_MODES
from maskgen.masks.imageio import load_image
from maskgen.masks.landmarks import Face, detect_faces

MAX_REAL = 48
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def sheet_rows(pack: str | None = None) -> list[tuple[str, dict]]:
    """(label, MaskSpec keywords) of each row: every design in its default colour, the valve
    designs with a valve, and a few colours and prints."""
    rows = [(t, {"type": t}) for t in MASK_TYPES]
    rows += [(f"{t}+valve", {"type": t, "valve": True}) for t in MASK_TYPES if DESIGNS[t].valve]
    rows += [
        ("surgical/white", {"type": "surgical", "color": "white"}),
        ("kn95/black", {"type": "kn95", "color": "black"}),
        ("cloth/plaid", {"type": "cloth", "color": "navy", "texture": "plaid:1"}),
        ("cloth/brand", {"type": "cloth", "color": "black", "texture": "brand:1"}),
        ("cloth/camo", {"type": "cloth", "texture": "camo:0"}),
        ("cloth/cartoon", {"type": "cloth", "color": "white", "texture": "cartoon:0"}),
        ("cloth/flag", {"type": "cloth", "texture": "flag:1"}),
        ("cloth/knit", {"type": "cloth", "color": "darkgray", "texture": "knit:5"}),
        ("cloth/lace", {"type": "cloth", "color": "black", "texture": "lace:2"}),
    ]
    if pack and (Path(pack) / "masks.cfg").is_file():
        rows.append(("pack:surgical_blue", {"type": "pack:surgical_blue", "pack": str(pack)}))
        rows.append(("pack:KN95", {"type": "pack:KN95", "pack": str(pack)}))
    return rows


def pick_faces(n: int, seed: int, data_home: str | None) -> list[tuple[str, np.ndarray, Face]]:
    """``n`` LFW faces spread over head poses (from the most turned one way, through frontal,
    to the most turned the other way), else the astronaut."""
    lfw = dataset_dir("lfw", data_home)
    out: list[tuple[str, np.ndarray, Face]] = []
    if lfw.is_dir():
        files = sorted(lfw.glob("*/*.jpg"))
        rng = np.random.default_rng(seed)
        cand = []
        for i in rng.choice(len(files), size=min(len(files), 60), replace=False):
            img, _ = load_image(files[int(i)])
            if img is None:
                continue
            faces = detect_faces(img, select="center")
            if faces:
                cand.append((files[int(i)].stem, img, faces[0]))
        if cand:
            yaws = np.array([c[2].pose[0] for c in cand])
            targets = np.linspace(yaws.min(), yaws.max(), n) if n > 1 else np.array([0.0])
            if n >= 3:  # one frontal face among them
                targets[n // 2] = 0.0
            used: set[int] = set()
            for t in targets:
                order = np.argsort(np.abs(yaws - t))
                k = next((int(j) for j in order if int(j) not in used), None)
                if k is not None:
                    used.add(k)
                    out.append(cand[k])
            out.sort(key=lambda c: c[2].pose[0])
    if not out:
        try:
            from skimage import data as skdata  # the public-domain astronaut portrait
        except ImportError as exc:
            raise InputError(f"no LFW under {lfw} and scikit-image (for the fallback face) is not installed") from exc
        img = np.ascontiguousarray(skdata.astronaut())
        faces = detect_faces(img, select="largest")
        out = [("astronaut", img, faces[0])] if faces else []
    return out


def frame_face(img: np.ndarray, lm: np.ndarray, cell: int) -> np.ndarray:
    """A ``cell`` x ``cell`` crop around a face: 1.5 x its landmarks' extent, centred."""
    c = (lm.min(0) + lm.max(0)) / 2
    side = 1.5 * float(max(np.ptp(lm[:, 0]), np.ptp(lm[:, 1])))
    return _warp(img, c, side, cell)


def _warp(img: np.ndarray, c: np.ndarray, side: float, cell: int) -> np.ndarray:
    s = cell / max(side, 1.0)
    m = np.array([[s, 0, cell / 2 - c[0] * s], [0, s, cell / 2 - c[1] * s]])
    return cv2.warpAffine(img, m, (cell, cell), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_CONSTANT)


def real_cells(folder: str | Path, cell: int, limit: int = MAX_REAL) -> list[tuple[str, np.ndarray]]:
    """The user's photos as (name, cell) tiles: framed by the detected face like the synthetic
    cells, or a centred square crop where no face is found."""
    from maskgen.masks.cli import IMAGE_EXTS

    d = Path(folder)
    if not d.is_dir():
        raise InputError(f"--real {d}: not a folder")
    files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    out = []
    for p in files:
        if len(out) >= limit:
            break
        img, _ = load_image(p)
        if img is None:
            continue
        faces = detect_faces(img, select="largest")
        if faces:
            tile = frame_face(img, faces[0].landmarks, cell)
        else:
            h, w = img.shape[:2]
            tile = _warp(img, np.array([w / 2, h / 2]), float(min(h, w)), cell)
        out.append((p.relative_to(d).as_posix(), tile))
    if not out:
        raise InputError(f"--real {d}: no readable image ({', '.join(sorted(e[1:] for e in IMAGE_EXTS))})")
    return out


def make_contact_sheet(
    n_faces: int = 3,
    seed: int = 0,
    cell: int = 176,
    data_home: str | None = None,
    pack: str | None = None,
    real: str | Path | None = None,
) -> tuple[np.ndarray, list[str]]:
    """(RGB sheet, face names). Rows: designs; columns: the originals, then every wear mode x
    face (poses from one side to the other); with ``real``, the user's photos in a panel on
    the right at the same cell size."""
    faces = pick_faces(n_faces, seed, data_home)
    if not faces:
        raise InputError("no face found for the contact sheet")
    rows = sheet_rows(pack)
    label_w, head_h = 130, 26
    headers = [("original", fi) for fi in range(len(faces))] + [(w, fi) for w in WEAR_MODES for fi in range(len(faces))]
    tiles = real_cells(real, cell) if real is not None else []
    real_cols = int(np.ceil(len(tiles) / len(rows))) if tiles else 0
    gap = 12 if tiles else 0
    width = label_w + cell * (len(headers) + real_cols) + gap
    sheet = np.full((head_h + cell * len(rows), width, 3), 255, np.uint8)
    for k, (title, fi) in enumerate(headers):
        yaw = faces[fi][2].pose[0]
        cv2.putText(sheet, f"{title} {yaw:+.0f}", (label_w + k * cell + 6, 18), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for r, (name, kw) in enumerate(rows):
        y = head_h + r * cell
        cv2.putText(sheet, name, (6, y + cell // 2), _FONT, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        for col, (title, fi) in enumerate(headers):
            _, img, face = faces[fi]
            if title == "original":
                tile = frame_face(img, face.landmarks, cell)
            else:
                res = mask_face(img, MaskSpec(wear=title, **kw), seed=seed + r, faces=[face])
                tile = frame_face(res.image, face.landmarks, cell)
                cv2.putText(tile, f"fit {res.fit:.2f}", (4, cell - 6), _FONT, 0.38, (255, 255, 255), 1, cv2.LINE_AA)
            sheet[y : y + cell, label_w + col * cell : label_w + (col + 1) * cell] = tile
    if tiles:
        x0 = label_w + cell * len(headers) + gap
        sheet[:, x0 - gap // 2 - 1 : x0 - gap // 2 + 1] = 0
        cv2.putText(sheet, "your photos", (x0 + 6, 18), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        for i, (name, tile) in enumerate(tiles):
            r, c = i % len(rows), i // len(rows)
            y, x = head_h + r * cell, x0 + c * cell
            sheet[y : y + cell, x : x + cell] = tile
            cv2.putText(sheet, Path(name).stem[:18], (x + 4, y + cell - 6), _FONT, 0.36, (255, 255, 255), 1, cv2.LINE_AA)
    return sheet, [f"{n} (yaw {f.pose[0]:+.0f})" for n, _, f in faces]
