"""The JPEG look of a photo: its compression read from the headers, given to the mask.

A mask pasted on a JPEG photo is clean while the face around it carries the photo's 8x8 block
artefacts and smoothed chroma. :func:`jpeg_look` reads the quality (the luminance
quantisation table against the IJG standard table scaled by quality, as libjpeg writes it)
and the chroma subsampling from the DQT and SOF markers, without decoding.
:func:`round_trip_mask` passes the mask's bounding box, on the photo's block grid, through one
JPEG encode/decode at that quality; only the mask's pixels take the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Below this quality the mask gets the round trip; at or above it a JPEG looks clean enough.
MAX_QUALITY = 95

# The IJG standard tables (ITU T.81 Annex K), in natural (row-major) order.
_STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
], np.int64)
_STD_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    *[99] * 32,
], np.int64)
# The natural-order index of each zigzag position (a DQT lists its table in zigzag order).
_ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
    12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
], np.intp)

# cv2.IMWRITE_JPEG_SAMPLING_FACTOR values by the luminance sampling factors (chroma at 1x1).
SAMPLINGS = {"4:4:4": (1, 1), "4:2:2": (2, 1), "4:4:0": (1, 2), "4:2:0": (2, 2), "4:1:1": (4, 1)}
_FACTOR = {(1, 1): 0x111111, (2, 1): 0x211111, (1, 2): 0x121111, (2, 2): 0x221111, (4, 1): 0x411111}


def _scaled_tables() -> tuple[np.ndarray, np.ndarray]:
    """(100, 64) luminance and chroma tables libjpeg writes for quality 1..100 (baseline)."""
    q = np.arange(1, 101)
    scale = np.where(q < 50, 5000 // q, 200 - 2 * q)[:, None]
    out = []
    for std in (_STD_LUMA, _STD_CHROMA):
        out.append(np.clip((std[None, :] * scale + 50) // 100, 1, 255))
    return out[0], out[1]


_LUMA_Q, _CHROMA_Q = _scaled_tables()


@dataclass(frozen=True)
class JpegLook:
    """A JPEG's compression: ``quality`` (1..100, the IJG scale), ``sampling`` (``"4:2:0"``,
    ``"4:2:2"``, ``"4:4:4"``, ... or ``"gray"``), and the frame size."""

    quality: int
    sampling: str
    width: int
    height: int


def _tables_and_frame(data: bytes) -> tuple[dict[int, np.ndarray], tuple | None]:
    """The quantisation tables (id -> 64 values, natural order) and the frame header
    (width, height, [(component id, h, v, table id)]) met before the first scan."""
    tables: dict[int, np.ndarray] = {}
    frame = None
    i, n = 2, len(data)
    while i + 1 < n:
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker in (0xD9, 0xDA) or i + 4 > n:
            break
        seg_len = int.from_bytes(data[i + 2 : i + 4], "big")
        if seg_len < 2 or i + 2 + seg_len > n:
            break
        seg = data[i + 4 : i + 2 + seg_len]
        if marker == 0xDB:  # DQT: one or more tables, each Pq|Tq then 64 (or 128) bytes
            j = 0
            while j < len(seg):
                pq, tq = seg[j] >> 4, seg[j] & 15
                size = 128 if pq else 64
                if j + 1 + size > len(seg):
                    break
                raw = np.frombuffer(seg[j + 1 : j + 1 + size], ">u2" if pq else np.uint8).astype(np.int64)
                table = np.empty(64, np.int64)
                table[_ZIGZAG] = raw
                tables[tq] = table
                j += 1 + size
        elif marker in (0xC0, 0xC1, 0xC2) and len(seg) >= 6:  # Huffman SOF (what cv2 decodes)
            h = int.from_bytes(seg[1:3], "big")
            w = int.from_bytes(seg[3:5], "big")
            comps = [(seg[6 + 3 * k], seg[7 + 3 * k] >> 4, seg[7 + 3 * k] & 15, seg[8 + 3 * k])
                     for k in range(seg[5]) if 8 + 3 * k < len(seg)]
            frame = (w, h, comps)
        elif marker in (0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            return {}, None  # lossless or arithmetic: no block look to match
        i += 2 + seg_len
    return tables, frame


def estimate_quality(luma: np.ndarray, chroma: np.ndarray | None = None) -> int:
    """The IJG quality (1..100) of a luminance table (64 values, natural order), with the
    chroma table when given: the quality whose scaled standard tables have the nearest sum
    (the mean quantiser step, as ImageMagick compares), then the nearest entries (sum of
    absolute differences); ties go to the higher quality. Exact for libjpeg's own files, the
    nearest match for a camera's or an editor's tables."""
    luma = np.asarray(luma, np.int64)
    total = _LUMA_Q.sum(1) - int(luma.sum())
    err = np.abs(_LUMA_Q - luma[None, :]).sum(1)
    if chroma is not None:
        chroma = np.asarray(chroma, np.int64)
        total = total + _CHROMA_Q.sum(1) - int(chroma.sum())
        err = err + np.abs(_CHROMA_Q - chroma[None, :]).sum(1)
    key = np.abs(total) * 100_000 + err  # sum first, entries second
    best = np.flatnonzero(key == key.min())
    return int(best[-1]) + 1


def jpeg_look(data: bytes) -> JpegLook | None:
    """The compression of JPEG bytes, from the headers alone; None for anything else (not a
    JPEG, no tables or frame before the first scan, lossless or arithmetic coding)."""
    if len(data) < 4 or data[:3] != b"\xff\xd8\xff":
        return None
    tables, frame = _tables_and_frame(data)
    if frame is None or not frame[2]:
        return None
    w, h, comps = frame
    luma = tables.get(comps[0][3])
    if luma is None:
        return None
    if len(comps) == 1:
        return JpegLook(estimate_quality(luma), "gray", w, h)
    if len(comps) != 3:
        return None  # CMYK/YCCK: converted on decode, no grid to match
    chroma = tables.get(comps[1][3])
    hv = (comps[0][1], comps[0][2])
    same_chroma = all((c[1], c[2]) == (1, 1) for c in comps[1:])
    sampling = next((k for k, v in SAMPLINGS.items() if v == hv), None) if same_chroma else None
    return JpegLook(estimate_quality(luma, chroma), sampling or "4:2:0", w, h)


def look_of_image(data: bytes, img: np.ndarray | None) -> JpegLook | None:
    """:func:`jpeg_look` when the decoded ``img`` has the JPEG's frame size (a downscaled or
    rotated decode no longer sits on the file's block grid), else None."""
    look = jpeg_look(data) if data else None
    if look is None or img is None or img.shape[:2] != (look.height, look.width):
        return None
    return look


