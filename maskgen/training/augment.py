"""Face-crop augmentations on uint8 RGB arrays (numpy/OpenCV, run in the loader workers).

The recipe follows the published face-recognition trainers: horizontal flip always on offer,
and with small probabilities random crop, Gaussian blur, motion blur, RGB shift, JPEG
re-compression and a small affine jitter. Every random draw comes from the ``rng`` passed in, which
the loader seeds per sample, so a sample's augmentation does not depend on worker scheduling and
the original and masked image of a pair get the same geometry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    flip: float = 0.5  # probability of a horizontal flip
    crop: float = 0.0  # probability of a random crop resized back to full size
    crop_scale: float = 0.8  # smallest kept area fraction of a random crop
    blur: float = 0.0  # probability of a Gaussian blur
    motion_blur: float = 0.0  # probability of a linear motion blur
    rgb_shift: float = 0.0  # probability of a per-channel intensity shift
    rgb_shift_limit: int = 20
    jpeg: float = 0.0  # probability of a JPEG re-compression
    jpeg_quality: tuple[int, int] = (30, 90)
    affine: float = 0.0  # probability of a small rotation/scale/translation
    affine_degrees: float = 10.0
    affine_scale: float = 0.1
    affine_translate: float = 0.05  # fraction of the image side

    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> "AugmentConfig":
        options = dict(options or {})
        known = {f.name for f in fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise ValueError(f"unknown augment options {sorted(unknown)}; known: {sorted(known)}")
        if "jpeg_quality" in options:
            options["jpeg_quality"] = tuple(options["jpeg_quality"])
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["jpeg_quality"] = list(self.jpeg_quality)
        return d


PUBLISHED = AugmentConfig(
    flip=0.5, crop=0.2, blur=0.05, motion_blur=0.05, rgb_shift=0.1, jpeg=0.1, affine=0.1
)
NONE = AugmentConfig(flip=0.0)


def _affine(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    h, w = img.shape[:2]
    angle = rng.uniform(-cfg.affine_degrees, cfg.affine_degrees)
    scale = 1.0 + rng.uniform(-cfg.affine_scale, cfg.affine_scale)
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, scale)
    m[:, 2] += rng.uniform(-cfg.affine_translate, cfg.affine_translate, size=2) * (w, h)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def _crop(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    h, w = img.shape[:2]
    side = np.sqrt(rng.uniform(cfg.crop_scale, 1.0))
    ch, cw = max(1, int(round(h * side))), max(1, int(round(w * side)))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return cv2.resize(img[y : y + ch, x : x + cw], (w, h), interpolation=cv2.INTER_LINEAR)


def _motion_blur(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    k = int(rng.choice([3, 5, 7]))
    kernel = np.zeros((k, k), np.float32)
    kernel[k // 2, :] = 1.0
    rot = cv2.getRotationMatrix2D(((k - 1) / 2.0, (k - 1) / 2.0), rng.uniform(0, 180), 1.0)
    kernel = cv2.warpAffine(kernel, rot, (k, k))
    kernel /= max(kernel.sum(), 1e-6)
    return cv2.filter2D(img, -1, kernel)


def augment(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Apply the recipe to one HxWx3 uint8 RGB image; returns a contiguous uint8 array.

    One uniform draw per stage is always taken, whether the stage fires or not, so two images
    augmented from equal generators get identical transforms.
    """
    u = rng.random(8)
    if u[0] < cfg.affine:
        img = _affine(img, rng, cfg)
    if u[1] < cfg.crop:
        img = _crop(img, rng, cfg)
    if u[2] < cfg.flip:
        img = img[:, ::-1]
    if u[3] < cfg.rgb_shift:
        shift = rng.integers(-cfg.rgb_shift_limit, cfg.rgb_shift_limit + 1, size=3)
        img = np.clip(img.astype(np.int16) + shift.astype(np.int16), 0, 255).astype(np.uint8)
    if u[4] < cfg.blur:
        sigma = rng.uniform(0.3, 1.5)
        img = cv2.GaussianBlur(np.ascontiguousarray(img), (0, 0), sigma)
    if u[5] < cfg.motion_blur:
        img = _motion_blur(np.ascontiguousarray(img), rng)
    if u[6] < cfg.jpeg:
        q = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
    return np.ascontiguousarray(img)
