"""The mask mix: which mask types, colours, textures and wear modes, with what probability.

A mix is given by a recipe name (``default``, ``mtarcface``), a YAML file, a mapping, or the
``mask_types`` / ``wear`` / ``texture_prob`` shortcuts. The plan draws one spec per masked
sample from a generator seeded by the sample's key, so the choice is reproducible and
recorded (manifest + sample json) before any pixel is touched.

YAML form::

    types: {surgical: 0.4, n95: 0.2, kn95: 0.2, cloth: 0.2}   # or a list = uniform
    wear: {correct: 0.9, below_nose: 0.05, chin: 0.05}
    texture_prob: 0.5          # share of patterned masks; the rest are plain colours
    colors: random             # "random" (any sRGB), "palette", or a list of names / #rrggbb
    textures: [checks, stripes, dots, floral]   # pattern names or texture image files
    valve_prob: 0.3            # exhalation valve on respirators (n95, kn95)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

VALVE_TYPES = ("n95", "kn95")  # designs that can carry an exhalation valve

RECIPES: dict[str, dict] = {
    # every design, mostly worn correctly, mostly plain palette colours
    "default": {
        "types": None,
        "wear": {"correct": 0.9, "below_nose": 0.1},  # chin-worn masks fall outside a 112 crop
        "texture_prob": 0.25,
        "colors": "palette",
    },
    # Multi-Task ArcFace (Montero et al., 2022): half random colour, half random texture
    "mtarcface": {"types": None, "wear": {"correct": 1.0}, "texture_prob": 0.5, "colors": "random"},
    # what a surgical-mask evaluation set looks like
    "surgical": {"types": {"surgical": 1.0}, "wear": {"correct": 1.0}, "texture_prob": 0.0, "colors": ["blue", "lightblue", "green", "white"]},
}


def _mask_vocab() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], list[str]]:
    from maskgen.masks import MASK_TYPES, PALETTE, PATTERNS, WEAR_MODES

    return tuple(MASK_TYPES), tuple(WEAR_MODES), tuple(PATTERNS), list(PALETTE)


def _probs(v, universe: tuple[str, ...], what: str) -> dict[str, float]:
    if v is None:
        v = list(universe)
    if isinstance(v, str):
        v = [s for s in v.split(",") if s]
    if isinstance(v, (list, tuple)):
        v = {k: 1.0 for k in v}
    bad = sorted(set(v) - set(universe))
    if bad:
        raise ValueError(f"unknown {what} {bad}; known: {list(universe)}")
    total = float(sum(v.values()))
    if total <= 0 or any(p < 0 for p in v.values()):
        raise ValueError(f"{what} probabilities must be non-negative and not all zero")
    return {k: float(p) / total for k, p in sorted(v.items())}


@dataclass
class MaskMix:
    types: dict[str, float] = field(default_factory=dict)
    wear: dict[str, float] = field(default_factory=dict)
    texture_prob: float = 0.25
    colors: str | list[str] = "palette"
    textures: list[str] = field(default_factory=list)
    valve_prob: float = 0.3

    @classmethod
    def resolve(
        cls,
        mix: str | os.PathLike | dict | None = None,
        *,
        mask_types: list[str] | None = None,
        wear: list[str] | None = None,
        texture_prob: float | None = None,
    ) -> MaskMix:
        types_u, wear_u, patterns, palette = _mask_vocab()
        if mix is None:
            spec = dict(RECIPES["default"])
        elif isinstance(mix, dict):
            spec = dict(mix)
        elif str(mix) in RECIPES:
            spec = dict(RECIPES[str(mix)])
        elif Path(mix).is_file():
            spec = yaml.safe_load(Path(mix).read_text()) or {}
        else:
            raise ValueError(f"mask_mix {mix!r}: not a recipe ({', '.join(RECIPES)}) nor a YAML file")
        unknown = set(spec) - {"types", "wear", "texture_prob", "colors", "textures", "valve_prob"}
        if unknown:
            raise ValueError(f"mask mix: unknown key(s) {sorted(unknown)}")
        if mask_types:
            spec["types"] = mask_types
        if wear:
            spec["wear"] = wear
        if texture_prob is not None:
            spec["texture_prob"] = texture_prob
        colors = spec.get("colors", "palette")
        if isinstance(colors, str) and colors not in ("random", "palette"):
            colors = [c for c in colors.split(",") if c]
        if isinstance(colors, list):
            from maskgen.masks.textures import parse_color

            for c in colors:
                parse_color(c)  # fail now, not in a worker
        textures = list(spec.get("textures") or patterns)
        for t in textures:
            if t not in patterns and not Path(t).is_file():
                raise ValueError(f"texture {t!r} is neither a pattern ({', '.join(patterns)}) nor an image file")
        tp = float(spec.get("texture_prob", 0.25))
        if not 0 <= tp <= 1:
            raise ValueError("texture_prob must be within [0, 1]")
        vp = float(spec.get("valve_prob", 0.3))
        if not 0 <= vp <= 1:
            raise ValueError("valve_prob must be within [0, 1]")
        return cls(
            _probs(spec.get("types"), types_u, "mask types"),
            _probs(spec.get("wear"), wear_u, "wear modes"),
            tp,
            colors,
            textures,
            vp,
        )

    def draw(self, rng: np.random.Generator) -> dict[str, str | bool | None]:
        """One spec: ``{type, color, texture, wear, valve}`` (MaskSpec keyword arguments)."""
        t = _choice(rng, self.types)
        w = _choice(rng, self.wear)
        textured = rng.random() < self.texture_prob
        if self.colors == "random":
            color = "#%02x%02x%02x" % tuple(int(x) for x in rng.integers(0, 256, 3))
        elif self.colors == "palette":
            _, _, _, palette = _mask_vocab()
            color = palette[int(rng.integers(len(palette)))]
        else:
            color = self.colors[int(rng.integers(len(self.colors)))]
        texture = self.textures[int(rng.integers(len(self.textures)))] if textured else None
        valve = t in VALVE_TYPES and bool(rng.random() < self.valve_prob)
        return {"type": t, "color": color, "texture": texture, "wear": w, "valve": valve}

    def to_dict(self) -> dict:
        return asdict(self)


def _choice(rng: np.random.Generator, probs: dict[str, float]) -> str:
    names = list(probs)
    return names[int(rng.choice(len(names), p=np.array([probs[n] for n in names])))]
