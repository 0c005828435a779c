"""dlib's shape predictor (an ensemble of regression trees, ERT) evaluated for many faces at once.

dlib fits one face at a time: for each of the cascade's levels it reads ~500 feature pixels,
walks ~500 depth-4 trees and adds one 136-float leaf per tree to the shape. The leaves of the
68-point model fill ~65 MB, so every fit reads ~4 MB of them at random and stalls on memory.
Here a batch of faces goes through the cascade level by level, and within a level tree by tree:
each tree's 16 leaves (8.7 KB) are read once for the whole batch and stay in the L1 cache, the
shapes of the batch stay in L2. The arithmetic is dlib's, in dlib's order (float32 features and
shape, double image transform, leaves added tree after tree, points rounded as dlib rounds),
so the landmarks are the same integers dlib returns; tests check it against dlib itself.

The cascade runs compiled (:mod:`maskgen.masks.ert_kernel`, Numba; ~3x faster than NumPy's
per-tree calls, same bits: tests compare the two) when Numba is installed, else in NumPy; the
environment variable ``MASKGEN_ERT_NUMPY=1`` selects the NumPy form. The kernel is compiled
once per machine and maskgen version (~9 s, by the first fit of a process that finds no cache)
and then loaded from Numba's disk cache by every process (~0.6 s).

The model comes from the same ``.dat`` file dlib reads. Its serialisation (dlib's compact
integers and floats as mantissa/exponent pairs) is parsed once per machine (~12 s in Python)
into plain arrays kept next to maskgen's other local models (``maskgen.data_home.models_home``);
later processes map them from disk, so the workers of a build share one copy in memory.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

CACHE_FORMAT = 1
_ARRAYS = ("initial", "idx1", "idx2", "thresh", "leaves", "anchors", "deltas")
# A batch's images are copied into one buffer; this many pixels at most (plus one image).
MAX_BATCH_PIXELS = 32 * 1024 * 1024
# From this many faces on, leaves are added by a loop over the trees (see ShapeModel._add_leaves).
TREE_LOOP_MIN_FACES = 96


class ModelFormatError(ValueError):
    """The file is not a dlib shape predictor this module can read."""


def parse_dlib_shape_predictor(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a dlib ``shape_predictor`` file (format version 1).

    Layout: version, initial shape (matrix), forests (vector of levels, each a vector of trees;
    a tree is its splits (idx1, idx2, thresh) then its leaf vectors), anchor indices and deltas
    of the feature pixels per level. Integers are dlib's packed form (a control byte holding the
    byte count and the sign, then little-endian bytes); floats are a packed mantissa and a packed
    exponent.
    """
    buf = Path(path).read_bytes()
    pos = 0
    from_bytes = int.from_bytes
    ldexp = math.ldexp

    def rint() -> int:
        nonlocal pos
        c = buf[pos]
        n = c & 0x0F
        if n > 8 or c & 0x70:
            raise ModelFormatError(f"bad integer control byte {c:#x} at offset {pos}")
        v = from_bytes(buf[pos + 1 : pos + 1 + n], "little")
        pos += 1 + n
        return -v if c & 0x80 else v

    def rfloats(k: int) -> list[float]:
        """``k`` floats, each a packed mantissa and a packed exponent: ``rint`` twice, written
        out inline (this loop decodes ~33 M integers of the 68-point model; calls would make
        the one-time parse ~1.5x slower)."""
        nonlocal pos
        b, p = buf, pos
        out = [0.0] * k
        for i in range(k):
            c = b[p]
            n = c & 0x0F
            m = from_bytes(b[p + 1 : p + 1 + n], "little")
            p += 1 + n
            if c & 0x80:
                m = -m
            c = b[p]
            n = c & 0x0F
            e = from_bytes(b[p + 1 : p + 1 + n], "little")
            p += 1 + n
            if c & 0x80:
                e = -e
            if e > 1024:  # dlib's codes for inf / nan (never in a trained model), or garbage
                raise ModelFormatError(f"non-finite float at offset {p}")
            out[i] = ldexp(m, e)
        pos = p
        return out

    def rmatrix() -> list[float]:
        nr, nc = abs(rint()), abs(rint())
        return rfloats(nr * nc)

    # the bulk (leaf values, ~16 M floats for the 68-point model) goes straight into compact
    # arrays: as Python lists it would take ~0.9 GB while parsing
    leaves, idx1, idx2, thresh = array("f"), array("q"), array("q"), array("f")
    shape = None  # (levels, trees, splits, leaf length): every tree must have the same
    try:
        version = rint()
        if version != 1:
            raise ModelFormatError(f"shape predictor format version {version}, expected 1")
        initial = np.array(rmatrix(), np.float32)
        n_levels = rint()
        for _ in range(n_levels):
            n_trees = rint()
            for _ in range(n_trees):
                n_splits = rint()
                for _ in range(n_splits):
                    idx1.append(rint())
                    idx2.append(rint())
                    thresh.append(rfloats(1)[0])
                n_leaves = rint()
                if n_leaves != n_splits + 1:
                    raise ModelFormatError("a tree must be complete: leaves == splits + 1")
                for _ in range(n_leaves):
                    values = rmatrix()
                    if shape is None:
                        shape = (n_levels, n_trees, n_splits, len(values))
                    if (n_trees, n_splits, len(values)) != shape[1:]:
                        raise ModelFormatError(f"{path}: levels or trees of different shapes are not supported")
                    leaves.extend(values)
        anchors = [[rint() for _ in range(rint())] for _ in range(rint())]
        deltas = [rfloats(2 * rint()) for _ in range(rint())]
    except IndexError:
        raise ModelFormatError(f"{path}: truncated shape predictor file") from None
    if pos != len(buf):
        raise ModelFormatError(f"{path}: {len(buf) - pos} bytes after the model")
    if shape is None:
        raise ModelFormatError(f"{path}: a model without trees")
    levels, trees, splits, width = shape
    try:
        arrays = {
            "initial": initial,
            "idx1": np.frombuffer(idx1, np.int64).astype(np.int32).reshape(levels, trees, splits),
            "idx2": np.frombuffer(idx2, np.int64).astype(np.int32).reshape(levels, trees, splits),
            "thresh": np.frombuffer(thresh, np.float32).copy().reshape(levels, trees, splits),
            "leaves": np.frombuffer(leaves, np.float32).copy().reshape(levels, trees, splits + 1, width),
            "anchors": np.array(anchors, np.int32),
            "deltas": np.array(deltas, np.float32).reshape(len(deltas), -1, 2),
        }
    except ValueError:  # ragged feature tables
        raise ModelFormatError(f"{path}: levels of different shapes are not supported") from None
    _check(arrays)
    return arrays


