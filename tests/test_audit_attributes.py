"""Model-free face attributes: colour science, ITA monotonicity, skin region, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from maskgen.datasets.attributes import (
    ITA_BINS,
    SKIN_TONES,
    face_attributes,
    ita_of_pixels,
    rgb_to_lab,
    skin_polygons,
    skin_tone_label,
)


def lab_patch(L: float, a: float, b: float, shape=(250, 250)) -> np.ndarray:
    """A uniform sRGB uint8 image of a given CIELab colour (skimage as the reference)."""
    color = pytest.importorskip("skimage.color")
    rgb = color.lab2rgb(np.array([[[L, a, b]]], dtype=np.float64))[0, 0]
    px = np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)
    return np.broadcast_to(px, (*shape, 3)).copy()


@pytest.fixture(scope="module")
def astronaut_landmarks(astronaut) -> np.ndarray:
    from maskgen.masks.landmarks import detect_faces

    faces = detect_faces(astronaut, backend="dlib")
    assert faces, "dlib finds the astronaut's face"
    return faces[0].landmarks


def test_rgb_to_lab_matches_skimage():
    color = pytest.importorskip("skimage.color")
    px = np.random.default_rng(0).integers(0, 256, (4096, 3), dtype=np.uint8)
    ref = color.rgb2lab(px[None].astype(np.float64) / 255.0)[0]
    assert np.abs(rgb_to_lab(px) - ref).max() < 0.02


def test_ita_of_known_colour():
    L, b = 65.0, 15.0
    px = lab_patch(L, 8.0, b, (8, 8)).reshape(-1, 3)
    expected = math.degrees(math.atan((L - 50) / b))
    assert ita_of_pixels(px) == pytest.approx(expected, abs=1.0)


@pytest.mark.parametrize("use_landmarks", [False, True])
def test_ita_monotone_in_lightness(use_landmarks, astronaut_landmarks):
    """Lighter skin patches (higher L*, same hue) give strictly higher ITA, close to the
    analytic value, and fall into lighter (or the same) Del Bino bins."""
    lm = astronaut_landmarks if use_landmarks else None
    values, tones = [], []
    for L in range(25, 90, 5):
        img = lab_patch(float(L), 10.0, 18.0, (512, 512))
        a = face_attributes(img, lm)
        assert a["region"] == ("landmarks" if use_landmarks else "center")
        expected = math.degrees(math.atan((L - 50) / 18.0))
        assert a["ita"] == pytest.approx(expected, abs=1.5)
        values.append(a["ita"])
        tones.append(SKIN_TONES.index(a["skin_tone"]))
    assert all(x < y for x, y in zip(values, values[1:]))
    assert all(x >= y for x, y in zip(tones, tones[1:]))
    assert tones[0] == SKIN_TONES.index("dark") and tones[-1] == SKIN_TONES.index("very light")


def test_skin_region_excludes_eyes_brows_and_mouth(astronaut_landmarks):
    """Painting eyes, brows, nostrils and lips black must not move the measured skin tone."""
    cv2 = pytest.importorskip("cv2")
    lm = astronaut_landmarks
    img = lab_patch(60.0, 12.0, 16.0, (512, 512))
    clean = face_attributes(img, lm)
    dirty = img.copy()
    for idx in (range(36, 42), range(42, 48), range(48, 60), range(17, 22), range(22, 27),
                range(31, 36)):
        pts = np.round(lm[list(idx)]).astype(np.int32)
        cv2.fillPoly(dirty, [cv2.convexHull(pts)], (0, 0, 0))
        cv2.polylines(dirty, [pts], False, (0, 0, 0), 3)
    assert face_attributes(dirty, lm)["ita"] == pytest.approx(clean["ita"], abs=0.5)
    # the polygons lie inside the landmark hull widened upward (forehead), not on the eyes
    polys = skin_polygons(lm)
    assert len(polys) == 3 and all(p.shape[1] == 2 for p in polys)


def test_real_face_attributes(astronaut, astronaut_landmarks):
    a = face_attributes(astronaut, astronaut_landmarks)
    assert a["region"] == "landmarks"
    assert a["skin_pixels"] > 500
    assert -90 <= a["ita"] <= 90 and a["skin_tone"] in SKIN_TONES
    iod = np.linalg.norm(astronaut_landmarks[42:48].mean(0) - astronaut_landmarks[36:42].mean(0))
    assert a["face_size"] == pytest.approx(iod, rel=1e-5)
    assert a["sharpness"] > 0 and 0 < a["brightness"] < 255
    # a blurred copy is less sharp; a darker copy is less bright
    cv2 = pytest.importorskip("cv2")
    blurred = cv2.GaussianBlur(astronaut, (0, 0), 3)
    assert face_attributes(blurred, astronaut_landmarks)["sharpness"] < a["sharpness"] / 2
    darker = (astronaut * 0.5).astype(np.uint8)
    assert face_attributes(darker, astronaut_landmarks)["brightness"] < a["brightness"]


def test_center_region_and_odd_inputs():
    gray = np.full((120, 100), 128, np.uint8)
    a = face_attributes(gray, None)
    assert a["region"] == "center" and math.isnan(a["face_size"])
    rgba = np.zeros((64, 64, 4), np.uint8)
    assert face_attributes(rgba, None)["skin_pixels"] == 32 * 32
    tiny = np.zeros((2, 2, 3), np.uint8)
    assert math.isnan(face_attributes(tiny, None)["sharpness"])
    with pytest.raises(ValueError):
        face_attributes(np.zeros((10, 10, 3), np.float32), None)
    # landmarks entirely outside the image fall back to the centre
    far = np.full((68, 2), -500.0, np.float32)
    assert face_attributes(np.zeros((50, 50, 3), np.uint8), far)["region"] == "center"


def test_skin_tone_bins():
    assert [skin_tone_label(v) for v in (80, 55.5, 55, 41, 30, 12, 0, -30, -60)] == [
        "very light", "very light", "light", "intermediate", "intermediate", "tan", "brown",
        "dark", "dark"]
    assert skin_tone_label(float("nan")) is None
    assert [b[0] for b in ITA_BINS] == SKIN_TONES


def _relight(img: np.ndarray, gains) -> np.ndarray:
    """The same scene under another exposure / light colour (per-channel gain in linear light)."""
    from maskgen.datasets.attributes import SRGB_TO_LINEAR

    lin = SRGB_TO_LINEAR[img] * np.asarray(gains, np.float32)
    c = np.clip(lin, 0, 1)
    srgb = np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)
    return np.round(srgb * 255).astype(np.uint8)


@pytest.mark.parametrize("gains", [(0.5, 0.5, 0.5), (0.8, 0.8, 1.1), (1.0, 0.85, 0.6)])
def test_white_point_correction_undoes_exposure_and_cast(astronaut, astronaut_landmarks, gains):
    """Under-exposure or a coloured light moves the raw ITA a lot; the corrected ITA (the
    image's brightest 1% taken as white) moves far less."""
    from maskgen.datasets.attributes import face_attributes

    ref = face_attributes(astronaut, astronaut_landmarks)
    lit = face_attributes(_relight(astronaut, gains), astronaut_landmarks)
    assert ref["white_corrected"] and lit["white_corrected"]
    raw_shift = abs(lit["ita_raw"] - ref["ita_raw"])
    fixed_shift = abs(lit["ita"] - ref["ita"])
    assert raw_shift > 8 and fixed_shift < raw_shift / 3, (raw_shift, fixed_shift)


def test_no_white_reference_means_no_correction(astronaut_landmarks):
    """An image with nothing brighter than the skin has no white to trust: ITA is the raw
    median over skin-like pixels."""
    from maskgen.datasets.attributes import face_attributes

    img = lab_patch(55.0, 12.0, 18.0, (512, 512))
    a = face_attributes(img, astronaut_landmarks)
    assert a["white_corrected"] is False
    assert a["ita"] == pytest.approx(a["ita_raw"], abs=0.5)


def test_sharpness_is_absolute(astronaut, astronaut_landmarks):
    """The same face enlarged twice (no new detail) scores about the same (the face is
    resampled to 96 px either way); a quarter-size face or a blurred one scores far lower,
    across the documented bin edges."""
    import cv2

    from maskgen.datasets.attributes import face_attributes
    from maskgen.audit.stats import SHARPNESS_EDGES

    full = face_attributes(astronaut, astronaut_landmarks)["sharpness"]
    big = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    big_s = face_attributes(big, astronaut_landmarks * 2)["sharpness"]
    assert 0.5 < big_s / full < 2.0
    small = cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA)
    assert face_attributes(small, astronaut_landmarks / 4)["sharpness"] < full / 4
    blurred = cv2.GaussianBlur(astronaut, (0, 0), 4.0)
    blur_s = face_attributes(blurred, astronaut_landmarks)["sharpness"]
    assert full >= SHARPNESS_EDGES[2] and blur_s < SHARPNESS_EDGES[2] and blur_s < full / 4


