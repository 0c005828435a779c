"""The faces of many images, each decoded once: the one per-image landmark pass of maskgen.

For every row: read its bytes, decode, find the faces (the ``cnn`` and ``dlib`` backends in
batches: their landmark fits run together), take the most central face as the subject, its
pose, and the image's perceptual hash. The build's landmark stage
(:mod:`maskgen.pipelines.analyze`) caches these results per chunk; the audit's folder scan
(:mod:`maskgen.audit.sources`) measures its attributes on the same decoded pixels. One pass for
both, so a folder audited and the same folder built find the same faces, for the same reasons.

A result is a dict: ``a_status`` (ok | failed), ``a_reason``, ``landmarks`` (68 points flat),
``box``, ``det_score``, ``yaw``/``pitch``/``roll``, ``width``/``height``, ``phash``,
``n_faces``, and ``backend`` for a deferred fit. One bad image never raises: its failure is
its result.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import cv2
import numpy as np

# Decoded pixels (bytes) held for one batched landmark fit (the rest of a chunk waits).
BATCH_PIXELS = 24 * 1024 * 1024
# Backends whose landmark fits run as one batch (detect_faces_many); "cnn" needs colour.
BATCHED = ("cnn", "dlib")
# Backends whose landmark fit the build defers to its shard task (aligned crops).
DEFERRED = ("aligned", "aligned-full")

# measure(image, result) -> fields added to the result: what a caller computes from the decoded
# RGB pixels once the face is known (``result["landmarks"]`` is None when none was found).
Measure = Callable[[np.ndarray, dict], dict]


def analyze_rows(rows: list[dict], detector: str = "auto", tag: str | None = None, read=None,
                 defer: bool = False, *, select: str = "center",
                 measure: Measure | None = None, hash_images: bool = True) -> list[dict]:
    """Per image: decode, detect (the most central face), pose, pHash. Never raises for one
    bad image: the failure is the row's result. Rows are tagged ``tag`` (default: the
    detector's :func:`maskgen.masks.landmarks.backend_tag`). Images for the ``cnn`` and
    ``dlib`` backends are detected in batches (:func:`maskgen.masks.landmarks.detect_faces_many`).

    ``read(row)`` returns a row's bytes (default: ``row["path"]`` is a file path); ``defer``:
    aligned crops get no fit here (the build fits them in its shard task). ``select``:
    ``"center"`` lets the detector search a central crop first (several times faster on
    portraits; ``n_faces`` counts what that search found); ``"all"`` finds every face
    (``n_faces`` counts them) and still takes the most central. ``measure``: called with every
    decoded image and its result (see :data:`Measure`); an error there fails only that row.
    ``hash_images``: the pHash the build's near-duplicate filter reads (an audit skips it)."""
    from maskgen.datasets.dedup import phash
    from maskgen.datasets.sources import ReadError, read_file
    from maskgen.masks import decode_image, detect_faces
    from maskgen.masks.landmarks import (
        backend_tag,
        detect_faces_many,
        resolve_backend,
        to_gray,
    )

    if select not in ("center", "all"):
        raise ValueError(f"select must be 'center' or 'all', not {select!r}")
    tag = tag or backend_tag(detector)
    out: list[dict | None] = [None] * len(rows)
    # (row, partial result, detector input, backend, RGB image for measure)
    batch: list[tuple[int, dict, np.ndarray, str, np.ndarray | None]] = []
    held = 0

    def finish(i: int, res: dict, img: np.ndarray, faces: list) -> None:
        res = _face_result(res, faces, select)
        if measure is not None:
            lm = res.get("landmarks")
            res.update(measure(img, {**res, "landmarks": None if lm is None else
                                     np.asarray(lm, np.float32).reshape(-1, 2)}))
        out[i] = res

    def flush() -> None:
        nonlocal held
        if not batch:
            return
        try:
            found = []
            for name in BATCHED:
                part = [k for k, b in enumerate(batch) if b[3] == name]
                found += list(zip(part, detect_faces_many([batch[k][2] for k in part], backend=name, select=select)))
            found = [f for _, f in sorted(found, key=lambda kf: kf[0])]
        except Exception:  # one odd image must not fail the others: take them one by one
            found = None
        for k, (i, res, g, name, img) in enumerate(batch):
            try:
                faces = found[k] if found is not None else detect_faces(g, backend=name, select=select)
                finish(i, res, g if img is None else img, faces)
            except Exception as exc:
                out[i] = _failed(res, f"analysis error: {type(exc).__name__}: {exc}")
        batch.clear()
        held = 0

    for i, r in enumerate(rows):
        res: dict = {"_cache_key": r["_cache_key"], "detector": tag}
        try:
            data = read(r) if read is not None else read_file(r["path"])
        except ReadError as exc:  # the source's stable reason (not a regular file, too large, ...)
            out[i] = _failed(res, exc.reason)
            continue
        except OSError as exc:
            out[i] = _failed(res, f"unreadable: {exc.strerror or exc}")
            continue
        except MemoryError:
            out[i] = _failed(res, "unreadable: out of memory")
            continue
        except Exception as exc:  # a reader's own failure costs this row only, never its neighbours
            out[i] = _failed(res, f"unreadable: {type(exc).__name__}: {exc}")
            continue
        quick = _quick_aligned(data, detector) if defer else None
        if quick is not None:
            res.update(a_status="ok", a_reason=None, backend=quick[0], width=quick[1], height=quick[2])
            out[i] = res
            continue
        try:
            img, reason = decode_image(data)
            if img is None:
                out[i] = _failed(res, f"decode: {reason}")
                continue
            h, w = img.shape[:2]
            res.update(width=w, height=h)
            if hash_images:  # the build's near-duplicate filter; an audit has no use for it
                res["phash"] = phash(img)
            # the subject of a face dataset is the most central face
            backend = resolve_backend(detector, img.shape)
            if backend in BATCHED:
                g = img if backend == "cnn" else to_gray(img)
                keep = img if measure is not None and g is not img else None
                batch.append((i, res, g, backend, keep))
                held += g.size + (0 if keep is None else keep.size)
                if held >= BATCH_PIXELS:
                    flush()
                continue
            if defer and backend in DEFERRED:
                res.update(a_status="ok", a_reason=None, backend=backend)
                out[i] = res
                continue
            finish(i, res, img, detect_faces(img, backend=backend, select=select))
        except Exception as exc:  # one odd image must not stop the other rows
            out[i] = _failed(res, f"analysis error: {type(exc).__name__}: {exc}")
    flush()
    return out  # type: ignore[return-value]