def _check(a: dict[str, np.ndarray]) -> None:
    levels, trees, splits = a["idx1"].shape
    n_feat = a["anchors"].shape[1]
    if a["leaves"].shape[:3] != (levels, trees, splits + 1) or a["leaves"].shape[3] != a["initial"].size:
        raise ModelFormatError("leaf shapes do not match the trees")
    if (splits + 1) & splits or a["initial"].size % 2:
        raise ModelFormatError("trees must be complete binary trees over 2-D points")
    if a["deltas"].shape != (levels, n_feat, 2) or a["anchors"].shape[0] != levels:
        raise ModelFormatError("feature pixel tables do not match the levels")
    if max(a["idx1"].max(), a["idx2"].max()) >= n_feat or a["anchors"].max() >= a["initial"].size // 2:
        raise ModelFormatError("index out of range")


@dataclass
class ShapeModel:
    """The arrays of a shape predictor, laid out for :meth:`fit`."""

    initial: np.ndarray  # (2P,) float32: mean shape in box-normalised coordinates
    idx1: np.ndarray  # (L, T, S) int32: split feature indices
    idx2: np.ndarray
    thresh: np.ndarray  # (L, T, S) float32
    leaves: np.ndarray  # (L, T, S + 1, 2P) float32
    anchors: np.ndarray  # (L, F) int32: landmark each feature pixel is placed from
    deltas: np.ndarray  # (L, F, 2) float32: its offset in the initial shape's frame

    def __post_init__(self) -> None:
        levels, trees, splits = self.idx1.shape
        self.depth = int(round(math.log2(splits + 1)))
        self.n_points = self.initial.size // 2
        ref = self.initial.astype(np.float64).reshape(-1, 2)
        self._ref = ref - ref.mean(0)  # centred reference shape for the similarity fit
        self._ref_ss = float((self._ref**2).sum())
        # per level: split tables flattened so that (tree, node) -> tree * S + node
        self._flat = [
            (self.idx1[l].reshape(-1).astype(np.intp), self.idx2[l].reshape(-1).astype(np.intp), self.thresh[l].reshape(-1))
            for l in range(levels)
        ]
        self._anchors = [self.anchors[l].astype(np.intp) for l in range(levels)]
        self._dx = [np.ascontiguousarray(self.deltas[l, :, 0]) for l in range(levels)]
        self._dy = [np.ascontiguousarray(self.deltas[l, :, 1]) for l in range(levels)]
        self._tree_base = (np.arange(trees, dtype=np.intp) * splits)[None, :]

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> "ShapeModel":
        return cls(**{k: a[k] for k in _ARRAYS})

    def fit(self, grays: Sequence[np.ndarray], boxes: Sequence[Sequence[int]]) -> np.ndarray:
        """Landmarks (N, P, 2) float32 (integer-valued, as dlib's points) of face ``i`` fitted
        in the box ``boxes[i]`` = (left, top, right, bottom) (ints, dlib's rectangle) of the
        grayscale uint8 image ``grays[i]``. Same result as dlib's predictor on each face."""
        n = len(boxes)
        if len(grays) != n:
            raise ValueError("one image per box")
        out = np.empty((n, self.n_points, 2), np.float32)
        start, pix = 0, 0
        for i in range(n):  # batches bounded by the pixels they copy
            pix += grays[i].size
            if pix > MAX_BATCH_PIXELS and i > start:
                out[start:i] = self._fit(grays[start:i], boxes[start:i])
                start, pix = i, grays[i].size
        if n > start:
            out[start:] = self._fit(grays[start:], boxes[start:])
        return out

    def _fit(self, grays: Sequence[np.ndarray], boxes: Sequence[Sequence[int]]) -> np.ndarray:
        n = len(grays)
        for g in grays:
            if g.ndim != 2 or g.dtype != np.uint8:
                raise ValueError("images must be 2-D uint8 (grayscale)")
        b = np.asarray(boxes, np.float64).reshape(n, 4)
        shape = self.shapes(grays, b)
        left, top = b[:, 0:1], b[:, 1:2]
        bw, bh = b[:, 2:3] - left, b[:, 3:4] - top  # dlib maps (1, 1) to the bottom-right pixel
        pts = shape.reshape(n, self.n_points, 2).astype(np.float64)
        x = np.floor(left + bw * pts[..., 0] + 0.5)
        y = np.floor(top + bh * pts[..., 1] + 0.5)
        return np.stack([x, y], -1).astype(np.float32)

    def shapes(self, grays: Sequence[np.ndarray], boxes: np.ndarray, compiled: bool | None = None) -> np.ndarray:
        """Float32 shapes (n, 2P) in box-normalised coordinates after the whole cascade, for
        the grayscale uint8 images ``grays`` and float64 ``boxes`` (n, 4). ``compiled``: the
        Numba form (:mod:`maskgen.masks.ert_kernel`, the default when Numba is installed), or
        the NumPy form (False); both give the same bits."""
        n = len(grays)
        heights = np.array([g.shape[0] for g in grays], np.intp)[:, None]
        widths = np.array([g.shape[1] for g in grays], np.intp)[:, None]
        offsets = np.zeros((n, 1), np.intp)
        offsets[1:, 0] = np.cumsum([g.size for g in grays[:-1]])
        pixels = np.concatenate([g.reshape(-1) for g in grays])
        # (the kernel sums as NumPy does for up to 128 points)
        if compiled is None:
            compiled = self.n_points <= 128 and _kernel() is not None
        if compiled:
            kernel = _kernel()
            if kernel is None or self.n_points > 128:
                raise RuntimeError("the compiled shape-predictor cascade needs Numba (pip install numba) "
                                   "and at most 128 points")
            return kernel.cascade(pixels, offsets.ravel(), widths.ravel(), heights.ravel(), np.ascontiguousarray(boxes), self.initial, self.idx1,
                                  self.idx2, self.thresh, self.leaves, self.anchors, self.deltas, self._ref, self._ref_ss)
        left, top = boxes[:, 0:1], boxes[:, 1:2]
        bw, bh = boxes[:, 2:3] - left, boxes[:, 3:4] - top
        trees = self.idx1.shape[1]
        feat_base = (np.arange(n, dtype=np.intp) * self.anchors.shape[1])[:, None]
        shape = np.empty((n, self.initial.size), np.float32)
        shape[:] = self.initial
        for level in range(self.idx1.shape[0]):
            feats = self._features(level, shape, pixels, offsets, widths, heights, left, top, bw, bh)
            i1, i2, th = self._flat[level]
            node = np.zeros((n, trees), np.intp)
            for _ in range(self.depth):  # dlib: left child (2i+1) when f[idx1] - f[idx2] > thresh
                k = self._tree_base + node
                node = 2 * node + 2 - ((feats[feat_base + i1[k]] - feats[feat_base + i2[k]]) > th[k])
            self._add_leaves(level, shape, node - self.idx1.shape[2])
        return shape

    def _add_leaves(self, level: int, shape: np.ndarray, leaf: np.ndarray) -> None:
        """``shape += leaf vector of every tree``, tree after tree (dlib's order, so the float
        sums are dlib's). Large batches loop over the trees (each tree's leaves stay in L1
        across the batch); small ones gather every face's leaves and sum them in order, which
        costs more per face but not ~40 ms of per-tree calls per batch."""
        lv = self.leaves[level]
        n, trees = leaf.shape
        if n >= TREE_LOOP_MIN_FACES:
            by_tree = np.ascontiguousarray(leaf.T)
            for t in range(trees):
                shape += lv[t][by_tree[t]]
            return
        flat = lv.reshape(-1, lv.shape[-1])
        idx = leaf + (np.arange(trees, dtype=np.intp) * lv.shape[1])[None, :]
        for s in range(0, n, 16):
            g = flat[idx[s : s + 16]]  # (k, trees, 2P)
            g[:, 0] += shape[s : s + 16]
            shape[s : s + 16] = np.add.reduce(g, axis=1)  # sequential over the trees axis

    def _features(self, level, shape, pixels, offsets, widths, heights, left, top, bw, bh) -> np.ndarray:
        """Intensities (n * F,) float32 of the level's feature pixels, placed relative to the
        current shapes (similarity transform from the initial shape, as dlib does)."""
        n = shape.shape[0]
        cur = shape.reshape(n, self.n_points, 2)
        c = cur.astype(np.float64)
        c -= c.mean(1, keepdims=True)
        # least-squares similarity (scale * rotation) taking the initial shape onto the current one
        # (elementwise products summed per face, not a matrix product: BLAS could sum in an
        # order that depends on the batch size, and the landmarks must not)
        rx, ry = self._ref[:, 0], self._ref[:, 1]
        a = ((c[..., 0] * rx).sum(1) + (c[..., 1] * ry).sum(1)) / self._ref_ss
        s = ((c[..., 1] * rx).sum(1) - (c[..., 0] * ry).sum(1)) / self._ref_ss
        a32 = a.astype(np.float32)[:, None]
        s32 = s.astype(np.float32)[:, None]
        anc = self._anchors[level]
        dx, dy = self._dx[level], self._dy[level]
        u = a32 * dx - s32 * dy + cur[:, anc, 0]
        v = s32 * dx + a32 * dy + cur[:, anc, 1]
        x = np.floor(left + bw * u + 0.5).astype(np.intp)
        y = np.floor(top + bh * v + 0.5).astype(np.intp)
        inside = (x >= 0) & (y >= 0) & (x < widths) & (y < heights)
        idx = offsets + np.where(inside, y * widths + x, 0)
        return np.where(inside, pixels[idx], 0).astype(np.float32).reshape(-1)


