"""``lfw`` (the data home's LFW, downloaded when absent) or ``lfw:DIR``: a folder source whose
identities are the LFW people, known to the catalog as ``lfw``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from maskgen.datasets import lfw as lfw_mod
from maskgen.datasets.sources.base import SourceNotFound, register
from maskgen.datasets.sources.folder import FolderSource


@register
@dataclass(eq=False)
class LfwSource(FolderSource):
    kind = "lfw"
    prefixes = ("lfw",)
    detect_order = 30  # before a plain folder
    catalog_name = "lfw"

    @classmethod
    def from_spec(cls, rest, *, identity_depth=1, data_home=None):
        root = Path(rest).expanduser() if rest else lfw_mod.lfw_dir(data_home)
        if not root.is_dir():
            raise SourceNotFound(f"LFW folder {rest} does not exist")
        return cls(root.resolve(), identity_depth=1)

    @classmethod
    def detect(cls, path: str) -> bool:
        p = os.path.expanduser(path)
        return os.path.isdir(p) and lfw_mod.is_lfw_dir(p)

    def describe(self) -> str:
        return "lfw"
