"""Cloth mask: contoured fabric with an arched top, a curved centre seam, stitched edges and
loops of the same fabric."""

from __future__ import annotations

import numpy as np

from maskgen.masks.designs.base import ASPECT, Design, Layers, Shape, aa, register, stitches


def draw(u, v, px, valve: bool) -> Layers:
    a = 2 * u - 1
    top = 0.012 + 0.10 * a**2
    bot = 1.0 - 0.06 * a**2
    sd = np.minimum(np.minimum(v - top, bot - v) * ASPECT, (1 - np.abs(a)) * 0.5)
    sd = np.minimum(sd, 0.05 + (1 - np.abs(a)) * 0.5)
    alpha = aa(sd, px)
    seam_u = 0.5 + 0.025 * np.sin(np.pi * v)
    seam = aa(0.004 - np.abs(u - seam_u), px)
    shade = 0.98 + 0.04 * (1 - a**2)
    shade *= 1.0 - 0.38 * seam
    shade *= 1.0 - 0.2 * stitches(sd - 0.025, u + v, px)
    # soft folds where the fabric gathers toward the ear loops
    for k in (0.3, 0.55, 0.8):
        shade *= 1.0 - 0.06 * np.exp(-(((v - k) * 30) ** 2)) * np.abs(a) ** 3
    shade *= 1.0 - 0.07 * aa(0.025 - sd, px)
    return Layers(alpha, shade)


DESIGN = register(
    Design(
        "cloth",
        draw,
        default_color="black",
        colors=(("black", 0.5), ("navy", 0.12), ("darkgray", 0.1), ("gray", 0.06), ("white", 0.06), ("red", 0.05),
                ("green", 0.04), ("lightblue", 0.04), ("maroon", 0.03)),
        shape=Shape(standoff=1.0, wrap=1.8, width=1.0),
        loop_color=None,
        fabric="woven",
        order=40,
        description="contoured cloth mask",
    )
)
