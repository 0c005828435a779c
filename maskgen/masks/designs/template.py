"""A design in a colour and texture, as a cached premultiplied RGBA pyramid (one remap per face).

Colouring is cheap: a design's shape, relief (pleats, seams) x fabric micro-texture, print
weights and painted parts are cached apart from the colour as a linear function of
(base, second colour - base), so a new colour is one 2x3 ``cv2.transform`` plus the pyramid.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from maskgen.masks import textures
from maskgen.masks.designs.base import AA_PX, DESIGNS, PX_U, PX_V, Layers, Shape, smooth_noise


@dataclass
class Template:
    """A premultiplied RGBA pyramid of one design plus its template-space frame."""

    levels: Sequence[np.ndarray]  # level k: uint8 (H/2^k, W/2^k, 4) (a Pyramid or a list)
    extent: tuple[float, float, float, float]
    px_u: float
    px_v: float
    loops: str
    loop_rgb: tuple[float, float, float]
    shape: Shape = Shape()
    sheen: float = 0.0  # light the fabric adds where it faces the light (dark fabrics only)
    peak: float = 1.0  # the fabric's brightest colour channel (99.5th percentile, 0..1)


def colour_peak(levels: Sequence[np.ndarray]) -> float:
    """The brightest colour channel of a premultiplied RGBA pyramid where it is opaque (99.5th
    percentile, 0..1): how far light can scale it before it would clip."""
    lvl = levels[min(2, len(levels) - 1)]
    solid = lvl[..., 3] > 250
    if not solid.any():
        return 1.0
    return float(np.percentile(lvl[..., :3][solid].max(1), 99.5)) / 255.0


def template_grid(extent: tuple[float, float, float, float], px_u: float = PX_U, px_v: float = PX_V):
    u0, u1, v0, v1 = extent
    w = int(round((u1 - u0) * px_u))
    h = int(round((v1 - v0) * px_v))
    u = (np.arange(w, dtype=np.float32) + 0.5) / px_u + u0
    v = (np.arange(h, dtype=np.float32) + 0.5) / px_v + v0
    return np.meshgrid(u, v)


def micro_texture(shape: tuple[int, int], fabric: str) -> np.ndarray:
    """The material's fine structure as a shading multiplier around 1 (fixed per design).

    nonwoven: spunbond fibres, fine grain plus a soft mottle; felt: the denser, fuzzier
    N95 filter; woven: threads crossing at one template pixel plus grain.
    """
    if fabric == "felt":
        return 1.0 + 0.028 * smooth_noise(shape, 7, 1.1) + 0.02 * smooth_noise(shape, 8, 4.0)
    if fabric == "woven":
        h, w = shape
        y, x = np.mgrid[0:h, 0:w]
        weave = np.where((x + y) % 2 == 0, 1.0, -1.0) * 0.5 + np.sin(x * 1.9) * 0.25 + np.sin(y * 2.3) * 0.25
        return 1.0 + 0.035 * weave + 0.04 * smooth_noise(shape, 9, 0.8) + 0.02 * smooth_noise(shape, 10, 6.0)
    return 1.0 + 0.03 * smooth_noise(shape, 7, 0.8) + 0.018 * smooth_noise(shape, 11, 5.0)


@dataclass(frozen=True)
class _Fabric:
    """The colour-independent part of a design, shared by all its colours and textures."""

    shape: tuple[int, int]
    layers: Layers
    relief: np.ndarray  # shading x micro-texture, (H, W) float32
    alpha255: np.ndarray  # (H, W, 3) float32: 255 x coverage, the premultiplication factor
    alpha8: np.ndarray  # (H, W) uint8: the pyramid's alpha channel


@functools.lru_cache(maxsize=16)
def _fabric(kind: str, valve: bool) -> _Fabric:
    d = DESIGNS[kind]
    u, v = template_grid(d.extent)
    lay = d.draw(u, v, AA_PX, valve)
    relief = (lay.shade * micro_texture(u.shape, d.fabric)).astype(np.float32)
    a = lay.alpha.astype(np.float32)
    a255 = np.ascontiguousarray(np.repeat((a * 255.0)[..., None], 3, axis=2))
    a8 = np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return _Fabric(u.shape, lay, relief, a255, a8)


@functools.lru_cache(maxsize=64)
def _fabric_features(kind: str, valve: bool, texture: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The shaded fabric colour as a linear function of the colour: ``F @ [base, second - base]
    + K`` (F: (H*W, 2), K: (H*W, 3) or None).

    The fabric starts as the base colour; each print layer and each painted part (nose clip,
    valve) blends toward its ink (``x * (1 - w) + ink * w``, the ink itself linear in base and
    second - base); the relief (and the print's own relief) multiplies everything.
    """
    d = DESIGNS[kind]
    fab = _fabric(kind, valve)
    f_base = np.ones(fab.shape, np.float32)
    f_second = np.zeros(fab.shape, np.float32)
    const = None
    layers: list[tuple[np.ndarray, textures.Ink]] = []
    relief = fab.relief
    if texture:
        u, v = template_grid(d.extent)
        pr = textures.pattern(texture, u, v, AA_PX)
        layers += pr.layers
        if pr.relief is not None:
            relief = relief * pr.relief.astype(np.float32)
    layers += [(w, textures.Ink(fixed=tuple(col))) for w, col in fab.layers.paint]
    for weight, ink in layers:
        w = np.asarray(weight, np.float32)
        keep = 1.0 - w
        f_base = f_base * keep + ink.base * w
        f_second = f_second * keep + ink.second * w
        if any(ink.fixed) or const is not None:
            painted = np.asarray(ink.fixed, np.float32) * w[..., None]
            const = painted if const is None else const * keep[..., None] + painted
    F = np.stack([f_base * relief, f_second * relief], -1).astype(np.float32).reshape(-1, 2)
    K = None if const is None else (const * relief[..., None]).astype(np.float32).reshape(-1, 3)
    return F, K


