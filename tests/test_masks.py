"""Mask synthesis on real faces: every design and wear mode, fit, determinism, colours, textures,
template packs, realism properties and per-image statuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from maskgen.masks import (
    DESIGNS,
    FIT_POINTS,
    LOW_FIT,
    MASK_TYPES,
    PATTERNS,
    WEAR_MODES,
    Face,
    MaskMix,
    MaskSpec,
    VALVE_TYPES,
    align_face,
    default_mix,
    detect_faces,
    load_image,
    mask_face,
    pack_names,
)
from maskgen.masks import textures
from maskgen.masks.api import get_template
from maskgen.masks.mix import color_family

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
    # the nose tip is checked by the callers; the bridge (29) may be given up to keep the eyes free
    must = [k for k in must if k not in (29, 30)]
    a = _alpha_at(res.alpha, face.landmarks)
    assert (a[must] > 0.5).all(), f"{wear}: must-cover points uncovered: {a[must].round(2)}"
    # (the soft, blurred edge may reach a must-stay-free point at a few percent)
    assert (a[list(free)] < 0.1).all(), f"{wear}: covered points that must stay visible: {a[list(free)].round(2)}"
    if wear == "correct":
        assert (a[48:60] > 0.9).all()  # the mouth
    assert (a[36:48] < 0.1).all()  # the eyes are never covered
    return a


@pytest.mark.parametrize("kind", MASK_TYPES)
@pytest.mark.parametrize("wear", WEAR_MODES)
def test_astronaut_every_type_and_wear(astronaut: np.ndarray, astro_face: Face, kind: str, wear: str) -> None:
    # judged on the whole photo: a chin-worn mask lies below the aligned crop (tested apart)
    res = mask_face(astronaut, MaskSpec(type=kind, wear=wear), seed=3, faces=[astro_face], fit_frame="image")
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
    # the resolved choice is reported: one of the design's colours, a print with its variant
    assert a.spec.color in dict(DESIGNS["cloth"].colors) and textures.is_pattern(a.spec.texture)
    assert a.spec.texture.split(":")[0] in PATTERNS


def test_spec_random_is_seeded() -> None:
    specs = [MaskSpec.random(s) for s in range(200)]
    assert specs == [MaskSpec.random(np.random.default_rng(s)) for s in range(200)]
    # the default recipe names its designs: surgical, n95, kn95, cloth, bandana
    assert {s.type for s in specs} == {"surgical", "n95", "kn95", "cloth", "bandana"}
    assert {s.wear for s in specs} == {"correct", "below_nose"}
    assert len({s.color for s in specs}) > 5
    assert not {s.color for s in specs} & set(textures.SKIN_LIKE)
    only = MaskSpec.random(5, types=("kn95",), wears=("chin",))
    assert only.type == "kn95" and only.wear == "chin"


def test_one_random_for_the_api_and_the_build() -> None:
    """``MaskSpec.random`` and a build's default mix are the same draw from the same recipe."""
    import importlib

    build = importlib.import_module("maskgen.pipelines.build")
    assert build.MaskMix is MaskMix  # the build draws from the masks' own recipe
    mix = MaskMix.resolve(None)
    for s in range(50):
        assert MaskSpec.random(s) == MaskSpec(**mix.draw(np.random.default_rng(s)))


def test_default_mix_follows_real_photo_frequencies() -> None:
    """White/light grey ~50 %, black ~20 %, light blue ~17 %, other colours and prints ~13 %
    (the figures in maskgen/masks/mix.py), computed exactly from the recipe."""
    shares = default_mix().colour_shares()
    fam: dict[str, float] = {}
    for name, p in shares.items():
        key = "other" if name == "print" else color_family(name)
        fam[key] = fam.get(key, 0.0) + p
    assert abs(sum(fam.values()) - 1.0) < 1e-9
    assert abs(fam["white/light grey"] - 0.50) < 0.02
    assert abs(fam["black"] - 0.20) < 0.02
    assert abs(fam["light blue"] - 0.17) < 0.02
    assert abs(fam["other"] - 0.13) < 0.03
    assert not set(shares) & set(textures.SKIN_LIKE)
    # the draws follow the recipe
    rng = np.random.default_rng(0)
    draws = [default_mix().draw(rng) for _ in range(4000)]
    black = np.mean([d["color"] == "black" and d["texture"] is None for d in draws])
    assert abs(black - shares["black"]) < 0.025
    # the whole palette, skin-like colours included, is still a recipe away
    pal = MaskMix.resolve("palette")
    assert set(textures.SKIN_LIKE) <= set(pal.colour_shares())


