"""The KF94 design (``maskgen/masks/designs/kf94.py``): a design added as one file.

It is known everywhere a design name is (MaskSpec, recipes), draws and fits like the others,
has its own 3D form (the forward fold at the seam), and never enters the default mix.
"""

from __future__ import annotations

import numpy as np
import pytest

from maskgen.masks import DESIGNS, MASK_TYPES, FIT_POINTS, MaskMix, MaskSpec, default_mix, detect_faces, mask_face
from maskgen.masks.designs.kf94 import SEAM_V


@pytest.fixture(scope="module")
def astro_face(astronaut):
    return detect_faces(astronaut)[0]


def test_kf94_is_registered_but_not_in_the_default_mix() -> None:
    assert "kf94" in MASK_TYPES and DESIGNS["kf94"].loops == "ear" and not DESIGNS["kf94"].valve
    rng = np.random.default_rng(0)
    assert "kf94" not in {default_mix().draw(rng)["type"] for _ in range(3000)}
    only = MaskMix.resolve(None, mask_types=["kf94"])
    spec = MaskSpec(**only.draw(np.random.default_rng(1)))
    assert spec.type == "kf94" and spec.color in dict(DESIGNS["kf94"].colors)


@pytest.mark.parametrize("wear", ["correct", "below_nose"])
def test_kf94_fits_the_face(astronaut, astro_face, wear: str) -> None:
    res = mask_face(astronaut, MaskSpec(type="kf94", wear=wear), seed=0, faces=[astro_face])
    assert res.ok and res.fit > 0.95, res.fit
    xy = np.round(astro_face.landmarks).astype(int)
    a = res.alpha[xy[:, 1], xy[:, 0]]
    must, free = FIT_POINTS[wear]
    assert (a[list(must)] > 0.5).all() and (a[list(free)] < 0.1).all()


def test_kf94_folds_forward_at_its_seam(astro_face) -> None:
    """Down the middle of the mask, the knots at the seam stand in front of the straight line
    between the rows above and below it (the fold), unlike a surgical mask's."""
    from maskgen.masks.geometry import _VS, face_mesh

    j = int(np.argmin(np.abs(_VS - SEAM_V))) + 1  # +1: the outer ring row

    def bulge(kind: str) -> float:
        d = DESIGNS[kind]
        m = face_mesh(astro_face.landmarks, (512, 512), "correct", d.shape, d.extent)
        c = m.knots.shape[1] // 2
        z = m.knots[:, c, 2]
        return float(0.5 * (z[j - 1] + z[j + 1]) - z[j])  # > 0: the seam is nearer the camera

    assert bulge("kf94") > bulge("surgical") + 1.0
