"""Near-duplicate removal by perceptual hash (pHash: DCT of a 32x32 grey thumbnail).

Scraped face datasets hold the same photo several times (re-uploads, crops, re-encodes);
duplicates inflate an identity and leak between train and test. A 64-bit pHash is stable
under resizing and JPEG re-encoding, so a small Hamming distance means the same picture.
"""

from __future__ import annotations

import cv2
import numpy as np


def phash(image: np.ndarray) -> int:
    """64-bit DCT perceptual hash of an RGB or grey uint8 image, as a signed int64."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    med = np.median(low[1:])  # the DC term says only how bright the picture is
    bits = (low > med).astype(np.uint8)
    value = int(np.packbits(bits).view(">u8")[0])
    return value - (1 << 64) if value >= (1 << 63) else value


def hamming(a: np.ndarray, b: int) -> np.ndarray:
    """Bit distance between each hash in ``a`` (int64 array) and ``b``."""
    x = np.bitwise_xor(a.view(np.uint64), np.uint64(b & ((1 << 64) - 1)))
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


def near_duplicates(hashes: np.ndarray, threshold: int) -> dict[int, tuple[int, int]]:
    """Within one group, ``{i: (j, distance)}`` for each image ``i`` within ``threshold`` bits
    of an earlier kept image ``j`` (so the first of each cluster stays)."""
    kept: list[int] = []
    dup: dict[int, tuple[int, int]] = {}
    hashes = np.asarray(hashes, dtype=np.int64)
    for i in range(len(hashes)):
        if kept:
            d = hamming(hashes[kept], int(hashes[i]))
            j = int(np.argmin(d))
            if d[j] <= threshold:
                dup[i] = (kept[j], int(d[j]))
                continue
        kept.append(i)
    return dup
