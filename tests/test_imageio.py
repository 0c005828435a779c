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


# --- untrusted files: only regular files, size and pixel caps before any decode ----------------

import os  # noqa: E402
import threading  # noqa: E402

import faults  # noqa: E402


def _load_within(path: Path, seconds: float = 10.0) -> tuple[np.ndarray | None, str]:
    """load_image in a thread: a read that blocks (a FIFO) fails the test instead of hanging it."""
    box: list = []
    t = threading.Thread(target=lambda: box.append(load_image(path)), daemon=True)
    t.start()
    t.join(seconds)
    assert box, f"load_image({path.name}) blocked for {seconds}s"
    return box[0]


def test_fifo_refused_without_blocking(tmp_path: Path) -> None:
    fifo = faults.make_fifo(tmp_path / "fifo.jpg")
    img, reason = _load_within(fifo)
    assert img is None and reason == "unreadable: not a regular file (a FIFO)"
    (tmp_path / "link.jpg").symlink_to(fifo)
    assert _load_within(tmp_path / "link.jpg") == (None, "unreadable: not a regular file (a FIFO)")


def test_devices_refused_without_reading(tmp_path: Path) -> None:
    for dev in ("/dev/zero", "/dev/urandom"):
        if not os.path.exists(dev):
            pytest.skip(f"{dev} absent")
        link = tmp_path / f"{Path(dev).name}.jpg"
        link.symlink_to(dev)
        assert _load_within(link) == (None, "unreadable: not a regular file (a character device)")


def test_size_cap_checked_before_reading(tmp_path: Path, astronaut: np.ndarray) -> None:
    p = _save_jpeg(astronaut, tmp_path / "a.jpg")
    size = p.stat().st_size
    assert load_image(p, max_bytes=size)[1] == "ok"
    assert load_image(p, max_bytes=size - 1) == (None, f"too large: {size} bytes exceeds {size - 1}")
    big = tmp_path / "sparse.jpg"  # 100 GB that occupy no disk: read, it would never finish
    with open(big, "wb") as f:
        f.truncate(100 * 1024**3)
    assert load_image(big) == (None, f"too large: {100 * 1024**3} bytes exceeds {mio.MAX_FILE_BYTES}")
    data, reason = mio.read_regular_file(p)
    assert reason == "ok" and data == p.read_bytes()


def test_real_jpeg_bomb_is_a_valid_image() -> None:
    """The 20000x20000 test JPEG is real: a reduced decode (1/8, 2500x2500) gives uniform grey."""
    data = faults.jpeg_bomb()
    assert mio.jpeg_frame(data) == (20000, 20000, 1)
    small = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    assert small.shape == (2500, 2500) and int(small.min()) == int(small.max()) == 128


@pytest.mark.parametrize("kind", ["jpeg", "jpeg-exif", "png", "bomb.bmp", "bomb.gif", "bomb.ppm"])
def test_pixel_bomb_refused_on_every_decoder_path(kind: str) -> None:
    """cv2's JPEG path (plain JPEG) and Pillow's (EXIF JPEG, PNG, BMP, GIF, PPM) all read the
    header first and refuse 20000x20000 pixels before decoding."""
    data = {"jpeg": faults.jpeg_bomb, "jpeg-exif": lambda: faults.with_exif(faults.jpeg_bomb()),
            "png": faults.png_bomb}.get(kind, lambda: faults.header_bombs()[kind])()
    img, reason = decode_image(data)
    assert img is None and reason.startswith("too large:") and "pixels exceeds" in reason
    if kind == "jpeg":
        assert reason == f"too large: 20000x20000 pixels exceeds {mio.MAX_PIXELS}"


@pytest.mark.parametrize("make", ["jpeg_bomb", "png_bomb"])
def test_refusing_a_pixel_bomb_allocates_nothing(tmp_path: Path, make: str) -> None:
    """Peak RSS of refusing a 20000x20000 file (1.2 GB of RGB if decoded) in a fresh process."""
    p = tmp_path / ("bomb.jpg" if make == "jpeg_bomb" else "bomb.png")
    p.write_bytes(getattr(faults, make)())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    out, before, peak = faults.peak_rss_of(f"""
from maskgen.masks import load_image
print(load_image({str(p)!r})[1])""", env=env)
    assert out.startswith("too large:")
    assert (peak - before) < 32 * 1024, f"refusing {p.name} raised peak RSS by {(peak - before) // 1024} MiB"


def test_large_jpeg_within_cap_decodes_reduced() -> None:
    """A 9000x9000 JPEG (within the pixel cap) decodes through Pillow's reduced JPEG decode."""
    img, reason = decode_image(faults.jpeg_bomb(9000, 9000))
    assert reason == "ok" and img.shape == (4096, 4096, 3) and int(img.max()) == 128


def test_jpeg_frame_reads_sof_after_other_segments(tmp_path: Path, astronaut: np.ndarray) -> None:
    for kw in ({}, {"progressive": True}, {"exif": Image.Exif().tobytes()}):
        p = _save_jpeg(astronaut, tmp_path / "a.jpg", **kw)
        assert mio.jpeg_frame(p.read_bytes()) == (astronaut.shape[1], astronaut.shape[0], 3)
    assert mio.jpeg_frame(b"\xff\xd8\xff") is None and mio.jpeg_frame(b"\xff\xd8\x00\x00") is None


def test_only_known_formats_are_opened() -> None:
    """Pillow plug-ins outside maskgen's image types (EPS would start Ghostscript) are never used."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    assert decode_image(eps) == (None, "corrupt: not a recognised image format")


def test_pixel_refusal_for_other_decoders(tmp_path: Path, astronaut: np.ndarray) -> None:
    """The header-only check other decoders call before ``cv2.imdecode``."""
    assert mio.pixel_refusal(faults.jpeg_bomb()) == f"too large: 20000x20000 pixels exceeds {mio.MAX_PIXELS}"
    assert mio.pixel_refusal(faults.png_bomb()).startswith("too large:")
    assert mio.pixel_refusal(faults.header_bombs()["bomb.bmp"]).startswith("too large:")
    ok = _save_jpeg(astronaut, tmp_path / "a.jpg").read_bytes()
    assert mio.pixel_refusal(ok) is None and mio.pixel_refusal(b"junk") is None
    assert mio.pixel_refusal(ok, max_pixels=1000) == "too large: 512x512 pixels exceeds 1000"
