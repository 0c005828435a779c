"""Landmark backends behind one interface: 68 iBUG points, a box, a score and the head pose.

Backends (``BACKENDS``, the one list every command's ``--backend`` offers):
- ``auto`` (default everywhere): ``aligned`` for ArcFace-aligned crops (square, <= 128 px),
  ``cnn`` for photos (:func:`resolve_backend`).
- ``cnn``: MTCNN face detector + dlib's 68-point model fitted on the HOG box MTCNN's five points
  predict, after the HOG detector's cheap central look for one-subject photos
  (:mod:`maskgen.masks.cnn`). Recall nearly equal across skin tones, genders and ages.
- ``dlib``: the HOG detector + 68-point shape predictor from ``face-recognition-models`` (the
  default before ``cnn``; misses about a quarter of FairFace's faces, unevenly across groups).
- ``aligned``: no detection; a 68-point predictor is fitted inside the known face box of an
  ArcFace-aligned crop (detectors miss faces that fill the frame): maskgen's compact model
  (distilled locally from dlib's by ``maskgen landmarks-model``) when built, else dlib's own.
  ``aligned-full`` always fits dlib's model.
- ``fan``: ``face-alignment`` (FAN), only when the package and its cached weights exist.
- caller-supplied landmarks: :func:`faces_from_landmarks`, no detection at all.

Every face passes a plausibility check (rigid-head reprojection, eye/mouth order, size) so
that no mask is pasted on a false detection. An image without a face says why
(:class:`FaceList` ``.reason``: no face, implausible landmarks, or a profile beyond the
68-point model).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import cv2
import numpy as np

from maskgen.masks.pose import MAX_REPROJECTION, estimate_pose, mean_shape_2d

Select = Literal["all", "largest", "center"]
# The landmark backends every command offers (``--backend``), in help order; "auto" resolves per
# image (resolve_backend). Old option names of the same choice: --detector (build), --landmarks
# (eval).
BACKENDS = ("auto", "cnn", "dlib", "aligned", "aligned-full", "fan")
DEFAULT_BACKEND = "auto"
# Largest square crop that "auto" treats as ArcFace-aligned (insightface releases are 112 px).
ALIGNED_MAX_SIDE = 128

# Why an image has no face (FaceList.reason).
REASON_NO_FACE = "no face detected"
REASON_IMPLAUSIBLE = "no plausible landmarks"
REASON_PROFILE = "profile face (beyond the 68-point model's |yaw| 60 deg)"

# Face box of the dlib HOG detector in a 112x112 ArcFace crop, measured on 300 LFW faces
# (mean of detector boxes mapped through each face's alignment).
ALIGNED_BOX_112 = (14.3, 26.3, 101.2, 115.8)
# dlib's HOG window is 80 px; the fast path shrinks the central crop to this side.
_FAST_SIDE = 112
_FAST_CROP = 0.64  # fraction of the short side kept by the central crop
_MAX_DETECT_SIDE = 1024
# A HOG score this close to the detector's threshold needs a good rigid fit to be believed
# (on 400 LFW photos true faces reproject at a median of 0.028, 99th percentile 0.053).
WEAK_SCORE = 0.05
WEAK_REPROJECTION = 0.045
# Detections scoring below this are searched again around their box (see DlibBackend.redetect).
VERIFY_SCORE = 0.1


class FaceList(list):
    """The faces of one image (a list), and when it is empty, ``reason``: why (one of the
    ``REASON_*`` strings)."""

    def __init__(self, faces=(), reason: str | None = None) -> None:
        super().__init__(faces)
        self.reason = None if self else (reason or REASON_NO_FACE)

    def __reduce__(self):
        return (FaceList, (list(self), self.reason))


def resolve_backend(backend: str, shape: tuple[int, ...]) -> str:
    """The backend that runs on an image of ``shape``: ``auto`` fits ArcFace-aligned crops
    (square, <= ALIGNED_MAX_SIDE px: insightface releases) in their known face box, since
    detectors miss faces that fill the frame, and detects faces in anything else with ``cnn``.
    Other names are returned as they are (after a check)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown landmark backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    h, w = shape[:2]
    return "aligned" if h == w and h <= ALIGNED_MAX_SIDE else "cnn"


