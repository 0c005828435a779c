"""Putting one mask on one face: 3D mesh, warp, light, loops, shadows, blur, noise, inside the ROI.

Realism comes from the photo itself. The face's own light is estimated as a first-order
spherical-harmonic model (ambient + one direction) fitted to the skin luminance against the
surface normals of the head, then applied to the mask's own normals (its cup, fold and ridge
catch the light like the face does); what the model does not explain (cast shadows, a light
falloff across the photo) is kept at half strength. The skin excludes the eyes, nostrils and
mouth, so an open mouth never shows through. The scene's colour cast tints the mask; it casts
a soft contact shadow on the skin under its edges; it gets the image's blur and noise and is
blended with anti-aliased premultiplied alpha (no halo). Ear loops and straps are drawn along
the head in 3D and fade where it turns away.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from maskgen.masks.designs import Template
from maskgen.masks.geometry import FaceMesh, face_mesh, forward_fixed, knot_values, mask_map, tps_weights
from maskgen.masks.pose import MEAN_SHAPE_3D

_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_RESIDUAL = 0.5  # how much of the light the normals do not explain is kept (a square root)
_FALLOFF = 0.35  # darkening of the mask where it turns away from the camera (1 - this at 90 deg)
_FALLOFF_BASE = 1.0 - _FALLOFF  # a camera-facing surface keeps the fitted light
_SHADOW = 0.5  # darkness of the contact shadow right under a mask edge
_KNEE = 0.9  # lit colours above this roll off toward white instead of clipping at it
_RIDGE = np.diag([0.0, 1.0, 1.0, 1.0])  # the lighting fit's ridge on the normal terms
_TINY = 1e-9 * np.eye(4)


@dataclass
class Rendered:
    x0: int
    y0: int
    rgb_premul: np.ndarray  # (h, w, 3) float32, premultiplied
    alpha: np.ndarray  # (h, w) float32
    rgba: np.ndarray | None = None  # (h, w, 4) float32: the two above as one contiguous array
    shadow: np.ndarray | None = None  # (h, w) float32: darkening of the skin outside the mask
    mesh: FaceMesh | None = None


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
    e0 = _grad_l1(gray) + 1e-6
    r = _grad_l1(cv2.GaussianBlur(gray, (0, 0), 1.0)) / e0
    return min(max((r - 0.45) * 3.0, 0.35), 2.0)


def _grad_l1(gray: np.ndarray) -> float:
    """Mean |d/dx| + mean |d/dy| (Sobel) of a float32 image."""
    n = gray.size
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    return (cv2.norm(gx, cv2.NORM_L1) + cv2.norm(gy, cv2.NORM_L1)) / n


# ------------------------------------------------------------------------- loops and straps

# Where loops end on the mean face (image-left side; mirrored): in front of the ear's root
# (ear loops), above and below the ear toward the back of the head (straps).
_M = MEAN_SHAPE_3D
_EAR_ENDS = {
    "ear": ((_M[0, 0] - 4.0, _M[0, 1] + 1.0, _M[0, 2] + 16.0), (_M[2, 0] - 3.0, _M[2, 1] + 2.0, _M[2, 2] + 16.0)),
    "head": ((_M[0, 0] - 2.0, _M[0, 1] - 16.0, _M[0, 2] + 22.0), (_M[4, 0] - 5.0, _M[4, 1] + 4.0, _M[4, 2] + 24.0)),
}
_LOOP_N = 10
_TT = np.linspace(0.0, 1.0, _LOOP_N)[:, None]
_BEZIER = np.concatenate([(1 - _TT) ** 2, 2 * (1 - _TT) * _TT, _TT**2], 1)  # (samples, 3) weights
_BOW = np.array([[-4.0, 0.0, -3.0], [-4.0, 0.0, -3.0], [4.0, 0.0, -3.0], [4.0, 0.0, -3.0]])


@functools.lru_cache(maxsize=4)
def _loop_ends(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean-face loop ends (4, 3): left top, left low, right top, right low; and their
    thin-plate weights (so they follow the face like the mask)."""
    top, low = (np.array(p) for p in _EAR_ENDS[kind])
    mirror = np.array([-1.0, 1.0, 1.0])
    ends = np.stack([top, low, top * mirror, low * mirror])
    w = tps_weights(ends)
    for a in (ends, w):
        a.flags.writeable = False
    return ends, w


