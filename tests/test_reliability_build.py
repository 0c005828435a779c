"""A build over a folder of hostile inputs: every input gets its own row and reason, none hangs
or exhausts memory, nothing of maskgen's own output is read back as input.

One real build (Ray, 1 worker) over ``faults.make_bad_folder``; the assertions read the
manifest, the shards (with ``webdataset``) and the text outputs.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

import faults


@pytest.fixture(scope="module")
def bad_build(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> tuple[Path, dict, object]:
    work = tmp_path_factory.mktemp("badbuild")
    kinds = faults.make_bad_folder(work / "src", cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    res = faults.run_maskgen(["build", work / "src", "-o", work / "out", "--workers", "1", "--quiet"],
                             cwd=work, timeout=600)
    assert res.returncode == 0, res.stderr
    return work / "out", kinds, res


def _rows(out: Path) -> dict[str, dict]:
    t = pq.read_table(out / "manifest.parquet", columns=["path", "identity", "status", "reason"]).to_pylist()
    return {r["path"]: r for r in t}


def test_every_hostile_input_has_a_row_and_reason(bad_build) -> None:
    out, kinds, _ = bad_build
    rows = _rows(out)
    expect = {
        "alice0/fifo.jpg": "not a regular file",
        "alice0/zero.jpg": "not a regular file",
        "alice0/bomb.jpg": "decode: too large: 20000x20000 pixels exceeds",
        "alice0/bomb.png": "decode: too large:",
        "alice0/truncated.jpg": "decode: corrupt: truncated image data",
        "alice0/empty.jpg": "decode: empty file",
        "alice0/corrupt.jpg": "decode: corrupt:",
        "alice0/.hidden.jpg": "hidden file",
        "bob0/loop": "symlink loop",
    }
    for path, reason in expect.items():
        assert path in rows, f"no row for {path}"
        assert rows[path]["status"] in ("failed", "dropped") and rows[path]["reason"].startswith(reason), rows[path]
    # odd names are images like any other: a row each, built
    for path in ("alice0/caf\\xe9.jpg", "alice0/new\nline.jpg", "alice0/tab\tname.jpg", "jos\\xe90/0.jpg",
                 "evil\nname0/0.jpg", "<img src=x onerror=alert(0)>/0.jpg", "linked/0.jpg", "linked/1.jpg"):
        assert rows[path]["status"] == "ok", rows.get(path)
    # maskgen's own output folder inside the source is never scanned
    assert not any(p.startswith("previous-build/") for p in rows)
    assert len(rows) == len(kinds) - 1  # every input but the owned folder's file


def test_shards_hold_exactly_the_good_inputs(bad_build) -> None:
    import webdataset as wds

    out, kinds, _ = bad_build
    rows = _rows(out)
    ok = sum(r["status"] == "ok" for r in rows.values())
    shards = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    samples = list(wds.WebDataset(shards, shardshuffle=False))
    assert len(samples) == ok == json.loads((out / "dataset.json").read_text())["num_samples"]
    for s in samples:
        assert cv2.imdecode(np.frombuffer(s["jpg"], np.uint8), cv2.IMREAD_COLOR) is not None
    for shard in shards:  # no member escapes, names are plain keys
        with tarfile.open(shard) as tf:
            assert all("/" not in m.name and ".." not in m.name for m in tf.getmembers())


def test_the_build_says_what_it_dropped(bad_build) -> None:
    out, _, res = bad_build
    log = (out / "build.log").read_text(errors="replace")
    assert "failed" in log and "not a regular file" in log and "too large" in log


# --- the user's files, one run at a time, full disks --------------------------------------------

@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    return faults.face_folder(tmp_path_factory.mktemp("photos"), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))


BUILD = ["--workers", "1", "--quiet", "--samples-per-shard", "2", "--no-report", "--output", "original"]


def test_build_refuses_a_users_folder(tmp_path: Path, photos: Path) -> None:
    mine = tmp_path / "mine"
    (mine / "shards").mkdir(parents=True)
    (mine / "shards" / "train-000000.tar").write_bytes(b"my tar")
    (mine / "stats").mkdir()
    (mine / "stats" / "notes.json").write_text("{}")
    before = faults.tree_digest(mine)
    for mode in ("resume", "overwrite"):
        res = faults.run_maskgen(["build", photos, "-o", mine, "--mode", mode, *BUILD], cwd=tmp_path)
        assert "not made by maskgen" in faults.error_line(res)
    assert faults.tree_digest(mine) == before


def test_overwrite_never_follows_a_symlinked_shards_folder(tmp_path: Path, photos: Path) -> None:
    out = tmp_path / "out"
    assert faults.run_maskgen(["build", photos, "-o", out, *BUILD], cwd=tmp_path).returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "train-000000.tar").write_bytes(b"someone else's tar")
    import shutil

    shutil.rmtree(out / "shards")
    (out / "shards").symlink_to(elsewhere)
    faults.run_maskgen(["build", photos, "-o", out, "--mode", "overwrite", *BUILD], cwd=tmp_path)
    assert (elsewhere / "train-000000.tar").read_bytes() == b"someone else's tar"


def test_second_build_on_a_held_folder_stops(tmp_path: Path, photos: Path) -> None:
    import os

    from maskgen.outputs import claim

    with claim(tmp_path / "out", "build"):
        res = faults.run_maskgen(["build", photos, "-o", tmp_path / "out", *BUILD], cwd=tmp_path)
    assert faults.error_line(res).endswith(f"is in use by another maskgen run (pid {os.getpid()})")
    assert not (tmp_path / "out" / "shards").exists()


@pytest.fixture
def small_disk(tmp_path: Path):
    try:
        with faults.tmpfs(tmp_path / "disk", "400k") as d:
            yield d
    except OSError as exc:
        pytest.skip(str(exc))


def _fill_then_resume(tmp_path: Path, photos: Path, disk: Path):
    import subprocess

    full = faults.run_maskgen(["build", photos, "-o", disk / "out", *BUILD], cwd=tmp_path)
    shards = sorted((disk / "out" / "shards").glob("*.tar"))
    for shard in shards:  # whatever is under a final name is a whole shard
        with tarfile.open(shard) as tf:
            assert all(tf.extractfile(m).read() is not None for m in tf.getmembers() if m.isfile())
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    resumed = faults.run_maskgen(["build", photos, "-o", disk / "out", *BUILD], cwd=tmp_path)
    clean = faults.run_maskgen(["build", photos, "-o", tmp_path / "clean", *BUILD], cwd=tmp_path)
    return full, shards, resumed, clean


def test_disk_full_build_then_resume_gives_the_same_bytes(tmp_path: Path, photos: Path, small_disk: Path) -> None:
    full, shards, resumed, clean = _fill_then_resume(tmp_path, photos, small_disk)
    faults.error_line(full)  # non-zero, one line, no traceback
    assert len(shards) < 3, "the small disk should have stopped the build"
    assert resumed.returncode == 0 and clean.returncode == 0, resumed.stderr
    got = faults.tree_digest(small_disk / "out" / "shards")
    assert got == faults.tree_digest(tmp_path / "clean" / "shards") and len(got) == 3


def test_disk_full_build_names_the_file_and_reason(tmp_path: Path, photos: Path, small_disk: Path) -> None:
    full = faults.run_maskgen(["build", photos, "-o", small_disk / "out", *BUILD], cwd=tmp_path)
    line = faults.error_line(full)
    assert "cannot write" in line and "No space left on device" in line and "rerun" in line
