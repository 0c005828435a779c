"""Mask synthesis on real faces: every design and wear mode, fit, determinism, colours, textures,
template packs, realism properties and per-image statuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from maskgen.masks import (
    FIT_POINTS,
    MASK_TYPES,
    PALETTE,
    PATTERNS,
    WEAR_MODES,
    Face,
    MaskSpec,
    align_face,
    detect_faces,
    load_image,
    mask_face,
    pack_names,
)
from maskgen.masks import textures
from maskgen.masks.api import get_template

N_LFW = 12


@pytest.fixture(scope="module")
def astro_face(astronaut: np.ndarray) -> Face:
    return detect_faces(astronaut)[0]


@pytest.fixture(scope="module")
def lfw_faces(lfw_dir: Path) -> list[tuple[np.ndarray, Face]]:
    files = sorted(lfw_dir.glob("*/*.jpg"))
    out = []
    for f in files[7 :: max(1, len(files) // N_LFW)][:N_LFW]:
        img, _ = load_image(f)
        faces = detect_faces(img, select="center")
        if faces:
            out.append((img, faces[0]))
    assert len(out) >= N_LFW - 1
    return out


def _alpha_at(alpha: np.ndarray, pts: np.ndarray) -> np.ndarray:
    xy = np.round(pts).astype(int)
    return alpha[xy[:, 1], xy[:, 0]]


def _check_cover(res, face: Face, wear: str) -> np.ndarray:
    must, free = FIT_POINTS[wear]
    must = [k for k in must if k != 30]  # the nose tip is checked by the callers
    a = _alpha_at(res.alpha, face.landmarks)
    assert (a[must] > 0.5).all(), f"{wear}: must-cover points uncovered: {a[must].round(2)}"
    assert (a[list(free)] < 0.05).all(), f"{wear}: covered points that must stay visible: {a[list(free)].round(2)}"
    if wear == "correct":
        assert (a[48:60] > 0.9).all()  # the mouth
    assert (a[36:48] < 0.05).all()  # the eyes are never covered
    return a


@pytest.mark.parametrize("kind", MASK_TYPES)
@pytest.mark.parametrize("wear", WEAR_MODES)
def test_astronaut_every_type_and_wear(astronaut: np.ndarray, astro_face: Face, kind: str, wear: str) -> None:
    res = mask_face(astronaut, MaskSpec(type=kind, wear=wear), seed=3, faces=[astro_face])
    assert res.status == "ok" and res.image.shape == astronaut.shape and res.image.dtype == np.uint8
    if wear == "correct":
        assert res.alpha[tuple(np.round(astro_face.landmarks[30, ::-1]).astype(int))] > 0.9  # nose tip
    assert res.alpha.shape == astronaut.shape[:2] and res.alpha.dtype == np.float32
    assert 0.0 <= res.alpha.min() and res.alpha.max() <= 1.0
    assert res.fit > 0.95
    _check_cover(res, astro_face, wear)
    changed = np.abs(res.image.astype(int) - astronaut.astype(int)).sum(2) > 0
    assert changed.sum() > 2000


def test_lfw_every_type_and_wear(lfw_faces) -> None:
    nose = []
    for i, (img, face) in enumerate(lfw_faces):
        for kind in MASK_TYPES:
            for wear in WEAR_MODES:
                res = mask_face(img, MaskSpec(type=kind, wear=wear), seed=i, faces=[face])
                assert res.ok, (i, kind, wear, res.status)
                a = _check_cover(res, face, wear)
                if wear == "correct":
                    nose.append(a[30])
    # the nose tip sits well inside the mask; only a blurry face looking up and aside (its nose
    # tip a few pixels below the eye corners) may bring it to the soft edge
    nose = np.array(nose)
    assert np.mean(nose > 0.9) >= 0.9 and np.mean(nose > 0.3) == 1.0


def test_detection_inside_mask_face(astronaut: np.ndarray) -> None:
    res = mask_face(astronaut, MaskSpec(), seed=0)
    assert res.ok and len(res.faces) == 1 and res.fit > 0.95
    assert res.faces[0].pose is not None


def test_same_seed_same_pixels_different_seed_different(astronaut: np.ndarray, astro_face: Face) -> None:
    spec = MaskSpec(type="cloth", color="random", texture="random")
    a = mask_face(astronaut, spec, seed=11, faces=[astro_face])
    b = mask_face(astronaut, spec, seed=11, faces=[astro_face])
    c = mask_face(astronaut, spec, seed=12, faces=[astro_face])
    assert np.array_equal(a.image, b.image) and a.spec == b.spec
    assert not np.array_equal(a.image, c.image)
    assert a.spec.color in PALETTE and a.spec.texture in PATTERNS  # resolved choice is reported


def test_spec_random_is_seeded() -> None:
    specs = [MaskSpec.random(s) for s in range(40)]
    assert specs == [MaskSpec.random(np.random.default_rng(s)) for s in range(40)]
    assert {s.type for s in specs} == set(MASK_TYPES)
    assert {s.wear for s in specs} <= set(WEAR_MODES) and "correct" in {s.wear for s in specs}
    assert len({s.color for s in specs}) > 5
    only = MaskSpec.random(5, types=("kn95",), wears=("chin",), wear_weights=None)
    assert only.type == "kn95" and only.wear == "chin"


def test_colours_named_hex_and_errors(astronaut: np.ndarray, astro_face: Face) -> None:
    lm = astro_face.landmarks
    centre = np.round(0.5 * (lm[33] + lm[57])).astype(int)  # between nose and mouth
    means = {}
    for color in ("white", "black", "#ff0000", "#00f"):
        res = mask_face(astronaut, MaskSpec(type="cloth", color=color), seed=0, faces=[astro_face])
        y, x = centre[1], centre[0]
        means[color] = res.image[y - 3 : y + 4, x - 3 : x + 4].reshape(-1, 3).mean(0)
    assert means["white"].mean() > means["black"].mean() + 80
    assert means["#ff0000"][0] > means["#ff0000"][2] + 60
    assert means["#00f"][2] > means["#00f"][0] + 60
    for bad in ({"color": "chartreuse-ish"}, {"texture": "no-such-file.png"}, {"wear": "forehead"}, {"type": "visor"}, {"type": "pack:x"}):
        with pytest.raises(ValueError):
            MaskSpec(**bad)


@pytest.mark.parametrize("texture", PATTERNS)
def test_procedural_textures_vary_the_fabric(astronaut: np.ndarray, astro_face: Face, texture: str) -> None:
    plain = mask_face(astronaut, MaskSpec(type="surgical", color="white"), seed=0, faces=[astro_face])
    pat = mask_face(astronaut, MaskSpec(type="surgical", color="white", texture=texture), seed=0, faces=[astro_face])
    inside = pat.alpha > 0.99
    diff = np.abs(pat.image.astype(int) - plain.image.astype(int)).sum(2)[inside]
    assert (diff > 60).mean() > 0.08  # a visible share of the mask takes the second colour


def _direct_template(kind: str, rgb: tuple[int, int, int], texture: str | None, valve: bool) -> np.ndarray:
    """Level 0 of a design composed pixel by pixel in the plain order: base colour, pattern,
    flower centre, painted parts, relief x fibre, premultiplied alpha."""
    from maskgen.masks.designs import _AA_PX, _FLOWER_CENTRE, DESIGNS, _fibre, template_grid

    d = DESIGNS[kind]
    u, v = template_grid(d.extent)
    lay = d.draw(u, v, _AA_PX, valve)
    base = np.asarray(rgb, np.float64) / 255.0
    albedo = np.broadcast_to(base, u.shape + (3,)).copy()
    if texture:
        w2, centre = textures.pattern(texture, u, v, _AA_PX)
        albedo += (textures.secondary(base) - base) * w2[..., None]
        if centre is not None:
            albedo += (_FLOWER_CENTRE - albedo) * centre[..., None]
    for weight, col in lay.paint:
        albedo += (np.asarray(col) - albedo) * weight[..., None]
    fibre = _fibre(u.shape, 7, 0.03 if kind != "cloth" else 0.05)
    rgbf = np.clip(albedo * (lay.shade * fibre)[..., None], 0.0, 1.0)
    a = lay.alpha.astype(np.float64)[..., None]
    return np.clip(np.concatenate([rgbf * a, a], axis=2) * 255.0 + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "combo",
    [("surgical", (0, 90, 200), None, False), ("n95", (240, 240, 240), "floral", True), ("kn95", (20, 20, 20), "checks", True),
     ("cloth", (200, 10, 10), "dots", False), ("bandana", (12, 200, 30), "stripes", False), ("n95", (90, 90, 90), None, True)],
)
def test_template_colouring_matches_the_direct_composition(combo) -> None:
    """Templates colour a cached, colour-free fabric (one linear transform per colour): the
    result equals composing the layers pixel by pixel, to one 8-bit level, and a rebuilt
    (evicted) template is identical to the first."""
    from maskgen.masks.designs import build_template

    direct = _direct_template(*combo)
    first = build_template(*combo).levels
    diff = np.abs(first[0].astype(int) - direct)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    build_template.cache_clear()
    again = build_template(*combo).levels
    assert len(again) == len(first) and all(np.array_equal(a, b) for a, b in zip(first, again))


def test_pyramid_drops_level0_and_remakes_the_same_bytes() -> None:
    from maskgen.masks.designs import Pyramid, _coloured

    calls = []

    def make():
        calls.append(1)
        return _coloured("surgical", (0, 90, 200), "checks", False)

    p = Pyramid(make)
    assert len(calls) == 1 and len(p) >= 4
    assert [lv.shape[:2] for lv in p[1:3]] == [((p[0].shape[0] + 1) // 2, (p[0].shape[1] + 1) // 2), ((p[1].shape[0] + 1) // 2, (p[1].shape[1] + 1) // 2)]
    assert len(calls) == 2  # level 0 was made again once, then kept
    assert np.array_equal(p[0], make()) and len(calls) == 3
    p[0]
    assert len(calls) == 3


def test_image_texture_is_tiled_not_stretched(masktheface_dir: Path) -> None:
    path = str(masktheface_dir / "textures" / "check" / "check_1.png")
    tex = textures.texture_image(path)
    out = textures.tiled(path, (300, 500), tile_width=100)
    th = int(round(tex.shape[0] * 100 / tex.shape[1]))
    assert np.allclose(out[:, :100], out[:, 100:200]) and np.allclose(out[:th], out[th : 2 * th])
    spec = MaskSpec(type="cloth", texture=path)
    assert get_template(spec).levels[0].shape[2] == 4


def test_pack_templates_load_and_fit(masktheface_dir: Path, astronaut: np.ndarray, astro_face: Face) -> None:
    names = pack_names(masktheface_dir)
    assert {"surgical", "surgical_blue", "N95", "KN95", "cloth", "gas"} <= set(names)
    for name in ("surgical_blue", "cloth", "N95"):
        res = mask_face(astronaut, MaskSpec(type=f"pack:{name}", pack=str(masktheface_dir)), seed=0, faces=[astro_face])
        assert res.ok and res.fit > 0.9, (name, res.fit)
    with pytest.raises(ValueError):
        get_template(MaskSpec(type="pack:not_there", pack=str(masktheface_dir)))


def test_outside_alpha_pixels_untouched_and_edges_antialiased(astronaut: np.ndarray, astro_face: Face) -> None:
    res = mask_face(astronaut, MaskSpec(type="kn95"), seed=0, faces=[astro_face])
    zero = res.alpha == 0
    assert np.array_equal(res.image[zero], astronaut[zero])
    soft = (res.alpha > 0.02) & (res.alpha < 0.98)
    hard = res.alpha >= 0.98
    assert soft.sum() > 0.03 * hard.sum()  # a soft rim, not a binary cut-out
    # no dark halo: a rim pixel is a blend of the face and the (white) mask, never darker than
    # that blend with the mask at half its interior brightness
    out = res.image.astype(float).mean(2)
    orig = astronaut.astype(float).mean(2)
    mask_lum = float(np.median(out[hard]))
    a = res.alpha[soft]
    assert mask_lum > 150
    assert (out[soft] >= (1 - a) * orig[soft] + a * 0.5 * mask_lum - 3).all()


def test_shading_follows_the_face_light(astronaut: np.ndarray, astro_face: Face) -> None:
    """Darken the right half of the photo: the mask must darken there too."""
    lit = astronaut.astype(np.float32)
    ramp = np.linspace(1.0, 0.35, lit.shape[1], dtype=np.float32)
    lit = np.clip(lit * ramp[None, :, None], 0, 255).astype(np.uint8)
    res = mask_face(lit, MaskSpec(type="surgical", color="white"), seed=0, faces=[astro_face])
    lm = astro_face.landmarks
    y = int(lm[51, 1])
    left = res.image[y - 2 : y + 3, int(lm[48, 0]) - 8 : int(lm[48, 0]) - 2].mean()
    right = res.image[y - 2 : y + 3, int(lm[54, 0]) + 2 : int(lm[54, 0]) + 8].mean()
    assert left > right * 1.15


def test_yawed_face_far_side_narrower(lfw_faces) -> None:
    turned = [(img, f) for img, f in lfw_faces if abs(f.pose[0]) > 12]
    if not turned:
        pytest.skip("no turned face in the subset")
    img, face = turned[0]
    res = mask_face(img, MaskSpec(type="surgical"), seed=0, faces=[face])
    nose_x = face.landmarks[30, 0]
    row = res.alpha[int(face.landmarks[51, 1])] > 0.5
    xs = np.nonzero(row)[0]
    left, right = nose_x - xs.min(), xs.max() - nose_x
    jaw_left = nose_x - face.landmarks[4, 0]
    jaw_right = face.landmarks[12, 0] - nose_x
    assert np.sign(left - right) == np.sign(jaw_left - jaw_right)


def test_two_faces_both_masked(astronaut: np.ndarray, lfw_faces) -> None:
    img = np.ascontiguousarray(np.hstack([lfw_faces[0][0], lfw_faces[1][0]]))
    res = mask_face(img, MaskSpec(), seed=0, select="all")
    assert res.ok and len(res.fits) == len(res.faces) >= 2 and res.fit == min(res.fits)
    centres = [(f.box[0] + f.box[2]) / 2 for f in res.faces]
    for cx in (125, 375):  # the subject of each LFW photo (background faces may add more)
        assert min(abs(c - cx) for c in centres) < 40
        assert res.alpha[150, cx] > 0.9  # its mouth region is covered
    one = mask_face(img, MaskSpec(), seed=0, select="largest")
    assert len(one.faces) == 1


def test_no_face_and_bad_arrays() -> None:
    blank = np.full((200, 200, 3), 100, np.uint8)
    res = mask_face(blank, MaskSpec(), seed=0)
    assert res.status == "no_face" and np.array_equal(res.image, blank) and res.alpha.max() == 0
    assert mask_face(np.zeros((50, 50), np.uint8), MaskSpec()).status.startswith("bad_image")
    assert mask_face(np.zeros((50, 50, 3), np.float32), MaskSpec()).status.startswith("bad_image")


def test_aligned_crops_masked(lfw_faces) -> None:
    for i, (img, face) in enumerate(lfw_faces):
        crop = align_face(img, face.landmarks, 112)
        res = mask_face(crop, MaskSpec.random(i, wears=("correct",)), seed=i, backend="aligned")
        assert res.ok and res.fit > 0.9, (i, res.fit)


def test_grayscale_photo_gets_a_grey_mask(astronaut: np.ndarray, astro_face: Face) -> None:
    gray = np.repeat(astronaut.mean(2, keepdims=True).astype(np.uint8), 3, axis=2)
    res = mask_face(gray, MaskSpec(type="surgical", color="blue"), seed=0, faces=[astro_face])
    inside = res.alpha > 0.5
    spread = res.image.astype(int).max(2) - res.image.astype(int).min(2)
    assert res.ok and spread[inside].max() <= 2


def test_blend_fast_path_equals_strided_path() -> None:
    """The contiguous 4-channel blend gives exactly the result of the per-view one."""
    from maskgen.masks.api import composite_roi
    from maskgen.masks.render import Rendered

    rng = np.random.default_rng(3)
    m = rng.random((40, 50, 4)).astype(np.float32) * 1.2 - 0.1
    roi0 = rng.random((40, 50, 3)).astype(np.float32)
    a0 = rng.random((40, 50)).astype(np.float32)
    outs = []
    for rgba in (m, None):
        roi, a = roi0.copy(), a0.copy()
        composite_roi(roi, a, Rendered(0, 0, m[..., :3], m[..., 3], rgba))
        outs.append((roi, a))
    assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])


def _forward_triangles(mesh: np.ndarray, fu: np.ndarray, fv: np.ndarray) -> np.ndarray:
    """Image positions of knot-index points under the triangulated mesh (the exact map that
    ``invert_mesh`` inverts): triangle (00, 10, 11) where the offset u >= v, else (00, 11, 01)."""
    r, c = mesh.shape[:2]
    i = np.minimum(np.floor(fu).astype(int), c - 2)
    j = np.minimum(np.floor(fv).astype(int), r - 2)
    ou, ov = (fu - i)[:, None], (fv - j)[:, None]
    p00, p10, p11, p01 = mesh[j, i], mesh[j, i + 1], mesh[j + 1, i + 1], mesh[j + 1, i]
    in_a = ou >= ov
    pa = p00 + (ou - ov) * (p10 - p00) + ov * (p11 - p00)
    pb = p00 + ou * (p11 - p00) + (ov - ou) * (p01 - p00)
    return np.where(in_a, pa, pb)


@pytest.mark.parametrize("wear", WEAR_MODES)
def test_invert_mesh_is_the_exact_inverse_inside_and_outside_beyond(astro_face: Face, wear: str) -> None:
    """Points inside the mesh get back the knot indices they came from; points beyond it land
    outside the index range (outside the template, transparent)."""
    from maskgen.masks.geometry import _extend_matrix, coons_grid, invert_mesh

    grid = coons_grid(astro_face.landmarks, wear)
    em, us, vs = _extend_matrix((-0.1, 1.1, -0.1, 1.5))
    mesh = (em @ grid.reshape(-1, 2)).reshape(len(vs), len(us), 2)
    r, c = mesh.shape[:2]
    rng = np.random.default_rng(0)
    fu = rng.uniform(0, c - 1, 500)
    fv = rng.uniform(0, r - 1, 500)
    p = _forward_triangles(mesh, fu, fv)
    gu, gv = invert_mesh(mesh, p[:, 0], p[:, 1])
    assert ((gu >= -1e-3) & (gu <= c - 1 + 1e-3) & (gv >= -1e-3) & (gv <= r - 1 + 1e-3)).all()
    # a preimage of every point: where the outer ring (extrapolated beyond the patch to the
    # template extent) folds over itself, the preimage is not unique
    q = _forward_triangles(mesh, np.clip(gu, 0, c - 1), np.clip(gv, 0, r - 1))
    assert np.abs(q - p).max() < 1e-6
    # inside the patch itself (no fold on this face), exactly the indices the points came from
    patch = (fu >= 1) & (fu <= c - 2) & (fv >= 1) & (fv <= r - 2)
    assert patch.sum() > 200
    assert np.abs(gu - fu)[patch].max() < 1e-6 and np.abs(gv - fv)[patch].max() < 1e-6
    # beyond the mesh: corners and edges of a box well around it
    lo, hi = mesh.reshape(-1, 2).min(0) - 15, mesh.reshape(-1, 2).max(0) + 15
    xs, ys = np.meshgrid(np.linspace(lo[0], hi[0], 9), np.linspace(lo[1], hi[1], 9))
    ring = (xs == lo[0]) | (xs == hi[0]) | (ys == lo[1]) | (ys == hi[1])
    ou, ov = invert_mesh(mesh, xs[ring], ys[ring])
    outside = (ou < 0) | (ou > c - 1) | (ov < 0) | (ov > r - 1)
    assert outside.all()
