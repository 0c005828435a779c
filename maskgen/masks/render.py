"""Putting one mask on one face: warp, light, loops, blur, noise and blend, inside the face ROI.

Realism comes from the photo itself: the mask is shaded by the low-frequency luminance of the
skin it covers (so shadows and highlights continue across it), tinted by the scene's colour cast,
blurred to the image's own sharpness and given its noise level, and blended with anti-aliased
premultiplied alpha (no halo).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from maskgen.masks.designs import Template
from maskgen.masks.geometry import coons_grid, forward_fixed, mask_map

_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# jaw line and brows: the outline of the skin whose light the mask takes
_FACE_OUTLINE = np.array([*range(0, 17), 26, 25, 24, 23, 22, 21, 20, 19, 18, 17])


@dataclass
class Rendered:
    x0: int
    y0: int
    rgb_premul: np.ndarray  # (h, w, 3) float32, premultiplied
    alpha: np.ndarray  # (h, w) float32
    rgba: np.ndarray | None = None  # (h, w, 4) float32: the two above as one contiguous array


def noise_sigma(gray: np.ndarray) -> float:
    """Immerkaer's fast noise estimate (grey levels 0..1) of an image region."""
    h, w = gray.shape
    if h < 3 or w < 3:
        return 0.0
    r = cv2.filter2D(gray, -1, _NOISE_KERNEL)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2.0) * cv2.norm(r, cv2.NORM_L1) / r.size / 6.0)


def blur_sigma(gray: np.ndarray) -> float:
    """Gaussian sigma (pixels) that makes a sharp edge look as soft as this region's edges.

    The ratio of gradient energy after/before a known sigma=1 blur is near 0.5 for crisp photos
    and near 1 for soft ones.
    """
    if min(gray.shape) < 8:
        return 0.5
    # mean absolute gradients via cv2.norm (L1): one C call each, no temporaries
    e0 = _grad_l1(gray) + 1e-6
    r = _grad_l1(cv2.GaussianBlur(gray, (0, 0), 1.0)) / e0
    return min(max((r - 0.45) * 3.0, 0.35), 2.0)


def _grad_l1(gray: np.ndarray) -> float:
    """Mean |d/dx| + mean |d/dy| (Sobel) of a float32 image."""
    n = gray.size
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    return (cv2.norm(gx, cv2.NORM_L1) + cv2.norm(gy, cv2.NORM_L1)) / n


def loop_paths(lm: np.ndarray, grid: np.ndarray, loops: str) -> list[np.ndarray]:
    """Polylines of the visible ear loops / straps (image pixels)."""
    if loops == "tie":
        return []
    lm = lm.astype(np.float64)
    eye_l, eye_r = lm[36:42].sum(0) / 6.0, lm[42:48].sum(0) / 6.0
    iod = max(float(np.linalg.norm(eye_r - eye_l)), 1.0)
    ex = (eye_r - eye_l) / iod
    up = np.array([ex[1], -ex[0]])
    bridge = lm[27]
    wl = float((bridge - lm[0]) @ ex)
    wr = float((lm[16] - bridge) @ ex)
    sides = [(j_top, j_low, sgn) for j_top, j_low, width, sgn in ((0, 3, wl, -1.0), (16, 13, wr, 1.0))
             if width >= 0.3 * (wl + wr)]  # a narrower half-face is turned away: its ear is hidden
    if not sides:
        return []
    # all anchors on the mask's side corners in one call: (u, 0.10) and (u, 0.88) per side
    us = tuple(0.0 if sgn < 0 else 1.0 for _, _, sgn in sides for _ in (0, 1))
    anchors = forward_fixed(grid, us, (0.10, 0.88) * len(sides))
    starts, mids, ends = [], [], []
    for n, (j_top, j_low, sgn) in enumerate(sides):
        a_top, a_bot = anchors[2 * n], anchors[2 * n + 1]
        out = ex * sgn
        if loops == "ear":
            # the loop runs from the mask's corners to the root of the ear and disappears behind it
            ear_top = lm[j_top] + out * 0.10 * iod + up * 0.08 * iod
            ear_low = 0.5 * (lm[j_top + int(sgn) * -2] + lm[j_low]) + out * 0.10 * iod
            starts += [a_top, a_bot]
            mids += [(a_top + ear_top) / 2 + out * 0.04 * iod + up * 0.03 * iod, (a_bot + ear_low) / 2 + out * 0.04 * iod]
            ends += [ear_top, ear_low]
        else:  # head straps run back above and below the ear
            back_top = lm[j_top] + out * 0.22 * iod + up * 0.40 * iod
            back_low = lm[j_low] + out * 0.28 * iod - up * 0.05 * iod
            starts += [a_top, a_bot]
            mids += [(a_top + back_top) / 2 + up * 0.06 * iod, (a_bot + back_low) / 2 - up * 0.03 * iod]
            ends += [back_top, back_low]
    # every quadratic Bezier at once: (paths, 8 samples, 2)
    p0, p1, p2 = (np.asarray(q)[:, None, :] for q in (starts, mids, ends))
    paths = list(_B0 * p0 + _B1 * p1 + _B2 * p2)
    return paths


