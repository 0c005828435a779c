"""`maskgen mask` and `maskgen contact-sheet` through the real click group, bad inputs included."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskgen.cli import main


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    """A folder of good, odd and broken images, each named after what it is."""
    d = tmp_path_factory.mktemp("inputs")
    bgr = cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(d / "good.jpg"), bgr)
    (d / "empty.jpg").write_bytes(b"")
    (d / "corrupt.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    data = (d / "good.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    cv2.imwrite(str(d / "gray.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    Image.fromarray(astronaut).convert("CMYK").save(d / "cmyk.jpg", "JPEG", quality=92)
    cv2.imwrite(str(d / "sixteen.png"), bgr.astype(np.uint16) * 257)
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    cv2.imwrite(str(d / "noface.png"), np.full((240, 320, 3), 90, np.uint8))
    head = bgr[:300, 80:380]
    cv2.imwrite(str(d / "two_faces.png"), np.hstack([head, head[:, ::-1]]))
    sub = d / "sub"
    sub.mkdir()
    cv2.imwrite(str(sub / "nested.jpg"), bgr)
    return d


def _records(out: Path) -> dict[str, dict]:
    return {r["path"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


def test_mask_command_reports_every_input(tmp_path: Path, bad_inputs: Path) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["mask", str(bad_inputs), "-o", str(out), "--type", "kn95", "--seed", "3"])
    assert res.exit_code == 0, res.output
    recs = _records(out)
    assert set(recs) == {
        "good.jpg", "empty.jpg", "corrupt.jpg", "truncated.jpg", "gray.png", "cmyk.jpg",
        "sixteen.png", "rgba.png", "noface.png", "two_faces.png", "sub/nested.jpg",
    }  # fmt: skip
    for ok in ("good.jpg", "gray.png", "cmyk.jpg", "sixteen.png", "rgba.png", "sub/nested.jpg"):
        r = recs[ok]
        assert r["status"] == "ok" and r["reason"] is None, (ok, r)
        assert r["fit"] > 0.9 and r["spec"]["type"] == "kn95" and len(r["faces"]) == 1
        img = cv2.imread(str(out / r["output"]))
        assert img is not None and img.shape[:2] == (512, 512)
    assert recs["empty.jpg"]["reason"] == "empty file"
    assert recs["corrupt.jpg"]["reason"].startswith("corrupt")
    assert "truncated" in recs["truncated.jpg"]["reason"]
    assert recs["noface.png"]["reason"] == "no_face"
    for bad in ("empty.jpg", "corrupt.jpg", "truncated.jpg", "noface.png"):
        assert recs[bad]["status"] == "failed"
        assert "output" not in recs[bad]
    assert recs["two_faces.png"]["status"] == "ok" and len(recs["two_faces.png"]["faces"]) == 2
    assert "ok: 7" in res.output and "no_face: 1" in res.output


def test_mask_command_is_deterministic_and_random_types(tmp_path: Path, bad_inputs: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        res = CliRunner().invoke(main, ["mask", str(bad_inputs / "good.jpg"), "-o", str(out), "--type", "random", "--seed", "5", "--format", "png"])
        assert res.exit_code == 0, res.output
    ra, rb = _records(a)["good.jpg"], _records(b)["good.jpg"]
    assert ra == rb and ra["spec"]["color"] is not None
    assert np.array_equal(cv2.imread(str(a / "good.png")), cv2.imread(str(b / "good.png")))


def test_mask_command_rejects_bad_options(tmp_path: Path, bad_inputs: Path) -> None:
    res = CliRunner().invoke(main, ["mask", str(bad_inputs), "-o", str(tmp_path / "o"), "--color", "notacolour"])
    assert res.exit_code != 0 and "colour" in res.output


def test_mask_command_with_pack(tmp_path: Path, bad_inputs: Path, masktheface_dir: Path) -> None:
    out = tmp_path / "p"
    res = CliRunner().invoke(
        main, ["mask", str(bad_inputs / "good.jpg"), "-o", str(out), "--type", "pack:surgical_green", "--pack", str(masktheface_dir), "--alpha"]
    )
    assert res.exit_code == 0, res.output
    r = _records(out)["good.jpg"]
    assert r["status"] == "ok" and r["fit"] > 0.9
    assert (out / "good.alpha.png").is_file()


def test_contact_sheet_command(tmp_path: Path) -> None:
    out = tmp_path / "sheet.png"
    res = CliRunner().invoke(main, ["contact-sheet", "-o", str(out), "--faces", "1", "--cell", "64"])
    assert res.exit_code == 0, res.output
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 64 * 8 and img.shape[1] > 64 * 4


def test_folder_commands_detect_in_groups_with_the_same_results(tmp_path: Path, bad_inputs: Path, lfw_dir: Path, monkeypatch) -> None:
    """`maskgen mask` and `maskgen landmarks` detect a folder's images in groups (batched
    landmark fits): outputs are those of one image at a time, bad inputs included."""
    import shutil

    from maskgen.masks import cli as mcli

    src = tmp_path / "in"
    shutil.copytree(bad_inputs, src)
    for f in sorted(lfw_dir.glob("*/*.jpg"))[::700][:16]:
        shutil.copy(f, src / f.name)
    outs = {}
    for group in (5, 1):  # 5: several groups, one per flush; 1: no batching at all
        monkeypatch.setattr(mcli, "GROUP_IMAGES", group)
        out = tmp_path / f"masked{group}"
        r = CliRunner().invoke(main, ["mask", str(src), "-o", str(out), "--type", "random", "--wear", "random", "--seed", "3"])
        assert r.exit_code == 0, r.output
        lm = tmp_path / f"landmarks{group}.jsonl"
        r = CliRunner().invoke(main, ["landmarks", str(src), "-o", str(lm), "--select", "center"])
        assert r.exit_code == 0, r.output
        images = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.jpg"))}
        outs[group] = (_records(out), lm.read_text(), images)
    assert outs[5] == outs[1]
    recs = outs[5][0]
    assert sum(r["status"] == "ok" for r in recs.values()) >= 18
    assert recs["corrupt.jpg"]["status"] == "failed" and recs["noface.png"]["status"] == "failed"
