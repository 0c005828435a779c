"""Duckbill respirator: a flat-fold N95 of two flat panels welded along their edges. Opened on
the face they meet in a horizontal, beak-like ridge below the nose that stands forward; the top
edge carries a nose wire over the upper bridge; two elastic head straps leave the side corners.

This file is the whole design (see docs/extending.md): how it is drawn in template space
(``draw``), how it sits on the head (``Shape``: the strong forward horizontal fold of the beak,
no dome), its real colours, its straps. It is not in the default mix.
"""

from __future__ import annotations

import numpy as np

from maskgen.masks.designs.base import ASPECT, Design, Layers, Shape, aa, gauss, register

RIDGE_V = 0.44  # the beak: where the two panels meet, below the nose


def draw(u, v, px, valve: bool) -> Layers:
    a = np.abs(2 * u - 1)
    # an almond outline: top and bottom edges curve to pointed side corners at the ridge height
    top = 0.03 + (RIDGE_V - 0.03) * a**1.9
    bot = 0.985 - (0.985 - RIDGE_V) * a**2.8  # broad under the chin
    sd = np.minimum(v - top, bot - v) * ASPECT
    sd = np.minimum(sd, (1.0 - a) * 0.9)  # pointed side corners where the panels meet
    alpha = aa(sd, px)
    d = v - RIDGE_V + 0.008 * (1 - a**2)  # the beak: nearly straight, a little higher at the centre
    # the upper panel faces up into the light, the lower one turns away under the beak
    shade = 1.0 + 0.08 * np.clip(-d * 6, 0, 1) - 0.20 * np.clip(d * 5, 0, 1) * (1 - 0.4 * a)
    shade *= 1.0 - 0.16 * gauss(d - 0.02, 0.035) * (d > 0)  # the shadow right under the beak
    ridge = aa(0.0035 - np.abs(d - 0.002), px) * alpha
    shade *= 1.0 - 0.30 * ridge  # the welded ridge seam
    shade *= 1.0 + 0.16 * gauss(d + 0.007, 0.007) * alpha  # the lit edge of the beak above it
    weld = aa(0.005 - np.abs(sd - 0.018), px) * (0.55 + 0.45 * np.cos(2 * np.pi * (u + v) * 52))
    shade *= 1.0 - 0.16 * weld  # the welded perimeter, a dotted line just inside the edge
    shade *= 1.0 - 0.07 * aa(0.012 - sd, px)
    paint = []
    # the nose wire: a metal strip under the top edge across the bridge
    wire_v = top + 0.045
    wire = aa(0.011 - np.abs(v - wire_v), px) * aa(0.13 - np.abs(u - 0.5), px)
    paint.append((wire * 0.55, (0.70, 0.72, 0.75)))
    shade *= 1.0 + 0.05 * wire
    return Layers(alpha, shade, paint)


DESIGN = register(
    Design(
        "duckbill",
        draw,
        default_color="white",
        colors=(("white", 0.45), ("blue", 0.25), ("orange", 0.15), ("lightblue", 0.1), ("lightgray", 0.05)),
        shape=Shape(standoff=1.3, wrap=1.6, cup=0.0, fold=11.0, fold_v=RIDGE_V, width=0.95),
        loops="head",
        loop_color="white",
        loop_v=(0.36, 0.56),
        order=38,
        description="flat-fold respirator of two panels meeting in a forward beak",
    )
)