# Bumped when a backend's results change, so that caches of the old results are not reused.
BACKEND_VERSIONS = {"cnn": "cnn2"}


def backend_tag(backend: str) -> str:
    """A name for what ``backend`` computes, for landmark caches: ``auto`` names the backends it
    resolves to (``auto:cnn2``) and every backend fitted by maskgen's compact aligned-crop model
    says so (``+compact``), so results of different detectors or models never mix in a cache."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown landmark backend {backend!r}; choose from {', '.join(BACKENDS)}")
    tag = f"auto:{BACKEND_VERSIONS['cnn']}" if backend == "auto" else BACKEND_VERSIONS.get(backend, backend)
    if backend in ("auto", "aligned") and aligned_model_path().is_file():
        tag += "+compact"
    return tag


@dataclass
class Face:
    """One face: landmarks (68, 2) float32 in image pixels, box (x0, y0, x1, y1), detector
    score, head pose (yaw, pitch, roll) in degrees, and how it was found."""

    landmarks: np.ndarray
    box: tuple[float, float, float, float]
    score: float
    pose: tuple[float, float, float] = (0.0, 0.0, 0.0)
    reprojection: float = 0.0
    backend: str = "dlib"
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """A JSON-ready dict (landmarks rounded to 0.01 px)."""
        return {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(float(self.score), 4),
            "pose": {k: round(float(v), 2) for k, v in zip(("yaw", "pitch", "roll"), self.pose)},
            "landmarks": np.round(self.landmarks.astype(np.float64), 2).tolist(),
            "backend": self.backend,
        }


def dlib_model_dir() -> Path:
    """Folder of the dlib model files shipped by the ``face-recognition-models`` package, found
    without importing it (its ``__init__`` needs pkg_resources, which modern setuptools no
    longer ships). The one place every stage finds dlib's ``.dat`` files."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the 'face-recognition-models' package is not installed "
                           "(pip install face-recognition-models)")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def aligned_model_path() -> Path:
    """Where maskgen's compact 68-point model for aligned crops lives once built
    (``maskgen landmarks-model``; distilled locally from dlib's, see maskgen.masks.distill)."""
    from maskgen.data_home import models_home

    return models_home() / "aligned68.dat"


def predictor_path() -> Path:
    """dlib's 68-point shape predictor (from ``face-recognition-models``)."""
    return dlib_model_dir() / "shape_predictor_68_face_landmarks.dat"


def frontal_detector_path() -> Path:
    """Where dlib's HOG frontal face detector is kept in serialized form (one file per dlib
    version, next to maskgen's other local models)."""
    import dlib

    from maskgen.data_home import models_home

    version = "".join(c if c.isalnum() or c in ".-" else "_" for c in str(getattr(dlib, "__version__", "unknown")))
    return models_home() / f"dlib-frontal-face-{version}.svm"


def frontal_detector():
    """dlib's HOG frontal face detector, loaded from its serialized form
    (:func:`frontal_detector_path`: ~3 ms) instead of being built from the copy compiled into
    dlib (``get_frontal_face_detector``: ~0.6 s in every process that detects faces). The file is
    written (atomically) the first time, with its SHA-256 beside it; a file that does not match
    its digest is never loaded (the compiled-in copy is used and the file written again). The
    two give the same detections (tests/test_landmarks.py)."""
    import hashlib

    import dlib

    path = frontal_detector_path()
    digest_file = path.with_name(path.name + ".sha256")
    try:
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() == digest_file.read_text(encoding="ascii").strip():
            return dlib.fhog_object_detector(str(path))
    except (OSError, RuntimeError, ValueError):
        pass
    det = dlib.get_frontal_face_detector()
    _save_detector(det, path, digest_file)
    return det


