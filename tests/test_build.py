"""`maskgen build` end to end on real LFW faces, on one Ray instance (2 CPUs) per session."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from maskgen.pipelines import build

N_IDS = 40  # LFW's first 40 identities: 83 images


@pytest.fixture(scope="session")
def ray_session():
    ray = pytest.importorskip("ray")
    started = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2,
                 configure_logging=False, log_to_driver=False)
        started = True
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def lfw_build(ray_session, lfw_dir: Path, tmp_path_factory) -> Path:
    """A first build (ratio 0.1, report on): its landmarks.parquet serves the other builds."""
    out = tmp_path_factory.mktemp("lfw40") / "b"
    build("lfw", out, ratio=0.1, max_identities=N_IDS, samples_per_shard=30, seed=0, quiet=True)
    return out


def _manifest(out: Path) -> list[dict]:
    return pq.read_table(out / "manifest.parquet").to_pylist()


def _wds_samples(out: Path) -> list[dict]:
    import webdataset as wds

    info = json.loads((out / "dataset.json").read_text())
    ds = wds.WebDataset(str(out / info["pattern"]), shardshuffle=False, empty_check=False)
    return list(ds)


def test_first_build_outputs(lfw_build: Path) -> None:
    out = lfw_build
    info = json.loads((out / "dataset.json").read_text())
    names = sorted(p.name for p in (out / "shards").iterdir())
    assert names == [s["name"] for s in info["shards"]] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert info["pattern"] == "shards/train-{000000..000002}.tar"
    assert info["num_classes"] == N_IDS
    assert info["num_samples"] == sum(s["num_samples"] for s in info["shards"])
    assert info["num_masked"] == round(0.1 * info["num_samples"])
    rows = _manifest(out)
    assert len(rows) == 13233  # every input keeps a row
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == info["num_samples"]
    failed = [r for r in rows if r["status"] == "failed"]
    from maskgen.masks.landmarks import REASON_IMPLAUSIBLE, REASON_NO_FACE, REASON_PROFILE

    assert all(r["reason"] in (REASON_NO_FACE, REASON_IMPLAUSIBLE, REASON_PROFILE) for r in failed)
    assert {r["reason"] for r in rows if r["status"] == "dropped"} == {f"beyond max_identities ({N_IDS})"}
    assert all(len(r["landmarks"]) == 136 and r["shard"] and r["label"] >= 0 for r in ok)
    # landmarks_crop: the same 68 points in the written 112x112 crop, whose eyes sit where the
    # ArcFace template puts them (38.3, 51.7) and (73.5, 51.5); landmarks: in the photo's pixels
    crop = np.array([r["landmarks_crop"] for r in ok], np.float64).reshape(len(ok), 68, 2)
    eyes = np.stack([crop[:, 36:42].mean(1), crop[:, 42:48].mean(1)], 1)
    assert np.abs(np.median(eyes, 0) - [[38.3, 51.7], [73.5, 51.5]]).max() < 3
    assert np.median(np.array([r["landmarks"] for r in ok])[:, 0::2]) > 90  # 250x250 photos, not the crop
    assert all(r["ita"] is not None and r["skin_tone"] for r in ok)  # audit attributes per sample
    assert (out / "build.yaml").is_file() and list((out / "landmarks").glob("*.parquet"))
    assert (out / "DATA_CARD.md").is_file()  # written by the audit at the merge step
    # the driver's memory at each stage end (RSS now, peak so far): the peak never falls
    mem = json.loads((out / "timings.json").read_text())["driver_memory_mib"]
    assert {"scan", "prepare", "landmarks", "join", "plan", "execute", "merge"} <= set(mem)
    peaks = [mem[k]["peak"] for k in mem]
    # the peak never falls; Linux syncs its per-thread RSS counters lazily, so VmHWM read at two
    # moments can disagree by a few pages (seen: 208.5 then 208.4 MiB): 1 MiB of slack
    assert all(0 < mem[k]["rss"] <= mem[k]["peak"] + 1.0 for k in mem)
    assert all(b >= a - 1.0 for a, b in zip(peaks, peaks[1:]))
    log = (out / "build.log").read_text()
    assert re.search(r"\[execute\] [\d,]+/[\d,]+ images \(100%\) \| [\d.,]+ images/s \| ETA 0:00:00 \| .*shards 3/3, masked ", log)


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5, 1.0])
def test_ratio_exact(lfw_build: Path, tmp_path: Path, ratio: float) -> None:
    res = build("lfw", tmp_path / "o", ratio=ratio, max_identities=N_IDS, samples_per_shard=30,
                landmarks_from=str(lfw_build), report=False, quiet=True)
    n = res.num_samples
    assert n + res.num_failed == 83 and n >= 78  # a face in nearly every image
    assert abs(res.num_masked - ratio * n) <= 0.5  # exact within one sample
    samples = _wds_samples(res.out)
    assert len(samples) == n
    metas = [json.loads(s["json"]) for s in samples]
    assert sum(m["masked"] for m in metas) == res.num_masked
    per_id = defaultdict(list)
    for m in metas:
        per_id[m["identity"]].append(m["masked"])
        assert (m["mask"] is not None) == m["masked"]
    for ident, ms in per_id.items():  # spread evenly: floor or ceil of the identity's share
        assert math.floor(ratio * len(ms) + 1e-9) <= sum(ms) <= math.ceil(ratio * len(ms) - 1e-9), ident
    rows = [r for r in _manifest(res.out) if r["status"] == "ok"]
    assert sum(r["masked"] for r in rows) == res.num_masked
    assert all((r["mask_type"] is not None) == r["masked"] for r in rows)


def test_twins_read_back_webdataset_and_ray(lfw_build: Path, tmp_path: Path, ray_session) -> None:
    res = build("lfw", tmp_path / "t", ratio=0.5, twins=True, max_identities=N_IDS, samples_per_shard=50,
                landmarks_from=str(lfw_build), report=False, quiet=True, mask_mix="mtarcface")
    samples = _wds_samples(res.out)
    assert len(samples) == res.num_samples
    for s in samples:
        assert {"jpg", "cls", "json", "orig.jpg", "masked.jpg"} <= set(s)
        meta = json.loads(s["json"])
        assert s["jpg"] == (s["masked.jpg"] if meta["masked"] else s["orig.jpg"])
        assert int(s["cls"]) == meta["label"]
        assert meta["mask"]["type"] and meta["mask"]["wear"] == "correct"
        img = cv2.imdecode(np.frombuffer(s["masked.jpg"], np.uint8), cv2.IMREAD_COLOR)
        orig = cv2.imdecode(np.frombuffer(s["orig.jpg"], np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == orig.shape == (112, 112, 3)
    # the lower face differs between twins (the mask), the eyes region barely does
    diffs = [np.abs(cv2.imdecode(np.frombuffer(s["masked.jpg"], np.uint8), 0).astype(int)
                    - cv2.imdecode(np.frombuffer(s["orig.jpg"], np.uint8), 0).astype(int)) for s in samples]
    assert np.mean([d[75:100, 30:82].mean() for d in diffs]) > 3 * np.mean([d[35:55, 30:82].mean() for d in diffs])
    ds = ray_session.data.read_webdataset(str(res.out / "shards"))
    rows = ds.take_all()
    assert len(rows) == res.num_samples
    assert {"jpg", "cls", "json", "orig.jpg", "masked.jpg"} <= set(rows[0])


def test_workers_1_and_2_byte_identical(lfw_build: Path, tmp_path: Path) -> None:
    kw = dict(ratio=0.5, twins=True, max_identities=N_IDS, samples_per_shard=20, landmarks_from=str(lfw_build),
              report=False, quiet=True, seed=7)
    a = build("lfw", tmp_path / "w1", workers=1, **kw)
    b = build("lfw", tmp_path / "w2", workers=2, **kw)
    assert len(a.shards) == len(b.shards) == 5
    for x, y in zip(a.shards, b.shards):
        assert x.name == y.name and x.read_bytes() == y.read_bytes()
    # shards sized by bytes: the same split on every run, each shard near the target
    e = build("lfw", tmp_path / "bytes", shard_bytes=60_000, **{**kw, "samples_per_shard": 1000})
    sizes = [p.stat().st_size for p in e.shards]
    assert len(sizes) >= 3 and max(sizes[:-1]) < 90_000 and min(sizes[:-1]) > 35_000
    # a rebuild in place reuses every shard
    c = build("lfw", tmp_path / "w1", workers=2, **kw)
    assert c.shards_reused == 5 and c.shards_built == 0
    # another seed changes the plan, so every shard is rebuilt (no stale reuse)
    d = build("lfw", tmp_path / "w1", workers=2, **{**kw, "seed": 8})
    assert d.shards_built == 5 and d.num_masked == a.num_masked


def test_resume_simulated_crash(lfw_build: Path, tmp_path: Path) -> None:
    kw = dict(ratio=0.1, max_identities=N_IDS, samples_per_shard=20, landmarks_from=str(lfw_build),
              report=False, quiet=True)
    ref = build("lfw", tmp_path / "ref", **kw)
    out = tmp_path / "crash"
    shutil.copytree(ref.out, out)
    # shard 1 was interrupted after the tar rename but before its stats; shard 3 mid-write
    (out / "stats" / "train-000001.json").unlink()
    (out / "shards" / "train-000003.tar").rename(out / "shards" / "train-000003.tar.tmp")
    (out / "stats" / "train-000003.json").unlink()
    res = build("lfw", out, **kw)
    assert res.shards_built == 2 and res.shards_reused == 3
    assert not list((out / "shards").glob("*.tmp"))
    for x, y in zip(ref.shards, res.shards):
        assert x.read_bytes() == (out / "shards" / y.name).read_bytes()


def test_resume_after_kill(lfw_build: Path, tmp_path: Path) -> None:
    """Kill a real `maskgen build` process mid-way, rerun it, compare with an uninterrupted build."""
    args = ["lfw", "--ratio", "0.1", "--max-identities", "120", "--samples-per-shard", "8", "--workers", "1",
            "--no-report", "--seed", "3"]
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "maskgen", "build", *args, "-o", str(out)]
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            done = list((out / "stats").glob("*.json")) if (out / "stats").is_dir() else []
            if len(done) >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the build finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    n_done = len(list((out / "stats").glob("*.json")))
    info_before = (out / "dataset.json").exists()
    assert not info_before  # killed before the merge
    res = build("lfw", out, ratio=0.1, max_identities=120, samples_per_shard=8, workers=1, report=False,
                quiet=True, seed=3)
    assert res.shards_reused >= n_done >= 2 and res.shards_built >= 1
    ref = build("lfw", tmp_path / "ref", ratio=0.1, max_identities=120, samples_per_shard=8, workers=2,
                report=False, quiet=True, seed=3, landmarks_from=str(out))
    assert [p.name for p in ref.shards] == [p.name for p in res.shards]
    for x, y in zip(ref.shards, res.shards):
        assert x.read_bytes() == y.read_bytes()


def _odd_inputs(lfw_dir: Path, root: Path) -> dict[str, str]:
    """Real faces in odd formats plus broken and faceless files; name -> expected status."""
    from PIL import Image

    person = root / "Odd_Person"
    shutil.copytree(lfw_dir / "Adrien_Brody", root / "Adrien_Brody")
    person.mkdir()
    src = lfw_dir / "Al_Gore" / "Al_Gore_0001.jpg"
    face = Image.open(src).convert("RGB")
    data = src.read_bytes()
    expect = {}
    shutil.copy(src, person / "plain.jpg"); expect["plain.jpg"] = "ok"
    face.convert("L").save(person / "gray.png"); expect["gray.png"] = "ok"
    face.convert("CMYK").save(person / "cmyk.jpg"); expect["cmyk.jpg"] = "ok"
    arr16 = (np.asarray(face).astype(np.uint16) * 257)
    cv2.imwrite(str(person / "deep16.png"), cv2.cvtColor(arr16, cv2.COLOR_RGB2BGR)); expect["deep16.png"] = "ok"
    (person / "truncated.jpg").write_bytes(data[: len(data) // 3]); expect["truncated.jpg"] = "failed"
    (person / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(3000)); expect["corrupt.jpg"] = "failed"
    (person / "empty.png").write_bytes(b""); expect["empty.png"] = "failed"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (250, 250, 3), dtype=np.uint8)).save(person / "noise.jpg")
    expect["noise.jpg"] = "failed"
    Image.new("RGB", (250, 250), (120, 160, 200)).save(person / "flat.png"); expect["flat.png"] = "failed"
    (person / "broken.jpg").symlink_to(root / "nowhere.jpg"); expect["broken.jpg"] = "failed"
    two = Image.new("RGB", (500, 250))
    two.paste(face, (0, 0))
    two.paste(Image.open(lfw_dir / "Adrien_Brody" / "Adrien_Brody_0001.jpg"), (250, 0))
    two.save(person / "two_faces.jpg"); expect["two_faces.jpg"] = "ok"
    face.resize((4400, 4400), Image.BICUBIC).save(person / "huge.jpg", quality=80); expect["huge.jpg"] = "ok"
    return expect


def test_bad_inputs_counted_not_fatal(ray_session, lfw_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "odd"
    expect = _odd_inputs(lfw_dir, root)
    res = build(str(root), tmp_path / "o", ratio=0.5, report=False, quiet=True, samples_per_shard=10)
    rows = {Path(r["path"]).name: r for r in _manifest(res.out)}
    for name, status in expect.items():
        assert rows[name]["status"] == status, (name, rows[name]["reason"])
        if status == "failed":
            assert rows[name]["reason"]
    assert rows["noise.jpg"]["reason"] == "no face detected"
    assert rows["truncated.jpg"]["reason"].startswith("decode")
    assert rows["broken.jpg"]["reason"].startswith("unreadable")
    assert rows["huge.jpg"]["width"] <= 4096  # decoded downscaled, not refused
    n_brody = len(list((root / "Adrien_Brody").iterdir()))
    assert res.num_samples == sum(v == "ok" for v in expect.values()) + n_brody - res.num_failed + sum(
        v == "failed" for v in expect.values())
    info = json.loads((res.out / "dataset.json").read_text())
    assert info["reasons"]["failed: no face detected"] >= 2
    assert any(k.startswith("failed: decode") for k in info["reasons"])
    assert len(_wds_samples(res.out)) == res.num_samples


def test_recordio_source_build(ray_session, lfw_dir: Path, tmp_path: Path) -> None:
    from maskgen.datasets.recordio import write_recordio

    names = ["Adrien_Brody", "Al_Gore", "Abdullah_Gul"]
    items = [(i, f.read_bytes()) for i, n in enumerate(names) for f in sorted((lfw_dir / n).iterdir())[:6]]
    write_recordio(items, tmp_path / "rec" / "train.rec")
    res = build(f"recordio:{tmp_path / 'rec' / 'train.rec'}", tmp_path / "o", ratio=0.5, report=False,
                quiet=True, min_images=2, twins=True)
    assert res.num_classes == 3 and res.num_samples + res.num_failed == len(items)
    metas = [json.loads(s["json"]) for s in _wds_samples(res.out)]
    assert {m["identity"] for m in metas} == {"0", "1", "2"}
    assert all(m["source_path"].startswith("train.rec@") for m in metas)
    # re-mask that build's shards at another ratio: a WebDataset source (the originals are used)
    again = build(f"wds:{res.out}/shards/*.tar", tmp_path / "o2", ratio=0.0, report=False, quiet=True,
                  image_mode="original")
    assert again.num_samples == res.num_samples and again.num_masked == 0
    assert {json.loads(s["json"])["source_path"].split(":")[1].split(".", 1)[1] for s in _wds_samples(again.out)} == {"orig.jpg"}
    # without twins, masked training images have no original: dropped with the reason
    plain = build(f"recordio:{tmp_path / 'rec' / 'train.rec'}", tmp_path / "o3", ratio=0.5, report=False,
                  quiet=True, min_images=2, landmarks_from=str(res.out))
    remask = build(f"wds:{plain.out}/shards/*.tar", tmp_path / "o4", ratio=0.0, report=False, quiet=True)
    assert remask.num_samples == plain.num_samples - plain.num_masked
    assert remask.reasons == {"dropped: source image is already masked and has no original": plain.num_masked}


def test_filters_in_manifest(lfw_build: Path, tmp_path: Path) -> None:
    res = build("lfw", tmp_path / "f", ratio=0.5, max_identities=10, min_images=2, exclude="Abdullah_Gul",
                exclude_eval="lfw-devtest", dedup=True, landmarks_from=str(lfw_build), report=False, quiet=True)
    rows = _manifest(res.out)
    reasons = {r["reason"].split(" (")[0] for r in rows if r["status"] == "dropped"}
    assert {"in exclude list", "evaluation identity", "identity has fewer than min_images",
            "beyond max_identities"} <= reasons
    ok_ids = {r["identity"] for r in rows if r["status"] == "ok"}
    assert len(ok_ids) == res.num_classes <= 10 and "Abdullah_Gul" not in ok_ids
    counts = defaultdict(int)
    for r in rows:
        if r["status"] == "ok":
            counts[r["identity"]] += 1
    assert min(counts.values()) >= 2


def test_cli_and_yaml(lfw_build: Path, tmp_path: Path, ray_session) -> None:
    from click.testing import CliRunner

    from maskgen.cli import main

    cfg = tmp_path / "b.yaml"
    cfg.write_text(f"source: lfw\nratio: 0.5\nmax_identities: 10\nlandmarks_from: {lfw_build}\nreport: false\n")
    out = tmp_path / "cli"
    r = CliRunner().invoke(main, ["build", "--config", str(cfg), "--out", str(out), "--ratio", "0.25", "--quiet"])
    assert r.exit_code == 0, r.output
    info = json.loads((out / "dataset.json").read_text())
    assert info["ratio_requested"] == 0.25 and info["num_classes"] == 10
    import yaml

    resolved = yaml.safe_load((out / "build.yaml").read_text())
    assert resolved["ratio"] == 0.25 and resolved["max_identities"] == 10 and resolved["source"] == "lfw"
    from maskgen.pipelines.config import BUILD

    assert BUILD.resolve(out / "build.yaml").to_dict() == resolved  # reloads as written (-c <out>/build.yaml)
    bad = CliRunner().invoke(main, ["build", "lfw", "-o", str(tmp_path / "x"), "--mask-type", "scuba"])
    assert bad.exit_code != 0 and "scuba" in bad.output


def test_demographic_labels_spread_ratio(ray_session, fairface_dir: Path, tmp_path: Path) -> None:
    """FairFace crops (one identity per image) with a labels CSV: each race group gets its
    share of masked images within one, and the labels reach the manifest and sample json."""
    import csv

    root = tmp_path / "ff"
    (root / "val").mkdir(parents=True)
    with open(fairface_dir / "fairface_label_val.csv") as f:
        rows = list(csv.DictReader(f))[:90]
    for r in rows:
        shutil.copy(fairface_dir / r["file"], root / r["file"])
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "gender", "race"])
        w.writerows([r["file"], r["gender"], r["race"]] for r in rows)
    ratio = 0.3
    res = build(str(root), tmp_path / "o", ratio=ratio, identity_depth=0, labels=str(labels), stratify="race",
                report=False, quiet=True)
    assert res.num_classes >= res.num_samples  # one identity per image (identity_depth=0)
    man = [r for r in _manifest(res.out) if r["status"] == "ok"]
    assert all(r["race"] and r["gender"] for r in man)
    n = len(man)
    m_total = sum(r["masked"] for r in man)
    assert m_total == round(ratio * n) or abs(m_total - ratio * n) <= 0.5
    groups = defaultdict(list)
    for r in man:
        groups[r["race"]].append(r["masked"])
    assert len(groups) >= 4
    for g, ms in groups.items():
        q = m_total * len(ms) / n
        assert math.floor(q) <= sum(ms) <= math.ceil(q), (g, len(ms), sum(ms))
    meta = json.loads(_wds_samples(res.out)[0]["json"])
    assert set(meta["demographics"]) == {"gender", "race"}

    # Rebalancing: at most 5 images per race group, the rest dropped with the reason.
    cap = 5
    res2 = build(str(root), tmp_path / "c", ratio=ratio, identity_depth=0, labels=str(labels), stratify="race",
                 cap_per_group=cap, landmarks_from=str(res.out), report=False, quiet=True)
    rows2 = _manifest(res2.out)
    kept = defaultdict(int)
    for r in rows2:
        if r["status"] == "ok":
            kept[r["race"]] += 1
    assert {g: kept[g] for g in groups} == {g: min(cap, len(ms)) for g, ms in groups.items()}
    capped = [r for r in rows2 if r["status"] == "dropped"]
    assert len(capped) == n - sum(kept.values())
    assert all(r["reason"].startswith("cap per group") for r in capped)


def test_min_masked(ray_session, lfw_dir: Path, tmp_path: Path) -> None:
    """Identities whose masked share would fall below K are dropped; the rest get at least K."""
    res = build("lfw", tmp_path / "k", ratio=0.5, min_masked=4, include="Abdullah_Gul,Adrien_Brody,AJ_Cook",
                report=False, quiet=True)
    rows = _manifest(res.out)
    aj = [r for r in rows if r["identity"] == "AJ_Cook"]
    assert aj[0]["status"] == "dropped" and aj[0]["reason"].startswith("identity keeps fewer than min_masked")
    masked = defaultdict(int)
    for r in rows:
        if r["status"] == "ok":
            masked[r["identity"]] += r["masked"]
    assert set(masked) == {"Abdullah_Gul", "Adrien_Brody"} and min(masked.values()) >= 4


def test_output_folder_is_owned(lfw_build: Path, tmp_path: Path) -> None:
    """A user's folder is refused in both modes; in a folder the build owns, only files its
    records name are deleted; a symlinked shards/ is refused; one build at a time."""
    from maskgen.errors import OutputError
    from maskgen.outputs import claim

    kw = dict(ratio=0.1, max_identities=N_IDS, landmarks_from=str(lfw_build), report=False, quiet=True)
    user = tmp_path / "user"
    (user / "shards").mkdir(parents=True)
    mine = {f"train-{i:06d}.tar": os.urandom(600) for i in range(3)}
    for n, b in mine.items():
        (user / "shards" / n).write_bytes(b)
    for mode in ("resume", "overwrite"):
        with pytest.raises(OutputError, match="not made by maskgen"):
            build("lfw", user, mode=mode, **kw)
    assert {p.name: p.read_bytes() for p in (user / "shards").iterdir()} == mine
    assert sorted(p.name for p in user.iterdir()) == ["shards"]

    out = tmp_path / "o"
    a = build("lfw", out, samples_per_shard=30, **kw)
    assert len(a.shards) == 3
    (out / "shards" / "train-000099.tar").write_bytes(b"looks like ours, no record names it")
    (out / "shards" / "holiday.tar").write_bytes(b"user")
    b = build("lfw", out, samples_per_shard=60, **kw)  # fewer shards: train-000002 is stale
    assert [p.name for p in b.shards] == ["train-000000.tar", "train-000001.tar"]
    assert not (out / "shards" / "train-000002.tar").exists() and not (out / "stats" / "train-000002.json").exists()
    c = build("lfw", out, samples_per_shard=60, mode="overwrite", **kw)
    assert c.shards_built == 2
    assert (out / "shards" / "train-000099.tar").read_bytes().startswith(b"looks like ours")
    assert (out / "shards" / "holiday.tar").read_bytes() == b"user"
    with claim(out, "build"):  # another run holds the folder
        with pytest.raises(OutputError, match=rf"in use by another maskgen run \(pid {os.getpid()}\)"):
            build("lfw", out, **kw)
    shutil.rmtree(out / "shards")
    (out / "shards").symlink_to(user / "shards")
    for mode in ("resume", "overwrite"):
        with pytest.raises(OutputError, match="is a link"):
            build("lfw", out, mode=mode, samples_per_shard=30, **kw)
    assert {p.name: p.read_bytes() for p in (user / "shards").iterdir()} == mine


class _Cluster:
    """A real two-node Ray cluster on this machine (``ray start --head`` + ``ray start
    --address``), in its own temp dir; stopped by the process groups it started, never by
    ``ray stop`` (which would stop every cluster on the machine)."""

    def __init__(self, tmp: Path):
        import socket

        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RAY_ADDRESS", None)
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.address = f"127.0.0.1:{self.port}"
        self.tmp = tmp
        tmp.parent.mkdir(parents=True, exist_ok=True)
        self.nodes: list[subprocess.Popen] = []
        ray_exe = str(Path(sys.executable).with_name("ray"))
        common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats", "--block",
                  f"--object-store-memory={100 * 1024**2}"]
        self._start([ray_exe, "start", "--head", f"--port={self.port}", f"--temp-dir={tmp}",
                     "--include-dashboard=false", *common], "head")
        self._wait(1)
        self._start([ray_exe, "start", f"--address={self.address}", *common], "worker")
        self._wait(2)

    def _start(self, cmd: list[str], name: str) -> None:
        log = open(self.tmp.parent / f"ray-{name}.log", "w")
        self.nodes.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def _wait(self, n_nodes: int, timeout: float = 90) -> None:
        code = (f"import ray; ray.init(address={self.address!r}, log_to_driver=False); "
                "print(sum(1 for n in ray.nodes() if n['Alive']))")
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True)
            if r.returncode == 0 and r.stdout.strip().splitlines()[-1:] == [str(n_nodes)]:
                return
            if any(p.poll() is not None for p in self.nodes):
                break
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"the test cluster did not reach {n_nodes} node(s); see {self.tmp.parent}/ray-*.log")

    def kill_worker(self) -> None:
        os.killpg(self.nodes[1].pid, signal.SIGKILL)
        self.nodes[1].wait()

    def stop(self) -> None:
        for p in reversed(self.nodes):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(self.nodes):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_two_node_cluster_same_bytes_and_survives_a_dead_node(lfw_build: Path, tmp_path: Path) -> None:
    """A build on a real two-node cluster (--ray-address) gives the bytes of a local build; a
    worker node killed mid-build costs nothing but time. A plain build next to that running
    cluster still starts its own local Ray and says so."""
    args = ["lfw", "--ratio", "0.5", "--twins", "--max-identities", str(N_IDS), "--samples-per-shard", "6",
            "--landmarks-from", str(lfw_build), "--no-report", "--seed", "5", "--attributes", "all"]
    ref = build("lfw", tmp_path / "local", ratio=0.5, twins=True, max_identities=N_IDS, samples_per_shard=6,
                landmarks_from=str(lfw_build), report=False, quiet=True, seed=5, workers=2)
    import tempfile

    ray_tmp = Path(tempfile.mkdtemp(prefix="mgray-"))  # short: Ray's socket paths must fit 107 bytes
    cluster = _Cluster(ray_tmp / "t")
    try:
        env = {**cluster.env, "RAY_ADDRESS": cluster.address}  # a plain build must ignore it
        plain = subprocess.run([sys.executable, "-m", "maskgen", "build", *args, "--workers", "1", "-o",
                                str(tmp_path / "plain")], env=env, capture_output=True, text=True, timeout=600)
        assert plain.returncode == 0, plain.stdout[-2000:] + plain.stderr[-2000:]
        assert "started a local Ray" in (tmp_path / "plain" / "build.log").read_text()

        on = subprocess.run([sys.executable, "-m", "maskgen", "build", *args, "--ray-address", cluster.address,
                             "-o", str(tmp_path / "cluster")], env=cluster.env, capture_output=True, text=True, timeout=600)
        assert on.returncode == 0, on.stdout[-2000:] + on.stderr[-2000:]
        assert "joined the Ray cluster" in (tmp_path / "cluster" / "build.log").read_text()

        out = tmp_path / "killed"
        proc = subprocess.Popen([sys.executable, "-m", "maskgen", "build", *args, "--ray-address", cluster.address,
                                 "-o", str(out)], env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            deadline = time.time() + 300
            while time.time() < deadline and proc.poll() is None:
                if (out / "stats").is_dir() and len(list((out / "stats").glob("*.json"))) >= 2:
                    break
                time.sleep(0.05)
            assert proc.poll() is None, "the build finished before a node could be killed"
            cluster.kill_worker()
            log = proc.communicate(timeout=600)[0]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert proc.returncode == 0, log[-3000:]
    finally:
        cluster.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    for d in ("plain", "cluster", "killed"):
        shards = sorted((tmp_path / d / "shards").glob("*.tar"))
        assert [p.name for p in shards] == [p.name for p in ref.shards], d
        for x, y in zip(ref.shards, shards):
            assert x.read_bytes() == y.read_bytes(), (d, x.name)
    info = json.loads((tmp_path / "killed" / "dataset.json").read_text())
    assert info["num_samples"] == ref.num_samples and not any("shard task failed" in k for k in info["reasons"])


def _build_call(out: Path, lfw_build: Path) -> str:
    """The source line of a script's build() call: the build of ``lfw_build``, into ``out``."""
    return (f"build('lfw', {str(out)!r}, ratio=0.1, max_identities={N_IDS}, samples_per_shard=30, seed=0,"
            f" landmarks_from={str(lfw_build)!r}, quiet=True, report=False, workers=1)\n")


