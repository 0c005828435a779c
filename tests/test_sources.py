"""Source plug-ins: the registry, streaming scans, and fault injection on real bad inputs
(FIFOs, sockets, links to /dev/zero, byte names, link loops, corrupt RecordIO, hostile tars)."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import signal
import socket
import struct
import tarfile
from pathlib import Path

import pyarrow as pa
import pytest

from maskgen.datasets import filters as F
from maskgen.datasets import recordio as R
from maskgen.datasets.sources import (
    BATCH_ROWS,
    SCAN_SCHEMA,
    ReadError,
    Source,
    SourceNotFound,
    parse_source,
    source_kinds,
)
from maskgen.datasets.sources import folder as folder_mod
from maskgen.datasets.sources import recordio as rec_mod
from maskgen.datasets.tarwriter import write_tar
from maskgen.errors import InputError

NAMES = ["Aaron_Peirsol", "Abdullah_Gul", "Adrien_Brody"]


@pytest.fixture(scope="module")
def faces(lfw_dir: Path) -> list[tuple[int, bytes]]:
    """(label, JPEG bytes) of real LFW images, grouped by label."""
    return [(i, f.read_bytes()) for i, n in enumerate(NAMES) for f in sorted((lfw_dir / n).iterdir())[:4]]


@pytest.fixture()
def no_hang():
    """Fail (instead of hanging the suite) if a read blocks, e.g. on a FIFO."""
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("a scan or read blocked"))
    signal.alarm(20)
    yield
    signal.alarm(0)


def rows_by_path(src: Source) -> dict[str, dict]:
    return {r["path"]: r for r in src.scan().to_pylist()}


# ------------------------------------------------------------------ registry
def test_registry_and_plain_path_detection(lfw_dir: Path, tmp_path: Path, faces) -> None:
    kinds = source_kinds()
    assert {"folder", "lfw", "recordio", "webdataset"} <= set(kinds)
    R.write_recordio(faces, tmp_path / "rec" / "train.rec")
    write_tar(tmp_path / "w" / "s-000000.tar", [("a.jpg", faces[0][1]), ("a.cls", b"0")])
    (tmp_path / "plain").mkdir()
    cases = {
        "lfw": "lfw",
        str(lfw_dir): "lfw",
        f"folder:{lfw_dir}": "folder",
        str(tmp_path / "plain"): "folder",
        f"recordio:{tmp_path / 'rec' / 'train.rec'}": "recordio",
        f"rec:{tmp_path / 'rec'}": "recordio",
        str(tmp_path / "rec"): "recordio",
        str(tmp_path / "rec" / "train.rec"): "recordio",
        f"wds:{tmp_path}/w/*.tar": "webdataset",
        f"webdataset:{tmp_path}/w/s-{{000000..000000}}.tar": "webdataset",
        str(tmp_path / "w" / "s-000000.tar"): "webdataset",
    }
    for spec, kind in cases.items():
        assert parse_source(spec).kind == kind, spec
    for bad in (str(tmp_path / "missing"), f"folder:{tmp_path / 'missing'}", f"rec:{tmp_path / 'x.rec'}",
                f"wds:{tmp_path}/none-*.tar"):
        with pytest.raises(SourceNotFound) as e:
            parse_source(bad)
        assert isinstance(e.value, InputError) and isinstance(e.value, FileNotFoundError)


def test_sources_pickle_small_and_describe_without_paths(lfw_dir: Path, tmp_path: Path, faces) -> None:
    R.write_recordio(faces, tmp_path / "train.rec")
    write_tar(tmp_path / "s-000000.tar", [("a.jpg", faces[0][1]), ("a.cls", b"0")])
    for spec in ("lfw", str(tmp_path / "train.rec"), str(tmp_path / "s-000000.tar")):
        src = parse_source(spec)
        blob = pickle.dumps(src)
        assert len(blob) < 1024, (spec, len(blob))
        back = pickle.loads(blob)
        units = back.scan_units()
        assert max(len(pickle.dumps(u)) for u in units) < 16 * 1024  # one unit: a few KB
        assert back.scan().equals(src.scan())
        assert str(tmp_path) not in src.describe() and str(lfw_dir) not in src.describe()
    lfw = parse_source("lfw").info
    assert lfw.name == "lfw" and lfw.license == "other" and "Huang" in lfw.citation
    unknown = parse_source(str(tmp_path / "train.rec")).info
    assert unknown.license == "unknown" and unknown.citation is None


def test_info_from_the_catalog_by_exact_name(tmp_path: Path, faces) -> None:
    """``src.info`` names a known dataset only by an exact folder name (a split folder by its
    parent), never by a substring or a far ancestor."""
    for rel in ("casia-webface", "fairface/val", "lfw/mine", "my-casia-webface-copy", "MS1MV2"):
        (tmp_path / rel / "someone").mkdir(parents=True)
        (tmp_path / rel / "someone" / "a.jpg").write_bytes(faces[0][1])
    R.write_recordio(faces, tmp_path / "glint360k" / "train.rec")
    names = {rel: parse_source(f"folder:{tmp_path / rel}").info.name
             for rel in ("casia-webface", "fairface/val", "lfw/mine", "my-casia-webface-copy", "MS1MV2")}
    assert names["casia-webface"] == "casia-webface" and names["fairface/val"] == "fairface"
    assert names["MS1MV2"] == "ms1mv2"
    for rel in ("lfw/mine", "my-casia-webface-copy"):
        assert parse_source(f"folder:{tmp_path / rel}").info.license == "unknown", rel
    glint = parse_source(str(tmp_path / "glint360k")).info
    assert glint.name == "glint360k" and glint.license != "unknown"


def test_units_stream_in_order_and_batches_are_bounded(lfw_dir: Path, monkeypatch) -> None:
    """Units of top-level folders concatenate to the whole scan; no batch exceeds BATCH_ROWS."""
    monkeypatch.setattr(folder_mod, "UNIT_DIRS", 500)
    src = parse_source("lfw")
    units = src.scan_units()
    assert len(units) == 1 + 12 and all(len(u.dirs) <= 500 for u in units)  # root files + folders
    batches = [b for u in units for b in src.scan_unit(u)]
    assert all(b.num_rows <= BATCH_ROWS and b.schema.equals(SCAN_SCHEMA) for b in batches)
    table = pa.Table.from_batches(batches)
    assert table.num_rows == 13233
    paths = table.column("path").to_pylist()
    assert paths == sorted(paths) and not any(p.startswith("/") for p in paths)
    assert src.notes["files without an image extension skipped"] > 0  # the protocol .txt files


# ------------------------------------------------------------------ folders
def _face_folder(lfw_dir: Path, root: Path) -> None:
    for n in NAMES[:2]:
        shutil.copytree(lfw_dir / n, root / n)


def test_folder_special_files_never_block_or_get_read(lfw_dir: Path, tmp_path: Path, no_hang) -> None:
    root = tmp_path / "src"
    _face_folder(lfw_dir, root)
    person = root / NAMES[0]
    os.mkfifo(person / "fifo.jpg")
    (person / "zero.jpg").symlink_to("/dev/zero")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(person / "sock.jpg"))
    (person / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    big = person / "big.jpg"
    with open(big, "wb") as f:
        f.truncate(8 * 1024**3)  # a sparse 8 GB file: must be refused, never read
    try:
        src = parse_source(str(root))
        rows = rows_by_path(src)
        rel = NAMES[0] + "/"
        assert rows[rel + "fifo.jpg"]["_drop"] == "not a regular file"
        assert rows[rel + "zero.jpg"]["_drop"] == "not a regular file"
        assert rows[rel + "sock.jpg"]["_drop"] == "not a regular file"
        assert rows[rel + "dangling.jpg"]["_drop"] == "unreadable: No such file or directory"
        assert rows[rel + "big.jpg"]["_drop"] == "file too large"
        for name, reason in (("fifo.jpg", "not a regular file"), ("zero.jpg", "not a regular file"),
                             ("big.jpg", "file too large"), ("../../etc/passwd", "unsafe path")):
            with pytest.raises(ReadError) as e:
                src.read_bytes(rel + name)
            assert e.value.reason == reason and isinstance(e.value, InputError)
        good = rows[rel + f"{NAMES[0]}_0001.jpg"]
        assert good["_drop"] is None
        assert src.read_bytes(good["path"]) == (lfw_dir / good["path"]).read_bytes()
        # the same refusal when the cap is set lower than a real image
        src.max_bytes = 1000
        with pytest.raises(ReadError, match="file too large"):
            src.read_bytes(good["path"])
    finally:
        sock.close()


def test_folder_byte_names_newlines_and_tabs(lfw_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "src"
    _face_folder(lfw_dir, root)
    jpg = (lfw_dir / NAMES[0] / f"{NAMES[0]}_0001.jpg").read_bytes()
    rb = os.fsencode(root)
    os.mkdir(os.path.join(rb, b"Caf\xe9"))  # a Latin-1 folder name: not UTF-8
    with open(os.path.join(rb, b"Caf\xe9", b"x\xff.jpg"), "wb") as f:
        f.write(jpg)
    with open(os.path.join(rb, b"Caf\xe9", b"y\xfe.jpg"), "wb") as f:
        f.write(jpg[:100])
    # a real file whose name is the escaped text of y\xfe.jpg: the escape must not guess
    with open(os.path.join(rb, b"Caf\xe9", b"y\\xfe.jpg"), "wb") as f:
        f.write(b"other")
    (root / "Tab\tPerson").mkdir()
    (root / "Tab\tPerson" / "new\nline.jpg").write_bytes(jpg)
    src = parse_source(str(root))
    rows = rows_by_path(src)
    esc = rows["Caf\\xe9/x\\xff.jpg"]
    assert esc["identity"] == "Caf\\xe9" and esc["_drop"] is None
    assert src.read_bytes(esc["path"]) == jpg  # read correctly through its escaped name
    twins = [r for r in src.scan().to_pylist() if r["path"] == "Caf\\xe9/y\\xfe.jpg"]
    assert sorted(str(r["_drop"]) for r in twins) == ["None", "ambiguous name"]
    assert src.read_bytes("Caf\\xe9/y\\xfe.jpg") == b"other"  # the name as written
    nl = rows["Tab\tPerson/new\nline.jpg"]
    assert nl["identity"] == "Tab\tPerson" and nl["_drop"] is None and src.read_bytes(nl["path"]) == jpg
    keyed = F.assign_keys(src.scan())
    assert keyed.num_rows == len(rows) + 1 and len(set(keyed.column("key").to_pylist())) == keyed.num_rows


def test_folder_links_loops_hidden_orphans_and_owned_outputs(lfw_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "src"
    _face_folder(lfw_dir, root)
    elsewhere = tmp_path / "elsewhere" / NAMES[2]
    shutil.copytree(lfw_dir / NAMES[2], elsewhere)
    (root / NAMES[2]).symlink_to(elsewhere, target_is_directory=True)  # a linked identity folder
    (root / NAMES[0] / "loop").symlink_to(root, target_is_directory=True)  # a link back up
    (root / NAMES[1] / ".hidden.jpg").write_bytes(b"x")
    (root / NAMES[1] / ".ipynb_checkpoints").mkdir()
    (root / NAMES[1] / ".ipynb_checkpoints" / "a-checkpoint.jpg").write_bytes(b"x")
    (root / ".Trash-1000" / "Someone").mkdir(parents=True)
    (root / ".Trash-1000" / "Someone" / "x.jpg").write_bytes(b"x")
    (root / "cover.jpg").write_bytes(b"x")
    out = root / "my-build"
    (out / "report").mkdir(parents=True)
    (out / ".maskgen-output.json").write_text(json.dumps({"tool": "maskgen", "kind": "build"}))
    shutil.copy(lfw_dir / NAMES[0] / f"{NAMES[0]}_0001.jpg", out / "report" / "face.jpg")
    src = parse_source(str(root))
    rows = rows_by_path(src)
    linked = [r for r in rows.values() if r["identity"] == NAMES[2]]
    assert len(linked) == len(list(elsewhere.iterdir())) and all(r["_drop"] is None for r in linked)
    assert rows[f"{NAMES[0]}/loop"]["_drop"] == "symlink loop"
    assert rows[f"{NAMES[1]}/.hidden.jpg"]["_drop"] == "hidden file"
    assert rows[f"{NAMES[1]}/.ipynb_checkpoints/a-checkpoint.jpg"]["_drop"] == "hidden file"
    assert rows[".Trash-1000/Someone/x.jpg"]["_drop"] == "hidden file"
    assert rows["cover.jpg"]["_drop"] == "above identity level" and rows["cover.jpg"]["identity"] == ""
    assert not any(p.startswith("my-build/") for p in rows)
    assert any("my-build" in n and ".maskgen-output.json" in n for n in src.notes)
    ws = F.WorkSet(F.assign_keys(src.scan()))
    F.drop_scan_errors(ws)
    by = dict(zip(ws.col("path"), ws.status))
    assert by[f"{NAMES[1]}/.hidden.jpg"] == "dropped" and by["cover.jpg"] == "dropped"
    assert by[f"{NAMES[0]}/loop"] == "failed"


# ------------------------------------------------------------------ RecordIO
def _corrupt_rec(tmp_path: Path, faces) -> tuple[Path, list[int]]:
    rec = R.write_recordio(faces, tmp_path / "train.rec")
    offs = [off for _, off, _ in R.iter_idx(tmp_path / "train.idx")]
    data = bytearray(rec.read_bytes())
    data[offs[2] : offs[2] + 4] = b"JUNK"  # record 2: bad magic
    struct.pack_into("<I", data, offs[4] + 4, (1 << 29) - 1)  # record 4: a 512 MB length field
    struct.pack_into("<I", data, offs[6] + 8, 1 << 30)  # record 6: a label array of 4 GB
    rec.write_bytes(bytes(data))
    return rec, offs


def test_recordio_bad_records_with_idx(tmp_path: Path, faces) -> None:
    rec, offs = _corrupt_rec(tmp_path, faces)
    lines = (tmp_path / "train.idx").read_text().splitlines()
    lines[8] = "8\tnot-a-number"
    lines[9] = f"9\t-{offs[9]}"
    lines[10] = f"10\t{rec.stat().st_size + 100}"
    (tmp_path / "train.idx").write_text("\n".join(lines) + "\n")
    src = parse_source(str(rec))
    t = src.scan().to_pylist()
    assert len(t) == len(faces)  # every image record has a row, broken or not
    by_off = {r["offset"]: r for r in t}
    assert by_off[offs[2]]["_drop"] == "bad magic"
    assert by_off[offs[4]]["_drop"] == "bad length"
    assert by_off[offs[6]]["_drop"] == "bad header"
    assert by_off[None]["_drop"] == "malformed idx line"
    assert by_off[-offs[9]]["_drop"] == "idx offset out of range"
    assert by_off[rec.stat().st_size + 100]["_drop"] == "idx offset out of range"
    good = [r for r in t if r["_drop"] is None]
    assert len(good) == len(faces) - 6
    for r in good:  # record i (from 1) holds faces[i - 1]
        assert src.read_bytes(r["path"], r["offset"], r["nbytes"]) == faces[offs.index(r["offset"]) - 1][1]
    with pytest.raises(ReadError, match="bad length"):
        src.read_bytes("train.rec", offs[4])
    with pytest.raises(ReadError, match="bad magic"):
        src.read_bytes("train.rec", offs[2])


def test_recordio_without_idx_resyncs_and_never_stops_silently(tmp_path: Path, faces) -> None:
    rec, offs = _corrupt_rec(tmp_path, faces)
    (tmp_path / "train.idx").unlink()
    last = len(faces)  # record index of the last image
    cut = offs[last] + 40  # the file ends inside the last image record
    rec.write_bytes(rec.read_bytes()[:cut])
    src = parse_source(str(rec))
    assert [u.start for u in src.scan_units()] == [-1]
    t = src.scan().to_pylist()
    by_off = {r["offset"]: r for r in t}
    assert by_off[offs[2]]["_drop"] == "bad magic"
    assert by_off[offs[4]]["_drop"] == "bad length"
    assert by_off[offs[6]]["_drop"] == "bad header"
    assert by_off[offs[last]]["_drop"] == "truncated record"
    good = [r for r in t if r["_drop"] is None]
    # an .idx rebuilt by the same walk gives the same rows (and units a cluster can split)
    R.rebuild_idx(rec)
    with pytest.raises(FileExistsError):
        R.rebuild_idx(rec)
    again = parse_source(str(rec))
    assert again.idx == "train.idx"
    assert [r for r in again.scan().to_pylist() if r["_drop"] is None] == good
    # every intact image record is found, also those after the broken ones
    intact = {offs[i] for i in range(1, last)} - {offs[2], offs[4], offs[6]}
    assert {r["offset"] for r in good} == intact
    for r in good:
        assert src.read_bytes(r["path"], r["offset"], r["nbytes"]) == faces[offs.index(r["offset"]) - 1][1]


def test_recordio_empty_and_headerless(tmp_path: Path, faces) -> None:
    (tmp_path / "empty.rec").write_bytes(b"")
    src = parse_source(str(tmp_path / "empty.rec"))
    assert src.scan().num_rows == 0 and "empty .rec file: no records" in src.notes
    # a plain (non-insightface) .rec: every record is an image; labels padded to the widest
    with open(tmp_path / "plain.rec", "wb") as f:
        for label, img in [(7, faces[0][1]), (12, faces[1][1])]:
            f.write(R.encode_record(R.pack(R.IRHeader(0, float(label), 0, 0), img)))
    t = parse_source(str(tmp_path / "plain.rec")).scan().to_pylist()
    assert [r["identity"] for r in t] == ["07", "12"] and [r["source_label"] for r in t] == [7, 12]


def test_recordio_fifo_rec_or_idx_never_blocks(tmp_path: Path, faces, no_hang) -> None:
    """A FIFO named ``.rec`` is refused with its reason before it is read; a FIFO named
    ``.idx`` is not taken as an index (the ``.rec`` is walked instead)."""
    os.mkfifo(tmp_path / "train.rec")
    src = parse_source(str(tmp_path / "train.rec"))
    with pytest.raises(InputError, match="not a regular file"):
        src.scan_units()
    with pytest.raises(ReadError, match="not a regular file"):
        src.read_bytes("train.rec", 0, 10)
    R.write_recordio(faces[:3], tmp_path / "r" / "train.rec")
    (tmp_path / "r" / "train.idx").unlink()
    os.mkfifo(tmp_path / "r" / "train.idx")
    walked = parse_source(str(tmp_path / "r" / "train.rec"))
    assert walked.idx is None and [u.start for u in walked.scan_units()] == [-1]
    t = walked.scan().to_pylist()
    assert [walked.read_bytes(r["path"], r["offset"], r["nbytes"]) for r in t] == [img for _, img in faces[:3]]


def test_recordio_idx_units_tile_the_file(tmp_path: Path, faces, monkeypatch) -> None:
    items = [(lab + 3 * k, img) for k in range(3) for lab, img in faces]
    R.write_recordio(items, tmp_path / "train.rec")
    monkeypatch.setattr(rec_mod, "UNIT_IDX_BYTES", 37)  # units cut lines anywhere
    src = parse_source(str(tmp_path / "train.rec"))
    units = src.scan_units()
    assert len(units) > 5
    offsets = [r["offset"] for u in units for b in src.scan_unit(u) for r in b.to_pylist()]
    with R.RecordIOReader(tmp_path / "train.rec") as r:
        assert offsets == [e.offset for e in r.entries()]


def test_recordio_writer_streams_and_round_trips(tmp_path: Path, faces) -> None:
    gen = R.repeat_as_new_identities(faces, 40)
    rec = R.write_recordio(gen, tmp_path / "big.rec")  # a generator: never a list
    t = parse_source(str(rec)).scan().to_pylist()
    assert len(t) == 40 and len({r["identity"] for r in t}) == 10
    assert [r["source_label"] for r in t][:12] == [lab for lab, _ in faces]
    assert t[12]["source_label"] == 3  # the second repetition: new identities
    with pytest.raises(ValueError, match="grouped by label"):
        R.write_recordio([(0, b"a"), (1, b"b"), (0, b"c")], tmp_path / "bad.rec")
    assert not list(tmp_path.glob("*.tmp"))
    # the magic word inside a payload still splits the record as dmlc does
    magic = R.MAGIC.to_bytes(4, "little")
    payload = b"abcd" + magic + b"efgh" + magic + b"xy"
    assert R.read_record_at(io.BytesIO(R.encode_record(payload)), 0) == payload
    # ... and a split image record is scanned and read whole, with and without the .idx
    split = [(0, faces[0][1]), (0, faces[1][1][:400] + magic + faces[1][1][400:]), (1, faces[2][1])]
    rec = R.write_recordio(split, tmp_path / "split.rec")
    for _ in range(2):
        s = parse_source(str(rec))
        t = s.scan().to_pylist()
        assert [s.read_bytes(r["path"], r["offset"], r["nbytes"]) for r in t] == [img for _, img in split]
        (tmp_path / "split.idx").unlink(missing_ok=True)


# ------------------------------------------------------------------ WebDataset
def test_webdataset_hostile_members(tmp_path: Path, faces, no_hang) -> None:
    img = faces[0][1]
    members = [
        ("ok.jpg", img), ("ok.cls", b"3"),
        ("deep.jpg", img), ("deep.json", b"[" * 100_000 + b"]" * 100_000),
        ("bigcls.jpg", img), ("bigcls.cls", b"12345678901234567890123"),
        ("bigjson.jpg", img), ("bigjson.json", b'{"identity": "' + b"x" * (2 << 20) + b'"}'),
        ("../evil.jpg", img), ("../evil.cls", b"1"),
        ("named.jpg", img), ("named.json", json.dumps({"identity": "A\tB"}).encode()),
        ("last.jpg", img), ("last.cls", b"4"),
    ]
    write_tar(tmp_path / "w" / "s-000000.tar", members)
    src = parse_source(f"wds:{tmp_path}/w/*.tar")
    rows = {r["member"]: r for r in src.scan().to_pylist()}
    assert rows["ok.jpg"]["_drop"] is None and rows["ok.jpg"]["source_label"] == 3
    assert rows["deep.jpg"]["_drop"] == "json too deep"
    assert rows["bigcls.jpg"]["_drop"] == "bad cls"
    assert rows["bigjson.jpg"]["_drop"] == "json too large"
    assert rows["../evil.jpg"]["_drop"] == "unsafe member name"
    assert rows["named.jpg"]["identity"] == "A\tB"
    ok = rows["ok.jpg"]
    assert src.read_bytes(ok["path"], ok["offset"], ok["nbytes"], ok["member"]) == img
    assert not (tmp_path / "evil.jpg").exists()
    # a truncated shard (members are in name order): the samples before the cut keep their
    # rows, the cut one is reported
    data = (tmp_path / "w" / "s-000000.tar").read_bytes()
    cut = data[: rows["named.jpg"]["offset"] + 100]
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "s-000000.tar").write_bytes(cut)
    t = {r["member"]: r for r in parse_source(f"{tmp_path}/t/s-000000.tar").scan().to_pylist()}
    assert t["last.jpg"]["_drop"] is None and t["named.jpg"]["_drop"] == "truncated member"
    assert "ok.jpg" not in t
    # a corrupt header in the middle: tarfile would stop quietly, the scan says so
    bad = bytearray(data)
    bad[rows["ok.jpg"]["offset"] - 512 : rows["ok.jpg"]["offset"] - 500] = b"\xff" * 12
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "s-000000.tar").write_bytes(bytes(bad))
    c = parse_source(f"{tmp_path}/c/s-000000.tar").scan().to_pylist()
    assert c[-1]["_drop"] == "truncated tar" and c[-1]["identity"] == ""
    assert {r["member"] for r in c if r["_drop"] is None} == {"last.jpg", "named.jpg"}
    # a FIFO named like a shard is never opened for reading
    os.mkfifo(tmp_path / "w" / "s-000001.tar")
    f = parse_source(f"wds:{tmp_path}/w/*.tar").scan().to_pylist()
    assert [r["_drop"] for r in f if r["path"] == "s-000001.tar"] == ["not a regular file"]


def test_webdataset_not_a_tar(tmp_path: Path) -> None:
    (tmp_path / "s-000000.tar").write_bytes(b"this is no tar file" * 100)
    t = parse_source(str(tmp_path / "s-000000.tar")).scan().to_pylist()
    assert [r["_drop"] for r in t] == ["bad tar"]
    with tarfile.open(tmp_path / "e.tar", "w"):
        pass
    assert parse_source(str(tmp_path / "e.tar")).scan().num_rows == 0


def test_entry_point_plugin(tmp_path: Path, monkeypatch, faces) -> None:
    """An installed package adds a kind through the ``maskgen.sources`` entry-point group."""
    from maskgen.datasets import sources as S
    from maskgen.datasets.sources import base

    (tmp_path / "myplug.py").write_text('''
from dataclasses import dataclass
from pathlib import Path
from maskgen.datasets.sources import Source, register
from maskgen.datasets.sources.base import RowBuffer, read_file_range, fs_path

@register
@dataclass(eq=False)
class OneFile(Source):
    """A single image file as a source of one image (identity: its stem)."""
    kind = "onefile"
    prefixes = ("one",)
    name: str = ""

    @classmethod
    def from_spec(cls, rest, *, identity_depth=1, data_home=None):
        p = Path(rest).resolve()
        return cls(p.parent, name=p.name)

    def scan_units(self):
        return [self.name]

    def scan_unit(self, unit):
        buf = RowBuffer(self.kind)
        buf.add(unit.rsplit(".", 1)[0], unit, nbytes=(self.root / unit).stat().st_size, cache_key=unit)
        yield buf.flush()

    def read_bytes(self, path, offset=None, nbytes=None, member=None):
        return read_file_range(fs_path(self.root, path), None, None, self.max_bytes, path)
''')
    dist = tmp_path / "myplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[maskgen.sources]\nonefile = myplug\n")
    source_kinds()  # the built-in kinds register in the real registry first
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(S, "_loaded", False)
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.setattr(base, "_KINDS", dict(base._KINDS))
    (tmp_path / "face.jpg").write_bytes(faces[0][1])
    src = parse_source(f"one:{tmp_path / 'face.jpg'}")
    assert src.kind == "onefile" and "onefile" in source_kinds()
    row = src.scan().to_pylist()[0]
    assert row["identity"] == "face" and src.read_bytes(row["path"]) == faces[0][1]
    assert pickle.loads(pickle.dumps(src)).scan().equals(src.scan())


def test_webdataset_byte_member_names(tmp_path: Path, faces) -> None:
    """A member whose name is not UTF-8 gets an escaped, representable name and still reads."""
    img = faces[0][1]
    with tarfile.open(tmp_path / "s.tar", "w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as tf:
        for name, data in ((os.fsdecode(b"caf\xe9.jpg"), img), (os.fsdecode(b"caf\xe9.cls"), b"5")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    src = parse_source(str(tmp_path / "s.tar"))
    (row,) = src.scan().to_pylist()
    assert row["member"] == "caf\\xe9.jpg" and row["identity"] == "5" and row["_drop"] is None
    assert src.read_bytes(row["path"], row["offset"], row["nbytes"], row["member"]) == img


def test_large_directories_sort_the_same_in_arrow(lfw_dir: Path, monkeypatch) -> None:
    """Directories past the spill size are listed through Arrow buffers: same rows, same order."""
    ref = parse_source(str(lfw_dir)).scan()
    monkeypatch.setattr(folder_mod, "_SPILL", 3)
    monkeypatch.setattr(folder_mod, "UNIT_DIRS", 700)
    assert parse_source(str(lfw_dir)).scan().equals(ref)
    files, dirs = folder_mod.list_dir(os.fsencode(lfw_dir))
    assert [b for batch in dirs.batches(1000) for b in batch] == sorted(os.fsencode(n) for n in os.listdir(lfw_dir) if (lfw_dir / n).is_dir())


def test_units_run_as_ray_tasks(lfw_dir: Path, tmp_path: Path, faces, monkeypatch) -> None:
    """Units are what a cluster runs: scanned in Ray tasks (the Source and a unit pickled to
    the worker), their tables concatenate to the in-process scan."""
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(folder_mod, "UNIT_DIRS", 1000)
    monkeypatch.setattr(rec_mod, "UNIT_IDX_BYTES", 64)
    R.write_recordio(R.repeat_as_new_identities(faces, 200), tmp_path / "train.rec")
    started = not ray.is_initialized()
    if started:
        monkeypatch.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2,
                 configure_logging=False, log_to_driver=False)
    try:
        @ray.remote
        def scan_unit(src, unit):
            return pa.Table.from_batches(list(src.scan_unit(unit)), schema=SCAN_SCHEMA)

        for spec in ("lfw", str(tmp_path / "train.rec")):
            src = parse_source(spec)
            units = src.scan_units()
            assert len(units) > 3
            parts = ray.get([scan_unit.remote(src, u) for u in units])
            assert pa.concat_tables(parts).equals(src.scan())
    finally:
        if started:
            ray.shutdown()


def test_webdataset_sparse_member_is_refused(tmp_path: Path, faces) -> None:
    """A GNU sparse member's data is not contiguous in the tar: refused, never read by offset."""
    if shutil.which("tar") is None:
        pytest.skip("GNU tar not available")
    import subprocess

    work = tmp_path / "w"
    work.mkdir()
    with open(work / "a.jpg", "wb") as f:
        f.write(faces[0][1])
        f.seek(1 << 20)
        f.write(b"end")
    (work / "a.cls").write_text("3")
    (work / "b.jpg").write_bytes(faces[1][1])
    (work / "b.cls").write_text("4")
    subprocess.run(["tar", "--sparse", "-cf", str(tmp_path / "s.tar"), "a.jpg", "a.cls", "b.jpg", "b.cls"],
                   cwd=work, check=True)
    src = parse_source(str(tmp_path / "s.tar"))
    rows = {r["member"]: r for r in src.scan().to_pylist()}
    if not tarfile.open(tmp_path / "s.tar").getmember("a.jpg").issparse():
        pytest.skip("this tar wrote no sparse member")
    assert rows["a.jpg"]["_drop"] == "sparse member" and rows["b.jpg"]["_drop"] is None
    b = rows["b.jpg"]
    assert src.read_bytes(b["path"], b["offset"], b["nbytes"], b["member"]) == faces[1][1]


