"""The ``cnn`` landmark backend: MTCNN finds the faces, dlib's 68-point model fits them.

Why: dlib's frontal HOG detector misses about a quarter of FairFace's faces, and more of the
faces of dark-skinned people, men and children (``benchmarks/detect_fairness.md``). MTCNN
(:mod:`maskgen.masks.mtcnn`) finds nearly all of them, across groups.

How a photo goes through it:

1. With ``select="center"`` / ``"largest"`` (one subject per photo: face datasets), the HOG
   detector's cheap looks come first: the central 64 % of the frame shrunk to 112 px
   (:meth:`DlibBackend._fast_boxes`, ~2 ms), then one search of the whole frame without
   upsampling. LFW-style portraits end there, as fast as before; on FairFace the second look
   finds a third of the faces the first misses, at half MTCNN's cost.
2. Otherwise, or when those looks find no plausible face, MTCNN searches the whole frame.
   When it finds nothing, it looks again at the frame with its edges extended (tight crops),
   then at the mirror image of that. When that finds nothing either, MTCNN's last network
   (O-Net) is asked directly about square boxes about the frame's centre (:meth:`CnnBackend.
   central_look`): a face that fills a tight crop, cut off at the forehead or chin, slips
   through the first two networks' windows but not O-Net's judgement. Only near-frontal faces
   whose 68-point fit agrees with O-Net's five points are kept from this look.
3. dlib's 68-point predictor was trained on HOG boxes, so each MTCNN face is given the HOG box
   that its five points predict (:func:`hog_box`, calibrated on 1,230 faces both detectors found:
   see ``docs/masks.md``) and fitted there, many faces as one batch (:mod:`maskgen.masks.ert`).
4. A face whose five points say it is turned beyond ``MAX_YAW`` is not fitted: the 68-point
   model was not trained on profiles, so its landmarks there would be a guess. Such images get
   the reason ``profile`` instead of a bad fit (:data:`REASON_PROFILE`).

Every face still passes :func:`maskgen.masks.landmarks.plausible`.
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from maskgen.masks.landmarks import (
    REASON_IMPLAUSIBLE,
    REASON_NO_FACE,
    REASON_PROFILE,
    DlibBackend,
    Face,
    FaceList,
    Select,
    get_detector,
    make_face,
    plausible,
    to_gray,
)
from maskgen.masks.mtcnn import Detections, get_mtcnn

# HOG box from MTCNN's five points (least squares on 1,230 faces of LFW and FairFace that both
# detectors found; `benchmarks/detect_fairness.py --calibrate` refits it). With e the eye
# midpoint, m the mouth midpoint, L = |m - e|, n the nose tip and c = (e + m) / 2:
#   box centre x = e.x + L * (a0 + a1 (m.x - e.x) / L + a2 (n.x - c.x) / L)
#   box centre y = e.y + L * (b0 + b1 (m.y - e.y) / L)
#   box side     = L * (s0 + s1 * inter-ocular distance / L)
HOG_BOX_X = (-0.1004, 0.3207, -0.0484)
HOG_BOX_Y = (-2.024, 2.4339)
HOG_BOX_SIDE = (1.2999, 1.0069)
# Yaw from the nose tip's offset across the eye-mouth line (in units of L): asin(k * offset),
# fitted against the 68-point head pose of 700 plausible faces (mean error 3 deg below 15 deg
# of yaw, 5-7 deg up to 45).
YAW_K = -2.1
# Beyond this yaw (degrees, from the five points) the 68-point model is not fitted.
MAX_YAW = 60.0
# Smallest face MTCNN looks for, as a fraction of the image's short side (and never under
# MIN_FACE_PX): one subject per photo is large; "all" also wants the faces in the back.
MIN_FACE_SUBJECT = 0.12
MIN_FACE_ALL = 0.04
MIN_FACE_PX = 20.0
# MTCNN runs on a copy whose long side is at most this (faces of larger photos are large).
MAX_SIDE = 1024
# When MTCNN finds nothing, it looks again at the frame with its edges extended by this fraction
# (replicated pixels; tight crops whose face runs off the frame: on FairFace it then finds
# about 70 % of the faces it missed), then at the mirror image of the extended frame.
PAD = 0.3
# The central look (when every other look finds nothing): O-Net on square boxes of these sides
# (fractions of the short side) centred on the frame and shifted up or down by these fractions.
# Its face is kept when O-Net's score is at least CENTRAL_SCORE (O-Net's threshold in the
# cascade), the five points put it within CENTRAL_MAX_YAW, and the 68-point fit agrees with the
# five points within CENTRAL_MAX_DISAGREE (:func:`five_point_disagreement`). Why so strict: the
# faces only this look finds are mostly profiles cut off by the crop, and the five points of a
# cut-off face understate its turn (on FairFace those read 28-55 deg had fits that had slid off
# the face, looked at by eye; those within 21 deg were fitted well). 0.15 is about the 99th
# percentile of this look's fits of ordinary faces within 20 deg (a seeded sample of 500
# FairFace crops; the 95th: 0.12). On the 464 face-free images of the benchmark O-Net calls none
# of these boxes a face.
CENTRAL_SIDES = (0.55, 0.7, 0.85, 1.0)
CENTRAL_SHIFTS = (-0.1, 0.0, 0.1)
CENTRAL_SCORE = 0.8
CENTRAL_MAX_YAW = 25.0
CENTRAL_MAX_DISAGREE = 0.15


def five_point_frame(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(eye midpoint, mouth midpoint, their distance) of MTCNN's five points."""
    e = (points[0] + points[1]) / 2.0
    m = (points[3] + points[4]) / 2.0
    return e, m, float(np.hypot(*(m - e)))


