"""KF94 respirator: the boat-shaped three-panel mask common in East Asia. A top and a bottom
panel meet at a horizontal seam that folds forward across the middle; the sides narrow into
flaps where the ear loops attach; the edges are welded.

This file is the whole design: how it is drawn in template space (``draw``), how it sits on
the head in 3D (``Shape``: the forward horizontal fold at the seam, a shallow cup), its real
colours, its straps. Registering it makes ``MaskSpec(type="kf94")``, ``--type kf94`` and
recipes that name it work; the default mix does not name it, so builds stay as they were.
"""

from __future__ import annotations

import numpy as np

from maskgen.masks.designs.base import ASPECT, Design, Layers, Shape, aa, gauss, register

SEAM_V = 0.45  # the horizontal seam, where the mask folds forward


def draw(u, v, px, valve: bool) -> Layers:
    a = np.abs(2 * u - 1)
    top = 0.02 + 0.34 * a**2.2
    bot = 0.98 - 0.36 * a**2.2
    sd = np.minimum(np.minimum(v - top, bot - v) * ASPECT, (1.02 - a) * 0.5)
    alpha = aa(sd, px)
    seam = SEAM_V + 0.03 * (1 - a**2)  # the seam bows up a little at the centre
    d = v - seam
    # the upper panel catches the light above the fold, the lower one turns away below it
    shade = 1.0 + 0.05 * np.clip(-d * 6, 0, 1) - 0.07 * np.clip(d * 4, 0, 1)
    shade *= 1.0 - 0.30 * gauss(d - 0.006, 0.006) + 0.10 * gauss(d + 0.012, 0.01)
    weld = aa(0.006 - np.abs(sd - 0.022), px) * (0.5 + 0.5 * np.cos(2 * np.pi * (u + v) * 48))
    shade *= 1.0 - 0.18 * weld
    shade *= 1.0 - 0.06 * aa(0.015 - sd, px)
    flap = aa(a - 0.86, px * 4)  # the side flaps are two layers thick: a faint line
    shade *= 1.0 - 0.08 * aa(0.004 - np.abs(a - 0.86), px) * alpha + 0.02 * flap
    return Layers(alpha, shade)


DESIGN = register(
    Design(
        "kf94",
        draw,
        default_color="white",
        colors=(("white", 0.6), ("black", 0.3), ("lightgray", 0.06), ("pink", 0.04)),
        shape=Shape(standoff=1.2, wrap=2.0, cup=2.0, fold=4.0, fold_v=SEAM_V, width=1.0),
        loop_v=(0.40, 0.58),
        order=35,
        description="boat-shaped three-panel respirator with a horizontal fold",
    )
)
