"""Decoding with per-image status: every odd or broken input gets an image or a clear reason."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from maskgen.masks import decode_image, load_image
from maskgen.masks import imageio as mio


def _save_jpeg(arr: np.ndarray, path: Path, **kw) -> Path:
    Image.fromarray(arr).save(path, "JPEG", quality=92, **kw)
    return path


def test_jpeg_roundtrip_is_rgb(tmp_path: Path, astronaut: np.ndarray) -> None:
    p = _save_jpeg(astronaut, tmp_path / "a.jpg")
    img, reason = load_image(p)
    assert reason == "ok"
    assert img.dtype == np.uint8 and img.shape == astronaut.shape and img.flags["C_CONTIGUOUS"]
    # RGB order kept (the astronaut's suit is orange: red > blue)
    assert np.abs(img.astype(int) - astronaut.astype(int)).mean() < 4.0


def test_decode_bytes_equals_load(tmp_path: Path, astronaut: np.ndarray) -> None:
    p = _save_jpeg(astronaut, tmp_path / "a.jpg")
    a, _ = load_image(p)
    b, reason = decode_image(p.read_bytes())
    assert reason == "ok" and np.array_equal(a, b)


def test_missing_and_directory_paths(tmp_path: Path) -> None:
    img, reason = load_image(tmp_path / "nope.jpg")
    assert img is None and reason.startswith("unreadable") and "not found" in reason
    img, reason = load_image(tmp_path)
    assert img is None and reason.startswith("unreadable")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    assert load_image(p) == (None, "empty file")


def test_corrupt_file(tmp_path: Path) -> None:
    p = tmp_path / "junk.jpg"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    img, reason = load_image(p)
    assert img is None and reason.startswith("corrupt")


def test_truncated_jpeg(tmp_path: Path, astronaut: np.ndarray) -> None:
    data = _save_jpeg(astronaut, tmp_path / "a.jpg").read_bytes()
    img, reason = decode_image(data[: len(data) // 3])
    assert img is None and "truncated" in reason


def test_grayscale_becomes_rgb(tmp_path: Path, astronaut: np.ndarray) -> None:
    g = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    for name in ("g.png", "g.jpg"):
        Image.fromarray(g).save(tmp_path / name)
        img, reason = load_image(tmp_path / name)
        assert reason == "ok" and img.shape == (*g.shape, 3)
        assert np.array_equal(img[..., 0], img[..., 2])


def test_cmyk_jpeg_converted(tmp_path: Path, astronaut: np.ndarray) -> None:
    p = tmp_path / "cmyk.jpg"
    Image.fromarray(astronaut).convert("CMYK").save(p, "JPEG", quality=95)
    img, reason = load_image(p)
    assert reason == "ok" and img.shape == astronaut.shape
    assert np.abs(img.astype(int) - astronaut.astype(int)).mean() < 12.0


def test_16bit_png_scaled(tmp_path: Path) -> None:
    g16 = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (32, 1))
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    img, reason = load_image(tmp_path / "g16.png")
    assert reason == "ok" and img.dtype == np.uint8 and img.shape == (32, 64, 3)
    assert img[0, 0, 0] == 0 and img[0, -1, 0] == 255 and 120 <= img[0, 32, 0] <= 135
    c16 = np.zeros((16, 16, 3), np.uint16)
    c16[..., 2] = 65535  # BGR in cv2: red channel full
    c16[..., 1] = 32768
    cv2.imwrite(str(tmp_path / "c16.png"), c16)
    img, reason = load_image(tmp_path / "c16.png")
    assert reason == "ok" and tuple(img[0, 0]) == (255, 128, 0)


def test_rgba_alpha_composited(tmp_path: Path) -> None:
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, :10, 3] = 255  # left half opaque red, right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img, reason = load_image(tmp_path / "a.png")
    assert reason == "ok" and img.shape == (20, 20, 3)
    assert tuple(img[5, 2]) == (255, 0, 0)
    assert tuple(img[5, 15]) == (128, 128, 128)


def test_palette_png(tmp_path: Path, astronaut: np.ndarray) -> None:
    Image.fromarray(astronaut).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    img, reason = load_image(tmp_path / "p.png")
    assert reason == "ok" and img.shape == astronaut.shape


def test_exif_orientation_applied(tmp_path: Path) -> None:
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = 255  # white left half
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    p = tmp_path / "rot.jpg"
    im.save(p, "JPEG", exif=exif.tobytes())
    img, reason = load_image(p)
    assert reason == "ok" and img.shape[:2] == (80, 40)
    assert img[5, 20].mean() > 200 and img[75, 20].mean() < 50  # white half now on top


def test_decompression_bomb_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mio, "MAX_PIXELS", 10_000)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(buf, "PNG")
    img, reason = decode_image(buf.getvalue())
    assert img is None and reason.startswith("too large")


def test_large_image_downscaled() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.full((400, 600, 3), 90, np.uint8)).save(buf, "PNG")
    img, reason = decode_image(buf.getvalue(), max_side=300)
    assert reason == "ok" and img.shape == (200, 300, 3)


def test_rgb_decode_matches_bgr_decode_flipped(tmp_path: Path, astronaut: np.ndarray) -> None:
    """The fast path decodes straight to RGB; it must give exactly OpenCV's BGR pixels flipped."""
    data = _save_jpeg(astronaut, tmp_path / "a.jpg").read_bytes()
    buf = np.frombuffer(data, np.uint8)
    ref = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
    got = mio.imdecode_rgb(buf)
    assert got.flags["C_CONTIGUOUS"] and np.array_equal(got, ref)
    img, reason = decode_image(data)
    assert reason == "ok" and np.array_equal(img, ref)
