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
        corners = float(np.max(lm[[39, 42]] @ down))  # inner eye corners, beside the bridge
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
    """Image positions (len(_VS), len(_US), 2) of the patch knots (bilinearly blended Coons patch)."""
    top, bottom, left, right = patch_curves(lm, wear)
    u, v, u1, v1, w00, w10, w01, w11 = _COONS
    ruled_v = v1 * top[None] + v * bottom[None]
    ruled_u = u1 * left[:, None] + u * right[:, None]
    p00, p10, p01, p11 = top[0], top[-1], bottom[0], bottom[-1]
    bil = w00 * p00 + w10 * p10 + w01 * p01 + w11 * p11
    return ruled_v + ruled_u - bil


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
    mesh, us, vs = _extend(grid, _US, _VS, extent)
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
    px = np.broadcast_to(sx[None, :], (gh, gw)).ravel()
    py = np.broadcast_to(sy[:, None], (gh, gw)).ravel()
    fu, fv = invert_mesh(mesh, px, py)
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
    lo = p.min(0)
    hi = p.max(0)
    return (
        int(max(0, np.floor(lo[0]) - 2)),
        int(max(0, np.floor(lo[1]) - 2)),
        int(min(w, np.ceil(hi[0]) + 3)),
        int(min(h, np.ceil(hi[1]) + 3)),
    )


def _index_to_coord(f: np.ndarray, knots: np.ndarray) -> np.ndarray:
    i = np.minimum(np.maximum(np.floor(f).astype(np.intp), 0), len(knots) - 2)
    return knots[i] + (f - i) * (knots[i + 1] - knots[i])


