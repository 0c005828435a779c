"""The public entry: ``mask_face(image, spec, seed) -> MaskResult``.

A :class:`MaskSpec` says what to put on the face; ``seed`` decides everything random (a
``"random"`` colour, the sensor noise), so the same inputs and seed give identical pixels.
"""

from __future__ import annotations

import functools

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import cv2
import numpy as np

from maskgen.masks import textures
from maskgen.masks.designs import DESIGNS, MASK_TYPES, Template, build_template
from maskgen.masks.geometry import WEAR_MODES
from maskgen.masks.landmarks import Face, Select, detect_faces, faces_from_landmarks
from maskgen.masks.packs import PACK_PREFIX, pack_template
from maskgen.masks.render import render_face

# Landmarks that must be covered / must stay visible, per wear mode (iBUG-68 indices).
FIT_POINTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    # nose tip, nostrils and the whole outer lip line covered; eyes free
    "correct": ((30, 31, 32, 33, 34, 35, *range(48, 60)), tuple(range(36, 48))),
    # mouth covered; nose tip, bridge and eyes free
    "below_nose": (tuple(range(48, 60)), (27, 28, 29, 30, *range(36, 48))),
    # chin covered; nose, upper lip, mouth corners and eyes free
    "chin": ((7, 8, 9), (30, 31, 32, 33, 34, 35, 48, 49, 50, 51, 52, 53, 54, *range(36, 48))),
}


@dataclass(frozen=True)
class MaskSpec:
    """What mask to draw.

    type: a built-in design (``MASK_TYPES``) or ``"pack:<name>"`` with ``pack`` = the folder of a
    MaskTheFace-format template pack. color: palette name, ``#rrggbb``, ``"random"`` or None (the
    design's default). texture: None, a procedural pattern (checks, stripes, dots, floral) or an
    image file (tiled). wear: correct, below_nose or chin. valve: exhalation valve (n95, kn95).
    """

    type: str = "surgical"
    color: str | None = None
    texture: str | None = None
    wear: str = "correct"
    valve: bool = False
    pack: str | None = None

    def __post_init__(self) -> None:
        if self.wear not in WEAR_MODES:
            raise ValueError(f"wear must be one of {WEAR_MODES}, got {self.wear!r}")
        if self.type.startswith(PACK_PREFIX):
            if not self.pack:
                raise ValueError(f"type {self.type!r} needs pack=<folder with masks.cfg>")
        elif self.type not in DESIGNS:
            raise ValueError(f"unknown mask type {self.type!r}; choose from {MASK_TYPES} or 'pack:<name>'")
        if self.color not in (None, "random"):
            textures.parse_color(self.color)
        if self.texture is not None and self.texture not in textures.PATTERNS and self.texture != "random":
            if not os.path.isfile(self.texture):
                raise ValueError(f"texture {self.texture!r} is neither a pattern {textures.PATTERNS} nor an image file")

    @classmethod
    def random(
        cls,
        rng_or_seed: np.random.Generator | int,
        types: Sequence[str] = MASK_TYPES,
        wears: Sequence[str] = WEAR_MODES,
        wear_weights: Sequence[float] | None = (0.8, 0.1, 0.1),
        colors: Sequence[str] | None = None,
        textures_: Sequence[str | None] = (None, *textures.PATTERNS),
        texture_prob: float = 0.25,
        valve_prob: float = 0.3,
        pack: str | None = None,
    ) -> MaskSpec:
        """A seeded random choice of type, colour, texture, wear and valve (fully resolved)."""
        rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
        kind = str(types[int(rng.integers(len(types)))])
        ww = None
        if wear_weights is not None and len(wear_weights) == len(wears):
            ww = np.asarray(wear_weights, np.float64) / float(np.sum(wear_weights))
        wear = str(wears[int(rng.choice(len(wears), p=ww))])
        palette = list(colors) if colors else list(textures.PALETTE)
        color = str(palette[int(rng.integers(len(palette)))])
        opts = [t for t in textures_ if t is not None]
        texture = None
        if opts and rng.random() < texture_prob:
            texture = str(opts[int(rng.integers(len(opts)))])
        valve = kind in ("n95", "kn95") and bool(rng.random() < valve_prob)
        if kind.startswith(PACK_PREFIX):
            color, texture = None, None
        return cls(type=kind, color=color, texture=texture, wear=wear, valve=valve, pack=pack)

    def resolve(self, rng: np.random.Generator) -> MaskSpec:
        """The spec with ``random``/None choices made concrete (recorded in results)."""
        if self.type.startswith(PACK_PREFIX):
            return self
        color = self.color
        if color is not None and color != "random" and self.texture != "random":
            return self  # already concrete
        if color is None:
            color = DESIGNS[self.type].default_color
        elif color == "random":
            names = list(textures.PALETTE)
            color = names[int(rng.integers(len(names)))]
        texture = self.texture
        if texture == "random":
            texture = textures.PATTERNS[int(rng.integers(len(textures.PATTERNS)))]
        return replace(self, color=color, texture=texture)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class MaskResult:
    """Output of :func:`mask_face`. ``fit`` is the worst fit over masked faces (0 when none)."""

    image: np.ndarray
    alpha: np.ndarray
    faces: list[Face]
    fit: float
    status: str
    spec: MaskSpec
    fits: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict:
        return {
            "status": self.status,
            "fit": round(float(self.fit), 4),
            "fits": [round(float(f), 4) for f in self.fits],
            "spec": self.spec.to_json(),
            "faces": [f.to_json() for f in self.faces],
        }


