"""Embedding cache: one ``.npz`` per model, keyed by image key and variant.

Case 1/2/3 share the unmasked embeddings, a second run with another seed re-embeds only the
masked images, and an interrupted run resumes. Per-image statuses travel with the vectors so a
cached image is reported exactly like a freshly computed one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from maskgen.eval.extract import ImageRecord
from maskgen.fsio import atomic_open


class EmbeddingCache:
    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path else None
        self.vectors: dict[tuple[str, str], np.ndarray] = {}
        self.mask_probs: dict[tuple[str, str], float] = {}
        self.meta: dict[str, dict] = {}  # key -> statuses and attributes
        self.mask_status: dict[tuple[str, str], str] = {}  # (key, masked variant) -> status
        self.landmarks: dict[str, np.ndarray] = {}  # key -> (68, 2): masked passes skip detection
        if self.path is not None and self.path.is_file():
            self._load()

    def _load(self) -> None:
        with np.load(self.path, allow_pickle=False) as z:
            keys = [str(k) for k in z["keys"]]
            variants = [str(v) for v in z["variants"]]
            emb = z["emb"]
            probs = z["mask_probs"] if "mask_probs" in z.files else None
            meta = json.loads(str(z["meta"]))
            if "lm_keys" in z.files:
                self.landmarks = {str(k): lm for k, lm in zip(z["lm_keys"], z["lm"])}
        for i, (k, v) in enumerate(zip(keys, variants)):
            self.vectors[(k, v)] = emb[i]
            if probs is not None and np.isfinite(probs[i]):
                self.mask_probs[(k, v)] = float(probs[i])
        self.meta = meta.get("images", {})
        self.mask_status = {tuple(k.split("\t", 1)): s for k, s in meta.get("mask_status", {}).items()}

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        items = sorted(self.vectors.items())
        keys = np.array([k for (k, _), _ in items], dtype=str)
        variants = np.array([v for (_, v), _ in items], dtype=str)
        emb = np.stack([e for _, e in items]).astype(np.float32) if items else np.zeros((0, 0), np.float32)
        probs = np.array([self.mask_probs.get(kv, np.nan) for kv, _ in items], dtype=np.float64)
        meta = json.dumps({"images": self.meta,
                           "mask_status": {f"{k}\t{v}": s for (k, v), s in self.mask_status.items()}})
        lm_keys = sorted(self.landmarks)
        lm = np.stack([self.landmarks[k] for k in lm_keys]).astype(np.float32) if lm_keys \
            else np.zeros((0, 68, 2), np.float32)
        with atomic_open(self.path, "wb", fsync=False) as f:  # a file object: no ".npz" added
            np.savez(f, keys=keys, variants=variants, emb=emb, mask_probs=probs, meta=np.array(meta),
                     lm_keys=np.array(lm_keys, dtype=str), lm=lm)

    def has(self, key: str, variant: str) -> bool:
        """Whether (key, variant) was already processed (embedded, or failed with a status)."""
        if key in self.meta and self.meta[key].get("status") != "ok":
            return True  # unreadable images are not retried
        if variant != "orig" and (key, variant) in self.mask_status:
            return (key, variant) in self.vectors or self.mask_status[(key, variant)] != "ok"
        return (key, variant) in self.vectors

    def add(self, rec: ImageRecord, variants: tuple[str, ...]) -> None:
        m = self.meta.setdefault(rec.key, {})
        m["status"] = rec.status
        if rec.landmark_status:
            m["landmark_status"] = rec.landmark_status
        if rec.landmarks is not None:
            self.landmarks[rec.key] = np.asarray(rec.landmarks, np.float32)
        if rec.attributes:
            m["attributes"] = rec.attributes
        for v in variants:
            if v != "orig" and rec.status == "ok":
                self.mask_status[(rec.key, v)] = rec.mask_status or "not run"
        for v, e in rec.embeddings.items():
            self.vectors[(rec.key, v)] = np.asarray(e, np.float32)
        for v, p in rec.mask_probs.items():
            self.mask_probs[(rec.key, v)] = p
