"""Landmarks stage: decode each kept image once, find its face, hash it; cached by source file.

The result per image (68 landmarks, box, pose, size, pHash, or the reason it failed) lands in
``<out>/landmarks.parquet``, keyed by source location + size + mtime, so a rebuild with another
ratio or mask mix — or another build pointed at it with ``landmarks_from`` — skips detection.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from maskgen.outputs import replacing

CACHE_SCHEMA = pa.schema(
    [
        pa.field("_cache_key", pa.string()),
        pa.field("detector", pa.string()),
        pa.field("a_status", pa.string()),  # ok | failed
        pa.field("a_reason", pa.string()),
        pa.field("landmarks", pa.list_(pa.float32())),
        pa.field("box", pa.list_(pa.float32())),
        pa.field("det_score", pa.float32()),
        pa.field("yaw", pa.float32()),
        pa.field("pitch", pa.float32()),
        pa.field("roll", pa.float32()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("phash", pa.int64()),
        pa.field("n_faces", pa.int32()),
    ]
)
CACHE_FILE = "landmarks.parquet"


def choose_backend(detector: str, img: np.ndarray) -> str:
    """``auto``: ArcFace-aligned crops (square, <= 128 px, e.g. insightface releases) fit the
    predictor in the known face box; anything else runs the detector."""
    if detector != "auto":
        return detector
    h, w = img.shape[:2]
    return "aligned" if h == w and h <= 128 else "dlib"


def cache_tag(detector: str) -> str:
    """The landmark cache's name for ``detector``. Which model aligned crops get (maskgen's
    compact one once built, else dlib's) is part of it, so the two never mix in one cache."""
    if detector in ("auto", "aligned"):
        from maskgen.masks.landmarks import aligned_model_path

        if aligned_model_path().is_file():
            return f"{detector}+compact"
    return detector


# Decoded grayscale pixels held for one batched landmark fit (the rest of a chunk waits).
BATCH_PIXELS = 24 * 1024 * 1024


def analyze_rows(rows: list[dict], detector: str = "auto", tag: str | None = None, src=None) -> list[dict]:
    """Per image: decode, detect (the most central face), pose, pHash. Never raises for one
    bad image: the failure is the row's result. Rows are tagged ``tag`` (default: the
    detector's :func:`cache_tag`). Bytes are read through ``src`` (the build's
    :class:`maskgen.datasets.sources.Source`; None: ``path`` is a file path). Images for the ``dlib`` backend are detected in batches
    (:func:`maskgen.masks.landmarks.detect_faces_many`: their landmark fits run together)."""
    from maskgen.datasets.dedup import phash
    from maskgen.datasets.sources import ReadError, read_file
    from maskgen.masks import decode_image, detect_faces
    from maskgen.masks.landmarks import detect_faces_many, to_gray

    tag = tag or cache_tag(detector)
    out: list[dict | None] = [None] * len(rows)
    batch: list[tuple[int, dict, np.ndarray]] = []  # (row, partial result, grayscale image)
    held = 0

    def flush() -> None:
        nonlocal held
        if not batch:
            return
        try:
            found = detect_faces_many([g for _, _, g in batch], backend="dlib", select="center")
        except Exception:  # one odd image must not fail the others: take them one by one
            found = None
        for k, (i, res, g) in enumerate(batch):
            try:
                faces = found[k] if found is not None else detect_faces(g, backend="dlib", select="center")
                out[i] = _face_result(res, faces)
            except Exception as exc:
                out[i] = _failed(res, f"analysis error: {type(exc).__name__}: {exc}")
        batch.clear()
        held = 0

    for i, r in enumerate(rows):
        res: dict = {"_cache_key": r["_cache_key"], "detector": tag}
        try:
            if src is None:
                data = read_file(r["path"])
            else:
                data = src.read_bytes(r["path"], r["offset"], r["nbytes"], r.get("member"))
        except ReadError as exc:
            out[i] = _failed(res, exc.reason)
            continue
        except OSError as exc:
            out[i] = _failed(res, f"unreadable: {exc.strerror or exc}")
            continue
        try:
            img, reason = decode_image(data)
            if img is None:
                out[i] = _failed(res, f"decode: {reason}")
                continue
            h, w = img.shape[:2]
            res.update(width=w, height=h, phash=phash(img))
            # the subject of a face dataset is the most central face; "center" also lets the
            # detector search a central crop first (several times faster on portraits)
            backend = choose_backend(detector, img)
            if backend == "dlib":
                g = to_gray(img)
                batch.append((i, res, g))
                held += g.size
                if held >= BATCH_PIXELS:
                    flush()
                continue
            out[i] = _face_result(res, detect_faces(img, backend=backend, select="center"))
        except Exception as exc:  # one odd image must not stop the other rows
            out[i] = _failed(res, f"analysis error: {type(exc).__name__}: {exc}")
    flush()
    return out  # type: ignore[return-value]


def _failed(res: dict, reason: str) -> dict:
    return {**res, "a_status": "failed", "a_reason": reason}


def _face_result(res: dict, faces: list) -> dict:
    res["n_faces"] = len(faces)
    if not faces:
        return _failed(res, "no face detected")
    f = faces[0]
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


def compact(row: dict) -> dict:
    """Hold landmarks and box as float32 arrays: a million cached rows as Python floats would
    cost gigabytes in the driver, as arrays a tenth of that."""
    for k in ("landmarks", "box"):
        v = row.get(k)
        if v is not None and not isinstance(v, np.ndarray):
            row[k] = np.asarray(v, np.float32)
    return row


def results_table(results: list[dict]) -> pa.Table:
    cols = {f.name: [r.get(f.name) for r in results] for f in CACHE_SCHEMA}
    return pa.Table.from_pydict(cols, schema=CACHE_SCHEMA)


def load_cache(paths: list[str | os.PathLike], detector: str) -> dict[str, dict]:
    """Cached results by cache key, from landmarks.parquet files or build folders (missing
    files are skipped: the first build has no cache)."""
    cache: dict[str, dict] = {}
    for p in paths:
        p = Path(p)
        if p.is_dir():
            p = p / CACHE_FILE
        if not p.is_file():
            continue
        t = pq.read_table(p)
        if "_cache_key" not in t.column_names:
            continue
        for row in t.to_pylist():
            if row.get("detector") == detector:
                cache[row["_cache_key"]] = compact(row)
    return cache


def write_cache(cache: dict[str, dict], path: str | os.PathLike) -> None:
    keys = sorted(cache)
    with replacing(path) as tmp:
        pq.write_table(results_table([cache[k] for k in keys]), tmp)
