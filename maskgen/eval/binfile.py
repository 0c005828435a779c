"""insightface verification ``.bin`` files, read and written without MXNet.

A ``.bin`` is a pickle of ``(bins, issame_list)``: ``bins`` holds 2N encoded images (JPEG bytes,
pair i = images 2i and 2i+1, usually aligned 112x112 crops) and ``issame_list`` N booleans.
Files written by Python 2 or by MXNet-era scripts store the images as ``str``, ``bytes`` or
``numpy`` uint8 buffers; all are accepted.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np


def _as_bytes(item: object, i: int) -> bytes:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, np.ndarray):
        return item.astype(np.uint8, copy=False).tobytes()
    if isinstance(item, str):  # python-2 pickles read as text
        return item.encode("latin-1")
    if hasattr(item, "asnumpy"):  # an MXNet NDArray pickled by a user with MXNet at hand
        return np.asarray(item.asnumpy(), dtype=np.uint8).tobytes()
    raise TypeError(f"image {i}: unsupported type {type(item).__name__} in .bin file")


def read_bin(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """(encoded images, issame per pair). Checks that there are two images per label."""
    with open(path, "rb") as f:
        obj = pickle.load(f, encoding="bytes")
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise ValueError(f"{path}: not an insightface .bin (expected a pickled (bins, issame) pair)")
    bins, issame = obj
    images = [_as_bytes(b, i) for i, b in enumerate(bins)]
    labels = np.asarray([bool(x) for x in issame], dtype=bool)
    if len(images) != 2 * len(labels):
        raise ValueError(f"{path}: {len(images)} images for {len(labels)} pairs (expected 2 per pair)")
    return images, labels


def write_bin(path: str | os.PathLike, images: list[bytes], issame: np.ndarray | list[bool]) -> None:
    """Write ``(images, issame)`` as insightface does (atomically: ``.tmp`` then rename)."""
    issame = [bool(x) for x in issame]
    if len(images) != 2 * len(issame):
        raise ValueError(f"{len(images)} images for {len(issame)} pairs (expected 2 per pair)")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(([bytes(b) for b in images], issame), f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
