"""The ``lst`` source (an MXNet/insightface image list): the worked example of adding a source
kind as one file plus this test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from maskgen.datasets import filters as F
from maskgen.datasets.sources import parse_source, source_kinds

NAMES = ["Aaron_Peirsol", "Abdullah_Gul", "Adrien_Brody"]


def test_lst_source(lfw_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    lines = []
    for label, n in enumerate(NAMES):
        shutil.copytree(lfw_dir / n, root / "images" / n)
        for f in sorted((root / "images" / n).iterdir()):
            lines.append(f"{len(lines)}\t{label + 9}.000000\timages/{n}/{f.name}")
    n_good = len(lines)
    lines += ["not a line", f"{len(lines)}\t1.0\t../outside.jpg", f"{len(lines) + 1}\t2.0\timages/missing.jpg"]
    os.mkfifo(root / "images" / "fifo.jpg")
    lines.append(f"{len(lines) + 2}\t2.0\timages/fifo.jpg")
    (root / "train.lst").write_text("\n".join(lines) + "\n")

    assert "lst" in source_kinds()
    src = parse_source(str(root / "train.lst"))
    assert src.kind == "lst" and parse_source(f"lst:{root / 'train.lst'}").kind == "lst"
    t = src.scan().to_pylist()
    assert len(t) == len(lines)
    good = [r for r in t if r["_drop"] is None]
    assert len(good) == n_good
    assert [r["identity"] for r in good][:1] == ["09"] and good[-1]["identity"] == "11"  # padded to 2 digits
    for r in good[:5]:
        assert src.read_bytes(r["path"]) == (root / r["path"]).read_bytes()
    assert [r["_drop"] for r in t[n_good:]] == ["malformed lst line", "unsafe path",
                                               "unreadable: No such file or directory", "not a regular file"]
    keyed = F.assign_keys(src.scan())
    assert len(set(keyed.column("key").to_pylist())) == len(lines)