def _coloured(kind: str, rgb: tuple[int, int, int], texture: str | None, valve: bool) -> np.ndarray:
    """Pyramid level 0 of a design in a colour/texture: premultiplied RGBA uint8."""
    fab = _fabric(kind, valve)
    h, w = fab.shape
    base = np.asarray(rgb, np.float32) / 255.0
    if texture and not textures.is_pattern(texture):  # an image file: no colour to factor out
        albedo = textures.tiled(texture, (h, w), tile_width=int(PX_U * 0.45)).astype(np.float32)
        for weight, col in fab.layers.paint:
            albedo += (np.asarray(col, np.float32) - albedo) * weight[..., None]
        rgbf = albedo * fab.relief[..., None]
    else:
        F, K = _fabric_features(kind, valve, texture)
        coeffs = np.stack([base, np.asarray(textures.secondary(base), np.float32) - base])
        # one OpenCV pass (no BLAS: its thread pool and kernels vary between machines)
        rgbf = cv2.transform(F.reshape(h, w, 2), np.ascontiguousarray(coeffs.T))
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


SHEEN = 0.12  # on a dark fabric, a little light is added where it faces the light


def loop_rgb(kind: str, rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """The colour of a design's ear loops or straps: its own (white elastic) or the fabric's;
    black masks come with black elastic."""
    d = DESIGNS[kind]
    if d.loop_color is None or (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) < 64:
        return tuple(float(c) / 255.0 * 0.9 for c in rgb)
    return tuple(float(c) / 255.0 for c in textures.parse_color(d.loop_color))


# A build's default mix draws a few hundred distinct designs (design x colour x print variant);
# the cache holds 1,024, so each is coloured once per worker. Colouring is cheap anyway: the
# fabric, print and relief are cached apart from the colour, leaving one colour transform
# (~2.5 ms). With level 0 dropped (Pyramid) a full cache is ~150 MB.
@functools.lru_cache(maxsize=1024)
def build_template(kind: str, rgb: tuple[int, int, int], texture: str | None, valve: bool) -> Template:
    """Render a design with its fabric colour/texture into a cached pyramid."""
    d = DESIGNS[kind]
    levels = Pyramid(functools.partial(_coloured, kind, rgb, texture, valve))
    lum = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255.0
    sheen = SHEEN if lum < 0.4 and not (texture and not textures.is_pattern(texture)) else 0.0
    return Template(levels, d.extent, PX_U, PX_V, d.loops, loop_rgb(kind, rgb), d.shape, sheen, colour_peak(levels))