def _save_detector(det, path: Path, digest_file: Path) -> None:
    """Serialize ``det`` to ``path`` and its SHA-256 to ``digest_file``, each written whole
    (:mod:`maskgen.fsio`; the digest last). A models folder that cannot be written only costs
    the next process the slow build again."""
    import hashlib

    from maskgen.fsio import atomic_path, write_atomic

    try:
        with atomic_path(path) as tmp:
            det.save(str(tmp))
            digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        write_atomic(digest_file, digest + "\n", encoding="ascii")
    except (OSError, RuntimeError):
        pass


class DlibBackend:
    """HOG face detector + 68-point shape predictor (loaded once per process, when first used).

    One face is fitted by dlib's predictor; many faces at once (:meth:`detect_many`, the build's
    landmarks stage) by the same model evaluated as a batch (:mod:`maskgen.masks.ert`): the same
    integer landmarks, several times faster.
    """

    name = "dlib"
    checked = True  # returns plausible faces only

    def __init__(self) -> None:
        import dlib

        self._dlib = dlib
        self.detector = frontal_detector()
        self._predictor = None
        self._batch_model = None

    @property
    def predictor(self):
        """dlib's own predictor (~100 MB; loaded on first use)."""
        if self._predictor is None:
            with _LOCK:
                if self._predictor is None:
                    self._predictor = self._dlib.shape_predictor(str(predictor_path()))
        return self._predictor

    @property
    def batch_model(self):
        """The batched form of the same model (:func:`maskgen.masks.ert.load_shape_model`)."""
        if self._batch_model is None:
            from maskgen.masks.ert import load_shape_model

            self._batch_model = load_shape_model(predictor_path())
        return self._batch_model

    def fit(self, gray: np.ndarray, box: Sequence[float]) -> np.ndarray:
        """68 landmarks fitted inside ``box`` (x0, y0, x1, y1) of a grayscale image."""
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        return shape_points(self.predictor(gray, self._dlib.rectangle(x0, y0, x1, y1)))

    def fit_many(self, grays: Sequence[np.ndarray], boxes: Sequence[Sequence[float]]) -> list[np.ndarray]:
        """:meth:`fit` of ``boxes[i]`` in ``grays[i]`` for every i, evaluated as one batch."""
        if not boxes:
            return []
        rects = [tuple(int(round(v)) for v in box) for box in boxes]
        return list(self.batch_model.fit(grays, rects))

    def _run(self, gray: np.ndarray, scale: float, offset: tuple[int, int], upsample: int) -> list[tuple]:
        rects, scores, _ = self.detector.run(gray, upsample, 0.0)
        ox, oy = offset
        return [
            ((r.left() / scale + ox, r.top() / scale + oy, r.right() / scale + ox, r.bottom() / scale + oy), float(s))
            for r, s in zip(rects, scores)
        ]

    def _fast_boxes(self, gray: np.ndarray) -> list[tuple]:
        """Portrait-style photos have the subject in the centre: search a shrunk central crop."""
        h, w = gray.shape
        side = int(min(h, w) * _FAST_CROP)
        y0, x0 = (h - side) // 2, (w - side) // 2
        crop = gray[y0 : y0 + side, x0 : x0 + side]
        s = _FAST_SIDE / side
        small = cv2.resize(crop, (_FAST_SIDE, _FAST_SIDE), interpolation=cv2.INTER_AREA)
        found = self._run(small, s, (x0, y0), 0)
        return [f for f in found if _inside_central(f[0], w, h)]

    def _frame(self, gray: np.ndarray) -> tuple[np.ndarray, float]:
        """The frame the full search runs on (long side at most _MAX_DETECT_SIDE) and its scale."""
        h, w = gray.shape
        s = min(1.0, _MAX_DETECT_SIDE / max(h, w))
        return (gray if s == 1.0 else cv2.resize(gray, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)), s

    def _plain_boxes(self, gray: np.ndarray) -> list[tuple]:
        """One HOG search of the whole frame, no upsampling (the first step of _full_boxes)."""
        g, s = self._frame(gray)
        return self._run(g, s, (0, 0), 0)

    def _full_boxes(self, gray: np.ndarray) -> list[tuple]:
        g, s = self._frame(gray)
        found = self._run(g, s, (0, 0), 0)
        if not found and max(g.shape) <= 640:
            found = self._run(g, s, (0, 0), 1)  # small faces: one 2x upsampling
        if not found:
            # a face that fills the frame (tight crops) leaves the detector no margin: pad it
            p = int(0.3 * max(g.shape))
            gp = cv2.copyMakeBorder(g, p, p, p, p, cv2.BORDER_REPLICATE)
            s2 = min(1.0, 320.0 / max(gp.shape))
            gs = cv2.resize(gp, None, fx=s2, fy=s2, interpolation=cv2.INTER_AREA) if s2 < 1.0 else gp
            found = [((b[0] / s - p / s, b[1] / s - p / s, b[2] / s - p / s, b[3] / s - p / s), sc)
                     for b, sc in self._run(gs, s2, (0, 0), 0)]
        return found

    def boxes(self, gray: np.ndarray, select: Select) -> list[tuple]:
        """Candidate (box, score) pairs, trying the cheap central search first."""
        if select != "all" and min(gray.shape) >= 160:
            found = self._fast_boxes(gray)
            if found:
                return found
        return self._full_boxes(gray)

    def _faces(self, img: np.ndarray, gray: np.ndarray, boxes: list[tuple], lms: Sequence[np.ndarray] | None = None) -> FaceList:
        """Plausible faces among the candidate ``boxes`` (landmarks ``lms`` when already fitted)."""
        out = FaceList(reason=REASON_IMPLAUSIBLE if boxes else REASON_NO_FACE)
        for k, (box, score) in enumerate(boxes):
            lm = self.fit(gray, box) if lms is None else lms[k]
            face = make_face(lm, box, score, img.shape[:2], self.name)
            if plausible(face, img.shape[:2]) and (score >= VERIFY_SCORE or self.redetect(gray, box) > 0.0):
                out.append(face)
                out.reason = None
        return out

    def redetect(self, gray: np.ndarray, box) -> float:
        """Best HOG score when the box's surroundings are searched again at two canonical scales.

        A real face is found again; texture that crossed the threshold once (a suit, foliage)
        rarely is, so weak detections must pass this second look.
        """
        x0, y0, x1, y1 = box
        bw, bh = x1 - x0, y1 - y0
        h, w = gray.shape
        crop = gray[int(max(0, y0 - bh / 2)) : int(min(h, y1 + bh / 2)), int(max(0, x0 - bw / 2)) : int(min(w, x1 + bw / 2))]
        best = -1.0
        for target in (100.0, 125.0):
            s = target / max(bw, 1.0)
            c = cv2.resize(crop, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
            if min(c.shape) < 80:
                continue
            _, scores, _ = self.detector.run(c, 0, -0.3)
            if len(scores):
                best = max(best, float(max(scores)))
        return best

    def detect(self, img: np.ndarray, select: Select = "all") -> FaceList:
        """Plausible faces; the full frame is searched when the central fast path finds none."""
        gray = to_gray(img)
        if select != "all" and min(gray.shape) >= 160:
            faces = self._faces(img, gray, self._fast_boxes(gray))
            if faces:
                return faces
        return self._faces(img, gray, self._full_boxes(gray))

    def detect_many(self, imgs: Sequence[np.ndarray], select: Select = "all") -> list[FaceList]:
        """``[self.detect(img, select) for img in imgs]``, with the landmark fits batched: every
        image's central fast-path boxes in one batch, then the full-frame boxes of the images
        left without a face in another. ``imgs`` may be RGB or already grayscale."""
        grays = [to_gray(im) for im in imgs]
        fast = select != "all"
        faces = self._fit_faces(grays, [self._fast_boxes(g) if fast and min(g.shape) >= 160 else [] for g in grays])
        rest = [i for i, f in enumerate(faces) if not f]
        full = self._fit_faces([grays[i] for i in rest], [self._full_boxes(grays[i]) for i in rest])
        for i, f in zip(rest, full):
            faces[i] = f
        return faces

    def _fit_faces(self, grays: list[np.ndarray], boxes: list[list[tuple]]) -> list[FaceList]:
        """Plausible faces among each image's candidate boxes; all the fits as one batch."""
        lms = self.fit_many([g for g, bx in zip(grays, boxes) for _ in bx], [box for bx in boxes for box, _ in bx])
        out, k = [], 0
        for g, bx in zip(grays, boxes):
            out.append(self._faces(g, g, bx, lms[k : k + len(bx)]))
            k += len(bx)
        return out


class AlignedBackend:
    """Landmarks for ArcFace-aligned crops: a predictor fitted in the known face box, no detection.

    ``model="compact"``: maskgen's compact 68-point cascade distilled for aligned crops
    (``maskgen landmarks-model`` builds it locally; ~10x faster than dlib's); ``"full"``: dlib's
    68-point model in the same box; ``"auto"`` (backend ``aligned``): the compact model when it
    has been built, else dlib's. Faces are tagged ``aligned`` (compact) or ``aligned-full``.
    """

    checked = True  # returns plausible faces only

    def __init__(self, model: str = "auto", path: str | os.PathLike | None = None) -> None:
        import dlib

        self._dlib = dlib
        path = Path(path) if path is not None else aligned_model_path()
        if model == "auto":
            model = "compact" if path.is_file() else "full"
        self.model = model
        if model == "compact":
            if not path.is_file():
                raise RuntimeError(f"no compact aligned-crop model at {path}: build it with `maskgen landmarks-model`")
            self.name = "aligned"
            self.predictor = dlib.shape_predictor(str(path))
        elif model == "full":
            self.name = "aligned-full"
            self.predictor = get_detector("dlib").predictor
        else:
            raise ValueError(f"model must be 'auto', 'compact' or 'full', got {model!r}")

    def fit(self, gray: np.ndarray, box: Sequence[float]) -> np.ndarray:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        return shape_points(self.predictor(gray, self._dlib.rectangle(x0, y0, x1, y1)))

    def detect(self, img: np.ndarray, select: Select = "all") -> list[Face]:
        h, w = img.shape[:2]
        sx, sy = w / 112.0, h / 112.0
        b = ALIGNED_BOX_112
        box = (b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy)
        lm = self.fit(to_gray(img), box)
        face = make_face(lm, box, 1.0, (h, w), self.name)
        if not plausible(face, (h, w)) or not _near_aligned(lm, w, h):
            # a poor fit on an aligned crop: the alignment itself places the face, so the mean
            # shape is the best estimate (recorded as such)
            mean = mean_shape_2d(112) * np.array([sx, sy], np.float32)
            face = make_face(mean, box, 0.0, (h, w), "aligned-mean")
            if not plausible(face, (h, w)):
                return []
        return [face]


def shape_points(shape) -> np.ndarray:
    """(N, 2) float32 points of a dlib ``full_object_detection``.

    dlib's Python points print as ``points[(x, y), ...]``: parsing that one string is ~5x
    faster than reading 68 point objects attribute by attribute (the difference is a quarter of
    an aligned-crop landmark fit). Any other format falls back to the attribute loop.
    """
    text = str(shape.parts())
    n = shape.num_parts
    if text.startswith("points[") and text.endswith("]"):
        try:
            vals = np.fromiter(map(int, text[7:-1].translate(_POINT_PUNCT).split()), np.float32, 2 * n)
            return vals.reshape(n, 2)
        except ValueError:
            pass
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32).reshape(n, 2)