def test_numbered_shards_pickle_as_a_range(tmp_path: Path, faces) -> None:
    for i in range(30):
        write_tar(tmp_path / f"train-{i:06d}.tar", [(f"k{i}.jpg", faces[0][1]), (f"k{i}.cls", b"1")])
    src = parse_source(f"wds:{tmp_path}/train-{{000000..000029}}.tar")
    blob = pickle.dumps(src)
    assert len(blob) < 400 and pickle.loads(blob).shards == src.shards == tuple(f"train-{i:06d}.tar" for i in range(30))
    assert pickle.loads(blob).scan().equals(src.scan())


def test_recordio_binary_idx_is_never_held(tmp_path: Path, faces) -> None:
    """An .idx that is binary junk without newlines: one malformed row per overlong line, read
    in bounded pieces, and the other lines still count."""
    R.write_recordio(faces[:3], tmp_path / "train.rec")
    good = (tmp_path / "train.idx").read_bytes()
    (tmp_path / "train.idx").write_bytes(good + os.urandom(300_000).replace(b"\n", b"x") + b"\n" + good.splitlines(True)[2])
    t = parse_source(str(tmp_path / "train.rec")).scan().to_pylist()
    assert [r["_drop"] for r in t] == [None, None, None, "malformed idx line", None]


def test_every_reason_is_listed() -> None:
    """Reports group rows by reason: every reason string a source module defines is in the
    table of ``maskgen.datasets.sources.base`` (the stable list) or, for a kind's own reasons,
    in its module's doc (so a new kind documents them in its one file)."""
    import importlib
    import pkgutil

    from maskgen.datasets import sources
    from maskgen.datasets.sources import base

    kinds = [importlib.import_module(f"{sources.__name__}.{m.name}") for m in pkgutil.iter_modules(sources.__path__)]
    missing, seen = [], set()
    for mod in (*kinds, R):
        reasons = {v for k, v in vars(mod).items()
                   if k.isupper() and not k.startswith("_") and isinstance(v, str) and " " in v}
        seen |= reasons
        home = base.__doc__ + (mod.__doc__ or "")
        missing += [f"{mod.__name__}: {r}" for r in sorted(reasons) if f"``{r}``" not in home]
    assert {"bad magic", "json too deep", "malformed lst line", "hidden file"} <= seen
    assert not missing, missing
