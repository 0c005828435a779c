"""Surgical mask: a pleated rectangle with hemmed edges, a nose wire and white ear loops."""

from __future__ import annotations

import numpy as np

from maskgen.masks.designs.base import Design, Layers, Shape, aa, gauss, register, sd_box


def draw(u, v, px, valve: bool) -> Layers:
    alpha = aa(sd_box(u, v, 0.0, 1.0, 0.0, 1.0, 0.035), px)
    shade = np.ones_like(u)
    bow = 0.05 * np.cos(np.pi * (u - 0.5))  # the pleats bow with the face
    for p in (0.34, 0.52, 0.70):
        y = v - (p - bow + 0.05)
        # the upper face of a pleat catches the light, its edge casts a sharp shadow below
        shade += 0.12 * gauss(y + 0.02, 0.014) - 0.34 * gauss(y - 0.008, 0.012) - 0.10 * gauss(y - 0.03, 0.03)
    hem = (aa(0.07 - v, px) + aa(v - 0.93, px) + aa(0.045 - u, px) + aa(u - 0.955, px)).clip(0, 1)
    shade *= 1.0 - 0.07 * hem
    for line in (np.abs(v - 0.07), np.abs(v - 0.93), np.abs(u - 0.045), np.abs(u - 0.955)):
        shade *= 1.0 - 0.12 * aa(0.004 - line, px)  # stitching just inside the hems
    # the nose wire: a raised ridge in the top hem, and the creases where the fabric bends
    # over the nose at its ends
    wire = aa(0.016 - np.abs(v - 0.035), px) * aa(0.17 - np.abs(u - 0.5), px)
    shade *= 1.0 + 0.10 * wire - 0.08 * aa(0.01 - np.abs(v - 0.058), px) * aa(0.17 - np.abs(u - 0.5), px)
    for sgn in (-1.0, 1.0):
        du = (u - 0.5) * sgn - 0.17
        crease = gauss(du - (v - 0.06) * 0.35, 0.012) * np.clip(1.0 - (v - 0.06) / 0.2, 0, 1) * (v > 0.05)
        shade *= 1.0 - 0.12 * crease
    return Layers(alpha, shade)


DESIGN = register(
    Design(
        "surgical",
        draw,
        default_color="blue",
        colors=(("blue", 0.36), ("lightblue", 0.24), ("white", 0.26), ("black", 0.08), ("green", 0.03), ("pink", 0.03)),
        shape=Shape(standoff=1.2, wrap=2.2, width=1.0),
        order=10,
        description="pleated surgical mask",
    )
)
