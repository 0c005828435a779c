"""Colours and textures of masks: a named palette, hex colours, procedural patterns, image tiles.

Patterns are evaluated in the mask's template space so that they bend with the mask on the face.
Image textures are tiled at a fixed size (never stretched to the mask).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import cv2
import numpy as np

# name -> sRGB (0-255). Surgical blues and greens are the common medical shades.
PALETTE: dict[str, tuple[int, int, int]] = {
    "blue": (128, 178, 214),
    "lightblue": (170, 205, 232),
    "green": (126, 190, 172),
    "white": (236, 238, 240),
    "black": (38, 38, 42),
    "gray": (140, 143, 148),
    "navy": (40, 52, 92),
    "pink": (234, 168, 190),
    "red": (178, 36, 44),
    "yellow": (232, 200, 86),
    "orange": (226, 124, 52),
    "purple": (118, 88, 158),
    "teal": (42, 130, 136),
    "beige": (218, 198, 168),
    "brown": (112, 78, 56),
    "khaki": (160, 150, 104),
}
PATTERNS = ("checks", "stripes", "dots", "floral")


def parse_color(color: str) -> tuple[int, int, int]:
    """A palette name or ``#rrggbb`` / ``#rgb`` to an RGB triple."""
    c = color.strip().lower()
    if c in PALETTE:
        return PALETTE[c]
    if c.startswith("#"):
        h = c[1:]
        if len(h) == 3:
            h = "".join(ch * 2 for ch in h)
        if len(h) == 6:
            try:
                return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))
            except ValueError:
                pass
    raise ValueError(f"unknown colour {color!r}: use a palette name ({', '.join(PALETTE)}) or #rrggbb")


def color_hex(rgb: tuple[int, int, int]) -> str:
    return "#%02x%02x%02x" % tuple(int(v) for v in rgb)


def secondary(rgb: np.ndarray) -> np.ndarray:
    """The pattern's second colour: a dark shade of light colours, a pale tint of dark ones."""
    lum = float(rgb @ np.array([0.299, 0.587, 0.114]))
    if lum > 0.5:
        return rgb * 0.42
    return rgb + (np.array([0.96, 0.95, 0.92]) - rgb) * 0.78


def _aa_step(d: np.ndarray, px: float) -> np.ndarray:
    """Anti-aliased step of a signed distance ``d`` (template units) over ``px`` units."""
    return np.clip(0.5 + d / px, 0.0, 1.0)


def pattern(name: str, u: np.ndarray, v: np.ndarray, px: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(pattern weight of the second colour, optional weight of a flower-centre colour)."""
    if name == "checks":
        n = 7.0
        a = np.abs(((u * n) % 2.0) - 1.0) - 0.5  # +-0.5 triangle waves
        b = np.abs(((v * n * 1.3) % 2.0) - 1.0) - 0.5
        s = np.sign(a) * np.sign(b)
        d = np.minimum(np.abs(a), np.abs(b)) / n
        return _aa_step(s * d, px), None
    if name == "stripes":
        period = 0.12
        w = ((u + 0.8 * v) / period) % 1.0
        d = (0.25 - np.abs(w - 0.5)) * period
        return _aa_step(d, px), None
    if name == "dots":
        cell = 0.1
        gx, gy = u / cell, v / (cell * 0.866)
        row = np.floor(gy)
        gx = gx + 0.5 * (row % 2)
        dx = (gx - np.floor(gx) - 0.5) * cell
        dy = (gy - row - 0.5) * cell * 0.866
        d = 0.028 - np.hypot(dx, dy)
        return _aa_step(d, px), None
    if name == "floral":
        cell = 0.22
        gx, gy = u / cell, v / (cell * 0.866)
        row = np.floor(gy)
        gx = gx + 0.5 * (row % 2)
        dx = (gx - np.floor(gx) - 0.5) * cell
        dy = (gy - row - 0.5) * cell * 0.866
        r = np.hypot(dx, dy)
        th = np.arctan2(dy, dx) + row * 0.7
        petal_r = 0.075 * (0.55 + 0.45 * np.abs(np.cos(2.5 * th)))
        petals = _aa_step(petal_r - r, px)
        centre = _aa_step(0.018 - r, px)
        # small leaves between flowers
        lx, ly = dx - 0.5 * cell * np.sign(dx), dy
        leaf = _aa_step(0.016 - np.hypot(lx * 0.6, ly * 1.4), px) * 0.7
        return np.maximum(petals, leaf), centre
    raise ValueError(f"unknown texture {name!r}: use one of {PATTERNS} or an image file path")


@functools.lru_cache(maxsize=32)
def texture_image(path: str) -> np.ndarray:
    """An image texture as float RGB in [0, 1] (cached per process)."""
    from maskgen.masks.imageio import load_image

    img, reason = load_image(path)
    if img is None:
        raise ValueError(f"texture {path!r}: {reason}")
    return img.astype(np.float32) / 255.0


def tiled(path: str, shape: tuple[int, int], tile_width: int) -> np.ndarray:
    """The texture repeated over ``shape`` at ``tile_width`` pixels per tile (aspect kept)."""
    tex = texture_image(str(Path(os.fspath(path))))
    th, tw = tex.shape[:2]
    nw = max(4, int(tile_width))
    nh = max(4, int(round(th * nw / tw)))
    tile = cv2.resize(tex, (nw, nh), interpolation=cv2.INTER_AREA)
    h, w = shape
    reps = (h // nh + 1, w // nw + 1, 1)
    return np.tile(tile, reps)[:h, :w]
