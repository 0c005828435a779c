"""The mask mix: which designs, colours, prints and wear modes, with what probability.

One recipe vocabulary for the whole project: ``MaskSpec.random`` (``maskgen mask --type
random``, evaluation) and a build's mask plan draw from the same :class:`MaskMix`. A mix is a
recipe name (``default``, ``palette``, ``mtarcface``, ``surgical``), a YAML file, a mapping, or
the ``mask_types`` / ``wear`` / ``texture_prob`` shortcuts.

The **default** recipe follows what real masked-face photos show. The figures come from a set
of real masked photos kept outside the project (so nothing is tuned to them), as reported with
the project's realism measurements: about half the masks are white or
light grey (surgical, N95, KN95), about a fifth black (mostly cloth), about a sixth light blue
(surgical) and about a tenth any other colour, prints included. The recipe below gives
white/light grey 50 %, black 20 %, light blue 17 %, other colours and prints 13 %
(``tests/test_masks.py`` checks these shares from the recipe itself). Skin-like colours
(``textures.SKIN_LIKE``: beige, brown, khaki, pink, orange) are left out of it: they made a
mask detector fire on beards, hands and scarves. The recipe names its designs and their
weights explicitly, so adding a design never changes a build that uses the default mix.

YAML form (either ``looks``, or the short form with ``types``/``colors``)::

    wear: {correct: 0.9, below_nose: 0.1}
    valve_prob: 0.3                   # exhalation valve on designs that can carry one
    looks:                            # each: design, weight, colours (list or weights), prints
      - {type: surgical, weight: 0.4, colors: {lightblue: 0.5, white: 0.5}}
      - {type: cloth, weight: 0.6, colors: [black, navy], textures: [plaid, camo], texture_prob: 0.3}

    types: {surgical: 0.4, n95: 0.2, kn95: 0.2, cloth: 0.2}   # or a list = uniform
    colors: palette            # "palette" (every named colour), "random" (any sRGB),
                               # "design" (each design's own colours) or a list of names / #rrggbb
    textures: [checks, plaid]  # pattern names or texture image files (default: every pattern)
    texture_prob: 0.25         # share of printed masks
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from maskgen.masks import textures
from maskgen.masks.designs import DESIGNS, MASK_TYPES, VALVE_TYPES
from maskgen.masks.geometry import WEAR_MODES

__all__ = ["RECIPES", "VALVE_TYPES", "Look", "MaskMix", "color_family", "default_mix"]

_PRINTS = ["plaid", "camo", "brand", "cartoon", "flag", "knit", "lace", "floral", "dots", "stripes", "checks"]

RECIPES: dict[str, dict] = {
    # real-world frequencies (see the module docstring); every weight and colour named here
    "default": {
        "wear": {"correct": 0.9, "below_nose": 0.1},  # chin-worn masks fall outside a 112 crop
        "valve_prob": 0.15,
        "looks": [
            {"type": "surgical", "weight": 0.16, "colors": {"white": 0.8, "lightgray": 0.2}},
            {"type": "surgical", "weight": 0.17, "colors": {"lightblue": 0.45, "blue": 0.55}},
            {"type": "surgical", "weight": 0.02, "colors": ["black"]},
            {"type": "n95", "weight": 0.12, "colors": {"white": 0.9, "lightgray": 0.1}},
            {"type": "kn95", "weight": 0.22, "colors": {"white": 0.85, "lightgray": 0.15}},
            {"type": "kn95", "weight": 0.04, "colors": ["black"]},
            {"type": "cloth", "weight": 0.14, "colors": ["black"]},
            {"type": "cloth", "weight": 0.05, "colors": {"navy": 0.3, "darkgray": 0.25, "red": 0.15, "green": 0.1,
                                                        "maroon": 0.1, "purple": 0.1}},
            {"type": "cloth", "weight": 0.06, "colors": {"black": 0.3, "navy": 0.2, "white": 0.2, "red": 0.1,
                                                        "gray": 0.1, "lightblue": 0.1},
             "textures": _PRINTS, "texture_prob": 1.0},
            {"type": "bandana", "weight": 0.02, "colors": {"red": 0.4, "navy": 0.3, "black": 0.3}},
        ],
    },
    # the previous default: every design, the whole palette (skin-like colours included)
    "palette": {"types": None, "wear": {"correct": 0.9, "below_nose": 0.1}, "texture_prob": 0.25, "colors": "palette"},
    # Multi-Task ArcFace (Montero et al., 2022): half random colour, half random texture
    "mtarcface": {"types": None, "wear": {"correct": 1.0}, "texture_prob": 0.5, "colors": "random"},
    # what a surgical-mask evaluation set looks like
    "surgical": {"types": {"surgical": 1.0}, "wear": {"correct": 1.0}, "texture_prob": 0.0, "colors": ["blue", "lightblue", "green", "white"]},
}

_KEYS = {"types", "wear", "texture_prob", "colors", "textures", "valve_prob", "looks"}
_LOOK_KEYS = {"type", "weight", "colors", "textures", "texture_prob"}


@dataclass
class Look:
    """One design with its colours and prints, and its share of the mix."""

    type: str
    weight: float
    colors: dict[str, float] | str  # name -> probability, or "random" (any sRGB)
    textures: list[str] = field(default_factory=list)
    texture_prob: float = 0.0


def _probs(v, universe, what: str) -> dict[str, float]:
    if v is None:
        v = list(universe)
    if isinstance(v, str):
        v = [s for s in v.split(",") if s]
    if isinstance(v, (list, tuple)):
        v = {k: 1.0 for k in v}
    if universe is not None:
        bad = sorted(set(v) - set(universe))
        if bad:
            raise ValueError(f"unknown {what} {bad}; known: {list(universe)}")
    total = float(sum(v.values()))
    if total <= 0 or any(p < 0 for p in v.values()):
        raise ValueError(f"{what} probabilities must be non-negative and not all zero")
    return {k: float(p) / total for k, p in v.items()}


def _colors(v, kind: str) -> dict[str, float] | str:
    """A look's colours as name -> probability (validated now, not in a worker)."""
    if v == "random":
        return "random"
    if v is None or v == "design":
        return _probs(dict(DESIGNS[kind].colors) or [DESIGNS[kind].default_color], None, "colours")
    if v == "palette":
        v = list(textures.PALETTE)
    if isinstance(v, str):
        v = [c for c in v.split(",") if c]
    out = _probs(v, None, "colours")
    for c in out:
        textures.parse_color(c)
    return out


