"""Decoding images into RGB uint8 with a per-image status instead of exceptions.

Batch paths (folders, RecordIO, tar shards) must never stop on one bad file, so every decoder
here returns ``(image, reason)``: the image is ``None`` exactly when ``reason`` says why.
Odd but usable inputs (grayscale, CMYK, 16-bit, RGBA, palette, EXIF-rotated) are converted.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps

# Images above this many pixels are refused before decoding (decompression-bomb guard);
# images above MAX_SIDE on their long side are downscaled after decoding.
MAX_PIXELS = 100_000_000
MAX_SIDE = 4096
# cv2 decodes plain 8-bit JPEGs about twice as fast as Pillow; Pillow handles the rest.
_JPEG_MAGIC = b"\xff\xd8\xff"

ImageFile.LOAD_TRUNCATED_IMAGES = False


def load_image(path: str | os.PathLike) -> tuple[np.ndarray | None, str]:
    """Read an image file into RGB uint8 (H, W, 3), or ``(None, reason)``."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return None, "unreadable: file not found"
    except IsADirectoryError:
        return None, "unreadable: is a directory"
    except PermissionError:
        return None, "unreadable: permission denied"
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"
    return decode_image(data)


def decode_image(data: bytes, max_side: int = MAX_SIDE) -> tuple[np.ndarray | None, str]:
    """Decode encoded image bytes into RGB uint8 (H, W, 3), or ``(None, reason)``."""
    if not data:
        return None, "empty file"
    if data[:3] == _JPEG_MAGIC and not _has_exif_orientation(data):
        img = _decode_jpeg_cv2(data)
        if img is not None:
            return _limit_size(img, max_side), "ok"
    return _decode_pillow(data, max_side)


def _decode_jpeg_cv2(data: bytes) -> np.ndarray | None:
    """Fast path for ordinary 8-bit JPEGs; None when anything looks unusual (Pillow decides)."""
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return None  # truncated: let Pillow report it
    rgb = imdecode_rgb(np.frombuffer(data, np.uint8))
    if rgb is None or rgb.ndim != 3 or rgb.shape[2] != 3:
        return None
    if _is_cmyk_jpeg(data):
        return None
    return rgb


_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


def imdecode_rgb(buf: np.ndarray) -> np.ndarray | None:
    """``cv2.imdecode`` straight to RGB (OpenCV >= 4.10 converts during decoding; a numpy
    channel flip of the BGR result would cost as much as the decode itself)."""
    if _IMREAD_RGB is not None:
        return cv2.imdecode(buf, _IMREAD_RGB)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return None if bgr is None or bgr.ndim != 3 else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _is_cmyk_jpeg(data: bytes) -> bool:
    """True when the JPEG's frame header declares 4 components (CMYK/YCCK)."""
    i = 2
    n = len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker in (0xC0, 0xC1, 0xC2):
            return data[i + 9] == 4
        seg_len = int.from_bytes(data[i + 2 : i + 4], "big")
        i += 2 + seg_len
    return False


def _has_exif_orientation(data: bytes) -> bool:
    """Whether an APP1 EXIF segment is present (then Pillow applies the orientation)."""
    return b"Exif\x00\x00" in data[:65536]


def _decode_pillow(data: bytes, max_side: int) -> tuple[np.ndarray | None, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > MAX_PIXELS:
                return None, f"too large: {w}x{h} pixels exceeds {MAX_PIXELS}"
            if w == 0 or h == 0:
                return None, "corrupt: zero-size image"
            if im.format == "JPEG" and max(w, h) > 2 * max_side:
                im.draft("RGB", (max_side, max_side))  # cheap JPEG downscale while decoding
            im.load()
    except Image.DecompressionBombError as exc:
        return None, f"too large: {exc}"
    except Image.DecompressionBombWarning as exc:
        return None, f"too large: {exc}"
    except Image.UnidentifiedImageError:
        return None, "corrupt: not a recognised image format"
    except (OSError, SyntaxError, ValueError) as exc:
        msg = str(exc)
        if "truncated" in msg.lower():
            return None, "corrupt: truncated image data"
        return None, f"corrupt: {msg}"
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a bad EXIF block must not lose the image
        pass
    try:
        arr = _to_rgb8(im)
    except (OSError, ValueError) as exc:
        return None, f"corrupt: {exc}"
    return _limit_size(arr, max_side), "ok"


def _to_rgb8(im: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to RGB uint8; 16-bit data is scaled, alpha composited on grey."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im).astype(np.float32)
        hi = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        g = np.clip(a * (255.0 / hi) + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[:, :, None], 3, axis=2))
    if mode == "F":
        a = np.asarray(im).astype(np.float32)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        g = np.zeros(a.shape, np.uint8) if hi <= lo else ((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[:, :, None], 3, axis=2))
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(im.convert("RGBA")).astype(np.float32)
        a = rgba[:, :, 3:4] / 255.0
        rgb = rgba[:, :, :3] * a + 128.0 * (1.0 - a)  # composite on mid grey
        return np.ascontiguousarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))
    if mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def _limit_size(img: np.ndarray, max_side: int) -> np.ndarray:
    h, w = img.shape[:2]
    if max(h, w) <= max_side:
        return img
    s = max_side / max(h, w)
    out = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(out)

