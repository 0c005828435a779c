"""Report, stats and dataset card from a manifest: numbers, determinism, formats, browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from click.testing import CliRunner

from maskgen.audit import audit, write_build_report
from maskgen.audit.cli import audit as audit_cmd
from maskgen.audit.cli import card as card_cmd
from maskgen.datasets.manifest import write_manifest

N = 1200


def synthetic_manifest(n: int = N, seed: int = 0) -> tuple[pa.Table, dict]:
    """A manifest with a known per-group mask ratio: group 'B' is masked 3x more often."""
    rng = np.random.default_rng(seed)
    ident = [f"person_{i % 150:03d}" for i in range(n)]
    grp = np.array(["A", "B", "C"])[rng.choice(3, n, p=[0.6, 0.3, 0.1])]
    status = np.where(rng.random(n) < 0.04, "failed", "ok").astype(object)
    status[:20] = "dropped"
    masked = (rng.random(n) < np.where(grp == "B", 0.3, 0.1)) & (status == "ok")
    reason = np.where(status == "failed", "no face", None).astype(object)
    reason[:20] = "min_images"
    cols = {
        "key": [f"{i:05d}" for i in range(n)],
        "identity": ident,
        "label": np.where(status == "ok", [i % 150 for i in range(n)], -1).astype(np.int32),
        "source": ["folder"] * n,
        "path": [f"{p}/{p}_{i:04d}.jpg" for i, p in enumerate(ident)],
        "status": status.tolist(),
        "reason": reason.tolist(),
        "masked": masked.tolist(),
        "mask_type": np.where(masked, rng.choice(["surgical", "n95", "cloth"], n), None).tolist(),
        "mask_color": np.where(masked, rng.choice(["blue", "white", "black"], n), None).tolist(),
        "mask_texture": np.where(masked, rng.choice(["plain", "check"], n), None).tolist(),
        "wear": np.where(masked, rng.choice(["correct", "nose_out", "chin"], n), None).tolist(),
        "fit_score": np.where(masked, rng.random(n), np.nan).astype(np.float32),
        "ita": rng.normal(35, 20, n).astype(np.float32),
        "yaw": rng.normal(0, 15, n).astype(np.float32),
        "pitch": rng.normal(0, 6, n).astype(np.float32),
        "roll": rng.normal(0, 5, n).astype(np.float32),
        "sharpness": rng.gamma(2.0, 60.0, n).astype(np.float32),
        "brightness": rng.normal(120, 25, n).astype(np.float32),
        "face_size": rng.normal(42, 8, n).astype(np.float32),
        "width": np.full(n, 250, np.int32),
        "height": np.full(n, 250, np.int32),
        "group": grp.tolist(),
    }
    table = pa.table(cols)
    expect = {"group": grp, "status": status, "masked": masked}
    return table, expect


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory) -> Path:
    """A build folder as the pipeline leaves it (manifest, resolved config, dataset.json)."""
    d = tmp_path_factory.mktemp("build")
    table, _ = synthetic_manifest()
    write_manifest(table, d / "manifest.parquet")
    cfg = {"source": str(d.parent / "faces"), "out": str(d), "ratio": 0.1, "seed": 0,
           "mask_types": ["surgical", "n95", "cloth"], "twins": False}
    (d / "build.yaml").write_text(yaml.safe_dump(cfg))
    (d / "dataset.json").write_text(json.dumps({"num_samples": 1000, "num_classes": 150}))
    (d / "shards").mkdir()
    with tarfile.open(d / "shards" / "train-000000.tar", "w"):
        pass  # the card points configs: at shards only when there are some
    return d


@pytest.fixture(scope="module")
def report_dir(build_dir) -> Path:
    write_build_report(build_dir)
    return build_dir


def test_group_counts_and_mask_ratio_per_group(build_dir, tmp_path):
    _, exp = synthetic_manifest()
    stats = audit(build_dir / "manifest.parquet", out=None, compute_attributes=False)
    ok = exp["status"] == "ok"
    comp = stats["composition"]
    assert comp["images"] == ok.sum() and comp["dropped"] == 20
    assert comp["failed"] == (exp["status"] == "failed").sum()
    assert comp["drops_by_reason"] == {"min_images": 20}
    g = stats["attributes"]["group"]
    counts = {r["group"]: r["count"] for r in g["balance"]["groups"]}
    assert counts == {k: int((ok & (exp["group"] == k)).sum()) for k in "ABC"}
    ratios = {r["group"]: r["ratio"] for r in g["mask_ratio"]["groups"]}
    for k in "ABC":
        sel = ok & (exp["group"] == k)
        assert ratios[k] == pytest.approx(exp["masked"][sel].mean(), abs=1e-6)
    assert stats["masks"]["ratio"] == pytest.approx(exp["masked"][ok].mean(), abs=1e-6)
    assert any("'B' is masked at a different rate" in w for w in stats["warnings"])
    attempted = {r["group"]: r["attempted"] for r in g["failure_rate"]["groups"]}
    assert attempted == {k: int(((exp["status"] != "dropped") & (exp["group"] == k)).sum())
                         for k in "ABC"}
    assert "skin_tone" in stats["attributes"] and "yaw_bin" in stats["attributes"]
    assert sum(stats["masks"]["mask_type"].values()) == exp["masked"].sum()


def test_build_report_files(report_dir):
    for name in ("report.html", "report.md", "stats.json", "DATA_CARD.md"):
        assert (report_dir / name).is_file(), name
    md = (report_dir / "report.md").read_text()
    figs = re.findall(r"\]\((report/[^)]+\.png)\)", md)
    assert figs and all((report_dir / f).is_file() for f in figs)
    assert "report/group_group.png" in figs and "report/masks.png" in figs
    html = (report_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(figs)
    assert "<script" not in html and "http://" not in html and "https://" not in html
    for f in figs:
        assert (report_dir / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = json.loads((report_dir / "stats.json").read_text())
    assert stats["schema"].startswith("maskgen.audit.stats/")
    assert stats["source"] == {"kind": "build", "name": report_dir.name}


def test_a_users_readme_is_never_replaced(report_dir, tmp_path):
    """README.md is the card's copy only while it is absent or still the last card maskgen
    wrote: a README.md of the user's own survives every later report, byte for byte."""
    import shutil

    out = tmp_path / "b"
    shutil.copytree(report_dir, out)
    assert (out / "README.md").read_bytes() == (out / "DATA_CARD.md").read_bytes()
    write_build_report(out)  # still maskgen's copy: rewritten with the card
    assert (out / "README.md").read_bytes() == (out / "DATA_CARD.md").read_bytes()
    (out / "README.md").write_text("# my notes on this build\n")
    write_build_report(out)
    assert (out / "README.md").read_text() == "# my notes on this build\n"
    assert (out / "DATA_CARD.md").read_text().startswith("---\n")
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_data_card_front_matter_and_sections(report_dir):
    text = (report_dir / "DATA_CARD.md").read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    for k in ("license", "task_categories", "size_categories", "source_datasets",
              "annotations_creators", "pretty_name", "configs"):
        assert k in front, k
    assert front["size_categories"] == ["1K<n<10K"]
    assert front["configs"][0]["data_files"][0]["path"] == "shards/*.tar"
    # the declared features of the samples, and the card as the folder's README.md
    feats = {f["name"]: f for f in front["dataset_info"]["features"]}
    assert feats["jpg"]["dtype"] == "image" and "orig.jpg" not in feats  # no twins
    assert {f["name"] for f in feats["json"]["struct"]} >= {"mask", "landmarks", "skin_tone"}
    assert (report_dir / "README.md").read_text() == text
    for h in ("## Motivation", "## Composition", "## Collection and preprocessing", "## Uses",
              "### Out-of-scope uses", "## Bias, risks and limitations", "## Maintenance",
              "## Citation"):
        assert h in text, h
    assert "ratio: 0.1" in text and "mask_types:" in text  # the recipe from build.yaml
    assert "masked at a different rate" in text  # measured imbalances
    assert str(report_dir) not in text and "<out>" in text  # machine paths replaced


