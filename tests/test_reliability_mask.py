"""``maskgen mask`` never touches the user's files and never writes one output over another."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

import faults
from maskgen.masks.outfiles import RESULTS, output_names


@pytest.fixture
def photos(tmp_path: Path, astronaut: np.ndarray) -> Path:
    """x.jpg and x.png (different pictures, one stem), a nested photo, a FIFO and a /dev/zero link."""
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    bgr = cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(d / "x.jpg"), bgr)
    cv2.imwrite(str(d / "x.png"), bgr[:, ::-1])
    cv2.imwrite(str(d / "sub" / "y.jpg"), bgr)
    faults.make_fifo(d / "fifo.jpg")
    (d / "zero.jpg").symlink_to("/dev/zero")
    return d


def _records(out: Path) -> dict[str, dict]:
    return {r["path"]: r for r in map(json.loads, (out / RESULTS).read_text().splitlines())}


def _regular(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def test_two_inputs_sharing_a_stem_give_two_outputs(tmp_path: Path, photos: Path) -> None:
    out = tmp_path / "out"
    res = faults.run_maskgen(["mask", photos, "-o", out, "--alpha"], cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    recs = _records(out)
    assert recs["x.jpg"]["output"] == "x.jpg.jpg" and recs["x.png"]["output"] == "x.png.jpg"
    assert recs["sub/y.jpg"]["output"] == "sub/y.jpg"
    a, b = cv2.imread(str(out / "x.jpg.jpg")), cv2.imread(str(out / "x.png.jpg"))
    assert a is not None and b is not None and not np.array_equal(a, b)  # two pictures, two files
    assert (out / "x.jpg.alpha.png").is_file() and (out / "x.png.alpha.png").is_file()
    # the FIFO and the device got a reason without blocking or reading
    assert recs["fifo.jpg"]["reason"] == "unreadable: not a regular file (a FIFO)"
    assert recs["zero.jpg"]["reason"] == "unreadable: not a regular file (a character device)"
    # the summary counts the files really written
    assert "5 images, 3 written" in res.stderr
    assert sorted(p.name for p in out.rglob("*.jpg")) == ["x.jpg.jpg", "x.png.jpg", "y.jpg"]


def test_output_inside_or_equal_to_input_refused(tmp_path: Path, photos: Path) -> None:
    before = _regular(photos)
    for out in (photos, photos / "masked", photos / "sub"):
        res = faults.run_maskgen(["mask", photos, "-o", out], cwd=tmp_path)
        assert "is inside the input" in faults.error_line(res)
    res = faults.run_maskgen(["mask", photos / "sub", "-o", photos], cwd=tmp_path)
    assert "is inside the output folder" in faults.error_line(res)
    res = faults.run_maskgen(["mask", photos / "x.jpg", "-o", photos], cwd=tmp_path)
    assert "is inside the output folder" in faults.error_line(res)
    (tmp_path / "link").symlink_to(photos)  # the same folder through a link
    res = faults.run_maskgen(["mask", tmp_path / "link", "-o", photos / "o"], cwd=tmp_path)
    assert "is inside the input" in faults.error_line(res)
    assert _regular(photos) == before and not (photos / "masked").exists()


def test_a_users_folder_is_never_written_into(tmp_path: Path, photos: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "x.jpg.jpg").write_bytes(b"my own file")
    res = faults.run_maskgen(["mask", photos, "-o", mine], cwd=tmp_path)
    assert "is not empty and was not made by maskgen" in faults.error_line(res)
    assert _regular(mine) == {"x.jpg.jpg": b"my own file"}


def test_rerun_into_its_own_folder_gives_the_same_files(tmp_path: Path, photos: Path) -> None:
    out = tmp_path / "out"
    first = None
    for _ in range(2):
        res = faults.run_maskgen(["mask", photos / "x.jpg", "-o", out, "--seed", "4"], cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        now = {k: v for k, v in _regular(out).items() if k != ".maskgen-output.lock"}  # holds the pid
        assert first is None or now == first
        first = now
    assert sorted(first) == [".maskgen-output.json", RESULTS, "x.jpg"]
    from maskgen.outputs import claim

    with claim(tmp_path / "b", "build"):  # another kind of maskgen output: not mixed with masks
        pass
    res = faults.run_maskgen(["mask", photos / "x.jpg", "-o", tmp_path / "b"], cwd=tmp_path)
    assert "holds maskgen build output" in faults.error_line(res)


def test_disk_full_is_one_line_and_leaves_no_partial_image(tmp_path: Path, astronaut: np.ndarray) -> None:
    src = tmp_path / "src"
    src.mkdir()
    bgr = cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR)
    for i in range(12):
        cv2.imwrite(str(src / f"{i:02d}.png"), np.roll(bgr, 5 * i, axis=1))
    try:
        ctx = faults.tmpfs(tmp_path / "small", "600k")
        small = ctx.__enter__()
    except OSError as exc:
        pytest.skip(str(exc))
    try:
        res = faults.run_maskgen(["mask", src, "-o", small / "out", "--format", "png"], cwd=tmp_path, timeout=300)
        line = faults.error_line(res)
        assert line.startswith(f"Error: cannot write {small / 'out'}/") and "No space left on device" in line
        written = sorted((small / "out").glob("*.png"))
        assert written, "the tmpfs should hold a few outputs before it filled"
        for p in written:  # every file under its final name is whole
            assert cv2.imread(str(p)) is not None and cv2.imread(str(p)).shape == bgr.shape
        assert not list((small / "out").glob("*.tmp")), "a temp file was left behind"
    finally:
        ctx.__exit__(None, None, None)


def test_output_names_rule() -> None:
    names = output_names(["a/x.jpg", "a/x.png", "a/y.jpg", "b/x.jpg", "X.JPG", "x.jpg"], "jpg")
    assert names == {"a/x.jpg": "a/x.jpg.jpg", "a/x.png": "a/x.png.jpg", "a/y.jpg": "a/y.jpg",
                     "b/x.jpg": "b/x.jpg", "X.JPG": "X.JPG.jpg", "x.jpg": "x.jpg~2.jpg"}  # case-insensitive
    # a plain name taken by another input's source-extension name, alpha files, results.jsonl
    names = output_names(["x.jpg", "x.png", "x.jpg.gif", "results.png"], "jpg")
    assert len(set(n.casefold() for n in names.values())) == 4 and RESULTS not in names.values()
    assert names["x.jpg.gif"] == "x.jpg~2.jpg" or names["x.jpg"] == "x.jpg~2.jpg"
    names = output_names(["x.alpha.png", "x.jpg"], "png", alpha=True)
    claimed = [n.casefold() for n in names.values()] + [n[:-4].casefold() + ".alpha.png" for n in names.values()]
    assert len(set(claimed)) == 4
    assert output_names(["b.png", "a.jpg"], "png") == output_names(["a.jpg", "b.png"], "png")


def test_two_runs_on_one_folder(tmp_path: Path, photos: Path) -> None:
    """While one run holds the folder, a second stops at once with one line naming its pid."""
    import os

    from maskgen.outputs import claim

    with claim(tmp_path / "out", "mask"):
        res = faults.run_maskgen(["mask", photos / "x.jpg", "-o", tmp_path / "out"], cwd=tmp_path)
    assert faults.error_line(res).endswith(f"is in use by another maskgen run (pid {os.getpid()})")
    assert not (tmp_path / "out" / "x.jpg").exists()


def test_hostile_folder_through_mask(tmp_path: Path, astronaut: np.ndarray) -> None:
    """The build's hostile folder through ``maskgen mask``: a result line per input, valid
    UTF-8 JSON (undecodable bytes as \\xNN), maskgen's own output folder inside never read."""
    kinds = faults.make_bad_folder(tmp_path / "src", cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    res = faults.run_maskgen(["mask", tmp_path / "src", "-o", tmp_path / "out"], cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "out" / RESULTS).read_bytes().decode("utf-8")  # strict: valid UTF-8
    recs = {r["path"]: r for r in map(json.loads, text.splitlines())}
    assert "alice0/caf\\xe9.jpg" in recs and recs["alice0/caf\\xe9.jpg"]["status"] == "ok"
    assert not any(p.startswith("previous-build/") for p in recs)
    assert recs["alice0/bomb.jpg"]["reason"].startswith("too large: 20000x20000")
    assert (tmp_path / "out" / os.fsdecode(b"alice0/caf\xe9.jpg")).is_file()
    assert all(p in kinds for p in recs)
