"""Audits of real data: FairFace crops with their labels, LFW folders and a real LFW build."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from maskgen.allocation import masked_count
from maskgen.audit import audit
from maskgen.audit.balance import stratified_mask_plan
from maskgen.audit.sources import join_labels, load_input
from maskgen.audit.stats import IPI_EDGES, IPI_LABELS, compute_stats
from maskgen.datasets.manifest import write_manifest

N_FAIRFACE = 300


@pytest.fixture(scope="module")
def fairface_subset(fairface_dir, tmp_path_factory) -> Path:
    """The first 300 FairFace crops, linked into a ``val`` folder like the original layout."""
    d = tmp_path_factory.mktemp("fairface") / "val"
    d.mkdir()
    for i in range(1, N_FAIRFACE + 1):
        (d / f"{i}.jpg").symlink_to(fairface_dir / "val" / f"{i}.jpg")
    return d


@pytest.fixture(scope="module")
def fairface_labels(fairface_dir) -> pd.DataFrame:
    lab = pd.read_csv(fairface_dir / "fairface_label_val.csv", dtype=str)
    return lab[lab["file"].isin([f"val/{i}.jpg" for i in range(1, N_FAIRFACE + 1)])]


@pytest.fixture(scope="module")
def fairface_scanned(fairface_subset, fairface_dir):
    inp = load_input(fairface_subset)
    return join_labels(inp, fairface_dir / "fairface_label_val.csv", join_on="path")


def test_fairface_group_counts_match_labels(fairface_scanned, fairface_labels):
    inp = copy.deepcopy(fairface_scanned)
    assert inp.labels_info["matched_images"] == N_FAIRFACE
    assert inp.labels_info["unmatched_images"] == 0
    stats = compute_stats(inp.table, source=inp.source())
    comp = stats["composition"]
    assert comp["rows"] == N_FAIRFACE and comp["images"] + comp["failed"] == N_FAIRFACE
    assert set(comp["failures_by_reason"]) <= {"no face"} or comp["failed"] == sum(
        comp["failures_by_reason"].values())
    for col in ("gender", "race", "age"):
        entry = stats["attributes"][col]
        expected = fairface_labels[col].value_counts().to_dict()
        attempted = {r["group"]: r["attempted"] for r in entry["failure_rate"]["groups"]}
        assert attempted == expected, col  # every labelled image counted in its group
        kept = {r["group"]: r["count"] for r in entry["balance"]["groups"] if r["count"]}
        failed = {r["group"]: r["failed"] for r in entry["failure_rate"]["groups"]}
        assert {g: kept.get(g, 0) + failed[g] for g in expected} == expected, col
    # the age bins keep their natural order
    ages = [r["group"] for r in stats["attributes"]["age"]["balance"]["groups"]]
    assert ages.index("3-9") < ages.index("10-19") < ages.index("more than 70")
    # skin tone measured on every image (landmarks or, for failures, the image centre)
    assert stats["numeric"]["ita"]["count"] == comp["images"]
    assert sum(stats["attribute_region"].values()) == N_FAIRFACE


def test_fairface_mask_ratio_per_group(fairface_scanned, tmp_path):
    """A manifest masked at 10% stratified by race reports 10% (up to rounding) per race."""
    df = copy.deepcopy(fairface_scanned).table
    ok = (df["status"] == "ok").to_numpy()
    df["masked"] = stratified_mask_plan(df["race"].tolist(), 0.1, seed=3, eligible=ok)
    df["mask_type"] = np.where(df["masked"], "surgical", None)
    keep = [c for c in df.columns if not c.startswith("_")]
    table = pa.Table.from_pandas(df[keep].drop(columns=["landmarks"]), preserve_index=False)
    mpath = write_manifest(table, tmp_path / "manifest.parquet")
    stats = audit(mpath, out=tmp_path / "report", compute_attributes=False)
    mr = stats["attributes"]["race"]["mask_ratio"]
    for r in mr["groups"]:
        sel = ok & (df["race"] == r["group"]).to_numpy()
        assert r["images"] == sel.sum()
        assert abs(r["masked"] - 0.1 * sel.sum()) <= 1
    assert stats["masks"]["masked"] == masked_count(int(ok.sum()), 0.1)
    assert not any("race" in w and "masked at a different rate" in w for w in stats["warnings"])
    md = (tmp_path / "report" / "report.md").read_text()
    assert "masked 95% CI" in md and "## Balance by attribute" in md


def _lfw_counts(lfw_dir: Path) -> dict[str, int]:
    out = {}
    for line in (lfw_dir / "lfw-names.txt").read_text().splitlines():
        name, n = line.split()
        out[name] = int(n)
    return out


def test_lfw_manifest_counts_and_attributes(lfw_dir, tmp_path):
    """An LFW manifest without attributes: identity counts match lfw-names.txt, and the audit
    computes skin tone and quality from the images."""
    counts = _lfw_counts(lfw_dir)
    names = sorted(counts)[:40]
    rows = []
    for name in names:
        for p in sorted((lfw_dir / name).glob("*.jpg")):
            rows.append({"key": p.stem.replace(".", "_"), "identity": name, "source": "lfw",
                         "path": str(p), "status": "ok"})
    df = pd.DataFrame(rows)
    df["masked"] = stratified_mask_plan(df["identity"].tolist(), 0.25, seed=0)
    mpath = write_manifest(pa.Table.from_pandas(df, preserve_index=False),
                           tmp_path / "manifest.parquet")
    people = tmp_path / "people.csv"  # per-identity labels, joined on identity
    team = {n: ("red" if i % 3 else "blue") for i, n in enumerate(names)}
    people.write_text("identity,team\n" + "".join(f"{n},{t}\n" for n, t in team.items()))
    stats = audit(mpath, out=None, labels=people, join_on="identity")
    got = {r["group"]: r["count"] for r in stats["attributes"]["team"]["balance"]["groups"]}
    assert got == {t: sum(counts[n] for n in names if team[n] == t) for t in ("blue", "red")}
    comp = stats["composition"]
    want = [counts[n] for n in names]
    assert comp["images"] == sum(want) and comp["identities"] == len(names)
    idx = np.searchsorted(np.asarray(IPI_EDGES[1:-1]), want, side="right")
    assert comp["images_per_identity"]["histogram"] == {
        lab: int((idx == i).sum()) for i, lab in enumerate(IPI_LABELS)}
    top = comp["images_per_identity"]["top"][0]
    assert top["images"] == max(want) and counts[top["identity"]] == max(want)
    assert stats["numeric"]["ita"]["count"] == sum(want)
    assert stats["attribute_region"] == {"center": sum(want)}
    assert "skin_tone" in stats["attributes"]
    assert stats["masks"]["per_identity"]["ratio"]["max"] <= 0.5 + 1e-9


@pytest.fixture(scope="module")
def lfw_build(lfw_dir, tmp_path_factory) -> Path:
    pipelines = pytest.importorskip("maskgen.pipelines")
    if not hasattr(pipelines, "build"):
        pytest.skip("build pipeline not available")
    out = tmp_path_factory.mktemp("lfw_build")
    pipelines.build("lfw", out, ratio=0.25, max_identities=12, workers=1, quiet=True)
    return out


@pytest.mark.slow
def test_real_lfw_build_report(lfw_build, lfw_dir):
    """The build's merge step wrote the report; its numbers agree with the manifest."""
    for name in ("report.html", "report.md", "stats.json", "DATA_CARD.md"):
        assert (lfw_build / name).is_file(), name
    stats = json.loads((lfw_build / "stats.json").read_text())
    info = json.loads((lfw_build / "dataset.json").read_text())
    man = pd.read_parquet(lfw_build / "manifest.parquet", columns=["identity", "status", "masked",
                                                                   "skin_tone"])
    comp = stats["composition"]
    assert comp["images"] == info["num_ok"] and comp["failed"] == info["num_failed"]
    # every image of a kept identity is either kept or failed, as lfw-names.txt counts them
    counts = _lfw_counts(lfw_dir)
    kept_ids = man.loc[man["status"] != "dropped", "identity"].unique()
    assert comp["images"] + comp["failed"] == sum(counts[i] for i in kept_ids)
    ok = man[man["status"] == "ok"]
    assert stats["masks"]["masked"] == int(ok["masked"].sum())
    tone = stats["attributes"]["skin_tone"]["mask_ratio"]
    for r in tone["groups"]:
        sel = ok["skin_tone"].fillna("(unknown)") == r["group"]
        assert r["images"] == sel.sum() and r["masked"] == int(ok.loc[sel, "masked"].sum())
    card = (lfw_build / "DATA_CARD.md").read_text()
    assert "Huang" in card and "07-49" in card and "Learning to Align from Scratch" in card
    assert "extended|lfw" in card and str(lfw_build) not in card


