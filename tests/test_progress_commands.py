"""Every long command, run small as its own process: progress lines of the one format on stderr
(done/total, rate, ETA), and nothing on stderr with ``--quiet`` but errors and warnings.

The inputs are made from ``skimage.data.astronaut()`` (a real face available everywhere): a few
shifted, brightened crops, so no data folder is needed. The build (Ray) and the training run on
its shards share one module-scoped build; Ray gets its own temp folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

# 12:00:05 [mask] 3/3 images (100%) | 1.2 images/s | ETA 0:00:00 | ok 3, failed 0
LINE = re.compile(r"^\d\d:\d\d:\d\d \[(?P<label>[\w -]+)\] (?P<done>[\d,]+)/(?P<total>[\d,]+) (?P<unit>\w+)"
                  r"(?: \(\d+%\))? \| [\d.,]+ (?P=unit)/s \| ETA \d+:\d\d:\d\d(?: \| .*)?$")
SUMMARY = re.compile(r"^\d\d:\d\d:\d\d \[(?P<label>[\w -]+)\] done: [\d,]+ \w+ in \d+:\d\d:\d\d \([\d.,]+ \w+/s\)")


def _faces(folder: Path, n: int, *, start: int = 0) -> list[Path]:
    """``n`` distinct real face photos: crops of the astronaut, shifted and brightened a little."""
    from skimage.data import astronaut

    img = cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        crop = img[4 * i: 4 * i + 400, 30 + 3 * i: 30 + 3 * i + 380]
        crop = cv2.convertScaleAbs(crop, alpha=1.0, beta=2 * i)
        p = folder / f"face_{i:02d}.jpg"
        cv2.imwrite(str(p), crop)
        out.append(p)
    return out


def _run(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "maskgen", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _progress(stderr: str, label: str, summary: bool = True) -> list[re.Match]:
    """The progress lines of ``label``; the last one reaches its total and (``summary``) the
    job's summary line follows (a build's stages end in the build's own ``[done]`` line)."""
    lines = stderr.splitlines()
    found = [m for m in map(LINE.match, lines) if m and m["label"] == label]
    assert found, f"no progress line of [{label}] in:\n{stderr[-3000:]}"
    assert found[-1]["done"] == found[-1]["total"], found[-1].group(0)
    if summary:
        assert any((m := SUMMARY.match(x)) and m["label"] == label for x in lines), stderr[-3000:]
    return found


def _only_warnings(stderr: str) -> None:
    """Quiet: stderr holds nothing but warnings (and their indented source lines)."""
    noise = [x for x in stderr.splitlines() if x.strip() and "warn" not in x.lower() and not x.startswith(" ")]
    assert not noise, "\n".join(noise[:20])


@pytest.fixture(scope="module")
def ray_env():
    """Ray's temp folder for this module's runs (kept short: Ray's socket paths are limited)."""
    with tempfile.TemporaryDirectory(prefix="mg-ray-") as d:
        yield {"RAY_TMPDIR": d}


def test_folder_mask(tmp_path: Path) -> None:
    _faces(tmp_path / "in", 3)
    proc = _run("mask", str(tmp_path / "in"), "-o", str(tmp_path / "out"))
    lines = _progress(proc.stderr, "mask")
    assert lines[-1]["done"] == "3" and lines[-1]["unit"] == "images" and "ok 3, failed 0" in lines[-1].group(0)
    assert "3 images, 3 written" in proc.stderr
    quiet = _run("mask", str(tmp_path / "in"), "-o", str(tmp_path / "out-q"), "--quiet")
    _only_warnings(quiet.stderr)
    assert len(list((tmp_path / "out-q").glob("*.jpg"))) == 3


def test_folder_audit(tmp_path: Path) -> None:
    _faces(tmp_path / "in", 4)
    proc = _run("audit", str(tmp_path / "in"), "-o", str(tmp_path / "out"))
    images = [m for m in _progress(proc.stderr, "audit") if m["unit"] == "images"]
    assert images and images[-1]["done"] == images[-1]["total"] == "4"  # then the thumbnail strips
    assert "[audit] landmarks and attributes of 4 images" in proc.stderr
    quiet = _run("audit", str(tmp_path / "in"), "-o", str(tmp_path / "out-q"), "--quiet")
    _only_warnings(quiet.stderr)
    assert (tmp_path / "out-q" / "DATA_CARD.md").is_file()


def _pairs(tmp_path: Path) -> None:
    """4 face images and a generic pair list: two folds of one genuine and one impostor-labelled
    pair (the labels only steer the metrics)."""
    names = [p.name for p in _faces(tmp_path / "img", 4)]
    (tmp_path / "pairs.txt").write_text(f"{names[0]} {names[1]} 1 0\n{names[0]} {names[2]} 0 0\n"
                                        f"{names[2]} {names[3]} 1 1\n{names[1]} {names[3]} 0 1\n")