def jpeg_info(data: bytes) -> tuple[int, int, int] | None:
    """``(width, height, components)`` of a complete JPEG that can be passed through as is,
    read from its headers only; None for anything else (not JPEG, EXIF present (its
    orientation would disagree with the decoded frame), no SOF, no end marker)."""
    if len(data) < 4 or data[:2] != b"\xff\xd8" or not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        seg = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\0\0":
            return None
        if marker in (0xC0, 0xC1, 0xC2):  # baseline, extended, progressive Huffman
            if i + 10 > n:
                return None
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h, data[i + 9]
        if marker in (0xDA, 0xD9):  # scan data before a frame header: not a usable file
            return None
        i += 2 + seg
    return None


def _quick_aligned(data: bytes, detector: str) -> tuple[str, int, int] | None:
    """An aligned crop recognised from its JPEG headers (``(backend, width, height)``), its
    entropy data checked by a 1/8-scale decode: no full decode is needed to defer its fit."""
    info = jpeg_info(data)
    if info is None or info[2] != 3:
        return None
    w, h, _ = info
    backend = detector if detector in DEFERRED else ("aligned" if detector == "auto" and w == h and h <= 128 else None)
    if backend is None:
        return None
    if cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8) is None:
        return None  # the full decode says why
    return backend, w, h


def _failed(res: dict, reason: str) -> dict:
    return {**res, "a_status": "failed", "a_reason": reason}


def _face_result(res: dict, faces: list, select: str = "center") -> dict:
    res["n_faces"] = len(faces)
    if not faces:
        return _failed(res, getattr(faces, "reason", None) or "no face detected")
    f = faces[0]
    if select == "all" and len(faces) > 1:  # the subject: the most central face
        from maskgen.masks.landmarks import select_faces

        f = select_faces(list(faces), (res["height"], res["width"]), "center")[0]
    res.update(
        a_status="ok",
        a_reason=None,
        landmarks=np.asarray(f.landmarks, np.float32).reshape(-1).tolist(),
        box=[float(v) for v in f.box],
        det_score=float(f.score),
        yaw=float(f.pose[0]),
        pitch=float(f.pose[1]),
        roll=float(f.pose[2]),
    )
    return res
