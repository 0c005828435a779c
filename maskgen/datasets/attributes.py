"""Model-free face attributes: skin tone (ITA), sharpness, brightness, face size.

They need no trained model beyond the landmarks, so any dataset can be audited the same way,
and the build computes them per image while it has the decoded pixels (hence the < 1 ms budget:
colour conversion runs only on the few thousand skin pixels, through a 256-entry sRGB table).

Skin tone follows the Individual Typology Angle (Chardon et al., Int. J. Cosmet. Sci. 1991),
``ITA = atan((L* - 50) / b*) * 180 / pi`` in CIELab (D65), binned with the Del Bino et al. scale
(Pigment Cell Res. 2006; Del Bino & Bernerd, Br. J. Dermatol. 2013): very light > 55,
light 41..55, intermediate 28..41, tan 10..28, brown -30..10, dark <= -30. ITA measured on
photographs follows exposure and the colour of the light: the skin pixels are divided by the
image's own white (its brightest 1%) when it has one, and only skin-coloured pixels count
(see docs/audit.md for what that corrects on FairFace, and what it cannot). It is a coarse,
relative indicator of how a dataset spreads over skin tones, not a measurement of any person.
"""

from __future__ import annotations

import math
import os

import cv2
import numpy as np

# Del Bino scale: (label, lower bound exclusive, upper bound inclusive), lightest first.
ITA_BINS: list[tuple[str, float, float]] = [
    ("very light", 55.0, math.inf),
    ("light", 41.0, 55.0),
    ("intermediate", 28.0, 41.0),
    ("tan", 10.0, 28.0),
    ("brown", -30.0, 10.0),
    ("dark", -math.inf, -30.0),
]
SKIN_TONES: list[str] = [b[0] for b in ITA_BINS]

# sRGB (IEC 61966-2-1) decoding of 8-bit values to linear light, one entry per code value.
_c = np.arange(256, dtype=np.float64) / 255.0
SRGB_TO_LINEAR = np.where(_c <= 0.04045, _c / 12.92, ((_c + 0.055) / 1.055) ** 2.4).astype(np.float32)
del _c
# Linear sRGB -> XYZ (D65), rows pre-divided by the D65 white point so Xn = Yn = Zn = 1.
_M = np.array(
    [[0.4124564, 0.3575761, 0.1804375],
     [0.2126729, 0.7151522, 0.0721750],
     [0.0193339, 0.1191920, 0.9503041]],
    dtype=np.float64,
)
_WHITE = np.array([0.95047, 1.0, 1.08883])
RGB_TO_XYZN = (_M / _WHITE[:, None]).astype(np.float32)

# iBUG 68-point indices (0-based). Cheeks: the area between lower eyelid, nose side, upper lip
# corner and jaw line; each polygon is shrunk toward its centroid so eyes, nostrils, lips and
# the jaw border (background, beard shadow) stay out.
_CHEEK_RIGHT = [36, 41, 40, 39, 31, 48, 4, 3, 2, 1]  # subject's right = image left
_CHEEK_LEFT = [45, 46, 47, 42, 35, 54, 12, 13, 14, 15]
_BROWS = list(range(18, 26))  # brow points without the outer tips
_SHRINK = 0.7
# Forehead band above the brows, in units of the brow-to-chin distance.
_FOREHEAD_LOW, _FOREHEAD_HIGH = 0.06, 0.22
# More pixels than this do not move a median; a regular subsample keeps the cost flat.
_MAX_SKIN_PIXELS = 2048
_MAX_REFERENCE_PIXELS = 16384  # image pixels sampled for the white reference

# White-point correction (see docs/audit.md, "How far ITA can be trusted"): the brightest
# WHITE_PERCENTILE of the image, per channel, is taken as white; each channel of the skin
# pixels is divided by it (exposure and colour cast at once, white-patch retinex). Applied only
# when that reference is clearly brighter than the skin (else the image holds no white to
# trust, e.g. a face filling a dark frame), with the gain capped.
WHITE_PERCENTILE = 99.0
MIN_WHITE_OVER_SKIN = 1.5  # reference luma / median skin luma needed to correct
MAX_WHITE_GAIN = 8.0  # no channel is amplified more than this (3 stops)
# Skin-pixel selection after correction: skin is a warm colour (CIELab hue 15..90 degrees,
# chroma >= 6); the darkest 10% (shadow, stubble, nostril edge) and brightest 5% (specular
# highlight) of the region are left out.
SKIN_HUE = (15.0, 90.0)
SKIN_MIN_CHROMA = 6.0
SKIN_L_PERCENTILES = (10.0, 95.0)
_MIN_SELECTED = 20  # fewer selected pixels than this: keep the whole region