# Quadratic Bezier weights of the 8 samples along each loop (precomputed once).
_T = np.linspace(0.0, 1.0, 8)[None, :, None]
_B0, _B1, _B2 = (1 - _T) ** 2, 2 * (1 - _T) * _T, _T**2


def _noise_tile() -> np.ndarray:
    """A fixed tile of unit Gaussian noise; samples crop it at seeded offsets (cheap, seeded)."""
    global _TILE
    if _TILE is None:
        _TILE = np.random.default_rng(20240607).standard_normal((512, 512)).astype(np.float32)
    return _TILE


_TILE: np.ndarray | None = None



def render_face(
    img: np.ndarray,
    lm: np.ndarray,
    wear: str,
    tpl: Template,
    rng: np.random.Generator,
) -> Rendered | None:
    """The mask of one face as premultiplied RGB + alpha over an ROI of ``img``."""
    h, w = img.shape[:2]
    grid = coons_grid(lm, wear)
    paths = loop_paths(lm, grid, tpl.loops)
    extra = np.concatenate(paths) if paths else None
    mid = grid.shape[0] // 2
    d = grid[mid, -1] - grid[mid, 0]
    patch_w = float(np.hypot(d[0], d[1]))
    level = min(max(int(np.floor(np.log2(max(tpl.px_u / max(patch_w, 1.0), 1.0)))), 0), len(tpl.levels) - 1)
    k = float(2**level)
    u0, _, v0, _ = tpl.extent
    mm = mask_map(grid, tpl.extent, (h, w), extra_points=extra, to_pixels=(u0, tpl.px_u / k, v0, tpl.px_v / k))
    if mm is None:
        return None
    rh, rw = mm.map_u.shape
    rgba = cv2.remap(tpl.levels[level], mm.dense, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    m = rgba.astype(np.float32)
    m *= 1.0 / 255.0
    alpha = m[..., 3]
    rgb = m[..., :3]

    eye_d = (lm[42:48].sum(0) - lm[36:42].sum(0)) / 6.0
    iod = float(np.hypot(eye_d[0], eye_d[1]))
    if paths:
        cov = np.zeros((rh, rw), np.uint8)
        thick = max(1, int(round(iod * 0.045)))
        shift = 4
        pts = list(np.round((np.stack(paths) - (mm.x0, mm.y0)) * (1 << shift)).astype(np.int32))
        # two strokes per path: full strength, then fading behind the ear
        n = len(pts[0]) - 1
        cut = (2 * n) // 3
        cv2.polylines(cov, [q[: cut + 1] for q in pts], False, 255, thick, cv2.LINE_AA, shift)
        cv2.polylines(cov, [q[cut:] for q in pts], False, 110, thick, cv2.LINE_AA, shift)
        la = cov.astype(np.float32)
        la *= 1.0 / 255.0
        la *= 1.0 - alpha  # loops pass behind the mask
        # loop colour into RGB and coverage into alpha: contiguous 4-channel OpenCV ops on m
        cv2.add(m, cv2.multiply(cv2.merge([la, la, la, la]), (*tpl.loop_rgb, 1.0)), dst=m)

    roi8 = img[mm.y0 : mm.y0 + rh, mm.x0 : mm.x0 + rw]
    gray8 = cv2.cvtColor(roi8, cv2.COLOR_RGB2GRAY)
    wsum = float(alpha.sum())
    if wsum < 1.0:
        return None
    # lighting: the skin's low-frequency luminance (normalised convolution over the face outline,
    # so the dark collar under a chin does not darken the mask), relative to its mean under the mask
    f = max(1, int(round(patch_w / 24.0)))  # work at ~24 px across the mask
    sw, sh = max(1, rw // f), max(1, rh // f)
    sx, sy = sw / rw, sh / rh
    cs8 = cv2.resize(roi8, (sw, sh), interpolation=cv2.INTER_AREA)
    cs = cs8.astype(np.float32)
    cs *= 1.0 / 255.0
    ls = cv2.cvtColor(cs, cv2.COLOR_RGB2GRAY)  # luma of the small colour image (both linear)
    skin = np.zeros((sh, sw), np.float32)
    hull = (lm[_FACE_OUTLINE] - (mm.x0, mm.y0)) * (sx, sy)
    cv2.fillConvexPoly(skin, np.round(hull * 16).astype(np.int32), 1.0, cv2.LINE_AA, 4)
    sig = max(patch_w / 10.0 / f, 0.5)
    num = cv2.GaussianBlur(ls * skin, (0, 0), sig)
    den = cv2.GaussianBlur(skin, (0, 0), sig)
    as_ = cv2.resize(alpha, (sw, sh), interpolation=cv2.INTER_AREA)
    wsk = as_ * skin
    wsum = float(wsk.sum())
    if wsum < 1e-3:  # the face outline is off the ROI: use every covered pixel
        wsk, wsum = as_, float(as_.sum()) + 1e-6
    ref = float(np.vdot(ls, wsk)) / wsum + 1e-4
    lb = np.where(den > 0.05, num / np.maximum(den, 1e-6), ref)
    shade_s = np.minimum(np.maximum(lb * (1.0 / ref), 0.5), 1.5) ** 0.85
    exposure = min(max((ref / 0.5) ** 0.5, 0.35), 1.12)
    mean_rgb = (wsk.reshape(-1) @ cs.reshape(-1, 3)) / wsum
    cast = (mean_rgb / max(float(mean_rgb.mean()), 1e-4)) ** 0.25
    # a 4-channel factor (alpha's is 1) so the whole RGBA is scaled in one contiguous pass
    light_s = np.ones((sh, sw, 4), np.float32)
    light_s[..., :3] = (shade_s * exposure)[..., None] * cast[None, None, :]
    light = cv2.resize(light_s, (rw, rh), interpolation=cv2.INTER_LINEAR)
    m *= light
    c0, c1, c2 = cv2.split(cs8)  # channel differences in 8 bits: two C calls, no temporaries
    if (cv2.norm(c0, c1, cv2.NORM_L1) + cv2.norm(c1, c2, cv2.NORM_L1)) / (255.0 * c0.size) < 0.004:
        # a black-and-white photo: the mask is grey too
        rgb[...] = (rgb @ _LUMA)[..., None]

    # the image's own softness and grain, measured on the face around the mask
    probe = _probe(gray8, mm, lm)
    sb = blur_sigma(probe)
    if sb > 0.4:
        m = cv2.GaussianBlur(m, (0, 0), sb)  # the four channels at once
        rgb, alpha = m[..., :3], m[..., 3]
    sn = noise_sigma(probe)
    if sn > 0.002:
        tile = _noise_tile()
        ry, rx = rng.random(2)
        oy = int(ry * (tile.shape[0] - min(rh, tile.shape[0]) + 1))
        ox = int(rx * (tile.shape[1] - min(rw, tile.shape[1]) + 1))
        noise = tile[oy : oy + rh, ox : ox + rw]
        if noise.shape != (rh, rw):
            noise = np.resize(noise, (rh, rw))
        grain = noise * min(sn, 0.08)
        grain *= cv2.extractChannel(m, 3)
        # one contiguous 4-channel add (alpha's channel gets 0): numpy's strided add into the
        # RGB view costs several times more
        cv2.add(m, cv2.merge([grain, grain, grain, np.zeros_like(grain)]), dst=m)
        rgb, alpha = m[..., :3], m[..., 3]
    return Rendered(mm.x0, mm.y0, rgb, alpha, m)


_PROBE_POINTS = [30, 31, 35, 2, 14]  # nose tip, nostrils, cheeks


def _probe(gray8: np.ndarray, mm, lm: np.ndarray) -> np.ndarray:
    """A <= 64x64 patch of the face (cheeks/nose) for the blur and noise estimates."""
    pts = lm[_PROBE_POINTS].tolist()
    cx = sum(p[0] for p in pts) / len(pts) - mm.x0
    cy = sum(p[1] for p in pts) / len(pts) - mm.y0
    h, w = gray8.shape
    half = 32
    x0 = int(min(max(cx - half, 0), max(0, w - 2 * half)))
    y0 = int(min(max(cy - half, 0), max(0, h - 2 * half)))
    return gray8[y0 : y0 + 2 * half, x0 : x0 + 2 * half].astype(np.float32) * (1.0 / 255.0)
