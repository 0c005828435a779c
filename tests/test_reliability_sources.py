"""Damaged RecordIO and WebDataset inputs, made as an attacker would make them: every record or
sample gets its own row and reason, a bad one never costs its neighbours, no length field makes
a scan read more than the file holds, and a build over them completes."""

from __future__ import annotations

import io
import json
import struct
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

import faults
from maskgen.datasets import recordio as R
from maskgen.datasets.sources import parse_source

N = 30


@pytest.fixture(scope="module")
def crops(astronaut: np.ndarray) -> list[tuple[int, bytes]]:
    """30 real face crops of 3 identities (label, JPEG)."""
    face = cv2.cvtColor(astronaut[20:240, 140:360], cv2.COLOR_RGB2BGR)
    out = []
    for i in range(N):
        img = cv2.resize(np.roll(face, 3 * i, axis=1), (112, 112))
        out.append((i // 10, cv2.imencode(".jpg", img)[1].tobytes()))
    return out


def _rec(tmp_path: Path, crops) -> tuple[Path, Path, dict[int, int]]:
    rec = R.write_recordio(crops, tmp_path / "train.rec")
    idx = rec.with_suffix(".idx")
    return rec, idx, R.read_idx(idx)


def _scan(spec: str) -> list[dict]:
    return parse_source(spec).scan().select(["path", "offset", "_drop"]).to_pylist()


def _images(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(rows with an image, rows with a reason)."""
    return [r for r in rows if r["_drop"] is None], [r for r in rows if r["_drop"] is not None]


def test_bad_record_costs_only_itself(tmp_path: Path, crops) -> None:
    rec, _, offsets = _rec(tmp_path, crops)
    data = bytearray(rec.read_bytes())
    data[offsets[11]: offsets[11] + 4] = b"JUNK"  # record 11's magic word destroyed
    rec.write_bytes(bytes(data))
    good, bad = _images(_scan(f"recordio:{rec}"))
    assert len(good) == N - 1 and [r["_drop"] for r in bad] == ["bad magic"]
    assert bad[0]["offset"] == offsets[11]


def test_bad_idx_lines_get_rows(tmp_path: Path, crops) -> None:
    rec, idx, offsets = _rec(tmp_path, crops)
    lines = idx.read_text().splitlines()
    lines[5] = "this is not an index line"
    lines[6] = f"6\t-{offsets[6]}"  # a negative offset
    lines[7] = f"7\t{10 ** 15}"  # far past the end
    idx.write_text("\n".join(lines) + "\n")
    good, bad = _images(_scan(f"recordio:{rec}"))
    reasons = sorted(r["_drop"] for r in bad)
    assert reasons == ["idx offset out of range", "idx offset out of range", "malformed idx line"]
    assert len(good) == N - 3


def test_huge_length_field_is_never_read(tmp_path: Path, crops) -> None:
    """A length field of 2^29-1 (the format's maximum) is refused from the file size, not read."""
    rec, _, offsets = _rec(tmp_path, crops)
    data = bytearray(rec.read_bytes())
    data[offsets[3] + 4: offsets[3] + 8] = struct.pack("<I", (1 << 29) - 1)
    rec.write_bytes(bytes(data))
    env = {"PYTHONPATH": str(Path(__file__).parent)}
    out, before, peak = faults.peak_rss_of(f"""
from maskgen.datasets.sources import parse_source
t = parse_source({f"recordio:{rec}"!r}).scan()
print(sorted(set(d for d in t.column("_drop").to_pylist() if d)), t.num_rows)""", env={**__import__("os").environ, **env})
    assert out == f"['bad length'] {N}"
    assert peak - before < 64 * 1024  # KiB: nothing near 512 MB was allocated


def test_without_idx_every_record_is_found(tmp_path: Path, crops) -> None:
    rec, idx, _ = _rec(tmp_path, crops)
    idx.unlink()
    good, bad = _images(_scan(f"recordio:{rec}"))
    assert len(good) == N and not bad


def test_empty_rec_build_exits_non_zero(tmp_path: Path) -> None:
    (tmp_path / "empty.rec").write_bytes(b"")
    res = faults.run_maskgen(["build", f"recordio:{tmp_path / 'empty.rec'}", "-o", tmp_path / "out",
                              "--workers", "1", "--quiet"], cwd=tmp_path)
    line = faults.error_line(res)
    assert "no image" in line.lower() or "0 images" in line
    # the reason the scan found nothing is in the build's log (noted while listing the units)
    assert "empty .rec file: no records" in (tmp_path / "out" / "build.log").read_text()


def _tar(path: Path, members: list[tuple[str, bytes]], truncate: int | None = None) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    path.write_bytes(data[:truncate] if truncate else data)
    return path


def test_webdataset_hostile_members(tmp_path: Path, crops) -> None:
    jpg = crops[0][1]
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    members = [("a.jpg", jpg), ("a.cls", b"1"),
               ("deep.jpg", jpg), ("deep.json", deep),
               ("big.jpg", jpg), ("big.cls", b"12345678901234567890123"),
               ("../escape.jpg", jpg), ("../escape.cls", b"2"),
               ("b.jpg", jpg), ("b.cls", b"3")]
    shard = _tar(tmp_path / "s-000000.tar", members)
    rows = parse_source(f"wds:{shard}").scan().select(["member", "_drop"]).to_pylist()
    by = {r["member"]: r["_drop"] for r in rows}
    assert by["a.jpg"] is None and by["b.jpg"] is None
    assert by["deep.jpg"] == "json too deep" and by["big.jpg"] == "bad cls"
    assert any(d == "unsafe member name" for d in by.values())


def test_truncated_tar_keeps_what_is_before(tmp_path: Path, crops) -> None:
    members = []
    for i in range(6):
        members += [(f"k{i}.jpg", crops[i][1]), (f"k{i}.cls", b"%d" % (i % 2))]
    full = _tar(tmp_path / "full.tar", members)
    cut = _tar(tmp_path / "cut-000000.tar", members, truncate=len(full.read_bytes()) * 2 // 3)
    rows = parse_source(f"wds:{cut}").scan().select(["member", "_drop"]).to_pylist()
    good = [r for r in rows if r["_drop"] is None]
    assert 2 <= len(good) < 6 and any(r["_drop"] in ("truncated tar", "truncated member") for r in rows)


def test_build_over_a_damaged_rec(tmp_path: Path, crops) -> None:
    """End to end: one destroyed record and two bad idx lines among 30; the build keeps the 27
    good images, and the manifest holds a row and reason for the other three."""
    rec, idx, offsets = _rec(tmp_path, crops)
    data = bytearray(rec.read_bytes())
    data[offsets[11]: offsets[11] + 4] = b"JUNK"
    rec.write_bytes(bytes(data))
    lines = idx.read_text().splitlines()
    lines[5], lines[6] = "garbage", f"6\t-{offsets[6]}"
    idx.write_text("\n".join(lines) + "\n")
    res = faults.run_maskgen(["build", f"recordio:{rec}", "-o", tmp_path / "out", "--workers", "1", "--quiet"],
                             cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    t = pq.read_table(tmp_path / "out" / "manifest.parquet", columns=["status", "reason"]).to_pylist()
    assert len(t) == N and sum(r["status"] == "ok" for r in t) == N - 3
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["num_samples"] == N - 3
