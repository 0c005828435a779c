"""Mask geometry: where the mask sits on a face, as a piecewise-affine map from template space.

A mask design lives in a canonical template space (u across the face from the image-left side,
v from the top edge down; the patch u, v in [0, 1] is the part anchored on the face). For each
face a Coons patch is built whose four boundary curves run along landmarks: the top edge over
the nose bridge and cheeks, the sides down the jaw line, the bottom edge along the jaw and under
the chin. A coarse (u, v) grid of that patch, linearly extended beyond its edges, is the vertex
set of a triangle mesh; one affine map per triangle takes image pixels back to template pixels.
The inverse map is evaluated on a coarse pixel grid and resized to a dense map for ONE
``cv2.remap`` call. Because the curves follow the jaw landmarks, the far side of a turned head
shrinks with the jaw and the nose bridge pulls the mask's peak sideways.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

WEAR_MODES = ("correct", "below_nose", "chin")

# Knot parameters of the patch mesh (beyond the patch the mesh extends to the template extent).
_US = np.linspace(0.0, 1.0, 9)
_VS = np.linspace(0.0, 1.0, 5)


@dataclass(frozen=True)
class WearGeometry:
    """Landmark anchors of one wear mode (jaw indices are fractional, 0..16)."""

    top_side: float  # jaw index of the top corners (image-left side; mirrored on the right)
    bottom_side: float  # jaw index where the side edge meets the bottom edge
    top_centre: tuple[int, int, float]  # top edge's centre: lerp(landmark a, landmark b, t)
    side_offset: float  # outward offset of the side edges, in inter-ocular distances
    chin_offset: float  # extra outward offset at the chin (the mask wraps under it)
    cheek_sag: float  # how far the top edge sags between the corner and the centre


WEAR: dict[str, WearGeometry] = {
    "correct": WearGeometry(1.0, 3.0, (28, 29, 0.35), 0.05, 0.22, 0.06),
    "below_nose": WearGeometry(2.0, 3.0, (33, 51, 0.45), 0.05, 0.22, 0.03),
    "chin": WearGeometry(4.3, 5.0, (57, 8, 0.35), 0.05, 0.45, -0.02),
}


def _lerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    return a + (b - a) * t


def _jaw_weights(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Segment indices and linear weights of fractional jaw indices ``t`` (points on the jaw
    polyline are ``lm[i0] * f0 + lm[i1] * f1``)."""
    t = np.minimum(np.maximum(t, 0.0), 16.0)
    i0 = np.minimum(np.floor(t).astype(int), 15)
    f = (t - i0)[..., None]
    return i0, i0 + 1, 1 - f, f


@functools.lru_cache(maxsize=8)
def _wear_constants(wear: str) -> tuple:
    """Everything of :func:`patch_curves` that depends on the wear mode only (built once)."""
    g = WEAR[wear]
    t = np.concatenate(
        [
            [g.top_side, 16.0 - g.top_side],
            g.bottom_side + (16.0 - 2 * g.bottom_side) * _US,
            g.top_side + (g.bottom_side - g.top_side) * _VS,
            (16.0 - g.top_side) + (g.top_side - g.bottom_side) * _VS,
        ]
    )
    bump = np.maximum(1.0 - np.abs(t - 8.0) / 5.0, 0.0)
    offset = g.side_offset + g.chin_offset * bump  # in inter-ocular distances
    s = np.where(_US <= 0.5, _US / 0.5, (1.0 - _US) / 0.5)[:, None]
    out = (*_jaw_weights(t), offset, s, np.sin(np.pi * s), (_US <= 0.5)[:, None])
    for a in out:
        a.flags.writeable = False
    return out


