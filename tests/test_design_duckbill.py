"""The duckbill design (``maskgen/masks/designs/duckbill.py``): a design added as one file plus
this test. Known to MaskSpec, the CLI's mask-type choices, recipes and the contact sheet;
fits a real face; seeded; its beak stands forward; and the default mix draws as before."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from maskgen.masks import DESIGNS, MASK_TYPES, MaskMix, MaskSpec, default_mix, detect_faces, mask_face
from maskgen.masks.designs.duckbill import RIDGE_V

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def astro_face(astronaut):
    return detect_faces(astronaut)[0]


def test_registered_everywhere_a_design_name_is() -> None:
    from maskgen.masks.options import mask_type_choices
    from maskgen.masks.sheet import sheet_rows

    d = DESIGNS["duckbill"]
    assert "duckbill" in MASK_TYPES and d.loops == "head" and not d.valve
    assert "duckbill" in mask_type_choices()
    assert MaskSpec(type="duckbill").type == "duckbill"
    assert any(name == "duckbill" for name, *_ in sheet_rows())
    only = MaskMix.resolve(None, mask_types=["duckbill"])
    spec = MaskSpec(**only.draw(np.random.default_rng(1)))
    assert spec.type == "duckbill" and spec.color in dict(d.colors)


def test_cli_renders_it(astronaut, tmp_path: Path) -> None:
    import cv2
    from click.testing import CliRunner

    from maskgen.masks.cli import mask as mask_cmd

    src = tmp_path / "astronaut.png"
    cv2.imwrite(str(src), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    flag = next(p for p in mask_cmd.params if p.name == "mask_type").opts[0]
    out_opt = next(p for p in mask_cmd.params if p.name in ("out", "output")).opts[0]
    out = tmp_path / "out"
    res = CliRunner().invoke(mask_cmd, [str(src), out_opt, str(out), flag, "duckbill", "--seed", "3", "--format", "png"])
    assert res.exit_code == 0, res.output
    written = sorted(out.rglob("*.png"))
    assert len(written) == 1, written
    got = cv2.imread(str(written[0]))
    assert got.shape == astronaut.shape and np.abs(got.astype(int) - cv2.imread(str(src))).max() > 50
    bad = CliRunner().invoke(mask_cmd, [str(src), out_opt, str(tmp_path / "bad"), flag, "duckbil"])
    assert bad.exit_code != 0 and "duckbill" in bad.output  # the choices listed name it


@pytest.mark.parametrize("wear", ["correct", "below_nose"])
def test_fits_the_face(astronaut, astro_face, wear: str) -> None:
    from maskgen.masks import FIT_POINTS

    res = mask_face(astronaut, MaskSpec(type="duckbill", wear=wear), seed=0, faces=[astro_face])
    assert res.ok and res.fit > 0.95, res.fit
    xy = np.round(astro_face.landmarks).astype(int)
    a = res.alpha[xy[:, 1], xy[:, 0]]
    must, free = FIT_POINTS[wear]
    assert (a[list(must)] > 0.5).all() and (a[list(free)] < 0.1).all()
    assert (a[list(range(36, 48))] < 0.1).all()  # no eye landmark
    assert (a[list(range(48, 68))] > 0.5).all()  # the whole mouth
    if wear == "correct":
        assert a[28] > 0.5  # the nose wire sits over the upper bridge


def test_seeded(astronaut, astro_face) -> None:
    spec = MaskSpec(type="duckbill", color="random")
    a = mask_face(astronaut, spec, seed=11, faces=[astro_face])
    b = mask_face(astronaut, spec, seed=11, faces=[astro_face])
    assert np.array_equal(a.image, b.image) and np.array_equal(a.alpha, b.alpha)
    others = [mask_face(astronaut, spec, seed=s, faces=[astro_face]).image for s in range(12, 16)]
    assert any(not np.array_equal(a.image, o) for o in others)


def test_the_beak_stands_forward(astro_face) -> None:
    """Down the middle, the knots at the ridge stand in front of the line between the rows above
    and below it, more than a KF94's seam fold does."""
    from maskgen.masks.geometry import _VS, face_mesh

    j = int(np.argmin(np.abs(_VS - RIDGE_V))) + 1  # +1: the outer ring row

    def bulge(kind: str) -> float:
        d = DESIGNS[kind]
        m = face_mesh(astro_face.landmarks, (512, 512), "correct", d.shape, d.extent)
        z = m.knots[:, m.knots.shape[1] // 2, 2]
        return float(0.5 * (z[j - 1] + z[j + 1]) - z[j])

    assert bulge("duckbill") > bulge("kf94") + 1.0 and bulge("duckbill") > bulge("surgical") + 2.0


_DRAWS = """
import json, pkgutil, sys
import numpy as np
hide = sys.argv[1] == "hide"
real = pkgutil.iter_modules
def iter_modules(path=None, prefix=""):
    return [m for m in real(path, prefix) if not (hide and m.name == "duckbill")]
pkgutil.iter_modules = iter_modules
from maskgen.masks import MASK_TYPES, default_mix
pkgutil.iter_modules = real
assert ("duckbill" in MASK_TYPES) != hide
rng = np.random.default_rng(0)
print(json.dumps([default_mix().draw(rng) for _ in range(3000)], sort_keys=True))
"""


def test_not_in_the_default_mix_whose_draws_are_unchanged() -> None:
    """3000 default-mix draws are the same with and without this design's file."""
    rng = np.random.default_rng(0)
    assert "duckbill" not in {default_mix().draw(rng)["type"] for _ in range(3000)}
    runs = [subprocess.run([sys.executable, "-c", _DRAWS, how], capture_output=True, text=True, cwd=ROOT,
                           timeout=300) for how in ("hide", "show")]
    for r in runs:
        assert r.returncode == 0, r.stderr[-2000:]
    without, with_it = (json.loads(r.stdout) for r in runs)
    assert without == with_it and len(without) == 3000


def test_no_other_module_names_it() -> None:
    """Adding the design touched only its file: no other module of maskgen names it."""
    root = ROOT / "maskgen"
    naming = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py") if "duckbill" in p.read_text().lower())
    assert naming == ["masks/designs/duckbill.py"]
