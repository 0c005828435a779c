"""Mask geometry: a 3D mask on a 3D head fitted to the landmarks, projected into the image.

The head is the project's mean 3D face (``pose.MEAN_SHAPE_3D``) posed by ``cv2.solvePnP``; each
landmark is then moved, at its posed depth, onto the detected 2D point, so the per-face head
projects exactly onto the landmarks (``fit_head``).

A mask is a grid of knots in template space (u across, v down). Its surface is built once per
(wear mode, design shape) on the mean face: the boundary runs along the nose wire across the
upper nose bridge and under the eyes, down the jaw line past the cheeks and under the chin (a
Coons patch of those curves); across the face it drapes in front of the nose, lips and chin
(the lower convex profile of the mean face's midline, curving back to the jaw) and stands off
the cheeks; the design adds its cup, centre ridge or horizontal fold. A thin-plate spline of
the landmark displacements (mean face -> this face) carries the surface onto the face: the
whole per-face surface is one constant matrix times the landmarks.

Projected with the camera of the pose solver, the knots form a triangle mesh in the image. Cells
whose projection is mirrored face away from the camera (the far side of a turned head wraps out
of sight): they are culled, and the silhouette of the visible cells is drawn exactly. Where cells
overlap, the nearer wins, so a cup's bulge past the far cheek hides the mask behind it. The
inverse map image -> template is solved on a coarse pixel grid and resized to a dense map for
ONE ``cv2.remap``; per-knot normals give the shading (``render``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from maskgen.masks.designs.base import Shape
from maskgen.masks.pose import MEAN_SHAPE_3D, camera_matrix, solve_pose

WEAR_MODES = ("correct", "below_nose", "chin")

# Knot parameters of the patch (u, v in [0, 1]); one more ring reaches the template extent.
_US = np.linspace(0.0, 1.0, 11)
_VS = np.linspace(0.0, 1.0, 7)


@dataclass(frozen=True)
class WearGeometry:
    """Where the mask sits, on the mean face (jaw indices are fractional, 0..16)."""

    top_centre: tuple[int, int, float]  # the nose wire's centre: lerp(landmark a, landmark b, t)
    top_side: float  # jaw index of the top corners (image-left side; mirrored on the right)
    bottom_side: float  # jaw index where the side edge meets the bottom edge
    under_eyes: bool  # the top edge climbs to the bridge between the eyes (waypoints below them)
    chin_wrap: float  # how far the bottom edge wraps under the chin (mean-face units)
    cheek_sag: float  # how far the top edge sags between corner and centre (units)
    chin_back: float = 1.0  # how much of the wrap goes back under the chin (vs down past it)


WEAR: dict[str, WearGeometry] = {
    # the nose wire 40 % of the way from the bridge top (27) to 28: just below the eyes
    "correct": WearGeometry((27, 28, 0.40), 1.0, 3.0, True, 1.0, 1.0),
    "below_nose": WearGeometry((33, 51, 0.45), 2.0, 3.0, False, 1.0, 0.6),
    "chin": WearGeometry((57, 8, 0.18), 4.0, 5.0, False, 1.6, -0.5, 0.4),
}

# Landmarks that carry the mask from the mean face to a face: jaw, brows' ends, nose, eyes
# and the outer lips (inner lips and mid-brows would only add noise).
_CTRL = np.array([*range(0, 17), 17, 21, 22, 26, *range(27, 36), *range(36, 48), *range(48, 60)])
_TPS_SMOOTH = 2.0


# ---------------------------------------------------------------------------------- the head


@dataclass
class Head:
    """A face's 3D head: pose (camera = R @ head + t), camera, and the per-face landmarks."""

    R: np.ndarray  # (3, 3)
    t: np.ndarray  # (3,)
    f: float
    c: tuple[float, float]
    points: np.ndarray  # (68, 3) landmarks in head coordinates, projecting onto the 2D points

    def project(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image positions (n, 2) and camera depths (n,) of head points (n, 3)."""
        q = p @ self.R.T + self.t
        z = q[:, 2]
        inv = self.f / np.maximum(z, 1e-6)
        xy = np.empty((len(p), 2))
        xy[:, 0] = q[:, 0] * inv + self.c[0]
        xy[:, 1] = q[:, 1] * inv + self.c[1]
        return xy, z


def fit_head(lm: np.ndarray, image_shape: tuple[int, int]) -> Head | None:
    """The mean 3D face posed onto ``lm`` (SQPnP), each landmark moved onto its 2D point."""
    lm = np.asarray(lm, np.float64).reshape(68, 2)
    h, w = int(image_shape[0]), int(image_shape[1])
    cam = camera_matrix(h, w)
    solved = solve_pose(lm, h, w)  # SQPnP, shared with the detection's plausibility check
    if solved is None:
        return None
    _, tvec, R = solved
    t = tvec.reshape(3)
    f, cx, cy = float(cam[0, 0]), float(cam[0, 2]), float(cam[1, 2])
    z = MEAN_SHAPE_3D @ R[2] + t[2]
    if (z <= 1e-3).any():
        return None
    q = np.empty((68, 3))
    q[:, 0] = (lm[:, 0] - cx) * z / f
    q[:, 1] = (lm[:, 1] - cy) * z / f
    q[:, 2] = z
    return Head(R, t, f, (cx, cy), (q - t) @ R)


# ------------------------------------------------------------------- the mask on the mean face


def _jaw(t: np.ndarray) -> np.ndarray:
    """Points (n, 3) on the mean face's jaw polyline at fractional indices t."""
    t = np.clip(np.asarray(t, np.float64), 0.0, 16.0)
    i0 = np.minimum(np.floor(t).astype(int), 15)
    f = (t - i0)[:, None]
    return MEAN_SHAPE_3D[i0] * (1 - f) + MEAN_SHAPE_3D[i0 + 1] * f


def _smin(a: np.ndarray, b: np.ndarray, k: float = 1.5) -> np.ndarray:
    """A smooth minimum (no crease where the two surfaces meet)."""
    m = np.minimum(a, b)
    return m - k * np.log(np.exp(-(a - m) / k) + np.exp(-(b - m) / k))


def _profile_drape(x: np.ndarray, y: np.ndarray, shape: Shape) -> np.ndarray:
    """Depth of fabric draped in front of the mean face at head positions (x, y).

    Down the midline the fabric runs straight from the bridge over the nose tip to the chin
    (the lower convex profile of points 27, 30 and 8: it does not dip into the lips), then back
    under the chin; across the face it curves back to the jaw with the design's ``wrap``.
    """
    m = MEAN_SHAPE_3D
    ys = np.array([m[27, 1] - 20.0, m[27, 1], m[30, 1], m[8, 1], m[8, 1] + 12.0])
    zs = np.array([m[27, 2] + 11.0, m[27, 2], m[30, 2], m[8, 2], m[8, 2] + 30.0])
    spine = np.interp(y, ys, zs) - shape.standoff
    spine -= 1.2 * np.exp(-(((y - 46.0) / 7.0) ** 2))  # the soft chin in front of point 8
    jaw = m[0:9]
    side_x = np.interp(y, jaw[:, 1], np.abs(jaw[:, 0]), left=abs(jaw[0, 0]), right=6.0)
    side_z = np.interp(y, jaw[:, 1], jaw[:, 2], left=jaw[0, 2], right=jaw[8, 2]) - 0.5 * shape.standoff
    s = np.clip(np.abs(x) / np.maximum(side_x, 1.0), 0.0, 1.2)
    return spine + (side_z - spine) * np.minimum(s, 1.0) ** shape.wrap + 20.0 * np.maximum(s - 1.0, 0.0)


def _boundary(wear: str, shape: Shape) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(top, bottom, left, right) boundary curves of the patch on the mean face, at the knots."""
    g = WEAR[wear]
    m = MEAN_SHAPE_3D
    iod = float(np.linalg.norm(m[42:48].mean(0) - m[36:42].mean(0)))
    centre = 0.5 * (m[30] + m[62])
    side_off = iod * (0.05 + 0.06 * (shape.width - 1.0))

    def jaw_out(t: np.ndarray) -> np.ndarray:
        p = _jaw(t)
        o = p[:, :2] - centre[:2]
        o /= np.maximum(np.linalg.norm(o, axis=1, keepdims=True), 1e-6)
        p[:, :2] += o * side_off
        p[:, 2] -= 0.5 * shape.standoff
        bump = np.maximum(1.0 - np.abs(np.asarray(t) - 8.0) / 5.0, 0.0)
        p[:, 1] += bump * 5.0 * g.chin_wrap * shape.chin
        p[:, 2] += bump * 12.0 * g.chin_wrap * shape.chin * g.chin_back
        return p

    nu = len(_US)
    bottom = jaw_out(g.bottom_side + (16.0 - 2 * g.bottom_side) * _US)
    left = jaw_out(g.top_side + (g.bottom_side - g.top_side) * _VS)
    right = jaw_out((16.0 - g.top_side) - (g.bottom_side - g.top_side) * _VS)
    a, b, tt = g.top_centre
    peak = m[a] + (m[b] - m[a]) * tt
    tl, tr = left[0], right[0]
    # the top edge: x linear from corner to corner; y through waypoints below the eyes
    xs = tl[0] + (tr[0] - tl[0]) * _US
    if g.under_eyes:
        # below the inner eye corners, the lower lids and the outer corners, by a margin
        wx = np.array([m[36, 0], m[40, 0], m[39, 0] * 0.9, 0.0])
        wy = np.array([m[36, 1] + 7.5, max(m[40, 1], m[41, 1]) + 4.6, m[39, 1] + 3.4, peak[1]])
        half_x = np.concatenate([[tl[0]], wx])
        half_y = np.concatenate([[tl[1]], wy])
        ys = np.interp(-np.abs(xs), half_x, half_y)
    else:
        s = np.abs(2 * _US - 1)
        ys = peak[1] + (tl[1] - peak[1]) * s
    ys = ys + g.cheek_sag * np.sin(np.pi * np.abs(2 * _US - 1))  # the edge sags over the cheeks
    ys[0], ys[-1] = tl[1], tr[1]
    top = np.stack([xs, ys, np.zeros(nu)], 1)
    top[:, 2] = _profile_drape(top[:, 0], top[:, 1], shape) + 0.6 * shape.standoff
    top[0], top[-1] = tl, tr
    left[-1], right[-1] = bottom[0], bottom[-1]
    return top, bottom, left, right


def _coons(top, bottom, left, right) -> np.ndarray:
    """The bilinearly blended Coons patch of four boundary curves, sampled at the knots."""
    u = _US[None, :, None]
    v = _VS[:, None, None]
    ruled_v = (1 - v) * top[None] + v * bottom[None]
    ruled_u = (1 - u) * left[:, None] + u * right[:, None]
    p00, p10, p01, p11 = top[0], top[-1], bottom[0], bottom[-1]
    bil = (1 - u) * (1 - v) * p00 + u * (1 - v) * p10 + (1 - u) * v * p01 + u * v * p11
    return ruled_v + ruled_u - bil


def mean_patch(wear: str, shape: Shape) -> np.ndarray:
    """Knots (len(_VS), len(_US), 3) of the mask on the mean face (head coordinates)."""
    top, bottom, left, right = _boundary(wear, shape)
    p = _coons(top, bottom, left, right)
    drape = _profile_drape(p[..., 0], p[..., 1], shape)
    # inside the outline the fabric drapes in front of the face; its edges lie on it
    inner = np.sin(np.pi * _US)[None, :] ** 0.5 * np.sin(np.pi * _VS)[:, None] ** 0.5
    p[..., 2] = _smin(p[..., 2], drape) * inner + p[..., 2] * (1 - inner)
    uu, vv = np.meshgrid(_US, _VS)
    if shape.cup:  # rising slowly from the nose wire, so the top edge stays on the bridge
        p[..., 2] -= shape.cup * np.sin(np.pi * uu) ** 0.7 * np.sin(np.pi * np.minimum(vv * 1.15, 1.0)) ** 1.4
    if shape.ridge:
        p[..., 2] -= shape.ridge * np.clip(1.0 - np.abs(2 * uu - 1) / 0.9, 0, 1) ** 1.5 * np.sin(np.pi * vv) ** 0.4
    if shape.fold:
        p[..., 2] -= shape.fold * np.exp(-(((vv - shape.fold_v) / 0.12) ** 2)) * np.sin(np.pi * uu) ** 0.6
    return p


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


@functools.lru_cache(maxsize=1)
def _tps_inverse() -> np.ndarray:
    """The thin-plate spline system of the control landmarks, inverted: (n + 4, n)."""
    c = MEAN_SHAPE_3D[_CTRL]
    n = len(c)
    phi = np.linalg.norm(c[:, None] - c[None], axis=2) + _TPS_SMOOTH * np.eye(n)
    p = np.concatenate([np.ones((n, 1)), c], 1)
    lhs = np.zeros((n + 4, n + 4))
    lhs[:n, :n] = phi
    lhs[:n, n:] = p
    lhs[n:, :n] = p.T
    return np.linalg.inv(lhs)[:, :n]


def control_displacement(head: Head) -> np.ndarray:
    """(n_ctrl, 3): how this face's control landmarks moved from the mean face; a point's
    displacement is ``tps_weights(point) @ this``."""
    return head.points[_CTRL] - MEAN_SHAPE_3D[_CTRL]


def tps_weights(points: np.ndarray) -> np.ndarray:
    """(len(points), n_ctrl): displacement at ``points`` = this @ control displacements."""
    c = MEAN_SHAPE_3D[_CTRL]
    k = np.concatenate([np.linalg.norm(points[:, None] - c[None], axis=2), np.ones((len(points), 1)), points], 1)
    return k @ _tps_inverse()


@dataclass(frozen=True)
class MeshModel:
    """Everything about a mask's mesh that does not depend on the face (built once)."""

    mean: np.ndarray  # (rows * cols, 3) knots on the mean face, incl. the outer ring
    warp: np.ndarray  # (rows * cols, n_ctrl) thin-plate spline weights
    us: np.ndarray
    vs: np.ndarray
    patch_area: np.ndarray  # (rows - 1, cols - 1) head-frame XY area of each cell on the mean face
    skin: np.ndarray  # (rows, cols) 1 where the knot lies over skin that shows the face's light


@functools.lru_cache(maxsize=64)
def mesh_model(wear: str, shape: Shape, extent: tuple[float, float, float, float]) -> MeshModel:
    em, us, vs = _extend_matrix(tuple(float(e) for e in extent))
    patch = mean_patch(wear, shape)
    mean = em @ patch.reshape(-1, 3)
    warp = tps_weights(mean)
    area = _xy_area(mean.reshape(len(vs), len(us), 3))
    skin = _skin_knots(mean).reshape(len(vs), len(us))
    for a in (mean, warp, area, skin):
        a.flags.writeable = False
    return MeshModel(mean, warp, us, vs, area, skin)


def _inside(poly: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Points (n, 2) inside a closed polygon (k, 2), by the even-odd rule."""
    x, y = p[:, 0:1], p[:, 1:2]
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    cross = ((y0 > y) != (y1 > y)) & (x < (x1 - x0) * (y - y0) / np.where(y1 == y0, 1e-12, y1 - y0) + x0)
    return cross.sum(1) % 2 == 1


def _skin_knots(knots: np.ndarray) -> np.ndarray:
    """1.0 for mean-face knots over lit skin: inside the jaw/brow outline, not over the eyes,
    the nostrils or the mouth (an open mouth is dark: it must not darken the mask)."""
    m = MEAN_SHAPE_3D[:, :2]
    xy = knots[:, :2]
    outline = m[[*range(0, 17), 26, 25, 24, 23, 22, 21, 20, 19, 18, 17]]
    ok = _inside(outline, xy)
    for part in (range(48, 60), range(36, 42), range(42, 48), (31, 32, 33, 34, 35, 30)):
        pts = m[list(part)]
        c = pts.mean(0)
        ok &= ~_inside(c + (pts - c) * 1.3, xy)  # a little beyond the part
    return ok.astype(np.float64)



def _xy_area(g: np.ndarray) -> np.ndarray:
    """Signed XY area of each cell of a knot grid (positive for u right, v down); grids may be
    stacked along leading axes."""
    a = g[..., :-1, 1:, :2] - g[..., :-1, :-1, :2]
    b = g[..., 1:, 1:, :2] - g[..., :-1, :-1, :2]
    c = g[..., 1:, :-1, :2] - g[..., :-1, :-1, :2]
    return 0.5 * (a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0] + b[..., 0] * c[..., 1] - b[..., 1] * c[..., 0])


# -------------------------------------------------------------------------- the face's mesh


@dataclass
class FaceMesh:
    """A mask's mesh on one face."""

    head: Head
    knots: np.ndarray  # (rows, cols, 3) head coordinates
    xy: np.ndarray  # (rows, cols, 2) image positions
    depth: np.ndarray  # (rows, cols) camera depth
    normals: np.ndarray  # (rows, cols, 3) camera-frame unit normals (toward the camera: z < 0)
    front: np.ndarray  # (rows - 1, cols - 1) bool: the cell faces the camera
    us: np.ndarray
    vs: np.ndarray
    fold: float  # share of the patch (mean-face area) folded or crushed by the landmarks
    skin: np.ndarray | None = None  # (rows, cols) knots over lit skin (MeshModel.skin)
    cell_area: np.ndarray | None = None  # (rows - 1, cols - 1) signed image area of each cell
    frontal_area: float = 0.0  # the patch's area seen head-on at this face's scale (pixels)
    disp: np.ndarray | None = None  # control_displacement(head): carries other points too

    def patch_xy(self) -> np.ndarray:
        """Image positions of the patch knots (u, v in [0, 1]) without the outer ring."""
        return self.xy[1:-1, 1:-1]


def face_mesh(lm: np.ndarray, image_shape: tuple[int, int], wear: str, shape: Shape,
              extent: tuple[float, float, float, float], head: Head | None = None) -> FaceMesh | None:
    """The mask's mesh on the face of ``lm``; None when no head can be posed."""
    head = head or fit_head(lm, image_shape)
    if head is None:
        return None
    mm = mesh_model(wear, shape, extent)
    r, c = len(mm.vs), len(mm.us)
    disp = control_displacement(head)
    knots = mm.mean + mm.warp @ disp
    g = knots.reshape(r, c, 3)
    xy, z = head.project(knots)
    if wear == "correct":
        need = _eye_clearance(xy.reshape(r, c, 2), np.asarray(lm, np.float64))
        if need.max() > 0:  # pixels -> head units at this face's scale, down the head's Y axis
            push = np.maximum(_CLEAR_ROWS[0][:, None] * need[0], _CLEAR_ROWS[1][:, None] * need[1])
            g[:4, :, 1] += push * (float(z.sum()) / len(z) / head.f)
            knots = g.reshape(-1, 3)
            xy, z = head.project(knots)
    # outward normals (toward the camera is -z in head coordinates): dv x du, central differences
    du = np.empty_like(g)
    du[:, 1:-1] = g[:, 2:] - g[:, :-2]
    du[:, 0] = g[:, 1] - g[:, 0]
    du[:, -1] = g[:, -1] - g[:, -2]
    dv = np.empty_like(g)
    dv[1:-1] = g[2:] - g[:-2]
    dv[0] = g[1] - g[0]
    dv[-1] = g[-1] - g[-2]
    n = np.empty_like(g)
    n[..., 0] = dv[..., 1] * du[..., 2] - dv[..., 2] * du[..., 1]
    n[..., 1] = dv[..., 2] * du[..., 0] - dv[..., 0] * du[..., 2]
    n[..., 2] = dv[..., 0] * du[..., 1] - dv[..., 1] * du[..., 0]
    n *= 1.0 / np.maximum(np.sqrt((n * n).sum(2)), 1e-9)[..., None]
    normals = n @ head.R.T
    xy = xy.reshape(r, c, 2)
    # image areas, and head-frame areas for the folds: cells of the patch the landmarks crushed
    # or turned over (in head coordinates, so a turned head's foreshortening does not count)
    area, own = _xy_area(np.stack([xy, g[..., :2]]))  # both in one pass
    own = own[1:-1, 1:-1]
    ref = mm.patch_area[1:-1, 1:-1]
    crushed = np.minimum(np.maximum(1.0 - own / np.maximum(ref * 0.35, 1e-9), 0.0), 1.0)
    fold = float((crushed * ref).sum() / max(ref.sum(), 1e-9))
    # cells facing away are culled where they run out to a side edge (the far side wraps out of
    # sight); further inside a row (the landmarks pulled the surface into an S-fold) they stay,
    # and count as a fold
    back = area[1:-1, 1:-1] <= 0
    front = np.ones_like(area, dtype=bool)
    scale = head.f * len(z) / float(z.sum())
    frontal = float(np.abs(own).sum()) * scale * scale
    if not back.any():  # (most faces) every cell faces the camera
        return FaceMesh(head, g, xy, z.reshape(r, c), normals, front, mm.us, mm.vs, fold, mm.skin, area, frontal, disp)
    left, lf = _runs_from_edge(back)
    right, rf = _runs_from_edge(back[:, ::-1])
    right = right[:, ::-1]
    # culled: runs that reach the side edge (the far side wrapping out of sight); left alone:
    # runs just inside it (the jaw landmarks at the silhouette curl the very edge back)
    cull = (left & (lf == 0)[:, None]) | (right & (rf == 0)[:, None])
    near = (left & (lf < _CURL)[:, None]) | (right & (rf < _CURL)[:, None])
    front[1:-1, 1:-1] = ~cull
    inner = back & ~near
    if inner.any():
        fold = min(1.0, fold + float((ref * inner).sum() / max(ref.sum(), 1e-9)))
    return FaceMesh(head, g, xy, z.reshape(r, c), normals, front, mm.us, mm.vs, fold, mm.skin, area, frontal, disp)


_CURL = 3  # a turned-away run starting this close to a side edge is the far side's wrap


def _runs_from_edge(back: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row (left edge; flip for the right): the first run of cells facing away, and where
    it starts (column index, ``c`` when none)."""
    r, c = back.shape
    idx = np.arange(c)[None, :]
    first = np.where(back.any(1), back.argmax(1), c)[:, None]
    again = ~back & (idx >= first)
    end = np.where(again.any(1), again.argmax(1), c)[:, None]
    return (idx >= first) & (idx < end), first[:, 0]


_LIDS = np.array([36, 41, 40, 39, 42, 47, 46, 45])  # lower lids and eye corners
# how much of a push down the rows 0-3 take when the top row (first line) or the second row
# (second line) comes too close to an eye
_CLEAR_ROWS = np.array([[1.0, 1.0, 0.5, 0.2], [0.0, 0.0, 1.0, 0.4]])


def _eye_clearance(xy: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """(2, cols): per knot of the patch's two top rows, how far (pixels, along the face's down direction) the edge must move
    down so that it passes at least 0.14 inter-ocular distances below every lower-lid point and
    eye corner in the image (landmark noise, parallax of a face looking up). Both top rows of
    the patch are checked: a design's edge may lie between them, and a cup or ridge standing
    off the nose moves the second row in the image."""
    ex = (lm[42:48].sum(0) - lm[36:42].sum(0)) / 6.0
    iod = max(float(np.hypot(ex[0], ex[1])), 1.0)
    ex = ex / iod
    down = np.array([-ex[1], ex[0]])
    rows = xy[1:3]  # (2, cols, 2); row 0 is the outer ring
    ka, kd = rows @ ex, rows @ down  # (2, cols)
    lids = lm[_LIDS]
    la, ld = lids @ ex, lids @ down
    # every edge segment spanning a lid point across the face (a turned head's far side may
    # fold the edge, so several can), pushed down by its own shortfall there
    a0, a1 = ka[:, :-1, None], ka[:, 1:, None]
    span = (la >= np.minimum(a0, a1)) & (la <= np.maximum(a0, a1))
    da = a1 - a0
    t = (la - a0) / np.where(np.abs(da) < 1e-9, 1e-9, da)
    edge = kd[:, :-1, None] + t * (kd[:, 1:, None] - kd[:, :-1, None])
    clear = 0.14 * iod
    short = np.maximum(np.where(span, ld + clear - edge, 0.0).max(2), 0.0)  # (2 rows, segments)
    need = np.zeros((2, xy.shape[1]))
    np.maximum(need[:, :-1], short, out=need[:, :-1])
    np.maximum(need[:, 1:], short, out=need[:, 1:])
    # and every knot itself clears a disc around each eye point: where the edge climbs steeply
    # (over the nose bridge of a turned or raised head) a knot beside an eye corner is above it
    # while the segment through it passes within a pixel (the down-only test above misses it)
    dx = ka[..., None] - la
    near = np.abs(dx) < clear
    lift = np.where(near, ld + np.sqrt(np.maximum(clear * clear - dx * dx, 0.0)) - kd[..., None], 0.0)
    np.maximum(need, lift.max(2), out=need)
    return need


# ---------------------------------------------------------------------- image -> template map


@dataclass
class MaskMap:
    """Dense template coordinates for every pixel of an image ROI."""

    x0: int
    y0: int
    map_u: np.ndarray  # (h, w) float32, template u (pixels when ``to_pixels`` was given)
    map_v: np.ndarray  # (h, w) float32, template v
    mesh: np.ndarray  # (rows, cols, 2) image positions of the mesh knots (incl. the outer ring)
    dense: np.ndarray | None = None  # (h, w, 2) float32 (u, v): one CV_32FC2 map for cv2.remap
    fu: np.ndarray | None = None  # (gh, gw) knot column index of the coarse samples
    fv: np.ndarray | None = None  # (gh, gw) knot row index
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # (x0, y0, x1, y1) of the mesh (the coarse grid)
    visible: np.ndarray | None = None  # (h, w) float32 coverage of the visible cells, None = all


def mask_map(
    grid: np.ndarray,
    extent: tuple[float, float, float, float],
    image_shape: tuple[int, int],
    step: float = 7.0,
    extra_points: np.ndarray | None = None,
    to_pixels: tuple[float, float, float, float] | None = None,
    knot_params: tuple[np.ndarray, np.ndarray] | None = None,
    front: np.ndarray | None = None,
    depth: np.ndarray | None = None,
) -> MaskMap | None:
    """Inverse piecewise-affine map image ROI -> template (u, v); None when off-image.

    ``grid`` is the mesh's image positions (rows, cols, 2), including the outer ring that
    reaches ``extent``; ``knot_params = (us, vs)`` are its knots' template coordinates. The ROI
    covers the mesh and ``extra_points`` (ear loops). ``front`` / ``depth`` (per cell / per
    knot) cull cells facing away and let the nearer of overlapping cells win. ``to_pixels =
    (u0, su, v0, sv)`` returns remap-ready template pixel coordinates ``(u - u0) * su - 0.5``
    (applied on the coarse grid: free, the resize is linear).
    """
    mesh = grid
    if knot_params is None:
        raise ValueError("knot_params (us, vs) are required")
    us, vs = knot_params
    h, w = image_shape
    mp = mesh.reshape(-1, 2)
    mx0, my0, mx1, my1 = _bbox(mp, w, h)
    x0, y0, x1, y1 = mx0, my0, mx1, my1
    if extra_points is not None and len(extra_points):  # the box of both = the union of the boxes
        ex0, ey0, ex1, ey1 = _bbox(np.asarray(extra_points, np.float64).reshape(-1, 2), w, h)
        x0, y0, x1, y1 = min(x0, ex0), min(y0, ey0), max(x1, ex1), max(y1, ey1)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    rw, rh = mx1 - mx0, my1 - my0
    if rw < 2 or rh < 2:
        return None
    # about 7 px between samples, at most 32 a side (a mesh cell then still spans 2+ samples)
    gw = int(min(max(np.ceil(rw / step), 4), 32))
    gh = int(min(max(np.ceil(rh / step), 4), 32))
    # sample positions that make cv2.resize (INTER_LINEAR) interpolate exactly between them
    sx = (np.arange(gw) + 0.5) * (rw / gw) - 0.5 + mx0
    sy = (np.arange(gh) + 0.5) * (rh / gh) - 0.5 + my0
    px = np.broadcast_to(sx, (gh, gw)).ravel()  # = np.tile(sx, gh), without its Python overhead
    py = np.repeat(sy, gw)
    prio = None
    if front is not None or depth is not None:
        prio = _cell_priority(mesh.shape[0], mesh.shape[1], front, depth)
    fu, fv = invert_mesh(mesh, px, py, axes=(sx, sy), priority=prio)
    u = _index_to_coord(fu, us)
    v = _index_to_coord(fv, vs)
    if to_pixels is not None:
        tu0, su, tv0, sv = to_pixels
        u = (u - tu0) * su - 0.5
        v = (v - tv0) * sv - 0.5
    coarse = np.empty((gh, gw, 2), np.float32)
    coarse[..., 0] = u.reshape(gh, gw)
    coarse[..., 1] = v.reshape(gh, gw)
    dense = cv2.resize(coarse, (rw, rh), interpolation=cv2.INTER_LINEAR)
    if (mx0, my0, mx1, my1) != (x0, y0, x1, y1):
        # outside the mesh box: far outside the template (transparent after the remap)
        dense = cv2.copyMakeBorder(dense, my0 - y0, y1 - my1, mx0 - x0, x1 - mx1, cv2.BORDER_CONSTANT, value=(-1e4, -1e4))
    visible = None
    if front is not None and not front.all():
        visible = _visible_cells(mesh, front, x0, y0, x1 - x0, y1 - y0)
    return MaskMap(x0, y0, dense[..., 0], dense[..., 1], mesh, dense, fu.reshape(gh, gw), fv.reshape(gh, gw),
                   (mx0, my0, mx1, my1), visible)


def _cell_priority(r: int, c: int, front: np.ndarray | None, depth: np.ndarray | None) -> np.ndarray:
    """Per cell, higher wins where cells overlap: facing the camera, then the patch over the
    extrapolated ring, then the nearer."""
    prio = np.zeros((r - 1, c - 1))
    if front is not None:
        prio += 4.0 * front
    prio += 2.0 * _patch_cells(r, c).reshape(r - 1, c - 1)
    if depth is not None:
        zc = 0.25 * (depth[:-1, :-1] + depth[1:, :-1] + depth[:-1, 1:] + depth[1:, 1:])
        span = float(zc.max() - zc.min()) + 1e-9
        prio += 1.0 - (zc - zc.min()) / span  # in [0, 1]: nearer is higher
    return prio.ravel()


def _visible_cells(mesh: np.ndarray, front: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Anti-aliased coverage (h, w) of the cells that face the camera (the silhouette where the
    surface turns away)."""
    shift = 4
    q = np.round((mesh - (x0, y0)) * (1 << shift)).astype(np.int32)
    jj, ii = np.nonzero(front)
    polys = np.stack([q[jj, ii], q[jj, ii + 1], q[jj + 1, ii + 1], q[jj + 1, ii]], 1)
    canvas = np.zeros((h, w), np.uint8)
    cv2.fillPoly(canvas, list(polys), 255, cv2.LINE_AA, shift)
    out = canvas.astype(np.float32)
    out *= 1.0 / 255.0
    return out


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


def knot_values(values: np.ndarray, fu: np.ndarray, fv: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of per-knot values (rows, cols, ...) at fractional knot indices."""
    r, c = values.shape[:2]
    fu = np.minimum(np.maximum(fu, 0.0), c - 1.0)
    fv = np.minimum(np.maximum(fv, 0.0), r - 1.0)
    i = np.minimum(fu.astype(np.intp), c - 2)
    j = np.minimum(fv.astype(np.intp), r - 2)
    a = (fu - i).reshape(-1, 1)
    b = (fv - j).reshape(-1, 1)
    na, nb = 1 - a, 1 - b
    # the four corners as row gathers from the flat knot table (cheaper than 2-D fancy indexing)
    flat = values.reshape(r * c, -1)
    k = (j * c + i).reshape(-1)
    out = (np.take(flat, k, axis=0) * na * nb + np.take(flat, k + 1, axis=0) * a * nb
           + np.take(flat, k + c, axis=0) * na * b + np.take(flat, k + (c + 1), axis=0) * a * b)
    return out.reshape(fu.shape + values.shape[2:])


def invert_mesh(
    mesh: np.ndarray,
    px: np.ndarray,
    py: np.ndarray,
    eps: float = 1e-3,
    axes: tuple[np.ndarray, np.ndarray] | None = None,
    priority: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fractional knot indices (column, row) of image points in a triangulated quad mesh.

    Each cell is split into triangles (00, 10, 11) and (00, 11, 01), each an exact affine map.
    Every point is tested against the cells whose bounding box holds it (a few per point, all
    pairs at once: no per-point walk). Where cells overlap, the cell of highest ``priority``
    wins (default: a patch cell over the extrapolated outer ring), then the cell the point lies
    deepest in. Points in no cell lie beyond the mesh, outside the template: their indices
    continue outwards from the nearest point of the outline.

    ``axes = (xs, ys)`` says the points are the grid ``px = tile(xs, len(ys))``,
    ``py = repeat(ys, len(xs))``: the bounding-box test then runs per column and per row.
    """
    r, c = mesh.shape[:2]
    # per-cell constants of both triangles (x and y together), and each cell's bounding box
    p00, p10, p11, p01 = mesh[:-1, :-1], mesh[:-1, 1:], mesh[1:, 1:], mesh[1:, :-1]
    va, vb, vc = p10 - p00, p11 - p00, p01 - p00
    ax, ay, bx, by, cx, cy = va[..., 0], va[..., 1], vb[..., 0], vb[..., 1], vc[..., 0], vc[..., 1]
    den = ax * by - bx * ay
    den2 = bx * cy - cx * by
    den[np.abs(den) < 1e-9] = 1e-9
    den2[np.abs(den2) < 1e-9] = 1e-9
    i1, i2 = 1.0 / den, 1.0 / den2
    cell = np.empty(den.shape + (10,))
    cell[..., :2] = p00
    cell[..., 2], cell[..., 3], cell[..., 4], cell[..., 5] = by * i1, -bx * i1, -ay * i1, ax * i1
    cell[..., 6], cell[..., 7], cell[..., 8], cell[..., 9] = cy * i2, -cx * i2, -by * i2, bx * i2
    cell = cell.reshape(-1, 10)
    lo = np.minimum(np.minimum(p00, p10), np.minimum(p11, p01)).reshape(-1, 2) - 1e-6
    hi = np.maximum(np.maximum(p00, p10), np.maximum(p11, p01)).reshape(-1, 2) + 1e-6
    lo_x, lo_y, hi_x, hi_y = lo[:, 0], lo[:, 1], hi[:, 0], hi[:, 1]
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
    # the winner is written last (fancy assignment keeps the last value)
    prio = _patch_cells(r, c) * 2.0 if priority is None else priority * 2.0
    hit = hit[np.argsort(np.minimum(depth[hit], 0.5) + prio[k[hit]], kind="stable")]
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
    # samples on either side of the outline never sweeps across the design.
    a, ab, ia, iab, outward, across = _outline(mesh)
    qx = px[out, None] - a[:, 0]
    qy = py[out, None] - a[:, 1]
    abx, aby = ab[:, 0], ab[:, 1]
    t = qx * abx
    t += qy * aby
    t *= 1.0 / np.maximum(abx * abx + aby * aby, 1e-12)
    np.maximum(t, 0.0, out=t)  # clip to the segment (np.clip's dispatch costs more than both)
    np.minimum(t, 1.0, out=t)
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


def forward_fixed(grid: np.ndarray, u: tuple[float, ...], v: tuple[float, ...]) -> np.ndarray:
    """Positions of template points (u, v) inside the patch, bilinear in the patch knot grid
    (image (.., 2) or head (.., 3) grids alike); their weights are cached (loop anchors)."""
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
