"""The project's own procedural mask designs, drawn in template space.

Template space: u runs across the face (0 = image-left edge of the anchored patch, 1 = right),
v from the top edge (0) to the bottom edge (1). A design returns the mask's coverage (alpha),
its relief shading (pleats, seams, cup dome) and coloured parts drawn over the fabric (valve,
nose clip, stitching). The fabric colour or texture is applied by :func:`build_template`.
Templates are cached per (design, colour, texture, valve) as premultiplied RGBA uint8 pyramids,
so per face only one remap is needed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from maskgen.masks import textures

# template pixels per unit of u and v at pyramid level 0
PX_U = 320.0
PX_V = 240.0


@dataclass(frozen=True)
class Design:
    name: str
    draw: Callable
    default_color: str
    extent: tuple[float, float, float, float] = (-0.1, 1.1, -0.1, 1.12)  # u0, u1, v0, v1
    loops: str = "ear"  # "ear" loops, "head" straps, or "tie" (bandana knot, hidden)
    description: str = ""


@dataclass
class Layers:
    alpha: np.ndarray
    shade: np.ndarray
    paint: list[tuple[np.ndarray, tuple[float, float, float]]]  # (weight, rgb 0..1) on top


def _sd_box(u, v, u0, u1, v0, v1, r):
    """Signed distance (positive inside) to a rounded box, in template u units (v scaled)."""
    asp = PX_V / PX_U
    cx, cy = (u0 + u1) / 2, (v0 + v1) / 2 * asp
    hx, hy = (u1 - u0) / 2 - r, (v1 - v0) / 2 * asp - r
    qx = np.abs(u - cx) - hx
    qy = np.abs(v * asp - cy) - hy
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)
    return r - outside


def _aa(sd, px):
    return np.clip(0.5 + sd / px, 0.0, 1.0)


def _gauss(x, w):
    return np.exp(-((x / w) ** 2))


def _fibre(shape, seed: int, amp: float) -> np.ndarray:
    """Fixed fine fabric noise of the design (not of the sample: same for every face)."""
    rng = np.random.default_rng(seed)
    n = rng.standard_normal(shape).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), 0.8)
    return 1.0 + amp * n / max(float(n.std()), 1e-6)


def surgical(u, v, px, valve: bool) -> Layers:
    """Pleated rectangular mask: three horizontal folds, hemmed edges, nose wire."""
    sd = _sd_box(u, v, 0.0, 1.0, 0.0, 1.0, 0.035)
    alpha = _aa(sd, px)
    shade = np.ones_like(u)
    bow = 0.05 * np.cos(np.pi * (u - 0.5))  # pleats bow with the face
    for p in (0.36, 0.53, 0.70):
        y = v - (p - bow + 0.05)
        shade += 0.10 * _gauss(y + 0.018, 0.012) - 0.22 * _gauss(y - 0.012, 0.02) - 0.05 * (np.clip(y, -0.06, 0.0) / -0.06 * (y < 0))
    hem = (_aa(0.07 - v, px) + _aa(v - 0.93, px) + _aa(0.045 - u, px) + _aa(u - 0.955, px)).clip(0, 1)
    shade *= 1.0 - 0.06 * hem
    # stitching just inside the hems
    for line in (np.abs(v - 0.07), np.abs(v - 0.93), np.abs(u - 0.045), np.abs(u - 0.955)):
        shade *= 1.0 - 0.1 * _aa(0.004 - line, px)
    shade *= 1.0 - 0.10 * ((u - 0.5) * 2) ** 2  # the sides turn away from the light
    wire = _aa(0.022 - np.abs(v - 0.035), px) * _aa(0.16 - np.abs(u - 0.5), px)
    shade *= 1.0 + 0.08 * wire
    return Layers(alpha, shade, [])


def n95(u, v, px, valve: bool) -> Layers:
    """Moulded cup: dome shading, rim, nose clip; optional exhalation valve."""
    asp = PX_V / PX_U
    cu, cv_ = 0.5, 0.5
    ru, rv = 0.53, 0.54
    x = (u - cu) / ru
    y = (v - cv_) / rv
    y = np.where(y < 0, y * 1.08, y)  # flatter over the nose, rounder under the chin
    r = (np.abs(x) ** 2.3 + np.abs(y) ** 2.3) ** (1 / 2.3)
    sd = (1.0 - r) * min(ru, rv * asp)
    alpha = _aa(sd, px)
    dome = np.sqrt(np.clip(1.0 - np.minimum(r, 1.0) ** 2, 0, 1))
    shade = 0.80 + 0.26 * dome - 0.06 * x  # light from the upper left
    rim = _aa(0.035 - sd, px) * alpha
    shade *= 1.0 - 0.12 * rim
    shade *= 1.0 - 0.12 * _aa(0.004 - np.abs(sd - 0.04), px)  # welded edge line
    paint = []
    clip = _aa(0.018 - np.abs(v - 0.085), px) * _aa(0.12 - np.abs(u - 0.5), px)
    paint.append((clip * 0.85, (0.72, 0.74, 0.77)))
    if valve:
        vu, vv = 0.70, 0.60
        d = np.hypot(u - vu, (v - vv) * asp)
        body = _aa(0.105 - d, px)
        ring = _aa(0.008 - np.abs(d - 0.09), px)
        slats = _aa(0.005 - np.abs(((v - vv) * asp * 28) % 1.0 - 0.5) / 28, px) * _aa(0.065 - d, px)
        cap = np.clip(1 - d / 0.105, 0, 1)
        vshade = 0.78 + 0.35 * np.sqrt(cap) - 0.30 * ring - 0.35 * slats
        paint.append((body, (0.62, 0.63, 0.66)))
        shade = shade * (1 - body) + vshade * body
    return Layers(alpha, shade, paint)


def kn95(u, v, px, valve: bool) -> Layers:
    """Folded flat-fold respirator: pointed top and bottom at a vertical centre seam."""
    asp = PX_V / PX_U
    a = np.abs(2 * u - 1)
    top = 0.02 + 0.20 * a**1.2
    bot = 0.99 - 0.22 * a**1.4
    side = 1.0 - a
    sd = np.minimum(np.minimum(v - top, bot - v) * asp, side * 0.5 * 1.0)
    alpha = _aa(sd, px)
    shade = 1.0 - 0.10 * (u > 0.5) - 0.06 * a  # the two panels face different ways
    shade *= 1.0 - 0.30 * _aa(0.004 - np.abs(u - 0.5), px)  # centre seam
    shade *= 1.0 + 0.08 * _aa(0.008 - np.abs(u - 0.49), px)
    # welded edge: dotted line just inside the outline
    inner = _aa(0.005 - np.abs(sd - 0.03), px)
    dots = 0.5 + 0.5 * np.cos(2 * np.pi * (u + v) * 40)
    shade *= 1.0 - 0.18 * inner * dots
    shade *= 1.0 - 0.08 * _aa(0.02 - sd, px)
    paint = []
    if valve:
        d = np.hypot(u - 0.72, (v - 0.62) * asp)
        body = _aa(0.09 - d, px)
        paint.append((body, (0.60, 0.61, 0.64)))
        ring = _aa(0.006 - np.abs(d - 0.075), px)
        shade = shade * (1 - body) + (0.8 + 0.3 * np.sqrt(np.clip(1 - d / 0.09, 0, 1)) - 0.3 * ring) * body
    return Layers(alpha, shade, paint)


def cloth(u, v, px, valve: bool) -> Layers:
    """Contoured fabric mask: arched top, curved centre seam, woven grain, soft folds."""
    asp = PX_V / PX_U
    a = 2 * u - 1
    top = 0.03 + 0.10 * a**2
    bot = 1.0 - 0.06 * a**2
    sd = np.minimum(np.minimum(v - top, bot - v) * asp, (1 - np.abs(a)) * 0.5)
    sd = np.minimum(sd, 0.05 + (1 - np.abs(a)) * 0.5)
    alpha = _aa(sd, px)
    seam_u = 0.5 + 0.025 * np.sin(np.pi * v)
    seam = _aa(0.004 - np.abs(u - seam_u), px)
    shade = 0.93 + 0.12 * (1 - a**2) - 0.05 * a
    shade *= 1.0 - 0.35 * seam
    stitch = _aa(0.003 - np.abs(sd - 0.025), px) * (np.cos(2 * np.pi * (u + v) * 55) > 0.2)
    shade *= 1.0 - 0.18 * stitch
    grain = 1.0 + 0.035 * np.sin(2 * np.pi * u * 140) * np.sin(2 * np.pi * v * 110)
    shade *= grain
    shade *= 1.0 - 0.07 * _aa(0.025 - sd, px)
    return Layers(alpha, shade, [])


def bandana(u, v, px, valve: bool) -> Layers:
    """A folded scarf tied behind the head: straight top, V-shaped point below the chin."""
    asp = PX_V / PX_U
    a = np.abs(2 * u - 1)
    top = 0.012  # inside the anchored patch: above it the mesh is extrapolated
    bot = 1.42 - 0.55 * a**1.1
    sd = np.minimum((v - top) * asp, (bot - v) * asp)
    sd = np.minimum(sd, (1.0 - a) * 0.5)
    alpha = _aa(sd, px)
    folds = 0.06 * np.sin(2 * np.pi * (v * 3.2 + a * 1.5)) * np.clip(v, 0, 1)
    shade = 0.95 + folds - 0.05 * a
    shade *= 1.0 - 0.12 * _aa(0.02 - (v - top) * asp, px)  # rolled top fold
    return Layers(alpha, shade, [])


DESIGNS: dict[str, Design] = {
    "surgical": Design("surgical", surgical, "blue", description="pleated surgical mask"),
    "n95": Design("n95", n95, "white", loops="head", description="cup respirator, valve optional"),
    "kn95": Design("kn95", kn95, "white", description="folded respirator with a centre seam"),
    "cloth": Design("cloth", cloth, "black", description="contoured cloth mask"),
    "bandana": Design("bandana", bandana, "red", extent=(-0.1, 1.1, -0.1, 1.5), loops="tie", description="scarf tied behind the head"),
}
MASK_TYPES = tuple(DESIGNS)


@dataclass
class Template:
    """A premultiplied RGBA pyramid of one design plus its template-space frame."""

    levels: Sequence[np.ndarray]  # level k: uint8 (H/2^k, W/2^k, 4) (a Pyramid or a list)
    extent: tuple[float, float, float, float]
    px_u: float
    px_v: float
    loops: str
    loop_rgb: tuple[float, float, float]


def template_grid(extent: tuple[float, float, float, float], px_u: float = PX_U, px_v: float = PX_V):
    u0, u1, v0, v1 = extent
    w = int(round((u1 - u0) * px_u))
    h = int(round((v1 - v0) * px_v))
    u = (np.arange(w, dtype=np.float32) + 0.5) / px_u + u0
    v = (np.arange(h, dtype=np.float32) + 0.5) / px_v + v0
    return np.meshgrid(u, v)


@dataclass(frozen=True)
class _Fabric:
    """The colour-independent part of a design, shared by all its colours and textures."""

    shape: tuple[int, int]
    layers: Layers
    relief: np.ndarray  # shading x fibre noise, (H, W) float32
    alpha255: np.ndarray  # (H, W, 3) float32: 255 x coverage, the premultiplication factor
    alpha8: np.ndarray  # (H, W) uint8: the pyramid's alpha channel


@functools.lru_cache(maxsize=16)
def _fabric(kind: str, valve: bool) -> _Fabric:
    d = DESIGNS[kind]
    u, v = template_grid(d.extent)
    lay = d.draw(u, v, _AA_PX, valve)
    fibre = _fibre(u.shape, 7, 0.03 if kind != "cloth" else 0.05)
    relief = (lay.shade * fibre).astype(np.float32)
    a = lay.alpha.astype(np.float32)
    a255 = np.ascontiguousarray(np.repeat((a * 255.0)[..., None], 3, axis=2))
    a8 = np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return _Fabric(u.shape, lay, relief, a255, a8)


@functools.lru_cache(maxsize=64)
def _fabric_features(kind: str, valve: bool, texture: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The shaded fabric colour as a linear function of the colour: ``F @ [base, second - base]
    + K`` (F: (H*W, 1 or 2), K: (H*W, 3) or None).

    The fabric is the base colour, the pattern blends in the second colour (``base + (second -
    base) * w``), a flower centre and the design's painted parts (nose clip, valve) blend towards
    fixed colours (``x * (1 - w) + colour * w``), then the relief multiplies everything: each
    step is linear in (base, second - base), so the per-colour work is one 2x3 colour transform.
    """
    d = DESIGNS[kind]
    fab = _fabric(kind, valve)
    feats = [np.ones(fab.shape, np.float32)]
    const = None
    if texture:
        u, v = template_grid(d.extent)
        w2, centre = textures.pattern(texture, u, v, _AA_PX)
        feats.append(w2.astype(np.float32))
        if centre is not None:
            keep = 1.0 - centre
            feats = [f * keep for f in feats]
            const = _FLOWER_CENTRE * centre[..., None]
    for weight, col in fab.layers.paint:
        keep = 1.0 - weight
        feats = [f * keep for f in feats]
        painted = np.asarray(col, np.float32) * weight[..., None]
        const = painted if const is None else const * keep[..., None] + painted
    F = np.stack([f * fab.relief for f in feats], -1).astype(np.float32).reshape(-1, len(feats))
    K = None if const is None else (const * fab.relief[..., None]).astype(np.float32).reshape(-1, 3)
    return F, K


