"""KN95 respirator: a flat-fold mask opened into two panels with a vertical centre fold, pointed
top and bottom, a dotted welded edge and white ear loops; valve optional."""

from __future__ import annotations

import numpy as np

from maskgen.masks.designs.base import ASPECT, Design, Layers, Shape, aa, register


def draw(u, v, px, valve: bool) -> Layers:
    a = np.abs(2 * u - 1)
    top = 0.02 + 0.20 * a**1.2
    bot = 0.99 - 0.22 * a**1.4
    side = 1.0 - a
    sd = np.minimum(np.minimum(v - top, bot - v) * ASPECT, side * 0.5)
    alpha = aa(sd, px)
    shade = 1.0 - 0.03 * a
    shade *= 1.0 - 0.34 * aa(0.004 - np.abs(u - 0.5), px)  # the centre seam
    shade *= 1.0 + 0.10 * aa(0.008 - np.abs(u - 0.49), px)  # its lit lip
    inner = aa(0.005 - np.abs(sd - 0.03), px)  # welded edge: dotted line just inside the outline
    dots = 0.5 + 0.5 * np.cos(2 * np.pi * (u + v) * 40)
    shade *= 1.0 - 0.2 * inner * dots
    shade *= 1.0 - 0.08 * aa(0.02 - sd, px)
    clip = aa(0.012 - np.abs(v - top - 0.04), px) * aa(0.14 - np.abs(u - 0.5), px)
    shade *= 1.0 + 0.06 * clip  # the nose wire under the top edge
    paint = []
    if valve:
        d = np.hypot(u - 0.72, (v - 0.62) * ASPECT)
        body = aa(0.09 - d, px)
        paint.append((body, (0.60, 0.61, 0.64)))
        ring = aa(0.006 - np.abs(d - 0.075), px)
        shade = shade * (1 - body) + (0.76 + 0.34 * np.sqrt(np.clip(1 - d / 0.09, 0, 1)) - 0.3 * ring) * body
    return Layers(alpha, shade, paint)


DESIGN = register(
    Design(
        "kn95",
        draw,
        default_color="white",
        colors=(("white", 0.62), ("black", 0.22), ("lightgray", 0.1), ("pink", 0.03), ("lightblue", 0.03)),
        shape=Shape(standoff=1.2, wrap=1.25, ridge=5.0, width=0.95),
        valve=True,
        order=30,
        description="folded respirator with a centre seam",
    )
)