# Sharpness on an absolute scale: the face region is resampled to SHARPNESS_SIZE pixels
# square before the variance of its Laplacian, so the number means the same detail whatever
# the image resolution (a small face upsampled is soft, as it looks).
SHARPNESS_SIZE = 96
_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


def skin_tone_label(ita: float) -> str | None:
    """The Del Bino bin of an ITA value (degrees); None for NaN."""
    if ita is None or not math.isfinite(ita):
        return None
    for label, lo, hi in ITA_BINS:
        if lo < ita <= hi:
            return label
    return SKIN_TONES[-1]


def rgb_to_lab(pixels: np.ndarray) -> np.ndarray:
    """CIELab (D65) of RGB uint8 pixels (..., 3) with exact sRGB linearization; float32."""
    return lab_of_linear(SRGB_TO_LINEAR[pixels])


def ita_of_pixels(pixels: np.ndarray) -> float:
    """Median per-pixel ITA (degrees) of RGB uint8 pixels (N, 3).

    The median keeps specular highlights, shadows and stray hair from moving the value.
    ``b*`` is floored at a small positive value: skin has b* > 0, and a grey pixel then counts
    as an extreme angle (+-90) that the median ignores instead of flipping sign.
    """
    if pixels.size == 0:
        return float("nan")
    lab = rgb_to_lab(pixels.reshape(-1, 3))
    b = np.maximum(lab[:, 2], 1e-3)
    x = (lab[:, 0] - 50.0) / b
    # ITA is increasing in x: select the middle x value(s) first, convert only those
    n = len(x)
    k = n // 2
    if n % 2:
        mid = np.partition(x, k)[k : k + 1]
    else:
        part = np.partition(x, (k - 1, k))
        mid = part[k - 1 : k + 1]
    return float(np.degrees(np.arctan(mid)).mean())


def _median_ita(L: np.ndarray, b: np.ndarray) -> float:
    """Median per-pixel ITA of CIELab L*, b* arrays (b* floored as in :func:`ita_of_pixels`)."""
    if L.size == 0:
        return float("nan")
    x = (L - _F32[50.0]) / np.maximum(b, _F32[1e-3])
    return _ita_of_ratio(np.median(x))


def _ita_of_ratio(x) -> float:
    """ITA (degrees) of the ratio ``(L* - 50) / b*``, in float64 (the C library's ``atan``,
    correctly rounded, where NumPy's float32 ``arctan`` varies with the CPU's SIMD path)."""
    return math.degrees(math.atan(float(x)))


