"""Bandana: a folded scarf tied behind the head, straight top, V point below the chin."""

from __future__ import annotations

import numpy as np

from maskgen.masks.designs.base import ASPECT, Design, Layers, Shape, aa, register


def draw(u, v, px, valve: bool) -> Layers:
    a = np.abs(2 * u - 1)
    top = -0.01  # at the nose wire line (the ring above is extrapolated)
    bot = 1.42 - 0.55 * a**1.1
    sd = np.minimum((v - top) * ASPECT, (bot - v) * ASPECT)
    sd = np.minimum(sd, (1.0 - a) * 0.5)
    alpha = aa(sd, px)
    folds = 0.07 * np.sin(2 * np.pi * (v * 3.2 + a * 1.5)) * np.clip(v, 0, 1)
    shade = 0.97 + folds - 0.03 * a
    shade *= 1.0 - 0.14 * aa(0.02 - (v - top) * ASPECT, px)  # rolled top fold
    return Layers(alpha, shade)


DESIGN = register(
    Design(
        "bandana",
        draw,
        default_color="red",
        colors=(("red", 0.35), ("navy", 0.3), ("black", 0.25), ("green", 0.1)),
        shape=Shape(standoff=1.0, wrap=1.7, chin=1.0, width=1.05),
        extent=(-0.1, 1.1, -0.1, 1.5),
        loops="tie",
        loop_color=None,
        fabric="woven",
        order=50,
        description="scarf tied behind the head",
    )
)