_AA_PX = 1.2 / PX_U  # anti-aliasing width: a little over one template pixel
_FLOWER_CENTRE = np.array([0.95, 0.80, 0.30], np.float32)


def _coloured(kind: str, rgb: tuple[int, int, int], texture: str | None, valve: bool) -> np.ndarray:
    """Pyramid level 0 of a design in a colour/texture: premultiplied RGBA uint8."""
    fab = _fabric(kind, valve)
    h, w = fab.shape
    base = np.asarray(rgb, np.float32) / 255.0
    if texture and texture not in textures.PATTERNS:  # an image file: no colour to factor out
        albedo = textures.tiled(texture, (h, w), tile_width=int(PX_U * 0.45)).astype(np.float32)
        for weight, col in fab.layers.paint:
            albedo += (np.asarray(col, np.float32) - albedo) * weight[..., None]
        rgbf = albedo * fab.relief[..., None]
    else:
        F, K = _fabric_features(kind, valve, texture)
        coeffs = np.stack([base, np.asarray(textures.secondary(base), np.float32) - base])[: F.shape[1]]
        # one OpenCV pass (no BLAS: its thread pool and kernels vary between machines)
        rgbf = cv2.transform(F.reshape(h, w, F.shape[1]), np.ascontiguousarray(coeffs.T))
        if K is not None:
            rgbf += K.reshape(h, w, 3)
    np.clip(rgbf, 0.0, 1.0, out=rgbf)
    rgbf *= fab.alpha255  # premultiplied, in 8-bit units
    rgbf += 0.5
    rgb8 = np.clip(rgbf, 0, 255, out=rgbf).astype(np.uint8)
    return cv2.merge([*cv2.split(rgb8), fab.alpha8])


