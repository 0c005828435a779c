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
from maskgen.masks.align import alignment_matrix
from maskgen.masks.designs import DESIGNS, MASK_TYPES, Template, build_template
from maskgen.masks.geometry import WEAR_MODES, FaceMesh
from maskgen.masks.jpeglook import applies as jpeg_applies
from maskgen.masks.jpeglook import check_quality, round_trip_mask
from maskgen.masks.landmarks import Face, Select, detect_faces, faces_from_landmarks
from maskgen.masks.packs import PACK_PREFIX, pack_template
from maskgen.masks.mix import MaskMix, default_mix
from maskgen.masks.render import render_face

# Landmarks that must be covered / must stay visible, per wear mode (iBUG-68, 0-based indices).
FIT_POINTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    # the nose below the bridge (29), its tip and nostrils, and the outer lip line covered;
    # eyes free
    "correct": ((29, 30, 31, 32, 33, 34, 35, *range(48, 60)), tuple(range(36, 48))),
    # mouth covered; nose tip, bridge and eyes free
    "below_nose": (tuple(range(48, 60)), (27, 28, 29, 30, *range(36, 48))),
    # chin covered; nose, upper lip, mouth corners and eyes free
    "chin": ((7, 8, 9), (30, 31, 32, 33, 34, 35, 48, 49, 50, 51, 52, 53, 54, *range(36, 48))),
}
LOW_FIT = "fit score below threshold"  # the status of a render rejected by ``min_fit``
FIT_FRAMES = ("aligned", "image")


@dataclass(frozen=True)
class MaskSpec:
    """What mask to draw.

    type: a built-in design (``MASK_TYPES``) or ``"pack:<name>"`` with ``pack`` = the folder of a
    MaskTheFace-format template pack. color: palette name, ``#rrggbb``, ``"random"`` (one of the
    design's real-world colours, seeded) or None (the design's default). texture: None, a
    procedural pattern (``PATTERNS``; ``"camo"`` gets a seeded variant, ``"camo:3"`` is one
    variant), ``"random"`` or an image file (tiled). wear: correct, below_nose or chin.
    valve: exhalation valve (designs that can carry one: ``VALVE_TYPES``).
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
        elif self.valve and not DESIGNS[self.type].valve:
            raise ValueError(f"mask type {self.type!r} cannot carry a valve (designs with one: "
                             f"{', '.join(n for n in MASK_TYPES if DESIGNS[n].valve)})")
        if self.color not in (None, "random"):
            textures.parse_color(self.color)
        if self.texture is not None and not textures.is_pattern(self.texture) and self.texture != "random":
            if not os.path.isfile(self.texture):
                raise ValueError(f"texture {self.texture!r} is neither a pattern {textures.PATTERNS} nor an image file")

    @classmethod
    def random(
        cls,
        rng_or_seed: np.random.Generator | int,
        mix=None,
        *,
        types: Sequence[str] | None = None,
        wears: Sequence[str] | None = None,
        pack: str | None = None,
    ) -> MaskSpec:
        """A seeded draw from a mask mix (default: the default recipe, the same one a build
        draws from), optionally restricted to some designs or wear modes; fully resolved."""
        rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
        m = _mix(mix, tuple(types) if types else None, tuple(wears) if wears else None) if not isinstance(mix, MaskMix) else mix
        return cls(**m.draw(rng), pack=pack)

    def resolve(self, rng: np.random.Generator) -> MaskSpec:
        """The spec with ``random``/None choices made concrete (recorded in results)."""
        if self.type.startswith(PACK_PREFIX):
            return self
        color, texture = self.color, self.texture
        if color is None:
            color = DESIGNS[self.type].default_color
        elif color == "random":
            color = _random_color(self.type, rng)
        if texture == "random":
            texture = textures.PATTERNS[int(rng.integers(len(textures.PATTERNS)))]
        if texture is not None and textures.is_pattern(texture):
            texture = textures.seeded_pattern(texture, rng)
        if color == self.color and texture == self.texture:
            return self
        return replace(self, color=color, texture=texture)

    def to_json(self) -> dict:
        return asdict(self)


@functools.lru_cache(maxsize=32)
def _mix(mix, types, wears) -> MaskMix:
    if mix is None and types is None and wears is None:
        return default_mix()
    return MaskMix.resolve(mix, mask_types=list(types) if types else None, wear=list(wears) if wears else None)


def _random_color(kind: str, rng: np.random.Generator) -> str:
    """One of a design's real-world colours, drawn by its weights."""
    cols = DESIGNS[kind].colors or ((DESIGNS[kind].default_color, 1.0),)
    p = np.array([w for _, w in cols], np.float64)
    return cols[int(rng.choice(len(cols), p=p / p.sum()))][0]


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


