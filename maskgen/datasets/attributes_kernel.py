"""The white reference and the corrected ITA (:mod:`maskgen.datasets.attributes`) compiled with
Numba.

The same arithmetic as the NumPy form, in the same order and the same float types, so the
results are bit-identical to it (the tests check): float32 throughout, products summed left to
right, no ``fastmath`` (nothing reassociated or fused), and the medians and percentiles are
order statistics (a selection finds the same element a sort would). ``error_model="numpy"``:
a division is the IEEE one, without Python's zero check, so the loops vectorize (no divisor
here is zero). A few passes over a face's few thousand skin pixels instead of some thirty
small NumPy calls: 2-2.6x less time per face with the rest of the attributes
(``benchmarks/attributes_speed.py``).

Compiled on first use and cached on disk (``cache=True``, as :mod:`maskgen.masks.ert_kernel`).
Importing this module fails when Numba is not installed; the caller then runs the NumPy form.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, error_model="numpy")
def white_codes(img, step, k):  # pragma: no cover - compiled
    """Per channel, the first code value whose cumulative count over the pixels
    ``img[::step, ::step]`` exceeds ``k`` (``np.searchsorted(cumsum(hist), k, "right")``),
    at most 255."""
    h, w = img.shape[0], img.shape[1]
    hist = np.zeros((3, 256), np.int64)
    for y in range(0, h, step):
        for x in range(0, w, step):
            for c in range(3):
                hist[c, img[y, x, c]] += 1
    out = np.empty(3, np.int64)
    for c in range(3):
        cum = 0
        code = 256
        for v in range(256):
            cum += hist[c, v]
            if cum > k:
                code = v
                break
        out[c] = min(255, code)
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def _select(v, lo, hi, kth):  # pragma: no cover - compiled
    """Partially order ``v[lo:hi]`` in place so that ``v[kth]`` holds the value a sort would put
    there (everything before it is <=, everything after >=); returns it."""
    while hi - lo > 1:
        mid = lo + (hi - lo) // 2
        a, b, c = v[lo], v[mid], v[hi - 1]  # median of three as the pivot
        if a < b:
            pivot = b if b < c else (c if a < c else a)
        else:
            pivot = a if a < c else (c if b < c else b)
        i, j = lo, hi - 1
        while i <= j:
            while v[i] < pivot:
                i += 1
            while v[j] > pivot:
                j -= 1
            if i <= j:
                t = v[i]
                v[i] = v[j]
                v[j] = t
                i += 1
                j -= 1
        if kth <= j:
            hi = j + 1
        elif kth >= i:
            lo = i
        else:
            return v[kth]  # between the two halves: equal to the pivot
    return v[kth]


@njit(cache=True, nogil=True, error_model="numpy")
def _median(v, n):  # pragma: no cover - compiled
    """``np.median`` of the float32 ``v[:n]`` (reorders it): the middle value, or the float32
    mean of the two middle values."""
    k = n // 2
    hi = _select(v, 0, n, k)
    if n % 2:
        return hi
    lo = _select(v, 0, k, k - 1)  # the largest of the lower half
    return (lo + hi) / np.float32(2.0)


@njit(cache=True, nogil=True, error_model="numpy")
def _halley(y, x):  # pragma: no cover - compiled
    y3 = y * y * y
    return y * (y3 + 2.0 * x) / (2.0 * y3 + x)


@njit(cache=True, nogil=True, error_model="numpy")
def _cbrt_into(t, out, magic):  # pragma: no cover - compiled
    """``out[:] = attributes._cbrt(t)`` for a contiguous float32 vector ``t`` (the same integer
    start and IEEE operations per element; its three steps written out, so that the loop over
    the elements has no inner loop and the compiler vectorizes it)."""
    n = t.shape[0]
    bits = t.view(np.int32)
    start = np.empty(n, np.int32)
    for i in range(n):
        start[i] = np.int32(bits[i] // 3 + magic)
    y0 = start.view(np.float32)
    for i in range(n):
        x = np.float64(t[i])
        out[i] = np.float32(_halley(_halley(_halley(np.float64(y0[i]), x), x), x))


@njit(cache=True, nogil=True, error_model="numpy")
def skin_luma_median(skin, lut, luma):  # pragma: no cover - compiled
    """Median linear luma of the uint8 (N, 3) skin pixels (through the sRGB table ``lut``)."""
    n = skin.shape[0]
    y = np.empty(n, np.float32)
    for i in range(n):
        y[i] = (lut[skin[i, 0]] * luma[0] + lut[skin[i, 1]] * luma[1]) + lut[skin[i, 2]] * luma[2]
    return _median(y, n)


@njit(cache=True, nogil=True, error_model="numpy")
def ita_ratio_median(skin, lut, gain, use_gain, m, eps, kappa, lo_pct, hi_pct, min_chroma2, tan_lo,
                     select, min_selected, cbrt_magic):  # pragma: no cover - compiled
    """The median of ``(L* - 50) / max(b*, 1e-3)`` over the skin-like pixels (see
    ``corrected_ita``): linear light (times ``gain``, at most 1, when ``use_gain``), CIELab,
    the L* percentiles, the chroma and hue test."""
    n = skin.shape[0]
    t = np.empty((3, n), np.float32)  # X, Y, Z (each over the white point)
    one = np.float32(1.0)
    for i in range(n):
        r = lut[skin[i, 0]]
        g = lut[skin[i, 1]]
        b = lut[skin[i, 2]]
        if use_gain:
            r = min(r * gain[0], one)
            g = min(g * gain[1], one)
            b = min(b * gain[2], one)
        for c in range(3):
            t[c, i] = (r * m[c, 0] + g * m[c, 1]) + b * m[c, 2]
    f = np.empty((3, n), np.float32)
    for c in range(3):
        _cbrt_into(t[c], f[c], cbrt_magic)
        for i in range(n):
            if not t[c, i] > eps:
                f[c, i] = (kappa * t[c, i] + np.float32(16.0)) / np.float32(116.0)
    L = np.empty(n, np.float32)
    A = np.empty(n, np.float32)
    B = np.empty(n, np.float32)
    for i in range(n):
        L[i] = np.float32(116.0) * f[1, i] - np.float32(16.0)
        A[i] = np.float32(500.0) * (f[0, i] - f[1, i])
        B[i] = np.float32(200.0) * (f[1, i] - f[2, i])
    lo_k = int(lo_pct / 100.0 * (n - 1))
    hi_k = int(hi_pct / 100.0 * (n - 1))
    tmp = L.copy()
    lo = _select(tmp, 0, n, lo_k)
    hi = _select(tmp, lo_k, n, hi_k) if hi_k > lo_k else lo
    sel = np.empty(n, np.bool_)
    k = 0
    for i in range(n):
        a, b, l = A[i], B[i], L[i]
        sel[i] = a * a + b * b >= min_chroma2 and a > 0 and b > a * tan_lo and l > lo and l < hi
        k += sel[i]
    take_all = (not select) or k < min_selected
    floor = np.float32(1e-3)
    x = np.empty(n, np.float32)
    k = 0
    for i in range(n):
        if take_all or sel[i]:
            x[k] = (L[i] - np.float32(50.0)) / max(B[i], floor)
            k += 1
    return _median(x, k)