def patch_curves(lm: np.ndarray, wear: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(top, bottom, left, right) boundary curves sampled at the mesh knots, image pixels."""
    g = WEAR[wear]
    lm = np.asarray(lm, np.float64)
    eye_l, eye_r = lm[36:42].sum(0) / 6.0, lm[42:48].sum(0) / 6.0
    d = eye_r - eye_l
    iod = max(float(np.hypot(d[0], d[1])), 1.0)
    # the outward direction of a jaw point: away from a centre between nose tip and lip
    centre = 0.5 * (lm[30] + lm[62])
    nu, nv = len(_US), len(_VS)
    # all jaw samples at once: top corners, bottom edge, left and right edges
    i0, i1, f0, f1, offset, s, sin_s, left_half = _wear_constants(wear)
    p = lm[i0] * f0 + lm[i1] * f1
    off = p - centre
    off /= np.maximum(np.hypot(off[:, 0], off[:, 1]), 1e-6)[:, None]
    p = p + off * (offset * iod)[:, None]
    tl, tr = p[0], p[1]
    bottom = p[2 : 2 + nu]
    left = p[2 + nu : 2 + nu + nv]
    right = p[2 + nu + nv :]
    a, b, tt = g.top_centre
    top_c = _lerp(lm[a], lm[b], tt)
    down = lm[8] - lm[27]
    down /= max(float(np.hypot(down[0], down[1])), 1e-6)
    if wear == "correct":
        # a turned head's nose tip sticks out sideways: the mask drapes over it, so its peak
        # follows the tip part of the way
        ex = (eye_r - eye_l) / iod
        top_c = top_c + ex * (0.7 * float((lm[30] - top_c) @ ex))
        # a face looking up shortens the nose in the image: keep the nose tip well inside, but
        # the edge below the inner eye corners
        depth = float((lm[30] - top_c) @ down)
        if depth < 0.32 * iod:
            top_c = top_c - down * (0.32 * iod - depth)
        dx, dy = float(down[0]), float(down[1])
        corners = max(float(lm[39, 0]) * dx + float(lm[39, 1]) * dy, float(lm[42, 0]) * dx + float(lm[42, 1]) * dy)
        # (inner eye corners, beside the bridge)
        room = float(top_c @ down) - corners
        if room < 0.03 * iod:
            top_c = top_c + down * (0.03 * iod - room)
    # the top edge: corners -> cheeks (sagging toward the chin) -> nose bridge
    corner = np.where(left_half, tl, tr)
    top = corner + (top_c - corner) * s + down * (g.cheek_sag * iod * sin_s)
    left = left.copy()
    right = right.copy()
    left[0], right[0], left[-1], right[-1] = top[0], top[-1], bottom[0], bottom[-1]
    return top, bottom, left, right


def coons_grid(lm: np.ndarray, wear: str) -> np.ndarray:
    """Image positions (len(_VS), len(_US), 2) of the patch knots (bilinearly blended Coons patch).

    The patch is linear in its four boundary curves: one constant matrix maps them to the knots.
    """
    curves = np.concatenate(patch_curves(lm, wear))
    return (_coons_matrix() @ curves).reshape(len(_VS), len(_US), 2)


def _coons(top: np.ndarray, bottom: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The bilinearly blended Coons patch of four boundary curves, sampled at the knots."""
    u, v, u1, v1, w00, w10, w01, w11 = _COONS
    ruled_v = v1 * top[None] + v * bottom[None]
    ruled_u = u1 * left[:, None] + u * right[:, None]
    p00, p10, p01, p11 = top[0], top[-1], bottom[0], bottom[-1]
    bil = w00 * p00 + w10 * p10 + w01 * p01 + w11 * p11
    return ruled_v + ruled_u - bil


@functools.lru_cache(maxsize=1)
def _coons_matrix() -> np.ndarray:
    """(knots, curve points) matrix of :func:`_coons`: curves stacked top, bottom, left, right."""
    nu, nv = len(_US), len(_VS)
    eye = np.eye(2 * nu + 2 * nv)  # one unit curve point per column (in place of x, y)
    top, bottom, left, right = np.split(eye, [nu, 2 * nu, 2 * nu + nv])
    out = _coons(top, bottom, left, right).reshape(nv * nu, -1)
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=64)
def _extend_matrix(extent: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_extend` as a (mesh knots, patch knots) matrix, with the extended knot params."""
    nu, nv = len(_US), len(_VS)
    basis = np.eye(nv * nu).reshape(nv, nu, nv * nu)
    g, us, vs = _extend(basis, _US, _VS, extent)
    m = g.reshape(-1, nv * nu)
    for a in (m, us, vs):
        a.flags.writeable = False
    return m, us, vs


def _coons_weights() -> tuple[np.ndarray, ...]:
    """Constant blending weights of :func:`coons_grid` (same products, computed once)."""
    u = _US[None, :, None]
    v = _VS[:, None, None]
    return u, v, 1 - u, 1 - v, (1 - u) * (1 - v), u * (1 - v), (1 - u) * v, u * v


_COONS = _coons_weights()


def _extend(grid: np.ndarray, us: np.ndarray, vs: np.ndarray, extent: tuple[float, float, float, float]):
    """Add one ring of knots reaching the template extent, by linear extrapolation."""
    u0, u1, v0, v1 = extent
    g = grid
    left = g[:, 0] + (g[:, 0] - g[:, 1]) * ((us[0] - u0) / (us[1] - us[0]))
    right = g[:, -1] + (g[:, -1] - g[:, -2]) * ((u1 - us[-1]) / (us[-1] - us[-2]))
    g = np.concatenate([left[:, None], g, right[:, None]], axis=1)
    top = g[0] + (g[0] - g[1]) * ((vs[0] - v0) / (vs[1] - vs[0]))
    bot = g[-1] + (g[-1] - g[-2]) * ((v1 - vs[-1]) / (vs[-1] - vs[-2]))
    g = np.concatenate([top[None], g, bot[None]], axis=0)
    return g, np.concatenate([[u0], us, [u1]]), np.concatenate([[v0], vs, [v1]])


@dataclass
class MaskMap:
    """Dense template coordinates for every pixel of an image ROI."""

    x0: int
    y0: int
    map_u: np.ndarray  # (h, w) float32, template u
    map_v: np.ndarray  # (h, w) float32, template v
    mesh: np.ndarray  # (rows, cols, 2) image positions of the mesh knots (incl. the outer ring)
    dense: np.ndarray | None = None  # (h, w, 2) float32 (u, v): one CV_32FC2 map for cv2.remap


def mask_map(
    grid: np.ndarray,
    extent: tuple[float, float, float, float],
    image_shape: tuple[int, int],
    step: float = 7.0,
    extra_points: np.ndarray | None = None,
    to_pixels: tuple[float, float, float, float] | None = None,
) -> MaskMap | None:
    """Inverse piecewise-affine map image ROI -> template (u, v); None when off-image.

    ``grid`` is :func:`coons_grid`; the ROI covers the mesh and ``extra_points`` (ear loops).
    ``to_pixels = (u0, su, v0, sv)`` returns remap-ready template pixel coordinates
    ``(u - u0) * su - 0.5`` instead (applied on the coarse grid: free, the resize is linear).
    """
    em, us, vs = _extend_matrix(tuple(float(e) for e in extent))
    mesh = (em @ grid.reshape(-1, 2)).reshape(len(vs), len(us), 2)
    h, w = image_shape
    mp = mesh.reshape(-1, 2)
    allp = mp
    if extra_points is not None and len(extra_points):
        allp = np.concatenate([mp, np.asarray(extra_points, np.float64).reshape(-1, 2)])
    x0, y0, x1, y1 = _bbox(allp, w, h)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    # the map is solved over the mesh's box only (the design lives there); loops widen the ROI
    mx0, my0, mx1, my1 = _bbox(mp, w, h)
    rw, rh = mx1 - mx0, my1 - my0
    if rw < 2 or rh < 2:
        return None
    # about 7 px between samples, at most 32 a side (a mesh cell then still spans 2+ samples)
    gw = int(min(max(np.ceil(rw / step), 4), 32))
    gh = int(min(max(np.ceil(rh / step), 4), 32))
    # sample positions that make cv2.resize (INTER_LINEAR) interpolate exactly between them
    sx = (np.arange(gw) + 0.5) * (rw / gw) - 0.5 + mx0
    sy = (np.arange(gh) + 0.5) * (rh / gh) - 0.5 + my0
    px = np.tile(sx, gh)
    py = np.repeat(sy, gw)
    fu, fv = invert_mesh(mesh, px, py, axes=(sx, sy))
    # knot index -> template coordinate (linear per cell, extrapolated at the ends)
    u = _index_to_coord(fu, us)
    v = _index_to_coord(fv, vs)
    if to_pixels is not None:
        tu0, su, tv0, sv = to_pixels
        u = (u - tu0) * su - 0.5
        v = (v - tv0) * sv - 0.5
    coarse = np.stack([u, v], -1).reshape(gh, gw, 2).astype(np.float32)
    dense = cv2.resize(coarse, (rw, rh), interpolation=cv2.INTER_LINEAR)
    if (mx0, my0, mx1, my1) != (x0, y0, x1, y1):
        # outside the mesh box: far outside the template (transparent after the remap)
        dense = cv2.copyMakeBorder(dense, my0 - y0, y1 - my1, mx0 - x0, x1 - mx1, cv2.BORDER_CONSTANT, value=(-1e4, -1e4))
    return MaskMap(x0, y0, dense[..., 0], dense[..., 1], mesh, dense)


def _bbox(p: np.ndarray, w: int, h: int) -> tuple[int, int, int, int]:
    (lx, ly), (hx, hy) = p.min(0).tolist(), p.max(0).tolist()
    return (
        max(0, math.floor(lx) - 2),
        max(0, math.floor(ly) - 2),
        min(w, math.ceil(hx) + 3),
        min(h, math.ceil(hy) + 3),
    )


def _index_to_coord(f: np.ndarray, knots: np.ndarray) -> np.ndarray:
    i = np.minimum(np.maximum(np.floor(f).astype(np.intp), 0), len(knots) - 2)
    return knots[i] + (f - i) * (knots[i + 1] - knots[i])


def invert_mesh(
    mesh: np.ndarray,
    px: np.ndarray,
    py: np.ndarray,
    eps: float = 1e-3,
    axes: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fractional knot indices (column, row) of image points in a triangulated quad mesh.

    Each cell is split into triangles (00, 10, 11) and (00, 11, 01), each an exact affine map.
    Every point is tested against the cells whose bounding box holds it (a few per point, all
    pairs at once: no per-point walk). Where cells overlap (the outer ring, extrapolated to the
    template extent, can fold over the patch; a strongly turned face folds the patch itself) a
    patch cell wins over a ring cell, then the cell the point lies deepest in. Points in no
    cell lie beyond the mesh, outside
    the template: their indices continue outwards from the nearest point of the outline.

    ``axes = (xs, ys)`` says the points are the grid ``px = tile(xs, len(ys))``,
    ``py = repeat(ys, len(xs))``: the bounding-box test then runs per column and per row.
    """
    r, c = mesh.shape[:2]
    mx = mesh[..., 0]
    my = mesh[..., 1]
    # per-cell constants of both triangles, and each cell's bounding box
    x00, y00 = mx[:-1, :-1], my[:-1, :-1]
    x10, y10 = mx[:-1, 1:], my[:-1, 1:]
    x11, y11 = mx[1:, 1:], my[1:, 1:]
    x01, y01 = mx[1:, :-1], my[1:, :-1]
    ax, ay = x10 - x00, y10 - y00
    bx, by = x11 - x00, y11 - y00
    cx, cy = x01 - x00, y01 - y00
    den = ax * by - bx * ay
    den2 = bx * cy - cx * by
    den = np.where(np.abs(den) < 1e-9, 1e-9, den)
    den2 = np.where(np.abs(den2) < 1e-9, 1e-9, den2)
    cell = np.stack([x00, y00, by / den, -bx / den, -ay / den, ax / den, cy / den2, -cx / den2, -by / den2, bx / den2], -1)
    cell = cell.reshape(-1, 10)
    pad = 1e-6
    lo_x = np.minimum(np.minimum(x00, x10), np.minimum(x11, x01)).ravel() - pad
    hi_x = np.maximum(np.maximum(x00, x10), np.maximum(x11, x01)).ravel() + pad
    lo_y = np.minimum(np.minimum(y00, y10), np.minimum(y11, y01)).ravel() - pad
    hi_y = np.maximum(np.maximum(y00, y10), np.maximum(y11, y01)).ravel() + pad
    # candidate (point, cell) pairs: one boolean matrix, points x cells
    if axes is not None:
        xs, ys = axes[0][:, None], axes[1][:, None]
        in_x = (xs >= lo_x) & (xs <= hi_x)  # (columns, cells)
        in_y = (ys >= lo_y) & (ys <= hi_y)  # (rows, cells)
        pi, k = np.nonzero((in_y[:, None, :] & in_x[None, :, :]).reshape(len(px), -1))
    else:
        pxc, pyc = px[:, None], py[:, None]
        pi, k = np.nonzero((pxc >= lo_x) & (pxc <= hi_x) & (pyc >= lo_y) & (pyc <= hi_y))
    ou, ov, depth = _cell_offsets(cell[k], px[pi], py[pi])
    hit = np.nonzero(depth >= -eps)[0]
    # where cells overlap, a patch cell wins over the extrapolated outer ring folded onto it,
    # then the deepest: the winner is written last (fancy assignment keeps the last value)
    hit = hit[np.argsort(depth[hit] + _patch_cells(r, c)[k[hit]], kind="stable")]
    pi, k = pi[hit], k[hit]
    n = len(px)
    fu = np.empty(n)
    fv = np.empty(n)
    fu[pi] = k % (c - 1) + ou[hit]
    fv[pi] = k // (c - 1) + ov[hit]
    found = np.zeros(n, bool)
    found[pi] = True
    out = np.nonzero(~found)[0]
    if len(out) == 0:
        return fu, fv
    # beyond the mesh (outside the template): continue the map outwards from the nearest point
    # of the mesh outline, its knot index plus the distance in cells along the outward index
    # direction. Continuous, and monotone away from the mesh, so that interpolating between
    # samples on either side of the outline never sweeps across the design (an affine cell's
    # extrapolation far from its cell, or beyond a convex corner, can).
    a, ab, ia, iab, outward, across = _outline(mesh)
    # (points, segments) arrays, x and y apart: the nearest point of every segment
    qx = px[out, None] - a[:, 0]
    qy = py[out, None] - a[:, 1]
    abx, aby = ab[:, 0], ab[:, 1]
    t = qx * abx
    t += qy * aby
    t *= 1.0 / np.maximum(abx * abx + aby * aby, 1e-12)
    np.clip(t, 0.0, 1.0, out=t)
    qx -= t * abx
    qy -= t * aby
    qx *= qx
    qy *= qy
    qx += qy  # squared distances
    seg = np.argmin(qx, axis=1)
    rows = np.arange(len(out))
    ts = t[rows, seg][:, None]
    dist = np.sqrt(qx[rows, seg])[:, None] / across[seg][:, None]
    f = ia[seg] + ts * iab[seg] + outward[seg] * dist
    fu[out] = f[:, 0]
    fv[out] = f[:, 1]
    return fu, fv


def _outline(mesh: np.ndarray) -> tuple[np.ndarray, ...]:
    """The mesh's outline as segments: start points and vectors (image), the same in knot
    index space, each segment's outward index direction and the pixel length of one index
    step across it (the cell edge leaving the outline there)."""
    r, c = mesh.shape[:2]
    idx, outward, inner = _outline_indices(r, c)
    pts = mesh[idx[:, 1], idx[:, 0]]  # (n + 1, 2): closed loop of knots
    a = pts[:-1]
    ab = pts[1:] - a
    step = pts - mesh[inner[:, 1], inner[:, 0]]
    lens = np.sqrt((step * step).sum(-1))
    across = np.maximum(0.5 * (lens[:-1] + lens[1:]), 1e-6)
    ia = idx[:-1].astype(np.float64)
    iab = (idx[1:] - idx[:-1]).astype(np.float64)
    return a, ab, ia, iab, outward, across


@functools.lru_cache(maxsize=16)
def _outline_indices(r: int, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Knot (column, row) indices around the mesh outline (closed, clockwise from the top-left
    corner), the outward index direction of each segment, and for each knot the inner
    neighbour one step inwards (its neighbour across the outline)."""
    top = [(i, 0) for i in range(c - 1)]
    right = [(c - 1, j) for j in range(r - 1)]
    bottom = [(i, r - 1) for i in range(c - 1, 0, -1)]
    left = [(0, j) for j in range(r - 1, 0, -1)]
    idx = np.array(top + right + bottom + left + [(0, 0)], np.intp)
    outward = np.array(
        [(0.0, -1.0)] * len(top) + [(1.0, 0.0)] * len(right) + [(0.0, 1.0)] * len(bottom) + [(-1.0, 0.0)] * len(left)
    )
    inner = idx.copy()
    inner[:, 0] = np.clip(inner[:, 0], 1, c - 2)
    inner[:, 1] = np.clip(inner[:, 1], 1, r - 2)
    for x in (idx, outward, inner):
        x.flags.writeable = False
    return idx, outward, inner


@functools.lru_cache(maxsize=16)
def _patch_cells(r: int, c: int) -> np.ndarray:
    """1.0 for the cells of the patch itself, 0.0 for those of the outer ring, per cell."""
    inner = np.zeros((r - 1, c - 1))
    inner[1:-1, 1:-1] = 1.0
    out = inner.ravel()
    out.flags.writeable = False
    return out


def _cell_offsets(p: np.ndarray, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offsets (u, v) of points in their cells' index space and how deep inside the cell they
    lie (the smallest barycentric coordinate; < 0 outside), ``p`` the cells' constants (n, 10).

    Triangle A (00, 10, 11) gives offsets (s + t, t), triangle B (00, 11, 01) gives (s, s + t);
    the triangle the point lies deeper in is used (also right in a cell twisted by a fold).
    """
    dx = px - p[:, 0]
    dy = py - p[:, 1]
    s1 = dx * p[:, 2] + dy * p[:, 3]
    t1 = dx * p[:, 4] + dy * p[:, 5]
    s2 = dx * p[:, 6] + dy * p[:, 7]
    t2 = dx * p[:, 8] + dy * p[:, 9]
    da = np.minimum(np.minimum(s1, t1), 1.0 - s1 - t1)
    db = np.minimum(np.minimum(s2, t2), 1.0 - s2 - t2)
    use_a = da >= db
    return np.where(use_a, s1 + t1, s2), np.where(use_a, t1, s2 + t2), np.maximum(da, db)


def forward(grid: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Image positions of template points (u, v) inside the patch (bilinear in the knot grid)."""
    return _bilinear(grid, _forward_weights(u, v))


def forward_fixed(grid: np.ndarray, u: tuple[float, ...], v: tuple[float, ...]) -> np.ndarray:
    """:func:`forward` for template points given as tuples, their weights cached (loop anchors)."""
    return _bilinear(grid, _forward_weights_cached(u, v))


def _forward_weights(u, v) -> tuple[np.ndarray, ...]:
    fu = np.clip(np.asarray(u, np.float64), 0, 1) * (len(_US) - 1)
    fv = np.clip(np.asarray(v, np.float64), 0, 1) * (len(_VS) - 1)
    i0 = np.minimum(np.floor(fu).astype(int), len(_US) - 2)
    j0 = np.minimum(np.floor(fv).astype(int), len(_VS) - 2)
    a = (fu - i0)[..., None]
    b = (fv - j0)[..., None]
    return i0, j0, a, b, 1 - a, 1 - b


@functools.lru_cache(maxsize=32)
def _forward_weights_cached(u: tuple[float, ...], v: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    out = _forward_weights(u, v)
    for x in out:
        x.flags.writeable = False
    return out


def _bilinear(grid: np.ndarray, weights: tuple[np.ndarray, ...]) -> np.ndarray:
    i0, j0, a, b, na, nb = weights
    return (
        grid[j0, i0] * na * nb
        + grid[j0, i0 + 1] * a * nb
        + grid[j0 + 1, i0] * na * b
        + grid[j0 + 1, i0 + 1] * a * b
    )