def fit_score(
    alpha: np.ndarray,
    lm: np.ndarray,
    wear: str,
    mesh: FaceMesh | None = None,
    frame: str = "aligned",
) -> float:
    """How well a rendered mask fits the face, 0..1 (product of four terms, see docs/masks.md).

    - cover: the must-cover landmarks (nose and mouth in correct wear), each counted from
      alpha 0.25 (none) to 0.75 (full), squared mean: one uncovered point in 19 costs ~10 %;
    - eyes: any coverage of a must-stay-free landmark (eyes always): ``1 - 2 (max alpha - 0.02)``;
    - frame: the share of the mask (projected area) inside the image and, with ``frame =
      "aligned"``, inside the face's 112x112 ArcFace crop (a chin mask below a tight crop):
      full from 70 %, nothing from 45 % down;
    - folds: the share of the mask the landmarks crushed or folded over, and how much of it
      still faces the camera at extreme yaw (full from 65 % of its frontal area, none below 35 %).

    Landmarks outside the image (the chin of a tight crop) cannot be judged for coverage.
    """
    must, free = _fit_index(wear)
    h, w = alpha.shape
    lm = np.asarray(lm, np.float64)
    inside = (lm[:, 0] >= 0) & (lm[:, 0] <= w - 1) & (lm[:, 1] >= 0) & (lm[:, 1] <= h - 1)
    xy = np.round(lm).astype(np.intp)
    a = alpha[np.minimum(np.maximum(xy[:, 1], 0), h - 1), np.minimum(np.maximum(xy[:, 0], 0), w - 1)]
    if not inside.all():
        must = must[inside[must]]
        free = free[inside[free]]
    cover = float(np.minimum(np.maximum((a[must] - 0.25) * 2.0, 0.0), 1.0).sum() / len(must)) ** 2 if len(must) else 1.0
    leak = float(a[free].max()) if len(free) else 0.0
    eyes = min(max(1.0 - 2.0 * (leak - 0.02), 0.0), 1.0)
    score = cover * eyes
    if mesh is not None:
        score *= _frame_term(mesh, lm, (h, w), frame) * _fold_term(mesh)
    return float(score)


def _frame_term(mesh: FaceMesh, lm: np.ndarray, shape: tuple[int, int], frame: str) -> float:
    """Full when >= 70 % of the visible mask lies in the frame (a correct-wear mask's part under
    the chin leaves a 112 crop: on LFW 72-95 % stays inside), nothing from 45 % down."""
    return min(max((frame_share(mesh, lm, shape, frame) - 0.45) / 0.25, 0.0), 1.0)


def frame_share(mesh: FaceMesh, lm: np.ndarray, shape: tuple[int, int], frame: str = "aligned") -> float:
    """Share of the visible patch (by projected cell area) inside the image (and the crop)."""
    g = mesh.xy[1:-1, 1:-1]
    c = 0.25 * (g[:-1, :-1] + g[1:, :-1] + g[:-1, 1:] + g[1:, 1:])
    area = np.maximum(mesh.cell_area[1:-1, 1:-1], 0.0)
    total = float(area.sum())
    if total <= 0:
        return 0.0
    h, w = shape
    ok = (c[..., 0] >= 0) & (c[..., 0] <= w - 1) & (c[..., 1] >= 0) & (c[..., 1] <= h - 1)
    if frame == "aligned":
        m = alignment_matrix(lm, 112)
        q = c @ m[:, :2].T + m[:, 2]
        ok &= (q[..., 0] >= 0) & (q[..., 0] <= 111) & (q[..., 1] >= 0) & (q[..., 1] <= 111)
    return float((area * ok).sum()) / total


