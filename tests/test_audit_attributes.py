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
