"""The mask gets the photo's JPEG look: quality and subsampling read from the headers, one
encode/decode of the mask's box on the photo's block grid, only the mask's pixels changed."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from maskgen.masks import MaskSpec, decode_image, detect_faces, load_image, mask_face
from maskgen.masks.jpeglook import estimate_quality, jpeg_look, look_of_image


def _jpeg(img: np.ndarray, q: int, sampling: int = cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, q, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling]
    return cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)[1].tobytes()


def _png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes()


@pytest.fixture(scope="module")
def lfw_photo(lfw_dir: Path) -> np.ndarray:
    img, _ = load_image(sorted(lfw_dir.glob("*/*.jpg"))[7])
    return img


@pytest.fixture(scope="module")
def q40(lfw_photo: np.ndarray):
    """An LFW photo saved at quality 40 (4:2:0): its bytes, decoded pixels and face."""
    data = _jpeg(lfw_photo, 40)
    img, _ = decode_image(data)
    return data, img, detect_faces(img, select="center")[0]


def blockiness(gray: np.ndarray, where: np.ndarray) -> float:
    """Mean |difference| between neighbours across 8x8 block boundaries over that inside
    blocks (about 1 for a clean image, above it for a blocky one), on pixel pairs in ``where``."""
    g = gray.astype(np.float32)
    num = den = 0.0
    n_num = n_den = 0
    for d, ok, idx in ((np.abs(np.diff(g, axis=1)), where[:, :-1] & where[:, 1:], np.arange(g.shape[1] - 1)[None, :]),
                       (np.abs(np.diff(g, axis=0)), where[:-1] & where[1:], np.arange(g.shape[0] - 1)[:, None])):
        edge = (idx % 8 == 7) & ok
        inner = (idx % 8 != 7) & ok
        num += float(d[edge].sum())
        n_num += int(edge.sum())
        den += float(d[inner].sum())
        n_den += int(inner.sum())
    return (num / n_num) / (den / n_den)


def test_quality_read_from_the_tables(lfw_photo: np.ndarray) -> None:
    for q in (30, 50, 75, 90):
        for factor, name in ((cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, "4:2:0"), (cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444, "4:4:4"),
                             (cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422, "4:2:2")):
            look = jpeg_look(_jpeg(lfw_photo, q, factor))
            assert look is not None and abs(look.quality - q) <= 5, (q, look)
            assert look.sampling == name and (look.width, look.height) == (250, 250)
    gray = cv2.imencode(".jpg", lfw_photo[..., 1], [cv2.IMWRITE_JPEG_QUALITY, 60])[1].tobytes()
    assert jpeg_look(gray).sampling == "gray" and abs(jpeg_look(gray).quality - 60) <= 5
    # a table that is no IJG table: the nearest quality
    assert 45 <= estimate_quality(np.full(64, 40)) <= 75


def test_no_look_without_a_jpeg(lfw_photo: np.ndarray) -> None:
    assert jpeg_look(_png(lfw_photo)) is None
    assert jpeg_look(b"") is None and jpeg_look(b"\xff\xd8\xff") is None
    assert jpeg_look(lfw_photo.tobytes()) is None
    data = _jpeg(lfw_photo, 40)
    assert look_of_image(data, lfw_photo) is not None
    assert look_of_image(data, lfw_photo[:200]) is None  # not on the file's grid any more
    assert look_of_image(_png(lfw_photo), lfw_photo) is None


def test_mask_gets_the_photos_block_look(q40) -> None:
    _, img, face = q40
    plain = mask_face(img, MaskSpec(type="surgical"), seed=5, faces=[face])
    looked = mask_face(img, MaskSpec(type="surgical"), seed=5, faces=[face], jpeg_quality=40)
    assert plain.ok and looked.ok
    a = plain.alpha
    np.testing.assert_array_equal(a, looked.alpha)
    inside = cv2.erode((a >= 0.999).astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    touched = (a > 0).astype(np.uint8)
    ring = cv2.dilate(touched, np.ones((31, 31), np.uint8)).astype(bool) & ~cv2.dilate(touched, np.ones((9, 9), np.uint8)).astype(bool)
    gray = [cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in (img, plain.image, looked.image)]
    skin, without, with_ = blockiness(gray[0], ring), blockiness(gray[1], inside), blockiness(gray[2], inside)
    assert skin > 1.3  # the photo is blocky
    assert without < 1.15  # today's mask is clean
    assert with_ > without + 0.25 and abs(with_ - skin) < 0.25 * skin, (skin, without, with_)
    # only the mask's own pixels change
    np.testing.assert_array_equal(looked.image[a == 0], plain.image[a == 0])
    assert (looked.image != plain.image).any()
    # deterministic
    again = mask_face(img, MaskSpec(type="surgical"), seed=5, faces=[face], jpeg_quality=40)
    assert again.image.tobytes() == looked.image.tobytes()


def test_high_quality_or_none_changes_nothing(q40) -> None:
    _, img, face = q40
    plain = mask_face(img, MaskSpec(type="kn95"), seed=2, faces=[face])
    for kw in ({"jpeg_quality": None}, {"jpeg_quality": 95}, {"jpeg_quality": 100, "jpeg_sampling": "4:4:4"}):
        assert mask_face(img, MaskSpec(type="kn95"), seed=2, faces=[face], **kw).image.tobytes() == plain.image.tobytes()
    gray = mask_face(img, MaskSpec(type="kn95"), seed=2, faces=[face], jpeg_quality=30, jpeg_sampling="gray")
    np.testing.assert_array_equal(gray.image[plain.alpha == 0], plain.image[plain.alpha == 0])
    with pytest.raises(ValueError):
        mask_face(img, jpeg_quality=0, faces=[face])
    with pytest.raises(ValueError):
        mask_face(img, jpeg_quality=50, jpeg_sampling="4:2:1", faces=[face])


def test_mask_command_passes_the_files_quality(tmp_path: Path, q40) -> None:
    from maskgen.cli import main

    data, img, _ = q40
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jpg").write_bytes(data)
    (src / "b.png").write_bytes(_png(img))  # the same pixels, no JPEG look to match
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["mask", str(src), "-o", str(out), "--format", "png", "--seed", "1"])
    assert res.exit_code == 0, res.output
    from maskgen.masks.cli import path_seed

    face = detect_faces(img, select="all")
    for name, q in (("a.jpg", 40), ("b.png", None)):
        want = mask_face(img, MaskSpec(), seed=path_seed(1, name), faces=face, jpeg_quality=q)
        got, _ = load_image(out / f"{Path(name).stem}.png")
        assert got is not None and got.tobytes() == want.image.tobytes(), name


def test_build_sample_passes_the_sources_quality(tmp_path: Path, q40, lfw_photo: np.ndarray) -> None:
    from maskgen.datasets.sources import parse_source
    from maskgen.pipelines.execute import encode_jpeg, process_sample

    data, img, face = q40
    person = tmp_path / "src" / "someone"
    person.mkdir(parents=True)
    (person / "a.jpg").write_bytes(data)
    (person / "b.png").write_bytes(_png(img))
    (person / "c.jpg").write_bytes(_jpeg(img, 97))
    src = parse_source(f"folder:{tmp_path / 'src'}")
    spec = MaskSpec(type="cloth", color="navy")
    cols = {"mask_type": spec.type, "mask_color": spec.color, "mask_texture": None, "wear": spec.wear, "mask_valve": False}
    opts = {"output": "original", "image_size": 112, "jpeg_quality": 95, "twins": False, "min_fit": None}
    ctx = {"opts": opts, "src": src, "face_attributes": None, "label_columns": []}
    for name, q in (("a.jpg", 40), ("b.png", None), ("c.jpg", None)):
        row = {"path": f"someone/{name}", "offset": -1, "nbytes": -1, "member": None, "masked": True, "seed": 3,
               "key": "0-0", "identity": "someone", "label": 0, "source": "folder", "box": list(face.box),
               "landmarks": face.landmarks.ravel().tolist(), **cols}
        members, _ = process_sample(row, ctx)
        pixels, _ = decode_image((person / name).read_bytes())
        want = mask_face(pixels, spec, seed=3, faces=[face], fit_frame="image", jpeg_quality=q)
        assert members["0-0.jpg"] == encode_jpeg(want.image, 95), name
