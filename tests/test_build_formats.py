"""What a build writes, read by the tools its users have: pandas, polars, duckdb, Hugging Face
``datasets``; byte pass-through of aligned crops; the landmark layout; resume that checks
the tars it reuses; builds that find nothing usable; escaped class names.

Inputs are real: an insightface ``.rec`` of aligned 112x112 crops of the astronaut (a real
face available wherever scikit-image is), varied into several identities.
"""

from __future__ import annotations

import json
import math
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from maskgen.errors import InputError
from maskgen.pipelines import build

N_IDS, PER_ID = 8, 5


@pytest.fixture(scope="module")
def crops_rec(tmp_path_factory, astronaut) -> tuple[Path, list[bytes]]:
    """``train.rec`` of 40 aligned crops: 8 identities x 5 photometric variants."""
    from maskgen.datasets.recordio import write_recordio
    from maskgen.masks import align_face, detect_faces

    face = detect_faces(astronaut, backend="dlib", select="center")[0]
    crop = align_face(astronaut, face.landmarks, size=112)
    rng = np.random.default_rng(0)
    items, data = [], []
    for i in range(N_IDS):
        for j in range(PER_ID):
            img = crop.astype(np.float32) * (0.7 + 0.06 * i) + rng.normal(0, 2 + j, crop.shape)
            img = np.clip(img, 0, 255).astype(np.uint8)
            if j % 2:
                img = img[:, ::-1]
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, 90])
            items.append((i, buf.tobytes()))
            data.append(buf.tobytes())
    rec = tmp_path_factory.mktemp("rec") / "train.rec"
    write_recordio(items, rec)
    return rec, data