def test_outputs_are_byte_stable(report_dir, tmp_path):
    """A second audit of the same build rewrites identical bytes (no timestamps, fixed order)."""
    a = tmp_path / "a"
    audit(report_dir, out=a, compute_attributes=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*")
                   if p.is_file() and not p.name.startswith(".maskgen-output"))  # the claim
    assert len(files) > 8
    for f in files:
        assert (a / f).read_bytes() == (report_dir / f).read_bytes(), f


def test_cli_labels_target_and_card(build_dir, tmp_path):
    labels = tmp_path / "labels.csv"
    table, exp = synthetic_manifest()
    keys = table.column("key").to_pylist()
    sex = np.where(np.arange(N) % 4 == 0, "F", "M")
    rows = ["key,sex"] + [f"{k},{s}" for k, s in zip(keys, sex)][: N - 100]
    labels.write_text("\n".join(rows) + "\n")
    target = json.dumps({"sex": {"F": 0.5, "M": 0.5}})
    out = tmp_path / "cli"
    res = CliRunner().invoke(audit_cmd, [str(build_dir), "--labels", str(labels), "--target",
                                         target, "-o", str(out), "--no-compute-attributes"])
    assert res.exit_code == 0, res.output
    assert "sex: 2 groups" in res.output
    stats = json.loads((out / "stats.json").read_text())
    bal = stats["attributes"]["sex"]["balance"]
    ok = exp["status"] == "ok"
    labelled = np.arange(N) < N - 100
    assert {r["group"]: r["count"] for r in bal["groups"]} == {
        "F": int((ok & labelled & (sex == "F")).sum()),
        "M": int((ok & labelled & (sex == "M")).sum()),
        "(unknown)": int((ok & ~labelled).sum())}
    assert stats["source"]["labels"]["matched_images"] == N - 100
    assert any("sex = 'F' is under-represented" in w for w in stats["warnings"])
    # errors are clear, not tracebacks
    res = CliRunner().invoke(audit_cmd, [str(build_dir), "--target", "{bad", "-o", str(out)])
    assert res.exit_code != 0 and "Error" in res.output
    res = CliRunner().invoke(card_cmd, [str(tmp_path), "-o", str(out)])
    assert res.exit_code != 0 and "not a build folder" in res.output
    res = CliRunner().invoke(card_cmd, [str(build_dir), "-o", str(tmp_path / "card"),
                                        "--reproduce", "make card"])
    assert res.exit_code == 0, res.output
    assert "Reproduce: `make card`" in (tmp_path / "card" / "DATA_CARD.md").read_text()