def applies(quality: int | None) -> bool:
    """Whether a quality asks for the round trip (set and below ``MAX_QUALITY``)."""
    return quality is not None and int(quality) < MAX_QUALITY


def check_quality(quality: int | None, sampling: str | None) -> None:
    if quality is not None and not 1 <= int(quality) <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {quality!r}")
    if sampling is not None and sampling != "gray" and sampling not in SAMPLINGS:
        raise ValueError(f"jpeg_sampling must be one of {(*SAMPLINGS, 'gray')}, got {sampling!r}")


def round_trip_mask(out: np.ndarray, alpha: np.ndarray, x0: int, y0: int, quality: int,
                    sampling: str | None = None) -> None:
    """Give one composited mask the photo's JPEG look, in place on ``out`` (RGB uint8).

    ``alpha`` (h, w) is the mask's coverage over ``out[y0:y0+h, x0:x0+w]``. Its bounding box,
    widened to the image's MCU grid (8 px, 16 px along a subsampled axis), is JPEG-encoded and
    decoded once at ``quality`` with ``sampling`` (default 4:2:0); each pixel then moves
    toward the round-tripped value by its alpha. Pixels with alpha 0 are left as they are."""
    a = np.clip(alpha, 0.0, 1.0)
    nz = (a > 0).astype(np.uint8)
    bx, by, bw, bh = cv2.boundingRect(nz)
    if bw == 0 or bh == 0:
        return
    H, W = out.shape[:2]
    sh, sv = (1, 1) if sampling == "gray" else SAMPLINGS.get(sampling or "4:2:0", (2, 2))
    gx, gy = 8 * sh, 8 * sv
    ax0, ay0 = x0 + bx, y0 + by
    gx0, gy0 = ax0 // gx * gx, ay0 // gy * gy
    gx1 = min(-(-(ax0 + bw) // gx) * gx, W)
    gy1 = min(-(-(ay0 + bh) // gy) * gy, H)
    box = out[gy0:gy1, gx0:gx1]
    q = int(quality)
    if sampling == "gray":
        ok, enc = cv2.imencode(".jpg", cv2.cvtColor(box, cv2.COLOR_RGB2GRAY), [cv2.IMWRITE_JPEG_QUALITY, q])
        rt = cv2.cvtColor(cv2.imdecode(enc, cv2.IMREAD_GRAYSCALE), cv2.COLOR_GRAY2RGB) if ok else None
    else:
        params = [cv2.IMWRITE_JPEG_QUALITY, q, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, _FACTOR[(sh, sv)]]
        ok, enc = cv2.imencode(".jpg", cv2.cvtColor(box, cv2.COLOR_RGB2BGR), params)
        rt = cv2.cvtColor(cv2.imdecode(enc, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) if ok else None
    if rt is None or rt.shape != box.shape:
        return
    # the mask's pixels inside the box, in box coordinates: (1 - a) x now + a x round trip,
    # rounded to 8 bits (cv2.blendLinear: exact where a is 0 or 1), then written where a > 0
    sy0, sx0 = ay0 - gy0, ax0 - gx0
    sub = np.s_[sy0 : sy0 + bh, sx0 : sx0 + bw]
    aw = np.ascontiguousarray(a[by : by + bh, bx : bx + bw])
    cur = box[sub]
    mix = cv2.blendLinear(np.ascontiguousarray(cur), np.ascontiguousarray(rt[sub]), 1.0 - aw, aw)
    cur_c = np.ascontiguousarray(cur)
    cv2.copyTo(mix, nz[by : by + bh, bx : bx + bw], cur_c)
    cur[...] = cur_c