_MODELS: dict[str, ShapeModel] = {}
_LOCK = threading.Lock()
_KERNEL: list = []  # [module or None] once looked up


def _kernel():
    """:mod:`maskgen.masks.ert_kernel` when Numba is installed (and neither
    ``MASKGEN_ERT_NUMPY`` nor ``MASKGEN_NUMPY_KERNELS`` is set), else None: the NumPy form runs."""
    if not _KERNEL:
        with _LOCK:
            if not _KERNEL:
                mod = None
                if not (os.environ.get("MASKGEN_ERT_NUMPY") or os.environ.get("MASKGEN_NUMPY_KERNELS")):
                    try:
                        from maskgen.masks import ert_kernel as mod
                    except ImportError:
                        mod = None
                _KERNEL.append(mod)
    return _KERNEL[0]


def cache_dir_for(path: str | os.PathLike) -> Path:
    from maskgen.data_home import models_home

    return models_home() / f"{Path(path).stem}.ert"


def _source_id(path: Path) -> dict:
    st = path.stat()
    return {"format": CACHE_FORMAT, "source": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_cache(cache: Path, source: dict) -> dict[str, np.ndarray] | None:
    try:
        if json.loads((cache / "source.json").read_text()) != source:
            return None
        # memory-mapped: processes on one machine share the pages. Plain ndarray views of the
        # maps: indexing a np.memmap builds a memmap object per call, which cost a quarter of
        # a photo's landmark fit (the tree loop indexes thousands of times per batch)
        return {k: np.load(cache / f"{k}.npy", mmap_mode="r").view(np.ndarray) for k in _ARRAYS}
    except (OSError, ValueError):
        return None


def _write_cache(cache: Path, arrays: dict[str, np.ndarray], source: dict) -> None:
    """Write to a temporary folder and rename it into place (concurrent writers: one wins)."""
    tmp = cache.with_name(f"{cache.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for k in _ARRAYS:
            np.save(tmp / f"{k}.npy", np.ascontiguousarray(arrays[k]))
        (tmp / "source.json").write_text(json.dumps(source))
        shutil.rmtree(cache, ignore_errors=True)
        os.replace(tmp, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cached_arrays(path: Path) -> tuple[dict[str, np.ndarray], bool]:
    """The model's arrays from the per-machine cache, else parsed and cached (when the models
    folder is writable); and whether they had to be parsed."""
    source = _source_id(path)
    cache = cache_dir_for(path)
    arrays = _read_cache(cache, source)
    if arrays is not None:
        return arrays, False
    arrays = parse_dlib_shape_predictor(path)
    try:
        _write_cache(cache, arrays, source)
    except OSError:
        return arrays, True  # a read-only models folder: this process keeps its parsed copy
    return _read_cache(cache, source) or arrays, True


def ensure_cache(path: str | os.PathLike) -> bool:
    """Parse and cache the model at ``path`` unless a valid cache exists (a build's driver calls
    this before its workers start, so that they do not each parse it). True when this call
    parsed it."""
    return _cached_arrays(Path(path))[1]


def load_shape_model(path: str | os.PathLike) -> ShapeModel:
    """The batched form of the dlib shape predictor at ``path``: from the per-machine cache,
    else parsed (and cached when the models folder is writable). Once per process."""
    path = Path(path)
    key = str(path.resolve())
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = _MODELS[key] = ShapeModel.from_arrays(_cached_arrays(path)[0])
        return model
