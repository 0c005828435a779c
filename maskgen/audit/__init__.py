"""Audit: who is in a dataset and how the masks fall on them.

``face_attributes`` (per image, model-free) is cheap to import: the build calls it per image.
The report side (matplotlib, HTML) loads only when asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from maskgen.audit.files import report_files
from maskgen.datasets.attributes import ITA_BINS, SKIN_TONES, face_attributes, skin_tone_label

if TYPE_CHECKING:
    from maskgen.audit.api import audit, write_build_report
    from maskgen.audit.figures import figure_helper

__all__ = [
    "ITA_BINS",
    "SKIN_TONES",
    "audit",
    "face_attributes",
    "figure_helper",
    "report_files",
    "skin_tone_label",
    "write_build_report",
]


def __getattr__(name: str) -> Any:
    if name in ("audit", "write_build_report"):
        from maskgen.audit import api

        return getattr(api, name)
    if name == "figure_helper":
        from maskgen.audit import figures

        return figures.figure_helper
    raise AttributeError(f"module 'maskgen.audit' has no attribute {name!r}")