def get_template(spec: MaskSpec) -> Template:
    """The cached template pyramid of a resolved spec."""
    if spec.type.startswith(PACK_PREFIX):
        return pack_template(str(spec.pack), spec.type[len(PACK_PREFIX) :])
    rgb = textures.parse_color(spec.color or DESIGNS[spec.type].default_color)
    return build_template(spec.type, rgb, spec.texture, bool(spec.valve))


def fit_score(alpha: np.ndarray, lm: np.ndarray, wear: str) -> float:
    """Coverage of the must-cover landmarks x (1 - worst coverage of the must-stay-free ones).

    Landmarks outside the image (the chin of a tight 112x112 crop) cannot be judged and are
    left out; coverage counts as full from alpha 0.5 up.
    """
    must, free = _fit_index(wear)
    h, w = alpha.shape
    lm = np.asarray(lm)
    inside = (lm[:, 0] >= 0) & (lm[:, 0] <= w - 1) & (lm[:, 1] >= 0) & (lm[:, 1] <= h - 1)
    xy = np.round(lm).astype(np.intp)
    a = alpha[np.clip(xy[:, 1], 0, h - 1), np.clip(xy[:, 0], 0, w - 1)]
    if not inside.all():
        must = must[inside[must]]
        free = free[inside[free]]
    cover = float(np.minimum(a[must] * 2.0, 1.0).mean()) if len(must) else 1.0
    leak = float(a[free].max()) if len(free) else 0.0
    return cover * (1.0 - leak)


@functools.lru_cache(maxsize=8)
def _fit_index(wear: str) -> tuple[np.ndarray, np.ndarray]:
    """FIT_POINTS of a wear mode as index arrays (built once, read-only)."""
    out = tuple(np.asarray(k, np.intp) for k in FIT_POINTS[wear])
    for x in out:
        x.flags.writeable = False
    return out


def _as_faces(faces, shape) -> list[Face]:
    if isinstance(faces, np.ndarray):
        return faces_from_landmarks(faces, shape)
    out = []
    for f in faces:
        out.extend([f] if isinstance(f, Face) else faces_from_landmarks(np.asarray(f), shape))
    return out


def _check_image(img) -> str | None:
    if not isinstance(img, np.ndarray):
        return "bad_image: not a numpy array"
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        return f"bad_image: expected RGB uint8 HxWx3, got {img.dtype} {img.shape}"
    if min(img.shape[:2]) < 16:
        return "bad_image: smaller than 16 px"
    return None


def mask_face(
    img: np.ndarray,
    spec: MaskSpec | None = None,
    seed: int = 0,
    faces: Sequence[Face] | np.ndarray | None = None,
    backend: str = "auto",
    select: Select = "all",
) -> MaskResult:
    """Put the mask ``spec`` on the faces of ``img`` (RGB uint8).

    ``faces`` (Face objects or (68, 2) landmark arrays) skips detection. Per-image problems are
    returned as ``status`` (``no_face``, ``bad_image: ...``, ``off_image``), never raised.
    """
    spec = spec or MaskSpec()
    rng = np.random.default_rng(seed)
    rspec = spec.resolve(rng)
    bad = _check_image(img)
    if bad:
        empty = np.zeros((0, 0), np.float32)
        return MaskResult(img, empty, [], 0.0, bad, rspec)
    img = np.ascontiguousarray(img)
    h, w = img.shape[:2]
    if faces is None:
        faces = detect_faces(img, backend=backend, select=select)
    else:
        faces = _as_faces(faces, img.shape)
    alpha = np.zeros((h, w), np.float32)
    if not faces:
        return MaskResult(img.copy(), alpha, [], 0.0, "no_face", rspec)
    tpl = get_template(rspec)
    out = img.copy()
    fits = []
    done = []
    for face in faces:
        r = render_face(img, face.landmarks, rspec.wear, tpl, rng)
        if r is None:
            continue
        rh, rw = r.alpha.shape
        sl = np.s_[r.y0 : r.y0 + rh, r.x0 : r.x0 + rw]
        roi = out[sl].astype(np.float32)
        roi *= 1.0 / 255.0
        a_roi = alpha[sl]
        composite_roi(roi, a_roi, r)
        # back to 8 bits in place (round half up, saturate); the assignment truncates
        roi *= 255.0
        roi += 0.5
        np.clip(roi, 0.0, 255.0, out=roi)
        out[sl] = roi
        done.append(face)
    if not done:
        return MaskResult(out, alpha, list(faces), 0.0, "off_image", rspec)
    for face in done:
        fits.append(fit_score(alpha, face.landmarks, rspec.wear))
    return MaskResult(out, alpha, done, float(min(fits)), "ok", rspec, fits)


def composite_roi(roi: np.ndarray, a_roi: np.ndarray, r) -> None:
    """Premultiplied 'over' of one rendered mask into its ROI (both updated in place)."""
    if r.rgba is not None:
        # contiguous 4-channel source: OpenCV's channel ops beat numpy's strided views 2x
        inv = cv2.extractChannel(r.rgba, 3)
        np.clip(inv, 0.0, 1.0, out=inv)
        np.subtract(1.0, inv, out=inv)  # 1 - alpha, computed once
        cv2.multiply(roi, cv2.merge([inv, inv, inv]), dst=roi)
        cv2.add(roi, cv2.cvtColor(r.rgba, cv2.COLOR_RGBA2RGB), dst=roi)
    else:
        inv = np.clip(r.alpha, 0.0, 1.0)
        np.subtract(1.0, inv, out=inv)
        roi *= inv[..., None]
        roi += r.rgb_premul
    a_roi[...] = 1.0 - (1.0 - a_roi) * inv