def hog_box(points: np.ndarray) -> tuple[float, float, float, float]:
    """The box dlib's HOG detector would give the face with these five points."""
    p = np.asarray(points, np.float64)
    e, m, L = five_point_frame(p)
    L = max(L, 1e-6)
    c = (e + m) / 2.0
    iod = float(np.hypot(*(p[1] - p[0])))
    cx = e[0] + L * (HOG_BOX_X[0] + HOG_BOX_X[1] * (m[0] - e[0]) / L + HOG_BOX_X[2] * (p[2, 0] - c[0]) / L)
    cy = e[1] + L * (HOG_BOX_Y[0] + HOG_BOX_Y[1] * (m[1] - e[1]) / L)
    side = L * (HOG_BOX_SIDE[0] + HOG_BOX_SIDE[1] * iod / L)
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def nose_offset(points: np.ndarray) -> float:
    """Signed distance of the nose tip from the eye-mouth line, in units of that line's length."""
    p = np.asarray(points, np.float64)
    e, m, L = five_point_frame(p)
    L = max(L, 1e-6)
    ux, uy = (m - e) / L
    dx, dy = p[2] - e
    return float((dx * uy - dy * ux) / L)


def yaw_from_points(points: np.ndarray) -> float:
    """Head yaw in degrees estimated from MTCNN's five points (sign as :func:`estimate_pose`)."""
    return math.degrees(math.asin(max(-1.0, min(1.0, YAW_K * nose_offset(points)))))


def five_point_disagreement(landmarks: np.ndarray, points: np.ndarray) -> float:
    """Mean distance between MTCNN's five points and the same points of a 68-point fit (eye
    centres, nose tip, mouth corners), in units of the eye-mouth distance: a fit that has slid
    off the face (a profile fitted as if frontal) disagrees with the detector that found it."""
    lm = np.asarray(landmarks, np.float64)
    p = np.asarray(points, np.float64)
    five = np.array([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])
    return float(np.linalg.norm(five - p, axis=1).mean() / max(five_point_frame(p)[2], 1e-6))


def mirrored(det: Detections, width: int) -> Detections:
    """Detections in a mirrored image, mapped back to the image: x flipped, and the left and
    right eyes and mouth corners swapped."""
    boxes = det.boxes.copy()
    boxes[:, [0, 2]] = width - 1 - det.boxes[:, [2, 0]]
    pts = det.points[:, [1, 0, 2, 4, 3]].copy()
    pts[..., 0] = width - 1 - pts[..., 0]
    return Detections(boxes, det.scores.copy(), pts)


def min_face(shape: tuple[int, ...], select: Select) -> float:
    frac = MIN_FACE_ALL if select == "all" else MIN_FACE_SUBJECT
    return max(MIN_FACE_PX, frac * min(shape[:2]))