def _fold_term(mesh: FaceMesh) -> float:
    """Folds the landmarks made, times how much of the mask still faces the camera."""
    seen = float(np.maximum(mesh.cell_area[1:-1, 1:-1], 0.0).sum())
    visible = seen / max(mesh.frontal_area, 1e-9)  # of its head-on area at this face's scale
    return min(max(1.0 - 2.0 * mesh.fold, 0.0), 1.0) * min(max((visible - 0.35) / 0.3, 0.0), 1.0)


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


def check_image(img) -> str | None:
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
    min_fit: float | None = None,
    fit_frame: str = "aligned",
    jpeg_quality: int | None = None,
    jpeg_sampling: str | None = None,
) -> MaskResult:
    """Put the mask ``spec`` on the faces of ``img`` (RGB uint8).

    ``faces`` (Face objects or (68, 2) landmark arrays) skips detection. Per-image problems are
    returned as ``status`` (``no_face``, ``bad_image: ...``, ``off_image``, and with ``min_fit``
    ``LOW_FIT`` when the worst face's fit score is below it), never raised. ``fit_frame``:
    judge the fit inside each face's aligned 112x112 crop (``aligned``, what a recognition
    model sees) or the whole image (``image``).

    ``jpeg_quality`` (the photo's JPEG quality, ``maskgen.masks.jpeglook.jpeg_look``) below 95
    gives each mask the photo's JPEG look: its box, on the photo's 8x8 grid, goes through one
    JPEG encode/decode at that quality and chroma subsampling (``jpeg_sampling``: ``"4:2:0"``
    (default), ``"4:2:2"``, ``"4:4:4"``, ... or ``"gray"``); only the mask's pixels take it.
    """
    if fit_frame not in FIT_FRAMES:
        raise ValueError(f"fit_frame must be one of {FIT_FRAMES}")
    check_quality(jpeg_quality, jpeg_sampling)
    spec = spec or MaskSpec()
    rng = np.random.default_rng(seed)
    rspec = spec.resolve(rng)
    bad = check_image(img)
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
    loop_v = DESIGNS[rspec.type].loop_v if rspec.type in DESIGNS else (0.10, 0.88)
    out = img.copy()
    fits = []
    done = []
    meshes = []
    for face in faces:
        r = render_face(img, face.landmarks, rspec.wear, tpl, rng, loop_v)
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
        if jpeg_applies(jpeg_quality):
            round_trip_mask(out, r.alpha, r.x0, r.y0, int(jpeg_quality), jpeg_sampling)
        done.append(face)
        meshes.append(r.mesh)
    if not done:
        return MaskResult(out, alpha, list(faces), 0.0, "off_image", rspec)
    for face, mesh in zip(done, meshes):
        fits.append(fit_score(alpha, face.landmarks, rspec.wear, mesh, fit_frame))
    fit = float(min(fits))
    status = LOW_FIT if min_fit is not None and fit < float(min_fit) else "ok"
    return MaskResult(out, alpha, done, fit, status, rspec, fits)


def composite_roi(roi: np.ndarray, a_roi: np.ndarray, r) -> None:
    """Premultiplied 'over' of one rendered mask into its ROI (both updated in place)."""
    shadow = getattr(r, "shadow", None)
    if r.rgba is not None:
        # contiguous 4-channel source: OpenCV's channel ops beat numpy's strided views 2x
        inv = cv2.extractChannel(r.rgba, 3)
        np.clip(inv, 0.0, 1.0, out=inv)
        np.subtract(1.0, inv, out=inv)  # 1 - alpha, computed once
        keep = inv if shadow is None else inv * (1.0 - shadow)  # the skin darkens in the shadow
        cv2.multiply(roi, cv2.merge([keep, keep, keep]), dst=roi)
        cv2.add(roi, cv2.cvtColor(r.rgba, cv2.COLOR_RGBA2RGB), dst=roi)
    else:
        inv = np.clip(r.alpha, 0.0, 1.0)
        np.subtract(1.0, inv, out=inv)
        keep = inv if shadow is None else inv * (1.0 - shadow)
        roi *= keep[..., None]
        roi += r.rgb_premul
    a_roi[...] = 1.0 - (1.0 - a_roi) * inv
