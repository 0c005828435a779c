"""N95 respirator: a moulded matte cup with a welded rim, a nose clip, head straps, and an
optional exhalation valve."""

from __future__ import annotations

import numpy as np

from maskgen.masks.designs.base import ASPECT, Design, Layers, Shape, aa, register


def draw(u, v, px, valve: bool) -> Layers:
    ru, rv = 0.53, 0.54
    x = (u - 0.5) / ru
    y = (v - 0.5) / rv
    y = np.where(y < 0, y * 1.08, y)  # flatter over the nose, rounder under the chin
    r = (np.abs(x) ** 2.3 + np.abs(y) ** 2.3) ** (1 / 2.3)
    sd = (1.0 - r) * min(ru, rv * ASPECT)
    alpha = aa(sd, px)
    dome = np.sqrt(np.clip(1.0 - np.minimum(r, 1.0) ** 2, 0, 1))
    shade = 0.93 + 0.08 * dome  # the cup's form is shaded in 3D; a little ambient occlusion at the rim
    shade *= 1.0 - 0.14 * aa(0.035 - sd, px) * alpha  # the flat welded flange
    shade *= 1.0 - 0.16 * aa(0.004 - np.abs(sd - 0.04), px)  # the weld line
    paint = []
    clip = aa(0.018 - np.abs(v - 0.085), px) * aa(0.12 - np.abs(u - 0.5), px)
    paint.append((clip * 0.85, (0.72, 0.74, 0.77)))
    if valve:
        vu, vv = 0.70, 0.60
        d = np.hypot(u - vu, (v - vv) * ASPECT)
        body = aa(0.105 - d, px)
        ring = aa(0.008 - np.abs(d - 0.09), px)
        slats = aa(0.005 - np.abs(((v - vv) * ASPECT * 28) % 1.0 - 0.5) / 28, px) * aa(0.065 - d, px)
        cap = np.clip(1 - d / 0.105, 0, 1)
        # a raised plastic cap: lit on top, shadowed below, with a dark ring and slats
        vshade = 0.74 + 0.38 * np.sqrt(cap) - 0.32 * ring - 0.38 * slats - 0.18 * np.clip((v - vv) * 9, 0, 1) * (1 - cap)
        paint.append((body, (0.62, 0.63, 0.66)))
        shade = shade * (1 - body) + vshade * body
    return Layers(alpha, shade, paint)


DESIGN = register(
    Design(
        "n95",
        draw,
        default_color="white",
        colors=(("white", 0.86), ("lightgray", 0.08), ("blue", 0.03), ("black", 0.03)),
        shape=Shape(standoff=1.4, wrap=2.6, cup=10.0, chin=0.9, width=0.9),
        loops="head",
        loop_color="white",
        loop_v=(0.18, 0.82),
        valve=True,
        fabric="felt",
        order=20,
        description="cup respirator, valve optional",
    )
)
