"""What the audit writes: true cards, escaped names, thumbnails from real shards, slices,
per-image tables, figures, progress, pixels only in workers, one-line output errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from maskgen.audit import audit
from maskgen.audit.cli import audit as audit_cmd
from maskgen.audit.cli import card as card_cmd
from maskgen.datasets.manifest import write_manifest
from maskgen.datasets.tarwriter import write_tar

HOSTILE = ['<script>alert("id")</script>', '"><img src=x onerror=alert(1)>',
           "=HYPERLINK(\"http://x\")", "$x^2$ [link](javascript:alert(1))", "a|b\nc*d*_e_"]


def _jpeg(img: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def face_jpegs(astronaut) -> list[bytes]:
    """Real face crops (112x112) at different offsets and brightness."""
    import cv2

    out = []
    for i in range(6):
        crop = astronaut[20 + 8 * i:260 + 8 * i, 120:360]
        crop = cv2.convertScaleAbs(crop, alpha=0.7 + 0.1 * i)
        out.append(_jpeg(cv2.resize(crop, (112, 112), interpolation=cv2.INTER_AREA)))
    return out


@pytest.fixture(scope="module")
def hostile_build(tmp_path_factory, face_jpegs) -> Path:
    """A build folder with a real shard holding the masked samples' JPEGs, source images for
    the failed rows, and identity / label / mask names that try markup and formulas."""
    d = tmp_path_factory.mktemp("hostile") / "casia-no-lfw"
    src = d.parent / "casia"
    src.mkdir()
    rng = np.random.default_rng(1)
    n = 240
    ident = [HOSTILE[i % len(HOSTILE)] + f" {i % 12}" for i in range(n)]
    status = np.array(["ok"] * n, dtype=object)
    status[rng.choice(n, 30, replace=False)] = "failed"
    group = np.where(np.arange(n) % 3 == 0, HOSTILE[0], "B")
    sex = np.where(np.arange(n) % 2 == 0, "F", "M")
    masked = (np.arange(n) % 2 == 1) & (status == "ok")
    mtype = np.where(masked, np.where(group == "B", "n95", "surgical"), None)
    paths = []
    for i in range(n):
        p = src / f"{i:04d}.jpg"
        if status[i] == "failed":
            p.write_bytes(face_jpegs[i % len(face_jpegs)])
        paths.append(str(p))
    members = [(f"{i:05d}.jpg", face_jpegs[i % len(face_jpegs)]) for i in range(n) if masked[i]]
    (d / "shards").mkdir(parents=True)
    write_tar(d / "shards" / "train-000000.tar", members)
    cols = {
        "key": [f"{i:05d}" for i in range(n)], "identity": ident,
        "label": np.where(status == "ok", np.arange(n) % 12, -1).astype(np.int32),
        "source": ["folder"] * n, "path": paths, "status": status.tolist(),
        "reason": np.where(status == "failed", "no face", None).tolist(),
        "shard": np.where(status == "ok", "train-000000.tar", None).tolist(),
        "masked": masked.tolist(), "mask_type": mtype.tolist(),
        "wear": np.where(masked, "correct", None).tolist(),
        "fit_score": np.where(masked, 1.0, np.nan).astype(np.float32),
        "ita": rng.normal(30, 20, n).astype(np.float32),
        "brightness": rng.normal(120, 30, n).astype(np.float32),
        "sharpness": rng.gamma(2.0, 40.0, n).astype(np.float32),
        "group": group.tolist(), "sex": sex.tolist(),
    }
    cols["ita"][status == "failed"] = np.nan
    write_manifest(pa.table(cols), d / "manifest.parquet")
    (d / "build.yaml").write_text(yaml.safe_dump({"source": str(src), "ratio": 0.5, "seed": 0}))
    (d / "dataset.json").write_text(json.dumps({"num_samples": int((status == "ok").sum()),
                                                "num_classes": 12}))
    return d


@pytest.fixture(scope="module")
def hostile_report(hostile_build, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile-report")
    audit(hostile_build, out=out, compute_attributes=False, workers=2)
    return out


# ------------------------------------------------------------------ the card
def test_licence_never_by_substring(hostile_report):
    """A build of /data/casia into casia-no-lfw gets no licence of LFW's: unknown, and the
    card says how to set it."""
    text = (hostile_report / "DATA_CARD.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["license"] == "unknown"
    assert "Labeled Faces" not in text and "LFWTech" not in text
    assert "--license ID" in text


def test_license_option_and_unknown_hint(hostile_build, tmp_path):
    out = tmp_path / "card"
    res = CliRunner().invoke(card_cmd, [str(hostile_build), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "licence: unknown" in res.output and "--license" in res.output
    res = CliRunner().invoke(card_cmd, [str(hostile_build), "-o", str(out), "--license",
                                        "CC-BY-NC-4.0"])
    assert res.exit_code == 0, res.output
    assert "licence: unknown" not in res.output
    front = yaml.safe_load((out / "DATA_CARD.md").read_text().split("---\n")[1])
    assert front["license"] == "cc-by-nc-4.0"
    res = CliRunner().invoke(card_cmd, [str(hostile_build), "-o", str(out), "--dataset",
                                        "casia"])
    assert res.exit_code != 0 and "not a known dataset" in res.output
    res = CliRunner().invoke(card_cmd, [str(hostile_build), "-o", str(out), "--dataset",
                                        "CASIA-WebFace"])
    assert res.exit_code == 0, res.output
    text = (out / "DATA_CARD.md").read_text()
    assert "Learning Face Representation from Scratch" in text  # the catalog's citation
    assert yaml.safe_load(text.split("---\n")[1])["license"] == "unknown"  # as the catalog says


def test_folder_audit_card_is_true(fairface_dir, tmp_path):
    """A folder of FairFace crops: the card names FairFace with CC BY 4.0, and claims no
    masks, shards, identities, recipe or configs that do not exist."""
    val = tmp_path / "fairface-val" / "val"
    val.mkdir(parents=True)
    for i in range(1, 41):
        (val / f"{i}.jpg").symlink_to(fairface_dir / "val" / f"{i}.jpg")
    out = tmp_path / "out"
    stats = audit(val, labels=fairface_dir / "fairface_label_val.csv", join_on="path", out=out,
                  workers=2)
    text = (out / "DATA_CARD.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["license"] == "cc-by-4.0" and front["pretty_name"] == "FairFace"
    assert "configs" not in front and "Masked" not in front["pretty_name"]
    assert "synthetic-masks" not in front["tags"] and "webdataset" not in front["tags"]
    for wrong in ("Mask recipe", "WebDataset tar shards", "shards/*.tar", "mask ratio",
                  "of 40 identities", "40 identities"):
        assert wrong not in text, wrong
    assert "no identity labels" in text and "karkkainenjoo2021fairface" in text
    assert stats["source"]["dataset"] == {"name": "fairface", "license": "cc-by-4.0"}
    # the per-image table: one row per image, types kept, labels joined
    tab = pq.read_table(out / "images.parquet")
    assert tab.num_rows == 40 and tab.schema.field("width").type == pa.int32()
    df = tab.to_pandas()
    assert set(df["status"]) <= {"ok", "failed"} and df["race"].notna().all()
    assert (df.loc[df["status"] == "ok", "ita"].notna()).all()
    csv = pd.read_csv(out / "images.csv", dtype=str, keep_default_na=False)
    assert list(csv.columns) == tab.column_names and len(csv) == 40
    assert not any(os.path.isabs(p) for p in df["path"])
    # thumbnails: failed images per race label, kept faces per skin-tone bin
    thumbs = sorted(p.name for p in (out / "report").glob("thumbs_*.jpg"))
    assert any(n.startswith("thumbs_tone_") for n in thumbs)
    failed_races = set(df.loc[df["status"] == "failed", "race"])
    assert len([n for n in thumbs if n.startswith("thumbs_failed_")]) == len(failed_races)
    assert "race = " in (out / "report.md").read_text()


# ------------------------------------------------------------------ escaping
def test_names_escaped_in_every_format(hostile_report):
    html = (hostile_report / "report.html").read_text()
    assert "<script" not in html and "<img src=x" not in html
    assert "&lt;script&gt;" in html
    md = (hostile_report / "report.md").read_text()
    assert "<script" not in md and "<img" not in md
    link = re.compile(r"(?<!\\)\]\(javascript:")  # a link, unless its bracket is escaped
    assert not link.search(md)
    card = (hostile_report / "DATA_CARD.md").read_text()
    assert "<script" not in card and not link.search(card)
    yaml.safe_load(card.split("---\n")[1])  # front matter still parses
    stats = json.loads((hostile_report / "stats.json").read_text())  # JSON escapes itself
    groups = {g["group"] for g in stats["attributes"]["group"]["balance"]["groups"]}
    assert HOSTILE[0] in groups  # the name survives as data
    # every table row of the markdown report has as many cells as its header
    for block in md.split("\n\n"):
        lines = block.splitlines()
        if lines and lines[0].startswith("| "):
            n = len(re.split(r"(?<!\\)\|", lines[0]))
            assert all(len(re.split(r"(?<!\\)\|", ln)) == n for ln in lines), block[:200]


def test_csv_cells_cannot_become_formulas(tmp_path):
    from maskgen.audit.table import to_csv

    t = pa.table({"identity": ["=1+2", "+cmd", "@x", "-2", "plain"], "v": [1.0, None, 3.5, 4.0,
                                                                            5.0]})
    text = to_csv(t).decode()
    rows = text.splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["'=1+2", "'+cmd", "'@x", "'-2", "plain"]
    assert rows[1].endswith(",")  # a null is an empty cell


# ------------------------------------------------------------------ thumbnails
def test_thumbnails_from_shards_and_failed_sources(hostile_report):
    thumbs = sorted((hostile_report / "report").glob("thumbs_*.jpg"))
    masked = [p for p in thumbs if "masked" in p.name]
    failed = [p for p in thumbs if "failed" in p.name]
    assert len(masked) == 2  # n95 / correct and surgical / correct
    assert len(failed) == 2  # per group: the hostile one and "B"
    import cv2

    for p in thumbs:
        img = cv2.imread(str(p))
        assert img.shape[0] == 96 and img.shape[1] >= 96 and img.std() > 10, p.name
    html = (hostile_report / "report.html").read_text()
    assert html.count("data:image/jpeg;base64,") == len(thumbs)
    md = (hostile_report / "report.md").read_text()
    assert all(f"report/{p.name}" in md for p in thumbs)


def test_no_thumbnails_means_no_image_copies(hostile_build, tmp_path):
    out = tmp_path / "card"
    res = CliRunner().invoke(card_cmd, [str(hostile_build), "-o", str(out), "--no-thumbnails"])
    assert res.exit_code == 0, res.output
    assert not list(out.rglob("*.jpg"))
    assert "data:image/jpeg" not in (out / "report.html").read_text()
    assert "left out of this report" in (out / "report.md").read_text()
    assert "without sample thumbnails" in (out / "DATA_CARD.md").read_text()


def test_shard_thumbnails_read_only_regular_members(face_jpegs, tmp_path):
    """Thumbnails read a build's samples as the WebDataset source reads them: a link member,
    a member cut short by a truncated shard or a shard that is a FIFO give a crossed tile or
    no strip, never a read outside the shard or a hang."""
    import io
    import tarfile

    from maskgen.audit.thumbnails import Strip, render_strips

    shards = tmp_path / "shards"
    shards.mkdir()
    good = shards / "train-000000.tar"
    with tarfile.open(good, "w") as tf:
        for name, data in (("a.jpg", face_jpegs[0]), ("b.jpg", face_jpegs[1])):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        link = tarfile.TarInfo("c.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    cut = shards / "train-000001.tar"
    cut.write_bytes(good.read_bytes()[:512 + len(face_jpegs[0]) // 2])  # a.jpg cut short
    fifo = shards / "train-000002.tar"
    os.mkfifo(fifo)

    def strip(items):
        return Strip("thumbs_x.jpg", "masked", "x", tuple(("shard", it) for it in items), 1)

    import cv2

    out = render_strips([
        strip([(str(good), "a.jpg"), (str(good), "c.jpg"), (str(good), "zz.jpg")]),
        strip([(str(cut), "a.jpg")]),
        strip([(str(fifo), "a.jpg")]),
    ])
    img = cv2.imdecode(np.frombuffer(out[0], np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (96, 3 * 96 + 2 * 2, 3)
    tiles = [img[:, i * 98:i * 98 + 96] for i in range(3)]
    assert tiles[0].std() > 10  # the face
    assert tiles[1].std() < tiles[0].std() and tiles[2].std() < tiles[0].std()  # crossed
    assert out[1] == b"" and out[2] == b""  # nothing readable: no strip


def test_report_never_decodes_in_the_main_process(hostile_build, tmp_path, monkeypatch):
    """Decoders poisoned in the main process: the audit (attributes of failed images,
    thumbnails) still completes, because pixels are only touched in worker processes."""
    import maskgen.masks.imageio as io

    def boom(*a, **k):
        raise AssertionError("decoded in the main process")

    monkeypatch.setattr(io, "decode_image", boom)
    monkeypatch.setattr(io, "load_image", boom)
    stats = audit(hostile_build, out=tmp_path / "r", compute_attributes=True)
    assert stats["composition"]["rows"] == 240
    assert list((tmp_path / "r" / "report").glob("thumbs_masked_*.jpg"))


# ------------------------------------------------------------------ slices
def test_intersections_and_mask_mix_per_group(hostile_report, hostile_build):
    stats = json.loads((hostile_report / "stats.json").read_text())
    man = pd.read_parquet(hostile_build / "manifest.parquet")
    ok = man[man["status"] == "ok"]
    x = stats["intersections"]["group × sex"]
    for i, g in enumerate(x["rows"]):
        for j, s in enumerate(x["cols"]):
            assert x["count"][i][j] == int(((ok["group"] == g) & (ok["sex"] == s)).sum())
    assert sum(map(sum, x["count"])) == len(ok)
    # the mask type follows the group in this build (n95 for B, surgical for the other)
    mix = stats["mask_mix_by_group"]["group"]["mask_type"]
    assert mix["chi2_p"] < 1e-6
    assert any("mask type depends on group" in w for w in stats["warnings"])
    assert stats["masks"]["fit_score_constant"] is True
    assert "constant score carries no information" in (hostile_report / "report.md").read_text()


def test_skin_tone_check_tables(hostile_report):
    chk = json.loads((hostile_report / "stats.json").read_text())["skin_tone_check"]
    assert chk["measured"] > 0 and "spearman_ita_brightness" in chk
    by = chk["by_label"]["sex"]
    assert sum(map(sum, by["counts"])) == chk["measured"]
    assert sum(map(sum, chk["by_brightness"]["counts"])) == chk["measured"]
    for row in by["share"]:
        assert sum(x for x in row if x is not None) == pytest.approx(1.0, abs=1e-5)


def test_report_says_how_far_ita_can_be_trusted(hostile_report):
    """The trust statement, with this dataset's own figures, in both report formats."""
    for name in ("report.md", "report.html"):
        text = (hostile_report / name).read_text()
        assert "How far the skin-tone bars can be trusted" in text, name
        assert "Spearman correlation of ITA with face brightness in this dataset" in text, name