_POINT_PUNCT = str.maketrans("(),", "   ")


class FanBackend:
    """face-alignment (FAN) 2D landmarks; needs the package and its weights already cached."""

    name = "fan"

    def __init__(self) -> None:
        if importlib.util.find_spec("face_alignment") is None:
            raise RuntimeError("backend 'fan' needs the face-alignment package (pip install face-alignment)")
        if not fan_weights_cached():
            raise RuntimeError("backend 'fan' needs its weights in the torch hub cache; nothing is downloaded")
        import face_alignment

        lt = getattr(face_alignment.LandmarksType, "TWO_D", None) or face_alignment.LandmarksType._2D
        self.fa = face_alignment.FaceAlignment(lt, device="cpu", face_detector="sfd")
        self.dlib = get_detector("dlib")

    def detect(self, img: np.ndarray, select: Select = "all") -> list[Face]:
        gray = to_gray(img)
        boxes = self.dlib.boxes(gray, select)
        if not boxes:
            return []
        bb = [np.array([*b, s], np.float32) for b, s in boxes]
        preds = self.fa.get_landmarks_from_image(img, detected_faces=bb) or []
        return [make_face(np.asarray(p, np.float32)[:, :2], b, s, img.shape[:2], self.name) for p, (b, s) in zip(preds, boxes)]


