"""Head pose (yaw, pitch, roll) from 68 landmarks via cv2.solvePnP against a 3D mean shape.

The pose steers the mask (ear loops only on the visible side) and rejects false detections:
landmarks that no rigid head can produce reproject badly.
"""

from __future__ import annotations

import functools
import math
import threading

import cv2
import numpy as np

# The project's own 3D mean face in iBUG-68 order. Units: pixels of the 112x112 ArcFace crop
# (inter-ocular distance about 35). Axes follow the camera: X to the image right, Y down, Z away
# from the camera; the origin is 56 px right of and 65 px below the crop's top-left corner
# (ARCFACE_CENTER). X and Y are the left-right symmetrised mean of dlib 68-point fits on 300
# frontal LFW faces after 5-point alignment; Z is an anatomical depth per region (nose tip 0,
# jaw contour up to 40 behind it), from the usual proportions: outer eye corners ~0.6 x their
# half-width behind the nose tip, mouth corners ~0.8 x, chin ~0.2 x its drop below the tip.
MEAN_SHAPE_3D = np.array(
    [
        (-41.3, -10.3, 40.0),  # 0
        (-40.9, 0.6, 38.0),  # 1
        (-39.9, 11.4, 35.0),  # 2
        (-37.9, 22.1, 31.0),  # 3
        (-34.1, 32.1, 26.0),  # 4
        (-27.9, 40.9, 20.0),  # 5
        (-19.9, 48.2, 15.0),  # 6
        (-10.6, 53.9, 11.0),  # 7
        (0.0, 55.6, 9.7),  # 8
        (10.6, 53.9, 11.0),  # 9
        (19.9, 48.2, 15.0),  # 10
        (27.9, 40.9, 20.0),  # 11
        (34.1, 32.1, 26.0),  # 12
        (37.9, 22.1, 31.0),  # 13
        (39.9, 11.4, 35.0),  # 14
        (40.9, 0.6, 38.0),  # 15
        (41.3, -10.3, 40.0),  # 16
        (-32.3, -18.6, 20.0),  # 17
        (-27.6, -23.3, 14.0),  # 18
        (-20.8, -25.1, 10.0),  # 19
        (-13.5, -24.3, 8.0),  # 20
        (-6.7, -21.7, 7.0),  # 21
        (6.7, -21.7, 7.0),  # 22
        (13.5, -24.3, 8.0),  # 23
        (20.8, -25.1, 10.0),  # 24
        (27.6, -23.3, 14.0),  # 25
        (32.3, -18.6, 20.0),  # 26
        (0.0, -13.7, 11.0),  # 27
        (0.0, -7.1, 8.0),  # 28
        (0.0, -0.4, 4.0),  # 29
        (0.0, 6.4, 0.0),  # 30
        (-8.1, 11.6, 8.0),  # 31
        (-4.2, 13.1, 4.0),  # 32
        (0.0, 14.3, 3.0),  # 33
        (4.2, 13.1, 4.0),  # 34
        (8.1, 11.6, 8.0),  # 35
        (-24.1, -11.9, 14.5),  # 36
        (-19.9, -14.3, 11.0),  # 37
        (-14.9, -14.3, 10.5),  # 38
        (-10.5, -11.4, 11.0),  # 39
        (-15.2, -10.5, 11.0),  # 40
        (-20.0, -10.5, 11.0),  # 41
        (10.5, -11.4, 11.0),  # 42
        (14.9, -14.3, 10.5),  # 43
        (19.9, -14.3, 11.0),  # 44
        (24.1, -11.9, 14.5),  # 45
        (20.0, -10.5, 11.0),  # 46
        (15.2, -10.5, 11.0),  # 47
        (-15.9, 26.2, 13.3),  # 48
        (-10.2, 22.9, 9.0),  # 49
        (-4.4, 21.6, 7.0),  # 50
        (0.0, 22.5, 6.5),  # 51
        (4.4, 21.6, 7.0),  # 52
        (10.2, 22.9, 9.0),  # 53
        (15.9, 26.2, 13.3),  # 54
        (10.5, 31.7, 9.0),  # 55
        (4.7, 34.0, 7.5),  # 56
        (0.0, 34.5, 7.0),  # 57
        (-4.7, 34.0, 7.5),  # 58
        (-10.5, 31.7, 9.0),  # 59
        (-13.4, 26.3, 12.0),  # 60
        (-4.4, 24.9, 8.0),  # 61
        (0.0, 25.2, 7.0),  # 62
        (4.4, 24.9, 8.0),  # 63
        (13.4, 26.3, 12.0),  # 64
        (4.5, 29.0, 8.0),  # 65
        (0.0, 29.5, 7.0),  # 66
        (-4.5, 29.0, 8.0),  # 67
    ],
    dtype=np.float64,
)
ARCFACE_CENTER = np.array([56.0, 65.0])

