"""``make_bin``: insightface verification ``.bin`` packs from any pair list (aligned 112x112 crops).

Masked packs are written too (``case=2``: the second image of each pair masked, ``case=3``: both,
the same Case rules as ``maskgen eval``), so a trainer that validates on ``.bin`` files
(insightface's ``arcface_torch`` verification callback) measures exactly maskgen's masked LFW.
Several cases come from one pass (``cases=(2, 3)``): landmarks are found once per image and each
image's mask is drawn from ``(seed, image key)``, so the same seed gives the same bytes, whatever
the order of the pairs or the cases asked for.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from maskgen.eval.binfile import write_bin
from maskgen.fsio import write_atomic
from maskgen.eval.extract import ExtractConfig, check_mask_type, find_landmarks, mask_image
from maskgen.eval.pairs import read_pairs


def _encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]),
                           [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def case_path(out: str, case: int, several: bool) -> Path:
    """The file of one case: ``out`` itself for a single case, else ``{case}`` filled in or
    ``_case<N>`` added before the extension."""
    if "{case}" in out:
        return Path(out.replace("{case}", str(case)))
    p = Path(out)
    return p.with_name(f"{p.stem}_case{case}{p.suffix}") if several else p


def make_bin(pairs: str, images: str | None = None, out: str = "pairs.bin", align: bool = True,
             size: int = 112, case: int | tuple[int, ...] = 1, seed: int = 0, mask_type: str = "random",
             quality: int = 95, max_pairs: int | None = None, max_folds: int | None = None,
             quiet: bool = False) -> dict:
    """Write one ``.bin`` per case (and ``<file>.json`` with its counts); returns the counts
    (of the single case, or ``{"cases": {N: counts}}`` for several).

    A pair whose image cannot be read is left out and counted; an image without a detected face
    is aligned from fallback landmarks and counted; a failed mask keeps the unmasked image and
    is counted. With ``align=False`` the original file bytes are stored as they are. Progress
    lines (pairs done/total over all cases, rate, ETA) go to stderr unless ``quiet``.
    """
    from maskgen.masks import align_face, load_image
    from maskgen.progress import Progress

    cases = (case,) if isinstance(case, int) else tuple(sorted(set(int(c) for c in case)))
    if not cases or any(c not in (1, 2, 3) for c in cases):
        raise ValueError("case must be 1, 2 or 3 (or several of them)")
    if max(cases) > 1 and not align:
        raise ValueError("masked .bin files need align=True (masks are drawn before alignment)")
    if max(cases) > 1:
        check_mask_type(mask_type)
    ps = read_pairs(pairs, max_folds=max_folds, max_pairs=max_pairs)
    root = Path(images) if images else Path(pairs).parent
    cfg = ExtractConfig(landmarks="auto", seed=seed, mask_type=mask_type)
    cache: dict[tuple[str, bool], bytes | None] = {}
    mask_failed: set[str] = set()
    found: dict[str, tuple] = {}  # key -> (image, landmarks): one decode and detection per image
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
            if key not in found:
                img, reason = load_image(path)
                if img is None:
                    failures[key] = reason
                    found[key] = (None, None)
                else:
                    lm, lm_status = find_landmarks(img, "auto")
                    counts[f"landmarks_{lm_status}"] += 1
                    found[key] = (img, lm)
            img, lm = found[key]
            if img is None:
                data = None
            else:
                if masked:
                    mimg, mstatus = mask_image(img, lm, key, cfg)
                    if mimg is None:
                        mask_failed.add(key)
                    if mimg is not None:
                        img = mimg
                    else:
                        failures[f"{key} (mask)"] = mstatus
                data = _encode_jpeg(align_face(img, lm, size=size), quality)
        cache[(key, masked)] = data
        return data

    results: dict[int, dict] = {}
    prog = Progress("make-bin", len(ps) * len(cases), unit="pairs", quiet=quiet)
    for c in cases:
        masked_keys: set[str] = set()
        blobs: list[bytes] = []
        issame: list[bool] = []
        mask_a, mask_b = {1: (False, False), 2: (False, True), 3: (True, True)}[c]
        skipped = 0
        for a, b, same in zip(ps.a, ps.b, ps.issame):
            da, db = encoded(a, mask_a), encoded(b, mask_b)
            prog.advance(1, skipped=int(da is None or db is None))
            if da is None or db is None:
                skipped += 1
                continue
            blobs += [da, db]
            issame.append(bool(same))
            masked_keys.update(k for k, m in ((a, mask_a), (b, mask_b)) if m)
        target = case_path(out, c, len(cases) > 1)
        write_bin(target, blobs, issame)
        masks = {"masked": len(masked_keys - mask_failed), "mask_failed": len(masked_keys & mask_failed)} if c > 1 else {}
        stats = {"file": target.name, "pairs_in": len(ps), "pairs_written": len(issame), "case": c,
                 "seed": seed, "mask_type": mask_type, "aligned": align, "size": size,
                 **({"pairs_skipped": skipped} if skipped else {}), **dict(counts), **masks,
                 "failures": failures}
        write_atomic(str(target) + ".json", json.dumps(stats, indent=2) + "\n", fsync=False)
        results[c] = stats
    prog.finish()
    return results[cases[0]] if len(cases) == 1 else {"cases": results}