def fan_weights_cached() -> bool:
    """Whether FAN's 2D weights are in the torch hub checkpoint cache."""
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    return hub.is_dir() and any(p.name.startswith("2DFAN4") for p in hub.iterdir())


_DETECTORS: dict[str, object] = {}
_LOCK = threading.RLock()  # re-entrant: the aligned and fan backends build the dlib one inside


def get_detector(backend: str = "dlib"):
    """The process-wide detector of ``backend`` (models load once per process / worker)."""
    det = _DETECTORS.get(backend)
    if det is not None:
        return det
    with _LOCK:
        det = _DETECTORS.get(backend)
        if det is None:
            make = {
                "cnn": _cnn_backend,
                "dlib": DlibBackend,
                "aligned": AlignedBackend,
                "aligned-full": lambda: AlignedBackend("full"),
                "fan": FanBackend,
            }.get(backend)
            if make is None:
                raise ValueError(f"unknown landmark backend {backend!r}; choose from {', '.join(BACKENDS)}"
                                 + (" (auto resolves per image: resolve_backend)" if backend == "auto" else ""))
            det = make()
            _DETECTORS[backend] = det
    return det


def _cnn_backend():
    from maskgen.masks.cnn import CnnBackend

    return CnnBackend()


def detect_faces(img: np.ndarray, backend: str = DEFAULT_BACKEND, select: Select = "all") -> FaceList:
    """Faces of an RGB uint8 image, implausible detections removed, then ``select`` applied;
    when none is left, ``.reason`` says why."""
    det = get_detector(resolve_backend(backend, img.shape))
    faces = det.detect(img, select)
    reason = getattr(faces, "reason", None)
    if not getattr(det, "checked", False):  # a backend whose faces are not checked yet (fan)
        kept = [f for f in faces if plausible(f, img.shape[:2])]
        if faces and not kept:
            reason = REASON_IMPLAUSIBLE
        faces = kept
    return FaceList(select_faces(list(faces), img.shape[:2], select), reason)