def invert_mesh(mesh: np.ndarray, px: np.ndarray, py: np.ndarray, iters: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Fractional knot indices (column, row) of image points in a triangulated quad mesh.

    Each cell is split into triangles (00, 10, 11) and (00, 11, 01), each an exact affine map.
    Every point starts in the cell with the nearest centre and walks, one cell per step, towards
    the cell its estimate falls in (a few steps on a smooth mesh); points beyond the mesh are
    extrapolated from the border cell, i.e. they land outside the template. Points that do not
    settle, or settle beyond the border while inside the outline (folds at strongly turned
    faces), get an exact search over all triangles.
    """
    r, c = mesh.shape[:2]
    mx = mesh[..., 0]
    my = mesh[..., 1]
    # per-cell constants of both triangles, gathered with one index per step
    x00, y00 = mx[:-1, :-1], my[:-1, :-1]
    ax, ay = mx[:-1, 1:] - x00, my[:-1, 1:] - y00
    bx, by = mx[1:, 1:] - x00, my[1:, 1:] - y00
    cx, cy = mx[1:, :-1] - x00, my[1:, :-1] - y00
    den = ax * by - bx * ay
    den2 = bx * cy - cx * by
    den = np.where(np.abs(den) < 1e-9, 1e-9, den)
    den2 = np.where(np.abs(den2) < 1e-9, 1e-9, den2)
    cell = np.stack([x00, y00, by / den, -bx / den, -ay / den, ax / den, cy / den2, -cx / den2, -by / den2, bx / den2], -1)
    cell = cell.reshape(-1, 10)
    ci, cj, ring = _mesh_indices(r, c)
    bounds = _cell_bounds(r, c)
    # start in the cell whose centre is nearest (one small distance matrix)
    ccx = (x00 + 0.25 * (ax + bx + cx)).ravel()
    ccy = (y00 + 0.25 * (ay + by + cy)).ravel()
    k = np.argmin((px[:, None] - ccx[None]) ** 2 + (py[:, None] - ccy[None]) ** 2, axis=1)
    fu = np.empty(len(px))
    fv = np.empty(len(px))
    done = np.zeros(len(px), bool)
    act = np.arange(len(px))  # points still walking
    prev = -1
    for _ in range(iters):
        if len(act) == prev:
            break  # no progress: stragglers (bouncing between border cells) go to the checks below
        prev = len(act)
        p = cell[k]
        i, j = ci[k], cj[k]
        dx = px[act] - p[:, 0]
        dy = py[act] - p[:, 1]
        # triangle A (00, 10, 11): offsets (s + t, t); triangle B (00, 11, 01): offsets (s, s + t)
        s1 = dx * p[:, 2] + dy * p[:, 3]
        t1 = dx * p[:, 4] + dy * p[:, 5]
        s2 = dx * p[:, 6] + dy * p[:, 7]
        t2 = dx * p[:, 8] + dy * p[:, 9]
        use_a = s1 >= 0.0  # the side of the shared diagonal
        ou = np.where(use_a, s1 + t1, s2)
        ov = np.where(use_a, t1, s2 + t2)
        # inside this cell (a hair's breadth over a shared edge counts: neighbours agree there),
        # or beyond the mesh border this cell lies on
        b = bounds[k]  # per-cell limits, open on the mesh border's sides
        ok = (ou >= b[:, 0]) & (ou <= b[:, 1]) & (ov >= b[:, 2]) & (ov <= b[:, 3])
        fu[act] = i + ou
        fv[act] = j + ov
        done[act[ok]] = True
        # the rest walk one cell towards their estimate (extrapolating a thin cell overshoots)
        keep = ~ok
        act = act[keep]
        if len(act) == 0:
            break
        ou, ov = ou[keep], ov[keep]
        ni = np.minimum(np.maximum(i[keep] + ((ou >= 1.0).view(np.int8) - (ou < 0.0).view(np.int8)), 0), c - 2)
        nj = np.minimum(np.maximum(j[keep] + ((ov >= 1.0).view(np.int8) - (ov < 0.0).view(np.int8)), 0), r - 2)
        k = nj * (c - 1) + ni
    # a point "converged" beyond the border may still lie inside a concave or folded outline, and
    # a point outside the mesh may ping-pong between border cells: test both against the outline
    beyond = (fu < 0) | (fu > c - 1) | (fv < 0) | (fv > r - 1)
    check = np.nonzero(beyond | ~done)[0]
    if len(check) == 0:
        return fu, fv
    outline = np.concatenate([mesh[0, :], mesh[1:, -1], mesh[-1, -2::-1], mesh[-2:0:-1, 0]])
    inside = _in_polygon(outline, px[check], py[check])
    unsettled = check[~inside & ~done[check]]  # outside the mesh, value unreliable
    search = check[inside & (beyond[check] | ~done[check])]  # inside: exact triangle search
    out = [unsettled]
    if len(search):
        bu, bv, hit = _search_triangles(mesh, px[search], py[search])
        fu[search[hit]] = bu[hit]
        fv[search[hit]] = bv[hit]
        out.append(search[~hit])
    out = np.concatenate(out)
    if len(out):
        # beyond the nearest border knot: outside the template (transparent), on the right side
        # so that interpolation towards inside neighbours never sweeps across the design
        rx, ry = mx[ring[:, 0], ring[:, 1]], my[ring[:, 0], ring[:, 1]]
        d2 = (px[out, None] - rx[None]) ** 2 + (py[out, None] - ry[None]) ** 2
        k = np.argmin(d2, axis=1)
        kj, ki = ring[k, 0].astype(np.float64), ring[k, 1].astype(np.float64)
        cj, ci = (r - 1) / 2.0, (c - 1) / 2.0
        fu[out] = ki + np.sign(ki - ci) * 0.5 * (np.abs(ki - ci) > ci - 0.5)
        fv[out] = kj + np.sign(kj - cj) * 0.5 * (np.abs(kj - cj) > cj - 0.5)
    return fu, fv


@functools.lru_cache(maxsize=16)
def _mesh_indices(r: int, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column and row of every cell, and the (row, column) of every border knot, per mesh shape."""
    ci = np.tile(np.arange(c - 1), r - 1)
    cj = np.repeat(np.arange(r - 1), c - 1)
    ring = np.concatenate(
        [
            np.stack([np.zeros(c), np.arange(c)], 1),
            np.stack([np.full(c, r - 1), np.arange(c)], 1),
            np.stack([np.arange(r), np.zeros(r)], 1),
            np.stack([np.arange(r), np.full(r, c - 1)], 1),
        ]
    ).astype(np.intp)
    for a in (ci, cj, ring):
        a.flags.writeable = False
    return ci, cj, ring


@functools.lru_cache(maxsize=16)
def _cell_bounds(r: int, c: int) -> np.ndarray:
    """(cells, 4) limits (u low, u high, v low, v high) of a point's offsets that count as 'in
    this cell' (a hair's breadth over an edge counts; open on the sides on the mesh border)."""
    ci, cj, _ = _mesh_indices(r, c)
    eps = 1e-3
    out = np.stack(
        [
            np.where(ci == 0, -np.inf, -eps),
            np.where(ci == c - 2, np.inf, 1 + eps),
            np.where(cj == 0, -np.inf, -eps),
            np.where(cj == r - 2, np.inf, 1 + eps),
        ],
        1,
    )
    out.flags.writeable = False
    return out


def _in_polygon(poly: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon, vectorised over points."""
    nxt = np.concatenate([poly[1:], poly[:1]])
    x1, y1 = poly[:, 0][None], poly[:, 1][None]
    x2, y2 = nxt[:, 0][None], nxt[:, 1][None]
    y = py[:, None]
    cross = (y1 > y) != (y2 > y)
    dy = np.where(y2 == y1, 1e-12, y2 - y1)
    xint = x1 + (y - y1) * (x2 - x1) / dy
    return ((cross & (px[:, None] < xint)).sum(1) % 2) == 1


def _search_triangles(mesh: np.ndarray, px: np.ndarray, py: np.ndarray):
    """Brute force: (column, row) index of points in the triangle they are most inside of."""
    r, c = mesh.shape[:2]
    i, j = np.meshgrid(np.arange(c - 1), np.arange(r - 1))
    i, j = i.ravel(), j.ravel()
    # triangle corners in index space: A = (00, 10, 11), B = (00, 11, 01)
    ci = np.concatenate([np.stack([i, i + 1, i + 1], 1), np.stack([i, i + 1, i], 1)])
    cj = np.concatenate([np.stack([j, j, j + 1], 1), np.stack([j, j + 1, j + 1], 1)])
    x = mesh[cj, ci, 0]  # (T, 3)
    y = mesh[cj, ci, 1]
    v0x, v0y = x[:, 1] - x[:, 0], y[:, 1] - y[:, 0]
    v1x, v1y = x[:, 2] - x[:, 0], y[:, 2] - y[:, 0]
    den = v0x * v1y - v1x * v0y
    den = np.where(np.abs(den) < 1e-9, 1e-9, den)
    dx = px[:, None] - x[None, :, 0]
    dy = py[:, None] - y[None, :, 0]
    l1 = (dx * v1y - v1x * dy) / den
    l2 = (v0x * dy - dx * v0y) / den
    l0 = 1.0 - l1 - l2
    score = np.minimum(np.minimum(l0, l1), l2)
    k = np.argmax(score, axis=1)
    n = np.arange(len(px))
    b0, b1, b2 = l0[n, k], l1[n, k], l2[n, k]
    fu = b0 * ci[k, 0] + b1 * ci[k, 1] + b2 * ci[k, 2]
    fv = b0 * cj[k, 0] + b1 * cj[k, 1] + b2 * cj[k, 2]
    return fu, fv, score[n, k] > -1e-3


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
