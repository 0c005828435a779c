"""maskgen.datasets.faces: the one per-image landmark pass, shared by the build's landmark
stage and the audit's folder scan."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from maskgen.datasets.faces import analyze_rows
from maskgen.masks.landmarks import detect_faces, select_faces


def _files(tmp_path: Path, astronaut: np.ndarray) -> list[Path]:
    two = np.concatenate([astronaut, astronaut[:, ::-1]], axis=1)  # two faces side by side
    paths = [tmp_path / "one.png", tmp_path / "two.png", tmp_path / "bad.jpg"]
    cv2.imwrite(str(paths[0]), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(paths[1]), cv2.cvtColor(np.ascontiguousarray(two), cv2.COLOR_RGB2BGR))
    paths[2].write_bytes(b"\xff\xd8 not a jpeg")
    return paths


def test_select_all_counts_every_face_and_takes_the_central_one(tmp_path: Path, astronaut: np.ndarray) -> None:
    paths = _files(tmp_path, astronaut)
    rows = [{"_cache_key": str(p), "path": str(p)} for p in paths]
    seen: list[tuple[tuple[int, ...], bool]] = []

    def measure(img: np.ndarray, res: dict) -> dict:
        seen.append((img.shape, res["landmarks"] is not None))
        return {"mean": float(img.mean())}

    got = analyze_rows(rows, "dlib", select="all", measure=measure)
    assert [r["a_status"] for r in got] == ["ok", "ok", "failed"]
    assert got[2]["a_reason"].startswith("decode:") and "mean" not in got[2]
    two = cv2.cvtColor(cv2.imread(str(paths[1])), cv2.COLOR_BGR2RGB)
    faces = detect_faces(two, "dlib")
    assert got[1]["n_faces"] == len(faces) >= 2
    central = select_faces(list(faces), two.shape[:2], "center")[0]
    assert got[1]["landmarks"] == central.landmarks.reshape(-1).tolist()
    # measure saw the decoded RGB pixels (not the detector's grey copy) with the face found
    assert seen == [(astronaut.shape, True), (two.shape, True)]
    assert got[0]["mean"] == float(astronaut.mean())


def test_the_build_and_the_audit_find_the_same_face(tmp_path: Path, astronaut: np.ndarray) -> None:
    """One face per image: the build's central search and the audit's every-face search agree."""
    paths = _files(tmp_path, astronaut)[:1]
    rows = [{"_cache_key": str(p), "path": str(p)} for p in paths]
    build = analyze_rows(rows, "dlib")[0]
    audit = analyze_rows(rows, "dlib", select="all")[0]
    for k in ("a_status", "landmarks", "box", "yaw", "pitch", "roll", "width", "height", "phash"):
        assert build[k] == audit[k], k


def test_a_reader_failure_costs_its_row_only(tmp_path: Path, astronaut: np.ndarray) -> None:
    """Whatever a source's reader raises for one row (not only a ReadError or an OSError) is that
    row's reason; its neighbours are analysed. Without ``hash_images`` no pHash is computed."""
    paths = _files(tmp_path, astronaut)[:1]
    rows = [{"_cache_key": "a", "path": str(paths[0])}, {"_cache_key": "b", "path": "boom"},
            {"_cache_key": "c", "path": "oom"}, {"_cache_key": "d", "path": str(paths[0])}]

    def read(row: dict) -> bytes:
        if row["path"] == "boom":
            raise RuntimeError("reader broke")
        if row["path"] == "oom":
            raise MemoryError
        return Path(row["path"]).read_bytes()

    got = analyze_rows(rows, "dlib", read=read, hash_images=False)
    assert [r["a_status"] for r in got] == ["ok", "failed", "failed", "ok"]
    assert got[1]["a_reason"] == "unreadable: RuntimeError: reader broke"
    assert got[2]["a_reason"] == "unreadable: out of memory"
    assert "phash" not in got[0] and got[0]["landmarks"] == got[3]["landmarks"]
    assert isinstance(analyze_rows(rows[:1], "dlib", read=read)[0]["phash"], int)