def detect_faces_many(imgs: Sequence[np.ndarray], backend: str = DEFAULT_BACKEND, select: Select = "all") -> list[FaceList]:
    """:func:`detect_faces` of each image; the ``cnn`` and ``dlib`` backends fit all their
    landmarks as batches (the same landmarks, several times faster per face). With ``auto``
    each image goes to the backend it resolves to."""
    names = [resolve_backend(backend, im.shape) for im in imgs]
    out: list[FaceList | None] = [None] * len(imgs)
    for name in dict.fromkeys(names):
        idx = [i for i, n in enumerate(names) if n == name]
        det = get_detector(name)
        if hasattr(det, "detect_many"):
            found = det.detect_many([imgs[i] for i in idx], select)
            for i, f in zip(idx, found):
                out[i] = FaceList(select_faces(list(f), imgs[i].shape[:2], select), getattr(f, "reason", None))
        else:
            for i in idx:
                out[i] = detect_faces(imgs[i], name, select)
    return out  # type: ignore[return-value]


def faces_from_landmarks(landmarks: np.ndarray | Sequence[np.ndarray], image_shape: tuple[int, ...]) -> list[Face]:
    """Faces from caller-supplied 68-point landmarks (e.g. a dataset's annotations): no detection."""
    arr = np.asarray(landmarks, np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (68, 2):
        raise ValueError(f"landmarks must be (68, 2) or (N, 68, 2), got {arr.shape}")
    out = []
    for lm in arr:
        box = (float(lm[:, 0].min()), float(lm[:, 1].min()), float(lm[:, 0].max()), float(lm[:, 1].max()))
        out.append(make_face(lm, box, 1.0, image_shape[:2], "supplied"))
    return out


def select_faces(faces: list[Face], image_shape: tuple[int, ...], select: Select) -> list[Face]:
    if not faces or select == "all":
        return faces
    if select == "largest":
        return [max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))]
    if select == "center":
        h, w = image_shape[:2]
        return [min(faces, key=lambda f: np.hypot((f.box[0] + f.box[2]) / 2 - w / 2, (f.box[1] + f.box[3]) / 2 - h / 2))]
    raise ValueError(f"select must be 'all', 'largest' or 'center', got {select!r}")