class Pyramid(Sequence):
    """The levels of a template, each half the size of the one before (``cv2.pyrDown``).

    Level 0 holds ~3/4 of the bytes and is drawn only for faces whose mask is wider than the
    template (~320 px): it is dropped once the smaller levels are made and made again, the
    same bytes, the first time it is asked for. A cached design then costs ~150 KB, not ~600.
    """

    def __init__(self, make_level0: Callable[[], np.ndarray]) -> None:
        levels = [make_level0()]
        while min(levels[-1].shape[:2]) > 24:
            levels.append(cv2.pyrDown(levels[-1]))
        self._make = make_level0
        self._levels: list[np.ndarray | None] = [None, *levels[1:]] if len(levels) > 1 else levels

    def __len__(self) -> int:
        return len(self._levels)

    def __getitem__(self, k):  # type: ignore[override]
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        lvl = self._levels[k]
        if lvl is None:
            lvl = self._levels[k] = self._make()
        return lvl


# Every built-in combination (5 types x 16 colours x 5 textures, valves) is about 560 designs;
# the cache holds them all, so a run over a dataset with seeded random designs (MaskSpec.random)
# colours each design once. Colouring is cheap anyway: the fabric, pattern and relief are cached
# apart from the colour, leaving one colour transform (~2.5 ms, not ~28). With level 0 dropped
# (Pyramid) a full cache is ~150 MB even when every sample has its own random colour.
@functools.lru_cache(maxsize=1024)
def build_template(kind: str, rgb: tuple[int, int, int], texture: str | None, valve: bool) -> Template:
    """Render a design with its fabric colour/texture into a cached pyramid."""
    d = DESIGNS[kind]
    levels = Pyramid(functools.partial(_coloured, kind, rgb, texture, valve))
    base = np.asarray(rgb, np.float32) / 255.0
    loop_rgb = (0.93, 0.93, 0.93) if kind in ("surgical", "n95", "kn95") else tuple(float(c) * 0.9 for c in base)
    return Template(levels, d.extent, PX_U, PX_V, d.loops, loop_rgb)
