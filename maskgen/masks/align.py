"""insightface/ArcFace 5-point similarity alignment from 68 landmarks.

Recognition models are trained on crops aligned this way, so a masked twin must be aligned by
exactly the same rule as its unmasked original.
"""

from __future__ import annotations

import cv2
import numpy as np

# The ArcFace reference points in a 112x112 crop: left eye, right eye (image left/right),
# nose tip, left and right mouth corner.
ARCFACE_5 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def five_points(landmarks68: np.ndarray) -> np.ndarray:
    """Eye centres, nose tip and mouth corners (5, 2) from iBUG-68 points."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    return np.stack(
        [
            lm[36:42].mean(axis=0),
            lm[42:48].mean(axis=0),
            lm[30],
            lm[48],
            lm[54],
        ]
    )


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src to dst, 2x3."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    r = u @ np.diag(d) @ vt
    var_s = (s0**2).sum() / len(src)
    scale = (sig * d).sum() / var_s if var_s > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * r
    m[:, 2] = mu_d - scale * r @ mu_s
    return m


def alignment_matrix(landmarks68: np.ndarray, size: int = 112) -> np.ndarray:
    """The 2x3 similarity taking image pixels to the aligned ``size`` x ``size`` crop."""
    ref = ARCFACE_5 * (size / 112.0)
    return umeyama_similarity(five_points(landmarks68), ref)


def align_face(img: np.ndarray, landmarks68: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp ``img`` to the ArcFace ``size`` x ``size`` crop defined by the 68 landmarks."""
    m = alignment_matrix(landmarks68, size)
    out = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(out)


def transform_points(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (N, 2) points."""
    p = np.asarray(points, np.float64)
    return (p @ m[:, :2].T + m[:, 2]).astype(np.float32)