def make_face(lm: np.ndarray, box, score: float, image_shape: tuple[int, int], backend: str) -> Face:
    pose, err = estimate_pose(lm, image_shape)
    return Face(
        landmarks=np.ascontiguousarray(lm, dtype=np.float32),
        box=tuple(float(v) for v in box),
        score=float(score),
        pose=pose,
        reprojection=err,
        backend=backend,
    )


def plausible(face: Face, image_shape: tuple[int, int]) -> bool:
    """Reject landmark sets that are not a face: bad rigid fit, wrong part order, tiny size."""
    lm = face.landmarks
    if not np.isfinite(lm).all():
        return False
    if face.reprojection > MAX_REPROJECTION:
        return False
    if face.score < WEAK_SCORE and face.reprojection > WEAK_REPROJECTION:
        return False  # barely a detection and not a convincing rigid head either
    # scalar math on the few points needed (NumPy calls on 2-vectors cost more than the sums)
    pts = lm[_PLAUSIBLE_POINTS].astype(np.float64).tolist()
    (exl, eyl), (exr, eyr) = _eye_centres(lm)
    dx, dy = exr - exl, eyr - eyl
    iod = math.hypot(dx, dy)
    if iod < 6.0:
        return False
    # face "up" direction from the eye line; nose and mouth must lie below the eyes, in order
    downx, downy = -dy / iod, dx / iod
    cx, cy = (exl + exr) / 2, (eyl + eyr) / 2
    nose, mouth, chin = ((p[0] - cx) * downx + (p[1] - cy) * downy for p in pts)
    # (a face looking up brings the nose tip up to the eye line, never far above it)
    if not (-0.15 * iod < nose < mouth < chin and mouth > 0.5 * iod):
        return False
    yaw, pitch, roll = face.pose
    return abs(yaw) <= 70 and abs(pitch) <= 60


_PLAUSIBLE_POINTS = [30, 62, 8]  # nose tip, inner mouth top, chin


def _eye_centres(lm: np.ndarray) -> list[list[float]]:
    """Mean of the left (36-41) and right (42-47) eye landmarks, as Python floats."""
    return (lm[36:48].astype(np.float64).reshape(2, 6, 2).sum(1) / 6.0).tolist()


def to_gray(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return img
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def _inside_central(box, w: int, h: int) -> bool:
    """A fast-path box must not touch the crop border (else the full frame decides)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return abs(cx - w / 2) < 0.2 * w and abs(cy - h / 2) < 0.2 * h


def _near_aligned(lm: np.ndarray, w: int, h: int) -> bool:
    """Fitted eye centres of an aligned crop must sit near the ArcFace template's."""
    diff = lm[_NEAR_POINTS] - _aligned_ref(w, h)
    d = float(np.sqrt((diff * diff).sum(1)).mean())
    return d < 0.12 * w


_NEAR_POINTS = [36, 39, 42, 45, 30, 48, 54]


@functools.lru_cache(maxsize=16)
def _aligned_ref(w: int, h: int) -> np.ndarray:
    """Template positions of the _NEAR_POINTS in a w x h aligned crop (cached, read-only)."""
    ref = (mean_shape_2d(112) * np.array([w / 112.0, h / 112.0], np.float32))[_NEAR_POINTS]
    ref.flags.writeable = False
    return ref
