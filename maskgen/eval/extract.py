"""Per-image work of an evaluation: decode, landmarks, mask, crop, embed.

Landmarks are found once on the unmasked image and reused for its masked twin: a mask does not
move the face, and re-detecting a masked face would measure the detector instead of the
recogniser. When no face is found, the dlib 68-point predictor is run in a fixed central box
(LFW-style crops are centred on the face); such images keep the status ``fallback_center``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ORIG = "orig"


def masked_variant(seed: int, mask_type: str) -> str:
    """The cache/variant name of masked images made with this seed and mask choice."""
    return f"masked-{mask_type}-s{seed}"


def image_seed(seed: int, key: str) -> int:
    """A per-image seed that depends only on the run seed and the image key (order-free)."""
    return int.from_bytes(hashlib.sha256(f"{seed}|{key}".encode()).digest()[:4], "little")


@dataclass
class ImageJob:
    key: str
    path: str | None = None  # an image file, or
    data: bytes | None = None  # encoded bytes (.bin files)
    variants: tuple[str, ...] = (ORIG,)
    landmarks: np.ndarray | None = None  # known 68 points (from the cache): no detection
    landmark_status: str = ""


@dataclass
class ImageRecord:
    key: str
    status: str  # "ok" or the load failure reason
    landmark_status: str = ""  # "detected" | "aligned" | "fallback_center" | ""
    mask_status: str = ""  # "ok" | failure reason | "" (not requested)
    landmarks: np.ndarray | None = None
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    mask_probs: dict[str, float] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExtractConfig:
    landmarks: str = "auto"  # a landmark backend (maskgen.masks.landmarks.BACKENDS)
    seed: int = 0
    mask_type: str = "random"  # "random" = MaskSpec.random(per-image seed), else a mask type
    flip: bool = False
    attributes: bool = False  # compute audit attributes (skin tone) of each unmasked face
    mask_head: bool = False  # also run the model's mask-usage head


def check_mask_type(mask_type: str) -> None:
    """Fail fast on a bad ``--mask-type`` instead of counting one failure per image."""
    if mask_type != "random":
        from maskgen.masks import MaskSpec

        MaskSpec(type=mask_type)  # raises ValueError naming the valid types


def _center_landmarks(img: np.ndarray) -> np.ndarray:
    """68 points of dlib's predictor in a centred box (half the short side, like LFW faces),
    fitted by the process-wide dlib backend of ``maskgen.masks.landmarks`` (one model in memory)."""
    import dlib

    from maskgen.masks.landmarks import get_detector, shape_points

    h, w = img.shape[:2]
    s = min(h, w) * 0.45
    cx, cy = w / 2.0, h / 2.0
    rect = dlib.rectangle(int(cx - s / 2), int(cy - s / 2), int(cx + s / 2), int(cy + s / 2))
    # the colour image, as before: dlib converts it to grey itself (its own weights)
    shape = get_detector("dlib").predictor(np.ascontiguousarray(img, np.uint8), rect)
    return np.asarray(shape_points(shape), np.float32)


def find_landmarks(img: np.ndarray, backend: str) -> tuple[np.ndarray, str]:
    """(68 landmarks, status) of the main face of ``img`` (the most central one)."""
    from maskgen.masks import detect_faces
    from maskgen.masks.landmarks import resolve_backend

    backend = resolve_backend(backend, img.shape)
    aligned = backend.startswith("aligned")
    faces = detect_faces(img, backend=backend, select="all" if aligned else "center")
    if faces:
        return np.asarray(faces[0].landmarks, np.float32), ("aligned" if aligned else "detected")
    return _center_landmarks(img), "fallback_center"


def mask_image(img: np.ndarray, landmarks: np.ndarray, key: str,
               cfg: ExtractConfig) -> tuple[np.ndarray | None, str]:
    """The masked twin of ``img`` (or None and the reason). The face is rebuilt from the stored
    landmarks, so a fresh run and a run resumed from the cache draw exactly the same mask."""
    from maskgen.masks import MaskSpec, faces_from_landmarks, mask_face

    s = image_seed(cfg.seed, key)
    spec = MaskSpec.random(s) if cfg.mask_type == "random" else MaskSpec(type=cfg.mask_type)
    faces = faces_from_landmarks(landmarks, img.shape)
    try:
        res = mask_face(img, spec, seed=s, faces=faces)
    except Exception as exc:  # noqa: BLE001 - one image's failure is data, not a crash
        return None, f"error: {type(exc).__name__}: {exc}"
    if res.status != "ok" or res.image is None or res.image.size == 0:
        return None, str(res.status)
    return np.asarray(res.image), "ok"


def process_jobs(jobs: list[ImageJob], embedder: Any, cfg: ExtractConfig) -> list[ImageRecord]:
    """Run a chunk of images through the embedder in one batch; never raises for one image."""
    from maskgen.masks import decode_image, load_image

    records: list[ImageRecord] = []
    crops: list[np.ndarray] = []
    owners: list[tuple[int, str]] = []
    for job in jobs:
        if job.data is not None:
            img, reason = decode_image(job.data)
        else:
            img, reason = load_image(job.path)
        rec = ImageRecord(job.key, "ok" if img is not None else reason)
        records.append(rec)
        if img is None:
            continue
        if job.landmarks is not None:
            lm, rec.landmark_status = np.asarray(job.landmarks, np.float32), job.landmark_status
        else:
            try:
                lm, rec.landmark_status = find_landmarks(img, cfg.landmarks)
            except Exception as exc:  # noqa: BLE001
                rec.status = f"landmarks failed: {type(exc).__name__}: {exc}"
                continue
        rec.landmarks = lm
        if cfg.attributes:
            rec.attributes = _attributes(img, lm)
        for variant in job.variants:
            src = img
            if variant != ORIG:
                src, rec.mask_status = mask_image(img, lm, job.key, cfg)
                if src is None:
                    continue  # evaluated unmasked by the protocol, counted there
            try:
                crops.append(embedder.crop(src, lm))
            except Exception as exc:  # noqa: BLE001
                rec.status = f"crop failed: {type(exc).__name__}: {exc}"
                continue
            owners.append((len(records) - 1, variant))
    if crops:
        embs = embedder.embed(crops, flip=cfg.flip)
        probs = embedder.mask_prob(crops) if cfg.mask_head and embedder.has_mask_head else None
        for j, (i, variant) in enumerate(owners):
            records[i].embeddings[variant] = embs[j]
            if probs is not None:
                records[i].mask_probs[variant] = float(probs[j])
    return records


def _attributes(img: np.ndarray, lm: np.ndarray) -> dict[str, Any]:
    from maskgen.datasets.attributes import face_attributes

    try:
        a = face_attributes(img, lm)
    except Exception:  # noqa: BLE001 - attributes are optional extras
        return {}
    return {"skin_tone": a.get("skin_tone"), "ita": a.get("ita")}
