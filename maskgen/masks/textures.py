"""Colours and textures of masks: a named palette, hex colours, procedural patterns, image tiles.

Patterns are evaluated in the mask's template space so that they bend with the mask on the face;
each is a list of ink layers whose colours are linear in the fabric colour (so a design is
coloured by one transform, see ``designs.template``). Prints with seeded variants (``camo:3``)
live in ``prints.py``. Image textures are tiled at a fixed size (never stretched to the mask).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
# Colours that read as skin, hair or a beard in a photo: kept out of the default mix (they
# made a mask detector fire on faces without masks), still available by name or recipe.
SKIN_LIKE = ("beige", "brown", "khaki", "pink", "orange")
# more named colours used by the prints and recipes
PALETTE.update(
    {
        "lightgray": (206, 208, 210),
        "darkgray": (78, 80, 86),
        "olive": (92, 104, 60),
        "maroon": (110, 30, 42),
    }
)


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


@dataclass(frozen=True)
class Ink:
    """A print colour as a linear function of the fabric colour B and its second colour S:
    ``base * B + second * (S - B) + fixed``. Linear, so a design is coloured by one transform."""

    base: float = 0.0
    second: float = 0.0
    fixed: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @staticmethod
    def of(rgb: tuple[int, int, int] | str) -> Ink:
        """A fixed colour (palette name or RGB 0..255)."""
        c = parse_color(rgb) if isinstance(rgb, str) else rgb
        return Ink(fixed=tuple(float(x) / 255.0 for x in c))


SECOND = Ink(base=1.0, second=1.0)  # the second colour S
FABRIC = Ink(base=1.0)  # the fabric colour itself


def shade_of(k: float) -> Ink:
    """The fabric colour scaled by ``k`` (darker below 1, lighter above, clipped later)."""
    return Ink(base=k)


@dataclass
class Print:
    """A pattern over the fabric: ink layers composited in order (``x * (1 - w) + ink * w``),
    and an optional relief (knit loops, lace holes) that multiplies the shading."""

    layers: list[tuple[np.ndarray, Ink]]
    relief: np.ndarray | None = None


@dataclass(frozen=True)
class PatternDef:
    name: str
    make: Callable[[np.ndarray, np.ndarray, float, int], Print]
    variants: int = 1  # seeded variants: "name:k", k < variants
    description: str = ""


PATTERN_DEFS: dict[str, PatternDef] = {}


def register_pattern(name: str, variants: int = 1, description: str = "") -> Callable:
    """Decorator: add a procedural pattern ``make(u, v, px, variant) -> Print`` by name."""

    def deco(fn):
        PATTERN_DEFS[name] = PatternDef(name, fn, variants, description)
        return fn

    return deco


def split_pattern(texture: str) -> tuple[str, int] | None:
    """(name, variant) of a procedural texture (``"camo"``, ``"camo:3"``), None for other strings."""
    name, _, var = str(texture).partition(":")
    d = PATTERN_DEFS.get(name)
    if d is None:
        return None
    if not var:
        return name, 0
    if not var.isdigit() or int(var) >= d.variants:
        return None
    return name, int(var)


def is_pattern(texture: str | None) -> bool:
    return texture is not None and split_pattern(texture) is not None


def seeded_pattern(texture: str, rng: np.random.Generator) -> str:
    """A pattern name with its variant drawn from ``rng`` (a name with a variant is kept)."""
    name, _, var = texture.partition(":")
    d = PATTERN_DEFS[name]
    if var or d.variants == 1:
        return texture
    return f"{name}:{int(rng.integers(d.variants))}"


def pattern(texture: str, u: np.ndarray, v: np.ndarray, px: float) -> Print:
    """The print of a procedural texture over the template grid."""
    sp = split_pattern(texture)
    if sp is None:
        raise ValueError(f"unknown texture {texture!r}: use one of {PATTERNS} or an image file path")
    name, var = sp
    return PATTERN_DEFS[name].make(u, v, px, var)


def _aa_step(d: np.ndarray, px: float) -> np.ndarray:
    """Anti-aliased step of a signed distance ``d`` (template units) over ``px`` units."""
    return np.clip(0.5 + d / px, 0.0, 1.0)


@register_pattern("checks", description="gingham checks")
def _checks(u, v, px, var):
    n = 7.0
    a = np.abs(((u * n) % 2.0) - 1.0) - 0.5  # +-0.5 triangle waves
    b = np.abs(((v * n * 1.3) % 2.0) - 1.0) - 0.5
    s = np.sign(a) * np.sign(b)
    d = np.minimum(np.abs(a), np.abs(b)) / n
    return Print([(_aa_step(s * d, px), SECOND)])


@register_pattern("stripes", description="diagonal stripes")
def _stripes(u, v, px, var):
    period = 0.12
    w = ((u + 0.8 * v) / period) % 1.0
    d = (0.25 - np.abs(w - 0.5)) * period
    return Print([(_aa_step(d, px), SECOND)])


def hex_cells(u, v, cell):
    """Offsets (dx, dy) from the nearest centre of a staggered (hexagonal) grid, and the row."""
    gx, gy = u / cell, v / (cell * 0.866)
    row = np.floor(gy)
    gx = gx + 0.5 * (row % 2)
    dx = (gx - np.floor(gx) - 0.5) * cell
    dy = (gy - row - 0.5) * cell * 0.866
    return dx, dy, row


@register_pattern("dots", description="polka dots")
def _dots(u, v, px, var):
    dx, dy, _ = hex_cells(u, v, 0.1)
    return Print([(_aa_step(0.028 - np.hypot(dx, dy), px), SECOND)])


FLOWER_CENTRE = Ink(fixed=(0.95, 0.80, 0.30))


@register_pattern("floral", description="small flowers and leaves")
def _floral(u, v, px, var):
    cell = 0.22
    dx, dy, row = hex_cells(u, v, cell)
    r = np.hypot(dx, dy)
    th = np.arctan2(dy, dx) + row * 0.7
    petal_r = 0.075 * (0.55 + 0.45 * np.abs(np.cos(2.5 * th)))
    petals = _aa_step(petal_r - r, px)
    centre = _aa_step(0.018 - r, px)
    # small leaves between flowers
    lx, ly = dx - 0.5 * cell * np.sign(dx), dy
    leaf = _aa_step(0.016 - np.hypot(lx * 0.6, ly * 1.4), px) * 0.7
    return Print([(np.maximum(petals, leaf), SECOND), (centre, FLOWER_CENTRE)])


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


from maskgen.masks import prints as _prints  # noqa: E402,F401  (registers the printed fabrics)

PATTERNS = tuple(PATTERN_DEFS)