@pytest.fixture(scope="module")
def twins_build(crops_rec, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("twins") / "b"
    build(f"recordio:{crops_rec[0]}", out, ratio=0.25, twins=True, samples_per_shard=16, progress=False, workers=2)
    return out


@pytest.fixture(scope="module")
def ratio_build(crops_rec, tmp_path_factory) -> Path:
    """A plain ``--ratio 0.1`` build (no twins) with demographic labels, some identities
    unlabelled: its first samples are unmasked (``mask`` null) and lack some labels."""
    root = tmp_path_factory.mktemp("ratio")
    labels = root / "labels.csv"
    labels.write_text("identity,group\n" + "".join(f"{i},{'ab'[i % 2]}\n" for i in range(N_IDS - 2)))
    out = root / "b"
    build(f"recordio:{crops_rec[0]}", out, ratio=0.1, labels=str(labels), samples_per_shard=16, progress=False,
          workers=2, seed=5)  # seed 5: the first 9 samples are unmasked
    return out


def _samples(out: Path) -> list[dict]:
    import webdataset as wds

    info = json.loads((out / "dataset.json").read_text())
    return list(wds.WebDataset(str(out / info["pattern"]), shardshuffle=False, empty_check=False))


def test_passthrough_landmarks_and_attributes(crops_rec, tmp_path: Path) -> None:
    rec, data = crops_rec
    res = build(f"recordio:{rec}", tmp_path / "o", ratio=0.25, samples_per_shard=16, report=False, progress=False)
    assert res.num_samples == N_IDS * PER_ID and res.num_masked == 10
    src_bytes = set(data)
    n_pass = 0
    for s in _samples(res.out):
        meta = json.loads(s["json"])
        assert "demographics" not in meta  # no labels: no empty struct
        if meta["masked"]:
            assert s["jpg"] not in src_bytes and not meta["passthrough"]
            assert len(meta["landmarks"]) == 136 and meta["landmarks_crop"] == meta["landmarks"]  # crop = input frame
        else:
            assert meta["passthrough"] and s["jpg"] in src_bytes  # the record's bytes, unchanged
            n_pass += 1
            if meta["landmarks"] is None:  # no pixels needed: no fit
                assert meta["skin_tone"]["ita"] is None and meta["pose"]["yaw"] is None
        img = cv2.imdecode(np.frombuffer(s["jpg"], np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (112, 112, 3)
    info = json.loads((res.out / "dataset.json").read_text())
    assert info["passthrough"] == n_pass == 30
    att = info["attributes"]
    assert att["mode"] == "auto" and att["sample_rate"] == 0.1 and att["of"] == 40
    man = pq.read_table(res.out / "manifest.parquet").to_pylist()
    assert sum(r["attr_measured"] for r in man) == att["measured"] >= 10  # every masked one + a sample
    assert all((r["ita"] is not None) == r["attr_measured"] for r in man)
    assert all(r["path"] == "train.rec" for r in man)  # relative to the source root
    assert "source_root" not in info and str(rec.parent) not in (res.out / "dataset.json").read_text()
    # all: every sample measured (and so decoded), none: nothing measured
    allb = build(f"recordio:{rec}", tmp_path / "all", ratio=0.25, attributes="all", report=False, progress=False,
                 record_root=True)
    info = json.loads((allb.out / "dataset.json").read_text())
    assert info["attributes"]["measured"] == 40 and info["source_root"] == str(rec.parent)
    none = build(f"recordio:{rec}", tmp_path / "none", ratio=0.25, attributes="none", report=False, progress=False)
    assert json.loads((none.out / "dataset.json").read_text())["attributes"]["measured"] == 0


def test_manifest_same_in_pandas_polars_duckdb(twins_build: Path) -> None:
    pd = pytest.importorskip("pandas")
    pl = pytest.importorskip("polars")
    duckdb = pytest.importorskip("duckdb")
    path = twins_build / "manifest.parquet"
    ref = pq.read_table(path).to_pylist()
    a = pd.read_parquet(path)
    b = pl.read_parquet(path)
    con = duckdb.connect()
    rows = con.execute(f"select * from read_parquet('{path}')").fetchall()
    c = [dict(zip([d[0] for d in con.description], r)) for r in rows]
    assert list(a.columns) == b.columns == list(ref[0])
    for col in ("label", "seed", "offset", "nbytes", "source_label", "width", "height"):
        assert str(a[col].dtype).startswith("int"), col  # never float: no nullable integers
        assert b[col].dtype.is_integer() and b[col].null_count() == 0
    assert a["masked"].dtype == bool and a["passthrough"].dtype == bool

    def same(x, y) -> bool:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return y is None or (isinstance(y, float) and math.isnan(y))
        if hasattr(x, "tolist"):
            x = x.tolist()
        if hasattr(y, "tolist"):
            y = y.tolist()
        if isinstance(x, list):
            return isinstance(y, list) and len(x) == len(y) and all(same(p, q) for p, q in zip(x, y))
        return x == y

    for i, r in enumerate(ref):
        pr = a.iloc[i].to_dict()
        po = b.row(i, named=True)
        for k, v in r.items():
            assert same(v, pr[k]), (k, v, pr[k])
            assert same(v, po[k]), (k, v, po[k])
            assert same(v, c[i][k]), (k, v, c[i][k])
    assert max(r["seed"] for r in ref) > 2**53  # the values pandas would have rounded as floats


def test_hugging_face_datasets_load_and_write_parquet(twins_build: Path, tmp_path: Path) -> None:
    """The documented call: ``load_dataset("webdataset", data_files=..., features=...)`` with
    the features the build publishes (inferred from the first samples, nulls there would be
    typed null and later samples fail to cast)."""
    datasets = pytest.importorskip("datasets")
    from maskgen.datasets.hf import build_features, shard_files

    info = json.loads((twins_build / "dataset.json").read_text())
    files = [str(twins_build / "shards" / s["name"]) for s in info["shards"]]
    assert shard_files(twins_build) == files
    ds = datasets.load_dataset("webdataset", data_files={"train": files}, features=build_features(twins_build),
                               split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == info["num_samples"]
    assert {"jpg", "cls", "json", "orig.jpg", "masked.jpg"} <= set(ds.column_names)
    out = tmp_path / "train.parquet"
    ds.to_parquet(str(out))
    assert pq.read_metadata(out).num_rows == info["num_samples"]


def _front_matter(path: Path) -> dict:
    import yaml

    text = path.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("\n---\n", 1)[0][4:])


@pytest.mark.parametrize("which", ["ratio_build", "twins_build"])
def test_every_build_loads_in_hugging_face_datasets(which: str, request, tmp_path: Path) -> None:
    """A plain ``--ratio`` build whose first samples are unmasked, and a twins build, each load
    both documented ways -- ``load_dataset("webdataset", ..., features=build_features(out))``
    and ``load_dataset(out)`` (the card, ``README.md``, declares configs and features) -- with
    every sample's JSON intact, nulls included, and write Parquet."""
    datasets = pytest.importorskip("datasets")
    from maskgen.datasets.hf import build_features, features, shard_files

    out: Path = request.getfixturevalue(which)
    info = json.loads((out / "dataset.json").read_text())
    ref = {json.loads(s["json"])["key"]: json.loads(s["json"]) for s in _samples(out)}
    if which == "ratio_build":
        first = [json.loads(s["json"]) for s in _samples(out)][:5]
        assert all(m["mask"] is None for m in first)  # what inference from 5 samples typed null
        assert info["label_columns"] == ["group"] and not info["twins"]
        assert any(m["demographics"]["group"] is None for m in ref.values())
    readme = out / "README.md"
    assert readme.read_bytes() == (out / "DATA_CARD.md").read_bytes()
    front = _front_matter(readme)
    assert front["configs"][0]["data_files"] == [{"split": "train", "path": "shards/*.tar"}]
    want = build_features(out)
    assert want == features(info["label_columns"], info["twins"])
    assert datasets.Features._from_yaml_list(front["dataset_info"]["features"]) == want
    by_files = datasets.load_dataset("webdataset", data_files={"train": shard_files(out)}, features=want,
                                     split="train", cache_dir=str(tmp_path / "hf1"))
    by_card = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf2"))
    for ds in (by_files, by_card):
        assert len(ds) == info["num_samples"] == len(ref)
        assert ds.features == want
        assert set(ds.column_names) == {"jpg", "cls", "json", "__key__", "__url__"} | (
            {"orig.jpg", "masked.jpg"} if info["twins"] else set())
        rows = ds.remove_columns([c for c in ds.column_names if c.endswith("jpg")]).to_list()
        for r in rows:
            meta = ref[r["json"]["key"]]
            assert r["cls"] == meta["label"]
            assert {k: r["json"].get(k) for k in meta} == meta  # nulls stay null, values unchanged
        assert sum(r["json"]["masked"] for r in rows) == info["num_masked"]
        p = tmp_path / f"{len(list(tmp_path.iterdir()))}.parquet"
        ds.to_parquet(str(p))
        assert pq.read_metadata(p).num_rows == info["num_samples"]


@pytest.mark.parametrize("which", ["ratio_build", "twins_build"])
def test_sample_json_fields_are_all_declared_with_their_types(which: str, request) -> None:
    """Every field the writer emits is in :mod:`maskgen.datasets.sample` with the type of its
    values (and every declared field is emitted); the writer refuses an undeclared one."""
    from maskgen.datasets.sample import SAMPLE_FIELDS, check_sample_json, json_type, sample_json

    out: Path = request.getfixturevalue(which)
    info = json.loads((out / "dataset.json").read_text())
    typ = json_type(info["label_columns"])
    names = {typ.field(i).name for i in range(typ.num_fields)}
    seen_non_null: set[str] = set()
    for s in _samples(out):
        meta = json.loads(s["json"])
        assert set(meta) == names
        check_sample_json(meta, info["label_columns"])
        assert sample_json(meta, info["label_columns"]) == s["json"]  # the writer's bytes
        seen_non_null |= {k for k, v in meta.items() if v is not None}
        if meta["mask"] is not None:
            assert set(meta["mask"]) == {f.name for f in typ.field("mask").type}
    assert "mask" in seen_non_null and "landmarks" in seen_non_null
    with pytest.raises(TypeError, match="not declared"):
        check_sample_json({**meta, "extra": 1}, info["label_columns"])
    with pytest.raises(TypeError, match="not declared"):
        check_sample_json({**meta, "pose": {**meta["pose"], "tilt": 1.0}}, info["label_columns"])
    with pytest.raises(TypeError, match="is not int64"):
        check_sample_json({**meta, "seed": "7"}, info["label_columns"])
    with pytest.raises(TypeError, match="is not bool"):
        check_sample_json({**meta, "masked": 1}, info["label_columns"])
    assert [f.name for f in SAMPLE_FIELDS][:2] == ["key", "identity"]


def test_resume_rebuilds_a_damaged_tar(crops_rec, tmp_path: Path) -> None:
    rec, _ = crops_rec
    kw = dict(ratio=0.25, samples_per_shard=8, report=False, progress=False)
    a = build(f"recordio:{rec}", tmp_path / "o", **kw)
    ref = {p.name: p.read_bytes() for p in a.shards}
    stats = json.loads((tmp_path / "o" / "stats" / "train-000001.json").read_text())
    assert stats["bytes"] == len(ref["train-000001.tar"]) and len(stats["sha256"]) == 64
    t1 = tmp_path / "o" / "shards" / "train-000001.tar"
    t1.write_bytes(ref["train-000001.tar"][: len(ref["train-000001.tar"]) // 2])  # truncated
    t3 = tmp_path / "o" / "shards" / "train-000003.tar"
    flipped = bytearray(ref["train-000003.tar"])
    flipped[700] ^= 0xFF  # same size, one byte changed
    t3.write_bytes(bytes(flipped))
    b = build(f"recordio:{rec}", tmp_path / "o", **kw)
    assert b.shards_built == 2 and b.shards_reused == len(ref) - 2
    assert {p.name: p.read_bytes() for p in b.shards} == ref
    log = (tmp_path / "o" / "build.log").read_text()
    assert "do not match their recorded size/digest" in log


def test_no_usable_image_is_an_error_with_a_manifest(tmp_path: Path) -> None:
    src = tmp_path / "src" / "someone"
    src.mkdir(parents=True)
    (src / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (src / "b.png").write_bytes(b"")
    with pytest.raises(InputError, match="no usable image") as e:
        build(str(tmp_path / "src"), tmp_path / "o", report=False, progress=False)
    assert "\n" not in str(e.value)
    rows = pq.read_table(tmp_path / "o" / "manifest.parquet").to_pylist()
    assert len(rows) == 2 and all(r["status"] == "failed" and r["reason"] for r in rows)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image found"):
        build(str(tmp_path / "empty"), tmp_path / "o2", report=False, progress=False)


def test_cli_exits_non_zero_when_nothing_is_usable(tmp_path: Path) -> None:
    """From the command line: an empty ``.rec`` and a folder of broken files each end with one
    ``Error:`` line and exit 1, no traceback; the broken files still get their manifest rows."""
    import os
    import subprocess
    import sys

    (tmp_path / "empty.rec").write_bytes(b"")
    bad = tmp_path / "bad" / "someone"
    bad.mkdir(parents=True)
    (bad / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    for src, out, want in ((f"recordio:{tmp_path / 'empty.rec'}", "o1", "no image found in"),
                           (str(tmp_path / "bad"), "o2", "no usable image in")):
        r = subprocess.run([sys.executable, "-m", "maskgen", "build", src, "-o", str(tmp_path / out), "--workers", "1",
                            "--no-report", "--quiet"], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 1, r.stdout + r.stderr
        err = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
        assert len(err) == 1 and want in err[0], r.stderr
        assert "Traceback" not in r.stderr
    rows = pq.read_table(tmp_path / "o2" / "manifest.parquet").to_pylist()
    assert [(r["status"], bool(r["reason"])) for r in rows] == [("failed", True)]


def test_classes_tsv_escapes_names(crops_rec, tmp_path: Path) -> None:
    from maskgen.pipelines.merge import _escape

    assert _escape("a\tb\nc\\d\re") == "a\\tb\\nc\\\\d\\re"
    assert _escape("caf\udce9") == "caf\\xe9"
    root = tmp_path / "src"
    _, data = crops_rec
    for i, name in enumerate(["tab\there", "new\nline", "plain"]):
        d = root / name
        d.mkdir(parents=True)
        for j in range(2):
            (d / f"{j}.jpg").write_bytes(data[i * PER_ID + j])
    res = build(str(root), tmp_path / "o", ratio=0.0, report=False, progress=False)
    lines = (res.out / "classes.tsv").read_text().splitlines()
    assert lines == ["0\tnew\\nline", "1\tplain", "2\ttab\\there"]
    with tarfile.open(res.shards[0]) as tf:
        ids = {json.loads(tf.extractfile(m).read())["identity"] for m in tf if m.name.endswith(".json")}
    assert ids == {"tab\there", "new\nline", "plain"}


def test_partitioning_and_task_grouping_change_no_byte(crops_rec, tmp_path: Path, monkeypatch) -> None:
    """Partitions, landmark chunks and their grouping into tasks are how the work is cut, never
    what is written: tiny partitions give the same shards and manifest rows as one partition."""
    import importlib

    B = importlib.import_module("maskgen.pipelines.build")
    from maskgen.pipelines import scan as S

    rec, _ = crops_rec
    kw = dict(ratio=0.3, twins=True, samples_per_shard=7, report=False, progress=False, seed=4)
    one = build(f"recordio:{rec}", tmp_path / "one", **kw)
    monkeypatch.setattr(S, "PART_ROWS", 6)
    monkeypatch.setattr(B, "CHUNKS_PER_TASK", 3)
    many = build(f"recordio:{rec}", tmp_path / "many", chunk_size=2, **kw)
    assert len(list((tmp_path / "many" / "work" / "plan").glob("*.parquet"))) >= 5
    assert [p.name for p in one.shards] == [p.name for p in many.shards]
    for x, y in zip(one.shards, many.shards):
        assert x.read_bytes() == y.read_bytes()
    a = pq.read_table(tmp_path / "one" / "manifest.parquet").to_pylist()
    b = pq.read_table(tmp_path / "many" / "manifest.parquet").to_pylist()
    assert a == b


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A real 300 KB tmpfs (a full disk on demand); skipped where mounting is not allowed."""
    import shutil
    import subprocess

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if not shutil.which("mount") or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)],
                                                   capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root in a namespace that allows it)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_one_line_then_resume(crops_rec, small_tmpfs: Path, tmp_path: Path) -> None:
    """A build that fills its disk ends with one line naming the file, exit 1, no traceback,
    no shard under its final name that is not complete; with space again, a rerun completes
    it with the bytes of an uninterrupted build."""
    import os
    import re
    import subprocess
    import sys

    rec, _ = crops_rec
    args = ["build", f"recordio:{rec}", "--ratio", "0.5", "--twins", "--samples-per-shard", "8", "--no-report",
            "--workers", "1", "--seed", "2"]
    out = small_tmpfs / "out"
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    r = subprocess.run([sys.executable, "-m", "maskgen", *args, "-o", str(out)], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(err) == 1 and re.fullmatch(r"Error: cannot write .+: No space left on device \(rerun to resume\)", err[0]), r.stderr
    assert "Traceback" not in r.stderr
    log = (out / "build.log").read_text() if (out / "build.log").exists() else ""
    assert "[error] cannot write" in log or "cannot append to the build log" in r.stderr
    for tar in (out / "shards").glob("*.tar") if (out / "shards").is_dir() else []:
        st = json.loads((out / "stats" / (tar.stem + ".json")).read_text()) if (out / "stats" / (tar.stem + ".json")).exists() else None
        assert st is None or st["bytes"] == tar.stat().st_size
    subprocess.run(["mount", "-o", "remount,size=20m", str(small_tmpfs)], check=True)
    r2 = subprocess.run([sys.executable, "-m", "maskgen", *args, "-o", str(out)], env=env, capture_output=True,
                        text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-2000:]
    ref = build(f"recordio:{rec}", tmp_path / "ref", ratio=0.5, twins=True, samples_per_shard=8, report=False,
                progress=False, seed=2)
    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == [p.name for p in ref.shards]
    for p in ref.shards:
        assert (out / "shards" / p.name).read_bytes() == p.read_bytes()


def test_tar_headers_are_tarfiles_bytes() -> None:
    """The direct USTAR writer gives exactly the bytes tarfile writes for the same members
    (so shards stay byte-identical across versions), and long names still work."""
    import io
    import os
    import random

    from maskgen.datasets.tarwriter import _tarfile_bytes, tar_bytes

    rng = random.Random(0)
    for _ in range(100):
        names = {f"{rng.randint(0, 999999):06d}-{rng.randint(0, 9999):04d}.{rng.choice(['jpg', 'cls', 'json', 'orig.jpg'])}"
                 for _ in range(rng.randint(0, 30))}
        mem = [(n, os.urandom(rng.randint(0, 3000))) for n in names]
        assert tar_bytes(mem) == _tarfile_bytes(sorted(mem))
    long = [("d" * 110 + "/x.jpg", b"data")]  # over 100 bytes: USTAR prefix + name
    with tarfile.open(fileobj=io.BytesIO(tar_bytes(long))) as tf:
        assert tf.getnames() == ["d" * 110 + "/x.jpg"]


def test_audit_says_how_many_samples_the_build_measured(crops_rec, tmp_path: Path) -> None:
    """A build that measured skin tone on a sample only (pass-through crops) gets an audit note
    saying so; a build that measured everything gets none."""
    from maskgen.audit.sources import load_input

    rec, _ = crops_rec
    res = build(f"recordio:{rec}", tmp_path / "o", ratio=0.25, report=False, progress=False)
    att = json.loads((res.out / "dataset.json").read_text())["attributes"]
    assert att["measured"] < att["of"]
    inp = load_input(res.out, compute_attributes=False, fill_failed=False)
    note = [n for n in inp.notes if n.startswith("skin tone and quality were measured on")]
    assert len(note) == 1
    assert f"{att['measured']:,} of the {att['of']:,} written samples" in note[0]
    assert "--attributes auto, sample rate 0.1" in note[0] and "those samples only" in note[0]
    full = build(f"recordio:{rec}", tmp_path / "all", ratio=0.25, attributes="all", report=False, progress=False)
    inp = load_input(full.out, compute_attributes=False, fill_failed=False)
    assert not [n for n in inp.notes if n.startswith("skin tone and quality were measured on")]
