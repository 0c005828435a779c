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


def test_a_writer_killed_mid_write_leaves_the_old_file(tmp_path: Path) -> None:
    """A process that dies inside the block (no clean-up runs) leaves the old file whole and
    its temp file findable by name."""
    import subprocess
    import sys

    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    code = ("import os, sys; from maskgen.fsio import atomic_open\n"
            "with atomic_open(sys.argv[1], 'wb') as f:\n"
            "    f.write(b'new, half written'); f.flush(); os._exit(9)\n")
    rc = subprocess.run([sys.executable, "-c", code, str(target)], check=False).returncode
    assert rc == 9
    assert target.read_bytes() == b"old"
    left = list(tmp_path.glob(tmp_glob(target)))
    assert len(left) == 1 and left[0].read_bytes() == b"new, half written"


def test_replace_false_never_replaces_a_file(tmp_path: Path) -> None:
    target = tmp_path / "train.idx"
    with atomic_path(target, replace=False) as tmp:
        tmp.write_text("0\t0\n")
    assert target.read_text() == "0\t0\n"
    with pytest.raises(FileExistsError), atomic_path(target, replace=False) as tmp:
        tmp.write_text("other")
    assert target.read_text() == "0\t0\n"
    assert not list(tmp_path.glob(tmp_glob(target)))  # the temp file is gone


def test_output_writes_fail_as_one_line_and_leave_no_temp(tmp_path: Path) -> None:
    """maskgen.outputs' writers are fsio's with a failed write as one OutputError line."""
    from maskgen.errors import OutputError
    from maskgen.outputs import is_tmp_of, replacing, unique_tmp, write_file

    assert is_tmp_of(unique_tmp(tmp_path / "x.tar").name, "x.tar")
    assert unique_tmp(tmp_path / "x.tar") != unique_tmp(tmp_path / "x.tar")  # unique per call
    write_file(tmp_path / "x.tar", b"data")
    assert (tmp_path / "x.tar").read_bytes() == b"data"
    (tmp_path / "d").mkdir()
    with pytest.raises(OutputError, match="cannot write"), replacing(tmp_path / "d") as tmp:
        tmp.write_bytes(b"a file cannot replace a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "x.tar"]


def test_files_are_replaced_only_through_fsio() -> None:
    """No hand-written temp file + ``os.replace`` outside maskgen.fsio (folders that are
    renamed into place whole are the only other renames)."""
    import re

    root = Path(__file__).resolve().parents[1] / "maskgen"
    folder_renames = {"masks/ert.py", "datasets/lfw.py"}  # a cache folder, a staged download folder
    found = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        if rel == "fsio.py":
            continue
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\bos\.(replace|rename)\(|\.replace\(out\)|os\.link\(", code):
                found.append((rel, n, line.strip()))
    assert {rel for rel, _, _ in found} <= folder_renames, found