def _head_normal(p: np.ndarray) -> np.ndarray:
    """Outward normals of an ellipsoid around the mean head at head points (n, 3)."""
    q = (p - (0.0, 8.0, 60.0)) / np.array([46.0**2, 72.0**2, 60.0**2])
    # the norm as np.linalg.norm computes it (sqrt of the summed squares), without its overhead
    return q / np.maximum(np.sqrt((q * q).sum(-1, keepdims=True)), 1e-9)


def loop_paths(mesh: FaceMesh, loops: str, loop_v: tuple[float, float] = (0.10, 0.88)) -> list[tuple[np.ndarray, np.ndarray]]:
    """Visible ear loops / straps: per path, image points (n, 2) and visibility (n,) in 0..1."""
    if loops == "tie":
        return []
    head = mesh.head
    patch = mesh.knots[1:-1, 1:-1]
    anchors = forward_fixed(patch, (0.0, 0.0, 1.0, 1.0), (loop_v[0], loop_v[1], loop_v[0], loop_v[1]))
    ends0, w = _loop_ends(loops)
    ends = ends0 + w @ mesh.disp
    # the loop bows out over the cheek: its middle a little outward and forward of the chord
    mid = 0.5 * (anchors + ends) + _BOW
    # every quadratic Bezier at once: (samples, 3 controls) @ (3 controls, 4 paths x 3)
    pts = (_BEZIER @ np.stack([anchors, mid, ends]).reshape(3, 12)).reshape(_LOOP_N, 4, 3).transpose(1, 0, 2)
    flat = pts.reshape(-1, 3)
    xy, _ = head.project(flat)
    n_cam = _head_normal(flat) @ head.R[2]
    vis = np.minimum(np.maximum((0.05 - n_cam) * 4.0, 0.0), 1.0).reshape(4, _LOOP_N)
    xy = xy.reshape(4, _LOOP_N, 2)
    return [(xy[k], vis[k]) for k in range(4) if vis[k, 0] > 0.05]


def _draw_loops(paths, shape: tuple[int, int], origin: tuple[int, int], thick: int) -> np.ndarray:
    """Loop coverage (h, w) uint8: strokes at full strength where visible, fading behind."""
    cov = np.zeros(shape, np.uint8)
    shift = 4
    q = np.round((np.stack([p for p, _ in paths]) - origin) * (1 << shift)).astype(np.int32)
    cut, end = [], []  # per path (a handful of samples: plain Python beats a dozen array calls)
    for _, v in paths:
        vl = v.tolist()
        ln = len(vl)
        c = next((i for i, x in enumerate(vl) if x < 0.6), ln)  # full strength up to here
        cut.append(c)
        end.append(next((i for i in range(c, ln) if vl[i] < 0.1), ln))  # then fading until here
    full = [q[k, :n] for k, n in enumerate(cut) if n >= 2]
    part = [q[k, max(n - 1, 0) : e] for k, (n, e) in enumerate(zip(cut, end)) if e - n >= 1]
    if full:
        cv2.polylines(cov, full, False, 255, thick, cv2.LINE_AA, shift)
    if part:  # fading where the head turns away
        cv2.polylines(cov, part, False, 110, thick, cv2.LINE_AA, shift)
    return cov


def _noise_tile() -> np.ndarray:
    """A fixed tile of unit Gaussian noise; samples crop it at seeded offsets (cheap, seeded)."""
    global _TILE
    if _TILE is None:
        _TILE = np.random.default_rng(20240607).standard_normal((512, 512)).astype(np.float32)
    return _TILE


_TILE: np.ndarray | None = None


# ------------------------------------------------------------------------------- the render


