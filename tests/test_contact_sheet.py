"""``maskgen contact-sheet``: every design x wear mode x head pose, and ``--real DIR`` with the
user's own photos beside the synthetic ones at the same cell size."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from maskgen.masks import MASK_TYPES, WEAR_MODES
from maskgen.masks.sheet import make_contact_sheet, real_cells, sheet_rows

CELL = 64


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory, fairface_dir: Path) -> Path:
    """A folder of any real photos (FairFace crops stand in for the user's masked photos),
    one of them broken, one in a subfolder."""
    d = tmp_path_factory.mktemp("real")
    files = sorted((fairface_dir / "val").glob("*.jpg"))[:5]
    for f in files[:4]:
        shutil.copy(f, d / f.name)
    (d / "more").mkdir()
    shutil.copy(files[4], d / "more" / files[4].name)
    (d / "broken.jpg").write_bytes(b"not an image")
    (d / "notes.txt").write_text("ignored")
    return d


def test_sheet_covers_every_design_wear_and_pose(data_home: Path, lfw_dir: Path, real_dir: Path) -> None:
    sheet, info = make_contact_sheet(n_faces=3, seed=0, cell=CELL, data_home=str(data_home), real=real_dir)
    rows = sheet_rows()
    assert {kw["type"] for _, kw in rows} >= set(MASK_TYPES)
    n_cols = 3 + len(WEAR_MODES) * 3  # originals, then wear x pose
    real_cols = int(np.ceil(5 / len(rows)))
    assert sheet.shape == (26 + CELL * len(rows), 130 + CELL * (n_cols + real_cols) + 12, 3)
    yaws = [float(s.split("yaw ")[1].rstrip(")")) for s in info]
    assert yaws == sorted(yaws) and yaws[0] < -10 and yaws[-1] > 10 and min(abs(y) for y in yaws) < 10
    # the real photos sit in the panel at the right, one per cell, same size as the synthetic ones
    x0 = 130 + CELL * n_cols + 12
    panel = sheet[26 : 26 + CELL * 5, x0 : x0 + CELL]
    assert panel.std() > 10 and (sheet[26 + CELL * 5 :, x0:] == 255).all()


def test_real_cells_frame_faces_and_skip_unreadable_files(real_dir: Path, tmp_path: Path) -> None:
    from maskgen.errors import InputError

    tiles = real_cells(real_dir, CELL)
    assert [n for n, _ in tiles] == sorted(n for n, _ in tiles) and len(tiles) == 5
    assert "more/" in " ".join(n for n, _ in tiles) and all(t.shape == (CELL, CELL, 3) for _, t in tiles)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no readable image"):
        real_cells(tmp_path / "empty", CELL)
    with pytest.raises(InputError, match="not a folder"):
        real_cells(tmp_path / "missing", CELL)


def test_cli_contact_sheet_with_real(data_home: Path, lfw_dir: Path, real_dir: Path, tmp_path: Path) -> None:
    from maskgen.masks.cli import contact_sheet

    out = tmp_path / "sheet.png"
    r = CliRunner().invoke(contact_sheet, ["-o", str(out), "--faces", "2", "--cell", "48", "--data-home", str(data_home),
                                           "--real", str(real_dir)])
    assert r.exit_code == 0, r.output
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] == 26 + 48 * len(sheet_rows())
    (tmp_path / "none").mkdir()
    r = CliRunner().invoke(contact_sheet, ["-o", str(tmp_path / "x.png"), "--cell", "48", "--data-home", str(data_home),
                                           "--real", str(tmp_path / "none")])
    assert r.exit_code != 0 and "no readable image" in r.output and "Traceback" not in r.output