def _textures(v) -> list[str]:
    out = list(textures.PATTERNS) if v is None else [str(t) for t in v]
    for t in out:
        if not textures.is_pattern(t) and not Path(t).is_file():
            raise ValueError(f"texture {t!r} is neither a pattern ({', '.join(textures.PATTERNS)}) nor an image file")
    return out


def _unit(x, what: str) -> float:
    x = float(x)
    if not 0 <= x <= 1:
        raise ValueError(f"{what} must be within [0, 1]")
    return x


@dataclass
class MaskMix:
    looks: list[Look] = field(default_factory=list)
    wear: dict[str, float] = field(default_factory=dict)
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
        """A mix from a recipe name, YAML file or mapping, restricted by the shortcuts."""
        if mix is None:
            spec = dict(RECIPES["default"])
        elif isinstance(mix, dict):
            spec = dict(mix)
        elif str(mix) in RECIPES:
            spec = dict(RECIPES[str(mix)])
        elif Path(mix).is_file():
            spec = yaml.safe_load(Path(mix).read_text()) or {}
            if not isinstance(spec, dict):
                raise ValueError(f"mask mix {mix}: expected a mapping")
        else:
            raise ValueError(f"mask_mix {mix!r}: not a recipe ({', '.join(RECIPES)}) nor a YAML file")
        unknown = set(spec) - _KEYS
        if unknown:
            raise ValueError(f"mask mix: unknown key(s) {sorted(unknown)}")
        if "looks" in spec and spec["looks"] is not None:
            if {"types", "colors", "textures", "texture_prob"} & set(spec):
                raise ValueError("mask mix: give either looks or types/colors/textures/texture_prob")
            looks = [cls._look(d) for d in spec["looks"]]
        else:
            tp = _unit(spec.get("texture_prob", 0.25), "texture_prob")
            tex = _textures(spec.get("textures"))
            types = _probs(spec.get("types"), MASK_TYPES, "mask types")
            looks = [Look(t, p, _colors(spec.get("colors", "palette"), t), tex, tp) for t, p in types.items()]
        if mask_types:
            bad = sorted(set(mask_types) - set(DESIGNS))
            if bad:
                raise ValueError(f"unknown mask types {bad}; known: {list(DESIGNS)}")
            kept = [lk for lk in looks if lk.type in mask_types]
            # a design the recipe does not name enters with its own colours
            for t in mask_types:
                if not any(lk.type == t for lk in kept):
                    kept.append(Look(t, 1.0 / len(mask_types), _colors("design", t), list(textures.PATTERNS), 0.0))
            looks = kept
        if texture_prob is not None:
            tp = _unit(texture_prob, "texture_prob")
            for lk in looks:
                lk.texture_prob = tp
                lk.textures = lk.textures or list(textures.PATTERNS)
        total = sum(lk.weight for lk in looks)
        if not looks or total <= 0:
            raise ValueError("mask mix: no design with a positive weight")
        for lk in looks:
            lk.weight /= total
        wears = _probs(wear if wear else spec.get("wear"), WEAR_MODES, "wear modes")
        return cls(looks, wears, _unit(spec.get("valve_prob", 0.3), "valve_prob"))

    @staticmethod
    def _look(d: dict) -> Look:
        if not isinstance(d, dict) or "type" not in d:
            raise ValueError(f"mask mix look {d!r}: needs at least a type")
        unknown = set(d) - _LOOK_KEYS
        if unknown:
            raise ValueError(f"mask mix look: unknown key(s) {sorted(unknown)}")
        kind = str(d["type"])
        if kind not in DESIGNS:
            raise ValueError(f"unknown mask type {kind!r}; known: {list(MASK_TYPES)}")
        weight = float(d.get("weight", 1.0))
        if weight < 0:
            raise ValueError("mask mix look: weight must be non-negative")
        tp = _unit(d.get("texture_prob", 1.0 if d.get("textures") else 0.0), "texture_prob")
        return Look(kind, weight, _colors(d.get("colors"), kind), _textures(d.get("textures")) if d.get("textures") else [], tp)

    def draw(self, rng: np.random.Generator) -> dict[str, str | bool | None]:
        """One spec: ``{type, color, texture, wear, valve}`` (MaskSpec keyword arguments)."""
        lk = self.looks[_pick(rng, [x.weight for x in self.looks])]
        w = list(self.wear)[_pick(rng, list(self.wear.values()))]
        if lk.colors == "random":
            color = "#%02x%02x%02x" % tuple(int(x) for x in rng.integers(0, 256, 3))
        else:
            names = list(lk.colors)
            color = names[_pick(rng, list(lk.colors.values()))]
        texture = None
        if lk.textures and rng.random() < lk.texture_prob:
            texture = lk.textures[int(rng.integers(len(lk.textures)))]
            if textures.is_pattern(texture):
                texture = textures.seeded_pattern(texture, rng)
        valve = DESIGNS[lk.type].valve and bool(rng.random() < self.valve_prob)
        return {"type": lk.type, "color": color, "texture": texture, "wear": w, "valve": valve}

    def to_dict(self) -> dict:
        return asdict(self)

    def colour_shares(self) -> dict[str, float]:
        """Probability of each plain colour name over the mix (printed masks under ``"print"``)."""
        out: dict[str, float] = {}
        for lk in self.looks:
            plain = lk.weight * (1.0 - (lk.texture_prob if lk.textures else 0.0))
            if lk.textures and lk.texture_prob:
                out["print"] = out.get("print", 0.0) + lk.weight - plain
            if lk.colors == "random":
                out["random"] = out.get("random", 0.0) + plain
                continue
            for c, p in lk.colors.items():
                out[c] = out.get(c, 0.0) + plain * p
        return out


def color_family(name: str) -> str:
    """white/light grey, black, light blue or other: the families real photos are counted in."""
    if name in ("white", "lightgray"):
        return "white/light grey"
    if name == "black":
        return "black"
    if name in ("lightblue", "blue"):
        return "light blue"
    return "other"


def _pick(rng: np.random.Generator, weights: list[float]) -> int:
    p = np.asarray(weights, np.float64)
    return int(rng.choice(len(p), p=p / p.sum()))


_DEFAULT: MaskMix | None = None


def default_mix() -> MaskMix:
    """The default recipe, resolved once per process."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = MaskMix.resolve("default")
    return _DEFAULT
