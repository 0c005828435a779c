"""``make_bin``: an insightface verification ``.bin`` from any pair list (aligned 112x112 crops).

Masked variants can be written too (``case=2``: the second image of each pair masked, ``case=3``:
both), so a trainer that validates on ``.bin`` files (insightface's ``arcface_torch``) can watch
masked-face accuracy during training.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from maskgen.eval.binfile import write_bin
from maskgen.eval.extract import ExtractConfig, check_mask_type, find_landmarks, mask_image
from maskgen.eval.pairs import read_pairs


def _encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]),
                           [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def make_bin(pairs: str, images: str | None = None, out: str = "pairs.bin", align: bool = True,
             size: int = 112, case: int = 1, seed: int = 0, mask_type: str = "random",
             quality: int = 95, max_pairs: int | None = None, max_folds: int | None = None) -> dict:
    """Write ``out`` (and ``out.json`` with the counts); returns the counts.

    A pair whose image cannot be read is left out and counted; an image without a detected face
    is aligned from fallback landmarks and counted; a failed mask keeps the unmasked image and
    is counted. With ``align=False`` the original file bytes are stored as they are.
    """
    from maskgen.masks import align_face, load_image

    if case not in (1, 2, 3):
        raise ValueError("case must be 1, 2 or 3")
    if case > 1 and not align:
        raise ValueError("masked .bin files need align=True (masks are drawn before alignment)")
    if case > 1:
        check_mask_type(mask_type)
    ps = read_pairs(pairs, max_folds=max_folds, max_pairs=max_pairs)
    root = Path(images) if images else Path(pairs).parent
    cfg = ExtractConfig(landmarks="auto", seed=seed, mask_type=mask_type)
    cache: dict[tuple[str, bool], bytes | None] = {}
    counts: Counter = Counter()
    failures: dict[str, str] = {}

    def encoded(key: str, masked: bool) -> bytes | None:
        if (key, masked) in cache:
            return cache[(key, masked)]
        path = root / key
        data: bytes | None
        if not align:
            try:
                data = path.read_bytes()
            except OSError as exc:
                failures[key] = f"unreadable: {exc.strerror or exc}"
                data = None
        else:
            img, reason = load_image(path)
            if img is None:
                failures[key] = reason
                data = None
            else:
                lm, lm_status = find_landmarks(img, "auto")
                counts[f"landmarks_{lm_status}"] += 1
                if masked:
                    mimg, mstatus = mask_image(img, lm, key, cfg)
                    counts["masked" if mimg is not None else "mask_failed"] += 1
                    if mimg is not None:
                        img = mimg
                    else:
                        failures[f"{key} (mask)"] = mstatus
                data = _encode_jpeg(align_face(img, lm, size=size), quality)
        cache[(key, masked)] = data
        return data

    blobs: list[bytes] = []
    issame: list[bool] = []
    mask_a, mask_b = {1: (False, False), 2: (False, True), 3: (True, True)}[case]
    for a, b, s in zip(ps.a, ps.b, ps.issame):
        da, db = encoded(a, mask_a), encoded(b, mask_b)
        if da is None or db is None:
            counts["pairs_skipped"] += 1
            continue
        blobs += [da, db]
        issame.append(bool(s))
    write_bin(out, blobs, issame)
    stats = {"pairs_in": len(ps), "pairs_written": len(issame), "case": case, "seed": seed,
             "aligned": align, "size": size, **dict(counts), "failures": failures}
    tmp = Path(str(out) + ".json.tmp")
    tmp.write_text(json.dumps(stats, indent=2) + "\n")
    os.replace(tmp, str(out) + ".json")
    return stats
