"""maskgen.fsio: whole-file replacement (bytes, text, file objects, writers that take a path)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest

from maskgen.fsio import atomic_open, atomic_path, tmp_glob, write_atomic
from maskgen.fsio import tmp_path as temp_name


def test_write_atomic_bytes_and_text(tmp_path: Path) -> None:
    p = write_atomic(tmp_path / "sub" / "a.bin", b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    write_atomic(p, "héllo\n")
    assert p.read_text(encoding="utf-8") == "héllo\n"
    assert sorted(x.name for x in p.parent.iterdir()) == ["a.bin"]  # no temporary file left


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    p = tmp_path / "stats.json"
    write_atomic(p, '{"old": 1}')
    with pytest.raises(RuntimeError):
        with atomic_open(p, "w") as f:
            f.write('{"new": ')
            raise RuntimeError("killed half way")
    assert json.loads(p.read_text()) == {"old": 1}
    assert list(tmp_path.glob(tmp_glob(p))) == []


def test_atomic_path_for_writers_that_take_a_path(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    img = np.full((8, 8, 3), 200, np.uint8)
    target = tmp_path / "face.png"
    with atomic_path(target, keep_suffix=True) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp != target
        assert cv2.imwrite(str(tmp), img)  # the format comes from the temporary name's suffix
    assert (cv2.imread(str(target)) == 200).all()
    assert [x.name for x in tmp_path.iterdir()] == ["face.png"]


def test_writer_that_wrote_nothing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "x.parquet"):
            pass
    assert not (tmp_path / "x.parquet").exists()


def test_temporary_names_are_unique_and_findable(tmp_path: Path) -> None:
    names = {temp_name(tmp_path / "m.dat") for _ in range(2)}
    a, b = names
    assert len(names) == 2 and a.parent == b.parent == tmp_path
    assert all(p.match(tmp_glob(tmp_path / "m.dat")) for p in (a, b))
    assert str(os.getpid()) in a.name


def test_atomic_open_refuses_append(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        with atomic_open(tmp_path / "log", "a"):
            pass


def _writer(path: str, value: int) -> None:
    for _ in range(50):
        write_atomic(path, bytes([value]) * 100_000)


def test_concurrent_writers_never_mix(tmp_path: Path) -> None:
    """Two processes replacing one file: every read sees one writer's complete bytes."""
    p = str(tmp_path / "shared.bin")
    write_atomic(p, b"\x00" * 100_000)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(p, v)) for v in (1, 2)]
    for q in procs:
        q.start()
    seen = set()
    while any(q.is_alive() for q in procs):
        data = Path(p).read_bytes()
        assert len(data) == 100_000 and len(set(data)) == 1
        seen.add(data[0])
    for q in procs:
        q.join()
        assert q.exitcode == 0
    assert list(tmp_path.glob("*.tmp")) == []
