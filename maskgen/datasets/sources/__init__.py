"""Sources: turn a dataset into scan rows without decoding a single image.

A scan yields one row per image — identity, where its bytes are (a path relative to the
source root, a ``.rec`` offset or a tar member) and their size — so that a million-image
source costs a directory walk, not a decode. Workers fetch the bytes of one row with
``src.read_bytes(path, offset, nbytes, member)``.

Source strings: ``lfw`` (the data home's LFW, downloaded when absent), ``folder:/path`` or a
plain directory, ``recordio:/path/train.rec`` (also ``rec:``, a path ending in ``.rec``, or a
folder holding ``train.rec``), ``wds:/path/shards/*.tar`` (also ``webdataset:``, a ``.tar``
path or a brace pattern ``...-{000000..000009}.tar``).

Each kind is one module of this package holding one :class:`Source` subclass decorated with
:func:`register`; every module here is imported when a source string is parsed, so a new
kind is one new file (plus its test). Installed packages can add kinds through the
``maskgen.sources`` entry-point group (a module that registers its class when imported).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from importlib.metadata import entry_points

from maskgen.datasets.sources import base
from maskgen.datasets.sources.base import (
    BATCH_ROWS,
    DROPPED_REASONS,
    IMAGE_EXTENSIONS,
    MAX_IMAGE_BYTES,
    NO_IDENTITY,
    OUTPUT_MARKER,
    SCAN_SCHEMA,
    ReadError,
    Source,
    SourceInfo,
    SourceNotFound,
    dataset_info,
    read_file,
    register,
)

__all__ = [
    "BATCH_ROWS",
    "DROPPED_REASONS",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_BYTES",
    "NO_IDENTITY",
    "OUTPUT_MARKER",
    "SCAN_SCHEMA",
    "ReadError",
    "Source",
    "SourceInfo",
    "SourceNotFound",
    "dataset_info",
    "parse_source",
    "read_file",
    "register",
    "source_kinds",
]

_loaded = False


def _load_plugins() -> None:
    """Import every source module of this package and of the ``maskgen.sources`` entry points
    (each registers its class on import)."""
    global _loaded
    if _loaded:
        return
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name != "base" and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")
    for ep in entry_points(group="maskgen.sources"):
        ep.load()
    _loaded = True


def source_kinds() -> dict[str, type[Source]]:
    """Every registered kind, by kind name."""
    _load_plugins()
    return dict(base._KINDS)


def parse_source(source: str, identity_depth: int = 1, data_home: str | os.PathLike | None = None) -> Source:
    """Resolve a source string (see the module doc) to a :class:`Source`: ``prefix:rest`` goes
    to the kind registered for ``prefix``; a plain path goes to the first kind (by
    ``detect_order``) whose ``detect`` claims it."""
    _load_plugins()
    prefix, sep, rest = source.partition(":")
    cls = base._REGISTRY.get(prefix) if sep else base._REGISTRY.get(source)
    if cls is not None:
        return cls.from_spec(rest, identity_depth=identity_depth, data_home=data_home)
    for cls in sorted(base._KINDS.values(), key=lambda c: (c.detect_order, c.kind)):
        if cls.detect(source):
            return cls.from_spec(source, identity_depth=identity_depth, data_home=data_home)
    kinds = ", ".join(f"{p}:" for p in sorted(base._REGISTRY))
    raise SourceNotFound(f"source {source!r}: not a folder, .rec, tar pattern, or one of {kinds}")
