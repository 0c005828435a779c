"""The build's mask mix, re-exported from :mod:`maskgen.masks.mix` (the masks own the recipe).

Kept so that ``from maskgen.pipelines.maskmix import MaskMix`` in the build keeps working.
"""

from __future__ import annotations

from maskgen.masks.mix import RECIPES, VALVE_TYPES, MaskMix

__all__ = ["RECIPES", "VALVE_TYPES", "MaskMix"]