def _dot3(v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``v @ w`` for float32 (..., 3) ``v`` and (3,) ``w``, as ``(v0 w0 + v1 w1) + v2 w2`` in
    float32: one order of operations on every CPU (a BLAS product's order and fusing depend on
    the CPU it runs on), and the one the compiled form uses."""
    return (v[..., 0] * w[0] + v[..., 1] * w[1]) + v[..., 2] * w[2]


def _cbrt(t: np.ndarray) -> np.ndarray:
    """Cube root of non-negative float32 values, as float32: a start from the float's bits
    (exponent divided by three), then Halley's method in float64, rounded. Only integer and
    IEEE arithmetic, so every CPU (and the compiled form) gets the same bits; NumPy's own
    ``cbrt`` differs between CPUs (its SIMD paths) and from the C library's."""
    t = np.ascontiguousarray(t, np.float32)
    x = t.astype(np.float64)
    y = (t.view(np.int32) // 3 + CBRT_MAGIC).astype(np.int32).view(np.float32).astype(np.float64)
    for _ in range(CBRT_STEPS):
        y3 = y * y * y
        y = y * (y3 + 2.0 * x) / (2.0 * y3 + x)
    return y.astype(np.float32)


# _cbrt's start is within 3.5 % of the cube root; each Halley step cubes the error: after two it
# is 2e-14, after three float64's own 4e-16, so the float32 result is the correctly rounded cube
# root (the tests check it densely over CIELab's range, 216/24389 to 1). The compiled form writes
# its three steps out.
CBRT_MAGIC = 709921077
CBRT_STEPS = 3
_EPS = np.float32(216.0 / 24389.0)
_KAPPA = np.float32(24389.0 / 27.0)
_F32 = {v: np.float32(v) for v in (16.0, 116.0, 500.0, 200.0, 50.0, 1e-3, 1.0)}


def lab_of_linear(lin: np.ndarray) -> np.ndarray:
    """CIELab (D65) of float32 linear-light sRGB values (..., 3) in [0, 1]; float32."""
    lin = np.asarray(lin, np.float32)
    f = np.empty_like(lin)
    for c in range(3):
        t = _dot3(lin, RGB_TO_XYZN[c])
        f[..., c] = np.where(t > _EPS, _cbrt(t), (_KAPPA * t + _F32[16.0]) / _F32[116.0])
    lab = np.empty_like(f)
    lab[..., 0] = _F32[116.0] * f[..., 1] - _F32[16.0]
    lab[..., 1] = _F32[500.0] * (f[..., 0] - f[..., 1])
    lab[..., 2] = _F32[200.0] * (f[..., 1] - f[..., 2])
    return lab


def white_reference(img: np.ndarray, compiled: bool | None = None) -> np.ndarray:
    """Linear RGB of the image's white: the WHITE_PERCENTILE of each channel (sRGB code
    values through the exact table), from a regular grid of at most 16,384 pixels.
    ``compiled``: the Numba form (:mod:`maskgen.datasets.attributes_kernel`; the same values),
    the NumPy form, or (None) the first when Numba is there."""
    h, w = img.shape[:2]
    step = max(1, int(np.ceil(np.sqrt(h * w / _MAX_REFERENCE_PIXELS))))
    n = (-(-h // step)) * (-(-w // step))
    k = WHITE_PERCENTILE / 100.0 * (n - 1)
    kern = _kernel(compiled)
    if kern is not None and img.ndim == 3 and img.shape[2] >= 3 and img.dtype == np.uint8:
        return SRGB_TO_LINEAR[kern.white_codes(img, step, k)]
    small = np.ascontiguousarray(img[::step, ::step])
    ref = np.empty(3, np.float32)
    for c in range(3):
        cum = np.cumsum(cv2.calcHist([small], [c], None, [256], [0, 256]).ravel())
        ref[c] = SRGB_TO_LINEAR[min(255, int(np.searchsorted(cum, k, side="right")))]
    return ref


_KERNEL: list = []  # [module or None] once looked up


def _kernel(compiled: bool | None):
    """:mod:`maskgen.datasets.attributes_kernel` when it is wanted (``compiled`` True, or None
    and ``MASKGEN_NUMPY_KERNELS`` unset) and Numba is installed, else None (the NumPy form)."""
    if compiled is False or (compiled is None and os.environ.get("MASKGEN_NUMPY_KERNELS")):
        return None
    if not _KERNEL:
        try:
            from maskgen.datasets import attributes_kernel as mod
        except ImportError:
            mod = None
        _KERNEL.append(mod)
    if compiled and _KERNEL[0] is None:
        raise ImportError("the compiled attributes need Numba: pip install numba")
    return _KERNEL[0]


_TAN_HUE = (math.tan(math.radians(SKIN_HUE[0])), math.tan(math.radians(SKIN_HUE[1])))
_TAN_LO = np.float32(_TAN_HUE[0])
_CHROMA2 = np.float32(SKIN_MIN_CHROMA ** 2)


def corrected_ita(skin: np.ndarray, ref: np.ndarray | None,
                  select: bool = True, compiled: bool | None = None) -> tuple[float, bool]:
    """ITA of skin pixels (uint8 (N, 3)) after the white-point correction (``ref``: the
    image's white, None for none), with skin-like pixels only (``select``); returns
    ``(ita, corrected)`` (``corrected`` False: no usable white in the image). ``compiled``: as
    in :func:`white_reference` (both forms give the same bits)."""
    if skin.size == 0:
        return float("nan"), False
    skin = np.ascontiguousarray(skin.reshape(-1, 3), dtype=np.uint8)
    kern = _kernel(compiled)
    if kern is not None:
        skin_y = float(kern.skin_luma_median(skin, SRGB_TO_LINEAR, _LUMA))
    else:
        lin = SRGB_TO_LINEAR[skin]
        skin_y = float(np.median(_dot3(lin, _LUMA)))
    gain = None
    if ref is not None:
        ref = np.asarray(ref, np.float32)
        ref_y = float(_dot3(ref, _LUMA))
        if ref_y >= MIN_WHITE_OVER_SKIN * skin_y and ref.min() > 0:
            gain = np.minimum(_F32[1.0] / ref, np.float32(MAX_WHITE_GAIN)).astype(np.float32)
    if kern is not None:
        ratio = kern.ita_ratio_median(skin, SRGB_TO_LINEAR, np.ones(3, np.float32) if gain is None else gain,
                                      gain is not None, RGB_TO_XYZN, _EPS, _KAPPA, SKIN_L_PERCENTILES[0],
                                      SKIN_L_PERCENTILES[1], _CHROMA2, _TAN_LO, select, _MIN_SELECTED,
                                      CBRT_MAGIC)
        return _ita_of_ratio(ratio), gain is not None
    if gain is not None:
        lin = np.minimum(lin * gain, _F32[1.0])
    lab = lab_of_linear(lin)
    L, a, b = lab[:, 0], lab[:, 1], lab[:, 2]
    n = L.size
    lo_k = int(SKIN_L_PERCENTILES[0] / 100.0 * (n - 1))
    hi_k = int(SKIN_L_PERCENTILES[1] / 100.0 * (n - 1))
    part = np.partition(L, (lo_k, hi_k))
    lo, hi = part[lo_k], part[hi_k]
    # hue in (15, 90) degrees without arctan: a > 0, and b / a between tan(15) and tan(90)
    sel = (a * a + b * b >= _CHROMA2) & (a > 0) & (b > a * _TAN_LO) & (L > lo) & (L < hi)
    if not select or int(sel.sum()) < _MIN_SELECTED:
        sel = np.ones_like(sel)
    return _median_ita(L[sel], b[sel]), gain is not None


def _shrink(poly: np.ndarray, factor: float) -> np.ndarray:
    c = poly.mean(axis=0)
    return c + (poly - c) * factor


def skin_polygons(landmarks: np.ndarray) -> list[np.ndarray]:
    """Cheek and forehead polygons (float (k, 2) arrays, image pixels) from 68 landmarks."""
    lm = np.asarray(landmarks, dtype=np.float32).reshape(68, 2)
    polys = [_shrink(lm[_CHEEK_RIGHT], _SHRINK), _shrink(lm[_CHEEK_LEFT], _SHRINK)]
    brows = lm[_BROWS]
    up = brows.mean(axis=0) - lm[8]  # chin -> brows: "up" in the face's own frame
    low = brows + up * _FOREHEAD_LOW
    high = brows + up * _FOREHEAD_HIGH
    polys.append(np.concatenate([low, high[::-1]], axis=0))
    return polys


def _face_box(landmarks: np.ndarray, h: int, w: int) -> tuple[int, int, int, int]:
    x0, y0 = np.floor(landmarks.min(axis=0)).astype(int)
    x1, y1 = np.ceil(landmarks.max(axis=0)).astype(int) + 1
    return max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB image HxWx3, got shape {img.shape}")
    if img.shape[2] == 4:
        img = img[..., :3]
    if img.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {img.dtype}")
    return img


def face_regions(image: np.ndarray, landmarks: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, str]:
    """``(rgb, skin, face, face_size, region)``: the image as RGB uint8, all its skin pixels
    ((N, 3)), the face box, the inter-ocular distance
    and ``"landmarks"`` or ``"center"`` (no usable landmarks: the central half of the image)."""
    img = _as_rgb(image)
    h, w = img.shape[:2]
    if landmarks is not None:
        lm = np.asarray(landmarks, dtype=np.float32).reshape(68, 2)
        x0, y0, x1, y1 = _face_box(lm, h, w)
        if x1 - x0 < 2 or y1 - y0 < 2:
            landmarks = None  # landmarks entirely outside the image: fall back
    if landmarks is not None:
        region = "landmarks"
        # Rasterize the skin polygons into a mask covering the face box grown by the forehead.
        polys = skin_polygons(lm)
        allpts = np.concatenate(polys + [lm], axis=0)
        bx0, by0, bx1, by1 = _face_box(allpts, h, w)
        mask = np.zeros((by1 - by0, bx1 - bx0), dtype=np.uint8)
        shift = np.array([bx0, by0], dtype=np.float32)
        cv2.fillPoly(mask, [np.round((p - shift) * 16).astype(np.int32) for p in polys], 1,
                     lineType=cv2.LINE_8, shift=4)
        skin = img[by0:by1, bx0:bx1][mask.view(bool)]  # the mask holds 0/1
        face = img[y0:y1, x0:x1]
        left_eye = lm[36:42].mean(axis=0)
        right_eye = lm[42:48].mean(axis=0)
        face_size = float(np.hypot(*(right_eye - left_eye)))
    else:
        region = "center"
        cy0, cy1 = h // 4, h - h // 4
        cx0, cx1 = w // 4, w - w // 4
        face = img[cy0:cy1, cx0:cx1]
        skin = face.reshape(-1, 3)
        face_size = float("nan")
    return img, skin, face, face_size, region


def face_attributes(image: np.ndarray, landmarks: np.ndarray | None = None, *, raw: bool = True) -> dict:
    """Skin tone, sharpness, brightness and face size of one face.

    ``image`` is RGB uint8 HxWx3; ``landmarks`` the 68 (x, y) points in its pixels. Without
    landmarks, the central half of the image stands for the face (aligned crops, or detector
    failures) and ``region`` says ``"center"`` so the report can tell the two apart.

    Returns ``ita`` (degrees, NaN when no skin pixel: white-point corrected, skin-like pixels
    only, see :func:`corrected_ita`), ``skin_tone`` (its Del Bino label or None), ``ita_raw``
    (the uncorrected median over all region pixels), ``white_corrected`` (whether the image
    had a white to correct with), ``sharpness`` (variance of the Laplacian of the face
    resampled to 96x96: an absolute scale), ``brightness`` (mean Rec. 601 luma of the face
    region, 0..255), ``face_size`` (inter-ocular distance in pixels, NaN without landmarks),
    ``skin_pixels`` and ``region`` (``"landmarks"`` or ``"center"``). ``raw=False`` leaves
    ``ita_raw`` out (None): the build records the corrected ITA only.
    """
    img, skin, face, face_size, region = face_regions(image, landmarks)
    n_skin = int(skin.shape[0])
    if n_skin > _MAX_SKIN_PIXELS:  # a regular subsample keeps the time budget on big faces
        skin = skin[:: -(-n_skin // _MAX_SKIN_PIXELS)]
    ita_raw = ita_of_pixels(skin) if raw else None
    ita, corrected = corrected_ita(skin, white_reference(img))
    gray = cv2.cvtColor(np.ascontiguousarray(face), cv2.COLOR_RGB2GRAY)
    sharpness = sharpness_of(gray)
    brightness = cv2.mean(gray)[0] if gray.size else float("nan")
    return {
        "ita": ita,
        "skin_tone": skin_tone_label(ita),
        "ita_raw": ita_raw,
        "white_corrected": corrected,
        "sharpness": sharpness,
        "brightness": brightness,
        "face_size": face_size,
        "skin_pixels": n_skin,
        "region": region,
    }


def sharpness_of(gray: np.ndarray) -> float:
    """Variance of the Laplacian of a face region resampled to SHARPNESS_SIZE square (an
    absolute scale: see ``SHARPNESS_BINS`` in :mod:`maskgen.audit.stats`); NaN when tiny."""
    if gray.size == 0 or min(gray.shape) < 3:
        return float("nan")
    interp = cv2.INTER_AREA if min(gray.shape) >= SHARPNESS_SIZE else cv2.INTER_LINEAR
    g = cv2.resize(gray, (SHARPNESS_SIZE, SHARPNESS_SIZE), interpolation=interp)
    _, std = cv2.meanStdDev(cv2.Laplacian(g, cv2.CV_32F))
    return float(std[0, 0] ** 2)
