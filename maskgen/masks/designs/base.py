"""The vocabulary of a mask design: what one design file declares, and the drawing helpers.

A design is drawn in template space: u runs across the face (0 = image-left edge of the
anchored patch, 1 = right), v from the top edge (0, the nose wire) to the bottom edge (1, under
the chin). ``draw(u, v, px, valve)`` returns the mask's coverage (alpha), its relief (pleats,
seams, welds: a multiplier of the fabric colour) and parts painted over the fabric (nose clip,
valve). Its 3D form on the head (:class:`Shape`) and its other properties (default and typical
colours, straps, whether it can carry a valve) live on the :class:`Design` too, so nothing
outside the design file checks a design's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

# template pixels per unit of u and v at pyramid level 0
PX_U = 320.0
PX_V = 240.0
ASPECT = PX_V / PX_U
AA_PX = 1.2 / PX_U  # anti-aliasing width: a little over one template pixel


@dataclass
class Layers:
    """What a design's ``draw`` returns, all (H, W) float arrays over the template grid."""

    alpha: np.ndarray
    shade: np.ndarray
    paint: list[tuple[np.ndarray, tuple[float, float, float]]] = field(default_factory=list)  # (weight, rgb 0..1)


@dataclass(frozen=True)
class Shape:
    """How a design sits on the head in 3D (units of the mean face: 1 ~ 1.8 mm, inter-ocular 35).

    The surface runs from the nose wire across the upper nose bridge, over the cheeks to the
    jaw and under the chin; across the face its profile is ``standoff + front * (1 - |s|**wrap)``
    in front of the line from the side edge to the centre, so it stands off the cheeks and
    clears the nose and lips; ``cup`` adds a moulded dome in the middle (N95), ``ridge`` a
    sharp vertical fold at the centre (KN95), ``fold`` a horizontal fold line (boat-shaped KF94).
    """

    standoff: float = 1.0  # off the skin everywhere
    wrap: float = 2.0  # across-face profile exponent: 2 rounds over the face, 1 is a V
    cup: float = 0.0  # forward dome at the centre of the mask
    ridge: float = 0.0  # forward vertical fold at u = 0.5
    fold: float = 0.0  # forward horizontal fold at v = fold_v
    fold_v: float = 0.5
    chin: float = 1.0  # how far the bottom edge wraps under the chin (1 = to the neck)
    width: float = 1.0  # how far the sides reach toward the ears (1 = just past the jaw line)


@dataclass(frozen=True)
class Design:
    """One mask design. Registered by its file with :func:`register`.

    colors: the design's real-world colours with weights (used by ``color="random"`` and by
    recipes that do not name colours). loops: ``"ear"`` loops, ``"head"`` straps or ``"tie"``
    (hidden knot). loop_color: a palette name, or None for the fabric colour. valve: the design
    can carry an exhalation valve. fabric: the micro-texture of the material (``nonwoven``,
    ``woven``, ``felt``). order: position in listings (``MASK_TYPES``).
    """

    name: str
    draw: Callable[..., Layers]
    default_color: str
    colors: tuple[tuple[str, float], ...] = ()
    shape: Shape = Shape()
    extent: tuple[float, float, float, float] = (-0.1, 1.1, -0.1, 1.12)  # u0, u1, v0, v1
    loops: str = "ear"
    loop_color: str | None = "white"
    loop_v: tuple[float, float] = (0.10, 0.88)  # where the loops leave the side edges
    valve: bool = False
    fabric: str = "nonwoven"
    order: int = 100
    description: str = ""


DESIGNS: dict[str, Design] = {}


def register(design: Design) -> Design:
    """Add a design to the registry (each design file calls this once, at import)."""
    if design.name in DESIGNS and DESIGNS[design.name] is not design:
        raise ValueError(f"mask design {design.name!r} is registered twice")
    if design.loops not in ("ear", "head", "tie"):
        raise ValueError(f"design {design.name!r}: loops must be ear, head or tie")
    DESIGNS[design.name] = design
    return design


# ---- drawing helpers shared by the design files ----


def sd_box(u, v, u0, u1, v0, v1, r):
    """Signed distance (positive inside) to a rounded box, in template u units (v scaled)."""
    cx, cy = (u0 + u1) / 2, (v0 + v1) / 2 * ASPECT
    hx, hy = (u1 - u0) / 2 - r, (v1 - v0) / 2 * ASPECT - r
    qx = np.abs(u - cx) - hx
    qy = np.abs(v * ASPECT - cy) - hy
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)
    return r - outside


def aa(sd, px):
    """Anti-aliased coverage of a signed distance (template u units) over ``px`` units."""
    return np.clip(0.5 + sd / px, 0.0, 1.0)


def gauss(x, w):
    return np.exp(-((x / w) ** 2))


def smooth_noise(shape: tuple[int, int], seed: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise of a fixed seed (a design's own, not the sample's)."""
    n = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigma)
    return n / max(float(n.std()), 1e-6)


def stitches(line_dist, along, px, period: float = 55.0, width: float = 0.003):
    """A dashed stitch line at distance 0 of ``line_dist`` (template units)."""
    return aa(width - np.abs(line_dist), px) * (np.cos(2 * np.pi * along * period) > 0.2)