def test_folder_scan_counts_bad_inputs(astronaut, tmp_path):
    """Corrupt, truncated, empty, grayscale, 16-bit and faceless images each get a row with
    their reason; the scan never stops and the good faces are measured."""
    import cv2

    root = tmp_path / "mixed"
    (root / "alice").mkdir(parents=True)
    (root / "bob").mkdir()
    bgr = np.ascontiguousarray(astronaut[:, :, ::-1])
    cv2.imwrite(str(root / "alice" / "good.jpg"), bgr)
    cv2.imwrite(str(root / "alice" / "gray.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(root / "alice" / "deep.png"), bgr.astype(np.uint16) * 257)
    data = (root / "alice" / "good.jpg").read_bytes()
    (root / "bob" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "bob" / "garbage.jpg").write_bytes(b"not an image at all")
    (root / "bob" / "empty.png").write_bytes(b"")
    cv2.imwrite(str(root / "bob" / "noise.png"),
                np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8))
    stats = audit(root, out=tmp_path / "out")
    comp = stats["composition"]
    assert comp["rows"] == 7 and comp["images"] + comp["failed"] == 7
    assert comp["images"] == 3  # colour, grayscale and 16-bit versions of the same face
    assert sum(comp["failures_by_reason"].values()) == 4
    assert comp["identities"] == 1 and comp["identities_in_source"] == 2
    assert stats["numeric"]["ita"]["count"] == 3
    assert (tmp_path / "out" / "report.html").is_file()


@pytest.mark.slow
def test_folder_scan_in_two_workers_matches_one(fairface_scanned, fairface_subset):
    """Scanning in two worker processes gives the same rows, in the same order, as one."""
    from maskgen.audit.sources import scan_folder

    files = [fairface_subset / f"{i}.jpg" for i in range(1, 71)]
    par = scan_folder(fairface_subset, workers=2, paths=files)
    seq = fairface_scanned.table.set_index("key", drop=False).loc[[f.stem for f in files]]
    cols = ["key", "status", "reason", "ita", "skin_tone", "yaw", "sharpness", "brightness"]
    pd.testing.assert_frame_equal(par[cols].reset_index(drop=True),
                                  seq[cols].reset_index(drop=True), check_dtype=False)
