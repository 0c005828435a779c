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
    """Least-squares similarity (rotation, uniform scale, translation) mapping src to dst, 2x3.

    In 2D the Umeyama solution has a closed form: with the points as complex numbers around
    their means, scale x rotation is ``sum(conj(s) * d) / sum(|s|^2)`` (no SVD needed).
    """
    s = np.asarray(src, np.float64)
    d = np.asarray(dst, np.float64)
    sc = s[:, 0] + 1j * s[:, 1]
    dc = d[:, 0] + 1j * d[:, 1]
    ms, md = sc.mean(), dc.mean()
    s0 = sc - ms
    var = float((s0.real * s0.real + s0.imag * s0.imag).sum())
    a = complex(np.vdot(s0, dc - md)) / var if var > 0 else 1.0 + 0j
    t = md - a * ms
    return np.array([[a.real, -a.imag, t.real], [a.imag, a.real, t.imag]])


def alignment_matrix(landmarks68: np.ndarray, size: int = 112) -> np.ndarray:
    """The 2x3 similarity taking image pixels to the aligned ``size`` x ``size`` crop."""
    ref = ARCFACE_5 * (size / 112.0)
    return umeyama_similarity(five_points(landmarks68), ref)


def align_face(img: np.ndarray, landmarks68: np.ndarray, size: int = 112, matrix: np.ndarray | None = None) -> np.ndarray:
    """Warp ``img`` to the ArcFace ``size`` x ``size`` crop defined by the 68 landmarks
    (``matrix``: their :func:`alignment_matrix`, when the caller already has it)."""
    m = alignment_matrix(landmarks68, size) if matrix is None else matrix
    out = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(out)


def transform_points(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (N, 2) points."""
    p = np.asarray(points, np.float64)
    return (p @ m[:, :2].T + m[:, 2]).astype(np.float32)
