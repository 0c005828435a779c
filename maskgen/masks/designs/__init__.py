"""The mask designs: one file per design in this package, each registering a :class:`Design`.

Adding a design is one file here (``maskgen/masks/designs/<name>.py``: a ``draw`` function in
template space, its 3D :class:`Shape`, colours and straps, ``register(Design(...))``) plus its
test; every module of this package except ``base`` and ``template`` is imported below, so the
new design is known to ``MaskSpec``, ``--type``, recipes and the contact sheet. It does not
enter the default mix: recipes name their designs (see ``maskgen.masks.mix``).
"""

from __future__ import annotations

import importlib
import pkgutil

from maskgen.masks.designs.base import (
    AA_PX,
    ASPECT,
    DESIGNS,
    PX_U,
    PX_V,
    Design,
    Layers,
    Shape,
    aa,
    gauss,
    register,
    sd_box,
    smooth_noise,
)
from maskgen.masks.designs.template import Pyramid, Template, build_template, micro_texture, template_grid

_LIBRARY = {"base", "template"}

for _m in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _m not in _LIBRARY and not _m.startswith("_"):
        importlib.import_module(f"{__name__}.{_m}")

MASK_TYPES: tuple[str, ...] = tuple(sorted(DESIGNS, key=lambda n: (DESIGNS[n].order, n)))
VALVE_TYPES: tuple[str, ...] = tuple(n for n in MASK_TYPES if DESIGNS[n].valve)

__all__ = [
    "AA_PX",
    "ASPECT",
    "DESIGNS",
    "MASK_TYPES",
    "PX_U",
    "PX_V",
    "VALVE_TYPES",
    "Design",
    "Layers",
    "Pyramid",
    "Shape",
    "Template",
    "aa",
    "build_template",
    "gauss",
    "micro_texture",
    "register",
    "sd_box",
    "smooth_noise",
    "template_grid",
]
