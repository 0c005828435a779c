"""The ``parquet`` source (``maskgen/datasets/sources/parquet.py``): a source kind added as one
file plus this test. Real Parquet written with pyarrow from real faces (scikit-image's
astronaut; LFW when the data home has it), Hugging Face's ``Image`` struct and plain binary,
bad rows with their reasons, and a real ``maskgen build parquet:... --ratio 0.5``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maskgen.datasets import filters as F
from maskgen.datasets.sources import BATCH_ROWS, parse_source, source_kinds

N_IDS, PER_ID = 6, 5
NAMES = [f"astro_{i}" for i in range(N_IDS)]


def _astronaut_crops(astronaut: np.ndarray) -> list[tuple[int, bytes]]:
    """Aligned 112x112 crops of the astronaut, varied into ``N_IDS`` identities (JPEG bytes)."""
    from maskgen.masks import align_face, detect_faces

    face = detect_faces(astronaut, backend="dlib", select="center")[0]
    crop = align_face(astronaut, face.landmarks, size=112).astype(np.float32)
    rng = np.random.default_rng(0)
    out = []
    for i in range(N_IDS):
        for j in range(PER_ID):
            img = np.clip(crop * (0.7 + 0.08 * i) + rng.normal(0, 2 + j, crop.shape), 0, 255).astype(np.uint8)
            if j % 2:
                img = img[:, ::-1]
            bgr = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
            out.append((i, cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()))
    return out


def _hf_table(items: list[tuple[int, bytes]], names: list[str]) -> pa.Table:
    """What ``datasets.Dataset.to_parquet`` writes: an ``Image`` struct and a ``ClassLabel``."""
    image = pa.array([{"bytes": b, "path": f"{k:03d}.jpg"} for k, (_, b) in enumerate(items)],
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    label = pa.array([lab for lab, _ in items], pa.int64())
    features = {"image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    return pa.table({"image": image, "label": label}).replace_schema_metadata(meta)


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory, astronaut) -> tuple[Path, dict[tuple[str, int], bytes]]:
    """``data/train-00000-of-00002.parquet`` (HF layout, row groups of 7) and, when LFW is
    present, ``data/train-00001-of-00002.parquet`` with plain binary and string identities."""
    root = tmp_path_factory.mktemp("pq") / "faces"
    (root / "data").mkdir(parents=True)
    items = _astronaut_crops(astronaut)
    first = root / "data" / "train-00000-of-00002.parquet"
    pq.write_table(_hf_table(items, NAMES), first, row_group_size=7)
    expected = {("data/train-00000-of-00002.parquet", k): b for k, (_, b) in enumerate(items)}
    lfw = _lfw_dir()
    if lfw is not None:
        people = ["Aaron_Peirsol", "Abdullah_Gul", "Adrien_Brody"]
        rows = [(p, f.read_bytes()) for p in people for f in sorted((lfw / p).glob("*.jpg"))[:4]]
        t = pa.table({"person": pa.array([p for p, _ in rows]), "jpg": pa.array([b for _, b in rows], pa.binary()),
                      "width": pa.array([250] * len(rows), pa.int32())})
        pq.write_table(t, root / "data" / "train-00001-of-00002.parquet", row_group_size=5)
        expected.update({("data/train-00001-of-00002.parquet", k): b for k, (_, b) in enumerate(rows)})
    return root, expected


def _lfw_dir() -> Path | None:
    home = os.environ.get("MASKGEN_DATA_HOME")
    d = Path(home) / "lfw" if home else None
    return d if d is not None and (d / "Aaron_Peirsol").is_dir() else None


def test_scan_reads_back_every_image_in_order(parquet_dir) -> None:
    root, expected = parquet_dir
    assert source_kinds()["parquet"].__module__ == "maskgen.datasets.sources.parquet"
    src = parse_source(f"parquet:{root}")
    assert src.kind == "parquet" and parse_source(str(root / "data" / "train-00000-of-00002.parquet")).kind == "parquet"
    units = src.scan_units()
    assert [u.rows for u in units[:5]] == [7, 7, 7, 7, 2]  # 30 rows in row groups of 7
    rows = src.scan().to_pylist()
    assert len(rows) == len(expected) and all(r["_drop"] is None for r in rows)
    assert [(r["path"], r["offset"]) for r in rows] == sorted(expected)  # file, then row order
    astro = [r for r in rows if r["path"].startswith("data/train-00000")]
    assert Counter(r["identity"] for r in astro) == {n: PER_ID for n in NAMES}  # ClassLabel names
    assert [r["source_label"] for r in astro[:6]] == [0, 0, 0, 0, 0, 1]
    for r in rows:
        assert r["nbytes"] == len(expected[(r["path"], r["offset"])])
        assert src.read_bytes(r["path"], r["offset"], r["nbytes"], r["member"]) == expected[(r["path"], r["offset"])]
    assert src.relative_path(rows[3]["path"], rows[3]["member"], rows[3]["offset"]) == "data/train-00000-of-00002.parquet@3"
    lfw_rows = [r for r in rows if r["path"].startswith("data/train-00001")]
    if lfw_rows:
        assert lfw_rows[0]["identity"] == "Aaron_Peirsol" and lfw_rows[0]["member"] == "jpg"
    # the scan is the same on every run and after pickling (scan units travel to tasks)
    import pickle

    again = pickle.loads(pickle.dumps(src))
    assert again.scan().to_pylist() == rows
    assert len(set(F.assign_keys(src.scan()).column("key").to_pylist())) == len(rows)
    assert src.describe() == "parquet:faces" and str(root.parent) not in src.describe()  # no absolute path


def test_columns_given_by_name_and_batches_bounded(tmp_path: Path) -> None:
    n = BATCH_ROWS + 10
    t = pa.table({"a": pa.array(list(range(n))), "who": pa.array([f"id{i % 3}" for i in range(n)]),
                  "pixels": pa.array([b"\xff\xd8x" * 2] * n, pa.binary()), "other": pa.array([b"z"] * n, pa.binary())})
    pq.write_table(t, tmp_path / "x.parquet", row_group_size=n)
    # two binary and two label-like columns, none by a known name: detection refuses to guess
    assert parse_source(str(tmp_path / "x.parquet")).scan().column("_drop").to_pylist() == ["no image column"]
    src = parse_source(f"parquet:{tmp_path / 'x.parquet'}?image=pixels&label=who")
    batches = list(src.scan_batches())
    assert [b.num_rows for b in batches] == [BATCH_ROWS, 10]
    rows = pa.Table.from_batches(batches).to_pylist()
    assert rows[4]["identity"] == "id1" and rows[4]["member"] == "pixels" and rows[4]["nbytes"] == 6
    assert src.read_bytes("x.parquet", 4, 6, "pixels") == b"\xff\xd8x" * 2


def test_every_bad_row_gets_a_reason(tmp_path: Path) -> None:
    from maskgen.datasets.sources import ReadError

    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    image = pa.array([{"bytes": b"\xff\xd8ok", "path": None}, None, {"bytes": b"", "path": None},
                      {"bytes": None, "path": "/elsewhere/a.jpg"}, {"bytes": b"\xff\xd8ok", "path": None},
                      {"bytes": b"\xff\xd8ok", "path": None}, {"bytes": b"\xff\xd8" + b"x" * 100, "path": None}], struct)
    label = pa.array([1.0, 1.0, 1.0, 1.0, None, 1.5, 2.0])
    pq.write_table(pa.table({"image": image, "label": label}), tmp_path / "a.parquet", row_group_size=3)
    (tmp_path / "b.parquet").write_bytes(b"PAR1 this is not parquet")
    pq.write_table(pa.table({"image": pa.array([b"x"], pa.binary())}), tmp_path / "c.parquet")
    os.mkfifo(tmp_path / "d.parquet")
    (tmp_path / ".hidden").mkdir()
    pq.write_table(pa.table({"image": pa.array([b"x"], pa.binary()), "label": [1]}), tmp_path / ".hidden" / "e.parquet")
    src = parse_source(f"parquet:{tmp_path}")
    src.max_bytes = 64
    rows = src.scan().to_pylist()
    assert [(r["path"], r["_drop"]) for r in rows] == [
        ("a.parquet", None), ("a.parquet", "no image bytes"), ("a.parquet", "no image bytes"),
        ("a.parquet", "image not embedded"), ("a.parquet", "no label"), ("a.parquet", "bad label"),
        ("a.parquet", "file too large"),
        ("b.parquet", "bad parquet"), ("c.parquet", "no label column"), ("d.parquet", "not a regular file"),
    ]
    assert rows[0]["identity"] == "1" and rows[0]["source_label"] == 1
    assert src.read_bytes("a.parquet", 0, 4, "image") == b"\xff\xd8ok"
    for row, reason in ((3, "image not embedded"), (1, "no image bytes")):
        with pytest.raises(ReadError) as exc:
            src.read_bytes("a.parquet", row, None, "image")
        assert exc.value.reason == reason
    with pytest.raises(ReadError) as exc:
        src.read_bytes("../a.parquet", 0, 4, "image")
    assert exc.value.reason == "unsafe path"
    with pytest.raises(ReadError) as exc:
        src.read_bytes("d.parquet", 0, 4, "image")  # a FIFO: refused, never blocks
    assert exc.value.reason == "not a regular file"


def _build(source: str, out: Path, workers: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    args = [sys.executable, "-m", "maskgen", "build", source, "--ratio", "0.5", "--samples-per-shard", "16",
            "--workers", str(workers), "--seed", "4", "--no-report", "-o", str(out)]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)


def test_real_build_exact_ratio_and_same_shards_for_1_and_2_workers(parquet_dir, tmp_path: Path) -> None:
    import webdataset as wds

    root, expected = parquet_dir
    outs = []
    for workers in (1, 2):
        r = _build(f"parquet:{root}", tmp_path / f"w{workers}", workers)
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(tmp_path / f"w{workers}")
    info = json.loads((outs[0] / "dataset.json").read_text())
    n = info["num_samples"]
    assert n >= len(expected) - 2  # a face in (nearly) every image
    assert info["num_masked"] == math.floor(0.5 * n + 0.5)  # exact: half, rounded half up
    samples = list(wds.WebDataset(str(outs[0] / info["pattern"]), shardshuffle=False, empty_check=False))
    per_id = defaultdict(list)
    for s in samples:
        m = json.loads(s["json"])
        per_id[m["identity"]].append(m["masked"])
    assert set(NAMES) <= set(per_id)
    for ident, ms in per_id.items():  # each identity's share: floor or ceil of half
        assert math.floor(0.5 * len(ms)) <= sum(ms) <= math.ceil(0.5 * len(ms)), ident
    a = sorted((outs[0] / "shards").glob("*.tar"))
    b = sorted((outs[1] / "shards").glob("*.tar"))
    assert [p.name for p in a] == [p.name for p in b] and len(a) >= 2
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    rows = pq.read_table(outs[0] / "manifest.parquet").to_pylist()
    assert {r["source"] for r in rows} == {"parquet"}


def test_no_other_module_names_the_kind() -> None:
    """Adding the kind touched only its file: no other module names its class or its prefix."""
    root = Path(__file__).resolve().parents[1] / "maskgen"
    naming = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py")
                    if "ParquetSource" in p.read_text() or "parquet:" in p.read_text())
    assert naming == ["datasets/sources/parquet.py"]