def test_audit_imports_no_pipeline():
    """The card and the audit describe data; they load neither the build nor its mask mix."""
    code = ("import sys, maskgen.audit, maskgen.audit.card, maskgen.audit.cli; "
            "bad = [m for m in sys.modules if m.startswith(('maskgen.pipelines', 'ray'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ figures
def test_figures_dpi_fonts_and_no_clipped_labels(hostile_build, monkeypatch):
    """Every figure at >= 150 dpi, tick labels of at least 7 pt (8.5 pt by default; the
    vertical labels of more than 8 groups are set at 7 pt to fit), and every label inside
    the canvas (single-panel charts used to clip their y labels)."""
    from PIL import Image

    from maskgen.audit import figures
    from maskgen.audit.sources import load_input
    from maskgen.audit.stats import compute_stats

    inp = load_input(hostile_build, compute_attributes=False, fill_failed=False)
    stats = compute_stats(inp.table)
    seen = []
    real_png = figures._png

    def check(fig):
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        W, H = fig.canvas.get_width_height()
        for ax in fig.axes:
            labs = []
            for axis, (lo, hi) in ((ax.yaxis, ax.get_ylim()), (ax.xaxis, ax.get_xlim())):
                lo, hi = min(lo, hi), max(lo, hi)
                labs += [lab for loc, lab in zip(axis.get_ticklocs(), axis.get_ticklabels())
                         if lo - 1e-9 <= loc <= hi + 1e-9]  # ticks drawn, not beyond limits
            for lab in labs:
                if not lab.get_text() or not lab.get_visible():
                    continue
                bb = lab.get_window_extent(r)
                assert bb.x0 >= -1 and bb.y0 >= -1 and bb.x1 <= W + 1 and bb.y1 <= H + 1, \
                    lab.get_text()
                assert lab.get_fontsize() >= 7
        png = real_png(fig)
        seen.append(png)
        return png

    monkeypatch.setattr(figures, "_png", check)
    out = figures.all_figures(stats)
    assert len(seen) == len(out) >= 8
    import io as _io

    for name, png in out.items():
        dpi = Image.open(_io.BytesIO(png)).info.get("dpi", (0, 0))
        assert round(dpi[0]) >= 150, name


def test_figures_in_two_processes_are_the_same_bytes(hostile_build):
    """With a helper process the charts are shared between two processes; the bytes are those
    of the charts drawn in one, and a helper that dies leaves its charts to this process."""
    from maskgen.audit import figures
    from maskgen.audit.sources import load_input
    from maskgen.audit.stats import compute_stats
    from maskgen.helper import Helper

    stats = compute_stats(load_input(hostile_build, compute_attributes=False, fill_failed=False).table)
    alone = figures.all_figures(stats)
    with Helper(preload=("maskgen.audit.figures",)) as h:
        shared = figures.all_figures(stats, h)
        assert h.alive
    assert list(shared) == list(alone) and shared == alone
    dead = Helper()
    dead.proc.kill()  # gone before its first chart
    assert figures.all_figures(stats, dead) == alone


# ------------------------------------------------------------------ progress, errors
def test_progress_lines(astronaut, tmp_path, capsys):
    import cv2

    from maskgen.audit.sources import scan_folder

    d = tmp_path / "faces"
    d.mkdir()
    for i in range(6):
        cv2.imwrite(str(d / f"{i}.jpg"), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    scan_folder(d, progress=True)
    err = capsys.readouterr().err
    assert "[audit] landmarks and attributes of 6 images" in err
    assert re.search(r"\[audit\] 6/6 images \(100%\) \| [\d.]+ images/s \| ETA 0:00:00", err)
    assert re.search(r"\[audit\] done: 6 images in ", err)
    scan_folder(d, progress=False)
    assert capsys.readouterr().err == ""


def test_unwritable_output_is_one_line(hostile_build, tmp_path):
    """An output that cannot be written ends in one 'Error:' line, no traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker / "sub",):
        res = CliRunner().invoke(audit_cmd, [str(hostile_build), "-o", str(out),
                                             "--no-compute-attributes"])
        assert res.exit_code != 0
        assert res.output.startswith("Error: ") and res.output.count("\n") == 1, res.output
        assert "Traceback" not in res.output
    # a user's non-empty folder is refused, untouched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    res = CliRunner().invoke(audit_cmd, [str(hostile_build), "-o", str(mine),
                                         "--no-compute-attributes"])
    assert res.exit_code != 0 and "not made by maskgen" in res.output
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_read_only_output_folder(hostile_build, tmp_path):
    """A read-only folder (a read-only tmpfs where the test may mount one, else a folder
    without write permission when not running as root)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = False
    if os.geteuid() == 0:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                           capture_output=True)
        mounted = r.returncode == 0
        if not mounted:
            pytest.skip("running as root without permission to mount a read-only tmpfs")
    else:
        ro.chmod(0o555)
    try:
        res = CliRunner().invoke(audit_cmd, [str(hostile_build), "-o", str(ro / "out"),
                                             "--no-compute-attributes"])
        assert res.exit_code != 0
        assert res.output.startswith("Error: cannot write") and res.output.count("\n") == 1
    finally:
        if mounted:
            subprocess.run(["umount", str(ro)], capture_output=True)
        else:
            ro.chmod(0o755)


def test_worker_crash_costs_only_its_item():
    from maskgen.audit.workers import map_in_workers

    res = map_in_workers(_maybe_die, [[1, 2], [3, 4]], workers=2,
                         on_crash=lambda item, why: ("crashed", item))
    assert res == [[1, 2], [("crashed", 3), 4]]


def _maybe_die(items):
    if 3 in items:
        os._exit(3)  # a worker killed mid-task (as by the OOM killer)
    return list(items)


@pytest.mark.slow
def test_thumbnails_and_plots_render_in_headless_chromium(hostile_report, tmp_path):
    """The report opens in a real browser: every plot and thumbnail strip decodes at its
    size, no hostile name ran as script, and the page is not blank."""
    from test_audit_report import PROBE, chromium, run_chromium

    if chromium() is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    html = (hostile_report / "report.html").read_text()
    n_png, n_jpg = html.count("data:image/png;base64,"), html.count("data:image/jpeg;base64,")
    assert n_png >= 8 and n_jpg == 4
    alarm = ("<script>window.alert = function () { document.title = 'ALERT' + 'ED'; };"
             "</script>")
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("<head>", "<head>" + alarm + PROBE, 1))
    res = run_chromium(["--virtual-time-budget=5000", "--dump-dom", probe.as_uri()], tmp_path)
    m = re.search(r'<pre id="probe">(.*?)</pre>', res.stdout, re.S)
    assert m, res.stderr[-2000:]
    import html as htmllib

    data = json.loads(htmllib.unescape(m.group(1)))
    assert data["errors"] == []
    assert len(data["images"]) == n_png + n_jpg
    for img in data["images"]:
        assert img["complete"] and img["w"] > 90 and img["h"] > 90, img
    strips = [i for i in data["images"] if i["name"].startswith("thumbs_")]
    assert len(strips) == 4 and all(i["h"] == 96 for i in strips)
    assert "ALERTED" not in res.stdout  # no name ran as script
    shot = tmp_path / "shot.png"
    run_chromium([f"--screenshot={shot}", "--window-size=1200,2400",
                  (hostile_report / "report.html").as_uri()], tmp_path)
    import cv2

    img = cv2.imread(str(shot))
    assert img is not None and img.std() > 20


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
