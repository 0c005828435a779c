"""Third-party template packs in MaskTheFace's format: ``masks.cfg`` + RGBA templates.

Each ``[name]`` section gives ``template:`` (a path whose last two parts are resolved inside the
pack folder) and six anchors ``mask_a..mask_f`` in template pixels: a, b, c along the top edge
(image-left corner, nose bridge, image-right corner) and d, e, f along the bottom (left jaw,
chin, right jaw). The template is resampled into this project's template space (a, b, c on
v = 0 at u = 0, 0.5, 1; d, e, f on v = 1), after which it is warped like any built-in design.
"""

from __future__ import annotations

import configparser
import functools
from pathlib import Path

import cv2
import numpy as np

from maskgen.masks.designs import PX_U, PX_V, Template, template_grid
from maskgen.masks.designs.template import colour_peak

PACK_PREFIX = "pack:"
_EXTENT = (-0.04, 1.04, -0.06, 1.06)  # anchors span [0, 1]; beyond are baked-in straps


def read_pack(pack_dir: str | Path) -> dict[str, dict]:
    """Sections of a pack's ``masks.cfg`` that have a template and six anchors."""
    d = Path(pack_dir)
    cfg = configparser.ConfigParser()
    cfg.read(d / "masks.cfg")
    out = {}
    for name in cfg.sections():
        sec = cfg[name]
        if "template" not in sec:
            continue
        try:
            anchors = np.array([[float(x) for x in sec[f"mask_{k}"].split(",")] for k in "abcdef"], np.float64)
        except (KeyError, ValueError):
            continue
        rel = Path(sec["template"].strip())
        cand = [d / rel, d / Path(*rel.parts[-2:]), d / rel.name]
        path = next((c for c in cand if c.is_file()), None)
        if path is None:
            continue
        out[name] = {"path": path, "anchors": anchors}
    return out


def pack_names(pack_dir: str | Path) -> list[str]:
    return sorted(read_pack(pack_dir))


@functools.lru_cache(maxsize=64)
def pack_template(pack_dir: str, name: str) -> Template:
    """A pack template resampled into template space, as a cached pyramid."""
    entries = read_pack(pack_dir)
    if name not in entries:
        raise ValueError(f"pack {pack_dir!r} has no template {name!r}; it has {sorted(entries)}")
    e = entries[name]
    src = cv2.imread(str(e["path"]), cv2.IMREAD_UNCHANGED)
    if src is None or src.ndim != 3 or src.shape[2] != 4:
        raise ValueError(f"pack template {e['path']} is not an RGBA image")
    rgba = cv2.cvtColor(src, cv2.COLOR_BGRA2RGBA).astype(np.float32) / 255.0
    rgba[..., :3] *= rgba[..., 3:4]  # premultiply
    a, b, c, dd, ee, f = e["anchors"]
    u, v = template_grid(_EXTENT)
    # piecewise-linear top and bottom edges through the anchors, blended along v
    top = np.where((u < 0.5)[..., None], a + (b - a) * (u / 0.5)[..., None], b + (c - b) * ((u - 0.5) / 0.5)[..., None])
    bot = np.where((u < 0.5)[..., None], dd + (ee - dd) * (u / 0.5)[..., None], ee + (f - ee) * ((u - 0.5) / 0.5)[..., None])
    pos = top + (bot - top) * v[..., None]
    res = cv2.remap(rgba, pos[..., 0].astype(np.float32), pos[..., 1].astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    lvl0 = np.clip(res * 255.0 + 0.5, 0, 255).astype(np.uint8)
    levels = [lvl0]
    while min(levels[-1].shape[:2]) > 24:
        levels.append(cv2.pyrDown(levels[-1]))
    loops = "head" if name.lower().startswith(("n95", "kn95", "gas")) else "ear"
    return Template(levels, _EXTENT, PX_U, PX_V, loops, (0.93, 0.93, 0.93), peak=colour_peak(levels))