# Index of each point's left-right mirror partner (for flipping landmarks with the image).
MIRROR_68 = np.array([16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 27, 28, 29, 30, 35, 34, 33, 32, 31, 45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40, 54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65])

# Landmarks of a rigid, well-fitted face reproject within a few percent of the face size.
MAX_REPROJECTION = 0.09


def mean_shape_2d(size: int = 112) -> np.ndarray:
    """The frontal 68-point mean shape in a ``size`` x ``size`` ArcFace-aligned crop."""
    pts = MEAN_SHAPE_3D[:, :2] + ARCFACE_CENTER
    return (pts * (size / 112.0)).astype(np.float32)


def flip_landmarks(landmarks: np.ndarray, width: int) -> np.ndarray:
    """Landmarks of the horizontally flipped image (mirror partners swapped)."""
    lm = np.asarray(landmarks, np.float32)[MIRROR_68].copy()
    lm[:, 0] = (width - 1) - lm[:, 0]
    return lm


def estimate_pose(landmarks: np.ndarray, image_size: tuple[int, int]) -> tuple[tuple[float, float, float], float]:
    """((yaw, pitch, roll) in degrees, normalised reprojection error) for one face.

    Yaw is positive when the face turns towards the image's left (its own right cheek shows
    less, its nose points to the image left); pitch positive when the face looks up (chin raised);
    roll positive when the face's right-hand side in the image (its left eye) is lower.
    The error is the RMS reprojection residual divided by the face size (the larger side of the
    landmarks' bounding box), used to reject landmark sets no rigid head can make.
    """
    h, w = image_size
    lm = np.asarray(landmarks, np.float64).reshape(68, 2)
    cam = camera_matrix(int(h), int(w))
    obj = MEAN_SHAPE_3D
    solved = solve_pose(lm, int(h), int(w))
    if solved is None:
        return (0.0, 0.0, 0.0), float("inf")
    rvec, tvec, rmat = solved
    proj, _ = cv2.projectPoints(obj, rvec, tvec, cam, None)
    lo, hi = lm.min(0), lm.max(0)
    size = max(float(hi[0] - lo[0]), float(hi[1] - lo[1]), 1.0)
    diff = proj.reshape(-1, 2) - lm
    err = math.sqrt(float(np.vdot(diff, diff)) / len(lm)) / size
    pitch, yaw, roll = _euler(rmat)
    return (yaw, pitch, roll), err


_SOLVED: dict[tuple[bytes, int, int], tuple[np.ndarray, np.ndarray, np.ndarray] | None] = {}
_SOLVED_LOCK = threading.Lock()
_SOLVED_MAX = 16


def solve_pose(lm: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(rvec, tvec, rotation matrix) of the mean face posed onto 68 landmarks (float64, (68, 2))
    in an h x w image by SQPnP (globally optimal, ~5x faster than the iterative LM solver
    here); None when it fails. The last few results are kept (read-only): the plausibility
    check of a detection and the mask's head fit solve the same problem for the same face."""
    lm = np.ascontiguousarray(lm, np.float64)
    key = (lm.tobytes(), h, w)
    with _SOLVED_LOCK:
        if key in _SOLVED:
            return _SOLVED[key]
    ok, rvec, tvec = cv2.solvePnP(MEAN_SHAPE_3D, lm, camera_matrix(h, w), None, flags=cv2.SOLVEPNP_SQPNP)
    out = None
    if ok:
        rmat, _ = cv2.Rodrigues(rvec)
        out = (rvec, tvec, rmat)
        for a in out:
            a.flags.writeable = False
    with _SOLVED_LOCK:
        if len(_SOLVED) >= _SOLVED_MAX:
            _SOLVED.pop(next(iter(_SOLVED)))
        _SOLVED[key] = out
    return out


@functools.lru_cache(maxsize=64)
def camera_matrix(h: int, w: int) -> np.ndarray:
    """Pinhole camera of an h x w image (built once per image size; read-only)."""
    f = float(max(h, w)) * 3.0  # long lens: face crops are far relative to their size
    cam = np.array([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]])
    cam.flags.writeable = False
    return cam


def _euler(r: np.ndarray) -> tuple[float, float, float]:
    """Rotation about X (pitch), Y (yaw), Z (roll) in degrees, R = Rz @ Ry @ Rx."""
    (r00, r01, r02), (r10, r11, r12), (r20, r21, r22) = r.tolist()  # scalar math: no ufunc calls
    sy = math.hypot(r00, r10)
    if sy > 1e-6:
        x = math.atan2(r21, r22)
        y = math.atan2(-r20, sy)
        z = math.atan2(r10, r00)
    else:
        x = math.atan2(-r12, r11)
        y = math.atan2(-r20, sy)
        z = 0.0
    # pitch: camera Y points down, so raising the chin is a negative X rotation; flip the sign
    return -math.degrees(x), math.degrees(y), math.degrees(z)
