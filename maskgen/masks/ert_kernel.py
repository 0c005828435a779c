"""The batched shape-predictor cascade (:mod:`maskgen.masks.ert`) compiled with Numba.

The same arithmetic as the NumPy form (``ShapeModel.shapes(..., compiled=False)``), in the same order and the same types, so
the float32 shapes are bit-identical to it (and the rounded landmarks to dlib's; the tests check
both): the mean shape is summed point after point and the similarity sums use NumPy's pairwise
summation (:func:`_pairwise`), features and shapes are float32, the image transform float64,
and the leaves are added tree after tree. No ``fastmath``: nothing is reassociated or fused.

Compiled on first use and cached on disk (``cache=True``: beside this file, or Numba's per-user
cache when the package folder is read-only): the first fit of a process that finds no cache
compiles it (~9 s), later processes load it (~0.6 s). Importing this module fails when Numba is not installed; the caller
then runs the NumPy form.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _pairwise(v):  # pragma: no cover - compiled
    """``np.sum`` of a float64 vector of at most 128 elements, as NumPy adds it: eight partial
    sums over blocks of eight, combined pairwise, then the tail in order."""
    n = v.shape[0]
    if n < 8:
        res = 0.0
        for i in range(n):
            res += v[i]
        return res
    r0, r1, r2, r3 = v[0], v[1], v[2], v[3]
    r4, r5, r6, r7 = v[4], v[5], v[6], v[7]
    i = 8
    end = n - (n % 8)
    while i < end:
        r0 += v[i]
        r1 += v[i + 1]
        r2 += v[i + 2]
        r3 += v[i + 3]
        r4 += v[i + 4]
        r5 += v[i + 5]
        r6 += v[i + 6]
        r7 += v[i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += v[i]
        i += 1
    return res


@njit(cache=True, nogil=True)
def _pairwise_dot(x, y, tmp):  # pragma: no cover - compiled
    """``(x * y).sum()`` as NumPy computes it: the products, then :func:`_pairwise` (``tmp``:
    a scratch vector of the same length)."""
    for p in range(x.shape[0]):
        tmp[p] = x[p] * y[p]
    return _pairwise(tmp)


@njit(cache=True, nogil=True)
def cascade(pixels, offsets, widths, heights, boxes, initial, idx1, idx2, thresh, leaves,
            anchors, deltas, ref, ref_ss):  # pragma: no cover - compiled
    """Float32 shapes (n, 2P) of the faces in ``boxes`` (n, 4) float64 (left, top, right,
    bottom) of the grayscale images packed in ``pixels`` (image i at ``offsets[i]``, row-major,
    ``widths[i]`` x ``heights[i]``), after every level of the cascade."""
    n = boxes.shape[0]
    levels, trees, splits = idx1.shape
    p2 = initial.shape[0]
    points = p2 // 2
    n_feat = anchors.shape[1]
    depth = 0
    while (1 << depth) - 1 < splits:
        depth += 1
    shape = np.empty((n, p2), np.float32)
    for i in range(n):
        shape[i, :] = initial
    feats = np.empty(n_feat, np.float32)
    leaf = np.empty((n, trees), np.int64)
    c = np.empty((points, 2), np.float64)
    tmp = np.empty(points, np.float64)
    for level in range(levels):
        for i in range(n):
            left = boxes[i, 0]
            top = boxes[i, 1]
            bw = boxes[i, 2] - left
            bh = boxes[i, 3] - top
            mx = 0.0
            my = 0.0
            for p in range(points):
                c[p, 0] = np.float64(shape[i, 2 * p])
                c[p, 1] = np.float64(shape[i, 2 * p + 1])
                mx += c[p, 0]
                my += c[p, 1]
            mx /= points
            my /= points
            for p in range(points):
                c[p, 0] -= mx
                c[p, 1] -= my
            # least-squares similarity taking the initial shape onto the current one
            s_xx = _pairwise_dot(c[:, 0], ref[:, 0], tmp)
            s_yy = _pairwise_dot(c[:, 1], ref[:, 1], tmp)
            s_yx = _pairwise_dot(c[:, 1], ref[:, 0], tmp)
            s_xy = _pairwise_dot(c[:, 0], ref[:, 1], tmp)
            a = np.float32((s_xx + s_yy) / ref_ss)
            s = np.float32((s_yx - s_xy) / ref_ss)
            w = widths[i]
            h = heights[i]
            off = offsets[i]
            for f in range(n_feat):
                k = anchors[level, f]
                dx = deltas[level, f, 0]
                dy = deltas[level, f, 1]
                u = (a * dx - s * dy) + shape[i, 2 * k]
                v = (s * dx + a * dy) + shape[i, 2 * k + 1]
                x = np.int64(np.floor(left + bw * np.float64(u) + 0.5))
                y = np.int64(np.floor(top + bh * np.float64(v) + 0.5))
                if x >= 0 and y >= 0 and x < w and y < h:
                    feats[f] = np.float32(pixels[off + y * w + x])
                else:
                    feats[f] = np.float32(0.0)
            for t in range(trees):  # dlib: left child (2i+1) when f[idx1] - f[idx2] > thresh
                node = 0
                for _ in range(depth):
                    go_left = feats[idx1[level, t, node]] - feats[idx2[level, t, node]] > thresh[level, t, node]
                    node = 2 * node + 2 - np.int64(go_left)
                leaf[i, t] = node - splits
        for t in range(trees):  # tree after tree: dlib's order of the float sums
            for i in range(n):
                lf = leaf[i, t]
                for j in range(p2):
                    shape[i, j] += leaves[level, t, lf, j]
    return shape