def test_adding_a_design_leaves_the_default_mix_alone() -> None:
    """A newly registered design is available by name and by recipe, and never enters the
    default mix (which names its designs and weights)."""
    from maskgen.masks.designs import base
    from maskgen.masks.designs.surgical import draw

    before = [default_mix().draw(np.random.default_rng(s)) for s in range(30)]
    extra = base.register(base.Design("test-visor", draw, "white"))
    try:
        fresh = MaskMix.resolve(None)
        assert [fresh.draw(np.random.default_rng(s)) for s in range(30)] == before
        only = MaskMix.resolve(None, mask_types=["test-visor"])
        assert {only.draw(np.random.default_rng(s))["type"] for s in range(10)} == {"test-visor"}
    finally:
        del base.DESIGNS[extra.name]


def test_mix_recipes_and_errors(tmp_path: Path) -> None:
    y = tmp_path / "mix.yaml"
    y.write_text("wear: {correct: 1}\nlooks:\n  - {type: n95, weight: 1, colors: [white]}\n  - {type: cloth, weight: 1, colors: {navy: 1}, textures: [plaid]}\n")
    m = MaskMix.resolve(str(y))
    draws = [m.draw(np.random.default_rng(s)) for s in range(40)]
    assert {d["type"] for d in draws} == {"n95", "cloth"}
    assert all(d["texture"].startswith("plaid:") for d in draws if d["type"] == "cloth")
    root = Path(__file__).resolve().parents[1]
    for f in sorted((root / "configs").glob("mask_mix_*.yaml")):  # every shipped example parses
        assert MaskMix.resolve(str(f)).looks
    looks = MaskMix.resolve(str(root / "configs" / "mask_mix_looks.yaml"))
    assert {lk.type for lk in looks.looks} == {"surgical", "kf94", "n95", "cloth"}
    old = MaskMix.resolve({"types": {"surgical": 1}, "colors": ["red"], "texture_prob": 0})
    assert {old.draw(np.random.default_rng(s))["color"] for s in range(10)} == {"red"}
    for bad in ({"types": ["visor"]}, {"looks": [{"type": "n95", "colors": ["chartreuse-ish"]}]}, {"shape": 1},
                {"looks": [{"type": "n95"}], "types": ["n95"]}, {"valve_prob": 2}):
        with pytest.raises(ValueError):
            MaskMix.resolve(bad)
    with pytest.raises(ValueError):
        MaskMix.resolve("no-such-recipe")
    # designs carry their own properties: the valve list comes from them
    assert VALVE_TYPES == tuple(n for n in MASK_TYPES if DESIGNS[n].valve) and "n95" in VALVE_TYPES
    with pytest.raises(ValueError, match="cannot carry a valve"):
        MaskSpec(type="surgical", valve=True)


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
    """Level 0 of a design composed pixel by pixel in the plain order: base colour, each print
    layer and painted part blended over it, relief x micro-texture (x the print's relief),
    premultiplied alpha."""
    from maskgen.masks.designs import AA_PX, DESIGNS, micro_texture, template_grid

    d = DESIGNS[kind]
    u, v = template_grid(d.extent)
    lay = d.draw(u, v, AA_PX, valve)
    base = np.asarray(rgb, np.float64) / 255.0
    second = textures.secondary(base)
    albedo = np.broadcast_to(base, u.shape + (3,)).copy()
    relief = lay.shade * micro_texture(u.shape, d.fabric)
    layers = []
    if texture:
        pr = textures.pattern(texture, u, v, AA_PX)
        layers += pr.layers
        if pr.relief is not None:
            relief = relief * pr.relief
    layers += [(w, textures.Ink(fixed=tuple(c))) for w, c in lay.paint]
    for weight, ink in layers:
        col = ink.base * base + ink.second * (second - base) + np.asarray(ink.fixed)
        albedo += (col - albedo) * np.asarray(weight)[..., None]
    rgbf = np.clip(albedo * relief[..., None], 0.0, 1.0)
    a = lay.alpha.astype(np.float64)[..., None]
    return np.clip(np.concatenate([rgbf * a, a], axis=2) * 255.0 + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "combo",
    [("surgical", (0, 90, 200), None, False), ("n95", (240, 240, 240), "floral", True), ("kn95", (20, 20, 20), "checks", True),
     ("cloth", (200, 10, 10), "dots", False), ("bandana", (12, 200, 30), "stripes", False), ("n95", (90, 90, 90), None, True),
     ("cloth", (30, 30, 80), "plaid:2", False), ("cloth", (220, 220, 220), "lace:1", False), ("surgical", (240, 240, 240), "brand:5", False),
     ("cloth", (10, 10, 10), "knit:6", False), ("kn95", (200, 200, 200), "camo:7", True), ("cloth", (0, 0, 0), "flag:3", False)],
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
    from maskgen.masks.designs import Pyramid
    from maskgen.masks.designs.template import _coloured

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
    import cv2

    from maskgen.masks.render import _SHADOW

    res = mask_face(astronaut, MaskSpec(type="kn95"), seed=0, faces=[astro_face])
    # beyond the reach of its loops and its soft contact shadow, nothing changes
    near = cv2.dilate((res.alpha > 0).astype(np.uint8), np.ones((31, 31), np.uint8)) > 0
    far = ~near
    assert far.sum() > 0.5 * far.size and np.array_equal(res.image[far], astronaut[far])
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
    assert (out[soft] >= (1 - a) * (1 - _SHADOW) * orig[soft] + a * 0.5 * mask_lum - 3).all()


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
        assert res.ok and res.fit > 0.85, (i, res.fit)


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
    from maskgen.masks.designs import DESIGNS as D
    from maskgen.masks.geometry import face_mesh, invert_mesh

    fm = face_mesh(astro_face.landmarks, (512, 512), wear, D["bandana"].shape, (-0.1, 1.1, -0.1, 1.5))
    mesh = fm.xy
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


# ---- the 3D mask: height on the nose, volume at yaw, occlusion, shading, loops, fit score ----

N_COVER = 300


@pytest.fixture(scope="module")
def lfw300(lfw_dir: Path) -> list[tuple[np.ndarray, Face]]:
    """300 LFW photos spread over the sorted file list, with their centre face."""
    files = sorted(lfw_dir.glob("*/*.jpg"))
    out = []
    for f in files[:: max(1, len(files) // N_COVER)]:
        img, _ = load_image(f)
        faces = detect_faces(img, select="center")
        if faces:
            out.append((img, faces[0]))
        if len(out) == N_COVER:
            break
    assert len(out) == N_COVER
    return out


@pytest.mark.parametrize("kind", MASK_TYPES)
def test_correct_wear_reaches_the_upper_nose_bridge_on_300_lfw_faces(lfw300, kind: str) -> None:
    """Correct wear: the nose wire sits across the upper bridge, just below the eyes.

    The target names "nose landmark 28", with the coverage before this change given as 1.5 %
    for 28 and 97 % for 29. Measured on these 300 faces before this change, the 0-based points
    ``lm[27]``, ``lm[28]`` and ``lm[29]`` were covered in 0 %, 0.3 % and 98 %: those figures are
    the 0-based indices 28 and 29 (in dlib's 1-based numbering they are points 29 and 30; the
    1-based 28 is ``lm[27]``, the top of the bridge between the eyes, which no mask covers with
    the eyes free). So: ``lm[28]``, the second point down the bridge, ~0.1 inter-ocular
    distances below the lower eyelids, covered in >= 75 % of faces; no eye point ever; the
    outer and inner lips and the nose tip (``lm[30]``) always.
    """
    cov = []
    for i, (img, face) in enumerate(lfw300):
        res = mask_face(img, MaskSpec(type=kind, wear="correct"), seed=i, faces=[face])
        assert res.ok
        cov.append(_alpha_at(res.alpha, face.landmarks))
    cov = np.array(cov) > 0.5
    assert cov[:, 28].mean() >= 0.75, cov[:, 28].mean()
    assert not cov[:, 36:48].any(), np.nonzero(cov[:, 36:48].any(1))[0]
    assert cov[:, 48:68].all() and cov[:, 30].all()


def _turned(lfw300, min_yaw: float = 30.0) -> list[tuple[np.ndarray, Face]]:
    out = [(img, f) for img, f in lfw300 if abs(f.pose[0]) >= min_yaw]
    assert len(out) >= 3
    return out


def _mean_face_at(yaw: float, pitch: float = 0.0) -> np.ndarray:
    """68 landmarks of the mean 3D face turned by ``yaw`` degrees, in a 250x250 image."""
    import cv2

    from maskgen.masks.pose import MEAN_SHAPE_3D

    r, _ = cv2.Rodrigues(np.array([np.radians(-pitch), np.radians(yaw), 0.0]))
    p = MEAN_SHAPE_3D @ r.T + (0.0, 0.0, 750.0)
    return (p[:, :2] / p[:, 2:] * 750.0 + 125.0).astype(np.float32)


def test_turned_head_cup_bulges_past_the_far_jaw_and_far_side_is_hidden(lfw300) -> None:
    """At |yaw| >= 30 the N95's cup stands out past the far cheek's contour (a flat mask on the
    jaw landmarks never could); on a head turned further, the far side wraps out of sight:
    its cells facing away are culled and nothing is drawn beyond the visible silhouette."""
    from maskgen.masks.geometry import face_mesh

    past = {"n95": [], "surgical": []}
    for img, face in _turned(lfw300):
        lm = face.landmarks
        iod = float(np.linalg.norm(lm[42:48].mean(0) - lm[36:42].mean(0)))
        far = -1 if face.pose[0] > 0 else 1  # yaw > 0: the nose points to the image left, so does the far cheek
        jaw = lm[0:9] if far < 0 else lm[8:17]
        y = int(round(lm[33, 1]))  # under the nose, where the cup stands out most
        order = np.argsort(jaw[:, 1])
        contour = np.interp(y, jaw[order, 1], jaw[order, 0])
        for kind in past:
            res = mask_face(img, MaskSpec(type=kind), seed=0, faces=[face])
            row = np.nonzero(res.alpha[y] > 0.5)[0]
            edge = row.min() if far < 0 else row.max()
            past[kind].append(far * (edge - contour) / iod)
    assert np.median(past["n95"]) > 0.08 and np.median(past["n95"]) > np.median(past["surgical"]), past
    d = DESIGNS["n95"]
    lm = _mean_face_at(55.0)
    fm = face_mesh(lm, (250, 250), "correct", d.shape, d.extent)
    assert not fm.front[1:-1, 1:-1].all()  # the far side faces away
    res = mask_face(np.full((250, 250, 3), 128, np.uint8), MaskSpec(type="n95"), seed=0, faces=[lm])
    # yaw > 0 turns the far side to the image left: the mask stops near the far cheek's
    # contour instead of spreading its hidden half beyond it
    y = int(round(lm[57, 1]))
    xs = np.nonzero(res.alpha[y] > 0.5)[0]
    assert xs.min() > lm[:9, 0].min() - 0.15 * np.ptp(lm[:, 0])


def test_open_mouth_is_covered_opaquely(astronaut: np.ndarray, astro_face: Face) -> None:
    """A dark open mouth under the mask must not show through as a grey smudge."""
    import cv2

    lm = astro_face.landmarks
    dark = astronaut.copy()
    cv2.fillPoly(dark, [np.round(lm[48:60]).astype(np.int32)], (10, 5, 5))
    a = mask_face(astronaut, MaskSpec(type="surgical", color="white"), seed=0, faces=[astro_face])
    b = mask_face(dark, MaskSpec(type="surgical", color="white"), seed=0, faces=[astro_face])
    mouth = np.zeros(astronaut.shape[:2], np.uint8)
    cv2.fillPoly(mouth, [np.round(lm[48:60]).astype(np.int32)], 1)
    m = mouth > 0
    diff = np.abs(a.image[m].astype(float) - b.image[m].astype(float)).mean()
    assert diff < 6.0, diff
    around = (b.alpha > 0.99) & ~m
    assert b.image[m].mean() > 0.97 * b.image[around].mean() and b.image[m].mean() > 150  # white, not grey


def test_ear_loops_are_visible_white_elastic(lfw300) -> None:
    """Frontal faces: surgical masks show white loops running from the mask to the ears,
    outside the face's jaw outline."""
    import cv2

    frontal = [(img, f) for img, f in lfw300 if abs(f.pose[0]) < 8][:10]
    assert len(frontal) >= 5
    counts = []
    for img, face in frontal:
        lm = face.landmarks
        iod = float(np.linalg.norm(lm[42:48].mean(0) - lm[36:42].mean(0)))
        res = mask_face(img, MaskSpec(type="surgical", color="blue"), seed=0, faces=[face])
        hull = np.zeros(img.shape[:2], np.uint8)
        cv2.fillConvexPoly(hull, cv2.convexHull(np.round(lm[:17]).astype(np.int32)), 1)
        hull = cv2.dilate(hull, np.ones((int(0.25 * iod) | 1,) * 2, np.uint8)) > 0
        lum = lambda x: x.astype(float) @ (0.299, 0.587, 0.114)  # noqa: E731
        white = (lum(res.image) - lum(img) > 40) & (np.ptp(res.image.astype(int), axis=2) < 40)
        counts.append(int((white & ~hull & (res.alpha > 0.3)).sum()))
    assert np.median(counts) > 15, counts  # a visible white stroke beside the face


def test_contact_shadow_under_the_mask_edge(astronaut: np.ndarray, astro_face: Face) -> None:
    res = mask_face(astronaut, MaskSpec(type="surgical"), seed=0, faces=[astro_face])
    import cv2

    # the skin just under the mask's bottom edge (below the chin) is darker than before
    ring = cv2.dilate((res.alpha > 0.05).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    ring &= res.alpha < 0.02
    ring[: int(astro_face.landmarks[57, 1])] = False
    ring &= astronaut.mean(2) > 80  # skin, not the dark collar
    ratio = res.image[ring].astype(float).mean() / astronaut[ring].astype(float).mean()
    assert 0.6 < ratio < 0.95, ratio


def test_pleats_and_cup_are_shaded(astronaut: np.ndarray, astro_face: Face) -> None:
    """Surgical pleats show shadow lines; an N95 cup is darker toward its turned-away sides."""
    res = mask_face(astronaut, MaskSpec(type="surgical", color="white"), seed=0, faces=[astro_face])
    lm = astro_face.landmarks
    x = int(round(lm[33, 0]))
    col = res.image[int(lm[29, 1]) : int(lm[8, 1]), x].astype(float).mean(1)
    assert col.max() - col.min() > 25  # pleat shadows, not a flat sheet
    n95 = mask_face(astronaut, MaskSpec(type="n95"), seed=0, faces=[astro_face])
    y = int(round(lm[62, 1]))
    inside = np.nonzero(n95.alpha[y] > 0.99)[0]
    centre = n95.image[y, int(lm[62, 0]) - 3 : int(lm[62, 0]) + 4].astype(float).mean()
    sides = 0.5 * (n95.image[y, inside[:4]].astype(float).mean() + n95.image[y, inside[-4:]].astype(float).mean())
    assert centre > sides + 8, (centre, sides)


def test_white_masks_roll_off_instead_of_clipping(lfw300) -> None:
    """A white mask lit like a bright face keeps its texture: no flat clipped patch."""
    from maskgen.masks.render import _KNEE, roll_off

    x = np.linspace(0.0, 3.0, 301)
    y = roll_off(x)
    assert np.array_equal(y[x <= _KNEE], x[x <= _KNEE])  # mid tones untouched
    assert np.all(np.diff(y) > 0) and y.max() < 1.0  # monotone, never reaches white
    bright = sorted(lfw300, key=lambda it: -float(it[0].mean()))[:20]
    for kind in ("n95", "kn95", "surgical"):
        clipped, spread = [], []
        for i, (img, face) in enumerate(bright):
            res = mask_face(img, MaskSpec(type=kind, color="white"), seed=i, faces=[face])
            px = res.image[res.alpha > 0.99].astype(int)
            clipped.append(float((px.min(1) >= 254).mean()))
            spread.append(float(np.percentile(px.mean(1), 95) - np.percentile(px.mean(1), 50)))
        assert max(clipped) < 0.01, (kind, clipped)
        assert np.median(spread) > 6, (kind, spread)  # texture and shading above the median


def test_fit_score_tells_good_renders_from_bad(lfw300) -> None:
    """Good correct-wear renders score high; chin wear below a 112 crop, a mask over the eyes,
    an uncovered mouth and landmarks crushed into a fold score low."""
    from maskgen.masks.api import fit_score
    from maskgen.masks.geometry import face_mesh

    good = [mask_face(img, MaskSpec(type="surgical"), seed=0, faces=[f]).fit for img, f in lfw300[:60]]
    assert np.median(good) > 0.97 and np.mean(np.array(good) >= 0.9) > 0.9
    chin = [mask_face(img, MaskSpec(type="surgical", wear="chin"), seed=0, faces=[f]).fit for img, f in lfw300[:30]]
    assert np.median(chin) < 0.3
    img, face = lfw300[0]
    d = DESIGNS["surgical"]
    mesh = face_mesh(face.landmarks, img.shape[:2], "correct", d.shape, d.extent)
    res = mask_face(img, MaskSpec(type="surgical"), seed=0, faces=[face])
    eyes = res.alpha.copy()
    eyes[int(face.landmarks[37, 1]) - 2 : int(face.landmarks[41, 1]) + 3, :] = 1.0
    assert fit_score(eyes, face.landmarks, "correct", mesh) < 0.1
    mouth = res.alpha.copy()
    mouth[int(face.landmarks[50, 1]) : int(face.landmarks[57, 1]) + 2, :] = 0.0
    assert fit_score(mouth, face.landmarks, "correct", mesh) < 0.5
    # a head at 70 degrees of yaw (the mean face turned and projected): little of the mask
    # still faces the camera
    for yaw, lo, hi in ((0.0, 0.97, 1.01), (70.0, -0.01, 0.6)):
        r = mask_face(np.full((250, 250, 3), 128, np.uint8), MaskSpec(type="surgical"), seed=0, faces=[_mean_face_at(yaw)])
        assert lo <= r.fit <= hi, (yaw, r.fit)
    # landmarks that pull the surface into a fold (the lower far jaw dragged toward the nose:
    # part of each row turns away between parts facing the camera): the fit drops
    pulled = face.landmarks.copy()
    pulled[10:15, 0] += (pulled[30, 0] - pulled[10:15, 0]) * 0.7
    folded = face_mesh(pulled, img.shape[:2], "correct", d.shape, d.extent)
    r = mask_face(img, MaskSpec(type="surgical"), seed=0, faces=[pulled])
    assert folded.fold > 0.1 and r.fit < 0.8, (folded.fold, r.fit)


def test_min_fit_rejects_with_a_reason(lfw300) -> None:
    img, face = lfw300[0]
    ok = mask_face(img, MaskSpec(), seed=0, faces=[face], min_fit=0.5)
    assert ok.ok
    low = mask_face(img, MaskSpec(wear="chin"), seed=0, faces=[face], min_fit=0.5)
    assert low.status == LOW_FIT == "fit score below threshold" and low.fit < 0.5
    with pytest.raises(ValueError):
        mask_face(img, MaskSpec(), seed=0, faces=[face], fit_frame="crop")


@pytest.mark.parametrize("name", [p for p in PATTERNS if textures.PATTERN_DEFS[p].variants > 1])
def test_prints_have_seeded_variants(name: str) -> None:
    """Each print's variants differ, the same variant is the same bytes, and a spec's bare
    print name gets a variant from the seed (recorded in the resolved spec)."""
    from maskgen.masks.designs import build_template

    a = build_template("cloth", (40, 40, 44), f"{name}:0", False).levels[1]
    b = build_template("cloth", (40, 40, 44), f"{name}:5", False).levels[1]
    build_template.cache_clear()
    a2 = build_template("cloth", (40, 40, 44), f"{name}:0", False).levels[1]
    assert np.array_equal(a, a2) and not np.array_equal(a, b)
    r1 = MaskSpec(type="cloth", texture=name).resolve(np.random.default_rng(3))
    r2 = MaskSpec(type="cloth", texture=name).resolve(np.random.default_rng(3))
    assert r1 == r2 and r1.texture.startswith(f"{name}:")
    with pytest.raises(ValueError):
        MaskSpec(type="cloth", texture=f"{name}:99")


def test_build_rejects_renders_below_min_fit(tmp_path: Path, lfw300) -> None:
    """The build's ``min_fit`` option: a sample whose masked render scores below it fails with
    the reason "fit score below threshold" (one sample, through the build's own sample code)."""
    import cv2

    from maskgen.datasets.sources import parse_source
    from maskgen.errors import OptionError
    from maskgen.pipelines.config import BUILD
    from maskgen.pipelines.execute import SampleError, process_sample

    img, face = lfw300[0]
    person = tmp_path / "src" / "someone"
    person.mkdir(parents=True)
    cv2.imwrite(str(person / "a.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    src = parse_source(f"folder:{tmp_path / 'src'}")
    row = {"path": "someone/a.jpg", "offset": -1, "nbytes": -1, "member": None, "landmarks": face.landmarks.ravel().tolist(),
           "masked": True, "seed": 1, "key": "0-0", "identity": "someone", "label": 0, "source": "folder", "box": list(face.box)}
    opts = {"output": "aligned", "image_size": 112, "jpeg_quality": 90, "twins": False, "min_fit": 0.5}
    ctx = {"opts": opts, "src": src, "face_attributes": None, "label_columns": []}

    def spec_columns(spec: MaskSpec) -> dict:  # the plan's mask columns (as a shard task reads them)
        j = spec.to_json()
        return {"mask_type": j["type"], "mask_color": j["color"], "mask_texture": j["texture"],
                "wear": j["wear"], "mask_valve": j["valve"]}

    members, result = process_sample({**row, **spec_columns(MaskSpec(wear="correct"))}, ctx)
    assert result["fit_score"] >= 0.5 and members["0-0.jpg"]
    with pytest.raises(SampleError, match="^fit score below threshold$"):
        process_sample({**row, **spec_columns(MaskSpec(wear="chin"))}, ctx)
    with pytest.raises(OptionError, match="min_fit"):
        BUILD.resolve(source="lfw", out=str(tmp_path / "o"), min_fit=1.5)


def test_pose_solve_shared_between_detection_and_head_fit(astronaut: np.ndarray, astro_face: Face) -> None:
    """The head fit reuses the detection's SQPnP solve (same landmarks, same image size): the
    same rotation and translation as a fresh solvePnP, handed out read-only."""
    import cv2

    from maskgen.masks import MEAN_SHAPE_3D, estimate_pose, pose
    from maskgen.masks.geometry import fit_head

    h, w = astronaut.shape[:2]
    lm = np.asarray(astro_face.landmarks, np.float64)
    ok, rvec, tvec = cv2.solvePnP(MEAN_SHAPE_3D, lm, pose.camera_matrix(h, w), None, flags=cv2.SOLVEPNP_SQPNP)
    assert ok
    estimate_pose(astro_face.landmarks, (h, w))  # as the landmark stage does
    first = pose.solve_pose(lm, h, w)
    assert first is not None and pose.solve_pose(lm.copy(), h, w) is first  # one solve per face
    np.testing.assert_array_equal(first[0], rvec)
    np.testing.assert_array_equal(first[1], tvec)
    np.testing.assert_array_equal(first[2], cv2.Rodrigues(rvec)[0])
    assert not any(a.flags.writeable for a in first)
    head = fit_head(lm, (h, w))
    np.testing.assert_array_equal(head.R, first[2])
    np.testing.assert_array_equal(head.t, tvec.reshape(3))
    # a different image size is a different problem
    assert pose.solve_pose(lm, h + 10, w) is not first