def _attribute_cases(lfw_dir, astronaut, astronaut_landmarks):
    """(image, skin pixels) of real faces and of edge cases: few pixels, an even and an odd
    count, no white in the frame, a white that needs the gain cap."""
    from maskgen.datasets.attributes import _MAX_SKIN_PIXELS, face_regions
    from maskgen.masks import decode_image, detect_faces

    cases = []
    paths = sorted(lfw_dir.rglob("*.jpg"))[::97][:40]
    for p in paths:
        img, _ = decode_image(p.read_bytes())
        faces = detect_faces(img, backend="dlib", select="center")
        if faces:
            cases.append((img, face_regions(img, faces[0].landmarks)[1]))
    cases.append((astronaut, face_regions(astronaut, astronaut_landmarks)[1]))
    rng = np.random.default_rng(7)
    for n in (1, 2, 19, 20, 21, 2048, 5001):
        img = rng.integers(0, 256, (64 + n % 50, 80, 3), dtype=np.uint8)
        cases.append((img, rng.integers(40, 230, (n, 3), dtype=np.uint8)))
    dark = np.full((120, 90, 3), 30, np.uint8)
    cases.append((dark, rng.integers(20, 60, (300, 3), dtype=np.uint8)))  # no white to trust
    dim_white = np.full((100, 100, 3), 20, np.uint8)
    dim_white[:5] = (60, 50, 40)  # a white so dim that the gain is capped
    cases.append((dim_white, rng.integers(2, 12, (400, 3), dtype=np.uint8)))
    out = []
    for img, skin in cases:
        if skin.shape[0] > _MAX_SKIN_PIXELS:
            skin = skin[:: -(-skin.shape[0] // _MAX_SKIN_PIXELS)]
        out.append((img, skin))
    return out


def test_compiled_attributes_are_the_numpy_ones_bit_for_bit(lfw_dir, astronaut, astronaut_landmarks):
    """The Numba white reference and corrected ITA give exactly the values of the NumPy form:
    on LFW faces, the astronaut and edge cases, with and without the skin-pixel selection."""
    pytest.importorskip("numba")
    from maskgen.datasets.attributes import corrected_ita, white_reference

    cases = _attribute_cases(lfw_dir, astronaut, astronaut_landmarks)
    assert len(cases) > 30
    corrected = 0
    for img, skin in cases:
        ref_c, ref_n = white_reference(img, compiled=True), white_reference(img, compiled=False)
        np.testing.assert_array_equal(ref_c, ref_n)
        for select in (True, False):
            for ref in (ref_n, None):
                got = corrected_ita(skin, ref, select, compiled=True)
                assert got == corrected_ita(skin, ref, select, compiled=False)
                corrected += got[1]
    assert corrected > 10  # the gain path ran, on real faces too


def test_face_attributes_do_not_depend_on_the_kernel(astronaut, astronaut_landmarks, monkeypatch):
    pytest.importorskip("numba")
    a = face_attributes(astronaut, astronaut_landmarks)
    monkeypatch.setenv("MASKGEN_NUMPY_KERNELS", "1")
    b = face_attributes(astronaut, astronaut_landmarks)
    assert a == b and math.isfinite(a["ita"])


def test_cube_root_is_correctly_rounded():
    """The portable cube root of CIELab (Halley's method from the float's bits) is the float32
    nearest the true cube root over the whole range it is used on, compiled or not."""
    from maskgen.datasets.attributes import _EPS, CBRT_MAGIC, _cbrt

    x = np.unique(np.concatenate([
        np.linspace(float(_EPS), 1.0, 2_000_001, dtype=np.float64).astype(np.float32),
        np.nextafter(_EPS, np.float32(1.0)) + np.arange(2000, dtype=np.float32) * np.float32(1e-9),
        np.float32([1.0, 1.0000001, 1.0000002]),
    ]))
    want = np.cbrt(x.astype(np.float64)).astype(np.float32)
    got = _cbrt(x)
    np.testing.assert_array_equal(got, want)
    kernel = pytest.importorskip("maskgen.datasets.attributes_kernel")
    out = np.empty_like(x)
    kernel._cbrt_into(x, out, CBRT_MAGIC)
    np.testing.assert_array_equal(out, got)