def test_tiny_eval(tmp_path: Path) -> None:
    _pairs(tmp_path)
    args = ["eval", "--model", "dlib", "--pairs", str(tmp_path / "pairs.txt"), "--images", str(tmp_path / "img"),
            "--cases", "1", "--no-identification"]
    proc = _run(*args, "-o", str(tmp_path / "out"))
    assert _progress(proc.stderr, "eval")[-1]["done"] == "4"
    quiet = _run(*args, "-o", str(tmp_path / "out-q"), "--quiet")
    _only_warnings(quiet.stderr)
    assert (tmp_path / "out-q" / "results.json").is_file()


def test_tiny_make_bin(tmp_path: Path) -> None:
    _pairs(tmp_path)
    args = ["make-bin", str(tmp_path / "pairs.txt"), "--images", str(tmp_path / "img"), "--case", "1,2"]
    proc = _run(*args, "-o", str(tmp_path / "p_{case}.bin"))
    lines = _progress(proc.stderr, "make-bin")
    assert lines[-1]["done"] == "8" and lines[-1]["unit"] == "pairs"  # 4 pairs x 2 cases
    quiet = _run(*args, "-o", str(tmp_path / "q_{case}.bin"), "--quiet")
    _only_warnings(quiet.stderr)
    assert (tmp_path / "q_2.bin").is_file()


def test_tiny_landmarks_model(tmp_path: Path) -> None:
    _faces(tmp_path / "photos", 4)
    (tmp_path / "no-lfw").mkdir()
    args = ["landmarks-model", "--photos", str(tmp_path / "photos"), "--jitters", "0", "--cascade", "2",
            "--trees", "2", "--threads", "1", "--lfw", str(tmp_path / "no-lfw")]
    proc = _run(*args, "--out", str(tmp_path / "m.dat"))
    lines = _progress(proc.stderr, "landmarks-model")
    assert lines[-1]["done"] == "4" and lines[-1]["unit"] == "photos"
    assert "[landmarks-model] trained in " in proc.stderr
    quiet = _run(*args, "--out", str(tmp_path / "m-q.dat"), "--quiet")
    _only_warnings(quiet.stderr)
    assert (tmp_path / "m-q.dat").is_file()


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_env: dict) -> dict:
    """A small build of 2 identities x 4 astronaut crops (Ray, one worker), loud and quiet."""
    root = tmp_path_factory.mktemp("progress-build")
    for k in range(2):
        _faces(root / "src" / f"id{k}", 4, start=4 * k)
    args = ["build", f"folder:{root / 'src'}", "--ratio", "0.5", "--workers", "1", "--no-report"]
    loud = _run(*args, "-o", str(root / "out"), env=ray_env)
    quiet = _run(*args, "-o", str(root / "out-q"), "--quiet", env=ray_env)
    return {"root": root, "loud": loud, "quiet": quiet}


def test_build(built: dict) -> None:
    lines = _progress(built["loud"].stderr, "execute", summary=False)
    assert lines[-1]["done"] == "8" and "shards 1/1" in lines[-1].group(0)
    _progress(built["loud"].stderr, "landmarks", summary=False)
    _only_warnings(built["quiet"].stderr)
    for line in ("Started a local Ray instance", "Token authentication"):
        assert line not in built["quiet"].stderr
    # the build log keeps every line, quiet or not
    log = (built["root"] / "out-q" / "build.log").read_text()
    _progress(log, "execute", summary=False)
    assert "[done] 8 samples" in log


def test_tiny_train(built: dict, tmp_path: Path) -> None:
    shards = str(built["root"] / "out" / "shards" / "*.tar")
    args = ["train", "--config", "train_tiny_cpu", "--shards", shards, "--max-steps", "3", "--log-every", "1",
            "--num-workers", "0"]
    proc = _run(*args, "--output", str(tmp_path / "runs"))
    lines = _progress(proc.stderr, "train")
    assert lines[-1]["done"] == "3" and lines[-1]["unit"] == "steps" and "loss " in lines[-1].group(0)
    quiet = _run(*args, "--output", str(tmp_path / "runs-q"), "--quiet")
    _only_warnings(quiet.stderr)


def test_a_quiet_ray_start_gives_rays_loggers_back_when_stopped(ray_env: dict, monkeypatch) -> None:
    """Quiet silences Ray's loggers for the run only, not for the rest of the process."""
    import logging

    import ray

    from maskgen.parallel import start_ray, stop_ray

    if ray.is_initialized():
        pytest.skip("Ray already runs in this test process")
    monkeypatch.setenv("RAY_TMPDIR", ray_env["RAY_TMPDIR"])
    import ray.data

    bars = ray.data.DataContext.get_current().enable_progress_bars
    before = {n: logging.getLogger(n).level for n in ("ray", "ray.data")}
    started, _ = start_ray(1, quiet=True)
    try:
        assert started and logging.getLogger("ray").level == logging.ERROR
        assert ray.data.DataContext.get_current().enable_progress_bars is False  # Ray Data's bars too
    finally:
        stop_ray()
    assert {n: logging.getLogger(n).level for n in before} == before
    assert ray.data.DataContext.get_current().enable_progress_bars == bars