# ------------------------------------------------------------------ headless browser
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push(String(e.message || (e.target && e.target.src || 'resource error')));
}, true);
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({
    images: imgs.map(function (i) { return {name: i.dataset.name, complete: i.complete,
                                            w: i.naturalWidth, h: i.naturalHeight}; }),
    errors: window.__errors});
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def run_chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    exe = chromium()
    env = dict(os.environ, HOME=str(tmp))
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.slow
def test_html_renders_in_headless_chromium(report_dir, tmp_path):
    if chromium() is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    html = (report_dir / "report.html").read_text()
    n_figs = html.count("<img ")
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("<head>", "<head>" + PROBE, 1))
    res = run_chromium(["--virtual-time-budget=5000", "--dump-dom", probe.as_uri()], tmp_path)
    m = re.search(r'<pre id="probe">(.*?)</pre>', res.stdout, re.S)
    assert m, res.stderr[-2000:]
    import html as htmllib

    probe_data = json.loads(htmllib.unescape(m.group(1)))
    assert probe_data["errors"] == []
    assert len(probe_data["images"]) == n_figs > 5
    for img in probe_data["images"]:
        assert img["complete"] and img["w"] > 90 and img["h"] > 90, img

    shot = tmp_path / "shot.png"
    res = run_chromium([f"--screenshot={shot}", "--window-size=1200,3000",
                        (report_dir / "report.html").as_uri()], tmp_path)
    assert shot.is_file(), res.stderr[-2000:]
    import cv2

    img = cv2.imread(str(shot))
    assert img.shape[:2] == (3000, 1200)
    assert img.std() > 20  # not blank
    # the plot colours (bar blue / orange) are on the page, as plots and not just text
    b, g, r = (img[..., i].astype(int) for i in range(3))
    blue = (abs(b - 0xB0) < 12) & (abs(g - 0x72) < 12) & (abs(r - 0x4C) < 12)
    orange = (abs(b - 0x52) < 12) & (abs(g - 0x84) < 12) & (abs(r - 0xDD) < 12)
    assert blue.sum() > 2000 and orange.sum() > 2000


def test_reference_card_is_consistent():
    """The committed reference card: valid front matter, numbers equal to its stats.json,
    every figure of report.md present, under 2 MB in all."""
    ref = Path(__file__).resolve().parents[1] / "data_cards" / "lfw-r0.1"
    if not (ref / "DATA_CARD.md").is_file():
        pytest.skip("reference card not generated (sh data_cards/regenerate.sh)")
    text = (ref / "DATA_CARD.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["source_datasets"] == ["extended|lfw"] and front["size_categories"]
    stats = json.loads((ref / "stats.json").read_text())
    assert f"{stats['composition']['images']:,} images" in text
    assert f"{stats['masks']['masked']:,} of them" in text
    assert 0.099 <= stats["masks"]["ratio"] <= 0.101
    figs = re.findall(r"\]\((report/[^)]+\.png)\)", (ref / "report.md").read_text())
    assert figs and all((ref / f).is_file() for f in figs)
    assert sum(p.stat().st_size for p in ref.rglob("*") if p.is_file()) < 2_000_000
    assert all(p.stat().st_size < 700_000 for p in ref.rglob("*") if p.is_file())
    assert "Reproduce: `sh data_cards/regenerate.sh`" in text
    # the committed report holds no copy of a source image, and says so
    assert not list(ref.rglob("*.jpg")) and "data:image/jpeg" not in (ref / "report.html").read_text()
    assert "without sample thumbnails" in text
