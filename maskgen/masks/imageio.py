"""Decoding images into RGB uint8 with a per-image status instead of exceptions.

Batch paths (folders, RecordIO, tar shards) must never stop on one bad file, so every decoder
here returns ``(image, reason)``: the image is ``None`` exactly when ``reason`` says why.
Odd but usable inputs (grayscale, CMYK, 16-bit, RGBA, palette, EXIF-rotated) are converted.

Inputs are untrusted. Only regular files are read (a FIFO or a device is refused without
blocking or reading), files above ``MAX_FILE_BYTES`` are refused before reading, and every
decoder path reads the dimensions from the image header first and refuses more than
``MAX_PIXELS`` pixels before any pixel buffer exists (a small JPEG can declare 20000x20000).
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps

# Images above this many pixels are refused before decoding (decompression-bomb guard);
# images above MAX_SIDE on their long side are downscaled after decoding.
MAX_PIXELS = 100_000_000
MAX_SIDE = 4096
# Files above this many bytes are refused before reading (a face photo is far smaller; a link
# to a huge file or a device must not be read into memory).
MAX_FILE_BYTES = 64 * 1024 * 1024
# cv2 decodes plain 8-bit JPEGs about twice as fast as Pillow; Pillow handles the rest.
_JPEG_MAGIC = b"\xff\xd8\xff"
# The only formats Pillow may open: the image types maskgen reads (no plug-in that runs an
# external program, such as EPS through Ghostscript).
PIL_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF", "GIF", "PPM")

ImageFile.LOAD_TRUNCATED_IMAGES = False

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "unreadable: file not found"
    if isinstance(exc, IsADirectoryError):
        return "unreadable: is a directory"
    if isinstance(exc, PermissionError):
        return "unreadable: permission denied"
    return f"unreadable: {exc.strerror or exc}"


def _refuse_mode(mode: int, size: int, max_bytes: int) -> str | None:
    if stat.S_ISDIR(mode):
        return "unreadable: is a directory"
    if not stat.S_ISREG(mode):
        return f"unreadable: not a regular file ({_file_kind(mode)})"
    if size > max_bytes:
        return f"too large: {size} bytes exceeds {max_bytes}"
    return None


def read_regular_file(path: str | os.PathLike, max_bytes: int | None = None) -> tuple[bytes | None, str]:
    """The bytes of a regular file, or ``(None, reason)``.

    Never blocks and never reads a non-file: the path (links followed) is checked with ``stat``
    before opening, opened with ``O_NONBLOCK`` (a FIFO opens at once) and checked again with
    ``fstat`` on the open descriptor (the path may have changed in between). At most
    ``max_bytes`` (default ``MAX_FILE_BYTES``) are read, even from a file that grows meanwhile.
    """
    max_bytes = MAX_FILE_BYTES if max_bytes is None else max_bytes
    try:
        st = os.stat(path)
    except OSError as exc:
        return None, _os_reason(exc)
    refused = _refuse_mode(st.st_mode, st.st_size, max_bytes)
    if refused:
        return None, refused
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        return None, _os_reason(exc)
    try:
        st = os.fstat(fd)
        refused = _refuse_mode(st.st_mode, st.st_size, max_bytes)
        if refused:
            return None, refused
        chunks: list[bytes] = []
        total = 0
        want = max_bytes + 1  # one byte more tells a file that grew past the cap
        while total < want:
            # the whole file in one read; a file that grew since fstat in small steps
            step = st.st_size + 1 - total if total <= st.st_size else 1 << 16
            chunk = os.read(fd, min(want - total, step))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        return None, _os_reason(exc)
    finally:
        os.close(fd)
    if total > max_bytes:
        return None, f"too large: more than {max_bytes} bytes"
    return b"".join(chunks), "ok"


def load_image(path: str | os.PathLike, max_bytes: int | None = None) -> tuple[np.ndarray | None, str]:
    """Read an image file into RGB uint8 (H, W, 3), or ``(None, reason)``."""
    data, reason = read_regular_file(path, max_bytes)
    if data is None:
        return None, reason
    return decode_image(data)


def decode_image(data: bytes, max_side: int = MAX_SIDE) -> tuple[np.ndarray | None, str]:
    """Decode encoded image bytes into RGB uint8 (H, W, 3), or ``(None, reason)``."""
    try:
        return _decode(data, max_side)
    except MemoryError:  # an image within the caps on a machine short of memory: this one only
        return None, "too large: out of memory while decoding"


def _decode(data: bytes, max_side: int) -> tuple[np.ndarray | None, str]:
    if not data:
        return None, "empty file"
    if len(data) > MAX_FILE_BYTES:
        return None, f"too large: {len(data)} bytes exceeds {MAX_FILE_BYTES}"
    if data[:3] == _JPEG_MAGIC and not _has_exif_orientation(data):
        frame = jpeg_frame(data)
        if frame is not None:
            w, h, _ = frame
            if w * h > MAX_PIXELS:
                return None, _too_many_pixels(w, h)
            if w == 0 or h == 0:
                return None, "corrupt: zero-size image"
            if max(w, h) <= 2 * max_side:  # larger ones: Pillow's reduced JPEG decode
                img = _decode_jpeg_cv2(data, frame)
                if img is not None:
                    return _limit_size(img, max_side), "ok"
    return _decode_pillow(data, max_side)


def pixel_refusal(data: bytes, max_pixels: int | None = None) -> str | None:
    """The reason to refuse ``data`` for its pixel count, read from the header alone (no
    decode), or None. For decoders outside this module (a trainer's ``cv2.imdecode``), which
    must not meet a 20000x20000 JPEG unwarned."""
    cap = MAX_PIXELS if max_pixels is None else max_pixels
    if data[:3] == _JPEG_MAGIC:
        frame = jpeg_frame(data)
        if frame is not None:
            return _too_many_pixels(frame[0], frame[1], cap) if frame[0] * frame[1] > cap else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as im:
                w, h = im.size
    except Image.DecompressionBombError as exc:
        return _bomb_reason(exc)
    except Exception:  # noqa: BLE001 - unreadable headers are the decoder's to report
        return None
    return _too_many_pixels(w, h, cap) if w * h > cap else None


def _too_many_pixels(w: int, h: int, cap: int | None = None) -> str:
    cap = MAX_PIXELS if cap is None else cap
    return f"too large: {w}x{h} pixels exceeds {cap}"


def _bomb_reason(exc: Exception) -> str:
    """Pillow's own header check fired first (at open, before any pixel is decoded)."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return f"too large: {found.group(1) if found else 'too many'} pixels exceeds {MAX_PIXELS}"


def _decode_jpeg_cv2(data: bytes, frame: tuple[int, int, int]) -> np.ndarray | None:
    """Fast path for ordinary 8-bit JPEGs; None when anything looks unusual (Pillow decides).

    ``frame`` is the header's (width, height, components), already checked against the caps."""
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return None  # truncated: let Pillow report it
    if frame[2] != 3 and frame[2] != 1:
        return None  # CMYK/YCCK: Pillow converts those
    try:
        rgb = imdecode_rgb(np.frombuffer(data, np.uint8))
    except cv2.error:
        return None
    if rgb is None or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[:2] != (frame[1], frame[0]):
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


# Start-of-frame markers (baseline, extended, progressive, lossless, arithmetic): all carry
# the frame's height, width and components at the same offsets.
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_frame(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a JPEG's frame header, read without decoding; None when
    the marker walk does not reach a frame header (then Pillow's header check decides)."""
    i, n = 2, len(data)
    while i + 1 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame
            return None
        if i + 4 > n:
            return None
        seg_len = int.from_bytes(data[i + 2 : i + 4], "big")
        if seg_len < 2:
            return None
        if marker in _SOF_MARKERS:
            if i + 10 > n:
                return None
            h = int.from_bytes(data[i + 5 : i + 7], "big")
            w = int.from_bytes(data[i + 7 : i + 9], "big")
            return w, h, data[i + 9]
        i += 2 + seg_len
    return None


def _has_exif_orientation(data: bytes) -> bool:
    """Whether an APP1 EXIF segment is present (then Pillow applies the orientation)."""
    return b"Exif\x00\x00" in data[:65536]


def _decode_pillow(data: bytes, max_side: int) -> tuple[np.ndarray | None, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=PIL_FORMATS)  # reads the header only
            w, h = im.size
            if w * h > MAX_PIXELS:
                return None, _too_many_pixels(w, h)
            if w == 0 or h == 0:
                return None, "corrupt: zero-size image"
            if im.format == "JPEG" and max(w, h) > 2 * max_side:
                im.draft("RGB", (max_side, max_side))  # cheap JPEG downscale while decoding
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return None, _bomb_reason(exc)
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