def render_face(
    img: np.ndarray,
    lm: np.ndarray,
    wear: str,
    tpl: Template,
    rng: np.random.Generator,
    loop_v: tuple[float, float] = (0.10, 0.88),
) -> Rendered | None:
    """The mask of one face as premultiplied RGB + alpha over an ROI of ``img``."""
    h, w = img.shape[:2]
    mesh = face_mesh(lm, (h, w), wear, tpl.shape, tpl.extent)
    if mesh is None:
        return None
    paths = loop_paths(mesh, tpl.loops, loop_v)
    extra = np.concatenate([p for p, _ in paths]) if paths else None
    patch = mesh.patch_xy()
    mid = patch.shape[0] // 2
    d = patch[mid, -1] - patch[mid, 0]
    patch_w = float(np.hypot(d[0], d[1]))
    level = min(max(int(np.floor(np.log2(max(tpl.px_u / max(patch_w, 1.0), 1.0)))), 0), len(tpl.levels) - 1)
    k = float(2**level)
    u0, _, v0, _ = tpl.extent
    mm = mask_map(mesh.xy, tpl.extent, (h, w), extra_points=extra, to_pixels=(u0, tpl.px_u / k, v0, tpl.px_v / k),
                  knot_params=(mesh.us, mesh.vs), front=mesh.front, depth=mesh.depth)
    if mm is None:
        return None
    rh, rw = mm.map_u.shape
    rgba = cv2.remap(tpl.levels[level], mm.dense, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    m = rgba.astype(np.float32)
    m *= 1.0 / 255.0
    if mm.visible is not None:  # the silhouette where the surface turns away from the camera
        cv2.multiply(m, cv2.merge([mm.visible] * 4), dst=m)
    alpha = m[..., 3]
    if float(alpha.sum()) < 1.0:
        return None

    eye_d = (lm[42:48].sum(0) - lm[36:42].sum(0)) / 6.0
    iod = float(np.hypot(eye_d[0], eye_d[1]))
    if paths:
        thick = max(1, int(round(iod * 0.055)))
        cov = _draw_loops(paths, (rh, rw), (mm.x0, mm.y0), thick)
        la = cv2.multiply(cov, 1.0 - alpha, scale=1.0 / 255.0, dtype=cv2.CV_32F)  # loops pass behind the mask
        # loop colour into RGB and coverage into alpha (per-channel products merged: a 1 -> 4
        # channel cv2.transform gives the same floats at 3x the cost)
        r_, g_, b_ = (np.float32(x) for x in tpl.loop_rgb)
        cv2.add(m, cv2.merge([la * r_, la * g_, la * b_, la]), dst=m)

    roi8 = img[mm.y0 : mm.y0 + rh, mm.x0 : mm.x0 + rw]
    light = _lighting(roi8, lm, mm, mesh, tpl.sheen, tpl.peak)
    if light is None:
        return None
    light_s, sheen, grey = light
    m *= light_s
    if sheen is not None:  # fabric sheen: light added where a dark fabric faces it
        cv2.add(m, cv2.multiply(sheen, cv2.merge([alpha] * 4)), dst=m)
    if grey:  # a black-and-white photo: the mask is grey too
        rgb = m[..., :3]
        rgb[...] = (rgb @ _LUMA)[..., None]

    # the image's own softness and grain, measured on the face around the mask
    probe = _probe(roi8, mm, lm)
    sb = blur_sigma(probe)
    if sb > 0.4:
        m = cv2.GaussianBlur(m, (0, 0), sb)  # the four channels at once
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
        cv2.add(m, cv2.merge([grain, grain, grain, np.zeros_like(grain)]), dst=m)  # into RGB, not alpha
    shadow = _contact_shadow(cv2.extractChannel(m, 3), patch_w)
    return Rendered(mm.x0, mm.y0, m[..., :3], m[..., 3], m, shadow, mesh)


def roll_off(x: np.ndarray) -> np.ndarray:
    """Colours above ``_KNEE`` compressed smoothly toward 1: ``y = k + (1 - k) e / ((1 - k) + e)``
    with ``e = x - k`` (slope 1 at the knee, every difference above it kept, as a camera's
    shoulder does); identity below the knee."""
    e = np.maximum(x - _KNEE, 0.0)
    s = 1.0 - _KNEE
    return np.minimum(x, _KNEE) + s * e / (s + e)


def _contact_shadow(alpha: np.ndarray, patch_w: float) -> np.ndarray:
    """Soft shadow of the mask on the skin just outside its edges, longer below (light from
    above): the blurred coverage shifted down, outside the mask only."""
    sig = max(patch_w * 0.03, 0.6)
    s = cv2.GaussianBlur(alpha, (0, 0), sig)
    dy = int(round(patch_w * 0.025))
    if dy > 0:
        s = cv2.copyMakeBorder(s[:-dy], dy, 0, 0, 0, cv2.BORDER_REPLICATE)
    s *= 1.0 - alpha
    s *= _SHADOW
    return s


def _lighting(roi8: np.ndarray, lm: np.ndarray, mm, mesh: FaceMesh, sheen_k: float = 0.0, peak: float = 1.0
              ) -> tuple[np.ndarray, np.ndarray | None, bool] | None:
    """(RGBA light factor (h, w, 4) for the ROI, RGBA sheen to add (x alpha) or None, whether the
    photo is black and white).

    On the coarse grid of the map: the skin luminance is fitted as ``a + b . n`` against the
    head's normals (taken from the mask surface draped over it); the mask is lit by the same
    model at its own normals, times the unexplained part of the skin's light at half strength;
    where that would take the fabric's brightest colour (``peak``) past the knee it rolls off.
    """
    bx0, by0, bx1, by1 = mm.box
    gh, gw = mm.fu.shape
    ox, oy = bx0 - mm.x0, by0 - mm.y0
    box8 = roi8[oy : oy + (by1 - by0), ox : ox + (bx1 - bx0)]
    cs8 = cv2.resize(box8, (gw, gh), interpolation=cv2.INTER_AREA)
    cs = cs8.astype(np.float32)
    cs *= 1.0 / 255.0
    ls = cv2.cvtColor(cs, cv2.COLOR_RGB2GRAY)
    # normals and skin weight of the surface at the coarse samples (skin: not the eyes,
    # nostrils or mouth, inside the face outline; fixed per knot on the mean face)
    vals = knot_values(np.concatenate([mesh.normals, mesh.skin[..., None]], 2), mm.fu, mm.fv)
    normals = vals[..., :3]
    skin = np.ascontiguousarray(vals[..., 3], dtype=np.float32)
    # and never the mouth, open or not, wherever this face's lips are
    lips = lm[48:60]
    c = lips.sum(0) / 12.0
    q = ((c + (lips - c) * 1.35) - (bx0 - 0.5, by0 - 0.5)) * (gw / (bx1 - bx0), gh / (by1 - by0)) - 0.5
    cv2.fillConvexPoly(skin, np.round(q * 16).astype(np.int32), 0.0, cv2.LINE_AA, 4)
    wsk = skin
    wsum = float(wsk.sum())
    if wsum < 2.0:  # hardly any skin under the mask (a tight crop): every covered sample
        r_, c_ = mesh.xy.shape[:2]
        wsk = ((mm.fu >= 1) & (mm.fu <= c_ - 2) & (mm.fv >= 1) & (mm.fv <= r_ - 2)).astype(np.float32)
        wsum = float(wsk.sum())
        if wsum < 1.0:
            return None
    # weighted least squares of L = a + b . n, with a ridge on b (normals vary little)
    x = np.concatenate([np.ones((gh * gw, 1)), normals.reshape(-1, 3)], 1)
    wv = wsk.reshape(-1)
    xtw = x.T * wv
    lhs = xtw @ x + _RIDGE * (0.01 * wsum)
    coef = np.linalg.solve(lhs + _TINY, xtw @ ls.reshape(-1).astype(np.float64))
    ref = float(wv @ ls.reshape(-1)) / wsum + 1e-4
    model = (x @ coef).reshape(gh, gw)
    # plus the falloff every matte surface shows as it turns from the camera-side light
    shade = np.minimum(np.maximum(model * (1.0 / ref), 0.35), 1.6) * (_FALLOFF_BASE - _FALLOFF * normals[..., 2])
    # what the normals do not explain, smoothed over the skin (normalised convolution)
    sig = max(0.12 * gw, 0.6)
    num = cv2.GaussianBlur((ls / np.maximum(model, 0.02)).astype(np.float32) * wsk, (0, 0), sig)
    den = cv2.GaussianBlur(wsk, (0, 0), sig)
    resid = np.where(den > 0.05, num / np.maximum(den, 1e-6), 1.0)
    shade *= np.sqrt(np.minimum(np.maximum(resid, 0.6), 1.5))  # _RESIDUAL = 0.5
    exposure = min(max((ref / 0.5) ** 0.5, 0.35), 1.12)
    mean_rgb = (wsk.reshape(-1) @ cs.reshape(-1, 3)) / wsum
    cast = (mean_rgb / max(float(mean_rgb.sum() / 3), 1e-4)) ** 0.15  # (= .mean(), without its overhead)
    light_s = np.ones((gh, gw, 4), np.float32)
    light_s[..., :3] = (shade * exposure)[..., None] * cast[None, None, :]
    # a light fabric lit like a bright face would go past 1 and clip to a flat patch: where its
    # brightest colour would pass the knee, the light is scaled down to the rolled-off level
    # (on this coarse grid: the fabric's texture under it is kept, only compressed)
    top = light_s[..., :3] * peak
    if float(top.max()) > _KNEE:
        light_s[..., :3] *= roll_off(top) / np.maximum(top, 1e-6)
    size = (bx1 - bx0, by1 - by0)
    rh, rw = roi8.shape[:2]
    pad = (oy, rh - oy - size[1], ox, rw - ox - size[0])
    light = cv2.resize(light_s, size, interpolation=cv2.INTER_LINEAR)
    if any(pad):
        light = cv2.copyMakeBorder(light, *pad, cv2.BORDER_REPLICATE)
    sheen = None
    if sheen_k > 0:
        sheen_s = np.zeros((gh, gw, 4), np.float32)
        sheen_s[..., :3] = (sheen_k * np.minimum(np.maximum(shade * exposure - 0.85, 0.0), 0.5))[..., None] * cast[None, None, :]
        sheen = cv2.resize(sheen_s, size, interpolation=cv2.INTER_LINEAR)
        if any(pad):
            sheen = cv2.copyMakeBorder(sheen, *pad, cv2.BORDER_REPLICATE)
    c0, c1, c2 = cv2.split(cs8)
    grey = (cv2.norm(c0, c1, cv2.NORM_L1) + cv2.norm(c1, c2, cv2.NORM_L1)) / (255.0 * c0.size) < 0.004
    return light, sheen, grey


_PROBE_POINTS = [30, 31, 35, 2, 14]  # nose tip, nostrils, cheeks


def _probe(roi8: np.ndarray, mm, lm: np.ndarray) -> np.ndarray:
    """A <= 64x64 grey patch of the face (cheeks/nose) for the blur and noise estimates."""
    pts = lm[_PROBE_POINTS].tolist()
    cx = sum(p[0] for p in pts) / len(pts) - mm.x0
    cy = sum(p[1] for p in pts) / len(pts) - mm.y0
    h, w = roi8.shape[:2]
    half = 32
    x0 = int(min(max(cx - half, 0), max(0, w - 2 * half)))
    y0 = int(min(max(cy - half, 0), max(0, h - 2 * half)))
    gray = cv2.cvtColor(roi8[y0 : y0 + 2 * half, x0 : x0 + 2 * half], cv2.COLOR_RGB2GRAY)
    return gray.astype(np.float32) * (1.0 / 255.0)
