"""Sources, RecordIO, tar writing, filters and dedup on real LFW files (no Ray, no masks)."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from maskgen.datasets import filters as F
from maskgen.datasets import lfw as L
from maskgen.datasets import recordio as R
from maskgen.datasets.dedup import hamming, phash
from maskgen.datasets.manifest import STATUS_DROPPED
from maskgen.datasets.sources import parse_source
from maskgen.datasets.tarwriter import tar_bytes, write_tar

NAMES = ["Aaron_Peirsol", "Abdullah_Gul", "Adrien_Brody", "Al_Gore"]


@pytest.fixture(scope="module")
def small_lfw(lfw_dir: Path, tmp_path_factory) -> Path:
    """Four real LFW identities copied into a folder source (plus a README that is no image)."""
    root = tmp_path_factory.mktemp("small_lfw")
    for n in NAMES:
        shutil.copytree(lfw_dir / n, root / n)
    (root / "README.txt").write_text("not an image")
    return root


def test_lfw_protocol_files(lfw_dir: Path) -> None:
    folds = L.read_people(lfw_dir / "people.txt")
    assert len(folds) == 10
    assert sum(len(f) for f in folds) == len(L.people_names(lfw_dir / "people.txt"))
    pairs = L.read_pair_names(lfw_dir / "pairs.txt")
    assert len(pairs) == 6000
    same = [p for p in pairs if p[0] == p[2]]
    assert len(same) == 3000
    a, i, _, j = same[0]
    assert L.pair_image_path(lfw_dir, a, i).is_file() and L.pair_image_path(lfw_dir, a, j).is_file()
    assert len(L.lfw_names(lfw_dir)) == 5749
    dev = L.read_people(lfw_dir / "peopleDevTrain.txt")
    assert len(dev) == 1 and len(dev[0]) > 1000


def test_lfw_source_from_data_home(lfw_dir: Path) -> None:
    src = parse_source("lfw")
    assert src.kind == "lfw" and src.root == lfw_dir.resolve()
    t = src.scan()
    assert t.num_rows == 13233
    assert len(set(t.column("identity").to_pylist())) == 5749


def test_folder_scan_and_keys(small_lfw: Path) -> None:
    src = parse_source(str(small_lfw))
    assert src.kind == "folder"
    t = F.assign_keys(src.scan())
    n = sum(len(list((small_lfw / x).iterdir())) for x in NAMES)
    assert t.num_rows == n  # README.txt is skipped
    keys = t.column("key").to_pylist()
    assert len(set(keys)) == n and all("." not in k for k in keys)
    assert keys[0] == "000000-0000" and t.column("identity")[0].as_py() == NAMES[0]
    again = F.assign_keys(parse_source(f"folder:{small_lfw}").scan())
    assert again.column("key").to_pylist() == keys  # stable across scans
    row = t.slice(0, 1).to_pylist()[0]
    assert row["path"] == f"{NAMES[0]}/{NAMES[0]}_0001.jpg"  # relative to the source root
    data = src.read_bytes(row["path"], row["offset"], row["nbytes"], row["member"])
    assert data[:3] == b"\xff\xd8\xff" and len(data) == row["nbytes"]


def test_identity_depth(small_lfw: Path, tmp_path: Path) -> None:
    nested = tmp_path / "nested"
    shutil.copytree(small_lfw / NAMES[0], nested / "groupA" / NAMES[0])
    t = parse_source(str(nested), identity_depth=2).scan()
    assert set(t.column("identity").to_pylist()) == {f"groupA/{NAMES[0]}"}
    t0 = parse_source(str(nested), identity_depth=0).scan()
    assert t0.num_rows == len(set(t0.column("identity").to_pylist()))


def test_recordio_round_trip(small_lfw: Path, tmp_path: Path) -> None:
    items = []
    for label, n in enumerate(NAMES):
        for f in sorted((small_lfw / n).iterdir()):
            items.append((label, f.read_bytes()))
    rec = R.write_recordio(items, tmp_path / "train.rec")
    assert (tmp_path / "train.idx").is_file()
    with R.RecordIOReader(rec) as r:
        h0, _ = r.read(0)
        assert h0.flag == 2 and int(h0.label[0]) == len(items) + 1  # insightface header record
        entries = list(r.entries())
        assert [e.label for e in entries] == [lab for lab, _ in items]
        for e, (_, data) in zip(entries, items):
            assert R.image_bytes_at(rec, e.offset) == data
        # identity records hold each identity's image range
        start, end = r.read(len(items) + 1)[0].label
        assert (int(start), int(end)) == (1, 1 + sum(1 for lab, _ in items if lab == 0))
    # without the .idx the reader walks the file and finds the same records
    (tmp_path / "train.idx").unlink()
    with R.RecordIOReader(rec) as r:
        assert [e.offset for e in r.entries()] == [e.offset for e in entries]
    src = parse_source(f"recordio:{rec}")
    t = src.scan()
    assert t.num_rows == len(items)
    assert t.column("identity").to_pylist()[0] == "0"
    row = t.slice(5, 1).to_pylist()[0]
    assert row["path"] == "train.rec" and src.relative_path(row["path"], None, row["offset"]) == f"train.rec@{row['offset']}"
    assert src.read_bytes(row["path"], row["offset"], row["nbytes"]) == items[5][1]


def test_recordio_split_records() -> None:
    """A payload holding the magic word at an aligned position is split as dmlc does."""
    magic = R.MAGIC.to_bytes(4, "little")
    payload = b"abcd" + magic + b"efgh" + magic + b"xy"
    framed = R.encode_record(payload)
    assert framed.count(magic) == 3  # three parts, the inner magics dropped
    f = io.BytesIO(framed)
    assert R.read_record_at(f, 0) == payload


def test_tar_reproducible(tmp_path: Path) -> None:
    members = [("b.cls", b"1"), ("a.jpg", b"\xff\xd8data"), ("a.cls", b"0")]
    a = tar_bytes(members)
    b = tar_bytes(list(reversed(members)))
    assert a == b
    write_tar(tmp_path / "x.tar", members)
    assert (tmp_path / "x.tar").read_bytes() == a and not (tmp_path / "x.tar.tmp").exists()
    with tarfile.open(tmp_path / "x.tar") as tf:
        infos = tf.getmembers()
        assert [i.name for i in infos] == ["a.cls", "a.jpg", "b.cls"]
        assert {(i.mtime, i.uid, i.gid, i.uname) for i in infos} == {(0, 0, 0, "")}


def test_wds_source(small_lfw: Path, tmp_path: Path) -> None:
    files = sorted((small_lfw / NAMES[1]).iterdir())[:3]
    members = []
    for j, f in enumerate(files):
        k = f"000001-{j:04d}"
        members += [(f"{k}.jpg", f.read_bytes()), (f"{k}.cls", b"7"), (f"{k}.json", json.dumps({"identity": NAMES[1], "masked": j == 2}).encode())]
    members += [("000002-0000.orig.jpg", files[0].read_bytes()), ("000002-0000.jpg", b"masked bytes"),
                ("000002-0000.json", json.dumps({"identity": "X", "masked": True}).encode())]
    write_tar(tmp_path / "s-000000.tar", members)
    src = parse_source(f"wds:{tmp_path}/s-{{000000..000000}}.tar")
    t = src.scan().to_pylist()
    assert [r["identity"] for r in t] == [NAMES[1]] * 3 + ["X"]
    assert [r["_drop"] for r in t][:3] == [None, None, "source image is already masked and has no original"]
    assert t[3]["member"] == "000002-0000.orig.jpg" and t[3]["_drop"] is None  # original preferred
    assert t[0]["path"] == "s-000000.tar"
    assert src.read_bytes(t[0]["path"], t[0]["offset"], t[0]["nbytes"], t[0]["member"]) == files[0].read_bytes()
    assert t[0]["source_label"] == 7


def test_filters_and_reasons(lfw_dir: Path) -> None:
    t = F.assign_keys(parse_source("lfw").scan())
    ws = F.WorkSet(t)
    F.filter_names(ws, None, {"Al_Gore"}, {"lfw-devtest": F.eval_names("lfw-devtest")})
    F.filter_min_images(ws, 5)
    F.filter_max_images(ws, 20, seed=0)
    F.filter_max_identities(ws, 50)
    ident = ws.col("identity")
    kept = set(ident[ws.pending])
    assert len(kept) == 50 and "Al_Gore" not in kept
    assert not kept & F.eval_names("lfw-devtest")
    counts = {i: int(((ident == i) & ws.pending).sum()) for i in kept}
    assert min(counts.values()) >= 5 and max(counts.values()) <= 20
    r = ws.reasons()
    assert r["dropped: in exclude list"] == int((ident == "Al_Gore").sum())
    assert r["dropped: evaluation identity"] > 0
    assert r["dropped: over max_images"] > 0 and r["dropped: beyond max_identities"] > 0
    assert all(s == STATUS_DROPPED for s in ws.status[~ws.pending])


def test_min_masked_guarantee() -> None:
    import pyarrow as pa

    idents = ["a"] * 9 + ["b"] * 30 + ["c"] * 51
    t = F.assign_keys(pa.table({"identity": idents, "path": [f"p{i}" for i in range(90)],
                                "offset": pa.nulls(90, pa.int64()), "member": pa.nulls(90, pa.string())}))
    ws = F.WorkSet(t)
    F.filter_min_masked(ws, 5, ratio=0.1)
    assert set(ws.col("identity")[ws.pending]) == {"c"}  # floor(0.1 * 51) = 5


def test_phash_near_duplicates(lfw_dir: Path) -> None:
    import cv2

    img = cv2.cvtColor(cv2.imread(str(lfw_dir / "Al_Gore" / "Al_Gore_0001.jpg")), cv2.COLOR_BGR2RGB)
    other = cv2.cvtColor(cv2.imread(str(lfw_dir / "Al_Gore" / "Al_Gore_0002.jpg")), cv2.COLOR_BGR2RGB)
    small = cv2.resize(img, (120, 120))
    _, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 40])
    recoded = cv2.imdecode(enc, cv2.IMREAD_COLOR)
    h = np.array([phash(img), phash(small), phash(recoded), phash(other)], dtype=np.int64)
    d = hamming(h, int(h[0]))
    assert d[0] == 0 and d[1] <= 4 and d[2] <= 4 and d[3] > 10
    from maskgen.datasets.dedup import near_duplicates

    assert near_duplicates(h, 4) == {1: (0, int(d[1])), 2: (0, int(d[2]))}


def test_lfw_download_from_mirror(lfw_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """The download path, run against a local mirror (file:// URL) of the official layout."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with tarfile.open(mirror / L.LFW_ARCHIVE, "w:gz") as tf:
        for n in NAMES[:2]:
            tf.add(lfw_dir / n, arcname=f"lfw-deepfunneled/{n}")
    (mirror / "pairs.txt").write_text(f"1\t1\n{NAMES[0]}\t1\t2\n")
    (mirror / "people.txt").write_text(f"1\n2\n{NAMES[0]}\t2\n{NAMES[1]}\t1\n")
    home = tmp_path / "home"
    monkeypatch.setenv("MASKGEN_DATA_HOME", str(home))
    monkeypatch.setenv("MASKGEN_LFW_URL", mirror.as_uri())
    root = L.lfw_dir()
    assert root == home / "lfw"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(NAMES[:2])
    assert L.pairs_names(root / "pairs.txt") == {NAMES[0]}
    src = parse_source("lfw")
    assert src.root == root.resolve() and src.scan().num_rows == sum(len(list((lfw_dir / n).iterdir())) for n in NAMES[:2])
    assert not list(home.glob(".lfw-download-*"))  # the staging folder is gone
    monkeypatch.setenv("MASKGEN_DATA_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("MASKGEN_LFW_URL", (tmp_path / "no-mirror").as_uri())
    with pytest.raises(FileNotFoundError, match="downloading it from"):
        L.lfw_dir()