class CnnBackend:
    """MTCNN detection + dlib's 68-point fit on the HOG box the five points predict.

    Faces are tagged ``cnn``; ``Face.extra`` says which detector found them (``hog`` for the
    central first look, ``mtcnn``) and holds MTCNN's own box and five points.
    """

    name = "cnn"
    checked = True  # returns plausible faces only

    def __init__(self, first_look: bool = True) -> None:
        self.dlib: DlibBackend = get_detector("dlib")
        self.mtcnn = get_mtcnn()
        # the HOG detector's cheap looks for one-subject photos: the central crop, then one
        # search of the whole frame without upsampling (~5 ms at 224 px, half of MTCNN's cost)
        self.first_look = first_look
        self.plain_look = first_look

    def detect(self, img: np.ndarray, select: Select = "all") -> FaceList:
        return self.detect_many([img], select)[0]

    def central_look(self, img: np.ndarray) -> Detections:
        """O-Net's best face among square boxes about the frame's centre (``CENTRAL_*``), or
        none when its score is under ``CENTRAL_SCORE`` or the face is turned beyond
        ``CENTRAL_MAX_YAW``."""
        h, w = img.shape[:2]
        short = min(h, w)
        cand = np.array([[w / 2 - f * short / 2, h / 2 + dy * short - f * short / 2,
                          w / 2 + f * short / 2, h / 2 + dy * short + f * short / 2, 1.0]
                         for f in CENTRAL_SIDES for dy in CENTRAL_SHIFTS])
        det = self.mtcnn.verify(img, cand, CENTRAL_SCORE)
        if not len(det):
            return det
        k = int(np.argmax(det.scores))
        if abs(yaw_from_points(det.points[k])) > CENTRAL_MAX_YAW:
            return Detections(det.boxes[:0], det.scores[:0], det.points[:0])
        return Detections(det.boxes[k : k + 1], det.scores[k : k + 1], det.points[k : k + 1])

    def mtcnn_candidates(self, img: np.ndarray, select: Select) -> tuple[list[tuple], int]:
        """(box, score, extra) candidates in HOG-box convention, and how many MTCNN faces were
        left out as profiles."""
        rgb = img if img.ndim == 3 else cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        h, w = rgb.shape[:2]
        s = min(1.0, MAX_SIDE / max(h, w))
        work = rgb if s == 1.0 else cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        mf = min_face(work.shape, select)
        det: Detections = self.mtcnn.detect(work, mf)
        pad, look = 0, "search"
        if not len(det):
            # a face that fills a tight crop runs off the frame, and MTCNN's windows with it:
            # look again with the edges extended, then at the mirror image of that (the
            # networks are not exactly symmetric: a face turned one way is found more easily)
            pad = int(PAD * max(work.shape[:2]))
            padded = cv2.copyMakeBorder(work, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            det = self.mtcnn.detect(padded, mf)
            if not len(det):
                det = mirrored(self.mtcnn.detect(np.ascontiguousarray(padded[:, ::-1]), mf), padded.shape[1])
            if not len(det):
                pad, look = 0, "central"
                det = self.central_look(work)
        out, profiles = [], 0
        for box, score, pts in zip(det.boxes - pad, det.scores, det.points - pad):
            pts = pts / s
            yaw = yaw_from_points(pts)
            if abs(yaw) > MAX_YAW:
                profiles += 1
                continue
            extra = {"detector": "mtcnn", "look": look, "mtcnn_box": [float(v) / s for v in box],
                     "five_points": np.round(pts, 2).tolist(), "yaw5": round(yaw, 1)}
            out.append((hog_box(pts), float(score), extra))
        return out, profiles

    def detect_many(self, imgs: Sequence[np.ndarray], select: Select = "all") -> list[FaceList]:
        """Faces of each image (RGB preferred: MTCNN sees colour; grayscale works), with every
        landmark fit of a stage run as one batch."""
        grays = [to_gray(im) for im in imgs]
        result: list[FaceList | None] = [None] * len(imgs)
        if select != "all" and self.first_look:
            fast = [self.dlib._fast_boxes(g) if min(g.shape) >= 160 else [] for g in grays]
            found = self.dlib._fit_faces(grays, fast)
            for i, faces in enumerate(found):
                if faces:
                    for f in faces:
                        f.backend = self.name
                        f.extra["detector"] = "hog"
                    result[i] = FaceList(faces)
            if self.plain_look:
                left = [i for i, r in enumerate(result) if r is None]
                found = self.dlib._fit_faces([grays[i] for i in left], [self.dlib._plain_boxes(grays[i]) for i in left])
                for i, faces in zip(left, found):
                    if faces:
                        for f in faces:
                            f.backend = self.name
                            f.extra["detector"] = "hog"
                        result[i] = FaceList(faces)
        rest = [i for i, r in enumerate(result) if r is None]
        cands, profiles = {}, {}
        for i in rest:
            cands[i], profiles[i] = self.mtcnn_candidates(imgs[i], select)
        flat = [(i, c) for i in rest for c in cands[i]]
        lms = self.dlib.fit_many([grays[i] for i, _ in flat], [c[0] for _, c in flat])
        faces_of: dict[int, list[Face]] = {i: [] for i in rest}
        rejected: dict[int, int] = {i: 0 for i in rest}
        for (i, (box, score, extra)), lm in zip(flat, lms):
            face = make_face(lm, box, score, grays[i].shape, self.name)
            face.extra.update(extra)
            if extra["look"] == "central" and five_point_disagreement(lm, np.array(extra["five_points"])) > CENTRAL_MAX_DISAGREE:
                continue  # the central look's guess is not confirmed: still no face found
            if plausible(face, grays[i].shape):
                faces_of[i].append(face)
            else:
                rejected[i] += 1
        for i in rest:
            reason = None
            if not faces_of[i]:
                reason = REASON_PROFILE if profiles[i] else REASON_IMPLAUSIBLE if rejected[i] else REASON_NO_FACE
            result[i] = FaceList(faces_of[i], reason=reason)
        return result  # type: ignore[return-value]