def _assert_same_shards(out: Path, ref: Path) -> None:
    got, want = sorted((out / "shards").glob("*.tar")), sorted((ref / "shards").glob("*.tar"))
    assert [p.name for p in got] == [p.name for p in want]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(got, want))


def test_build_from_a_script_on_stdin(lfw_build: Path, tmp_path: Path) -> None:
    """`python -` (a script piped to Python, as notebooks' shell cells and heredocs do) builds
    the same shards as the in-process build."""
    out = tmp_path / "stdin"
    script = "from maskgen.pipelines import build\n" + _build_call(out, lfw_build)
    r = subprocess.run([sys.executable, "-"], input=script, text=True, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_same_shards(out, lfw_build)


def test_build_from_a_script_without_a_main_guard_runs_it_once(lfw_build: Path, tmp_path: Path) -> None:
    """A script that calls build() at top level (no ``if __name__ == "__main__":``), report
    included: the scan helper started while Ray starts and the report's chart helper and
    thumbnail workers never import the user's main module, so the script's top-level code
    runs exactly once; same shards as the in-process build."""
    out, runs = tmp_path / "noguard", tmp_path / "runs.txt"
    script = tmp_path / "make_shards.py"
    call = _build_call(out, lfw_build).replace("report=False", "report=True")
    script.write_text(f"from maskgen.pipelines import build\n"
                      f"with open({str(runs)!r}, 'a') as f:\n    f.write('ran\\n')\n" + call)
    r = subprocess.run([sys.executable, str(script)], text=True, capture_output=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert runs.read_text() == "ran\n"
    assert "report" in call and (out / "report.html").is_file() and list((out / "report").glob("thumbs_*.jpg"))
    _assert_same_shards(out, lfw_build)


def test_a_build_without_its_report_leaves_no_earlier_report(lfw_build: Path, tmp_path: Path) -> None:
    """A report in a build folder always describes the samples there: a later build with
    --no-report (resume or overwrite) removes the report an earlier build wrote, and nothing
    of the user's (their own README.md, other files under report/)."""
    kw = dict(ratio=0.1, max_identities=10, samples_per_shard=30, landmarks_from=str(lfw_build), quiet=True)
    out = tmp_path / "o"
    build("lfw", out, **kw)
    assert (out / "DATA_CARD.md").is_file() and (out / "README.md").read_bytes() == (out / "DATA_CARD.md").read_bytes()
    assert list((out / "report").glob("*.png"))
    (out / "report" / "notes.txt").write_text("mine\n")
    build("lfw", out, **{**kw, "ratio": 0.5, "report": False})  # resume mode, another plan
    for name in ("DATA_CARD.md", "README.md", "report.html", "report.md", "stats.json"):
        assert not (out / name).exists(), name
    assert [p.name for p in (out / "report").iterdir()] == ["notes.txt"]
    assert "earlier report was removed" in (out / "build.log").read_text()
    build("lfw", out, **kw)  # the report again, then a README of the user's own
    (out / "README.md").write_text("# my notes\n")
    build("lfw", out, **{**kw, "report": False, "mode": "overwrite"})
    assert not (out / "DATA_CARD.md").exists() and not (out / "stats.json").exists()
    assert (out / "README.md").read_text() == "# my notes\n" and (out / "report" / "notes.txt").is_file()
    assert (out / "manifest.parquet").is_file()
