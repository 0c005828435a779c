"""Known face datasets: name, licence, citation and homepage, for cards and source info.

The table is data (``catalog.yaml`` next to this module), so adding a dataset touches no code.
Lookups are **exact**: a name matches a dataset's canonical name or one of its listed aliases
after normalisation (case, and ``_`` / space / ``-`` treated alike), never a substring, so a
build of ``/data/casia`` named ``casia-no-lfw`` gets no licence of LFW's (it gets none at
all, and the card asks the user for ``--license``).

```python
from maskgen.datasets.catalog import lookup, identify
lookup("FairFace").license           # 'cc-by-4.0'
lookup("casia-no-lfw")               # None
identify("data/fairface-val/val")    # FairFace: a split folder inside a known dataset's folder
```
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import PurePath

import yaml

UNKNOWN = "unknown"  # the licence of a source that is not in the table, or has no clear terms
# Folder names that only name a split: a folder so named is identified by its parent.
SPLIT_FOLDERS = frozenset({"train", "training", "val", "valid", "validation", "test", "testing",
                           "images", "imgs", "img", "data"})
_FIELDS = ("pretty_name", "license", "citation", "url")


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about one dataset (all text, no machine paths)."""

    name: str  # canonical name, the catalog key
    pretty_name: str
    license: str  # SPDX-style id, "other" (own terms, see license_note) or "unknown"
    citation: str | None  # BibTeX
    url: str | None
    license_name: str | None = None  # the name of "other" terms (Hugging Face card field)
    license_note: str | None = None  # the terms in one paragraph, as the authors state them
    aliases: tuple[str, ...] = ()
    hf_id: str | None = None  # Hugging Face dataset id, for ``source_datasets``
    annotations_creators: tuple[str, ...] = ("found",)
    caveats: tuple[str, ...] = ()
    evaluation: bool = False  # an evaluation benchmark (training on it leaks test identities)
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def known_license(self) -> bool:
        """True when the licence is stated (an id or the authors' own terms)."""
        return self.license != UNKNOWN

    def to_dict(self) -> dict:
        """Plain JSON/YAML-ready fields (for ``describe()`` and ``stats.json``)."""
        out = {"name": self.name, "pretty_name": self.pretty_name, "license": self.license}
        for k in ("license_name", "license_note", "url", "hf_id", "citation"):
            v = getattr(self, k)
            if v:
                out[k] = v
        return out


def normalize(name: str) -> str:
    """The lookup form of a name: lower case, runs of ``_``, spaces and ``-`` as one ``-``."""
    return re.sub(r"[\s_\-]+", "-", str(name).strip().lower()).strip("-")


@functools.lru_cache(maxsize=1)
def _table() -> tuple[dict[str, DatasetInfo], dict[str, str]]:
    text = resources.files("maskgen.datasets").joinpath("catalog.yaml").read_text("utf-8")
    raw = yaml.safe_load(text) or {}
    infos: dict[str, DatasetInfo] = {}
    index: dict[str, str] = {}
    for name, entry in raw.items():
        missing = [k for k in _FIELDS if k not in entry]
        if missing:
            raise ValueError(f"catalog entry {name!r} lacks {missing}")
        info = DatasetInfo(
            name=name,
            pretty_name=entry["pretty_name"],
            license=entry["license"],
            citation=entry.get("citation"),
            url=entry.get("url"),
            license_name=entry.get("license_name"),
            license_note=entry.get("license_note"),
            aliases=tuple(entry.get("aliases") or ()),
            hf_id=entry.get("hf_id"),
            annotations_creators=tuple(entry.get("annotations_creators") or ("found",)),
            caveats=tuple(entry.get("caveats") or ()),
            evaluation=bool(entry.get("evaluation", False)),
        )
        infos[name] = info
        for alias in (name, *info.aliases):
            key = normalize(alias)
            if key in index and index[key] != name:
                raise ValueError(f"catalog name {alias!r} names both {index[key]!r} and {name!r}")
            index[key] = name
    return infos, index


def names() -> list[str]:
    """Canonical names of all known datasets, in table order."""
    return list(_table()[0])


def get(name: str) -> DatasetInfo:
    """The entry of a canonical name or alias; ``KeyError`` when unknown."""
    info = lookup(name)
    if info is None:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(names())}")
    return info


def lookup(name: str | None) -> DatasetInfo | None:
    """The dataset called exactly ``name`` (canonical name or alias, normalised), else None."""
    if not name:
        return None
    infos, index = _table()
    key = index.get(normalize(name))
    return infos[key] if key is not None else None


def identify(path: str | PurePath) -> DatasetInfo | None:
    """The known dataset a folder holds, from its name (exact match only).

    A folder named only for a split (``val``, ``train``, ``images``, ...) is identified by its
    parent's name, so ``fairface-val/val`` is FairFace; no other ancestor counts (a folder
    ``lfw`` somewhere up the path says nothing about the images in ``lfw/mine/photos``).
    """
    p = PurePath(path)
    info = lookup(p.name)
    if info is None and p.name.lower() in SPLIT_FOLDERS and p.parent.name:
        info = lookup(p.parent.name)
    return info


def unknown_info(name: str, *, license_id: str | None = None) -> DatasetInfo:
    """The entry of a source the table does not know: licence ``unknown`` unless given."""
    return DatasetInfo(name=name, pretty_name=name or "an image collection",
                       license=license_id or UNKNOWN, citation=None, url=None)
